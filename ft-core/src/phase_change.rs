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
//! [`Node::enter`] carries each change out, and refuses one outside this table: an
//! engine bug, which halts the node ([`HaltReason::EngineBug`]) with a notice rather
//! than letting it run in a state nothing was written for. The role changes once, in
//! [`Node::become_primary`]: a live machine that starts a clone becomes the primary of
//! its new pair.

use crate::event_source::EventSource;
use crate::node::{HaltReason, Node, Phase, Role};
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
    /// Change to `next`, if the table allows it from the current phase; otherwise halt
    /// with [`HaltReason::EngineBug`]. Returns whether the change was made.
    pub(crate) fn enter(&mut self, next: Phase, now: Nanos) -> bool {
        if allowed(&self.phase, &next) {
            self.phase = next;
            return true;
        }
        if !matches!(self.phase, Phase::Halted(_)) {
            let why = format!("engine bug: no phase change {:?} -> {:?}", self.phase, next);
            self.notices.push_back((now, Notice::Diverged(why.clone())));
            self.phase = Phase::Halted(HaltReason::EngineBug(why));
        }
        false
    }

    /// Stop for good, for `reason`.
    pub(crate) fn halt(&mut self, reason: HaltReason, now: Nanos) {
        self.enter(Phase::Halted(reason), now);
    }

    /// A live machine starts a clone: from here on it is the sending end of a new
    /// link, the one that will be its new backup's primary.
    pub(crate) fn become_primary(&mut self) {
        self.role = Role::Primary;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Phase> {
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
