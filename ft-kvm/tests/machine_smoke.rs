//! The KVM machine on its own (no engine): boot, devices, interrupts, exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{AsyncEvent, EventSource, ExecPoint, Stop};
use ft_kvm::devices::id;
use ft_kvm::guest::UserAsm;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use iced_x86::code_asm::*;

/// Run until the guest halts, answering inputs with `input`, collecting outputs.
fn drive(m: &mut KvmMachine, input: u64, max_exits: u64) -> (Vec<String>, Option<u64>) {
    let mut out = Vec::new();
    loop {
        let target = m.point().plus(1000);
        match m.run(target).unwrap() {
            Stop::Reached => {}
            Stop::Input(_) => m.supply_input(&input.to_le_bytes()).unwrap(),
            Stop::Output(o) => out.push(String::from_utf8_lossy(&o.data).into_owned()),
            Stop::IoStart(_) => {}
            Stop::Idle => {
                m.inject(&AsyncEvent::Interrupt { device: id::TIMER })
                    .unwrap();
            }
            Stop::Halted(c) => return (out, Some(c)),
        }
        if m.point().count > max_exits {
            return (out, None);
        }
    }
}

#[test]
fn boots_prints_reads_inputs_and_exits() {
    if !common::kvm_or_skip("boots_prints_reads_inputs_and_exits") {
        return;
    }
    let mut u = UserAsm::new().unwrap();
    u.print(b"hello\n").unwrap();
    u.read_clock(rax).unwrap();
    u.a.mov(r15, rax).unwrap();
    u.print_hex(r15).unwrap();
    u.a.mov(eax, 7).unwrap();
    u.exit_with(rax).unwrap();
    let w = u.finish().unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    let t = std::time::Instant::now();
    let (out, code) = drive(&mut m, 0x1234_5678_9abc_def0, 10_000);
    eprintln!(
        "outputs {out:?} code {code:?} point {} stats {:?} in {:?}",
        m.point(),
        m.stats(),
        t.elapsed()
    );
    assert_eq!(code, Some(7));
    assert_eq!(out[0], "ft-kvm kernel: up\n");
    assert_eq!(out[1], "hello\n");
    assert_eq!(out[2], "123456789abcdef0\n");
    let _ = ExecPoint::ZERO;
}

#[test]
fn sleeps_wake_on_injected_timer_interrupts() {
    if !common::kvm_or_skip("sleeps_wake_on_injected_timer_interrupts") {
        return;
    }
    let mut u = UserAsm::new().unwrap();
    for _ in 0..3 {
        u.sleep(1000).unwrap();
        u.sys_ticks().unwrap();
        u.print_hex(rax).unwrap();
    }
    u.a.mov(rax, qword_ptr(ft_kvm::arch::x86_64::kdata::IRQ_ACC))
        .unwrap();
    u.print_hex(rax).unwrap();
    u.a.xor(eax, eax).unwrap();
    u.exit_with(rax).unwrap();
    let w = u.finish().unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    let (out, code) = drive(&mut m, 0, 10_000);
    eprintln!(
        "outputs {out:?} code {code:?} point {} stats {:?}",
        m.point(),
        m.stats()
    );
    let fi = ft_kvm::arch::x86_64::kdata::FAULT_INFO;
    let mem = m.vm().memory();
    eprintln!(
        "fault info {:#x} {:#x} {:#x} {:#x}",
        mem.read_u64(fi).unwrap(),
        mem.read_u64(fi + 24).unwrap(),
        mem.read_u64(fi + 8).unwrap(),
        mem.read_u64(fi + 16).unwrap()
    );
    assert_eq!(code, Some(0));
    assert_eq!(out[1], "0000000000000001\n");
    assert_eq!(out[3], "0000000000000003\n");
    assert_eq!(m.stats().injections, 3);
}

/// The CI flake of the KVM redundancy tests ("at @X001 the machine went idle"): a timer
/// completion raised while the guest was in its network handler (IF clear) reached the
/// guest's next deterministic exit, its idle `hlt`. The machine returned `Stop::Idle`
/// there and injected only on the next `run`: the recorder, which runs again after an
/// idle step, went on; the replayer reported a divergence. `Stop::Idle` promises a point
/// that stays put until an event is injected, so the `hlt` must take the pending line.
#[test]
fn a_line_raised_while_interrupts_are_off_is_taken_by_the_next_hlt() {
    if !common::kvm_or_skip("a_line_raised_while_interrupts_are_off_is_taken_by_the_next_hlt") {
        return;
    }
    let mut u = UserAsm::new().unwrap();
    u.sleep(1_000_000).unwrap();
    u.sys_ticks().unwrap();
    u.print_hex(rax).unwrap();
    u.a.xor(eax, eax).unwrap();
    u.exit_with(rax).unwrap();
    let w = u.finish().unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    // To the timer's arming, skipping the kernel's banner.
    let timer = loop {
        let target = m.point().plus(1000);
        match m.run(target).unwrap() {
            Stop::IoStart(req) => break req,
            Stop::Output(_) | Stop::Reached => {}
            other => panic!("before the timer was armed: {other:?}"),
        }
    };
    // A packet now: the vCPU takes the network interrupt at once, and its handler's
    // acknowledgement is the next deterministic exit, with IF clear.
    m.inject(&AsyncEvent::DeviceInput {
        device: id::NET,
        data: bytes::Bytes::from_static(b"ping"),
    })
    .unwrap();
    let ack = m.point().plus(1);
    assert_eq!(m.run(ack).unwrap(), Stop::Reached);
    let injected = m.stats().injections;
    assert_eq!(
        injected, 1,
        "the network interrupt is taken at the arming exit"
    );
    // The timer completes while the handler runs: the line cannot be taken here. No
    // exit comes between the handler's return and the idle call's `hlt`.
    m.inject(&AsyncEvent::IoComplete {
        io: timer.id,
        status: 0,
        data: None,
    })
    .unwrap();
    let target = m.point().plus(1000);
    let stop = m.run(target).unwrap();
    assert_ne!(
        stop,
        Stop::Idle,
        "the guest halted with a deliverable timer line pending at {}",
        m.point()
    );
    assert_eq!(m.stats().injections, 2, "the hlt takes the timer interrupt");
    let (out, code) = drive(&mut m, 0, 10_000);
    assert_eq!(code, Some(0));
    let ticks: Vec<String> = std::iter::once(stop)
        .filter_map(|s| match s {
            Stop::Output(o) => Some(String::from_utf8_lossy(&o.data).into_owned()),
            _ => None,
        })
        .chain(out)
        .collect();
    assert_eq!(ticks[0], "0000000000000001\n", "one tick: {ticks:?}");
}
