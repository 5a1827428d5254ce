//! The log's wire format: framed, versioned, checksummed batches of records.
//!
//! Every frame is a 16-byte header followed by a postcard payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `FTLG` |
//! | 4..6 | format version, little-endian ([`VERSION`]) |
//! | 6 | frame kind: 1 = records, 2 = ack, 3 = clone ([`crate::live_clone`]) |
//! | 7 | reserved, 0 |
//! | 8..12 | payload length, little-endian |
//! | 12..16 | CRC-32 of bytes 0..12 and of the payload |
//!
//! A records payload holds one batch: the sequence number of its first record, then
//! each record's execution point delta-encoded against the previous record's, so a
//! typical record costs a few bytes plus its event.
//!
//! Decoding never panics and never trusts a length before checking it against a limit.
//! After the first error a [`FrameDecoder`] stays failed: a byte stream that lost
//! framing cannot be trusted again.

use serde::{Deserialize, Serialize};

use crate::live_clone::CloneFrame;
use crate::record::{Ack, Event, Record};
use crate::ExecPoint;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"FTLG";
/// The wire format version this build writes and reads.
pub const VERSION: u16 = 1;
/// Size of a frame header.
pub const HEADER_LEN: usize = 16;
/// Default cap on a frame's payload; a longer length prefix is rejected before any
/// allocation.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;

const KIND_RECORDS: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_CLONE: u8 = 3;

/// Errors of the log codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad frame magic {found:02x?} (expected \"FTLG\")")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The frame was written by an incompatible version.
    #[error("unsupported log format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the frame.
        found: u16,
        /// Version this build supports.
        supported: u16,
    },
    /// The frame kind byte is not known.
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    /// The reserved byte is not zero.
    #[error("reserved header byte is {0}, expected 0")]
    Reserved(u8),
    /// The length prefix exceeds the configured limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Claimed length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The checksum does not match: the frame was corrupted.
    #[error("frame checksum mismatch: header says {expected:#010x}, content gives {actual:#010x}")]
    Checksum {
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the bytes received.
        actual: u32,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: {have} bytes of a {needed}-byte frame")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The payload does not decode (unknown record kind, bad varint, trailing bytes...).
    #[error("malformed frame payload: {0}")]
    Payload(String),
    /// Records in a batch would overflow the sequence or point counters.
    #[error("record batch overflows its sequence or point counter")]
    Overflow,
    /// Records to encode are not in execution order.
    #[error("record {seq} at {point} precedes the previous record's point {previous}")]
    NotMonotonic {
        /// The offending record.
        seq: u64,
        /// Its point.
        point: ExecPoint,
        /// The previous record's point.
        previous: ExecPoint,
    },
    /// A batch to encode is not a run of consecutive sequence numbers.
    #[error("record batch is not consecutive: expected seq {expected}, found {found}")]
    NotConsecutive {
        /// Expected sequence number.
        expected: u64,
        /// Found sequence number.
        found: u64,
    },
    /// The decoder failed earlier and refuses further input.
    #[error("decoder failed earlier: {0}")]
    Poisoned(Box<CodecError>),
}

/// Result alias of this module.
pub type Result<T, E = CodecError> = std::result::Result<T, E>;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A batch of consecutive records.
    Records(Vec<Record>),
    /// An acknowledgement.
    Ack(Ack),
    /// A message of a live clone.
    Clone(CloneFrame),
}

#[derive(Serialize, Deserialize)]
struct WireItem {
    dcount: u64,
    sub: u64,
    event: Event,
}

#[derive(Serialize, Deserialize)]
struct WireBatch {
    first_seq: u64,
    items: Vec<WireItem>,
}

#[derive(Serialize)]
struct WireBatchRef<'a> {
    first_seq: u64,
    items: Vec<WireItemRef<'a>>,
}

#[derive(Serialize)]
struct WireItemRef<'a> {
    dcount: u64,
    sub: u64,
    event: &'a Event,
}

fn header(kind: u8, payload: &[u8]) -> Result<[u8; HEADER_LEN]> {
    let len = u32::try_from(payload.len()).map_err(|_| CodecError::PayloadTooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[6] = kind;
    h[7] = 0;
    h[8..12].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&h[0..12], payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(head);
    c.update(payload);
    c.finalize()
}

fn push_frame(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let h = header(kind, payload)?;
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    Ok(())
}

/// Append one frame holding `records` to `out`.
///
/// The records must have consecutive sequence numbers and non-decreasing points.
///
/// # Errors
///
/// [`CodecError::NotConsecutive`] or [`CodecError::NotMonotonic`] when they do not,
/// [`CodecError::Overflow`] when the sequence numbers run past `u64::MAX`,
/// [`CodecError::Payload`] when a record cannot be serialized, and
/// [`CodecError::PayloadTooLarge`] for a frame over 4 GiB. On an error nothing is
/// appended.
pub fn encode_records(records: &[Record], out: &mut Vec<u8>) -> Result<()> {
    let first_seq = records.first().map_or(0, |r| r.seq);
    let mut items = Vec::with_capacity(records.len());
    let mut prev = ExecPoint::ZERO;
    for (i, r) in records.iter().enumerate() {
        let expected = first_seq
            .checked_add(i as u64)
            .ok_or(CodecError::Overflow)?;
        if r.seq != expected {
            return Err(CodecError::NotConsecutive {
                expected,
                found: r.seq,
            });
        }
        if i > 0 && r.point < prev {
            return Err(CodecError::NotMonotonic {
                seq: r.seq,
                point: r.point,
                previous: prev,
            });
        }
        items.push(WireItemRef {
            dcount: r.point.count - prev.count,
            sub: r.point.sub,
            event: &r.event,
        });
        prev = r.point;
    }
    let payload = postcard::to_stdvec(&WireBatchRef { first_seq, items })
        .map_err(|e| CodecError::Payload(e.to_string()))?;
    push_frame(KIND_RECORDS, &payload, out)
}

/// Append one frame holding `ack` to `out`.
///
/// # Errors
///
/// [`CodecError::Payload`] when the acknowledgement cannot be serialized; nothing is
/// appended then.
pub fn encode_ack(ack: &Ack, out: &mut Vec<u8>) -> Result<()> {
    let payload = postcard::to_stdvec(ack).map_err(|e| CodecError::Payload(e.to_string()))?;
    push_frame(KIND_ACK, &payload, out)
}

/// Append one frame holding a live-clone message to `out`. The message is
/// serialized in place, behind its header, since a message of pages is large; on an
/// error `out` is as it was.
///
/// # Errors
///
/// [`CodecError::Payload`] when the message cannot be serialized, and
/// [`CodecError::PayloadTooLarge`] for a frame over 4 GiB.
pub fn encode_clone(msg: &CloneFrame, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    out.reserve(HEADER_LEN + msg.msg.size_hint());
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let res = postcard::to_extend(msg, Append(out))
        .map_err(|e| CodecError::Payload(e.to_string()))
        .and_then(|Append(out)| header(KIND_CLONE, &out[start + HEADER_LEN..]));
    match res {
        Ok(h) => {
            out[start..start + HEADER_LEN].copy_from_slice(&h);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Serialization straight onto the end of a borrowed buffer.
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

/// The size in bytes of a whole frame that starts at the front of `bytes`, once its
/// header has been validated; `Ok(None)` if the header is not complete yet.
fn frame_len(bytes: &[u8], max_payload: usize) -> Result<Option<usize>> {
    if bytes.len() < HEADER_LEN {
        // Fail fast on a wrong magic, even before the whole header is here.
        let n = bytes.len().min(4);
        if bytes[..n] != MAGIC[..n] {
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&bytes[..n]);
            return Err(CodecError::BadMagic { found });
        }
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != MAGIC {
        return Err(CodecError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(CodecError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    if !matches!(bytes[6], KIND_RECORDS | KIND_ACK | KIND_CLONE) {
        return Err(CodecError::UnknownFrameKind(bytes[6]));
    }
    if bytes[7] != 0 {
        return Err(CodecError::Reserved(bytes[7]));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if len > max_payload {
        return Err(CodecError::PayloadTooLarge {
            len,
            max: max_payload,
        });
    }
    Ok(Some(HEADER_LEN + len))
}

/// The sequence numbers `(first, last)` of the records in an encoded records frame,
/// read from the start of its payload without decoding the records (a transport that
/// keeps frames to resend, or answers where to resume, needs only these); `None` for
/// any other frame, an empty batch, or bytes that are not a frame. The header's
/// checksum is not verified here: [`decode_frame`] does that.
pub fn peek_record_range(frame: &[u8]) -> Option<(u64, u64)> {
    if frame.len() <= HEADER_LEN || frame[..4] != MAGIC || frame[6] != KIND_RECORDS {
        return None;
    }
    // A WireBatch starts with its first sequence number, then the item count.
    let (first, rest) = postcard::take_from_bytes::<u64>(&frame[HEADER_LEN..]).ok()?;
    let (count, _) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let last = first.checked_add(count.checked_sub(1)?)?;
    Some((first, last))
}

/// Decode exactly one whole frame; trailing bytes are an error.
///
/// # Errors
///
/// A [`CodecError`] naming what is wrong: the magic, version, kind or reserved byte
/// of the header, a payload over the default limit, a checksum mismatch, a frame
/// shorter or longer than its header says, or a payload that does not decode.
/// Never a panic.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame> {
    decode_frame_with_limit(bytes, DEFAULT_MAX_PAYLOAD)
}

fn decode_frame_with_limit(bytes: &[u8], max_payload: usize) -> Result<Frame> {
    let needed = match frame_len(bytes, max_payload)? {
        Some(n) => n,
        None => {
            return Err(CodecError::Truncated {
                needed: HEADER_LEN,
                have: bytes.len(),
            })
        }
    };
    if bytes.len() < needed {
        return Err(CodecError::Truncated {
            needed,
            have: bytes.len(),
        });
    }
    if bytes.len() > needed {
        return Err(CodecError::Payload(format!(
            "{} trailing bytes after the frame",
            bytes.len() - needed
        )));
    }
    let payload = &bytes[HEADER_LEN..needed];
    let expected = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let actual = checksum(&bytes[0..12], payload);
    if expected != actual {
        return Err(CodecError::Checksum { expected, actual });
    }
    match bytes[6] {
        KIND_ACK => {
            let ack: Ack = strict_from_bytes(payload)?;
            Ok(Frame::Ack(ack))
        }
        KIND_CLONE => strict_from_bytes(payload).map(Frame::Clone),
        _ => decode_batch(payload).map(Frame::Records),
    }
}

fn strict_from_bytes<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T> {
    let (v, rest) =
        postcard::take_from_bytes(payload).map_err(|e| CodecError::Payload(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Payload(format!(
            "{} trailing bytes in payload",
            rest.len()
        )));
    }
    Ok(v)
}

fn decode_batch(payload: &[u8]) -> Result<Vec<Record>> {
    let batch: WireBatch = strict_from_bytes(payload)?;
    let mut out = Vec::with_capacity(batch.items.len());
    let mut count = 0u64;
    for (i, item) in batch.items.into_iter().enumerate() {
        count = count.checked_add(item.dcount).ok_or(CodecError::Overflow)?;
        let seq = batch
            .first_seq
            .checked_add(i as u64)
            .ok_or(CodecError::Overflow)?;
        out.push(Record {
            seq,
            point: ExecPoint {
                count,
                sub: item.sub,
            },
            event: item.event,
        });
    }
    Ok(out)
}

/// An incremental decoder for a byte stream of frames (a TCP stream, a file).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_payload: usize,
    failed: Option<CodecError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with [`DEFAULT_MAX_PAYLOAD`].
    pub fn new() -> FrameDecoder {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    /// A decoder that rejects frames whose payload exceeds `max_payload` bytes.
    pub fn with_max_payload(max_payload: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_payload,
            failed: None,
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    ///
    /// What [`decode_frame`] reports for the next frame (with this decoder's payload
    /// limit). The decoder stays failed: every later call returns
    /// [`CodecError::Poisoned`] holding the first error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(e) = &self.failed {
            return Err(CodecError::Poisoned(Box::new(e.clone())));
        }
        let res = self.next_inner();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn next_inner(&mut self) -> Result<Option<Frame>> {
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return Ok(None);
        }
        let needed = match frame_len(avail, self.max_payload)? {
            Some(n) => n,
            None => return Ok(None),
        };
        if avail.len() < needed {
            return Ok(None);
        }
        let frame = decode_frame_with_limit(&avail[..needed], self.max_payload)?;
        self.start += needed;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }

    /// Declare the end of the stream: an error if a partial frame is left over.
    ///
    /// # Errors
    ///
    /// [`CodecError::Truncated`] when bytes of an incomplete frame are buffered, and
    /// [`CodecError::Poisoned`] when the decoder had already failed.
    pub fn finish(&self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(CodecError::Poisoned(Box::new(e.clone())));
        }
        let have = self.buffered();
        if have == 0 {
            return Ok(());
        }
        let needed = frame_len(&self.buf[self.start..], self.max_payload)?.unwrap_or(HEADER_LEN);
        Err(CodecError::Truncated { needed, have })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ranges_peek_from_the_payload() {
        use crate::{Ack, AsyncEvent, Event, ExecPoint, IoId, Record};
        for (first, n) in [(1u64, 1u64), (127, 3), (128, 200), (u64::MAX / 4, 300)] {
            let recs: Vec<Record> = (0..n)
                .map(|i| Record {
                    seq: first + i,
                    point: ExecPoint::at(1000 + i * 3),
                    event: Event::Async(AsyncEvent::IoComplete {
                        io: IoId(i),
                        status: 0,
                        data: Some(bytes::Bytes::from(vec![7u8; 5])),
                    }),
                })
                .collect();
            let mut buf = Vec::new();
            encode_records(&recs, &mut buf).unwrap();
            assert_eq!(peek_record_range(&buf), Some((first, first + n - 1)));
        }
        let mut ack = Vec::new();
        encode_ack(&Ack::default(), &mut ack).unwrap();
        assert_eq!(peek_record_range(&ack), None);
        let mut empty = Vec::new();
        encode_records(&[], &mut empty).unwrap();
        assert_eq!(peek_record_range(&empty), None);
        assert_eq!(peek_record_range(b"garbage"), None);
        assert_eq!(peek_record_range(&[]), None);
    }
    use crate::record::{AsyncEvent, DeviceId, IoId, OutputSeq};
    use bytes::Bytes;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                seq: 7,
                point: ExecPoint::at(1000),
                event: Event::Input {
                    device: DeviceId(2),
                    data: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]),
                },
            },
            Record {
                seq: 8,
                point: ExecPoint::at(1003),
                event: Event::Async(AsyncEvent::IoComplete {
                    io: IoId(3),
                    status: 0,
                    data: Some(Bytes::from(vec![9u8; 512])),
                }),
            },
            Record {
                seq: 9,
                point: ExecPoint {
                    count: 1003,
                    sub: 4,
                },
                event: Event::Output {
                    seq: OutputSeq(1),
                    digest: 0xdead,
                },
            },
        ]
    }

    #[test]
    fn round_trip_records_and_ack() {
        let mut buf = Vec::new();
        encode_records(&sample(), &mut buf).unwrap();
        encode_ack(
            &Ack {
                received: 9,
                replayed: 8,
            },
            &mut buf,
        )
        .unwrap();
        let mut d = FrameDecoder::new();
        // Feed byte by byte: framing must survive any split.
        for b in &buf {
            d.push(std::slice::from_ref(b));
        }
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Records(sample())));
        assert_eq!(
            d.next_frame().unwrap(),
            Some(Frame::Ack(Ack {
                received: 9,
                replayed: 8
            }))
        );
        assert_eq!(d.next_frame().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn clone_frames_round_trip_and_refuse_damage() {
        use crate::live_clone::{CloneMsg, PageCopy, PageData};
        let msgs = vec![
            CloneMsg::Pages {
                round: 3,
                pages: vec![
                    PageCopy {
                        index: 7,
                        data: PageData::Zero,
                    },
                    PageCopy {
                        index: 9,
                        data: PageData::Full(Bytes::from(vec![0xab; 64])),
                    },
                ],
            },
            CloneMsg::RoundAck { round: 3 },
            CloneMsg::Abort {
                reason: "no".into(),
            },
        ];
        let msgs: Vec<CloneFrame> = msgs
            .into_iter()
            .enumerate()
            .map(|(n, msg)| CloneFrame { n: n as u64, msg })
            .collect();
        let mut buf = Vec::new();
        for m in &msgs {
            encode_clone(m, &mut buf).unwrap();
        }
        let mut d = FrameDecoder::new();
        d.push(&buf);
        for m in &msgs {
            assert_eq!(d.next_frame().unwrap(), Some(Frame::Clone(m.clone())));
        }
        let mut one = Vec::new();
        encode_clone(&msgs[0], &mut one).unwrap();
        let last = one.len() - 1;
        one[last] ^= 1;
        assert!(matches!(
            decode_frame(&one),
            Err(CodecError::Checksum { .. })
        ));
        // A payload that is not a clone message, correctly framed.
        let mut junk = Vec::new();
        push_frame(KIND_CLONE, &[0xff, 0xff, 0xff], &mut junk).unwrap();
        assert!(matches!(decode_frame(&junk), Err(CodecError::Payload(_))));
    }

    #[test]
    fn rejects_non_consecutive_and_backwards() {
        let mut r = sample();
        r[1].seq = 20;
        assert!(matches!(
            encode_records(&r, &mut Vec::new()),
            Err(CodecError::NotConsecutive {
                expected: 8,
                found: 20
            })
        ));
        let mut r = sample();
        r[1].point = ExecPoint::at(5);
        assert!(matches!(
            encode_records(&r, &mut Vec::new()),
            Err(CodecError::NotMonotonic { seq: 8, .. })
        ));
    }

    #[test]
    fn typed_errors_for_bad_frames() {
        let mut good = Vec::new();
        encode_records(&sample(), &mut good).unwrap();

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode_frame(&bad),
            Err(CodecError::BadMagic { .. })
        ));

        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            decode_frame(&bad),
            Err(CodecError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );

        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(matches!(
            decode_frame(&bad),
            Err(CodecError::Checksum { .. })
        ));

        assert!(matches!(
            decode_frame(&good[..good.len() - 3]),
            Err(CodecError::Truncated { .. })
        ));

        let mut bad = good.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&bad),
            Err(CodecError::PayloadTooLarge { .. })
        ));

        // An unknown record kind, with a valid checksum.
        let payload = [7u8, 1, 0, 0, 0xEE];
        let mut f = header(KIND_RECORDS, &payload).unwrap().to_vec();
        f.extend_from_slice(&payload);
        assert!(matches!(decode_frame(&f), Err(CodecError::Payload(_))));
    }

    #[test]
    fn decoder_stays_failed_and_reports_partial_tail() {
        let mut good = Vec::new();
        encode_records(&sample(), &mut good).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&good[..10]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(matches!(d.finish(), Err(CodecError::Truncated { .. })));
        d.push(b"garbage-garbage-garbage");
        assert!(d.next_frame().is_err());
        assert!(matches!(d.next_frame(), Err(CodecError::Poisoned(_))));
    }
}
