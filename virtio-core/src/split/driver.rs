//! The driver's side of a split virtqueue (spec §2.7.13 "Supplying Buffers to
//! The Device", §2.7.14 "Receiving Used Buffers From The Device", with the
//! notification suppression of §2.7.7 and §2.7.10).
//!
//! [`DriverQueue`] keeps a private shadow of everything it writes (free list,
//! chain links, available ring, per-chain records), so it never reads back
//! what the device could have changed, and it checks every used element: a
//! device that breaks the rules marks the queue broken, as Linux
//! `virtio_ring` does, and later calls fail fast. It does not map buffers for
//! DMA, notify the device or wait for interrupts: the caller does.

use core::fmt;

use super::fields::{self, RingField};
use super::layout::{
    AvailFlags, DescFlags, Descriptor, MAX_QUEUE_SIZE, QueueLayout, QueueSize, UsedElem, UsedFlags,
    vring_need_event,
};
use crate::memory::{self, GuestAddress, GuestMemory, MemoryError};

/// Identifies one chain the driver has added and not yet taken back: the
/// index of its head descriptor (§2.7.13.2), which the device returns as the
/// `id` of its used element (§2.7.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(u16);

impl Token {
    /// The index of the chain's head descriptor (§2.7.13.2).
    #[inline]
    pub fn head(self) -> u16 {
        self.0
    }
}

/// A completion taken from the used ring (§2.7.14): which chain, and how many
/// bytes the device wrote into its device-writable buffers (§2.7.8), already
/// checked not to exceed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Used {
    /// The chain that completed.
    pub token: Token,
    /// Bytes written, from the start of the first device-writable buffer.
    pub len: u32,
}

/// Guest memory the driver owns for indirect descriptor tables (§2.7.5.3,
/// `VIRTIO_F_INDIRECT_DESC`): one slot of `per_chain` descriptors per head
/// index, slot `h` at `base + h * per_chain * 16`. Since a head index is used
/// by one chain at a time, slots never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndirectArea {
    base: GuestAddress,
    per_chain: u16,
}

impl IndirectArea {
    /// The alignment of an indirect table: that of a descriptor table (§2.7).
    pub const ALIGN: u64 = 16;

    /// Checks that `base` is 16-byte aligned, that a slot holds at least one
    /// descriptor, and that the slots of the largest queue (32768, §2.7) do
    /// not wrap the address space (§2.7.5.3).
    pub fn new(base: GuestAddress, per_chain: u16) -> Result<Self, DriverError> {
        let bad = DriverError::BadIndirectArea { base, per_chain };
        if !base.0.is_multiple_of(Self::ALIGN) || per_chain == 0 {
            return Err(bad);
        }
        // 32768 * 65535 * 16 < 2^35: the product cannot overflow, and it is
        // at least 16. The last byte must be addressable.
        let len = u64::from(MAX_QUEUE_SIZE) * u64::from(per_chain) * Descriptor::SIZE;
        base.checked_add(len - 1).ok_or(bad)?;
        Ok(IndirectArea { base, per_chain })
    }

    /// The guest address of the first slot.
    #[inline]
    pub fn base(&self) -> GuestAddress {
        self.base
    }

    /// The most descriptors one indirect table (one slot) holds.
    #[inline]
    pub fn per_chain(&self) -> u16 {
        self.per_chain
    }

    /// Bytes the area needs for a queue of `size` (one slot per descriptor
    /// index, §2.7.5.3).
    #[inline]
    pub fn area_len(&self, size: QueueSize) -> u64 {
        u64::from(size.get()) * u64::from(self.per_chain) * Descriptor::SIZE
    }

    /// The address of the table for the chain whose head is `head`, or `None`
    /// if the slot would not fit below the top of the address space (never
    /// for `head` below 32768).
    #[inline]
    pub fn slot(&self, head: u16) -> Option<GuestAddress> {
        let slot_len = u64::from(self.per_chain) * Descriptor::SIZE;
        let at = self.base.checked_add(u64::from(head) * slot_len)?;
        at.checked_add(slot_len - 1)?;
        Some(at)
    }
}

/// Why a [`DriverQueue`] operation failed.
///
/// The variants from [`UsedIdOutOfRange`](DriverError::UsedIdOutOfRange) on
/// are device misbehaviour (§2.7.8, §2.7.14): they mark the queue broken, and
/// every later call returns [`Broken`](DriverError::Broken) until
/// [`DriverQueue::init`]. The others are the caller's or the memory's doing
/// and change nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The device broke the split-ring rules earlier; the queue is unusable
    /// until it is reset and initialised again.
    Broken,
    /// The layout's queue size is larger than the driver's shadow capacity.
    LayoutTooLarge {
        /// The queue size of the layout.
        size: u16,
        /// The capacity `N` of the [`DriverQueue`].
        capacity: usize,
    },
    /// An indirect area that is misaligned, has empty slots, or wraps the
    /// address space (§2.7.5.3).
    BadIndirectArea {
        /// Its base address.
        base: GuestAddress,
        /// Descriptors per slot.
        per_chain: u16,
    },
    /// A chain needs at least one buffer (§2.7.13.1).
    NoBuffers,
    /// A buffer of length zero (refused: it describes no memory, and devices
    /// commonly reject it).
    EmptyBuffer {
        /// Its position in the chain, device-readable buffers first.
        index: usize,
    },
    /// More buffers than the queue size: no chain may be longer (§2.7.5.3.1).
    TooManyBuffers {
        /// The number of buffers asked for.
        count: usize,
        /// The queue size.
        size: u16,
    },
    /// The buffers add up to more than 2^32 bytes (§2.7.5.2).
    ChainTooLong {
        /// The total length in bytes.
        bytes: u64,
    },
    /// Not enough free descriptors; take completions with
    /// [`DriverQueue::pop_used`] first.
    QueueFull {
        /// Descriptors the chain needs.
        needed: u16,
        /// Descriptors free.
        free: u16,
    },
    /// Guest memory refused an access to the rings or the indirect area.
    Memory(MemoryError),
    /// The device returned a used `id` that is not a descriptor index
    /// (§2.7.8).
    UsedIdOutOfRange {
        /// The id as the device wrote it.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// The device returned a used `id` that is not the head of a chain the
    /// driver made available: never added, not yet published, or a
    /// descriptor in the middle of a chain (§2.7.8).
    UsedIdNotInFlight {
        /// The id.
        id: u16,
    },
    /// The device returned the same chain a second time (§2.7.8).
    UsedIdTwice {
        /// The id.
        id: u16,
    },
    /// The device claims to have written more bytes than the chain's
    /// device-writable buffers hold (§2.7.8.2).
    UsedLenTooLarge {
        /// The id of the chain.
        id: u16,
        /// The length the device wrote in the used element.
        len: u32,
        /// The chain's device-writable bytes.
        writable: u32,
    },
    /// The used `idx` moved past more entries than there are chains
    /// available to the device, or went backwards (§2.7.8, §2.7.14).
    UsedIdxJump {
        /// The driver's count of used entries taken so far.
        last_used: u16,
        /// The used `idx` the device wrote.
        used_idx: u16,
        /// Chains published and not yet taken back.
        available: u16,
    },
}

impl DriverError {
    /// Whether the error is the device's misbehaviour, which breaks the
    /// queue (§2.7.8, §2.7.14).
    pub fn is_device_fault(&self) -> bool {
        matches!(
            self,
            DriverError::UsedIdOutOfRange { .. }
                | DriverError::UsedIdNotInFlight { .. }
                | DriverError::UsedIdTwice { .. }
                | DriverError::UsedLenTooLarge { .. }
                | DriverError::UsedIdxJump { .. }
        )
    }
}

impl From<MemoryError> for DriverError {
    fn from(err: MemoryError) -> Self {
        DriverError::Memory(err)
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DriverError::Broken => {
                f.write_str("virtqueue is broken: the device broke the split-ring rules earlier")
            }
            DriverError::LayoutTooLarge { size, capacity } => write!(
                f,
                "queue size {size} exceeds the driver queue's capacity {capacity}"
            ),
            DriverError::BadIndirectArea { base, per_chain } => write!(
                f,
                "indirect area at {base} with {per_chain} descriptors per chain must be \
                 16-byte aligned, non-empty and must not wrap (§2.7.5.3)"
            ),
            DriverError::NoBuffers => {
                f.write_str("a descriptor chain needs at least one buffer (§2.7.13.1)")
            }
            DriverError::EmptyBuffer { index } => write!(f, "buffer {index} has length 0"),
            DriverError::TooManyBuffers { count, size } => write!(
                f,
                "{count} buffers exceed the queue size {size} (§2.7.5.3.1)"
            ),
            DriverError::ChainTooLong { bytes } => write!(
                f,
                "descriptor chain of {bytes:#x} bytes exceeds 2^32 bytes (§2.7.5.2)"
            ),
            DriverError::QueueFull { needed, free } => write!(
                f,
                "queue full: {needed} descriptors needed, {free} free (§2.7.13.1)"
            ),
            DriverError::Memory(err) => write!(f, "guest memory: {err}"),
            DriverError::UsedIdOutOfRange { id, size } => write!(
                f,
                "device returned used id {id}, outside a queue of size {size} (§2.7.8)"
            ),
            DriverError::UsedIdNotInFlight { id } => write!(
                f,
                "device returned used id {id}, which is not the head of an available chain (§2.7.8)"
            ),
            DriverError::UsedIdTwice { id } => {
                write!(f, "device returned used id {id} a second time (§2.7.8)")
            }
            DriverError::UsedLenTooLarge { id, len, writable } => write!(
                f,
                "device reports {len} bytes written to chain {id}, which has {writable} \
                 device-writable bytes (§2.7.8.2)"
            ),
            DriverError::UsedIdxJump {
                last_used,
                used_idx,
                available,
            } => write!(
                f,
                "used idx moved from {last_used} to {used_idx} with only {available} chains \
                 available (§2.7.14)"
            ),
        }
    }
}

impl core::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DriverError::Memory(err) => Some(err),
            _ => None,
        }
    }
}

/// Where a descriptor index stands, as the driver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadState {
    /// Free, or in the middle of a chain: not a head the device may return.
    Idle,
    /// The head of a chain written to the ring but not yet published.
    Added,
    /// The head of a published chain the device may return.
    Available,
    /// The head of a chain already returned (free again until reused).
    Completed,
}

/// The driver's record of a chain, kept under its head index.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Device-writable bytes (2^32 is recorded as `u32::MAX`: every `len`
    /// fits).
    writable: u32,
    /// Descriptors the chain takes from the descriptor table.
    descs: u16,
    state: HeadState,
}

impl InFlight {
    const IDLE: InFlight = InFlight {
        writable: 0,
        descs: 0,
        state: HeadState::Idle,
    };
}

/// The driver's side of one split virtqueue (§2.7): adds chains of buffers,
/// publishes them, decides when to notify the device, and takes completions
/// back, checking each one.
///
/// `N` is the capacity of the private shadow state; the layout's queue size
/// must not exceed it. The shadow takes about 12 bytes per entry, so
/// `N = 32768` is some 384 KiB: place a large queue in a `static` or on the
/// heap rather than on a small stack.
///
/// Call [`init`](Self::init) before handing the rings to the device (and
/// again after a device or queue reset).
pub struct DriverQueue<const N: usize> {
    layout: QueueLayout,
    event_idx: bool,
    indirect: Option<IndirectArea>,
    /// Shadow of each descriptor's `next`: chain links and the free list.
    next: [u16; N],
    /// Per-head record of chains.
    heads: [InFlight; N],
    /// Shadow of the available ring's entries.
    ring: [u16; N],
    free_head: u16,
    num_free: u16,
    /// Chains added and not yet taken back.
    in_flight: u16,
    /// Chains published and not yet taken back.
    available: u16,
    /// The next available-ring index to fill.
    avail_idx: u16,
    /// The available `idx` as last stored.
    published: u16,
    /// The available `idx` at the last notification decision.
    kicked: u16,
    /// Chains published since the last decision (saturating).
    unkicked: u32,
    /// Used entries taken back so far (free-running).
    last_used: u16,
    /// Shadow of the available ring's `flags`.
    avail_flags: AvailFlags,
    broken: bool,
    /// Used elements with a non-zero `len` for a chain without
    /// device-writable bytes, taken as 0 (see [`DriverQueue::pop_used`]).
    ignored_lens: u32,
}

impl<const N: usize> fmt::Debug for DriverQueue<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverQueue")
            .field("layout", &self.layout)
            .field("event_idx", &self.event_idx)
            .field("indirect", &self.indirect)
            .field("num_free", &self.num_free)
            .field("in_flight", &self.in_flight)
            .field("available", &self.available)
            .field("avail_idx", &self.avail_idx)
            .field("published", &self.published)
            .field("last_used", &self.last_used)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> DriverQueue<N> {
    /// A driver queue over `layout`, with `VIRTIO_F_EVENT_IDX` (§2.7.7,
    /// §2.7.10) if `event_idx`, and with indirect descriptors (§2.7.5.3) in
    /// `indirect` if given (only when `VIRTIO_F_INDIRECT_DESC` was
    /// negotiated). Touches no memory; call [`init`](Self::init) next.
    pub fn new(
        layout: QueueLayout,
        event_idx: bool,
        indirect: Option<IndirectArea>,
    ) -> Result<Self, DriverError> {
        let size = layout.size().get();
        if usize::from(size) > N {
            return Err(DriverError::LayoutTooLarge { size, capacity: N });
        }
        let mut q = DriverQueue {
            layout,
            event_idx,
            indirect,
            next: [0; N],
            heads: [InFlight::IDLE; N],
            ring: [0; N],
            free_head: 0,
            num_free: 0,
            in_flight: 0,
            available: 0,
            avail_idx: 0,
            published: 0,
            kicked: 0,
            unkicked: 0,
            last_used: 0,
            avail_flags: AvailFlags::empty(),
            broken: false,
            ignored_lens: 0,
        };
        q.reset_shadow();
        Ok(q)
    }

    /// Forgets every chain: all descriptors free, indices at zero, not
    /// broken.
    fn reset_shadow(&mut self) {
        let size = usize::from(self.layout.size().get());
        for (i, link) in self.next.iter_mut().take(size).enumerate() {
            // i < size <= 32768, so i + 1 fits.
            *link = (i + 1) as u16;
        }
        self.heads.fill(InFlight::IDLE);
        self.free_head = 0;
        self.num_free = self.layout.size().get();
        self.in_flight = 0;
        self.available = 0;
        self.avail_idx = 0;
        self.published = 0;
        self.kicked = 0;
        self.unkicked = 0;
        self.last_used = 0;
        self.avail_flags = AvailFlags::empty();
        self.broken = false;
    }

    /// Initialises the rings as the driver must before the device uses them
    /// (§2.7, §2.7.10.1): zeroes the descriptor table, the available ring
    /// (`flags`, `idx`, entries, `used_event`) and the used ring (`flags`,
    /// `idx`, elements, `avail_event`), which leaves interrupts enabled. It
    /// also resets the driver's own state, clearing a broken queue: call it
    /// only while the device does not use the queue (before `DRIVER_OK`, or
    /// after a reset).
    pub fn init<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<(), DriverError> {
        self.reset_shadow();
        let l = self.layout;
        let size = l.size();
        zero(mem, l.desc_table(), QueueLayout::desc_table_len(size))?;
        zero(mem, l.avail_ring(), QueueLayout::avail_ring_len(size))?;
        zero(mem, l.used_ring(), QueueLayout::used_ring_len(size))?;
        memory::fence();
        Ok(())
    }

    /// Adds one chain (§2.7.13.1, §2.7.13.2): the `readable` buffers, then
    /// the `writable` ones (§2.7.4.2), each an address and a non-zero length.
    ///
    /// The descriptors and the available-ring entry are written, but the
    /// chain is not visible to the device until [`publish`](Self::publish).
    /// With an [`IndirectArea`], a chain of two or more buffers that fits a
    /// slot takes one descriptor of the ring, pointing at the head's slot
    /// (§2.7.5.3); otherwise each buffer takes one descriptor. On error
    /// nothing is added (memory may hold unpublished bytes).
    #[inline]
    pub fn add<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
    ) -> Result<Token, DriverError> {
        self.check_broken()?;
        let size = self.layout.size().get();
        let count = readable.len() + writable.len();
        if count == 0 {
            return Err(DriverError::NoBuffers);
        }
        if count > usize::from(size) {
            return Err(DriverError::TooManyBuffers { count, size });
        }
        // count <= size <= 32768.
        let count16 = count as u16;
        let mut total: u64 = 0;
        for (index, &(_, len)) in readable.iter().chain(writable).enumerate() {
            if len == 0 {
                return Err(DriverError::EmptyBuffer { index });
            }
            // At most 32768 lengths below 2^32: no overflow.
            total += u64::from(len);
        }
        if total > 1 << 32 {
            return Err(DriverError::ChainTooLong { bytes: total });
        }
        let writable_bytes: u64 = writable.iter().map(|&(_, len)| u64::from(len)).sum();
        let writable_bytes = u32::try_from(writable_bytes).unwrap_or(u32::MAX);

        let indirect = match self.indirect {
            Some(area) if count > 1 && count <= usize::from(area.per_chain) => Some(area),
            _ => None,
        };
        let needed = if indirect.is_some() { 1 } else { count16 };
        if needed > self.num_free {
            return Err(DriverError::QueueFull {
                needed,
                free: self.num_free,
            });
        }

        let head = self.free_head;
        let buffers = readable
            .iter()
            .map(|&(addr, len)| (addr, len, DescFlags::empty()))
            .chain(
                writable
                    .iter()
                    .map(|&(addr, len)| (addr, len, DescFlags::WRITE)),
            );
        // Every index below comes from the free list, which holds only
        // indices below the queue size (<= N).
        let rest = match indirect {
            Some(area) => {
                let table = area.slot(head).ok_or(MemoryError::Overflow {
                    addr: area.base,
                    len: area.area_len(self.layout.size()),
                })?;
                for (j, (addr, len, flags)) in buffers.enumerate() {
                    // j < count <= 32768.
                    let j = j as u16;
                    let desc = if j + 1 == count16 {
                        Descriptor::new(addr, len, flags, 0)
                    } else {
                        Descriptor::new(addr, len, flags | DescFlags::NEXT, j + 1)
                    };
                    // `IndirectArea::new` checked that the slots of 32768
                    // heads do not wrap; head < 32768 and j < per_chain.
                    let at = GuestAddress(table.0 + u64::from(j) * Descriptor::SIZE);
                    mem.write_obj(at, &desc)?;
                }
                let table_len = u32::from(count16) * Descriptor::SIZE as u32;
                mem.write_obj(
                    self.layout.desc(head),
                    &Descriptor::new(table, table_len, DescFlags::INDIRECT, 0),
                )?;
                self.next[usize::from(head)]
            }
            None => {
                let mut d = head;
                for (j, (addr, len, flags)) in buffers.enumerate() {
                    let link = self.next[usize::from(d)];
                    let desc = if j + 1 == count {
                        Descriptor::new(addr, len, flags, 0)
                    } else {
                        Descriptor::new(addr, len, flags | DescFlags::NEXT, link)
                    };
                    mem.write_obj(self.layout.desc(d), &desc)?;
                    if d != head {
                        // A free descriptor becomes the middle of a chain;
                        // marking it early is harmless if a later write fails.
                        self.heads[usize::from(d)] = InFlight::IDLE;
                    }
                    d = link;
                }
                d
            }
        };
        mem.write_u16(self.layout.avail_slot(self.avail_idx), head)?;

        // Every write succeeded: commit.
        self.free_head = rest;
        self.num_free -= needed;
        self.heads[usize::from(head)] = InFlight {
            writable: writable_bytes,
            descs: needed,
            state: HeadState::Added,
        };
        self.ring[usize::from(self.layout.size().wrap(self.avail_idx))] = head;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.in_flight += 1;
        Ok(Token(head))
    }

    /// Makes every chain added since the last call visible to the device: a
    /// release store of the available `idx` (§2.7.13.3), ordered after the
    /// descriptor and ring writes (§2.7.13.3.1). Does nothing if nothing was
    /// added.
    #[inline]
    pub fn publish<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<(), DriverError> {
        self.check_broken()?;
        if self.avail_idx == self.published {
            return Ok(());
        }
        fields::store(mem, &self.layout, RingField::AvailIdx, self.avail_idx)?;
        let mut pos = self.published;
        while pos != self.avail_idx {
            let head = self.ring[usize::from(self.layout.size().wrap(pos))];
            self.heads[usize::from(head)].state = HeadState::Available;
            pos = pos.wrapping_add(1);
        }
        let added = self.avail_idx.wrapping_sub(self.published);
        self.available += added;
        self.unkicked = self.unkicked.saturating_add(u32::from(added));
        self.published = self.avail_idx;
        Ok(())
    }

    /// Whether the device wants an available buffer notification for the
    /// chains published since the last decision (§2.7.13.4, §2.7.10).
    ///
    /// A full fence orders the `idx` store before the read of the device's
    /// suppression field (§2.7.13.4.1). With `VIRTIO_F_EVENT_IDX` the answer
    /// is `vring_need_event(avail_event, new, old)` over the indices published
    /// since the last decision (and `true` if that window outgrew 16 bits);
    /// without, it is whether `VIRTQ_USED_F_NO_NOTIFY` is clear. Every
    /// published chain is covered by exactly one decision; with nothing new
    /// the answer is `false`.
    #[inline]
    pub fn should_kick<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool, DriverError> {
        self.check_broken()?;
        if self.unkicked == 0 {
            return Ok(false);
        }
        memory::fence();
        let kick = if self.event_idx {
            let event = fields::load(mem, &self.layout, RingField::AvailEvent)?;
            self.unkicked > u32::from(u16::MAX)
                || vring_need_event(event, self.published, self.kicked)
        } else {
            let flags = fields::load(mem, &self.layout, RingField::UsedFlags)?;
            !UsedFlags::from_bits_truncate(flags).contains(UsedFlags::NO_NOTIFY)
        };
        self.kicked = self.published;
        self.unkicked = 0;
        Ok(kick)
    }

    /// Takes the next completion from the used ring, if any (§2.7.14).
    ///
    /// The used `idx` is loaded with acquire ordering before the element is
    /// read, and the element is read once. The id must be the head of a chain
    /// that was published and not yet returned, the length must fit the
    /// chain's device-writable bytes, and `idx` must not pass more entries
    /// than there are such chains; otherwise the queue is marked broken. The
    /// chain's descriptors go back to the free list.
    #[inline]
    pub fn pop_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<Used>, DriverError> {
        self.check_broken()?;
        let used_idx = fields::load(mem, &self.layout, RingField::UsedIdx)?;
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.available {
            return Err(self.fail(DriverError::UsedIdxJump {
                last_used: self.last_used,
                used_idx,
                available: self.available,
            }));
        }
        let elem: UsedElem = mem.read_obj(self.layout.used_slot(self.last_used))?;
        let (id, len) = (elem.id(), elem.len());
        let size = self.layout.size().get();
        let out_of_range = DriverError::UsedIdOutOfRange { id, size };
        let Ok(head) = u16::try_from(id) else {
            return Err(self.fail(out_of_range));
        };
        let Some(&rec) = self.heads.get(usize::from(head)).filter(|_| head < size) else {
            return Err(self.fail(out_of_range));
        };
        match rec.state {
            HeadState::Available => {}
            HeadState::Completed => return Err(self.fail(DriverError::UsedIdTwice { id: head })),
            HeadState::Idle | HeadState::Added => {
                return Err(self.fail(DriverError::UsedIdNotInFlight { id: head }));
            }
        }
        // A chain without device-writable bytes carries nothing back, so
        // its `len` means nothing: a device that reports one anyway (e.g.
        // rust-vmm's vhost-device-console 0.1 on the console's control
        // transmitq, where it echoes the readable length) breaks §2.7.8.2,
        // but the driver has no data to misread (§2.7.8.1: it assumes
        // nothing past `len` writable bytes, and there are none), so the
        // element is taken with length 0 and counted, as Linux takes it. A
        // length past a chain's writable bytes when there are some is an
        // error: the driver could not tell what was written.
        let len = if rec.writable == 0 && len != 0 {
            self.ignored_lens = self.ignored_lens.saturating_add(1);
            0
        } else {
            len
        };
        if len > rec.writable {
            return Err(self.fail(DriverError::UsedLenTooLarge {
                id: head,
                len,
                writable: rec.writable,
            }));
        }
        self.free_chain(head, rec);
        self.last_used = self.last_used.wrapping_add(1);
        self.available -= 1;
        self.in_flight -= 1;
        Ok(Some(Used {
            token: Token(head),
            len,
        }))
    }

    /// Used elements taken so far whose `len` was not 0 for a chain without
    /// device-writable bytes (taken as 0; a device bug, §2.7.8.2).
    pub fn ignored_used_lens(&self) -> u32 {
        self.ignored_lens
    }

    /// Returns a chain's descriptors to the free list, walking the shadow
    /// links (never the table in memory).
    #[inline]
    fn free_chain(&mut self, head: u16, rec: InFlight) {
        let mut last = head;
        for _ in 1..rec.descs {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += rec.descs;
        self.heads[usize::from(head)].state = HeadState::Completed;
    }

    /// Asks the device for used buffer notifications again (§2.7.7.1): with
    /// `VIRTIO_F_EVENT_IDX`, `used_event` is set to the next used index to
    /// come; without, `VIRTQ_AVAIL_F_NO_INTERRUPT` is cleared. A full fence
    /// follows, then the used index is read again: the result says whether
    /// completions are already pending (§2.7.14), for which no interrupt
    /// will come. The driver then takes them with [`pop_used`](Self::pop_used)
    /// and enables again; only an `Ok(false)` makes it safe to wait.
    pub fn enable_interrupts<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, DriverError> {
        self.check_broken()?;
        if self.event_idx {
            fields::store(mem, &self.layout, RingField::UsedEvent, self.last_used)?;
        } else {
            let flags = self.avail_flags.difference(AvailFlags::NO_INTERRUPT);
            fields::store(mem, &self.layout, RingField::AvailFlags, flags.bits())?;
            self.avail_flags = flags;
        }
        memory::fence();
        let used_idx = fields::load(mem, &self.layout, RingField::UsedIdx)?;
        Ok(used_idx != self.last_used)
    }

    /// Advises the device that used buffer notifications are not needed
    /// (§2.7.7.1): with `VIRTIO_F_EVENT_IDX` (where `flags` must stay 0),
    /// `used_event` is set one behind the next used index, the farthest the
    /// device can be from reaching it; without, `VIRTQ_AVAIL_F_NO_INTERRUPT`
    /// is set. Only a hint: the driver must still handle notifications.
    pub fn disable_interrupts<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), DriverError> {
        self.check_broken()?;
        if self.event_idx {
            let event = self.last_used.wrapping_sub(1);
            fields::store(mem, &self.layout, RingField::UsedEvent, event)?;
        } else {
            let flags = self.avail_flags.union(AvailFlags::NO_INTERRUPT);
            fields::store(mem, &self.layout, RingField::AvailFlags, flags.bits())?;
            self.avail_flags = flags;
        }
        Ok(())
    }

    /// Free descriptors in the descriptor table (§2.7.13.1).
    #[inline]
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains added and not yet taken back by [`pop_used`](Self::pop_used),
    /// published or not.
    #[inline]
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether the device broke the rules and the queue refuses further use
    /// until [`init`](Self::init) (§2.7.8, §2.7.14).
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The queue's layout (§2.7).
    #[inline]
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Whether `VIRTIO_F_EVENT_IDX` is in use (§2.7.7, §2.7.10).
    #[inline]
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The indirect area, if indirect descriptors are in use (§2.7.5.3).
    #[inline]
    pub fn indirect(&self) -> Option<IndirectArea> {
        self.indirect
    }

    #[inline]
    fn check_broken(&self) -> Result<(), DriverError> {
        if self.broken {
            Err(DriverError::Broken)
        } else {
            Ok(())
        }
    }

    /// Marks the queue broken and hands back the device fault.
    fn fail(&mut self, err: DriverError) -> DriverError {
        self.broken = true;
        err
    }
}

/// Writes `len` zero bytes at `addr`.
fn zero<M: GuestMemory + ?Sized>(mem: &M, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
    const CHUNK: [u8; 64] = [0; 64];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK.len() as u64);
        let at = addr
            .checked_add(done)
            .ok_or(MemoryError::Overflow { addr, len })?;
        // n <= 64.
        mem.write(at, &CHUNK[..n as usize])?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Region, RegionMemory};

    extern crate std;
    use std::format;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    /// Guest RAM: `[BASE, BASE + LEN)`.
    const BASE: u64 = 0x1000;
    const LEN: u64 = 0x10000;
    /// Queue A's descriptor table (rings follow at +0x1000, +0x2000).
    const QA: u64 = 0x1000;
    /// Queue B's descriptor table, for tests with two queues.
    const QB: u64 = 0x5000;
    /// Queue A's indirect area.
    const INDIRECT: u64 = 0x4000;
    /// Where the (never touched) data buffers are said to be.
    const DATA: u64 = 0x9000;

    fn g(a: u64) -> GuestAddress {
        GuestAddress(a)
    }

    /// Guest memory over a host buffer it owns.
    struct Guest {
        mem: RegionMemory<1>,
        _buf: Vec<u64>,
    }

    fn guest() -> Guest {
        let mut buf = vec![0u64; (LEN / 8) as usize];
        let mut mem = RegionMemory::new();
        // SAFETY: the buffer is LEN bytes long and lives as long as the
        // `Guest` that owns it (moving a `Vec` does not move its heap
        // allocation); it is accessed only through `mem` meanwhile.
        let region = unsafe { Region::new(g(BASE), buf.as_mut_ptr().cast(), LEN) };
        mem.add(region).unwrap();
        Guest { mem, _buf: buf }
    }

    fn layout_at(size: u32, desc: u64) -> QueueLayout {
        QueueLayout::new(
            QueueSize::new(size).unwrap(),
            g(desc),
            g(desc + 0x1000),
            g(desc + 0x2000),
        )
        .unwrap()
    }

    /// An initialised queue A of `size`, with indirect slots of `indirect`
    /// descriptors if given.
    fn queue<const N: usize, M: GuestMemory>(
        mem: &M,
        size: u32,
        event_idx: bool,
        indirect: Option<u16>,
    ) -> DriverQueue<N> {
        let area = indirect.map(|per| IndirectArea::new(g(INDIRECT), per).unwrap());
        let mut q = DriverQueue::new(layout_at(size, QA), event_idx, area).unwrap();
        q.init(mem).unwrap();
        q
    }

    /// The device, played by hand.
    struct Dev {
        layout: QueueLayout,
        next_avail: u16,
        used_idx: u16,
    }

    impl Dev {
        fn new(layout: QueueLayout) -> Self {
            Dev {
                layout,
                next_avail: 0,
                used_idx: 0,
            }
        }

        /// The heads published since the last call (§2.7.13.2).
        fn take_avail<M: GuestMemory>(&mut self, mem: &M) -> Vec<u16> {
            let idx = mem.load_u16_acquire(self.layout.avail_idx()).unwrap();
            let mut heads = Vec::new();
            while self.next_avail != idx {
                heads.push(
                    mem.read_u16(self.layout.avail_slot(self.next_avail))
                        .unwrap(),
                );
                self.next_avail = self.next_avail.wrapping_add(1);
            }
            heads
        }

        /// The chain at `head`, an indirect table resolved, checked to be
        /// well-formed (§2.7.5, §2.7.5.3.1, §2.7.4.2).
        fn chain<M: GuestMemory>(&self, mem: &M, head: u16) -> Vec<Descriptor> {
            let size = u32::from(self.layout.size().get());
            let first: Descriptor = mem.read_obj(self.layout.desc(head)).unwrap();
            let (table, n, mut i) = if first.flags().contains(DescFlags::INDIRECT) {
                assert!(!first.flags().contains(DescFlags::NEXT));
                assert_eq!(first.len() % 16, 0);
                (first.addr(), first.len() / 16, 0)
            } else {
                (self.layout.desc_table(), size, head)
            };
            let mut out = Vec::new();
            loop {
                assert!(u32::from(i) < n && out.len() < n as usize);
                let d: Descriptor = mem.read_obj(g(table.0 + 16 * u64::from(i))).unwrap();
                assert!(!d.flags().contains(DescFlags::INDIRECT));
                if let Some(prev) = out.last().map(Descriptor::is_write_only) {
                    assert!(!prev || d.is_write_only(), "readable after writable");
                }
                out.push(d);
                if !d.flags().contains(DescFlags::NEXT) {
                    return out;
                }
                i = d.next();
            }
        }

        /// Writes a used element without publishing it.
        fn push_used<M: GuestMemory>(&mut self, mem: &M, id: u32, len: u32) {
            mem.write_obj(
                self.layout.used_slot(self.used_idx),
                &UsedElem::new(id, len),
            )
            .unwrap();
            self.used_idx = self.used_idx.wrapping_add(1);
        }

        fn publish_used<M: GuestMemory>(&self, mem: &M) {
            mem.store_u16_release(self.layout.used_idx(), self.used_idx)
                .unwrap();
        }

        fn complete<M: GuestMemory>(&mut self, mem: &M, id: u32, len: u32) {
            self.push_used(mem, id, len);
            self.publish_used(mem);
        }
    }

    /// One buffer through the queue: add, publish, the device completes it,
    /// the driver takes it back.
    fn cycle<const N: usize, M: GuestMemory>(q: &mut DriverQueue<N>, dev: &mut Dev, mem: &M) {
        let t = q.add(mem, &[], &[(g(DATA), 8)]).unwrap();
        q.publish(mem).unwrap();
        assert_eq!(dev.take_avail(mem), vec![t.head()]);
        dev.complete(mem, t.head().into(), 8);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 8 })));
    }

    /// After a device fault: every call fails fast with `Broken`.
    fn assert_broken<const N: usize, M: GuestMemory>(q: &mut DriverQueue<N>, mem: &M) {
        assert!(q.is_broken());
        assert_eq!(q.pop_used(mem), Err(DriverError::Broken));
        assert_eq!(q.add(mem, &[(g(DATA), 4)], &[]), Err(DriverError::Broken));
        assert_eq!(q.publish(mem), Err(DriverError::Broken));
        assert_eq!(q.should_kick(mem), Err(DriverError::Broken));
        assert_eq!(q.enable_interrupts(mem), Err(DriverError::Broken));
        assert_eq!(q.disable_interrupts(mem), Err(DriverError::Broken));
    }

    /// A queue of 8 with one published chain of one readable (16 bytes) and
    /// two writable buffers (64 bytes in all), on descriptors 0, 1, 2.
    fn one_published<M: GuestMemory>(mem: &M) -> (DriverQueue<8>, Dev, Token) {
        let mut q = queue::<8, _>(mem, 8, false, None);
        let mut dev = Dev::new(q.layout());
        let t = q
            .add(
                mem,
                &[(g(DATA), 16)],
                &[(g(DATA + 0x100), 32), (g(DATA + 0x200), 32)],
            )
            .unwrap();
        q.publish(mem).unwrap();
        assert_eq!(dev.take_avail(mem), vec![t.head()]);
        (q, dev, t)
    }

    #[test]
    fn direct_chain_roundtrip_2_7_13_and_2_7_14() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        let mut dev = Dev::new(q.layout());
        let t = q
            .add(
                mem,
                &[(g(DATA), 16), (g(DATA + 0x100), 32)],
                &[(g(DATA + 0x200), 64)],
            )
            .unwrap();
        assert_eq!((q.num_free(), q.in_flight()), (5, 1));
        // §2.7.13.3: invisible until the index is published.
        assert!(dev.take_avail(mem).is_empty());
        q.publish(mem).unwrap();
        assert_eq!(dev.take_avail(mem), vec![t.head()]);
        let chain = dev.chain(mem, t.head());
        let got: Vec<_> = chain
            .iter()
            .map(|d| (d.addr(), d.len(), d.flags()))
            .collect();
        assert_eq!(
            got,
            vec![
                (g(DATA), 16, DescFlags::NEXT),
                (g(DATA + 0x100), 32, DescFlags::NEXT),
                (g(DATA + 0x200), 64, DescFlags::WRITE),
            ]
        );
        assert_eq!(chain[2].next(), 0, "the last descriptor links nowhere");
        assert_eq!(q.pop_used(mem), Ok(None));
        dev.complete(mem, t.head().into(), 64);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 64 })));
        assert_eq!(q.pop_used(mem), Ok(None));
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
        assert!(!q.is_broken());
    }

    #[test]
    fn publish_covers_every_add_since_the_last_publish_2_7_13_2() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        let mut dev = Dev::new(q.layout());
        let tokens: Vec<Token> = (0..3)
            .map(|i| q.add(mem, &[], &[(g(DATA + 0x100 * i), 8)]).unwrap())
            .collect();
        assert_eq!(mem.read_u16(q.layout().avail_idx()).unwrap(), 0);
        q.publish(mem).unwrap();
        assert_eq!(mem.read_u16(q.layout().avail_idx()).unwrap(), 3);
        let heads = dev.take_avail(mem);
        assert_eq!(heads, tokens.iter().map(|t| t.head()).collect::<Vec<_>>());
        // Publishing again with nothing new changes nothing.
        q.publish(mem).unwrap();
        assert_eq!(mem.read_u16(q.layout().avail_idx()).unwrap(), 3);
        // Out of order completion: used-ring order is what the driver sees.
        for t in tokens.iter().rev() {
            dev.push_used(mem, t.head().into(), 1);
        }
        dev.publish_used(mem);
        for t in tokens.iter().rev() {
            assert_eq!(q.pop_used(mem), Ok(Some(Used { token: *t, len: 1 })));
        }
        assert_eq!(q.pop_used(mem), Ok(None));
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn indirect_chain_takes_one_ring_descriptor_2_7_5_3() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, Some(4));
        let mut dev = Dev::new(q.layout());
        let t = q
            .add(
                mem,
                &[(g(DATA), 16)],
                &[(g(DATA + 0x100), 32), (g(DATA + 0x200), 8)],
            )
            .unwrap();
        assert_eq!(q.num_free(), 7, "one descriptor of the ring");
        q.publish(mem).unwrap();
        assert_eq!(dev.take_avail(mem), vec![t.head()]);
        let ring: Descriptor = mem.read_obj(q.layout().desc(t.head())).unwrap();
        assert_eq!(ring.flags(), DescFlags::INDIRECT);
        assert_eq!(ring.len(), 3 * 16);
        assert_eq!(
            ring.addr(),
            g(INDIRECT + u64::from(t.head()) * 4 * 16),
            "the head's slot"
        );
        let table: Vec<Descriptor> = (0..3)
            .map(|j| mem.read_obj(g(ring.addr().0 + 16 * j)).unwrap())
            .collect();
        let got: Vec<_> = table
            .iter()
            .map(|d| (d.addr(), d.len(), d.flags(), d.next()))
            .collect();
        assert_eq!(
            got,
            vec![
                (g(DATA), 16, DescFlags::NEXT, 1),
                (g(DATA + 0x100), 32, DescFlags::WRITE | DescFlags::NEXT, 2),
                (g(DATA + 0x200), 8, DescFlags::WRITE, 0),
            ]
        );
        assert_eq!(dev.chain(mem, t.head()), table);
        dev.complete(mem, t.head().into(), 40);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 40 })));
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
    }

    #[test]
    fn indirect_slots_of_a_full_ring_do_not_collide_2_7_5_3() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, Some(4));
        let mut dev = Dev::new(q.layout());
        // Eight chains of four buffers each on an eight-descriptor ring.
        let tokens: Vec<Token> = (0..8u64)
            .map(|i| {
                let a = DATA + 0x1000 * i;
                q.add(
                    mem,
                    &[(g(a), 1), (g(a + 1), 2)],
                    &[(g(a + 2), 3), (g(a + 3), 4)],
                )
                .unwrap()
            })
            .collect();
        assert_eq!(q.num_free(), 0);
        assert_eq!(
            q.add(mem, &[(g(DATA), 1)], &[]),
            Err(DriverError::QueueFull { needed: 1, free: 0 })
        );
        q.publish(mem).unwrap();
        assert_eq!(dev.take_avail(mem).len(), 8);
        for (i, t) in (0u64..).zip(&tokens) {
            let chain = dev.chain(mem, t.head());
            let addrs: Vec<u64> = chain.iter().map(|d| d.addr().0).collect();
            let a = DATA + 0x1000 * i;
            assert_eq!(addrs, vec![a, a + 1, a + 2, a + 3]);
        }
        for t in &tokens {
            dev.complete(mem, t.head().into(), 7);
            assert_eq!(q.pop_used(mem), Ok(Some(Used { token: *t, len: 7 })));
        }
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn indirect_is_used_only_for_chains_of_two_up_to_per_chain() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, Some(4));
        let mut dev = Dev::new(q.layout());
        let one = q.add(mem, &[(g(DATA), 8)], &[]).unwrap();
        assert_eq!(q.num_free(), 7);
        let five: Vec<_> = (0..5).map(|i| (g(DATA + 0x100 * i), 8)).collect();
        let long = q.add(mem, &five[..2], &five[2..]).unwrap();
        assert_eq!(q.num_free(), 2, "five buffers do not fit a slot of four");
        let two = q.add(mem, &[(g(DATA), 8)], &[(g(DATA + 8), 8)]).unwrap();
        assert_eq!(q.num_free(), 1);
        q.publish(mem).unwrap();
        dev.take_avail(mem);
        let flags = |t: Token| {
            mem.read_obj::<Descriptor>(q.layout().desc(t.head()))
                .unwrap()
                .flags()
        };
        assert!(!flags(one).contains(DescFlags::INDIRECT));
        assert!(!flags(long).contains(DescFlags::INDIRECT));
        assert_eq!(flags(two), DescFlags::INDIRECT);
        assert_eq!(dev.chain(mem, long.head()).len(), 5);
        for (t, len) in [(long, 24), (one, 0), (two, 8)] {
            dev.complete(mem, t.head().into(), len);
            assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len })));
        }
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn indirect_area_checks_alignment_and_overflow_2_7_5_3() {
        let ok = IndirectArea::new(g(0x4000), 4).unwrap();
        assert_eq!((ok.base(), ok.per_chain()), (g(0x4000), 4));
        assert_eq!(ok.slot(3), Some(g(0x4000 + 3 * 64)));
        assert_eq!(ok.area_len(QueueSize::new(8).unwrap()), 8 * 64);
        for (base, per_chain) in [
            (0x4008, 4),
            (0x4001, 4),
            (0x4000, 0),
            (0xffff_ffff_ffff_fff0, 1),
            (BIGGEST_AREA_TOP + 16, u16::MAX),
        ] {
            assert_eq!(
                IndirectArea::new(g(base), per_chain),
                Err(DriverError::BadIndirectArea {
                    base: g(base),
                    per_chain
                })
            );
        }
        // Slots for the largest queue that end exactly at the top: accepted,
        // and the last slot of the last head is addressable.
        let top = IndirectArea::new(g(BIGGEST_AREA_TOP), u16::MAX).unwrap();
        let last = top.slot(MAX_QUEUE_SIZE - 1).unwrap();
        assert_eq!(last.0 + (u64::from(u16::MAX) * 16 - 1), u64::MAX);
        assert_eq!(top.slot(MAX_QUEUE_SIZE), None);
        let small = u64::MAX - u64::from(MAX_QUEUE_SIZE) * 16 + 1;
        assert!(IndirectArea::new(g(small), 1).is_ok());
    }

    /// The lowest base at which slots of 65535 descriptors for 32768 heads
    /// end exactly at the top of the address space.
    const BIGGEST_AREA_TOP: u64 = u64::MAX - 32768 * 65535 * 16 + 1;

    #[test]
    fn new_refuses_a_layout_larger_than_the_shadow_capacity() {
        let err = DriverQueue::<4>::new(layout_at(8, QA), false, None).unwrap_err();
        assert_eq!(
            err,
            DriverError::LayoutTooLarge {
                size: 8,
                capacity: 4
            }
        );
        let q = DriverQueue::<16>::new(layout_at(8, QA), true, None).unwrap();
        assert_eq!((q.num_free(), q.in_flight(), q.event_idx()), (8, 0, true));
        assert_eq!(q.indirect(), None);
        assert!(format!("{q:?}").starts_with("DriverQueue"));
    }

    #[test]
    fn init_zeroes_exactly_the_three_areas_2_7_and_2_7_10_1() {
        let gm = guest();
        let mem = &gm.mem;
        mem.write(g(QA), &[0xff; 0x3000]).unwrap();
        let mut q = DriverQueue::<8>::new(layout_at(8, QA), true, None).unwrap();
        q.init(mem).unwrap();
        let l = q.layout();
        for (addr, len) in [
            (l.desc_table(), 128),
            (l.avail_ring(), 6 + 16),
            (l.used_ring(), 6 + 64),
        ] {
            let mut bytes = vec![0xaa; len];
            mem.read(addr, &mut bytes).unwrap();
            assert!(bytes.iter().all(|&b| b == 0), "area at {addr} not zeroed");
            let mut after = [0u8];
            mem.read(g(addr.0 + len as u64), &mut after).unwrap();
            assert_eq!(after, [0xff], "init wrote past the area at {addr}");
        }
        assert_eq!(mem.read_u16(l.used_flags()).unwrap(), 0, "§2.7.10.1");
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 0);
        assert_eq!(mem.read_u16(l.avail_event()).unwrap(), 0);
    }

    #[test]
    fn init_resets_the_driver_and_clears_a_broken_queue() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, _t) = one_published(mem);
        dev.complete(mem, 9, 0);
        assert!(q.pop_used(mem).is_err());
        assert_broken(&mut q, mem);
        // After a (device or queue) reset the driver initialises again.
        q.init(mem).unwrap();
        assert!(!q.is_broken());
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
        let mut dev = Dev::new(q.layout());
        cycle(&mut q, &mut dev, mem);
    }

    #[test]
    fn bad_buffer_lists_are_refused_without_breaking_2_7_13_1() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        let b = (g(DATA), 8);
        assert_eq!(q.add(mem, &[], &[]), Err(DriverError::NoBuffers));
        assert_eq!(
            q.add(mem, &[b], &[b, (g(DATA), 0)]),
            Err(DriverError::EmptyBuffer { index: 2 })
        );
        assert_eq!(
            q.add(mem, &[b; 5], &[b; 4]),
            Err(DriverError::TooManyBuffers { count: 9, size: 8 })
        );
        // §2.7.5.2: 2^32 bytes in total is the most a chain may have.
        let max = u32::MAX;
        assert_eq!(
            q.add(mem, &[(g(DATA), max)], &[(g(DATA), 2)]),
            Err(DriverError::ChainTooLong {
                bytes: (1 << 32) + 1
            })
        );
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
        assert!(!q.is_broken());
        let t = q.add(mem, &[(g(DATA), 1)], &[(g(DATA), max)]).unwrap();
        let full = q.add(mem, &[b; 3], &[b; 4]);
        assert_eq!(full, Err(DriverError::QueueFull { needed: 7, free: 6 }));
        assert!(!q.is_broken());
        q.publish(mem).unwrap();
        let mut dev = Dev::new(q.layout());
        dev.take_avail(mem);
        dev.complete(mem, t.head().into(), max);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: max })));
    }

    #[test]
    fn memory_error_in_add_adds_nothing() {
        let gm = guest();
        let mem = &gm.mem;
        // The indirect area lies outside guest memory.
        let area = IndirectArea::new(g(0x10_0000), 4).unwrap();
        let mut q = DriverQueue::<8>::new(layout_at(8, QA), false, Some(area)).unwrap();
        q.init(mem).unwrap();
        let err = q.add(mem, &[(g(DATA), 8)], &[(g(DATA), 8)]).unwrap_err();
        assert!(matches!(
            err,
            DriverError::Memory(MemoryError::OutOfBounds { .. })
        ));
        assert!(!err.is_device_fault());
        assert_eq!((q.num_free(), q.in_flight(), q.is_broken()), (8, 0, false));
        q.publish(mem).unwrap();
        assert_eq!(mem.read_u16(q.layout().avail_idx()).unwrap(), 0);
        // A direct chain gets the same head the failed one would have had.
        let mut dev = Dev::new(q.layout());
        cycle(&mut q, &mut dev, mem);
    }

    #[test]
    fn free_list_is_reused_across_16_bit_index_wraparound_2_7_13_3() {
        let gm = guest();
        let mem = &gm.mem;
        let rounds: u32 = if cfg!(miri) { 300 } else { 70_000 };
        let mut q = queue::<4, _>(mem, 4, false, None);
        let mut dev = Dev::new(q.layout());
        for i in 0..rounds {
            let n = 1 + (i % 3) as u64; // 1..=3 buffers, then one more chain
            let bufs: Vec<_> = (0..n).map(|k| (g(DATA + 0x100 * k), 8)).collect();
            let a = q.add(mem, &bufs[..1], &bufs[1..]).unwrap();
            let b = q.add(mem, &[], &[(g(DATA), 4)]).unwrap();
            q.publish(mem).unwrap();
            assert_eq!(dev.take_avail(mem), vec![a.head(), b.head()]);
            assert_eq!(dev.chain(mem, a.head()).len() as u64, n);
            let a_len = (n as u32 - 1) * 8;
            dev.complete(mem, b.head().into(), 4);
            dev.complete(mem, a.head().into(), a_len);
            assert_eq!(q.pop_used(mem), Ok(Some(Used { token: b, len: 4 })));
            assert_eq!(
                q.pop_used(mem),
                Ok(Some(Used {
                    token: a,
                    len: a_len
                }))
            );
            assert_eq!((q.num_free(), q.in_flight()), (4, 0));
        }
        // Two chains per round: both free-running indices wrapped (§2.7.13.3).
        let idx = (2 * rounds % 65536) as u16;
        assert_eq!(mem.read_u16(q.layout().avail_idx()).unwrap(), idx);
        assert_eq!(mem.read_u16(q.layout().used_idx()).unwrap(), idx);
    }

    /// A small deterministic generator (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn random_out_of_order_completions_lose_nothing() {
        let gm = guest();
        let mem = &gm.mem;
        let steps = if cfg!(miri) { 300 } else { 20_000 };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut q = queue::<8, _>(mem, 8, false, Some(3));
        let mut dev = Dev::new(q.layout());
        // (token, writable bytes, descriptors) of chains in flight.
        let mut flying: Vec<(Token, u32, u16)> = Vec::new();
        // Heads the device has seen and not completed.
        let mut seen: Vec<u16> = Vec::new();
        for _ in 0..steps {
            match rng.below(4) {
                0 | 1 => {
                    let n = 1 + rng.below(5) as usize;
                    let split = rng.below(n as u64 + 1) as usize;
                    let bufs: Vec<_> = (0..n)
                        .map(|k| (g(DATA + 0x100 * k as u64), 1 + rng.below(100) as u32))
                        .collect();
                    let descs = if (2..=3).contains(&n) { 1 } else { n as u16 };
                    let writable: u32 = bufs[split..].iter().map(|b| b.1).sum();
                    match q.add(mem, &bufs[..split], &bufs[split..]) {
                        Ok(t) => flying.push((t, writable, descs)),
                        Err(e) => assert_eq!(
                            e,
                            DriverError::QueueFull {
                                needed: descs,
                                free: q.num_free()
                            }
                        ),
                    }
                    if rng.below(2) == 0 {
                        q.publish(mem).unwrap();
                    }
                }
                2 => {
                    seen.extend(dev.take_avail(mem));
                    if !seen.is_empty() {
                        let head = seen.swap_remove(rng.below(seen.len() as u64) as usize);
                        let chain = dev.chain(mem, head);
                        let max: u32 = chain
                            .iter()
                            .filter(|d| d.is_write_only())
                            .map(Descriptor::len)
                            .sum();
                        let len = rng.below(u64::from(max) + 1) as u32;
                        dev.complete(mem, head.into(), len);
                    }
                }
                _ => {
                    while let Some(used) = q.pop_used(mem).unwrap() {
                        let pos = flying.iter().position(|f| f.0 == used.token).unwrap();
                        let (_, writable, _) = flying.swap_remove(pos);
                        assert!(used.len <= writable);
                    }
                }
            }
            let held: u16 = flying.iter().map(|f| f.2).sum();
            assert_eq!(q.num_free() + held, 8);
            assert_eq!(usize::from(q.in_flight()), flying.len());
        }
        // Drain.
        q.publish(mem).unwrap();
        seen.extend(dev.take_avail(mem));
        for head in seen {
            dev.complete(mem, head.into(), 0);
        }
        while q.pop_used(mem).unwrap().is_some() {}
        assert_eq!((q.num_free(), q.in_flight()), (8, 0));
        assert!(!q.is_broken());
    }

    #[test]
    fn device_writes_to_the_descriptor_table_do_not_reach_the_free_list() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        // A rogue device turns the table into a loop and garbage.
        for i in 0..8 {
            let junk = Descriptor::new(g(0xdead), 1, DescFlags::all(), i);
            mem.write_obj(q.layout().desc(i), &junk).unwrap();
        }
        dev.complete(mem, t.head().into(), 64);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 64 })));
        assert_eq!(q.num_free(), 8);
        // The next chains are built from the shadow, whole and loop-free.
        let bufs: Vec<_> = (0..8).map(|k| (g(DATA + 0x100 * k), 8)).collect();
        let u = q.add(mem, &bufs[..4], &bufs[4..]).unwrap();
        q.publish(mem).unwrap();
        dev.take_avail(mem);
        let chain = dev.chain(mem, u.head());
        assert_eq!(chain.len(), 8);
        assert_eq!(chain.iter().filter(|d| d.is_write_only()).count(), 4);
    }

    #[test]
    fn should_kick_without_event_idx_follows_no_notify_2_7_10() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        let mut dev = Dev::new(q.layout());
        let l = q.layout();
        assert_eq!(q.should_kick(mem), Ok(false), "nothing published");
        cycle(&mut q, &mut dev, mem);
        // avail_event is ignored without EVENT_IDX.
        mem.store_u16_release(l.avail_event(), 100).unwrap();
        assert_eq!(q.should_kick(mem), Ok(true));
        assert_eq!(q.should_kick(mem), Ok(false), "already decided");
        mem.store_u16_release(l.used_flags(), UsedFlags::NO_NOTIFY.bits())
            .unwrap();
        cycle(&mut q, &mut dev, mem);
        assert_eq!(q.should_kick(mem), Ok(false));
        mem.store_u16_release(l.used_flags(), 0).unwrap();
        cycle(&mut q, &mut dev, mem);
        assert_eq!(q.should_kick(mem), Ok(true));
    }

    #[test]
    fn should_kick_with_event_idx_checks_the_published_window_2_7_10() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, true, None);
        let mut dev = Dev::new(q.layout());
        let l = q.layout();
        let set_event = |v: u16| mem.store_u16_release(l.avail_event(), v).unwrap();
        // avail_event 0 after init: the first buffer (index 0) notifies.
        cycle(&mut q, &mut dev, mem);
        assert_eq!(q.should_kick(mem), Ok(true));
        // NO_NOTIFY is ignored with EVENT_IDX (§2.7.10).
        mem.store_u16_release(l.used_flags(), 1).unwrap();
        // The device wants a notification once entry 3 is written.
        set_event(3);
        cycle(&mut q, &mut dev, mem); // window [1, 2)
        assert_eq!(q.should_kick(mem), Ok(false));
        cycle(&mut q, &mut dev, mem); // window [2, 3)
        assert_eq!(q.should_kick(mem), Ok(false));
        cycle(&mut q, &mut dev, mem); // window [3, 4)
        assert_eq!(q.should_kick(mem), Ok(true));
        // Two publishes, one decision: window [4, 6) covers event 4.
        set_event(4);
        cycle(&mut q, &mut dev, mem);
        cycle(&mut q, &mut dev, mem);
        assert_eq!(q.should_kick(mem), Ok(true));
        // An event the driver already passed does not notify again.
        cycle(&mut q, &mut dev, mem); // window [6, 7)
        assert_eq!(q.should_kick(mem), Ok(false));
        assert_eq!(q.should_kick(mem), Ok(false), "nothing new");
    }

    #[test]
    fn should_kick_is_conservative_past_a_16_bit_window_2_7_10() {
        let gm = guest();
        let mem = &gm.mem;
        let rounds: u32 = if cfg!(miri) { 300 } else { 70_000 };
        let mut q = queue::<4, _>(mem, 4, true, None);
        let mut dev = Dev::new(q.layout());
        let l = q.layout();
        for _ in 0..rounds {
            cycle(&mut q, &mut dev, mem);
        }
        // An event outside the 16-bit view of the window [0, rounds).
        let new = (rounds % 65536) as u16;
        let event = new.wrapping_add(500);
        mem.store_u16_release(l.avail_event(), event).unwrap();
        let expected = rounds > 65535 || vring_need_event(event, new, 0);
        assert_eq!(q.should_kick(mem), Ok(expected));
        assert_eq!(expected, !cfg!(miri));
        // The window starts afresh.
        cycle(&mut q, &mut dev, mem);
        assert_eq!(q.should_kick(mem), Ok(false));
    }

    #[test]
    fn interrupt_suppression_without_event_idx_uses_flags_2_7_7() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        let l = q.layout();
        q.disable_interrupts(mem).unwrap();
        assert_eq!(
            mem.read_u16(l.avail_flags()).unwrap(),
            AvailFlags::NO_INTERRUPT.bits()
        );
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 0);
        assert!(!q.enable_interrupts(mem).unwrap(), "nothing pending");
        assert_eq!(mem.read_u16(l.avail_flags()).unwrap(), 0);
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 0);
    }

    #[test]
    fn interrupt_suppression_with_event_idx_uses_used_event_2_7_7() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, true, None);
        let mut dev = Dev::new(q.layout());
        let l = q.layout();
        // Nothing taken yet: one behind 0 is 65535.
        q.disable_interrupts(mem).unwrap();
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 65535);
        for _ in 0..3 {
            cycle(&mut q, &mut dev, mem);
        }
        assert!(!q.enable_interrupts(mem).unwrap(), "all taken");
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 3);
        q.disable_interrupts(mem).unwrap();
        assert_eq!(mem.read_u16(l.used_event()).unwrap(), 2);
        // §2.7.7.1: with EVENT_IDX the driver keeps flags at 0.
        assert_eq!(mem.read_u16(l.avail_flags()).unwrap(), 0);
    }

    #[test]
    fn used_id_out_of_range_breaks_the_queue_2_7_8() {
        for id in [8, 0x1_0000, u32::MAX] {
            let gm = guest();
            let mem = &gm.mem;
            let (mut q, mut dev, _t) = one_published(mem);
            dev.complete(mem, id, 0);
            let err = q.pop_used(mem).unwrap_err();
            assert_eq!(err, DriverError::UsedIdOutOfRange { id, size: 8 });
            assert!(err.is_device_fault());
            assert_broken(&mut q, mem);
        }
    }

    #[test]
    fn used_id_never_added_breaks_the_queue_2_7_8() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, _t) = one_published(mem);
        dev.complete(mem, 5, 0);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdNotInFlight { id: 5 })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn used_id_in_the_middle_of_a_chain_breaks_the_queue_2_7_8() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        assert_eq!(t.head(), 0);
        // Descriptor 1 is the chain's second buffer, not a head.
        dev.complete(mem, 1, 0);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdNotInFlight { id: 1 })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn used_id_of_an_unpublished_chain_breaks_the_queue_2_7_13_3() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, _t) = one_published(mem);
        // Added, its ring entry written, but the index not yet published.
        let u = q.add(mem, &[], &[(g(DATA), 8)]).unwrap();
        dev.complete(mem, u.head().into(), 0);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdNotInFlight { id: u.head() })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn second_completion_of_a_chain_breaks_the_queue_2_7_8() {
        // Returned again after the driver took it back, while another chain
        // keeps the used index plausible.
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        q.add(mem, &[(g(DATA), 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        dev.complete(mem, t.head().into(), 0);
        assert!(q.pop_used(mem).unwrap().is_some());
        dev.complete(mem, t.head().into(), 0);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdTwice { id: t.head() })
        );
        assert_broken(&mut q, mem);

        // With nothing else available, the index check catches it first.
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        dev.complete(mem, t.head().into(), 0);
        assert!(q.pop_used(mem).unwrap().is_some());
        dev.complete(mem, t.head().into(), 0);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdxJump {
                last_used: 1,
                used_idx: 2,
                available: 0
            })
        );
        assert_broken(&mut q, mem);

        // Twice in one batch, with another chain available to cover the index.
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        q.add(mem, &[(g(DATA), 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        dev.push_used(mem, t.head().into(), 0);
        dev.push_used(mem, t.head().into(), 0);
        dev.publish_used(mem);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 0 })));
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdTwice { id: t.head() })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn used_len_beyond_the_writable_bytes_breaks_the_queue_2_7_8_2() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        // 16 readable + 64 writable: 65 bytes cannot have been written.
        dev.complete(mem, t.head().into(), 65);
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedLenTooLarge {
                id: t.head(),
                len: 65,
                writable: 64
            })
        );
        assert_broken(&mut q, mem);
    }

    /// A chain with no writable buffer carries nothing back: a length the
    /// device reports anyway (a §2.7.8.2 violation seen in the wild) is
    /// taken as 0 and counted, and the queue goes on (§2.7.8.1: nothing
    /// past `len` writable bytes is assumed, and there are none).
    #[test]
    fn a_used_len_for_a_chain_without_writable_bytes_is_taken_as_0_2_7_8_1() {
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, Some(4));
        let mut dev = Dev::new(q.layout());
        let t = q.add(mem, &[(g(DATA), 8), (g(DATA), 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        dev.complete(mem, t.head().into(), 16);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 0 })));
        assert_eq!(q.ignored_used_lens(), 1);
        assert!(!q.is_broken());
        let t = q.add(mem, &[(g(DATA), 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        dev.complete(mem, t.head().into(), 0);
        assert_eq!(q.pop_used(mem), Ok(Some(Used { token: t, len: 0 })));
        assert_eq!(q.ignored_used_lens(), 1);
    }

    #[test]
    fn used_idx_jumping_past_the_available_chains_breaks_the_queue_2_7_14() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, _dev, t) = one_published(mem);
        // One chain available, two entries claimed (the second is garbage).
        mem.write_obj(q.layout().used_slot(0), &UsedElem::new(t.head().into(), 0))
            .unwrap();
        mem.store_u16_release(q.layout().used_idx(), 2).unwrap();
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdxJump {
                last_used: 0,
                used_idx: 2,
                available: 1
            })
        );
        assert_broken(&mut q, mem);

        // More than the queue size, with nothing available at all.
        let gm = guest();
        let mem = &gm.mem;
        let mut q = queue::<8, _>(mem, 8, false, None);
        mem.store_u16_release(q.layout().used_idx(), 9).unwrap();
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdxJump {
                last_used: 0,
                used_idx: 9,
                available: 0
            })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn used_idx_going_backwards_breaks_the_queue_2_7_14() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut q, mut dev, t) = one_published(mem);
        dev.complete(mem, t.head().into(), 64);
        assert!(q.pop_used(mem).unwrap().is_some());
        cycle(&mut q, &mut dev, mem);
        q.add(mem, &[(g(DATA), 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        mem.store_u16_release(q.layout().used_idx(), 1).unwrap();
        assert_eq!(
            q.pop_used(mem),
            Err(DriverError::UsedIdxJump {
                last_used: 2,
                used_idx: 1,
                available: 1
            })
        );
        assert_broken(&mut q, mem);
    }

    #[test]
    fn a_broken_queue_leaves_another_queue_on_the_same_memory_alone() {
        let gm = guest();
        let mem = &gm.mem;
        let (mut a, mut dev_a, _t) = one_published(mem);
        let mut b = DriverQueue::<8>::new(layout_at(8, QB), true, None).unwrap();
        b.init(mem).unwrap();
        let mut dev_b = Dev::new(b.layout());
        cycle(&mut b, &mut dev_b, mem);
        dev_a.complete(mem, 100, 0);
        assert!(a.pop_used(mem).unwrap_err().is_device_fault());
        assert_broken(&mut a, mem);
        for _ in 0..10 {
            cycle(&mut b, &mut dev_b, mem);
        }
        assert!(b.should_kick(mem).is_ok());
        assert!(!b.is_broken());
        assert_eq!((b.num_free(), b.in_flight()), (8, 0));
    }

    #[test]
    fn errors_name_their_section_and_chain_their_source() {
        use core::error::Error;
        let mem_err = MemoryError::OutOfBounds {
            addr: g(0x10),
            len: 2,
        };
        let e = DriverError::from(mem_err);
        assert_eq!(e, DriverError::Memory(mem_err));
        assert!(e.to_string().starts_with("guest memory: "));
        assert!(e.source().is_some());
        let len = DriverError::UsedLenTooLarge {
            id: 1,
            len: 9,
            writable: 8,
        };
        assert!(len.to_string().contains("§2.7.8.2"));
        assert!(len.source().is_none());
        assert!(!DriverError::Broken.is_device_fault());
        assert!(!DriverError::QueueFull { needed: 1, free: 0 }.is_device_fault());
        assert!(
            DriverError::ChainTooLong { bytes: 1 << 33 }
                .to_string()
                .contains("§2.7.5.2")
        );
    }
}
