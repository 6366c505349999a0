//! Guest memory made of host-backed regions.

use core::fmt;
use core::sync::atomic::{AtomicU16, Ordering};

use zerocopy::{Immutable, IntoBytes};

use super::{
    Access, GuestAddress, GuestMemory, HostSegment, Mapping, MemoryError, copy_from_segments,
    copy_to_segments,
};

/// One contiguous piece of guest physical memory backed by host memory.
///
/// Neither `Copy` nor `Clone` (issue 16, finding 10): [`Region::new`]'s
/// promise covers the region it made, and a copy made later by safe code
/// could outlive the mapping. A [`RegionMemory`] owns its regions; share
/// the memory by reference, or behind an `Arc` owned together with the
/// mapping, so that the mapping lives as long as the last user.
///
/// ```compile_fail
/// # use virtio_core::memory::{GuestAddress, Region};
/// fn keep(r: &Region) -> Region {
///     r.clone()
/// }
/// ```
#[derive(Debug)]
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
///
/// Not `Clone`, for the reason [`Region`] is not: a clone in safe code
/// could outlive the mappings it points into.
///
/// ```compile_fail
/// # use virtio_core::memory::RegionMemory;
/// fn keep(m: &RegionMemory) -> RegionMemory {
///     m.clone()
/// }
/// ```
#[derive(Debug, Default)]
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

    /// The slow path of a write: a range that is not inside one region
    /// (it spans adjacent regions, or fails whole).
    #[cold]
    #[inline(never)]
    fn write_across(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let mapping = self.map(addr, buf.len() as u64, Access::Write)?;
        copy_to_segments(mapping.segments(), buf);
        Ok(())
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

    #[inline]
    fn check(&self, addr: GuestAddress, len: u64, access: Access) -> Result<(), MemoryError> {
        match usize::try_from(len) {
            Ok(n) if self.fast(addr, n).is_some() => Ok(()),
            // Across regions, or failing: the full walk gives the answer
            // and the error.
            _ => self.map(addr, len, access).map(|_| ()),
        }
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
        self.write_across(addr, buf)
    }

    /// As the default, but the caller's value never has its address passed
    /// to a call: the slow path copies small values to a buffer of its own
    /// first. The compiler can then keep a value built field by field (a
    /// descriptor, a used element) in registers and store it straight into
    /// guest memory, instead of storing it to the stack and reloading it
    /// whole, which defeats the processor's store-to-load forwarding (a
    /// third of `DriverQueue::add`'s time in the queue benchmark).
    #[inline(always)]
    fn write_obj<T: IntoBytes + Immutable>(
        &self,
        addr: GuestAddress,
        val: &T,
    ) -> Result<(), MemoryError> {
        /// Values up to this size are staged (the split ring's are 8 and
        /// 16 bytes); the test is a constant per `T`.
        const STAGED: usize = 32;
        let bytes = val.as_bytes();
        if let Some(p) = self.fast(addr, bytes.len()) {
            // SAFETY: as in `write`.
            unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
            return Ok(());
        }
        if bytes.len() <= STAGED {
            let mut staged = [0u8; STAGED];
            staged[..bytes.len()].copy_from_slice(bytes);
            return self.write_across(addr, &staged[..bytes.len()]);
        }
        self.write_across(addr, bytes)
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
