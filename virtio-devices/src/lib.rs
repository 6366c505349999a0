//! virtio device frontends: one module per device type, each generic over a
//! host backend trait from `backends`, parsing requests only through
//! `virtio-core` chains and guest memory.
//!
//! [`VirtioDevice`] is the frontend's side of QEMU's `VirtioDeviceClass`:
//! type, queues, features, configuration space, activate, queue notify,
//! reset. [`transport::MmioTransport`] puts any of them behind
//! `virtio-core`'s virtio-mmio register file. A device never blocks: it
//! processes what is available, keeps what it cannot finish pending, and
//! resumes when its backend says it is ready.
//!
//! `no_std` with `alloc`.
#![no_std]

extern crate alloc;

pub mod blk;
pub mod console;
pub mod crypto;
pub mod device;
pub mod misbehave;
pub mod net;
pub mod rng;
pub mod transport;

pub use backends;
pub use device::{
    DEFAULT_QUEUE_SIZE, DeviceError, QueueConfig, Served, VirtioDevice, read_config_bytes,
};
pub use virtio_core;
