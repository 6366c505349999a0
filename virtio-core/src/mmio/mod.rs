//! The virtio-mmio transport (spec §4.2): the register map ([`regs`]), the
//! device-side register file ([`device`]) and the driver-side accessor
//! ([`driver`]), which share the status machine and feature rules.
//!
//! Version 2 is implemented on both sides; the legacy version 1 (§4.2.4)
//! only on the driver side. Shared memory regions are reported absent.

pub mod device;
pub mod driver;
pub mod regs;

pub use device::{ActivateError, MmioDevice, MmioError, MmioRegisters, QueueState, WriteOutcome};
pub use driver::{DriverError, MmioDriver, RegisterAccess};
pub use regs::{InterruptStatus, MmioVersion, Register};

#[cfg(test)]
mod tests;
