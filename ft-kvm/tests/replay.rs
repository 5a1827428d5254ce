//! Replay equivalence on KVM: a primary VM is recorded through the engine, a second VM
//! in the same process replays the log, and both pass through the same states (the
//! engine checks a full-state digest every few exits) and produce the same outputs.
//! Seeded: every seed is printed, and a failing seed reruns alone with
//! `FT_KVM_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{EngineError, EventSource};
use ft_kvm::guest::{random_workload, SplitMix, WorkloadParams};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("FT_KVM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => default.to_vec(),
    }
}

fn schedule(seed: u64, n: usize, horizon: u64) -> Vec<u64> {
    let mut g = SplitMix::new(seed ^ 0xabcd);
    let mut v: Vec<u64> = (0..n).map(|_| 1 + g.below(horizon)).collect();
    v.sort_unstable();
    v
}

#[test]
fn random_workloads_replay_to_identical_states() {
    if !common::kvm_or_skip("random_workloads_replay_to_identical_states") {
        return;
    }
    for seed in seeds(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) {
        let params = WorkloadParams {
            blocks: 16 + (seed as usize * 7) % 24,
            max_iters: 1000 + (seed as u32 * 7919) % 50_000,
            ..WorkloadParams::default()
        };
        let w = random_workload(seed, &params).unwrap();
        let irqs = schedule(seed, 3 + (seed as usize * 5) % 40, 4_000_000);
        eprintln!(
            "seed {seed}: workload {} bytes, {} timer interrupts",
            w.len(),
            irqs.len()
        );
        let (mut pair, sink) = common::kvm_pair(&w, seed, &irqs);
        let done = pair.run_until(200_000, |p| {
            p.replay_complete() || !p.trace().errors.is_empty()
        });
        let t = pair.trace().clone();
        assert!(
            t.errors.is_empty(),
            "seed {seed}: engine errors {:?}",
            t.errors
        );
        assert!(
            done,
            "seed {seed}: did not finish (primary {:?}, backup {:?})",
            pair.primary.phase(),
            pair.backup.phase()
        );
        assert_eq!(pair.primary.exit_code(), Some(0), "seed {seed}");
        let pd = pair.primary.source_mut().digest();
        let bd = pair.backup.source_mut().digest();
        assert_eq!(pd, bd, "seed {seed}: final digests differ");
        let primary_out = common::released(&sink, "primary");
        let backup_out: Vec<String> = pair
            .backup
            .world()
            .replayed_outputs()
            .iter()
            .map(|o| String::from_utf8_lossy(&o.data).into_owned())
            .collect();
        assert_eq!(primary_out, backup_out, "seed {seed}: outputs differ");
        let st = pair.backup.stats();
        let ms = pair.primary.source().stats();
        eprintln!(
            "seed {seed}: {} exits, {} records, {} digests checked, {} injections, outputs {}, last {:?}",
            pair.primary.source().point().count,
            t.records.len(),
            st.digests_checked,
            ms.injections,
            primary_out.len(),
            primary_out.last()
        );
        assert!(st.digests_checked > 0, "seed {seed}: no digest was checked");
    }
}

#[test]
fn rdtsc_in_guest_state_is_reported_as_divergence() {
    if !common::kvm_or_skip("rdtsc_in_guest_state_is_reported_as_divergence") {
        return;
    }
    let seed = 77;
    let params = WorkloadParams {
        rdtsc: true,
        blocks: 40,
        ..WorkloadParams::default()
    };
    let w = random_workload(seed, &params).unwrap();
    let (mut pair, _sink) = common::kvm_pair(&w, seed, &[]);
    pair.run_until(200_000, |p| {
        p.replay_complete() || !p.trace().errors.is_empty()
    });
    let errs = &pair.trace().errors;
    eprintln!("errors: {errs:?}");
    assert!(
        errs.iter().any(|(_, side, e)| *side == ft_kvm::pair::Side::Backup
            && matches!(e, EngineError::Divergence { detail, .. } if detail.contains("digest"))),
        "rdtsc reached guest state but replay did not report a digest divergence"
    );
}
