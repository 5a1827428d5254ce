//! An instruction-counted RISC-V RV64IMAC + Zicsr + Zicntr interpreter with machine,
//! supervisor and user modes.
//!
//! # Privilege
//!
//! Traps from below M-mode go to S-mode when `medeleg` (exceptions) or `mideleg`
//! (the supervisor interrupts) delegate them; traps from M-mode stay there. An
//! interrupt bound for M-mode is taken below M whatever `mstatus.MIE` says, and before
//! any bound for S-mode; one delegated to S-mode is taken in U-mode, in S-mode with
//! `mstatus.SIE`, and never in M-mode. Within a mode the order is MEI, MSI, MTI, SEI,
//! SSI, STI. `sstatus`, `sie` and `sip` are views of `mstatus`, `mie` and `mip`.
//! `mip` is the interrupt lines the machine drives ([`Cpu::set_mip`]) or'ed with the
//! supervisor bits M-mode software writes; a read-modify-write starts from the
//! written bits, so it never latches a line. TVM traps `satp` and `sfence.vma` in
//! S-mode, TSR traps `sret`, TW traps `wfi` in S-mode; `wfi` in U-mode is always
//! illegal (as on spike and QEMU).
//!
//! # Sv39
//!
//! `satp` takes Bare and Sv39 (a write of another mode has no effect; there are no
//! ASID bits). S- and U-mode fetches, and loads and stores below M (or in M with
//! `mstatus.MPRV`, as `MPP`), walk the three-level table on every access: nothing is
//! cached, so `sfence.vma` has nothing to flush. The walk sets A (and D for a store or
//! AMO) in the leaf once every check passed, as QEMU does. Faults are page faults (12,
//! 13, 15) with the virtual address in `tval`; a table outside RAM is an access fault.
//! A 4-byte instruction across a page boundary fetches its halves through their own
//! translations. A data access across a page boundary completes when the two pages
//! are physically adjacent and otherwise raises address-misaligned (which the
//! specification allows for any misaligned access; firmware emulates it). The `lr`
//! reservation holds the physical address. The walk's A/D writes happen only when the
//! whole access succeeds.
//!
//! PMP registers are accepted and read back but not enforced: no access is ever
//! denied by PMP (spike denies S- and U-mode accesses that match no entry).
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
    /// Supervisor mode (encoding 1).
    Supervisor,
}

impl Privilege {
    /// The architectural encoding (as in `mstatus.MPP`).
    pub const fn bits(self) -> u64 {
        match self {
            Privilege::User => 0,
            Privilege::Supervisor => 1,
            Privilege::Machine => 3,
        }
    }

    /// The mode an `xPP` field names: 0 U, 1 S, 3 M (2, reserved, reads as U).
    pub const fn from_bits(bits: u64) -> Privilege {
        match bits & 3 {
            3 => Privilege::Machine,
            1 => Privilege::Supervisor,
            _ => Privilege::User,
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
    /// Cause 9 (`ecall` in S-mode); `mtval` = 0.
    EcallFromS,
    /// Cause 11 (`ecall` in M-mode); `mtval` = 0.
    EcallFromM,
    /// Cause 12: the fetch's translation failed; `tval` = the virtual address.
    InstructionPageFault,
    /// Cause 13; `tval` = the virtual address.
    LoadPageFault,
    /// Cause 15 (stores and AMOs); `tval` = the virtual address.
    StorePageFault,
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
            Exception::EcallFromS => 9,
            Exception::EcallFromM => 11,
            Exception::InstructionPageFault => 12,
            Exception::LoadPageFault => 13,
            Exception::StorePageFault => 15,
        }
    }
}

/// Interrupts. Priority: MEI > MSI > MTI > SEI > SSI > STI, and one bound for M-mode
/// (not delegated in `mideleg`) before any bound for S-mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interrupt {
    /// SSI, code 1.
    SupervisorSoftware,
    /// MSI, code 3.
    MachineSoftware,
    /// STI, code 5.
    SupervisorTimer,
    /// MTI, code 7.
    MachineTimer,
    /// SEI, code 9.
    SupervisorExternal,
    /// MEI, code 11.
    MachineExternal,
}

impl Interrupt {
    /// The interrupt code (`mcause` without the interrupt bit; also its `mip` bit).
    pub const fn code(self) -> u64 {
        match self {
            Interrupt::SupervisorSoftware => 1,
            Interrupt::MachineSoftware => 3,
            Interrupt::SupervisorTimer => 5,
            Interrupt::MachineTimer => 7,
            Interrupt::SupervisorExternal => 9,
            Interrupt::MachineExternal => 11,
        }
    }

    /// Its bit in `mip` / `mie`.
    pub const fn mask(self) -> u64 {
        1 << self.code()
    }
}

/// `mip`/`mie` bit of the supervisor software interrupt.
pub const MIP_SSIP: u64 = 1 << 1;
/// `mip`/`mie` bit of the machine software interrupt.
pub const MIP_MSIP: u64 = 1 << 3;
/// `mip`/`mie` bit of the supervisor timer interrupt.
pub const MIP_STIP: u64 = 1 << 5;
/// `mip`/`mie` bit of the machine timer interrupt.
pub const MIP_MTIP: u64 = 1 << 7;
/// `mip`/`mie` bit of the supervisor external interrupt.
pub const MIP_SEIP: u64 = 1 << 9;
/// `mip`/`mie` bit of the machine external interrupt.
pub const MIP_MEIP: u64 = 1 << 11;
const MIP_MASK: u64 = MIP_SSIP | MIP_MSIP | MIP_STIP | MIP_MTIP | MIP_SEIP | MIP_MEIP;
/// The supervisor bits: M-mode software may set them in `mip`, and delegate them.
const MIP_S: u64 = MIP_SSIP | MIP_STIP | MIP_SEIP;
/// Exceptions that `medeleg` can delegate: all but `ecall` from M-mode (and the
/// reserved codes 10 and 14).
const MEDELEG_MASK: u64 = 0xB3FF;

/// `mstatus.SIE`.
pub const MSTATUS_SIE: u64 = 1 << 1;
/// `mstatus.MIE`.
pub const MSTATUS_MIE: u64 = 1 << 3;
/// `mstatus.SPIE`.
pub const MSTATUS_SPIE: u64 = 1 << 5;
/// `mstatus.MPIE`.
pub const MSTATUS_MPIE: u64 = 1 << 7;
/// `mstatus.SPP` (one bit: 0 U, 1 S).
pub const MSTATUS_SPP: u64 = 1 << 8;
/// `mstatus.MPP` (two bits).
pub const MSTATUS_MPP: u64 = 3 << 11;
/// `mstatus.MPRV` (M-mode loads and stores translate and check as `MPP`).
pub const MSTATUS_MPRV: u64 = 1 << 17;
/// `mstatus.SUM` (S-mode may access U pages).
pub const MSTATUS_SUM: u64 = 1 << 18;
/// `mstatus.MXR` (loads from executable pages).
pub const MSTATUS_MXR: u64 = 1 << 19;
/// `mstatus.TVM` (trap `satp` and `sfence.vma` in S-mode).
pub const MSTATUS_TVM: u64 = 1 << 20;
/// `mstatus.TW` (timeout wait: `wfi` in S-mode is illegal when set; in U-mode it
/// always is).
pub const MSTATUS_TW: u64 = 1 << 21;
/// `mstatus.TSR` (trap `sret` in S-mode).
pub const MSTATUS_TSR: u64 = 1 << 22;
const MSTATUS_UXL_64: u64 = 2 << 32;
const MSTATUS_SXL_64: u64 = 2 << 34;
const MSTATUS_WRITABLE: u64 = MSTATUS_SIE
    | MSTATUS_MIE
    | MSTATUS_SPIE
    | MSTATUS_MPIE
    | MSTATUS_SPP
    | MSTATUS_MPP
    | MSTATUS_MPRV
    | MSTATUS_SUM
    | MSTATUS_MXR
    | MSTATUS_TVM
    | MSTATUS_TW
    | MSTATUS_TSR;
/// The `mstatus` fields `sstatus` shows and writes.
const SSTATUS_WRITABLE: u64 = MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SUM | MSTATUS_MXR;

/// The `mcause` interrupt bit.
pub const MCAUSE_INTERRUPT: u64 = 1 << 63;

/// Value of `misa`: MXL = 64, extensions A, C, I, M, S, U.
pub const MISA: u64 = (2 << 62) | 1 | (1 << 2) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);

const ENVCFG_FIOM: u64 = 1;
const SATP_BARE: u64 = 0;
const SATP_SV39: u64 = 8;
/// `satp.PPN` and a PTE's PPN: 44 bits.
const PPN_MASK: u64 = (1 << 44) - 1;
const PTE_V: u64 = 1;
const PTE_R: u64 = 1 << 1;
const PTE_W: u64 = 1 << 2;
const PTE_X: u64 = 1 << 3;
const PTE_U: u64 = 1 << 4;
const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;

/// A successful page walk: the physical address, and the leaf's A/D update to make
/// (PTE address, new PTE) when the access goes ahead.
#[derive(Clone, Copy)]
struct Walk {
    pa: u64,
    update: Option<(u64, u64)>,
}

impl Walk {
    /// No walk (an untranslated access).
    const NONE: Walk = Walk {
        pa: 0,
        update: None,
    };
}

/// Makes a walk's A/D update. The PTE was just read at that RAM address, so the
/// store cannot fail; if it somehow did, the access still goes ahead with the bits
/// unset, which the guest sees as a missed update and no state is corrupted.
fn commit(ram: &mut Ram, walk: Walk) {
    if let Some((at, pte)) = walk.update {
        let _ = ram.store_u64(at, pte);
    }
}

/// What a translation is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Fetch,
    Load,
    /// Stores and AMOs.
    Store,
}

impl Access {
    fn page_fault(self) -> Exception {
        match self {
            Access::Fetch => Exception::InstructionPageFault,
            Access::Load => Exception::LoadPageFault,
            Access::Store => Exception::StorePageFault,
        }
    }

    fn access_fault(self) -> Exception {
        match self {
            Access::Fetch => Exception::InstructionAccessFault,
            Access::Load => Exception::LoadAccessFault,
            Access::Store => Exception::StoreAccessFault,
        }
    }

    fn misaligned(self) -> Exception {
        match self {
            Access::Fetch => Exception::InstructionAddressMisaligned,
            Access::Load => Exception::LoadAddressMisaligned,
            Access::Store => Exception::StoreAddressMisaligned,
        }
    }
}

/// `mtvec`/`stvec` WARL: a reserved mode (2, 3) becomes direct.
fn tvec(v: u64) -> u64 {
    if v & 3 >= 2 {
        v & !3
    } else {
        v
    }
}

/// CSR addresses.
pub mod csr {
    /// Machine status.
    pub const MSTATUS: u16 = 0x300;
    /// ISA and extensions (writes ignored).
    pub const MISA: u16 = 0x301;
    /// Exception delegation to S-mode.
    pub const MEDELEG: u16 = 0x302;
    /// Interrupt delegation to S-mode (the supervisor bits).
    pub const MIDELEG: u16 = 0x303;
    /// Interrupt enable.
    pub const MIE: u16 = 0x304;
    /// Trap vector (mode 0 direct, 1 vectored).
    pub const MTVEC: u16 = 0x305;
    /// Counter enable for S- and U-mode (bit 0 cycle, 1 time, 2 instret).
    pub const MCOUNTEREN: u16 = 0x306;
    /// Machine environment configuration (FIOM only).
    pub const MENVCFG: u16 = 0x30A;
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
    /// Interrupt pending: the lines the machine drives (`Cpu::set_mip`), or'ed with
    /// the supervisor bits M-mode software writes.
    pub const MIP: u16 = 0x344;
    /// Supervisor status (a view of `mstatus`).
    pub const SSTATUS: u16 = 0x100;
    /// Supervisor interrupt enable (a view of `mie`, delegated bits only).
    pub const SIE: u16 = 0x104;
    /// Supervisor trap vector.
    pub const STVEC: u16 = 0x105;
    /// Counter enable for U-mode, under `mcounteren`.
    pub const SCOUNTEREN: u16 = 0x106;
    /// Supervisor environment configuration (FIOM only).
    pub const SENVCFG: u16 = 0x10A;
    /// Supervisor scratch.
    pub const SSCRATCH: u16 = 0x140;
    /// Supervisor exception pc.
    pub const SEPC: u16 = 0x141;
    /// Supervisor trap cause.
    pub const SCAUSE: u16 = 0x142;
    /// Supervisor trap value.
    pub const STVAL: u16 = 0x143;
    /// Supervisor interrupt pending (a view of `mip`; only SSIP is writable).
    pub const SIP: u16 = 0x144;
    /// Address translation and protection.
    pub const SATP: u16 = 0x180;
    /// Debug trigger select (no triggers: reads 0, writes ignored).
    pub const TSELECT: u16 = 0x7A0;
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
    menvcfg: u64,
    /// The supervisor bits of `mip` that M-mode software wrote (or'ed with the lines).
    mip_sw: u64,
    stvec: u64,
    sepc: u64,
    scause: u64,
    stval: u64,
    sscratch: u64,
    scounteren: u64,
    senvcfg: u64,
    satp: u64,
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
            menvcfg: 0,
            mip_sw: 0,
            stvec: 0,
            sepc: 0,
            scause: 0,
            stval: 0,
            sscratch: 0,
            scounteren: 0,
            senvcfg: 0,
            satp: 0,
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
    /// masks, ignored writes) as a guest `csrrw`. A `mip` write sets the supervisor
    /// bits software may write, as a guest's does; the interrupt lines are
    /// [`Cpu::set_mip`]'s.
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

    /// Current `mip`: the lines, or'ed with the supervisor bits software wrote.
    pub fn mip(&self) -> u64 {
        self.mip | self.mip_sw
    }

    /// Raises (`on`) or lowers the interrupt lines in `mask` (the six `MIP_*` bits;
    /// others are ignored). This is how the machine drives `mip`; what M-mode software
    /// writes to the supervisor bits is kept apart and or'ed in.
    pub fn set_mip(&mut self, mask: u64, on: bool) {
        let mask = mask & MIP_MASK;
        if on {
            self.mip |= mask;
        } else {
            self.mip &= !mask;
        }
    }

    /// Whether an interrupt is pending, enabled in `mie`, and enabled for the mode it
    /// goes to (M-mode: below M, or in M with `mstatus.MIE`; S-mode, when delegated:
    /// in U, or in S with `mstatus.SIE`): the next step takes it (unless the next
    /// instruction is a `wfi`, which retires first; see the module docs).
    pub fn pending_interrupt(&self) -> bool {
        self.deliverable(self.mip() & self.mie).is_some()
    }

    /// Whether an interrupt is pending and enabled in `mie` (regardless of the global
    /// enables and of delegation): the condition that completes a `wfi`.
    pub fn wakeup_pending(&self) -> bool {
        self.mip() & self.mie != 0
    }

    /// The interrupt the hart takes now out of `pending` (`mip & mie`), if any.
    #[inline]
    fn deliverable(&self, pending: u64) -> Option<Interrupt> {
        let to_m = pending & !self.mideleg;
        let m_on = self.privilege != Privilege::Machine || self.mstatus & MSTATUS_MIE != 0;
        let chosen = if to_m != 0 && m_on {
            to_m
        } else {
            let to_s = pending & self.mideleg;
            let s_on = match self.privilege {
                Privilege::User => true,
                Privilege::Supervisor => self.mstatus & MSTATUS_SIE != 0,
                Privilege::Machine => false,
            };
            if to_s == 0 || !s_on {
                return None;
            }
            to_s
        };
        [
            Interrupt::MachineExternal,
            Interrupt::MachineSoftware,
            Interrupt::MachineTimer,
            Interrupt::SupervisorExternal,
            Interrupt::SupervisorSoftware,
            Interrupt::SupervisorTimer,
        ]
        .into_iter()
        .find(|i| chosen & i.mask() != 0)
    }

    /// Whether `wfi` may execute here: in M-mode, and in S-mode unless `mstatus.TW`
    /// (in U-mode it is illegal, as on spike and QEMU when S-mode exists).
    fn wfi_allowed(&self) -> bool {
        match self.privilege {
            Privilege::Machine => true,
            Privilege::Supervisor => self.mstatus & MSTATUS_TW == 0,
            Privilege::User => false,
        }
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
        let pending = (self.mip | self.mip_sw) & self.mie;
        if pending != 0 {
            if let Some(irq) = self.deliverable(pending) {
                return self.interrupt_or_wfi(ram, irq);
            }
        }
        let pc = self.pc;
        if pc & 1 != 0 {
            return self.exception(Exception::InstructionAddressMisaligned, pc);
        }
        let pa = if self.fetch_translates() {
            return self.fetch_translated(ram, mmio);
        } else {
            pc
        };
        let raw = match ram.load_u32(pa) {
            Ok(raw) => raw,
            Err(_) => return self.fetch_at_the_end(ram, mmio, pa),
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
    fn fetch_at_the_end<M: Mmio + ?Sized>(
        &mut self,
        ram: &mut Ram,
        mmio: &mut M,
        pa: u64,
    ) -> StepOutcome {
        let pc = self.pc;
        match ram.load_u16(pa) {
            Ok(parcel) if rvc::is_compressed(parcel) => self.execute_compressed(parcel, ram, mmio),
            Ok(_) => self.exception(Exception::InstructionAccessFault, pc.wrapping_add(2)),
            Err(_) => self.exception(Exception::InstructionAccessFault, pc),
        }
    }

    /// The fetch under Sv39 (S- and U-mode with `satp` on). A 4-byte instruction whose
    /// second half lies on the next page translates that page too (a fault there
    /// reports the second half's address); the walks set A only once the whole fetch
    /// succeeded.
    #[cold]
    #[inline(never)]
    fn fetch_translated<M: Mmio + ?Sized>(&mut self, ram: &mut Ram, mmio: &mut M) -> StepOutcome {
        let pc = self.pc;
        let mode = self.privilege;
        let first = match self.lookup(ram, pc, Access::Fetch, mode) {
            Ok(w) => w,
            Err(e) => return self.exception(e, pc),
        };
        if pc & 0xFFF != 0xFFE {
            commit(ram, first);
            return match ram.load_u32(first.pa) {
                Ok(raw) if raw & 3 == 3 => self.execute_as(raw, 4, raw, ram, mmio),
                Ok(raw) => self.execute_compressed(raw as u16, ram, mmio),
                Err(_) => self.fetch_at_the_end(ram, mmio, first.pa),
            };
        }
        let lo = match ram.load_u16(first.pa) {
            Ok(lo) => lo,
            Err(_) => return self.exception(Exception::InstructionAccessFault, pc),
        };
        if rvc::is_compressed(lo) {
            commit(ram, first);
            return self.execute_compressed(lo, ram, mmio);
        }
        let next = pc.wrapping_add(2);
        let second = match self.lookup(ram, next, Access::Fetch, mode) {
            Ok(w) => w,
            Err(e) => return self.exception(e, next),
        };
        let hi = match ram.load_u16(second.pa) {
            Ok(hi) => hi,
            Err(_) => return self.exception(Exception::InstructionAccessFault, next),
        };
        commit(ram, first);
        commit(ram, second);
        let raw = u32::from(lo) | (u32::from(hi) << 16);
        self.execute_as(raw, 4, raw, ram, mmio)
    }

    /// The 32 bits at `pc` as a translated fetch would read them, with the walks it
    /// would commit, or `None` if the fetch would fault. No side effects.
    fn peek_fetch(&self, ram: &Ram, pc: u64) -> Option<(u32, [Walk; 2])> {
        let mode = self.privilege;
        let first = self.lookup(ram, pc, Access::Fetch, mode).ok()?;
        if pc & 0xFFF != 0xFFE {
            return Some((ram.load_u32(first.pa).ok()?, [first, Walk::NONE]));
        }
        let second = self
            .lookup(ram, pc.wrapping_add(2), Access::Fetch, mode)
            .ok()?;
        let lo = ram.load_u16(first.pa).ok()?;
        let hi = ram.load_u16(second.pa).ok()?;
        Some((u32::from(lo) | (u32::from(hi) << 16), [first, second]))
    }

    /// Whether instruction fetches translate: Sv39 on, below M-mode (MPRV never applies
    /// to fetches).
    #[inline(always)]
    fn fetch_translates(&self) -> bool {
        self.satp >> 60 != SATP_BARE && self.privilege != Privilege::Machine
    }

    /// The mode loads and stores translate in, if they translate: `None` in Bare, or
    /// when the mode is M (`mstatus.MPRV` makes M-mode use `MPP`'s).
    #[inline(always)]
    fn data_mode(&self) -> Option<Privilege> {
        if self.satp >> 60 == SATP_BARE {
            return None;
        }
        let mode = if self.privilege == Privilege::Machine && self.mstatus & MSTATUS_MPRV != 0 {
            Privilege::from_bits(self.mstatus >> 11)
        } else {
            self.privilege
        };
        (mode != Privilege::Machine).then_some(mode)
    }

    /// Translates the `size`-byte data access at `va` (raising its exception on
    /// failure). An access across a page boundary needs both pages; if they are not
    /// physically adjacent it raises an address-misaligned exception, which the
    /// privileged specification allows for any misaligned access (firmware emulates it).
    /// A and D are set only once the whole translation succeeded.
    #[cold]
    #[inline(never)]
    fn translate(
        &mut self,
        ram: &mut Ram,
        va: u64,
        size: u8,
        access: Access,
        mode: Privilege,
    ) -> std::result::Result<u64, StepOutcome> {
        let first = match self.lookup(ram, va, access, mode) {
            Ok(w) => w,
            Err(e) => return Err(self.exception(e, va)),
        };
        let last = va.wrapping_add(u64::from(size) - 1);
        if (va ^ last) >> 12 != 0 {
            let at = last & !0xFFF;
            let second = match self.lookup(ram, at, access, mode) {
                Ok(w) => w,
                Err(e) => return Err(self.exception(e, at)),
            };
            if second.pa != first.pa.wrapping_add(at.wrapping_sub(va)) {
                return Err(self.exception(access.misaligned(), va));
            }
            commit(ram, second);
        }
        commit(ram, first);
        Ok(first.pa)
    }

    /// The Sv39 page walk for `va`, in `mode` (S or U), without side effects: the
    /// physical address, and the leaf's A/D update (as QEMU, the walk sets them) for
    /// [`commit`] once the whole access is known to succeed. Errors are the exception
    /// to raise.
    fn lookup(
        &self,
        ram: &Ram,
        va: u64,
        access: Access,
        mode: Privilege,
    ) -> std::result::Result<Walk, Exception> {
        // Bits 63..39 must all equal bit 38.
        if ((va << 25) as i64 >> 25) as u64 != va {
            return Err(access.page_fault());
        }
        let mut table = (self.satp & PPN_MASK) << 12;
        for level in (0..3u32).rev() {
            let vpn = (va >> (12 + 9 * level)) & 0x1FF;
            let pte_addr = table.wrapping_add(vpn * 8);
            let Ok(pte) = ram.load_u64(pte_addr) else {
                return Err(access.access_fault());
            };
            // Invalid, write-only (reserved), or reserved high bits (no Svnapot, no
            // Svpbmt): a page fault.
            if pte & PTE_V == 0 || pte & (PTE_R | PTE_W) == PTE_W || pte >> 54 != 0 {
                return Err(access.page_fault());
            }
            let ppn = (pte >> 10) & PPN_MASK;
            if pte & (PTE_R | PTE_X) == 0 {
                // A pointer to the next level, where D, A and U are reserved.
                if pte & (PTE_A | PTE_D | PTE_U) != 0 {
                    return Err(access.page_fault());
                }
                table = ppn << 12;
                continue;
            }
            let permitted = match access {
                Access::Fetch => pte & PTE_X != 0,
                Access::Load => {
                    pte & PTE_R != 0 || (pte & PTE_X != 0 && self.mstatus & MSTATUS_MXR != 0)
                }
                Access::Store => pte & PTE_W != 0,
            };
            let user_page = pte & PTE_U != 0;
            let mode_ok = match mode {
                Privilege::User => user_page,
                _ => !user_page || (access != Access::Fetch && self.mstatus & MSTATUS_SUM != 0),
            };
            // A superpage's PPN must be aligned to its size.
            let low = (1u64 << (9 * level)) - 1;
            if !permitted || !mode_ok || ppn & low != 0 {
                return Err(access.page_fault());
            }
            let need = if access == Access::Store {
                PTE_A | PTE_D
            } else {
                PTE_A
            };
            let offset = (1u64 << (12 + 9 * level)) - 1;
            return Ok(Walk {
                pa: (ppn << 12) | (va & offset),
                update: (pte & need != need).then_some((pte_addr, pte | need)),
            });
        }
        // Level 0 held a pointer.
        Err(access.page_fault())
    }

    /// An enabled interrupt is pending. If the next instruction is a `wfi` that may
    /// execute, it retires first (the interrupt is taken at the next step with
    /// `mepc` after it); otherwise the interrupt is taken now.
    #[cold]
    #[inline(never)]
    fn interrupt_or_wfi(&mut self, ram: &mut Ram, irq: Interrupt) -> StepOutcome {
        let pc = self.pc;
        // The next instruction, as its fetch would see it (with no side effects unless
        // it is a `wfi` that executes).
        let fetched = if self.fetch_translates() {
            self.peek_fetch(ram, pc)
        } else {
            ram.load_u32(pc).ok().map(|w| (w, [Walk::NONE; 2]))
        };
        if let Some((WFI, walks)) = fetched.filter(|_| pc & 1 == 0 && self.wfi_allowed()) {
            for w in walks {
                commit(ram, w);
            }
            self.pc = self.pc.wrapping_add(4);
            self.instret = self.instret.wrapping_add(1);
            return StepOutcome::Retired;
        }
        self.take_interrupt(irq)
    }

    /// Enters a trap: to S-mode if it comes from below M and `medeleg` (an exception)
    /// or `mideleg` (an interrupt) delegates its code, else to M-mode. Vectored
    /// `xtvec` moves interrupts to `base + 4 * code`.
    #[inline(always)]
    fn enter_trap(&mut self, cause: u64, tval: u64) {
        self.reservation = None;
        let interrupt = cause & MCAUSE_INTERRUPT != 0;
        let code = cause & 63;
        let deleg = if interrupt {
            self.mideleg
        } else {
            self.medeleg
        };
        let epc = self.pc & !1;
        let (tvec, status) = if self.privilege != Privilege::Machine && (deleg >> code) & 1 != 0 {
            self.sepc = epc;
            self.scause = cause;
            self.stval = tval;
            let spie = if self.mstatus & MSTATUS_SIE != 0 {
                MSTATUS_SPIE
            } else {
                0
            };
            let spp = if self.privilege == Privilege::Supervisor {
                MSTATUS_SPP
            } else {
                0
            };
            self.privilege = Privilege::Supervisor;
            (
                self.stvec,
                (self.mstatus & !(MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP)) | spie | spp,
            )
        } else {
            self.mepc = epc;
            self.mcause = cause;
            self.mtval = tval;
            let mpie = if self.mstatus & MSTATUS_MIE != 0 {
                MSTATUS_MPIE
            } else {
                0
            };
            let mpp = self.privilege.bits() << 11;
            self.privilege = Privilege::Machine;
            (
                self.mtvec,
                (self.mstatus & !(MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP)) | mpie | mpp,
            )
        };
        self.mstatus = status;
        let base = tvec & !3;
        self.pc = if interrupt && tvec & 1 != 0 {
            base.wrapping_add(4 * code)
        } else {
            base
        };
    }

    /// The trap state that entering a trap changes (to tell a trap loop).
    fn trap_state(&self) -> [u64; 9] {
        [
            self.pc,
            self.privilege.bits(),
            self.mstatus,
            self.mepc,
            self.mcause,
            self.mtval,
            self.sepc,
            self.scause,
            self.stval,
        ]
    }

    #[cold]
    #[inline(never)]
    fn exception(&mut self, e: Exception, tval: u64) -> StepOutcome {
        let before = self.trap_state();
        self.enter_trap(e.code(), tval);
        let after = self.trap_state();
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
    fn take_interrupt(&mut self, irq: Interrupt) -> StepOutcome {
        self.enter_trap(MCAUSE_INTERRUPT | irq.code(), 0);
        StepOutcome::Interrupt(irq)
    }

    #[inline(always)]
    fn load<M: Mmio + ?Sized>(
        &mut self,
        ram: &mut Ram,
        mmio: &mut M,
        va: u64,
        size: u8,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        let addr = match self.data_mode() {
            None => va,
            Some(mode) => self.translate(ram, va, size, Access::Load, mode)?,
        };
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
                Err(self.exception(Exception::LoadAddressMisaligned, va))
            }
            Err(_) => self.mmio_load(mmio, addr, va, size, stop),
        }
    }

    #[cold]
    #[inline(never)]
    fn mmio_load<M: Mmio + ?Sized>(
        &mut self,
        mmio: &mut M,
        addr: u64,
        va: u64,
        size: u8,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        match mmio.load(addr, size) {
            MmioResult::Ok(v) => Ok(v),
            MmioResult::OkStop(v) => {
                *stop = Stop::Mmio;
                Ok(v)
            }
            MmioResult::Fault => Err(self.exception(Exception::LoadAccessFault, va)),
            MmioResult::Stall => Err(StepOutcome::Stall),
        }
    }

    #[inline(always)]
    fn store<M: Mmio + ?Sized>(
        &mut self,
        ram: &mut Ram,
        mmio: &mut M,
        va: u64,
        size: u8,
        value: u64,
        stop: &mut Stop,
    ) -> std::result::Result<(), StepOutcome> {
        let addr = match self.data_mode() {
            None => va,
            Some(mode) => self.translate(ram, va, size, Access::Store, mode)?,
        };
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
                Err(self.exception(Exception::StoreAddressMisaligned, va))
            }
            Err(_) => self.mmio_store(mmio, addr, va, size, value, stop),
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
    /// 8 bytes at virtual address `va`, on RAM only. Returns what `rd` receives.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        ram: &mut Ram,
        f5: u32,
        rs2: usize,
        va: u64,
        size: u8,
        bits: u32,
        stop: &mut Stop,
    ) -> std::result::Result<u64, StepOutcome> {
        const LR: u32 = 0b00010;
        const SC: u32 = 0b00011;
        let known = matches!(
            f5,
            LR | SC
                | 0b00001
                | 0b00000
                | 0b00100
                | 0b01100
                | 0b01000
                | 0b10000
                | 0b10100
                | 0b11000
                | 0b11100
        );
        if !known || (f5 == LR && rs2 != 0) {
            return Err(self.illegal(bits));
        }
        if va & (u64::from(size) - 1) != 0 {
            let e = if f5 == LR {
                Exception::LoadAddressMisaligned
            } else {
                Exception::StoreAddressMisaligned
            };
            return Err(self.exception(e, va));
        }
        let addr = match self.data_mode() {
            None => va,
            Some(mode) => {
                let access = if f5 == LR {
                    Access::Load
                } else {
                    Access::Store
                };
                self.translate(ram, va, size, access, mode)?
            }
        };
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
                let Ok(v) = read(ram) else {
                    return Err(self.exception(Exception::LoadAccessFault, va));
                };
                self.reservation = Some(addr);
                return Ok(v);
            }
            SC => {
                if read(ram).is_err() {
                    return Err(self.exception(Exception::StoreAccessFault, va));
                }
                if self.reservation.take() != Some(addr) {
                    return Ok(1);
                }
                (0, src)
            }
            _ => {
                let Ok(a) = read(ram) else {
                    return Err(self.exception(Exception::StoreAccessFault, va));
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
        };
        let r = if size == 4 {
            ram.store_u32(addr, new as u32)
        } else {
            ram.store_u64(addr, new)
        };
        if r.is_err() {
            // Unreachable after the read above succeeded at the same address and
            // size; reported as the fault it would be rather than assumed away.
            return Err(self.exception(Exception::StoreAccessFault, va));
        }
        self.watch(addr, size, stop);
        Ok(old)
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn mmio_store<M: Mmio + ?Sized>(
        &mut self,
        mmio: &mut M,
        addr: u64,
        va: u64,
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
            MmioResult::Fault => Err(self.exception(Exception::StoreAccessFault, va)),
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
                            Privilege::Supervisor => Exception::EcallFromS,
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
                        self.privilege = Privilege::from_bits(self.mstatus >> 11);
                        let mut status =
                            (self.mstatus & !(MSTATUS_MIE | MSTATUS_MPP)) | mie | MSTATUS_MPIE;
                        if self.privilege != Privilege::Machine {
                            status &= !MSTATUS_MPRV;
                        }
                        self.mstatus = status;
                        next = self.mepc;
                    }
                    // SRET
                    0x1020_0073 => {
                        let allowed = match self.privilege {
                            Privilege::Machine => true,
                            Privilege::Supervisor => self.mstatus & MSTATUS_TSR == 0,
                            Privilege::User => false,
                        };
                        if !allowed {
                            illegal!();
                        }
                        let sie = if self.mstatus & MSTATUS_SPIE != 0 {
                            MSTATUS_SIE
                        } else {
                            0
                        };
                        self.privilege = if self.mstatus & MSTATUS_SPP != 0 {
                            Privilege::Supervisor
                        } else {
                            Privilege::User
                        };
                        self.mstatus = (self.mstatus & !(MSTATUS_SIE | MSTATUS_SPP | MSTATUS_MPRV))
                            | sie
                            | MSTATUS_SPIE;
                        next = self.sepc;
                    }
                    // WFI
                    WFI => {
                        if !self.wfi_allowed() {
                            illegal!();
                        }
                        if (self.mip | self.mip_sw) & self.mie == 0 {
                            return StepOutcome::Idle;
                        }
                    }
                    // SFENCE.VMA (no translation is cached)
                    _ if inst & 0xFE00_7FFF == 0x1200_0073 => {
                        let allowed = match self.privilege {
                            Privilege::Machine => true,
                            Privilege::Supervisor => self.mstatus & MSTATUS_TVM == 0,
                            Privilege::User => false,
                        };
                        if !allowed {
                            illegal!();
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
        if (0xC00..=0xC1F).contains(&addr) {
            // Counters: S-mode needs mcounteren's bit, U-mode scounteren's too.
            let bit = addr & 31;
            let denied = match self.privilege {
                Privilege::Machine => false,
                Privilege::Supervisor => (self.mcounteren >> bit) & 1 == 0,
                Privilege::User => ((self.mcounteren & self.scounteren) >> bit) & 1 == 0,
            };
            if denied {
                return Err(self.illegal(inst));
            }
        }
        if addr == csr::SATP
            && self.privilege == Privilege::Supervisor
            && self.mstatus & MSTATUS_TVM != 0
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
            // `mip`/`sip`: a read-modify-write starts from the bits software wrote,
            // not from the lines (which it could otherwise latch).
            let base = match addr {
                csr::MIP => self.mip_sw,
                csr::SIP => self.mip_sw & self.mideleg,
                _ => old,
            };
            let new = match op {
                1 => src,
                2 => base | src,
                _ => base & !src,
            };
            // This instruction retires after the write: the next one reads `new`.
            self.csr_write(addr, new, 1);
        }
        self.x[rd] = old;
        Ok(())
    }

    fn csr_read(&self, addr: u16) -> Option<u64> {
        Some(match addr {
            csr::MSTATUS => self.mstatus | MSTATUS_UXL_64 | MSTATUS_SXL_64,
            csr::MISA => MISA,
            csr::MEDELEG => self.medeleg,
            csr::MIDELEG => self.mideleg,
            csr::MIE => self.mie,
            csr::MTVEC => self.mtvec,
            csr::MCOUNTEREN => self.mcounteren,
            csr::MENVCFG => self.menvcfg,
            csr::MSCRATCH => self.mscratch,
            csr::MEPC => self.mepc,
            csr::MCAUSE => self.mcause,
            csr::MTVAL => self.mtval,
            csr::MIP => self.mip | self.mip_sw,
            csr::SSTATUS => (self.mstatus & SSTATUS_WRITABLE) | MSTATUS_UXL_64,
            csr::SIE => self.mie & self.mideleg,
            csr::STVEC => self.stvec,
            csr::SCOUNTEREN => self.scounteren,
            csr::SENVCFG => self.senvcfg,
            csr::SSCRATCH => self.sscratch,
            csr::SEPC => self.sepc,
            csr::SCAUSE => self.scause,
            csr::STVAL => self.stval,
            csr::SIP => (self.mip | self.mip_sw) & self.mideleg,
            csr::SATP => self.satp,
            0x3A0..=0x3AF => self.pmpcfg[usize::from(addr & 0xF)],
            0x3B0..=0x3EF => {
                let i = usize::from(addr - 0x3B0);
                self.pmpaddr[(i >> 5) & 1][i & 31]
            }
            csr::MCYCLE | csr::CYCLE => self.instret.wrapping_add(self.mcycle_offset),
            csr::MINSTRET | csr::INSTRET => self.instret.wrapping_add(self.minstret_offset),
            // mcountinhibit, mhpmevent3..31, tselect and tdata1..3 (no triggers),
            // mhpmcounter3..31, hpmcounter3..31, mvendorid, marchid, mimpid, mhartid,
            // mconfigptr.
            csr::MCOUNTINHIBIT
            | 0x7A0..=0x7A3
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
                if v & MSTATUS_MPP == 2 << 11 {
                    // 2 is reserved: U.
                    v &= !MSTATUS_MPP;
                }
                self.mstatus = v;
            }
            csr::MEDELEG => self.medeleg = v & MEDELEG_MASK,
            csr::MIDELEG => self.mideleg = v & MIP_S,
            csr::MIE => self.mie = v & MIP_MASK,
            csr::MTVEC => self.mtvec = tvec(v),
            csr::MCOUNTEREN => self.mcounteren = v & 0xFFFF_FFFF,
            csr::MENVCFG => self.menvcfg = v & ENVCFG_FIOM,
            csr::MIP => self.mip_sw = v & MIP_S,
            csr::SSTATUS => {
                self.mstatus = (self.mstatus & !SSTATUS_WRITABLE) | (v & SSTATUS_WRITABLE);
            }
            csr::SIE => self.mie = (self.mie & !self.mideleg) | (v & self.mideleg),
            csr::STVEC => self.stvec = tvec(v),
            csr::SCOUNTEREN => self.scounteren = v & 0xFFFF_FFFF,
            csr::SENVCFG => self.senvcfg = v & ENVCFG_FIOM,
            csr::SSCRATCH => self.sscratch = v,
            csr::SEPC => self.sepc = v & !1,
            csr::SCAUSE => self.scause = v,
            csr::STVAL => self.stval = v,
            csr::SIP => {
                let w = MIP_SSIP & self.mideleg;
                self.mip_sw = (self.mip_sw & !w) | (v & w);
            }
            // Bare or Sv39, with no ASID bits (ASIDLEN 0); a write of another mode has
            // no effect at all.
            csr::SATP if v >> 60 == SATP_BARE || v >> 60 == SATP_SV39 => {
                self.satp = (v & (0xF << 60)) | (v & PPN_MASK);
            }
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
            // misa, mcountinhibit, tselect, tdata*, hpm*: writes ignored.
            _ => {}
        }
    }
}
