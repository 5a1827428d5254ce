//! The TCP log channel's handshake and frame layer (`ft-transport/src/tcp/wire.rs`,
//! the resume answer of `link.rs`), through `ft_transport::tcp::fuzzing`: pure
//! functions over in-memory streams with fixed nonces, no socket, no thread.
//!
//! Both ends of the handshake are fed a peer's messages: either raw fuzzer bytes, or
//! messages built from fuzzer-chosen fields, with the key confirmation or the primary's
//! tag either fuzzer-chosen or computed by the harness (so the fuzzer gets past the
//! authentication and reaches the resume answer and the frame stream). Post-handshake
//! streams are fuzzer-chosen frames (data, control, unknown kinds; valid or tampered
//! tags, wrong counters, lying lengths) followed by raw bytes.
//!
//! Invariants: never a panic; every failure is a typed `TcpError`; and the layer does
//! what it promises:
//! * a peer with the key and well-formed messages is accepted, one without the key or
//!   with a bad message is refused, and the primary's own tag is the right one;
//! * a refusal or hello is all the primary ever sends during a failed handshake;
//! * a reader delivers exactly the authentic in-order data frames before the first
//!   bad one, byte for byte, and stops there with an error (a clean end of stream is
//!   `Ok` only after authentic frames);
//! * `peek_records` agrees with `log_codec::decode_frame` on every valid records frame.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ft_core::log_codec::{self, Frame};
use ft_core::{Ack, Event, ExecPoint, NodeId, OutputSeq, PairId, Record, Role};
use ft_transport::tcp::fuzzing::{self as fz, FuzzSession, Identity};
use ft_transport::tcp::{TcpError, MAGIC, PROTOCOL_VERSION, REFUSAL_LEN};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 4096;
const KEY: &[u8] = b"a pre-shared key for the fuzzer";

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    /// Records `first..first+n` as the log codec encodes them.
    Records {
        first: u64,
        n: u8,
        point: u32,
    },
    Ack {
        received: u64,
        replayed: u64,
    },
    /// A resume answer's body.
    Seq(u64),
    /// The body of the resume answer the backup waits for.
    Expected,
    Refusal(u64, u64, u64),
}

impl Payload {
    /// The payload; `want` is the record the backup asked for.
    fn bytes(&self, want: u64) -> Vec<u8> {
        match self {
            Payload::Raw(b) => b.clone(),
            Payload::Records { first, n, point } => {
                let recs: Vec<Record> = (0..u64::from(*n % 8))
                    .map(|i| Record {
                        seq: first.wrapping_add(i),
                        point: ExecPoint::at(u64::from(*point) + i),
                        event: Event::Heartbeat {
                            released_below: OutputSeq(i),
                        },
                    })
                    .collect();
                let mut out = Vec::new();
                let _ = log_codec::encode_records(&recs, &mut out);
                out
            }
            Payload::Ack { received, replayed } => {
                let mut out = Vec::new();
                let _ = log_codec::encode_ack(
                    &Ack {
                        received: *received,
                        replayed: *replayed,
                    },
                    &mut out,
                );
                out
            }
            Payload::Seq(s) => s.to_le_bytes().to_vec(),
            Payload::Expected => want.to_le_bytes().to_vec(),
            Payload::Refusal(a, b, c) => [a, b, c].iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    /// 0..=4 known kinds (0 is unknown), anything else unknown.
    kind: u8,
    payload: Payload,
    /// Build the tag with the counter off by this much.
    counter_skew: u8,
    /// Xor one byte of the frame (offset, value).
    tamper: Option<(u16, u8)>,
    /// Build the tag for the other direction.
    wrong_dir: bool,
}

#[derive(Arbitrary, Debug)]
struct HelloFields {
    bad_magic: Option<[u8; 4]>,
    version: Option<u16>,
    role: Option<u8>,
    vm: u8,
    generation: u8,
    node: u8,
    image: u8,
    nonce: [u8; 4],
    next_seq: u64,
    status: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum Case {
    /// Raw bytes as the backup's side of a handshake, to the primary.
    PrimaryRaw(Vec<u8>),
    /// Raw bytes as the primary's side of a handshake, to the backup.
    BackupRaw(Vec<u8>),
    /// A backup hello built from fields; its key confirmation computed (with the real
    /// key or a wrong one) or raw; then frames to the primary.
    PrimaryBuilt {
        hello: HelloFields,
        wrong_key: bool,
        confirm: Option<[u8; 32]>,
        frames: Vec<FrameSpec>,
        tail: Vec<u8>,
    },
    /// A primary hello built from fields, its tag computed (real or wrong key) or raw;
    /// then the resume answer and frames to the backup.
    BackupBuilt {
        hello: HelloFields,
        wrong_key: bool,
        tag: Option<[u8; 32]>,
        want: u64,
        answer: FrameSpec,
        frames: Vec<FrameSpec>,
        tail: Vec<u8>,
    },
    /// Raw bytes read as frames by both ends with a known session.
    Stream { role: bool, bytes: Vec<u8> },
}

fn identity_of(h: &HelloFields) -> Identity {
    Identity {
        pair: PairId {
            vm: u64::from(h.vm % 3),
            generation: u64::from(h.generation % 3),
        },
        node: NodeId(u64::from(h.node % 3)),
        image: u64::from(h.image % 2),
    }
}

const OUR_PAIR: PairId = PairId {
    vm: 1,
    generation: 1,
};

/// The primary under test: node 1, image 0.
const PRIMARY: Identity = Identity {
    pair: OUR_PAIR,
    node: NodeId(1),
    image: 0,
};

/// The backup under test: node 2, image 0.
const BACKUP: Identity = Identity {
    pair: OUR_PAIR,
    node: NodeId(2),
    image: 0,
};

/// Whether `peer` may be `me`'s peer: same pair and image, another node.
fn acceptable(me: &Identity, peer: &Identity) -> bool {
    peer.pair == me.pair && peer.node != me.node && peer.image == me.image
}

fn nonce_of(h: &HelloFields) -> [u8; fz::NONCE_LEN] {
    let mut n = [0u8; fz::NONCE_LEN];
    n[..4].copy_from_slice(&h.nonce);
    n
}

/// Encode `specs` for `dir` from `counter` on. Returns the stream and how many leading
/// frames are authentic data frames a reader must deliver (and their payloads), and
/// whether all of them are (then the reader ends at the tail).
fn encode(
    s: &FuzzSession,
    dir: u8,
    counter: u64,
    specs: &[FrameSpec],
    want: u64,
) -> (Vec<u8>, Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut good = Vec::new();
    let mut all_good = true;
    let other = if dir == fz::DIR_TO_BACKUP {
        fz::DIR_TO_PRIMARY
    } else {
        fz::DIR_TO_BACKUP
    };
    for (i, spec) in specs.iter().take(16).enumerate() {
        let c = counter + i as u64;
        let payload = spec.payload.bytes(want);
        let d = if spec.wrong_dir { other } else { dir };
        let mut f = s.frame(
            d,
            c.wrapping_add(u64::from(spec.counter_skew)),
            spec.kind,
            &payload,
        );
        let mut tampered = false;
        if let Some((off, x)) = spec.tamper {
            if x != 0 && !f.is_empty() {
                let i = usize::from(off) % f.len();
                f[i] ^= x;
                tampered = true;
            }
        }
        let limit = if spec.kind == fz::KIND_DATA {
            MAX_FRAME
        } else {
            fz::MAX_CONTROL_PAYLOAD
        };
        let ok = all_good
            && spec.kind == fz::KIND_DATA
            && !tampered
            && spec.counter_skew == 0
            && !spec.wrong_dir
            && payload.len() <= limit;
        if ok {
            good.push(payload);
        } else {
            all_good = false;
        }
        out.extend_from_slice(&f);
    }
    (out, good, all_good)
}

/// Read `stream` as a link with `role` from `counter`, and check the reader against
/// what the frames were built to be.
fn check_stream(s: &FuzzSession, role: Role, counter: u64, specs: &[FrameSpec], tail: &[u8]) {
    let dir = match role {
        Role::Primary => fz::DIR_TO_PRIMARY,
        Role::Backup => fz::DIR_TO_BACKUP,
    };
    let (mut stream, good, all_good) = encode(s, dir, counter, specs, 0);
    stream.extend_from_slice(tail);
    let read = s.read_stream(role, &stream, counter, MAX_FRAME);
    let _ = read.end.as_ref().map_err(|e| e.to_string());
    assert!(read.consumed <= stream.len());
    assert!(
        read.delivered.len() >= good.len(),
        "the reader dropped authentic frames: delivered {} of {} ({:?})",
        read.delivered.len(),
        good.len(),
        read.end
    );
    for (d, g) in read.delivered.iter().zip(&good) {
        assert_eq!(&d.payload, g, "an authentic frame was delivered changed");
    }
    if !all_good {
        // The first bad frame ends the stream: nothing after it may be delivered, and
        // the reader must report why (a tampered frame could only be delivered by
        // forging a MAC).
        assert_eq!(
            read.delivered.len(),
            good.len(),
            "frames delivered after a bad one ({:?})",
            read.end
        );
        assert!(read.end.is_err(), "a bad frame ended the stream cleanly");
    } else if tail.is_empty() {
        assert!(
            read.end.is_ok(),
            "authentic frames then EOF: {:?}",
            read.end
        );
        assert_eq!(read.delivered.len(), good.len());
    }
    for d in &read.delivered {
        check_peek(&d.payload);
        match role {
            Role::Backup => assert_eq!(d.range, fz::peek_records(&d.payload)),
            Role::Primary => {
                let ack = match log_codec::decode_frame(&d.payload) {
                    Ok(Frame::Ack(a)) => Some(a.received),
                    _ => None,
                };
                assert_eq!(d.ack_received, ack);
            }
        }
    }
}

/// `peek_records` must agree with the codec on every valid records frame.
fn check_peek(bytes: &[u8]) {
    let peek = fz::peek_records(bytes);
    if let Ok(Frame::Records(v)) = log_codec::decode_frame(bytes) {
        let expect = match (v.first(), v.last()) {
            (Some(a), Some(b)) => Some((a.seq, b.seq)),
            _ => None,
        };
        assert_eq!(peek, expect, "peek_records disagrees with the codec");
    }
}

fn backup_hello_bytes(h: &HelloFields) -> (Vec<u8>, bool) {
    let mut hello = fz::backup_hello(&identity_of(h), &nonce_of(h), h.next_seq);
    let mut valid = acceptable(&PRIMARY, &identity_of(h));
    if let Some(m) = h.bad_magic {
        hello[..4].copy_from_slice(&m);
        valid &= m == MAGIC;
    }
    if let Some(v) = h.version {
        hello[4..6].copy_from_slice(&v.to_le_bytes());
        valid &= v == PROTOCOL_VERSION;
    }
    if let Some(r) = h.role {
        hello[6] = r;
        valid &= r == 2;
    }
    (hello, valid)
}

fn primary_built(
    h: &HelloFields,
    wrong_key: bool,
    confirm: Option<[u8; 32]>,
    frames: &[FrameSpec],
    tail: &[u8],
) {
    let (hello, valid) = backup_hello_bytes(h);
    // First pass: learn the primary's reply (deterministic: fixed nonce).
    let mut probe = hello.clone();
    probe.extend_from_slice(&[0u8; fz::CONFIRM_LEN]);
    let first = fz::primary_handshake(&probe, KEY, &PRIMARY);
    if !valid {
        let e = first.result.expect_err("a bad hello was accepted");
        let _ = e.to_string();
        assert!(
            first.sent.len() <= REFUSAL_LEN,
            "sent {} bytes to a bad hello",
            first.sent.len()
        );
        return;
    }
    assert_eq!(
        first.sent.len(),
        fz::SERVER_HELLO_LEN,
        "no hello for a good backup hello: {:?}",
        first.result
    );
    let body = fz::SERVER_HELLO_LEN - fz::TAG_LEN;
    let mut transcript = hello.clone();
    transcript.extend_from_slice(&first.sent[..body]);
    let key: &[u8] = if wrong_key {
        b"another key, not the primary's"
    } else {
        KEY
    };
    let backup_view = fz::session_for(key, &transcript).unwrap();
    let real = fz::session_for(KEY, &transcript).unwrap();
    assert_eq!(
        first.sent[body..],
        real.primary_finished(),
        "the primary's tag is not HMAC(K, primary finished)"
    );
    let tag = confirm.unwrap_or_else(|| backup_view.backup_finished());
    let should_pass = tag == real.backup_finished();
    let mut peer = hello;
    peer.extend_from_slice(&tag);
    let stream_start = peer.len();
    let (stream, _, _) = encode(&real, fz::DIR_TO_PRIMARY, 0, frames, 0);
    peer.extend_from_slice(&stream);
    peer.extend_from_slice(tail);
    let second = fz::primary_handshake(&peer, KEY, &PRIMARY);
    assert_eq!(second.sent, first.sent, "the primary's reply changed");
    match second.result {
        Ok((session, next_seq)) => {
            assert!(should_pass, "a wrong key confirmation was accepted");
            assert_eq!(next_seq, h.next_seq);
            assert_eq!(
                second.consumed, stream_start,
                "the handshake read into the frames"
            );
            check_stream(&session, Role::Primary, 0, frames, tail);
        }
        Err(e) => {
            assert!(!should_pass, "a correct key confirmation was refused: {e}");
            assert_eq!(e, TcpError::AuthFailed);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn backup_built(
    h: &HelloFields,
    wrong_key: bool,
    tag: Option<[u8; 32]>,
    want: u64,
    answer: &FrameSpec,
    frames: &[FrameSpec],
    tail: &[u8],
) {
    // The primary's hello: magic, version, status, role, vm, generation, node, image,
    // nonce, tag.
    let id = identity_of(h);
    let mut reply = Vec::with_capacity(fz::SERVER_HELLO_LEN);
    reply.extend_from_slice(&h.bad_magic.unwrap_or(MAGIC));
    reply.extend_from_slice(&h.version.unwrap_or(PROTOCOL_VERSION).to_le_bytes());
    reply.push(h.status.unwrap_or(0));
    reply.push(h.role.unwrap_or(1));
    reply.extend_from_slice(&id.pair.vm.to_le_bytes());
    reply.extend_from_slice(&id.pair.generation.to_le_bytes());
    reply.extend_from_slice(&id.node.0.to_le_bytes());
    reply.extend_from_slice(&id.image.to_le_bytes());
    reply.extend_from_slice(&nonce_of(h));
    let valid = h.bad_magic.is_none_or(|m| m == MAGIC)
        && h.version.is_none_or(|v| v == PROTOCOL_VERSION)
        && h.status.is_none_or(|s| s == 0)
        && h.role.is_none_or(|r| r == 1)
        && acceptable(&BACKUP, &id);
    let hello = fz::backup_hello(&BACKUP, &fz::NONCE, want);
    let mut transcript = hello.clone();
    transcript.extend_from_slice(&reply);
    let key: &[u8] = if wrong_key {
        b"another key, not the backup's!"
    } else {
        KEY
    };
    let primary_view = fz::session_for(key, &transcript).unwrap();
    let real = fz::session_for(KEY, &transcript).unwrap();
    let t = tag.unwrap_or_else(|| primary_view.primary_finished());
    let should_pass = valid && t == real.primary_finished();
    reply.extend_from_slice(&t);
    let hs_len = reply.len();
    let (ans, _, _) = encode(
        &real,
        fz::DIR_TO_BACKUP,
        0,
        std::slice::from_ref(answer),
        want,
    );
    let mut peer = reply;
    peer.extend_from_slice(&ans);
    let (stream, _, _) = encode(&real, fz::DIR_TO_BACKUP, 1, frames, 0);
    peer.extend_from_slice(&stream);
    peer.extend_from_slice(tail);

    let hs = fz::backup_handshake(&peer, KEY, &BACKUP, want);
    // The backup always sends its hello; with a complete primary hello, also its
    // confirmation.
    assert_eq!(
        hs.sent[..fz::CLIENT_HELLO_LEN],
        hello[..],
        "the backup's hello"
    );
    match hs.result {
        Ok(session) => {
            assert!(should_pass, "a primary hello that should fail was accepted");
            assert_eq!(hs.consumed, hs_len);
            assert_eq!(hs.sent[fz::CLIENT_HELLO_LEN..], real.backup_finished());
            let mut rest = &peer[hs_len..];
            let res = session.read_resume_answer(&mut rest, want);
            let _ = res.as_ref().map_err(|e| e.to_string());
            let body = answer.payload.bytes(want);
            let authentic = answer.tamper.is_none_or(|(_, x)| x == 0)
                && answer.counter_skew == 0
                && !answer.wrong_dir;
            let expect_ok =
                authentic && answer.kind == fz::KIND_RESUME && body == want.to_le_bytes();
            assert_eq!(res.is_ok(), expect_ok, "resume answer: {res:?}");
            if authentic && answer.kind == fz::KIND_REFUSED && body.len() == 24 {
                assert!(
                    matches!(res, Err(TcpError::ResumeRefused { .. })),
                    "a refusal read as {res:?}"
                );
            }
            if res.is_ok() {
                check_stream(&session, Role::Backup, 1, frames, tail);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(!should_pass, "a good primary hello was refused: {e}");
            if valid {
                assert_eq!(e, TcpError::AuthFailed);
            }
        }
    }
}

fn run(data: &[u8]) {
    check_peek(data);
    let mut u = Unstructured::new(data);
    let Ok(case) = Case::arbitrary(&mut u) else {
        return;
    };
    match case {
        Case::PrimaryRaw(bytes) => {
            let hs = fz::primary_handshake(&bytes, KEY, &PRIMARY);
            assert!(hs.consumed <= bytes.len());
            assert!(
                hs.sent.is_empty()
                    || hs.sent.len() == REFUSAL_LEN
                    || hs.sent.len() == fz::SERVER_HELLO_LEN,
                "odd reply of {} bytes",
                hs.sent.len()
            );
            if let Err(e) = hs.result {
                let _ = e.to_string();
            }
        }
        Case::BackupRaw(bytes) => {
            let hs = fz::backup_handshake(&bytes, KEY, &BACKUP, 7);
            assert!(hs.consumed <= bytes.len());
            if let Err(e) = hs.result {
                let _ = e.to_string();
            }
        }
        Case::PrimaryBuilt {
            hello,
            wrong_key,
            confirm,
            frames,
            tail,
        } => primary_built(&hello, wrong_key, confirm, &frames, &tail),
        Case::BackupBuilt {
            hello,
            wrong_key,
            tag,
            want,
            answer,
            frames,
            tail,
        } => backup_built(&hello, wrong_key, tag, want, &answer, &frames, &tail),
        Case::Stream { role, bytes } => {
            let s = fz::session_for(KEY, b"a fixed transcript").unwrap();
            let role = if role { Role::Primary } else { Role::Backup };
            let read = s.read_stream(role, &bytes, 0, MAX_FRAME);
            assert!(read.consumed <= bytes.len());
            let _ = read.end.map_err(|e| e.to_string());
            let mut rest = &bytes[..];
            let _ = s.read_resume_answer(&mut rest, 1);
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
