//! The output rule: an output (or shared-disk write) leaves only once an ack covers the
//! record behind it, right then; execution never waits for it; a held output flushes
//! its batch at once.

use ft_core::{Ack, Event, EventSource, IoId, IoKind, OutputSeq, Transmit};

use crate::support::*;
use crate::{cfg, MS};

fn records(t: Option<Transmit>) -> Vec<ft_core::Record> {
    match t {
        Some(Transmit::Records(r)) => r,
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[test]
fn an_output_leaves_only_with_the_ack_of_its_record_and_right_then() {
    // batch_delay of a second: nothing but a held output can make a batch leave early.
    let c = cfg(|c| c.batch_delay = 1_000 * MS);
    let script = Script::new(vec![input(5), output(10), input(15), output(20), input(30)]);
    let mut p = Pair::with_config(
        c,
        script,
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    let now = 0;
    // Input: record 1. No output held, so the batch waits for its delay.
    p.primary.step(now).unwrap();
    assert_eq!(p.primary.poll_transmit(now), None, "batch not due yet");
    assert_eq!(
        p.primary.next_deadline(),
        Some(MS),
        "the heartbeat, long before the batch"
    );
    // Output #0: record 2, held; its batch leaves at once.
    p.primary.step(now).unwrap();
    assert_eq!(p.primary.held_outputs(), 1);
    let batch = records(p.primary.poll_transmit(now));
    assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(matches!(
        batch[1].event,
        Event::Output {
            seq: OutputSeq(0),
            ..
        }
    ));
    assert!(p.primary.world().emitted.is_empty());
    // The primary keeps executing while #0 is held: input at 15, output #1 at 20.
    p.primary.step(now).unwrap();
    p.primary.step(now).unwrap();
    assert_eq!(p.primary.source().point().count, 20);
    assert_eq!(p.primary.held_outputs(), 2);
    let batch2 = records(p.primary.poll_transmit(now));
    assert_eq!(batch2.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(p.primary.world().emitted.is_empty());

    // The backup receives the first batch and acks it.
    p.backup.handle_records(batch, 10).unwrap();
    let Some(Transmit::Ack(ack)) = p.backup.poll_transmit(10) else {
        panic!("the backup acks on receipt")
    };
    assert_eq!(
        ack,
        Ack {
            received: 2,
            replayed: 0
        }
    );
    // An ack short of the output's record releases nothing.
    p.primary
        .handle_ack(
            Ack {
                received: 1,
                replayed: 0,
            },
            20,
        )
        .unwrap();
    assert!(p.primary.world().emitted.is_empty());
    assert_eq!(p.primary.acked_seq(), 1);
    // The covering ack releases #0 within the call, at its time; #1 stays held.
    p.primary.handle_ack(ack, 30).unwrap();
    let e = &p.primary.world().emitted;
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].at, e[0].output.seq, e[0].possible_repeat),
        (30, OutputSeq(0), false)
    );
    assert_eq!(p.primary.held_outputs(), 1);
    assert_eq!(p.primary.stats().released, 1);
    p.primary
        .handle_ack(
            Ack {
                received: 4,
                replayed: 0,
            },
            40,
        )
        .unwrap();
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1]);
    assert_eq!(p.primary.world().emitted[1].at, 40);
    assert_eq!(p.primary.held_outputs(), 0);
    // The output bytes are the machine's.
    let replayed = {
        p.backup.step(50).unwrap();
        p.backup.world().replayed.clone()
    };
    assert_eq!(replayed[0], p.primary.world().emitted[0].output);
}

#[test]
fn without_a_held_output_a_batch_waits_for_its_delay_or_size() {
    let c = cfg(|c| {
        c.batch_delay = 500_000;
        c.max_batch = 3;
        c.heartbeat_interval = 1_000 * MS;
    });
    let script = Script::new((1..=10).map(|i| input(i * 10)).collect());
    let mut p = Pair::with_config(
        c,
        script,
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.primary.step(0).unwrap();
    p.primary.step(0).unwrap();
    assert_eq!(p.primary.poll_transmit(0), None);
    assert_eq!(p.primary.next_deadline(), Some(500_000));
    assert_eq!(p.primary.poll_transmit(499_999), None);
    assert_eq!(records(p.primary.poll_transmit(500_000)).len(), 2);
    // Size: the third record makes a full batch.
    for _ in 0..3 {
        p.primary.step(600_000).unwrap();
    }
    assert_eq!(records(p.primary.poll_transmit(600_000)).len(), 3);
}

#[test]
fn shared_writes_are_gated_and_wait_for_replay_after_a_local_read() {
    let script = Script::new(vec![
        io(10, IoKind::SharedWrite),
        io(20, IoKind::LocalRead),
        io(30, IoKind::SharedWrite),
        io(40, IoKind::PrivateWrite),
    ]);
    let mut p = Pair::new(
        script,
        ScriptedWorld::live("p", 1).with_io_latency(None),
        ScriptedWorld::standby("b", 2),
    );
    let started = |p: &Pair| {
        p.primary
            .world()
            .started
            .iter()
            .map(|(_, r)| r.id.0)
            .collect::<Vec<_>>()
    };
    for _ in 0..4 {
        p.primary.step(0).unwrap();
    }
    // The read and the private write start at once; the shared writes are held.
    assert_eq!(started(&p), vec![2, 4]);
    assert_eq!(p.primary.held_outputs(), 2);
    let b = records(p.primary.poll_transmit(0));
    assert_eq!(b.len(), 4);
    p.primary
        .handle_ack(
            Ack {
                received: 4,
                replayed: 0,
            },
            1,
        )
        .unwrap();
    // The first write needs receipt only; the second came after a local read, so it
    // needs the backup to have replayed its record (3).
    assert_eq!(started(&p), vec![2, 4, 1]);
    p.primary
        .handle_ack(
            Ack {
                received: 4,
                replayed: 2,
            },
            2,
        )
        .unwrap();
    assert_eq!(started(&p), vec![2, 4, 1]);
    p.primary
        .handle_ack(
            Ack {
                received: 4,
                replayed: 3,
            },
            3,
        )
        .unwrap();
    assert_eq!(started(&p), vec![2, 4, 1, 3]);
    assert_eq!(p.primary.held_outputs(), 0);
    assert_eq!(
        p.primary.source().started_io(),
        vec![IoId(1), IoId(2), IoId(3), IoId(4)]
    );
}

#[test]
fn outputs_flow_in_a_healthy_pair() {
    // End to end: every output is released once, in order, after its ack; none before.
    let script = Script::new((1..=50).map(|i| output(i * 7)).collect());
    let mut p = Pair::new(
        script,
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    let mut acked = 0;
    for _ in 0..100 {
        p.step(Side::Primary);
        p.step(Side::Backup);
        p.transmit();
        p.deliver_records();
        p.transmit();
        for a in p.to_primary.iter() {
            acked = acked.max(a.received);
        }
        p.deliver_acks();
        let released = p.primary.world().emitted_seqs();
        for s in &released {
            assert!(crate::output_record(&p.sent, *s) <= acked);
        }
        p.now += 10_000;
    }
    assert_eq!(
        p.primary.world().emitted_seqs(),
        (0..50).collect::<Vec<_>>()
    );
    assert_eq!(
        p.backup.world().replayed,
        p.primary
            .world()
            .emitted
            .iter()
            .map(|e| e.output.clone())
            .collect::<Vec<_>>()
    );
    p.assert_no_errors();
}
