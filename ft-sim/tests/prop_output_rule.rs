//! The output rule: no output leaves before the backup has the records behind it. The
//! checker finds no violation in normal runs, and finds one when the gate is off.
//!
//! Rerun one case: `FT_SEED=<seed> cargo test -p ft-sim --release --test
//! prop_output_rule -- --nocapture` (every test of this file then runs just that seed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use ft_core::Event;
use ft_sim::progen::Family;
use ft_sim::{guests, Machine, MachineConfig, PairConfig, PairSim};
use prop_support::*;
use rand::Rng;

fn program_case(seed: u64, enforce: bool) -> Case {
    let family = if seed % 2 == 0 {
        Family::Devices
    } else {
        Family::Stream
    };
    let params = random_params(seed, family);
    let mut case = build_case(seed, &params, 20, 2_000_000, |c: &mut PairConfig| {
        c.engine.enforce_output_rule = enforce;
        c.link_latency = c.link_latency.max(1_000);
    });
    assert!(
        run_to_end(&mut case.sim, 400_000),
        "seed {seed:#x}: {}",
        describe(&case.sim)
    );
    case
}

fn service_case(seed: u64, enforce: bool) -> PairSim {
    let mut rng = case_rng(seed);
    let mut cfg = random_config(&mut rng, seed);
    cfg.engine.enforce_output_rule = enforce;
    cfg.link_latency = cfg.link_latency.max(1_000);
    let m = Machine::from_raw(MachineConfig::default(), &guests::service().unwrap()).unwrap();
    let mut sim = PairSim::with_machine(cfg, m);
    let mut client = Client::new(3_000_000);
    for _ in 0..rng.gen_range(2..=8) {
        let d = rng.gen_range(0..2_000_000);
        client.request(&mut sim, d);
    }
    for _ in 0..20_000 {
        if client.pending.is_empty() {
            break;
        }
        client.tick(&mut sim);
    }
    assert!(
        client.pending.is_empty(),
        "seed {seed:#x}: {}",
        describe(&sim)
    );
    sim
}

#[test]
fn output_rule_holds_in_normal_runs() {
    for seed in seeds(0x0a7, 60) {
        let case = program_case(seed, true);
        let released = case.sim.primary_released().len();
        assert_eq!(
            case.sim.check_output_rule(),
            Ok(released),
            "seed {seed:#x}: {}",
            describe(&case.sim)
        );
        assert!(released > 0, "seed {seed:#x}");
        // Independently of the checker: every released output's record went out on
        // the link at least one link latency before the release.
        let latency = case.sim.config().link_latency;
        for e in case.sim.sink().all() {
            let rec = case
                .sim
                .trace()
                .records
                .iter()
                .position(|r| matches!(r.event, Event::Output { seq, .. } if seq == e.output.seq))
                .unwrap();
            let seq = case.sim.trace().records[rec].seq;
            let received_at = case
                .sim
                .trace()
                .backup_received
                .iter()
                .find(|(_, s)| *s >= seq)
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("seed {seed:#x}: record {seq} never received"));
            assert!(
                received_at <= e.at && received_at >= latency,
                "seed {seed:#x}: output #{} released at {} before its record arrived at {received_at}",
                e.output.seq.0,
                e.at
            );
        }
        let sim = service_case(seed, true);
        let n = sim
            .check_output_rule()
            .unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
        assert!(n > 0, "seed {seed:#x}");
    }
}

#[test]
fn checker_catches_a_broken_gate() {
    for seed in seeds(0x0a8, 60) {
        let case = program_case(seed, false);
        let err = case.sim.check_output_rule();
        assert!(
            matches!(&err, Err(m) if m.contains("was released at")),
            "seed {seed:#x}: gate off, yet {err:?}"
        );
        let sim = service_case(seed, false);
        assert!(sim.check_output_rule().is_err(), "seed {seed:#x}");
    }
}
