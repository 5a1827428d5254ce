//! The link itself: connections, their reader and writer threads, the send queue that
//! doubles as the primary's resend buffer, and the supervisors that replace a lost
//! connection.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use ft_core::resend_queue::{QueueSide, ResendError, ResendQueue};
use ft_core::{ChannelError, NodeId, Role};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::wire::{
    self, io_err, ReadError, Session, DIR_TO_BACKUP, DIR_TO_PRIMARY, FRAME_HEADER_LEN, KIND_BYE,
    KIND_DATA, KIND_REFUSED, KIND_RESUME, KIND_TAKEN, MAX_CONTROL_PAYLOAD, TAG_LEN,
};
use super::{Result, TcpConfig, TcpError, TcpStats};
use crate::frame::FrameLink;

/// Most frames the writer takes from the queue at once.
const WRITE_BATCH: usize = 64;
/// How often blocked threads look at their connection's state.
const POLL: Duration = Duration::from_millis(20);
/// Longest wait of a graceful close for the goodbye frame to leave.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
    refused: AtomicU64,
    auth_failures: AtomicU64,
    foreign: AtomicU64,
    version_mismatches: AtomicU64,
    peer_mismatches: AtomicU64,
    resume_refused: AtomicU64,
    mac_failures: AtomicU64,
    stream_errors: AtomicU64,
    frames_sent: AtomicU64,
    frames_resent: AtomicU64,
    frames_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    flushes: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TcpStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TcpStats {
            connections: l(&self.connections),
            reconnects: l(&self.reconnects),
            disconnects: l(&self.disconnects),
            refused: l(&self.refused),
            auth_failures: l(&self.auth_failures),
            foreign: l(&self.foreign),
            version_mismatches: l(&self.version_mismatches),
            peer_mismatches: l(&self.peer_mismatches),
            resume_refused: l(&self.resume_refused),
            mac_failures: l(&self.mac_failures),
            stream_errors: l(&self.stream_errors),
            frames_sent: l(&self.frames_sent),
            frames_resent: l(&self.frames_resent),
            frames_received: l(&self.frames_received),
            bytes_sent: l(&self.bytes_sent),
            bytes_received: l(&self.bytes_received),
            flushes: l(&self.flushes),
        }
    }

    /// A handshake that did not produce a connection.
    fn refusal(&self, e: &TcpError) {
        bump(&self.refused);
        match e {
            TcpError::AuthFailed => bump(&self.auth_failures),
            TcpError::Foreign(_) | TcpError::BadMagic { .. } => bump(&self.foreign),
            TcpError::VersionMismatch { .. } => bump(&self.version_mismatches),
            TcpError::WrongRole { .. }
            | TcpError::PairMismatch { .. }
            | TcpError::NodeCollision { .. }
            | TcpError::ImageMismatch { .. }
            | TcpError::BackupTaken { .. }
            | TcpError::Refused(_) => bump(&self.peer_mismatches),
            TcpError::ResumeRefused { .. } => bump(&self.resume_refused),
            _ => {}
        }
    }

    /// A frame rejected on an established connection.
    fn stream_error(&self, e: &TcpError) {
        match e {
            TcpError::BadMac { .. } => bump(&self.mac_failures),
            TcpError::FrameTooLarge { .. }
            | TcpError::Truncated { .. }
            | TcpError::UnknownFrameKind(_)
            | TcpError::Protocol(_) => bump(&self.stream_errors),
            _ => {}
        }
    }
}

/// One authenticated TCP connection.
#[derive(Debug)]
struct Conn {
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    alive: AtomicBool,
}

impl Conn {
    /// Mark dead and shut the socket (which wakes its reader and writer); whether this
    /// call did it.
    fn kill(&self) -> bool {
        let was = self.alive.swap(false, Ordering::SeqCst);
        if was {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        was
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// The send queue ([`ResendQueue`]: on the primary it keeps written records frames
/// until an ack covers them, to resend them after a reconnect), and which
/// connection's writer may take from it.
#[derive(Debug)]
struct Outbox {
    /// The connection whose writer may take frames (0: none).
    conn: u64,
    queue: ResendQueue,
    /// Say goodbye once the queue is empty.
    closing: bool,
}

/// Connection state shared by the link, its threads and its handles.
#[derive(Debug, Default)]
struct State {
    conn: Option<Arc<Conn>>,
    next_id: u64,
    /// When the current connection was lost (None while connected).
    down_since: Option<Instant>,
    /// Why the link gave up for good.
    fatal: Option<TcpError>,
    /// The most recent connection or frame error.
    last_error: Option<TcpError>,
    /// Backup: the current connection's reader, joined before a reconnect.
    reader: Option<JoinHandle<()>>,
    established: bool,
    /// Primary: the backup this link serves, from its first connection on. A
    /// reconnect must come from the same node.
    backup: Option<NodeId>,
}

#[derive(Debug)]
struct Shared {
    role: Role,
    cfg: TcpConfig,
    counters: Counters,
    state: Mutex<State>,
    state_cv: Condvar,
    out: Mutex<Outbox>,
    out_cv: Condvar,
    closing: AtomicBool,
    inbound: Sender<Bytes>,
    /// Primary: where a connection wakes the acceptor.
    wake: Option<SocketAddr>,
}

fn channel_error(e: &TcpError) -> ChannelError {
    match e {
        TcpError::GaveUp(_) | TcpError::PeerGone(_) | TcpError::PeerClosed | TcpError::Closed => {
            ChannelError::Disconnected
        }
        other => ChannelError::Io(other.to_string()),
    }
}

fn prepare(stream: &TcpStream, timeout: Option<Duration>) -> Result<()> {
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(timeout))
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| io_err("configuring the socket", &e))
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| io_err("spawning a link thread", &e))
}

fn resolve(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| io_err("resolving the address", &e))?
        .next()
        .ok_or_else(|| TcpError::Config("the address resolves to nothing".into()))
}

impl Shared {
    fn new(
        role: Role,
        cfg: TcpConfig,
        wake: Option<SocketAddr>,
        next_seq: u64,
    ) -> (Arc<Shared>, Receiver<Bytes>) {
        let (tx, rx) = crossbeam_channel::bounded(cfg.recv_queue_frames);
        let side = match role {
            Role::Primary => QueueSide::Primary,
            Role::Backup => QueueSide::Backup,
        };
        let mut queue = ResendQueue::new(side, cfg.send_queue_frames, cfg.send_queue_bytes);
        queue.start_at(next_seq);
        let out = Outbox {
            conn: 0,
            queue,
            closing: false,
        };
        let shared = Arc::new(Shared {
            role,
            cfg,
            counters: Counters::default(),
            state: Mutex::new(State::default()),
            state_cv: Condvar::new(),
            out: Mutex::new(out),
            out_cv: Condvar::new(),
            closing: AtomicBool::new(false),
            inbound: tx,
            wake,
        });
        (shared, rx)
    }

    fn log(&self, msg: impl std::fmt::Display) {
        if self.cfg.log {
            let side = match self.role {
                Role::Primary => "primary",
                Role::Backup => "backup",
            };
            tracing::info!(target: "ft_transport::tcp", "{side}: {msg}");
        }
    }

    fn stopped(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.state.lock().fatal.is_some()
    }

    /// `Ok` while the link is up or may still come back; the error to report otherwise.
    fn health(&self) -> std::result::Result<(), ChannelError> {
        let expired = {
            let st = self.state.lock();
            if let Some(f) = &st.fatal {
                return Err(channel_error(f));
            }
            st.down_since
                .is_some_and(|t| t.elapsed() >= self.cfg.reconnect_grace)
        };
        if expired {
            self.give_up(TcpError::GaveUp(self.cfg.reconnect_grace));
            let st = self.state.lock();
            return Err(st
                .fatal
                .as_ref()
                .map_or(ChannelError::Disconnected, channel_error));
        }
        Ok(())
    }

    /// Stop for good: no more connections.
    fn give_up(&self, e: TcpError) {
        let conn = {
            let mut st = self.state.lock();
            if st.fatal.is_some() {
                return;
            }
            self.log(format_args!("giving up the log channel: {e}"));
            st.fatal = Some(e);
            st.down_since = None;
            self.state_cv.notify_all();
            st.conn.clone()
        };
        if let Some(c) = conn {
            c.kill();
        }
        self.out_cv.notify_all();
        self.wake_acceptor();
    }

    /// A connection failed or was dropped: count it, and start the wait for a new one.
    fn conn_lost(&self, conn: &Conn, why: TcpError) {
        if !conn.kill() {
            return;
        }
        let mut st = self.state.lock();
        self.counters.stream_error(&why);
        let current = st.conn.as_ref().is_some_and(|c| c.id == conn.id);
        if current && !self.closing.load(Ordering::SeqCst) && st.fatal.is_none() {
            st.down_since = Some(Instant::now());
            bump(&self.counters.disconnects);
            let next = match self.role {
                Role::Backup => "reconnecting",
                Role::Primary => "waiting for the backup to reconnect",
            };
            self.log(format_args!(
                "connection with {} lost: {why}; {next}",
                conn.peer
            ));
        }
        if !matches!(why, TcpError::Io { .. }) {
            st.last_error = Some(why);
        }
        self.state_cv.notify_all();
        drop(st);
        self.out_cv.notify_all();
    }

    /// Primary: make a connection for the acceptor to take, so it sees the link stop.
    fn wake_acceptor(&self) {
        if let Some(addr) = self.wake {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        }
    }

    fn close(&self, graceful: bool) {
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        let conn = self.state.lock().conn.clone();
        if let Some(c) = conn {
            if graceful && c.is_alive() {
                let deadline = Instant::now() + CLOSE_WAIT;
                let mut out = self.out.lock();
                out.closing = true;
                self.out_cv.notify_all();
                while c.is_alive() && Instant::now() < deadline {
                    self.out_cv.wait_for(&mut out, Duration::from_millis(5));
                }
            }
            c.kill();
        }
        self.state_cv.notify_all();
        self.out_cv.notify_all();
        self.wake_acceptor();
    }

    /// Hand a received frame to the link's queue, waiting while it is full; false if the
    /// connection died (the frame is dropped: it will be asked for again) or the link
    /// was dropped.
    fn deliver(&self, conn: &Conn, frame: Bytes) -> bool {
        let mut f = frame;
        loop {
            match self.inbound.send_timeout(f, POLL) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    if !conn.is_alive() || self.closing.load(Ordering::SeqCst) {
                        return false;
                    }
                    f = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Start the reader and writer of a fresh connection. The caller holds the state
    /// lock and installed `conn`.
    fn start_threads(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: Session,
        read_counter: u64,
        write_counter: u64,
    ) -> Result<JoinHandle<()>> {
        let rs = conn
            .stream
            .try_clone()
            .map_err(|e| io_err("cloning the socket", &e))?;
        let ws = conn
            .stream
            .try_clone()
            .map_err(|e| io_err("cloning the socket", &e))?;
        let (sh, c, s) = (self.clone(), conn.clone(), session.clone());
        let reader = spawn("ft-tcp-reader", move || {
            reader_loop(&sh, &c, rs, &s, read_counter)
        })?;
        let (sh, c) = (self.clone(), conn.clone());
        spawn("ft-tcp-writer", move || {
            writer_loop(&sh, &c, ws, &session, write_counter)
        })?;
        Ok(reader)
    }

    /// Primary: the handshake of an incoming connection, then the resume answer; on
    /// success the connection replaces the current one.
    fn serve(self: &Arc<Self>, mut stream: TcpStream, peer: SocketAddr) -> Result<()> {
        let res = prepare(&stream, Some(self.cfg.handshake_timeout))
            .and_then(|()| {
                wire::server_handshake(&mut stream, self.cfg.key.bytes(), &self.cfg.identity())
            })
            .and_then(|acc| self.install_primary(stream, peer, acc));
        if let Err(e) = &res {
            if *e != TcpError::Closed {
                self.state.lock().last_error = Some(e.clone());
                self.counters.refusal(e);
                self.log(format_args!("refused connection from {peer}: {e}"));
            }
        }
        res
    }

    fn install_primary(
        self: &Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        acc: wire::Accepted,
    ) -> Result<()> {
        let mut st = self.state.lock();
        if self.closing.load(Ordering::SeqCst) || st.fatal.is_some() {
            return Err(TcpError::Closed);
        }
        if let Some(backup) = st.backup.filter(|b| *b != acc.peer) {
            let _ = wire::write_frame(
                &mut stream,
                &acc.session,
                DIR_TO_BACKUP,
                0,
                KIND_TAKEN,
                &backup.0.to_le_bytes(),
            );
            return Err(TcpError::BackupTaken {
                backup,
                refused: Some(acc.peer),
            });
        }
        let mut out = self.out.lock();
        // The queue moves its write position to the frame the backup needs next.
        let resent = match out.queue.resume_at(acc.next_seq) {
            Ok(again) => again,
            Err(ResendError::ResumeRefused {
                requested,
                oldest_held,
                next,
            }) => {
                let mut p = Vec::with_capacity(24);
                for v in [requested, oldest_held, next] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
                let _ = wire::write_frame(
                    &mut stream,
                    &acc.session,
                    DIR_TO_BACKUP,
                    0,
                    KIND_REFUSED,
                    &p,
                );
                return Err(TcpError::ResumeRefused {
                    requested,
                    oldest_held,
                    next,
                });
            }
            Err(e) => return Err(TcpError::Protocol(e.to_string())),
        };
        wire::write_frame(
            &mut stream,
            &acc.session,
            DIR_TO_BACKUP,
            0,
            KIND_RESUME,
            &acc.next_seq.to_le_bytes(),
        )
        .map_err(|e| io_err("sending the resume answer", &e))?;
        prepare(&stream, None)?;
        if let Some(old) = st.conn.take() {
            if old.kill() {
                bump(&self.counters.disconnects);
                self.log(format_args!(
                    "connection with {} replaced by a new one from {peer}",
                    old.peer
                ));
            }
        }
        st.next_id += 1;
        let conn = Arc::new(Conn {
            id: st.next_id,
            stream,
            peer,
            alive: AtomicBool::new(true),
        });
        out.conn = conn.id;
        drop(out);
        if let Err(e) = self.start_threads(&conn, acc.session, 0, 1) {
            conn.kill();
            return Err(e);
        }
        bump(&self.counters.connections);
        if st.established {
            bump(&self.counters.reconnects);
            self.log(format_args!(
                "backup reconnected from {peer}; resuming at record {} ({resent} frames to resend)",
                acc.next_seq
            ));
        } else {
            self.log(format_args!(
                "backup connected from {peer}; starting at record {}",
                acc.next_seq
            ));
        }
        st.established = true;
        st.backup = Some(acc.peer);
        st.down_since = None;
        st.conn = Some(conn);
        drop(st);
        self.out_cv.notify_all();
        Ok(())
    }

    /// Backup: one connection attempt, handshake and resume answer included.
    fn dial(&self, addr: SocketAddr, timeout: Duration) -> Result<(TcpStream, Session)> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| io_err("connecting to the primary", &e))?;
        prepare(&stream, Some(self.cfg.handshake_timeout))?;
        let want = self.out.lock().queue.resume_from();
        let res = wire::client_handshake(
            &mut stream,
            self.cfg.key.bytes(),
            &self.cfg.identity(),
            want,
        )
        .and_then(|session| {
            let answer =
                wire::read_frame(&mut stream, &session, DIR_TO_BACKUP, 0, MAX_CONTROL_PAYLOAD);
            resume_answer(answer, want).map(|()| session)
        });
        match res {
            Ok(session) => Ok((stream, session)),
            Err(e) => {
                if e.is_final() || matches!(e, TcpError::Foreign(_)) {
                    self.state.lock().last_error = Some(e.clone());
                    self.counters.refusal(&e);
                }
                Err(e)
            }
        }
    }

    fn install_backup(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        session: Session,
    ) -> Result<()> {
        prepare(&stream, None)?;
        let mut st = self.state.lock();
        if self.closing.load(Ordering::SeqCst) || st.fatal.is_some() {
            return Err(TcpError::Closed);
        }
        st.next_id += 1;
        let conn = Arc::new(Conn {
            id: st.next_id,
            stream,
            peer,
            alive: AtomicBool::new(true),
        });
        {
            let mut out = self.out.lock();
            out.conn = conn.id;
            // The latest ack may have died with the old connection: say it again.
            out.queue.reconnected();
        }
        let reader = match self.start_threads(&conn, session, 1, 0) {
            Ok(r) => r,
            Err(e) => {
                conn.kill();
                return Err(e);
            }
        };
        bump(&self.counters.connections);
        let from = self.out.lock().queue.resume_from();
        if st.established {
            bump(&self.counters.reconnects);
            self.log(format_args!(
                "reconnected to the primary at {peer}; resuming at record {from}"
            ));
        }
        st.established = true;
        st.down_since = None;
        st.reader = Some(reader);
        st.conn = Some(conn);
        drop(st);
        self.out_cv.notify_all();
        Ok(())
    }

    /// Sleep up to `d`, waking early when the link closes.
    fn pause(&self, d: Duration) {
        let mut st = self.state.lock();
        if !self.closing.load(Ordering::SeqCst) && st.fatal.is_none() {
            self.state_cv.wait_for(&mut st, d);
        }
    }
}

/// Backup: check the primary's first frame, the answer to a hello that asked for record
/// `want`: `Ok` for a resume from exactly `want`, the primary's typed refusal, or why
/// the frame is not an answer at all.
pub(super) fn resume_answer(
    answer: std::result::Result<(u8, Vec<u8>), ReadError>,
    want: u64,
) -> Result<()> {
    match answer {
        Ok((KIND_RESUME, p)) if p == want.to_le_bytes() => Ok(()),
        Ok((KIND_TAKEN, p)) if p.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p);
            Err(TcpError::BackupTaken {
                backup: NodeId(u64::from_le_bytes(b)),
                refused: None,
            })
        }
        Ok((KIND_REFUSED, p)) if p.len() == 24 => {
            let at = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p[i * 8..i * 8 + 8]);
                u64::from_le_bytes(b)
            };
            Err(TcpError::ResumeRefused {
                requested: at(0),
                oldest_held: at(1),
                next: at(2),
            })
        }
        Ok((kind, _)) => Err(TcpError::Protocol(format!(
            "expected the primary's resume answer, got frame kind {kind}"
        ))),
        Err(ReadError::Eof) => Err(TcpError::Io {
            context: "waiting for the resume answer",
            kind: io::ErrorKind::UnexpectedEof,
            message: "the primary closed the connection".into(),
        }),
        Err(ReadError::Io(e)) => Err(io_err("waiting for the resume answer", &e)),
        Err(ReadError::Bad(e)) => Err(e),
    }
}

fn reader_loop(shared: &Shared, conn: &Conn, stream: TcpStream, session: &Session, start: u64) {
    let dir = match shared.role {
        Role::Primary => DIR_TO_PRIMARY,
        Role::Backup => DIR_TO_BACKUP,
    };
    let mut counter = start;
    let mut r = BufReader::with_capacity(64 << 10, stream);
    loop {
        match wire::read_frame(&mut r, session, dir, counter, shared.cfg.max_frame) {
            Ok((KIND_DATA, payload)) => {
                counter += 1;
                bump(&shared.counters.frames_received);
                add(
                    &shared.counters.bytes_received,
                    (FRAME_HEADER_LEN + payload.len() + TAG_LEN) as u64,
                );
                let frame = Bytes::from(payload);
                // The link only carries the frame; what it means for a resend or a
                // resume is the queue's: an ack frees records before the engine sees
                // it (so that what the ack makes room for fits at once); records move
                // the resume position only once they were handed on.
                let primary = shared.role == Role::Primary;
                if primary {
                    shared.out.lock().queue.on_received(&frame);
                }
                if !shared.deliver(conn, frame.clone()) {
                    return;
                }
                if !primary {
                    shared.out.lock().queue.on_received(&frame);
                }
            }
            Ok((KIND_BYE, _)) => {
                conn.kill();
                shared.give_up(TcpError::PeerClosed);
                return;
            }
            Ok((kind, _)) => {
                shared.conn_lost(
                    conn,
                    TcpError::Protocol(format!("frame kind {kind} after the handshake")),
                );
                return;
            }
            Err(ReadError::Eof) => {
                shared.conn_lost(
                    conn,
                    TcpError::Io {
                        context: "reading",
                        kind: io::ErrorKind::UnexpectedEof,
                        message: "connection closed by the peer".into(),
                    },
                );
                return;
            }
            Err(ReadError::Io(e)) => {
                shared.conn_lost(conn, io_err("reading", &e));
                return;
            }
            Err(ReadError::Bad(e)) => {
                shared.conn_lost(conn, e);
                return;
            }
        }
    }
}

fn writer_loop(shared: &Shared, conn: &Conn, stream: TcpStream, session: &Session, start: u64) {
    let dir = match shared.role {
        Role::Primary => DIR_TO_BACKUP,
        Role::Backup => DIR_TO_PRIMARY,
    };
    let mut counter = start;
    let mut w = BufWriter::with_capacity(shared.cfg.write_buffer, stream);
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let mut resent = 0u64;
        let mut bye = false;
        {
            let mut out = shared.out.lock();
            loop {
                if out.conn != conn.id || !conn.is_alive() {
                    return;
                }
                if out.queue.has_unwritten() {
                    resent = out.queue.take_unwritten(WRITE_BATCH, &mut batch);
                    break;
                }
                if out.closing {
                    bye = true;
                    break;
                }
                if !w.buffer().is_empty() {
                    // The queue ran empty: send what was coalesced now.
                    match MutexGuard::unlocked(&mut out, || w.flush()) {
                        Ok(()) => bump(&shared.counters.flushes),
                        Err(e) => {
                            drop(out);
                            shared.conn_lost(conn, io_err("writing", &e));
                            return;
                        }
                    }
                    continue;
                }
                shared.out_cv.wait_for(&mut out, POLL * 5);
            }
        }
        if bye {
            let _ = wire::write_frame(&mut w, session, dir, counter, KIND_BYE, &[])
                .and_then(|()| w.flush());
            conn.kill();
            shared.out_cv.notify_all();
            return;
        }
        for f in batch.drain(..) {
            if let Err(e) = wire::write_frame(&mut w, session, dir, counter, KIND_DATA, &f) {
                shared.conn_lost(conn, io_err("writing", &e));
                return;
            }
            counter += 1;
            bump(&shared.counters.frames_sent);
            add(
                &shared.counters.bytes_sent,
                (FRAME_HEADER_LEN + f.len() + TAG_LEN) as u64,
            );
        }
        add(&shared.counters.frames_resent, resent);
    }
}

/// Backup: replace every lost connection, until the link closes or gives up.
fn backup_supervisor(shared: &Arc<Shared>, addr: SocketAddr) {
    loop {
        let (since, reader) = {
            let mut st = shared.state.lock();
            loop {
                if shared.closing.load(Ordering::SeqCst) || st.fatal.is_some() {
                    return;
                }
                if !st.conn.as_ref().is_some_and(|c| c.is_alive()) {
                    break;
                }
                shared.state_cv.wait_for(&mut st, POLL * 10);
            }
            (st.down_since.unwrap_or_else(Instant::now), st.reader.take())
        };
        // The old reader is done before the hello says which record comes next.
        if let Some(h) = reader {
            let _ = h.join();
        }
        let mut backoff = shared.cfg.retry_min;
        loop {
            if shared.stopped() {
                return;
            }
            let left = shared.cfg.reconnect_grace.saturating_sub(since.elapsed());
            if left.is_zero() {
                shared.give_up(TcpError::GaveUp(shared.cfg.reconnect_grace));
                return;
            }
            let attempt = shared.cfg.connect_timeout.min(left);
            let e = match shared.dial(addr, attempt) {
                Ok((stream, session)) => match shared.install_backup(stream, addr, session) {
                    Ok(()) => break,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let refused = matches!(
                e,
                TcpError::Io {
                    kind: io::ErrorKind::ConnectionRefused,
                    ..
                }
            );
            if refused && shared.cfg.refused_means_gone {
                shared.give_up(TcpError::PeerGone(format!(
                    "nothing listens at {addr} any more"
                )));
                return;
            }
            if e.is_final() || e == TcpError::Closed {
                shared.give_up(e);
                return;
            }
            shared.pause(backoff.min(left));
            backoff = backoff.saturating_mul(2).min(shared.cfg.retry_max);
        }
    }
}

/// Primary: accept replacement connections until the link closes or gives up.
fn acceptor(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        if shared.stopped() {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.stopped() {
                    return;
                }
                let _ = shared.serve(stream, peer);
            }
            Err(e) => {
                shared.log(format_args!("accept failed: {e}"));
                std::thread::sleep(POLL);
            }
        }
    }
}

/// A TCP frame link: one end of an authenticated, self-healing TCP log channel. See
/// the module docs. Dropping it says goodbye to the peer and stops its threads.
#[derive(Debug)]
pub struct TcpLink {
    shared: Arc<Shared>,
    rx: Receiver<Bytes>,
}

/// A handle on a [`TcpLink`] for other threads: counters, state, and
/// [`TcpHandle::drop_connection`]. It does not keep the link open.
#[derive(Debug, Clone)]
pub struct TcpHandle {
    shared: Arc<Shared>,
}

impl TcpHandle {
    /// The link's counters.
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.shared
            .state
            .lock()
            .conn
            .as_ref()
            .is_some_and(|c| c.is_alive())
    }

    /// The peer's address on the current connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let st = self.shared.state.lock();
        st.conn.as_ref().filter(|c| c.is_alive()).map(|c| c.peer)
    }

    /// Why the link gave up for good, if it did.
    pub fn fatal_error(&self) -> Option<TcpError> {
        self.shared.state.lock().fatal.clone()
    }

    /// The most recent refusal, rejected frame or failed attempt.
    pub fn last_error(&self) -> Option<TcpError> {
        self.shared.state.lock().last_error.clone()
    }

    /// Backup: the record it would ask for on a reconnect now.
    pub fn next_expected(&self) -> u64 {
        self.shared.out.lock().queue.resume_from()
    }

    /// Drop the current connection abruptly, as a network failure would; the link then
    /// replaces it as it would any lost connection. For tests and operators.
    pub fn drop_connection(&self) {
        let conn = self.shared.state.lock().conn.clone();
        if let Some(c) = conn {
            self.shared.conn_lost(
                &c,
                TcpError::Io {
                    context: "drop_connection",
                    kind: io::ErrorKind::ConnectionAborted,
                    message: "connection dropped on request".into(),
                },
            );
        }
    }
}

impl TcpLink {
    /// Backup: connect to the primary at `addr` and start from record 1. Connection
    /// failures are retried (with backoff) for up to `wait`; a peer that is not our
    /// primary (wrong key, magic, version, pair) or refuses to resume fails at once.
    pub fn connect(addr: impl ToSocketAddrs, cfg: TcpConfig, wait: Duration) -> Result<TcpLink> {
        Self::connect_from(addr, cfg, 1, wait)
    }

    /// Backup: like [`TcpLink::connect`], asking for record `next_seq` first (a backup
    /// that already holds records before it).
    pub fn connect_from(
        addr: impl ToSocketAddrs,
        cfg: TcpConfig,
        next_seq: u64,
        wait: Duration,
    ) -> Result<TcpLink> {
        cfg.validate()?;
        let addr = resolve(addr)?;
        let (shared, rx) = Shared::new(Role::Backup, cfg, None, next_seq);
        let deadline = Instant::now().checked_add(wait);
        let mut backoff = shared.cfg.retry_min;
        loop {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let attempt = shared
                .cfg
                .connect_timeout
                .min(left)
                .max(Duration::from_millis(1));
            let e = match shared.dial(addr, attempt) {
                Ok((stream, session)) => match shared.install_backup(stream, addr, session) {
                    Ok(()) => break,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if e.is_final() {
                shared.log(format_args!(
                    "connection to the primary at {addr} refused: {e}"
                ));
                return Err(e);
            }
            if left.is_zero() {
                return Err(e);
            }
            std::thread::sleep(backoff.min(left));
            backoff = backoff.saturating_mul(2).min(shared.cfg.retry_max);
        }
        shared.log(format_args!(
            "connected to the primary at {addr}; starting at record {next_seq}"
        ));
        let sh = shared.clone();
        if let Err(e) = spawn("ft-tcp-connector", move || backup_supervisor(&sh, addr)) {
            shared.close(false);
            return Err(e);
        }
        Ok(TcpLink { shared, rx })
    }

    /// Which side this link serves.
    pub fn role(&self) -> Role {
        self.shared.role
    }

    /// A handle for other threads.
    pub fn handle(&self) -> TcpHandle {
        TcpHandle {
            shared: self.shared.clone(),
        }
    }

    /// The link's counters.
    pub fn stats(&self) -> TcpStats {
        self.handle().stats()
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.handle().is_connected()
    }

    /// Why the link gave up for good, if it did (for example
    /// [`TcpError::ResumeRefused`] on a backup the primary can no longer serve).
    pub fn fatal_error(&self) -> Option<TcpError> {
        self.handle().fatal_error()
    }

    /// The most recent refusal, rejected frame or failed attempt.
    pub fn last_error(&self) -> Option<TcpError> {
        self.handle().last_error()
    }

    /// See [`TcpHandle::drop_connection`].
    pub fn drop_connection(&self) {
        self.handle().drop_connection()
    }

    /// Close without a goodbye, as a killed process would: the peer sees the
    /// connection drop and waits for a reconnect that never comes.
    pub fn abort(self) {
        self.shared.close(false);
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        self.shared.close(true);
    }
}

impl FrameLink for TcpLink {
    /// Queue a frame. [`ChannelError::Full`] when the send queue is full;
    /// [`ChannelError::Disconnected`] once the link gave up (or the peer left);
    /// [`ChannelError::Io`] for a frame over [`TcpConfig::max_frame`] or a link that
    /// failed for another reason (see [`TcpLink::fatal_error`]).
    fn try_send_frame(&mut self, frame: Bytes) -> std::result::Result<(), ChannelError> {
        let sh = &self.shared;
        sh.health()?;
        if frame.len() > sh.cfg.max_frame {
            return Err(ChannelError::Io(
                TcpError::FrameTooLarge {
                    len: frame.len(),
                    max: sh.cfg.max_frame,
                }
                .to_string(),
            ));
        }
        if sh.out.lock().queue.push(frame).is_err() {
            // The only refusal of a push: the queue is at its limits.
            return Err(ChannelError::Full);
        }
        sh.out_cv.notify_all();
        Ok(())
    }

    /// The next authenticated frame. Frames that arrived are delivered before a
    /// disconnect is reported.
    fn try_recv_frame(&mut self) -> std::result::Result<Option<Bytes>, ChannelError> {
        match self.rx.try_recv() {
            Ok(f) => Ok(Some(f)),
            Err(_) => {
                self.shared.health()?;
                Ok(None)
            }
        }
    }
}

/// The primary's listening socket, until the first backup is accepted.
#[derive(Debug)]
pub struct PrimaryListener {
    listener: Option<TcpListener>,
    local: SocketAddr,
    shared: Arc<Shared>,
    rx: Option<Receiver<Bytes>>,
}

impl PrimaryListener {
    /// Listen on `addr` (port 0: any free port, see [`PrimaryListener::local_addr`]).
    pub fn bind(addr: impl ToSocketAddrs, cfg: TcpConfig) -> Result<PrimaryListener> {
        cfg.validate()?;
        let listener = TcpListener::bind(addr).map_err(|e| io_err("binding the listener", &e))?;
        let local = listener
            .local_addr()
            .map_err(|e| io_err("reading the listener's address", &e))?;
        let mut wake = local;
        if wake.ip().is_unspecified() {
            wake.set_ip(match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let (shared, rx) = Shared::new(Role::Primary, cfg, Some(wake), 1);
        Ok(PrimaryListener {
            listener: Some(listener),
            local,
            shared,
            rx: Some(rx),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters of the listener and of the link it hands over (refused connections
    /// are counted from the start).
    pub fn stats(&self) -> TcpStats {
        self.shared.counters.snapshot()
    }

    /// A handle on the link this listener hands over.
    pub fn handle(&self) -> TcpHandle {
        TcpHandle {
            shared: self.shared.clone(),
        }
    }

    /// Wait (up to `timeout`, or forever) for the first backup that authenticates, and
    /// hand over the link; the listener moves into the link, which accepts the
    /// backup's reconnections from then on. Refused connections are logged, counted
    /// and never returned. [`TcpError::Timeout`] leaves the listener usable;
    /// [`TcpError::Closed`] if it already handed its link over.
    pub fn accept(&mut self, timeout: Option<Duration>) -> Result<TcpLink> {
        let listener = self.listener.as_ref().ok_or(TcpError::Closed)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("configuring the listener", &e))?;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| io_err("configuring the socket", &e))?;
                    if self.shared.serve(stream, peer).is_ok() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(TcpError::Timeout("waiting for the backup to connect"));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("accepting a connection", &e)),
            }
        }
        let (Some(listener), Some(rx)) = (self.listener.take(), self.rx.take()) else {
            return Err(TcpError::Closed);
        };
        listener
            .set_nonblocking(false)
            .map_err(|e| io_err("configuring the listener", &e))?;
        let sh = self.shared.clone();
        if let Err(e) = spawn("ft-tcp-acceptor", move || acceptor(&sh, &listener)) {
            self.shared.close(false);
            return Err(e);
        }
        Ok(TcpLink {
            shared: self.shared.clone(),
            rx,
        })
    }
}
