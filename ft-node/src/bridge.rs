//! The client bridge: external clients reach the guest's network device over TCP.
//!
//! A node binds its client address at start. It **serves** while it owns the service:
//! a primary from the start, a backup once it went live (its world's announce moves
//! the [`Network`] to it). A client that connects to a node that does not serve gets
//! `hello serving=0` and is closed; it tries the other address. This is the honest
//! stand-in for VMware FT's gratuitous ARP: the client knows both addresses and fails
//! over itself (see [`crate::wire`] for the protocol and [`crate::client`] for the
//! client).
//!
//! While serving, each request payload becomes one packet on the guest's network
//! device (through the [`Network`] that [`ft_sim::SimWorld`] polls), and every guest output —
//! network replies and console lines, each with its deterministic sequence number —
//! goes to every connected client.
//!
//! Two host-side memories make a failover seamless for a client without the guest
//! knowing:
//!
//! * **History.** The bridge keeps the last [`HISTORY`] guest outputs: those released
//!   while serving and, on a backup, those it produced while replaying (the same bytes
//!   the primary produced: replay is deterministic). A client connecting gets the
//!   history, then `synced`. Outputs the engine re-sends at go-live (possible repeats)
//!   are among them, and so are outputs the dead primary released that the client
//!   may have lost in the dying connection — the retransmission a guest TCP stack
//!   would do.
//! * **Received payloads.** The bridge taps the machine's packet injection
//!   ([`TappedMachine`]) and remembers the payloads the guest's network device took
//!   in, whether live or replayed. A request the client re-sends after a failover
//!   (`retry = 1`) whose payload the guest already took in is dropped: the guest
//!   answers it (or answered it) once. This is the stand-in for TCP's dedupe of
//!   retransmitted segments, so a request is processed exactly once. The dedupe
//!   compares whole payloads, so a payload must not repeat between client sessions
//!   (the way TCP's sequence numbers start afresh per connection): the client's
//!   request names carry its session id ([`crate::client`]), and a later session's
//!   retry is never taken for an earlier session's request.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ft_core::{
    AsyncEvent, EventSource, ExecPoint, InputRequest, IoRequest, Nanos, Output, SourceResult, Stop,
    World,
};
use ft_sim::devices::id;
use ft_sim::{Machine, Network};
use parking_lot::Mutex;

use crate::progress::Log;
use crate::wire::{self, Frame};

/// Outputs kept for clients that connect later.
pub const HISTORY: usize = 1 << 16;
/// Received payloads remembered for retry dedupe.
pub const RECEIVED: usize = 1 << 16;

/// Errors of the client bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The client address could not be bound.
    #[error("client address {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = BridgeError> = std::result::Result<T, E>;

/// Newest received requests and outputs a live clone carries to the new backup's
/// bridge.
pub const CARRIED: usize = 4096;

/// What the live member's bridge hands the clone's, with the guest's CPU and device
/// state: the newest payloads the guest took in (so a client's retry of a request the
/// guest received before the clone point is dropped by the clone, once it is live, as
/// it would be by the member), and the newest outputs (so a client that reconnects to
/// the clone is sent outputs from before the clone point it may have missed).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Carried {
    received: Vec<Bytes>,
    history: Vec<(Output, bool)>,
}

#[derive(Debug, Default)]
struct Shared {
    history: BTreeMap<u64, (Output, bool)>,
    clients: Vec<(u64, Sender<Arc<[u8]>>)>,
    next_client: u64,
    received: HashSet<Bytes>,
    received_order: VecDeque<Bytes>,
    retries_dropped: u64,
    writers: Vec<JoinHandle<()>>,
    closed: bool,
}

/// The node's client bridge. See the module docs.
#[derive(Debug)]
pub struct Bridge {
    shared: Mutex<Shared>,
    network: Network,
    side: &'static str,
    node: u64,
    log: Log,
    addr: SocketAddr,
}

impl Bridge {
    /// Bind `addr` and start accepting clients. The bridge serves while `network` is
    /// owned by `side`.
    pub fn bind(
        addr: &str,
        network: Network,
        side: &'static str,
        node: u64,
        log: Log,
    ) -> Result<Arc<Bridge>> {
        let bind_err = |source| BridgeError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        let bridge = Arc::new(Bridge {
            shared: Mutex::new(Shared::default()),
            network,
            side,
            node,
            log,
            addr: local,
        });
        let b = bridge.clone();
        std::thread::Builder::new()
            .name("ft-bridge-accept".into())
            .spawn(move || b.accept_loop(listener))
            .map_err(bind_err)?;
        Ok(bridge)
    }

    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether requests reach the guest through this node now.
    pub fn serving(&self) -> bool {
        self.network.owner() == self.side
    }

    /// Retried requests dropped because the guest already had them.
    pub fn retries_dropped(&self) -> u64 {
        self.shared.lock().retries_dropped
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if self.shared.lock().closed {
                return;
            }
            let b = self.clone();
            let spawned = std::thread::Builder::new()
                .name("ft-bridge-client".into())
                .spawn(move || b.serve_client(stream));
            if let Err(e) = spawned {
                self.log
                    .line(format_args!("client bridge: cannot serve a client: {e}"));
            }
        }
    }

    fn serve_client(self: Arc<Self>, stream: TcpStream) {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        if !self.serving() {
            let mut s = &stream;
            let _ = wire::write_frame(
                &mut s,
                &Frame::Hello {
                    serving: false,
                    node: self.node,
                },
            );
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        let Ok(write_half) = stream.try_clone() else {
            return;
        };
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<[u8]>>();
        let (client, sent) = {
            let mut sh = self.shared.lock();
            if sh.closed {
                return;
            }
            let hello = Frame::Hello {
                serving: true,
                node: self.node,
            };
            let _ = tx.send(hello.encode().into());
            let sent = sh.history.len() as u64;
            for (o, repeat) in sh.history.values() {
                let _ = tx.send(output_frame(o, *repeat).encode().into());
            }
            let _ = tx.send(Frame::Synced { outputs: sent }.encode().into());
            sh.next_client += 1;
            let client = sh.next_client;
            sh.clients.push((client, tx));
            let writer = std::thread::Builder::new()
                .name("ft-bridge-writer".into())
                .spawn(move || write_loop(write_half, rx));
            if let Ok(w) = writer {
                sh.writers.push(w);
            }
            (client, sent)
        };
        self.log.line(format_args!(
            "client {client} connected from {peer}; sent {sent} outputs of history"
        ));
        let mut reader = BufReader::new(&stream);
        let mut requests = 0u64;
        loop {
            match wire::read_frame(&mut reader) {
                Ok(Some(Frame::Request { retry, payload })) => {
                    requests += 1;
                    if !self.serving() {
                        continue;
                    }
                    if retry {
                        let mut sh = self.shared.lock();
                        if sh.received.contains(&payload) {
                            sh.retries_dropped += 1;
                            continue;
                        }
                    }
                    self.network.send(payload);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.shared.lock().clients.retain(|(c, _)| *c != client);
        self.log.line(format_args!(
            "client {client} left after {requests} requests"
        ));
    }

    /// A guest output reached the world: keep it and send it to every client.
    fn output(&self, o: &Output, possible_repeat: bool) {
        let frame: Arc<[u8]> = output_frame(o, possible_repeat).encode().into();
        let mut sh = self.shared.lock();
        remember_output(&mut sh, o, possible_repeat);
        sh.clients.retain(|(_, tx)| tx.send(frame.clone()).is_ok());
    }

    /// A guest output produced while replaying: kept for the history only.
    fn replayed(&self, o: &Output) {
        let mut sh = self.shared.lock();
        remember_output(&mut sh, o, false);
    }

    /// What a clone carries to the new backup's bridge (see [`Carried`]).
    fn carry(&self) -> Carried {
        let sh = self.shared.lock();
        let skip = sh.received_order.len().saturating_sub(CARRIED);
        let history = sh.history.values().rev().take(CARRIED).rev().cloned();
        Carried {
            received: sh.received_order.iter().skip(skip).cloned().collect(),
            history: history.collect(),
        }
    }

    /// Take what the live member's bridge carried, before replay starts.
    fn adopt(&self, carried: Carried) {
        for payload in &carried.received {
            self.guest_received(payload);
        }
        let mut sh = self.shared.lock();
        for (o, possible_repeat) in &carried.history {
            remember_output(&mut sh, o, *possible_repeat);
        }
    }

    /// The guest's network device took in `payload`.
    fn guest_received(&self, payload: &Bytes) {
        let mut sh = self.shared.lock();
        if sh.received.insert(payload.clone()) {
            sh.received_order.push_back(payload.clone());
            if sh.received_order.len() > RECEIVED {
                if let Some(old) = sh.received_order.pop_front() {
                    sh.received.remove(&old);
                }
            }
        }
    }

    /// Stop taking clients and flush what was queued for them (at most `limit`).
    pub fn finish(&self, limit: Duration) {
        let writers = {
            let mut sh = self.shared.lock();
            sh.closed = true;
            sh.clients.clear();
            std::mem::take(&mut sh.writers)
        };
        let deadline = Instant::now() + limit;
        for w in writers {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

fn remember_output(sh: &mut Shared, o: &Output, possible_repeat: bool) {
    sh.history
        .entry(o.seq.0)
        .or_insert_with(|| (o.clone(), possible_repeat));
    while sh.history.len() > HISTORY {
        sh.history.pop_first();
    }
}

fn output_frame(o: &Output, possible_repeat: bool) -> Frame {
    Frame::Output {
        seq: o.seq.0,
        device: o.device.0,
        possible_repeat,
        data: o.data.clone(),
    }
}

fn write_loop(stream: TcpStream, rx: Receiver<Arc<[u8]>>) {
    let mut w = BufWriter::new(&stream);
    while let Ok(frame) = rx.recv() {
        if w.write_all(&frame).is_err() {
            return;
        }
        // Batch what is already queued, then flush.
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).is_err() {
                return;
            }
        }
        if w.flush().is_err() {
            return;
        }
    }
    let _ = w.flush();
    drop(w);
    let _ = stream.shutdown(Shutdown::Both);
}

/// A [`World`] that hands guest outputs to the client bridge instead of a sink, and
/// reports the first new output after going live.
#[derive(Debug)]
pub struct BridgeWorld<W> {
    inner: W,
    bridge: Arc<Bridge>,
    log: Log,
    live_since: Option<Nanos>,
    first_new_reported: bool,
}

impl<W> BridgeWorld<W> {
    /// Wrap `inner`.
    pub fn new(inner: W, bridge: Arc<Bridge>, log: Log) -> BridgeWorld<W> {
        BridgeWorld {
            inner,
            bridge,
            log,
            live_since: None,
            first_new_reported: false,
        }
    }

    /// The wrapped world.
    pub fn inner(&self) -> &W {
        &self.inner
    }
}

impl<W: World> World for BridgeWorld<W> {
    fn input(&mut self, req: &InputRequest, now: Nanos) -> Bytes {
        self.inner.input(req, now)
    }

    fn poll(&mut self, now: Nanos, out: &mut Vec<AsyncEvent>) {
        self.inner.poll(now, out)
    }

    fn next_deadline(&self) -> Option<Nanos> {
        self.inner.next_deadline()
    }

    fn start_io(&mut self, req: &IoRequest, now: Nanos) {
        self.inner.start_io(req, now)
    }

    fn emit(&mut self, output: &Output, possible_repeat: bool, now: Nanos) {
        if let Some(live) = self.live_since {
            if !possible_repeat && !self.first_new_reported {
                self.first_new_reported = true;
                self.log.line(format_args!(
                    "first new output as the new primary: #{} ({:.3} ms after going live)",
                    output.seq.0,
                    now.saturating_sub(live) as f64 / 1e6
                ));
            }
        }
        self.bridge.output(output, possible_repeat);
    }

    fn replayed_output(&mut self, output: &Output) {
        self.bridge.replayed(output);
    }

    fn apply_private_write(&mut self, req: &IoRequest) {
        self.inner.apply_private_write(req)
    }

    fn read_local(&mut self, req: &IoRequest) -> Bytes {
        self.inner.read_local(req)
    }

    fn fence(&mut self, token: u64) {
        self.inner.fence(token)
    }

    fn go_live(&mut self, now: Nanos) {
        self.live_since = Some(now);
        self.inner.go_live(now)
    }

    fn announce(&mut self, now: Nanos) {
        self.inner.announce(now)
    }
}

/// A machine whose network device can say how many packets it dropped (a full
/// receive queue): a packet it dropped was not received by the guest.
pub trait NetDrops {
    /// Packets the network device dropped so far.
    fn net_dropped(&self) -> u64;
}

impl NetDrops for Machine {
    fn net_dropped(&self) -> u64 {
        Machine::net_dropped(self)
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
impl NetDrops for ft_kvm::machine::KvmMachine {
    fn net_dropped(&self) -> u64 {
        self.devices().net_dropped()
    }
}

/// A machine (ft-sim's by default, or a KVM guest) with its packet injection tapped
/// for the bridge's received set.
#[derive(Debug)]
pub struct TappedMachine<M = Machine> {
    inner: M,
    bridge: Arc<Bridge>,
}

impl<M> TappedMachine<M> {
    /// Wrap `machine`.
    pub fn new(machine: M, bridge: Arc<Bridge>) -> TappedMachine<M> {
        TappedMachine {
            inner: machine,
            bridge,
        }
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.inner
    }
}

impl<M: EventSource + NetDrops> EventSource for TappedMachine<M> {
    fn point(&self) -> ExecPoint {
        self.inner.point()
    }

    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        self.inner.run(until)
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        self.inner.supply_input(data)
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        let dropped = self.inner.net_dropped();
        self.inner.inject(event)?;
        if let AsyncEvent::DeviceInput { device, data } = event {
            if *device == id::NET && self.inner.net_dropped() == dropped {
                self.bridge.guest_received(data);
            }
        }
        Ok(())
    }

    fn digest(&mut self) -> SourceResult<u64> {
        self.inner.digest()
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()> {
        self.inner.restore(snapshot)
    }

    // State transfer for live clone: the machine's own.

    fn memory_layout(&self) -> SourceResult<ft_core::MemoryLayout> {
        self.inner.memory_layout()
    }

    fn start_dirty_log(&mut self) -> SourceResult<()> {
        self.inner.start_dirty_log()
    }

    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        self.inner.take_dirty_pages(out)
    }

    fn stop_dirty_log(&mut self) {
        self.inner.stop_dirty_log()
    }

    fn read_page(&self, index: u64, buf: &mut [u8]) -> SourceResult<()> {
        self.inner.read_page(index, buf)
    }

    fn write_page(&mut self, index: u64, data: &[u8]) -> SourceResult<()> {
        self.inner.write_page(index, data)
    }

    fn page_is_zero(&self, index: u64) -> bool {
        self.inner.page_is_zero(index)
    }

    fn zero_page(&mut self, index: u64) -> SourceResult<()> {
        self.inner.zero_page(index)
    }

    /// The machine's CPU and devices, then what the bridge carries to the clone's
    /// bridge (`Carried`).
    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        let machine = self.inner.save_cpu_devices()?;
        let carried = postcard::to_stdvec(&self.bridge.carry())
            .map_err(|e| ft_core::SourceError::Snapshot(format!("the bridge's state: {e}")))?;
        let len = u32::try_from(machine.len())
            .map_err(|_| ft_core::SourceError::Snapshot("machine state beyond 4 GiB".into()))?;
        let mut out = Vec::with_capacity(8 + machine.len() + carried.len());
        out.extend_from_slice(&CARRY_MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&machine);
        out.extend_from_slice(&carried);
        Ok(out)
    }

    fn load_cpu_devices(&mut self, state: &[u8]) -> SourceResult<()> {
        let bad = |what: &str| ft_core::SourceError::Snapshot(format!("clone state: {what}"));
        let rest = state
            .strip_prefix(&CARRY_MAGIC[..])
            .ok_or_else(|| bad("not from an ft-node (no bridge state)"))?;
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("truncated"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad("truncated machine state"));
        }
        let (machine, carried) = rest.split_at(len);
        let carried: Carried =
            postcard::from_bytes(carried).map_err(|e| bad(&format!("the bridge's state: {e}")))?;
        self.inner.load_cpu_devices(machine)?;
        self.bridge.adopt(carried);
        Ok(())
    }
}

/// The tag of a clone's CPU-and-device blob from a [`TappedMachine`].
const CARRY_MAGIC: [u8; 4] = *b"FTBR";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ft_core::ExecPoint;
    use ft_sim::{Machine, MachineConfig};

    /// A guest that writes 16 pages per pass, each pass from an RNG read.
    fn tapped(bridge: &Arc<Bridge>) -> TappedMachine {
        let image = ft_sim::guests::dirtier(16 * 4096, 0, 0).unwrap();
        TappedMachine::new(
            Machine::from_raw(
                MachineConfig {
                    // Room for the working set above the dirtier's base.
                    ram_size: 8 << 20,
                    ..MachineConfig::default()
                },
                &image,
            )
            .unwrap(),
            bridge.clone(),
        )
    }

    /// The tapped machine hands the clone what the machine has: its layout, dirty
    /// pages, pages and CPU state. Copied through the wrapper, a fresh machine ends
    /// in the same state.
    #[test]
    fn state_transfer_goes_through_the_tap() {
        let bridge = Bridge::bind(
            "127.0.0.1:0",
            Network::new("primary"),
            "primary",
            1,
            Log::new("test"),
        )
        .unwrap();
        let mut from = tapped(&bridge);
        let mut to = tapped(&bridge);
        let layout = from.memory_layout().unwrap();
        assert_eq!(layout, to.memory_layout().unwrap());
        from.start_dirty_log().unwrap();
        let until = ExecPoint {
            count: 20_000,
            ..from.point()
        };
        while from.point() < until {
            match from.run(until).unwrap() {
                ft_core::Stop::Input(req) => {
                    from.supply_input(&vec![7; usize::from(req.size)]).unwrap()
                }
                ft_core::Stop::Reached => {}
                other => panic!("the dirtier stopped at {other:?}"),
            }
        }
        let mut dirty = Vec::new();
        from.take_dirty_pages(&mut dirty).unwrap();
        assert!(!dirty.is_empty(), "the guest wrote memory");
        from.stop_dirty_log();
        let mut page = vec![0u8; layout.page_size as usize];
        for i in 0..layout.pages {
            if from.page_is_zero(i) {
                to.zero_page(i).unwrap();
            } else {
                from.read_page(i, &mut page).unwrap();
                to.write_page(i, &page).unwrap();
            }
        }
        to.load_cpu_devices(&from.save_cpu_devices().unwrap())
            .unwrap();
        assert_eq!(to.point(), from.point());
        assert_eq!(to.digest().unwrap(), from.digest().unwrap());
    }

    fn bridge(side: &'static str) -> Arc<Bridge> {
        Bridge::bind(
            "127.0.0.1:0",
            Network::new("primary"),
            side,
            1,
            Log::new("test"),
        )
        .unwrap()
    }

    /// A clone carries the member's received set and output history to the clone's
    /// bridge: a retry of a request the guest took in before the clone point is known
    /// there, and the outputs before it are in the history a reconnecting client gets.
    /// A blob that is not a tapped machine's is refused.
    #[test]
    fn a_clone_carries_the_bridges_received_set_and_history() {
        let (member, clone) = (bridge("primary"), bridge("backup"));
        let (from, mut to) = (tapped(&member), tapped(&clone));
        for i in 0..(CARRIED as u64 + 10) {
            member.guest_received(&Bytes::from(format!("req-{i}")));
            let o = Output {
                seq: ft_core::OutputSeq(i),
                device: id::NET,
                data: Bytes::from(format!("answer-{i}")),
            };
            member.output(&o, false);
        }
        to.load_cpu_devices(&from.save_cpu_devices().unwrap())
            .unwrap();
        let sh = clone.shared.lock();
        // The newest CARRIED of each, in order.
        assert_eq!(sh.received.len(), CARRIED);
        assert!(sh
            .received
            .contains(&Bytes::from(format!("req-{}", CARRIED + 9))));
        assert!(!sh.received.contains(&Bytes::from("req-9")));
        assert_eq!(sh.received_order.front(), Some(&Bytes::from("req-10")));
        assert_eq!(sh.history.len(), CARRIED);
        assert_eq!(sh.history.keys().next(), Some(&10));
        assert_eq!(
            sh.history
                .get(&(CARRIED as u64 + 9))
                .map(|(o, _)| o.data.clone()),
            Some(Bytes::from(format!("answer-{}", CARRIED + 9)))
        );
        drop(sh);
        let machine_only = from.machine().save_cpu_devices().unwrap();
        assert!(matches!(
            to.load_cpu_devices(&machine_only),
            Err(ft_core::SourceError::Snapshot(_))
        ));
        let mut truncated = from.save_cpu_devices().unwrap();
        truncated.truncate(10);
        assert!(to.load_cpu_devices(&truncated).is_err());
    }
}
