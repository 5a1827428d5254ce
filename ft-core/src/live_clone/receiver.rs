//! The receiving side of a live clone: pages applied as they come, then the final
//! state, checked against the clone point and the sender's digest.

use super::{CloneError, CloneMsg, PageData, Resume};
use crate::arbiter::NodeId;
use crate::event_source::{EventSource, MemoryLayout};

/// What a message came to.
#[derive(Debug)]
pub(crate) enum Received {
    /// Applied; nothing to answer.
    Applied,
    /// A round is complete: acknowledge it.
    RoundDone(u32),
    /// The clone is whole and checked: replay from the clone point.
    Complete {
        /// The engine's state at the clone point.
        resume: Resume,
        /// The machine's digest there (equal to the sender's).
        digest: u64,
    },
}

/// The receiver's state machine.
#[derive(Debug)]
pub(crate) struct CloneReceiver {
    layout: Option<MemoryLayout>,
    begun: bool,
    /// Pages written so far.
    pub(crate) pages: u64,
    /// Pages written since the last machine step.
    pub(crate) pages_this_step: u64,
}

/// Most pages a receiver writes between two machine steps before its driver stops
/// taking messages for the turn (16 MiB of 4 KiB pages): each turn stays short, so its
/// heartbeats keep going out while a large memory comes in.
pub(crate) const RECEIVE_PAGES_PER_STEP: u64 = 4_096;

impl CloneReceiver {
    pub(crate) fn new() -> CloneReceiver {
        CloneReceiver {
            layout: None,
            begun: false,
            pages: 0,
            pages_this_step: 0,
        }
    }

    /// Apply one message from the sender.
    pub(crate) fn on_message<S: EventSource>(
        &mut self,
        msg: CloneMsg,
        source: &mut S,
        me: NodeId,
        vm: u64,
    ) -> Result<Received, CloneError> {
        match msg {
            CloneMsg::Begin {
                pair,
                sender,
                layout,
            } => {
                if self.begun {
                    return Err(CloneError::Unexpected {
                        msg: "begin",
                        state: "the clone had already begun",
                    });
                }
                if sender == me {
                    return Err(CloneError::SameNode(me));
                }
                if pair.vm != vm {
                    return Err(CloneError::OtherVm {
                        ours: vm,
                        theirs: pair.vm,
                    });
                }
                let ours = source.memory_layout()?;
                if ours != layout {
                    return Err(CloneError::Layout {
                        ours,
                        theirs: layout,
                    });
                }
                self.layout = Some(layout);
                self.begun = true;
                Ok(Received::Applied)
            }
            CloneMsg::Pages { pages, .. } => {
                let layout = self.layout.ok_or(CloneError::Unexpected {
                    msg: "pages",
                    state: "the clone had not begun",
                })?;
                for p in pages {
                    if p.index >= layout.pages {
                        return Err(CloneError::BadPage {
                            index: p.index,
                            detail: format!("the machine has {} pages", layout.pages),
                        });
                    }
                    match &p.data {
                        PageData::Zero => source.zero_page(p.index)?,
                        PageData::Full(b) if b.len() == layout.page_size as usize => {
                            source.write_page(p.index, b)?
                        }
                        PageData::Full(b) => {
                            return Err(CloneError::BadPage {
                                index: p.index,
                                detail: format!(
                                    "{} bytes for a page of {}",
                                    b.len(),
                                    layout.page_size
                                ),
                            })
                        }
                    }
                    self.pages += 1;
                    self.pages_this_step += 1;
                }
                Ok(Received::Applied)
            }
            CloneMsg::RoundEnd { round } if self.begun => Ok(Received::RoundDone(round)),
            CloneMsg::Final {
                resume,
                state,
                digest,
            } if self.begun => {
                if resume.next_seq == 0 || resume.next_seq == u64::MAX {
                    return Err(CloneError::BadResume(format!(
                        "the log cannot resume at record {}",
                        resume.next_seq
                    )));
                }
                if resume.next_output == u64::MAX {
                    return Err(CloneError::BadResume(
                        "the output numbers are exhausted".into(),
                    ));
                }
                source.load_cpu_devices(&state)?;
                let found = source.point();
                if found != resume.point {
                    return Err(CloneError::PointMismatch {
                        expected: resume.point,
                        found,
                    });
                }
                if resume.pair.vm != vm {
                    return Err(CloneError::OtherVm {
                        ours: vm,
                        theirs: resume.pair.vm,
                    });
                }
                let mine = source.digest()?;
                if mine != digest {
                    return Err(CloneError::DigestMismatch {
                        sender: digest,
                        clone: mine,
                    });
                }
                Ok(Received::Complete {
                    resume,
                    digest: mine,
                })
            }
            CloneMsg::Heartbeat => Ok(Received::Applied),
            CloneMsg::Abort { reason } => Err(CloneError::Aborted(reason)),
            other => Err(CloneError::Unexpected {
                msg: other.name(),
                state: if self.begun {
                    "receiving a clone"
                } else {
                    "the clone had not begun"
                },
            }),
        }
    }
}
