//! Support for the TCP channel tests: configurations, connected pairs, record
//! generators, an exactly-once checker, and a TCP proxy that can cut connections and
//! tamper with frames.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ft_core::{
    Ack, AsyncEvent, ChannelError, DeviceId, Event, ExecPoint, IoId, LogChannel, LogReceiver,
    PairId, Record,
};
use ft_transport::tcp::{
    PreSharedKey, PrimaryListener, TcpBackupEnd, TcpConfig, TcpLink, TcpPrimaryEnd,
    CLIENT_HELLO_LEN, CONFIRM_LEN, FRAME_HEADER_LEN, SERVER_HELLO_LEN, TAG_LEN,
};
use ft_transport::{BackupEnd, PrimaryEnd};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Longest any test waits for something to happen before failing (not a timing
/// assertion: a deadline so a broken build fails instead of hanging).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const PAIR: PairId = PairId {
    vm: 9,
    generation: 1,
};

pub fn key(fill: u8) -> PreSharedKey {
    PreSharedKey::new([fill; 32]).unwrap()
}

/// A configuration whose reconnect grace is long: a lost connection never ends a test
/// by accident. The primary's (node 1); [`backup_cfg`] is the backup's.
pub fn cfg(key: &PreSharedKey) -> TcpConfig {
    let mut c = TcpConfig::new(key.clone(), PAIR, ft_core::NodeId(1));
    c.reconnect_grace = Duration::from_secs(60);
    c
}

/// `c` for the backup's end (node 2).
pub fn as_backup(c: TcpConfig) -> TcpConfig {
    TcpConfig {
        node: ft_core::NodeId(2),
        ..c
    }
}

/// [`cfg`] for the backup (node 2).
pub fn backup_cfg(key: &PreSharedKey) -> TcpConfig {
    TcpConfig {
        node: ft_core::NodeId(2),
        ..cfg(key)
    }
}

/// A seeded RNG; prints the seed so a failure can be replayed.
pub fn rng(test: &str) -> (ChaCha8Rng, u64) {
    let seed = std::env::var("FT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (rerun with FT_SEED={seed})");
    (ChaCha8Rng::seed_from_u64(seed), seed)
}

/// A listening primary and a backup connected to `connect_to` (the listener itself, or
/// a proxy in front of it).
pub fn connect(
    pcfg: TcpConfig,
    bcfg: TcpConfig,
    via: Option<&Proxy>,
) -> (TcpLink, TcpLink, SocketAddr) {
    let mut l = PrimaryListener::bind("127.0.0.1:0", pcfg).unwrap();
    let addr = l.local_addr();
    let target = via.map_or(addr, |p| {
        p.set_target(addr);
        p.addr
    });
    let b = std::thread::spawn(move || TcpLink::connect(target, bcfg, PATIENCE));
    let p = l.accept(Some(PATIENCE)).unwrap();
    (p, b.join().unwrap().unwrap(), addr)
}

pub fn ends(p: TcpLink, b: TcpLink) -> (TcpPrimaryEnd, TcpBackupEnd) {
    (PrimaryEnd::new(p), BackupEnd::new(b))
}

/// `n` records from `first`, with random small inputs, DMA payloads of up to
/// `max_dma` bytes, outputs and digests.
pub fn records(rng: &mut ChaCha8Rng, first: u64, n: u64, max_dma: usize) -> Vec<Record> {
    (first..first + n)
        .map(|seq| {
            let event = match rng.gen_range(0..4) {
                0 => Event::Input {
                    device: DeviceId(1),
                    data: Bytes::from(rng.gen::<u64>().to_le_bytes().to_vec()),
                },
                1 => Event::Async(AsyncEvent::IoComplete {
                    io: IoId(seq),
                    status: 0,
                    data: Some(Bytes::from(
                        (0..rng.gen_range(0..=max_dma))
                            .map(|_| rng.gen())
                            .collect::<Vec<u8>>(),
                    )),
                }),
                2 => Event::Output {
                    seq: ft_core::OutputSeq(seq),
                    digest: rng.gen(),
                },
                _ => Event::Digest { value: rng.gen() },
            };
            Record {
                seq,
                point: ExecPoint::at(seq * 10),
                event,
            }
        })
        .collect()
}

/// What an engine would accept from a stream of batches: duplicates are skipped, a gap
/// or a changed record is a failure.
#[derive(Debug, Default)]
pub struct ExactlyOnce {
    pub got: Vec<Record>,
    pub duplicates: u64,
    pub batches: u64,
}

impl ExactlyOnce {
    pub fn next(&self) -> u64 {
        self.got.len() as u64 + 1
    }

    pub fn take(&mut self, batch: Vec<Record>) {
        self.batches += 1;
        for r in batch {
            let want = self.next();
            if r.seq < want {
                assert_eq!(self.got[(r.seq - 1) as usize], r, "a resent record differs");
                self.duplicates += 1;
                continue;
            }
            assert_eq!(r.seq, want, "sequence gap: expected {want}, got {}", r.seq);
            self.got.push(r);
        }
    }

    /// Receive what is there; one ack per batch that brought something new.
    pub fn pump(&mut self, b: &mut TcpBackupEnd) -> Vec<Ack> {
        let mut acks = Vec::new();
        loop {
            let before = self.next();
            match b.try_recv_records() {
                Ok(Some(batch)) => self.take(batch),
                Ok(None) => break,
                Err(e) => panic!("backup end failed: {e}"),
            }
            if self.next() > before {
                acks.push(Ack {
                    received: self.next() - 1,
                    replayed: self.next() - 1,
                });
            }
        }
        acks
    }
}

/// Send `all` in batches of up to `max_batch` while the backup takes them and acks;
/// `between` runs after every batch handed over (to cut connections, say). Returns what
/// the backup saw and the last ack the primary saw.
pub fn stream(
    p: &mut TcpPrimaryEnd,
    b: &mut TcpBackupEnd,
    all: &[Record],
    rng: &mut ChaCha8Rng,
    max_batch: usize,
    mut between: impl FnMut(usize, &mut ChaCha8Rng),
) -> (ExactlyOnce, Ack) {
    let mut seen = ExactlyOnce::default();
    let mut last_ack = Ack::default();
    let mut at = 0usize;
    let mut i = 0usize;
    let t0 = Instant::now();
    let total = all.len() as u64;
    while seen.next() <= total || last_ack.received < total {
        assert!(
            t0.elapsed() < PATIENCE,
            "stuck: backup at {}, ack {last_ack:?}, primary {:?}, backup {:?}, errors {:?} / {:?}",
            seen.next(),
            p.link().stats(),
            b.link().stats(),
            p.link().last_error(),
            b.link().last_error()
        );
        if at < all.len() {
            let n = rng.gen_range(1..=max_batch).min(all.len() - at);
            match p.send_records(&all[at..at + n]) {
                Ok(()) => {
                    at += n;
                    between(i, rng);
                    i += 1;
                }
                Err(ChannelError::Full) => {}
                Err(e) => panic!("primary send failed: {e}"),
            }
        }
        for ack in seen.pump(b) {
            loop {
                match b.send_ack(ack) {
                    Ok(()) => break,
                    Err(ChannelError::Full) => std::thread::sleep(Duration::from_micros(100)),
                    Err(e) => panic!("backup ack failed: {e}"),
                }
            }
        }
        loop {
            match p.try_recv_ack() {
                Ok(Some(a)) => {
                    assert!(a.received <= total, "ack beyond the log: {a:?}");
                    last_ack = Ack {
                        received: a.received.max(last_ack.received),
                        replayed: a.replayed.max(last_ack.replayed),
                    };
                }
                Ok(None) => break,
                Err(e) => panic!("primary end failed: {e}"),
            }
        }
        if at >= all.len() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(seen.got.as_slice(), all);
    (seen, last_ack)
}

/// Wait until `f` holds (polling), or fail after [`PATIENCE`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Which way a frame travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToBackup,
    ToPrimary,
}

/// Damage the proxy does once, to one frame after the handshake (frame 0 towards the
/// backup is the primary's resume answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Flip one bit of the payload.
    FlipBit { dir: Dir, frame: u64 },
    /// Rewrite the length prefix to almost 4 GiB.
    Oversize { dir: Dir, frame: u64 },
    /// Rewrite the frame kind to 0x7f.
    UnknownKind { dir: Dir, frame: u64 },
    /// Forward the header and half the payload, then cut.
    Truncate { dir: Dir, frame: u64 },
    /// Send this frame twice (a replay within the connection).
    Replay { dir: Dir, frame: u64 },
}

impl Tamper {
    fn target(&self) -> (Dir, u64) {
        match *self {
            Tamper::FlipBit { dir, frame }
            | Tamper::Oversize { dir, frame }
            | Tamper::UnknownKind { dir, frame }
            | Tamper::Truncate { dir, frame }
            | Tamper::Replay { dir, frame } => (dir, frame),
        }
    }
}

struct ProxyInner {
    target: Mutex<Option<SocketAddr>>,
    live: Mutex<Vec<TcpStream>>,
    tamper: Mutex<Option<Tamper>>,
    fired: AtomicU64,
    stop: AtomicBool,
    accepted: AtomicU64,
}

/// A TCP proxy between a backup and its primary, which understands the frame layout.
pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<ProxyInner>,
}

impl Proxy {
    pub fn start() -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inner = Arc::new(ProxyInner {
            target: Mutex::new(None),
            live: Mutex::new(Vec::new()),
            tamper: Mutex::new(None),
            fired: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
        });
        let i = inner.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = c else { continue };
                let Some(target) = *i.target.lock().unwrap() else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                i.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = i.live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (i1, i2) = (i.clone(), i.clone());
                std::thread::spawn(move || {
                    pump(
                        client,
                        server,
                        CLIENT_HELLO_LEN + CONFIRM_LEN,
                        Dir::ToPrimary,
                        &i1,
                    )
                });
                std::thread::spawn(move || pump(s2, c2, SERVER_HELLO_LEN, Dir::ToBackup, &i2));
            }
        });
        Proxy { addr, inner }
    }

    pub fn set_target(&self, target: SocketAddr) {
        *self.inner.target.lock().unwrap() = Some(target);
    }

    /// Cut every connection through the proxy now (both ways, like a reset).
    pub fn cut(&self) {
        for s in self.inner.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Damage one frame of the next connection that reaches it.
    pub fn arm(&self, t: Tamper) {
        *self.inner.tamper.lock().unwrap() = Some(t);
    }

    /// How many tampers were carried out.
    pub fn fired(&self) -> u64 {
        self.inner.fired.load(Ordering::SeqCst)
    }

    /// Connections proxied so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, prefix: usize, dir: Dir, inner: &ProxyInner) {
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    // The handshake goes through as it comes (its messages alternate).
    let mut left = prefix;
    let mut buf = [0u8; 256];
    while left > 0 {
        let n = match from.read(&mut buf[..left.min(256)]) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            close(&from, &to);
            return;
        }
        left -= n;
    }
    let mut index = 0u64;
    loop {
        let mut head = [0u8; FRAME_HEADER_LEN];
        if from.read_exact(&mut head).is_err() {
            close(&from, &to);
            return;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut body = vec![0u8; len + TAG_LEN];
        if from.read_exact(&mut body).is_err() {
            close(&from, &to);
            return;
        }
        let armed = {
            let mut t = inner.tamper.lock().unwrap();
            match *t {
                Some(x) if x.target() == (dir, index) => {
                    *t = None;
                    inner.fired.fetch_add(1, Ordering::SeqCst);
                    Some(x)
                }
                _ => None,
            }
        };
        index += 1;
        let mut frame = head.to_vec();
        frame.extend_from_slice(&body);
        let ok = match armed {
            None => to.write_all(&frame).is_ok(),
            Some(Tamper::FlipBit { .. }) => {
                frame[FRAME_HEADER_LEN + len / 2] ^= 0x10;
                to.write_all(&frame).is_ok()
            }
            Some(Tamper::Oversize { .. }) => {
                frame[..4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                to.write_all(&frame).is_ok()
            }
            Some(Tamper::UnknownKind { .. }) => {
                frame[4] = 0x7f;
                to.write_all(&frame).is_ok()
            }
            Some(Tamper::Truncate { .. }) => {
                let _ = to.write_all(&frame[..FRAME_HEADER_LEN + len / 2]);
                let _ = to.flush();
                std::thread::sleep(Duration::from_millis(20));
                false
            }
            Some(Tamper::Replay { .. }) => {
                to.write_all(&frame).is_ok() && to.write_all(&frame).is_ok()
            }
        };
        if !ok {
            close(&from, &to);
            return;
        }
    }
}

/// A run on its own thread, with the flags that end it.
pub struct Running<R> {
    pub handle: std::thread::JoinHandle<R>,
    pub control: ft_transport::Control,
}

pub fn spawn_run<R: Send + 'static>(
    f: impl FnOnce(ft_transport::Control) -> R + Send + 'static,
) -> Running<R> {
    let control = ft_transport::Control::new();
    let c = control.clone();
    Running {
        handle: std::thread::spawn(move || f(c)),
        control,
    }
}

/// Wait for a run to end; stop it and fail after twice [`PATIENCE`].
pub fn finish<R: std::fmt::Debug>(r: Running<R>, what: &str) -> R {
    let t0 = Instant::now();
    while !r.handle.is_finished() {
        if t0.elapsed() > PATIENCE * 2 {
            r.control.stop();
            let rep = r.handle.join().unwrap();
            panic!("{what}: still running after {:?}: {rep:?}", PATIENCE * 2);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    r.handle.join().unwrap()
}
