//! A log channel over TCP, authenticated with a pre-shared key, that survives a lost
//! connection without losing or duplicating records.
//!
//! [`TcpLink`] is a [`FrameLink`](crate::FrameLink), so [`TcpPrimaryEnd`] (a
//! [`PrimaryEnd`]) and [`TcpBackupEnd`] (a [`BackupEnd`]) are the engine's
//! [`LogChannel`](ft_core::LogChannel) and [`LogReceiver`](ft_core::LogReceiver), and
//! the fault injector can wrap it. The backup connects ([`TcpLink::connect`]); the
//! primary listens ([`PrimaryListener::bind`], then [`PrimaryListener::accept`]).
//!
//! ```
//! use std::time::Duration;
//! use ft_core::{Ack, Event, ExecPoint, LogChannel, LogReceiver, NodeId, PairId, Record};
//! use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpLink};
//! use ft_transport::{BackupEnd, PrimaryEnd};
//!
//! let key = PreSharedKey::new(*b"a key both hosts were given, 32b").unwrap();
//! let pair = PairId { vm: 1, generation: 1 };
//! // Each end has its own node id; both start from the same guest image.
//! let pcfg = TcpConfig { image: 0x5eed, ..TcpConfig::new(key.clone(), pair, NodeId(1)) };
//! let bcfg = TcpConfig { image: 0x5eed, ..TcpConfig::new(key, pair, NodeId(2)) };
//! let mut listener = PrimaryListener::bind("127.0.0.1:0", pcfg).unwrap();
//! let addr = listener.local_addr();
//! let backup = std::thread::spawn(move || TcpLink::connect(addr, bcfg, Duration::from_secs(5)));
//! let mut primary = PrimaryEnd::new(listener.accept(Some(Duration::from_secs(5))).unwrap());
//! let mut backup = BackupEnd::new(backup.join().unwrap().unwrap());
//!
//! let batch = vec![Record { seq: 1, point: ExecPoint::at(5), event: Event::Digest { value: 1 } }];
//! primary.send_records(&batch).unwrap();
//! let got = loop {
//!     if let Some(b) = backup.try_recv_records().unwrap() { break b; }
//!     std::thread::sleep(Duration::from_millis(1));
//! };
//! assert_eq!(got, batch);
//! backup.send_ack(Ack { received: 1, replayed: 0 }).unwrap();
//! ```
//!
//! # Threads and queues
//!
//! The engine's runtime calls [`FrameLink::try_send_frame`](crate::FrameLink) and
//! `try_recv_frame` from its loop, so neither ever blocks. Each connection has a reader
//! thread (authenticates frames into a bounded queue of
//! [`TcpConfig::recv_queue_frames`]; when that is full it stops reading, and TCP
//! pushes back on the sender) and a writer thread (drains the send queue into a
//! `BufWriter` and flushes when the queue is empty: under load many frames share a
//! `write` syscall, and a lone frame, such as the one holding an output's record, leaves
//! at once). A send is refused with [`ChannelError::Full`] when the send queue holds
//! [`TcpConfig::send_queue_frames`] frames or [`TcpConfig::send_queue_bytes`] bytes.
//! A supervisor thread (the backup's connector, the primary's acceptor) replaces a lost
//! connection.
//!
//! # Wire format
//!
//! All integers little-endian. The backup's hello ([`CLIENT_HELLO_LEN`] bytes): magic
//! [`MAGIC`] (`FTTC`), protocol version ([`PROTOCOL_VERSION`], u16), role (u8, 2 =
//! backup), its [`Identity`] (pair vm, pair generation, node id, guest image digest;
//! u64 each), a 32-byte nonce, and the next record sequence number it expects (u64).
//! The primary answers with either a refusal ([`REFUSAL_LEN`] bytes: magic, its
//! version, a nonzero status: 1 version, 2 role, 3 pair, 4 the backup has the
//! primary's node id, 5 another guest image) and closes, or its hello
//! ([`SERVER_HELLO_LEN`] bytes: magic, version, status 0, role 1, its identity, its own
//! 32-byte nonce, and a 32-byte tag). The backup checks the primary's identity the
//! same way, then sends its own 32-byte tag ([`CONFIRM_LEN`]).
//!
//! After that every message is a frame: payload length (u32), kind (u8: 1 data = one
//! encoded [`ft_core::log_codec`] frame, 2 resume, 3 resume refused, 4 goodbye), the
//! payload, and a 32-byte tag ([`FRAME_HEADER_LEN`] + payload + [`TAG_LEN`]). A length
//! above [`TcpConfig::max_frame`] (data) or 64 bytes (control) is refused before any
//! allocation, and the payload buffer only grows as bytes actually arrive. The
//! primary's first frame answers the hello's sequence number: resume from it (u64), or
//! refuse (requested, oldest held, next; u64 each).
//!
//! # Authentication, and why old frames cannot be replayed
//!
//! Both sides hold the same pre-shared key ([`PreSharedKey`], configured bytes or a
//! file). Each connection derives its own session key
//! `K = HMAC-SHA256(psk, "ft-tcp/1 session key" || SHA-256(backup hello || primary
//! hello))`: the transcript holds both sides' fresh 32-byte nonces from the operating
//! system, the role, pair and generation, and the requested sequence number. The
//! primary proves it holds the key with `HMAC(K, "primary finished")`, the backup with
//! `HMAC(K, "backup finished")` (distinct labels, so neither tag can be reflected back as
//! the other). A peer without the key cannot produce either tag: the connection is
//! refused, logged (on stderr), counted in [`TcpStats`] and closed before any frame is
//! sent or read, so nothing it says reaches the replayer. A peer that does not even
//! speak the protocol (wrong magic, wrong version, wrong pair, silence) is refused and
//! counted the same way.
//!
//! Every frame then carries `HMAC(K, direction || counter || kind || length ||
//! payload)`, where `counter` counts the frames of that direction on that connection
//! from 0, and the receiver checks it against its own count; tags are compared in
//! constant time. A frame whose tag fails is rejected, the connection is dropped and
//! counted ([`TcpStats::mac_failures`]), and a new one is made (its records are resent).
//! Replay is excluded at both scales:
//!
//! * **Across connections:** each connection's key depends on two nonces that neither
//!   an attacker nor an old recording controls: a frame recorded on an earlier
//!   connection (or a whole recorded handshake) is authenticated under a different key
//!   and fails, even if it is injected at the right position.
//! * **Within a connection:** the counter inside the MAC makes each tag valid only at
//!   one position in one direction, so a frame cannot be replayed, reordered, dropped
//!   without detection, or reflected back to its sender.
//!
//! The log's own header, length and CRC-32 (checked by the channel ends) come on top:
//! they catch bugs, the MAC catches attackers. The payload is not encrypted: the log is
//! authentic, not secret.
//!
//! # Reconnect and resume
//!
//! The primary's link keeps every records frame it sent until an ack covering it
//! passes through (it decodes the ack frames it delivers). When the connection drops,
//! the backup reconnects, retrying with exponential backoff from
//! [`TcpConfig::retry_min`] to [`TcpConfig::retry_max`], and its hello carries the next
//! sequence number it needs (one past the last record its link took in). The primary
//! resends its kept frames from the one holding that record; the overlap with what the
//! backup already has is dropped by the engine ([`ft_core::Node::handle_records`] skips
//! records already received), and no gap can open, because the primary refuses instead
//! of skipping: a request for a record it no longer holds, or one beyond what it
//! produced, gets [`TcpError::ResumeRefused`] (sent to the backup as a typed refusal,
//! which its [`TcpLink::connect`] returns, or [`TcpLink::fatal_error`] reports later).
//! Such a backup must be re-cloned. The last ack is resent on the new connection.
//!
//! While a lost connection is being replaced the link looks slow, not dead: sends are
//! queued (the primary's kept frames go out again anyway), receives find nothing. If no
//! new connection is authenticated within [`TcpConfig::reconnect_grace`], the link
//! reports [`ChannelError::Disconnected`] for good; it does so at once when the peer said
//! goodbye (its link was dropped) or, on the backup with
//! [`TcpConfig::refused_means_gone`], when the primary's port refuses connections (its
//! process is gone). The engine's failure detector keeps its own timeout: log and ack
//! traffic are its proof of life, so a grace shorter than the engine's peer timeout
//! lets short outages pass unnoticed, and a zero grace makes every lost connection a
//! failure.
//!
//! [`ChannelError::Full`]: ft_core::ChannelError::Full
//! [`ChannelError::Disconnected`]: ft_core::ChannelError::Disconnected

#[doc(hidden)]
pub mod fuzzing;
mod link;
mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ft_core::{log_codec, NodeId, PairId, Role};

use crate::frame::{BackupEnd, PrimaryEnd};

pub use link::{PrimaryListener, TcpHandle, TcpLink};
pub use wire::{
    Identity, CLIENT_HELLO_LEN, CONFIRM_LEN, FRAME_HEADER_LEN, MAGIC, NONCE_LEN, PROTOCOL_VERSION,
    REFUSAL_LEN, SERVER_HELLO_LEN, TAG_LEN,
};

/// The primary's end of a TCP log channel.
pub type TcpPrimaryEnd = PrimaryEnd<TcpLink>;

/// The backup's end of a TCP log channel.
pub type TcpBackupEnd = BackupEnd<TcpLink>;

/// Errors of the TCP log channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// A socket operation failed.
    #[error("{context}: {message} ({kind:?})")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
        /// The I/O error.
        message: String,
    },
    /// The configuration is not usable.
    #[error("bad TCP channel configuration: {0}")]
    Config(String),
    /// The pre-shared key is too short to be a key.
    #[error("pre-shared key of {len} bytes is too short (at least {min} bytes)")]
    KeyTooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// The key file could not be read.
    #[error("cannot read key file {path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The MAC could not be keyed (never happens with HMAC).
    #[error("crypto: {0}")]
    Crypto(String),
    /// The operating system gave no random bytes for a nonce.
    #[error("no OS randomness for a nonce: {0}")]
    Random(String),
    /// Something took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer does not speak this protocol at all.
    #[error("foreign connection: {0}")]
    Foreign(String),
    /// The peer's first bytes are not this protocol's magic.
    #[error("not an ft log-channel peer: bad protocol magic {found:02x?} (expected \"FTTC\")")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The peer speaks another version of the protocol.
    #[error(
        "protocol version mismatch: this end speaks version {ours}, the peer version {theirs}"
    )]
    VersionMismatch {
        /// This build's version.
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer has the wrong role (a backup connecting to a backup...).
    #[error("the peer is not a {expected:?} (role byte {found})")]
    WrongRole {
        /// The role the peer should have.
        expected: Role,
        /// The role byte it sent (this side's own role when the peer refused us for it).
        found: u8,
    },
    /// The peer protects another VM, or another pairing generation.
    #[error("the peer belongs to another pair: ours is {ours}, theirs {}", theirs.map_or_else(|| "not given".to_string(), |p| p.to_string()))]
    PairMismatch {
        /// This side's pair.
        ours: PairId,
        /// The peer's, when it said (a primary refusing us does not).
        theirs: Option<PairId>,
    },
    /// The peer has this side's node id: the two members of a pair must be distinct
    /// (two sides with one id would both win the arbiter's claim for it).
    #[error("node id collision: the peer is node {} too; each side of a pair needs its own --node-id", node.0)]
    NodeCollision {
        /// The id both claim.
        node: NodeId,
    },
    /// The peer starts from another guest image or initial state: it could never
    /// replay this side's log.
    #[error("guest image mismatch: this side's image digest is {ours:#018x}, the peer's {}", theirs.map_or_else(|| "differs (it refused ours)".to_string(), |t| format!("{t:#018x}")))]
    ImageMismatch {
        /// This side's image digest.
        ours: u64,
        /// The peer's, when it said (a primary refusing us does not).
        theirs: Option<u64>,
    },
    /// The primary's link already serves another backup of this pair generation; a
    /// second one is refused (it would replace the first one's connection and take
    /// its log stream).
    #[error("the primary already has a backup in this generation (node {}){}; a second backup is refused", backup.0, refused.map_or_else(String::new, |n| format!(", refused node {}", n.0)))]
    BackupTaken {
        /// The backup the link serves.
        backup: NodeId,
        /// The node refused (known to the primary only).
        refused: Option<NodeId>,
    },
    /// The primary refused the hello with a status this build does not know.
    #[error("the primary refused the connection (status {0})")]
    Refused(u8),
    /// The peer does not hold the pre-shared key.
    #[error("peer authentication failed: the peer does not hold the pre-shared key")]
    AuthFailed,
    /// A frame's MAC is wrong: tampered, replayed, reordered or injected.
    #[error("frame {counter} of the connection failed authentication (tampered, replayed or injected); connection dropped")]
    BadMac {
        /// Its position in its direction on the connection.
        counter: u64,
    },
    /// A frame's length prefix exceeds the limit; nothing was allocated for it.
    #[error("frame length {len} exceeds the limit of {max} bytes; connection dropped")]
    FrameTooLarge {
        /// The claimed length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {have} of {needed} bytes")]
    Truncated {
        /// Bytes of the whole frame.
        needed: usize,
        /// Bytes received.
        have: usize,
    },
    /// A frame kind this build does not know.
    #[error("unknown stream frame kind {0}; connection dropped")]
    UnknownFrameKind(u8),
    /// A frame that is valid but out of place.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The primary no longer holds (or never produced) the record the backup asked to
    /// resume from. The backup must be re-cloned.
    #[error("resume refused: the backup asked for record {requested}, but the primary holds only records {oldest_held}..{next} (end exclusive); the backup must be re-cloned")]
    ResumeRefused {
        /// The record asked for.
        requested: u64,
        /// The oldest record the primary still holds (`== next` when it holds none).
        oldest_held: u64,
        /// The record the primary will produce next.
        next: u64,
    },
    /// The peer closed the channel for good (its link was dropped).
    #[error("the peer closed the log channel")]
    PeerClosed,
    /// The primary's port refuses connections: its process is gone.
    #[error("the peer is gone: {0}")]
    PeerGone(String),
    /// No connection could be re-established within the grace period.
    #[error("no connection re-established within {0:?}")]
    GaveUp(Duration),
    /// This end was closed, or the listener already handed its link over.
    #[error("the link is closed")]
    Closed,
}

impl TcpError {
    /// Whether retrying the same connection cannot help (the peer is not ours, or it
    /// refused us for good).
    fn is_final(&self) -> bool {
        matches!(
            self,
            TcpError::BadMagic { .. }
                | TcpError::VersionMismatch { .. }
                | TcpError::WrongRole { .. }
                | TcpError::PairMismatch { .. }
                | TcpError::NodeCollision { .. }
                | TcpError::ImageMismatch { .. }
                | TcpError::BackupTaken { .. }
                | TcpError::Refused(_)
                | TcpError::AuthFailed
                | TcpError::ResumeRefused { .. }
                | TcpError::Config(_)
                | TcpError::Crypto(_)
                | TcpError::Random(_)
        )
    }
}

/// Result alias of this module.
pub type Result<T, E = TcpError> = std::result::Result<T, E>;

/// The key both ends share. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct PreSharedKey(Arc<[u8]>);

impl PreSharedKey {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from bytes (at least [`PreSharedKey::MIN_LEN`] of them).
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<PreSharedKey> {
        let b = bytes.as_ref();
        if b.len() < Self::MIN_LEN {
            return Err(TcpError::KeyTooShort {
                len: b.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(PreSharedKey(Arc::from(b)))
    }

    /// A key read from a file: its bytes, without trailing ASCII whitespace (so a file
    /// written by `openssl rand -hex 32 > key` works as is, its 64 hex characters being
    /// the key).
    pub fn from_file(path: impl AsRef<Path>) -> Result<PreSharedKey> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| TcpError::KeyFile {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::new(&bytes[..end])
    }

    /// A fresh random 32-byte key (for tests and demos; real pairs share a configured
    /// one).
    pub fn random() -> Result<PreSharedKey> {
        Self::new(wire::nonce()?)
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a key has at least [`PreSharedKey::MIN_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreSharedKey(<{} bytes, redacted>)", self.0.len())
    }
}

/// How a TCP log channel behaves. [`TcpConfig::new`] gives defaults for a LAN.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The key both ends share.
    pub key: PreSharedKey,
    /// The protected pair and its generation; a peer of another pair is refused.
    pub pair: PairId,
    /// This end's node id (the engine's [`ft_core::Config::node`]); a peer with the
    /// same id is refused.
    pub node: NodeId,
    /// A digest of the guest image or initial state this side starts from (for
    /// instance [`ft_core::EventSource::digest`] of the fresh machine); a peer with
    /// another is refused. Default 0: set it, so that mismatched images are caught at
    /// the handshake rather than as a replay divergence.
    pub image: u64,
    /// Longest wait for one TCP connect (default 1 s).
    pub connect_timeout: Duration,
    /// Longest wait for each handshake message (default 1 s).
    pub handshake_timeout: Duration,
    /// First delay between connect attempts (default 2 ms); doubles per failure.
    pub retry_min: Duration,
    /// Longest delay between connect attempts (default 200 ms).
    pub retry_max: Duration,
    /// How long a lost connection may take to be replaced before the link reports
    /// [`ft_core::ChannelError::Disconnected`] (default 50 ms, half the engine's
    /// default peer timeout). Zero: at once.
    pub reconnect_grace: Duration,
    /// Backup: a refused reconnect (nothing listens on the primary's port any more)
    /// means the primary's process is gone, so the link reports it at once instead of
    /// waiting out the grace (default true).
    pub refused_means_gone: bool,
    /// Most frames waiting in the send queue (the primary's include those sent but not
    /// acknowledged yet) before sends are refused with [`ft_core::ChannelError::Full`]
    /// (default 1024).
    pub send_queue_frames: usize,
    /// Most bytes in the send queue (default 64 MiB); a single larger frame is still
    /// taken when the queue is empty.
    pub send_queue_bytes: usize,
    /// Frames received but not yet taken before the reader stops reading (default
    /// 1024).
    pub recv_queue_frames: usize,
    /// Largest data frame, in bytes (default: the log codec's limit, 16 MiB of payload
    /// plus its header). A longer length prefix is refused before any allocation.
    pub max_frame: usize,
    /// The writer's buffer, in bytes (default 64 KiB).
    pub write_buffer: usize,
    /// Report refusals, failures and reconnects as `tracing` events (target
    /// `ft_transport::tcp`, level INFO; default true). The library never prints:
    /// the embedder's subscriber decides where they go.
    pub log: bool,
}

impl TcpConfig {
    /// LAN defaults for node `node` of `pair`, with `key`.
    pub fn new(key: PreSharedKey, pair: PairId, node: NodeId) -> TcpConfig {
        TcpConfig {
            key,
            pair,
            node,
            image: 0,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            retry_min: Duration::from_millis(2),
            retry_max: Duration::from_millis(200),
            reconnect_grace: Duration::from_millis(50),
            refused_means_gone: true,
            send_queue_frames: 1024,
            send_queue_bytes: 64 << 20,
            recv_queue_frames: 1024,
            max_frame: log_codec::HEADER_LEN + log_codec::DEFAULT_MAX_PAYLOAD,
            write_buffer: 64 << 10,
            log: true,
        }
    }

    /// The identity the handshake presents and checks the peer's against.
    pub fn identity(&self) -> Identity {
        Identity {
            pair: self.pair,
            node: self.node,
            image: self.image,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TcpError::Config(m.into()));
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return bad("connect and handshake timeouts must be positive");
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return bad("retry_min must be positive and at most retry_max");
        }
        if self.send_queue_frames == 0 || self.recv_queue_frames == 0 {
            return bad("queues must hold at least one frame");
        }
        if self.max_frame <= log_codec::HEADER_LEN || self.max_frame > u32::MAX as usize {
            return bad("max_frame must exceed a log frame header and fit in 32 bits");
        }
        Ok(())
    }
}

/// Counters of one TCP link (or listener), for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Authenticated connections established (the first one and every replacement).
    pub connections: u64,
    /// Replacements of a lost connection.
    pub reconnects: u64,
    /// Established connections lost (dropped, reset, rejected frame).
    pub disconnects: u64,
    /// Connections refused during the handshake, whatever the reason (the next
    /// counters break it down; a resume refusal counts here too).
    pub refused: u64,
    /// Peers that failed authentication (wrong key).
    pub auth_failures: u64,
    /// Peers that do not speak the protocol (bad magic, garbage, silence).
    pub foreign: u64,
    /// Peers that speak another protocol version.
    pub version_mismatches: u64,
    /// Peers with the wrong role, VM or generation.
    pub peer_mismatches: u64,
    /// Resume requests refused (primary), or refusals received (backup).
    pub resume_refused: u64,
    /// Frames whose MAC failed (tampered, replayed, injected).
    pub mac_failures: u64,
    /// Malformed frames: oversized length prefix, truncated, unknown kind.
    pub stream_errors: u64,
    /// Data frames written to a socket (resent ones included).
    pub frames_sent: u64,
    /// Data frames sent again after a reconnect.
    pub frames_resent: u64,
    /// Data frames received and authenticated.
    pub frames_received: u64,
    /// Bytes written to sockets after the handshake (headers and tags included).
    pub bytes_sent: u64,
    /// Bytes of authenticated frames received (headers and tags included).
    pub bytes_received: u64,
    /// Buffer flushes (`write` calls issued by the writer when its queue ran empty).
    pub flushes: u64,
}
