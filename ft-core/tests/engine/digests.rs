//! State digests: logged at every multiple of `digest_interval` the guest passes, even
//! when a synchronous stop lands exactly on it (the regression test of the fix in
//! recorder.rs: the old code restarted the schedule there and skipped the digest), and
//! checked by the backup, which halts loudly on a mismatch.

use bytes::Bytes;
use ft_core::{EngineError, Event, EventSource, ExecPoint, HaltReason, IoKind, Phase};

use crate::support::*;
use crate::{cfg, digest_points};

/// An event every 1000 instructions, each kind of stop landing on a digest point
/// (interval 5000): k % 4 == 1 an I/O start retiring at 1000k, 2 an input at 1000k - 1
/// completing at 1000k, 3 an input at 1000k (the point is reached first), 0 an output
/// retiring at 1000k. The guest ends at 40 500.
fn boundary_script() -> Script {
    let mut ev = Vec::new();
    for k in 1..=40u64 {
        let p = 1000 * k;
        ev.push(match k % 4 {
            1 if k % 8 == 1 => io(p, IoKind::Request),
            1 => io(p, IoKind::PrivateWrite),
            2 => input(p - 1),
            3 => input(p),
            _ => output(p),
        });
    }
    ev.push(halt(40_500, 0));
    Script::new(ev)
}

fn run_to_end(p: &mut Pair) {
    let done = p.run_until(200_000, 10_000, |p| {
        (p.primary.exit_code().is_some() && p.backup.exit_code().is_some()) || !p.errors.is_empty()
    });
    assert!(done, "the pair did not finish");
}

#[test]
fn a_digest_is_logged_at_every_multiple_even_when_a_stop_lands_on_it() {
    let expected: Vec<ExecPoint> = (1..=8).map(|k| ExecPoint::at(5000 * k)).collect();
    for slice in [3, 700, 1000, 4999, 5000, 5001, 20_000] {
        let c = cfg(|c| {
            c.digest_interval = 5000;
            c.slice = slice;
        });
        let mut p = Pair::with_config(
            c,
            boundary_script(),
            ScriptedWorld::live("p", 1).with_io_latency(Some(30_000)),
            ScriptedWorld::standby("b", 2),
        );
        run_to_end(&mut p);
        p.assert_no_errors();
        let got: Vec<ExecPoint> = digest_points(&p.sent).iter().map(|(pt, _)| *pt).collect();
        assert_eq!(got, expected, "slice {slice}: digest points in the log");
        assert_eq!(
            p.backup.stats().digests_checked,
            8,
            "slice {slice}: digests checked by the backup"
        );
        assert_eq!(p.primary.source().point(), ExecPoint::at(40_500));
        assert_eq!(p.backup.exit_code(), Some(0));
        assert_eq!(p.backup.source().journal(), p.primary.source().journal());
    }
}

#[test]
fn a_digest_at_an_output_on_the_digest_point() {
    // The smallest case of the regression: the output retires at 5000 = the first
    // digest point; `run` returns the output, not `Reached`, and the next step must
    // log the digest at 5000 before going on.
    let c = cfg(|c| {
        c.digest_interval = 5000;
        c.slice = 100_000;
    });
    let mut p = Pair::with_config(
        c,
        Script::new(vec![output(5000)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.primary.step(0).unwrap();
    p.primary.step(0).unwrap();
    p.transmit();
    let digests = digest_points(&p.sent);
    assert_eq!(
        digests.iter().map(|(pt, _)| pt.count).collect::<Vec<_>>(),
        vec![5000, 10_000]
    );
    // The digest at 5000 comes after the output record there.
    assert!(matches!(p.sent[0].event, Event::Output { .. }));
    assert_eq!(digests[0].1, 2);
}

#[test]
fn a_backup_whose_state_differs_halts_on_the_digest() {
    let c = cfg(|c| c.digest_interval = 5000);
    let mut p = Pair::with_parts(
        c.clone(),
        c,
        ScriptedSource::new(boundary_script()),
        ScriptedSource::salted(boundary_script(), 1),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    run_to_end(&mut p);
    let first_digest = digest_points(&p.sent)[0];
    assert_eq!(first_digest.0, ExecPoint::at(5000));
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    let (_, side, err) = &p.errors[0];
    assert_eq!(*side, Side::Backup);
    let EngineError::Divergence { seq, point, detail } = err else {
        panic!("expected a divergence, got {err}")
    };
    assert_eq!((*seq, *point), (first_digest.1, first_digest.0));
    assert!(detail.contains("state digest mismatch"), "{detail}");
    assert!(err.to_string().contains("REPLAY DIVERGENCE"));
    assert_eq!(
        *p.backup.phase(),
        Phase::Halted(HaltReason::Diverged(err.to_string()))
    );
    assert_eq!(p.backup.stats().digests_checked, 1);
    assert_eq!(p.backup.source().point(), ExecPoint::at(5000));
}

#[test]
fn a_wrongly_applied_input_shows_in_the_next_digest() {
    let c = cfg(|c| c.digest_interval = 5000);
    let mut p = Pair::with_config(
        c,
        Script::new(vec![input(100), halt(9000, 0)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.step(Side::Primary);
    p.now += test_config().batch_delay;
    p.transmit();
    // Corrupt the value on the way (as a buggy transport might).
    let batch = p.to_backup.front_mut().unwrap();
    let Event::Input { data, .. } = &mut batch[0].event else {
        panic!("expected the input record first")
    };
    *data = Bytes::from_static(&[0xee; 8]);
    run_to_end(&mut p);
    let (_, _, err) = p.errors.first().expect("a divergence");
    let EngineError::Divergence { point, detail, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(*point, ExecPoint::at(5000));
    assert!(detail.contains("state digest mismatch"), "{detail}");
}

/// The boundary script on a pair with digests every 5000 and slices of 700.
fn boundary_pair() -> Pair {
    let c = cfg(|c| {
        c.digest_interval = 5000;
        c.slice = 700;
    });
    Pair::with_config(
        c,
        boundary_script(),
        ScriptedWorld::live("p", 1).with_io_latency(Some(30_000)),
        ScriptedWorld::standby("b", 2),
    )
}

#[test]
fn a_digest_the_primary_cannot_take_halts_it_as_a_failed_machine_and_logs_nothing_false() {
    let mut p = boundary_pair();
    p.primary.source_mut().fail_digests_from(12_000);
    p.run_until(200_000, 10_000, |p| p.primary.is_halted());
    assert!(
        matches!(p.primary.phase(), Phase::Halted(HaltReason::SourceFailed(why)) if why.contains("digest")),
        "{:?}",
        p.primary.phase()
    );
    // The digests before the failure were logged, none after it.
    let got: Vec<ExecPoint> = digest_points(&p.sent).iter().map(|(pt, _)| *pt).collect();
    assert_eq!(got, vec![ExecPoint::at(5000), ExecPoint::at(10_000)]);
    assert!(p
        .errors
        .iter()
        .any(|(_, s, e)| *s == Side::Primary && matches!(e, EngineError::Source(_))));
}

#[test]
fn a_digest_the_backup_cannot_take_halts_it_instead_of_passing_the_check() {
    let mut p = boundary_pair();
    p.backup.source_mut().fail_digests_from(12_000);
    p.run_until(200_000, 10_000, |p| p.backup.is_halted());
    assert!(p.backup.is_halted(), "{:?}", p.backup.phase());
    assert_eq!(
        p.backup.stats().digests_checked,
        2,
        "the two digests before it"
    );
    assert!(p
        .errors
        .iter()
        .any(|(_, s, e)| *s == Side::Backup && e.to_string().contains("digest failure")));
}
