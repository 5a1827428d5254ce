//! The output rule: an output leaves the primary only after the backup has
//! acknowledged every log record up to it.
//!
//! The gate holds outputs, never execution: the primary keeps running while outputs
//! wait here.
//!
//! Some items need more than receipt: a shared-disk write must not reach the disk
//! before the backup has *replayed* every earlier read that the backup performs from
//! that disk itself, or the backup would read the new data. Such items are held with
//! [`OutputGate::hold_until_replayed`] and wait for the backup's replay position.

use std::collections::VecDeque;

/// Holds items (outputs, shared-disk writes) until the backup acknowledges the log
/// record that produced them.
#[derive(Debug)]
pub struct OutputGate<T> {
    held: VecDeque<(u64, bool, T)>,
    acked: u64,
    replayed: u64,
    open: bool,
}

impl<T> Default for OutputGate<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> OutputGate<T> {
    /// A closed gate with nothing acknowledged.
    pub fn new() -> OutputGate<T> {
        OutputGate {
            held: VecDeque::new(),
            acked: 0,
            replayed: 0,
            open: false,
        }
    }

    /// Hold `item`, produced by the log record `record_seq`. Records must be held in
    /// increasing `record_seq` order.
    pub fn hold(&mut self, record_seq: u64, item: T) {
        self.held.push_back((record_seq, false, item));
    }

    /// Hold `item` until the backup has *replayed* (not only received) the record
    /// `record_seq`. Items still leave in production order.
    pub fn hold_until_replayed(&mut self, record_seq: u64, item: T) {
        self.held.push_back((record_seq, true, item));
    }

    /// The backup has received every record up to `acked` and replayed every record up
    /// to `replayed`.
    pub fn on_ack(&mut self, acked: u64, replayed: u64) {
        self.acked = self.acked.max(acked);
        self.replayed = self.replayed.max(replayed);
    }

    /// The highest acknowledged record.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// There is no backup anymore: everything held may go.
    pub fn open(&mut self) {
        self.open = true;
    }

    /// The next item that may leave, in production order.
    pub fn pop_released(&mut self) -> Option<T> {
        match self.held.front() {
            Some((seq, replay, _))
                if self.open || *seq <= if *replay { self.replayed } else { self.acked } =>
            {
                self.held.pop_front().map(|(_, _, item)| item)
            }
            _ => None,
        }
    }

    /// Items still held.
    pub fn pending(&self) -> usize {
        self.held.len()
    }

    /// Iterate over the held items, oldest first, with their record sequence numbers.
    pub fn held(&self) -> impl Iterator<Item = (u64, &T)> {
        self.held.iter().map(|(s, _, t)| (*s, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_acknowledged_in_order() {
        let mut g = OutputGate::new();
        g.hold(3, "a");
        g.hold(5, "b");
        g.hold(9, "c");
        assert_eq!(g.pop_released(), None);
        g.on_ack(4, 0);
        assert_eq!(g.pop_released(), Some("a"));
        assert_eq!(g.pop_released(), None);
        g.on_ack(2, 0); // stale ack never moves the watermark back
        assert_eq!(g.acked(), 4);
        g.on_ack(9, 0);
        assert_eq!(g.pop_released(), Some("b"));
        assert_eq!(g.pop_released(), Some("c"));
        assert_eq!(g.pending(), 0);
    }

    #[test]
    fn replay_held_items_wait_for_the_replay_position_and_keep_order() {
        let mut g = OutputGate::new();
        g.hold(3, "a");
        g.hold_until_replayed(5, "w");
        g.hold(6, "b");
        g.on_ack(10, 4);
        assert_eq!(g.pop_released(), Some("a"));
        assert_eq!(g.pop_released(), None, "received but not replayed");
        g.on_ack(10, 5);
        assert_eq!(g.pop_released(), Some("w"));
        assert_eq!(g.pop_released(), Some("b"));
    }

    #[test]
    fn open_gate_releases_everything() {
        let mut g = OutputGate::new();
        g.hold(10, 1);
        g.hold(11, 2);
        g.open();
        assert_eq!(g.pop_released(), Some(1));
        assert_eq!(g.pop_released(), Some(2));
    }
}
