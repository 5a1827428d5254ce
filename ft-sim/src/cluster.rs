//! A deterministic simulation of a protected pair: a primary and a backup sim machine,
//! a log link with latency and a bounded buffer, an arbiter, crashes and network cuts,
//! all on virtual time and a seeded RNG. The same seed gives the same run, bit for bit.
//!
//! Each side is turned by ft-core's one driver loop ([`ft_core::driver::Driver`]), the
//! same loop the threaded runtime turns in production, over a
//! [`VirtualWire`] (the real wire codec on virtual time) and a [`Delayed`] arbiter. A
//! tick advances virtual time and turns each side that is up once (the backup once
//! every [`PairConfig::backup_step_every`] ticks: a slower host).
//!
//! Property tests, the `failover` example and the benchmarks drive pairs through this.

use bytes::Bytes;
use ft_core::driver::{Delayed, Driver, DriverConfig, DriverError, VirtualWire, WireConfig};
use ft_core::{Config, InProcessArbiter, Nanos, Node, NodeId, Notice, Output, PairId, Record};

use crate::machine::{Machine, MachineConfig};
use crate::world::{Disk, OutputSink, SimWorld, SimWorldConfig};

/// Which side of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that started as primary.
    Primary,
    /// The side that started as backup.
    Backup,
}

/// Configuration of a simulated pair.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// Engine configuration shared by both sides (node ids are set per side).
    pub engine: Config,
    /// Machine configuration (both sides).
    pub machine: MachineConfig,
    /// World configuration (both sides; same entropy seed is irrelevant: the backup's
    /// world is not consulted while replaying).
    pub world: SimWorldConfig,
    /// Disk size in bytes.
    pub disk_size: usize,
    /// Whether the disk is one shared image (true) or two private copies.
    pub shared_disk: bool,
    /// One-way link latency.
    pub link_latency: Nanos,
    /// Extra random latency, up to this much, per frame (order is kept).
    pub link_jitter: Nanos,
    /// Frames the link buffers per direction; a full link refuses sends.
    pub link_capacity: usize,
    /// Virtual time per simulation tick.
    pub tick: Nanos,
    /// The backup steps once every this many ticks (1: as fast as the primary).
    pub backup_step_every: u32,
    /// Time the arbiter takes to answer.
    pub arbiter_latency: Nanos,
    /// Seed of the link jitter.
    pub seed: u64,
}

impl Default for PairConfig {
    fn default() -> Self {
        PairConfig {
            engine: Config {
                slice: 2_000,
                digest_interval: 20_000,
                heartbeat_interval: 1_000_000,
                peer_timeout: 10_000_000,
                max_lag: 5_000_000,
                batch_delay: 100_000,
                ..Config::default()
            },
            machine: MachineConfig::default(),
            world: SimWorldConfig::default(),
            disk_size: 64 * 1024,
            shared_disk: true,
            link_latency: 50_000,
            link_jitter: 20_000,
            link_capacity: 64,
            tick: 20_000,
            backup_step_every: 1,
            arbiter_latency: 200_000,
            seed: 0,
        }
    }
}

/// What the simulation observed, for checkers.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// Every record the primary put on the link, in order.
    pub records: Vec<Record>,
    /// (time, last record seq) each time the backup took records in.
    pub backup_received: Vec<(Nanos, u64)>,
    /// Notices of both sides.
    pub notices: Vec<(Nanos, Side, Notice)>,
    /// Errors reported by either side.
    pub errors: Vec<(Nanos, Side, String)>,
    /// Bytes of frames put on the link, primary to backup.
    pub log_bytes: u64,
    /// Frames primary to backup.
    pub log_frames: u64,
    /// Ack frames backup to primary.
    pub ack_frames: u64,
    /// Largest number of records in flight on the link.
    pub max_link_frames: usize,
}

/// An error as the trace keeps it: the engine's own message, or the link's.
fn error_text(e: DriverError) -> String {
    match e {
        DriverError::Engine(e) => e.to_string(),
        DriverError::Channel(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// A simulated pair. See the module docs.
pub struct PairSim {
    cfg: PairConfig,
    /// The primary side.
    pub primary: Node<Machine, SimWorld>,
    /// The backup side.
    pub backup: Node<Machine, SimWorld>,
    primary_loop: Driver,
    backup_loop: Driver,
    wire: VirtualWire,
    arbiter: InProcessArbiter,
    primary_arbiter: Delayed<InProcessArbiter>,
    backup_arbiter: Delayed<InProcessArbiter>,
    now: Nanos,
    ticks: u64,
    primary_up: bool,
    backup_up: bool,
    sink: OutputSink,
    trace: Trace,
}

impl PairSim {
    /// A pair running `image` (raw code at the start of RAM) on both sides.
    pub fn new(cfg: PairConfig, image: &[u8]) -> Result<PairSim, crate::machine::MachineError> {
        let m = Machine::from_raw(cfg.machine, image)?;
        Ok(Self::with_machine(cfg, m))
    }

    /// A pair whose two sides start from clones of `machine`.
    pub fn with_machine(cfg: PairConfig, machine: Machine) -> PairSim {
        Self::with_disk(cfg.clone(), machine, Disk::new(cfg.disk_size))
    }

    /// A pair with an initial disk image.
    pub fn with_disk(cfg: PairConfig, machine: Machine, disk: Disk) -> PairSim {
        let sink = OutputSink::new();
        let backup_disk = if cfg.shared_disk {
            disk.clone()
        } else {
            disk.deep_copy()
        };
        let mut pcfg = cfg.engine.clone();
        pcfg.node = NodeId(1);
        let mut bcfg = cfg.engine.clone();
        bcfg.node = NodeId(2);
        let pw = SimWorld::new("primary", cfg.world.clone(), disk, sink.clone(), true);
        let mut bw_cfg = cfg.world.clone();
        bw_cfg.seed = cfg.world.seed.wrapping_add(0x9e37_79b9);
        let bw = SimWorld::new("backup", bw_cfg, backup_disk, sink.clone(), false);
        let mut wire = VirtualWire::new(WireConfig {
            latency: cfg.link_latency,
            jitter: cfg.link_jitter,
            capacity: cfg.link_capacity,
            seed: cfg.seed,
        });
        wire.tap_records();
        let arbiter = InProcessArbiter::new();
        PairSim {
            primary: Node::primary(pcfg, machine.clone(), pw, 0),
            backup: Node::backup(bcfg, machine, bw, 0),
            primary_loop: Driver::new(DriverConfig::default()),
            backup_loop: Driver::new(DriverConfig::default()),
            wire,
            primary_arbiter: Delayed::new(arbiter.clone(), cfg.arbiter_latency),
            backup_arbiter: Delayed::new(arbiter.clone(), cfg.arbiter_latency),
            arbiter,
            now: 0,
            ticks: 0,
            primary_up: true,
            backup_up: true,
            sink,
            trace: Trace::default(),
            cfg,
        }
    }

    /// Virtual time now.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &PairConfig {
        &self.cfg
    }

    /// The shared output sink (the outside world).
    pub fn sink(&self) -> &OutputSink {
        &self.sink
    }

    /// The trace so far.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The arbiter.
    pub fn arbiter(&self) -> &InProcessArbiter {
        &self.arbiter
    }

    /// The pair id both sides use.
    pub fn pair(&self) -> PairId {
        self.cfg.engine.pair
    }

    /// Kill the primary now: it executes and sends nothing more, and its pending
    /// arbiter call is never answered. Frames already on the link still arrive.
    pub fn crash_primary(&mut self) {
        self.primary_up = false;
        self.primary_arbiter.clear();
    }

    /// Kill the backup now.
    pub fn crash_backup(&mut self) {
        self.backup_up = false;
        self.backup_arbiter.clear();
    }

    /// Whether the primary is still running.
    pub fn primary_up(&self) -> bool {
        self.primary_up
    }

    /// Cut the link: from now on frames in the given directions are lost (frames
    /// already in flight too).
    pub fn cut(&mut self, to_backup: bool, to_primary: bool) {
        self.wire.cut(to_backup, to_primary);
    }

    /// Inject raw bytes into the link towards the backup (bad-input tests).
    pub fn inject_to_backup(&mut self, bytes: Bytes) {
        self.wire.inject_to_backup(self.now, 0, bytes);
    }

    /// A packet from a client reaches whichever side is live now (the one that last
    /// announced itself), `delay` from now.
    pub fn send_packet(&mut self, delay: Nanos, data: Bytes) {
        let at = self.now + delay;
        if self.backup.is_live() && self.backup_up {
            self.backup.world_mut().deliver_packet(at, data);
        } else if self.primary_up {
            self.primary.world_mut().deliver_packet(at, data);
        }
    }

    /// Advance one tick: turn the primary's loop, then the backup's (when it is its
    /// turn), and collect what they reported.
    pub fn tick(&mut self) {
        self.now += self.cfg.tick;
        self.ticks += 1;
        let now = self.now;

        if self.primary_up {
            self.primary_loop.turn(
                &mut self.primary,
                &now,
                &mut self.wire.primary_end(now),
                &mut self.primary_arbiter,
            );
            for e in self.primary_loop.take_errors() {
                self.trace.errors.push((now, Side::Primary, error_text(e)));
            }
            while let Some((t, n)) = self.primary.poll_notice() {
                self.trace.notices.push((t, Side::Primary, n));
            }
        }
        self.trace.records.extend(self.wire.take_tapped());
        if self.backup_up
            && self
                .ticks
                .is_multiple_of(u64::from(self.cfg.backup_step_every.max(1)))
        {
            let before = self.backup.last_seq();
            self.backup_loop.turn(
                &mut self.backup,
                &now,
                &mut self.wire.backup_end(now),
                &mut self.backup_arbiter,
            );
            if self.backup.last_seq() > before {
                self.trace
                    .backup_received
                    .push((now, self.backup.last_seq()));
            }
            for e in self.backup_loop.take_errors() {
                self.trace.errors.push((now, Side::Backup, error_text(e)));
            }
            while let Some((t, n)) = self.backup.poll_notice() {
                self.trace.notices.push((t, Side::Backup, n));
            }
        }
        let (to_b, to_p) = (self.wire.stats_to_backup(), self.wire.stats_to_primary());
        self.trace.log_bytes = to_b.bytes;
        self.trace.log_frames = to_b.frames;
        self.trace.ack_frames = to_p.frames;
        self.trace.max_link_frames = to_b.max_in_flight;
    }

    /// Tick until `done` holds or `max_ticks` ticks passed; returns whether `done`
    /// held.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&PairSim) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// Errors of the engine seen so far, as text.
    pub fn errors(&self) -> &[(Nanos, Side, String)] {
        &self.trace.errors
    }

    /// Outputs the primary released (not the backup's).
    pub fn primary_released(&self) -> Vec<Output> {
        self.sink
            .all()
            .into_iter()
            .filter(|e| e.side == "primary")
            .map(|e| e.output)
            .collect()
    }

    /// Check the output rule over the run: every output the primary released had its
    /// record received by the backup before the release. Returns the first violation.
    pub fn check_output_rule(&self) -> Result<usize, String> {
        let mut record_of = std::collections::HashMap::new();
        for r in &self.trace.records {
            if let ft_core::Event::Output { seq, .. } = r.event {
                record_of.insert(seq, r.seq);
            }
        }
        let mut checked = 0;
        for e in self.sink.all() {
            if e.side != "primary" || self.primary_alone_since().is_some_and(|t| e.at >= t) {
                continue;
            }
            let Some(rec) = record_of.get(&e.output.seq) else {
                return Err(format!(
                    "output #{} was released at {} before its record was even sent",
                    e.output.seq.0, e.at
                ));
            };
            let received = self
                .trace
                .backup_received
                .iter()
                .take_while(|(t, _)| *t <= e.at)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0);
            if received < *rec {
                return Err(format!(
                    "output #{} (record {rec}) was released at {} when the backup had only received up to record {received}",
                    e.output.seq.0, e.at
                ));
            }
            checked += 1;
        }
        Ok(checked)
    }

    fn primary_alone_since(&self) -> Option<Nanos> {
        self.trace.notices.iter().find_map(|(t, s, n)| {
            (matches!(n, Notice::WentAlone { .. }) && *s == Side::Primary).then_some(*t)
        })
    }

    /// Which sides are live now.
    pub fn live_sides(&self) -> Vec<Side> {
        let mut v = Vec::new();
        if self.primary_up && self.primary.is_live() {
            v.push(Side::Primary);
        }
        if self.backup_up && self.backup.is_live() {
            v.push(Side::Backup);
        }
        v
    }

    /// Step outcome helper: whether the guest on the live side has finished.
    pub fn finished(&self) -> bool {
        let p = self.primary_up && self.primary.exit_code().is_some();
        let b = self.backup_up && self.backup.is_live() && self.backup.exit_code().is_some();
        p || b
    }

    /// Engine errors as typed values are not kept; this tells whether any side
    /// reported a divergence.
    pub fn diverged(&self) -> bool {
        self.trace
            .notices
            .iter()
            .any(|(_, _, n)| matches!(n, Notice::Diverged(_)))
    }
}
