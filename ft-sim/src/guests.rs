//! Guest programs built with the [`crate::asm`] assembler: the demo service and helpers
//! for talking to it.
//!
//! # The service guest
//!
//! A small network service, written for the sim machine's devices:
//!
//! * at boot it arms a periodic timer, reads its persistent request counter from disk
//!   sector 0 and prints `boot <counter>` on the console;
//! * for every packet it receives it increments the counter, reads the wall clock and
//!   the RNG, and replies with `[counter, clock, random, ticks, payload...]` (four
//!   little-endian `u64`s, then the request echoed); it prints `req <counter> len <n>`;
//! * every 4th request it writes the counter back to sector 0;
//! * a request starting with `quit` makes it print `bye` and exit with code 0.
//!
//! The timer interrupt handler counts ticks and re-arms the timer; the external
//! interrupt handler acknowledges the network and disk devices. Every kind of
//! nondeterminism the sim machine has is exercised: clock and RNG reads, timer
//! interrupts at arbitrary instructions, packet arrivals, DMA from disk, disk writes
//! and console and network output.

use bytes::Bytes;

use crate::asm::{AsmError, Assembler, A0, A1, RA, S0, S1, SP, T0, T1, T2, ZERO};
use crate::cpu::csr;
use crate::devices::{map, reg, BLK_CMD_READ, BLK_CMD_WRITE};
use crate::memory::RAM_BASE;

/// Timer period of the service guest, in nanoseconds.
pub const SERVICE_TICK_NS: i64 = 1_000_000;
/// Guest address of the disk DMA buffer.
pub const BUF_DISK: u64 = RAM_BASE + 0x8_1000;
/// Guest address of the receive buffer.
pub const BUF_RX: u64 = RAM_BASE + 0x8_2000;
/// Guest address of the transmit buffer.
pub const BUF_TX: u64 = RAM_BASE + 0x8_3000;
const VAR_TICKS: u64 = RAM_BASE + 0x8_0000;
const VAR_BLK: u64 = RAM_BASE + 0x8_0008;
const STACK_TOP: u64 = RAM_BASE + 0xF_FF00;

fn addr(a: u64) -> i64 {
    a as i64
}

/// Print a constant string on the UART (clobbers T0, T1).
fn print_const(a: &mut Assembler, s: &str) {
    a.li(T1, addr(map::UART));
    for b in s.bytes() {
        a.li(T0, i64::from(b));
        a.sd(T0, T1, reg::UART_TX as i64);
    }
}

/// Build the service guest. The image is raw code for the start of RAM.
pub fn service() -> Result<Vec<u8>, AsmError> {
    let mut a = Assembler::with_base(RAM_BASE);
    let trap = a.label();
    let print_dec = a.label();
    let wait_disk = a.label();
    let main_loop = a.label();
    let handle = a.label();
    let no_write = a.label();
    let not_quit = a.label();

    // --- boot ---
    a.li(SP, addr(STACK_TOP));
    a.la(T0, trap);
    a.csrw(csr::MTVEC, T0);
    a.li(T0, (1 << 7) | (1 << 11));
    a.csrw(csr::MIE, T0);
    // Arm the periodic timer, enable interrupts.
    a.li(T1, addr(map::TIMER));
    a.li(T0, SERVICE_TICK_NS);
    a.sd(T0, T1, reg::TIMER_ARM as i64);
    a.csrsi(csr::MSTATUS, 8);
    // Read sector 0 (the persistent counter).
    a.li(T1, addr(map::BLOCK));
    a.sd(ZERO, T1, reg::BLK_SECTOR as i64);
    a.li(T0, addr(BUF_DISK));
    a.sd(T0, T1, reg::BLK_DMA as i64);
    a.li(T0, 1);
    a.sd(T0, T1, reg::BLK_COUNT as i64);
    a.li(T0, BLK_CMD_READ as i64);
    a.sd(T0, T1, reg::BLK_CMD as i64);
    a.call(wait_disk);
    a.li(T0, addr(BUF_DISK));
    a.ld(S0, T0, 0);
    print_const(&mut a, "boot ");
    a.mv(A0, S0);
    a.call(print_dec);
    print_const(&mut a, "\n");

    // --- main loop ---
    a.bind(main_loop);
    a.csrci(csr::MSTATUS, 8);
    a.li(T1, addr(map::NET));
    a.ld(T0, T1, reg::NET_RX_LEN as i64);
    a.bnez(T0, handle);
    a.wfi();
    a.csrsi(csr::MSTATUS, 8);
    a.j(main_loop);

    // --- one request ---
    a.bind(handle);
    a.csrsi(csr::MSTATUS, 8);
    a.mv(S1, T0); // length
    a.li(T0, addr(BUF_RX));
    a.sd(T0, T1, reg::NET_RX_ADDR as i64);
    a.sd(ZERO, T1, reg::NET_RX_POP as i64);
    a.addi(S0, S0, 1);
    // reply header: counter, clock, random, ticks
    a.li(T2, addr(BUF_TX));
    a.sd(S0, T2, 0);
    a.li(T1, addr(map::CLOCK));
    a.ld(T0, T1, 0);
    a.sd(T0, T2, 8);
    a.li(T1, addr(map::RNG));
    a.ld(T0, T1, 0);
    a.sd(T0, T2, 16);
    a.li(T1, addr(VAR_TICKS));
    a.ld(T0, T1, 0);
    a.sd(T0, T2, 24);
    // echo the payload byte by byte
    {
        let copy = a.label();
        let copied = a.label();
        a.li(A0, addr(BUF_RX));
        a.addi(A1, T2, 32);
        a.mv(T1, S1);
        a.bind(copy);
        a.beqz(T1, copied);
        a.lbu(T0, A0, 0);
        a.sb(T0, A1, 0);
        a.addi(A0, A0, 1);
        a.addi(A1, A1, 1);
        a.addi(T1, T1, -1);
        a.j(copy);
        a.bind(copied);
    }
    a.li(T1, addr(map::NET));
    a.sd(T2, T1, reg::NET_TX_ADDR as i64);
    a.addi(T0, S1, 32);
    a.sd(T0, T1, reg::NET_TX_LEN as i64);
    a.sd(ZERO, T1, reg::NET_TX_SEND as i64);
    // console line
    print_const(&mut a, "req ");
    a.mv(A0, S0);
    a.call(print_dec);
    print_const(&mut a, " len ");
    a.mv(A0, S1);
    a.call(print_dec);
    print_const(&mut a, "\n");
    // every 4th request: persist the counter
    a.andi(T0, S0, 3);
    a.bnez(T0, no_write);
    a.li(T0, addr(BUF_DISK));
    a.sd(S0, T0, 0);
    a.li(T1, addr(map::BLOCK));
    a.sd(ZERO, T1, reg::BLK_SECTOR as i64);
    a.sd(T0, T1, reg::BLK_DMA as i64);
    a.li(T0, 1);
    a.sd(T0, T1, reg::BLK_COUNT as i64);
    a.li(T0, BLK_CMD_WRITE as i64);
    a.sd(T0, T1, reg::BLK_CMD as i64);
    a.call(wait_disk);
    a.bind(no_write);
    // "quit" ends the service
    a.li(T0, addr(BUF_RX));
    a.lwu(T0, T0, 0);
    a.li(T1, i64::from(u32::from_le_bytes(*b"quit")));
    a.bne(T0, T1, not_quit);
    print_const(&mut a, "bye\n");
    a.li(T1, addr(map::EXIT));
    a.sd(ZERO, T1, 0);
    a.bind(not_quit);
    a.j(main_loop);

    // --- wait_disk: wait until the disk interrupt handler saw a completion ---
    a.bind(wait_disk);
    {
        let again = a.label();
        let done = a.label();
        a.li(T1, addr(VAR_BLK));
        a.bind(again);
        a.ld(T0, T1, 0);
        a.bnez(T0, done);
        a.wfi();
        a.j(again);
        a.bind(done);
        a.sd(ZERO, T1, 0);
        a.ret();
    }

    // --- print_dec(a0): decimal on the UART (clobbers a0, a1, t0, t1, t2) ---
    a.bind(print_dec);
    {
        let digits = a.label();
        let out = a.label();
        // Push digits on the stack, least significant first, then pop them.
        a.mv(T2, SP);
        a.li(A1, 10);
        a.bind(digits);
        a.remu(T0, A0, A1);
        a.addi(T0, T0, i64::from(b'0'));
        a.addi(SP, SP, -8);
        a.sd(T0, SP, 0);
        a.divu(A0, A0, A1);
        a.bnez(A0, digits);
        a.li(T1, addr(map::UART));
        a.bind(out);
        a.ld(T0, SP, 0);
        a.sd(T0, T1, reg::UART_TX as i64);
        a.addi(SP, SP, 8);
        a.bne(SP, T2, out);
        a.ret();
    }

    // --- trap handler ---
    a.bind(trap);
    {
        let out = a.label();
        let timer = a.label();
        let ext = a.label();
        let exception = a.label();
        let no_net = a.label();
        a.addi(SP, SP, -32);
        a.sd(T0, SP, 0);
        a.sd(T1, SP, 8);
        a.sd(T2, SP, 16);
        a.sd(RA, SP, 24);
        a.csrr(T0, csr::MCAUSE);
        a.bge(T0, ZERO, exception);
        a.andi(T0, T0, 0xff);
        a.li(T1, 7);
        a.beq(T0, T1, timer);
        a.li(T1, 11);
        a.beq(T0, T1, ext);
        a.j(out);

        a.bind(timer);
        a.li(T1, addr(map::TIMER));
        a.sd(ZERO, T1, reg::TIMER_ACK as i64);
        a.li(T2, SERVICE_TICK_NS);
        a.sd(T2, T1, reg::TIMER_ARM as i64);
        a.li(T1, addr(VAR_TICKS));
        a.ld(T2, T1, 0);
        a.addi(T2, T2, 1);
        a.sd(T2, T1, 0);
        a.j(out);

        a.bind(ext);
        a.li(T1, addr(map::PIC));
        a.ld(T0, T1, 0);
        a.andi(T2, T0, 1 << 5);
        a.beqz(T2, no_net);
        a.li(T1, addr(map::NET));
        a.sd(ZERO, T1, reg::NET_ACK as i64);
        a.bind(no_net);
        a.andi(T2, T0, 1 << 4);
        a.beqz(T2, out);
        a.li(T1, addr(map::BLOCK));
        a.ld(T2, T1, reg::BLK_STATUS as i64);
        a.ori(T2, T2, 0x100);
        a.li(T0, addr(VAR_BLK));
        a.sd(T2, T0, 0);
        a.sd(ZERO, T1, reg::BLK_ACK as i64);
        a.j(out);

        a.bind(exception);
        a.csrr(T0, csr::MEPC);
        a.addi(T0, T0, 4);
        a.csrw(csr::MEPC, T0);

        a.bind(out);
        a.ld(T0, SP, 0);
        a.ld(T1, SP, 8);
        a.ld(T2, SP, 16);
        a.ld(RA, SP, 24);
        a.addi(SP, SP, 32);
        a.mret();
    }
    a.finish()
}

/// Guest address of the [`dirtier`]'s working set (1 MiB into RAM, above its code).
pub const DIRTY_BASE: u64 = RAM_BASE + 0x10_0000;

/// Build a guest that keeps writing a working set: pass after pass, it reads the RNG
/// and stores a value derived from it into the first dword of every 4 KiB page of
/// `[DIRTY_BASE, DIRTY_BASE + ws_bytes)`, so every page of the working set is dirty
/// again in each pass and its contents depend on logged input. Every `print_every`
/// passes (0: never) it prints a line with one letter on the console, `a` to `p` and
/// round again (pass `k * print_every` prints letter `k % 16`); after `passes`
/// passes (0: never) it exits with code 0. The machine needs RAM up to
/// `DIRTY_BASE + ws_bytes`. The image is raw code for the start of RAM.
///
/// # Errors
///
/// [`AsmError`] when the parameters do not assemble (a working set past the address
/// space).
pub fn dirtier(ws_bytes: u64, passes: u64, print_every: u64) -> Result<Vec<u8>, AsmError> {
    let mut a = Assembler::with_base(RAM_BASE);
    let main = a.label();
    let inner = a.label();
    let pass_done = a.label();
    let no_print = a.label();
    let exit = a.label();
    let limit = 1u64 << 40;
    let end = match DIRTY_BASE.checked_add(ws_bytes) {
        Some(e) if e < limit => e,
        _ => {
            return Err(AsmError::ImmediateOutOfRange {
                what: "working set end",
                value: ws_bytes.min(i64::MAX as u64) as i64,
                min: 0,
                max: (limit - DIRTY_BASE) as i64,
            })
        }
    };
    a.li(S0, 0);
    a.bind(main);
    a.li(T1, addr(map::RNG));
    a.ld(S1, T1, 0);
    a.li(T0, addr(DIRTY_BASE));
    a.li(T2, addr(end));
    a.li(A1, 4096);
    a.bind(inner);
    a.bgeu(T0, T2, pass_done);
    a.sd(S1, T0, 0);
    a.addi(S1, S1, 1);
    a.add(T0, T0, A1);
    a.j(inner);
    a.bind(pass_done);
    a.addi(S0, S0, 1);
    if print_every > 0 {
        a.li(A0, print_every as i64);
        a.remu(A1, S0, A0);
        a.bnez(A1, no_print);
        a.li(T1, addr(map::UART));
        a.divu(A0, S0, A0);
        a.andi(A0, A0, 15);
        a.addi(A0, A0, i64::from(b'a'));
        a.sd(A0, T1, reg::UART_TX as i64);
        a.li(A0, i64::from(b'\n'));
        a.sd(A0, T1, reg::UART_TX as i64);
    }
    a.bind(no_print);
    if passes > 0 {
        a.li(A0, passes as i64);
        a.beq(S0, A0, exit);
    }
    a.j(main);
    a.bind(exit);
    a.li(T1, addr(map::EXIT));
    a.sd(ZERO, T1, 0);
    a.j(exit);
    a.finish()
}

/// Check the [`dirtier`]'s console lines, in sequence order: each letter follows the
/// one before (`a` to `p`, then `a` again), so none is missing or repeated. Returns how
/// many there were.
///
/// # Errors
///
/// The first pair of outputs that do not follow each other, or an output that is not
/// one of the dirtier's lines.
pub fn check_dirtier_letters(outputs: &[ft_core::Output]) -> Result<usize, String> {
    let letter = |o: &ft_core::Output| match o.data.first() {
        Some(&c @ b'a'..=b'p') => Ok(c - b'a'),
        _ => Err(format!(
            "output #{} is not a dirtier line: {:?}",
            o.seq.0, o.data
        )),
    };
    for w in outputs.windows(2) {
        let (a, b) = (letter(&w[0])?, letter(&w[1])?);
        if (a + 1) % 16 != b {
            return Err(format!(
                "outputs #{} ({}) and #{} ({}) do not follow each other",
                w[0].seq.0,
                char::from(b'a' + a),
                w[1].seq.0,
                char::from(b'a' + b)
            ));
        }
    }
    if let Some(o) = outputs.first() {
        letter(o)?;
    }
    Ok(outputs.len())
}

/// A decoded reply of the service guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request counter after this request.
    pub counter: u64,
    /// The wall clock the guest read.
    pub clock: u64,
    /// The random number the guest read.
    pub random: u64,
    /// Timer ticks the guest had counted.
    pub ticks: u64,
    /// The request payload, echoed.
    pub payload: Bytes,
}

/// Decode a reply packet; `None` if it is too short.
pub fn parse_reply(packet: &[u8]) -> Option<Reply> {
    let word = |i: usize| -> Option<u64> {
        let b = packet.get(i * 8..i * 8 + 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    };
    Some(Reply {
        counter: word(0)?,
        clock: word(1)?,
        random: word(2)?,
        ticks: word(3)?,
        payload: Bytes::copy_from_slice(packet.get(32..)?),
    })
}
