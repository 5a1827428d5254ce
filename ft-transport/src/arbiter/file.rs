//! The shared-file arbiter: a claim file per pair generation, in a directory both hosts
//! mount.
//!
//! # The primitive: `link(2)` of a fully written temporary file
//!
//! A claimant writes its claim (pair, holder node id, fencing token) into a temporary
//! file with a unique name in the arbiter directory, flushes it to storage
//! (`fsync`), and then hard-links it to the claim's name
//! (`ft-claim-vm<VM>-gen<GENERATION>`) with [`std::fs::hard_link`], which is
//! `link(2)`. The claimant whose link succeeds won; every other link fails with
//! `EEXIST`, and that claimant reads the holder from the claim file.
//!
//! * **Local filesystem.** `link(2)` creates a directory entry under the directory's
//!   lock, and fails with `EEXIST` if the name exists: of any number of concurrent
//!   links to the same name, in any number of processes, exactly one succeeds. The
//!   name appears already pointing to the complete, synced file, so a reader can
//!   never see a half-written claim (with `O_CREAT|O_EXCL` on the claim itself, a
//!   reader could open it between the create and the write).
//! * **NFS.** `LINK` is one NFS procedure that the server carries out with the same
//!   `link(2)` on its own filesystem, so it is atomic there too, in every NFS version.
//!   `O_CREAT|O_EXCL` was not: NFSv2 clients emulated it with a `LOOKUP` and a
//!   `CREATE`, racy between clients (see `open(2)`, which recommends this very link
//!   scheme). One NFS hazard remains: a `LINK` whose reply is lost is retransmitted and
//!   then fails with `EEXIST` although it succeeded. So after any failed link the
//!   claimant checks the temporary file's link count (2 means its link took effect,
//!   as `open(2)` advises) and, for `EEXIST`, reads the claim: a claim naming itself
//!   is a win. That is also why re-claiming by the winner wins again.
//!
//! The claim is a few lines of text; the directory is synced after the link, and a
//! win is only answered once the claim is durable, so a storage crash cannot forget
//! a claim that a side already acted on.
//!
//! # Fencing token
//!
//! The token is the pair's generation: each pair generation has exactly one winner,
//! and every new pairing of a VM uses a higher generation, so a resource that refuses
//! requests carrying a token below the highest it has seen fences off every older
//! winner.
//!
//! # Reservations
//!
//! A new pair's generation is reserved ([`FileArbiter::reserve`]) by the same link of a
//! synced temporary file, to `ft-reserve-vm<VM>-gen<GENERATION>` (the generation after
//! the newest claim or reservation file of the VM the caller read), holding the
//! reserving node's id. A link that finds the name taken lost to a concurrent
//! reservation; one that finds a claim of that generation after it linked removes its
//! reservation and lost too. So no two reservations share a
//! generation, and of racing primaries that read the same record one wins.
//!
//! # Failures
//!
//! A missing, unreadable or unwritable directory (and any other I/O failure) is
//! [`ArbiterError::Unreachable`]: the engine keeps waiting and retries with backoff,
//! and never goes live unconfirmed. A claim file that does not parse is
//! [`ArbiterError::Failed`] (the engine retries that too). A crashed claimant may leave
//! a temporary file (`.ft-claim-*.tmp`, `.ft-reserve-*.tmp`) behind; it is never read and can be deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ft_core::arbiter::{
    not_the_holder, Arbiter, ArbiterError, CloneOffer, Decision, NodeId, PairId, Purpose,
    Reservation,
};

/// The first line of every claim file.
const MAGIC: &str = "ft-arbiter-claim 1";
/// Claim files are tiny; anything longer is not one of ours.
const MAX_CLAIM_BYTES: u64 = 4096;

/// Errors of the file arbiter.
#[derive(Debug, thiserror::Error)]
pub enum FileArbiterError {
    /// An I/O operation on the arbiter directory failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The claim file exists but does not hold a valid claim for its pair.
    #[error("claim file {path} is not a valid claim: {detail}")]
    Malformed {
        /// The claim file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl From<FileArbiterError> for ArbiterError {
    fn from(e: FileArbiterError) -> Self {
        match e {
            FileArbiterError::Io { .. } => ArbiterError::Unreachable(e.to_string()),
            FileArbiterError::Malformed { .. } => ArbiterError::Failed(e.to_string()),
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = FileArbiterError> = std::result::Result<T, E>;

/// What a claim file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The pair generation claimed.
    pub pair: PairId,
    /// The winner.
    pub holder: NodeId,
    /// The fencing token (the generation).
    pub token: u64,
}

impl Claim {
    fn encode(&self) -> String {
        format!(
            "{MAGIC}\nvm {}\ngeneration {}\nholder {}\ntoken {}\n",
            self.pair.vm, self.pair.generation, self.holder.0, self.token
        )
    }

    fn decode(text: &str) -> std::result::Result<Claim, String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("first line is not {MAGIC:?}"));
        }
        let mut field = |name: &str| -> std::result::Result<u64, String> {
            let line = lines.next().ok_or_else(|| format!("no {name} line"))?;
            let value = line
                .strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .ok_or_else(|| format!("expected a {name} line, found {line:?}"))?;
            value
                .parse()
                .map_err(|e| format!("bad {name} {value:?}: {e}"))
        };
        let vm = field("vm")?;
        let generation = field("generation")?;
        let holder = NodeId(field("holder")?);
        let token = field("token")?;
        Ok(Claim {
            pair: PairId { vm, generation },
            holder,
            token,
        })
    }
}

/// The shared-file arbiter. See the module docs for why it is atomic.
#[derive(Debug, Clone)]
pub struct FileArbiter {
    dir: PathBuf,
}

/// Makes temporary names unique within a process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileArbiter {
    /// An arbiter keeping its claims in `dir` (which must exist; a missing directory
    /// makes every claim [`ArbiterError::Unreachable`] until it appears).
    pub fn new(dir: impl Into<PathBuf>) -> FileArbiter {
        FileArbiter { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the claim of `pair` lives.
    pub fn claim_path(&self, pair: PairId) -> PathBuf {
        self.dir
            .join(format!("ft-claim-vm{}-gen{}", pair.vm, pair.generation))
    }

    /// The claim of `pair`, if one was made.
    pub fn read_claim(&self, pair: PairId) -> Result<Option<Claim>> {
        let path = self.claim_path(pair);
        let Some(text) = read_small(&path, ["open claim", "read claim"])? else {
            return Ok(None);
        };
        let claim = Claim::decode(&text).map_err(|detail| FileArbiterError::Malformed {
            path: path.clone(),
            detail,
        })?;
        if claim.pair != pair {
            return Err(FileArbiterError::Malformed {
                path,
                detail: format!("it claims {}", claim.pair),
            });
        }
        Ok(Some(claim))
    }

    /// The newest generation of `vm` with a claim file in the directory.
    ///
    /// # Errors
    ///
    /// [`FileArbiterError::Io`] when the directory cannot be listed.
    pub fn newest_claim(&self, vm: u64) -> Result<Option<u64>> {
        self.newest_named(&[&format!("ft-claim-vm{vm}-gen")])
    }

    /// The newest generation of `vm` with a claim or a reservation file.
    ///
    /// # Errors
    ///
    /// [`FileArbiterError::Io`] when the directory cannot be listed.
    pub fn newest_reserved_or_claimed(&self, vm: u64) -> Result<Option<u64>> {
        self.newest_named(&[
            &format!("ft-claim-vm{vm}-gen"),
            &format!("ft-reserve-vm{vm}-gen"),
        ])
    }

    /// The largest generation among the directory's files named `<prefix><gen>` for
    /// any of `prefixes`, from one listing.
    fn newest_named(&self, prefixes: &[&str]) -> Result<Option<u64>> {
        let io = |source| FileArbiterError::Io {
            path: self.dir.clone(),
            op: "list claims",
            source,
        };
        let mut newest = None;
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(name) = name.to_str() else { continue };
            let generation = prefixes
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .and_then(|g| g.parse::<u64>().ok());
            newest = newest.max(generation);
        }
        Ok(newest)
    }

    /// Where the reservation of `pair`'s generation lives.
    pub fn reservation_path(&self, pair: PairId) -> PathBuf {
        self.dir
            .join(format!("ft-reserve-vm{}-gen{}", pair.vm, pair.generation))
    }

    /// The node that reserved `pair`'s generation, if one did.
    ///
    /// # Errors
    ///
    /// [`FileArbiterError::Io`] when the file cannot be read;
    /// [`FileArbiterError::Malformed`] when it is not a reservation of `pair`.
    pub fn read_reservation(&self, pair: PairId) -> Result<Option<Reservation>> {
        let path = self.reservation_path(pair);
        let Some(text) = read_small(&path, ["open reservation", "read reservation"])? else {
            return Ok(None);
        };
        let reservation = text
            .strip_prefix(&reservation_head(pair))
            .and_then(|rest| rest.strip_suffix('\n'))
            .and_then(parse_reserver)
            .ok_or_else(|| FileArbiterError::Malformed {
                path: path.clone(),
                detail: format!("not a reservation of {pair}: {text:?}"),
            })?;
        Ok(Some(reservation))
    }

    /// Reserve generation `after + 1` of `vm` (1 for `None`) for `me`, if `after` is
    /// still the newest generation with a claim or reservation file: the same
    /// `link(2)` of a synced temporary file as a claim, to
    /// `ft-reserve-vm<VM>-gen<GENERATION>`. `None` when the newest generation is not
    /// `after`, when the link finds the name taken (a concurrent reservation), or when
    /// a claim of that generation appeared while it linked (its
    /// reservation is then removed again).
    ///
    /// # Errors
    ///
    /// [`FileArbiterError::Io`] on an I/O failure.
    pub fn reserve(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> Result<Option<u64>> {
        if self.newest_reserved_or_claimed(vm)? != after {
            return Ok(None);
        }
        let generation = after.unwrap_or(0).saturating_add(1);
        let pair = PairId { vm, generation };
        let temp = self.write_temp(
            &format!("reserve-vm{vm}-gen{generation}.node{}", me.0),
            &reservation_text(pair, Reservation { node: me, purpose }),
        )?;
        let target = self.reservation_path(pair);
        let linked = fs::hard_link(&temp, &target);
        // NFS: a retransmitted LINK fails although the first one succeeded.
        let took = linked.is_ok() || link_count(&temp) == Some(2);
        let _ = fs::remove_file(&temp);
        match linked {
            _ if took => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(source) => {
                return Err(FileArbiterError::Io {
                    path: target,
                    op: "link reservation",
                    source,
                })
            }
            Ok(()) => {}
        }
        // A claim of this generation made between the listing and the link: the
        // reservation lost. (Not "anything newer": a reservation made right after this
        // one, from a listing that saw it, is newer too, and legitimate.)
        if self.read_claim(pair)?.is_some() {
            let _ = fs::remove_file(&target);
            self.sync_dir()?;
            return Ok(None);
        }
        self.sync_dir()?;
        Ok(Some(generation))
    }

    /// Check that the directory exists and takes a file (created, synced and removed
    /// again): what a claim needs.
    ///
    /// # Errors
    ///
    /// [`FileArbiterError::Io`] naming the directory or the probe file.
    pub fn probe(&self) -> Result<()> {
        match fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FileArbiterError::Io {
                    path: self.dir.clone(),
                    op: "use as arbiter directory",
                    source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
                })
            }
            Err(source) => {
                return Err(FileArbiterError::Io {
                    path: self.dir.clone(),
                    op: "open arbiter directory",
                    source,
                })
            }
        }
        let path = self.dir.join(format!(
            ".ft-probe.pid{}.{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| f.sync_all());
        let _ = fs::remove_file(&path);
        written.map_err(|source| FileArbiterError::Io {
            path,
            op: "write a probe file in",
            source,
        })
    }

    /// The test-and-set, with this module's error type.
    pub fn claim(&self, pair: PairId, me: NodeId) -> Result<Decision> {
        // Fast path: the flag is already set (a retry, or the slower side).
        if let Some(c) = self.read_claim(pair)? {
            return self.decide(c, me);
        }
        let claim = Claim {
            pair,
            holder: me,
            token: pair.generation,
        };
        let temp = self.write_temp(
            &format!("claim-vm{}-gen{}.node{}", pair.vm, pair.generation, me.0),
            &claim.encode(),
        )?;
        let outcome = self.link_claim(&temp, pair, me);
        // The temporary name was only a vehicle; the claim keeps the inode alive.
        let _ = fs::remove_file(&temp);
        outcome
    }

    fn link_claim(&self, temp: &Path, pair: PairId, me: NodeId) -> Result<Decision> {
        let target = self.claim_path(pair);
        let linked = fs::hard_link(temp, &target);
        if let Err(source) = linked {
            // NFS: a retransmitted LINK fails although the first one succeeded; the
            // temporary file's link count tells.
            if link_count(temp) != Some(2) {
                if source.kind() != io::ErrorKind::AlreadyExists {
                    return Err(FileArbiterError::Io {
                        path: target,
                        op: "link claim",
                        source,
                    });
                }
                return match self.read_claim(pair)? {
                    Some(c) => self.decide(c, me),
                    // Exists, yet not visible: a stale cache on a network filesystem.
                    None => Err(FileArbiterError::Io {
                        path: target,
                        op: "read claim after EEXIST",
                        source: io::Error::from(io::ErrorKind::NotFound),
                    }),
                };
            }
        }
        self.sync_dir()?;
        Ok(Decision::Won {
            token: pair.generation,
        })
    }

    /// Won only once the claim is durable; lost to anyone else.
    fn decide(&self, claim: Claim, me: NodeId) -> Result<Decision> {
        if claim.holder == me {
            self.sync_dir()?;
            Ok(Decision::Won { token: claim.token })
        } else {
            Ok(Decision::Lost {
                holder: claim.holder,
            })
        }
    }

    /// Write `text` to a fresh, uniquely named file in the directory (its name starts
    /// `.ft-<stem>`) and flush it.
    fn write_temp(&self, stem: &str, text: &str) -> Result<PathBuf> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                ".ft-{stem}.pid{}.{}.{nanos}.tmp",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            );
            let path = self.dir.join(name);
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => continue,
                Err(source) => {
                    return Err(FileArbiterError::Io {
                        path,
                        op: "create temporary claim",
                        source,
                    })
                }
            };
            let written = file
                .write_all(text.as_bytes())
                .and_then(|()| file.sync_all());
            if let Err(source) = written {
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(FileArbiterError::Io {
                    path,
                    op: "write temporary claim",
                    source,
                });
            }
            return Ok(path);
        }
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| FileArbiterError::Io {
                path: self.dir.clone(),
                op: "sync directory",
                source,
            })
    }
}

#[cfg(unix)]
fn link_count(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.nlink())
}

#[cfg(not(unix))]
fn link_count(_path: &Path) -> Option<u64> {
    None
}

impl Arbiter for FileArbiter {
    fn test_and_set(&self, pair: PairId, me: NodeId) -> ft_core::arbiter::Result<Decision> {
        self.claim(pair, me).map_err(ArbiterError::from)
    }

    fn check(&self) -> ft_core::arbiter::Result<()> {
        self.probe().map_err(ArbiterError::from)
    }

    fn holder(&self, pair: PairId) -> ft_core::arbiter::Result<Option<NodeId>> {
        Ok(self.read_claim(pair)?.map(|c| c.holder))
    }

    fn newest_claimed(&self, vm: u64) -> ft_core::arbiter::Result<Option<u64>> {
        self.newest_claim(vm).map_err(ArbiterError::from)
    }

    fn reserve_generation(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> ft_core::arbiter::Result<Option<u64>> {
        self.reserve(vm, me, after, purpose)
            .map_err(ArbiterError::from)
    }

    fn reservation(&self, pair: PairId) -> ft_core::arbiter::Result<Option<Reservation>> {
        self.read_reservation(pair).map_err(ArbiterError::from)
    }

    fn newest_generation(&self, vm: u64) -> ft_core::arbiter::Result<Option<u64>> {
        self.newest_reserved_or_claimed(vm)
            .map_err(ArbiterError::from)
    }

    fn publish_offer(&self, offer: &CloneOffer) -> ft_core::arbiter::Result<()> {
        let holder = self.read_claim(offer.pair)?.map(|c| c.holder);
        if holder != Some(offer.member) {
            return Err(not_the_holder(offer, holder));
        }
        Ok(self.write_offer(offer)?)
    }

    fn withdraw_offer(&self, pair: PairId, member: NodeId) -> ft_core::arbiter::Result<()> {
        if self.read_offer(pair)?.is_some_and(|o| o.member == member) {
            let path = self.offer_path(pair);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(FileArbiterError::Io {
                        path,
                        op: "remove offer",
                        source,
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    fn clone_offer(&self, vm: u64) -> ft_core::arbiter::Result<Option<CloneOffer>> {
        let Some(generation) = self.newest_claim(vm)? else {
            return Ok(None);
        };
        Ok(self.read_offer(PairId { vm, generation })?)
    }
}

/// What a reservation file says: its pair, the node that reserved it, and, for a
/// live member's clone, `for a clone`.
fn reservation_text(pair: PairId, r: Reservation) -> String {
    format!("{}{}\n", reservation_head(pair), reserver_text(r))
}

/// `N` for a new pair's primary, `N for a clone` for a live member's clone (the
/// text after "reserved by " in both arbiters).
pub(crate) fn reserver_text(r: Reservation) -> String {
    match r.purpose {
        Purpose::NewPair => r.node.0.to_string(),
        Purpose::Clone => format!("{} for a clone", r.node.0),
    }
}

/// The reservation [`reserver_text`] wrote, if `text` is one.
pub(crate) fn parse_reserver(text: &str) -> Option<Reservation> {
    let (node, purpose) = match text.strip_suffix(" for a clone") {
        Some(n) => (n, Purpose::Clone),
        None => (text, Purpose::NewPair),
    };
    let node = NodeId(node.parse().ok()?);
    Some(Reservation { node, purpose })
}

/// A reservation file's text before the node id.
fn reservation_head(pair: PairId) -> String {
    format!(
        "{RESERVE_MAGIC}\nvm {}\ngeneration {}\nreserved by ",
        pair.vm, pair.generation
    )
}

/// The first line of every reservation file.
const RESERVE_MAGIC: &str = "ft-arbiter-reservation 1";

/// The text of a claim or offer file, if it exists: at most `MAX_CLAIM_BYTES` of
/// it, which must be UTF-8. `ops` name the open and the read in errors.
fn read_small(path: &Path, ops: [&'static str; 2]) -> Result<Option<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileArbiterError::Io {
                path: path.to_path_buf(),
                op: ops[0],
                source,
            })
        }
    };
    let mut text = String::new();
    match file.take(MAX_CLAIM_BYTES).read_to_string(&mut text) {
        Ok(_) => Ok(Some(text)),
        Err(source) if source.kind() == io::ErrorKind::InvalidData => {
            Err(FileArbiterError::Malformed {
                path: path.to_path_buf(),
                detail: "not UTF-8".into(),
            })
        }
        Err(source) => Err(FileArbiterError::Io {
            path: path.to_path_buf(),
            op: ops[1],
            source,
        }),
    }
}

/// The first line of every offer file.
const OFFER_MAGIC: &str = "ft-arbiter-offer 1";

/// Clone offers: a file per pair generation, `ft-offer-vm<VM>-gen<GENERATION>`,
/// written by the holder of that generation's claim (checked before the write) and
/// replaced atomically (a fully written, synced temporary file renamed over it), so a
/// reader sees a whole offer or none.
impl FileArbiter {
    /// Where the clone offer of `pair` lives.
    pub fn offer_path(&self, pair: PairId) -> PathBuf {
        self.dir
            .join(format!("ft-offer-vm{}-gen{}", pair.vm, pair.generation))
    }

    /// The clone offer of `pair`, if its holder published one.
    pub fn read_offer(&self, pair: PairId) -> Result<Option<CloneOffer>> {
        let path = self.offer_path(pair);
        let Some(text) = read_small(&path, ["open offer", "read offer"])? else {
            return Ok(None);
        };
        let malformed = |detail: String| FileArbiterError::Malformed {
            path: path.clone(),
            detail,
        };
        let mut lines = text.lines();
        if lines.next() != Some(OFFER_MAGIC) {
            return Err(malformed(format!("first line is not {OFFER_MAGIC:?}")));
        }
        let mut field = |name: &str| -> Result<String> {
            let line = lines
                .next()
                .ok_or_else(|| malformed(format!("no {name} line")))?;
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| malformed(format!("expected a {name} line, found {line:?}")))
        };
        let mut number = |name: &str| -> Result<u64> {
            let v = field(name)?;
            v.parse()
                .map_err(|e| malformed(format!("bad {name} {v:?}: {e}")))
        };
        let (vm, generation, member) = (number("vm")?, number("generation")?, number("member")?);
        let addr = field("addr")?;
        let offer = CloneOffer {
            pair: PairId { vm, generation },
            member: NodeId(member),
            addr,
        };
        if offer.pair != pair || offer.addr.is_empty() {
            return Err(malformed(format!("it offers {offer:?}")));
        }
        Ok(Some(offer))
    }

    fn write_offer(&self, offer: &CloneOffer) -> Result<()> {
        let text = format!(
            "{OFFER_MAGIC}\nvm {}\ngeneration {}\nmember {}\naddr {}\n",
            offer.pair.vm,
            offer.pair.generation,
            offer.member.0,
            offer.addr.replace('\n', " ")
        );
        let target = self.offer_path(offer.pair);
        let temp = self.dir.join(format!(
            ".ft-offer-vm{}-gen{}.pid{}.{}.tmp",
            offer.pair.vm,
            offer.pair.generation,
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&temp, &target));
        if let Err(source) = written {
            let _ = fs::remove_file(&temp);
            return Err(FileArbiterError::Io {
                path: target,
                op: "write offer",
                source,
            });
        }
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_text_round_trips_and_rejects_garbage() {
        let c = Claim {
            pair: PairId {
                vm: 3,
                generation: 9,
            },
            holder: NodeId(42),
            token: 9,
        };
        assert_eq!(Claim::decode(&c.encode()), Ok(c));
        assert!(Claim::decode("").is_err());
        assert!(Claim::decode("ft-arbiter-claim 1\nvm x\n").is_err());
        assert!(Claim::decode("ft-arbiter-claim 1\nvm 1\ngeneration 2\nholder 3\n").is_err());
        assert!(Claim::decode(&c.encode().replace("holder", "holdr")).is_err());
    }
}
