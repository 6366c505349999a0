//! The driver side of virtio for firmware and unikernels.
//!
//! `#![no_std]`, `alloc` optional. It builds on `virtio-core`'s driver-side
//! queue, status machine and mmio accessor; transport discovery, the DMA
//! `Hal` and the device drivers arrive with the harness issue.
#![no_std]

pub use virtio_core;
