//! An IOMMU in front of guest memory, for `VIRTIO_F_ACCESS_PLATFORM`.

use core::fmt;

use super::{Access, GuestAddress, GuestMemory, Mapping, MemoryError};

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
