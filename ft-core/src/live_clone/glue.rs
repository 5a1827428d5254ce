//! A [`Node`]'s part in a live clone: starting one, carrying its messages, the final
//! pause that turns a live machine into a recording primary, and the receiver that
//! becomes a replaying backup.

use std::collections::VecDeque;

use super::{
    CloneConfig, CloneError, CloneFrame, CloneMsg, CloneReceiver, CloneSender, Received, Resume,
};
use crate::event_source::EventSource;
use crate::failure_detector::{FailureDetector, Heartbeat};
use crate::log_end::LogEnd;
use crate::node::{next_multiple, Config, HaltReason, Node, Notice, Phase, Result, Role, Transmit};
use crate::phase_state::{Duty, Recording, Replaying};
use crate::record::Nanos;
use crate::world::World;
use crate::PairId;

impl<S: EventSource, W: World> Node<S, W> {
    /// A new backup to be filled by a live clone: it waits for a sender
    /// ([`Node::start_clone`] on the live machine, over a fresh link), writes what
    /// arrives into `source`, and once the final state is loaded and its digest
    /// checked, replays the log from the clone point like any backup. `source` must
    /// have the sender's memory layout; its contents are overwritten. Until the clone
    /// is whole this node never goes live: if the sender goes silent or anything is
    /// wrong, it halts with [`HaltReason::CloneFailed`].
    pub fn clone_target(cfg: Config, source: S, world: W, now: Nanos) -> Node<S, W> {
        let duty = Duty::Receive(Box::new(CloneReceiver::new()));
        Self::new(
            Role::Backup,
            Phase::Receiving,
            duty,
            cfg,
            source,
            world,
            now,
        )
    }

    /// Start cloning this live machine into a new backup, which will belong to `pair`
    /// (the same VM in a later generation, so that the arbiter keys the new pair
    /// apart from the old). The machine keeps running while memory goes across; the
    /// clone's messages come out of [`Node::poll_transmit`] and its answers go to
    /// [`Node::handle_clone`]. The node becomes the new pair's primary at the final
    /// pause ([`Notice::ClonePaused`]); a clone that fails before it is abandoned and
    /// the node goes on alone ([`Notice::CloneAborted`]).
    ///
    /// # Errors
    ///
    /// [`EngineError::Clone`](crate::EngineError::Clone) when the node is not live, already clones, or its guest
    /// ended; when `pair` is not a later generation of this VM; when the parameters
    /// do not fit; or when the machine has no state transfer.
    pub fn start_clone(&mut self, pair: PairId, cfg: CloneConfig, now: Nanos) -> Result<()> {
        let Duty::Live { clone_out } = &self.duty else {
            return Err(CloneError::NotLive(format!("{:?}", self.phase)).into());
        };
        if clone_out.is_some() {
            return Err(CloneError::AlreadyCloning.into());
        }
        if self.exited.is_some() {
            return Err(CloneError::GuestEnded.into());
        }
        if pair.vm != self.cfg.pair.vm || pair.generation <= self.cfg.pair.generation {
            return Err(CloneError::Generation {
                vm: self.cfg.pair.vm,
                current: self.cfg.pair.generation,
                proposed_vm: pair.vm,
                proposed: pair.generation,
            }
            .into());
        }
        let sender = CloneSender::start(cfg, pair, self.cfg.node, &mut self.source)?;
        self.notices.push_back((
            now,
            Notice::CloneStarted {
                pair,
                pages: sender.pages(),
            },
        ));
        if let Duty::Live { clone_out } = &mut self.duty {
            *clone_out = Some(Box::new(sender));
        }
        self.clone_queue.clear();
        self.clone_tx = 0;
        self.clone_rx = 0;
        self.become_primary();
        self.detector = FailureDetector::new(self.cfg.peer_timeout, now);
        self.heartbeat = Heartbeat::new(self.cfg.heartbeat_interval, now);
        Ok(())
    }

    /// Whether this node is sending a clone (from [`Node::start_clone`] to the final
    /// pause or the clone's end).
    pub fn cloning(&self) -> bool {
        matches!(self.duty, Duty::Live { clone_out: Some(_) })
    }

    /// After a clone's final pause, until the new backup confirmed it: the digest it
    /// must confirm.
    fn clone_ready(&self) -> Option<u64> {
        self.recording().and_then(|r| r.clone_ready)
    }

    /// The final pause's digest, no longer awaited.
    fn take_clone_ready(&mut self) -> Option<u64> {
        match &mut self.duty {
            Duty::Record(r) => r.clone_ready.take(),
            _ => None,
        }
    }

    /// Clone messages waiting to go out (after the final pause: the last pages and
    /// the final state, until the link has taken them all).
    pub fn clone_queued(&self) -> usize {
        self.clone_queue.len()
    }

    /// A clone message arrived from the peer.
    ///
    /// # Errors
    ///
    /// [`EngineError::Clone`](crate::EngineError::Clone) for a message that does not fit, or the receiver's
    /// refusal (a mismatched layout, a bad page, a digest mismatch); the receiver then
    /// halts, and the sender abandons its clone.
    pub fn handle_clone(&mut self, frame: CloneFrame, now: Nanos) -> Result<()> {
        let expected = self.clone_rx;
        if frame.n != expected {
            let e = CloneError::Sequence {
                expected,
                found: frame.n,
            };
            let in_clone =
                self.phase == Phase::Receiving || self.cloning() || self.clone_ready().is_some();
            if in_clone {
                self.clone_broken(e.to_string(), now);
            }
            return Err(e.into());
        }
        self.clone_rx += 1;
        let msg = frame.msg;
        if self.phase == Phase::Receiving {
            return self.receive(msg, now);
        }
        let sending = self.cloning();
        let ready = self.clone_ready().is_some();
        match (msg, &self.phase) {
            (CloneMsg::Heartbeat, _) => {
                if sending || ready {
                    self.detector.heard(now);
                }
                Ok(())
            }
            (CloneMsg::RoundAck { round }, Phase::Live) if sending => {
                self.detector.heard(now);
                let res = match &mut self.duty {
                    Duty::Live { clone_out: Some(s) } => s.on_round_ack(round, &mut self.source),
                    _ => return Ok(()),
                };
                match res {
                    Ok((round, dirty)) => {
                        self.notices
                            .push_back((now, Notice::CloneRound { round, dirty }));
                        Ok(())
                    }
                    Err(e) => {
                        self.abort_clone(e.to_string(), true, now);
                        Err(e.into())
                    }
                }
            }
            (CloneMsg::Abort { reason }, Phase::Live) if sending => {
                self.abort_clone(format!("the receiver refused: {reason}"), false, now);
                Ok(())
            }
            (CloneMsg::Ready { digest }, _) if ready => {
                self.detector.heard(now);
                let expected = self.take_clone_ready();
                if expected == Some(digest) {
                    self.notices
                        .push_back((now, Notice::CloneComplete { digest }));
                    Ok(())
                } else {
                    // The receiver checks this itself; a clone that says otherwise
                    // cannot be trusted as a backup.
                    self.peer_failed(now);
                    Err(CloneError::DigestMismatch {
                        sender: expected.unwrap_or(0),
                        clone: digest,
                    }
                    .into())
                }
            }
            (CloneMsg::Abort { reason }, Phase::Recording) if ready => {
                // The new backup refused the final state: it halted and never goes
                // live. The arbiter still decides, in the new generation.
                self.take_clone_ready();
                self.notices.push_back((
                    now,
                    Notice::CloneAborted {
                        reason: format!("the new backup refused the final state: {reason}"),
                    },
                ));
                self.peer_failed(now);
                Ok(())
            }
            (other, phase) => Err(CloneError::Unexpected {
                msg: other.name(),
                state: match phase {
                    Phase::Live if sending => "sending a clone",
                    _ => "not in a clone",
                },
            }
            .into()),
        }
    }

    fn receive(&mut self, msg: CloneMsg, now: Nanos) -> Result<()> {
        self.detector.heard(now);
        let Duty::Receive(rx) = &mut self.duty else {
            return Ok(());
        };
        let vm = self.cfg.pair.vm;
        match rx.on_message(msg, &mut self.source, self.cfg.node, vm) {
            Ok(Received::Applied) => Ok(()),
            Ok(Received::RoundDone(round)) => {
                self.clone_queue.push_back(CloneMsg::RoundAck { round });
                Ok(())
            }
            Ok(Received::Complete { resume, digest }) => {
                self.become_backup(resume, digest, now);
                Ok(())
            }
            Err(e) => {
                let tell = !matches!(e, CloneError::Aborted(_));
                self.fail_receiving(e.to_string(), tell, now);
                Err(e.into())
            }
        }
    }

    /// The receiver's clone is whole: from the clone point it is an ordinary backup.
    fn become_backup(&mut self, resume: Resume, digest: u64, now: Nanos) {
        let point = resume.point;
        let replayed = resume.next_seq.saturating_sub(1);
        let mut replaying = Replaying::new(point, replayed, resume.next_output);
        // The sender learns at once where the new backup's log starts.
        replaying.ack_due = true;
        if self
            .enter_with(Phase::Replaying, Duty::Replay(replaying), now)
            .is_none()
        {
            return;
        }
        self.cfg.pair = resume.pair;
        self.next_seq = resume.next_seq;
        self.next_output = resume.next_output;
        self.pending_io = resume.pending_io.into_iter().map(|r| (r.id, r)).collect();
        self.replayed = replayed;
        self.next_digest = next_multiple(point.count, self.cfg.digest_interval);
        self.detector = FailureDetector::new(self.cfg.peer_timeout, now);
        self.heartbeat = Heartbeat::new(self.cfg.heartbeat_interval, now);
        self.clone_queue.push_back(CloneMsg::Ready { digest });
        self.notices.push_back((
            now,
            Notice::CloneReceived {
                pair: resume.pair,
                point,
                digest,
            },
        ));
    }

    fn fail_receiving(&mut self, reason: String, tell_sender: bool, now: Nanos) {
        if tell_sender {
            self.clone_queue.push_back(CloneMsg::Abort {
                reason: reason.clone(),
            });
        }
        self.notices.push_back((
            now,
            Notice::CloneFailed {
                reason: reason.clone(),
            },
        ));
        self.halt(HaltReason::CloneFailed(reason), now);
    }

    /// Abandon the clone being sent: the machine goes on alone.
    pub(crate) fn abort_clone(&mut self, reason: String, tell_receiver: bool, now: Nanos) {
        let Duty::Live { clone_out } = &mut self.duty else {
            return;
        };
        if clone_out.take().is_none() {
            return;
        }
        self.source.stop_dirty_log();
        self.clone_queue.clear();
        if tell_receiver {
            self.clone_queue.push_back(CloneMsg::Abort {
                reason: reason.clone(),
            });
        }
        self.notices
            .push_back((now, Notice::CloneAborted { reason }));
    }

    /// The clone's stream cannot be trusted any more: end the clone on this side.
    fn clone_broken(&mut self, why: String, now: Nanos) {
        if self.phase == Phase::Receiving {
            self.fail_receiving(why, true, now);
        } else if self.cloning() {
            self.abort_clone(why, true, now);
        } else if self.take_clone_ready().is_some() {
            // After the final pause: the new backup may lack its state; the arbiter
            // decides, in the new generation.
            self.notices
                .push_back((now, Notice::CloneAborted { reason: why }));
            self.peer_failed(now);
        }
    }

    /// The peer of a clone is gone (silent past the timeout, or the link broke).
    pub(crate) fn clone_peer_lost(&mut self, why: &str, now: Nanos) {
        if self.phase == Phase::Receiving {
            self.fail_receiving(format!("the sender is gone ({why})"), false, now);
        } else if self.cloning() {
            self.abort_clone(format!("the receiver is gone ({why})"), false, now);
        }
    }

    /// Live with a converged clone: the final pause, at the machine's point between
    /// two slices. Afterwards the node records for its new backup.
    pub(crate) fn clone_pause(&mut self, now: Nanos) {
        if self.exited.is_some() {
            self.abort_clone("the guest ended".into(), true, now);
            return;
        }
        let Duty::Live { clone_out } = &mut self.duty else {
            return;
        };
        let Some(mut sender) = clone_out.take() else {
            return;
        };
        let pair = sender.pair();
        let point = self.source.point();
        let resume = Resume {
            pair,
            primary: self.cfg.node,
            point,
            next_seq: self.next_seq,
            next_output: self.next_output,
            pending_io: self.pending_io.values().cloned().collect(),
        };
        let (msgs, digest, summary) = match sender.finish(&mut self.source, resume) {
            Ok(x) => x,
            Err(e) => {
                if let Duty::Live { clone_out } = &mut self.duty {
                    *clone_out = Some(sender);
                }
                self.abort_clone(e.to_string(), true, now);
                return;
            }
        };
        // Recording for the new backup, from the clone point on.
        let base = self.next_seq.saturating_sub(1);
        let mut recording = Recording::new(&self.cfg, now, base, self.next_output);
        recording.clone_ready = Some(digest);
        if self
            .enter_with(Phase::Recording, Duty::Record(recording), now)
            .is_none()
        {
            return;
        }
        self.clone_queue = VecDeque::from(msgs);
        self.cfg.pair = pair;
        self.become_primary();
        self.replayed = base;
        self.acked = base;
        self.detector = FailureDetector::new(self.cfg.peer_timeout, now);
        self.heartbeat = Heartbeat::new(self.cfg.heartbeat_interval, now);
        self.end = LogEnd::default();
        self.next_digest = next_multiple(point.count, self.cfg.digest_interval);
        self.notices.push_back((
            now,
            Notice::ClonePaused {
                pair,
                point,
                digest,
                rounds: summary.rounds,
                final_pages: summary.final_pages,
                pages: summary.pages,
                bytes: summary.bytes,
            },
        ));
    }

    /// The next clone message to send, if any: queued answers and final messages
    /// first, then pre-copy pages, then a heartbeat when the link was quiet.
    pub(crate) fn poll_clone_transmit(&mut self, now: Nanos) -> Option<Transmit> {
        let msg = self.next_clone_message(now)?;
        let n = self.clone_tx;
        self.clone_tx += 1;
        self.heartbeat.sent(now);
        Some(Transmit::Clone(CloneFrame { n, msg }))
    }

    fn next_clone_message(&mut self, now: Nanos) -> Option<CloneMsg> {
        if let Some(front) = self.clone_queue.front() {
            // After the pause, the final pages go out a step's budget at a time, the
            // guest running in between: it waits for the read, not the encoding.
            if let (Duty::Record(r), CloneMsg::Pages { pages, .. }) = (&mut self.duty, front) {
                if r.final_pages_sent >= super::FINAL_PAGES_PER_STEP {
                    return None;
                }
                r.final_pages_sent += pages.len() as u64;
            }
            return self.clone_queue.pop_front();
        }
        if self.phase == Phase::Live {
            let res = match &mut self.duty {
                Duty::Live { clone_out: Some(s) } => s.next_message(&self.source),
                _ => return None,
            };
            match res {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => {
                    self.abort_clone(e.to_string(), true, now);
                    return self.clone_queue.pop_front();
                }
            }
        }
        let talking = self.cloning() || self.phase == Phase::Receiving;
        if talking && self.heartbeat.due(now) {
            return Some(CloneMsg::Heartbeat);
        }
        None
    }

    /// Whether the final pause is due.
    pub(crate) fn clone_final_due(&self) -> bool {
        match &self.duty {
            Duty::Live { clone_out: Some(s) } => s.final_due(),
            _ => false,
        }
    }

    /// Before a guest slice: the clone's page budget starts again, and a clone that
    /// converged pauses at the step after it.
    pub(crate) fn clone_step_begins(&mut self) {
        if let Duty::Record(r) = &mut self.duty {
            r.final_pages_sent = 0;
        }
        if let Duty::Live { clone_out: Some(s) } = &mut self.duty {
            s.step_begins();
        }
    }
}
