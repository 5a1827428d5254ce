//! An in-memory log channel over bounded crossbeam channels.
//!
//! Frames travel as encoded bytes, so the codec and its checks run exactly as they
//! would over a network. Each direction holds at most `capacity_frames` frames; a full
//! direction makes [`FrameLink::try_send_frame`] (and so
//! [`ft_core::LogChannel::send_records`]) return [`ChannelError::Full`].

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ft_core::ChannelError;

use crate::frame::{BackupEnd, FrameLink, PrimaryEnd};

/// Result alias of this module (its errors are the engine's [`ChannelError`]).
pub type Result<T, E = ChannelError> = std::result::Result<T, E>;

/// One end of an in-memory frame link. Dropping it disconnects the peer.
#[derive(Debug)]
pub struct MemoryLink {
    tx: Sender<Bytes>,
    rx: Receiver<Bytes>,
}

impl MemoryLink {
    /// Frames sent by this end that the peer has not taken yet.
    pub fn in_flight(&self) -> usize {
        self.tx.len()
    }
}

impl FrameLink for MemoryLink {
    fn try_send_frame(&mut self, frame: Bytes) -> Result<()> {
        self.tx.try_send(frame).map_err(|e| match e {
            TrySendError::Full(_) => ChannelError::Full,
            TrySendError::Disconnected(_) => ChannelError::Disconnected,
        })
    }

    fn try_recv_frame(&mut self) -> Result<Option<Bytes>> {
        match self.rx.try_recv() {
            Ok(frame) => Ok(Some(frame)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(ChannelError::Disconnected),
        }
    }
}

/// Two connected frame link ends; each direction holds at most `capacity_frames`
/// frames (0 is taken as 1).
pub fn link_pair(capacity_frames: usize) -> (MemoryLink, MemoryLink) {
    let cap = capacity_frames.max(1);
    let (a_tx, b_rx) = crossbeam_channel::bounded(cap);
    let (b_tx, a_rx) = crossbeam_channel::bounded(cap);
    (
        MemoryLink { tx: a_tx, rx: a_rx },
        MemoryLink { tx: b_tx, rx: b_rx },
    )
}

/// The primary's end of an in-memory log channel.
pub type MemoryPrimaryEnd = PrimaryEnd<MemoryLink>;

/// The backup's end of an in-memory log channel.
pub type MemoryBackupEnd = BackupEnd<MemoryLink>;

/// An in-memory log channel; each direction holds at most `capacity_frames` frames.
pub fn pair(capacity_frames: usize) -> (MemoryPrimaryEnd, MemoryBackupEnd) {
    let (p, b) = link_pair(capacity_frames);
    (PrimaryEnd::new(p), BackupEnd::new(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ft_core::{Ack, Event, ExecPoint, LogChannel, LogReceiver, Record};

    fn recs(first: u64, n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                seq: first + i,
                point: ExecPoint::at(10 * (first + i)),
                event: Event::Digest { value: i },
            })
            .collect()
    }

    #[test]
    fn round_trip_and_counters() {
        let (mut p, mut b) = pair(4);
        p.send_records(&recs(1, 3)).unwrap();
        p.send_records(&[]).unwrap();
        assert_eq!(p.frames_sent(), 1);
        assert!(p.bytes_sent() > 16);
        assert_eq!(b.try_recv_records().unwrap(), Some(recs(1, 3)));
        assert_eq!(b.try_recv_records().unwrap(), None);
        let ack = Ack {
            received: 3,
            replayed: 1,
        };
        b.send_ack(ack).unwrap();
        assert_eq!(b.frames_sent(), 1);
        assert_eq!(p.try_recv_ack().unwrap(), Some(ack));
        assert_eq!(p.try_recv_ack().unwrap(), None);
        assert_eq!(p.traffic().frames_received, 1);
    }

    #[test]
    fn full_sends_nothing_and_disconnect_is_reported() {
        let (mut p, mut b) = pair(2);
        p.send_records(&recs(1, 1)).unwrap();
        p.send_records(&recs(2, 1)).unwrap();
        let bytes = p.bytes_sent();
        assert_eq!(p.send_records(&recs(3, 1)), Err(ChannelError::Full));
        assert_eq!(p.bytes_sent(), bytes);
        assert_eq!(p.frames_sent(), 2);
        assert_eq!(b.try_recv_records().unwrap(), Some(recs(1, 1)));
        p.send_records(&recs(3, 1)).unwrap();
        drop(p);
        // What was sent before the drop is still delivered, then the disconnect.
        assert_eq!(b.try_recv_records().unwrap(), Some(recs(2, 1)));
        assert_eq!(b.try_recv_records().unwrap(), Some(recs(3, 1)));
        assert_eq!(b.try_recv_records(), Err(ChannelError::Disconnected));
        assert_eq!(b.send_ack(Ack::default()), Err(ChannelError::Disconnected));
    }

    #[test]
    fn wrong_frame_kind_and_garbage_are_corrupt_and_sticky() {
        let (mut a, b) = link_pair(4);
        let mut end = BackupEnd::new(b);
        let mut buf = Vec::new();
        ft_core::log_codec::encode_ack(&Ack::default(), &mut buf).unwrap();
        a.try_send_frame(Bytes::from(buf)).unwrap();
        let mut good = Vec::new();
        ft_core::log_codec::encode_records(&recs(1, 1), &mut good).unwrap();
        a.try_send_frame(Bytes::from(good)).unwrap();
        assert!(matches!(
            end.try_recv_records(),
            Err(ChannelError::Corrupt(_))
        ));
        // The good frame behind it is not trusted any more.
        assert!(matches!(
            end.try_recv_records(),
            Err(ChannelError::Corrupt(
                ft_core::log_codec::CodecError::Poisoned(_)
            ))
        ));

        let (mut a, b) = link_pair(4);
        let mut end = PrimaryEnd::new(b);
        a.try_send_frame(Bytes::from_static(b"garbage")).unwrap();
        assert!(matches!(end.try_recv_ack(), Err(ChannelError::Corrupt(_))));
    }
}
