//! Fakes for tests, here and in downstream crates (feature `test-utils`):
//! owned guest memory and a fixture that plays the driver's side of a split
//! queue byte by byte, so tests can build any ring, valid or hostile.
//!
//! Needs `alloc`; never used by the `no_std` library itself.

use alloc::boxed::Box;
use alloc::vec;

use crate::memory::{
    Access, GuestAddress, GuestMemory, Mapping, MemoryError, Region, RegionMemory,
};
use crate::split::fields::{self, RingField};
use crate::split::layout::{DescFlags, Descriptor, QueueLayout, QueueSize, UsedElem};

pub mod fetch;
pub mod virtio_drivers;

/// Guest memory owned by the test: zeroed host buffers, 8-byte aligned, one
/// per region.
pub struct OwnedMemory {
    bufs: heapless::Vec<(*mut u64, usize), 8>,
    mem: RegionMemory<8>,
}

impl OwnedMemory {
    /// One region of `size` bytes at `base`.
    pub fn new(base: GuestAddress, size: usize) -> Self {
        Self::with_regions(&[(base, size)])
    }

    /// Several regions (at most 8), which must not overlap.
    ///
    /// # Panics
    ///
    /// If the layout is invalid: this is a test helper.
    pub fn with_regions(regions: &[(GuestAddress, usize)]) -> Self {
        let mut out = OwnedMemory {
            bufs: heapless::Vec::new(),
            mem: RegionMemory::new(),
        };
        for &(base, size) in regions {
            let words = size.div_ceil(8);
            let ptr = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<u64>();
            out.bufs.push((ptr, words)).expect("at most 8 regions");
            // SAFETY: `ptr` is a fresh allocation of at least `size` bytes,
            // freed only in `drop` after the memory is gone, and only ever
            // accessed through the region's raw pointers.
            let region = unsafe { Region::new(base, ptr.cast(), size as u64) };
            out.mem.add(region).expect("valid test memory layout");
        }
        out
    }

    /// The underlying region memory.
    pub fn regions(&self) -> &RegionMemory<8> {
        &self.mem
    }
}

// SAFETY: the buffers are owned by this value and reached only through the
// regions' raw pointers, by copies and atomics (as guest memory is shared
// with a running guest); moving or sharing the owner between threads does
// not change that.
unsafe impl Send for OwnedMemory {}
// SAFETY: as above: every access through `&OwnedMemory` is a raw copy or an
// atomic, the same as for guest memory shared with vCPU threads.
unsafe impl Sync for OwnedMemory {}

impl Drop for OwnedMemory {
    fn drop(&mut self) {
        for &(ptr, words) in &self.bufs {
            // SAFETY: `ptr`/`words` came from `Box::into_raw` of a boxed
            // slice of exactly `words` elements, and are freed once.
            drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr, words)) });
        }
    }
}

impl GuestMemory for OwnedMemory {
    #[inline]
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.mem.map(addr, len, access)
    }
    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem.read(addr, buf)
    }
    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.mem.write(addr, buf)
    }
    #[inline]
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.mem.load_u16_acquire(addr)
    }
    #[inline]
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.mem.store_u16_release(addr, val)
    }
}

/// A split queue laid out in an [`OwnedMemory`], with helpers that write the
/// driver's side directly: descriptors, available ring, flags, event index.
/// Nothing is validated: tests use it to build hostile rings.
pub struct RingFixture {
    /// The memory (starts at guest address 0).
    pub mem: OwnedMemory,
    /// The queue's layout inside it.
    pub layout: QueueLayout,
    avail_idx: u16,
}

impl RingFixture {
    /// Guest address where buffers may be placed (after the rings).
    pub const DATA: u64 = 0x10_0000;

    /// A queue of `size` in 2 MiB of memory at 0: rings below
    /// [`Self::DATA`], buffers above.
    ///
    /// # Panics
    ///
    /// If `size` is not a valid queue size: this is a test helper.
    pub fn new(size: u16) -> Self {
        let mem = OwnedMemory::new(GuestAddress(0), 0x20_0000);
        let size = QueueSize::new(u32::from(size)).expect("valid queue size");
        let layout = QueueLayout::new(
            size,
            GuestAddress(0x1000),
            GuestAddress(0x1000 + QueueLayout::desc_table_len(size)),
            GuestAddress((0x1000 + QueueLayout::desc_table_len(size) + 0x1_0000 + 4095) & !4095),
        )
        .expect("valid layout");
        RingFixture {
            mem,
            layout,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `index` of the queue's table (or any table: see
    /// [`Self::set_table_desc`]).
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: DescFlags, next: u16) {
        self.set_table_desc(self.layout.desc_table(), index, addr, len, flags, next);
    }

    /// Writes entry `index` of the descriptor table at `table`.
    pub fn set_table_desc(
        &self,
        table: GuestAddress,
        index: u16,
        addr: u64,
        len: u32,
        flags: DescFlags,
        next: u16,
    ) {
        let d = Descriptor::new(GuestAddress(addr), len, flags, next);
        let at = GuestAddress(table.0 + 16 * u64::from(index));
        self.mem.write_obj(at, &d).expect("table in memory");
    }

    /// Puts `head` in the next available slot and publishes the index.
    pub fn push_avail(&mut self, head: u16) {
        self.mem
            .write_u16(self.layout.avail_slot(self.avail_idx), head)
            .expect("ring in memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index as a hostile driver might.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        fields::store(&self.mem, &self.layout, RingField::AvailIdx, idx).expect("ring in memory");
    }

    /// Writes the available ring's flags.
    pub fn set_avail_flags(&self, flags: u16) {
        fields::store(&self.mem, &self.layout, RingField::AvailFlags, flags)
            .expect("ring in memory");
    }

    /// Writes `used_event`.
    pub fn set_used_event(&self, v: u16) {
        fields::store(&self.mem, &self.layout, RingField::UsedEvent, v).expect("ring in memory");
    }

    /// The used index as published by the device.
    pub fn used_idx(&self) -> u16 {
        fields::load(&self.mem, &self.layout, RingField::UsedIdx).expect("ring in memory")
    }

    /// The used element at free-running index `i`.
    pub fn used(&self, i: u16) -> UsedElem {
        self.mem
            .read_obj(self.layout.used_slot(i))
            .expect("ring in memory")
    }

    /// The used ring's flags.
    pub fn used_flags(&self) -> u16 {
        fields::load(&self.mem, &self.layout, RingField::UsedFlags).expect("ring in memory")
    }

    /// `avail_event` as written by the device.
    pub fn avail_event(&self) -> u16 {
        fields::load(&self.mem, &self.layout, RingField::AvailEvent).expect("ring in memory")
    }
}

/// Whether `event` is one of the free-running indices in `[old, new)`,
/// found by walking the window one index at a time: an independent
/// statement of §2.7.10's rule for models to check `vring_need_event`
/// against.
pub fn window_contains(event: u16, old: u16, new: u16) -> bool {
    let mut i = old;
    while i != new {
        if i == event {
            return true;
        }
        i = i.wrapping_add(1);
    }
    false
}
