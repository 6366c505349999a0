//! Guest memory of a vhost-user session: the frontend's regions
//! (`SET_MEM_TABLE`, `ADD_MEM_REG`, `REM_MEM_REG`; vhost-user.rst "Memory
//! region description") mapped from the descriptors it passes, and
//! [`SharedMemory`], the `virtio-core` [`GuestMemory`] the device reads
//! them through.
//!
//! A device is built once, before any frontend connects, so it holds a
//! [`SharedMemory`] handle whose region table the session replaces as the
//! frontend changes it. Every change happens on the serving thread between
//! device calls, so a mapping a device call obtained is never unmapped
//! under it.
//!
//! A frontend that shrinks a region's file after it was mapped (QEMU
//! seals its memfds against that, DPDK's virtio-user and rust-vmm's
//! frontend do not) costs only its own session: every mapping is watched
//! by a [`Guard`], so the SIGBUS an access past the new end raises is
//! caught, the table fails every access from then on
//! ([`MemoryError::BackingLost`]), and the session ends naming the region
//! ([`MemError::BackingLost`]; see [`crate::guard`] for where that holds). [`Regions::set_require_sealed`]
//! refuses files not sealed with `F_SEAL_SHRINK` instead (off by default:
//! most frontends do not seal). Not done: dirty logging.

use std::cell::RefCell;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use virtio_core::GuestMemory;
use virtio_core::memory::{
    Access, GuestAddress, Mapping, MemoryError, Region, RegionError, RegionMemory,
};

use crate::codec::{MAX_MEM_SLOTS, MemRegion};
use crate::guard::{Guard, GuardError, Guarded, Watch};

/// The region table devices see.
pub type Table = RegionMemory<MAX_MEM_SLOTS>;

/// Guest memory shared between a device and its vhost-user session: a
/// region table the session swaps as the frontend changes it, checked
/// against the guards of the mappings behind it.
///
/// The table holds the mappings it points into (issue 16, finding 10): a
/// mapping is unmapped only once neither the session's [`Regions`] nor any
/// table still refers to it, so a device (or any clone of this handle) can
/// never reach an unmapped region, whatever order things are dropped in.
///
/// Each handle keeps the table it last used and a generation number; an
/// access compares the shared generation (a plain load) and takes the
/// lock only when the table changed. Before, every access took a
/// read lock, two atomic read-modify-writes that were 43% of the net
/// backend's CPU in the virtio-user echo bench (issue 17). A handle keeps
/// an old table (and its mappings) alive until its next access after the
/// change, or until it is dropped. A handle is `Send`, not `Sync`: each
/// thread takes its own clone.
#[derive(Debug, Default)]
pub struct SharedMemory {
    shared: Arc<Shared>,
    /// The table this handle last used and the generation it had.
    cache: RefCell<Option<(u32, Arc<Current>)>>,
}

impl Clone for SharedMemory {
    fn clone(&self) -> Self {
        SharedMemory {
            shared: Arc::clone(&self.shared),
            cache: RefCell::new(None),
        }
    }
}

/// What the handles of one memory share.
#[derive(Debug, Default)]
struct Shared {
    /// Bumped after every change of `current`.
    generation: AtomicU32,
    current: RwLock<Arc<Current>>,
}

/// The table in force and the mappings it points into.
#[derive(Debug, Default)]
struct Current {
    table: Guarded<Table>,
    /// Keeps the mappings alive while `table` refers to them; dropped after
    /// it (field order).
    _keep: Vec<Arc<MappedRegion>>,
}

impl SharedMemory {
    /// An empty memory (every access fails until a table is set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the table in force.
    #[inline]
    fn with<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        let generation = self.shared.generation.load(Ordering::Acquire);
        {
            let cache = self.cache.borrow();
            if let Some((g, current)) = cache.as_ref()
                && *g == generation
            {
                return f(current);
            }
        }
        // The table is plain data replaced whole; a poisoned lock still
        // holds a consistent one. The generation read before the table:
        // a change between the two is seen at the next access.
        let current = Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let r = f(&current);
        *self.cache.borrow_mut() = Some((generation, current));
        r
    }

    /// Replaces the table.
    pub(crate) fn set(&self, table: Guarded<Table>, keep: Vec<Arc<MappedRegion>>) {
        let old = std::mem::replace(
            &mut *self
                .shared
                .current
                .write()
                .unwrap_or_else(|p| p.into_inner()),
            Arc::new(Current { table, _keep: keep }),
        );
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        // This handle's own copy goes now; unmapped (if nothing else holds
        // them) outside the lock.
        self.cache.borrow_mut().take();
        drop(old);
    }

    /// The regions now, as guest base and length: a description, not the
    /// regions themselves, which could outlive their mappings (issue 16,
    /// finding 10).
    pub fn regions(&self) -> Vec<(GuestAddress, u64)> {
        self.with(|c| {
            c.table
                .inner()
                .regions()
                .iter()
                .map(|r| (r.guest_base(), r.len()))
                .collect()
        })
    }

    /// Whether a mapping behind the table now lost its backing (every
    /// access fails then).
    pub fn is_lost(&self) -> bool {
        self.with(|c| c.table.is_lost())
    }
}

impl GuestMemory for SharedMemory {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.with(|c| c.table.map(addr, len, access))
    }

    fn check(&self, addr: GuestAddress, len: u64, access: Access) -> Result<(), MemoryError> {
        self.with(|c| c.table.check(addr, len, access))
    }

    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.with(|c| c.table.read(addr, buf))
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.with(|c| c.table.write(addr, buf))
    }

    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.with(|c| c.table.load_u16_acquire(addr))
    }

    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.with(|c| c.table.store_u16_release(addr, val))
    }
}

/// Why a region from the frontend cannot be used.
#[derive(Debug)]
pub enum MemError {
    /// The region has no bytes.
    Empty,
    /// An address plus the size wraps.
    Overflow,
    /// `fstat` on the descriptor failed.
    Stat(std::io::Error),
    /// The descriptor is not a regular file (memfd, tmpfs, hugetlbfs).
    NotAFile,
    /// `mmap_offset + size` lies beyond the end of the file.
    BeyondFile {
        /// Bytes the region needs from the file.
        end: u64,
        /// The file's size.
        file: u64,
    },
    /// `mmap` failed.
    Mmap(std::io::Error),
    /// The region overlaps another (guest or frontend addresses), or the
    /// table is full.
    Table(RegionError),
    /// Frontend addresses of two regions overlap.
    UserOverlap {
        /// The frontend address of the new region.
        user_addr: u64,
    },
    /// `REM_MEM_REG` named a region that is not in the table.
    NoSuchRegion {
        /// Its guest address.
        guest_addr: u64,
    },
    /// The mapping could not be guarded against SIGBUS.
    Guard(GuardError),
    /// The region's file is not sealed against shrinking
    /// (`F_SEAL_SHRINK`), and the backend requires it
    /// ([`Regions::set_require_sealed`]).
    NotSealed {
        /// The region's guest address.
        guest_addr: u64,
    },
    /// A mapped region lost its backing: its file shrank under the mapping
    /// (or a page of it failed), and an access past the end faulted.
    BackingLost {
        /// The region's guest address.
        guest_addr: u64,
        /// Its size.
        size: u64,
        /// Its frontend address.
        user_addr: u64,
        /// The guest address of the first byte that faulted.
        at: u64,
    },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Empty => f.write_str("memory region has no bytes"),
            MemError::Overflow => f.write_str("memory region wraps the address space"),
            MemError::Stat(e) => write!(f, "fstat on the region's descriptor: {e}"),
            MemError::NotAFile => {
                f.write_str("the region's descriptor is not a regular file or memfd")
            }
            MemError::BeyondFile { end, file } => write!(
                f,
                "region ends at byte {end:#x} of a file of {file:#x} bytes"
            ),
            MemError::Mmap(e) => write!(f, "mmap of the region: {e}"),
            MemError::Table(e) => write!(f, "{e}"),
            MemError::UserOverlap { user_addr } => write!(
                f,
                "region at frontend address {user_addr:#x} overlaps another"
            ),
            MemError::NoSuchRegion { guest_addr } => {
                write!(f, "no region at guest address {guest_addr:#x}")
            }
            MemError::Guard(e) => write!(f, "{e}"),
            MemError::NotSealed { guest_addr } => write!(
                f,
                "the file of the region at guest address {guest_addr:#x} is not sealed \
                 against shrinking (F_SEAL_SHRINK), which this backend requires"
            ),
            MemError::BackingLost {
                guest_addr,
                size,
                user_addr,
                at,
            } => write!(
                f,
                "memory region at guest address {guest_addr:#x} ({size:#x} bytes, frontend \
                 address {user_addr:#x}) lost its backing: an access at guest address \
                 {at:#x} faulted (SIGBUS caught); the frontend shrank the region's file, \
                 or a page of it failed"
            ),
        }
    }
}

impl std::error::Error for MemError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MemError::Stat(e) | MemError::Mmap(e) => Some(e),
            MemError::Table(e) => Some(e),
            MemError::Guard(e) => Some(e),
            _ => None,
        }
    }
}

/// One region mapped into this process; unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    /// The frontend's description.
    pub region: MemRegion,
    base: *mut libc::c_void,
    map_len: usize,
    host: *mut u8,
    /// Watches the mapping for SIGBUS; `None` only while dropping (it goes
    /// before the mapping does).
    guard: Option<Guard>,
    /// The file's device and inode, to recognise the same region added
    /// again.
    file: (u64, u64),
    /// `ADD_MEM_REG`s of exactly this region not yet removed (QEMU's
    /// vhost-user netdev adds every region once per queue pair).
    refs: AtomicU32,
}

// SAFETY: the mapping is owned memory of this process; the pointers are
// only an address range, and every access to it goes through raw copies
// (`RegionMemory`), never references.
unsafe impl Send for MappedRegion {}
// SAFETY: as above: shared between the session and the tables devices
// read, the mapping is only ever reached through raw copies; `refs` is
// atomic.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Maps `region` from `fd`, checking it against the file: non-empty,
    /// no address wraps, a regular file at least `mmap_offset + size` long.
    pub fn map(region: &MemRegion, fd: &OwnedFd) -> Result<MappedRegion, MemError> {
        if region.size == 0 {
            return Err(MemError::Empty);
        }
        let end = region
            .mmap_offset
            .checked_add(region.size)
            .ok_or(MemError::Overflow)?;
        region
            .guest_addr
            .checked_add(region.size)
            .ok_or(MemError::Overflow)?;
        region
            .user_addr
            .checked_add(region.size)
            .ok_or(MemError::Overflow)?;
        // SAFETY: a zeroed stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor we own; `st` is writable.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(MemError::Stat(std::io::Error::last_os_error()));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(MemError::NotAFile);
        }
        let file = u64::try_from(st.st_size).unwrap_or(0);
        if end > file {
            return Err(MemError::BeyondFile { end, file });
        }
        // SAFETY: sysconf has no memory effects.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_off = region.mmap_offset - region.mmap_offset % page;
        let delta = region.mmap_offset - map_off;
        let map_len = usize::try_from(region.size + delta).map_err(|_| MemError::Overflow)?;
        let off = libc::off_t::try_from(map_off).map_err(|_| MemError::Overflow)?;
        // SAFETY: a fresh shared mapping chosen by the kernel; it aliases
        // no memory of this process. The file is long enough (checked); if
        // the frontend shrinks it later, the guard set up next catches the
        // SIGBUS (module docs).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                off,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(MemError::Mmap(std::io::Error::last_os_error()));
        }
        let guard = match Guard::new(base.cast::<u8>(), map_len) {
            Ok(g) => g,
            Err(e) => {
                // SAFETY: just mapped above, nothing refers to it.
                unsafe { libc::munmap(base, map_len) };
                return Err(MemError::Guard(e));
            }
        };
        Ok(MappedRegion {
            region: *region,
            base,
            map_len,
            host: base.cast::<u8>().wrapping_add(delta as usize),
            guard: Some(guard),
            file: (st.st_dev, st.st_ino),
            refs: AtomicU32::new(1),
        })
    }

    /// The guard's handle, for the table's checks.
    fn watch(&self) -> Option<Watch> {
        self.guard.as_ref().map(Guard::watch)
    }

    /// The error naming this region if an access to it faulted.
    pub fn lost(&self) -> Option<MemError> {
        let off = self.guard.as_ref()?.fault()?;
        // The mapping starts up to a page before the region.
        let delta = (self.host as usize).wrapping_sub(self.base as usize);
        let into = u64::try_from(off.saturating_sub(delta)).unwrap_or(u64::MAX);
        Some(MemError::BackingLost {
            guest_addr: self.region.guest_addr,
            size: self.region.size,
            user_addr: self.region.user_addr,
            at: self.region.guest_addr.saturating_add(into),
        })
    }

    /// The `virtio-core` region over this mapping.
    fn as_region(&self) -> Region {
        // SAFETY: `host` is valid for `region.size` bytes while `self`
        // lives; every table holding this region is stored with an `Arc` of
        // `self` beside it (`SharedMemory::set`), so `self` outlives the
        // table; nothing forms references into the mapping.
        unsafe {
            Region::new(
                GuestAddress(self.region.guest_addr),
                self.host,
                self.region.size,
            )
        }
    }

    /// Whether the frontend address range `[addr, addr + len)` lies in this
    /// region; its guest address if so.
    fn translate(&self, addr: u64, len: u64) -> Option<u64> {
        let off = addr.checked_sub(self.region.user_addr)?;
        let end = off.checked_add(len)?;
        (end <= self.region.size).then(|| self.region.guest_addr + off)
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // The watch ends before the mapping does.
        drop(self.guard.take());
        // SAFETY: `base`/`map_len` are exactly what mmap returned; no table
        // refers to the region any more (see `as_region`).
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

/// Whether `fd`'s file is sealed against shrinking (`F_SEAL_SHRINK`; only
/// memfds and shmem files take seals).
fn sealed_against_shrinking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GET_SEALS reads the seals of an fd we own; no memory passed.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// The session's regions and the table built from them.
#[derive(Debug, Default)]
pub struct Regions {
    mapped: Vec<Arc<MappedRegion>>,
    /// Refuse files not sealed against shrinking.
    require_sealed: bool,
}

impl Regions {
    /// The regions.
    pub fn mapped(&self) -> &[Arc<MappedRegion>] {
        &self.mapped
    }

    /// Strict mode: refuse a region whose file is not sealed against
    /// shrinking (`F_SEAL_SHRINK`, as QEMU's memfds are). Off by default,
    /// since DPDK's virtio-user, rust-vmm's frontend and file-backed memory
    /// do not seal; a shrunk file then ends only its session.
    pub fn set_require_sealed(&mut self, on: bool) {
        self.require_sealed = on;
    }

    /// In strict mode, refuses `fd` unless sealed against shrinking.
    fn check_sealed(&self, region: &MemRegion, fd: &OwnedFd) -> Result<(), MemError> {
        if self.require_sealed && !sealed_against_shrinking(fd) {
            return Err(MemError::NotSealed {
                guest_addr: region.guest_addr,
            });
        }
        Ok(())
    }

    /// The first region an access to faulted (its file shrank), as the
    /// error that ends the session.
    pub fn lost(&self) -> Option<MemError> {
        self.mapped.iter().find_map(|m| m.lost())
    }

    /// The table over `mapped`, checked against their guards.
    fn guarded<'a>(
        mapped: impl Iterator<Item = &'a Arc<MappedRegion>> + Clone,
    ) -> Result<Guarded<Table>, MemError> {
        let mut t = Table::new();
        for m in mapped.clone() {
            t.add(m.as_region()).map_err(MemError::Table)?;
        }
        let watches: Vec<Watch> = mapped.filter_map(|m| m.watch()).collect();
        Ok(Guarded::new(t, watches))
    }

    /// Builds the device-visible table for `mapped`, checking overlaps.
    fn table(mapped: &[Arc<MappedRegion>]) -> Result<Guarded<Table>, MemError> {
        let mut t = Table::new();
        for (i, m) in mapped.iter().enumerate() {
            t.add(m.as_region()).map_err(MemError::Table)?;
            for other in &mapped[..i] {
                let a = &m.region;
                let b = &other.region;
                if a.user_addr < b.user_addr + b.size && b.user_addr < a.user_addr + a.size {
                    return Err(MemError::UserOverlap {
                        user_addr: a.user_addr,
                    });
                }
            }
        }
        let watches: Vec<Watch> = mapped.iter().filter_map(|m| m.watch()).collect();
        Ok(Guarded::new(t, watches))
    }

    /// Replaces every region (`SET_MEM_TABLE`): all are mapped and checked
    /// before anything changes.
    pub fn replace(
        &mut self,
        regions: &[MemRegion],
        fds: &[OwnedFd],
        mem: &SharedMemory,
    ) -> Result<(), MemError> {
        let mapped = regions
            .iter()
            .zip(fds)
            .map(|(r, fd)| {
                self.check_sealed(r, fd)?;
                MappedRegion::map(r, fd).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let table = Self::table(&mapped)?;
        mem.set(table, mapped.clone());
        // The old mappings go now, unless something still holds them.
        self.mapped = mapped;
        Ok(())
    }

    /// Adds one region (`ADD_MEM_REG`). The same region (addresses,
    /// offset and file) added again is counted, not mapped twice: QEMU's
    /// vhost-user netdev keeps one table per queue pair and adds every
    /// region once for each; it is unmapped when removed as often.
    pub fn add(
        &mut self,
        region: &MemRegion,
        fd: &OwnedFd,
        mem: &SharedMemory,
    ) -> Result<(), MemError> {
        if let Some(same) = self.mapped.iter().find(|m| m.region == *region) {
            // SAFETY: a zeroed stat is a valid out-buffer for fstat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `fd` is an open descriptor we own; `st` is writable.
            if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
                return Err(MemError::Stat(std::io::Error::last_os_error()));
            }
            if same.file == (st.st_dev, st.st_ino) {
                let _ = same
                    .refs
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_add(1))
                    });
                return Ok(());
            }
            // Another file at the same addresses: the overlap check below
            // refuses it.
        }
        self.check_sealed(region, fd)?;
        let m = MappedRegion::map(region, fd)?;
        self.mapped.push(Arc::new(m));
        match Self::table(&self.mapped) {
            Ok(t) => {
                mem.set(t, self.mapped.clone());
                Ok(())
            }
            Err(e) => {
                // Never entered a table: safe to unmap.
                self.mapped.pop();
                Err(e)
            }
        }
    }

    /// Removes the region with `region`'s guest address and size
    /// (`REM_MEM_REG`).
    pub fn remove(&mut self, region: &MemRegion, mem: &SharedMemory) -> Result<(), MemError> {
        let pos = self
            .mapped
            .iter()
            .position(|m| m.region.guest_addr == region.guest_addr && m.region.size == region.size)
            .ok_or(MemError::NoSuchRegion {
                guest_addr: region.guest_addr,
            })?;
        if self.mapped[pos].refs.load(Ordering::Relaxed) > 1 {
            self.mapped[pos].refs.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
        let rest = self
            .mapped
            .iter()
            .enumerate()
            .filter_map(|(i, m)| (i != pos).then_some(m));
        let keep = rest.clone().cloned().collect();
        mem.set(Self::guarded(rest)?, keep);
        self.mapped.remove(pos);
        Ok(())
    }

    /// Drops every region (end of session).
    pub fn clear(&mut self, mem: &SharedMemory) {
        mem.set(Guarded::default(), Vec::new());
        self.mapped.clear();
    }

    /// The guest address of the frontend range `[addr, addr + len)`, if one
    /// region holds all of it.
    pub fn translate(&self, addr: u64, len: u64) -> Option<u64> {
        self.mapped.iter().find_map(|m| m.translate(addr, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> OwnedFd {
        // SAFETY: memfd_create with a constant name.
        let fd = unsafe { libc::memfd_create(c"vhost-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        fd
    }

    fn region(guest: u64, size: u64, user: u64, off: u64) -> MemRegion {
        MemRegion {
            guest_addr: guest,
            size,
            user_addr: user,
            mmap_offset: off,
        }
    }

    #[test]
    fn regions_map_translate_and_unmap() {
        let mem = SharedMemory::new();
        let mut r = Regions::default();
        let fds = [memfd(0x4000), memfd(0x2000)];
        r.replace(
            &[
                region(0, 0x2000, 0x7000_0000, 0x1000),
                region(0x10_0000, 0x2000, 0x8000_0000, 0),
            ],
            &fds,
            &mem,
        )
        .unwrap();
        assert_eq!(r.translate(0x7000_0010, 16), Some(0x10));
        assert_eq!(r.translate(0x7000_1ff0, 0x20), None);
        mem.write_u32(GuestAddress(0x10_0004), 0xdead_beef).unwrap();
        assert_eq!(mem.read_u32(GuestAddress(0x10_0004)).unwrap(), 0xdead_beef);
        r.remove(&region(0x10_0000, 0x2000, 0, 0), &mem).unwrap();
        assert!(mem.read_u32(GuestAddress(0x10_0004)).is_err());
        r.clear(&mem);
        assert!(mem.regions().is_empty());
    }

    /// Issue 16, finding 10: the table a device reads through keeps its
    /// mappings alive. Before, dropping the session's `Regions` without
    /// clearing the table unmapped memory that a `SharedMemory` clone
    /// still pointed into, and the next read (safe code) faulted.
    #[test]
    fn a_table_keeps_its_mappings_alive_after_the_regions_are_dropped() {
        let mem = SharedMemory::new();
        let device_view = mem.clone();
        let mut r = Regions::default();
        let fds = [memfd(0x2000)];
        r.replace(&[region(0, 0x2000, 0x7000_0000, 0)], &fds, &mem)
            .unwrap();
        device_view
            .write_u32(GuestAddress(0x100), 0x1234_5678)
            .unwrap();
        drop(r);
        drop(mem);
        assert_eq!(
            device_view.read_u32(GuestAddress(0x100)).unwrap(),
            0x1234_5678
        );
        assert_eq!(device_view.regions(), vec![(GuestAddress(0), 0x2000)]);
    }

    /// QEMU's vhost-user netdev adds every region once per queue pair:
    /// the same region (file included) is counted, and stays mapped until
    /// removed as often as it was added.
    #[test]
    fn every_handle_sees_a_changed_table_at_its_next_access() {
        let mem = SharedMemory::new();
        let device_view = mem.clone();
        let mut r = Regions::default();
        let fds = [memfd(0x2000), memfd(0x2000)];
        r.replace(&[region(0, 0x2000, 0x7000_0000, 0)], &fds[..1], &mem)
            .unwrap();
        // The device's handle caches the first table.
        device_view.write_u32(GuestAddress(0x100), 1).unwrap();
        assert_eq!(device_view.regions(), [(GuestAddress(0), 0x2000)]);
        // A new table elsewhere in guest memory: the old address is gone
        // for the cached handle too, the new one works.
        r.replace(
            &[region(0x10_0000, 0x2000, 0x7000_0000, 0)],
            &fds[1..],
            &mem,
        )
        .unwrap();
        assert!(device_view.write_u32(GuestAddress(0x100), 2).is_err());
        device_view.write_u32(GuestAddress(0x10_0100), 3).unwrap();
        assert_eq!(mem.read_u32(GuestAddress(0x10_0100)).unwrap(), 3);
        // And a cleared table fails every handle.
        r.clear(&mem);
        assert!(device_view.read_u32(GuestAddress(0x10_0100)).is_err());
        assert_eq!(device_view.regions(), []);
    }

    #[test]
    fn the_same_region_added_twice_is_counted() {
        let mem = SharedMemory::new();
        let mut r = Regions::default();
        let fd = memfd(0x2000);
        let reg = region(0x1000, 0x2000, 0x7000_0000, 0);
        r.add(&reg, &fd, &mem).unwrap();
        let dup = fd.try_clone().unwrap();
        r.add(&reg, &dup, &mem).unwrap();
        assert_eq!(r.mapped().len(), 1);
        r.remove(&reg, &mem).unwrap();
        mem.write_u32(GuestAddress(0x1004), 7).unwrap();
        r.remove(&reg, &mem).unwrap();
        assert!(mem.read_u32(GuestAddress(0x1004)).is_err());
        assert!(r.remove(&reg, &mem).is_err());
    }

    /// A memfd sealed against shrinking, as QEMU's are.
    fn sealed_memfd(len: u64) -> OwnedFd {
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: memfd_create with a constant name.
        let fd = unsafe { libc::memfd_create(c"vhost-test".as_ptr(), flags) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and is owned here.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
        // SAFETY: valid fd, a plain flag argument.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(rc, 0);
        fd
    }

    /// Issue 16, finding 3: the frontend shrinks the file under a mapped
    /// region; the access past the new end fails instead of raising
    /// SIGBUS, the region is named with the guest address that faulted,
    /// and the table fails every access from then on.
    #[test]
    fn a_region_whose_file_shrinks_is_named_and_its_table_fails() {
        let mem = SharedMemory::new();
        let mut r = Regions::default();
        let fd = memfd(0x4000);
        // File bytes 0x1800..0x3800 at guest 0x10_0000: the mapping starts
        // 0x800 bytes before the region.
        let reg = region(0x10_0000, 0x2000, 0x7000_0000, 0x1800);
        r.replace(&[reg], &[fd.try_clone().unwrap()], &mem).unwrap();
        mem.write_u32(GuestAddress(0x10_0900), 1).unwrap();
        assert!(r.lost().is_none());
        // SAFETY: valid fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0x2000) }, 0);
        assert_eq!(
            mem.read_u32(GuestAddress(0x10_0900)),
            Err(MemoryError::BackingLost {
                addr: GuestAddress(0x10_0900),
                len: 4
            })
        );
        assert!(matches!(
            r.lost(),
            Some(MemError::BackingLost {
                guest_addr: 0x10_0000,
                size: 0x2000,
                user_addr: 0x7000_0000,
                at: 0x10_0900,
            })
        ));
        assert!(mem.is_lost());
        // Bytes before the new end fail too.
        assert!(mem.read_u32(GuestAddress(0x10_0000)).is_err());
        r.clear(&mem);
        assert!(!mem.is_lost());
    }

    #[test]
    fn strict_mode_refuses_files_not_sealed_against_shrinking() {
        let mem = SharedMemory::new();
        let mut r = Regions::default();
        let open = memfd(0x2000);
        let reg = region(0, 0x2000, 0, 0);
        r.replace(&[reg], &[open.try_clone().unwrap()], &mem)
            .unwrap();
        r.set_require_sealed(true);
        assert!(matches!(
            r.replace(&[reg], &[open], &mem),
            Err(MemError::NotSealed { guest_addr: 0 })
        ));
        assert!(matches!(
            r.add(
                &region(0x10_0000, 0x2000, 0x10_0000, 0),
                &memfd(0x2000),
                &mem
            ),
            Err(MemError::NotSealed {
                guest_addr: 0x10_0000
            })
        ));
        r.replace(&[reg], &[sealed_memfd(0x2000)], &mem).unwrap();
        r.add(
            &region(0x10_0000, 0x2000, 0x10_0000, 0),
            &sealed_memfd(0x2000),
            &mem,
        )
        .unwrap();
        assert_eq!(r.mapped().len(), 2);
    }

    #[test]
    fn bad_regions_are_refused() {
        let mem = SharedMemory::new();
        let mut r = Regions::default();
        let fd = memfd(0x2000);
        assert!(matches!(
            MappedRegion::map(&region(0, 0, 0, 0), &fd),
            Err(MemError::Empty)
        ));
        assert!(matches!(
            MappedRegion::map(&region(0, 0x2000, 0, 0x1000), &fd),
            Err(MemError::BeyondFile { .. })
        ));
        assert!(matches!(
            MappedRegion::map(&region(u64::MAX, 0x1000, 0, 0), &fd),
            Err(MemError::Overflow)
        ));
        let fds = [memfd(0x2000), memfd(0x2000)];
        assert!(matches!(
            r.replace(
                &[region(0, 0x2000, 0, 0), region(0x1000, 0x1000, 0x10000, 0)],
                &fds,
                &mem
            ),
            Err(MemError::Table(RegionError::Overlap { .. }))
        ));
        assert!(matches!(
            r.replace(
                &[region(0, 0x1000, 0, 0), region(0x1000, 0x1000, 0x800, 0)],
                &fds,
                &mem
            ),
            Err(MemError::UserOverlap { .. })
        ));
        // The same addresses from another file overlap.
        let one = [memfd(0x1000)];
        r.replace(&[region(0, 0x1000, 0, 0)], &one, &mem).unwrap();
        assert!(matches!(
            r.add(&region(0, 0x1000, 0, 0), &memfd(0x1000), &mem),
            Err(MemError::Table(RegionError::Overlap { .. }))
        ));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            MappedRegion::map(&region(0, 0x1000, 0, 0), &OwnedFd::from(null)),
            Err(MemError::NotAFile)
        ));
    }
}
