//! Go-live: the backup that suspects the primary takes and acks nothing more, replays
//! everything it received, only then asks the arbiter, and on winning re-issues the
//! pending I/O and re-sends the tentative outputs at or above the release watermark as
//! possible repeats.

use ft_core::{Arbiter, Command, ExecPoint, IoId, IoKind, NodeId, Notice, Phase, Transmit};

use crate::support::*;
use crate::{cfg, MS};

/// Records out, acks back (the acks only if `acks`).
fn exchange(p: &mut Pair, acks: bool) {
    p.transmit();
    p.deliver_records();
    p.transmit();
    if acks {
        p.deliver_acks();
    } else {
        p.to_primary.clear();
    }
}

/// A primary that released #0..#2, whose backup received the records of #0..#4 and
/// the watermark 3, and a batch (#5) still in flight; then the primary dies.
fn failover_setup() -> Pair {
    let script = Script::new(vec![
        output(10),
        output(20),
        io(25, IoKind::Request),
        output(30),
        output(40),
        input(45),
        output(50),
        output(55),
        idle(60),
    ]);
    let pcfg = test_config();
    // A small backup slice: the drain takes several steps.
    let bcfg = cfg(|c| c.slice = 5);
    let mut p = Pair::with_parts(
        pcfg,
        bcfg,
        ScriptedSource::new(script.clone()),
        ScriptedSource::new(script),
        ScriptedWorld::live("p", 1).with_io_latency(None),
        ScriptedWorld::standby("b", 2).with_io_latency(None),
    );
    p.answer_arbiter = false;
    p.step(Side::Primary); // #0
    exchange(&mut p, true);
    p.step(Side::Primary); // #1
    exchange(&mut p, true);
    p.step(Side::Primary); // I/O 1
    p.step(Side::Primary); // #2
    exchange(&mut p, true);
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1, 2]);
    p.step(Side::Primary); // #3, with the watermark 3 riding along
    exchange(&mut p, false);
    p.step(Side::Primary); // input
    p.step(Side::Primary); // #4
    exchange(&mut p, false);
    p.step(Side::Primary); // #5
    p.transmit(); // stays on the link
    assert_eq!(p.to_backup.len(), 1);
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1, 2]);
    assert_eq!(p.backup.last_seq(), 10);
    assert_eq!(
        p.backup.replayed_seq(),
        0,
        "the backup has not replayed anything"
    );
    p.crash(Side::Primary);
    p
}

#[test]
fn the_backup_drains_everything_received_before_asking_the_arbiter() {
    let mut p = failover_setup();
    p.now = 10 * MS + 1;
    p.step(Side::Backup);
    assert_eq!(
        p.notices_of(Side::Backup)[0],
        Notice::PeerSuspected { last_heard: 0 }
    );
    assert_eq!(*p.backup.phase(), Phase::Draining);
    // The batch in flight arrives after the suspicion: it is not taken, not acked.
    assert_eq!(p.deliver_one_batch(), Some(Ok(())));
    assert_eq!(p.backup.last_seq(), 10);
    assert_eq!(p.backup.stats().records, 10);
    assert_eq!(p.backup.poll_transmit(p.now), None);
    // Drain: no command until everything received is replayed.
    let mut steps = 1;
    while !p
        .notices_of(Side::Backup)
        .iter()
        .any(|n| matches!(n, Notice::Drained { .. }))
    {
        assert_eq!(
            p.backup.poll_command(),
            None,
            "asked the arbiter before draining"
        );
        assert_eq!(p.backup.poll_transmit(p.now), None, "acked while draining");
        p.now += 1000;
        p.step(Side::Backup);
        steps += 1;
        assert!(steps < 100, "never drained");
    }
    assert!(steps > 2, "the drain took {steps} steps");
    let n = p.notices_of(Side::Backup);
    assert_eq!(
        n[1],
        Notice::Drained {
            replayed: 10,
            point: ExecPoint::at(50)
        }
    );
    assert_eq!(p.backup.replayed_seq(), 10);
    assert_eq!(*p.backup.phase(), Phase::Arbitrating);
    assert_eq!(
        p.backup.poll_command(),
        Some(Command::TestAndSet {
            pair: test_config().pair,
            me: NodeId(2),
            attempt: 1
        })
    );
    assert!(!p.backup.world().is_live());
    assert!(p.backup.world().emitted.is_empty());
    // Won: go live.
    let won = p.arbiter.test_and_set(test_config().pair, NodeId(2));
    let t_live = p.now;
    p.backup.on_arbiter(won, t_live);
    p.collect();
    assert!(p.backup.is_live());
    assert_eq!(
        p.notices_of(Side::Backup)[2..],
        [
            Notice::ArbiterWon { token: 1 },
            Notice::WentLive {
                reissued_io: 1,
                resent_outputs: 2,
                point: ExecPoint::at(50)
            }
        ]
    );
    let w = p.backup.world();
    assert_eq!(w.went_live, Some(t_live));
    assert_eq!(w.announced, Some(t_live));
    // The I/O started and never completed in the log is re-issued.
    assert_eq!(
        w.started
            .iter()
            .map(|(t, r)| (*t, r.id))
            .collect::<Vec<_>>(),
        vec![(t_live, IoId(1))]
    );
    // Tentative outputs at or above the watermark (3) go out, marked.
    assert_eq!(
        w.emitted
            .iter()
            .map(|e| (e.output.seq.0, e.possible_repeat, e.at))
            .collect::<Vec<_>>(),
        vec![(3, true, t_live), (4, true, t_live)]
    );
    // Same bytes as the primary's machine produced: compare with what the primary
    // released of the prefix.
    let replayed = &w.replayed;
    assert_eq!(replayed.len(), 5);
    for e in &p.primary.world().emitted {
        assert_eq!(replayed[e.output.seq.0 as usize], e.output);
    }
    assert_eq!(w.emitted[0].output, replayed[3]);
    // Live: the next output leaves at once, not marked.
    p.step(Side::Backup);
    let last = p.backup.world().emitted.last().unwrap().clone();
    assert_eq!((last.output.seq.0, last.possible_repeat), (5, false));
    assert_eq!(p.backup.poll_transmit(p.now), None);
    // Together: #0..#5, each once or repeated with the same bytes.
    let mut seqs: Vec<u64> = p
        .primary
        .world()
        .emitted_seqs()
        .into_iter()
        .chain(p.backup.world().emitted_seqs())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (0..=5).collect::<Vec<_>>());
    p.assert_no_errors();
}

#[test]
fn records_arriving_after_suspicion_are_neither_taken_nor_acked() {
    let mut p = failover_setup();
    p.now = 10 * MS + 1;
    // The failure detector fires inside poll_transmit too.
    assert_eq!(p.backup.poll_transmit(p.now), None);
    assert_eq!(*p.backup.phase(), Phase::Draining);
    let batch = p.to_backup.pop_front().unwrap();
    let dup = batch.clone();
    assert_eq!(p.backup.handle_records(batch, p.now), Ok(()));
    assert_eq!(p.backup.handle_records(dup, p.now), Ok(()));
    assert_eq!(p.backup.last_seq(), 10);
    assert_eq!(p.backup.buffered_records(), 10);
    assert_eq!(p.backup.stats().duplicates, 0);
    for _ in 0..50 {
        p.now += MS;
        p.step(Side::Backup);
        assert!(!matches!(
            p.backup.poll_transmit(p.now),
            Some(Transmit::Ack(_))
        ));
    }
    assert_eq!(p.backup.replayed_seq(), 10);
}

#[test]
fn a_backup_that_was_caught_up_goes_live_at_once_with_nothing_to_resend() {
    let mut p = Pair::new(
        Script::new(vec![output(10), output(20), idle(30)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2).with_timer(MS),
    );
    // Long enough for a quiet-time heartbeat to carry the final watermark (2).
    p.run(30, 100_000);
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1]);
    p.crash(Side::Primary);
    assert!(p.run_until(100, MS, |p| p.backup.is_live()));
    let n = p.notices_of(Side::Backup);
    assert!(n.contains(&Notice::Drained {
        replayed: p.backup.last_seq(),
        point: ExecPoint::at(30)
    }));
    // The watermark heartbeat after the last release reached the backup.
    let went = n
        .iter()
        .find_map(|n| match n {
            Notice::WentLive { resent_outputs, .. } => Some(*resent_outputs),
            _ => None,
        })
        .unwrap();
    assert_eq!(went, 0);
    assert!(p.backup.world().emitted.is_empty());
    // Live and idle: the new world's timer wakes it, and it is not logging.
    p.run(5, MS);
    assert!(p.backup.source().journal().len() > p.primary.source().journal().len());
    assert_eq!(p.backup.poll_transmit(p.now), None);
    p.assert_no_errors();
}
