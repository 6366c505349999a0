//! What the driver needs from its environment for DMA (spec §2.7: rings and
//! buffers live in memory both sides reach): the [`Hal`] trait, the
//! [`Dma`] handle it returns, identity-mapping helpers, and [`PoolHal`], a
//! page allocator over one caller-given region that needs no heap.
//!
//! A confidential guest implements [`Hal::share`]/[`Hal::unshare`] by
//! bouncing through memory the host may see and returns shared memory from
//! [`Hal::dma_alloc`]; a tiny identity-mapped guest uses [`PoolHal`]. Nothing
//! here touches device registers (that is [`crate::mmio`]).

use core::cell::UnsafeCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

/// The page size of [`Hal::dma_alloc`] (and the legacy `GuestPageSize` the
/// drivers program, §4.2.4).
pub const PAGE_SIZE: usize = 4096;

/// A guest physical address as the device sees it (what goes into
/// descriptors and queue registers, §2.7.5, §4.2.2).
pub type PhysAddr = u64;

/// Which side writes a shared buffer (for bounce buffering in
/// [`Hal::share`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferDirection {
    /// The driver writes, the device reads (device-readable, §2.7.4).
    DriverToDevice,
    /// The device writes, the driver reads (device-writable, §2.7.4).
    DeviceToDriver,
    /// Both.
    Both,
}

/// A run of zeroed, contiguous DMA pages from [`Hal::dma_alloc`]: the
/// address the device uses and the pointer the driver uses.
///
/// Deliberately neither `Copy` nor `Clone`: it is given back once, by value,
/// to [`Hal::dma_dealloc`].
#[derive(Debug, PartialEq, Eq)]
pub struct Dma {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
}

impl Dma {
    /// Wraps an allocation; for [`Hal`] implementations.
    ///
    /// # Safety
    ///
    /// `vaddr` must be valid for reads and writes of `pages * PAGE_SIZE`
    /// bytes (which must not overflow `usize`) until the value is given back
    /// to `dma_dealloc`, the device must reach the same bytes at `paddr`,
    /// and no Rust reference may cover them meanwhile.
    pub const unsafe fn from_raw(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> Self {
        Dma {
            paddr,
            vaddr,
            pages,
        }
    }

    /// The device's address of the first byte.
    pub fn paddr(&self) -> PhysAddr {
        self.paddr
    }

    /// The driver's pointer to the first byte.
    pub fn vaddr(&self) -> NonNull<u8> {
        self.vaddr
    }

    /// The number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The length in bytes (`pages * PAGE_SIZE`, which `from_raw` promised
    /// fits; saturates otherwise).
    pub fn len(&self) -> usize {
        self.pages.saturating_mul(PAGE_SIZE)
    }

    /// Whether the allocation has no page (never, from a correct `Hal`).
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// DMA services for the drivers (rings and buffers of §2.7, which the
/// device reads and writes by guest physical address).
///
/// Methods take `&self`, so a `Hal` can be a value the program owns (a pool
/// over a region of RAM); `&H` is a `Hal` too.
///
/// # Safety
///
/// Implementations must return, from `dma_alloc`, memory that is valid,
/// zeroed, page-aligned at both addresses, reachable by the device at the
/// physical address, and used by nothing else until it is given back; and
/// translations that are correct for the device.
pub unsafe trait Hal {
    /// Allocates `pages` contiguous zeroed pages of [`PAGE_SIZE`] bytes for
    /// rings and buffers, or `None` if there is no such run (or `pages` is
    /// 0).
    fn dma_alloc(&self, pages: usize) -> Option<Dma>;

    /// Gives back what [`dma_alloc`](Hal::dma_alloc) returned.
    ///
    /// # Safety
    ///
    /// `dma` must come from this `Hal`, and the device must no longer access
    /// it (it was reset, or never told the address).
    unsafe fn dma_dealloc(&self, dma: Dma);

    /// The driver's pointer to `size` bytes of device registers at `paddr`
    /// (a virtio-mmio slot, §4.2.2), or `None` if they cannot be mapped.
    fn mmio_phys_to_virt(&self, paddr: PhysAddr, size: usize) -> Option<NonNull<u8>>;

    /// The device's address of driver memory at `vaddr`, if the device can
    /// reach it directly.
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr>;

    /// The driver's pointer to the memory at device address `paddr`, if it
    /// is mapped.
    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>>;

    /// Makes `len` bytes at `buf` visible to the device and returns the
    /// address the device uses (a bounce buffer in a confidential guest), or
    /// `None` if that is not possible.
    ///
    /// # Safety
    ///
    /// `buf` must be valid for `len` bytes until [`unshare`](Hal::unshare),
    /// and not accessed by the driver meanwhile.
    unsafe fn share(&self, buf: NonNull<u8>, len: usize, dir: BufferDirection) -> Option<PhysAddr>;

    /// Ends sharing; copies device-written bytes back when bouncing.
    ///
    /// # Safety
    ///
    /// Arguments must match an earlier successful [`share`](Hal::share), and
    /// the device must no longer access the buffer.
    unsafe fn unshare(&self, paddr: PhysAddr, buf: NonNull<u8>, len: usize, dir: BufferDirection);
}

// SAFETY: forwards every call to `H`, which upholds the contract.
unsafe impl<H: Hal + ?Sized> Hal for &H {
    fn dma_alloc(&self, pages: usize) -> Option<Dma> {
        (**self).dma_alloc(pages)
    }
    unsafe fn dma_dealloc(&self, dma: Dma) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { (**self).dma_dealloc(dma) }
    }
    fn mmio_phys_to_virt(&self, paddr: PhysAddr, size: usize) -> Option<NonNull<u8>> {
        (**self).mmio_phys_to_virt(paddr, size)
    }
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr> {
        (**self).virt_to_phys(vaddr)
    }
    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>> {
        (**self).phys_to_virt(paddr)
    }
    unsafe fn share(&self, buf: NonNull<u8>, len: usize, dir: BufferDirection) -> Option<PhysAddr> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { (**self).share(buf, len, dir) }
    }
    unsafe fn unshare(&self, paddr: PhysAddr, buf: NonNull<u8>, len: usize, dir: BufferDirection) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { (**self).unshare(paddr, buf, len, dir) }
    }
}

/// Translations for a guest whose page tables map every physical address
/// to the same virtual address (the harness's tiny guests identity-map
/// 0..4 GiB). Helpers for writing a [`Hal`]; they do not check that the
/// mapping really is the identity.
pub mod identity {
    use super::PhysAddr;
    use core::ptr::NonNull;

    /// The physical address of `vaddr`: its numeric value (its
    /// provenance is exposed, so [`phys_to_virt`] may give it back).
    pub fn virt_to_phys(vaddr: NonNull<u8>) -> PhysAddr {
        vaddr.as_ptr().expose_provenance() as PhysAddr
    }

    /// The pointer for `paddr`: the same number, if it is a non-null
    /// address of this machine. The pointer has exposed provenance (an
    /// integer-to-pointer cast), as device registers and memory the program
    /// did not allocate need.
    pub fn phys_to_virt(paddr: PhysAddr) -> Option<NonNull<u8>> {
        let addr = usize::try_from(paddr).ok()?;
        NonNull::new(core::ptr::with_exposed_provenance_mut(addr))
    }
}

/// Why a [`PoolHal`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The host pointer or the physical base is not page-aligned.
    Misaligned,
    /// The region holds less than one page.
    TooSmall,
    /// The region runs past the end of the address space.
    Wraps,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolError::Misaligned => "DMA pool is not page-aligned",
            PoolError::TooSmall => "DMA pool holds less than one page",
            PoolError::Wraps => "DMA pool runs past the end of the address space",
        })
    }
}

impl core::error::Error for PoolError {}

/// A [`Hal`] that hands out pages of one region the program gives it: at
/// most `PAGES` pages, first fit, no heap. Physical address = `phys` +
/// offset into the region; [`PoolHal::identity`] makes that the pointer's
/// own address, as in an identity-mapped guest.
///
/// Allocation never waits: the pool is guarded by a flag, and a call that
/// finds it taken (an interrupt handler allocating while the program
/// does) fails instead of spinning. Registers ([`Hal::mmio_phys_to_virt`])
/// and buffers outside the pool of an identity pool are translated as the
/// identity; outside a non-identity pool they are not translatable.
pub struct PoolHal<const PAGES: usize> {
    host: NonNull<u8>,
    phys: PhysAddr,
    pages: usize,
    identity: bool,
    busy: AtomicBool,
    used: UnsafeCell<[bool; PAGES]>,
}

// SAFETY: the region is owned by the pool for its lifetime (`new`'s
// contract) and only reached through raw pointers; `used` is only touched
// while `busy` is held, taken with an atomic compare-exchange.
unsafe impl<const PAGES: usize> Send for PoolHal<PAGES> {}
// SAFETY: as for `Send`: shared use goes through the `busy` flag.
unsafe impl<const PAGES: usize> Sync for PoolHal<PAGES> {}

impl<const PAGES: usize> fmt::Debug for PoolHal<PAGES> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHal")
            .field("host", &self.host)
            .field("phys", &format_args!("{:#x}", self.phys))
            .field("pages", &self.pages)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl<const PAGES: usize> PoolHal<PAGES> {
    /// A pool over `len` bytes at `host`, which the device sees at `phys`.
    /// Uses the first `min(PAGES, len / PAGE_SIZE)` pages.
    ///
    /// # Safety
    ///
    /// `host` must be valid for reads and writes of `len` bytes for the
    /// pool's lifetime and that of every allocation from it, used by
    /// nothing else, and reachable by the device at `phys`.
    pub unsafe fn new(host: NonNull<u8>, phys: PhysAddr, len: usize) -> Result<Self, PoolError> {
        let page = PAGE_SIZE as u64;
        if !(host.as_ptr() as usize).is_multiple_of(PAGE_SIZE) || !phys.is_multiple_of(page) {
            return Err(PoolError::Misaligned);
        }
        let pages = (len / PAGE_SIZE).min(PAGES);
        if pages == 0 {
            return Err(PoolError::TooSmall);
        }
        let bytes = pages * PAGE_SIZE;
        (host.as_ptr() as usize)
            .checked_add(bytes)
            .ok_or(PoolError::Wraps)?;
        phys.checked_add(bytes as u64).ok_or(PoolError::Wraps)?;
        Ok(PoolHal {
            host,
            phys,
            pages,
            identity: identity::virt_to_phys(host) == phys,
            busy: AtomicBool::new(false),
            used: UnsafeCell::new([false; PAGES]),
        })
    }

    /// A pool over `len` bytes at `host` in an identity-mapped guest: the
    /// physical address is the pointer's value.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new), and the guest must identity-map the
    /// region.
    pub unsafe fn identity(host: NonNull<u8>, len: usize) -> Result<Self, PoolError> {
        // SAFETY: the caller's promise, with phys == virt.
        unsafe { Self::new(host, identity::virt_to_phys(host), len) }
    }

    /// Pages in the pool.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Pages not allocated (0 while another call holds the pool).
    pub fn free_pages(&self) -> usize {
        self.with_used(|used| used.iter().filter(|u| !**u).count())
            .unwrap_or(0)
    }

    /// Whether physical addresses equal pointer values.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Runs `f` on the first `pages` entries of the page map if the pool is
    /// free; `None` if another call holds it (never waits).
    fn with_used<T>(&self, f: impl FnOnce(&mut [bool]) -> T) -> Option<T> {
        self.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // SAFETY: `busy` was false and is now ours: no other access to
        // `used` is live until we release it below.
        let used = unsafe { &mut *self.used.get() };
        let r = f(used.get_mut(..self.pages).unwrap_or(&mut []));
        self.busy.store(false, Ordering::Release);
        Some(r)
    }

    /// The offset into the pool of `len` bytes at physical `paddr`, if they
    /// lie inside it.
    fn phys_offset(&self, paddr: PhysAddr, len: usize) -> Option<usize> {
        let off = usize::try_from(paddr.checked_sub(self.phys)?).ok()?;
        (off.checked_add(len)? <= self.pages * PAGE_SIZE).then_some(off)
    }

    /// The offset into the pool of `len` bytes at `vaddr`, if they lie
    /// inside it.
    fn virt_offset(&self, vaddr: NonNull<u8>, len: usize) -> Option<usize> {
        let off = (vaddr.as_ptr() as usize).checked_sub(self.host.as_ptr() as usize)?;
        (off.checked_add(len)? <= self.pages * PAGE_SIZE).then_some(off)
    }
}

// SAFETY: pages come from the region `new` was promised, each handed out
// once until given back, zeroed before they are returned; translations are
// the region's fixed offset (or the identity for an identity pool, which
// its constructor's caller promised).
unsafe impl<const PAGES: usize> Hal for PoolHal<PAGES> {
    fn dma_alloc(&self, pages: usize) -> Option<Dma> {
        if pages == 0 {
            return None;
        }
        let first = self.with_used(|used| {
            let mut run = 0;
            let mut found = None;
            for (i, taken) in used.iter().enumerate() {
                run = if *taken { 0 } else { run + 1 };
                if run == pages {
                    found = Some(i + 1 - pages);
                    break;
                }
            }
            let first = found?;
            used.get_mut(first..first + pages)?.fill(true);
            Some(first)
        })??;
        let off = first * PAGE_SIZE;
        let bytes = pages * PAGE_SIZE;
        // SAFETY: `off + bytes` lies inside the region (the run is within
        // `self.pages`), which `new` promised valid and ours alone; the run
        // was just reserved for this caller.
        let vaddr = unsafe {
            let p = self.host.as_ptr().add(off);
            core::ptr::write_bytes(p, 0, bytes);
            NonNull::new_unchecked(p)
        };
        // SAFETY: as above; the device reaches the region at `phys`.
        Some(unsafe { Dma::from_raw(self.phys + off as u64, vaddr, pages) })
    }

    unsafe fn dma_dealloc(&self, dma: Dma) {
        let Some(off) = self.phys_offset(dma.paddr, dma.len()) else {
            return;
        };
        if !off.is_multiple_of(PAGE_SIZE) || self.virt_offset(dma.vaddr, dma.len()) != Some(off) {
            return;
        }
        let first = off / PAGE_SIZE;
        // A pool that is busy (only possible from an interrupt handler)
        // keeps the pages: leaking is safe, waiting is not.
        let _ = self.with_used(|used| {
            if let Some(run) = used.get_mut(first..first.saturating_add(dma.pages)) {
                run.fill(false);
            }
        });
    }

    fn mmio_phys_to_virt(&self, paddr: PhysAddr, _size: usize) -> Option<NonNull<u8>> {
        identity::phys_to_virt(paddr)
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr> {
        match self.virt_offset(vaddr, 0) {
            Some(off) => Some(self.phys + off as u64),
            None if self.identity => Some(identity::virt_to_phys(vaddr)),
            None => None,
        }
    }

    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>> {
        match self.phys_offset(paddr, 0) {
            // SAFETY: the offset lies within the region (or one past it),
            // so the pointer stays in (or at the end of) the allocation.
            Some(off) => Some(unsafe { self.host.add(off) }),
            None if self.identity => identity::phys_to_virt(paddr),
            None => None,
        }
    }

    unsafe fn share(
        &self,
        buf: NonNull<u8>,
        len: usize,
        _dir: BufferDirection,
    ) -> Option<PhysAddr> {
        match self.virt_offset(buf, len) {
            Some(off) => Some(self.phys + off as u64),
            None if self.identity => {
                let p = identity::virt_to_phys(buf);
                p.checked_add(len as u64).map(|_| p)
            }
            None => None,
        }
    }

    unsafe fn unshare(
        &self,
        _paddr: PhysAddr,
        _buf: NonNull<u8>,
        _len: usize,
        _dir: BufferDirection,
    ) {
        // Shared in place: nothing to copy back.
    }
}

/// A [`Hal`] over the global allocator for an identity-mapped guest that
/// has one (feature `alloc`): zeroed page-aligned allocations whose
/// physical address is their pointer's value.
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct GlobalAllocHal {
    _private: (),
}

#[cfg(feature = "alloc")]
impl GlobalAllocHal {
    /// The allocator-backed `Hal`.
    ///
    /// # Safety
    ///
    /// The guest must identity-map every address the global allocator
    /// returns, and the device must reach that memory at the same address.
    pub const unsafe fn new() -> Self {
        GlobalAllocHal { _private: () }
    }

    fn layout(pages: usize) -> Option<core::alloc::Layout> {
        let size = pages.checked_mul(PAGE_SIZE)?;
        core::alloc::Layout::from_size_align(size, PAGE_SIZE).ok()
    }
}

#[cfg(feature = "alloc")]
// SAFETY: allocations are zeroed, page-aligned, and owned until given back;
// the constructor's caller promised the identity mapping.
unsafe impl Hal for GlobalAllocHal {
    fn dma_alloc(&self, pages: usize) -> Option<Dma> {
        extern crate alloc;
        if pages == 0 {
            return None;
        }
        let layout = Self::layout(pages)?;
        // SAFETY: the layout has a non-zero size.
        let vaddr = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
        // SAFETY: a fresh zeroed allocation of `pages` pages, identity
        // mapped per `new`'s contract, freed only by `dma_dealloc`.
        Some(unsafe { Dma::from_raw(identity::virt_to_phys(vaddr), vaddr, pages) })
    }

    unsafe fn dma_dealloc(&self, dma: Dma) {
        extern crate alloc;
        if let Some(layout) = Self::layout(dma.pages) {
            // SAFETY: `dma` came from `dma_alloc` with this very layout
            // (the caller's promise).
            unsafe { alloc::alloc::dealloc(dma.vaddr.as_ptr(), layout) }
        }
    }

    fn mmio_phys_to_virt(&self, paddr: PhysAddr, _size: usize) -> Option<NonNull<u8>> {
        identity::phys_to_virt(paddr)
    }

    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr> {
        Some(identity::virt_to_phys(vaddr))
    }

    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>> {
        identity::phys_to_virt(paddr)
    }

    unsafe fn share(
        &self,
        buf: NonNull<u8>,
        len: usize,
        _dir: BufferDirection,
    ) -> Option<PhysAddr> {
        let p = identity::virt_to_phys(buf);
        p.checked_add(len as u64).map(|_| p)
    }

    unsafe fn unshare(
        &self,
        _paddr: PhysAddr,
        _buf: NonNull<u8>,
        _len: usize,
        _dir: BufferDirection,
    ) {
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::alloc::{Layout, alloc_zeroed, dealloc};

    /// Page-aligned host memory for a pool.
    struct Region {
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl Region {
        fn new(pages: usize) -> Region {
            let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: non-zero size.
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
            Region { ptr, layout }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
        }
    }

    #[test]
    fn pool_allocates_zeroed_runs_first_fit_and_frees() {
        let r = Region::new(8);
        // SAFETY: the region outlives the pool and is used only by it.
        let pool = unsafe { PoolHal::<8>::new(r.ptr, 0x4000_0000, 8 * PAGE_SIZE) }.unwrap();
        assert!(!pool.is_identity());
        let a = pool.dma_alloc(3).unwrap();
        assert_eq!(a.paddr(), 0x4000_0000);
        assert_eq!(a.len(), 3 * PAGE_SIZE);
        // Dirty it, free it, allocate again: zeroed.
        // SAFETY: the allocation is ours and 3 pages long.
        unsafe { core::ptr::write_bytes(a.vaddr().as_ptr(), 0xaa, a.len()) };
        let b = pool.dma_alloc(5).unwrap();
        assert_eq!(b.paddr(), 0x4000_3000);
        assert!(pool.dma_alloc(1).is_none(), "pool is full");
        assert_eq!(pool.free_pages(), 0);
        // SAFETY: no device saw these pages.
        unsafe { pool.dma_dealloc(a) };
        assert_eq!(pool.free_pages(), 3);
        let c = pool.dma_alloc(2).unwrap();
        assert_eq!(c.paddr(), 0x4000_0000);
        // SAFETY: 2 pages, ours.
        let first = unsafe { c.vaddr().as_ptr().add(PAGE_SIZE + 7).read() };
        assert_eq!(first, 0);
        assert!(pool.dma_alloc(0).is_none());
        // A foreign handle is ignored.
        // SAFETY: a made-up handle; the pool must refuse it.
        unsafe { pool.dma_dealloc(Dma::from_raw(0x1000, r.ptr, 1)) };
        assert_eq!(pool.free_pages(), 1);
    }

    #[test]
    fn pool_translates_inside_and_refuses_outside() {
        let r = Region::new(2);
        // SAFETY: as above.
        let pool = unsafe { PoolHal::<4>::new(r.ptr, 0x10_0000, 2 * PAGE_SIZE) }.unwrap();
        assert_eq!(pool.pages(), 2);
        // SAFETY: 100 bytes into a 2-page region.
        let inside = unsafe { r.ptr.add(100) };
        assert_eq!(pool.virt_to_phys(inside), Some(0x10_0064));
        assert_eq!(pool.phys_to_virt(0x10_0064), Some(inside));
        // SAFETY: the buffer is inside the pool; nothing is accessed.
        let shared = unsafe { pool.share(inside, 50, BufferDirection::DeviceToDriver) };
        assert_eq!(shared, Some(0x10_0064));
        // Running off the end of a non-identity pool cannot be shared.
        // SAFETY: nothing is accessed.
        let off_end = unsafe { pool.share(inside, 2 * PAGE_SIZE, BufferDirection::Both) };
        assert_eq!(off_end, None);
        assert_eq!(pool.phys_to_virt(0x20_0000), None);
        let outside = NonNull::from(&0u8);
        assert_eq!(pool.virt_to_phys(outside), None);
    }

    #[test]
    fn identity_pool_translates_everything_as_the_identity() {
        let r = Region::new(1);
        // SAFETY: as above; the test only translates, never maps.
        let pool = unsafe { PoolHal::<1>::identity(r.ptr, PAGE_SIZE) }.unwrap();
        assert!(pool.is_identity());
        let a = pool.dma_alloc(1).unwrap();
        assert_eq!(a.paddr(), r.ptr.as_ptr() as u64);
        let x = NonNull::from(&0u8);
        assert_eq!(pool.virt_to_phys(x), Some(x.as_ptr() as u64));
        assert_eq!(
            pool.mmio_phys_to_virt(0xd000_0000, 0x200)
                .map(|p| p.as_ptr() as u64),
            Some(0xd000_0000)
        );
        assert_eq!(identity::phys_to_virt(0), None);
    }

    #[test]
    fn pool_refuses_bad_regions() {
        let r = Region::new(2);
        // SAFETY: construction only; refused.
        let odd = unsafe { PoolHal::<2>::new(r.ptr.add(8), 0, PAGE_SIZE) };
        assert_eq!(odd.err(), Some(PoolError::Misaligned));
        // SAFETY: construction only; refused.
        let small = unsafe { PoolHal::<2>::new(r.ptr, 0, PAGE_SIZE - 1) };
        assert_eq!(small.err(), Some(PoolError::TooSmall));
        // SAFETY: construction only; refused.
        let wraps = unsafe { PoolHal::<2>::new(r.ptr, u64::MAX - 0xfff, PAGE_SIZE) };
        assert_eq!(wraps.err(), Some(PoolError::Wraps));
        // SAFETY: construction only; refused.
        let unaligned_phys = unsafe { PoolHal::<2>::new(r.ptr, 0x10, PAGE_SIZE) };
        assert_eq!(unaligned_phys.err(), Some(PoolError::Misaligned));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn global_alloc_hal_hands_out_zeroed_identity_pages() {
        // SAFETY: only allocation and translation are exercised; no device.
        let hal = unsafe { GlobalAllocHal::new() };
        let d = hal.dma_alloc(2).unwrap();
        assert_eq!(d.paddr(), d.vaddr().as_ptr() as u64);
        assert!((d.vaddr().as_ptr() as usize).is_multiple_of(PAGE_SIZE));
        // SAFETY: 2 pages, ours.
        let last = unsafe { d.vaddr().as_ptr().add(PAGE_SIZE * 2 - 1).read() };
        assert_eq!(last, 0);
        // SAFETY: no device saw it.
        unsafe { hal.dma_dealloc(d) };
    }
}
