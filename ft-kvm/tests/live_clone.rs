//! Live clone on KVM: a VM that runs alone is cloned into a fresh VM while it keeps
//! running (KVM's dirty log for the guest's writes, the machine's own bitmap for device
//! DMA), the clone replays it with digests checked, and a failover after the clone
//! works: the clone goes live and the guest runs to its end, every output exactly once
//! after dedupe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::driver::{Driver, DriverConfig, Immediate, NoLink, Turn, VirtualWire, WireConfig};
use ft_core::{
    CloneConfig, Config, EventSource, InProcessArbiter, MemoryLayout, Nanos, Node, NodeId, Notice,
    PairId, Phase,
};
use ft_kvm::guest::{random_workload, service_workload, WorkloadParams};
use ft_kvm::machine::{KvmMachine, MachineConfig};
use ft_sim::world::{Disk, OutputSink, SimWorld, SimWorldConfig};

const TICK: Nanos = common::TICK;

fn cfg(node: u64, generation: u64) -> Config {
    Config {
        node: NodeId(node),
        pair: PairId { vm: 3, generation },
        ..common::engine_config()
    }
}

type KvmNode = Node<KvmMachine, SimWorld>;

/// What the clone's sender and receiver said.
#[derive(Default)]
struct Heard {
    sender: Vec<Notice>,
    receiver: Vec<Notice>,
}

fn drain(node: &mut KvmNode, into: &mut Vec<Notice>) {
    while let Some((_, n)) = node.poll_notice() {
        into.push(n);
    }
}

/// Run `workload` alone, clone it into a fresh VM, run the pair, kill the original,
/// and run the clone to the guest's end; pre-copy reads `pages_per_step` pages a step.
/// Returns the deduplicated outputs as text, and whether the clone replayed far enough
/// to check digests; or `None` for a guest that ended before the final pause (the clone
/// is then abandoned, which is checked).
fn clone_then_fail_over(
    workload: &[u8],
    seed: u64,
    alone_turns: u64,
    pair_turns: u64,
    pages_per_step: u64,
) -> Option<(Vec<String>, bool)> {
    let mcfg = MachineConfig::default();
    let timer: Vec<Nanos> = (1..200u64).map(|i| i * 300_000).collect();
    let (pw, bw, sink) = common::worlds(seed, &timer);
    let arbiter = InProcessArbiter::new();
    let (mut pa, mut ba) = (Immediate::new(&arbiter), Immediate::new(&arbiter));
    let pm = KvmMachine::with_workload(mcfg, workload.to_vec()).expect("VM");
    let mut p = Node::unprotected(cfg(1, 1), pm, pw, 0);
    let mut pd = Driver::new(DriverConfig::default());
    let mut now = 0;
    let mut heard = Heard::default();

    // Alone.
    for _ in 0..alone_turns {
        now += TICK;
        pd.turn(&mut p, &now, &mut NoLink, &mut pa);
        drain(&mut p, &mut heard.sender);
    }
    assert!(p.is_live() && p.exit_code().is_none(), "{:?}", p.phase());
    let layout = p.source().memory_layout().unwrap();
    assert_eq!(
        layout,
        MemoryLayout {
            page_size: 4096,
            pages: (mcfg.mem_size / 4096) as u64
        }
    );

    // The clone, over a virtual wire, both sides turned by their own driver.
    let fresh = KvmMachine::with_workload(mcfg, workload.to_vec()).expect("VM");
    let mut b = Node::clone_target(cfg(2, 2), fresh, bw, now);
    p.start_clone(
        PairId {
            vm: 3,
            generation: 2,
        },
        CloneConfig {
            chunk_pages: 16,
            converge_pages: 4,
            max_rounds: 8,
            pages_per_step,
            ..CloneConfig::default()
        },
        now,
    )
    .unwrap();
    let mut wire = VirtualWire::new(WireConfig::default());
    let (mut pd, mut bd) = (
        Driver::new(DriverConfig::default()),
        Driver::new(DriverConfig::default()),
    );
    let turn = |pd: &mut Driver,
                bd: &mut Driver,
                p: &mut KvmNode,
                b: &mut KvmNode,
                wire: &mut VirtualWire,
                now: Nanos,
                pa: &mut Immediate<&InProcessArbiter>,
                ba: &mut Immediate<&InProcessArbiter>| {
        pd.turn(p, &now, &mut wire.primary_end(now), pa);
        bd.turn(b, &now, &mut wire.backup_end(now), ba);
        for (side, d) in [("sender", pd), ("receiver", bd)] {
            let errors = d.take_errors();
            assert!(errors.is_empty(), "{side}: {errors:?}");
        }
    };
    let mut complete = false;
    for _ in 0..200_000 {
        now += TICK;
        turn(
            &mut pd, &mut bd, &mut p, &mut b, &mut wire, now, &mut pa, &mut ba,
        );
        drain(&mut p, &mut heard.sender);
        drain(&mut b, &mut heard.receiver);
        if heard
            .sender
            .iter()
            .any(|n| matches!(n, Notice::CloneComplete { .. }))
        {
            complete = true;
            break;
        }
        let aborted = heard.sender.iter().find_map(|n| match n {
            Notice::CloneAborted { reason } => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = aborted {
            // Only a guest that ended may end a clone here, and then it is abandoned:
            // the original finished alone, the clone never serves.
            assert_eq!(
                reason, "the guest ended",
                "{:?} / {:?}",
                heard.sender, heard.receiver
            );
            assert_eq!(p.exit_code(), Some(0));
            assert!(!b.is_live());
            eprintln!("seed {seed}: the guest ended during its clone, which was abandoned");
            return None;
        }
    }
    assert!(complete, "{:?} / {:?}", heard.sender, heard.receiver);
    let (point, digest, rounds) = heard
        .sender
        .iter()
        .find_map(|n| match n {
            Notice::ClonePaused {
                point,
                digest,
                rounds,
                ..
            } => Some((*point, *digest, *rounds)),
            _ => None,
        })
        .unwrap();
    assert!(heard.receiver.iter().any(|n| matches!(
        n,
        Notice::CloneReceived { point: q, digest: d, .. } if *q == point && *d == digest
    )));
    eprintln!("seed {seed}: cloned at {point} after {rounds} rounds, digest {digest:#x}");

    // The pair runs: the clone replays the original, digests checked.
    for _ in 0..pair_turns {
        now += TICK;
        turn(
            &mut pd, &mut bd, &mut p, &mut b, &mut wire, now, &mut pa, &mut ba,
        );
        if p.exit_code().is_some() {
            break;
        }
    }
    assert_eq!(
        *p.phase(),
        Phase::Recording,
        "the original records for its clone"
    );
    assert_eq!(p.config().pair.generation, 2);
    // A clone that replayed past two digest points checked at least one (a guest that
    // ends just after its clone point may not get that far).
    let interval = common::engine_config().digest_interval;
    let replayed_far = b.source().point().count >= point.count + 2 * interval;
    assert!(
        !replayed_far || b.stats().digests_checked > 0,
        "the clone replayed from {point} to {} without checking a digest: {:?}",
        b.source().point(),
        b.stats()
    );

    // kill -9 the original: it is never turned again, and the clone takes over.
    wire.cut(true, true);
    let mut live_at = None;
    for _ in 0..2_000_000 {
        now += TICK;
        let t = bd.turn(&mut b, &now, &mut wire.backup_end(now), &mut ba);
        drain(&mut b, &mut heard.receiver);
        if live_at.is_none() && b.is_live() {
            live_at = Some(b.source().point());
        }
        if matches!(t, Turn::Done(_)) {
            break;
        }
    }
    assert!(
        live_at.is_some(),
        "the clone never went live: {:?}",
        b.phase()
    );
    assert_eq!(b.exit_code(), Some(0), "{:?}", b.phase());
    let text = sink
        .deduplicated()
        .expect("outputs consistent after dedupe")
        .iter()
        .map(|o| String::from_utf8_lossy(&o.data).into_owned())
        .collect();
    Some((text, replayed_far))
}

#[test]
fn a_running_vm_is_cloned_into_a_fresh_vm_and_the_clone_takes_over() {
    if !common::kvm_or_skip("a_running_vm_is_cloned_into_a_fresh_vm_and_the_clone_takes_over") {
        return;
    }
    let rounds = 30;
    let w = service_workload(rounds).unwrap();
    // A small page budget: the rounds go across in several steps, the guest running
    // between.
    let (text, checked) = clone_then_fail_over(&w, 31, 400, 400, 64).expect("the clone completes");
    assert!(checked, "the pair ran long enough to check digests");
    let lines: Vec<&String> = text.iter().filter(|l| l.starts_with("round ")).collect();
    assert_eq!(lines.len(), rounds as usize, "{text:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(**l, format!("round {i:016x}\n"), "rounds out of order");
    }
    assert!(text.last().is_some_and(|l| l.starts_with("ticks ")));
}

#[test]
fn a_vm_doing_block_io_is_cloned_and_its_clone_finishes_it() {
    if !common::kvm_or_skip("a_vm_doing_block_io_is_cloned_and_its_clone_finishes_it") {
        return;
    }
    // FT_SEED_BASE moves the workloads (and the worlds' inputs) to fresh seeds.
    let base = std::env::var("FT_SEED_BASE")
        .ok()
        .and_then(|v| match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        })
        .unwrap_or(5);
    for seed in [base, base.wrapping_add(1), base.wrapping_add(2)] {
        eprintln!("seed {seed} (rerun with FT_SEED_BASE={seed})");
        let w = random_workload(seed, &WorkloadParams::default()).unwrap();
        let Some((text, _)) = clone_then_fail_over(&w, seed, 10, 10, 4_096) else {
            continue;
        };
        assert!(!text.is_empty(), "seed {seed}: the guest printed nothing");
    }
}

#[test]
fn a_clone_into_a_vm_of_another_size_is_refused_and_the_original_runs_on() {
    if !common::kvm_or_skip("a_clone_into_a_vm_of_another_size_is_refused_and_the_original_runs_on")
    {
        return;
    }
    let w = service_workload(10).unwrap();
    let mcfg = MachineConfig::default();
    let sink = OutputSink::new();
    let disk = Disk::new(64 * 1024);
    let pw = SimWorld::new(
        "primary",
        SimWorldConfig::default(),
        disk.clone(),
        sink.clone(),
        true,
    );
    let bw = SimWorld::new("backup", SimWorldConfig::default(), disk, sink, false);
    let mut p = Node::unprotected(
        cfg(1, 1),
        KvmMachine::with_workload(mcfg, w.clone()).unwrap(),
        pw,
        0,
    );
    let bigger = MachineConfig {
        mem_size: mcfg.mem_size * 2,
        ..mcfg
    };
    let mut b = Node::clone_target(
        cfg(2, 2),
        KvmMachine::with_workload(bigger, w).unwrap(),
        bw,
        0,
    );
    p.start_clone(
        PairId {
            vm: 3,
            generation: 2,
        },
        CloneConfig::default(),
        0,
    )
    .unwrap();
    let arbiter = InProcessArbiter::new();
    let (mut pa, mut ba) = (Immediate::new(&arbiter), Immediate::new(&arbiter));
    let mut wire = VirtualWire::new(WireConfig::default());
    let (mut pd, mut bd) = (
        Driver::new(DriverConfig::default()),
        Driver::new(DriverConfig::default()),
    );
    let mut now = 0;
    let mut heard = Vec::new();
    while !heard
        .iter()
        .any(|n| matches!(n, Notice::CloneAborted { .. }))
    {
        assert!(now < 1_000_000_000, "the sender never gave up: {heard:?}");
        now += TICK;
        pd.turn(&mut p, &now, &mut wire.primary_end(now), &mut pa);
        bd.turn(&mut b, &now, &mut wire.backup_end(now), &mut ba);
        drain(&mut p, &mut heard);
    }
    assert!(b.is_halted());
    // The original goes on alone to the guest's end.
    for _ in 0..2_000_000 {
        now += TICK;
        if matches!(pd.turn(&mut p, &now, &mut NoLink, &mut pa), Turn::Done(_)) {
            break;
        }
    }
    assert_eq!(p.exit_code(), Some(0));
    assert_eq!(p.config().pair.generation, 1);
}

#[test]
fn the_dirty_log_has_the_guests_writes_and_the_hosts() {
    if !common::kvm_or_skip("the_dirty_log_has_the_guests_writes_and_the_hosts") {
        return;
    }
    let w = service_workload(10).unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    m.start_dirty_log().unwrap();
    let mut dirty = Vec::new();
    m.take_dirty_pages(&mut dirty).unwrap();
    assert!(dirty.is_empty(), "a log starts clean: {dirty:?}");
    // A host write (device DMA goes the same way, through guest memory's `write`).
    m.write_page(300, &[0xa5; 4096]).unwrap();
    // Guest writes: its stack and data, as it runs.
    for _ in 0..20 {
        if !matches!(m.run(m.point().plus(1)).unwrap(), ft_core::Stop::Reached) {
            break;
        }
    }
    m.take_dirty_pages(&mut dirty).unwrap();
    assert!(dirty.contains(&300), "the host's write: {dirty:?}");
    assert!(
        dirty.iter().any(|&p| p != 300),
        "the guest's writes: {dirty:?}"
    );
    assert!(dirty.windows(2).all(|w| w[0] < w[1]), "in order: {dirty:?}");
    let mut again = Vec::new();
    m.take_dirty_pages(&mut again).unwrap();
    assert!(!again.contains(&300), "taken means cleared");
    let mut page = vec![0; 4096];
    m.read_page(300, &mut page).unwrap();
    assert_eq!(page, vec![0xa5; 4096]);
    assert!(m.read_page(1 << 40, &mut page).is_err());
    assert!(m.write_page(0, &[0; 10]).is_err());
    m.stop_dirty_log();
    // CPU and device state alone round-trips, and refuses memory or another shape.
    let st = m.save_cpu_devices().unwrap();
    let w = service_workload(10).unwrap();
    let mut other = KvmMachine::with_workload(MachineConfig::default(), w.clone()).unwrap();
    other.load_cpu_devices(&st).unwrap();
    assert_eq!(other.point(), m.point());
    let snap = m.snapshot().unwrap();
    assert!(
        other.load_cpu_devices(&snap).is_err(),
        "a full snapshot is not CPU state"
    );
    let mut bigger = KvmMachine::with_workload(
        MachineConfig {
            mem_size: MachineConfig::default().mem_size * 2,
            ..MachineConfig::default()
        },
        w,
    )
    .unwrap();
    assert!(bigger.load_cpu_devices(&st).is_err());
}
