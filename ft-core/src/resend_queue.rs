//! The log channel's send queue, with what a reconnect must send again.
//!
//! A transport that can lose its connection and make a new one (the TCP link) owes
//! its peer, on the new connection, exactly what the old one may not have delivered.
//! That bookkeeping is the protocol's, not the socket's, so it lives here, sans-I/O,
//! and the transport only moves bytes:
//!
//! * **Primary.** Frames are encoded log frames (records, and live-clone messages).
//!   A records frame stays queued after it was written, until an ack covers its last
//!   record ([`ResendQueue::on_ack`]). A backup that connects again says which record
//!   it needs next; [`ResendQueue::resume_at`] rewinds the write position to the frame
//!   holding it, or refuses when that record was already forgotten (a gap) or was never
//!   sent. Frames without records (clone messages) are forgotten once written: a clone
//!   does not outlive its connection, and its numbered messages show a loss.
//! * **Backup.** Frames (acks) leave the queue once written. After a reconnect, the
//!   newest one written is sent again when nothing newer is queued
//!   ([`ResendQueue::reconnected`]): the latest ack may have died with the old
//!   connection. The queue also keeps the backup's resume position: every frame the
//!   link delivers passes [`ResendQueue::on_received`], and a new connection asks
//!   for [`ResendQueue::resume_from`], one past the last record delivered.
//!
//! Which records a frame holds is read by the codec ([`peek_record_range`]). Positions
//! are absolute frame numbers: the queue's first entry is number `base`, the next to
//! write is `cursor`.
//!
//! ```
//! use bytes::Bytes;
//! use ft_core::log_codec::encode_records;
//! use ft_core::resend_queue::{QueueSide, ResendQueue};
//! use ft_core::{Event, ExecPoint, OutputSeq, Record};
//!
//! let frame = |seq| {
//!     let record = Record {
//!         seq,
//!         point: ExecPoint::at(seq),
//!         event: Event::Heartbeat { released_below: OutputSeq(0) },
//!     };
//!     let mut out = Vec::new();
//!     encode_records(&[record], &mut out).unwrap();
//!     Bytes::from(out)
//! };
//! let mut q = ResendQueue::new(QueueSide::Primary, 64, 1 << 20);
//! for seq in 1..=3 {
//!     q.push(frame(seq)).unwrap();
//! }
//! let mut written = Vec::new();
//! assert_eq!(q.take_unwritten(8, &mut written), 0);
//! assert_eq!(written.len(), 3);
//! q.on_ack(1);
//! // The backup reconnects and needs record 2 next: two frames go again.
//! assert_eq!(q.resume_at(2), Ok(2));
//! written.clear();
//! assert_eq!(q.take_unwritten(8, &mut written), 2);
//! // Record 1 was acknowledged and forgotten: resuming there would leave a gap.
//! assert!(q.resume_at(1).is_err());
//! # let _: Bytes = written[0].clone();
//! ```

use std::collections::VecDeque;

use bytes::Bytes;

use crate::log_codec::{decode_frame, peek_record_range, Frame};

/// Which end of the log channel a queue sends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSide {
    /// Sends records: keeps them until acknowledged.
    Primary,
    /// Sends acks: keeps only the newest written.
    Backup,
}

/// Errors of the send queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResendError {
    /// The queue holds its limit of frames or bytes; try again once written frames
    /// are acknowledged.
    #[error("the send queue is full ({frames} frames, {bytes} bytes)")]
    Full {
        /// Frames queued.
        frames: usize,
        /// Bytes queued.
        bytes: usize,
    },
    /// A backup asked to resume at a record this queue cannot send without a gap.
    #[error(
        "cannot resume at record {requested}: the oldest record held is {oldest_held}, the next is {next}"
    )]
    ResumeRefused {
        /// The record the backup needs next.
        requested: u64,
        /// The oldest record still queued (or `next` if none).
        oldest_held: u64,
        /// The record after the last one queued.
        next: u64,
    },
}

#[derive(Debug)]
struct Entry {
    /// The records `(first, last)` a records frame holds.
    range: Option<(u64, u64)>,
    frame: Bytes,
}

/// The send queue of one end of the log channel. See the module docs.
#[derive(Debug)]
pub struct ResendQueue {
    side: QueueSide,
    entries: VecDeque<Entry>,
    base: u64,
    cursor: u64,
    /// One past the furthest frame ever written (to count resends).
    written_high: u64,
    bytes: usize,
    /// Primary: every record up to this one was acknowledged.
    acked: u64,
    /// Primary: the record after the last one queued.
    next_seq: u64,
    /// Backup: the newest frame written.
    last_written: Option<Bytes>,
    /// Backup: one past the last record delivered from the primary.
    received_next: u64,
    max_frames: usize,
    max_bytes: usize,
}

impl ResendQueue {
    /// An empty queue that holds at most `max_frames` frames and `max_bytes` bytes
    /// (a single frame is always taken into an empty queue).
    pub fn new(side: QueueSide, max_frames: usize, max_bytes: usize) -> ResendQueue {
        ResendQueue {
            side,
            entries: VecDeque::new(),
            base: 0,
            cursor: 0,
            written_high: 0,
            bytes: 0,
            acked: 0,
            next_seq: 1,
            last_written: None,
            received_next: 1,
            max_frames,
            max_bytes,
        }
    }

    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Frames queued (written ones kept for a resend included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Primary: the record after the last one queued.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether frames wait to be written.
    pub fn has_unwritten(&self) -> bool {
        self.cursor < self.end()
    }

    /// Queue `frame` to be written.
    ///
    /// # Errors
    ///
    /// [`ResendError::Full`] when the queue is not empty and `frame` would take it past
    /// its limits.
    pub fn push(&mut self, frame: Bytes) -> Result<(), ResendError> {
        if !self.entries.is_empty()
            && (self.entries.len() >= self.max_frames
                || self.bytes.saturating_add(frame.len()) > self.max_bytes)
        {
            return Err(ResendError::Full {
                frames: self.entries.len(),
                bytes: self.bytes,
            });
        }
        let range = match self.side {
            QueueSide::Primary => peek_record_range(&frame),
            QueueSide::Backup => None,
        };
        if let Some((_, last)) = range {
            self.next_seq = self.next_seq.max(last.saturating_add(1));
        }
        self.bytes += frame.len();
        self.entries.push_back(Entry { range, frame });
        Ok(())
    }

    /// Take up to `max` frames to write now, appended to `out` in order; returns how
    /// many of them were written before (resent after a reconnect).
    pub fn take_unwritten(&mut self, max: usize, out: &mut Vec<Bytes>) -> u64 {
        if !self.has_unwritten() {
            return 0;
        }
        let start = (self.cursor - self.base) as usize;
        let n = (self.entries.len() - start).min(max);
        out.extend(
            self.entries
                .range(start..start + n)
                .map(|e| e.frame.clone()),
        );
        let resent = self.written_high.saturating_sub(self.cursor).min(n as u64);
        self.cursor += n as u64;
        self.written_high = self.written_high.max(self.cursor);
        match self.side {
            QueueSide::Backup => {
                self.last_written = out.last().cloned();
                while self.base < self.cursor && !self.entries.is_empty() {
                    self.pop_front();
                }
            }
            QueueSide::Primary => self.release(),
        }
        resent
    }

    /// Primary: the backup acknowledged every record up to `received`; forget the
    /// written frames that covers.
    pub fn on_ack(&mut self, received: u64) {
        let received = received.min(self.next_seq.saturating_sub(1));
        self.acked = self.acked.max(received);
        self.release();
    }

    /// Primary: a backup connected (again) and needs record `requested` next. The
    /// write position moves to the frame that holds it; returns how many frames will
    /// be written again.
    ///
    /// # Errors
    ///
    /// [`ResendError::ResumeRefused`] when `requested` is below the oldest record held
    /// (it was acknowledged and forgotten, or never queued here) or beyond the next
    /// one; the queue is unchanged.
    pub fn resume_at(&mut self, requested: u64) -> Result<u64, ResendError> {
        let oldest = self
            .entries
            .iter()
            .find_map(|e| e.range.map(|r| r.0))
            .unwrap_or(self.next_seq)
            .min(self.next_seq);
        if requested < oldest || requested > self.next_seq {
            return Err(ResendError::ResumeRefused {
                requested,
                oldest_held: oldest,
                next: self.next_seq,
            });
        }
        let idx = self
            .entries
            .iter()
            .position(|e| matches!(e.range, Some((_, last)) if last >= requested))
            .unwrap_or(self.entries.len());
        let cursor = self.base + idx as u64;
        let again = self.written_high.saturating_sub(cursor);
        self.cursor = cursor;
        Ok(again)
    }

    /// Backup: the log starts at record `next` (a backup made from a snapshot or a
    /// clone point); the resume position never moves back.
    pub fn start_at(&mut self, next: u64) {
        self.received_next = self.received_next.max(next);
    }

    /// The link received `frame` from the peer. On the primary, an ack frees what it
    /// covers ([`ResendQueue::on_ack`]): call this before the ack reaches the engine,
    /// so that the room it makes is there when the engine sends again. On the backup,
    /// a records frame moves the resume position past its last record: call this once
    /// the frame was handed on, so that a frame lost on the way is asked for again.
    /// Anything else (and a frame that does not decode, which the engine will refuse)
    /// leaves the queue as it is.
    pub fn on_received(&mut self, frame: &[u8]) {
        match self.side {
            QueueSide::Backup => {
                if let Some((_, last)) = peek_record_range(frame) {
                    self.received_next = self.received_next.max(last.saturating_add(1));
                }
            }
            QueueSide::Primary => {
                if let Ok(Frame::Ack(a)) = decode_frame(frame) {
                    self.on_ack(a.received);
                }
            }
        }
    }

    /// Backup: the record a new connection asks for, one past the last record
    /// delivered.
    pub fn resume_from(&self) -> u64 {
        self.received_next
    }

    /// Backup: a new connection. When nothing is left to write, the newest frame
    /// written (the latest ack) is queued again.
    pub fn reconnected(&mut self) {
        if self.has_unwritten() {
            return;
        }
        if let Some(last) = self.last_written.clone() {
            self.bytes += last.len();
            self.entries.push_back(Entry {
                range: None,
                frame: last,
            });
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.frame.len();
            self.base += 1;
        }
    }

    /// Primary: forget the frames at the front that no reconnect would resend:
    /// records frames every record of which was acknowledged (also when a resume
    /// rewound over them: the backup has them), and written frames without records.
    /// Without this a long clone, which nothing acknowledges, would fill the queue.
    fn release(&mut self) {
        loop {
            let written = self.base < self.cursor;
            let done = match self.entries.front() {
                Some(Entry {
                    range: Some((_, last)),
                    ..
                }) => *last <= self.acked,
                Some(Entry { range: None, .. }) => written,
                None => false,
            };
            if !done {
                break;
            }
            self.pop_front();
            self.cursor = self.cursor.max(self.base);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::log_codec::{encode_ack, encode_records};
    use crate::record::{Ack, Event, OutputSeq, Record};
    use crate::ExecPoint;

    fn records(first: u64, last: u64) -> Bytes {
        let batch: Vec<Record> = (first..=last)
            .map(|seq| Record {
                seq,
                point: ExecPoint::at(seq),
                event: Event::Heartbeat {
                    released_below: OutputSeq(0),
                },
            })
            .collect();
        let mut out = Vec::new();
        encode_records(&batch, &mut out).unwrap();
        Bytes::from(out)
    }

    fn write_all(q: &mut ResendQueue) -> Vec<Bytes> {
        let mut out = Vec::new();
        q.take_unwritten(usize::MAX, &mut out);
        out
    }

    #[test]
    fn written_records_stay_until_acked_and_other_frames_go_once_written() {
        let mut q = ResendQueue::new(QueueSide::Primary, 64, 1 << 20);
        // A frame without records (a clone message, say) is forgotten once written.
        q.push(Bytes::from_static(b"not a records frame")).unwrap();
        assert_eq!(write_all(&mut q).len(), 1);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        for (a, b) in [(1, 5), (6, 10), (11, 20)] {
            q.push(records(a, b)).unwrap();
        }
        assert_eq!(q.next_seq(), 21);
        write_all(&mut q);
        assert_eq!(q.len(), 3);
        assert_eq!(q.resume_at(5), Ok(3));
        q.on_ack(10);
        assert_eq!(q.len(), 1, "the acked frames are forgotten");
        assert_eq!(q.resume_at(11), Ok(1));
        assert_eq!(
            q.resume_at(5),
            Err(ResendError::ResumeRefused {
                requested: 5,
                oldest_held: 11,
                next: 21
            })
        );
        assert!(q.resume_at(22).is_err(), "never sent");
        // An ack beyond what was queued is capped.
        q.on_ack(1000);
        assert!(q.is_empty());
        assert_eq!(q.resume_at(21), Ok(0));
    }

    #[test]
    fn a_long_clone_never_fills_the_queue_and_a_message_behind_records_waits_with_them() {
        let mut q = ResendQueue::new(QueueSide::Primary, 16, 1 << 20);
        // Thousands of clone messages, none ever acknowledged.
        for _ in 0..5_000 {
            q.push(Bytes::from_static(b"clone message")).unwrap();
            write_all(&mut q);
        }
        assert!(q.is_empty(), "written clone messages are kept");
        assert_eq!(q.bytes(), 0);
        q.push(records(1, 10)).unwrap();
        q.push(Bytes::from_static(b"clone message")).unwrap();
        q.push(records(11, 20)).unwrap();
        write_all(&mut q);
        assert_eq!(q.len(), 3);
        q.on_ack(10);
        assert_eq!(q.len(), 1, "the ack released the records and the message");
        q.on_ack(20);
        assert!(q.is_empty());
    }

    #[test]
    fn a_resume_rewinds_to_the_frame_holding_the_record() {
        let mut q = ResendQueue::new(QueueSide::Primary, 64, 1 << 20);
        for (a, b) in [(1, 4), (5, 8), (9, 12)] {
            q.push(records(a, b)).unwrap();
        }
        assert_eq!(write_all(&mut q).len(), 3);
        // Record 6 is in the second frame: it and the third go again.
        assert_eq!(q.resume_at(6), Ok(2));
        let mut out = Vec::new();
        assert_eq!(q.take_unwritten(1, &mut out), 1);
        assert_eq!(peek_record_range(&out[0]), Some((5, 8)));
        q.push(records(13, 13)).unwrap();
        out.clear();
        // One resend, then one new frame.
        assert_eq!(q.take_unwritten(8, &mut out), 1);
        assert_eq!(
            out.iter().map(|f| peek_record_range(f)).collect::<Vec<_>>(),
            vec![Some((9, 12)), Some((13, 13))]
        );
    }

    #[test]
    fn limits_refuse_a_frame_but_never_the_first() {
        let mut q = ResendQueue::new(QueueSide::Primary, 2, 1 << 20);
        q.push(records(1, 1)).unwrap();
        q.push(records(2, 2)).unwrap();
        assert!(matches!(
            q.push(records(3, 3)),
            Err(ResendError::Full { frames: 2, .. })
        ));
        let mut small = ResendQueue::new(QueueSide::Primary, 64, 1);
        small.push(records(1, 1)).unwrap();
        assert!(matches!(
            small.push(records(2, 2)),
            Err(ResendError::Full { .. })
        ));
    }

    #[test]
    fn a_backup_says_its_latest_ack_again_after_a_reconnect() {
        let ack = |n| {
            let mut out = Vec::new();
            encode_ack(
                &Ack {
                    received: n,
                    replayed: n,
                },
                &mut out,
            )
            .unwrap();
            Bytes::from(out)
        };
        let mut q = ResendQueue::new(QueueSide::Backup, 64, 1 << 20);
        q.reconnected();
        assert!(q.is_empty(), "nothing written yet, nothing to say again");
        q.push(ack(1)).unwrap();
        q.push(ack(2)).unwrap();
        assert_eq!(write_all(&mut q), vec![ack(1), ack(2)]);
        assert!(q.is_empty());
        q.reconnected();
        assert_eq!(write_all(&mut q), vec![ack(2)]);
        // With a newer ack queued, that one goes, not the old one.
        q.push(ack(3)).unwrap();
        q.reconnected();
        assert_eq!(write_all(&mut q), vec![ack(3)]);
    }

    #[test]
    fn what_the_link_delivers_moves_the_resume_position_and_frees_acked_records() {
        let mut b = ResendQueue::new(QueueSide::Backup, 64, 1 << 20);
        assert_eq!(b.resume_from(), 1);
        b.start_at(5);
        assert_eq!(b.resume_from(), 5);
        b.on_received(&records(5, 9));
        assert_eq!(b.resume_from(), 10);
        // A resent (older) batch, a frame without records, garbage: no move back.
        b.on_received(&records(5, 6));
        b.on_received(b"not a frame");
        b.start_at(2);
        assert_eq!(b.resume_from(), 10);

        let mut p = ResendQueue::new(QueueSide::Primary, 64, 1 << 20);
        p.push(records(1, 4)).unwrap();
        p.push(records(5, 8)).unwrap();
        write_all(&mut p);
        let mut ack = Vec::new();
        encode_ack(
            &Ack {
                received: 4,
                replayed: 4,
            },
            &mut ack,
        )
        .unwrap();
        p.on_received(&ack);
        assert_eq!(p.len(), 1, "the acked batch is freed");
        // Records delivered to a primary mean nothing to its queue.
        p.on_received(&records(1, 8));
        assert_eq!(p.len(), 1);
    }
}
