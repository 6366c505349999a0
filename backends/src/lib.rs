//! Host resources that virtio devices sit in front of, independent of virtio:
//! QEMU's `backends/`, `net/`, `block/` and `chardev/` layer.
//!
//! The core is `no_std`; implementations that need the operating system live
//! behind the `std` feature. The traits and implementations arrive with the
//! device issues.
//!
//! # Example
//!
//! A device frontend sees only the traits: here a disk held in memory is
//! written and read back through [`IoSegment`]s, as virtio-blk hands it
//! guest buffers, and a loopback network returns the frame it was sent.
//!
//! ```rust
//! use backends::IoSegment;
//! use backends::block::{BlockBackend, memory::MemoryDisk};
//! use backends::net::{NetBackend, Sent, loopback::Loopback};
//!
//! let mut disk = MemoryDisk::new(8); // 8 sectors of 512 bytes
//! let mut sector = [0xabu8; 512];
//! let seg = [IoSegment { ptr: sector.as_mut_ptr(), len: sector.len() }];
//! // SAFETY: `sector` is valid for the whole call and not borrowed meanwhile.
//! unsafe { disk.write_vectored(512, &seg)? };
//! disk.flush()?;
//! let mut back = [0u8; 512];
//! let seg = [IoSegment { ptr: back.as_mut_ptr(), len: back.len() }];
//! // SAFETY: as above, for `back`.
//! unsafe { disk.read_vectored(512, &seg)? };
//! assert_eq!(back, sector);
//!
//! let mut net = Loopback::default();
//! assert_eq!(net.send(&[b"header ", b"payload"])?, Sent::Done);
//! let mut frame = [0u8; 64];
//! let len = net.recv(&mut frame)?.expect("the frame comes back");
//! assert_eq!(&frame[..len], b"header payload");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
