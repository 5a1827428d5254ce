//! The replication engine: one side of a protected pair.
//!
//! A [`Node`] owns the guest machine (an [`EventSource`]) and the host half of its
//! devices (a [`World`]). It never reads a clock, opens a socket or spawns a thread:
//! the caller passes the time into every call, feeds it what arrived from the peer,
//! and carries out what it asks for:
//!
//! * [`Node::step`] executes one bounded slice of guest work (recording, replaying, or
//!   running live);
//! * [`Node::handle_records`] and [`Node::handle_ack`] take what the log channel
//!   delivered;
//! * [`Node::poll_transmit`] yields the next batch of records or acknowledgement to
//!   send;
//! * [`Node::poll_command`] yields requests for the outside (the arbiter's
//!   test-and-set), answered through [`Node::on_arbiter`];
//! * [`Node::poll_notice`] yields what happened, for timelines and logs.
//!
//! The mechanisms are in their own modules: the recorder (`recorder.rs`), the
//! replayer (`replayer.rs`) and go-live (`go_live.rs`).

use std::collections::{BTreeMap, VecDeque};

use crate::arbiter::{ArbiterError, Decision, NodeId, PairId};
use crate::event_source::{EventSource, SourceError};
use crate::failure_detector::{FailureDetector, Heartbeat};
use crate::live_clone::{CloneError, CloneFrame, CloneMsg};
use crate::log_end::LogEnd;
use crate::output_gate::OutputGate;
use crate::phase_state::{Duty, Recording, Replaying};
use crate::record::{Ack, AsyncEvent, IoId, IoRequest, Nanos, Output, Record};
use crate::world::World;
use crate::ExecPoint;

/// Engine configuration. Times are in nanoseconds, and points are the backend's
/// [`ExecPoint`] counts (ft-sim: instructions; ft-kvm: deterministic exits).
///
/// [`Config::default`] gives each field the value listed with it; check a pair's two
/// configurations with [`Config::validate_pair`] (one side's with
/// [`Config::validate`]) before building nodes.
///
/// # Each side needs its own [`NodeId`]
///
/// The default `node` is `NodeId(1)` for both sides, so at least one side must set
/// its own. The arbiter decides who goes on after a failure by
/// [`crate::Arbiter::test_and_set`] on the pair: the first claimant becomes the
/// holder, and any later claim *by the holder's id* is answered
/// [`Decision::Won`] again (so a side that asks again keeps its win). Two sides with
/// one id would therefore both win, and both would run live: the split brain the
/// arbiter exists to prevent. [`Config::validate_pair`] refuses equal ids. The id also
/// names the side in live-clone reservations and offers.
///
/// ```
/// use ft_core::{Config, EngineError, NodeId};
/// let primary = Config { node: NodeId(1), ..Config::default() };
/// let backup = Config { node: NodeId(2), ..Config::default() };
/// assert!(Config::validate_pair(&primary, &backup).is_ok());
/// assert!(matches!(
///     Config::validate_pair(&primary, &primary),
///     Err(EngineError::InvalidConfig { field: "node", .. })
/// ));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The protected pair and its generation (the arbiter's key). Default: vm 1,
    /// generation 1. Both sides must name the same pair; a new generation is a new
    /// arbitration (a replacement backup after a failover).
    pub pair: PairId,
    /// This side's identity. Default: `NodeId(1)`; the two sides must differ (see
    /// above).
    pub node: NodeId,
    /// Most execution points one step runs. It bounds how late an asynchronous event
    /// is delivered on the primary (events are polled and injected between slices),
    /// and how much work one step does. Default: 20,000. A backend whose points are
    /// coarse wants a smaller one: ft-node uses 16 for ft-kvm, whose points are
    /// exits.
    pub slice: u64,
    /// A state digest is logged every this many points (0: never); the backup
    /// compares its own at the same point. Default: 1,000,000: a divergence is caught
    /// within a million points, for one digest of the whole machine per million.
    pub digest_interval: u64,
    /// Heartbeat period, both ways. Default: 10 ms. Any traffic counts as a sign of
    /// life; a heartbeat record (primary) or an ack (backup) goes out when nothing
    /// else did for this long.
    pub heartbeat_interval: Nanos,
    /// Silence after which the peer is declared dead. Default: 100 ms, ten heartbeats.
    /// [`Config::validate`] requires at least twice the (peer's) heartbeat interval,
    /// so that one late heartbeat does not declare a healthy peer dead.
    pub peer_timeout: Nanos,
    /// Records the primary keeps before handing them to the channel; when full, the
    /// primary pauses ([`Blocked::OutboxFull`]). Default: 4096.
    pub outbox_capacity: usize,
    /// Records the backup buffers before replaying them; the runtime stops reading the
    /// channel when full. Default: 16,384. [`Config::validate_pair`] requires it to
    /// hold at least one of the primary's batches (`max_batch`).
    pub inbox_capacity: usize,
    /// Most records in one batch. Default: 256.
    pub max_batch: usize,
    /// Most time a record may wait for its batch to fill. An output waiting on the
    /// gate flushes at once, so this delays only records no output waits on.
    /// Default: 200 µs.
    pub batch_delay: Nanos,
    /// Replay lag beyond which the primary is paused ([`Blocked::Lagging`]); from half
    /// of it the primary runs with an eighth of its slice. Default: 50 ms. The lag is
    /// the age of the oldest record not yet replayed, so this also bounds, roughly,
    /// how much the backup has to replay before it can go live.
    pub max_lag: Nanos,
    /// First retry delay after the arbiter could not be reached; doubles per attempt.
    /// Default: 5 ms.
    pub arbiter_retry_min: Nanos,
    /// Longest retry delay. Default: 500 ms.
    pub arbiter_retry_max: Nanos,
    /// Enforce the output rule. Default: on. Only a test that checks the checker
    /// turns this off: without it, outputs leave before the backup has the records
    /// behind them.
    pub enforce_output_rule: bool,
}

/// The defaults listed on each field of [`Config`]. `node` is `NodeId(1)`: set a
/// different one on the other side.
impl Default for Config {
    fn default() -> Self {
        Config {
            pair: PairId {
                vm: 1,
                generation: 1,
            },
            node: NodeId(1),
            slice: 20_000,
            digest_interval: 1_000_000,
            heartbeat_interval: 10_000_000,
            peer_timeout: 100_000_000,
            outbox_capacity: 4096,
            inbox_capacity: 16_384,
            max_batch: 256,
            batch_delay: 200_000,
            max_lag: 50_000_000,
            arbiter_retry_min: 5_000_000,
            arbiter_retry_max: 500_000_000,
            enforce_output_rule: true,
        }
    }
}

/// The refusal of one configuration field.
fn bad(field: &'static str, reason: String) -> Result<()> {
    Err(EngineError::InvalidConfig { field, reason })
}

impl Config {
    /// Check one side's parameters, before a node is built with them. The timeout
    /// check assumes the peer sends heartbeats at the same interval, as when both
    /// sides share one configuration (ft-node, `PairSim`); for two different
    /// configurations use [`Config::validate_pair`].
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] naming the first field that is out of range: a
    /// zero heartbeat, slice, capacity, batch or retry delay; a peer timeout below
    /// twice the heartbeat (one late heartbeat would declare a healthy peer dead); a
    /// retry minimum above its maximum; a lag limit of zero.
    ///
    /// ```
    /// use ft_core::{Config, EngineError};
    /// assert!(Config::default().validate().is_ok());
    /// let bad = Config { heartbeat_interval: 0, ..Config::default() };
    /// assert!(matches!(
    ///     bad.validate(),
    ///     Err(EngineError::InvalidConfig { field: "heartbeat_interval", .. })
    /// ));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let positive: [(&'static str, u64); 8] = [
            ("slice", self.slice),
            ("heartbeat_interval", self.heartbeat_interval),
            ("outbox_capacity", self.outbox_capacity as u64),
            ("inbox_capacity", self.inbox_capacity as u64),
            ("max_batch", self.max_batch as u64),
            ("max_lag", self.max_lag),
            ("arbiter_retry_min", self.arbiter_retry_min),
            ("arbiter_retry_max", self.arbiter_retry_max),
        ];
        for (field, v) in positive {
            if v == 0 {
                return bad(field, "must be above 0".into());
            }
        }
        if self.peer_timeout < self.heartbeat_interval.saturating_mul(2) {
            return bad(
                "peer_timeout",
                format!(
                    "{} ns is below twice the heartbeat interval ({} ns): one late heartbeat would declare a healthy peer dead",
                    self.peer_timeout, self.heartbeat_interval
                ),
            );
        }
        if self.arbiter_retry_min > self.arbiter_retry_max {
            return bad(
                "arbiter_retry_min",
                format!(
                    "{} ns is above arbiter_retry_max ({} ns)",
                    self.arbiter_retry_min, self.arbiter_retry_max
                ),
            );
        }
        Ok(())
    }

    /// Check a primary's and a backup's configurations, each on its own and against
    /// each other: same pair, distinct node ids, each side's timeout at least twice
    /// the other's heartbeat, and the primary's batches no larger than the backup's
    /// inbox (a larger batch could never be taken).
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] naming the first field that is out of range.
    pub fn validate_pair(primary: &Config, backup: &Config) -> Result<()> {
        // Each side on its own, with the timeouts left to the cross checks below.
        let own = |c: &Config| Config {
            peer_timeout: c.peer_timeout.max(c.heartbeat_interval.saturating_mul(2)),
            ..c.clone()
        };
        own(primary).validate()?;
        own(backup).validate()?;
        if primary.pair != backup.pair {
            return bad(
                "pair",
                format!(
                    "the primary protects vm {} generation {}, the backup vm {} generation {}",
                    primary.pair.vm,
                    primary.pair.generation,
                    backup.pair.vm,
                    backup.pair.generation
                ),
            );
        }
        if primary.node == backup.node {
            return bad("node", format!("both sides are node {}", primary.node.0));
        }
        for (side, timeout, peer_heartbeat) in [
            ("primary", primary.peer_timeout, backup.heartbeat_interval),
            ("backup", backup.peer_timeout, primary.heartbeat_interval),
        ] {
            if timeout < peer_heartbeat.saturating_mul(2) {
                return bad(
                    "peer_timeout",
                    format!(
                        "the {side}'s {timeout} ns is below twice its peer's heartbeat interval ({peer_heartbeat} ns)"
                    ),
                );
            }
        }
        if primary.max_batch > backup.inbox_capacity {
            return bad(
                "max_batch",
                format!(
                    "the primary's batches of {} records do not fit the backup's inbox of {}",
                    primary.max_batch, backup.inbox_capacity
                ),
            );
        }
        Ok(())
    }
}

/// Which end of its log link a node is: the primary records and sends, the backup
/// receives and replays. A node keeps the role it was built with, except that a live
/// machine that starts a clone ([`Node::start_clone`]) becomes the primary of its new
/// pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Records and ships the log.
    Primary,
    /// Replays the log.
    Backup,
}

/// Why a node stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    /// The other side won the arbiter.
    LostArbitration {
        /// The winner.
        winner: NodeId,
    },
    /// Replay diverged from the log, or the log could not be applied.
    Diverged(String),
    /// The machine failed.
    SourceFailed(String),
    /// A clone target did not get a whole, checked state (the sender went silent or
    /// abandoned the clone, or what arrived was wrong); it never went live.
    CloneFailed(String),
    /// The engine was asked for a phase change its table does not have (a bug in
    /// ft, reported rather than run with).
    EngineBug(String),
}

/// Where a node is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Primary with a backup: executing, logging, gating outputs.
    Recording,
    /// Backup: replaying the log.
    Replaying,
    /// Backup that declared the primary dead: replaying everything it received.
    Draining,
    /// Waiting for the arbiter's verdict (primary or backup).
    Arbitrating,
    /// The only live side: executing with the real world, not logging.
    Live,
    /// A clone target receiving its state ([`Node::clone_target`]).
    Receiving,
    /// Stopped for good.
    Halted(HaltReason),
}

/// What the caller should do next after [`Node::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Work was done; call again.
    Progressed,
    /// The guest waits for an interrupt; nothing to do before `wake_at` (if known) or
    /// before something arrives.
    Idle {
        /// When the world expects its next event.
        wake_at: Option<Nanos>,
    },
    /// The node cannot execute now.
    Blocked(Blocked),
    /// The guest has ended with this exit code.
    Finished(u64),
    /// The node is halted.
    Halted,
}

/// Why a node cannot execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Primary: the outbox is full (the channel does not take records fast enough).
    OutboxFull,
    /// Primary: the backup lags too far behind.
    Lagging,
    /// Backup: no record to replay.
    InboxEmpty,
    /// Waiting for the arbiter.
    Arbitrating,
    /// A clone target waiting for the rest of its state.
    Receiving,
}

/// Something for the log channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Primary to backup: a batch of consecutive records.
    Records(Vec<Record>),
    /// Backup to primary: an acknowledgement (also its heartbeat).
    Ack(Ack),
    /// Either way: a message of a live clone ([`crate::live_clone`]).
    Clone(CloneFrame),
}

/// A request the caller must carry out and answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Call [`crate::Arbiter::test_and_set`] and pass the result to
    /// [`Node::on_arbiter`].
    TestAndSet {
        /// The pair generation.
        pair: PairId,
        /// This side.
        me: NodeId,
        /// 1 for the first attempt.
        attempt: u32,
    },
}

/// Something that happened, for timelines and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The peer was declared dead.
    PeerSuspected {
        /// When it was last heard from.
        last_heard: Nanos,
    },
    /// The backup finished replaying what it had received.
    Drained {
        /// Records replayed in total.
        replayed: u64,
        /// The point reached.
        point: ExecPoint,
    },
    /// The arbiter could not be reached; the node keeps waiting.
    ArbiterUnreachable {
        /// Attempt number.
        attempt: u32,
        /// What failed.
        error: String,
    },
    /// The arbiter chose this side.
    ArbiterWon {
        /// Fencing token.
        token: u64,
    },
    /// The arbiter chose the other side; this side halts.
    ArbiterLost {
        /// The winner.
        winner: NodeId,
    },
    /// The primary goes on alone and stops logging.
    WentAlone {
        /// Held outputs released at once.
        released: usize,
    },
    /// The backup is live.
    WentLive {
        /// I/O started but never completed, re-issued.
        reissued_io: usize,
        /// Outputs re-sent because the old primary may not have sent them.
        resent_outputs: usize,
        /// The point where it went live.
        point: ExecPoint,
    },
    /// Replay diverged: the loudest error there is.
    Diverged(String),
    /// The guest ended.
    GuestExited {
        /// Exit code.
        code: u64,
    },
    /// Sender: a live clone started.
    CloneStarted {
        /// The pair the clone will belong to.
        pair: PairId,
        /// Pages of memory to copy.
        pages: u64,
    },
    /// Sender: a pre-copy round was applied by the receiver.
    CloneRound {
        /// The round (0: the full copy).
        round: u32,
        /// Pages the guest dirtied meanwhile.
        dirty: u64,
    },
    /// Sender: the final pause, at the clone point. From here the node records for
    /// its new backup.
    ClonePaused {
        /// The new pair.
        pair: PairId,
        /// The clone point.
        point: ExecPoint,
        /// The machine's digest there.
        digest: u64,
        /// Rounds, the final one included.
        rounds: u32,
        /// Pages sent in the final pause.
        final_pages: u64,
        /// Pages sent in all.
        pages: u64,
        /// Bytes of page data and state sent.
        bytes: u64,
    },
    /// Sender: the new backup loaded the state and its digest matched.
    CloneComplete {
        /// The digest at the clone point.
        digest: u64,
    },
    /// Sender: the clone was abandoned; the machine goes on as it was.
    CloneAborted {
        /// Why.
        reason: String,
    },
    /// Receiver: the clone is whole and checked; replay starts at the clone point.
    CloneReceived {
        /// The pair it belongs to.
        pair: PairId,
        /// The clone point.
        point: ExecPoint,
        /// Its digest there (the sender's).
        digest: u64,
    },
    /// Receiver: the clone failed; this node halts.
    CloneFailed {
        /// Why.
        reason: String,
    },
}

/// Counters, for demos and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records produced (primary) or received (backup).
    pub records: u64,
    /// Records replayed (backup).
    pub replayed: u64,
    /// Batches handed to the channel.
    pub batches: u64,
    /// Acks received (primary) or sent (backup).
    pub acks: u64,
    /// Outputs produced by the guest.
    pub outputs: u64,
    /// Outputs released to the world.
    pub released: u64,
    /// Digests checked on replay.
    pub digests_checked: u64,
    /// Steps that could not run because of the lag throttle.
    pub throttled_steps: u64,
    /// Steps that ran slowed by the lag throttle.
    pub slowed_steps: u64,
    /// Steps that could not run because the outbox was full.
    pub outbox_full_steps: u64,
    /// Largest replay lag observed, in nanoseconds.
    pub max_lag: Nanos,
    /// Duplicate records ignored (a resent batch).
    pub duplicates: u64,
}

/// Errors of the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The backup's machine does not do what the log says the primary's did.
    #[error("REPLAY DIVERGENCE at record {seq} ({point}): {detail}")]
    Divergence {
        /// The record being replayed.
        seq: u64,
        /// Its execution point.
        point: ExecPoint,
        /// What differed.
        detail: String,
    },
    /// A record is missing from the stream (lost or reordered).
    #[error("log sequence gap: expected record {expected}, received {found}")]
    SequenceGap {
        /// The next record expected.
        expected: u64,
        /// The record received.
        found: u64,
    },
    /// A record's point lies behind its predecessor's.
    #[error("record {seq} at {point} lies behind the previous record's point {previous}")]
    OutOfOrder {
        /// The record.
        seq: u64,
        /// Its point.
        point: ExecPoint,
        /// The previous record's point.
        previous: ExecPoint,
    },
    /// More records arrived than the inbox holds; the runtime must check
    /// [`Node::inbox_space`] before reading the channel.
    #[error("backup inbox full: {incoming} records arrived with room for {room}")]
    InboxFull {
        /// Records offered.
        incoming: usize,
        /// Room left.
        room: usize,
    },
    /// An acknowledgement for records never produced.
    #[error("ack {ack:?} covers records never produced (last is {last})")]
    BogusAck {
        /// The ack.
        ack: Ack,
        /// The last record produced.
        last: u64,
    },
    /// A configuration parameter is out of range ([`Config::validate`]).
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig {
        /// The [`Config`] field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The call does not fit this side's role.
    #[error("{0} is not valid for a {1:?}")]
    WrongRole(&'static str, Role),
    /// The machine failed.
    #[error("backend: {0}")]
    Source(#[from] SourceError),
    /// A live clone failed or was misused.
    #[error("live clone: {0}")]
    Clone(#[from] CloneError),
}

/// Result alias of this module.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// An item held by the output gate.
#[derive(Debug, Clone)]
pub(crate) enum Gated {
    Output(Output),
    Write(IoRequest),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Arbitration {
    pub(crate) attempts: u32,
    pub(crate) next_try: Nanos,
    pub(crate) in_flight: bool,
}

/// One side of a protected pair. See the module docs.
pub struct Node<S, W> {
    pub(crate) cfg: Config,
    pub(crate) role: Role,
    pub(crate) phase: Phase,
    /// What the phase owns ([`crate::phase_state`]); it changes with the phase, in
    /// [`Node::enter`] only.
    pub(crate) duty: Duty,
    pub(crate) source: S,
    pub(crate) world: W,
    /// Primary: the next record's seq. Backup: the next record expected.
    pub(crate) next_seq: u64,
    /// Primary: the last record the backup reported replayed. Backup: the last record
    /// replayed.
    pub(crate) replayed: u64,
    /// Primary: the last record the backup acknowledged.
    pub(crate) acked: u64,
    /// The log stream's clean end (primary: records shipped; backup: records taken).
    pub(crate) end: LogEnd,
    pub(crate) next_output: u64,
    pub(crate) next_digest: u64,
    pub(crate) exited: Option<u64>,
    /// I/O the machine started whose completion has not been delivered.
    pub(crate) pending_io: BTreeMap<IoId, IoRequest>,
    /// The guest has read its disk locally: the backup reads it itself on replay.
    pub(crate) local_reads: bool,
    pub(crate) detector: FailureDetector,
    pub(crate) heartbeat: Heartbeat,
    /// While arbitrating: the test-and-set's attempts.
    pub(crate) arbitration: Option<Arbitration>,
    pub(crate) commands: VecDeque<Command>,
    pub(crate) notices: VecDeque<(Nanos, Notice)>,
    pub(crate) async_buf: Vec<AsyncEvent>,
    pub(crate) stats: Stats,
    /// Clone messages to send before anything else.
    pub(crate) clone_queue: VecDeque<CloneMsg>,
    /// The next clone message's number, out and in.
    pub(crate) clone_tx: u64,
    pub(crate) clone_rx: u64,
}

impl<S: EventSource, W: World> Node<S, W> {
    /// A primary that records `source` and ships the log, starting at `now`.
    pub fn primary(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        Self::recorder(cfg, source, world, now)
    }

    /// A primary in `Recording`, with a fresh recording.
    fn recorder(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        let duty = Duty::Record(Recording::new(&cfg, now, 0, 0));
        let (role, phase) = (Role::Primary, Phase::Recording);
        Self::new(role, phase, duty, cfg, source, world, now)
    }

    /// A backup that replays the log into `source`, which must start in the same state
    /// as the primary's machine.
    pub fn backup(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        let duty = Duty::Replay(Replaying::new(source.point(), 0, 0));
        let (role, phase) = (Role::Backup, Phase::Replaying);
        Self::new(role, phase, duty, cfg, source, world, now)
    }

    /// A machine running alone, unprotected: no log, no gate. The baseline for
    /// overhead measurements, and what a primary becomes after its backup died.
    pub fn unprotected(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        let duty = Duty::Live { clone_out: None };
        Self::new(Role::Primary, Phase::Live, duty, cfg, source, world, now)
    }

    /// A primary that starts alone, with no backup yet, and takes one later by live
    /// clone ([`Node::start_clone`]).
    ///
    /// It is fenced like any side that runs unprotected: it first asks the arbiter
    /// for `cfg.pair` ([`Command::TestAndSet`], in [`Phase::Arbitrating`]) and
    /// executes nothing before the verdict. A win hands its fencing token to the world
    /// ([`World::fence`]) and the node goes live alone ([`Notice::WentAlone`], nothing
    /// held to release); a loss means another node is the live member of that
    /// generation, and it halts ([`HaltReason::LostArbitration`]) without having run
    /// or emitted anything. Unlike [`Node::unprotected`], two nodes started alone for
    /// the same pair can never both run.
    pub fn alone(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        let mut n = Self::recorder(cfg, source, world, now);
        n.start_arbitration(now);
        n
    }

    pub(crate) fn new(
        role: Role,
        phase: Phase,
        duty: Duty,
        cfg: Config,
        source: S,
        world: W,
        now: Nanos,
    ) -> Self {
        let start = source.point();
        let next_digest = next_multiple(start.count, cfg.digest_interval);
        Node {
            detector: FailureDetector::new(cfg.peer_timeout, now),
            heartbeat: Heartbeat::new(cfg.heartbeat_interval, now),
            cfg,
            role,
            phase,
            duty,
            source,
            world,
            next_seq: 1,
            replayed: 0,
            acked: 0,
            end: LogEnd::default(),
            next_output: 0,
            next_digest,
            exited: None,
            pending_io: BTreeMap::new(),
            local_reads: false,
            arbitration: None,
            commands: VecDeque::new(),
            notices: VecDeque::new(),
            async_buf: Vec::new(),
            stats: Stats::default(),
            clone_queue: VecDeque::new(),
            clone_tx: 0,
            clone_rx: 0,
        }
    }

    /// The primary's end of the log, while it records (or arbitrates after).
    pub(crate) fn recording(&self) -> Option<&Recording> {
        match &self.duty {
            Duty::Record(r) => Some(r),
            _ => None,
        }
    }

    /// The backup's end of the log, while it replays, drains (or arbitrates after).
    pub(crate) fn replaying(&self) -> Option<&Replaying> {
        match &self.duty {
            Duty::Replay(r) => Some(r),
            _ => None,
        }
    }

    /// The role this node plays on its link ([`Role`]).
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Whether this side is the only live one.
    pub fn is_live(&self) -> bool {
        self.phase == Phase::Live
    }

    /// Whether this side halted for good.
    pub fn is_halted(&self) -> bool {
        matches!(self.phase, Phase::Halted(_))
    }

    /// The guest's exit code, once it ended.
    pub fn exit_code(&self) -> Option<u64> {
        self.exited
    }

    /// The machine.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The machine, mutably (for digests in tests; do not run it behind the engine's
    /// back).
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// The world.
    pub fn world(&self) -> &W {
        &self.world
    }

    /// The world, mutably (to feed it host events).
    pub fn world_mut(&mut self) -> &mut W {
        &mut self.world
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Records produced (primary) or received (backup) so far: the last sequence
    /// number.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Backup: the last record replayed. Primary: the last record the backup reported
    /// replayed.
    pub fn replayed_seq(&self) -> u64 {
        self.replayed
    }

    /// Primary: records acknowledged by the backup.
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Outputs still held by the gate (a primary's; no other phase holds any).
    pub fn held_outputs(&self) -> usize {
        self.recording().map_or(0, |r| r.gate.pending())
    }

    /// Records waiting in the outbox (primary) or inbox (backup).
    pub fn buffered_records(&self) -> usize {
        match &self.duty {
            Duty::Record(r) => r.outbox.len(),
            Duty::Replay(r) => r.inbox.len(),
            _ => 0,
        }
    }

    /// Backup: how many more records the inbox takes now.
    pub fn inbox_space(&self) -> usize {
        let used = self.replaying().map_or(0, |r| r.inbox.len());
        self.cfg.inbox_capacity.saturating_sub(used)
    }

    /// Whether a backup takes more from its link in this turn: room in the inbox, and,
    /// while it receives a clone, pages left in the step's budget.
    pub fn takes_more(&self) -> bool {
        match &self.duty {
            Duty::Receive(rx) => rx.pages_this_step < crate::live_clone::RECEIVE_PAGES_PER_STEP,
            _ => self.inbox_space() > 0,
        }
    }

    /// The backup's replay lag as the primary measures it.
    pub fn lag(&self, now: Nanos) -> Nanos {
        self.recording().map_or(0, |r| r.lag.lag(now))
    }

    /// Whether this side is done, with the guest's exit code: the guest ended and
    /// nothing is left to do.
    ///
    /// * Live (alone, unprotected, or a backup that went live): once the guest ended.
    /// * A primary with a backup: once no output is held, no record waits in the
    ///   outbox, and the backup acknowledged the log's clean end (the guest's `Halt`,
    ///   then a watermark covering every output), so it will not go live when this
    ///   side leaves.
    /// * A replaying backup: once it replayed everything up to the log's clean end.
    ///
    /// A runtime also holding an item the channel refused is not done until it
    /// went out.
    pub fn finished(&self) -> Option<u64> {
        let code = self.exited?;
        let done = match (&self.phase, &self.duty) {
            (Phase::Live, _) => true,
            (Phase::Halted(_), _) => false,
            (_, Duty::Record(r)) => {
                r.gate.pending() == 0
                    && r.outbox.is_empty()
                    && self.end.clean_at().is_some_and(|s| r.gate.acked() >= s)
            }
            (Phase::Replaying, Duty::Replay(r)) => {
                r.inbox.is_empty() && self.end.clean_at().is_some()
            }
            _ => false,
        };
        done.then_some(code)
    }

    /// Whether the peer may go away now without that being a failure: the log's clean
    /// end went through (a primary: acknowledged; a backup: received).
    pub fn peer_may_leave(&self) -> bool {
        match self.role {
            Role::Primary => self.finished().is_some(),
            Role::Backup => self.end.clean_at().is_some(),
        }
    }

    /// The next request for the outside.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next notice, with the time it happened.
    pub fn poll_notice(&mut self) -> Option<(Nanos, Notice)> {
        self.notices.pop_front()
    }

    /// The earliest time at which the node has something to do without new input:
    /// a heartbeat, a batch deadline, a failure-detection deadline, an arbiter retry, a
    /// world event.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let mut t: Option<Nanos> = None;
        let mut take = |x: Nanos| t = Some(t.map_or(x, |y| y.min(x)));
        match self.phase {
            Phase::Recording => {
                take(self.heartbeat.deadline());
                take(self.detector.deadline());
                if let Some(r) = self.recording().filter(|r| !r.outbox.is_empty()) {
                    take(r.outbox_since.saturating_add(self.cfg.batch_delay));
                }
            }
            Phase::Replaying | Phase::Receiving => {
                take(self.heartbeat.deadline());
                take(self.detector.deadline());
            }
            Phase::Live if self.cloning() => {
                take(self.heartbeat.deadline());
                take(self.detector.deadline());
            }
            Phase::Arbitrating => {
                if let Some(a) = &self.arbitration {
                    if !a.in_flight {
                        take(a.next_try);
                    }
                }
            }
            Phase::Draining | Phase::Halted(_) | Phase::Live => {}
        }
        if matches!(self.phase, Phase::Recording | Phase::Live) && self.exited.is_none() {
            if let Some(d) = self.world.next_deadline() {
                take(d);
            }
        }
        t
    }

    /// Primary: the backup acknowledged records (and reported its replay progress).
    ///
    /// # Errors
    ///
    /// [`EngineError::WrongRole`] on a backup, and [`EngineError::BogusAck`] for an
    /// acknowledgement of records never sent (or of more replayed than received);
    /// nothing of a refused ack is taken.
    pub fn handle_ack(&mut self, ack: Ack, now: Nanos) -> Result<()> {
        if self.role != Role::Primary {
            return Err(EngineError::WrongRole("handle_ack", self.role));
        }
        if ack.received > self.last_seq() || ack.replayed > ack.received {
            return Err(EngineError::BogusAck {
                ack,
                last: self.last_seq(),
            });
        }
        let Duty::Record(r) = &mut self.duty else {
            return Ok(());
        };
        self.detector.heard(now);
        self.stats.acks += 1;
        r.gate.on_ack(ack.received, ack.replayed);
        r.lag.replayed(ack.replayed);
        self.replayed = self.replayed.max(ack.replayed);
        self.acked = self.acked.max(ack.received);
        self.release_gated(now);
        Ok(())
    }

    /// Backup: records arrived. Duplicates of records already received are ignored; a
    /// gap or a point going backwards is an error and nothing of the batch is taken.
    ///
    /// # Errors
    ///
    /// [`EngineError::WrongRole`] on a primary, a clone error on a clone target still
    /// receiving its state, [`EngineError::SequenceGap`], [`EngineError::OutOfOrder`],
    /// and [`EngineError::InboxFull`] when the batch's new records do not fit the
    /// inbox ([`Node::inbox_space`]). A refused batch leaves the node as it was.
    pub fn handle_records(&mut self, records: Vec<Record>, now: Nanos) -> Result<()> {
        if self.role != Role::Backup {
            return Err(EngineError::WrongRole("handle_records", self.role));
        }
        if self.phase == Phase::Receiving {
            return Err(CloneError::Unexpected {
                msg: "records",
                state: "receiving a clone",
            }
            .into());
        }
        let room = self.inbox_space();
        let (Phase::Replaying, Duty::Replay(rep)) = (&self.phase, &mut self.duty) else {
            // Once the primary is suspected, nothing new is taken or acknowledged: the
            // primary can then release no output that this side has not replayed.
            return Ok(());
        };
        let mut expected = self.next_seq;
        let mut previous = rep.last_point;
        let mut fresh = 0usize;
        for r in &records {
            if r.seq < expected && fresh == 0 {
                continue;
            }
            if r.seq != expected {
                return Err(EngineError::SequenceGap {
                    expected,
                    found: r.seq,
                });
            }
            if r.point < previous {
                return Err(EngineError::OutOfOrder {
                    seq: r.seq,
                    point: r.point,
                    previous,
                });
            }
            expected += 1;
            previous = r.point;
            fresh += 1;
        }
        if fresh > room {
            return Err(EngineError::InboxFull {
                incoming: fresh,
                room,
            });
        }
        self.detector.heard(now);
        self.stats.duplicates += (records.len() - fresh) as u64;
        for r in records {
            if r.seq >= self.next_seq {
                self.next_seq = r.seq + 1;
                rep.last_point = r.point;
                self.stats.records += 1;
                self.end.observe(&r);
                rep.inbox.push_back(r);
            }
        }
        if fresh > 0 {
            rep.ack_due = true;
        }
        Ok(())
    }

    /// The next thing to send to the peer, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Nanos) -> Option<Transmit> {
        self.check_peer(now);
        if let Some(t) = self.poll_clone_transmit(now) {
            return Some(t);
        }
        // Clone messages held back for the next step: nothing may overtake them (the
        // records after a final pause follow its final state).
        if !self.clone_queue.is_empty() {
            return None;
        }
        if self.is_halted() {
            return None;
        }
        match self.role {
            Role::Primary => self.poll_transmit_records(now),
            Role::Backup => {
                let (Phase::Replaying, Duty::Replay(rep)) = (&self.phase, &mut self.duty) else {
                    return None;
                };
                // Ack what arrived; also when replay caught up with what arrived, so
                // the primary's lag measure (and replay-gated writes) move on without
                // waiting for the next heartbeat.
                let caught_up = rep.inbox.is_empty() && self.replayed > rep.acked_replayed;
                if rep.ack_due || caught_up || self.heartbeat.due(now) {
                    rep.ack_due = false;
                    rep.acked_replayed = self.replayed;
                    self.heartbeat.sent(now);
                    self.stats.acks += 1;
                    return Some(Transmit::Ack(Ack {
                        received: self.last_seq(),
                        replayed: self.replayed,
                    }));
                }
                None
            }
        }
    }

    /// Execute one bounded slice of work at `now`.
    ///
    /// # Errors
    ///
    /// The machine's error ([`EngineError::Source`]) or a divergence of replay from
    /// the log ([`EngineError::Divergence`]). Either halts the node before it is returned: a machine that failed
    /// while running for real with [`HaltReason::SourceFailed`], one that could not
    /// apply the log with [`HaltReason::Diverged`]. Later steps return
    /// [`StepOutcome::Halted`].
    pub fn step(&mut self, now: Nanos) -> Result<StepOutcome> {
        self.check_peer(now);
        let res = match self.phase {
            Phase::Halted(_) => return Ok(StepOutcome::Halted),
            Phase::Arbitrating => {
                self.issue_test_and_set(now);
                return Ok(StepOutcome::Blocked(Blocked::Arbitrating));
            }
            Phase::Receiving => {
                if let Duty::Receive(rx) = &mut self.duty {
                    rx.pages_this_step = 0;
                }
                return Ok(StepOutcome::Blocked(Blocked::Receiving));
            }
            // The final pause is a step of its own, with no guest slice: the guest
            // runs again at the next step, while the final messages go to the link,
            // at most `FINAL_PAGES_PER_STEP` pages a step and ahead of any record.
            Phase::Live if self.clone_final_due() => {
                self.clone_pause(now);
                Ok(StepOutcome::Progressed)
            }
            Phase::Recording | Phase::Live => {
                self.clone_step_begins();
                self.record_step(now)
            }
            Phase::Replaying | Phase::Draining => self.replay_step(now),
        };
        match res {
            Ok(o) => Ok(o),
            Err(e) => {
                // The halt reason follows the phase: a machine that fails while it
                // runs for real (recording, or live: a backup that went live
                // included) failed; one that fails while it applies the log could
                // not replay it.
                let reason = match (&e, &self.phase) {
                    (EngineError::Source(s), Phase::Recording | Phase::Live) => {
                        HaltReason::SourceFailed(s.to_string())
                    }
                    _ => HaltReason::Diverged(e.to_string()),
                };
                if let HaltReason::Diverged(d) = &reason {
                    self.notices.push_back((now, Notice::Diverged(d.clone())));
                }
                self.halt(reason, now);
                Err(e)
            }
        }
    }

    /// The arbiter's answer to [`Command::TestAndSet`].
    pub fn on_arbiter(&mut self, result: std::result::Result<Decision, ArbiterError>, now: Nanos) {
        if self.phase != Phase::Arbitrating {
            return;
        }
        let Some(arb) = self.arbitration.as_mut() else {
            return;
        };
        arb.in_flight = false;
        match result {
            Ok(Decision::Won { token }) => {
                self.notices.push_back((now, Notice::ArbiterWon { token }));
                self.world.fence(token);
                match self.role {
                    Role::Primary => self.go_alone(now),
                    Role::Backup => self.go_live(now),
                }
            }
            Ok(Decision::Lost { holder }) => {
                self.notices
                    .push_back((now, Notice::ArbiterLost { winner: holder }));
                self.halt(HaltReason::LostArbitration { winner: holder }, now);
            }
            Err(e) => {
                let shift = arb.attempts.saturating_sub(1).min(20);
                let delay = self
                    .cfg
                    .arbiter_retry_min
                    .saturating_mul(1u64 << shift)
                    .min(self.cfg.arbiter_retry_max);
                arb.next_try = now.saturating_add(delay);
                let attempt = arb.attempts;
                self.notices.push_back((
                    now,
                    Notice::ArbiterUnreachable {
                        attempt,
                        error: e.to_string(),
                    },
                ));
            }
        }
    }

    /// Declare the peer dead now, without waiting for the timeout (a runtime that saw
    /// the connection drop may call this; the arbiter still decides).
    pub fn peer_failed(&mut self, now: Nanos) {
        let last_heard = self.detector.last_heard();
        match self.phase {
            Phase::Recording => {
                self.notices
                    .push_back((now, Notice::PeerSuspected { last_heard }));
                self.start_arbitration(now);
            }
            Phase::Replaying => {
                self.notices
                    .push_back((now, Notice::PeerSuspected { last_heard }));
                self.enter(Phase::Draining, now);
            }
            Phase::Receiving => self.clone_peer_lost("the link failed", now),
            Phase::Live if self.cloning() => self.clone_peer_lost("the link failed", now),
            _ => {}
        }
    }

    /// The peer, if heard at or after `since`, counts as heard until `until` (the
    /// driver: the end of the turn's inbound work).
    pub(crate) fn heard_through(&mut self, since: Nanos, until: Nanos) {
        if self.detector.last_heard() >= since {
            self.detector.heard(until);
        }
    }

    fn check_peer(&mut self, now: Nanos) {
        // A backup whose inbox has no room for a whole batch is holding up the link
        // itself: what the primary sends waits for it, so that silence is not the
        // primary's. It counts from when the backup has room again. Otherwise a slow
        // backup would declare a healthy primary dead (found by the model test, seed
        // 0x5f9310). A dead primary is still found: once the backlog is replayed down
        // to a batch's room, after one more peer timeout.
        if self.phase == Phase::Replaying && self.inbox_space() < self.cfg.max_batch.max(1) {
            self.detector.heard(now);
        }
        let watched = match self.phase {
            Phase::Recording | Phase::Replaying | Phase::Receiving => true,
            Phase::Live => self.cloning(),
            _ => false,
        };
        if watched && self.detector.suspects(now) {
            match self.phase {
                Phase::Recording | Phase::Replaying => self.peer_failed(now),
                _ => self.clone_peer_lost("silent past the peer timeout", now),
            }
        }
    }

    pub(crate) fn start_arbitration(&mut self, now: Nanos) {
        if !self.enter(Phase::Arbitrating, now) {
            return;
        }
        self.arbitration = Some(Arbitration {
            attempts: 0,
            next_try: now,
            in_flight: false,
        });
        self.issue_test_and_set(now);
    }

    fn issue_test_and_set(&mut self, now: Nanos) {
        if let Some(arb) = self.arbitration.as_mut() {
            if !arb.in_flight && now >= arb.next_try {
                arb.in_flight = true;
                arb.attempts += 1;
                self.commands.push_back(Command::TestAndSet {
                    pair: self.cfg.pair,
                    me: self.cfg.node,
                    attempt: arb.attempts,
                });
            }
        }
    }

    /// Release what the primary's gate lets go.
    pub(crate) fn release_gated(&mut self, now: Nanos) {
        if let Duty::Record(r) = &mut self.duty {
            release(&mut r.gate, &mut self.world, &mut self.stats, now);
        }
    }
}

/// Release what `gate` lets go into `world`.
pub(crate) fn release<W: World>(
    gate: &mut OutputGate<Gated>,
    world: &mut W,
    stats: &mut Stats,
    now: Nanos,
) {
    while let Some(item) = gate.pop_released() {
        match item {
            Gated::Output(o) => {
                stats.released += 1;
                world.emit(&o, false, now);
            }
            Gated::Write(req) => world.start_io(&req, now),
        }
    }
}

pub(crate) fn next_multiple(count: u64, interval: u64) -> u64 {
    match count.checked_div(interval) {
        None => u64::MAX,
        Some(q) => q.saturating_add(1).saturating_mul(interval),
    }
}
