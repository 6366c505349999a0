//! Raw virtio-mmio and hand-written split rings, for lifecycle and
//! hostile-guest scenarios (spec §2.7 split virtqueues, §4.2.2 virtio-mmio,
//! legacy §4.2.4): a guest that writes any register value, any descriptor
//! and any ring index, to see what a device does with input a correct
//! driver never produces.
//!
//! - [`RawDevice`]: one virtio-mmio slot at the register level, through
//!   virtio-core's [`MmioDriver`] accessors where they fit and raw 32-bit
//!   accesses where they would refuse (any status, any feature bits, queue
//!   addresses anywhere, version 2 and legacy version 1 alike).
//! - [`RawQueue`]: a split ring in guest RAM written by hand: descriptors
//!   with any `addr`/`len`/`flags`/`next`, available entries and index of
//!   any value, used ring read back. [`DescTable`]: an indirect table.
//! - [`Scratch`]: buffers surrounded by canaries, to catch a device writing
//!   where it was not given a device-writable buffer.
//! - [`Case`] and [`run_case`]: one malformed-ring scenario as a table
//!   entry; the runner negotiates, sets up the queue, lets the case write
//!   its rings, notifies, observes ([`Outcome`]), checks canaries and
//!   resets. Later device types add cases, not plumbing.
//!
//! Memory is the static [`RawMemory`] (`.bss`, page-aligned; guest RAM is
//! identity-mapped, so an address is a pointer). Nothing here waits without
//! a bound or trusts what the device writes. It deliberately does no
//! interrupt handling (the guest polls) and no packed rings.

use core::cell::UnsafeCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering, fence};

use guest_driver::PoolHal;
use guest_driver::VolatileMmio;
use guest_driver::cmdline::MmioSlot;
use virtio_core::GuestAddress;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::{DriverError, InterruptStatus, MmioDriver, MmioVersion, regs};
use virtio_core::split::layout::{DescFlags, Descriptor, QueueLayout, QueueSize, UsedElem};
use virtio_core::status::DeviceStatus;

use crate::cpu::rdtsc;
use crate::layout::{IDENTITY_MAP_END, UNCACHED_START};

/// Bytes of a page (the legacy `GuestPageSize` this kit programs, §4.2.4).
pub const PAGE: usize = 4096;

/// The largest queue a [`RawQueue`] can hold: its rings must fit the two
/// ring pages in the legacy layout (§2.7.2: descriptors and available ring,
/// then the used ring at the next page).
pub const MAX_RAW_QUEUE: u16 = 128;

/// Pages of the ring area (see [`MAX_RAW_QUEUE`]).
pub const RING_PAGES: usize = 2;
/// Pages of the indirect-table area: 256 descriptors.
pub const TABLE_PAGES: usize = 1;
/// Pages of the canary-guarded buffer area.
pub const SCRATCH_PAGES: usize = 2;
/// Pages of the DMA pool handed to `guest-driver` for clean
/// (re-)initialisations.
pub const POOL_PAGES: usize = 16;
const ARENA_PAGES: usize = RING_PAGES + TABLE_PAGES + SCRATCH_PAGES + POOL_PAGES;

/// The byte [`Scratch`] fills its pages with: any other value outside a
/// device-writable buffer was written by the device.
pub const CANARY: u8 = 0xa5;

/// Bytes of canary left between two [`Scratch`] buffers.
pub const CANARY_GAP: u64 = 64;

/// Device-writable buffers one [`Scratch`] tracks.
pub const SCRATCH_BUFFERS: usize = 32;

/// How many `Status` reads a reset may take to read back 0 (§2.4).
pub const RESET_READS: u32 = 100_000;

/// How long [`observe`] waits for a device that does nothing, in TSC
/// cycles (about a tenth of a second at the usual GHz rates). The loop
/// deliberately has no `pause`: under KVM a pause loop exits to the host.
pub const OBSERVE_CYCLES: u64 = 300_000_000;
/// Looks at the used index between two `Status` reads in [`observe`].
pub const LOOKS_PER_STATUS: u32 = 64;

/// Pages of `.bss` shared by the raw kit, zeroed at boot.
#[repr(C, align(4096))]
struct Arena(UnsafeCell<[[u8; PAGE]; ARENA_PAGES]>);

// SAFETY: one vCPU, no interrupt handler touches it, and `TAKEN` hands the
// pages out once; afterwards only raw pointers reach them.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([[0; PAGE]; ARENA_PAGES]));
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why a raw operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawError {
    /// The static memory was already taken.
    MemoryTaken,
    /// An access at `offset` (of `len` bytes) falls outside a region, or is
    /// misaligned for its width.
    OutOfRegion {
        /// Offset into the region.
        offset: u64,
        /// Width of the access.
        len: u64,
    },
    /// The slot is not in the identity map's uncached MMIO range.
    SlotNotMapped {
        /// The slot's base.
        base: u64,
    },
    /// The slot holds no usable virtio-mmio device (virtio-core's probe).
    Probe(DriverError),
    /// No slot on the command line holds a device of this type.
    NoDevice(DeviceType),
    /// `Status` did not read back 0 within [`RESET_READS`] reads (§2.4).
    ResetTimeout {
        /// The last value read.
        status: u8,
    },
    /// A status write did not read back (§3.1.1: the device refused it).
    StatusRefused {
        /// What was written.
        wrote: u8,
        /// What was read back.
        read: u8,
    },
    /// A version 2 device does not offer `VIRTIO_F_VERSION_1` (§6.1).
    NoVersion1,
    /// `QueueNumMax` of the queue is 0 (§4.2.3.2): it does not exist.
    NoQueue {
        /// The queue.
        queue: u16,
    },
    /// The queue size is not a power of two up to [`MAX_RAW_QUEUE`].
    BadQueueSize {
        /// The size asked for.
        size: u32,
    },
    /// [`Scratch`] has no room for another buffer.
    ScratchFull,
    /// A byte outside every device-writable buffer changed: the device
    /// wrote where it was not allowed (§2.7.4: it writes device-writable
    /// buffers only).
    StrayWrite {
        /// Guest-physical address of the first changed byte.
        addr: u64,
        /// Its value.
        value: u8,
    },
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RawError::MemoryTaken => f.write_str("the raw kit's memory is already taken"),
            RawError::OutOfRegion { offset, len } => write!(
                f,
                "access of {len} bytes at offset {offset:#x} is outside its region or misaligned"
            ),
            RawError::SlotNotMapped { base } => {
                write!(
                    f,
                    "virtio-mmio slot {base:#x} is not in the uncached identity map"
                )
            }
            RawError::Probe(e) => write!(f, "probe: {e}"),
            RawError::NoDevice(ty) => write!(f, "no {ty:?} device on the command line"),
            RawError::ResetTimeout { status } => write!(
                f,
                "status still {status:#04x} after {RESET_READS} reads following a reset (§2.4)"
            ),
            RawError::StatusRefused { wrote, read } => {
                write!(f, "status write {wrote:#04x} read back as {read:#04x}")
            }
            RawError::NoVersion1 => {
                f.write_str("version 2 device does not offer VIRTIO_F_VERSION_1 (§6.1)")
            }
            RawError::NoQueue { queue } => {
                write!(f, "queue {queue} does not exist (QueueNumMax 0)")
            }
            RawError::BadQueueSize { size } => write!(
                f,
                "queue size {size} is not a power of two up to {MAX_RAW_QUEUE}"
            ),
            RawError::ScratchFull => f.write_str("no room left in the scratch buffers"),
            RawError::StrayWrite { addr, value } => write!(
                f,
                "device wrote {value:#04x} at {addr:#x}, outside every device-writable buffer (§2.7.4)"
            ),
        }
    }
}

impl core::error::Error for RawError {}

impl From<DriverError> for RawError {
    fn from(e: DriverError) -> Self {
        RawError::Probe(e)
    }
}

/// A run of identity-mapped guest RAM owned by the raw kit, reached only by
/// volatile accesses (the device may read or write it at any time).
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: u64,
}

macro_rules! region_rw {
    ($read:ident, $write:ident, $t:ty) => {
        #[doc = concat!("Reads a little-endian `", stringify!($t), "` at `offset` (naturally aligned).")]
        pub fn $read(&self, offset: u64) -> Result<$t, RawError> {
            let p = self.at(offset, size_of::<$t>() as u64)?;
            // SAFETY: in the region and aligned per `at`; the region is
            // valid for the kit's lifetime and no reference covers it.
            Ok(<$t>::from_le(unsafe { p.cast::<$t>().read_volatile() }))
        }

        #[doc = concat!("Writes a little-endian `", stringify!($t), "` at `offset` (naturally aligned).")]
        pub fn $write(&self, offset: u64, value: $t) -> Result<(), RawError> {
            let p = self.at(offset, size_of::<$t>() as u64)?;
            // SAFETY: as for the read.
            unsafe { p.cast::<$t>().write_volatile(value.to_le()) };
            Ok(())
        }
    };
}

impl Region {
    /// The guest-physical address of the first byte (identity map).
    pub fn addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region has no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, offset: u64, width: u64) -> Result<*mut u8, RawError> {
        let err = RawError::OutOfRegion { offset, len: width };
        let end = offset.checked_add(width).ok_or(err)?;
        if end > self.len || !offset.is_multiple_of(width) {
            return Err(err);
        }
        let off = usize::try_from(offset).map_err(|_| err)?;
        Ok(self.base.as_ptr().wrapping_add(off))
    }

    region_rw!(read_u8, write_u8, u8);
    region_rw!(read_u16, write_u16, u16);
    region_rw!(read_u32, write_u32, u32);
    region_rw!(read_u64, write_u64, u64);

    /// Writes `byte` over the whole region (eight bytes per access: every
    /// guest memory access is costly under the kvm_pvm host).
    pub fn fill(&self, byte: u8) {
        let word = u64::from_ne_bytes([byte; 8]);
        let words = self.len / 8;
        for w in 0..words {
            // Cannot fail: every word is inside the region and aligned
            // (the region is page-aligned).
            let _ = self.write_u64(w * 8, word);
        }
        for off in words * 8..self.len {
            // Cannot fail: every offset is below `len`.
            let _ = self.write_u8(off, byte);
        }
    }

    /// Writes a descriptor (§2.7.5) at `offset`, every field as given.
    pub fn write_desc(&self, offset: u64, d: &Descriptor) -> Result<(), RawError> {
        self.at(offset, Descriptor::SIZE)?;
        self.write_u64(offset, d.addr().raw())?;
        self.write_u32(offset + 8, d.len())?;
        self.write_u16(offset + 12, d.raw_flags())?;
        self.write_u16(offset + 14, d.next())
    }
}

/// The kit's static memory, split by use; taken once with [`RawMemory::take`].
#[derive(Debug)]
pub struct RawMemory {
    /// Ring pages for one [`RawQueue`].
    pub rings: Region,
    /// A page for an indirect table ([`DescTable`]).
    pub table: Region,
    /// Buffer pages for [`Scratch`].
    pub scratch: Region,
    /// A DMA pool for `guest-driver` drivers (clean initialisations).
    pub pool: PoolHal<POOL_PAGES>,
}

impl RawMemory {
    /// The kit's memory, once per boot (`None` afterwards).
    pub fn take() -> Option<RawMemory> {
        if TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        let base = ARENA.0.get().cast::<u8>();
        let region = |first: usize, pages: usize| Region {
            // SAFETY: `first + pages <= ARENA_PAGES`, so the pointer stays
            // inside the arena, which is not null.
            base: unsafe { NonNull::new_unchecked(base.add(first * PAGE)) },
            len: (pages * PAGE) as u64,
        };
        let rings = region(0, RING_PAGES);
        let table = region(RING_PAGES, TABLE_PAGES);
        let scratch = region(RING_PAGES + TABLE_PAGES, SCRATCH_PAGES);
        let pool = region(RING_PAGES + TABLE_PAGES + SCRATCH_PAGES, POOL_PAGES);
        // SAFETY: the pool pages are the arena's, page-aligned, handed out
        // once (`TAKEN`), identity-mapped, and used by nothing else.
        let pool = unsafe { PoolHal::identity(pool.base, POOL_PAGES * PAGE) }.ok()?;
        Some(RawMemory {
            rings,
            table,
            scratch,
            pool,
        })
    }
}

/// Where a queue's rings are, as the transport is told (§4.2.2 / §4.2.4);
/// any values, valid or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueuePlacement {
    /// Version 2: `QueueNum`, the three area addresses, then `QueueReady` 1.
    Modern {
        /// `QueueNum`.
        size: u32,
        /// `QueueDesc`.
        desc: u64,
        /// `QueueDriver` (available ring).
        driver: u64,
        /// `QueueDevice` (used ring).
        device: u64,
    },
    /// Legacy: `GuestPageSize`, `QueueNum`, `QueueAlign`, `QueuePFN`.
    Legacy {
        /// `QueueNum`.
        size: u32,
        /// `GuestPageSize`.
        page_size: u32,
        /// `QueueAlign`.
        align: u32,
        /// `QueuePFN`.
        pfn: u32,
    },
}

impl QueuePlacement {
    /// The placement of `layout` on a `version` transport: the three
    /// addresses, or (legacy) the page number of its base with the page
    /// size as alignment (the layout must be `QueueLayout::legacy` at a
    /// page boundary for the device to find the same rings).
    pub fn of(layout: &QueueLayout, version: MmioVersion) -> Self {
        let size = u32::from(layout.size().get());
        match version {
            MmioVersion::Modern => QueuePlacement::Modern {
                size,
                desc: layout.desc_table().raw(),
                driver: layout.avail_ring().raw(),
                device: layout.used_ring().raw(),
            },
            MmioVersion::Legacy => QueuePlacement::Legacy {
                size,
                page_size: PAGE as u32,
                align: PAGE as u32,
                // Truncation is what the register would do with a base at
                // or above 16 TiB; callers wanting that get it.
                pfn: (layout.desc_table().raw() / PAGE as u64) as u32,
            },
        }
    }

    /// All three areas of a `size` queue at `addr` (legacy: page number of
    /// `addr`), for rings placed where they should not be.
    pub fn at(addr: u64, size: u16, version: MmioVersion) -> Self {
        let size = u32::from(size);
        match version {
            MmioVersion::Modern => QueuePlacement::Modern {
                size,
                desc: addr,
                driver: addr.wrapping_add(16 * u64::from(size)),
                device: addr.wrapping_add(PAGE as u64),
            },
            MmioVersion::Legacy => QueuePlacement::Legacy {
                size,
                page_size: PAGE as u32,
                align: PAGE as u32,
                pfn: (addr / PAGE as u64) as u32,
            },
        }
    }
}

/// One virtio-mmio device driven at the register level.
#[derive(Debug)]
pub struct RawDevice {
    slot: MmioSlot,
    drv: MmioDriver<VolatileMmio>,
}

/// Register access for `slot`, if the identity map covers it uncached.
///
/// # Safety
/// The slot must be a virtio-mmio register block (as a trusted loader's
/// command line says).
unsafe fn slot_regs(slot: &MmioSlot) -> Result<VolatileMmio, RawError> {
    let err = RawError::SlotNotMapped { base: slot.base };
    let size = usize::try_from(slot.size).map_err(|_| err)?;
    if slot.base < UNCACHED_START || slot.end() > IDENTITY_MAP_END {
        return Err(err);
    }
    let base = usize::try_from(slot.base).map_err(|_| err)?;
    let base = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(base)).ok_or(err)?;
    // SAFETY: identity-mapped uncached (checked above) and, per the
    // caller, a register block; the guest is single-threaded.
    Ok(unsafe { VolatileMmio::new(base, size) })
}

impl RawDevice {
    /// Probes `slot` (§4.2.3.1.1: magic, version, device id; nothing else).
    ///
    /// # Safety
    /// The slot must be a virtio-mmio register block (as a trusted loader's
    /// command line says), used by nothing else while this value lives
    /// except through [`driver_regs`](Self::driver_regs).
    pub unsafe fn probe(slot: MmioSlot) -> Result<Self, RawError> {
        // SAFETY: the caller's promise.
        let regs = unsafe { slot_regs(&slot) }?;
        let drv = MmioDriver::probe(regs)?;
        Ok(RawDevice { slot, drv })
    }

    /// The first device of type `ty` among the `virtio_mmio.device=`
    /// slots of `cmdline` (the loader's, trusted to name register blocks).
    pub fn find(cmdline: &str, ty: DeviceType) -> Result<Self, RawError> {
        guest_driver::cmdline::slots(cmdline)
            .find_map(|slot| {
                // SAFETY: slots on the loader's command line are register
                // blocks; the program uses one device value per slot.
                let dev = unsafe { Self::probe(slot) }.ok()?;
                (dev.device_id() == ty.id()).then_some(dev)
            })
            .ok_or(RawError::NoDevice(ty))
    }

    /// The slot.
    pub fn slot(&self) -> MmioSlot {
        self.slot
    }

    /// A second register access to the slot, for a `guest-driver` driver
    /// that takes the device over for a clean initialisation.
    ///
    /// # Safety
    /// This value must not be used while the driver built on the returned
    /// access lives (drop the driver first: it resets the device).
    pub unsafe fn driver_regs(&self) -> VolatileMmio {
        let r = self.drv.registers();
        // SAFETY: same block as `self`, which the caller leaves alone.
        unsafe { VolatileMmio::new(r.base(), r.size()) }
    }

    /// The transport version.
    pub fn version(&self) -> MmioVersion {
        self.drv.version()
    }

    /// Whether this is a version 2 transport.
    pub fn is_modern(&self) -> bool {
        self.drv.is_modern()
    }

    /// `DeviceID`.
    pub fn device_id(&self) -> u32 {
        self.drv.device_id()
    }

    /// A 32-bit read of any register (offsets in `virtio_core::mmio::regs`).
    pub fn read(&self, offset: u64) -> u32 {
        self.drv.registers().read32(offset)
    }

    /// A 32-bit write of any value to any register.
    pub fn write(&self, offset: u64, value: u32) {
        self.drv.registers().write32(offset, value)
    }

    /// `Status`, every bit as read.
    pub fn status(&self) -> DeviceStatus {
        self.drv.status()
    }

    /// Writes `Status` as given (any bits, in any order).
    pub fn set_status(&self, status: DeviceStatus) {
        self.drv.set_status(status)
    }

    /// Writes `Status` and returns what it reads back.
    pub fn write_status(&self, status: DeviceStatus) -> DeviceStatus {
        self.set_status(status);
        self.status()
    }

    /// Writes `Status` and fails unless it reads back as written.
    pub fn step_status(&self, status: DeviceStatus) -> Result<(), RawError> {
        let read = self.write_status(status);
        if read != status {
            return Err(RawError::StatusRefused {
                wrote: status.bits(),
                read: read.bits(),
            });
        }
        Ok(())
    }

    /// Resets the device (status 0) and waits for `Status` to read 0
    /// (§2.4, §4.2.2.1), at most [`RESET_READS`] reads. Returns how many
    /// reads it took.
    pub fn reset(&self) -> Result<u32, RawError> {
        self.set_status(DeviceStatus::empty());
        let mut last = 0;
        for n in 1..=RESET_READS {
            last = self.status().bits();
            if last == 0 {
                return Ok(n);
            }
            core::hint::spin_loop();
        }
        Err(RawError::ResetTimeout { status: last })
    }

    /// The offered features (§4.2.2 `DeviceFeatures`, both words).
    pub fn device_features(&self) -> u64 {
        self.drv.device_features()
    }

    /// Writes `DriverFeatures`, both words, as given.
    pub fn write_driver_features(&self, features: u64) {
        self.drv.write_driver_features(features)
    }

    /// Steps 1-6 of §3.1.1 (legacy §3.1.2) written by hand: reset,
    /// ACKNOWLEDGE, DRIVER, accept `offered & wanted` (plus
    /// `VIRTIO_F_VERSION_1` on version 2, never on legacy) and, on version
    /// 2, FEATURES_OK read back. Returns the accepted features.
    pub fn negotiate(&self, wanted: u64) -> Result<u64, RawError> {
        self.reset()?;
        let ack = DeviceStatus::ACKNOWLEDGE;
        self.step_status(ack)?;
        let drv = ack | DeviceStatus::DRIVER;
        self.step_status(drv)?;
        let offered = self.device_features();
        let v1 = TransportFeatures::VERSION_1.bits();
        let accepted = if self.is_modern() {
            if offered & v1 == 0 {
                return Err(RawError::NoVersion1);
            }
            (offered & wanted) | v1
        } else {
            offered & wanted & !v1
        };
        self.write_driver_features(accepted);
        if self.is_modern() {
            self.step_status(drv | DeviceStatus::FEATURES_OK)?;
        }
        Ok(accepted)
    }

    /// The status that [`negotiate`](Self::negotiate) leaves.
    pub fn negotiated_status(&self) -> DeviceStatus {
        let s = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        if self.is_modern() {
            s | DeviceStatus::FEATURES_OK
        } else {
            s
        }
    }

    /// Step 8 of §3.1.1: adds DRIVER_OK to what `negotiate` left, and
    /// returns the status read back (a device may refuse, or set
    /// DEVICE_NEEDS_RESET).
    pub fn driver_ok(&self) -> DeviceStatus {
        self.write_status(self.negotiated_status() | DeviceStatus::DRIVER_OK)
    }

    /// [`driver_ok`](Self::driver_ok), and if the device does not take it,
    /// a reset and [`RawError::StatusRefused`].
    pub fn driver_ok_or_reset(&self) -> Result<(), RawError> {
        let status = self.driver_ok();
        if status.contains(DeviceStatus::DRIVER_OK) {
            return Ok(());
        }
        let _ = self.reset();
        Err(RawError::StatusRefused {
            wrote: (self.negotiated_status() | DeviceStatus::DRIVER_OK).bits(),
            read: status.bits(),
        })
    }

    /// `QueueNumMax` of `queue` (selects it).
    pub fn queue_max(&self, queue: u16) -> u32 {
        self.write(regs::QUEUE_SEL, u32::from(queue));
        self.read(regs::QUEUE_NUM_MAX)
    }

    /// Selects `queue` and writes `placement` to the queue registers, with
    /// no check (§4.2.3.2, legacy §4.2.4). Version 2 ends with
    /// `QueueReady` 1. Returns `QueueReady` (legacy: `QueuePFN`) read back.
    pub fn place_queue(&self, queue: u16, placement: QueuePlacement) -> u32 {
        self.write(regs::QUEUE_SEL, u32::from(queue));
        match placement {
            QueuePlacement::Modern {
                size,
                desc,
                driver,
                device,
            } => {
                self.write(regs::QUEUE_NUM, size);
                for (low, addr) in [
                    (regs::QUEUE_DESC_LOW, desc),
                    (regs::QUEUE_DRIVER_LOW, driver),
                    (regs::QUEUE_DEVICE_LOW, device),
                ] {
                    self.write(low, addr as u32);
                    self.write(low + 4, (addr >> 32) as u32);
                }
                self.write(regs::QUEUE_READY, 1);
                self.read(regs::QUEUE_READY)
            }
            QueuePlacement::Legacy {
                size,
                page_size,
                align,
                pfn,
            } => {
                self.write(regs::GUEST_PAGE_SIZE, page_size);
                self.write(regs::QUEUE_NUM, size);
                self.write(regs::QUEUE_ALIGN, align);
                self.write(regs::QUEUE_PFN, pfn);
                self.read(regs::QUEUE_PFN)
            }
        }
    }

    /// Available buffer notification: `value` written to `QueueNotify`
    /// (normally the queue index, §4.2.3.3).
    pub fn notify(&self, value: u32) {
        self.write(regs::QUEUE_NOTIFY, value)
    }

    /// `InterruptStatus`, undefined bits dropped.
    pub fn interrupt_status(&self) -> InterruptStatus {
        self.drv.interrupt_status()
    }

    /// Acknowledges interrupt causes (§4.2.3.4).
    pub fn ack_interrupt(&self, causes: InterruptStatus) {
        self.drv.ack_interrupt(causes)
    }
}

/// A split virtqueue (§2.7) whose rings the guest writes by hand, in the
/// legacy layout (§2.7.2, page-aligned base and used ring) so that the same
/// memory serves version 2 and legacy transports.
#[derive(Debug)]
pub struct RawQueue<'m> {
    index: u16,
    layout: QueueLayout,
    mem: &'m Region,
    next_avail: u16,
}

impl<'m> RawQueue<'m> {
    /// Queue `index` of `size` entries in `rings` (zeroed first).
    pub fn new(index: u16, size: u16, rings: &'m Region) -> Result<Self, RawError> {
        let bad = RawError::BadQueueSize {
            size: u32::from(size),
        };
        if size > MAX_RAW_QUEUE {
            return Err(bad);
        }
        let qsize = QueueSize::new(u32::from(size)).map_err(|_| bad)?;
        let layout =
            QueueLayout::legacy(qsize, GuestAddress(rings.addr()), PAGE as u64).map_err(|_| bad)?;
        rings.fill(0);
        Ok(RawQueue {
            index,
            layout,
            mem: rings,
            next_avail: 0,
        })
    }

    /// The queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.layout.size().get()
    }

    /// The layout (guest-physical addresses of the three areas).
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The placement to give the transport for these rings.
    pub fn placement(&self, version: MmioVersion) -> QueuePlacement {
        QueuePlacement::of(&self.layout, version)
    }

    fn off(&self, addr: GuestAddress) -> u64 {
        addr.raw().wrapping_sub(self.mem.addr())
    }

    /// Writes descriptor `i` of the table (`i` below the size) as given.
    pub fn set_desc(&self, i: u16, d: Descriptor) -> Result<(), RawError> {
        if i >= self.size() {
            return Err(RawError::OutOfRegion {
                offset: u64::from(i) * Descriptor::SIZE,
                len: Descriptor::SIZE,
            });
        }
        self.mem.write_desc(self.off(self.layout.desc(i)), &d)
    }

    /// Writes the available ring's slot for free-running index `at` (the
    /// slot is `at` modulo the size) as `head`, any value.
    pub fn set_avail_entry(&self, at: u16, head: u16) -> Result<(), RawError> {
        self.mem
            .write_u16(self.off(self.layout.avail_slot(at)), head)
    }

    /// Writes the available ring's `flags`.
    pub fn set_avail_flags(&self, flags: u16) -> Result<(), RawError> {
        self.mem
            .write_u16(self.off(self.layout.avail_flags()), flags)
    }

    /// Publishes `idx` as the available index, any value, after a full
    /// fence (§2.7.13: entries before the index).
    pub fn set_avail_idx(&self, idx: u16) -> Result<(), RawError> {
        fence(Ordering::SeqCst);
        self.mem.write_u16(self.off(self.layout.avail_idx()), idx)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Puts `head` in the next available slot and publishes the index, as
    /// a correct driver would (§2.7.13).
    pub fn post(&mut self, head: u16) -> Result<(), RawError> {
        self.set_avail_entry(self.next_avail, head)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        self.set_avail_idx(self.next_avail)
    }

    /// The used index the device published (read after a fence).
    pub fn used_idx(&self) -> u16 {
        fence(Ordering::SeqCst);
        let idx = self.mem.read_u16(self.off(self.layout.used_idx()));
        fence(Ordering::SeqCst);
        // The offset is inside the ring pages by construction.
        idx.unwrap_or(0)
    }

    /// The used element at free-running index `at`, as the device wrote it.
    pub fn used_elem(&self, at: u16) -> UsedElem {
        let off = self.off(self.layout.used_slot(at));
        let id = self.mem.read_u32(off).unwrap_or(u32::MAX);
        let len = self.mem.read_u32(off + 4).unwrap_or(u32::MAX);
        UsedElem::new(id, len)
    }
}

/// An indirect descriptor table (§2.7.5.3) in its own page.
#[derive(Debug)]
pub struct DescTable<'m> {
    mem: &'m Region,
}

impl<'m> DescTable<'m> {
    /// A table over `mem` (zeroed first).
    pub fn new(mem: &'m Region) -> Self {
        mem.fill(0);
        DescTable { mem }
    }

    /// Guest-physical address of entry 0.
    pub fn addr(&self) -> u64 {
        self.mem.addr()
    }

    /// Entries the page holds.
    pub fn capacity(&self) -> u16 {
        u16::try_from(self.mem.len() / Descriptor::SIZE).unwrap_or(u16::MAX)
    }

    /// Writes entry `i` as given.
    pub fn set(&self, i: u16, d: Descriptor) -> Result<(), RawError> {
        self.mem.write_desc(u64::from(i) * Descriptor::SIZE, &d)
    }
}

/// Buffers carved from canary-filled pages: every byte outside the
/// device-writable buffers handed out must keep [`CANARY`].
#[derive(Debug)]
pub struct Scratch<'m> {
    mem: &'m Region,
    next: u64,
    writable: [(u64, u64); SCRATCH_BUFFERS],
    count: usize,
    /// Values the driver wrote into device-readable buffers (offset,
    /// width in bytes, little-endian value), which [`check`](Self::check)
    /// expects instead of the canary.
    written: [(u64, u64, u64); SCRATCH_BUFFERS],
    written_count: usize,
}

impl<'m> Scratch<'m> {
    /// Scratch over `mem`, filled with the canary.
    pub fn new(mem: &'m Region) -> Self {
        mem.fill(CANARY);
        Scratch {
            mem,
            next: CANARY_GAP,
            writable: [(0, 0); SCRATCH_BUFFERS],
            count: 0,
            written: [(0, 0, 0); SCRATCH_BUFFERS],
            written_count: 0,
        }
    }

    /// A `len`-byte buffer (16-aligned, canaries around it); if
    /// `device_writable`, the device may change it, else it must not.
    /// Returns its guest-physical address.
    pub fn buffer(&mut self, len: u64, device_writable: bool) -> Result<u64, RawError> {
        let start = self.next.next_multiple_of(16);
        let end = start.checked_add(len).ok_or(RawError::ScratchFull)?;
        if end.saturating_add(CANARY_GAP) > self.mem.len() {
            return Err(RawError::ScratchFull);
        }
        if device_writable {
            let slot = self
                .writable
                .get_mut(self.count)
                .ok_or(RawError::ScratchFull)?;
            *slot = (start, end);
            self.count += 1;
        }
        self.next = end + CANARY_GAP;
        Ok(self.mem.addr() + start)
    }

    /// Writes a little-endian `u32` at guest-physical `addr` (a buffer of
    /// this scratch, e.g. a request header), naturally aligned.
    pub fn write_u32(&mut self, addr: u64, value: u32) -> Result<(), RawError> {
        let off = addr.wrapping_sub(self.mem.addr());
        self.record(off, 4, value.into())?;
        self.mem.write_u32(off, value)
    }

    /// Writes a little-endian `u64` at guest-physical `addr`, naturally
    /// aligned.
    pub fn write_u64(&mut self, addr: u64, value: u64) -> Result<(), RawError> {
        let off = addr.wrapping_sub(self.mem.addr());
        self.record(off, 8, value)?;
        self.mem.write_u64(off, value)
    }

    fn record(&mut self, off: u64, width: u64, value: u64) -> Result<(), RawError> {
        let slot = self
            .written
            .get_mut(self.written_count)
            .ok_or(RawError::ScratchFull)?;
        *slot = (off, width, value);
        self.written_count += 1;
        Ok(())
    }

    /// Checks that only device-writable buffers changed.
    pub fn check(&self) -> Result<(), RawError> {
        let given = &self.writable[..self.count];
        let written = &self.written[..self.written_count];
        let canaries = u64::from_ne_bytes([CANARY; 8]);
        let len = self.mem.len();
        // A word at a time (every guest memory access is costly under the
        // kvm_pvm host): eight canary bytes no buffer or driver write
        // covers are fine as they are; other words go byte by byte.
        for word in (0..len).step_by(8) {
            let end = (word + 8).min(len);
            let touched = given.iter().any(|&(s, e)| s < end && word < e)
                || written.iter().any(|&(o, w, _)| o < end && word < o + w);
            if !touched && end - word == 8 && self.mem.read_u64(word)? == canaries {
                continue;
            }
            for off in word..end {
                self.check_byte(off, given, written)?;
            }
        }
        Ok(())
    }

    /// Checks one byte: inside a device-writable buffer anything goes,
    /// elsewhere it holds what the driver wrote there or the canary.
    fn check_byte(
        &self,
        off: u64,
        given: &[(u64, u64)],
        written: &[(u64, u64, u64)],
    ) -> Result<(), RawError> {
        if given.iter().any(|&(s, e)| (s..e).contains(&off)) {
            return Ok(());
        }
        let value = self.mem.read_u8(off)?;
        let expected = written
            .iter()
            .rev()
            .find(|&&(o, w, _)| (o..o + w).contains(&off))
            .map_or(CANARY, |&(o, _, v)| (v >> (8 * (off - o))) as u8);
        if value != expected {
            return Err(RawError::StrayWrite {
                addr: self.mem.addr() + off,
                value,
            });
        }
        Ok(())
    }

    /// Bytes of the device-writable buffer at `addr` that no longer hold
    /// the canary (a hint of how much the device wrote).
    pub fn changed(&self, addr: u64, len: u64) -> u64 {
        let start = addr.wrapping_sub(self.mem.addr());
        (start..start.saturating_add(len))
            .filter(|&off| self.mem.read_u8(off).is_ok_and(|v| v != CANARY))
            .count() as u64
    }
}

/// What a device did with what a case gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `Status` has DEVICE_NEEDS_RESET (§2.1.2).
    NeedsReset,
    /// The device returned a chain (§2.7.8): the used element.
    Used(UsedElem),
    /// Nothing within the bounded wait.
    Ignored,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::NeedsReset => f.write_str("needs_reset"),
            Outcome::Used(e) => write!(f, "used len={} id={}", e.len(), e.id()),
            Outcome::Ignored => f.write_str("ignored"),
        }
    }
}

/// Watches `queue` for a used element past `seen` and `dev` for
/// DEVICE_NEEDS_RESET, for at most [`OBSERVE_CYCLES`] TSC cycles.
pub fn observe(dev: &RawDevice, queue: &RawQueue<'_>, seen: u16) -> Outcome {
    let start = rdtsc();
    loop {
        for _ in 0..LOOKS_PER_STATUS {
            if queue.used_idx() != seen {
                return Outcome::Used(queue.used_elem(seen));
            }
        }
        if dev.status().contains(DeviceStatus::DEVICE_NEEDS_RESET) {
            return Outcome::NeedsReset;
        }
        if rdtsc().wrapping_sub(start) > OBSERVE_CYCLES {
            return Outcome::Ignored;
        }
    }
}

/// What a case's `build` gets: the device (negotiated, queue placed, not
/// yet DRIVER_OK'd unless the case wants), the queue, an indirect table,
/// canary-guarded buffers and facts about the machine.
#[derive(Debug)]
pub struct Setup<'a, 'm> {
    /// The device.
    pub dev: &'a RawDevice,
    /// The queue under test (rings zeroed, placed, DRIVER_OK set).
    pub queue: &'a mut RawQueue<'m>,
    /// An indirect table page (zeroed).
    pub table: &'a DescTable<'m>,
    /// Canary-guarded buffers.
    pub scratch: &'a mut Scratch<'m>,
    /// The accepted features.
    pub features: u64,
    /// Whether a well-formed buffer of this queue is device-writable
    /// (from [`Case::device_writes`]).
    pub device_writes: bool,
    /// One past the last byte of RAM (the PVH memory map's highest RAM end).
    pub ram_end: u64,
}

impl Setup<'_, '_> {
    /// A `len`-byte device-writable scratch buffer.
    pub fn writable(&mut self, len: u64) -> Result<u64, RawError> {
        self.scratch.buffer(len, true)
    }

    /// A `len`-byte device-readable scratch buffer (the device must not
    /// write it).
    pub fn readable(&mut self, len: u64) -> Result<u64, RawError> {
        self.scratch.buffer(len, false)
    }

    /// A `len`-byte scratch buffer in the queue's normal direction, and
    /// the descriptor flags that say so (`VIRTQ_DESC_F_WRITE` or none).
    pub fn normal(&mut self, len: u64) -> Result<(u64, u16), RawError> {
        let addr = self.scratch.buffer(len, self.device_writes)?;
        Ok((addr, self.normal_flags()))
    }

    /// `VIRTQ_DESC_F_WRITE` if the queue's buffers are device-writable,
    /// else 0 (§2.7.5).
    pub fn normal_flags(&self) -> u16 {
        if self.device_writes {
            DescFlags::WRITE.bits()
        } else {
            0
        }
    }

    /// An address no RAM backs: 1 TiB, or the first page above the end of
    /// RAM if RAM reaches that far.
    pub fn outside_ram(&self) -> u64 {
        outside_ram(self.ram_end)
    }
}

/// An address no RAM backs: 1 TiB, or the first page above `ram_end`.
pub fn outside_ram(ram_end: u64) -> u64 {
    (1u64 << 40).max(ram_end.next_multiple_of(PAGE as u64))
}

/// Shorthand for a descriptor with raw flags (`VIRTQ_DESC_F_*` bits, any
/// value).
pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor::new(
        GuestAddress(addr),
        len,
        DescFlags::from_bits_retain(flags),
        next,
    )
}

/// One malformed-ring scenario: a table entry.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Short name (`hostile.case=<name>`).
    pub name: &'static str,
    /// The spec rule the driver breaks.
    pub rule: &'static str,
    /// The device type it runs against.
    pub device: DeviceType,
    /// The queue it feeds.
    pub queue: u16,
    /// Queue size to use (clamped to `QueueNumMax`).
    pub size: u16,
    /// Whether the queue's well-formed buffers are device-writable (an
    /// rng requestq, a net receiveq) or device-readable (a transmitq).
    pub device_writes: bool,
    /// Features to accept when offered.
    pub wanted: u64,
    /// Features that must be offered, else the case is skipped.
    pub requires: u64,
    /// Writes descriptors and the available ring (the runner notifies).
    pub build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
}

/// What running a case gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseResult {
    /// The device does not offer a required feature.
    Skipped {
        /// The missing bits.
        missing: u64,
    },
    /// The case ran: what the device did, and `Status` afterwards.
    Ran {
        /// The observation.
        outcome: Outcome,
        /// `Status` after the observation.
        status: DeviceStatus,
    },
}

/// Most used elements [`run_case_watched`] keeps.
pub const MAX_USED_SEEN: usize = 4;

/// The used elements a case produced, in used-ring order (§2.7.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsedSeen {
    /// Used elements the device published (from the first look to the end
    /// of the observation).
    pub count: u16,
    /// The first [`MAX_USED_SEEN`] of them.
    pub elems: [Option<UsedElem>; MAX_USED_SEEN],
}

/// Runs `case` on `dev`: negotiate, place the queue in `mem.rings`,
/// DRIVER_OK, `build`, notify, observe (until something is used,
/// DEVICE_NEEDS_RESET, or [`OBSERVE_CYCLES`]), check canaries, reset. The
/// device is left reset. Fails on a stray write or when the device cannot
/// even be set up. [`run_case_watched`] adds a follow-up chain.
pub fn run_case(
    dev: &RawDevice,
    mem: &RawMemory,
    case: &Case,
    ram_end: u64,
) -> Result<CaseResult, RawError> {
    run_case_watched(dev, mem, case, ram_end, None).map(|w| w.result)
}

/// A well-formed chain a case posts after its malformed one (to see
/// whether the device keeps serving the queue): writes it and returns its
/// head descriptor index.
pub type FollowUp = fn(&mut Setup<'_, '_>) -> Result<u16, RawError>;

/// What [`run_case_watched`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The case's result; a `Used` outcome is the first used element that
    /// is not the follow-up (the malformed chain returned).
    pub result: CaseResult,
    /// The used elements, in used-ring order.
    pub used: UsedSeen,
    /// `None`: no follow-up was posted; else whether the device used it.
    pub followed: Option<bool>,
}

/// [`run_case`] with an optional `follow_up` chain posted after the
/// case's `build` and notified with it: watches the queue (bounded by
/// [`OBSERVE_CYCLES`]) until the follow-up was used, DEVICE_NEEDS_RESET
/// is set, or (without a follow-up) anything was used. The device is left
/// reset; fails on a stray write or when the device cannot be set up.
pub fn run_case_watched(
    dev: &RawDevice,
    mem: &RawMemory,
    case: &Case,
    ram_end: u64,
    follow_up: Option<FollowUp>,
) -> Result<Watched, RawError> {
    dev.reset()?;
    let missing = case.requires & !dev.device_features();
    if missing != 0 {
        return Ok(Watched {
            result: CaseResult::Skipped { missing },
            used: UsedSeen::default(),
            followed: None,
        });
    }
    let features = dev.negotiate(case.wanted | case.requires)?;
    let max = dev.queue_max(case.queue);
    if max == 0 {
        return Err(RawError::NoQueue { queue: case.queue });
    }
    let size = pow2_floor(u32::from(case.size).min(max));
    let mut queue = RawQueue::new(case.queue, size, &mem.rings)?;
    dev.place_queue(case.queue, queue.placement(dev.version()));
    let table = DescTable::new(&mem.table);
    let mut scratch = Scratch::new(&mem.scratch);
    dev.driver_ok_or_reset()?;
    let seen = queue.used_idx();
    let head = {
        let mut setup = Setup {
            dev,
            queue: &mut queue,
            table: &table,
            scratch: &mut scratch,
            features,
            device_writes: case.device_writes,
            ram_end,
        };
        (case.build)(&mut setup)?;
        match follow_up {
            Some(f) => Some(f(&mut setup)?),
            None => None,
        }
    };
    dev.notify(u32::from(case.queue));
    let mut used = UsedSeen::default();
    let mut followed = false;
    let mut returned = None;
    let start = rdtsc();
    let mut looks = 0u32;
    loop {
        let idx = queue.used_idx();
        while used.count != idx.wrapping_sub(seen) {
            let e = queue.used_elem(seen.wrapping_add(used.count));
            if let Some(slot) = used.elems.get_mut(usize::from(used.count)) {
                *slot = Some(e);
            }
            used.count = used.count.wrapping_add(1);
            if head.is_some_and(|h| e.id() == u32::from(h)) {
                followed = true;
            } else if returned.is_none() {
                returned = Some(e);
            }
        }
        let done = match head {
            Some(_) => followed,
            None => used.count > 0,
        };
        if done {
            break;
        }
        looks += 1;
        if looks.is_multiple_of(LOOKS_PER_STATUS)
            && (dev.status().contains(DeviceStatus::DEVICE_NEEDS_RESET)
                || rdtsc().wrapping_sub(start) > OBSERVE_CYCLES)
        {
            break;
        }
    }
    let status = dev.status();
    let outcome = match returned {
        Some(e) => Outcome::Used(e),
        None if status.contains(DeviceStatus::DEVICE_NEEDS_RESET) => Outcome::NeedsReset,
        None => Outcome::Ignored,
    };
    dev.ack_interrupt(dev.interrupt_status());
    // Reset first, then look: a write that lands late is caught too.
    dev.reset()?;
    scratch.check()?;
    Ok(Watched {
        result: CaseResult::Ran { outcome, status },
        used,
        followed: head.map(|_| followed),
    })
}

/// Pages of each ring area of [`NetMemory`] (one queue each, see
/// [`MAX_RAW_QUEUE`]).
pub const NET_RING_PAGES: usize = RING_PAGES;
/// Pages of [`NetMemory::scratch`].
pub const NET_SCRATCH_PAGES: usize = 1;
/// Pages of [`NetMemory::bufs`].
pub const NET_BUF_PAGES: usize = 16;
const NET_ARENA_PAGES: usize = 3 * NET_RING_PAGES + TABLE_PAGES + NET_SCRATCH_PAGES + NET_BUF_PAGES;

/// `.bss` pages of the virtio-net part of the kit, zeroed at boot.
#[repr(C, align(4096))]
struct NetArena(UnsafeCell<[[u8; PAGE]; NET_ARENA_PAGES]>);

// SAFETY: as for `Arena`: one vCPU, handed out once (`NET_TAKEN`).
unsafe impl Sync for NetArena {}

static NET_ARENA: NetArena = NetArena(UnsafeCell::new([[0; PAGE]; NET_ARENA_PAGES]));
static NET_TAKEN: AtomicBool = AtomicBool::new(false);

/// Memory for driving a virtio-net device (§5.1.2) by hand: one ring area
/// per queue (receiveq1, transmitq1, controlq), an indirect table page,
/// canary-guarded scratch for the malformed buffers, and plain buffer
/// pages for well-formed frames (not canary-checked).
#[derive(Debug)]
pub struct NetMemory {
    /// Ring pages of receiveq1 (queue 0).
    pub rx_rings: Region,
    /// Ring pages of transmitq1 (queue 1).
    pub tx_rings: Region,
    /// Ring pages of the control queue.
    pub ctrl_rings: Region,
    /// An indirect table page.
    pub table: Region,
    /// Canary-guarded buffer pages ([`Scratch`]).
    pub scratch: Region,
    /// Plain buffer pages: well-formed receive buffers and frames.
    pub bufs: Region,
}

impl NetMemory {
    /// The net memory, once per boot (`None` afterwards).
    pub fn take() -> Option<NetMemory> {
        if NET_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        let base = NET_ARENA.0.get().cast::<u8>();
        let mut next = 0;
        let mut region = |pages: usize| {
            let first = next;
            next += pages;
            Region {
                // SAFETY: every region ends at or before NET_ARENA_PAGES,
                // so the pointer stays inside the arena, which is not null.
                base: unsafe { NonNull::new_unchecked(base.add(first * PAGE)) },
                len: (pages * PAGE) as u64,
            }
        };
        Some(NetMemory {
            rx_rings: region(NET_RING_PAGES),
            tx_rings: region(NET_RING_PAGES),
            ctrl_rings: region(NET_RING_PAGES),
            table: region(TABLE_PAGES),
            scratch: region(NET_SCRATCH_PAGES),
            bufs: region(NET_BUF_PAGES),
        })
    }
}

impl Region {
    /// Copies `data` to `offset` (byte-wise volatile writes; frames here
    /// are small).
    pub fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), RawError> {
        for (i, &b) in data.iter().enumerate() {
            self.write_u8(offset + i as u64, b)?;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset` into `out`.
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<(), RawError> {
        for (i, b) in out.iter_mut().enumerate() {
            *b = self.read_u8(offset + i as u64)?;
        }
        Ok(())
    }
}

/// receiveq1's index (§5.1.2).
pub const NET_RX: u16 = 0;
/// transmitq1's index (§5.1.2).
pub const NET_TX: u16 = 1;
/// The control queue's index with one queue pair (§5.1.2).
pub const NET_CTRL: u16 = 2;
/// `VIRTIO_NET_F_CTRL_VQ` (§5.1.3).
const NET_F_CTRL_VQ: u64 = 1 << 17;
/// `VIRTIO_NET_F_MRG_RXBUF` (§5.1.3).
const NET_F_MRG_RXBUF: u64 = 1 << 15;

/// A virtio-net device (§5.1) set up by hand: features negotiated, the
/// first queue pair (and the control queue when negotiated) placed in a
/// [`NetMemory`], DRIVER_OK set, no buffer posted. Well-formed receive
/// buffers and frames live in [`NetMemory::bufs`]; where is the caller's
/// choice (by offset).
#[derive(Debug)]
pub struct NetRig<'m> {
    /// The device.
    pub dev: &'m RawDevice,
    /// The accepted features.
    pub features: u64,
    /// Bytes of `struct virtio_net_hdr` on this device (§5.1.6: 12 with
    /// VERSION_1 or MRG_RXBUF, else the legacy 10).
    pub hdr_len: u64,
    /// `mac` from the configuration space (§5.1.4).
    pub mac: [u8; 6],
    /// receiveq1.
    pub rx: RawQueue<'m>,
    /// transmitq1.
    pub tx: RawQueue<'m>,
    /// The control queue, when `VIRTIO_NET_F_CTRL_VQ` was negotiated.
    pub ctrl: Option<RawQueue<'m>>,
    bufs: &'m Region,
    rx_seen: u16,
}

/// The largest power of two not above `n` (at least 1).
fn pow2_floor(n: u32) -> u16 {
    let n = n.clamp(1, u32::from(MAX_RAW_QUEUE));
    1u16 << (31 - n.leading_zeros())
}

impl<'m> NetRig<'m> {
    /// Negotiates `wanted` (what is offered of it), places receiveq1 and
    /// transmitq1 of at most `rx_size`/`tx_size` entries (and a 16-entry
    /// control queue) and sets DRIVER_OK (§3.1.1).
    pub fn new(
        dev: &'m RawDevice,
        mem: &'m NetMemory,
        wanted: u64,
        rx_size: u16,
        tx_size: u16,
    ) -> Result<Self, RawError> {
        let features = dev.negotiate(wanted)?;
        let hdr_len = if dev.is_modern() || features & NET_F_MRG_RXBUF != 0 {
            12
        } else {
            10
        };
        let mut mac = [0u8; 6];
        let lo = dev.read(regs::CONFIG).to_le_bytes();
        let hi = dev.read(regs::CONFIG + 4).to_le_bytes();
        mac[..4].copy_from_slice(&lo);
        mac[4..].copy_from_slice(&hi[..2]);
        let place = |index: u16, size: u16, rings: &'m Region| {
            let max = dev.queue_max(index);
            if max == 0 {
                return Err(RawError::NoQueue { queue: index });
            }
            let q = RawQueue::new(index, pow2_floor(max.min(u32::from(size))), rings)?;
            dev.place_queue(index, q.placement(dev.version()));
            Ok(q)
        };
        let rx = place(NET_RX, rx_size, &mem.rx_rings)?;
        let tx = place(NET_TX, tx_size, &mem.tx_rings)?;
        let ctrl = if features & NET_F_CTRL_VQ != 0 {
            Some(place(NET_CTRL, 16, &mem.ctrl_rings)?)
        } else {
            None
        };
        dev.driver_ok_or_reset()?;
        let rx_seen = rx.used_idx();
        Ok(NetRig {
            dev,
            features,
            hdr_len,
            mac,
            rx,
            tx,
            ctrl,
            bufs: &mem.bufs,
            rx_seen,
        })
    }

    /// Guest-physical address of byte `offset` of the buffer pages.
    pub fn buf_addr(&self, offset: u64) -> u64 {
        self.bufs.addr() + offset
    }

    /// The buffer pages.
    pub fn bufs(&self) -> &Region {
        self.bufs
    }

    /// Posts a device-writable receive buffer of `len` bytes at buffer
    /// offset `offset` as descriptor `d` of receiveq1 (no notification).
    pub fn post_rx(&mut self, d: u16, offset: u64, len: u32) -> Result<(), RawError> {
        let addr = self.buf_addr(offset);
        self.rx
            .set_desc(d, desc(addr, len, DescFlags::WRITE.bits(), 0))?;
        self.rx.post(d)
    }

    /// Writes a zeroed header and `frame` at buffer offset `offset`, posts
    /// it as descriptor `d` of transmitq1 and notifies (§5.1.6.2).
    pub fn send(&mut self, d: u16, offset: u64, frame: &[u8]) -> Result<(), RawError> {
        let h = self.hdr_len;
        self.bufs.write_bytes(offset, &[0u8; 12][..h as usize])?;
        self.bufs.write_bytes(offset + h, frame)?;
        let len = u32::try_from(h + frame.len() as u64).unwrap_or(u32::MAX);
        self.tx
            .set_desc(d, desc(self.buf_addr(offset), len, 0, 0))?;
        self.tx.post(d)?;
        self.dev.notify(u32::from(NET_TX));
        Ok(())
    }

    /// The next used element of receiveq1, if the device published one.
    pub fn rx_used(&mut self) -> Option<UsedElem> {
        if self.rx.used_idx() == self.rx_seen {
            return None;
        }
        let e = self.rx.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        Some(e)
    }

    /// Copies the frame of a used receive buffer at buffer offset `offset`
    /// (used length `len`, header skipped) into `out`; returns the frame
    /// bytes copied.
    pub fn read_frame(&self, offset: u64, len: u32, out: &mut [u8]) -> usize {
        let n = u64::from(len).saturating_sub(self.hdr_len);
        let n = (n as usize).min(out.len());
        match self.bufs.read_bytes(offset + self.hdr_len, &mut out[..n]) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }
}
