//! The encoder and assembler: known encodings (as produced by GNU as), immediate
//! range errors, label resolution, and `li` checked by executing it.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use ft_sim::asm::*;
use ft_sim::cpu::{csr, Cpu, Exception, NoMmio, StepOutcome};
use ft_sim::memory::{Ram, RAM_BASE};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[test]
fn known_encodings() {
    let cases: &[(u32, u32, &str)] = &[
        (addi(A0, A0, 1).unwrap(), 0x0015_0513, "addi a0,a0,1"),
        (addi(SP, SP, -16).unwrap(), 0xFF01_0113, "addi sp,sp,-16"),
        (ecall(), 0x0000_0073, "ecall"),
        (ebreak(), 0x0010_0073, "ebreak"),
        (mret(), 0x3020_0073, "mret"),
        (wfi(), 0x1050_0073, "wfi"),
        (nop(), 0x0000_0013, "nop"),
        (fence(), 0x0FF0_000F, "fence"),
        (fence_i(), 0x0000_100F, "fence.i"),
        (jalr(ZERO, RA, 0).unwrap(), 0x0000_8067, "ret"),
        (lui(A0, 0x12345).unwrap(), 0x1234_5537, "lui a0,0x12345"),
        (lui(A0, 0xFFFFF).unwrap(), 0xFFFF_F537, "lui a0,0xfffff"),
        (lui(A0, -1).unwrap(), 0xFFFF_F537, "lui a0,-1 (same field)"),
        (auipc(T0, 0).unwrap(), 0x0000_0297, "auipc t0,0"),
        (jal(ZERO, -8).unwrap(), 0xFF9F_F06F, "j .-8"),
        (jal(RA, 2048).unwrap(), 0x0010_00EF, "jal ra,.+2048"),
        (beq(A0, A1, -4).unwrap(), 0xFEB5_0EE3, "beq a0,a1,.-4"),
        (bne(A0, ZERO, 8).unwrap(), 0x0005_1463, "bnez a0,.+8"),
        (sd(RA, SP, 8).unwrap(), 0x0011_3423, "sd ra,8(sp)"),
        (ld(RA, SP, 8).unwrap(), 0x0081_3083, "ld ra,8(sp)"),
        (sw(A1, A0, -4).unwrap(), 0xFEB5_2E23, "sw a1,-4(a0)"),
        (lwu(A0, A1, 0).unwrap(), 0x0005_E503, "lwu a0,0(a1)"),
        (slli(A0, A0, 32).unwrap(), 0x0205_1513, "slli a0,a0,32"),
        (srai(A0, A0, 63).unwrap(), 0x43F5_5513, "srai a0,a0,63"),
        (sraiw(A0, A0, 1).unwrap(), 0x4015_551B, "sraiw a0,a0,1"),
        (addiw(A0, A0, -1).unwrap(), 0xFFF5_051B, "addiw a0,a0,-1"),
        (add(A0, A1, A2), 0x00C5_8533, "add a0,a1,a2"),
        (sub(A0, A1, A2), 0x40C5_8533, "sub a0,a1,a2"),
        (mul(A0, A0, A1), 0x02B5_0533, "mul a0,a0,a1"),
        (divuw(A0, A0, A1), 0x02B5_553B, "divuw a0,a0,a1"),
        (remu(A0, A0, A1), 0x02B5_7533, "remu a0,a0,a1"),
        (sraw(A0, A0, A1), 0x40B5_553B, "sraw a0,a0,a1"),
        (
            csrrs(A0, csr::MHARTID, ZERO).unwrap(),
            0xF140_2573,
            "csrr a0,mhartid",
        ),
        (
            csrrw(ZERO, csr::MTVEC, T0).unwrap(),
            0x3052_9073,
            "csrw mtvec,t0",
        ),
        (
            csrrsi(ZERO, csr::MSTATUS, 8).unwrap(),
            0x3004_6073,
            "csrsi mstatus,8",
        ),
        (
            csrrci(ZERO, csr::MSTATUS, 8).unwrap(),
            0x3004_7073,
            "csrci mstatus,8",
        ),
    ];
    for &(got, want, text) in cases {
        assert_eq!(got, want, "{text}: got {got:#010x}, want {want:#010x}");
    }
}

#[test]
fn immediate_range_errors() {
    assert!(matches!(
        addi(A0, A0, 2048),
        Err(AsmError::ImmediateOutOfRange { value: 2048, .. })
    ));
    assert!(addi(A0, A0, -2048).is_ok());
    assert!(addi(A0, A0, -2049).is_err());
    assert!(sd(A0, A0, 2048).is_err());
    assert!(slli(A0, A0, 64).is_err());
    assert!(slliw(A0, A0, 32).is_err());
    assert!(srai(A0, A0, -1).is_err());
    assert!(lui(A0, 0x10_0000).is_err());
    assert!(lui(A0, -0x8_0001).is_err());
    assert!(beq(A0, A0, 4096).is_err());
    assert!(beq(A0, A0, -4096).is_ok());
    assert_eq!(
        beq(A0, A0, 3),
        Err(AsmError::MisalignedOffset {
            what: "beq",
            value: 3
        })
    );
    assert!(jal(RA, 1 << 20).is_err());
    assert!(jal(RA, -(1 << 20)).is_ok());
    assert_eq!(csrrw(A0, 0x1000, A0), Err(AsmError::CsrOutOfRange(0x1000)));
    assert!(csrrwi(A0, csr::MSCRATCH, 32).is_err());
    assert_eq!(Reg::new(32), None);
    assert_eq!(Reg::new(31), Some(T6));
}

#[test]
fn assembler_errors_are_reported_by_finish() {
    let mut a = Assembler::new();
    a.nop().addi(A0, A0, 5000).nop();
    match a.finish() {
        Err(AsmError::At { index: 1, source }) => {
            assert!(matches!(*source, AsmError::ImmediateOutOfRange { .. }))
        }
        other => panic!("{other:?}"),
    }

    let mut a = Assembler::new();
    let l = a.label();
    a.nop().j(l);
    match a.finish() {
        Err(AsmError::At { index: 1, source }) => {
            assert_eq!(*source, AsmError::UnboundLabel(l.id()))
        }
        other => panic!("{other:?}"),
    }

    let mut a = Assembler::new();
    let l = a.here();
    a.bind(l);
    assert!(matches!(
        a.finish(),
        Err(AsmError::At { source, .. }) if *source == AsmError::LabelBoundTwice(l.id())
    ));

    let mut other = Assembler::new();
    let foreign = other.label();
    let mut a = Assembler::new();
    a.j(foreign);
    assert!(a.finish().is_err());

    // Branch out of range.
    let mut a = Assembler::new();
    let far = a.label();
    a.beq(A0, A1, far);
    for _ in 0..1024 {
        a.nop();
    }
    a.bind(far);
    assert!(matches!(
        a.finish(),
        Err(AsmError::At { index: 0, source }) if matches!(*source, AsmError::ImmediateOutOfRange { .. })
    ));
}

#[test]
fn labels_resolve_forward_and_backward() {
    let mut a = Assembler::with_base(RAM_BASE);
    let fwd = a.label();
    let back = a.here();
    a.nop();
    a.beq(A0, A1, fwd); // index 1 -> 4: +12
    a.jal(RA, back); // index 2 -> 0: -8
    a.bne(A0, A1, back); // index 3 -> 0: -12
    a.bind(fwd);
    let w = a.finish_words().unwrap();
    assert_eq!(w[1], beq(A0, A1, 12).unwrap());
    assert_eq!(w[2], jal(RA, -8).unwrap());
    assert_eq!(w[3], bne(A0, A1, -12).unwrap());
    assert_eq!(a.label_address(fwd), Some(RAM_BASE + 16));
    assert_eq!(a.label_offset(back), Some(0));
    let bytes = a.finish().unwrap();
    assert_eq!(bytes.len(), 16);
    assert_eq!(&bytes[4..8], &w[1].to_le_bytes());
}

fn exec_words(words: &[u32]) -> Cpu {
    let mut ram = Ram::new(1 << 16);
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend_from_slice(&ebreak().to_le_bytes());
    ram.write(RAM_BASE, &bytes).unwrap();
    let mut cpu = Cpu::new(RAM_BASE);
    loop {
        match cpu.step(&mut ram, &mut NoMmio) {
            StepOutcome::Retired => {}
            StepOutcome::Exception(Exception::Breakpoint) => return cpu,
            o => panic!("{o:?}"),
        }
    }
}

#[test]
fn li_edge_values() {
    let values = [
        0i64,
        1,
        -1,
        2047,
        2048,
        -2048,
        -2049,
        0x7FF,
        0x800,
        0x7FFF_F7FF,
        0x7FFF_F800,
        0x7FFF_FFFF,
        -0x8000_0000,
        0x8000_0000,
        0xFFFF_FFFF,
        0x1_0000_0000,
        0x8000_0000_0000_0000u64 as i64,
        i64::MAX,
        0x1234_5678_9ABC_DEF0,
        0xFEDC_BA98_7654_3210u64 as i64,
        0x0000_0800_0000_0800,
        0x7FFF_FFFF_FFFF_F800,
        RAM_BASE as i64,
    ];
    for v in values {
        let words = li_words(A0, v).unwrap();
        assert!(words.len() <= 8, "{v:#x}: {} instructions", words.len());
        assert_eq!(exec_words(&words).reg(A0), v as u64, "li {v:#x}");
    }
    // Small constants take one instruction, 32-bit ones at most two.
    assert_eq!(li_words(A0, -5).unwrap().len(), 1);
    assert_eq!(li_words(A0, 0x1234_5678).unwrap().len(), 2);
    assert_eq!(li_words(A0, 0x1000).unwrap().len(), 1);
}

/// Scaled by `FT_SOAK`, moved by `FT_SEED_BASE` (see `prop_support`).
fn config(cases: u32) -> Config {
    prop_support::soaked_config(cases, 0x5EED_0FF7)
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn li_loads_any_constant(v in any::<i64>(), rd in 1u8..32) {
        let rd = Reg::new(rd).unwrap();
        let words = li_words(rd, v).unwrap();
        prop_assert!(words.len() <= 8);
        prop_assert_eq!(exec_words(&words).reg(rd), v as u64);
    }

    #[test]
    fn branch_offsets_round_trip_through_the_cpu(off in -1024i64..1024) {
        let off = off * 4;
        let word = beq(ZERO, ZERO, off).unwrap();
        let mut ram = Ram::new(1 << 16);
        let pc = RAM_BASE + 0x8000;
        ram.write(pc, &word.to_le_bytes()).unwrap();
        let mut cpu = Cpu::new(pc);
        prop_assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Retired);
        prop_assert_eq!(cpu.pc(), pc.wrapping_add(off as u64));
    }

    #[test]
    fn jal_offsets_round_trip_through_the_cpu(off in -(1i64 << 18)..(1 << 18)) {
        let off = off * 4;
        let word = jal(RA, off).unwrap();
        let mut ram = Ram::new(1 << 16);
        ram.write(RAM_BASE, &word.to_le_bytes()).unwrap();
        let mut cpu = Cpu::new(RAM_BASE);
        prop_assert_eq!(cpu.step(&mut ram, &mut NoMmio), StepOutcome::Retired);
        prop_assert_eq!(cpu.pc(), RAM_BASE.wrapping_add(off as u64));
        prop_assert_eq!(cpu.reg(RA), RAM_BASE + 4);
    }

    #[test]
    fn load_store_offsets_round_trip(imm in -2048i64..2048, v in any::<u64>()) {
        let base = RAM_BASE + 0x4000;
        let imm8 = imm & !7;
        let words = [sd(A1, A0, imm8).unwrap(), ld(A2, A0, imm8).unwrap()];
        let mut ram = Ram::new(1 << 16);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(RAM_BASE, &bytes).unwrap();
        let mut cpu = Cpu::new(RAM_BASE);
        cpu.set_reg(A0, base);
        cpu.set_reg(A1, v);
        cpu.step(&mut ram, &mut NoMmio);
        cpu.step(&mut ram, &mut NoMmio);
        prop_assert_eq!(ram.load_u64(base.wrapping_add(imm8 as u64)).unwrap(), v);
        prop_assert_eq!(cpu.reg(A2), v);
    }
}

#[test]
fn pseudo_instructions_execute() {
    let mut a = Assembler::with_base(RAM_BASE);
    let data = a.label();
    let skip = a.label();
    a.li(T0, 5)
        .mv(A0, T0)
        .not(A1, T0)
        .neg(A2, T0)
        .seqz(A3, ZERO)
        .snez(A4, T0)
        .la(A5, data)
        .ld(A6, A5, 0)
        .beqz(ZERO, skip)
        .li(A0, 99)
        .bind(skip)
        .ebreak()
        .align(8)
        .bind(data)
        .dword(0x1122_3344_5566_7788);
    let data_addr = a.label_address(data).unwrap();
    assert_eq!(data_addr % 8, 0);
    let code = a.finish().unwrap();
    let mut ram = Ram::new(1 << 16);
    ram.write(RAM_BASE, &code).unwrap();
    let mut cpu = Cpu::new(RAM_BASE);
    loop {
        match cpu.step(&mut ram, &mut NoMmio) {
            StepOutcome::Retired => {}
            o => {
                assert_eq!(o, StepOutcome::Exception(Exception::Breakpoint));
                break;
            }
        }
    }
    assert_eq!(cpu.reg(A0), 5);
    assert_eq!(cpu.reg(A1), !5);
    assert_eq!(cpu.reg(A2), (-5i64) as u64);
    assert_eq!(cpu.reg(A3), 1);
    assert_eq!(cpu.reg(A4), 1);
    assert_eq!(cpu.reg(A5), data_addr);
    assert_eq!(cpu.reg(A6), 0x1122_3344_5566_7788);
}
