//! The sim machine's devices: their guest-visible registers and state.
//!
//! Every device is deterministic given the events the engine hands it. What comes from
//! outside (clock and RNG values, timer expiries, disk data, network packets) enters
//! only through [`ft_core::EventSource::supply_input`] and
//! [`ft_core::EventSource::inject`], at an exact execution point.
//!
//! # Memory map
//!
//! Devices sit below RAM (which starts at [`crate::memory::RAM_BASE`]), one 4 KiB page
//! each:
//!
//! | base | device | registers (byte offsets, 64-bit unless noted) |
//! |---|---|---|
//! | `0x1000_0000` | console UART | `0x0` TX (write a byte; a line goes out at `\n` or 256 bytes), `0x8` FLUSH |
//! | `0x1000_1000` | wall clock | `0x0` NOW: nanoseconds (read, logged input) |
//! | `0x1000_2000` | RNG | `0x0` VALUE: 64 random bits (read, logged input) |
//! | `0x1000_3000` | timer | `0x0` ARM: write a delay in ns (host real time); `0x8` STATUS: expiries pending; `0x10` ACK: clear one; raises MTIP |
//! | `0x1000_4000` | block device | `0x0` SECTOR, `0x8` DMA_ADDR, `0x10` COUNT (sectors of 512 B), `0x18` CMD (1 read, 2 write), `0x20` STATUS (bit0 busy, bit1 done, bit2 error), `0x28` ACK; raises MEIP |
//! | `0x1000_5000` | network | `0x0` RX_LEN (head packet, 0 if none), `0x8` RX_ADDR, `0x10` RX_POP, `0x18` TX_ADDR, `0x20` TX_LEN, `0x28` TX_SEND, `0x30` ACK, `0x38` RX_COUNT; raises MEIP |
//! | `0x1000_6000` | interrupt status | `0x0` PENDING: bit per device id with an interrupt raised |
//! | `0x1000_7000` | exit | `0x0` EXIT: write a code to end the run |

use bytes::Bytes;
use ft_core::{DeviceId, InputRequest};
use serde::{Deserialize, Serialize};

/// The standard device set's ids, registers, op codes and limits (shared with every
/// ft backend).
pub use ft_core::device_set::{
    blk_status, id, op, reg, BLK_CMD_READ, BLK_CMD_WRITE, MAX_SECTORS, NET_MTU, NET_RX_QUEUE,
    SECTOR_SIZE, UART_LINE_MAX,
};

use crate::cpu::{Mmio, MmioResult};

/// Device base addresses.
pub mod map {
    use ft_core::device_set::window;
    /// Base address of the first device window.
    pub const BASE: u64 = 0x1000_0000;
    /// Console UART.
    pub const UART: u64 = BASE + window::UART;
    /// Wall clock.
    pub const CLOCK: u64 = BASE + window::CLOCK;
    /// Random number generator.
    pub const RNG: u64 = BASE + window::RNG;
    /// Timer.
    pub const TIMER: u64 = BASE + window::TIMER;
    /// Block device.
    pub const BLOCK: u64 = BASE + window::BLOCK;
    /// Network device.
    pub const NET: u64 = BASE + window::NET;
    /// Interrupt status.
    pub const PIC: u64 = BASE + window::PIC;
    /// Exit device.
    pub const EXIT: u64 = BASE + window::EXIT;
    /// Size of each device's window.
    pub const WINDOW: u64 = window::SIZE;
}

/// Something a device access asked the machine to do right after the instruction
/// retired, at its exact execution point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Action {
    UartLine,
    TimerArm(u64),
    BlockCmd(u64),
    NetRxPop,
    NetTxSend,
    Exit(u64),
    /// An interrupt line changed: the CPU's `mip` must follow before the next
    /// instruction.
    IrqChanged,
}

/// Guest-visible state of all devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    pub(crate) uart_line: Vec<u8>,
    pub(crate) timer_pending: u64,
    pub(crate) blk_sector: u64,
    pub(crate) blk_dma: u64,
    pub(crate) blk_count: u64,
    pub(crate) blk_status: u64,
    pub(crate) blk_irq: bool,
    /// The block I/O in flight, with the guest's DMA target.
    pub(crate) blk_inflight: Option<(u64, u64, u64)>,
    pub(crate) net_rx: std::collections::VecDeque<Bytes>,
    pub(crate) net_rx_addr: u64,
    pub(crate) net_tx_addr: u64,
    pub(crate) net_tx_len: u64,
    pub(crate) net_irq: bool,
    pub(crate) net_dropped: u64,
    /// Timer arms in flight.
    pub(crate) timers_inflight: std::collections::BTreeSet<u64>,
    pub(crate) next_io: u64,
    /// A nondeterministic read waiting for its value, and the value once supplied.
    pub(crate) input: Option<(InputRequest, Option<u64>)>,
    pub(crate) action: Option<Action>,
}

impl Devices {
    /// Interrupt lines: (machine external, machine timer).
    pub(crate) fn irq_lines(&self) -> (bool, bool) {
        (self.blk_irq || self.net_irq, self.timer_pending > 0)
    }

    fn pending_mask(&self) -> u64 {
        (u64::from(self.timer_pending > 0) << id::TIMER.0)
            | (u64::from(self.blk_irq) << id::BLOCK.0)
            | (u64::from(self.net_irq) << id::NET.0)
    }

    fn nondeterministic_read(
        &mut self,
        device: DeviceId,
        offset: u64,
        size: u8,
    ) -> MmioResult<u64> {
        let req = InputRequest {
            device,
            offset,
            size,
        };
        match self.input.take() {
            Some((pending, Some(v))) if pending == req => MmioResult::Ok(v),
            _ => {
                self.input = Some((req, None));
                MmioResult::Stall
            }
        }
    }

    fn stop(&mut self, a: Action) -> MmioResult<()> {
        self.action = Some(a);
        MmioResult::OkStop(())
    }
}

impl Mmio for Devices {
    fn load(&mut self, addr: u64, size: u8) -> MmioResult<u64> {
        let base = addr & !(map::WINDOW - 1);
        let off = addr - base;
        match (base, off) {
            (map::CLOCK, 0) => self.nondeterministic_read(id::CLOCK, off, size),
            (map::RNG, 0) => self.nondeterministic_read(id::RNG, off, size),
            (map::TIMER, reg::TIMER_STATUS) => MmioResult::Ok(self.timer_pending),
            (map::BLOCK, reg::BLK_SECTOR) => MmioResult::Ok(self.blk_sector),
            (map::BLOCK, reg::BLK_DMA) => MmioResult::Ok(self.blk_dma),
            (map::BLOCK, reg::BLK_COUNT) => MmioResult::Ok(self.blk_count),
            (map::BLOCK, reg::BLK_STATUS) => MmioResult::Ok(self.blk_status),
            (map::NET, reg::NET_RX_LEN) => {
                MmioResult::Ok(self.net_rx.front().map_or(0, |p| p.len() as u64))
            }
            (map::NET, reg::NET_RX_COUNT) => MmioResult::Ok(self.net_rx.len() as u64),
            (map::PIC, 0) => MmioResult::Ok(self.pending_mask()),
            (map::UART | map::CLOCK | map::RNG | map::TIMER | map::BLOCK | map::NET, _) => {
                MmioResult::Ok(0)
            }
            _ => MmioResult::Fault,
        }
    }

    fn store(&mut self, addr: u64, _size: u8, value: u64) -> MmioResult<()> {
        let base = addr & !(map::WINDOW - 1);
        let off = addr - base;
        match (base, off) {
            (map::UART, reg::UART_TX) => {
                self.uart_line.push(value as u8);
                if value as u8 == b'\n' || self.uart_line.len() >= UART_LINE_MAX {
                    self.stop(Action::UartLine)
                } else {
                    MmioResult::Ok(())
                }
            }
            (map::UART, reg::UART_FLUSH) if !self.uart_line.is_empty() => {
                self.stop(Action::UartLine)
            }
            (map::TIMER, reg::TIMER_ARM) => self.stop(Action::TimerArm(value)),
            (map::TIMER, reg::TIMER_ACK) => {
                self.timer_pending = self.timer_pending.saturating_sub(1);
                self.stop(Action::IrqChanged)
            }
            (map::BLOCK, reg::BLK_SECTOR) => {
                self.blk_sector = value;
                MmioResult::Ok(())
            }
            (map::BLOCK, reg::BLK_DMA) => {
                self.blk_dma = value;
                MmioResult::Ok(())
            }
            (map::BLOCK, reg::BLK_COUNT) => {
                self.blk_count = value;
                MmioResult::Ok(())
            }
            (map::BLOCK, reg::BLK_CMD) => self.stop(Action::BlockCmd(value)),
            (map::BLOCK, reg::BLK_ACK) => {
                self.blk_irq = false;
                self.blk_status &= !(blk_status::DONE | blk_status::ERROR);
                self.stop(Action::IrqChanged)
            }
            (map::NET, reg::NET_RX_ADDR) => {
                self.net_rx_addr = value;
                MmioResult::Ok(())
            }
            (map::NET, reg::NET_RX_POP) => self.stop(Action::NetRxPop),
            (map::NET, reg::NET_TX_ADDR) => {
                self.net_tx_addr = value;
                MmioResult::Ok(())
            }
            (map::NET, reg::NET_TX_LEN) => {
                self.net_tx_len = value;
                MmioResult::Ok(())
            }
            (map::NET, reg::NET_TX_SEND) => self.stop(Action::NetTxSend),
            (map::NET, reg::NET_ACK) => {
                self.net_irq = false;
                self.stop(Action::IrqChanged)
            }
            (map::EXIT, 0) => self.stop(Action::Exit(value)),
            (map::UART | map::CLOCK | map::RNG | map::TIMER | map::BLOCK | map::NET, _) => {
                MmioResult::Ok(())
            }
            _ => MmioResult::Fault,
        }
    }
}
