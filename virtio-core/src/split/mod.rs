//! The split virtqueue (spec §2.7) from both ends.
//!
//! [`layout`] holds the wire formats and offsets both sides agree on;
//! [`chain`] walks a descriptor chain as the device must (bounded, loop-free,
//! indirect tables per §2.7.5.3) and reads and writes through it;
//! [`device`] is the device's view of a queue (pop, add_used, notification
//! suppression); [`driver`] is the driver's (add, kick, pop_used) and trusts
//! nothing the device writes.
//!
//! The packed virtqueue (§2.8) is not implemented.

pub mod chain;
pub mod device;
pub mod driver;
pub mod layout;

pub use chain::{ChainError, DescriptorChain, ParkedReader, Reader, Writer};
pub use device::{DeviceQueue, QueueError};
pub use driver::{DriverError, DriverQueue, IndirectArea, Token, Used};
pub use layout::{
    AvailFlags, DescFlags, Descriptor, LayoutError, QueueLayout, QueueSize, UsedElem, UsedFlags,
    vring_need_event,
};
