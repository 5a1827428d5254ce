//! **Exact mid-stream delivery**: asynchronous events placed between two deterministic
//! exits, where the host can single-step the guest; and the probe that finds out where
//! it can.
//!
//! # The probe
//!
//! [`probe_guest_debug`] runs two tiny guests (cached for the process, so every machine
//! start consults the same answer): one executes three known instructions at CPL0 and
//! then three at CPL3 with `KVM_SET_GUEST_DEBUG` single-step enabled, and reports at
//! which CPLs KVM returned `KVM_EXIT_DEBUG` after each instruction with the right RIP
//! (and the register effects of exactly the instructions before it); the other sets a
//! hardware execute breakpoint at a known instruction at each CPL and reports whether it
//! fired there, and whether it fires again when the vCPU is re-entered at that RIP.
//! On hardware KVM everything works at every CPL. On a software-nested PVM host
//! (`kvm_pvm`), which emulates CPL0 and runs CPL3 natively, single-step and breakpoints
//! work at CPL0 only.
//!
//! # The landmark: `ExecPoint { count, sub }`
//!
//! A machine with mid-stream delivery enabled
//! ([`crate::machine::KvmMachine::enable_midstream`], both sides of a pair alike) runs
//! with single-step enabled all the time. `count` is still the number of deterministic
//! exits (MMIO, PIO, `hlt`); `sub` is the number of single-step debug exits since the
//! last deterministic exit. Every debug exit is a *landmark*: a point where the machine
//! can stop, report its state, and inject an interrupt, exactly as at a deterministic
//! exit. The primary stops at one every `quantum` landmarks without a deterministic exit
//! (preemption, [`crate::machine::KvmMachine::set_preempt_quantum`]), so the recorder
//! polls its world and delivers ready events at `{count, sub}` with `sub > 0`, instead of
//! holding them until the next deterministic exit. The backup's `run(until)` with
//! `until.sub > 0` runs to exit `until.count` and counts debug exits until `sub` equals
//! `until.sub`; it never preempts.
//!
//! ## Why it is exact
//!
//! * The stepping policy is a constant of the machine (on or off, the same on both sides,
//!   carried in snapshots), never a decision taken at run time. So both sides execute the
//!   same guest under the same debug settings, and whatever the host does differently
//!   while stepping (KVM's trap flag visible in pushed RFLAGS, an interrupt handler that
//!   runs unstepped because interrupt delivery clears TF, CPL3 code that a PVM host does
//!   not step) it does the same on both sides.
//! * Whether a debug exit happens after an instruction is a function of the vCPU state
//!   and that constant policy (the host is deterministic in this; the probe checks the
//!   single-step RIPs, and the replay tests check the whole states). So, by the same
//!   induction as for deterministic exits, the k-th debug exit after the c-th
//!   deterministic exit happens at the same architectural state on both sides: `{c, k}`
//!   names one state of the execution, and points are totally ordered by
//!   `(count, sub)` because both counters only grow along the execution.
//! * Injection is decided by the same function at every landmark (line state, and the
//!   `ready_for_interrupt_injection` and IF the exit reported), so an event logged at
//!   `{c, k}` reaches the guest at the same instruction boundary on the backup.
//! * Preemption only chooses where the primary's `run` returns; the guest cannot observe
//!   it (no state is touched, re-entry continues the same single-step sequence).
//! * A replay that cannot reach `{c, k}` (the guest makes its next deterministic exit
//!   after fewer than k debug exits) is a typed error
//!   ([`crate::machine::MachineError::LandmarkUnreachable`] as a backend failure), which
//!   the engine reports loudly. A replay that reaches a point with a different state is
//!   caught by the engine's periodic digest of all registers (including the AVX upper
//!   halves) and all memory: the kernel's timer handler folds the interrupted RIP and RAX
//!   into memory, so an interrupt placed one instruction off changes the digest.
//!
//! ## What it costs, and where it applies
//!
//! One exit per stepped instruction (on a PVM host that means CPL0 code, which is
//! emulated anyway at about 1 µs an instruction). Hence it is an opt-in mode for guests
//! whose latency matters in long exit-free CPL0 stretches; CPL3 code on such hosts is
//! not stepped and keeps deterministic-exit delivery. On hardware KVM the same mode
//! steps every CPL.

use std::sync::OnceLock;

use iced_x86::code_asm::*;

use crate::arch::x86_64::{sel, KERNEL_BASE, KERNEL_STACK_TOP, MIN_MEMORY, USER_BASE};
use crate::devices::map;
use crate::exit::ExitEvent;
use crate::vm::{Vm, VmError};

/// What guest debugging does on this host, found by running guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DebugSupport {
    /// Single-step reports a debug exit after each CPL0 instruction, with the right RIP.
    pub single_step_cpl0: bool,
    /// The same at CPL3.
    pub single_step_cpl3: bool,
    /// A hardware execute breakpoint fires at its CPL0 instruction, before it executes.
    pub hw_breakpoint_cpl0: bool,
    /// The same at CPL3.
    pub hw_breakpoint_cpl3: bool,
    /// Re-entering at a CPL0 breakpoint's RIP with the breakpoint still set fires it again
    /// (so a replayer must disable it and step over it).
    pub hw_breakpoint_retriggers: bool,
}

impl DebugSupport {
    /// Whether single-step works at privilege level `cpl`.
    pub fn single_step_at(&self, cpl: u8) -> bool {
        match cpl {
            0 => self.single_step_cpl0,
            3 => self.single_step_cpl3,
            _ => false,
        }
    }
}

/// Errors of the probe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeGuestError {
    /// The probe VM could not be built or run.
    #[error("probe VM: {0}")]
    Vm(#[from] VmError),
    /// The probe guest could not be assembled.
    #[error("probe guest: {0}")]
    Asm(String),
}

impl From<IcedError> for ProbeGuestError {
    fn from(e: IcedError) -> Self {
        ProbeGuestError::Asm(e.to_string())
    }
}

/// The probe guest: addresses of its instructions.
struct ProbeGuest {
    kernel: Vec<u8>,
    user: Vec<u8>,
    /// CPL0: after `nop`, after the first `inc rax`, after the second.
    k: [u64; 3],
    /// CPL3: the same three.
    u: [u64; 3],
}

fn probe_guest() -> Result<ProbeGuest, ProbeGuestError> {
    let mut a = CodeAssembler::new(64)?;
    let mut l: Vec<CodeLabel> = (0..4).map(|_| a.create_label()).collect();
    a.set_label(&mut l[0])?;
    a.nop()?;
    a.set_label(&mut l[1])?;
    a.inc(rax)?;
    a.set_label(&mut l[2])?;
    a.inc(rax)?;
    a.set_label(&mut l[3])?;
    a.xor(eax, eax)?;
    a.push(i32::from(sel::USER_DS))?;
    a.mov(rbx, USER_BASE + 0x8000)?;
    a.push(rbx)?;
    a.push(0x2i32)?;
    a.push(i32::from(sel::USER_CS))?;
    a.mov(rbx, USER_BASE)?;
    a.push(rbx)?;
    a.iretq()?;
    let kr = a.assemble_options(
        KERNEL_BASE,
        iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let k = [
        kr.label_ip(&l[1])?,
        kr.label_ip(&l[2])?,
        kr.label_ip(&l[3])?,
    ];
    let mut b = CodeAssembler::new(64)?;
    let mut m: Vec<CodeLabel> = (0..4).map(|_| b.create_label()).collect();
    b.set_label(&mut m[0])?;
    b.nop()?;
    b.set_label(&mut m[1])?;
    b.inc(rax)?;
    b.set_label(&mut m[2])?;
    b.inc(rax)?;
    b.set_label(&mut m[3])?;
    b.mov(qword_ptr(map::EXIT), rax)?;
    let ur = b.assemble_options(
        USER_BASE,
        iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let u = [
        ur.label_ip(&m[1])?,
        ur.label_ip(&m[2])?,
        ur.label_ip(&m[3])?,
    ];
    Ok(ProbeGuest {
        kernel: kr.inner.code_buffer,
        user: ur.inner.code_buffer,
        k,
        u,
    })
}

fn probe_vm(g: &ProbeGuest) -> Result<Vm, ProbeGuestError> {
    let mut vm = Vm::new(MIN_MEMORY)?;
    vm.setup_long_mode(KERNEL_BASE, KERNEL_STACK_TOP)?;
    vm.memory_mut()
        .write(KERNEL_BASE, &g.kernel)
        .map_err(VmError::from)?;
    vm.memory_mut()
        .write(USER_BASE, &g.user)
        .map_err(VmError::from)?;
    Ok(vm)
}

/// Run until the next debug exit, skipping exits not caused by the guest; None when the
/// guest made any other exit first (or failed).
fn next_debug(vm: &mut Vm) -> Option<u64> {
    for _ in 0..64 {
        match vm.run() {
            Ok(ExitEvent::Debug { pc, .. }) => return Some(pc),
            Ok(ExitEvent::Interrupted | ExitEvent::IrqWindowOpen) => continue,
            _ => return None,
        }
    }
    None
}

/// Step three known instructions: each debug exit must report the next instruction's
/// RIP, and RAX must count the `inc`s executed so far.
fn steps_match(vm: &mut Vm, expect: &[u64; 3]) -> bool {
    for (i, want) in expect.iter().enumerate() {
        let Some(pc) = next_debug(vm) else {
            return false;
        };
        let Ok(r) = vm.regs() else {
            return false;
        };
        if pc != *want || r.rip != *want || r.rax != i as u64 {
            return false;
        }
    }
    true
}

/// Single-step the probe kernel until it reaches the workload's first instruction (after
/// its `iretq` to CPL3), at most 64 steps; whether it got there by debug exits.
fn step_to_user(vm: &mut Vm) -> bool {
    for _ in 0..64 {
        if next_debug(vm).is_none() {
            return false;
        }
        if vm.regs().is_ok_and(|r| r.rip == USER_BASE) {
            return true;
        }
    }
    false
}

fn probe_uncached() -> Result<DebugSupport, ProbeGuestError> {
    let g = probe_guest()?;
    let mut s = DebugSupport::default();

    // Single-step at CPL0, then (if the kernel part can be stepped to the iretq) at CPL3.
    let mut vm = probe_vm(&g)?;
    vm.set_guest_debug(true, None)?;
    s.single_step_cpl0 = steps_match(&mut vm, &g.k);
    if s.single_step_cpl0 && step_to_user(&mut vm) {
        s.single_step_cpl3 = steps_match(&mut vm, &g.u);
    } else if !s.single_step_cpl0 {
        // Without CPL0 stepping, reach CPL3 by a breakpoint-free run and test there.
        let mut vm = probe_vm(&g)?;
        vm.set_guest_debug(false, Some(USER_BASE))?;
        if next_debug(&mut vm) == Some(USER_BASE) {
            vm.set_guest_debug(true, None)?;
            s.single_step_cpl3 = steps_match(&mut vm, &g.u);
        }
    }

    // Hardware breakpoint at the second CPL0 `inc` (RAX must be 1: one `inc` ran).
    let mut vm = probe_vm(&g)?;
    vm.set_guest_debug(false, Some(g.k[1]))?;
    let hit = next_debug(&mut vm) == Some(g.k[1]);
    s.hw_breakpoint_cpl0 = hit && vm.regs().is_ok_and(|r| r.rip == g.k[1] && r.rax == 1);
    if s.hw_breakpoint_cpl0 {
        s.hw_breakpoint_retriggers = next_debug(&mut vm) == Some(g.k[1]);
    }
    // Hardware breakpoint at the second CPL3 `inc`.
    let mut vm = probe_vm(&g)?;
    vm.set_guest_debug(false, Some(g.u[1]))?;
    let hit = next_debug(&mut vm) == Some(g.u[1]);
    s.hw_breakpoint_cpl3 = hit && vm.regs().is_ok_and(|r| r.rip == g.u[1] && r.rax == 1);
    Ok(s)
}

/// What guest debugging does on this host, probed once per process by running the
/// probe guests (see the module docs).
pub fn probe_guest_debug() -> Result<DebugSupport, ProbeGuestError> {
    static CACHE: OnceLock<Result<DebugSupport, ProbeGuestError>> = OnceLock::new();
    CACHE.get_or_init(probe_uncached).clone()
}
