//! A seeded, deterministic fault injector for frame links.
//!
//! [`FaultyLink`] wraps one end's [`FrameLink`] and damages the frames that pass it, in
//! each direction independently: outbound (frames this end sends) and inbound (frames
//! it receives). Per frame it may drop, corrupt (flip one bit), duplicate, reorder
//! (deliver after the next frame) or delay (after N later frames, or after a time) it;
//! and from a given frame on, or from the moment a [`FaultHandle`] says so, a direction
//! can be cut: all of its traffic is then silently lost, so the peer looks dead.
//!
//! Every decision comes from a [`ChaCha8Rng`] seeded from a `u64` (one stream per
//! direction), and every frame draws the same number of values whatever happens to it:
//! the same seed and the same traffic in a direction give the same faults. Only the
//! release of frames delayed by a time depends on the clock.
//!
//! Because the wrapper sits at the frame level, any transport that exposes a
//! [`FrameLink`] gets the same faults; wrap it and build a
//! [`crate::frame::PrimaryEnd`] or [`crate::frame::BackupEnd`] on top.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::ChannelError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::frame::FrameLink;

/// Errors of the fault injector's configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    /// A probability is not a number in `0.0..=1.0`.
    #[error("fault probability {name} = {value} is not in 0..=1")]
    BadProbability {
        /// Which knob.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

/// Result alias of this module.
pub type Result<T, E = FaultError> = std::result::Result<T, E>;

/// How long a delayed frame is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// Until this many later frames of the same direction have passed (at least 1). If
    /// the traffic stops first, the frame stays held: it is lost.
    Frames(u32),
    /// Until this much time has passed; released by the next call on the link after
    /// that.
    Time(Duration),
}

/// The faults of one direction. Probabilities are per frame, in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Drop the frame.
    pub drop: f64,
    /// Flip one bit of the frame.
    pub corrupt: f64,
    /// Deliver the frame twice in a row.
    pub duplicate: f64,
    /// Deliver the frame after the next one.
    pub reorder: f64,
    /// Hold the frame back by [`Faults::delay_by`].
    pub delay: f64,
    /// How long [`Faults::delay`] holds a frame back.
    pub delay_by: Delay,
    /// Cut the direction from this frame on: frames numbered `cut_after` and later
    /// (counting from 0) are silently lost. `Some(0)` cuts it from the start.
    pub cut_after: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::none()
    }
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Faults {
        Faults {
            drop: 0.0,
            corrupt: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: 0.0,
            delay_by: Delay::Frames(1),
            cut_after: None,
        }
    }

    fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("drop", self.drop),
            ("corrupt", self.corrupt),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("delay", self.delay),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultError::BadProbability { name, value });
            }
        }
        Ok(())
    }
}

/// The faults of both directions, as seen from the wrapped end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// Frames this end sends.
    pub outbound: Faults,
    /// Frames this end receives.
    pub inbound: Faults,
}

/// A direction, as seen from the wrapped end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames this end sends.
    Outbound,
    /// Frames this end receives.
    Inbound,
}

/// What the injector did to one direction's frames so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames that entered the injector.
    pub frames: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames corrupted.
    pub corrupted: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Frames reordered.
    pub reordered: u64,
    /// Frames delayed.
    pub delayed: u64,
    /// Frames lost to a cut (including frames held or queued when the cut came).
    pub cut: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames: AtomicU64,
    dropped: AtomicU64,
    corrupted: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    delayed: AtomicU64,
    cut: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FaultStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultStats {
            frames: l(&self.frames),
            dropped: l(&self.dropped),
            corrupted: l(&self.corrupted),
            duplicated: l(&self.duplicated),
            reordered: l(&self.reordered),
            delayed: l(&self.delayed),
            cut: l(&self.cut),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    cut_out: AtomicBool,
    cut_in: AtomicBool,
    out: Counters,
    inb: Counters,
}

/// A handle on a [`FaultyLink`] that other threads keep: cut or heal a direction now,
/// read the fault counters.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    fn flag(&self, dir: Direction) -> &AtomicBool {
        match dir {
            Direction::Outbound => &self.shared.cut_out,
            Direction::Inbound => &self.shared.cut_in,
        }
    }

    /// Cut `dir` from now on: all its traffic is silently lost.
    pub fn cut(&self, dir: Direction) {
        self.flag(dir).store(true, Ordering::SeqCst);
    }

    /// Cut both directions from now on.
    pub fn cut_both(&self) {
        self.cut(Direction::Outbound);
        self.cut(Direction::Inbound);
    }

    /// Undo [`FaultHandle::cut`] (a cut configured by [`Faults::cut_after`] stays).
    pub fn heal(&self, dir: Direction) {
        self.flag(dir).store(false, Ordering::SeqCst);
    }

    /// Whether `dir` is cut by this handle.
    pub fn is_cut(&self, dir: Direction) -> bool {
        self.flag(dir).load(Ordering::SeqCst)
    }

    /// What was done to `dir` so far.
    pub fn stats(&self, dir: Direction) -> FaultStats {
        match dir {
            Direction::Outbound => self.shared.out.snapshot(),
            Direction::Inbound => self.shared.inb.snapshot(),
        }
    }
}

#[derive(Debug)]
enum Release {
    AfterFrames(u32),
    At(Instant),
}

#[derive(Debug)]
struct Held {
    frames: Vec<Bytes>,
    release: Release,
}

/// One direction's injector.
#[derive(Debug)]
struct Pipe {
    faults: Faults,
    rng: ChaCha8Rng,
    index: u64,
    held: Vec<Held>,
    /// Frames that passed the injector and wait to be handed on, in order.
    ready: VecDeque<Bytes>,
}

impl Pipe {
    fn new(faults: Faults, seed: u64, stream: u64) -> Pipe {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Pipe {
            faults,
            rng,
            index: 0,
            held: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    fn configured_cut(&self) -> bool {
        self.faults.cut_after.is_some_and(|n| self.index >= n)
    }

    /// Lose everything not yet handed on.
    fn lose_all(&mut self, c: &Counters) {
        let n = self.ready.len() + self.held.iter().map(|h| h.frames.len()).sum::<usize>();
        self.ready.clear();
        self.held.clear();
        Counters::bump(&c.cut, n as u64);
    }

    /// Release frames delayed by time whose time has come.
    fn release_due(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.held.len() {
            if matches!(self.held[i].release, Release::At(t) if t <= now) {
                let h = self.held.remove(i);
                self.ready.extend(h.frames);
            } else {
                i += 1;
            }
        }
    }

    /// A frame passed on time: count it against frames delayed by frames.
    fn passed(&mut self) {
        let mut i = 0;
        while i < self.held.len() {
            if let Release::AfterFrames(n) = &mut self.held[i].release {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    let h = self.held.remove(i);
                    self.ready.extend(h.frames);
                    continue;
                }
            }
            i += 1;
        }
    }

    /// Run one frame through the injector.
    fn admit(&mut self, frame: Bytes, cut: bool, c: &Counters) {
        // Draw the same values for every frame, whatever happens to it, so one fault
        // never shifts the decisions about later frames.
        let r_drop: f64 = self.rng.gen();
        let r_corrupt: f64 = self.rng.gen();
        let r_dup: f64 = self.rng.gen();
        let r_reorder: f64 = self.rng.gen();
        let r_delay: f64 = self.rng.gen();
        let pos: u64 = self.rng.gen();
        let bit: u32 = self.rng.gen_range(0..8);
        let cut = cut || self.configured_cut();
        self.index += 1;
        Counters::bump(&c.frames, 1);
        if cut {
            Counters::bump(&c.cut, 1);
            return;
        }
        if r_drop < self.faults.drop {
            Counters::bump(&c.dropped, 1);
            return;
        }
        let frame = if r_corrupt < self.faults.corrupt && !frame.is_empty() {
            Counters::bump(&c.corrupted, 1);
            flip_bit(&frame, pos, bit)
        } else {
            frame
        };
        let frames = if r_dup < self.faults.duplicate {
            Counters::bump(&c.duplicated, 1);
            vec![frame.clone(), frame]
        } else {
            vec![frame]
        };
        let release = if r_reorder < self.faults.reorder {
            Counters::bump(&c.reordered, 1);
            Some(Release::AfterFrames(1))
        } else if r_delay < self.faults.delay {
            Counters::bump(&c.delayed, 1);
            Some(match self.faults.delay_by {
                Delay::Frames(n) => Release::AfterFrames(n.max(1)),
                Delay::Time(d) => Release::At(Instant::now() + d),
            })
        } else {
            None
        };
        match release {
            Some(release) => self.held.push(Held { frames, release }),
            None => {
                for f in frames {
                    self.ready.push_back(f);
                    self.passed();
                }
            }
        }
    }
}

fn flip_bit(frame: &Bytes, pos: u64, bit: u32) -> Bytes {
    let mut v = frame.to_vec();
    let len = v.len() as u64;
    if let Some(i) = pos.checked_rem(len).and_then(|i| usize::try_from(i).ok()) {
        if let Some(b) = v.get_mut(i) {
            *b ^= 1u8 << (bit % 8);
        }
    }
    Bytes::from(v)
}

/// A [`FrameLink`] that injects faults into the frames passing through `L`.
///
/// Outbound frames the inner link refuses with [`ChannelError::Full`] are kept in order
/// and retried on the next call; while any are waiting, a new frame is refused with
/// `Full` (nothing accepted, no random draw). A cut outbound direction accepts and
/// loses everything, and never reports `Full` or `Disconnected`; a cut inbound
/// direction reads and loses everything, and reports no `Disconnected`.
#[derive(Debug)]
pub struct FaultyLink<L> {
    inner: L,
    out: Pipe,
    inb: Pipe,
    shared: Arc<Shared>,
}

impl<L: FrameLink> FaultyLink<L> {
    /// Wrap `inner`, with every random decision drawn from `seed`.
    pub fn new(inner: L, seed: u64, plan: FaultPlan) -> Result<FaultyLink<L>> {
        plan.outbound.validate()?;
        plan.inbound.validate()?;
        Ok(FaultyLink {
            inner,
            out: Pipe::new(plan.outbound, seed, 0),
            inb: Pipe::new(plan.inbound, seed, 1),
            shared: Arc::new(Shared::default()),
        })
    }

    /// A handle to cut directions and read counters from elsewhere.
    pub fn handle(&self) -> FaultHandle {
        FaultHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// What was done to `dir` so far.
    pub fn stats(&self, dir: Direction) -> FaultStats {
        self.handle().stats(dir)
    }

    /// The wrapped link.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Unwrap the link; frames held or queued by the injector are lost.
    pub fn into_inner(self) -> L {
        self.inner
    }

    fn cut_out(&self) -> bool {
        self.shared.cut_out.load(Ordering::SeqCst)
    }

    fn cut_in(&self) -> bool {
        self.shared.cut_in.load(Ordering::SeqCst)
    }

    /// Housekeeping common to every call: apply cuts, release timed frames.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.cut_out() || self.out.configured_cut() {
            self.out.lose_all(&self.shared.out);
        }
        if self.cut_in() || self.inb.configured_cut() {
            self.inb.lose_all(&self.shared.inb);
        }
        self.out.release_due(now);
        self.inb.release_due(now);
    }

    /// Hand queued outbound frames to the inner link, in order, until it is full.
    fn flush_out(&mut self) -> std::result::Result<(), ChannelError> {
        while let Some(f) = self.out.ready.front() {
            match self.inner.try_send_frame(f.clone()) {
                Ok(()) => {
                    self.out.ready.pop_front();
                }
                Err(ChannelError::Full) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<L: FrameLink> FrameLink for FaultyLink<L> {
    fn try_send_frame(&mut self, frame: Bytes) -> std::result::Result<(), ChannelError> {
        self.tick();
        let cut = self.cut_out();
        if !cut {
            self.flush_out()?;
            if !self.out.ready.is_empty() {
                return Err(ChannelError::Full);
            }
        }
        self.out.admit(frame, cut, &self.shared.out);
        self.flush_out()
    }

    fn try_recv_frame(&mut self) -> std::result::Result<Option<Bytes>, ChannelError> {
        self.tick();
        // Let delayed outbound frames go even if this end only receives for a while;
        // a send error shows on the next send.
        if !self.cut_out() {
            let _ = self.flush_out();
        }
        loop {
            if let Some(f) = self.inb.ready.pop_front() {
                return Ok(Some(f));
            }
            match self.inner.try_recv_frame() {
                Ok(Some(f)) => {
                    let cut = self.cut_in();
                    self.inb.admit(f, cut, &self.shared.inb);
                }
                Ok(None) => return Ok(None),
                Err(_) if self.cut_in() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::link_pair;

    fn frame(i: u8) -> Bytes {
        Bytes::from(vec![i; 8])
    }

    fn through(plan: FaultPlan, seed: u64, n: u8) -> Vec<Bytes> {
        let (a, mut b) = link_pair(1024);
        let mut a = FaultyLink::new(a, seed, plan).unwrap();
        for i in 0..n {
            a.try_send_frame(frame(i)).unwrap();
        }
        let mut got = Vec::new();
        while let Some(f) = b.try_recv_frame().unwrap() {
            got.push(f);
        }
        got
    }

    #[test]
    fn rejects_bad_probabilities() {
        let (a, _b) = link_pair(1);
        let plan = FaultPlan {
            outbound: Faults {
                drop: 1.5,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        assert!(matches!(
            FaultyLink::new(a, 1, plan),
            Err(FaultError::BadProbability { name: "drop", .. })
        ));
        let (a, _b) = link_pair(1);
        let plan = FaultPlan {
            inbound: Faults {
                delay: f64::NAN,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        assert!(FaultyLink::new(a, 1, plan).is_err());
    }

    #[test]
    fn no_faults_is_transparent() {
        let got = through(FaultPlan::default(), 7, 20);
        assert_eq!(got, (0..20).map(frame).collect::<Vec<_>>());
    }

    #[test]
    fn reorder_swaps_with_next_and_delay_by_frames() {
        let plan = FaultPlan {
            outbound: Faults {
                reorder: 1.0,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        // Every frame is held until the next one passes, but none passes on time: all
        // held. A frame only moves when an on-time frame passes.
        assert!(through(plan, 3, 5).is_empty());

        let plan = FaultPlan {
            outbound: Faults {
                delay: 1.0,
                delay_by: Delay::Frames(2),
                cut_after: None,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        let (a, mut b) = link_pair(16);
        let mut a = FaultyLink::new(a, 3, plan).unwrap();
        a.try_send_frame(frame(0)).unwrap();
        a.out.faults.delay = 0.0;
        for i in 1..4 {
            a.try_send_frame(frame(i)).unwrap();
        }
        let mut got = Vec::new();
        while let Some(f) = b.try_recv_frame().unwrap() {
            got.push(f[0]);
        }
        assert_eq!(got, vec![1, 2, 0, 3]);
    }

    #[test]
    fn cut_after_loses_everything_from_that_frame() {
        let plan = FaultPlan {
            outbound: Faults {
                cut_after: Some(3),
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        let got = through(plan, 1, 10);
        assert_eq!(got, (0..3).map(frame).collect::<Vec<_>>());
    }

    #[test]
    fn full_inner_link_keeps_order_and_refuses() {
        let plan = FaultPlan {
            outbound: Faults {
                duplicate: 1.0,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        let (a, mut b) = link_pair(1);
        let mut a = FaultyLink::new(a, 5, plan).unwrap();
        a.try_send_frame(frame(0)).unwrap(); // one copy in the link, one queued
        assert_eq!(a.try_send_frame(frame(1)), Err(ChannelError::Full));
        assert_eq!(b.try_recv_frame().unwrap(), Some(frame(0)));
        // Room again: the queued copy goes first, then frame 1 is accepted.
        a.try_send_frame(frame(1)).unwrap();
        assert_eq!(a.try_send_frame(frame(2)), Err(ChannelError::Full));
        let mut got = Vec::new();
        for _ in 0..10 {
            let _ = a.try_recv_frame(); // flushes queued outbound frames
            if let Some(f) = b.try_recv_frame().unwrap() {
                got.push(f[0]);
            }
        }
        assert_eq!(got, vec![0, 1, 1]);
        assert_eq!(a.stats(Direction::Outbound).duplicated, 2);
    }

    #[test]
    fn inbound_faults_and_handle_cut() {
        let plan = FaultPlan {
            inbound: Faults {
                drop: 0.5,
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        let (mut a, b) = link_pair(64);
        let mut b = FaultyLink::new(b, 11, plan).unwrap();
        for i in 0..40 {
            a.try_send_frame(frame(i)).unwrap();
        }
        let mut n = 0;
        while b.try_recv_frame().unwrap().is_some() {
            n += 1;
        }
        let s = b.stats(Direction::Inbound);
        assert_eq!(s.frames, 40);
        assert_eq!(n + s.dropped, 40);
        assert!(s.dropped > 5 && s.dropped < 35, "seed 11: {s:?}");

        let h = b.handle();
        h.cut(Direction::Inbound);
        a.try_send_frame(frame(1)).unwrap();
        assert_eq!(b.try_recv_frame().unwrap(), None);
        drop(a);
        // A cut direction does not even report the disconnect.
        assert_eq!(b.try_recv_frame().unwrap(), None);
        h.heal(Direction::Inbound);
        assert_eq!(b.try_recv_frame(), Err(ChannelError::Disconnected));
    }

    #[test]
    fn timed_delay_releases_later() {
        let plan = FaultPlan {
            outbound: Faults {
                delay: 1.0,
                delay_by: Delay::Time(Duration::from_millis(20)),
                ..Faults::none()
            },
            ..FaultPlan::default()
        };
        let (a, mut b) = link_pair(4);
        let mut a = FaultyLink::new(a, 9, plan).unwrap();
        a.try_send_frame(frame(0)).unwrap();
        assert_eq!(b.try_recv_frame().unwrap(), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.try_recv_frame().unwrap(), None); // any call releases it
        assert_eq!(b.try_recv_frame().unwrap(), Some(frame(0)));
    }
}
