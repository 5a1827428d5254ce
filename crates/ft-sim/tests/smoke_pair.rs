//! Smoke test: the service guest runs replicated on a simulated pair.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use bytes::Bytes;
use ft_sim::guests;
use ft_sim::{PairConfig, PairSim};

#[test]
fn service_runs_replicated() {
    let img = guests::service().unwrap();
    let mut sim = PairSim::new(PairConfig::default(), &img).unwrap();
    for i in 0..10u64 {
        sim.send_packet(500_000 + i * 300_000, Bytes::from(format!("hello {i}")));
    }
    let ok = sim.run_until(20_000, |s| s.sink().all().len() >= 21);
    for (t, side, n) in &sim.trace().notices {
        eprintln!("{t} {side:?} {n:?}");
    }
    eprintln!("errors: {:?}", sim.errors());
    for e in sim.sink().all() {
        eprintln!(
            "{:?} {:?} {:?}",
            e.side,
            e.output.seq,
            String::from_utf8_lossy(&e.output.data)
        );
    }
    eprintln!(
        "primary {:?} backup {:?} stats {:?} {:?}",
        sim.primary.phase(),
        sim.backup.phase(),
        sim.primary.stats(),
        sim.backup.stats()
    );
    assert!(ok);
    assert!(sim.errors().is_empty());
}

#[test]
fn backup_takes_over_after_primary_crash() {
    let img = guests::service().unwrap();
    let mut sim = PairSim::new(PairConfig::default(), &img).unwrap();
    for i in 0..5u64 {
        sim.send_packet(500_000 + i * 300_000, Bytes::from(format!("hello {i}")));
    }
    sim.run_until(20_000, |s| s.sink().all().len() >= 6);
    sim.crash_primary();
    assert!(sim.run_until(100_000, |s| s.backup.is_live()));
    for i in 5..10u64 {
        sim.send_packet(100_000 + i * 300_000, Bytes::from(format!("hello {i}")));
    }
    sim.run_until(100_000, |s| {
        s.sink().deduplicated().map(|d| d.len()).unwrap_or(0) >= 21
    });
    for (t, side, n) in &sim.trace().notices {
        eprintln!("{t} {side:?} {n:?}");
    }
    for e in sim.sink().all() {
        eprintln!(
            "{:?} {:?} {} {:?}",
            e.side,
            e.output.seq,
            e.possible_repeat,
            String::from_utf8_lossy(&e.output.data)
        );
    }
    eprintln!("errors: {:?}", sim.errors());
    let d = sim.sink().deduplicated().unwrap();
    assert!(d.len() >= 21, "{}", d.len());
}
