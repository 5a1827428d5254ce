//! A bare-metal RV64 program built by the GNU RISC-V toolchain (riscv-tests style,
//! reporting through the HTIF `tohost` symbol) loads and runs unmodified, alone and
//! replicated.
//!
//! Needs `riscv64-linux-gnu-as` and `-ld` (Debian's `binutils-riscv64-linux-gnu`). When
//! they are missing the test prints a skip line, unless `FT_REQUIRE_RISCV_TOOLCHAIN=1`
//! (set by `.ci/run`, which installs the package).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod toolchain;

use std::path::PathBuf;
use std::process::Command;

use ft_sim::memory::Ram;
use ft_sim::{Machine, MachineConfig};

fn build_selftest() -> Option<Vec<u8>> {
    if !toolchain::have("riscv64-linux-gnu-as", "the GNU-built self-test") {
        return None;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/asm/htif_selftest.S");
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ft-sim-elf-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("selftest.o");
    let elf = dir.join("selftest.elf");
    let st = Command::new("riscv64-linux-gnu-as")
        .args(["-march=rv64im_zicsr", "-mabi=lp64", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success(), "as failed");
    let st = Command::new("riscv64-linux-gnu-ld")
        .args([
            "-static",
            "-nostdlib",
            "-N",
            "--no-relax",
            "-Ttext=0x80000000",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&elf)
        .arg(&obj)
        .status()
        .unwrap();
    assert!(st.success(), "ld failed");
    let bytes = std::fs::read(&elf).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Some(bytes)
}

fn run_to_exit(m: &mut Machine) -> u64 {
    toolchain::run_to_exit(m, 10_000_000)
}

#[test]
fn gnu_built_selftest_passes_through_tohost() {
    let Some(elf) = build_selftest() else { return };
    let mut m = Machine::from_elf(MachineConfig::default(), &elf).unwrap();
    assert_eq!(run_to_exit(&mut m), 0, "tohost = 1 means pass");
}

#[test]
fn gnu_built_selftest_reports_a_failing_check() {
    let Some(elf) = build_selftest() else { return };
    let mut scratch = Ram::new(MachineConfig::default().ram_size);
    let img = ft_sim::loader::load_elf(&elf, &mut scratch).unwrap();
    let data = img.symbol("data").expect("data symbol");
    let mut m = Machine::from_elf(MachineConfig::default(), &elf).unwrap();
    m.ram_mut().write(data, &0xdead_u64.to_le_bytes()).unwrap();
    assert_eq!(run_to_exit(&mut m), 5, "check 5 compares the data word");
}

#[test]
fn gnu_built_selftest_replicates() {
    let Some(elf) = build_selftest() else { return };
    toolchain::replicated(&elf, 0);
}
