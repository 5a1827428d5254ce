//! The generated programs' S-mode and paged sections really run translated: on a
//! bare hart with a minimal device stand-in, every program with paged sections
//! retires instructions in S- or U-mode under Sv39, and no fetch, load or store to
//! the identity-mapped regions ever page-faults (a walk bug would make the handler
//! skip them, and replay alone could not tell). The replay property suites then run
//! the same programs record against replay.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use ft_sim::cpu::{csr, Cpu, Mmio, MmioResult, Privilege, StepOutcome, MIP_MTIP};
use ft_sim::devices::{map, reg};
use ft_sim::memory::{Ram, RAM_BASE};
use ft_sim::progen::{generate, Params};

/// Accepts every device access; a timer arm raises MTIP at the next step, its ack
/// lowers it; a write to the exit device ends the run.
#[derive(Default)]
struct Stand {
    armed: bool,
    acked: bool,
    exited: bool,
}

impl Mmio for Stand {
    fn load(&mut self, _addr: u64, _size: u8) -> MmioResult<u64> {
        MmioResult::Ok(0)
    }
    fn store(&mut self, addr: u64, _size: u8, _value: u64) -> MmioResult<()> {
        match addr {
            a if a == map::TIMER + reg::TIMER_ARM => self.armed = true,
            a if a == map::TIMER + reg::TIMER_ACK => self.acked = true,
            a if a == map::EXIT => self.exited = true,
            a if (map::BASE..map::BASE + 8 * map::WINDOW).contains(&a) => {}
            _ => return MmioResult::Fault,
        }
        MmioResult::Ok(())
    }
    fn time(&mut self) -> MmioResult<u64> {
        MmioResult::Ok(0)
    }
}

#[test]
fn paged_sections_retire_translated_instructions_and_never_fault_on_mapped_memory() {
    let mut programs = 0;
    let mut translated = 0u64;
    let mut supervisor = 0u64;
    for seed in prop_support::seeds(0x9a6e_5000, 200) {
        let p = generate(seed, &Params::stream()).unwrap();
        if p.features.paged_sections == 0 {
            continue;
        }
        programs += 1;
        let mut ram = Ram::new(1 << 20);
        ram.write(RAM_BASE, &p.image).unwrap();
        let mut cpu = Cpu::new(RAM_BASE);
        let mut dev = Stand::default();
        let bound = p.instruction_bound(100_000);
        while !dev.exited {
            assert!(cpu.instret() < bound, "seed {seed:#x}: no exit");
            if dev.armed {
                dev.armed = false;
                cpu.set_mip(MIP_MTIP, true);
            }
            if dev.acked {
                dev.acked = false;
                cpu.set_mip(MIP_MTIP, false);
            }
            let (mode, satp) = (cpu.privilege(), cpu.csr(csr::SATP).unwrap());
            match cpu.step(&mut ram, &mut dev) {
                StepOutcome::Retired | StepOutcome::RetiredStop | StepOutcome::RetiredWatch
                    if mode != Privilege::Machine && satp != 0 =>
                {
                    translated += 1;
                    if mode == Privilege::Supervisor {
                        supervisor += 1;
                    }
                }
                StepOutcome::Exception(e) if matches!(e.code(), 12 | 13 | 15) => {
                    let tval = cpu.csr(csr::MTVAL).unwrap();
                    let mapped = (RAM_BASE..RAM_BASE + (1 << 20)).contains(&tval)
                        || (map::BASE..map::BASE + 8 * map::WINDOW).contains(&tval);
                    assert!(
                        !mapped,
                        "seed {seed:#x}: {e:?} at {tval:#x}, which the tables map"
                    );
                }
                StepOutcome::Idle => panic!("seed {seed:#x}: wfi"),
                StepOutcome::TrapLoop => panic!("seed {seed:#x}: trap loop"),
                _ => {}
            }
        }
    }
    assert!(
        programs >= 20,
        "only {programs} programs with paged sections"
    );
    assert!(
        translated > 1000 && supervisor > 100,
        "{translated} translated instructions, {supervisor} in S-mode"
    );
    eprintln!(
        "{programs} programs: {translated} instructions retired translated, {supervisor} in S-mode"
    );
}
