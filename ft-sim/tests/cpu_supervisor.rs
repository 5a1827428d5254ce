//! S-mode: trap delegation (`medeleg`, `mideleg`), `sret`, the supervisor CSRs and
//! their views of `mstatus`, `mie` and `mip`, interrupt routing and priority across
//! modes, and the TVM/TSR/TW traps.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ft_sim::asm::*;
use ft_sim::cpu::*;
use ft_sim::memory::{Ram, RAM_BASE};

const M_HANDLER: u64 = RAM_BASE + 0x1000;
const S_HANDLER: u64 = RAM_BASE + 0x2000;

/// A hart with `code` at RAM's base, `mtvec` and `stvec` at handlers that count
/// their traps (in `s10` and `s11`) and skip the trapping instruction.
fn boot(code: &Assembler) -> (Cpu, Ram) {
    let mut ram = Ram::new(1 << 16);
    ram.write(RAM_BASE, &code.finish().unwrap()).unwrap();
    let mut m = Assembler::with_base(M_HANDLER);
    m.addi(S10, S10, 1)
        .csrr(T6, csr::MEPC)
        .addi(T6, T6, 4)
        .csrw(csr::MEPC, T6)
        .mret();
    ram.write(M_HANDLER, &m.finish().unwrap()).unwrap();
    let mut s = Assembler::with_base(S_HANDLER);
    s.addi(S11, S11, 1)
        .csrr(T6, csr::SEPC)
        .addi(T6, T6, 4)
        .csrw(csr::SEPC, T6)
        .emit(SRET);
    ram.write(S_HANDLER, &s.finish().unwrap()).unwrap();
    let mut cpu = Cpu::new(RAM_BASE);
    cpu.set_csr(csr::MTVEC, M_HANDLER).unwrap();
    cpu.set_csr(csr::STVEC, S_HANDLER).unwrap();
    (cpu, ram)
}

const SRET: u32 = 0x1020_0073;
const SFENCE_VMA: u32 = 0x1200_0073;

fn step(cpu: &mut Cpu, ram: &mut Ram) -> StepOutcome {
    cpu.step(ram, &mut NoMmio)
}

fn csr(cpu: &Cpu, addr: u16) -> u64 {
    cpu.csr(addr).unwrap()
}

#[test]
fn a_delegated_exception_from_u_goes_to_s_and_sret_returns() {
    let mut a = Assembler::new();
    a.ecall().addi(A0, ZERO, 7);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MEDELEG, 1 << 8).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_SIE).unwrap();
    cpu.set_privilege(Privilege::User);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::EcallFromU)
    );
    assert_eq!(cpu.privilege(), Privilege::Supervisor);
    assert_eq!(cpu.pc(), S_HANDLER);
    assert_eq!(csr(&cpu, csr::SCAUSE), 8);
    assert_eq!(csr(&cpu, csr::SEPC), RAM_BASE);
    assert_eq!(csr(&cpu, csr::MCAUSE), 0, "M-mode saw nothing");
    let st = csr(&cpu, csr::MSTATUS);
    assert_eq!(st & MSTATUS_SPP, 0, "came from U");
    assert_ne!(st & MSTATUS_SPIE, 0, "SIE was set");
    assert_eq!(st & MSTATUS_SIE, 0, "and is now clear");
    for _ in 0..5 {
        assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    }
    assert_eq!(cpu.privilege(), Privilege::User, "sret to SPP");
    assert_eq!(cpu.pc(), RAM_BASE + 4);
    let st = csr(&cpu, csr::MSTATUS);
    assert_ne!(st & MSTATUS_SIE, 0, "SIE = SPIE");
    assert_ne!(st & MSTATUS_SPIE, 0, "SPIE = 1");
    step(&mut cpu, &mut ram);
    assert_eq!((cpu.reg(A0), cpu.reg(S11), cpu.reg(S10)), (7, 1, 0));
}

#[test]
fn a_trap_to_s_with_sie_clear_clears_spie() {
    let mut a = Assembler::new();
    a.ecall();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MEDELEG, 1 << 8).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_SPIE).unwrap();
    cpu.set_privilege(Privilege::User);
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.privilege(), Privilege::Supervisor);
    assert_eq!(csr(&cpu, csr::MSTATUS) & (MSTATUS_SPIE | MSTATUS_SIE), 0);
}

#[test]
fn user_counters_need_the_same_bit_in_both_enables() {
    // (mcounteren, scounteren, allowed) for rdinstret (bit 2) in U-mode.
    for (m, s, allowed) in [
        (0b001, 0b100, false),
        (0b100, 0b001, false),
        (0b100, 0b100, true),
    ] {
        let mut a = Assembler::new();
        a.csrr(A0, csr::INSTRET);
        let (mut cpu, mut ram) = boot(&a);
        cpu.set_csr(csr::MCOUNTEREN, m).unwrap();
        cpu.set_csr(csr::SCOUNTEREN, s).unwrap();
        cpu.set_privilege(Privilege::User);
        let want = if allowed {
            StepOutcome::Retired
        } else {
            StepOutcome::Exception(Exception::IllegalInstruction)
        };
        assert_eq!(step(&mut cpu, &mut ram), want, "m={m:#b} s={s:#b}");
    }
}

#[test]
fn delegation_never_lowers_a_trap_from_m_and_ecall_from_s_is_cause_9() {
    let mut a = Assembler::new();
    a.ecall();
    // From M with everything delegated: M takes it.
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MEDELEG, u64::MAX).unwrap();
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::EcallFromM)
    );
    assert_eq!(
        (cpu.privilege(), csr(&cpu, csr::MCAUSE)),
        (Privilege::Machine, 11)
    );
    // From S, not delegated: M, with MPP = S.
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_privilege(Privilege::Supervisor);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::EcallFromS)
    );
    assert_eq!(csr(&cpu, csr::MCAUSE), 9);
    assert_eq!(csr(&cpu, csr::MSTATUS) & MSTATUS_MPP, 1 << 11);
    // mret goes back to S.
    for _ in 0..5 {
        step(&mut cpu, &mut ram);
    }
    assert_eq!(cpu.privilege(), Privilege::Supervisor);
    assert_eq!(cpu.pc(), RAM_BASE + 4);
    // From S, delegated: S itself, SPP = S.
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MEDELEG, 1 << 9).unwrap();
    cpu.set_privilege(Privilege::Supervisor);
    step(&mut cpu, &mut ram);
    assert_eq!(
        (cpu.privilege(), csr(&cpu, csr::SCAUSE)),
        (Privilege::Supervisor, 9)
    );
    assert_ne!(csr(&cpu, csr::MSTATUS) & MSTATUS_SPP, 0);
}

/// (mode, mstatus, mideleg, lines raised) -> which interrupt is taken, if any.
fn taken(
    mode: Privilege,
    mstatus: u64,
    mideleg: u64,
    lines: u64,
) -> Option<(Interrupt, Privilege)> {
    let mut a = Assembler::new();
    a.nop();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MSTATUS, mstatus).unwrap();
    cpu.set_csr(csr::MIDELEG, mideleg).unwrap();
    cpu.set_csr(csr::MIE, u64::MAX).unwrap();
    cpu.set_privilege(mode);
    cpu.set_mip(lines, true);
    match step(&mut cpu, &mut ram) {
        StepOutcome::Interrupt(i) => {
            let cause = if cpu.privilege() == Privilege::Supervisor {
                csr(&cpu, csr::SCAUSE)
            } else {
                csr(&cpu, csr::MCAUSE)
            };
            assert_eq!(cause, MCAUSE_INTERRUPT | i.code());
            Some((i, cpu.privilege()))
        }
        StepOutcome::Retired => None,
        other => panic!("{other:?}"),
    }
}

#[test]
fn interrupts_route_by_delegation_and_mode() {
    use Interrupt::*;
    use Privilege::*;
    let s_bits = MIP_SSIP | MIP_STIP | MIP_SEIP;
    // A delegated interrupt: taken in U always, in S with SIE, never in M.
    assert_eq!(
        taken(User, 0, s_bits, MIP_STIP),
        Some((SupervisorTimer, Supervisor))
    );
    assert_eq!(taken(Supervisor, 0, s_bits, MIP_STIP), None);
    assert_eq!(
        taken(Supervisor, MSTATUS_SIE, s_bits, MIP_STIP),
        Some((SupervisorTimer, Supervisor))
    );
    assert_eq!(
        taken(Machine, MSTATUS_MIE | MSTATUS_SIE, s_bits, MIP_STIP),
        None
    );
    // Not delegated: an S-level interrupt goes to M.
    assert_eq!(
        taken(Supervisor, 0, 0, MIP_SEIP),
        Some((SupervisorExternal, Machine))
    );
    // An M-level interrupt is taken below M whatever MIE says, and first.
    assert_eq!(
        taken(Supervisor, MSTATUS_SIE, s_bits, MIP_STIP | MIP_MTIP),
        Some((MachineTimer, Machine))
    );
    assert_eq!(taken(Machine, 0, 0, MIP_MTIP), None);
    // Priority within a mode: external, software, timer.
    assert_eq!(
        taken(User, 0, s_bits, s_bits),
        Some((SupervisorExternal, Supervisor))
    );
    assert_eq!(
        taken(User, 0, s_bits, MIP_SSIP | MIP_STIP),
        Some((SupervisorSoftware, Supervisor))
    );
    assert_eq!(
        taken(Machine, MSTATUS_MIE, 0, MIP_MTIP | MIP_MSIP | MIP_SEIP),
        Some((MachineSoftware, Machine))
    );
    assert_eq!(
        taken(Machine, MSTATUS_MIE, 0, MIP_MTIP | MIP_SEIP),
        Some((MachineTimer, Machine)),
        "both go to M, where the order is MEI, MSI, MTI, SEI, SSI, STI"
    );
}

#[test]
fn a_vectored_stvec_moves_interrupts_only() {
    let mut a = Assembler::new();
    a.nop();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::STVEC, S_HANDLER | 1).unwrap();
    cpu.set_csr(csr::MIDELEG, MIP_STIP).unwrap();
    cpu.set_csr(csr::MIE, MIP_STIP).unwrap();
    cpu.set_privilege(Privilege::User);
    cpu.set_mip(MIP_STIP, true);
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.pc(), S_HANDLER + 4 * 5);
}

#[test]
fn sstatus_sie_and_sip_are_views() {
    let mut cpu = Cpu::new(RAM_BASE);
    cpu.set_csr(csr::SSTATUS, u64::MAX).unwrap();
    let st = csr(&cpu, csr::MSTATUS);
    assert_eq!(
        st & !((3 << 32) | (3 << 34)),
        MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SUM | MSTATUS_MXR,
        "only the S fields"
    );
    assert_eq!(
        csr(&cpu, csr::SSTATUS),
        MSTATUS_SIE | MSTATUS_SPIE | MSTATUS_SPP | MSTATUS_SUM | MSTATUS_MXR | (2 << 32)
    );
    // sie/sip: nothing without delegation.
    cpu.set_csr(csr::SIE, u64::MAX).unwrap();
    assert_eq!((csr(&cpu, csr::SIE), csr(&cpu, csr::MIE)), (0, 0));
    cpu.set_csr(csr::MIDELEG, u64::MAX).unwrap();
    assert_eq!(csr(&cpu, csr::MIDELEG), MIP_SSIP | MIP_STIP | MIP_SEIP);
    cpu.set_csr(csr::SIE, u64::MAX).unwrap();
    assert_eq!(csr(&cpu, csr::MIE), MIP_SSIP | MIP_STIP | MIP_SEIP);
    cpu.set_csr(csr::SIP, u64::MAX).unwrap();
    assert_eq!(
        csr(&cpu, csr::SIP),
        MIP_SSIP,
        "only SSIP is writable in sip"
    );
    cpu.set_mip(MIP_STIP | MIP_MTIP, true);
    assert_eq!(csr(&cpu, csr::SIP), MIP_SSIP | MIP_STIP);
    assert_eq!(csr(&cpu, csr::MIP), MIP_SSIP | MIP_STIP | MIP_MTIP);
}

#[test]
fn a_read_modify_write_of_mip_does_not_latch_a_line() {
    let mut a = Assembler::new();
    a.li(T0, MIP_SSIP as i64).csrrs(A0, csr::MIP, T0);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_mip(MIP_SEIP, true);
    step(&mut cpu, &mut ram);
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.reg(A0), MIP_SEIP, "the read shows the line");
    cpu.set_mip(MIP_SEIP, false);
    assert_eq!(csr(&cpu, csr::MIP), MIP_SSIP, "SEIP went with its line");
}

#[test]
fn sret_mret_and_mprv() {
    // sret is illegal in U, and in S with TSR.
    for (mode, tsr) in [(Privilege::User, 0), (Privilege::Supervisor, MSTATUS_TSR)] {
        let mut a = Assembler::new();
        a.emit(SRET);
        let (mut cpu, mut ram) = boot(&a);
        cpu.set_csr(csr::MSTATUS, tsr).unwrap();
        cpu.set_privilege(mode);
        assert_eq!(
            step(&mut cpu, &mut ram),
            StepOutcome::Exception(Exception::IllegalInstruction),
            "{mode:?}"
        );
        assert_eq!(csr(&cpu, csr::MTVAL), u64::from(SRET));
    }
    // mret to S clears MPRV; mret to M keeps it.
    for (mpp, mprv_after) in [(1u64, 0), (3, MSTATUS_MPRV)] {
        let mut a = Assembler::new();
        a.mret();
        let (mut cpu, mut ram) = boot(&a);
        cpu.set_csr(csr::MSTATUS, (mpp << 11) | MSTATUS_MPRV)
            .unwrap();
        cpu.set_csr(csr::MEPC, RAM_BASE + 0x40).unwrap();
        step(&mut cpu, &mut ram);
        assert_eq!(cpu.privilege(), Privilege::from_bits(mpp));
        assert_eq!(csr(&cpu, csr::MSTATUS) & MSTATUS_MPRV, mprv_after);
        assert_eq!(
            csr(&cpu, csr::MSTATUS) & MSTATUS_MPP,
            0,
            "MPP = U after mret"
        );
        assert_eq!(cpu.pc(), RAM_BASE + 0x40);
    }
    // sret from M to S (SPP = 1) clears MPRV too.
    let mut a = Assembler::new();
    a.emit(SRET);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MSTATUS, MSTATUS_SPP | MSTATUS_MPRV)
        .unwrap();
    cpu.set_csr(csr::SEPC, RAM_BASE + 0x80).unwrap();
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.privilege(), Privilege::Supervisor);
    assert_eq!(cpu.pc(), RAM_BASE + 0x80);
    assert_eq!(csr(&cpu, csr::MSTATUS) & (MSTATUS_MPRV | MSTATUS_SPP), 0);
}

#[test]
fn tvm_traps_satp_and_sfence_vma_in_s_mode() {
    let satp_read = csrrs(A0, csr::SATP, ZERO).unwrap();
    for (inst, mode, mstatus, legal) in [
        (satp_read, Privilege::Supervisor, 0, true),
        (satp_read, Privilege::Supervisor, MSTATUS_TVM, false),
        (satp_read, Privilege::Machine, MSTATUS_TVM, true),
        (satp_read, Privilege::User, 0, false),
        (SFENCE_VMA, Privilege::Supervisor, 0, true),
        (SFENCE_VMA, Privilege::Supervisor, MSTATUS_TVM, false),
        (SFENCE_VMA, Privilege::Machine, MSTATUS_TVM, true),
        (SFENCE_VMA, Privilege::User, 0, false),
        (
            SFENCE_VMA | (5 << 15) | (6 << 20),
            Privilege::Supervisor,
            0,
            true,
        ),
    ] {
        let mut a = Assembler::new();
        a.emit(inst);
        let (mut cpu, mut ram) = boot(&a);
        cpu.set_csr(csr::MSTATUS, mstatus).unwrap();
        cpu.set_privilege(mode);
        let want = if legal {
            StepOutcome::Retired
        } else {
            StepOutcome::Exception(Exception::IllegalInstruction)
        };
        assert_eq!(
            step(&mut cpu, &mut ram),
            want,
            "{inst:#010x} {mode:?} {mstatus:#x}"
        );
    }
}

#[test]
fn supervisor_csrs_are_illegal_from_u_and_machine_ones_from_s() {
    for (addr, mode) in [
        (csr::SSTATUS, Privilege::User),
        (csr::STVEC, Privilege::User),
        (csr::MSTATUS, Privilege::Supervisor),
        (csr::MEDELEG, Privilege::Supervisor),
    ] {
        let inst = csrrs(A0, addr, ZERO).unwrap();
        let mut a = Assembler::new();
        a.emit(inst);
        let (mut cpu, mut ram) = boot(&a);
        cpu.set_privilege(mode);
        assert_eq!(
            step(&mut cpu, &mut ram),
            StepOutcome::Exception(Exception::IllegalInstruction),
            "{addr:#x} from {mode:?}"
        );
    }
    // The S CSRs hold what S-mode writes.
    let mut a = Assembler::new();
    a.li(T0, 0x1235)
        .csrw(csr::SSCRATCH, T0)
        .csrr(A0, csr::SSCRATCH)
        .csrw(csr::SEPC, T0)
        .csrr(A1, csr::SEPC)
        .csrw(csr::STVEC, T0)
        .csrr(A2, csr::STVEC)
        .csrw(csr::SENVCFG, T0)
        .csrr(A3, csr::SENVCFG);
    let end = RAM_BASE + a.offset();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_privilege(Privilege::Supervisor);
    while cpu.pc() < end {
        assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    }
    assert_eq!(
        [cpu.reg(A0), cpu.reg(A1), cpu.reg(A2), cpu.reg(A3)],
        [0x1235, 0x1234, 0x1235, 1],
        "sepc drops bit 0; stvec mode 1 is vectored; senvcfg has FIOM only"
    );
}
