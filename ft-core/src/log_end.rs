//! The clean end of a log stream.
//!
//! A log ends cleanly with the guest's `Halt`, followed by a `Heartbeat` whose release
//! watermark covers every output logged. Past that record the backup holds no output
//! the primary may not have released, so either side may leave without the other
//! treating it as a failure. Both sides watch the records they exchange (the primary
//! those it ships, the backup those it takes in) and agree on where the end lies.

use crate::record::{Event, Record};

/// Watches a stream of records for its clean end.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogEnd {
    halted: bool,
    outputs: u64,
    clean_at: Option<u64>,
}

impl LogEnd {
    /// Take one more record of the stream, in order.
    pub(crate) fn observe(&mut self, r: &Record) {
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

    /// The sequence number of the record that ends the stream cleanly, once seen.
    pub(crate) fn clean_at(&self) -> Option<u64> {
        self.clean_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutputSeq;
    use crate::ExecPoint;

    fn rec(seq: u64, event: Event) -> Record {
        Record {
            seq,
            point: ExecPoint::at(seq),
            event,
        }
    }

    #[test]
    fn the_end_needs_the_halt_and_a_watermark_covering_every_output() {
        let mut e = LogEnd::default();
        let out = Event::Output {
            seq: OutputSeq(4),
            digest: 0,
        };
        e.observe(&rec(1, out));
        // A heartbeat before the halt is not the end.
        e.observe(&rec(
            2,
            Event::Heartbeat {
                released_below: OutputSeq(5),
            },
        ));
        assert_eq!(e.clean_at(), None);
        e.observe(&rec(3, Event::Halt { code: 0 }));
        // A watermark below the last output is not the end either.
        e.observe(&rec(
            4,
            Event::Heartbeat {
                released_below: OutputSeq(4),
            },
        ));
        assert_eq!(e.clean_at(), None);
        e.observe(&rec(
            5,
            Event::Heartbeat {
                released_below: OutputSeq(5),
            },
        ));
        assert_eq!(e.clean_at(), Some(5));
        // The first clean end stays.
        e.observe(&rec(
            6,
            Event::Heartbeat {
                released_below: OutputSeq(5),
            },
        ));
        assert_eq!(e.clean_at(), Some(5));
    }
}
