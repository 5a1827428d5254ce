//! A log link on virtual time: two byte pipes through the real wire codec, with
//! latency, seeded jitter, a bounded buffer per direction, and cuts. The pair
//! simulation and ft-kvm's in-process pair run their drivers over it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::driver::link::Link;
use crate::log_channel::ChannelError;
use crate::log_codec::{self, Frame, FrameDecoder};
use crate::node::Transmit;
use crate::record::{Nanos, Record};

/// How a [`VirtualWire`] behaves.
#[derive(Debug, Clone)]
pub struct WireConfig {
    /// One-way latency of every frame.
    pub latency: Nanos,
    /// Extra latency per frame, drawn up to this much from the seeded generator (a
    /// frame never overtakes the one before it).
    pub jitter: Nanos,
    /// Frames each direction holds in flight; a full direction refuses sends with
    /// [`ChannelError::Full`].
    pub capacity: usize,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            latency: 50_000,
            jitter: 0,
            capacity: 256,
            seed: 0,
        }
    }
}

/// Traffic counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames put on the wire (including those a cut then lost).
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Most frames in flight at once.
    pub max_in_flight: usize,
}

#[derive(Debug, Default)]
struct Pipe {
    queue: VecDeque<(Nanos, Bytes)>,
    decoder: FrameDecoder,
    cut: bool,
    stats: WireStats,
    tap: Option<Vec<Record>>,
}

impl Pipe {
    fn push(&mut self, at: Nanos, bytes: Bytes) {
        // Keep order: a frame never overtakes the one before it.
        let at = self.queue.back().map_or(at, |(t, _)| at.max(*t));
        self.queue.push_back((at, bytes));
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.queue.len());
    }
}

/// Both directions of a simulated log link. The primary's end sends on the first
/// direction and reads the second; the backup's end the reverse.
#[derive(Debug)]
pub struct VirtualWire {
    cfg: WireConfig,
    rng: u64,
    to_backup: Pipe,
    to_primary: Pipe,
}

impl VirtualWire {
    /// An empty wire.
    pub fn new(cfg: WireConfig) -> VirtualWire {
        VirtualWire {
            rng: cfg.seed,
            cfg,
            to_backup: Pipe::default(),
            to_primary: Pipe::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &WireConfig {
        &self.cfg
    }

    /// The primary's end, at virtual time `now`.
    pub fn primary_end(&mut self, now: Nanos) -> WireEnd<'_> {
        WireEnd {
            out: &mut self.to_backup,
            inp: &mut self.to_primary,
            rng: &mut self.rng,
            cfg: &self.cfg,
            now,
        }
    }

    /// The backup's end, at virtual time `now`.
    pub fn backup_end(&mut self, now: Nanos) -> WireEnd<'_> {
        WireEnd {
            out: &mut self.to_primary,
            inp: &mut self.to_backup,
            rng: &mut self.rng,
            cfg: &self.cfg,
            now,
        }
    }

    /// Put raw bytes on the way to the backup, arriving after `delay` from `now`
    /// (bad-input tests).
    pub fn inject_to_backup(&mut self, now: Nanos, delay: Nanos, bytes: Bytes) {
        self.to_backup.push(now.saturating_add(delay), bytes);
    }

    /// Cut the given directions: frames in flight are lost, and so is everything sent
    /// from now on.
    pub fn cut(&mut self, to_backup: bool, to_primary: bool) {
        for (cut, pipe) in [
            (to_backup, &mut self.to_backup),
            (to_primary, &mut self.to_primary),
        ] {
            if cut {
                pipe.cut = true;
                pipe.queue.clear();
            }
        }
    }

    /// Frames in flight to the backup.
    pub fn in_flight_to_backup(&self) -> usize {
        self.to_backup.queue.len()
    }

    /// Frames in flight to the primary.
    pub fn in_flight_to_primary(&self) -> usize {
        self.to_primary.queue.len()
    }

    /// Drop what is in flight to the primary (it crashed: nobody will read it).
    pub fn drain_to_primary(&mut self) {
        self.to_primary.queue.clear();
    }

    /// Counters of the primary-to-backup direction.
    pub fn stats_to_backup(&self) -> &WireStats {
        &self.to_backup.stats
    }

    /// Counters of the backup-to-primary direction.
    pub fn stats_to_primary(&self) -> &WireStats {
        &self.to_primary.stats
    }

    /// Keep a copy of every record the primary puts on the wire, for checkers
    /// ([`VirtualWire::take_tapped`]).
    pub fn tap_records(&mut self) {
        self.to_backup.tap.get_or_insert_with(Vec::new);
    }

    /// The records tapped since the last call.
    pub fn take_tapped(&mut self) -> Vec<Record> {
        self.to_backup
            .tap
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// One end of a [`VirtualWire`] at one instant, as a [`Link`].
#[derive(Debug)]
pub struct WireEnd<'a> {
    out: &'a mut Pipe,
    inp: &'a mut Pipe,
    rng: &'a mut u64,
    cfg: &'a WireConfig,
    now: Nanos,
}

impl WireEnd<'_> {
    fn delay(&mut self) -> Nanos {
        let jitter = match self.cfg.jitter {
            0 => 0,
            j => splitmix64(self.rng) % j.saturating_add(1),
        };
        self.cfg.latency.saturating_add(jitter)
    }
}

impl Link for WireEnd<'_> {
    fn send(&mut self, item: &Transmit) -> Result<(), ChannelError> {
        if self.out.queue.len() >= self.cfg.capacity.max(1) {
            return Err(ChannelError::Full);
        }
        let mut buf = Vec::new();
        match item {
            Transmit::Records(recs) => {
                log_codec::encode_records(recs, &mut buf)?;
                if let Some(tap) = self.out.tap.as_mut() {
                    tap.extend(recs.iter().cloned());
                }
            }
            Transmit::Ack(ack) => log_codec::encode_ack(ack, &mut buf)?,
            Transmit::Clone(msg) => log_codec::encode_clone(msg, &mut buf)?,
        }
        self.out.stats.frames += 1;
        self.out.stats.bytes += buf.len() as u64;
        if self.out.cut {
            return Ok(());
        }
        let at = self.now.saturating_add(self.delay());
        self.out.push(at, Bytes::from(buf));
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Frame>, ChannelError> {
        loop {
            if let Some(f) = self.inp.decoder.next_frame()? {
                return Ok(Some(f));
            }
            match self.inp.queue.front() {
                Some((at, _)) if *at <= self.now => {}
                _ => return Ok(None),
            }
            if let Some((_, bytes)) = self.inp.queue.pop_front() {
                self.inp.decoder.push(&bytes);
            }
        }
    }

    fn end_inbound(&mut self) -> Result<(), ChannelError> {
        self.inp.decoder.finish()?;
        Ok(())
    }
}

/// One step of splitmix64: the wire's seeded jitter.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Ack, Event};
    use crate::ExecPoint;

    fn batch(seq: u64) -> Transmit {
        Transmit::Records(vec![Record {
            seq,
            point: ExecPoint::at(seq),
            event: Event::Digest { value: seq },
        }])
    }

    #[test]
    fn frames_arrive_after_the_latency_in_order_and_a_full_direction_refuses() {
        let mut w = VirtualWire::new(WireConfig {
            latency: 100,
            jitter: 50,
            capacity: 2,
            seed: 7,
        });
        w.tap_records();
        assert_eq!(w.primary_end(0).send(&batch(1)), Ok(()));
        assert_eq!(w.primary_end(10).send(&batch(2)), Ok(()));
        assert_eq!(w.primary_end(20).send(&batch(3)), Err(ChannelError::Full));
        assert_eq!(w.backup_end(99).recv(), Ok(None));
        let mut got = Vec::new();
        while let Ok(Some(Frame::Records(r))) = w.backup_end(1_000).recv() {
            got.extend(r.iter().map(|r| r.seq));
        }
        assert_eq!(got, [1, 2]);
        assert_eq!(w.take_tapped().len(), 2);
        assert_eq!(w.stats_to_backup().frames, 2);
        // Acks go the other way.
        let ack = Ack {
            received: 2,
            replayed: 2,
        };
        w.backup_end(1_000).send(&Transmit::Ack(ack)).unwrap();
        assert_eq!(w.primary_end(2_000).recv(), Ok(Some(Frame::Ack(ack))));
    }

    #[test]
    fn a_cut_loses_frames_and_a_partial_frame_is_reported_at_the_end() {
        let mut w = VirtualWire::new(WireConfig::default());
        w.primary_end(0).send(&batch(1)).unwrap();
        w.cut(true, false);
        w.primary_end(0).send(&batch(2)).unwrap();
        assert_eq!(w.backup_end(1_000_000).recv(), Ok(None));
        assert_eq!(w.backup_end(1_000_000).end_inbound(), Ok(()));

        let mut w = VirtualWire::new(WireConfig::default());
        let mut buf = Vec::new();
        let Transmit::Records(r) = batch(1) else {
            unreachable!()
        };
        log_codec::encode_records(&r, &mut buf).unwrap();
        w.inject_to_backup(0, 0, Bytes::copy_from_slice(&buf[..buf.len() - 3]));
        assert_eq!(w.backup_end(10).recv(), Ok(None));
        assert!(matches!(
            w.backup_end(10).end_inbound(),
            Err(ChannelError::Corrupt(
                log_codec::CodecError::Truncated { .. }
            ))
        ));
    }
}
