//! The device side of virtio-mmio version 2 (spec §4.2.2, §4.2.3): a
//! register file that answers the driver's reads and writes and enforces the
//! status machine (§2.1) and feature validation (§2.2.2).
//!
//! It does no I/O: a write returns a [`WriteOutcome`] the caller acts on
//! (notify a queue, reset, activate). The device-specific parts sit behind
//! the small [`MmioDevice`] trait. The legacy version 1 device and shared
//! memory regions are not implemented (every region reads as absent).

use core::fmt;

use super::regs::{self, InterruptStatus, MmioVersion, Register};
use crate::features::{self, DeviceType, FeatureError, TransportFeatures};
use crate::memory::GuestAddress;
use crate::split::layout::{LayoutError, QueueLayout, QueueSize};
use crate::status::{DeviceStatus, InitStage, StatusError, StatusMachine};

/// What the register file needs from a device (QEMU's
/// `VirtioDeviceClass`, cut down to what the transport asks, §4.2.2).
pub trait MmioDevice {
    /// The device type ID for `DeviceID` (§5).
    fn device_id(&self) -> u32;

    /// The `VendorID`.
    fn vendor_id(&self) -> u32 {
        0
    }

    /// The features the device offers (§2.2). The register file adds
    /// `VIRTIO_F_VERSION_1` and removes `ADMIN_VQ` and `SR_IOV`, which
    /// virtio-mmio does not support (§4.2.5).
    fn device_features(&self) -> u64;

    /// Whether the device accepts this (already validated) feature set
    /// (§2.2.2: it MAY refuse FEATURES_OK).
    fn features_acceptable(&self, features: u64) -> bool {
        let _ = features;
        true
    }

    /// How many queues the device has.
    fn num_queues(&self) -> u16;

    /// Queue `index`'s maximum size (`QueueNumMax`), 0 if unavailable.
    fn queue_max_size(&self, index: u16) -> u16;

    /// Reads configuration space at `offset` (from the start of the config
    /// space) into `data`; bytes beyond the config space read as 0 (§2.5).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes configuration space at `offset` (§2.5).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// The driver set DRIVER_OK (§3.1.1 step 8): go live with these
    /// features and queues. An error makes the register file raise
    /// DEVICE_NEEDS_RESET (§2.1.2).
    fn activate(&mut self, features: u64, queues: &[QueueState]) -> Result<(), ActivateError>;

    /// The driver reset the device (§2.4): drop all queue state.
    fn reset(&mut self);
}

/// Why a device could not go live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivateError {
    /// What went wrong, for the log.
    pub reason: &'static str,
}

impl fmt::Display for ActivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device activation failed: {}", self.reason)
    }
}

impl core::error::Error for ActivateError {}

/// The per-queue registers as the driver wrote them (§4.2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    layout: Option<QueueLayout>,
}

impl QueueState {
    fn new(max: u16) -> Self {
        QueueState {
            size: max,
            ..QueueState::default()
        }
    }

    /// `QueueNum`: the size last accepted (the maximum until written).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// `QueueReady`.
    pub fn is_ready(&self) -> bool {
        self.layout.is_some()
    }

    /// The checked layout, while the queue is ready.
    pub fn layout(&self) -> Option<QueueLayout> {
        self.layout
    }

    /// The descriptor area address written (`QueueDescLow/High`).
    pub fn desc_addr(&self) -> GuestAddress {
        GuestAddress(self.desc)
    }

    /// The driver area address written (`QueueDriverLow/High`).
    pub fn driver_addr(&self) -> GuestAddress {
        GuestAddress(self.driver)
    }

    /// The device area address written (`QueueDeviceLow/High`).
    pub fn device_addr(&self) -> GuestAddress {
        GuestAddress(self.device)
    }
}

/// What the caller must do after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Nothing beyond the register update.
    Done,
    /// Available buffer notification for a ready queue (§4.2.3.3). `value`
    /// is the raw write (with `VIRTIO_F_NOTIFICATION_DATA` it carries more
    /// than the queue index, §2.9).
    Notify {
        /// The queue index.
        queue: u16,
        /// The value written.
        value: u32,
    },
    /// The driver wrote 0 to `Status`: the device was reset (§2.4) and
    /// [`MmioDevice::reset`] called.
    Reset,
    /// FEATURES_OK accepted; the features are final (§3.1.1 step 5).
    FeaturesOk {
        /// The negotiated features.
        features: u64,
    },
    /// DRIVER_OK set and [`MmioDevice::activate`] succeeded.
    Activated,
    /// DRIVER_OK set but activation failed: DEVICE_NEEDS_RESET is now set
    /// and a configuration change interrupt raised (§2.1.2).
    ActivationFailed(ActivateError),
    /// The driver set FAILED (§2.1).
    Failed,
    /// The driver enabled a queue (`QueueReady` = 1).
    QueueEnabled {
        /// The queue index.
        queue: u16,
    },
    /// The driver disabled a queue (`QueueReady` = 0).
    QueueDisabled {
        /// The queue index.
        queue: u16,
    },
    /// The driver reset a queue (`QueueReset`, §2.6.1); it is disabled.
    QueueReset {
        /// The queue index.
        queue: u16,
    },
    /// `InterruptACK` cleared bits; the line may need to be lowered.
    InterruptAcked,
}

/// Why an access was refused. A refused read fills the buffer with zeros; a
/// refused write changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// No register at this offset (§4.2.2.2: the driver MUST NOT access it).
    UnknownOffset {
        /// The offset.
        offset: u64,
    },
    /// A control register accessed other than 32 bits wide and aligned, or
    /// config space with a size other than 1, 2, 4, 8 or misaligned
    /// (§4.2.2.2).
    BadAccess {
        /// The offset.
        offset: u64,
        /// The access size in bytes.
        size: usize,
    },
    /// A read of a write-only register (§4.2.2.2); it reads as 0.
    ReadOfWriteOnly {
        /// The register.
        register: Register,
    },
    /// A write to a read-only register (§4.2.2.2); it is ignored.
    WriteToReadOnly {
        /// The register.
        register: Register,
    },
    /// A value the register does not define (`QueueReady`, `QueueReset`
    /// take 0 or 1).
    BadValue {
        /// The register.
        register: Register,
        /// The value written.
        value: u32,
    },
    /// The status write breaks the status machine (§2.1, §3.1).
    Status(StatusError),
    /// FEATURES_OK refused because the features written are invalid
    /// (§2.2.2); the status stays as it was.
    Features(FeatureError),
    /// `DriverFeatures` written outside the DRIVER stage: before DRIVER, or
    /// after FEATURES_OK (§3.1.1 step 5: no new feature bits after it).
    FeaturesLocked {
        /// The status at the time.
        status: DeviceStatus,
    },
    /// Non-zero `DriverFeatures` for a word above 63; nothing there was
    /// offered (§2.2.1).
    FeatureWord {
        /// `DriverFeaturesSel`.
        sel: u32,
        /// The value written.
        value: u32,
    },
    /// `QueueSel` names a queue the device does not have.
    NoSuchQueue {
        /// The selected index.
        queue: u32,
    },
    /// A queue register written while `QueueReady` is 1 (§4.2.2.2).
    QueueBusy {
        /// The queue.
        queue: u16,
        /// The register.
        register: Register,
    },
    /// `QueueNum` is not a valid size or exceeds `QueueNumMax` (§2.7,
    /// §4.2.2.2).
    QueueSize {
        /// The queue.
        queue: u16,
        /// Why.
        err: LayoutError,
    },
    /// `QueueReady` = 1 with areas that break §2.7's rules; the queue stays
    /// disabled.
    QueueLayout {
        /// The queue.
        queue: u16,
        /// Why.
        err: LayoutError,
    },
    /// `QueueReady` = 1 before FEATURES_OK, after FAILED or while
    /// DEVICE_NEEDS_RESET is set (§3.1.1: queues are set up after feature
    /// negotiation).
    QueueEnableNotAllowed {
        /// The queue.
        queue: u16,
        /// The status at the time.
        status: DeviceStatus,
    },
    /// `QueueNotify` before DRIVER_OK (§3.1.1: the driver MUST NOT notify
    /// before it).
    NotifyBeforeDriverOk {
        /// The value written.
        value: u32,
    },
    /// `QueueNotify` for a queue that is not ready.
    NotifyQueueNotReady {
        /// The queue.
        queue: u16,
    },
    /// `QueueReset` without `VIRTIO_F_RING_RESET` negotiated (§4.2.2).
    RingResetNotNegotiated,
    /// The device has more queues than the register file holds.
    TooManyQueues {
        /// The device's queue count.
        queues: u16,
        /// The register file's capacity.
        capacity: usize,
    },
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MmioError::UnknownOffset { offset } => {
                write!(f, "no virtio-mmio register at {offset:#x} (§4.2.2)")
            }
            MmioError::BadAccess { offset, size } => write!(
                f,
                "{size}-byte access at {offset:#x} is not allowed (§4.2.2.2)"
            ),
            MmioError::ReadOfWriteOnly { register } => {
                write!(f, "read of write-only register {register} (§4.2.2.2)")
            }
            MmioError::WriteToReadOnly { register } => {
                write!(f, "write to read-only register {register} (§4.2.2.2)")
            }
            MmioError::BadValue { register, value } => {
                write!(f, "value {value:#x} is not defined for {register} (§4.2.2)")
            }
            MmioError::Status(e) => write!(f, "Status write refused: {e}"),
            MmioError::Features(e) => write!(f, "FEATURES_OK refused: {e}"),
            MmioError::FeaturesLocked { status } => write!(
                f,
                "DriverFeatures written with status {status}: only between DRIVER and FEATURES_OK (§3.1.1)"
            ),
            MmioError::FeatureWord { sel, value } => write!(
                f,
                "DriverFeatures word {sel} written with {value:#x}: no such features offered (§2.2.1)"
            ),
            MmioError::NoSuchQueue { queue } => write!(f, "QueueSel {queue}: no such queue"),
            MmioError::QueueBusy { queue, register } => write!(
                f,
                "{register} written while queue {queue} is ready (§4.2.2.2)"
            ),
            MmioError::QueueSize { queue, err } => {
                write!(f, "QueueNum of queue {queue} refused: {err}")
            }
            MmioError::QueueLayout { queue, err } => {
                write!(f, "QueueReady of queue {queue} refused: {err}")
            }
            MmioError::QueueEnableNotAllowed { queue, status } => write!(
                f,
                "QueueReady of queue {queue} with status {status}: needs FEATURES_OK and no FAILED or DEVICE_NEEDS_RESET (§3.1.1)"
            ),
            MmioError::NotifyBeforeDriverOk { value } => {
                write!(f, "QueueNotify {value:#x} before DRIVER_OK (§3.1.1)")
            }
            MmioError::NotifyQueueNotReady { queue } => {
                write!(f, "QueueNotify for queue {queue}, which is not ready")
            }
            MmioError::RingResetNotNegotiated => {
                f.write_str("QueueReset without VIRTIO_F_RING_RESET negotiated (§4.2.2)")
            }
            MmioError::TooManyQueues { queues, capacity } => write!(
                f,
                "device has {queues} queues, the register file holds {capacity}"
            ),
        }
    }
}

impl core::error::Error for MmioError {}

/// The device side of a virtio-mmio version 2 transport (§4.2.2): the
/// register state of one device, for at most `N` queues.
#[derive(Debug)]
pub struct MmioRegisters<D, const N: usize = 8> {
    device: D,
    device_type: Option<DeviceType>,
    num_queues: u16,
    status: StatusMachine,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    features: Option<u64>,
    queue_sel: u32,
    queues: [QueueState; N],
    interrupt_status: InterruptStatus,
    config_generation: u32,
    shm_sel: u32,
    last_error: Option<MmioError>,
}

impl<D: MmioDevice, const N: usize> MmioRegisters<D, N> {
    /// A register file for `device`, in the reset state.
    pub fn new(device: D) -> Result<Self, MmioError> {
        let queues = device.num_queues();
        if usize::from(queues) > N {
            return Err(MmioError::TooManyQueues {
                queues,
                capacity: N,
            });
        }
        let mut regs = MmioRegisters {
            device_type: DeviceType::from_id(device.device_id()),
            device,
            num_queues: queues,
            status: StatusMachine::new(),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            features: None,
            queue_sel: 0,
            queues: [QueueState::default(); N],
            interrupt_status: InterruptStatus::empty(),
            config_generation: 0,
            shm_sel: 0,
            last_error: None,
        };
        regs.reset_registers();
        Ok(regs)
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (e.g. to change its configuration, then call
    /// [`config_changed`](Self::config_changed)).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The status as the driver reads it.
    pub fn status(&self) -> DeviceStatus {
        self.status.read()
    }

    /// The features the driver sees offered.
    pub fn offered_features(&self) -> u64 {
        let unsupported = TransportFeatures::ADMIN_VQ | TransportFeatures::SR_IOV;
        (self.device.device_features() | TransportFeatures::VERSION_1.bits()) & !unsupported.bits()
    }

    /// The negotiated features, once FEATURES_OK was accepted.
    pub fn features(&self) -> Option<u64> {
        self.features
    }

    /// The device's queues.
    pub fn queues(&self) -> &[QueueState] {
        self.queues
            .get(..usize::from(self.num_queues))
            .unwrap_or(&[])
    }

    /// Queue `index`, if the device has it.
    pub fn queue(&self, index: u16) -> Option<&QueueState> {
        self.queues().get(usize::from(index))
    }

    /// `InterruptStatus`.
    pub fn interrupt_status(&self) -> InterruptStatus {
        self.interrupt_status
    }

    /// Whether the interrupt line is asserted: some `InterruptStatus` bit is
    /// set (§4.2.3.4).
    pub fn interrupt_asserted(&self) -> bool {
        !self.interrupt_status.is_empty()
    }

    /// `ConfigGeneration`.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The last refused write, for diagnostics.
    pub fn last_error(&self) -> Option<MmioError> {
        self.last_error
    }

    /// Takes the last refused write.
    pub fn take_error(&mut self) -> Option<MmioError> {
        self.last_error.take()
    }

    /// The device used a buffer: raises the used buffer interrupt (§4.2.2).
    /// Returns `false`, raising nothing, before DRIVER_OK (§2.1.2: no used
    /// buffer notification before it).
    pub fn raise_used_buffer(&mut self) -> bool {
        if !self.status.stage().is_driver_ok() {
            return false;
        }
        self.interrupt_status |= InterruptStatus::USED_BUFFER;
        true
    }

    /// The device changed its configuration: bumps `ConfigGeneration`
    /// (§4.2.2) and, once DRIVER_OK is set, raises the configuration change
    /// interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status.stage().is_driver_ok() {
            self.interrupt_status |= InterruptStatus::CONFIG_CHANGE;
        }
    }

    /// The device hit an error it cannot recover from: sets
    /// DEVICE_NEEDS_RESET and, if DRIVER_OK is set, raises the configuration
    /// change interrupt (§2.1.2).
    pub fn set_needs_reset(&mut self) -> Result<(), StatusError> {
        if self.status.set_needs_reset()? {
            self.interrupt_status |= InterruptStatus::CONFIG_CHANGE;
        }
        Ok(())
    }

    /// Reads `data.len()` bytes at `offset`: one 32-bit control register, or
    /// 1, 2, 4 or 8 bytes of configuration space.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), MmioError> {
        data.fill(0);
        if offset >= regs::CONFIG {
            check_config_access(offset, data.len())?;
            self.device.read_config(offset - regs::CONFIG, data);
            return Ok(());
        }
        let register = control_register(offset, data.len())?;
        let value = self.read_register(register)?;
        data.copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    /// Writes `data` at `offset` (as [`read`](Self::read)). A refused write
    /// changes nothing and is also kept in [`last_error`](Self::last_error).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<WriteOutcome, MmioError> {
        let result = self.write_inner(offset, data);
        if let Err(e) = result {
            self.last_error = Some(e);
        }
        result
    }

    /// Reads a 32-bit control register.
    pub fn read32(&self, offset: u64) -> Result<u32, MmioError> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a 32-bit control register.
    pub fn write32(&mut self, offset: u64, value: u32) -> Result<WriteOutcome, MmioError> {
        self.write(offset, &value.to_le_bytes())
    }

    fn write_inner(&mut self, offset: u64, data: &[u8]) -> Result<WriteOutcome, MmioError> {
        if offset >= regs::CONFIG {
            check_config_access(offset, data.len())?;
            self.device.write_config(offset - regs::CONFIG, data);
            return Ok(WriteOutcome::Done);
        }
        let register = control_register(offset, data.len())?;
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.write_register(register, u32::from_le_bytes(b))
    }

    fn read_register(&self, register: Register) -> Result<u32, MmioError> {
        let queue = self.selected();
        Ok(match register {
            Register::MagicValue => regs::MAGIC,
            Register::Version => MmioVersion::Modern as u32,
            Register::DeviceId => self.device.device_id(),
            Register::VendorId => self.device.vendor_id(),
            Register::DeviceFeatures => word(self.offered_features(), self.device_features_sel),
            Register::QueueNumMax => match queue {
                Some(q) => u32::from(self.device.queue_max_size(q)),
                None => 0,
            },
            Register::QueueReady => u32::from(
                queue
                    .and_then(|q| self.queue(q))
                    .is_some_and(QueueState::is_ready),
            ),
            Register::InterruptStatus => self.interrupt_status.bits(),
            Register::Status => u32::from(self.status.read().bits()),
            // No shared memory region: length and base read as all ones.
            Register::ShmLenLow
            | Register::ShmLenHigh
            | Register::ShmBaseLow
            | Register::ShmBaseHigh => u32::MAX,
            // Queue resets complete at once (§4.2.2).
            Register::QueueReset => 0,
            Register::ConfigGeneration => self.config_generation,
            _ => return Err(MmioError::ReadOfWriteOnly { register }),
        })
    }

    fn write_register(&mut self, register: Register, v: u32) -> Result<WriteOutcome, MmioError> {
        match register {
            Register::DeviceFeaturesSel => self.device_features_sel = v,
            Register::DriverFeaturesSel => self.driver_features_sel = v,
            Register::QueueSel => self.queue_sel = v,
            Register::ShmSel => self.shm_sel = v,
            Register::DriverFeatures => self.write_driver_features(v)?,
            Register::QueueNum => {
                let (q, max) = self.writable_queue(register)?;
                let size = QueueSize::new(v)
                    .and_then(|s| match s.get() <= max {
                        true => Ok(s),
                        false => Err(LayoutError::TooLarge { size: s.get(), max }),
                    })
                    .map_err(|err| MmioError::QueueSize { queue: q, err })?;
                self.queue_mut(q)?.size = size.get();
            }
            Register::QueueDescLow
            | Register::QueueDescHigh
            | Register::QueueDriverLow
            | Register::QueueDriverHigh
            | Register::QueueDeviceLow
            | Register::QueueDeviceHigh => {
                let (q, _) = self.writable_queue(register)?;
                let s = self.queue_mut(q)?;
                let (field, high) = match register {
                    Register::QueueDescLow => (&mut s.desc, false),
                    Register::QueueDescHigh => (&mut s.desc, true),
                    Register::QueueDriverLow => (&mut s.driver, false),
                    Register::QueueDriverHigh => (&mut s.driver, true),
                    Register::QueueDeviceLow => (&mut s.device, false),
                    _ => (&mut s.device, true),
                };
                *field = set_word(*field, v, high);
            }
            Register::QueueReady => return self.write_queue_ready(v),
            Register::QueueReset => return self.write_queue_reset(v),
            Register::QueueNotify => return self.write_notify(v),
            Register::InterruptAck => {
                self.interrupt_status &= !InterruptStatus::from_bits_truncate(v);
                return Ok(WriteOutcome::InterruptAcked);
            }
            Register::Status => return self.write_status(v),
            _ => return Err(MmioError::WriteToReadOnly { register }),
        }
        Ok(WriteOutcome::Done)
    }

    fn write_driver_features(&mut self, v: u32) -> Result<(), MmioError> {
        let status = self.status.read();
        let open = self.status.stage() == InitStage::Driver
            && !status.intersects(DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET);
        if !open {
            return Err(MmioError::FeaturesLocked { status });
        }
        match self.driver_features_sel {
            0 => self.driver_features = set_word(self.driver_features, v, false),
            1 => self.driver_features = set_word(self.driver_features, v, true),
            _ if v == 0 => {}
            sel => return Err(MmioError::FeatureWord { sel, value: v }),
        }
        Ok(())
    }

    fn write_status(&mut self, v: u32) -> Result<WriteOutcome, MmioError> {
        // Only the low byte is the status (§2.1); the rest must be 0.
        let value = u8::try_from(v).map_err(|_| MmioError::BadValue {
            register: Register::Status,
            value: v,
        })?;
        let offered = self.offered_features();
        let written = self.driver_features;
        let (device_type, device) = (self.device_type, &self.device);
        let mut invalid = None;
        let acceptable = || match features::validate_id(device_type, offered, written, true) {
            Ok(()) => device.features_acceptable(written),
            Err(e) => {
                invalid = Some(e);
                false
            }
        };
        let transition = match self.status.write(value, acceptable, true) {
            Ok(t) => t,
            Err(StatusError::FeaturesNotAcceptable) => {
                return Err(match invalid {
                    Some(e) => MmioError::Features(e),
                    None => MmioError::Status(StatusError::FeaturesNotAcceptable),
                });
            }
            Err(e) => return Err(MmioError::Status(e)),
        };
        if transition == crate::status::StatusTransition::Reset {
            self.reset_registers();
            self.device.reset();
            return Ok(WriteOutcome::Reset);
        }
        if transition.accepts_features() {
            self.features = Some(written);
        }
        if transition.activates() {
            let features = self.features.unwrap_or(written);
            let n = usize::from(self.num_queues);
            let queues = self.queues.get(..n).unwrap_or(&[]);
            return Ok(match self.device.activate(features, queues) {
                Ok(()) => WriteOutcome::Activated,
                Err(e) => {
                    // DRIVER_OK is set, so this cannot fail; the interrupt
                    // is raised by `set_needs_reset`.
                    let _ = self.set_needs_reset();
                    WriteOutcome::ActivationFailed(e)
                }
            });
        }
        if transition.accepts_features() {
            return Ok(WriteOutcome::FeaturesOk { features: written });
        }
        if transition.fails() {
            return Ok(WriteOutcome::Failed);
        }
        Ok(WriteOutcome::Done)
    }

    fn write_queue_ready(&mut self, v: u32) -> Result<WriteOutcome, MmioError> {
        let register = Register::QueueReady;
        let q = self.existing_queue()?;
        let state = *self.queue_mut(q)?;
        match v {
            0 if state.is_ready() => {
                self.queue_mut(q)?.layout = None;
                Ok(WriteOutcome::QueueDisabled { queue: q })
            }
            0 => Ok(WriteOutcome::Done),
            1 if state.is_ready() => Ok(WriteOutcome::Done),
            1 => {
                let status = self.status.read();
                let allowed = matches!(
                    self.status.stage(),
                    InitStage::FeaturesOk | InitStage::DriverOk
                ) && !status
                    .intersects(DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET);
                if !allowed {
                    return Err(MmioError::QueueEnableNotAllowed { queue: q, status });
                }
                let layout = QueueSize::new(u32::from(state.size))
                    .and_then(|size| {
                        QueueLayout::new(
                            size,
                            state.desc_addr(),
                            state.driver_addr(),
                            state.device_addr(),
                        )
                    })
                    .map_err(|err| MmioError::QueueLayout { queue: q, err })?;
                self.queue_mut(q)?.layout = Some(layout);
                Ok(WriteOutcome::QueueEnabled { queue: q })
            }
            _ => Err(MmioError::BadValue { register, value: v }),
        }
    }

    fn write_queue_reset(&mut self, v: u32) -> Result<WriteOutcome, MmioError> {
        let ring_reset = TransportFeatures::RING_RESET.bits();
        if self.features.unwrap_or(0) & ring_reset == 0 {
            return Err(MmioError::RingResetNotNegotiated);
        }
        let q = self.existing_queue()?;
        match v {
            0 => Ok(WriteOutcome::Done),
            1 => {
                let max = self.device.queue_max_size(q);
                *self.queue_mut(q)? = QueueState::new(max);
                Ok(WriteOutcome::QueueReset { queue: q })
            }
            _ => Err(MmioError::BadValue {
                register: Register::QueueReset,
                value: v,
            }),
        }
    }

    fn write_notify(&mut self, v: u32) -> Result<WriteOutcome, MmioError> {
        if !self.status.stage().is_driver_ok() {
            return Err(MmioError::NotifyBeforeDriverOk { value: v });
        }
        // The queue index is the low 16 bits, with or without
        // VIRTIO_F_NOTIFICATION_DATA (§4.2.3.3).
        let queue = (v & 0xffff) as u16;
        if !self.queue(queue).is_some_and(QueueState::is_ready) {
            return Err(MmioError::NotifyQueueNotReady { queue });
        }
        Ok(WriteOutcome::Notify { queue, value: v })
    }

    /// The selected queue, if the device has it.
    fn selected(&self) -> Option<u16> {
        u16::try_from(self.queue_sel)
            .ok()
            .filter(|q| *q < self.num_queues)
    }

    fn existing_queue(&self) -> Result<u16, MmioError> {
        self.selected().ok_or(MmioError::NoSuchQueue {
            queue: self.queue_sel,
        })
    }

    /// The selected queue and its maximum, if its set-up registers may be
    /// written (it exists and is not ready, §4.2.2.2).
    fn writable_queue(&mut self, register: Register) -> Result<(u16, u16), MmioError> {
        let q = self.existing_queue()?;
        if self.queue_mut(q)?.is_ready() {
            return Err(MmioError::QueueBusy { queue: q, register });
        }
        Ok((q, self.device.queue_max_size(q)))
    }

    fn queue_mut(&mut self, q: u16) -> Result<&mut QueueState, MmioError> {
        self.queues
            .get_mut(usize::from(q))
            .ok_or(MmioError::NoSuchQueue {
                queue: u32::from(q),
            })
    }

    /// Everything §2.4 and §4.2.2.1 say a reset clears.
    fn reset_registers(&mut self) {
        self.status = StatusMachine::new();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.features = None;
        self.queue_sel = 0;
        self.shm_sel = 0;
        self.interrupt_status = InterruptStatus::empty();
        for (i, q) in self.queues.iter_mut().enumerate() {
            let max = match u16::try_from(i) {
                Ok(i) if i < self.num_queues => self.device.queue_max_size(i),
                _ => 0,
            };
            *q = QueueState::new(max);
        }
    }
}

/// The control register for a `size`-byte access at `offset`.
fn control_register(offset: u64, size: usize) -> Result<Register, MmioError> {
    if size != 4 || !offset.is_multiple_of(4) {
        return Err(MmioError::BadAccess { offset, size });
    }
    Register::from_offset(offset, MmioVersion::Modern).ok_or(MmioError::UnknownOffset { offset })
}

/// Config space: 1, 2, 4 or 8 bytes, 2-byte fields 2-aligned, wider ones
/// 4-aligned (§4.2.2.2).
fn check_config_access(offset: u64, size: usize) -> Result<(), MmioError> {
    let align = match size {
        1 => 1,
        2 => 2,
        4 | 8 => 4,
        _ => return Err(MmioError::BadAccess { offset, size }),
    };
    if !offset.is_multiple_of(align) {
        return Err(MmioError::BadAccess { offset, size });
    }
    Ok(())
}

/// Word `sel` (0 low, 1 high) of a 64-bit value; 0 above.
fn word(v: u64, sel: u32) -> u32 {
    match sel {
        0 => v as u32,
        1 => (v >> 32) as u32,
        _ => 0,
    }
}

fn set_word(v: u64, w: u32, high: bool) -> u64 {
    if high {
        (v & 0xffff_ffff) | (u64::from(w) << 32)
    } else {
        (v & !0xffff_ffff) | u64::from(w)
    }
}
