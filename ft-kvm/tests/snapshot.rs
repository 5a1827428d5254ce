//! Snapshots: a running VM saved and restored into a fresh VM continues identically;
//! damaged snapshots are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{AsyncEvent, EventSource, SourceError, Stop};
use ft_kvm::devices::id;
use ft_kvm::guest::{random_workload, WorkloadParams};
use ft_kvm::machine::{KvmMachine, MachineConfig};

/// One deterministic step: run to the next exit and answer what the guest asked for
/// (inputs from a counter, a timer interrupt when idle, an immediate I/O completion).
fn step(m: &mut KvmMachine, n: &mut u64) -> Option<u64> {
    match m.run(m.point().plus(1)).unwrap() {
        Stop::Reached | Stop::Output(_) => {}
        Stop::Input(_) => {
            *n += 1;
            m.supply_input(&(*n * 0x9e37_79b9).to_le_bytes()).unwrap();
        }
        Stop::IoStart(req) => {
            let data = (req.op == ft_kvm::devices::op::DISK_READ)
                .then(|| bytes::Bytes::from(vec![0xab; req.len as usize]));
            m.inject(&AsyncEvent::IoComplete {
                io: req.id,
                status: 0,
                data,
            })
            .unwrap();
        }
        Stop::Idle => m
            .inject(&AsyncEvent::Interrupt { device: id::TIMER })
            .unwrap(),
        Stop::Halted(c) => return Some(c),
    }
    None
}

#[test]
fn snapshot_restored_into_a_fresh_vm_continues_identically() {
    if !common::kvm_or_skip("snapshot_restored_into_a_fresh_vm_continues_identically") {
        return;
    }
    let seed = 11;
    eprintln!("seed {seed}");
    let w = random_workload(seed, &WorkloadParams::default()).unwrap();
    let cfg = MachineConfig::default();
    let mut a = KvmMachine::with_workload(cfg, w.clone()).unwrap();
    let (mut na, mut nb) = (0u64, 0u64);
    for _ in 0..60 {
        assert!(step(&mut a, &mut na).is_none());
    }
    let snap = a.snapshot().unwrap();
    let mut b = KvmMachine::with_workload(cfg, w).unwrap();
    b.restore(&snap).unwrap();
    nb = nb.max(na);
    assert_eq!(a.point(), b.point());
    assert_eq!(a.digest(), b.digest(), "digest right after restore");
    let mut steps = 0;
    loop {
        let ea = step(&mut a, &mut na);
        let eb = step(&mut b, &mut nb);
        steps += 1;
        assert_eq!(a.point(), b.point());
        assert_eq!(a.digest(), b.digest(), "digest after {steps} more steps");
        assert_eq!(ea, eb);
        if ea.is_some() || steps > 5000 {
            break;
        }
    }
    eprintln!("{steps} steps after restore, both at {}", a.point());
    assert_eq!(a.exit_code(), Some(0));
}

#[test]
fn damaged_snapshots_are_refused() {
    if !common::kvm_or_skip("damaged_snapshots_are_refused") {
        return;
    }
    let w = random_workload(3, &WorkloadParams::default()).unwrap();
    let cfg = MachineConfig::default();
    let mut a = KvmMachine::with_workload(cfg, w).unwrap();
    let mut n = 0;
    for _ in 0..10 {
        step(&mut a, &mut n);
    }
    let mut snap = a.snapshot().unwrap();
    let last = snap.len() - 1;
    snap[last] ^= 1;
    assert!(matches!(a.restore(&snap), Err(SourceError::Snapshot(m)) if m.contains("checksum")));
    assert!(matches!(
        a.restore(b"FTSIMSNPxxxxxxxxxxxxxxxxxxxx"),
        Err(SourceError::Snapshot(_))
    ));
    snap[last] ^= 1;
    snap[8] = 99;
    assert!(matches!(a.restore(&snap), Err(SourceError::Snapshot(m)) if m.contains("version")));
}
