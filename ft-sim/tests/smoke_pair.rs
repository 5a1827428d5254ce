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
    assert!(sim.run_until(20_000, |s| s.sink().all().len() >= 11));
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

/// Acknowledging a device interrupt lowers the CPU's interrupt line before the next
/// instruction: without that the guest's handler would be re-entered forever.
#[test]
fn interrupt_ack_lowers_the_line_at_once() {
    use ft_core::{AsyncEvent, EventSource, ExecPoint, Stop};
    use ft_sim::asm::{Assembler, T0, T1, ZERO};
    use ft_sim::cpu::{csr, MIP_MEIP};
    use ft_sim::devices::{id, map, reg};
    use ft_sim::memory::RAM_BASE;
    let mut a = Assembler::with_base(RAM_BASE);
    let spin = a.label();
    a.li(T1, map::NET as i64);
    a.sd(ZERO, T1, reg::NET_ACK as i64);
    a.bind(spin);
    a.addi(T0, T0, 1);
    a.j(spin);
    let img = a.finish().unwrap();
    let mut m = ft_sim::Machine::from_raw(ft_sim::MachineConfig::default(), &img).unwrap();
    m.inject(&AsyncEvent::Interrupt { device: id::NET })
        .unwrap();
    assert_ne!(m.cpu().mip() & MIP_MEIP, 0);
    let _ = csr::MIE;
    // li (2 instructions at most for this address) + the store.
    let mut steps = 0;
    while m.cpu().mip() & MIP_MEIP != 0 && steps < 5 {
        assert_eq!(m.run(m.point().plus(1)).unwrap(), Stop::Reached);
        steps += 1;
    }
    assert_eq!(m.cpu().mip() & MIP_MEIP, 0, "the ack did not lower MEIP");
    assert!(m.point() <= ExecPoint::at(4));
}
