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
//!
//! # Example
//!
//! A virtio-rng device in front of a seeded entropy source: the driver's
//! side negotiates features and posts one writable buffer, the device is
//! activated with that queue and fills the buffer when notified.
//!
//! ```rust
//! use backends::rng::{Deterministic, RngBackend};
//! use virtio_core::features::{DeviceType, driver_select};
//! use virtio_core::memory::{GuestAddress, GuestMemory, Region, RegionMemory};
//! use virtio_core::split::{DriverQueue, QueueLayout, QueueSize};
//! use virtio_devices::{QueueConfig, VirtioDevice, rng::Rng};
//!
//! let mut backing = vec![0u64; 0x4000 / 8];
//! let mut mem = RegionMemory::<1>::new();
//! // SAFETY: `backing` outlives `mem` and is only reached through it.
//! mem.add(unsafe { Region::new(GuestAddress(0), backing.as_mut_ptr().cast(), 0x4000) })?;
//!
//! let mut dev = Rng::new(Deterministic::new(42), &mem);
//! assert_eq!(dev.device_type(), DeviceType::Rng);
//! let features = driver_select(DeviceType::Rng, dev.device_features(), 0);
//! let (desc, avail, used) = (GuestAddress(0), GuestAddress(0x1000), GuestAddress(0x2000));
//! let layout = QueueLayout::new(QueueSize::new(8)?, desc, avail, used)?;
//! let mut driver = DriverQueue::<8>::new(layout, false, None)?;
//! driver.init(&mem)?;
//! dev.activate(features, vec![QueueConfig { layout: Some(layout) }])?;
//!
//! driver.add(&mem, &[], &[(GuestAddress(0x3000), 16)])?;
//! driver.publish(&mem)?;
//! let served = dev.queue_notify(0)?;
//! assert_eq!(served.completed, 1);
//! assert!(served.interrupt);
//!
//! let used = driver.pop_used(&mem)?.expect("one completion");
//! assert_eq!(used.len, 16);
//! let (mut got, mut want) = ([0u8; 16], [0u8; 16]);
//! mem.read(GuestAddress(0x3000), &mut got)?;
//! Deterministic::new(42).fill(&mut want)?;
//! assert_eq!(got, want);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
