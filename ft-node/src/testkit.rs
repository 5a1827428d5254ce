//! Process helpers for the integration tests and the failover benchmark: start a pair
//! of `ft-node` processes on loopback, read their progress lines, kill them, and cut
//! the log channel with a proxy.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::progress::{parse_line, unix_micros, Line};

/// Errors of the test helpers.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A process or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A node did not print what was expected in time.
    #[error("{node} did not print {expected:?} within {limit:?}; its last lines:\n{tail}")]
    Missing {
        /// The node.
        node: String,
        /// The text expected.
        expected: String,
        /// The limit.
        limit: Duration,
        /// Its last lines.
        tail: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = KitError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KitError {
    let what = what.into();
    move |source| KitError::Io { what, source }
}

/// A running `ft-node` (or any process) whose standard error is collected line by
/// line, echoed to standard output with the node's name.
#[derive(Debug)]
pub struct NodeProc {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    exit: Option<ExitStatus>,
}

impl NodeProc {
    /// Start `bin` with `args`; `echo` prints its lines on standard output.
    pub fn spawn(bin: &Path, name: &str, args: &[String], echo: bool) -> Result<NodeProc> {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("spawning {name}")))?;
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let (l, n) = (lines.clone(), name.to_string());
            std::thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if echo {
                            println!("  {n:>8} | {line}");
                        }
                        l.lock().push(line);
                    }
                })
                .map_err(io_err("stderr reader"))?;
        }
        Ok(NodeProc {
            name: name.to_string(),
            child,
            lines,
            exit: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    /// The first progress line whose message contains `needle`.
    pub fn find(&self, needle: &str) -> Option<Line> {
        self.lines
            .lock()
            .iter()
            .filter_map(|l| parse_line(l).ok())
            .find(|l| l.msg.contains(needle))
    }

    /// Whether any line contains `needle`.
    pub fn printed(&self, needle: &str) -> bool {
        self.lines.lock().iter().any(|l| l.contains(needle))
    }

    /// Wait until a progress line contains `needle`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> Result<Line> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.find(needle) {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(KitError::Missing {
                    node: self.name.clone(),
                    expected: needle.to_string(),
                    limit,
                    tail: self.tail(15),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let l = self.lines.lock();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// Send `signal` (`-STOP`, `-CONT`, ...) to the process with `kill(1)`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .map_err(io_err(format!("kill {signal} {}", self.name)))?;
        if status.success() {
            Ok(())
        } else {
            Err(KitError::Io {
                what: format!("kill {signal} {}", self.name),
                source: io::Error::other(format!("kill exited with {status}")),
            })
        }
    }

    /// `kill -9`: SIGKILL, and the Unix time in microseconds just before it was sent.
    pub fn kill9(&mut self) -> Result<u64> {
        let t = unix_micros();
        self.child
            .kill()
            .map_err(io_err(format!("killing {}", self.name)))?;
        let status = self.child.wait().map_err(io_err("wait"))?;
        self.exit = Some(status);
        Ok(t)
    }

    /// Wait for the process to end by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
                // Let the reader take the last lines.
                std::thread::sleep(Duration::from_millis(20));
                return self.exit;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP proxy between the backup and the primary's log channel that can cut the
/// network: once cut, it forwards nothing in either direction and keeps connections
/// open (silence, as when a cable is pulled), and new connections get silence too.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("proxy bind"))?;
        let addr = listener.local_addr().map_err(io_err("proxy addr"))?;
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || {
                for inbound in listener.incoming() {
                    let Ok(inbound) = inbound else { continue };
                    let c = c.clone();
                    std::thread::spawn(move || {
                        if c.load(Ordering::SeqCst) {
                            return blackhole(inbound);
                        }
                        let Ok(outbound) = TcpStream::connect(target) else {
                            let _ = inbound.shutdown(Shutdown::Both);
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (Ok(i2), Ok(o2)) = (inbound.try_clone(), outbound.try_clone()) else {
                            return;
                        };
                        let c2 = c.clone();
                        std::thread::spawn(move || pump(i2, o2, c2));
                        pump(outbound, inbound, c);
                    });
                }
            })
            .map_err(io_err("proxy thread"))?;
        Ok(Proxy { addr, cut })
    }

    /// Where the backup should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cut the network: from now on nothing passes.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                if !cut.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn blackhole(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// How to start a pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// The `ft-node` binary.
    pub bin: PathBuf,
    /// A scratch directory (key file, arbiter directory).
    pub dir: PathBuf,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// Peer timeout in milliseconds.
    pub timeout_ms: u64,
    /// The backup's peer timeout, if it differs.
    pub backup_timeout_ms: Option<u64>,
    /// Put a cuttable proxy between the backup and the primary.
    pub proxy: bool,
    /// The arbiter spec (default: `file:<dir>/arbiter`).
    pub arbiter: Option<String>,
    /// More flags for both nodes.
    pub extra: Vec<String>,
    /// Echo the nodes' lines on standard output.
    pub echo: bool,
}

/// A running pair.
#[derive(Debug)]
pub struct Pair {
    /// The primary.
    pub primary: NodeProc,
    /// The backup.
    pub backup: NodeProc,
    /// The client addresses: primary's, then backup's.
    pub client_addrs: Vec<SocketAddr>,
    /// The proxy, if any.
    pub proxy: Option<Proxy>,
}

fn addr_after(node: &NodeProc, prefix: &str, limit: Duration) -> Result<SocketAddr> {
    let line = node.wait_for(prefix, limit)?;
    let missing = || KitError::Missing {
        node: node.name.clone(),
        expected: format!("an address after {prefix:?}"),
        limit,
        tail: line.msg.clone(),
    };
    let rest = line.msg.split(prefix).nth(1).ok_or_else(missing)?;
    let word = rest.split_whitespace().next().ok_or_else(missing)?;
    word.parse().map_err(|_| missing())
}

/// Write a test key file in `dir`.
pub fn write_key(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("key");
    std::fs::write(&path, "ft test key: not a secret, 40 bytes.\n")
        .map_err(io_err("writing the key"))?;
    Ok(path)
}

/// Start a primary and a backup on loopback (all ports chosen by the system, read
/// back from their progress lines) and wait until the log flows.
pub fn start_pair(o: &PairOptions) -> Result<Pair> {
    let key = write_key(&o.dir)?;
    let arbiter = match &o.arbiter {
        Some(a) => a.clone(),
        None => {
            let d = o.dir.join("arbiter");
            std::fs::create_dir_all(&d).map_err(io_err("arbiter dir"))?;
            format!("file:{}", d.display())
        }
    };
    let common = |role: &str, timeout_ms: u64| -> Vec<String> {
        let mut v = vec![
            "--role".into(),
            role.into(),
            "--client-listen".into(),
            "127.0.0.1:0".into(),
            "--arbiter".into(),
            arbiter.clone(),
            "--key-file".into(),
            key.display().to_string(),
            "--heartbeat-ms".into(),
            o.heartbeat_ms.to_string(),
            "--timeout-ms".into(),
            timeout_ms.to_string(),
        ];
        v.extend(o.extra.iter().cloned());
        v
    };
    let limit = Duration::from_secs(20);
    let mut pargs = common("primary", o.timeout_ms);
    pargs.extend(["--listen".into(), "127.0.0.1:0".into()]);
    let primary = NodeProc::spawn(&o.bin, "primary", &pargs, o.echo)?;
    let pclient = addr_after(&primary, "clients: ", limit)?;
    let plog = addr_after(&primary, "waiting for the backup on ", limit)?;
    let proxy = if o.proxy {
        Some(Proxy::start(plog)?)
    } else {
        None
    };
    let peer = proxy.as_ref().map_or(plog, Proxy::addr);
    let mut bargs = common("backup", o.backup_timeout_ms.unwrap_or(o.timeout_ms));
    bargs.extend(["--peer".into(), peer.to_string()]);
    let backup = NodeProc::spawn(&o.bin, "backup", &bargs, o.echo)?;
    let bclient = addr_after(&backup, "clients: ", limit)?;
    primary.wait_for("running:", limit)?;
    backup.wait_for("log channel up", limit)?;
    primary.wait_for("log channel up", limit)?;
    Ok(Pair {
        primary,
        backup,
        client_addrs: vec![pclient, bclient],
        proxy,
    })
}

/// A single-member `etcd` on loopback with a temporary data directory, killed on drop
/// (Debian's `etcd-server`; `FT_ETCD_BIN` overrides the binary).
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    url: String,
    _dir: tempfile::TempDir,
}

/// A loopback address with a port that is free now and that the kernel never hands
/// out by itself: below the ephemeral range (`ip_local_port_range`), so no outgoing
/// connection or `bind(":0")` can take it before the node that is given it binds it.
/// (A port from `bind(":0")`, released and passed on, can be taken meanwhile by any
/// connection's ephemeral source port.)
///
/// # Errors
///
/// [`KitError::Io`] when no port in the range binds.
pub fn spare_addr() -> Result<SocketAddr> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let span = low - 10_000;
    // Spread the processes of parallel test binaries over the range.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (start + n.wrapping_mul(13)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(KitError::Io {
        what: "no spare loopback port below the ephemeral range".into(),
        source: io::Error::from(io::ErrorKind::AddrInUse),
    })
}

/// Whether this host can run `--backend kvm` (a usable `/dev/kvm`, asked with
/// ft-kvm's probe). Without one it prints `SKIP <test>: ...` and answers `false`,
/// unless `FT_REQUIRE_KVM=1`, where it panics: CI requires the KVM tests.
pub fn kvm_or_skip(test: &str) -> bool {
    match ft_kvm::probe() {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("FT_REQUIRE_KVM").as_deref() != Ok("1"),
                "{test}: FT_REQUIRE_KVM=1 but KVM is not usable here: {e}"
            );
            println!("SKIP {test}: no usable /dev/kvm ({e})");
            false
        }
    }
}

/// The etcd binary to use, if it runs.
pub fn etcd_binary() -> Option<PathBuf> {
    let bin = std::env::var("FT_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from(bin))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("free port"))?;
    Ok(l.local_addr().map_err(io_err("free port"))?.port())
}

impl EtcdServer {
    /// Start `bin` on free loopback ports and wait until it is healthy.
    pub fn start(bin: &Path) -> Result<EtcdServer> {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().map_err(io_err("etcd dir"))?;
            let (client, peer) = (free_port()?, free_port()?);
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(bin)
                .arg("--name=ft-test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=ft-test={peer_url}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io_err("spawning etcd"))?;
            let mut server = EtcdServer {
                child: Some(child),
                url,
                _dir: dir,
            };
            if server.wait_healthy(Duration::from_secs(20)) {
                return Ok(server);
            }
            last = format!("etcd at {} never became healthy", server.url);
            server.stop();
        }
        Err(KitError::Io {
            what: last,
            source: io::Error::from(io::ErrorKind::TimedOut),
        })
    }

    fn wait_healthy(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Some(addr) = self.url.strip_prefix("http://").map(str::to_string) else {
            return false;
        };
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            // A bare HTTP/1.0 GET of /health.
            if let Ok(mut s) = TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut body = String::new();
                if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
                    && s.read_to_string(&mut body).is_ok()
                    && body.contains("\"health\":\"true\"")
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kill it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
