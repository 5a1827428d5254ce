//! A thin threaded runtime: turns ft-core's one driver loop ([`ft_core::driver`]) on
//! the calling thread, with the host's clock, a log channel end and a blocking arbiter.
//!
//! [`run`] loops over any driver [`Link`] until the node is done (or halted, stopped,
//! crashed); the caller spawns the threads. A [`crate::PrimaryEnd`] or
//! [`crate::BackupEnd`] over a frame link is such a link, and carries live-clone
//! messages too; [`run_primary`] and [`run_backup`] take a plain [`LogChannel`] or
//! [`LogReceiver`] instead, which carry the log alone. A machine running alone runs
//! over [`ft_core::driver::NoLink`]. Time is [`std::time::Instant`] measured
//! from an `epoch` shared by both sides of an in-process pair, as [`Nanos`].
//!
//! Each iteration checks the [`Control`] flags, takes one [`Driver::turn`] (inbound,
//! step, outbound, arbiter: see [`ft_core::driver`]), passes the node's notices to the
//! callback, and sleeps when the turn was idle: at most [`RuntimeConfig::idle_sleep`],
//! and not past the node's next deadline. The pair simulation and ft-kvm's in-process
//! pair take the same turns on virtual time.
//!
//! A channel that reports corruption or a disconnect is treated as a broken link: the
//! error goes into [`RunReport::errors`], the driver stops reading and sending on it,
//! and the node's failure detector fires in due time. A well-formed frame the engine
//! refuses is refused alone, and its error reported the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ft_core::driver::{
    self, BackupLink, Clock, Driver, DriverConfig, Immediate, Link, PrimaryLink, Turn,
};
use ft_core::{
    Arbiter, EventSource, HaltReason, LogChannel, LogReceiver, Nanos, Node, Notice, World,
};

/// Errors a run meets; they end up in [`RunReport::errors`]. They are the driver
/// loop's: a failed channel, an engine that rejected what arrived, a frame of the
/// wrong kind.
pub type RuntimeError = driver::DriverError;

/// How a runtime behaves.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Longest sleep when there is nothing to do.
    pub idle_sleep: Duration,
    /// Declare the peer dead as soon as the channel reports
    /// [`ChannelError::Disconnected`](ft_core::ChannelError::Disconnected) ([`Node::peer_failed`]); otherwise wait for the
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

impl<S, W, C> RunReport<S, W, C> {
    /// The same report, with the channel replaced by `f` of it (to unwrap an adapter).
    pub fn map_channel<D>(self, f: impl FnOnce(C) -> D) -> RunReport<S, W, D> {
        RunReport {
            node: self.node,
            channel: f(self.channel),
            exit: self.exit,
            errors: self.errors,
            iterations: self.iterations,
        }
    }
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

/// The host's monotonic clock, from a shared epoch.
struct WallClock(Instant);

impl Clock for WallClock {
    fn now(&self) -> Nanos {
        nanos_since(self.0)
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
    run(
        node,
        PrimaryLink(chan),
        arbiter,
        epoch,
        cfg,
        control,
        on_notice,
    )
    .map_channel(|l| l.0)
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
    run(
        node,
        BackupLink(rx),
        arbiter,
        epoch,
        cfg,
        control,
        on_notice,
    )
    .map_channel(|l| l.0)
}

/// Drive `node` over `link` until it is done (the guest ended and, for a primary,
/// the log is acknowledged), halted, stopped or crashed. See the module docs.
///
/// `node` must have been created with [`nanos_since`]`(epoch)` as its start time.
/// This is the loop to use for a live clone: the sender's node (after
/// [`Node::start_clone`]) over a [`crate::PrimaryEnd`], the new backup's
/// ([`Node::clone_target`]) over a [`crate::BackupEnd`].
pub fn run<S, W, L>(
    node: Node<S, W>,
    link: L,
    arbiter: Arc<dyn Arbiter>,
    epoch: Instant,
    cfg: RuntimeConfig,
    control: Control,
    on_notice: impl FnMut(Nanos, &Notice),
) -> RunReport<S, W, L>
where
    S: EventSource,
    W: World,
    L: Link,
{
    let (node, channel, exit, errors, iterations) =
        drive(node, link, &*arbiter, epoch, &cfg, &control, on_notice);
    RunReport {
        node,
        channel,
        exit,
        errors,
        iterations,
    }
}

type Driven<S, W, L> = (Node<S, W>, L, Exit, Vec<RuntimeError>, u64);

fn drive<S, W, L>(
    mut node: Node<S, W>,
    mut link: L,
    arbiter: &dyn Arbiter,
    epoch: Instant,
    cfg: &RuntimeConfig,
    control: &Control,
    mut on_notice: impl FnMut(Nanos, &Notice),
) -> Driven<S, W, L>
where
    S: EventSource,
    W: World,
    L: Link,
{
    let mut driver = Driver::new(DriverConfig {
        disconnect_is_failure: cfg.disconnect_is_failure,
        ..DriverConfig::default()
    });
    let clock = WallClock(epoch);
    let mut port = Immediate::new(arbiter);
    let mut errors: Vec<RuntimeError> = Vec::new();
    loop {
        if control.is_crashed() {
            return (node, link, Exit::Crashed, errors, driver.turns());
        }
        if control.is_stopped() {
            return (node, link, Exit::Stopped, errors, driver.turns());
        }
        let turn = driver.turn(&mut node, &clock, &mut link, &mut port);
        errors.extend(driver.take_errors());
        while let Some((t, n)) = node.poll_notice() {
            on_notice(t, &n);
        }
        match turn {
            Turn::Busy => {}
            Turn::Done(driver::Exit::Halted(reason)) => {
                return (node, link, Exit::Halted(reason), errors, driver.turns())
            }
            Turn::Done(driver::Exit::Finished(code)) => {
                return (node, link, Exit::Finished(code), errors, driver.turns())
            }
            Turn::Idle { until } => {
                let mut d = cfg.idle_sleep;
                if let Some(t) = until {
                    d = d.min(Duration::from_nanos(t.saturating_sub(clock.now())));
                }
                if !d.is_zero() {
                    std::thread::sleep(d);
                }
            }
        }
    }
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
