//! The sim machine: CPU, RAM and devices behind [`ft_core::EventSource`].

use ft_core::device_set::model::input_value;
use ft_core::digest::StateHasher;
use ft_core::snapshot_frame;
use ft_core::{AsyncEvent, EventSource, ExecPoint, MemoryLayout, SourceError, SourceResult, Stop};
use serde::{Deserialize, Serialize};

use crate::cpu::{Cpu, StepExit};
use crate::devices::{Action, Devices};
use crate::htif::{Call, Command};
use crate::memory::{Ram, PAGE_SIZE, RAM_BASE};

/// How the block device's disk is attached (the standard device set's).
pub use ft_core::device_set::model::DiskMode;

/// Configuration of a sim machine. Both sides of a pair must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// RAM size in bytes.
    pub ram_size: usize,
    /// Disk attachment.
    pub disk: DiskMode,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            ram_size: 1 << 20,
            disk: DiskMode::Shared {
                backup_reads_disk: false,
            },
        }
    }
}

/// Errors of building a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The image does not load.
    #[error("guest image: {0}")]
    Image(#[from] crate::loader::LoaderError),
    /// The snapshot is not usable.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Result alias of this module.
pub type Result<T, E = MachineError> = std::result::Result<T, E>;

/// A RISC-V machine: CPU, RAM and devices. Deterministic and instruction-counted; its
/// execution point is the retired-instruction count.
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: MachineConfig,
    cpu: Cpu,
    ram: Ram,
    dev: Devices,
    exited: Option<u64>,
    tohost: Option<u64>,
    fromhost: Option<u64>,
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"FTSIMSNP";
/// The frame of [`EventSource::save_cpu_devices`]: a snapshot with no memory.
const STATE_MAGIC: &[u8; 8] = b"FTSIMCPU";
/// 2: the `fromhost` address (HTIF answers). 3: the hart's `lr` reservation and
/// counter offsets.
const SNAPSHOT_VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
struct SnapshotMeta {
    cfg: MachineConfig,
    cpu: Cpu,
    dev: Devices,
    exited: Option<u64>,
    tohost: Option<u64>,
    fromhost: Option<u64>,
}

impl Machine {
    /// A machine with `image` (raw code) loaded at the start of RAM and the CPU there.
    pub fn from_raw(cfg: MachineConfig, image: &[u8]) -> Result<Machine> {
        let mut ram = Ram::new(cfg.ram_size);
        let img = crate::loader::load_raw(image, &mut ram, RAM_BASE)?;
        Ok(Self::with(cfg, ram, &img))
    }

    /// A machine with a static ELF64 RISC-V executable loaded. A `tohost` symbol, if
    /// present, is the program's HTIF ([`crate::htif`]): writing `(code << 1) | 1`
    /// ends the run, and the console and system-call proxy answer in `fromhost`.
    pub fn from_elf(cfg: MachineConfig, elf: &[u8]) -> Result<Machine> {
        let mut ram = Ram::new(cfg.ram_size);
        let img = crate::loader::load_elf(elf, &mut ram)?;
        Ok(Self::with(cfg, ram, &img))
    }

    fn with(cfg: MachineConfig, mut ram: Ram, img: &crate::loader::LoadedImage) -> Machine {
        ram.clear_dirty();
        let mut cpu = Cpu::new(img.entry);
        cpu.set_store_watch(img.tohost);
        Machine {
            cfg,
            cpu,
            ram,
            dev: Devices::default(),
            exited: None,
            tohost: img.tohost,
            fromhost: img.fromhost,
        }
    }

    /// The guest wrote `v` to its `tohost` at `addr`: carry out the HTIF command.
    fn htif(&mut self, addr: u64, v: u64) -> Option<Stop> {
        let command = crate::htif::decode(v)?;
        let stop = match command {
            Command::Exit(code) => {
                self.exited = Some(code);
                return Some(Stop::Halted(code));
            }
            Command::Putchar(b) => self
                .dev
                .model
                .uart_byte(b)
                .then(|| self.dev.model.take_uart_line()),
            Command::Syscall(magic) => match self.syscall(magic) {
                Some(stop) => stop,
                None => {
                    // The block is not in RAM: no result to give, so no answer.
                    let _ = self.ram.store_u64(addr, 0);
                    return None;
                }
            },
            Command::Unknown { .. } => None,
        };
        // Answer as spike does: `tohost` free again, then `fromhost`. `tohost` is in
        // RAM (the guest's store to it was a RAM store); a `fromhost` symbol outside
        // RAM cannot be answered in, and the store fails harmlessly.
        let _ = self.ram.store_u64(addr, 0);
        if let (Some(answer), Some(fromhost)) = (crate::htif::answer(command), self.fromhost) {
            let _ = self.ram.store_u64(fromhost, answer);
        }
        stop
    }

    /// A proxied system call of the `magic_mem` block at `magic`: `None` if the block
    /// is not in RAM, else the stop it causes, if any. A write goes out as one output
    /// (through the console's line buffer, with what it held).
    fn syscall(&mut self, magic: u64) -> Option<Option<Stop>> {
        let word = |i: u64| self.ram.load_u64(magic.wrapping_add(8 * i)).ok();
        let (Some(n), Some(a0), Some(a1), Some(a2)) = (word(0), word(1), word(2), word(3)) else {
            return None;
        };
        if self.ram.store_u64(magic, 0).is_err() {
            return None;
        }
        let (ret, stop) = match crate::htif::call([n, a0, a1, a2]) {
            Call::Exit(code) => {
                self.exited = Some(code);
                return Some(Some(Stop::Halted(code)));
            }
            Call::Fail(e) => (e as u64, None),
            Call::Write(buf, len) => {
                let mut bytes = vec![0; len as usize];
                match self.ram.read(buf, &mut bytes) {
                    Ok(()) => {
                        let mut line = false;
                        for b in bytes {
                            line |= self.dev.model.uart_byte(b);
                        }
                        (len, line.then(|| self.dev.model.take_uart_line()))
                    }
                    Err(_) => (crate::htif::WRITE_FAULT as u64, None),
                }
            }
        };
        let _ = self.ram.store_u64(magic, ret);
        Some(stop)
    }

    /// The CPU.
    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }

    /// The RAM.
    pub fn ram(&self) -> &Ram {
        &self.ram
    }

    /// The RAM, mutably (for loaders and migration; not behind the engine's back).
    pub fn ram_mut(&mut self) -> &mut Ram {
        &mut self.ram
    }

    /// The configuration.
    pub fn config(&self) -> &MachineConfig {
        &self.cfg
    }

    /// Packets the network device dropped because its queue was full.
    pub fn net_dropped(&self) -> u64 {
        self.dev.model.net_dropped
    }

    fn meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            cfg: self.cfg,
            cpu: self.cpu.clone(),
            dev: self.dev.clone(),
            exited: self.exited,
            tohost: self.tohost,
            fromhost: self.fromhost,
        }
    }

    /// The state frame (`magic`) of everything but RAM, with `memory` after it.
    fn encode_state(&self, magic: &[u8; 8], memory: &[u8]) -> SourceResult<Vec<u8>> {
        let meta =
            postcard::to_stdvec(&self.meta()).map_err(|e| SourceError::Snapshot(e.to_string()))?;
        Ok(snapshot_frame::encode(
            magic,
            SNAPSHOT_VERSION,
            &meta,
            memory,
        ))
    }

    /// Take the CPU and device state of `meta` (its configuration is checked by the
    /// caller).
    fn apply(&mut self, meta: SnapshotMeta) {
        self.cpu = meta.cpu;
        self.dev = meta.dev;
        self.exited = meta.exited;
        self.tohost = meta.tohost;
        self.fromhost = meta.fromhost;
    }

    /// The guest-physical address of page `index` and how many of a `buf_len`-byte
    /// page transfer lie inside RAM (the last page may be short).
    fn page_span(&self, index: u64, buf_len: usize) -> SourceResult<(u64, usize)> {
        if buf_len as u64 != PAGE_SIZE || index >= self.ram.page_count() {
            return Err(SourceError::Backend(format!(
                "page {index} ({buf_len} bytes) is not one of the {} pages of {PAGE_SIZE} bytes",
                self.ram.page_count()
            )));
        }
        let off = index * PAGE_SIZE;
        let len = (self.ram.size() as u64 - off).min(PAGE_SIZE) as usize;
        Ok((RAM_BASE + off, len))
    }

    fn update_irqs(&mut self) {
        let (ext, timer) = self.dev.irq_lines();
        self.cpu.set_mip(crate::cpu::MIP_MEIP, ext);
        self.cpu.set_mip(crate::cpu::MIP_MTIP, timer);
    }

    /// Carry out a device action at the instruction that triggered it; `Some` if it is
    /// a stop the engine must see.
    fn perform(&mut self, action: Action) -> Option<Stop> {
        match action {
            Action::UartLine => Some(self.dev.model.take_uart_line()),
            Action::TimerArm(delay) => Some(self.dev.model.arm_timer(delay)),
            Action::BlockCmd(cmd) => {
                let stop = self.dev.model.block_command(cmd, self.cfg.disk, &self.ram);
                if stop.is_none() {
                    self.update_irqs();
                }
                stop
            }
            Action::NetRxPop => {
                self.dev.model.net_rx_pop(&mut self.ram);
                None
            }
            Action::NetTxSend => self.dev.model.net_tx_send(&self.ram),
            Action::Exit(code) => {
                self.exited = Some(code);
                Some(Stop::Halted(code))
            }
            Action::IrqChanged => None,
        }
    }
}

impl EventSource for Machine {
    fn point(&self) -> ExecPoint {
        ExecPoint::at(self.cpu.instret())
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
        if let Some(code) = self.exited {
            return Ok(Stop::Halted(code));
        }
        if self.dev.input.as_ref().is_some_and(|(_, v)| v.is_none()) {
            // Still waiting for a value: the engine must supply it first.
            if let Some((req, _)) = &self.dev.input {
                return Ok(Stop::Input(req.clone()));
            }
        }
        loop {
            let exit = self.cpu.run(&mut self.ram, &mut self.dev, until.count);
            match exit {
                StepExit::Budget => return Ok(Stop::Reached),
                StepExit::Idle => return Ok(Stop::Idle),
                StepExit::Stall => {
                    return match &self.dev.input {
                        Some((req, None)) => Ok(Stop::Input(req.clone())),
                        _ => Err(SourceError::Backend("MMIO stall without a pending read".into())),
                    }
                }
                StepExit::Watch => {
                    // HTIF: the guest wrote `tohost`.
                    let Some(addr) = self.tohost else { continue };
                    let v = self.ram.load_u64(addr).unwrap_or(0);
                    if let Some(stop) = self.htif(addr, v) {
                        return Ok(stop);
                    }
                }
                StepExit::MmioStop => {
                    let Some(action) = self.dev.action.take() else {
                        continue;
                    };
                    let stop = self.perform(action);
                    self.update_irqs();
                    if let Some(stop) = stop {
                        return Ok(stop);
                    }
                }
                StepExit::TrapLoop => {
                    return Err(SourceError::Backend(format!(
                        "guest is stuck in a trap loop at pc {:#x} (mtvec points at a faulting instruction)",
                        self.cpu.pc()
                    )))
                }
            }
        }
    }

    fn supply_input(&mut self, data: &[u8]) -> SourceResult<()> {
        match &mut self.dev.input {
            Some((req, slot @ None)) => {
                *slot = Some(input_value(req.size, data)?);
                Ok(())
            }
            _ => Err(SourceError::UnexpectedInput("no read is pending".into())),
        }
    }

    fn inject(&mut self, event: &AsyncEvent) -> SourceResult<()> {
        self.dev.model.inject(event, &mut self.ram)?;
        // A device may have written RAM (DMA): an `lr` reservation does not survive
        // another bus master's write, and dropping it at every event (a logged point)
        // keeps record and replay in step.
        self.cpu.cancel_reservation();
        self.update_irqs();
        Ok(())
    }

    fn digest(&mut self) -> SourceResult<u64> {
        let encode = |e: postcard::Error| SourceError::Backend(format!("encoding state: {e}"));
        let mut h = StateHasher::new();
        h.write_bytes(&postcard::to_stdvec(&self.cpu).map_err(encode)?);
        h.write_bytes(&postcard::to_stdvec(&self.dev).map_err(encode)?);
        h.write_u64(self.exited.map_or(0, |c| c.wrapping_add(1)));
        h.write_u64(self.ram.content_digest());
        Ok(h.finish())
    }

    fn snapshot(&self) -> SourceResult<Vec<u8>> {
        self.encode_state(SNAPSHOT_MAGIC, self.ram.as_slice())
    }

    fn memory_layout(&self) -> SourceResult<MemoryLayout> {
        Ok(MemoryLayout {
            page_size: PAGE_SIZE as u32,
            pages: self.ram.page_count(),
        })
    }

    fn start_dirty_log(&mut self) -> SourceResult<()> {
        // The bitmap is always kept (every store marks it); a log starts clean.
        self.ram.clear_dirty();
        Ok(())
    }

    fn take_dirty_pages(&mut self, out: &mut Vec<u64>) -> SourceResult<()> {
        out.extend(self.ram.take_dirty_pages());
        Ok(())
    }

    fn read_page(&self, index: u64, buf: &mut [u8]) -> SourceResult<()> {
        let (addr, len) = self.page_span(index, buf.len())?;
        buf[len..].fill(0);
        self.ram
            .read(addr, &mut buf[..len])
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    fn write_page(&mut self, index: u64, data: &[u8]) -> SourceResult<()> {
        let (addr, len) = self.page_span(index, data.len())?;
        self.ram
            .write(addr, &data[..len])
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    fn page_is_zero(&self, index: u64) -> bool {
        self.ram.page_is_zero(index)
    }

    fn page_dirty_now(&self, index: u64) -> bool {
        self.ram.is_page_dirty(index)
    }

    fn zero_page(&mut self, index: u64) -> SourceResult<()> {
        if self.ram.page_is_zero(index) {
            return Ok(());
        }
        let (addr, len) = self.page_span(index, PAGE_SIZE as usize)?;
        self.ram
            .zero(addr, len as u64)
            .map_err(|e| SourceError::Backend(e.to_string()))
    }

    fn save_cpu_devices(&self) -> SourceResult<Vec<u8>> {
        self.encode_state(STATE_MAGIC, &[])
    }

    fn load_cpu_devices(&mut self, state: &[u8]) -> SourceResult<()> {
        let (meta, rest) = decode_state(state, STATE_MAGIC, "sim CPU and device")?;
        if !rest.is_empty() {
            return Err(SourceError::Snapshot(
                "CPU and device state carries memory".into(),
            ));
        }
        if meta.cfg != self.cfg {
            return Err(SourceError::Snapshot(format!(
                "the state is of a machine configured {:?}, this one is {:?}",
                meta.cfg, self.cfg
            )));
        }
        self.apply(meta);
        Ok(())
    }

    fn restore(&mut self, snapshot: &[u8]) -> SourceResult<()> {
        let (meta, rest) = decode_state(snapshot, SNAPSHOT_MAGIC, "sim machine")?;
        if rest.len() != meta.cfg.ram_size {
            return Err(SourceError::Snapshot(
                "snapshot RAM size does not match its configuration".into(),
            ));
        }
        let mut ram = Ram::new(rest.len());
        ram.as_mut_slice().copy_from_slice(rest);
        self.cfg = meta.cfg;
        self.apply(meta);
        self.ram = ram;
        Ok(())
    }
}

/// Check a state frame (`magic`) and decode its metadata; the rest is its memory.
fn decode_state<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    kind: &'static str,
) -> SourceResult<(SnapshotMeta, &'a [u8])> {
    let (meta, rest) = snapshot_frame::decode(bytes, magic, SNAPSHOT_VERSION, kind)?;
    let meta = postcard::from_bytes(meta).map_err(|e| SourceError::Snapshot(e.to_string()))?;
    Ok((meta, rest))
}
