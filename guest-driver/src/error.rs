//! The one error type of the drivers: which step failed and which rule the
//! device broke, with the spec section in its message.
//!
//! Device misbehaviour is never a panic: it is one of these variants, and a
//! queue the device broke stays broken (virtio-core's `DriverQueue`) until
//! the driver is initialised again.

use core::fmt;

use virtio_core::features::DeviceType;
use virtio_core::memory::{MemoryError, RegionError};
use virtio_core::mmio::DriverError as MmioError;
use virtio_core::split::{DriverError as QueueError, LayoutError};

use crate::hal::PhysAddr;

/// Why a driver operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The transport refused a step: probe (§4.2.3.1.1), status and feature
    /// negotiation (§3.1.1), queue registers (§4.2.3.2), configuration
    /// space (§2.5.1).
    Transport(MmioError),
    /// The device is not of the type the driver drives (§5).
    WrongDevice {
        /// The type the driver wanted.
        expected: DeviceType,
        /// The `DeviceID` found.
        found: u32,
    },
    /// The `Hal` had no run of this many DMA pages.
    DmaExhausted {
        /// Pages asked for.
        pages: usize,
    },
    /// The `Hal` returned DMA memory that cannot be described as guest
    /// memory (it wraps the address space).
    DmaRegion {
        /// Its physical address.
        paddr: PhysAddr,
        /// Why it was refused.
        err: RegionError,
    },
    /// No valid split-queue layout for this queue in the memory the `Hal`
    /// gave (§2.7).
    Layout {
        /// The queue index.
        queue: u16,
        /// Why.
        err: LayoutError,
    },
    /// A virtqueue operation failed; with a device fault (§2.7.8, §2.7.14)
    /// the queue is broken until the driver is initialised again.
    Queue {
        /// The queue index.
        queue: u16,
        /// Why.
        err: QueueError,
    },
    /// Copying to or from a queue's DMA buffers failed.
    Memory {
        /// The queue index.
        queue: u16,
        /// Why.
        err: MemoryError,
    },
    /// The caller's [`Wait`](crate::wait::Wait) ran out before the device
    /// used a buffer of this queue (§2.7.14: nothing bounds the device).
    Timeout {
        /// The queue waited on.
        queue: u16,
    },
    /// The device set DEVICE_NEEDS_RESET (§2.1.2); initialise it again.
    DeviceNeedsReset,
    /// The entropy device completed a request with no bytes (§5.4.6.2: it
    /// MUST place one or more).
    EmptyEntropy {
        /// The queue.
        queue: u16,
    },
    /// The console has no such port, or it was not set up (§5.3.2).
    NoSuchPort {
        /// The port.
        port: u32,
    },
    /// The console port exists but the device has not added it (§5.3.6.2:
    /// `VIRTIO_CONSOLE_DEVICE_ADD`) or removed it.
    PortNotReady {
        /// The port.
        port: u32,
    },
    /// After a reset the device negotiated different features than before
    /// (§2.2), so the queues set up for the old ones do not fit.
    FeaturesChanged {
        /// Features of the first initialisation.
        before: u64,
        /// Features now.
        after: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Transport(e) => write!(f, "virtio-mmio transport: {e}"),
            Error::WrongDevice { expected, found } => write!(
                f,
                "DeviceID {found} is not {expected:?} (ID {}) (§5)",
                expected.id()
            ),
            Error::DmaExhausted { pages } => {
                write!(f, "no run of {pages} free DMA pages")
            }
            Error::DmaRegion { paddr, err } => {
                write!(f, "DMA memory at {paddr:#x} is unusable: {err}")
            }
            Error::Layout { queue, err } => write!(f, "queue {queue} layout: {err}"),
            Error::Queue { queue, err } => write!(f, "queue {queue}: {err}"),
            Error::Memory { queue, err } => write!(f, "queue {queue} buffers: {err}"),
            Error::Timeout { queue } => write!(
                f,
                "timed out waiting for the device to use a buffer of queue {queue} (§2.7.14)"
            ),
            Error::DeviceNeedsReset => f.write_str("the device set DEVICE_NEEDS_RESET (§2.1.2)"),
            Error::EmptyEntropy { queue } => write!(
                f,
                "queue {queue}: the entropy device returned 0 bytes; it MUST return at least \
                 one (§5.4.6.2)"
            ),
            Error::NoSuchPort { port } => write!(f, "console port {port} is not set up (§5.3.2)"),
            Error::PortNotReady { port } => write!(
                f,
                "console port {port} has not been added by the device (§5.3.6.2)"
            ),
            Error::FeaturesChanged { before, after } => write!(
                f,
                "the device negotiated features {after:#x} after a reset, {before:#x} before (§2.2)"
            ),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Transport(e) => Some(e),
            Error::DmaRegion { err, .. } => Some(err),
            Error::Layout { err, .. } => Some(err),
            Error::Queue { err, .. } => Some(err),
            Error::Memory { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<MmioError> for Error {
    fn from(e: MmioError) -> Self {
        Error::Transport(e)
    }
}

impl Error {
    /// Whether the device broke a rule (rather than the caller, the
    /// environment or the clock being at fault, or the device simply not
    /// being one this driver drives): a malformed used ring (§2.7.8,
    /// §2.7.14), an empty entropy completion (§5.4.6.2), DEVICE_NEEDS_RESET
    /// (§2.1.2), a refused or unexpected status step (§3.1.1), a queue or
    /// configuration that does not read back (§4.2.3.2, §2.5.1), features
    /// that changed across a reset.
    pub fn is_device_fault(&self) -> bool {
        match self {
            Error::Queue { err, .. } => err.is_device_fault() || *err == QueueError::Broken,
            Error::Transport(e) => matches!(
                e,
                MmioError::Status(_)
                    | MmioError::Version1NotOffered
                    | MmioError::QueueInUse { .. }
                    | MmioError::QueueNotEnabled { .. }
                    | MmioError::ConfigUnstable
            ),
            Error::DeviceNeedsReset | Error::EmptyEntropy { .. } => true,
            Error::FeaturesChanged { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn messages_name_the_spec_rule() {
        let e = Error::Timeout { queue: 3 };
        assert!(e.to_string().contains("§2.7.14"));
        assert!(!e.is_device_fault());
        let e = Error::Queue {
            queue: 0,
            err: QueueError::UsedIdTwice { id: 2 },
        };
        assert!(e.to_string().contains("queue 0") && e.to_string().contains("§2.7.8"));
        assert!(e.is_device_fault());
        assert!(core::error::Error::source(&e).is_some());
        let e = Error::Transport(MmioError::BadMagic { found: 1 });
        assert!(!e.is_device_fault());
        let e = Error::WrongDevice {
            expected: DeviceType::Console,
            found: 4,
        };
        assert!(e.to_string().contains("ID 3"), "{e}");
    }
}
