//! Failover on KVM: the primary VM's side is killed at a seeded moment, the backup VM
//! goes live through the same engine and in-process arbiter as ft-sim, the guest runs
//! to its end, and the output stream is consistent and exactly-once after dedupe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{EventSource, Notice};
use ft_kvm::guest::{service_workload, SplitMix};
use ft_kvm::pair::Side;

#[test]
fn backup_vm_takes_over_and_the_guest_finishes() {
    if !common::kvm_or_skip("backup_vm_takes_over_and_the_guest_finishes") {
        return;
    }
    let rounds = 12;
    let w = service_workload(rounds).unwrap();
    for seed in [21u64, 22, 23] {
        let crash_at = 10 + SplitMix::new(seed).below(120);
        eprintln!("seed {seed}: crash the primary after {crash_at} steps");
        let (mut pair, sink) = common::kvm_pair(&w, seed, &[]);
        pair.run_until(crash_at, |_| false);
        pair.crash_primary();
        let crashed_point = pair.primary.source().point();
        let finished = pair.run_until(400_000, |p| {
            p.backup.exit_code().is_some() || !p.trace().errors.is_empty()
        });
        assert!(
            pair.trace().errors.is_empty(),
            "seed {seed}: {:?}",
            pair.trace().errors
        );
        assert!(
            finished,
            "seed {seed}: backup phase {:?}",
            pair.backup.phase()
        );
        assert!(
            pair.backup.is_live(),
            "seed {seed}: the backup did not go live"
        );
        assert_eq!(pair.backup.exit_code(), Some(0));
        let went_live = pair.trace().notices.iter().find_map(|(t, s, n)| match n {
            Notice::WentLive {
                point,
                resent_outputs,
                ..
            } if *s == Side::Backup => Some((*t, *point, *resent_outputs)),
            _ => None,
        });
        eprintln!("seed {seed}: primary died at {crashed_point}, backup went live {went_live:?}");
        let outs = sink
            .deduplicated()
            .expect("outputs consistent after dedupe");
        let text: Vec<String> = outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.data).into_owned())
            .collect();
        let rounds_seen: Vec<&String> = text.iter().filter(|l| l.starts_with("round ")).collect();
        assert_eq!(rounds_seen.len(), rounds as usize, "seed {seed}: {text:?}");
        for (i, l) in rounds_seen.iter().enumerate() {
            assert_eq!(
                **l,
                format!("round {i:016x}\n"),
                "seed {seed}: rounds out of order"
            );
        }
        assert!(text.last().is_some_and(|l| l.starts_with("ticks ")));
    }
}
