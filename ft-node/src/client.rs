//! A client of the guest service: sends numbered requests through a node's client
//! bridge, fails over between the two nodes' addresses, and counts the answers by
//! output sequence number.
//!
//! Requests are `req-<id>` packets (and a final `quit`); the service guest answers each
//! with `[counter, clock, random, ticks, payload]`. The client keeps at most
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
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
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

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The nodes' client addresses, in the order to try them.
    pub addrs: Vec<SocketAddr>,
    /// Requests to send (`req-0` .. `req-<n-1>`).
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
    /// Outputs by sequence number (first copy).
    pub outputs: BTreeMap<u64, SeenOutput>,
    /// Copies of an already seen output (same bytes) that were dropped.
    pub repeats: u64,
    /// Copies that differed from the first: contradictions.
    pub contradictions: Vec<String>,
    /// Request name (`req-<id>`, `quit`) to the sequence numbers of its replies.
    pub answers: BTreeMap<String, BTreeSet<u64>>,
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
    /// Distinct outputs (all devices).
    pub outputs: u64,
    /// Replies (network outputs).
    pub replies: u64,
    /// Copies dropped by sequence number.
    pub repeats: u64,
    /// Connections made.
    pub connections: usize,
    /// Requests re-sent after failovers.
    pub resent: u64,
    /// The service counter of the last reply.
    pub last_counter: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} outputs with no gap ({} replies, counter 1..{} continuous), {} repeats dropped by sequence number, {} connections, {} requests re-sent",
            self.outputs, self.replies, self.last_counter, self.repeats, self.connections, self.resent
        )
    }
}

impl ClientReport {
    /// Check the exactly-once properties for `requests` requests (plus `quit` if
    /// `quit`). See the module docs.
    pub fn verify(&self, requests: u64, quit: bool) -> std::result::Result<Summary, String> {
        if let Some(c) = self.contradictions.first() {
            return Err(format!(
                "{} contradictions, first: {c}",
                self.contradictions.len()
            ));
        }
        for (i, seq) in self.outputs.keys().enumerate() {
            if *seq != i as u64 {
                return Err(format!("output #{i} never seen (next seen is #{seq})"));
            }
        }
        let mut names: Vec<String> = (0..requests).map(|i| format!("req-{i}")).collect();
        if quit {
            names.push("quit".into());
        }
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
                "answers to unknown requests: {:?}",
                self.answers
                    .keys()
                    .filter(|k| !names.contains(k))
                    .collect::<Vec<_>>()
            ));
        }
        let mut last: Option<u64> = None;
        for (seq, c) in &self.counters {
            let expected = last.map_or(1, |l| l + 1);
            if *c != expected {
                return Err(format!(
                    "service counter jumped to {c} at output #{seq} (expected {expected})"
                ));
            }
            last = Some(*c);
        }
        Ok(Summary {
            outputs: self.outputs.len() as u64,
            replies: self.counters.len() as u64,
            repeats: self.repeats,
            connections: self.connections.len(),
            resent: self.resent,
            last_counter: last.unwrap_or(0),
        })
    }

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
        let set = self.answers.entry(name.clone()).or_default();
        set.insert(seq);
        (set.len() == 1).then_some(name)
    }
}

enum Ev {
    Frame(u64, Frame),
    Closed(u64),
}

fn request_name(id: u64, requests: u64) -> String {
    if id == requests {
        "quit".into()
    } else {
        format!("req-{id}")
    }
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
/// ended). `log` gets progress lines; `status` live counters.
pub fn run(cfg: &ClientConfig, status: &ClientStatus, log: Option<&Log>) -> Result<ClientReport> {
    let say = |m: std::fmt::Arguments<'_>| {
        if let Some(l) = log {
            l.line(m);
        }
    };
    let start = Instant::now();
    let deadline = start + cfg.limit;
    let total = cfg.requests + u64::from(cfg.quit);
    let mut rep = ClientReport::default();
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut answered: BTreeSet<u64> = BTreeSet::new();
    let mut next_id = 0u64;
    let mut prefer = 0usize;
    let mut conn = 0u64;
    let mut lost_at: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded::<Ev>();
    let name_to_id = |name: &str| -> Option<u64> {
        if name == "quit" {
            return Some(cfg.requests);
        }
        name.strip_prefix("req-")?.parse().ok()
    };

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
                            if let Some(i) = name_to_id(&name) {
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
                            if send(&mut stream, &request_name(i, cfg.requests), true).is_err() {
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
                    if send(&mut stream, &request_name(i, cfg.requests), false).is_err() {
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
    use super::*;

    fn reply(counter: u64, payload: &str) -> Bytes {
        let mut v = Vec::new();
        for w in [counter, 0, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload.as_bytes());
        Bytes::from(v)
    }

    #[test]
    fn verify_accepts_a_clean_run_and_finds_faults() {
        let net = id::NET.0;
        let mut r = ClientReport::default();
        r.take(0, 0, Bytes::from_static(b"boot 0"));
        assert_eq!(r.take(1, net, reply(1, "req-0")), Some("req-0".into()));
        r.take(2, 0, Bytes::from_static(b"req 1 len 5"));
        r.take(3, net, reply(2, "req-1"));
        // A repeat of the same output is dropped.
        assert_eq!(r.take(3, net, reply(2, "req-1")), None);
        r.take(4, net, reply(3, "quit"));
        let s = r.verify(2, true).unwrap();
        assert_eq!(
            (s.outputs, s.replies, s.repeats, s.last_counter),
            (5, 3, 1, 3)
        );

        let mut bad = r.clone();
        bad.take(3, net, reply(9, "req-1"));
        assert!(bad.verify(2, true).unwrap_err().contains("contradiction"));
        let mut gap = r.clone();
        gap.outputs.remove(&2);
        assert!(gap.verify(2, true).unwrap_err().contains("#2 never seen"));
        let mut twice = r.clone();
        twice.take(5, net, reply(4, "req-1"));
        assert!(twice
            .verify(2, true)
            .unwrap_err()
            .contains("answered 2 times"));
        assert!(r
            .verify(3, true)
            .unwrap_err()
            .contains("req-2 never answered"));
        let mut jump = ClientReport::default();
        jump.take(0, net, reply(1, "req-0"));
        jump.take(1, net, reply(3, "req-1"));
        assert!(jump.verify(2, false).unwrap_err().contains("jumped"));
    }
}
