//! Redundancy properties: a protected VM survives a chain of failures, each followed
//! by a live clone to a fresh backup, with the service guest under client load.
//!
//! Each case is a chain of at least five failures, primary or backup, at random
//! points, some of them during a clone (the new backup, or the sender just after its
//! final pause). After each, the survivor goes on alone and then clones a new backup.
//! Checked over the whole case: never two live members; every output exactly once
//! after dedupe and never contradicted, with possible repeats marked; the service's
//! counters continuous across every failover; every request answered in the end; each
//! clone's digest at its clone point equal to the sender's, at the same point; no
//! divergence and no error.
//!
//! Rerun one case: `FT_SEED=<seed> cargo test -p ft-sim --release --test
//! prop_redundancy -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use std::collections::BTreeMap;

use ft_core::{CloneConfig, HaltReason, Nanos, NodeId, Notice, Phase};
use ft_sim::{guests, ChainSim, Machine, MachineConfig};
use prop_support::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The guest of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// The service, under client load; its reply counters must continue.
    Service,
    /// A guest that rewrites a working set of this many pages without pause and
    /// prints a letter every few passes; its letters must continue.
    Dirtier(u64),
}

fn chain(seed: u64, rng: &mut ChaCha8Rng, alone: bool, guest: Guest) -> ChainSim {
    let mut cfg = random_config(rng, seed);
    cfg.engine.slice = rng.gen_range(200..=3_000);
    cfg.arbiter_latency = rng.gen_range(0..=2_000_000);
    let clone = CloneConfig {
        chunk_pages: rng.gen_range(1..=128),
        converge_pages: rng.gen_range(0..=64),
        max_rounds: rng.gen_range(1..=8),
        pages_per_step: rng.gen_range(1..=256),
        defer_dirty: rng.gen_bool(0.5),
    };
    let m = match guest {
        Guest::Service => {
            Machine::from_raw(MachineConfig::default(), &guests::service().unwrap()).unwrap()
        }
        Guest::Dirtier(pages) => {
            let every = rng.gen_range(1..=20);
            let img = guests::dirtier(pages * 4096, 0, every).unwrap();
            let cfg = MachineConfig {
                ram_size: 2 << 20,
                ..MachineConfig::default()
            };
            Machine::from_raw(cfg, &img).unwrap()
        }
    };
    if alone {
        ChainSim::alone(cfg, clone, m)
    } else {
        ChainSim::pair(cfg, clone, m)
    }
}

/// Everything a case drives: the chain, its client, the RNG.
struct Run {
    seed: u64,
    sim: ChainSim,
    client: Client,
    rng: ChaCha8Rng,
    /// Requests to send, at these times.
    schedule: Vec<Nanos>,
    /// Whether the guest takes requests.
    load: bool,
}

impl Run {
    /// One tick, with the client's traffic and checks that hold at every tick.
    fn tick(&mut self) {
        while self.schedule.first().is_some_and(|t| *t <= self.sim.now()) {
            self.schedule.remove(0);
            self.client.request(&mut self.sim, 0);
        }
        self.client.tick(&mut self.sim);
        let live = self.sim.live_members();
        assert!(
            live.len() <= 1,
            "seed {:#x}: split brain at {}: live {live:?}",
            self.seed,
            self.sim.now()
        );
    }

    fn until(&mut self, max: u64, what: &str, done: impl Fn(&ChainSim) -> bool) {
        for _ in 0..max {
            if done(&self.sim) {
                return;
            }
            self.tick();
        }
        assert!(
            done(&self.sim),
            "seed {:#x}: {what} never happened: {}",
            self.seed,
            describe_chain(&self.sim)
        );
    }

    fn run_for(&mut self, span: Nanos) {
        let end = self.sim.now() + span;
        while self.sim.now() < end {
            self.tick();
        }
    }

    /// Requests at random times over the next `span`.
    fn traffic(&mut self, n: usize, span: Nanos) {
        if !self.load {
            return;
        }
        let now = self.sim.now();
        for _ in 0..n {
            self.schedule.push(now + self.rng.gen_range(0..span.max(1)));
        }
        self.schedule.sort_unstable();
    }

    /// A bound on failure detection, arbitration and go-live.
    fn failover_bound(&self) -> u64 {
        let c = self.sim.config();
        let t = c.engine.peer_timeout
            + 2 * c.engine.heartbeat_interval
            + 4 * c.arbiter_latency
            + c.engine.arbiter_retry_max
            + 50_000_000;
        t / c.tick + 1_000
    }

    /// Wait until exactly one member is running and live: the survivor.
    fn survivor(&mut self) -> NodeId {
        let bound = self.failover_bound();
        self.until(bound, "a single live survivor", |s| {
            s.live_members().len() == 1
                && s.running().len() == 1
                && s.members().iter().all(|m| !m.up() || !m.node.cloning())
        });
        self.sim.live_members()[0]
    }

    fn clone_complete(&self, target: NodeId) -> bool {
        self.sim
            .trace()
            .notices
            .iter()
            .any(|(_, id, n)| *id == target && matches!(n, Notice::CloneReceived { .. }))
            && self
                .sim
                .member(target)
                .is_some_and(|m| *m.node.phase() == Phase::Replaying)
    }
}

fn describe_chain(sim: &ChainSim) -> String {
    let members: Vec<String> = sim
        .members()
        .iter()
        .map(|m| {
            format!(
                "{}{}: {:?} gen {} seq {} replayed {}",
                m.name,
                if m.up() { "" } else { " (down)" },
                m.node.phase(),
                m.node.config().pair.generation,
                m.node.last_seq(),
                m.node.replayed_seq()
            )
        })
        .collect();
    format!(
        "now {} | {} | errors {:?}",
        sim.now(),
        members.join(" | "),
        sim.trace().errors
    )
}

fn redundancy_case(seed: u64, guest: Guest) {
    let mut rng = case_rng(seed);
    let alone = rng.gen_bool(0.25);
    let guest = match guest {
        Guest::Service => Guest::Service,
        Guest::Dirtier(_) => Guest::Dirtier(rng.gen_range(0..=200)),
    };
    let sim = chain(seed, &mut rng, alone, guest);
    let traffic = guest == Guest::Service;
    let client = Client::new(rng.gen_range(2_000_000..=5_000_000));
    let mut run = Run {
        seed,
        sim,
        client,
        rng,
        schedule: Vec::new(),
        load: traffic,
    };
    let failures = run.rng.gen_range(5..=7u32);
    let mut failed = 0u32;
    let mut clones = 0u32;
    let mut clones_hit = 0u32;
    // The pair to start from: the first two members, or the machine alone and a clone.
    let (mut primary, mut backup) = if alone {
        run.traffic(3, 3_000_000);
        let wait = run.rng.gen_range(0..3_000_000);
        run.run_for(wait);
        let t = run.sim.start_clone(NodeId(1)).unwrap();
        clones += 1;
        run.until(200_000, "the first clone", |s| {
            s.trace()
                .notices
                .iter()
                .any(|(_, id, n)| *id == t && matches!(n, Notice::CloneReceived { .. }))
        });
        (NodeId(1), t)
    } else {
        (NodeId(1), NodeId(2))
    };
    while failed < failures {
        // Load, then a failure of the primary or the backup.
        let n = run.rng.gen_range(2..=6);
        run.traffic(n, 4_000_000);
        let wait = run.rng.gen_range(0..5_000_000);
        run.run_for(wait);
        let victim = if run.rng.gen_bool(0.5) {
            primary
        } else {
            backup
        };
        run.sim.crash(victim).unwrap();
        failed += 1;
        let mut survivor = run.survivor();
        // Restore redundancy. Some clones are hit by a failure themselves: the new
        // backup dies mid-way, or the sender dies just after its final pause.
        loop {
            let mark = run.sim.trace().notices.len();
            let target = run.sim.start_clone(survivor).unwrap();
            clones += 1;
            let hit = failed < failures && run.rng.gen_bool(0.35);
            if !hit {
                let bound = run.failover_bound() * 4;
                run.until(bound, "a clone", |s| {
                    s.trace().notices.iter().any(|(_, id, n)| {
                        *id == target && matches!(n, Notice::CloneReceived { .. })
                    })
                });
                let done = run.clone_complete(target);
                assert!(done, "seed {seed:#x}: {}", describe_chain(&run.sim));
                primary = survivor;
                backup = target;
                break;
            }
            clones_hit += 1;
            failed += 1;
            if run.rng.gen_bool(0.5) {
                // The new backup dies after a random part of the clone.
                let ticks = run.rng.gen_range(0..200);
                for _ in 0..ticks {
                    run.tick();
                }
                run.sim.crash(target).unwrap();
                let sender = survivor;
                survivor = run.survivor();
                assert_eq!(survivor, sender, "seed {seed:#x}: the sender did not go on");
            } else {
                // The sender dies just after its final pause, once the final state is
                // on the wire: the clone completes, replays and takes over. (A sender
                // that dies before that loses the VM, the only copy it was: see the
                // live_clone tests.)
                let sender = survivor;
                let paused = |s: &ChainSim| {
                    s.trace().notices[mark..]
                        .iter()
                        .any(|(_, id, n)| *id == sender && matches!(n, Notice::ClonePaused { .. }))
                        && s.member(sender)
                            .is_some_and(|m| m.node.clone_queued() == 0 && m.link_idle())
                };
                let bound = run.failover_bound() * 4;
                run.until(bound, "the final pause", paused);
                run.sim.crash(survivor).unwrap();
                survivor = run.survivor();
                assert_eq!(
                    survivor, target,
                    "seed {seed:#x}: the clone did not take over"
                );
            }
        }
    }
    // The last pair serves a while, then every request gets its answer.
    let n = run.rng.gen_range(2..=5);
    run.traffic(n, 3_000_000);
    let bound = run.failover_bound() * 4;
    for _ in 0..bound {
        if run.schedule.is_empty() && run.client.pending.is_empty() {
            break;
        }
        run.tick();
    }
    assert!(
        run.client.pending.is_empty(),
        "seed {seed:#x}: unanswered {:?}: {}",
        run.client.pending,
        describe_chain(&run.sim)
    );
    check(seed, &run.sim, guest, failed, clones, clones_hit);
}

fn check(seed: u64, sim: &ChainSim, guest: Guest, failed: u32, clones: u32, clones_hit: u32) {
    let t = sim.trace();
    assert!(
        t.max_live <= 1,
        "seed {seed:#x}: {} live at once",
        t.max_live
    );
    assert!(t.errors.is_empty(), "seed {seed:#x}: errors {:?}", t.errors);
    assert!(
        !t.notices
            .iter()
            .any(|(_, _, n)| matches!(n, Notice::Diverged(_))),
        "seed {seed:#x}: divergence"
    );
    // Every clone point: the receiver's digest is the sender's, at the same point.
    let mut paused = BTreeMap::new();
    for (_, id, n) in &t.notices {
        if let Notice::ClonePaused {
            pair,
            point,
            digest,
            ..
        } = n
        {
            paused.insert(pair.generation, (*id, *point, *digest));
        }
    }
    let mut received = 0;
    for (_, id, n) in &t.notices {
        if let Notice::CloneReceived {
            pair,
            point,
            digest,
        } = n
        {
            let (sender, p, d) = paused
                .get(&pair.generation)
                .unwrap_or_else(|| panic!("seed {seed:#x}: clone {id:?} with no final pause"));
            assert_ne!(sender, id, "seed {seed:#x}");
            assert_eq!((p, d), (point, digest), "seed {seed:#x}: clone {id:?}");
            received += 1;
        }
    }
    assert!(
        received >= failed - clones_hit,
        "seed {seed:#x}: {received} clones"
    );
    // A clone target that failed did so because its sender abandoned it or died.
    for m in sim.members() {
        if let Phase::Halted(HaltReason::CloneFailed(r)) = m.node.phase() {
            assert!(
                r.contains("sender") || r.contains("abandoned"),
                "seed {seed:#x}: {}: {r}",
                m.name
            );
        }
    }
    // Outputs: exactly once after dedupe, never contradicted, repeats marked.
    let dedup = sim
        .sink()
        .deduplicated()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    let mut first: BTreeMap<u64, &'static str> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in sim.sink().all() {
        assert!(
            seen.insert((e.side, e.output.seq.0)),
            "seed {seed:#x}: {} emitted #{} twice",
            e.side,
            e.output.seq.0
        );
        match first.get(&e.output.seq.0) {
            None => {
                first.insert(e.output.seq.0, e.side);
            }
            Some(_) => assert!(
                e.possible_repeat,
                "seed {seed:#x}: #{} repeated by {} without the possible-repeat mark",
                e.output.seq.0, e.side
            ),
        }
    }
    match guest {
        Guest::Service => assert_counters_continuous(seed, &dedup),
        Guest::Dirtier(_) => {
            guests::check_dirtier_letters(&dedup).unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
            assert!(
                !dedup.is_empty(),
                "seed {seed:#x}: the guest printed nothing"
            );
        }
    }
    assert!(clones >= failed - clones_hit, "seed {seed:#x}");
    if std::env::var("FT_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed:#x} {guest:?}: {failed} failures ({clones_hit} during clones), {clones} clones, {} members, {} outputs, {} replies",
            sim.members().len(),
            dedup.len(),
            reply_counters(&dedup).len()
        );
    }
}

#[test]
fn a_served_vm_survives_a_chain_of_failures_each_followed_by_a_clone() {
    for seed in seeds(0x7ed0, 24) {
        redundancy_case(seed, Guest::Service);
    }
}

#[test]
fn a_vm_that_keeps_dirtying_memory_survives_a_chain_of_failures_and_clones() {
    for seed in seeds(0x7ed1, 16) {
        redundancy_case(seed, Guest::Dirtier(0));
    }
}
