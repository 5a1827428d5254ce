//! Helpers shared by the KVM tests.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

/// Whether KVM tests must run (`FT_REQUIRE_KVM=1`, set by `.ci/run`).
pub fn required() -> bool {
    std::env::var("FT_REQUIRE_KVM").is_ok_and(|v| v == "1")
}

/// Whether `/dev/kvm` can be used. Without it, prints a SKIP line for `test` and returns
/// false, unless KVM is required, in which case it fails the test.
pub fn kvm_or_skip(test: &str) -> bool {
    let present = Path::new("/dev/kvm").exists() && ft_kvm::probe().is_ok();
    if !present {
        assert!(
            !required(),
            "FT_REQUIRE_KVM=1 but /dev/kvm is absent or unusable ({test})"
        );
        eprintln!("SKIP {test}: no usable /dev/kvm on this host");
    }
    present
}

use ft_core::{AsyncEvent, Config, Nanos, Node};
use ft_kvm::devices::id;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use ft_kvm::pair::LocalPair;
use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};

/// Virtual time per pair step.
pub const TICK: Nanos = 20_000;

/// Engine configuration for KVM pairs: short slices (points are exits), frequent digests.
pub fn engine_config() -> Config {
    Config {
        slice: 4,
        digest_interval: 25,
        heartbeat_interval: 1_000_000,
        peer_timeout: 4_000_000,
        batch_delay: 40_000,
        max_lag: 1_000_000_000,
        ..Config::default()
    }
}

/// A KVM pair running `workload` on two fresh VMs, with seeded worlds, a shared disk and
/// a shared output sink; `interrupts` are timer interrupts the primary's world raises
/// at those virtual times.
pub fn kvm_pair(
    workload: &[u8],
    seed: u64,
    interrupts: &[Nanos],
) -> (LocalPair<KvmMachine, SimWorld>, OutputSink) {
    let mcfg = MachineConfig::default();
    let pm = KvmMachine::with_workload(mcfg, workload.to_vec()).expect("primary VM");
    let bm = KvmMachine::with_workload(mcfg, workload.to_vec()).expect("backup VM");
    kvm_pair_of(pm, bm, seed, interrupts)
}

/// A pair over two machines the caller built alike (as [`kvm_pair`] does otherwise).
pub fn kvm_pair_of(
    pm: KvmMachine,
    bm: KvmMachine,
    seed: u64,
    interrupts: &[Nanos],
) -> (LocalPair<KvmMachine, SimWorld>, OutputSink) {
    let (pw, bw, sink) = worlds(seed, interrupts);
    let mut pc = engine_config();
    pc.node = ft_core::NodeId(1);
    let mut bc = engine_config();
    bc.node = ft_core::NodeId(2);
    let pair = LocalPair::new(
        Node::primary(pc, pm, pw, 0),
        Node::backup(bc, bm, bw, 0),
        TICK,
    );
    (pair, sink)
}

/// A primary's and a backup's seeded worlds on one shared disk and one output sink;
/// the primary's raises timer interrupts at the virtual times `interrupts`.
pub fn worlds(seed: u64, interrupts: &[Nanos]) -> (SimWorld, SimWorld, OutputSink) {
    let sink = OutputSink::new();
    let disk = Disk::new(64 * 1024);
    let wcfg = SimWorldConfig {
        seed,
        disk_latency: 100_000,
        ..SimWorldConfig::default()
    };
    let mut pw = SimWorld::new("primary", wcfg.clone(), disk.clone(), sink.clone(), true);
    for t in interrupts {
        pw.schedule_event(*t, AsyncEvent::Interrupt { device: id::TIMER });
    }
    let mut bcfg = wcfg;
    bcfg.seed = seed ^ 0x5555;
    let bw = SimWorld::new("backup", bcfg, disk, sink.clone(), false);
    (pw, bw, sink)
}

/// The outputs the primary released, as text.
pub fn released(sink: &OutputSink, side: &str) -> Vec<String> {
    sink.all()
        .into_iter()
        .filter(|e| e.side == side)
        .map(|e| String::from_utf8_lossy(&e.output.data).into_owned())
        .collect()
}
