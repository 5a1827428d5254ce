//! Exact mid-stream delivery at CPL0: workloads with long exit-free CPL0 loops, timer
//! interrupts delivered at random single-step landmarks `{count, sub > 0}` on the
//! primary, and a backup that reaches the same landmarks in the same full state (RIP and
//! a digest of all registers at every landmark; all memory at every checkpoint) and
//! produces the same outputs. Seeded: every seed is printed, and a failing seed reruns
//! alone with `FT_KVM_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ft_core::{AsyncEvent, EventSource, ExecPoint, Stop};
use ft_kvm::devices::id;
use ft_kvm::guest::{random_workload, SplitMix, UserAsm, WorkloadParams, WorkloadPrivilege};
use ft_kvm::machine::{KvmMachine, MachineConfig};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("FT_KVM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => default.to_vec(),
    }
}

/// A CPL0 workload: `loops` exit-free compute loops of `iters` iterations (about 5
/// instructions each), each followed by a console line with the running hash and the
/// tick count, then the hash and exit 0.
fn cpl0_loops(loops: u32, iters: u32) -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut u = UserAsm::new().unwrap();
    u.a.mov(r15, 0x1234_5678u64).unwrap();
    u.a.mov(r13d, loops).unwrap();
    let mut outer = u.a.create_label();
    u.a.set_label(&mut outer).unwrap();
    u.a.mov(r14d, iters).unwrap();
    let mut l = u.a.create_label();
    u.a.set_label(&mut l).unwrap();
    u.a.rol(r15, 7).unwrap();
    u.a.xor(r15, r14).unwrap();
    u.a.add(r15, r13).unwrap();
    u.a.dec(r14).unwrap();
    u.a.jnz(l).unwrap();
    u.read_ticks(rax).unwrap();
    u.a.add(r15, rax).unwrap();
    u.print_hex(r15).unwrap();
    u.a.dec(r13).unwrap();
    u.a.jnz(outer).unwrap();
    u.print(b"ticks ").unwrap();
    u.read_ticks(rax).unwrap();
    u.print_hex(rax).unwrap();
    u.a.xor(eax, eax).unwrap();
    u.exit_with(rax).unwrap();
    u.finish().unwrap()
}

fn cpl0_machine(w: &[u8]) -> KvmMachine {
    let mut m = KvmMachine::with_workload_at(
        MachineConfig::default(),
        w.to_vec(),
        WorkloadPrivilege::Kernel,
    )
    .unwrap();
    m.enable_midstream().unwrap();
    m
}

fn cpl0_available(test: &str) -> bool {
    if !common::kvm_or_skip(test) {
        return false;
    }
    let d = ft_kvm::midstream::probe_guest_debug().unwrap();
    eprintln!("guest debug support: {d:?}");
    assert!(d.single_step_cpl0, "no single-step at CPL0 on this host");
    true
}

/// What the driver answers at a stop; the same answers on both sides.
fn answer(m: &mut KvmMachine, stop: &Stop, n: &mut u64, outs: &mut Vec<Vec<u8>>) -> bool {
    match stop {
        Stop::Input(_) => {
            *n += 1;
            m.supply_input(&(*n * 0x9e37_79b9).to_le_bytes()).unwrap();
        }
        Stop::Output(o) => outs.push(o.data.to_vec()),
        Stop::Idle => m
            .inject(&AsyncEvent::Interrupt { device: id::TIMER })
            .unwrap(),
        Stop::IoStart(req) => m
            .inject(&AsyncEvent::IoComplete {
                io: req.id,
                status: 0,
                data: None,
            })
            .unwrap(),
        Stop::Reached => {}
        Stop::Halted(_) => return true,
    }
    false
}

/// One landmark where the primary delivered an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Landmark {
    point: ExecPoint,
    rip: u64,
    vcpu: u64,
}

#[test]
fn interrupts_at_random_landmarks_replay_exactly() {
    if !cpl0_available("interrupts_at_random_landmarks_replay_exactly") {
        return;
    }
    for seed in seeds(&[1, 2, 3]) {
        let mut g = SplitMix::new(seed);
        let w = cpl0_loops(6, 200 + g.below(400) as u32);
        // Primary: preempted every `quantum` landmarks; an interrupt at a random share of
        // the preemption points. Every stop and delivery is recorded with its point.
        let mut p = cpl0_machine(&w);
        p.set_preempt_quantum(Some(40 + g.below(400)));
        let (mut np, mut outp) = (0u64, Vec::new());
        let mut log: Vec<(ExecPoint, Option<Stop>, Option<Landmark>)> = Vec::new();
        let mut stops = 0;
        loop {
            stops += 1;
            assert!(stops < 200_000, "seed {seed}: primary does not finish");
            let stop = p.run(p.point().plus(1_000_000)).unwrap();
            let at = p.point();
            if stop == Stop::Reached && at.sub > 0 && g.below(3) == 0 {
                let lm = Landmark {
                    point: at,
                    rip: p.vm().regs().unwrap().rip,
                    vcpu: p.vcpu_digest(),
                };
                p.inject(&AsyncEvent::Interrupt { device: id::TIMER })
                    .unwrap();
                log.push((at, None, Some(lm)));
                continue;
            }
            let done = answer(&mut p, &stop, &mut np, &mut outp);
            if stop != Stop::Reached {
                log.push((at, Some(stop), None));
            }
            if done {
                break;
            }
        }
        let ps = p.stats().clone();
        eprintln!(
            "seed {seed}: primary {} exits, {} landmarks, {} preemptions, {} interrupts at landmarks, {} injected mid-stream, {} outputs",
            p.point().count,
            ps.steps,
            ps.preemptions,
            log.iter().filter(|e| e.2.is_some()).count(),
            ps.midstream_injections,
            outp.len()
        );
        assert!(
            ps.midstream_injections > 0,
            "seed {seed}: nothing delivered mid-stream"
        );

        // Backup: run to each logged point, check the landmark, apply the same answer.
        let mut b = cpl0_machine(&w);
        let (mut nb, mut outb) = (0u64, Vec::new());
        for (at, stop, lm) in &log {
            if let Some(lm) = lm {
                let s = b.run(*at).unwrap();
                assert_eq!(s, Stop::Reached, "seed {seed}: run to {at}");
                assert_eq!(b.point(), *at, "seed {seed}");
                let rip = b.vm().regs().unwrap().rip;
                assert_eq!(rip, lm.rip, "seed {seed}: RIP at landmark {at}");
                assert_eq!(b.vcpu_digest(), lm.vcpu, "seed {seed}: vCPU state at {at}");
                b.inject(&AsyncEvent::Interrupt { device: id::TIMER })
                    .unwrap();
            } else if let Some(stop) = stop {
                // A synchronous stop: one exit past its point, as the replayer runs.
                let s = b.run(at.plus(1)).unwrap();
                assert_eq!(&s, stop, "seed {seed}: stop at {at}");
                answer(&mut b, &s, &mut nb, &mut outb);
            }
        }
        assert_eq!(outp, outb, "seed {seed}: outputs differ");
        assert_eq!(p.digest(), b.digest(), "seed {seed}: final digests differ");
        assert_eq!(b.stats().midstream_injections, ps.midstream_injections);
    }
}

#[test]
fn engine_pair_replays_midstream_interrupts_to_identical_states() {
    if !cpl0_available("engine_pair_replays_midstream_interrupts_to_identical_states") {
        return;
    }
    for seed in seeds(&[11, 12, 13]) {
        let mut g = SplitMix::new(seed ^ 0x77);
        let params = WorkloadParams {
            blocks: 10,
            max_iters: 300,
            sleeps: false,
            ..WorkloadParams::default()
        };
        let w = random_workload(seed, &params).unwrap();
        let w = if seed % 2 == 0 { w } else { cpl0_loops(4, 300) };
        let mut irqs: Vec<u64> = (0..12).map(|_| 1 + g.below(6_000_000)).collect();
        irqs.sort_unstable();
        let mut pm = cpl0_machine(&w);
        pm.set_preempt_quantum(Some(30 + g.below(200)));
        let bm = cpl0_machine(&w);
        let (mut pair, sink) = common::kvm_pair_of(pm, bm, seed, &irqs);
        let done = pair.run_until(400_000, |p| {
            p.replay_complete() || !p.trace().errors.is_empty()
        });
        let t = pair.trace().clone();
        assert!(
            t.errors.is_empty(),
            "seed {seed}: engine errors {:?}",
            t.errors
        );
        assert!(done, "seed {seed}: did not finish");
        assert_eq!(pair.primary.exit_code(), Some(0), "seed {seed}");
        assert_eq!(
            pair.primary.source_mut().digest(),
            pair.backup.source_mut().digest(),
            "seed {seed}: final digests differ"
        );
        let primary_out = common::released(&sink, "primary");
        let backup_out: Vec<String> = pair
            .backup
            .world()
            .replayed_outputs()
            .iter()
            .map(|o| String::from_utf8_lossy(&o.data).into_owned())
            .collect();
        assert_eq!(primary_out, backup_out, "seed {seed}: outputs differ");
        let mid = t.records.iter().filter(|r| r.point.sub > 0).count();
        let ps = pair.primary.source().stats().clone();
        eprintln!(
            "seed {seed}: {} records ({mid} at mid-stream points), {} digests checked, {} landmarks, {} injected mid-stream of {}",
            t.records.len(),
            pair.backup.stats().digests_checked,
            ps.steps,
            ps.midstream_injections,
            ps.injections
        );
        assert!(pair.backup.stats().digests_checked > 0, "seed {seed}");
        assert_eq!(
            pair.backup.source().stats().midstream_injections,
            ps.midstream_injections,
            "seed {seed}"
        );
    }
}

#[test]
fn an_unreachable_landmark_is_a_typed_error() {
    if !cpl0_available("an_unreachable_landmark_is_a_typed_error") {
        return;
    }
    let w = cpl0_loops(1, 10);
    let mut m = cpl0_machine(&w);
    // Epoch 0 ends at the kernel's first console byte, long before a billion steps.
    let e = m
        .run(ExecPoint {
            count: 0,
            sub: 1_000_000_000,
        })
        .unwrap_err();
    eprintln!("{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    // A machine without mid-stream delivery refuses mid-stream points.
    let mut plain = KvmMachine::with_workload(MachineConfig::default(), w).unwrap();
    let e = plain.run(ExecPoint { count: 0, sub: 5 }).unwrap_err();
    assert!(e.to_string().contains("mid-stream delivery is off"), "{e}");
}

#[test]
fn midstream_snapshot_continues_identically() {
    if !cpl0_available("midstream_snapshot_continues_identically") {
        return;
    }
    let w = cpl0_loops(3, 300);
    let mut a = cpl0_machine(&w);
    a.set_preempt_quantum(Some(97));
    // Stop at a mid-stream landmark.
    let mut n = 0;
    let mut outs = Vec::new();
    loop {
        let s = a.run(a.point().plus(1_000_000)).unwrap();
        if s == Stop::Reached && a.point().sub > 0 && a.point().count > 40 {
            break;
        }
        assert!(!answer(&mut a, &s, &mut n, &mut outs));
    }
    let snap = a.snapshot().unwrap();
    let mut b = KvmMachine::with_workload_at(
        MachineConfig::default(),
        w.clone(),
        WorkloadPrivilege::Kernel,
    )
    .unwrap();
    b.restore(&snap).unwrap();
    assert!(b.midstream());
    assert_eq!(a.point(), b.point());
    assert_eq!(a.digest(), b.digest());
    a.set_preempt_quantum(None);
    let (mut na, mut nb, mut oa, mut ob) = (n, n, Vec::new(), Vec::new());
    let target = ExecPoint {
        count: a.point().count + 5,
        sub: 3,
    };
    for (m, nn, o) in [(&mut a, &mut na, &mut oa), (&mut b, &mut nb, &mut ob)] {
        loop {
            let s = m.run(target).unwrap();
            answer(m, &s, nn, o);
            if m.point() == target {
                break;
            }
        }
    }
    assert_eq!(oa, ob);
    assert_eq!(a.digest(), b.digest(), "after continuing to {target}");
}

#[test]
fn snapshot_keeps_avx_state() {
    if !common::kvm_or_skip("snapshot_keeps_avx_state") {
        return;
    }
    let w = cpl0_loops(1, 10);
    let cfg = MachineConfig::default();
    let a = KvmMachine::with_workload(cfg, w.clone()).unwrap();
    let Some(mut x) = a.vm().xsave().unwrap() else {
        eprintln!("SKIP snapshot_keeps_avx_state: the host has no XSAVE");
        return;
    };
    // Mark YMM_Hi128 in use and give YMM0-15 distinct upper halves.
    x[128] |= 0b111;
    for (i, w) in x[144..144 + 64].iter_mut().enumerate() {
        *w = 0xa5a5_0000 | i as u32;
    }
    if let Err(e) = a.vm().set_xsave(&x) {
        eprintln!("SKIP snapshot_keeps_avx_state: the host refused AVX state ({e})");
        return;
    }
    let mut a = a;
    let before = ft_kvm::machine::avx_upper_halves(&a.vm().xsave().unwrap().unwrap());
    assert!(before.iter().any(|b| *b != 0), "AVX state did not stick");
    let snap = a.snapshot().unwrap();
    let mut b = KvmMachine::with_workload(cfg, w.clone()).unwrap();
    let mut c = KvmMachine::with_workload(cfg, w).unwrap();
    assert_ne!(
        a.digest(),
        c.digest(),
        "the digest does not cover AVX state"
    );
    b.restore(&snap).unwrap();
    let after = ft_kvm::machine::avx_upper_halves(&b.vm().xsave().unwrap().unwrap());
    assert_eq!(before, after, "AVX upper halves lost in the snapshot");
    assert_eq!(a.digest(), b.digest());
    // Old-version snapshots are refused by version, not misread.
    let mut old = snap.clone();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert!(c.restore(&old).is_err());
    // Both continue alike.
    let (ra, rb) = (a.run(a.point().plus(3)), b.run(b.point().plus(3)));
    assert_eq!(ra, rb);
    assert_eq!(a.digest(), b.digest());
}
