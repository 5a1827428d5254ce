//! The C extension against the GNU toolchain, which nobody here wrote:
//!
//! * every compressed instruction GNU `as` emits expands to exactly the 32-bit
//!   instruction it emits for the same line with compression off;
//! * a program runs to the same result compressed and not, alone and replicated;
//! * a C program built by `riscv64-unknown-elf-gcc -march=rv64imc` computes what the
//!   test computes, and the toolchain's default build (rv64gc, lp64d) is refused with
//!   the extensions it needs, not run into a trap loop.
//!
//! Needs `riscv64-linux-gnu-as`/`-ld`/`-objcopy` (Debian's `binutils-riscv64-linux-gnu`)
//! and `riscv64-unknown-elf-gcc` (`gcc-riscv64-unknown-elf`). When they are missing the
//! tests print a skip line, unless `FT_REQUIRE_RISCV_TOOLCHAIN=1` (set by `.ci/run`,
//! which installs both).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod toolchain;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use ft_core::EventSource;
use ft_sim::loader::LoaderError;
use ft_sim::machine::MachineError;
use ft_sim::rvc;
use ft_sim::{Machine, MachineConfig};

use toolchain::{have, run, run_to_exit as run_until_exit, scratch};

/// Assemble `body` (after `.option rvc` or `.option norvc`) and return its `.text`.
fn assemble_text(dir: &Path, name: &str, compressed: bool, body: &str) -> Vec<u8> {
    let option = if compressed { "rvc" } else { "norvc" };
    toolchain::gnu_as_text(dir, name, option, body)
}

/// Every compressible form of RV64C, with registers and immediates over their ranges.
fn compressible_lines() -> Vec<String> {
    let mut v = Vec::new();
    let full = 1..32u32;
    let short = 8..16u32;
    for r in full.clone() {
        for imm in (-32..32).filter(|i| *i != 0) {
            v.push(format!("addi x{r}, x{r}, {imm}"));
            v.push(format!("addi x{r}, x0, {imm}"));
        }
        for imm in -32..32 {
            v.push(format!("addiw x{r}, x{r}, {imm}"));
        }
        for sh in 1..64 {
            v.push(format!("slli x{r}, x{r}, {sh}"));
        }
        if r != 2 {
            for hi in (1..32).chain(0xfffe0..0x10_0000) {
                v.push(format!("lui x{r}, {hi}"));
            }
        }
        for off in (0..256).step_by(4) {
            v.push(format!("lw x{r}, {off}(sp)"));
            v.push(format!("sw x{r}, {off}(sp)"));
        }
        for off in (0..512).step_by(8) {
            v.push(format!("ld x{r}, {off}(sp)"));
            v.push(format!("sd x{r}, {off}(sp)"));
            v.push(format!("fld f{r}, {off}(sp)"));
            v.push(format!("fsd f{r}, {off}(sp)"));
        }
        v.push(format!("jalr x0, 0(x{r})"));
        v.push(format!("jalr x1, 0(x{r})"));
        for s in full.clone() {
            v.push(format!("add x{r}, x0, x{s}"));
            v.push(format!("add x{r}, x{r}, x{s}"));
        }
    }
    for k in (-32..32).filter(|k| *k != 0) {
        v.push(format!("addi sp, sp, {}", 16 * k));
    }
    for r in short.clone() {
        for k in 1..256 {
            v.push(format!("addi x{r}, sp, {}", 4 * k));
        }
        for sh in 1..64 {
            v.push(format!("srli x{r}, x{r}, {sh}"));
            v.push(format!("srai x{r}, x{r}, {sh}"));
        }
        for imm in -32..32 {
            v.push(format!("andi x{r}, x{r}, {imm}"));
        }
        for s in short.clone() {
            for op in ["sub", "xor", "or", "and", "subw", "addw"] {
                v.push(format!("{op} x{r}, x{r}, x{s}"));
            }
            for off in (0..128).step_by(4) {
                v.push(format!("lw x{r}, {off}(x{s})"));
                v.push(format!("sw x{r}, {off}(x{s})"));
            }
            for off in (0..256).step_by(8) {
                v.push(format!("ld x{r}, {off}(x{s})"));
                v.push(format!("sd x{r}, {off}(x{s})"));
                v.push(format!("fld f{r}, {off}(x{s})"));
                v.push(format!("fsd f{r}, {off}(x{s})"));
            }
        }
        for off in (-256..256).step_by(2) {
            v.push(format!("beq x{r}, x0, .{off:+}"));
            v.push(format!("bne x{r}, x0, .{off:+}"));
        }
    }
    for off in (-2048..2048).step_by(2) {
        v.push(format!("jal x0, .{off:+}"));
    }
    v.push("ebreak".into());
    v
}

#[test]
fn every_compression_gnu_as_makes_expands_to_its_uncompressed_encoding() {
    let test = "every_compression_gnu_as_makes_expands_to_its_uncompressed_encoding";
    if !have("riscv64-linux-gnu-as", test) {
        return;
    }
    let lines = compressible_lines();
    let mut body = String::new();
    for l in &lines {
        writeln!(body, "    {l}").unwrap();
    }
    let dir = scratch("as");
    let packed = assemble_text(&dir, "packed", true, &body);
    let plain = assemble_text(&dir, "plain", false, &body);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        plain.len(),
        4 * lines.len(),
        "one 32-bit instruction per line"
    );
    let (mut at, mut compressed) = (0usize, 0usize);
    for (i, line) in lines.iter().enumerate() {
        let want = u32::from_le_bytes(plain[4 * i..4 * i + 4].try_into().unwrap());
        let parcel = u16::from_le_bytes(packed[at..at + 2].try_into().unwrap());
        if rvc::is_compressed(parcel) {
            assert_eq!(
                rvc::expand(parcel),
                Some(want),
                "`{line}`: GNU as compressed it to {parcel:#06x}, which must expand to {want:#010x}"
            );
            compressed += 1;
            at += 2;
        } else {
            let got = u32::from_le_bytes(packed[at..at + 4].try_into().unwrap());
            assert_eq!(got, want, "`{line}` was not compressed but differs");
            at += 4;
        }
    }
    assert_eq!(at, packed.len());
    // Every line is a compressible form: GNU as must have compressed nearly all (it
    // keeps only what it cannot, such as HINTs it does not emit).
    assert!(
        compressed * 100 >= lines.len() * 95,
        "only {compressed} of {} lines compressed",
        lines.len()
    );
    eprintln!(
        "{compressed} of {} lines compressed and checked",
        lines.len()
    );
}

/// A program that exercises the compressed forms' semantics (stack frames, loads and
/// stores of every width, shifts, branches both ways, calls through registers) and
/// reports a checksum of its registers through `tohost`.
const PROGRAM: &str = r#"
    .section .text.init
    .globl _start
_start:
    la      sp, stack_top
    li      s0, 0x12345
    li      s1, -77
    li      a0, 0
    li      a5, 40
loop:
    addi    sp, sp, -64
    sd      s0, 0(sp)
    sw      s1, 8(sp)
    addi    a1, sp, 16
    sd      a5, 0(a1)
    ld      a2, 0(sp)
    lw      a3, 8(sp)
    ld      a4, 0(a1)
    add     a0, a0, a2
    xor     a0, a0, a3
    sub     a0, a0, a4
    slli    a0, a0, 3
    srli    a2, a0, 7
    srai    a3, a0, 11
    andi    a4, a0, -17
    or      a0, a2, a3
    and     a2, a2, a4
    addw    a0, a0, a2
    subw    a3, a3, a0
    addiw   a0, a0, 13
    lui     a4, 0xfffe1
    add     a0, a0, a4
    mv      a2, a0
    jal     ra, helper
    addi    sp, sp, 64
    addi    a5, a5, -1
    bnez    a5, loop
    beqz    a5, done
    li      a0, 99
done:
    slli    a0, a0, 32      # HTIF's exit payload: keep 32 bits of the checksum
    srli    a0, a0, 31      # ... shifted left by one
    ori     a0, a0, 1
    la      t0, tohost
    sd      a0, 0(t0)
1:  j       1b
helper:
    addi    sp, sp, -16
    sd      ra, 8(sp)
    la      t1, leaf
    jalr    t1
    ld      ra, 8(sp)
    addi    sp, sp, 16
    ret
leaf:
    srli    a2, a2, 1
    add     a0, a0, a2
    jr      ra

    .data
    .align 3
    .globl tohost
tohost: .dword 0
    .globl fromhost
fromhost: .dword 0
    .align 4
stack: .space 1024
stack_top:
"#;

/// Assemble and link `PROGRAM` into an ELF, compressed or not.
fn build_program(compressed: bool) -> Vec<u8> {
    let dir = scratch("prog");
    let src = dir.join("prog.S");
    let option = if compressed { "rvc" } else { "norvc" };
    std::fs::write(&src, format!("    .option {option}\n{PROGRAM}")).unwrap();
    let obj = dir.join("prog.o");
    let elf = dir.join("prog.elf");
    run(Command::new("riscv64-linux-gnu-as")
        .args(["-march=rv64imc_zicsr", "-mabi=lp64", "-o"])
        .arg(&obj)
        .arg(&src));
    run(Command::new("riscv64-linux-gnu-ld")
        .args(["-static", "-nostdlib", "-N", "--no-relax"])
        .args(["-Ttext=0x80000000", "-e", "_start", "-o"])
        .arg(&elf)
        .arg(&obj));
    let bytes = std::fs::read(&elf).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn run_to_exit(m: &mut Machine) -> u64 {
    run_until_exit(m, 50_000_000)
}

#[test]
fn a_program_computes_the_same_compressed_and_not_alone_and_replicated() {
    let test = "a_program_computes_the_same_compressed_and_not_alone_and_replicated";
    if !have("riscv64-linux-gnu-as", test) {
        return;
    }
    let packed = build_program(true);
    let plain = build_program(false);
    let mut a = Machine::from_elf(MachineConfig::default(), &packed).unwrap();
    let mut b = Machine::from_elf(MachineConfig::default(), &plain).unwrap();
    let (ca, cb) = (run_to_exit(&mut a), run_to_exit(&mut b));
    assert_eq!(ca, cb, "compressed and uncompressed builds disagree");
    assert_ne!(ca, 99, "the loop fell through its final branch");
    // The same instructions retired, and the registers that hold data (not code or
    // data addresses, which the shorter build moves) hold the same values.
    assert_eq!(a.point(), b.point());
    for r in [8usize, 9, 10, 12, 13, 14, 15] {
        assert_eq!(a.cpu().reg(r), b.cpu().reg(r), "x{r}");
    }
    assert_ne!(
        a.cpu().pc(),
        b.cpu().pc(),
        "the compressed build is shorter"
    );

    toolchain::replicated(&packed, ca);
}

/// `tests/c/rvc_kernel.c`, computed here.
fn kernel_checksum() -> u64 {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words: Vec<u32> = (0..64).map(|_| next() as u32).collect();
    words.sort_unstable();
    for w in words {
        h = (h ^ u64::from(w)).wrapping_mul(0x0100_0000_01b3);
    }
    let bytes: Vec<u8> = (0..256).map(|_| (next() >> 56) as u8).collect();
    for b in bytes {
        let wide = u64::from(b);
        h = match b & 7 {
            0 => h.wrapping_add(wide),
            1 => h ^ (wide << 17),
            2 => h.wrapping_sub(wide * 3),
            3 => h.rotate_left(5),
            4 => ((h as i64) >> 3) as u64 ^ wide,
            5 => h / (wide | 1) + h % (wide | 1),
            6 => u64::from(h as u32).wrapping_mul(u64::from((h >> 32) as u32)),
            _ => !h,
        };
    }
    fn fib(n: u32) -> u64 {
        if n < 2 {
            u64::from(n)
        } else {
            fib(n - 1) + fib(n - 2)
        }
    }
    h = h.wrapping_add(fib(20));
    (h ^ (h >> 32)) & 0xffff_ffff
}

fn gcc(flags: &[&str]) -> Vec<u8> {
    toolchain::gcc("rvc_kernel.c", flags)
}

fn needs(elf: &[u8]) -> String {
    match Machine::from_elf(MachineConfig::default(), elf) {
        Err(MachineError::Image(LoaderError::NeedsExtensions { missing, .. })) => missing,
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("accepted a program built for extensions the machine lacks"),
    }
}

#[test]
fn gcc_builds_without_floating_point_run_and_the_default_build_is_refused_by_name() {
    let test = "gcc_builds_without_floating_point_run_and_the_default_build_is_refused_by_name";
    if !have("riscv64-unknown-elf-gcc", test) {
        return;
    }
    let want = kernel_checksum();
    let mut sizes = Vec::new();
    for march in ["-march=rv64imc", "-march=rv64im", "-march=rv64imac"] {
        let elf = gcc(&[march, "-mabi=lp64"]);
        let mut m = Machine::from_elf(MachineConfig::default(), &elf).unwrap();
        assert_eq!(run_to_exit(&mut m), want, "gcc {march}");
        sizes.push(elf.len());
    }
    assert!(
        sizes[0] < sizes[1],
        "the rv64imc build is compressed: {sizes:?}"
    );
    // The toolchain's default (rv64gc, lp64d): the float ABI and the arch attribute
    // both need F and D; A is there.
    let default = needs(&gcc(&[]));
    assert_eq!(default, "F, D");
    let err = Machine::from_elf(MachineConfig::default(), &gcc(&[])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("F, D") && text.contains("RV64IMAC"),
        "the error names what is missing and what the machine has: {text}"
    );
    // Soft-float, but with F and D in its arch attribute.
    let float = needs(&gcc(&["-march=rv64imafdc", "-mabi=lp64"]));
    assert_eq!(float, "F, D");
}

#[test]
fn an_illegal_compressed_instruction_reports_its_16_bits() {
    use ft_sim::cpu::{csr, Cpu, StepOutcome};
    use ft_sim::memory::Ram;
    let base = 0x8000_0000u64;
    let mut ram = Ram::new(1 << 16);
    // c.li a0, 1; then c.fld (no D extension here); then the reserved all-zero parcel.
    ram.write(base, &[0x05, 0x45, 0x08, 0x20, 0x00, 0x00])
        .unwrap();
    let mut cpu = Cpu::new(base);
    cpu.set_csr(csr::MTVEC, base + 0x100).unwrap();
    let mut mmio = ft_sim::cpu::NoMmio;
    assert_eq!(cpu.step(&mut ram, &mut mmio), StepOutcome::Retired);
    assert_eq!(cpu.reg(10u8), 1);
    assert_eq!(
        cpu.pc(),
        base + 2,
        "a compressed instruction is 2 bytes long"
    );
    assert!(matches!(
        cpu.step(&mut ram, &mut mmio),
        StepOutcome::Exception(_)
    ));
    assert_eq!(cpu.csr(csr::MEPC), Some(base + 2));
    assert_eq!(cpu.csr(csr::MTVAL), Some(0x2008), "mtval holds the 16 bits");
    cpu.set_pc(base + 4);
    assert!(matches!(
        cpu.step(&mut ram, &mut mmio),
        StepOutcome::Exception(_)
    ));
    assert_eq!(cpu.csr(csr::MTVAL), Some(0));
    assert_eq!(cpu.instret(), 1);

    // A trap vector that holds such an instruction traps to itself: a trap loop,
    // reported as one (the 16-bit mtval must not hide it), not an endless run.
    ram.write(base + 8, &[0x08, 0x20]).unwrap();
    cpu.set_csr(csr::MTVEC, base + 8).unwrap();
    cpu.set_pc(base + 8);
    let _ = cpu.step(&mut ram, &mut mmio);
    assert_eq!(cpu.step(&mut ram, &mut mmio), StepOutcome::TrapLoop);
    assert_eq!(
        cpu.run(&mut ram, &mut mmio, 10),
        ft_sim::cpu::StepExit::TrapLoop
    );
}
