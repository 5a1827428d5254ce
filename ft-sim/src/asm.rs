//! A RISC-V RV64IM + Zicsr instruction encoder and a small label-resolving assembler.
//!
//! Free functions encode single instructions: those without immediates return the
//! `u32` directly, those with immediates return [`Result<u32>`] and reject values that
//! do not fit. [`Assembler`] appends instructions, resolves labels in
//! [`Assembler::finish`], and records the first error (with the index of the
//! instruction that caused it) so that building code needs no `?` on every line.
//!
//! ```
//! use ft_sim::asm::*;
//! let mut a = Assembler::new();
//! let top = a.here();
//! a.addi(A0, A0, 1).bne(A0, A1, top).ebreak();
//! let bytes = a.finish().unwrap();
//! assert_eq!(&bytes[0..4], &0x0015_0513u32.to_le_bytes());
//! ```

use std::fmt;

/// Errors of the encoder and assembler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// An immediate does not fit its field.
    #[error("{what} immediate {value} out of range {min}..={max}")]
    ImmediateOutOfRange {
        /// Which immediate.
        what: &'static str,
        /// The rejected value.
        value: i64,
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
    /// A branch/jump offset is not a multiple of 2.
    #[error("{what} offset {value} is not a multiple of 2")]
    MisalignedOffset {
        /// Which instruction.
        what: &'static str,
        /// The rejected offset.
        value: i64,
    },
    /// A CSR address does not fit 12 bits.
    #[error("CSR address {0:#x} does not fit 12 bits")]
    CsrOutOfRange(u16),
    /// A label was used but never bound.
    #[error("label {0} is used but never bound")]
    UnboundLabel(usize),
    /// A label was bound twice.
    #[error("label {0} is bound twice")]
    LabelBoundTwice(usize),
    /// A label does not belong to this assembler.
    #[error("label {0} does not belong to this assembler")]
    ForeignLabel(usize),
    /// An error located at an instruction of an [`Assembler`].
    #[error("instruction {index} (byte offset {}): {source}", index * 4)]
    At {
        /// Index of the instruction (word) in the output.
        index: usize,
        /// The error.
        #[source]
        source: Box<AsmError>,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, AsmError>;

/// An integer register `x0..x31`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reg(u8);

impl Reg {
    /// Register `x{n}`, or `None` if `n >= 32`.
    pub const fn new(n: u8) -> Option<Reg> {
        if n < 32 {
            Some(Reg(n))
        } else {
            None
        }
    }

    /// The register number `0..32`.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    const fn bits(self) -> u32 {
        self.0 as u32
    }
}

impl From<Reg> for usize {
    fn from(r: Reg) -> usize {
        r.index()
    }
}

impl fmt::Debug for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x{}", self.0)
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x{}", self.0)
    }
}

macro_rules! regs {
    ($($name:ident = $n:expr, $doc:expr;)*) => {
        $(#[doc = $doc] pub const $name: Reg = Reg($n);)*
    };
}

regs! {
    ZERO = 0, "`x0`, hardwired zero.";
    RA = 1, "`x1`, return address.";
    SP = 2, "`x2`, stack pointer.";
    GP = 3, "`x3`, global pointer.";
    TP = 4, "`x4`, thread pointer.";
    T0 = 5, "`x5`, temporary.";
    T1 = 6, "`x6`, temporary.";
    T2 = 7, "`x7`, temporary.";
    S0 = 8, "`x8`, saved / frame pointer.";
    FP = 8, "`x8`, frame pointer (= `S0`).";
    S1 = 9, "`x9`, saved.";
    A0 = 10, "`x10`, argument / return value.";
    A1 = 11, "`x11`, argument / return value.";
    A2 = 12, "`x12`, argument.";
    A3 = 13, "`x13`, argument.";
    A4 = 14, "`x14`, argument.";
    A5 = 15, "`x15`, argument.";
    A6 = 16, "`x16`, argument.";
    A7 = 17, "`x17`, argument.";
    S2 = 18, "`x18`, saved.";
    S3 = 19, "`x19`, saved.";
    S4 = 20, "`x20`, saved.";
    S5 = 21, "`x21`, saved.";
    S6 = 22, "`x22`, saved.";
    S7 = 23, "`x23`, saved.";
    S8 = 24, "`x24`, saved.";
    S9 = 25, "`x25`, saved.";
    S10 = 26, "`x26`, saved.";
    S11 = 27, "`x27`, saved.";
    T3 = 28, "`x28`, temporary.";
    T4 = 29, "`x29`, temporary.";
    T5 = 30, "`x30`, temporary.";
    T6 = 31, "`x31`, temporary.";
}

// ---------------------------------------------------------------------------
// Field encoders.

fn check_range(what: &'static str, value: i64, min: i64, max: i64) -> Result<()> {
    if value < min || value > max {
        Err(AsmError::ImmediateOutOfRange {
            what,
            value,
            min,
            max,
        })
    } else {
        Ok(())
    }
}

fn check_even(what: &'static str, value: i64) -> Result<()> {
    if value & 1 != 0 {
        Err(AsmError::MisalignedOffset { what, value })
    } else {
        Ok(())
    }
}

/// 12-bit signed I-type immediate bits (already in place).
fn i_bits(what: &'static str, imm: i64) -> Result<u32> {
    check_range(what, imm, -2048, 2047)?;
    Ok(((imm as u32) & 0xFFF) << 20)
}

fn s_bits(what: &'static str, imm: i64) -> Result<u32> {
    check_range(what, imm, -2048, 2047)?;
    let v = imm as u32;
    Ok((((v >> 5) & 0x7F) << 25) | ((v & 0x1F) << 7))
}

fn b_bits(what: &'static str, off: i64) -> Result<u32> {
    check_range(what, off, -4096, 4094)?;
    check_even(what, off)?;
    let v = off as u32;
    Ok((((v >> 12) & 1) << 31)
        | (((v >> 5) & 0x3F) << 25)
        | (((v >> 1) & 0xF) << 8)
        | (((v >> 11) & 1) << 7))
}

fn j_bits(what: &'static str, off: i64) -> Result<u32> {
    check_range(what, off, -(1 << 20), (1 << 20) - 2)?;
    check_even(what, off)?;
    let v = off as u32;
    Ok((((v >> 20) & 1) << 31)
        | (((v >> 1) & 0x3FF) << 21)
        | (((v >> 11) & 1) << 20)
        | (((v >> 12) & 0xFF) << 12))
}

fn u_bits(what: &'static str, imm20: i64) -> Result<u32> {
    check_range(what, imm20, -(1 << 19), (1 << 20) - 1)?;
    Ok(((imm20 as u32) & 0xF_FFFF) << 12)
}

fn csr_bits(csr: u16) -> Result<u32> {
    if csr >= 1 << 12 {
        return Err(AsmError::CsrOutOfRange(csr));
    }
    Ok(u32::from(csr) << 20)
}

const fn r_type(op: u32, f3: u32, f7: u32, rd: Reg, rs1: Reg, rs2: Reg) -> u32 {
    (f7 << 25) | (rs2.bits() << 20) | (rs1.bits() << 15) | (f3 << 12) | (rd.bits() << 7) | op
}

const fn i_type(op: u32, f3: u32, rd: Reg, rs1: Reg, imm_bits: u32) -> u32 {
    imm_bits | (rs1.bits() << 15) | (f3 << 12) | (rd.bits() << 7) | op
}

const OP_LOAD: u32 = 0x03;
const OP_MISC_MEM: u32 = 0x0F;
const OP_IMM: u32 = 0x13;
const OP_AUIPC: u32 = 0x17;
const OP_IMM_32: u32 = 0x1B;
const OP_STORE: u32 = 0x23;
const OP_OP: u32 = 0x33;
const OP_LUI: u32 = 0x37;
const OP_OP_32: u32 = 0x3B;
const OP_BRANCH: u32 = 0x63;
const OP_JALR: u32 = 0x67;
const OP_JAL: u32 = 0x6F;
const OP_SYSTEM: u32 = 0x73;
const OP_AMO: u32 = 0x2F;

// ---------------------------------------------------------------------------
// Single-instruction encoders.

/// `lui rd, imm20`: `rd = sext(imm20 << 12)`. `imm20` is the 20-bit field, given
/// signed (`-0x80000..0`) or unsigned (`0..=0xfffff`).
pub fn lui(rd: Reg, imm20: i64) -> Result<u32> {
    Ok(u_bits("lui", imm20)? | (rd.bits() << 7) | OP_LUI)
}

/// `auipc rd, imm20`: `rd = pc + sext(imm20 << 12)` (same `imm20` rules as [`lui`]).
pub fn auipc(rd: Reg, imm20: i64) -> Result<u32> {
    Ok(u_bits("auipc", imm20)? | (rd.bits() << 7) | OP_AUIPC)
}

/// `jal rd, offset` (offset from this instruction, even, ±1 MiB).
pub fn jal(rd: Reg, offset: i64) -> Result<u32> {
    Ok(j_bits("jal", offset)? | (rd.bits() << 7) | OP_JAL)
}

/// `jalr rd, imm(rs1)`.
pub fn jalr(rd: Reg, rs1: Reg, imm: i64) -> Result<u32> {
    Ok(i_type(OP_JALR, 0, rd, rs1, i_bits("jalr", imm)?))
}

macro_rules! branches {
    ($($name:ident = $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rs1, rs2, offset` (offset from this instruction, even, -4096..=4094).")]
        pub fn $name(rs1: Reg, rs2: Reg, offset: i64) -> Result<u32> {
            Ok(b_bits(stringify!($name), offset)? | r_type(OP_BRANCH, $f3, 0, ZERO, rs1, rs2))
        }
    )*};
}
branches! { beq = 0; bne = 1; blt = 4; bge = 5; bltu = 6; bgeu = 7; }

macro_rules! loads {
    ($($name:ident = $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, imm(rs1)`.")]
        pub fn $name(rd: Reg, rs1: Reg, imm: i64) -> Result<u32> {
            Ok(i_type(OP_LOAD, $f3, rd, rs1, i_bits(stringify!($name), imm)?))
        }
    )*};
}
loads! { lb = 0; lh = 1; lw = 2; ld = 3; lbu = 4; lhu = 5; lwu = 6; }

macro_rules! stores {
    ($($name:ident = $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rs2, imm(rs1)` (note the operand order: value, base, offset).")]
        pub fn $name(rs2: Reg, rs1: Reg, imm: i64) -> Result<u32> {
            Ok(s_bits(stringify!($name), imm)? | r_type(OP_STORE, $f3, 0, ZERO, rs1, rs2))
        }
    )*};
}
stores! { sb = 0; sh = 1; sw = 2; sd = 3; }

macro_rules! op_imms {
    ($($name:ident = $op:expr, $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, rs1, imm` (imm -2048..=2047).")]
        pub fn $name(rd: Reg, rs1: Reg, imm: i64) -> Result<u32> {
            Ok(i_type($op, $f3, rd, rs1, i_bits(stringify!($name), imm)?))
        }
    )*};
}
op_imms! {
    addi = OP_IMM, 0; slti = OP_IMM, 2; sltiu = OP_IMM, 3; xori = OP_IMM, 4;
    ori = OP_IMM, 6; andi = OP_IMM, 7; addiw = OP_IMM_32, 0;
}

macro_rules! shifts {
    ($($name:ident = $op:expr, $f3:expr, $f6:expr, $max:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, rs1, shamt` (shamt 0..=", stringify!($max), ").")]
        pub fn $name(rd: Reg, rs1: Reg, shamt: i64) -> Result<u32> {
            check_range(stringify!($name), shamt, 0, $max)?;
            Ok(i_type($op, $f3, rd, rs1, (($f6 as u32) << 26) | ((shamt as u32) << 20)))
        }
    )*};
}
shifts! {
    slli = OP_IMM, 1, 0, 63; srli = OP_IMM, 5, 0, 63; srai = OP_IMM, 5, 0x10, 63;
    slliw = OP_IMM_32, 1, 0, 31; srliw = OP_IMM_32, 5, 0, 31; sraiw = OP_IMM_32, 5, 0x10, 31;
}

macro_rules! r_ops {
    ($($name:ident = $op:expr, $f3:expr, $f7:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, rs1, rs2`.")]
        pub const fn $name(rd: Reg, rs1: Reg, rs2: Reg) -> u32 {
            r_type($op, $f3, $f7, rd, rs1, rs2)
        }
    )*};
}
r_ops! {
    add = OP_OP, 0, 0; sub = OP_OP, 0, 0x20; sll = OP_OP, 1, 0; slt = OP_OP, 2, 0;
    sltu = OP_OP, 3, 0; xor = OP_OP, 4, 0; srl = OP_OP, 5, 0; sra = OP_OP, 5, 0x20;
    or = OP_OP, 6, 0; and = OP_OP, 7, 0;
    mul = OP_OP, 0, 1; mulh = OP_OP, 1, 1; mulhsu = OP_OP, 2, 1; mulhu = OP_OP, 3, 1;
    div = OP_OP, 4, 1; divu = OP_OP, 5, 1; rem = OP_OP, 6, 1; remu = OP_OP, 7, 1;
    addw = OP_OP_32, 0, 0; subw = OP_OP_32, 0, 0x20; sllw = OP_OP_32, 1, 0;
    srlw = OP_OP_32, 5, 0; sraw = OP_OP_32, 5, 0x20;
    mulw = OP_OP_32, 0, 1; divw = OP_OP_32, 4, 1; divuw = OP_OP_32, 5, 1;
    remw = OP_OP_32, 6, 1; remuw = OP_OP_32, 7, 1;
}

macro_rules! amo_ops {
    ($($name:ident = $f3:expr, $f5:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, rs2, (rs1)` (the A extension; `aq` and `rl` clear). Arguments in assembly order.")]
        pub const fn $name(rd: Reg, rs2: Reg, rs1: Reg) -> u32 {
            r_type(OP_AMO, $f3, $f5 << 2, rd, rs1, rs2)
        }
    )*};
}
amo_ops! {
    amoswap_w = 2, 0b00001; amoadd_w = 2, 0b00000; amoxor_w = 2, 0b00100;
    amoand_w = 2, 0b01100; amoor_w = 2, 0b01000; amomin_w = 2, 0b10000;
    amomax_w = 2, 0b10100; amominu_w = 2, 0b11000; amomaxu_w = 2, 0b11100;
    sc_w = 2, 0b00011;
    amoswap_d = 3, 0b00001; amoadd_d = 3, 0b00000; amoxor_d = 3, 0b00100;
    amoand_d = 3, 0b01100; amoor_d = 3, 0b01000; amomin_d = 3, 0b10000;
    amomax_d = 3, 0b10100; amominu_d = 3, 0b11000; amomaxu_d = 3, 0b11100;
    sc_d = 3, 0b00011;
}

/// `lr.w rd, (rs1)`.
pub const fn lr_w(rd: Reg, rs1: Reg) -> u32 {
    r_type(OP_AMO, 2, 0b00010 << 2, rd, rs1, ZERO)
}

/// `lr.d rd, (rs1)`.
pub const fn lr_d(rd: Reg, rs1: Reg) -> u32 {
    r_type(OP_AMO, 3, 0b00010 << 2, rd, rs1, ZERO)
}

/// `fence iorw, iorw`.
pub const fn fence() -> u32 {
    0x0FF0_0000 | OP_MISC_MEM
}

/// `fence.i`.
pub const fn fence_i() -> u32 {
    0x0000_1000 | OP_MISC_MEM
}

/// `ecall`.
pub const fn ecall() -> u32 {
    0x0000_0073
}

/// `ebreak`.
pub const fn ebreak() -> u32 {
    0x0010_0073
}

/// `mret`.
pub const fn mret() -> u32 {
    0x3020_0073
}

/// `wfi`.
pub const fn wfi() -> u32 {
    0x1050_0073
}

/// `nop` (`addi x0, x0, 0`).
pub const fn nop() -> u32 {
    OP_IMM
}

macro_rules! csr_ops {
    ($($name:ident = $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, csr, rs1`.")]
        pub fn $name(rd: Reg, csr: u16, rs1: Reg) -> Result<u32> {
            Ok(csr_bits(csr)? | r_type(OP_SYSTEM, $f3, 0, rd, rs1, ZERO))
        }
    )*};
}
csr_ops! { csrrw = 1; csrrs = 2; csrrc = 3; }

macro_rules! csr_imm_ops {
    ($($name:ident = $f3:expr;)*) => {$(
        #[doc = concat!("`", stringify!($name), " rd, csr, zimm` (zimm 0..=31).")]
        pub fn $name(rd: Reg, csr: u16, zimm: i64) -> Result<u32> {
            check_range(stringify!($name), zimm, 0, 31)?;
            Ok(csr_bits(csr)? | ((zimm as u32) << 15) | (($f3 as u32) << 12) | (rd.bits() << 7) | OP_SYSTEM)
        }
    )*};
}
csr_imm_ops! { csrrwi = 5; csrrsi = 6; csrrci = 7; }

/// Splits a 64-bit constant into a LUI/ADDI(W)/SLLI sequence (LLVM's algorithm).
#[derive(Debug, Clone, Copy)]
enum LiOp {
    Lui(i64),
    Addiw(i64),
    Addi(i64),
    Slli(i64),
}

fn li_seq(val: i64, out: &mut Vec<LiOp>) {
    let lo12 = (val << 52) >> 52;
    if i64::from(val as i32) == val {
        let hi20 = (val.wrapping_add(0x800) >> 12) & 0xF_FFFF;
        if hi20 != 0 {
            out.push(LiOp::Lui(hi20));
            if lo12 != 0 {
                out.push(LiOp::Addiw(lo12));
            }
        } else {
            out.push(LiOp::Addi(lo12));
        }
        return;
    }
    let hi52 = (val as u64).wrapping_add(0x800) >> 12;
    // hi52 != 0 since val does not fit 32 bits; so tz <= 51 and shift <= 63.
    let tz = hi52.trailing_zeros().min(51);
    let shift = 12 + tz;
    let width = 64 - shift;
    let hi = (((hi52 >> tz) << (64 - width)) as i64) >> (64 - width);
    li_seq(hi, out);
    out.push(LiOp::Slli(i64::from(shift)));
    if lo12 != 0 {
        out.push(LiOp::Addi(lo12));
    }
}

/// The instruction sequence (1 to 8 words) that loads the 64-bit constant `value`
/// into `rd`.
pub fn li_words(rd: Reg, value: i64) -> Result<Vec<u32>> {
    let mut ops = Vec::with_capacity(8);
    li_seq(value, &mut ops);
    let mut words = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let src = if i == 0 { ZERO } else { rd };
        words.push(match *op {
            LiOp::Lui(v) => lui(rd, v)?,
            LiOp::Addiw(v) => addiw(rd, rd, v)?,
            LiOp::Addi(v) => addi(rd, src, v)?,
            LiOp::Slli(v) => slli(rd, rd, v)?,
        });
    }
    Ok(words)
}

// ---------------------------------------------------------------------------
// Assembler.

/// A position in the code, bound with [`Assembler::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(usize);

impl Label {
    /// The label's number within its assembler.
    pub fn id(self) -> usize {
        self.0
    }
}

#[derive(Debug, Clone, Copy)]
enum FixupKind {
    /// B-type at `at`.
    Branch,
    /// J-type at `at`.
    Jal,
    /// AUIPC at `at`, I-type (addi / jalr / load) at `at + 1`.
    PcRelPair,
}

#[derive(Debug, Clone, Copy)]
struct Fixup {
    at: usize,
    label: Label,
    kind: FixupKind,
}

/// A builder of RV64IM code with labels. Methods append one instruction (or a
/// pseudo-instruction's sequence) and return `&mut Self`; an encoding error is
/// remembered and reported by [`Assembler::finish`] (the first one wins).
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    base: u64,
    words: Vec<u32>,
    labels: Vec<Option<usize>>,
    fixups: Vec<Fixup>,
    error: Option<AsmError>,
}

macro_rules! asm_r {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ").")]
        pub fn $name(&mut self, rd: Reg, rs1: Reg, rs2: Reg) -> &mut Self {
            self.emit($name(rd, rs1, rs2))
        }
    )*};
}

macro_rules! asm_amo {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ").")]
        pub fn $name(&mut self, rd: Reg, rs2: Reg, rs1: Reg) -> &mut Self {
            self.emit($name(rd, rs2, rs1))
        }
    )*};
}

macro_rules! asm_imm {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ").")]
        pub fn $name(&mut self, rd: Reg, rs1: Reg, imm: i64) -> &mut Self {
            self.emit_result($name(rd, rs1, imm))
        }
    )*};
}

macro_rules! asm_branch {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ") to `target`.")]
        pub fn $name(&mut self, rs1: Reg, rs2: Reg, target: Label) -> &mut Self {
            self.fixup(target, FixupKind::Branch);
            self.emit_result($name(rs1, rs2, 0))
        }
    )*};
}

macro_rules! asm_csr {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ").")]
        pub fn $name(&mut self, rd: Reg, csr: u16, rs1: Reg) -> &mut Self {
            self.emit_result($name(rd, csr, rs1))
        }
    )*};
}

macro_rules! asm_csri {
    ($($name:ident),*) => {$(
        #[doc = concat!("Appends [`", stringify!($name), "`](fn@", stringify!($name), ").")]
        pub fn $name(&mut self, rd: Reg, csr: u16, zimm: i64) -> &mut Self {
            self.emit_result($name(rd, csr, zimm))
        }
    )*};
}

impl Assembler {
    /// An empty assembler for code that will be placed at address 0 (only matters
    /// for [`Assembler::label_address`]; all label references are pc-relative).
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// An empty assembler for code that will be placed at `base`.
    pub fn with_base(base: u64) -> Assembler {
        Assembler {
            base,
            ..Assembler::default()
        }
    }

    /// The load address given to [`Assembler::with_base`] (0 by default).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Number of instruction words emitted so far.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether nothing was emitted yet.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Byte offset of the next instruction from the start.
    pub fn offset(&self) -> u64 {
        self.words.len() as u64 * 4
    }

    /// Address of the next instruction (`base + offset`).
    pub fn current_address(&self) -> u64 {
        self.base.wrapping_add(self.offset())
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `label` to the current position.
    pub fn bind(&mut self, label: Label) -> &mut Self {
        let pos = self.words.len();
        match self.labels.get_mut(label.0) {
            Some(slot @ None) => *slot = Some(pos),
            Some(Some(_)) => self.record(AsmError::LabelBoundTwice(label.0)),
            None => self.record(AsmError::ForeignLabel(label.0)),
        }
        self
    }

    /// A new label bound to the current position.
    pub fn here(&mut self) -> Label {
        let l = self.label();
        self.bind(l);
        l
    }

    /// Byte offset of a bound label from the start.
    pub fn label_offset(&self, label: Label) -> Option<u64> {
        self.labels
            .get(label.0)
            .copied()
            .flatten()
            .map(|w| w as u64 * 4)
    }

    /// Address of a bound label (`base + offset`).
    pub fn label_address(&self, label: Label) -> Option<u64> {
        self.label_offset(label).map(|o| self.base.wrapping_add(o))
    }

    fn record(&mut self, e: AsmError) {
        if self.error.is_none() {
            self.error = Some(AsmError::At {
                index: self.words.len(),
                source: Box::new(e),
            });
        }
    }

    fn fixup(&mut self, label: Label, kind: FixupKind) {
        self.fixups.push(Fixup {
            at: self.words.len(),
            label,
            kind,
        });
    }

    /// Appends a raw 32-bit word (instruction or data).
    pub fn emit(&mut self, word: u32) -> &mut Self {
        self.words.push(word);
        self
    }

    /// Appends an encoded instruction, or records its error (a `nop` placeholder is
    /// emitted so that later offsets stay meaningful).
    pub fn emit_result(&mut self, word: Result<u32>) -> &mut Self {
        match word {
            Ok(w) => self.emit(w),
            Err(e) => {
                self.record(e);
                self.emit(nop())
            }
        }
    }

    /// Pads with `nop`s until the offset is a multiple of `bytes` rounded up to a
    /// power of two (at least 4).
    pub fn align(&mut self, bytes: u64) -> &mut Self {
        let bytes = bytes.max(4).checked_next_power_of_two().unwrap_or(4);
        while !self.offset().is_multiple_of(bytes) {
            self.emit(nop());
        }
        self
    }

    /// Appends a 64-bit little-endian data value (two words).
    pub fn dword(&mut self, value: u64) -> &mut Self {
        self.emit(value as u32).emit((value >> 32) as u32)
    }

    asm_r!(
        add, sub, sll, slt, sltu, xor, srl, sra, or, and, mul, mulh, mulhsu, mulhu, div, divu, rem,
        remu, addw, subw, sllw, srlw, sraw, mulw, divw, divuw, remw, remuw
    );
    asm_imm!(
        addi, slti, sltiu, xori, ori, andi, addiw, slli, srli, srai, slliw, srliw, sraiw, jalr, lb,
        lh, lw, ld, lbu, lhu, lwu, sb, sh, sw, sd
    );
    asm_branch!(beq, bne, blt, bge, bltu, bgeu);
    asm_amo!(
        amoswap_w, amoadd_w, amoxor_w, amoand_w, amoor_w, amomin_w, amomax_w, amominu_w, amomaxu_w,
        sc_w, amoswap_d, amoadd_d, amoxor_d, amoand_d, amoor_d, amomin_d, amomax_d, amominu_d,
        amomaxu_d, sc_d
    );

    /// Appends [`lr_w`](fn@lr_w).
    pub fn lr_w(&mut self, rd: Reg, rs1: Reg) -> &mut Self {
        self.emit(lr_w(rd, rs1))
    }

    /// Appends [`lr_d`](fn@lr_d).
    pub fn lr_d(&mut self, rd: Reg, rs1: Reg) -> &mut Self {
        self.emit(lr_d(rd, rs1))
    }
    asm_csr!(csrrw, csrrs, csrrc);
    asm_csri!(csrrwi, csrrsi, csrrci);

    /// Appends [`lui`](fn@lui).
    pub fn lui(&mut self, rd: Reg, imm20: i64) -> &mut Self {
        self.emit_result(lui(rd, imm20))
    }

    /// Appends [`auipc`](fn@auipc).
    pub fn auipc(&mut self, rd: Reg, imm20: i64) -> &mut Self {
        self.emit_result(auipc(rd, imm20))
    }

    /// Appends `jal rd, target`.
    pub fn jal(&mut self, rd: Reg, target: Label) -> &mut Self {
        self.fixup(target, FixupKind::Jal);
        self.emit_result(jal(rd, 0))
    }

    /// Appends `jal x0, target`.
    pub fn j(&mut self, target: Label) -> &mut Self {
        self.jal(ZERO, target)
    }

    /// Appends `jalr x0, 0(rs)`.
    pub fn jr(&mut self, rs: Reg) -> &mut Self {
        self.jalr(ZERO, rs, 0)
    }

    /// Appends `auipc ra, hi; jalr ra, lo(ra)`: a call reaching ±2 GiB.
    pub fn call(&mut self, target: Label) -> &mut Self {
        self.fixup(target, FixupKind::PcRelPair);
        self.emit_result(auipc(RA, 0));
        self.emit_result(jalr(RA, RA, 0))
    }

    /// Appends `jalr x0, 0(ra)`.
    pub fn ret(&mut self) -> &mut Self {
        self.jalr(ZERO, RA, 0)
    }

    /// Appends `auipc rd, hi; addi rd, rd, lo`: the address of `target` (pc-relative,
    /// ±2 GiB).
    pub fn la(&mut self, rd: Reg, target: Label) -> &mut Self {
        self.fixup(target, FixupKind::PcRelPair);
        self.emit_result(auipc(rd, 0));
        self.emit_result(addi(rd, rd, 0))
    }

    /// Appends the shortest LUI/ADDIW/ADDI/SLLI sequence (1 to 8 instructions) that
    /// sets `rd` to any 64-bit constant (also for addresses: `li(rd, addr as i64)`).
    pub fn li(&mut self, rd: Reg, value: i64) -> &mut Self {
        match li_words(rd, value) {
            Ok(ws) => {
                for w in ws {
                    self.emit(w);
                }
                self
            }
            Err(e) => self.emit_result(Err(e)),
        }
    }

    /// Appends `li rd, value` for an unsigned constant.
    pub fn li_u64(&mut self, rd: Reg, value: u64) -> &mut Self {
        self.li(rd, value as i64)
    }

    /// Appends `addi rd, rs, 0`.
    pub fn mv(&mut self, rd: Reg, rs: Reg) -> &mut Self {
        self.addi(rd, rs, 0)
    }

    /// Appends `xori rd, rs, -1`.
    pub fn not(&mut self, rd: Reg, rs: Reg) -> &mut Self {
        self.xori(rd, rs, -1)
    }

    /// Appends `sub rd, x0, rs`.
    pub fn neg(&mut self, rd: Reg, rs: Reg) -> &mut Self {
        self.sub(rd, ZERO, rs)
    }

    /// Appends `sltiu rd, rs, 1`.
    pub fn seqz(&mut self, rd: Reg, rs: Reg) -> &mut Self {
        self.sltiu(rd, rs, 1)
    }

    /// Appends `sltu rd, x0, rs`.
    pub fn snez(&mut self, rd: Reg, rs: Reg) -> &mut Self {
        self.sltu(rd, ZERO, rs)
    }

    /// Appends `beq rs, x0, target`.
    pub fn beqz(&mut self, rs: Reg, target: Label) -> &mut Self {
        self.beq(rs, ZERO, target)
    }

    /// Appends `bne rs, x0, target`.
    pub fn bnez(&mut self, rs: Reg, target: Label) -> &mut Self {
        self.bne(rs, ZERO, target)
    }

    /// Appends `addi x0, x0, 0`.
    pub fn nop(&mut self) -> &mut Self {
        self.emit(nop())
    }

    /// Appends `fence iorw, iorw`.
    pub fn fence(&mut self) -> &mut Self {
        self.emit(fence())
    }

    /// Appends `fence.i`.
    pub fn fence_i(&mut self) -> &mut Self {
        self.emit(fence_i())
    }

    /// Appends `ecall`.
    pub fn ecall(&mut self) -> &mut Self {
        self.emit(ecall())
    }

    /// Appends `ebreak`.
    pub fn ebreak(&mut self) -> &mut Self {
        self.emit(ebreak())
    }

    /// Appends `mret`.
    pub fn mret(&mut self) -> &mut Self {
        self.emit(mret())
    }

    /// Appends `wfi`.
    pub fn wfi(&mut self) -> &mut Self {
        self.emit(wfi())
    }

    /// Appends `csrrs rd, csr, x0` (read).
    pub fn csrr(&mut self, rd: Reg, csr: u16) -> &mut Self {
        self.csrrs(rd, csr, ZERO)
    }

    /// Appends `csrrw x0, csr, rs` (write).
    pub fn csrw(&mut self, csr: u16, rs: Reg) -> &mut Self {
        self.csrrw(ZERO, csr, rs)
    }

    /// Appends `csrrs x0, csr, rs` (set bits).
    pub fn csrs(&mut self, csr: u16, rs: Reg) -> &mut Self {
        self.csrrs(ZERO, csr, rs)
    }

    /// Appends `csrrc x0, csr, rs` (clear bits).
    pub fn csrc(&mut self, csr: u16, rs: Reg) -> &mut Self {
        self.csrrc(ZERO, csr, rs)
    }

    /// Appends `csrrwi x0, csr, zimm`.
    pub fn csrwi(&mut self, csr: u16, zimm: i64) -> &mut Self {
        self.csrrwi(ZERO, csr, zimm)
    }

    /// Appends `csrrsi x0, csr, zimm`.
    pub fn csrsi(&mut self, csr: u16, zimm: i64) -> &mut Self {
        self.csrrsi(ZERO, csr, zimm)
    }

    /// Appends `csrrci x0, csr, zimm`.
    pub fn csrci(&mut self, csr: u16, zimm: i64) -> &mut Self {
        self.csrrci(ZERO, csr, zimm)
    }

    /// Resolves labels and returns the instruction words.
    pub fn finish_words(&self) -> Result<Vec<u32>> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut words = self.words.clone();
        for f in &self.fixups {
            let at_err = |e: AsmError| AsmError::At {
                index: f.at,
                source: Box::new(e),
            };
            let target = match self.labels.get(f.label.0) {
                Some(Some(t)) => *t,
                Some(None) => return Err(at_err(AsmError::UnboundLabel(f.label.0))),
                None => return Err(at_err(AsmError::ForeignLabel(f.label.0))),
            };
            let off = (target as i64 - f.at as i64) * 4;
            match f.kind {
                FixupKind::Branch => {
                    let bits = b_bits("branch", off).map_err(at_err)?;
                    if let Some(w) = words.get_mut(f.at) {
                        *w |= bits;
                    }
                }
                FixupKind::Jal => {
                    let bits = j_bits("jal", off).map_err(at_err)?;
                    if let Some(w) = words.get_mut(f.at) {
                        *w |= bits;
                    }
                }
                FixupKind::PcRelPair => {
                    let hi = (off + 0x800) >> 12;
                    let lo = off - (hi << 12);
                    let hi_bits = u_bits("pc-relative hi20", hi).map_err(at_err)?;
                    check_range("pc-relative hi20", hi, -(1 << 19), (1 << 19) - 1)
                        .map_err(at_err)?;
                    let lo_bits = i_bits("pc-relative lo12", lo).map_err(at_err)?;
                    if let Some(w) = words.get_mut(f.at) {
                        *w |= hi_bits;
                    }
                    if let Some(w) = words.get_mut(f.at + 1) {
                        *w |= lo_bits;
                    }
                }
            }
        }
        Ok(words)
    }

    /// Resolves labels and returns the code as little-endian bytes.
    pub fn finish(&self) -> Result<Vec<u8>> {
        Ok(self
            .finish_words()?
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        assert_eq!(addi(A0, A0, 1).unwrap(), 0x0015_0513);
        assert_eq!(ecall(), 0x0000_0073);
        assert_eq!(mret(), 0x3020_0073);
        assert_eq!(wfi(), 0x1050_0073);
        assert_eq!(lui(A0, 0x12345).unwrap(), 0x1234_5537);
        assert_eq!(jal(ZERO, -8).unwrap(), 0xFF9F_F06F);
        assert_eq!(add(A0, A1, A2), 0x00C5_8533);
    }
}
