//! Every phase change of a node, in one place.
//!
//! The phases ([`Phase`]) and the only changes between them:
//!
//! ```text
//! Recording ──peer suspected──▶ Arbitrating ──won──▶ Live ──clone's final pause──▶ Recording
//! Replaying ──peer suspected──▶ Draining ──log replayed──▶ Arbitrating
//! Receiving ──clone whole and checked──▶ Replaying
//! any phase but Halted ──▶ Halted (lost the arbiter, a machine that failed, replay
//!                                   that diverged, a clone that never became whole)
//! ```
//!
//! The mechanisms decide when (the recorder, the replayer, go-live, the live clone);
//! [`Node::enter`] and [`Node::enter_with`] carry each change out, with the state the
//! new phase owns ([`crate::phase_state`]), and refuse one outside this table (or with
//! state that does not belong to the phase): an
//! engine bug, which halts the node ([`HaltReason::EngineBug`]) with a notice rather
//! than letting it run in a state nothing was written for. The role changes once, in
//! [`Node::become_primary`]: a live machine that starts a clone becomes the primary of
//! its new pair.

use crate::event_source::EventSource;
use crate::node::{HaltReason, Node, Phase, Role};
use crate::phase_state::Duty;
use crate::record::Nanos;
use crate::world::World;
use crate::Notice;

/// Whether the table allows `from → to`.
pub(crate) fn allowed(from: &Phase, to: &Phase) -> bool {
    use Phase::*;
    match (from, to) {
        (Halted(_), _) => false,
        (_, Halted(_)) => true,
        (Recording, Arbitrating)
        | (Replaying, Draining)
        | (Draining, Arbitrating)
        | (Arbitrating, Live)
        | (Live, Recording)
        | (Receiving, Replaying) => true,
        _ => false,
    }
}

impl<S: EventSource, W: World> Node<S, W> {
    /// Change to `next`, keeping the phase's state ([`Duty`]): a primary that starts
    /// arbitrating keeps its outbox and gate, a backup that drains keeps its inbox. A
    /// halt drops the state: a halted node holds nothing it could release. Returns
    /// whether the change was made; a change outside the table halts the node with
    /// [`HaltReason::EngineBug`].
    pub(crate) fn enter(&mut self, next: Phase, now: Nanos) -> bool {
        let duty = match next {
            Phase::Halted(_) => Some(Duty::Halted),
            _ => None,
        };
        self.change(next, duty, now).is_some()
    }

    /// Change to `next`, which owns the new state `duty`; returns the state of the
    /// phase left, for the change to use (the gate a primary going alone releases,
    /// the outputs a backup going live re-sends), or `None` if the change was refused
    /// (as [`Node::enter`]).
    pub(crate) fn enter_with(&mut self, next: Phase, duty: Duty, now: Nanos) -> Option<Duty> {
        self.change(next, Some(duty), now)
    }

    /// Stop for good, for `reason`.
    pub(crate) fn halt(&mut self, reason: HaltReason, now: Nanos) {
        self.enter(Phase::Halted(reason), now);
    }

    /// The one place a phase changes. `duty: None` keeps the current state. `None`
    /// when refused; otherwise the state replaced (a placeholder when it is kept).
    fn change(&mut self, next: Phase, duty: Option<Duty>, now: Nanos) -> Option<Duty> {
        let fits = duty.as_ref().unwrap_or(&self.duty).fits(&next);
        if allowed(&self.phase, &next) && fits {
            self.phase = next;
            // Leaving arbitration ends its attempts; entering starts them afresh.
            self.arbitration = None;
            return Some(match duty {
                Some(d) => std::mem::replace(&mut self.duty, d),
                None => Duty::Halted,
            });
        }
        if !matches!(self.phase, Phase::Halted(_)) {
            let why = format!(
                "engine bug: no phase change {:?} -> {:?} with the {} state",
                self.phase,
                next,
                duty.as_ref().unwrap_or(&self.duty).name()
            );
            self.notices.push_back((now, Notice::Diverged(why.clone())));
            self.phase = Phase::Halted(HaltReason::EngineBug(why));
            self.duty = Duty::Halted;
        }
        None
    }

    /// A live machine starts a clone: from here on it is the sending end of a new
    /// link, the one that will be its new backup's primary.
    pub(crate) fn become_primary(&mut self) {
        self.role = Role::Primary;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One phase of each kind.
    pub(crate) fn all() -> Vec<Phase> {
        vec![
            Phase::Recording,
            Phase::Replaying,
            Phase::Draining,
            Phase::Arbitrating,
            Phase::Live,
            Phase::Receiving,
            Phase::Halted(HaltReason::Diverged(String::new())),
        ]
    }

    #[test]
    fn the_table_has_exactly_the_documented_changes() {
        let mut legal = Vec::new();
        for from in all() {
            for to in all() {
                if allowed(&from, &to) {
                    legal.push(format!("{from:?} -> {to:?}"));
                }
            }
        }
        let halted = r#"Halted(Diverged(""))"#;
        let mut expected: Vec<String> = [
            "Recording -> Arbitrating",
            "Replaying -> Draining",
            "Draining -> Arbitrating",
            "Arbitrating -> Live",
            "Live -> Recording",
            "Receiving -> Replaying",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for from in [
            "Recording",
            "Replaying",
            "Draining",
            "Arbitrating",
            "Live",
            "Receiving",
        ] {
            expected.push(format!("{from} -> {halted}"));
        }
        legal.sort();
        expected.sort();
        assert_eq!(legal, expected);
    }
}
