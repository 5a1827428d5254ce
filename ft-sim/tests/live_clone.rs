//! Live clone on the sim machine: a busy guest cloned in several rounds while it
//! runs, and every way a clone can go wrong (a receiver of another shape, a sender or
//! a receiver that dies half-way, a copy that is not exact, requests that do not fit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use ft_core::driver::{Driver, DriverConfig, Immediate, VirtualWire, WireConfig};
use ft_core::live_clone::PageData;
use ft_core::{
    AsyncEvent, CloneConfig, CloneError, CloneMsg, Config, EngineError, EventSource, ExecPoint,
    HaltReason, InProcessArbiter, MemoryLayout, Node, NodeId, Notice, PairId, Phase, SourceResult,
    Stop, Transmit,
};
use ft_sim::guests::{self, DIRTY_BASE};
use ft_sim::{
    ChainError, ChainSim, Disk, Machine, MachineConfig, OutputSink, PairConfig, SimWorld,
};

const RAM: usize = 2 << 20;

fn dirtier(ws_pages: u64) -> Machine {
    let img = guests::dirtier(ws_pages * 4096, 0, 40).unwrap();
    let cfg = MachineConfig {
        ram_size: RAM,
        ..MachineConfig::default()
    };
    assert!(DIRTY_BASE + ws_pages * 4096 <= ft_sim::memory::RAM_BASE + RAM as u64);
    Machine::from_raw(cfg, &img).unwrap()
}

fn notices(sim: &ChainSim, id: NodeId) -> Vec<Notice> {
    sim.trace()
        .notices
        .iter()
        .filter(|(_, i, _)| *i == id)
        .map(|(_, _, n)| n.clone())
        .collect()
}

fn has(sim: &ChainSim, id: NodeId, f: impl Fn(&Notice) -> bool) -> bool {
    sim.trace().notices.iter().any(|(_, i, n)| *i == id && f(n))
}

/// A world of its own named `name`, with a small private disk; `live` for a side that
/// serves.
fn world(name: &'static str, live: bool) -> SimWorld {
    SimWorld::new(
        name,
        Default::default(),
        Disk::new(4096),
        OutputSink::new(),
        live,
    )
}

/// `m` running alone, unprotected (default configuration), with a world of its own.
fn alone(m: Machine) -> Node<Machine, SimWorld> {
    Node::unprotected(Config::default(), m, world("s", true), 0)
}

/// The letters the dirtier prints go a, b, ... p, a, ... with none missing.
fn assert_letters_continuous(sink: &OutputSink) -> usize {
    guests::check_dirtier_letters(&sink.deduplicated().unwrap()).unwrap()
}

#[test]
fn a_busy_guest_is_cloned_in_rounds_and_its_clone_replays_it_exactly_then_takes_over() {
    // Every round resends what the guest wrote (deferral off: see
    // `pages_the_guest_keeps_writing_cross_once_with_deferral`).
    let clone = CloneConfig {
        chunk_pages: 16,
        converge_pages: 4,
        max_rounds: 6,
        defer_dirty: false,
        ..CloneConfig::default()
    };
    let mut sim = ChainSim::alone(PairConfig::default(), clone, dirtier(48));
    sim.run_until(300, |_| false);
    let before = sim.sink().all().len();
    assert!(before > 0, "the guest runs and prints alone");
    let t = sim.start_clone(NodeId(1)).unwrap();
    assert!(sim.run_until(100_000, |s| has(s, t, |n| matches!(
        n,
        Notice::CloneReceived { .. }
    ))));
    let sent = notices(&sim, NodeId(1));
    let rounds: Vec<u64> = sent
        .iter()
        .filter_map(|n| match n {
            Notice::CloneRound { dirty, .. } => Some(*dirty),
            _ => None,
        })
        .collect();
    assert!(
        rounds.len() >= 2 && rounds.iter().all(|&d| d >= 48),
        "the guest dirtied its working set during every round: {rounds:?}"
    );
    let (point, digest, pages) = sent
        .iter()
        .find_map(|n| match n {
            Notice::ClonePaused {
                point,
                digest,
                pages,
                final_pages,
                rounds: r,
                ..
            } => {
                assert_eq!(*r as usize, rounds.len() + 1);
                assert!(*final_pages >= 48, "the last dirty set goes in the pause");
                Some((*point, *digest, *pages))
            }
            _ => None,
        })
        .unwrap();
    assert!(
        pages >= 512 + 48 * rounds.len() as u64,
        "{pages} pages sent"
    );
    assert!(has(
        &sim,
        t,
        |n| matches!(n, Notice::CloneReceived { point: p, digest: d, .. } if *p == point && *d == digest)
    ));
    // The clone replays the guest behind the primary, digests checked on the way.
    assert!(sim.run_until(100_000, |s| s
        .member(t)
        .unwrap()
        .node
        .stats()
        .digests_checked
        >= 3));
    assert!(has(
        &sim,
        NodeId(1),
        |n| matches!(n, Notice::CloneComplete { digest: d } if *d == digest)
    ));
    assert_eq!(
        *sim.member(NodeId(1)).unwrap().node.phase(),
        Phase::Recording
    );
    assert_eq!(
        sim.member(NodeId(1)).unwrap().node.config().pair.generation,
        2
    );
    assert_eq!(sim.member(t).unwrap().node.config().pair.generation, 2);
    // The original dies; the clone takes over, and the guest's output goes on.
    let printed = sim.sink().all().len();
    sim.crash(NodeId(1)).unwrap();
    assert!(sim.run_until(100_000, |s| s.live_members() == vec![t]));
    sim.run_until(2_000, |_| false);
    assert!(sim.sink().all().iter().any(|e| e.side == "m2"));
    assert!(sim.sink().all().len() > printed);
    assert!(sim.trace().errors.is_empty(), "{:?}", sim.trace().errors);
    assert_letters_continuous(sim.sink());
    // Its memory is the guest's: the working set holds this pass's values.
    let ram = sim.member(t).unwrap().node.source().ram();
    let first = ram.load_u64(DIRTY_BASE).unwrap();
    assert_ne!(first, 0);
}

#[test]
fn a_receiver_of_another_shape_refuses_and_the_sender_goes_on_alone_then_clones() {
    let mut sim = ChainSim::alone(PairConfig::default(), CloneConfig::default(), dirtier(4));
    sim.run_until(100, |_| false);
    let small =
        Machine::from_raw(MachineConfig::default(), &guests::dirtier(0, 0, 0).unwrap()).unwrap();
    let t = sim.start_clone_into(NodeId(1), small).unwrap();
    assert!(sim.run_until(10_000, |s| s.member(t).unwrap().node.is_halted()));
    match sim.member(t).unwrap().node.phase() {
        Phase::Halted(HaltReason::CloneFailed(r)) => {
            assert!(r.contains("memory layout mismatch"), "{r}")
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.run_until(10_000, |s| has(s, NodeId(1), |n| matches!(n, Notice::CloneAborted { reason } if reason.contains("memory layout mismatch")))));
    let m1 = &sim.member(NodeId(1)).unwrap().node;
    assert!(m1.is_live() && !m1.cloning());
    // Unharmed: it goes on printing, and a second clone works.
    let printed = sim.sink().all().len();
    sim.run_until(500, |_| false);
    assert!(sim.sink().all().len() > printed);
    let t2 = sim.start_clone(NodeId(1)).unwrap();
    assert!(sim.run_until(100_000, |s| has(s, t2, |n| matches!(
        n,
        Notice::CloneReceived { .. }
    ))));
    assert_eq!(sim.serving(), Some(NodeId(1)));
    assert!(
        sim.live_members().is_empty(),
        "a primary with a backup is not alone"
    );
}

#[test]
fn a_sender_that_dies_before_its_final_pause_leaves_a_clone_that_never_goes_live() {
    // A working set that never converges below the threshold: pre-copy lasts rounds.
    let clone = CloneConfig {
        chunk_pages: 8,
        converge_pages: 0,
        max_rounds: 30,
        ..CloneConfig::default()
    };
    let mut sim = ChainSim::alone(PairConfig::default(), clone, dirtier(64));
    sim.run_until(100, |_| false);
    let t = sim.start_clone(NodeId(1)).unwrap();
    assert!(sim.run_until(100_000, |s| has(s, NodeId(1), |n| matches!(
        n,
        Notice::CloneRound { round: 0, .. }
    ))));
    assert!(!has(&sim, NodeId(1), |n| matches!(
        n,
        Notice::ClonePaused { .. }
    )));
    sim.crash(NodeId(1)).unwrap();
    assert!(sim.run_until(100_000, |s| s.member(t).unwrap().node.is_halted()));
    match sim.member(t).unwrap().node.phase() {
        Phase::Halted(HaltReason::CloneFailed(r)) => assert!(r.contains("sender is gone"), "{r}"),
        other => panic!("{other:?}"),
    }
    sim.run_until(5_000, |_| false);
    assert!(sim.live_members().is_empty());
    assert!(!has(&sim, t, |n| matches!(
        n,
        Notice::ArbiterWon { .. } | Notice::WentLive { .. }
    )));
}

/// With deferral (the default), a pre-copy round leaves out the pages the guest wrote
/// since the round began; they cross once, in a later round or the pause, instead of
/// once per round. The clone is as exact either way (the receiver checks the digest at
/// the clone point, and the clone then replays and takes over).
#[test]
fn pages_the_guest_keeps_writing_cross_once_with_deferral() {
    let sent = |defer_dirty: bool| {
        let clone = CloneConfig {
            chunk_pages: 16,
            converge_pages: 4,
            max_rounds: 6,
            defer_dirty,
            ..CloneConfig::default()
        };
        let mut sim = ChainSim::alone(PairConfig::default(), clone, dirtier(48));
        sim.run_until(300, |_| false);
        let t = sim.start_clone(NodeId(1)).unwrap();
        assert!(sim.run_until(100_000, |s| has(s, t, |n| matches!(
            n,
            Notice::CloneReceived { .. }
        ))));
        let pages = notices(&sim, NodeId(1))
            .iter()
            .find_map(|n| match n {
                Notice::ClonePaused { pages, .. } => Some(*pages),
                _ => None,
            })
            .unwrap();
        // The clone is exact: it replays, and takes over when the member dies.
        sim.run_until(200, |_| false);
        sim.crash(NodeId(1)).unwrap();
        assert!(sim.run_until(100_000, |s| s.live_members() == vec![t]));
        assert_letters_continuous(sim.sink());
        pages
    };
    let (with, without) = (sent(true), sent(false));
    assert!(
        with < without,
        "deferred: {with} pages sent, not deferred: {without}"
    );
}

#[test]
fn a_receiver_that_dies_mid_clone_is_abandoned_while_outputs_keep_flowing() {
    let clone = CloneConfig {
        chunk_pages: 4,
        converge_pages: 0,
        max_rounds: 30,
        defer_dirty: false,
        ..CloneConfig::default()
    };
    let mut sim = ChainSim::alone(PairConfig::default(), clone, dirtier(32));
    sim.run_until(100, |_| false);
    let t = sim.start_clone(NodeId(1)).unwrap();
    sim.run_until(20, |_| false);
    sim.crash(t).unwrap();
    let printed = sim.sink().all().len();
    let timeout = sim.config().engine.peer_timeout / sim.config().tick;
    sim.run_until(timeout / 2, |_| false);
    assert!(
        sim.sink().all().len() > printed,
        "a clone in progress does not gate outputs"
    );
    assert!(sim.run_until(timeout * 4, |s| has(
        s,
        NodeId(1),
        |n| matches!(n, Notice::CloneAborted { reason } if reason.contains("receiver is gone"))
    )));
    assert!(!sim.member(NodeId(1)).unwrap().node.cloning());
    assert_eq!(sim.live_members(), vec![NodeId(1)]);
    assert_letters_continuous(sim.sink());
}

#[test]
fn clone_requests_that_do_not_fit_are_refused() {
    let mut sim = ChainSim::pair(PairConfig::default(), CloneConfig::default(), dirtier(1));
    sim.run_until(100, |_| false);
    assert!(matches!(
        sim.start_clone(NodeId(1)),
        Err(ChainError::Engine(EngineError::Clone(CloneError::NotLive(
            _
        ))))
    ));
    assert!(matches!(
        sim.start_clone(NodeId(2)),
        Err(ChainError::Engine(EngineError::Clone(CloneError::NotLive(
            _
        ))))
    ));
    assert!(matches!(
        sim.start_clone(NodeId(9)),
        Err(ChainError::UnknownMember(_))
    ));

    let mut n = alone(dirtier(1));
    let same = n.config().pair;
    for pair in [
        same,
        PairId {
            vm: 2,
            generation: 9,
        },
    ] {
        assert!(matches!(
            n.start_clone(pair, CloneConfig::default(), 0),
            Err(EngineError::Clone(CloneError::Generation { .. }))
        ));
    }
    let next = PairId {
        generation: same.generation + 1,
        ..same
    };
    for bad in [
        CloneConfig {
            chunk_pages: 0,
            ..CloneConfig::default()
        },
        CloneConfig {
            pages_per_step: 0,
            ..CloneConfig::default()
        },
    ] {
        assert!(matches!(
            n.start_clone(next, bad, 0),
            Err(EngineError::Clone(CloneError::Config(_)))
        ));
    }
    n.start_clone(next, CloneConfig::default(), 0).unwrap();
    assert!(matches!(
        n.start_clone(next, CloneConfig::default(), 0),
        Err(EngineError::Clone(CloneError::AlreadyCloning))
    ));
}

/// A live sender (node 1, default configuration) already cloning into a fresh clone
/// target (node 2), for tests that move the frames by hand; both over one shared disk.
fn hand_clone<S: EventSource>(sender: S, target: S) -> (Node<S, SimWorld>, Node<S, SimWorld>) {
    let sink = OutputSink::new();
    let disk = Disk::new(4096);
    let w = |name, live| SimWorld::new(name, Default::default(), disk.clone(), sink.clone(), live);
    let mut s = Node::unprotected(Config::default(), sender, w("s", true), 0);
    let rcfg = Config {
        node: NodeId(2),
        ..Config::default()
    };
    let r = Node::clone_target(rcfg, target, w("r", false), 0);
    let pair = PairId {
        vm: 1,
        generation: 2,
    };
    s.start_clone(pair, CloneConfig::default(), 0).unwrap();
    (s, r)
}

/// A backend that loses one byte of one page on its way in: a clone that is not exact.
struct Lossy(Machine);

impl EventSource for Lossy {
    fn point(&self) -> ExecPoint {
        self.0.point()
    }
    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        self.0.run(until)
    }
    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        self.0.supply_input(data)
    }
    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        self.0.inject(event)
    }
    fn digest(&mut self) -> SourceResult<u64> {
        self.0.digest()
    }
    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        self.0.snapshot()
    }
    fn restore(&mut self, s: &[u8]) -> SourceResult<()> {
        self.0.restore(s)
    }
    fn memory_layout(&self) -> SourceResult<MemoryLayout> {
        self.0.memory_layout()
    }
    fn start_dirty_log(&mut self) -> SourceResult<()> {
        self.0.start_dirty_log()
    }
    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        self.0.take_dirty_pages(out)
    }
    fn read_page(&self, i: u64, buf: &mut [u8]) -> SourceResult<()> {
        self.0.read_page(i, buf)
    }
    fn write_page(&mut self, i: u64, data: &[u8]) -> SourceResult<()> {
        let mut d = data.to_vec();
        if i == 300 {
            d[17] ^= 0x40;
        }
        self.0.write_page(i, &d)
    }
    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        self.0.save_cpu_devices()
    }
    fn load_cpu_devices(&mut self, s: &[u8]) -> SourceResult<()> {
        self.0.load_cpu_devices(s)
    }
}

#[test]
fn a_clone_that_is_not_exact_is_refused_by_its_digest_and_never_serves() {
    let (mut sender, mut receiver) = hand_clone(Lossy(dirtier(8)), Lossy(dirtier(8)));
    let mut wire = VirtualWire::new(WireConfig::default());
    let arb = InProcessArbiter::new();
    let (mut sa, mut ra) = (Immediate::new(&arb), Immediate::new(&arb));
    let (mut sd, mut rd) = (
        Driver::new(DriverConfig::default()),
        Driver::new(DriverConfig::default()),
    );
    let mut now = 0;
    let mut seen = Vec::new();
    while now < 2_000_000_000 && !receiver.is_halted() {
        now += 50_000;
        sd.turn(&mut sender, &now, &mut wire.primary_end(now), &mut sa);
        rd.turn(&mut receiver, &now, &mut wire.backup_end(now), &mut ra);
        while let Some((_, n)) = sender.poll_notice() {
            seen.push(n);
        }
    }
    match receiver.phase() {
        Phase::Halted(HaltReason::CloneFailed(r)) => {
            assert!(r.contains("CLONE DIGEST MISMATCH"), "{r}")
        }
        other => panic!("{other:?}"),
    }
    assert!(errors_mention(&mut rd, "CLONE DIGEST MISMATCH"));
    // The sender had already paused and recorded for it; told of the refusal, it asks
    // the arbiter for the new generation and goes on alone.
    for _ in 0..2_000 {
        now += 50_000;
        sd.turn(&mut sender, &now, &mut wire.primary_end(now), &mut sa);
        while let Some((_, n)) = sender.poll_notice() {
            seen.push(n);
        }
    }
    assert!(seen.iter().any(|n| matches!(n, Notice::ClonePaused { .. })));
    assert!(seen.iter().any(|n| matches!(n, Notice::CloneAborted { reason } if reason.contains("refused the final state"))));
    assert!(sender.is_live(), "{:?}", sender.phase());
    assert!(!receiver.is_live());
    let _ = Bytes::new();
}

fn errors_mention(d: &mut Driver, what: &str) -> bool {
    d.take_errors().iter().any(|e| e.to_string().contains(what))
}

/// Found by the `clone_receiver` fuzz target: a final state whose log would resume at
/// record 0 underflowed the receiver's sequence counter.
#[test]
fn a_final_state_that_resumes_the_log_at_record_zero_is_refused() {
    use ft_core::Transmit;
    let (mut s, mut r) = hand_clone(dirtier(1), dirtier(1));
    let mut refused = None;
    'outer: for now in 1..10_000 {
        s.step(now).unwrap();
        while let Some(t) = s.poll_transmit(now) {
            let Transmit::Clone(mut m) = t else { continue };
            if let ft_core::CloneMsg::Final { resume, .. } = &mut m.msg {
                resume.next_seq = 0;
            }
            if let Err(e) = r.handle_clone(m, now) {
                refused = Some(e);
                break 'outer;
            }
        }
        while let Some(t) = r.poll_transmit(now) {
            if let Transmit::Clone(m) = t {
                let _ = s.handle_clone(m, now);
            }
        }
    }
    assert!(matches!(
        refused,
        Some(EngineError::Clone(CloneError::BadResume(_)))
    ));
    assert!(matches!(
        r.phase(),
        Phase::Halted(HaltReason::CloneFailed(_))
    ));
    assert_eq!(r.last_seq(), 0);
}

/// A link that loses a clone message (a reconnect that resumed only the records, say)
/// must end the clone, not stall it: here the round's last message is lost, so nothing
/// else follows it but heartbeats, and the first of them shows the gap.
#[test]
fn a_lost_clone_message_ends_the_clone_at_the_next_heartbeat_instead_of_stalling_it() {
    use ft_core::{CloneMsg, Transmit};
    let cfg = Config::default();
    let (mut s, mut r) = hand_clone(dirtier(4), dirtier(4));
    let mut dropped = false;
    let mut refusal = None;
    let step = 100_000;
    let mut now = 0;
    while now < cfg.peer_timeout / 2 && refusal.is_none() {
        now += step;
        s.step(now).unwrap();
        while let Some(t) = s.poll_transmit(now) {
            let Transmit::Clone(f) = t else { continue };
            if !dropped && matches!(f.msg, CloneMsg::RoundEnd { .. }) {
                dropped = true;
                continue;
            }
            if let Err(e) = r.handle_clone(f, now) {
                refusal = Some((now, e));
            }
        }
        while let Some(t) = r.poll_transmit(now) {
            if let Transmit::Clone(f) = t {
                let _ = s.handle_clone(f, now);
            }
        }
    }
    let (at, e) = refusal.expect("the gap was noticed");
    assert!(dropped);
    assert!(
        matches!(e, EngineError::Clone(CloneError::Sequence { .. })),
        "{e}"
    );
    assert!(
        at <= cfg.heartbeat_interval + 2 * step,
        "noticed at {at} ns, a heartbeat after the loss"
    );
    assert!(matches!(
        r.phase(),
        Phase::Halted(HaltReason::CloneFailed(_))
    ));
    let mut seen = Vec::new();
    while let Some((_, n)) = s.poll_notice() {
        seen.push(n);
    }
    assert!(
        seen.iter()
            .any(|n| matches!(n, Notice::CloneAborted { reason } if reason.contains("refused"))),
        "{seen:?}"
    );
    assert!(s.is_live() && !s.cloning());
}

#[test]
fn pre_copy_reads_at_most_its_page_budget_between_two_machine_steps() {
    let mut n = alone(dirtier(200));
    for _ in 0..50 {
        n.step(0).unwrap();
    }
    let cfg = CloneConfig {
        chunk_pages: 4,
        pages_per_step: 10,
        defer_dirty: false,
        ..CloneConfig::default()
    };
    n.start_clone(
        PairId {
            vm: 1,
            generation: 2,
        },
        cfg,
        0,
    )
    .unwrap();
    // Between steps: the pages with data the machine had to read (a known-zero page
    // costs nothing) stay within the budget, rounded up to one message.
    let mut full_per_step = Vec::new();
    let mut round_ended = false;
    for _ in 0..200 {
        let mut full = 0;
        while let Some(t) = n.poll_transmit(0) {
            if let Transmit::Clone(f) = t {
                match f.msg {
                    CloneMsg::Pages { pages, .. } => {
                        full += pages
                            .iter()
                            .filter(|p| matches!(p.data, PageData::Full(_)))
                            .count();
                    }
                    CloneMsg::RoundEnd { .. } => round_ended = true,
                    _ => {}
                }
            }
        }
        full_per_step.push(full);
        if round_ended {
            break;
        }
        n.step(0).unwrap();
    }
    assert!(round_ended, "round 0 never ended");
    assert!(
        full_per_step.iter().all(|&f| f <= 10 + 4),
        "pages read between steps: {full_per_step:?}"
    );
    assert!(
        full_per_step.iter().filter(|&&f| f > 0).count() >= 200 / 14,
        "the 200 dirty pages went across over many steps: {full_per_step:?}"
    );
}

/// After the final pause the guest runs again at once: the final pages go to the link
/// at most a step's budget (256 pages) at a time, the guest running a slice between,
/// and ahead of every record the node logs for its new backup. The clone completes and
/// the new backup replays.
#[test]
fn the_final_pages_go_out_a_budget_a_step_while_the_guest_runs_and_before_any_record() {
    // 4 MiB of RAM, 600 pages of working set: more than two steps' budgets.
    let big = || {
        let img = guests::dirtier(600 * 4096, 0, 40).unwrap();
        let cfg = MachineConfig {
            ram_size: 4 << 20,
            ..MachineConfig::default()
        };
        Machine::from_raw(cfg, &img).unwrap()
    };
    let mut s = alone(big());
    for _ in 0..50 {
        s.step(0).unwrap();
    }
    let rcfg = Config {
        node: NodeId(2),
        pair: PairId {
            vm: 1,
            generation: 2,
        },
        ..Config::default()
    };
    let mut r = Node::clone_target(rcfg, big(), world("r", false), 0);
    let pair = PairId {
        vm: 1,
        generation: 2,
    };
    let cfg = CloneConfig {
        defer_dirty: false,
        ..CloneConfig::default()
    };
    s.start_clone(pair, cfg, 0).unwrap();
    let (mut paused, mut final_sent, mut complete) = (false, false, false);
    let mut final_steps = Vec::new();
    let mut ran_before_final = false;
    let mut now = 0;
    for _ in 0..100_000 {
        now += 1_000;
        let before = s.source().point();
        s.step(now).unwrap();
        let ran = s.source().point() > before;
        let was_paused = paused;
        while let Some((_, n)) = s.poll_notice() {
            match n {
                Notice::ClonePaused { .. } => paused = true,
                Notice::CloneComplete { .. } => complete = true,
                _ => {}
            }
        }
        if was_paused && !final_sent && ran {
            ran_before_final = true;
        }
        let mut pages = 0;
        while let Some(t) = s.poll_transmit(now) {
            match t {
                Transmit::Clone(f) => {
                    match &f.msg {
                        CloneMsg::Pages { pages: p, .. } if paused => pages += p.len(),
                        CloneMsg::Final { .. } => final_sent = true,
                        _ => {}
                    }
                    r.handle_clone(f, now).unwrap();
                }
                Transmit::Records(recs) => {
                    assert!(final_sent, "records went out before the final state");
                    r.handle_records(recs, now).unwrap();
                }
                Transmit::Ack(_) => panic!("the sender sent an ack"),
            }
        }
        if paused && pages > 0 {
            final_pages_check(pages);
            final_steps.push(pages);
        }
        while let Some(t) = r.poll_transmit(now) {
            match t {
                Transmit::Clone(f) => s.handle_clone(f, now).unwrap(),
                Transmit::Ack(a) => s.handle_ack(a, now).unwrap(),
                Transmit::Records(_) => panic!("the receiver sent records"),
            }
        }
        r.step(now).unwrap();
        if complete {
            break;
        }
    }
    assert!(complete, "the clone never completed");
    assert!(
        final_steps.len() >= 2,
        "the final pages went out over several steps: {final_steps:?}"
    );
    assert!(
        ran_before_final,
        "the guest ran before the final state went out"
    );
    assert_eq!(*r.phase(), Phase::Replaying);
}

/// One step's final pages: the budget, overshot by less than one message of 64.
fn final_pages_check(pages: usize) {
    assert!(pages <= 256 + 63, "{pages} final pages in one step");
}
