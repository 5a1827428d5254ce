//! Failover properties with the service guest: a primary crash at a random time loses
//! and contradicts no output and the service goes on with its state; a cut link (split
//! brain) leaves exactly one side live; an unreachable arbiter leaves none; a backup
//! crash leaves the primary alone and unlogged.
//!
//! Rerun one case: `FT_SEED=<seed> cargo test -p ft-sim --release --test prop_failover
//! -- --nocapture` (every test of this file then runs just that seed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use std::collections::BTreeMap;

use ft_core::{HaltReason, Nanos, NodeId, Notice, Output, Phase};
use ft_sim::{guests, Machine, MachineConfig, PairConfig, PairSim, Side};
use prop_support::*;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

fn service_sim(seed: u64, rng: &mut ChaCha8Rng, tweak: impl FnOnce(&mut PairConfig)) -> PairSim {
    let mut cfg = random_config(rng, seed);
    // The service idles most of the time: keep slices ordinary.
    cfg.engine.slice = rng.gen_range(200..=3_000);
    cfg.arbiter_latency = rng.gen_range(0..=2_000_000);
    tweak(&mut cfg);
    let img = guests::service().unwrap();
    let m = Machine::from_raw(MachineConfig::default(), &img).unwrap();
    PairSim::with_machine(cfg, m)
}

/// Send `n` requests at random times over the next `span`, ticking in between.
fn traffic(sim: &mut PairSim, client: &mut Client, rng: &mut ChaCha8Rng, n: usize, span: Nanos) {
    let mut at: Vec<Nanos> = (0..n).map(|_| sim.now() + rng.gen_range(0..span)).collect();
    at.sort_unstable();
    for t in at {
        while sim.now() < t {
            client.tick(sim);
        }
        client.request(sim, 0);
    }
}

fn tick_until(
    sim: &mut PairSim,
    client: &mut Client,
    max: u64,
    done: impl Fn(&PairSim, &Client) -> bool,
) -> bool {
    for _ in 0..max {
        if done(sim, client) {
            return true;
        }
        client.tick(sim);
    }
    done(sim, client)
}

/// The backup's stream: what it replayed, then what it emitted, by sequence number.
fn backup_stream(sim: &PairSim) -> BTreeMap<u64, Output> {
    let mut m: BTreeMap<u64, Output> = sim
        .backup
        .world()
        .replayed_outputs()
        .iter()
        .map(|o| (o.seq.0, o.clone()))
        .collect();
    for e in sim.sink().all() {
        if e.side == "backup" {
            m.entry(e.output.seq.0).or_insert(e.output);
        }
    }
    m
}

fn crash_case(seed: u64) {
    let mut rng = case_rng(seed);
    let mut sim = service_sim(seed, &mut rng, |_| {});
    let mut client = Client::new(rng.gen_range(2_000_000..=5_000_000));
    let crash_at = rng.gen_range(0..=8_000_000u64);
    // Traffic, with the crash somewhere inside it.
    let n_before = rng.gen_range(4..=12);
    let mut times: Vec<Nanos> = (0..n_before).map(|_| rng.gen_range(0..9_000_000)).collect();
    times.sort_unstable();
    let mut crash_time = None;
    let mut step = |sim: &mut PairSim, client: &mut Client| {
        if crash_time.is_none() && sim.now() >= crash_at {
            sim.crash_primary();
            crash_time = Some(sim.now());
        }
        client.tick(sim);
    };
    for t in times {
        while sim.now() < t {
            step(&mut sim, &mut client);
        }
        client.request(&mut sim, 0);
    }
    while sim.now() < crash_at {
        step(&mut sim, &mut client);
    }
    step(&mut sim, &mut client);
    let crash_time = crash_time.unwrap();
    // The dead primary released nothing after the crash.
    let released_at_crash = sim.primary_released();
    assert!(
        sim.sink()
            .all()
            .iter()
            .all(|e| e.side != "primary" || e.at <= crash_time),
        "seed {seed:#x}: output after the crash"
    );

    // The backup takes over.
    let peer_timeout = sim.config().engine.peer_timeout;
    assert!(
        tick_until(&mut sim, &mut client, 100_000, |s, _| s.backup.is_live()),
        "seed {seed:#x}: backup never went live: {}",
        describe(&sim)
    );
    let live_at = sim.backup.world().went_live_at().unwrap();
    let bound = peer_timeout
        + 2 * sim.config().engine.heartbeat_interval
        + sim.config().arbiter_latency
        + 2 * sim.config().tick
        + 1_000_000;
    assert!(
        live_at - crash_time <= bound,
        "seed {seed:#x}: went live {} ns after the crash (bound {bound})",
        live_at - crash_time
    );
    assert_eq!(sim.live_sides(), vec![Side::Backup], "seed {seed:#x}");
    assert!(
        sim.trace()
            .notices
            .iter()
            .any(|(_, s, n)| *s == Side::Backup && matches!(n, Notice::WentLive { .. })),
        "seed {seed:#x}"
    );

    // New requests after go-live; everything gets answered.
    let first_new = client.next_id;
    let n_after = rng.gen_range(3..=8);
    traffic(&mut sim, &mut client, &mut rng, n_after, 5_000_000);
    let all_answered = tick_until(&mut sim, &mut client, 100_000, |_, c| c.pending.is_empty());
    assert!(
        all_answered,
        "seed {seed:#x}: unanswered {:?}: {}",
        client.pending,
        describe(&sim)
    );
    assert!(
        (first_new..client.next_id).all(|id| client.answered.contains(&id)),
        "seed {seed:#x}"
    );

    assert!(
        sim.errors().is_empty(),
        "seed {seed:#x}: {:?}",
        sim.errors()
    );
    assert!(!sim.diverged(), "seed {seed:#x}");
    assert_eq!(
        sim.primary_released(),
        released_at_crash,
        "seed {seed:#x}: a dead primary released"
    );

    // Nothing the primary released is lost or contradicted.
    let stream = backup_stream(&sim);
    for o in &released_at_crash {
        assert_eq!(
            stream.get(&o.seq.0),
            Some(o),
            "seed {seed:#x}: output #{} released by the primary is not in the backup's stream",
            o.seq.0
        );
    }
    let dedup = sim
        .sink()
        .deduplicated()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    // Repeats are only re-sent outputs marked as possible repeats.
    let primary_seqs: std::collections::BTreeSet<u64> =
        released_at_crash.iter().map(|o| o.seq.0).collect();
    let mut seen = std::collections::BTreeSet::new();
    for e in sim.sink().all() {
        if !seen.insert((e.side, e.output.seq.0)) {
            panic!(
                "seed {seed:#x}: side {} emitted #{} twice",
                e.side, e.output.seq.0
            );
        }
        if e.side == "backup" && primary_seqs.contains(&e.output.seq.0) {
            assert!(
                e.possible_repeat,
                "seed {seed:#x}: #{} repeated without the possible-repeat mark",
                e.output.seq.0
            );
        }
    }
    // The service's state continued: counters 1, 2, 3, ... across the failover.
    assert_counters_continuous(seed, &dedup);
    let counters = reply_counters(&dedup);
    assert!(counters.len() >= n_after, "seed {seed:#x}: {counters:?}");
    sim.check_output_rule()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    if std::env::var("FT_VERBOSE").is_ok() {
        let repeats = sim
            .sink()
            .all()
            .iter()
            .filter(|e| e.possible_repeat)
            .count();
        let went = sim
            .trace()
            .notices
            .iter()
            .find(|(_, s, n)| *s == Side::Backup && matches!(n, Notice::WentLive { .. }))
            .cloned();
        eprintln!(
            "seed {seed:#x}: crash_at {crash_at} crash at {crash_time}, released before {}, replies {}, repeats {repeats}, sends {}, {went:?}",
            released_at_crash.len(),
            counters.len(),
            client.sends
        );
    }
}

#[test]
fn primary_crash_loses_nothing_and_service_continues() {
    for seed in seeds(0xc4a5, 40) {
        crash_case(seed);
    }
}

fn split_brain_case(seed: u64) {
    let mut rng = case_rng(seed);
    let mut sim = service_sim(seed, &mut rng, |_| {});
    let mut client = Client::new(3_000_000);
    let cut_after = rng.gen_range(0..=6_000_000u64);
    let n = rng.gen_range(0..=6);
    traffic(&mut sim, &mut client, &mut rng, n, cut_after.max(1));
    // Mostly both ways; sometimes one way only.
    let (to_b, to_p) = match rng.gen_range(0..6) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    sim.cut(to_b, to_p);
    let resolved = tick_until(&mut sim, &mut client, 200_000, |s, _| {
        !s.live_sides().is_empty() && (s.primary.is_halted() || s.backup.is_halted())
    });
    assert!(resolved, "seed {seed:#x}: {}", describe(&sim));
    // Keep going a while: it stays that way.
    traffic(&mut sim, &mut client, &mut rng, 3, 3_000_000);
    for _ in 0..2_000 {
        client.tick(&mut sim);
    }
    let live = sim.live_sides();
    assert_eq!(live.len(), 1, "seed {seed:#x}: live sides {live:?}");
    let (winner, loser) = match live[0] {
        Side::Primary => (NodeId(1), &sim.backup),
        Side::Backup => (NodeId(2), &sim.primary),
    };
    assert_eq!(
        loser.phase(),
        &Phase::Halted(HaltReason::LostArbitration { winner }),
        "seed {seed:#x} (cut {to_b}/{to_p})"
    );
    assert_eq!(
        sim.arbiter().holder(sim.pair()),
        Some(winner),
        "seed {seed:#x}"
    );
    assert!(!sim.diverged(), "seed {seed:#x}");
    let dedup = sim
        .sink()
        .deduplicated()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    assert_counters_continuous(seed, &dedup);
    sim.check_output_rule()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
}

#[test]
fn split_brain_leaves_exactly_one_side_live() {
    for seed in seeds(0x5b1, 80) {
        split_brain_case(seed);
    }
}

fn unreachable_arbiter_case(seed: u64) {
    let mut rng = case_rng(seed);
    let mut sim = service_sim(seed, &mut rng, |c| {
        c.engine.arbiter_retry_min = 1_000_000;
        c.engine.arbiter_retry_max = 8_000_000;
    });
    let mut client = Client::new(3_000_000);
    traffic(&mut sim, &mut client, &mut rng, 3, 3_000_000);
    sim.arbiter().set_unreachable(true);
    sim.cut(true, true);
    let both_waiting = |s: &PairSim| {
        *s.primary.phase() == Phase::Arbitrating && *s.backup.phase() == Phase::Arbitrating
    };
    assert!(
        tick_until(&mut sim, &mut client, 100_000, |s, _| both_waiting(s)),
        "seed {seed:#x}: {}",
        describe(&sim)
    );
    let emitted = sim.sink().all().len();
    // A long time (many retries) without a verdict: nobody is live, nothing leaves.
    let until = sim.now() + 100_000_000;
    while sim.now() < until {
        client.tick(&mut sim);
        assert!(both_waiting(&sim), "seed {seed:#x}: {}", describe(&sim));
        assert!(sim.live_sides().is_empty(), "seed {seed:#x}");
    }
    assert_eq!(
        sim.sink().all().len(),
        emitted,
        "seed {seed:#x}: output without a verdict"
    );
    for side in [Side::Primary, Side::Backup] {
        let attempts: Vec<u32> = sim
            .trace()
            .notices
            .iter()
            .filter(|(_, s, _)| *s == side)
            .filter_map(|(_, _, n)| match n {
                Notice::ArbiterUnreachable { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        assert!(
            attempts.len() >= 5,
            "seed {seed:#x}: {side:?} retried {attempts:?}"
        );
        assert!(
            attempts.windows(2).all(|w| w[1] == w[0] + 1),
            "seed {seed:#x}: {attempts:?}"
        );
    }
    // Reachable again: exactly one goes live.
    sim.arbiter().set_unreachable(false);
    assert!(
        tick_until(&mut sim, &mut client, 100_000, |s, _| s.primary.is_halted()
            || s.backup.is_halted()),
        "seed {seed:#x}: {}",
        describe(&sim)
    );
    for _ in 0..1_000 {
        client.tick(&mut sim);
    }
    assert_eq!(
        sim.live_sides().len(),
        1,
        "seed {seed:#x}: {}",
        describe(&sim)
    );
    sim.sink()
        .deduplicated()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
}

#[test]
fn unreachable_arbiter_means_nobody_goes_live() {
    for seed in seeds(0xa4b, 8) {
        unreachable_arbiter_case(seed);
    }
}

fn backup_crash_case(seed: u64) {
    let mut rng = case_rng(seed);
    let mut sim = service_sim(seed, &mut rng, |_| {});
    let mut client = Client::new(3_000_000);
    let n = rng.gen_range(0..=6);
    traffic(&mut sim, &mut client, &mut rng, n, 5_000_000);
    sim.crash_backup();
    assert!(
        tick_until(&mut sim, &mut client, 100_000, |s, _| s.primary.is_live()),
        "seed {seed:#x}: {}",
        describe(&sim)
    );
    assert!(
        sim.trace()
            .notices
            .iter()
            .any(|(_, s, n)| *s == Side::Primary && matches!(n, Notice::WentAlone { .. })),
        "seed {seed:#x}"
    );
    let alone_at = sim.now();
    let logged = sim.primary.last_seq();
    let shipped = sim.trace().records.len();
    // It keeps serving, alone and unlogged.
    let first_new = client.next_id;
    traffic(&mut sim, &mut client, &mut rng, 5, 5_000_000);
    assert!(
        tick_until(&mut sim, &mut client, 100_000, |_, c| c.pending.is_empty()),
        "seed {seed:#x}: {:?}",
        client.pending
    );
    assert!((first_new..client.next_id).all(|id| client.answered.contains(&id)));
    assert_eq!(
        sim.primary.last_seq(),
        logged,
        "seed {seed:#x}: still logging"
    );
    assert_eq!(
        sim.trace().records.len(),
        shipped,
        "seed {seed:#x}: still shipping"
    );
    assert_eq!(sim.live_sides(), vec![Side::Primary]);
    let late = sim
        .sink()
        .all()
        .into_iter()
        .filter(|e| e.at > alone_at && e.side == "primary")
        .count();
    assert!(
        late >= 5,
        "seed {seed:#x}: {late} outputs after going alone"
    );
    let dedup = sim
        .sink()
        .deduplicated()
        .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    assert_counters_continuous(seed, &dedup);
    assert!(
        sim.errors().is_empty(),
        "seed {seed:#x}: {:?}",
        sim.errors()
    );
}

#[test]
fn backup_crash_leaves_primary_alone_and_serving() {
    for seed in seeds(0xbc4, 16) {
        backup_crash_case(seed);
    }
}
