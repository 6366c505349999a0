//! The io_uring queue behind [`super::raw::RawFile`]'s `aio=io_uring`:
//! slots for the requests in flight (each keeps its `iovec` array until
//! the kernel is done with it), one `io_uring_enter` per batch, and an
//! eventfd for wake-ups.
//!
//! The eventfd is quiet while the owner is awake: `submit` turns it off
//! (`IORING_CQ_EVENTFD_DISABLED`), so what finishes during the submitting
//! call (a read the page cache held) costs no signal, and `reap` turns it
//! back on once the completion queue is empty, then looks once more, so a
//! completion posted in between is not missed. The kernel then writes it
//! for every completion, whoever posts it. (`IORING_REGISTER_EVENTFD_ASYNC`
//! would be wrong here: it only signals completions posted by io-wq
//! workers, and an `O_DIRECT` read completes from the device's interrupt.)
//! It is never read here: a host polls it edge-triggered, or reads it
//! itself before it reaps. A request is one `io_uring_enter` and no other
//! system call when it finishes at once.
//!
//! The ring never holds more requests than it has slots, and its
//! completion queue is twice as long, so completions cannot overflow.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{IoUring, opcode, types};

use crate::IoSegment;

/// The most segments one queued request may have (Linux's `UIO_MAXIOV`);
/// a longer one takes the synchronous path.
pub(crate) const MAX_IOV: usize = 1024;

/// How long [`Uring::wait_one`] lets the ring fail before it aborts.
pub(crate) const WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a slot's request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
}

/// One request in flight.
struct Slot {
    tag: u64,
    kind: Kind,
    offset: u64,
    /// Bytes the request moves (0 for a flush).
    len: u64,
    iov: Vec<libc::iovec>,
}

/// A finished request, as [`Uring::reap`] reports it.
pub(crate) struct Finished<'a> {
    /// The caller's tag.
    pub tag: u64,
    /// What it did.
    pub kind: Kind,
    /// Where on the disk.
    pub offset: u64,
    /// Bytes it should have moved.
    pub len: u64,
    /// The kernel's result: bytes moved, or a negated errno.
    pub res: i32,
    /// Its segments.
    pub iov: &'a [libc::iovec],
}

impl Finished<'_> {
    /// The segments still to move after `done` bytes (a short transfer).
    pub fn rest(&self, done: u64) -> Vec<IoSegment> {
        let mut skip = usize::try_from(done).unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(self.iov.len());
        for v in self.iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            out.push(IoSegment {
                ptr: v.iov_base.cast::<u8>().wrapping_add(skip),
                len: v.iov_len - skip,
            });
            skip = 0;
        }
        out
    }
}

/// An io_uring with its request slots and completion eventfd.
pub(crate) struct Uring {
    ring: IoUring,
    event: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    /// The eventfd is turned off until the next `reap`.
    quiet: bool,
    /// The file registered as fixed file 0 (`IORING_REGISTER_FILES`), so a
    /// request on it spares the kernel looking the descriptor up and
    /// counting a reference to it; `None` until the first request, or when
    /// the kernel refused.
    fixed: Option<RawFd>,
    /// Registration was tried (once per ring).
    fixed_tried: bool,
}

// SAFETY: the iovecs' raw pointers name memory the caller of `start`
// vouched for until the request is reaped; nothing here is tied to the
// thread that created it (the ring itself is Send).
unsafe impl Send for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("slots", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Uring {
    /// A ring of `depth` slots (a power of two) with its eventfd.
    pub fn new(depth: u32) -> io::Result<Self> {
        let ring = IoUring::new(depth)?;
        // SAFETY: eventfd takes no pointers; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        let n = depth as usize;
        let slots = (0..n)
            .map(|_| Slot {
                tag: 0,
                kind: Kind::Flush,
                offset: 0,
                len: 0,
                iov: Vec::with_capacity(8),
            })
            .collect();
        Ok(Uring {
            ring,
            event,
            slots,
            free: (0..depth).rev().collect(),
            in_flight: 0,
            quiet: false,
            fixed: None,
            fixed_tried: false,
        })
    }

    /// Slots in all.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Requests queued and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The eventfd signalled when a request finishes.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Queues a request on `fd`; `false` when no slot is free or the
    /// segments are too many.
    ///
    /// # Safety
    ///
    /// The segments must stay valid for the request's access until it is
    /// reaped.
    pub unsafe fn start(
        &mut self,
        fd: RawFd,
        tag: u64,
        kind: Kind,
        offset: u64,
        segments: &[IoSegment],
    ) -> bool {
        if segments.len() > MAX_IOV {
            return false;
        }
        let Some(index) = self.free.pop() else {
            return false;
        };
        let slot = &mut self.slots[index as usize];
        slot.tag = tag;
        slot.kind = kind;
        slot.offset = offset;
        slot.iov.clear();
        slot.iov.extend(segments.iter().map(|s| libc::iovec {
            iov_base: s.ptr.cast(),
            iov_len: s.len,
        }));
        slot.len = segments.iter().map(|s| s.len as u64).sum();
        let n = slot.iov.len() as u32;
        if !self.fixed_tried {
            self.fixed_tried = true;
            if self.ring.submitter().register_files(&[fd]).is_ok() {
                self.fixed = Some(fd);
            }
        }
        // The same entry on the registered file or on the plain descriptor.
        macro_rules! entry {
            ($target:expr) => {
                match (kind, segments) {
                    // One segment: the plain opcodes spare the kernel copying
                    // and checking an iovec array per request.
                    (Kind::Read, [one]) if u32::try_from(one.len).is_ok() => {
                        opcode::Read::new($target, one.ptr, one.len as u32)
                            .offset(offset)
                            .build()
                    }
                    (Kind::Write, [one]) if u32::try_from(one.len).is_ok() => {
                        opcode::Write::new($target, one.ptr.cast_const(), one.len as u32)
                            .offset(offset)
                            .build()
                    }
                    (Kind::Read, _) => opcode::Readv::new($target, slot.iov.as_ptr(), n)
                        .offset(offset)
                        .build(),
                    (Kind::Write, _) => opcode::Writev::new($target, slot.iov.as_ptr(), n)
                        .offset(offset)
                        .build(),
                    (Kind::Flush, _) => opcode::Fsync::new($target)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                }
            };
        }
        let entry = if self.fixed == Some(fd) {
            entry!(types::Fixed(0))
        } else {
            entry!(types::Fd(fd))
        }
        .user_data(u64::from(index));
        // SAFETY: the entry's iovec array lives in the slot, which is not
        // reused before the request is reaped; the segments are the
        // caller's to vouch for.
        let mut pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if !pushed && self.submit().is_ok() {
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        }
        if !pushed {
            self.free.push(index);
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// Hands the queued requests to the kernel.
    /// What the kernel has not taken yet stays in the submission queue
    /// (it may take part of a batch) and goes with the next call.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        if !self.quiet {
            self.ring.completion().disable_eventfd();
            self.quiet = true;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until at least one request in flight has finished, submitting
    /// what is queued. It does not give up: the requests use memory their
    /// callers lent until they finish, so returning without them would
    /// let that memory be released under the kernel. Transient failures
    /// (`EINTR`, `EAGAIN`, `EBUSY`) are retried; if the ring keeps failing
    /// for [`WAIT_LIMIT`], the process aborts rather than go on.
    pub fn wait_one(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY))
                        && since.elapsed() > WAIT_LIMIT
                    {
                        eprintln!(
                            "io_uring: cannot wait for {} requests in flight ({e}); \
                             their memory cannot be released safely: aborting",
                            self.in_flight
                        );
                        std::process::abort();
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    // What finished meanwhile is reaped by the caller.
                    if !self.ring.completion().is_empty() {
                        return;
                    }
                }
            }
        }
    }

    /// Reports every finished request to `f` and frees its slot; turns the
    /// eventfd back on.
    pub fn reap(&mut self, mut f: impl FnMut(Finished<'_>)) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                if !self.quiet {
                    return;
                }
                // Signal from now on, and look once more for what was
                // posted before that.
                self.ring.completion().enable_eventfd();
                self.quiet = false;
                continue;
            };
            let index = cqe.user_data() as usize;
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            self.in_flight -= 1;
            f(Finished {
                tag: slot.tag,
                kind: slot.kind,
                offset: slot.offset,
                len: slot.len,
                res: cqe.result(),
                iov: &slot.iov,
            });
            self.free.push(index as u32);
        }
    }
}

impl Drop for Uring {
    /// Waits for every request in flight: the kernel may still be moving
    /// bytes to or from memory the caller lent, which must not be reused
    /// before it is done.
    fn drop(&mut self) {
        while self.in_flight > 0 {
            self.wait_one();
            self.reap(|_| {});
        }
    }
}
