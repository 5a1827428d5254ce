//! A client of the guest service: sends numbered requests through a node's client
//! bridge, fails over between the two nodes' addresses, and counts the answers by
//! output sequence number.
//!
//! Each run of the client is a **session** with a fresh 64-bit id ([`new_session`]).
//! Its requests are `req-<session>-<id>` packets (and a final `quit-<session>`; the
//! session in 16 hex digits), so that no two sessions send the same payload: the
//! service guest answers each with `[counter, clock, random, ticks, payload]`, and the
//! client takes as its own only the answers that echo its own session. A node's
//! history (see [`crate::bridge`]) also holds the answers to earlier sessions; they
//! are counted ([`ClientReport::foreign`]) but answer nothing of this one, and the
//! bridge's dedupe of re-sent requests, which compares payloads, never takes one of
//! this session's retries for an earlier session's request. The client keeps at most
//! [`ClientConfig::window`] requests unanswered (the guest's network device queues 32
//! packets). When its connection drops, it connects to the next address that serves,
//! takes the node's history of outputs (deduplicated here by sequence number), and only
//! then re-sends, flagged as retries, the requests still unanswered: those the dead
//! primary took in but never logged.
//!
//! [`ClientReport::verify`] checks what an exactly-once consumer needs: no two
//! different outputs with one sequence number, every sequence number from 0 with no
//! gap, every request answered exactly once, and the service's counter going up by
//! exactly one from reply to reply.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, Sender};
use ft_sim::devices::id;
use ft_sim::guests::parse_reply;

use crate::progress::Log;
use crate::wire::{self, Frame};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No address served within the limit.
    #[error("no node serves at {addrs:?} (tried for {waited:?})")]
    NoServer {
        /// The addresses tried.
        addrs: Vec<SocketAddr>,
        /// How long.
        waited: Duration,
    },
    /// The run did not finish within its limit.
    #[error("client gave up after {limit:?}: {state}")]
    Timeout {
        /// The limit.
        limit: Duration,
        /// Where it was.
        state: String,
    },
    /// A socket failed where it must not.
    #[error("client: {0}")]
    Io(#[from] io::Error),
}

/// Result alias of this module.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A node's client address (`HOST:PORT`) that cannot be used. Each names the string
/// as it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Nothing before the port (`:7001`).
    #[error("bad address {addr:?}: no host before the port (HOST:PORT)")]
    EmptyHost {
        /// The address given.
        addr: String,
    },
    /// No `:PORT` at the end (`localhost`), or nothing after the colon.
    #[error("bad address {addr:?}: no port (HOST:PORT)")]
    MissingPort {
        /// The address given.
        addr: String,
    },
    /// An IPv6 host without brackets (`::1:7001`): where its port starts is ambiguous.
    #[error("bad address {addr:?}: an IPv6 host goes in brackets, as in [::1]:7001")]
    Ipv6NeedsBrackets {
        /// The address given.
        addr: String,
    },
    /// The port is not a number.
    #[error("bad address {addr:?}: port {port:?} is not a number")]
    BadPort {
        /// The address given.
        addr: String,
        /// What stood for the port.
        port: String,
    },
    /// The port is 0 or above 65535.
    #[error("bad address {addr:?}: port {port} is out of range (1 to 65535)")]
    PortOutOfRange {
        /// The address given.
        addr: String,
        /// The port given.
        port: String,
    },
    /// The host name does not resolve (or resolves to no address).
    #[error("bad address {addr:?}: host {host:?} does not resolve: {reason}")]
    Unresolvable {
        /// The address given.
        addr: String,
        /// The host part.
        host: String,
        /// What the resolver said.
        reason: String,
    },
}

/// Every socket address `addr` (`HOST:PORT`, `IP:PORT` or `[IPv6]:PORT`) stands for,
/// in the resolver's order without repeats: a host name is resolved by the system
/// (`localhost:7001` works as it does for `ft-node --client-listen`).
///
/// # Errors
///
/// An [`AddrError`] naming `addr`: an empty host, a missing or non-numeric port, a
/// port out of 1..=65535, an IPv6 host without brackets, a name that does not resolve.
pub fn resolve_addr(addr: &str) -> std::result::Result<Vec<SocketAddr>, AddrError> {
    let owned = || addr.to_string();
    if let Ok(a) = addr.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(AddrError::PortOutOfRange {
                addr: owned(),
                port: "0".into(),
            });
        }
        return Ok(vec![a]);
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddrError::MissingPort { addr: owned() })?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| AddrError::MissingPort { addr: owned() })?;
        (host, port)
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| AddrError::MissingPort { addr: owned() })?;
        if host.contains(':') {
            return Err(AddrError::Ipv6NeedsBrackets { addr: owned() });
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(AddrError::MissingPort { addr: owned() });
    }
    if host.is_empty() {
        return Err(AddrError::EmptyHost { addr: owned() });
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::BadPort {
            addr: owned(),
            port: port.into(),
        });
    }
    let port_num = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AddrError::PortOutOfRange {
            addr: owned(),
            port: port.into(),
        })?;
    let unresolvable = |reason: String| AddrError::Unresolvable {
        addr: owned(),
        host: host.into(),
        reason,
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in (host, port_num)
        .to_socket_addrs()
        .map_err(|e| unresolvable(e.to_string()))?
    {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(unresolvable("no addresses".into()));
    }
    Ok(out)
}

/// The first address [`resolve_addr`] gives for `addr`: the one a server given the
/// same name binds (the standard library binds the first that works).
///
/// # Errors
///
/// As [`resolve_addr`].
pub fn parse_addr(addr: &str) -> std::result::Result<SocketAddr, AddrError> {
    let all = resolve_addr(addr)?;
    all.first().copied().ok_or_else(|| AddrError::Unresolvable {
        addr: addr.into(),
        host: addr.into(),
        reason: "no addresses".into(),
    })
}

/// A fresh session id: 64 bits from the standard library's randomly keyed hasher
/// (seeded by the operating system), mixed with the clock and the process id, so two
/// runs of the client, at once or one after the other, get different ones.
pub fn new_session() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// The request names of one session: `req-<session>-<id>` for `id` below
/// `requests`, and `quit-<session>` (the guest ends at a request that starts with
/// `quit`) for `id == requests`; the session in 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// The session id.
    pub session: u64,
    /// Requests of the session before its `quit`.
    pub requests: u64,
}

impl Names {
    /// The payload of request `id` (`id == requests` is the `quit`).
    pub fn name(&self, id: u64) -> String {
        if id == self.requests {
            format!("quit-{:016x}", self.session)
        } else {
            format!("req-{:016x}-{id}", self.session)
        }
    }

    /// Whether `name` is a request of this session (with any id).
    pub fn is_own(&self, name: &str) -> bool {
        name == format!("quit-{:016x}", self.session)
            || name.starts_with(&format!("req-{:016x}-", self.session))
    }

    /// The id of this session's request `name`, if it is one of its
    /// `requests` (or its `quit`).
    pub fn id(&self, name: &str) -> Option<u64> {
        if name == format!("quit-{:016x}", self.session) {
            return Some(self.requests);
        }
        let id: u64 = name
            .strip_prefix(&format!("req-{:016x}-", self.session))?
            .parse()
            .ok()?;
        (id < self.requests).then_some(id)
    }
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The nodes' client addresses, in the order to try them.
    pub addrs: Vec<SocketAddr>,
    /// Requests to send (`req-<session>-0` .. `req-<session>-<n-1>`).
    pub requests: u64,
    /// Most requests unanswered at once.
    pub window: usize,
    /// Pause between two new requests.
    pub gap: Duration,
    /// Send `quit` after the last answer, and wait for the node to end.
    pub quit: bool,
    /// Give up after this long.
    pub limit: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addrs: Vec::new(),
            requests: 200,
            window: 8,
            gap: Duration::from_millis(2),
            quit: true,
            limit: Duration::from_secs(60),
        }
    }
}

/// Live counters another thread may watch (a test that kills a node at the N-th
/// answer).
#[derive(Debug, Default)]
pub struct ClientStatus {
    answered: AtomicU64,
    connections: AtomicU64,
}

impl ClientStatus {
    /// Distinct requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Connections to a serving node so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One output as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenOutput {
    /// The guest device.
    pub device: u16,
    /// The bytes.
    pub data: Bytes,
}

/// Everything the client saw.
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    /// The session id (see the module docs).
    pub session: u64,
    /// Outputs by sequence number (first copy).
    pub outputs: BTreeMap<u64, SeenOutput>,
    /// Copies of an already seen output (same bytes) that were dropped.
    pub repeats: u64,
    /// Copies that differed from the first: contradictions.
    pub contradictions: Vec<String>,
    /// This session's request names ([`Names`]) to the sequence numbers of their
    /// replies.
    pub answers: BTreeMap<String, BTreeSet<u64>>,
    /// Replies to requests of other sessions (an earlier client's, in a node's
    /// history), or to requests no client of this kind sent.
    pub foreign: u64,
    /// Service counter of each reply, by sequence number.
    pub counters: BTreeMap<u64, u64>,
    /// Connections to a serving node: (when, address, node id).
    pub connections: Vec<(Instant, SocketAddr, u64)>,
    /// When each connection was lost (before the end).
    pub losses: Vec<Instant>,
    /// Requests re-sent after a failover.
    pub resent: u64,
    /// When the first answer after each failover arrived.
    pub first_answer_after_loss: Vec<Instant>,
}

/// A short account of a verified run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The session id.
    pub session: u64,
    /// Distinct outputs (all devices).
    pub outputs: u64,
    /// The sequence number of the first output seen: 0 unless the node's history no
    /// longer held the guest's first outputs when this session connected.
    pub first_output: u64,
    /// Replies (network outputs), this session's and others'.
    pub replies: u64,
    /// Replies to other sessions' requests among them.
    pub foreign: u64,
    /// Copies dropped by sequence number.
    pub repeats: u64,
    /// Connections made.
    pub connections: usize,
    /// Requests re-sent after failovers.
    pub resent: u64,
    /// The service counter of the first reply seen (1 when the outputs start at #0).
    pub first_counter: u64,
    /// The service counter of the last reply.
    pub last_counter: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {:016x}: {} outputs #{}..#{} with no gap ({} replies, {} of them to other sessions; counter {}..{} continuous), {} repeats dropped by sequence number, {} connections, {} requests re-sent",
            self.session,
            self.outputs,
            self.first_output,
            self.first_output
                .saturating_add(self.outputs)
                .saturating_sub(1),
            self.replies,
            self.foreign,
            self.first_counter,
            self.last_counter,
            self.repeats,
            self.connections,
            self.resent
        )
    }
}

impl ClientReport {
    /// A report for session `session`, with nothing seen yet.
    pub fn new(session: u64) -> ClientReport {
        ClientReport {
            session,
            ..ClientReport::default()
        }
    }

    /// Check the exactly-once properties of this session's `requests` requests (plus
    /// its `quit` if `quit`): no two different outputs with one sequence number; every
    /// sequence number from the first seen (#0 unless the node's history was already
    /// trimmed) with no gap; each of the session's requests answered exactly once, and
    /// nothing else of the session; the service counter going up by one from reply to
    /// reply over every reply seen (other sessions' included), from 1 when the
    /// outputs start at #0.
    pub fn verify(&self, requests: u64, quit: bool) -> std::result::Result<Summary, String> {
        if let Some(c) = self.contradictions.first() {
            return Err(format!(
                "{} contradictions, first: {c}",
                self.contradictions.len()
            ));
        }
        let first_output = self.outputs.keys().next().copied().unwrap_or(0);
        for (i, seq) in self.outputs.keys().enumerate() {
            let expected = first_output.saturating_add(i as u64);
            if *seq != expected {
                return Err(format!(
                    "output #{expected} never seen (next seen is #{seq})"
                ));
            }
        }
        let names = Names {
            session: self.session,
            requests,
        };
        let ids = 0..requests + u64::from(quit);
        let names: Vec<String> = ids.map(|i| names.name(i)).collect();
        for name in &names {
            match self.answers.get(name).map(BTreeSet::len) {
                Some(1) => {}
                None | Some(0) => return Err(format!("{name} never answered")),
                Some(n) => {
                    return Err(format!(
                        "{name} answered {n} times: {:?}",
                        self.answers.get(name)
                    ))
                }
            }
        }
        if self.answers.len() != names.len() {
            return Err(format!(
                "answers to requests this session did not send: {:?}",
                self.answers
                    .keys()
                    .filter(|k| !names.contains(k))
                    .collect::<Vec<_>>()
            ));
        }
        let mut first_counter: Option<u64> = None;
        let mut last: Option<u64> = None;
        for (seq, c) in &self.counters {
            let expected = match last {
                Some(l) => Some(l + 1),
                None if first_output == 0 => Some(1),
                None => None,
            };
            if expected.is_some_and(|e| *c != e) {
                return Err(format!(
                    "service counter jumped to {c} at output #{seq} (expected {})",
                    expected.unwrap_or_default()
                ));
            }
            first_counter.get_or_insert(*c);
            last = Some(*c);
        }
        Ok(Summary {
            session: self.session,
            outputs: self.outputs.len() as u64,
            first_output,
            replies: self.counters.len() as u64,
            foreign: self.foreign,
            repeats: self.repeats,
            connections: self.connections.len(),
            resent: self.resent,
            first_counter: first_counter.unwrap_or(0),
            last_counter: last.unwrap_or(0),
        })
    }

    /// Take output `seq`; the name of this session's request it is the first answer
    /// to, if it is one.
    fn take(&mut self, seq: u64, device: u16, data: Bytes) -> Option<String> {
        if let Some(prev) = self.outputs.get(&seq) {
            if prev.device == device && prev.data == data {
                self.repeats += 1;
            } else {
                self.contradictions
                    .push(format!("output #{seq}: {:?} then {:?}", prev.data, data));
            }
            return None;
        }
        self.outputs.insert(
            seq,
            SeenOutput {
                device,
                data: data.clone(),
            },
        );
        if device != id::NET.0 {
            return None;
        }
        let reply = parse_reply(&data)?;
        self.counters.insert(seq, reply.counter);
        let name = String::from_utf8_lossy(&reply.payload).into_owned();
        let own = Names {
            session: self.session,
            requests: 0,
        };
        if !own.is_own(&name) {
            self.foreign += 1;
            return None;
        }
        let set = self.answers.entry(name.clone()).or_default();
        set.insert(seq);
        (set.len() == 1).then_some(name)
    }
}

enum Ev {
    Frame(u64, Frame),
    Closed(u64),
}

fn send(stream: &mut TcpStream, name: &str, retry: bool) -> io::Result<()> {
    let frame = Frame::Request {
        retry,
        payload: Bytes::from(name.as_bytes().to_vec()),
    };
    stream.write_all(&frame.encode())
}

/// Connect to the first address, from `prefer` on, that serves.
/// How long the client waits for a node's hello once connected. A running node sends
/// it as it accepts; a listening socket that accepts nothing is a process that is
/// frozen or still dying (a killed process keeps its sockets until its last thread
/// leaves the kernel, which a thread in uninterruptible I/O can delay), and waiting
/// on it would hold up the failover, so the client moves on to the next address.
const HELLO_WAIT: Duration = Duration::from_millis(250);

fn connect(
    cfg: &ClientConfig,
    prefer: usize,
    deadline: Instant,
) -> Result<(TcpStream, usize, u64)> {
    let start = Instant::now();
    let n = cfg.addrs.len().max(1);
    loop {
        for k in 0..n {
            let idx = (prefer + k) % n;
            let Some(addr) = cfg.addrs.get(idx) else {
                continue;
            };
            let Ok(mut s) = TcpStream::connect_timeout(addr, Duration::from_millis(500)) else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(HELLO_WAIT));
            if let Ok(Some(Frame::Hello {
                serving: true,
                node,
            })) = wire::read_frame(&mut s)
            {
                s.set_read_timeout(None)?;
                return Ok((s, idx, node));
            }
        }
        if Instant::now() > deadline {
            return Err(ClientError::NoServer {
                addrs: cfg.addrs.clone(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn spawn_reader(stream: TcpStream, conn: u64, tx: Sender<Ev>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("ft-client-reader".into())
        .spawn(move || {
            let mut r = BufReader::new(stream);
            while let Ok(Some(f)) = wire::read_frame(&mut r) {
                if tx.send(Ev::Frame(conn, f)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ev::Closed(conn));
        })?;
    Ok(())
}

/// Run the client to the end (every request answered, and, with `quit`, the node
/// ended), as a fresh session ([`new_session`]). `log` gets progress lines; `status`
/// live counters.
pub fn run(cfg: &ClientConfig, status: &ClientStatus, log: Option<&Log>) -> Result<ClientReport> {
    run_session(cfg, new_session(), status, log)
}

/// [`run`] as session `session`. A session id used before against the same service
/// makes the answers to that earlier session's requests count as this one's: give
/// each session its own.
pub fn run_session(
    cfg: &ClientConfig,
    session: u64,
    status: &ClientStatus,
    log: Option<&Log>,
) -> Result<ClientReport> {
    let say = |m: std::fmt::Arguments<'_>| {
        if let Some(l) = log {
            l.line(m);
        }
    };
    let start = Instant::now();
    let deadline = start + cfg.limit;
    let total = cfg.requests + u64::from(cfg.quit);
    let mut rep = ClientReport::new(session);
    let names = Names {
        session,
        requests: cfg.requests,
    };
    say(format_args!(
        "session {session:016x}: {} requests named {}, ...{}",
        cfg.requests,
        names.name(0),
        if cfg.quit {
            format!(", then {}", names.name(cfg.requests))
        } else {
            String::new()
        }
    ));
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut answered: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    let mut prefer = 0usize;
    let mut conn = 0u64;
    let mut lost_at: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded::<Ev>();

    'connect: loop {
        let (mut stream, idx, node) = connect(cfg, prefer, deadline)?;
        conn += 1;
        status.connections.fetch_add(1, Ordering::SeqCst);
        let addr = cfg
            .addrs
            .get(idx)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        rep.connections.push((Instant::now(), addr, node));
        say(format_args!("connected to {addr} (node {node})"));
        spawn_reader(stream.try_clone()?, conn, tx.clone())?;
        let mut synced = false;
        let mut next_send = Instant::now();
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout {
                    limit: cfg.limit,
                    state: format!(
                        "{} of {total} answered, unanswered {:?}, {conn} connections",
                        answered.len(),
                        outstanding.iter().take(10).collect::<Vec<_>>()
                    ),
                });
            }
            let wait = next_send
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(100), Duration::from_millis(20));
            let ev = match rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => None,
            };
            match ev {
                Some(Ev::Frame(c, f)) if c == conn => match f {
                    Frame::Output {
                        seq, device, data, ..
                    } => {
                        if let Some(name) = rep.take(seq, device, data) {
                            if let Some(i) = names.id(&name) {
                                outstanding.remove(&i);
                                answered.insert(i);
                                status
                                    .answered
                                    .store(answered.len() as u64, Ordering::SeqCst);
                                if let Some(t) = lost_at.take() {
                                    rep.first_answer_after_loss.push(Instant::now());
                                    say(format_args!(
                                        "first answer after the failover, {:.3} ms after losing the connection",
                                        t.elapsed().as_secs_f64() * 1e3
                                    ));
                                }
                            }
                        }
                    }
                    Frame::Synced { outputs } => {
                        synced = true;
                        let pending: Vec<u64> = outstanding.iter().copied().collect();
                        if conn > 1 {
                            say(format_args!(
                                "synced: {outputs} outputs of history; re-sending {} unanswered requests",
                                pending.len()
                            ));
                        }
                        for i in pending {
                            rep.resent += 1;
                            if send(&mut stream, &names.name(i), true).is_err() {
                                continue 'connect;
                            }
                        }
                    }
                    _ => {}
                },
                Some(Ev::Closed(c)) if c == conn => {
                    if answered.len() as u64 == total {
                        break 'connect;
                    }
                    say(format_args!(
                        "connection to {addr} lost with {} unanswered; failing over",
                        outstanding.len()
                    ));
                    rep.losses.push(Instant::now());
                    lost_at = Some(Instant::now());
                    prefer = idx + 1;
                    continue 'connect;
                }
                _ => {}
            }
            if !synced {
                continue;
            }
            if answered.len() as u64 == total {
                if !cfg.quit {
                    break 'connect;
                }
                // Wait for the node to end (the connection closes).
                continue;
            }
            let now = Instant::now();
            if now >= next_send && outstanding.len() < cfg.window.max(1) {
                let id = if next_id < cfg.requests {
                    Some(next_id)
                } else if cfg.quit
                    && next_id == cfg.requests
                    && answered.len() as u64 == cfg.requests
                {
                    Some(cfg.requests)
                } else {
                    None
                };
                if let Some(i) = id {
                    next_id += 1;
                    outstanding.insert(i);
                    next_send = now + cfg.gap;
                    if send(&mut stream, &names.name(i), false).is_err() {
                        continue 'connect;
                    }
                }
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                say(format_args!(
                    "{} of {total} answered, {} outputs seen",
                    answered.len(),
                    rep.outputs.len()
                ));
            }
        }
    }
    say(format_args!(
        "done: {} answered, {} outputs, {} repeats dropped",
        answered.len(),
        rep.outputs.len(),
        rep.repeats
    ));
    Ok(rep)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reply(counter: u64, payload: &str) -> Bytes {
        let mut v = Vec::new();
        for w in [counter, 0, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload.as_bytes());
        Bytes::from(v)
    }

    const S: u64 = 0x1234_5678_9abc_def0;
    const N: Names = Names {
        session: S,
        requests: 2,
    };

    #[test]
    fn verify_accepts_a_clean_run_and_finds_faults() {
        let net = id::NET.0;
        let mut r = ClientReport::new(S);
        r.take(0, 0, Bytes::from_static(b"boot 0"));
        assert_eq!(r.take(1, net, reply(1, &N.name(0))), Some(N.name(0)));
        r.take(2, 0, Bytes::from_static(b"req 1 len 5"));
        r.take(3, net, reply(2, &N.name(1)));
        // A repeat of the same output is dropped.
        assert_eq!(r.take(3, net, reply(2, &N.name(1))), None);
        r.take(4, net, reply(3, &N.name(2)));
        let s = r.verify(2, true).unwrap();
        assert_eq!(
            (
                s.outputs,
                s.replies,
                s.repeats,
                s.first_counter,
                s.last_counter
            ),
            (5, 3, 1, 1, 3)
        );

        let mut bad = r.clone();
        bad.take(3, net, reply(9, &N.name(1)));
        assert!(bad.verify(2, true).unwrap_err().contains("contradiction"));
        let mut gap = r.clone();
        gap.outputs.remove(&2);
        assert!(gap.verify(2, true).unwrap_err().contains("#2 never seen"));
        let mut twice = r.clone();
        twice.take(5, net, reply(4, &N.name(1)));
        assert!(twice
            .verify(2, true)
            .unwrap_err()
            .contains("answered 2 times"));
        assert!(r.verify(3, true).unwrap_err().contains(&format!(
            "{} never answered",
            Names { requests: 3, ..N }.name(2)
        )));
        let mut jump = ClientReport::new(S);
        jump.take(0, net, reply(1, &N.name(0)));
        jump.take(1, net, reply(3, &N.name(1)));
        assert!(jump.verify(2, false).unwrap_err().contains("jumped"));
        // Outputs from #0 start the counter at 1.
        let mut late = ClientReport::new(S);
        late.take(0, net, reply(2, &N.name(0)));
        late.take(1, net, reply(3, &N.name(1)));
        assert!(late.verify(2, false).unwrap_err().contains("jumped to 2"));
    }

    /// A second session's view: the node's history holds an earlier session's
    /// answers, to requests with the same numbers. They answer nothing of this
    /// session (its own stay unanswered until their replies come), count as foreign,
    /// and keep the counter continuous; verification needs this session's own.
    #[test]
    fn an_earlier_sessions_answers_are_not_this_ones() {
        let net = id::NET.0;
        let earlier = Names {
            session: S ^ 1,
            requests: 2,
        };
        let mut r = ClientReport::new(S);
        r.take(0, 0, Bytes::from_static(b"boot 0"));
        assert_eq!(r.take(1, net, reply(1, &earlier.name(0))), None);
        assert_eq!(r.take(2, net, reply(2, &earlier.name(1))), None);
        // An old client's unnumbered names are foreign too.
        assert_eq!(r.take(3, net, reply(3, "req-0")), None);
        assert!(r
            .verify(2, false)
            .unwrap_err()
            .contains(&format!("{} never answered", N.name(0))));
        assert_eq!(r.take(4, net, reply(4, &N.name(0))), Some(N.name(0)));
        assert_eq!(r.take(5, net, reply(5, &N.name(1))), Some(N.name(1)));
        let s = r.verify(2, false).unwrap();
        assert_eq!((s.foreign, s.replies, s.last_counter), (3, 5, 5));
        // A request of this session that it never sent is found.
        r.take(6, net, reply(6, &Names { requests: 9, ..N }.name(7)));
        assert!(r.verify(2, false).unwrap_err().contains("did not send"));
    }

    /// A session that connects once the node's history no longer starts at #0 checks
    /// from the first output it saw: no gap from there, the counter continuous from
    /// whatever it was.
    #[test]
    fn a_trimmed_history_is_checked_from_its_first_output() {
        let net = id::NET.0;
        let mut r = ClientReport::new(S);
        r.take(70_000, net, reply(41_000, "req-0"));
        r.take(70_001, net, reply(41_001, &N.name(0)));
        r.take(70_002, net, reply(41_002, &N.name(1)));
        let s = r.verify(2, false).unwrap();
        assert_eq!((s.first_output, s.first_counter), (70_000, 41_000));
        let mut gap = r.clone();
        gap.take(70_004, 0, Bytes::from_static(b"late"));
        assert!(gap
            .verify(2, false)
            .unwrap_err()
            .contains("#70003 never seen"));
    }

    #[test]
    fn names_are_per_session() {
        assert_eq!(N.name(0), "req-123456789abcdef0-0");
        assert_eq!(N.name(2), "quit-123456789abcdef0");
        // The guest ends at a request that starts with "quit".
        assert!(N.name(2).starts_with("quit"));
        assert_eq!(N.id(&N.name(1)), Some(1));
        assert_eq!(N.id(&N.name(2)), Some(2));
        assert_eq!(N.id("req-123456789abcdef0-2"), None, "beyond the requests");
        assert_eq!(N.id("req-123456789abcdef1-0"), None, "another session");
        assert_eq!(N.id("req-0"), None);
        assert_eq!(N.id("quit"), None);
        assert!(N.is_own("req-123456789abcdef0-99"));
        assert!(!N.is_own("req-123456789abcdef00-1"));
        assert_ne!(new_session(), new_session());
    }

    #[test]
    fn addresses_resolve_names_and_refuse_bad_input() {
        let v4 = SocketAddr::from(([127, 0, 0, 1], 7001));
        assert_eq!(parse_addr("127.0.0.1:7001").unwrap(), v4);
        assert_eq!(
            parse_addr("[::1]:7001").unwrap(),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 7001))
        );
        // A host name resolves (to loopback, on any host).
        let local = resolve_addr("localhost:7001").unwrap();
        assert!(!local.is_empty());
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7001),
            "{local:?}"
        );
        assert_eq!(parse_addr("localhost:7001").unwrap(), local[0]);
        let err = |a: &str| parse_addr(a).unwrap_err();
        assert_eq!(
            err(":7001"),
            AddrError::EmptyHost {
                addr: ":7001".into()
            }
        );
        for a in ["localhost", "localhost:", "[::1]"] {
            assert_eq!(err(a), AddrError::MissingPort { addr: a.into() }, "{a}");
        }
        assert_eq!(
            err("::1:7001"),
            AddrError::Ipv6NeedsBrackets {
                addr: "::1:7001".into()
            }
        );
        assert!(matches!(err("localhost:http"), AddrError::BadPort { .. }));
        for (a, port) in [
            ("localhost:70000", "70000"),
            ("localhost:0", "0"),
            ("127.0.0.1:0", "0"),
            ("localhost:99999999999999999999", "99999999999999999999"),
        ] {
            assert_eq!(
                err(a),
                AddrError::PortOutOfRange {
                    addr: a.into(),
                    port: port.into()
                },
                "{a}"
            );
        }
        let e = err("no-such-host.invalid:7001");
        assert!(
            matches!(&e, AddrError::Unresolvable { host, .. } if host == "no-such-host.invalid"),
            "{e:?}"
        );
        // Every message names the string as given.
        for a in [
            ":7001",
            "localhost",
            "::1:7001",
            "localhost:http",
            "localhost:70000",
            "no-such-host.invalid:7001",
        ] {
            let m = err(a).to_string();
            assert!(m.contains(&format!("{a:?}")), "{m}");
        }
    }
}
