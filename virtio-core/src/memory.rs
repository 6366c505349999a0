//! Guest memory: addresses, checked access, ring-index atomics and zero-copy
//! mapping to host segments; an optional IOMMU for `VIRTIO_F_ACCESS_PLATFORM`
//! (spec §6, "Reserved Feature Bits").
//!
//! Guest memory is shared with a running guest, so no Rust reference (`&T`,
//! `&[u8]`) ever points into it: bytes are copied in and out, ring indices go
//! through atomics, and a mapping for zero-copy I/O is a short list of raw
//! [`HostSegment`]s. Every range is checked whole before any byte moves: a
//! range is accessed entirely or not at all.
//!
//! This module does not allocate, and it knows nothing of virtqueues.

use core::fmt;
use core::sync::atomic::{AtomicU16, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// An address in the guest's physical address space (or, behind an IOMMU,
/// an I/O virtual address as the device sees it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl GuestAddress {
    /// The raw 64-bit value.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` if that wraps past the top of the address
    /// space.
    #[inline]
    pub const fn checked_add(self, offset: u64) -> Option<Self> {
        match self.0.checked_add(offset) {
            Some(v) => Some(GuestAddress(v)),
            None => None,
        }
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Which way data moves in an access, as the device (or DMA engine) sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Data is read from guest memory.
    Read,
    /// Data is written to guest memory.
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// Why an access to guest memory was refused. Nothing was read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// `addr + len` wraps past the top of the 64-bit address space.
    Overflow {
        /// Start of the range.
        addr: GuestAddress,
        /// Length of the range.
        len: u64,
    },
    /// The range starts at an address that no region covers.
    OutOfBounds {
        /// The first address that is not backed.
        addr: GuestAddress,
        /// Length of the range asked for.
        len: u64,
    },
    /// The range starts inside a region but runs into unbacked memory.
    Hole {
        /// Start of the range.
        addr: GuestAddress,
        /// The first address of the range that no region backs.
        gap: GuestAddress,
    },
    /// An atomic access at an address that is not naturally aligned (or that
    /// is split between two host segments).
    Misaligned {
        /// The address of the access.
        addr: GuestAddress,
        /// The alignment the access needs.
        align: u64,
    },
    /// The range would need more than [`MAX_SEGMENTS`] host segments.
    TooManySegments {
        /// Start of the range.
        addr: GuestAddress,
        /// Length of the range.
        len: u64,
    },
    /// The IOMMU has no mapping for this I/O virtual address.
    IommuFault {
        /// The I/O virtual address that is not mapped.
        iova: u64,
        /// The access that faulted.
        access: Access,
    },
    /// The IOMMU maps this address but not for this kind of access.
    PermissionDenied {
        /// The I/O virtual address.
        iova: u64,
        /// The access that was refused.
        access: Access,
    },
    /// The length does not fit in the host's address space (`usize`).
    TooLarge {
        /// The length asked for.
        len: u64,
    },
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryError::Overflow { addr, len } => {
                write!(f, "guest range {addr}+{len:#x} wraps the address space")
            }
            MemoryError::OutOfBounds { addr, len } => {
                write!(f, "guest range {addr}+{len:#x} is outside guest memory")
            }
            MemoryError::Hole { addr, gap } => {
                write!(f, "guest range at {addr} runs into a hole at {gap}")
            }
            MemoryError::Misaligned { addr, align } => {
                write!(f, "atomic access at {addr} is not {align}-byte aligned")
            }
            MemoryError::TooManySegments { addr, len } => write!(
                f,
                "guest range {addr}+{len:#x} needs more than {MAX_SEGMENTS} host segments"
            ),
            MemoryError::IommuFault { iova, access } => {
                write!(f, "IOMMU fault: no mapping for {access} at IOVA {iova:#x}")
            }
            MemoryError::PermissionDenied { iova, access } => {
                write!(f, "IOMMU denies {access} at IOVA {iova:#x}")
            }
            MemoryError::TooLarge { len } => {
                write!(f, "length {len:#x} does not fit the host address space")
            }
        }
    }
}

impl core::error::Error for MemoryError {}

/// The most host segments one mapped range may be split into.
pub const MAX_SEGMENTS: usize = 8;

/// A piece of host memory backing part of a guest range: a raw pointer and a
/// length, for vectored I/O (`preadv`, `pwritev`). Never a Rust slice, since
/// the guest may change the bytes at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSegment {
    ptr: *mut u8,
    len: usize,
}

impl HostSegment {
    /// The first host byte of the segment.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The number of bytes in the segment.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }
}

// SAFETY: a segment is only an address and a length; using it (which is
// `unsafe`) is where the caller must uphold the memory's sharing rules.
unsafe impl Send for HostSegment {}
// SAFETY: as above, the segment itself is plain data.
unsafe impl Sync for HostSegment {}

/// A guest range mapped to host memory: at most [`MAX_SEGMENTS`] segments
/// whose lengths add up to the range's length.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    segments: heapless::Vec<HostSegment, MAX_SEGMENTS>,
}

impl Mapping {
    /// The segments, in guest address order.
    #[inline]
    pub fn segments(&self) -> &[HostSegment] {
        &self.segments
    }

    /// The total length in bytes.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether the mapping covers no byte.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends a segment, merging it with the previous one when the host
    /// memory is contiguous.
    fn push(&mut self, seg: HostSegment) -> Result<(), ()> {
        if seg.len == 0 {
            return Ok(());
        }
        if let Some(last) = self.segments.last_mut()
            && last.ptr.wrapping_add(last.len) == seg.ptr
        {
            last.len += seg.len;
            return Ok(());
        }
        self.segments.push(seg).map_err(|_| ())
    }
}

/// Checked access to guest memory.
///
/// Implementors provide [`map`](GuestMemory::map); everything else has a
/// default built on it. All accesses are whole or nothing.
pub trait GuestMemory {
    /// Maps `len` bytes at `addr` to host segments for `access`, or fails
    /// without mapping anything.
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError>;

    /// Copies `buf.len()` bytes at `addr` out of guest memory.
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mapping = self.map(addr, buf.len() as u64, Access::Read)?;
        copy_from_segments(mapping.segments(), buf);
        Ok(())
    }

    /// Copies `buf` into guest memory at `addr`.
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let mapping = self.map(addr, buf.len() as u64, Access::Write)?;
        copy_to_segments(mapping.segments(), buf);
        Ok(())
    }

    /// Loads a 16-bit little-endian ring index with acquire ordering (§2.7.13.2,
    /// §2.7.14): loads that follow see what was written before the matching
    /// release store.
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let ptr = atomic_u16_ptr(self, addr, Access::Read)?;
        // SAFETY: `ptr` comes from a mapping of exactly two bytes, checked to
        // be one segment and 2-byte aligned; guest memory stays mapped for the
        // life of `self`, and it is only ever accessed through raw pointers or
        // atomics, never through Rust references.
        let v = unsafe { AtomicU16::from_ptr(ptr) }.load(Ordering::Acquire);
        Ok(u16::from_le(v))
    }

    /// Stores a 16-bit little-endian ring index with release ordering: writes
    /// made before it are visible to whoever acquires the new value.
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        let ptr = atomic_u16_ptr(self, addr, Access::Write)?;
        // SAFETY: as in `load_u16_acquire`: a checked, aligned, single-segment
        // pointer into mapped guest memory, never aliased by a reference.
        unsafe { AtomicU16::from_ptr(ptr) }.store(val.to_le(), Ordering::Release);
        Ok(())
    }

    /// Reads a plain value (a ring layout, a request header) by copy.
    fn read_obj<T: FromBytes + IntoBytes>(&self, addr: GuestAddress) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read(addr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain value by copy.
    fn write_obj<T: IntoBytes + Immutable>(
        &self,
        addr: GuestAddress,
        val: &T,
    ) -> Result<(), MemoryError> {
        self.write(addr, val.as_bytes())
    }

    /// Reads a little-endian `u16`.
    fn read_u16(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let mut b = [0u8; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    fn read_u32(&self, addr: GuestAddress) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64`.
    fn read_u64(&self, addr: GuestAddress) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u16`.
    fn write_u16(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.write(addr, &val.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    fn write_u32(&self, addr: GuestAddress, val: u32) -> Result<(), MemoryError> {
        self.write(addr, &val.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    fn write_u64(&self, addr: GuestAddress, val: u64) -> Result<(), MemoryError> {
        self.write(addr, &val.to_le_bytes())
    }
}

impl<M: GuestMemory + ?Sized> GuestMemory for &M {
    #[inline]
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        (**self).map(addr, len, access)
    }
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        (**self).read(addr, buf)
    }
    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        (**self).write(addr, buf)
    }
    #[inline]
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        (**self).load_u16_acquire(addr)
    }
    #[inline]
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        (**self).store_u16_release(addr, val)
    }
}

/// A full memory fence: the ordering the spec asks for between publishing an
/// index and reading the other side's suppression flags (§2.7.13.3.1,
/// §2.7.10).
#[inline]
pub fn fence() {
    core::sync::atomic::fence(Ordering::SeqCst);
}

fn atomic_u16_ptr<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    access: Access,
) -> Result<*mut u16, MemoryError> {
    if !addr.0.is_multiple_of(2) {
        return Err(MemoryError::Misaligned { addr, align: 2 });
    }
    let mapping = mem.map(addr, 2, access)?;
    match mapping.segments() {
        [seg] if seg.len == 2 && (seg.ptr as usize).is_multiple_of(2) => Ok(seg.ptr.cast::<u16>()),
        _ => Err(MemoryError::Misaligned { addr, align: 2 }),
    }
}

/// Copies from host segments into `buf`; the segments' total length must be
/// `buf.len()` (as produced by a successful `map`).
fn copy_from_segments(segments: &[HostSegment], buf: &mut [u8]) {
    let mut off = 0;
    for seg in segments {
        let n = seg.len.min(buf.len() - off);
        // SAFETY: `seg` comes from a successful `map` of `buf.len()` bytes, so
        // it points to `seg.len` valid host bytes of guest memory; `buf` is
        // host memory of ours and cannot overlap guest memory, and `off + n`
        // stays within `buf`.
        unsafe { core::ptr::copy_nonoverlapping(seg.ptr, buf.as_mut_ptr().add(off), n) };
        off += n;
    }
}

/// Copies `buf` into host segments; the segments' total length must be
/// `buf.len()`.
fn copy_to_segments(segments: &[HostSegment], buf: &[u8]) {
    let mut off = 0;
    for seg in segments {
        let n = seg.len.min(buf.len() - off);
        // SAFETY: as in `copy_from_segments`, with the direction reversed.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr().add(off), seg.ptr, n) };
        off += n;
    }
}

/// One contiguous piece of guest physical memory backed by host memory.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    guest_base: GuestAddress,
    host: *mut u8,
    len: u64,
}

impl Region {
    /// Describes `len` bytes of host memory at `host` as guest memory at
    /// `guest_base`.
    ///
    /// # Safety
    ///
    /// `host` must be valid for reads and writes of `len` bytes for as long
    /// as any [`RegionMemory`] holding this region (or a copy of it) is used,
    /// and no Rust reference may cover those bytes meanwhile: all access goes
    /// through the raw pointers this module hands out.
    pub const unsafe fn new(guest_base: GuestAddress, host: *mut u8, len: u64) -> Self {
        Region {
            guest_base,
            host,
            len,
        }
    }

    /// The guest address of the first byte.
    pub fn guest_base(&self) -> GuestAddress {
        self.guest_base
    }

    /// The size in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The host address of the first byte.
    pub fn host_base(&self) -> *mut u8 {
        self.host
    }

    /// One past the last guest address (never wraps: checked on insertion).
    fn end(&self) -> u64 {
        self.guest_base.0 + self.len
    }
}

// SAFETY: a region is a description of memory whose validity the creator
// promised (see `Region::new`); sharing the description between threads is
// what a VMM does with guest memory, and every access through it is a raw
// copy or an atomic.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Why a region could not be added to a [`RegionMemory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// The region has no bytes.
    Empty {
        /// Its guest base.
        base: GuestAddress,
    },
    /// `base + len` wraps past the top of the address space or of `usize`.
    Overflow {
        /// Its guest base.
        base: GuestAddress,
        /// Its length.
        len: u64,
    },
    /// The region overlaps one already present.
    Overlap {
        /// The new region's base.
        base: GuestAddress,
        /// The base of the region it overlaps.
        existing: GuestAddress,
    },
    /// The fixed capacity of regions is used up.
    TooMany {
        /// The capacity.
        capacity: usize,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegionError::Empty { base } => write!(f, "memory region at {base} is empty"),
            RegionError::Overflow { base, len } => {
                write!(f, "memory region {base}+{len:#x} wraps the address space")
            }
            RegionError::Overlap { base, existing } => write!(
                f,
                "memory region at {base} overlaps the region at {existing}"
            ),
            RegionError::TooMany { capacity } => {
                write!(f, "more than {capacity} memory regions")
            }
        }
    }
}

impl core::error::Error for RegionError {}

/// Guest memory made of a fixed number of non-overlapping regions, sorted by
/// guest address. Regions may be adjacent; a range across adjacent regions
/// maps to one segment per region.
#[derive(Clone, Debug, Default)]
pub struct RegionMemory<const N: usize = 8> {
    regions: heapless::Vec<Region, N>,
}

impl<const N: usize> RegionMemory<N> {
    /// An empty memory (every access fails until regions are added).
    pub const fn new() -> Self {
        RegionMemory {
            regions: heapless::Vec::new(),
        }
    }

    /// Adds a region; it must not be empty, wrap, or overlap another.
    pub fn add(&mut self, region: Region) -> Result<(), RegionError> {
        if region.len == 0 {
            return Err(RegionError::Empty {
                base: region.guest_base,
            });
        }
        let overflow = RegionError::Overflow {
            base: region.guest_base,
            len: region.len,
        };
        region
            .guest_base
            .0
            .checked_add(region.len)
            .ok_or(overflow)?;
        let host_len = usize::try_from(region.len).map_err(|_| overflow)?;
        (region.host as usize)
            .checked_add(host_len)
            .ok_or(overflow)?;
        let pos = self
            .regions
            .partition_point(|r| r.guest_base < region.guest_base);
        if let Some(prev) = pos.checked_sub(1).and_then(|p| self.regions.get(p))
            && prev.end() > region.guest_base.0
        {
            return Err(RegionError::Overlap {
                base: region.guest_base,
                existing: prev.guest_base,
            });
        }
        if let Some(next) = self.regions.get(pos)
            && region.end() > next.guest_base.0
        {
            return Err(RegionError::Overlap {
                base: region.guest_base,
                existing: next.guest_base,
            });
        }
        self.regions
            .insert(pos, region)
            .map_err(|_| RegionError::TooMany { capacity: N })
    }

    /// The regions, sorted by guest address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region containing `addr`, if any.
    #[inline(always)]
    fn find(&self, addr: u64) -> Option<&Region> {
        // Few regions: a linear scan beats a binary search for the common
        // one- or two-region layouts.
        self.regions
            .iter()
            .find(|r| addr >= r.guest_base.0 && addr < r.end())
    }

    /// Host pointer for a range that lies inside one region, if it does.
    #[inline(always)]
    fn fast(&self, addr: GuestAddress, len: usize) -> Option<*mut u8> {
        let r = self.find(addr.0)?;
        let off = addr.0 - r.guest_base.0;
        if (len as u64) <= r.len - off {
            // `off < r.len`, which fits `usize` (checked in `add`).
            Some(r.host.wrapping_add(off as usize))
        } else {
            None
        }
    }
}

impl<const N: usize> GuestMemory for RegionMemory<N> {
    fn map(&self, addr: GuestAddress, len: u64, _access: Access) -> Result<Mapping, MemoryError> {
        let end = addr
            .0
            .checked_add(len)
            .ok_or(MemoryError::Overflow { addr, len })?;
        usize::try_from(len).map_err(|_| MemoryError::TooLarge { len })?;
        let mut mapping = Mapping::default();
        let mut cur = addr.0;
        while cur < end {
            let Some(r) = self.find(cur) else {
                return Err(if cur == addr.0 {
                    MemoryError::OutOfBounds { addr, len }
                } else {
                    MemoryError::Hole {
                        addr,
                        gap: GuestAddress(cur),
                    }
                });
            };
            let off = cur - r.guest_base.0;
            let n = (r.end() - cur).min(end - cur);
            // `off` and `n` are within the region, whose length fits `usize`.
            let seg = HostSegment {
                ptr: r.host.wrapping_add(off as usize),
                len: n as usize,
            };
            mapping
                .push(seg)
                .map_err(|()| MemoryError::TooManySegments { addr, len })?;
            cur += n;
        }
        Ok(mapping)
    }

    #[inline(always)]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        if let Some(p) = self.fast(addr, buf.len()) {
            // SAFETY: `fast` checked that `buf.len()` bytes at `p` lie inside
            // one region, valid per `Region::new`; `buf` is ours and cannot
            // overlap guest memory.
            unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
            return Ok(());
        }
        let mapping = self.map(addr, buf.len() as u64, Access::Read)?;
        copy_from_segments(mapping.segments(), buf);
        Ok(())
    }

    #[inline(always)]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        if let Some(p) = self.fast(addr, buf.len()) {
            // SAFETY: as in `read`, with the direction reversed.
            unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), p, buf.len()) };
            return Ok(());
        }
        let mapping = self.map(addr, buf.len() as u64, Access::Write)?;
        copy_to_segments(mapping.segments(), buf);
        Ok(())
    }

    #[inline]
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        match self.fast(addr, 2) {
            Some(p) if addr.0.is_multiple_of(2) && (p as usize).is_multiple_of(2) => {
                // SAFETY: two bytes inside one region, 2-byte aligned, only
                // ever accessed through raw pointers and atomics.
                let v = unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }.load(Ordering::Acquire);
                Ok(u16::from_le(v))
            }
            Some(_) => Err(MemoryError::Misaligned { addr, align: 2 }),
            // The range maps but not within one region: it straddles.
            None => self
                .map(addr, 2, Access::Read)
                .and(Err(MemoryError::Misaligned { addr, align: 2 })),
        }
    }

    #[inline]
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        match self.fast(addr, 2) {
            Some(p) if addr.0.is_multiple_of(2) && (p as usize).is_multiple_of(2) => {
                // SAFETY: as in `load_u16_acquire`.
                unsafe { AtomicU16::from_ptr(p.cast::<u16>()) }
                    .store(val.to_le(), Ordering::Release);
                Ok(())
            }
            Some(_) => Err(MemoryError::Misaligned { addr, align: 2 }),
            None => self
                .map(addr, 2, Access::Write)
                .and(Err(MemoryError::Misaligned { addr, align: 2 })),
        }
    }
}

bitflags::bitflags! {
    /// What an IOMMU mapping allows the device to do.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Permissions: u8 {
        /// The device may read (driver-to-device data, rings it consumes).
        const READ = 1 << 0;
        /// The device may write (device-to-driver data, the used ring).
        const WRITE = 1 << 1;
    }
}

impl Permissions {
    fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => self.contains(Permissions::READ),
            Access::Write => self.contains(Permissions::WRITE),
        }
    }
}

/// One IOMMU translation: `len` bytes at I/O virtual address `iova` are guest
/// memory at `gpa`, with `perm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapping {
    /// First I/O virtual address.
    pub iova: u64,
    /// The guest physical address `iova` translates to.
    pub gpa: GuestAddress,
    /// Length in bytes.
    pub len: u64,
    /// What the device may do through it.
    pub perm: Permissions,
}

/// Why an IOMMU table change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// Zero length, or `iova + len` or `gpa + len` wraps.
    BadRange {
        /// The I/O virtual address.
        iova: u64,
        /// The length.
        len: u64,
    },
    /// The new mapping overlaps an existing one in IOVA space.
    Overlap {
        /// The I/O virtual address.
        iova: u64,
    },
    /// The table is full.
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// No mapping starts at this IOVA with this length.
    NotMapped {
        /// The I/O virtual address.
        iova: u64,
    },
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IommuError::BadRange { iova, len } => {
                write!(f, "IOMMU range {iova:#x}+{len:#x} is empty or wraps")
            }
            IommuError::Overlap { iova } => {
                write!(f, "IOMMU mapping at {iova:#x} overlaps an existing one")
            }
            IommuError::Full { capacity } => {
                write!(f, "IOMMU table full ({capacity} mappings)")
            }
            IommuError::NotMapped { iova } => write!(f, "no IOMMU mapping at {iova:#x}"),
        }
    }
}

impl core::error::Error for IommuError {}

/// An IOMMU translation table with room for `N` mappings.
#[derive(Clone, Debug, Default)]
pub struct Iommu<const N: usize = 64> {
    maps: heapless::Vec<IommuMapping, N>,
}

impl<const N: usize> Iommu<N> {
    /// An empty table: every access faults.
    pub const fn new() -> Self {
        Iommu {
            maps: heapless::Vec::new(),
        }
    }

    /// Adds a mapping.
    pub fn map(&mut self, m: IommuMapping) -> Result<(), IommuError> {
        let bad = IommuError::BadRange {
            iova: m.iova,
            len: m.len,
        };
        if m.len == 0 {
            return Err(bad);
        }
        let end = m.iova.checked_add(m.len).ok_or(bad)?;
        m.gpa.0.checked_add(m.len).ok_or(bad)?;
        if self
            .maps
            .iter()
            .any(|o| m.iova < o.iova + o.len && o.iova < end)
        {
            return Err(IommuError::Overlap { iova: m.iova });
        }
        self.maps
            .push(m)
            .map_err(|_| IommuError::Full { capacity: N })
    }

    /// Removes the mapping that starts at `iova`.
    pub fn unmap(&mut self, iova: u64) -> Result<IommuMapping, IommuError> {
        let i = self
            .maps
            .iter()
            .position(|m| m.iova == iova)
            .ok_or(IommuError::NotMapped { iova })?;
        Ok(self.maps.swap_remove(i))
    }

    /// The mappings, in no particular order.
    pub fn mappings(&self) -> &[IommuMapping] {
        &self.maps
    }

    /// Translates the IOVA range `iova..iova+len` for `access` into guest
    /// physical pieces, calling `f` on each in order; fails before calling
    /// `f` at all if any byte is unmapped or lacks the permission.
    pub fn translate(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        mut f: impl FnMut(GuestAddress, u64) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let end = iova.checked_add(len).ok_or(MemoryError::Overflow {
            addr: GuestAddress(iova),
            len,
        })?;
        // First pass checks everything, second pass emits: whole or nothing.
        for emit in [false, true] {
            let mut cur = iova;
            while cur < end {
                let m = self
                    .maps
                    .iter()
                    .find(|m| cur >= m.iova && cur - m.iova < m.len)
                    .ok_or(MemoryError::IommuFault { iova: cur, access })?;
                if !m.perm.allows(access) {
                    return Err(MemoryError::PermissionDenied { iova: cur, access });
                }
                let off = cur - m.iova;
                let n = (m.len - off).min(end - cur);
                if emit {
                    f(GuestAddress(m.gpa.0 + off), n)?;
                }
                cur += n;
            }
        }
        Ok(())
    }
}

/// Guest memory seen through an IOMMU: addresses are I/O virtual addresses,
/// translated and permission-checked before they reach the inner memory.
/// This is what a device uses once `VIRTIO_F_ACCESS_PLATFORM` is negotiated.
#[derive(Clone, Copy, Debug)]
pub struct IommuMemory<'a, M: ?Sized, const N: usize> {
    iommu: &'a Iommu<N>,
    mem: &'a M,
}

impl<'a, M: GuestMemory + ?Sized, const N: usize> IommuMemory<'a, M, N> {
    /// Puts `iommu` in front of `mem`.
    pub fn new(iommu: &'a Iommu<N>, mem: &'a M) -> Self {
        IommuMemory { iommu, mem }
    }
}

impl<M: GuestMemory + ?Sized, const N: usize> GuestMemory for IommuMemory<'_, M, N> {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        usize::try_from(len).map_err(|_| MemoryError::TooLarge { len })?;
        let mut out = Mapping::default();
        self.iommu.translate(addr.0, len, access, |gpa, n| {
            let inner = self.mem.map(gpa, n, access)?;
            for seg in inner.segments() {
                out.push(*seg)
                    .map_err(|()| MemoryError::TooManySegments { addr, len })?;
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// Two buffers of host memory used as guest RAM in tests.
    struct Backing {
        bufs: Vec<Vec<u64>>,
    }

    impl Backing {
        fn new(sizes: &[usize]) -> Self {
            Backing {
                bufs: sizes.iter().map(|s| vec![0u64; s.div_ceil(8)]).collect(),
            }
        }
        fn region(&mut self, i: usize, base: u64, len: u64) -> Region {
            // SAFETY: the buffer outlives the memory in every test below and
            // is not otherwise accessed while the memory is used.
            unsafe { Region::new(GuestAddress(base), self.bufs[i].as_mut_ptr().cast(), len) }
        }
    }

    #[test]
    fn read_write_roundtrip_within_one_region() {
        let mut b = Backing::new(&[4096]);
        let mut m = RegionMemory::<4>::new();
        m.add(b.region(0, 0x1000, 4096)).unwrap();
        m.write(GuestAddress(0x1010), &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        m.read(GuestAddress(0x1010), &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        m.write_u32(GuestAddress(0x1020), 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(GuestAddress(0x1020)).unwrap(), 0xdead_beef);
        m.store_u16_release(GuestAddress(0x1030), 0x1234).unwrap();
        assert_eq!(m.load_u16_acquire(GuestAddress(0x1030)).unwrap(), 0x1234);
        assert_eq!(m.read_u16(GuestAddress(0x1030)).unwrap(), 0x1234);
    }

    #[test]
    fn range_across_adjacent_regions_maps_to_two_segments() {
        let mut b = Backing::new(&[4096, 4096]);
        let mut m = RegionMemory::<4>::new();
        m.add(b.region(1, 0x2000, 4096)).unwrap();
        m.add(b.region(0, 0x1000, 4096)).unwrap();
        let map = m.map(GuestAddress(0x1ff0), 0x20, Access::Read).unwrap();
        assert_eq!(map.segments().len(), 2);
        assert_eq!(map.len(), 0x20);
        let data: Vec<u8> = (0..0x20).collect();
        m.write(GuestAddress(0x1ff0), &data).unwrap();
        let mut out = [0u8; 0x20];
        m.read(GuestAddress(0x1ff0), &mut out).unwrap();
        assert_eq!(&out[..], &data[..]);
    }

    #[test]
    fn hole_between_regions_is_refused_whole() {
        let mut b = Backing::new(&[4096, 4096]);
        let mut m = RegionMemory::<4>::new();
        m.add(b.region(0, 0x1000, 4096)).unwrap();
        m.add(b.region(1, 0x3000, 4096)).unwrap();
        assert_eq!(
            m.map(GuestAddress(0x1ff0), 0x20, Access::Read).err(),
            Some(MemoryError::Hole {
                addr: GuestAddress(0x1ff0),
                gap: GuestAddress(0x2000)
            })
        );
        // Nothing was written to the part that is mapped.
        assert!(m.write(GuestAddress(0x1ff0), &[0xff; 0x20]).is_err());
        assert_eq!(m.read_u64(GuestAddress(0x1ff0)).unwrap(), 0);
    }

    #[test]
    fn out_of_bounds_and_wrapping_ranges_fail() {
        let mut b = Backing::new(&[4096]);
        let mut m = RegionMemory::<4>::new();
        m.add(b.region(0, 0, 4096)).unwrap();
        assert!(matches!(
            m.read_u32(GuestAddress(4094)),
            Err(MemoryError::Hole { .. })
        ));
        assert!(matches!(
            m.read_u32(GuestAddress(1 << 40)),
            Err(MemoryError::OutOfBounds { .. })
        ));
        assert!(matches!(
            m.map(GuestAddress(u64::MAX - 1), 4, Access::Read),
            Err(MemoryError::Overflow { .. })
        ));
        assert!(matches!(
            m.load_u16_acquire(GuestAddress(3)),
            Err(MemoryError::Misaligned { .. })
        ));
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let mut b = Backing::new(&[4096, 4096, 16]);
        let mut m = RegionMemory::<2>::new();
        m.add(b.region(0, 0x1000, 4096)).unwrap();
        assert!(matches!(
            m.add(b.region(1, 0x1800, 4096)),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            m.add(b.region(1, 0x800, 4096)),
            Err(RegionError::Overlap { .. })
        ));
        assert!(matches!(
            m.add(b.region(1, 0x0, 0)),
            Err(RegionError::Empty { .. })
        ));
        m.add(b.region(1, 0x2000, 4096)).unwrap();
        assert!(matches!(
            m.add(b.region(2, 0x9000, 16)),
            Err(RegionError::TooMany { capacity: 2 })
        ));
    }

    #[test]
    fn iommu_translates_and_checks_permissions() {
        let mut b = Backing::new(&[0x4000]);
        let mut m = RegionMemory::<4>::new();
        m.add(b.region(0, 0, 0x4000)).unwrap();
        let mut iommu = Iommu::<8>::new();
        iommu
            .map(IommuMapping {
                iova: 0x10_0000,
                gpa: GuestAddress(0x2000),
                len: 0x1000,
                perm: Permissions::READ | Permissions::WRITE,
            })
            .unwrap();
        iommu
            .map(IommuMapping {
                iova: 0x10_1000,
                gpa: GuestAddress(0x0),
                len: 0x1000,
                perm: Permissions::READ,
            })
            .unwrap();
        let io = IommuMemory::new(&iommu, &m);
        io.write_u32(GuestAddress(0x10_0010), 7).unwrap();
        assert_eq!(m.read_u32(GuestAddress(0x2010)).unwrap(), 7);
        // A range across two IOVA mappings that are not contiguous in GPA.
        let map = io.map(GuestAddress(0x10_0ff0), 0x20, Access::Read).unwrap();
        assert_eq!(map.segments().len(), 2);
        // Write permission is missing on the second mapping: refused whole.
        assert_eq!(
            io.write(GuestAddress(0x10_0ff0), &[1; 0x20]),
            Err(MemoryError::PermissionDenied {
                iova: 0x10_1000,
                access: Access::Write
            })
        );
        assert_eq!(m.read_u64(GuestAddress(0x2ff0)).unwrap(), 0);
        assert!(matches!(
            io.read_u32(GuestAddress(0x20_0000)),
            Err(MemoryError::IommuFault { .. })
        ));
        assert!(matches!(
            iommu.map(IommuMapping {
                iova: 0x10_0800,
                gpa: GuestAddress(0),
                len: 0x10,
                perm: Permissions::READ
            }),
            Err(IommuError::Overlap { .. })
        ));
    }
}
