//! The state each phase owns.
//!
//! A [`Node`](crate::Node) keeps what every phase needs (the machine, the world, the
//! log position, the peer's liveness) in its own fields, and what belongs to one end
//! of the log in a [`Duty`]:
//!
//! | phase | duty |
//! |---|---|
//! | `Recording` | [`Duty::Record`]: the outbox, the output gate, the lag monitor |
//! | `Replaying`, `Draining` | [`Duty::Replay`]: the inbox, the tentative outputs |
//! | `Arbitrating` | the duty of the phase it came from, kept for the verdict |
//! | `Live` | [`Duty::Live`]: a clone being sent, if any |
//! | `Receiving` | [`Duty::Receive`]: the clone receiver |
//! | `Halted` | [`Duty::Halted`]: nothing |
//!
//! So a live machine has no gate that could hold an output, a backup has no outbox, and
//! a halted node holds nothing it could release. The duty changes only in
//! [`Node::enter`](crate::Node), with the phase, and a pair that does not fit is an
//! engine bug.

use std::collections::VecDeque;

use crate::flow_control::LagMonitor;
use crate::live_clone::{CloneReceiver, CloneSender};
use crate::node::{Config, Gated, Phase};
use crate::output_gate::OutputGate;
use crate::record::{Nanos, Output, OutputSeq, Record};
use crate::ExecPoint;

/// A primary's end of the log: what it has not shipped yet, and what it holds.
#[derive(Debug)]
pub(crate) struct Recording {
    /// Records not yet handed to the channel.
    pub(crate) outbox: VecDeque<Record>,
    /// When the outbox's oldest record arrived (the batch deadline counts from it).
    pub(crate) outbox_since: Nanos,
    /// An output waits on the gate: send the batch now.
    pub(crate) flush_now: bool,
    /// Outputs and shared-disk writes held until the backup has what precedes them.
    pub(crate) gate: OutputGate<Gated>,
    /// The backup's replay lag, for the throttle.
    pub(crate) lag: LagMonitor,
    /// The release watermark last sent to the backup.
    pub(crate) watermark_sent: OutputSeq,
    /// After a clone's final pause: the digest the new backup must confirm.
    pub(crate) clone_ready: Option<u64>,
    /// Final-pause pages handed to the link since this step began
    /// ([`crate::live_clone::FINAL_PAGES_PER_STEP`]).
    pub(crate) final_pages_sent: u64,
}

impl Recording {
    /// Recording from `base` on: records up to `base` need no acknowledgement (there
    /// are none, or the backup was cloned with them), and outputs below `next_output`
    /// are already out.
    pub(crate) fn new(cfg: &Config, now: Nanos, base: u64, next_output: u64) -> Box<Self> {
        let mut gate = OutputGate::new();
        gate.on_ack(base, base);
        Box::new(Recording {
            outbox: VecDeque::new(),
            outbox_since: now,
            flush_now: false,
            gate,
            lag: LagMonitor::new(cfg.max_lag),
            watermark_sent: OutputSeq(next_output),
            clone_ready: None,
            final_pages_sent: 0,
        })
    }
}

/// A backup's end of the log: what it received and has not replayed, and the outputs
/// it would re-send if it went live.
#[derive(Debug)]
pub(crate) struct Replaying {
    /// Records received and not yet replayed.
    pub(crate) inbox: VecDeque<Record>,
    /// The point of the last record received.
    pub(crate) last_point: ExecPoint,
    /// Outputs replayed that the outside world may not have yet.
    pub(crate) tentative: VecDeque<Output>,
    /// The primary's release watermark: outputs below it are out.
    pub(crate) released_below: OutputSeq,
    /// The replay position last acknowledged.
    pub(crate) acked_replayed: u64,
    /// Records arrived that are not acknowledged yet.
    pub(crate) ack_due: bool,
}

impl Replaying {
    /// Replaying from `point`, with `replayed` records behind and outputs below
    /// `next_output` already out.
    pub(crate) fn new(point: ExecPoint, replayed: u64, next_output: u64) -> Box<Self> {
        Box::new(Replaying {
            inbox: VecDeque::new(),
            last_point: point,
            tentative: VecDeque::new(),
            released_below: OutputSeq(next_output),
            acked_replayed: replayed,
            ack_due: false,
        })
    }
}

/// What a node's phase owns. See the module docs.
#[derive(Debug)]
pub(crate) enum Duty {
    /// `Recording`, or `Arbitrating` after it.
    Record(Box<Recording>),
    /// `Replaying`, `Draining`, or `Arbitrating` after them.
    Replay(Box<Replaying>),
    /// `Live`, with the clone being sent, if any.
    Live {
        /// The clone, from [`Node::start_clone`](crate::Node::start_clone) to its
        /// final pause or abort.
        clone_out: Option<Box<CloneSender>>,
    },
    /// `Receiving`: the clone receiver.
    Receive(Box<CloneReceiver>),
    /// `Halted`.
    Halted,
}

impl Duty {
    /// Whether this duty belongs to `phase`.
    pub(crate) fn fits(&self, phase: &Phase) -> bool {
        matches!(
            (phase, self),
            (Phase::Recording, Duty::Record(_))
                | (Phase::Replaying | Phase::Draining, Duty::Replay(_))
                | (Phase::Arbitrating, Duty::Record(_) | Duty::Replay(_))
                | (Phase::Live, Duty::Live { .. })
                | (Phase::Receiving, Duty::Receive(_))
                | (Phase::Halted(_), Duty::Halted)
        )
    }

    /// The name of the duty, for an engine-bug report.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Duty::Record(_) => "record",
            Duty::Replay(_) => "replay",
            Duty::Live { .. } => "live",
            Duty::Receive(_) => "receive",
            Duty::Halted => "halted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_owns_exactly_the_documented_state() {
        let cfg = Config::default();
        let duties = [
            Duty::Record(Recording::new(&cfg, 0, 0, 0)),
            Duty::Replay(Replaying::new(ExecPoint::at(0), 0, 0)),
            Duty::Live { clone_out: None },
            Duty::Receive(Box::new(CloneReceiver::new())),
            Duty::Halted,
        ];
        let phases = crate::phase_change::tests::all();
        let mut fits = Vec::new();
        for p in &phases {
            for d in &duties {
                if d.fits(p) {
                    fits.push(format!("{p:?}/{}", d.name()));
                }
            }
        }
        assert_eq!(
            fits,
            [
                "Recording/record",
                "Replaying/replay",
                "Draining/replay",
                "Arbitrating/record",
                "Arbitrating/replay",
                "Live/live",
                "Receiving/receive",
                "Halted(Diverged(\"\"))/halted",
            ]
        );
    }

    #[test]
    fn a_recording_from_a_clone_point_needs_no_ack_for_what_came_before() {
        let r = Recording::new(&Config::default(), 5, 41, 7);
        assert_eq!(r.gate.acked(), 41);
        assert_eq!(r.watermark_sent, OutputSeq(7));
        assert_eq!(r.outbox_since, 5);
        let b = Replaying::new(ExecPoint::at(9), 41, 7);
        assert_eq!(b.released_below, OutputSeq(7));
        assert_eq!(b.acked_replayed, 41);
    }
}
