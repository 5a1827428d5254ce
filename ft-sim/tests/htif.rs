//! HTIF ([`ft_sim::htif`]) as a C program built by `riscv64-unknown-elf-gcc` uses it:
//! console putchar, the system-call proxy's `SYS_write`, its error answers, and
//! `SYS_exit`, alone and replicated (the console text is an output, so the output rule
//! and replay cover it).
//!
//! Needs `gcc-riscv64-unknown-elf`; prints a skip line without it, unless
//! `FT_REQUIRE_RISCV_TOOLCHAIN=1` (set by `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod toolchain;

use ft_core::{EventSource, ExecPoint, Stop};
use ft_sim::{Machine, MachineConfig};

fn program() -> Option<Vec<u8>> {
    toolchain::have("riscv64-unknown-elf-gcc", "htif")
        .then(|| toolchain::gcc("htif_console.c", &["-march=rv64imc", "-mabi=lp64"]))
}

#[test]
fn putchar_write_and_exit_go_through_htif() {
    let Some(elf) = program() else { return };
    let mut m = Machine::from_elf(MachineConfig::default(), &elf).unwrap();
    let mut out = Vec::new();
    let code = loop {
        match m.run(ExecPoint::at(m.point().count + 1_000_000)).unwrap() {
            Stop::Output(o) => out.push(String::from_utf8_lossy(&o.data).into_owned()),
            Stop::Halted(code) => break code,
            Stop::Reached => assert!(m.point().count < 10_000_000, "no exit"),
            other => panic!("unexpected stop {other:?}"),
        }
    };
    assert_eq!(out, ["hello from putchar\n", "and from SYS_write\n"]);
    assert_eq!(
        code, 7,
        "1: the write's count, 2: -EBADF for fd 7, 4: -ENOSYS for call 1234"
    );
}

#[test]
fn htif_console_output_replicates() {
    let Some(elf) = program() else { return };
    let sim = toolchain::replicated(&elf, 7);
    assert_eq!(sim.primary.stats().outputs, 2);
    assert_eq!(sim.backup.stats().outputs, 2);
}
