//! A [`VirtioDevice`] behind `virtio-core`'s virtio-mmio register file
//! (§4.2): [`MmioTransport`] implements the register file's small device
//! trait, and [`dispatch`] turns a register write's outcome into device work
//! and interrupts.
//!
//! The register file keeps the status machine and feature negotiation; this
//! module only forwards. It does no I/O and raises no interrupt line itself:
//! the caller (the harness) owns irqfd.

use alloc::vec::Vec;

use virtio_core::mmio::device::{
    ActivateError, MmioDevice, MmioRegisters, QueueState, WriteOutcome,
};
use virtio_core::status::DeviceStatus;

use crate::device::{DeviceError, QueueConfig, Served, VirtioDevice};

/// Adapts a [`VirtioDevice`] to the mmio register file.
#[derive(Debug)]
pub struct MmioTransport<D> {
    device: D,
    last_error: Option<DeviceError>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`.
    pub fn new(device: D) -> Self {
        MmioTransport {
            device,
            last_error: None,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The last error the device reported (activation or queue service).
    pub fn last_error(&self) -> Option<DeviceError> {
        self.last_error
    }
}

impl<D: VirtioDevice> MmioDevice for MmioTransport<D> {
    fn device_id(&self) -> u32 {
        self.device.device_type().id()
    }

    fn device_features(&self) -> u64 {
        self.device.device_features()
    }

    fn features_acceptable(&self, features: u64) -> bool {
        self.device.features_acceptable(features)
    }

    fn num_queues(&self) -> u16 {
        u16::try_from(self.device.queue_max_sizes().len()).unwrap_or(u16::MAX)
    }

    fn queue_max_size(&self, index: u16) -> u16 {
        self.device
            .queue_max_sizes()
            .get(usize::from(index))
            .copied()
            .unwrap_or(0)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.device.write_config(offset, data);
    }

    fn activate(&mut self, features: u64, queues: &[QueueState]) -> Result<(), ActivateError> {
        let configs: Vec<QueueConfig> = queues
            .iter()
            .map(|q| QueueConfig { layout: q.layout() })
            .collect();
        self.device.activate(features, configs).map_err(|e| {
            self.last_error = Some(e);
            ActivateError {
                reason: match e {
                    DeviceError::QueueNotReady { .. } => "a required queue is not enabled",
                    DeviceError::QueueNotInMemory { .. } => "a queue lies outside guest memory",
                    _ => "device refused activation",
                },
            }
        })
    }

    fn reset(&mut self) {
        self.device.reset();
        self.last_error = None;
    }
}

/// What serving one notification or backend event asks of the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// The interrupt line must be asserted.
    pub interrupt: bool,
    /// The device stopped at its work budget ([`Served::again`]): serve the
    /// same thing again soon, after other work, without waiting for the
    /// driver (issue 16, finding 2).
    pub again: bool,
}

/// Acts on a register write's outcome once: serves a notified queue (one
/// work budget's worth) and decides the used-buffer interrupt as the
/// device says; a device error sets `DEVICE_NEEDS_RESET` (§2.1.2), which
/// raises a configuration change interrupt. For transports with an event
/// loop, which put the queue back on their ready list when
/// [`Dispatched::again`] is set.
pub fn dispatch_once<D: VirtioDevice, const N: usize>(
    regs: &mut MmioRegisters<MmioTransport<D>, N>,
    outcome: WriteOutcome,
) -> Dispatched {
    match outcome {
        WriteOutcome::Notify { queue, .. } => {
            let served = regs.device_mut().device.queue_notify(queue);
            finish(regs, served)
        }
        // §4.2.2.1: no access to a queue while its QueueReady is zero. A
        // queue disabled before DRIVER_OK was never handed to the device.
        WriteOutcome::QueueDisabled { queue } | WriteOutcome::QueueReset { queue }
            if regs.status().contains(DeviceStatus::DRIVER_OK) =>
        {
            let served = regs.device_mut().device.disable_queue(queue);
            finish(regs, served)
        }
        WriteOutcome::FeaturesOk { features } => {
            regs.device_mut().device.features_ok(features);
            Dispatched::default()
        }
        WriteOutcome::ActivationFailed(_) => Dispatched {
            interrupt: regs.interrupt_asserted(),
            again: false,
        },
        _ => Dispatched::default(),
    }
}

/// [`dispatch_once`] until the device has no work left: for callers
/// without an event loop (a test, a driver and device in one thread).
/// Returns whether the interrupt line must be asserted.
pub fn dispatch<D: VirtioDevice, const N: usize>(
    regs: &mut MmioRegisters<MmioTransport<D>, N>,
    outcome: WriteOutcome,
) -> bool {
    let mut irq = false;
    loop {
        let d = dispatch_once(regs, outcome);
        irq |= d.interrupt;
        if !d.again {
            return irq;
        }
    }
}

/// The backend of the device behind `regs` became ready: resume its work
/// once (see [`dispatch_once`] for `again`).
pub fn backend_ready_once<D: VirtioDevice, const N: usize>(
    regs: &mut MmioRegisters<MmioTransport<D>, N>,
) -> Dispatched {
    let served = regs.device_mut().device.backend_ready();
    finish(regs, served)
}

/// The backend of the device behind `regs` became ready: resume its work
/// until none is left (for callers without an event loop). Returns
/// whether the interrupt line must be asserted.
pub fn backend_ready<D: VirtioDevice, const N: usize>(
    regs: &mut MmioRegisters<MmioTransport<D>, N>,
) -> bool {
    let mut irq = false;
    loop {
        let d = backend_ready_once(regs);
        irq |= d.interrupt;
        if !d.again {
            return irq;
        }
    }
}

fn finish<D: VirtioDevice, const N: usize>(
    regs: &mut MmioRegisters<MmioTransport<D>, N>,
    served: Result<Served, DeviceError>,
) -> Dispatched {
    match served {
        Ok(s) => {
            let mut irq = false;
            if s.config_changed {
                regs.config_changed();
                irq |= regs.interrupt_asserted();
            }
            if s.interrupt {
                irq |= regs.raise_used_buffer();
            }
            Dispatched {
                interrupt: irq,
                again: s.again,
            }
        }
        Err(e) => {
            regs.device_mut().last_error = Some(e);
            let _ = regs.set_needs_reset();
            Dispatched {
                interrupt: regs.interrupt_asserted(),
                again: false,
            }
        }
    }
}
