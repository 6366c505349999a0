//! The ELF64 reader: headers, `PT_LOAD` segments and the PVH entry note,
//! every field bounds-checked.

use super::*;

pub(super) const ELF_HEADER_SIZE: usize = 64;
pub(super) const PHDR_SIZE: usize = 56;
pub(super) const SHDR_SIZE: usize = 64;
pub(super) const ET_EXEC: u16 = 2;
pub(super) const EM_X86_64: u16 = 62;
pub(super) const PT_LOAD: u32 = 1;
pub(super) const PT_NOTE: u32 = 4;
pub(super) const SHT_NOTE: u32 = 7;
pub(super) const PN_XNUM: u16 = 0xffff;

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
pub(super) struct Reader<'a> {
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

pub(super) fn le16(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(v)
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
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
pub(super) fn find_pvh_note(notes: &[u8], align: u64) -> Result<Option<u64>, ElfError> {
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
