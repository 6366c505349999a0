//! `RawFile` with `aio=io_uring`: queued reads, writes and flushes on a
//! real file, in the page cache and on `O_DIRECT`; what the queue declines;
//! errors; the completion eventfd; dropping with requests in flight.

use std::collections::HashMap;
use std::path::PathBuf;

use backends::IoSegment;
use backends::block::raw::{Aio, Cache, RawFile, RawOptions};
use backends::block::{BlockBackend, BlockError, QueuedOp};

fn scratch(name: &str, len: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("block_uring");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

fn open(name: &str, cache: Cache, aio: Aio) -> RawFile {
    RawFile::open(
        scratch(name, 1 << 20),
        RawOptions {
            read_only: false,
            cache,
            aio,
        },
    )
    .unwrap()
}

/// A 4096-aligned heap buffer (for O_DIRECT), freed on drop.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }
    fn seg(&self, at: usize, len: usize) -> IoSegment {
        assert!(at + len <= self.layout.size());
        IoSegment {
            // SAFETY: inside the allocation (checked above).
            ptr: unsafe { self.ptr.add(at) },
            len,
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is initialised and no request is in flight
        // when a test looks.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    fn fill(&mut self, f: impl Fn(usize) -> u8) {
        for i in 0..self.layout.size() {
            // SAFETY: inside the allocation.
            unsafe { self.ptr.add(i).write(f(i)) };
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Queues a read of `segments` at `offset`.
///
/// # Safety
///
/// The segments must stay writable until the read is reported.
unsafe fn read_at(d: &mut RawFile, tag: u64, offset: u64, segments: &[IoSegment]) -> bool {
    // SAFETY: the caller's contract.
    unsafe { d.start(tag, QueuedOp::Read { offset, segments }) }.unwrap()
}

/// Queues reads of the first `n` 4 KiB blocks into the same blocks of
/// `buf`, tagged by block.
///
/// # Safety
///
/// `buf` must outlive the requests.
unsafe fn read_blocks(d: &mut RawFile, buf: &Aligned, n: usize) {
    for i in 0..n {
        let seg = [buf.seg(i * 4096, 4096)];
        // SAFETY: the caller's contract.
        let queued = unsafe { read_at(d, i as u64, i as u64 * 4096, &seg) };
        assert!(queued);
    }
}

/// Submits, then reaps what finished without waiting (as a device does
/// after each batch); returns how many, each checked to have succeeded.
fn submit_and_reap(d: &mut RawFile) -> usize {
    d.submit().unwrap();
    let mut reported = 0;
    d.complete(false, &mut |_, r| {
        r.unwrap();
        reported += 1;
    });
    reported
}

/// Waits for everything queued; results by tag.
fn drain(d: &mut RawFile) -> HashMap<u64, Result<(), BlockError>> {
    d.submit().unwrap();
    let mut out = HashMap::new();
    d.complete(true, &mut |tag, r| {
        assert!(out.insert(tag, r).is_none(), "tag {tag} reported twice");
    });
    assert_eq!(d.in_flight(), 0);
    out
}

fn round_trip(cache: Cache, name: &str) {
    // Buffers before the file: if an assertion fails, the file (which
    // waits for what is in flight) is dropped before the memory it lent.
    let mut src = Aligned::new(16 * 4096);
    let dst = Aligned::new(16 * 4096);
    let mut d = open(name, cache, Aio::IoUring);
    assert_eq!(d.aio(), Aio::IoUring);
    assert!(d.queue_depth() >= 128);
    assert!(d.completion_fd().is_some());
    // Sixteen 4 KiB writes, each in two segments, then a queued flush.
    src.fill(|i| (i / 4096) as u8 ^ (i as u8).wrapping_mul(13));
    for i in 0..16usize {
        let segs = [src.seg(i * 4096, 1024), src.seg(i * 4096 + 1024, 3072)];
        let offset = (i as u64 * 2 + 1) * 4096;
        // SAFETY: `src` outlives the requests (drained below).
        let queued = unsafe {
            d.start(
                i as u64,
                QueuedOp::Write {
                    offset,
                    segments: &segs,
                },
            )
        };
        assert!(queued.unwrap(), "write {i} queued");
    }
    let done = drain(&mut d);
    assert_eq!(done.len(), 16);
    assert!(done.values().all(Result::is_ok), "{done:?}");
    // SAFETY: a flush touches no memory.
    assert!(unsafe { d.start(99, QueuedOp::Flush) }.unwrap());
    let done = drain(&mut d);
    assert!(matches!(done.get(&99), Some(Ok(()))), "{done:?}");
    // Read them back, queued, into one buffer.
    for i in 0..16usize {
        let segs = [dst.seg(i * 4096, 4096)];
        let offset = (i as u64 * 2 + 1) * 4096;
        // SAFETY: `dst` outlives the requests.
        let queued = unsafe { read_at(&mut d, 100 + i as u64, offset, &segs) };
        assert!(queued);
    }
    let done = drain(&mut d);
    assert_eq!(done.len(), 16);
    assert!(done.values().all(Result::is_ok));
    assert_eq!(dst.bytes(), src.bytes());
}

#[test]
fn queued_writes_flush_and_reads_round_trip_in_the_page_cache() {
    round_trip(Cache::Writeback, "cached.img");
}

#[test]
fn queued_writes_flush_and_reads_round_trip_on_o_direct() {
    round_trip(Cache::None, "direct.img");
}

#[test]
fn the_queue_declines_what_needs_the_synchronous_path() {
    // O_DIRECT with a misaligned buffer needs the bounce buffer.
    let mut d = open("declines.img", Cache::None, Aio::IoUring);
    let buf = Aligned::new(8192);
    let misaligned = [buf.seg(8, 4096)];
    // SAFETY: nothing is queued (declined), `buf` outlives the call.
    let queued = unsafe { read_at(&mut d, 1, 0, &misaligned) };
    assert!(!queued);
    // A writethrough write completes only once stable.
    let mut d = open("declines-wt.img", Cache::Writethrough, Aio::IoUring);
    let aligned = [buf.seg(0, 4096)];
    // SAFETY: as above.
    let r = unsafe {
        d.start(
            2,
            QueuedOp::Write {
                offset: 0,
                segments: &aligned,
            },
        )
    };
    assert!(!r.unwrap());
    // A full queue (O_DIRECT: reads the page cache holds take no slot).
    let mut d = open("full.img", Cache::None, Aio::IoUring);
    let depth = d.queue_depth();
    let mut queued = 0;
    for tag in 0..depth as u64 + 10 {
        // SAFETY: `buf` outlives the requests (drained below).
        let ok = unsafe { read_at(&mut d, tag, 0, &aligned) };
        queued += usize::from(ok);
    }
    assert_eq!(queued, depth);
    assert_eq!(drain(&mut d).len(), depth);
    // Blocking I/O has no queue at all.
    let mut d = open("blocking.img", Cache::Writeback, Aio::Blocking);
    assert_eq!((d.queue_depth(), d.completion_fd()), (0, None));
    // SAFETY: as above.
    assert!(!unsafe { d.start(3, QueuedOp::Flush) }.unwrap());
}

#[test]
fn queued_requests_are_checked_before_they_are_queued() {
    let mut d = open("checks.img", Cache::Writeback, Aio::IoUring);
    let buf = Aligned::new(4096);
    let seg = [buf.seg(0, 4096)];
    // SAFETY: refused before anything is queued.
    let e = unsafe {
        d.start(
            1,
            QueuedOp::Read {
                offset: 1 << 20,
                segments: &seg,
            },
        )
    }
    .unwrap_err();
    assert!(matches!(e, BlockError::OutOfRange { .. }), "{e}");
    let p = scratch("checks-ro.img", 1 << 20);
    let mut ro = RawFile::open(
        &p,
        RawOptions {
            read_only: true,
            cache: Cache::Writeback,
            aio: Aio::IoUring,
        },
    )
    .unwrap();
    // SAFETY: as above.
    let e = unsafe {
        ro.start(
            2,
            QueuedOp::Write {
                offset: 0,
                segments: &seg,
            },
        )
    }
    .unwrap_err();
    assert!(matches!(e, BlockError::ReadOnly), "{e}");
    assert_eq!(d.in_flight() + ro.in_flight(), 0);
}

/// O_DIRECT reads finish after `submit` returns, completed from the
/// device's interrupt (not by an io-wq worker): the eventfd says so every
/// time (an eventfd registered for io-wq completions only would not).
#[test]
fn the_completion_fd_becomes_readable_when_a_request_finishes_later() {
    // The buffer before the file: on a failed assertion the file (which
    // waits for what is in flight) goes first.
    let buf = Aligned::new(64 * 4096);
    let mut d = open("eventfd.img", Cache::None, Aio::IoUring);
    let fd = d.completion_fd().unwrap();
    // SAFETY: `buf` outlives the requests (reaped or waited for below).
    unsafe { read_blocks(&mut d, &buf, 64) };
    // As a device does: reap right after submitting, which also turns the
    // eventfd back on, then sleep on it.
    let mut reported = submit_and_reap(&mut d);
    while d.in_flight() > 0 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        let n = unsafe { libc::poll(&mut p, 1, 10_000) };
        assert_eq!(
            n,
            1,
            "no wake-up in 10 s with {} requests in flight",
            d.in_flight()
        );
        // The host's part: the backend never reads it.
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into `count`.
        assert_eq!(unsafe { libc::read(fd, (&raw mut count).cast(), 8) }, 8);
        d.complete(false, &mut |_, r| {
            r.unwrap();
            reported += 1;
        });
    }
    assert_eq!(reported, 64);
    assert_eq!(d.in_flight(), 0);
}

/// Dropping the file waits for what is in flight: the memory the requests
/// use may be released right after.
#[test]
fn dropping_with_requests_in_flight_waits_for_them() {
    let buf = Aligned::new(32 * 4096);
    let mut d = open("drop.img", Cache::None, Aio::IoUring);
    // SAFETY: `buf` outlives the requests (reaped or waited for below).
    unsafe { read_blocks(&mut d, &buf, 32) };
    d.submit().unwrap();
    drop(d);
    drop(buf);
}

/// A read the page cache holds finishes inside the submitting call, and is
/// reaped by the submitter without the eventfd being written: no wake-up
/// for the host to pay for.
#[test]
fn reads_finished_during_submission_do_not_signal() {
    let mut src = Aligned::new(8 * 4096);
    let dst = Aligned::new(8 * 4096);
    let mut d = open("quiet.img", Cache::Writeback, Aio::IoUring);
    // Through io_uring, not answered at start from the page cache.
    d.answer_cached_reads(false);
    let fd = d.completion_fd().unwrap();
    src.fill(|i| i as u8);
    let segs = [src.seg(0, 8 * 4096)];
    // SAFETY: `src` is live and unborrowed for the call.
    unsafe { d.write_vectored(0, &segs) }.unwrap();
    // SAFETY: `dst` outlives the requests (reaped or waited for below).
    unsafe { read_blocks(&mut d, &dst, 8) };
    let reported = submit_and_reap(&mut d);
    assert_eq!(reported, 8, "finished during the submission");
    assert_eq!(dst.bytes(), src.bytes());
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    assert_eq!(n, 0, "the eventfd was written");
}

/// A queued read of bytes the page cache holds is answered inside
/// `start` (`preadv2` with `RWF_NOWAIT`): it counts as in flight until the
/// next `complete` reports it, with nothing submitted.
#[test]
fn cached_reads_are_answered_at_start_and_reported_by_the_next_complete() {
    // Buffers before the file: if an assertion fails, the file (which
    // waits for what is in flight) is dropped before the memory it lent.
    let mut src = Aligned::new(4 * 4096);
    let dst = Aligned::new(4 * 4096);
    let mut d = open("nowait.img", Cache::Writeback, Aio::IoUring);
    if !nowait_supported(&scratch_path("nowait.img")) {
        eprintln!("skipped: this file system does not take RWF_NOWAIT");
        return;
    }
    src.fill(|i| (i as u8).wrapping_mul(7));
    // SAFETY: `src` is live and unborrowed for the call.
    unsafe { d.write_vectored(0, &[src.seg(0, 4 * 4096)]) }.unwrap();
    // SAFETY: `dst` outlives the requests (reaped below).
    unsafe { read_blocks(&mut d, &dst, 4) };
    assert_eq!(d.in_flight(), 4);
    let mut tags = Vec::new();
    d.complete(false, &mut |tag, r| {
        r.unwrap();
        tags.push(tag);
    });
    tags.sort_unstable();
    assert_eq!(tags, [0, 1, 2, 3]);
    assert_eq!(d.in_flight(), 0);
    assert_eq!(dst.bytes(), src.bytes());
    // They take no slot of the io_uring queue: more than its depth fit.
    let one = [dst.seg(0, 4096)];
    let n = d.queue_depth() as u64 + 10;
    for tag in 0..n {
        // SAFETY: `dst` outlives the requests (drained below).
        assert!(unsafe { read_at(&mut d, tag, 0, &one) });
    }
    assert_eq!(drain(&mut d).len() as u64, n);
}

/// Bytes the page cache dropped make `RWF_NOWAIT` give up: the read goes
/// to the io_uring queue instead, and returns the same data.
#[test]
fn reads_the_page_cache_lacks_go_to_the_queue() {
    let mut src = Aligned::new(16 * 4096);
    let dst = Aligned::new(16 * 4096);
    let path = scratch("uncached.img", 1 << 20);
    let mut d = RawFile::open(
        &path,
        RawOptions {
            read_only: false,
            cache: Cache::Writeback,
            aio: Aio::IoUring,
        },
    )
    .unwrap();
    src.fill(|i| (i as u8) ^ 0x5a);
    // SAFETY: `src` is live and unborrowed for the call.
    unsafe { d.write_vectored(0, &[src.seg(0, 16 * 4096)]) }.unwrap();
    d.flush().unwrap();
    // Clean pages: the kernel drops them on request.
    let f = std::fs::File::open(&path).unwrap();
    // SAFETY: a valid fd; advice only.
    let r = unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    // SAFETY: `dst` outlives the requests (drained below).
    unsafe { read_blocks(&mut d, &dst, 16) };
    // The first block was not answered at start (on tmpfs the pages cannot
    // be dropped: there every read is answered, and this test proves
    // less). Later blocks may be: the miss can start readahead.
    let mut answered = Vec::new();
    d.complete(false, &mut |tag, _| answered.push(tag));
    let early = answered.len();
    if !on_tmpfs(&path) {
        assert!(
            !answered.contains(&0),
            "a read of a dropped page answered at start"
        );
    }
    let done = drain(&mut d);
    assert_eq!(done.len() + early, 16);
    assert!(done.values().all(Result::is_ok));
    assert_eq!(dst.bytes(), src.bytes());
}

/// Where [`scratch`] puts `name`.
fn scratch_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("block_uring")
        .join(name)
}

/// Whether the file system of `path` takes `preadv2` with `RWF_NOWAIT`.
fn nowait_supported(path: &std::path::Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 1];
    let iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: one iovec over `b`, valid for the call.
    let r = unsafe {
        libc::preadv2(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            &iov,
            1,
            0,
            libc::RWF_NOWAIT,
        )
    };
    r >= 0
        || !matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EINVAL)
        )
}

fn on_tmpfs(path: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-parameter.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type == libc::TMPFS_MAGIC
}
