//! A readable line for every [`Notice`], for runtimes, demos and logs (no timestamp:
//! the caller has the notice's time).

use std::fmt;

use crate::node::Notice;

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::PeerSuspected { last_heard } => {
                write!(f, "peer declared dead (last heard at {last_heard} ns)")
            }
            Notice::Drained { replayed, point } => write!(
                f,
                "drained the log: {replayed} records replayed, at instruction {}",
                point.count
            ),
            Notice::ArbiterUnreachable { attempt, error } => {
                write!(f, "arbiter unreachable (attempt {attempt}): {error}")
            }
            Notice::ArbiterWon { token } => write!(f, "won the arbiter (fencing token {token})"),
            Notice::ArbiterLost { winner } => write!(f, "lost the arbiter to node {}", winner.0),
            Notice::WentAlone { released } => write!(
                f,
                "going on alone, unprotected; released {released} held outputs"
            ),
            Notice::WentLive {
                reissued_io,
                resent_outputs,
                point,
            } => write!(
                f,
                "LIVE at instruction {}: re-issued {reissued_io} pending I/O, re-sent {resent_outputs} outputs",
                point.count
            ),
            Notice::Diverged(d) => write!(f, "{d}"),
            Notice::GuestExited { code } => write!(f, "guest exited with code {code}"),
            Notice::CloneStarted { pair, pages } => write!(
                f,
                "clone started for vm {} generation {} ({pages} pages)",
                pair.vm, pair.generation
            ),
            Notice::CloneRound { round, dirty } => write!(
                f,
                "clone round {round} applied; {dirty} pages dirtied meanwhile"
            ),
            Notice::ClonePaused {
                point,
                rounds,
                final_pages,
                pages,
                bytes,
                ..
            } => write!(
                f,
                "clone final pause at instruction {} after {rounds} rounds ({final_pages} pages in the pause, {pages} pages and {bytes} bytes in all); recording for the new backup",
                point.count
            ),
            Notice::CloneComplete { digest } => write!(
                f,
                "the new backup confirmed the clone (digest {digest:#018x}): protected again"
            ),
            Notice::CloneAborted { reason } => {
                write!(f, "clone abandoned, going on as before: {reason}")
            }
            Notice::CloneReceived {
                pair,
                point,
                digest,
            } => write!(
                f,
                "clone received and checked at instruction {} (digest {digest:#018x}); replaying as the backup of generation {}",
                point.count, pair.generation
            ),
            Notice::CloneFailed { reason } => write!(f, "clone FAILED, halting: {reason}"),
        }
    }
}
