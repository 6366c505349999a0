//! Guest memory for one input, reused by the next: allocating and zeroing a
//! fresh image per input (page faults, the kernel clearing pages, ASan's
//! allocator and quarantine) cost the memory-heavy targets more than their
//! own work, so a dropped [`Scratch`] is zeroed and kept for the next input
//! of the same size. Every input still starts from all-zero memory, so runs
//! stay reproducible.

use std::cell::RefCell;
use std::ops::Deref;

use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::testing::OwnedMemory;

/// Zeroes used to clear a returned image, a chunk at a time.
static ZEROES: [u8; 0x1_0000] = [0; 0x1_0000];

thread_local! {
    /// Zeroed images waiting for an input, with their sizes.
    static FREE: RefCell<Vec<(usize, OwnedMemory)>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed memory of one region at guest address 0, handed back for reuse
/// when dropped.
pub struct Scratch {
    size: usize,
    mem: Option<OwnedMemory>,
}

/// A zeroed memory of `size` bytes at guest address 0 (reused if an earlier
/// input left one of that size).
pub fn memory(size: usize) -> Scratch {
    let cached = FREE.with(|free| {
        let mut free = free.borrow_mut();
        let at = free.iter().position(|(s, _)| *s == size)?;
        Some(free.swap_remove(at).1)
    });
    Scratch {
        size,
        mem: Some(cached.unwrap_or_else(|| OwnedMemory::new(GuestAddress(0), size))),
    }
}

impl Deref for Scratch {
    type Target = OwnedMemory;

    fn deref(&self) -> &OwnedMemory {
        self.mem.as_ref().expect("present until dropped")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let mut at = 0;
        while at < self.size {
            let n = (self.size - at).min(ZEROES.len());
            if mem.write(GuestAddress(at as u64), &ZEROES[..n]).is_err() {
                // Cannot happen for an image of this size; drop it rather
                // than hand out dirty memory.
                return;
            }
            at += n;
        }
        FREE.with(|free| free.borrow_mut().push((self.size, mem)));
    }
}

#[cfg(test)]
mod tests {
    use super::memory;
    use virtio_core::GuestMemory;
    use virtio_core::memory::GuestAddress;

    #[test]
    fn a_reused_image_comes_back_zeroed() {
        let size = 0x2_3000;
        let first_ptr;
        {
            let mem = memory(size);
            mem.write(GuestAddress(0), &[0xaa; 64]).unwrap();
            mem.write(GuestAddress(size as u64 - 64), &[0xbb; 64])
                .unwrap();
            first_ptr = &*mem as *const _ as usize;
            // Two at once: the second is a different image.
            let other = memory(size);
            assert_ne!(&*other as *const _ as usize, first_ptr);
        }
        let mem = memory(size);
        let mut all = vec![1u8; size];
        mem.read(GuestAddress(0), &mut all).unwrap();
        assert!(all.iter().all(|&b| b == 0), "reused image is not zero");
    }
}
