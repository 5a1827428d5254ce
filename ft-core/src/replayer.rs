//! The backup replayer: runs the machine to each record's execution point and applies
//! the record there, checking that the machine does exactly what the primary's did.

use crate::event_source::{EventSource, Stop};
use crate::node::{Blocked, EngineError, Node, Phase, Result, StepOutcome};
use crate::phase_state::Duty;
use crate::record::{AsyncEvent, Event, IoKind, Nanos, Output, OutputSeq, Record};
use crate::world::World;
use crate::{digest, Notice};

fn is_synchronous(ev: &Event) -> bool {
    matches!(
        ev,
        Event::Input { .. } | Event::Output { .. } | Event::IoStart { .. } | Event::Halt { .. }
    )
}

fn describe(ev: &Event) -> String {
    match ev {
        Event::Input { device, .. } => format!("an input from device {}", device.0),
        Event::Async(AsyncEvent::Interrupt { device }) => {
            format!("an interrupt from device {}", device.0)
        }
        Event::Async(AsyncEvent::DeviceInput { device, .. }) => {
            format!("device input to device {}", device.0)
        }
        Event::Async(AsyncEvent::IoComplete { io, .. }) => format!("completion of I/O {}", io.0),
        Event::IoStart { io, .. } => format!("the start of I/O {}", io.0),
        Event::Output { seq, .. } => format!("output #{}", seq.0),
        Event::Digest { .. } => "a state digest".into(),
        Event::Heartbeat { .. } => "a heartbeat".into(),
        Event::Halt { code } => format!("guest exit {code}"),
    }
}

fn describe_stop(stop: &Stop) -> String {
    match stop {
        Stop::Reached => "reached the point with no event".into(),
        Stop::Input(r) => format!(
            "read device {} offset {:#x} ({} bytes)",
            r.device.0, r.offset, r.size
        ),
        Stop::Output(o) => format!("produced an output on device {}", o.device.0),
        Stop::IoStart(r) => format!("started I/O {} on device {}", r.id.0, r.device.0),
        Stop::Idle => "went idle".into(),
        Stop::Halted(c) => format!("exited with code {c}"),
    }
}

impl<S: EventSource, W: World> Node<S, W> {
    fn diverged(&self, rec: &Record, detail: String) -> EngineError {
        EngineError::Divergence {
            seq: rec.seq,
            point: rec.point,
            detail,
        }
    }

    pub(crate) fn replay_step(&mut self, now: Nanos) -> Result<StepOutcome> {
        let start = self.source.point();
        let limit = start.plus(self.cfg.slice.max(1));
        let draining = self.phase == Phase::Draining;
        loop {
            let Some(rec) = self.replaying().and_then(|r| r.inbox.front().cloned()) else {
                if draining {
                    let point = self.source.point();
                    self.notices.push_back((
                        now,
                        Notice::Drained {
                            replayed: self.replayed,
                            point,
                        },
                    ));
                    self.start_arbitration(now);
                    return Ok(StepOutcome::Blocked(Blocked::Arbitrating));
                }
                if let Some(code) = self.exited {
                    return Ok(StepOutcome::Finished(code));
                }
                return Ok(StepOutcome::Blocked(Blocked::InboxEmpty));
            };
            let here = self.source.point();
            if rec.point < here {
                return Err(self.diverged(
                    &rec,
                    format!("the record's point lies behind the machine's point {here}"),
                ));
            }
            // A synchronous event happens while executing the instruction at the
            // record's point, so run one past it; the machine stops at the event.
            let want = if is_synchronous(&rec.event) {
                rec.point.plus(1)
            } else {
                rec.point
            };
            if here == rec.point && !is_synchronous(&rec.event) {
                // Already there (several records at one point, or after the guest
                // exited): apply without running.
                self.apply_at_point(&rec)?;
                self.replayed_one();
                continue;
            }
            if want > limit && here >= limit {
                return Ok(StepOutcome::Progressed);
            }
            let target = want.min(limit.max(here));
            let stop = self.source.run(target)?;
            let at = self.source.point();
            match stop {
                Stop::Reached if at == rec.point && !is_synchronous(&rec.event) => {
                    self.apply_at_point(&rec)?;
                }
                // The slice ended before the record's point.
                Stop::Reached if target < want && at == target => {
                    return Ok(StepOutcome::Progressed)
                }
                Stop::Input(req) if at == rec.point => match &rec.event {
                    Event::Input { device, data } if *device == req.device => {
                        let data = data.clone();
                        self.source.supply_input(&data)?;
                    }
                    other => {
                        return Err(self.diverged(
                            &rec,
                            format!(
                                "the log has {} but the machine read device {} offset {:#x}",
                                describe(other),
                                req.device.0,
                                req.offset
                            ),
                        ))
                    }
                },
                Stop::Output(raw) if at == rec.point => match &rec.event {
                    Event::Output { seq, digest: d }
                        if *seq == OutputSeq(self.next_output)
                            && *d == digest::digest_bytes(&raw.data) =>
                    {
                        self.next_output += 1;
                        self.stats.outputs += 1;
                        let out = Output {
                            seq: *seq,
                            device: raw.device,
                            data: raw.data,
                        };
                        self.world.replayed_output(&out);
                        if let Duty::Replay(r) = &mut self.duty {
                            r.tentative.push_back(out);
                        }
                    }
                    other => {
                        return Err(self.diverged(
                            &rec,
                            format!(
                                "the log has {} but the machine produced output #{} ({} bytes on device {}) with different content or number",
                                describe(other),
                                self.next_output,
                                raw.data.len(),
                                raw.device.0
                            ),
                        ))
                    }
                },
                Stop::IoStart(req) if at == rec.point => match &rec.event {
                    Event::IoStart { io, digest: d } if *io == req.id && *d == req.digest() => {
                        if req.kind == IoKind::PrivateWrite {
                            self.world.apply_private_write(&req);
                        }
                        self.pending_io.insert(req.id, req);
                    }
                    other => {
                        return Err(self.diverged(
                            &rec,
                            format!(
                                "the log has {} but the machine started I/O {} (op {}, offset {:#x}, {} bytes) with a different request",
                                describe(other),
                                req.id.0,
                                req.op,
                                req.offset,
                                req.len
                            ),
                        ))
                    }
                },
                Stop::Halted(code) if at == rec.point => match &rec.event {
                    Event::Halt { code: c } if *c == code => {
                        self.exited = Some(code);
                        self.notices.push_back((now, Notice::GuestExited { code }));
                    }
                    other => {
                        return Err(self.diverged(
                            &rec,
                            format!("the log has {} but the guest exited with {code}", describe(other)),
                        ))
                    }
                },
                other => {
                    return Err(self.diverged(
                        &rec,
                        format!(
                            "the log has {} here, but at {at} the machine {}",
                            describe(&rec.event),
                            describe_stop(&other)
                        ),
                    ))
                }
            }
            self.replayed_one();
            if !draining && self.source.point() >= limit {
                return Ok(StepOutcome::Progressed);
            }
        }
    }

    /// The inbox's first record is replayed.
    fn replayed_one(&mut self) {
        if let Duty::Replay(r) = &mut self.duty {
            if let Some(rec) = r.inbox.pop_front() {
                self.replayed = rec.seq;
                self.stats.replayed += 1;
            }
        }
    }

    /// Apply a record whose point the machine has just reached.
    fn apply_at_point(&mut self, rec: &Record) -> Result<()> {
        match &rec.event {
            Event::Async(ev) => {
                let ev = match ev {
                    AsyncEvent::IoComplete { io, status, data } => {
                        let Some(req) = self.pending_io.remove(io) else {
                            return Err(self.diverged(
                                rec,
                                format!(
                                    "completion of I/O {} that the machine never started",
                                    io.0
                                ),
                            ));
                        };
                        match (data, req.kind) {
                            (None, IoKind::LocalRead) => AsyncEvent::IoComplete {
                                io: *io,
                                status: *status,
                                data: Some(self.world.read_local(&req)),
                            },
                            _ => ev.clone(),
                        }
                    }
                    _ => ev.clone(),
                };
                self.source.inject(&ev).map_err(|e| {
                    self.diverged(
                        rec,
                        format!("the machine refused {}: {e}", describe(&rec.event)),
                    )
                })?;
            }
            Event::Digest { value } => {
                let mine = self.source.digest()?;
                self.stats.digests_checked += 1;
                if mine != *value {
                    return Err(self.diverged(
                        rec,
                        format!(
                            "state digest mismatch: primary {value:#018x}, backup {mine:#018x}"
                        ),
                    ));
                }
            }
            Event::Heartbeat { released_below } => {
                if let Duty::Replay(r) = &mut self.duty {
                    r.released_below = r.released_below.max(*released_below);
                    while matches!(r.tentative.front(), Some(o) if o.seq < r.released_below) {
                        r.tentative.pop_front();
                    }
                }
            }
            Event::Input { .. }
            | Event::Output { .. }
            | Event::IoStart { .. }
            | Event::Halt { .. } => {
                // Callers route synchronous records elsewhere.
                return Err(self.diverged(rec, "synchronous record applied as asynchronous".into()));
            }
        }
        Ok(())
    }
}
