//! Guest RAM: a flat byte array mapped at [`RAM_BASE`], with 4 KiB dirty-page tracking
//! and an incremental content digest.
//!
//! Every store through this type (the CPU's `store_*` fast path and [`Ram::write`])
//! sets the touched pages' bits in one bitmap, and that is all the fast path does.
//! The bitmap is folded, when someone asks, into what its consumers need:
//! [`Ram::take_dirty_pages`] returns and clears the pages written since it was last
//! called (live clone, incremental snapshots); [`Ram::content_digest`] rehashes only
//! the pages written since the last digest and combines per-page hashes, so a digest
//! of a large, mostly idle memory costs little; [`Ram::page_is_zero`] knows, without
//! reading, the pages that were never written since they were last known to hold
//! only zeros. Writes made through [`Ram::as_mut_slice`] bypass dirty tracking, and
//! make the digest rehash and the zero knowledge forget everything.

use std::fmt;

use ft_core::device_set::model::{GuestMemory, ModelError};

/// Guest-physical address of the first byte of RAM.
pub const RAM_BASE: u64 = 0x8000_0000;

/// Size in bytes of a dirty-tracking page.
pub const PAGE_SIZE: u64 = 4096;

const PAGE_SHIFT: u32 = 12;

/// The hash of one page's bytes (a short last page is hashed at its length).
fn page_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Bit `page` of a bitmap.
#[inline(always)]
fn bit(map: &[u64], page: usize) -> bool {
    map.get(page >> 6)
        .is_some_and(|w| (w >> (page & 63)) & 1 == 1)
}

/// Errors of RAM accesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The access `[addr, addr + len)` is not entirely inside RAM.
    #[error("access of {len} byte(s) at {addr:#x} is outside RAM")]
    OutOfRange {
        /// First guest-physical address of the access.
        addr: u64,
        /// Length of the access in bytes.
        len: u64,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// Guest RAM of a fixed size mapped at [`RAM_BASE`], with a dirty-page bitmap.
///
/// Two RAMs are equal when their contents are; the tracking state is not compared.
#[derive(Clone)]
pub struct Ram {
    data: Vec<u8>,
    /// Pages stored to since the last fold. One bit per [`PAGE_SIZE`] page, page `i`
    /// is bit `i % 64` of word `i / 64` (the same layout in every bitmap here).
    dirty: Vec<u64>,
    /// Pages written since the dirty log was last taken or cleared (folded).
    log: Vec<u64>,
    /// Pages whose entry in `hashes` is out of date (folded).
    stale: Vec<u64>,
    /// Pages known to hold only zeros, unless their `dirty` bit says otherwise.
    zero: Vec<u64>,
    /// Per-page content hashes, valid where `stale` is clear.
    hashes: Vec<u64>,
}

impl PartialEq for Ram {
    fn eq(&self, other: &Ram) -> bool {
        self.data == other.data
    }
}

impl Eq for Ram {}

impl fmt::Debug for Ram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ram")
            .field("base", &format_args!("{RAM_BASE:#x}"))
            .field("size", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl Ram {
    /// Creates zero-filled RAM of `size` bytes at [`RAM_BASE`], with no page dirty.
    pub fn new(size: usize) -> Ram {
        let pages = size.div_ceil(PAGE_SIZE as usize);
        let words = pages.div_ceil(64);
        let full = size / PAGE_SIZE as usize;
        let mut hashes = vec![page_hash(&[0u8; PAGE_SIZE as usize]); pages];
        if full < pages {
            // A short last page: hashed at its own length.
            hashes[full] = page_hash(&vec![0u8; size - full * PAGE_SIZE as usize]);
        }
        Ram {
            data: vec![0; size],
            dirty: vec![0; words],
            log: vec![0; words],
            stale: vec![0; words],
            zero: vec![u64::MAX; words],
            hashes,
        }
    }

    /// Move the stores' bits into the consumers' bitmaps.
    fn fold(&mut self) {
        for (i, d) in self.dirty.iter_mut().enumerate() {
            let w = std::mem::take(d);
            if w != 0 {
                self.log[i] |= w;
                self.stale[i] |= w;
                self.zero[i] &= !w;
            }
        }
    }

    /// Size of RAM in bytes.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Number of dirty-tracking pages (the last one may be partial).
    pub fn page_count(&self) -> u64 {
        (self.data.len() as u64).div_ceil(PAGE_SIZE)
    }

    /// Whether `[addr, addr + len)` lies entirely inside RAM (a zero-length range
    /// must start inside RAM or exactly at its end).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.range(addr, len).is_some()
    }

    /// Byte range in `data` for an access, if entirely inside RAM.
    #[inline(always)]
    fn range(&self, addr: u64, len: u64) -> Option<std::ops::Range<usize>> {
        let off = addr.checked_sub(RAM_BASE)?;
        let end = off.checked_add(len)?;
        if end > self.data.len() as u64 {
            return None;
        }
        Some(usize::try_from(off).ok()?..usize::try_from(end).ok()?)
    }

    /// Copies RAM at `addr` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let r = self
            .range(addr, len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    /// Copies `bytes` into RAM at `addr` and marks the touched pages dirty.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        let r = self
            .range(addr, len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        let (start, end) = (r.start, r.end);
        self.data[r].copy_from_slice(bytes);
        if end > start {
            for page in (start >> PAGE_SHIFT)..=((end - 1) >> PAGE_SHIFT) {
                self.mark_page(page);
            }
        }
        Ok(())
    }

    /// Fills `[addr, addr + len)` with zeros and marks the touched pages dirty.
    pub fn zero(&mut self, addr: u64, len: u64) -> Result<()> {
        let r = self
            .range(addr, len)
            .ok_or(MemoryError::OutOfRange { addr, len })?;
        let (start, end) = (r.start, r.end);
        self.data[r].fill(0);
        if end > start {
            for page in (start >> PAGE_SHIFT)..=((end - 1) >> PAGE_SHIFT) {
                self.mark_page(page);
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn mark_page(&mut self, page: usize) {
        if let Some(w) = self.dirty.get_mut(page >> 6) {
            *w |= 1u64 << (page & 63);
        }
    }

    /// Marks the pages of a small access (at most one page long) dirty.
    #[inline(always)]
    fn mark_small(&mut self, start: usize, end: usize) {
        self.mark_page(start >> PAGE_SHIFT);
        self.mark_page((end - 1) >> PAGE_SHIFT);
    }

    #[inline(always)]
    fn load<const N: usize>(&self, addr: u64) -> Result<[u8; N]> {
        let r = self.range(addr, N as u64).ok_or(MemoryError::OutOfRange {
            addr,
            len: N as u64,
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[r]);
        Ok(out)
    }

    #[inline(always)]
    fn store<const N: usize>(&mut self, addr: u64, bytes: [u8; N]) -> Result<()> {
        let r = self.range(addr, N as u64).ok_or(MemoryError::OutOfRange {
            addr,
            len: N as u64,
        })?;
        let (start, end) = (r.start, r.end);
        self.data[r].copy_from_slice(&bytes);
        self.mark_small(start, end);
        Ok(())
    }

    /// Loads a byte.
    #[inline(always)]
    pub fn load_u8(&self, addr: u64) -> Result<u8> {
        self.load::<1>(addr).map(u8::from_le_bytes)
    }

    /// Loads a little-endian `u16` (any alignment).
    #[inline(always)]
    pub fn load_u16(&self, addr: u64) -> Result<u16> {
        self.load::<2>(addr).map(u16::from_le_bytes)
    }

    /// Loads a little-endian `u32` (any alignment).
    #[inline(always)]
    pub fn load_u32(&self, addr: u64) -> Result<u32> {
        self.load::<4>(addr).map(u32::from_le_bytes)
    }

    /// Loads a little-endian `u64` (any alignment).
    #[inline(always)]
    pub fn load_u64(&self, addr: u64) -> Result<u64> {
        self.load::<8>(addr).map(u64::from_le_bytes)
    }

    /// Stores a byte and marks its page dirty.
    #[inline(always)]
    pub fn store_u8(&mut self, addr: u64, value: u8) -> Result<()> {
        self.store(addr, value.to_le_bytes())
    }

    /// Stores a little-endian `u16` and marks its page(s) dirty.
    #[inline(always)]
    pub fn store_u16(&mut self, addr: u64, value: u16) -> Result<()> {
        self.store(addr, value.to_le_bytes())
    }

    /// Stores a little-endian `u32` and marks its page(s) dirty.
    #[inline(always)]
    pub fn store_u32(&mut self, addr: u64, value: u32) -> Result<()> {
        self.store(addr, value.to_le_bytes())
    }

    /// Stores a little-endian `u64` and marks its page(s) dirty.
    #[inline(always)]
    pub fn store_u64(&mut self, addr: u64, value: u64) -> Result<()> {
        self.store(addr, value.to_le_bytes())
    }

    /// The whole RAM contents (offset 0 is [`RAM_BASE`]).
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    /// The whole RAM contents, mutable. Writes through this slice are NOT tracked
    /// as dirty (use [`Ram::write`] for tracked bulk writes); the digest rehashes all
    /// of memory next time, and no page is known to be zero any more.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.stale.fill(u64::MAX);
        self.zero.fill(0);
        &mut self.data
    }

    /// Whether page `page` (covering `RAM_BASE + page * PAGE_SIZE`) is dirty.
    pub fn is_page_dirty(&self, page: u64) -> bool {
        usize::try_from(page).is_ok_and(|p| bit(&self.dirty, p) || bit(&self.log, p))
    }

    /// Whether page `page` is known to hold only zeros, without reading it: it was
    /// zero when RAM was created (or last checked) and nothing was stored to it since.
    /// False means unknown, not non-zero.
    pub fn page_is_zero(&self, page: u64) -> bool {
        page < self.page_count()
            && usize::try_from(page).is_ok_and(|p| bit(&self.zero, p) && !bit(&self.dirty, p))
    }

    /// Returns the indices of the dirty pages in increasing order and clears them.
    /// Page `i` covers guest-physical `[RAM_BASE + i * PAGE_SIZE, +PAGE_SIZE)`.
    pub fn take_dirty_pages(&mut self) -> Vec<u64> {
        self.fold();
        let mut out = Vec::new();
        for (wi, w) in self.log.iter_mut().enumerate() {
            let mut bits = std::mem::take(w);
            while bits != 0 {
                let b = bits.trailing_zeros();
                out.push(wi as u64 * 64 + u64::from(b));
                bits &= bits - 1;
            }
        }
        out
    }

    /// Clears the dirty bitmap.
    pub fn clear_dirty(&mut self) {
        self.fold();
        self.log.fill(0);
    }

    /// Marks every page dirty (e.g. after restoring the contents via
    /// [`Ram::as_mut_slice`]).
    pub fn mark_all_dirty(&mut self) {
        for page in 0..self.page_count() as usize {
            self.mark_page(page);
        }
    }

    /// A digest of the contents: per-page hashes, those of pages written since the
    /// last call recomputed, combined in page order. Equal contents give equal
    /// digests, however they were written.
    pub fn content_digest(&mut self) -> u64 {
        self.fold();
        let page = PAGE_SIZE as usize;
        for (wi, w) in self.stale.iter_mut().enumerate() {
            let mut bits = std::mem::take(w);
            while bits != 0 {
                let p = wi * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = p * page;
                if let (Some(h), Some(bytes)) = (
                    self.hashes.get_mut(p),
                    self.data.get(start..(start + page).min(self.data.len())),
                ) {
                    *h = page_hash(bytes);
                }
            }
        }
        let mut combined = xxhash_rust::xxh3::Xxh3::new();
        combined.update(&(self.data.len() as u64).to_le_bytes());
        for h in &self.hashes {
            combined.update(&h.to_le_bytes());
        }
        combined.digest()
    }
}

impl GuestMemory for Ram {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), ModelError> {
        Ram::read(self, addr, buf).map_err(model_error)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> std::result::Result<(), ModelError> {
        Ram::write(self, addr, data).map_err(model_error)
    }

    fn contains(&self, addr: u64, len: u64) -> bool {
        Ram::contains(self, addr, len)
    }
}

fn model_error(e: MemoryError) -> ModelError {
    match e {
        MemoryError::OutOfRange { addr, len } => ModelError::OutOfRange { addr, len },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_dirty() {
        let mut ram = Ram::new(3 * 4096 + 10);
        assert_eq!(ram.page_count(), 4);
        assert!(ram.contains(RAM_BASE, 0));
        assert!(ram.contains(RAM_BASE + ram.size() as u64, 0));
        assert!(!ram.contains(RAM_BASE - 1, 1));
        assert!(!ram.contains(u64::MAX, 2));
        assert!(ram.load_u64(RAM_BASE + ram.size() as u64 - 7).is_err());
        ram.store_u64(RAM_BASE + 4096 - 4, 0x1122_3344_5566_7788)
            .unwrap();
        assert_eq!(
            ram.load_u64(RAM_BASE + 4096 - 4).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(ram.load_u8(RAM_BASE + 4096 - 4).unwrap(), 0x88);
        assert_eq!(ram.take_dirty_pages(), vec![0, 1]);
        assert!(ram.take_dirty_pages().is_empty());
        ram.write(RAM_BASE + 4096 * 3, &[1; 10]).unwrap();
        assert!(ram.is_page_dirty(3));
        assert!(ram.write(RAM_BASE + 4096 * 3, &[1; 11]).is_err());
        ram.clear_dirty();
        assert!(!ram.is_page_dirty(3));
        let mut buf = [0u8; 4];
        ram.read(RAM_BASE + 4096 * 3, &mut buf).unwrap();
        assert_eq!(buf, [1; 4]);
        ram.mark_all_dirty();
        assert_eq!(ram.take_dirty_pages(), vec![0, 1, 2, 3]);
    }

    /// The digest as it would be computed from scratch.
    fn full_digest(ram: &Ram) -> u64 {
        let mut fresh = Ram::new(ram.size());
        fresh.as_mut_slice().copy_from_slice(ram.as_slice());
        fresh.content_digest()
    }

    #[test]
    fn the_incremental_digest_follows_every_kind_of_write() {
        let mut ram = Ram::new(5 * 4096 + 100);
        let empty = ram.content_digest();
        assert_eq!(empty, full_digest(&ram));
        ram.store_u32(RAM_BASE + 4096 + 8, 7).unwrap();
        let one = ram.content_digest();
        assert_ne!(one, empty);
        assert_eq!(one, full_digest(&ram));
        // The dirty log and the digest are independent consumers of one bitmap.
        assert_eq!(ram.take_dirty_pages(), vec![1]);
        ram.write(RAM_BASE + 5 * 4096 + 50, &[9; 50]).unwrap();
        ram.zero(RAM_BASE + 4096, 4096).unwrap();
        let two = ram.content_digest();
        assert_eq!(two, full_digest(&ram));
        assert_eq!(ram.take_dirty_pages(), vec![1, 5]);
        ram.as_mut_slice()[3 * 4096] = 1;
        assert_eq!(ram.content_digest(), full_digest(&ram));
        assert_ne!(ram.content_digest(), two);
        // Back to all zeros: the digest of fresh RAM again.
        ram.as_mut_slice().fill(0);
        assert_eq!(ram.content_digest(), empty);
        // Another size, same bytes so far: another digest.
        assert_ne!(Ram::new(5 * 4096 + 101).content_digest(), empty);
    }

    #[test]
    fn zero_knowledge_is_never_wrong() {
        let mut ram = Ram::new(4 * 4096);
        assert!((0..4).all(|p| ram.page_is_zero(p)));
        assert!(!ram.page_is_zero(4));
        ram.store_u8(RAM_BASE + 2 * 4096, 1).unwrap();
        assert!(!ram.page_is_zero(2), "before any fold");
        ram.content_digest();
        assert!(!ram.page_is_zero(2), "after a fold");
        assert!(ram.page_is_zero(1) && ram.page_is_zero(3));
        // Writing zeros still counts as a write: unknown, not wrong.
        ram.write(RAM_BASE + 3 * 4096, &[0; 8]).unwrap();
        assert!(!ram.page_is_zero(3));
        let _ = ram.as_mut_slice();
        assert!((0..4).all(|p| !ram.page_is_zero(p)));
    }
}
