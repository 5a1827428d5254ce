//! The client protocol: how an external client talks to the guest service through a
//! node's client bridge.
//!
//! One TCP connection per client. Each frame is a little-endian `u32` length followed
//! by that many bytes; the first byte says what the frame is:
//!
//! | kind | direction | fields (little-endian) |
//! |---|---|---|
//! | `1` request | client → node | `retry: u8`, then the payload: one packet for the guest |
//! | `16` hello | node → client | `serving: u8`, `node: u64` |
//! | `17` output | node → client | `seq: u64`, `device: u16`, `possible_repeat: u8`, then the bytes |
//! | `18` synced | node → client | `outputs: u64`, the number of outputs sent before it |
//!
//! A node that is not live answers `hello` with `serving = 0` and closes. A serving
//! node sends `hello`, then every guest output it still holds (its history), then
//! `synced`, then each new output as the guest produces it.

use std::io::{self, Read, Write};

use bytes::Bytes;

/// The largest frame either side accepts (a packet is at most 2 KiB; console lines
/// are shorter).
pub const MAX_FRAME: usize = 64 * 1024;

const REQUEST: u8 = 1;
const HELLO: u8 = 16;
const OUTPUT: u8 = 17;
const SYNCED: u8 = 18;

/// Errors of the client protocol.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// A length prefix beyond [`MAX_FRAME`] (nothing is allocated for it).
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// A frame of an unknown kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A frame too short for its kind.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
}

/// Result alias of this module.
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// One frame of the client protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to node: a packet for the guest's network device.
    Request {
        /// Sent again after a failover: the node drops it if its guest already took
        /// in the same payload (the stand-in for TCP's retransmission dedupe).
        retry: bool,
        /// The packet.
        payload: Bytes,
    },
    /// Node to client, first: whether this node serves the guest now.
    Hello {
        /// Live (or a primary): requests reach the guest.
        serving: bool,
        /// The node's id.
        node: u64,
    },
    /// Node to client: one guest output.
    Output {
        /// The output's deterministic sequence number (same on both sides).
        seq: u64,
        /// The guest device that produced it (network replies, console lines).
        device: u16,
        /// Re-sent at go-live: the old primary may have sent it already.
        possible_repeat: bool,
        /// The bytes.
        data: Bytes,
    },
    /// Node to client: every output the node held at connection time has been sent.
    Synced {
        /// How many outputs were sent before this frame.
        outputs: u64,
    },
}

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Frame::Request { retry, payload } => {
                body.push(REQUEST);
                body.push(u8::from(*retry));
                body.extend_from_slice(payload);
            }
            Frame::Hello { serving, node } => {
                body.push(HELLO);
                body.push(u8::from(*serving));
                body.extend_from_slice(&node.to_le_bytes());
            }
            Frame::Output {
                seq,
                device,
                possible_repeat,
                data,
            } => {
                body.push(OUTPUT);
                body.extend_from_slice(&seq.to_le_bytes());
                body.extend_from_slice(&device.to_le_bytes());
                body.push(u8::from(*possible_repeat));
                body.extend_from_slice(data);
            }
            Frame::Synced { outputs } => {
                body.push(SYNCED);
                body.extend_from_slice(&outputs.to_le_bytes());
            }
        }
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decode a frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame> {
        let (&kind, rest) = body.split_first().ok_or(WireError::Truncated("empty"))?;
        let u64_at = |b: &[u8], i: usize, what| -> Result<u64> {
            let mut a = [0u8; 8];
            a.copy_from_slice(b.get(i..i + 8).ok_or(WireError::Truncated(what))?);
            Ok(u64::from_le_bytes(a))
        };
        match kind {
            REQUEST => {
                let (&retry, payload) =
                    rest.split_first().ok_or(WireError::Truncated("request"))?;
                Ok(Frame::Request {
                    retry: retry != 0,
                    payload: Bytes::copy_from_slice(payload),
                })
            }
            HELLO => {
                let serving = *rest.first().ok_or(WireError::Truncated("hello"))? != 0;
                Ok(Frame::Hello {
                    serving,
                    node: u64_at(rest, 1, "hello")?,
                })
            }
            OUTPUT => {
                let seq = u64_at(rest, 0, "output")?;
                let dev = rest.get(8..10).ok_or(WireError::Truncated("output"))?;
                let repeat = *rest.get(10).ok_or(WireError::Truncated("output"))?;
                Ok(Frame::Output {
                    seq,
                    device: u16::from_le_bytes([dev[0], dev[1]]),
                    possible_repeat: repeat != 0,
                    data: Bytes::copy_from_slice(rest.get(11..).unwrap_or_default()),
                })
            }
            SYNCED => Ok(Frame::Synced {
                outputs: u64_at(rest, 0, "synced")?,
            }),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// Read one frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Truncated("length prefix")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => WireError::Truncated("frame body"),
        _ => WireError::Io(e),
    })?;
    Frame::decode(&body).map(Some)
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<()> {
    w.write_all(&frame.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Request {
                retry: true,
                payload: Bytes::from_static(b"req-1"),
            },
            Frame::Hello {
                serving: true,
                node: 7,
            },
            Frame::Output {
                seq: 9,
                device: 5,
                possible_repeat: true,
                data: Bytes::from_static(b"xyz"),
            },
            Frame::Synced { outputs: 3 },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r).unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(read_frame(&mut r), Err(WireError::TooLarge(_))));
        let mut r: &[u8] = &[5, 0, 0, 0, 1];
        assert!(matches!(read_frame(&mut r), Err(WireError::Truncated(_))));
        let mut r: &[u8] = &[2, 0];
        assert!(matches!(read_frame(&mut r), Err(WireError::Truncated(_))));
        assert!(matches!(
            Frame::decode(&[99]),
            Err(WireError::UnknownKind(99))
        ));
        assert!(matches!(
            Frame::decode(&[OUTPUT, 1, 2]),
            Err(WireError::Truncated(_))
        ));
        assert!(matches!(Frame::decode(&[]), Err(WireError::Truncated(_))));
    }
}
