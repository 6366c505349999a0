//! The frames a receive queue holds until the driver posts buffers.

use alloc::vec::Vec;
use core::mem;

/// Frames waiting for receive buffers: a fixed ring of fixed-size slots,
/// each holding the header the driver will see followed by the frame. A
/// frame arrives in a spare slot-sized buffer and is swapped in, so
/// steering it to one ring or another copies nothing.
#[derive(Debug)]
pub(super) struct FrameRing {
    slots: Vec<Vec<u8>>,
    lens: Vec<usize>,
    head: usize,
    pub(super) count: usize,
}

impl FrameRing {
    pub(super) fn new(slots: usize, slot: usize) -> Self {
        FrameRing {
            slots: (0..slots).map(|_| alloc::vec![0; slot]).collect(),
            lens: alloc::vec![0; slots],
            head: 0,
            count: 0,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.count == self.lens.len()
    }

    /// Queues the `len` bytes of `frame` by swapping it with the tail
    /// slot (`frame` gets that slot's buffer back, of the same size).
    pub(super) fn push_swap(&mut self, frame: &mut Vec<u8>, len: usize) {
        if self.is_full() {
            return;
        }
        let i = (self.head + self.count) % self.lens.len();
        mem::swap(&mut self.slots[i], frame);
        self.lens[i] = len;
        self.count += 1;
    }

    pub(super) fn front(&mut self) -> Option<&mut [u8]> {
        if self.count == 0 {
            return None;
        }
        let len = self.lens[self.head];
        self.slots[self.head].get_mut(..len)
    }

    pub(super) fn pop(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % self.lens.len();
            self.count -= 1;
        }
    }

    pub(super) fn clear(&mut self) -> usize {
        let n = self.count;
        self.head = 0;
        self.count = 0;
        n
    }
}
