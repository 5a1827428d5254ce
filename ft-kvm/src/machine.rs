//! [`KvmMachine`]: a KVM VM behind [`ft_core::EventSource`], with **deterministic-exit
//! delivery** of asynchronous events.
//!
//! # Execution points: the landmark design
//!
//! A KVM guest has no instruction counter here (no PMU), so the machine counts
//! something else that is exact: **deterministic exits**. Every MMIO access, port access
//! and `hlt` the guest executes leaves the guest (KVM cannot complete it alone: there is
//! no in-kernel device behind these addresses), and nothing else is counted. The
//! execution point is `ExecPoint { count: deterministic exits so far, sub: 0 }`.
//! Exits that the guest did not cause (a signal interrupting `KVM_RUN`, an interrupt
//! window opening, host scheduling) are re-entered without counting and without
//! injecting anything.
//!
//! `run(until)` enters the guest and handles exits until the count reaches
//! `until.count` or a [`Stop`] happens (an input read, an output, an I/O start, `hlt`,
//! the guest's exit). Asynchronous events (interrupts, packets, I/O completions with
//! their DMA data) are applied by `inject` at the machine's point, which is always a
//! deterministic-exit boundary; the vector reaches the vCPU (`KVM_INTERRUPT`) at the
//! next entry, and only if the exit reported the vCPU ready for it
//! (`ready_for_interrupt_injection` and IF); otherwise the line stays raised and is
//! retried at each later deterministic exit (interrupts are never injected at an exit
//! the guest did not cause, so `request_interrupt_window` is not used). A `hlt` exit
//! with a line pending and IF set injects at once and runs on, so [`Stop::Idle`] always
//! means that nothing can be delivered until an event is injected.
//!
//! ## Why it is exact
//!
//! * Between two deterministic exits the guest runs without any outside influence: no
//!   device can be touched without an exit, and no interrupt is injected except at a
//!   deterministic exit. Its state at the k-th exit is therefore a function of its
//!   state at the (k-1)-th exit and of what the machine gave it there (a read value, an
//!   injected vector, DMA data written into its memory).
//! * By induction, the state at the k-th exit is a function of the initial state and
//!   the inputs applied at exits before k. The primary logs each input with the exit
//!   count at which it applied it; the backup applies it at the same count, so both
//!   pass through the same states. Injection itself is decided by the same function
//!   on both sides (the line state and the ready flag the exit reported).
//! * The remaining nondeterminism is instructions KVM cannot trap on this host
//!   (`rdtsc`, `rdrand`, `rdseed`, `cpuid`); guests must not let them reach their state,
//!   and if one does, the periodic state digest (all registers and all of RAM) differs
//!   and replay halts with a divergence instead of drifting silently.
//!
//! ## What it costs
//!
//! An asynchronous event waits until the guest's next deterministic exit after the
//! primary saw it: a CPL3 loop that computes for 10 ms without touching a device delays
//! a timer interrupt by up to 10 ms. The benchmark measures this latency for its
//! workload. Every exit also costs one extra `KVM_RUN` with `immediate_exit` to
//! complete the instruction before the machine reports its state (so digests and
//! snapshots at a point see RIP past the instruction).
//!
//! ## Exact mid-stream delivery (opt-in)
//!
//! Where the host can single-step the guest (probed, see [`crate::midstream`]),
//! [`KvmMachine::enable_midstream`] makes every single-step debug exit a landmark too:
//! the point becomes `{count, sub}` with `sub` the debug exits since the last
//! deterministic exit, injection is allowed at every landmark, and the primary
//! ([`KvmMachine::set_preempt_quantum`]) returns from `run` at landmarks so that events
//! are delivered mid-stream. `run(until)` with `until.sub > 0` on a replay stops at exactly
//! that landmark, or fails with [`MachineError::LandmarkUnreachable`]. The exactness
//! argument is in [`crate::midstream`].

use std::time::{Duration, Instant};

use ft_core::device_set::model::input_value;
use ft_core::digest::StateHasher;
use ft_core::snapshot_frame;
use ft_core::{
    AsyncEvent, EventSource, ExecPoint, InputRequest, MemoryLayout, SourceError, SourceResult, Stop,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::arch::x86_64::{KERNEL_BASE, KERNEL_STACK_TOP, MIN_MEMORY, USER_BASE};
use crate::devices::{Action, Devices, ReadResult};
use crate::exit::ExitEvent;
use crate::guest::{self, GuestImage};
use crate::memory::PAGE_SIZE;
use crate::vm::{Vm, VmError};

/// Errors of building or restoring a machine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MachineError {
    /// The VM could not be created or driven.
    #[error("vm: {0}")]
    Vm(#[from] VmError),
    /// The guest could not be built.
    #[error("guest: {0}")]
    Guest(#[from] guest::GuestError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// Mid-stream delivery was asked for on a host that cannot single-step the guest.
    #[error("mid-stream delivery needs single-step, which this host does not offer ({0})")]
    NoSingleStep(String),
    /// A replay ran to a mid-stream point that the execution does not contain: the guest
    /// made its next deterministic exit after `steps` landmarks, before `target`.
    #[error("mid-stream landmark {target} is unreachable: the guest made a deterministic exit after {steps} single-steps")]
    LandmarkUnreachable {
        /// The point asked for.
        target: ExecPoint,
        /// Single-step landmarks seen in that epoch.
        steps: u64,
    },
    /// A mid-stream point was asked for on a machine without mid-stream delivery.
    #[error("mid-stream point {0} asked for, but mid-stream delivery is off")]
    MidStreamOff(ExecPoint),
}

/// Result alias of this module.
pub type Result<T, E = MachineError> = std::result::Result<T, E>;

/// How the block device's disk is attached (the standard device set's, as in ft-sim).
pub use ft_core::device_set::model::DiskMode;

/// Configuration of a KVM machine. Both sides of a pair must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Guest RAM in bytes (at least [`MIN_MEMORY`], a multiple of 4 KiB).
    pub mem_size: usize,
    /// Disk attachment.
    pub disk: DiskMode,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            mem_size: 8 << 20,
            disk: DiskMode::Shared {
                backup_reads_disk: false,
            },
        }
    }
}

impl MachineConfig {
    /// Top of the workload's stack.
    pub fn user_stack_top(&self) -> u64 {
        self.mem_size as u64 - 0x1000
    }
}

/// The vCPU loop's state between calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum RunState {
    /// At a deterministic-exit boundary (or the start), the vCPU state consistent.
    Boundary,
    /// A read exit waits for the value of a nondeterministic register.
    AwaitingInput(InputRequest),
    /// The guest executed `hlt`; it waits for an interrupt.
    Idle,
    /// The guest ended.
    Exited(u64),
    /// The backend failed; the machine is unusable.
    Failed(String),
}

/// Counters of the machine, for benchmarks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineStats {
    /// `KVM_RUN` calls that entered the guest.
    pub entries: u64,
    /// Exits not caused by the guest (not counted as points).
    pub async_exits: u64,
    /// Interrupts injected.
    pub injections: u64,
    /// Sum of the wall time from raising a line to injecting its vector.
    pub delivery_total: Duration,
    /// Largest such time.
    pub delivery_max: Duration,
    /// Sum of the deterministic exits from raising a line to injecting it.
    pub delivery_exits: u64,
    /// Single-step landmarks (debug exits) passed.
    pub steps: u64,
    /// Times `run` returned early at a landmark (the primary's preemption).
    pub preemptions: u64,
    /// Interrupts injected at a mid-stream landmark (not at a deterministic exit).
    pub midstream_injections: u64,
}

/// An x86-64 KVM guest behind [`EventSource`]. See the module docs.
pub struct KvmMachine {
    vm: Vm,
    cfg: MachineConfig,
    dev: Devices,
    count: u64,
    state: RunState,
    /// At a deterministic boundary: injection allowed.
    at_boundary: bool,
    /// The last deterministic exit reported the vCPU ready for an interrupt.
    ready: bool,
    /// RFLAGS.IF at the last deterministic exit.
    if_flag: bool,
    raised: Option<(Instant, u64)>,
    stats: MachineStats,
    /// Mid-stream delivery: the vCPU single-steps, every debug exit is a landmark.
    midstream: bool,
    /// Single-step landmarks since the last deterministic exit (the point's `sub`).
    steps: u64,
    /// The last stop was a single-step landmark, not a deterministic exit.
    at_landmark: bool,
    /// The primary's preemption: return from `run` every this many landmarks.
    preempt: Option<u64>,
}

impl std::fmt::Debug for KvmMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmMachine")
            .field("count", &self.count)
            .field("state", &self.state)
            .finish()
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"FTKVMSNP";
/// The frame of [`EventSource::save_cpu_devices`]: a snapshot with no memory.
const STATE_MAGIC: &[u8; 8] = b"FTKVMCPU";
/// 2: mid-stream state (`midstream`, `steps`, `at_landmark`) and the XSAVE area.
const SNAPSHOT_VERSION: u32 = 2;

#[derive(Serialize, Deserialize)]
struct SnapshotMeta {
    cfg: MachineConfig,
    dev: Devices,
    count: u64,
    state: RunState,
    at_boundary: bool,
    ready: bool,
    if_flag: bool,
    midstream: bool,
    steps: u64,
    at_landmark: bool,
    vcpu: crate::vm::VcpuState,
}

impl KvmMachine {
    /// A new VM running `image`: the kernel at [`KERNEL_BASE`], the workload at
    /// [`USER_BASE`], the vCPU in 64-bit mode at the kernel's entry.
    pub fn new(cfg: MachineConfig, image: &GuestImage) -> Result<KvmMachine> {
        if cfg.mem_size < MIN_MEMORY {
            return Err(MachineError::Config(format!(
                "memory {:#x} is below the layout's minimum {MIN_MEMORY:#x}",
                cfg.mem_size
            )));
        }
        let mut vm = Vm::new(cfg.mem_size)?;
        vm.setup_long_mode(KERNEL_BASE, KERNEL_STACK_TOP)?;
        vm.memory_mut()
            .write(KERNEL_BASE, &image.kernel)
            .map_err(VmError::from)?;
        vm.memory_mut()
            .write(USER_BASE, &image.user)
            .map_err(VmError::from)?;
        Ok(KvmMachine {
            vm,
            cfg,
            dev: Devices::default(),
            count: 0,
            state: RunState::Boundary,
            at_boundary: true,
            ready: false,
            if_flag: false,
            raised: None,
            stats: MachineStats::default(),
            midstream: false,
            steps: 0,
            at_landmark: false,
            preempt: None,
        })
    }

    /// A new VM running the project's kernel and `workload` (CPL3 code for
    /// [`USER_BASE`]).
    pub fn with_workload(cfg: MachineConfig, workload: Vec<u8>) -> Result<KvmMachine> {
        let kernel = guest::kernel(cfg.user_stack_top())?;
        Self::new(
            cfg,
            &GuestImage {
                kernel,
                user: workload,
            },
        )
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// The VM (memory, registers).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The devices.
    pub fn devices(&self) -> &Devices {
        &self.dev
    }

    /// Counters.
    pub fn stats(&self) -> &MachineStats {
        &self.stats
    }

    /// The guest's exit code, once it ended.
    pub fn exit_code(&self) -> Option<u64> {
        match self.state {
            RunState::Exited(c) => Some(c),
            _ => None,
        }
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> SourceError {
        let msg = e.to_string();
        self.state = RunState::Failed(msg.clone());
        SourceError::Backend(msg)
    }

    /// A new VM running the project's kernel and `workload` entered at `privilege`
    /// (CPL0 workloads are what mid-stream delivery is for on PVM hosts).
    pub fn with_workload_at(
        cfg: MachineConfig,
        workload: Vec<u8>,
        privilege: guest::WorkloadPrivilege,
    ) -> Result<KvmMachine> {
        let kernel = guest::kernel_entering(cfg.user_stack_top(), privilege)?;
        Self::new(
            cfg,
            &GuestImage {
                kernel,
                user: workload,
            },
        )
    }

    /// Turn on exact mid-stream delivery (see [`crate::midstream`]): from now on the
    /// vCPU single-steps and every debug exit is a landmark `{count, sub}`. Both sides
    /// of a pair must enable it at the same point (normally before the first `run`);
    /// snapshots carry it. Fails where the probe found no single-step at CPL0.
    pub fn enable_midstream(&mut self) -> Result<()> {
        let caps = crate::midstream::probe_guest_debug()
            .map_err(|e| MachineError::NoSingleStep(e.to_string()))?;
        if !caps.single_step_cpl0 && !caps.single_step_cpl3 {
            return Err(MachineError::NoSingleStep(format!("{caps:?}")));
        }
        self.vm.set_guest_debug(true, None)?;
        self.midstream = true;
        Ok(())
    }

    /// Whether mid-stream delivery is on.
    pub fn midstream(&self) -> bool {
        self.midstream
    }

    /// The primary's preemption: with mid-stream delivery on, `run` returns
    /// [`Stop::Reached`] early after `quantum` landmarks without a deterministic exit
    /// (None: never), so that the recorder can deliver ready events mid-stream. Local to
    /// one side (not in snapshots); it never changes what the guest does.
    pub fn set_preempt_quantum(&mut self, quantum: Option<u64>) {
        self.preempt = quantum.filter(|q| *q > 0);
    }

    /// After a single-step debug exit: a landmark, the vCPU state is complete.
    fn landmark(&mut self) {
        self.steps += 1;
        self.stats.steps += 1;
        self.at_boundary = true;
        self.at_landmark = true;
        self.ready = self.vm.ready_for_interrupt();
        self.if_flag = self.vm.if_flag();
    }

    /// After a deterministic exit: the point advanced, the vCPU state is complete.
    fn boundary(&mut self) {
        self.steps = 0;
        self.at_landmark = false;
        self.count += 1;
        self.at_boundary = true;
        self.ready = self.vm.ready_for_interrupt();
        self.if_flag = self.vm.if_flag();
    }

    fn maybe_inject(&mut self) -> SourceResult<()> {
        if !self.at_boundary {
            return Ok(());
        }
        let ready = match self.state {
            RunState::Boundary => self.ready,
            // A halted vCPU with IF set takes an interrupt (that is what wakes it).
            RunState::Idle => self.ready || self.if_flag,
            _ => false,
        };
        if !ready {
            return Ok(());
        }
        if let Some(v) = self.dev.next_vector() {
            self.vm.inject_interrupt(v).map_err(|e| self.fail(e))?;
            self.dev.mark_injected(v);
            self.stats.injections += 1;
            if self.at_landmark {
                self.stats.midstream_injections += 1;
            }
            if let Some((t, c)) = self.raised.take() {
                let d = t.elapsed();
                self.stats.delivery_total += d;
                self.stats.delivery_max = self.stats.delivery_max.max(d);
                self.stats.delivery_exits += self.count - c;
            }
            self.state = RunState::Boundary;
            self.ready = false;
        }
        Ok(())
    }

    fn handle(&mut self, ev: ExitEvent) -> SourceResult<Option<Stop>> {
        let action = match ev {
            ExitEvent::MmioRead { addr, len } => {
                let r = self.dev.mmio_read(addr, len);
                return self.read_result(r);
            }
            ExitEvent::PioIn { port, len } => {
                let r = self.dev.pio_read(port, len);
                return self.read_result(r);
            }
            ExitEvent::MmioWrite { addr, len, value } => self.dev.mmio_write(addr, len, value),
            ExitEvent::PioOut { port, len, value } => self.dev.pio_write(port, len, value),
            ExitEvent::Hlt => {
                self.boundary();
                self.state = RunState::Idle;
                return Ok(Some(Stop::Idle));
            }
            other => return Err(self.fail(format!("{other:?} is not a deterministic exit"))),
        };
        self.vm.complete(0).map_err(|e| self.fail(e))?;
        self.boundary();
        self.perform(action)
    }

    fn read_result(&mut self, r: ReadResult) -> SourceResult<Option<Stop>> {
        match r {
            ReadResult::Value(v) => {
                self.vm.complete(v).map_err(|e| self.fail(e))?;
                self.boundary();
                Ok(None)
            }
            ReadResult::Input(req) => {
                self.state = RunState::AwaitingInput(req.clone());
                Ok(Some(Stop::Input(req)))
            }
        }
    }

    fn perform(&mut self, action: Action) -> SourceResult<Option<Stop>> {
        Ok(match action {
            Action::None => None,
            Action::UartLine => Some(self.dev.model.take_uart_line()),
            Action::TimerArm(delay) => Some(self.dev.model.arm_timer(delay)),
            Action::BlockCmd(cmd) => {
                let stop = self
                    .dev
                    .model
                    .block_command(cmd, self.cfg.disk, self.vm.memory());
                if stop.is_none() {
                    self.note_raised();
                }
                stop
            }
            Action::NetRxPop => {
                self.dev.model.net_rx_pop(self.vm.memory_mut());
                None
            }
            Action::NetTxSend => self.dev.model.net_tx_send(self.vm.memory()),
            Action::Exit(code) => {
                self.state = RunState::Exited(code);
                Some(Stop::Halted(code))
            }
        })
    }

    fn note_raised(&mut self) {
        if self.raised.is_none() {
            self.raised = Some((Instant::now(), self.count));
        }
    }

    fn hash_vcpu(&self, h: &mut StateHasher) -> crate::vm::Result<()> {
        let r = self.vm.regs()?;
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags,
        ] {
            h.write_u64(v);
        }
        let s = self.vm.sregs()?;
        for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
            h.write_u64(seg.base);
            h.write_u64(u64::from(seg.limit));
            h.write_u64(u64::from(seg.selector));
            h.write_bytes(&[seg.type_, seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g]);
        }
        for t in [&s.gdt, &s.idt] {
            h.write_u64(t.base);
            h.write_u64(u64::from(t.limit));
        }
        for v in [s.cr0, s.cr2, s.cr3, s.cr4, s.efer] {
            h.write_u64(v);
        }
        let f = self.vm.fpu()?;
        h.write_u64(u64::from(f.fcw) | u64::from(f.fsw) << 16 | u64::from(f.ftwx) << 32);
        h.write_u64(u64::from(f.mxcsr));
        for x in f.fpr.iter().chain(f.xmm.iter()) {
            h.write_bytes(x);
        }
        if let Some(x) = self.vm.xsave()? {
            h.write_bytes(&avx_upper_halves(&x));
        }
        Ok(())
    }

    /// Digest of the vCPU registers only (for tests that look for the first
    /// difference).
    pub fn vcpu_digest(&self) -> u64 {
        let mut h = StateHasher::new();
        if let Err(e) = self.hash_vcpu(&mut h) {
            h.write_bytes(e.to_string().as_bytes());
        }
        h.finish()
    }
}

impl EventSource for KvmMachine {
    fn point(&self) -> ExecPoint {
        ExecPoint {
            count: self.count,
            sub: self.steps,
        }
    }

    fn run(&mut self, until: ExecPoint) -> SourceResult<Stop> {
        let here = self.point();
        if until < here {
            return Err(SourceError::Backwards {
                current: here,
                target: until,
            });
        }
        if until == here {
            return Ok(Stop::Reached);
        }
        if until.sub > 0 && !self.midstream {
            return Err(self.fail(MachineError::MidStreamOff(until)));
        }
        match &self.state {
            RunState::Exited(c) => return Ok(Stop::Halted(*c)),
            RunState::AwaitingInput(req) => return Ok(Stop::Input(req.clone())),
            RunState::Failed(m) => return Err(SourceError::Backend(m.clone())),
            RunState::Idle => {
                self.maybe_inject()?;
                if self.state == RunState::Idle {
                    return Ok(Stop::Idle);
                }
            }
            RunState::Boundary => self.maybe_inject()?,
        }
        let mut since_return = 0u64;
        loop {
            self.at_boundary = false;
            self.stats.entries += 1;
            let ev = self.vm.run().map_err(|e| self.fail(e))?;
            if !ev.is_deterministic() {
                match ev {
                    ExitEvent::Debug { .. } if self.midstream => {
                        self.landmark();
                        since_return += 1;
                        if self.point() == until {
                            return Ok(Stop::Reached);
                        }
                        if self.preempt.is_some_and(|q| since_return >= q) {
                            self.stats.preemptions += 1;
                            return Ok(Stop::Reached);
                        }
                        self.maybe_inject()?;
                        continue;
                    }
                    ExitEvent::Interrupted | ExitEvent::IrqWindowOpen => {
                        self.stats.async_exits += 1;
                        continue;
                    }
                    ExitEvent::Shutdown => {
                        return Err(self.fail("the guest triple-faulted (shutdown exit)"))
                    }
                    other => return Err(self.fail(format!("unexpected exit {other:?}"))),
                }
            }
            if until.sub > 0 && self.count == until.count {
                // The epoch ends before the landmark: this execution does not contain it.
                let e = MachineError::LandmarkUnreachable {
                    target: until,
                    steps: self.steps,
                };
                return Err(self.fail(e));
            }
            since_return = 0;
            let mut stop = self.handle(ev)?;
            if stop == Some(Stop::Idle) {
                // A line raised while the vCPU could not take it (in a handler, IF
                // clear) is taken by the `hlt` that follows when no exit came between:
                // the guest is not idle then. `Stop::Idle` promises a point that stays
                // put until an event is injected, and the replayer relies on it: a
                // machine that woke on the next `run` instead would let the recorder
                // (which runs again after an idle step) go on where the replayer
                // reports a divergence.
                self.maybe_inject()?;
                if self.state != RunState::Idle {
                    stop = None;
                }
            }
            match stop {
                Some(Stop::Idle) if self.point() >= until => return Ok(Stop::Reached),
                Some(s) => return Ok(s),
                None if self.point() >= until => return Ok(Stop::Reached),
                None => self.maybe_inject()?,
            }
        }
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        let RunState::AwaitingInput(req) = &self.state else {
            return Err(SourceError::UnexpectedInput("no read is pending".into()));
        };
        let value = input_value(req.size, data)?;
        self.vm.complete(value).map_err(|e| self.fail(e))?;
        self.state = RunState::Boundary;
        self.boundary();
        Ok(())
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        self.dev.model.inject(event, self.vm.memory_mut())?;
        self.note_raised();
        Ok(())
    }

    /// # Errors
    ///
    /// The vCPU's registers could not be read (the VM is unusable).
    fn digest(&mut self) -> SourceResult<u64> {
        let encode = |e: postcard::Error| SourceError::Backend(format!("encoding state: {e}"));
        let mut h = StateHasher::new();
        h.write_u64(self.count);
        h.write_u64(self.steps);
        h.write_bytes(&postcard::to_stdvec(&self.dev).map_err(encode)?);
        h.write_bytes(&postcard::to_stdvec(&self.state).map_err(encode)?);
        h.write_u64(u64::from(self.ready) | u64::from(self.if_flag) << 1);
        self.hash_vcpu(&mut h)
            .map_err(|e| SourceError::Backend(format!("reading the vCPU for a digest: {e}")))?;
        h.write_bytes(self.vm.memory().as_slice());
        Ok(h.finish())
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        let meta = postcard::to_stdvec(&self.snapshot_meta()?)
            .map_err(|e| SourceError::Snapshot(e.to_string()))?;
        Ok(snapshot_frame::encode(
            SNAPSHOT_MAGIC,
            SNAPSHOT_VERSION,
            &meta,
            self.vm.memory().as_slice(),
        ))
    }

    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()> {
        let (meta, ram) =
            snapshot_frame::decode(snapshot, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, "KVM machine")?;
        let meta: SnapshotMeta =
            postcard::from_bytes(meta).map_err(|e| SourceError::Snapshot(e.to_string()))?;
        if ram.len() != self.vm.memory().size() {
            return Err(SourceError::Snapshot(
                "snapshot RAM size does not match this machine's memory (use the same configuration)"
                    .into(),
            ));
        }
        self.vm.memory_mut().as_mut_slice().copy_from_slice(ram);
        self.apply_meta(meta)
    }

    fn memory_layout(&self) -> SourceResult<MemoryLayout> {
        Ok(MemoryLayout {
            page_size: PAGE_SIZE as u32,
            pages: (self.vm.memory().size() / PAGE_SIZE) as u64,
        })
    }

    /// KVM's dirty log of the guest's writes, and the host's own bitmap of device DMA
    /// (which KVM does not see).
    fn start_dirty_log(&mut self) -> SourceResult<()> {
        self.vm
            .set_dirty_logging(true)
            .map_err(|e| SourceError::Backend(format!("dirty-page tracking: {e}")))?;
        self.vm.memory_mut().take_host_dirty();
        Ok(())
    }

    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        let guest = self
            .vm
            .dirty_log()
            .map_err(|e| SourceError::Backend(format!("dirty-page tracking: {e}")))?;
        let host = self.vm.memory_mut().take_host_dirty();
        for (i, (g, h)) in guest.iter().zip(host.iter()).enumerate() {
            let mut bits = g | h;
            while bits != 0 {
                out.push(i as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
        Ok(())
    }

    fn stop_dirty_log(&mut self) {
        // Best effort: a slot that keeps logging costs the host a little, nothing more.
        let _ = self.vm.set_dirty_logging(false);
    }

    fn read_page(&self, index: u64, buf: &mut [u8]) -> SourceResult<()> {
        let addr = self.page_addr(index, buf.len())?;
        self.vm
            .memory()
            .read(addr, buf)
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    fn write_page(&mut self, index: u64, data: &[u8]) -> SourceResult<()> {
        let addr = self.page_addr(index, data.len())?;
        self.vm
            .memory_mut()
            .write(addr, data)
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    /// A page already zero is not written: a fresh VM's memory is untouched anonymous
    /// memory, and reading it costs no allocation where writing zeros would.
    fn zero_page(&mut self, index: u64) -> SourceResult<()> {
        let addr = self.page_addr(index, PAGE_SIZE)?;
        let mem = self.vm.memory_mut();
        let start = addr as usize;
        let zero = mem
            .as_slice()
            .get(start..start + PAGE_SIZE)
            .is_some_and(|p| p.iter().all(|&b| b == 0));
        if zero {
            return Ok(());
        }
        mem.write(addr, &[0; PAGE_SIZE])
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        let meta = postcard::to_stdvec(&self.snapshot_meta()?)
            .map_err(|e| SourceError::Snapshot(e.to_string()))?;
        Ok(snapshot_frame::encode(
            STATE_MAGIC,
            SNAPSHOT_VERSION,
            &meta,
            &[],
        ))
    }

    fn load_cpu_devices(&mut self, state: &[u8]) -> SourceResult<()> {
        let (meta, rest) =
            snapshot_frame::decode(state, STATE_MAGIC, SNAPSHOT_VERSION, "KVM CPU and device")?;
        if !rest.is_empty() {
            return Err(SourceError::Snapshot(
                "CPU and device state carries memory".into(),
            ));
        }
        let meta: SnapshotMeta =
            postcard::from_bytes(meta).map_err(|e| SourceError::Snapshot(e.to_string()))?;
        if meta.cfg != self.cfg {
            return Err(SourceError::Snapshot(format!(
                "the state is of a machine configured {:?}, this one is {:?}",
                meta.cfg, self.cfg
            )));
        }
        self.apply_meta(meta)
    }
}

impl KvmMachine {
    /// Everything a snapshot holds apart from memory.
    fn snapshot_meta(&self) -> SourceResult<SnapshotMeta> {
        if matches!(self.state, RunState::AwaitingInput(_) | RunState::Failed(_)) {
            return Err(SourceError::Snapshot(format!(
                "cannot snapshot in state {:?}",
                self.state
            )));
        }
        let vcpu = self
            .vm
            .state()
            .map_err(|e| SourceError::Snapshot(e.to_string()))?;
        Ok(SnapshotMeta {
            cfg: self.cfg,
            dev: self.dev.clone(),
            count: self.count,
            state: self.state.clone(),
            at_boundary: self.at_boundary,
            ready: self.ready,
            if_flag: self.if_flag,
            midstream: self.midstream,
            steps: self.steps,
            at_landmark: self.at_landmark,
            vcpu,
        })
    }

    /// Take a snapshot's state apart from memory.
    fn apply_meta(&mut self, meta: SnapshotMeta) -> SourceResult<()> {
        self.vm
            .set_state(&meta.vcpu)
            .map_err(|e| SourceError::Snapshot(e.to_string()))?;
        self.cfg = meta.cfg;
        self.dev = meta.dev;
        self.count = meta.count;
        self.state = meta.state;
        self.at_boundary = meta.at_boundary;
        self.ready = meta.ready;
        self.if_flag = meta.if_flag;
        self.midstream = meta.midstream;
        self.steps = meta.steps;
        self.at_landmark = meta.at_landmark;
        self.vm
            .set_guest_debug(self.midstream, None)
            .map_err(|e| SourceError::Snapshot(e.to_string()))?;
        self.raised = None;
        Ok(())
    }

    /// The guest-physical address of page `index`, for a buffer of `len` bytes.
    fn page_addr(&self, index: u64, len: usize) -> SourceResult<u64> {
        let pages = (self.vm.memory().size() / PAGE_SIZE) as u64;
        if len != PAGE_SIZE || index >= pages {
            return Err(SourceError::Backend(format!(
                "page {index} ({len} bytes) is not one of the {pages} pages of {PAGE_SIZE} bytes"
            )));
        }
        Ok(index * PAGE_SIZE as u64)
    }
}

/// Word offset of XSTATE_BV in the XSAVE area (byte 512).
const XSTATE_BV_WORD: usize = 128;
/// Word offset of the YMM_Hi128 component (byte 576, 256 bytes) in the standard format.
const YMM_HI_WORD: usize = 144;

/// The upper halves of YMM0-15 as the guest sees them: the XSAVE area's YMM_Hi128
/// component when XSTATE_BV says it is in use, and zeros (its init value) when not, so
/// that two equal guest states digest alike whatever the area's bookkeeping.
pub fn avx_upper_halves(xsave: &[u32]) -> Vec<u8> {
    let in_use = xsave.get(XSTATE_BV_WORD).is_some_and(|bv| bv & 0b100 != 0);
    let mut out = vec![0u8; 256];
    if in_use {
        if let Some(words) = xsave.get(YMM_HI_WORD..YMM_HI_WORD + 64) {
            for (d, w) in out.chunks_exact_mut(4).zip(words) {
                d.copy_from_slice(&w.to_le_bytes());
            }
        }
    }
    out
}
