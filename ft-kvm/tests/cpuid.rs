//! Whether the host honours a filtered CPUID: the VM's CPUID hides RDRAND; the guest
//! executes CPUID at CPL3 and prints ECX of leaf 1. This test reports, it does not fail:
//! on PVM hosts CPUID is not intercepted and the guest sees the host's value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{EventSource, Stop};
use ft_kvm::guest::UserAsm;
use ft_kvm::machine::{KvmMachine, MachineConfig};
use iced_x86::code_asm::*;

#[test]
fn reports_whether_the_cpuid_filter_is_honoured() {
    if !common::kvm_or_skip("reports_whether_the_cpuid_filter_is_honoured") {
        return;
    }
    let mut u = UserAsm::new().unwrap();
    u.a.mov(eax, 1).unwrap();
    u.a.xor(ecx, ecx).unwrap();
    u.a.cpuid().unwrap();
    u.a.mov(r12d, ecx).unwrap();
    u.print_hex(r12).unwrap();
    u.a.xor(eax, eax).unwrap();
    u.exit_with(rax).unwrap();
    let mut m = KvmMachine::with_workload(MachineConfig::default(), u.finish().unwrap()).unwrap();
    let mut lines = Vec::new();
    for _ in 0..1000 {
        match m.run(m.point().plus(100)).unwrap() {
            Stop::Output(o) => lines.push(String::from_utf8_lossy(&o.data).into_owned()),
            Stop::Halted(_) => break,
            _ => {}
        }
    }
    let leaf1_ecx = lines
        .iter()
        .find_map(|l| u64::from_str_radix(l.trim(), 16).ok())
        .expect("the guest printed ECX");
    let rdrand_visible = leaf1_ecx & (1 << 30) != 0;
    eprintln!(
        "CPUID filter (RDRAND hidden: {}) honoured by this host: {} (guest leaf 1 ECX = {leaf1_ecx:#x})",
        m.vm().cpuid_filter().rdrand_hidden,
        if rdrand_visible { "NO, the guest still sees RDRAND" } else { "yes" }
    );
}
