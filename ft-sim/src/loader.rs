//! Loading guest images into [`Ram`]: static ELF64 little-endian RISC-V executables
//! ([`load_elf`]) and raw binaries ([`load_raw`]).
//!
//! The ELF parser is a small hand-written one that validates every offset, size and
//! count against the input length (with checked arithmetic) before using it, so
//! malformed input yields a [`LoaderError`], never a panic, and allocation is bounded
//! by the input size.

use std::collections::BTreeMap;

use crate::memory::{MemoryError, Ram};

/// Errors of image loading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoaderError {
    /// The input is shorter than a structure it must contain.
    #[error(
        "truncated image: {what} at offset {offset} (+{len} bytes) exceeds the {size}-byte input"
    )]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Its file offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The input length.
        size: u64,
    },
    /// An offset/size computation overflowed.
    #[error("arithmetic overflow computing the extent of {0}")]
    Overflow(&'static str),
    /// Not an ELF file.
    #[error("bad ELF magic")]
    BadMagic,
    /// `EI_CLASS` is not ELFCLASS64.
    #[error("unsupported ELF class {0} (need 2 = ELF64)")]
    UnsupportedClass(u8),
    /// `EI_DATA` is not little-endian.
    #[error("unsupported ELF data encoding {0} (need 1 = little-endian)")]
    UnsupportedEncoding(u8),
    /// `EI_VERSION` / `e_version` is not 1.
    #[error("unsupported ELF version {0}")]
    UnsupportedVersion(u32),
    /// `e_type` is not ET_EXEC.
    #[error("unsupported ELF type {0} (need 2 = ET_EXEC)")]
    UnsupportedType(u16),
    /// `e_machine` is not EM_RISCV.
    #[error("wrong ELF machine {0} (need 243 = RISC-V)")]
    WrongMachine(u16),
    /// A table's entry size is smaller than the structure it holds.
    #[error("bad {what} entry size {size}")]
    BadEntrySize {
        /// Which table.
        what: &'static str,
        /// The declared entry size.
        size: u64,
    },
    /// Extended numbering (`e_phnum == 0xffff`) or other unsupported count.
    #[error("unsupported {what} count {count}")]
    BadCount {
        /// Which table.
        what: &'static str,
        /// The declared count.
        count: u64,
    },
    /// A segment's file size exceeds its memory size.
    #[error("segment {index}: p_filesz {filesz} > p_memsz {memsz}")]
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// Its file size.
        filesz: u64,
        /// Its memory size.
        memsz: u64,
    },
    /// A loadable segment does not fit in RAM.
    #[error("segment {index}: [{addr:#x}, +{size:#x}) is outside RAM")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// Its physical address.
        addr: u64,
        /// Its memory size.
        size: u64,
    },
    /// A section header index (`sh_link`) points nowhere.
    #[error("section {index} links to missing section {link}")]
    BadSectionLink {
        /// The linking section.
        index: usize,
        /// The link target.
        link: u64,
    },
    /// A symbol name is not NUL-terminated inside its string table, or not UTF-8.
    #[error("bad symbol name at string table offset {0}")]
    BadSymbolName(u64),
    /// The symbol names would take unreasonably more memory than the input.
    #[error("symbol table too large")]
    SymbolTableTooLarge,
    /// The program was built for ISA extensions this machine does not implement.
    #[error("the program needs the {missing} extension(s), which this machine lacks (it implements {IMPLEMENTED}): its {evidence}")]
    NeedsExtensions {
        /// The missing extensions, comma-separated (`"F, D"`).
        missing: String,
        /// Where the loader saw the need: the float ABI in `e_flags`, or the arch
        /// string of `.riscv.attributes`.
        evidence: String,
    },
    /// The `.riscv.attributes` section is malformed.
    #[error("bad .riscv.attributes section: {0}")]
    BadAttributes(&'static str),
    /// Copying into RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, LoaderError>;

/// What a loaded image provides to the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point (initial pc).
    pub entry: u64,
    /// Address of the `tohost` symbol, if defined.
    pub tohost: Option<u64>,
    /// Address of the `fromhost` symbol, if defined.
    pub fromhost: Option<u64>,
    /// All defined, named symbols (name → value). Global bindings win over local
    /// ones of the same name; otherwise the first one wins.
    pub symbols: BTreeMap<String, u64>,
}

impl LoadedImage {
    /// The value (address) of a defined symbol.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }
}

/// Copies a raw binary into RAM at `addr`; entry = `addr`, no symbols.
pub fn load_raw(bytes: &[u8], ram: &mut Ram, addr: u64) -> Result<LoadedImage> {
    ram.write(addr, bytes)?;
    Ok(LoadedImage {
        entry: addr,
        ..LoadedImage::default()
    })
}

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const SYM_SIZE: u64 = 24;
const PT_LOAD: u32 = 1;
const SHT_SYMTAB: u32 = 2;
/// `SHT_RISCV_ATTRIBUTES`: the build attributes, with the arch string.
const SHT_RISCV_ATTRIBUTES: u32 = 0x7000_0003;
/// `EF_RISCV_FLOAT_ABI`: bits 1..2 of `e_flags` (0 soft, 1 single, 2 double, 3 quad).
const EF_RISCV_FLOAT_ABI: u32 = 0x6;
/// `Tag_RISCV_arch` in the `riscv` attributes subsection: the arch string.
const TAG_RISCV_ARCH: u64 = 5;

/// What the CPU implements, as an ISA string names it.
const IMPLEMENTED: &str = "RV64IMAC + Zicsr + Zifencei + Zicntr";
/// The single-letter extensions of the CPU (`e` is a subset of `i`).
const SINGLE_LETTER: &[char] = &['i', 'e', 'm', 'a', 'c'];
/// The multi-letter extensions of the CPU: its CSRs, `fence.i`, the multiply subset of
/// M, the two halves of A (AMOs and `lr`/`sc`), the counters (`cycle`, `time`,
/// `instret`), and Zca, the part of C without floating point (newer toolchains name
/// these beside the single letters).
const MULTI_LETTER: &[&str] = &[
    "zicsr", "zifencei", "zmmul", "zaamo", "zalrsc", "zicntr", "zca",
];
const ET_EXEC: u16 = 2;
const EM_RISCV: u16 = 243;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;

/// Bounds-checked little-endian reader over the input.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    /// The sub-slice `[offset, offset + len)`, or `Truncated`.
    fn slice(&self, what: &'static str, offset: u64, len: u64) -> Result<&'a [u8]> {
        let end = offset.checked_add(len).ok_or(LoaderError::Overflow(what))?;
        let trunc = LoaderError::Truncated {
            what,
            offset,
            len,
            size: self.size(),
        };
        if end > self.size() {
            return Err(trunc);
        }
        let (Ok(s), Ok(e)) = (usize::try_from(offset), usize::try_from(end)) else {
            return Err(trunc);
        };
        self.0.get(s..e).ok_or(trunc)
    }

    /// The `name` of `count` entries of `entsize` bytes (at least `min`, the size of
    /// an `entry`) at `offset`.
    fn table(
        &self,
        (entry, name): (&'static str, &'static str),
        offset: u64,
        entsize: u64,
        count: u64,
        min: u64,
    ) -> Result<&'a [u8]> {
        if entsize < min {
            return Err(LoaderError::BadEntrySize {
                what: entry,
                size: entsize,
            });
        }
        let len = count
            .checked_mul(entsize)
            .ok_or(LoaderError::Overflow(name))?;
        self.slice(name, offset, len)
    }
}

fn rd<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = s.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

fn u8_at(s: &[u8], at: usize) -> u8 {
    s.get(at).copied().unwrap_or(0)
}

fn u16_at(s: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(rd(s, at))
}

fn u32_at(s: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(rd(s, at))
}

fn u64_at(s: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(rd(s, at))
}

/// A validated PT_LOAD segment.
struct Segment<'a> {
    addr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// Loads a static ELF64 little-endian RISC-V executable: copies every PT_LOAD
/// segment to its physical address `p_paddr` (zero-filling `p_memsz - p_filesz`),
/// and reads the symbol table (if any) for `tohost` / `fromhost`.
///
/// All headers and segments are validated before RAM is modified, so on error RAM is
/// unchanged.
pub fn load_elf(bytes: &[u8], ram: &mut Ram) -> Result<LoadedImage> {
    let file = Bytes(bytes);
    let eh = file.slice("ELF header", 0, EHDR_SIZE)?;
    if eh.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(LoaderError::BadMagic);
    }
    if u8_at(eh, 4) != 2 {
        return Err(LoaderError::UnsupportedClass(u8_at(eh, 4)));
    }
    if u8_at(eh, 5) != 1 {
        return Err(LoaderError::UnsupportedEncoding(u8_at(eh, 5)));
    }
    if u8_at(eh, 6) != 1 {
        return Err(LoaderError::UnsupportedVersion(u32::from(u8_at(eh, 6))));
    }
    let e_type = u16_at(eh, 16);
    if e_type != ET_EXEC {
        return Err(LoaderError::UnsupportedType(e_type));
    }
    let machine = u16_at(eh, 18);
    if machine != EM_RISCV {
        return Err(LoaderError::WrongMachine(machine));
    }
    let version = u32_at(eh, 20);
    if version != 1 {
        return Err(LoaderError::UnsupportedVersion(version));
    }
    let entry = u64_at(eh, 24);
    let flags = u32_at(eh, 48);
    let phoff = u64_at(eh, 32);
    let shoff = u64_at(eh, 40);
    let phentsize = u64::from(u16_at(eh, 54));
    let phnum = u64::from(u16_at(eh, 56));
    let shentsize = u64::from(u16_at(eh, 58));
    let shnum = u64::from(u16_at(eh, 60));

    // Program headers.
    let mut segments = Vec::new();
    if phnum > 0 {
        if phnum == 0xFFFF {
            return Err(LoaderError::BadCount {
                what: "program header",
                count: phnum,
            });
        }
        let table = file.table(
            ("program header", "program header table"),
            phoff,
            phentsize,
            phnum,
            PHDR_SIZE,
        )?;
        for (index, ph) in table.chunks_exact(phentsize as usize).enumerate() {
            if u32_at(ph, 0) != PT_LOAD {
                continue;
            }
            let offset = u64_at(ph, 8);
            let paddr = u64_at(ph, 24);
            let filesz = u64_at(ph, 32);
            let memsz = u64_at(ph, 40);
            if filesz > memsz {
                return Err(LoaderError::FileSizeExceedsMemSize {
                    index,
                    filesz,
                    memsz,
                });
            }
            let data = file.slice("segment", offset, filesz)?;
            if memsz == 0 {
                continue;
            }
            if !ram.contains(paddr, memsz) {
                return Err(LoaderError::SegmentOutsideRam {
                    index,
                    addr: paddr,
                    size: memsz,
                });
            }
            segments.push(Segment {
                addr: paddr,
                data,
                memsz,
            });
        }
    }

    // Symbols (validated before touching RAM too).
    let mut image = LoadedImage {
        entry,
        ..LoadedImage::default()
    };
    let sections = if shoff != 0 && shnum > 0 {
        file.table(
            ("section header", "section header table"),
            shoff,
            shentsize,
            shnum,
            SHDR_SIZE,
        )?
    } else {
        &[]
    };
    check_isa(&file, flags, sections, shentsize)?;
    if !sections.is_empty() {
        read_symbols(&file, sections, shentsize, shnum, &mut image.symbols)?;
    }
    image.tohost = image.symbol("tohost");
    image.fromhost = image.symbol("fromhost");

    for seg in &segments {
        ram.write(seg.addr, seg.data)?;
        let filesz = seg.data.len() as u64;
        // filesz <= memsz and [addr, addr + memsz) is inside RAM: no overflow.
        ram.zero(seg.addr.wrapping_add(filesz), seg.memsz - filesz)?;
    }
    Ok(image)
}

/// An extension's name without its version suffix (`2p0`, `1`): `zicsr2p0` is
/// `zicsr`, `zcmp1p0` is `zcmp`, and `zcmp` stays `zcmp`.
fn strip_version(token: &str) -> &str {
    let digits = |t: &str| t.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let t = &token[..digits(token)];
    match t.strip_suffix('p') {
        Some(major) if major.ends_with(|c: char| c.is_ascii_digit()) => &major[..digits(major)],
        _ => t,
    }
}

/// The extensions that the arch string `arch` (`rv64i2p1_m2p0_a2p1_c2p0_zicsr2p0`)
/// names and the CPU lacks, in the string's order, each once.
fn missing_extensions(arch: &str) -> Vec<String> {
    let lower = arch.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("rv64")
        .or_else(|| lower.strip_prefix("rv32"))
    else {
        return vec![format!("base ISA of {arch:?}")];
    };
    let mut missing: Vec<String> = Vec::new();
    let mut lacks = |name: &str| {
        if !missing.iter().any(|m| m == name) {
            missing.push(name.to_owned());
        }
    };
    for (i, token) in rest.split('_').enumerate() {
        if i > 0 && token.starts_with(['z', 's', 'x']) {
            // A multi-letter extension: its name, then its version (`zicsr2p0`).
            let name = strip_version(token);
            if !name.is_empty() && !MULTI_LETTER.contains(&name) {
                lacks(name);
            }
            continue;
        }
        // Single-letter extensions, each with an optional version (`i2p1m2p0`): a
        // letter, then digits, then optionally `p` and digits. A `p` that follows no
        // digit is the P extension.
        let mut chars = token.chars().peekable();
        while let Some(c) = chars.next() {
            if !c.is_ascii_alphabetic() {
                continue;
            }
            if c == 'g' {
                // G = IMAFD + Zicsr + Zifencei.
                for x in ["f", "d"] {
                    lacks(x);
                }
            } else if !SINGLE_LETTER.contains(&c) {
                lacks(&c.to_string());
            }
            let mut digits = false;
            while chars.next_if(char::is_ascii_digit).is_some() {
                digits = true;
            }
            if digits && chars.next_if_eq(&'p').is_some() {
                while chars.next_if(char::is_ascii_digit).is_some() {}
            }
        }
    }
    missing
}

/// Refuse a program built for extensions the CPU lacks: a float ABI in `e_flags`
/// (arguments in F or D registers), or extensions named by the `.riscv.attributes`
/// arch string. A program without the section is judged by its flags alone (old
/// toolchains omit it).
fn check_isa(file: &Bytes<'_>, flags: u32, sections: &[u8], shentsize: u64) -> Result<()> {
    let mut missing: Vec<String> = match (flags & EF_RISCV_FLOAT_ABI) >> 1 {
        0 => vec![],
        1 => vec!["f".into()],
        2 => vec!["f".into(), "d".into()],
        _ => vec!["f".into(), "d".into(), "q".into()],
    };
    let mut evidence = Vec::new();
    if !missing.is_empty() {
        let abi = ["lp64", "lp64f", "lp64d", "lp64q"][((flags & EF_RISCV_FLOAT_ABI) >> 1) as usize];
        evidence.push(format!("e_flags {flags:#x} say the {abi} float ABI"));
    }
    if !sections.is_empty() {
        if let Some(arch) = arch_string(file, sections, shentsize)? {
            let named = missing_extensions(&arch);
            if !named.is_empty() {
                evidence.push(format!(".riscv.attributes arch string is {arch:?}"));
            }
            for m in named {
                if !missing.contains(&m) {
                    missing.push(m);
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(LoaderError::NeedsExtensions {
        missing: missing
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(", "),
        evidence: evidence.join("; "),
    })
}

/// The `Tag_RISCV_arch` string of the `.riscv.attributes` section, if there is one.
fn arch_string(file: &Bytes<'_>, sections: &[u8], shentsize: u64) -> Result<Option<String>> {
    let Some(sh) = sections
        .chunks_exact(shentsize as usize)
        .find(|sh| u32_at(sh, 4) == SHT_RISCV_ATTRIBUTES)
    else {
        return Ok(None);
    };
    let body = file.slice(".riscv.attributes", u64_at(sh, 24), u64_at(sh, 32))?;
    arch_attribute(body)
}

/// ULEB128 at the front of `s`, advancing it.
fn uleb(s: &mut &[u8]) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = s
            .split_first()
            .ok_or(LoaderError::BadAttributes("truncated ULEB128"))?;
        *s = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(LoaderError::BadAttributes("ULEB128 longer than 64 bits"))
}

/// A NUL-terminated string at the front of `s`, advancing it past the NUL.
fn ntbs<'a>(s: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = s
        .iter()
        .position(|&b| b == 0)
        .ok_or(LoaderError::BadAttributes("unterminated string"))?;
    let (text, rest) = s.split_at(n);
    *s = rest.get(1..).unwrap_or_default();
    Ok(text)
}

/// The `Tag_RISCV_arch` string of a `.riscv.attributes` section body: format version
/// `A`, then subsections (`u32` length, vendor name, then tagged sub-subsections of
/// which tag 1, "file", holds ULEB128 tags with ULEB128 or string values; odd tags
/// take strings, even ones numbers, as the RISC-V ELF psABI defines).
fn arch_attribute(body: &[u8]) -> Result<Option<String>> {
    let Some((&b'A', mut rest)) = body.split_first() else {
        return Err(LoaderError::BadAttributes("no format version 'A'"));
    };
    while rest.len() >= 4 {
        let len = u32_at(rest, 0) as usize;
        if len < 4 || len > rest.len() {
            return Err(LoaderError::BadAttributes("subsection length out of range"));
        }
        let (sub, next) = rest.split_at(len);
        rest = next;
        let mut sub = sub.get(4..).unwrap_or_default();
        if ntbs(&mut sub)? != b"riscv" {
            continue; // another vendor's attributes
        }
        while let Some((&tag, after)) = sub.split_first() {
            if after.len() < 4 {
                return Err(LoaderError::BadAttributes("truncated sub-subsection"));
            }
            let size = u32_at(after, 0) as usize;
            if size < 5 || size > sub.len() {
                return Err(LoaderError::BadAttributes(
                    "sub-subsection size out of range",
                ));
            }
            let (whole, next) = sub.split_at(size);
            sub = next;
            if tag != 1 {
                continue; // section or symbol attributes
            }
            let mut attrs = whole.get(5..).unwrap_or_default();
            while !attrs.is_empty() {
                let tag = uleb(&mut attrs)?;
                if tag % 2 == 1 {
                    let text = ntbs(&mut attrs)?;
                    if tag == TAG_RISCV_ARCH {
                        return Ok(Some(String::from_utf8_lossy(text).into_owned()));
                    }
                } else {
                    uleb(&mut attrs)?;
                }
            }
        }
    }
    Ok(None)
}

/// Read the symbol table through the section header table `table` (`shnum` entries
/// of `shentsize` bytes, already bounds-checked).
fn read_symbols(
    file: &Bytes<'_>,
    table: &[u8],
    shentsize: u64,
    shnum: u64,
    out: &mut BTreeMap<String, u64>,
) -> Result<()> {
    let section = |i: u64| -> Option<&[u8]> {
        let start = usize::try_from(i.checked_mul(shentsize)?).ok()?;
        table.get(start..start.checked_add(SHDR_SIZE as usize)?)
    };
    // The first SHT_SYMTAB (ELF allows only one).
    let Some((index, sh)) = (0..shnum)
        .map_while(|i| section(i).map(|sh| (i, sh)))
        .find(|(_, sh)| u32_at(sh, 4) == SHT_SYMTAB)
    else {
        return Ok(());
    };
    let sym_off = u64_at(sh, 24);
    let sym_size = u64_at(sh, 32);
    let link = u64::from(u32_at(sh, 40));
    let entsize = u64_at(sh, 56);
    if entsize < SYM_SIZE {
        return Err(LoaderError::BadEntrySize {
            what: "symbol",
            size: entsize,
        });
    }
    let syms = file.slice("symbol table", sym_off, sym_size)?;
    let strsh = section(link).ok_or(LoaderError::BadSectionLink {
        index: index as usize,
        link,
    })?;
    let strtab = file.slice("string table", u64_at(strsh, 24), u64_at(strsh, 32))?;
    let entsize = usize::try_from(entsize).map_err(|_| LoaderError::BadEntrySize {
        what: "symbol",
        size: entsize,
    })?;
    // Names may overlap in the string table (suffix sharing), so bound the total
    // bytes copied to keep allocation linear in the input size.
    let mut budget = file.size().saturating_mul(4).saturating_add(64 * 1024);
    // name -> (value, is_global)
    let mut found: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    for sym in syms.chunks_exact(entsize) {
        let name_off = u64::from(u32_at(sym, 0));
        let bind = u8_at(sym, 4) >> 4;
        let shndx = u16_at(sym, 6);
        let value = u64_at(sym, 8);
        if shndx == 0 || name_off == 0 {
            continue; // undefined or unnamed
        }
        let name = c_str(strtab, name_off)?;
        if name.is_empty() {
            continue;
        }
        let is_global = bind == STB_GLOBAL || bind == STB_WEAK;
        match found.get_mut(name) {
            None => {
                budget = budget
                    .checked_sub(name.len() as u64)
                    .ok_or(LoaderError::SymbolTableTooLarge)?;
                found.insert(name.to_owned(), (value, is_global));
            }
            Some(entry) if !entry.1 && is_global => *entry = (value, true),
            Some(_) => {}
        }
    }
    *out = found.into_iter().map(|(k, (v, _))| (k, v)).collect();
    Ok(())
}

/// The NUL-terminated UTF-8 string at `off` in `strtab`.
fn c_str(strtab: &[u8], off: u64) -> Result<&str> {
    let bad = LoaderError::BadSymbolName(off);
    let start = usize::try_from(off).map_err(|_| bad.clone())?;
    let rest = strtab.get(start..).ok_or(bad.clone())?;
    let len = rest.iter().position(|&b| b == 0).ok_or(bad.clone())?;
    std::str::from_utf8(rest.get(..len).ok_or(bad.clone())?).map_err(|_| bad)
}

#[cfg(test)]
mod isa_tests {
    use super::*;

    #[test]
    fn version_suffixes_come_off() {
        assert_eq!(strip_version("zicsr2p0"), "zicsr");
        assert_eq!(strip_version("zcmp1p0"), "zcmp");
        assert_eq!(strip_version("zcmp"), "zcmp");
        assert_eq!(strip_version("zifencei2"), "zifencei");
    }

    #[test]
    fn the_arch_string_names_what_is_missing() {
        assert!(missing_extensions("rv64i2p1_m2p0_c2p0_zicsr2p0_zifencei2p0").is_empty());
        assert!(missing_extensions("rv64imc").is_empty());
        assert_eq!(
            missing_extensions("rv64i2p1_m2p0_a2p1_f2p2_d2p2_c2p0_zicsr2p0_zifencei2p0"),
            ["f", "d"]
        );
        assert_eq!(missing_extensions("rv64gc"), ["f", "d"]);
        assert_eq!(missing_extensions("rv64imac_zba1p0"), ["zba"]);
        assert!(missing_extensions(
            "rv64i2p1_m2p0_a2p1_c2p0_zicsr2p0_zifencei2p0_zaamo1p0_zalrsc1p0_zicntr2p0"
        )
        .is_empty());
        assert_eq!(missing_extensions("RV64IMV"), ["v"]);
        assert_eq!(
            missing_extensions("rv64i2p1_m2p0_p0p9"),
            ["p"],
            "P is an extension"
        );
        assert_eq!(missing_extensions("rv64g_f2p2"), ["f", "d"], "each once");
        assert!(missing_extensions("rv64i2p1_m2p0_c2p0_zmmul1p0_zca1p0").is_empty());
        assert_eq!(missing_extensions("x86_64"), ["base ISA of \"x86_64\""]);
    }

    /// A `.riscv.attributes` body with `tags` (already encoded) in its file
    /// sub-subsection.
    fn attributes(tags: &[u8]) -> Vec<u8> {
        let mut file = vec![1u8];
        file.extend_from_slice(&(5 + tags.len() as u32).to_le_bytes());
        file.extend_from_slice(tags);
        let mut sub = Vec::new();
        sub.extend_from_slice(&(4 + 6 + file.len() as u32).to_le_bytes());
        sub.extend_from_slice(b"riscv\0");
        sub.extend_from_slice(&file);
        let mut body = vec![b'A'];
        body.extend_from_slice(&sub);
        body
    }

    #[test]
    fn the_arch_attribute_is_found_after_numeric_tags() {
        // Tag_RISCV_stack_align (4) = 16, then Tag_RISCV_arch (5).
        let mut tags = vec![4u8, 16, 5];
        tags.extend_from_slice(b"rv64i2p1_m2p0_a2p1\0");
        tags.extend_from_slice(&[6, 1]); // Tag_RISCV_unaligned_access = 1
        assert_eq!(
            arch_attribute(&attributes(&tags)).unwrap().as_deref(),
            Some("rv64i2p1_m2p0_a2p1")
        );
        assert_eq!(arch_attribute(&attributes(&[4, 16])).unwrap(), None);
    }

    #[test]
    fn malformed_attributes_are_errors_not_panics() {
        let good = {
            let mut tags = vec![5u8];
            tags.extend_from_slice(b"rv64imc\0");
            attributes(&tags)
        };
        assert!(arch_attribute(b"").is_err());
        assert!(arch_attribute(b"B").is_err());
        for cut in 1..good.len() {
            let _ = arch_attribute(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(arch_attribute(&huge).is_err());
        let mut unterminated = good.clone();
        unterminated.pop();
        assert!(arch_attribute(&unterminated).is_err());
        // A ULEB128 that never ends.
        let endless = attributes(&[0x80; 12]);
        assert!(arch_attribute(&endless).is_err());
    }
}
