//! What the driver needs from its environment: DMA memory it can share with
//! the device ([`Hal`]), and raw register access to a virtio-mmio transport
//! ([`VolatileMmio`], §4.2.2).
//!
//! A confidential guest implements `share`/`unshare` by bouncing through
//! memory the host may see; a tiny guest with identity mapping returns the
//! pointer's address as the physical address. Nothing here allocates on its
//! own.

use core::ptr::NonNull;

use virtio_core::mmio::driver::RegisterAccess;

/// A guest physical address as the device sees it.
pub type PhysAddr = u64;

/// Direction of a shared buffer (which side writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferDirection {
    /// The driver writes, the device reads.
    DriverToDevice,
    /// The device writes, the driver reads.
    DeviceToDriver,
    /// Both.
    Both,
}

/// DMA services for the driver.
///
/// # Safety
///
/// Implementations must return memory that is valid, zeroed, page-aligned
/// and not used by anything else until it is freed, and translations that
/// are correct for the device.
pub unsafe trait Hal {
    /// Allocates `pages` contiguous zeroed 4 KiB pages for rings and
    /// buffers: the device's address and the driver's pointer.
    fn dma_alloc(pages: usize) -> Option<(PhysAddr, NonNull<u8>)>;

    /// Frees what [`dma_alloc`](Hal::dma_alloc) returned.
    ///
    /// # Safety
    ///
    /// `paddr`, `vaddr` and `pages` must come from one `dma_alloc` call, and
    /// the device must no longer use the memory.
    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize);

    /// Makes `len` bytes at `buf` visible to the device and returns the
    /// address the device uses (a bounce buffer in a confidential guest).
    ///
    /// # Safety
    ///
    /// `buf` must be valid for `len` bytes until [`unshare`](Hal::unshare).
    unsafe fn share(buf: NonNull<u8>, len: usize, dir: BufferDirection) -> PhysAddr;

    /// Ends sharing; copies device-written bytes back when bouncing.
    ///
    /// # Safety
    ///
    /// Arguments must match the earlier [`share`](Hal::share).
    unsafe fn unshare(paddr: PhysAddr, buf: NonNull<u8>, len: usize, dir: BufferDirection);
}

/// Register access to a virtio-mmio transport by volatile loads and stores
/// at its mapped base (§4.2.2: 32-bit registers, config space byte-wise).
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
    /// memory for as long as this value is used, and nothing else may
    /// access it meanwhile.
    pub unsafe fn new(base: NonNull<u8>, size: usize) -> Self {
        VolatileMmio { base, size }
    }

    /// The pointer for an access of `width` bytes at `offset`, if it lies in
    /// the block and is aligned; out-of-range accesses read as zero and
    /// write nothing.
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
        // Out of range or misaligned: reads 0, writes nothing.
        m.write32(0x100, 1);
        assert_eq!(m.read32(0x100), 0);
        assert_eq!(m.read32(0x71), 0);
        assert_eq!(m.read16(u64::MAX), 0);
        assert_eq!(block[0x70 / 4], 0x0f);
    }
}
