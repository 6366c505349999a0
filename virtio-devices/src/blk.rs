//! virtio-blk, the block device (spec §5.2): request queues whose chains
//! carry a 16-byte header, data and a one-byte status, served from a
//! [`BlockBackend`].
//!
//! Data moves by zero-copy vectored I/O: each data descriptor is mapped to
//! host segments handed to the backend as [`IoSegment`]s, through per-queue
//! arrays allocated once at activation (no allocation per request). A
//! notification serves every available chain as one batch: used entries are
//! published once and one notification decision is made per batch (§2.7.10).
//!
//! Requests complete in the notification that pops them, unless
//! [`BlkConfig::queued_io`] is set and the backend has a queue
//! ([`BlockBackend::queue_depth`], e.g. a raw file with io_uring): then
//! reads, writes (in writeback mode) and flushes are handed to the queue
//! with the chain's head as their tag, the whole batch is submitted with one
//! call, and each chain is completed when the backend reports it, in any
//! order (§2.7.5: used entries need not follow the available order), from
//! the same notification or from [`VirtioDevice::backend_ready`]. The host
//! must then call `backend_ready` when the backend's completion fd is
//! readable. A FLUSH's used entry is written only after the backend's flush
//! finished, and covers every write completed before it was taken
//! (§5.2.6.2). One flush at most is in the backend's queue (two at once
//! could split one write-back error between them); FLUSH requests taken
//! meanwhile are answered together by the next one. In writethrough, writes
//! and FLUSH stay synchronous. [`VirtioDevice::quiesce`] and reset wait for
//! every queued request. It does not do secure erase, zoned devices or lifetime
//! reporting.

use alloc::vec::Vec;
use core::fmt;

use backends::IoSegment;
use backends::block::{BlockBackend, BlockError, QueuedOp, SECTOR_SIZE, check_range};
use virtio_core::GuestMemory;
use virtio_core::features::{BlkFeatures, DeviceType, TransportFeatures};
use virtio_core::memory::{Access, GuestAddress, MAX_SEGMENTS};
use virtio_core::split::DeviceQueue;

use crate::device::{Budget, DeviceError, QueueConfig, Served, VirtioDevice};

pub use virtio_core::blk::{DWZ_SEGMENT_LEN, FLAG_UNMAP, HEADER_LEN, req, status};

/// Bytes of the GET_ID answer (§5.2.6: a 20-byte string, NUL-padded).
pub const SERIAL_LEN: usize = virtio_core::blk::ID_LEN;
/// Bytes of the configuration space served (`struct virtio_blk_config`
/// through `unused1`, §5.2.4; secure erase and zoned fields are not).
pub const CONFIG_LEN: usize = 60;

/// Most segments one DISCARD or WRITE_ZEROES request may carry
/// (`max_dwz_seg`): the device copies a request's list (16 bytes a segment)
/// before executing it. Linux uses at most 256.
pub const MAX_DWZ_SEG: u32 = 4096;
/// Offset of `writeback` in the configuration space (§5.2.4).
pub const CONFIG_WRITEBACK: u64 = virtio_core::blk::config::WRITEBACK;

/// Disk-style geometry (§5.2.4 `virtio_blk_geometry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

/// How to build a [`Blk`]; [`Default`] gives one queue of
/// [`DEFAULT_QUEUE_SIZE`](crate::DEFAULT_QUEUE_SIZE) entries and
/// everything the backend supports turned off (discard, write zeroes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// The GET_ID answer (§5.2.6), at most [`SERIAL_LEN`] bytes.
    pub serial: Vec<u8>,
    /// Request queues; more than one offers `VIRTIO_BLK_F_MQ`.
    pub num_queues: u16,
    /// Each queue's maximum size (a power of two, at most 32768).
    pub queue_size: u16,
    /// Most data segments per request (`seg_max`, always offered).
    pub seg_max: u32,
    /// Most bytes per data segment (`size_max`); 0 leaves
    /// `VIRTIO_BLK_F_SIZE_MAX` unoffered.
    pub size_max: u32,
    /// `geometry`; `None` leaves `VIRTIO_BLK_F_GEOMETRY` unoffered.
    pub geometry: Option<Geometry>,
    /// Offer `VIRTIO_BLK_F_DISCARD` (the backend must support it when
    /// `discard_unmap` is set).
    pub discard: bool,
    /// Whether discards reach the backend. When clear, a discard is
    /// checked as §5.2.6 says and completed `OK` without touching the disk,
    /// and a WRITE_ZEROES with `UNMAP` writes zeros without unmapping
    /// (QEMU's `-drive discard=ignore`, its default: a discard is a hint,
    /// §5.2.6.1, so ignoring it is correct).
    pub discard_unmap: bool,
    /// Offer `VIRTIO_BLK_F_WRITE_ZEROES` (the backend must support it).
    pub write_zeroes: bool,
    /// `max_discard_sectors` and `max_write_zeroes_sectors`.
    pub max_dwz_sectors: u32,
    /// `max_discard_seg` and `max_write_zeroes_seg`, at most
    /// [`MAX_DWZ_SEG`].
    pub max_dwz_seg: u32,
    /// The cache mode before the driver changes it: writeback (`true`) or
    /// writethrough. Only used with FLUSH negotiated.
    pub writeback: bool,
    /// Hand reads, writes and flushes to the backend's queue when it has
    /// one (see the module documentation); the host then calls
    /// `backend_ready` when `BlockBackend::completion_fd` is readable.
    pub queued_io: bool,
}

impl Default for BlkConfig {
    fn default() -> Self {
        BlkConfig {
            serial: Vec::new(),
            num_queues: 1,
            queue_size: crate::device::DEFAULT_QUEUE_SIZE,
            seg_max: 126,
            size_max: 0,
            geometry: None,
            discard: false,
            discard_unmap: true,
            write_zeroes: false,
            max_dwz_sectors: 0x3f_ffff,
            max_dwz_seg: 32,
            writeback: true,
            queued_io: false,
        }
    }
}

/// Why a [`BlkConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkConfigError {
    /// The serial is longer than [`SERIAL_LEN`] bytes.
    SerialTooLong {
        /// Its length.
        len: usize,
    },
    /// `num_queues` is 0.
    NoQueues,
    /// `queue_size` is 0, not a power of two, or above 32768.
    BadQueueSize {
        /// The size.
        size: u16,
    },
    /// `seg_max` is 0.
    NoSegments,
    /// `size_max` is neither 0 nor at least one sector.
    SizeMaxTooSmall {
        /// The value.
        size_max: u32,
    },
    /// Discard or write zeroes asked for, but the backend does not do it.
    BackendUnsupported {
        /// Which.
        what: &'static str,
    },
    /// Discard or write zeroes asked for with a zero sector or segment
    /// limit.
    ZeroDiscardLimit,
    /// `max_dwz_seg` is above [`MAX_DWZ_SEG`].
    TooManyDwzSegments {
        /// The value.
        max_dwz_seg: u32,
    },
    /// The backend's block size is not a power of two of at least 512.
    BadBlockSize {
        /// The size.
        size: u32,
    },
    /// The backend's size is not a multiple of 512.
    BadDiskSize {
        /// The size in bytes.
        size: u64,
    },
}

impl fmt::Display for BlkConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlkConfigError::SerialTooLong { len } => write!(
                f,
                "serial of {len} bytes is longer than {SERIAL_LEN} (§5.2.6 GET_ID)"
            ),
            BlkConfigError::NoQueues => f.write_str("a block device needs at least one queue"),
            BlkConfigError::BadQueueSize { size } => write!(
                f,
                "queue size {size} is not a power of two in 1..=32768 (§2.7)"
            ),
            BlkConfigError::NoSegments => f.write_str("seg_max must be at least 1"),
            BlkConfigError::SizeMaxTooSmall { size_max } => {
                write!(f, "size_max {size_max} is below one sector (512 bytes)")
            }
            BlkConfigError::BackendUnsupported { what } => {
                write!(f, "the backend does not support {what}")
            }
            BlkConfigError::ZeroDiscardLimit => {
                f.write_str("discard / write-zeroes limits must be at least 1")
            }
            BlkConfigError::TooManyDwzSegments { max_dwz_seg } => write!(
                f,
                "max_dwz_seg {max_dwz_seg} is above {MAX_DWZ_SEG} segments per request"
            ),
            BlkConfigError::BadBlockSize { size } => write!(
                f,
                "backend block size {size} is not a power of two of at least 512"
            ),
            BlkConfigError::BadDiskSize { size } => {
                write!(f, "disk size {size} is not a multiple of 512 bytes")
            }
        }
    }
}

impl core::error::Error for BlkConfigError {}

/// Counters for the harness report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// IN requests.
    pub reads: u64,
    /// OUT requests.
    pub writes: u64,
    /// FLUSH requests.
    pub flushes: u64,
    /// GET_ID requests.
    pub get_ids: u64,
    /// DISCARD requests.
    pub discards: u64,
    /// WRITE_ZEROES requests.
    pub write_zeroes: u64,
    /// Requests of an unknown type, or of a feature not negotiated
    /// (answered `UNSUPP`).
    pub unsupported: u64,
    /// Bytes read from the disk into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to the disk.
    pub bytes_written: u64,
    /// Flushes the device issued itself for writethrough (§5.2.6.2).
    pub writethrough_flushes: u64,
    /// Chains returned with length 0: malformed (§2.7.5) or without a
    /// writable status byte.
    pub err_no_status: u64,
    /// Requests whose header was shorter than 16 readable bytes, or whose
    /// buffers were not in guest memory (`IOERR`).
    pub err_bad_header: u64,
    /// Requests reaching past the capacity (`IOERR`).
    pub err_out_of_range: u64,
    /// Writes, discards or write-zeroes on a read-only disk (`IOERR`).
    pub err_read_only: u64,
    /// Data lengths that are not a multiple of 512 (`IOERR`).
    pub err_misaligned: u64,
    /// More data segments than `seg_max`, or a segment above `size_max`
    /// (`IOERR`).
    pub err_segments: u64,
    /// Discard / write-zeroes payloads breaking §5.2.6's rules (`IOERR` or
    /// `UNSUPP`).
    pub err_bad_dwz: u64,
    /// Backend failures (`IOERR`, or `UNSUPP` for `Unsupported`).
    pub err_backend: u64,
    /// Batches served (notifications that found work).
    pub batches: u64,
    /// Batches after which the driver was notified.
    pub notifications: u64,
    /// Batches whose notification the driver suppressed (§2.7.7, §2.7.10).
    pub notifications_suppressed: u64,
    /// Requests handed to the backend's queue.
    pub queued: u64,
    /// Requests the backend's queue declined, served synchronously.
    pub queue_declined: u64,
}

/// One descriptor's buffer, as copied out of the chain once.
#[derive(Clone, Copy, Debug)]
struct Piece {
    addr: GuestAddress,
    len: u32,
}

/// What a queued request does, for its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueuedKind {
    Read,
    Write,
    Flush,
}

/// A request in the backend's queue, kept by its chain's head.
#[derive(Clone, Copy, Debug)]
struct Queued {
    kind: QueuedKind,
    /// The status byte.
    status: GuestAddress,
    /// Data bytes (read into the driver's buffers, or written).
    bytes: u64,
}

/// A queue and its scratch arrays, allocated at activation.
struct QueueState {
    queue: DeviceQueue,
    /// Readable then writable buffers of the chain being served.
    pieces: Vec<Piece>,
    /// Host segments of the data being moved.
    iov: IoVec,
    /// Requests in the backend's queue, by head (empty without
    /// `queued_io`).
    queued: Vec<Option<Queued>>,
    /// Used entries added since the last publication.
    dirty: bool,
}

/// What became of a served chain.
enum Outcome {
    /// Completed now, with this used length.
    Done(u32),
    /// In the backend's queue; completed when it reports.
    Queued,
}

/// Host segments of one request's data. Emptied after every use.
struct IoVec(Vec<IoSegment>);

// SAFETY: the vector holds raw pointers only while one request is served on
// the thread that owns the device, and is cleared before that returns; what
// moves between threads is an empty allocation.
unsafe impl Send for IoVec {}

impl fmt::Debug for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueState")
            .field("queue", &self.queue)
            .field("pieces_cap", &self.pieces.capacity())
            .field("iov_cap", &self.iov.0.capacity())
            .finish()
    }
}

/// What serves requests: everything but the queues.
#[derive(Debug)]
struct Engine<B, M> {
    backend: B,
    mem: M,
    cfg: BlkConfig,
    offered: u64,
    /// Negotiated features (0 before activation).
    features: u64,
    /// The `writeback` configuration byte.
    writeback: u8,
    stats: BlkStats,
    /// A flush failed: what the cache held may be gone while a later
    /// flush of the same file reports success (Linux clears the pages'
    /// error state once reported). Sticky for the device's life: every
    /// later FLUSH, and in writethrough every later write, fails.
    flush_failed: bool,
    /// Scratch for a DISCARD / WRITE_ZEROES segment list (at most
    /// `max_dwz_seg` × 16 bytes), reused between requests.
    dwz_list: Vec<u8>,
    /// Requests go to the backend's queue (`queued_io` and a backend with
    /// one).
    queued: bool,
    /// Used entries were published outside a call that can report a
    /// notification (a configuration write waited for the queue): the next
    /// call that returns `Served` asks for one.
    owed_interrupt: bool,
    /// The transport polls the rings: serving leaves notifications off.
    polling: bool,
    /// A flush is in the backend's queue (at most one: two at once could
    /// split one write-back error between them, and one would report
    /// success for pages that were lost).
    flushing: bool,
    /// The FLUSH requests (tags) the flush in the queue answers.
    flush_batch: Vec<u64>,
    /// FLUSH requests taken while one was in the queue: the next flush,
    /// started when it finishes, answers them all (it comes after each of
    /// them was taken, so it covers what they must, §5.2.6.2).
    flush_waiters: Vec<u64>,
}

/// The block device over backend `B` and guest memory `M`.
#[derive(Debug)]
pub struct Blk<B, M> {
    engine: Engine<B, M>,
    queues: Vec<Option<QueueState>>,
    max_sizes: Vec<u16>,
}

/// Why a request failed, and the status it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    BadHeader,
    OutOfRange,
    ReadOnly,
    Misaligned,
    Segments,
    BadDwz,
    DwzUnsupp,
    Unsupported,
    Backend,
    BackendUnsupp,
}

impl Fail {
    fn status(self) -> u8 {
        match self {
            Fail::Unsupported | Fail::DwzUnsupp | Fail::BackendUnsupp => status::UNSUPP,
            _ => status::IOERR,
        }
    }

    fn count(self, s: &mut BlkStats) {
        let c = match self {
            Fail::BadHeader => &mut s.err_bad_header,
            Fail::OutOfRange => &mut s.err_out_of_range,
            Fail::ReadOnly => &mut s.err_read_only,
            Fail::Misaligned => &mut s.err_misaligned,
            Fail::Segments => &mut s.err_segments,
            Fail::BadDwz | Fail::DwzUnsupp => &mut s.err_bad_dwz,
            Fail::Unsupported => &mut s.unsupported,
            Fail::Backend | Fail::BackendUnsupp => &mut s.err_backend,
        };
        *c += 1;
    }
}

fn backend_fail(e: &BlockError) -> Fail {
    match e {
        BlockError::OutOfRange { .. } => Fail::OutOfRange,
        BlockError::ReadOnly => Fail::ReadOnly,
        BlockError::Unsupported(_) => Fail::BackendUnsupp,
        _ => Fail::Backend,
    }
}

/// Calls `f` on each guest piece of bytes `start..end` of the stream made by
/// `pieces`, in order.
fn for_range<E>(
    pieces: &[Piece],
    start: u64,
    end: u64,
    mut f: impl FnMut(GuestAddress, u32) -> Result<(), E>,
) -> Result<(), E> {
    if start >= end {
        return Ok(());
    }
    let mut pos = 0u64;
    for p in pieces {
        let p_end = pos + u64::from(p.len);
        if p_end > start && pos < end {
            let from = start.max(pos);
            let to = end.min(p_end);
            // Inside one descriptor: `addr + len` was checked not to wrap.
            f(GuestAddress(p.addr.0 + (from - pos)), (to - from) as u32)?;
        }
        if p_end >= end {
            break;
        }
        pos = p_end;
    }
    Ok(())
}

/// Copies bytes `start..start + buf.len()` of the stream out of guest memory.
fn read_range<M: GuestMemory>(
    mem: &M,
    pieces: &[Piece],
    start: u64,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let mut done = 0usize;
    for_range(pieces, start, start + buf.len() as u64, |addr, n| {
        let dst = buf
            .get_mut(done..done + n as usize)
            .ok_or(Fail::BadHeader)?;
        mem.read(addr, dst).map_err(|_| Fail::BadHeader)?;
        done += n as usize;
        Ok(())
    })?;
    if done == buf.len() {
        Ok(())
    } else {
        Err(Fail::BadHeader)
    }
}

/// Copies `buf` into bytes `start..` of the stream; returns bytes written.
fn write_range<M: GuestMemory>(mem: &M, pieces: &[Piece], start: u64, buf: &[u8]) -> u32 {
    let mut done = 0usize;
    let _ = for_range(pieces, start, start + buf.len() as u64, |addr, n| {
        let src = buf.get(done..done + n as usize).ok_or(())?;
        mem.write(addr, src).map_err(|_| ())?;
        done += n as usize;
        Ok::<(), ()>(())
    });
    done as u32
}

/// A parsed chain: where its parts are.
struct Request {
    /// Readable pieces are `pieces[..readable]`.
    readable: usize,
    /// Total readable and writable bytes.
    r_total: u64,
    w_total: u64,
    /// The status byte.
    status: GuestAddress,
    /// Too many descriptors to keep, or a buffer outside guest memory.
    overflow: bool,
    bad_memory: bool,
}

impl<B: BlockBackend, M: GuestMemory> Engine<B, M> {
    fn negotiated(&self, f: BlkFeatures) -> bool {
        self.features & f.bits() != 0
    }

    /// The cache mode in force (§5.2.5.1, §5.2.6.2).
    fn writeback_effective(&self) -> bool {
        if !self.negotiated(BlkFeatures::FLUSH) {
            return false;
        }
        // The driver's choice with CONFIG_WCE; the host's otherwise (set
        // at activation).
        self.writeback != 0
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let put = |c: &mut [u8; CONFIG_LEN], off: usize, b: &[u8]| {
            c[off..off + b.len()].copy_from_slice(b);
        };
        put(
            &mut c,
            0,
            &(self.backend.size() / SECTOR_SIZE).to_le_bytes(),
        );
        put(&mut c, 8, &self.cfg.size_max.to_le_bytes());
        put(&mut c, 12, &self.cfg.seg_max.to_le_bytes());
        if let Some(g) = self.cfg.geometry {
            put(&mut c, 16, &g.cylinders.to_le_bytes());
            c[18] = g.heads;
            c[19] = g.sectors;
        }
        let bs = self.backend.block_size();
        put(&mut c, 20, &bs.to_le_bytes());
        // Topology: physical blocks are logical blocks, aligned at 0, one
        // block the minimum I/O; no optimal size.
        c[24] = 0;
        c[25] = 0;
        put(&mut c, 26, &1u16.to_le_bytes());
        put(&mut c, 28, &0u32.to_le_bytes());
        c[32] = self.writeback;
        put(&mut c, 34, &self.cfg.num_queues.to_le_bytes());
        let align = bs / SECTOR_SIZE as u32;
        if self.cfg.discard {
            put(&mut c, 36, &self.cfg.max_dwz_sectors.to_le_bytes());
            put(&mut c, 40, &self.cfg.max_dwz_seg.to_le_bytes());
            put(&mut c, 44, &align.to_le_bytes());
        }
        if self.cfg.write_zeroes {
            put(&mut c, 48, &self.cfg.max_dwz_sectors.to_le_bytes());
            put(&mut c, 52, &self.cfg.max_dwz_seg.to_le_bytes());
            c[56] = u8::from(self.cfg.discard);
        }
        c
    }

    /// Walks chain `head` into `pieces`; `None` if it is malformed or has
    /// no writable status byte in guest memory (§5.2.6: the status is the
    /// last writable byte).
    fn parse(&self, queue: &DeviceQueue, head: u16, pieces: &mut Vec<Piece>) -> Option<Request> {
        pieces.clear();
        let chain = queue.chain(&self.mem, head).ok()?;
        let mut rq = Request {
            readable: 0,
            r_total: 0,
            w_total: 0,
            status: GuestAddress(0),
            overflow: false,
            bad_memory: false,
        };
        let mut last_w: Option<Piece> = None;
        for d in chain {
            let d = d.ok()?;
            if d.is_empty() {
                continue;
            }
            let p = Piece {
                addr: d.addr(),
                len: d.len(),
            };
            let access = if d.is_write_only() {
                rq.w_total += u64::from(p.len);
                last_w = Some(p);
                Access::Write
            } else {
                rq.r_total += u64::from(p.len);
                rq.readable += 1;
                Access::Read
            };
            if self.mem.check(p.addr, u64::from(p.len), access).is_err() {
                rq.bad_memory = true;
            }
            // Never grow the array: a chain longer than it is refused.
            if pieces.len() < pieces.capacity() {
                pieces.push(p);
            } else {
                rq.overflow = true;
            }
        }
        let last = last_w?;
        // The status byte is the last writable byte (§5.2.6); a buffer
        // that wraps the address space or is empty has none.
        rq.status = GuestAddress(
            last.addr
                .0
                .checked_add(u64::from(last.len))?
                .checked_sub(1)
                .filter(|_| last.len > 0)?,
        );
        self.mem.check(rq.status, 1, Access::Write).ok()?;
        Some(rq)
    }

    /// Serves chain `head` of queue `index`.
    fn serve_one(&mut self, qs: &mut QueueState, index: u16, head: u16) -> Outcome {
        let Some(rq) = self.parse(&qs.queue, head, &mut qs.pieces) else {
            self.stats.err_no_status += 1;
            return Outcome::Done(0);
        };
        let (st, data_len) = match self.execute(qs, &rq, index, head) {
            Ok(Some(n)) => (status::OK, n),
            Ok(None) => return Outcome::Queued,
            Err((f, n)) => {
                f.count(&mut self.stats);
                (f.status(), n)
            }
        };
        qs.iov.0.clear();
        // Mapped for writing when parsed; a failure now (memory unplugged
        // meanwhile) leaves nothing better to do than return the chain.
        let _ = self.mem.write(rq.status, &[st]);
        Outcome::Done(data_len + 1)
    }

    /// Queues FLUSH request `tag`: answered by the flush in the backend's
    /// queue started now, or, if one is there already, by the next one.
    /// `false` when it must be served synchronously.
    fn queue_flush(&mut self, queued: &mut [Option<Queued>], tag: u64, job: Queued) -> bool {
        let Some(slot) = free_slot(queued, tag) else {
            return false;
        };
        if self.flushing {
            if self.flush_waiters.len() == self.flush_waiters.capacity() {
                return false;
            }
            self.flush_waiters.push(tag);
        } else {
            // SAFETY: a flush lends no memory.
            match unsafe { self.backend.start(FLUSH_TAG, QueuedOp::Flush) } {
                Ok(true) => {}
                _ => return false,
            }
            self.flushing = true;
            self.flush_batch.clear();
            self.flush_batch.push(tag);
        }
        *slot = Some(job);
        self.stats.queued += 1;
        true
    }

    /// Hands a request of chain `head` to the backend's queue; `Ok(true)`
    /// when it is queued, `Ok(false)` when it must be served synchronously
    /// (no queue, declined, or more segments than the array holds). `data`
    /// is a read's or write's bytes `start..end` of `pieces`, at `sector`.
    fn try_queue(
        &mut self,
        iov: &mut IoVec,
        queued: &mut [Option<Queued>],
        tag: u64,
        job: Queued,
        data: Option<(&[Piece], u64, u64, u64)>,
    ) -> Result<bool, Fail> {
        if !self.queued {
            return Ok(false);
        }
        let Some(slot) = free_slot(queued, tag) else {
            return Ok(false);
        };
        let iov = &mut iov.0;
        iov.clear();
        if let Some((pieces, start, end, _)) = data {
            let access = if job.kind == QueuedKind::Write {
                Access::Read
            } else {
                Access::Write
            };
            let mem = &self.mem;
            // `Err(None)`: more segments than the array holds.
            let gathered = for_range(pieces, start, end, |addr, n| {
                let m = mem
                    .map(addr, u64::from(n), access)
                    .map_err(|_| Some(Fail::BadHeader))?;
                if iov.len() + m.segments().len() > iov.capacity() {
                    return Err(None);
                }
                iov.extend(m.segments().iter().map(|s| IoSegment {
                    ptr: s.as_ptr(),
                    len: s.len(),
                }));
                Ok(())
            });
            match gathered {
                Ok(()) => {}
                Err(None) => {
                    iov.clear();
                    return Ok(false);
                }
                Err(Some(f)) => {
                    iov.clear();
                    return Err(f);
                }
            }
        }
        let op = match (job.kind, data) {
            (QueuedKind::Flush, _) => QueuedOp::Flush,
            (kind, Some((_, _, _, sector))) => {
                let offset = sector * SECTOR_SIZE;
                if kind == QueuedKind::Write {
                    QueuedOp::Write {
                        offset,
                        segments: iov,
                    }
                } else {
                    QueuedOp::Read {
                        offset,
                        segments: iov,
                    }
                }
            }
            (_, None) => return Ok(false),
        };
        // SAFETY: every segment comes from a mapping of guest memory,
        // checked for this direction, which stays mapped until the backend
        // reports the request: the device waits for its queue before it
        // resets and in `quiesce`, which transports call before they change
        // or release guest memory; no Rust reference covers it.
        let r = unsafe { self.backend.start(tag, op) };
        iov.clear();
        match r {
            Ok(true) => {
                *slot = Some(job);
                self.stats.queued += 1;
                Ok(true)
            }
            Ok(false) => {
                self.stats.queue_declined += 1;
                Ok(false)
            }
            Err(e) => Err(backend_fail(&e)),
        }
    }

    /// Executes a parsed request of chain `head` on queue `index`:
    /// `Ok(Some(bytes written to the driver before the status))`,
    /// `Ok(None)` when it went to the backend's queue, or why it failed and
    /// how many bytes were written.
    fn execute(
        &mut self,
        qs: &mut QueueState,
        rq: &Request,
        index: u16,
        head: u16,
    ) -> Result<Option<u32>, (Fail, u32)> {
        let tag = u64::from(index) << 16 | u64::from(head);
        if rq.overflow || rq.bad_memory {
            return Err((
                if rq.overflow {
                    Fail::Segments
                } else {
                    Fail::BadHeader
                },
                0,
            ));
        }
        let (readable, writable) = qs.pieces.split_at(rq.readable);
        let mut hdr = [0u8; HEADER_LEN as usize];
        if rq.r_total < HEADER_LEN {
            return Err((Fail::BadHeader, 0));
        }
        read_range(&self.mem, readable, 0, &mut hdr).map_err(|f| (f, 0))?;
        let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        // Data: readable bytes after the header, writable before the status.
        let w_data = rq.w_total - 1;
        match ty {
            req::IN => {
                self.stats.reads += 1;
                self.check_data(writable, 0, w_data, sector)
                    .map_err(|f| (f, 0))?;
                let n = w_data as u32;
                let job = Queued {
                    kind: QueuedKind::Read,
                    status: rq.status,
                    bytes: w_data,
                };
                let data = Some((writable, 0, w_data, sector));
                if self
                    .try_queue(&mut qs.iov, &mut qs.queued, tag, job, data)
                    .map_err(|f| (f, n))?
                {
                    return Ok(None);
                }
                self.io(&mut qs.iov, writable, 0, w_data, sector, false)
                    .map_err(|f| (f, n))?;
                self.stats.bytes_read += w_data;
                Ok(Some(n))
            }
            req::OUT => {
                self.stats.writes += 1;
                if self.backend.read_only() {
                    return Err((Fail::ReadOnly, 0));
                }
                self.check_data(readable, HEADER_LEN, rq.r_total, sector)
                    .map_err(|f| (f, 0))?;
                // Writethrough completes a write only once it is stable:
                // that stays synchronous.
                if self.writeback_effective() {
                    let job = Queued {
                        kind: QueuedKind::Write,
                        status: rq.status,
                        bytes: rq.r_total - HEADER_LEN,
                    };
                    let data = Some((readable, HEADER_LEN, rq.r_total, sector));
                    if self
                        .try_queue(&mut qs.iov, &mut qs.queued, tag, job, data)
                        .map_err(|f| (f, 0))?
                    {
                        return Ok(None);
                    }
                }
                self.io(&mut qs.iov, readable, HEADER_LEN, rq.r_total, sector, true)
                    .map_err(|f| (f, 0))?;
                self.stats.bytes_written += rq.r_total - HEADER_LEN;
                self.writethrough().map_err(|f| (f, 0))?;
                Ok(Some(0))
            }
            req::FLUSH => {
                if !self.negotiated(BlkFeatures::FLUSH) {
                    return Err((Fail::Unsupported, 0));
                }
                self.stats.flushes += 1;
                // §5.2.6.2: the flush covers the writes completed before it
                // was taken, which a queued one does too (the backend holds
                // them in its cache or has written them). In writethrough
                // every write flushes synchronously, and so does FLUSH.
                if self.queued && !self.flush_failed && self.writeback_effective() {
                    let job = Queued {
                        kind: QueuedKind::Flush,
                        status: rq.status,
                        bytes: 0,
                    };
                    if self.queue_flush(&mut qs.queued, tag, job) {
                        return Ok(None);
                    }
                }
                self.flush_backend().map_err(|f| (f, 0))?;
                Ok(Some(0))
            }
            req::GET_ID => {
                self.stats.get_ids += 1;
                let mut id = [0u8; SERIAL_LEN];
                id[..self.cfg.serial.len()].copy_from_slice(&self.cfg.serial);
                let n = (w_data as usize).min(SERIAL_LEN);
                Ok(Some(write_range(&self.mem, writable, 0, &id[..n])))
            }
            req::DISCARD | req::WRITE_ZEROES => {
                let wz = ty == req::WRITE_ZEROES;
                let feature = if wz {
                    BlkFeatures::WRITE_ZEROES
                } else {
                    BlkFeatures::DISCARD
                };
                if !self.negotiated(feature) {
                    return Err((Fail::Unsupported, 0));
                }
                if wz {
                    self.stats.write_zeroes += 1;
                } else {
                    self.stats.discards += 1;
                }
                self.discard_write_zeroes(readable, rq.r_total, wz)
                    .map_err(|f| (f, 0))?;
                Ok(Some(0))
            }
            _ => Err((Fail::Unsupported, 0)),
        }
    }

    /// `writeback` as the negotiated features fix it (§5.2.5.1): 0 without
    /// FLUSH (also with CONFIG_WCE). With FLUSH but no CONFIG_WCE the
    /// driver cannot choose: the host's mode holds (writethrough when the
    /// disk was set up that way, e.g. `cache=writethrough`; writeback
    /// otherwise). With both, what the driver wrote stays.
    fn settle_writeback(&mut self) {
        if !self.negotiated(BlkFeatures::FLUSH) {
            self.writeback = 0;
        } else if !self.negotiated(BlkFeatures::CONFIG_WCE) {
            self.writeback = u8::from(self.cfg.writeback);
        }
    }

    /// The checks every IN and OUT passes before any I/O (§5.2.6.1):
    /// length a multiple of 512, at most `seg_max` data buffers of at most
    /// `size_max` bytes each (when negotiated), inside the capacity.
    fn check_data(&self, pieces: &[Piece], start: u64, end: u64, sector: u64) -> Result<(), Fail> {
        let len = end - start;
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Fail::Misaligned);
        }
        let mut segs = 0u64;
        let mut too_big = false;
        let _ = for_range(pieces, start, end, |_, n| {
            segs += 1;
            too_big |= self.negotiated(BlkFeatures::SIZE_MAX) && n > self.cfg.size_max;
            Ok::<(), ()>(())
        });
        if too_big || (self.negotiated(BlkFeatures::SEG_MAX) && segs > u64::from(self.cfg.seg_max))
        {
            return Err(Fail::Segments);
        }
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Fail::OutOfRange)?;
        check_range(offset, len, self.backend.size()).map_err(|_| Fail::OutOfRange)
    }

    /// Moves bytes `start..end` of the stream to or from the disk at
    /// `sector`, zero-copy, in chunks of at most the array's capacity.
    fn io(
        &mut self,
        iov: &mut IoVec,
        pieces: &[Piece],
        start: u64,
        end: u64,
        sector: u64,
        write: bool,
    ) -> Result<(), Fail> {
        let access = if write { Access::Read } else { Access::Write };
        let mut offset = sector * SECTOR_SIZE;
        let mut chunk = 0u64;
        let iov = &mut iov.0;
        iov.clear();
        let backend = &mut self.backend;
        let mut submit = |iov: &mut Vec<IoSegment>, offset: &mut u64, chunk: &mut u64| {
            if iov.is_empty() {
                return Ok(());
            }
            // SAFETY: every segment comes from a mapping of guest memory,
            // checked for this direction, which stays mapped while `mem`
            // lives (the device owns it); no Rust reference covers it.
            let r = unsafe {
                if write {
                    backend.write_vectored(*offset, iov)
                } else {
                    backend.read_vectored(*offset, iov)
                }
            };
            iov.clear();
            *offset += *chunk;
            *chunk = 0;
            r.map_err(|e| backend_fail(&e))
        };
        let mem = &self.mem;
        for_range(pieces, start, end, |addr, n| {
            let m = mem
                .map(addr, u64::from(n), access)
                .map_err(|_| Fail::BadHeader)?;
            if iov.len() + m.segments().len() > iov.capacity() {
                submit(iov, &mut offset, &mut chunk)?;
            }
            for s in m.segments() {
                iov.push(IoSegment {
                    ptr: s.as_ptr(),
                    len: s.len(),
                });
            }
            chunk += u64::from(n);
            Ok(())
        })?;
        submit(iov, &mut offset, &mut chunk)
    }

    /// Writethrough (§5.2.6.2): a write is stable before it completes.
    /// After a failed flush no write is (issue 16, finding 4), whoever
    /// does the flushing.
    fn writethrough(&mut self) -> Result<(), Fail> {
        if self.writeback_effective() {
            return Ok(());
        }
        if self.flush_failed {
            return Err(Fail::Backend);
        }
        if self.backend.write_cache() {
            self.stats.writethrough_flushes += 1;
            self.flush_backend()?;
        }
        Ok(())
    }

    /// Flushes the backend; a failure is sticky (issue 16, finding 4): on
    /// Linux the next `fdatasync` after a failed one returns 0 though the
    /// failed pages were dropped, so success after a failure proves
    /// nothing (QEMU's file-posix does the same).
    fn flush_backend(&mut self) -> Result<(), Fail> {
        if self.flush_failed {
            return Err(Fail::Backend);
        }
        self.backend.flush().map_err(|e| {
            self.flush_failed = true;
            backend_fail(&e)
        })
    }

    /// DISCARD and WRITE_ZEROES (§5.2.6): every segment is checked before
    /// any is executed.
    fn discard_write_zeroes(
        &mut self,
        readable: &[Piece],
        r_total: u64,
        wz: bool,
    ) -> Result<(), Fail> {
        let len = r_total - HEADER_LEN;
        let count = len / DWZ_SEGMENT_LEN;
        if len == 0
            || !len.is_multiple_of(DWZ_SEGMENT_LEN)
            || count > u64::from(self.cfg.max_dwz_seg)
        {
            return Err(Fail::BadDwz);
        }
        // Issue 16, finding 6: the list is copied out of guest memory once,
        // then checked whole and executed from the copy, so a guest
        // rewriting it meanwhile changes nothing (no double fetch).
        let mut list = core::mem::take(&mut self.dwz_list);
        list.clear();
        list.resize(len as usize, 0);
        let result = read_range(&self.mem, readable, HEADER_LEN, &mut list)
            .and_then(|()| self.execute_dwz(&list, wz));
        self.dwz_list = list;
        result?;
        if wz {
            self.writethrough()?;
        }
        Ok(())
    }

    /// Checks every segment of a copied DISCARD / WRITE_ZEROES list, then
    /// executes them in order (§5.2.6.2).
    fn execute_dwz(&mut self, list: &[u8], wz: bool) -> Result<(), Fail> {
        let size = self.backend.size();
        let seg_len = DWZ_SEGMENT_LEN as usize;
        let parse = |seg: &[u8]| -> Result<(u64, u64, bool), Fail> {
            let field = |at: usize, n: usize| {
                seg.get(at..at + n)
                    .map(|b| b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)))
                    .ok_or(Fail::BadDwz)
            };
            let sector = field(0, 8)?;
            let num = field(8, 4)?;
            let flags = field(12, 4)?;
            // §5.2.6.2: unknown flags, or UNMAP on a discard, are
            // unsupported; over the limits is an error.
            if flags & !u64::from(FLAG_UNMAP) != 0 || (!wz && flags & u64::from(FLAG_UNMAP) != 0) {
                return Err(Fail::DwzUnsupp);
            }
            if num > u64::from(self.cfg.max_dwz_sectors) {
                return Err(Fail::BadDwz);
            }
            let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Fail::OutOfRange)?;
            let bytes = num * SECTOR_SIZE;
            check_range(offset, bytes, size).map_err(|_| Fail::OutOfRange)?;
            Ok((offset, bytes, flags & u64::from(FLAG_UNMAP) != 0))
        };
        // Every segment is checked before any is executed.
        for seg in list.chunks(seg_len) {
            parse(seg)?;
        }
        // §5.2.6.2: unknown flags are UNSUPP whatever the device; only a
        // request the device would carry out fails on a read-only one.
        if self.backend.read_only() {
            return Err(Fail::ReadOnly);
        }
        let unmap = self.cfg.discard_unmap;
        for seg in list.chunks(seg_len) {
            let (offset, bytes, seg_unmap) = parse(seg)?;
            let r = if wz {
                self.backend.write_zeroes(offset, bytes, unmap && seg_unmap)
            } else if unmap {
                self.backend.discard(offset, bytes)
            } else {
                // Ignored, as the drive asks (a hint, §5.2.6.1).
                Ok(())
            };
            r.map_err(|e| backend_fail(&e))?;
        }
        Ok(())
    }

    /// Serves every available chain of `qs` as one batch (queue `index`);
    /// what completes is published by [`Blk::publish`].
    fn serve(&mut self, qs: &mut QueueState, index: u16) -> Result<Served, DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: index, err };
        let mut served = Served::default();
        // Batch: no kicks while the device is serving; `next_head`
        // re-enables them and re-checks the ring once it is empty.
        qs.queue.disable_notification(&self.mem).map_err(qerr)?;
        let mut malformed = 0;
        let mut budget = Budget::polled(self.polling);
        if self.queued {
            let pending = qs.queue.pending(&self.mem).map_err(qerr)?;
            budget = budget.at_most(queued_part(pending));
        }
        let result = loop {
            match budget.next_head(&mut qs.queue, &self.mem, &mut malformed) {
                Ok(Some(head)) => {
                    let Outcome::Done(len) = self.serve_one(qs, index, head) else {
                        continue;
                    };
                    if let Err(e) = qs.queue.add_used(&self.mem, head, len) {
                        break Err(qerr(e));
                    }
                    qs.dirty = true;
                    served.completed += 1;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(qerr(e)),
            }
        };
        self.stats.err_no_status += malformed;
        served.again = budget.exhausted;
        result.map(|()| served)
    }

    /// Publishes the used entries of queue `index` (§2.7.8) and decides
    /// whether the driver is notified (§2.7.10).
    fn publish(&mut self, qs: &mut QueueState, index: u16) -> Result<bool, DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: index, err };
        qs.dirty = false;
        qs.queue.publish_used(&self.mem).map_err(qerr)?;
        self.stats.batches += 1;
        let interrupt = qs.queue.needs_notification(&self.mem).map_err(qerr)?;
        if interrupt {
            self.stats.notifications += 1;
        } else {
            self.stats.notifications_suppressed += 1;
        }
        Ok(interrupt)
    }
}

/// Fewest chains served per call with queued I/O (see [`queued_part`]).
const PART_MIN: u32 = 16;

/// The chains one call serves with queued I/O when `pending` are
/// available: half of them, at least [`PART_MIN`]. The call completes
/// what the backend finished and notifies (§2.7.10) before it takes the
/// rest (`Served::again`), so a driver woken by the first part refills the
/// ring while the backend works through the second, where one call per
/// batch would leave each side waiting for the other. (Page-cache reads
/// finish inside the submitting system call: without parts the driver
/// would hear of nothing until the whole batch is done.)
fn queued_part(pending: u16) -> u32 {
    (u32::from(pending) / 2).max(PART_MIN)
}

/// The record for queued request `tag`, if it is free. A head the driver
/// made available again while its request is still queued (its descriptors
/// are the device's until used) finds it taken: that request is served
/// synchronously, and the queued one keeps its record.
fn free_slot(queued: &mut [Option<Queued>], tag: u64) -> Option<&mut Option<Queued>> {
    queued
        .get_mut((tag & 0xffff) as usize)
        .filter(|slot| slot.is_none())
}

/// Completes every request in `tags` with `result`, counting completions
/// into `served` and keeping the first queue error in `first`.
#[allow(clippy::too_many_arguments)]
fn finish_all<M: GuestMemory>(
    mem: &M,
    stats: &mut BlkStats,
    flush_failed: &mut bool,
    queues: &mut [Option<QueueState>],
    tags: &[u64],
    result: Result<(), Fail>,
    served: &mut Served,
    first: &mut Option<DeviceError>,
) {
    for &t in tags {
        match finish_queued(mem, stats, flush_failed, queues, t, result) {
            Ok(true) => served.completed += 1,
            Ok(false) => {}
            Err(err) => {
                first.get_or_insert(err);
            }
        }
    }
}

/// The tag of the one flush in the backend's queue; the FLUSH requests it
/// answers are in [`Engine::flush_batch`].
const FLUSH_TAG: u64 = u64::MAX;

/// Completes the queued request `tag` (queue index above bit 16, head
/// below) with `result`: counters, status byte, used entry.
/// `Ok(false)` when the tag names no queued request (its queue was reset).
fn finish_queued<M: GuestMemory>(
    mem: &M,
    stats: &mut BlkStats,
    flush_failed: &mut bool,
    queues: &mut [Option<QueueState>],
    tag: u64,
    result: Result<(), Fail>,
) -> Result<bool, DeviceError> {
    let index = (tag >> 16) as u16;
    let head = tag as u16;
    let Some(qs) = queues.get_mut(usize::from(index)).and_then(Option::as_mut) else {
        return Ok(false);
    };
    let Some(job) = qs.queued.get_mut(usize::from(head)).and_then(Option::take) else {
        return Ok(false);
    };
    let st = match result {
        Ok(()) => {
            match job.kind {
                QueuedKind::Read => stats.bytes_read += job.bytes,
                QueuedKind::Write => stats.bytes_written += job.bytes,
                QueuedKind::Flush => {}
            }
            status::OK
        }
        Err(f) => {
            f.count(stats);
            if job.kind == QueuedKind::Flush {
                // Sticky, as for a synchronous flush (issue 16, finding 4).
                *flush_failed = true;
            }
            f.status()
        }
    };
    // A read's buffers count as written whatever the status, as on the
    // synchronous path.
    let len = match job.kind {
        QueuedKind::Read => job.bytes as u32 + 1,
        _ => 1,
    };
    let _ = mem.write(job.status, &[st]);
    qs.queue
        .add_used(mem, head, len)
        .map_err(|err| DeviceError::Queue { queue: index, err })?;
    qs.dirty = true;
    Ok(true)
}

impl<B: BlockBackend, M: GuestMemory> Blk<B, M> {
    /// A block device on `backend`, serving guest memory `mem`, as `cfg`
    /// says; the capacity, block size and read-only flag come from the
    /// backend.
    pub fn new(backend: B, mem: M, cfg: BlkConfig) -> Result<Self, BlkConfigError> {
        if cfg.serial.len() > SERIAL_LEN {
            return Err(BlkConfigError::SerialTooLong {
                len: cfg.serial.len(),
            });
        }
        if cfg.num_queues == 0 {
            return Err(BlkConfigError::NoQueues);
        }
        if cfg.queue_size == 0 || !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(BlkConfigError::BadQueueSize {
                size: cfg.queue_size,
            });
        }
        if cfg.seg_max == 0 {
            return Err(BlkConfigError::NoSegments);
        }
        if cfg.size_max != 0 && u64::from(cfg.size_max) < SECTOR_SIZE {
            return Err(BlkConfigError::SizeMaxTooSmall {
                size_max: cfg.size_max,
            });
        }
        if cfg.discard && cfg.discard_unmap && !backend.supports_discard() {
            return Err(BlkConfigError::BackendUnsupported { what: "discard" });
        }
        if cfg.write_zeroes && !backend.supports_write_zeroes() {
            return Err(BlkConfigError::BackendUnsupported {
                what: "write zeroes",
            });
        }
        if (cfg.discard || cfg.write_zeroes) && (cfg.max_dwz_sectors == 0 || cfg.max_dwz_seg == 0) {
            return Err(BlkConfigError::ZeroDiscardLimit);
        }
        if cfg.max_dwz_seg > MAX_DWZ_SEG {
            return Err(BlkConfigError::TooManyDwzSegments {
                max_dwz_seg: cfg.max_dwz_seg,
            });
        }
        let bs = backend.block_size();
        if !bs.is_power_of_two() || u64::from(bs) < SECTOR_SIZE {
            return Err(BlkConfigError::BadBlockSize { size: bs });
        }
        if !backend.size().is_multiple_of(SECTOR_SIZE) {
            return Err(BlkConfigError::BadDiskSize {
                size: backend.size(),
            });
        }
        let mut f = BlkFeatures::SEG_MAX
            | BlkFeatures::BLK_SIZE
            | BlkFeatures::FLUSH
            | BlkFeatures::TOPOLOGY
            | BlkFeatures::CONFIG_WCE;
        if cfg.size_max != 0 {
            f |= BlkFeatures::SIZE_MAX;
        }
        if cfg.geometry.is_some() {
            f |= BlkFeatures::GEOMETRY;
        }
        if backend.read_only() {
            f |= BlkFeatures::RO;
        }
        if cfg.num_queues > 1 {
            f |= BlkFeatures::MQ;
        }
        if cfg.discard {
            f |= BlkFeatures::DISCARD;
        }
        if cfg.write_zeroes {
            f |= BlkFeatures::WRITE_ZEROES;
        }
        let offered = f.bits()
            | (TransportFeatures::VERSION_1
                | TransportFeatures::RING_INDIRECT_DESC
                | TransportFeatures::RING_EVENT_IDX)
                .bits();
        let max_sizes = alloc::vec![cfg.queue_size; usize::from(cfg.num_queues)];
        let queued = cfg.queued_io && backend.queue_depth() > 0;
        Ok(Blk {
            engine: Engine {
                queued,
                owed_interrupt: false,
                polling: false,
                flushing: false,
                flush_batch: Vec::new(),
                flush_waiters: Vec::new(),
                backend,
                mem,
                writeback: u8::from(cfg.writeback),
                cfg,
                offered,
                features: 0,
                stats: BlkStats::default(),
                dwz_list: Vec::new(),
                flush_failed: false,
            },
            queues: Vec::new(),
            max_sizes,
        })
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        self.engine.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.engine.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.engine.backend
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &BlkConfig {
        &self.engine.cfg
    }

    /// Whether the device runs the disk in writeback mode now (§5.2.5.1).
    pub fn writeback(&self) -> bool {
        self.engine.writeback_effective()
    }

    /// Takes what the backend's queue finished (with `wait`, all it
    /// holds), completes those chains, and publishes every queue that has
    /// new used entries, counting into `served`.
    fn reap(&mut self, wait: bool, served: &mut Served) -> Result<(), DeviceError> {
        let mut first = None;
        let e = &mut self.engine;
        while e.queued {
            // A failed submission stays queued in the ring and is retried
            // by the next call (hosts call `backend_ready` at least every
            // tick while the device is active).
            let _ = e.backend.submit();
            let queues = &mut self.queues;
            let (mem, stats, flush_failed) = (&e.mem, &mut e.stats, &mut e.flush_failed);
            let (flushing, batch) = (&mut e.flushing, &mut e.flush_batch);
            e.backend.complete(wait, &mut |tag, r| {
                let mut r = r.map_err(|err| backend_fail(&err));
                let tags: &[u64] = if tag == FLUSH_TAG {
                    *flushing = false;
                    if r.is_ok() && *flush_failed {
                        // Success after a failure proves nothing (sticky).
                        r = Err(Fail::Backend);
                    }
                    batch
                } else {
                    core::slice::from_ref(&tag)
                };
                finish_all(
                    mem,
                    stats,
                    flush_failed,
                    queues,
                    tags,
                    r,
                    served,
                    &mut first,
                );
            });
            if e.flushing || e.flush_waiters.is_empty() {
                break;
            }
            // The flush in the queue finished: one more answers those that
            // waited for it, or, if it cannot be queued, a synchronous one.
            // SAFETY: a flush lends no memory.
            let started = !e.flush_failed
                && matches!(
                    unsafe { e.backend.start(FLUSH_TAG, QueuedOp::Flush) },
                    Ok(true)
                );
            core::mem::swap(&mut e.flush_batch, &mut e.flush_waiters);
            e.flush_waiters.clear();
            if started {
                e.flushing = true;
                continue;
            }
            let r = e.flush_backend();
            let (mem, stats, flush_failed) = (&e.mem, &mut e.stats, &mut e.flush_failed);
            let queues = &mut self.queues;
            finish_all(
                mem,
                stats,
                flush_failed,
                queues,
                &e.flush_batch,
                r,
                served,
                &mut first,
            );
            e.flush_batch.clear();
            break;
        }
        for (i, qs) in self.queues.iter_mut().enumerate() {
            if let Some(qs) = qs.as_mut().filter(|q| q.dirty) {
                match self.engine.publish(qs, i as u16) {
                    Ok(true) => served.interrupt_queue(i as u16),
                    Ok(false) => {}
                    Err(err) => {
                        first.get_or_insert(err);
                    }
                }
            }
        }
        if core::mem::take(&mut self.engine.owed_interrupt) {
            served.interrupt_all();
        }
        first.map_or(Ok(()), Err)
    }

    /// Waits for everything in the backend's queue and drops the results:
    /// the chains go with their queues (reset). Only a failed flush is
    /// remembered, as it must be (sticky).
    fn discard_queued(&mut self) {
        let e = &mut self.engine;
        e.flushing = false;
        e.flush_batch.clear();
        e.flush_waiters.clear();
        if e.backend.in_flight() == 0 {
            return;
        }
        let flush_failed = &mut e.flush_failed;
        e.backend.complete(true, &mut |tag, r| {
            if tag == FLUSH_TAG && r.is_err() {
                *flush_failed = true;
            }
        });
    }

    /// Applies the cache mode to the backend; switching to writethrough
    /// first completes every queued request, then flushes, so nothing
    /// cached stays volatile.
    fn apply_cache_mode(&mut self) {
        let wb = self.engine.writeback_effective();
        if !wb && self.engine.backend.write_cache() {
            let mut served = Served::default();
            // A configuration write cannot notify: the next call does.
            let _ = self.reap(true, &mut served);
            if served.interrupt {
                self.engine.owed_interrupt = true;
            }
            // A config write has no status to fail: the failure is kept
            // (sticky) and every later write and FLUSH reports it.
            let _ = self.engine.flush_backend();
        }
        self.engine.backend.set_write_cache(wb);
    }
}

impl<B: BlockBackend, M: GuestMemory> VirtioDevice for Blk<B, M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        alloc::vec![
            ("reads", s.reads),
            ("writes", s.writes),
            ("flushes", s.flushes),
            ("discards", s.discards),
            ("write_zeroes", s.write_zeroes),
            ("get_ids", s.get_ids),
            ("unsupported", s.unsupported),
            ("bytes_read", s.bytes_read),
            ("bytes_written", s.bytes_written),
            ("err_no_status", s.err_no_status),
            ("err_bad_header", s.err_bad_header),
            ("err_out_of_range", s.err_out_of_range),
            ("err_backend", s.err_backend),
        ]
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Blk
    }

    fn device_features(&self) -> u64 {
        self.engine.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.engine.config_bytes();
        crate::device::read_config_bytes(&c, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // §5.2.5: only `writeback` is writable, and only with CONFIG_WCE
        // negotiated (known from FEATURES_OK on, `features_ok`); a write
        // otherwise changes nothing.
        if offset != CONFIG_WRITEBACK
            || data.len() != 1
            || !self.engine.negotiated(BlkFeatures::CONFIG_WCE)
        {
            return;
        }
        self.engine.writeback = u8::from(data[0] != 0);
        if !self.queues.is_empty() {
            self.apply_cache_mode();
        }
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn features_ok(&mut self, features: u64) {
        // §5.2.5.1: the driver reads `writeback` after FEATURES_OK, so its
        // negotiated value holds from then, not only from DRIVER_OK.
        self.engine.features = features & self.engine.offered;
        self.engine.settle_writeback();
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        let mut states = Vec::with_capacity(self.max_sizes.len());
        for (i, _) in self.max_sizes.iter().enumerate() {
            let index = i as u16;
            let q = queues.get(i).and_then(|c| c.device_queue(features));
            let Some(q) = q else {
                // §5.2.3 MQ: the driver may use fewer queues; queue 0 is
                // needed.
                if i == 0 {
                    return Err(DeviceError::QueueNotReady { queue: 0 });
                }
                states.push(None);
                continue;
            };
            q.layout()
                .check_memory(&self.engine.mem)
                .map_err(|err| DeviceError::QueueNotInMemory { queue: index, err })?;
            let seg_max = self.engine.cfg.seg_max as usize;
            let pieces = Vec::with_capacity(usize::from(q.size()).max(seg_max + 2));
            let iov = IoVec(Vec::with_capacity(seg_max.max(MAX_SEGMENTS)));
            let queued = if self.engine.queued {
                alloc::vec![None; usize::from(q.size())]
            } else {
                Vec::new()
            };
            states.push(Some(QueueState {
                queue: q,
                pieces,
                iov,
                queued,
                dirty: false,
            }));
        }
        self.engine.features = features & self.engine.offered;
        self.engine.settle_writeback();
        // Every FLUSH of every queue may wait for the flush in the queue.
        let heads: usize = states.iter().flatten().map(|q| q.queued.len()).sum();
        for v in [&mut self.engine.flush_batch, &mut self.engine.flush_waiters] {
            v.clear();
            v.reserve(heads);
        }
        self.queues = states;
        self.apply_cache_mode();
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if usize::from(queue) >= self.max_sizes.len() {
            return Err(DeviceError::NoSuchQueue { queue });
        }
        if self.queues.is_empty() {
            return Err(DeviceError::NotActivated);
        }
        let qs = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::QueueNotReady { queue })?;
        let result = self.engine.serve(qs, queue);
        let mut served = result.as_ref().copied().unwrap_or_default();
        // What completed is published even when the ring broke.
        let reaped = self.reap(false, &mut served);
        result?;
        reaped?;
        Ok(served)
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        if !self.queues.is_empty() {
            self.reap(false, &mut served)?;
        }
        Ok(served)
    }

    /// While the transport polls, serving leaves notifications off; when it
    /// stops, every live queue asks for notifications again and is served
    /// if chains arrived meanwhile (§2.7.10).
    fn set_polling(&mut self, on: bool) -> Option<Result<Served, DeviceError>> {
        self.engine.polling = on;
        let mut served = Served::default();
        if on || self.queues.is_empty() {
            return Some(Ok(served));
        }
        // Every queue asks again, even after another's error: a queue left
        // quiet would wait for a poll that no longer comes.
        let mut first = None;
        for i in 0..self.queues.len() {
            let index = i as u16;
            let Some(qs) = self.queues[i].as_mut() else {
                continue;
            };
            match qs.queue.enable_notification(&self.engine.mem) {
                Ok(false) => {}
                Ok(true) => match self.queue_notify(index) {
                    Ok(s) => served.merge(s),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                },
                Err(err) => {
                    first.get_or_insert(DeviceError::Queue { queue: index, err });
                }
            }
        }
        Some(first.map_or(Ok(served), Err))
    }

    /// Waits for every request in the backend's queue and completes it.
    fn quiesce(&mut self) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        if !self.queues.is_empty() {
            self.reap(true, &mut served)?;
        }
        Ok(served)
    }

    fn reset(&mut self) {
        // The backend may still be moving bytes to or from guest memory
        // the transport is about to release or reuse.
        self.discard_queued();
        self.queues.clear();
        self.engine.polling = false;
        self.engine.features = 0;
        self.engine.writeback = u8::from(self.engine.cfg.writeback);
    }

    /// The queue goes first, then the backend's queue is waited for: what
    /// it finishes for this queue finds no queue and is dropped; other
    /// queues' requests complete as usual.
    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        let Some(slot) = self.queues.get_mut(usize::from(queue)) else {
            return Ok(served);
        };
        if slot.take().is_some() && self.engine.backend.in_flight() > 0 {
            self.reap(true, &mut served)?;
        }
        Ok(served)
    }

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        Some(
            self.queues
                .get(usize::from(queue))?
                .as_ref()?
                .queue
                .next_avail(),
        )
    }

    /// The next available index: a request is completed in the
    /// notification that popped it, or, with `queued_io`, by the backend's
    /// queue; while one is there (until [`VirtioDevice::quiesce`]) the
    /// position is not known.
    fn queue_position(&self, queue: u16) -> Option<u16> {
        let qs = self.queues.get(usize::from(queue))?.as_ref()?;
        if qs.queued.iter().any(Option::is_some) {
            return None;
        }
        Some(qs.queue.next_avail())
    }

    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let qs = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::PositionUnsupported { queue })?;
        qs.queue.set_position(next_avail, next_avail);
        Ok(())
    }
}
