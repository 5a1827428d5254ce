//! Reconnect and resume on the TCP log channel: connections cut mid-stream lose and
//! duplicate no record (as the engine sees them), a full replicated run survives
//! repeated cuts, and a backup asking for records the primary no longer holds gets a
//! typed refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod tcp_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ft_core::{Ack, Config, EngineError, EventSource, InProcessArbiter, LogChannel, LogReceiver};
use ft_transport::tcp::{TcpError, TcpLink};
use ft_transport::{nanos_since, run_backup, run_primary, Exit, RuntimeConfig, RuntimeError};
use rand::{Rng, SeedableRng};
use tcp_support::*;

#[test]
fn cuts_mid_stream_lose_and_duplicate_nothing() {
    let (mut rng, _) = rng("cuts_mid_stream");
    let k = key(1);
    let proxy = Proxy::start();
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), Some(&proxy));
    let (ph, bh) = (p.handle(), b.handle());
    let (mut pe, mut be) = ends(p, b);
    let all = records(&mut rng, 1, 20_000, 1024);
    let mut cuts = 0u64;
    let (seen, _) = stream(&mut pe, &mut be, &all, &mut rng, 64, |_, rng| {
        if rng.gen_ratio(1, 40) {
            // Cut right after a batch left, then wait for the new connection, so that
            // every cut hits a live connection with records in flight.
            let before = bh.stats().connections;
            proxy.cut();
            cuts += 1;
            wait_for("the reconnection", || bh.stats().connections > before);
        }
    });
    let (ps, bs) = (ph.stats(), bh.stats());
    eprintln!(
        "{cuts} cuts, {} duplicates in {} batches\nprimary {ps:?}\nbackup {bs:?}",
        seen.duplicates, seen.batches
    );
    assert!(cuts > 0);
    assert!(bs.reconnects >= cuts && bs.disconnects >= cuts);
    assert_eq!(ps.mac_failures + bs.mac_failures, 0);
    assert!(seen.duplicates <= ps.frames_resent * 64);
}

#[test]
fn dropping_the_connection_on_either_side_resumes() {
    let (mut rng, _) = rng("drop_connection");
    let k = key(2);
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), None);
    let (ph, bh) = (p.handle(), b.handle());
    let (mut pe, mut be) = ends(p, b);
    let all = records(&mut rng, 1, 10_000, 512);
    let mut drops = 0u64;
    stream(&mut pe, &mut be, &all, &mut rng, 32, |i, rng| {
        if i % 50 == 25 {
            if rng.gen() {
                ph.drop_connection()
            } else {
                bh.drop_connection()
            }
            drops += 1;
        }
    });
    let (ps, bs) = (ph.stats(), bh.stats());
    eprintln!("{drops} drops\nprimary {ps:?}\nbackup {bs:?}");
    assert!(bs.reconnects >= 1);
    assert_eq!(ps.connections, bs.connections);
}

#[test]
fn a_replicated_run_survives_repeated_cuts() {
    let (_, seed) = rng("run_survives_cuts");
    let k = key(3);
    let proxy = Arc::new(Proxy::start());
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), Some(&proxy));
    let (ph, bh) = (p.handle(), b.handle());
    let (pe, be) = ends(p, b);
    let params = ToyParams {
        idle_every: 3_000,
        halt_at: 3_000_000,
        ..ToyParams::default()
    };
    let tick = 50_000;
    let patient = |n| Config {
        heartbeat_interval: 5_000_000,
        peer_timeout: 10_000_000_000,
        ..config(n)
    };
    let arbiter = Arc::new(InProcessArbiter::new());
    let epoch = Instant::now();
    let now = nanos_since(epoch);
    let (pn, bn) = (
        primary(patient(1), params, tick, now),
        backup(patient(2), params, tick, now),
    );
    let a = arbiter.clone();
    let pr =
        spawn_run(move |c| run_primary(pn, pe, a, epoch, RuntimeConfig::default(), c, |_, _| {}));
    let a = arbiter.clone();
    let br =
        spawn_run(move |c| run_backup(bn, be, a, epoch, RuntimeConfig::default(), c, |_, _| {}));
    // Cut the connection at random moments until both runs end.
    let done = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let cutter = {
        let (done, cuts, proxy) = (done.clone(), cuts.clone(), proxy.clone());
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xC07);
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(r.gen_range(2..15)));
                proxy.cut();
                cuts.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let pr = finish(pr, "primary");
    let br = finish(br, "backup");
    done.store(true, Ordering::SeqCst);
    cutter.join().unwrap();
    let (ps, bs) = (ph.stats(), bh.stats());
    eprintln!(
        "{} cuts; backup saw {} duplicate records\nprimary link {ps:?}\nbackup link {bs:?}",
        cuts.load(Ordering::SeqCst),
        br.node.stats().duplicates
    );
    let gap = |errs: &[RuntimeError]| {
        errs.iter().any(|e| {
            matches!(
                e,
                RuntimeError::Engine(
                    EngineError::SequenceGap { .. } | EngineError::OutOfOrder { .. }
                )
            )
        })
    };
    assert!(!gap(&pr.errors) && !gap(&br.errors));
    let code = pr.node.exit_code().expect("primary exit code");
    assert_eq!(pr.exit, Exit::Finished(code), "{pr:?}");
    assert_eq!(br.exit, Exit::Finished(code), "{br:?}");
    assert!(pr.errors.is_empty(), "{:?}", pr.errors);
    assert!(br.errors.is_empty(), "{:?}", br.errors);
    let st = pr.node.stats();
    assert_eq!(st.released, st.outputs);
    check_outputs(pr.node.world(), br.node.world(), "run with cuts");
    assert!(br.node.world().emitted.is_empty());
    // Every record the backup's engine took, it took exactly once and in order (it
    // counts only fresh records, and a gap would have been an error), up to the log's
    // clean end; the primary may have sent a heartbeat or two more before it saw the
    // backup's last ack.
    let (bs, bl, pl) = (br.node.stats(), br.node.last_seq(), pr.node.last_seq());
    assert_eq!(bs.records, bl, "{bs:?}");
    assert_eq!(bs.replayed, bl, "{bs:?}");
    assert!(
        bl <= pl && bl >= pr.node.acked_seq(),
        "backup {bl}, primary {pl}"
    );
    assert_eq!(
        pr.node.source().clone().digest(),
        br.node.source().clone().digest()
    );
    assert!(!br.node.is_live());
}

#[test]
fn a_position_the_primary_no_longer_holds_is_refused() {
    let (mut rng, _) = rng("resume_refused");
    let k = key(4);
    let (p, b, addr) = connect(cfg(&k), backup_cfg(&k), None);
    let ph = p.handle();
    let (mut pe, mut be) = ends(p, b);
    // Records 1..=100 delivered and acknowledged; 101..=120 sent, not acknowledged.
    let all = records(&mut rng, 1, 120, 64);
    stream(&mut pe, &mut be, &all[..100], &mut rng, 10, |_, _| {});
    pe.send_records(&all[100..120]).unwrap();
    let mut tail = ExactlyOnce {
        got: all[..100].to_vec(),
        ..ExactlyOnce::default()
    };
    wait_for("records up to 120", || {
        tail.pump(&mut be);
        tail.next() == 121
    });
    // The backup dies without a word, and comes back with nothing.
    be.into_link().abort();
    let e = TcpLink::connect(addr, backup_cfg(&k), PATIENCE).unwrap_err();
    assert_eq!(
        e,
        TcpError::ResumeRefused {
            requested: 1,
            oldest_held: 101,
            next: 121
        }
    );
    assert!(e.to_string().contains("re-cloned"), "{e}");
    // A backup from the future.
    let e = TcpLink::connect_from(addr, backup_cfg(&k), 500, PATIENCE).unwrap_err();
    assert!(
        matches!(
            e,
            TcpError::ResumeRefused {
                requested: 500,
                next: 121,
                ..
            }
        ),
        "{e}"
    );
    // The primary counts a refusal after sending it: wait for its thread to get there.
    wait_for("both refusals counted", || {
        let s = ph.stats();
        (s.resume_refused, s.refused) == (2, 2)
    });
    assert!(matches!(
        ph.last_error(),
        Some(TcpError::ResumeRefused { .. })
    ));

    // A backup that holds everything up to 109 resumes: the kept frame comes again, its
    // first records are duplicates, and nothing is missing.
    let b = TcpLink::connect_from(addr, backup_cfg(&k), 110, PATIENCE).unwrap();
    let mut be = ft_transport::BackupEnd::new(b);
    let mut again = ExactlyOnce {
        got: all[..109].to_vec(),
        ..ExactlyOnce::default()
    };
    wait_for("the resent frame", || {
        again.pump(&mut be);
        again.next() == 121
    });
    assert_eq!(again.duplicates, 9);
    assert_eq!(again.got, all);
    be.send_ack(Ack {
        received: 120,
        replayed: 120,
    })
    .unwrap();
    wait_for(
        "the ack",
        || matches!(pe.try_recv_ack(), Ok(Some(a)) if a.received == 120),
    );
    assert_eq!(ph.stats().reconnects, 1);
}
