//! The block device driver (spec §5.2): capacity and limits from the
//! configuration (§5.2.4), READ, WRITE, FLUSH, GET_ID, DISCARD and
//! WRITE_ZEROES requests (§5.2.6) with several in flight per queue, and
//! with `VIRTIO_BLK_F_MQ` several request queues.
//!
//! Each request is one chain: a device-readable header, the data (split
//! at `size_max` when negotiated), a device-writable status byte. Data is
//! copied through driver-owned DMA slots, so a request that times out can
//! never write into a caller's buffer later. Every completion is checked:
//! virtio-core refuses unknown ids and used lengths beyond the chain
//! (§2.7.8); here a status byte the device did not write (used length 0,
//! or a read shorter than its data), or a status other than OK, IOERR and
//! UNSUPP (§5.2.6), is a [`BlkError`]. Ranges beyond the capacity are left
//! to the device (§5.2.6.1 makes it fail them with IOERR), so a test can
//! check that it does. Not supported: SECURE_ERASE, zoned devices,
//! GET_LIFETIME, indirect descriptors.

use core::fmt;

use heapless::Vec;
use virtio_core::features::{BlkFeatures, DeviceType, TransportFeatures};
use virtio_core::memory::{GuestAddress, GuestMemory};
use virtio_core::mmio::InterruptStatus;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::split::layout::Descriptor;
use virtio_core::split::{
    DriverError as QueueError, DriverQueue, IndirectArea, QueueLayout, QueueSize,
};

use crate::error::Error;
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::queue::DmaMemory;
use crate::transport::{Completion, Transport};
use crate::wait::Wait;

/// Bytes of a sector: request offsets and lengths count in these
/// (§5.2.6), whatever `blk_size` says.
pub const SECTOR_SIZE: u32 = 512;

/// Descriptors per queue, at most (the device's `QueueNumMax` may lower
/// it).
pub const QUEUE_SIZE: usize = 128;

/// Requests in flight per queue, at most. Without indirect descriptors a
/// request takes at least three ring descriptors, so the depth is also
/// capped at a third of the queue size; with them (§2.7.5.3), one.
pub const MAX_DEPTH: usize = QUEUE_SIZE;

/// Request queues driven, at most (§5.2.2, `VIRTIO_BLK_F_MQ`).
pub const MAX_QUEUES: usize = 4;

/// Data segments per request, at most (the data is split at `size_max`
/// when negotiated, §5.2.4; `seg_max` may lower it).
pub const MAX_SEGMENTS: usize = 32;

pub use virtio_core::blk::{ID_LEN, config, req, status};

/// Bytes of the request header (`le32 type, le32 reserved, le64 sector`).
const HEADER_LEN: u32 = virtio_core::blk::HEADER_LEN as u32;
/// Per-slot bytes of header and status in the meta area.
const META_LEN: u64 = 32;
/// Descriptors in one request's indirect table for slots of `slot_size`
/// bytes split at `size_max`: header, data segments, status. A request
/// with more segments (a `size_max` below 512) goes without a table.
fn per_chain(slot_size: u32, size_max: Option<u32>) -> u16 {
    let seg = size_max
        .filter(|s| *s > 0)
        .unwrap_or(u32::MAX)
        .max(SECTOR_SIZE);
    let segments = slot_size.div_ceil(seg).clamp(1, MAX_SEGMENTS as u32);
    segments as u16 + 2
}
/// The most ranges one DISCARD carries here (1 KiB of segments).
const MAX_DISCARD_RANGES: usize = 64;
/// The status byte before the device writes it: no valid status.
const STATUS_UNSET: u8 = 0xff;
use virtio_core::blk::FLAG_UNMAP;

/// Features this driver can use (§5.2.3).
const SUPPORTED: BlkFeatures = BlkFeatures::SIZE_MAX
    .union(BlkFeatures::SEG_MAX)
    .union(BlkFeatures::RO)
    .union(BlkFeatures::BLK_SIZE)
    .union(BlkFeatures::FLUSH)
    .union(BlkFeatures::CONFIG_WCE)
    .union(BlkFeatures::MQ)
    .union(BlkFeatures::DISCARD)
    .union(BlkFeatures::WRITE_ZEROES);

/// Why a block request or the driver failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlkError {
    /// A transport, queue, memory or wait error.
    Driver(Error),
    /// The device completed the request with `VIRTIO_BLK_S_IOERR`
    /// (§5.2.6; e.g. a write to a read-only disk or a range beyond the
    /// capacity, §5.2.6.1).
    IoError,
    /// The device completed the request with `VIRTIO_BLK_S_UNSUPP`
    /// (§5.2.6).
    Unsupported,
    /// The device wrote a status that is not OK, IOERR or UNSUPP (§5.2.6).
    BadStatus {
        /// The byte.
        status: u8,
    },
    /// The device returned the chain without writing its status byte
    /// (used length 0, or a READ shorter than its data, §2.7.8, §5.2.6).
    StatusNotWritten {
        /// The used length.
        len: u32,
        /// The writable bytes of the chain (data + status).
        expected: u32,
    },
    /// The request needs a feature that was not negotiated (§5.2.3).
    NotNegotiated {
        /// The feature.
        feature: BlkFeatures,
    },
    /// A data length that is zero or not a multiple of 512 (§5.2.6).
    BadLength {
        /// The length.
        len: usize,
    },
    /// More data than a slot holds, or more segments than `seg_max`
    /// (§5.2.4).
    TooLarge {
        /// The length.
        len: usize,
        /// The most one request carries.
        max: usize,
    },
    /// No such request queue.
    NoSuchQueue {
        /// The index asked for.
        queue: u16,
    },
    /// Every slot of the queue is in flight: take completions first.
    Busy {
        /// The queue.
        queue: u16,
    },
    /// A token that is not (or no longer) a request of this driver.
    StaleToken,
    /// The queue the device offers is too small for one request (three
    /// descriptors, §2.7.5.3.1).
    QueueTooSmall {
        /// The queue.
        queue: u16,
        /// Its `QueueNumMax`.
        max: u16,
    },
    /// Driver options out of range (slot size not a multiple of 512, depth
    /// 0 or above [`MAX_DEPTH`]).
    BadOptions,
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlkError::Driver(e) => write!(f, "{e}"),
            BlkError::IoError => f.write_str("the device answered VIRTIO_BLK_S_IOERR (§5.2.6)"),
            BlkError::Unsupported => {
                f.write_str("the device answered VIRTIO_BLK_S_UNSUPP (§5.2.6)")
            }
            BlkError::BadStatus { status } => write!(
                f,
                "the device wrote status {status:#04x}, not OK, IOERR or UNSUPP (§5.2.6)"
            ),
            BlkError::StatusNotWritten { len, expected } => write!(
                f,
                "the device used the chain with length {len} of {expected}: status not written (§2.7.8, §5.2.6)"
            ),
            BlkError::NotNegotiated { feature } => {
                write!(f, "feature {feature:?} was not negotiated (§5.2.3)")
            }
            BlkError::BadLength { len } => {
                write!(f, "{len} bytes is not a non-zero multiple of 512 (§5.2.6)")
            }
            BlkError::TooLarge { len, max } => {
                write!(f, "{len} bytes exceed the {max} one request carries")
            }
            BlkError::NoSuchQueue { queue } => write!(f, "no request queue {queue}"),
            BlkError::Busy { queue } => write!(f, "queue {queue}: every request slot in flight"),
            BlkError::StaleToken => f.write_str("not a request in flight"),
            BlkError::QueueTooSmall { queue, max } => write!(
                f,
                "queue {queue} holds {max} descriptors, a request needs 3 (§2.7.5.3.1)"
            ),
            BlkError::BadOptions => f.write_str("bad driver options"),
        }
    }
}

impl core::error::Error for BlkError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BlkError::Driver(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for BlkError {
    fn from(e: Error) -> Self {
        BlkError::Driver(e)
    }
}

impl From<virtio_core::mmio::DriverError> for BlkError {
    fn from(e: virtio_core::mmio::DriverError) -> Self {
        BlkError::Driver(Error::Transport(e))
    }
}

impl BlkError {
    /// Whether the device broke a rule (see [`Error::is_device_fault`]);
    /// IOERR and UNSUPP are answers, not faults.
    pub fn is_device_fault(&self) -> bool {
        match self {
            BlkError::Driver(e) => e.is_device_fault(),
            BlkError::BadStatus { .. } | BlkError::StatusNotWritten { .. } => true,
            _ => false,
        }
    }
}

/// How to drive the block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkOptions {
    /// Polling or interrupt-driven completion.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// Request queues wanted (more than one needs `VIRTIO_BLK_F_MQ`);
    /// capped by `num_queues` and [`MAX_QUEUES`].
    pub queues: u16,
    /// Requests in flight per queue, 1..=[`MAX_DEPTH`] (fewer if the
    /// queue is small).
    pub depth: u16,
    /// Data bytes per request slot, a multiple of 512.
    pub slot_size: u32,
    /// Negotiate `VIRTIO_F_INDIRECT_DESC` when offered and put each
    /// request in an indirect table (§2.7.5.3), so that a request takes one
    /// ring descriptor and the depth is not capped at a third of the queue.
    pub indirect: bool,
    /// Features to leave out of the negotiation even when offered.
    pub refuse: BlkFeatures,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            completion: Completion::Polling,
            event_idx: true,
            queues: 1,
            depth: 8,
            slot_size: 4096,
            indirect: true,
            refuse: BlkFeatures::empty(),
        }
    }
}

impl BlkOptions {
    /// DMA pages one queue with these options takes at most: rings (two
    /// pages on a legacy device), header/status page(s), data slots, and
    /// the indirect tables when `indirect` is set.
    pub fn pages_per_queue(&self) -> usize {
        let depth = usize::from(self.depth);
        let indirect = if self.indirect {
            let per = usize::from(per_chain(self.slot_size, Some(SECTOR_SIZE)));
            (QUEUE_SIZE * per * Descriptor::SIZE as usize).div_ceil(PAGE_SIZE)
        } else {
            0
        };
        2 + (depth * META_LEN as usize).div_ceil(PAGE_SIZE)
            + (depth * self.slot_size as usize).div_ceil(PAGE_SIZE)
            + indirect
    }
}

/// The configuration (§5.2.4), with fields of features not negotiated as
/// `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment (`VIRTIO_BLK_F_SIZE_MAX`).
    pub size_max: Option<u32>,
    /// Most data segments per request (`VIRTIO_BLK_F_SEG_MAX`).
    pub seg_max: Option<u32>,
    /// Block size (`VIRTIO_BLK_F_BLK_SIZE`).
    pub blk_size: Option<u32>,
    /// Write-back cache on (`VIRTIO_BLK_F_CONFIG_WCE`).
    pub writeback: Option<bool>,
    /// Request queues offered (`VIRTIO_BLK_F_MQ`).
    pub num_queues: Option<u16>,
    /// `max_discard_sectors`, `max_discard_seg`,
    /// `discard_sector_alignment` (`VIRTIO_BLK_F_DISCARD`).
    pub discard: Option<(u32, u32, u32)>,
    /// `max_write_zeroes_sectors`, `max_write_zeroes_seg`,
    /// `write_zeroes_may_unmap` (`VIRTIO_BLK_F_WRITE_ZEROES`).
    pub write_zeroes: Option<(u32, u32, bool)>,
}

/// A request in flight: which queue and slot, and a generation so a
/// token outliving its request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    /// The request queue.
    pub queue: u16,
    slot: u16,
    generation: u32,
}

/// A completed request taken by [`Blk::poll_completion`] or
/// [`Blk::wait_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The request.
    pub token: Token,
    /// Its request type ([`req`]).
    pub kind: u32,
    /// Data bytes of the request.
    pub len: u32,
    /// The outcome: the device's status, or what it did wrong.
    pub result: Result<(), BlkError>,
}

/// What the device made of a request, kept small: a queue holds up to
/// [`MAX_DEPTH`] slots and the driver lives on a tiny guest's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    IoError,
    Unsupported,
    BadStatus(u8),
    /// The used length, short of data + status.
    NotWritten(u32),
}

impl Outcome {
    /// The result of a request of `kind` with `len` data bytes.
    fn result(self, kind: u32, len: u32) -> Result<(), BlkError> {
        match self {
            Outcome::Ok => Ok(()),
            Outcome::IoError => Err(BlkError::IoError),
            Outcome::Unsupported => Err(BlkError::Unsupported),
            Outcome::BadStatus(status) => Err(BlkError::BadStatus { status }),
            Outcome::NotWritten(used) => Err(BlkError::StatusNotWritten {
                len: used,
                expected: writable_len(kind, len),
            }),
        }
    }
}

/// Device-writable bytes of a request of `kind` with `len` data bytes:
/// the data of a READ or GET_ID, and the status byte (§5.2.6).
fn writable_len(kind: u32, len: u32) -> u32 {
    if matches!(kind, req::IN | req::GET_ID) {
        len.saturating_add(1)
    } else {
        1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Posted {
        head: u16,
    },
    Done {
        outcome: Outcome,
    },
    /// READ or GET_ID done: the data waits for `take_data`.
    Data,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    kind: u32,
    len: u32,
    generation: u32,
}

/// One request queue: rings, then `depth` header/status records, then
/// `depth` data slots, in one DMA allocation.
struct BlkQueue {
    index: u16,
    dma: Option<Dma>,
    mem: DmaMemory<1>,
    queue: DriverQueue<QUEUE_SIZE>,
    meta_base: u64,
    data_base: u64,
    slots: Vec<Slot, MAX_DEPTH>,
    head_slot: [u16; QUEUE_SIZE],
    interrupts: bool,
}

fn ring_bytes(modern: bool, size: QueueSize) -> u64 {
    let desc = QueueLayout::desc_table_len(size);
    let avail = QueueLayout::avail_ring_len(size);
    let used = QueueLayout::used_ring_len(size);
    let align = if modern { 4 } else { PAGE_SIZE as u64 };
    (desc + avail).next_multiple_of(align) + used
}

impl BlkQueue {
    fn new<H: Hal, R: RegisterAccess>(
        hal: &H,
        transport: &Transport<R>,
        index: u16,
        options: &BlkOptions,
        size_max: Option<u32>,
    ) -> Result<Self, BlkError> {
        let max = transport.driver().queue_max_size(index)?;
        let cap = max.min(QUEUE_SIZE as u16);
        if cap < 3 {
            return Err(BlkError::QueueTooSmall { queue: index, max });
        }
        let size = 1u16 << (15 - cap.leading_zeros());
        let layout_err = |err| BlkError::Driver(Error::Layout { queue: index, err });
        let qsize = QueueSize::new(u32::from(size)).map_err(layout_err)?;
        let indirect =
            options.indirect && transport.negotiated(TransportFeatures::RING_INDIRECT_DESC.bits());
        // A request is one ring descriptor with an indirect table, else at
        // least three (header, data, status).
        let per_request = if indirect { 1 } else { 3 };
        let depth = usize::from(options.depth).min(usize::from(size / per_request));
        let ring_pages = ring_bytes(transport.is_modern(), qsize).div_ceil(PAGE_SIZE as u64);
        let meta_pages = (depth as u64 * META_LEN).div_ceil(PAGE_SIZE as u64);
        let data_pages = (depth as u64 * u64::from(options.slot_size)).div_ceil(PAGE_SIZE as u64);
        let per = per_chain(options.slot_size, size_max);
        let indirect_pages = if indirect {
            (u64::from(size) * u64::from(per) * Descriptor::SIZE).div_ceil(PAGE_SIZE as u64)
        } else {
            0
        };
        let pages = usize::try_from(ring_pages + meta_pages + data_pages + indirect_pages)
            .unwrap_or(usize::MAX);
        let dma = hal.dma_alloc(pages).ok_or(Error::DmaExhausted { pages })?;
        let base = GuestAddress(dma.paddr());
        let mut mem = DmaMemory::new();
        // SAFETY: `dma` is kept in the queue and given back only by
        // `free`, which empties `mem` first.
        if let Err(err) = unsafe { mem.add(&dma) } {
            let paddr = dma.paddr();
            // SAFETY: the device was never told this memory's address.
            unsafe { hal.dma_dealloc(dma) };
            return Err(Error::DmaRegion { paddr, err }.into());
        }
        let layout = if transport.is_modern() {
            let avail = GuestAddress(base.0 + QueueLayout::desc_table_len(qsize));
            let used =
                GuestAddress((avail.0 + QueueLayout::avail_ring_len(qsize)).next_multiple_of(4));
            QueueLayout::new(qsize, base, avail, used)
        } else {
            transport.driver().legacy_layout(qsize, base)
        };
        let meta_base = base.0 + ring_pages * PAGE_SIZE as u64;
        let data_base = meta_base + meta_pages * PAGE_SIZE as u64;
        let area = if indirect {
            let at = GuestAddress(data_base + data_pages * PAGE_SIZE as u64);
            match IndirectArea::new(at, per) {
                Ok(a) => Some(a),
                Err(err) => {
                    // SAFETY: the device was never told this memory's address.
                    unsafe { hal.dma_dealloc(dma) };
                    return Err(BlkError::Driver(Error::Queue { queue: index, err }));
                }
            }
        } else {
            None
        };
        let queue = match layout.map_err(layout_err).and_then(|l| {
            DriverQueue::new(l, transport.event_idx(), area)
                .map_err(|err| BlkError::Driver(Error::Queue { queue: index, err }))
        }) {
            Ok(q) => q,
            Err(e) => {
                // SAFETY: the device was never told this memory's address.
                unsafe { hal.dma_dealloc(dma) };
                return Err(e);
            }
        };
        let mut slots = Vec::new();
        for _ in 0..depth {
            let _ = slots.push(Slot {
                state: SlotState::Free,
                kind: 0,
                len: 0,
                generation: 0,
            });
        }
        Ok(BlkQueue {
            index,
            dma: Some(dma),
            mem,
            queue,
            meta_base,
            data_base,
            slots,
            head_slot: [0; QUEUE_SIZE],
            interrupts: options.completion == Completion::Interrupt,
        })
    }

    fn qerr(&self, err: QueueError) -> BlkError {
        BlkError::Driver(Error::Queue {
            queue: self.index,
            err,
        })
    }

    fn merr(&self, err: virtio_core::memory::MemoryError) -> BlkError {
        BlkError::Driver(Error::Memory {
            queue: self.index,
            err,
        })
    }

    fn attach<R: RegisterAccess>(&mut self, transport: &Transport<R>) -> Result<(), BlkError> {
        self.queue.init(&self.mem).map_err(|e| self.qerr(e))?;
        for s in self.slots.iter_mut() {
            s.state = SlotState::Free;
        }
        transport
            .driver()
            .setup_queue(self.index, &self.queue.layout())?;
        if !self.interrupts {
            self.queue
                .disable_interrupts(&self.mem)
                .map_err(|e| self.qerr(e))?;
        }
        Ok(())
    }

    fn header_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.meta_base + u64::from(slot) * META_LEN)
    }

    fn status_addr(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.meta_base + u64::from(slot) * META_LEN + u64::from(HEADER_LEN))
    }

    fn data_addr(&self, slot: u16, slot_size: u32) -> GuestAddress {
        GuestAddress(self.data_base + u64::from(slot) * u64::from(slot_size))
    }

    fn free_slot(&self) -> Option<u16> {
        self.slots
            .iter()
            .position(|s| s.state == SlotState::Free)
            .map(|i| i as u16)
    }

    /// Takes every used chain into its slot's state.
    fn collect(&mut self) -> Result<(), BlkError> {
        while let Some(used) = self.queue.pop_used(&self.mem).map_err(|e| self.qerr(e))? {
            let head = used.token.head();
            let slot = self.head_slot.get(usize::from(head)).copied().unwrap_or(0);
            let Some(s) = self.slots.get(usize::from(slot)).copied() else {
                return Err(self.qerr(QueueError::UsedIdNotInFlight { id: head }));
            };
            if s.state != (SlotState::Posted { head }) {
                return Err(self.qerr(QueueError::UsedIdNotInFlight { id: head }));
            }
            let expected = writable_len(s.kind, s.len);
            let mut st = [STATUS_UNSET];
            self.mem
                .read(self.status_addr(slot), &mut st)
                .map_err(|e| self.merr(e))?;
            let outcome = match st[0] {
                _ if used.len == 0 => Outcome::NotWritten(used.len),
                status::OK if used.len < expected => Outcome::NotWritten(used.len),
                status::OK => Outcome::Ok,
                status::IOERR => Outcome::IoError,
                status::UNSUPP => Outcome::Unsupported,
                other => Outcome::BadStatus(other),
            };
            if let Some(s) = self.slots.get_mut(usize::from(slot)) {
                s.state = SlotState::Done { outcome };
            }
        }
        Ok(())
    }
}

/// A driver for a virtio block device (§5.2) on virtio-mmio.
pub struct Blk<H: Hal, R: RegisterAccess> {
    hal: H,
    transport: Transport<R>,
    queues: Vec<BlkQueue, MAX_QUEUES>,
    options: BlkOptions,
    features: u64,
    config: BlkConfig,
}

impl<H: Hal, R: RegisterAccess> fmt::Debug for Blk<H, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blk")
            .field("features", &self.features)
            .field("config", &self.config)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, R: RegisterAccess> Blk<H, R> {
    /// Probes `regs` for a block device and initialises it (§3.1.1,
    /// §5.2.5): features negotiated, configuration read, request queues
    /// set up with DMA memory from `hal`. On failure the device is left
    /// FAILED or reset, and the memory given back.
    pub fn new(hal: H, regs: R, options: BlkOptions) -> Result<Self, BlkError> {
        if options.depth == 0
            || usize::from(options.depth) > MAX_DEPTH
            || options.slot_size == 0
            || !options.slot_size.is_multiple_of(SECTOR_SIZE)
        {
            return Err(BlkError::BadOptions);
        }
        let transport = Transport::probe(regs, DeviceType::Blk)?;
        let mut blk = Blk {
            hal,
            transport,
            queues: Vec::new(),
            options,
            features: 0,
            config: BlkConfig::default(),
        };
        if let Err(e) = blk.init() {
            blk.transport.fail();
            return Err(e);
        }
        Ok(blk)
    }

    fn init(&mut self) -> Result<(), BlkError> {
        let wanted = self.wanted();
        self.features = self.transport.begin_init(wanted)?;
        self.config = self.read_config()?;
        let n = match self.config.num_queues {
            Some(n) => n
                .clamp(1, MAX_QUEUES as u16)
                .min(self.options.queues.max(1)),
            None => 1,
        };
        for i in 0..n {
            let q = BlkQueue::new(
                &self.hal,
                &self.transport,
                i,
                &self.options,
                self.config.size_max,
            )?;
            // n <= MAX_QUEUES. Kept before attaching, so that `drop` frees
            // it after the reset if attaching fails.
            let _ = self.queues.push(q);
            if let Some(q) = self.queues.last_mut() {
                q.attach(&self.transport)?;
            }
        }
        Ok(self.transport.finish_init()?)
    }

    /// The features to ask for (§3.1.1 step 4).
    fn wanted(&self) -> u64 {
        let mut wanted = SUPPORTED.difference(self.options.refuse).bits();
        if self.options.event_idx {
            wanted |= TransportFeatures::RING_EVENT_IDX.bits();
        }
        if self.options.indirect {
            wanted |= TransportFeatures::RING_INDIRECT_DESC.bits();
        }
        wanted
    }

    fn has(&self, f: BlkFeatures) -> bool {
        self.transport.negotiated(f.bits())
    }

    /// Reads the configuration (§5.2.4) under one generation per field.
    pub fn read_config(&self) -> Result<BlkConfig, BlkError> {
        let d = self.transport.driver();
        let opt32 = |f: BlkFeatures, off| -> Result<Option<u32>, BlkError> {
            Ok(if self.has(f) {
                Some(d.read_config_u32(off)?)
            } else {
                None
            })
        };
        Ok(BlkConfig {
            capacity: d.read_config_u64(config::CAPACITY)?,
            size_max: opt32(BlkFeatures::SIZE_MAX, config::SIZE_MAX)?,
            seg_max: opt32(BlkFeatures::SEG_MAX, config::SEG_MAX)?,
            blk_size: opt32(BlkFeatures::BLK_SIZE, config::BLK_SIZE)?,
            writeback: if self.has(BlkFeatures::CONFIG_WCE) {
                Some(d.read_config_u8(config::WRITEBACK)? != 0)
            } else {
                None
            },
            num_queues: if self.has(BlkFeatures::MQ) {
                Some(d.read_config_u16(config::NUM_QUEUES)?)
            } else {
                None
            },
            discard: if self.has(BlkFeatures::DISCARD) {
                Some((
                    d.read_config_u32(config::MAX_DISCARD_SECTORS)?,
                    d.read_config_u32(config::MAX_DISCARD_SEG)?,
                    d.read_config_u32(config::DISCARD_SECTOR_ALIGNMENT)?,
                ))
            } else {
                None
            },
            write_zeroes: if self.has(BlkFeatures::WRITE_ZEROES) {
                Some((
                    d.read_config_u32(config::MAX_WRITE_ZEROES_SECTORS)?,
                    d.read_config_u32(config::MAX_WRITE_ZEROES_SEG)?,
                    d.read_config_u8(config::WRITE_ZEROES_MAY_UNMAP)? != 0,
                ))
            } else {
                None
            },
        })
    }

    /// The configuration read at initialisation.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// Capacity in 512-byte sectors (§5.2.4).
    pub fn capacity(&self) -> u64 {
        self.config.capacity
    }

    /// Whether the device is read-only (`VIRTIO_BLK_F_RO`).
    pub fn read_only(&self) -> bool {
        self.has(BlkFeatures::RO)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport, for status and configuration.
    pub fn transport(&self) -> &Transport<R> {
        &self.transport
    }

    /// Request queues set up.
    pub fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Requests that may be in flight on each queue.
    pub fn depth(&self) -> u16 {
        self.queues.first().map_or(0, |q| q.slots.len() as u16)
    }

    /// The most data bytes one READ or WRITE carries: the slot size, and
    /// `size_max * seg_max` when both are negotiated, in whole sectors.
    pub fn max_request_bytes(&self) -> usize {
        let slot = self.options.slot_size as usize;
        // Without `size_max` the data is one segment, whatever `seg_max`.
        let limit = match self.config.size_max.filter(|s| *s > 0) {
            Some(size) => {
                let segs = self
                    .config
                    .seg_max
                    .map_or(MAX_SEGMENTS, |n| (n as usize).clamp(1, MAX_SEGMENTS));
                (size as usize).saturating_mul(segs)
            }
            None => slot,
        };
        let m = slot.min(limit);
        m - m % SECTOR_SIZE as usize
    }

    /// Requests in flight (submitted and not yet taken) on all queues.
    pub fn in_flight(&self) -> usize {
        self.queues
            .iter()
            .map(|q| {
                q.slots
                    .iter()
                    .filter(|s| s.state != SlotState::Free)
                    .count()
            })
            .sum()
    }

    /// Reads and acknowledges `InterruptStatus` (§4.2.3.4).
    pub fn on_interrupt(&self) -> InterruptStatus {
        self.transport.on_interrupt()
    }

    /// Resets the device (§2.4) and initialises it again with the same
    /// memory, forgetting requests in flight.
    pub fn reinit(&mut self) -> Result<(), BlkError> {
        self.transport.reset()?;
        let wanted = self.wanted();
        let features = self.transport.begin_init(wanted)?;
        if features != self.features {
            self.transport.fail();
            return Err(Error::FeaturesChanged {
                before: self.features,
                after: features,
            }
            .into());
        }
        for q in self.queues.iter_mut() {
            q.attach(&self.transport)?;
        }
        Ok(self.transport.finish_init()?)
    }

    fn queue_mut(&mut self, queue: u16) -> Result<&mut BlkQueue, BlkError> {
        self.queues
            .get_mut(usize::from(queue))
            .ok_or(BlkError::NoSuchQueue { queue })
    }

    /// Adds one request chain and notifies the device if it wants it.
    /// `out` is copied into the slot for device-readable data; `data_in`
    /// bytes of the slot are device-writable otherwise.
    fn submit(
        &mut self,
        queue: u16,
        kind: u32,
        sector: u64,
        out: Option<&[u8]>,
        data_in: u32,
    ) -> Result<Token, BlkError> {
        let slot_size = self.options.slot_size;
        let size_max = self.config.size_max.filter(|s| *s > 0);
        let transport = &self.transport;
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .ok_or(BlkError::NoSuchQueue { queue })?;
        let slot = q.free_slot().ok_or(BlkError::Busy { queue })?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        q.mem
            .write(q.header_addr(slot), &header)
            .map_err(|e| q.merr(e))?;
        q.mem
            .write(q.status_addr(slot), &[STATUS_UNSET])
            .map_err(|e| q.merr(e))?;
        let data = q.data_addr(slot, slot_size);
        let data_len = match out {
            Some(bytes) => {
                q.mem.write(data, bytes).map_err(|e| q.merr(e))?;
                bytes.len() as u32
            }
            None => data_in,
        };
        // Header, data segments (at most size_max each), status.
        let mut segs: Vec<(GuestAddress, u32), { MAX_SEGMENTS + 1 }> = Vec::new();
        let mut off = 0u32;
        while off < data_len {
            let n = (data_len - off).min(size_max.unwrap_or(u32::MAX));
            segs.push((GuestAddress(data.0 + u64::from(off)), n))
                .map_err(|_| BlkError::TooLarge {
                    len: data_len as usize,
                    max: MAX_SEGMENTS * size_max.unwrap_or(0) as usize,
                })?;
            off += n;
        }
        let header_seg = [(q.header_addr(slot), HEADER_LEN)];
        let status_seg = (q.status_addr(slot), 1u32);
        let token = if out.is_some() {
            let mut readable: Vec<(GuestAddress, u32), { MAX_SEGMENTS + 2 }> = Vec::new();
            let _ = readable.push(header_seg[0]);
            let _ = readable.extend_from_slice(&segs);
            q.queue.add(&q.mem, &readable, &[status_seg])
        } else {
            let _ = segs.push(status_seg);
            q.queue.add(&q.mem, &header_seg, &segs)
        }
        .map_err(|e| q.qerr(e))?;
        let head = token.head();
        if let Some(h) = q.head_slot.get_mut(usize::from(head)) {
            *h = slot;
        }
        let s = &mut q.slots[usize::from(slot)];
        s.state = SlotState::Posted { head };
        s.kind = kind;
        s.len = data_len;
        s.generation = s.generation.wrapping_add(1);
        let token = Token {
            queue,
            slot,
            generation: s.generation,
        };
        q.queue.publish(&q.mem).map_err(|e| q.qerr(e))?;
        if q.queue.should_kick(&q.mem).map_err(|e| q.qerr(e))? {
            transport.notify(queue);
        }
        Ok(token)
    }

    fn check_data(&self, len: usize) -> Result<(), BlkError> {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE as usize) {
            return Err(BlkError::BadLength { len });
        }
        let max = self.max_request_bytes();
        if len > max {
            return Err(BlkError::TooLarge { len, max });
        }
        Ok(())
    }

    fn need(&self, f: BlkFeatures) -> Result<(), BlkError> {
        if self.has(f) {
            Ok(())
        } else {
            Err(BlkError::NotNegotiated { feature: f })
        }
    }

    /// Submits a READ of `len` bytes at `sector` on `queue` (§5.2.6); the
    /// data is taken with [`take_data`](Self::take_data) once done.
    pub fn submit_read(&mut self, queue: u16, sector: u64, len: usize) -> Result<Token, BlkError> {
        self.check_data(len)?;
        self.submit(queue, req::IN, sector, None, len as u32)
    }

    /// Submits a WRITE of `data` at `sector` on `queue` (§5.2.6); `data`
    /// is copied into the request's slot.
    pub fn submit_write(
        &mut self,
        queue: u16,
        sector: u64,
        data: &[u8],
    ) -> Result<Token, BlkError> {
        self.check_data(data.len())?;
        self.submit(queue, req::OUT, sector, Some(data), 0)
    }

    /// Submits a FLUSH (§5.2.6, `VIRTIO_BLK_F_FLUSH`).
    pub fn submit_flush(&mut self, queue: u16) -> Result<Token, BlkError> {
        self.need(BlkFeatures::FLUSH)?;
        self.submit(queue, req::FLUSH, 0, None, 0)
    }

    /// Submits a GET_ID (§5.2.6): [`ID_LEN`] bytes, taken with
    /// [`take_data`](Self::take_data).
    pub fn submit_get_id(&mut self, queue: u16) -> Result<Token, BlkError> {
        self.submit(queue, req::GET_ID, 0, None, ID_LEN as u32)
    }

    /// Submits a DISCARD of `sectors` sectors at `sector` (§5.2.6, one
    /// segment, `VIRTIO_BLK_F_DISCARD`).
    pub fn submit_discard(
        &mut self,
        queue: u16,
        sector: u64,
        sectors: u32,
    ) -> Result<Token, BlkError> {
        self.need(BlkFeatures::DISCARD)?;
        self.submit(
            queue,
            req::DISCARD,
            0,
            Some(&segment(sector, sectors, 0)),
            0,
        )
    }

    /// Submits one DISCARD of several ranges, `(sector, sectors)` each,
    /// at most `max_discard_seg` of them (§5.2.4, §5.2.6). The device
    /// answers for the request as a whole: after IOERR nothing is known
    /// of any range, done, failed or untouched (§5.2.6.1).
    pub fn submit_discard_ranges(
        &mut self,
        queue: u16,
        ranges: &[(u64, u32)],
    ) -> Result<Token, BlkError> {
        self.need(BlkFeatures::DISCARD)?;
        let max = self
            .config
            .discard
            .map_or(1, |(_, segs, _)| segs.max(1) as usize)
            .min(MAX_DISCARD_RANGES);
        if ranges.is_empty() || ranges.len() > max {
            return Err(BlkError::TooLarge {
                len: ranges.len(),
                max,
            });
        }
        let mut segments = [0u8; 16 * MAX_DISCARD_RANGES];
        for (i, &(sector, sectors)) in ranges.iter().enumerate() {
            segments[16 * i..16 * (i + 1)].copy_from_slice(&segment(sector, sectors, 0));
        }
        self.submit(
            queue,
            req::DISCARD,
            0,
            Some(&segments[..16 * ranges.len()]),
            0,
        )
    }

    /// Submits a WRITE_ZEROES of `sectors` sectors at `sector`, with the
    /// UNMAP flag if `unmap` (§5.2.6, `VIRTIO_BLK_F_WRITE_ZEROES`).
    pub fn submit_write_zeroes(
        &mut self,
        queue: u16,
        sector: u64,
        sectors: u32,
        unmap: bool,
    ) -> Result<Token, BlkError> {
        self.need(BlkFeatures::WRITE_ZEROES)?;
        let flags = if unmap { FLAG_UNMAP } else { 0 };
        let seg = segment(sector, sectors, flags);
        self.submit(queue, req::WRITE_ZEROES, 0, Some(&seg), 0)
    }

    /// Takes used chains from every queue into their slots.
    fn collect(&mut self) -> Result<(), BlkError> {
        for q in self.queues.iter_mut() {
            q.collect()?;
        }
        Ok(())
    }

    /// Finishes a done slot: failed requests and requests without data
    /// free it; a READ or GET_ID that succeeded keeps it for `take_data`.
    fn finish(&mut self, token: Token) -> Option<Done> {
        let q = self.queues.get_mut(usize::from(token.queue))?;
        let s = q.slots.get_mut(usize::from(token.slot))?;
        if s.generation != token.generation {
            return None;
        }
        let SlotState::Done { outcome } = s.state else {
            return None;
        };
        let result = outcome.result(s.kind, s.len);
        let keep = result.is_ok() && matches!(s.kind, req::IN | req::GET_ID);
        s.state = if keep {
            SlotState::Data
        } else {
            SlotState::Free
        };
        Some(Done {
            token,
            kind: s.kind,
            len: s.len,
            result,
        })
    }

    /// Takes the next completed request, if any, without waiting. A READ
    /// or GET_ID that succeeded keeps its slot until
    /// [`take_data`](Self::take_data) or [`release`](Self::release).
    pub fn poll_completion(&mut self) -> Result<Option<Done>, BlkError> {
        self.collect()?;
        let found = self.queues.iter().enumerate().find_map(|(qi, q)| {
            q.slots.iter().enumerate().find_map(|(i, s)| {
                matches!(s.state, SlotState::Done { .. }).then_some(Token {
                    queue: qi as u16,
                    slot: i as u16,
                    generation: s.generation,
                })
            })
        });
        Ok(found.and_then(|t| self.finish(t)))
    }

    /// Re-enables used buffer notifications on every queue; whether used
    /// buffers are already there (§2.7.14).
    fn arm(&mut self) -> Result<bool, BlkError> {
        let mut pending = false;
        for q in self.queues.iter_mut() {
            if q.interrupts {
                pending |= q.queue.enable_interrupts(&q.mem).map_err(|e| {
                    BlkError::Driver(Error::Queue {
                        queue: q.index,
                        err: e,
                    })
                })?;
            }
        }
        Ok(pending)
    }

    fn timeout(&self, queue: u16) -> BlkError {
        BlkError::Driver(self.transport.timeout(queue))
    }

    /// Waits within `wait` for the next completed request of any queue.
    pub fn wait_any(&mut self, wait: &mut impl Wait) -> Result<Done, BlkError> {
        crate::wait::drive(
            self,
            wait,
            |b| b.poll_completion(),
            |b| b.arm(),
            |b| b.timeout(0),
        )
    }

    /// Waits within `wait` for the request `token` (other completions stay
    /// for [`poll_completion`](Self::poll_completion)). On timeout the
    /// request stays in flight.
    pub fn wait_for(&mut self, token: Token, wait: &mut impl Wait) -> Result<Done, BlkError> {
        self.slot(token)?;
        crate::wait::drive(
            self,
            wait,
            |b| {
                b.collect()?;
                Ok(b.finish(token))
            },
            |b| b.arm(),
            |b| b.timeout(token.queue),
        )
    }

    fn slot(&self, token: Token) -> Result<&Slot, BlkError> {
        self.queues
            .get(usize::from(token.queue))
            .and_then(|q| q.slots.get(usize::from(token.slot)))
            .filter(|s| s.generation == token.generation && s.state != SlotState::Free)
            .ok_or(BlkError::StaleToken)
    }

    /// Copies the data of a completed READ or GET_ID into `buf` (at most
    /// its data length) and frees its slot. Returns the bytes copied.
    pub fn take_data(&mut self, token: Token, buf: &mut [u8]) -> Result<usize, BlkError> {
        let s = *self.slot(token)?;
        if s.state != SlotState::Data {
            return Err(BlkError::StaleToken);
        }
        let slot_size = self.options.slot_size;
        let q = self.queue_mut(token.queue)?;
        let n = buf.len().min(s.len as usize);
        let dst = buf.get_mut(..n).unwrap_or_default();
        let r = q
            .mem
            .read(q.data_addr(token.slot, slot_size), dst)
            .map_err(|e| q.merr(e));
        q.slots[usize::from(token.slot)].state = SlotState::Free;
        r.map(|()| n)
    }

    /// Frees the slot of a completed request without taking its data.
    pub fn release(&mut self, token: Token) {
        if let Ok(s) = self.slot(token)
            && s.state == SlotState::Data
            && let Some(q) = self.queues.get_mut(usize::from(token.queue))
        {
            q.slots[usize::from(token.slot)].state = SlotState::Free;
        }
    }

    fn run(&mut self, token: Token, wait: &mut impl Wait) -> Result<Done, BlkError> {
        let done = self.wait_for(token, wait)?;
        done.result.map(|()| done)
    }

    /// Reads `buf.len()` bytes at `sector` on queue 0, waiting within
    /// `wait`.
    pub fn read(
        &mut self,
        sector: u64,
        buf: &mut [u8],
        wait: &mut impl Wait,
    ) -> Result<(), BlkError> {
        let t = self.submit_read(0, sector, buf.len())?;
        self.run(t, wait)?;
        self.take_data(t, buf).map(|_| ())
    }

    /// Writes `data` at `sector` on queue 0, waiting within `wait`.
    pub fn write(
        &mut self,
        sector: u64,
        data: &[u8],
        wait: &mut impl Wait,
    ) -> Result<(), BlkError> {
        let t = self.submit_write(0, sector, data)?;
        self.run(t, wait).map(|_| ())
    }

    /// FLUSH on queue 0, waiting within `wait`.
    pub fn flush(&mut self, wait: &mut impl Wait) -> Result<(), BlkError> {
        let t = self.submit_flush(0)?;
        self.run(t, wait).map(|_| ())
    }

    /// DISCARD on queue 0, waiting within `wait`.
    pub fn discard(
        &mut self,
        sector: u64,
        sectors: u32,
        wait: &mut impl Wait,
    ) -> Result<(), BlkError> {
        let t = self.submit_discard(0, sector, sectors)?;
        self.run(t, wait).map(|_| ())
    }

    /// WRITE_ZEROES on queue 0, waiting within `wait`.
    pub fn write_zeroes(
        &mut self,
        sector: u64,
        sectors: u32,
        unmap: bool,
        wait: &mut impl Wait,
    ) -> Result<(), BlkError> {
        let t = self.submit_write_zeroes(0, sector, sectors, unmap)?;
        self.run(t, wait).map(|_| ())
    }

    /// One DISCARD of several ranges on queue 0, waiting within `wait`
    /// (see [`submit_discard_ranges`](Self::submit_discard_ranges)): an
    /// error is the whole request's.
    pub fn discard_ranges(
        &mut self,
        ranges: &[(u64, u32)],
        wait: &mut impl Wait,
    ) -> Result<(), BlkError> {
        let t = self.submit_discard_ranges(0, ranges)?;
        self.run(t, wait).map(|_| ())
    }

    /// Sets the device's cache mode through `writeback` (§5.2.4, with
    /// VIRTIO_BLK_F_CONFIG_WCE): `true` writeback, `false` writethrough.
    /// Switching to writethrough commits nothing already written: those
    /// writes stay volatile until a FLUSH (§5.2.6.1), which
    /// [`flush`](Self::flush) always sends.
    pub fn set_writeback(&mut self, on: bool) -> Result<(), BlkError> {
        self.need(BlkFeatures::CONFIG_WCE)?;
        let d = self.transport.driver();
        d.write_config_u8(config::WRITEBACK, u8::from(on))?;
        let now = d.read_config_u8(config::WRITEBACK)? != 0;
        self.config.writeback = Some(now);
        Ok(())
    }

    /// GET_ID on queue 0 (§5.2.6): the 20-byte id, NUL-padded.
    pub fn get_id(&mut self, wait: &mut impl Wait) -> Result<[u8; ID_LEN], BlkError> {
        let t = self.submit_get_id(0)?;
        self.run(t, wait)?;
        let mut id = [0u8; ID_LEN];
        self.take_data(t, &mut id)?;
        Ok(id)
    }
}

/// A DISCARD / WRITE_ZEROES segment (§5.2.6: `le64 sector, le32
/// num_sectors, le32 flags`).
fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..].copy_from_slice(&flags.to_le_bytes());
    s
}

impl<H: Hal, R: RegisterAccess> Drop for Blk<H, R> {
    /// Resets the device (§2.4) and, once it reads back 0, gives the DMA
    /// memory back; a device that does not reset keeps it.
    fn drop(&mut self) {
        if self.transport.reset().is_ok() {
            for q in self.queues.iter_mut() {
                q.mem = DmaMemory::new();
                if let Some(dma) = q.dma.take() {
                    // SAFETY: the device was reset, so it no longer uses
                    // the queue; the memory came from `self.hal`.
                    unsafe { self.hal.dma_dealloc(dma) };
                }
            }
        }
    }
}
