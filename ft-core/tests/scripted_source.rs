//! The test machine and world keep the contracts the engine relies on
//! (ft-core/src/event_source.rs, world.rs): if they did not, the engine tests built on
//! them would prove nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use bytes::Bytes;
use ft_core::{
    AsyncEvent, DeviceId, EventSource, ExecPoint, IoId, IoKind, SourceError, Stop, World,
};
use support::*;

fn at(n: u64) -> ExecPoint {
    ExecPoint::at(n)
}

#[test]
fn never_runs_past_until_and_reached_without_executing_when_there() {
    let mut m = ScriptedSource::new(Script::new(vec![output(50)]));
    assert_eq!(m.run(at(0)).unwrap(), Stop::Reached);
    assert_eq!(m.point(), at(0));
    assert_eq!(m.run(at(20)).unwrap(), Stop::Reached);
    assert_eq!(m.point(), at(20));
    let d = m.digest();
    assert_eq!(m.run(at(20)).unwrap(), Stop::Reached, "already there");
    assert_eq!(m.point(), at(20));
    assert_eq!(m.digest(), d, "nothing executed");
    assert!(matches!(m.run(at(19)), Err(SourceError::Backwards { .. })));
    assert_eq!(m.run(at(49)).unwrap(), Stop::Reached);
    // The output instruction retires at 50: run(50) stops there with the output.
    assert!(matches!(m.run(at(50)).unwrap(), Stop::Output(_)));
    assert_eq!(m.point(), at(50));
    assert_eq!(m.run(at(1000)).unwrap(), Stop::Reached);
    assert_eq!(m.point(), at(1000));
}

#[test]
fn input_stops_before_the_reading_instruction_and_supply_completes_it() {
    let mut m = ScriptedSource::new(Script::new(vec![input(30), output(40)]));
    // Running to 30 does not execute the read at 30.
    assert_eq!(m.run(at(30)).unwrap(), Stop::Reached);
    assert!(!m.input_pending());
    let Stop::Input(req) = m.run(at(31)).unwrap() else {
        panic!("expected an input stop")
    };
    assert_eq!(req.size, 8);
    assert_eq!(m.point(), at(30), "the read has not completed");
    assert!(m.run(at(35)).is_err(), "run with an input pending");
    assert!(matches!(
        m.supply_input(&[1, 2]),
        Err(SourceError::UnexpectedInput(_))
    ));
    assert!(matches!(
        m.inject(&AsyncEvent::Interrupt {
            device: DeviceId(DEV_TIMER)
        }),
        Err(SourceError::BadEvent(_))
    ));
    m.supply_input(&[7; 8]).unwrap();
    assert_eq!(m.point(), at(31), "supply_input completes the instruction");
    assert!(matches!(
        m.supply_input(&[7; 8]),
        Err(SourceError::UnexpectedInput(_))
    ));
    assert!(matches!(m.run(at(100)).unwrap(), Stop::Output(_)));
    assert_eq!(m.point(), at(40));
}

#[test]
fn idle_halt_and_failure() {
    let mut m = ScriptedSource::new(Script::new(vec![idle(10), halt(20, 3), fail(30)]));
    // Reaching the idle point exactly is `Reached`; going on is `Idle`, without moving.
    assert_eq!(m.run(at(10)).unwrap(), Stop::Reached);
    assert_eq!(m.run(at(15)).unwrap(), Stop::Idle);
    assert_eq!(m.point(), at(10));
    m.inject(&AsyncEvent::Interrupt {
        device: DeviceId(DEV_TIMER),
    })
    .unwrap();
    assert_eq!(m.run(at(100)).unwrap(), Stop::Halted(3));
    assert_eq!(m.point(), at(20));
    assert_eq!(m.run(at(100)).unwrap(), Stop::Halted(3));
    assert_eq!(m.point(), at(20), "a halted guest does not move");

    let mut f = ScriptedSource::new(Script::new(vec![fail(30)]));
    assert!(matches!(f.run(at(100)), Err(SourceError::Backend(_))));
    assert!(matches!(f.run(at(100)), Err(SourceError::Backend(_))));
}

#[test]
fn io_ids_are_deterministic_and_completions_checked() {
    let script = Script::new(vec![
        io(5, IoKind::Request),
        io(6, IoKind::SharedWrite),
        io(7, IoKind::LocalRead),
    ]);
    assert_eq!(script.io_kind(IoId(2)), Some(IoKind::SharedWrite));
    assert_eq!(script.io_kind(IoId(4)), None);
    let mut m = ScriptedSource::new(script);
    let Stop::IoStart(r) = m.run(at(100)).unwrap() else {
        panic!()
    };
    assert_eq!((r.id, r.kind), (IoId(1), IoKind::Request));
    let Stop::IoStart(w) = m.run(at(100)).unwrap() else {
        panic!()
    };
    assert_eq!(
        (w.id, w.kind, w.data.len()),
        (IoId(2), IoKind::SharedWrite, 16)
    );
    let done = AsyncEvent::IoComplete {
        io: IoId(1),
        status: 0,
        data: None,
    };
    m.inject(&done).unwrap();
    assert!(matches!(m.inject(&done), Err(SourceError::BadEvent(_))));
    assert_eq!(m.started_io(), vec![IoId(2)]);
}

#[test]
fn digest_depends_on_everything_supplied_and_injected() {
    let script = Script::new(vec![input(10), output(20)]);
    let run = |value: u8, packet: &'static [u8]| {
        let mut m = ScriptedSource::new(script.clone());
        assert!(matches!(m.run(at(11)).unwrap(), Stop::Input(_)));
        m.supply_input(&[value; 8]).unwrap();
        m.inject(&AsyncEvent::DeviceInput {
            device: DeviceId(DEV_NIC),
            data: Bytes::from_static(packet),
        })
        .unwrap();
        let Stop::Output(o) = m.run(at(100)).unwrap() else {
            panic!()
        };
        (m.digest(), o.data, m.journal().to_vec())
    };
    let a = run(1, b"ping");
    assert_eq!(a, run(1, b"ping"), "deterministic");
    let b = run(2, b"ping");
    let c = run(1, b"pong");
    assert_ne!(a.0, b.0);
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, b.1, "outputs carry the state");
    assert_ne!(a.2, c.2);
    // A salted machine differs only in its digest.
    let mut s = ScriptedSource::salted(script.clone(), 9);
    let mut u = ScriptedSource::new(script);
    assert_ne!(s.digest(), u.digest());
    assert_eq!(s.run(at(100)).unwrap(), u.run(at(100)).unwrap());
}

#[test]
fn snapshot_restore_round_trip() {
    let script = Script::new(vec![
        input(10),
        io(15, IoKind::Request),
        output(20),
        idle(30),
    ]);
    let mut m = ScriptedSource::new(script);
    assert!(matches!(m.run(at(11)).unwrap(), Stop::Input(_)));
    m.supply_input(&[5; 8]).unwrap();
    assert!(matches!(m.run(at(100)).unwrap(), Stop::IoStart(_)));
    let snap = m.snapshot().unwrap();
    let (d, p) = (m.digest(), m.point());
    let first: Vec<Stop> = (0..3).map(|_| m.run(at(100)).unwrap()).collect();
    let d_after = m.digest();
    m.restore(&snap).unwrap();
    assert_eq!((m.digest(), m.point()), (d, p));
    let again: Vec<Stop> = (0..3).map(|_| m.run(at(100)).unwrap()).collect();
    assert_eq!(first, again);
    assert_eq!(m.digest(), d_after);
    assert!(m.restore(b"garbage").is_err());
}

#[test]
fn world_records_calls_and_flags_live_side_calls_on_a_standby_world() {
    let mut w = ScriptedWorld::standby("b", 1).with_timer(100);
    let mut evs = Vec::new();
    w.poll(250, &mut evs);
    assert_eq!(w.violations.len(), 1);
    assert_eq!(evs.len(), 1, "one timer tick per poll, no backlog");
    assert_eq!(w.next_deadline(), Some(300));
    w.go_live(300);
    w.go_live(300);
    assert_eq!(w.violations.len(), 2);
    let mut l = ScriptedWorld::live("p", 1);
    let req = ft_core::InputRequest {
        device: DeviceId(DEV_INPUT),
        offset: 0,
        size: 4,
    };
    assert_eq!(l.input(&req, 0).len(), 4);
    assert!(l.violations.is_empty());
}
