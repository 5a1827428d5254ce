//! The threaded runtime over the in-memory channel, with a real clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use ft_core::{
    Arbiter, ChannelError, Config, EventSource, HaltReason, InProcessArbiter, LogChannel,
    LogReceiver, Nanos, Node, NodeId, Notice,
};
use ft_transport::{
    link_pair, nanos_since, pair, run_backup, run_primary, BackupEnd, Control, Exit, FaultPlan,
    Faults, FaultyLink, PrimaryEnd, RunReport, RuntimeConfig, RuntimeError,
};

type Report<C> = RunReport<Toy, ToyWorld, C>;
type Notices = Arc<Mutex<Vec<(Nanos, Notice)>>>;

struct Running<C> {
    handle: JoinHandle<Report<C>>,
    control: Control,
    notices: Notices,
}

fn start_primary<C: LogChannel + Send + 'static>(
    node: ToyNode,
    chan: C,
    arbiter: Arc<dyn Arbiter>,
    epoch: Instant,
    cfg: RuntimeConfig,
) -> Running<C> {
    let control = Control::new();
    let notices: Notices = Arc::default();
    let (c, n) = (control.clone(), notices.clone());
    let handle = std::thread::spawn(move || {
        run_primary(node, chan, arbiter, epoch, cfg, c, move |t, x| {
            n.lock().unwrap().push((t, x.clone()))
        })
    });
    Running {
        handle,
        control,
        notices,
    }
}

fn start_backup<R: LogReceiver + Send + 'static>(
    node: ToyNode,
    rx: R,
    arbiter: Arc<dyn Arbiter>,
    epoch: Instant,
    cfg: RuntimeConfig,
) -> Running<R> {
    let control = Control::new();
    let notices: Notices = Arc::default();
    let (c, n) = (control.clone(), notices.clone());
    let handle = std::thread::spawn(move || {
        run_backup(node, rx, arbiter, epoch, cfg, c, move |t, x| {
            n.lock().unwrap().push((t, x.clone()))
        })
    });
    Running {
        handle,
        control,
        notices,
    }
}

/// Wait for a run to end; stop it and fail after `limit`.
fn finish<C>(r: Running<C>, limit: Duration, what: &str) -> (Report<C>, Vec<(Nanos, Notice)>) {
    let t0 = Instant::now();
    while !r.handle.is_finished() {
        if t0.elapsed() > limit {
            r.control.stop();
            let rep = r.handle.join().unwrap();
            panic!(
                "{what}: still running after {limit:?}: {rep:?}; notices {:?}",
                r.notices.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let rep = r.handle.join().unwrap();
    let notices = r.notices.lock().unwrap().clone();
    (rep, notices)
}

const LIMIT: Duration = Duration::from_secs(60);

/// Timeouts generous enough for a loaded two-core machine.
fn patient(node: u64) -> Config {
    Config {
        heartbeat_interval: 5_000_000,
        peer_timeout: 10_000_000_000,
        ..config(node)
    }
}

fn rcfg(disconnect_is_failure: bool) -> RuntimeConfig {
    RuntimeConfig {
        idle_sleep: Duration::from_micros(200),
        disconnect_is_failure,
    }
}

fn has(notices: &[(Nanos, Notice)], name: &str) -> bool {
    notices
        .iter()
        .any(|(_, n)| format!("{n:?}").starts_with(name))
}

#[test]
fn records_flow_and_acks_release_outputs() {
    let params = ToyParams {
        idle_every: 3_000,
        halt_at: 300_000,
        ..ToyParams::default()
    };
    let tick = 50_000;
    let arbiter = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let now = nanos_since(epoch);
    let (pe, be) = pair(64);
    let p = start_primary(
        primary(patient(1), params, tick, now),
        pe,
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    let b = start_backup(
        backup(patient(2), params, tick, now),
        be,
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    let (pr, pn) = finish(p, LIMIT, "primary");
    let (br, bn) = finish(b, LIMIT, "backup");
    let code = pr.node.exit_code().expect("primary exit code");
    assert_eq!(pr.exit, Exit::Finished(code), "{pr:?} {pn:?}");
    assert_eq!(br.exit, Exit::Finished(code), "{br:?} {bn:?}");
    assert!(pr.errors.is_empty(), "{:?}", pr.errors);
    assert!(br.errors.is_empty(), "{:?}", br.errors);
    assert!(!br.node.is_live() && arbiter.holder(br.node.config().pair).is_none());
    // Everything the backup took in was replayed; the primary may have logged one
    // more heartbeat after the log's clean end, which the backup need not see.
    let taken = br.node.last_seq();
    assert_eq!(br.node.stats().replayed, taken);
    assert!(taken <= pr.node.last_seq() && pr.node.last_seq() - taken <= 1);
    assert!(br.node.stats().digests_checked > 0);
    let ps = pr.node.stats();
    assert!(ps.acks > 0);
    assert_eq!(ps.released, ps.outputs);
    assert_eq!(pr.node.world().emitted.len() as u64, ps.outputs);
    assert!(br.node.world().emitted.is_empty());
    check_outputs(pr.node.world(), br.node.world(), "clean run");
    assert_eq!(
        pr.node.source().clone().digest(),
        br.node.source().clone().digest()
    );
    // Everything sent arrived, once.
    assert_eq!(pr.channel.frames_sent(), ps.batches);
    assert_eq!(br.channel.traffic().frames_received, ps.batches);
    assert!(pr.channel.bytes_sent() > ps.records * 2);
    assert!(!has(&bn, "PeerSuspected") && !has(&pn, "PeerSuspected"));
}

#[test]
fn full_channel_pauses_the_primary_and_loses_nothing() {
    let params = ToyParams {
        halt_at: 100_000,
        ..ToyParams::default()
    };
    let cfg = |n| Config {
        outbox_capacity: 64,
        max_batch: 16,
        max_lag: 60_000_000_000,
        ..patient(n)
    };
    let arbiter = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let (pe, be) = pair(2);
    let p = start_primary(
        primary(cfg(1), params, 0, nanos_since(epoch)),
        pe,
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    // The backup starts late: the channel and the outbox fill up meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    let b = start_backup(
        backup(cfg(2), params, 0, nanos_since(epoch)),
        be,
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    let (pr, _) = finish(p, LIMIT, "primary");
    let (br, _) = finish(b, LIMIT, "backup");
    let ps = pr.node.stats();
    assert!(ps.outbox_full_steps > 0, "the primary never paused: {ps:?}");
    assert!(
        pr.errors.is_empty() && br.errors.is_empty(),
        "{pr:?} {br:?}"
    );
    let code = pr.node.exit_code().unwrap();
    assert_eq!(pr.exit, Exit::Finished(code));
    assert_eq!(br.exit, Exit::Finished(code));
    // Everything the backup took in was replayed; the primary may have logged one
    // more heartbeat after the log's clean end, which the backup need not see.
    let taken = br.node.last_seq();
    assert_eq!(br.node.stats().replayed, taken);
    assert!(taken <= pr.node.last_seq() && pr.node.last_seq() - taken <= 1);
    assert_eq!(br.node.stats().duplicates, 0);
    assert_eq!(pr.channel.frames_sent(), ps.batches);
    assert_eq!(br.channel.traffic().frames_received, ps.batches);
    assert_eq!(pr.node.world().emitted.len() as u64, ps.outputs);
    check_outputs(pr.node.world(), br.node.world(), "full channel");
}

fn crash_primary(silent: bool) {
    let what = if silent {
        "silent crash"
    } else {
        "crash with disconnect"
    };
    let params = ToyParams {
        idle_every: 1_000,
        halt_at: 2_000_000,
        ..ToyParams::default()
    };
    let tick = 100_000;
    // Silent: only the failure detector can notice. Disconnect: the timeout is far
    // away, so the disconnect must be what declares the primary dead.
    let timeout = if silent { 200_000_000 } else { 60_000_000_000 };
    let cfg = |n| Config {
        peer_timeout: timeout,
        ..patient(n)
    };
    let arbiter = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let now = nanos_since(epoch);
    let (pe, be) = pair(64);
    let pnode = primary(cfg(1), params, tick, now);
    let emitted = pnode.world().emit_count.clone();
    let p = start_primary(pnode, pe, arbiter.clone(), epoch, rcfg(!silent));
    let b = start_backup(
        backup(cfg(2), params, tick, now),
        be,
        arbiter.clone(),
        epoch,
        rcfg(!silent),
    );
    let t0 = Instant::now();
    while emitted.load(Ordering::SeqCst) < 100 {
        assert!(t0.elapsed() < LIMIT, "{what}: the primary emitted nothing");
        std::thread::sleep(Duration::from_micros(200));
    }
    p.control.crash();
    let (pr, _) = finish(p, LIMIT, "primary");
    assert_eq!(pr.exit, Exit::Crashed);
    let RunReport {
        node: pnode,
        channel: pchan,
        ..
    } = pr;
    let sent = pchan.frames_sent();
    // A crashed process's socket closes; a hung or cut-off one stays silent.
    let keep = if silent {
        Some(pchan)
    } else {
        drop(pchan);
        None
    };
    let (br, bn) = finish(b, LIMIT, what);
    drop(keep);

    let code = br
        .node
        .exit_code()
        .expect("the backup ran the guest to its end");
    assert_eq!(br.exit, Exit::Finished(code), "{what}: {br:?}");
    assert!(br.node.is_live());
    assert_eq!(arbiter.holder(br.node.config().pair), Some(NodeId(2)));
    for want in ["PeerSuspected", "Drained", "ArbiterWon", "WentLive"] {
        assert!(has(&bn, want), "{what}: no {want} in {bn:?}");
    }
    let resent = bn
        .iter()
        .find_map(|(_, n)| match n {
            Notice::WentLive { resent_outputs, .. } => Some(*resent_outputs),
            _ => None,
        })
        .unwrap();
    let bw = br.node.world();
    // How many outputs were still unconfirmed when the crash landed depends on real
    // time; what must hold does not: the re-sent outputs come first, marked as
    // possible repeats, and none is past what the backup replayed; together with the
    // primary's they lose nothing and contradict nothing (`check_outputs`).
    let repeats = bw.emitted.iter().filter(|(_, rep)| *rep).count();
    assert_eq!(repeats, resent, "{what}");
    assert!(
        bw.emitted.iter().take(resent).all(|(_, rep)| *rep),
        "{what}: a re-sent output came after a new one"
    );
    if let (Some((first_new, _)), Some((last_primary, _))) =
        (bw.emitted.get(resent), pnode.world().emitted.last())
    {
        assert!(
            first_new.seq.0 > last_primary.seq.0,
            "{what}: the backup emitted #{} as new though the primary had released up to #{}",
            first_new.seq.0,
            last_primary.seq.0
        );
    }
    assert!(bw.live_at.is_some() && bw.announced);
    check_outputs(pnode.world(), bw, what);
    assert_eq!(br.channel.traffic().frames_received, sent, "{what}");
    if silent {
        assert!(br.errors.is_empty(), "{what}: {:?}", br.errors);
    } else {
        assert_eq!(
            br.errors,
            vec![RuntimeError::Channel(ChannelError::Disconnected)]
        );
    }
}

#[test]
fn silent_primary_crash_backup_goes_live_and_resends_outputs() {
    crash_primary(true);
}

#[test]
fn primary_crash_with_disconnect_backup_goes_live_at_once() {
    crash_primary(false);
}

#[test]
fn corruption_breaks_the_link_and_exactly_one_side_survives() {
    let seed = 17;
    let params = ToyParams {
        idle_every: 2_000,
        halt_at: 400_000,
        ..ToyParams::default()
    };
    let tick = 50_000;
    let cfg = |n| Config {
        peer_timeout: 200_000_000,
        ..patient(n)
    };
    let plan = FaultPlan {
        outbound: Faults {
            corrupt: 0.01,
            ..Faults::none()
        },
        inbound: Faults::none(),
    };
    let arbiter = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let now = nanos_since(epoch);
    let (pl, bl) = link_pair(64);
    let pl = FaultyLink::new(pl, seed, plan).unwrap();
    let p = start_primary(
        primary(cfg(1), params, tick, now),
        PrimaryEnd::new(pl),
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    let b = start_backup(
        backup(cfg(2), params, tick, now),
        BackupEnd::new(bl),
        arbiter.clone(),
        epoch,
        rcfg(true),
    );
    let (pr, pn) = finish(p, LIMIT, &format!("seed {seed}: primary"));
    let (br, bn) = finish(b, LIMIT, &format!("seed {seed}: backup"));
    assert!(
        matches!(
            br.errors.first(),
            Some(RuntimeError::Channel(ChannelError::Corrupt(_)))
        ),
        "seed {seed}: {:?}",
        br.errors
    );
    let (winner, loser, wn) = if pr.node.is_live() {
        (&pr.exit, &br.exit, &pn)
    } else {
        (&br.exit, &pr.exit, &bn)
    };
    assert!(
        matches!(winner, Exit::Finished(_)),
        "seed {seed}: {:?} / {:?}",
        pr.exit,
        br.exit
    );
    assert!(
        matches!(loser, Exit::Halted(HaltReason::LostArbitration { .. })),
        "seed {seed}: {:?} / {:?}",
        pr.exit,
        br.exit
    );
    assert!(has(wn, "ArbiterWon"), "seed {seed}");
    check_outputs(pr.node.world(), br.node.world(), &format!("seed {seed}"));
}

#[test]
fn unprotected_node_runs_alone_and_stop_ends_a_run() {
    let params = ToyParams {
        halt_at: 50_000,
        ..ToyParams::default()
    };
    let epoch = Instant::now();
    let arbiter: Arc<dyn Arbiter> = Arc::new(InProcessArbiter::new());
    let (pe, _be) = pair(4);
    let node = Node::unprotected(
        config(1),
        Toy::new(params),
        ToyWorld::new(0, 0),
        nanos_since(epoch),
    );
    let r = start_primary(node, pe, arbiter.clone(), epoch, rcfg(true));
    let (rep, _) = finish(r, LIMIT, "unprotected");
    let code = rep.node.exit_code().unwrap();
    assert_eq!(rep.exit, Exit::Finished(code));
    assert_eq!(rep.channel.frames_sent(), 0);
    assert_eq!(
        rep.node.world().emitted.len() as u64,
        rep.node.stats().outputs
    );

    // A backup whose primary never shows up runs until stopped.
    let (_pe, be) = pair(4);
    let b = start_backup(
        backup(patient(2), params, 0, nanos_since(epoch)),
        be,
        arbiter,
        epoch,
        rcfg(true),
    );
    std::thread::sleep(Duration::from_millis(50));
    b.control.stop();
    let (rep, notices) = finish(b, LIMIT, "stopped backup");
    assert_eq!(rep.exit, Exit::Stopped);
    assert!(rep.errors.is_empty() && notices.is_empty(), "{rep:?}");
}
