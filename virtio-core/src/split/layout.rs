//! The split virtqueue's memory layout (spec §2.7): descriptor table,
//! available ring and used ring, their alignment and size, and the wrap-safe
//! event index test (§2.7.10) that both sides share.
//!
//! Only offsets and wire formats live here; who reads and who writes which
//! part is the business of [`super::device`] and [`super::driver`].

use core::fmt;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::memory::{Access, GuestAddress, GuestMemory, MemoryError};

/// The largest queue size a split virtqueue may have (§2.7: "Queue Size
/// value is always a power of 2. The maximum Queue Size value is 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

bitflags::bitflags! {
    /// Flags of a descriptor (§2.7.5, `VIRTQ_DESC_F_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DescFlags: u16 {
        /// The chain continues via the `next` field.
        const NEXT = 1;
        /// The buffer is device-writable (otherwise device-readable).
        const WRITE = 2;
        /// The buffer holds a table of indirect descriptors (§2.7.5.3).
        const INDIRECT = 4;
    }
}

bitflags::bitflags! {
    /// Flags the driver writes in the available ring (§2.7.6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AvailFlags: u16 {
        /// The driver asks not to be interrupted (`VIRTQ_AVAIL_F_NO_INTERRUPT`).
        const NO_INTERRUPT = 1;
    }
}

bitflags::bitflags! {
    /// Flags the device writes in the used ring (§2.7.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct UsedFlags: u16 {
        /// The device asks not to be notified (`VIRTQ_USED_F_NO_NOTIFY`).
        const NO_NOTIFY = 1;
    }
}

/// One descriptor as it lies in the descriptor table (§2.7.5): 16 bytes,
/// little-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Descriptor {
    addr: U64,
    len: U32,
    flags: U16,
    next: U16,
}

impl Descriptor {
    /// The size of one descriptor in bytes.
    pub const SIZE: u64 = 16;

    /// A descriptor with the given fields.
    pub fn new(addr: GuestAddress, len: u32, flags: DescFlags, next: u16) -> Self {
        Descriptor {
            addr: U64::new(addr.0),
            len: U32::new(len),
            flags: U16::new(flags.bits()),
            next: U16::new(next),
        }
    }

    /// The buffer's guest address.
    #[inline]
    pub fn addr(&self) -> GuestAddress {
        GuestAddress(self.addr.get())
    }

    /// The buffer's length in bytes.
    #[inline]
    pub fn len(&self) -> u32 {
        self.len.get()
    }

    /// Whether the buffer has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// The flags; unknown bits are dropped (the spec reserves them).
    #[inline]
    pub fn flags(&self) -> DescFlags {
        DescFlags::from_bits_truncate(self.flags.get())
    }

    /// The raw flags field, unknown bits included.
    #[inline]
    pub fn raw_flags(&self) -> u16 {
        self.flags.get()
    }

    /// The index of the next descriptor, meaningful with [`DescFlags::NEXT`].
    #[inline]
    pub fn next(&self) -> u16 {
        self.next.get()
    }

    /// Whether the device may write the buffer.
    #[inline]
    pub fn is_write_only(&self) -> bool {
        self.flags().contains(DescFlags::WRITE)
    }
}

/// One element of the used ring (§2.7.8): the head of a chain and how many
/// bytes the device wrote into it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UsedElem {
    id: U32,
    len: U32,
}

impl UsedElem {
    /// The size of one used element in bytes.
    pub const SIZE: u64 = 8;

    /// A used element.
    pub fn new(id: u32, len: u32) -> Self {
        UsedElem {
            id: U32::new(id),
            len: U32::new(len),
        }
    }

    /// The head index of the completed chain (as the device wrote it).
    pub fn id(&self) -> u32 {
        self.id.get()
    }

    /// The number of bytes written into the chain (as the device wrote it).
    pub fn len(&self) -> u32 {
        self.len.get()
    }

    /// Whether no byte was written.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }
}

/// Whether an event index asks for a notification (§2.7.10, the
/// `vring_need_event` rule): true when `event` lies in the half-open window
/// `[old, new)` of indices just published, computed wrap-safe on 16 bits.
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Why a queue size or layout is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The size is zero, not a power of two, or above 32768 (§2.7).
    BadSize {
        /// The size asked for.
        size: u32,
    },
    /// The size is larger than the device's maximum (QueueNumMax).
    TooLarge {
        /// The size asked for.
        size: u16,
        /// The maximum.
        max: u16,
    },
    /// An area is not aligned as §2.7 requires (descriptor table 16,
    /// available ring 2, used ring 4).
    Misaligned {
        /// Which area.
        area: Area,
        /// Its address.
        addr: GuestAddress,
        /// The alignment it needs.
        align: u64,
    },
    /// An area runs past the top of the address space.
    Overflow {
        /// Which area.
        area: Area,
    },
    /// An area is not (wholly) in guest memory.
    NotInMemory {
        /// Which area.
        area: Area,
        /// The memory error.
        err: MemoryError,
    },
}

/// One of the three areas of a split virtqueue (§2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Area {
    /// The descriptor table (QueueDesc).
    Descriptors,
    /// The available ring, the "driver area" (QueueDriver).
    Avail,
    /// The used ring, the "device area" (QueueDevice).
    Used,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Descriptors => "descriptor table",
            Area::Avail => "available ring",
            Area::Used => "used ring",
        })
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::BadSize { size } => write!(
                f,
                "queue size {size} is not a power of two between 1 and {MAX_QUEUE_SIZE} (§2.7)"
            ),
            LayoutError::TooLarge { size, max } => {
                write!(f, "queue size {size} exceeds the device maximum {max}")
            }
            LayoutError::Misaligned { area, addr, align } => {
                write!(f, "{area} at {addr} is not {align}-byte aligned (§2.7)")
            }
            LayoutError::Overflow { area } => write!(f, "{area} wraps the address space"),
            LayoutError::NotInMemory { area, err } => {
                write!(f, "{area} is not in guest memory: {err}")
            }
        }
    }
}

impl core::error::Error for LayoutError {}

/// A valid split-queue size: a power of two from 1 to 32768 (§2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueSize(u16);

impl QueueSize {
    /// Checks `size`.
    pub fn new(size: u32) -> Result<Self, LayoutError> {
        if size == 0 || size > u32::from(MAX_QUEUE_SIZE) || !size.is_power_of_two() {
            return Err(LayoutError::BadSize { size });
        }
        Ok(QueueSize(size as u16))
    }

    /// The size.
    #[inline]
    pub fn get(self) -> u16 {
        self.0
    }

    /// `index` modulo the size (the ring slot of a free-running index).
    #[inline]
    pub fn wrap(self, index: u16) -> u16 {
        index & (self.0 - 1)
    }
}

/// Where a split virtqueue's three areas are, for a valid size (§2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueLayout {
    size: QueueSize,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
}

impl QueueLayout {
    /// Checks the alignment of each area (§2.7: descriptor table 16,
    /// available ring 2, used ring 4) and that none wraps the address space.
    /// Event-index fields are included in the ring sizes.
    pub fn new(
        size: QueueSize,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> Result<Self, LayoutError> {
        let layout = QueueLayout {
            size,
            desc,
            avail,
            used,
        };
        for (area, addr, align) in [
            (Area::Descriptors, desc, 16),
            (Area::Avail, avail, 2),
            (Area::Used, used, 4),
        ] {
            if !addr.0.is_multiple_of(align) {
                return Err(LayoutError::Misaligned { area, addr, align });
            }
            addr.checked_add(layout.area_len(area))
                .ok_or(LayoutError::Overflow { area })?;
        }
        Ok(layout)
    }

    /// The legacy layout (§2.7.2 legacy interface, virtio-mmio version 1
    /// QueuePFN): the descriptor table at `base`, the available ring right
    /// after it, and the used ring at the next multiple of `align`.
    pub fn legacy(size: QueueSize, base: GuestAddress, align: u64) -> Result<Self, LayoutError> {
        if align == 0 || !align.is_power_of_two() || align < 4 {
            return Err(LayoutError::Misaligned {
                area: Area::Used,
                addr: base,
                align,
            });
        }
        let avail = base
            .checked_add(Self::desc_table_len(size))
            .ok_or(LayoutError::Overflow {
                area: Area::Descriptors,
            })?;
        let avail_end = avail
            .0
            .checked_add(Self::avail_ring_len(size))
            .ok_or(LayoutError::Overflow { area: Area::Avail })?;
        let used = avail_end
            .checked_next_multiple_of(align)
            .ok_or(LayoutError::Overflow { area: Area::Used })?;
        Self::new(size, base, avail, GuestAddress(used))
    }

    /// Bytes of the descriptor table for `size`.
    pub const fn desc_table_len(size: QueueSize) -> u64 {
        Descriptor::SIZE * size.0 as u64
    }

    /// Bytes of the available ring for `size`, `used_event` included.
    pub const fn avail_ring_len(size: QueueSize) -> u64 {
        6 + 2 * size.0 as u64
    }

    /// Bytes of the used ring for `size`, `avail_event` included.
    pub const fn used_ring_len(size: QueueSize) -> u64 {
        6 + UsedElem::SIZE * size.0 as u64
    }

    /// Bytes of one area.
    pub fn area_len(&self, area: Area) -> u64 {
        match area {
            Area::Descriptors => Self::desc_table_len(self.size),
            Area::Avail => Self::avail_ring_len(self.size),
            Area::Used => Self::used_ring_len(self.size),
        }
    }

    /// Checks that all three areas lie wholly in `mem`.
    pub fn check_memory<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), LayoutError> {
        for (area, addr, access) in [
            (Area::Descriptors, self.desc, Access::Read),
            (Area::Avail, self.avail, Access::Read),
            (Area::Used, self.used, Access::Write),
        ] {
            mem.map(addr, self.area_len(area), access)
                .map_err(|err| LayoutError::NotInMemory { area, err })?;
        }
        Ok(())
    }

    /// The queue size.
    #[inline]
    pub fn size(&self) -> QueueSize {
        self.size
    }

    /// The descriptor table's address.
    #[inline]
    pub fn desc_table(&self) -> GuestAddress {
        self.desc
    }

    /// The available ring's address (the driver area).
    #[inline]
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail
    }

    /// The used ring's address (the device area).
    #[inline]
    pub fn used_ring(&self) -> GuestAddress {
        self.used
    }

    /// Address of descriptor `index` (which must be below the size).
    #[inline]
    pub fn desc(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + Descriptor::SIZE * u64::from(index))
    }

    /// Address of the available ring's `flags`.
    #[inline]
    pub fn avail_flags(&self) -> GuestAddress {
        self.avail
    }

    /// Address of the available ring's `idx`.
    #[inline]
    pub fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 2)
    }

    /// Address of the available ring's slot for free-running index `index`.
    #[inline]
    pub fn avail_slot(&self, index: u16) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size.wrap(index)))
    }

    /// Address of `used_event` (after the available ring, §2.7.6).
    #[inline]
    pub fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size.0))
    }

    /// Address of the used ring's `flags`.
    #[inline]
    pub fn used_flags(&self) -> GuestAddress {
        self.used
    }

    /// Address of the used ring's `idx`.
    #[inline]
    pub fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 2)
    }

    /// Address of the used ring's element for free-running index `index`.
    #[inline]
    pub fn used_slot(&self, index: u16) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + UsedElem::SIZE * u64::from(self.size.wrap(index)))
    }

    /// Address of `avail_event` (after the used ring, §2.7.8).
    #[inline]
    pub fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + UsedElem::SIZE * u64::from(self.size.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sizes_match_section_2_7() {
        assert_eq!(core::mem::size_of::<Descriptor>(), 16);
        assert_eq!(core::mem::size_of::<UsedElem>(), 8);
    }

    #[test]
    fn queue_size_must_be_power_of_two_up_to_32768() {
        for bad in [0, 3, 6, 100, 32769, 65536] {
            assert_eq!(QueueSize::new(bad), Err(LayoutError::BadSize { size: bad }));
        }
        for good in [1, 2, 256, 32768] {
            assert_eq!(QueueSize::new(good).unwrap().get() as u32, good);
        }
    }

    #[test]
    fn alignment_rules_of_section_2_7() {
        let s = QueueSize::new(8).unwrap();
        let g = GuestAddress;
        assert!(QueueLayout::new(s, g(0x1000), g(0x2000), g(0x3000)).is_ok());
        assert!(matches!(
            QueueLayout::new(s, g(0x1008), g(0x2000), g(0x3000)),
            Err(LayoutError::Misaligned {
                area: Area::Descriptors,
                ..
            })
        ));
        assert!(matches!(
            QueueLayout::new(s, g(0x1000), g(0x2001), g(0x3000)),
            Err(LayoutError::Misaligned {
                area: Area::Avail,
                ..
            })
        ));
        assert!(matches!(
            QueueLayout::new(s, g(0x1000), g(0x2000), g(0x3002)),
            Err(LayoutError::Misaligned {
                area: Area::Used,
                ..
            })
        ));
        assert!(matches!(
            QueueLayout::new(s, g(0x1000), g(0x2000), g(u64::MAX - 3)),
            Err(LayoutError::Overflow { area: Area::Used })
        ));
    }

    #[test]
    fn legacy_layout_places_used_ring_at_alignment() {
        let s = QueueSize::new(256).unwrap();
        let l = QueueLayout::legacy(s, GuestAddress(0x10000), 4096).unwrap();
        assert_eq!(l.avail_ring(), GuestAddress(0x10000 + 4096));
        // 4096 + 6 + 512 = 4614 -> next 4096 multiple is 8192.
        assert_eq!(l.used_ring(), GuestAddress(0x10000 + 8192));
    }

    #[test]
    fn need_event_is_wrap_safe() {
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(1, 1, 0));
        assert!(vring_need_event(65535, 0, 65535));
        assert!(vring_need_event(65534, 2, 65530));
        assert!(!vring_need_event(3, 2, 65530));
        // Nothing new: never notify.
        assert!(!vring_need_event(5, 5, 5));
    }
}
