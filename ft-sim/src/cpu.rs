//! An instruction-counted RISC-V RV64IMAC + Zicsr + Zicntr interpreter (machine and
//! user mode).
//!
//! Compressed instructions (the C extension, [`crate::rvc`]) are expanded to the
//! 32-bit instruction they stand for and count as one instruction like any other;
//! instruction addresses need only be 2-byte aligned.
//!
//! # Execution point and `instret`
//!
//! [`Cpu::instret`] counts retired instructions and is the machine's execution point:
//!
//! * every retired instruction increments it by exactly 1 (after its effects are done
//!   and `pc` points to the next instruction);
//! * an instruction that raises an exception does not retire: registers and memory are
//!   unchanged, `mepc` holds its address, `instret` is unchanged;
//! * taking an interrupt retires nothing (`mepc` is the next, not yet executed,
//!   instruction);
//! * an instruction whose MMIO access reports [`MmioResult::Stall`] does not retire and
//!   has no effect; it is executed again by a later [`Cpu::step`] / [`Cpu::run`];
//! * a `wfi` with no enabled interrupt pending (`mip & mie == 0`) does not retire:
//!   the step reports [`StepOutcome::Idle`] with pc still at the `wfi`, and a later
//!   step executes it again. A `wfi` executed with `mip & mie != 0` retires as a no-op
//!   (whatever `mstatus.MIE`).
//!
//! Asynchronous events are placed by the caller between instructions: a bit set with
//! [`Cpu::set_mip`] while `instret == N` is taken (if enabled) at the top of the next
//! step, before instruction `N + 1` executes — with one exception: if instruction
//! `N + 1` is a `wfi` (that is legal to execute), the `wfi` executes first (it
//! retires at once, since an enabled interrupt is pending) and the interrupt is taken
//! right after it, with `mepc` = the `wfi`'s address + 4 (`wfi` has no compressed form). This is what the privileged
//! specification requires for an interrupt that wakes a waiting hart, it avoids lost
//! wake-ups (the handler returns *after* the `wfi`), and it depends only on
//! architectural state (pc, memory, `mip`, `mie`, `mstatus`), not on whether the `wfi`
//! had already been attempted and reported Idle — so record and replay agree.
//!
//! # MMIO
//!
//! RAM accesses go straight to [`Ram`]; every other data address goes to the caller's
//! [`Mmio`]. A device may complete an access and ask the CPU to stop right after the
//! instruction retires ([`MmioResult::OkStop`]): [`Cpu::run`] then returns
//! [`StepExit::MmioStop`] with `instret` already counting that instruction, so the
//! device event is placed at that exact execution point. Likewise a RAM store to the
//! word watched with [`Cpu::set_store_watch`] retires and then ends `run` with
//! [`StepExit::Watch`].
//!
//! # Atomics (the A extension)
//!
//! `lr`/`sc` and the AMOs work on RAM only, naturally aligned (a misaligned one raises
//! a load (`lr`) or store/AMO address-misaligned exception; outside RAM, an access
//! fault). With a single hart, `aq`/`rl` order nothing. The reservation `lr` takes is
//! part of the architectural state: an `sc` succeeds only at the reserved address with
//! no trap in between (every trap entry clears it), and [`Cpu::cancel_reservation`] lets
//! the machine clear it when a device writes RAM (DMA), at a logged point, so record
//! and replay agree.
//!
//! # Counters (Zicntr)
//!
//! `mcycle`/`cycle` and `minstret`/`instret` advance by one per retired instruction
//! (the model has one cycle per instruction) and are writable in M-mode; a write sets
//! the value the *next* instruction reads. They never move the execution point
//! ([`Cpu::instret`]). `time` is not hart state: a read asks the platform through
//! [`Mmio::time`], which on the ft machines is a logged clock read (a nondeterministic
//! input, like any other). `mcountinhibit` is hardwired to zero.
//!
//! An exception raised at the trap vector that leaves the state unchanged (e.g.
//! `mtvec` pointing outside RAM) would loop forever without retiring; `run` reports
//! it as [`StepExit::TrapLoop`] instead.

use serde::{Deserialize, Serialize};

use crate::memory::Ram;
use crate::rvc;

/// Errors of the [`Cpu`] inspection/setup API (never of guest execution, which traps).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// No such CSR.
    #[error("unknown CSR {0:#x}")]
    UnknownCsr(u16),
    /// The CSR is read-only.
    #[error("CSR {0:#x} is read-only")]
    ReadOnlyCsr(u16),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, CpuError>;

/// Result of an MMIO access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MmioResult<T> {
    /// The access completed.
    Ok(T),
    /// The access completed; the instruction retires and the CPU then stops
    /// ([`StepOutcome::RetiredStop`], [`StepExit::MmioStop`]), with `instret` already
    /// incremented for this instruction.
    OkStop(T),
    /// No device there: the instruction raises a load/store access fault.
    Fault,
    /// The device cannot answer yet: the instruction does not retire and has no
    /// effect (pc, registers unchanged); the CPU reports [`StepExit::Stall`] and the
    /// caller executes it again later.
    Stall,
}

/// Memory-mapped I/O outside RAM.
pub trait Mmio {
    /// Load `size` (1, 2, 4 or 8) bytes at `addr` (naturally aligned). Only the low
    /// `size` bytes of the returned value are used.
    fn load(&mut self, addr: u64, size: u8) -> MmioResult<u64>;
    /// Store the low `size` (1, 2, 4 or 8) bytes of `value` at `addr` (naturally
    /// aligned).
    fn store(&mut self, addr: u64, size: u8, value: u64) -> MmioResult<()>;
    /// The platform's real-time counter, read by the `time` CSR (`rdtime`). The
    /// default has none: the read raises an illegal-instruction exception, as the
    /// privileged specification allows for a trapped, emulated `time`.
    /// [`MmioResult::Stall`] works as for a load (the instruction runs again later);
    /// `OkStop` is taken as `Ok`.
    fn time(&mut self) -> MmioResult<u64> {
        MmioResult::Fault
    }
}

impl<M: Mmio + ?Sized> Mmio for &mut M {
    fn load(&mut self, addr: u64, size: u8) -> MmioResult<u64> {
        (**self).load(addr, size)
    }
    fn store(&mut self, addr: u64, size: u8, value: u64) -> MmioResult<()> {
        (**self).store(addr, size, value)
    }
    fn time(&mut self) -> MmioResult<u64> {
        (**self).time()
    }
}

/// An [`Mmio`] with no devices: every access faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoMmio;

impl Mmio for NoMmio {
    fn load(&mut self, _addr: u64, _size: u8) -> MmioResult<u64> {
        MmioResult::Fault
    }
    fn store(&mut self, _addr: u64, _size: u8, _value: u64) -> MmioResult<()> {
        MmioResult::Fault
    }
}

/// Privilege mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Privilege {
    /// User mode (encoding 0).
    User,
    /// Machine mode (encoding 3).
    Machine,
}

impl Privilege {
    /// The architectural encoding (as in `mstatus.MPP`).
    pub const fn bits(self) -> u64 {
        match self {
            Privilege::User => 0,
            Privilege::Machine => 3,
        }
    }
}

/// Synchronous exceptions (the value of `mcause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exception {
    /// Cause 0: jump/branch target (or pc) not 4-byte aligned; `mtval` = target.
    InstructionAddressMisaligned,
    /// Cause 1: instruction fetch outside RAM; `mtval` = pc.
    InstructionAccessFault,
    /// Cause 2: `mtval` = the instruction bits.
    IllegalInstruction,
    /// Cause 3 (`ebreak`); `mtval` = pc.
    Breakpoint,
    /// Cause 4; `mtval` = address.
    LoadAddressMisaligned,
    /// Cause 5; `mtval` = address.
    LoadAccessFault,
    /// Cause 6; `mtval` = address.
    StoreAddressMisaligned,
    /// Cause 7; `mtval` = address.
    StoreAccessFault,
    /// Cause 8 (`ecall` in U-mode); `mtval` = 0.
    EcallFromU,
    /// Cause 11 (`ecall` in M-mode); `mtval` = 0.
    EcallFromM,
}

impl Exception {
    /// The `mcause` exception code.
    pub const fn code(self) -> u64 {
        match self {
            Exception::InstructionAddressMisaligned => 0,
            Exception::InstructionAccessFault => 1,
            Exception::IllegalInstruction => 2,
            Exception::Breakpoint => 3,
            Exception::LoadAddressMisaligned => 4,
            Exception::LoadAccessFault => 5,
            Exception::StoreAddressMisaligned => 6,
            Exception::StoreAccessFault => 7,
            Exception::EcallFromU => 8,
            Exception::EcallFromM => 11,
        }
    }
}

/// Machine-level interrupts (priority: external > software > timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interrupt {
    /// MSI, code 3.
    MachineSoftware,
    /// MTI, code 7.
    MachineTimer,
    /// MEI, code 11.
    MachineExternal,
}

impl Interrupt {
    /// The interrupt code (`mcause` without the interrupt bit; also its `mip` bit).
    pub const fn code(self) -> u64 {
        match self {
            Interrupt::MachineSoftware => 3,
            Interrupt::MachineTimer => 7,
            Interrupt::MachineExternal => 11,
        }
    }

    /// Its bit in `mip` / `mie`.
    pub const fn mask(self) -> u64 {
        1 << self.code()
    }
}

/// `mip`/`mie` bit of the machine software interrupt.
pub const MIP_MSIP: u64 = 1 << 3;
/// `mip`/`mie` bit of the machine timer interrupt.
pub const MIP_MTIP: u64 = 1 << 7;
/// `mip`/`mie` bit of the machine external interrupt.
pub const MIP_MEIP: u64 = 1 << 11;
const MIP_MASK: u64 = MIP_MSIP | MIP_MTIP | MIP_MEIP;

/// `mstatus.MIE`.
pub const MSTATUS_MIE: u64 = 1 << 3;
/// `mstatus.MPIE`.
pub const MSTATUS_MPIE: u64 = 1 << 7;
/// `mstatus.MPP` (two bits).
pub const MSTATUS_MPP: u64 = 3 << 11;
/// `mstatus.TW` (timeout wait: `wfi` in U-mode is illegal when set).
pub const MSTATUS_TW: u64 = 1 << 21;
const MSTATUS_UXL_64: u64 = 2 << 32;
const MSTATUS_WRITABLE: u64 = MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_TW;

/// The `mcause` interrupt bit.
pub const MCAUSE_INTERRUPT: u64 = 1 << 63;

/// Value of `misa`: MXL = 64, extensions A, C, I, M, U.
pub const MISA: u64 = (2 << 62) | 1 | (1 << 2) | (1 << 8) | (1 << 12) | (1 << 20);

/// CSR addresses.
pub mod csr {
    /// Machine status.
    pub const MSTATUS: u16 = 0x300;
    /// ISA and extensions (writes ignored).
    pub const MISA: u16 = 0x301;
    /// Exception delegation (stored, no effect: no S-mode).
    pub const MEDELEG: u16 = 0x302;
    /// Interrupt delegation (stored, no effect: no S-mode).
    pub const MIDELEG: u16 = 0x303;
    /// Interrupt enable.
    pub const MIE: u16 = 0x304;
    /// Trap vector (mode 0 direct, 1 vectored).
    pub const MTVEC: u16 = 0x305;
    /// Counter enable for U-mode (bit 0 cycle, 1 time, 2 instret).
    pub const MCOUNTEREN: u16 = 0x306;
    /// Counter inhibit (reads 0, writes ignored).
    pub const MCOUNTINHIBIT: u16 = 0x320;
    /// Scratch.
    pub const MSCRATCH: u16 = 0x340;
    /// Exception pc.
    pub const MEPC: u16 = 0x341;
    /// Trap cause.
    pub const MCAUSE: u16 = 0x342;
    /// Trap value.
    pub const MTVAL: u16 = 0x343;
    /// Interrupt pending (set by the machine via `Cpu::set_mip`; CSR writes ignored).
    pub const MIP: u16 = 0x344;
    /// Address translation (only Bare: reads 0, writes ignored).
    pub const SATP: u16 = 0x180;
    /// First PMP configuration register (`pmpcfg0..15` are `0x3a0..=0x3af`).
    pub const PMPCFG0: u16 = 0x3A0;
    /// First PMP address register (`pmpaddr0..63` are `0x3b0..=0x3ef`).
    pub const PMPADDR0: u16 = 0x3B0;
    /// Cycle counter (one cycle per retired instruction; writable).
    pub const MCYCLE: u16 = 0xB00;
    /// Retired-instruction counter (writable; the execution point is not).
    pub const MINSTRET: u16 = 0xB02;
    /// User view of `mcycle` (read-only).
    pub const CYCLE: u16 = 0xC00;
    /// Real time, read from the platform ([`super::Mmio::time`]; read-only).
    pub const TIME: u16 = 0xC01;
    /// User view of `minstret` (read-only).
    pub const INSTRET: u16 = 0xC02;
    /// Vendor id (0, read-only).
    pub const MVENDORID: u16 = 0xF11;
    /// Architecture id (0, read-only).
    pub const MARCHID: u16 = 0xF12;
    /// Implementation id (0, read-only).
    pub const MIMPID: u16 = 0xF13;
    /// Hart id (0, read-only).
    pub const MHARTID: u16 = 0xF14;
    /// Configuration pointer (0, read-only).
    pub const MCONFIGPTR: u16 = 0xF15;
}

/// What one [`Cpu::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepOutcome {
    /// One instruction retired (`instret` + 1).
    Retired,
    /// One instruction retired (`instret` + 1) and its MMIO access asked to stop
    /// ([`MmioResult::OkStop`]).
    RetiredStop,
    /// One instruction retired (`instret` + 1): a store to RAM that overlapped the
    /// watched word ([`Cpu::set_store_watch`]).
    RetiredWatch,
    /// An exception was taken; nothing retired.
    Exception(Exception),
    /// An interrupt was taken; nothing retired.
    Interrupt(Interrupt),
    /// `wfi` with no enabled interrupt pending; nothing retired, pc unchanged (still
    /// at the `wfi`, which the next step executes again).
    Idle,
    /// An MMIO access stalled; nothing retired, no state changed.
    Stall,
    /// An exception was raised by the first instruction of the trap handler and
    /// entering the trap left the state unchanged: without outside intervention the
    /// CPU would loop forever without retiring.
    TrapLoop,
}

/// Why [`Cpu::run`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepExit {
    /// `instret` reached the target (`instret >= until`).
    Budget,
    /// `wfi` with nothing pending (not retired; see [`StepOutcome::Idle`]).
    Idle,
    /// An MMIO access stalled (not retired; see [`MmioResult::Stall`]).
    Stall,
    /// The last instruction retired (`instret` already counts it) and its MMIO access
    /// returned [`MmioResult::OkStop`]. May be returned with `instret == until`.
    MmioStop,
    /// The last instruction retired (`instret` already counts it) and was a RAM store
    /// overlapping the watched word ([`Cpu::set_store_watch`], e.g. HTIF `tohost`).
    /// May be returned with `instret == until`.
    Watch,
    /// No forward progress is possible (see [`StepOutcome::TrapLoop`]).
    TrapLoop,
}

/// The architectural state of one RV64IMAC hart.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Cpu {
    x: [u64; 32],
    pc: u64,
    privilege: Privilege,
    instret: u64,
    mstatus: u64,
    mtvec: u64,
    mepc: u64,
    mcause: u64,
    mtval: u64,
    mie: u64,
    mip: u64,
    mscratch: u64,
    medeleg: u64,
    mideleg: u64,
    mcounteren: u64,
    pmpcfg: [u64; 16],
    pmpaddr: [[u64; 32]; 2],
    /// `mcycle - instret` (wrapping): `mcycle` reads `instret + mcycle_offset`.
    mcycle_offset: u64,
    /// `minstret - instret` (wrapping).
    minstret_offset: u64,
    /// The address an `lr` reserved, until an `sc`, a trap or a device write.
    reservation: Option<u64>,
    /// Watched RAM word (not architectural; carried along for snapshots).
    store_watch: Option<u64>,
}

const WFI: u32 = 0x1050_0073;

/// Why an instruction that retires asks [`Cpu::run`] to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    None,
    Mmio,
    Watch,
}

/// Sign-extends the low 32 bits.
#[inline(always)]
fn sext32(v: u64) -> u64 {
    v as i32 as i64 as u64
}

#[inline(always)]
fn i_imm(inst: u32) -> u64 {
    ((inst as i32) >> 20) as i64 as u64
}

#[inline(always)]
fn s_imm(inst: u32) -> u64 {
    ((((inst & 0xFE00_0000) as i32) >> 20) | ((inst >> 7) & 0x1F) as i32) as i64 as u64
}

#[inline(always)]
fn b_imm(inst: u32) -> u64 {
    let v = ((((inst as i32) >> 31) << 12) as u32)
        | ((inst & 0x80) << 4)
        | ((inst >> 20) & 0x7E0)
        | ((inst >> 7) & 0x1E);
    v as i32 as i64 as u64
}

#[inline(always)]
fn j_imm(inst: u32) -> u64 {
    let v = ((((inst as i32) >> 31) << 20) as u32)
        | (inst & 0xF_F000)
        | ((inst >> 9) & 0x800)
        | ((inst >> 20) & 0x7FE);
    v as i32 as i64 as u64
}

#[inline(always)]
fn u_imm(inst: u32) -> u64 {
    (inst & 0xFFFF_F000) as i32 as i64 as u64
}

impl Cpu {
    /// A hart in M-mode at `entry_pc`, all registers and CSRs zero, `instret` 0.
    pub fn new(entry_pc: u64) -> Cpu {
        Cpu {
            x: [0; 32],
            pc: entry_pc,
            privilege: Privilege::Machine,
            instret: 0,
            mstatus: 0,
            mtvec: 0,
            mepc: 0,
            mcause: 0,
            mtval: 0,
            mie: 0,
            mip: 0,
            mscratch: 0,
            medeleg: 0,
            mideleg: 0,
            mcounteren: 0,
            pmpcfg: [0; 16],
            pmpaddr: [[0; 32]; 2],
            mcycle_offset: 0,
            minstret_offset: 0,
            reservation: None,
            store_watch: None,
        }
    }

    /// Address of the next instruction to execute.
    pub fn pc(&self) -> u64 {
        self.pc
    }

    /// Sets the pc.
    pub fn set_pc(&mut self, pc: u64) {
        self.pc = pc;
    }

    /// Register `x[i]` (0 for `i >= 32`; `x0` is always 0).
    pub fn reg(&self, i: impl Into<usize>) -> u64 {
        self.x.get(i.into()).copied().unwrap_or(0)
    }

    /// Sets `x[i]`; writes to `x0` or `i >= 32` are ignored.
    pub fn set_reg(&mut self, i: impl Into<usize>, value: u64) {
        let i = i.into();
        if i != 0 {
            if let Some(r) = self.x.get_mut(i) {
                *r = value;
            }
        }
    }

    /// All 32 integer registers.
    pub fn regs(&self) -> &[u64; 32] {
        &self.x
    }

    /// Number of retired instructions: the execution point.
    pub fn instret(&self) -> u64 {
        self.instret
    }

    /// Current privilege mode.
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// Sets the privilege mode.
    pub fn set_privilege(&mut self, p: Privilege) {
        self.privilege = p;
    }

    /// Reads a CSR with machine-mode rights and no side effects; `None` if unknown.
    pub fn csr(&self, addr: u16) -> Option<u64> {
        self.csr_read(addr)
    }

    /// Writes a CSR with machine-mode rights, applying the same write rules (WARL
    /// masks, ignored writes) as a guest `csrrw`. `mip` writes are ignored: use
    /// [`Cpu::set_mip`].
    pub fn set_csr(&mut self, addr: u16, value: u64) -> Result<()> {
        if self.csr_read(addr).is_none() {
            return Err(CpuError::UnknownCsr(addr));
        }
        if (addr >> 10) & 3 == 3 {
            return Err(CpuError::ReadOnlyCsr(addr));
        }
        self.csr_write(addr, value, 0);
        Ok(())
    }

    /// The address reserved by the last `lr`, if the reservation still stands.
    pub fn reservation(&self) -> Option<u64> {
        self.reservation
    }

    /// Drops the `lr` reservation, so the next `sc` fails. A machine calls this when
    /// something other than the hart (a device's DMA) writes RAM.
    pub fn cancel_reservation(&mut self) {
        self.reservation = None;
    }

    /// Watches the 8-byte RAM word at `addr` (`None`: no watch): any retired store to
    /// RAM overlapping `[addr, addr + 8)` ends [`Cpu::run`] with [`StepExit::Watch`]
    /// right after it retires (HTIF `tohost` polling without an MMIO device). Stores
    /// that go to [`Mmio`] are not watched.
    pub fn set_store_watch(&mut self, addr: Option<u64>) {
        self.store_watch = addr;
    }

    /// The watched RAM word, if any.
    pub fn store_watch(&self) -> Option<u64> {
        self.store_watch
    }

    /// Current `mip`.
    pub fn mip(&self) -> u64 {
        self.mip
    }

    /// Sets (`on`) or clears the `mip` bits in `mask` (only [`MIP_MSIP`],
    /// [`MIP_MTIP`], [`MIP_MEIP`] exist; other bits are ignored). This is how the
    /// machine raises and lowers interrupt lines.
    pub fn set_mip(&mut self, mask: u64, on: bool) {
        let mask = mask & MIP_MASK;
        if on {
            self.mip |= mask;
        } else {
            self.mip &= !mask;
        }
    }

    /// Whether an interrupt is pending, enabled in `mie`, and globally enabled (U-mode,
    /// or M-mode with `mstatus.MIE`): the next step takes it (unless the next
    /// instruction is a `wfi`, which retires first; see the module docs).
    pub fn pending_interrupt(&self) -> bool {
        self.mip & self.mie != 0
            && (self.privilege == Privilege::User || self.mstatus & MSTATUS_MIE != 0)
    }

    /// Whether an interrupt is pending and enabled in `mie` (regardless of
    /// `mstatus.MIE`): the condition that completes a `wfi`.
    pub fn wakeup_pending(&self) -> bool {
        self.mip & self.mie != 0
    }

    /// Feeds the whole architectural state into a hasher.
    pub fn digest_into(&self, h: &mut impl std::hash::Hasher) {
        std::hash::Hash::hash(self, h);
    }

    /// Runs until `instret == until` (never beyond) or another exit.
    ///
    /// Before every step (instruction, or interrupt entry) it checks
    /// `instret < until`; if `instret >= until` on entry it returns
    /// [`StepExit::Budget`] without changing any state (no interrupt is taken).
    /// Exceptions and interrupts consume no budget.
    pub fn run<M: Mmio + ?Sized>(&mut self, ram: &mut Ram, mmio: &mut M, until: u64) -> StepExit {
        while self.instret < until {
            match self.step(ram, mmio) {
                StepOutcome::Retired | StepOutcome::Exception(_) | StepOutcome::Interrupt(_) => {}
                StepOutcome::RetiredStop => return StepExit::MmioStop,
                StepOutcome::RetiredWatch => return StepExit::Watch,
                StepOutcome::Idle => return StepExit::Idle,
                StepOutcome::Stall => return StepExit::Stall,
                StepOutcome::TrapLoop => return StepExit::TrapLoop,
            }
        }
        StepExit::Budget
    }

    /// Executes one step: takes a pending enabled interrupt, or fetches and executes
    /// one instruction (which retires, traps, stalls or idles).
    #[inline]
    pub fn step<M: Mmio + ?Sized>(&mut self, ram: &mut Ram, mmio: &mut M) -> StepOutcome {
        let pending = self.mip & self.mie;
        if pending != 0 && (self.privilege == Privilege::User || self.mstatus & MSTATUS_MIE != 0) {
            return self.interrupt_or_wfi(ram, pending);
        }
        let pc = self.pc;
        if pc & 1 != 0 {
            return self.exception(Exception::InstructionAddressMisaligned, pc);
        }
        let raw = match ram.load_u32(pc) {
            Ok(raw) => raw,
            Err(_) => return self.fetch_at_the_end(ram, mmio),
        };
        if raw & 3 == 3 {
            return self.execute_as(raw, 4, raw, ram, mmio);
        }
        self.execute_compressed(raw as u16, ram, mmio)
    }

    /// The C extension: expand the 16-bit instruction and execute it with length 2. An
    /// illegal one (reserved, or an expansion this CPU lacks, such as `c.fld`) reports
    /// its 16 bits in `mtval`.
    #[inline(always)]
    fn execute_compressed<M: Mmio + ?Sized>(
        &mut self,
        parcel: u16,
        ram: &mut Ram,
        mmio: &mut M,
    ) -> StepOutcome {
        let Some(inst) = rvc::expand(parcel) else {
            return self.illegal(u32::from(parcel));
        };
        self.execute_as(inst, 2, u32::from(parcel), ram, mmio)
    }

    /// A 4-byte fetch at `pc` failed: either `pc` is outside RAM, or a 16-bit
    /// instruction sits in the last two bytes of RAM (or a 32-bit one straddles its
    /// end, which faults on its second half).
    #[cold]
    #[inline(never)]
    fn fetch_at_the_end<M: Mmio + ?Sized>(&mut self, ram: &mut Ram, mmio: &mut M) -> StepOutcome {
        let pc = self.pc;
        match ram.load_u16(pc) {
            Ok(parcel) if rvc::is_compressed(parcel) => self.execute_compressed(parcel, ram, mmio),
            Ok(_) => self.exception(Exception::InstructionAccessFault, pc.wrapping_add(2)),
            Err(_) => self.exception(Exception::InstructionAccessFault, pc),
        }
    }

    /// An enabled interrupt is pending. If the next instruction is a `wfi` that may
    /// execute, it retires first (the interrupt is taken at the next step with
    /// `mepc` after it); otherwise the interrupt is taken now.
    #[cold]
    #[inline(never)]
    fn interrupt_or_wfi(&mut self, ram: &Ram, pending: u64) -> StepOutcome {
        let wfi_allowed = self.privilege == Privilege::Machine || self.mstatus & MSTATUS_TW == 0;
        if self.pc & 1 == 0 && wfi_allowed && ram.load_u32(self.pc) == Ok(WFI) {
            self.pc = self.pc.wrapping_add(4);
            self.instret = self.instret.wrapping_add(1);
            return StepOutcome::Retired;
        }
        self.take_interrupt(pending)
    }

    /// Enters a trap to M-mode at `target`.
    #[inline(always)]
    fn enter_trap(&mut self, cause: u64, tval: u64, target: u64) {
        self.reservation = None;
        self.mepc = self.pc & !1;
        self.mcause = cause;
        self.mtval = tval;
        let mpie = if self.mstatus & MSTATUS_MIE != 0 {
            MSTATUS_MPIE
        } else {
            0
        };
        self.mstatus = (self.mstatus & !(MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP))
            | mpie
            | (self.privilege.bits() << 11);
        self.privilege = Privilege::Machine;
        self.pc = target;
    }

    #[cold]
    #[inline(never)]
    fn exception(&mut self, e: Exception, tval: u64) -> StepOutcome {
        let before = (
            self.pc,
            self.privilege,
            self.mstatus,
            self.mepc,
            self.mcause,
            self.mtval,
        );
        self.enter_trap(e.code(), tval, self.mtvec & !3);
        let after = (
            self.pc,
            self.privilege,
            self.mstatus,
            self.mepc,
            self.mcause,
            self.mtval,
        );
        if before == after {
            StepOutcome::TrapLoop
        } else {
            StepOutcome::Exception(e)
        }
    }

    #[cold]
    #[inline(never)]
    fn illegal(&mut self, inst: u32) -> StepOutcome {
        self.exception(Exception::IllegalInstruction, u64::from(inst))
    }

    #[cold]
    #[inline(never)]
    fn take_interrupt(&mut self, pending: u64) -> StepOutcome {
        let irq = if pending & MIP_MEIP != 0 {
            Interrupt::MachineExternal
        } else if pending & MIP_MSIP != 0 {
            Interrupt::MachineSoftware
        } else {
            Interrupt::MachineTimer
        };
        let base = self.mtvec & !3;
        let target = if self.mtvec & 1 != 0 {
            base.wrapping_add(4 * irq.code())
        } else {
            base
        };
        self.enter_trap(MCAUSE_INTERRUPT | irq.code(), 0, target);
        StepOutcome::Interrupt(irq)
    }

    #[inline(always)]
    fn load<M: Mmio + ?Sized>(
        &mut self,
        ram: &Ram,
        mmio: &mut M,
        addr: u64,
        size: u8,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        let r = match size {
            1 => ram.load_u8(addr).map(u64::from),
            2 => ram.load_u16(addr).map(u64::from),
            4 => ram.load_u32(addr).map(u64::from),
            _ => ram.load_u64(addr),
        };
        match r {
            Ok(v) => Ok(v),
            // RAM completes misaligned accesses (as QEMU and spike do); a device
            // register does not.
            Err(_) if addr & (u64::from(size) - 1) != 0 => {
                Err(self.exception(Exception::LoadAddressMisaligned, addr))
            }
            Err(_) => self.mmio_load(mmio, addr, size, stop),
        }
    }

    #[cold]
    #[inline(never)]
    fn mmio_load<M: Mmio + ?Sized>(
        &mut self,
        mmio: &mut M,
        addr: u64,
        size: u8,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        match mmio.load(addr, size) {
            MmioResult::Ok(v) => Ok(v),
            MmioResult::OkStop(v) => {
                *stop = Stop::Mmio;
                Ok(v)
            }
            MmioResult::Fault => Err(self.exception(Exception::LoadAccessFault, addr)),
            MmioResult::Stall => Err(StepOutcome::Stall),
        }
    }

    #[inline(always)]
    fn store<M: Mmio + ?Sized>(
        &mut self,
        ram: &mut Ram,
        mmio: &mut M,
        addr: u64,
        size: u8,
        value: u64,
        stop: &mut Stop,
    ) -> std::result::Result<(), StepOutcome> {
        let r = match size {
            1 => ram.store_u8(addr, value as u8),
            2 => ram.store_u16(addr, value as u16),
            4 => ram.store_u32(addr, value as u32),
            _ => ram.store_u64(addr, value),
        };
        match r {
            Ok(()) => {
                self.watch(addr, size, stop);
                Ok(())
            }
            Err(_) if addr & (u64::from(size) - 1) != 0 => {
                Err(self.exception(Exception::StoreAddressMisaligned, addr))
            }
            Err(_) => self.mmio_store(mmio, addr, size, value, stop),
        }
    }

    /// A RAM store of `size` bytes at `addr` retired: does it touch the watched word?
    #[inline(always)]
    fn watch(&self, addr: u64, size: u8, stop: &mut Stop) {
        if let Some(w) = self.store_watch {
            // [addr, addr + size) overlaps [w, w + 8)?
            if addr.wrapping_sub(w) < 8 || w.wrapping_sub(addr) < u64::from(size) {
                *stop = Stop::Watch;
            }
        }
    }

    /// The A extension: `lr`, `sc` and the AMOs (`f5` is bits 31..27), of `size` 4 or
    /// 8 bytes at `addr`, on RAM only. Returns what `rd` receives.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        ram: &mut Ram,
        f5: u32,
        rs2: usize,
        addr: u64,
        size: u8,
        bits: u32,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        const LR: u32 = 0b00010;
        const SC: u32 = 0b00011;
        let misaligned = addr & (u64::from(size) - 1) != 0;
        let read = |ram: &Ram| {
            if size == 4 {
                ram.load_u32(addr).map(|v| sext32(u64::from(v)))
            } else {
                ram.load_u64(addr)
            }
        };
        let src = self.x[rs2];
        let (old, new) = match f5 {
            LR => {
                if rs2 != 0 {
                    return Err(self.illegal(bits));
                }
                if misaligned {
                    return Err(self.exception(Exception::LoadAddressMisaligned, addr));
                }
                let Ok(v) = read(ram) else {
                    return Err(self.exception(Exception::LoadAccessFault, addr));
                };
                self.reservation = Some(addr);
                return Ok(v);
            }
            SC => {
                if misaligned {
                    return Err(self.exception(Exception::StoreAddressMisaligned, addr));
                }
                if read(ram).is_err() {
                    return Err(self.exception(Exception::StoreAccessFault, addr));
                }
                if self.reservation.take() != Some(addr) {
                    return Ok(1);
                }
                (0, src)
            }
            0b00001 | 0b00000 | 0b00100 | 0b01100 | 0b01000 | 0b10000 | 0b10100 | 0b11000
            | 0b11100 => {
                if misaligned {
                    return Err(self.exception(Exception::StoreAddressMisaligned, addr));
                }
                let Ok(a) = read(ram) else {
                    return Err(self.exception(Exception::StoreAccessFault, addr));
                };
                let b = src;
                // Signed and unsigned views at the access width.
                let (sa, sb, ua, ub) = if size == 4 {
                    (
                        i64::from(a as i32),
                        i64::from(b as i32),
                        u64::from(a as u32),
                        u64::from(b as u32),
                    )
                } else {
                    (a as i64, b as i64, a, b)
                };
                let new = match f5 {
                    0b00001 => b,
                    0b00000 => a.wrapping_add(b),
                    0b00100 => a ^ b,
                    0b01100 => a & b,
                    0b01000 => a | b,
                    0b10000 => {
                        if sa <= sb {
                            a
                        } else {
                            b
                        }
                    }
                    0b10100 => {
                        if sa >= sb {
                            a
                        } else {
                            b
                        }
                    }
                    0b11000 => {
                        if ua <= ub {
                            a
                        } else {
                            b
                        }
                    }
                    _ => {
                        if ua >= ub {
                            a
                        } else {
                            b
                        }
                    }
                };
                (a, new)
            }
            _ => return Err(self.illegal(bits)),
        };
        let r = if size == 4 {
            ram.store_u32(addr, new as u32)
        } else {
            ram.store_u64(addr, new)
        };
        if r.is_err() {
            // Unreachable after the read above succeeded at the same address and
            // size; reported as the fault it would be rather than assumed away.
            return Err(self.exception(Exception::StoreAccessFault, addr));
        }
        self.watch(addr, size, stop);
        Ok(old)
    }

    #[cold]
    #[inline(never)]
    fn mmio_store<M: Mmio + ?Sized>(
        &mut self,
        mmio: &mut M,
        addr: u64,
        size: u8,
        value: u64,
        stop: &mut Stop,
    ) -> std::result::Result<(), StepOutcome> {
        let value = if size >= 8 {
            value
        } else {
            value & ((1u64 << (8 * u32::from(size))) - 1)
        };
        match mmio.store(addr, size, value) {
            MmioResult::Ok(()) => Ok(()),
            MmioResult::OkStop(()) => {
                *stop = Stop::Mmio;
                Ok(())
            }
            MmioResult::Fault => Err(self.exception(Exception::StoreAccessFault, addr)),
            MmioResult::Stall => Err(StepOutcome::Stall),
        }
    }

    /// Executes one fetched instruction at `self.pc`, `len` bytes long (4, or 2 for a
    /// compressed instruction, which arrives here expanded). `bits` is what an illegal
    /// instruction reports in `mtval`: the instruction as fetched (a compressed one's
    /// 16 bits, not its expansion).
    #[inline(always)]
    fn execute_as<M: Mmio + ?Sized>(
        &mut self,
        inst: u32,
        len: u64,
        bits: u32,
        ram: &mut Ram,
        mmio: &mut M,
    ) -> StepOutcome {
        let pc = self.pc;
        let rd = ((inst >> 7) & 31) as usize;
        let rs1 = ((inst >> 15) & 31) as usize;
        let rs2 = ((inst >> 20) & 31) as usize;
        let f3 = (inst >> 12) & 7;
        let f7 = inst >> 25;
        let mut next = pc.wrapping_add(len);
        let mut stop = Stop::None;

        macro_rules! illegal {
            () => {
                return self.illegal(bits)
            };
        }
        macro_rules! tri {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(out) => return out,
                }
            };
        }

        match inst & 0x7F {
            // LUI
            0x37 => self.x[rd] = u_imm(inst),
            // AUIPC
            0x17 => self.x[rd] = pc.wrapping_add(u_imm(inst)),
            // JAL
            0x6F => {
                let target = pc.wrapping_add(j_imm(inst));
                if target & 1 != 0 {
                    return self.exception(Exception::InstructionAddressMisaligned, target);
                }
                self.x[rd] = next;
                next = target;
            }
            // JALR
            0x67 => {
                if f3 != 0 {
                    illegal!();
                }
                let target = self.x[rs1].wrapping_add(i_imm(inst)) & !1;
                if target & 1 != 0 {
                    return self.exception(Exception::InstructionAddressMisaligned, target);
                }
                self.x[rd] = next;
                next = target;
            }
            // BRANCH
            0x63 => {
                let a = self.x[rs1];
                let b = self.x[rs2];
                let taken = match f3 {
                    0 => a == b,
                    1 => a != b,
                    4 => (a as i64) < (b as i64),
                    5 => (a as i64) >= (b as i64),
                    6 => a < b,
                    7 => a >= b,
                    _ => illegal!(),
                };
                if taken {
                    let target = pc.wrapping_add(b_imm(inst));
                    if target & 1 != 0 {
                        return self.exception(Exception::InstructionAddressMisaligned, target);
                    }
                    next = target;
                }
            }
            // LOAD
            0x03 => {
                let addr = self.x[rs1].wrapping_add(i_imm(inst));
                let v = match f3 {
                    0 => tri!(self.load(ram, mmio, addr, 1, &mut stop)) as u8 as i8 as i64 as u64,
                    1 => tri!(self.load(ram, mmio, addr, 2, &mut stop)) as u16 as i16 as i64 as u64,
                    2 => sext32(tri!(self.load(ram, mmio, addr, 4, &mut stop))),
                    3 => tri!(self.load(ram, mmio, addr, 8, &mut stop)),
                    4 => tri!(self.load(ram, mmio, addr, 1, &mut stop)) & 0xFF,
                    5 => tri!(self.load(ram, mmio, addr, 2, &mut stop)) & 0xFFFF,
                    6 => tri!(self.load(ram, mmio, addr, 4, &mut stop)) & 0xFFFF_FFFF,
                    _ => illegal!(),
                };
                self.x[rd] = v;
            }
            // STORE
            0x23 => {
                let addr = self.x[rs1].wrapping_add(s_imm(inst));
                let v = self.x[rs2];
                let size = match f3 {
                    0 => 1,
                    1 => 2,
                    2 => 4,
                    3 => 8,
                    _ => illegal!(),
                };
                tri!(self.store(ram, mmio, addr, size, v, &mut stop));
            }
            // OP-IMM
            0x13 => {
                let a = self.x[rs1];
                let imm = i_imm(inst);
                let shamt = (inst >> 20) & 63;
                self.x[rd] = match f3 {
                    0 => a.wrapping_add(imm),
                    1 => {
                        if inst >> 26 != 0 {
                            illegal!();
                        }
                        a << shamt
                    }
                    2 => u64::from((a as i64) < (imm as i64)),
                    3 => u64::from(a < imm),
                    4 => a ^ imm,
                    5 => match inst >> 26 {
                        0 => a >> shamt,
                        0x10 => ((a as i64) >> shamt) as u64,
                        _ => illegal!(),
                    },
                    6 => a | imm,
                    _ => a & imm,
                };
            }
            // OP-IMM-32
            0x1B => {
                let a = self.x[rs1];
                let shamt = (inst >> 20) & 31;
                self.x[rd] = match (f3, f7) {
                    (0, _) => sext32(a.wrapping_add(i_imm(inst))),
                    (1, 0) => sext32(a << shamt),
                    (5, 0) => sext32(u64::from((a as u32) >> shamt)),
                    (5, 0x20) => ((a as i32) >> shamt) as i64 as u64,
                    _ => illegal!(),
                };
            }
            // OP
            0x33 => {
                let a = self.x[rs1];
                let b = self.x[rs2];
                self.x[rd] = match (f7, f3) {
                    (0, 0) => a.wrapping_add(b),
                    (0x20, 0) => a.wrapping_sub(b),
                    (0, 1) => a << (b & 63),
                    (0, 2) => u64::from((a as i64) < (b as i64)),
                    (0, 3) => u64::from(a < b),
                    (0, 4) => a ^ b,
                    (0, 5) => a >> (b & 63),
                    (0x20, 5) => ((a as i64) >> (b & 63)) as u64,
                    (0, 6) => a | b,
                    (0, 7) => a & b,
                    (1, 0) => a.wrapping_mul(b),
                    (1, 1) => {
                        ((i128::from(a as i64).wrapping_mul(i128::from(b as i64))) >> 64) as u64
                    }
                    (1, 2) => ((i128::from(a as i64).wrapping_mul(i128::from(b))) >> 64) as u64,
                    (1, 3) => ((u128::from(a).wrapping_mul(u128::from(b))) >> 64) as u64,
                    (1, 4) => {
                        if b == 0 {
                            u64::MAX
                        } else {
                            (a as i64).wrapping_div(b as i64) as u64
                        }
                    }
                    (1, 5) => a.checked_div(b).unwrap_or(u64::MAX),
                    (1, 6) => {
                        if b == 0 {
                            a
                        } else {
                            (a as i64).wrapping_rem(b as i64) as u64
                        }
                    }
                    (1, 7) => a.checked_rem(b).unwrap_or(a),
                    _ => illegal!(),
                };
            }
            // OP-32
            0x3B => {
                let a = self.x[rs1];
                let b = self.x[rs2];
                let (a32, b32) = (a as u32, b as u32);
                self.x[rd] = match (f7, f3) {
                    (0, 0) => sext32(a.wrapping_add(b)),
                    (0x20, 0) => sext32(a.wrapping_sub(b)),
                    (0, 1) => sext32(u64::from(a32 << (b & 31))),
                    (0, 5) => sext32(u64::from(a32 >> (b & 31))),
                    (0x20, 5) => ((a32 as i32) >> (b & 31)) as i64 as u64,
                    (1, 0) => sext32(u64::from(a32.wrapping_mul(b32))),
                    (1, 4) => {
                        if b32 == 0 {
                            u64::MAX
                        } else {
                            (a32 as i32).wrapping_div(b32 as i32) as i64 as u64
                        }
                    }
                    (1, 5) => sext32(u64::from(a32.checked_div(b32).unwrap_or(u32::MAX))),
                    (1, 6) => {
                        if b32 == 0 {
                            sext32(a)
                        } else {
                            (a32 as i32).wrapping_rem(b32 as i32) as i64 as u64
                        }
                    }
                    (1, 7) => sext32(u64::from(a32.checked_rem(b32).unwrap_or(a32))),
                    _ => illegal!(),
                };
            }
            // AMO: the A extension
            0x2F => {
                let size = match f3 {
                    2 => 4,
                    3 => 8,
                    _ => illegal!(),
                };
                let addr = self.x[rs1];
                self.x[rd] = tri!(self.atomic(ram, inst >> 27, rs2, addr, size, bits, &mut stop));
            }
            // MISC-MEM: FENCE, FENCE.I (no-ops: single hart, no caches)
            0x0F => {
                if f3 > 1 {
                    illegal!();
                }
            }
            // SYSTEM
            0x73 => match f3 {
                0 => match inst {
                    0x0000_0073 => {
                        let e = match self.privilege {
                            Privilege::User => Exception::EcallFromU,
                            Privilege::Machine => Exception::EcallFromM,
                        };
                        return self.exception(e, 0);
                    }
                    0x0010_0073 => return self.exception(Exception::Breakpoint, pc),
                    // MRET
                    0x3020_0073 => {
                        if self.privilege != Privilege::Machine {
                            illegal!();
                        }
                        let mie = if self.mstatus & MSTATUS_MPIE != 0 {
                            MSTATUS_MIE
                        } else {
                            0
                        };
                        self.privilege = if (self.mstatus & MSTATUS_MPP) == MSTATUS_MPP {
                            Privilege::Machine
                        } else {
                            Privilege::User
                        };
                        self.mstatus =
                            (self.mstatus & !(MSTATUS_MIE | MSTATUS_MPP)) | mie | MSTATUS_MPIE;
                        next = self.mepc;
                    }
                    // WFI
                    WFI => {
                        if self.privilege == Privilege::User && self.mstatus & MSTATUS_TW != 0 {
                            illegal!();
                        }
                        if self.mip & self.mie == 0 {
                            return StepOutcome::Idle;
                        }
                    }
                    _ => illegal!(),
                },
                4 => illegal!(),
                _ => {
                    if let Err(out) = self.csr_op(inst, f3, rd, rs1, mmio) {
                        return out;
                    }
                }
            },
            _ => illegal!(),
        }

        self.x[0] = 0;
        self.pc = next;
        self.instret = self.instret.wrapping_add(1);
        match stop {
            Stop::None => StepOutcome::Retired,
            Stop::Mmio => StepOutcome::RetiredStop,
            Stop::Watch => StepOutcome::RetiredWatch,
        }
    }

    /// CSRRW/CSRRS/CSRRC and immediate forms. Writes `rd` on success.
    #[inline(never)]
    fn csr_op<M: Mmio + ?Sized>(
        &mut self,
        inst: u32,
        f3: u32,
        rd: usize,
        rs1: usize,
        mmio: &mut M,
    ) -> std::result::Result<(), StepOutcome> {
        let addr = (inst >> 20) as u16;
        let src = if f3 & 4 != 0 { rs1 as u64 } else { self.x[rs1] };
        let op = f3 & 3;
        let writes = op == 1 || rs1 != 0;
        let level = u64::from((addr >> 8) & 3);
        if level > self.privilege.bits() {
            return Err(self.illegal(inst));
        }
        if writes && (addr >> 10) & 3 == 3 {
            return Err(self.illegal(inst));
        }
        if self.privilege == Privilege::User
            && (0xC00..=0xC1F).contains(&addr)
            && (self.mcounteren >> (addr & 31)) & 1 == 0
        {
            return Err(self.illegal(inst));
        }
        if addr == csr::TIME {
            // Read-only (a write was refused above): the platform's clock.
            self.x[rd] = match mmio.time() {
                MmioResult::Ok(t) | MmioResult::OkStop(t) => t,
                MmioResult::Fault => return Err(self.illegal(inst)),
                MmioResult::Stall => return Err(StepOutcome::Stall),
            };
            return Ok(());
        }
        let Some(old) = self.csr_read(addr) else {
            return Err(self.illegal(inst));
        };
        if writes {
            let new = match op {
                1 => src,
                2 => old | src,
                _ => old & !src,
            };
            // This instruction retires after the write: the next one reads `new`.
            self.csr_write(addr, new, 1);
        }
        self.x[rd] = old;
        Ok(())
    }

    fn csr_read(&self, addr: u16) -> Option<u64> {
        Some(match addr {
            csr::MSTATUS => self.mstatus | MSTATUS_UXL_64,
            csr::MISA => MISA,
            csr::MEDELEG => self.medeleg,
            csr::MIDELEG => self.mideleg,
            csr::MIE => self.mie,
            csr::MTVEC => self.mtvec,
            csr::MCOUNTEREN => self.mcounteren,
            csr::MSCRATCH => self.mscratch,
            csr::MEPC => self.mepc,
            csr::MCAUSE => self.mcause,
            csr::MTVAL => self.mtval,
            csr::MIP => self.mip,
            0x3A0..=0x3AF => self.pmpcfg[usize::from(addr & 0xF)],
            0x3B0..=0x3EF => {
                let i = usize::from(addr - 0x3B0);
                self.pmpaddr[(i >> 5) & 1][i & 31]
            }
            csr::MCYCLE | csr::CYCLE => self.instret.wrapping_add(self.mcycle_offset),
            csr::MINSTRET | csr::INSTRET => self.instret.wrapping_add(self.minstret_offset),
            // satp (Bare only), mcountinhibit, mhpmevent3..31, mhpmcounter3..31,
            // hpmcounter3..31, mvendorid, marchid, mimpid, mhartid, mconfigptr.
            csr::SATP
            | csr::MCOUNTINHIBIT
            | 0x323..=0x33F
            | 0xB03..=0xB1F
            | 0xC03..=0xC1F
            | 0xF11..=0xF15 => 0,
            _ => return None,
        })
    }

    /// Writes a known, writable CSR applying its WARL rules. `retiring` is 1 when the
    /// writing instruction is about to retire (and so to count), 0 otherwise.
    fn csr_write(&mut self, addr: u16, v: u64, retiring: u64) {
        match addr {
            csr::MSTATUS => {
                let mut v = v & MSTATUS_WRITABLE;
                if v & MSTATUS_MPP != MSTATUS_MPP {
                    // Only M (3) and U (0) exist.
                    v &= !MSTATUS_MPP;
                }
                self.mstatus = v;
            }
            csr::MEDELEG => self.medeleg = v,
            csr::MIDELEG => self.mideleg = v,
            csr::MIE => self.mie = v & MIP_MASK,
            csr::MTVEC => self.mtvec = if v & 3 >= 2 { v & !3 } else { v },
            csr::MCOUNTEREN => self.mcounteren = v & 0xFFFF_FFFF,
            csr::MSCRATCH => self.mscratch = v,
            csr::MEPC => self.mepc = v & !1,
            csr::MCAUSE => self.mcause = v,
            csr::MTVAL => self.mtval = v,
            0x3A0..=0x3AF => self.pmpcfg[usize::from(addr & 0xF)] = v,
            0x3B0..=0x3EF => {
                let i = usize::from(addr - 0x3B0);
                self.pmpaddr[(i >> 5) & 1][i & 31] = v & ((1 << 54) - 1);
            }
            csr::MCYCLE => {
                self.mcycle_offset = v.wrapping_sub(self.instret.wrapping_add(retiring));
            }
            csr::MINSTRET => {
                self.minstret_offset = v.wrapping_sub(self.instret.wrapping_add(retiring));
            }
            // misa, mip, satp, mcountinhibit, hpm*: writes ignored.
            _ => {}
        }
    }
}
