//! RV64IM instruction semantics: arithmetic (incl. M-extension corner cases),
//! loads/stores, branches, jumps, illegal encodings.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ft_sim::asm::*;
use ft_sim::cpu::{csr, Cpu, Exception, NoMmio, Privilege, StepOutcome};
use ft_sim::memory::{Ram, RAM_BASE};

const RAM_SIZE: usize = 1 << 20;
const DATA: u64 = RAM_BASE + 0x8_0000;

fn boot(a: &Assembler) -> (Cpu, Ram) {
    let code = a.finish().unwrap();
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(RAM_BASE, &code).unwrap();
    (Cpu::new(RAM_BASE), ram)
}

/// Appends `ebreak`, runs until it traps, returns the state at the trap.
fn run_to_ebreak(a: &mut Assembler) -> (Cpu, Ram) {
    a.ebreak();
    let (mut cpu, mut ram) = boot(a);
    for _ in 0..100_000 {
        match cpu.step(&mut ram, &mut NoMmio) {
            StepOutcome::Exception(Exception::Breakpoint) => return (cpu, ram),
            StepOutcome::Retired => {}
            other => panic!(
                "unexpected {other:?}: mepc={:#x} mtval={:#x}",
                cpu.csr(csr::MEPC).unwrap(),
                cpu.csr(csr::MTVAL).unwrap()
            ),
        }
    }
    panic!("no ebreak reached");
}

/// Runs a single program expecting one exception; returns the state after it.
fn run_to_exception(a: &Assembler) -> (Cpu, Ram, Exception) {
    let (mut cpu, mut ram) = boot(a);
    for _ in 0..100_000 {
        match cpu.step(&mut ram, &mut NoMmio) {
            StepOutcome::Exception(e) => return (cpu, ram, e),
            StepOutcome::Retired => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no exception");
}

type ROp = fn(Reg, Reg, Reg) -> u32;

fn check_r(name: &str, op: ROp, a: u64, b: u64, expect: u64) {
    let mut asm = Assembler::new();
    asm.li_u64(A1, a).li_u64(A2, b).emit(op(A0, A1, A2));
    let (cpu, _) = run_to_ebreak(&mut asm);
    assert_eq!(
        cpu.reg(A0),
        expect,
        "{name}({a:#x}, {b:#x}) = {:#x}, expected {expect:#x}",
        cpu.reg(A0)
    );
}

const MIN: u64 = 1 << 63;
const MAX: u64 = u64::MAX;
const M1: u64 = u64::MAX; // -1

#[test]
fn base_alu_ops() {
    let cases: &[(&str, ROp, u64, u64, u64)] = &[
        ("add", add, 0x7FFF_FFFF_FFFF_FFFF, 1, MIN),
        ("add", add, M1, 1, 0),
        ("sub", sub, 0, 1, M1),
        ("sub", sub, MIN, 1, 0x7FFF_FFFF_FFFF_FFFF),
        ("sll", sll, 1, 63, MIN),
        ("sll", sll, 1, 65, 2), // shift amount uses the low 6 bits
        ("srl", srl, MIN, 63, 1),
        ("sra", sra, MIN, 63, M1),
        ("sra", sra, MIN, 64, MIN),
        ("slt", slt, M1, 1, 1),
        ("slt", slt, 1, M1, 0),
        ("sltu", sltu, 1, M1, 1),
        ("sltu", sltu, M1, 1, 0),
        ("xor", xor, 0xF0F0, 0xFF00, 0x0FF0),
        ("or", or, 0xF0F0, 0xFF00, 0xFFF0),
        ("and", and, 0xF0F0, 0xFF00, 0xF000),
        ("addw", addw, 0x7FFF_FFFF, 1, 0xFFFF_FFFF_8000_0000),
        ("addw", addw, 0x1_0000_0000, 5, 5),
        ("subw", subw, 0, 1, M1),
        ("subw", subw, 0x8000_0000, 1, 0x7FFF_FFFF),
        ("sllw", sllw, 1, 31, 0xFFFF_FFFF_8000_0000),
        ("sllw", sllw, 1, 33, 2), // low 5 bits
        (
            "srlw",
            srlw,
            0xFFFF_FFFF_8000_0000,
            0,
            0xFFFF_FFFF_8000_0000,
        ),
        ("srlw", srlw, 0xFFFF_FFFF_8000_0000, 1, 0x4000_0000),
        ("sraw", sraw, 0x8000_0000, 1, 0xFFFF_FFFF_C000_0000),
        ("sraw", sraw, 0x1234_5678_7FFF_FFFF, 4, 0x07FF_FFFF),
    ];
    for &(name, op, a, b, e) in cases {
        check_r(name, op, a, b, e);
    }
}

#[test]
fn m_extension_corner_cases() {
    let i = |v: i64| v as u64;
    let cases: &[(&str, ROp, u64, u64, u64)] = &[
        ("mul", mul, MIN, M1, MIN),
        ("mul", mul, 0x1_0000_0001, 0x1_0000_0001, 0x2_0000_0001),
        ("mulh", mulh, M1, M1, 0),
        ("mulh", mulh, MIN, MIN, 0x4000_0000_0000_0000),
        ("mulh", mulh, MIN, 1, M1),
        ("mulh", mulh, i(-2), 3, M1),
        ("mulhu", mulhu, MAX, MAX, 0xFFFF_FFFF_FFFF_FFFE),
        ("mulhu", mulhu, MIN, 2, 1),
        ("mulhsu", mulhsu, M1, MAX, M1),
        ("mulhsu", mulhsu, 2, MAX, 1),
        ("mulhsu", mulhsu, i(-2), 3, M1),
        ("mulhsu", mulhsu, MIN, MAX, MIN),
        ("div", div, 7, i(-2), i(-3)),
        ("div", div, i(-7), 2, i(-3)),
        ("div", div, 5, 0, M1),
        ("div", div, MIN, M1, MIN),
        ("divu", divu, 7, 0, MAX),
        ("divu", divu, MAX, 2, 0x7FFF_FFFF_FFFF_FFFF),
        ("rem", rem, 7, i(-2), 1),
        ("rem", rem, i(-7), 2, i(-1)),
        ("rem", rem, 1234, 0, 1234),
        ("rem", rem, MIN, M1, 0),
        ("remu", remu, 1234, 0, 1234),
        ("remu", remu, MAX, 10, 5),
        ("mulw", mulw, 0x1_0000, 0x1_0000, 0),
        ("mulw", mulw, 0x7FFF_FFFF, 2, i(-2)),
        ("mulw", mulw, 0xFFFF_FFFF_0000_0003, 0x5, 15),
        ("divw", divw, 0x8000_0000, M1, 0xFFFF_FFFF_8000_0000),
        ("divw", divw, 0x1_0000_0007, 0x2_FFFF_FFFE, i(-3)),
        ("divw", divw, 5, 0xF_0000_0000, M1),
        ("divuw", divuw, 0x1234_5678_FFFF_FFFF, 1, M1),
        ("divuw", divuw, 5, 0x1_0000_0000, M1),
        ("divuw", divuw, 0xFFFF_FFFE, 2, 0x7FFF_FFFF),
        ("remw", remw, 0x8000_0000, M1, 0),
        ("remw", remw, i(-7), 2, i(-1)),
        ("remw", remw, 0x1_8000_0000, 0, 0xFFFF_FFFF_8000_0000),
        ("remuw", remuw, 0x8000_0000, 0, 0xFFFF_FFFF_8000_0000),
        ("remuw", remuw, 0xFFFF_FFFF, 0x10, 0xF),
    ];
    for &(name, op, a, b, e) in cases {
        check_r(name, op, a, b, e);
    }
}

#[test]
fn immediate_ops_and_upper_immediates() {
    let mut a = Assembler::new();
    a.li(T0, -1)
        .addi(A0, T0, -2048) // -2049
        .slti(A1, T0, 0) // 1
        .sltiu(A2, T0, -1) // -1 < MAX unsigned? no: equal -> 0
        .sltiu(A3, ZERO, -1) // 0 < MAX -> 1
        .xori(A4, T0, 0x7FF) // ~0x7FF
        .ori(A5, ZERO, -16)
        .andi(A6, T0, 0x0F0)
        .slli(A7, T0, 63)
        .srli(S2, T0, 60)
        .srai(S3, A7, 62)
        .addiw(S4, T0, 1) // 0
        .li(T1, 0x7FFF_FFFF)
        .addiw(S5, T1, 1) // sign-extended 0x8000_0000
        .slliw(S6, T1, 1) // 0xFFFF_FFFE sext
        .srliw(S7, T0, 4) // 0x0FFF_FFFF
        .sraiw(S8, S5, 31) // -1
        .lui(S9, 0x80000) // sext 0x8000_0000
        .lui(S10, -1); // 0xFFFF_FFFF_FFFF_F000
    let auipc_pc = a.current_address();
    a.auipc(S11, 1); // pc + 0x1000
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(A0), -2049i64 as u64);
    assert_eq!(cpu.reg(A1), 1);
    assert_eq!(cpu.reg(A2), 0);
    assert_eq!(cpu.reg(A3), 1);
    assert_eq!(cpu.reg(A4), !0x7FFu64);
    assert_eq!(cpu.reg(A5), -16i64 as u64);
    assert_eq!(cpu.reg(A6), 0xF0);
    assert_eq!(cpu.reg(A7), MIN);
    assert_eq!(cpu.reg(S2), 0xF);
    assert_eq!(cpu.reg(S3), -2i64 as u64);
    assert_eq!(cpu.reg(S4), 0);
    assert_eq!(cpu.reg(S5), 0xFFFF_FFFF_8000_0000);
    assert_eq!(cpu.reg(S6), 0xFFFF_FFFF_FFFF_FFFE);
    assert_eq!(cpu.reg(S7), 0x0FFF_FFFF);
    assert_eq!(cpu.reg(S8), M1);
    assert_eq!(cpu.reg(S9), 0xFFFF_FFFF_8000_0000);
    assert_eq!(cpu.reg(S10), 0xFFFF_FFFF_FFFF_F000);
    assert_eq!(cpu.reg(S11), RAM_BASE + auipc_pc + 0x1000);
}

#[test]
fn x0_is_hardwired_to_zero() {
    let mut a = Assembler::new();
    a.addi(ZERO, ZERO, 5).lui(ZERO, 0x12345).add(A0, ZERO, ZERO);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(ZERO), 0);
    assert_eq!(cpu.reg(A0), 0);
}

#[test]
fn loads_sign_and_zero_extend() {
    let mut a = Assembler::new();
    a.li_u64(T0, DATA)
        .li_u64(T1, 0x8081_8283_8485_8687)
        .sd(T1, T0, 0)
        .lb(A0, T0, 0)
        .lbu(A1, T0, 0)
        .lh(A2, T0, 0)
        .lhu(A3, T0, 0)
        .lw(A4, T0, 0)
        .lwu(A5, T0, 0)
        .ld(A6, T0, 0)
        .lb(A7, T0, 7)
        .lw(S2, T0, 4)
        .addi(T2, T0, 8)
        .lbu(S3, T2, -1); // negative offset
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(A0), 0xFFFF_FFFF_FFFF_FF87);
    assert_eq!(cpu.reg(A1), 0x87);
    assert_eq!(cpu.reg(A2), 0xFFFF_FFFF_FFFF_8687);
    assert_eq!(cpu.reg(A3), 0x8687);
    assert_eq!(cpu.reg(A4), 0xFFFF_FFFF_8485_8687);
    assert_eq!(cpu.reg(A5), 0x8485_8687);
    assert_eq!(cpu.reg(A6), 0x8081_8283_8485_8687);
    assert_eq!(cpu.reg(A7), 0xFFFF_FFFF_FFFF_FF80);
    assert_eq!(cpu.reg(S2), 0xFFFF_FFFF_8081_8283);
    assert_eq!(cpu.reg(S3), 0x80);
}

#[test]
fn stores_write_only_their_width() {
    let mut a = Assembler::new();
    a.li_u64(T0, DATA)
        .li(T1, -1)
        .sd(T1, T0, 0)
        .sd(T1, T0, 8)
        .li_u64(T2, 0x1122_3344_5566_7788)
        .sb(T2, T0, 1)
        .sh(T2, T0, 4)
        .sw(T2, T0, 8)
        .sd(T2, T0, 16);
    let (_, ram) = run_to_ebreak(&mut a);
    let mut buf = [0u8; 24];
    ram.read(DATA, &mut buf).unwrap();
    assert_eq!(
        buf,
        [
            0xFF, 0x88, 0xFF, 0xFF, 0x88, 0x77, 0xFF, 0xFF, //
            0x88, 0x77, 0x66, 0x55, 0xFF, 0xFF, 0xFF, 0xFF, //
            0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
        ]
    );
}

#[test]
fn branches_taken_and_not_taken() {
    type BOp = fn(&mut Assembler, Reg, Reg, Label) -> &mut Assembler;
    let m1 = u64::MAX;
    let cases: &[(&str, BOp, u64, u64, bool)] = &[
        ("beq", Assembler::beq, 5, 5, true),
        ("beq", Assembler::beq, 5, 6, false),
        ("bne", Assembler::bne, 5, 6, true),
        ("bne", Assembler::bne, 5, 5, false),
        ("blt", Assembler::blt, m1, 1, true),
        ("blt", Assembler::blt, 1, m1, false),
        ("blt", Assembler::blt, 1, 1, false),
        ("bge", Assembler::bge, 1, m1, true),
        ("bge", Assembler::bge, 1, 1, true),
        ("bge", Assembler::bge, m1, 1, false),
        ("bltu", Assembler::bltu, 1, m1, true),
        ("bltu", Assembler::bltu, m1, 1, false),
        ("bgeu", Assembler::bgeu, m1, 1, true),
        ("bgeu", Assembler::bgeu, 1, 1, true),
        ("bgeu", Assembler::bgeu, 1, m1, false),
    ];
    for &(name, op, x, y, taken) in cases {
        // Forward branch.
        let mut a = Assembler::new();
        let target = a.label();
        let end = a.label();
        a.li_u64(T0, x).li_u64(T1, y);
        op(&mut a, T0, T1, target);
        a.li(A0, 1).j(end).bind(target).li(A0, 2).bind(end);
        let (cpu, _) = run_to_ebreak(&mut a);
        let expect = if taken { 2 } else { 1 };
        assert_eq!(cpu.reg(A0), expect, "{name} {x:#x},{y:#x} forward");

        // Backward branch: taken at most once thanks to a flag.
        let mut a = Assembler::new();
        let start = a.label();
        let back = a.label();
        let done = a.label();
        a.li_u64(T0, x).li_u64(T1, y).j(start);
        a.bind(back).li(A0, 7).j(done);
        a.bind(start);
        op(&mut a, T0, T1, back);
        a.li(A0, 3).bind(done);
        let (cpu, _) = run_to_ebreak(&mut a);
        let expect = if taken { 7 } else { 3 };
        assert_eq!(cpu.reg(A0), expect, "{name} {x:#x},{y:#x} backward");
    }
}

#[test]
fn jal_and_jalr_link() {
    let mut a = Assembler::new();
    let func = a.label();
    let end = a.label();
    a.call(func); // auipc ra + jalr ra
    let after_call = a.current_address();
    a.mv(S2, RA).jal(RA, func);
    let after_jal = a.current_address();
    a.mv(S3, RA);
    // jalr with rd == rs1 (target read before the link is written), and the low bit
    // of the target cleared.
    a.la(T0, end).addi(T0, T0, 1).jalr(T0, T0, 0);
    let after_jalr = a.current_address();
    a.li(A0, 99).j(end); // skipped by the jalr
    a.bind(func).addi(S4, S4, 1).ret();
    a.bind(end);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(S2), RAM_BASE + after_call);
    assert_eq!(cpu.reg(S3), RAM_BASE + after_jal);
    assert_eq!(cpu.reg(T0), RAM_BASE + after_jalr);
    assert_eq!(cpu.reg(S4), 2);
    assert_eq!(cpu.reg(A0), 0, "jalr target skipped the li");
}

#[test]
fn jump_targets_need_only_2_byte_alignment() {
    // With the C extension, IALIGN is 16: a jalr to a 2-aligned address is taken and
    // links. The target holds the all-zero parcel, a reserved (illegal) compressed
    // instruction, so the run stops there.
    let mut a = Assembler::new();
    a.li_u64(T0, RAM_BASE + 0x102).li(RA, 5);
    let jalr_pc = RAM_BASE + a.offset();
    a.jalr(RA, T0, 0);
    let (cpu, _, e) = run_to_exception(&a);
    assert_eq!(e, Exception::IllegalInstruction);
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 0x102));
    assert_eq!(cpu.csr(csr::MTVAL), Some(0));
    assert_eq!(cpu.reg(RA), jalr_pc + 4, "the jalr linked");

    // jal with offset 6, and a taken branch with offset 2.
    let mut a = Assembler::new();
    a.emit(jal(RA, 6).unwrap());
    let (cpu, _, e) = run_to_exception(&a);
    assert_eq!(e, Exception::IllegalInstruction);
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 6));
    assert_eq!(cpu.reg(RA), RAM_BASE + 4);

    let mut a = Assembler::new();
    a.emit(bne(ZERO, ZERO, 2).unwrap()) // not taken
        .emit(beq(ZERO, ZERO, 2).unwrap());
    let (cpu, _, e) = run_to_exception(&a);
    assert_eq!(e, Exception::IllegalInstruction);
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 6));
    assert_eq!(cpu.instret(), 2);

    // Only an odd pc is misaligned (no instruction can jump there: jalr clears bit 0
    // and offsets are even), and mepc never holds bit 0.
    let mut cpu = Cpu::new(RAM_BASE + 1);
    let mut ram = Ram::new(1 << 16);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    let out = cpu.step(&mut ram, &mut NoMmio);
    assert_eq!(
        out,
        StepOutcome::Exception(Exception::InstructionAddressMisaligned)
    );
    assert_eq!(cpu.csr(csr::MTVAL), Some(RAM_BASE + 1));
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE));
    cpu.set_csr(csr::MEPC, RAM_BASE + 7).unwrap();
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 6));
}

#[test]
fn illegal_encodings_trap_with_instruction_bits() {
    // (instruction, mtval): a reserved compressed instruction reports its 16 bits.
    let illegal: &[(u32, u32)] = &[
        (0x0000_0000, 0),           // all zeros: the reserved compressed parcel
        (0xFFFF_FFFF, 0xFFFF_FFFF), // all ones
        (0x1234_8000, 0x8000),      // compressed quadrant 0, funct3 100 (reserved)
        (0x1234_2001, 0x2001),      // c.addiw x0 (reserved)
        (0x0000_2008, 0x2008),      // c.fld (no D extension)
        (0x0415_1513, 0x0415_1513), // slli with funct6 = 1
        (0x8005_5513, 0x8005_5513), // srli/srai with bad funct6
        (0x0205_151B, 0x0205_151B), // slliw with shamt bit 5 set
        (0x0400_0533, 0x0400_0533), // OP with funct7 = 2
        (0x4000_1533, 0x4000_1533), // OP with funct7 0x20 and funct3 1
        (0x0200_153B, 0x0200_153B), // mulw family funct3 1 (does not exist)
        (0x0000_7003, 0x0000_7003), // load funct3 7
        (0x0000_4023, 0x0000_4023), // store funct3 4
        (0x0000_2063, 0x0000_2063), // branch funct3 2
        (0x0000_1067, 0x0000_1067), // jalr funct3 1
        (0x0000_200F, 0x0000_200F), // misc-mem funct3 2
        (0x1020_0173, 0x1020_0173), // sret with rd != 0 (reserved)
        (0x2020_0073, 0x2020_0073), // no such SYSTEM instruction (hret was removed)
        (0x0000_4073, 0x0000_4073), // system funct3 4
        (0x0000_007F, 0x0000_007F), // unknown major opcode
    ];
    for &(inst, tval) in illegal {
        let mut a = Assembler::new();
        a.addi(A0, ZERO, 1).emit(inst);
        let (cpu, _, e) = run_to_exception(&a);
        assert_eq!(e, Exception::IllegalInstruction, "{inst:#010x}");
        assert_eq!(cpu.csr(csr::MCAUSE), Some(2));
        assert_eq!(cpu.csr(csr::MTVAL), Some(u64::from(tval)), "{inst:#010x}");
        assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 4));
        assert_eq!(cpu.instret(), 1, "the illegal instruction did not retire");
        assert_eq!(cpu.privilege(), Privilege::Machine);
    }
}

#[test]
fn fence_and_fence_i_are_nops() {
    let mut a = Assembler::new();
    a.li(A0, 1)
        .fence()
        .fence_i()
        .emit(0x8330_000F) /* fence.tso */
        .addi(A0, A0, 1);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(A0), 2);
    assert_eq!(cpu.instret(), 5);
}
