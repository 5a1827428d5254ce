//! How a driver reaches the arbiter: a request now, the answer when it comes.

use std::collections::VecDeque;

use crate::arbiter::{Arbiter, ArbiterError, Decision};
use crate::node::Command;
use crate::record::Nanos;

/// The arbiter as a driver loop sees it. The engine asks through a [`Command`]; the
/// answer may come in the same turn (a blocking call) or later (a simulated network,
/// an asynchronous client).
pub trait ArbiterPort {
    /// Carry out `command`, issued at `now`.
    fn request(&mut self, command: Command, now: Nanos);

    /// The next answer that is in by `now`.
    fn poll_answer(&mut self, now: Nanos) -> Option<Result<Decision, ArbiterError>>;
}

/// Calls the arbiter at once, blocking the loop for the call: the threaded runtime's
/// way, for an arbiter that answers within a few milliseconds (a file, etcd).
#[derive(Debug)]
pub struct Immediate<A> {
    arbiter: A,
    answers: VecDeque<Result<Decision, ArbiterError>>,
}

impl<A> Immediate<A> {
    /// Wrap an arbiter (an `Arc<dyn Arbiter>`, a reference, an
    /// [`crate::InProcessArbiter`]).
    pub fn new(arbiter: A) -> Immediate<A> {
        Immediate {
            arbiter,
            answers: VecDeque::new(),
        }
    }

    /// The arbiter.
    pub fn arbiter(&self) -> &A {
        &self.arbiter
    }
}

impl<A: std::ops::Deref<Target = T>, T: Arbiter + ?Sized> ArbiterPort for Immediate<A> {
    fn request(&mut self, command: Command, _now: Nanos) {
        let Command::TestAndSet { pair, me, .. } = command;
        self.answers.push_back(self.arbiter.test_and_set(pair, me));
    }

    fn poll_answer(&mut self, _now: Nanos) -> Option<Result<Decision, ArbiterError>> {
        self.answers.pop_front()
    }
}

/// Answers after a fixed latency of virtual time, asking the arbiter when the answer
/// is due (so two sides' requests are decided in the order their answers fall due, as
/// over a network). For simulations.
#[derive(Debug)]
pub struct Delayed<A> {
    arbiter: A,
    latency: Nanos,
    queue: VecDeque<(Nanos, Command)>,
}

impl<A> Delayed<A> {
    /// Answers `latency` after each request.
    pub fn new(arbiter: A, latency: Nanos) -> Delayed<A> {
        Delayed {
            arbiter,
            latency,
            queue: VecDeque::new(),
        }
    }

    /// Requests not yet answered.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Forget requests not yet answered (the requesting side crashed).
    pub fn clear(&mut self) {
        self.queue.clear();
    }
}

impl<A: Arbiter> ArbiterPort for Delayed<A> {
    fn request(&mut self, command: Command, now: Nanos) {
        self.queue
            .push_back((now.saturating_add(self.latency), command));
    }

    fn poll_answer(&mut self, now: Nanos) -> Option<Result<Decision, ArbiterError>> {
        if self.queue.front().is_some_and(|(at, _)| *at <= now) {
            let (_, Command::TestAndSet { pair, me, .. }) = self.queue.pop_front()?;
            return Some(self.arbiter.test_and_set(pair, me));
        }
        None
    }
}
