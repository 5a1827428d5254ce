//! Test support: a toy deterministic machine, a toy world, and a fake-time pump that
//! drives a primary and a backup over frame links without threads.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ft_core::{
    Arbiter, AsyncEvent, ChannelError, Command, Config, DeviceId, EngineError, EventSource,
    ExecPoint, InProcessArbiter, InputRequest, IoRequest, LogChannel, LogReceiver, Nanos, Node,
    NodeId, Notice, Output, Purpose, RawOutput, SourceError, SourceResult, Stop, Transmit, World,
};
use ft_transport::{BackupEnd, FrameLink, PrimaryEnd};

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 of a combination: cheap and well spread.
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the toy machine does, per instruction index `p`.
#[derive(Debug, Clone, Copy)]
pub struct ToyParams {
    /// An output when `p % out_every == out_every - 1` (0: never).
    pub out_every: u64,
    /// A synchronous input read when `p % in_every == in_every - 1` (0: never).
    pub in_every: u64,
    /// A wait-for-interrupt when `p % idle_every == idle_every - 1` (0: never).
    pub idle_every: u64,
    /// The guest exits at this point.
    pub halt_at: u64,
}

impl Default for ToyParams {
    fn default() -> Self {
        ToyParams {
            out_every: 97,
            in_every: 61,
            idle_every: 0,
            halt_at: 60_000,
        }
    }
}

/// A counter machine: every instruction mixes its index into the state; some read an
/// input, some produce an output (the state), some wait for an interrupt.
#[derive(Debug, Clone)]
pub struct Toy {
    p: ToyParams,
    point: u64,
    state: u64,
    pending_input: bool,
    wake: bool,
    halted: Option<u64>,
}

impl Toy {
    pub fn new(p: ToyParams) -> Toy {
        Toy {
            p,
            point: 0,
            state: 1,
            pending_input: false,
            wake: false,
            halted: None,
        }
    }

    fn hits(p: u64, every: u64) -> bool {
        every > 0 && p % every == every - 1
    }
}

impl EventSource for Toy {
    fn point(&self) -> ExecPoint {
        ExecPoint::at(self.point)
    }

    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        if until < self.point() {
            return Err(SourceError::Backwards {
                current: self.point(),
                target: until,
            });
        }
        loop {
            if self.point >= until.count {
                return Ok(Stop::Reached);
            }
            if let Some(code) = self.halted {
                return Ok(Stop::Halted(code));
            }
            let p = self.point;
            if p == self.p.halt_at {
                let code = self.state & 0xff;
                self.halted = Some(code);
                return Ok(Stop::Halted(code));
            }
            if self.pending_input || Self::hits(p, self.p.in_every) {
                self.pending_input = true;
                return Ok(Stop::Input(InputRequest {
                    device: DeviceId(1),
                    offset: p % 16,
                    size: 8,
                }));
            }
            if Self::hits(p, self.p.idle_every) {
                if !self.wake {
                    return Ok(Stop::Idle);
                }
                self.wake = false;
            }
            self.state = mix(self.state, p);
            self.point += 1;
            if Self::hits(p, self.p.out_every) {
                return Ok(Stop::Output(RawOutput {
                    device: DeviceId(2),
                    data: Bytes::copy_from_slice(&self.state.to_le_bytes()),
                }));
            }
        }
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        if !self.pending_input {
            return Err(SourceError::UnexpectedInput("no input pending".into()));
        }
        let v: [u8; 8] = data
            .try_into()
            .map_err(|_| SourceError::UnexpectedInput(format!("{} bytes", data.len())))?;
        self.state = mix(self.state, u64::from_le_bytes(v));
        self.pending_input = false;
        self.point += 1;
        Ok(())
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        match event {
            AsyncEvent::Interrupt { .. } => {}
            AsyncEvent::DeviceInput { data, .. } => {
                for b in data.iter() {
                    self.state = mix(self.state, u64::from(*b));
                }
            }
            AsyncEvent::IoComplete { io, .. } => {
                return Err(SourceError::BadEvent(format!("no I/O {}", io.0)))
            }
        }
        self.wake = true;
        Ok(())
    }

    fn digest(&mut self) -> SourceResult<u64> {
        let flags = u64::from(self.pending_input) | u64::from(self.wake) << 1;
        Ok(mix(
            mix(self.point, self.state),
            flags ^ self.halted.map_or(0, |c| c + 4),
        ))
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        Err(SourceError::Snapshot("toy has no snapshots".into()))
    }

    fn restore(&mut self, _snapshot: &[u8]) -> SourceResult<()> {
        Err(SourceError::Snapshot("toy has no snapshots".into()))
    }
}

/// The toy's host devices: inputs derived from the time (nondeterministic on the
/// primary), a device-input tick every `tick_period`, outputs recorded.
#[derive(Debug)]
pub struct ToyWorld {
    pub emitted: Vec<(Output, bool)>,
    /// Outputs emitted so far, readable from other threads.
    pub emit_count: Arc<AtomicU64>,
    pub tick_period: Nanos,
    next_tick: Nanos,
    ticks: u64,
    inputs: u64,
    pub live_at: Option<Nanos>,
    pub announced: bool,
}

impl ToyWorld {
    pub fn new(tick_period: Nanos, now: Nanos) -> ToyWorld {
        ToyWorld {
            emitted: Vec::new(),
            emit_count: Arc::new(AtomicU64::new(0)),
            tick_period,
            next_tick: now.saturating_add(tick_period),
            ticks: 0,
            inputs: 0,
            live_at: None,
            announced: false,
        }
    }
}

impl World for ToyWorld {
    fn input(&mut self, _req: &InputRequest, now: Nanos) -> Bytes {
        self.inputs += 1;
        Bytes::copy_from_slice(&mix(now, self.inputs).to_le_bytes())
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<AsyncEvent>) {
        if self.tick_period > 0 && now >= self.next_tick {
            self.ticks += 1;
            out.push(AsyncEvent::DeviceInput {
                device: DeviceId(3),
                data: Bytes::copy_from_slice(&(now ^ self.ticks).to_le_bytes()),
            });
            self.next_tick = now.saturating_add(self.tick_period);
        }
    }

    fn next_deadline(&self) -> Option<Nanos> {
        (self.tick_period > 0).then_some(self.next_tick)
    }

    fn start_io(&mut self, _req: &IoRequest, _now: Nanos) {}

    fn emit(&mut self, output: &Output, possible_repeat: bool, _now: Nanos) {
        self.emitted.push((output.clone(), possible_repeat));
        self.emit_count.fetch_add(1, Ordering::SeqCst);
    }

    fn apply_private_write(&mut self, _req: &IoRequest) {}

    fn read_local(&mut self, _req: &IoRequest) -> Bytes {
        Bytes::new()
    }

    fn go_live(&mut self, now: Nanos) {
        self.live_at = Some(now);
        self.next_tick = now.saturating_add(self.tick_period);
    }

    fn announce(&mut self, _now: Nanos) {
        self.announced = true;
    }
}

pub type ToyNode = Node<Toy, ToyWorld>;

/// An engine configuration for tests.
pub fn config(node: u64) -> Config {
    Config {
        node: NodeId(node),
        slice: 2_000,
        digest_interval: 5_000,
        ..Config::default()
    }
}

pub fn primary(cfg: Config, p: ToyParams, tick: Nanos, now: Nanos) -> ToyNode {
    Node::primary(cfg, Toy::new(p), ToyWorld::new(tick, now), now)
}

pub fn backup(cfg: Config, p: ToyParams, tick: Nanos, now: Nanos) -> ToyNode {
    Node::backup(cfg, Toy::new(p), ToyWorld::new(tick, now), now)
}

/// Check what the outside world saw across a failover: outputs numbered 0.. with no
/// gap between the two worlds, and the same bytes wherever both emitted one number.
pub fn check_outputs(first: &ToyWorld, second: &ToyWorld, what: &str) {
    let mut all: std::collections::BTreeMap<u64, Bytes> = Default::default();
    for (w, name) in [(first, "first"), (second, "second")] {
        let mut prev: Option<u64> = None;
        for (o, _) in &w.emitted {
            if let Some(p) = prev {
                assert_eq!(o.seq.0, p + 1, "{what}: {name} world emitted out of order");
            }
            prev = Some(o.seq.0);
            if let Some(d) = all.insert(o.seq.0, o.data.clone()) {
                assert_eq!(d, o.data, "{what}: output #{} differs", o.seq.0);
            }
        }
    }
    let seqs: Vec<u64> = all.keys().copied().collect();
    let want: Vec<u64> = (0..seqs.len() as u64).collect();
    assert_eq!(seqs, want, "{what}: an output was lost");
}

/// Who saw something, in the pump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Primary,
    Backup,
}

/// An error seen by the pump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Channel(ChannelError),
    Engine(EngineError),
}

/// Drives a primary and a backup in lockstep with fake time, over frame links, the way
/// the runtime does (but deterministically): a channel or engine error marks that
/// side's link broken.
pub struct Pump<L, M> {
    pub primary: ToyNode,
    pub backup: ToyNode,
    pub pend: PrimaryEnd<L>,
    pub bend: BackupEnd<M>,
    pub arbiter: InProcessArbiter,
    pub now: Nanos,
    pub dt: Nanos,
    pub errors: Vec<(u64, Who, Failure)>,
    pub notices: Vec<(Who, Nanos, Notice)>,
    pub rounds: u64,
    p_up: bool,
    b_up: bool,
    p_pending: Option<Transmit>,
    b_pending: Option<Transmit>,
}

impl<L: FrameLink, M: FrameLink> Pump<L, M> {
    pub fn new(primary: ToyNode, backup: ToyNode, pl: L, bl: M, now: Nanos, dt: Nanos) -> Self {
        Pump {
            primary,
            backup,
            pend: PrimaryEnd::new(pl),
            bend: BackupEnd::new(bl),
            arbiter: InProcessArbiter::new(),
            now,
            dt,
            errors: Vec::new(),
            notices: Vec::new(),
            rounds: 0,
            p_up: true,
            b_up: true,
            p_pending: None,
            b_pending: None,
        }
    }

    fn fail(&mut self, who: Who, f: Failure) {
        self.errors.push((self.rounds, who, f));
        match who {
            Who::Primary => self.p_up = false,
            Who::Backup => self.b_up = false,
        }
    }

    /// One round: the primary's turn, then the backup's, then time advances.
    pub fn round(&mut self) {
        let now = self.now;
        // Primary.
        if self.p_up {
            loop {
                match self.pend.try_recv_ack() {
                    Ok(Some(a)) => {
                        if let Err(e) = self.primary.handle_ack(a, now) {
                            self.fail(Who::Primary, Failure::Engine(e));
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fail(Who::Primary, Failure::Channel(e));
                        break;
                    }
                }
            }
        }
        if let Err(e) = self.primary.step(now) {
            self.errors
                .push((self.rounds, Who::Primary, Failure::Engine(e)));
        }
        while let Some(t) = self
            .p_pending
            .take()
            .or_else(|| self.primary.poll_transmit(now))
        {
            let Transmit::Records(r) = &t else { continue };
            if !self.p_up {
                continue;
            }
            match self.pend.send_records(r) {
                Ok(()) => {}
                Err(ChannelError::Full) => {
                    self.p_pending = Some(t);
                    break;
                }
                Err(e) => self.fail(Who::Primary, Failure::Channel(e)),
            }
        }
        Self::commands(&mut self.primary, &self.arbiter, now);
        while let Some((t, n)) = self.primary.poll_notice() {
            self.notices.push((Who::Primary, t, n));
        }

        // Backup.
        if self.b_up {
            while self.backup.inbox_space() >= self.backup.config().max_batch {
                match self.bend.try_recv_records() {
                    Ok(Some(batch)) => {
                        if let Err(e) = self.backup.handle_records(batch, now) {
                            self.fail(Who::Backup, Failure::Engine(e));
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fail(Who::Backup, Failure::Channel(e));
                        break;
                    }
                }
            }
        }
        if let Err(e) = self.backup.step(now) {
            self.errors
                .push((self.rounds, Who::Backup, Failure::Engine(e)));
        }
        while let Some(t) = self
            .b_pending
            .take()
            .or_else(|| self.backup.poll_transmit(now))
        {
            let Transmit::Ack(a) = &t else { continue };
            if !self.b_up {
                continue;
            }
            match self.bend.send_ack(*a) {
                Ok(()) => {}
                Err(ChannelError::Full) => {
                    self.b_pending = Some(t);
                    break;
                }
                Err(e) => self.fail(Who::Backup, Failure::Channel(e)),
            }
        }
        Self::commands(&mut self.backup, &self.arbiter, now);
        while let Some((t, n)) = self.backup.poll_notice() {
            self.notices.push((Who::Backup, t, n));
        }

        self.now += self.dt;
        self.rounds += 1;
    }

    fn commands(node: &mut ToyNode, arbiter: &InProcessArbiter, now: Nanos) {
        while let Some(Command::TestAndSet { pair, me, .. }) = node.poll_command() {
            node.on_arbiter(arbiter.test_and_set(pair, me), now);
        }
    }

    /// Both guests ended, the backup replayed everything and the primary holds nothing.
    pub fn both_finished(&self) -> bool {
        self.primary.exit_code().is_some()
            && self.primary.held_outputs() == 0
            && self.primary.buffered_records() == 0
            && self.backup.exit_code().is_some()
            && self.backup.buffered_records() == 0
    }

    /// Run rounds until `stop` holds or `max` rounds passed; whether `stop` held.
    pub fn run_until(&mut self, max: u64, mut stop: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..max {
            if stop(self) {
                return true;
            }
            self.round();
        }
        stop(self)
    }

    pub fn first_error(&self, who: Who) -> Option<&Failure> {
        self.errors.iter().find(|e| e.1 == who).map(|e| &e.2)
    }
}

/// The clone-offer contract every arbiter keeps, on `vm` of two handles `a` and `b` on
/// the same store: only the holder of a claim publishes an offer for it; a reader
/// sees the offer of the newest claimed generation only; withdrawal by another node
/// leaves it, by its member removes it; a republished offer replaces the old one.
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub fn offers_follow_the_claims(a: &dyn ft_core::Arbiter, b: &dyn ft_core::Arbiter, vm: u64) {
    use ft_core::{ArbiterError, CloneOffer, NodeId, PairId};
    let g = |generation| PairId { vm, generation };
    let offer = |generation, member, addr: &str| CloneOffer {
        pair: g(generation),
        member: NodeId(member),
        addr: addr.to_string(),
    };
    assert_eq!(b.clone_offer(vm), Ok(None));
    // Nobody holds generation 1: nobody may offer it.
    assert!(matches!(
        a.publish_offer(&offer(1, 1, "10.0.0.1:7100")),
        Err(ArbiterError::Failed(_))
    ));
    a.test_and_set(g(1), NodeId(1)).unwrap();
    let e = b.publish_offer(&offer(1, 2, "10.0.0.2:7100")).unwrap_err();
    assert!(e.to_string().contains("node 1 holds it"), "{e}");
    a.publish_offer(&offer(1, 1, "10.0.0.1:7100")).unwrap();
    assert_eq!(b.clone_offer(vm), Ok(Some(offer(1, 1, "10.0.0.1:7100"))));
    assert_eq!(b.clone_offer(vm + 1000), Ok(None));
    a.publish_offer(&offer(1, 1, "host-a:7200")).unwrap();
    assert_eq!(b.clone_offer(vm), Ok(Some(offer(1, 1, "host-a:7200"))));
    b.withdraw_offer(g(1), NodeId(2)).unwrap();
    assert!(
        b.clone_offer(vm).unwrap().is_some(),
        "another node's withdrawal"
    );
    a.withdraw_offer(g(1), NodeId(1)).unwrap();
    assert_eq!(b.clone_offer(vm), Ok(None));
    a.withdraw_offer(g(1), NodeId(1)).unwrap();
    // A newer claim hides the older generation's offer, even one published again.
    a.publish_offer(&offer(1, 1, "host-a:7200")).unwrap();
    b.test_and_set(g(2), NodeId(2)).unwrap();
    assert_eq!(a.clone_offer(vm), Ok(None));
    b.publish_offer(&offer(2, 2, "host-b:7300")).unwrap();
    assert_eq!(a.clone_offer(vm), Ok(Some(offer(2, 2, "host-b:7300"))));
}

/// The reservation contract ([`Arbiter::reserve_generation`]), on handles made by
/// `handle` (each thread gets its own, as processes would): `threads` racing threads
/// each read the VM's newest generation and reserve the next, until each has
/// `per_thread` reservations; `vm` already has a claim of generation 3. A reservation
/// after a generation that is not the newest is refused; every reservation is the
/// generation after the one its thread read, none is taken twice, each thread's grow,
/// and the arbiter says who reserved each. The newest generation is the last
/// reservation, and a claim on a reserved generation is an ordinary claim.
pub fn reservations_are_unique<A: Arbiter + Send + 'static>(
    handle: impl Fn() -> A,
    vm: u64,
    threads: usize,
    per_thread: usize,
) {
    let a = handle();
    let claimed = ft_core::PairId { vm, generation: 3 };
    assert!(matches!(
        a.test_and_set(claimed, NodeId(99)),
        Ok(ft_core::Decision::Won { .. })
    ));
    assert_eq!(a.newest_generation(vm), Ok(Some(3)));
    assert_eq!(a.reserved_by(claimed), Ok(None));
    // A stale read loses: 2 is not the newest generation, nor is "none".
    assert_eq!(
        a.reserve_generation(vm, NodeId(1), Some(2), Purpose::NewPair),
        Ok(None)
    );
    assert_eq!(
        a.reserve_generation(vm, NodeId(1), None, Purpose::NewPair),
        Ok(None)
    );
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let joins: Vec<_> = (0..threads)
        .map(|t| {
            let (arb, barrier) = (handle(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let (mut got, mut lost) = (Vec::new(), 0u64);
                while got.len() < per_thread {
                    let read = arb.newest_generation(vm).unwrap();
                    match arb
                        .reserve_generation(vm, NodeId(t as u64 + 1), read, Purpose::NewPair)
                        .unwrap()
                    {
                        Some(g) => {
                            assert_eq!(Some(g - 1), read, "reserved {g} after reading {read:?}");
                            got.push(g);
                        }
                        None => lost += 1,
                    }
                }
                (got, lost)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut lost = 0;
    for (t, j) in joins.into_iter().enumerate() {
        let (got, l) = j.join().unwrap();
        lost += l;
        assert!(got.windows(2).all(|w| w[0] < w[1]), "thread {t}: {got:?}");
        for &g in &got {
            assert!(g > 3, "reserved {g} at or below the claim of generation 3");
            let pair = ft_core::PairId { vm, generation: g };
            assert_eq!(a.reserved_by(pair), Ok(Some(NodeId(t as u64 + 1))));
        }
        all.extend(got);
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a generation was reserved twice");
    assert_eq!(n, threads * per_thread);
    println!("{n} reservations by {threads} racing threads, {lost} lost races");
    let newest = *all.last().unwrap();
    assert_eq!(newest, 3 + n as u64, "the reservations are consecutive");
    assert_eq!(a.newest_generation(vm), Ok(Some(newest)));
    assert_eq!(a.newest_claimed(vm), Ok(Some(3)));
    // Another VM is untouched.
    assert_eq!(a.newest_generation(vm + 1), Ok(None));
    // The membership record names the newest generation, its reserver, then its holder.
    let m = a.membership(vm).unwrap().unwrap();
    assert_eq!(m.pair.generation, newest);
    assert!(m.reserved_by.is_some());
    assert_eq!(m.holder, None);
    let winner = NodeId(42);
    assert!(matches!(
        a.test_and_set(m.pair, winner),
        Ok(ft_core::Decision::Won { .. })
    ));
    assert_eq!(
        a.membership(vm).unwrap().map(|m| m.holder),
        Some(Some(winner))
    );
    // The next reservation is above it all; a claim of the next generation first
    // makes it lose.
    assert_eq!(
        a.reserve_generation(vm, NodeId(1), Some(newest), Purpose::NewPair),
        Ok(Some(newest + 1))
    );
    let next = ft_core::PairId {
        vm,
        generation: newest + 2,
    };
    assert!(matches!(
        a.test_and_set(next, NodeId(5)),
        Ok(ft_core::Decision::Won { .. })
    ));
    assert_eq!(
        a.reserve_generation(vm, NodeId(1), Some(newest + 1), Purpose::Clone),
        Ok(None)
    );
    // What a reservation is for is kept: a live member's clone is told apart from a
    // new pair of the same node (the holder of the generation before).
    assert_eq!(
        a.reserve_generation(vm, NodeId(5), Some(newest + 2), Purpose::Clone),
        Ok(Some(newest + 3))
    );
    let clone = ft_core::PairId {
        vm,
        generation: newest + 3,
    };
    assert_eq!(
        a.reservation(clone),
        Ok(Some(ft_core::Reservation {
            node: NodeId(5),
            purpose: Purpose::Clone
        }))
    );
    assert!(a.membership(vm).unwrap().unwrap().clone_of_live_member());
    assert!(matches!(
        a.test_and_set(clone, NodeId(5)),
        Ok(ft_core::Decision::Won { .. })
    ));
    assert_eq!(
        a.reserve_generation(vm, NodeId(5), Some(newest + 3), Purpose::NewPair),
        Ok(Some(newest + 4))
    );
    let m = a.membership(vm).unwrap().unwrap();
    assert_eq!(m.reserved_for, Some(Purpose::NewPair));
    assert!(!m.clone_of_live_member(), "{m:?}");
}
