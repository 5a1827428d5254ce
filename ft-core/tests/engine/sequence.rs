//! Checks on what arrives: gaps, duplicates, points going backwards, an overfull
//! inbox, acks for records never produced.

use ft_core::{Ack, EngineError, Event, ExecPoint, OutputSeq, Record, Transmit};

use crate::cfg;
use crate::support::*;

fn rec(seq: u64, count: u64) -> Record {
    Record {
        seq,
        point: ExecPoint::at(count),
        event: Event::Heartbeat {
            released_below: OutputSeq(0),
        },
    }
}

fn recs(seqs: std::ops::RangeInclusive<u64>) -> Vec<Record> {
    seqs.map(|s| rec(s, s * 10)).collect()
}

fn backup(tweak: impl FnOnce(&mut ft_core::Config)) -> TestNode {
    ft_core::Node::backup(
        cfg(tweak),
        ScriptedSource::new(Script::new(vec![])),
        ScriptedWorld::standby("b", 2),
        0,
    )
}

#[test]
fn a_gap_is_an_error_and_nothing_of_the_batch_is_taken() {
    let mut b = backup(|_| {});
    b.handle_records(recs(1..=3), 0).unwrap();
    assert_eq!(
        b.handle_records(recs(5..=6), 0),
        Err(EngineError::SequenceGap {
            expected: 4,
            found: 5
        })
    );
    assert_eq!(b.last_seq(), 3);
    assert_eq!(b.buffered_records(), 3);
    // A gap after fresh records inside one batch: nothing of it is taken either.
    let mut batch = recs(4..=5);
    batch.push(rec(7, 70));
    assert_eq!(
        b.handle_records(batch, 0),
        Err(EngineError::SequenceGap {
            expected: 6,
            found: 7
        })
    );
    assert_eq!(b.last_seq(), 3);
    // Nothing was acked for the refused batches.
    assert_eq!(
        b.poll_transmit(0),
        Some(Transmit::Ack(Ack {
            received: 3,
            replayed: 0
        }))
    );
    assert_eq!(b.poll_transmit(0), None);
    // The missing records can still come.
    b.handle_records(recs(4..=6), 0).unwrap();
    assert_eq!(b.last_seq(), 6);
}

#[test]
fn duplicates_are_ignored_and_counted() {
    let mut b = backup(|_| {});
    b.handle_records(recs(1..=3), 0).unwrap();
    let _ = b.poll_transmit(0);
    b.handle_records(recs(1..=3), 0).unwrap();
    assert_eq!(b.stats().duplicates, 3);
    assert_eq!(b.last_seq(), 3);
    assert_eq!(b.buffered_records(), 3);
    assert_eq!(b.poll_transmit(0), None, "nothing new to ack");
    // Overlap: 2 and 3 are duplicates, 4 and 5 are new.
    b.handle_records(recs(2..=5), 0).unwrap();
    assert_eq!(b.stats().duplicates, 5);
    assert_eq!(b.stats().records, 5);
    assert_eq!(b.last_seq(), 5);
    assert_eq!(
        b.poll_transmit(0),
        Some(Transmit::Ack(Ack {
            received: 5,
            replayed: 0
        }))
    );
}

#[test]
fn a_point_going_backwards_is_out_of_order() {
    let mut b = backup(|_| {});
    b.handle_records(recs(1..=2), 0).unwrap(); // record 2 at @20
    assert_eq!(
        b.handle_records(vec![rec(3, 30), rec(4, 25)], 0),
        Err(EngineError::OutOfOrder {
            seq: 4,
            point: ExecPoint::at(25),
            previous: ExecPoint::at(30)
        })
    );
    assert_eq!(
        b.handle_records(vec![rec(3, 19)], 0),
        Err(EngineError::OutOfOrder {
            seq: 3,
            point: ExecPoint::at(19),
            previous: ExecPoint::at(20)
        })
    );
    assert_eq!(b.last_seq(), 2);
    // Equal points are fine (several records at one point).
    b.handle_records(vec![rec(3, 20), rec(4, 20)], 0).unwrap();
    assert_eq!(b.last_seq(), 4);
}

#[test]
fn a_batch_bigger_than_the_inbox_room_is_refused() {
    let mut b = backup(|c| c.inbox_capacity = 4);
    assert_eq!(
        b.handle_records(recs(1..=5), 0),
        Err(EngineError::InboxFull {
            incoming: 5,
            room: 4
        })
    );
    assert_eq!(b.last_seq(), 0);
    b.handle_records(recs(1..=4), 0).unwrap();
    assert_eq!(b.inbox_space(), 0);
    assert_eq!(
        b.handle_records(recs(5..=5), 0),
        Err(EngineError::InboxFull {
            incoming: 1,
            room: 0
        })
    );
    // Duplicates take no room.
    b.handle_records(recs(1..=4), 0).unwrap();
    // Replaying frees room.
    b.step(0).unwrap();
    assert_eq!(b.inbox_space(), 4);
    b.handle_records(recs(5..=5), 0).unwrap();
}

#[test]
fn an_ack_for_records_never_produced_is_bogus() {
    let mut p = Pair::new(
        Script::new(vec![output(10), output(20)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    let bogus = Ack {
        received: 1,
        replayed: 0,
    };
    assert_eq!(
        p.primary.handle_ack(bogus, 0),
        Err(EngineError::BogusAck {
            ack: bogus,
            last: 0
        })
    );
    p.step(Side::Primary);
    assert_eq!(p.primary.last_seq(), 1);
    let replayed_beyond = Ack {
        received: 1,
        replayed: 2,
    };
    assert_eq!(
        p.primary.handle_ack(replayed_beyond, 0),
        Err(EngineError::BogusAck {
            ack: replayed_beyond,
            last: 1
        })
    );
    let beyond = Ack {
        received: 2,
        replayed: 0,
    };
    assert_eq!(
        p.primary.handle_ack(beyond, 0),
        Err(EngineError::BogusAck {
            ack: beyond,
            last: 1
        })
    );
    // Nothing was released by the refused acks; a good one releases #0.
    assert!(p.primary.world().emitted.is_empty());
    assert_eq!(p.primary.acked_seq(), 0);
    p.primary
        .handle_ack(
            Ack {
                received: 1,
                replayed: 1,
            },
            0,
        )
        .unwrap();
    assert_eq!(p.primary.world().emitted_seqs(), vec![0]);
}
