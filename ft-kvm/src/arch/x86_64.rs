//! x86-64 long mode from the first instruction: the guest-physical layout, the GDT, the
//! TSS, the identity page tables, and the control-register values.
//!
//! The layout follows Firecracker and cloud-hypervisor (GDT entries built the same way,
//! the PML4/PDPT/PD at `0x9000`/`0xa000`/`0xb000`, 2 MiB identity pages), extended with
//! the ring-3 segments and the 64-bit TSS that a kernel running a CPL3 workload needs.
//! Everything here is pure: it writes bytes into a guest-memory slice and returns the
//! register values, so it is unit-tested without KVM.
//!
//! # Guest-physical map
//!
//! | address | what |
//! |---|---|
//! | `0x1000` | GDT (null, kernel code, kernel data, user data, user code, 64-bit TSS) |
//! | `0x2000` | TSS (`RSP0` = [`KERNEL_STACK_TOP`]) |
//! | `0x9000` | PML4, `0xa000` PDPT, `0xb000` PD: the first GiB identity-mapped, user-accessible |
//! | `0x10000` | the guest kernel's code ([`KERNEL_BASE`]); its IDT at [`IDT_ADDR`] |
//! | `0x20000` | the kernel's data page ([`KDATA`]: tick counter, accumulators), readable at CPL3 |
//! | `0x80000` | top of the kernel stack |
//! | `0x100000` | the CPL3 workload's code ([`USER_BASE`]) |
//! | `0x200000` | the workload's data ([`USER_DATA`]) |
//! | `0x300000` | DMA buffers ([`DMA_BASE`]) |
//! | `RAM top - 4 KiB` | top of the user stack |
//! | `0x3000_0000` | MMIO devices (see [`crate::devices`]) |

use thiserror::Error;

/// Errors of the layout code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArchError {
    /// Guest memory is too small for the fixed layout.
    #[error("guest memory of {size:#x} bytes is too small (the layout needs {need:#x})")]
    MemoryTooSmall {
        /// Bytes available.
        size: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Result alias of this module.
pub type Result<T, E = ArchError> = std::result::Result<T, E>;

/// Guest-physical address of the GDT.
pub const GDT_ADDR: u64 = 0x1000;
/// Guest-physical address of the TSS.
pub const TSS_ADDR: u64 = 0x2000;
/// Size of the 64-bit TSS.
pub const TSS_SIZE: u64 = 0x68;
/// PML4 (one entry used).
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT (one entry used).
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory: 512 entries of 2 MiB pages, the first GiB.
pub const PD_ADDR: u64 = 0xb000;
/// Where the kernel image is loaded and starts.
pub const KERNEL_BASE: u64 = 0x10000;
/// Where the kernel's IDT (256 16-byte gates) lies, inside the kernel image.
pub const IDT_ADDR: u64 = 0x18000;
/// Where the 10-byte IDT pseudo-descriptor for `lidt` lies.
pub const IDTR_ADDR: u64 = 0x17ff0;
/// Largest kernel image.
pub const KERNEL_MAX: u64 = 0x10000;
/// The kernel's data page (see [`kdata`]).
pub const KDATA: u64 = 0x20000;
/// Top of the kernel stack (also the TSS's `RSP0`).
pub const KERNEL_STACK_TOP: u64 = 0x80000;
/// Where the CPL3 workload is loaded and starts.
pub const USER_BASE: u64 = 0x100000;
/// Largest workload image.
pub const USER_MAX: u64 = 0x100000;
/// The workload's data area.
pub const USER_DATA: u64 = 0x200000;
/// Size of the workload's data area.
pub const USER_DATA_SIZE: u64 = 0x100000;
/// DMA buffers.
pub const DMA_BASE: u64 = 0x300000;
/// Size of the DMA area.
pub const DMA_SIZE: u64 = 0x100000;
/// Smallest guest memory for this layout (the user stack lies above the DMA area).
pub const MIN_MEMORY: usize = 0x500000;
/// Size of the identity map.
pub const IDENTITY_MAP: u64 = 1 << 30;

/// Offsets in the kernel's data page.
pub mod kdata {
    /// Timer interrupts taken so far (u64; the workload reads it).
    pub const TICKS: u64 = super::KDATA;
    /// A fold of the interrupted contexts (RIP, RAX) of every timer interrupt: makes the
    /// delivery point part of the memory digest.
    pub const IRQ_ACC: u64 = super::KDATA + 0x8;
    /// Last block-device status seen by the block interrupt handler.
    pub const BLK_STATUS: u64 = super::KDATA + 0x10;
    /// Block interrupts taken.
    pub const BLK_IRQS: u64 = super::KDATA + 0x18;
    /// Network interrupts taken.
    pub const NET_IRQS: u64 = super::KDATA + 0x20;
    /// Fault diagnostics: the two words at the top of the exception frame.
    pub const FAULT_INFO: u64 = super::KDATA + 0x30;
}

/// Segment selectors.
pub mod sel {
    /// Kernel code (GDT index 1).
    pub const KERNEL_CS: u16 = 0x08;
    /// Kernel data (index 2).
    pub const KERNEL_DS: u16 = 0x10;
    /// User data (index 3, RPL 3).
    pub const USER_DS: u16 = 0x18 | 3;
    /// User code (index 4, RPL 3).
    pub const USER_CS: u16 = 0x20 | 3;
    /// TSS (index 5, 16 bytes).
    pub const TSS: u16 = 0x28;
}

/// CR0: protection, monitor coprocessor, extension type, numeric error, write protect,
/// paging.
pub const CR0: u64 = 0x1 | 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
/// CR4: PAE, OSFXSR, OSXMMEXCPT.
pub const CR4: u64 = 0x20 | 0x200 | 0x400;
/// EFER: long mode enabled and active.
pub const EFER: u64 = 0x100 | 0x400;
/// RFLAGS at reset (bit 1 is always set).
pub const RFLAGS_RESET: u64 = 0x2;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 0x200;

/// A GDT entry in the Firecracker encoding: `flags` holds the access byte in bits 0-7
/// and the flags nibble (G, D/B, L, AVL) in bits 12-15.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// A segment register's hidden part, as KVM wants it (independent of kvm-bindings so it
/// can be tested anywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Base.
    pub base: u64,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type nibble.
    pub type_: u8,
    /// Present.
    pub present: u8,
    /// Privilege level.
    pub dpl: u8,
    /// Default operation size.
    pub db: u8,
    /// Code/data (1) or system (0).
    pub s: u8,
    /// 64-bit code.
    pub l: u8,
    /// Granularity.
    pub g: u8,
    /// Available bit.
    pub avl: u8,
    /// Not usable (a null selector).
    pub unusable: u8,
}

/// The hidden segment state for a GDT entry loaded with `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> Segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    Segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
    }
}

/// The GDT: null, kernel code (64-bit), kernel data, user data, user code (64-bit), and
/// the two halves of the 64-bit TSS descriptor (type busy, as VM entry requires of TR).
pub fn gdt() -> [u64; 7] {
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0xc0f3, 0, 0xfffff),
        gdt_entry(0xa0fb, 0, 0xfffff),
        gdt_entry(0x008b, TSS_ADDR as u32, (TSS_SIZE - 1) as u32),
        TSS_ADDR >> 32,
    ]
}

/// A descriptor-table register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescTable {
    /// Base.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// Everything the vCPU's special registers must hold to start in 64-bit mode at CPL0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LongModeState {
    /// CS.
    pub cs: Segment,
    /// DS, ES, FS, GS, SS.
    pub data: Segment,
    /// TR.
    pub tr: Segment,
    /// GDTR.
    pub gdt: DescTable,
    /// IDTR (the kernel loads its own; this points at it already).
    pub idt: DescTable,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

fn put_u64(mem: &mut [u8], addr: u64, v: u64) {
    let a = addr as usize;
    mem[a..a + 8].copy_from_slice(&v.to_le_bytes());
}

/// Write the GDT, the TSS and the identity page tables into `mem` (guest memory from
/// address 0) and return the special-register values for 64-bit mode.
pub fn setup_long_mode(mem: &mut [u8]) -> Result<LongModeState> {
    if mem.len() < MIN_MEMORY {
        return Err(ArchError::MemoryTooSmall {
            size: mem.len(),
            need: MIN_MEMORY,
        });
    }
    let table = gdt();
    for (i, e) in table.iter().enumerate() {
        put_u64(mem, GDT_ADDR + 8 * i as u64, *e);
    }
    // TSS: RSP0 at offset 4; the I/O map base past the limit (no I/O bitmap).
    let tss = TSS_ADDR as usize;
    mem[tss..tss + TSS_SIZE as usize].fill(0);
    put_u64(mem, TSS_ADDR + 4, KERNEL_STACK_TOP);
    let iomap = (TSS_SIZE as u16).to_le_bytes();
    mem[tss + 0x66..tss + 0x68].copy_from_slice(&iomap);
    // Page tables: present, writable, user-accessible; 2 MiB pages in the PD.
    put_u64(mem, PML4_ADDR, PDPT_ADDR | 0x7);
    put_u64(mem, PDPT_ADDR, PD_ADDR | 0x7);
    for i in 0..512u64 {
        put_u64(mem, PD_ADDR + 8 * i, (i << 21) | 0x87);
    }
    Ok(LongModeState {
        cs: segment_from_gdt(table[1], sel::KERNEL_CS),
        data: segment_from_gdt(table[2], sel::KERNEL_DS),
        tr: segment_from_gdt(table[5], sel::TSS),
        gdt: DescTable {
            base: GDT_ADDR,
            limit: (8 * table.len() - 1) as u16,
        },
        idt: DescTable {
            base: IDT_ADDR,
            limit: 256 * 16 - 1,
        },
        cr0: CR0,
        cr3: PML4_ADDR,
        cr4: CR4,
        efer: EFER,
    })
}

/// A 64-bit IDT gate (16 bytes) to `handler` in the kernel code segment. `dpl` 3 lets
/// CPL3 code reach it with `int`.
pub fn idt_gate(handler: u64, dpl: u8) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&sel::KERNEL_CS.to_le_bytes());
    g[4] = 0; // IST
    g[5] = 0x8e | ((dpl & 3) << 5); // present, interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_firecracker_encoding() {
        // Values Firecracker's tests use for its code and data segments.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let cs = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), sel::KERNEL_CS);
        assert_eq!((cs.l, cs.db, cs.dpl, cs.present, cs.s), (1, 0, 0, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ucs = segment_from_gdt(gdt()[4], sel::USER_CS);
        assert_eq!((ucs.l, ucs.dpl, ucs.type_), (1, 3, 0xb));
        let tr = segment_from_gdt(gdt()[5], sel::TSS);
        assert_eq!(
            (tr.type_, tr.s, tr.base, tr.limit),
            (0xb, 0, TSS_ADDR, 0x67)
        );
    }

    #[test]
    fn long_mode_tables_are_written() {
        let mut mem = vec![0u8; MIN_MEMORY];
        let st = setup_long_mode(&mut mem).unwrap_or_default();
        assert_eq!(st.cr3, PML4_ADDR);
        assert_ne!(st.cr0 & 0x8000_0001, 0);
        let pd1 = u64::from_le_bytes(mem[0xb008..0xb010].try_into().unwrap_or_default());
        assert_eq!(pd1, (1 << 21) | 0x87);
        let rsp0 = u64::from_le_bytes(mem[0x2004..0x200c].try_into().unwrap_or_default());
        assert_eq!(rsp0, KERNEL_STACK_TOP);
        assert!(setup_long_mode(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn idt_gate_splits_the_offset() {
        let g = idt_gate(0x1234_5678_9abc, 3);
        assert_eq!(&g[0..2], &[0xbc, 0x9a]);
        assert_eq!(g[5], 0xee);
        assert_eq!(&g[6..8], &[0x78, 0x56]);
        assert_eq!(&g[8..12], &[0x34, 0x12, 0, 0]);
    }
}
