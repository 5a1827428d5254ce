//! Every phase transition of `Node`, and calls that do not fit the role.

use ft_core::{
    Ack, Blocked, Command, EngineError, EventSource, HaltReason, NodeId, Notice, Phase, Role,
    SourceError, StepOutcome,
};

use crate::support::*;
use crate::MS;

fn script() -> Script {
    Script::new(vec![
        output(10),
        input(15),
        output(20),
        output(30),
        output(40),
        output(50),
        output(60),
    ])
}

#[test]
fn recording_arbitrating_live_when_the_backup_dies() {
    let mut p = Pair::new(
        script(),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    // One healthy round: output #0 is acked and released.
    p.round();
    assert_eq!(p.primary.world().emitted_seqs(), vec![0]);
    let last_ack_at = p.now;
    p.crash(Side::Backup);
    p.answer_arbiter = false;
    // The primary keeps recording; #1 and #2 are held.
    p.step(Side::Primary);
    p.step(Side::Primary);
    p.step(Side::Primary);
    p.transmit();
    assert_eq!(*p.primary.phase(), Phase::Recording);
    assert_eq!(p.primary.held_outputs(), 2);
    // Silence up to the timeout: still recording (#3 is produced and held).
    p.now += 10 * MS;
    p.step(Side::Primary);
    assert_eq!(
        *p.primary.phase(),
        Phase::Recording,
        "not before the timeout"
    );
    assert_eq!(p.primary.held_outputs(), 3);
    p.now += 1;
    let point = p.primary.source().point();
    assert_eq!(
        p.step(Side::Primary),
        Some(StepOutcome::Blocked(Blocked::Arbitrating))
    );
    assert_eq!(*p.primary.phase(), Phase::Arbitrating);
    assert_eq!(
        p.notices_of(Side::Primary),
        vec![Notice::PeerSuspected {
            last_heard: last_ack_at
        }]
    );
    p.arbitrate();
    assert_eq!(
        p.pending_commands.iter().cloned().collect::<Vec<_>>(),
        vec![(
            Side::Primary,
            Command::TestAndSet {
                pair: test_config().pair,
                me: NodeId(1),
                attempt: 1
            }
        )]
    );
    // It does not execute while waiting for the verdict, and releases nothing.
    for _ in 0..3 {
        assert_eq!(
            p.step(Side::Primary),
            Some(StepOutcome::Blocked(Blocked::Arbitrating))
        );
    }
    assert_eq!(p.primary.source().point(), point);
    assert_eq!(p.primary.world().emitted_seqs(), vec![0]);
    assert_eq!(p.primary.held_outputs(), 3);
    p.answer_all();
    assert_eq!(*p.primary.phase(), Phase::Live);
    assert!(p.primary.is_live());
    let n = p.notices_of(Side::Primary);
    assert_eq!(
        n[1..],
        [
            Notice::ArbiterWon { token: 1 },
            Notice::WentAlone { released: 3 }
        ]
    );
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1, 2, 3]);
    // The winner's token reached the world, for the effects it starts from now on.
    assert_eq!(p.primary.world().fenced, vec![(1, true)]);
    assert_eq!(p.arbiter.holder(test_config().pair), Some(NodeId(1)));
    // Alone: outputs leave at once, nothing is logged or sent.
    let last = p.primary.last_seq();
    p.step(Side::Primary);
    assert_eq!(p.primary.world().emitted_seqs(), vec![0, 1, 2, 3, 4]);
    assert_eq!(p.primary.held_outputs(), 0);
    assert_eq!(p.primary.poll_transmit(p.now), None);
    assert_eq!(p.primary.last_seq(), last);
    assert!(p.primary.world().emitted.iter().all(|e| !e.possible_repeat));
    p.assert_no_errors();
}

#[test]
fn replaying_draining_arbitrating_live_when_the_primary_dies() {
    let mut p = Pair::new(
        script(),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.run(3, 100_000);
    p.crash(Side::Primary);
    assert_eq!(*p.backup.phase(), Phase::Replaying);
    let mut phases = vec![p.backup.phase().clone()];
    for _ in 0..200 {
        p.now += MS / 2;
        p.step(Side::Backup);
        p.transmit();
        p.arbitrate();
        if phases.last() != Some(p.backup.phase()) {
            phases.push(p.backup.phase().clone());
        }
        if p.backup.is_live() {
            break;
        }
    }
    // Draining is entered by the failure detector and left in the same step once the
    // inbox is empty, so watch it through the notices as well.
    assert_eq!(phases.first(), Some(&Phase::Replaying));
    assert_eq!(phases.last(), Some(&Phase::Live));
    let n = p.notices_of(Side::Backup);
    let kinds: Vec<&str> = n
        .iter()
        .map(|n| match n {
            Notice::PeerSuspected { .. } => "suspected",
            Notice::Drained { .. } => "drained",
            Notice::ArbiterWon { .. } => "won",
            Notice::WentLive { .. } => "live",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["suspected", "drained", "won", "live"]);
    // Fenced with the winning token before it went live (and started any effect).
    let token = n.iter().find_map(|n| match n {
        Notice::ArbiterWon { token } => Some(*token),
        _ => None,
    });
    assert_eq!(
        p.backup
            .world()
            .fenced
            .iter()
            .map(|f| Some(f.0))
            .collect::<Vec<_>>(),
        vec![token]
    );
    assert!(!p.backup.world().fenced[0].1, "fenced before it went live");
    assert!(p.backup.world().is_live());
    assert!(p.backup.world().announced.is_some());
    p.assert_no_errors();
}

#[test]
fn draining_is_a_phase_of_its_own() {
    // With records left to replay, the suspecting backup is visibly Draining.
    let mut p = Pair::new(
        script(),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.step(Side::Primary);
    p.transmit();
    p.deliver_records();
    p.crash(Side::Primary);
    p.now += 11 * MS;
    p.backup.peer_failed(p.now);
    assert_eq!(*p.backup.phase(), Phase::Draining);
    assert_eq!(p.backup.poll_command(), None);
    assert_eq!(
        p.backup.poll_transmit(p.now),
        None,
        "no acks once suspected"
    );
    p.step(Side::Backup);
    assert_eq!(*p.backup.phase(), Phase::Arbitrating);
    assert!(matches!(
        p.backup.poll_command(),
        Some(Command::TestAndSet { attempt: 1, .. })
    ));
}

/// Cut both directions, let both sides suspect each other, let `first` ask first.
fn split(first: Side) -> Pair {
    let mut p = Pair::new(
        script(),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.run(2, 100_000);
    p.answer_arbiter = false;
    p.now += 20 * MS;
    p.step(Side::Primary);
    p.step(Side::Backup);
    p.step(Side::Backup);
    p.arbitrate();
    assert_eq!(*p.primary.phase(), Phase::Arbitrating);
    assert_eq!(*p.backup.phase(), Phase::Arbitrating);
    assert_eq!(p.pending_commands.len(), 2);
    let second = if first == Side::Primary {
        Side::Backup
    } else {
        Side::Primary
    };
    p.pending_commands
        .make_contiguous()
        .sort_by_key(|(s, _)| *s != first);
    p.answer_all();
    assert!(p.node(first).is_live());
    assert!(p.node(second).is_halted());
    p
}

#[test]
fn the_loser_of_the_arbiter_halts() {
    for (first, winner) in [(Side::Primary, NodeId(1)), (Side::Backup, NodeId(2))] {
        let mut p = split(first);
        let loser = if first == Side::Primary {
            Side::Backup
        } else {
            Side::Primary
        };
        assert_eq!(
            *p.node(loser).phase(),
            Phase::Halted(HaltReason::LostArbitration { winner })
        );
        assert_eq!(
            p.notices_of(loser).last(),
            Some(&Notice::ArbiterLost { winner })
        );
        assert_eq!(p.step(loser), Some(StepOutcome::Halted));
        let now = p.now;
        assert_eq!(p.node_mut(loser).poll_transmit(now), None);
        let emitted = p.node(loser).world().emitted.len();
        p.step(loser);
        assert_eq!(p.node(loser).world().emitted.len(), emitted);
        p.assert_no_errors();
    }
}

#[test]
fn the_backup_halts_on_divergence() {
    // The backup's machine produces an output where the primary's read an input.
    let psrc = ScriptedSource::new(Script::new(vec![input(10), output(20)]));
    let bsrc = ScriptedSource::new(Script::new(vec![output(10), output(20)]));
    let mut p = Pair::with_parts(
        test_config(),
        test_config(),
        psrc,
        bsrc,
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.run(3, 100_000);
    let (_, side, err) = p.errors.first().cloned().expect("a divergence");
    assert_eq!(side, Side::Backup);
    let EngineError::Divergence { seq, point, .. } = &err else {
        panic!("expected a divergence, got {err}")
    };
    assert_eq!((*seq, point.count), (1, 10));
    assert_eq!(
        *p.backup.phase(),
        Phase::Halted(HaltReason::Diverged(err.to_string()))
    );
    assert!(err
        .to_string()
        .starts_with("REPLAY DIVERGENCE at record 1 (@10)"));
    assert!(p
        .notices_of(Side::Backup)
        .contains(&Notice::Diverged(err.to_string())));
    assert_eq!(p.step(Side::Backup), Some(StepOutcome::Halted));
    assert_eq!(p.errors.len(), 1, "halted for good");
}

#[test]
fn the_primary_halts_when_its_machine_fails() {
    let mut p = Pair::new(
        Script::new(vec![output(10), fail(50)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    p.step(Side::Primary);
    let r = p.primary.step(0);
    let Err(EngineError::Source(SourceError::Backend(msg))) = &r else {
        panic!("expected a backend error, got {r:?}")
    };
    assert!(msg.contains("scripted failure"));
    let Phase::Halted(HaltReason::SourceFailed(why)) = p.primary.phase().clone() else {
        panic!("phase {:?}", p.primary.phase())
    };
    assert!(why.contains("scripted failure"), "{why}");
    assert!(p.primary.is_halted());
    assert_eq!(p.primary.step(0).unwrap(), StepOutcome::Halted);
    p.collect();
    assert!(
        !p.notices_of(Side::Primary)
            .iter()
            .any(|n| matches!(n, Notice::Diverged(_))),
        "a machine failure is not a divergence"
    );
}

#[test]
fn a_machine_failure_after_go_live_is_a_machine_failure_not_a_divergence() {
    // The primary's machine fails at 50 and the primary halts; the backup replays the
    // log up to there, goes live, runs on and meets the same failure, now live.
    let mut p = Pair::new(
        Script::new(vec![output(10), fail(50)]),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    assert!(p.run_until(200, MS, |p| p.backup.is_halted()));
    p.collect();
    assert!(p
        .notices_of(Side::Backup)
        .iter()
        .any(|n| matches!(n, Notice::WentLive { .. })));
    let Phase::Halted(HaltReason::SourceFailed(why)) = p.backup.phase().clone() else {
        panic!("phase {:?}", p.backup.phase())
    };
    assert!(why.contains("scripted failure"), "{why}");
    assert!(
        !p.notices_of(Side::Backup)
            .iter()
            .any(|n| matches!(n, Notice::Diverged(_))),
        "a machine failure after go-live is not a divergence"
    );
}

#[test]
fn wrong_role_calls_are_typed_errors() {
    let mut p = Pair::new(
        script(),
        ScriptedWorld::live("p", 1),
        ScriptedWorld::standby("b", 2),
    );
    assert_eq!(
        p.primary.handle_records(vec![], 0),
        Err(EngineError::WrongRole("handle_records", Role::Primary))
    );
    assert_eq!(
        p.backup.handle_ack(Ack::default(), 0),
        Err(EngineError::WrongRole("handle_ack", Role::Backup))
    );
    assert_eq!(p.primary.role(), Role::Primary);
    assert_eq!(p.backup.role(), Role::Backup);
    // A wrong-role call changes nothing.
    assert_eq!(*p.primary.phase(), Phase::Recording);
    assert_eq!(*p.backup.phase(), Phase::Replaying);
}

/// `Config::validate` and `Config::validate_pair` refuse out-of-range and mismatched
/// parameters with the field's name.
#[test]
fn configurations_are_validated() {
    use ft_core::{Config, EngineError, NodeId};
    let field = |r: Result<(), EngineError>| match r {
        Err(EngineError::InvalidConfig { field, .. }) => Some(field),
        Ok(()) => None,
        Err(e) => panic!("not a configuration error: {e}"),
    };
    let ok = Config::default();
    assert_eq!(field(ok.validate()), None);
    for (c, f) in [
        (
            Config {
                heartbeat_interval: 0,
                ..ok.clone()
            },
            "heartbeat_interval",
        ),
        (
            Config {
                slice: 0,
                ..ok.clone()
            },
            "slice",
        ),
        (
            Config {
                max_batch: 0,
                ..ok.clone()
            },
            "max_batch",
        ),
        (
            Config {
                peer_timeout: 0,
                ..ok.clone()
            },
            "peer_timeout",
        ),
        (
            Config {
                peer_timeout: ok.heartbeat_interval * 2 - 1,
                ..ok.clone()
            },
            "peer_timeout",
        ),
        (
            Config {
                arbiter_retry_min: ok.arbiter_retry_max + 1,
                ..ok.clone()
            },
            "arbiter_retry_min",
        ),
    ] {
        assert_eq!(field(c.validate()), Some(f));
    }
    let p = Config {
        node: NodeId(1),
        ..ok.clone()
    };
    let b = Config {
        node: NodeId(2),
        ..ok.clone()
    };
    assert_eq!(field(Config::validate_pair(&p, &b)), None);
    assert_eq!(field(Config::validate_pair(&p, &p)), Some("node"));
    let small_inbox = Config {
        inbox_capacity: p.max_batch - 1,
        ..b.clone()
    };
    assert_eq!(
        field(Config::validate_pair(&p, &small_inbox)),
        Some("max_batch")
    );
    let slow_heartbeat = Config {
        heartbeat_interval: b.peer_timeout,
        ..p.clone()
    };
    assert_eq!(
        field(Config::validate_pair(&slow_heartbeat, &b)),
        Some("peer_timeout")
    );
    let other_pair = Config {
        pair: ft_core::PairId {
            vm: 9,
            generation: 1,
        },
        ..b.clone()
    };
    assert_eq!(field(Config::validate_pair(&p, &other_pair)), Some("pair"));
}

/// Carry out the node's arbiter commands against `arbiter` and hand it the answers.
fn answer(n: &mut TestNode, arbiter: &ft_core::InProcessArbiter, now: ft_core::Nanos) -> usize {
    let mut answered = 0;
    while let Some(Command::TestAndSet { pair, me, .. }) = n.poll_command() {
        n.on_arbiter(ft_core::Arbiter::test_and_set(arbiter, pair, me), now);
        answered += 1;
    }
    answered
}

#[test]
fn a_primary_started_alone_claims_the_arbiter_before_it_runs() {
    let arbiter = ft_core::InProcessArbiter::new();
    let cfg = test_config();
    let mut n: TestNode = ft_core::Node::alone(
        cfg.clone(),
        ScriptedSource::new(script()),
        ScriptedWorld::live("p", 1),
        0,
    );
    assert_eq!(*n.phase(), Phase::Arbitrating);
    assert!(!n.is_live());
    // Nothing runs before the verdict, however often it is stepped.
    for _ in 0..3 {
        assert_eq!(
            n.step(0).ok(),
            Some(StepOutcome::Blocked(Blocked::Arbitrating))
        );
    }
    assert_eq!(n.source().point().count, 0);
    assert!(n.world().emitted.is_empty());
    assert_eq!(
        n.poll_command(),
        Some(Command::TestAndSet {
            pair: cfg.pair,
            me: cfg.node,
            attempt: 1
        })
    );
    // An unreachable arbiter: it keeps waiting and retries; it never runs on its own.
    arbiter.set_unreachable(true);
    n.on_arbiter(
        ft_core::Arbiter::test_and_set(&arbiter, cfg.pair, cfg.node),
        0,
    );
    assert_eq!(*n.phase(), Phase::Arbitrating);
    assert_eq!(
        n.step(MS / 2).ok(),
        Some(StepOutcome::Blocked(Blocked::Arbitrating))
    );
    assert_eq!(n.poll_command(), None, "no retry before the backoff");
    arbiter.set_unreachable(false);
    assert_eq!(
        n.step(MS).ok(),
        Some(StepOutcome::Blocked(Blocked::Arbitrating))
    );
    assert_eq!(answer(&mut n, &arbiter, MS), 1);
    // Won: the token reaches the world before anything runs, and it is live alone.
    assert_eq!(*n.phase(), Phase::Live);
    assert_eq!(n.world().fenced, vec![(1, true)]);
    assert_eq!(arbiter.holder(cfg.pair), Some(cfg.node));
    let notices: Vec<Notice> = std::iter::from_fn(|| n.poll_notice().map(|(_, x)| x)).collect();
    assert!(matches!(
        notices[0],
        Notice::ArbiterUnreachable { attempt: 1, .. }
    ));
    assert_eq!(
        notices[1..],
        [
            Notice::ArbiterWon { token: 1 },
            Notice::WentAlone { released: 0 }
        ]
    );
    // Unprotected: outputs leave at once, nothing is logged or sent.
    for _ in 0..4 {
        n.step(2 * MS).expect("step");
    }
    assert!(n.world().emitted.len() >= 2);
    assert!(n.world().emitted.iter().all(|e| !e.possible_repeat));
    assert_eq!(n.last_seq(), 0);
    assert_eq!(n.poll_transmit(2 * MS), None);
}

#[test]
fn a_second_node_started_alone_for_a_claimed_pair_halts_without_running() {
    let arbiter = ft_core::InProcessArbiter::new();
    let cfg = test_config();
    let mut first: TestNode = ft_core::Node::alone(
        cfg.clone(),
        ScriptedSource::new(script()),
        ScriptedWorld::live("p", 1),
        0,
    );
    answer(&mut first, &arbiter, 0);
    assert!(first.is_live());
    let other = ft_core::Config {
        node: NodeId(9),
        ..cfg.clone()
    };
    let mut second: TestNode = ft_core::Node::alone(
        other,
        ScriptedSource::new(script()),
        ScriptedWorld::live("q", 2),
        0,
    );
    assert_eq!(answer(&mut second, &arbiter, 0), 1);
    assert_eq!(
        *second.phase(),
        Phase::Halted(HaltReason::LostArbitration { winner: NodeId(1) })
    );
    assert_eq!(second.step(MS).ok(), Some(StepOutcome::Halted));
    assert_eq!(second.source().point().count, 0);
    assert!(second.world().emitted.is_empty());
    assert!(
        second.world().fenced.is_empty(),
        "a loser is never handed a token"
    );
}
