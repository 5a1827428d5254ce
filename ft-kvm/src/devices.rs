//! The KVM machine's devices: their guest-visible registers and state, mirroring
//! ft-sim's device set (console, clock, RNG, timer, block device with DMA, network,
//! interrupt status, exit) on MMIO, plus two ports for the guest kernel.
//!
//! The model is pure and deterministic: what comes from outside (clock and RNG values,
//! timer expiries, disk data, packets) enters only through
//! [`ft_core::EventSource::supply_input`] and [`ft_core::EventSource::inject`]. Device
//! ids and I/O operation codes equal ft-sim's, so `ft_sim::SimWorld` serves as the host
//! half of these devices too.
//!
//! # Memory map (guest-physical, identity-mapped, reachable from CPL3)
//!
//! | base | device | registers (byte offsets; 64-bit unless noted) |
//! |---|---|---|
//! | `0x3000_0000` | console | `0x0` TX (a byte; a line goes out at `\n` or 256 bytes), `0x8` FLUSH |
//! | `0x3000_1000` | clock | `0x0` NOW: nanoseconds (read: a logged input) |
//! | `0x3000_2000` | RNG | `0x0` VALUE: 64 random bits (read: a logged input) |
//! | `0x3000_3000` | timer | `0x0` ARM (write a delay in ns: an I/O), `0x8` STATUS (expiries pending), `0x10` ACK; vector `0x20` |
//! | `0x3000_4000` | block | `0x0` SECTOR, `0x8` DMA_ADDR, `0x10` COUNT (512 B sectors), `0x18` CMD (1 read, 2 write), `0x20` STATUS (bit0 busy, bit1 done, bit2 error), `0x28` ACK; vector `0x21` |
//! | `0x3000_5000` | network | `0x0` RX_LEN, `0x8` RX_ADDR, `0x10` RX_POP, `0x18` TX_ADDR, `0x20` TX_LEN, `0x28` TX_SEND, `0x30` ACK, `0x38` RX_COUNT; vector `0x22` |
//! | `0x3000_6000` | interrupt status | `0x0` PENDING: a bit per device id with its line raised |
//! | `0x3000_7000` | exit | `0x0` EXIT: write a code to end the run |
//!
//! Ports (CPL0 only on hosts that force IOPL 0 at CPL3): `0x3f8` console byte,
//! `0xf4` exit code (32-bit).
//!
//! # Interrupts
//!
//! No in-kernel irqchip: the machine plays a tiny fixed-priority controller. A raised
//! line is injected (`KVM_INTERRUPT`) only at a deterministic exit where the vCPU is ready
//! for it; the vector then stays *in service* until the guest acknowledges the device,
//! so a line is never injected twice for one event.

use ft_core::device_set::model::{self, DeviceModel, Load, StoreResult};
use ft_core::InputRequest;
use serde::{Deserialize, Serialize};

/// The standard device set's ids, registers, op codes and limits (shared with every
/// ft backend).
pub use ft_core::device_set::{
    blk_status, id, op, reg, BLK_CMD_READ, BLK_CMD_WRITE, MAX_SECTORS, NET_MTU, NET_RX_QUEUE,
    SECTOR_SIZE, UART_LINE_MAX,
};

/// Device base addresses.
pub mod map {
    use ft_core::device_set::window;
    /// Base address of the first device window.
    pub const BASE: u64 = 0x3000_0000;
    /// Console.
    pub const UART: u64 = BASE + window::UART;
    /// Clock.
    pub const CLOCK: u64 = BASE + window::CLOCK;
    /// RNG.
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

/// I/O ports.
pub mod port {
    /// Console byte.
    pub const CONSOLE: u16 = 0x3f8;
    /// Exit with a 32-bit code.
    pub const EXIT: u16 = 0xf4;
}

/// Interrupt vectors.
pub mod vector {
    /// Timer.
    pub const TIMER: u8 = 0x20;
    /// Block device.
    pub const BLOCK: u8 = 0x21;
    /// Network device.
    pub const NET: u8 = 0x22;
    /// System call gate (`int 0x80`).
    pub const SYSCALL: u8 = 0x80;
}

/// The answer to a device read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// A deterministic value.
    Value(u64),
    /// A nondeterministic register: the value must come from the outside world.
    Input(InputRequest),
}

/// What a device write asks the machine to do at this exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond the register update.
    None,
    /// The console line is complete: an output.
    UartLine,
    /// Arm the timer with a delay: an asynchronous I/O.
    TimerArm(u64),
    /// A block command (needs guest memory for the DMA buffer).
    BlockCmd(u64),
    /// Copy the head received packet into guest memory.
    NetRxPop,
    /// Send the packet at TX_ADDR: an output.
    NetTxSend,
    /// The guest ends with a code.
    Exit(u64),
}

/// Guest-visible state of all devices, and the interrupt controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    /// The standard device set's model.
    pub(crate) model: DeviceModel,
    /// The vector injected and not yet acknowledged by the guest.
    pub(crate) in_service: Option<u8>,
}

impl Devices {
    /// Bit per device id whose line is raised.
    pub fn pending_mask(&self) -> u64 {
        self.model.pending_mask()
    }

    /// The vector to inject next, if a line is raised and none is in service. Fixed
    /// priority: timer, block, network.
    pub fn next_vector(&self) -> Option<u8> {
        if self.in_service.is_some() {
            return None;
        }
        if self.model.timer_pending > 0 {
            Some(vector::TIMER)
        } else if self.model.blk_irq {
            Some(vector::BLOCK)
        } else if self.model.net_irq {
            Some(vector::NET)
        } else {
            None
        }
    }

    /// Record that `v` was injected.
    pub fn mark_injected(&mut self, v: u8) {
        self.in_service = Some(v);
    }

    fn end_of_interrupt(&mut self, v: u8) {
        if self.in_service == Some(v) {
            self.in_service = None;
        }
    }

    /// Packets dropped because the receive queue was full.
    pub fn net_dropped(&self) -> u64 {
        self.model.net_dropped
    }

    /// An MMIO read of `len` bytes at `addr`.
    pub fn mmio_read(&mut self, addr: u64, len: u8) -> ReadResult {
        match self.model.load(map::BASE, addr, len) {
            Load::Value(v) => ReadResult::Value(v),
            Load::Input(req) => ReadResult::Input(req),
            // Unmapped addresses read as zero, as on a bus with nothing behind it.
            Load::Unmapped => ReadResult::Value(0),
        }
    }

    /// An MMIO write of `value` (`len` bytes) at `addr`.
    pub fn mmio_write(&mut self, addr: u64, _len: u8, value: u64) -> Action {
        match self.model.store(map::BASE, addr, value) {
            // Writes to nothing are ignored.
            StoreResult::Done | StoreResult::Unmapped => Action::None,
            StoreResult::Act(a) => match a {
                model::Action::UartLine => Action::UartLine,
                model::Action::TimerArm(d) => Action::TimerArm(d),
                model::Action::BlockCmd(c) => Action::BlockCmd(c),
                model::Action::NetRxPop => Action::NetRxPop,
                model::Action::NetTxSend => Action::NetTxSend,
                model::Action::Exit(c) => Action::Exit(c),
                model::Action::Ack(device) => {
                    let v = match device {
                        id::TIMER => vector::TIMER,
                        id::BLOCK => vector::BLOCK,
                        _ => vector::NET,
                    };
                    self.end_of_interrupt(v);
                    Action::None
                }
            },
        }
    }

    fn console_byte(&mut self, b: u8) -> Action {
        if self.model.uart_byte(b) {
            Action::UartLine
        } else {
            Action::None
        }
    }

    /// An `in` from `port`.
    pub fn pio_read(&mut self, port: u16, _len: u8) -> ReadResult {
        match port {
            // The console is always ready to transmit.
            p if p == port::CONSOLE + 5 => ReadResult::Value(0x60),
            _ => ReadResult::Value(0),
        }
    }

    /// An `out` to `port`.
    pub fn pio_write(&mut self, port: u16, _len: u8, value: u64) -> Action {
        match port {
            port::CONSOLE => self.console_byte(value as u8),
            port::EXIT => Action::Exit(value),
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_buffers_lines() {
        let mut d = Devices::default();
        assert_eq!(d.mmio_write(map::UART, 1, u64::from(b'h')), Action::None);
        assert_eq!(d.pio_write(port::CONSOLE, 1, u64::from(b'i')), Action::None);
        assert_eq!(
            d.mmio_write(map::UART, 1, u64::from(b'\n')),
            Action::UartLine
        );
        assert!(
            matches!(d.model.take_uart_line(), ft_core::Stop::Output(o) if o.data.as_ref() == b"hi\n")
        );
        assert_eq!(
            d.mmio_write(map::UART + reg::UART_FLUSH, 8, 0),
            Action::None
        );
    }

    #[test]
    fn clock_and_rng_are_inputs() {
        let mut d = Devices::default();
        assert!(
            matches!(d.mmio_read(map::CLOCK, 8), ReadResult::Input(r) if r.device == id::CLOCK)
        );
        assert!(matches!(d.mmio_read(map::RNG, 8), ReadResult::Input(r) if r.device == id::RNG));
        assert_eq!(d.mmio_read(0x1234_0000, 8), ReadResult::Value(0));
    }

    #[test]
    fn interrupt_stays_in_service_until_acknowledged() {
        let mut d = Devices {
            model: DeviceModel {
                timer_pending: 2,
                net_irq: true,
                ..DeviceModel::default()
            },
            ..Devices::default()
        };
        assert_eq!(d.next_vector(), Some(vector::TIMER));
        d.mark_injected(vector::TIMER);
        assert_eq!(d.next_vector(), None);
        d.mmio_write(map::TIMER + reg::TIMER_ACK, 8, 0);
        assert_eq!(d.next_vector(), Some(vector::TIMER));
        d.mark_injected(vector::TIMER);
        d.mmio_write(map::TIMER + reg::TIMER_ACK, 8, 0);
        assert_eq!(d.next_vector(), Some(vector::NET));
        assert_eq!(d.mmio_read(map::PIC, 8), ReadResult::Value(1 << id::NET.0));
        assert_eq!(d.pio_write(port::EXIT, 4, 3), Action::Exit(3));
    }
}
