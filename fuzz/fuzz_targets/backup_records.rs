//! A backup `ft_core::Node` over a real ft-sim `Machine` + `SimWorld`, fed records
//! built from the fuzzer's bytes, interleaved with `step`, `poll_transmit`,
//! `handle_ack`, time, a declared peer failure and arbiter answers.
//!
//! Records come four ways: structured (`arbitrary` records, numbered near what the
//! backup expects), slices of a genuine recorded log with fuzzer-chosen mutations
//! (dropped, duplicated, swapped, moved, rewritten records), raw bytes through
//! `log_codec::decode_frame`, and genuine batches encoded and then damaged.
//!
//! Invariant: never a panic; every failure is a typed `EngineError` or `CodecError`,
//! and the documented contracts hold:
//! * `handle_records` that fails takes nothing (received and buffered counts unchanged);
//! * `handle_ack` on a backup is `EngineError::WrongRole`;
//! * a failed `step` halts the node, and later steps say `Halted`;
//! * a replaying backup transmits only acks, with `replayed <= received <= last_seq`.
//!
//! Work per input is bounded: at most 64 operations, at most 8 steps per operation and
//! a slice of at most 4096 points per step.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use ft_core::log_codec::{self, Frame};
use ft_core::{
    Ack, ArbiterError, AsyncEvent, CloneFrame, CloneMsg, Decision, DeviceId, EngineError, Event,
    ExecPoint, IoId, Node, NodeId, OutputSeq, Phase, Record, Role, StepOutcome, Transmit,
};
use ft_sim::{Disk, Machine, OutputSink, SimWorld, SimWorldConfig};
use libfuzzer_sys::fuzz_target;

fn references() -> &'static [common::Reference; 2] {
    static R: OnceLock<[common::Reference; 2]> = OnceLock::new();
    R.get_or_init(|| [common::reference(0), common::reference(1)])
}

#[derive(Arbitrary, Debug, Clone)]
enum ArbEvent {
    Input {
        device: u8,
        data: Vec<u8>,
    },
    Interrupt {
        device: u8,
    },
    DeviceInput {
        device: u8,
        data: Vec<u8>,
    },
    IoComplete {
        io: u8,
        status: u32,
        data: Option<Vec<u8>>,
    },
    IoStart {
        io: u8,
        digest: u64,
    },
    Output {
        seq: u8,
        digest: u64,
    },
    Digest {
        value: u64,
    },
    Heartbeat {
        released_below: u8,
    },
    Halt {
        code: u64,
    },
    Wild {
        device: u16,
        io: u64,
    },
}

impl ArbEvent {
    fn build(self) -> Event {
        let dev = |d: u8| DeviceId(u16::from(d % 12));
        match self {
            ArbEvent::Input { device, data } => Event::Input {
                device: dev(device),
                data: Bytes::from(data),
            },
            ArbEvent::Interrupt { device } => Event::Async(AsyncEvent::Interrupt {
                device: dev(device),
            }),
            ArbEvent::DeviceInput { device, data } => Event::Async(AsyncEvent::DeviceInput {
                device: dev(device),
                data: Bytes::from(data),
            }),
            ArbEvent::IoComplete { io, status, data } => Event::Async(AsyncEvent::IoComplete {
                io: IoId(u64::from(io % 16)),
                status,
                data: data.map(Bytes::from),
            }),
            ArbEvent::IoStart { io, digest } => Event::IoStart {
                io: IoId(u64::from(io % 16)),
                digest,
            },
            ArbEvent::Output { seq, digest } => Event::Output {
                seq: OutputSeq(u64::from(seq % 32)),
                digest,
            },
            ArbEvent::Digest { value } => Event::Digest { value },
            ArbEvent::Heartbeat { released_below } => Event::Heartbeat {
                released_below: OutputSeq(u64::from(released_below)),
            },
            ArbEvent::Halt { code } => Event::Halt { code },
            ArbEvent::Wild { device, io } => Event::Async(AsyncEvent::IoComplete {
                io: IoId(io),
                status: u32::from(device),
                data: Some(Bytes::from(vec![0xa5; usize::from(device % 4096)])),
            }),
        }
    }
}

/// A record placed relative to what the backup expects: `seq = next + seq_delta`,
/// `point = last point + point_delta`.
#[derive(Arbitrary, Debug, Clone)]
struct ArbRecord {
    seq_delta: i8,
    point_delta: i16,
    sub: u8,
    event: ArbEvent,
}

#[derive(Arbitrary, Debug, Clone)]
enum Mutation {
    None,
    Drop(u8),
    Duplicate(u8),
    Swap(u8, u8),
    MovePoint(u8, i16),
    Renumber(u8, i8),
    Replace(u8, ArbEvent),
    Insert(u8, ArbEvent),
    FlipDigest(u8, u64),
    Truncate(u8),
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// Genuine records from the reference log, from the backup's next expected record
    /// (shifted by `skew`), `len` of them, mutated.
    Genuine {
        skew: i8,
        len: u8,
        mutation: Mutation,
    },
    /// Structured records.
    Structured(Vec<ArbRecord>),
    /// Raw bytes as a log frame.
    Raw(Vec<u8>),
    /// A genuine batch, encoded, with bytes xored at fuzzer-chosen offsets.
    Damaged { len: u8, flips: Vec<(u16, u8)> },
    /// Step a few times.
    Step(u8),
    /// Poll what the backup wants to send.
    Poll,
    /// An ack to a backup (always the wrong role).
    Ack { received: u64, replayed: u64 },
    /// Let time pass.
    Time(u32),
    /// The runtime saw the connection drop.
    PeerFailed,
    /// Answer the arbiter's pending request, if any.
    Arbiter(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    reference: bool,
    slice: u16,
    inbox: u8,
    ops: Vec<Op>,
}

type Backup = Node<Machine, SimWorld>;

fn fresh_backup(r: &common::Reference, slice: u64, inbox: usize) -> Backup {
    let cfg = ft_core::Config {
        slice,
        inbox_capacity: inbox,
        node: NodeId(2),
        ..r.setup.engine.clone()
    };
    let w = SimWorld::new(
        "backup",
        SimWorldConfig::default(),
        Disk::from_bytes(r.setup.disk.clone()),
        OutputSink::new(),
        false,
    );
    Node::backup(cfg, r.setup.machine.clone(), w, 0)
}

fn at(v: &[Record], i: u8) -> Option<usize> {
    (!v.is_empty()).then(|| usize::from(i) % v.len())
}

fn mutate(mut v: Vec<Record>, m: Mutation) -> Vec<Record> {
    match m {
        Mutation::None => {}
        Mutation::Drop(i) => {
            if let Some(i) = at(&v, i) {
                v.remove(i);
            }
        }
        Mutation::Duplicate(i) => {
            if let Some(i) = at(&v, i) {
                let r = v[i].clone();
                v.insert(i, r);
            }
        }
        Mutation::Swap(i, j) => {
            if let (Some(i), Some(j)) = (at(&v, i), at(&v, j)) {
                v.swap(i, j);
            }
        }
        Mutation::MovePoint(i, d) => {
            if let Some(i) = at(&v, i) {
                let p = &mut v[i].point;
                p.count = p.count.saturating_add_signed(i64::from(d));
            }
        }
        Mutation::Renumber(i, d) => {
            if let Some(i) = at(&v, i) {
                v[i].seq = v[i].seq.saturating_add_signed(i64::from(d));
            }
        }
        Mutation::Replace(i, e) => {
            if let Some(i) = at(&v, i) {
                v[i].event = e.build();
            }
        }
        Mutation::Insert(i, e) => {
            if let Some(i) = at(&v, i) {
                let r = Record {
                    event: e.build(),
                    ..v[i].clone()
                };
                v.insert(i, r);
            }
        }
        Mutation::FlipDigest(i, x) => {
            if let Some(i) = at(&v, i) {
                match &mut v[i].event {
                    Event::Digest { value } => *value ^= x,
                    Event::Output { digest, .. } | Event::IoStart { digest, .. } => *digest ^= x,
                    Event::Input { data, .. } => {
                        let mut d = data.to_vec();
                        if let Some(b) = d.first_mut() {
                            *b ^= x as u8;
                        }
                        *data = Bytes::from(d);
                    }
                    _ => {}
                }
            }
        }
        Mutation::Truncate(n) => v.truncate(usize::from(n)),
    }
    v
}

fn genuine(r: &common::Reference, b: &Backup, skew: i8, len: u8) -> Vec<Record> {
    let next = (b.last_seq() + 1).saturating_add_signed(i64::from(skew));
    let start = usize::try_from(next.saturating_sub(1)).unwrap_or(usize::MAX);
    let start = start.min(r.records.len());
    let end = start
        .saturating_add(usize::from(len % 64) + 1)
        .min(r.records.len());
    r.records[start..end].to_vec()
}

/// Offer a clone message to a replaying backup, which is in no clone: anything but
/// a heartbeat is refused, and nothing about the replay changes either way.
fn offer_clone(b: &mut Backup, c: CloneFrame, now: u64) {
    let before = (
        b.last_seq(),
        b.buffered_records(),
        b.replayed_seq(),
        b.is_halted(),
    );
    let heartbeat = matches!(c.msg, CloneMsg::Heartbeat);
    let res = b.handle_clone(c, now);
    if let Err(e) = &res {
        let _ = e.to_string();
    }
    assert!(
        res.is_err() || heartbeat,
        "a replaying backup accepted a clone message: {res:?}"
    );
    assert_eq!(
        (
            b.last_seq(),
            b.buffered_records(),
            b.replayed_seq(),
            b.is_halted()
        ),
        before,
        "a clone message changed a replaying backup"
    );
}

/// Offer records; check that a refusal took nothing.
fn offer(b: &mut Backup, recs: Vec<Record>, now: u64) {
    let (last, buffered, replayed) = (b.last_seq(), b.buffered_records(), b.replayed_seq());
    match b.handle_records(recs, now) {
        Ok(()) => assert!(
            b.last_seq() >= last,
            "handle_records moved last_seq backwards"
        ),
        Err(e) => {
            let _ = e.to_string();
            assert!(
                matches!(
                    e,
                    EngineError::SequenceGap { .. }
                        | EngineError::OutOfOrder { .. }
                        | EngineError::InboxFull { .. }
                ),
                "handle_records failed with an unexpected error: {e:?}"
            );
            assert_eq!(
                (b.last_seq(), b.buffered_records(), b.replayed_seq()),
                (last, buffered, replayed),
                "a refused batch changed the backup ({e})"
            );
        }
    }
}

fn offer_frame(b: &mut Backup, bytes: &[u8], now: u64) {
    match log_codec::decode_frame(bytes) {
        Ok(Frame::Records(recs)) => offer(b, recs, now),
        Ok(Frame::Ack(_)) => {}
        Ok(Frame::Clone(c)) => offer_clone(b, c, now),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = Input::arbitrary(&mut u) else {
        return;
    };
    let r = &references()[usize::from(input.reference)];
    let slice = u64::from(input.slice % 4096) + 1;
    let inbox = usize::from(input.inbox % 128) + 1;
    let mut b = fresh_backup(r, slice, inbox);
    let mut now: u64 = 0;
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Genuine {
                skew,
                len,
                mutation,
            } => {
                let recs = mutate(genuine(r, &b, skew, len), mutation);
                offer(&mut b, recs, now);
            }
            Op::Structured(v) => {
                let mut seq = b.last_seq() + 1;
                let mut point = ft_core::EventSource::point(b.source());
                let recs: Vec<Record> = v
                    .into_iter()
                    .take(16)
                    .map(|a| {
                        let s = seq.saturating_add_signed(i64::from(a.seq_delta));
                        seq = s.saturating_add(1);
                        point = ExecPoint {
                            count: point.count.saturating_add_signed(i64::from(a.point_delta)),
                            sub: u64::from(a.sub % 4),
                        };
                        Record {
                            seq: s,
                            point,
                            event: a.event.build(),
                        }
                    })
                    .collect();
                offer(&mut b, recs, now);
            }
            Op::Raw(bytes) => offer_frame(&mut b, &bytes, now),
            Op::Damaged { len, flips } => {
                let recs = genuine(r, &b, 0, len);
                let mut buf = Vec::new();
                if log_codec::encode_records(&recs, &mut buf).is_ok() && !buf.is_empty() {
                    for (off, x) in flips.into_iter().take(8) {
                        let i = usize::from(off) % buf.len();
                        buf[i] ^= x;
                    }
                    offer_frame(&mut b, &buf, now);
                }
            }
            Op::Step(n) => {
                for _ in 0..(n % 8) + 1 {
                    let was_halted = b.is_halted();
                    match b.step(now) {
                        Ok(StepOutcome::Halted) => {
                            assert!(b.is_halted(), "step said Halted on a running node");
                            break;
                        }
                        Ok(_) => assert!(!was_halted, "a halted node stepped"),
                        Err(e) => {
                            let _ = e.to_string();
                            assert!(b.is_halted(), "a failed step left the node running: {e}");
                            assert_eq!(b.step(now), Ok(StepOutcome::Halted));
                            break;
                        }
                    }
                }
            }
            Op::Poll => {
                while let Some(t) = b.poll_transmit(now) {
                    match t {
                        Transmit::Ack(a) => assert!(
                            a.replayed <= a.received && a.received <= b.last_seq(),
                            "bogus ack {a:?} (last_seq {})",
                            b.last_seq()
                        ),
                        Transmit::Records(recs) => {
                            panic!("a backup transmitted records: {recs:?}")
                        }
                        Transmit::Clone(c) => {
                            panic!("a replaying backup transmitted a clone message: {c:?}")
                        }
                    }
                }
            }
            Op::Ack { received, replayed } => {
                let res = b.handle_ack(Ack { received, replayed }, now);
                assert_eq!(
                    res,
                    Err(EngineError::WrongRole("handle_ack", Role::Backup)),
                    "handle_ack on a backup"
                );
            }
            Op::Time(d) => now = now.saturating_add(u64::from(d)),
            Op::PeerFailed => b.peer_failed(now),
            Op::Arbiter(k) => {
                if let Some(ft_core::Command::TestAndSet { .. }) = b.poll_command() {
                    let res = match k % 3 {
                        0 => Ok(Decision::Won {
                            token: u64::from(k),
                        }),
                        1 => Ok(Decision::Lost { holder: NodeId(1) }),
                        _ => Err(ArbiterError::Unreachable("fuzz".into())),
                    };
                    b.on_arbiter(res, now);
                }
            }
        }
        assert!(
            b.replayed_seq() <= b.last_seq(),
            "replayed {} beyond received {}",
            b.replayed_seq(),
            b.last_seq()
        );
        while b.poll_notice().is_some() {}
        if matches!(b.phase(), Phase::Live) {
            // A backup gone live runs as a primary: make sure its world keeps up.
            while b.poll_transmit(now).is_some() {}
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
