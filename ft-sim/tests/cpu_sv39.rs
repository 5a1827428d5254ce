//! Sv39: the page walk with 4 KiB pages, megapages and gigapages; permissions (R, W,
//! X, U with SUM and MXR); A and D set by the walk; the page faults and access
//! faults with their causes and `tval`; MPRV; instructions and data across page
//! boundaries; `satp`'s WARL rules; and a page fault delegated to S-mode.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ft_sim::asm::*;
use ft_sim::cpu::*;
use ft_sim::memory::{Ram, RAM_BASE};

const RAM_SIZE: usize = 4 << 20;
/// Page tables are allocated from here.
const TABLES: u64 = RAM_BASE + 0x20_0000;
const M_HANDLER: u64 = RAM_BASE + 0x1000;

const V: u64 = 1;
const R: u64 = 1 << 1;
const W: u64 = 1 << 2;
const X: u64 = 1 << 3;
const U: u64 = 1 << 4;
const A: u64 = 1 << 6;
const D: u64 = 1 << 7;

struct Tables {
    root: u64,
    next: u64,
}

impl Tables {
    fn new(ram: &mut Ram) -> Tables {
        let t = Tables {
            root: TABLES,
            next: TABLES + 0x1000,
        };
        ram.write(TABLES, &[0; 4096]).unwrap();
        t
    }

    /// Maps `va` to `pa` at `level` (0: 4 KiB, 1: 2 MiB, 2: 1 GiB) with `flags`.
    /// Returns the leaf PTE's address.
    fn map(&mut self, ram: &mut Ram, va: u64, pa: u64, level: u32, flags: u64) -> u64 {
        let mut table = self.root;
        for l in (level + 1..3).rev() {
            let slot = table + ((va >> (12 + 9 * l)) & 0x1FF) * 8;
            let pte = ram.load_u64(slot).unwrap();
            table = if pte & V != 0 {
                (pte >> 10) << 12
            } else {
                let t = self.next;
                self.next += 0x1000;
                ram.write(t, &[0; 4096]).unwrap();
                ram.store_u64(slot, ((t >> 12) << 10) | V).unwrap();
                t
            };
        }
        let slot = table + ((va >> (12 + 9 * level)) & 0x1FF) * 8;
        ram.store_u64(slot, ((pa >> 12) << 10) | flags | V).unwrap();
        slot
    }

    fn satp(&self) -> u64 {
        (8 << 60) | (self.root >> 12)
    }
}

/// A hart in `mode` with Sv39 on, `code` at physical `code_pa` mapped at virtual
/// `code_va` (R X, U as `mode` needs), an M-mode handler that counts traps in `s10`
/// and skips the instruction.
fn boot(mode: Privilege, code: &Assembler, code_va: u64) -> (Cpu, Ram, Tables) {
    let mut ram = Ram::new(RAM_SIZE);
    let code_pa = RAM_BASE + 0x10_0000;
    ram.write(code_pa, &code.finish().unwrap()).unwrap();
    let mut m = Assembler::with_base(M_HANDLER);
    m.addi(S10, S10, 1)
        .csrr(T6, csr::MEPC)
        .addi(T6, T6, 4)
        .csrw(csr::MEPC, T6)
        .mret();
    ram.write(M_HANDLER, &m.finish().unwrap()).unwrap();
    let mut t = Tables::new(&mut ram);
    let u = if mode == Privilege::User { U } else { 0 };
    t.map(&mut ram, code_va, code_pa, 0, R | X | u);
    let mut cpu = Cpu::new(code_va);
    cpu.set_csr(csr::MTVEC, M_HANDLER).unwrap();
    cpu.set_csr(csr::SATP, t.satp()).unwrap();
    cpu.set_privilege(mode);
    (cpu, ram, t)
}

fn step(cpu: &mut Cpu, ram: &mut Ram) -> StepOutcome {
    cpu.step(ram, &mut NoMmio)
}

const CODE_VA: u64 = 0x40_0000;
const DATA_VA: u64 = 0x7000_0000;
const DATA_PA: u64 = RAM_BASE + 0x30_0000;

/// One load (`ld a0, 0(a1)`) or store (`sd a2, 0(a1)`) at `va` in `mode`, with the
/// data page mapped by `map`; returns the outcome and the hart.
fn access(
    mode: Privilege,
    store: bool,
    va: u64,
    mstatus: u64,
    map: impl FnOnce(&mut Ram, &mut Tables),
) -> (StepOutcome, Cpu, Ram) {
    let mut a = Assembler::new();
    if store {
        a.sd(A2, A1, 0);
    } else {
        a.ld(A0, A1, 0);
    }
    let (mut cpu, mut ram, mut t) = boot(mode, &a, CODE_VA);
    ram.store_u64(DATA_PA + (va & 0xFF8), 0xABCD).unwrap();
    map(&mut ram, &mut t);
    cpu.set_csr(csr::MSTATUS, mstatus).unwrap();
    cpu.set_reg(A1, va);
    cpu.set_reg(A2, 0x1122_3344_5566_7788);
    let out = step(&mut cpu, &mut ram);
    (out, cpu, ram)
}

#[test]
fn loads_and_stores_translate_through_pages_of_every_size() {
    // (level, va, pa base): a 4 KiB page, a 2 MiB megapage, a 1 GiB gigapage.
    for (level, va, pa) in [
        (0u32, DATA_VA + 0x18, DATA_PA),
        (1, 0x20_0000 * 7 + 0x1_2340, RAM_BASE + 0x20_0000),
        (2, 0x1_4000_0000 + 0x4_5678, RAM_BASE),
    ] {
        let mut a = Assembler::new();
        a.ld(A0, A1, 0).sd(A2, A1, 8);
        let (mut cpu, mut ram, mut t) = boot(Privilege::Supervisor, &a, CODE_VA);
        let mask = (1u64 << (12 + 9 * level)) - 1;
        let leaf = t.map(&mut ram, va & !mask, pa, level, R | W);
        let target = pa + (va & mask);
        ram.store_u64(target, 0xFEED).unwrap();
        cpu.set_reg(A1, va);
        cpu.set_reg(A2, 0xBEEF);
        assert_eq!(
            step(&mut cpu, &mut ram),
            StepOutcome::Retired,
            "level {level}"
        );
        assert_eq!(cpu.reg(A0), 0xFEED, "level {level}");
        let pte = ram.load_u64(leaf).unwrap();
        assert_eq!(pte & (A | D), A, "a load sets A only");
        assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
        assert_eq!(ram.load_u64(target + 8).unwrap(), 0xBEEF);
        assert_eq!(
            ram.load_u64(leaf).unwrap() & (A | D),
            A | D,
            "a store sets D"
        );
    }
}

#[test]
fn permissions_give_page_faults_with_the_virtual_address() {
    use Exception::*;
    use Privilege::*;
    let va = DATA_VA + 0x40;
    // (mode, store, flags, mstatus, expected)
    let cases: &[(Privilege, bool, u64, u64, Option<Exception>)] = &[
        (Supervisor, false, R, 0, None),
        (Supervisor, false, W | X, 0, Some(LoadPageFault)), // W without R is reserved
        (Supervisor, false, X, 0, Some(LoadPageFault)),
        (Supervisor, false, X, MSTATUS_MXR, None),
        (Supervisor, true, R, 0, Some(StorePageFault)),
        (Supervisor, true, R | W, 0, None),
        (Supervisor, false, R | U, 0, Some(LoadPageFault)),
        (Supervisor, false, R | U, MSTATUS_SUM, None),
        (Supervisor, true, R | W | U, MSTATUS_SUM, None),
        (User, false, R, 0, Some(LoadPageFault)),
        (User, false, R | U, 0, None),
        (User, true, R | U, 0, Some(StorePageFault)),
        (User, true, R | W | U, 0, None),
    ];
    for &(mode, store, flags, mstatus, want) in cases {
        let (out, cpu, _) = access(mode, store, va, mstatus, |ram, t| {
            t.map(ram, DATA_VA, DATA_PA, 0, flags);
        });
        match want {
            None => {
                assert_eq!(
                    out,
                    StepOutcome::Retired,
                    "{mode:?} store={store} {flags:#x}"
                );
                if !store {
                    assert_eq!(cpu.reg(A0), 0xABCD);
                }
            }
            Some(e) => {
                assert_eq!(
                    out,
                    StepOutcome::Exception(e),
                    "{mode:?} store={store} {flags:#x}"
                );
                assert_eq!(cpu.csr(csr::MCAUSE), Some(e.code()));
                assert_eq!(cpu.csr(csr::MTVAL), Some(va));
                assert_eq!(cpu.csr(csr::MEPC), Some(CODE_VA));
            }
        }
    }
}

#[test]
fn malformed_tables_fault() {
    use Exception::*;
    let va = DATA_VA + 8;
    // Not mapped at all.
    let (out, ..) = access(Privilege::Supervisor, false, va, 0, |_, _| {});
    assert_eq!(out, StepOutcome::Exception(LoadPageFault));
    // Reserved high bits (no Svpbmt, no Svnapot).
    let (out, ..) = access(Privilege::Supervisor, false, va, 0, |ram, t| {
        let leaf = t.map(ram, DATA_VA, DATA_PA, 0, R);
        let pte = ram.load_u64(leaf).unwrap();
        ram.store_u64(leaf, pte | (1 << 61)).unwrap();
    });
    assert_eq!(out, StepOutcome::Exception(LoadPageFault));
    // A misaligned megapage.
    let (out, ..) = access(Privilege::Supervisor, false, va, 0, |ram, t| {
        t.map(ram, DATA_VA & !0x1F_FFFF, DATA_PA + 0x1000, 1, R);
    });
    assert_eq!(out, StepOutcome::Exception(LoadPageFault));
    // A pointer at level 0.
    let (out, ..) = access(Privilege::Supervisor, true, va, 0, |ram, t| {
        t.map(ram, DATA_VA, DATA_PA, 0, 0);
    });
    assert_eq!(out, StepOutcome::Exception(StorePageFault));
    // A non-canonical address (bit 39 differs from bit 38).
    let (out, cpu, _) = access(Privilege::Supervisor, false, 1 << 39, 0, |_, _| {});
    assert_eq!(out, StepOutcome::Exception(LoadPageFault));
    assert_eq!(cpu.csr(csr::MTVAL), Some(1 << 39));
    // A table outside RAM: an access fault.
    let (out, ..) = access(Privilege::Supervisor, false, va, 0, |ram, t| {
        let slot = t.root + ((DATA_VA >> 30) & 0x1FF) * 8;
        ram.store_u64(slot, ((0x1000_0000u64 >> 12) << 10) | V)
            .unwrap();
    });
    assert_eq!(out, StepOutcome::Exception(LoadAccessFault));
}

#[test]
fn fetches_need_x_and_the_right_u_bit() {
    let mut a = Assembler::new();
    a.nop();
    for (mode, flags, ok) in [
        (Privilege::Supervisor, R | X, true),
        (Privilege::Supervisor, R, false),
        (Privilege::Supervisor, R | X | U, false),
        (Privilege::User, R | X, false),
        (Privilege::User, X | U, true),
    ] {
        let (mut cpu, mut ram, mut t) = boot(mode, &a, CODE_VA);
        t.map(&mut ram, CODE_VA, RAM_BASE + 0x10_0000, 0, flags);
        if flags & U != 0 && mode == Privilege::Supervisor {
            // Even SUM does not let S-mode execute a U page.
            cpu.set_csr(csr::MSTATUS, MSTATUS_SUM).unwrap();
        }
        let want = if ok {
            StepOutcome::Retired
        } else {
            StepOutcome::Exception(Exception::InstructionPageFault)
        };
        assert_eq!(step(&mut cpu, &mut ram), want, "{mode:?} {flags:#x}");
        if !ok {
            assert_eq!(cpu.csr(csr::MTVAL), Some(CODE_VA));
        }
    }
}

#[test]
fn mprv_makes_m_mode_data_accesses_translate_but_not_its_fetches() {
    let mut a = Assembler::new();
    a.ld(A0, A1, 0);
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(RAM_BASE, &a.finish().unwrap()).unwrap();
    let mut t = Tables::new(&mut ram);
    t.map(&mut ram, DATA_VA, DATA_PA, 0, R);
    ram.store_u64(DATA_PA, 77).unwrap();
    for (mstatus, want) in [
        (MSTATUS_MPRV | (1 << 11), Some(77)), // as S
        (0, None),                            // M: the address is physical (no RAM there)
        (MSTATUS_MPRV | (3 << 11), None),     // MPP = M: no translation
    ] {
        let mut cpu = Cpu::new(RAM_BASE);
        cpu.set_csr(csr::MTVEC, M_HANDLER).unwrap();
        cpu.set_csr(csr::SATP, t.satp()).unwrap();
        cpu.set_csr(csr::MSTATUS, mstatus).unwrap();
        cpu.set_reg(A1, DATA_VA);
        let out = cpu.step(&mut ram.clone(), &mut NoMmio);
        match want {
            Some(v) => {
                assert_eq!(out, StepOutcome::Retired);
                assert_eq!(cpu.reg(A0), v);
            }
            None => assert_eq!(out, StepOutcome::Exception(Exception::LoadAccessFault)),
        }
    }
}

#[test]
fn an_instruction_across_two_pages_fetches_both() {
    // `addi a0, a0, 0x123` split over the end of one virtual page and the start of the
    // next, mapped to physical pages that are not adjacent.
    let inst = addi(A0, A0, 0x123).unwrap();
    let va = CODE_VA + 0xFFE;
    let (pa1, pa2) = (RAM_BASE + 0x10_0000, RAM_BASE + 0x15_0000);
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(pa1 + 0xFFE, &inst.to_le_bytes()[..2]).unwrap();
    ram.write(pa2, &inst.to_le_bytes()[2..]).unwrap();
    ram.write(RAM_BASE + 0x10_1000, &[0xFF; 2]).unwrap(); // what a physical fetch would see
    let mut t = Tables::new(&mut ram);
    t.map(&mut ram, CODE_VA, pa1, 0, R | X);
    let mut cpu = Cpu::new(va);
    cpu.set_csr(csr::MTVEC, M_HANDLER).unwrap();
    cpu.set_csr(csr::SATP, t.satp()).unwrap();
    cpu.set_privilege(Privilege::Supervisor);
    // The second page is not mapped yet: the fault names the second half.
    assert_eq!(
        cpu.clone().step(&mut ram.clone(), &mut NoMmio),
        StepOutcome::Exception(Exception::InstructionPageFault)
    );
    let mut probe = cpu.clone();
    probe.step(&mut ram.clone(), &mut NoMmio);
    assert_eq!(probe.csr(csr::MTVAL), Some(va + 2));
    assert_eq!(probe.csr(csr::MEPC), Some(va));
    t.map(&mut ram, CODE_VA + 0x1000, pa2, 0, R | X);
    cpu.set_reg(A0, 1);
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    assert_eq!(cpu.reg(A0), 0x124);
    assert_eq!(cpu.pc(), CODE_VA + 0x1002);
}

#[test]
fn data_across_pages_completes_when_adjacent_and_traps_as_misaligned_when_not() {
    for (adjacent, want) in [
        (true, StepOutcome::Retired),
        (
            false,
            StepOutcome::Exception(Exception::LoadAddressMisaligned),
        ),
    ] {
        let va = DATA_VA + 0xFFC;
        let (out, cpu, _) = access(Privilege::Supervisor, false, va, 0, |ram, t| {
            t.map(ram, DATA_VA, DATA_PA, 0, R);
            let second = if adjacent {
                DATA_PA + 0x1000
            } else {
                DATA_PA + 0x5000
            };
            t.map(ram, DATA_VA + 0x1000, second, 0, R);
            ram.store_u64(DATA_PA + 0xFF8, 0x4433_2211_0000_0000)
                .unwrap();
            ram.store_u32(DATA_PA + 0x1000, 0x8877_6655).unwrap();
        });
        assert_eq!(out, want, "adjacent={adjacent}");
        if adjacent {
            assert_eq!(cpu.reg(A0), 0x8877_6655_4433_2211);
        } else {
            assert_eq!(cpu.csr(csr::MTVAL), Some(va));
        }
    }
}

#[test]
fn atomics_translate_as_stores_and_lr_as_a_load() {
    let mut a = Assembler::new();
    a.amoadd_d(A0, A2, A1);
    let (mut cpu, mut ram, mut t) = boot(Privilege::Supervisor, &a, CODE_VA);
    t.map(&mut ram, DATA_VA, DATA_PA, 0, R);
    cpu.set_reg(A1, DATA_VA);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::StorePageFault)
    );
    let mut a = Assembler::new();
    a.lr_d(A0, A1).sc_d(A3, A2, A1);
    let (mut cpu, mut ram, mut t) = boot(Privilege::Supervisor, &a, CODE_VA);
    t.map(&mut ram, DATA_VA, DATA_PA, 0, R | W);
    ram.store_u64(DATA_PA + 8, 5).unwrap();
    cpu.set_reg(A1, DATA_VA + 8);
    cpu.set_reg(A2, 9);
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    assert_eq!(cpu.reg(A0), 5);
    assert_eq!(
        cpu.reservation(),
        Some(DATA_PA + 8),
        "the reservation is physical"
    );
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Retired);
    assert_eq!((cpu.reg(A3), ram.load_u64(DATA_PA + 8).unwrap()), (0, 9));
}

#[test]
fn satp_takes_bare_and_sv39_only_and_keeps_no_asid() {
    let mut cpu = Cpu::new(RAM_BASE);
    cpu.set_csr(csr::SATP, (8 << 60) | (0xFFFF << 44) | 0x12345)
        .unwrap();
    assert_eq!(
        cpu.csr(csr::SATP),
        Some((8 << 60) | 0x12345),
        "ASIDLEN is 0"
    );
    cpu.set_csr(csr::SATP, (9 << 60) | 0x777).unwrap();
    assert_eq!(
        cpu.csr(csr::SATP),
        Some((8 << 60) | 0x12345),
        "Sv48: no effect at all"
    );
    cpu.set_csr(csr::SATP, 0).unwrap();
    assert_eq!(cpu.csr(csr::SATP), Some(0));
}

#[test]
fn a_page_fault_from_u_can_be_delegated_to_s() {
    let mut a = Assembler::new();
    a.ld(A0, A1, 0);
    let (mut cpu, mut ram, _) = boot(Privilege::User, &a, CODE_VA);
    let s_handler = 0x5000_0000u64;
    cpu.set_csr(csr::STVEC, s_handler).unwrap();
    cpu.set_csr(csr::MEDELEG, 1 << 13).unwrap();
    cpu.set_reg(A1, DATA_VA);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::LoadPageFault)
    );
    assert_eq!(cpu.privilege(), Privilege::Supervisor);
    assert_eq!(
        (cpu.csr(csr::SCAUSE), cpu.csr(csr::STVAL), cpu.pc()),
        (Some(13), Some(DATA_VA), s_handler)
    );
    // The S handler's own page is not mapped: its fetch faults to M (not delegated).
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Exception(Exception::InstructionPageFault)
    );
    assert_eq!(cpu.privilege(), Privilege::Machine);
    assert_eq!(cpu.csr(csr::MCAUSE), Some(12));
}

#[test]
fn a_device_fault_under_translation_reports_the_virtual_address() {
    for store in [false, true] {
        let (out, cpu, _) = access(Privilege::Supervisor, store, DATA_VA + 0x10, 0, |ram, t| {
            t.map(ram, DATA_VA, 0x2000_0000, 0, R | W);
        });
        let want = if store {
            Exception::StoreAccessFault
        } else {
            Exception::LoadAccessFault
        };
        assert_eq!(out, StepOutcome::Exception(want));
        assert_eq!(cpu.csr(csr::MTVAL), Some(DATA_VA + 0x10));
    }
}

#[test]
fn reserved_bits_of_a_pointer_and_w_without_r_fault() {
    for bit in [A, D, U] {
        let (out, ..) = access(Privilege::Supervisor, false, DATA_VA, 0, |ram, t| {
            t.map(ram, DATA_VA, DATA_PA, 0, R);
            let slot = t.root + ((DATA_VA >> 30) & 0x1FF) * 8;
            let pte = ram.load_u64(slot).unwrap();
            ram.store_u64(slot, pte | bit).unwrap();
        });
        assert_eq!(
            out,
            StepOutcome::Exception(Exception::LoadPageFault),
            "pointer with {bit:#x}"
        );
    }
    // W without R is reserved, for a store too (and whatever MXR says for a load).
    let (out, ..) = access(Privilege::Supervisor, true, DATA_VA, 0, |ram, t| {
        t.map(ram, DATA_VA, DATA_PA, 0, W);
    });
    assert_eq!(out, StepOutcome::Exception(Exception::StorePageFault));
    let (out, ..) = access(
        Privilege::Supervisor,
        false,
        DATA_VA,
        MSTATUS_MXR,
        |ram, t| {
            t.map(ram, DATA_VA, DATA_PA, 0, W | X);
        },
    );
    assert_eq!(out, StepOutcome::Exception(Exception::LoadPageFault));
}

#[test]
fn a_non_canonical_address_faults_even_where_its_low_bits_are_mapped() {
    let (out, cpu, _) = access(
        Privilege::Supervisor,
        false,
        DATA_VA | (1 << 40),
        0,
        |ram, t| {
            t.map(ram, DATA_VA, DATA_PA, 0, R);
        },
    );
    assert_eq!(out, StepOutcome::Exception(Exception::LoadPageFault));
    assert_eq!(cpu.csr(csr::MTVAL), Some(DATA_VA | (1 << 40)));
}

#[test]
fn a_faulting_access_sets_no_a_or_d_bits() {
    let mut leaves = (0, 0);
    // A store across into a read-only page: a page fault, and the first page's PTE
    // is left as it was.
    let (out, _, ram) = access(Privilege::Supervisor, true, DATA_VA + 0xFFC, 0, |ram, t| {
        leaves.0 = t.map(ram, DATA_VA, DATA_PA, 0, R | W);
        leaves.1 = t.map(ram, DATA_VA + 0x1000, DATA_PA + 0x1000, 0, R);
    });
    assert_eq!(out, StepOutcome::Exception(Exception::StorePageFault));
    assert_eq!(ram.load_u64(leaves.0).unwrap() & (A | D), 0);
    assert_eq!(ram.load_u64(leaves.1).unwrap() & (A | D), 0);
    // Across two pages that are not adjacent: misaligned, and no bits set.
    let (out, _, ram) = access(Privilege::Supervisor, true, DATA_VA + 0xFFC, 0, |ram, t| {
        leaves.0 = t.map(ram, DATA_VA, DATA_PA, 0, R | W);
        leaves.1 = t.map(ram, DATA_VA + 0x1000, DATA_PA + 0x8000, 0, R | W);
    });
    assert_eq!(
        out,
        StepOutcome::Exception(Exception::StoreAddressMisaligned)
    );
    assert_eq!(ram.load_u64(leaves.0).unwrap() & (A | D), 0);
    assert_eq!(ram.load_u64(leaves.1).unwrap() & (A | D), 0);
}

#[test]
fn a_wfi_across_two_pages_retires_before_a_pending_interrupt() {
    let va = CODE_VA + 0xFFE;
    let (pa1, pa2) = (RAM_BASE + 0x10_0000, RAM_BASE + 0x15_0000);
    let mut ram = Ram::new(RAM_SIZE);
    let w = wfi().to_le_bytes();
    ram.write(pa1 + 0xFFE, &w[..2]).unwrap();
    ram.write(pa2, &w[2..]).unwrap();
    let mut t = Tables::new(&mut ram);
    let leaf = t.map(&mut ram, CODE_VA, pa1, 0, R | X);
    t.map(&mut ram, CODE_VA + 0x1000, pa2, 0, R | X);
    let mut cpu = Cpu::new(va);
    cpu.set_csr(csr::MTVEC, M_HANDLER).unwrap();
    cpu.set_csr(csr::SATP, t.satp()).unwrap();
    cpu.set_csr(csr::MIE, MIP_MTIP).unwrap();
    cpu.set_privilege(Privilege::Supervisor);
    // Nothing pending: it waits.
    assert_eq!(step(&mut cpu, &mut ram), StepOutcome::Idle);
    cpu.set_mip(MIP_MTIP, true);
    assert_eq!(
        step(&mut cpu, &mut ram),
        StepOutcome::Retired,
        "the wfi first"
    );
    assert_eq!(ram.load_u64(leaf).unwrap() & A, A, "its fetch set A");
    assert!(matches!(
        step(&mut cpu, &mut ram),
        StepOutcome::Interrupt(_)
    ));
    assert_eq!(cpu.csr(csr::MEPC), Some(va + 4));
}
