//! One side of a protected pair as a process: flags, setup, the run, the exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use ft_core::driver::NoLink;
use ft_core::{
    Arbiter, CloneConfig, Config, EventSource, HaltReason, Membership, Nanos, Node, NodeId, Notice,
    PairId, Purpose, Reservation,
};
use ft_sim::{
    Disk, DiskMode, Machine, MachineConfig, Network, OutputSink, SimWorld, SimWorldConfig,
};
use ft_transport::{
    nanos_since, run_backup, run_primary, BackupEnd, Control, Exit, PrimaryEnd, RuntimeConfig,
};

use crate::bridge::{Bridge, BridgeWorld, NetDrops, TappedMachine};
use crate::link::{self, LinkOptions};
use crate::progress::{BackupProgress, Log, PrimaryProgress};
use ft_transport::tcp::{TcpError, TcpHandle};

/// Exit code: the guest ended (code 0 from the guest) and this side is done.
pub const EXIT_DONE: i32 = 0;
/// Exit code: setup failed (bad flags, unreachable address, bad image).
pub const EXIT_SETUP: i32 = 1;
/// Exit code: this side lost the arbiter and halted.
pub const EXIT_LOST: i32 = 3;
/// Exit code: replay diverged or the machine failed.
pub const EXIT_FAILED: i32 = 4;
/// Exit code: the guest ended with a nonzero code.
pub const EXIT_GUEST_ERROR: i32 = 5;

/// Errors of setting a node up.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag is missing or wrong.
    #[error("{0}")]
    Usage(String),
    /// The guest image does not load.
    #[error("guest image: {0}")]
    Image(String),
    /// The arbiter spec is wrong.
    #[error("arbiter: {0}")]
    Arbiter(#[from] ft_transport::arbiter::SpecError),
    /// The client bridge could not start.
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    /// The log channel could not be made.
    #[error(transparent)]
    Link(#[from] link::LinkError),
    /// The arbiter does not answer at startup (a missing directory, an etcd that is
    /// down): refused at once rather than found out at failover.
    #[error("arbiter {spec} is not usable: {source}")]
    ArbiterCheck {
        /// The `--arbiter` value.
        spec: String,
        /// What the probe met.
        source: ft_core::ArbiterError,
    },
    /// The pair generation already has a live member (a side of it won the arbiter),
    /// or a newer generation of the VM exists: this node, starting with a fresh
    /// machine, is not that member and must not serve or go live.
    #[error("vm {vm} generation {generation} is taken: {why}. This node starts from a fresh guest and is not that live member, so it refuses to serve. If that run is over, start the new pair with --supersede {generation} on both sides (the arbiter reserves it the next generation), or with --generation {next}")]
    Superseded {
        /// The VM.
        vm: u64,
        /// The generation asked for.
        generation: u64,
        /// What the arbiter holds.
        why: String,
        /// The first generation above every claim.
        next: u64,
    },
    /// The shared disk file cannot be used.
    #[error("--disk: {0}")]
    Disk(#[from] ft_sim::DiskError),
    /// The disk file was written by a winner of an arbiter that holds no claim for
    /// this VM: it belongs to an earlier run, and its fencing token would refuse
    /// every write of the new pair.
    #[error("disk file {path} was last written with fencing token {token}, but the arbiter holds no claim for vm {vm}: the disk is from an earlier run (with another arbiter). Start with a fresh --disk, or with the arbiter that run used")]
    StaleDisk {
        /// The file.
        path: String,
        /// The token in it.
        token: u64,
        /// The VM.
        vm: u64,
    },
    /// A primary that waited for its backup found its generation taken meanwhile (it
    /// was restarted before its old backup timed it out, and that backup went live).
    /// It serves nothing; started again with the same flags, it rejoins the live
    /// member by clone (`ft-node` does that itself).
    #[error("{why}; this node never ran the guest, and starts again with its own flags to rejoin as the live member's backup")]
    SupersededWhileWaiting {
        /// What the arbiter holds.
        why: String,
    },
    /// Another node reserved (or claimed) the generation this primary was about to
    /// reserve: a primary started at the same moment won the compare-and-set.
    #[error("vm {vm} generation {generation} was reserved or claimed by another node first (a primary started at the same moment): this primary does not start")]
    LostReservation {
        /// The VM.
        vm: u64,
        /// The generation it tried to reserve.
        generation: u64,
    },
    /// A primary waiting for its backup found a newer generation reserved for a new
    /// pair (its run was declared over with `--supersede`): it stops, and does not
    /// rejoin.
    #[error("{why}; this node never ran the guest, and stops")]
    Replaced {
        /// What the arbiter holds.
        why: String,
    },
    /// The KVM guest could not be made (no `/dev/kvm`, no permission, a host without
    /// what the backend needs).
    #[error("--backend kvm: {0}")]
    Kvm(String),
    /// The standby could not register or wait in etcd.
    #[error("standby: {0}")]
    Standby(#[from] ft_transport::arbiter::etcd::standby::StandbyError),
    /// The engine parameters given by the flags are out of range.
    #[error("{0} (see --heartbeat-ms and --timeout-ms)")]
    Config(ft_core::EngineError),
    /// An address the node listens on at start cannot be bound (in use, not local,
    /// not an address).
    #[error("cannot listen on {flag} {addr}: {source}")]
    Listen {
        /// The flag that gave it.
        flag: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Which side to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Runs the guest, records and ships the log, serves clients.
    Primary,
    /// Replays the log; goes live and serves clients when the primary dies.
    Backup,
    /// A fresh node that becomes the backup of a live member running alone (after
    /// its pair lost a member) by live clone: it connects to `--peer` (or to the
    /// address the member published in the arbiter), receives the
    /// running guest's memory and state, then replays like any backup. Needs
    /// `--disk` (the pair's shared disk) and an explicit `--node-id`.
    Join,
    /// A spare node for any pair of the VM that loses a member: it registers in etcd
    /// (with a lease, so it leaves the pool when it dies), waits, and when a live
    /// member runs alone and offers a live clone, races the other standbys in one etcd
    /// transaction; the one picked joins as `--role join` would. Needs an etcd
    /// `--arbiter`, `--disk`, `--listen` and an explicit `--node-id`.
    Standby,
}

/// Which machine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// ft-sim's RISC-V machine, in software: the built-in service guest or `--image`.
    Sim,
    /// A KVM guest (x86-64, `/dev/kvm`): ft-kvm's kernel and its network service
    /// workload, which speaks the sim service's protocol.
    Kvm,
}

impl BackendArg {
    /// Points per engine step. A sim point is one instruction (nanoseconds); a KVM
    /// point is a deterministic exit (microseconds each, tens of them on a nested
    /// host), so KVM steps are short: the slice bounds how late an asynchronous event
    /// (a packet, a disk completion) reaches a guest that polls a device.
    fn slice(self) -> u64 {
        match self {
            BackendArg::Sim => Config::default().slice,
            BackendArg::Kvm => 16,
        }
    }

    /// Mixed into the handshake's image digest, so a sim side and a KVM side refuse
    /// each other.
    fn identity(self) -> u64 {
        match self {
            BackendArg::Sim => 0,
            BackendArg::Kvm => 0x4b56_4d5f_4b56_4d5f, // "KVM_KVM_"
        }
    }
}

/// Run one side of a protected pair: the sim service guest (or an image), replicated
/// over the TCP log channel, with a file or etcd arbiter and a client bridge.
#[derive(Debug, Clone, Parser)]
#[command(name = "ft-node", version, long_about = None)]
pub struct NodeArgs {
    /// Which side this process is.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Primary: where the log channel listens for the backup. Any role, with
    /// `--disk`: where this node, once it runs alone as the live member, offers a
    /// live clone to a joining node (`--role join`).
    #[arg(long)]
    pub listen: Option<String>,
    /// The address other hosts reach `--listen` at, published in the clone offer and
    /// a standby's registration (default: `--listen` itself). Needed when `--listen`
    /// is a wildcard address (`0.0.0.0:PORT`), which names no host to connect to.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Backup and joiner: the log channel address of the primary (of the live
    /// member, for a joiner; a joiner without it connects where the live member's
    /// clone offer in the arbiter says).
    #[arg(long)]
    pub peer: Option<String>,
    /// The machine that runs the guest.
    #[arg(long, value_enum, default_value_t = BackendArg::Sim)]
    pub backend: BackendArg,
    /// Where clients connect (TCP) to reach the guest service.
    #[arg(long)]
    pub client_listen: String,
    /// The split-brain arbiter: file:DIR (shared storage) or etcd:http://HOST:PORT[,...].
    #[arg(long)]
    pub arbiter: String,
    /// The pre-shared key of the log channel (at least 16 bytes; trailing whitespace
    /// is ignored).
    #[arg(long)]
    pub key_file: PathBuf,
    /// A guest image (ELF, or raw code for the start of RAM); default: the built-in
    /// service guest.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The guest's disk as a file both sides open (a shared disk: only the live side
    /// writes, with its fencing token, and the disk refuses writes with an older one).
    /// Created zero-filled if missing. Default: a private in-memory disk per process.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// Heartbeat period, both ways, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_ms: u64,
    /// Silence after which the peer is declared dead, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub timeout_ms: u64,
    /// The protected VM's id (the arbiter's key, with the generation).
    #[arg(long, default_value_t = 1)]
    pub vm: u64,
    /// The pairing generation, for an operator who manages generations. Default: the
    /// primary reserves a fresh one from the arbiter (atomically above every
    /// generation of the VM reserved or claimed before), and the backup takes the one
    /// its primary reserved. A generation in which a side already went live, or below
    /// the newest one, is refused at startup.
    #[arg(long)]
    pub generation: Option<u64>,
    /// The run whose newest generation is this one is over (its members are gone for
    /// good): a primary reserves the generation after it for a new pair, and a backup
    /// waits for a reservation above it. It applies only while this is still the VM's
    /// newest generation, so the same command run again later (a restart) does not
    /// start yet another run. Without it, a primary of a VM whose newest generation
    /// another node went live in or reserved refuses to start (or rejoins that member
    /// by clone): the arbiter cannot tell an earlier run from a live one. The refusal
    /// names the generation to give.
    #[arg(long, value_name = "GENERATION")]
    pub supersede: Option<u64>,
    /// This side's node id (default: 1 for a primary, 2 for a backup).
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Also treat a lost log connection as the peer's death (at once, instead of
    /// waiting for the timeout); the arbiter still decides.
    #[arg(long)]
    pub disconnect_is_failure: bool,
    /// Period of the traffic progress lines, in milliseconds (0: none).
    #[arg(long, default_value_t = 1000)]
    pub progress_ms: u64,
    /// Log a state digest every this many guest instructions.
    #[arg(long, default_value_t = 5000)]
    pub digest_interval: u64,
    /// TTL of this node's etcd leases (a standby's registration and pick, a live
    /// member's clone offer), in milliseconds; whole seconds, and etcd raises it to its
    /// minimum (about 2 s). A node that dies leaves etcd's record within it.
    #[arg(long, default_value_t = 2000)]
    pub lease_ms: u64,
    /// Timeout of one arbiter request (etcd), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub arbiter_timeout_ms: u64,
    /// Backup: how long to keep trying to reach the primary at start, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Seed of the primary's entropy source (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Primary: start alone, with no backup. It claims its generation at the arbiter,
    /// serves clients unprotected at once, and offers a live clone on `--listen` to a
    /// backup that joins later (`--role join`). Needs `--listen` and `--disk`.
    #[arg(long)]
    pub alone: bool,
}

/// The name a role's lines carry.
fn side_of(role: RoleArg) -> &'static str {
    match role {
        RoleArg::Primary => "primary",
        RoleArg::Backup => "backup",
        RoleArg::Join => "joiner",
        RoleArg::Standby => "standby",
    }
}

impl NodeArgs {
    fn node_id(&self) -> Result<u64> {
        match (self.role, self.node_id) {
            (_, Some(id)) => Ok(id),
            (RoleArg::Primary, None) => Ok(1),
            (RoleArg::Backup, None) => Ok(2),
            // A joiner's id must differ from every member's, in every generation the
            // VM goes through: no default can know that.
            (RoleArg::Join | RoleArg::Standby, None) => Err(NodeError::Usage(format!(
                "a {} node needs --node-id, distinct from every other node of the vm",
                if self.role == RoleArg::Join {
                    "joining"
                } else {
                    "standby"
                }
            ))),
        }
    }

    /// Whether this node, once it is the live member alone, offers a live clone to a
    /// new backup on `--listen`: it needs that address and the shared disk.
    fn offers_clone(&self) -> bool {
        self.listen.is_some() && self.disk.is_some()
    }

    /// What an arbiter error becomes: the `--arbiter` that could not be used, and why.
    fn arbiter_error(&self) -> impl Fn(ft_core::ArbiterError) -> NodeError + Copy + '_ {
        |source| NodeError::ArbiterCheck {
            spec: self.arbiter.clone(),
            source,
        }
    }

    /// Where joiners connect to this node's `--listen`: `--advertise`, or `--listen`.
    fn advertised(&self) -> Option<String> {
        self.advertise.clone().or_else(|| self.listen.clone())
    }

    /// Flags that only make sense together.
    fn check_combination(&self) -> Result<()> {
        if self.advertise.is_some() && self.listen.is_none() {
            return Err(NodeError::Usage(
                "--advertise names where --listen is reached: give --listen too".into(),
            ));
        }
        let wildcard = self
            .listen
            .as_deref()
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .is_some_and(|a| a.ip().is_unspecified());
        if wildcard
            && self.advertise.is_none()
            && (self.offers_clone() || self.role == RoleArg::Standby)
        {
            return Err(NodeError::Usage(format!(
                "--listen {} is a wildcard address, which a joiner on another host cannot connect to: give --advertise HOST:PORT, the address it is reached at",
                self.listen.as_deref().unwrap_or_default()
            )));
        }
        if self.role == RoleArg::Standby {
            if !self.arbiter.starts_with("etcd:") {
                return Err(NodeError::Usage(format!(
                    "a standby needs an etcd arbiter (--arbiter etcd:http://HOST:PORT): standbys register with etcd leases and are picked by an etcd transaction; {:?} is not one",
                    self.arbiter
                )));
            }
            if !self.offers_clone() {
                return Err(NodeError::Usage(
                    "a standby needs --disk FILE (the pair's shared disk) and --listen ADDR (where it offers a live clone once it is the live member)".into(),
                ));
            }
        }
        if self.role == RoleArg::Join && self.disk.is_none() {
            return Err(NodeError::Usage(
                "a joining node needs the pair's shared --disk: a private in-memory disk is not cloned"
                    .into(),
            ));
        }
        if self.supersede.is_some() {
            if !matches!(self.role, RoleArg::Primary | RoleArg::Backup) {
                return Err(NodeError::Usage(
                    "--supersede starts a new pair: it is for a primary and its backup; a joiner or standby joins the live member's generation".into(),
                ));
            }
            if self.generation.is_some() {
                return Err(NodeError::Usage(
                    "--supersede takes the new pair's generation from the arbiter; it does not go with --generation".into(),
                ));
            }
        }
        if self.alone {
            if self.role != RoleArg::Primary {
                return Err(NodeError::Usage(
                    "--alone is for a primary (--role primary): a backup or joiner needs a peer"
                        .into(),
                ));
            }
            if !self.offers_clone() {
                return Err(NodeError::Usage(
                    "a primary started --alone needs --listen ADDR (where it offers a live clone to a joining backup) and --disk FILE (the shared disk the clone uses): without them it could never be protected".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Ask the arbiter before anything starts: a node may start for `pair` only while no
/// side of that generation went live and no newer generation of the VM was claimed.
/// A claim means a live member exists (or existed, in an earlier run), holding guest
/// state a fresh process does not have; serving beside it would be a second live copy.
fn check_membership(arbiter: &dyn Arbiter, pair: PairId, args: &NodeArgs) -> Result<()> {
    let unusable = args.arbiter_error();
    let holder = arbiter.holder(pair).map_err(unusable)?;
    let newest = arbiter.newest_generation(pair.vm).map_err(unusable)?;
    let why = match (holder, newest) {
        (Some(h), _) => format!("node {} went live in it", h.0),
        (None, Some(n)) if n > pair.generation => {
            format!("the newer generation {n} was claimed or reserved")
        }
        _ => return Ok(()),
    };
    Err(NodeError::Superseded {
        vm: pair.vm,
        generation: pair.generation,
        why,
        next: newest.unwrap_or(pair.generation).max(pair.generation) + 1,
    })
}

/// Bytes of the guest's disk.
pub const DISK_BYTES: u64 = 64 * 1024;

/// The guest's disk: the `--disk` file, shared by both processes, or a private copy in
/// memory.
fn open_disk(args: &NodeArgs) -> Result<Disk> {
    Ok(match &args.disk {
        Some(path) => Disk::open_file(path, DISK_BYTES)?,
        None => Disk::new(DISK_BYTES as usize),
    })
}

/// The digest both sides compare in the handshake: the loaded machine's, mixed with
/// the disk mode, since a side with a shared disk and one with a private copy log
/// their writes differently and cannot replay each other.
fn identity_digest(machine_digest: u64, shared_disk: bool) -> u64 {
    if shared_disk {
        machine_digest.rotate_left(17) ^ 0x5348_4152_4544_4453 // "SHAREDDS"
    } else {
        machine_digest
    }
}

/// A disk file that carries a fencing token (some node won the arbiter and wrote it)
/// while the arbiter has no claim for the VM comes from another run: refuse it rather
/// than have every write of the new pair fenced off.
fn check_disk(disk: &Disk, arbiter: &dyn Arbiter, args: &NodeArgs) -> Result<()> {
    let token = disk.token()?;
    if token == 0 {
        return Ok(());
    }
    let claimed = arbiter
        .newest_claimed(args.vm)
        .map_err(args.arbiter_error())?;
    if claimed.is_some() {
        return Ok(());
    }
    Err(NodeError::StaleDisk {
        path: args
            .disk
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string()),
        token,
        vm: args.vm,
    })
}

fn load_machine(args: &NodeArgs) -> Result<Machine> {
    let disk = if args.disk.is_some() {
        // One disk both processes see: the live side writes it, the backup gets read
        // data from the log.
        DiskMode::Shared {
            backup_reads_disk: false,
        }
    } else {
        // Each process has its own disk copy; both sides write it.
        DiskMode::Private {
            backup_reads_disk: false,
        }
    };
    let cfg = MachineConfig {
        disk,
        ..MachineConfig::default()
    };
    match &args.image {
        None => {
            let image = ft_sim::guests::service().map_err(|e| NodeError::Image(e.to_string()))?;
            Machine::from_raw(cfg, &image).map_err(|e| NodeError::Image(e.to_string()))
        }
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| NodeError::Image(format!("{}: {e}", path.display())))?;
            let m = if bytes.starts_with(b"\x7fELF") {
                Machine::from_elf(cfg, &bytes)
            } else {
                Machine::from_raw(cfg, &bytes)
            };
            m.map_err(|e| NodeError::Image(format!("{}: {e}", path.display())))
        }
    }
}

/// The KVM guest: ft-kvm's kernel and network service workload.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn load_kvm(args: &NodeArgs) -> Result<ft_kvm::machine::KvmMachine> {
    use ft_kvm::machine::{KvmMachine, MachineConfig as KvmConfig};
    if args.image.is_some() {
        return Err(NodeError::Usage(
            "--image is for sim guests: --backend kvm runs ft-kvm's built-in network service"
                .into(),
        ));
    }
    let workload = ft_kvm::guest::net_service_workload()
        .map_err(|e| NodeError::Image(format!("the KVM service workload: {e}")))?;
    let cfg = KvmConfig {
        disk: if args.disk.is_some() {
            DiskMode::Shared {
                backup_reads_disk: false,
            }
        } else {
            DiskMode::Private {
                backup_reads_disk: false,
            }
        },
        ..KvmConfig::default()
    };
    KvmMachine::with_workload(cfg, workload).map_err(|e| NodeError::Kvm(e.to_string()))
}

/// Without KVM: refused.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn load_kvm(_: &NodeArgs) -> Result<Machine> {
    Err(NodeError::Kvm(
        "this build has no KVM backend (Linux on x86-64 only)".into(),
    ))
}

fn ms(n: Nanos) -> f64 {
    n as f64 / 1e6
}

/// Print one engine notice as a progress line.
fn report(log: &Log, t: Nanos, n: &Notice) {
    let at = format!("(engine t={:.3} ms)", ms(t));
    match n {
        Notice::PeerSuspected { last_heard } => log.line(format_args!(
            "PEER DECLARED DEAD: silent for {:.3} ms {at}",
            ms(t.saturating_sub(*last_heard))
        )),
        Notice::Drained { replayed, point } => log.line(format_args!(
            "drained the log: {replayed} records replayed, at instruction {} {at}",
            point.count
        )),
        Notice::ArbiterUnreachable { attempt, error } => log.line(format_args!(
            "no arbiter verdict (attempt {attempt}); waiting, not live: {error}"
        )),
        Notice::ArbiterWon { token } => {
            log.line(format_args!("arbiter: WON (fencing token {token}) {at}"))
        }
        Notice::ArbiterLost { winner } => log.line(format_args!(
            "arbiter: LOST to node {}; halting {at}",
            winner.0
        )),
        Notice::WentAlone { released } => log.line(format_args!(
            "ALONE: no backup; running unprotected, released {released} held outputs {at}"
        )),
        Notice::WentLive {
            reissued_io,
            resent_outputs,
            point,
        } => log.line(format_args!(
            "LIVE at instruction {}: re-issued {reissued_io} pending I/O, re-sent {resent_outputs} outputs; serving clients {at}",
            point.count
        )),
        Notice::Diverged(d) => log.line(format_args!("DIVERGED: {d}")),
        Notice::GuestExited { code } => log.line(format_args!("guest exited with code {code}")),
        other => log.line(format_args!("{other} {at}")),
    }
}

/// Report the link's connection events (lost, replaced, refused peers) as they
/// happen, from a thread that ends with the process.
fn watch_link(handle: TcpHandle, log: Log) {
    let spawned = std::thread::Builder::new()
        .name("ft-node-link-watch".into())
        .spawn(move || {
            let mut last = handle.stats();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let now = handle.stats();
                if now.disconnects > last.disconnects {
                    log.line(format_args!(
                        "log channel: connection lost ({} so far)",
                        now.disconnects
                    ));
                }
                if now.reconnects > last.reconnects {
                    log.line(format_args!(
                        "log channel: reconnected and resumed ({} reconnects, {} frames resent)",
                        now.reconnects, now.frames_resent
                    ));
                }
                if now.refused > last.refused {
                    log.line(format_args!(
                        "log channel: refused {} connection(s): {} failed authentication, {} foreign, {} wrong pair, {} version",
                        now.refused - last.refused,
                        now.auth_failures - last.auth_failures,
                        now.foreign - last.foreign,
                        now.peer_mismatches - last.peer_mismatches,
                        now.version_mismatches - last.version_mismatches
                    ));
                }
                if now.mac_failures > last.mac_failures {
                    log.line(format_args!(
                        "log channel: {} frame(s) failed authentication; connection dropped",
                        now.mac_failures - last.mac_failures
                    ));
                }
                last = now;
            }
        });
    let _ = spawned;
}

/// What this process runs as, once the arbiter was asked: the role (a restarted
/// primary or backup whose generation went on without it rejoins as a joiner), its
/// pair generation, and the peer it connects to.
struct Plan {
    role: RoleArg,
    pair: PairId,
    peer: Option<String>,
    /// The first line: how the generation was found, or why the role differs from
    /// `--role`.
    rejoined: Option<String>,
}

/// Ask the arbiter what this node may be.
///
/// * A joiner joins the generation after the newest claimed one, whose holder is the
///   live member running alone; it connects to `--peer`, or to where the member's
///   published clone offer says.
/// * A primary without `--generation` reserves a fresh generation from the arbiter
///   ([`reserve_for_primary`]); a backup without it takes the one its primary
///   reserved ([`adopt_reservation`]).
/// * A primary or backup with `--generation` starts for it if nobody went live in it
///   and no newer generation was claimed or reserved.
/// * Otherwise the pair went on without this node (it was killed and restarted, say):
///   with `--disk` and `--listen` it rejoins as the backup of the live member, by
///   live clone, if that member offers one; without, it is refused
///   ([`NodeError::Superseded`]).
fn plan(arbiter: &dyn Arbiter, args: &NodeArgs, me: NodeId) -> Result<Plan> {
    if args.role == RoleArg::Join {
        return plan_join(arbiter, args, me);
    }
    let checked = match (args.generation, args.role) {
        (Some(generation), _) => {
            let pair = PairId {
                vm: args.vm,
                generation,
            };
            check_membership(arbiter, pair, args).map(|()| (pair, None))
        }
        (None, RoleArg::Primary) => reserve_for_primary(arbiter, args, me),
        (None, _) => {
            let deadline = Instant::now() + Duration::from_millis(args.connect_timeout_ms);
            adopt_reservation(arbiter, args, me, deadline)
        }
    };
    match checked {
        Ok((pair, note)) => Ok(Plan {
            role: args.role,
            pair,
            peer: args.peer.clone(),
            rejoined: note,
        }),
        // Only a taken generation can be rejoined; an arbiter that cannot be asked is
        // reported as it is.
        Err(superseded @ NodeError::Superseded { .. }) if args.offers_clone() => {
            rejoin(arbiter, args, me, superseded)
        }
        Err(e) => Err(e),
    }
}

/// A primary without `--generation`: the generation the arbiter reserves it, or the
/// reason it may not start. It reserves the next generation when the VM has none yet,
/// or with `--supersede G` while `G` is the VM's newest. It is
/// [`NodeError::Superseded`] when the VM's newest generation has a live member or a
/// primary's reservation, its own id's included (a pair that may be running: only the
/// operator can say that an earlier run is over), and
/// [`NodeError::LostReservation`] when another node reserved or claimed first.
fn reserve_for_primary(
    arbiter: &dyn Arbiter,
    args: &NodeArgs,
    me: NodeId,
) -> Result<(PairId, Option<String>)> {
    let unusable = args.arbiter_error();
    let membership = arbiter.membership(args.vm).map_err(unusable)?;
    let newest = membership.map(|m| m.pair.generation);
    let taken = |generation, why| {
        taken(
            PairId {
                vm: args.vm,
                generation,
            },
            why,
        )
    };
    let reserve = |why: String| -> Result<(PairId, Option<String>)> {
        match arbiter
            .reserve_generation(args.vm, me, newest, Purpose::NewPair)
            .map_err(unusable)?
        {
            Some(generation) => Ok((
                PairId {
                    vm: args.vm,
                    generation,
                },
                Some(format!(
                    "reserved generation {generation} of vm {} from the arbiter ({why})",
                    args.vm
                )),
            )),
            // Another node reserved or claimed a generation between the read and the
            // reservation: a primary started at the same moment got there first.
            None => Err(NodeError::LostReservation {
                vm: args.vm,
                generation: newest.unwrap_or(0).saturating_add(1),
            }),
        }
    };
    let Some(m) = membership else {
        return reserve("the vm's first".into());
    };
    if args.supersede == Some(m.pair.generation) {
        return reserve(format!(
            "--supersede {}: the run that ended in it is over",
            m.pair.generation
        ));
    }
    // A reservation under this node's own id is taken too: it may be this node's
    // previous process (restarted before its backup took over) or another live
    // process with the same --node-id, and the arbiter, which lets a holder win
    // again, cannot tell the two apart.
    let why = match (m.holder, m.reserved_by) {
        (Some(h), _) => format!("node {} went live in it", h.0),
        (None, Some(r)) if m.clone_of_live_member() => format!(
            "node {}, the live member of generation {}, reserved it for a clone of itself",
            r.0,
            m.pair.generation.saturating_sub(1)
        ),
        (None, Some(r)) if r == me => format!(
            "this node's id (node {}) reserved it for a new pair, which may be running: this node restarted, or another process has its --node-id",
            r.0
        ),
        (None, Some(r)) => format!("node {} reserved it for a new pair, which may be running", r.0),
        (None, None) => "it is in use".into(),
    };
    Err(taken(m.pair.generation, why))
}

/// The refusal of a node whose generation `pair` is taken, for `why`.
fn taken(pair: PairId, why: String) -> NodeError {
    NodeError::Superseded {
        vm: pair.vm,
        generation: pair.generation,
        why,
        next: pair.generation.saturating_add(1),
    }
}

/// A backup without `--generation`: the generation its primary reserved, which is the
/// VM's newest, unclaimed, and reserved by another node (with `--supersede G`: above
/// `G`). It waits for the primary's reservation until `deadline`. A newest
/// generation that a node went live in is [`NodeError::Superseded`] at once (this
/// backup restarted after its pair went on: it rejoins the live member, or is
/// refused).
fn adopt_reservation(
    arbiter: &dyn Arbiter,
    args: &NodeArgs,
    me: NodeId,
    deadline: Instant,
) -> Result<(PairId, Option<String>)> {
    let unusable = args.arbiter_error();
    loop {
        let m = arbiter.membership(args.vm).map_err(unusable)?;
        // With --supersede G, generation G and older belong to the run that is over.
        let m = m.filter(|m| args.supersede.is_none_or(|g| m.pair.generation > g));
        match m {
            Some(Membership {
                pair,
                holder: Some(h),
                ..
            }) => return Err(taken(pair, format!("node {} went live in it", h.0))),
            // The live member's clone: the running pair's, not a new one.
            Some(m) if m.clone_of_live_member() => {
                return Err(taken(
                    m.pair,
                    format!(
                        "node {}, the live member of generation {}, reserved it for a clone of itself",
                        m.reserved_by.map_or(0, |r| r.0),
                        m.pair.generation.saturating_sub(1)
                    ),
                ))
            }
            Some(Membership {
                pair,
                reserved_by: Some(r),
                ..
            }) if r != me => {
                return Ok((
                    pair,
                    Some(format!(
                        "generation {} of vm {}: the one node {} reserved for its new pair",
                        pair.generation, args.vm, r.0
                    )),
                ))
            }
            Some(Membership {
                pair,
                reserved_by: Some(r),
                ..
            }) => {
                return Err(NodeError::Usage(format!(
                    "node id collision: vm {}'s newest generation {} was reserved by node {}, this backup's own --node-id; give the backup an id of its own",
                    args.vm, pair.generation, r.0
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(NodeError::Usage(format!(
                    "no primary reserved a new generation of vm {} within --connect-timeout-ms ({} ms): start the primary (or give both sides --generation)",
                    args.vm, args.connect_timeout_ms
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A primary or backup whose generation is taken (`superseded`): rejoin the VM's
/// live member by clone if it offers one, or say why not.
fn rejoin(
    arbiter: &dyn Arbiter,
    args: &NodeArgs,
    me: NodeId,
    superseded: NodeError,
) -> Result<Plan> {
    let unusable = args.arbiter_error();
    let taken = match &superseded {
        NodeError::Superseded { generation, .. } => *generation,
        _ => 0,
    };
    // The newest generation reserved under this node's own id, and not claimed: this
    // is a restart of its primary (whose backup is about to take over and offer a
    // clone), or another live process with this --node-id. Neither may run the pair;
    // wait for a live member's offer, up to --connect-timeout-ms.
    // (Not a reservation this node made as a live member, for a clone of itself: that
    // member's state died with it, as when its claim is the newest.)
    let own = |m: Option<Membership>| {
        m.is_some_and(|m| {
            m.holder.is_none() && m.reserved_by == Some(me) && !m.clone_of_live_member()
        })
    };
    let deadline = Instant::now() + Duration::from_millis(args.connect_timeout_ms);
    let mut said = false;
    let offer = loop {
        let offer = arbiter.clone_offer(args.vm).map_err(unusable)?;
        if offer.as_ref().is_some_and(|o| o.member != me)
            || Instant::now() >= deadline
            || !own(arbiter.membership(args.vm).map_err(unusable)?)
        {
            break offer;
        }
        if !said {
            said = true;
            Log::new(side_of(args.role)).line(format_args!(
                "vm {} generation {taken} was reserved under this node's id and nobody went live in it yet: waiting up to {} ms for a live member to rejoin by clone",
                args.vm, args.connect_timeout_ms
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    match offer {
            Some(o) if o.member != me => Ok(Plan {
                role: RoleArg::Join,
                pair: PairId {
                    vm: args.vm,
                    generation: o.pair.generation.saturating_add(1),
                },
                rejoined: Some(format!(
                    "vm {} generation {} is taken: this {} restarts as the backup of the live member node {}, by live clone from {} into generation {}",
                    args.vm,
                    taken,
                    side_of(args.role),
                    o.member.0,
                    o.addr,
                    o.pair.generation.saturating_add(1)
                )),
                peer: Some(o.addr),
            }),
            Some(o) => Err(NodeError::Usage(format!(
                "{superseded}; the newest live member of vm {} is node {}, this node's own id: it was this node before the restart, and the guest state died with it. Nothing can be cloned from it",
                args.vm, o.member.0
            ))),
            None => Err(NodeError::Usage(format!(
                "{superseded}; no live member of vm {} offers a live clone now to rejoin by (the pair is whole, or its member runs without --listen and --disk)",
                args.vm
            ))),
        }
}

/// A joiner: the generation after the newest claimed one, and the member to clone.
fn plan_join(arbiter: &dyn Arbiter, args: &NodeArgs, me: NodeId) -> Result<Plan> {
    let unusable = args.arbiter_error();
    let newest = arbiter.newest_claimed(args.vm).map_err(unusable)?;
    let Some(generation) = newest else {
        return Err(NodeError::Usage(format!(
            "nothing to join: no generation of vm {} was ever claimed, so no member runs alone (the pair is whole, or has not started)",
            args.vm
        )));
    };
    // A newer reservation is a new pair (a primary started with --supersede): the run
    // whose member went live in `generation` was declared over. Unless it is that
    // member's own, for a clone of itself (an earlier joiner's, which failed).
    if let Some(reserved) = arbiter
        .membership(args.vm)
        .map_err(unusable)?
        .filter(|m| m.pair.generation > generation && !m.clone_of_live_member())
        .map(|m| m.pair.generation)
    {
        return Err(NodeError::Usage(format!(
            "nothing to join: vm {}'s newest generation {reserved} was reserved for a new pair after a member went live in generation {generation}; that pair takes its backup at start",
            args.vm
        )));
    }
    let peer = match &args.peer {
        Some(p) => p.clone(),
        None => match arbiter.clone_offer(args.vm).map_err(unusable)? {
            Some(o) if o.member != me => o.addr,
            Some(o) => {
                return Err(NodeError::Usage(format!(
                    "the live member of vm {} is node {}, this node's own --node-id",
                    args.vm, o.member.0
                )))
            }
            None => {
                return Err(NodeError::Usage(format!(
                    "nothing to join: no live member of vm {} offers a live clone now (the pair is whole, or its member runs without --listen and --disk); give --peer to wait for one",
                    args.vm
                )))
            }
        },
    };
    Ok(Plan {
        role: RoleArg::Join,
        pair: PairId {
            vm: args.vm,
            generation: generation.saturating_add(1),
        },
        peer: Some(peer),
        rejoined: None,
    })
}

/// Register as a standby of the VM in etcd and wait until picked to join a live
/// member that runs alone; the plan is then a joiner's.
fn wait_as_standby(
    etcd: &ft_transport::arbiter::EtcdArbiter,
    args: &NodeArgs,
    me: NodeId,
) -> Result<(Plan, ft_transport::arbiter::etcd::standby::Standby)> {
    use ft_transport::arbiter::etcd::standby::Standby;
    let log = Log::new("standby");
    let advertised = args.advertised().unwrap_or_default();
    let ttl = Duration::from_millis(args.lease_ms);
    let standby = Standby::register(etcd, args.vm, me, &advertised, ttl)?;
    log.line(format_args!(
        "standby (node {}) registered for vm {} in etcd (lease {:x}, ttl {} s); waiting for a live member that needs a backup",
        me.0,
        args.vm,
        standby.lease().id(),
        standby.lease().ttl().as_secs()
    ));
    let mut last_error = String::new();
    let pick = standby.wait_for_pick(Duration::from_millis(500), |e| {
        let e = e.to_string();
        if e != last_error {
            log.line(format_args!("etcd: {e}; still waiting"));
            last_error = e;
        }
    });
    let pair = pick.pair();
    log.line(format_args!(
        "PICKED by etcd (node {}) to restore vm {}'s redundancy: joining generation {} by live clone from the live member node {} at {}",
        me.0, args.vm, pair.generation, pick.offer.member.0, pick.offer.addr
    ));
    let plan = Plan {
        role: RoleArg::Join,
        pair,
        peer: Some(pick.offer.addr),
        rejoined: None,
    };
    Ok((plan, standby))
}

/// Asked while a primary waits for its backup: whether another node went live in its
/// generation (or a newer one was claimed) meanwhile. It answers once the live member
/// offers a clone to rejoin by, or [`SUPERSEDED_GRACE`] after the claim if it offers
/// none, so that a node restarted at once finds the offer.
struct SupersededWatch<'a> {
    arbiter: &'a dyn Arbiter,
    pair: PairId,
    me: NodeId,
    seen: Option<Instant>,
    /// The answer was a newer reservation (not a live member to rejoin).
    replaced: bool,
}

/// How long [`SupersededWatch`] waits for the live member's offer after the claim.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(2);

impl<'a> SupersededWatch<'a> {
    fn new(arbiter: &'a dyn Arbiter, pair: PairId, me: NodeId) -> SupersededWatch<'a> {
        SupersededWatch {
            arbiter,
            pair,
            me,
            seen: None,
            replaced: false,
        }
    }

    fn poll(&mut self) -> Option<String> {
        // An arbiter that cannot answer now: keep waiting, ask again.
        let holder = self.arbiter.holder(self.pair).ok()?;
        let newest = self.arbiter.newest_claimed(self.pair.vm).ok()?;
        if holder.is_none() && newest.is_none_or(|n| n <= self.pair.generation) {
            // No live member anywhere newer; a newer reservation is a new pair (a
            // primary started with --supersede): this one's run is over.
            let reserved = self.arbiter.newest_generation(self.pair.vm).ok()?;
            if let Some(n) = reserved.filter(|&n| n > self.pair.generation) {
                self.replaced = true;
                return Some(format!(
                    "vm {} generation {} was superseded while this primary waited for its backup: the newer generation {n} was reserved for a new pair",
                    self.pair.vm, self.pair.generation
                ));
            }
        }
        let why = match (holder, newest) {
            (Some(h), _) if h != self.me => format!("node {} went live in it", h.0),
            (_, Some(n)) if n > self.pair.generation => {
                format!("the newer generation {n} was claimed")
            }
            _ => return None,
        };
        let seen = *self.seen.get_or_insert_with(Instant::now);
        let offered = self
            .arbiter
            .clone_offer(self.pair.vm)
            .ok()
            .flatten()
            .is_some_and(|o| o.member != self.me);
        (offered || seen.elapsed() >= SUPERSEDED_GRACE).then(|| {
            format!(
                "vm {} generation {} was taken while this primary waited for its backup: {why}",
                self.pair.vm, self.pair.generation
            )
        })
    }
}

/// A notice handler: print the notice, and stop the run through `control` when
/// `when` holds for it.
fn stop_on(
    log: &Log,
    control: &Control,
    when: impl Fn(&Notice) -> bool,
) -> impl FnMut(Nanos, &Notice) {
    let (log, control) = (log.clone(), control.clone());
    move |t: Nanos, n: &Notice| {
        report(&log, t, n);
        if when(n) {
            control.stop();
        }
    }
}

/// A guest ft-node can run: ft-sim's machine or a KVM guest.
pub trait Guest: EventSource + NetDrops {}
impl<M: EventSource + NetDrops> Guest for M {}

/// The machine and world of an ft-node.
type NodeT<M> = Node<TappedMachine<M>, BridgeWorld<SimWorld>>;

/// What a run leaves for the final report.
type Outcome = (
    Exit,
    ft_core::Stats,
    Vec<ft_transport::RuntimeError>,
    (u64, u64),
);

/// What the later runs of a node need.
struct Env<'a> {
    args: &'a NodeArgs,
    log: &'a Log,
    arbiter: &'a Arc<dyn Arbiter>,
    epoch: Instant,
    rcfg: RuntimeConfig,
    me: NodeId,
    image: u64,
}

impl Env<'_> {
    /// After the first run: a node stopped because it became the live member alone
    /// (and offers clones) goes on serving and cloning; any other ends here.
    fn go_on<M: Guest>(
        &self,
        node: NodeT<M>,
        exit: Exit,
        errors: Vec<ft_transport::RuntimeError>,
    ) -> Outcome {
        if exit == Exit::Stopped && node.is_live() {
            return self.serve_and_clone(node, errors);
        }
        outcome(&node, exit, errors)
    }

    /// Run the live member alone, offering a live clone on `--listen`; when a joiner
    /// connects, clone into the next generation and run the new pair; when that pair
    /// loses its backup (or the clone fails), go back to running alone. Returns when
    /// the guest ends or the node halts.
    fn serve_and_clone<M: Guest>(
        &self,
        mut node: NodeT<M>,
        mut errors: Vec<ft_transport::RuntimeError>,
    ) -> Outcome {
        let Some(listen) = self.args.listen.clone() else {
            return outcome(&node, Exit::Stopped, errors);
        };
        loop {
            let next = PairId {
                vm: node.config().pair.vm,
                generation: node.config().pair.generation.saturating_add(1),
            };
            let control = Control::new();
            let (tx, rx) = crossbeam_channel::bounded(1);
            let opts = LinkOptions {
                pair: next,
                node: self.me,
                image: self.image,
                key_file: self.args.key_file.clone(),
                connect_timeout: Duration::from_millis(self.args.connect_timeout_ms),
            };
            let offer = Offer {
                opts,
                listen: listen.clone(),
                record: ft_core::CloneOffer {
                    pair: node.config().pair,
                    member: self.me,
                    addr: self.args.advertised().unwrap_or_else(|| listen.clone()),
                },
                arbiter: self.arbiter.clone(),
            };
            offer_clone(offer, control.clone(), tx, self.log.clone());
            let (n, exit) = self.run_over(node, NoLink, control, |_| false, &mut errors);
            node = n;
            let joined = match exit {
                Exit::Stopped => rx.try_recv().ok(),
                _ => None,
            };
            let Some(link) = joined else {
                // Done (or halted) while offering: nobody may clone from it any more.
                if let Err(e) = self.arbiter.withdraw_offer(node.config().pair, self.me) {
                    self.log
                        .line(format_args!("live clone: the offer was not withdrawn: {e}"));
                }
                return outcome(&node, exit, errors);
            };
            match reserve_clone(&**self.arbiter, next, self.me) {
                Ok(()) => {}
                Err(CloneReservation::Retry(why)) => {
                    self.log.line(format_args!(
                        "live clone not started: {why}; running alone, offering again"
                    ));
                    continue;
                }
                Err(CloneReservation::Superseded(why)) => {
                    // A new pair was declared after this run: no clone of this member
                    // may become a pair of its own. It serves on alone (its shared-disk
                    // writes are fenced by the new pair's token once it runs).
                    self.log.line(format_args!(
                        "live clone refused for good: {why}; running alone, offering no clone"
                    ));
                    drop(link);
                    let (n, exit) =
                        self.run_over(node, NoLink, Control::new(), |_| false, &mut errors);
                    return outcome(&n, exit, errors);
                }
            }
            let now = nanos_since(self.epoch);
            if let Err(e) = node.start_clone(next, CloneConfig::default(), now) {
                self.log
                    .line(format_args!("live clone not started: {e}; running alone"));
                continue;
            }
            let alone =
                |n: &Notice| matches!(n, Notice::WentAlone { .. } | Notice::CloneAborted { .. });
            let (n, exit) = self.run_over(
                node,
                PrimaryEnd::new(link),
                Control::new(),
                alone,
                &mut errors,
            );
            node = n;
            if exit != Exit::Stopped || !node.is_live() {
                return outcome(&node, exit, errors);
            }
            // Alone again: the link to the lost backup went with its run (dropping it
            // ended its threads and freed the address); the next joiner is offered a
            // clone.
        }
    }

    /// Run `node` over `link` until it is done or `control` stops it (`stop_when` a
    /// notice holds, or another thread); collect its errors and drop the link.
    fn run_over<M: Guest, L: ft_core::driver::Link>(
        &self,
        node: NodeT<M>,
        link: L,
        control: Control,
        stop_when: impl Fn(&Notice) -> bool,
        errors: &mut Vec<ft_transport::RuntimeError>,
    ) -> (NodeT<M>, Exit) {
        let on_notice = stop_on(self.log, &control, stop_when);
        let r = ft_transport::run(
            node,
            link,
            self.arbiter.clone(),
            self.epoch,
            self.rcfg.clone(),
            control,
            on_notice,
        );
        errors.extend(r.errors);
        (r.node, r.exit)
    }
}

fn outcome<M: Guest>(
    node: &NodeT<M>,
    exit: Exit,
    errors: Vec<ft_transport::RuntimeError>,
) -> Outcome {
    let w = node.world().inner();
    (
        exit,
        node.stats().clone(),
        errors,
        (w.token(), w.fenced_writes()),
    )
}

/// Why a live member could not reserve its clone's generation.
enum CloneReservation {
    /// The arbiter failed; the next joiner may fare better.
    Retry(String),
    /// A newer generation belongs to someone else: a new pair declared this run over.
    Superseded(String),
}

/// The live member reserves `next`, the generation after its own claim, for the clone
/// it is about to start, so that the clone's pair, like any new pair, has its
/// generation from the arbiter: nobody else can start a pair in it, and an operator's
/// `--supersede` sees it. A reservation it made for an earlier clone that failed is
/// used again.
fn reserve_clone(
    arbiter: &dyn Arbiter,
    next: PairId,
    me: NodeId,
) -> std::result::Result<(), CloneReservation> {
    let retry = |e: ft_core::ArbiterError| CloneReservation::Retry(e.to_string());
    let newest = arbiter.newest_generation(next.vm).map_err(retry)?;
    let mine = arbiter.reservation(next).map_err(retry)?
        == Some(Reservation {
            node: me,
            purpose: Purpose::Clone,
        });
    if newest == Some(next.generation) && mine {
        return Ok(());
    }
    let current = next.generation.saturating_sub(1);
    let newer = |g: Option<u64>| {
        CloneReservation::Superseded(format!(
            "vm {} has generation {} above this member's {current}, reserved or claimed by another node",
            next.vm,
            g.map_or_else(|| "?".into(), |g| g.to_string())
        ))
    };
    if newest != Some(current) {
        return Err(newer(newest));
    }
    match arbiter
        .reserve_generation(next.vm, me, Some(current), Purpose::Clone)
        .map_err(retry)?
    {
        Some(g) if g == next.generation => Ok(()),
        _ => Err(newer(arbiter.newest_generation(next.vm).ok().flatten())),
    }
}

/// What [`offer_clone`] offers: where, for which pair, through which arbiter.
struct Offer {
    /// The link's options, for the next generation.
    opts: LinkOptions,
    /// The address to listen on (`--listen`).
    listen: String,
    /// The offer published in the arbiter's membership record (its address is
    /// `--advertise`, or `--listen`).
    record: ft_core::CloneOffer,
    arbiter: Arc<dyn Arbiter>,
}

/// On a thread: listen on `addr` for the next generation's backup (retrying while the
/// address is still held by the link just closed), publish the offer in the arbiter's
/// membership record (so a restarted node or a joiner without `--peer` finds it),
/// accept one joiner that authenticates, withdraw the offer, hand the joiner's link
/// over and stop the run that is going on alone.
fn offer_clone(
    offer: Offer,
    control: Control,
    tx: crossbeam_channel::Sender<link::Link>,
    log: Log,
) {
    let thread_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("ft-node-clone-offer".into())
        .spawn(move || {
            let log = thread_log;
            let Offer {
                opts,
                listen: addr,
                record,
                arbiter,
            } = offer;
            let deadline = Instant::now() + Duration::from_secs(5);
            let listener = loop {
                match link::listen(&addr, &opts) {
                    Ok(l) => break l,
                    // The link just dropped may still hold the address a moment.
                    Err(link::LinkError::Tcp(TcpError::Io {
                        kind: std::io::ErrorKind::AddrInUse,
                        ..
                    })) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        log.line(format_args!(
                            "live clone: cannot offer a clone on {addr}: {e}; running alone"
                        ));
                        return;
                    }
                }
            };
            let reached = if record.addr == addr {
                String::new()
            } else {
                format!(", reached at {}", record.addr)
            };
            match arbiter.publish_offer(&record) {
                Ok(()) => log.line(format_args!(
                    "live clone: offered on {addr}{reached} for generation {} (published in the arbiter's membership record)",
                    opts.pair.generation
                )),
                // A joiner given --peer still finds it; one that looks it up does not.
                Err(e) => log.line(format_args!(
                    "live clone: offered on {addr} for generation {}, but not published: {e}",
                    opts.pair.generation
                )),
            }
            let accepted = link::accept(listener, &log);
            if let Err(e) = arbiter.withdraw_offer(record.pair, record.member) {
                log.line(format_args!("live clone: the offer was not withdrawn: {e}"));
            }
            match accepted {
                Ok(opened) => {
                    log.line(format_args!(
                        "live clone: a new backup joined for generation {}; cloning",
                        opts.pair.generation
                    ));
                    if tx.send(opened.link).is_ok() {
                        control.stop();
                    }
                }
                Err(e) => log.line(format_args!(
                    "live clone: no backup joined on {addr}: {e}; running alone"
                )),
            }
        });
    if let Err(e) = spawned {
        log.line(format_args!(
            "live clone: cannot start the thread that offers it: {e}; running alone"
        ));
    }
}

/// Run a node until it is done; the process exit code.
pub fn run(args: &NodeArgs) -> Result<i32> {
    let me = args.node_id()?;
    args.check_combination()?;
    // Refuse bad parameters before anything starts or prints.
    let cfg = Config {
        // The generation is the plan's (run_on); any valid one checks the rest here.
        pair: PairId {
            vm: args.vm,
            generation: args.generation.unwrap_or(1),
        },
        node: NodeId(me),
        heartbeat_interval: args.heartbeat_ms.saturating_mul(1_000_000),
        peer_timeout: args.timeout_ms.saturating_mul(1_000_000),
        digest_interval: args.digest_interval,
        slice: args.backend.slice(),
        ..Config::default()
    };
    cfg.validate().map_err(NodeError::Config)?;
    check_startup(args)?;
    match args.backend {
        BackendArg::Sim => run_on(args, me, cfg, load_machine(args)?),
        BackendArg::Kvm => run_on(args, me, cfg, load_kvm(args)?),
    }
}

/// Refuse, before the arbiter is asked (a primary reserves a generation there, which
/// its rerun would find taken) and before anything is printed, what would stop the
/// node right after it announced itself: a key file that cannot be read or is too
/// short, and an address it listens on at start that cannot be bound:
/// `--client-listen`, and a primary's `--listen` (alone or not). Each address is bound
/// and released at once; the node binds it again once it knows its role.
fn check_startup(args: &NodeArgs) -> Result<()> {
    ft_transport::tcp::PreSharedKey::from_file(&args.key_file)
        .map_err(|e| NodeError::Link(link::LinkError::Tcp(e)))?;
    let probe = |flag: &'static str, addr: &str| {
        std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|source| NodeError::Listen {
                flag,
                addr: addr.to_string(),
                source,
            })
    };
    probe("--client-listen", &args.client_listen)?;
    if args.role == RoleArg::Primary {
        if let Some(addr) = &args.listen {
            probe("--listen", addr)?;
        }
    }
    Ok(())
}

/// Backup: connect to the primary at `addr`. A backup that took the generation its
/// primary reserved ([`adopt_reservation`]) and is refused for the pair (it read the
/// arbiter before its `--supersede` primary reserved a newer generation) takes the newer
/// reservation and connects again, until `--connect-timeout-ms`.
fn open_backup(
    arbiter: &dyn Arbiter,
    args: &NodeArgs,
    role: RoleArg,
    me: u64,
    addr: &str,
    opts: &mut LinkOptions,
    log: &Log,
) -> Result<link::Opened> {
    // One deadline for every attempt, so that a backup gives up after
    // --connect-timeout-ms in all.
    let deadline = Instant::now() + Duration::from_millis(args.connect_timeout_ms);
    loop {
        opts.connect_timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match link::open_backup(addr, opts, log) {
            Err(link::LinkError::Tcp(TcpError::PairMismatch { .. }))
                if args.generation.is_none()
                    && role == RoleArg::Backup
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
                let (pair, _) = adopt_reservation(arbiter, args, NodeId(me), deadline)?;
                if pair != opts.pair {
                    log.line(format_args!(
                        "the primary at {addr} is not in generation {}; taking the newer reservation, generation {}",
                        opts.pair.generation, pair.generation
                    ));
                    opts.pair = pair;
                }
            }
            other => return Ok(other?),
        }
    }
}

/// Whether a standby whose clone could not start with `e` waits for another pick:
/// the member was unreachable, went away or is in another generation now. A refusal
/// that would repeat with any member (a wrong key, image or version, a node id
/// collision) ends the standby.
fn standby_may_retry(e: &TcpError) -> bool {
    matches!(
        e,
        TcpError::Io { .. }
            | TcpError::Timeout(_)
            | TcpError::GaveUp(_)
            | TcpError::PeerGone(_)
            | TcpError::PeerClosed
            | TcpError::PairMismatch { .. }
            | TcpError::BackupTaken { .. }
    )
}

/// The rest of [`run`], on the loaded guest.
fn run_on<M: Guest>(args: &NodeArgs, me: u64, cfg: Config, mut machine: M) -> Result<i32> {
    // Both sides must start from the same state; the log channel's handshake compares
    // this digest and refuses a peer with another image (or another backend).
    let image = identity_digest(
        machine
            .digest()
            .map_err(|e| NodeError::Image(format!("digest of the loaded machine: {e}")))?,
        args.disk.is_some(),
    ) ^ args.backend.identity();

    let timeout = Duration::from_millis(args.arbiter_timeout_ms.max(1));
    let etcd = match ft_transport::arbiter::parse_etcd_spec(&args.arbiter, timeout) {
        Some(e) => Some(e?.with_offer_ttl(Duration::from_millis(args.lease_ms))),
        None => None,
    };
    let arbiter: Arc<dyn Arbiter> = match &etcd {
        Some(e) => Arc::new(e.clone()),
        None => ft_transport::arbiter::parse_spec(&args.arbiter, timeout)?,
    };
    arbiter.check().map_err(args.arbiter_error())?;
    // A standby's registration (and its pick) lives as long as the process.
    let (
        Plan {
            role,
            pair,
            peer,
            rejoined,
        },
        mut standby,
    ) = match (&etcd, args.role) {
        (Some(etcd), RoleArg::Standby) => {
            let (plan, standby) = wait_as_standby(etcd, args, NodeId(me))?;
            (plan, Some(standby))
        }
        // Invariant: check_combination refused a standby without an etcd arbiter.
        (None, RoleArg::Standby) => {
            return Err(NodeError::Usage("a standby needs an etcd arbiter".into()))
        }
        _ => (plan(&*arbiter, args, NodeId(me))?, None),
    };
    let side = side_of(role);
    let log = Log::new(side);
    if let Some(why) = &rejoined {
        log.line(format_args!("{why}"));
    }
    let cfg = Config { pair, ..cfg };
    let disk = open_disk(args)?;
    check_disk(&disk, &*arbiter, args)?;
    log.line(format_args!(
        "ft-node {side} (node {me}) protecting vm {} generation {}; heartbeat {} ms, timeout {} ms; arbiter {}; disk {}",
        args.vm,
        pair.generation,
        args.heartbeat_ms,
        args.timeout_ms,
        args.arbiter,
        args.disk
            .as_ref()
            .map_or_else(|| "private, in memory".to_string(), |p| format!("shared file {}", p.display()))
    ));

    let mut link_opts = LinkOptions {
        pair,
        node: NodeId(me),
        image,
        key_file: args.key_file.clone(),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
    };
    // A primary binds what it needs before its bridge says it serves: the log
    // channel's listener (or, alone, checks the address its first clone offer will
    // use), so that a taken address or a bad key file ends it before that line.
    let listener = match role {
        RoleArg::Primary if args.alone => {
            link::check_listen(args.listen.as_deref().unwrap_or_default(), &link_opts)?;
            None
        }
        RoleArg::Primary => {
            let addr = args
                .listen
                .as_deref()
                .ok_or_else(|| NodeError::Usage("a primary needs --listen ADDR".into()))?;
            Some(link::listen(addr, &link_opts)?)
        }
        RoleArg::Backup | RoleArg::Join | RoleArg::Standby => None,
    };

    // The service address belongs to the primary until a backup announces itself.
    let network = Network::new("primary");
    let bridge = Bridge::bind(&args.client_listen, network.clone(), side, me, log.clone())?;
    log.line(format_args!(
        "clients: {} ({})",
        bridge.local_addr(),
        if bridge.serving() {
            "serving"
        } else {
            "not serving until live"
        }
    ));

    let opened = match (role, listener) {
        // Alone (any other primary has its listener): no link yet, it is offered on
        // --listen once the node runs (the key file and the address were checked
        // above).
        (RoleArg::Primary, None) => {
            log.line(format_args!(
                "log channel: none yet; starting alone, a live clone will be offered on {}",
                args.listen.as_deref().unwrap_or_default()
            ));
            None
        }
        (RoleArg::Primary, Some(listener)) => {
            // A primary restarted before its backup timed it out finds no claim, and
            // waits here while the backup goes live: it asks the arbiter as it waits.
            let mut watch = SupersededWatch::new(&*arbiter, pair, NodeId(me));
            let every = Duration::from_millis(args.timeout_ms.clamp(20, 500));
            match link::accept_watching(listener, &log, every, || watch.poll()) {
                Ok(o) => Some(o),
                // A new pair replaced this one: nothing to rejoin, the run is over.
                Err(link::LinkError::Superseded(why)) if watch.replaced => {
                    return Err(NodeError::Replaced { why });
                }
                Err(link::LinkError::Superseded(why)) => {
                    log.line(format_args!("{why}"));
                    return Err(NodeError::SupersededWhileWaiting { why });
                }
                Err(e) => return Err(e.into()),
            }
        }
        // A standby's plan is a joiner's.
        (RoleArg::Backup | RoleArg::Join | RoleArg::Standby, _) => {
            let mut addr =
                peer.ok_or_else(|| NodeError::Usage(format!("a {side} needs --peer ADDR")))?;
            loop {
                let opened = open_backup(&*arbiter, args, role, me, &addr, &mut link_opts, &log);
                match (opened, &etcd) {
                    (Ok(o), _) => break Some(o),
                    // A standby picked for a member it cannot clone from (it died
                    // after its offer, or moved on to a newer generation) is still a
                    // standby: it registers again and waits for the next pick.
                    (Err(NodeError::Link(link::LinkError::Tcp(e))), Some(etcd))
                        if args.role == RoleArg::Standby && standby_may_retry(&e) =>
                    {
                        log.line(format_args!(
                            "the picked member at {addr} could not be cloned from ({e}); registering as a standby again in {} ms (--lease-ms: a dead member's offer goes with its lease)",
                            args.lease_ms
                        ));
                        drop(standby.take());
                        std::thread::sleep(Duration::from_millis(args.lease_ms));
                        let (plan, again) = wait_as_standby(etcd, args, NodeId(me))?;
                        standby = Some(again);
                        link_opts.pair = plan.pair;
                        addr = plan.peer.unwrap_or_default();
                    }
                    (Err(e), _) => return Err(e),
                }
            }
        }
    };
    // A backup that took its primary's reservation may have found a newer one.
    let pair = link_opts.pair;
    let cfg = Config { pair, ..cfg };
    let handle = opened.as_ref().map(|o| o.handle.clone());
    if let Some(h) = &handle {
        watch_link(h.clone(), log.clone());
    }
    let link = opened.map(|o| o.link);
    let epoch = Instant::now();
    let unix_at_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let seed = args.seed.unwrap_or(unix_at_epoch % 1_000_000_007);
    let world = SimWorld::new(
        side,
        SimWorldConfig {
            seed,
            // The guest's wall clock is the host's: continuous across a failover.
            clock_base: unix_at_epoch,
            ..SimWorldConfig::default()
        },
        disk,
        OutputSink::new(),
        role == RoleArg::Primary,
    )
    .with_network(network);
    let world = BridgeWorld::new(world, bridge.clone(), log.clone());
    let source = TappedMachine::new(machine, bridge.clone());
    let rcfg = RuntimeConfig {
        disconnect_is_failure: args.disconnect_is_failure,
        ..RuntimeConfig::default()
    };
    let every = Duration::from_millis(args.progress_ms);
    let offer = args.offers_clone();
    log.line(match role {
        RoleArg::Primary if args.alone => {
            "running: asking the arbiter for the generation, then alone (unprotected) until a backup joins"
        }
        RoleArg::Primary => "running: recording and shipping the log",
        RoleArg::Backup => "running: replaying the log",
        RoleArg::Join | RoleArg::Standby => {
            "running: receiving a live clone, then replaying the log"
        }
    });
    // A node that offers clones stops its run when it becomes the live member alone,
    // and goes on in `serve_and_clone`.
    let control = Control::new();
    let on_notice = stop_on(&log, &control, move |n| {
        offer && matches!(n, Notice::WentAlone { .. } | Notice::WentLive { .. })
    });
    let env = Env {
        args,
        log: &log,
        arbiter: &arbiter,
        epoch,
        rcfg: rcfg.clone(),
        me: NodeId(me),
        image,
    };
    let (exit, stats, errors, (token, fenced)) = match (role, link) {
        (RoleArg::Primary, None) => {
            let node = Node::alone(cfg, source, world, nanos_since(epoch));
            let r = ft_transport::run(
                node,
                NoLink,
                arbiter.clone(),
                epoch,
                rcfg,
                control,
                on_notice,
            );
            env.go_on(r.node, r.exit, r.errors)
        }
        (RoleArg::Primary, Some(link)) => {
            let node = Node::primary(cfg, source, world, nanos_since(epoch));
            let chan = PrimaryProgress::new(PrimaryEnd::new(link), log.clone(), every);
            let r = run_primary(node, chan, arbiter.clone(), epoch, rcfg, control, on_notice);
            // The first link goes before anything else listens on its address.
            drop(r.channel);
            env.go_on(r.node, r.exit, r.errors)
        }
        (RoleArg::Backup, Some(link)) => {
            let node = Node::backup(cfg, source, world, nanos_since(epoch));
            let chan = BackupProgress::new(BackupEnd::new(link), log.clone(), every);
            let r = run_backup(node, chan, arbiter.clone(), epoch, rcfg, control, on_notice);
            // The first link goes before anything else listens on its address.
            drop(r.channel);
            env.go_on(r.node, r.exit, r.errors)
        }
        (RoleArg::Join | RoleArg::Standby, Some(link)) => {
            let node = Node::clone_target(cfg, source, world, nanos_since(epoch));
            let r = ft_transport::run(
                node,
                BackupEnd::new(link),
                arbiter.clone(),
                epoch,
                rcfg,
                control,
                on_notice,
            );
            // The first link goes before anything else listens on its address.
            drop(r.channel);
            env.go_on(r.node, r.exit, r.errors)
        }
        (RoleArg::Backup | RoleArg::Join | RoleArg::Standby, None) => {
            // Invariant: a backup's or joiner's link was opened above, or run
            // returned with its error.
            return Err(NodeError::Usage(format!("a {side} needs --peer ADDR")));
        }
    };
    for e in &errors {
        log.line(format_args!("runtime: {e}"));
    }
    log.line(format_args!(
        "stats: {} records, {} replayed, {} outputs, {} released, {} digests checked, {} retried requests dropped",
        stats.records,
        stats.replayed,
        stats.outputs,
        stats.released,
        stats.digests_checked,
        bridge.retries_dropped()
    ));
    log.line(format_args!(
        "disk: fencing token {token}, {fenced} writes fenced off (a newer token had written)"
    ));
    let t = handle.map(|h| h.stats()).unwrap_or_default();
    log.line(format_args!(
        "log channel: {} connections ({} reconnects), {} refused ({} failed authentication), {} frames rejected, {} frames sent ({} resent), {} received",
        t.connections,
        t.reconnects,
        t.refused,
        t.auth_failures,
        t.mac_failures + t.stream_errors,
        t.frames_sent,
        t.frames_resent,
        t.frames_received
    ));
    let code = match exit {
        Exit::Finished(0) => EXIT_DONE,
        Exit::Finished(c) => {
            log.line(format_args!("guest ended with code {c}"));
            EXIT_GUEST_ERROR
        }
        Exit::Halted(HaltReason::LostArbitration { winner }) => {
            log.line(format_args!("HALTED: node {} is live", winner.0));
            EXIT_LOST
        }
        Exit::Halted(reason) => {
            log.line(format_args!("HALTED: {reason:?}"));
            EXIT_FAILED
        }
        Exit::Crashed | Exit::Stopped => EXIT_FAILED,
    };
    bridge.finish(Duration::from_secs(2));
    log.line(format_args!("exit {code}"));
    Ok(code)
}
