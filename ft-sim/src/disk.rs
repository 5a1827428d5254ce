//! The sim machine's disk image, with fencing tokens enforced where writes land.
//!
//! A [`Disk`] lives in memory (several handles in one process share it), or in a file
//! that several processes open: the shared disk of a protected pair, as VMware FT's
//! pair shares a datastore. Both kinds keep the newest fencing token a writer has
//! shown ([`Disk::write_fenced`]), and refuse a write carrying an older one, the way
//! Chubby's sequencers and ZooKeeper users fence a paused leader: a primary frozen by
//! `SIGSTOP` while its backup took over (with a newer token from the arbiter) cannot
//! land a write when it wakes.
//!
//! # The file format
//!
//! A header of [`HEADER_LEN`] bytes, then the image:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `FTDISK01` |
//! | 8 | 8 | image size in bytes, little-endian |
//! | 16 | 8 | newest fencing token seen, little-endian |
//!
//! A write takes the file's lock ([`std::fs::File::lock`], `flock(2)` on Linux),
//! compares and raises the token, writes the data and releases the lock, so two
//! processes never interleave a check and a write. Writes are not `fsync`ed: the
//! failures ft models are process deaths, and the page cache outlives the process.
//!
//! ```
//! use ft_sim::Disk;
//! let dir = std::env::temp_dir().join(format!("ft-disk-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("pair.disk");
//! let a = Disk::open_file(&path, 4096).unwrap(); // one process
//! let b = Disk::open_file(&path, 4096).unwrap(); // the other
//! a.write_fenced(1, 0, b"old").unwrap();
//! b.write_fenced(2, 0, b"new").unwrap(); // the node that won the arbiter later
//! assert!(a.write_fenced(1, 0, b"stale").is_err()); // fenced off
//! assert_eq!(b.read(0, 3).unwrap(), b"new");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Bytes before the image in a disk file.
pub const HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"FTDISK01";
const TOKEN_AT: u64 = 16;

/// Errors of disks.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The range is not inside the image.
    #[error("{len} bytes at {offset} are outside the disk of {size} bytes")]
    OutOfRange {
        /// Where the access starts.
        offset: u64,
        /// How long it is.
        len: u64,
        /// The image's size.
        size: u64,
    },
    /// The write carries a fencing token older than the newest the disk has seen: its
    /// writer was superseded.
    #[error(
        "write fenced off: token {token} is older than token {seen}, the newest this disk has seen"
    )]
    Fenced {
        /// The writer's token.
        token: u64,
        /// The newest token the disk has seen.
        seen: u64,
    },
    /// The file could not be read or written.
    #[error("disk file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a disk of this format, or not of the size asked for.
    #[error("disk file {path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// A disk image. Clones share the same bytes: give both sides of a pair one `Disk`
/// (or each process [`Disk::open_file`] on the same path) for a shared disk, or
/// separate ones for private copies.
#[derive(Debug, Clone)]
pub struct Disk {
    inner: Arc<Backing>,
}

#[derive(Debug)]
enum Backing {
    Memory(Mutex<MemoryDisk>),
    File(FileDisk),
}

#[derive(Debug)]
struct MemoryDisk {
    bytes: Vec<u8>,
    token: u64,
}

#[derive(Debug)]
struct FileDisk {
    path: PathBuf,
    size: u64,
    // One writer at a time within this process; the file lock orders processes
    // (flock is per open file, so it alone would not order two threads sharing it).
    file: Mutex<File>,
}

impl Default for Disk {
    fn default() -> Self {
        Disk::new(0)
    }
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<(), DiskError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(DiskError::OutOfRange { offset, len, size }),
    }
}

impl Disk {
    /// A zero-filled disk of `size` bytes in memory.
    pub fn new(size: usize) -> Disk {
        Disk::from_bytes(vec![0; size])
    }

    /// A disk in memory holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Disk {
        Disk {
            inner: Arc::new(Backing::Memory(Mutex::new(MemoryDisk { bytes, token: 0 }))),
        }
    }

    /// The disk file at `path`, of `size` bytes: created zero-filled if it does not
    /// exist (atomically, so two processes starting together agree on one file), or
    /// opened if it does. Every handle on the same file, in any process, shares its
    /// contents and its fencing token.
    ///
    /// # Errors
    ///
    /// [`DiskError::Io`] when the file cannot be created or opened,
    /// [`DiskError::Format`] when it exists but is not a disk file of `size` bytes.
    pub fn open_file(path: &Path, size: u64) -> Result<Disk, DiskError> {
        let io = |source| DiskError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => create(path, size)?,
            Err(e) => return Err(io(e)),
        };
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                DiskError::Format {
                    path: path.to_path_buf(),
                    why: "too short for a disk header".into(),
                }
            } else {
                io(e)
            }
        })?;
        if &header[..8] != MAGIC {
            return Err(DiskError::Format {
                path: path.to_path_buf(),
                why: "not an ft disk file (bad magic)".into(),
            });
        }
        let found = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
        if found != size {
            return Err(DiskError::Format {
                path: path.to_path_buf(),
                why: format!("the image holds {found} bytes, not {size}"),
            });
        }
        let len = file.metadata().map_err(io)?.len();
        if len < HEADER_LEN.saturating_add(size) {
            return Err(DiskError::Format {
                path: path.to_path_buf(),
                why: format!(
                    "the file is {len} bytes, short of the {} its header implies",
                    HEADER_LEN + size
                ),
            });
        }
        Ok(Disk {
            inner: Arc::new(Backing::File(FileDisk {
                path: path.to_path_buf(),
                size,
                file: Mutex::new(file),
            })),
        })
    }

    /// An independent copy in memory (for a private disk), with the same token.
    pub fn deep_copy(&self) -> Disk {
        let token = self.token().unwrap_or(0);
        let disk = Disk::from_bytes(self.contents());
        if let Backing::Memory(m) = &*disk.inner {
            m.lock().token = token;
        }
        disk
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        match &*self.inner {
            Backing::Memory(m) => m.lock().bytes.len() as u64,
            Backing::File(f) => f.size,
        }
    }

    /// Whether the image lives in a file.
    pub fn is_file(&self) -> bool {
        matches!(&*self.inner, Backing::File(_))
    }

    /// Read `len` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`DiskError::OutOfRange`], or [`DiskError::Io`] for a file that cannot be read.
    pub fn try_read(&self, offset: u64, len: u64) -> Result<Vec<u8>, DiskError> {
        check_range(offset, len, self.size())?;
        match &*self.inner {
            Backing::Memory(m) => {
                let m = m.lock();
                // In range (checked above against this length), so the casts fit.
                Ok(m.bytes[offset as usize..(offset + len) as usize].to_vec())
            }
            Backing::File(f) => {
                let file = f.file.lock();
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, HEADER_LEN + offset)
                    .map_err(|source| f.io(source))?;
                Ok(buf)
            }
        }
    }

    /// Read `len` bytes at `offset`; `None` if out of range or unreadable (the device
    /// reports an error status to the guest, as hardware would).
    pub fn read(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        self.try_read(offset, len).ok()
    }

    /// Write `data` at `offset` for a writer holding fencing `token`. The disk keeps
    /// the newest token it has seen and refuses a write with an older one; an equal or
    /// newer token is accepted and becomes the newest.
    ///
    /// # Errors
    ///
    /// [`DiskError::Fenced`] for an older token, [`DiskError::OutOfRange`], or
    /// [`DiskError::Io`]; nothing is written then.
    pub fn write_fenced(&self, token: u64, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        check_range(offset, data.len() as u64, self.size())?;
        match &*self.inner {
            Backing::Memory(m) => {
                let mut m = m.lock();
                if token < m.token {
                    return Err(DiskError::Fenced {
                        token,
                        seen: m.token,
                    });
                }
                m.token = token;
                // In range (checked above), so the casts fit.
                let start = offset as usize;
                m.bytes[start..start + data.len()].copy_from_slice(data);
                Ok(())
            }
            Backing::File(f) => f.write_fenced(token, offset, data),
        }
    }

    /// Write `data` at `offset` with token 0, the token of a writer that never won the
    /// arbiter; `false` if refused (out of range, fenced off, or an I/O error).
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        self.write_fenced(0, offset, data).is_ok()
    }

    /// The newest fencing token the disk has seen.
    ///
    /// # Errors
    ///
    /// [`DiskError::Io`] for a file that cannot be read.
    pub fn token(&self) -> Result<u64, DiskError> {
        match &*self.inner {
            Backing::Memory(m) => Ok(m.lock().token),
            Backing::File(f) => {
                let file = f.file.lock();
                f.locked(&file, || f.read_token(&file))
            }
        }
    }

    /// A copy of the whole image (empty if a file cannot be read).
    pub fn contents(&self) -> Vec<u8> {
        self.try_read(0, self.size()).unwrap_or_default()
    }
}

/// Create a zero-filled disk file at `path`: written whole under a temporary name,
/// then linked into place, which fails if another process created it first (then
/// that one is opened).
fn create(path: &Path, size: u64) -> Result<File, DiskError> {
    let io = |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let made = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut header = [0u8; 24];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&size.to_le_bytes());
        f.write_all_at(&header, 0)?;
        f.set_len(HEADER_LEN + size)?;
        f.sync_all()?;
        Ok(f)
    })();
    let f = match made {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(DiskError::Io {
                path: tmp,
                source: e,
            });
        }
    };
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

impl FileDisk {
    fn io(&self, source: std::io::Error) -> DiskError {
        DiskError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Run `f` holding the file's lock.
    fn locked<T>(
        &self,
        file: &File,
        f: impl FnOnce() -> Result<T, DiskError>,
    ) -> Result<T, DiskError> {
        file.lock().map_err(|e| self.io(e))?;
        let r = f();
        let unlocked = file.unlock().map_err(|e| self.io(e));
        let v = r?;
        unlocked?;
        Ok(v)
    }

    fn read_token(&self, file: &File) -> Result<u64, DiskError> {
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, TOKEN_AT)
            .map_err(|e| self.io(e))?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_fenced(&self, token: u64, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let file = self.file.lock();
        self.locked(&file, || {
            let seen = self.read_token(&file)?;
            if token < seen {
                return Err(DiskError::Fenced { token, seen });
            }
            if token > seen {
                file.write_all_at(&token.to_le_bytes(), TOKEN_AT)
                    .map_err(|e| self.io(e))?;
            }
            file.write_all_at(data, HEADER_LEN + offset)
                .map_err(|e| self.io(e))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ft-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn memory_disk_fences_older_tokens() {
        let d = Disk::new(16);
        assert!(d.write(0, b"ab"));
        d.write_fenced(5, 2, b"cd").unwrap();
        assert!(matches!(
            d.write_fenced(4, 0, b"x"),
            Err(DiskError::Fenced { token: 4, seen: 5 })
        ));
        assert!(!d.write(0, b"x"), "token 0 is older than 5");
        d.write_fenced(5, 4, b"ef").unwrap();
        assert_eq!(d.read(0, 6).unwrap(), b"abcdef");
        assert!(matches!(
            d.write_fenced(9, 15, b"yz"),
            Err(DiskError::OutOfRange { .. })
        ));
        assert_eq!(d.token().unwrap(), 5, "a refused write raises nothing");
        assert!(d.read(15, 2).is_none());
        assert!(d.read(u64::MAX, 2).is_none());
        let copy = d.deep_copy();
        assert_eq!(copy.contents(), d.contents());
        assert_eq!(copy.token().unwrap(), 5);
    }

    #[test]
    fn a_file_disk_is_shared_and_fenced_across_handles() {
        let d = dir("shared");
        let path = d.join("pair.disk");
        let a = Disk::open_file(&path, 8192).unwrap();
        let b = Disk::open_file(&path, 8192).unwrap();
        assert!(a.is_file());
        assert_eq!(a.contents(), vec![0; 8192]);
        a.write_fenced(1, 100, b"first").unwrap();
        assert_eq!(b.read(100, 5).unwrap(), b"first");
        b.write_fenced(3, 100, b"again").unwrap();
        assert!(matches!(
            a.write_fenced(2, 100, b"stale"),
            Err(DiskError::Fenced { token: 2, seen: 3 })
        ));
        assert_eq!(a.read(100, 5).unwrap(), b"again");
        // What the file holds outlives the handles: a restarted process sees it.
        drop((a, b));
        let c = Disk::open_file(&path, 8192).unwrap();
        assert_eq!(c.token().unwrap(), 3);
        assert_eq!(c.read(100, 5).unwrap(), b"again");
        assert!(matches!(
            c.write_fenced(3, 8190, b"xyz"),
            Err(DiskError::OutOfRange { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_disk_files_are_refused_with_the_reason() {
        let d = dir("bad");
        let path = d.join("pair.disk");
        Disk::open_file(&path, 4096).unwrap();
        let e = Disk::open_file(&path, 8192).unwrap_err().to_string();
        assert!(e.contains("holds 4096 bytes, not 8192"), "{e}");
        std::fs::write(d.join("junk"), b"hello, this is not a disk image at all").unwrap();
        let e = Disk::open_file(&d.join("junk"), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad magic"), "{e}");
        std::fs::write(d.join("short"), b"FTD").unwrap();
        let e = Disk::open_file(&d.join("short"), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        // A header promising more than the file holds (a truncated copy).
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(d.join("cut"), &bytes[..5000]).unwrap();
        let e = Disk::open_file(&d.join("cut"), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("short of"), "{e}");
        let e = Disk::open_file(&d.join("no/such/dir/disk"), 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn handles_opened_at_once_share_one_file() {
        let d = dir("race");
        let path = d.join("pair.disk");
        let handles: Vec<_> = (0..8u64)
            .map(|i| {
                let p = path.clone();
                std::thread::spawn(move || {
                    let disk = Disk::open_file(&p, 4096).unwrap();
                    disk.write_fenced(0, i * 8, &(i + 1).to_le_bytes()).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Every creator's write landed in the one file that stayed.
        let disk = Disk::open_file(&path, 4096).unwrap();
        for i in 0..8u64 {
            assert_eq!(disk.read(i * 8, 8).unwrap(), (i + 1).to_le_bytes());
        }
        let leftovers: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
