//! Execution control: `run(until)`, instret accounting, MMIO stall/stop/fault
//! semantics, an HTIF-like host loop, snapshots, dirty tracking, and a speed check.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;

use ft_sim::asm::*;
use ft_sim::cpu::{
    csr, Cpu, Exception, Interrupt, Mmio, MmioResult, NoMmio, StepExit, StepOutcome, MIP_MEIP,
    MSTATUS_MIE,
};
use ft_sim::memory::{Ram, PAGE_SIZE, RAM_BASE};

const RAM_SIZE: usize = 1 << 20;
const DEV: u64 = 0x1000_0000;
const TOHOST: u64 = DEV + 0x100;

fn boot(a: &Assembler) -> (Cpu, Ram) {
    let code = a.finish().unwrap();
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(RAM_BASE, &code).unwrap();
    (Cpu::new(RAM_BASE), ram)
}

/// `loop: addi a0, a0, 1; j loop` plus a trap handler at +0x100 that counts traps in
/// s4, skips the faulting instruction and returns.
fn counting_loop() -> Assembler {
    let mut a = Assembler::new();
    let top = a.here();
    a.addi(A0, A0, 1).j(top);
    while a.offset() < 0x100 {
        a.nop();
    }
    a.addi(S4, S4, 1)
        .csrr(T6, csr::MEPC)
        .addi(T6, T6, 4)
        .csrw(csr::MEPC, T6)
        .mret();
    a
}

#[test]
fn run_stops_exactly_at_until() {
    let (mut cpu, mut ram) = boot(&counting_loop());
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 1001), StepExit::Budget);
    assert_eq!(cpu.instret(), 1001);
    assert_eq!(cpu.reg(A0), 501);
    assert_eq!(cpu.pc(), RAM_BASE + 4, "next: the j");
    // Piecewise runs reach the same state as one long run.
    let (mut other, mut ram2) = boot(&counting_loop());
    for until in [1, 2, 3, 10, 10, 500, 1001] {
        assert_eq!(other.run(&mut ram2, &mut NoMmio, until), StepExit::Budget);
        assert_eq!(other.instret(), until);
    }
    assert_eq!(other, cpu);
    // until below instret: nothing happens.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 5), StepExit::Budget);
    assert_eq!(cpu.instret(), 1001);
}

#[test]
fn run_with_no_budget_changes_nothing_even_with_a_pending_interrupt() {
    let (mut cpu, mut ram) = boot(&counting_loop());
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    cpu.run(&mut ram, &mut NoMmio, 10);
    cpu.set_csr(csr::MIE, MIP_MEIP).unwrap();
    cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
    cpu.set_mip(MIP_MEIP, true);
    let before = cpu.clone();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 10), StepExit::Budget);
    assert_eq!(cpu, before);
    // One more instruction of budget: the interrupt is taken first, then the
    // handler's first instruction is instruction 11.
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 11), StepExit::Budget);
    assert_eq!(cpu.instret(), 11);
    assert_eq!(cpu.csr(csr::MEPC), Some(before.pc()));
    assert_eq!(cpu.reg(S4), 1, "handler's first instruction retired");
    assert_eq!(cpu.pc(), RAM_BASE + 0x104);
}

#[test]
fn interrupt_raised_at_n_is_taken_before_instruction_n_plus_1() {
    for n in [0u64, 1, 2, 7, 100] {
        let (mut cpu, mut ram) = boot(&counting_loop());
        cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
        cpu.set_csr(csr::MIE, MIP_MEIP).unwrap();
        cpu.set_csr(csr::MSTATUS, MSTATUS_MIE).unwrap();
        assert_eq!(cpu.run(&mut ram, &mut NoMmio, n), StepExit::Budget);
        let pc_n = cpu.pc();
        let a0 = cpu.reg(A0);
        cpu.set_mip(MIP_MEIP, true);
        let o = cpu.step(&mut ram, &mut NoMmio);
        assert_eq!(o, StepOutcome::Interrupt(Interrupt::MachineExternal));
        assert_eq!(cpu.instret(), n);
        assert_eq!(cpu.csr(csr::MEPC), Some(pc_n));
        assert_eq!(cpu.reg(A0), a0);
    }
}

#[test]
fn traps_do_not_retire() {
    // Two illegal instructions skipped by the handler between counted additions.
    let mut a = Assembler::new();
    a.addi(A0, A0, 1)
        .emit(0)
        .addi(A0, A0, 1)
        .emit(0)
        .addi(A0, A0, 1)
        .ebreak();
    while a.offset() < 0x100 {
        a.nop();
    }
    a.addi(S4, S4, 1)
        .csrr(T6, csr::MEPC)
        .addi(T6, T6, 4)
        .csrw(csr::MEPC, T6)
        .mret();
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x100).unwrap();
    let mut retired = 0;
    let mut traps = 0;
    loop {
        match cpu.step(&mut ram, &mut NoMmio) {
            StepOutcome::Retired => retired += 1,
            StepOutcome::Exception(Exception::IllegalInstruction) => traps += 1,
            StepOutcome::Exception(Exception::Breakpoint) => break,
            o => panic!("{o:?}"),
        }
        assert_eq!(cpu.instret(), retired);
    }
    assert_eq!(traps, 2);
    assert_eq!(cpu.reg(A0), 3);
    // 3 addi + 2 * 5 handler instructions.
    assert_eq!(cpu.instret(), 13);
}

/// A tiny device model: a data register at DEV that stalls `stalls` times per
/// access, and a "tohost" register whose stores complete with OkStop.
#[derive(Default)]
struct TestDev {
    stalls: u32,
    pending_stalls: u32,
    value: u64,
    log: Vec<(char, u64, u8, u64)>,
    tohost: VecDeque<u64>,
    stop_on_load: bool,
}

impl Mmio for TestDev {
    fn load(&mut self, addr: u64, size: u8) -> MmioResult<u64> {
        match addr {
            DEV => {
                if self.pending_stalls > 0 {
                    self.pending_stalls -= 1;
                    return MmioResult::Stall;
                }
                self.pending_stalls = self.stalls;
                self.log.push(('r', addr, size, self.value));
                if self.stop_on_load {
                    MmioResult::OkStop(self.value)
                } else {
                    MmioResult::Ok(self.value)
                }
            }
            _ => MmioResult::Fault,
        }
    }

    fn store(&mut self, addr: u64, size: u8, value: u64) -> MmioResult<()> {
        match addr {
            DEV => {
                if self.pending_stalls > 0 {
                    self.pending_stalls -= 1;
                    return MmioResult::Stall;
                }
                self.pending_stalls = self.stalls;
                self.log.push(('w', addr, size, value));
                self.value = value;
                MmioResult::Ok(())
            }
            TOHOST => {
                self.tohost.push_back(value);
                MmioResult::OkStop(())
            }
            _ => MmioResult::Fault,
        }
    }
}

#[test]
fn mmio_stall_does_not_retire_and_is_reexecuted() {
    let mut a = Assembler::new();
    a.li(T0, DEV as i64).li(A0, 5);
    let ld_pc = RAM_BASE + a.offset();
    a.ld(A0, T0, 0).addi(A0, A0, 1).sw(A0, T0, 0).ebreak();
    let (mut cpu, mut ram) = boot(&a);
    let mut dev = TestDev {
        stalls: 2,
        pending_stalls: 2,
        value: 0x1_0000_0000,
        ..TestDev::default()
    };
    assert_eq!(cpu.run(&mut ram, &mut dev, 100), StepExit::Stall);
    let n = cpu.instret();
    let snapshot = cpu.clone();
    assert_eq!(cpu.pc(), ld_pc);
    assert_eq!(cpu.reg(A0), 5, "destination unchanged");
    assert_eq!(cpu.run(&mut ram, &mut dev, 100), StepExit::Stall);
    assert_eq!(cpu, snapshot, "a stall changes no state");
    // Third try completes.
    assert_eq!(cpu.step(&mut ram, &mut dev), StepOutcome::Retired);
    assert_eq!(cpu.instret(), n + 1);
    assert_eq!(cpu.reg(A0), 0x1_0000_0000);
    // The store stalls twice too, then completes with a sign-extended 32-bit value.
    assert_eq!(cpu.run(&mut ram, &mut dev, 100), StepExit::Stall);
    assert_eq!(cpu.instret(), n + 2);
    assert_eq!(cpu.run(&mut ram, &mut dev, 100), StepExit::Stall);
    assert_eq!(cpu.run(&mut ram, &mut dev, n + 3), StepExit::Budget);
    assert_eq!(
        dev.log,
        vec![('r', DEV, 8, 0x1_0000_0000), ('w', DEV, 4, 1)],
        "each access reached the device once"
    );
}

#[test]
fn mmio_widths_and_extension() {
    let mut a = Assembler::new();
    a.li(T0, DEV as i64)
        .li(T1, -1)
        .sb(T1, T0, 0) // device sees 0xff, size 1
        .lb(A0, T0, 0)
        .lbu(A1, T0, 0)
        .sh(T1, T0, 0)
        .lh(A2, T0, 0)
        .lhu(A3, T0, 0)
        .sw(T1, T0, 0)
        .lw(A4, T0, 0)
        .lwu(A5, T0, 0)
        .sd(T1, T0, 0)
        .ld(A6, T0, 0)
        .ebreak();
    let (mut cpu, mut ram) = boot(&a);
    let mut dev = TestDev::default();
    let o = loop {
        match cpu.step(&mut ram, &mut dev) {
            StepOutcome::Retired => {}
            o => break o,
        }
    };
    assert_eq!(o, StepOutcome::Exception(Exception::Breakpoint));
    let writes: Vec<_> = dev
        .log
        .iter()
        .filter(|e| e.0 == 'w')
        .map(|e| (e.2, e.3))
        .collect();
    assert_eq!(
        writes,
        vec![(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, u64::MAX)]
    );
    assert_eq!(cpu.reg(A0), u64::MAX);
    assert_eq!(cpu.reg(A1), 0xFF);
    assert_eq!(cpu.reg(A2), u64::MAX);
    assert_eq!(cpu.reg(A3), 0xFFFF);
    assert_eq!(cpu.reg(A4), u64::MAX);
    assert_eq!(cpu.reg(A5), 0xFFFF_FFFF);
    assert_eq!(cpu.reg(A6), u64::MAX);
}

#[test]
fn mmio_fault_is_an_access_fault() {
    let mut a = Assembler::new();
    a.li(T0, (DEV + 0x40) as i64).li(A0, 3).sd(A0, T0, 0);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_csr(csr::MTVEC, RAM_BASE + 0x800).unwrap();
    let mut dev = TestDev::default();
    let o = loop {
        match cpu.step(&mut ram, &mut dev) {
            StepOutcome::Retired => {}
            o => break o,
        }
    };
    assert_eq!(o, StepOutcome::Exception(Exception::StoreAccessFault));
    assert_eq!(cpu.csr(csr::MTVAL), Some(DEV + 0x40));
    assert_eq!(cpu.instret(), 3, "lui+addiw, li");
}

#[test]
fn mmio_stop_reports_after_retirement() {
    let mut a = Assembler::new();
    a.li(T0, TOHOST as i64).li(A0, 9);
    let store_index = a.len() as u64;
    a.sd(A0, T0, 0)
        .addi(A0, A0, 1)
        .sd(A0, T0, 0)
        .addi(A0, A0, 1);
    let (mut cpu, mut ram) = boot(&a);
    let mut dev = TestDev::default();
    assert_eq!(cpu.run(&mut ram, &mut dev, 100), StepExit::MmioStop);
    assert_eq!(cpu.instret(), store_index + 1, "the store is counted");
    assert_eq!(cpu.pc(), RAM_BASE + 4 * (store_index + 1));
    assert_eq!(dev.tohost.pop_front(), Some(9));
    // A stop on the instruction that reaches `until` is still reported as MmioStop.
    let until = store_index + 3;
    assert_eq!(cpu.run(&mut ram, &mut dev, until), StepExit::MmioStop);
    assert_eq!(cpu.instret(), until);
    assert_eq!(dev.tohost.pop_front(), Some(10));
    assert_eq!(cpu.run(&mut ram, &mut dev, until + 1), StepExit::Budget);
    assert_eq!(cpu.reg(A0), 11);

    // Loads can stop too.
    let (mut cpu, mut ram) = boot(Assembler::new().li(T0, DEV as i64).ld(A0, T0, 0));
    let mut dev = TestDev {
        value: 77,
        stop_on_load: true,
        ..TestDev::default()
    };
    assert_eq!(cpu.step(&mut ram, &mut dev), StepOutcome::Retired);
    assert_eq!(cpu.step(&mut ram, &mut dev), StepOutcome::RetiredStop);
    assert_eq!(cpu.reg(A0), 77);
    assert_eq!(cpu.instret(), 2);
}

/// An HTIF-style guest: it "prints" a NUL-terminated string through tohost, one
/// `(char << 8) | 1` command per store, waiting after each for the host to set a RAM
/// `fromhost` word, then exits with `(code << 1) | 1`. The host stops at every
/// tohost store (OkStop), handles the command and acknowledges.
fn htif_guest(msg: &str, code: i64) -> (Assembler, Label) {
    let mut a = Assembler::new();
    let data = a.label();
    let fromhost = a.label();
    let next = a.label();
    let wait = a.label();
    let done = a.label();
    a.la(S0, data).li(S1, TOHOST as i64).la(S2, fromhost);
    a.bind(next)
        .lbu(T0, S0, 0)
        .beqz(T0, done)
        .slli(T0, T0, 8)
        .ori(T0, T0, 1)
        .sd(T0, S1, 0); // stop: host prints and sets fromhost
    a.bind(wait).ld(T1, S2, 0).beqz(T1, wait).sd(ZERO, S2, 0);
    a.addi(S0, S0, 1).j(next);
    a.bind(done).li(T0, (code << 1) | 1).sd(T0, S1, 0).wfi();
    a.align(8).bind(fromhost).dword(0);
    a.bind(data);
    let mut bytes = msg.as_bytes().to_vec();
    bytes.push(0);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    for w in bytes.chunks(4) {
        a.emit(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    (a, fromhost)
}

#[test]
fn htif_like_host_loop() {
    let (a, fromhost) = htif_guest("hello, ft", 3);
    let fromhost = RAM_BASE + a.label_offset(fromhost).unwrap();
    let run = || {
        let (mut cpu, mut ram) = boot(&a);
        let mut dev = TestDev::default();
        let mut out = String::new();
        let mut stops = Vec::new();
        let mut budget = 10;
        let exit = loop {
            match cpu.run(&mut ram, &mut dev, cpu.instret() + budget) {
                StepExit::Budget => budget = budget * 2 + 1, // arbitrary slicing
                StepExit::MmioStop => {
                    stops.push(cpu.instret());
                    let cmd = dev.tohost.pop_front().unwrap();
                    if cmd >= 0x100 {
                        out.push(char::from((cmd >> 8) as u8));
                        ram.write(fromhost, &1u64.to_le_bytes()).unwrap();
                    } else {
                        break cmd >> 1;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        };
        (out, exit, stops, cpu)
    };
    let (out, exit, stops, cpu) = run();
    assert_eq!(out, "hello, ft");
    assert_eq!(exit, 3);
    assert_eq!(stops.len(), 10);
    // Fully deterministic: a second run stops at the same instret values.
    let (_, _, stops2, cpu2) = run();
    assert_eq!(stops, stops2);
    assert_eq!(cpu, cpu2);
}

#[test]
fn store_watch_stops_after_the_store_retires() {
    let tohost = RAM_BASE + 0x2000;
    let mut a = Assembler::new();
    a.li_u64(T0, tohost)
        .li(T1, 7)
        .sd(T1, T0, 8) // next word: not watched
        .sb(T1, T0, -1) // previous byte: not watched
        .sw(T1, T0, 4) // overlaps the upper half
        .addi(T1, T1, 1)
        .sd(T1, T0, 0)
        .addi(T1, T1, 1);
    let spin = a.here();
    a.j(spin);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_store_watch(Some(tohost));
    assert_eq!(cpu.store_watch(), Some(tohost));
    let exit = cpu.run(&mut ram, &mut NoMmio, 100);
    assert_eq!(exit, StepExit::Watch);
    assert_eq!(
        cpu.pc(),
        RAM_BASE + 4 * (a.len() as u64 - 4),
        "after the sw"
    );
    assert_eq!(ram.load_u32(tohost + 4).unwrap(), 7);
    let n = cpu.instret();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, n + 2), StepExit::Watch);
    assert_eq!(cpu.instret(), n + 2, "stop at until is still reported");
    assert_eq!(ram.load_u64(tohost).unwrap(), 8);
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 100), StepExit::Budget);
    // Without a watch nothing stops.
    let (mut cpu, mut ram) = boot(&a);
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 100), StepExit::Budget);
}

#[test]
fn snapshot_clone_and_serde_round_trip() {
    let (mut cpu, mut ram) = boot(&counting_loop());
    cpu.run(&mut ram, &mut NoMmio, 1234);
    let bytes = postcard::to_allocvec(&cpu).unwrap();
    let restored: Cpu = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored, cpu);
    let (mut a, mut b) = (cpu.clone(), restored);
    let (mut ra, mut rb) = (ram.clone(), ram.clone());
    a.run(&mut ra, &mut NoMmio, 5000);
    b.run(&mut rb, &mut NoMmio, 5000);
    assert_eq!(a, b);
    assert_eq!(ra.as_slice(), rb.as_slice());
    use std::hash::{DefaultHasher, Hasher};
    let (mut ha, mut hb) = (DefaultHasher::new(), DefaultHasher::new());
    a.digest_into(&mut ha);
    b.digest_into(&mut hb);
    assert_eq!(ha.finish(), hb.finish());
    let mut hc = DefaultHasher::new();
    cpu.digest_into(&mut hc);
    assert_ne!(ha.finish(), hc.finish());
}

#[test]
fn guest_stores_mark_pages_dirty() {
    let mut a = Assembler::new();
    a.li_u64(T0, RAM_BASE + 5 * PAGE_SIZE + 8)
        .sd(T0, T0, 0)
        .li_u64(T0, RAM_BASE + 9 * PAGE_SIZE)
        .sb(T0, T0, -1) // last byte of page 8
        .ld(T1, T0, 0) // loads do not dirty
        .ebreak();
    let (mut cpu, mut ram) = boot(&a);
    ram.clear_dirty();
    cpu.run(&mut ram, &mut NoMmio, 100);
    assert_eq!(ram.take_dirty_pages(), vec![5, 8]);
}

/// Speed check: `cargo test --release -p ft-sim --test cpu_exec -- --ignored --nocapture`
#[test]
#[ignore]
fn speed_mips() {
    let mut a = Assembler::new();
    a.li(T0, 1 << 40);
    let top = a.here();
    a.addi(A0, A0, 1)
        .xor(A1, A1, A0)
        .ld(A2, SP, 0)
        .sd(A1, SP, 8)
        .addi(T0, T0, -1)
        .bnez(T0, top);
    let (mut cpu, mut ram) = boot(&a);
    cpu.set_reg(SP, RAM_BASE + 0x8000);
    let n = 50_000_000;
    let t = std::time::Instant::now();
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, n), StepExit::Budget);
    let dt = t.elapsed().as_secs_f64();
    println!(
        "{n} instructions in {dt:.3} s = {:.1} MIPS",
        n as f64 / dt / 1e6
    );
}
