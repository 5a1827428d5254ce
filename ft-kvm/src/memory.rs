//! Guest memory: one anonymous, private mapping that KVM uses as the guest's RAM from
//! guest-physical address 0.
//!
//! A documented `mmap` rather than `vm-memory`: the machine needs the whole RAM as one
//! byte slice (for digests, snapshots and the bounce-buffer DMA copy), and the vCPU runs
//! on the thread that owns the machine, so there is never a concurrent writer while a
//! slice is borrowed (see [`GuestMemory::as_slice`]).

use ft_core::device_set::model::ModelError;
use thiserror::Error;

/// Errors of guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemoryError {
    /// `mmap` failed.
    #[error("cannot map {size} bytes of guest memory: {errno}")]
    Map {
        /// Bytes requested.
        size: usize,
        /// The OS error.
        errno: String,
    },
    /// A size of zero, or not a multiple of 4 KiB.
    #[error("guest memory size {0:#x} is not a non-zero multiple of 4 KiB")]
    BadSize(usize),
    /// An access outside guest memory.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory ({size:#x} bytes)")]
    OutOfRange {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
        /// Memory size.
        size: usize,
    },
}

/// Result alias of this module.
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;

/// The page size of dirty tracking and state transfer.
pub const PAGE_SIZE: usize = 4096;

/// The guest's RAM: `size` bytes mapped at a host address, zero-filled at creation.
///
/// Writes the host makes through [`GuestMemory::write`] (device DMA) mark their pages
/// in a bitmap of their own, since KVM's dirty log sees only the guest's writes.
#[derive(Debug)]
pub struct GuestMemory {
    ptr: *mut u8,
    size: usize,
    /// Pages the host wrote through `write` since the last `take_host_dirty`, one
    /// bit per 4 KiB page (page `i` is bit `i % 64` of word `i / 64`).
    host_dirty: Vec<u64>,
}

// SAFETY: the mapping is owned by this value (no aliasing pointer escapes except to
// KVM, which only touches it while the owning machine runs its vCPU through `&mut`).
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Map `size` bytes of zeroed, private, anonymous memory.
    pub fn new(size: usize) -> Result<GuestMemory> {
        if size == 0 || !size.is_multiple_of(4096) {
            return Err(MemoryError::BadSize(size));
        }
        // SAFETY: an anonymous private mapping at an address the kernel chooses; no
        // existing memory is affected. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                size,
                errno: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(GuestMemory {
            ptr: ptr.cast::<u8>(),
            size,
            host_dirty: vec![0; (size / PAGE_SIZE).div_ceil(64)],
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The host address of guest-physical address 0 (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The whole RAM.
    ///
    /// The guest writes this memory only inside `KVM_RUN`, which the owning machine
    /// issues through `&mut self`; a shared borrow of the memory therefore never
    /// overlaps a guest write.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `size` bytes owned by `self`, initialized
        // (zero-filled by mmap); see the method docs for why nothing writes it during
        // the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr, self.size) }
    }

    /// The whole RAM, mutably (same argument as [`GuestMemory::as_slice`]).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.size) }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let bad = || MemoryError::OutOfRange {
            addr,
            len: len as u64,
            size: self.size,
        };
        let start = usize::try_from(addr).map_err(|_| bad())?;
        let end = start.checked_add(len).ok_or_else(bad)?;
        if end > self.size {
            return Err(bad());
        }
        Ok(start..end)
    }

    /// Copy `data` to guest-physical `addr`, marking its pages host-dirty.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        let r = self.range(addr, data.len())?;
        if r.end > r.start {
            for page in r.start / PAGE_SIZE..=(r.end - 1) / PAGE_SIZE {
                if let Some(w) = self.host_dirty.get_mut(page / 64) {
                    *w |= 1 << (page % 64);
                }
            }
        }
        self.as_mut_slice()[r].copy_from_slice(data);
        Ok(())
    }

    /// The bitmap of pages the host wrote through [`GuestMemory::write`] since the last
    /// call (KVM's dirty-log layout), cleared.
    pub fn take_host_dirty(&mut self) -> Vec<u64> {
        let words = self.host_dirty.len();
        std::mem::replace(&mut self.host_dirty, vec![0; words])
    }

    /// Copy guest-physical `addr..addr+buf.len()` into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.as_slice()[r]);
        Ok(())
    }

    /// Read a little-endian u64.
    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Whether `addr..addr+len` lies inside guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|l| self.range(addr, l).is_ok())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`; KVM holds no
        // reference past the VM fd, which the owning machine drops first (field order).
        unsafe {
            libc::munmap(self.ptr.cast::<libc::c_void>(), self.size);
        }
    }
}

impl ft_core::device_set::model::GuestMemory for GuestMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ModelError> {
        GuestMemory::read(self, addr, buf).map_err(model_error)
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), ModelError> {
        GuestMemory::write(self, addr, data).map_err(model_error)
    }

    fn contains(&self, addr: u64, len: u64) -> bool {
        GuestMemory::contains(self, addr, len)
    }
}

fn model_error(e: MemoryError) -> ModelError {
    match e {
        MemoryError::OutOfRange { addr, len, .. } => ModelError::OutOfRange { addr, len },
        // Not produced by accesses; reported as the whole range being unusable.
        MemoryError::Map { size, .. } | MemoryError::BadSize(size) => ModelError::OutOfRange {
            addr: 0,
            len: size as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_wrote_and_checks_ranges() {
        let Ok(mut m) = GuestMemory::new(8192) else {
            panic!("mmap failed")
        };
        assert!(m.as_slice().iter().all(|b| *b == 0));
        assert!(m.write(4090, &[1, 2, 3, 4, 5, 6, 7, 8]).is_ok());
        assert_eq!(m.read_u64(4090).ok(), Some(0x0807_0605_0403_0201));
        assert!(m.write(8190, &[0; 4]).is_err());
        assert!(m.read(u64::MAX, &mut [0; 2]).is_err());
        assert!(m.contains(0, 8192) && !m.contains(1, 8192));
        assert!(GuestMemory::new(100).is_err());
    }
}
