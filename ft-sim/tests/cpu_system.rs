//! Privileged architecture: CSRs, traps, mret/ecall round trips, interrupts, WFI.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ft_sim::asm::*;
use ft_sim::cpu::*;
use ft_sim::memory::{Ram, RAM_BASE};

const RAM_SIZE: usize = 1 << 20;

fn boot(a: &Assembler) -> (Cpu, Ram) {
    let code = a.finish().unwrap();
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(RAM_BASE, &code).unwrap();
    (Cpu::new(RAM_BASE), ram)
}

/// Steps until `pred` holds for an outcome; returns it.
fn step_until(
    cpu: &mut Cpu,
    ram: &mut Ram,
    mut pred: impl FnMut(&StepOutcome) -> bool,
) -> StepOutcome {
    for _ in 0..100_000 {
        let o = cpu.step(ram, &mut NoMmio);
        if pred(&o) {
            return o;
        }
    }
    panic!("condition never reached");
}

fn run_to_ebreak(a: &mut Assembler) -> (Cpu, Ram) {
    a.ebreak();
    let (mut cpu, mut ram) = boot(a);
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(
        o,
        StepOutcome::Exception(Exception::Breakpoint),
        "mepc={:#x} mtval={:#x}",
        cpu.csr(csr::MEPC).unwrap(),
        cpu.csr(csr::MTVAL).unwrap()
    );
    (cpu, ram)
}

#[test]
fn csr_read_write_set_clear() {
    let mut a = Assembler::new();
    a.li(T0, 0x1234)
        .csrrw(A0, csr::MSCRATCH, T0) // a0 = 0, mscratch = 0x1234
        .li(T1, 0xF0)
        .csrrs(A1, csr::MSCRATCH, T1) // a1 = 0x1234, mscratch = 0x12F4
        .li(T2, 0x204)
        .csrrc(A2, csr::MSCRATCH, T2) // a2 = 0x12F4, mscratch = 0x10F0
        .csrrwi(A3, csr::MSCRATCH, 31) // a3 = 0x10F0, mscratch = 31
        .csrrsi(A4, csr::MSCRATCH, 0) // read only
        .csrrci(A5, csr::MSCRATCH, 1) // a5 = 31, mscratch = 30
        .csrr(A6, csr::MSCRATCH)
        // csrrw with rd == rs1: the old value goes to rd, the old rs1 to the CSR.
        .li(S2, 77)
        .csrrw(S2, csr::MSCRATCH, S2)
        .csrr(S3, csr::MSCRATCH);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.reg(A0), 0);
    assert_eq!(cpu.reg(A1), 0x1234);
    assert_eq!(cpu.reg(A2), 0x12F4);
    assert_eq!(cpu.reg(A3), 0x10F0);
    assert_eq!(cpu.reg(A4), 31);
    assert_eq!(cpu.reg(A5), 31);
    assert_eq!(cpu.reg(A6), 30);
    assert_eq!(cpu.reg(S2), 30);
    assert_eq!(cpu.reg(S3), 77);
}

#[test]
fn csr_warl_fields_and_constant_csrs() {
    let mut a = Assembler::new();
    a.li(T0, -1)
        .csrw(csr::MIE, T0)
        .csrr(A0, csr::MIE)
        .csrw(csr::MSTATUS, T0)
        .csrr(A1, csr::MSTATUS)
        .li(T1, 2 << 11) // MPP = 2: reserved
        .csrw(csr::MSTATUS, T1)
        .csrr(A2, csr::MSTATUS)
        .li(T1, 0x8000_1003)
        .csrw(csr::MEPC, T1)
        .csrr(A3, csr::MEPC)
        .csrw(csr::MTVEC, T1) // mode 3 is reserved
        .csrr(A4, csr::MTVEC)
        .csrr(A5, csr::MISA)
        .csrw(csr::MISA, ZERO) // ignored
        .csrr(A6, csr::MISA)
        .csrr(A7, csr::MHARTID)
        .csrr(S2, csr::MVENDORID)
        .csrw(csr::MIP, T0) // only the supervisor bits: the M lines are the machine's
        .csrr(S3, csr::MIP)
        .csrw(csr::SATP, T0) // mode 15 is not implemented: no effect
        .csrr(S4, csr::SATP)
        .csrw(csr::PMPADDR0 + 63, T0)
        .csrr(S5, csr::PMPADDR0 + 63)
        .csrw(csr::PMPCFG0 + 2, T1)
        .csrr(S6, csr::PMPCFG0 + 2)
        .csrw(csr::MEDELEG, T1)
        .csrr(S7, csr::MEDELEG);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(
        cpu.reg(A0),
        MIP_SSIP | MIP_MSIP | MIP_STIP | MIP_MTIP | MIP_SEIP | MIP_MEIP
    );
    assert_eq!(
        cpu.reg(A1),
        MSTATUS_SIE
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
            | MSTATUS_TSR
            | (2 << 32)
            | (2 << 34),
        "writable bits + UXL=SXL=64"
    );
    assert_eq!(cpu.reg(A2) & MSTATUS_MPP, 0, "reserved MPP becomes U");
    assert_eq!(
        cpu.reg(A3),
        0x8000_1002,
        "mepc[0] = 0 (IALIGN 16: bit 1 stays)"
    );
    assert_eq!(cpu.reg(A4) & 3, 0, "reserved mtvec mode becomes direct");
    assert_eq!(cpu.reg(A5), MISA);
    assert_eq!(MISA >> 62, 2);
    assert_eq!(
        MISA & ((1 << 26) - 1),
        1 | (1 << 2) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20),
        "A, C, I, M, S, U"
    );
    assert_eq!(cpu.reg(A6), MISA);
    assert_eq!(cpu.reg(A7), 0);
    assert_eq!(cpu.reg(S2), 0);
    assert_eq!(cpu.reg(S3), MIP_SSIP | MIP_STIP | MIP_SEIP);
    assert_eq!(cpu.reg(S4), 0);
    assert_eq!(cpu.reg(S5), (1 << 54) - 1);
    assert_eq!(cpu.reg(S6), 0x8000_1003);
    assert_eq!(cpu.reg(S7), 0x1003, "ecall from M (11) is not delegable");
}

#[test]
fn counters_follow_instret_and_writes_never_move_the_execution_point() {
    let mut a = Assembler::new();
    a.nop()
        .nop()
        .csrr(A0, csr::MINSTRET) // 2 retired before it
        .csrr(A1, csr::INSTRET) // 3
        .csrr(A2, csr::CYCLE) // 4
        .csrr(A4, csr::MCYCLE) // 5
        .li(T0, 1000)
        .csrw(csr::MINSTRET, T0) // the next instruction reads 1000
        .csrr(A5, csr::MINSTRET)
        .csrr(A3, csr::MCYCLE); // 9: mcycle was not written
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(
        [
            cpu.reg(A0),
            cpu.reg(A1),
            cpu.reg(A2),
            cpu.reg(A4),
            cpu.reg(A5),
            cpu.reg(A3)
        ],
        [2, 3, 4, 5, 1000, 9]
    );
    assert_eq!(cpu.instret(), 10, "the execution point counts on");
}

fn expect_illegal(a: &Assembler, setup: impl FnOnce(&mut Cpu), inst: u32) -> Cpu {
    let (mut cpu, mut ram) = boot(a);
    setup(&mut cpu);
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::IllegalInstruction));
    assert_eq!(cpu.csr(csr::MTVAL), Some(u64::from(inst)));
    cpu
}

#[test]
fn csr_access_rules() {
    // Unknown CSR.
    let inst = csrrs(A0, 0x7C0, ZERO).unwrap();
    expect_illegal(Assembler::new().emit(inst), |_| {}, inst);
    // Write to a read-only CSR (even with a zero value), csrrw with rd = x0.
    for inst in [
        csrrw(ZERO, csr::MVENDORID, ZERO).unwrap(),
        csrrs(A0, csr::MHARTID, T0).unwrap(),
        csrrsi(A0, csr::CYCLE, 1).unwrap(),
        csrrwi(A0, csr::TIME, 0).unwrap(),
    ] {
        expect_illegal(Assembler::new().emit(inst), |_| {}, inst);
    }
    // Reading read-only CSRs with rs1 = x0 / zimm = 0 is fine.
    let mut a = Assembler::new();
    a.csrrs(A0, csr::MHARTID, ZERO)
        .csrrci(A1, csr::MARCHID, 0)
        .csrr(A2, csr::INSTRET);
    run_to_ebreak(&mut a);

    // U-mode: machine CSRs are illegal, counters need mcounteren.
    for inst in [
        csrrs(A0, csr::MSTATUS, ZERO).unwrap(),
        csrrw(A0, csr::MSCRATCH, A0).unwrap(),
        csrrs(A0, csr::SATP, ZERO).unwrap(),
        csrrs(A0, csr::INSTRET, ZERO).unwrap(),
        mret(),
    ] {
        let cpu = expect_illegal(
            Assembler::new().emit(inst),
            |c| c.set_privilege(Privilege::User),
            inst,
        );
        assert_eq!(cpu.privilege(), Privilege::Machine);
        assert_eq!(cpu.csr(csr::MSTATUS).unwrap() & MSTATUS_MPP, 0, "MPP = U");
    }
    let (mut cpu, mut ram) = boot(Assembler::new().csrr(A0, csr::INSTRET).csrr(A1, csr::TIME));
    cpu.set_csr(csr::MCOUNTEREN, 0b111).unwrap();
    cpu.set_csr(csr::SCOUNTEREN, 0b101).unwrap();
    cpu.set_privilege(Privilege::User);
    assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Retired);
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Exception(Exception::IllegalInstruction),
        "TM bit clear"
    );
}

#[test]
fn set_csr_api() {
    let mut cpu = Cpu::new(RAM_BASE);
    assert_eq!(cpu.set_csr(0x7C0, 1), Err(CpuError::UnknownCsr(0x7C0)));
    assert_eq!(
        cpu.set_csr(csr::MHARTID, 1),
        Err(CpuError::ReadOnlyCsr(csr::MHARTID))
    );
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x101).unwrap();
    assert_eq!(cpu.csr(csr::MTVEC), Some(RAM_BASE + 0x101));
    assert_eq!(cpu.csr(0x7C0), None);
}

/// Machine-mode boot code that enters `user` in U-mode with `handler` as mtvec.
fn enter_user(a: &mut Assembler, handler: Label, user: Label) {
    a.la(T0, handler)
        .csrw(csr::MTVEC, T0)
        .la(T0, user)
        .csrw(csr::MEPC, T0)
        .li(T0, MSTATUS_MPP as i64)
        .csrc(csr::MSTATUS, T0) // MPP = U
        .li(T0, MSTATUS_MPIE as i64)
        .csrs(csr::MSTATUS, T0) // MIE will become 1 after mret
        .mret();
}

#[test]
fn mret_to_user_and_ecall_back() {
    let mut a = Assembler::new();
    let handler = a.label();
    let user = a.label();
    let done = a.label();
    enter_user(&mut a, handler, user);
    a.bind(user).li(A0, 42);
    let ecall_pc = RAM_BASE + a.offset();
    a.ecall().li(A0, 43).ecall();
    // Handler: the first ecall returns to the next instruction; the second stops.
    a.bind(handler)
        .csrr(S2, csr::MCAUSE)
        .csrr(S3, csr::MEPC)
        .csrr(S5, csr::MTVAL)
        .li(T1, 43)
        .beq(A0, T1, done)
        .addi(S3, S3, 4)
        .csrw(csr::MEPC, S3)
        .mret()
        .bind(done)
        .ebreak();
    let (mut cpu, mut ram) = boot(&a);
    // Run up to the first ecall and check the privilege transitions on the way.
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::EcallFromU));
    assert_eq!(cpu.privilege(), Privilege::Machine);
    assert_eq!(cpu.csr(csr::MEPC), Some(ecall_pc));
    assert_eq!(cpu.csr(csr::MCAUSE), Some(8));
    let ms = cpu.csr(csr::MSTATUS).unwrap();
    assert_eq!(ms & MSTATUS_MPP, 0, "came from U");
    assert_eq!(ms & MSTATUS_MIE, 0, "MIE cleared on trap");
    assert_ne!(ms & MSTATUS_MPIE, 0, "MPIE = old MIE (1 after mret)");
    // The handler returns to U-mode; the second ecall traps again.
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::EcallFromU));
    assert_eq!(cpu.csr(csr::MEPC), Some(ecall_pc + 8));
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::Breakpoint));
    assert_eq!(cpu.reg(S2), 8);
    assert_eq!(cpu.reg(S3), ecall_pc + 8);
    assert_eq!(cpu.reg(S5), 0, "mtval = 0 for ecall");
    assert_eq!(cpu.reg(A0), 43);
}

#[test]
fn mret_restores_interrupt_enable_and_clears_mpp() {
    let mut a = Assembler::new();
    let target = a.label();
    a.la(T0, target)
        .csrw(csr::MEPC, T0)
        .li(T0, (MSTATUS_MPIE | MSTATUS_MPP) as i64)
        .csrw(csr::MSTATUS, T0)
        .mret()
        .bind(target)
        .csrr(A0, csr::MSTATUS);
    let (cpu, _) = run_to_ebreak(&mut a);
    assert_eq!(cpu.privilege(), Privilege::Machine, "MPP was M");
    let ms = cpu.reg(A0);
    assert_ne!(ms & MSTATUS_MIE, 0, "MIE = old MPIE");
    assert_ne!(ms & MSTATUS_MPIE, 0, "MPIE = 1");
    assert_eq!(ms & MSTATUS_MPP, 0, "MPP = U");
}

#[test]
fn ecall_and_ebreak_in_machine_mode() {
    let (mut cpu, mut ram) = boot(Assembler::new().nop().ecall());
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x400).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
    assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Retired);
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Exception(Exception::EcallFromM)
    );
    assert_eq!(cpu.csr(csr::MCAUSE), Some(11));
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 4));
    assert_eq!(cpu.pc(), RAM_BASE + 0x400);
    let ms = cpu.csr(csr::MSTATUS).unwrap();
    assert_eq!(ms & MSTATUS_MPP, MSTATUS_MPP, "MPP = M");
    assert_eq!(ms & (MSTATUS_MIE | MSTATUS_MPIE), MSTATUS_MPIE);
    assert_eq!(cpu.instret(), 1);

    let (mut cpu, mut ram) = boot(Assembler::new().nop().ebreak());
    cpu.step(&mut ram, &mut NoMmio);
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Exception(Exception::Breakpoint)
    );
    assert_eq!(cpu.csr(csr::MCAUSE), Some(3));
    assert_eq!(cpu.csr(csr::MTVAL), Some(RAM_BASE + 4));
}

#[test]
fn misaligned_ram_accesses_complete_across_a_page_boundary() {
    // A doubleword stored 3 bytes before a page boundary, read back at every width.
    let at = RAM_BASE + 0x1ffd;
    let mut a = Assembler::new();
    a.li_u64(T0, at)
        .li_u64(T1, 0x8877_6655_4433_2211)
        .sd(T1, T0, 0)
        .ld(A0, T0, 0)
        .lw(A1, T0, 1)
        .lhu(A2, T0, 3)
        .lh(A3, T0, 6)
        .li(T2, -2)
        .sh(T2, T0, 1)
        .lwu(A4, T0, 0)
        .ebreak();
    let (mut cpu, mut ram) = boot(&a);
    ram.clear_dirty();
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::Breakpoint));
    assert_eq!(cpu.reg(A0), 0x8877_6655_4433_2211);
    assert_eq!(cpu.reg(A1), 0x5544_3322);
    assert_eq!(cpu.reg(A2), 0x5544);
    assert_eq!(cpu.reg(A3), 0xffff_ffff_ffff_8877, "lh sign-extends");
    assert_eq!(cpu.reg(A4), 0x44ff_fe11);
    assert_eq!(
        ram.take_dirty_pages(),
        vec![1, 2],
        "both pages the doubleword touches are dirty"
    );
}

#[test]
fn misaligned_device_and_faulting_accesses_trap() {
    type MemOp = fn(Reg, Reg, i64) -> ft_sim::asm::Result<u32>;
    let end = RAM_BASE + RAM_SIZE as u64;
    let cases: &[(MemOp, u64, Exception)] = &[
        // Misaligned outside RAM (a device, or nothing), or straddling RAM's end.
        (ld, 0x1004, Exception::LoadAddressMisaligned),
        (lw, end - 2, Exception::LoadAddressMisaligned),
        (sh, 0x1003, Exception::StoreAddressMisaligned),
        (sd, end - 4, Exception::StoreAddressMisaligned),
        (lb, 0x1000, Exception::LoadAccessFault),
        (ld, RAM_BASE + RAM_SIZE as u64, Exception::LoadAccessFault),
        (sw, 0x1000, Exception::StoreAccessFault),
        (sb, RAM_BASE - 1, Exception::StoreAccessFault),
        // Misalignment takes priority over the access fault.
        (sd, 0x1004, Exception::StoreAddressMisaligned),
    ];
    for &(op, addr, exc) in cases {
        let mut a = Assembler::new();
        a.li_u64(T0, addr).li(A0, 7);
        let pc = RAM_BASE + a.offset();
        a.emit(op(A0, T0, 0).unwrap());
        let (mut cpu, mut ram) = boot(&a);
        ram.clear_dirty();
        let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
        assert_eq!(o, StepOutcome::Exception(exc), "{addr:#x}");
        assert_eq!(cpu.csr(csr::MCAUSE), Some(exc.code()));
        assert_eq!(cpu.csr(csr::MTVAL), Some(addr));
        assert_eq!(cpu.csr(csr::MEPC), Some(pc));
        assert_eq!(cpu.reg(A0), 7, "destination untouched");
        assert!(ram.take_dirty_pages().is_empty(), "nothing stored");
    }
}

#[test]
fn fetch_outside_ram_is_an_instruction_access_fault() {
    let (mut cpu, mut ram) = boot(Assembler::new().li(T0, 0x2000).jr(T0));
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::InstructionAccessFault));
    assert_eq!(cpu.csr(csr::MEPC), Some(0x2000));
    assert_eq!(cpu.csr(csr::MTVAL), Some(0x2000));
    assert_eq!(cpu.instret(), 2);
}

#[test]
fn trap_loop_is_detected() {
    // mtvec points outside RAM: every trap faults again at the vector.
    let (mut cpu, mut ram) = boot(Assembler::new().emit(0));
    cpu.set_csr(csr::MTVEC, 0x4000).unwrap();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 10), StepExit::TrapLoop);
    assert_eq!(cpu.instret(), 0);
    assert_eq!(cpu.pc(), 0x4000);
    // Fixing the cause lets execution continue.
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    cpu.set_pc(RAM_BASE + 0x100);
    ram.write(RAM_BASE + 0x100, &nop().to_le_bytes()).unwrap();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 1), StepExit::Budget);
}

/// An infinite `addi a0, a0, 1` loop at RAM_BASE with a handler at +0x100 that
/// records mcause in s2 and mepc in s3, counts in s4, clears mie and returns.
fn interrupt_rig() -> (Cpu, Ram) {
    let mut a = Assembler::new();
    let top = a.here();
    a.addi(A0, A0, 1).j(top);
    while a.offset() < 0x100 {
        a.nop();
    }
    a.csrr(S2, csr::MCAUSE)
        .csrr(S3, csr::MEPC)
        .addi(S4, S4, 1)
        .csrw(csr::MIE, ZERO)
        .mret();
    let (mut cpu, ram) = boot(&a);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    (cpu, ram)
}

#[test]
fn interrupt_taken_only_when_enabled() {
    let (mut cpu, mut ram) = interrupt_rig();
    cpu.set_mip(MIP_MTIP, true);
    // Pending but not enabled in mie.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 10), StepExit::Budget);
    assert_eq!(cpu.reg(S4), 0);
    // Enabled in mie but mstatus.MIE = 0 in M-mode.
    cpu.set_csr(csr::MIE, MIP_MTIP).unwrap();
    assert!(!cpu.pending_interrupt());
    assert!(cpu.wakeup_pending());
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 20), StepExit::Budget);
    assert_eq!(cpu.reg(S4), 0);
    // Globally enabled: taken before the next instruction, nothing retired.
    cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
    assert!(cpu.pending_interrupt());
    let pc = cpu.pc();
    let n = cpu.instret();
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Interrupt(Interrupt::MachineTimer)
    );
    assert_eq!(cpu.instret(), n);
    assert_eq!(cpu.pc(), RAM_BASE + 0x100);
    assert_eq!(cpu.csr(csr::MEPC), Some(pc));
    assert_eq!(cpu.csr(csr::MCAUSE), Some(MCAUSE_INTERRUPT | 7));
    assert_eq!(cpu.csr(csr::MTVAL), Some(0));
    // The handler runs and returns; the level-triggered line is masked by mie=0.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, n + 5), StepExit::Budget);
    assert_eq!(cpu.reg(S4), 1);
    assert_eq!(cpu.reg(S3), pc);
    assert_eq!(cpu.pc(), pc, "returned to the interrupted instruction");
    assert_ne!(cpu.csr(csr::MSTATUS).unwrap() & MSTATUS_MIE, 0);
}

#[test]
fn interrupts_always_enabled_in_user_mode() {
    let (mut cpu, mut ram) = interrupt_rig();
    cpu.set_privilege(Privilege::User);
    cpu.set_csr(csr::MIE, MIP_MSIP).unwrap();
    cpu.set_mip(MIP_MSIP, true);
    assert!(cpu.pending_interrupt());
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Interrupt(Interrupt::MachineSoftware)
    );
    assert_eq!(cpu.privilege(), Privilege::Machine);
    assert_eq!(cpu.csr(csr::MSTATUS).unwrap() & MSTATUS_MPP, 0);
}

#[test]
fn interrupt_priority_and_vectored_mode() {
    let order = [
        (MIP_MEIP | MIP_MSIP | MIP_MTIP, Interrupt::MachineExternal),
        (MIP_MSIP | MIP_MTIP, Interrupt::MachineSoftware),
        (MIP_MTIP, Interrupt::MachineTimer),
    ];
    for (pending, expect) in order {
        let mut cpu = Cpu::new(RAM_BASE);
        let mut ram = Ram::new(RAM_SIZE);
        cpu.set_csr(csr::MTVEC, RAM_BASE + 0x200 + 1).unwrap(); // vectored
        cpu.set_csr(csr::MIE, u64::MAX).unwrap();
        cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
        cpu.set_mip(pending, true);
        assert_eq!(
            cpu.step(&mut ram, &mut NoMmio),
            StepOutcome::Interrupt(expect)
        );
        assert_eq!(cpu.csr(csr::MCAUSE), Some(MCAUSE_INTERRUPT | expect.code()));
        assert_eq!(cpu.pc(), RAM_BASE + 0x200 + 4 * expect.code());
    }
    // Exceptions in vectored mode go to the base.
    let (mut cpu, mut ram) = boot(Assembler::new().ecall());
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x201).unwrap();
    cpu.step(&mut ram, &mut NoMmio);
    assert_eq!(cpu.pc(), RAM_BASE + 0x200);
}

#[test]
fn wfi_idles_without_retiring() {
    let mut a = Assembler::new();
    a.nop();
    let wfi_pc = RAM_BASE + a.offset();
    a.wfi().addi(A0, A0, 1);
    let (mut cpu, mut ram) = boot(&a);
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 100), StepExit::Idle);
    assert_eq!(cpu.instret(), 1);
    assert_eq!(cpu.pc(), wfi_pc);
    // Still idle: nothing pending.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 100), StepExit::Idle);
    // Pending but not enabled in mie: still idle.
    cpu.set_mip(MIP_MTIP, true);
    assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Idle);
    assert_eq!(cpu.instret(), 1);
    // Enabled in mie with mstatus.MIE = 0: the wfi retires and execution goes on.
    cpu.set_csr(csr::MIE, MIP_MTIP).unwrap();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 3), StepExit::Budget);
    assert_eq!(cpu.reg(A0), 1);
    assert_eq!(cpu.pc(), wfi_pc + 8);
    assert_eq!(cpu.csr(csr::MCAUSE), Some(0), "no trap");
}

#[test]
fn wfi_with_pending_enabled_interrupt_is_a_nop() {
    let (mut cpu, mut ram) = boot(Assembler::new().wfi().addi(A0, A0, 1));
    cpu.set_csr(csr::MIE, MIP_MEIP).unwrap();
    cpu.set_mip(MIP_MEIP, true); // mstatus.MIE = 0: not taken, but wakes wfi
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 2), StepExit::Budget);
    assert_eq!(cpu.reg(A0), 1);
}

#[test]
fn interrupt_waking_wfi_is_taken_after_it() {
    let mut a = Assembler::new();
    let wfi_pc = RAM_BASE + a.offset();
    a.wfi().addi(A0, A0, 1).ebreak();
    while a.offset() < 0x100 {
        a.nop();
    }
    a.addi(S4, S4, 1).csrw(csr::MIE, ZERO).mret();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    cpu.set_csr(csr::MIE, MIP_MTIP).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 100), StepExit::Idle);
    assert_eq!(cpu.instret(), 0);
    cpu.set_mip(MIP_MTIP, true);
    // The wfi retires first; the interrupt is then taken with mepc after it.
    assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Retired);
    assert_eq!(cpu.instret(), 1);
    assert_eq!(
        cpu.step(&mut ram, &mut NoMmio),
        StepOutcome::Interrupt(Interrupt::MachineTimer)
    );
    assert_eq!(cpu.csr(csr::MEPC), Some(wfi_pc + 4));
    // The handler returns after the wfi: no second sleep.
    let o = step_until(&mut cpu, &mut ram, |o| !matches!(o, StepOutcome::Retired));
    assert_eq!(o, StepOutcome::Exception(Exception::Breakpoint));
    assert_eq!(cpu.reg(S4), 1);
    assert_eq!(cpu.reg(A0), 1);
}

#[test]
fn wfi_wakeup_is_the_same_whether_or_not_the_wfi_was_attempted() {
    let mut a = Assembler::new();
    a.nop().nop().wfi().addi(A0, A0, 1).ebreak();
    while a.offset() < 0x100 {
        a.nop();
    }
    a.addi(S4, S4, 1).csrw(csr::MIE, ZERO).mret();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    cpu.set_csr(csr::MIE, MIP_MEIP).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
    // Recording: the guest idles in the wfi at instret 2, then the line rises.
    let mut rec = cpu.clone();
    let mut rec_ram = ram.clone();
    assert_eq!(rec.run(&mut rec_ram, &mut NoMmio, 100), StepExit::Idle);
    assert_eq!(rec.instret(), 2);
    rec.set_mip(MIP_MEIP, true);
    assert_eq!(rec.run(&mut rec_ram, &mut NoMmio, 6), StepExit::Budget);
    // Replay: run to instret 2 without attempting the wfi, then raise the line.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 2), StepExit::Budget);
    cpu.set_mip(MIP_MEIP, true);
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 6), StepExit::Budget);
    assert_eq!(cpu, rec);
    assert_eq!(cpu.reg(S4), 1);
    assert_eq!(cpu.csr(csr::MEPC), Some(RAM_BASE + 12), "after the wfi");
}

#[test]
fn wfi_is_illegal_in_user_mode_and_in_supervisor_mode_with_tw() {
    // (mode, TW, outcome): U-mode never may (S-mode exists), as on spike and QEMU.
    for (mode, tw, want) in [
        (
            Privilege::User,
            0,
            StepOutcome::Exception(Exception::IllegalInstruction),
        ),
        (
            Privilege::User,
            MSTATUS_TW,
            StepOutcome::Exception(Exception::IllegalInstruction),
        ),
        (
            Privilege::Supervisor,
            MSTATUS_TW,
            StepOutcome::Exception(Exception::IllegalInstruction),
        ),
        (Privilege::Supervisor, 0, StepOutcome::Idle),
        (Privilege::Machine, MSTATUS_TW, StepOutcome::Idle),
    ] {
        let (mut cpu, mut ram) = boot(Assembler::new().wfi());
        cpu.set_csr(csr::MSTATUS, tw).unwrap();
        cpu.set_privilege(mode);
        assert_eq!(cpu.step(&mut ram, &mut NoMmio), want, "{mode:?} tw={tw}");
    }
}
