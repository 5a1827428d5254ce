//! Random guest programs for property tests, built with the [`crate::asm`] assembler.
//!
//! Everything is derived from one `u64` seed: [`generate`] with the same seed and
//! [`Params`] gives the same image, byte for byte. Two families:
//!
//! * [`Family::Stream`]: random RV64IMA instruction streams: ALU and M-extension ops,
//!   loads and stores to a scratch region at random offsets (some misaligned, which RAM
//!   completes), AMOs and `lr`/`sc` pairs there (an interrupt between the two makes
//!   the `sc` fail; a misaligned one traps), loads from a constant data table, CSR
//!   operations on `mscratch`, `mepc`, `minstret` and `mcycle` (and unknown CSRs,
//!   which trap), forward branches, bounded loops (two levels at most), `ecall`,
//!   `ebreak`, illegal instructions, access faults, timer arms and waits, console
//!   prints, and sections that `mret` into U-mode or S-mode and come back with
//!   `ecall`. Half the programs build Sv39 page tables in their prologue (identity
//!   maps of RAM and the devices, each region by a gigapage, a megapage or 4 KiB
//!   pages, with A and D preset or left for the walk to set), and most of their
//!   sections then run translated.
//!   Optionally clock reads (by load or `rdtime`) and RNG reads.
//! * [`Family::Devices`]: structured programs that use every device: clock and RNG
//!   reads, console lines, packets sent and received, timer waits, block reads whose
//!   DMA buffer is polled *while the read is in flight* (the DMA race: the program
//!   mixes what it sees into its running hash, so it must see the old contents until
//!   the logged completion point and the new ones after, identically on both sides),
//!   block writes and invalid block commands.
//!
//! Every program installs the same trap handler. It skips every exception (`mepc +=
//! 4`), turns an `ecall` from U-mode into a return to M-mode, acknowledges timer
//! interrupts (`TIMER_ACK`) and external ones (network `NET_ACK`, block `BLK_ACK`,
//! recording the block status for the program), and — in the stream family — pops
//! every received packet into a receive buffer the program then reads. Interrupts are
//! enabled (`mie` = MTIE | MEIE, `mstatus.MIE`), so asynchronous events land at
//! arbitrary instructions.
//!
//! Every program ends by mixing its registers, scratch memory, DMA and receive buffers,
//! data table and handler counters into a 64-bit hash, printing it (`H=<hex>`) and
//! writing it to the exit device. Control flow is forward branches and counted loops
//! only, and every wait is ended by an interrupt, so a program retires at most
//! [`Program::instruction_bound`]`(n)` instructions when `n` asynchronous events reach
//! it.
//!
//! ```
//! use ft_sim::progen::{generate, Params};
//! let a = generate(7, &Params::stream()).unwrap();
//! let b = generate(7, &Params::stream()).unwrap();
//! assert_eq!(a.image, b.image);
//! assert_ne!(a.image, generate(8, &Params::stream()).unwrap().image);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::asm::{AsmError, Assembler, Label, Reg, GP, SP, ZERO};
use crate::cpu::csr;
use crate::devices::{map, reg, BLK_CMD_READ, BLK_CMD_WRITE, NET_RX_QUEUE, SECTOR_SIZE};
use crate::machine::{Machine, MachineConfig, MachineError};

/// Guest memory layout of generated programs (all in RAM, which must be at least
/// 1 MiB: [`MachineConfig::default`] is).
pub mod layout {
    use crate::memory::RAM_BASE;

    /// Code (and the data table after it) starts here and stays below [`VARS`].
    pub const CODE: u64 = RAM_BASE;
    /// Handler and program variables (one `u64` each, below).
    pub const VARS: u64 = RAM_BASE + 0xC_0000;
    /// Timer interrupts handled.
    pub const VAR_TIMER: u64 = VARS;
    /// External interrupts handled.
    pub const VAR_EXT: u64 = VARS + 8;
    /// Block status seen by the handler, `| 0x100` (0: no completion since the program
    /// last cleared it).
    pub const VAR_BLK: u64 = VARS + 16;
    /// Exceptions skipped (other than `ecall` from U-mode).
    pub const VAR_EXC: u64 = VARS + 24;
    /// Returns from U-mode.
    pub const VAR_USER_RET: u64 = VARS + 32;
    /// Packets the handler popped.
    pub const VAR_NET_POPS: u64 = VARS + 40;
    /// Number of variables.
    pub const VAR_COUNT: u64 = 6;
    /// Scratch region of random loads and stores.
    pub const SCRATCH: u64 = RAM_BASE + 0xC_1000;
    /// Its size in bytes.
    pub const SCRATCH_LEN: u64 = 0x1000;
    /// Block DMA buffer.
    pub const DMA_BUF: u64 = RAM_BASE + 0xC_4000;
    /// Most sectors one block command of a generated program moves.
    pub const DMA_MAX_SECTORS: u64 = 4;
    /// Network receive buffer.
    pub const RX_BUF: u64 = RAM_BASE + 0xC_6000;
    /// Bytes of the receive buffer covered by the final hash.
    pub const RX_HASHED: u64 = 256;
    /// Network transmit buffer.
    pub const TX_BUF: u64 = RAM_BASE + 0xC_7000;
    /// Sv39 page tables (two sets: U pages for U-mode sections, S pages for S-mode
    /// ones), [`TABLE_SET`] bytes each.
    pub const TABLES: u64 = RAM_BASE + 0xD_0000;
    /// Size of one set of page tables.
    pub const TABLE_SET: u64 = 0x8000;
    /// Initial stack pointer of the trap handler (the only stack user).
    pub const STACK_TOP: u64 = RAM_BASE + 0xF_F000;
}

/// Which kind of program to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Random instruction streams with traps, loops and U-mode sections.
    Stream,
    /// Structured programs that use every device.
    Devices,
}

/// Knobs of the generator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// The family.
    pub family: Family,
    /// Number of items (instructions or device operations, counting the items inside
    /// loops and branches) to generate; clamped to `1..=`[`MAX_ITEMS`].
    pub items: usize,
    /// Most iterations of a generated loop (at least 1).
    pub max_loop_iters: u32,
    /// Block commands use sectors below this (a few go past it on purpose, to get
    /// error completions). Use the disk's size in sectors, or less to make reads and
    /// writes hit the same sectors often.
    pub disk_sectors: u64,
    /// Most polls of the DMA buffer while a block read is in flight (at least 1).
    pub max_polls: u32,
    /// Stream family: also read the wall clock and the RNG.
    pub device_reads: bool,
}

impl Params {
    /// Defaults for [`Family::Stream`].
    pub fn stream() -> Params {
        Params {
            family: Family::Stream,
            items: 160,
            max_loop_iters: 8,
            disk_sectors: 128,
            max_polls: 400,
            device_reads: true,
        }
    }

    /// Defaults for [`Family::Devices`].
    pub fn devices() -> Params {
        Params {
            family: Family::Devices,
            items: 40,
            ..Params::stream()
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params::stream()
    }
}

/// Largest number of items one program has (it keeps the code below
/// [`layout::VARS`]).
pub const MAX_ITEMS: usize = 400;

/// What a generated program does, counted statically (each item once, whatever its
/// loop count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// RNG reads.
    pub rng_reads: u32,
    /// Wall-clock reads.
    pub clock_reads: u32,
    /// Console lines printed (the final hash line included).
    pub console_lines: u32,
    /// Packets sent.
    pub net_sends: u32,
    /// Receive polls (each pops at most one packet).
    pub net_recvs: u32,
    /// Block reads (those past the end of the disk included).
    pub block_reads: u32,
    /// Block reads past the end of the disk (completed with an error, no data).
    pub block_reads_past_end: u32,
    /// Block reads whose DMA buffer is polled while in flight.
    pub dma_races: u32,
    /// Block writes (those past the end of the disk included).
    pub block_writes: u32,
    /// Block writes past the end of the disk (completed with an error, nothing
    /// written).
    pub block_writes_past_end: u32,
    /// Invalid block commands (completed at once with an error).
    pub bad_block_cmds: u32,
    /// Timer arms.
    pub timer_arms: u32,
    /// Waits for an interrupt.
    pub waits: u32,
    /// U-mode and S-mode sections.
    pub user_sections: u32,
    /// Those in S-mode.
    pub supervisor_sections: u32,
    /// Sections that run with Sv39 translation on.
    pub paged_sections: u32,
    /// Instructions that trap on purpose (faulting accesses, `ecall`,
    /// `ebreak`, illegal instructions and CSR accesses).
    pub trapping: u32,
    /// Loops.
    pub loops: u32,
    /// AMOs and `lr`/`sc` pairs.
    pub atomics: u32,
}

/// A generated program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The seed it was generated from.
    pub seed: u64,
    /// Its family.
    pub family: Family,
    /// Raw code for the start of RAM ([`Machine::from_raw`]).
    pub image: Vec<u8>,
    /// Address of the constant data table (read, never written, by the program, and
    /// covered by its final hash).
    pub data_addr: u64,
    /// Size of the data table in bytes.
    pub data_len: u64,
    /// Address of the epilogue (the final hash, its printing and the exit). The
    /// prologue and body lie below it, the trap handler above it; the body never
    /// jumps to or beyond it, so a program counter below it means the final hash (of
    /// the data table too) has not started.
    pub epilogue: u64,
    /// Instructions the program retires if no asynchronous event reaches it (an upper
    /// bound).
    pub static_bound: u64,
    /// Most instructions one asynchronous event adds (a handler run, a packet pop and
    /// a wait-loop iteration).
    pub per_event_bound: u64,
    /// What it does.
    pub features: Features,
}

impl Program {
    /// Upper bound on the instructions the program retires (up to its exit) when
    /// `async_events` asynchronous events reach it.
    pub fn instruction_bound(&self, async_events: u64) -> u64 {
        self.static_bound
            .saturating_add(async_events.saturating_mul(self.per_event_bound))
    }

    /// A machine with this program loaded.
    pub fn machine(&self, cfg: MachineConfig) -> Result<Machine, MachineError> {
        Machine::from_raw(cfg, &self.image)
    }
}

/// Registers the random code reads and writes. The others are reserved: `sp` (trap
/// stack), `gp` (scratch base), `tp` and `s11` (loop counters), `s9` (poll counter and
/// print counter), `s10` (the running hash), `t5` and `t6` (temporaries of generated
/// device code).
const POOL: [u8; 23] = [
    1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 28, 29,
];
const LOOP_REGS: [Reg; 2] = [r(4), r(27)];
const AUX: Reg = r(25);
const HASH: Reg = r(26);
const T5: Reg = r(30);
const T6: Reg = r(31);
const X5: Reg = r(5);
const X6: Reg = r(6);
const X7: Reg = r(7);

const fn r(n: u8) -> Reg {
    match Reg::new(n) {
        Some(x) => x,
        None => ZERO,
    }
}

const DATA_DWORDS: u64 = 32;
const MSTATUS_MIE: i64 = 8;
const MSTATUS_MPIE: i64 = 0x80;
const MSTATUS_MPP: i64 = 0x1800;
const MIE_BITS: i64 = (1 << 7) | (1 << 11);
/// Unknown CSR: any access traps.
const BAD_CSR: u16 = 0x7C0;
/// `sfence.vma zero, zero`.
const SFENCE_VMA: u32 = 0x1200_0073;
/// A multiplier for the hash.
const PRIME: i64 = 0x100_0000_01b3;

/// Generate a program from `seed`.
///
/// Returns an error only if the assembler rejects something, which would be a bug of
/// the generator.
pub fn generate(seed: u64, params: &Params) -> Result<Program, AsmError> {
    let mut a = Assembler::with_base(layout::CODE);
    let data = a.label();
    let trap = a.label();
    let mut g = Gen {
        a,
        rng: ChaCha8Rng::seed_from_u64(seed),
        p: params.clone(),
        budget: params.items.clamp(1, MAX_ITEMS),
        mult: 1,
        bound: 0,
        traps: 0,
        sync_irqs: 0,
        user: false,
        paging: None,
        depth: 0,
        data,
        trap,
        features: Features::default(),
        lines: 0,
        wait_iter: 0,
    };
    g.p.max_loop_iters = g.p.max_loop_iters.max(1);
    g.p.max_polls = g.p.max_polls.max(1);
    g.p.disk_sectors = g.p.disk_sectors.max(layout::DMA_MAX_SECTORS);
    g.prologue();
    match params.family {
        Family::Stream => {
            while g.budget > 0 {
                g.stream_item(true);
            }
        }
        Family::Devices => {
            while g.budget > 0 {
                g.device_item();
            }
        }
    }
    let epilogue = g.a.here();
    g.epilogue();
    let handler_start = g.a.len();
    let pop_len = g.handler(params.family == Family::Stream);
    let handler_len = (g.a.len() - handler_start) as u64;
    g.a.align(8);
    g.a.bind(data);
    for _ in 0..DATA_DWORDS {
        let v: u64 = g.rng.gen();
        g.a.dword(v);
    }
    let image = g.a.finish()?;
    let data_addr = g.a.label_address(data).unwrap_or(layout::CODE);
    let epilogue = g.a.label_address(epilogue).unwrap_or(layout::CODE);
    if data_addr + DATA_DWORDS * 8 > layout::VARS {
        return Err(AsmError::ImmediateOutOfRange {
            what: "generated program size",
            value: image.len() as i64,
            min: 0,
            max: (layout::VARS - layout::CODE) as i64,
        });
    }
    // A handler run pops at most the whole receive queue; the wait-loop iteration it
    // ends takes a few more.
    let per_event_bound = handler_len + pop_len * (NET_RX_QUEUE as u64 + 1) + g.wait_iter;
    let static_bound = g
        .bound
        .saturating_add(g.traps.saturating_mul(handler_len))
        .saturating_add(g.sync_irqs.saturating_mul(per_event_bound));
    Ok(Program {
        seed,
        family: params.family,
        image,
        data_addr,
        data_len: DATA_DWORDS * 8,
        epilogue,
        static_bound,
        per_event_bound,
        features: g.features,
    })
}

/// `HASH ^= HASH >> 29` (clobbers `T5`): after a multiplication, which only carries
/// differences upwards, fold the high bits back down. Without it a difference in bit 63
/// stays exactly bit 63 through every later step, so two of them cancel: a value the
/// body loaded into a register and the same data-table dword hashed again at the end
/// (seed 0x3abc25cee9736836 of `prop_divergence` tampered with such a bit, and the
/// final hash did not change).
fn mix_down(a: &mut Assembler) {
    a.srli(T5, HASH, 29);
    a.xor(HASH, HASH, T5);
}

struct Gen {
    a: Assembler,
    rng: ChaCha8Rng,
    p: Params,
    budget: usize,
    /// How many times the code being emitted runs (product of enclosing loop counts).
    mult: u64,
    /// Instructions retired, counting loops, if nothing traps.
    bound: u64,
    /// Trapping instruction executions (each runs the handler once).
    traps: u64,
    /// Synchronous interrupts (invalid block commands), each like an async event.
    sync_irqs: u64,
    user: bool,
    /// `satp` values of the program's page tables (U set, S set), if it has them.
    paging: Option<(u64, u64)>,
    depth: usize,
    data: Label,
    trap: Label,
    features: Features,
    lines: u64,
    /// Longest wait loop iteration emitted.
    wait_iter: u64,
}

fn addr(a: u64) -> i64 {
    a as i64
}

impl Gen {
    /// Emit with `f`, counting what it emitted `self.mult` times.
    fn counted(&mut self, f: impl FnOnce(&mut Gen)) {
        let before = self.a.len();
        let mult = self.mult;
        f(self);
        let n = (self.a.len() - before) as u64;
        self.bound = self.bound.saturating_add(n.saturating_mul(mult));
    }

    fn trapping(&mut self) {
        self.traps = self.traps.saturating_add(self.mult);
        self.features.trapping += 1;
    }

    fn pool(&mut self) -> Reg {
        let i = self.rng.gen_range(0..POOL.len());
        r(POOL[i])
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.gen_range(0..100) < percent
    }

    // ------------------------------------------------------------------ prologue

    fn prologue(&mut self) {
        let trap = self.trap;
        self.counted(|g| {
            let a = &mut g.a;
            a.li(SP, addr(layout::STACK_TOP));
            a.la(T5, trap);
            a.csrw(csr::MTVEC, T5);
            a.li(T5, MIE_BITS);
            a.csrw(csr::MIE, T5);
            a.li(T6, addr(map::NET));
            a.li(T5, addr(layout::RX_BUF));
            a.sd(T5, T6, reg::NET_RX_ADDR as i64);
            a.li(GP, addr(layout::SCRATCH + 2048));
        });
        // Fill the scratch region with a seeded pattern (one loop of SCRATCH_LEN / 8).
        let pattern: i64 = self.rng.gen();
        let n = (layout::SCRATCH_LEN / 8) as i64;
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(layout::SCRATCH));
            a.li(AUX, n);
            a.li(T5, pattern);
            a.li(X5, PRIME);
        });
        self.mult = n as u64;
        self.counted(|g| {
            let a = &mut g.a;
            let top = a.here();
            a.sd(T5, T6, 0);
            a.mul(T5, T5, X5);
            a.addi(T5, T5, 1);
            a.addi(T6, T6, 8);
            a.addi(AUX, AUX, -1);
            a.bnez(AUX, top);
        });
        self.mult = 1;
        if self.p.family == Family::Stream && self.chance(50) {
            let user = self.page_tables(0, true);
            let supervisor = self.page_tables(1, false);
            self.paging = Some((user, supervisor));
        }
        let values: Vec<(u8, i64)> = POOL.iter().map(|&x| (x, self.rng.gen())).collect();
        let hash: i64 = self.rng.gen();
        self.counted(|g| {
            for (x, v) in values {
                g.a.li(r(x), v);
            }
            g.a.li(HASH, hash);
            g.a.li(AUX, 0);
            g.a.csrsi(csr::MSTATUS, MSTATUS_MIE);
        });
    }

    // ------------------------------------------------------------------ stream items

    /// One item of the stream family (it may hold nested items).
    fn stream_item(&mut self, top: bool) {
        self.budget = self.budget.saturating_sub(1);
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=29 => self.alu(),
            30..=41 => self.load(),
            42..=51 => self.store(),
            52..=56 => self.csr_op(),
            57..=63 => self.forward_branch(),
            64..=69 if self.depth < LOOP_REGS.len() => self.stream_loop(),
            70..=72 => self.exception_item(),
            73..=74 if top && !self.user => self.user_section(),
            75..=76 => self.print_reg(),
            77 => self.arm_timer(),
            78 if !self.user => self.wait_timer(),
            79..=81 if self.p.device_reads => self.read_device(),
            82..=84 => self.load_rx(),
            85..=88 => self.atomic(),
            _ => self.alu(),
        }
    }

    /// An item without control flow (inside forward branches).
    fn simple_item(&mut self) {
        self.budget = self.budget.saturating_sub(1);
        match self.rng.gen_range(0..10) {
            0..=4 => self.alu(),
            5..=6 => self.load(),
            7..=8 => self.store(),
            _ => self.csr_op(),
        }
    }

    fn alu(&mut self) {
        let rd = self.pool();
        let rs1 = self.pool();
        let rs2 = self.pool();
        let kind = self.rng.gen_range(0..3);
        let op = self.rng.gen_range(0..28);
        let imm: i64 = self.rng.gen_range(-2048..2048);
        let sh64: i64 = self.rng.gen_range(0..64);
        let sh32: i64 = self.rng.gen_range(0..32);
        let imm20: i64 = self.rng.gen_range(0..(1 << 20));
        self.counted(|g| {
            let a = &mut g.a;
            match kind {
                0 => {
                    let _ = match op {
                        0 => a.add(rd, rs1, rs2),
                        1 => a.sub(rd, rs1, rs2),
                        2 => a.sll(rd, rs1, rs2),
                        3 => a.slt(rd, rs1, rs2),
                        4 => a.sltu(rd, rs1, rs2),
                        5 => a.xor(rd, rs1, rs2),
                        6 => a.srl(rd, rs1, rs2),
                        7 => a.sra(rd, rs1, rs2),
                        8 => a.or(rd, rs1, rs2),
                        9 => a.and(rd, rs1, rs2),
                        10 => a.mul(rd, rs1, rs2),
                        11 => a.mulh(rd, rs1, rs2),
                        12 => a.mulhsu(rd, rs1, rs2),
                        13 => a.mulhu(rd, rs1, rs2),
                        14 => a.div(rd, rs1, rs2),
                        15 => a.divu(rd, rs1, rs2),
                        16 => a.rem(rd, rs1, rs2),
                        17 => a.remu(rd, rs1, rs2),
                        18 => a.addw(rd, rs1, rs2),
                        19 => a.subw(rd, rs1, rs2),
                        20 => a.sllw(rd, rs1, rs2),
                        21 => a.srlw(rd, rs1, rs2),
                        22 => a.sraw(rd, rs1, rs2),
                        23 => a.mulw(rd, rs1, rs2),
                        24 => a.divw(rd, rs1, rs2),
                        25 => a.divuw(rd, rs1, rs2),
                        26 => a.remw(rd, rs1, rs2),
                        _ => a.remuw(rd, rs1, rs2),
                    };
                }
                1 => {
                    let _ = match op % 13 {
                        0 => a.addi(rd, rs1, imm),
                        1 => a.slti(rd, rs1, imm),
                        2 => a.sltiu(rd, rs1, imm),
                        3 => a.xori(rd, rs1, imm),
                        4 => a.ori(rd, rs1, imm),
                        5 => a.andi(rd, rs1, imm),
                        6 => a.addiw(rd, rs1, imm),
                        7 => a.slli(rd, rs1, sh64),
                        8 => a.srli(rd, rs1, sh64),
                        9 => a.srai(rd, rs1, sh64),
                        10 => a.slliw(rd, rs1, sh32),
                        11 => a.srliw(rd, rs1, sh32),
                        _ => a.sraiw(rd, rs1, sh32),
                    };
                }
                _ => {
                    if op % 2 == 0 {
                        a.lui(rd, imm20);
                    } else {
                        a.auipc(rd, imm20);
                    }
                }
            }
        });
    }

    /// A random offset from `gp` for an access of `size` bytes: aligned most of the
    /// time, anywhere in the scratch region otherwise.
    fn scratch_offset(&mut self, size: i64) -> (i64, bool) {
        if self.chance(85) {
            let slots = 4096 / size;
            (self.rng.gen_range(0..slots) * size - 2048, false)
        } else {
            let off = self.rng.gen_range(-2048..(2048 - size));
            (off, off % size != 0)
        }
    }

    fn load(&mut self) {
        let rd = self.pool();
        let which = self.rng.gen_range(0..7);
        let size = [1, 2, 4, 8, 1, 2, 4][which];
        if self.chance(20) {
            // From the constant data table.
            let off = self.rng.gen_range(0..DATA_DWORDS as i64) * 8;
            let data = self.data;
            self.counted(|g| {
                g.a.la(T6, data);
                g.a.ld(rd, T6, off);
            });
            return;
        }
        // Misaligned offsets are kept: RAM completes them (they no longer trap).
        let (off, _misaligned) = self.scratch_offset(size);
        self.counted(|g| {
            let a = &mut g.a;
            let _ = match which {
                0 => a.lb(rd, GP, off),
                1 => a.lh(rd, GP, off),
                2 => a.lw(rd, GP, off),
                3 => a.ld(rd, GP, off),
                4 => a.lbu(rd, GP, off),
                5 => a.lhu(rd, GP, off),
                _ => a.lwu(rd, GP, off),
            };
        });
    }

    fn store(&mut self) {
        let rs = self.pool();
        let which = self.rng.gen_range(0..4);
        let size = [1, 2, 4, 8][which];
        // Misaligned offsets are kept: RAM completes them (they no longer trap).
        let (off, _misaligned) = self.scratch_offset(size);
        self.counted(|g| {
            let a = &mut g.a;
            let _ = match which {
                0 => a.sb(rs, GP, off),
                1 => a.sh(rs, GP, off),
                2 => a.sw(rs, GP, off),
                _ => a.sd(rs, GP, off),
            };
        });
    }

    fn csr_op(&mut self) {
        let rd = self.pool();
        let rs = self.pool();
        let pick = self.rng.gen_range(0..10);
        let which = match pick {
            0..=3 => csr::MSCRATCH,
            4..=6 => csr::MEPC,
            7 => csr::MINSTRET,
            8 => csr::MCYCLE,
            _ => BAD_CSR,
        };
        // The counters are only read (a write would make the final hash depend on
        // where the program writes them, which is fine, but reads of a moving counter
        // are the interesting part); any access to BAD_CSR and any machine CSR access
        // from U-mode traps.
        if self.user || which == BAD_CSR {
            self.trapping();
        }
        let op = self.rng.gen_range(0..6);
        let zimm = self.rng.gen_range(0..32);
        self.counted(|g| {
            let a = &mut g.a;
            let _ = match (op, which) {
                (_, csr::MINSTRET | csr::MCYCLE) => a.csrr(rd, which),
                (0, _) => a.csrrw(rd, which, rs),
                (1, _) => a.csrrs(rd, which, rs),
                (2, _) => a.csrrc(rd, which, rs),
                (3, _) => a.csrrwi(rd, which, zimm),
                (4, _) => a.csrrsi(rd, which, zimm),
                _ => a.csrrci(rd, which, zimm),
            };
        });
    }

    fn forward_branch(&mut self) {
        let rs1 = self.pool();
        let rs2 = self.pool();
        let cond = self.rng.gen_range(0..6);
        let skipped = self.rng.gen_range(1..=4);
        let skip = self.a.label();
        self.counted(|g| {
            let a = &mut g.a;
            let _ = match cond {
                0 => a.beq(rs1, rs2, skip),
                1 => a.bne(rs1, rs2, skip),
                2 => a.blt(rs1, rs2, skip),
                3 => a.bge(rs1, rs2, skip),
                4 => a.bltu(rs1, rs2, skip),
                _ => a.bgeu(rs1, rs2, skip),
            };
        });
        for _ in 0..skipped {
            self.simple_item();
        }
        self.a.bind(skip);
    }

    fn stream_loop(&mut self) {
        let counter = LOOP_REGS[self.depth];
        let iters = self.rng.gen_range(1..=self.p.max_loop_iters);
        let body = self.rng.gen_range(1..=8usize);
        self.features.loops += 1;
        self.counted(|g| {
            g.a.li(counter, i64::from(iters));
        });
        let outer = self.mult;
        self.mult = outer.saturating_mul(u64::from(iters));
        self.depth += 1;
        let top = self.a.here();
        for _ in 0..body {
            if self.budget == 0 {
                break;
            }
            self.stream_item(false);
        }
        self.counted(|g| {
            g.a.addi(counter, counter, -1);
            g.a.bnez(counter, top);
        });
        self.depth -= 1;
        self.mult = outer;
    }

    fn exception_item(&mut self) {
        let rd = self.pool();
        let kind = self.rng.gen_range(0..6);
        self.trapping();
        self.counted(|g| {
            let a = &mut g.a;
            match kind {
                // ecall from U-mode means "back to M-mode": not in the middle of a
                // U-mode section.
                0 if !g.user => {
                    a.ecall();
                }
                0 | 1 => {
                    a.ebreak();
                }
                2 => {
                    a.emit(0);
                }
                3 => {
                    a.emit(0xFFFF_FFFF);
                }
                4 => {
                    // Load access fault: nothing is mapped at address 8.
                    a.ld(rd, ZERO, 8);
                }
                _ => {
                    if g.user {
                        a.mret();
                    } else {
                        a.sd(rd, ZERO, 16);
                    }
                }
            }
        });
    }

    /// Emits code that builds set `set` of identity page tables (U pages if `user`)
    /// and returns the `satp` value that selects it. RAM's first MiB and the device
    /// windows are each mapped by a gigapage, a megapage or 4 KiB pages.
    fn page_tables(&mut self, set: u64, user: bool) -> u64 {
        let base = layout::TABLES + set * layout::TABLE_SET;
        let (root, l1_ram, l0_ram, l1_dev, l0_dev) = (
            base,
            base + 0x1000,
            base + 0x2000,
            base + 0x3000,
            base + 0x4000,
        );
        let pointer = |table: u64| ((table >> 12) << 10) | 1;
        let u = if user { 1 << 4 } else { 0 };
        // (virtual = physical base, its root and level-1 indexes, 4 KiB pages used,
        // its level-1 and level-0 tables)
        let regions = [
            (crate::memory::RAM_BASE, 2u64, 0u64, 256u64, l1_ram, l0_ram),
            (map::BASE, 0, 0x80, 8, l1_dev, l0_dev),
        ];
        for (pa, i2, i1, pages, l1, l0) in regions {
            // V R W X, U as asked, A and D sometimes preset.
            let ad = match self.rng.gen_range(0..3) {
                0 => 0,
                1 => 1 << 6,
                _ => (1 << 6) | (1 << 7),
            };
            let leaf = |pa: u64| ((pa >> 12) << 10) | 0xF | u | ad;
            let mut stores = Vec::new();
            match self.rng.gen_range(0..3) {
                // A gigapage: the root's entry is the leaf (`pa` rounded to 1 GiB).
                0 => stores.push((root + i2 * 8, leaf(pa & !((1 << 30) - 1)))),
                1 => {
                    stores.push((root + i2 * 8, pointer(l1)));
                    stores.push((l1 + i1 * 8, leaf(pa)));
                }
                _ => {
                    stores.push((root + i2 * 8, pointer(l1)));
                    stores.push((l1 + i1 * 8, pointer(l0)));
                    self.counted(|g| {
                        let a = &mut g.a;
                        a.li(T6, addr(l0));
                        a.li(T5, leaf(pa) as i64);
                        a.li(AUX, pages as i64);
                        a.li(X5, 1 << 10);
                    });
                    let outer = self.mult;
                    self.mult = outer.saturating_mul(pages);
                    self.counted(|g| {
                        let a = &mut g.a;
                        let top = a.here();
                        a.sd(T5, T6, 0);
                        a.add(T5, T5, X5);
                        a.addi(T6, T6, 8);
                        a.addi(AUX, AUX, -1);
                        a.bnez(AUX, top);
                    });
                    self.mult = outer;
                }
            }
            self.counted(|g| {
                for (at, v) in stores {
                    g.a.li(T6, addr(at));
                    g.a.li(T5, v as i64);
                    g.a.sd(T5, T6, 0);
                }
            });
        }
        (8 << 60) | (root >> 12)
    }

    fn user_section(&mut self) {
        self.features.user_sections += 1;
        let supervisor = self.chance(40);
        let paged = self.paging.is_some() && self.chance(80);
        let satp = match self.paging {
            Some((u, s)) if paged => {
                self.features.paged_sections += 1;
                if supervisor {
                    s
                } else {
                    u
                }
            }
            _ => 0,
        };
        if supervisor {
            self.features.supervisor_sections += 1;
        }
        let entry = self.a.label();
        self.counted(|g| {
            let a = &mut g.a;
            // Interrupts off while mepc and mstatus are set up, so none clobbers them.
            a.csrci(csr::MSTATUS, MSTATUS_MIE);
            a.la(T5, entry);
            a.csrw(csr::MEPC, T5);
            a.li(T5, MSTATUS_MPP);
            a.csrc(csr::MSTATUS, T5);
            if supervisor {
                a.li(T5, 1 << 11);
                a.csrs(csr::MSTATUS, T5);
            }
            a.li(T5, MSTATUS_MPIE);
            a.csrs(csr::MSTATUS, T5);
            a.li(T5, satp as i64);
            a.csrw(csr::SATP, T5);
            a.emit(SFENCE_VMA);
            a.mret();
            a.bind(entry);
        });
        self.user = true;
        let body = self.rng.gen_range(1..=12usize);
        for _ in 0..body {
            if self.budget == 0 {
                break;
            }
            self.stream_item(false);
        }
        self.user = false;
        // Back to M-mode: the handler sees an ecall from U or S.
        self.traps = self.traps.saturating_add(self.mult);
        self.counted(|g| {
            g.a.ecall();
        });
    }

    fn print_hex(&mut self, x: Reg) {
        self.counted(|g| {
            let a = &mut g.a;
            a.li(AUX, 60);
        });
        let outer = self.mult;
        self.mult = outer.saturating_mul(16);
        self.counted(|g| {
            let a = &mut g.a;
            let top = a.here();
            let digit = a.label();
            a.srl(T5, x, AUX);
            a.andi(T5, T5, 15);
            a.addi(T6, T5, -10);
            a.blt(T6, ZERO, digit);
            a.addi(T5, T5, 39);
            a.bind(digit);
            a.addi(T5, T5, 48);
            a.li(T6, addr(map::UART));
            a.sd(T5, T6, reg::UART_TX as i64);
            a.addi(AUX, AUX, -4);
            a.bge(AUX, ZERO, top);
        });
        self.mult = outer;
    }

    fn print_const(&mut self, s: &str) {
        self.counted(|g| {
            g.a.li(T6, addr(map::UART));
            for b in s.bytes() {
                g.a.li(T5, i64::from(b));
                g.a.sd(T5, T6, reg::UART_TX as i64);
            }
        });
    }

    fn line(&mut self, x: Reg) {
        self.lines += 1;
        self.features.console_lines += 1;
        let tag = format!("L{} ", self.lines);
        self.print_const(&tag);
        self.print_hex(x);
        self.print_const("\n");
    }

    fn print_reg(&mut self) {
        let x = self.pool();
        self.line(x);
    }

    fn arm_timer(&mut self) {
        let delay = self.rng.gen_range(1_000..300_000);
        self.features.timer_arms += 1;
        self.counted(|g| {
            g.a.li(T6, addr(map::TIMER));
            g.a.li(T5, delay);
            g.a.sd(T5, T6, reg::TIMER_ARM as i64);
        });
    }

    /// Wait (interrupts masked around the check, so no wake-up is lost) until the
    /// `u64` at `var` differs from `AUX`. Each extra iteration needs an interrupt.
    fn wait_var_differs(&mut self, var: u64) {
        self.features.waits += 1;
        let start = self.a.len();
        self.counted(|g| {
            let a = &mut g.a;
            let top = a.here();
            let done = a.label();
            a.csrci(csr::MSTATUS, MSTATUS_MIE);
            a.li(T6, addr(var));
            a.ld(T5, T6, 0);
            a.bne(T5, AUX, done);
            a.wfi();
            a.csrsi(csr::MSTATUS, MSTATUS_MIE);
            a.j(top);
            a.bind(done);
            a.csrsi(csr::MSTATUS, MSTATUS_MIE);
        });
        self.wait_iter = self.wait_iter.max((self.a.len() - start) as u64);
    }

    fn wait_timer(&mut self) {
        self.counted(|g| {
            g.a.li(T6, addr(layout::VAR_TIMER));
            g.a.ld(AUX, T6, 0);
        });
        self.arm_timer();
        self.wait_var_differs(layout::VAR_TIMER);
    }

    fn read_device(&mut self) {
        let rd = self.pool();
        let rng = self.chance(50);
        if rng {
            self.features.rng_reads += 1;
        } else {
            self.features.clock_reads += 1;
        }
        if !rng && self.chance(50) {
            // `rdtime`: the same logged clock read, through the CSR. U-mode may not
            // (mcounteren is 0): it traps, and is no clock read.
            if self.user {
                self.features.clock_reads -= 1;
                self.trapping();
            }
            self.counted(|g| {
                g.a.csrr(rd, csr::TIME);
            });
            return;
        }
        self.counted(|g| {
            g.a.li(T6, addr(if rng { map::RNG } else { map::CLOCK }));
            g.a.ld(rd, T6, 0);
        });
    }

    /// An AMO, or an `lr`/`sc` pair with a few items between (where an interrupt
    /// may land, failing the `sc`), on the scratch region; sometimes misaligned (it
    /// traps).
    fn atomic(&mut self) {
        self.features.atomics += 1;
        let rd = self.pool();
        let rs = self.pool();
        let word = self.chance(50);
        let size = if word { 4 } else { 8 };
        let (off, misaligned) = self.scratch_offset(size);
        let op = self.rng.gen_range(0..10usize);
        if op == 9 {
            if misaligned {
                self.trapping(); // the lr, misaligned
                self.trapping(); // and the sc, misaligned too
            }
            self.counted(|g| {
                g.a.addi(T6, GP, off);
                if word {
                    g.a.lr_w(rd, T6);
                } else {
                    g.a.lr_d(rd, T6);
                }
            });
            for _ in 0..self.rng.gen_range(0..4) {
                self.simple_item();
            }
            let status = self.pool();
            self.counted(|g| {
                g.a.addi(T6, GP, off);
                if word {
                    g.a.sc_w(status, rs, T6);
                } else {
                    g.a.sc_d(status, rs, T6);
                }
            });
            return;
        }
        if misaligned {
            self.trapping();
        }
        self.counted(|g| {
            let a = &mut g.a;
            a.addi(T6, GP, off);
            let _ = match (op, word) {
                (0, true) => a.amoswap_w(rd, rs, T6),
                (1, true) => a.amoadd_w(rd, rs, T6),
                (2, true) => a.amoxor_w(rd, rs, T6),
                (3, true) => a.amoand_w(rd, rs, T6),
                (4, true) => a.amoor_w(rd, rs, T6),
                (5, true) => a.amomin_w(rd, rs, T6),
                (6, true) => a.amomax_w(rd, rs, T6),
                (7, true) => a.amominu_w(rd, rs, T6),
                (_, true) => a.amomaxu_w(rd, rs, T6),
                (0, false) => a.amoswap_d(rd, rs, T6),
                (1, false) => a.amoadd_d(rd, rs, T6),
                (2, false) => a.amoxor_d(rd, rs, T6),
                (3, false) => a.amoand_d(rd, rs, T6),
                (4, false) => a.amoor_d(rd, rs, T6),
                (5, false) => a.amomin_d(rd, rs, T6),
                (6, false) => a.amomax_d(rd, rs, T6),
                (7, false) => a.amominu_d(rd, rs, T6),
                (_, false) => a.amomaxu_d(rd, rs, T6),
            };
        });
    }

    fn load_rx(&mut self) {
        let rd = self.pool();
        let off = self.rng.gen_range(0..(layout::RX_HASHED / 8) as i64) * 8;
        self.counted(|g| {
            g.a.li(T6, addr(layout::RX_BUF));
            g.a.ld(rd, T6, off);
        });
    }

    // ------------------------------------------------------------------ device items

    fn mix(&mut self, x: Reg) {
        self.counted(|g| {
            let a = &mut g.a;
            a.xor(HASH, HASH, x);
            a.slli(T5, HASH, 13);
            a.xor(HASH, HASH, T5);
            a.srli(T5, HASH, 7);
            a.xor(HASH, HASH, T5);
            a.slli(T5, HASH, 17);
            a.xor(HASH, HASH, T5);
        });
    }

    fn device_item(&mut self) {
        self.budget = self.budget.saturating_sub(1);
        match self.rng.gen_range(0..100) {
            0..=9 => {
                self.read_device_mixed(false);
            }
            10..=21 => {
                self.read_device_mixed(true);
            }
            22..=31 => {
                let x = HASH;
                self.line(x);
            }
            32..=41 => self.net_send(),
            42..=51 => self.net_recv(),
            52..=58 => self.wait_timer(),
            59..=73 => self.block_read(),
            74..=83 => self.block_write(),
            84..=86 => self.bad_block_cmd(),
            _ => {
                let n = self.rng.gen_range(1..=6);
                for _ in 0..n {
                    self.simple_item();
                }
                let x = self.pool();
                self.mix(x);
            }
        }
    }

    fn read_device_mixed(&mut self, rng: bool) {
        if rng {
            self.features.rng_reads += 1;
        } else {
            self.features.clock_reads += 1;
        }
        self.counted(|g| {
            g.a.li(T6, addr(if rng { map::RNG } else { map::CLOCK }));
            g.a.ld(T5, T6, 0);
            g.a.mv(AUX, T5);
        });
        self.mix(AUX);
    }

    fn net_send(&mut self) {
        self.features.net_sends += 1;
        let words = self.rng.gen_range(1..=6i64);
        let len = self.rng.gen_range(1..=words * 8);
        let regs: Vec<Reg> = (0..words).map(|_| self.pool()).collect();
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(layout::TX_BUF));
            a.sd(HASH, T6, 0);
            for (i, x) in regs.iter().enumerate().skip(1) {
                a.sd(*x, T6, i as i64 * 8);
            }
            a.li(T5, addr(map::NET));
            a.sd(T6, T5, reg::NET_TX_ADDR as i64);
            a.li(T6, len);
            a.sd(T6, T5, reg::NET_TX_LEN as i64);
            a.sd(ZERO, T5, reg::NET_TX_SEND as i64);
        });
    }

    fn net_recv(&mut self) {
        self.features.net_recvs += 1;
        let echo = self.chance(50);
        if echo {
            self.features.net_sends += 1;
        }
        let none = self.a.label();
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(map::NET));
            a.ld(T5, T6, reg::NET_RX_COUNT as i64);
            a.beqz(T5, none);
            a.ld(AUX, T6, reg::NET_RX_LEN as i64);
            a.li(T5, addr(layout::RX_BUF));
            a.sd(T5, T6, reg::NET_RX_ADDR as i64);
            a.sd(ZERO, T6, reg::NET_RX_POP as i64);
            if echo {
                a.sd(T5, T6, reg::NET_TX_ADDR as i64);
                a.sd(AUX, T6, reg::NET_TX_LEN as i64);
                a.sd(ZERO, T6, reg::NET_TX_SEND as i64);
            }
        });
        self.mix(AUX);
        self.counted(|g| {
            g.a.li(T6, addr(layout::RX_BUF));
            g.a.ld(AUX, T6, 0);
        });
        self.mix(AUX);
        self.a.bind(none);
    }

    /// Set up and issue a block command (sector, count, command); T6 = BLOCK after.
    fn block_cmd(&mut self, sector: u64, count: u64, cmd: u64) {
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(map::BLOCK));
            a.li(T5, sector as i64);
            a.sd(T5, T6, reg::BLK_SECTOR as i64);
            a.li(T5, addr(layout::DMA_BUF));
            a.sd(T5, T6, reg::BLK_DMA as i64);
            a.li(T5, count as i64);
            a.sd(T5, T6, reg::BLK_COUNT as i64);
            a.li(T5, cmd as i64);
            a.sd(T5, T6, reg::BLK_CMD as i64);
        });
    }

    /// Wait until the handler saw a block completion; mix its status into the hash
    /// and clear it.
    fn block_wait(&mut self) {
        self.counted(|g| {
            g.a.li(AUX, 0);
        });
        self.wait_var_differs(layout::VAR_BLK);
        self.counted(|g| {
            g.a.li(T6, addr(layout::VAR_BLK));
            g.a.ld(AUX, T6, 0);
            g.a.sd(ZERO, T6, 0);
        });
        self.mix(AUX);
    }

    fn pick_sectors(&mut self) -> (u64, u64) {
        let count = self.rng.gen_range(1..=layout::DMA_MAX_SECTORS);
        let sector = if self.chance(5) {
            // Past the end: the world completes it with an error.
            self.p.disk_sectors + self.rng.gen_range(0..8)
        } else {
            self.rng.gen_range(0..=self.p.disk_sectors - count)
        };
        (sector, count)
    }

    fn block_read(&mut self) {
        self.features.block_reads += 1;
        let (sector, count) = self.pick_sectors();
        if sector >= self.p.disk_sectors {
            self.features.block_reads_past_end += 1;
        }
        let bytes = count * SECTOR_SIZE;
        // Mark the buffer so old and new contents differ.
        let marks: Vec<i64> = vec![
            0,
            self.rng.gen_range(0..bytes as i64 / 8) * 8,
            bytes as i64 - 8,
        ];
        self.counted(|g| {
            g.a.li(T6, addr(layout::DMA_BUF));
            for &m in &marks {
                g.a.li(T5, m);
                g.a.add(T5, T5, T6);
                g.a.sd(HASH, T5, 0);
            }
        });
        self.block_cmd(sector, count, BLK_CMD_READ);
        let race = self.chance(80);
        if race {
            self.features.dma_races += 1;
            let polls = self.rng.gen_range(1..=self.p.max_polls);
            let sample = marks[self.rng.gen_range(0..marks.len())];
            let done = self.a.label();
            let wait = self.a.label();
            self.counted(|g| {
                g.a.li(AUX, i64::from(polls));
            });
            let outer = self.mult;
            self.mult = outer.saturating_mul(u64::from(polls));
            self.counted(|g| {
                let a = &mut g.a;
                let top = a.here();
                a.li(T6, addr(layout::DMA_BUF) + sample);
                a.ld(T5, T6, 0);
                a.xor(HASH, HASH, T5);
                a.slli(T5, HASH, 13);
                a.xor(HASH, HASH, T5);
                a.srli(T5, HASH, 7);
                a.xor(HASH, HASH, T5);
                a.li(T6, addr(layout::VAR_BLK));
                a.ld(T5, T6, 0);
                a.bnez(T5, done);
                a.addi(AUX, AUX, -1);
                a.bnez(AUX, top);
                a.j(wait);
            });
            self.mult = outer;
            self.a.bind(wait);
            // Not done after all those polls: wait for the interrupt.
            self.counted(|g| {
                g.a.li(AUX, 0);
            });
            self.wait_var_differs(layout::VAR_BLK);
            self.a.bind(done);
            // AUX (polls left) says when the completion landed.
            self.mix(AUX);
            self.counted(|g| {
                g.a.li(T6, addr(layout::VAR_BLK));
                g.a.ld(AUX, T6, 0);
                g.a.sd(ZERO, T6, 0);
            });
            self.mix(AUX);
        } else {
            self.block_wait();
        }
        for m in marks {
            self.counted(|g| {
                g.a.li(T6, addr(layout::DMA_BUF) + m);
                g.a.ld(AUX, T6, 0);
            });
            self.mix(AUX);
        }
    }

    fn block_write(&mut self) {
        self.features.block_writes += 1;
        let (sector, count) = self.pick_sectors();
        if sector >= self.p.disk_sectors {
            self.features.block_writes_past_end += 1;
        }
        let words = self.rng.gen_range(1..=8i64);
        let regs: Vec<Reg> = (0..words).map(|_| self.pool()).collect();
        let stride = (count * SECTOR_SIZE) as i64 / words / 8 * 8;
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(layout::DMA_BUF));
            a.sd(HASH, T6, 0);
            for (i, x) in regs.iter().enumerate() {
                a.li(T5, i as i64 * stride + 8);
                a.add(T5, T5, T6);
                a.sd(*x, T5, 0);
            }
        });
        self.block_cmd(sector, count, BLK_CMD_WRITE);
        self.block_wait();
    }

    fn bad_block_cmd(&mut self) {
        self.features.bad_block_cmds += 1;
        self.sync_irqs = self.sync_irqs.saturating_add(self.mult);
        let (cmd, count) = match self.rng.gen_range(0..3) {
            0 => (BLK_CMD_READ, 0),
            1 => (3, 1),
            _ => (BLK_CMD_WRITE, layout::DMA_MAX_SECTORS * 64),
        };
        self.block_cmd(0, count, cmd);
        self.block_wait();
    }

    // ------------------------------------------------------------------ epilogue

    fn epilogue(&mut self) {
        self.counted(|g| {
            g.a.li(T6, PRIME);
            for &x in POOL.iter() {
                g.a.xor(HASH, HASH, r(x));
                g.a.mul(HASH, HASH, T6);
                mix_down(&mut g.a);
            }
        });
        let data = self.data;
        self.hash_region(None, layout::SCRATCH, layout::SCRATCH_LEN / 8);
        self.hash_region(
            None,
            layout::DMA_BUF,
            layout::DMA_MAX_SECTORS * SECTOR_SIZE / 8,
        );
        self.hash_region(None, layout::RX_BUF, layout::RX_HASHED / 8);
        self.hash_region(None, layout::VARS, layout::VAR_COUNT);
        self.hash_region(Some(data), 0, DATA_DWORDS);
        self.features.console_lines += 1;
        self.print_const("H=");
        self.print_hex(HASH);
        self.print_const("\n");
        self.counted(|g| {
            let a = &mut g.a;
            a.li(T6, addr(map::EXIT));
            a.sd(HASH, T6, 0);
            let end = a.here();
            a.j(end);
        });
    }

    /// Mix `dwords` dwords at `start` (or at `label`) into the hash (each one:
    /// xor, multiply, [`mix_down`]).
    fn hash_region(&mut self, label: Option<Label>, start: u64, dwords: u64) {
        self.counted(|g| {
            match label {
                Some(l) => {
                    g.a.la(T6, l);
                }
                None => {
                    g.a.li(T6, addr(start));
                }
            }
            g.a.li(AUX, dwords as i64);
            g.a.li(X7, PRIME);
        });
        let outer = self.mult;
        self.mult = outer.saturating_mul(dwords);
        self.counted(|g| {
            let a = &mut g.a;
            let top = a.here();
            a.ld(T5, T6, 0);
            a.xor(HASH, HASH, T5);
            a.mul(HASH, HASH, X7);
            mix_down(a);
            a.addi(T6, T6, 8);
            a.addi(AUX, AUX, -1);
            a.bnez(AUX, top);
        });
        self.mult = outer;
    }

    // ------------------------------------------------------------------ handler

    /// Emit the trap handler; returns the length of one iteration of its packet-pop
    /// loop.
    fn handler(&mut self, pop_packets: bool) -> u64 {
        let trap = self.trap;
        let mut pop_len = 0;
        let a = &mut self.a;
        let out = a.label();
        let timer = a.label();
        let ext = a.label();
        let exception = a.label();
        let no_net = a.label();
        let skip = a.label();
        let advance = a.label();
        a.bind(trap);
        a.addi(SP, SP, -32);
        a.sd(X5, SP, 0);
        a.sd(X6, SP, 8);
        a.sd(X7, SP, 16);
        a.csrr(X5, csr::MCAUSE);
        a.bge(X5, ZERO, exception);
        a.andi(X5, X5, 0xff);
        a.li(X6, 7);
        a.beq(X5, X6, timer);
        a.li(X6, 11);
        a.beq(X5, X6, ext);
        a.j(out);

        a.bind(timer);
        a.li(X6, addr(map::TIMER));
        a.sd(ZERO, X6, reg::TIMER_ACK as i64);
        bump(a, layout::VAR_TIMER);
        a.j(out);

        a.bind(ext);
        bump(a, layout::VAR_EXT);
        a.li(X6, addr(map::PIC));
        a.ld(X5, X6, 0);
        a.andi(X7, X5, 1 << 5);
        a.beqz(X7, no_net);
        a.li(X6, addr(map::NET));
        a.sd(ZERO, X6, reg::NET_ACK as i64);
        if pop_packets {
            let pop_start = a.len();
            let pop = a.here();
            a.ld(X7, X6, reg::NET_RX_COUNT as i64);
            a.beqz(X7, no_net);
            a.sd(ZERO, X6, reg::NET_RX_POP as i64);
            bump_keep_x6(a, layout::VAR_NET_POPS);
            a.j(pop);
            pop_len = (a.len() - pop_start) as u64;
        }
        a.bind(no_net);
        a.andi(X7, X5, 1 << 4);
        a.beqz(X7, out);
        a.li(X6, addr(map::BLOCK));
        a.ld(X7, X6, reg::BLK_STATUS as i64);
        a.ori(X7, X7, 0x100);
        a.li(X5, addr(layout::VAR_BLK));
        a.sd(X7, X5, 0);
        a.sd(ZERO, X6, reg::BLK_ACK as i64);
        a.j(out);

        a.bind(exception);
        // ecall from U-mode (8) or S-mode (9): return to M-mode after it.
        a.addi(X6, X5, -8);
        a.li(X7, 1);
        a.bltu(X7, X6, skip);
        a.li(X6, MSTATUS_MPP);
        a.csrs(csr::MSTATUS, X6);
        bump(a, layout::VAR_USER_RET);
        a.j(advance);
        a.bind(skip);
        bump(a, layout::VAR_EXC);
        a.bind(advance);
        a.csrr(X5, csr::MEPC);
        a.addi(X5, X5, 4);
        a.csrw(csr::MEPC, X5);

        a.bind(out);
        a.ld(X5, SP, 0);
        a.ld(X6, SP, 8);
        a.ld(X7, SP, 16);
        a.addi(SP, SP, 32);
        a.mret();
        pop_len
    }
}

/// Increment the `u64` at `var` (clobbers x6, x7).
fn bump(a: &mut Assembler, var: u64) {
    a.li(X6, addr(var));
    a.ld(X7, X6, 0);
    a.addi(X7, X7, 1);
    a.sd(X7, X6, 0);
}

/// Increment the `u64` at `var` keeping x6 (clobbers x7; uses the stack slot 24).
fn bump_keep_x6(a: &mut Assembler, var: u64) {
    a.sd(X6, SP, 24);
    bump(a, var);
    a.ld(X6, SP, 24);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_assembles() {
        for seed in 0..50 {
            for p in [Params::stream(), Params::devices()] {
                let a = generate(seed, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                let b = generate(seed, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(a, b, "seed {seed}");
                assert!(a.static_bound > 0);
            }
        }
    }

    #[test]
    fn max_items_fit_below_the_variables() {
        for seed in 0..10 {
            for family in [Family::Stream, Family::Devices] {
                let p = Params {
                    family,
                    items: MAX_ITEMS,
                    ..Params::stream()
                };
                let prog = generate(seed, &p).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert!(prog.data_addr + prog.data_len <= layout::VARS);
            }
        }
    }
}
