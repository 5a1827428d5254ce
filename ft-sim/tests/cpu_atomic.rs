//! The A extension (AMOs, `lr`/`sc`) and the Zicntr counters: encodings checked
//! against GNU as, every AMO against a model of its own over random operands, the
//! reservation's rules (traps and device writes break it), the exceptions, counter
//! writes, `rdtime` through the platform, and a gcc-built rv64imac program whose
//! atomics and time reads run replicated.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;
mod toolchain;

use std::process::Command;

use ft_core::{EventSource, ExecPoint, Stop};
use ft_sim::asm::*;
use ft_sim::cpu::{csr, Cpu, Exception, Mmio, MmioResult, NoMmio, Privilege, StepOutcome};
use ft_sim::devices::id;
use ft_sim::memory::{Ram, RAM_BASE};
use ft_sim::{Machine, MachineConfig};
use proptest::prelude::*;

const DATA: u64 = RAM_BASE + 0x1000;
const HANDLER: u64 = RAM_BASE + 0x800;

/// A hart at RAM's base with `code` there, `mtvec` at [`HANDLER`] (an `mret` after
/// `mepc += 4`), and `a2` pointing at [`DATA`].
fn boot(code: &[u32]) -> (Cpu, Ram) {
    let mut ram = Ram::new(1 << 16);
    let bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(RAM_BASE, &bytes).unwrap();
    let mut h = Assembler::with_base(HANDLER);
    h.csrr(T6, csr::MEPC)
        .addi(T6, T6, 4)
        .csrw(csr::MEPC, T6)
        .mret();
    ram.write(HANDLER, &h.finish().unwrap()).unwrap();
    let mut cpu = Cpu::new(RAM_BASE);
    cpu.set_csr(csr::MTVEC, HANDLER).unwrap();
    cpu.set_reg(A2, DATA);
    (cpu, ram)
}

fn step(cpu: &mut Cpu, ram: &mut Ram) -> StepOutcome {
    cpu.step(ram, &mut NoMmio)
}

/// The AMOs, in the order of [`model`]: (name, word encoder, doubleword encoder).
type Enc = fn(Reg, Reg, Reg) -> u32;
const AMOS: [(&str, Enc, Enc); 9] = [
    ("amoswap", amoswap_w, amoswap_d),
    ("amoadd", amoadd_w, amoadd_d),
    ("amoxor", amoxor_w, amoxor_d),
    ("amoand", amoand_w, amoand_d),
    ("amoor", amoor_w, amoor_d),
    ("amomin", amomin_w, amomin_d),
    ("amomax", amomax_w, amomax_d),
    ("amominu", amominu_w, amominu_d),
    ("amomaxu", amomaxu_w, amomaxu_d),
];

/// What AMO number `op` leaves in memory, at the access width.
fn model(op: usize, word: bool, mem: u64, src: u64) -> u64 {
    if word {
        let (a, b) = (mem as u32, src as u32);
        u64::from(match op {
            0 => b,
            1 => a.wrapping_add(b),
            2 => a ^ b,
            3 => a & b,
            4 => a | b,
            5 => (a as i32).min(b as i32) as u32,
            6 => (a as i32).max(b as i32) as u32,
            7 => a.min(b),
            _ => a.max(b),
        })
    } else {
        let (a, b) = (mem, src);
        match op {
            0 => b,
            1 => a.wrapping_add(b),
            2 => a ^ b,
            3 => a & b,
            4 => a | b,
            5 => (a as i64).min(b as i64) as u64,
            6 => (a as i64).max(b as i64) as u64,
            7 => a.min(b),
            _ => a.max(b),
        }
    }
}

#[test]
fn encodings_match_gnu_as() {
    let test = "encodings_match_gnu_as";
    if !toolchain::have("riscv64-linux-gnu-as", test) {
        return;
    }
    let mut lines = Vec::new();
    let mut ours = Vec::new();
    for (name, w, d) in AMOS {
        lines.push(format!("{name}.w a0, a1, (a2)"));
        ours.push(w(A0, A1, A2));
        lines.push(format!("{name}.d t3, s4, (sp)"));
        ours.push(d(T3, S4, SP));
    }
    lines.push("lr.w a0, (a2)".into());
    ours.push(lr_w(A0, A2));
    lines.push("lr.d t6, (s1)".into());
    ours.push(lr_d(T6, S1));
    lines.push("sc.w a0, a1, (a2)".into());
    ours.push(sc_w(A0, A1, A2));
    lines.push("sc.d ra, t0, (gp)".into());
    ours.push(sc_d(RA, T0, GP));
    let dir = toolchain::scratch("amo");
    let body: String = lines.iter().map(|l| format!("    {l}\n")).collect();
    let text = toolchain::gnu_as_text(&dir, "amo", "norvc", &body);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(text.len(), 4 * ours.len());
    for (i, line) in lines.iter().enumerate() {
        let theirs = u32::from_le_bytes(text[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(
            ours[i], theirs,
            "`{line}`: ours {:#010x}, GNU as {theirs:#010x}",
            ours[i]
        );
    }
}

fn config(cases: u32) -> proptest::test_runner::Config {
    prop_support::soaked_config(cases, 0xA70_0001)
}

proptest! {
    #![proptest_config(config(3000))]

    /// Every AMO at both widths: `rd` gets the old value (a word's sign-extended), memory
    /// the operation's result, the bytes around it stay, and it retires once.
    #[test]
    fn every_amo_matches_the_model(
        op in 0usize..9,
        word in any::<bool>(),
        mem in any::<u64>(),
        src in any::<u64>(),
        slot in 0u64..8,
        rd in prop::sample::select(vec![A0, ZERO, A1, A2]),
    ) {
        let (_, w, d) = AMOS[op];
        let size = if word { 4 } else { 8 };
        let addr = DATA + slot * size;
        let inst = if word { w(rd, A1, A2) } else { d(rd, A1, A2) };
        let (mut cpu, mut ram) = boot(&[inst]);
        let fill = 0xA5A5_5A5A_C3C3_3C3Cu64;
        for i in 0..16 {
            ram.write(DATA + 8 * i, &fill.to_le_bytes()).unwrap();
        }
        ram.write(addr, &mem.to_le_bytes()[..size as usize]).unwrap();
        cpu.set_reg(A2, addr);
        // rs2 = a1 unless rd overwrote the pointer's or source's register choice.
        cpu.set_reg(A1, src);
        let (old_src, old_ptr) = (cpu.reg(A1), cpu.reg(A2));
        prop_assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
        prop_assert_eq!(cpu.instret(), 1);
        let old = if word { mem as u32 as i32 as i64 as u64 } else { mem };
        let want_mem = model(op, word, if word { mem & 0xFFFF_FFFF } else { mem }, old_src);
        let mut got = [0u8; 8];
        ram.read(addr, &mut got[..size as usize]).unwrap();
        prop_assert_eq!(u64::from_le_bytes(got), want_mem, "{} {}", AMOS[op].0, size);
        if rd != ZERO {
            prop_assert_eq!(cpu.reg(rd), old);
        }
        if rd != A2 {
            prop_assert_eq!(cpu.reg(A2), old_ptr);
        }
        // Neighbours untouched.
        for i in 0..16 {
            let a = DATA + 8 * i;
            if a + 8 <= addr || a >= addr + size {
                let mut b = [0u8; 8];
                ram.read(a, &mut b).unwrap();
                prop_assert_eq!(u64::from_le_bytes(b), fill);
            }
        }
    }
}

#[test]
fn lr_then_sc_succeeds_once() {
    let (mut cpu, mut ram) = boot(&[
        lr_d(A0, A2),
        addi(A0, A0, 5).unwrap(),
        sc_d(A3, A0, A2),
        sc_d(A4, A0, A2),
    ]);
    ram.write(DATA, &37u64.to_le_bytes()).unwrap();
    cpu.set_reg(A3, 99);
    cpu.set_reg(A4, 99);
    for _ in 0..4 {
        assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    }
    assert_eq!(cpu.reg(A3), 0, "the first sc succeeds");
    assert_eq!(cpu.reg(A4), 1, "the second has no reservation");
    assert_eq!(ram.load_u64(DATA).unwrap(), 42);
    assert_eq!(cpu.reservation(), None);
}

#[test]
fn lr_w_sign_extends_and_sc_w_writes_a_word() {
    let (mut cpu, mut ram) = boot(&[lr_w(A0, A2), sc_w(A3, A1, A2)]);
    ram.write(DATA, &0x1111_1111_8000_0001u64.to_le_bytes())
        .unwrap();
    cpu.set_reg(A1, 0xDEAD_BEEF_7777_7777);
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.reg(A0), 0xFFFF_FFFF_8000_0001);
    assert_eq!(cpu.reservation(), Some(DATA));
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.reg(A3), 0);
    assert_eq!(ram.load_u64(DATA).unwrap(), 0x1111_1111_7777_7777);
}

#[test]
fn sc_fails_elsewhere_after_a_trap_and_after_a_device_write() {
    // To another address.
    let (mut cpu, mut ram) = boot(&[lr_d(A0, A2), addi(A2, A2, 8).unwrap(), sc_d(A3, A1, A2)]);
    for _ in 0..3 {
        step(&mut cpu, &mut ram);
    }
    assert_eq!(cpu.reg(A3), 1);
    assert_eq!(
        ram.load_u64(DATA + 8).unwrap(),
        0,
        "a failed sc writes nothing"
    );

    // Across an exception (ecall, handled and returned from).
    let (mut cpu, mut ram) = boot(&[lr_d(A0, A2), ecall(), sc_d(A3, A1, A2)]);
    cpu.set_reg(A1, 7);
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::EcallFromM)
    );
    for _ in 0..4 {
        step(&mut cpu, &mut ram); // the handler, through mret
    }
    assert_eq!(cpu.pc(), RAM_BASE + 8);
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.reg(A3), 1, "a trap drops the reservation");
    assert_eq!(ram.load_u64(DATA).unwrap(), 0);

    // Across an interrupt.
    let (mut cpu, mut ram) = boot(&[lr_d(A0, A2), sc_d(A3, A1, A2)]);
    cpu.set_csr(csr::MIE, ft_sim::cpu::MIP_MTIP).unwrap();
    cpu.set_csr(csr::MSTATUS, ft_sim::cpu::MSTATUS_MIE).unwrap();
    step(&mut cpu, &mut ram);
    cpu.set_mip(ft_sim::cpu::MIP_MTIP, true);
    assert!(matches!(
        step(&mut cpu, &mut ram),
        StepOutcome::Interrupt(_)
    ));
    assert_eq!(cpu.reservation(), None);

    // After the machine's device write.
    let (mut cpu, mut ram) = boot(&[lr_d(A0, A2), sc_d(A3, A1, A2)]);
    step(&mut cpu, &mut ram);
    cpu.cancel_reservation();
    step(&mut cpu, &mut ram);
    assert_eq!(cpu.reg(A3), 1);
}

/// (instruction, a2, expected exception) for the faulting forms.
#[test]
fn misaligned_and_outside_ram_accesses_trap_with_the_right_cause() {
    let cases: &[(u32, u64, Exception)] = &[
        (lr_d(A0, A2), DATA + 4, Exception::LoadAddressMisaligned),
        (lr_w(A0, A2), DATA + 2, Exception::LoadAddressMisaligned),
        (
            sc_d(A0, A1, A2),
            DATA + 1,
            Exception::StoreAddressMisaligned,
        ),
        (
            amoadd_w(A0, A1, A2),
            DATA + 6,
            Exception::StoreAddressMisaligned,
        ),
        (
            amoswap_d(A0, A1, A2),
            DATA + 12,
            Exception::StoreAddressMisaligned,
        ),
        (lr_d(A0, A2), 0x1000_0000, Exception::LoadAccessFault),
        (sc_w(A0, A1, A2), 0x1000_0000, Exception::StoreAccessFault),
        (
            amoor_d(A0, A1, A2),
            0x1000_0000,
            Exception::StoreAccessFault,
        ),
        (
            amomaxu_w(A0, A1, A2),
            RAM_BASE + (1 << 16) - 2,
            Exception::StoreAddressMisaligned,
        ),
        (
            amomaxu_d(A0, A1, A2),
            RAM_BASE + (1 << 16),
            Exception::StoreAccessFault,
        ),
    ];
    for &(inst, addr, want) in cases {
        let (mut cpu, mut ram) = boot(&[inst]);
        cpu.set_reg(A2, addr);
        cpu.set_reg(A0, 0x77);
        assert_eq!(
            step(&mut cpu, &mut ram),
            StepOutcome::Exception(want),
            "{inst:#010x} at {addr:#x}"
        );
        assert_eq!(cpu.csr(csr::MCAUSE), Some(want.code()));
        assert_eq!(cpu.csr(csr::MTVAL), Some(addr));
        assert_eq!(cpu.reg(A0), 0x77, "rd unchanged");
        assert_eq!(cpu.instret(), 0);
    }
}

#[test]
fn reserved_encodings_are_illegal() {
    let amo = amoadd_w(A0, A1, A2);
    let cases = [
        lr_d(A0, A2) | (1 << 20),                // lr with rs2 != 0
        (amo & !(0x1F << 27)) | (0b00101 << 27), // no such AMO
        amo & !(7 << 12),                        // byte width (funct3 0)
        (amo & !(7 << 12)) | (4 << 12),          // quadword
    ];
    for inst in cases {
        let (mut cpu, mut ram) = boot(&[inst]);
        assert_eq!(
            step(&mut cpu, &mut ram),
            StepOutcome::Exception(Exception::IllegalInstruction),
            "{inst:#010x}"
        );
        assert_eq!(cpu.csr(csr::MTVAL), Some(u64::from(inst)));
    }
}

#[test]
fn an_amo_on_the_watched_word_stops_the_run() {
    let (mut cpu, mut ram) = boot(&[amoswap_d(ZERO, A1, A2), ebreak()]);
    cpu.set_reg(A1, 3);
    cpu.set_store_watch(Some(DATA));
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::RetiredWatch);
    assert_eq!(ram.load_u64(DATA).unwrap(), 3);
}

#[test]
fn counters_count_retired_instructions_and_take_writes() {
    let (mut cpu, mut ram) = boot(&[
        csrrw(ZERO, csr::MCYCLE, A1).unwrap(),
        csrrs(A3, csr::MCYCLE, ZERO).unwrap(),
        csrrs(A4, csr::CYCLE, ZERO).unwrap(),
        csrrw(ZERO, csr::MINSTRET, A1).unwrap(),
        csrrs(A5, csr::INSTRET, ZERO).unwrap(),
        csrrs(A6, csr::MCYCLE, ZERO).unwrap(),
    ]);
    cpu.set_reg(A1, 1000);
    for _ in 0..6 {
        assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    }
    assert_eq!(
        cpu.reg(A3),
        1000,
        "the next instruction reads the value written"
    );
    assert_eq!(cpu.reg(A4), 1001);
    assert_eq!(cpu.reg(A5), 1000);
    assert_eq!(cpu.reg(A6), 1004);
    assert_eq!(
        cpu.instret(),
        6,
        "the execution point is not the guest's to move"
    );
    // The inspection API writes with no instruction retiring.
    cpu.set_csr(csr::MINSTRET, 5).unwrap();
    assert_eq!(cpu.csr(csr::MINSTRET), Some(5));
    assert_eq!(cpu.csr(csr::INSTRET), Some(5));
}

#[test]
fn lower_mode_counter_reads_follow_mcounteren_and_scounteren() {
    // (mode, mcounteren, scounteren, allowed)
    let cases = [
        (Privilege::Supervisor, 0, 1, false),
        (Privilege::Supervisor, 1, 0, true),
        (Privilege::User, 1, 0, false),
        (Privilege::User, 0, 1, false),
        (Privilege::User, 1, 1, true),
    ];
    for (mode, m, s, allowed) in cases {
        let (mut cpu, mut ram) = boot(&[csrrs(A3, csr::CYCLE, ZERO).unwrap()]);
        cpu.set_csr(csr::MCOUNTEREN, m).unwrap();
        cpu.set_csr(csr::SCOUNTEREN, s).unwrap();
        cpu.set_privilege(mode);
        let want = if allowed {
            StepOutcome::Retired
        } else {
            StepOutcome::Exception(Exception::IllegalInstruction)
        };
        assert_eq!(step(&mut cpu, &mut ram), want, "{mode:?} m={m} s={s}");
    }
}

/// A platform clock that stalls once, then answers.
struct Clock {
    stalled: bool,
    now: u64,
}

impl Mmio for Clock {
    fn load(&mut self, _addr: u64, _size: u8) -> MmioResult<u64> {
        MmioResult::Fault
    }
    fn store(&mut self, _addr: u64, _size: u8, _value: u64) -> MmioResult<()> {
        MmioResult::Fault
    }
    fn time(&mut self) -> MmioResult<u64> {
        if !self.stalled {
            self.stalled = true;
            return MmioResult::Stall;
        }
        MmioResult::Ok(self.now)
    }
}

#[test]
fn rdtime_asks_the_platform() {
    let rdtime = csrrs(A3, csr::TIME, ZERO).unwrap();
    // No clock: illegal, as for a trapped, emulated `time`.
    let (mut cpu, mut ram) = boot(&[rdtime]);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::IllegalInstruction)
    );
    // A clock that stalls first: nothing retires, then the read completes.
    let (mut cpu, mut ram) = boot(&[rdtime]);
    let mut clock = Clock {
        stalled: false,
        now: 123_456_789,
    };
    assert_eq!(cpu.step(&mut ram, &mut clock), StepOutcome::Stall);
    assert_eq!((cpu.instret(), cpu.pc()), (0, RAM_BASE));
    assert_eq!(cpu.step(&mut ram, &mut clock), StepOutcome::Retired);
    assert_eq!(cpu.reg(A3), 123_456_789);
    // `time` is read-only.
    let (mut cpu, mut ram) = boot(&[csrrw(A3, csr::TIME, A1).unwrap()]);
    assert_eq!(
        cpu.step(&mut ram, &mut clock),
        StepOutcome::Exception(Exception::IllegalInstruction)
    );
}

#[test]
fn on_the_ft_machine_rdtime_is_a_logged_clock_read() {
    let mut a = Assembler::new();
    a.csrr(A0, csr::TIME).csrr(A1, csr::TIME);
    let mut m = Machine::from_raw(MachineConfig::default(), &a.finish().unwrap()).unwrap();
    for now in [5_000u64, 7_000] {
        match m.run(ExecPoint::at(10)).unwrap() {
            Stop::Input(req) => {
                assert_eq!((req.device, req.offset, req.size), (id::CLOCK, 0, 8));
            }
            other => panic!("expected a clock read, got {other:?}"),
        }
        m.supply_input(&now.to_le_bytes()).unwrap();
    }
    assert_eq!(m.run(ExecPoint::at(2)).unwrap(), Stop::Reached);
    assert_eq!(m.cpu().reg(A0), 5_000);
    assert_eq!(m.cpu().reg(A1), 7_000);
}

/// What `tests/c/atomics.c` computes, with the same operations in Rust.
fn atomics_checksum() -> u64 {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut d, mut w) = (0u64, 0u32);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mix = |h: &mut u64, v: u64| *h = (*h ^ v).wrapping_mul(0x100_0000_01b3);
    for _ in 0..300 {
        let x = next();
        let old = d;
        d = d.wrapping_add(x);
        mix(&mut h, old);
        let old = d;
        d ^= x >> 3;
        mix(&mut h, old);
        let old = d;
        d &= x | 0xff00;
        mix(&mut h, old);
        let old = d;
        d |= x & 0x0f0f;
        mix(&mut h, old);
        let old = d;
        d = x ^ old;
        mix(&mut h, old);
        let o32 = w;
        w = w.wrapping_add(x as u32);
        mix(&mut h, u64::from(o32));
        let o32 = w;
        w = (x >> 32) as u32;
        mix(&mut h, u64::from(o32));
        // Compare-and-swap (lr/sc loops): always succeeds on one hart.
        d = d.wrapping_mul(3).wrapping_add(1);
        w = w.wrapping_add(7);
        mix(&mut h, d ^ u64::from(w));
        // amomin/amomax (inline asm), each returning the old value.
        let y = next();
        let old = d;
        d = (d as i64).min(y as i64) as u64;
        mix(&mut h, old);
        let old = d;
        d = (d as i64).max((y >> 1) as i64) as u64;
        mix(&mut h, old);
        let old = d;
        d = d.min(y ^ 0x5555);
        mix(&mut h, old);
        let old = d;
        d = d.max(y >> 3);
        mix(&mut h, old);
        let o32 = w;
        w = (w as i32).min(y as i32) as u32;
        mix(&mut h, o32 as i32 as i64 as u64);
        let o32 = w;
        w = w.max((y >> 40) as u32);
        mix(&mut h, o32 as i32 as i64 as u64);
    }
    (h ^ (h >> 32)) & 0xffff_ffff
}

#[test]
fn a_gcc_rv64imac_program_with_atomics_and_rdtime_runs_replicated() {
    let test = "a_gcc_rv64imac_program_with_atomics_and_rdtime_runs_replicated";
    if !toolchain::have("riscv64-unknown-elf-gcc", test)
        || !toolchain::have("riscv64-linux-gnu-objdump", test)
    {
        return;
    }
    let elf = toolchain::gcc("atomics.c", &["-march=rv64imac_zicsr", "-mabi=lp64"]);
    // The build really uses the A extension and the counter.
    let dir = toolchain::scratch("atomics");
    let path = dir.join("atomics.elf");
    std::fs::write(&path, &elf).unwrap();
    let out = Command::new("riscv64-linux-gnu-objdump")
        .arg("-d")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let listing = String::from_utf8_lossy(&out.stdout);
    for mnemonic in [
        "amoadd.d",
        "amoxor.d",
        "amoand.d",
        "amoor.d",
        "amoswap.d",
        "amoadd.w",
        "amoswap.w",
        "lr.d",
        "sc.d",
        "lr.w",
        "sc.w",
        "amomin.d",
        "amomax.d",
        "amominu.d",
        "amomaxu.d",
        "amomin.w",
        "amomaxu.w",
        "rdtime",
    ] {
        assert!(
            listing.contains(mnemonic),
            "gcc emitted no {mnemonic}:\n{listing}"
        );
    }
    let want = atomics_checksum();
    let sim = toolchain::replicated(&elf, want);
    // The two time reads were logged inputs on the primary, replayed on the backup.
    assert!(sim.backup.replayed_seq() > 0);
}
