//! The TCP log channel carries records and acks, drives a full replicated run through
//! the threaded runtime, says goodbye when dropped, and reports a peer that is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod tcp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ft_core::{
    Ack, ChannelError, Config, EventSource, InProcessArbiter, LogChannel, LogReceiver, PairId,
};
use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpError, TcpLink};
use ft_transport::{nanos_since, run_backup, run_primary, Exit, FrameLink, RuntimeConfig};
use tcp_support::*;

#[test]
fn records_and_acks_flow() {
    let (mut rng, _) = rng("records_and_acks_flow");
    let k = key(1);
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), None);
    let (ph, bh) = (p.handle(), b.handle());
    assert!(ph.is_connected() && bh.is_connected());
    let (mut p, mut b) = ends(p, b);
    let all = records(&mut rng, 1, 5_000, 8 << 10);
    let (seen, ack) = stream(&mut p, &mut b, &all, &mut rng, 64, |_, _| {});
    assert_eq!(seen.duplicates, 0);
    assert_eq!(ack.received, all.len() as u64);
    let (ps, bs) = (ph.stats(), bh.stats());
    eprintln!("primary {ps:?}\nbackup {bs:?}");
    assert_eq!(ps.connections, 1);
    assert_eq!(bs.connections, 1);
    assert_eq!(ps.frames_sent, p.frames_sent());
    assert_eq!(bs.frames_received, p.frames_sent());
    assert_eq!(ps.frames_received, b.frames_sent());
    assert_eq!(ps.bytes_sent, bs.bytes_received);
    assert_eq!(ps.frames_resent + ps.disconnects + ps.refused, 0);
    assert!(ps.flushes >= 1 && ps.flushes <= ps.frames_sent);
    assert_eq!(bh.next_expected(), all.len() as u64 + 1);
}

#[test]
fn full_run_through_the_runtime() {
    let k = key(2);
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), None);
    let (pe, be) = ends(p, b);
    let params = ToyParams {
        idle_every: 3_000,
        halt_at: 300_000,
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
    let pr = finish(pr, "primary");
    let br = finish(br, "backup");
    let code = pr.node.exit_code().expect("primary exit code");
    assert_eq!(pr.exit, Exit::Finished(code), "{pr:?}");
    assert_eq!(br.exit, Exit::Finished(code), "{br:?}");
    assert!(pr.errors.is_empty(), "{:?}", pr.errors);
    assert!(br.errors.is_empty(), "{:?}", br.errors);
    assert!(!br.node.is_live() && arbiter.holder(br.node.config().pair).is_none());
    let ps = pr.node.stats();
    assert_eq!(ps.released, ps.outputs, "every output released");
    assert!(ps.outputs > 0);
    assert_eq!(pr.node.world().emitted.len() as u64, ps.outputs);
    assert!(br.node.world().emitted.is_empty());
    check_outputs(pr.node.world(), br.node.world(), "tcp run");
    // The backup replayed the whole log up to its clean end (the primary may have sent
    // a last heartbeat after it), each record once.
    let (bs, bl, pl) = (br.node.stats(), br.node.last_seq(), pr.node.last_seq());
    assert_eq!(
        (bs.records, bs.replayed, bs.duplicates),
        (bl, bl, 0),
        "{bs:?}"
    );
    assert!(
        bl <= pl && bl >= pr.node.acked_seq(),
        "backup {bl}, primary {pl}"
    );
    assert!(br.node.stats().digests_checked > 0);
    assert_eq!(
        pr.node.source().clone().digest(),
        br.node.source().clone().digest()
    );
    assert_eq!(pr.channel.frames_sent(), ps.batches);
    assert_eq!(br.channel.traffic().frames_received, ps.batches);
    eprintln!(
        "primary link {:?}\nbackup link {:?}",
        pr.channel.link().stats(),
        br.channel.link().stats()
    );
}

#[test]
fn dropping_one_end_disconnects_the_other_at_once() {
    // The grace is an hour: only the goodbye frame can end these waits.
    let k = key(3);
    let mut c = cfg(&k);
    c.reconnect_grace = Duration::from_secs(3600);
    for drop_backup in [true, false] {
        let (mut p, mut b, _) = connect(c.clone(), as_backup(c.clone()), None);
        p.try_send_frame(Bytes::from_static(b"one last frame"))
            .unwrap();
        wait_for("the frame", || matches!(b.try_recv_frame(), Ok(Some(_))));
        let (gone, mut stays) = if drop_backup { (b, p) } else { (p, b) };
        drop(gone);
        wait_for("the disconnect", || {
            matches!(stays.try_recv_frame(), Err(ChannelError::Disconnected))
        });
        assert_eq!(stays.fatal_error(), Some(TcpError::PeerClosed));
        assert_eq!(
            stays.try_send_frame(Bytes::from_static(b"x")),
            Err(ChannelError::Disconnected)
        );
    }
}

#[test]
fn a_peer_that_never_comes_back_is_reported() {
    let k = key(4);
    let mut c = cfg(&k);
    c.reconnect_grace = Duration::from_millis(200);
    // The backup crashes: the primary waits out the grace, then reports it.
    let (mut p, b, _) = connect(c.clone(), as_backup(c.clone()), None);
    b.abort();
    wait_for("the primary to give up", || {
        matches!(p.try_recv_frame(), Err(ChannelError::Disconnected))
    });
    assert_eq!(p.fatal_error(), Some(TcpError::GaveUp(c.reconnect_grace)));
    assert_eq!(p.stats().disconnects, 1);

    // The primary crashes: its port refuses the backup's reconnect, so it is gone.
    c.reconnect_grace = Duration::from_secs(3600);
    let (p, mut b, _) = connect(c.clone(), as_backup(c.clone()), None);
    p.abort();
    wait_for("the backup to give up", || {
        matches!(b.try_recv_frame(), Err(ChannelError::Disconnected))
    });
    assert!(
        matches!(b.fatal_error(), Some(TcpError::PeerGone(_))),
        "{:?}",
        b.fatal_error()
    );
}

#[test]
fn limits_and_backpressure() {
    let k = key(5);
    let mut c = cfg(&k);
    c.max_frame = 1024;
    c.send_queue_frames = 4;
    let (mut p, b, _) = connect(c.clone(), as_backup(c), None);
    // A frame over the limit is refused on the sending side.
    assert!(matches!(
        p.try_send_frame(Bytes::from(vec![0u8; 2000])),
        Err(ChannelError::Io(m)) if m.contains("exceeds the limit")
    ));
    // The primary keeps frames until an ack covers them: with no acks the queue fills.
    let (mut rng, _) = rng("limits_and_backpressure");
    let mut full = false;
    for i in 0..5u64 {
        let mut buf = Vec::new();
        ft_core::log_codec::encode_records(&records(&mut rng, i + 1, 1, 16), &mut buf).unwrap();
        match p.try_send_frame(Bytes::from(buf)) {
            Ok(()) => {}
            Err(ChannelError::Full) => full = true,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "the fifth unacknowledged frame is refused");
    wait_for("4 frames", || b.stats().frames_received == 4);
    let mut be = ft_transport::BackupEnd::new(b);
    let mut got = 0;
    while got < 4 {
        if let Some(r) = be.try_recv_records().unwrap() {
            got += r.len();
        }
    }
    be.send_ack(Ack {
        received: 4,
        replayed: 4,
    })
    .unwrap();
    let mut pe = ft_transport::PrimaryEnd::new(p);
    wait_for("the ack", || matches!(pe.try_recv_ack(), Ok(Some(_))));
    // The ack freed the queue.
    let recs = records(&mut rng, 5, 1, 16);
    pe.send_records(&recs).unwrap();
}

#[test]
fn keys_from_bytes_and_files() {
    assert!(matches!(
        PreSharedKey::new(b"short"),
        Err(TcpError::KeyTooShort { len: 5, min: 16 })
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "00112233445566778899aabbccddeeff\n").unwrap();
    let k = PreSharedKey::from_file(&path).unwrap();
    assert_eq!(k.len(), 32);
    assert!(!format!("{k:?}").contains("0011"), "the key is redacted");
    std::fs::write(&path, "tiny\n").unwrap();
    assert!(matches!(
        PreSharedKey::from_file(&path),
        Err(TcpError::KeyTooShort { .. })
    ));
    assert!(matches!(
        PreSharedKey::from_file(dir.path().join("missing")),
        Err(TcpError::KeyFile { .. })
    ));
    // A key file works end to end.
    std::fs::write(&path, "a key that lives in a file\n").unwrap();
    let k = PreSharedKey::from_file(&path).unwrap();
    let (mut p, mut b, _) = connect(cfg(&k), backup_cfg(&k), None);
    p.try_send_frame(Bytes::from_static(b"hi")).unwrap();
    wait_for(
        "the frame",
        || matches!(b.try_recv_frame(), Ok(Some(f)) if f.as_ref() == b"hi"),
    );
    // A bad configuration is refused up front.
    let mut bad = TcpConfig::new(
        k,
        PairId {
            vm: 1,
            generation: 1,
        },
        ft_core::NodeId(1),
    );
    bad.send_queue_frames = 0;
    assert!(matches!(
        PrimaryListener::bind("127.0.0.1:0", bad.clone()),
        Err(TcpError::Config(_))
    ));
    assert!(matches!(
        TcpLink::connect("127.0.0.1:1", bad, Duration::from_millis(10)),
        Err(TcpError::Config(_))
    ));
}

#[test]
fn the_fault_injector_wraps_a_tcp_link() {
    // Damage done above the stream layer is authentic to the MAC (it was sent that
    // way); the log codec's checksum still catches it.
    let (_, seed) = rng("fault_injector_wraps");
    let k = key(6);
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), None);
    let plan = ft_transport::FaultPlan {
        outbound: ft_transport::Faults {
            corrupt: 1.0,
            ..ft_transport::Faults::none()
        },
        ..ft_transport::FaultPlan::default()
    };
    let mut pe =
        ft_transport::PrimaryEnd::new(ft_transport::FaultyLink::new(p, seed, plan).unwrap());
    let mut be = ft_transport::BackupEnd::new(b);
    let (mut r, _) = rng("fault_injector_wraps records");
    pe.send_records(&records(&mut r, 1, 5, 64)).unwrap();
    let mut res = Ok(None);
    wait_for("the damaged frame", || {
        res = be.try_recv_records();
        !matches!(res, Ok(None))
    });
    assert!(matches!(res, Err(ChannelError::Corrupt(_))), "{res:?}");
    assert_eq!(
        pe.link().stats(ft_transport::Direction::Outbound).corrupted,
        1
    );
    assert_eq!(be.link().stats().mac_failures, 0);
}
