//! Entry points for fuzzing the TCP channel's handshake and frame layer (the
//! `tcp_wire` target in `fuzz/`). Not a stable API: hidden from the docs, and it may
//! change with the wire code it wraps.
//!
//! Everything here is a pure function over byte slices: the peer's bytes are read from
//! an in-memory stream, what this end sends is collected, no socket or thread is
//! involved, and both ends use the fixed [`NONCE`] instead of the operating system's
//! randomness, so a run is deterministic and a harness can compute the transcript (and
//! so the valid tags) itself. The functions called are the ones the link runs:
//! `wire::server_handshake_with`, `wire::client_handshake_with`, `wire::read_frame`,
//! `wire::write_frame`, `wire::peek_records` and the backup's resume-answer check.

use std::io::{self, Read, Write};

use ft_core::log_codec::{self, Frame};
use ft_core::Role;

use super::link::resume_answer;
pub use super::wire::Identity;
use super::wire::{self, ReadError, Session};
use super::{Result, TcpError};

pub use super::wire::{
    CLIENT_HELLO_LEN, CONFIRM_LEN, FRAME_HEADER_LEN, NONCE_LEN, SERVER_HELLO_LEN, TAG_LEN,
};

/// The nonce both ends use here (the link itself uses fresh OS randomness).
pub const NONCE: [u8; NONCE_LEN] = [0x6e; NONCE_LEN];
/// Frame kind: an encoded log frame.
pub const KIND_DATA: u8 = wire::KIND_DATA;
/// Frame kind: resume from a sequence number.
pub const KIND_RESUME: u8 = wire::KIND_RESUME;
/// Frame kind: resume refused.
pub const KIND_REFUSED: u8 = wire::KIND_REFUSED;
/// Frame kind: goodbye.
pub const KIND_BYE: u8 = wire::KIND_BYE;
/// Direction byte of frames from the primary to the backup.
pub const DIR_TO_BACKUP: u8 = wire::DIR_TO_BACKUP;
/// Direction byte of frames from the backup to the primary.
pub const DIR_TO_PRIMARY: u8 = wire::DIR_TO_PRIMARY;
/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = wire::MAX_CONTROL_PAYLOAD;

/// An in-memory stream: reads come from the peer's bytes (then end of stream), writes
/// are collected.
struct Scripted<'a> {
    input: &'a [u8],
    read: usize,
    sent: Vec<u8>,
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = self.input.get(self.read..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sent.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection's session key (opaque).
#[derive(Debug, Clone)]
pub struct FuzzSession(Session);

/// What one end of a handshake did against scripted peer bytes.
#[derive(Debug)]
pub struct Handshake<T> {
    /// The handshake's result.
    pub result: Result<T>,
    /// The bytes this end sent.
    pub sent: Vec<u8>,
    /// How many of the peer's bytes it read.
    pub consumed: usize,
}

/// The primary's handshake against `peer` (the backup's hello, then its key
/// confirmation): the session and the sequence number the backup asked for.
pub fn primary_handshake(peer: &[u8], psk: &[u8], me: &Identity) -> Handshake<(FuzzSession, u64)> {
    let mut s = Scripted {
        input: peer,
        read: 0,
        sent: Vec::new(),
    };
    let result = wire::server_handshake_with(&mut s, psk, me, || Ok(NONCE))
        .map(|acc| (FuzzSession(acc.session), acc.next_seq));
    Handshake {
        result,
        sent: s.sent,
        consumed: s.read,
    }
}

/// The backup's handshake against `peer` (the primary's hello or refusal), asking for
/// record `next_seq`.
pub fn backup_handshake(
    peer: &[u8],
    psk: &[u8],
    me: &Identity,
    next_seq: u64,
) -> Handshake<FuzzSession> {
    let mut s = Scripted {
        input: peer,
        read: 0,
        sent: Vec::new(),
    };
    let result = wire::client_handshake_with(&mut s, psk, me, next_seq, NONCE).map(FuzzSession);
    Handshake {
        result,
        sent: s.sent,
        consumed: s.read,
    }
}

/// The backup's hello, as the link sends it.
pub fn backup_hello(me: &Identity, nonce: &[u8; NONCE_LEN], next_seq: u64) -> Vec<u8> {
    wire::client_hello(me, nonce, next_seq)
}

/// The session key of a handshake whose transcript (backup hello, then the primary's
/// hello without its tag) is `transcript`.
pub fn session_for(psk: &[u8], transcript: &[u8]) -> Result<FuzzSession> {
    Session::derive(psk, transcript).map(FuzzSession)
}

/// The sequence numbers `(first, last)` the link reads from a records frame without
/// decoding it.
pub fn peek_records(frame: &[u8]) -> Option<(u64, u64)> {
    wire::peek_records(frame)
}

/// The outcome of reading one frame.
#[derive(Debug)]
pub enum FrameRead {
    /// An authentic frame.
    Frame {
        /// Its kind.
        kind: u8,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The stream ended cleanly between frames.
    Eof,
    /// The stream failed.
    Io(io::ErrorKind),
    /// Not a valid, authentic frame.
    Bad(TcpError),
}

impl From<std::result::Result<(u8, Vec<u8>), ReadError>> for FrameRead {
    fn from(r: std::result::Result<(u8, Vec<u8>), ReadError>) -> Self {
        match r {
            Ok((kind, payload)) => FrameRead::Frame { kind, payload },
            Err(ReadError::Eof) => FrameRead::Eof,
            Err(ReadError::Io(e)) => FrameRead::Io(e.kind()),
            Err(ReadError::Bad(e)) => FrameRead::Bad(e),
        }
    }
}

/// One data frame the reader delivered, with what the link learned from it.
#[derive(Debug)]
pub struct Delivered {
    /// The payload (an encoded log frame, as far as the peer is honest).
    pub payload: Vec<u8>,
    /// Backup: the record range the link read from it.
    pub range: Option<(u64, u64)>,
    /// Primary: the `received` of the ack it decoded from it.
    pub ack_received: Option<u64>,
}

/// What a reader made of a stream of frames.
#[derive(Debug)]
pub struct StreamRead {
    /// Data frames delivered, in order.
    pub delivered: Vec<Delivered>,
    /// Why it stopped: `Ok` at a clean end of stream, else the error that drops the
    /// connection (a goodbye is [`TcpError::PeerClosed`]).
    pub end: Result<()>,
    /// How many bytes it read.
    pub consumed: usize,
}

impl FuzzSession {
    /// The primary's key-confirmation tag.
    pub fn primary_finished(&self) -> [u8; TAG_LEN] {
        self.0.finished(wire::SERVER_FINISHED)
    }

    /// The backup's key-confirmation tag.
    pub fn backup_finished(&self) -> [u8; TAG_LEN] {
        self.0.finished(wire::CLIENT_FINISHED)
    }

    /// An authentic frame, as the writer writes it. A payload over 4 GiB gives an empty
    /// vector.
    pub fn frame(&self, dir: u8, counter: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len() + TAG_LEN);
        if wire::write_frame(&mut out, &self.0, dir, counter, kind, payload).is_err() {
            out.clear();
        }
        out
    }

    /// Read one frame from the front of `input`, advancing it.
    pub fn read_frame(
        &self,
        input: &mut &[u8],
        dir: u8,
        counter: u64,
        max_data: usize,
    ) -> FrameRead {
        wire::read_frame(input, &self.0, dir, counter, max_data).into()
    }

    /// The backup reads the primary's resume answer (frame 0) from the front of `input`
    /// and checks it against the record it asked for.
    pub fn read_resume_answer(&self, input: &mut &[u8], want: u64) -> Result<()> {
        let answer = wire::read_frame(input, &self.0, DIR_TO_BACKUP, 0, MAX_CONTROL_PAYLOAD);
        resume_answer(answer, want)
    }

    /// Read frames as the reader thread of a link with `role` does, from frame number
    /// `counter` on, until the stream ends or a frame drops the connection.
    pub fn read_stream(
        &self,
        role: Role,
        input: &[u8],
        counter: u64,
        max_frame: usize,
    ) -> StreamRead {
        let dir = match role {
            Role::Primary => DIR_TO_PRIMARY,
            Role::Backup => DIR_TO_BACKUP,
        };
        let mut rest = input;
        let mut counter = counter;
        let mut delivered = Vec::new();
        let end = loop {
            match wire::read_frame(&mut rest, &self.0, dir, counter, max_frame) {
                Ok((wire::KIND_DATA, payload)) => {
                    counter = counter.saturating_add(1);
                    let (range, ack_received) = match role {
                        Role::Primary => match log_codec::decode_frame(&payload) {
                            Ok(Frame::Ack(a)) => (None, Some(a.received)),
                            _ => (None, None),
                        },
                        Role::Backup => (wire::peek_records(&payload), None),
                    };
                    delivered.push(Delivered {
                        payload,
                        range,
                        ack_received,
                    });
                }
                Ok((wire::KIND_BYE, _)) => break Err(TcpError::PeerClosed),
                Ok((kind, _)) => {
                    break Err(TcpError::Protocol(format!(
                        "frame kind {kind} after the handshake"
                    )))
                }
                Err(ReadError::Eof) => break Ok(()),
                Err(ReadError::Io(e)) => break Err(wire::io_err("reading", &e)),
                Err(ReadError::Bad(e)) => break Err(e),
            }
        };
        StreamRead {
            delivered,
            end,
            consumed: input.len() - rest.len(),
        }
    }
}
