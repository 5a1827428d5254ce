//! What the tests that build guests with the GNU RISC-V toolchain share.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use ft_core::{EventSource, ExecPoint, Stop};
use ft_sim::{Machine, MachineConfig, PairConfig, PairSim};

/// `FT_REQUIRE_RISCV_TOOLCHAIN=1` (set by `.ci/run`): a missing tool fails the test.
pub fn required() -> bool {
    std::env::var("FT_REQUIRE_RISCV_TOOLCHAIN").is_ok_and(|v| v == "1")
}

/// Whether `tool` runs; a skip line (or a failure when required) when it does not.
pub fn have(tool: &str, test: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        assert!(
            !required(),
            "FT_REQUIRE_RISCV_TOOLCHAIN=1 but {tool} is missing"
        );
        eprintln!("SKIP {test}: {tool} is not installed");
    }
    ok
}

/// Run the machine until the guest exits through `tohost`, failing after `limit`
/// instructions or at any other stop.
pub fn run_to_exit(m: &mut Machine, limit: u64) -> u64 {
    loop {
        match m.run(ExecPoint::at(m.point().count + 1_000_000)).unwrap() {
            Stop::Halted(code) => return code,
            Stop::Reached => assert!(m.point().count < limit, "no exit"),
            other => panic!("unexpected stop {other:?}"),
        }
    }
}

/// A fresh scratch directory for one build.
pub fn scratch(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ft-sim-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `cmd`, failing the test with its stderr if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assemble `body` with GNU as (after `.option OPTION`: `rvc` or `norvc`) for
/// rv64imafdc and return its `.text` section's bytes.
pub fn gnu_as_text(dir: &std::path::Path, name: &str, option: &str, body: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.S"));
    std::fs::write(
        &src,
        format!("    .option norelax\n    .option {option}\n    .text\n{body}"),
    )
    .unwrap();
    let obj = dir.join(format!("{name}.o"));
    let bin = dir.join(format!("{name}.bin"));
    run(Command::new("riscv64-linux-gnu-as")
        .args(["-march=rv64imafdc_zicsr", "-mabi=lp64", "-o"])
        .arg(&obj)
        .arg(&src));
    run(Command::new("riscv64-linux-gnu-objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin));
    std::fs::read(&bin).unwrap()
}

/// Build the freestanding C program `tests/c/NAME` with `riscv64-unknown-elf-gcc` and
/// `flags` (none: the toolchain's defaults), linked at RAM's base with its stack
/// below 1 MiB, and no linker relaxation (nothing sets `gp`).
pub fn gcc(name: &str, flags: &[&str]) -> Vec<u8> {
    let dir = scratch("gcc");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(name);
    let elf = dir.join("prog.elf");
    run(Command::new("riscv64-unknown-elf-gcc")
        .args(flags)
        .args([
            "-O2",
            "-ffreestanding",
            "-nostdlib",
            "-fno-builtin",
            "-static",
        ])
        .args(["-mcmodel=medany", "-mno-relax", "-Wl,--no-relax", "-Wl,-N"])
        .arg("-Wl,-Ttext=0x80000000")
        .args(["-Wl,--defsym=__stack_top=0x80100000", "-Wl,-e,_start", "-o"])
        .arg(&elf)
        .arg(&src));
    let bytes = std::fs::read(&elf).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// Run `elf` as a replicated pair until the guest exits and the backup replayed it
/// all, and check that both sides exit with `code` in the same state with no error.
pub fn replicated(elf: &[u8], code: u64) -> PairSim {
    let m = Machine::from_elf(MachineConfig::default(), elf).unwrap();
    let mut sim = PairSim::with_machine(PairConfig::default(), m);
    assert!(sim.run_until(10_000, |s| s.primary.exit_code().is_some()
        && s.backup.replayed_seq() == s.primary.last_seq()));
    assert_eq!(sim.primary.exit_code(), Some(code));
    assert_eq!(sim.backup.exit_code(), Some(code));
    assert_eq!(
        sim.primary.source_mut().digest(),
        sim.backup.source_mut().digest()
    );
    assert!(sim.errors().is_empty(), "{:?}", sim.errors());
    sim
}
