//! The split virtqueue as the device sees it (spec §2.7): take available
//! chains, return used ones, and decide when to notify the driver and
//! whether to be notified (§2.7.7, §2.7.10).
//!
//! The driver's side of the rings is untrusted: the available index may
//! jump by at most the queue size and every head is checked. Used entries
//! are written first and published in batches with one release store of the
//! used index. This module does no I/O: the caller kicks and interrupts.

use core::fmt;

use super::chain::{ChainError, DescriptorChain};
use super::fields::{self, RingField};
use super::layout::{AvailFlags, QueueLayout, UsedElem, UsedFlags, vring_need_event};
use crate::memory::{self, GuestMemory, MemoryError};

/// Why a device-side queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// A ring could not be accessed.
    Memory(MemoryError),
    /// The driver moved the available index further than the queue size
    /// past what the device has consumed (§2.7.6: the ring holds at most
    /// `size` entries).
    AvailIndexJump {
        /// The available index the driver wrote.
        avail_idx: u16,
        /// The device's next index to consume.
        next_avail: u16,
        /// The queue size.
        size: u16,
    },
    /// The available ring names a head that is not a descriptor (§2.7.6).
    /// The slot is consumed; the device should set `DEVICE_NEEDS_RESET`.
    Chain(ChainError),
    /// `add_used` with a head that is not below the queue size.
    InvalidHead {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QueueError::Memory(e) => write!(f, "virtqueue ring access failed: {e}"),
            QueueError::AvailIndexJump {
                avail_idx,
                next_avail,
                size,
            } => write!(
                f,
                "available index {avail_idx} is more than the queue size {size} ahead of {next_avail} (§2.7.6)"
            ),
            QueueError::Chain(e) => write!(f, "{e}"),
            QueueError::InvalidHead { head, size } => {
                write!(f, "used head {head} is not below the queue size {size}")
            }
        }
    }
}

impl core::error::Error for QueueError {}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        QueueError::Memory(e)
    }
}

impl From<ChainError> for QueueError {
    fn from(e: ChainError) -> Self {
        QueueError::Chain(e)
    }
}

/// The device's view of one split virtqueue, configured and live.
///
/// The position state (`next_avail`, `next_used`) is plain data so that a
/// queue can be stopped and resumed elsewhere (vhost-user `GET_VRING_BASE`).
#[derive(Clone, Debug)]
pub struct DeviceQueue {
    layout: QueueLayout,
    event_idx: bool,
    indirect: bool,
    next_avail: u16,
    /// Last available index read from the ring (a cache: popping the
    /// entries up to it needs no new acquire load).
    avail_cache: u16,
    next_used: u16,
    /// The used index as last published to the driver.
    published_used: u16,
    /// The used index at the last notification decision.
    signalled_used: u16,
    /// Whether notifications from the driver are currently suppressed.
    notify_disabled: bool,
}

impl DeviceQueue {
    /// A queue over `layout`; `event_idx` and `indirect` say whether
    /// `VIRTIO_F_RING_EVENT_IDX` and `VIRTIO_F_RING_INDIRECT_DESC` were
    /// negotiated. Indices start at zero (§2.7: after reset).
    pub fn new(layout: QueueLayout, event_idx: bool, indirect: bool) -> Self {
        DeviceQueue {
            layout,
            event_idx,
            indirect,
            next_avail: 0,
            avail_cache: 0,
            next_used: 0,
            published_used: 0,
            signalled_used: 0,
            notify_disabled: false,
        }
    }

    /// The queue's layout.
    #[inline]
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.layout.size().get()
    }

    /// Whether `VIRTIO_F_RING_EVENT_IDX` is in use.
    #[inline]
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Whether `VIRTIO_F_RING_INDIRECT_DESC` is in use.
    #[inline]
    pub fn indirect(&self) -> bool {
        self.indirect
    }

    /// The chain whose head is `head`, walked afresh: for a device that
    /// popped a chain, could not finish it, and resumes it later (the
    /// descriptors are read again, once per walk, and validated again).
    pub fn chain<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        head: u16,
    ) -> Result<DescriptorChain<'m, M>, ChainError> {
        DescriptorChain::new(
            mem,
            self.layout.desc_table(),
            self.size(),
            head,
            self.indirect,
        )
    }

    /// The next available-ring index the device will consume.
    #[inline]
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The next used-ring index the device will fill.
    #[inline]
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Resumes at a saved position (vhost-user `SET_VRING_BASE`, restore):
    /// both the available and used positions.
    pub fn set_position(&mut self, next_avail: u16, next_used: u16) {
        self.next_avail = next_avail;
        self.avail_cache = next_avail;
        self.next_used = next_used;
        self.published_used = next_used;
        self.signalled_used = next_used;
    }

    /// Reads the driver's available index with acquire ordering and checks
    /// it is at most `size` ahead of what was consumed.
    #[inline]
    fn load_avail_idx<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        let idx = fields::load(mem, &self.layout, RingField::AvailIdx)?;
        if idx.wrapping_sub(self.next_avail) > self.size() {
            return Err(QueueError::AvailIndexJump {
                avail_idx: idx,
                next_avail: self.next_avail,
                size: self.size(),
            });
        }
        self.avail_cache = idx;
        Ok(idx)
    }

    /// How many chains the driver has made available and the device not yet
    /// popped.
    pub fn pending<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<u16, QueueError> {
        let idx = self.load_avail_idx(mem)?;
        Ok(idx.wrapping_sub(self.next_avail))
    }

    /// Takes the next available chain, or `None` if the ring is empty
    /// (§2.7.6). A head out of range consumes its slot and is an error; the
    /// chain itself is validated as it is walked.
    #[inline]
    pub fn pop<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
    ) -> Result<Option<DescriptorChain<'m, M>>, QueueError> {
        if self.next_avail == self.avail_cache && self.load_avail_idx(mem)? == self.next_avail {
            return Ok(None);
        }
        let head = mem.read_u16(self.layout.avail_slot(self.next_avail))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        let chain = DescriptorChain::new(
            mem,
            self.layout.desc_table(),
            self.size(),
            head,
            self.indirect,
        )?;
        Ok(Some(chain))
    }

    /// Puts a used element for `head` with `len` bytes written into the used
    /// ring (§2.7.8). It becomes visible to the driver only at the next
    /// [`publish_used`](Self::publish_used).
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if head >= self.size() {
            return Err(QueueError::InvalidHead {
                head,
                size: self.size(),
            });
        }
        let elem = UsedElem::new(u32::from(head), len);
        mem.write_obj(self.layout.used_slot(self.next_used), &elem)?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Publishes every used element added since the last publish with one
    /// release store of the used index (§2.7.8: entries before the index).
    #[inline]
    pub fn publish_used<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<(), QueueError> {
        if self.published_used != self.next_used {
            fields::store(mem, &self.layout, RingField::UsedIdx, self.next_used)?;
            self.published_used = self.next_used;
        }
        Ok(())
    }

    /// Whether the driver must be sent a used-buffer notification for what
    /// was published since the last decision (§2.7.10 with
    /// `VIRTIO_F_RING_EVENT_IDX`, else §2.7.7's `NO_INTERRUPT` flag). Each
    /// published entry is covered by exactly one decision.
    pub fn needs_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        let new = self.published_used;
        let old = self.signalled_used;
        if new == old {
            return Ok(false);
        }
        // The used index store must be visible before we read the driver's
        // suppression state (§2.7.10: the device must see a used_event that
        // is at least as recent as the index).
        memory::fence();
        let notify = if self.event_idx {
            let used_event = fields::load(mem, &self.layout, RingField::UsedEvent)?;
            vring_need_event(used_event, new, old)
        } else {
            let flags = fields::load(mem, &self.layout, RingField::AvailFlags)?;
            flags & AvailFlags::NO_INTERRUPT.bits() == 0
        };
        self.signalled_used = new;
        Ok(notify)
    }

    /// Asks the driver not to send available-buffer notifications (§2.7.7):
    /// sets `NO_NOTIFY`; with event indices nothing needs writing, since the
    /// driver notifies at most once past the current `avail_event`.
    pub fn disable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), QueueError> {
        if self.notify_disabled {
            return Ok(());
        }
        if !self.event_idx {
            let flags = UsedFlags::NO_NOTIFY.bits();
            fields::store(mem, &self.layout, RingField::UsedFlags, flags)?;
        }
        self.notify_disabled = true;
        Ok(())
    }

    /// Asks the driver to notify again when it makes buffers available, and
    /// returns whether buffers arrived meanwhile (then the caller must keep
    /// popping: no notification will come for them). With event indices
    /// `avail_event` is set to the next index the device will consume
    /// (§2.7.10).
    pub fn enable_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        if self.event_idx {
            fields::store(mem, &self.layout, RingField::AvailEvent, self.next_avail)?;
        } else {
            fields::store(mem, &self.layout, RingField::UsedFlags, 0)?;
        }
        self.notify_disabled = false;
        // The flag or event store must be visible before we re-read the
        // available index, or a buffer added in between is missed.
        memory::fence();
        Ok(self.load_avail_idx(mem)? != self.next_avail)
    }
}

#[cfg(test)]
mod tests {
    //! One test per rule the device side enforces on what the driver wrote
    //! (§2.7.5, §2.7.5.3, §2.7.6), each with its specific error, and the
    //! notification rules of §2.7.7 and §2.7.10.
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::memory::GuestAddress;
    use crate::split::chain::ChainError;
    use crate::split::layout::DescFlags;
    use crate::testing::RingFixture;

    const D: u64 = RingFixture::DATA;
    const N: DescFlags = DescFlags::NEXT;
    const W: DescFlags = DescFlags::WRITE;
    const I: DescFlags = DescFlags::INDIRECT;

    fn queue(f: &RingFixture, event_idx: bool) -> DeviceQueue {
        DeviceQueue::new(f.layout, event_idx, true)
    }

    /// Pops one chain and walks it to the end, returning the buffers or the
    /// first error.
    fn walk(f: &RingFixture, q: &mut DeviceQueue) -> Result<Vec<(u64, u32, bool)>, QueueError> {
        let chain = q.pop(&f.mem)?.expect("a chain is available");
        chain
            .map(|d| d.map(|d| (d.addr().0, d.len(), d.is_write_only())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(QueueError::Chain)
    }

    #[test]
    fn direct_chain_is_walked_in_order() {
        let mut f = RingFixture::new(8);
        f.set_desc(3, D, 16, N, 5);
        f.set_desc(5, D + 16, 100, N | W, 1);
        f.set_desc(1, D + 200, 1, W, 0);
        f.push_avail(3);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q).unwrap(),
            [(D, 16, false), (D + 16, 100, true), (D + 200, 1, true)]
        );
        assert!(q.pop(&f.mem).unwrap().is_none());
    }

    #[test]
    fn section_2_7_5_3_direct_descriptors_then_one_indirect_is_valid() {
        let mut f = RingFixture::new(8);
        let table = GuestAddress(D + 0x1000);
        f.set_desc(0, D, 16, N, 1);
        // The WRITE flag on the descriptor that points to the table is
        // ignored (§2.7.5.3.2).
        f.set_desc(1, table.0, 48, I | W, 0);
        f.set_table_desc(table, 0, D + 16, 8, N, 1);
        f.set_table_desc(table, 1, D + 32, 64, N | W, 2);
        f.set_table_desc(table, 2, D + 96, 1, W, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q).unwrap(),
            [
                (D, 16, false),
                (D + 16, 8, false),
                (D + 32, 64, true),
                (D + 96, 1, true)
            ]
        );
    }

    #[test]
    fn descriptor_loop_is_too_long_not_a_hang() {
        let mut f = RingFixture::new(4);
        f.set_desc(0, D, 1, N, 1);
        f.set_desc(1, D, 1, N, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::TooLong { limit: 4 }))
        );
    }

    #[test]
    fn loop_inside_indirect_table_is_too_long() {
        let mut f = RingFixture::new(4);
        let table = GuestAddress(D + 0x1000);
        f.set_desc(0, table.0, 32, I, 0);
        f.set_table_desc(table, 0, D, 1, N, 1);
        f.set_table_desc(table, 1, D, 1, N, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::TooLong { limit: 2 }))
        );
    }

    #[test]
    fn chain_longer_than_queue_is_refused() {
        // Every descriptor of the table is used once, then `next` wraps back
        // to a visited one: the walk stops at the queue size.
        let mut f = RingFixture::new(8);
        for i in 0..8u16 {
            f.set_desc(i, D, 1, N, (i + 1) % 8);
        }
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::TooLong { limit: 8 }))
        );
    }

    #[test]
    fn next_out_of_range_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 1, N, 8);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::NextOutOfRange {
                index: 0,
                next: 8,
                table_len: 8
            }))
        );
    }

    #[test]
    fn section_2_7_5_3_1_nested_indirect_is_refused() {
        let mut f = RingFixture::new(8);
        let table = GuestAddress(D + 0x1000);
        f.set_desc(0, table.0, 16, I, 0);
        f.set_table_desc(table, 0, D + 0x2000, 16, I, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::NestedIndirect))
        );
    }

    #[test]
    fn section_2_7_5_3_1_indirect_with_next_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D + 0x1000, 16, I | N, 1);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::IndirectWithNext))
        );
    }

    #[test]
    fn section_2_7_5_3_indirect_length_zero_or_not_multiple_of_16() {
        for len in [0u32, 15, 17, 40] {
            let mut f = RingFixture::new(8);
            f.set_desc(0, D + 0x1000, len, I, 0);
            f.push_avail(0);
            let mut q = queue(&f, false);
            assert_eq!(
                walk(&f, &mut q),
                Err(QueueError::Chain(ChainError::IndirectBadLength { len }))
            );
        }
    }

    #[test]
    fn indirect_without_the_feature_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D + 0x1000, 16, I, 0);
        f.push_avail(0);
        let mut q = DeviceQueue::new(f.layout, false, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::IndirectNotNegotiated))
        );
    }

    #[test]
    fn huge_indirect_table_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 16 * 32769, I, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::IndirectTooLarge {
                len: 16 * 32769
            }))
        );
    }

    #[test]
    fn address_plus_length_that_wraps_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, u64::MAX - 4, 16, DescFlags::empty(), 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::AddressWraps {
                addr: GuestAddress(u64::MAX - 4),
                len: 16
            }))
        );
        // An indirect table that wraps, too.
        f.set_desc(1, u64::MAX - 15, 32, I, 0);
        f.push_avail(1);
        assert!(matches!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::AddressWraps { .. }))
        ));
    }

    #[test]
    fn indirect_table_outside_memory_is_a_memory_error() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, 0x4000_0000, 32, I, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert!(matches!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::Memory(
                MemoryError::OutOfBounds { .. }
            )))
        ));
    }

    #[test]
    fn buffer_outside_memory_or_across_a_hole_fails_reader_writer() {
        let mut f = RingFixture::new(8);
        // Memory ends at 2 MiB: a buffer that runs past it.
        f.set_desc(0, 0x20_0000 - 8, 16, DescFlags::empty(), 0);
        f.push_avail(0);
        f.set_desc(1, 0x30_0000, 16, W, 0);
        f.push_avail(1);
        let mut q = queue(&f, false);
        let c = q.pop(&f.mem).unwrap().unwrap();
        assert!(matches!(
            c.reader_writer::<8>().err(),
            Some(ChainError::Memory(MemoryError::Hole { .. }))
        ));
        let c = q.pop(&f.mem).unwrap().unwrap();
        assert!(matches!(
            c.reader_writer::<8>().err(),
            Some(ChainError::Memory(MemoryError::OutOfBounds { .. }))
        ));
    }

    #[test]
    fn section_2_7_4_2_readable_after_writable_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 8, W | N, 1);
        f.set_desc(1, D + 8, 8, N, 2);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::ReadableAfterWritable))
        );
    }

    #[test]
    fn chain_over_4_gib_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, u32::MAX, N, 1);
        f.set_desc(1, D, 2, DescFlags::empty(), 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        assert_eq!(
            walk(&f, &mut q),
            Err(QueueError::Chain(ChainError::LengthOverflow))
        );
    }

    #[test]
    fn section_2_7_6_avail_index_jump_beyond_size_is_refused() {
        let mut f = RingFixture::new(8);
        f.set_avail_idx(9);
        let mut q = queue(&f, false);
        assert_eq!(
            q.pop(&f.mem).err(),
            Some(QueueError::AvailIndexJump {
                avail_idx: 9,
                next_avail: 0,
                size: 8
            })
        );
        // Exactly `size` ahead is fine.
        f.set_avail_idx(8);
        assert!(q.pop(&f.mem).is_ok());
    }

    #[test]
    fn section_2_7_6_head_out_of_range_is_refused_and_consumed() {
        let mut f = RingFixture::new(8);
        f.push_avail(8);
        f.set_desc(2, D, 4, DescFlags::empty(), 0);
        f.push_avail(2);
        let mut q = queue(&f, false);
        assert_eq!(
            q.pop(&f.mem).err(),
            Some(QueueError::Chain(ChainError::HeadOutOfRange {
                head: 8,
                size: 8
            }))
        );
        // The queue goes on with the next entry.
        assert_eq!(walk(&f, &mut q).unwrap(), [(D, 4, false)]);
    }

    #[test]
    fn a_broken_queue_does_not_stop_another_queue_on_the_same_memory() {
        let mut f = RingFixture::new(8);
        f.set_avail_idx(100);
        let mut bad = queue(&f, false);
        assert!(bad.pop(&f.mem).is_err());
        // A second queue laid out elsewhere in the same memory.
        let size = f.layout.size();
        let other = QueueLayout::new(
            size,
            GuestAddress(0x8_0000),
            GuestAddress(0x8_1000),
            GuestAddress(0x8_2000),
        )
        .unwrap();
        f.mem
            .write_obj(
                GuestAddress(0x8_0000),
                &crate::split::layout::Descriptor::new(GuestAddress(D), 4, W, 0),
            )
            .unwrap();
        f.mem.write_u16(other.avail_slot(0), 0).unwrap();
        f.mem.store_u16_release(other.avail_idx(), 1).unwrap();
        let mut good = DeviceQueue::new(other, false, false);
        let chain = good.pop(&f.mem).unwrap().unwrap();
        assert_eq!(chain.head(), 0);
        good.add_used(&f.mem, 0, 4).unwrap();
        good.publish_used(&f.mem).unwrap();
        assert_eq!(f.mem.load_u16_acquire(other.used_idx()).unwrap(), 1);
        assert!(bad.pop(&f.mem).is_err());
    }

    #[test]
    fn used_entries_are_published_in_one_batch() {
        let mut f = RingFixture::new(8);
        for h in 0..3 {
            f.set_desc(h, D, 4, W, 0);
            f.push_avail(h);
        }
        let mut q = queue(&f, false);
        while let Some(c) = q.pop(&f.mem).unwrap() {
            let h = c.head();
            q.add_used(&f.mem, h, 4).unwrap();
            assert_eq!(f.used_idx(), 0, "not visible before publish");
        }
        q.publish_used(&f.mem).unwrap();
        assert_eq!(f.used_idx(), 3);
        assert_eq!(f.used(1), UsedElem::new(1, 4));
        assert_eq!(
            q.add_used(&f.mem, 8, 0),
            Err(QueueError::InvalidHead { head: 8, size: 8 })
        );
    }

    #[test]
    fn section_2_7_7_no_interrupt_flag_suppresses_notification() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 4, W, 0);
        f.push_avail(0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        q.pop(&f.mem).unwrap();
        assert!(!q.needs_notification(&f.mem).unwrap(), "nothing published");
        q.add_used(&f.mem, 0, 4).unwrap();
        q.publish_used(&f.mem).unwrap();
        assert!(q.needs_notification(&f.mem).unwrap());
        assert!(!q.needs_notification(&f.mem).unwrap(), "already decided");
        f.set_avail_flags(AvailFlags::NO_INTERRUPT.bits());
        q.pop(&f.mem).unwrap();
        q.add_used(&f.mem, 0, 4).unwrap();
        q.publish_used(&f.mem).unwrap();
        assert!(!q.needs_notification(&f.mem).unwrap());
    }

    #[test]
    fn section_2_7_10_used_event_decides_notification() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 4, W, 0);
        for _ in 0..4 {
            f.push_avail(0);
        }
        let mut q = queue(&f, true);
        // The driver wants an interrupt once used idx passes 2 (used_event=2
        // means "after entry 2 is used", i.e. when idx moves past 2).
        f.set_used_event(2);
        let mut fired = Vec::new();
        for _ in 0..4 {
            q.pop(&f.mem).unwrap().unwrap();
            q.add_used(&f.mem, 0, 4).unwrap();
            q.publish_used(&f.mem).unwrap();
            fired.push(q.needs_notification(&f.mem).unwrap());
        }
        assert_eq!(fired, [false, false, true, false]);
    }

    #[test]
    fn section_2_7_10_batch_crossing_used_event_notifies_once() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 4, W, 0);
        for _ in 0..4 {
            f.push_avail(0);
        }
        let mut q = queue(&f, true);
        f.set_used_event(1);
        while q.pop(&f.mem).unwrap().is_some() {
            q.add_used(&f.mem, 0, 4).unwrap();
        }
        q.publish_used(&f.mem).unwrap();
        assert!(q.needs_notification(&f.mem).unwrap());
        assert!(!q.needs_notification(&f.mem).unwrap());
    }

    #[test]
    fn section_2_7_7_device_suppresses_driver_notifications() {
        let mut f = RingFixture::new(8);
        let mut q = queue(&f, false);
        q.disable_notification(&f.mem).unwrap();
        assert_eq!(f.used_flags(), UsedFlags::NO_NOTIFY.bits());
        assert!(!q.enable_notification(&f.mem).unwrap());
        assert_eq!(f.used_flags(), 0);
        // A buffer that arrived while notifications were off is reported.
        q.disable_notification(&f.mem).unwrap();
        f.set_desc(0, D, 4, W, 0);
        f.push_avail(0);
        assert!(q.enable_notification(&f.mem).unwrap());
    }

    #[test]
    fn section_2_7_10_avail_event_tracks_next_avail() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 4, W, 0);
        f.push_avail(0);
        f.push_avail(0);
        let mut q = queue(&f, true);
        q.disable_notification(&f.mem).unwrap();
        assert_eq!(f.used_flags(), 0, "EVENT_IDX: flags unused");
        q.pop(&f.mem).unwrap();
        q.pop(&f.mem).unwrap();
        assert!(!q.enable_notification(&f.mem).unwrap());
        assert_eq!(f.avail_event(), 2);
    }

    #[test]
    fn reader_and_writer_cross_descriptor_boundaries() {
        let mut f = RingFixture::new(8);
        let table = GuestAddress(D + 0x1000);
        f.mem.write(GuestAddress(D), &[1, 2, 3]).unwrap();
        f.mem
            .write(GuestAddress(D + 100), &[4, 5, 6, 7, 8])
            .unwrap();
        f.set_desc(0, D, 3, N, 1);
        f.set_desc(1, table.0, 48, I, 0);
        f.set_table_desc(table, 0, D + 100, 5, N, 1);
        f.set_table_desc(table, 1, D + 200, 2, N | W, 2);
        f.set_table_desc(table, 2, D + 300, 6, W, 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        let chain = q.pop(&f.mem).unwrap().unwrap();
        let (mut r, mut w) = chain.reader_writer::<4>().unwrap();
        assert_eq!((r.total(), w.total()), (8, 8));
        let hdr: [u8; 4] = r.read_obj().unwrap();
        assert_eq!(hdr, [1, 2, 3, 4]);
        let mut rest = [0u8; 8];
        assert_eq!(r.read(&mut rest).unwrap(), 4);
        assert_eq!(&rest[..4], &[5, 6, 7, 8]);
        assert_eq!(
            r.read_exact(&mut [0u8; 1]),
            Err(ChainError::ShortBuffer {
                needed: 1,
                available: 0
            })
        );
        w.write_all(&[9, 9, 9]).unwrap();
        assert_eq!(
            w.write_all(&[0; 6]),
            Err(ChainError::ShortBuffer {
                needed: 6,
                available: 5
            })
        );
        assert_eq!(w.written(), 3, "a failed write writes nothing");
        let mut segs = Vec::new();
        w.consume_mapped(5, |s| segs.push(s.len())).unwrap();
        assert_eq!(segs, [5]);
        assert_eq!(w.written(), 8);
        let mut out = [0u8; 2];
        f.mem.read(GuestAddress(D + 200), &mut out).unwrap();
        assert_eq!(out, [9, 9]);
        assert_eq!(f.mem.read_u16(GuestAddress(D + 300)).unwrap() & 0xff, 9);
    }

    #[test]
    fn reader_writer_capacity_is_enforced() {
        let mut f = RingFixture::new(8);
        f.set_desc(0, D, 1, N, 1);
        f.set_desc(1, D, 1, N, 2);
        f.set_desc(2, D, 1, DescFlags::empty(), 0);
        f.push_avail(0);
        let mut q = queue(&f, false);
        let chain = q.pop(&f.mem).unwrap().unwrap();
        assert_eq!(
            chain.reader_writer::<2>().err(),
            Some(ChainError::TooManySegments { limit: 2 })
        );
    }

    #[test]
    fn indices_wrap_at_16_bits() {
        let mut f = RingFixture::new(4);
        f.set_desc(0, D, 4, W, 0);
        let mut q = queue(&f, true);
        let n = if cfg!(miri) { 200 } else { 70_000 };
        for _ in 0..n {
            f.push_avail(0);
            let c = q.pop(&f.mem).unwrap().unwrap();
            q.add_used(&f.mem, c.head(), 4).unwrap();
            q.publish_used(&f.mem).unwrap();
        }
        assert_eq!(f.used_idx(), (n % 65536) as u16);
        assert!(q.pop(&f.mem).unwrap().is_none());
    }
}
