//! The sending side of a live clone: pre-copy rounds, the convergence rule and the
//! final pause's messages.

use bytes::{Bytes, BytesMut};

use super::{CloneConfig, CloneError, CloneMsg, PageCopy, PageData, Resume};
use crate::arbiter::{NodeId, PairId};
use crate::event_source::{EventSource, MemoryLayout};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Begin` is still to go.
    Begin,
    /// Pages of the current round are going out.
    Sending,
    /// `RoundEnd` went out; waiting for its acknowledgement.
    AwaitAck,
    /// Pre-copy converged: the guest runs one more slice (the memory the pause copies
    /// into was just faulted in, outside the pause), then the final pause.
    FinalNext,
    /// The next machine step is the final pause.
    FinalDue,
    /// The final messages were made.
    Done,
}

/// What a finished clone sent, for notices and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Summary {
    /// Pre-copy rounds, round 0 included.
    pub(crate) rounds: u32,
    /// Pages sent in the final pause.
    pub(crate) final_pages: u64,
    /// Pages sent in all (zero pages included).
    pub(crate) pages: u64,
    /// Bytes of page data and state sent.
    pub(crate) bytes: u64,
    /// Pages a pre-copy round left out because the guest had written them since the
    /// round began (a later round or the final pause sent them).
    pub(crate) deferred: u64,
}

/// The sender's state machine. It reads the machine only when asked for a message,
/// so a page is always sent as it is at that moment.
#[derive(Debug)]
pub(crate) struct CloneSender {
    cfg: CloneConfig,
    pair: PairId,
    me: NodeId,
    layout: MemoryLayout,
    state: State,
    round: u32,
    to_send: Vec<u64>,
    cursor: usize,
    previous_dirty: u64,
    summary: Summary,
    /// Memory the next pages are read into (made ready before the final pause).
    spare: BytesMut,
    /// Pages read from the machine since the last machine step.
    read_this_step: u64,
}

impl CloneSender {
    /// Start: check the machine and the parameters, start dirty tracking, and plan
    /// round 0 (every page).
    pub(crate) fn start<S: EventSource>(
        cfg: CloneConfig,
        pair: PairId,
        me: NodeId,
        source: &mut S,
    ) -> Result<CloneSender, CloneError> {
        let layout = source.memory_layout()?;
        cfg.validate(&layout)?;
        source.start_dirty_log()?;
        Ok(CloneSender {
            cfg,
            pair,
            me,
            layout,
            state: State::Begin,
            round: 0,
            to_send: (0..layout.pages).collect(),
            cursor: 0,
            previous_dirty: layout.pages,
            summary: Summary::default(),
            spare: BytesMut::new(),
            read_this_step: 0,
        })
    }

    /// The pair the clone belongs to.
    pub(crate) fn pair(&self) -> PairId {
        self.pair
    }

    /// Pages in the machine.
    pub(crate) fn pages(&self) -> u64 {
        self.layout.pages
    }

    /// Whether pre-copy converged and the final pause is due.
    pub(crate) fn final_due(&self) -> bool {
        self.state == State::FinalDue
    }

    /// A machine step begins: the page budget starts again, and a clone that
    /// converged before it pauses at the step after it.
    pub(crate) fn step_begins(&mut self) {
        self.read_this_step = 0;
        if self.state == State::FinalNext {
            self.state = State::FinalDue;
        }
    }

    /// The pages as they are now: each read straight into one buffer for the whole
    /// chunk, the pages of which share it. In a pre-copy round (`precopy`), a page the
    /// guest wrote since the round began is left out: the round's dirty set holds it,
    /// so the next round or the final pause sends it, and sending it now would only
    /// send it twice.
    fn read_chunk<S: EventSource>(
        &mut self,
        source: &S,
        pages: &[u64],
        precopy: bool,
    ) -> Result<Vec<PageCopy>, CloneError> {
        let size = self.layout.page_size as usize;
        // The final pause reads into memory made ready before it (see `spare`).
        let mut chunk = std::mem::take(&mut self.spare);
        // (index, offset of its data in `chunk`, or None for a zero page)
        let mut read = Vec::with_capacity(pages.len());
        for &index in pages {
            if precopy && self.cfg.defer_dirty && source.page_dirty_now(index) {
                self.summary.deferred += 1;
                continue;
            }
            // A page the machine knows is zero is not even read.
            if source.page_is_zero(index) {
                read.push((index, None));
                continue;
            }
            let at = chunk.len();
            chunk.resize(at + size, 0);
            source.read_page(index, &mut chunk[at..])?;
            if is_zero(&chunk[at..]) {
                chunk.truncate(at);
                read.push((index, None));
            } else {
                read.push((index, Some(at)));
            }
            self.read_this_step += 1;
        }
        self.spare = chunk.split_off(chunk.len());
        let chunk = chunk.freeze();
        self.summary.pages += read.len() as u64;
        self.summary.bytes += chunk.len() as u64;
        Ok(read
            .into_iter()
            .map(|(index, at)| PageCopy {
                index,
                data: match at {
                    Some(at) => PageData::Full(chunk.slice(at..at + size)),
                    None => PageData::Zero,
                },
            })
            .collect())
    }

    /// The next message of pre-copy, if one is due now.
    pub(crate) fn next_message<S: EventSource>(
        &mut self,
        source: &S,
    ) -> Result<Option<CloneMsg>, CloneError> {
        match self.state {
            State::Begin => {
                self.state = State::Sending;
                Ok(Some(CloneMsg::Begin {
                    pair: self.pair,
                    sender: self.me,
                    layout: self.layout,
                }))
            }
            // This step's budget is spent: more after the next machine step.
            State::Sending
                if self.cursor < self.to_send.len()
                    && self.read_this_step >= self.cfg.pages_per_step =>
            {
                Ok(None)
            }
            State::Sending if self.cursor < self.to_send.len() => {
                // Chunks whose pages were all left out (written meanwhile) make no
                // message.
                loop {
                    let end = (self.cursor + self.cfg.chunk_pages).min(self.to_send.len());
                    let pages = self.to_send[self.cursor..end].to_vec();
                    self.cursor = end;
                    let pages = self.read_chunk(source, &pages, true)?;
                    if !pages.is_empty() {
                        return Ok(Some(CloneMsg::Pages {
                            round: self.round,
                            pages,
                        }));
                    }
                    if self.cursor >= self.to_send.len()
                        || self.read_this_step >= self.cfg.pages_per_step
                    {
                        return self.next_message(source);
                    }
                }
            }
            State::Sending => {
                self.state = State::AwaitAck;
                Ok(Some(CloneMsg::RoundEnd { round: self.round }))
            }
            State::AwaitAck | State::FinalNext | State::FinalDue | State::Done => Ok(None),
        }
    }

    /// The receiver applied a round: take the dirty set and decide between another
    /// round and the final pause.
    pub(crate) fn on_round_ack<S: EventSource>(
        &mut self,
        round: u32,
        source: &mut S,
    ) -> Result<(u32, u64), CloneError> {
        if self.state != State::AwaitAck || round != self.round {
            return Err(CloneError::Unexpected {
                msg: "round-ack",
                state: "no round was awaiting its acknowledgement",
            });
        }
        let mut dirty = Vec::new();
        source.take_dirty_pages(&mut dirty)?;
        let n = dirty.len() as u64;
        let rounds_done = self.round + 1;
        let converged = n <= self.cfg.converge_pages
            || rounds_done >= self.cfg.max_rounds
            || (self.round >= 1 && n >= self.previous_dirty);
        self.previous_dirty = n;
        self.to_send = dirty;
        self.cursor = 0;
        if converged {
            self.state = State::FinalNext;
            // Fault in, now, the memory the final pause will copy the last dirty
            // pages into (about as many as this round found, and some), so that the
            // pause copies into memory that is there already.
            let bytes = (n as usize)
                .saturating_add(n as usize / 8 + self.cfg.chunk_pages)
                .saturating_mul(self.layout.page_size as usize)
                .min(self.layout.pages as usize * self.layout.page_size as usize);
            let mut spare = BytesMut::with_capacity(bytes);
            spare.resize(bytes, 0);
            spare.clear();
            self.spare = spare;
        } else {
            self.round += 1;
            self.state = State::Sending;
        }
        Ok((round, n))
    }

    /// The final pause: the pages dirtied since the last round (and those that round
    /// left), the CPU and device state and the digest, as the messages to send in
    /// order. Dirty tracking stops.
    pub(crate) fn finish<S: EventSource>(
        &mut self,
        source: &mut S,
        resume: Resume,
    ) -> Result<(Vec<CloneMsg>, u64, Summary), CloneError> {
        if !matches!(self.state, State::FinalNext | State::FinalDue) {
            return Err(CloneError::Unexpected {
                msg: "final",
                state: "pre-copy has not converged",
            });
        }
        let mut dirty = std::mem::take(&mut self.to_send);
        source.take_dirty_pages(&mut dirty)?;
        dirty.sort_unstable();
        dirty.dedup();
        let round = self.round + 1;
        let mut msgs = Vec::with_capacity(dirty.len() / self.cfg.chunk_pages + 2);
        for chunk in dirty.chunks(self.cfg.chunk_pages) {
            let pages = self.read_chunk(source, chunk, false)?;
            msgs.push(CloneMsg::Pages { round, pages });
        }
        let state = source.save_cpu_devices()?;
        let digest = source.digest()?;
        source.stop_dirty_log();
        self.summary.bytes += state.len() as u64;
        self.summary.rounds = round + 1;
        self.summary.final_pages = dirty.len() as u64;
        msgs.push(CloneMsg::Final {
            resume,
            state: Bytes::from(state),
            digest,
        });
        self.state = State::Done;
        Ok((msgs, digest, self.summary))
    }
}

/// Whether every byte is zero, a word at a time.
fn is_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&x| x == 0) && words.into_iter().all(|w| *w == [0u8; 8])
}
