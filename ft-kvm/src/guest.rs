//! Guests built by the project with iced-x86's code assembler: a tiny CPL0 kernel and
//! CPL3 workloads (hand-written ones for tests and the demo, and random ones for the
//! property tests).
//!
//! # The kernel
//!
//! Loaded at [`KERNEL_BASE`], entered in 64-bit mode at CPL0 with interrupts off. It
//! loads its IDT (part of its image at [`IDT_ADDR`]), prints a banner through the
//! console port, and `iretq`s into the workload at [`USER_BASE`] with IF=1. Its handlers
//! are short, because CPL0 code is emulated on some hosts:
//!
//! * exceptions 0-31 (and any unexpected vector) end the run through the exit port with
//!   code `0xE00 + vector` after saving the frame's top words and CR2 at
//!   [`kdata::FAULT_INFO`];
//! * the timer (vector `0x20`) counts a tick at [`kdata::TICKS`], folds the interrupted
//!   RIP and RAX into [`kdata::IRQ_ACC`] (so the exact delivery point reaches the memory
//!   digest), and acknowledges the timer;
//! * the block device (`0x21`) saves the status, counts, and acknowledges;
//! * the network device (`0x22`) counts and acknowledges;
//! * system calls: the workload executes `ud2`; the #UD handler sees the `ud2` bytes at
//!   the faulting RIP, steps over them and dispatches (`int 0x80`, a DPL 3 gate, reaches
//!   the same dispatcher on hosts that deliver it). This is because on PVM hosts
//!   `syscall` from CPL3 stays at CPL3 and `int 0x80` raises #UD, while exceptions reach
//!   the IDT everywhere. `rax` 0 = idle until the tick count differs from `rdi`
//!   (`sti; hlt` in a loop), 1 = exit with code `rdi` through the exit port (PIO), 2 =
//!   return the tick count in `rax`.
//!
//! # Workloads
//!
//! CPL3 code at [`USER_BASE`] that computes at native speed and does its device I/O
//! through MMIO (every access is a deterministic exit). [`UserAsm`] offers the building
//! blocks; [`random_workload`] generates instruction mixes from a seed.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use thiserror::Error;

use crate::arch::x86_64::{
    idt_gate, kdata, sel, DMA_BASE, IDTR_ADDR, IDT_ADDR, KERNEL_BASE, KERNEL_MAX, KERNEL_STACK_TOP,
    USER_BASE, USER_DATA, USER_MAX,
};
use crate::devices::{map, port, reg, vector, BLK_CMD_READ, BLK_CMD_WRITE};

/// Errors of building guests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GuestError {
    /// The assembler refused the code.
    #[error("assembler: {0}")]
    Asm(String),
    /// The image does not fit its slot.
    #[error("{what} image of {size:#x} bytes exceeds {max:#x}")]
    TooLarge {
        /// Kernel or workload.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The slot.
        max: u64,
    },
}

impl From<IcedError> for GuestError {
    fn from(e: IcedError) -> Self {
        GuestError::Asm(e.to_string())
    }
}

/// Result alias of this module.
pub type Result<T, E = GuestError> = std::result::Result<T, E>;

/// System call numbers (`rax` for `int 0x80`).
pub mod sys {
    /// Idle until the tick count differs from `rdi`.
    pub const IDLE: u64 = 0;
    /// Exit with code `rdi` (through the kernel's exit port).
    pub const EXIT: u64 = 1;
    /// Return the tick count in `rax`.
    pub const TICKS: u64 = 2;
}

/// Exit code of a guest fault: `FAULT_EXIT_BASE + vector`.
pub const FAULT_EXIT_BASE: u64 = 0xE00;

/// A guest: the kernel image and the workload image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Loaded at [`KERNEL_BASE`].
    pub kernel: Vec<u8>,
    /// Loaded at [`USER_BASE`].
    pub user: Vec<u8>,
}

/// The system-call dispatcher (an interrupt-gate frame on the stack; returns with
/// `iretq`).
fn syscall_body(a: &mut CodeAssembler, dead: CodeLabel) -> Result<()> {
    let mut idle = a.create_label();
    let mut exit = a.create_label();
    let mut ticks = a.create_label();
    let mut done = a.create_label();
    a.cmp(rax, sys::IDLE as i32)?;
    a.je(idle)?;
    a.cmp(rax, sys::EXIT as i32)?;
    a.je(exit)?;
    a.cmp(rax, sys::TICKS as i32)?;
    a.je(ticks)?;
    a.mov(rax, -1i64)?;
    a.jmp(done)?;
    a.set_label(&mut idle)?;
    a.mov(rax, qword_ptr(kdata::TICKS))?;
    a.cmp(rax, rdi)?;
    a.jne(done)?;
    a.sti()?;
    a.hlt()?;
    a.cli()?;
    a.jmp(idle)?;
    a.set_label(&mut exit)?;
    a.mov(eax, edi)?;
    a.mov(dx, port::EXIT as u32)?;
    a.out(dx, eax)?;
    a.jmp(dead)?;
    a.set_label(&mut ticks)?;
    a.mov(rax, qword_ptr(kdata::TICKS))?;
    a.set_label(&mut done)?;
    a.iretq()?;
    Ok(())
}

const EXC_WITH_ERROR: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// Build the kernel; the workload's stack starts at `user_stack_top`.
pub fn kernel(user_stack_top: u64) -> Result<Vec<u8>> {
    kernel_entering(user_stack_top, WorkloadPrivilege::User)
}

/// The privilege level the kernel enters the workload at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadPrivilege {
    /// CPL3 (user segments), as for every ordinary workload.
    User,
    /// CPL0 (kernel segments): the workload runs as guest-kernel code. Its device I/O,
    /// `ud2` system calls and interrupts work as at CPL3 (same-privilege frames). Used by
    /// the mid-stream delivery tests, because on software-nested hosts single-stepping
    /// works at CPL0 only.
    Kernel,
}

/// Build the kernel, entering the workload at `privilege`.
pub fn kernel_entering(user_stack_top: u64, privilege: WorkloadPrivilege) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut entry = a.create_label();
    let mut banner = a.create_label();
    let mut fault_common = a.create_label();
    let mut timer = a.create_label();
    let mut block = a.create_label();
    let mut net = a.create_label();
    let mut syscall = a.create_label();
    let mut ud_handler = a.create_label();
    let mut unexpected = a.create_label();
    let mut stubs: Vec<CodeLabel> = (0..32).map(|_| a.create_label()).collect();
    let stub_ud = stubs[6];

    a.set_label(&mut entry)?;
    a.lidt(ptr(IDTR_ADDR))?;
    a.mov(rsp, KERNEL_STACK_TOP)?;
    // Banner through the console port (CPL0 port I/O).
    a.lea(rsi, ptr(banner))?;
    a.mov(dx, port::CONSOLE as u32)?;
    let mut bloop = a.create_label();
    let mut bdone = a.create_label();
    a.set_label(&mut bloop)?;
    a.mov(al, byte_ptr(rsi))?;
    a.test(al, al)?;
    a.jz(bdone)?;
    a.out(dx, al)?;
    a.inc(rsi)?;
    a.jmp(bloop)?;
    a.set_label(&mut bdone)?;
    // Into the workload: SS, RSP, RFLAGS (IF), CS, RIP.
    let (stack_sel, code_sel) = match privilege {
        WorkloadPrivilege::User => (sel::USER_DS, sel::USER_CS),
        WorkloadPrivilege::Kernel => (sel::KERNEL_DS, sel::KERNEL_CS),
    };
    a.push(i32::from(stack_sel))?;
    a.mov(rax, user_stack_top)?;
    a.push(rax)?;
    a.push(0x202i32)?;
    a.push(i32::from(code_sel))?;
    a.mov(rax, USER_BASE)?;
    a.push(rax)?;
    a.iretq()?;

    // Exceptions: record the frame's top words and CR2, exit with 0xE00 + vector.
    for (v, l) in stubs.iter_mut().enumerate() {
        a.set_label(l)?;
        if !EXC_WITH_ERROR.contains(&(v as u8)) {
            a.push(0i32)?; // uniform frame: a zero error code
        }
        a.mov(eax, (FAULT_EXIT_BASE as u32) + v as u32)?;
        a.jmp(fault_common)?;
    }
    a.set_label(&mut unexpected)?;
    a.push(0i32)?;
    a.mov(eax, (FAULT_EXIT_BASE as u32) + 0xff)?;
    a.set_label(&mut fault_common)?;
    a.mov(rbx, qword_ptr(rsp))?;
    a.mov(qword_ptr(kdata::FAULT_INFO), rbx)?;
    a.mov(rbx, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(kdata::FAULT_INFO + 8), rbx)?;
    a.mov(rbx, qword_ptr(rsp + 16))?;
    a.mov(qword_ptr(kdata::FAULT_INFO + 16), rbx)?;
    a.mov(rbx, cr2)?;
    a.mov(qword_ptr(kdata::FAULT_INFO + 24), rbx)?;
    a.mov(dx, port::EXIT as u32)?;
    a.out(dx, eax)?;
    let mut dead = a.create_label();
    a.set_label(&mut dead)?;
    a.hlt()?;
    a.jmp(dead)?;

    // Timer: tick, fold the interrupted RIP and RAX into IRQ_ACC, acknowledge.
    a.set_label(&mut timer)?;
    a.push(rax)?;
    a.push(rbx)?;
    a.inc(qword_ptr(kdata::TICKS))?;
    a.mov(rbx, qword_ptr(kdata::IRQ_ACC))?;
    a.imul_3(rbx, rbx, 31)?;
    a.add(rbx, qword_ptr(rsp + 16))?; // interrupted RIP
    a.xor(rbx, qword_ptr(rsp + 8))?; // interrupted RAX
    a.mov(qword_ptr(kdata::IRQ_ACC), rbx)?;
    a.mov(qword_ptr(map::TIMER + reg::TIMER_ACK), 0)?;
    a.pop(rbx)?;
    a.pop(rax)?;
    a.iretq()?;

    // Block device: save the status, count, acknowledge.
    a.set_label(&mut block)?;
    a.push(rax)?;
    a.mov(rax, qword_ptr(map::BLOCK + reg::BLK_STATUS))?;
    a.mov(qword_ptr(kdata::BLK_STATUS), rax)?;
    a.inc(qword_ptr(kdata::BLK_IRQS))?;
    a.mov(qword_ptr(map::BLOCK + reg::BLK_ACK), 0)?;
    a.pop(rax)?;
    a.iretq()?;

    // Network device: count, acknowledge.
    a.set_label(&mut net)?;
    a.inc(qword_ptr(kdata::NET_IRQS))?;
    a.mov(qword_ptr(map::NET + reg::NET_ACK), 0)?;
    a.iretq()?;

    // System calls, reached by `ud2` from the workload (see the module docs) or by
    // `int 0x80`.
    a.set_label(&mut ud_handler)?;
    a.push(rbx)?;
    a.mov(rbx, qword_ptr(rsp + 8))?; // faulting RIP
    a.cmp(word_ptr(rbx), 0x0b0f)?; // `ud2`
    a.pop(rbx)?;
    a.jne(stub_ud)?;
    a.add(qword_ptr(rsp), 2)?;
    a.set_label(&mut syscall)?;
    syscall_body(&mut a, dead)?;

    a.set_label(&mut banner)?;
    a.db(b"ft-kvm kernel: up\n\0")?;

    let res = a.assemble_options(
        KERNEL_BASE,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let mut image = res.inner.code_buffer.clone();
    let idtr_off = (IDTR_ADDR - KERNEL_BASE) as usize;
    let idt_off = (IDT_ADDR - KERNEL_BASE) as usize;
    if image.len() > idtr_off {
        return Err(GuestError::TooLarge {
            what: "kernel code",
            size: image.len(),
            max: IDTR_ADDR - KERNEL_BASE,
        });
    }
    image.resize(idt_off + 256 * 16, 0);
    image[idtr_off..idtr_off + 2].copy_from_slice(&(256u16 * 16 - 1).to_le_bytes());
    image[idtr_off + 2..idtr_off + 10].copy_from_slice(&IDT_ADDR.to_le_bytes());
    let unexpected_ip = res.label_ip(&unexpected)?;
    for v in 0..256usize {
        let (ip, dpl) = match v {
            6 => (res.label_ip(&ud_handler)?, 0),
            0..=31 => (res.label_ip(&stubs[v])?, 0),
            x if x == usize::from(vector::TIMER) => (res.label_ip(&timer)?, 0),
            x if x == usize::from(vector::BLOCK) => (res.label_ip(&block)?, 0),
            x if x == usize::from(vector::NET) => (res.label_ip(&net)?, 0),
            x if x == usize::from(vector::SYSCALL) => (res.label_ip(&syscall)?, 3),
            _ => (unexpected_ip, 0),
        };
        image[idt_off + 16 * v..idt_off + 16 * v + 16].copy_from_slice(&idt_gate(ip, dpl));
    }
    let _ = entry;
    if image.len() as u64 > KERNEL_MAX {
        return Err(GuestError::TooLarge {
            what: "kernel",
            size: image.len(),
            max: KERNEL_MAX,
        });
    }
    Ok(image)
}

/// A CPL3 workload under construction: an iced-x86 [`CodeAssembler`] plus helpers for the
/// devices. Register use by the helpers: `rax`, `rbx`, `rcx`, `rdx`, `rsi`, `rdi` are
/// scratch; `r8`-`r15` are left to the workload.
pub struct UserAsm {
    /// The assembler, for workload-specific code.
    pub a: CodeAssembler,
    print_hex: CodeLabel,
    print_hex_used: bool,
}

impl UserAsm {
    /// An empty workload.
    pub fn new() -> Result<UserAsm> {
        let mut a = CodeAssembler::new(64)?;
        let print_hex = a.create_label();
        Ok(UserAsm {
            a,
            print_hex,
            print_hex_used: false,
        })
    }

    /// Write the bytes of `s` to the console (one MMIO exit per byte).
    pub fn print(&mut self, s: &[u8]) -> Result<()> {
        for b in s {
            self.a
                .mov(byte_ptr(map::UART + reg::UART_TX), u32::from(*b))?;
        }
        Ok(())
    }

    /// Print `r` as 16 hex digits and a newline (one console line: one output).
    pub fn print_hex(&mut self, r: AsmRegister64) -> Result<()> {
        if r != rdi {
            self.a.mov(rdi, r)?;
        }
        self.a.call(self.print_hex)?;
        self.print_hex_used = true;
        Ok(())
    }

    /// `dst` = the clock device's nanoseconds (a logged input).
    pub fn read_clock(&mut self, dst: AsmRegister64) -> Result<()> {
        self.a.mov(dst, qword_ptr(map::CLOCK))?;
        Ok(())
    }

    /// `dst` = 64 bits from the RNG device (a logged input).
    pub fn read_rng(&mut self, dst: AsmRegister64) -> Result<()> {
        self.a.mov(dst, qword_ptr(map::RNG))?;
        Ok(())
    }

    /// `dst` = the kernel's tick count (plain memory: no exit).
    pub fn read_ticks(&mut self, dst: AsmRegister64) -> Result<()> {
        self.a.mov(dst, qword_ptr(kdata::TICKS))?;
        Ok(())
    }

    /// `rax` = the tick count, through a system call.
    pub fn sys_ticks(&mut self) -> Result<()> {
        self.a.mov(eax, sys::TICKS as u32)?;
        self.a.ud2()?;
        Ok(())
    }

    /// A deterministic exit that reads nothing nondeterministic (the interrupt status).
    pub fn poll_exit(&mut self, dst: AsmRegister64) -> Result<()> {
        self.a.mov(dst, qword_ptr(map::PIC))?;
        Ok(())
    }

    /// Arm the timer (`delay_ns` of host time) and idle until a timer tick arrives.
    pub fn sleep(&mut self, delay_ns: u32) -> Result<()> {
        self.a.mov(rdi, qword_ptr(kdata::TICKS))?;
        self.a.mov(
            qword_ptr(map::TIMER + reg::TIMER_ARM),
            delay_ns as i32 & i32::MAX,
        )?;
        self.a.mov(eax, sys::IDLE as u32)?;
        self.a.ud2()?;
        Ok(())
    }

    /// Write one 512-byte sector from guest address `src` to `sector` and wait for the
    /// completion interrupt (polling with exits, so the completion can be delivered).
    pub fn block_write(&mut self, sector: u32, src: u64) -> Result<()> {
        self.block_cmd(sector, src, BLK_CMD_WRITE)
    }

    /// Read `sector` into guest address `dst` and wait for the completion interrupt.
    pub fn block_read(&mut self, sector: u32, dst: u64) -> Result<()> {
        self.block_cmd(sector, dst, BLK_CMD_READ)
    }

    fn block_cmd(&mut self, sector: u32, addr: u64, cmd: u64) -> Result<()> {
        let a = &mut self.a;
        a.mov(rbx, qword_ptr(kdata::BLK_IRQS))?;
        a.mov(
            qword_ptr(map::BLOCK + reg::BLK_SECTOR),
            sector as i32 & i32::MAX,
        )?;
        a.mov(rax, addr)?;
        a.mov(qword_ptr(map::BLOCK + reg::BLK_DMA), rax)?;
        a.mov(qword_ptr(map::BLOCK + reg::BLK_COUNT), 1)?;
        a.mov(qword_ptr(map::BLOCK + reg::BLK_CMD), cmd as i32)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(rax, qword_ptr(map::PIC))?;
        a.cmp(qword_ptr(kdata::BLK_IRQS), rbx)?;
        a.je(wait)?;
        Ok(())
    }

    /// Exit with the low 32 bits of `code` (MMIO exit device).
    pub fn exit_with(&mut self, code: AsmRegister64) -> Result<()> {
        self.a.mov(qword_ptr(map::EXIT), code)?;
        Ok(())
    }

    /// Exit with code `rdi` through the kernel (a system call; port I/O at CPL0).
    pub fn sys_exit(&mut self, code: u32) -> Result<()> {
        self.a.mov(edi, code)?;
        self.a.mov(eax, sys::EXIT as u32)?;
        self.a.ud2()?;
        Ok(())
    }

    /// Assemble at [`USER_BASE`].
    pub fn finish(mut self) -> Result<Vec<u8>> {
        // Guard: falling off the end exits with 0xdead.
        self.a.mov(rax, 0xdeadu64)?;
        self.a.mov(qword_ptr(map::EXIT), rax)?;
        if self.print_hex_used {
            let a = &mut self.a;
            a.set_label(&mut self.print_hex)?;
            a.mov(ecx, 16)?;
            let mut l = a.create_label();
            let mut digit = a.create_label();
            a.set_label(&mut l)?;
            a.rol(rdi, 4)?;
            a.mov(eax, edi)?;
            a.and(eax, 0xf)?;
            a.cmp(al, 10)?;
            a.jb(digit)?;
            a.add(al, (b'a' - b'0' - 10) as i32)?;
            a.set_label(&mut digit)?;
            a.add(al, b'0' as i32)?;
            a.mov(byte_ptr(map::UART + reg::UART_TX), al)?;
            a.dec(ecx)?;
            a.jnz(l)?;
            a.mov(byte_ptr(map::UART + reg::UART_TX), u32::from(b'\n'))?;
            a.ret()?;
        }
        let code = self.a.assemble(USER_BASE)?;
        if code.len() as u64 > USER_MAX {
            return Err(GuestError::TooLarge {
                what: "workload",
                size: code.len(),
                max: USER_MAX,
            });
        }
        Ok(code)
    }
}

/// The demo service: `rounds` times, sleep on the timer (about 100 µs of host time),
/// read the clock and the RNG, and print a numbered line with the tick count and a
/// running hash; then print a summary and exit with code 0.
pub fn service_workload(rounds: u32) -> Result<Vec<u8>> {
    let mut u = UserAsm::new()?;
    u.a.xor(r12d, r12d)?;
    u.a.mov(r15, 0x6a09_e667_f3bc_c908u64)?;
    let mut top = u.a.create_label();
    u.a.set_label(&mut top)?;
    u.sleep(100_000)?;
    u.read_clock(rax)?;
    u.a.xor(r15, rax)?;
    u.read_rng(rax)?;
    u.a.imul_3(r15, r15, 0x1f3)?;
    u.a.add(r15, rax)?;
    u.a.mov(r14d, 200_000)?;
    let mut spin = u.a.create_label();
    u.a.set_label(&mut spin)?;
    u.a.rol(r15, 5)?;
    u.a.xor(r15, r14)?;
    u.a.dec(r14)?;
    u.a.jnz(spin)?;
    u.print(b"round ")?;
    u.print_hex(r12)?;
    u.print(b"state ")?;
    u.print_hex(r15)?;
    u.a.inc(r12)?;
    u.a.cmp(r12d, rounds as i32)?;
    u.a.jb(top)?;
    u.read_ticks(rax)?;
    u.print(b"ticks ")?;
    u.print_hex(rax)?;
    u.a.xor(eax, eax)?;
    u.exit_with(rax)?;
    u.finish()
}

/// Guest address of the [`net_service_workload`]'s disk sector buffer (in the DMA area).
pub const NET_SERVICE_DISK_BUF: u64 = DMA_BASE;
/// Guest address of its receive buffer.
pub const NET_SERVICE_RX_BUF: u64 = DMA_BASE + 0x1000;
/// Guest address of its transmit buffer.
pub const NET_SERVICE_TX_BUF: u64 = DMA_BASE + 0x2000;
/// How long it idles between two looks at the network device, in host nanoseconds.
pub const NET_SERVICE_POLL_NS: u32 = 250_000;

/// The network service of ft-sim's `guests::service`, for KVM, speaking the same
/// protocol to the same device set:
///
/// * at boot it reads its request counter from disk sector 0 and prints `boot` and
///   the counter (hex);
/// * for every packet it increments the counter, reads the clock and the RNG, and
///   replies with `[counter, clock, random, ticks, payload...]` (four little-endian
///   `u64`s, then the request echoed); it prints `req` and the counter;
/// * every 4th request it writes the counter back to sector 0;
/// * a request starting with `quit` makes it print `bye` and exit with code 0.
///
/// Between packets it idles on the timer ([`NET_SERVICE_POLL_NS`]); a packet that
/// arrives meanwhile is taken at the next look (the kernel's idle call waits for a
/// tick, and the network interrupt only counts).
///
/// # Errors
///
/// [`GuestError`] when the code does not assemble.
pub fn net_service_workload() -> Result<Vec<u8>> {
    let net = |r: u64| map::NET + r;
    let mut u = UserAsm::new()?;
    u.block_read(0, NET_SERVICE_DISK_BUF)?;
    u.a.mov(r12, qword_ptr(NET_SERVICE_DISK_BUF))?;
    u.print(b"boot ")?;
    u.print_hex(r12)?;
    let mut main = u.a.create_label();
    let mut handle = u.a.create_label();
    let mut no_write = u.a.create_label();
    let mut not_quit = u.a.create_label();
    u.a.set_label(&mut main)?;
    u.a.mov(rax, qword_ptr(net(reg::NET_RX_LEN)))?;
    u.a.test(rax, rax)?;
    u.a.jnz(handle)?;
    u.sleep(NET_SERVICE_POLL_NS)?;
    u.a.jmp(main)?;

    // One request: take it into the receive buffer.
    u.a.set_label(&mut handle)?;
    u.a.mov(r13, rax)?;
    u.a.mov(rax, NET_SERVICE_RX_BUF)?;
    u.a.mov(qword_ptr(net(reg::NET_RX_ADDR)), rax)?;
    u.a.mov(qword_ptr(net(reg::NET_RX_POP)), 0)?;
    u.a.inc(r12)?;
    // The reply's header: counter, clock, random, ticks.
    u.a.mov(qword_ptr(NET_SERVICE_TX_BUF), r12)?;
    u.read_clock(rax)?;
    u.a.mov(qword_ptr(NET_SERVICE_TX_BUF + 8), rax)?;
    u.read_rng(rax)?;
    u.a.mov(qword_ptr(NET_SERVICE_TX_BUF + 16), rax)?;
    u.read_ticks(rax)?;
    u.a.mov(qword_ptr(NET_SERVICE_TX_BUF + 24), rax)?;
    // The payload, echoed.
    u.a.mov(rsi, NET_SERVICE_RX_BUF)?;
    u.a.mov(rdi, NET_SERVICE_TX_BUF + 32)?;
    u.a.mov(rcx, r13)?;
    u.a.cld()?;
    u.a.rep().movsb()?;
    u.a.mov(rax, NET_SERVICE_TX_BUF)?;
    u.a.mov(qword_ptr(net(reg::NET_TX_ADDR)), rax)?;
    u.a.lea(rax, qword_ptr(r13 + 32))?;
    u.a.mov(qword_ptr(net(reg::NET_TX_LEN)), rax)?;
    u.a.mov(qword_ptr(net(reg::NET_TX_SEND)), 0)?;
    u.print(b"req ")?;
    u.print_hex(r12)?;
    // Every 4th request: persist the counter.
    u.a.test(r12, 3)?;
    u.a.jnz(no_write)?;
    u.a.mov(qword_ptr(NET_SERVICE_DISK_BUF), r12)?;
    u.block_write(0, NET_SERVICE_DISK_BUF)?;
    u.a.set_label(&mut no_write)?;
    // "quit" ends the service.
    u.a.cmp(dword_ptr(NET_SERVICE_RX_BUF), i32::from_le_bytes(*b"quit"))?;
    u.a.jne(not_quit)?;
    u.print(b"bye\n")?;
    u.a.xor(eax, eax)?;
    u.exit_with(rax)?;
    u.a.set_label(&mut not_quit)?;
    u.a.jmp(main)?;
    u.finish()
}

/// Guest-physical (and, identity-mapped, virtual) address of the [`dirtier_workload`]'s
/// working set: 16 MiB into RAM, above the kernel, the workload and its DMA area.
pub const DIRTY_BASE: u64 = 0x100_0000;

/// A workload that keeps writing a working set, for live-clone measurements: pass after
/// pass, it stores a counter into the first qword of every 4 KiB page of
/// `[DIRTY_BASE, DIRTY_BASE + ws_bytes)` and then reads the RNG (a logged input: one
/// deterministic exit per pass). It never ends. The machine needs RAM up to
/// `DIRTY_BASE + ws_bytes`, below the workload's stack at the top of RAM.
///
/// # Errors
///
/// [`GuestError`] when the code does not assemble.
pub fn dirtier_workload(ws_bytes: u64) -> Result<Vec<u8>> {
    let mut u = UserAsm::new()?;
    u.a.mov(r15, 1u64)?;
    let mut top = u.a.create_label();
    u.a.set_label(&mut top)?;
    let pages = ws_bytes / 4096;
    if pages > 0 {
        u.a.mov(rdi, DIRTY_BASE)?;
        u.a.mov(rcx, pages)?;
        let mut page = u.a.create_label();
        u.a.set_label(&mut page)?;
        u.a.mov(qword_ptr(rdi), r15)?;
        u.a.add(rdi, 4096)?;
        u.a.dec(rcx)?;
        u.a.jnz(page)?;
    }
    u.a.inc(r15)?;
    u.read_rng(rax)?;
    u.a.jmp(top)?;
    u.finish()
}

/// A small deterministic generator (SplitMix64) for workload generation.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What a random workload may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadParams {
    /// Blocks of work.
    pub blocks: usize,
    /// Most loop iterations of a compute block.
    pub max_iters: u32,
    /// Include clock and RNG reads (logged inputs).
    pub inputs: bool,
    /// Include timer sleeps (idle until an interrupt).
    pub sleeps: bool,
    /// Include block-device writes and DMA reads.
    pub block_io: bool,
    /// Include `rdtsc` folded into the state: replay must then diverge.
    pub rdtsc: bool,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            blocks: 24,
            max_iters: 20_000,
            inputs: true,
            sleeps: true,
            block_io: true,
            rdtsc: false,
        }
    }
}

const WORK: [AsmRegister64; 6] = [r8, r9, r10, r11, r12, r13];

fn compute_op(a: &mut CodeAssembler, g: &mut SplitMix) -> Result<()> {
    let d = WORK[g.below(6) as usize];
    let s = WORK[g.below(6) as usize];
    let imm = (g.next_u64() & 0x7fff) as i32;
    match g.below(10) {
        0 => a.add(d, s)?,
        1 => a.xor(d, s)?,
        2 => a.sub(d, s)?,
        3 => a.imul_2(d, s)?,
        4 => a.rol(d, (imm & 63) as u32)?,
        5 => a.lea(d, qword_ptr(d + s * 2 + imm))?,
        6 => {
            a.mov(rax, s)?;
            a.and(eax, 0xfff8)?;
            a.mov(d, qword_ptr(rax + USER_DATA as i32))?;
        }
        7 => {
            a.mov(rax, s)?;
            a.and(eax, 0xfff8)?;
            a.mov(qword_ptr(rax + USER_DATA as i32), d)?;
        }
        8 => a.add(d, imm)?,
        _ => a.shr(d, (imm & 7) as u32 + 1)?,
    }
    Ok(())
}

/// A random CPL3 workload from `seed`: compute loops (ALU, multiply, rotate, loads and
/// stores to [`USER_DATA`]), console lines with a running hash in `r15`, tick reads,
/// system calls, and, as `params` allow, clock/RNG inputs, timer sleeps, block I/O with a
/// DMA poll, and `rdtsc`. Ends by printing the hash and exiting with code 0.
pub fn random_workload(seed: u64, params: &WorkloadParams) -> Result<Vec<u8>> {
    let mut g = SplitMix::new(seed);
    let mut u = UserAsm::new()?;
    for (i, r) in WORK.iter().enumerate() {
        u.a.mov(*r, g.next_u64() ^ i as u64)?;
    }
    u.a.mov(r15, seed)?;
    u.print(b"workload start\n")?;
    let mut sector = 0u32;
    for _ in 0..params.blocks {
        match g.below(12) {
            0..=4 => {
                let iters = 1 + g.below(u64::from(params.max_iters.max(1))) as u32;
                u.a.mov(r14d, iters)?;
                let mut l = u.a.create_label();
                u.a.set_label(&mut l)?;
                for _ in 0..(2 + g.below(10)) {
                    compute_op(&mut u.a, &mut g)?;
                }
                u.a.dec(r14)?;
                u.a.jnz(l)?;
                for r in WORK {
                    u.a.imul_3(r15, r15, 0x1f3)?;
                    u.a.xor(r15, r)?;
                }
            }
            5 => u.print_hex(r15)?,
            6 if params.inputs => {
                u.read_clock(rax)?;
                u.a.xor(r15, rax)?;
                u.read_rng(rax)?;
                u.a.add(r15, rax)?;
            }
            7 => {
                u.read_ticks(rax)?;
                u.a.imul_3(r15, r15, 3)?;
                u.a.add(r15, rax)?;
                u.sys_ticks()?;
                u.a.xor(r15, rax)?;
            }
            8 if params.sleeps => {
                u.sleep(50_000 + g.below(200_000) as u32)?;
                u.read_ticks(rax)?;
                u.a.add(r15, rax)?;
            }
            9 if params.block_io => {
                // Write a sector of the data area, read it back by DMA into a buffer
                // holding a sentinel, and count the polls until the data landed.
                let buf = DMA_BASE + 0x1000 * u64::from(sector % 64);
                u.a.mov(qword_ptr(USER_DATA + 0x8000), r15)?;
                u.block_write(sector, USER_DATA + 0x8000)?;
                u.a.mov(rax, 0x5e5e_5e5e_5e5e_5e5eu64)?;
                u.a.mov(rcx, buf)?;
                u.a.mov(qword_ptr(rcx), rax)?;
                u.a.mov(rbx, qword_ptr(kdata::BLK_IRQS))?;
                u.a.mov(qword_ptr(map::BLOCK + reg::BLK_SECTOR), sector as i32)?;
                u.a.mov(qword_ptr(map::BLOCK + reg::BLK_DMA), rcx)?;
                u.a.mov(qword_ptr(map::BLOCK + reg::BLK_COUNT), 1)?;
                u.a.mov(qword_ptr(map::BLOCK + reg::BLK_CMD), BLK_CMD_READ as i32)?;
                u.a.xor(esi, esi)?;
                let mut poll = u.a.create_label();
                u.a.set_label(&mut poll)?;
                u.a.inc(rsi)?;
                u.a.mov(rdx, qword_ptr(map::PIC))?; // a deterministic exit per poll
                u.a.cmp(qword_ptr(rcx), rax)?;
                u.a.je(poll)?;
                let mut irq = u.a.create_label();
                u.a.set_label(&mut irq)?;
                u.a.mov(rdx, qword_ptr(map::PIC))?;
                u.a.cmp(qword_ptr(kdata::BLK_IRQS), rbx)?;
                u.a.je(irq)?;
                u.a.add(r15, qword_ptr(rcx))?;
                u.a.imul_3(r15, r15, 7)?;
                u.a.add(r15, rsi)?;
                sector += 1;
            }
            10 if params.rdtsc => {
                u.a.rdtsc()?;
                u.a.xor(r15, rax)?;
                u.a.mov(qword_ptr(USER_DATA), r15)?;
            }
            _ => {
                u.poll_exit(rax)?;
                u.a.add(r15, rax)?;
            }
        }
    }
    u.print(b"hash ")?;
    u.print_hex(r15)?;
    u.a.xor(eax, eax)?;
    u.exit_with(rax)?;
    u.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_has_an_idt_with_the_syscall_gate_at_dpl3() {
        let k = kernel(0x7ff000).unwrap_or_default();
        let idt = (IDT_ADDR - KERNEL_BASE) as usize;
        assert_eq!(k.len(), idt + 4096);
        let gate = &k[idt + 16 * 0x80..idt + 16 * 0x81];
        assert_eq!(gate[5], 0xee);
        let timer = &k[idt + 16 * 0x20..idt + 16 * 0x21];
        assert_eq!(timer[5], 0x8e);
        assert_eq!(u16::from_le_bytes([timer[2], timer[3]]), sel::KERNEL_CS);
    }

    #[test]
    fn random_workloads_are_reproducible() {
        let p = WorkloadParams::default();
        let a = random_workload(7, &p).unwrap_or_default();
        let b = random_workload(7, &p).unwrap_or_default();
        let c = random_workload(8, &p).unwrap_or_default();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
