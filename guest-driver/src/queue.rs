//! Virtqueues in DMA memory (spec §2.7): [`DmaMemory`], virtio-core's
//! `GuestMemory` over what the [`Hal`] allocated (guest physical address =
//! what the `Hal` says), and [`DmaQueue`], one split queue whose rings and
//! fixed-size buffer slots live in one DMA allocation, driven by
//! virtio-core's `DriverQueue`.
//!
//! Every chain is one slot, device-readable or device-writable. Data is
//! copied into and out of the slots, so no caller buffer is ever given to
//! the device, and a request that times out stays valid: its slot remains
//! the queue's until the device uses it. No indirect descriptors.
//!
//! What the device wrote is read through [`DmaBytes`], a raw view whose
//! every read is an atomic byte load, never through a `&[u8]`: a device
//! that breaks the rules may write a slot it already used (§2.7.8,
//! §2.7.14), and a Rust reference over memory another agent writes is
//! undefined behaviour however the bytes are then used.

use core::marker::PhantomData;
use core::ops::{Bound, RangeBounds};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

use virtio_core::memory::{Access, GuestAddress, GuestMemory, Mapping, MemoryError, Region};
use virtio_core::memory::{RegionError, RegionMemory};
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::split::{DriverQueue, QueueLayout, QueueSize};

use crate::error::Error;
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::transport::{Completion, Transport};

/// Guest memory made of DMA allocations, at the physical addresses the
/// [`Hal`] gave them: the view virtio-core's queues need of the rings.
/// Holds at most `N` allocations. Not `Clone`: a copy could outlive the
/// allocations it points into.
#[derive(Debug, Default)]
pub struct DmaMemory<const N: usize = 1> {
    regions: RegionMemory<N>,
}

impl<const N: usize> DmaMemory<N> {
    /// No memory yet.
    pub const fn new() -> Self {
        DmaMemory {
            regions: RegionMemory::new(),
        }
    }

    /// Adds an allocation: its bytes become guest memory at `dma.paddr()`.
    ///
    /// # Safety
    ///
    /// `dma` must stay allocated (not given back to its `Hal`) for as long
    /// as this memory is used.
    pub unsafe fn add(&mut self, dma: &Dma) -> Result<(), RegionError> {
        // SAFETY: a `Dma` is valid for `len()` bytes with no Rust reference
        // into it (its constructor's contract), and stays so while it is
        // allocated, which the caller promises for our lifetime.
        let region = unsafe {
            Region::new(
                GuestAddress(dma.paddr()),
                dma.vaddr().as_ptr(),
                dma.len() as u64,
            )
        };
        self.regions.add(region)
    }
}

impl<const N: usize> GuestMemory for DmaMemory<N> {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.regions.map(addr, len, access)
    }
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.regions.read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.regions.write(addr, buf)
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.regions.load_u16_acquire(addr)
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.regions.store_u16_release(addr, val)
    }
}

/// A view of bytes in DMA memory that the device may write: a slot it
/// used (§2.7.14) and that a device breaking the rules could write again,
/// or driver memory handed out the same way. A pointer and a length,
/// never a Rust reference: every read is a relaxed atomic byte load
/// (a copy), so a concurrent device write gives changing bytes, not
/// undefined behaviour. Copy out with [`copy_to`](Self::copy_to) what
/// must stay stable, and read it from the copy (no double fetch).
#[derive(Clone, Copy)]
pub struct DmaBytes<'a> {
    ptr: NonNull<u8>,
    len: usize,
    /// Borrows the memory like a `&'a [AtomicU8]` would (which is what
    /// every access treats it as), without forming one.
    _mem: PhantomData<&'a [AtomicU8]>,
}

impl<'a> DmaBytes<'a> {
    /// No bytes.
    pub const fn empty() -> Self {
        DmaBytes {
            ptr: NonNull::dangling(),
            len: 0,
            _mem: PhantomData,
        }
    }

    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads of `len` bytes for `'a` (allocated,
    /// not freed meanwhile), and no Rust reference may cover those bytes
    /// for `'a`; this process may write them meanwhile only with atomic
    /// byte stores or with accesses ordered before or after the reads
    /// (another agent, the device, may write them at any time).
    pub(crate) const unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        DmaBytes {
            ptr,
            len,
            _mem: PhantomData,
        }
    }

    /// Bytes in the view.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte `i`, read once; `None` past the end.
    pub fn get(&self, i: usize) -> Option<u8> {
        (i < self.len).then(|| {
            // SAFETY: `i < len`: within the bytes `from_raw`'s caller
            // vouched for, read atomically (its contract).
            unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(i)) }.load(Ordering::Relaxed)
        })
    }

    /// The bytes in `range` as a view; `None` if the range is not within
    /// the view.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Option<DmaBytes<'a>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1)?,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        if start > end || end > self.len {
            return None;
        }
        // SAFETY: `start <= end <= len`: a part of this view, under the
        // same contract.
        Some(unsafe { DmaBytes::from_raw(self.ptr.add(start), end - start) })
    }

    /// Copies the first `min(self.len(), dst.len())` bytes into `dst`,
    /// each read once; returns how many.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let n = self.len.min(dst.len());
        for (i, d) in dst.iter_mut().take(n).enumerate() {
            // SAFETY: `i < n <= len`; an atomic read (see `get`).
            *d = unsafe { AtomicU8::from_ptr(self.ptr.as_ptr().add(i)) }.load(Ordering::Relaxed);
        }
        n
    }

    /// `K` bytes at `offset`, copied; `None` if they are not all in the
    /// view.
    pub fn read_array<const K: usize>(&self, offset: usize) -> Option<[u8; K]> {
        let part = self.slice(offset..offset.checked_add(K)?)?;
        let mut out = [0u8; K];
        part.copy_to(&mut out);
        Some(out)
    }

    /// The bytes, each read once as the iterator reaches it.
    pub fn iter(&self) -> impl Iterator<Item = u8> + use<'a> {
        let view = *self;
        (0..view.len).filter_map(move |i| view.get(i))
    }
}

impl Default for DmaBytes<'_> {
    fn default() -> Self {
        DmaBytes::empty()
    }
}

impl core::fmt::Debug for DmaBytes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Whether the view holds these bytes now (each read once).
impl PartialEq<[u8]> for DmaBytes<'_> {
    fn eq(&self, other: &[u8]) -> bool {
        self.len == other.len() && self.iter().eq(other.iter().copied())
    }
}

/// As `PartialEq<[u8]>`.
impl PartialEq<&[u8]> for DmaBytes<'_> {
    fn eq(&self, other: &&[u8]) -> bool {
        *self == **other
    }
}

/// A used slot taken back from the device (§2.7.14): which slot and how
/// many bytes the device wrote, already checked against the slot's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Completed {
    /// The slot.
    pub slot: u16,
    /// Bytes the device wrote from the slot's start (0 for a
    /// device-readable slot).
    pub len: u32,
}

/// Where a slot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Free for the next chain.
    Free,
    /// Made available as the chain with this head.
    Posted { head: u16 },
    /// Used by the device; the driver has not released it yet.
    Held,
}

/// The queue size to use: the largest power of two at most `cap` and the
/// device's `max` (both at least 1).
fn queue_size(cap: usize, max: u16) -> u16 {
    let limit = u16::try_from(cap).unwrap_or(u16::MAX).min(max).max(1);
    1 << (15 - limit.leading_zeros().min(15))
}

/// One split virtqueue in one DMA allocation: the rings, then `size` slots
/// of `slot_size` bytes, with virtio-core's [`DriverQueue`] (capacity `N`)
/// keeping the ring.
///
/// It does not free its memory on drop: the device may still write it.
/// Its owner resets the device and then calls [`free`](Self::free); a
/// device that does not reset keeps the pages (a leak, never a
/// use-after-free).
pub struct DmaQueue<const N: usize> {
    index: u16,
    dma: Option<Dma>,
    mem: DmaMemory<1>,
    queue: DriverQueue<N>,
    slot_base: u64,
    slot_size: u32,
    slots: [Slot; N],
    head_slot: [u16; N],
    free: heapless::Vec<u16, N>,
    interrupts: bool,
}

impl<const N: usize> core::fmt::Debug for DmaQueue<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaQueue")
            .field("index", &self.index)
            .field("dma", &self.dma)
            .field("slot_size", &self.slot_size)
            .field("free", &self.free.len())
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> DmaQueue<N> {
    /// Sets up queue `index` of `transport` between FEATURES_OK and
    /// DRIVER_OK (§3.1.1 step 7, §4.2.3.2): a size of at most `N` and the
    /// device's `QueueNumMax`, one DMA allocation from `hal` for the rings
    /// (the legacy page-aligned layout on a version 1 device, §2.7.2,
    /// §4.2.4) and one slot of `slot_size` bytes per descriptor, the rings
    /// initialised, the addresses given to the device. With
    /// [`Completion::Polling`] used buffer notifications are suppressed
    /// (§2.7.7).
    ///
    /// If the device was told the addresses but set-up failed, the device
    /// is reset before the memory is freed; if it does not reset, the
    /// memory is kept.
    pub fn new<H: Hal + ?Sized, R: RegisterAccess>(
        hal: &H,
        transport: &mut Transport<R>,
        index: u16,
        slot_size: u32,
        completion: Completion,
    ) -> Result<Self, Error> {
        Self::with_size(hal, transport, index, slot_size, completion, N)
    }

    /// As [`new`](Self::new), with the queue size also capped at `cap`
    /// (so the slots take `cap` times `slot_size` bytes, not `N` times).
    pub fn with_size<H: Hal + ?Sized, R: RegisterAccess>(
        hal: &H,
        transport: &mut Transport<R>,
        index: u16,
        slot_size: u32,
        completion: Completion,
        cap: usize,
    ) -> Result<Self, Error> {
        let max = transport.driver().queue_max_size(index)?;
        let size = queue_size(N.min(cap), max);
        let layout_err = |err| Error::Layout { queue: index, err };
        let qsize = QueueSize::new(u32::from(size)).map_err(layout_err)?;
        let slot_size = slot_size.max(1);
        let ring_bytes = ring_bytes(transport.is_modern(), qsize);
        let ring_pages = ring_bytes.div_ceil(PAGE_SIZE as u64);
        let slot_pages = (u64::from(size) * u64::from(slot_size)).div_ceil(PAGE_SIZE as u64);
        let pages = usize::try_from(ring_pages + slot_pages).unwrap_or(usize::MAX);
        let dma = hal.dma_alloc(pages).ok_or(Error::DmaExhausted { pages })?;
        let base = GuestAddress(dma.paddr());
        let mut mem = DmaMemory::new();
        // SAFETY: `dma` is kept in the queue and given back only by `free`,
        // which also empties `mem`.
        if let Err(err) = unsafe { mem.add(&dma) } {
            let paddr = dma.paddr();
            // SAFETY: the device was never told this memory's address.
            unsafe { hal.dma_dealloc(dma) };
            return Err(Error::DmaRegion { paddr, err });
        }
        let layout = match ring_layout(transport, qsize, base) {
            Ok(l) => l,
            Err(e) => {
                // SAFETY: as above.
                unsafe { hal.dma_dealloc(dma) };
                return Err(layout_err(e));
            }
        };
        let queue = match DriverQueue::new(layout, transport.event_idx(), None) {
            Ok(q) => q,
            Err(err) => {
                // SAFETY: as above.
                unsafe { hal.dma_dealloc(dma) };
                return Err(Error::Queue { queue: index, err });
            }
        };
        let mut q = DmaQueue {
            index,
            dma: Some(dma),
            mem,
            queue,
            // Below the top of the allocation, so no overflow.
            slot_base: base.0 + ring_pages * PAGE_SIZE as u64,
            slot_size,
            slots: [Slot::Free; N],
            head_slot: [0; N],
            free: heapless::Vec::new(),
            interrupts: completion == Completion::Interrupt,
        };
        if let Err(e) = q.attach(transport) {
            transport.fail();
            if transport.reset().is_ok() {
                // SAFETY: the device was reset (§2.4): it no longer uses
                // the queue.
                unsafe { q.free(hal) };
            }
            return Err(e);
        }
        Ok(q)
    }

    /// Gives the queue to the device again after a device reset (§2.4),
    /// between FEATURES_OK and DRIVER_OK: the rings are zeroed, every slot
    /// is free, the queue is no longer broken, and its addresses are
    /// written to the device (§4.2.3.2).
    pub fn attach<R: RegisterAccess>(&mut self, transport: &Transport<R>) -> Result<(), Error> {
        let qerr = |err| Error::Queue {
            queue: self.index,
            err,
        };
        self.queue.init(&self.mem).map_err(qerr)?;
        self.slots = [Slot::Free; N];
        self.free.clear();
        for s in (0..self.queue.layout().size().get()).rev() {
            // At most the queue size, which is at most N.
            let _ = self.free.push(s);
        }
        transport
            .driver()
            .setup_queue(self.index, &self.queue.layout())?;
        if !self.interrupts {
            self.queue.disable_interrupts(&self.mem).map_err(qerr)?;
        }
        Ok(())
    }

    /// The queue index (§2.7, §5.x.2).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue size in use (§2.7).
    pub fn size(&self) -> u16 {
        self.queue.layout().size().get()
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    /// Slots free for new chains.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet taken back.
    pub fn in_flight(&self) -> u16 {
        self.queue.in_flight()
    }

    /// Whether the device broke the ring rules (§2.7.8, §2.7.14).
    pub fn is_broken(&self) -> bool {
        self.queue.is_broken()
    }

    /// The queue's layout (§2.7).
    pub fn layout(&self) -> QueueLayout {
        self.queue.layout()
    }

    fn qerr(&self, err: virtio_core::split::DriverError) -> Error {
        Error::Queue {
            queue: self.index,
            err,
        }
    }

    fn slot_addr(&self, slot: u16) -> GuestAddress {
        // slot < size and size * slot_size lies inside the allocation.
        GuestAddress(self.slot_base + u64::from(slot) * u64::from(self.slot_size))
    }

    /// Adds one device-readable chain (§2.7.13.1) holding the first
    /// `min(data.len(), slot_size)` bytes of `data` and returns how many;
    /// 0 if `data` is empty or no slot is free. Not visible to the device
    /// until [`kick`](Self::kick).
    pub fn push_readable(&mut self, data: &[u8]) -> Result<usize, Error> {
        let n = data.len().min(self.slot_size as usize);
        if n == 0 {
            return Ok(0);
        }
        let Some(&slot) = self.free.last() else {
            return Ok(0);
        };
        let addr = self.slot_addr(slot);
        let chunk = data.get(..n).unwrap_or_default();
        self.mem.write(addr, chunk).map_err(|err| Error::Memory {
            queue: self.index,
            err,
        })?;
        // n <= slot_size, a u32.
        let token = self
            .queue
            .add(&self.mem, &[(addr, n as u32)], &[])
            .map_err(|e| self.qerr(e))?;
        self.take_slot(slot, token.head());
        Ok(n)
    }

    /// Adds one device-writable chain of a whole slot (§2.7.13.1); `false`
    /// if no slot is free.
    pub fn push_writable(&mut self) -> Result<bool, Error> {
        let Some(&slot) = self.free.last() else {
            return Ok(false);
        };
        let addr = self.slot_addr(slot);
        let token = self
            .queue
            .add(&self.mem, &[], &[(addr, self.slot_size)])
            .map_err(|e| self.qerr(e))?;
        self.take_slot(slot, token.head());
        Ok(true)
    }

    fn take_slot(&mut self, slot: u16, head: u16) {
        self.free.pop();
        if let Some(s) = self.slots.get_mut(usize::from(slot)) {
            *s = Slot::Posted { head };
        }
        if let Some(h) = self.head_slot.get_mut(usize::from(head)) {
            *h = slot;
        }
    }

    /// Publishes what was added (§2.7.13.3) and notifies the device if it
    /// asks for it (§2.7.13.4, §4.2.3.3).
    pub fn kick<R: RegisterAccess>(&mut self, transport: &Transport<R>) -> Result<(), Error> {
        self.kick_counted(transport).map(|_| ())
    }

    /// As [`kick`](Self::kick); whether the device was notified.
    pub fn kick_counted<R: RegisterAccess>(
        &mut self,
        transport: &Transport<R>,
    ) -> Result<bool, Error> {
        self.queue.publish(&self.mem).map_err(|e| self.qerr(e))?;
        let kick = self
            .queue
            .should_kick(&self.mem)
            .map_err(|e| self.qerr(e))?;
        if kick {
            transport.notify(self.index);
        }
        Ok(kick)
    }

    /// Takes the next used chain, if any (§2.7.14). virtio-core checks the
    /// id and that the length fits the slot; a violation breaks the queue.
    /// The slot stays held until [`release`](Self::release).
    pub fn pop(&mut self) -> Result<Option<Completed>, Error> {
        let Some(used) = self.queue.pop_used(&self.mem).map_err(|e| self.qerr(e))? else {
            return Ok(None);
        };
        let head = used.token.head();
        let slot = self.head_slot.get(usize::from(head)).copied();
        let state = slot.and_then(|s| self.slots.get_mut(usize::from(s)));
        match (slot, state) {
            (Some(slot), Some(state)) if *state == (Slot::Posted { head }) => {
                *state = Slot::Held;
                Ok(Some(Completed {
                    slot,
                    len: used.len,
                }))
            }
            // The queue accepted a head we did not post: impossible unless
            // the shadow state is corrupt; report it as the device's.
            _ => Err(self.qerr(virtio_core::split::DriverError::UsedIdNotInFlight { id: head })),
        }
    }

    /// Copies `buf.len()` bytes at `offset` of a held slot out of DMA
    /// memory (atomic byte reads, as [`DmaBytes`]).
    pub fn read_slot(&self, slot: u16, offset: u32, buf: &mut [u8]) -> Result<(), Error> {
        let end = u64::from(offset) + buf.len() as u64;
        let part = u32::try_from(end)
            .ok()
            .and_then(|end| self.held_bytes(slot, end))
            .and_then(|v| v.slice(offset as usize..));
        match part {
            Some(v) => {
                v.copy_to(buf);
                Ok(())
            }
            None => Err(Error::Memory {
                queue: self.index,
                err: MemoryError::OutOfBounds {
                    addr: self.slot_addr(slot.min(self.size())),
                    len: end,
                },
            }),
        }
    }

    /// Makes a held slot free again; slots in any other state are left
    /// alone.
    pub fn release(&mut self, slot: u16) {
        if let Some(s) = self.slots.get_mut(usize::from(slot))
            && *s == Slot::Held
        {
            *s = Slot::Free;
            // Never more free slots than slots.
            let _ = self.free.push(slot);
        }
    }

    /// Before waiting for an interrupt (§2.7.14): re-enables used buffer
    /// notifications and returns whether used buffers are already there
    /// (then pop instead of waiting). With [`Completion::Polling`] it does
    /// nothing and returns `false`.
    pub fn arm(&mut self) -> Result<bool, Error> {
        if !self.interrupts {
            return Ok(false);
        }
        self.queue
            .enable_interrupts(&self.mem)
            .map_err(|e| self.qerr(e))
    }

    /// Advises the device that used buffer notifications are not needed
    /// (§2.7.7.1), after a wait that [`arm`](Self::arm)ed the queue; only
    /// a hint. Does nothing with [`Completion::Polling`] (already off).
    pub fn disarm(&mut self) -> Result<(), Error> {
        if !self.interrupts {
            return Ok(());
        }
        self.queue
            .disable_interrupts(&self.mem)
            .map_err(|e| self.qerr(e))
    }

    /// The host pointer to `slot`'s first byte, if the slot exists and
    /// the memory is still held.
    fn slot_ptr(&self, slot: u16) -> Option<*mut u8> {
        let dma = self.dma.as_ref()?;
        if slot >= self.size() {
            return None;
        }
        // slot_base lies in the allocation, above its paddr; the slot is
        // inside it (slot < size).
        let off = self.slot_base - dma.paddr() + u64::from(slot) * u64::from(self.slot_size);
        let off = usize::try_from(off).ok()?;
        // SAFETY: `off` plus a slot is within the allocation (see above).
        Some(unsafe { dma.vaddr().as_ptr().add(off) })
    }

    /// Adds one device-readable chain (§2.7.13.1) of the first `len` bytes
    /// of a free slot, which `fill` writes in place (no copy; the bytes
    /// are whatever the slot held before, not zeroed). Returns the slot,
    /// or `None` if no slot is free (then `fill` is not called). `len` is
    /// capped at the slot size and must not be 0. Not visible to the
    /// device until [`kick`](Self::kick).
    pub fn push_readable_with(
        &mut self,
        len: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Option<u16>, Error> {
        let n = len.min(self.slot_size).max(1);
        let Some(&slot) = self.free.last() else {
            return Ok(None);
        };
        let Some(ptr) = self.slot_ptr(slot) else {
            return Ok(None);
        };
        // SAFETY: the slot is free: the device was not given it (a device
        // that writes memory it does not own breaks §2.7.13.1, and this
        // queue never shares the slot with anything else), `n` is within
        // the slot, and the slice lives only during `fill`, while `self`
        // is borrowed mutably.
        let buf = unsafe { core::slice::from_raw_parts_mut(ptr, n as usize) };
        fill(buf);
        let addr = self.slot_addr(slot);
        let token = self
            .queue
            .add(&self.mem, &[(addr, n)], &[])
            .map_err(|e| self.qerr(e))?;
        self.take_slot(slot, token.head());
        Ok(Some(slot))
    }

    /// Adds one chain of a free slot holding `data` device-readable at its
    /// start, then `writable` device-writable bytes right after it (a
    /// request and its answer, e.g. a control command and its ack,
    /// §5.1.6.5): two descriptors. Returns the slot, or `None` if no slot
    /// is free. Fails if both do not fit in a slot.
    pub fn push_request(&mut self, data: &[u8], writable: u32) -> Result<Option<u16>, Error> {
        let queue = self.index;
        let total = data.len() as u64 + u64::from(writable);
        if data.is_empty() || writable == 0 || total > u64::from(self.slot_size) {
            return Err(Error::Memory {
                queue,
                err: MemoryError::OutOfBounds {
                    addr: self.slot_addr(0),
                    len: total,
                },
            });
        }
        let Some(&slot) = self.free.last() else {
            return Ok(None);
        };
        let addr = self.slot_addr(slot);
        self.mem
            .write(addr, data)
            .map_err(|err| Error::Memory { queue, err })?;
        // data.len() < slot_size, a u32.
        let n = data.len() as u32;
        let token = self
            .queue
            .add(
                &self.mem,
                &[(addr, n)],
                &[(GuestAddress(addr.0 + u64::from(n)), writable)],
            )
            .map_err(|e| self.qerr(e))?;
        self.take_slot(slot, token.head());
        Ok(Some(slot))
    }

    /// Adds one chain of a free slot: `readable` device-readable bytes at
    /// its start, which `fill` writes in place (no copy), then `writable`
    /// device-writable bytes right after (a request and the room for its
    /// answer): two descriptors, or one when `writable` is 0. Returns the
    /// slot, or `None` if no slot is free (then `fill` is not called).
    /// Fails if `readable` is 0 or both do not fit in a slot.
    pub fn push_request_with(
        &mut self,
        readable: u32,
        writable: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Option<u16>, Error> {
        let total = u64::from(readable) + u64::from(writable);
        if readable == 0 || total > u64::from(self.slot_size) {
            return Err(Error::Memory {
                queue: self.index,
                err: MemoryError::OutOfBounds {
                    addr: self.slot_addr(0),
                    len: total,
                },
            });
        }
        let Some(&slot) = self.free.last() else {
            return Ok(None);
        };
        let Some(ptr) = self.slot_ptr(slot) else {
            return Ok(None);
        };
        // SAFETY: as in `push_readable_with`: the slot is free, the device
        // was not given it, `readable` is within it, and the slice lives
        // only during `fill`.
        let buf = unsafe { core::slice::from_raw_parts_mut(ptr, readable as usize) };
        fill(buf);
        let addr = self.slot_addr(slot);
        let answer = [(GuestAddress(addr.0 + u64::from(readable)), writable)];
        let outs: &[(GuestAddress, u32)] = if writable == 0 { &[] } else { &answer };
        let token = self
            .queue
            .add(&self.mem, &[(addr, readable)], outs)
            .map_err(|e| self.qerr(e))?;
        self.take_slot(slot, token.head());
        Ok(Some(slot))
    }

    /// A view of the first `len` bytes of a held slot in DMA memory, no
    /// copy made; `None` if the slot is not held or `len` exceeds it.
    ///
    /// The device gave the slot back (§2.7.14) and it is not posted again
    /// while viewed (that takes `&mut self`), so a device keeping the
    /// rules does not write it meanwhile; one that does changes what the
    /// view reads, nothing more ([`DmaBytes`]).
    pub fn held_bytes(&self, slot: u16, len: u32) -> Option<DmaBytes<'_>> {
        let held = self.slots.get(usize::from(slot)) == Some(&Slot::Held);
        if !held || len > self.slot_size {
            return None;
        }
        let ptr = NonNull::new(self.slot_ptr(slot)?)?;
        // SAFETY: the slot is held (used and not yet released), `len` is
        // within it, and the memory stays allocated while `self` is
        // borrowed (only `free`, taking `&mut self`, gives it back). No
        // Rust reference covers a slot while it is held: the queue
        // reaches it only through raw copies (`mem`) and views like this.
        Some(unsafe { DmaBytes::from_raw(ptr, len as usize) })
    }

    /// Gives the memory back to `hal`; afterwards every operation fails.
    ///
    /// # Safety
    ///
    /// `hal` must be the `Hal` the queue was allocated from, and the device
    /// must no longer use the queue: it was reset (§2.4), or never told
    /// the addresses.
    pub unsafe fn free<H: Hal + ?Sized>(&mut self, hal: &H) {
        self.mem = DmaMemory::new();
        self.free.clear();
        if let Some(dma) = self.dma.take() {
            // SAFETY: the caller's promise; `mem`, the only view of the
            // memory, was emptied above.
            unsafe { hal.dma_dealloc(dma) };
        }
    }
}

/// Bytes of the rings of a queue of `size`: compact on version 2
/// (§2.7: descriptor table, available ring, used ring at 4-byte
/// alignment), the legacy layout on version 1 (§2.7.2: the used ring on
/// the next page).
fn ring_bytes(modern: bool, size: QueueSize) -> u64 {
    let desc = QueueLayout::desc_table_len(size);
    let avail = QueueLayout::avail_ring_len(size);
    let used = QueueLayout::used_ring_len(size);
    let align = if modern { 4 } else { PAGE_SIZE as u64 };
    (desc + avail).next_multiple_of(align) + used
}

fn ring_layout<R: RegisterAccess>(
    transport: &Transport<R>,
    size: QueueSize,
    base: GuestAddress,
) -> Result<QueueLayout, virtio_core::split::LayoutError> {
    if !transport.is_modern() {
        return transport.driver().legacy_layout(size, base);
    }
    let desc_len = QueueLayout::desc_table_len(size);
    let avail = GuestAddress(base.0.saturating_add(desc_len));
    // Saturating: an allocation at the very top of the address space gives
    // an unaligned or wrapping address, which `QueueLayout::new` refuses.
    let used = GuestAddress(
        avail
            .0
            .saturating_add(QueueLayout::avail_ring_len(size))
            .checked_next_multiple_of(4)
            .unwrap_or(u64::MAX),
    );
    QueueLayout::new(size, base, avail, used)
}

/// Bytes the device put in a device-writable slot that the reader has not
/// taken yet (entropy, console input).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Filled {
    /// The slot.
    pub slot: u16,
    /// Bytes the device wrote.
    pub len: u32,
    /// Bytes already taken.
    pub off: u32,
}

/// Copies bytes of the `ready` slots of `q`, oldest first, into `buf`,
/// releasing each slot it drains. Returns the bytes copied and the number
/// of slots released (a receive queue reposts that many).
pub(crate) fn take_filled<const N: usize, const M: usize>(
    q: &mut DmaQueue<N>,
    ready: &mut heapless::Deque<Filled, M>,
    buf: &mut [u8],
) -> Result<(usize, usize), Error> {
    let mut n = 0;
    let mut released = 0;
    while n < buf.len() {
        let Some(chunk) = ready.front_mut() else {
            break;
        };
        let avail = chunk.len.saturating_sub(chunk.off) as usize;
        let k = avail.min(buf.len() - n);
        let dst = buf.get_mut(n..n + k).unwrap_or_default();
        q.read_slot(chunk.slot, chunk.off, dst)?;
        n += k;
        // k <= avail, which fits u32.
        chunk.off += k as u32;
        if chunk.off >= chunk.len {
            let slot = chunk.slot;
            ready.pop_front();
            q.release(slot);
            released += 1;
        }
    }
    Ok((n, released))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_size_is_the_largest_power_of_two_allowed() {
        assert_eq!(queue_size(16, 256), 16);
        assert_eq!(queue_size(16, 12), 8);
        assert_eq!(queue_size(16, 1), 1);
        assert_eq!(queue_size(16, 0), 1);
        assert_eq!(queue_size(0, 8), 1);
        assert_eq!(queue_size(1 << 20, u16::MAX), 32768);
        assert_eq!(queue_size(100, 100), 64);
    }

    #[test]
    fn dma_bytes_views_copy_and_stay_in_bounds() {
        let mut mem = [0u8; 8];
        for (i, b) in mem.iter_mut().enumerate() {
            *b = i as u8 * 10;
        }
        let ptr = NonNull::new(mem.as_mut_ptr()).unwrap();
        // SAFETY: `mem` outlives the view and nothing else touches it.
        let v = unsafe { DmaBytes::from_raw(ptr, mem.len()) };
        assert_eq!(v.len(), 8);
        assert_eq!((v.get(7), v.get(8)), (Some(70), None));
        let part = v.slice(2..5).unwrap();
        assert_eq!(part, &[20u8, 30, 40][..]);
        assert_eq!(v.slice(..=1).unwrap(), &[0u8, 10][..]);
        let (six, five) = (6, 5);
        assert!(v.slice(5..9).is_none() && v.slice(six..five).is_none());
        assert!(v.slice(usize::MAX..).is_none());
        assert_eq!(v.read_array::<2>(6), Some([60, 70]));
        assert_eq!(v.read_array::<2>(7), None);
        assert_eq!(v.read_array::<1>(usize::MAX), None);
        let mut short = [0u8; 3];
        assert_eq!(v.copy_to(&mut short), 3);
        assert_eq!(short, [0, 10, 20]);
        let mut long = [0xffu8; 10];
        assert_eq!(part.copy_to(&mut long), 3);
        assert_eq!(long[..4], [20, 30, 40, 0xff]);
        assert_eq!(v.iter().map(u32::from).sum::<u32>(), 280);
        assert!(DmaBytes::empty().is_empty() && DmaBytes::default().slice(..).is_some());
    }

    #[test]
    fn ring_bytes_follow_2_7_and_legacy_2_7_2() {
        let s = QueueSize::new(16).unwrap();
        // 256 + 38 -> 296 (4-aligned), + 134.
        assert_eq!(ring_bytes(true, s), 296 + 134);
        // Used ring on the next page.
        assert_eq!(ring_bytes(false, s), 4096 + 134);
    }
}
