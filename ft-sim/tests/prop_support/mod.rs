//! Shared helpers of the `prop_*` property tests: seeded pair configurations, random
//! asynchronous schedules, driving a pair to the end, and the replay-equivalence check.
//!
//! Every case derives from one `u64` seed. A failing case prints its seed and the
//! command that reruns it (`FT_SEED=<seed> cargo test --release -p ft-sim --test <file>
//! <test> -- --exact`).
//!
//! Soak: `FT_SOAK=N` runs N times every suite's case count, `FT_SEED_BASE=X` moves
//! every suite's seed base (fresh seeds nobody has run), and `FT_SOAK_SECS=S` keeps each
//! seeded test drawing new cases until S seconds have passed. Each soaked test prints
//! how many cases passed (`--nocapture` shows it).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use ft_core::{AsyncEvent, Event, EventSource, Nanos, Output};
use ft_sim::devices::id;
use ft_sim::progen::{self, Family, Params, Program};
use ft_sim::{ChainSim, Disk, OutputSink, PairConfig, PairSim};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod soak;
pub use soak::*;

/// The case's RNG for everything but the program (which `progen` derives itself).
pub fn case_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_ca5e_0000_0001)
}

/// A pair configuration randomized from the case RNG: frequent digests, random link,
/// tick, slice and backup speed.
pub fn random_config(rng: &mut ChaCha8Rng, seed: u64) -> PairConfig {
    let mut cfg = PairConfig {
        seed,
        ..PairConfig::default()
    };
    cfg.engine.digest_interval = rng.gen_range(2_000..=5_000);
    // Sometimes tiny slices: asynchronous events then land almost anywhere.
    cfg.engine.slice = if rng.gen_bool(0.2) {
        rng.gen_range(1..=64)
    } else {
        rng.gen_range(150..=3_000)
    };
    cfg.link_latency = rng.gen_range(0..=150_000);
    cfg.link_jitter = rng.gen_range(0..=40_000);
    cfg.tick = rng.gen_range(5_000..=40_000);
    cfg.backup_step_every = rng.gen_range(1..=3);
    cfg.seed = seed;
    cfg.world.seed = seed.rotate_left(17);
    cfg.world.disk_latency = rng.gen_range(20_000..=400_000);
    cfg
}

/// Random asynchronous events (timer and network interrupts, packets) at random
/// times in `[0, horizon)`, sorted by time.
pub fn random_events(rng: &mut ChaCha8Rng, horizon: Nanos, n: usize) -> Vec<(Nanos, AsyncEvent)> {
    let mut v: Vec<(Nanos, AsyncEvent)> = (0..n)
        .map(|_| {
            let at = rng.gen_range(0..horizon.max(1));
            let ev = match rng.gen_range(0..3) {
                0 => AsyncEvent::Interrupt { device: id::TIMER },
                1 => AsyncEvent::Interrupt { device: id::NET },
                _ => {
                    let len = rng.gen_range(1..=96);
                    let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    AsyncEvent::DeviceInput {
                        device: id::NET,
                        data: Bytes::from(data),
                    }
                }
            };
            (at, ev)
        })
        .collect();
    v.sort_by_key(|(t, _)| *t);
    v
}

/// Generator parameters randomized from the seed, for `family`.
pub fn random_params(seed: u64, family: Family) -> Params {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9a4a_0000_0000_0002);
    let base = match family {
        Family::Stream => Params {
            items: rng.gen_range(40..=400),
            ..Params::stream()
        },
        Family::Devices => Params {
            items: rng.gen_range(10..=80),
            ..Params::devices()
        },
    };
    Params {
        max_loop_iters: rng.gen_range(1..=16),
        max_polls: rng.gen_range(1..=800),
        device_reads: rng.gen_bool(0.7),
        ..base
    }
}

/// A random disk image.
pub fn random_disk(rng: &mut ChaCha8Rng, size: usize) -> Disk {
    let mut b = vec![0u8; size];
    rng.fill(&mut b[..]);
    Disk::from_bytes(b)
}

/// One generated case: a program, a pair running it, and the schedule put into the
/// primary's world.
pub struct Case {
    pub seed: u64,
    pub prog: Program,
    pub sim: PairSim,
    pub events: usize,
}

/// Build a case: program from `params`, configuration from `tweak(random_config)`,
/// a random disk and `n_events` random async events within `horizon`.
pub fn build_case(
    seed: u64,
    params: &Params,
    n_events: usize,
    horizon: Nanos,
    tweak: impl FnOnce(&mut PairConfig),
) -> Case {
    let prog = progen::generate(seed, params).unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    let mut rng = case_rng(seed);
    let mut cfg = random_config(&mut rng, seed);
    tweak(&mut cfg);
    let machine = prog.machine(cfg.machine).unwrap();
    let disk = random_disk(&mut rng, cfg.disk_size);
    let events = random_events(&mut rng, horizon, n_events);
    let n = events.len();
    let mut sim = PairSim::with_disk(cfg, machine, disk);
    for (at, ev) in events {
        sim.primary.world_mut().schedule_event(at, ev);
    }
    Case {
        seed,
        prog,
        sim,
        events: n,
    }
}

/// Tick until the primary's guest exited, every output was released, and the backup
/// replayed every record up to the guest's exit (the backup's exit code is set when it
/// replays the `Halt` record, so every record before it was replayed; the heartbeats
/// a finished primary keeps logging may stay in flight). Returns whether that happened
/// within `max_ticks`.
pub fn run_to_end(sim: &mut PairSim, max_ticks: u64) -> bool {
    sim.run_until(max_ticks, |s| {
        s.primary.exit_code().is_some()
            && s.primary.held_outputs() == 0
            && s.backup.exit_code().is_some()
    })
}

/// Asynchronous records in the log.
pub fn async_records(sim: &PairSim) -> u64 {
    sim.trace()
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::Async(_)))
        .count() as u64
}

/// A short description of a run for assertion messages.
pub fn describe(sim: &PairSim) -> String {
    format!(
        "primary {:?} exit {:?} last_seq {} held {} | backup {:?} replayed {} exit {:?} | errors {:?} | now {}",
        sim.primary.phase(),
        sim.primary.exit_code(),
        sim.primary.last_seq(),
        sim.primary.held_outputs(),
        sim.backup.phase(),
        sim.backup.replayed_seq(),
        sim.backup.exit_code(),
        sim.errors(),
        sim.now()
    )
}

/// The replay-equivalence property, checked on a pair that ran to the end.
pub fn check_equivalence(case: &mut Case) {
    let seed = case.seed;
    let sim = &mut case.sim;
    assert!(
        sim.errors().is_empty(),
        "seed {seed:#x}: errors: {:?}",
        sim.errors()
    );
    assert!(
        !sim.diverged(),
        "seed {seed:#x}: divergence: {}",
        describe(sim)
    );
    assert_eq!(
        sim.backup.exit_code(),
        sim.primary.exit_code(),
        "seed {seed:#x}: exit codes"
    );
    let pd = sim.primary.source_mut().digest();
    let bd = sim.backup.source_mut().digest();
    assert_eq!(pd, bd, "seed {seed:#x}: final machine digests differ");
    assert_eq!(
        sim.primary.source().ram().as_slice(),
        sim.backup.source().ram().as_slice(),
        "seed {seed:#x}: RAM differs"
    );
    assert!(
        sim.backup.stats().digests_checked > 0,
        "seed {seed:#x}: no digest checked along the way ({:?})",
        sim.backup.stats()
    );
    let released: Vec<Output> = sim.primary_released();
    let replayed = sim.backup.world().replayed_outputs().to_vec();
    assert_eq!(
        released.len() as u64,
        sim.primary.stats().outputs,
        "seed {seed:#x}: the primary released fewer outputs than its guest produced"
    );
    assert_eq!(
        replayed.len(),
        released.len(),
        "seed {seed:#x}: output counts differ"
    );
    for (i, (p, b)) in released.iter().zip(&replayed).enumerate() {
        assert_eq!(p, b, "seed {seed:#x}: output {i} differs");
    }
    // The final hash line is an output: at least one.
    assert!(!released.is_empty(), "seed {seed:#x}: no output at all");
    // Bounded: the guest retired no more than the generator's bound.
    let retired = sim.primary.source().cpu().instret();
    let bound = case.prog.instruction_bound(async_records(sim));
    assert!(
        retired <= bound,
        "seed {seed:#x}: retired {retired} instructions, bound {bound}"
    );
}

/// What a [`Client`] talks to: a simulated pair, or a chain of them.
pub trait Served {
    /// Virtual time now.
    fn now(&self) -> Nanos;
    /// Advance one tick.
    fn tick(&mut self);
    /// A packet reaches the serving side `delay` from now.
    fn send_packet(&mut self, delay: Nanos, data: Bytes);
    /// The outside world's outputs.
    fn sink(&self) -> &OutputSink;
}

impl Served for PairSim {
    fn now(&self) -> Nanos {
        PairSim::now(self)
    }
    fn tick(&mut self) {
        PairSim::tick(self)
    }
    fn send_packet(&mut self, delay: Nanos, data: Bytes) {
        PairSim::send_packet(self, delay, data)
    }
    fn sink(&self) -> &OutputSink {
        PairSim::sink(self)
    }
}

impl Served for ChainSim {
    fn now(&self) -> Nanos {
        ChainSim::now(self)
    }
    fn tick(&mut self) {
        ChainSim::tick(self)
    }
    fn send_packet(&mut self, delay: Nanos, data: Bytes) {
        ChainSim::send_packet(self, delay, data)
    }
    fn sink(&self) -> &OutputSink {
        ChainSim::sink(self)
    }
}

/// A client of the service guest: requests `req-<id>` with unique ids, resends those
/// whose reply it has not seen after `timeout`, and matches replies (network outputs
/// of either side) by their echoed payload.
pub struct Client {
    /// Resend period.
    pub timeout: Nanos,
    /// Id of the next new request.
    pub next_id: u64,
    /// Requests without a reply: id -> last send time.
    pub pending: std::collections::BTreeMap<u64, Nanos>,
    /// Requests with a reply.
    pub answered: std::collections::BTreeSet<u64>,
    /// Sends, resends included.
    pub sends: u64,
    seen: usize,
}

impl Client {
    /// A client that resends after `timeout`.
    pub fn new(timeout: Nanos) -> Client {
        Client {
            timeout,
            next_id: 0,
            pending: Default::default(),
            answered: Default::default(),
            sends: 0,
            seen: 0,
        }
    }

    /// Send a new request, `delay` from now; returns its id.
    pub fn request(&mut self, sim: &mut impl Served, delay: Nanos) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(sim, id, delay);
        id
    }

    fn send(&mut self, sim: &mut impl Served, id: u64, delay: Nanos) {
        sim.send_packet(delay, Bytes::from(format!("req-{id}")));
        self.pending.insert(id, sim.now() + delay);
        self.sends += 1;
    }

    /// Read new replies from the sink and resend what timed out.
    pub fn poll(&mut self, sim: &mut impl Served) {
        let all = sim.sink().all();
        for e in &all[self.seen.min(all.len())..] {
            if e.output.device != id::NET {
                continue;
            }
            if let Some(reply) = ft_sim::guests::parse_reply(&e.output.data) {
                if let Some(id) = std::str::from_utf8(&reply.payload)
                    .ok()
                    .and_then(|s| s.strip_prefix("req-"))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.pending.remove(&id);
                    self.answered.insert(id);
                }
            }
        }
        self.seen = all.len();
        let now = sim.now();
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= self.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.send(sim, id, 0);
        }
    }

    /// Tick `sim` once and poll.
    pub fn tick(&mut self, sim: &mut impl Served) {
        sim.tick();
        self.poll(sim);
    }
}

/// The reply counters of the deduplicated network outputs, in sequence order.
pub fn reply_counters(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter(|o| o.device == id::NET)
        .filter_map(|o| ft_sim::guests::parse_reply(&o.data))
        .map(|r| r.counter)
        .collect()
}

/// Assert the counters go 1, 2, 3... with no gap and no repeat.
pub fn assert_counters_continuous(seed: u64, outputs: &[Output]) {
    let c = reply_counters(outputs);
    for (i, v) in c.iter().enumerate() {
        assert_eq!(
            *v,
            i as u64 + 1,
            "seed {seed:#x}: reply counters are not continuous: {c:?}"
        );
    }
}
