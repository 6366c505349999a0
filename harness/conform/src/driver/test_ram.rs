//! Guest memory for the watches' unit tests: plain bytes at address 0.

use alloc::vec::Vec;
use core::cell::RefCell;

use virtio_core::memory::{GuestAddress, MemoryError};
use virtio_core::split::layout::{QueueLayout, QueueSize};

use crate::Memory;

/// `len` bytes of guest memory at address 0.
pub struct Ram(pub RefCell<Vec<u8>>);

impl Ram {
    /// Zeroed memory of `len` bytes.
    pub fn new(len: usize) -> Self {
        Ram(RefCell::new(alloc::vec![0; len]))
    }
}

impl Memory for Ram {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let ram = self.0.borrow();
        let src = usize::try_from(addr.0)
            .ok()
            .and_then(|a| ram.get(a..a.checked_add(buf.len())?))
            .ok_or(MemoryError::OutOfBounds {
                addr,
                len: buf.len() as u64,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let a = addr.0 as usize;
        self.0.borrow_mut()[a..a + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.write(addr, &val.to_le_bytes())
    }
}

/// A queue of `size` entries whose areas start at `base`, `base + 0x200`
/// and `base + 0x400` (room for up to 16 entries each).
pub fn layout(size: u16, base: u64) -> QueueLayout {
    QueueLayout::new(
        QueueSize::new(u32::from(size)).expect("a power of two"),
        GuestAddress(base),
        GuestAddress(base + 0x200),
        GuestAddress(base + 0x400),
    )
    .expect("an aligned layout")
}

/// Writes descriptor `i` of layout `l`.
pub fn put(ram: &Ram, l: &QueueLayout, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    ram.write(l.desc(i), &d).unwrap();
}
