//! The C extension (RV64C): every 16-bit instruction is expanded into the 32-bit
//! instruction it stands for, which the CPU then executes with a length of 2.
//!
//! The expansion follows the RISC-V unprivileged specification, chapter "C" (version
//! 2.2 of the compressed ISA): each compressed form names one base instruction, and
//! its immediates are scrambled bit fields that [`expand`] gathers. Reserved encodings
//! (the all-zero parcel, `c.addi4spn` with a zero immediate, `c.lui`/`c.addi16sp` with
//! a zero immediate, `c.addiw`, `c.lwsp`, `c.ldsp` with `rd = x0`, `c.jr` with
//! `rs1 = x0`, and the reserved ALU and quadrant-0 slots) expand to nothing: the CPU
//! raises an illegal-instruction exception with the 16 bits in `mtval`. HINT encodings
//! (such as `c.addi x0`, `c.li x0`, `c.slli x0`) expand to their base instruction,
//! which writes `x0` and so does nothing, as the specification intends.
//!
//! The floating-point forms (`c.fld`, `c.fsd`, `c.fldsp`, `c.fsdsp`) expand to `fld`
//! and `fsd`, which this CPU treats as illegal while it has no D extension.
//!
//! ```
//! use ft_sim::rvc::expand;
//!
//! // c.addi a0, 1 is addi a0, a0, 1.
//! assert_eq!(expand(0x0505), Some(0x0015_0513));
//! // The all-zero parcel is defined illegal.
//! assert_eq!(expand(0x0000), None);
//! ```

/// Whether the low bits of a parcel say it starts a 32-bit instruction (`11`); any other
/// value means a 16-bit compressed instruction.
#[inline(always)]
pub const fn is_compressed(parcel: u16) -> bool {
    parcel & 3 != 3
}

const LOAD: u32 = 0x03;
const LOAD_FP: u32 = 0x07;
const OP_IMM: u32 = 0x13;
const OP_IMM_32: u32 = 0x1B;
const STORE: u32 = 0x23;
const STORE_FP: u32 = 0x27;
const OP: u32 = 0x33;
const LUI: u32 = 0x37;
const OP_32: u32 = 0x3B;
const BRANCH: u32 = 0x63;
const JALR: u32 = 0x67;
const JAL: u32 = 0x6F;
const EBREAK: u32 = 0x0010_0073;
/// The stack pointer, `x2`.
const SP: u32 = 2;
/// The link register, `x1`.
const RA: u32 = 1;

/// Bit `from` of `c`, moved to bit `to`.
#[inline(always)]
const fn bit(c: u32, from: u32, to: u32) -> u32 {
    ((c >> from) & 1) << to
}

/// Bits `hi..=lo` of `c`, moved so that `lo` lands on bit `to`.
#[inline(always)]
const fn bits(c: u32, hi: u32, lo: u32, to: u32) -> u32 {
    ((c >> lo) & ((1 << (hi - lo + 1)) - 1)) << to
}

/// Sign-extend the low `width` bits of `v` to 32 bits.
#[inline(always)]
const fn sext(v: u32, width: u32) -> u32 {
    let shift = 32 - width;
    (((v << shift) as i32) >> shift) as u32
}

/// A compressed register field (`rd'`, `rs1'`, `rs2'`): three bits naming `x8..=x15`.
#[inline(always)]
const fn creg(c: u32, lo: u32) -> u32 {
    8 + ((c >> lo) & 7)
}

#[inline(always)]
const fn i_type(imm: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}

#[inline(always)]
const fn s_type(imm: u32, rs2: u32, rs1: u32, f3: u32, op: u32) -> u32 {
    (((imm >> 5) & 0x7F) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | op
}

#[inline(always)]
const fn r_type(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}

#[inline(always)]
const fn b_type(imm: u32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    (bit(imm, 12, 31))
        | (bits(imm, 10, 5, 25))
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (bits(imm, 4, 1, 8))
        | (bit(imm, 11, 7))
        | BRANCH
}

#[inline(always)]
const fn j_type(imm: u32, rd: u32) -> u32 {
    (bit(imm, 20, 31))
        | (bits(imm, 10, 1, 21))
        | (bit(imm, 11, 20))
        | (bits(imm, 19, 12, 12))
        | (rd << 7)
        | JAL
}

/// The 6-bit signed immediate of the CI format (`imm[5]` = bit 12, `imm[4:0]` = bits
/// 6..2), sign-extended.
#[inline(always)]
const fn ci_imm(c: u32) -> u32 {
    sext(bit(c, 12, 5) | bits(c, 6, 2, 0), 6)
}

/// The 6-bit shift amount of `c.slli`, `c.srli`, `c.srai`.
#[inline(always)]
const fn shamt(c: u32) -> u32 {
    bit(c, 12, 5) | bits(c, 6, 2, 0)
}

/// The unsigned offset of `c.lw`/`c.sw` (`uimm[5:3]` = 12..10, `[2]` = 6, `[6]` = 5).
#[inline(always)]
const fn cw_off(c: u32) -> u32 {
    bits(c, 12, 10, 3) | bit(c, 6, 2) | bit(c, 5, 6)
}

/// The unsigned offset of `c.ld`/`c.sd`/`c.fld`/`c.fsd` (`uimm[5:3]` = 12..10,
/// `[7:6]` = 6..5).
#[inline(always)]
const fn cd_off(c: u32) -> u32 {
    bits(c, 12, 10, 3) | bits(c, 6, 5, 6)
}

/// The 32-bit instruction that the compressed instruction `parcel` stands for, or
/// `None` for a reserved encoding (an illegal instruction). A parcel whose low bits are
/// `11` is not compressed and gives `None` as well.
#[must_use]
pub const fn expand(parcel: u16) -> Option<u32> {
    let c = parcel as u32;
    let f3 = (c >> 13) & 7;
    let rd = (c >> 7) & 31;
    let rs2 = (c >> 2) & 31;
    let inst = match (c & 3, f3) {
        // Quadrant 0.
        (0, 0) => {
            // c.addi4spn: addi rd', sp, nzuimm[9:2].
            let imm = bits(c, 12, 11, 4) | bits(c, 10, 7, 6) | bit(c, 6, 2) | bit(c, 5, 3);
            if imm == 0 {
                return None;
            }
            i_type(imm, SP, 0, creg(c, 2), OP_IMM)
        }
        (0, 1) => i_type(cd_off(c), creg(c, 7), 3, creg(c, 2), LOAD_FP), // c.fld
        (0, 2) => i_type(cw_off(c), creg(c, 7), 2, creg(c, 2), LOAD),    // c.lw
        (0, 3) => i_type(cd_off(c), creg(c, 7), 3, creg(c, 2), LOAD),    // c.ld
        (0, 4) => return None,                                           // reserved
        (0, 5) => s_type(cd_off(c), creg(c, 2), creg(c, 7), 3, STORE_FP), // c.fsd
        (0, 6) => s_type(cw_off(c), creg(c, 2), creg(c, 7), 2, STORE),   // c.sw
        (0, 7) => s_type(cd_off(c), creg(c, 2), creg(c, 7), 3, STORE),   // c.sd
        // Quadrant 1.
        (1, 0) => i_type(ci_imm(c), rd, 0, rd, OP_IMM), // c.addi (c.nop, HINTs)
        (1, 1) => {
            // c.addiw; rd = x0 is reserved.
            if rd == 0 {
                return None;
            }
            i_type(ci_imm(c), rd, 0, rd, OP_IMM_32)
        }
        (1, 2) => i_type(ci_imm(c), 0, 0, rd, OP_IMM), // c.li
        (1, 3) if rd == SP => {
            // c.addi16sp: nzimm[9] = 12, [4] = 6, [6] = 5, [8:7] = 4..3, [5] = 2.
            let imm = bit(c, 12, 9) | bit(c, 6, 4) | bit(c, 5, 6) | bits(c, 4, 3, 7) | bit(c, 2, 5);
            if imm == 0 {
                return None;
            }
            i_type(sext(imm, 10), SP, 0, SP, OP_IMM)
        }
        (1, 3) => {
            // c.lui: nzimm[17] = 12, [16:12] = 6..2.
            let imm = bit(c, 12, 17) | bits(c, 6, 2, 12);
            if imm == 0 {
                return None;
            }
            (sext(imm, 18) & 0xFFFF_F000) | (rd << 7) | LUI
        }
        (1, 4) => {
            let r = creg(c, 7);
            match (c >> 10) & 3 {
                0 => i_type(shamt(c), r, 5, r, OP_IMM),         // c.srli
                1 => i_type(shamt(c) | 0x400, r, 5, r, OP_IMM), // c.srai
                2 => i_type(ci_imm(c), r, 7, r, OP_IMM),        // c.andi
                _ => {
                    let s = creg(c, 2);
                    match (bit(c, 12, 2)) | ((c >> 5) & 3) {
                        0 => r_type(0x20, s, r, 0, r, OP),    // c.sub
                        1 => r_type(0, s, r, 4, r, OP),       // c.xor
                        2 => r_type(0, s, r, 6, r, OP),       // c.or
                        3 => r_type(0, s, r, 7, r, OP),       // c.and
                        4 => r_type(0x20, s, r, 0, r, OP_32), // c.subw
                        5 => r_type(0, s, r, 0, r, OP_32),    // c.addw
                        _ => return None,                     // reserved
                    }
                }
            }
        }
        (1, 5) => {
            // c.j: offset[11] = 12, [4] = 11, [9:8] = 10..9, [10] = 8, [6] = 7, [7] = 6,
            // [3:1] = 5..3, [5] = 2.
            let imm = bit(c, 12, 11)
                | bit(c, 11, 4)
                | bits(c, 10, 9, 8)
                | bit(c, 8, 10)
                | bit(c, 7, 6)
                | bit(c, 6, 7)
                | bits(c, 5, 3, 1)
                | bit(c, 2, 5);
            j_type(sext(imm, 12), 0)
        }
        (1, 6) | (1, 7) => {
            // c.beqz / c.bnez: offset[8] = 12, [4:3] = 11..10, [7:6] = 6..5, [2:1] = 4..3,
            // [5] = 2.
            let imm = bit(c, 12, 8)
                | bits(c, 11, 10, 3)
                | bits(c, 6, 5, 6)
                | bits(c, 4, 3, 1)
                | bit(c, 2, 5);
            b_type(sext(imm, 9), 0, creg(c, 7), f3 - 6)
        }
        // Quadrant 2.
        (2, 0) => i_type(shamt(c), rd, 1, rd, OP_IMM), // c.slli
        (2, 1) => {
            // c.fldsp: uimm[5] = 12, [4:3] = 6..5, [8:6] = 4..2.
            let imm = bit(c, 12, 5) | bits(c, 6, 5, 3) | bits(c, 4, 2, 6);
            i_type(imm, SP, 3, rd, LOAD_FP)
        }
        (2, 2) => {
            // c.lwsp: uimm[5] = 12, [4:2] = 6..4, [7:6] = 3..2; rd = x0 is reserved.
            if rd == 0 {
                return None;
            }
            let imm = bit(c, 12, 5) | bits(c, 6, 4, 2) | bits(c, 3, 2, 6);
            i_type(imm, SP, 2, rd, LOAD)
        }
        (2, 3) => {
            // c.ldsp: uimm[5] = 12, [4:3] = 6..5, [8:6] = 4..2; rd = x0 is reserved.
            if rd == 0 {
                return None;
            }
            let imm = bit(c, 12, 5) | bits(c, 6, 5, 3) | bits(c, 4, 2, 6);
            i_type(imm, SP, 3, rd, LOAD)
        }
        (2, 4) => match (bit(c, 12, 0), rd, rs2) {
            (0, 0, 0) => return None,                  // c.jr x0: reserved
            (0, _, 0) => i_type(0, rd, 0, 0, JALR),    // c.jr
            (0, _, _) => r_type(0, rs2, 0, 0, rd, OP), // c.mv
            (_, 0, 0) => EBREAK,                       // c.ebreak
            (_, _, 0) => i_type(0, rd, 0, RA, JALR),   // c.jalr
            _ => r_type(0, rs2, rd, 0, rd, OP),        // c.add
        },
        (2, 5) => {
            // c.fsdsp: uimm[5:3] = 12..10, [8:6] = 9..7.
            let imm = bits(c, 12, 10, 3) | bits(c, 9, 7, 6);
            s_type(imm, rs2, SP, 3, STORE_FP)
        }
        (2, 6) => {
            // c.swsp: uimm[5:2] = 12..9, [7:6] = 8..7.
            let imm = bits(c, 12, 9, 2) | bits(c, 8, 7, 6);
            s_type(imm, rs2, SP, 2, STORE)
        }
        (2, 7) => {
            // c.sdsp: uimm[5:3] = 12..10, [8:6] = 9..7.
            let imm = bits(c, 12, 10, 3) | bits(c, 9, 7, 6);
            s_type(imm, rs2, SP, 3, STORE)
        }
        _ => return None,
    };
    Some(inst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_encodings_expand_to_nothing() {
        for (parcel, what) in [
            (0x0000u16, "the all-zero parcel"),
            (0x0010, "c.addi4spn with a zero immediate"),
            (0x8000, "quadrant 0, funct3 100"),
            (0x2001, "c.addiw x0"),
            (0x6101, "c.addi16sp 0"),
            (0x6081, "c.lui x1, 0"),
            (0x9c41, "quadrant 1 ALU, funct 1 11 10 (reserved)"),
            (0x9c61, "quadrant 1 ALU, funct 1 11 11 (reserved)"),
            (0x4002, "c.lwsp x0"),
            (0x6002, "c.ldsp x0"),
            (0x8002, "c.jr x0"),
            (0x0013, "a 32-bit parcel"),
        ] {
            assert_eq!(expand(parcel), None, "{what} ({parcel:#06x})");
        }
    }

    #[test]
    fn hand_checked_expansions() {
        for (parcel, inst, what) in [
            (0x0001u16, 0x0000_0013u32, "c.nop = addi x0, x0, 0"),
            (0x9002, 0x0010_0073, "c.ebreak"),
            (0x8082, 0x0000_8067, "c.jr ra = ret"),
            (0x1141, 0xff01_0113, "c.addi sp, -16"),
            (0xe406, 0x0011_3423, "c.sdsp ra, 8(sp)"),
            (0x60a2, 0x0081_3083, "c.ldsp ra, 8(sp)"),
            (0x852e, 0x00b0_0533, "c.mv a0, a1"),
            (0x4505, 0x0010_0513, "c.li a0, 1"),
            (0xa001, 0x0000_006f, "c.j . (offset 0)"),
        ] {
            assert_eq!(expand(parcel), Some(inst), "{what}: {parcel:#06x}");
        }
    }

    #[test]
    fn only_low_bits_11_are_not_compressed() {
        assert!(is_compressed(0x0001));
        assert!(is_compressed(0x0002));
        assert!(is_compressed(0x0000));
        assert!(!is_compressed(0x0013));
    }
}
