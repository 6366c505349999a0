//! Guest memory mapped from a file another process controls, guarded
//! against that process shrinking it (issue 16, finding 3).
//!
//! A shared mapping of a file (a vhost-user frontend's memfd, vhost-user.rst
//! "Memory region description"; the monitor's `memory-backend-file,share=on`
//! guest RAM, which a vhost-user backend maps too) stays in place when the
//! file shrinks, but a load or store to a page past the new end raises
//! SIGBUS, whose default action kills the process. QEMU seals its memfds
//! against shrinking (`F_SEAL_SHRINK`), but DPDK's virtio-user, rust-vmm's
//! frontend and file-backed memory do not, so a peer that does not seal must
//! still work, and one that shrinks must cost only its own session.
//!
//! How: a process-wide SIGBUS handler (installed once, on first use) and a
//! fixed registry of the watched host ranges ([`Guard`]). A fault the
//! kernel raises for a page inside a watched range (`BUS_ADRERR`,
//! `BUS_OBJERR`, `BUS_MCEERR_AR`) is caught: the page is replaced by an
//! anonymous zero page, so the faulting instruction completes when the
//! handler returns, and the range is marked lost. Any other SIGBUS goes to
//! the disposition that was in place before (Rust's own handler, which
//! reports stack overflows, or the default action).
//!
//! Where the guarantee holds, and why there:
//!
//! - Copies and ring-index atomics through [`Guarded`] memory (and the
//!   vhost-user [`SharedMemory`](crate::SharedMemory), which is built on it)
//!   check the ranges they watch before and after the access: an access
//!   during which a watched range faulted returns
//!   [`MemoryError::BackingLost`] instead of the zeros it read, and once a
//!   range is lost every later access fails before touching memory. So a
//!   device that meets the fault fails the request, and cannot complete it
//!   afterwards (the status byte, the used element and the used index are
//!   written through the same memory and fail too).
//! - Host segments handed out by `map` are used outside any check (a block
//!   backend copying from a memory disk into them). A fault there is
//!   caught all the same: the process survives, the bytes read are zeros
//!   and those written are lost; the device learns of it at its next access
//!   to guest memory, which fails, before it can report the request done.
//!   (A block write whose data page was lost has put zeros on the disk by
//!   then: no more than the peer could have asked for.) A backend that
//!   moves the bytes by system call (`preadv`, `pwritev`, `read` on a tap)
//!   gets `EFAULT` from the kernel instead, and no signal.
//! - The vhost-user backend also looks at its regions after every request
//!   and every round of device calls and ends the session, naming the
//!   region; the monitor's devices see their accesses fail (their queues
//!   break, as for any memory error), and a vCPU that touches a lost page
//!   gets `EFAULT` from `KVM_RUN`, not a signal.
//!
//! Not done: a range shrunk and grown again before anything touches it
//! reads as zeros without a fault (as if the peer had written zeros, which
//! every device must survive); a SIGBUS on a thread that blocked it, or
//! after another handler replaced this one without chaining to it, still
//! kills the process; a huge-page mapping whose single page cannot be
//! replaced gets the whole watched range replaced instead.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, compiler_fence, fence};
use std::sync::{Arc, OnceLock};

use virtio_core::GuestMemory;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError};

/// How many ranges can be watched at once in one process.
pub const CAPACITY: usize = 1024;

/// One watched range. `seq` is a sequence lock over `base` and `len`: odd
/// while the owner rewrites them, and never the same even value twice, so
/// it also names the registration ([`Watch`]).
struct Slot {
    /// Held by the [`Guard`] that registered the range.
    owned: AtomicBool,
    seq: AtomicU64,
    base: AtomicUsize,
    len: AtomicUsize,
    /// 0, or 1 + the offset of the first byte that faulted.
    fault: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            owned: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            base: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            fault: AtomicUsize::new(0),
        }
    }
}

/// The registry the handler reads: plain atomics, so reading it is
/// async-signal-safe.
static SLOTS: [Slot; CAPACITY] = [const { Slot::new() }; CAPACITY];

/// Faults caught since the process started.
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// The host page size, read once before the handler is installed
/// (`sysconf` is not async-signal-safe).
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS disposition in place before ours, for faults outside every
/// watched range.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Whether the handler is installed (or the errno of the failure).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Why a range cannot be watched.
#[derive(Debug)]
pub enum GuardError {
    /// [`CAPACITY`] ranges are watched already.
    Full {
        /// The capacity.
        capacity: usize,
    },
    /// The range has no bytes, or wraps the address space.
    BadRange {
        /// Its first host address.
        base: usize,
        /// Its length.
        len: usize,
    },
    /// Installing the SIGBUS handler failed.
    Install(io::Error),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Full { capacity } => {
                write!(f, "{capacity} mappings are guarded against SIGBUS already")
            }
            GuardError::BadRange { base, len } => {
                write!(f, "cannot guard {len:#x} bytes at host address {base:#x}")
            }
            GuardError::Install(e) => write!(f, "installing the SIGBUS handler: {e}"),
        }
    }
}

impl std::error::Error for GuardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuardError::Install(e) => Some(e),
            _ => None,
        }
    }
}

/// A watched host range: while it lives, a SIGBUS for a page inside the
/// range is caught (see the module docs). Dropping it stops the watch;
/// drop it after the last access to the range and before unmapping it.
#[derive(Debug)]
pub struct Guard {
    slot: usize,
    generation: u64,
    base: usize,
    len: usize,
}

impl Guard {
    /// Watches the `len` bytes of host memory at `base` (installs the
    /// SIGBUS handler the first time). The range should be a whole mapping
    /// (page-aligned), the one whose file may shrink.
    pub fn new(base: *const u8, len: usize) -> Result<Guard, GuardError> {
        let base = base as usize;
        if len == 0 || base.checked_add(len).is_none() {
            return Err(GuardError::BadRange { base, len });
        }
        install()?;
        let (slot, s) = SLOTS
            .iter()
            .enumerate()
            .find(|(_, s)| {
                s.owned
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(GuardError::Full { capacity: CAPACITY })?;
        // The slot is ours alone (`owned`), so this thread is its only
        // writer; the handler and watches read it under the sequence lock.
        let even = s.seq.load(Ordering::Relaxed);
        s.seq.store(even + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        s.base.store(base, Ordering::Relaxed);
        s.len.store(len, Ordering::Relaxed);
        s.fault.store(0, Ordering::Relaxed);
        let generation = even + 2;
        s.seq.store(generation, Ordering::Release);
        Ok(Guard {
            slot,
            generation,
            base,
            len,
        })
    }

    /// A copyable handle on this range's state, for guest memory to check.
    pub fn watch(&self) -> Watch {
        Watch {
            slot: self.slot,
            generation: self.generation,
        }
    }

    /// The offset into the range of the first byte that faulted, if any
    /// did.
    pub fn fault(&self) -> Option<usize> {
        match SLOTS[self.slot].fault.load(Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// The first host address watched.
    pub fn base(&self) -> *const u8 {
        self.base as *const u8
    }

    /// The bytes watched.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &SLOTS[self.slot];
        s.seq.store(self.generation + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        s.base.store(0, Ordering::Relaxed);
        s.len.store(0, Ordering::Relaxed);
        s.seq.store(self.generation + 2, Ordering::Release);
        s.owned.store(false, Ordering::Release);
    }
}

/// A copyable handle on a [`Guard`]'s state. Once the guard is dropped the
/// watch reports the range lost: memory holding a watch should never be
/// used past its guard, and if it is, failing is the safe answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    slot: usize,
    generation: u64,
}

impl Watch {
    /// Whether the range faulted (or its guard is gone).
    #[inline]
    pub fn is_lost(&self) -> bool {
        let s = &SLOTS[self.slot];
        let faulted = s.fault.load(Ordering::Acquire) != 0;
        faulted || s.seq.load(Ordering::Acquire) != self.generation
    }
}

/// Faults the handler caught since the process started (in every watched
/// range).
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

/// Installs the handler once per process.
fn install() -> Result<(), GuardError> {
    let done = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the running system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE.store(
            usize::try_from(page)
                .ok()
                .filter(|p| p.is_power_of_two())
                .unwrap_or(4096),
            Ordering::Relaxed,
        );
        // SAFETY: an all-zero sigaction is a valid out-buffer.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: queries the current disposition into `old`, ours.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // Before ours is in place, so the handler always finds it.
        let _ = PREVIOUS.set(old);
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no
        // flags), completed below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        // SA_ONSTACK: on the thread's alternate stack where it has one (std
        // gives its threads one), as the handler we chain to expects.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action` is ours and valid; the handler only uses
        // async-signal-safe operations (atomics, mmap, sigaction, raise)
        // and the previous handler.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        Ok(())
    });
    done.map_err(|errno| GuardError::Install(io::Error::from_raw_os_error(errno)))
}

/// The watched range holding `addr`: its slot, base and length.
fn find(addr: usize) -> Option<(&'static Slot, usize, usize)> {
    SLOTS.iter().find_map(|s| {
        let before = s.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            // Being rewritten: not a range anything accesses yet (or any
            // more), since the owner registers before the first access and
            // unregisters after the last.
            return None;
        }
        let base = s.base.load(Ordering::Relaxed);
        let len = s.len.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if s.seq.load(Ordering::Relaxed) != before {
            return None;
        }
        (addr >= base && addr - base < len).then_some((s, base, len))
    })
}

/// Maps anonymous zero pages over `[start, end)` (page-aligned), in place
/// of what was there. `mmap` is not on POSIX's list of async-signal-safe
/// functions, but the raw system call is (no lock, no allocation; a libc
/// wrapper may take one).
fn replace(start: usize, end: usize) -> bool {
    // SAFETY: the range is inside a mapping this process made for guest
    // memory (a watched range); no Rust reference covers guest memory, so
    // replacing its pages changes only the bytes accesses see, and
    // MAP_FIXED keeps the address range mapped throughout.
    let got = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            start,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    got as usize == start
}

/// Catches a fault in a watched range: marks it lost and puts a zero page
/// where the faulting page was. False if the fault is not ours.
///
/// # Safety
///
/// `info` is the `siginfo_t` the kernel passed to the handler.
unsafe fn catch(info: *const libc::siginfo_t) -> bool {
    if info.is_null() {
        return false;
    }
    // SAFETY: the kernel's siginfo for this signal (caller).
    let code = unsafe { (*info).si_code };
    if !matches!(
        code,
        libc::BUS_ADRERR | libc::BUS_OBJERR | libc::BUS_MCEERR_AR
    ) {
        // Sent by a process, or a fault that is no lost backing
        // (alignment, an asynchronous memory error report).
        return false;
    }
    // SAFETY: for these kernel-raised codes the union holds the fault
    // address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let Some((slot, base, len)) = find(addr) else {
        return false;
    };
    let page = PAGE.load(Ordering::Relaxed);
    let start = addr & !(page - 1);
    // The first fault is the one reported; later ones only count.
    let _ = slot
        .fault
        .compare_exchange(0, addr - base + 1, Ordering::AcqRel, Ordering::Relaxed);
    CAUGHT.fetch_add(1, Ordering::Relaxed);
    if replace(start, start + page) {
        return true;
    }
    // A huge-page mapping cannot be split: replace the whole range.
    let whole_start = base & !(page - 1);
    let whole_end = (base + len).div_ceil(page) * page;
    replace(whole_start, whole_end)
}

/// The SIGBUS handler.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the calling thread's errno, saved and restored around what
    // the handler does (mmap and sigaction may set it).
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: `info` is the kernel's siginfo for this signal.
    if !unsafe { catch(info) } {
        // SAFETY: the arguments are the kernel's for this signal.
        unsafe { chain(sig, info, ctx) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Hands a SIGBUS that is not ours to the disposition before ours.
///
/// # Safety
///
/// The arguments are the kernel's for this signal.
unsafe fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let previous = PREVIOUS.get();
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    // SAFETY: the kernel's siginfo (caller), if any.
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    if handler == libc::SIG_IGN && sent {
        return;
    }
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        let siginfo = previous.is_some_and(|p| p.sa_flags & libc::SA_SIGINFO != 0);
        if siginfo {
            // SAFETY: a handler installed with SA_SIGINFO has this
            // signature; it gets the arguments the kernel gave us.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            f(sig, info, ctx);
        } else {
            // SAFETY: a handler installed without SA_SIGINFO takes the
            // signal number alone.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            f(sig);
        }
        return;
    }
    // The default action: put it back and let the signal kill the process,
    // as it would have without us. A fault raises itself again when the
    // handler returns; a signal another process sent is raised again (it
    // is delivered once the handler returns and unblocks it).
    // SAFETY: an all-zero sigaction is SIG_DFL with no flags.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigaction and raise are async-signal-safe; `dfl` is ours.
    unsafe {
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        if sent {
            libc::raise(libc::SIGBUS);
        }
    }
}

/// Guest memory over watched mappings: every access checks the watches
/// before and after it, and fails with [`MemoryError::BackingLost`] once
/// any of them is lost (see the module docs for what that guarantees).
#[derive(Clone, Debug, Default)]
pub struct Guarded<M> {
    inner: M,
    watches: Arc<[Watch]>,
}

impl<M> Guarded<M> {
    /// `inner`, checked against `watches` (the guards of the mappings its
    /// regions point into).
    pub fn new(inner: M, watches: impl Into<Arc<[Watch]>>) -> Self {
        Guarded {
            inner,
            watches: watches.into(),
        }
    }

    /// The memory without the checks.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Whether a watched mapping lost its backing.
    #[inline]
    pub fn is_lost(&self) -> bool {
        self.watches.iter().any(Watch::is_lost)
    }

    #[inline]
    fn check(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        if self.is_lost() {
            Err(MemoryError::BackingLost { addr, len })
        } else {
            Ok(())
        }
    }

    /// `r` unless a watched mapping was lost during the access just made.
    #[inline]
    fn after<T>(
        &self,
        addr: GuestAddress,
        len: u64,
        r: Result<T, MemoryError>,
    ) -> Result<T, MemoryError> {
        // The handler runs on this thread in the middle of the access: keep
        // the compiler from moving the check before it.
        compiler_fence(Ordering::SeqCst);
        self.check(addr, len)?;
        r
    }
}

impl<M: GuestMemory> GuestMemory for Guarded<M> {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        // Nothing is touched yet; whoever uses the segments meets a fault
        // as described in the module docs.
        self.check(addr, len)?;
        self.inner.map(addr, len, access)
    }

    #[inline]
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        self.check(addr, len)?;
        let r = self.inner.read(addr, buf);
        self.after(addr, len, r)
    }

    #[inline]
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        self.check(addr, len)?;
        let r = self.inner.write(addr, buf);
        self.after(addr, len, r)
    }

    #[inline]
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.check(addr, 2)?;
        let r = self.inner.load_u16_acquire(addr);
        self.after(addr, 2, r)
    }

    #[inline]
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.check(addr, 2)?;
        let r = self.inner.store_u16_release(addr, val);
        self.after(addr, 2, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use virtio_core::memory::{Region, RegionMemory};

    /// A memfd of `len` bytes mapped shared; unmapped on drop.
    struct Shared {
        fd: OwnedFd,
        ptr: *mut u8,
        len: usize,
    }

    impl Shared {
        fn new(len: usize) -> Shared {
            // SAFETY: a constant name.
            let fd = unsafe { libc::memfd_create(c"guard-test".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: just created, owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a valid fd.
            assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) }, 0);
            // SAFETY: a fresh shared mapping of the whole file.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            Shared {
                fd,
                ptr: ptr.cast(),
                len,
            }
        }

        fn shrink(&self, len: usize) {
            // SAFETY: a valid fd, a plain size.
            let rc = unsafe { libc::ftruncate(self.fd.as_raw_fd(), len as i64) };
            assert_eq!(rc, 0);
        }

        fn memory(&self) -> RegionMemory {
            let mut m = RegionMemory::new();
            // SAFETY: the mapping lives as long as `self`, which outlives
            // the memory in every test; only raw copies reach it.
            let r = unsafe { Region::new(GuestAddress(0), self.ptr, self.len as u64) };
            m.add(r).unwrap();
            m
        }
    }

    impl Drop for Shared {
        fn drop(&mut self) {
            // SAFETY: what mmap returned.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    #[test]
    fn a_fault_in_a_watched_range_fails_the_access_and_every_later_one() {
        let shared = Shared::new(0x10000);
        let guard = Guard::new(shared.ptr, shared.len).unwrap();
        let mem = Guarded::new(shared.memory(), vec![guard.watch()]);
        mem.write_u32(GuestAddress(0x8000), 7).unwrap();
        assert_eq!(mem.read_u32(GuestAddress(0x8000)).unwrap(), 7);
        shared.shrink(0x4000);
        let before = caught();
        assert_eq!(
            mem.read_u32(GuestAddress(0x8004)),
            Err(MemoryError::BackingLost {
                addr: GuestAddress(0x8004),
                len: 4
            })
        );
        assert!(caught() > before);
        assert_eq!(guard.fault(), Some(0x8004));
        // Below the new end too: the memory is lost as a whole.
        assert!(matches!(
            mem.load_u16_acquire(GuestAddress(0x100)),
            Err(MemoryError::BackingLost { .. })
        ));
        assert!(mem.write(GuestAddress(0x9000), &[1; 8]).is_err());
        assert!(mem.map(GuestAddress(0), 16, Access::Read).is_err());
    }

    #[test]
    fn segments_from_map_survive_a_fault_and_the_next_access_fails() {
        let shared = Shared::new(0x10000);
        let guard = Guard::new(shared.ptr, shared.len).unwrap();
        let mem = Guarded::new(shared.memory(), vec![guard.watch()]);
        let m = mem.map(GuestAddress(0xc000), 0x100, Access::Write).unwrap();
        shared.shrink(0);
        let seg = m.segments()[0];
        // A backend's copy into the segment (here done by hand).
        // SAFETY: the segment is inside the mapping, which lives.
        unsafe { std::ptr::write_bytes(seg.as_ptr(), 0xaa, seg.len()) };
        assert_eq!(guard.fault(), Some(0xc000));
        assert!(mem.is_lost());
        assert!(mem.write(GuestAddress(0x10), &[0]).is_err());
    }

    #[test]
    fn a_dropped_guard_reads_as_lost_and_a_later_one_is_not_confused_with_it() {
        let shared = Shared::new(0x1000);
        let guard = Guard::new(shared.ptr, shared.len).unwrap();
        let w = guard.watch();
        assert!(!w.is_lost());
        drop(guard);
        assert!(w.is_lost());
        let again = Guard::new(shared.ptr, shared.len).unwrap();
        assert!(!again.watch().is_lost());
        assert_ne!(again.watch(), w);
    }

    #[test]
    fn empty_and_wrapping_ranges_are_refused() {
        assert!(matches!(
            Guard::new(0x1000 as *const u8, 0),
            Err(GuardError::BadRange { .. })
        ));
        assert!(matches!(
            Guard::new(usize::MAX as *const u8, 2),
            Err(GuardError::BadRange { .. })
        ));
    }
}
