//! The memory the driver shares with the backend: a memfd mapped shared,
//! announced in the memory table as one region (vhost-user
//! `SET_MEM_TABLE`), and a DMA pool over it for the drivers.

use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use backends::hostmem::HostMemory;
use guest_driver::hal::{BufferDirection, Dma, Hal, PAGE_SIZE, PhysAddr, PoolHal};
use vhost_user::frontend::SharedRam;
use virtio_core::GuestMemory;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError, Region, RegionMemory};

use crate::Error;

/// The guest address of the first byte of the shared memory: what goes
/// into descriptors and queue registers. Not 0, so that no ring or buffer
/// sits at an address some backend might take for "unset".
pub const GUEST_BASE: u64 = 0x4000_0000;

/// Pages a [`UserHal`] manages at most (256 MiB).
pub const MAX_PAGES: usize = 65536;

/// Memory shared with a vhost-user backend: a memfd of a given size,
/// mapped shared here, at guest addresses `GUEST_BASE..GUEST_BASE + size`.
#[derive(Debug)]
pub struct UserRam {
    memory: Rc<HostMemory>,
    shared: Arc<SharedRam>,
}

impl UserRam {
    /// A zeroed shared memfd of `size` bytes (a multiple of the page size,
    /// at most [`MAX_PAGES`] pages usable by the drivers).
    pub fn new(size: u64) -> Result<UserRam, Error> {
        let memory =
            HostMemory::memfd("virtio-user", size, true, false, false).map_err(Error::Memory)?;
        let shared = SharedRam::new(&memory, &[(GUEST_BASE, size)])?;
        Ok(UserRam {
            memory: Rc::new(memory),
            shared: Arc::new(shared),
        })
    }

    /// The memory table the frontend sends.
    pub fn shared(&self) -> Arc<SharedRam> {
        Arc::clone(&self.shared)
    }

    /// Bytes of shared memory.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether there are none (never: sizes of 0 are refused).
    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// The shared memory as guest memory, guest address [`GUEST_BASE`]
    /// plus the offset, for code that lays out rings and buffers itself
    /// (the conformance checks) rather than through a driver's DMA pool.
    pub fn guest_memory(&self) -> UserMemory {
        let mut regions = RegionMemory::new();
        // SAFETY: the mapping is `len()` bytes at `as_ptr()`, valid for
        // reads and writes while `memory` lives, which the returned value
        // keeps alive (an `Rc`); the backend writes the same bytes, which
        // `RegionMemory` only ever copies or accesses atomically.
        let region = unsafe {
            Region::new(
                GuestAddress(GUEST_BASE),
                self.memory.as_ptr(),
                self.memory.len() as u64,
            )
        };
        // One region in an empty table cannot overlap or overflow.
        let _ = regions.add(region);
        UserMemory {
            regions,
            _memory: Rc::clone(&self.memory),
        }
    }

    /// A DMA pool over the whole memory, for one driver at a time (two
    /// pools over the same memory would hand out the same pages).
    pub fn hal(&self) -> Result<UserHal, Error> {
        let host = NonNull::new(self.memory.as_ptr())
            .ok_or(Error::Pool(guest_driver::hal::PoolError::TooSmall))?;
        // SAFETY: the mapping is `len()` bytes, valid for reads and writes
        // while `memory` lives; the returned `UserHal` keeps it alive (an
        // `Rc`), and drivers only reach it through raw pointers and
        // `virtio-core`'s copies. The backend reaches the same bytes at
        // `GUEST_BASE` through the memory table.
        let pool = unsafe { PoolHal::<MAX_PAGES>::new(host, GUEST_BASE, self.memory.len()) }
            .map_err(Error::Pool)?;
        Ok(UserHal {
            pool: Box::new(pool),
            _memory: Rc::clone(&self.memory),
        })
    }
}

/// A [`UserRam`] as guest memory (see [`UserRam::guest_memory`]).
#[derive(Debug)]
pub struct UserMemory {
    regions: RegionMemory<1>,
    _memory: Rc<HostMemory>,
}

impl GuestMemory for UserMemory {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.regions.map(addr, len, access)
    }
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.regions.read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.regions.write(addr, buf)
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.regions.load_u16_acquire(addr)
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.regions.store_u16_release(addr, val)
    }
}

/// The drivers' DMA services over a [`UserRam`]: pages of the shared
/// memory, guest address = [`GUEST_BASE`] + offset. Keeps the memory
/// mapped while any driver holds it.
#[derive(Debug)]
pub struct UserHal {
    pool: Box<PoolHal<MAX_PAGES>>,
    _memory: Rc<HostMemory>,
}

impl UserHal {
    /// Pages not allocated.
    pub fn free_pages(&self) -> usize {
        self.pool.free_pages()
    }

    /// Bytes not allocated.
    pub fn free_bytes(&self) -> usize {
        self.pool.free_pages() * PAGE_SIZE
    }
}

// SAFETY: every call goes to the pool over the shared memory, which
// upholds the contract (pages zeroed, page-aligned, handed out once,
// reachable by the backend at their guest address); the memory stays
// mapped while `self` lives.
unsafe impl Hal for UserHal {
    fn dma_alloc(&self, pages: usize) -> Option<Dma> {
        self.pool.dma_alloc(pages)
    }
    unsafe fn dma_dealloc(&self, dma: Dma) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.dma_dealloc(dma) }
    }
    fn mmio_phys_to_virt(&self, _paddr: PhysAddr, _size: usize) -> Option<NonNull<u8>> {
        // The registers are a register file in this process, not memory.
        None
    }
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr> {
        self.pool.virt_to_phys(vaddr)
    }
    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>> {
        self.pool.phys_to_virt(paddr)
    }
    unsafe fn share(&self, buf: NonNull<u8>, len: usize, dir: BufferDirection) -> Option<PhysAddr> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.share(buf, len, dir) }
    }
    unsafe fn unshare(&self, paddr: PhysAddr, buf: NonNull<u8>, len: usize, dir: BufferDirection) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.unshare(paddr, buf, len, dir) }
    }
}
