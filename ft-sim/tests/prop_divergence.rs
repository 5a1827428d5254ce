//! Divergence is detected loudly: tampering with the backup's memory halts it with a
//! `REPLAY DIVERGENCE at record N (@P)` naming a real record and its point, and the
//! primary goes on alone.
//!
//! Rerun one case: `FT_SEED=<seed> cargo test -p ft-sim --release --test
//! prop_divergence -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use ft_core::{Event, HaltReason, Notice, Phase};
use ft_sim::memory::RAM_BASE;
use ft_sim::progen::Family;
use ft_sim::Side;
use prop_support::*;
use rand::Rng;

/// Parse "REPLAY DIVERGENCE at record N (@P): detail".
fn parse_divergence(msg: &str) -> Option<(u64, u64, String)> {
    let rest = msg.strip_prefix("REPLAY DIVERGENCE at record ")?;
    let (seq, rest) = rest.split_once(" (@")?;
    let (point, detail) = rest.split_once("): ")?;
    Some((seq.parse().ok()?, point.parse().ok()?, detail.to_string()))
}

/// How a case tampers with the backup.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// A byte no program touches, with digests on: the next digest catches it.
    UnusedByteWithDigests,
    /// A byte of the constant data table, with digests off: the final hash (an
    /// output, then the exit code) catches it.
    DataTableWithoutDigests,
}

fn divergence_case(seed: u64, tamper: Tamper) {
    let family = if seed % 2 == 0 {
        Family::Stream
    } else {
        Family::Devices
    };
    let params = random_params(seed, family);
    let mut rng = case_rng(seed ^ 3);
    let n_events = rng.gen_range(0..=30);
    let horizon = rng.gen_range(200_000..=3_000_000);
    let tweak = |c: &mut ft_sim::PairConfig| {
        if matches!(tamper, Tamper::DataTableWithoutDigests) {
            c.engine.digest_interval = 0;
        }
    };
    // A dry run (deterministic: same seed, same run) tells how long the program is.
    let mut dry = build_case(seed, &params, n_events, horizon, tweak);
    assert!(
        run_to_end(&mut dry.sim, 400_000),
        "seed {seed:#x}: dry run: {}",
        describe(&dry.sim)
    );
    let total = dry.sim.primary.source().cpu().instret();
    let interval = dry.sim.config().engine.digest_interval;

    let mut case = build_case(seed, &params, n_events, horizon, tweak);
    // Tamper while at least two digest intervals of execution remain.
    let limit = match tamper {
        Tamper::UnusedByteWithDigests => total.saturating_sub(2 * interval),
        Tamper::DataTableWithoutDigests => total / 2,
    };
    let at = rng.gen_range(0..=limit);
    assert!(
        case.sim
            .run_until(400_000, |s| s.backup.source().cpu().instret() >= at),
        "seed {seed:#x}"
    );
    let (addr, what) = match tamper {
        Tamper::UnusedByteWithDigests => {
            (RAM_BASE + 0xE_0000 + rng.gen_range(0..0x1_0000), "digest")
        }
        Tamper::DataTableWithoutDigests => (
            case.prog.data_addr + rng.gen_range(0..case.prog.data_len),
            "output or exit",
        ),
    };
    let off = (addr - RAM_BASE) as usize;
    let tampered_at = case.sim.backup.replayed_seq();
    case.sim.backup.source_mut().ram_mut().as_mut_slice()[off] ^= rng.gen_range(1..=255u8);

    let halted = case.sim.run_until(400_000, |s| s.backup.is_halted());
    assert!(
        halted,
        "seed {seed:#x}: tampering at {addr:#x} ({tamper:?}, backup at {at}) went unnoticed: {}",
        describe(&case.sim)
    );
    let Phase::Halted(HaltReason::Diverged(msg)) = case.sim.backup.phase().clone() else {
        panic!(
            "seed {seed:#x}: backup halted for another reason: {:?}",
            case.sim.backup.phase()
        );
    };
    let (n, p, detail) = parse_divergence(&msg)
        .unwrap_or_else(|| panic!("seed {seed:#x}: unexpected divergence text {msg:?}"));
    assert!(
        n > tampered_at,
        "seed {seed:#x}: record {n} was replayed before the tampering"
    );
    let rec = case
        .sim
        .trace()
        .records
        .iter()
        .find(|r| r.seq == n)
        .unwrap_or_else(|| panic!("seed {seed:#x}: {msg}: no record {n} in the log"));
    assert_eq!(
        rec.point.count, p,
        "seed {seed:#x}: {msg}: record {n} is at {}",
        rec.point
    );
    match tamper {
        Tamper::UnusedByteWithDigests => {
            assert!(
                matches!(rec.event, Event::Digest { .. }),
                "seed {seed:#x}: {msg}: {rec:?}"
            );
            assert!(
                detail.contains("state digest mismatch"),
                "seed {seed:#x}: {msg}"
            );
        }
        Tamper::DataTableWithoutDigests => {
            assert!(
                !matches!(rec.event, Event::Digest { .. }),
                "seed {seed:#x}: digests are off, yet {msg}"
            );
        }
    }
    // Loud: a notice and an error, with the same text.
    assert!(
        case.sim
            .trace()
            .notices
            .iter()
            .any(|(_, s, n)| *s == Side::Backup && matches!(n, Notice::Diverged(m) if *m == msg)),
        "seed {seed:#x}: no divergence notice ({what})"
    );
    assert!(
        case.sim
            .errors()
            .iter()
            .any(|(_, s, e)| *s == Side::Backup && *e == msg),
        "seed {seed:#x}: no error {msg:?}: {:?}",
        case.sim.errors()
    );
    assert!(case.sim.diverged(), "seed {seed:#x}");
    // The diverged backup halts for good: it never goes live.
    assert!(
        !case.sim.run_until(20_000, |s| s.backup.is_live()),
        "seed {seed:#x}"
    );
    assert!(case.sim.backup.is_halted(), "seed {seed:#x}");
}

#[test]
fn tampered_unused_memory_is_caught_by_the_next_digest() {
    for seed in seeds(0xd17e, 80) {
        divergence_case(seed, Tamper::UnusedByteWithDigests);
    }
}

#[test]
fn tampered_data_is_caught_by_outputs_without_digests() {
    for seed in seeds(0xd17f, 80) {
        divergence_case(seed, Tamper::DataTableWithoutDigests);
    }
}

/// With its backup diverged, the primary keeps serving: it goes on alone and releases
/// every output.
#[test]
fn primary_goes_alone_after_backup_diverged() {
    for seed in seeds(0xd180, 8) {
        let params = random_params(seed, Family::Devices);
        let mut case = build_case(seed, &params, 10, 1_000_000, |_| {});
        case.sim.backup.source_mut().ram_mut().as_mut_slice()[0xE_0000] ^= 1;
        assert!(
            case.sim.run_until(400_000, |s| s.backup.is_halted()),
            "seed {seed:#x}: {}",
            describe(&case.sim)
        );
        assert!(
            case.sim.run_until(400_000, |s| s.primary.is_live()
                && s.primary.exit_code().is_some()
                && s.primary.held_outputs() == 0),
            "seed {seed:#x}: {}",
            describe(&case.sim)
        );
        assert!(
            case.sim
                .trace()
                .notices
                .iter()
                .any(|(_, s, n)| *s == Side::Primary && matches!(n, Notice::WentAlone { .. })),
            "seed {seed:#x}"
        );
        assert_eq!(
            case.sim.primary.stats().released,
            case.sim.primary.stats().outputs,
            "seed {seed:#x}"
        );
        case.sim
            .sink()
            .deduplicated()
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    }
}

/// Rerun one seed from `FT_SEED` in both tamper modes.
#[test]
fn replay_seed() {
    let seed = env_seed().unwrap_or(0xabcdef);
    divergence_case(seed, Tamper::UnusedByteWithDigests);
    divergence_case(seed, Tamper::DataTableWithoutDigests);
}
