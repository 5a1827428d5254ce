//! The backend-independent model of the standard device set: the guest-visible device
//! state, the MMIO register semantics, event injection (interrupts, packets, I/O
//! completions with bounce-buffer DMA), the block command and the network actions.
//!
//! Every backend keeps its own plumbing (where the windows sit, how interrupt lines
//! reach the vCPU, ports, when a device action runs) and hands this model its guest
//! memory through [`GuestMemory`].

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    blk_status, id, op, reg, window, BLK_CMD_READ, BLK_CMD_WRITE, MAX_SECTORS, NET_MTU,
    NET_RX_QUEUE, SECTOR_SIZE, UART_LINE_MAX,
};
use crate::{
    AsyncEvent, DeviceId, InputRequest, IoId, IoKind, IoRequest, RawOutput, SourceError, Stop,
};

/// Errors of the device model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An interrupt for a device without an interrupt line.
    #[error("device {0} has no interrupt line")]
    NoInterruptLine(u16),
    /// Unsolicited input for a device that takes none.
    #[error("device {0} takes no unsolicited input")]
    NoUnsolicitedInput(u16),
    /// A completion for an I/O that is not in flight.
    #[error("completion for I/O {0} which is not in flight")]
    NotInFlight(u64),
    /// A supplied input value of the wrong size.
    #[error("{got} bytes for a {size}-byte read")]
    InputSize {
        /// Bytes supplied.
        got: usize,
        /// Size of the read.
        size: u8,
    },
    /// A guest-memory access outside the guest's memory.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange {
        /// Start.
        addr: u64,
        /// Length.
        len: u64,
    },
}

impl From<ModelError> for SourceError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NoInterruptLine(_)
            | ModelError::NoUnsolicitedInput(_)
            | ModelError::NotInFlight(_) => SourceError::BadEvent(e.to_string()),
            ModelError::InputSize { .. } => SourceError::UnexpectedInput(e.to_string()),
            ModelError::OutOfRange { .. } => SourceError::Backend(e.to_string()),
        }
    }
}

/// Guest-physical memory as the devices see it (DMA and packet buffers).
pub trait GuestMemory {
    /// Read `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ModelError>;
    /// Write `data` at `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), ModelError>;
    /// Whether `len` bytes at `addr` lie inside the memory.
    fn contains(&self, addr: u64, len: u64) -> bool;
}

/// How the block device's disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskMode {
    /// One disk both sides can reach. Only the live side writes, and its writes are
    /// outputs under the output rule.
    Shared {
        /// The backup reads the shared disk itself instead of receiving read data in
        /// the log.
        backup_reads_disk: bool,
    },
    /// Each side has its own copy and writes it; writes are not outputs. Reads may come
    /// from the backup's own copy as well.
    Private {
        /// The backup reads its own copy instead of receiving read data in the log.
        backup_reads_disk: bool,
    },
}

/// The answer to a device register read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    /// A deterministic value.
    Value(u64),
    /// A nondeterministic register: the value must come from the outside world.
    Input(InputRequest),
    /// Nothing is mapped at the address.
    Unmapped,
}

/// The outcome of a device register write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreResult {
    /// The register took the value; nothing more to do.
    Done,
    /// The write asks for an action at this execution point.
    Act(Action),
    /// Nothing is mapped at the address.
    Unmapped,
}

/// Something a register write asks the backend to do at the write's execution point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The console line is complete: an output ([`DeviceModel::take_uart_line`]).
    UartLine,
    /// Arm the timer with a delay: an I/O ([`DeviceModel::arm_timer`]).
    TimerArm(u64),
    /// A block command ([`DeviceModel::block_command`]).
    BlockCmd(u64),
    /// Copy the head received packet to guest memory ([`DeviceModel::net_rx_pop`]).
    NetRxPop,
    /// Send the packet at TX_ADDR: an output ([`DeviceModel::net_tx_send`]).
    NetTxSend,
    /// The guest ends with a code.
    Exit(u64),
    /// The guest acknowledged the device's interrupt; its line may have dropped.
    Ack(DeviceId),
}

/// Guest-visible state of the standard device set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceModel {
    /// Console: the partial line.
    pub uart_line: Vec<u8>,
    /// Timer: expiries not yet acknowledged.
    pub timer_pending: u64,
    /// Block: SECTOR register.
    pub blk_sector: u64,
    /// Block: DMA_ADDR register.
    pub blk_dma: u64,
    /// Block: COUNT register.
    pub blk_count: u64,
    /// Block: STATUS register.
    pub blk_status: u64,
    /// Block: interrupt line.
    pub blk_irq: bool,
    /// The block I/O in flight: (io id, DMA address, length).
    pub blk_inflight: Option<(u64, u64, u64)>,
    /// Network: received packets queued.
    pub net_rx: VecDeque<Bytes>,
    /// Network: RX_ADDR register.
    pub net_rx_addr: u64,
    /// Network: TX_ADDR register.
    pub net_tx_addr: u64,
    /// Network: TX_LEN register.
    pub net_tx_len: u64,
    /// Network: interrupt line.
    pub net_irq: bool,
    /// Network: packets dropped because the queue was full or they were too large.
    pub net_dropped: u64,
    /// Timer arms in flight.
    pub timers_inflight: BTreeSet<u64>,
    /// The next deterministic I/O id.
    pub next_io: u64,
}

impl DeviceModel {
    /// Bit per device id whose line is raised.
    pub fn pending_mask(&self) -> u64 {
        (u64::from(self.timer_pending > 0) << id::TIMER.0)
            | (u64::from(self.blk_irq) << id::BLOCK.0)
            | (u64::from(self.net_irq) << id::NET.0)
    }

    /// A new deterministic I/O id.
    pub fn new_io(&mut self) -> IoId {
        let io = IoId(self.next_io);
        self.next_io += 1;
        io
    }

    /// A register read of `size` bytes at `addr`, the windows placed at `base`.
    pub fn load(&self, base: u64, addr: u64, size: u8) -> Load {
        let Some(rel) = addr.checked_sub(base) else {
            return Load::Unmapped;
        };
        let win = rel & !(window::SIZE - 1);
        let off = rel - win;
        let v = match (win, off) {
            (window::CLOCK, 0) => return input(id::CLOCK, off, size),
            (window::RNG, 0) => return input(id::RNG, off, size),
            (window::TIMER, reg::TIMER_STATUS) => self.timer_pending,
            (window::BLOCK, reg::BLK_SECTOR) => self.blk_sector,
            (window::BLOCK, reg::BLK_DMA) => self.blk_dma,
            (window::BLOCK, reg::BLK_COUNT) => self.blk_count,
            (window::BLOCK, reg::BLK_STATUS) => self.blk_status,
            (window::NET, reg::NET_RX_LEN) => self.net_rx.front().map_or(0, |p| p.len() as u64),
            (window::NET, reg::NET_RX_COUNT) => self.net_rx.len() as u64,
            (window::PIC, 0) => self.pending_mask(),
            (
                window::UART
                | window::CLOCK
                | window::RNG
                | window::TIMER
                | window::BLOCK
                | window::NET,
                _,
            ) => 0,
            _ => return Load::Unmapped,
        };
        Load::Value(v)
    }

    /// A register write of `value` at `addr`, the windows placed at `base`.
    pub fn store(&mut self, base: u64, addr: u64, value: u64) -> StoreResult {
        let Some(rel) = addr.checked_sub(base) else {
            return StoreResult::Unmapped;
        };
        let win = rel & !(window::SIZE - 1);
        let off = rel - win;
        let act = match (win, off) {
            (window::UART, reg::UART_TX) => {
                if self.uart_byte(value as u8) {
                    Action::UartLine
                } else {
                    return StoreResult::Done;
                }
            }
            (window::UART, reg::UART_FLUSH) if !self.uart_line.is_empty() => Action::UartLine,
            (window::TIMER, reg::TIMER_ARM) => Action::TimerArm(value),
            (window::TIMER, reg::TIMER_ACK) => {
                self.timer_pending = self.timer_pending.saturating_sub(1);
                Action::Ack(id::TIMER)
            }
            (window::BLOCK, reg::BLK_SECTOR) => {
                self.blk_sector = value;
                return StoreResult::Done;
            }
            (window::BLOCK, reg::BLK_DMA) => {
                self.blk_dma = value;
                return StoreResult::Done;
            }
            (window::BLOCK, reg::BLK_COUNT) => {
                self.blk_count = value;
                return StoreResult::Done;
            }
            (window::BLOCK, reg::BLK_CMD) => Action::BlockCmd(value),
            (window::BLOCK, reg::BLK_ACK) => {
                self.blk_irq = false;
                self.blk_status &= !(blk_status::DONE | blk_status::ERROR);
                Action::Ack(id::BLOCK)
            }
            (window::NET, reg::NET_RX_ADDR) => {
                self.net_rx_addr = value;
                return StoreResult::Done;
            }
            (window::NET, reg::NET_RX_POP) => Action::NetRxPop,
            (window::NET, reg::NET_TX_ADDR) => {
                self.net_tx_addr = value;
                return StoreResult::Done;
            }
            (window::NET, reg::NET_TX_LEN) => {
                self.net_tx_len = value;
                return StoreResult::Done;
            }
            (window::NET, reg::NET_TX_SEND) => Action::NetTxSend,
            (window::NET, reg::NET_ACK) => {
                self.net_irq = false;
                Action::Ack(id::NET)
            }
            (window::EXIT, 0) => Action::Exit(value),
            (
                window::UART
                | window::CLOCK
                | window::RNG
                | window::TIMER
                | window::BLOCK
                | window::NET,
                _,
            ) => return StoreResult::Done,
            _ => return StoreResult::Unmapped,
        };
        StoreResult::Act(act)
    }

    /// Buffer a console byte; true if the line is now complete.
    pub fn uart_byte(&mut self, b: u8) -> bool {
        self.uart_line.push(b);
        b == b'\n' || self.uart_line.len() >= UART_LINE_MAX
    }

    /// Take the buffered console line as an output.
    pub fn take_uart_line(&mut self) -> Stop {
        Stop::Output(RawOutput {
            device: id::UART,
            data: Bytes::from(std::mem::take(&mut self.uart_line)),
        })
    }

    /// Arm the timer: a new I/O.
    pub fn arm_timer(&mut self, delay: u64) -> Stop {
        let io = self.new_io();
        self.timers_inflight.insert(io.0);
        Stop::IoStart(IoRequest {
            id: io,
            device: id::TIMER,
            kind: IoKind::Request,
            op: op::TIMER_ARM,
            offset: delay,
            len: 0,
            data: Bytes::new(),
        })
    }

    /// Start block command `cmd`: the I/O to start, or `None` if the command is invalid
    /// (then the device reports an error and raises its line at once).
    pub fn block_command<M: GuestMemory + ?Sized>(
        &mut self,
        cmd: u64,
        disk: DiskMode,
        mem: &M,
    ) -> Option<Stop> {
        let len = self.blk_count.saturating_mul(SECTOR_SIZE);
        let valid = (cmd == BLK_CMD_READ || cmd == BLK_CMD_WRITE)
            && self.blk_inflight.is_none()
            && self.blk_count > 0
            && self.blk_count <= MAX_SECTORS
            && mem.contains(self.blk_dma, len);
        if !valid {
            self.blk_status |= blk_status::ERROR | blk_status::DONE;
            self.blk_irq = true;
            return None;
        }
        let (shared, local_reads) = match disk {
            DiskMode::Shared { backup_reads_disk } => (true, backup_reads_disk),
            DiskMode::Private { backup_reads_disk } => (false, backup_reads_disk),
        };
        let offset = self.blk_sector.saturating_mul(SECTOR_SIZE);
        let dma = self.blk_dma;
        let (kind, opc, data) = if cmd == BLK_CMD_READ {
            let kind = if local_reads {
                IoKind::LocalRead
            } else {
                IoKind::Request
            };
            (kind, op::DISK_READ, Bytes::new())
        } else {
            let mut buf = vec![0u8; len as usize];
            // In range: checked above.
            let _ = mem.read(dma, &mut buf);
            let kind = if shared {
                IoKind::SharedWrite
            } else {
                IoKind::PrivateWrite
            };
            (kind, op::DISK_WRITE, Bytes::from(buf))
        };
        self.blk_status = blk_status::BUSY;
        let io = self.new_io();
        self.blk_inflight = Some((io.0, dma, len));
        Some(Stop::IoStart(IoRequest {
            id: io,
            device: id::BLOCK,
            kind,
            op: opc,
            offset,
            len: len as u32,
            data,
        }))
    }

    /// Copy the head received packet to RX_ADDR and drop it from the queue. A bad
    /// target address drops the packet, as a NIC would.
    pub fn net_rx_pop<M: GuestMemory + ?Sized>(&mut self, mem: &mut M) {
        if let Some(pkt) = self.net_rx.pop_front() {
            let _ = mem.write(self.net_rx_addr, &pkt);
        }
    }

    /// The packet at TX_ADDR as an output, or `None` if it is not in guest memory.
    pub fn net_tx_send<M: GuestMemory + ?Sized>(&self, mem: &M) -> Option<Stop> {
        let len = self.net_tx_len.min(NET_MTU) as usize;
        let mut buf = vec![0u8; len];
        mem.read(self.net_tx_addr, &mut buf).ok()?;
        Some(Stop::Output(RawOutput {
            device: id::NET,
            data: Bytes::from(buf),
        }))
    }

    /// Apply an asynchronous event (I/O completion data lands in `mem` now, all at
    /// once).
    ///
    /// # Errors
    ///
    /// [`ModelError::NoInterruptLine`] for an interrupt of a device without one,
    /// [`ModelError::NoUnsolicitedInput`] for input to a device other than the
    /// network, [`ModelError::NotInFlight`] for the completion of an I/O the model
    /// did not start. A completion whose data does not fit (a DMA outside `mem`, a
    /// length other than the request's) is no error here: the guest sees it in the
    /// block device's status, as with hardware.
    pub fn inject<M: GuestMemory + ?Sized>(
        &mut self,
        event: &AsyncEvent,
        mem: &mut M,
    ) -> Result<(), ModelError> {
        match event {
            AsyncEvent::Interrupt { device } => match *device {
                id::TIMER => self.timer_pending += 1,
                id::NET => self.net_irq = true,
                id::BLOCK => self.blk_irq = true,
                other => return Err(ModelError::NoInterruptLine(other.0)),
            },
            AsyncEvent::DeviceInput { device, data } => {
                if *device != id::NET {
                    return Err(ModelError::NoUnsolicitedInput(device.0));
                }
                if self.net_rx.len() >= NET_RX_QUEUE || data.len() as u64 > NET_MTU {
                    self.net_dropped += 1;
                } else {
                    self.net_rx.push_back(data.clone());
                }
                self.net_irq = true;
            }
            AsyncEvent::IoComplete { io, status, data } => {
                self.complete_io(*io, *status, data.as_ref(), mem)?;
            }
        }
        Ok(())
    }

    fn complete_io<M: GuestMemory + ?Sized>(
        &mut self,
        io: IoId,
        status: u32,
        data: Option<&Bytes>,
        mem: &mut M,
    ) -> Result<(), ModelError> {
        if self.timers_inflight.remove(&io.0) {
            self.timer_pending += 1;
            return Ok(());
        }
        match self.blk_inflight {
            Some((blk_io, dma, len)) if blk_io == io.0 => {
                self.blk_inflight = None;
                let mut st = blk_status::DONE;
                if status != 0 {
                    st |= blk_status::ERROR;
                } else if let Some(data) = data {
                    // The bounce buffer lands in guest memory now, all at once.
                    if data.len() as u64 != len || mem.write(dma, data).is_err() {
                        st |= blk_status::ERROR;
                    }
                }
                self.blk_status = st;
                self.blk_irq = true;
                Ok(())
            }
            _ => Err(ModelError::NotInFlight(io.0)),
        }
    }
}

fn input(device: DeviceId, offset: u64, size: u8) -> Load {
    Load::Input(InputRequest {
        device,
        offset,
        size,
    })
}

/// The value of a nondeterministic read of `size` bytes from the bytes the engine
/// supplied (`size` bytes, or 8), little-endian.
///
/// # Errors
///
/// [`ModelError::InputSize`] when `data` is neither `size` nor 8 bytes long.
///
/// ```
/// use ft_core::device_set::model::input_value;
/// assert_eq!(input_value(2, &[0x34, 0x12]), Ok(0x1234));
/// assert_eq!(input_value(2, &7u64.to_le_bytes()), Ok(7));
/// assert!(input_value(2, &[1, 2, 3]).is_err());
/// ```
pub fn input_value(size: u8, data: &[u8]) -> Result<u64, ModelError> {
    if data.len() != usize::from(size) && data.len() != 8 {
        return Err(ModelError::InputSize {
            got: data.len(),
            size,
        });
    }
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    Ok(u64::from_le_bytes(b))
}
