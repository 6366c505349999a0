//! Lets the `virtio-drivers` crate (rcore-os, 0.13) drive our device side:
//! [`DeviceTransport`] implements its [`Transport`] trait on top of our
//! device-side virtio-mmio register file ([`MmioRegisters`], §4.2.2), and
//! [`TestHal`] implements its [`Hal`] over one process-wide pool of guest
//! memory in which a guest physical address is the offset into the pool.
//!
//! The transport touches the register file only as a guest would: 32-bit
//! reads and writes of the control registers, and reads and writes of the
//! configuration space at `0x100` in the access width of the field. What a
//! write asks of the device (a queue notification, activation, reset) is
//! passed to a hook, so a test or a downstream crate can run a real device
//! behind it. Needs `std` (a global allocator and a mutex for the `Hal`'s
//! static methods): this module exists only under `test-utils`.

extern crate std;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use ::virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use ::virtio_drivers::{BufferDirection, Error as DriversError, Hal, PAGE_SIZE, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::memory::{GuestAddress, Region, RegionMemory};
use crate::mmio::regs;
use crate::mmio::{MmioDevice, MmioError, MmioRegisters, WriteOutcome};

/// Bytes of guest memory in the [`TestHal`] pool (guest physical addresses
/// `0..POOL_SIZE`).
pub const POOL_SIZE: usize = 16 << 20;

/// Pages in the pool.
const POOL_PAGES: usize = POOL_SIZE / PAGE_SIZE;

/// The pool behind [`TestHal`]: page-aligned host memory that lives for the
/// whole process, a page allocator over it, and the bounce buffers in use.
struct Pool {
    host: *mut u8,
    mem: RegionMemory<1>,
    /// `true` for a page in use; page 0 is never handed out, since
    /// `virtio-drivers` takes physical address 0 for an allocation failure.
    pages: Mutex<Vec<bool>>,
    /// Bounce buffers by physical address: their length in pages.
    bounces: Mutex<HashMap<PhysAddr, usize>>,
}

// SAFETY: `host` points to memory that is allocated once and never freed;
// every access to it goes through raw-pointer copies or atomics (via
// `RegionMemory`), and the allocator state is behind mutexes.
unsafe impl Send for Pool {}
// SAFETY: as for `Send`: shared access is only to immutable fields, the
// mutexes, and raw guest memory.
unsafe impl Sync for Pool {}

static POOL: OnceLock<Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let layout = std::alloc::Layout::from_size_align(POOL_SIZE, PAGE_SIZE)
            .expect("pool layout is valid");
        // SAFETY: the layout has a non-zero size.
        let host = unsafe { std::alloc::alloc_zeroed(layout) };
        if host.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `host` is a fresh allocation of `POOL_SIZE` bytes that is
        // never freed (the pool lives in a static), and it is only ever
        // accessed through raw pointers: the region's copies and atomics,
        // and the raw pointers `TestHal` hands to `virtio-drivers`.
        let region = unsafe { Region::new(GuestAddress(0), host, POOL_SIZE as u64) };
        let mut mem = RegionMemory::new();
        mem.add(region).expect("one region fits");
        let mut pages = alloc::vec![false; POOL_PAGES];
        pages[0] = true;
        Pool {
            host,
            mem,
            pages: Mutex::new(pages),
            bounces: Mutex::new(HashMap::new()),
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock leaves consistent state:
    // every update is a single assignment loop.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A [`Hal`] for tests: DMA memory comes from one process-wide pool, in
/// which guest physical address == offset into the pool, and which our
/// device side reaches through [`TestHal::memory`].
///
/// [`dma_alloc`](Hal::dma_alloc) hands out zeroed, page-aligned pages (first
/// fit, freed by `dma_dealloc`). [`share`](Hal::share) is the identity
/// translation for a buffer inside the pool (zero-copy); a buffer elsewhere
/// (on the stack or heap, or `virtio-drivers`' indirect tables) is bounced
/// through pool pages, copied back by `unshare` when the device may have
/// written it. All tests of a process share the pool; each allocation is
/// its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestHal;

/// A removal hook ([`TestHal::watch_removals`]): guest physical address
/// and length of what is removed.
pub type RemovalHook = Box<dyn Fn(u64, u64)>;

std::thread_local! {
    /// The removal hook of the driver running on this thread.
    static REMOVALS: RefCell<Option<RemovalHook>> = const { RefCell::new(None) };
}

impl TestHal {
    /// Has `hook` told, on this thread, of every removal a driver makes
    /// (DMA pages given back, a shared buffer's sharing ended: guest
    /// physical address and length) before it happens, until called
    /// again with `None`. A conformance watch judges them (§3.3.1: no
    /// buffer removed while its queue is live).
    pub fn watch_removals(hook: Option<RemovalHook>) {
        REMOVALS.with(|r| *r.borrow_mut() = hook);
    }

    /// Tells this thread's removal hook, if any.
    fn removing(addr: u64, len: usize) {
        REMOVALS.with(|r| {
            if let Ok(r) = r.try_borrow()
                && let Some(hook) = r.as_ref()
            {
                hook(addr, len as u64);
            }
        });
    }

    /// The pool as guest memory: guest physical address `0..POOL_SIZE`.
    pub fn memory() -> &'static RegionMemory<1> {
        &pool().mem
    }

    /// Allocates `pages` zeroed, contiguous pages; `None` if the pool has
    /// no such run (or `pages` is 0).
    pub fn alloc_pages(pages: usize) -> Option<GuestAddress> {
        if pages == 0 {
            return None;
        }
        let p = pool();
        let mut used = lock(&p.pages);
        let mut run = 0;
        let mut first = None;
        for (i, &u) in used.iter().enumerate() {
            run = if u { 0 } else { run + 1 };
            if run == pages {
                first = Some(i + 1 - pages);
                break;
            }
        }
        let first = first?;
        used[first..first + pages].fill(true);
        drop(used);
        let off = first * PAGE_SIZE;
        // SAFETY: the pages lie inside the pool and were just reserved for
        // this caller alone; the pool is only accessed through raw pointers.
        unsafe { core::ptr::write_bytes(p.host.add(off), 0, pages * PAGE_SIZE) };
        Some(GuestAddress(off as u64))
    }

    /// Returns `pages` pages at `addr` to the pool. Returns `false` (and
    /// frees nothing) unless they are all in use and inside the pool.
    pub fn free_pages(addr: GuestAddress, pages: usize) -> bool {
        let Some(first) = page_index(addr.0) else {
            return false;
        };
        let p = pool();
        let mut used = lock(&p.pages);
        match used.get_mut(first..first.saturating_add(pages)) {
            Some(run) if first != 0 && run.iter().all(|&u| u) => {
                run.fill(false);
                true
            }
            _ => false,
        }
    }

    /// The host address of guest physical address `addr`, if it is in the
    /// pool.
    pub fn host_ptr(addr: GuestAddress) -> Option<*mut u8> {
        let off = usize::try_from(addr.0).ok().filter(|&o| o < POOL_SIZE)?;
        Some(pool().host.wrapping_add(off))
    }

    /// The guest physical address of host address `ptr`, if `len` bytes
    /// from it lie in the pool.
    pub fn guest_addr(ptr: *const u8, len: usize) -> Option<GuestAddress> {
        let base = pool().host as usize;
        let off = (ptr as usize).checked_sub(base)?;
        (off.checked_add(len)? <= POOL_SIZE).then_some(GuestAddress(off as u64))
    }
}

/// The page index of a page-aligned pool offset.
fn page_index(addr: u64) -> Option<usize> {
    let off = usize::try_from(addr).ok()?;
    (off.is_multiple_of(PAGE_SIZE) && off < POOL_SIZE).then_some(off / PAGE_SIZE)
}

// SAFETY: `dma_alloc` returns page-aligned, zeroed pool pages reserved for
// the caller alone until `dma_dealloc`; `share` returns a physical address
// whose pool bytes hold the buffer's contents (the buffer itself, or a
// bounce copy reserved until `unshare`); `mmio_phys_to_virt` returns only
// pool pointers.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match Self::alloc_pages(pages) {
            Some(addr) => {
                let ptr = Self::host_ptr(addr).and_then(NonNull::new);
                (addr.0, ptr.unwrap_or(NonNull::dangling()))
            }
            // Physical address 0 tells `virtio-drivers` the allocation failed.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        Self::removing(paddr, pages * PAGE_SIZE);
        if Self::free_pages(GuestAddress(paddr), pages) {
            0
        } else {
            -1
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let inside = usize::try_from(paddr)
            .ok()
            .and_then(|p| p.checked_add(size))
            .is_some_and(|end| end <= POOL_SIZE);
        assert!(inside, "MMIO range {paddr:#x}+{size:#x} is not in the pool");
        Self::host_ptr(GuestAddress(paddr))
            .and_then(NonNull::new)
            .expect("pool address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let len = buffer.len();
        let src = buffer.as_ptr().cast::<u8>();
        if let Some(addr) = Self::guest_addr(src, len) {
            return addr.0;
        }
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let addr = Self::alloc_pages(pages).expect("TestHal pool exhausted by bounce buffers");
        let dst = Self::host_ptr(addr).expect("pool address");
        // Always copied in, so that a device that reads a device-writable
        // buffer sees what the driver left there, as it would without a
        // bounce.
        // SAFETY: the caller guarantees `buffer` is valid for `len` bytes and
        // not accessed meanwhile; `dst` is `len` bytes of freshly reserved
        // pool pages, which cannot overlap it (the buffer is not in the pool).
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        lock(&pool().bounces).insert(addr.0, pages);
        addr.0
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let len = buffer.len();
        Self::removing(paddr, len);
        let dst = buffer.as_ptr().cast::<u8>();
        if Self::guest_addr(dst, len).is_some() {
            return;
        }
        let pages = lock(&pool().bounces)
            .remove(&paddr)
            .expect("unshare of a buffer TestHal did not bounce");
        if direction != BufferDirection::DriverToDevice {
            let src = Self::host_ptr(GuestAddress(paddr)).expect("pool address");
            // SAFETY: `src` is the bounce copy of `len` bytes made by `share`,
            // still reserved; the caller guarantees `buffer` is valid for
            // `len` bytes and not accessed meanwhile, and it is not in the
            // pool, so the two do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        }
        Self::free_pages(GuestAddress(paddr), pages);
    }
}

/// What the transport hands the register file's write outcomes to: every
/// outcome other than [`WriteOutcome::Done`] of a write the driver made,
/// with the register file, so a device can act (process a notified queue
/// and raise the used-buffer interrupt, build its queues on activation).
pub type Hook<D, const N: usize> = Box<dyn FnMut(&mut MmioRegisters<D, N>, WriteOutcome)>;

/// Why a [`DeviceTransport`] could not be created: what a guest's probe of
/// a virtio-mmio device would reject (§4.2.2, §4.2.3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// `MagicValue` is not "virt".
    BadMagic(u32),
    /// `Version` is not 2 (the register file is modern only).
    BadVersion(u32),
    /// `DeviceID` is 0 (no device) or a type `virtio-drivers` does not know.
    UnknownDevice(u32),
    /// A register read failed.
    Mmio(MmioError),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProbeError::BadMagic(v) => write!(f, "MagicValue {v:#x} is not \"virt\" (§4.2.2)"),
            ProbeError::BadVersion(v) => write!(f, "virtio-mmio version {v} is not 2 (§4.2.2)"),
            ProbeError::UnknownDevice(id) => {
                write!(f, "device ID {id} is unknown to virtio-drivers")
            }
            ProbeError::Mmio(e) => write!(f, "probe read failed: {e}"),
        }
    }
}

impl core::error::Error for ProbeError {}

/// A `virtio-drivers` [`Transport`] over our device-side register file: a
/// device `D` behind virtio-mmio version 2, as a guest driver sees it.
///
/// Refused accesses (which `Transport` cannot report) are recorded; read
/// them with [`errors`](Self::errors). A driver that behaves makes none.
pub struct DeviceTransport<D, const N: usize = 8> {
    regs: MmioRegisters<D, N>,
    device_type: DeviceType,
    config_len: usize,
    hook: Option<Hook<D, N>>,
    watch: RefCell<Option<AccessHook>>,
    errors: RefCell<Vec<MmioError>>,
}

/// One register access the driver made through a [`DeviceTransport`], as
/// [`DeviceTransport::set_access_hook`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The register offset (configuration space from `0x100`).
    pub offset: u64,
    /// Bytes accessed (1, 2, 4).
    pub size: usize,
    /// A write (else a read).
    pub write: bool,
    /// The value written, or read.
    pub value: u64,
}

type AccessHook = Box<dyn FnMut(Access)>;

/// The bytes of an access as a little-endian value.
fn le_value(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b))
}

impl<D, const N: usize> fmt::Debug for DeviceTransport<D, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTransport")
            .field("device_type", &self.device_type)
            .field("config_len", &self.config_len)
            .field("hook", &self.hook.is_some())
            .field("watch", &self.watch.borrow().is_some())
            .field("errors", &self.errors.borrow())
            .finish_non_exhaustive()
    }
}

impl<D: MmioDevice, const N: usize> DeviceTransport<D, N> {
    /// The configuration space size assumed until
    /// [`with_config_len`](Self::with_config_len): the rest of a 4 KiB
    /// register page.
    pub const DEFAULT_CONFIG_LEN: usize = 0x1000 - regs::CONFIG as usize;

    /// Probes `regs` as a guest would (magic, version, device ID) and wraps
    /// it.
    pub fn new(regs: MmioRegisters<D, N>) -> Result<Self, ProbeError> {
        let magic = regs.read32(regs::MAGIC_VALUE).map_err(ProbeError::Mmio)?;
        if magic != regs::MAGIC {
            return Err(ProbeError::BadMagic(magic));
        }
        let version = regs.read32(regs::VERSION).map_err(ProbeError::Mmio)?;
        if version != 2 {
            return Err(ProbeError::BadVersion(version));
        }
        let id = regs.read32(regs::DEVICE_ID).map_err(ProbeError::Mmio)?;
        let device_type = DeviceType::try_from(id).map_err(|_| ProbeError::UnknownDevice(id))?;
        Ok(DeviceTransport {
            regs,
            device_type,
            config_len: Self::DEFAULT_CONFIG_LEN,
            hook: None,
            watch: RefCell::new(None),
            errors: RefCell::new(Vec::new()),
        })
    }

    /// Sets the size of the device's configuration space: reads and writes
    /// past it fail with `ConfigSpaceTooSmall`, as `virtio-drivers`' own
    /// transports do.
    pub fn with_config_len(mut self, len: usize) -> Self {
        self.config_len = len;
        self
    }

    /// Sets the hook that acts on the outcomes of the driver's writes.
    pub fn set_hook(&mut self, hook: impl FnMut(&mut MmioRegisters<D, N>, WriteOutcome) + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// Sets a hook that sees every register access the driver makes from
    /// now on, writes before the device acts on them (a conformance
    /// watch). Only the order of the driver's calls is the driver's: the
    /// access pattern of each call (widths, selector writes) is this
    /// adapter's.
    pub fn set_access_hook(&mut self, hook: impl FnMut(Access) + 'static) {
        *self.watch.get_mut() = Some(Box::new(hook));
    }

    fn seen(&self, offset: u64, bytes: &[u8], write: bool) {
        if let Some(h) = self.watch.borrow_mut().as_mut() {
            h(Access {
                offset,
                size: bytes.len(),
                write,
                value: le_value(bytes),
            });
        }
    }

    /// The register file.
    pub fn registers(&self) -> &MmioRegisters<D, N> {
        &self.regs
    }

    /// The register file, mutably (to raise interrupts, reach the device).
    pub fn registers_mut(&mut self) -> &mut MmioRegisters<D, N> {
        &mut self.regs
    }

    /// The device.
    pub fn device(&self) -> &D {
        self.regs.device()
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        self.regs.device_mut()
    }

    /// The register file back.
    pub fn into_registers(self) -> MmioRegisters<D, N> {
        self.regs
    }

    /// Accesses the register file refused so far.
    pub fn errors(&self) -> Vec<MmioError> {
        self.errors.borrow().clone()
    }

    /// Takes the refused accesses recorded so far.
    pub fn take_errors(&mut self) -> Vec<MmioError> {
        core::mem::take(self.errors.get_mut())
    }

    fn record(&self, e: MmioError) {
        self.errors.borrow_mut().push(e);
    }

    fn read32(&self, offset: u64) -> u32 {
        let v = self.regs.read32(offset).unwrap_or_else(|e| {
            self.record(e);
            0
        });
        self.seen(offset, &v.to_le_bytes(), false);
        v
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.seen(offset, &value.to_le_bytes(), true);
        let outcome = self.regs.write32(offset, value);
        self.dispatch(outcome);
    }

    fn dispatch(&mut self, outcome: Result<WriteOutcome, MmioError>) {
        match outcome {
            Ok(WriteOutcome::Done) => {}
            Ok(outcome) => {
                if let Some(hook) = self.hook.as_mut() {
                    hook(&mut self.regs, outcome);
                }
            }
            Err(e) => self.record(e),
        }
    }

    fn select_queue(&mut self, queue: u16) {
        self.write32(regs::QUEUE_SEL, u32::from(queue));
    }

    fn write64(&mut self, low: u64, high: u64, value: u64) {
        self.write32(low, value as u32);
        self.write32(high, (value >> 32) as u32);
    }

    /// Checks a config access of `size` bytes at `offset` against the
    /// config space size and returns the register offset.
    fn config_offset(&self, offset: usize, size: usize) -> Result<u64, DriversError> {
        if self.config_len == 0 {
            return Err(DriversError::ConfigSpaceMissing);
        }
        match offset.checked_add(size) {
            Some(end) if end <= self.config_len => Ok(regs::CONFIG + offset as u64),
            _ => Err(DriversError::ConfigSpaceTooSmall),
        }
    }
}

/// The access width for a config field of `size` bytes at `offset`: the
/// field's own width when the register file takes it aligned (§4.2.2.2),
/// else single bytes.
fn config_width(offset: usize, size: usize) -> usize {
    match size {
        1 | 2 | 4 | 8 if offset.is_multiple_of(size.min(4)) => size,
        _ => 1,
    }
}

impl<D: MmioDevice, const N: usize> Transport for DeviceTransport<D, N> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.write32(regs::DEVICE_FEATURES_SEL, 1);
        let high = self.read32(regs::DEVICE_FEATURES);
        self.write32(regs::DEVICE_FEATURES_SEL, 0);
        let low = self.read32(regs::DEVICE_FEATURES);
        (u64::from(high) << 32) | u64::from(low)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write32(regs::DRIVER_FEATURES_SEL, 0);
        self.write32(regs::DRIVER_FEATURES, driver_features as u32);
        self.write32(regs::DRIVER_FEATURES_SEL, 1);
        self.write32(regs::DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.select_queue(queue);
        self.read32(regs::QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.write32(regs::QUEUE_NOTIFY, u32::from(queue));
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read32(regs::STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write32(regs::STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Legacy only (§4.2.4); a version 2 device has no such register.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        // §4.2.3.2: select, size, the three areas, then ready.
        self.select_queue(queue);
        self.write32(regs::QUEUE_NUM, size);
        self.write64(regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, descriptors);
        self.write64(regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, driver_area);
        self.write64(regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, device_area);
        self.write32(regs::QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.select_queue(queue);
        self.write32(regs::QUEUE_READY, 0);
        // The register file disables at once; §4.2.2.2's read-back then
        // sees 0 and the set-up registers may be cleared.
        if self.read32(regs::QUEUE_READY) == 0 {
            self.write64(regs::QUEUE_DESC_LOW, regs::QUEUE_DESC_HIGH, 0);
            self.write64(regs::QUEUE_DRIVER_LOW, regs::QUEUE_DRIVER_HIGH, 0);
            self.write64(regs::QUEUE_DEVICE_LOW, regs::QUEUE_DEVICE_HIGH, 0);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.select_queue(queue);
        self.read32(regs::QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let status = self.read32(regs::INTERRUPT_STATUS);
        if status != 0 {
            self.write32(regs::INTERRUPT_ACK, status);
        }
        InterruptStatus::from_bits_truncate(status)
    }

    fn read_config_generation(&self) -> u32 {
        self.read32(regs::CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<T, DriversError> {
        let size = core::mem::size_of::<T>();
        let base = self.config_offset(offset, size)?;
        let mut value = T::new_zeroed();
        let width = config_width(offset, size);
        for (i, chunk) in value.as_mut_bytes().chunks_mut(width).enumerate() {
            let at = base + (i * width) as u64;
            if let Err(e) = self.regs.read(at, chunk) {
                self.record(e);
                return Err(DriversError::IoError);
            }
            self.seen(at, chunk, false);
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), DriversError> {
        let size = core::mem::size_of::<T>();
        let base = self.config_offset(offset, size)?;
        let width = config_width(offset, size);
        for (i, chunk) in value.as_bytes().chunks(width).enumerate() {
            let at = base + (i * width) as u64;
            self.seen(at, chunk, true);
            let outcome = self.regs.write(at, chunk);
            let failed = outcome.is_err();
            self.dispatch(outcome);
            if failed {
                return Err(DriversError::IoError);
            }
        }
        Ok(())
    }
}
