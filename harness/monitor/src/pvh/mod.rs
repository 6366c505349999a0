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

mod elf;
pub mod testing;
#[cfg(test)]
mod tests;

pub use elf::*;

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
