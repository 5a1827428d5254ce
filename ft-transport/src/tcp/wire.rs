//! The bytes on the stream: hellos, the session key, authenticated frames, and a cheap
//! look at a log frame's sequence numbers. See the parent module for the layout.

use std::io::{self, Read, Write};

use ft_core::{NodeId, PairId, Role};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Result, TcpError};

type HmacSha256 = Hmac<Sha256>;

/// Protocol magic, the first bytes of both hellos.
pub const MAGIC: [u8; 4] = *b"FTTC";
/// The stream protocol version this build speaks (2: the hellos carry the node id and
/// the guest image digest).
pub const PROTOCOL_VERSION: u16 = 2;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a MAC tag (HMAC-SHA256, not truncated).
pub const TAG_LEN: usize = 32;
/// Bytes of the backup's hello: magic, version, role, vm, generation, node, image
/// digest, nonce, next seq.
pub const CLIENT_HELLO_LEN: usize = 4 + 2 + 1 + 8 + 8 + 8 + 8 + NONCE_LEN + 8;
/// Bytes of the primary's hello, tag included: magic, version, status, role, vm,
/// generation, node, image digest, nonce, tag.
pub const SERVER_HELLO_LEN: usize = 4 + 2 + 1 + 1 + 8 + 8 + 8 + 8 + NONCE_LEN + TAG_LEN;
/// Bytes of a refusal sent instead of the primary's hello: magic, version, status.
pub const REFUSAL_LEN: usize = 4 + 2 + 1;
/// Bytes of the backup's key confirmation.
pub const CONFIRM_LEN: usize = TAG_LEN;
/// Bytes of a frame header: payload length (u32, little-endian), then the kind.
pub const FRAME_HEADER_LEN: usize = 5;

/// Role byte of a primary.
pub(crate) const ROLE_PRIMARY: u8 = 1;
/// Role byte of a backup.
pub(crate) const ROLE_BACKUP: u8 = 2;

/// Hello status: accepted.
pub(crate) const STATUS_OK: u8 = 0;
/// Hello status: the versions differ.
pub(crate) const STATUS_VERSION: u8 = 1;
/// Hello status: the peer has the wrong role.
pub(crate) const STATUS_ROLE: u8 = 2;
/// Hello status: the peer belongs to another pair or generation.
pub(crate) const STATUS_PAIR: u8 = 3;
/// Hello status: the peer has this side's node id.
pub(crate) const STATUS_NODE: u8 = 4;
/// Hello status: the peer starts from another guest image.
pub(crate) const STATUS_IMAGE: u8 = 5;

/// Who one end of a channel is. Both hellos carry it, and each side refuses a peer of
/// another pair or generation, with its own node id, or starting from another guest
/// image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The protected pair and its generation.
    pub pair: PairId,
    /// This end's node id; the peer's must differ.
    pub node: NodeId,
    /// A digest of the guest image or initial state both sides start from.
    pub image: u64,
}

impl Identity {
    fn put(&self, h: &mut Vec<u8>) {
        h.extend_from_slice(&self.pair.vm.to_le_bytes());
        h.extend_from_slice(&self.pair.generation.to_le_bytes());
        h.extend_from_slice(&self.node.0.to_le_bytes());
        h.extend_from_slice(&self.image.to_le_bytes());
    }

    fn get(b: &[u8], at: usize) -> Identity {
        Identity {
            pair: PairId {
                vm: u64_at(b, at),
                generation: u64_at(b, at + 8),
            },
            node: NodeId(u64_at(b, at + 16)),
            image: u64_at(b, at + 24),
        }
    }

    /// The first reason `theirs` cannot be this side's peer, with the refusal status
    /// to send.
    fn refuse(&self, theirs: &Identity) -> Option<(u8, TcpError)> {
        if theirs.pair != self.pair {
            return Some((
                STATUS_PAIR,
                TcpError::PairMismatch {
                    ours: self.pair,
                    theirs: Some(theirs.pair),
                },
            ));
        }
        if theirs.node == self.node {
            return Some((STATUS_NODE, TcpError::NodeCollision { node: self.node }));
        }
        if theirs.image != self.image {
            return Some((
                STATUS_IMAGE,
                TcpError::ImageMismatch {
                    ours: self.image,
                    theirs: Some(theirs.image),
                },
            ));
        }
        None
    }
}

/// Frame kind: an encoded log frame (records or ack).
pub(crate) const KIND_DATA: u8 = 1;
/// Frame kind: the primary resumes from a sequence number (u64).
pub(crate) const KIND_RESUME: u8 = 2;
/// Frame kind: the primary refuses to resume (requested, oldest held, next; u64 each).
pub(crate) const KIND_REFUSED: u8 = 3;
/// Frame kind: the sender closes the channel for good.
pub(crate) const KIND_BYE: u8 = 4;
/// Frame kind: the primary refuses a second backup, sent instead of the resume answer
/// to an authenticated backup whose node id is not the one the link serves (u64).
pub(crate) const KIND_TAKEN: u8 = 5;
/// Largest payload of a control frame (resume, refused, bye).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 64;

/// Most bytes reserved for a payload before they arrive; beyond this the buffer grows
/// with the bytes actually received.
const PREALLOC_LIMIT: usize = 1 << 20;

/// Direction byte of frames from the primary to the backup.
pub(crate) const DIR_TO_BACKUP: u8 = 0;
/// Direction byte of frames from the backup to the primary.
pub(crate) const DIR_TO_PRIMARY: u8 = 1;

const SESSION_LABEL: &[u8] = b"ft-tcp/1 session key";
pub(crate) const SERVER_FINISHED: &[u8] = b"ft-tcp/1 primary finished";
pub(crate) const CLIENT_FINISHED: &[u8] = b"ft-tcp/1 backup finished";

/// Fresh random bytes from the operating system.
pub(crate) fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n).map_err(|e| TcpError::Random(e.to_string()))?;
    Ok(n)
}

/// The per-connection key, derived from the pre-shared key and the whole handshake
/// transcript (both nonces included).
#[derive(Clone)]
pub(crate) struct Session {
    mac: HmacSha256,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(<key redacted>)")
    }
}

fn keyed(key: &[u8]) -> Result<HmacSha256> {
    HmacSha256::new_from_slice(key).map_err(|e| TcpError::Crypto(e.to_string()))
}

impl Session {
    /// `HMAC(psk, label || SHA-256(transcript))`, used as the key of every MAC of the
    /// connection.
    pub(crate) fn derive(psk: &[u8], transcript: &[u8]) -> Result<Session> {
        let th = Sha256::digest(transcript);
        let mut m = keyed(psk)?;
        m.update(SESSION_LABEL);
        m.update(&th);
        let key = m.finalize().into_bytes();
        Ok(Session { mac: keyed(&key)? })
    }

    /// The key-confirmation tag for `label` ([`SERVER_FINISHED`] or
    /// [`CLIENT_FINISHED`]).
    pub(crate) fn finished(&self, label: &[u8]) -> [u8; TAG_LEN] {
        let mut m = self.mac.clone();
        m.update(label);
        m.finalize().into_bytes().into()
    }

    fn frame_mac(&self, dir: u8, counter: u64, kind: u8, payload: &[u8]) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(&[dir]);
        m.update(&counter.to_le_bytes());
        m.update(&[kind]);
        m.update(&(payload.len() as u64).to_le_bytes());
        m.update(payload);
        m
    }

    /// The tag of a frame: a MAC over direction, counter, kind, length and payload.
    pub(crate) fn frame_tag(&self, dir: u8, counter: u64, kind: u8, payload: &[u8]) -> [u8; 32] {
        self.frame_mac(dir, counter, kind, payload)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is the frame's tag (compared in constant time).
    pub(crate) fn verify_frame(
        &self,
        dir: u8,
        counter: u64,
        kind: u8,
        payload: &[u8],
        tag: &[u8],
    ) -> bool {
        self.frame_mac(dir, counter, kind, payload)
            .verify_slice(tag)
            .is_ok()
    }

    fn verify_finished(&self, label: &[u8], tag: &[u8]) -> bool {
        let mut m = self.mac.clone();
        m.update(label);
        m.verify_slice(tag).is_ok()
    }
}

/// An I/O error during the handshake, as a [`TcpError`].
pub(crate) fn io_err(context: &'static str, e: &io::Error) -> TcpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => TcpError::Timeout(context),
        kind => TcpError::Io {
            context,
            kind,
            message: e.to_string(),
        },
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], context: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(|e| io_err(context, &e))
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Primary => ROLE_PRIMARY,
        Role::Backup => ROLE_BACKUP,
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The backup's hello.
pub(crate) fn client_hello(me: &Identity, nonce: &[u8; NONCE_LEN], next_seq: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(CLIENT_HELLO_LEN);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h.push(role_byte(Role::Backup));
    me.put(&mut h);
    h.extend_from_slice(nonce);
    h.extend_from_slice(&next_seq.to_le_bytes());
    h
}

fn refusal(status: u8) -> [u8; REFUSAL_LEN] {
    let mut r = [0u8; REFUSAL_LEN];
    r[..4].copy_from_slice(&MAGIC);
    r[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    r[6] = status;
    r
}

/// What the primary learned from a backup that passed the handshake.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The connection's keys.
    pub(crate) session: Session,
    /// The first record the backup asks for.
    pub(crate) next_seq: u64,
    /// The backup's node id.
    pub(crate) peer: NodeId,
}

/// The primary's side of the handshake on a fresh connection (timeouts already set).
/// On success the backup has proved it holds the key; the caller still owes it the
/// resume answer (the first frame, counter 0).
pub(crate) fn server_handshake<S: Read + Write>(
    s: &mut S,
    psk: &[u8],
    me: &Identity,
) -> Result<Accepted> {
    server_handshake_with(s, psk, me, nonce)
}

/// [`server_handshake`] with the primary's nonce taken from `my_nonce` (called once,
/// after the backup's hello passed its checks). The fuzz entry points pass a fixed one.
pub(crate) fn server_handshake_with<S: Read + Write>(
    s: &mut S,
    psk: &[u8],
    me: &Identity,
    my_nonce: impl FnOnce() -> Result<[u8; NONCE_LEN]>,
) -> Result<Accepted> {
    let mut hello = [0u8; CLIENT_HELLO_LEN];
    let mut got = 0usize;
    // Magic and version first: a foreign peer is refused as soon as it shows itself.
    while got < 6 {
        match s.read(&mut hello[got..6]) {
            Ok(0) => {
                return Err(TcpError::Foreign(format!(
                    "connection closed after {got} bytes, before a complete hello"
                )))
            }
            Ok(n) => {
                got += n;
                let m = got.min(4);
                if hello[..m] != MAGIC[..m] {
                    let mut found = [0u8; 4];
                    found[..m].copy_from_slice(&hello[..m]);
                    return Err(TcpError::BadMagic { found });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(match io_err("waiting for the backup's hello", &e) {
                    TcpError::Timeout(_) => TcpError::Foreign(format!(
                        "no hello within the handshake timeout ({got} bytes)"
                    )),
                    other => other,
                })
            }
        }
    }
    let theirs = u16::from_le_bytes([hello[4], hello[5]]);
    if theirs != PROTOCOL_VERSION {
        let _ = s.write_all(&refusal(STATUS_VERSION));
        return Err(TcpError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    read_exact(s, &mut hello[6..], "reading the backup's hello")?;
    let role = hello[6];
    if role != ROLE_BACKUP {
        let _ = s.write_all(&refusal(STATUS_ROLE));
        return Err(TcpError::WrongRole {
            expected: Role::Backup,
            found: role,
        });
    }
    let peer = Identity::get(&hello, 7);
    if let Some((status, e)) = me.refuse(&peer) {
        let _ = s.write_all(&refusal(status));
        return Err(e);
    }
    let next_seq = u64_at(&hello, CLIENT_HELLO_LEN - 8);

    let my_nonce = my_nonce()?;
    let mut reply = Vec::with_capacity(SERVER_HELLO_LEN);
    reply.extend_from_slice(&refusal(STATUS_OK));
    reply.push(role_byte(Role::Primary));
    me.put(&mut reply);
    reply.extend_from_slice(&my_nonce);
    let mut transcript = hello.to_vec();
    transcript.extend_from_slice(&reply);
    let session = Session::derive(psk, &transcript)?;
    reply.extend_from_slice(&session.finished(SERVER_FINISHED));
    s.write_all(&reply)
        .and_then(|()| s.flush())
        .map_err(|e| io_err("sending the primary's hello", &e))?;

    // A backup confirms even when it found our tag wrong, so a missing confirmation is
    // a broken connection, not a failed authentication.
    let mut confirm = [0u8; CONFIRM_LEN];
    read_exact(s, &mut confirm, "waiting for the backup's key confirmation")?;
    if !session.verify_finished(CLIENT_FINISHED, &confirm) {
        return Err(TcpError::AuthFailed);
    }
    Ok(Accepted {
        session,
        next_seq,
        peer: peer.node,
    })
}

/// The backup's side of the handshake up to the key confirmation (timeouts already
/// set). The resume answer is read next with [`read_frame`] (counter 0).
pub(crate) fn client_handshake<S: Read + Write>(
    s: &mut S,
    psk: &[u8],
    me: &Identity,
    next_seq: u64,
) -> Result<Session> {
    client_handshake_with(s, psk, me, next_seq, nonce()?)
}

/// [`client_handshake`] with the backup's nonce given. The fuzz entry points pass a
/// fixed one.
pub(crate) fn client_handshake_with<S: Read + Write>(
    s: &mut S,
    psk: &[u8],
    me: &Identity,
    next_seq: u64,
    my_nonce: [u8; NONCE_LEN],
) -> Result<Session> {
    let hello = client_hello(me, &my_nonce, next_seq);
    s.write_all(&hello)
        .and_then(|()| s.flush())
        .map_err(|e| io_err("sending the backup's hello", &e))?;

    let mut reply = [0u8; SERVER_HELLO_LEN];
    let head = &mut reply[..REFUSAL_LEN];
    if let Err(e) = s.read_exact(head) {
        return Err(io_err("waiting for the primary's hello", &e));
    }
    let mut found = [0u8; 4];
    found.copy_from_slice(&reply[..4]);
    if found != MAGIC {
        return Err(TcpError::BadMagic { found });
    }
    let theirs = u16::from_le_bytes([reply[4], reply[5]]);
    if theirs != PROTOCOL_VERSION {
        return Err(TcpError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    match reply[6] {
        STATUS_OK => {}
        STATUS_ROLE => {
            return Err(TcpError::WrongRole {
                expected: Role::Primary,
                found: ROLE_BACKUP,
            })
        }
        STATUS_PAIR => {
            return Err(TcpError::PairMismatch {
                ours: me.pair,
                theirs: None,
            })
        }
        STATUS_NODE => return Err(TcpError::NodeCollision { node: me.node }),
        STATUS_IMAGE => {
            return Err(TcpError::ImageMismatch {
                ours: me.image,
                theirs: None,
            })
        }
        other => return Err(TcpError::Refused(other)),
    }
    read_exact(s, &mut reply[REFUSAL_LEN..], "reading the primary's hello")?;
    if reply[7] != ROLE_PRIMARY {
        return Err(TcpError::WrongRole {
            expected: Role::Primary,
            found: reply[7],
        });
    }
    if let Some((_, e)) = me.refuse(&Identity::get(&reply, 8)) {
        return Err(e);
    }
    let body = SERVER_HELLO_LEN - TAG_LEN;
    let mut transcript = hello;
    transcript.extend_from_slice(&reply[..body]);
    let session = Session::derive(psk, &transcript)?;
    // Confirm even when the primary's tag is wrong, so the primary also sees (and
    // counts) the failed authentication. The tag reveals nothing about the key.
    s.write_all(&session.finished(CLIENT_FINISHED))
        .and_then(|()| s.flush())
        .map_err(|e| io_err("sending the key confirmation", &e))?;
    if !session.verify_finished(SERVER_FINISHED, &reply[body..]) {
        return Err(TcpError::AuthFailed);
    }
    Ok(session)
}

/// Write one authenticated frame: header, payload, tag.
pub(crate) fn write_frame<W: Write>(
    w: &mut W,
    session: &Session,
    dir: u8,
    counter: u64,
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut head = [0u8; FRAME_HEADER_LEN];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    w.write_all(&head)?;
    w.write_all(payload)?;
    w.write_all(&session.frame_tag(dir, counter, kind, payload))
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended cleanly between two frames.
    Eof,
    /// The socket failed (reset, shut down, timed out).
    Io(io::Error),
    /// The bytes are not a valid, authentic frame.
    Bad(TcpError),
}

/// Read as much of `buf` as arrives; the count read (short only at the end of stream).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Read and authenticate one frame: `(kind, payload)`.
///
/// The length is checked against `max_data` (data frames) or a small limit (control
/// frames) before anything is allocated, and the payload buffer only grows as bytes
/// actually arrive, so a lying length prefix cannot make this allocate much.
pub(crate) fn read_frame<R: Read>(
    r: &mut R,
    session: &Session,
    dir: u8,
    counter: u64,
    max_data: usize,
) -> std::result::Result<(u8, Vec<u8>), ReadError> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    let got = read_full(r, &mut head).map_err(ReadError::Io)?;
    if got == 0 {
        return Err(ReadError::Eof);
    }
    if got < FRAME_HEADER_LEN {
        return Err(ReadError::Bad(TcpError::Truncated {
            needed: FRAME_HEADER_LEN,
            have: got,
        }));
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let kind = head[4];
    let max = match kind {
        KIND_DATA => max_data,
        KIND_RESUME | KIND_REFUSED | KIND_BYE | KIND_TAKEN => MAX_CONTROL_PAYLOAD,
        other => return Err(ReadError::Bad(TcpError::UnknownFrameKind(other))),
    };
    if len > max {
        return Err(ReadError::Bad(TcpError::FrameTooLarge { len, max }));
    }
    let needed = FRAME_HEADER_LEN + len + TAG_LEN;
    let mut payload = Vec::with_capacity(len.min(PREALLOC_LIMIT));
    let n = r
        .by_ref()
        .take(len as u64)
        .read_to_end(&mut payload)
        .map_err(ReadError::Io)?;
    if n < len {
        return Err(ReadError::Bad(TcpError::Truncated {
            needed,
            have: FRAME_HEADER_LEN + n,
        }));
    }
    let mut tag = [0u8; TAG_LEN];
    let t = read_full(r, &mut tag).map_err(ReadError::Io)?;
    if t < TAG_LEN {
        return Err(ReadError::Bad(TcpError::Truncated {
            needed,
            have: FRAME_HEADER_LEN + len + t,
        }));
    }
    if !session.verify_frame(dir, counter, kind, &payload, &tag) {
        return Err(ReadError::Bad(TcpError::BadMac { counter }));
    }
    Ok((kind, payload))
}

/// The sequence numbers `(first, last)` of an encoded records frame; `None` for
/// anything else. The codec owns the layout ([`ft_core::log_codec::peek_record_range`]).
pub(crate) fn peek_records(frame: &[u8]) -> Option<(u64, u64)> {
    ft_core::log_codec::peek_record_range(frame)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Cursor;

    fn session() -> Session {
        Session::derive(b"0123456789abcdef0123", b"transcript").unwrap()
    }

    #[test]
    fn frames_round_trip_and_tampering_is_caught() {
        let s = session();
        let mut buf = Vec::new();
        write_frame(&mut buf, &s, DIR_TO_BACKUP, 0, KIND_DATA, b"hello").unwrap();
        write_frame(&mut buf, &s, DIR_TO_BACKUP, 1, KIND_BYE, b"").unwrap();
        let mut r = Cursor::new(buf.clone());
        let (k, p) = read_frame(&mut r, &s, DIR_TO_BACKUP, 0, 1024).unwrap();
        assert_eq!((k, p.as_slice()), (KIND_DATA, &b"hello"[..]));
        assert_eq!(
            read_frame(&mut r, &s, DIR_TO_BACKUP, 1, 1024).unwrap().0,
            KIND_BYE
        );
        assert!(matches!(
            read_frame(&mut r, &s, DIR_TO_BACKUP, 2, 1024),
            Err(ReadError::Eof)
        ));
        // Wrong counter (a replayed or reordered frame), wrong direction (a reflected
        // frame), another session, a flipped bit: all fail the MAC.
        for (dir, counter, sess) in [
            (DIR_TO_BACKUP, 1, session()),
            (DIR_TO_PRIMARY, 0, session()),
            (
                DIR_TO_BACKUP,
                0,
                Session::derive(b"0123456789abcdef0123", b"other").unwrap(),
            ),
        ] {
            let mut r = Cursor::new(buf.clone());
            assert!(matches!(
                read_frame(&mut r, &sess, dir, counter, 1024),
                Err(ReadError::Bad(TcpError::BadMac { .. }))
            ));
        }
        let mut bad = buf.clone();
        bad[FRAME_HEADER_LEN + 1] ^= 1;
        assert!(matches!(
            read_frame(&mut Cursor::new(bad), &s, DIR_TO_BACKUP, 0, 1024),
            Err(ReadError::Bad(TcpError::BadMac { counter: 0 }))
        ));
    }

    #[test]
    fn bad_lengths_kinds_and_truncation() {
        let s = session();
        // A 4 GiB length prefix with nothing behind it: refused before allocating.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.push(KIND_DATA);
        match read_frame(&mut Cursor::new(huge), &s, 0, 0, 16 << 20) {
            Err(ReadError::Bad(TcpError::FrameTooLarge { len, max })) => {
                assert_eq!((len, max), (u32::MAX as usize, 16 << 20));
            }
            other => panic!("{other:?}"),
        }
        // A control frame may not be large either.
        let mut ctl = 1000u32.to_le_bytes().to_vec();
        ctl.push(KIND_BYE);
        assert!(matches!(
            read_frame(&mut Cursor::new(ctl), &s, 0, 0, 16 << 20),
            Err(ReadError::Bad(TcpError::FrameTooLarge { .. }))
        ));
        let mut unknown = 4u32.to_le_bytes().to_vec();
        unknown.push(0x7f);
        assert!(matches!(
            read_frame(&mut Cursor::new(unknown), &s, 0, 0, 1024),
            Err(ReadError::Bad(TcpError::UnknownFrameKind(0x7f)))
        ));
        // A 10 MB frame that stops after a few bytes: truncated, and the buffer stays
        // small.
        let mut short = (10u32 << 20).to_le_bytes().to_vec();
        short.push(KIND_DATA);
        short.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_frame(&mut Cursor::new(short), &s, 0, 0, 16 << 20),
            Err(ReadError::Bad(TcpError::Truncated { have: 8, .. }))
        ));
        assert!(matches!(
            read_frame(&mut Cursor::new(vec![1u8, 0]), &s, 0, 0, 1024),
            Err(ReadError::Bad(TcpError::Truncated { have: 2, .. }))
        ));
    }

    fn id(node: u64, image: u64) -> Identity {
        Identity {
            pair: PairId {
                vm: 7,
                generation: 3,
            },
            node: NodeId(node),
            image,
        }
    }

    /// Both ends of a handshake over loopback TCP, the primary on its own thread.
    fn handshake(
        server_key: &'static [u8],
        client_key: &'static [u8],
    ) -> (Result<Accepted>, Result<Session>) {
        handshake_as(server_key, id(1, 9), client_key, id(2, 9))
    }

    fn handshake_as(
        server_key: &'static [u8],
        server_id: Identity,
        client_key: &'static [u8],
        client_id: Identity,
    ) -> (Result<Accepted>, Result<Session>) {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            server_handshake(&mut s, server_key, &server_id)
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let client = client_handshake(&mut c, client_key, &client_id, 42);
        drop(c);
        (t.join().unwrap(), client)
    }

    #[test]
    fn a_peer_with_our_node_id_or_another_image_is_refused_by_both_sides() {
        const K: &[u8] = b"the very same key";
        let (server, client) = handshake_as(K, id(1, 9), K, id(1, 9));
        let collision = TcpError::NodeCollision { node: NodeId(1) };
        assert_eq!(server.unwrap_err(), collision);
        assert_eq!(client.unwrap_err(), collision);
        assert!(collision.to_string().contains("node 1"), "{collision}");

        let (server, client) = handshake_as(K, id(1, 9), K, id(2, 8));
        assert_eq!(
            server.unwrap_err(),
            TcpError::ImageMismatch {
                ours: 9,
                theirs: Some(8)
            }
        );
        assert_eq!(
            client.unwrap_err(),
            TcpError::ImageMismatch {
                ours: 8,
                theirs: None
            }
        );

        // The backup checks the primary's hello too (a primary that skipped its
        // checks, or an old build): its identity is refused the same way.
        let me = id(2, 9);
        let hello = client_hello(&me, &[0; NONCE_LEN], 1);
        let mut reply = refusal(STATUS_OK).to_vec();
        reply.push(ROLE_PRIMARY);
        id(2, 9).put(&mut reply);
        reply.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        let mut s = Loop {
            input: std::io::Cursor::new(reply),
            output: Vec::new(),
        };
        let e = client_handshake_with(&mut s, K, &me, 1, [0; NONCE_LEN]).unwrap_err();
        assert_eq!(e, TcpError::NodeCollision { node: NodeId(2) });
        assert_eq!(s.output, hello, "nothing after the hello was sent");
    }

    /// A stream that reads from a script and keeps what is written.
    struct Loop {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Loop {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Loop {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn handshake_agrees_on_a_key_only_with_the_same_psk() {
        let (server, client) = handshake(b"the very same key", b"the very same key");
        let server = server.unwrap();
        let client = client.unwrap();
        assert_eq!(server.next_seq, 42);
        let tag = server.session.frame_tag(DIR_TO_BACKUP, 0, KIND_DATA, b"x");
        assert!(client.verify_frame(DIR_TO_BACKUP, 0, KIND_DATA, b"x", &tag));

        let (server, client) = handshake(b"the very same key", b"a different key!!");
        assert_eq!(server.unwrap_err(), TcpError::AuthFailed);
        assert_eq!(client.unwrap_err(), TcpError::AuthFailed);
    }
}
