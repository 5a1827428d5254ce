//! KVM replication benchmark: a CPL3 workload with regular I/O, run unprotected,
//! recorded (primary engine, log drained and acknowledged at once) and replayed (backup
//! engine fed the whole log), with the ratios; and the interrupt delivery latency of
//! deterministic-exit delivery for the demo workload (the time from an event becoming
//! due until the guest's next deterministic exit, where it can be injected).
//!
//! Run: `cargo bench -p ft-kvm --bench kvm_replication` (prints a skip line without
//! `/dev/kvm`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ft_core::{Ack, AsyncEvent, Config, EventSource, Node, Record, StepOutcome, Stop, Transmit};
use ft_kvm::devices::id;
use ft_kvm::guest::UserAsm;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};
use iced_x86::code_asm::*;

const TICK: u64 = 20_000;

/// `rounds` × (a native compute loop of `iters` iterations, a clock read, an RNG read,
/// one console line of 17 bytes).
fn io_workload(rounds: u32, iters: u32) -> Vec<u8> {
    let mut u = UserAsm::new().unwrap();
    u.a.xor(r12d, r12d).unwrap();
    u.a.mov(r15, 0x1234_5678u64).unwrap();
    let mut top = u.a.create_label();
    u.a.set_label(&mut top).unwrap();
    u.a.mov(r14d, iters).unwrap();
    let mut spin = u.a.create_label();
    u.a.set_label(&mut spin).unwrap();
    u.a.imul_3(r15, r15, 0x1f3).unwrap();
    u.a.rol(r15, 7).unwrap();
    u.a.xor(r15, r14).unwrap();
    u.a.dec(r14).unwrap();
    u.a.jnz(spin).unwrap();
    u.read_clock(rax).unwrap();
    u.a.xor(r15, rax).unwrap();
    u.read_rng(rax).unwrap();
    u.a.add(r15, rax).unwrap();
    u.print_hex(r15).unwrap();
    u.a.inc(r12).unwrap();
    u.a.cmp(r12d, rounds as i32).unwrap();
    u.a.jb(top).unwrap();
    u.a.xor(eax, eax).unwrap();
    u.exit_with(rax).unwrap();
    u.finish().unwrap()
}

fn world(live: bool) -> SimWorld {
    SimWorld::new(
        if live { "primary" } else { "backup" },
        SimWorldConfig::default(),
        Disk::new(4096),
        OutputSink::new(),
        live,
    )
}

fn config() -> Config {
    Config {
        slice: 64,
        digest_interval: 200,
        max_lag: u64::MAX / 4,
        inbox_capacity: 1 << 20,
        ..Config::default()
    }
}

fn unprotected(w: &[u8]) -> Duration {
    let m = KvmMachine::with_workload(MachineConfig::default(), w.to_vec()).unwrap();
    let mut n = Node::unprotected(config(), m, world(true), 0);
    let t = Instant::now();
    let mut now = 0;
    loop {
        now += TICK;
        if let StepOutcome::Finished(_) = n.step(now).unwrap() {
            break;
        }
    }
    t.elapsed()
}

fn recorded(w: &[u8]) -> (Duration, Vec<Record>, u64) {
    let m = KvmMachine::with_workload(MachineConfig::default(), w.to_vec()).unwrap();
    let mut n = Node::primary(config(), m, world(true), 0);
    let mut log = Vec::new();
    let t = Instant::now();
    let mut now = 0;
    loop {
        now += TICK;
        let out = n.step(now).unwrap();
        while let Some(Transmit::Records(r)) = n.poll_transmit(now) {
            log.extend(r);
        }
        let last = n.last_seq();
        n.handle_ack(
            Ack {
                received: last,
                replayed: last,
            },
            now,
        )
        .unwrap();
        if let StepOutcome::Finished(_) = out {
            while let Some(Transmit::Records(r)) = n.poll_transmit(now) {
                log.extend(r);
            }
            break;
        }
    }
    let exits = n.source().point().count;
    (t.elapsed(), log, exits)
}

fn replayed(w: &[u8], log: Vec<Record>) -> Duration {
    let m = KvmMachine::with_workload(MachineConfig::default(), w.to_vec()).unwrap();
    let mut n = Node::backup(config(), m, world(false), 0);
    n.handle_records(log, 0).unwrap();
    let t = Instant::now();
    loop {
        match n.step(0).unwrap() {
            StepOutcome::Finished(_) => break,
            StepOutcome::Progressed => {}
            other => panic!("replay stopped: {other:?}"),
        }
    }
    t.elapsed()
}

/// Exit timestamps of the demo service, run directly (inputs answered, timer idles
/// woken at once).
fn delivery_latency() -> (usize, Duration, Duration, Duration) {
    let w = ft_kvm::guest::service_workload(20).unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    loop {
        let stop = m.run(m.point().plus(1)).unwrap();
        let now = Instant::now();
        let idle = matches!(stop, Stop::Idle);
        if !idle {
            gaps.push(now - last);
        }
        match stop {
            Stop::Input(_) => m.supply_input(&7u64.to_le_bytes()).unwrap(),
            Stop::IoStart(req) => m
                .inject(&AsyncEvent::IoComplete {
                    io: req.id,
                    status: 0,
                    data: None,
                })
                .unwrap(),
            Stop::Idle => m
                .inject(&AsyncEvent::Interrupt { device: id::TIMER })
                .unwrap(),
            Stop::Halted(_) => break,
            _ => {}
        }
        last = Instant::now();
    }
    // For an event due at a uniformly random moment, the wait until the next exit is
    // the residual gap: E[g^2] / (2 E[g]).
    let total: f64 = gaps.iter().map(Duration::as_secs_f64).sum();
    let sq: f64 = gaps.iter().map(|g| g.as_secs_f64().powi(2)).sum();
    let mean_wait = Duration::from_secs_f64(sq / (2.0 * total));
    let max = gaps.iter().copied().max().unwrap_or_default();
    let mut sorted = gaps.clone();
    sorted.sort();
    let median_gap = sorted[sorted.len() / 2];
    (gaps.len(), mean_wait, median_gap, max)
}

fn main() {
    if ft_kvm::probe().is_err() {
        println!("SKIP kvm_replication: no usable /dev/kvm on this host");
        return;
    }
    let (rounds, iters) = (300, 300_000);
    let w = io_workload(rounds, iters);
    let _ = unprotected(&io_workload(5, 1000)); // warm-up
    let base = unprotected(&w);
    let (rec, log, exits) = recorded(&w);
    let records = log.len();
    let rep = replayed(&w, log);
    println!("KVM replication benchmark (CPL3 workload: {rounds} rounds x [{iters}-iteration loop, clock read, RNG read, 17-byte console line]; {exits} deterministic exits)");
    println!("  unprotected   {:>9.2} ms", base.as_secs_f64() * 1e3);
    println!(
        "  recorded      {:>9.2} ms   x{:.2} of unprotected   ({records} records)",
        rec.as_secs_f64() * 1e3,
        rec.as_secs_f64() / base.as_secs_f64()
    );
    println!(
        "  replayed      {:>9.2} ms   x{:.2} of unprotected",
        rep.as_secs_f64() * 1e3,
        rep.as_secs_f64() / base.as_secs_f64()
    );
    let (n, wait, median, max) = delivery_latency();
    println!(
        "Interrupt delivery latency under deterministic-exit delivery (demo service, {n} exits):"
    );
    println!(
        "  mean wait for the next exit {:>8.1} us   median exit gap {:>8.1} us   max gap {:>8.1} us",
        wait.as_secs_f64() * 1e6,
        median.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6
    );
}
