//! Live-clone cost on the sim machine, in-process: a 256 MiB guest that keeps writing
//! a working set of 0, 1 and 8 MiB is cloned from a live machine into a fresh one, the
//! clone's frames encoded and decoded with the real log codec but handed across in the
//! same thread (no socket: this measures the engine and the machine, not a network).
//!
//! One line per working set:
//! `clone-inproc: mem_mib=256 ws_mib=W rounds=R pages=P bytes=B total_ms=T pause_ms=Q digest_ms=D`
//! where `pause_ms` is the wall time of the machine step that holds the final pause
//! (the guest runs no instruction during it) and `digest_ms` the part of it spent on
//! the whole-machine digest.
//!
//! Run: `cargo bench -p ft-sim --bench clone`
//!
//! Not yet measured: the same over loopback TCP, and QEMU's migration beside it (see
//! the redundancy issue); those lines need clone frames over the TCP link.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Instant;

use ft_core::log_codec::{self, Frame};
use ft_core::{CloneConfig, Config, EventSource, Node, NodeId, Notice, PairId, Transmit};
use ft_sim::{guests, Disk, Machine, MachineConfig, OutputSink, SimWorld, SimWorldConfig};

const MEM: usize = 256 << 20;

fn machine(ws: u64) -> Machine {
    let cfg = MachineConfig {
        ram_size: MEM,
        ..MachineConfig::default()
    };
    Machine::from_raw(cfg, &guests::dirtier(ws, 0, 0).unwrap()).unwrap()
}

fn world(live: bool) -> SimWorld {
    SimWorld::new(
        "bench",
        SimWorldConfig::default(),
        Disk::new(4096),
        OutputSink::new(),
        live,
    )
}

fn carry(t: Transmit) -> Frame {
    let Transmit::Clone(m) = t else {
        panic!("only clone frames are expected here")
    };
    let mut b = Vec::new();
    log_codec::encode_clone(&m, &mut b).unwrap();
    log_codec::decode_frame(&b).unwrap()
}

fn one(ws_mib: u64) {
    let ws = ws_mib << 20;
    let cfg = Config {
        slice: 20_000,
        digest_interval: 0,
        ..Config::default()
    };
    let mut s = Node::unprotected(cfg.clone(), machine(ws), world(true), 0);
    let rcfg = Config {
        node: NodeId(2),
        ..cfg
    };
    let mut r = Node::clone_target(rcfg, machine(ws), world(false), 0);
    // Let the guest get going.
    for _ in 0..200 {
        s.step(0).unwrap();
    }
    let pair = PairId {
        vm: 1,
        generation: 2,
    };
    let start = Instant::now();
    s.start_clone(pair, CloneConfig::default(), 0).unwrap();
    let mut pause = None;
    let mut digest_ms = 0.0;
    let mut summary = None;
    let mut done = false;
    let mut now = 0u64;
    while !done {
        now += 1_000;
        let final_due = s.cloning();
        let t0 = Instant::now();
        s.step(now).unwrap();
        let step_ms = t0.elapsed().as_secs_f64() * 1e3;
        while let Some((_, n)) = s.poll_notice() {
            match n {
                Notice::ClonePaused {
                    rounds,
                    pages,
                    bytes,
                    ..
                } if final_due => {
                    pause = Some(step_ms);
                    summary = Some((rounds, pages, bytes));
                    // The digest part of the pause, measured apart on the same state.
                    let t1 = Instant::now();
                    std::hint::black_box(s.source_mut().digest());
                    digest_ms = t1.elapsed().as_secs_f64() * 1e3;
                }
                Notice::CloneComplete { .. } => done = true,
                Notice::CloneAborted { reason } => panic!("clone abandoned: {reason}"),
                _ => {}
            }
        }
        while let Some(t) = s.poll_transmit(now) {
            if let Frame::Clone(m) = carry(t) {
                r.handle_clone(m, now).unwrap();
            }
        }
        while let Some(t) = r.poll_transmit(now) {
            if let Transmit::Clone(m) = t {
                s.handle_clone(m, now).unwrap();
            }
        }
    }
    let total = start.elapsed().as_secs_f64() * 1e3;
    let (rounds, pages, bytes) = summary.unwrap();
    println!(
        "clone-inproc: mem_mib=256 ws_mib={ws_mib} rounds={rounds} pages={pages} bytes={bytes} total_ms={total:.1} pause_ms={:.2} digest_ms={digest_ms:.2}",
        pause.unwrap()
    );
}

fn main() {
    for ws in [0, 1, 8] {
        one(ws);
    }
}
