//! A deterministic simulation of a protected pair: a primary and a backup sim machine,
//! a log link with latency and a bounded buffer, an arbiter, crashes and network cuts,
//! all on virtual time and a seeded RNG. The same seed gives the same run, bit for bit.
//!
//! Property tests, the `failover` example and the benchmarks drive pairs through this.

use std::collections::VecDeque;

use bytes::Bytes;
use ft_core::log_codec::{self, CodecError, Frame, FrameDecoder};
use ft_core::{
    Arbiter, Command, Config, InProcessArbiter, Nanos, Node, NodeId, Notice, Output, PairId, Phase,
    Record, Transmit,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// A simulated pair. See the module docs.
pub struct PairSim {
    cfg: PairConfig,
    /// The primary side.
    pub primary: Node<Machine, SimWorld>,
    /// The backup side.
    pub backup: Node<Machine, SimWorld>,
    arbiter: InProcessArbiter,
    now: Nanos,
    ticks: u64,
    rng: ChaCha8Rng,
    to_backup: VecDeque<(Nanos, Bytes)>,
    to_primary: VecDeque<(Nanos, Bytes)>,
    held_p: Option<Bytes>,
    dec_b: FrameDecoder,
    dec_p: FrameDecoder,
    /// The backup's log stream has ended (it suspected the primary) and what was left
    /// of it has been checked.
    log_ended: bool,
    primary_up: bool,
    backup_up: bool,
    cut_to_backup: bool,
    cut_to_primary: bool,
    arbiter_calls: VecDeque<(Nanos, Side, Command)>,
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
        PairSim {
            primary: Node::primary(pcfg, machine.clone(), pw, 0),
            backup: Node::backup(bcfg, machine, bw, 0),
            arbiter: InProcessArbiter::new(),
            now: 0,
            ticks: 0,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            to_backup: VecDeque::new(),
            to_primary: VecDeque::new(),
            held_p: None,
            dec_b: FrameDecoder::new(),
            dec_p: FrameDecoder::new(),
            log_ended: false,
            primary_up: true,
            backup_up: true,
            cut_to_backup: false,
            cut_to_primary: false,
            arbiter_calls: VecDeque::new(),
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

    /// Kill the primary now: it executes and sends nothing more. Frames already on the
    /// link still arrive.
    pub fn crash_primary(&mut self) {
        self.primary_up = false;
        self.held_p = None;
    }

    /// Kill the backup now.
    pub fn crash_backup(&mut self) {
        self.backup_up = false;
    }

    /// Whether the primary is still running.
    pub fn primary_up(&self) -> bool {
        self.primary_up
    }

    /// Cut the link: from now on frames in the given directions are lost (frames
    /// already in flight too).
    pub fn cut(&mut self, to_backup: bool, to_primary: bool) {
        if to_backup {
            self.cut_to_backup = true;
            self.to_backup.clear();
        }
        if to_primary {
            self.cut_to_primary = true;
            self.to_primary.clear();
        }
    }

    /// Inject raw bytes into the link towards the backup (bad-input tests).
    pub fn inject_to_backup(&mut self, bytes: Bytes) {
        self.to_backup.push_back((self.now, bytes));
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

    fn link_delay(&mut self) -> Nanos {
        let jitter = if self.cfg.link_jitter > 0 {
            self.rng.gen_range(0..=self.cfg.link_jitter)
        } else {
            0
        };
        self.cfg.link_latency + jitter
    }

    fn push_link(q: &mut VecDeque<(Nanos, Bytes)>, at: Nanos, b: Bytes) {
        // Keep order: a frame never overtakes the one before it.
        let at = q.back().map_or(at, |(t, _)| at.max(*t));
        q.push_back((at, b));
    }

    fn error(&mut self, side: Side, e: impl std::fmt::Display) {
        self.trace.errors.push((self.now, side, e.to_string()));
    }

    /// Advance one tick.
    pub fn tick(&mut self) {
        self.now += self.cfg.tick;
        self.ticks += 1;
        let now = self.now;

        // Link: primary -> backup.
        while let Some((at, _)) = self.to_backup.front() {
            if *at > now || !self.backup_up {
                break;
            }
            if self.backup.inbox_space() < self.cfg.engine.max_batch {
                break; // the backup reads no more until it has room
            }
            let Some((_, bytes)) = self.to_backup.pop_front() else {
                break;
            };
            if self.log_ended {
                // The backup takes nothing more from the old primary (see below).
                continue;
            }
            self.dec_b.push(&bytes);
            loop {
                match self.dec_b.next_frame() {
                    Ok(Some(Frame::Records(recs))) => match self.backup.handle_records(recs, now) {
                        Ok(()) => {
                            let last = self.backup.last_seq();
                            self.trace.backup_received.push((now, last));
                        }
                        Err(e) => self.error(Side::Backup, e),
                    },
                    Ok(Some(Frame::Ack(_))) => {
                        self.error(Side::Backup, "ack frame on the log link")
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.error(Side::Backup, e);
                        break;
                    }
                }
            }
        }
        // Link: backup -> primary.
        while let Some((at, _)) = self.to_primary.front() {
            if *at > now || !self.primary_up {
                break;
            }
            let Some((_, bytes)) = self.to_primary.pop_front() else {
                break;
            };
            self.dec_p.push(&bytes);
            loop {
                match self.dec_p.next_frame() {
                    Ok(Some(Frame::Ack(ack))) => {
                        if let Err(e) = self.primary.handle_ack(ack, now) {
                            self.error(Side::Primary, e);
                        }
                    }
                    Ok(Some(Frame::Records(_))) => {
                        self.error(Side::Primary, "record frame on the ack link")
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.error(Side::Primary, e);
                        break;
                    }
                }
            }
        }

        if self.primary_up {
            if let Err(e) = self.primary.step(now) {
                self.error(Side::Primary, e);
            }
            self.transmit_primary();
        }
        if self.backup_up && self.ticks % u64::from(self.cfg.backup_step_every.max(1)) == 0 {
            if let Err(e) = self.backup.step(now) {
                self.error(Side::Backup, e);
            }
        }
        if self.backup_up && !self.log_ended && self.backup.phase() != &Phase::Replaying {
            // The backup takes nothing more from the old primary: its log stream ends
            // here, and a partial frame left in it (the primary fell silent in the
            // middle of one) is a truncated stream, reported rather than dropped.
            self.log_ended = true;
            if let Err(e @ CodecError::Truncated { .. }) = self.dec_b.finish() {
                self.error(Side::Backup, e);
            }
        }
        if self.backup_up {
            while let Some(t) = self.backup.poll_transmit(now) {
                if let Transmit::Ack(ack) = t {
                    let mut buf = Vec::new();
                    if let Err(e) = log_codec::encode_ack(&ack, &mut buf) {
                        self.error(Side::Backup, e);
                        continue;
                    }
                    self.trace.ack_frames += 1;
                    if !self.cut_to_primary {
                        let d = self.link_delay();
                        Self::push_link(&mut self.to_primary, now + d, Bytes::from(buf));
                    }
                }
            }
        }

        // Arbiter requests and answers.
        for side in [Side::Primary, Side::Backup] {
            let up = match side {
                Side::Primary => self.primary_up,
                Side::Backup => self.backup_up,
            };
            if !up {
                continue;
            }
            let node = match side {
                Side::Primary => &mut self.primary,
                Side::Backup => &mut self.backup,
            };
            while let Some(cmd) = node.poll_command() {
                self.arbiter_calls
                    .push_back((now + self.cfg.arbiter_latency, side, cmd));
            }
        }
        let mut i = 0;
        while i < self.arbiter_calls.len() {
            if self.arbiter_calls[i].0 > now {
                i += 1;
                continue;
            }
            let Some((_, side, cmd)) = self.arbiter_calls.remove(i) else {
                break;
            };
            let Command::TestAndSet { pair, me, .. } = cmd;
            let up = match side {
                Side::Primary => self.primary_up,
                Side::Backup => self.backup_up,
            };
            if !up {
                continue;
            }
            let res = self.arbiter.test_and_set(pair, me);
            match side {
                Side::Primary => self.primary.on_arbiter(res, now),
                Side::Backup => self.backup.on_arbiter(res, now),
            }
        }
        while let Some((t, n)) = self.primary.poll_notice() {
            self.trace.notices.push((t, Side::Primary, n));
        }
        while let Some((t, n)) = self.backup.poll_notice() {
            self.trace.notices.push((t, Side::Backup, n));
        }
        self.trace.max_link_frames = self.trace.max_link_frames.max(self.to_backup.len());
    }

    fn transmit_primary(&mut self) {
        let now = self.now;
        loop {
            if self.to_backup.len() >= self.cfg.link_capacity {
                return;
            }
            let bytes = match self.held_p.take() {
                Some(b) => b,
                None => match self.primary.poll_transmit(now) {
                    Some(Transmit::Records(recs)) => {
                        let mut buf = Vec::new();
                        if let Err(e) = log_codec::encode_records(&recs, &mut buf) {
                            self.error(Side::Primary, e);
                            continue;
                        }
                        self.trace.records.extend(recs);
                        self.trace.log_frames += 1;
                        self.trace.log_bytes += buf.len() as u64;
                        Bytes::from(buf)
                    }
                    Some(Transmit::Ack(_)) | None => return,
                },
            };
            if self.cut_to_backup {
                continue;
            }
            let d = self.link_delay();
            Self::push_link(&mut self.to_backup, now + d, bytes);
        }
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
