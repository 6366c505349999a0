//! Raw register access to a real virtio-mmio transport (spec §4.2.2):
//! [`VolatileMmio`], virtio-core's `RegisterAccess` by volatile loads and
//! stores at the mapped base of a slot.
//!
//! Only the access itself lives here; what the registers mean is
//! virtio-core's `MmioDriver`, and the init sequence is [`crate::transport`].

use core::ptr::NonNull;

use virtio_core::mmio::driver::RegisterAccess;

use crate::cmdline::MmioSlot;
use crate::hal::Hal;

/// Register access to a virtio-mmio transport by volatile loads and stores
/// at its mapped base (§4.2.2: 32-bit control registers, configuration space
/// in the width of the field).
///
/// Accesses outside the block or misaligned for their width are not made:
/// reads return 0, writes are dropped, so no offset can reach memory beyond
/// the slot.
#[derive(Debug)]
pub struct VolatileMmio {
    base: NonNull<u8>,
    size: usize,
}

impl VolatileMmio {
    /// Register access at `base`, `size` bytes long.
    ///
    /// # Safety
    ///
    /// `base` must map the transport's `size`-byte register block as device
    /// memory (uncached) for as long as this value is used, and nothing else
    /// may access it meanwhile, except an interrupt handler reading
    /// `InterruptStatus` and writing `InterruptACK` (see
    /// [`crate::transport::acknowledge_interrupt`]).
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Self {
        VolatileMmio { base, size }
    }

    /// Register access for a slot found on the command line, mapped by
    /// `hal`; `None` if the `Hal` cannot map it or the size does not fit
    /// `usize`.
    ///
    /// # Safety
    ///
    /// The slot must really be a virtio-mmio register block (as the
    /// command line of a trusted loader says), and the conditions of
    /// [`new`](Self::new) must hold for the mapping `hal` returns.
    pub unsafe fn from_slot<H: Hal + ?Sized>(hal: &H, slot: &MmioSlot) -> Option<Self> {
        let size = usize::try_from(slot.size).ok()?;
        let base = hal.mmio_phys_to_virt(slot.base, size)?;
        // SAFETY: the caller's promise for the slot and its mapping.
        Some(unsafe { Self::new(base, size) })
    }

    /// The mapped base.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The size of the register block in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The pointer for an access of `width` bytes at `offset`, if it lies in
    /// the block and is aligned.
    fn at(&self, offset: u64, width: usize) -> Option<*mut u8> {
        let off = usize::try_from(offset).ok()?;
        if off.checked_add(width)? > self.size || !off.is_multiple_of(width) {
            return None;
        }
        Some(self.base.as_ptr().wrapping_add(off))
    }
}

macro_rules! volatile_rw {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&self, offset: u64) -> $t {
            match self.at(offset, size_of::<$t>()) {
                // SAFETY: in range and aligned per `at`; the block is mapped
                // device memory per `new`'s contract.
                Some(p) => unsafe { p.cast::<$t>().read_volatile() },
                None => 0,
            }
        }
        fn $write(&self, offset: u64, value: $t) {
            if let Some(p) = self.at(offset, size_of::<$t>()) {
                // SAFETY: as for the read.
                unsafe { p.cast::<$t>().write_volatile(value) }
            }
        }
    };
}

impl RegisterAccess for VolatileMmio {
    volatile_rw!(read32, write32, u32);
    volatile_rw!(read16, write16, u16);
    volatile_rw!(read8, write8, u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_access_stays_inside_the_block() {
        let mut block = [0u32; 64];
        let base = NonNull::new(block.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `block` outlives `m` and is only touched through it.
        let m = unsafe { VolatileMmio::new(base, 256) };
        m.write32(0x70, 0x0f);
        assert_eq!(m.read32(0x70), 0x0f);
        m.write8(0x100 - 1, 0xaa);
        assert_eq!(m.read8(0xff), 0xaa);
        m.write16(0xfc, 0x1234);
        assert_eq!(m.read16(0xfc), 0x1234);
        // Out of range or misaligned: reads 0, writes nothing.
        m.write32(0x100, 1);
        assert_eq!(m.read32(0x100), 0);
        assert_eq!(m.read32(0x71), 0);
        assert_eq!(m.read16(0x71), 0);
        assert_eq!(m.read16(u64::MAX), 0);
        m.write8(u64::MAX, 1);
        assert_eq!(m.size(), 256);
        assert_eq!(block[0x70 / 4], 0x0f);
    }
}
