//! ELF and raw image loading: a hand-built valid ELF64 with symbols, typed errors for
//! malformed images, and a no-panic property test over random / mutated inputs.

// Test helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod prop_support;

use ft_sim::asm::*;
use ft_sim::cpu::{Cpu, NoMmio, StepExit};
use ft_sim::loader::{load_elf, load_raw, LoaderError};
use ft_sim::memory::{Ram, RAM_BASE};
use proptest::prelude::*;
use proptest::test_runner::Config;

const RAM_SIZE: usize = 1 << 20;

/// A loadable segment for [`ElfBuilder`].
struct Seg {
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// Writes minimal ELF64 LE RISC-V executables: PT_LOAD segments, then (optionally)
/// a `.symtab` + `.strtab` pair.
struct ElfBuilder {
    entry: u64,
    segs: Vec<Seg>,
    /// (name, value, binding: 0 local / 1 global, section index)
    syms: Vec<(String, u64, u8, u16)>,
}

const EH: usize = 64;
const PH: usize = 56;
const SH: usize = 64;

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Field offsets used by tests that corrupt images.
mod off {
    pub const E_PHOFF: usize = 32;
    pub const E_PHENTSIZE: usize = 54;
    pub const E_PHNUM: usize = 56;
    pub const E_SHNUM: usize = 60;
    /// Of the first program header.
    pub const P_OFFSET: usize = 64 + 8;
    pub const P_PADDR: usize = 64 + 24;
    pub const P_FILESZ: usize = 64 + 32;
    pub const P_MEMSZ: usize = 64 + 40;
}

impl ElfBuilder {
    fn new(entry: u64) -> Self {
        ElfBuilder {
            entry,
            segs: Vec::new(),
            syms: Vec::new(),
        }
    }

    fn segment(mut self, paddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        self.segs.push(Seg { paddr, data, memsz });
        self
    }

    fn symbol(mut self, name: &str, value: u64, global: bool) -> Self {
        self.syms.push((
            name.to_owned(),
            value,
            u8::from(global),
            1, /* any defined */
        ));
        self
    }

    fn undefined_symbol(mut self, name: &str) -> Self {
        self.syms.push((name.to_owned(), 0, 1, 0));
        self
    }

    fn build(&self) -> Vec<u8> {
        let phnum = self.segs.len();
        let mut out = vec![0u8; EH + PH * phnum];
        // Segment contents.
        let mut seg_offsets = Vec::new();
        for s in &self.segs {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            seg_offsets.push(out.len());
            out.extend_from_slice(&s.data);
        }
        // Symbol and string tables.
        let mut shdrs: Vec<[u8; SH]> = vec![[0; SH]];
        if !self.syms.is_empty() {
            let mut strtab = vec![0u8];
            let mut symtab = vec![0u8; 24]; // null symbol
            for (name, value, bind, shndx) in &self.syms {
                let name_off = strtab.len() as u32;
                strtab.extend_from_slice(name.as_bytes());
                strtab.push(0);
                let mut sym = [0u8; 24];
                put32(&mut sym, 0, name_off);
                sym[4] = (bind << 4) | 1; // STT_OBJECT
                put16(&mut sym, 6, *shndx);
                put64(&mut sym, 8, *value);
                put64(&mut sym, 16, 8);
                symtab.extend_from_slice(&sym);
            }
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            let symtab_off = out.len();
            out.extend_from_slice(&symtab);
            let strtab_off = out.len();
            out.extend_from_slice(&strtab);
            let mut sh = [0u8; SH];
            put32(&mut sh, 4, 2); // SHT_SYMTAB
            put64(&mut sh, 24, symtab_off as u64);
            put64(&mut sh, 32, symtab.len() as u64);
            put32(&mut sh, 40, 2); // sh_link -> .strtab
            put64(&mut sh, 56, 24);
            shdrs.push(sh);
            let mut sh = [0u8; SH];
            put32(&mut sh, 4, 3); // SHT_STRTAB
            put64(&mut sh, 24, strtab_off as u64);
            put64(&mut sh, 32, strtab.len() as u64);
            shdrs.push(sh);
        }
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        for sh in &shdrs {
            out.extend_from_slice(sh);
        }
        // ELF header.
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2; // ELFCLASS64
        out[5] = 1; // little-endian
        out[6] = 1; // EV_CURRENT
        put16(&mut out, 16, 2); // ET_EXEC
        put16(&mut out, 18, 243); // EM_RISCV
        put32(&mut out, 20, 1);
        put64(&mut out, 24, self.entry);
        put64(&mut out, 32, EH as u64);
        put64(&mut out, 40, shoff as u64);
        put16(&mut out, 52, EH as u16);
        put16(&mut out, 54, PH as u16);
        put16(&mut out, 56, phnum as u16);
        put16(&mut out, 58, SH as u16);
        put16(&mut out, 60, shdrs.len() as u16);
        // Program headers.
        for (i, s) in self.segs.iter().enumerate() {
            let at = EH + i * PH;
            put32(&mut out, at, 1); // PT_LOAD
            put32(&mut out, at + 4, 7); // RWX
            put64(&mut out, at + 8, seg_offsets[i] as u64);
            put64(&mut out, at + 16, s.paddr);
            put64(&mut out, at + 24, s.paddr);
            put64(&mut out, at + 32, s.data.len() as u64);
            put64(&mut out, at + 40, s.memsz);
            put64(&mut out, at + 48, 8);
        }
        out
    }
}

/// A guest that writes `(42 << 1) | 1` to its RAM `tohost` word and spins.
fn sample_program(tohost: u64) -> Vec<u8> {
    let mut a = Assembler::with_base(RAM_BASE);
    a.li(T0, tohost as i64).li(T1, (42 << 1) | 1).sd(T1, T0, 0);
    let spin = a.here();
    a.j(spin);
    a.finish().unwrap()
}

fn sample_elf() -> (Vec<u8>, Vec<u8>) {
    let code = sample_program(RAM_BASE + 0x1000);
    let elf = ElfBuilder::new(RAM_BASE)
        .segment(RAM_BASE, code.clone(), code.len() as u64)
        .segment(RAM_BASE + 0x1000, vec![0xAB; 4], 0x100) // .data + .bss
        .symbol("local_thing", RAM_BASE + 8, false)
        .symbol("tohost", RAM_BASE + 0x1000, true)
        .symbol("fromhost", RAM_BASE + 0x1040, true)
        .symbol("dup", 1, false)
        .symbol("dup", 2, true)
        .symbol("dup", 3, true)
        .undefined_symbol("printf")
        .build();
    (elf, code)
}

#[test]
fn loads_segments_symbols_and_runs() {
    let (elf, code) = sample_elf();
    let mut ram = Ram::new(RAM_SIZE);
    ram.write(RAM_BASE + 0x1000, &[0xCC; 0x200]).unwrap(); // garbage to be zeroed
    ram.clear_dirty();
    let img = load_elf(&elf, &mut ram).unwrap();
    assert_eq!(img.entry, RAM_BASE);
    assert_eq!(img.tohost, Some(RAM_BASE + 0x1000));
    assert_eq!(img.fromhost, Some(RAM_BASE + 0x1040));
    assert_eq!(img.symbol("local_thing"), Some(RAM_BASE + 8));
    assert_eq!(img.symbol("dup"), Some(2), "first global wins over locals");
    assert_eq!(img.symbol("printf"), None, "undefined symbols skipped");
    assert_eq!(img.symbol("nope"), None);
    let mut buf = vec![0u8; code.len()];
    ram.read(RAM_BASE, &mut buf).unwrap();
    assert_eq!(buf, code);
    let mut data = [0u8; 0x108];
    ram.read(RAM_BASE + 0x1000, &mut data).unwrap();
    assert_eq!(&data[..4], &[0xAB; 4]);
    assert!(data[4..0x100].iter().all(|&b| b == 0), "bss zeroed");
    assert_eq!(&data[0x100..], &[0xCC; 8], "beyond memsz untouched");
    assert_eq!(
        ram.take_dirty_pages(),
        vec![0, 1],
        "loading marks pages dirty"
    );

    // Run it and watch tohost in RAM.
    let mut cpu = Cpu::new(img.entry);
    assert_eq!(cpu.run(&mut ram, &mut NoMmio, 1000), StepExit::Budget);
    assert_eq!(ram.load_u64(img.tohost.unwrap()).unwrap(), (42 << 1) | 1);
}

#[test]
fn elf_without_symbols() {
    let code = sample_program(RAM_BASE + 0x800);
    let elf = ElfBuilder::new(RAM_BASE + 4)
        .segment(RAM_BASE, code.clone(), 0x1000)
        .build();
    let mut ram = Ram::new(RAM_SIZE);
    let img = load_elf(&elf, &mut ram).unwrap();
    assert_eq!(img.entry, RAM_BASE + 4);
    assert_eq!(img.tohost, None);
    assert!(img.symbols.is_empty());
}

#[test]
fn load_raw_binary() {
    let mut ram = Ram::new(RAM_SIZE);
    let img = load_raw(&[1, 2, 3, 4], &mut ram, RAM_BASE + 0x10).unwrap();
    assert_eq!(img.entry, RAM_BASE + 0x10);
    assert_eq!(img.tohost, None);
    assert_eq!(ram.load_u32(RAM_BASE + 0x10).unwrap(), 0x0403_0201);
    assert!(matches!(
        load_raw(&[0; 16], &mut ram, RAM_BASE + RAM_SIZE as u64 - 8),
        Err(LoaderError::Memory(_))
    ));
    assert!(load_raw(&[0; 16], &mut ram, 0x1000).is_err());
}

fn corrupt(f: impl FnOnce(&mut Vec<u8>)) -> std::result::Result<(), LoaderError> {
    let (mut elf, _) = sample_elf();
    f(&mut elf);
    let mut ram = Ram::new(RAM_SIZE);
    let before = ram.clone();
    let r = load_elf(&elf, &mut ram).map(|_| ());
    if r.is_err() {
        assert_eq!(ram, before, "RAM untouched on error");
    }
    r
}

#[test]
fn malformed_headers_give_typed_errors() {
    assert_eq!(corrupt(|e| e[0] = 0), Err(LoaderError::BadMagic));
    assert_eq!(corrupt(|e| e[4] = 1), Err(LoaderError::UnsupportedClass(1)));
    assert_eq!(
        corrupt(|e| e[5] = 2),
        Err(LoaderError::UnsupportedEncoding(2))
    );
    assert_eq!(
        corrupt(|e| e[6] = 0),
        Err(LoaderError::UnsupportedVersion(0))
    );
    assert_eq!(
        corrupt(|e| put16(e, 16, 3)),
        Err(LoaderError::UnsupportedType(3))
    );
    assert_eq!(
        corrupt(|e| put16(e, 18, 62)),
        Err(LoaderError::WrongMachine(62))
    );
    assert!(matches!(
        corrupt(|e| put16(e, off::E_PHENTSIZE, 40)),
        Err(LoaderError::BadEntrySize { .. })
    ));
    assert!(matches!(
        corrupt(|e| put16(e, off::E_PHNUM, 0xFFFF)),
        Err(LoaderError::BadCount { .. })
    ));
    assert!(matches!(
        corrupt(|e| put16(e, off::E_PHNUM, 5000)),
        Err(LoaderError::Truncated { .. })
    ));
    assert!(matches!(
        corrupt(|e| put64(e, off::E_PHOFF, u64::MAX - 10)),
        Err(LoaderError::Overflow(_))
    ));
    assert!(matches!(
        corrupt(|e| put16(e, off::E_SHNUM, 60000)),
        Err(LoaderError::Truncated { .. })
    ));
    // Truncated images, at every length.
    let (elf, _) = sample_elf();
    for len in 0..elf.len() {
        let mut ram = Ram::new(RAM_SIZE);
        assert!(
            load_elf(&elf[..len], &mut ram).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
}

#[test]
fn bad_segments_give_typed_errors() {
    assert!(matches!(
        corrupt(|e| put64(e, off::P_PADDR, 0x1000)),
        Err(LoaderError::SegmentOutsideRam { index: 0, .. })
    ));
    assert!(matches!(
        corrupt(|e| put64(e, off::P_PADDR, RAM_BASE + RAM_SIZE as u64 - 4)),
        Err(LoaderError::SegmentOutsideRam { .. })
    ));
    assert!(matches!(
        corrupt(|e| put64(e, off::P_MEMSZ, u64::MAX)),
        Err(LoaderError::SegmentOutsideRam { .. })
    ));
    assert!(matches!(
        corrupt(|e| put64(e, off::P_MEMSZ, 1)),
        Err(LoaderError::FileSizeExceedsMemSize { index: 0, .. })
    ));
    assert!(matches!(
        corrupt(|e| {
            put64(e, off::P_FILESZ, u64::MAX);
            put64(e, off::P_MEMSZ, u64::MAX);
        }),
        Err(LoaderError::Overflow(_) | LoaderError::Truncated { .. })
    ));
    assert!(matches!(
        corrupt(|e| put64(e, off::P_OFFSET, u64::MAX - 3)),
        Err(LoaderError::Overflow(_))
    ));
    // The second segment is bad: the first must not have been written either
    // (checked inside `corrupt`).
    assert!(matches!(
        corrupt(|e| put64(e, off::P_PADDR + PH, 0)),
        Err(LoaderError::SegmentOutsideRam { index: 1, .. })
    ));
}

#[test]
fn bad_symbol_tables_give_typed_errors() {
    let (elf, _) = sample_elf();
    let shoff = u64::from_le_bytes(elf[40..48].try_into().unwrap()) as usize;
    let symtab_sh = shoff + SH;
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(move |e| put32(e, symtab_sh + 40, 99)), "bad link"),
        (
            Box::new(move |e| put64(e, symtab_sh + 56, 8)),
            "bad entsize",
        ),
        (
            Box::new(move |e| put64(e, symtab_sh + 32, 1 << 40)),
            "huge symtab",
        ),
        (
            Box::new(move |e| put64(e, symtab_sh + 24, u64::MAX)),
            "overflowing offset",
        ),
        (
            Box::new(move |e| put64(e, symtab_sh + SH + 32, 3)),
            "name not terminated inside strtab",
        ),
    ];
    for (f, what) in cases {
        let r = corrupt(|e| f(e));
        assert!(r.is_err(), "{what}: {r:?}");
    }
}

/// Scaled by `FT_SOAK`, moved by `FT_SEED_BASE` (see `prop_support`).
fn config(cases: u32) -> Config {
    prop_support::soaked_config(cases, 0xE1F_10AD)
}

proptest! {
    #![proptest_config(config(3000))]

    /// Random bytes never panic (errors are fine).
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut ram = Ram::new(64 * 1024);
        let _ = load_elf(&bytes, &mut ram);
    }

    /// Random bytes behind a valid ELF identification never panic.
    #[test]
    fn random_headers_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 64..600)) {
        bytes[0..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[6] = 1;
        put16(&mut bytes, 16, 2);
        put16(&mut bytes, 18, 243);
        put32(&mut bytes, 20, 1);
        let mut ram = Ram::new(64 * 1024);
        let _ = load_elf(&bytes, &mut ram);
    }

    /// A valid image with a few random byte / word mutations never panics, and a
    /// successful load only writes inside RAM (trivially: Ram is bounds-checked).
    #[test]
    fn mutated_images_never_panic(
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u64>(), 0u8..3), 1..6)
    ) {
        let (mut elf, _) = sample_elf();
        for (idx, val, kind) in muts {
            if elf.is_empty() {
                break;
            }
            let len = elf.len();
            let at = idx.index(len);
            match kind {
                0 => elf[at] = val as u8,
                1 if at + 8 <= len => put64(&mut elf, at, val),
                _ => elf.truncate(at),
            }
        }
        let mut ram = Ram::new(RAM_SIZE);
        let _ = load_elf(&elf, &mut ram);
    }
}
