//! Device bring-up on virtio-mmio (spec §3.1.1, §4.2.3): [`Transport`]
//! probes a slot for a device type and walks the initialization sequence
//! through virtio-core's `MmioDriver` (reset, ACKNOWLEDGE, DRIVER, features,
//! FEATURES_OK on version 2, queues, DRIVER_OK), for version 2 and legacy
//! version 1 devices alike; [`acknowledge_interrupt`] is the interrupt
//! handler's half (§4.2.3.4).
//!
//! Queues and their memory are [`crate::queue`]; a device driver combines
//! the two. Nothing here allocates or waits without a bound.

use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::regs;
use virtio_core::mmio::{InterruptStatus, MmioDriver, MmioVersion};
use virtio_core::status::DeviceStatus;

use crate::cmdline::MmioSlot;
use crate::error::Error;
use crate::hal::Hal;
use crate::mmio::VolatileMmio;

/// How the driver learns that the device used buffers (§2.7.7, §2.7.14).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Completion {
    /// The driver polls the used rings and asks the device not to interrupt
    /// (`VIRTQ_AVAIL_F_NO_INTERRUPT`, or `used_event` one behind with
    /// `VIRTIO_F_EVENT_IDX`; only a hint, §2.7.7.1). The `Wait` spins.
    #[default]
    Polling,
    /// The driver re-enables used buffer notifications before each wait
    /// and rechecks the ring (§2.7.14), so a `Wait` that halts until the
    /// next interrupt never sleeps through a completion. The program's
    /// interrupt handler calls [`acknowledge_interrupt`] (or the driver's
    /// `on_interrupt`).
    Interrupt,
}

/// Reads `InterruptStatus` and acknowledges every cause it shows
/// (§4.2.3.4), for an interrupt handler that holds its own register access
/// to the slot (the only registers it touches). Returns the causes:
/// `USED_BUFFER` (some queue has used buffers; the driver pops them) and
/// `CONFIG_CHANGE` (re-read the configuration, or check for
/// DEVICE_NEEDS_RESET).
pub fn acknowledge_interrupt<R: RegisterAccess + ?Sized>(regs: &R) -> InterruptStatus {
    let status = InterruptStatus::from_bits_truncate(regs.read32(regs::INTERRUPT_STATUS));
    if !status.is_empty() {
        regs.write32(regs::INTERRUPT_ACK, status.bits());
    }
    status
}

/// The first slot holding a device of type `ty`, with register access to
/// it: reads `MagicValue`, `Version` and `DeviceID` of each slot
/// (§4.2.3.1.1) and nothing else.
///
/// # Safety
///
/// Every slot must really be a virtio-mmio register block (as the command
/// line of a trusted loader says), mapped by `hal` as device memory, and
/// nothing else may use the slots meanwhile.
pub unsafe fn find_device<H: Hal + ?Sized>(
    hal: &H,
    slots: impl IntoIterator<Item = MmioSlot>,
    ty: DeviceType,
) -> Option<(MmioSlot, VolatileMmio)> {
    slots.into_iter().find_map(|slot| {
        // SAFETY: the caller's promise for every slot.
        let regs = unsafe { VolatileMmio::from_slot(hal, &slot) }?;
        let drv = MmioDriver::probe(&regs).ok()?;
        (drv.device_id() == ty.id()).then_some(())?;
        Some((slot, regs))
    })
}

/// One virtio-mmio device being driven: the probed register access, the
/// state of the initialization sequence (§3.1.1) and the negotiated
/// features. Device drivers own one and set up their queues through it.
#[derive(Debug)]
pub struct Transport<R> {
    drv: MmioDriver<R>,
    expected: DeviceType,
    features: u64,
}

impl<R: RegisterAccess> Transport<R> {
    /// Probes `regs` (§4.2.3.1.1: `MagicValue` "virt", `Version` 1 or 2,
    /// `DeviceID` not 0) and checks that the device is a `expected`.
    /// Touches no other register.
    pub fn probe(regs: R, expected: DeviceType) -> Result<Self, Error> {
        let drv = MmioDriver::probe(regs)?;
        if drv.device_id() != expected.id() {
            return Err(Error::WrongDevice {
                expected,
                found: drv.device_id(),
            });
        }
        Ok(Transport {
            drv,
            expected,
            features: 0,
        })
    }

    /// Steps 1-6 of §3.1.1: reset, ACKNOWLEDGE, DRIVER, the features of
    /// `wanted` the device offers (with their dependencies, and
    /// `VIRTIO_F_VERSION_1` on version 2), and on version 2 FEATURES_OK
    /// read back. Returns the negotiated features; on failure the device
    /// is left with FAILED set.
    pub fn begin_init(&mut self, wanted: u64) -> Result<u64, Error> {
        self.features = 0;
        let features = self.drv.begin_init(wanted)?;
        self.features = features;
        Ok(features)
    }

    /// Step 8 of §3.1.1: DRIVER_OK, once the queues are set up; sets
    /// FAILED if the device does not take it.
    pub fn finish_init(&mut self) -> Result<(), Error> {
        Ok(self.drv.finish_init()?)
    }

    /// Resets the device (§2.4: status 0, read back as 0 within a bounded
    /// number of reads). After a successful reset the device no longer
    /// uses any queue memory.
    pub fn reset(&mut self) -> Result<(), Error> {
        self.features = 0;
        Ok(self.drv.reset()?)
    }

    /// Gives up on the device: sets FAILED (§2.1).
    pub fn fail(&self) {
        self.drv.fail();
    }

    /// The device type this transport was probed for.
    pub fn device_type(&self) -> DeviceType {
        self.expected
    }

    /// The negotiated features (0 before [`begin_init`](Self::begin_init)).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether every bit of `bits` was negotiated.
    pub fn negotiated(&self, bits: u64) -> bool {
        self.features & bits == bits
    }

    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated (§2.7.10).
    pub fn event_idx(&self) -> bool {
        self.negotiated(TransportFeatures::RING_EVENT_IDX.bits())
    }

    /// Whether the device is version 2 (not legacy, §4.2.4).
    pub fn is_modern(&self) -> bool {
        self.drv.version() == MmioVersion::Modern
    }

    /// `Status` as the device reports it.
    pub fn status(&self) -> DeviceStatus {
        self.drv.status()
    }

    /// Whether the device reports DEVICE_NEEDS_RESET (§2.1.2).
    pub fn needs_reset(&self) -> bool {
        self.drv.status().contains(DeviceStatus::DEVICE_NEEDS_RESET)
    }

    /// Available buffer notification for `queue` (§4.2.3.3).
    pub fn notify(&self, queue: u16) {
        self.drv.notify(queue);
    }

    /// Reads and acknowledges `InterruptStatus` (§4.2.3.4); see
    /// [`acknowledge_interrupt`].
    pub fn on_interrupt(&self) -> InterruptStatus {
        acknowledge_interrupt(self.drv.registers())
    }

    /// The virtio-core accessor, for configuration reads (§2.5.1) and
    /// queue registers.
    pub fn driver(&self) -> &MmioDriver<R> {
        &self.drv
    }

    /// The error for a wait on `queue` that ran out: DEVICE_NEEDS_RESET if
    /// the device set it (one `Status` read), else a timeout.
    pub fn timeout(&self, queue: u16) -> Error {
        if self.needs_reset() {
            Error::DeviceNeedsReset
        } else {
            Error::Timeout { queue }
        }
    }
}
