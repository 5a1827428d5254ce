//! The standard device set: the contract between ft's backends (ft-sim, ft-kvm) and
//! the host half of their devices ([`crate::World`] implementations).
//!
//! Both backends expose the same devices with the same device ids, register layout
//! inside each device's 4 KiB MMIO window, I/O operation codes and limits; only the
//! window base addresses and the interrupt plumbing are the backend's own. So one
//! `World` (for example `ft_sim::SimWorld`) serves either backend, and a guest's
//! driver differs only in its base addresses.
//!
//! | device | registers (byte offsets in the window, 64-bit) |
//! |---|---|
//! | console | `0x0` TX (a byte; a line goes out at `\n` or [`UART_LINE_MAX`] bytes), `0x8` FLUSH |
//! | wall clock | `0x0` NOW: nanoseconds (a logged input) |
//! | RNG | `0x0` VALUE: 64 random bits (a logged input) |
//! | timer | `0x0` ARM: a delay in ns (an I/O), `0x8` STATUS: expiries pending, `0x10` ACK |
//! | block | `0x0` SECTOR, `0x8` DMA_ADDR, `0x10` COUNT, `0x18` CMD, `0x20` STATUS, `0x28` ACK |
//! | network | `0x0` RX_LEN, `0x8` RX_ADDR, `0x10` RX_POP, `0x18` TX_ADDR, `0x20` TX_LEN, `0x28` TX_SEND, `0x30` ACK, `0x38` RX_COUNT |
//! | interrupt status | `0x0` PENDING: a bit per device id with its line raised |
//! | exit | `0x0` EXIT: write a code to end the run |

/// Device ids used in log records.
pub mod id {
    use crate::DeviceId;
    /// Console UART.
    pub const UART: DeviceId = DeviceId(0);
    /// Wall clock.
    pub const CLOCK: DeviceId = DeviceId(1);
    /// Random number generator.
    pub const RNG: DeviceId = DeviceId(2);
    /// Timer.
    pub const TIMER: DeviceId = DeviceId(3);
    /// Block device.
    pub const BLOCK: DeviceId = DeviceId(4);
    /// Network device.
    pub const NET: DeviceId = DeviceId(5);
}

/// Offsets of each device's window from the backend's device base address.
pub mod window {
    /// Console UART.
    pub const UART: u64 = 0x0000;
    /// Wall clock.
    pub const CLOCK: u64 = 0x1000;
    /// Random number generator.
    pub const RNG: u64 = 0x2000;
    /// Timer.
    pub const TIMER: u64 = 0x3000;
    /// Block device.
    pub const BLOCK: u64 = 0x4000;
    /// Network device.
    pub const NET: u64 = 0x5000;
    /// Interrupt status.
    pub const PIC: u64 = 0x6000;
    /// Exit device.
    pub const EXIT: u64 = 0x7000;
    /// Size of each device's window.
    pub const SIZE: u64 = 0x1000;
}

/// Register offsets inside a device's window.
pub mod reg {
    /// UART: transmit a byte.
    pub const UART_TX: u64 = 0x0;
    /// UART: send the buffered partial line.
    pub const UART_FLUSH: u64 = 0x8;
    /// Timer: arm with a delay in nanoseconds.
    pub const TIMER_ARM: u64 = 0x0;
    /// Timer: number of expiries not yet acknowledged.
    pub const TIMER_STATUS: u64 = 0x8;
    /// Timer: acknowledge one expiry.
    pub const TIMER_ACK: u64 = 0x10;
    /// Block: first sector.
    pub const BLK_SECTOR: u64 = 0x0;
    /// Block: guest address for DMA.
    pub const BLK_DMA: u64 = 0x8;
    /// Block: sector count.
    pub const BLK_COUNT: u64 = 0x10;
    /// Block: command ([`super::BLK_CMD_READ`], [`super::BLK_CMD_WRITE`]).
    pub const BLK_CMD: u64 = 0x18;
    /// Block: status ([`super::blk_status`]).
    pub const BLK_STATUS: u64 = 0x20;
    /// Block: acknowledge completion.
    pub const BLK_ACK: u64 = 0x28;
    /// Net: length of the head received packet.
    pub const NET_RX_LEN: u64 = 0x0;
    /// Net: guest address to copy the head packet to.
    pub const NET_RX_ADDR: u64 = 0x8;
    /// Net: copy the head packet to RX_ADDR and drop it from the queue.
    pub const NET_RX_POP: u64 = 0x10;
    /// Net: guest address of the packet to send.
    pub const NET_TX_ADDR: u64 = 0x18;
    /// Net: length of the packet to send.
    pub const NET_TX_LEN: u64 = 0x20;
    /// Net: send.
    pub const NET_TX_SEND: u64 = 0x28;
    /// Net: acknowledge the interrupt.
    pub const NET_ACK: u64 = 0x30;
    /// Net: packets queued.
    pub const NET_RX_COUNT: u64 = 0x38;
}

/// I/O operation codes in [`crate::IoRequest::op`].
pub mod op {
    /// Timer arm.
    pub const TIMER_ARM: u32 = 1;
    /// Disk read.
    pub const DISK_READ: u32 = 2;
    /// Disk write.
    pub const DISK_WRITE: u32 = 3;
}

/// Block status bits.
pub mod blk_status {
    /// A command is in flight.
    pub const BUSY: u64 = 1;
    /// The last command completed.
    pub const DONE: u64 = 2;
    /// The last command failed.
    pub const ERROR: u64 = 4;
}

/// Block command: read.
pub const BLK_CMD_READ: u64 = 1;
/// Block command: write.
pub const BLK_CMD_WRITE: u64 = 2;
/// Block device sector size.
pub const SECTOR_SIZE: u64 = 512;
/// Largest transfer of one block command, in sectors.
pub const MAX_SECTORS: u64 = 64;
/// Most packets the network device queues; later arrivals are dropped (as a NIC drops
/// them), deterministically since arrival points are logged.
pub const NET_RX_QUEUE: usize = 32;
/// Largest packet.
pub const NET_MTU: u64 = 2048;
/// Bytes the UART buffers before it sends a line anyway.
pub const UART_LINE_MAX: usize = 256;

pub mod model;
