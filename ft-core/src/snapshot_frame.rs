//! The frame around a machine snapshot: magic, version, checksum, then a metadata
//! section (the backend's serialized CPU and device state) and a memory section.
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic (the backend's own) |
//! | 8..12 | version, little-endian |
//! | 12..16 | CRC-32 of everything after byte 16 |
//! | 16..24 | metadata length `m`, little-endian |
//! | 24..24+m | metadata |
//! | .. +8 | memory length `n`, little-endian |
//! | .. +n | memory |
//!
//! [`decode`] checks magic, version and checksum and every length before it hands out
//! anything, so a damaged snapshot is refused before any state is touched.

/// Errors of snapshot framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes are not a snapshot of this kind.
    #[error("not a {0} snapshot (bad magic)")]
    BadMagic(&'static str),
    /// Another format version.
    #[error("snapshot version {found}, this build reads {supported}")]
    Version {
        /// Version in the snapshot.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The content does not match its checksum.
    #[error("snapshot checksum mismatch")]
    Checksum,
    /// A section is cut short or has trailing bytes.
    #[error("truncated or malformed snapshot ({0})")]
    Truncated(&'static str),
}

/// Result alias of this module.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

impl From<SnapshotError> for crate::SourceError {
    fn from(e: SnapshotError) -> Self {
        crate::SourceError::Snapshot(e.to_string())
    }
}

/// Frame `meta` and `memory` as one snapshot.
pub fn encode(magic: &[u8; 8], version: u32, meta: &[u8], memory: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + meta.len() + memory.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // checksum, filled below
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(&(memory.len() as u64).to_le_bytes());
    out.extend_from_slice(memory);
    let crc = crc32fast::hash(&out[16..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Check a snapshot's frame and return its (metadata, memory) sections. `kind` names
/// the backend in errors.
///
/// # Errors
///
/// [`SnapshotError::BadMagic`] for another backend's (or no) snapshot,
/// [`SnapshotError::Version`] for another format version,
/// [`SnapshotError::Checksum`] when the content was altered, and
/// [`SnapshotError::Truncated`] naming the section that is cut short.
pub fn decode<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    version: u32,
    kind: &'static str,
) -> Result<(&'a [u8], &'a [u8])> {
    if bytes.len() < 24 || &bytes[0..8] != magic {
        return Err(SnapshotError::BadMagic(kind));
    }
    let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if found != version {
        return Err(SnapshotError::Version {
            found,
            supported: version,
        });
    }
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if crc32fast::hash(&bytes[16..]) != crc {
        return Err(SnapshotError::Checksum);
    }
    let (meta_len, rest) =
        split_len(&bytes[16..]).ok_or(SnapshotError::Truncated("metadata length"))?;
    if rest.len() < meta_len {
        return Err(SnapshotError::Truncated("metadata"));
    }
    let (meta, rest) = rest.split_at(meta_len);
    let (mem_len, memory) = split_len(rest).ok_or(SnapshotError::Truncated("memory length"))?;
    if memory.len() != mem_len {
        return Err(SnapshotError::Truncated("memory"));
    }
    Ok((meta, memory))
}

fn split_len(b: &[u8]) -> Option<(usize, &[u8])> {
    if b.len() < 8 {
        return None;
    }
    let (l, rest) = b.split_at(8);
    let mut a = [0u8; 8];
    a.copy_from_slice(l);
    usize::try_from(u64::from_le_bytes(a))
        .ok()
        .map(|n| (n, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"TESTSNAP";

    #[test]
    fn round_trip_and_refusals() {
        let s = encode(MAGIC, 3, b"meta", &[1, 2, 3]);
        assert_eq!(
            decode(&s, MAGIC, 3, "test"),
            Ok((&b"meta"[..], &[1u8, 2, 3][..]))
        );
        assert_eq!(
            decode(&s, b"OTHERSNP", 3, "test"),
            Err(SnapshotError::BadMagic("test"))
        );
        assert_eq!(
            decode(&s, MAGIC, 4, "test"),
            Err(SnapshotError::Version {
                found: 3,
                supported: 4
            })
        );
        let mut bad = s.clone();
        bad[20] ^= 1;
        assert_eq!(decode(&bad, MAGIC, 3, "test"), Err(SnapshotError::Checksum));
        assert!(decode(&s[..s.len() - 1], MAGIC, 3, "test").is_err());
        assert!(decode(&[], MAGIC, 3, "test").is_err());
    }
}
