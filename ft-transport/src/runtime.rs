//! A thin threaded runtime: drives one [`Node`] with a real clock and a log channel end.
//!
//! [`run_primary`] and [`run_backup`] loop on the calling thread until the node is done
//! (or halted, stopped, crashed); the caller spawns the threads. Time is
//! [`std::time::Instant`] measured from an `epoch` shared by both sides of an in-process
//! pair, as [`Nanos`].
//!
//! One iteration:
//!
//! 1. take what arrived (primary: every ack; backup: batches while the inbox has room);
//! 2. [`Node::step`];
//! 3. hand [`Node::poll_transmit`] to the channel; an item refused with
//!    [`ChannelError::Full`] is kept and retried first next time, never dropped or
//!    reordered;
//! 4. carry out [`Node::poll_command`] (the arbiter's test-and-set);
//! 5. pass [`Node::poll_notice`] to the callback;
//! 6. sleep (at most [`RuntimeConfig::idle_sleep`], and not past
//!    [`Node::next_deadline`]) if the node could not run and nothing arrived.
//!
//! A channel that reports corruption, or delivers something the engine rejects, is
//! treated as a broken link: the error goes into [`RunReport::errors`], the runtime
//! stops reading and sending on it, and the node's failure detector fires in due time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_core::{
    Arbiter, ChannelError, Command, EngineError, Event, EventSource, HaltReason, LogChannel,
    LogReceiver, Nanos, Node, Notice, Phase, Record, StepOutcome, Transmit, World,
};

/// Errors a run meets; they end up in [`RunReport::errors`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The log channel failed; the link is no longer used.
    #[error("log channel: {0}")]
    Channel(#[from] ChannelError),
    /// The engine rejected what arrived, or failed while stepping.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

/// Result alias of this module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// How a runtime behaves.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Longest sleep when there is nothing to do.
    pub idle_sleep: Duration,
    /// Declare the peer dead as soon as the channel reports
    /// [`ChannelError::Disconnected`] ([`Node::peer_failed`]); otherwise wait for the
    /// failure detector's timeout.
    pub disconnect_is_failure: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            idle_sleep: Duration::from_micros(200),
            disconnect_is_failure: true,
        }
    }
}

/// Flags another thread sets to end a run. Clones share the flags.
#[derive(Debug, Clone, Default)]
pub struct Control {
    crash: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Control {
    /// Fresh flags, none set.
    pub fn new() -> Control {
        Control::default()
    }

    /// Stop abruptly, like `kill -9`: the run returns at its next check and sends
    /// nothing more.
    pub fn crash(&self) {
        self.crash.store(true, Ordering::SeqCst);
    }

    /// Stop gracefully at the end of the current iteration.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether [`Control::crash`] was called.
    pub fn is_crashed(&self) -> bool {
        self.crash.load(Ordering::SeqCst)
    }

    /// Whether [`Control::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// [`Control::crash`].
    Crashed,
    /// [`Control::stop`].
    Stopped,
    /// The node halted for good.
    Halted(HaltReason),
    /// The guest ended with this code and this side has nothing left to do (primary:
    /// no output held, no record unsent; backup: everything replayed, or live).
    Finished(u64),
}

/// What a run hands back.
pub struct RunReport<S, W, C> {
    /// The node, to inspect its world, machine and counters.
    pub node: Node<S, W>,
    /// The channel end (for its traffic counters). Dropping it disconnects the peer;
    /// keeping it makes a crashed side look silent rather than gone.
    pub channel: C,
    /// Why the run ended.
    pub exit: Exit,
    /// Channel and engine errors, in the order they happened.
    pub errors: Vec<RuntimeError>,
    /// Loop iterations.
    pub iterations: u64,
}

impl<S: EventSource, W: World, C> std::fmt::Debug for RunReport<S, W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunReport")
            .field("phase", self.node.phase())
            .field("stats", self.node.stats())
            .field("exit", &self.exit)
            .field("errors", &self.errors)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Nanoseconds from `epoch` to now (0 if `epoch` is in the future).
pub fn nanos_since(epoch: Instant) -> Nanos {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What differs between the primary's and the backup's loop.
trait Side<S, W> {
    /// Feed what arrived to the node; whether anything did.
    fn take_inbound(&mut self, node: &mut Node<S, W>, now: Nanos) -> Result<bool>;
    /// Hand one item to the channel.
    fn send(&mut self, t: &Transmit) -> std::result::Result<(), ChannelError>;
    /// Whether this side is done, with the guest's exit code.
    fn finished(&self, node: &Node<S, W>) -> Option<u64>;
    /// Whether the peer may go away now without that being a failure.
    fn peer_may_leave(&self, node: &Node<S, W>) -> bool;
}

/// Watches the log stream for its clean end: the guest's `Halt`, then a `Heartbeat`
/// whose release watermark covers every output logged. Past that point the backup holds
/// no output the primary may not have released, so either side may leave.
#[derive(Debug, Clone, Default)]
struct EndWatch {
    halted: bool,
    outputs: u64,
    clean_at: Option<u64>,
}

impl EndWatch {
    fn observe(&mut self, r: &Record) {
        match &r.event {
            Event::Halt { .. } => self.halted = true,
            Event::Output { seq, .. } => self.outputs = self.outputs.max(seq.0.saturating_add(1)),
            Event::Heartbeat { released_below }
                if self.halted && released_below.0 >= self.outputs =>
            {
                self.clean_at.get_or_insert(r.seq);
            }
            _ => {}
        }
    }
}

/// Most acks taken per iteration, so a flood cannot starve the machine.
const MAX_ACKS_PER_ITERATION: usize = 1024;

struct PrimarySide<C> {
    chan: C,
    end: EndWatch,
}

impl<S: EventSource, W: World, C: LogChannel> Side<S, W> for PrimarySide<C> {
    fn take_inbound(&mut self, node: &mut Node<S, W>, now: Nanos) -> Result<bool> {
        let mut arrived = false;
        for _ in 0..MAX_ACKS_PER_ITERATION {
            match self.chan.try_recv_ack()? {
                Some(ack) => {
                    arrived = true;
                    node.handle_ack(ack, now)?;
                }
                None => break,
            }
        }
        Ok(arrived)
    }

    fn send(&mut self, t: &Transmit) -> std::result::Result<(), ChannelError> {
        match t {
            Transmit::Records(r) => {
                self.chan.send_records(r)?;
                r.iter().for_each(|r| self.end.observe(r));
                Ok(())
            }
            Transmit::Ack(_) => Ok(()),
        }
    }

    /// Live (alone, or unprotected) once the guest ended; or, with a backup, once no
    /// output is held, no record unsent, and the backup acknowledged the log's clean
    /// end (so it will not go live when this side leaves).
    fn finished(&self, node: &Node<S, W>) -> Option<u64> {
        let code = node.exit_code()?;
        let done = node.is_live()
            || (node.held_outputs() == 0
                && node.buffered_records() == 0
                && self.end.clean_at.is_some_and(|s| node.acked_seq() >= s));
        done.then_some(code)
    }

    fn peer_may_leave(&self, node: &Node<S, W>) -> bool {
        self.finished(node).is_some()
    }
}

struct BackupSide<R> {
    rx: R,
    /// A batch that did not fit in the inbox yet.
    stash: Option<Vec<Record>>,
    end: EndWatch,
}

impl<S: EventSource, W: World, R: LogReceiver> Side<S, W> for BackupSide<R> {
    fn take_inbound(&mut self, node: &mut Node<S, W>, now: Nanos) -> Result<bool> {
        let mut arrived = false;
        loop {
            let batch = match self.stash.take() {
                Some(b) => b,
                None => {
                    if node.inbox_space() == 0 {
                        break;
                    }
                    match self.rx.try_recv_records()? {
                        Some(b) => {
                            arrived = true;
                            b
                        }
                        None => break,
                    }
                }
            };
            let before = node.last_seq();
            let fresh = batch.iter().filter(|r| r.seq > before).count();
            if *node.phase() == Phase::Replaying && fresh > node.inbox_space() {
                self.stash = Some(batch);
                break;
            }
            // handle_records takes every fresh record of the batch or none.
            let mut end = self.end.clone();
            batch
                .iter()
                .filter(|r| r.seq > before)
                .for_each(|r| end.observe(r));
            node.handle_records(batch, now)?;
            if node.last_seq() > before {
                self.end = end;
            }
        }
        Ok(arrived)
    }

    fn send(&mut self, t: &Transmit) -> std::result::Result<(), ChannelError> {
        match t {
            Transmit::Ack(a) => self.rx.send_ack(*a),
            Transmit::Records(_) => Ok(()),
        }
    }

    /// Live once the guest ended; or, replaying, once everything up to the log's clean
    /// end was replayed.
    fn finished(&self, node: &Node<S, W>) -> Option<u64> {
        let code = node.exit_code()?;
        let done = match node.phase() {
            Phase::Live => true,
            Phase::Replaying => node.buffered_records() == 0 && self.end.clean_at.is_some(),
            _ => false,
        };
        done.then_some(code)
    }

    fn peer_may_leave(&self, _node: &Node<S, W>) -> bool {
        self.end.clean_at.is_some()
    }
}

/// Drive a primary (or an unprotected node) until it is done. See the module docs.
///
/// `node` must have been created with [`nanos_since`]`(epoch)` as its start time.
/// Notices go to `on_notice` as they happen; errors are collected in the report.
pub fn run_primary<S, W, C>(
    node: Node<S, W>,
    chan: C,
    arbiter: Arc<dyn Arbiter>,
    epoch: Instant,
    cfg: RuntimeConfig,
    control: Control,
    on_notice: impl FnMut(Nanos, &Notice),
) -> RunReport<S, W, C>
where
    S: EventSource,
    W: World,
    C: LogChannel,
{
    let side = PrimarySide {
        chan,
        end: EndWatch::default(),
    };
    let (node, side, exit, errors, iterations) =
        drive(node, side, &*arbiter, epoch, &cfg, &control, on_notice);
    RunReport {
        node,
        channel: side.chan,
        exit,
        errors,
        iterations,
    }
}

/// Drive a backup until it is done (replayed the guest's end, or went live and the
/// guest ended), halted, stopped or crashed. See the module docs.
///
/// `node` must have been created with [`nanos_since`]`(epoch)` as its start time.
pub fn run_backup<S, W, R>(
    node: Node<S, W>,
    rx: R,
    arbiter: Arc<dyn Arbiter>,
    epoch: Instant,
    cfg: RuntimeConfig,
    control: Control,
    on_notice: impl FnMut(Nanos, &Notice),
) -> RunReport<S, W, R>
where
    S: EventSource,
    W: World,
    R: LogReceiver,
{
    let side = BackupSide {
        rx,
        stash: None,
        end: EndWatch::default(),
    };
    let (node, side, exit, errors, iterations) =
        drive(node, side, &*arbiter, epoch, &cfg, &control, on_notice);
    RunReport {
        node,
        channel: side.rx,
        exit,
        errors,
        iterations,
    }
}

type Driven<S, W, X> = (Node<S, W>, X, Exit, Vec<RuntimeError>, u64);

fn drive<S, W, X>(
    mut node: Node<S, W>,
    mut side: X,
    arbiter: &dyn Arbiter,
    epoch: Instant,
    cfg: &RuntimeConfig,
    control: &Control,
    mut on_notice: impl FnMut(Nanos, &Notice),
) -> Driven<S, W, X>
where
    S: EventSource,
    W: World,
    X: Side<S, W>,
{
    let mut errors: Vec<RuntimeError> = Vec::new();
    let mut pending: Option<Transmit> = None;
    let mut link_up = true;
    let mut iterations = 0u64;
    let mut stale_deadline: Option<Nanos> = None;

    loop {
        iterations += 1;
        if control.is_crashed() {
            return (node, side, Exit::Crashed, errors, iterations);
        }
        if control.is_stopped() {
            return (node, side, Exit::Stopped, errors, iterations);
        }
        let now = nanos_since(epoch);

        // 1. Inbound.
        let mut arrived = false;
        if link_up {
            match side.take_inbound(&mut node, now) {
                Ok(a) => arrived = a,
                Err(e) => {
                    link_up = false;
                    link_down(&mut node, &side, cfg, &mut errors, e, now);
                }
            }
        }

        // 2. Execute.
        let outcome = match node.step(now) {
            Ok(o) => o,
            Err(e) => {
                errors.push(RuntimeError::Engine(e));
                StepOutcome::Halted
            }
        };

        // 3. Outbound, in order; what the channel refuses waits for the next turn. A
        // live node has no peer any more: what still waited for the channel is moot.
        if node.is_live() {
            pending = None;
        }
        loop {
            if control.is_crashed() {
                return (node, side, Exit::Crashed, errors, iterations);
            }
            let Some(t) = pending.take().or_else(|| node.poll_transmit(now)) else {
                break;
            };
            if !link_up {
                // The link is broken: what would go on it is lost.
                continue;
            }
            match side.send(&t) {
                Ok(()) => {}
                Err(ChannelError::Full) => {
                    pending = Some(t);
                    break;
                }
                Err(e) => {
                    link_up = false;
                    link_down(&mut node, &side, cfg, &mut errors, e.into(), now);
                }
            }
        }

        // 4. Commands.
        while let Some(cmd) = node.poll_command() {
            match cmd {
                Command::TestAndSet { pair, me, .. } => {
                    let result = arbiter.test_and_set(pair, me);
                    node.on_arbiter(result, nanos_since(epoch));
                }
            }
        }

        // 5. Notices.
        while let Some((t, n)) = node.poll_notice() {
            on_notice(t, &n);
        }

        // Done?
        if let Phase::Halted(reason) = node.phase() {
            let reason = reason.clone();
            return (node, side, Exit::Halted(reason), errors, iterations);
        }
        if pending.is_none() {
            if let Some(code) = side.finished(&node) {
                return (node, side, Exit::Finished(code), errors, iterations);
            }
        }

        // 6. Sleep if there is nothing to do.
        let stalled = matches!(
            outcome,
            StepOutcome::Idle { .. } | StepOutcome::Blocked(_) | StepOutcome::Finished(_)
        );
        if stalled && !arrived {
            let now = nanos_since(epoch);
            let wake = match outcome {
                StepOutcome::Idle { wake_at } => wake_at,
                _ => None,
            };
            let deadline = match (node.next_deadline(), wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut d = cfg.idle_sleep;
            if let Some(t) = deadline {
                // A deadline already past is due work, so no sleep; unless it is the
                // same past deadline as last time, which nothing consumes (a world
                // deadline after the guest ended): sleeping then avoids a busy loop.
                if t > now || stale_deadline != Some(t) {
                    d = d.min(Duration::from_nanos(t.saturating_sub(now)));
                }
                stale_deadline = (t <= now).then_some(t);
            }
            if !d.is_zero() {
                std::thread::sleep(d);
            }
        }
    }
}

/// A channel error: the link is down from now on. A disconnect may declare the peer
/// dead at once.
fn link_down<S, W, X>(
    node: &mut Node<S, W>,
    side: &X,
    cfg: &RuntimeConfig,
    errors: &mut Vec<RuntimeError>,
    e: RuntimeError,
    now: Nanos,
) where
    S: EventSource,
    W: World,
    X: Side<S, W>,
{
    if matches!(e, RuntimeError::Channel(ChannelError::Disconnected)) {
        if side.peer_may_leave(node) {
            // The peer left after the log's clean end: not an error.
            return;
        }
        if cfg.disconnect_is_failure {
            node.peer_failed(now);
        }
    }
    errors.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_flags_are_shared() {
        let c = Control::new();
        let d = c.clone();
        assert!(!d.is_crashed() && !d.is_stopped());
        c.crash();
        c.stop();
        assert!(d.is_crashed() && d.is_stopped());
    }

    #[test]
    fn default_config_and_clock() {
        let cfg = RuntimeConfig::default();
        assert_eq!(cfg.idle_sleep, Duration::from_micros(200));
        let epoch = Instant::now();
        let a = nanos_since(epoch);
        let b = nanos_since(epoch);
        assert!(b >= a);
    }
}
