//! PVH boot of an ELF64 image: find the Xen PVH entry note, load the
//! `PT_LOAD` segments at their physical addresses, and place the
//! `hvm_start_info` (version 1, with a memory map) and the command line.
//!
//! The ABI is Xen's `xen/include/public/arch-x86/hvm/start_info.h` and the
//! `XEN_ELFNOTE_PHYS32_ENTRY` note of `elfnote.h`. The parser is our own,
//! bounds-checked on every field: a bad file is an [`ElfError`], never a
//! panic. No relocations are applied and no modules (initrd) are loaded.
//!
//! Guest-physical layout of the boot data (all below the 1 MiB image):
//!
//! | address | what |
//! | --- | --- |
//! | [`BOOT_GDT`] `0x5000` | a flat GDT: null, null, code32 at selector [`CODE_SELECTOR`] `0x10`, data32 at [`DATA_SELECTOR`] `0x18` |
//! | [`START_INFO`] `0x6000` | `hvm_start_info`, 56 bytes |
//! | [`MEMMAP`] `0x6100` | `hvm_memmap_table_entry[]`, 24 bytes each, at most [`MEMMAP_MAX`] |
//! | [`CMDLINE`] `0x7000` | the command line, NUL-terminated, at most [`CMDLINE_MAX`] bytes before the NUL |
//!
//! [`BOOT_DATA`] (`0x5000..0x8000`) must be RAM and no segment may overlap it.

use std::fmt;
use std::ops::Range;

use virtio_core::memory::{GuestAddress, GuestMemory, MemoryError};

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// The `hvm_start_info` version written (1: with the memory map).
pub const START_INFO_VERSION: u32 = 1;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note whose value is the 32-bit entry.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// `hvm_memmap_table_entry.type` of usable RAM (E820 numbering).
pub const MEMMAP_TYPE_RAM: u32 = 1;

/// Where the boot GDT goes.
pub const BOOT_GDT: u64 = 0x5000;
/// Where `hvm_start_info` goes (`ebx` at entry).
pub const START_INFO: u64 = 0x6000;
/// Where the memory map goes.
pub const MEMMAP: u64 = 0x6100;
/// Where the command line goes.
pub const CMDLINE: u64 = 0x7000;
/// The whole boot-data range: RAM, and no segment may overlap it.
pub const BOOT_DATA: Range<u64> = BOOT_GDT..CMDLINE + 0x1000;
/// Longest command line, in bytes without the NUL.
pub const CMDLINE_MAX: usize = 0xfff;
/// Most memory-map entries (what fits between [`MEMMAP`] and [`CMDLINE`]).
pub const MEMMAP_MAX: usize = ((CMDLINE - MEMMAP) / MEMMAP_ENTRY_SIZE) as usize;
/// Selector of the flat 32-bit code segment in the boot GDT.
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the flat 32-bit data segment in the boot GDT.
pub const DATA_SELECTOR: u16 = 0x18;

/// The boot GDT's descriptors: null, null, code (base 0, limit 4 GiB,
/// 32-bit, execute/read, accessed), data (base 0, limit 4 GiB, 32-bit,
/// read/write, accessed).
pub const BOOT_GDT_ENTRIES: [u64; 4] = [0, 0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

const START_INFO_SIZE: usize = 56;
const MEMMAP_ENTRY_SIZE: u64 = 24;

const ELF_HEADER_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const SHT_NOTE: u32 = 7;
const PN_XNUM: u16 = 0xffff;

/// Why an ELF file cannot be booted by PVH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Fewer bytes than a header or table needs.
    Truncated {
        /// What was being read.
        what: String,
        /// Its file offset.
        offset: u64,
        /// Bytes it needs.
        len: u64,
        /// Bytes the file has.
        file_len: u64,
    },
    /// The file does not start with `\x7fELF`.
    BadMagic,
    /// `EI_CLASS` is not ELFCLASS64.
    NotElf64 {
        /// The class byte.
        class: u8,
    },
    /// `EI_DATA` is not little-endian.
    NotLittleEndian {
        /// The data byte.
        data: u8,
    },
    /// `e_machine` is not x86-64.
    NotX86_64 {
        /// The machine number.
        machine: u16,
    },
    /// `e_type` is not `ET_EXEC` (a PVH loader applies no relocations).
    NotExecutable {
        /// The type number.
        e_type: u16,
    },
    /// A program or section header size this parser does not know.
    BadHeaderSize {
        /// `e_phentsize` or `e_shentsize`.
        what: &'static str,
        /// Its value.
        size: u16,
    },
    /// More than 65534 program headers (`PN_XNUM`), not supported.
    TooManyProgramHeaders,
    /// An offset or address plus a size wraps around.
    Overflow {
        /// What overflowed.
        what: String,
    },
    /// No `Xen` note of type 18 in any `PT_NOTE` segment or `SHT_NOTE`
    /// section.
    NoPvhNote,
    /// The PVH note's value is neither 4 nor 8 bytes.
    BadPvhNote {
        /// Its `descsz`.
        descsz: u32,
    },
    /// The PVH entry is not reachable in 32-bit protected mode.
    EntryAbove4G {
        /// The entry.
        entry: u64,
    },
    /// The PVH entry lies in no loaded segment.
    EntryNotLoaded {
        /// The entry.
        entry: u64,
    },
    /// No `PT_LOAD` segment with a non-zero size.
    NoLoadSegment,
    /// A segment's file size exceeds its memory size.
    FileSizeExceedsMemSize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        filesz: u64,
        /// `p_memsz`.
        memsz: u64,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Truncated {
                what,
                offset,
                len,
                file_len,
            } => write!(
                f,
                "ELF truncated: {what} needs {len:#x} bytes at offset {offset:#x}, the file has {file_len:#x}"
            ),
            ElfError::BadMagic => f.write_str("not an ELF file (no \\x7fELF magic)"),
            ElfError::NotElf64 { class } => write!(f, "ELF class {class} is not ELFCLASS64 (2)"),
            ElfError::NotLittleEndian { data } => {
                write!(f, "ELF data encoding {data} is not little-endian (1)")
            }
            ElfError::NotX86_64 { machine } => {
                write!(f, "ELF machine {machine} is not x86-64 (62)")
            }
            ElfError::NotExecutable { e_type } => write!(
                f,
                "ELF type {e_type} is not ET_EXEC (2): PVH loading applies no relocations"
            ),
            ElfError::BadHeaderSize { what, size } => write!(f, "ELF {what} is {size}"),
            ElfError::TooManyProgramHeaders => {
                f.write_str("ELF has PN_XNUM program headers (not supported)")
            }
            ElfError::Overflow { what } => write!(f, "ELF {what} overflows"),
            ElfError::NoPvhNote => f.write_str(
                "no PVH entry: no 'Xen' note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY) in a PT_NOTE or SHT_NOTE",
            ),
            ElfError::BadPvhNote { descsz } => {
                write!(f, "PVH note value is {descsz} bytes, not 4 or 8")
            }
            ElfError::EntryAbove4G { entry } => {
                write!(f, "PVH entry {entry:#x} is above 4 GiB")
            }
            ElfError::EntryNotLoaded { entry } => {
                write!(f, "PVH entry {entry:#x} lies in no PT_LOAD segment")
            }
            ElfError::NoLoadSegment => f.write_str("ELF has no non-empty PT_LOAD segment"),
            ElfError::FileSizeExceedsMemSize {
                index,
                filesz,
                memsz,
            } => write!(
                f,
                "ELF program header {index}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}"
            ),
        }
    }
}

impl std::error::Error for ElfError {}

/// Why an image could not be loaded into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// The ELF itself is bad.
    Elf(ElfError),
    /// A segment does not lie entirely in one RAM range.
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// A segment overlaps [`BOOT_DATA`].
    SegmentOverlapsBootData {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        paddr: u64,
        /// `p_memsz`.
        memsz: u64,
    },
    /// [`BOOT_DATA`] is not RAM (the machine has too little low memory).
    BootDataOutsideRam,
    /// The command line is longer than [`CMDLINE_MAX`].
    CmdlineTooLong {
        /// Its length.
        len: usize,
    },
    /// The command line contains a NUL byte.
    CmdlineHasNul {
        /// Its position.
        at: usize,
    },
    /// More RAM ranges than [`MEMMAP_MAX`] memory-map entries.
    TooManyRamRanges {
        /// How many.
        count: usize,
    },
    /// Guest memory refused a write (a RAM range not backed by memory).
    Memory(MemoryError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Elf(e) => e.fmt(f),
            LoadError::SegmentOutsideRam {
                index,
                paddr,
                memsz,
            } => write!(
                f,
                "ELF program header {index}: PT_LOAD at {paddr:#x}+{memsz:#x} is outside RAM"
            ),
            LoadError::SegmentOverlapsBootData {
                index,
                paddr,
                memsz,
            } => write!(
                f,
                "ELF program header {index}: PT_LOAD at {paddr:#x}+{memsz:#x} overlaps the PVH boot data at {:#x}..{:#x}",
                BOOT_DATA.start, BOOT_DATA.end
            ),
            LoadError::BootDataOutsideRam => write!(
                f,
                "the PVH boot data at {:#x}..{:#x} is not in RAM",
                BOOT_DATA.start, BOOT_DATA.end
            ),
            LoadError::CmdlineTooLong { len } => write!(
                f,
                "command line of {len} bytes is longer than {CMDLINE_MAX}"
            ),
            LoadError::CmdlineHasNul { at } => {
                write!(f, "command line has a NUL byte at {at}")
            }
            LoadError::TooManyRamRanges { count } => {
                write!(f, "{count} RAM ranges, the memory map holds {MEMMAP_MAX}")
            }
            LoadError::Memory(e) => write!(f, "writing guest memory: {e}"),
        }
    }
}

impl std::error::Error for LoadError {}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl From<MemoryError> for LoadError {
    fn from(e: MemoryError) -> Self {
        LoadError::Memory(e)
    }
}

/// One guest-physical RAM range (it also becomes a memory-map entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl RamRange {
    /// True if `start..start + len` lies inside this range (`len` may be 0).
    pub fn contains(&self, start: u64, len: u64) -> bool {
        match (start.checked_add(len), self.base.checked_add(self.size)) {
            (Some(end), Some(limit)) => start >= self.base && end <= limit,
            _ => false,
        }
    }
}

/// One `PT_LOAD` segment, borrowed from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSegment<'a> {
    /// Program header index.
    pub index: usize,
    /// `p_paddr`: where it goes.
    pub paddr: u64,
    /// The `p_filesz` bytes from the file.
    pub data: &'a [u8],
    /// `p_memsz`: the rest up to it is zeroed.
    pub memsz: u64,
}

/// A parsed PVH-bootable ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhImage<'a> {
    /// The 32-bit entry from the PVH note.
    pub entry: u32,
    /// The non-empty `PT_LOAD` segments, in file order.
    pub segments: Vec<LoadSegment<'a>>,
}

impl PvhImage<'_> {
    /// The lowest and one past the highest guest-physical byte loaded.
    pub fn extent(&self) -> Range<u64> {
        let start = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let end = self
            .segments
            .iter()
            .map(|s| s.paddr.saturating_add(s.memsz))
            .max()
            .unwrap_or(0);
        start..end
    }
}

/// Bounds-checked little-endian reads from the file.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(
        &self,
        offset: u64,
        len: u64,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], ElfError> {
        let truncated = || ElfError::Truncated {
            what: what(),
            offset,
            len,
            file_len: self.data.len() as u64,
        };
        let end = offset.checked_add(len).ok_or_else(|| ElfError::Overflow {
            what: format!("{} at offset {offset:#x} size {len:#x}", what()),
        })?;
        let start = usize::try_from(offset).map_err(|_| truncated())?;
        let end = usize::try_from(end).map_err(|_| truncated())?;
        self.data.get(start..end).ok_or_else(truncated)
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses `elf` as a PVH-bootable x86-64 executable.
///
/// All header fields are read from slices whose length was checked first,
/// so the fixed-offset reads (`le32(hdr, 4)` and the like) cannot go out of
/// bounds.
pub fn parse(elf: &[u8]) -> Result<PvhImage<'_>, ElfError> {
    let r = Reader { data: elf };
    if elf.len() >= 4 && &elf[..4] != b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    let eh = r.bytes(0, ELF_HEADER_SIZE as u64, &|| "the ELF header".into())?;
    if eh[4] != 2 {
        return Err(ElfError::NotElf64 { class: eh[4] });
    }
    if eh[5] != 1 {
        return Err(ElfError::NotLittleEndian { data: eh[5] });
    }
    let e_type = le16(eh, 16);
    let machine = le16(eh, 18);
    if machine != EM_X86_64 {
        return Err(ElfError::NotX86_64 { machine });
    }
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable { e_type });
    }
    let phoff = le64(eh, 32);
    let shoff = le64(eh, 40);
    let phentsize = le16(eh, 54);
    let phnum = le16(eh, 56);
    let shentsize = le16(eh, 58);
    let shnum = le16(eh, 60);
    if phnum == PN_XNUM {
        return Err(ElfError::TooManyProgramHeaders);
    }
    if phnum > 0 && usize::from(phentsize) < PHDR_SIZE {
        return Err(ElfError::BadHeaderSize {
            what: "e_phentsize",
            size: phentsize,
        });
    }

    let mut segments = Vec::new();
    let mut entry = None;
    let mut bad_note = None;
    for index in 0..usize::from(phnum) {
        let off = (index as u64)
            .checked_mul(u64::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| ElfError::Overflow {
                what: format!("program header {index} offset"),
            })?;
        let ph = r.bytes(off, PHDR_SIZE as u64, &|| format!("program header {index}"))?;
        let p_type = le32(ph, 0);
        let p_offset = le64(ph, 8);
        let p_paddr = le64(ph, 24);
        let p_filesz = le64(ph, 32);
        let p_memsz = le64(ph, 40);
        let p_align = le64(ph, 48);
        match p_type {
            PT_LOAD => {
                if p_filesz > p_memsz {
                    return Err(ElfError::FileSizeExceedsMemSize {
                        index,
                        filesz: p_filesz,
                        memsz: p_memsz,
                    });
                }
                p_paddr
                    .checked_add(p_memsz)
                    .ok_or_else(|| ElfError::Overflow {
                        what: format!(
                            "program header {index}: p_paddr {p_paddr:#x} + p_memsz {p_memsz:#x}"
                        ),
                    })?;
                let data = r.bytes(p_offset, p_filesz, &|| {
                    format!("the contents of PT_LOAD program header {index}")
                })?;
                if p_memsz > 0 {
                    segments.push(LoadSegment {
                        index,
                        paddr: p_paddr,
                        data,
                        memsz: p_memsz,
                    });
                }
            }
            PT_NOTE if entry.is_none() => {
                let notes = r.bytes(p_offset, p_filesz, &|| {
                    format!("the notes of PT_NOTE program header {index}")
                })?;
                match find_pvh_note(notes, p_align) {
                    Ok(found) => entry = found,
                    Err(e) => bad_note = Some(e),
                }
            }
            _ => {}
        }
    }

    if entry.is_none() && shnum > 0 {
        if usize::from(shentsize) < SHDR_SIZE {
            return Err(ElfError::BadHeaderSize {
                what: "e_shentsize",
                size: shentsize,
            });
        }
        for index in 0..usize::from(shnum) {
            let off = (index as u64)
                .checked_mul(u64::from(shentsize))
                .and_then(|o| o.checked_add(shoff))
                .ok_or_else(|| ElfError::Overflow {
                    what: format!("section header {index} offset"),
                })?;
            let sh = r.bytes(off, SHDR_SIZE as u64, &|| format!("section header {index}"))?;
            if le32(sh, 4) != SHT_NOTE {
                continue;
            }
            let notes = r.bytes(le64(sh, 24), le64(sh, 32), &|| {
                format!("the notes of SHT_NOTE section {index}")
            })?;
            match find_pvh_note(notes, le64(sh, 48)) {
                Ok(Some(e)) => {
                    entry = Some(e);
                    break;
                }
                Ok(None) => {}
                Err(e) => bad_note = Some(e),
            }
        }
    }

    let entry = match (entry, bad_note) {
        (Some(e), _) => e,
        (None, Some(bad)) => return Err(bad),
        (None, None) => return Err(ElfError::NoPvhNote),
    };
    if segments.is_empty() {
        return Err(ElfError::NoLoadSegment);
    }
    let entry32 = u32::try_from(entry).map_err(|_| ElfError::EntryAbove4G { entry })?;
    if !segments
        .iter()
        .any(|s| entry >= s.paddr && entry - s.paddr < s.memsz)
    {
        return Err(ElfError::EntryNotLoaded { entry });
    }
    Ok(PvhImage {
        entry: entry32,
        segments,
    })
}

/// Walks one note area; returns the PVH entry if a `Xen` type-18 note is
/// there. Notes are padded to 4 bytes, or to 8 where the area is 8-aligned.
fn find_pvh_note(notes: &[u8], align: u64) -> Result<Option<u64>, ElfError> {
    let pad: usize = if align == 8 { 8 } else { 4 };
    let round = |n: usize| n.checked_next_multiple_of(pad);
    let mut at = 0usize;
    while notes.len().saturating_sub(at) >= 12 {
        let namesz = le32(notes, at) as usize;
        let descsz_raw = le32(notes, at + 4);
        let descsz = descsz_raw as usize;
        let kind = le32(notes, at + 8);
        let name_at = at + 12;
        let Some(desc_at) = round(namesz).and_then(|n| name_at.checked_add(n)) else {
            break;
        };
        let Some(next) = round(descsz).and_then(|n| desc_at.checked_add(n)) else {
            break;
        };
        let name = name_at
            .checked_add(namesz)
            .and_then(|end| notes.get(name_at..end));
        let is_xen = matches!(name, Some(b"Xen\0") | Some(b"Xen"));
        if is_xen && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            let desc = desc_at
                .checked_add(descsz)
                .and_then(|end| notes.get(desc_at..end));
            return match (descsz, desc) {
                (4, Some(d)) => Ok(Some(u64::from(le32(d, 0)))),
                (8, Some(d)) => Ok(Some(le64(d, 0))),
                _ => Err(ElfError::BadPvhNote { descsz: descsz_raw }),
            };
        }
        at = next;
    }
    Ok(None)
}

/// What [`load`] placed, for the vCPU set-up and for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhBoot {
    /// `eip` at entry.
    pub entry: u32,
    /// `ebx` at entry: the guest-physical address of `hvm_start_info`.
    pub start_info: u64,
    /// Guest-physical address of the command line.
    pub cmdline: u64,
    /// Guest-physical address of the memory map.
    pub memmap: u64,
    /// Number of memory-map entries.
    pub memmap_entries: u32,
    /// The guest-physical range from the image's lowest to one past its
    /// highest loaded byte (it may span a hole between RAM ranges: only
    /// the segments themselves are checked to lie in RAM).
    pub image: Range<u64>,
}

/// Loads `elf` into `mem` and writes the boot GDT, `hvm_start_info`, the
/// memory map (one RAM entry per range of `ram`) and `cmdline`.
///
/// Every check is made before the first byte is written: on error guest
/// memory is untouched.
pub fn load<M: GuestMemory>(
    mem: &M,
    ram: &[RamRange],
    elf: &[u8],
    cmdline: &str,
) -> Result<PvhBoot, LoadError> {
    let image = parse(elf)?;
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(LoadError::CmdlineHasNul { at });
    }
    if cmdline.len() > CMDLINE_MAX {
        return Err(LoadError::CmdlineTooLong { len: cmdline.len() });
    }
    if ram.len() > MEMMAP_MAX {
        return Err(LoadError::TooManyRamRanges { count: ram.len() });
    }
    let boot_len = BOOT_DATA.end - BOOT_DATA.start;
    if !ram.iter().any(|r| r.contains(BOOT_DATA.start, boot_len)) {
        return Err(LoadError::BootDataOutsideRam);
    }
    for s in &image.segments {
        if !ram.iter().any(|r| r.contains(s.paddr, s.memsz)) {
            return Err(LoadError::SegmentOutsideRam {
                index: s.index,
                paddr: s.paddr,
                memsz: s.memsz,
            });
        }
        // `paddr + memsz` was checked not to wrap by `parse`.
        if s.paddr < BOOT_DATA.end && s.paddr + s.memsz > BOOT_DATA.start {
            return Err(LoadError::SegmentOverlapsBootData {
                index: s.index,
                paddr: s.paddr,
                memsz: s.memsz,
            });
        }
    }

    const ZEROS: [u8; 4096] = [0; 4096];
    for s in &image.segments {
        mem.write(GuestAddress(s.paddr), s.data)?;
        let mut at = s.paddr + s.data.len() as u64;
        let end = s.paddr + s.memsz;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64);
            mem.write(GuestAddress(at), &ZEROS[..n as usize])?;
            at += n;
        }
    }

    let mut gdt = [0u8; 32];
    for (i, d) in BOOT_GDT_ENTRIES.iter().enumerate() {
        gdt[i * 8..i * 8 + 8].copy_from_slice(&d.to_le_bytes());
    }
    mem.write(GuestAddress(BOOT_GDT), &gdt)?;

    let mut memmap = Vec::with_capacity(ram.len() * MEMMAP_ENTRY_SIZE as usize);
    for r in ram {
        memmap.extend_from_slice(&r.base.to_le_bytes());
        memmap.extend_from_slice(&r.size.to_le_bytes());
        memmap.extend_from_slice(&MEMMAP_TYPE_RAM.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    mem.write(GuestAddress(MEMMAP), &memmap)?;

    let mut line = Vec::with_capacity(cmdline.len() + 1);
    line.extend_from_slice(cmdline.as_bytes());
    line.push(0);
    mem.write(GuestAddress(CMDLINE), &line)?;

    let entries = ram.len() as u32;
    let mut si = [0u8; START_INFO_SIZE];
    si[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
    si[4..8].copy_from_slice(&START_INFO_VERSION.to_le_bytes());
    // flags (8), nr_modules (12), modlist_paddr (16) stay 0.
    si[24..32].copy_from_slice(&CMDLINE.to_le_bytes());
    // rsdp_paddr (32) stays 0: no ACPI.
    si[40..48].copy_from_slice(&MEMMAP.to_le_bytes());
    si[48..52].copy_from_slice(&entries.to_le_bytes());
    mem.write(GuestAddress(START_INFO), &si)?;

    Ok(PvhBoot {
        entry: image.entry,
        start_info: START_INFO,
        cmdline: CMDLINE,
        memmap: MEMMAP,
        memmap_entries: entries,
        image: image.extent(),
    })
}

/// Builds small ELF64 images for tests (ours and downstream): one
/// `PT_LOAD` per code blob and an optional PVH note.
pub mod testing {
    /// How to build the note.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Note {
        /// No note at all.
        None,
        /// A `PT_NOTE` with a 4-byte value.
        Phys32(u32),
        /// A `PT_NOTE` with an 8-byte value.
        Phys64(u64),
        /// Only an `SHT_NOTE` section (no `PT_NOTE`), 8-byte value.
        SectionOnly(u64),
    }

    /// A segment to place: its bytes at `paddr`, `memsz` bytes in memory
    /// (at least `code.len()`; the rest zero-filled by the loader).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Segment {
        /// Where it loads.
        pub paddr: u64,
        /// File contents.
        pub code: Vec<u8>,
        /// Memory size.
        pub memsz: u64,
    }

    /// Builds an `ET_EXEC` x86-64 ELF64 with the given segments and note.
    pub fn elf(segments: &[Segment], note: Note) -> Vec<u8> {
        let phnum = segments.len() + usize::from(matches!(note, Note::Phys32(_) | Note::Phys64(_)));
        let mut out = vec![0u8; 64 + 56 * phnum];
        let mut phdrs = Vec::new();
        for s in segments {
            let off = out.len() as u64;
            out.extend_from_slice(&s.code);
            phdrs.push((1u32, off, s.paddr, s.code.len() as u64, s.memsz, 0x1000u64));
        }
        let note_bytes = |value: Option<u64>, size: u32| {
            let mut n = Vec::new();
            n.extend_from_slice(&4u32.to_le_bytes());
            n.extend_from_slice(&size.to_le_bytes());
            n.extend_from_slice(&18u32.to_le_bytes());
            n.extend_from_slice(b"Xen\0");
            match (value, size) {
                (Some(v), 4) => n.extend_from_slice(&(v as u32).to_le_bytes()),
                (Some(v), _) => n.extend_from_slice(&v.to_le_bytes()),
                (None, _) => {}
            }
            n
        };
        let mut section = None;
        match note {
            Note::None => {}
            Note::Phys32(v) => {
                let n = note_bytes(Some(u64::from(v)), 4);
                let off = out.len() as u64;
                out.extend_from_slice(&n);
                phdrs.push((4, off, 0, n.len() as u64, n.len() as u64, 4));
            }
            Note::Phys64(v) => {
                let n = note_bytes(Some(v), 8);
                let off = out.len() as u64;
                out.extend_from_slice(&n);
                phdrs.push((4, off, 0, n.len() as u64, n.len() as u64, 4));
            }
            Note::SectionOnly(v) => {
                let n = note_bytes(Some(v), 8);
                let off = out.len() as u64;
                out.extend_from_slice(&n);
                section = Some((off, n.len() as u64));
            }
        }
        let mut shnum = 0u16;
        let mut shoff = 0u64;
        if let Some((off, len)) = section {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            shoff = out.len() as u64;
            out.extend_from_slice(&[0u8; 64]); // SHN_UNDEF
            let mut sh = [0u8; 64];
            sh[4..8].copy_from_slice(&7u32.to_le_bytes());
            sh[24..32].copy_from_slice(&off.to_le_bytes());
            sh[32..40].copy_from_slice(&len.to_le_bytes());
            sh[48..56].copy_from_slice(&4u64.to_le_bytes());
            out.extend_from_slice(&sh);
            shnum = 2;
        }
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        out[60..62].copy_from_slice(&shnum.to_le_bytes());
        for (i, (ty, off, paddr, filesz, memsz, align)) in phdrs.into_iter().enumerate() {
            let p = 64 + 56 * i;
            out[p..p + 4].copy_from_slice(&ty.to_le_bytes());
            out[p + 4..p + 8].copy_from_slice(&7u32.to_le_bytes());
            out[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            out[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
            out[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            out[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
            out[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            out[p + 48..p + 56].copy_from_slice(&align.to_le_bytes());
        }
        out
    }

    /// One segment of `code` at 1 MiB with a 4-byte PVH note pointing at
    /// its first byte: the usual test guest.
    pub fn guest(code: &[u8]) -> Vec<u8> {
        elf(
            &[Segment {
                paddr: 0x10_0000,
                code: code.to_vec(),
                memsz: code.len() as u64,
            }],
            Note::Phys32(0x10_0000),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Note, Segment, elf, guest};
    use super::*;
    use virtio_core::memory::{Region, RegionMemory};

    const MIB: u64 = 1 << 20;

    /// Guest memory in a Vec: 4 MiB at guest address 0.
    struct TestRam {
        _buf: Vec<u8>,
        mem: RegionMemory,
    }

    fn ram() -> TestRam {
        let mut buf = vec![0xeeu8; 4 * MIB as usize];
        let mut mem = RegionMemory::new();
        // SAFETY: `buf` lives as long as `mem` (both in TestRam) and is
        // only reached through `mem` afterwards.
        let region = unsafe { Region::new(GuestAddress(0), buf.as_mut_ptr(), 4 * MIB) };
        mem.add(region).unwrap();
        TestRam { _buf: buf, mem }
    }

    const RAM: [RamRange; 1] = [RamRange {
        base: 0,
        size: 4 * MIB,
    }];

    #[test]
    fn loads_segments_and_writes_start_info_memmap_cmdline() {
        let t = ram();
        let file = elf(
            &[
                Segment {
                    paddr: MIB,
                    code: vec![0x90, 0xf4],
                    memsz: 0x2000,
                },
                Segment {
                    paddr: 2 * MIB,
                    code: b"data".to_vec(),
                    memsz: 4,
                },
            ],
            Note::Phys64(MIB + 1),
        );
        let boot = load(&t.mem, &RAM, &file, "console=ttyS0 x=1").unwrap();
        assert_eq!(boot.entry, 0x10_0001);
        assert_eq!(boot.start_info, START_INFO);
        assert_eq!(boot.image, MIB..2 * MIB + 4);
        let mut b = [0u8; 4];
        t.mem.read(GuestAddress(MIB), &mut b).unwrap();
        assert_eq!(b, [0x90, 0xf4, 0, 0]);
        // .bss zero-filled up to memsz, not beyond.
        assert_eq!(t.mem.read_u8_at(MIB + 0x1fff), 0);
        assert_eq!(t.mem.read_u8_at(MIB + 0x2000), 0xee);
        t.mem.read(GuestAddress(2 * MIB), &mut b).unwrap();
        assert_eq!(&b, b"data");

        assert_eq!(
            t.mem.read_u32(GuestAddress(START_INFO)).unwrap(),
            START_INFO_MAGIC
        );
        assert_eq!(t.mem.read_u32(GuestAddress(START_INFO + 4)).unwrap(), 1);
        assert_eq!(
            t.mem.read_u64(GuestAddress(START_INFO + 24)).unwrap(),
            CMDLINE
        );
        assert_eq!(
            t.mem.read_u64(GuestAddress(START_INFO + 40)).unwrap(),
            MEMMAP
        );
        assert_eq!(t.mem.read_u32(GuestAddress(START_INFO + 48)).unwrap(), 1);
        assert_eq!(t.mem.read_u64(GuestAddress(MEMMAP)).unwrap(), 0);
        assert_eq!(t.mem.read_u64(GuestAddress(MEMMAP + 8)).unwrap(), 4 * MIB);
        assert_eq!(t.mem.read_u32(GuestAddress(MEMMAP + 16)).unwrap(), 1);
        let mut line = [0u8; 18];
        t.mem.read(GuestAddress(CMDLINE), &mut line).unwrap();
        assert_eq!(&line, b"console=ttyS0 x=1\0");
        assert_eq!(
            t.mem.read_u64(GuestAddress(BOOT_GDT + 16)).unwrap(),
            BOOT_GDT_ENTRIES[2]
        );
    }

    trait ReadU8 {
        fn read_u8_at(&self, addr: u64) -> u8;
    }

    impl ReadU8 for RegionMemory {
        fn read_u8_at(&self, addr: u64) -> u8 {
            let mut b = [0u8];
            self.read(GuestAddress(addr), &mut b).unwrap();
            b[0]
        }
    }

    #[test]
    fn note_forms_are_found() {
        let seg = [Segment {
            paddr: MIB,
            code: vec![0xf4],
            memsz: 1,
        }];
        assert_eq!(
            parse(&elf(&seg, Note::Phys32(MIB as u32))).unwrap().entry,
            0x10_0000
        );
        assert_eq!(
            parse(&elf(&seg, Note::Phys64(MIB))).unwrap().entry,
            0x10_0000
        );
        assert_eq!(
            parse(&elf(&seg, Note::SectionOnly(MIB))).unwrap().entry,
            0x10_0000
        );
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let seg = |paddr: u64, memsz: u64| Segment {
            paddr,
            code: vec![0xf4],
            memsz,
        };
        let ok = guest(&[0xf4]);
        assert_eq!(
            parse(&elf(&[seg(MIB, 1)], Note::None)),
            Err(ElfError::NoPvhNote)
        );
        assert_eq!(parse(b"MZ\x90\x00rest"), Err(ElfError::BadMagic));
        assert!(matches!(parse(b"\x7fEL"), Err(ElfError::Truncated { .. })));
        assert!(matches!(parse(&ok[..40]), Err(ElfError::Truncated { .. })));
        // Cut inside the program headers and inside the segment's bytes.
        assert!(matches!(parse(&ok[..100]), Err(ElfError::Truncated { .. })));
        let e = parse(&ok[..ok.len() - 20]).unwrap_err();
        assert!(matches!(e, ElfError::Truncated { .. }), "{e:?}");

        let mut bad = ok.clone();
        bad[4] = 1;
        assert_eq!(parse(&bad), Err(ElfError::NotElf64 { class: 1 }));
        let mut bad = ok.clone();
        bad[18] = 3;
        assert_eq!(parse(&bad), Err(ElfError::NotX86_64 { machine: 3 }));
        let mut bad = ok.clone();
        bad[16] = 3;
        assert_eq!(parse(&bad), Err(ElfError::NotExecutable { e_type: 3 }));

        assert_eq!(
            parse(&elf(&[seg(MIB, 1)], Note::Phys64(5 << 32))),
            Err(ElfError::EntryAbove4G { entry: 5 << 32 })
        );
        assert_eq!(
            parse(&elf(&[seg(MIB, 1)], Note::Phys64(3 * MIB))),
            Err(ElfError::EntryNotLoaded { entry: 3 * MIB })
        );
        assert!(matches!(
            parse(&elf(&[seg(u64::MAX - 1, 16)], Note::Phys64(u64::MAX - 1))),
            Err(ElfError::Overflow { .. })
        ));
        // filesz > memsz.
        assert_eq!(
            parse(&elf(&[seg(MIB, 0)], Note::Phys32(MIB as u32))),
            Err(ElfError::FileSizeExceedsMemSize {
                index: 0,
                filesz: 1,
                memsz: 0
            })
        );
        // A huge phoff: overflow or truncation, never a panic.
        let mut bad = ok.clone();
        bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&bad).is_err());
        // A note whose descsz is 2.
        let mut bad = ok.clone();
        let note_at = ok.len() - 20;
        assert_eq!(&bad[note_at + 12..note_at + 16], b"Xen\0");
        bad[note_at + 4] = 2;
        assert_eq!(parse(&bad), Err(ElfError::BadPvhNote { descsz: 2 }));
        for e in [ElfError::NoPvhNote, ElfError::BadPvhNote { descsz: 2 }] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn every_prefix_and_byte_flip_is_an_error_or_an_image_never_a_panic() {
        let file = elf(
            &[Segment {
                paddr: MIB,
                code: vec![0xf4; 8],
                memsz: 64,
            }],
            Note::SectionOnly(MIB),
        );
        for n in 0..file.len() {
            let _ = parse(&file[..n]);
        }
        for i in 0..file.len() {
            for v in [0x00, 0x7f, 0x80, 0xff] {
                let mut f = file.clone();
                f[i] = v;
                let _ = parse(&f);
            }
        }
    }

    #[test]
    fn placement_errors_leave_memory_untouched() {
        let t = ram();
        let out = elf(
            &[Segment {
                paddr: 4 * MIB - 1,
                code: vec![0xf4, 0xf4],
                memsz: 2,
            }],
            Note::Phys64(4 * MIB - 1),
        );
        let e = load(&t.mem, &RAM, &out, "").unwrap_err();
        assert_eq!(
            e,
            LoadError::SegmentOutsideRam {
                index: 0,
                paddr: 4 * MIB - 1,
                memsz: 2
            }
        );
        assert!(e.to_string().contains("outside RAM"), "{e}");
        assert_eq!(t.mem.read_u8_at(START_INFO), 0xee);

        let low = elf(
            &[Segment {
                paddr: 0x7f00,
                code: vec![0xf4],
                memsz: 0x200,
            }],
            Note::Phys64(0x7f00),
        );
        assert!(matches!(
            load(&t.mem, &RAM, &low, ""),
            Err(LoadError::SegmentOverlapsBootData { index: 0, .. })
        ));
        let g = guest(&[0xf4]);
        assert_eq!(
            load(&t.mem, &RAM, &g, "a\0b"),
            Err(LoadError::CmdlineHasNul { at: 1 })
        );
        let long = "x".repeat(CMDLINE_MAX + 1);
        assert_eq!(
            load(&t.mem, &RAM, &g, &long),
            Err(LoadError::CmdlineTooLong {
                len: CMDLINE_MAX + 1
            })
        );
        let high_only = [RamRange {
            base: MIB,
            size: 3 * MIB,
        }];
        assert_eq!(
            load(&t.mem, &high_only, &g, ""),
            Err(LoadError::BootDataOutsideRam)
        );
        assert_eq!(t.mem.read_u8_at(MIB), 0xee);
        // The longest command line fits.
        let max = "y".repeat(CMDLINE_MAX);
        load(&t.mem, &RAM, &g, &max).unwrap();
        assert_eq!(t.mem.read_u8_at(CMDLINE + CMDLINE_MAX as u64), 0);
    }
}
