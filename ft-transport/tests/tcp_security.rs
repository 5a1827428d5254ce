//! Peer authentication and bad input on the TCP log channel: wrong keys, foreign
//! peers, wrong magic, version, role or pair, tampered, replayed, oversized, truncated
//! and unknown frames. Each is refused or rejected with a typed error, counted, and
//! never reaches the replayer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod tcp_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use ft_core::log_codec::{self, CodecError};
use ft_core::{Ack, ChannelError, LogReceiver, PairId};
use ft_transport::tcp::{
    PrimaryListener, TcpError, TcpLink, CLIENT_HELLO_LEN, MAGIC, PROTOCOL_VERSION, REFUSAL_LEN,
    SERVER_HELLO_LEN,
};
use ft_transport::{BackupEnd, FrameLink};
use tcp_support::*;

/// A well-formed backup hello, with fields overridden.
fn raw_hello(version: u16, role: u8, pair: PairId) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.push(role);
    h.extend_from_slice(&pair.vm.to_le_bytes());
    h.extend_from_slice(&pair.generation.to_le_bytes());
    // Node 9 (not the primary's), image digest 0 (the test configurations').
    h.extend_from_slice(&9u64.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&[0x5a; 32]);
    h.extend_from_slice(&1u64.to_le_bytes());
    assert_eq!(h.len(), CLIENT_HELLO_LEN);
    h
}

fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}

/// A backup with `c` tries the listener while it waits for its first backup: the
/// listener refuses it (and times out); the backup's error is returned.
fn refused_at_accept(l: &mut PrimaryListener, c: ft_transport::tcp::TcpConfig) -> TcpError {
    let addr = l.local_addr();
    let t = std::thread::spawn(move || TcpLink::connect(addr, c, PATIENCE));
    assert!(matches!(
        l.accept(Some(Duration::from_secs(1))),
        Err(TcpError::Timeout(_))
    ));
    t.join().unwrap().unwrap_err()
}

#[test]
fn wrong_key_is_refused_counted_and_gets_nothing() {
    let good = key(1);
    let bad = key(2);
    let mut l = PrimaryListener::bind("127.0.0.1:0", cfg(&good)).unwrap();
    let addr = l.local_addr();
    // A backup with the wrong key, before the real one: both sides refuse.
    let e = refused_at_accept(&mut l, backup_cfg(&bad));
    assert_eq!(e, TcpError::AuthFailed);
    assert!(e.to_string().contains("authentication failed"), "{e}");
    let s = l.stats();
    assert_eq!((s.auth_failures, s.refused, s.connections), (1, 1, 0));

    // The real backup gets in, and records flow.
    let b = std::thread::spawn(move || TcpLink::connect(addr, backup_cfg(&good), PATIENCE));
    let mut p = l.accept(Some(PATIENCE)).unwrap();
    let mut b = BackupEnd::new(b.join().unwrap().unwrap());
    let ph = p.handle();
    let (mut rng, _) = rng("wrong_key");
    let mut buf = Vec::new();
    log_codec::encode_records(&records(&mut rng, 1, 10, 64), &mut buf).unwrap();
    p.try_send_frame(Bytes::from(buf)).unwrap();

    // Meanwhile, attackers without the key: a backup with the wrong key...
    assert_eq!(
        TcpLink::connect(addr, backup_cfg(&bad), PATIENCE).unwrap_err(),
        TcpError::AuthFailed
    );
    // ...and a raw client that fakes the confirmation: it gets the primary's hello
    // (nonce and tag, worthless without the key) and then the connection closes, with
    // not one frame sent to it.
    let mut a = raw(addr);
    a.write_all(&raw_hello(PROTOCOL_VERSION, 2, PAIR)).unwrap();
    let mut hello = [0u8; SERVER_HELLO_LEN];
    a.read_exact(&mut hello).unwrap();
    a.write_all(&[0u8; 32]).unwrap();
    assert_eq!(
        read_all(&mut a),
        Vec::<u8>::new(),
        "nothing after the hello"
    );
    wait_for("3 auth failures", || ph.stats().auth_failures == 3);

    // The genuine pair was not disturbed.
    let mut got = Vec::new();
    wait_for("the records", || {
        if let Some(r) = b.try_recv_records().unwrap() {
            got.extend(r);
        }
        got.len() == 10
    });
    let s = ph.stats();
    assert_eq!((s.connections, s.disconnects, s.refused), (1, 0, 3));
    assert!(b.link().is_connected());
    assert_eq!(b.link().stats().auth_failures, 0);

    // A backup with the right key facing a primary that has another one refuses too.
    let mut other = PrimaryListener::bind("127.0.0.1:0", cfg(&bad)).unwrap();
    assert_eq!(
        refused_at_accept(&mut other, backup_cfg(&key(1))),
        TcpError::AuthFailed
    );
    assert_eq!(other.stats().auth_failures, 1);
}

#[test]
fn foreign_connections_are_refused_and_counted() {
    let k = key(3);
    let mut c = cfg(&k);
    c.handshake_timeout = Duration::from_millis(200);
    let (p, b, addr) = connect(c.clone(), as_backup(c), None);
    let ph = p.handle();
    // Garbage: refused at the first byte that is not the magic.
    let mut g = raw(addr);
    g.write_all(b"GET / HTTP/1.1\r\nHost: ft\r\n\r\n").unwrap();
    assert!(read_all(&mut g).is_empty(), "nothing answers garbage");
    // A port scanner: connects and leaves.
    drop(raw(addr));
    // A silent peer: refused when the handshake times out.
    let mut s = raw(addr);
    assert!(read_all(&mut s).is_empty());
    wait_for("3 foreign connections", || ph.stats().foreign == 3);
    assert_eq!(ph.stats().refused, 3);
    assert!(matches!(
        ph.last_error(),
        Some(TcpError::Foreign(_) | TcpError::BadMagic { .. })
    ));
    assert!(p.is_connected() && b.is_connected());
    assert_eq!(ph.stats().connections, 1);
}

#[test]
fn wrong_magic_version_role_or_pair_is_a_clear_error() {
    let k = key(4);
    let (p, _b, addr) = connect(cfg(&k), backup_cfg(&k), None);
    let ph = p.handle();

    // A backup speaking version 99: the primary answers with its own version and
    // refuses.
    let mut s = raw(addr);
    s.write_all(&raw_hello(99, 2, PAIR)).unwrap();
    let answer = read_all(&mut s);
    assert_eq!(answer.len(), REFUSAL_LEN);
    assert_eq!(&answer[..4], &MAGIC);
    assert_eq!(u16::from_le_bytes([answer[4], answer[5]]), PROTOCOL_VERSION);
    assert_eq!(answer[6], 1, "status: version");
    // A second primary connecting as if it were a backup.
    let mut s = raw(addr);
    s.write_all(&raw_hello(PROTOCOL_VERSION, 1, PAIR)).unwrap();
    assert_eq!(read_all(&mut s)[6], 2, "status: role");
    // A backup of another pairing generation.
    let mut other = backup_cfg(&k);
    other.pair.generation = 2;
    let e = TcpLink::connect(addr, other, PATIENCE).unwrap_err();
    assert!(matches!(e, TcpError::PairMismatch { .. }), "{e}");
    // The refusal reaches the peer a moment before the primary has counted it.
    wait_for("3 refusals", || ph.stats().refused == 3);
    let st = ph.stats();
    assert_eq!(
        (st.version_mismatches, st.peer_mismatches, st.refused),
        (1, 2, 3)
    );
    assert_eq!(
        (st.connections, st.disconnects),
        (1, 0),
        "none was accepted"
    );
    assert!(matches!(
        ph.last_error(),
        Some(TcpError::PairMismatch { .. })
    ));

    // Seen from the backup: something that is not a primary, an HTTP server...
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let faddr = fake.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        for reply in [
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            [&MAGIC[..], &3u16.to_le_bytes()[..], &[0u8; 90][..]].concat(),
        ] {
            let (mut c, _) = fake.accept().unwrap();
            let mut hello = [0u8; CLIENT_HELLO_LEN];
            c.read_exact(&mut hello).unwrap();
            c.write_all(&reply).unwrap();
            let _ = read_all(&mut c);
        }
    });
    let e = TcpLink::connect(faddr, backup_cfg(&k), PATIENCE).unwrap_err();
    assert_eq!(e, TcpError::BadMagic { found: *b"HTTP" });
    assert!(e.to_string().contains("bad protocol magic"), "{e}");
    // ...and a primary of a newer version.
    let e = TcpLink::connect(faddr, backup_cfg(&k), PATIENCE).unwrap_err();
    assert_eq!(
        e,
        TcpError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 3
        }
    );
    assert!(e.to_string().contains("version mismatch"), "{e}");
    t.join().unwrap();
}

/// Split brain starts with two sides that believe they are the same node: a backup
/// with the primary's node id is refused at the handshake, on both ends, and so is a
/// backup that starts from another guest image.
#[test]
fn a_backup_with_the_primarys_node_id_or_another_image_is_refused() {
    let k = key(6);
    let (p, _b, addr) = connect(cfg(&k), backup_cfg(&k), None);
    let ph = p.handle();
    // The primary's own configuration, node 1, used for a backup.
    let e = TcpLink::connect(addr, cfg(&k), PATIENCE).unwrap_err();
    assert_eq!(
        e,
        TcpError::NodeCollision {
            node: ft_core::NodeId(1)
        }
    );
    assert!(e.to_string().contains("node id collision"), "{e}");
    let other = ft_transport::tcp::TcpConfig {
        image: 0xbad,
        ..backup_cfg(&k)
    };
    let e = TcpLink::connect(addr, other, PATIENCE).unwrap_err();
    assert_eq!(
        e,
        TcpError::ImageMismatch {
            ours: 0xbad,
            theirs: None
        }
    );
    assert!(e.to_string().contains("guest image mismatch"), "{e}");
    wait_for("2 refusals", || ph.stats().refused == 2);
    assert_eq!(ph.stats().peer_mismatches, 2);
    assert_eq!(ph.stats().connections, 1, "neither was accepted");
    assert_eq!(
        ph.last_error(),
        Some(TcpError::ImageMismatch {
            ours: 0,
            theirs: Some(0xbad)
        })
    );
}

/// Once a backup is connected, the primary's link serves that node only: a second
/// backup of the same pair, with the key and image but another node id (a stray
/// joiner, say), is refused with the id of the one being served instead of taking
/// over its connection and log stream; the first backup's connection stays up and
/// the records still flow to it.
#[test]
fn a_second_backup_cannot_take_over_the_first_ones_stream() {
    let k = key(7);
    let (p, b, addr) = connect(cfg(&k), backup_cfg(&k), None);
    let (ph, bh) = (p.handle(), b.handle());
    let third = ft_transport::tcp::TcpConfig {
        node: ft_core::NodeId(3),
        ..backup_cfg(&k)
    };
    let e = TcpLink::connect(addr, third, PATIENCE).unwrap_err();
    assert_eq!(
        e,
        TcpError::BackupTaken {
            backup: ft_core::NodeId(2),
            refused: None
        }
    );
    assert!(e.to_string().contains("a second backup is refused"), "{e}");
    wait_for("the refusal", || ph.stats().refused == 1);
    assert_eq!(
        ph.last_error(),
        Some(TcpError::BackupTaken {
            backup: ft_core::NodeId(2),
            refused: Some(ft_core::NodeId(3))
        })
    );
    assert_eq!(ph.stats().connections, 1);
    assert_eq!(
        bh.stats().disconnects,
        0,
        "the first backup kept its connection"
    );
    let (mut rng, _) = rng("second backup");
    let (mut pe, mut be) = ends(p, b);
    let all = records(&mut rng, 1, 200, 64);
    stream(&mut pe, &mut be, &all, &mut rng, 16, |_, _| {});
}

/// One tamper, through a proxy, while records stream: the frame is rejected with the
/// expected error and counted, the connection is replaced, and the records still
/// arrive exactly once, in order, untouched.
fn tamper(t: Tamper, check: impl Fn(&TcpError) -> bool) {
    let (mut rng, _) = rng(&format!("tamper {t:?}"));
    let k = key(5);
    let proxy = Proxy::start();
    proxy.arm(t);
    let (p, b, _) = connect(cfg(&k), backup_cfg(&k), Some(&proxy));
    let (ph, bh) = (p.handle(), b.handle());
    let (mut pe, mut be) = ends(p, b);
    let all = records(&mut rng, 1, 2_000, 2048);
    stream(&mut pe, &mut be, &all, &mut rng, 32, |_, _| {});
    assert_eq!(proxy.fired(), 1);
    let victim = match t {
        Tamper::FlipBit { dir, .. }
        | Tamper::Oversize { dir, .. }
        | Tamper::UnknownKind { dir, .. }
        | Tamper::Truncate { dir, .. }
        | Tamper::Replay { dir, .. } => match dir {
            Dir::ToBackup => &bh,
            Dir::ToPrimary => &ph,
        },
    };
    let s = victim.stats();
    let err = victim.last_error();
    eprintln!("{t:?}: {err:?}\nvictim {s:?}");
    assert!(err.as_ref().is_some_and(&check), "{t:?}: {err:?}");
    assert_eq!(s.mac_failures + s.stream_errors, 1, "{s:?}");
    assert_eq!(bh.stats().reconnects, 1);
    assert_eq!(ph.stats().reconnects, 1);
}

#[test]
fn a_flipped_bit_fails_the_mac() {
    tamper(
        Tamper::FlipBit {
            dir: Dir::ToBackup,
            frame: 5,
        },
        |e| matches!(e, TcpError::BadMac { counter: 5 }),
    );
    tamper(
        Tamper::FlipBit {
            dir: Dir::ToPrimary,
            frame: 3,
        },
        |e| matches!(e, TcpError::BadMac { counter: 3 }),
    );
}

#[test]
fn a_replayed_frame_fails_the_mac() {
    tamper(
        Tamper::Replay {
            dir: Dir::ToBackup,
            frame: 4,
        },
        |e| matches!(e, TcpError::BadMac { counter: 5 }),
    );
}

#[test]
fn an_oversized_length_prefix_is_refused_before_allocating() {
    tamper(
        Tamper::Oversize {
            dir: Dir::ToBackup,
            frame: 2,
        },
        |e| {
            matches!(
                e,
                TcpError::FrameTooLarge {
                    len: 0xFFFF_FFF0,
                    ..
                }
            )
        },
    );
}

#[test]
fn a_truncated_frame_is_an_error() {
    tamper(
        Tamper::Truncate {
            dir: Dir::ToBackup,
            frame: 3,
        },
        |e| matches!(e, TcpError::Truncated { .. }),
    );
}

#[test]
fn an_unknown_stream_frame_kind_is_an_error() {
    tamper(
        Tamper::UnknownKind {
            dir: Dir::ToPrimary,
            frame: 1,
        },
        |e| matches!(e, TcpError::UnknownFrameKind(0x7f)),
    );
}

#[test]
fn bad_log_frames_inside_authentic_frames_are_corrupt() {
    // The stream layer authenticates; the log codec still checks what it carries.
    let k = key(6);
    let mut ack = Vec::new();
    log_codec::encode_ack(&Ack::default(), &mut ack).unwrap();
    let mut unknown_kind = ack.clone();
    unknown_kind[6] = 9;
    let mut bad_crc = ack.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    let mut short = Vec::new();
    let (mut rng, _) = rng("bad_log_frames");
    log_codec::encode_records(&records(&mut rng, 1, 3, 64), &mut short).unwrap();
    short.truncate(short.len() - 2);
    type Check = fn(&CodecError) -> bool;
    let cases: Vec<(Vec<u8>, Check)> = vec![
        (unknown_kind, |e| {
            matches!(e, CodecError::UnknownFrameKind(9))
        }),
        (bad_crc, |e| matches!(e, CodecError::Checksum { .. })),
        (short, |e| matches!(e, CodecError::Truncated { .. })),
        (b"not a log frame".to_vec(), |e| {
            matches!(e, CodecError::BadMagic { .. })
        }),
    ];
    for (frame, check) in cases {
        let (mut p, b, _) = connect(cfg(&k), backup_cfg(&k), None);
        let mut be = BackupEnd::new(b);
        p.try_send_frame(Bytes::from(frame)).unwrap();
        let mut res = Ok(None);
        wait_for("the frame", || {
            res = be.try_recv_records();
            !matches!(res, Ok(None))
        });
        match res {
            Err(ChannelError::Corrupt(e)) => assert!(check(&e), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
