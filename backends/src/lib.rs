//! Host resources that virtio devices sit in front of, independent of virtio:
//! QEMU's `backends/`, `net/`, `block/` and `chardev/` layer.
//!
//! The core is `no_std`; implementations that need the operating system live
//! behind the `std` feature. The traits and implementations arrive with the
//! device issues.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod block;
pub mod chardev;
pub mod crypto;
#[cfg(feature = "std")]
pub mod hostmem;
pub mod net;
pub mod rng;
#[cfg(feature = "std")]
pub mod socket;
pub mod tpm;

/// One piece of host memory for vectored I/O: a raw pointer and a length, so
/// a backend can hand guest buffers to the OS without a Rust slice ever
/// covering guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoSegment {
    /// First byte.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
}
