//! Fault injection between two engines, in fake time and without threads, so every run
//! is a pure function of its seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The soak machinery of every property suite (FT_SOAK, FT_SEED_BASE, FT_SOAK_SECS,
// FT_SEED): one file, shared with ft-sim's suites.
#[path = "../../ft-sim/tests/prop_support/soak.rs"]
mod soak;

mod common;

use bytes::Bytes;
use common::*;
use ft_core::log_codec;
use ft_core::{
    ChannelError, Config, EngineError, Event, ExecPoint, HaltReason, LogChannel, LogReceiver,
    NodeId, Notice, Phase, Record,
};
use ft_transport::{
    link_pair, BackupEnd, Delay, Direction, FaultPlan, Faults, FaultyLink, FrameLink, MemoryLink,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DT: u64 = 20_000;
const TICK: u64 = 100_000;

type FaultyPump = Pump<FaultyLink<MemoryLink>, MemoryLink>;

fn faulty_pump(seed: u64, plan: FaultPlan, cfg_p: Config, cfg_b: Config) -> FaultyPump {
    let p = ToyParams::default();
    let (pl, bl) = link_pair(64);
    let pl = FaultyLink::new(pl, seed, plan).unwrap();
    Pump::new(
        primary(cfg_p, p, TICK, 0),
        backup(cfg_b, p, TICK, 0),
        pl,
        bl,
        0,
        DT,
    )
}

fn out(f: Faults) -> FaultPlan {
    FaultPlan {
        outbound: f,
        inbound: Faults::none(),
    }
}

fn stats(p: &FaultyPump, dir: Direction) -> ft_transport::FaultStats {
    p.pend.link().stats(dir)
}

#[test]
fn baseline_without_faults_replays_everything() {
    let mut p = faulty_pump(0, FaultPlan::default(), config(1), config(2));
    assert!(p.run_until(20_000, |p| p.both_finished()), "did not finish");
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(p.backup.stats().replayed, p.primary.last_seq());
    assert!(p.backup.stats().digests_checked > 0);
    assert_eq!(
        p.primary.source().clone().digest_now(),
        p.backup.source().clone().digest_now()
    );
    assert_eq!(p.primary.exit_code(), p.backup.exit_code());
    let w = p.primary.world();
    assert_eq!(w.emitted.len() as u64, p.primary.stats().outputs);
    assert!(w.emitted.len() > 500);
    assert!(
        p.backup.world().emitted.is_empty(),
        "a replaying backup emits nothing"
    );
}

/// Small extension to read a digest from a clone without needing `&mut`.
trait DigestNow {
    fn digest_now(self) -> u64;
}
impl DigestNow for Toy {
    fn digest_now(mut self) -> u64 {
        ft_core::EventSource::digest(&mut self).unwrap()
    }
}

#[test]
fn corrupt_frames_are_typed_errors_both_ways() {
    let (mut seen_out, mut seen_in, mut ran) = (0, 0, 0);
    for seed in soak::seeds(0xfa17_0001, 48) {
        ran += 1;
        let plan = FaultPlan {
            outbound: Faults {
                corrupt: 0.02,
                ..Faults::none()
            },
            inbound: Faults {
                corrupt: 0.02,
                ..Faults::none()
            },
        };
        let mut p = faulty_pump(seed, plan, config(1), config(2));
        p.run_until(3_000, |p| p.both_finished() || p.errors.len() >= 2);
        for (round, who, f) in &p.errors {
            assert!(
                matches!(f, Failure::Channel(ChannelError::Corrupt(_))),
                "seed {seed}: round {round}: {who:?} saw {f:?}, expected only corruption"
            );
        }
        if stats(&p, Direction::Outbound).corrupted > 0 {
            seen_out += 1;
            assert!(
                matches!(
                    p.first_error(Who::Backup),
                    Some(Failure::Channel(ChannelError::Corrupt(_)))
                ),
                "seed {seed}: a corrupted record frame went unnoticed: {:?}",
                p.errors
            );
        }
        if stats(&p, Direction::Inbound).corrupted > 0 {
            seen_in += 1;
            assert!(
                matches!(
                    p.first_error(Who::Primary),
                    Some(Failure::Channel(ChannelError::Corrupt(_)))
                ),
                "seed {seed}: a corrupted ack frame went unnoticed: {:?}",
                p.errors
            );
        }
    }
    // Corruption hits a frame in most cases (2% per frame, hundreds of frames).
    if ran >= 20 {
        assert!(
            seen_out * 4 > ran && seen_in * 4 > ran,
            "corruption seen in {seen_out} / {seen_in} of {ran} cases"
        );
    }
}

#[test]
fn every_single_bit_flip_and_random_garbage_is_corrupt() {
    let recs: Vec<Record> = (1..=5)
        .map(|i| Record {
            seq: i,
            point: ExecPoint::at(i * 100),
            event: Event::Input {
                device: ft_core::DeviceId(1),
                data: Bytes::from(vec![i as u8; 8]),
            },
        })
        .collect();
    let mut frame = Vec::new();
    log_codec::encode_records(&recs, &mut frame).unwrap();
    for i in 0..frame.len() {
        for bit in 0..8 {
            let mut bad = frame.clone();
            bad[i] ^= 1 << bit;
            let (mut a, b) = link_pair(1);
            let mut end = BackupEnd::new(b);
            a.try_send_frame(Bytes::from(bad)).unwrap();
            let r = end.try_recv_records();
            assert!(
                matches!(r, Err(ChannelError::Corrupt(_))),
                "byte {i} bit {bit}: {r:?}"
            );
        }
    }
    let seed = 0xC0FFEE;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for n in 0..2_000 {
        let len = rng.gen_range(0..64);
        let mut junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if n % 2 == 0 && junk.len() >= 4 {
            junk[..4].copy_from_slice(&log_codec::MAGIC);
        }
        let (mut a, b) = link_pair(1);
        let mut end = ft_transport::PrimaryEnd::new(b);
        a.try_send_frame(Bytes::from(junk.clone())).unwrap();
        let r = end.try_recv_ack();
        assert!(
            matches!(r, Err(ChannelError::Corrupt(_))),
            "seed {seed}: junk {junk:02x?} gave {r:?}"
        );
    }
}

fn expect_gap(what: &str, f: Faults) {
    for seed in soak::seeds(0xfa17_0002, 16) {
        let mut p = faulty_pump(seed, out(f.clone()), config(1), config(2));
        p.run_until(5_000, |p| !p.errors.is_empty() || p.both_finished());
        let s = stats(&p, Direction::Outbound);
        assert!(
            matches!(
                p.first_error(Who::Backup),
                Some(Failure::Engine(EngineError::SequenceGap { expected, found }))
                    if found > expected
            ),
            "seed {seed}: {what}: expected a sequence gap at the backup, got {:?} ({s:?})",
            p.errors
        );
        assert!(
            p.errors.iter().all(|e| e.1 == Who::Backup),
            "seed {seed}: {what}: {:?}",
            p.errors
        );
    }
}

#[test]
fn dropped_frames_are_sequence_gaps() {
    expect_gap(
        "drop",
        Faults {
            drop: 0.1,
            ..Faults::none()
        },
    );
}

#[test]
fn reordered_frames_are_sequence_gaps() {
    expect_gap(
        "reorder",
        Faults {
            reorder: 0.1,
            ..Faults::none()
        },
    );
}

#[test]
fn frames_delayed_by_later_frames_are_sequence_gaps() {
    expect_gap(
        "delay",
        Faults {
            delay: 0.1,
            delay_by: Delay::Frames(3),
            ..Faults::none()
        },
    );
}

#[test]
fn duplicates_are_ignored_by_the_engine() {
    for seed in soak::seeds(0xfa17_0003, 8) {
        let plan = FaultPlan {
            outbound: Faults {
                duplicate: 0.3,
                ..Faults::none()
            },
            inbound: Faults {
                duplicate: 0.3,
                ..Faults::none()
            },
        };
        let mut p = faulty_pump(seed, plan, config(1), config(2));
        assert!(
            p.run_until(20_000, |p| p.both_finished()),
            "seed {seed}: did not finish"
        );
        assert!(p.errors.is_empty(), "seed {seed}: {:?}", p.errors);
        let s = stats(&p, Direction::Outbound);
        assert!(s.duplicated > 10, "seed {seed}: {s:?}");
        assert!(p.backup.stats().duplicates > 0, "seed {seed}");
        assert_eq!(
            p.backup.stats().replayed,
            p.primary.last_seq(),
            "seed {seed}"
        );
        assert_eq!(
            p.primary.world().emitted.len() as u64,
            p.primary.stats().outputs,
            "seed {seed}"
        );
    }
}

fn fast_detect(node: u64) -> Config {
    Config {
        heartbeat_interval: 500_000,
        peer_timeout: 2_000_000,
        ..config(node)
    }
}

#[test]
fn cut_makes_the_primary_look_dead_and_the_backup_takes_over() {
    let seed = 3;
    let plan = out(Faults {
        cut_after: Some(40),
        ..Faults::none()
    });
    let mut p = faulty_pump(seed, plan, fast_detect(1), fast_detect(2));
    let done = p.run_until(50_000, |p| {
        p.primary.is_halted() && p.backup.exit_code().is_some() && p.backup.is_live()
    });
    assert!(
        done,
        "seed {seed}: primary {:?}, backup {:?}",
        p.primary.phase(),
        p.backup.phase()
    );
    assert!(p.errors.is_empty(), "seed {seed}: {:?}", p.errors);
    assert!(stats(&p, Direction::Outbound).cut > 0);
    let backup_notices: Vec<&Notice> = p
        .notices
        .iter()
        .filter(|n| n.0 == Who::Backup)
        .map(|n| &n.2)
        .collect();
    for want in ["PeerSuspected", "Drained", "ArbiterWon", "WentLive"] {
        assert!(
            backup_notices
                .iter()
                .any(|n| format!("{n:?}").starts_with(want)),
            "seed {seed}: backup never noticed {want}: {backup_notices:?}"
        );
    }
    assert_eq!(
        *p.primary.phase(),
        Phase::Halted(HaltReason::LostArbitration { winner: NodeId(2) }),
        "seed {seed}"
    );
    assert_eq!(p.arbiter.holder(p.backup.config().pair), Some(NodeId(2)));
    check_outputs(p.primary.world(), p.backup.world(), &format!("seed {seed}"));
}

/// Regression test: a backup that goes live past a digest point must not ask its
/// machine to run backwards to a stale digest point (fixed in ft-core 5da9c3b).
#[test]
fn backup_goes_live_past_a_digest_point() {
    let p = ToyParams::default();
    let (pl, bl) = link_pair(64);
    let pl = FaultyLink::new(pl, 0, FaultPlan::default()).unwrap();
    let handle = pl.handle();
    let mut pump = Pump::new(
        primary(fast_detect(1), p, TICK, 0),
        backup(fast_detect(2), p, TICK, 0),
        pl,
        bl,
        0,
        DT,
    );
    pump.run_until(20_000, |p| {
        ft_core::EventSource::point(p.backup.source()) > ExecPoint::at(6_000)
    });
    handle.cut(Direction::Outbound);
    pump.run_until(50_000, |p| p.backup.is_live() || p.backup.is_halted());
    pump.run_until(100, |_| false);
    assert!(
        !pump.backup.is_halted(),
        "the backup went live and then halted: {:?}",
        pump.backup.phase()
    );
}

#[test]
fn cut_both_ways_leaves_exactly_one_live_side() {
    for seed in 0..4u64 {
        let mut p = faulty_pump(seed, FaultPlan::default(), fast_detect(1), fast_detect(2));
        let handle = p.pend.link().handle();
        let cut_round = 200 + seed * 37;
        p.run_until(cut_round, |_| false);
        handle.cut_both();
        let done = p.run_until(50_000, |p| {
            (p.primary.is_halted() || p.primary.is_live())
                && (p.backup.is_halted() || p.backup.is_live())
        });
        assert!(
            done,
            "seed {seed}: primary {:?}, backup {:?}",
            p.primary.phase(),
            p.backup.phase()
        );
        assert!(
            p.primary.is_live() != p.backup.is_live(),
            "seed {seed}: split brain or no survivor: {:?} / {:?}",
            p.primary.phase(),
            p.backup.phase()
        );
        // Let the survivor run to the end, then check the outside world.
        p.run_until(50_000, |p| {
            p.primary.exit_code().is_some() && p.primary.is_live()
                || p.backup.exit_code().is_some() && p.backup.is_live()
        });
        check_outputs(p.primary.world(), p.backup.world(), &format!("seed {seed}"));
    }
}

fn mixed(seed: u64) -> FaultyPump {
    let f = Faults {
        drop: 0.02,
        corrupt: 0.01,
        duplicate: 0.05,
        reorder: 0.02,
        delay: 0.02,
        delay_by: Delay::Frames(2),
        cut_after: None,
    };
    let plan = FaultPlan {
        outbound: f.clone(),
        inbound: f,
    };
    let mut p = faulty_pump(seed, plan, fast_detect(1), fast_detect(2));
    p.run_until(20_000, |p| {
        p.both_finished()
            || (p.primary.is_halted() || p.primary.is_live())
                && (p.backup.is_halted() || p.backup.is_live())
                && (p.primary.exit_code().is_some() || p.backup.exit_code().is_some())
    });
    p
}

fn fingerprint(p: &FaultyPump) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{}",
        p.errors,
        p.notices,
        stats(p, Direction::Outbound),
        stats(p, Direction::Inbound),
        p.primary.stats(),
        p.backup.stats(),
        p.backup.world().emitted,
        p.rounds
    )
}

#[test]
fn same_seed_same_faults_same_outcome() {
    let mut distinct = std::collections::BTreeSet::new();
    for seed in [1u64, 2, 3, 4] {
        let a = mixed(seed);
        let b = mixed(seed);
        assert_eq!(
            fingerprint(&a),
            fingerprint(&b),
            "seed {seed}: not deterministic"
        );
        assert!(
            a.primary.is_live() != a.backup.is_live() || a.both_finished(),
            "seed {seed}: {:?} / {:?}",
            a.primary.phase(),
            a.backup.phase()
        );
        check_outputs(a.primary.world(), a.backup.world(), &format!("seed {seed}"));
        distinct.insert(fingerprint(&a));
    }
    assert!(distinct.len() > 1, "different seeds gave identical runs");
}

#[test]
fn cut_inbound_at_the_primary_hides_the_backup() {
    // The backup's acks never arrive: the primary suspects it, wins the arbiter and
    // goes on alone; the backup's records stop, and it loses.
    let seed = 5;
    let plan = FaultPlan {
        outbound: Faults::none(),
        inbound: Faults {
            cut_after: Some(10),
            ..Faults::none()
        },
    };
    let mut p = faulty_pump(seed, plan, fast_detect(1), fast_detect(2));
    let done = p.run_until(50_000, |p| {
        p.primary.is_live() && p.primary.exit_code().is_some() && p.backup.is_halted()
    });
    assert!(
        done,
        "seed {seed}: primary {:?}, backup {:?}",
        p.primary.phase(),
        p.backup.phase()
    );
    assert!(p
        .notices
        .iter()
        .any(|n| n.0 == Who::Primary && matches!(n.2, Notice::WentAlone { .. })));
    check_outputs(p.primary.world(), p.backup.world(), &format!("seed {seed}"));
}
