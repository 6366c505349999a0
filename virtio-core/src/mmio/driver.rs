//! The driver side of virtio-mmio, version 2 (spec §4.2.2, §4.2.3) and
//! legacy version 1 (§4.2.4): typed register access over a raw
//! [`RegisterAccess`], the initialization sequence of §3.1.1 and queue
//! set-up.
//!
//! It trusts nothing the device reports: every value read back is checked
//! and every loop is bounded. It does not allocate queue memory or map
//! device memory; the caller supplies a [`RegisterAccess`] and queue
//! layouts.

use core::fmt;

use super::regs::{self, InterruptStatus, MmioVersion};
use crate::features::{self, DeviceType, TransportFeatures};
use crate::memory::GuestAddress;
use crate::split::layout::{LayoutError, QueueLayout, QueueSize};
use crate::status::{DeviceStatus, InitSequence, InitStage, StatusError};

/// Raw access to a virtio-mmio register window (offsets from its base).
/// Implementations do volatile MMIO (or call an in-process register file);
/// control registers are accessed 32 bits wide, configuration space with
/// the width of the field (§4.2.2.2).
pub trait RegisterAccess {
    /// A 32-bit read at `offset`.
    fn read32(&self, offset: u64) -> u32;
    /// A 32-bit write at `offset`.
    fn write32(&self, offset: u64, value: u32);
    /// A 16-bit read at `offset` (configuration space only).
    fn read16(&self, offset: u64) -> u16;
    /// A 16-bit write at `offset` (configuration space only).
    fn write16(&self, offset: u64, value: u16);
    /// An 8-bit read at `offset` (configuration space only).
    fn read8(&self, offset: u64) -> u8;
    /// An 8-bit write at `offset` (configuration space only).
    fn write8(&self, offset: u64, value: u8);
}

impl<R: RegisterAccess + ?Sized> RegisterAccess for &R {
    fn read32(&self, offset: u64) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        (**self).write32(offset, value)
    }
    fn read16(&self, offset: u64) -> u16 {
        (**self).read16(offset)
    }
    fn write16(&self, offset: u64, value: u16) {
        (**self).write16(offset, value)
    }
    fn read8(&self, offset: u64) -> u8 {
        (**self).read8(offset)
    }
    fn write8(&self, offset: u64, value: u8) {
        (**self).write8(offset, value)
    }
}

/// How many times a configuration read is retried when the generation (or,
/// for legacy devices, the value) keeps changing (§2.5.1).
pub const CONFIG_RETRIES: u32 = 64;

/// How many times `Status` is polled for 0 after a reset (§2.4.2).
pub const RESET_POLLS: u32 = 1024;

/// The page size assumed for legacy queues until set otherwise.
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// Why the driver gave up on an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// `MagicValue` is not "virt" (§4.2.2.2: ignore the device).
    BadMagic {
        /// The value read.
        found: u32,
    },
    /// `Version` is neither 1 nor 2 (§4.2.2.2: ignore the device).
    UnsupportedVersion {
        /// The value read.
        found: u32,
    },
    /// `DeviceID` is 0: a placeholder, to be ignored without reporting an
    /// error (§4.2.2.2).
    NoDevice,
    /// A version 2 device does not offer `VIRTIO_F_VERSION_1` (§6.1).
    Version1NotOffered,
    /// A status step failed (§2.1, §3.1.1); FAILED was set if the sequence
    /// had started.
    Status(StatusError),
    /// The queue is already in use: `QueueReady` (or legacy `QueuePFN`) is
    /// not 0 (§4.2.3.2).
    QueueInUse {
        /// The queue.
        queue: u16,
    },
    /// `QueueNumMax` is 0: the queue does not exist (§4.2.3.2).
    QueueUnavailable {
        /// The queue.
        queue: u16,
    },
    /// The layout's size exceeds `QueueNumMax` (§4.2.2.2).
    QueueTooLarge {
        /// The queue.
        queue: u16,
        /// The size asked for.
        size: u16,
        /// `QueueNumMax`.
        max: u16,
    },
    /// The queue did not read back as enabled after set-up.
    QueueNotEnabled {
        /// The queue.
        queue: u16,
    },
    /// Legacy: the layout is not the contiguous one at a page-aligned base
    /// that `QueuePFN` can describe (§2.7.2, §4.2.4).
    LegacyLayout {
        /// The queue.
        queue: u16,
    },
    /// Legacy: the queue's page number does not fit `QueuePFN`.
    LegacyAddress {
        /// The queue.
        queue: u16,
        /// The descriptor table's address.
        addr: GuestAddress,
    },
    /// A page size that is not a power of two of at least 4 bytes (§4.2.4).
    BadPageSize {
        /// The size.
        size: u32,
    },
    /// The configuration kept changing for [`CONFIG_RETRIES`] tries
    /// (§2.5.1).
    ConfigUnstable,
    /// A configuration access that is misaligned for its width or beyond
    /// the address space (§4.2.2.2).
    ConfigAccess {
        /// The offset in configuration space.
        offset: u64,
        /// The access width in bytes.
        size: u8,
    },
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DriverError::BadMagic { found } => write!(
                f,
                "MagicValue is {found:#010x}, not {:#010x} (§4.2.2.2)",
                regs::MAGIC
            ),
            DriverError::UnsupportedVersion { found } => {
                write!(f, "virtio-mmio Version {found} is not 1 or 2 (§4.2.2.2)")
            }
            DriverError::NoDevice => f.write_str("DeviceID is 0: no device (§4.2.2.2)"),
            DriverError::Version1NotOffered => {
                f.write_str("version 2 device does not offer VIRTIO_F_VERSION_1 (§6.1)")
            }
            DriverError::Status(e) => write!(f, "device status: {e}"),
            DriverError::QueueInUse { queue } => {
                write!(f, "queue {queue} is already in use (§4.2.3.2)")
            }
            DriverError::QueueUnavailable { queue } => {
                write!(
                    f,
                    "queue {queue} is not available: QueueNumMax is 0 (§4.2.3.2)"
                )
            }
            DriverError::QueueTooLarge { queue, size, max } => write!(
                f,
                "queue {queue} size {size} exceeds QueueNumMax {max} (§4.2.2.2)"
            ),
            DriverError::QueueNotEnabled { queue } => {
                write!(f, "queue {queue} did not read back as enabled")
            }
            DriverError::LegacyLayout { queue } => write!(
                f,
                "queue {queue}: layout is not the legacy page-aligned layout (§4.2.4)"
            ),
            DriverError::LegacyAddress { queue, addr } => {
                write!(f, "queue {queue}: {addr} does not fit QueuePFN (§4.2.4)")
            }
            DriverError::BadPageSize { size } => {
                write!(f, "guest page size {size} is not a power of two (§4.2.4)")
            }
            DriverError::ConfigUnstable => write!(
                f,
                "configuration changed during {CONFIG_RETRIES} consecutive reads (§2.5.1)"
            ),
            DriverError::ConfigAccess { offset, size } => write!(
                f,
                "{size}-byte configuration access at {offset:#x} is misaligned (§4.2.2.2)"
            ),
        }
    }
}

impl core::error::Error for DriverError {}

impl From<StatusError> for DriverError {
    fn from(e: StatusError) -> Self {
        DriverError::Status(e)
    }
}

/// A probed virtio-mmio device, driven through `R`.
#[derive(Debug)]
pub struct MmioDriver<R> {
    regs: R,
    version: MmioVersion,
    device_id: u32,
    seq: InitSequence,
    page_size: u32,
}

impl<R: RegisterAccess> MmioDriver<R> {
    /// Checks `MagicValue`, `Version` and `DeviceID`, touching no other
    /// register (§4.2.3.1.1).
    pub fn probe(regs: R) -> Result<Self, DriverError> {
        let magic = regs.read32(regs::MAGIC_VALUE);
        if magic != regs::MAGIC {
            return Err(DriverError::BadMagic { found: magic });
        }
        let found = regs.read32(regs::VERSION);
        let version =
            MmioVersion::from_u32(found).ok_or(DriverError::UnsupportedVersion { found })?;
        let device_id = regs.read32(regs::DEVICE_ID);
        if device_id == 0 {
            return Err(DriverError::NoDevice);
        }
        Ok(MmioDriver {
            regs,
            version,
            device_id,
            seq: InitSequence::new(version == MmioVersion::Modern),
            page_size: DEFAULT_PAGE_SIZE,
        })
    }

    /// The register access.
    pub fn registers(&self) -> &R {
        &self.regs
    }

    /// The transport version.
    pub fn version(&self) -> MmioVersion {
        self.version
    }

    /// Whether this is a version 2 (non-legacy) device.
    pub fn is_modern(&self) -> bool {
        self.version == MmioVersion::Modern
    }

    /// `DeviceID` as probed.
    pub fn device_id(&self) -> u32 {
        self.device_id
    }

    /// The device type, if the specification knows the ID (§5).
    pub fn device_type(&self) -> Option<DeviceType> {
        DeviceType::from_id(self.device_id)
    }

    /// `VendorID`.
    pub fn vendor_id(&self) -> u32 {
        self.regs.read32(regs::VENDOR_ID)
    }

    /// Sets the guest page size used for legacy queues (§4.2.4).
    pub fn set_page_size(&mut self, size: u32) -> Result<(), DriverError> {
        if size < 4 || !size.is_power_of_two() {
            return Err(DriverError::BadPageSize { size });
        }
        self.page_size = size;
        Ok(())
    }

    /// The 64 offered feature bits, word 0 then word 1 (§4.2.2).
    pub fn device_features(&self) -> u64 {
        self.regs.write32(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.regs.read32(regs::DEVICE_FEATURES);
        self.regs.write32(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.regs.read32(regs::DEVICE_FEATURES);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// Writes the accepted features, both words (§4.2.2).
    pub fn write_driver_features(&self, features: u64) {
        self.regs.write32(regs::DRIVER_FEATURES_SEL, 0);
        self.regs.write32(regs::DRIVER_FEATURES, features as u32);
        self.regs.write32(regs::DRIVER_FEATURES_SEL, 1);
        self.regs
            .write32(regs::DRIVER_FEATURES, (features >> 32) as u32);
    }

    /// `Status`.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.regs.read32(regs::STATUS) as u8)
    }

    /// Writes `Status` as is.
    pub fn set_status(&self, status: DeviceStatus) {
        self.regs.write32(regs::STATUS, u32::from(status.bits()));
    }

    /// Resets the device and waits (boundedly) for `Status` to read 0
    /// (§2.4.2). Restarts the initialization sequence.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.seq = InitSequence::new(self.is_modern());
        self.step()?;
        Ok(())
    }

    /// Gives up on the device: sets FAILED on top of the confirmed stage
    /// (§3.1.1).
    pub fn fail(&self) {
        self.set_status(self.seq.failed_write());
    }

    /// Steps 1 to 6 of §3.1.1: reset, ACKNOWLEDGE, DRIVER, choose features
    /// from `wanted` by [`features::driver_select`] (always with
    /// `VIRTIO_F_VERSION_1` on version 2, never on legacy, where
    /// `VIRTIO_F_ANY_LAYOUT` is accepted whenever offered), write them and,
    /// on version 2, set FEATURES_OK and check that it stuck. Returns the
    /// negotiated features. On failure after the reset, sets FAILED.
    pub fn begin_init(&mut self, wanted: u64) -> Result<u64, DriverError> {
        self.reset()?;
        let result = self.negotiate(wanted);
        if result.is_err() {
            self.fail();
        }
        result
    }

    fn negotiate(&mut self, wanted: u64) -> Result<u64, DriverError> {
        self.step()?; // ACKNOWLEDGE
        self.step()?; // DRIVER
        let offered = self.device_features();
        let v1 = TransportFeatures::VERSION_1.bits();
        let chosen = if self.is_modern() {
            if offered & v1 == 0 {
                return Err(DriverError::Version1NotOffered);
            }
            features::driver_select_id(self.device_type(), offered, wanted)
        } else {
            // §6.3 legacy interface: a transitional driver MUST accept
            // VIRTIO_F_ANY_LAYOUT when the device offers it (then the legacy
            // framing rules of §2.6.4.3 and the device types bind nobody).
            let any = TransportFeatures::ANY_LAYOUT.bits();
            features::driver_select_id(self.device_type(), offered & !v1, wanted) | offered & any
        };
        self.write_driver_features(chosen);
        if self.is_modern() {
            self.step()?; // FEATURES_OK, and its read-back (step 6)
        }
        Ok(chosen)
    }

    /// Step 8 of §3.1.1: DRIVER_OK, after the queues are set up.
    pub fn finish_init(&mut self) -> Result<(), DriverError> {
        let result = self.step();
        if result.is_err() {
            self.fail();
        }
        result.map(|_| ())
    }

    /// Writes the next status of the sequence and checks the read-back.
    fn step(&mut self) -> Result<InitStage, DriverError> {
        let value = self.seq.next_write()?;
        self.set_status(value);
        let mut read = self.status();
        if value.is_empty() {
            for _ in 0..RESET_POLLS {
                if read.is_empty() {
                    break;
                }
                read = self.status();
            }
        }
        Ok(self.seq.confirm(read)?)
    }

    /// Selects queue `index` and returns its `QueueNumMax`, checking that it
    /// exists and is not in use (§4.2.3.2 steps 1-3, §4.2.4).
    pub fn queue_max_size(&self, index: u16) -> Result<u16, DriverError> {
        self.regs.write32(regs::QUEUE_SEL, u32::from(index));
        let in_use = match self.version {
            MmioVersion::Modern => self.regs.read32(regs::QUEUE_READY),
            MmioVersion::Legacy => self.regs.read32(regs::QUEUE_PFN),
        };
        if in_use != 0 {
            return Err(DriverError::QueueInUse { queue: index });
        }
        // A device reporting more than 65535 is clamped: a queue is at most
        // 32768 entries anyway (§2.7).
        let max = u16::try_from(self.regs.read32(regs::QUEUE_NUM_MAX)).unwrap_or(u16::MAX);
        if max == 0 {
            return Err(DriverError::QueueUnavailable { queue: index });
        }
        Ok(max)
    }

    /// The legacy layout (§2.7.2) of a queue of `size` at `base` with this
    /// driver's page size as the used ring alignment: what
    /// [`setup_queue`](Self::setup_queue) expects on a version 1 device.
    pub fn legacy_layout(
        &self,
        size: QueueSize,
        base: GuestAddress,
    ) -> Result<QueueLayout, LayoutError> {
        QueueLayout::legacy(size, base, u64::from(self.page_size))
    }

    /// Sets up queue `index` with `layout` (§4.2.3.2; legacy §4.2.4, where
    /// the layout must be [`legacy_layout`](Self::legacy_layout) at a
    /// page-aligned base) and checks that the device took it.
    pub fn setup_queue(&self, index: u16, layout: &QueueLayout) -> Result<(), DriverError> {
        let max = self.queue_max_size(index)?;
        let size = layout.size().get();
        if size > max {
            return Err(DriverError::QueueTooLarge {
                queue: index,
                size,
                max,
            });
        }
        match self.version {
            MmioVersion::Modern => self.setup_modern(index, layout),
            MmioVersion::Legacy => self.setup_legacy(index, layout),
        }
    }

    fn setup_modern(&self, index: u16, layout: &QueueLayout) -> Result<(), DriverError> {
        let r = &self.regs;
        r.write32(regs::QUEUE_NUM, u32::from(layout.size().get()));
        for (low, addr) in [
            (regs::QUEUE_DESC_LOW, layout.desc_table()),
            (regs::QUEUE_DRIVER_LOW, layout.avail_ring()),
            (regs::QUEUE_DEVICE_LOW, layout.used_ring()),
        ] {
            r.write32(low, addr.raw() as u32);
            r.write32(low + 4, (addr.raw() >> 32) as u32);
        }
        r.write32(regs::QUEUE_READY, 1);
        if r.read32(regs::QUEUE_READY) != 1 {
            return Err(DriverError::QueueNotEnabled { queue: index });
        }
        Ok(())
    }

    fn setup_legacy(&self, index: u16, layout: &QueueLayout) -> Result<(), DriverError> {
        let page = u64::from(self.page_size);
        let base = layout.desc_table();
        let legacy = self.legacy_layout(layout.size(), base);
        if !base.raw().is_multiple_of(page) || legacy != Ok(*layout) {
            return Err(DriverError::LegacyLayout { queue: index });
        }
        let pfn = u32::try_from(base.raw() / page).map_err(|_| DriverError::LegacyAddress {
            queue: index,
            addr: base,
        })?;
        // Address 0 means "unused" to the device (§4.2.4).
        if pfn == 0 {
            return Err(DriverError::LegacyAddress {
                queue: index,
                addr: base,
            });
        }
        let r = &self.regs;
        r.write32(regs::GUEST_PAGE_SIZE, self.page_size);
        r.write32(regs::QUEUE_NUM, u32::from(layout.size().get()));
        r.write32(regs::QUEUE_ALIGN, self.page_size);
        r.write32(regs::QUEUE_PFN, pfn);
        if r.read32(regs::QUEUE_PFN) != pfn {
            return Err(DriverError::QueueNotEnabled { queue: index });
        }
        Ok(())
    }

    /// Stops using queue `index`: `QueueReady` 0 read back (§4.2.2.2), or
    /// legacy `QueuePFN` 0.
    pub fn disable_queue(&self, index: u16) -> Result<(), DriverError> {
        self.regs.write32(regs::QUEUE_SEL, u32::from(index));
        let reg = match self.version {
            MmioVersion::Modern => regs::QUEUE_READY,
            MmioVersion::Legacy => regs::QUEUE_PFN,
        };
        self.regs.write32(reg, 0);
        if self.regs.read32(reg) != 0 {
            return Err(DriverError::QueueInUse { queue: index });
        }
        Ok(())
    }

    /// Available buffer notification for `queue` (§4.2.3.3).
    pub fn notify(&self, queue: u16) {
        self.regs.write32(regs::QUEUE_NOTIFY, u32::from(queue));
    }

    /// `InterruptStatus`, undefined bits dropped (§4.2.2.2).
    pub fn interrupt_status(&self) -> InterruptStatus {
        InterruptStatus::from_bits_truncate(self.regs.read32(regs::INTERRUPT_STATUS))
    }

    /// Acknowledges the handled interrupt causes (§4.2.3.4).
    pub fn ack_interrupt(&self, handled: InterruptStatus) {
        self.regs.write32(regs::INTERRUPT_ACK, handled.bits());
    }

    /// `ConfigGeneration` (0 on legacy devices, which lack it).
    pub fn config_generation(&self) -> u32 {
        match self.version {
            MmioVersion::Modern => self.regs.read32(regs::CONFIG_GENERATION),
            MmioVersion::Legacy => 0,
        }
    }

    /// Runs `read` until it sees a consistent configuration (§2.5.1): the
    /// generation unchanged around it, or on legacy devices two equal
    /// results in a row (§5 legacy note). Bounded by [`CONFIG_RETRIES`].
    fn stable<T: PartialEq>(&self, read: impl Fn(&Self) -> T) -> Result<T, DriverError> {
        for _ in 0..CONFIG_RETRIES {
            match self.version {
                MmioVersion::Modern => {
                    let before = self.config_generation();
                    let v = read(self);
                    if self.config_generation() == before {
                        return Ok(v);
                    }
                }
                MmioVersion::Legacy => {
                    let v = read(self);
                    if read(self) == v {
                        return Ok(v);
                    }
                }
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// The register offset of config `offset` for a `size`-byte field,
    /// aligned as §4.2.2.2 asks.
    fn config_offset(offset: u64, size: u8) -> Result<u64, DriverError> {
        let align = u64::from(size.min(4));
        let err = DriverError::ConfigAccess { offset, size };
        if !offset.is_multiple_of(align) {
            return Err(err);
        }
        regs::CONFIG
            .checked_add(offset)
            .filter(|o| o.checked_add(u64::from(size)).is_some())
            .ok_or(err)
    }

    /// Reads an 8-bit configuration field (§2.5.1).
    pub fn read_config_u8(&self, offset: u64) -> Result<u8, DriverError> {
        let at = Self::config_offset(offset, 1)?;
        self.stable(|d| d.regs.read8(at))
    }

    /// Reads a 16-bit configuration field, 2-aligned (§2.5.1).
    pub fn read_config_u16(&self, offset: u64) -> Result<u16, DriverError> {
        let at = Self::config_offset(offset, 2)?;
        self.stable(|d| d.regs.read16(at))
    }

    /// Reads a 32-bit configuration field, 4-aligned (§2.5.1).
    pub fn read_config_u32(&self, offset: u64) -> Result<u32, DriverError> {
        let at = Self::config_offset(offset, 4)?;
        self.stable(|d| d.regs.read32(at))
    }

    /// Reads a 64-bit configuration field as two 32-bit reads under one
    /// generation (§2.5.1: such reads are not atomic).
    pub fn read_config_u64(&self, offset: u64) -> Result<u64, DriverError> {
        let at = Self::config_offset(offset, 8)?;
        self.stable(|d| u64::from(d.regs.read32(at)) | (u64::from(d.regs.read32(at + 4)) << 32))
    }

    /// Reads `buf.len()` bytes of configuration space byte by byte, all under
    /// one generation (§2.5.1).
    pub fn read_config_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), DriverError> {
        let len = buf.len() as u64;
        let err = DriverError::ConfigAccess { offset, size: 1 };
        let at = regs::CONFIG.checked_add(offset).ok_or(err)?;
        at.checked_add(len).ok_or(err)?;
        for _ in 0..CONFIG_RETRIES {
            let before = self.config_generation();
            for (i, b) in (0u64..).zip(buf.iter_mut()) {
                *b = self.regs.read8(at + i);
            }
            let same = match self.version {
                MmioVersion::Modern => self.config_generation() == before,
                MmioVersion::Legacy => (0u64..)
                    .zip(buf.iter())
                    .all(|(i, b)| self.regs.read8(at + i) == *b),
            };
            if same {
                return Ok(());
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// Writes an 8-bit configuration field.
    pub fn write_config_u8(&self, offset: u64, value: u8) -> Result<(), DriverError> {
        let at = Self::config_offset(offset, 1)?;
        self.regs.write8(at, value);
        Ok(())
    }

    /// Writes a 16-bit configuration field, 2-aligned.
    pub fn write_config_u16(&self, offset: u64, value: u16) -> Result<(), DriverError> {
        let at = Self::config_offset(offset, 2)?;
        self.regs.write16(at, value);
        Ok(())
    }

    /// Writes a 32-bit configuration field, 4-aligned.
    pub fn write_config_u32(&self, offset: u64, value: u32) -> Result<(), DriverError> {
        let at = Self::config_offset(offset, 4)?;
        self.regs.write32(at, value);
        Ok(())
    }
}
