//! Arbiter retries: an unreachable arbiter is retried with exponential backoff from
//! `arbiter_retry_min`, capped at `arbiter_retry_max`; the node never goes live
//! unconfirmed, and goes live as soon as an answer says it won.

use ft_core::{
    Arbiter, ArbiterError, Blocked, Command, Decision, Nanos, NodeId, Notice, Phase, StepOutcome,
};

use crate::support::*;
use crate::{cfg, MS};

fn unreachable_notices(p: &Pair, side: Side) -> Vec<u32> {
    p.notices_of(side)
        .iter()
        .filter_map(|n| match n {
            Notice::ArbiterUnreachable { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

#[test]
fn the_primary_retries_with_exponential_backoff_and_goes_alone_when_it_wins() {
    let c = cfg(|c| {
        c.arbiter_retry_min = MS;
        c.arbiter_retry_max = 5 * MS;
    });
    let mut p = Pair::with_config(
        c,
        Script::new(vec![output(10), output(20), output(30)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.round();
    p.crash(Side::Backup);
    p.step(Side::Primary); // #1 held
    p.transmit();
    let pair = test_config().pair;
    p.arbiter.set_unreachable(true);

    let t0: Nanos = 10 * MS + 1;
    assert_eq!(
        p.primary.step(t0).unwrap(),
        StepOutcome::Blocked(Blocked::Arbitrating)
    );
    assert_eq!(
        p.primary.poll_command(),
        Some(Command::TestAndSet {
            pair,
            me: NodeId(1),
            attempt: 1
        })
    );
    assert_eq!(
        p.primary.next_deadline(),
        None,
        "nothing to do while asking"
    );
    let mut t = t0;
    let mut deadlines = Vec::new();
    for (attempt, delay) in (1u32..).zip([MS, 2 * MS, 4 * MS, 5 * MS, 5 * MS, 5 * MS]) {
        // Alternate the two kinds of arbiter errors.
        let answer = if attempt % 2 == 1 {
            p.arbiter.test_and_set(pair, NodeId(1))
        } else {
            Err(ArbiterError::Failed("garbled reply".into()))
        };
        assert!(answer.is_err());
        p.primary.on_arbiter(answer, t);
        let next = p.primary.next_deadline().expect("a retry deadline");
        deadlines.push(next - t);
        assert_eq!(next, t + delay, "retry {attempt}");
        // Not before the deadline...
        p.primary.step(next - 1).unwrap();
        assert_eq!(p.primary.poll_command(), None);
        assert_eq!(*p.primary.phase(), Phase::Arbitrating);
        assert!(!p.primary.is_live());
        // ...and at it.
        t = next;
        p.primary.step(t).unwrap();
        assert_eq!(
            p.primary.poll_command(),
            Some(Command::TestAndSet {
                pair,
                me: NodeId(1),
                attempt: attempt + 1
            })
        );
        p.primary.step(t).unwrap();
        assert_eq!(p.primary.poll_command(), None, "one attempt in flight");
    }
    assert_eq!(deadlines, vec![MS, 2 * MS, 4 * MS, 5 * MS, 5 * MS, 5 * MS]);
    p.collect();
    assert_eq!(
        unreachable_notices(&p, Side::Primary),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert!(
        p.primary.world().emitted_seqs() == vec![0],
        "nothing released while unconfirmed"
    );
    // The arbiter answers.
    p.arbiter.set_unreachable(false);
    let won = p.arbiter.test_and_set(pair, NodeId(1));
    assert_eq!(won, Ok(Decision::Won { token: 1 }));
    p.primary.on_arbiter(won, t + 10);
    assert!(p.primary.is_live());
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1]);
    p.collect();
    assert_eq!(
        p.notices_of(Side::Primary).last(),
        Some(&Notice::WentAlone { released: 1 })
    );
}

#[test]
fn the_backup_never_goes_live_while_the_arbiter_is_unreachable() {
    let mut p = Pair::new(
        Script::new(vec![output(10), output(20), idle(30)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.run(3, 100_000);
    p.crash(Side::Primary);
    p.arbiter.set_unreachable(true);
    let dt = MS / 2;
    for _ in 0..300 {
        p.round();
        p.now += dt;
        assert!(!p.backup.is_live());
        assert!(!p.backup.world().is_live());
        assert!(p.backup.world().emitted.is_empty());
    }
    assert_eq!(*p.backup.phase(), Phase::Arbitrating);
    // Retries: at 1, 2, 4, 8, 8, ... ms after each failure (test_config: 1 ms to 8 ms).
    let times: Vec<Nanos> = p
        .commands
        .iter()
        .filter(|(_, s, _)| *s == Side::Backup)
        .map(|(t, _, _)| *t)
        .collect();
    let gaps: Vec<Nanos> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 10, "{gaps:?}");
    assert_eq!(gaps[..5], [MS, 2 * MS, 4 * MS, 8 * MS, 8 * MS]);
    assert!(gaps[5..].iter().all(|g| *g == 8 * MS), "{gaps:?}");
    let attempts: Vec<u32> = p
        .commands
        .iter()
        .map(|(_, _, Command::TestAndSet { attempt, .. })| *attempt)
        .collect();
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());
    assert_eq!(
        unreachable_notices(&p, Side::Backup),
        (1..=attempts.len() as u32).collect::<Vec<_>>()
    );
    // Reachable again: live at the next scheduled retry, not before.
    p.arbiter.set_unreachable(false);
    let next = p.backup.next_deadline().unwrap();
    while p.now < next {
        p.round();
        assert!(!p.backup.is_live());
        p.now += dt;
    }
    p.round();
    assert!(p.backup.is_live());
    assert_eq!(p.arbiter.holder(test_config().pair), Some(NodeId(2)));
    p.assert_no_errors();
}

#[test]
fn a_late_answer_after_the_verdict_changes_nothing() {
    let mut p = Pair::new(
        Script::new(vec![output(10)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.round();
    p.crash(Side::Backup);
    p.now = 20 * MS;
    p.round();
    assert!(p.primary.is_live());
    p.primary
        .on_arbiter(Ok(Decision::Lost { holder: NodeId(2) }), p.now);
    assert!(p.primary.is_live(), "a verdict arrives once");
    p.primary
        .on_arbiter(Err(ArbiterError::Unreachable("x".into())), p.now);
    assert!(p.primary.is_live());
}
