//! virtio device frontends: one module per device type, each generic over a
//! host backend trait from `backends`, parsing requests only through
//! `virtio-core` chains and guest memory.
//!
//! This crate is `no_std` with `alloc`. The `VirtioDevice` trait and the
//! first devices arrive with the harness issue; for now it only ties the
//! dependency graph together.
#![no_std]

extern crate alloc;

pub use backends;
pub use virtio_core;
