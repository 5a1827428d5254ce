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
