//! The primary recorder: runs the machine, logs every nondeterministic event at its
//! execution point, and gates outputs. The same code runs a live side that no longer
//! logs (a primary alone, or a backup after go-live).

use crate::event_source::{EventSource, Stop};
use crate::flow_control::Throttle;
use crate::node::{
    release, Blocked, EngineError, Gated, Node, Phase, Result, StepOutcome, Transmit,
};
use crate::phase_state::Duty;
use crate::record::{AsyncEvent, Event, IoKind, Nanos, Output, OutputSeq, Record};
use crate::world::World;
use crate::{digest, ExecPoint, Notice};

impl<S: EventSource, W: World> Node<S, W> {
    fn logging(&self) -> bool {
        self.phase == Phase::Recording
    }

    /// Append a record at the machine's current point; returns its seq. `None` (and
    /// nothing logged) on a side that does not record.
    pub(crate) fn log(&mut self, event: Event, now: Nanos) -> Option<u64> {
        let (Phase::Recording, Duty::Record(rec)) = (&self.phase, &mut self.duty) else {
            return None;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        if rec.outbox.is_empty() {
            rec.outbox_since = now;
        }
        // Heartbeats carry no guest progress: a paused primary produces only them, and
        // counting them would keep it paused by their own round trip.
        let progress = !matches!(event, Event::Heartbeat { .. });
        rec.outbox.push_back(Record {
            seq,
            point: self.source.point(),
            event,
        });
        if progress {
            rec.lag.produced(seq, now);
        }
        self.heartbeat.sent(now);
        self.stats.records += 1;
        Some(seq)
    }

    /// Log the scheduled state digest at the machine's point (when logging) and move
    /// the schedule on.
    fn log_digest(&mut self, now: Nanos) -> Result<()> {
        if self.logging() {
            let value = self.source.digest()?;
            self.log(Event::Digest { value }, now);
        }
        self.next_digest =
            crate::node::next_multiple(self.source.point().count, self.cfg.digest_interval);
        Ok(())
    }

    pub(crate) fn record_step(&mut self, now: Nanos) -> Result<StepOutcome> {
        if let Some(code) = self.exited {
            return Ok(StepOutcome::Finished(code));
        }
        let mut slice = self.cfg.slice.max(1);
        if let (Phase::Recording, Duty::Record(rec)) = (&self.phase, &mut self.duty) {
            if rec.outbox.len() >= self.cfg.outbox_capacity {
                self.stats.outbox_full_steps += 1;
                return Ok(StepOutcome::Blocked(Blocked::OutboxFull));
            }
            let lag = rec.lag.lag(now);
            self.stats.max_lag = self.stats.max_lag.max(lag);
            match rec.lag.throttle(now) {
                Throttle::Full => {}
                Throttle::Slowed(f) => {
                    self.stats.slowed_steps += 1;
                    slice = (slice / f).max(1);
                }
                Throttle::Paused => {
                    self.stats.throttled_steps += 1;
                    return Ok(StepOutcome::Blocked(Blocked::Lagging));
                }
            }
        }

        // Asynchronous events are delivered between slices, at the machine's current
        // point, and logged there.
        let mut events = std::mem::take(&mut self.async_buf);
        self.world.poll(now, &mut events);
        let delivered = !events.is_empty();
        for ev in events.drain(..) {
            self.deliver_async(ev, now)?;
        }
        self.async_buf = events;

        let here = self.source.point();
        if self.next_digest == here.count {
            // The last stop (an input completed, an output or I/O start retired) landed
            // exactly on the digest point: `run` never passes `next_digest`, so this is
            // the scheduled digest, taken after the events delivered here.
            self.log_digest(now)?;
        } else if self.next_digest < here.count {
            // Coming from replay (go-live) or a restored snapshot: the schedule restarts
            // from here (a side that is live does not log).
            self.next_digest = crate::node::next_multiple(here.count, self.cfg.digest_interval);
        }
        let target = here.plus(slice).min(ExecPoint::at(self.next_digest));
        let stop = self.source.run(target)?;
        let outcome = match stop {
            Stop::Reached => {
                if self.source.point().count >= self.next_digest {
                    self.log_digest(now)?;
                }
                StepOutcome::Progressed
            }
            Stop::Input(req) => {
                let data = self.world.input(&req, now);
                if self.logging() {
                    self.log(
                        Event::Input {
                            device: req.device,
                            data: data.clone(),
                        },
                        now,
                    );
                }
                self.source.supply_input(&data)?;
                StepOutcome::Progressed
            }
            Stop::Output(raw) => {
                let out = Output {
                    seq: OutputSeq(self.next_output),
                    device: raw.device,
                    data: raw.data,
                };
                self.next_output += 1;
                self.stats.outputs += 1;
                let logged = if self.logging() {
                    self.log(
                        Event::Output {
                            seq: out.seq,
                            digest: digest::digest_bytes(&out.data),
                        },
                        now,
                    )
                } else {
                    None
                };
                match (logged, &mut self.duty) {
                    (Some(r), Duty::Record(rec)) if self.cfg.enforce_output_rule => {
                        rec.gate.hold(r, Gated::Output(out));
                        rec.flush_now = true;
                    }
                    // Live, or the output rule off (checker tests only: logged, but
                    // released now).
                    _ => {
                        self.stats.released += 1;
                        self.world.emit(&out, false, now);
                    }
                }
                StepOutcome::Progressed
            }
            Stop::IoStart(req) => {
                let r = if self.logging() {
                    self.log(
                        Event::IoStart {
                            io: req.id,
                            digest: req.digest(),
                        },
                        now,
                    )
                } else {
                    None
                };
                self.pending_io.insert(req.id, req.clone());
                if req.kind == IoKind::LocalRead {
                    self.local_reads = true;
                }
                match (req.kind, r, &mut self.duty) {
                    (IoKind::SharedWrite, Some(r), Duty::Record(rec))
                        if self.cfg.enforce_output_rule =>
                    {
                        if self.local_reads {
                            // The backup reads this disk itself when it replays earlier
                            // read completions: the write must not overtake them.
                            rec.gate.hold_until_replayed(r, Gated::Write(req));
                        } else {
                            rec.gate.hold(r, Gated::Write(req));
                        }
                        rec.flush_now = true;
                    }
                    _ => self.world.start_io(&req, now),
                }
                StepOutcome::Progressed
            }
            Stop::Idle => {
                if delivered {
                    StepOutcome::Progressed
                } else {
                    StepOutcome::Idle {
                        wake_at: self.world.next_deadline(),
                    }
                }
            }
            Stop::Halted(code) => {
                if self.logging() {
                    self.log(Event::Halt { code }, now);
                }
                self.exited = Some(code);
                self.notices.push_back((now, Notice::GuestExited { code }));
                StepOutcome::Finished(code)
            }
        };
        // With the gate open (no backup), or with acks that already arrived, outputs
        // go now.
        self.release_gated(now);
        Ok(outcome)
    }

    /// Apply an asynchronous event at the current point, logging it first.
    pub(crate) fn deliver_async(&mut self, ev: AsyncEvent, now: Nanos) -> Result<()> {
        let mut logged = None;
        if let AsyncEvent::IoComplete { io, status, .. } = &ev {
            match self.pending_io.remove(io) {
                Some(req) if req.kind == IoKind::LocalRead => {
                    // The backup reads this data from its own storage.
                    logged = Some(AsyncEvent::IoComplete {
                        io: *io,
                        status: *status,
                        data: None,
                    });
                }
                Some(_) => {}
                None => {
                    return Err(EngineError::Source(crate::SourceError::BadEvent(format!(
                        "completion for unknown I/O {}",
                        io.0
                    ))))
                }
            }
        }
        if self.logging() {
            let rec = logged.unwrap_or_else(|| ev.clone());
            self.log(Event::Async(rec), now);
        }
        self.source.inject(&ev)?;
        Ok(())
    }

    pub(crate) fn poll_transmit_records(&mut self, now: Nanos) -> Option<Transmit> {
        // Recording, or arbitrating after it (what was logged still goes out: its
        // acknowledgements release outputs).
        let Duty::Record(rec) = &self.duty else {
            return None;
        };
        if self.phase == Phase::Recording {
            let released_below = rec
                .gate
                .held()
                .find_map(|(_, g)| match g {
                    Gated::Output(o) => Some(o.seq),
                    Gated::Write(_) => None,
                })
                .unwrap_or(OutputSeq(self.next_output));
            // A heartbeat when the log is quiet; and, riding along with a batch, the
            // release watermark whenever it moved, so the backup can forget outputs
            // the outside world already has.
            let quiet = rec.outbox.is_empty() && self.heartbeat.due(now);
            let moved = released_below > rec.watermark_sent && !rec.outbox.is_empty();
            if quiet || moved {
                self.log(Event::Heartbeat { released_below }, now);
                if let Duty::Record(rec) = &mut self.duty {
                    rec.watermark_sent = released_below;
                    rec.flush_now |= quiet;
                }
            }
        }
        let Duty::Record(rec) = &mut self.duty else {
            return None;
        };
        if rec.outbox.is_empty() {
            return None;
        }
        let due = rec.flush_now
            || rec.outbox.len() >= self.cfg.max_batch
            || now.saturating_sub(rec.outbox_since) >= self.cfg.batch_delay
            || self.exited.is_some();
        if !due {
            return None;
        }
        let n = rec.outbox.len().min(self.cfg.max_batch.max(1));
        let batch: Vec<Record> = rec.outbox.drain(..n).collect();
        if rec.outbox.is_empty() {
            rec.flush_now = false;
        } else {
            rec.outbox_since = now;
        }
        self.stats.batches += 1;
        batch.iter().for_each(|r| self.end.observe(r));
        Some(Transmit::Records(batch))
    }

    /// The backup is gone and this primary won the arbiter: go on alone. What the
    /// gate held goes out now; the outbox and the lag monitor go with the recording.
    pub(crate) fn go_alone(&mut self, now: Nanos) {
        let live = Duty::Live { clone_out: None };
        let Some(old) = self.enter_with(Phase::Live, live, now) else {
            return;
        };
        let released = match old {
            Duty::Record(mut rec) => {
                let held = rec.gate.pending();
                rec.gate.open();
                release(&mut rec.gate, &mut self.world, &mut self.stats, now);
                held
            }
            _ => 0,
        };
        self.notices
            .push_back((now, Notice::WentAlone { released }));
    }
}
