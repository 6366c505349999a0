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

/// Why an access to guest memory was refused. Nothing was read or written,
/// except with [`MemoryError::BackingLost`] (see there).
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
    /// Host memory behind guest memory lost its backing: the file under a
    /// shared mapping shrank (another process truncated it) or a page of it
    /// failed, and touching it raised a fault the host caught. Guest memory
    /// that reports this fails every access from then on. The access that
    /// met the fault itself may have moved bytes before it: what it read is
    /// meaningless, and of what it wrote, the part before the fault may have
    /// reached the other process.
    BackingLost {
        /// Start of the range.
        addr: GuestAddress,
        /// Length of the range.
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
            MemoryError::BackingLost { addr, len } => write!(
                f,
                "guest range {addr}+{len:#x}: guest memory lost its backing (the file \
                 behind it shrank, or a page of it failed)"
            ),
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

    /// Whether `len` bytes at `addr` could be mapped for `access`: the
    /// same answer as [`map`](GuestMemory::map) without building the
    /// mapping, for a device that validates a chain before it moves data.
    #[inline]
    fn check(&self, addr: GuestAddress, len: u64, access: Access) -> Result<(), MemoryError> {
        self.map(addr, len, access).map(|_| ())
    }

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
    #[inline(always)]
    fn read_obj<T: FromBytes + IntoBytes>(&self, addr: GuestAddress) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read(addr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain value by copy.
    #[inline(always)]
    fn write_obj<T: IntoBytes + Immutable>(
        &self,
        addr: GuestAddress,
        val: &T,
    ) -> Result<(), MemoryError> {
        self.write(addr, val.as_bytes())
    }

    /// Reads a little-endian `u16`.
    #[inline(always)]
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
    #[inline(always)]
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
    fn check(&self, addr: GuestAddress, len: u64, access: Access) -> Result<(), MemoryError> {
        (**self).check(addr, len, access)
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

mod iommu;
mod region;

pub use iommu::{Iommu, IommuError, IommuMapping, IommuMemory, Permissions};
pub use region::{Region, RegionError, RegionMemory};

#[cfg(test)]
mod tests;
