//! The part of virtio that the driver side and the device side share.
//!
//! This crate is `#![no_std]` and needs no allocator. It holds the rules of
//! the virtio 1.x specification that both ends of a virtqueue must agree on,
//! written once and used from both sides:
//!
//! - [`features`]: feature bits, the driver's choice and the device's
//!   validation of it, with the specification's dependency rules (§2.2, §6).
//! - [`status`]: the device status field and its state machine (§2.1, §3.1).
//! - [`memory`]: guest addresses, checked access to guest memory, atomic ring
//!   index access and zero-copy mapping to host segments, with an optional
//!   IOMMU layer for `VIRTIO_F_ACCESS_PLATFORM`.
//! - [`split`]: the split virtqueue (§2.7) seen from the device
//!   ([`split::DeviceQueue`], [`split::DescriptorChain`]) and from the driver
//!   ([`split::DriverQueue`]), with notification suppression (§2.7.7,
//!   §2.7.10).
//! - [`mmio`]: the virtio-mmio register map (§4.2.2, legacy §4.2.4), a
//!   device-side register file and a driver-side accessor.
//!
//! # Example
//!
//! Both ends of one split queue over a small piece of guest memory: the
//! driver offers a readable and a writable buffer, the device reads the
//! request and writes its answer, and the driver takes the completion back.
//!
//! ```rust
//! use virtio_core::memory::{GuestAddress, GuestMemory, Region, RegionMemory};
//! use virtio_core::split::{DeviceQueue, DriverQueue, QueueLayout, QueueSize};
//!
//! let mut backing = vec![0u64; 0x4000 / 8]; // 16 KiB, 8-byte aligned
//! let mut mem = RegionMemory::<1>::new();
//! // SAFETY: `backing` outlives `mem` and is only reached through it.
//! mem.add(unsafe { Region::new(GuestAddress(0), backing.as_mut_ptr().cast(), 0x4000) })?;
//!
//! let (desc, avail, used) = (GuestAddress(0), GuestAddress(0x1000), GuestAddress(0x2000));
//! let layout = QueueLayout::new(QueueSize::new(8)?, desc, avail, used)?;
//! let mut driver = DriverQueue::<8>::new(layout, false, None)?;
//! driver.init(&mem)?;
//! let mut device = DeviceQueue::new(layout, false, false);
//!
//! // Driver: a 4-byte request and a 16-byte reply buffer, then the kick.
//! mem.write(GuestAddress(0x3000), b"ping")?;
//! let token = driver.add(&mem, &[(GuestAddress(0x3000), 4)], &[(GuestAddress(0x3100), 16)])?;
//! driver.publish(&mem)?;
//! assert!(driver.should_kick(&mem)?);
//!
//! // Device: pop the chain, read the request, write the reply, return it.
//! let chain = device.pop(&mem)?.expect("a chain is available");
//! let head = chain.head();
//! let (mut request, mut reply) = chain.reader_writer::<4>()?;
//! let mut buf = [0u8; 4];
//! request.read_exact(&mut buf)?;
//! assert_eq!(&buf, b"ping");
//! reply.write_all(b"pong")?;
//! device.add_used(&mem, head, reply.written())?;
//! device.publish_used(&mem)?;
//!
//! // Driver: the completion, checked against what was offered.
//! let used = driver.pop_used(&mem)?.expect("a completion");
//! assert_eq!((used.token, used.len), (token, 4));
//! let mut answer = [0u8; 4];
//! mem.read(GuestAddress(0x3100), &mut answer)?;
//! assert_eq!(&answer, b"pong");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design choices
//!
//! - Guest memory is shared with a running guest (or device). No Rust
//!   reference ever points into it: bytes are copied in and out through raw
//!   pointers, ring indices use atomics, and zero-copy I/O gets raw
//!   `(pointer, length)` segments ([`memory::HostSegment`]).
//! - Everything the other side controls is read once into a local and
//!   validated there; every violation is a typed error, never a panic and
//!   never a silent end of a chain.
//! - There is no I/O, no thread, no clock and no allocation here: the caller
//!   decides when to poll, kick and interrupt.
//!
//! # Not supported (yet)
//!
//! The packed virtqueue (§2.8) and virtio-pci (§4.1) are not implemented; the
//! device queue API and the register trait are the seams for them.
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "test-utils")]
extern crate alloc;

pub mod blk;
pub mod console;
pub mod crypto;
pub mod features;
pub mod memory;
pub mod mmio;
pub mod net;
pub mod split;
pub mod status;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use memory::{GuestAddress, GuestMemory, MemoryError};
