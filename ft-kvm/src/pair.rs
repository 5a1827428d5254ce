//! An in-process protected pair on virtual time: a primary and a backup [`Node`] over
//! any [`EventSource`] and [`World`], a log link through the real wire codec, and an
//! [`InProcessArbiter`]. The KVM tests, the `kvm_failover` example and the benchmark
//! drive two KVM VMs in one process through it.
//!
//! Time is virtual (`tick` nanoseconds per step) so that a seeded run is reproducible:
//! the worlds see the same `now` values in every run, whatever the host's speed.

use std::collections::VecDeque;

use ft_core::log_codec::{self, Frame, FrameDecoder};
use ft_core::{
    Arbiter, Command, EngineError, EventSource, InProcessArbiter, Nanos, Node, Notice, Record,
    Transmit, World,
};
use thiserror::Error;

/// Errors of the pair driver (the link itself; engine errors are kept in the trace).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PairError {
    /// A frame could not be encoded or decoded.
    #[error("log link: {0}")]
    Codec(String),
}

/// Result alias of this module.
pub type Result<T, E = PairError> = std::result::Result<T, E>;

/// Which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Started as primary.
    Primary,
    /// Started as backup.
    Backup,
}

/// What the pair observed.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Every record the primary sent, in order.
    pub records: Vec<Record>,
    /// Notices of both sides, with the time.
    pub notices: Vec<(Nanos, Side, Notice)>,
    /// Engine errors of both sides (a divergence is one).
    pub errors: Vec<(Nanos, Side, EngineError)>,
    /// Link errors.
    pub link_errors: Vec<PairError>,
    /// Bytes of record frames.
    pub log_bytes: u64,
}

/// Two nodes wired together in one process. See the module docs.
pub struct LocalPair<S, W> {
    /// The primary.
    pub primary: Node<S, W>,
    /// The backup.
    pub backup: Node<S, W>,
    arbiter: InProcessArbiter,
    now: Nanos,
    tick: Nanos,
    to_backup: VecDeque<Vec<u8>>,
    to_primary: VecDeque<Vec<u8>>,
    dec_b: FrameDecoder,
    dec_p: FrameDecoder,
    primary_up: bool,
    /// Backup steps per tick (it replays faster than the primary records).
    pub backup_steps: u32,
    trace: Trace,
}

impl<S: EventSource, W: World> LocalPair<S, W> {
    /// A pair of nodes (built by the caller with `Node::primary` and `Node::backup` at
    /// time 0), advancing `tick` nanoseconds of virtual time per step.
    pub fn new(primary: Node<S, W>, backup: Node<S, W>, tick: Nanos) -> LocalPair<S, W> {
        LocalPair {
            primary,
            backup,
            arbiter: InProcessArbiter::new(),
            now: 0,
            tick,
            to_backup: VecDeque::new(),
            to_primary: VecDeque::new(),
            dec_b: FrameDecoder::new(),
            dec_p: FrameDecoder::new(),
            primary_up: true,
            backup_steps: 4,
            trace: Trace::default(),
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// What happened so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// Whether the primary still runs.
    pub fn primary_up(&self) -> bool {
        self.primary_up
    }

    /// Kill the primary: it executes and sends nothing more; frames already sent still
    /// arrive.
    pub fn crash_primary(&mut self) {
        self.primary_up = false;
    }

    fn deliver(&mut self) {
        let now = self.now;
        while self.backup.inbox_space() >= self.backup.config().max_batch {
            let Some(bytes) = self.to_backup.pop_front() else {
                break;
            };
            self.dec_b.push(&bytes);
            loop {
                match self.dec_b.next_frame() {
                    Ok(Some(Frame::Records(recs))) => {
                        if let Err(e) = self.backup.handle_records(recs, now) {
                            self.trace.errors.push((now, Side::Backup, e));
                        }
                    }
                    Ok(Some(Frame::Ack(_))) => self
                        .trace
                        .link_errors
                        .push(PairError::Codec("ack on the log link".into())),
                    Ok(None) => break,
                    Err(e) => {
                        self.trace.link_errors.push(PairError::Codec(e.to_string()));
                        break;
                    }
                }
            }
        }
        if !self.primary_up {
            self.to_primary.clear();
            return;
        }
        while let Some(bytes) = self.to_primary.pop_front() {
            self.dec_p.push(&bytes);
            while let Ok(Some(f)) = self.dec_p.next_frame() {
                if let Frame::Ack(ack) = f {
                    if let Err(e) = self.primary.handle_ack(ack, now) {
                        self.trace.errors.push((now, Side::Primary, e));
                    }
                }
            }
        }
    }

    /// Advance one tick: deliver frames, step both sides, send, arbitrate.
    pub fn step(&mut self) {
        self.now += self.tick;
        let now = self.now;
        self.deliver();
        if self.primary_up {
            if let Err(e) = self.primary.step(now) {
                self.trace.errors.push((now, Side::Primary, e));
            }
            while let Some(t) = self.primary.poll_transmit(now) {
                if let Transmit::Records(recs) = t {
                    let mut buf = Vec::new();
                    match log_codec::encode_records(&recs, &mut buf) {
                        Ok(()) => {
                            self.trace.log_bytes += buf.len() as u64;
                            self.trace.records.extend(recs);
                            self.to_backup.push_back(buf);
                        }
                        Err(e) => self.trace.link_errors.push(PairError::Codec(e.to_string())),
                    }
                }
            }
        }
        self.deliver();
        for _ in 0..self.backup_steps.max(1) {
            match self.backup.step(now) {
                Ok(ft_core::StepOutcome::Progressed) => {}
                Ok(_) => break,
                Err(e) => {
                    self.trace.errors.push((now, Side::Backup, e));
                    break;
                }
            }
        }
        while let Some(t) = self.backup.poll_transmit(now) {
            if let Transmit::Ack(ack) = t {
                let mut buf = Vec::new();
                if log_codec::encode_ack(&ack, &mut buf).is_ok() && self.primary_up {
                    self.to_primary.push_back(buf);
                }
            }
        }
        self.arbitrate(now);
        while let Some((t, n)) = self.primary.poll_notice() {
            self.trace.notices.push((t, Side::Primary, n));
        }
        while let Some((t, n)) = self.backup.poll_notice() {
            self.trace.notices.push((t, Side::Backup, n));
        }
    }

    fn arbitrate(&mut self, now: Nanos) {
        let mut calls = Vec::new();
        if self.primary_up {
            while let Some(c) = self.primary.poll_command() {
                calls.push((Side::Primary, c));
            }
        }
        while let Some(c) = self.backup.poll_command() {
            calls.push((Side::Backup, c));
        }
        for (side, Command::TestAndSet { pair, me, .. }) in calls {
            let res = self.arbiter.test_and_set(pair, me);
            match side {
                Side::Primary => self.primary.on_arbiter(res, now),
                Side::Backup => self.backup.on_arbiter(res, now),
            }
        }
    }

    /// Step until `done` holds or `max_steps` steps passed; returns whether it held.
    pub fn run_until(&mut self, max_steps: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Whether the primary finished and the backup replayed everything it sent.
    pub fn replay_complete(&self) -> bool {
        self.primary.exit_code().is_some()
            && self.to_backup.is_empty()
            && self.backup.exit_code().is_some()
            && self.backup.buffered_records() == 0
    }
}
