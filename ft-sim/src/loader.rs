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
        if phentsize < PHDR_SIZE {
            return Err(LoaderError::BadEntrySize {
                what: "program header",
                size: phentsize,
            });
        }
        let table_len = phnum
            .checked_mul(phentsize)
            .ok_or(LoaderError::Overflow("program header table"))?;
        let table = file.slice("program header table", phoff, table_len)?;
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
    if shoff != 0 && shnum > 0 {
        read_symbols(&file, shoff, shentsize, shnum, &mut image.symbols)?;
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

fn read_symbols(
    file: &Bytes<'_>,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
    out: &mut BTreeMap<String, u64>,
) -> Result<()> {
    if shentsize < SHDR_SIZE {
        return Err(LoaderError::BadEntrySize {
            what: "section header",
            size: shentsize,
        });
    }
    let table_len = shnum
        .checked_mul(shentsize)
        .ok_or(LoaderError::Overflow("section header table"))?;
    let table = file.slice("section header table", shoff, table_len)?;
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
