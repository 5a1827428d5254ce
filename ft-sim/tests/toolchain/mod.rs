//! What the tests that build guests with the GNU RISC-V toolchain share.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use ft_core::{EventSource, ExecPoint, Stop};
use ft_sim::Machine;

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
