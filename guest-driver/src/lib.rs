//! The driver side of virtio for firmware and unikernels.
//!
//! `#![no_std]`, no allocator (the `alloc` feature only adds
//! `hal::GlobalAllocHal`). It builds on `virtio-core`'s status machine,
//! feature negotiation, virtio-mmio accessor and driver-side split queue,
//! and adds what a tiny guest needs around them:
//!
//! - [`cmdline`]: the virtio-mmio slots of the kernel command line
//!   (`virtio_mmio.device=<size>@<base>:<irq>[:<id>]`, Linux's syntax).
//! - [`hal`]: the DMA [`Hal`] trait, identity-mapping helpers and
//!   [`PoolHal`], a page allocator over a region the program gives it.
//! - [`mmio`]: [`VolatileMmio`], register access to a real slot.
//! - [`transport`]: [`Transport`], probe and the initialization sequence of
//!   §3.1.1 on version 2 and legacy version 1 devices; interrupt
//!   acknowledgement.
//! - [`queue`]: [`DmaQueue`], a split virtqueue with its buffers in one DMA
//!   allocation, seen through [`queue::DmaMemory`].
//! - [`wait`]: the bound on every wait ([`Polls`], [`Deadline`] on a
//!   [`wait::Clock`]).
//! - [`rng`] (§5.4), [`console`] (§5.3, with MULTIPORT), [`blk`] (§5.2,
//!   with MQ, several requests in flight) and [`net`] (§5.1, checksum
//!   offload, mergeable buffers, control queue; a smoltcp device behind
//!   feature `smoltcp`): the drivers.
//! - [`tpm`]: a TPM 2.0 driver over the CRB interface (not virtio: the
//!   TPM firmware measures its boot into), with the commands firmware
//!   needs.
//!
//! # Example
//!
//! The entropy driver against our own virtio-rng device in the same
//! process: the guest's RAM is a page-aligned buffer the device sees at
//! `PHYS`, and `Bus` (hidden below, a dozen lines) is a
//! [`RegisterAccess`](virtio_core::mmio::driver::RegisterAccess) that
//! forwards register accesses to `virtio-core`'s device-side register file
//! and serves the device on `QueueNotify`, as a VMM's ioeventfd handler
//! would. On real hardware `bus` is a [`VolatileMmio`] instead.
//!
//! ```rust
//! use std::cell::RefCell;
//! use std::ptr::NonNull;
//!
//! use backends::rng::{Deterministic, RngBackend};
//! use guest_driver::{PoolHal, Polls, Rng, RngOptions};
//! use virtio_core::memory::{GuestAddress, Region, RegionMemory};
//! use virtio_core::mmio::device::MmioRegisters;
//! use virtio_devices::transport::MmioTransport;
//! # use virtio_core::mmio::driver::RegisterAccess;
//! # struct Bus<D: virtio_devices::VirtioDevice>(RefCell<MmioRegisters<MmioTransport<D>>>);
//! # impl<D: virtio_devices::VirtioDevice> RegisterAccess for Bus<D> {
//! #     fn read32(&self, at: u64) -> u32 { self.0.borrow().read32(at).unwrap_or(0) }
//! #     fn write32(&self, at: u64, value: u32) {
//! #         let mut regs = self.0.borrow_mut();
//! #         if let Ok(outcome) = regs.write32(at, value) {
//! #             virtio_devices::transport::dispatch(&mut regs, outcome);
//! #         }
//! #     }
//! #     fn read16(&self, at: u64) -> u16 { let mut b = [0; 2]; let _ = self.0.borrow().read(at, &mut b); u16::from_le_bytes(b) }
//! #     fn write16(&self, at: u64, value: u16) { let _ = self.0.borrow_mut().write(at, &value.to_le_bytes()); }
//! #     fn read8(&self, at: u64) -> u8 { let mut b = [0; 1]; let _ = self.0.borrow().read(at, &mut b); b[0] }
//! #     fn write8(&self, at: u64, value: u8) { let _ = self.0.borrow_mut().write(at, &[value]); }
//! # }
//!
//! #[repr(C, align(4096))]
//! struct Ram([u8; 8 * 4096]);
//! const PHYS: u64 = 0x4000_0000;
//! let ram = NonNull::from(Box::leak(Box::new(Ram([0; 8 * 4096])))).cast::<u8>();
//!
//! // Host side: virtio-rng over that memory, behind a register file.
//! let mut mem = RegionMemory::<1>::new();
//! // SAFETY: `ram` is never freed and only reached through raw pointers.
//! mem.add(unsafe { Region::new(GuestAddress(PHYS), ram.as_ptr(), 8 * 4096) })?;
//! let device = virtio_devices::rng::Rng::new(Deterministic::new(7), mem);
//! let bus = Bus(RefCell::new(MmioRegisters::new(MmioTransport::new(device))?));
//!
//! // Guest side: probe, initialise (§3.1.1) and read 32 bytes.
//! // SAFETY: as above; the device reaches `ram` at `PHYS`.
//! let hal = unsafe { PoolHal::<8>::new(ram, PHYS, 8 * 4096)? };
//! let mut rng = Rng::new(&hal, &bus, RngOptions::default())?;
//! let mut got = [0u8; 32];
//! rng.read_exact(&mut got, &mut Polls::new(10))?;
//!
//! let mut want = [0u8; 32];
//! Deterministic::new(7).fill(&mut want)?;
//! assert_eq!(got, want);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design choices
//!
//! - **It trusts nothing the device writes.** Every used element is
//!   checked by virtio-core (id in flight, length within the buffer, index
//!   not jumping); a violation is an [`Error`] and the queue stays broken.
//!   Device-specific rules are checked here (an empty entropy completion,
//!   §5.4.6.2; malformed console control messages, §5.3.6.2.1).
//! - **It never waits without a bound.** Every blocking call takes a
//!   [`Wait`]; a timeout leaves requests in flight and is reported as such
//!   (or as DEVICE_NEEDS_RESET when the device set it).
//! - **No caller buffer is ever given to the device.** Data is copied into
//!   and out of driver-owned DMA slots, so a request that times out cannot
//!   later scribble over the caller's memory.
//! - **No Rust reference into memory the device may write.** What the
//!   device wrote is read through [`DmaBytes`] (atomic byte reads) or
//!   copied out, so a device writing a buffer it already gave back
//!   changes bytes, never the soundness of the driver.
//! - **Memory is freed only after a reset.** Dropping a driver resets the
//!   device first (§2.4); a device that does not reset keeps its pages.
//!
//! # Not supported
//!
//! virtio-pci, the packed virtqueue, indirect descriptors, zero-copy of
//! caller buffers, port hot-plug beyond the queues set up at
//! initialisation, big-endian guests on legacy devices.
#![no_std]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod blk;
pub mod cmdline;
pub mod console;
pub mod crypto;
pub mod error;
pub mod hal;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod tpm;
pub mod transport;
pub mod wait;

pub use blk::{Blk, BlkError, BlkOptions};
pub use console::{Console, ConsoleOptions};
pub use error::Error;
pub use hal::{Hal, PoolHal};
pub use mmio::VolatileMmio;
pub use net::{Net, NetError, NetOptions};
pub use queue::{DmaBytes, DmaQueue};
pub use rng::{Rng, RngOptions};
pub use transport::{Completion, Transport};
pub use virtio_core;
pub use wait::{Deadline, Polls, Wait};
