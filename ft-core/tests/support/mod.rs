//! Test support for the engine's own tests: a scripted machine, a scripted world, and
//! an in-memory driver that wires a primary and a backup [`Node`] on a virtual clock.
//!
//! * [`ScriptedSource`] is an [`EventSource`] whose behaviour is a [`Script`]: a list
//!   of `(point, ScriptStop)` events. Between events it just counts instructions. Its
//!   digest hashes the count and everything supplied or injected so far, and its
//!   outputs and I/O requests carry bytes derived from that state, so a replay that
//!   applies anything differently diverges visibly.
//! * [`ScriptedWorld`] is a [`World`] with seeded inputs, scheduled asynchronous
//!   events, a periodic timer, I/O completions for the I/O it started, and a record of
//!   every call the engine made on it (and of every call made on the wrong side).
//! * [`Pair`] moves `poll_transmit` results between the two nodes, answers
//!   `poll_command` with an [`InProcessArbiter`] (which can be made unreachable, or
//!   silenced), and collects notices and errors.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ft_core::digest::StateHasher;
use ft_core::{
    Ack, Arbiter, AsyncEvent, Command, Config, DeviceId, EngineError, EventSource, ExecPoint,
    InProcessArbiter, InputRequest, IoId, IoKind, IoRequest, Nanos, Node, NodeId, Notice, Output,
    PairId, RawOutput, Record, SourceError, SourceResult, StepOutcome, Stop, Transmit, World,
};
use serde::{Deserialize, Serialize};

/// Device the scripted machine reads its inputs from.
pub const DEV_INPUT: u16 = 1;
/// Device the scripted machine writes its outputs to.
pub const DEV_OUTPUT: u16 = 2;
/// Device the scripted machine starts its I/O on.
pub const DEV_DISK: u16 = 3;
/// Device of the world's timer interrupts.
pub const DEV_TIMER: u16 = 4;
/// Device of unsolicited device input (packets).
pub const DEV_NIC: u16 = 5;

/// What the scripted machine does at a point of its script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptStop {
    /// The instruction at the point reads a nondeterministic value: `run` stops with
    /// [`Stop::Input`] at the point (before the instruction completes), and
    /// `supply_input` completes it (the count advances by one).
    Input {
        /// Access size in bytes (1 to 8).
        size: u8,
    },
    /// The instruction that retires at the point produces an output.
    Output,
    /// The instruction that retires at the point starts an I/O of this kind.
    IoStart {
        /// How replication treats it.
        kind: IoKind,
    },
    /// The instruction that retires at the point waits for an interrupt: the machine
    /// does not advance past the point until an asynchronous event is injected.
    Idle,
    /// The instruction that retires at the point ends the guest.
    Halt {
        /// The exit code.
        code: u64,
    },
    /// The backend fails on reaching the point (a hypervisor error).
    Fail,
}

/// A deterministic script: events at strictly increasing points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    events: Vec<(u64, ScriptStop)>,
}

impl Script {
    /// A script of `events`. Panics unless points strictly increase, every event other
    /// than an input lies at a point of at least 1 (it follows an instruction), and no
    /// event retires at `P + 1` after an input at `P` (that instruction is the read).
    pub fn new(events: Vec<(u64, ScriptStop)>) -> Script {
        let mut prev: Option<&(u64, ScriptStop)> = None;
        for ev in &events {
            let (p, e) = ev;
            let is_input = matches!(e, ScriptStop::Input { .. });
            assert!(
                prev.is_none_or(|(q, _)| *p > *q),
                "script points must increase"
            );
            assert!(*p >= 1 || is_input, "only an input can lie at point 0");
            if let Some((q, ScriptStop::Input { .. })) = prev {
                assert!(
                    is_input || *p > q + 1,
                    "an event at {p} would retire with the read at {q}"
                );
            }
            prev = Some(ev);
        }
        Script { events }
    }

    /// The events.
    pub fn events(&self) -> &[(u64, ScriptStop)] {
        &self.events
    }

    /// The kind of the I/O with this id (ids are given in script order, from 1).
    pub fn io_kind(&self, id: IoId) -> Option<IoKind> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                ScriptStop::IoStart { kind } => Some(*kind),
                _ => None,
            })
            .nth(usize::try_from(id.0.checked_sub(1)?).ok()?)
    }

    /// The point of the last event, if any.
    pub fn end(&self) -> Option<u64> {
        self.events.last().map(|(p, _)| *p)
    }
}

/// `(point, Input of 8 bytes)`.
pub fn input(p: u64) -> (u64, ScriptStop) {
    (p, ScriptStop::Input { size: 8 })
}
/// `(point, Output)`.
pub fn output(p: u64) -> (u64, ScriptStop) {
    (p, ScriptStop::Output)
}
/// `(point, IoStart of kind)`.
pub fn io(p: u64, kind: IoKind) -> (u64, ScriptStop) {
    (p, ScriptStop::IoStart { kind })
}
/// `(point, Idle)`.
pub fn idle(p: u64) -> (u64, ScriptStop) {
    (p, ScriptStop::Idle)
}
/// `(point, Halt)`.
pub fn halt(p: u64, code: u64) -> (u64, ScriptStop) {
    (p, ScriptStop::Halt { code })
}
/// `(point, Fail)`.
pub fn fail(p: u64) -> (u64, ScriptStop) {
    (p, ScriptStop::Fail)
}

fn op_of(kind: IoKind) -> u32 {
    match kind {
        IoKind::Request => 1,
        IoKind::SharedWrite => 2,
        IoKind::PrivateWrite => 3,
        IoKind::LocalRead => 4,
    }
}

fn hash2(a: u64, b: u64) -> u64 {
    let mut h = StateHasher::new();
    h.write_u64(a);
    h.write_u64(b);
    h.finish()
}

/// The bytes a disk holds for `req`: the same on every side, so a backup that reads
/// its own copy ([`IoKind::LocalRead`]) gets what the primary's DMA delivered.
pub fn disk_data(req: &IoRequest) -> Bytes {
    let a = hash2(req.id.0, req.offset);
    let b = hash2(a, u64::from(req.len));
    let mut v = a.to_le_bytes().to_vec();
    v.extend_from_slice(&b.to_le_bytes());
    Bytes::from(v)
}

/// The scripted machine's state (what a snapshot holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct MachineState {
    count: u64,
    next: usize,
    acc: u64,
    pending_input: Option<InputRequest>,
    idle: bool,
    halted: Option<u64>,
    failed: bool,
    next_io: u64,
    started_io: BTreeSet<u64>,
    outputs: u64,
}

/// An [`EventSource`] driven by a [`Script`]. See the module docs.
#[derive(Debug, Clone)]
pub struct ScriptedSource {
    script: Arc<Script>,
    salt: u64,
    st: MachineState,
    journal: Vec<(ExecPoint, u64)>,
    runs: u64,
    /// The digest fails from this point count on (a backend that cannot read its state).
    digest_fails_from: Option<u64>,
}

impl ScriptedSource {
    /// A machine at point 0 that follows `script`.
    pub fn new(script: Script) -> ScriptedSource {
        Self::salted(script, 0)
    }

    /// A machine whose state digest differs from an unsalted one's by `salt`, while it
    /// behaves identically otherwise (a machine that differs only in hidden state).
    pub fn salted(script: Script, salt: u64) -> ScriptedSource {
        ScriptedSource {
            script: Arc::new(script),
            salt,
            st: MachineState {
                count: 0,
                next: 0,
                acc: 0x5eed,
                pending_input: None,
                idle: false,
                halted: None,
                failed: false,
                next_io: 1,
                started_io: BTreeSet::new(),
                outputs: 0,
            },
            journal: Vec::new(),
            runs: 0,
            digest_fails_from: None,
        }
    }

    /// Make every digest from point count `count` on fail.
    pub fn fail_digests_from(&mut self, count: u64) {
        self.digest_fails_from = Some(count);
    }

    /// The script.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Every change of state so far (input supplied, event injected, output, I/O start,
    /// halt), with the point and the digest right after it. Two machines fed the same
    /// log have equal journals.
    pub fn journal(&self) -> &[(ExecPoint, u64)] {
        &self.journal
    }

    /// How many times `run` was called.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Whether the machine waits for an interrupt.
    pub fn is_idle(&self) -> bool {
        self.st.idle
    }

    /// Whether an input is pending.
    pub fn input_pending(&self) -> bool {
        self.st.pending_input.is_some()
    }

    /// I/O started and not completed.
    pub fn started_io(&self) -> Vec<IoId> {
        self.st.started_io.iter().map(|i| IoId(*i)).collect()
    }

    fn point_now(&self) -> ExecPoint {
        ExecPoint::at(self.st.count)
    }

    fn compute_digest(&self) -> u64 {
        let mut h = StateHasher::new();
        h.write_u64(self.st.count);
        h.write_u64(self.st.acc);
        h.write_u64(self.salt);
        h.finish()
    }

    /// Fold a change into the state and journal it.
    fn mix(&mut self, tag: u64, bytes: &[u8]) {
        let mut h = StateHasher::new();
        h.write_u64(self.st.acc);
        h.write_u64(tag);
        h.write_u64(self.st.count);
        h.write_bytes(bytes);
        self.st.acc = h.finish();
        let d = self.compute_digest();
        self.journal.push((self.point_now(), d));
    }

    fn state_bytes(&self, n: usize) -> Bytes {
        let mut v = Vec::with_capacity(n);
        let mut x = self.st.acc;
        while v.len() < n {
            x = hash2(x, v.len() as u64);
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(n);
        Bytes::from(v)
    }
}

impl EventSource for ScriptedSource {
    fn point(&self) -> ExecPoint {
        self.point_now()
    }

    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        self.runs += 1;
        let here = self.point_now();
        if self.st.failed {
            return Err(SourceError::Backend(format!("scripted failure at {here}")));
        }
        if until < here {
            return Err(SourceError::Backwards {
                current: here,
                target: until,
            });
        }
        if until.sub != 0 {
            return Err(SourceError::Backend(format!(
                "this machine has no sub-points ({until})"
            )));
        }
        if self.st.pending_input.is_some() {
            return Err(SourceError::Backend(
                "run called while an input is pending".into(),
            ));
        }
        if until == here {
            return Ok(Stop::Reached);
        }
        if let Some(code) = self.st.halted {
            return Ok(Stop::Halted(code));
        }
        if self.st.idle {
            return Ok(Stop::Idle);
        }
        let Some((p, ev)) = self.script.events.get(self.st.next).cloned() else {
            self.st.count = until.count;
            return Ok(Stop::Reached);
        };
        match ev {
            ScriptStop::Input { size } => {
                // Stops before the reading instruction at `p` completes: only when the
                // machine is asked to execute that instruction.
                if p >= until.count {
                    self.st.count = until.count;
                    return Ok(Stop::Reached);
                }
                self.st.count = p;
                self.st.next += 1;
                let req = InputRequest {
                    device: DeviceId(DEV_INPUT),
                    offset: p % 64,
                    size,
                };
                self.st.pending_input = Some(req.clone());
                Ok(Stop::Input(req))
            }
            other => {
                // The instruction retiring at `p` does it.
                if p > until.count {
                    self.st.count = until.count;
                    return Ok(Stop::Reached);
                }
                self.st.count = p;
                self.st.next += 1;
                match other {
                    ScriptStop::Output => {
                        let data = self.state_bytes(8 + (p % 5) as usize);
                        self.st.outputs += 1;
                        self.mix(2, &data);
                        Ok(Stop::Output(RawOutput {
                            device: DeviceId(DEV_OUTPUT),
                            data,
                        }))
                    }
                    ScriptStop::IoStart { kind } => {
                        let id = self.st.next_io;
                        self.st.next_io += 1;
                        self.st.started_io.insert(id);
                        let data = match kind {
                            IoKind::SharedWrite | IoKind::PrivateWrite => self.state_bytes(16),
                            IoKind::Request | IoKind::LocalRead => Bytes::new(),
                        };
                        let req = IoRequest {
                            id: IoId(id),
                            device: DeviceId(DEV_DISK),
                            kind,
                            op: op_of(kind),
                            offset: id * 512,
                            len: 16,
                            data,
                        };
                        self.mix(3, &req.digest().to_le_bytes());
                        Ok(Stop::IoStart(req))
                    }
                    ScriptStop::Idle => {
                        self.st.idle = true;
                        if p == until.count {
                            Ok(Stop::Reached)
                        } else {
                            Ok(Stop::Idle)
                        }
                    }
                    ScriptStop::Halt { code } => {
                        self.st.halted = Some(code);
                        self.mix(4, &code.to_le_bytes());
                        Ok(Stop::Halted(code))
                    }
                    ScriptStop::Fail => {
                        self.st.failed = true;
                        Err(SourceError::Backend(format!("scripted failure at @{p}")))
                    }
                    ScriptStop::Input { .. } => unreachable!("handled above"),
                }
            }
        }
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        let Some(req) = self.st.pending_input.take() else {
            return Err(SourceError::UnexpectedInput("no input pending".into()));
        };
        if data.len() != usize::from(req.size) {
            let size = req.size;
            self.st.pending_input = Some(req);
            return Err(SourceError::UnexpectedInput(format!(
                "{} bytes for a {size}-byte read",
                data.len()
            )));
        }
        self.mix(1, data);
        // The reading instruction completes.
        self.st.count += 1;
        Ok(())
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        if self.st.pending_input.is_some() {
            return Err(SourceError::BadEvent(
                "asynchronous event in the middle of a reading instruction".into(),
            ));
        }
        let mut bytes = Vec::new();
        match event {
            AsyncEvent::Interrupt { device } => {
                bytes.extend_from_slice(&[0x10]);
                bytes.extend_from_slice(&device.0.to_le_bytes());
            }
            AsyncEvent::DeviceInput { device, data } => {
                bytes.extend_from_slice(&[0x11]);
                bytes.extend_from_slice(&device.0.to_le_bytes());
                bytes.extend_from_slice(data);
            }
            AsyncEvent::IoComplete { io, status, data } => {
                if !self.st.started_io.remove(&io.0) {
                    return Err(SourceError::BadEvent(format!(
                        "completion of I/O {} that is not in flight",
                        io.0
                    )));
                }
                bytes.extend_from_slice(&[0x12]);
                bytes.extend_from_slice(&io.0.to_le_bytes());
                bytes.extend_from_slice(&status.to_le_bytes());
                match data {
                    Some(d) => {
                        bytes.push(1);
                        bytes.extend_from_slice(d);
                    }
                    None => bytes.push(0),
                }
            }
        }
        self.st.idle = false;
        self.mix(5, &bytes);
        Ok(())
    }

    fn digest(&mut self) -> SourceResult<u64> {
        if self.digest_fails_from.is_some_and(|c| self.st.count >= c) {
            return Err(SourceError::Backend(format!(
                "scripted digest failure at @{}",
                self.st.count
            )));
        }
        Ok(self.compute_digest())
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        postcard::to_allocvec(&self.st).map_err(|e| SourceError::Snapshot(e.to_string()))
    }

    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()> {
        let st: MachineState =
            postcard::from_bytes(snapshot).map_err(|e| SourceError::Snapshot(e.to_string()))?;
        if st.next > self.script.events.len() {
            return Err(SourceError::Snapshot("snapshot of another script".into()));
        }
        self.st = st;
        Ok(())
    }
}

/// One output a world emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// When.
    pub at: Nanos,
    /// What.
    pub output: Output,
    /// Whether the engine marked it as a possible repeat.
    pub possible_repeat: bool,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A [`World`] with seeded inputs and scheduled events that records every call.
#[derive(Debug, Clone)]
pub struct ScriptedWorld {
    /// A name, for messages.
    pub name: &'static str,
    live: bool,
    seed: u64,
    inputs_given: u64,
    schedule: VecDeque<(Nanos, AsyncEvent)>,
    timer: Option<(Nanos, Nanos)>,
    io_latency: Option<Nanos>,
    in_flight: Vec<(Nanos, IoId, AsyncEvent)>,
    /// Every output emitted, in order.
    pub emitted: Vec<Emitted>,
    /// Every I/O started (including re-issues), in order.
    pub started: Vec<(Nanos, IoRequest)>,
    /// Outputs reported by the replaying side.
    pub replayed: Vec<Output>,
    /// Private writes applied by the replaying side.
    pub private_writes: Vec<IoRequest>,
    /// Local reads performed by the replaying side.
    pub local_reads: Vec<IoRequest>,
    /// Inputs handed out (time, request, value).
    pub inputs: Vec<(Nanos, InputRequest, Bytes)>,
    /// Asynchronous events handed out by `poll`.
    pub polled: Vec<(Nanos, AsyncEvent)>,
    /// Fencing tokens handed to `fence`, and whether the world was live by then.
    pub fenced: Vec<(u64, bool)>,
    /// When `go_live` was called.
    pub went_live: Option<Nanos>,
    /// When `announce` was called.
    pub announced: Option<Nanos>,
    /// Calls the engine made on the wrong side (a live-side call on a standby world,
    /// `go_live` twice, a replay-side call on a live world).
    pub violations: Vec<String>,
}

impl ScriptedWorld {
    /// A live world (a primary's), inputs seeded by `seed`.
    pub fn live(name: &'static str, seed: u64) -> ScriptedWorld {
        ScriptedWorld {
            name,
            live: true,
            seed,
            inputs_given: 0,
            schedule: VecDeque::new(),
            timer: None,
            io_latency: Some(50_000),
            in_flight: Vec::new(),
            emitted: Vec::new(),
            started: Vec::new(),
            replayed: Vec::new(),
            private_writes: Vec::new(),
            local_reads: Vec::new(),
            inputs: Vec::new(),
            polled: Vec::new(),
            fenced: Vec::new(),
            went_live: None,
            announced: None,
            violations: Vec::new(),
        }
    }

    /// A standby world (a backup's): live only after `go_live`.
    pub fn standby(name: &'static str, seed: u64) -> ScriptedWorld {
        ScriptedWorld {
            live: false,
            ..Self::live(name, seed)
        }
    }

    /// A timer interrupt every `period`, from `period` on (at most one per poll).
    pub fn with_timer(mut self, period: Nanos) -> Self {
        self.timer = Some((period, period));
        self
    }

    /// I/O completes `latency` after it starts (`None`: never).
    pub fn with_io_latency(mut self, latency: Option<Nanos>) -> Self {
        self.io_latency = latency;
        self
    }

    /// An asynchronous event ready at `at`.
    pub fn with_event(mut self, at: Nanos, ev: AsyncEvent) -> Self {
        self.schedule_event(at, ev);
        self
    }

    /// Schedule an asynchronous event ready at `at`.
    pub fn schedule_event(&mut self, at: Nanos, ev: AsyncEvent) {
        let i = self.schedule.partition_point(|(t, _)| *t <= at);
        self.schedule.insert(i, (at, ev));
    }

    /// Whether the world is the real one.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Outputs emitted, by sequence number.
    pub fn emitted_seqs(&self) -> Vec<u64> {
        self.emitted.iter().map(|e| e.output.seq.0).collect()
    }

    fn live_only(&mut self, what: &str) {
        if !self.live {
            self.violations
                .push(format!("{}: {what} called while not live", self.name));
        }
    }
}

impl World for ScriptedWorld {
    fn input(&mut self, req: &InputRequest, now: Nanos) -> Bytes {
        self.live_only("input");
        self.inputs_given += 1;
        let v = splitmix64(self.seed ^ splitmix64(self.inputs_given));
        let mut b = v.to_le_bytes().to_vec();
        b.truncate(usize::from(req.size));
        let b = Bytes::from(b);
        self.inputs.push((now, req.clone(), b.clone()));
        b
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<AsyncEvent>) {
        self.live_only("poll");
        while matches!(self.schedule.front(), Some((t, _)) if *t <= now) {
            let (_, ev) = self.schedule.pop_front().unwrap();
            self.polled.push((now, ev.clone()));
            out.push(ev);
        }
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].0 <= now {
                let (_, _, ev) = self.in_flight.remove(i);
                self.polled.push((now, ev.clone()));
                out.push(ev);
            } else {
                i += 1;
            }
        }
        if let Some((period, next)) = self.timer.as_mut() {
            if *next <= now {
                *next = (now / *period + 1) * *period;
                let ev = AsyncEvent::Interrupt {
                    device: DeviceId(DEV_TIMER),
                };
                self.polled.push((now, ev.clone()));
                out.push(ev);
            }
        }
    }

    fn next_deadline(&self) -> Option<Nanos> {
        [
            self.schedule.front().map(|(t, _)| *t),
            self.in_flight.iter().map(|(t, _, _)| *t).min(),
            self.timer.map(|(_, n)| n),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn start_io(&mut self, req: &IoRequest, now: Nanos) {
        self.live_only("start_io");
        self.started.push((now, req.clone()));
        if self.in_flight.iter().any(|(_, id, _)| *id == req.id) {
            return; // idempotent re-issue
        }
        if let Some(lat) = self.io_latency {
            let data = match req.kind {
                IoKind::Request => {
                    let mut d = disk_data(req).to_vec();
                    d.push(self.seed as u8);
                    Some(Bytes::from(d))
                }
                IoKind::LocalRead => Some(disk_data(req)),
                IoKind::SharedWrite | IoKind::PrivateWrite => None,
            };
            self.in_flight.push((
                now + lat,
                req.id,
                AsyncEvent::IoComplete {
                    io: req.id,
                    status: 0,
                    data,
                },
            ));
        }
    }

    fn emit(&mut self, output: &Output, possible_repeat: bool, now: Nanos) {
        self.live_only("emit");
        self.emitted.push(Emitted {
            at: now,
            output: output.clone(),
            possible_repeat,
        });
    }

    fn replayed_output(&mut self, output: &Output) {
        if self.live {
            self.violations
                .push(format!("{}: replayed_output on a live world", self.name));
        }
        self.replayed.push(output.clone());
    }

    fn apply_private_write(&mut self, req: &IoRequest) {
        if self.live {
            self.violations.push(format!(
                "{}: apply_private_write on a live world",
                self.name
            ));
        }
        self.private_writes.push(req.clone());
    }

    fn read_local(&mut self, req: &IoRequest) -> Bytes {
        if self.live {
            self.violations
                .push(format!("{}: read_local on a live world", self.name));
        }
        self.local_reads.push(req.clone());
        disk_data(req)
    }

    fn fence(&mut self, token: u64) {
        self.fenced.push((token, self.live));
    }

    fn go_live(&mut self, now: Nanos) {
        if self.live {
            self.violations
                .push(format!("{}: go_live on a live world", self.name));
        }
        self.live = true;
        self.went_live = Some(now);
    }

    fn announce(&mut self, now: Nanos) {
        self.live_only("announce");
        self.announced = Some(now);
    }
}

/// The node type of these tests.
pub type TestNode = Node<ScriptedSource, ScriptedWorld>;

/// Which side of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that started as primary (node 1).
    Primary,
    /// The side that started as backup (node 2).
    Backup,
}

/// The engine configuration of these tests: small slices and short, round times
/// (heartbeat 1 ms, peer timeout 10 ms, arbiter retry 1 ms to 8 ms).
pub fn test_config() -> Config {
    Config {
        pair: PairId {
            vm: 7,
            generation: 1,
        },
        node: NodeId(1),
        slice: 1_000,
        digest_interval: 0,
        heartbeat_interval: 1_000_000,
        peer_timeout: 10_000_000,
        outbox_capacity: 4096,
        inbox_capacity: 4096,
        max_batch: 64,
        batch_delay: 100_000,
        max_lag: 1_000_000_000,
        arbiter_retry_min: 1_000_000,
        arbiter_retry_max: 8_000_000,
        enforce_output_rule: true,
    }
}

/// A primary and a backup wired in memory, on a virtual clock. See the module docs.
pub struct Pair {
    /// Node 1.
    pub primary: TestNode,
    /// Node 2.
    pub backup: TestNode,
    /// Virtual time now.
    pub now: Nanos,
    /// Batches on their way to the backup, oldest first.
    pub to_backup: VecDeque<Vec<Record>>,
    /// Acks on their way to the primary, oldest first.
    pub to_primary: VecDeque<Ack>,
    /// The arbiter both sides ask.
    pub arbiter: InProcessArbiter,
    /// Whether [`Pair::arbitrate`] answers commands (false: they wait in
    /// `pending_commands`, an arbiter that takes forever).
    pub answer_arbiter: bool,
    /// Commands not answered yet.
    pub pending_commands: VecDeque<(Side, Command)>,
    /// Whether the primary runs (a crashed side is never called again).
    pub primary_up: bool,
    /// Whether the backup runs.
    pub backup_up: bool,
    /// Every record the primary transmitted, in order.
    pub sent: Vec<Record>,
    /// Every ack the backup transmitted, in order.
    pub acks: Vec<Ack>,
    /// Notices of both sides, in order.
    pub notices: Vec<(Nanos, Side, Notice)>,
    /// Commands of both sides, in order.
    pub commands: Vec<(Nanos, Side, Command)>,
    /// Errors returned by either side.
    pub errors: Vec<(Nanos, Side, EngineError)>,
}

impl Pair {
    /// A pair whose two machines follow `script`, with [`test_config`].
    pub fn new(script: Script, pw: ScriptedWorld, bw: ScriptedWorld) -> Pair {
        Self::with_config(test_config(), script, pw, bw)
    }

    /// A pair with `cfg` on both sides (node ids 1 and 2).
    pub fn with_config(cfg: Config, script: Script, pw: ScriptedWorld, bw: ScriptedWorld) -> Pair {
        let src = ScriptedSource::new(script);
        Self::with_parts(cfg.clone(), cfg, src.clone(), src, pw, bw)
    }

    /// A pair from its parts; the node ids are set to 1 (primary) and 2 (backup).
    pub fn with_parts(
        mut pcfg: Config,
        mut bcfg: Config,
        psrc: ScriptedSource,
        bsrc: ScriptedSource,
        pw: ScriptedWorld,
        bw: ScriptedWorld,
    ) -> Pair {
        pcfg.node = NodeId(1);
        bcfg.node = NodeId(2);
        Pair {
            primary: Node::primary(pcfg, psrc, pw, 0),
            backup: Node::backup(bcfg, bsrc, bw, 0),
            now: 0,
            to_backup: VecDeque::new(),
            to_primary: VecDeque::new(),
            arbiter: InProcessArbiter::new(),
            answer_arbiter: true,
            pending_commands: VecDeque::new(),
            primary_up: true,
            backup_up: true,
            sent: Vec::new(),
            acks: Vec::new(),
            notices: Vec::new(),
            commands: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The node of `side`.
    pub fn node(&self, side: Side) -> &TestNode {
        match side {
            Side::Primary => &self.primary,
            Side::Backup => &self.backup,
        }
    }

    /// The node of `side`, mutably.
    pub fn node_mut(&mut self, side: Side) -> &mut TestNode {
        match side {
            Side::Primary => &mut self.primary,
            Side::Backup => &mut self.backup,
        }
    }

    /// Whether `side` runs.
    pub fn up(&self, side: Side) -> bool {
        match side {
            Side::Primary => self.primary_up,
            Side::Backup => self.backup_up,
        }
    }

    /// Crash `side`: it is never called again. What it already sent stays in flight.
    pub fn crash(&mut self, side: Side) {
        match side {
            Side::Primary => self.primary_up = false,
            Side::Backup => self.backup_up = false,
        }
    }

    /// Step `side` once at `now` (if it is up); errors are recorded.
    pub fn step(&mut self, side: Side) -> Option<StepOutcome> {
        if !self.up(side) {
            return None;
        }
        let now = self.now;
        let r = self.node_mut(side).step(now);
        self.collect();
        match r {
            Ok(o) => Some(o),
            Err(e) => {
                self.errors.push((now, side, e));
                None
            }
        }
    }

    /// Move everything both sides want to transmit into the links.
    pub fn transmit(&mut self) {
        let now = self.now;
        if self.primary_up {
            while let Some(t) = self.primary.poll_transmit(now) {
                match t {
                    Transmit::Records(recs) => {
                        self.sent.extend(recs.iter().cloned());
                        self.to_backup.push_back(recs);
                    }
                    Transmit::Ack(a) => panic!("primary transmitted an ack {a:?}"),
                    Transmit::Clone(m) => panic!("primary transmitted a clone message {m:?}"),
                }
            }
        }
        if self.backup_up {
            while let Some(t) = self.backup.poll_transmit(now) {
                match t {
                    Transmit::Ack(a) => {
                        self.acks.push(a);
                        self.to_primary.push_back(a);
                    }
                    Transmit::Records(r) => panic!("backup transmitted records {r:?}"),
                    Transmit::Clone(m) => panic!("backup transmitted a clone message {m:?}"),
                }
            }
        }
        self.collect();
    }

    /// Hand the oldest batch to the backup if it has room; returns the result, or
    /// `None` if there was nothing to deliver, no room, or the backup is down.
    pub fn deliver_one_batch(&mut self) -> Option<Result<(), EngineError>> {
        if !self.backup_up {
            self.to_backup.clear();
            return None;
        }
        let room = self.backup.inbox_space();
        let batch = self.to_backup.front()?;
        if batch.len() > room {
            return None;
        }
        let batch = self.to_backup.pop_front()?;
        let now = self.now;
        let r = self.backup.handle_records(batch, now);
        if let Err(e) = &r {
            self.errors.push((now, Side::Backup, e.clone()));
        }
        Some(r)
    }

    /// Deliver every batch the backup has room for.
    pub fn deliver_records(&mut self) {
        while self.deliver_one_batch().is_some() {}
    }

    /// Deliver every ack to the primary.
    pub fn deliver_acks(&mut self) {
        if !self.primary_up {
            self.to_primary.clear();
            return;
        }
        let now = self.now;
        while let Some(a) = self.to_primary.pop_front() {
            if let Err(e) = self.primary.handle_ack(a, now) {
                self.errors.push((now, Side::Primary, e));
            }
        }
    }

    /// Take the commands of both sides; answer them all if `answer_arbiter`.
    pub fn arbitrate(&mut self) {
        let now = self.now;
        for side in [Side::Primary, Side::Backup] {
            if !self.up(side) {
                continue;
            }
            while let Some(c) = self.node_mut(side).poll_command() {
                self.commands.push((now, side, c.clone()));
                self.pending_commands.push_back((side, c));
            }
        }
        if self.answer_arbiter {
            self.answer_all();
        }
    }

    /// Answer every pending command with the arbiter, now.
    pub fn answer_all(&mut self) {
        let now = self.now;
        while let Some((side, Command::TestAndSet { pair, me, .. })) =
            self.pending_commands.pop_front()
        {
            if !self.up(side) {
                continue;
            }
            let r = self.arbiter.test_and_set(pair, me);
            self.node_mut(side).on_arbiter(r, now);
        }
        self.collect();
    }

    /// Move the notices of both sides into `notices`.
    pub fn collect(&mut self) {
        while let Some((t, n)) = self.primary.poll_notice() {
            self.notices.push((t, Side::Primary, n));
        }
        while let Some((t, n)) = self.backup.poll_notice() {
            self.notices.push((t, Side::Backup, n));
        }
    }

    /// One round at `now`: step both, transmit, deliver both ways, transmit the acks
    /// and deliver them, arbitrate.
    pub fn round(&mut self) {
        self.step(Side::Primary);
        self.step(Side::Backup);
        self.transmit();
        self.deliver_records();
        self.transmit();
        self.deliver_acks();
        self.arbitrate();
    }

    /// `rounds` rounds, advancing the clock by `dt` after each.
    pub fn run(&mut self, rounds: usize, dt: Nanos) {
        for _ in 0..rounds {
            self.round();
            self.now += dt;
        }
    }

    /// Rounds (clock `+dt` after each) until `done` holds, at most `max` of them;
    /// returns whether `done` held.
    pub fn run_until(
        &mut self,
        max: usize,
        dt: Nanos,
        mut done: impl FnMut(&Pair) -> bool,
    ) -> bool {
        for _ in 0..max {
            if done(self) {
                return true;
            }
            self.round();
            self.now += dt;
        }
        done(self)
    }

    /// The notices of `side`, in order.
    pub fn notices_of(&self, side: Side) -> Vec<Notice> {
        self.notices
            .iter()
            .filter(|(_, s, _)| *s == side)
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    /// Panic with the errors if there were any.
    pub fn assert_no_errors(&self) {
        assert!(self.errors.is_empty(), "engine errors: {:?}", self.errors);
        assert!(
            self.primary.world().violations.is_empty() && self.backup.world().violations.is_empty(),
            "world contract violations: {:?} {:?}",
            self.primary.world().violations,
            self.backup.world().violations
        );
    }
}
