//! An in-process protected pair on virtual time: a primary and a backup [`Node`] over
//! any [`EventSource`] and [`World`], each turned by ft-core's one driver loop
//! ([`Driver`]) over a [`VirtualWire`] (the real wire codec, no latency, a bounded
//! buffer) and an [`InProcessArbiter`]. The KVM tests, the `kvm_failover` example and
//! the benchmark drive two KVM VMs in one process through it.
//!
//! Time is virtual (`tick` nanoseconds per step) so that a seeded run is reproducible:
//! the worlds see the same `now` values in every run, whatever the host's speed.

use ft_core::driver::{
    Driver, DriverConfig, DriverError, Immediate, Turn, VirtualWire, WireConfig,
};
use ft_core::{EngineError, EventSource, InProcessArbiter, Nanos, Node, Notice, Record, World};

/// Frames the wire holds per direction before it refuses sends (and the primary's
/// outbox, then the primary itself, waits).
pub const WIRE_CAPACITY: usize = 1024;

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
    /// Link errors of both sides (a corrupt frame, a frame of the wrong kind); each
    /// breaks that side's link for good.
    pub link_errors: Vec<(Nanos, Side, DriverError)>,
    /// Bytes of record frames.
    pub log_bytes: u64,
}

/// Two nodes wired together in one process. See the module docs.
pub struct LocalPair<S, W> {
    /// The primary.
    pub primary: Node<S, W>,
    /// The backup.
    pub backup: Node<S, W>,
    primary_loop: Driver,
    backup_loop: Driver,
    wire: VirtualWire,
    arbiter: InProcessArbiter,
    now: Nanos,
    tick: Nanos,
    primary_up: bool,
    /// Most backup turns per tick (it replays faster than the primary records); the
    /// backup stops early once a turn does no work.
    pub backup_steps: u32,
    trace: Trace,
}

impl<S: EventSource, W: World> LocalPair<S, W> {
    /// A pair of nodes (built by the caller with `Node::primary` and `Node::backup` at
    /// time 0), advancing `tick` nanoseconds of virtual time per step.
    pub fn new(primary: Node<S, W>, backup: Node<S, W>, tick: Nanos) -> LocalPair<S, W> {
        let mut wire = VirtualWire::new(WireConfig {
            latency: 0,
            jitter: 0,
            capacity: WIRE_CAPACITY,
            seed: 0,
        });
        wire.tap_records();
        LocalPair {
            primary,
            backup,
            primary_loop: Driver::new(DriverConfig::default()),
            backup_loop: Driver::new(DriverConfig::default()),
            wire,
            arbiter: InProcessArbiter::new(),
            now: 0,
            tick,
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

    /// The arbiter both sides ask.
    pub fn arbiter(&self) -> &InProcessArbiter {
        &self.arbiter
    }

    /// Whether the primary still runs.
    pub fn primary_up(&self) -> bool {
        self.primary_up
    }

    /// Kill the primary: it executes and sends nothing more; frames already sent still
    /// arrive.
    pub fn crash_primary(&mut self) {
        self.primary_up = false;
        self.wire.drain_to_primary();
    }

    fn collect(&mut self, side: Side, now: Nanos) {
        let (driver, node) = match side {
            Side::Primary => (&mut self.primary_loop, &mut self.primary),
            Side::Backup => (&mut self.backup_loop, &mut self.backup),
        };
        for e in driver.take_errors() {
            match e {
                DriverError::Engine(e) => self.trace.errors.push((now, side, e)),
                e => self.trace.link_errors.push((now, side, e)),
            }
        }
        while let Some((t, n)) = node.poll_notice() {
            self.trace.notices.push((t, side, n));
        }
    }

    /// Advance one tick: turn the primary's loop once, then the backup's up to
    /// [`LocalPair::backup_steps`] times.
    pub fn step(&mut self) {
        self.now += self.tick;
        let now = self.now;
        if self.primary_up {
            let mut port = Immediate::new(&self.arbiter);
            self.primary_loop.turn(
                &mut self.primary,
                &now,
                &mut self.wire.primary_end(now),
                &mut port,
            );
            self.collect(Side::Primary, now);
            let tapped = self.wire.take_tapped();
            self.trace.records.extend(tapped);
            self.trace.log_bytes = self.wire.stats_to_backup().bytes;
        } else {
            self.wire.drain_to_primary();
        }
        for _ in 0..self.backup_steps.max(1) {
            let mut port = Immediate::new(&self.arbiter);
            let turn = self.backup_loop.turn(
                &mut self.backup,
                &now,
                &mut self.wire.backup_end(now),
                &mut port,
            );
            self.collect(Side::Backup, now);
            if turn != Turn::Busy {
                break;
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
            && self.wire.in_flight_to_backup() == 0
            && !self.primary_loop.has_pending()
            && self.backup.exit_code().is_some()
            && self.backup.buffered_records() == 0
    }
}
