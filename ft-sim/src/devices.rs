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
//! | `0x1000_1000` | wall clock | `0x0` NOW: nanoseconds (read, logged input; `rdtime` reads it too) |
//! | `0x1000_2000` | RNG | `0x0` VALUE: 64 random bits (read, logged input) |
//! | `0x1000_3000` | timer | `0x0` ARM: write a delay in ns (host real time); `0x8` STATUS: expiries pending; `0x10` ACK: clear one; raises MTIP |
//! | `0x1000_4000` | block device | `0x0` SECTOR, `0x8` DMA_ADDR, `0x10` COUNT (sectors of 512 B), `0x18` CMD (1 read, 2 write), `0x20` STATUS (bit0 busy, bit1 done, bit2 error), `0x28` ACK; raises MEIP |
//! | `0x1000_5000` | network | `0x0` RX_LEN (head packet, 0 if none), `0x8` RX_ADDR, `0x10` RX_POP, `0x18` TX_ADDR, `0x20` TX_LEN, `0x28` TX_SEND, `0x30` ACK, `0x38` RX_COUNT; raises MEIP |
//! | `0x1000_6000` | interrupt status | `0x0` PENDING: bit per device id with an interrupt raised |
//! | `0x1000_7000` | exit | `0x0` EXIT: write a code to end the run |

use ft_core::device_set::model::{self, DeviceModel, Load, StoreResult};
use ft_core::InputRequest;
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
    /// The standard device set's model.
    pub(crate) model: DeviceModel,
    /// A nondeterministic read waiting for its value, and the value once supplied.
    pub(crate) input: Option<(InputRequest, Option<u64>)>,
    pub(crate) action: Option<Action>,
}

impl Devices {
    /// Interrupt lines: (machine external, machine timer).
    pub(crate) fn irq_lines(&self) -> (bool, bool) {
        let m = &self.model;
        (m.blk_irq || m.net_irq, m.timer_pending > 0)
    }

    fn nondeterministic_read(&mut self, req: InputRequest) -> MmioResult<u64> {
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
        match self.model.load(map::BASE, addr, size) {
            Load::Value(v) => MmioResult::Ok(v),
            Load::Input(req) => self.nondeterministic_read(req),
            Load::Unmapped => MmioResult::Fault,
        }
    }

    /// `rdtime` reads the wall clock, in nanoseconds (a timebase of 1 GHz): the same
    /// logged input as a load of the clock's NOW register.
    fn time(&mut self) -> MmioResult<u64> {
        self.nondeterministic_read(InputRequest {
            device: id::CLOCK,
            offset: 0,
            size: 8,
        })
    }

    fn store(&mut self, addr: u64, _size: u8, value: u64) -> MmioResult<()> {
        match self.model.store(map::BASE, addr, value) {
            StoreResult::Done => MmioResult::Ok(()),
            StoreResult::Unmapped => MmioResult::Fault,
            StoreResult::Act(a) => self.stop(match a {
                model::Action::UartLine => Action::UartLine,
                model::Action::TimerArm(d) => Action::TimerArm(d),
                model::Action::BlockCmd(c) => Action::BlockCmd(c),
                model::Action::NetRxPop => Action::NetRxPop,
                model::Action::NetTxSend => Action::NetTxSend,
                model::Action::Exit(c) => Action::Exit(c),
                model::Action::Ack(_) => Action::IrqChanged,
            }),
        }
    }
}
