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

/// One case; whether the program was long enough to tamper with.
fn divergence_case(seed: u64, tamper: Tamper) -> bool {
    let family = if seed.is_multiple_of(2) {
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
    // A dry run (deterministic: same seed, same run) tells how long the program is,
    // and how far it surely is from its final hash: the last instruction count seen
    // with the program counter still below the epilogue (sampled once per tick).
    let mut dry = build_case(seed, &params, n_events, horizon, tweak);
    let epilogue = dry.prog.epilogue;
    let mut before_epilogue = 0;
    let ended = dry.sim.run_until(400_000, |s| {
        let cpu = s.primary.source().cpu();
        if cpu.pc() < epilogue {
            before_epilogue = cpu.instret();
        }
        s.primary.exit_code().is_some()
    });
    assert!(
        ended && run_to_end(&mut dry.sim, 400_000),
        "seed {seed:#x}: dry run: {}",
        describe(&dry.sim)
    );
    let total = dry.sim.primary.source().cpu().instret();
    let interval = dry.sim.config().engine.digest_interval;
    let slice = dry.sim.config().engine.slice;

    let mut case = build_case(seed, &params, n_events, horizon, tweak);
    // Tamper while at least two digest intervals of execution remain; or, for the
    // data table, before the final hash starts (the body may still read the byte, the
    // epilogue surely does). The backup may pass `at` by up to a slice before the
    // tampering lands.
    let limit = match tamper {
        Tamper::UnusedByteWithDigests => total.checked_sub(2 * interval + slice),
        Tamper::DataTableWithoutDigests => before_epilogue.checked_sub(slice),
    };
    let Some(limit) = limit else {
        // Too short a program for this tampering to be checkable.
        return false;
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
    true
}

/// Run `tamper` on the seeds of `base`: most cases must be long enough to check.
fn divergence_cases(base: u64, count: u64, tamper: Tamper) {
    let (mut ran, mut tried) = (0u64, 0u64);
    for seed in seeds(base, count) {
        tried += 1;
        ran += u64::from(divergence_case(seed, tamper));
    }
    assert!(
        ran * 4 >= tried * 3,
        "only {ran} of {tried} programs were long enough to tamper with"
    );
}

#[test]
fn tampered_unused_memory_is_caught_by_the_next_digest() {
    divergence_cases(0xd17e, 80, Tamper::UnusedByteWithDigests);
}

#[test]
fn tampered_data_is_caught_by_outputs_without_digests() {
    divergence_cases(0xd17f, 80, Tamper::DataTableWithoutDigests);
}

/// A case whose tampering (bit 63 of a data-table dword the body had also loaded into
/// a register) once left the program's final hash unchanged: the two differences
/// cancelled, because the hash only carried differences upwards. The generator's hash
/// now folds high bits down after every step (`progen::mix_down`).
#[test]
fn regression_tamper_lands_before_the_final_hash() {
    assert!(divergence_case(
        0x3abc_25ce_e973_6836,
        Tamper::DataTableWithoutDigests
    ));
}

/// A case where the backup, with a slice longer than the digest interval, passed the
/// tampering point by more than the test's model allowed: past the last digest.
#[test]
fn regression_tamper_leaves_a_digest_point_ahead() {
    assert!(divergence_case(
        0x4867_db39_fc5e_852d,
        Tamper::UnusedByteWithDigests
    ));
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
