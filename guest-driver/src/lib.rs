//! The driver side of virtio for firmware and unikernels.
//!
//! `#![no_std]`, `alloc` optional. It builds on `virtio-core`'s driver-side
//! queue, status machine and mmio accessor. [`cmdline`] finds virtio-mmio
//! transports on the kernel command line; [`hal`] holds the DMA `Hal` trait
//! and volatile register access. The device drivers arrive with the rest of
//! the harness issue.
#![no_std]

pub mod cmdline;
pub mod hal;

pub use virtio_core;
