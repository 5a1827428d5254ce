//! The one driver loop.
//!
//! A [`Node`] is sans-I/O: something must read a clock, move frames between it and its
//! link, carry out its arbiter requests and decide when it is done. [`Driver`] is that
//! something, written once. The threaded runtime (`ft-transport`), the deterministic
//! pair simulation (`ft-sim`) and ft-kvm's in-process pair all call
//! [`Driver::turn`], so a simulation exercises exactly the loop that production runs,
//! in the way madsim and turmoil do. What differs between them is what the loop is
//! generic over: the [`Clock`] (the host's, or virtual time), the [`Link`] (TCP, an
//! in-memory channel, a [`VirtualWire`]) and the [`ArbiterPort`] (a blocking call, or a
//! simulated latency). Sleeping between turns, crashing and stopping belong to the
//! caller.
//!
//! One turn:
//!
//! 1. take what arrived: a primary every acknowledgement (at most
//!    [`DriverConfig::max_inbound_per_turn`]); a backup batches while its inbox has
//!    room (a batch that does not fit waits, whole, for the next turn);
//! 2. [`Node::step`];
//! 3. a backup that stopped replaying ends its log stream ([`Link::end_inbound`]: a
//!    partial frame left in it is reported, not dropped) and reads nothing more;
//! 4. hand [`Node::poll_transmit`] to the link, in order; an item the link refuses
//!    with [`ChannelError::Full`] is kept and offered first next turn, never dropped or
//!    reordered;
//! 5. pass [`Node::poll_command`] to the arbiter, and its answers back;
//! 6. report: [`Turn::Done`] when the node halted or [`Node::finished`], else
//!    [`Turn::Idle`] (with the deadline to sleep to) when nothing could run and
//!    nothing arrived, else [`Turn::Busy`].
//!
//! A link that fails (corruption, a frame of the wrong kind, a disconnect) is broken
//! for good: the error is kept ([`Driver::take_errors`]), nothing more is read or sent
//! on it, and the node's failure detector fires in due time. A disconnect after the
//! log's clean end ([`Node::peer_may_leave`]) is no error at all. A well-formed frame
//! the engine refuses (a sequence gap, records behind their predecessor, an ack for
//! records never sent) is refused alone, with its error kept: nothing of it is taken,
//! and the link goes on.
//!
//! ```
//! use ft_core::driver::{Driver, DriverConfig, Immediate, Turn, VirtualWire, WireConfig};
//! use ft_core::{Config, InProcessArbiter, Node, NodeId};
//! # use ft_core::{EventSource, ExecPoint, SourceResult, Stop, World, Bytes};
//! # use ft_core::{AsyncEvent, InputRequest, IoRequest, Nanos, Output};
//! # struct Halts(u64);
//! # impl EventSource for Halts {
//! #     fn point(&self) -> ExecPoint { ExecPoint::at(self.0) }
//! #     fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
//! #         // The instruction from 9 to 10 halts the guest.
//! #         if until.count < 10 { self.0 = until.count.max(self.0); return Ok(Stop::Reached); }
//! #         self.0 = 10; Ok(Stop::Halted(0))
//! #     }
//! #     fn supply_input(&mut self, _: &[u8]) -> SourceResult<()> { Ok(()) }
//! #     fn inject(&mut self, _: &AsyncEvent) -> SourceResult<()> { Ok(()) }
//! #     fn digest(&mut self) -> SourceResult<u64> { Ok(self.0) }
//! #     fn snapshot(&self) -> SourceResult<Vec<u8>> { Ok(self.0.to_le_bytes().to_vec()) }
//! #     fn restore(&mut self, _: &[u8]) -> SourceResult<()> { Ok(()) }
//! # }
//! # // A disk-less world: the go-live methods keep their defaults.
//! # struct Quiet;
//! # impl World for Quiet {
//! #     fn input(&mut self, _: &InputRequest, _: Nanos) -> Bytes { Bytes::new() }
//! #     fn poll(&mut self, _: Nanos, _: &mut Vec<AsyncEvent>) {}
//! #     fn next_deadline(&self) -> Option<Nanos> { None }
//! #     fn emit(&mut self, _: &Output, _: bool, _: Nanos) {}
//! #     fn start_io(&mut self, _: &IoRequest, _: Nanos) { unreachable!("no disk") }
//! #     fn apply_private_write(&mut self, _: &IoRequest) { unreachable!("no disk") }
//! #     fn read_local(&mut self, _: &IoRequest) -> Bytes { unreachable!("no disk") }
//! # }
//! // A primary and a backup of a guest that halts at point 10, on virtual time.
//! let pcfg = Config { node: NodeId(1), ..Config::default() };
//! let bcfg = Config { node: NodeId(2), ..Config::default() };
//! let mut primary = Node::primary(pcfg, Halts(0), Quiet, 0);
//! let mut backup = Node::backup(bcfg, Halts(0), Quiet, 0);
//! let mut wire = VirtualWire::new(WireConfig::default());
//! let arbiter = InProcessArbiter::new();
//! let (mut pa, mut ba) = (Immediate::new(&arbiter), Immediate::new(&arbiter));
//! let (mut pd, mut bd) = (Driver::new(DriverConfig::default()), Driver::new(DriverConfig::default()));
//! let (mut p_done, mut b_done) = (false, false);
//! let mut now = 0;
//! while !(p_done && b_done) && now < 1_000_000_000 {
//!     now += 100_000;
//!     p_done |= matches!(pd.turn(&mut primary, &now, &mut wire.primary_end(now), &mut pa), Turn::Done(_));
//!     b_done |= matches!(bd.turn(&mut backup, &now, &mut wire.backup_end(now), &mut ba), Turn::Done(_));
//! }
//! assert_eq!(primary.finished(), Some(0));
//! assert_eq!(backup.finished(), Some(0));
//! assert_eq!(backup.replayed_seq(), primary.last_seq());
//! ```

mod arbiter_port;
mod link;
mod virtual_wire;

pub use arbiter_port::{ArbiterPort, Delayed, Immediate};
pub use link::{BackupLink, Clock, Link, NoLink, PrimaryLink};
pub use virtual_wire::{VirtualWire, WireConfig, WireEnd, WireStats};

use crate::event_source::EventSource;
use crate::log_channel::ChannelError;
use crate::log_codec::Frame;
use crate::node::{EngineError, HaltReason, Node, Phase, Role, StepOutcome, Transmit};
use crate::record::{Nanos, Record};
use crate::world::World;

/// What went wrong in a turn. Each is kept, in order, for [`Driver::take_errors`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The link failed; it is no longer used. (Its messages name the log channel.)
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The engine rejected what arrived, or failed while stepping.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// The peer sent a frame this side never takes (records to a primary, an
    /// acknowledgement to a backup): the stream cannot be trusted.
    #[error("a {found} frame arrived at the {side}'s end of the log link")]
    UnexpectedFrame {
        /// The side that received it.
        side: &'static str,
        /// What arrived.
        found: &'static str,
    },
}

/// How a driver behaves.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Declare the peer dead as soon as the link reports
    /// [`ChannelError::Disconnected`] ([`Node::peer_failed`]); otherwise wait for the
    /// failure detector's timeout.
    pub disconnect_is_failure: bool,
    /// Most frames taken in one turn, so a flood cannot starve the machine.
    pub max_inbound_per_turn: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            disconnect_is_failure: true,
            max_inbound_per_turn: 1024,
        }
    }
}

/// Why a node is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The node halted for good.
    Halted(HaltReason),
    /// The guest ended with this code and this side has nothing left to do
    /// ([`Node::finished`]).
    Finished(u64),
}

/// What one turn came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Work was done or something arrived: turn again.
    Busy,
    /// Nothing could run and nothing arrived. A threaded caller may sleep until
    /// `until` (or a short poll interval when `None`); a simulation moves time on.
    Idle {
        /// The next deadline the node or its world has.
        until: Option<Nanos>,
    },
    /// The node is done; further turns change nothing.
    Done(Exit),
}

/// The loop state around one [`Node`]. See the module docs.
#[derive(Debug)]
pub struct Driver {
    cfg: DriverConfig,
    /// An item the link refused; offered first next turn.
    pending: Option<Transmit>,
    /// A batch that did not fit the backup's inbox yet.
    stash: Option<Vec<Record>>,
    link_up: bool,
    inbound_ended: bool,
    errors: Vec<DriverError>,
    /// A deadline already past that nothing consumed (a world deadline after the guest
    /// ended): not a reason to turn again at once.
    stale_deadline: Option<Nanos>,
    turns: u64,
}

impl Default for Driver {
    /// [`Driver::new`] with [`DriverConfig::default`].
    fn default() -> Self {
        Driver::new(DriverConfig::default())
    }
}

impl Driver {
    /// A driver for a node over a fresh link.
    pub fn new(cfg: DriverConfig) -> Driver {
        Driver {
            cfg,
            pending: None,
            stash: None,
            link_up: true,
            inbound_ended: false,
            errors: Vec::new(),
            stale_deadline: None,
            turns: 0,
        }
    }

    /// Turns taken so far.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Whether the link is still used (no error broke it).
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Whether an item the link refused still waits to go out.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The errors met since the last call, in order.
    pub fn take_errors(&mut self) -> Vec<DriverError> {
        std::mem::take(&mut self.errors)
    }

    /// One turn of the loop at the clock's time. See the module docs.
    pub fn turn<S, W, C, L, A>(
        &mut self,
        node: &mut Node<S, W>,
        clock: &C,
        link: &mut L,
        arbiter: &mut A,
    ) -> Turn
    where
        S: EventSource,
        W: World,
        C: Clock + ?Sized,
        L: Link + ?Sized,
        A: ArbiterPort + ?Sized,
    {
        self.turns += 1;
        let now = clock.now();

        // 1. Inbound.
        let mut arrived = false;
        if self.link_up && !self.inbound_ended {
            match self.take_inbound(node, link, now) {
                Ok(a) => arrived = a,
                Err(e) => self.link_down(node, e, now),
            }
        }
        if arrived {
            // What the node heard from its peer in this turn it heard until it had
            // taken it all: time spent applying a long backlog (pages of a clone, a
            // burst of records) is this side's, not the peer's silence.
            node.heard_through(now, clock.now());
        }

        // 2. Execute.
        let outcome = match node.step(now) {
            Ok(o) => o,
            Err(e) => {
                self.errors.push(e.into());
                StepOutcome::Halted
            }
        };

        // 3. The end of a backup's log stream.
        if node.role() == Role::Backup
            && !self.inbound_ended
            && !matches!(node.phase(), Phase::Replaying | Phase::Receiving)
        {
            self.inbound_ended = true;
            self.stash = None;
            if self.link_up {
                if let Err(e) = link.end_inbound() {
                    self.errors.push(e.into());
                }
            }
        }

        // 4. Outbound, in order. A live node has no peer any more (unless it sends a
        // clone): what still waited for the link is moot.
        if node.is_live() && !node.cloning() {
            self.pending = None;
        }
        loop {
            let Some(t) = self.pending.take().or_else(|| node.poll_transmit(now)) else {
                break;
            };
            if !self.link_up {
                // The link is broken: what would go on it is lost.
                continue;
            }
            match link.send(&t) {
                Ok(()) => {}
                Err(ChannelError::Full) => {
                    self.pending = Some(t);
                    break;
                }
                Err(e) => self.link_down(node, e.into(), now),
            }
        }

        // 5. The arbiter.
        while let Some(cmd) = node.poll_command() {
            arbiter.request(cmd, now);
        }
        loop {
            let t = clock.now();
            let Some(answer) = arbiter.poll_answer(t) else {
                break;
            };
            node.on_arbiter(answer, t);
        }

        // 6. Report.
        if let Phase::Halted(reason) = node.phase() {
            return Turn::Done(Exit::Halted(reason.clone()));
        }
        if self.pending.is_none() {
            if let Some(code) = node.finished() {
                return Turn::Done(Exit::Finished(code));
            }
        }
        let stalled = matches!(
            outcome,
            StepOutcome::Idle { .. } | StepOutcome::Blocked(_) | StepOutcome::Finished(_)
        );
        if !stalled || arrived {
            self.stale_deadline = None;
            return Turn::Busy;
        }
        let wake = match outcome {
            StepOutcome::Idle { wake_at } => wake_at,
            _ => None,
        };
        let deadline = match (node.next_deadline(), wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let now = clock.now();
        match deadline {
            // A deadline already past is due work; unless it is the same past deadline
            // as last turn, which nothing consumes.
            Some(t) if t <= now && self.stale_deadline != Some(t) => {
                self.stale_deadline = Some(t);
                Turn::Busy
            }
            Some(t) if t <= now => Turn::Idle { until: None },
            other => {
                self.stale_deadline = None;
                Turn::Idle { until: other }
            }
        }
    }

    fn take_inbound<S, W, L>(
        &mut self,
        node: &mut Node<S, W>,
        link: &mut L,
        now: Nanos,
    ) -> Result<bool, DriverError>
    where
        S: EventSource,
        W: World,
        L: Link + ?Sized,
    {
        let mut arrived = false;
        for _ in 0..self.cfg.max_inbound_per_turn.max(1) {
            let frame = match self.stash.take() {
                Some(batch) => Frame::Records(batch),
                None => {
                    if node.role() == Role::Backup && !node.takes_more() {
                        break;
                    }
                    match link.recv()? {
                        Some(f) => {
                            arrived = true;
                            f
                        }
                        None => break,
                    }
                }
            };
            // The engine refusing a well-formed frame (a sequence gap, an ack for
            // records never sent) refuses that frame alone: the stream's framing is
            // intact, so the link stays up and the next frame is taken.
            let taken = match (node.role(), frame) {
                (Role::Primary, Frame::Ack(ack)) => node.handle_ack(ack, now),
                (Role::Backup, Frame::Records(batch)) => {
                    let before = node.last_seq();
                    let fresh = batch.iter().filter(|r| r.seq > before).count();
                    if *node.phase() == Phase::Replaying && fresh > node.inbox_space() {
                        self.stash = Some(batch);
                        break;
                    }
                    node.handle_records(batch, now)
                }
                (Role::Primary, Frame::Records(_)) => {
                    return Err(DriverError::UnexpectedFrame {
                        side: "primary",
                        found: "records",
                    })
                }
                (Role::Backup, Frame::Ack(_)) => {
                    return Err(DriverError::UnexpectedFrame {
                        side: "backup",
                        found: "acknowledgement",
                    })
                }
                // Clone messages go either way; the node tells which fit.
                (_, Frame::Clone(msg)) => node.handle_clone(msg, now),
            };
            if let Err(e) = taken {
                self.errors.push(e.into());
            }
        }
        Ok(arrived)
    }

    /// The link failed: it is down from now on. A disconnect may declare the peer dead
    /// at once; after the log's clean end it is the peer leaving, no error.
    fn link_down<S: EventSource, W: World>(
        &mut self,
        node: &mut Node<S, W>,
        e: DriverError,
        now: Nanos,
    ) {
        self.link_up = false;
        self.stash = None;
        if matches!(e, DriverError::Channel(ChannelError::Disconnected)) {
            if node.peer_may_leave() {
                return;
            }
            if self.cfg.disconnect_is_failure {
                node.peer_failed(now);
            }
        }
        self.errors.push(e);
    }
}
