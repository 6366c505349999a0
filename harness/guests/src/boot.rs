//! The PVH start info (xen `arch-x86/hvm/start_info.h`, `hvm_start_info`
//! version 0 or 1): read once at boot, validated, and copied into the
//! runtime's own `.bss`, so later code never reads loader-owned memory.
//!
//! Kept: the command line (at most [`CMDLINE_MAX`] bytes, UTF-8), the memory
//! map (at most [`MEMMAP_MAX`] entries; more are dropped and flagged) and the
//! RSDP address. Modules are counted, not loaded.

use crate::layout::IDENTITY_MAP_END;
use core::cell::UnsafeCell;
use core::fmt;
use core::mem::MaybeUninit;

/// `hvm_start_info.magic`: "xEn3" with bit 7 of the 'E' set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Longest command line kept, in bytes (without the NUL).
pub const CMDLINE_MAX: usize = 4095;
/// Most memory-map entries kept.
pub const MEMMAP_MAX: usize = 64;

/// Size of `hvm_start_info` version 0 (up to `rsdp_paddr`).
const START_INFO_V0_SIZE: u64 = 40;
/// Size of `hvm_start_info` version 1 (adds the memory map).
const START_INFO_V1_SIZE: u64 = 56;
/// Size of one `hvm_memmap_table_entry`.
const MEMMAP_ENTRY_SIZE: u64 = 24;

/// The type of a memory-map entry (E820 numbering, as PVH uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM (1).
    Ram,
    /// Reserved (2).
    Reserved,
    /// ACPI tables, reclaimable (3).
    Acpi,
    /// ACPI non-volatile storage (4).
    AcpiNvs,
    /// Unusable (5).
    Unusable,
    /// Disabled (6).
    Disabled,
    /// Persistent memory (7).
    Persistent,
    /// Any other type number.
    Other(u32),
}

impl MemoryKind {
    fn from_raw(kind: u32) -> Self {
        match kind {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            6 => Self::Disabled,
            7 => Self::Persistent,
            other => Self::Other(other),
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ram => f.write_str("ram"),
            Self::Reserved => f.write_str("reserved"),
            Self::Acpi => f.write_str("acpi"),
            Self::AcpiNvs => f.write_str("acpi-nvs"),
            Self::Unusable => f.write_str("unusable"),
            Self::Disabled => f.write_str("disabled"),
            Self::Persistent => f.write_str("persistent"),
            Self::Other(n) => write!(f, "type-{n}"),
        }
    }
}

/// One entry of the PVH memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical start.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: MemoryKind,
}

/// Why the start info was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// `ebx` was 0 or the structure does not fit in the identity map.
    BadAddress,
    /// The magic is not [`START_INFO_MAGIC`].
    BadMagic(u32),
    /// The command line pointer or its bytes lie outside the identity map.
    CmdlineOutOfRange(u64),
    /// No NUL within [`CMDLINE_MAX`] bytes.
    CmdlineTooLong,
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
    /// The memory map lies outside the identity map.
    MemmapOutOfRange(u64),
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadAddress => f.write_str("start info address is 0 or above 4 GiB"),
            Self::BadMagic(m) => write!(f, "magic {m:#x}, expected {START_INFO_MAGIC:#x}"),
            Self::CmdlineOutOfRange(a) => write!(f, "command line at {a:#x} is above 4 GiB"),
            Self::CmdlineTooLong => write!(f, "command line longer than {CMDLINE_MAX} bytes"),
            Self::CmdlineNotUtf8 => f.write_str("command line is not UTF-8"),
            Self::MemmapOutOfRange(a) => write!(f, "memory map at {a:#x} is above 4 GiB"),
        }
    }
}

/// What the loader told the guest, copied into guest-owned memory.
#[derive(Debug)]
pub struct BootInfo {
    start_info: u64,
    version: u32,
    flags: u32,
    modules: u32,
    rsdp: u64,
    cmdline: &'static str,
    memory_map: &'static [MemoryRegion],
    memory_map_truncated: bool,
}

impl BootInfo {
    /// Guest-physical address of the `hvm_start_info` the loader passed.
    pub fn start_info_address(&self) -> u64 {
        self.start_info
    }

    /// `hvm_start_info.version` (0 has no memory map).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `hvm_start_info.flags`.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Number of boot modules the loader announced (not loaded here).
    pub fn module_count(&self) -> u32 {
        self.modules
    }

    /// Guest-physical address of the ACPI RSDP, if the loader gave one.
    pub fn rsdp(&self) -> Option<u64> {
        (self.rsdp != 0).then_some(self.rsdp)
    }

    /// The kernel command line (empty if the loader gave none).
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }

    /// The memory map, in the loader's order.
    pub fn memory_map(&self) -> &'static [MemoryRegion] {
        self.memory_map
    }

    /// True if the loader's map had more than [`MEMMAP_MAX`] entries.
    pub fn memory_map_truncated(&self) -> bool {
        self.memory_map_truncated
    }

    /// Whitespace-separated command-line words equal to `key` or starting
    /// with `key=`, as their values (`""` for a bare `key`).
    pub fn cmdline_values<'a>(&self, key: &'a str) -> impl Iterator<Item = &'static str> + 'a {
        self.cmdline
            .split_ascii_whitespace()
            .filter_map(move |word| {
                let rest = word.strip_prefix(key)?;
                if rest.is_empty() {
                    Some(rest)
                } else {
                    rest.strip_prefix('=')
                }
            })
    }
}

/// Storage written once by [`init`] before any reader exists (one vCPU, no
/// interrupts), then only read.
struct BootStorage {
    info: UnsafeCell<MaybeUninit<BootInfo>>,
    cmdline: UnsafeCell<[u8; CMDLINE_MAX]>,
    memmap: UnsafeCell<[MemoryRegion; MEMMAP_MAX]>,
}

// SAFETY: the guest runs one vCPU; `init` writes the cells once, with
// interrupts off, before handing out shared references, and nothing writes
// them afterwards.
unsafe impl Sync for BootStorage {}

static STORAGE: BootStorage = BootStorage {
    info: UnsafeCell::new(MaybeUninit::uninit()),
    cmdline: UnsafeCell::new([0; CMDLINE_MAX]),
    memmap: UnsafeCell::new(
        [MemoryRegion {
            base: 0,
            size: 0,
            kind: MemoryKind::Reserved,
        }; MEMMAP_MAX],
    ),
};

/// True if `[addr, addr + len)` lies inside the identity map.
fn mapped(addr: u64, len: u64) -> bool {
    addr != 0
        && addr
            .checked_add(len)
            .is_some_and(|end| end <= IDENTITY_MAP_END)
}

/// Reads a little-endian value the loader left in guest memory.
///
/// # Safety
/// `addr..addr + size_of::<T>()` must be identity-mapped memory.
unsafe fn peek<T: Copy>(addr: u64) -> T {
    // SAFETY: mapped per the caller; loader data need not be aligned, and it
    // is plain integers, valid for any bit pattern.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

/// Parses and copies the start info at `paddr`. Called once, by the runtime,
/// before the program runs.
pub(crate) fn init(paddr: u64) -> Result<&'static BootInfo, StartInfoError> {
    if !mapped(paddr, START_INFO_V0_SIZE) {
        return Err(StartInfoError::BadAddress);
    }
    // SAFETY: the v0 structure is inside the identity map (checked above).
    let magic: u32 = unsafe { peek(paddr) };
    if magic != START_INFO_MAGIC {
        return Err(StartInfoError::BadMagic(magic));
    }
    // SAFETY: as above; offsets are those of `hvm_start_info`.
    let (version, flags, modules, cmdline_paddr, rsdp) = unsafe {
        (
            peek::<u32>(paddr + 4),
            peek::<u32>(paddr + 8),
            peek::<u32>(paddr + 12),
            peek::<u64>(paddr + 24),
            peek::<u64>(paddr + 32),
        )
    };

    // SAFETY: `init` runs once, before any reference to the storage exists.
    let cmdline_buf = unsafe { &mut *STORAGE.cmdline.get() };
    let cmdline = copy_cmdline(cmdline_paddr, cmdline_buf)?;

    // SAFETY: as above.
    let memmap_buf = unsafe { &mut *STORAGE.memmap.get() };
    let (count, truncated) = if version >= 1 && mapped(paddr, START_INFO_V1_SIZE) {
        // SAFETY: the v1 structure is inside the identity map (checked).
        let (map, entries) = unsafe { (peek::<u64>(paddr + 40), peek::<u32>(paddr + 48)) };
        copy_memmap(map, entries, memmap_buf)?
    } else {
        (0, false)
    };

    let info = BootInfo {
        start_info: paddr,
        version,
        flags,
        modules,
        rsdp,
        cmdline,
        memory_map: &memmap_buf[..count],
        memory_map_truncated: truncated,
    };
    // SAFETY: as above; the info cell is written once, here.
    Ok(unsafe { (*STORAGE.info.get()).write(info) })
}

fn copy_cmdline(
    paddr: u64,
    buf: &'static mut [u8; CMDLINE_MAX],
) -> Result<&'static str, StartInfoError> {
    if paddr == 0 {
        return Ok("");
    }
    let mut len = 0;
    loop {
        let addr = paddr.saturating_add(len as u64);
        if !mapped(addr, 1) {
            return Err(StartInfoError::CmdlineOutOfRange(paddr));
        }
        // SAFETY: the byte is inside the identity map (checked).
        let byte: u8 = unsafe { peek(addr) };
        if byte == 0 {
            break;
        }
        if len == CMDLINE_MAX {
            return Err(StartInfoError::CmdlineTooLong);
        }
        buf[len] = byte;
        len += 1;
    }
    let buf: &'static [u8] = buf;
    core::str::from_utf8(&buf[..len]).map_err(|_| StartInfoError::CmdlineNotUtf8)
}

fn copy_memmap(
    paddr: u64,
    entries: u32,
    buf: &mut [MemoryRegion; MEMMAP_MAX],
) -> Result<(usize, bool), StartInfoError> {
    let kept = (entries as usize).min(MEMMAP_MAX);
    if kept == 0 {
        return Ok((0, false));
    }
    if !mapped(paddr, kept as u64 * MEMMAP_ENTRY_SIZE) {
        return Err(StartInfoError::MemmapOutOfRange(paddr));
    }
    for (i, slot) in buf.iter_mut().take(kept).enumerate() {
        let entry = paddr + i as u64 * MEMMAP_ENTRY_SIZE;
        // SAFETY: the whole kept table is inside the identity map (checked).
        let (base, size, kind) = unsafe {
            (
                peek::<u64>(entry),
                peek::<u64>(entry + 8),
                peek::<u32>(entry + 16),
            )
        };
        *slot = MemoryRegion {
            base,
            size,
            kind: MemoryKind::from_raw(kind),
        };
    }
    Ok((kept, entries as usize > MEMMAP_MAX))
}
