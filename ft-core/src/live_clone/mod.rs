//! Live clone: a new backup made from a running machine, so that a pair that lost a
//! member becomes a pair again (mechanism 10 of the design: VMware's FT VMotion).
//!
//! The machine being cloned keeps running, live, while its memory goes across by
//! iterative pre-copy, as in cloud-hypervisor's `vm-migration` and QEMU's migration:
//!
//! 1. **Round 0** sends every page (a page of zeros as a marker, as QEMU skips zero
//!    pages), with dirty-page tracking started just before, so any page the guest
//!    writes after it was read is sent again later.
//! 2. **Rounds 1..** send the pages dirtied during the previous round. Each round ends
//!    with [`CloneMsg::RoundEnd`] and waits for the receiver's
//!    [`CloneMsg::RoundAck`], so rounds are paced by the link.
//! 3. **Convergence.** After a round's acknowledgement the sender looks at the dirty
//!    set: at most [`CloneConfig::converge_pages`] pages, no smaller than the
//!    previous round's (the guest dirties memory as fast as it is sent), or
//!    [`CloneConfig::max_rounds`] reached, and the next step of the machine is the
//!    **final pause** instead of a guest slice.
//! 4. **The final pause**, between two guest slices, at the clone point `P`: the last
//!    dirty pages, then the CPU and device state and a digest of the whole machine
//!    ([`CloneMsg::Final`], with [`Resume`]: the pair's new generation, `P`, the next
//!    record and output numbers and the I/O in flight). The machine resumes at once,
//!    now as a recording primary: from `P` on every event is logged to the new
//!    backup, and every output waits at the gate for its acknowledgement. The pause
//!    costs the guest only the reading of those pages; the transfer is not waited for.
//! 5. **The receiver** writes pages as they come, loads the final state, checks that
//!    its point is `P` and that its digest equals the sender's, answers
//!    [`CloneMsg::Ready`] and replays the log from `P` on.
//!
//! Failure rules:
//!
//! * A clone that fails before the final pause (the receiver is silent past the peer
//!   timeout, the link breaks, the receiver refuses, the guest ends, a page cannot be
//!   read) is abandoned: the machine keeps running alone, unharmed, and may try again.
//! * After the final pause the new backup is an ordinary backup: if it fails, the
//!   primary's failure detector fires and the arbiter decides, in the new generation.
//! * A receiver that has not loaded a whole, digest-checked state never goes live: it
//!   halts ([`crate::HaltReason::CloneFailed`]) when the sender goes silent or
//!   anything is wrong.
//!
//! The state machines here are sans-I/O: [`crate::Node`] holds them, the driver loop
//! carries their messages as frames of the log link ([`crate::log_codec`]), and the
//! machine is reached through [`crate::EventSource`]'s state-transfer methods.

mod glue;
mod receiver;
mod sender;

pub(crate) use receiver::{CloneReceiver, Received, RECEIVE_PAGES_PER_STEP};

/// After a final pause, the most final pages handed to the link per machine step (1
/// MiB of 4 KiB pages): the guest runs again once the last dirty pages are read, and
/// their encoding and sending is spread over the steps that follow, ahead of every
/// record, instead of lengthening the pause.
pub(crate) const FINAL_PAGES_PER_STEP: u64 = 256;
pub(crate) use sender::CloneSender;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::arbiter::{NodeId, PairId};
use crate::event_source::{MemoryLayout, SourceError};
use crate::record::IoRequest;
use crate::ExecPoint;

/// How a clone is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneConfig {
    /// Pages per [`CloneMsg::Pages`] frame.
    pub chunk_pages: usize,
    /// A dirty set of at most this many pages ends pre-copy: the most memory the
    /// final pause copies out while the guest is stopped (default 2,560 pages, 10 MiB
    /// of 4 KiB pages: about 3.5 µs a page for the sim machine over TCP on a 2-core
    /// host, so a pause under 10 ms). Smaller makes the pause shorter and the clone
    /// longer; QEMU's equivalent is its downtime limit (300 ms by default).
    pub converge_pages: u64,
    /// Most pre-copy rounds, round 0 (the full copy) included; then the final pause
    /// comes whatever the dirty set.
    pub max_rounds: u32,
    /// Most pages pre-copy reads from the machine between two machine steps (default
    /// 4,096, 16 MiB; pages the machine knows are zero cost nothing and do not count).
    /// It keeps each turn of the driver short, so that the guest keeps running and
    /// both sides keep hearing each other while a large memory goes across.
    pub pages_per_step: u64,
    /// Leave out of a pre-copy round the pages the guest wrote since the round began
    /// (default true; it needs a machine that says so,
    /// [`crate::EventSource::page_dirty_now`]): the round's dirty set holds them, so
    /// the next round or the final pause sends them, and a page the guest keeps
    /// writing crosses once instead of once per round.
    pub defer_dirty: bool,
}

impl Default for CloneConfig {
    fn default() -> Self {
        CloneConfig {
            chunk_pages: 64,
            converge_pages: 2_560,
            max_rounds: 30,
            pages_per_step: 4_096,
            defer_dirty: true,
        }
    }
}

impl CloneConfig {
    /// Check the parameters against a memory layout.
    ///
    /// # Errors
    ///
    /// [`CloneError::Config`] when a count is zero or a frame of pages would exceed
    /// the log codec's payload limit.
    pub fn validate(&self, layout: &MemoryLayout) -> Result<(), CloneError> {
        if self.chunk_pages == 0 {
            return Err(CloneError::Config("chunk_pages must be above 0".into()));
        }
        if self.max_rounds == 0 {
            return Err(CloneError::Config("max_rounds must be above 0".into()));
        }
        if self.pages_per_step == 0 {
            return Err(CloneError::Config("pages_per_step must be above 0".into()));
        }
        if layout.page_size == 0 || !layout.page_size.is_power_of_two() {
            return Err(CloneError::Config(format!(
                "the machine's page size {} is not a power of two",
                layout.page_size
            )));
        }
        let chunk = (self.chunk_pages as u64).saturating_mul(u64::from(layout.page_size) + 16);
        if chunk > (crate::log_codec::DEFAULT_MAX_PAYLOAD / 2) as u64 {
            return Err(CloneError::Config(format!(
                "{} pages of {} bytes per frame exceed the frame limit",
                self.chunk_pages, layout.page_size
            )));
        }
        Ok(())
    }
}

/// The content of one page in a [`CloneMsg::Pages`] frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageData {
    /// Every byte is zero.
    Zero,
    /// The page's bytes, exactly one page long.
    Full(Bytes),
}

/// One page of guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCopy {
    /// Page number ([`MemoryLayout`]).
    pub index: u64,
    /// Its content.
    pub data: PageData,
}

/// Where the new backup's replay starts: the engine's state at the clone point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The pair from the clone point on: the protected VM, in a new generation.
    pub pair: PairId,
    /// The sender, the new pair's primary.
    pub primary: NodeId,
    /// The clone point: the machine's execution point at the final pause.
    pub point: ExecPoint,
    /// The first record of the log after the clone point.
    pub next_seq: u64,
    /// The sequence number of the next output; every earlier one was released.
    pub next_output: u64,
    /// I/O started before the clone point and not completed at it; their completions
    /// come as records.
    pub pending_io: Vec<IoRequest>,
}

/// A clone message as it crosses the link: numbered from 0 in each direction of each
/// clone, so that a lost, repeated or reordered message (a link that reconnected and
/// resumed only its records, say) is detected at the next message, a heartbeat at
/// the latest, and ends the clone instead of stalling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneFrame {
    /// The message's number in its direction.
    pub n: u64,
    /// The message.
    pub msg: CloneMsg,
}

/// A message of the clone protocol, carried as a frame of the log link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloneMsg {
    /// Sender to receiver, first: who clones what.
    Begin {
        /// The pair the clone will belong to (the new generation).
        pair: PairId,
        /// The sender.
        sender: NodeId,
        /// The sender's memory layout; the receiver's must be the same.
        layout: MemoryLayout,
    },
    /// Sender to receiver: pages of a round.
    Pages {
        /// The round (0: the full copy).
        round: u32,
        /// The pages.
        pages: Vec<PageCopy>,
    },
    /// Sender to receiver: the round's pages were all sent.
    RoundEnd {
        /// The round.
        round: u32,
    },
    /// Receiver to sender: every page of the round was applied.
    RoundAck {
        /// The round.
        round: u32,
    },
    /// Sender to receiver: the state at the clone point. The log follows it.
    Final {
        /// The engine's state.
        resume: Resume,
        /// The CPU and device state ([`crate::EventSource::save_cpu_devices`]).
        state: Bytes,
        /// The whole machine's digest at the clone point.
        digest: u64,
    },
    /// Receiver to sender: the clone is whole and its digest is the sender's.
    Ready {
        /// The receiver's digest at the clone point.
        digest: u64,
    },
    /// Either way: the clone is abandoned.
    Abort {
        /// Why.
        reason: String,
    },
    /// Either way, when nothing else went out for a heartbeat interval.
    Heartbeat,
}

impl CloneMsg {
    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            CloneMsg::Begin { .. } => "begin",
            CloneMsg::Pages { .. } => "pages",
            CloneMsg::RoundEnd { .. } => "round-end",
            CloneMsg::RoundAck { .. } => "round-ack",
            CloneMsg::Final { .. } => "final",
            CloneMsg::Ready { .. } => "ready",
            CloneMsg::Abort { .. } => "abort",
            CloneMsg::Heartbeat => "heartbeat",
        }
    }

    /// About how many bytes the message takes encoded (at least its page data and
    /// state), to size a buffer once.
    pub fn size_hint(&self) -> usize {
        match self {
            CloneMsg::Pages { pages, .. } => pages
                .iter()
                .map(|p| {
                    16 + match &p.data {
                        PageData::Zero => 0,
                        PageData::Full(b) => b.len(),
                    }
                })
                .sum(),
            CloneMsg::Final { state, resume, .. } => {
                64 + state.len() + resume.pending_io.len() * 64
            }
            _ => 64,
        }
    }
}

/// Errors of live clone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneError {
    /// Only a live machine (alone, unprotected, or a backup that went live) is cloned.
    #[error("only a live machine can be cloned (this one is {0})")]
    NotLive(String),
    /// A clone is already being sent.
    #[error("a clone is already in progress")]
    AlreadyCloning,
    /// The guest has ended: there is nothing left to protect.
    #[error("the guest has ended")]
    GuestEnded,
    /// The new pair must be the same VM in a later generation.
    #[error("a clone of vm {vm} generation {current} must go to a later generation of the same vm, not vm {proposed_vm} generation {proposed}")]
    Generation {
        /// The VM.
        vm: u64,
        /// Its generation now.
        current: u64,
        /// The VM proposed.
        proposed_vm: u64,
        /// The generation proposed.
        proposed: u64,
    },
    /// The parameters are out of range.
    #[error("clone configuration: {0}")]
    Config(String),
    /// The two machines' memories differ in shape.
    #[error("memory layout mismatch: the sender has {theirs}, this machine {ours}")]
    Layout {
        /// This machine's.
        ours: MemoryLayout,
        /// The sender's.
        theirs: MemoryLayout,
    },
    /// The clone would belong to another VM.
    #[error("the sender clones vm {theirs}, this node protects vm {ours}")]
    OtherVm {
        /// This node's VM.
        ours: u64,
        /// The sender's.
        theirs: u64,
    },
    /// The sender has this node's own id.
    #[error("the sender has this node's own id ({0})")]
    SameNode(NodeId),
    /// A message that does not fit where the protocol is.
    #[error("unexpected clone message {msg} while {state}")]
    Unexpected {
        /// The message.
        msg: &'static str,
        /// Where the protocol was.
        state: &'static str,
    },
    /// A page number beyond memory, or a page of the wrong size.
    #[error("bad page {index}: {detail}")]
    BadPage {
        /// The page.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// The engine state at the clone point is impossible.
    #[error("bad resume state: {0}")]
    BadResume(String),
    /// The loaded state is not at the clone point.
    #[error("the clone's state is at {found}, the clone point is {expected}")]
    PointMismatch {
        /// The clone point.
        expected: ExecPoint,
        /// Where the loaded machine is.
        found: ExecPoint,
    },
    /// The clone's digest differs from the sender's: the copy is not exact.
    #[error("CLONE DIGEST MISMATCH: sender {sender:#018x}, clone {clone:#018x}")]
    DigestMismatch {
        /// The sender's digest at the clone point.
        sender: u64,
        /// The clone's.
        clone: u64,
    },
    /// The peer abandoned the clone.
    #[error("the peer abandoned the clone: {0}")]
    Aborted(String),
    /// A message was lost, repeated or reordered on the way.
    #[error("clone message {found} arrived where {expected} was due: the link lost or reordered clone frames")]
    Sequence {
        /// The number due.
        expected: u64,
        /// The number that arrived.
        found: u64,
    },
    /// The peer went silent or the link broke.
    #[error("the peer is gone: {0}")]
    PeerLost(String),
    /// The machine failed a state-transfer call.
    #[error("machine: {0}")]
    Source(#[from] SourceError),
}
