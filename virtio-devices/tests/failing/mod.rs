//! Guest memory whose copies into one range fail while it is set: memory
//! that goes away after a chain was walked (a region removed, a file that
//! shrank). Mappings still succeed, so chains walk as before.
#![allow(dead_code)]

use std::ops::Range;
use std::sync::Mutex;

use virtio_core::GuestMemory;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError};
use virtio_core::testing::OwnedMemory;

/// See the module docs.
pub struct Failing {
    pub mem: &'static OwnedMemory,
    pub fail: Mutex<Option<Range<u64>>>,
}

impl Failing {
    /// Over `mem`, with writes to `fail` failing.
    pub fn leak(mem: &'static OwnedMemory, fail: Option<Range<u64>>) -> &'static Failing {
        Box::leak(Box::new(Failing {
            mem,
            fail: Mutex::new(fail),
        }))
    }

    /// Makes writes to `range` fail (or none, with `None`).
    pub fn set(&self, range: Option<Range<u64>>) {
        *self.fail.lock().unwrap() = range;
    }

    fn hits(&self, addr: GuestAddress, len: u64) -> bool {
        self.fail
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|r| addr.0 < r.end && r.start < addr.0 + len)
    }
}

impl GuestMemory for Failing {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.mem.map(addr, len, access)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        if self.hits(addr, len) {
            return Err(MemoryError::OutOfBounds { addr, len });
        }
        self.mem.write(addr, buf)
    }
}
