//! The backend's side of replication: a machine that runs, stops at every
//! nondeterministic event, and can be steered to exact execution points.

use crate::record::{AsyncEvent, InputRequest, IoRequest, RawOutput};
use crate::ExecPoint;

/// Why [`EventSource::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The machine reached the requested point.
    Reached,
    /// The machine needs the value of a nondeterministic read before it can go on. The
    /// reading instruction has not completed; [`EventSource::point`] is the point before
    /// it. Answer with [`EventSource::supply_input`].
    Input(InputRequest),
    /// The machine produced an output; the producing instruction has completed.
    Output(RawOutput),
    /// The machine started an asynchronous I/O; the starting instruction has completed.
    IoStart(IoRequest),
    /// The machine is idle (waiting for an interrupt); its point does not advance until
    /// an asynchronous event is injected.
    Idle,
    /// The guest ended with an exit code.
    Halted(u64),
}

/// Errors a backend reports. Backends convert their own errors into this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The requested point lies behind the machine's point.
    #[error("cannot run backwards from {current} to {target}")]
    Backwards {
        /// The machine's point.
        current: crate::ExecPoint,
        /// The requested point.
        target: crate::ExecPoint,
    },
    /// `supply_input` was called when no input was pending, or with the wrong size.
    #[error("input not expected: {0}")]
    UnexpectedInput(String),
    /// An asynchronous event does not apply to this machine (unknown device, unknown
    /// I/O id, DMA outside memory...).
    #[error("cannot inject event: {0}")]
    BadEvent(String),
    /// A snapshot could not be made or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The backend failed (a hypervisor error, an unknown exit...).
    #[error("backend failure: {0}")]
    Backend(String),
    /// The backend does not implement this part of the contract (a backend without
    /// state transfer cannot be live-cloned).
    #[error("the backend does not support {0}")]
    Unsupported(&'static str),
}

/// The shape of a machine's guest memory, as state transfer sees it: `pages` pages of
/// `page_size` bytes, numbered from 0. Two machines must have the same layout for one
/// to be cloned into the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryLayout {
    /// Bytes per page (a power of two; the last page may be shorter in the machine,
    /// but it is always transferred as a whole page, zero-padded).
    pub page_size: u32,
    /// Number of pages.
    pub pages: u64,
}

/// `65536 pages of 4096 bytes`.
impl std::fmt::Display for MemoryLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pages of {} bytes", self.pages, self.page_size)
    }
}

/// Result alias for backends.
pub type SourceResult<T> = std::result::Result<T, SourceError>;

/// A deterministic machine whose only nondeterminism enters through this trait.
///
/// A Rust VMM implements it over its own vCPU loop and device models:
///
/// * `run` executes guest code until it reaches `until` or hits something
///   nondeterministic: a read whose value comes from outside, an output, the start of
///   an asynchronous I/O, idleness, or the end of the guest;
/// * `supply_input` and `inject` put the outside world's answers into the machine at
///   the machine's current point;
/// * `digest`, `snapshot` and `restore` expose its full state.
///
/// Given the same initial state and the same sequence of `run` targets, inputs and
/// injections at the same points, an implementation must pass through the same states
/// and stop in the same ways. The replication engine relies on nothing else.
pub trait EventSource {
    /// The machine's current execution point.
    fn point(&self) -> ExecPoint;

    /// Run until the point equals `until`, or until a [`Stop`] other than
    /// [`Stop::Reached`] happens first. If the point already equals `until`, return
    /// `Reached` without executing anything. Must never run past `until`.
    ///
    /// # A stop that lands exactly on `until`
    ///
    /// When the instruction that retires at `until` produces an output, starts an
    /// I/O or ends the guest, return that stop ([`Stop::Output`], [`Stop::IoStart`],
    /// [`Stop::Halted`]) with the point equal to `until`, not `Reached`. The engine
    /// emits outputs and starts I/O only on those stops, so a `Reached` there would
    /// drop them for good (the next `run` starts after the instruction). The
    /// recorder relies on it: it runs to the next digest point at most, and when an
    /// output retires exactly there it logs the scheduled digest on its next step.
    /// ft-sim does this (its CPU's `MmioStop` and `Watch` exits may come with the
    /// count equal to `until`), and so does ft-kvm (a stop from a device exit is
    /// returned before the point is compared with `until`).
    ///
    /// Idleness is the one stop that is reported as `Reached` when the point equals
    /// `until`: the replayer runs to the point of an asynchronous record and expects
    /// `Reached` there, and a machine that idles at that point reports
    /// [`Stop::Idle`] on the next `run` anyway. ft-sim's `wfi` at `until` is never
    /// executed (the budget check comes first); ft-kvm, whose `hlt` counts as a
    /// point, returns `Reached` for a `hlt` that lands on `until`.
    ///
    /// # Errors
    ///
    /// [`SourceError::Backwards`] when `until` lies behind the point; a backend's own
    /// failure otherwise. The engine halts the node on any error.
    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop>;

    /// Answer the pending [`Stop::Input`] with `data` (little-endian value bytes: the
    /// read's `size` bytes, or 8, as [`crate::device_set::model::input_value`]
    /// accepts them; ft-sim and ft-kvm refuse other lengths).
    ///
    /// # Does it complete the reading instruction?
    ///
    /// Not necessarily. The value is the instruction's; the instruction completes
    /// with it no later than the next [`EventSource::run`] (with `until` past the
    /// point), which the engine always calls before it relies on the read's effect.
    /// Where the point stands in between is the backend's choice, as long as it is
    /// the same on both sides of a pair:
    ///
    /// * ft-sim holds the value in its device model and leaves the point where it
    ///   was (the point before the load); the stalled load executes again on the next
    ///   `run`, takes the held value and retires there;
    /// * ft-kvm writes the value into the vCPU's pending MMIO or port exit and
    ///   advances the point at once; KVM finishes the instruction (the register
    ///   write) when the vCPU next enters, in the next `run`.
    ///
    /// The engine calls it right after the `Stop::Input`, on the recording side with
    /// the world's value and on the replaying side with the logged one, and makes no
    /// other call that changes the machine in between. A `run` before it (with
    /// `until` past the point) reports the same `Stop::Input` again without
    /// executing; both backends do.
    ///
    /// # Errors
    ///
    /// [`SourceError::UnexpectedInput`] when no read is pending or the data does not
    /// fit the read; a backend's own failure otherwise.
    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()>;

    /// Apply an asynchronous event at the current point.
    ///
    /// # Errors
    ///
    /// [`SourceError::BadEvent`] when the event does not apply to this machine (an
    /// unknown device or I/O id, DMA outside memory); the replaying side reports it
    /// as a divergence.
    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()>;

    /// A digest of the machine's whole guest-visible state (CPU, memory, devices).
    ///
    /// The recording side logs it every [`crate::Config::digest_interval`] points,
    /// and the replaying side compares its own, taken at the same point, with the
    /// logged value: a mismatch halts the backup as diverged. Every state the guest
    /// can observe must be in it, or a divergence goes unseen until it shows in an
    /// output.
    ///
    /// # What must stay out
    ///
    /// Anything that is not the machine's own architectural state and may differ
    /// between two sides that are in step, or a healthy backup is declared
    /// diverged:
    ///
    /// * host-side state of the devices, which lives in the [`crate::World`]: disk
    ///   contents and host buffers, packets and events queued but not yet injected,
    ///   I/O in flight on the host (only the primary performs it), the world's clock;
    /// * host timing and counters: when something happened on the host, VM entries,
    ///   exits caused by signals or preemption;
    /// * settings that may legitimately differ between the two sides.
    ///
    /// ft-sim hashes its CPU, its device models (with a read waiting for its value),
    /// the exit code and RAM; its disk, network and timers are in `SimWorld`. ft-kvm
    /// hashes its point, device models, run state, interrupt readiness, vCPU
    /// registers and RAM, and leaves out its host `Instant` of the last raised line,
    /// its exit statistics and the primary's preemption setting.
    ///
    /// # Errors
    ///
    /// The machine could not read its own state (a backend failure, never a
    /// difference: two machines in the same state digest alike or fail).
    fn digest(&mut self) -> SourceResult<u64>;

    /// Serialize the machine's whole state.
    ///
    /// # Errors
    ///
    /// [`SourceError::Snapshot`] or a backend failure when the state cannot be read
    /// or encoded.
    fn snapshot(&self) -> SourceResult<Vec<u8>>;

    /// Replace the machine's state with a snapshot.
    ///
    /// # Errors
    ///
    /// [`SourceError::Snapshot`] when the snapshot is malformed or was made by a
    /// machine of another configuration.
    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()>;

    // State transfer, for live clone (`crate::live_clone`). A backend that has none
    // keeps the defaults, which refuse with [`SourceError::Unsupported`]; such a
    // machine can still be a primary or a backup, but no backup can be cloned from it.

    /// The layout of guest memory for page-wise transfer.
    fn memory_layout(&self) -> SourceResult<MemoryLayout> {
        Err(SourceError::Unsupported("state transfer (memory layout)"))
    }

    /// Start dirty-page tracking from a clean slate: afterwards
    /// [`EventSource::take_dirty_pages`] reports every page written since this call,
    /// by the guest, by device DMA or by anything else.
    fn start_dirty_log(&mut self) -> SourceResult<()> {
        Err(SourceError::Unsupported("dirty-page tracking"))
    }

    /// Append to `out`, in increasing order, the pages written since the last call
    /// (or since [`EventSource::start_dirty_log`]), and start a new interval.
    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        let _ = out;
        Err(SourceError::Unsupported("dirty-page tracking"))
    }

    /// Stop dirty-page tracking (a clone finished or was abandoned). The default does
    /// nothing.
    fn stop_dirty_log(&mut self) {}

    /// Copy page `index` into `buf`, which is exactly one page long (the part of a
    /// short last page beyond memory reads as zeros).
    fn read_page(&self, index: u64, buf: &mut [u8]) -> SourceResult<()> {
        let _ = (index, buf);
        Err(SourceError::Unsupported("page reads"))
    }

    /// Overwrite page `index` with `data`, exactly one page long.
    fn write_page(&mut self, index: u64, data: &[u8]) -> SourceResult<()> {
        let _ = (index, data);
        Err(SourceError::Unsupported("page writes"))
    }

    /// Whether page `index` is known to hold only zeros, without reading it (a
    /// machine that tracks what was never written since it was zero). A hint: `false`
    /// means unknown, and is the default. State transfer skips reading such pages.
    fn page_is_zero(&self, index: u64) -> bool {
        let _ = index;
        false
    }

    /// Whether page `index` was written since the dirty log's current interval began
    /// ([`EventSource::start_dirty_log`] or the last
    /// [`EventSource::take_dirty_pages`]), so that the next take reports it. A hint:
    /// `false` means unknown, and is the default. A pre-copy round skips such a page:
    /// the next round, or the final pause, sends it anyway, as it is then.
    fn page_dirty_now(&self, index: u64) -> bool {
        let _ = index;
        false
    }

    /// Fill page `index` with zeros. The default writes a page of zeros with
    /// [`EventSource::write_page`]; a machine that knows the page is zero already may
    /// skip the write.
    fn zero_page(&mut self, index: u64) -> SourceResult<()> {
        let size = self.memory_layout()?.page_size as usize;
        self.write_page(index, &vec![0; size])
    }

    /// Serialize the machine's whole state apart from guest memory: CPU registers and
    /// device models, everything [`EventSource::digest`] covers besides memory.
    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        Err(SourceError::Unsupported("CPU and device state transfer"))
    }

    /// Replace the machine's state apart from guest memory with what
    /// [`EventSource::save_cpu_devices`] produced on a machine of the same layout.
    fn load_cpu_devices(&mut self, state: &[u8]) -> SourceResult<()> {
        let _ = state;
        Err(SourceError::Unsupported("CPU and device state transfer"))
    }
}

impl<T: EventSource + ?Sized> EventSource for Box<T> {
    fn point(&self) -> ExecPoint {
        (**self).point()
    }
    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        (**self).run(until)
    }
    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        (**self).supply_input(data)
    }
    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        (**self).inject(event)
    }
    fn digest(&mut self) -> SourceResult<u64> {
        (**self).digest()
    }
    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        (**self).snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()> {
        (**self).restore(snapshot)
    }
    fn memory_layout(&self) -> SourceResult<MemoryLayout> {
        (**self).memory_layout()
    }
    fn start_dirty_log(&mut self) -> SourceResult<()> {
        (**self).start_dirty_log()
    }
    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        (**self).take_dirty_pages(out)
    }
    fn stop_dirty_log(&mut self) {
        (**self).stop_dirty_log()
    }
    fn read_page(&self, index: u64, buf: &mut [u8]) -> SourceResult<()> {
        (**self).read_page(index, buf)
    }
    fn write_page(&mut self, index: u64, data: &[u8]) -> SourceResult<()> {
        (**self).write_page(index, data)
    }
    fn page_is_zero(&self, index: u64) -> bool {
        (**self).page_is_zero(index)
    }
    fn page_dirty_now(&self, index: u64) -> bool {
        (**self).page_dirty_now(index)
    }
    fn zero_page(&mut self, index: u64) -> SourceResult<()> {
        (**self).zero_page(index)
    }
    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        (**self).save_cpu_devices()
    }
    fn load_cpu_devices(&mut self, state: &[u8]) -> SourceResult<()> {
        (**self).load_cpu_devices(state)
    }
}
