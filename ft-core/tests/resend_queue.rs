//! The send queue's resend rule against a model of a connection that drops: whatever
//! the primary queues, however the connection loses frames in flight and reconnects,
//! and whenever acks arrive, the backup takes every record exactly once and in order,
//! and a refused resume happens only when the backup asks for a record already
//! forgotten. Seeds: `FT_SEED_BASE`, `FT_SOAK`, `FT_SEED` as in every property suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../ft-sim/tests/prop_support/soak.rs"]
mod soak;

use std::collections::VecDeque;

use bytes::Bytes;
use ft_core::log_codec::{decode_frame, encode_ack, encode_records, peek_record_range, Frame};
use ft_core::resend_queue::{QueueSide, ResendError, ResendQueue};
use ft_core::{Ack, Event, ExecPoint, OutputSeq, Record};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn batch(first: u64, n: u64) -> Bytes {
    let records: Vec<Record> = (first..first + n)
        .map(|seq| Record {
            seq,
            point: ExecPoint::at(seq),
            event: Event::Heartbeat {
                released_below: OutputSeq(0),
            },
        })
        .collect();
    let mut out = Vec::new();
    encode_records(&records, &mut out).unwrap();
    Bytes::from(out)
}

/// One case: `steps` random actions. Returns a description of the first violation.
fn case(seed: u64, steps: usize) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let frames_limit = rng.gen_range(2..40);
    let mut q = ResendQueue::new(QueueSide::Primary, frames_limit, usize::MAX);
    let mut next_record = 1u64;
    // Frames written on the current connection, not yet delivered.
    let mut wire: VecDeque<Bytes> = VecDeque::new();
    // The backup: the next record it needs, and what it acked.
    let mut expected = 1u64;
    let mut acked = 0u64;
    // The backup's queue, which keeps its resume position from what is delivered.
    let mut bq = ResendQueue::new(QueueSide::Backup, 64, usize::MAX);
    for step in 0..steps {
        match rng.gen_range(0..100) {
            // The primary queues a batch (a clone message, now and then).
            0..=29 => {
                let frame = if rng.gen_bool(0.1) {
                    Bytes::from_static(b"clone message")
                } else {
                    batch(next_record, rng.gen_range(1..6))
                };
                let range = peek_record_range(&frame);
                match q.push(frame) {
                    Ok(()) => {
                        if let Some((_, last)) = range {
                            next_record = last + 1;
                        }
                    }
                    Err(ResendError::Full { .. }) => {}
                    Err(e) => return Err(format!("step {step}: push: {e}")),
                }
            }
            // The writer writes what is due.
            30..=54 => {
                let mut out = Vec::new();
                q.take_unwritten(rng.gen_range(1..8), &mut out);
                wire.extend(out);
            }
            // Frames in flight arrive.
            55..=79 => {
                for _ in 0..rng.gen_range(1..4) {
                    let Some(f) = wire.pop_front() else { break };
                    bq.on_received(&f);
                    let Ok(Frame::Records(rs)) = decode_frame(&f) else {
                        continue;
                    };
                    for r in rs {
                        // The backup takes a record once; an older one is a duplicate
                        // it ignores; a newer one is a gap.
                        if r.seq > expected {
                            return Err(format!(
                                "step {step}: gap: record {} arrived, {expected} expected",
                                r.seq
                            ));
                        }
                        if r.seq == expected {
                            expected += 1;
                        }
                    }
                    if bq.resume_from() != expected {
                        return Err(format!(
                            "step {step}: the backup's queue would resume at {}, the backup needs {expected}",
                            bq.resume_from()
                        ));
                    }
                }
            }
            // The backup acks what it took; the primary's link delivers the ack.
            80..=89 => {
                acked = expected - 1;
                let mut ack = Vec::new();
                encode_ack(
                    &Ack {
                        received: acked,
                        replayed: acked,
                    },
                    &mut ack,
                )
                .map_err(|e| format!("step {step}: encoding an ack: {e}"))?;
                q.on_received(&ack);
            }
            // The connection drops: frames in flight are lost; the backup reconnects
            // and asks for the record it needs next.
            _ => {
                wire.clear();
                match q.resume_at(bq.resume_from()) {
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "step {step}: resume at {expected} refused (acked {acked}): {e}"
                        ))
                    }
                }
            }
        }
        if expected > q.next_seq() {
            return Err(format!(
                "step {step}: the backup took record {} beyond the queue's next {}",
                expected - 1,
                q.next_seq()
            ));
        }
    }
    // Drain: everything queued reaches the backup.
    wire.clear();
    q.resume_at(expected)
        .map_err(|e| format!("final resume: {e}"))?;
    let mut out = Vec::new();
    q.take_unwritten(usize::MAX, &mut out);
    for f in out {
        if let Ok(Frame::Records(rs)) = decode_frame(&f) {
            for r in rs {
                if r.seq == expected {
                    expected += 1;
                } else if r.seq > expected {
                    return Err(format!("drain: gap at {}", r.seq));
                }
            }
        }
    }
    if expected != next_record {
        return Err(format!(
            "the backup took records up to {} of {}",
            expected - 1,
            next_record - 1
        ));
    }
    // Asking for a record already acknowledged and forgotten is refused.
    q.on_ack(expected - 1);
    if expected > 2 && q.resume_at(1).is_ok() {
        return Err("a resume at a forgotten record was accepted".into());
    }
    Ok(())
}

#[test]
fn prop_every_record_arrives_once_across_reconnects() {
    let mut n = 0u64;
    for seed in soak::seeds(0x5e4d_0001, 300) {
        if let Err(e) = case(seed, 400) {
            panic!(
                "seed {seed:#x}: {e}\nrerun: FT_SEED={seed:#x} cargo test -p ft-core --test resend_queue"
            );
        }
        n += 1;
    }
    println!(
        "soak: resend_queue::prop_every_record_arrives_once_across_reconnects: {n} cases passed"
    );
}
