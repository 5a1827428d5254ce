//! Live-clone cost on KVM: a 256 MiB VM whose CPL3 workload keeps writing a working set
//! of 0, 1 and 8 MiB ([`dirtier_workload`]) runs alone; a fresh VM connects over the
//! authenticated TCP link on loopback and is cloned from it while it runs (KVM's dirty
//! log). The same measurement as `cargo bench -p ft-sim --bench clone` (the harness is
//! shared: `ft-sim/benches/clone_tcp`; see there and in that bench what each figure
//! means), without QEMU's side.
//!
//! One line per working set (medians of `FT_CLONE_BENCH_RUNS` clones, default 5):
//! `clone-kvm: mem_mib=256 ws_mib=W rounds=R bytes=B total_ms=T pause_ms=P pause_to_confirmed_ms=C`
//!
//! Without a usable `/dev/kvm` it prints a SKIP line. Run:
//! `cargo bench -p ft-kvm --bench clone`

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

#[path = "../../ft-sim/benches/clone_tcp/mod.rs"]
mod clone_tcp;

use clone_tcp::{median, FtRun};
use ft_kvm::guest::{dirtier_workload, DIRTY_BASE};
use ft_kvm::machine::{KvmMachine, MachineConfig};

const MEM_MIB: usize = 256;

fn machine(ws_mib: u64) -> KvmMachine {
    let w = dirtier_workload(ws_mib << 20).unwrap();
    assert!(DIRTY_BASE + (ws_mib << 20) < (MEM_MIB as u64) << 20);
    let cfg = MachineConfig {
        mem_size: MEM_MIB << 20,
        ..MachineConfig::default()
    };
    KvmMachine::with_workload(cfg, w).unwrap()
}

fn main() {
    if !std::path::Path::new("/dev/kvm").exists() || ft_kvm::probe().is_err() {
        println!("SKIP clone-kvm: no usable /dev/kvm on this host");
        return;
    }
    let runs = clone_tcp::runs("FT_CLONE_BENCH_RUNS", 5);
    for ws in [0u64, 1, 8] {
        // Slices of 64 deterministic exits (the workload makes one per pass).
        let r: Vec<FtRun> = (0..runs)
            .map(|_| clone_tcp::measure(move || machine(ws), 64, 50))
            .collect();
        let m = |f: fn(&FtRun) -> f64| median(r.iter().map(f).collect());
        println!(
            "clone-kvm: mem_mib={MEM_MIB} ws_mib={ws} rounds={} bytes={} total_ms={:.1} pause_ms={:.2} pause_to_confirmed_ms={:.1}",
            m(|x| f64::from(x.rounds)),
            m(|x| x.bytes as f64),
            m(|x| x.total_ms),
            m(|x| x.pause_ms),
            m(|x| x.confirm_ms)
        );
    }
}
