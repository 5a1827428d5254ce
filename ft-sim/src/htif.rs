//! HTIF, the host-target interface of spike and riscv-pk, as bare-metal programs use
//! it: the guest writes a command to its `tohost` doubleword, and the host answers in
//! `fromhost`.
//!
//! A command is `device << 56 | command << 48 | payload`:
//!
//! | device | command | payload | effect |
//! |---|---|---|---|
//! | 0 | 0 | odd | exit with code `payload >> 1` (riscv-tests' pass/fail) |
//! | 0 | 0 | even, non-zero | system-call proxy: `payload` points at `magic_mem`, eight doublewords `[number, a0..a6]`; the result goes to `magic_mem[0]` |
//! | 1 | 1 | a byte | console putchar |
//!
//! The proxy handles `SYS_write` (64) to file descriptors 1 and 2 (the console; at most
//! [`WRITE_MAX`] bytes a call, a short write beyond) and `SYS_exit`/`SYS_exit_group`
//! (93, 94). Any other call returns `-ENOSYS`; a bad descriptor `-EBADF`; a buffer
//! outside RAM `-EFAULT` (a zero-length write returns 0). After a command the host
//! clears `tohost` and, for the proxy and putchar, answers in `fromhost` with spike's
//! values: `1` for the proxy (device 0, command 0), and for putchar device 1, command 1
//! and payload `0x100 | byte`. riscv-pk and newlib's HTIF stubs wait for these. Unlike
//! spike, which queues an answer while `fromhost` still holds one, the host answers
//! at once and overwrites; the stubs clear `fromhost` before their next command. Other
//! devices and commands are ignored (`tohost` is cleared, nothing answers), and so is
//! a proxy call whose `magic_mem` block is not in RAM.
//!
//! Everything here is a function of guest memory, so record and replay agree without
//! logging anything: console text leaves as an output (through the output rule, like
//! the UART's, sharing its line buffer), and the host's writes to guest memory are
//! the same on both sides.

/// The most bytes one `SYS_write` takes; a longer write is short, as POSIX allows.
pub const WRITE_MAX: u64 = 4096;
/// `SYS_write`.
pub const SYS_WRITE: u64 = 64;
/// `SYS_exit`.
pub const SYS_EXIT: u64 = 93;
/// `SYS_exit_group`.
pub const SYS_EXIT_GROUP: u64 = 94;

const EBADF: i64 = 9;
const EFAULT: i64 = 14;
const ENOSYS: i64 = 38;

/// What a `tohost` value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Exit with this code.
    Exit(u64),
    /// A proxied system call; its `magic_mem` block is at this address.
    Syscall(u64),
    /// Print this byte on the console.
    Putchar(u8),
    /// A device or command this host does not implement.
    Unknown {
        /// The device field.
        device: u8,
        /// The command field.
        command: u8,
    },
}

/// Decode a `tohost` value; `None` for 0 (nothing asked).
#[must_use]
pub const fn decode(value: u64) -> Option<Command> {
    let device = (value >> 56) as u8;
    let command = (value >> 48) as u8;
    let payload = value & ((1 << 48) - 1);
    Some(match (device, command) {
        _ if value == 0 => return None,
        (0, 0) if payload & 1 == 1 => Command::Exit(payload >> 1),
        (0, 0) => Command::Syscall(payload),
        (1, 1) => Command::Putchar(payload as u8),
        _ => Command::Unknown { device, command },
    })
}

/// The answer in `fromhost` to `command`, if it has one.
#[must_use]
pub const fn answer(command: Command) -> Option<u64> {
    match command {
        Command::Syscall(_) => Some(1),
        Command::Putchar(b) => Some(1 << 56 | 1 << 48 | 0x100 | b as u64),
        Command::Exit(_) | Command::Unknown { .. } => None,
    }
}

/// What a proxied system call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Write these bytes to the console; return their count.
    Write(u64, u64),
    /// Exit with this code.
    Exit(u64),
    /// Return this value without doing anything.
    Fail(i64),
}

/// Classify the system call `[number, a0, a1, a2]` of a `magic_mem` block.
#[must_use]
pub fn call(args: [u64; 4]) -> Call {
    let [number, a0, a1, a2] = args;
    match number {
        SYS_WRITE if (a0 == 1 || a0 == 2) && a2 == 0 => Call::Fail(0),
        SYS_WRITE if a0 == 1 || a0 == 2 => Call::Write(a1, a2.min(WRITE_MAX)),
        SYS_WRITE => Call::Fail(-EBADF),
        SYS_EXIT | SYS_EXIT_GROUP => Call::Exit(a0),
        _ => Call::Fail(-ENOSYS),
    }
}

/// The result of a `SYS_write` whose buffer lies outside RAM.
pub const WRITE_FAULT: i64 = -EFAULT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_as_spike_defines_them() {
        assert_eq!(decode(0), None);
        assert_eq!(decode(1), Some(Command::Exit(0)));
        assert_eq!(decode((42 << 1) | 1), Some(Command::Exit(42)));
        assert_eq!(decode(0x8000_1000), Some(Command::Syscall(0x8000_1000)));
        assert_eq!(
            decode(1 << 56 | 1 << 48 | 0x41),
            Some(Command::Putchar(b'A'))
        );
        assert_eq!(
            decode(1 << 56 | 0x41),
            Some(Command::Unknown {
                device: 1,
                command: 0
            })
        );
        assert_eq!(
            answer(Command::Putchar(b'A')),
            Some(0x0101 << 48 | 0x100 | 0x41)
        );
        assert_eq!(answer(Command::Syscall(8)), Some(1));
        assert_eq!(answer(Command::Exit(0)), None);
    }

    #[test]
    fn system_calls_are_classified() {
        assert_eq!(
            call([SYS_WRITE, 1, 0x8000_0000, 5]),
            Call::Write(0x8000_0000, 5)
        );
        assert_eq!(call([SYS_WRITE, 2, 0, 1 << 40]), Call::Write(0, WRITE_MAX));
        assert_eq!(call([SYS_WRITE, 3, 0, 1]), Call::Fail(-9));
        assert_eq!(
            call([SYS_WRITE, 1, u64::MAX, 0]),
            Call::Fail(0),
            "empty write"
        );
        assert_eq!(call([SYS_WRITE, 3, 0, 0]), Call::Fail(-9));
        assert_eq!(call([SYS_EXIT, 7, 0, 0]), Call::Exit(7));
        assert_eq!(call([SYS_EXIT_GROUP, 8, 0, 0]), Call::Exit(8));
        assert_eq!(call([57, 0, 0, 0]), Call::Fail(-38));
    }
}
