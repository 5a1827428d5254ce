//! The host half of the sim machine's devices: a deterministic, seeded stand-in for
//! the real world (clock, entropy, a timer, a disk, a network), driven by the time the
//! engine passes in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use ft_core::{AsyncEvent, InputRequest, IoKind, IoRequest, Nanos, Output, OutputSeq, World};
use parking_lot::Mutex;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::devices::{id, op};
pub use crate::disk::Disk;

/// One output that reached the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// Which side emitted it (a name the embedder chose).
    pub side: &'static str,
    /// The output.
    pub output: Output,
    /// Re-sent at go-live; the old primary may have sent it already.
    pub possible_repeat: bool,
    /// When.
    pub at: Nanos,
}

/// The outside world's view of outputs: everything either side released. Clones share
/// the same list, so both sides of a pair can write into one sink.
#[derive(Debug, Clone, Default)]
pub struct OutputSink {
    inner: Arc<Mutex<Vec<Emitted>>>,
}

impl OutputSink {
    /// An empty sink.
    pub fn new() -> OutputSink {
        OutputSink::default()
    }

    /// Everything received, in arrival order.
    pub fn all(&self) -> Vec<Emitted> {
        self.inner.lock().clone()
    }

    /// Everything received after dropping repeats by sequence number, in sequence
    /// order: what an exactly-once consumer sees. Returns an error naming the first
    /// sequence number whose copies disagree, or the first gap.
    pub fn deduplicated(&self) -> Result<Vec<Output>, String> {
        let mut by_seq: std::collections::BTreeMap<OutputSeq, Output> = Default::default();
        for e in self.inner.lock().iter() {
            match by_seq.get(&e.output.seq) {
                Some(prev) if *prev != e.output => {
                    return Err(format!(
                        "output #{} seen twice with different content ({:?} vs {:?})",
                        e.output.seq.0, prev.data, e.output.data
                    ))
                }
                Some(_) => {}
                None => {
                    by_seq.insert(e.output.seq, e.output.clone());
                }
            }
        }
        for (i, seq) in by_seq.keys().enumerate() {
            if seq.0 != i as u64 {
                return Err(format!("output #{i} is missing (next seen is #{})", seq.0));
            }
        }
        Ok(by_seq.into_values().collect())
    }

    fn push(&self, e: Emitted) {
        self.inner.lock().push(e);
    }
}

/// A network between clients and the pair: packets sent to the service reach the side
/// that announced itself last (the primary until a failover). Clones share the same
/// network.
#[derive(Debug, Clone)]
pub struct Network {
    inner: Arc<Mutex<NetworkState>>,
}

#[derive(Debug)]
struct NetworkState {
    owner: &'static str,
    queue: VecDeque<Bytes>,
    delivered: u64,
}

impl Network {
    /// A network whose service address belongs to `owner` at first.
    pub fn new(owner: &'static str) -> Network {
        Network {
            inner: Arc::new(Mutex::new(NetworkState {
                owner,
                queue: VecDeque::new(),
                delivered: 0,
            })),
        }
    }

    /// A client sends a packet to the service.
    pub fn send(&self, packet: Bytes) {
        self.inner.lock().queue.push_back(packet);
    }

    /// The side that owns the service address now.
    pub fn owner(&self) -> &'static str {
        self.inner.lock().owner
    }

    /// Packets handed to a side so far.
    pub fn delivered(&self) -> u64 {
        self.inner.lock().delivered
    }

    fn take_for(&self, side: &'static str, out: &mut Vec<AsyncEvent>) {
        let mut st = self.inner.lock();
        if st.owner != side {
            return;
        }
        while let Some(data) = st.queue.pop_front() {
            st.delivered += 1;
            out.push(AsyncEvent::DeviceInput {
                device: id::NET,
                data,
            });
        }
    }

    fn claim(&self, side: &'static str) {
        self.inner.lock().owner = side;
    }
}

/// Configuration of a [`SimWorld`].
#[derive(Debug, Clone)]
pub struct SimWorldConfig {
    /// Seed of the entropy source (the RNG device's values).
    pub seed: u64,
    /// Wall-clock value at engine time 0, in nanoseconds.
    pub clock_base: u64,
    /// Disk latency.
    pub disk_latency: Nanos,
}

impl Default for SimWorldConfig {
    fn default() -> Self {
        SimWorldConfig {
            seed: 0,
            clock_base: 1_700_000_000_000_000_000,
            disk_latency: 200_000,
        }
    }
}

/// The world around one side of a sim pair.
#[derive(Debug)]
pub struct SimWorld {
    side: &'static str,
    cfg: SimWorldConfig,
    live: bool,
    rng: ChaCha8Rng,
    disk: Disk,
    sink: OutputSink,
    scheduled: BinaryHeap<Reverse<(Nanos, u64, ScheduledEvent)>>,
    order: u64,
    inbound: VecDeque<(Nanos, Bytes)>,
    announced_at: Option<Nanos>,
    went_live_at: Option<Nanos>,
    going_live: bool,
    reissued: Vec<IoRequest>,
    private_writes: u64,
    token: u64,
    fenced_writes: u64,
    replayed: Vec<Output>,
    raw_events: VecDeque<(Nanos, AsyncEvent)>,
    network: Option<Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ScheduledEvent {
    io: u64,
    status: u32,
    data: Option<Vec<u8>>,
}

impl SimWorld {
    /// A world for a side named `side`, attached to `disk`, writing outputs to `sink`.
    /// `live` is true for a primary, false for a backup (it becomes live at go-live).
    pub fn new(
        side: &'static str,
        cfg: SimWorldConfig,
        disk: Disk,
        sink: OutputSink,
        live: bool,
    ) -> SimWorld {
        SimWorld {
            side,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            live,
            disk,
            sink,
            scheduled: BinaryHeap::new(),
            order: 0,
            inbound: VecDeque::new(),
            announced_at: None,
            went_live_at: None,
            going_live: false,
            reissued: Vec::new(),
            private_writes: 0,
            token: 0,
            fenced_writes: 0,
            replayed: Vec::new(),
            raw_events: VecDeque::new(),
            network: None,
        }
    }

    /// Attach a [`Network`]: while live, this side takes the packets sent to the
    /// service, and announcing itself moves the service address here.
    pub fn with_network(mut self, network: Network) -> SimWorld {
        self.network = Some(network);
        self
    }

    /// A packet from the network arrives at time `at` (delivered only while live).
    pub fn deliver_packet(&mut self, at: Nanos, data: Bytes) {
        let pos = self.inbound.partition_point(|(t, _)| *t <= at);
        self.inbound.insert(pos, (at, data));
    }

    /// An arbitrary asynchronous event (an interrupt, a packet) becomes ready at `at`
    /// (delivered only while live). Property tests use this to place events at random
    /// times.
    pub fn schedule_event(&mut self, at: Nanos, event: AsyncEvent) {
        let pos = self.raw_events.partition_point(|(t, _)| *t <= at);
        self.raw_events.insert(pos, (at, event));
    }

    /// Outputs this side produced while replaying (suppressed), in order.
    pub fn replayed_outputs(&self) -> &[Output] {
        &self.replayed
    }

    /// Packets waiting to arrive.
    pub fn packets_waiting(&self) -> usize {
        self.inbound.len()
    }

    /// Whether this world is the real one (primary, or backup after go-live).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// When this side announced itself, if it did.
    pub fn announced_at(&self) -> Option<Nanos> {
        self.announced_at
    }

    /// When this side went live, if it did.
    pub fn went_live_at(&self) -> Option<Nanos> {
        self.went_live_at
    }

    /// I/O re-issued at go-live.
    pub fn reissued(&self) -> &[IoRequest] {
        &self.reissued
    }

    /// Private-disk writes applied while replaying.
    pub fn private_writes(&self) -> u64 {
        self.private_writes
    }

    /// The fencing token this side's disk writes carry: 0 until it won the arbiter
    /// ([`World::fence`]), or the one [`SimWorld::set_token`] gave it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Carry fencing `token` from now on (for a node that claimed its generation
    /// before it started, as a primary that starts alone does); a lower token than
    /// the one held is ignored.
    pub fn set_token(&mut self, token: u64) {
        self.token = self.token.max(token);
    }

    /// Disk writes the disk refused because a newer token had been seen there: this
    /// side was superseded (they completed with an error status).
    pub fn fenced_writes(&self) -> u64 {
        self.fenced_writes
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The output sink.
    pub fn sink(&self) -> &OutputSink {
        &self.sink
    }

    fn schedule(&mut self, at: Nanos, ev: ScheduledEvent) {
        self.order += 1;
        self.scheduled.push(Reverse((at, self.order, ev)));
    }
}

impl World for SimWorld {
    fn input(&mut self, req: &InputRequest, now: Nanos) -> Bytes {
        let v = match req.device {
            id::CLOCK => self.cfg.clock_base.wrapping_add(now),
            id::RNG => self.rng.next_u64(),
            _ => 0,
        };
        Bytes::copy_from_slice(&v.to_le_bytes())
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<AsyncEvent>) {
        if !self.live {
            return;
        }
        while let Some(Reverse((at, _, _))) = self.scheduled.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, ev))) = self.scheduled.pop() {
                out.push(AsyncEvent::IoComplete {
                    io: ft_core::IoId(ev.io),
                    status: ev.status,
                    data: ev.data.map(Bytes::from),
                });
            }
        }
        if let Some(net) = &self.network {
            net.take_for(self.side, out);
        }
        while matches!(self.raw_events.front(), Some((t, _)) if *t <= now) {
            if let Some((_, ev)) = self.raw_events.pop_front() {
                out.push(ev);
            }
        }
        while matches!(self.inbound.front(), Some((t, _)) if *t <= now) {
            if let Some((_, data)) = self.inbound.pop_front() {
                out.push(AsyncEvent::DeviceInput {
                    device: id::NET,
                    data,
                });
            }
        }
    }

    fn next_deadline(&self) -> Option<Nanos> {
        let a = self.scheduled.peek().map(|Reverse((t, _, _))| *t);
        let b = self.inbound.front().map(|(t, _)| *t);
        let c = self.raw_events.front().map(|(t, _)| *t);
        // Packets from an attached network are polled; they have no deadline.
        [a, b, c].into_iter().flatten().min()
    }

    fn start_io(&mut self, req: &IoRequest, now: Nanos) {
        if self.going_live {
            self.reissued.push(req.clone());
        }
        match req.op {
            op::TIMER_ARM => self.schedule(
                now.saturating_add(req.offset),
                ScheduledEvent {
                    io: req.id.0,
                    status: 0,
                    data: None,
                },
            ),
            op::DISK_READ => {
                let (status, data) = match self.disk.read(req.offset, u64::from(req.len)) {
                    Some(d) => (0, Some(d)),
                    None => (1, None),
                };
                self.schedule(
                    now.saturating_add(self.cfg.disk_latency),
                    ScheduledEvent {
                        io: req.id.0,
                        status,
                        data,
                    },
                )
            }
            op::DISK_WRITE => {
                let ok = match self.disk.write_fenced(self.token, req.offset, &req.data) {
                    Ok(()) => true,
                    Err(crate::DiskError::Fenced { .. }) => {
                        self.fenced_writes += 1;
                        false
                    }
                    Err(_) => false,
                };
                self.schedule(
                    now.saturating_add(self.cfg.disk_latency),
                    ScheduledEvent {
                        io: req.id.0,
                        status: u32::from(!ok),
                        data: None,
                    },
                )
            }
            _ => self.schedule(
                now,
                ScheduledEvent {
                    io: req.id.0,
                    status: 1,
                    data: None,
                },
            ),
        }
    }

    fn emit(&mut self, output: &Output, possible_repeat: bool, now: Nanos) {
        self.sink.push(Emitted {
            side: self.side,
            output: output.clone(),
            possible_repeat,
            at: now,
        });
    }

    fn replayed_output(&mut self, output: &Output) {
        self.replayed.push(output.clone());
    }

    fn apply_private_write(&mut self, req: &IoRequest) {
        if req.kind == IoKind::PrivateWrite {
            self.private_writes += 1;
            // This side's own copy: only this side writes it, with its own token.
            let _ = self.disk.write_fenced(self.token, req.offset, &req.data);
        }
    }

    fn read_local(&mut self, req: &IoRequest) -> Bytes {
        self.disk
            .read(req.offset, u64::from(req.len))
            .map(Bytes::from)
            .unwrap_or_default()
    }

    fn fence(&mut self, token: u64) {
        self.set_token(token);
    }

    fn go_live(&mut self, now: Nanos) {
        self.live = true;
        self.going_live = true;
        self.went_live_at = Some(now);
    }

    fn announce(&mut self, now: Nanos) {
        self.going_live = false;
        self.announced_at = Some(now);
        if let Some(net) = &self.network {
            net.claim(self.side);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ft_core::{DeviceId, IoId};

    fn write(id: u64, data: &[u8]) -> IoRequest {
        IoRequest {
            id: IoId(id),
            device: DeviceId(id::BLOCK.0),
            kind: IoKind::SharedWrite,
            op: op::DISK_WRITE,
            offset: 0,
            len: data.len() as u32,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn completions(w: &mut SimWorld, now: Nanos) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        w.poll(now, &mut out);
        out.into_iter()
            .filter_map(|e| match e {
                AsyncEvent::IoComplete { io, status, .. } => Some((io.0, status)),
                _ => None,
            })
            .collect()
    }

    /// A superseded writer's disk writes are refused where they land: the side that
    /// won the arbiter later (a newer token) fenced the shared disk off.
    #[test]
    fn a_superseded_sides_writes_fail_on_the_shared_disk() {
        let disk = Disk::new(512);
        let sink = OutputSink::new();
        let cfg = SimWorldConfig::default();
        let mut old = SimWorld::new("old", cfg.clone(), disk.clone(), sink.clone(), true);
        let mut new = SimWorld::new("new", cfg, disk.clone(), sink, false);
        old.start_io(&write(1, b"old"), 0);
        assert_eq!(completions(&mut old, 1_000_000), vec![(1, 0)]);
        new.fence(4);
        new.go_live(1_000_000);
        new.start_io(&write(2, b"new"), 1_000_000);
        assert_eq!(completions(&mut new, 2_000_000), vec![(2, 0)]);
        // The old primary wakes up (SIGSTOP, then SIGCONT) and writes.
        old.start_io(&write(3, b"old"), 2_000_000);
        assert_eq!(completions(&mut old, 3_000_000), vec![(3, 1)]);
        assert_eq!(old.fenced_writes(), 1);
        assert_eq!(new.fenced_writes(), 0);
        assert_eq!(disk.read(0, 3).unwrap(), b"new");
        assert_eq!(new.token(), 4);
        // A lower token never lowers what a side carries.
        new.set_token(2);
        assert_eq!(new.token(), 4);
    }
}
