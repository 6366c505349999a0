//! The six 16-bit ring fields one side writes while the other may read
//! them at any time (spec §2.7.6 and §2.7.8: the `flags` and `idx` of each
//! ring, `used_event` and `avail_event` of §2.7.10), and the one pair of
//! accessors both sides use for them: [`load`] (acquire) and [`store`]
//! (release), 16-bit atomics. A plain copy on one side against an atomic on
//! the other is a data race, so neither side reaches these fields any other
//! way.
//!
//! Ring entries and descriptors are not here: the index that publishes
//! them orders them (written before the release store of `idx`, read after
//! its acquire load), so plain copies are right for them.

use super::layout::QueueLayout;
use crate::memory::{GuestAddress, GuestMemory, MemoryError};

/// A ring field that the driver and the device access concurrently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RingField {
    /// The available ring's `flags` (§2.7.6, `VIRTQ_AVAIL_F_NO_INTERRUPT`,
    /// §2.7.7): the driver writes, the device reads.
    AvailFlags,
    /// The available ring's `idx` (§2.7.6, §2.7.13.3): the driver writes,
    /// the device reads.
    AvailIdx,
    /// `used_event`, after the available ring (§2.7.10): the driver
    /// writes, the device reads.
    UsedEvent,
    /// The used ring's `flags` (§2.7.8, `VIRTQ_USED_F_NO_NOTIFY`, §2.7.7):
    /// the device writes, the driver reads.
    UsedFlags,
    /// The used ring's `idx` (§2.7.8): the device writes, the driver reads.
    UsedIdx,
    /// `avail_event`, after the used ring (§2.7.10): the device writes, the
    /// driver reads.
    AvailEvent,
}

impl RingField {
    /// The field's guest address in `layout`.
    #[inline]
    pub fn addr(self, layout: &QueueLayout) -> GuestAddress {
        match self {
            RingField::AvailFlags => layout.avail_flags(),
            RingField::AvailIdx => layout.avail_idx(),
            RingField::UsedEvent => layout.used_event(),
            RingField::UsedFlags => layout.used_flags(),
            RingField::UsedIdx => layout.used_idx(),
            RingField::AvailEvent => layout.avail_event(),
        }
    }
}

/// Reads `field` of the queue at `layout` with an acquire load: what the
/// other side wrote before its release [`store`] of the value read is
/// visible afterwards.
#[inline]
pub fn load<M: GuestMemory + ?Sized>(
    mem: &M,
    layout: &QueueLayout,
    field: RingField,
) -> Result<u16, MemoryError> {
    mem.load_u16_acquire(field.addr(layout))
}

/// Writes `field` of the queue at `layout` with a release store: what this
/// side wrote before is visible to whoever [`load`]s the value.
#[inline]
pub fn store<M: GuestMemory + ?Sized>(
    mem: &M,
    layout: &QueueLayout,
    field: RingField,
    val: u16,
) -> Result<(), MemoryError> {
    mem.store_u16_release(field.addr(layout), val)
}
