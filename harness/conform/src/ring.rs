//! A deliberately plain split-ring driver (§2.7) for the checks: it
//! writes descriptors and ring fields exactly as told, so a check can make
//! any arrangement the specification allows (and read back what the
//! device did) where a well-behaved driver queue would refuse.

use alloc::vec::Vec;

use crate::Memory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};

/// `VIRTQ_DESC_F_NEXT`.
pub const NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const INDIRECT: u16 = 4;

/// A bump allocator over the checks' DMA range.
#[derive(Clone, Debug)]
pub struct Alloc {
    next: u64,
    end: u64,
}

impl Alloc {
    /// Over `len` bytes from `start`.
    pub fn new(start: GuestAddress, len: u64) -> Self {
        Alloc {
            next: start.0,
            end: start.0.saturating_add(len),
        }
    }

    /// `len` bytes aligned to `align` (a power of two); `None` when the
    /// range is spent.
    pub fn take(&mut self, len: u64, align: u64) -> Option<GuestAddress> {
        let at = self.next.checked_add(align - 1)? & !(align - 1);
        let end = at.checked_add(len)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(GuestAddress(at))
    }
}

/// One buffer of a chain: where, how long, device-writable or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// One queue's rings in memory, driven by hand.
#[derive(Clone, Debug)]
pub struct RawRing {
    /// Where its areas are.
    pub layout: QueueLayout,
    /// The next available index the driver will publish.
    pub avail_idx: u16,
    /// The next free descriptor (descriptors are used once per check).
    pub next_desc: u16,
}

impl RawRing {
    /// A queue of `size` entries with its areas from `alloc`, zeroed.
    pub fn new(mem: &dyn Memory, alloc: &mut Alloc, size: u16) -> Option<RawRing> {
        let qs = QueueSize::new(u32::from(size)).ok()?;
        let n = u64::from(size);
        let desc = alloc.take(16 * n, 16)?;
        let avail = alloc.take(6 + 2 * n, 2)?;
        let used = alloc.take(6 + 8 * n, 4)?;
        let layout = QueueLayout::new(qs, desc, avail, used).ok()?;
        zero(mem, desc, 16 * n)?;
        zero(mem, avail, 6 + 2 * n)?;
        zero(mem, used, 6 + 8 * n)?;
        Some(RawRing {
            layout,
            avail_idx: 0,
            next_desc: 0,
        })
    }

    /// A queue of `size` entries in the legacy layout (§2.7.2 legacy
    /// interface: one contiguous, `align`-aligned area, the used ring at
    /// the next multiple of `align` after the available ring), zeroed.
    pub fn legacy(mem: &dyn Memory, alloc: &mut Alloc, size: u16, align: u64) -> Option<RawRing> {
        let qs = QueueSize::new(u32::from(size)).ok()?;
        let n = u64::from(size);
        let front = (16 * n + 6 + 2 * n).checked_next_multiple_of(align)?;
        let total = front + (6 + 8 * n).checked_next_multiple_of(align)?;
        let base = alloc.take(total, align)?;
        let layout = QueueLayout::legacy(qs, base, align).ok()?;
        zero(mem, base, total)?;
        Some(RawRing {
            layout,
            avail_idx: 0,
            next_desc: 0,
        })
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.layout.size().get()
    }

    /// Writes descriptor `i`.
    pub fn set_desc(
        &self,
        mem: &dyn Memory,
        i: u16,
        addr: GuestAddress,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Option<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.0.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write(self.layout.desc(i), &d).ok()
    }

    /// Writes `bufs` as one chain of fresh descriptors; its head.
    pub fn chain(&mut self, mem: &dyn Memory, bufs: &[Buf]) -> Option<u16> {
        let n = u16::try_from(bufs.len()).ok()?;
        let head = self.reserve(n)?;
        for (k, b) in bufs.iter().enumerate() {
            let i = head + k as u16;
            let last = k + 1 == bufs.len();
            let mut flags = if b.write { WRITE } else { 0 };
            if !last {
                flags |= NEXT;
            }
            self.set_desc(mem, i, b.addr, b.len, flags, if last { 0 } else { i + 1 })?;
        }
        Some(head)
    }

    /// Takes `n` consecutive descriptors (the caller writes them); the
    /// first. Descriptors are taken in turn and reused from 0 when the
    /// table runs out: the checks complete each request before the next
    /// wraps onto it.
    pub fn reserve(&mut self, n: u16) -> Option<u16> {
        if n == 0 || n > self.size() {
            return None;
        }
        if self.next_desc + n > self.size() {
            self.next_desc = 0;
        }
        let first = self.next_desc;
        self.next_desc += n;
        Some(first)
    }

    /// Puts `head` in the next available slot and publishes the index.
    pub fn publish(&mut self, mem: &dyn Memory, head: u16) -> Option<()> {
        let slot = self.layout.avail_slot(self.avail_idx % self.size());
        mem.write(slot, &head.to_le_bytes()).ok()?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store_u16_release(self.layout.avail_idx(), self.avail_idx)
            .ok()
    }

    /// Writes the available index as given (a check that breaks a rule).
    pub fn force_avail_idx(&self, mem: &dyn Memory, idx: u16) -> Option<()> {
        mem.store_u16_release(self.layout.avail_idx(), idx).ok()
    }

    /// Sets the available ring's flags (`VIRTQ_AVAIL_F_NO_INTERRUPT` = 1).
    pub fn set_avail_flags(&self, mem: &dyn Memory, flags: u16) -> Option<()> {
        mem.write(self.layout.avail_flags(), &flags.to_le_bytes())
            .ok()
    }

    /// Sets `used_event` (§2.7.10).
    pub fn set_used_event(&self, mem: &dyn Memory, v: u16) -> Option<()> {
        mem.write(self.layout.used_event(), &v.to_le_bytes()).ok()
    }

    /// The used ring's index.
    pub fn used_idx(&self, mem: &dyn Memory) -> u16 {
        mem.load_u16_acquire(self.layout.used_idx()).unwrap_or(0)
    }

    /// The used ring's flags (`VIRTQ_USED_F_NO_NOTIFY` = 1).
    pub fn used_flags(&self, mem: &dyn Memory) -> u16 {
        read_u16(mem, self.layout.used_flags())
    }

    /// Used element `i` (modulo the size): id and len.
    pub fn used_elem(&self, mem: &dyn Memory, i: u16) -> (u32, u32) {
        let mut b = [0u8; 8];
        let _ = mem.read(self.layout.used_slot(i % self.size()), &mut b);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    /// The descriptor table's bytes (to see that the device left it
    /// alone).
    pub fn desc_table(&self, mem: &dyn Memory) -> Vec<u8> {
        let mut b = alloc::vec![0u8; 16 * usize::from(self.size())];
        let _ = mem.read(self.layout.desc_table(), &mut b);
        b
    }
}

/// A little-endian `u16` at `at` (0 if unreadable).
pub fn read_u16(mem: &dyn Memory, at: GuestAddress) -> u16 {
    let mut b = [0u8; 2];
    let _ = mem.read(at, &mut b);
    u16::from_le_bytes(b)
}

/// Zeroes `len` bytes at `at`.
pub fn zero(mem: &dyn Memory, at: GuestAddress, len: u64) -> Option<()> {
    fill(mem, at, len, 0)
}

/// Fills `len` bytes at `at` with `byte`.
pub fn fill(mem: &dyn Memory, at: GuestAddress, len: u64, byte: u8) -> Option<()> {
    let chunk = [byte; 256];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(256);
        mem.write(GuestAddress(at.0 + done), &chunk[..n as usize])
            .ok()?;
        done += n;
    }
    Some(())
}

/// `len` bytes at `at`.
pub fn bytes(mem: &dyn Memory, at: GuestAddress, len: usize) -> Vec<u8> {
    let mut b = alloc::vec![0u8; len];
    let _ = mem.read(at, &mut b);
    b
}

/// A chain the device returned, as a watch on the device side reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Returned {
    /// The chain's head.
    pub head: u16,
    /// The used length.
    pub len: u32,
    /// Where its first buffer starts (an indirect table's first entry's
    /// buffer, for an indirect chain).
    pub first: GuestAddress,
    /// That buffer's length.
    pub first_len: u32,
}

/// The chains the device returned on `l` between used indices `from` and
/// `to` (skipping elements that name no descriptor or cannot be read).
pub fn returned(mem: &dyn Memory, l: QueueLayout, from: u16, to: u16) -> Vec<Returned> {
    let size = l.size().get();
    let mut out = Vec::new();
    let mut u = from;
    while u != to {
        let slot = l.used_slot(u % size);
        u = u.wrapping_add(1);
        let mut e = [0u8; 8];
        if mem.read(slot, &mut e).is_err() {
            continue;
        }
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let Ok(head) = u16::try_from(id) else {
            continue;
        };
        if head >= size {
            continue;
        }
        let mut d = [0u8; 16];
        if mem.read(l.desc(head), &mut d).is_err() {
            continue;
        }
        let mut addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let mut first_len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        if u16::from_le_bytes([d[12], d[13]]) & INDIRECT != 0 {
            let mut t = [0u8; 12];
            if mem.read(GuestAddress(addr), &mut t).is_err() {
                continue;
            }
            addr = u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]);
            first_len = u32::from_le_bytes([t[8], t[9], t[10], t[11]]);
        }
        out.push(Returned {
            head,
            len,
            first: GuestAddress(addr),
            first_len,
        });
    }
    out
}
