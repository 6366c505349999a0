//! A raw image file or block device (QEMU's `file`/`host_device` drivers):
//! `preadv`/`pwritev` straight from the caller's segments, flush =
//! `fdatasync`, discard = punching a hole, write-zeroes = `fallocate`.
//!
//! `cache=none` opens with `O_DIRECT`: aligned requests go straight to the
//! device; others bounce through one aligned buffer allocated when the file
//! is opened (read-modify-write for writes), so no request allocates.
//!
//! `aio=io_uring` (QEMU's spelling; [`Aio::Auto`] picks it when the kernel
//! allows) adds a queue: reads, writes and flushes started with
//! [`BlockBackend::start`] go to an io_uring and finish in any order,
//! reported by [`BlockBackend::complete`]; a short transfer is finished
//! synchronously there, so a queued request is all-or-error too. A queued
//! read whose bytes are all in the page cache is answered at once instead
//! (`preadv2` with `RWF_NOWAIT`, no io_uring round trip; it takes no slot
//! of the queue) and reported by the next `complete`. What the
//! queue declines (a full queue, an `O_DIRECT` request that needs the
//! bounce buffer, a write in writethrough mode) and everything else
//! (discard, write-zeroes) runs synchronously, blocking the caller.
//! Linux AIO (`aio=native`) is not implemented.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::string::String;

use super::uring::{Finished, Kind, Uring};
use super::{BlockBackend, BlockError, QueuedOp, SECTOR_SIZE, check_range, check_segments};
use crate::IoSegment;

/// How the host's page cache sits between the disk and the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// Through the page cache; writes are stable after a flush (QEMU's
    /// `cache=writeback`).
    #[default]
    Writeback,
    /// Through the page cache, every write made stable before it completes
    /// (QEMU's `cache=writethrough`); the guest may turn the cache on.
    Writethrough,
    /// Around the page cache with `O_DIRECT` (QEMU's `cache=none`); the
    /// device's own cache still needs a flush.
    None,
}

/// How requests reach the kernel (QEMU's `aio=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    /// io_uring when the kernel lets this process set one up, otherwise
    /// blocking calls ([`RawFile::aio`] says which, and
    /// [`RawFile::aio_fallback`] why).
    #[default]
    Auto,
    /// Blocking `preadv`/`pwritev`/`fdatasync` on the caller's thread
    /// (QEMU's `aio=threads` runs the same calls on a thread pool).
    Blocking,
    /// An io_uring queue; failing to set one up is an error.
    IoUring,
}

/// How to open a [`RawFile`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawOptions {
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// The cache mode.
    pub cache: Cache,
    /// The I/O interface.
    pub aio: Aio,
}

/// Slots of the io_uring queue: enough for two queues of 128 requests.
const URING_DEPTH: u32 = 256;

/// Bytes in the `O_DIRECT` bounce buffer.
const BOUNCE_LEN: usize = 256 * 1024;
/// Segments handed to one `preadv`/`pwritev` (kept on the stack).
const IOV_BATCH: usize = 64;

/// Answered reads kept without allocating (a 256-entry queue's worth;
/// more grow the list).
const ANSWERED_CAPACITY: usize = 256;

/// A heap buffer aligned for `O_DIRECT`, allocated once.
#[derive(Debug)]
struct Bounce {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Bounce {
    fn new(len: usize, align: usize) -> Result<Self, BlockError> {
        let layout = Layout::from_size_align(len, align).map_err(|_| BlockError::Misaligned {
            what: "the O_DIRECT alignment is not a power of two",
        })?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or_else(|| BlockError::Io {
            what: String::from("allocating the O_DIRECT bounce buffer"),
            err: io::ErrorKind::OutOfMemory.into(),
        })?;
        Ok(Bounce { ptr, layout })
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes, initialised
        // (zeroed), and only reachable through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len.min(self.layout.size())) }
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the buffer is owned memory with no thread affinity.
unsafe impl Send for Bounce {}

/// A raw disk image: a regular file or a block device.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
    writeback: bool,
    direct: bool,
    /// O_DIRECT alignment of offsets, lengths and memory (1 without it).
    align: usize,
    bounce: Option<Bounce>,
    discard: bool,
    /// The io_uring queue (`aio=io_uring`).
    uring: Option<Uring>,
    /// Why `Aio::Auto` fell back to blocking calls.
    fallback: Option<String>,
    /// Tags of queued reads the page cache answered at once (see
    /// [`RawFile::read_cached`]), reported by the next `complete`.
    answered: Vec<u64>,
    /// Queued reads try the page cache first (off where the file system
    /// refused `RWF_NOWAIT`, or by [`RawFile::answer_cached_reads`]).
    nowait: bool,
}

fn os_err(what: &str, path: &Path, err: io::Error) -> BlockError {
    BlockError::Io {
        what: format!("{what} {}", path.display()),
        err,
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The `O_DIRECT` alignment `statx` reports (Linux 6.1+), if any.
fn statx_dio_align(path: &Path) -> Option<usize> {
    const STATX_DIOALIGN: libc::c_uint = 0x2000;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statx.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, STATX_DIOALIGN, &mut st) };
    if r != 0 || st.stx_mask & STATX_DIOALIGN == 0 || st.stx_dio_offset_align == 0 {
        return None;
    }
    let a = st.stx_dio_offset_align.max(st.stx_dio_mem_align) as usize;
    a.is_power_of_two().then_some(a)
}

impl RawFile {
    /// Opens the image at `path`.
    ///
    /// With [`Cache::None`], a file system without `O_DIRECT` (or tmpfs,
    /// where it would only pretend: the data lives in the page cache
    /// anyway) is an error that says so, as is an image whose size is not
    /// a multiple of the `O_DIRECT` alignment.
    pub fn open(path: impl AsRef<Path>, options: RawOptions) -> Result<Self, BlockError> {
        let path = path.as_ref();
        let direct = options.cache == Cache::None;
        let mut oo = OpenOptions::new();
        oo.read(true).write(!options.read_only);
        if direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = oo.open(path).map_err(|err| {
            if direct && err.raw_os_error() == Some(libc::EINVAL) {
                BlockError::Io {
                    what: format!(
                        "cache=none: the file system of {} does not support O_DIRECT; \
                         use cache=writeback or cache=writethrough",
                        path.display()
                    ),
                    err,
                }
            } else {
                os_err("opening", path, err)
            }
        })?;
        let fd = file.as_raw_fd();
        let meta = file.metadata().map_err(|e| os_err("stat", path, e))?;
        let block_device = meta.file_type().is_block_device();
        let bytes = if block_device {
            // A block device's size is where its end is.
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|e| os_err("finding the end of", path, e))?
        } else {
            meta.len()
        };
        // A disk is whole sectors (§5.2.4 capacity); a partial tail is
        // not part of it.
        let size = bytes - bytes % SECTOR_SIZE;
        let mut align = 1;
        let mut bounce = None;
        if direct {
            // SAFETY: an all-zero statfs is a valid value of this C struct.
            let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: `fd` is open and `sfs` writable.
            cvt(unsafe { libc::fstatfs(fd, &mut sfs) }).map_err(|e| os_err("statfs", path, e))?;
            // The field's type differs between C libraries (u64 in musl).
            if i128::from(sfs.f_type) == i128::from(libc::TMPFS_MAGIC) {
                return Err(BlockError::Io {
                    what: format!(
                        "cache=none: {} is on tmpfs, whose O_DIRECT still goes through \
                         the page cache; use cache=writeback or cache=writethrough",
                        path.display()
                    ),
                    err: io::ErrorKind::Unsupported.into(),
                });
            }
            align = if block_device {
                let mut ssz: libc::c_int = 0;
                // SAFETY: BLKSSZGET writes one int through the pointer.
                cvt(unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut ssz) })
                    .map_err(|e| os_err("BLKSSZGET on", path, e))?;
                usize::try_from(ssz).unwrap_or(4096)
            } else {
                statx_dio_align(path).unwrap_or(4096)
            };
            if !align.is_power_of_two() {
                align = 4096;
            }
            align = align.max(SECTOR_SIZE as usize);
            if !size.is_multiple_of(align as u64) {
                return Err(BlockError::Misaligned {
                    what: "cache=none needs an image size that is a multiple of the O_DIRECT alignment",
                });
            }
            bounce = Some(Bounce::new(BOUNCE_LEN.max(align), align)?);
        }
        let (uring, fallback) = match options.aio {
            Aio::Blocking => (None, None),
            Aio::IoUring => (
                Some(Uring::new(URING_DEPTH).map_err(|err| BlockError::Io {
                    what: format!("aio=io_uring for {}: setting up the ring", path.display()),
                    err,
                })?),
                None,
            ),
            Aio::Auto => match Uring::new(URING_DEPTH) {
                Ok(u) => (Some(u), None),
                Err(e) => (None, Some(format!("io_uring unavailable: {e}"))),
            },
        };
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
            size,
            read_only: options.read_only,
            writeback: options.cache != Cache::Writethrough,
            direct,
            align,
            bounce,
            discard: !options.read_only,
            uring,
            fallback,
            answered: Vec::with_capacity(ANSWERED_CAPACITY),
            nowait: true,
        })
    }

    /// The I/O interface in force: [`Aio::IoUring`] or [`Aio::Blocking`].
    pub fn aio(&self) -> Aio {
        if self.uring.is_some() {
            Aio::IoUring
        } else {
            Aio::Blocking
        }
    }

    /// Why [`Aio::Auto`] fell back to blocking calls, if it did.
    pub fn aio_fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// A finished queued request's result: a short transfer is finished
    /// here, synchronously.
    fn finish(&mut self, f: &Finished<'_>) -> Result<(), BlockError> {
        let what = match f.kind {
            Kind::Read => "io_uring read from",
            Kind::Write => "io_uring write to",
            Kind::Flush => "io_uring fdatasync of",
        };
        if f.res < 0 {
            return Err(self.io_err(what, io::Error::from_raw_os_error(-f.res)));
        }
        let done = f.res as u64;
        if f.kind == Kind::Flush || done >= f.len {
            return Ok(());
        }
        if done == 0 {
            return Err(self.io_err(what, io::ErrorKind::UnexpectedEof.into()));
        }
        let rest = f.rest(done);
        // SAFETY: the segments are the unmoved tail of a queued request's,
        // which its caller vouched for until this completion is reported.
        unsafe { self.transfer(f.kind == Kind::Write, f.offset + done, &rest) }
    }

    /// Reads all of `segments` at `offset` if the page cache holds every
    /// byte (`preadv2` with `RWF_NOWAIT`, which returns instead of waiting
    /// for the disk): a queued read then costs one system call and no
    /// io_uring round trip. `false` when it did not finish that way
    /// (nothing cached, a short read, too many segments, any error): the
    /// caller queues the whole read, which reads again what was read.
    ///
    /// # Safety
    ///
    /// As for [`transfer`](Self::transfer), for writes by the OS.
    unsafe fn read_cached(&mut self, offset: u64, segments: &[IoSegment]) -> bool {
        if !self.nowait || self.direct || segments.len() > IOV_BATCH {
            return false;
        }
        let Ok(off) = libc::off_t::try_from(offset) else {
            return false;
        };
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let mut total = 0usize;
        for (v, s) in iov.iter_mut().zip(segments) {
            v.iov_base = s.ptr.cast();
            v.iov_len = s.len;
            total = total.saturating_add(s.len);
        }
        // SAFETY: each iovec is a segment the caller vouches for, valid
        // for writes of its length (the OS writes raw memory, no Rust
        // reference is formed); `segments.len() <= IOV_BATCH`.
        let r = unsafe {
            libc::preadv2(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                segments.len() as libc::c_int,
                off,
                libc::RWF_NOWAIT,
            )
        };
        if r < 0 {
            // A file system without RWF_NOWAIT (NFS, 9p, some FUSE) says so
            // on every call: stop asking.
            let e = io::Error::last_os_error().raw_os_error();
            if matches!(e, Some(libc::EOPNOTSUPP | libc::EINVAL)) {
                self.nowait = false;
            }
        }
        usize::try_from(r).is_ok_and(|n| n == total)
    }

    /// Whether queued reads the page cache holds are answered at once
    /// (`true`, the default) or always go to the io_uring queue (`false`;
    /// for tests of the queue itself).
    pub fn answer_cached_reads(&mut self, on: bool) {
        self.nowait = on;
    }

    /// The `O_DIRECT` alignment (1 when the page cache is in use).
    pub fn direct_alignment(&self) -> usize {
        self.align
    }

    fn io_err(&self, what: &str, err: io::Error) -> BlockError {
        os_err(what, &self.path, err)
    }

    fn aligned(&self, offset: u64, segments: &[IoSegment]) -> bool {
        let a = self.align;
        offset.is_multiple_of(a as u64)
            && segments
                .iter()
                .all(|s| (s.ptr as usize).is_multiple_of(a) && s.len % a == 0)
    }

    /// `preadv`/`pwritev` over all of `segments`, looping over short
    /// transfers, `IOV_BATCH` segments at a time.
    ///
    /// # Safety
    ///
    /// The segments must be valid for writes (`write == false`) or reads
    /// (`write == true`) of their length.
    unsafe fn transfer(
        &self,
        write: bool,
        mut offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let fd = self.file.as_raw_fd();
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let mut next = 0; // first segment not yet in `iov`
        let mut first_skip = 0; // bytes of segments[next] already done
        while next < segments.len() {
            let mut n = 0;
            let mut i = next;
            let mut skip = first_skip;
            while n < IOV_BATCH && i < segments.len() {
                let s = segments[i];
                if s.len > skip {
                    // SAFETY: `skip < s.len`, inside the segment.
                    iov[n].iov_base = unsafe { s.ptr.add(skip) }.cast();
                    iov[n].iov_len = s.len - skip;
                    n += 1;
                }
                skip = 0;
                i += 1;
            }
            if n == 0 {
                break;
            }
            let off = libc::off_t::try_from(offset).map_err(|_| BlockError::OutOfRange {
                offset,
                len: 0,
                size: self.size,
            })?;
            // SAFETY: every iovec lies inside a segment the caller vouches
            // for (valid for the access; the OS writes or reads raw memory,
            // no Rust reference is formed); `n <= IOV_BATCH`.
            let r = unsafe {
                if write {
                    libc::pwritev(fd, iov.as_ptr(), n as libc::c_int, off)
                } else {
                    libc::preadv(fd, iov.as_ptr(), n as libc::c_int, off)
                }
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.io_err(if write { "pwritev to" } else { "preadv from" }, err));
            }
            if r == 0 {
                return Err(self.io_err(
                    if write { "pwritev to" } else { "preadv from" },
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            // Advance past `r` bytes.
            let mut left = r as usize;
            offset += r as u64;
            while left > 0 && next < segments.len() {
                let rest = segments[next].len - first_skip;
                if left >= rest {
                    left -= rest;
                    next += 1;
                    first_skip = 0;
                } else {
                    first_skip += left;
                    left = 0;
                }
            }
            while next < segments.len() && segments[next].len == first_skip {
                next += 1;
                first_skip = 0;
            }
        }
        Ok(())
    }

    /// Reads or writes `len` bytes at `offset` through the bounce buffer,
    /// one aligned window at a time.
    ///
    /// # Safety
    ///
    /// As for [`transfer`](Self::transfer).
    unsafe fn bounced(
        &mut self,
        write: bool,
        offset: u64,
        len: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let a = self.align as u64;
        let Some(mut bounce) = self.bounce.take() else {
            return Err(BlockError::Misaligned {
                what: "no bounce buffer",
            });
        };
        let cap = (bounce.layout.size() as u64) / a * a;
        let end = offset + len;
        let mut pos = offset;
        let mut result = Ok(());
        while pos < end {
            let win_start = pos / a * a;
            let win_end = (end.div_ceil(a) * a).min(win_start + cap);
            let wlen = (win_end - win_start) as usize;
            let seg = IoSegment {
                ptr: bounce.ptr.as_ptr(),
                len: wlen,
            };
            let lo = pos;
            let hi = end.min(win_end);
            let inner = (lo - win_start) as usize..(hi - win_start) as usize;
            let skip = (lo - offset) as usize;
            // Read the window unless a write covers all of it.
            let need_read = !write || lo != win_start || hi != win_end;
            if need_read {
                // SAFETY: the bounce buffer is ours, aligned, `wlen` bytes.
                if let Err(e) = unsafe { self.transfer(false, win_start, &[seg]) } {
                    result = Err(e);
                    break;
                }
            }
            let buf = bounce.slice(wlen);
            if write {
                // SAFETY: the segments are readable (caller's contract); the
                // bounce buffer is ours.
                unsafe { super::copy_from_segments(segments, skip, &mut buf[inner]) };
                // SAFETY: as above.
                if let Err(e) = unsafe { self.transfer(true, win_start, &[seg]) } {
                    result = Err(e);
                    break;
                }
            } else {
                // SAFETY: the segments are writable (caller's contract).
                unsafe { super::copy_to_segments(segments, skip, &buf[inner]) };
            }
            pos = hi;
        }
        self.bounce = Some(bounce);
        result
    }

    fn after_write(&mut self) -> Result<(), BlockError> {
        if self.writeback {
            Ok(())
        } else {
            // Writethrough (§5.2.6.2): stable before the request completes.
            self.flush()
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (o, l) = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
            (Ok(o), Ok(l)) => (o, l),
            _ => return Err(io::ErrorKind::InvalidInput.into()),
        };
        loop {
            // SAFETY: a plain syscall on our own fd.
            match cvt(unsafe { libc::fallocate(self.file.as_raw_fd(), mode, o, l) }) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map(|_| ()),
            }
        }
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size)
    }

    /// Writes zeroes from a static zero page, bounded by the page's size.
    fn write_zero_page(&mut self, mut offset: u64, len: u64) -> Result<(), BlockError> {
        #[repr(C, align(4096))]
        struct ZeroPage([u8; 65536]);
        static ZERO: ZeroPage = ZeroPage([0; 65536]);
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(ZERO.0.len() as u64) as usize;
            let seg = IoSegment {
                ptr: ZERO.0.as_ptr().cast_mut(),
                len: n,
            };
            // SAFETY: the segment is only read (a write request), and the
            // static lives forever.
            unsafe { self.write_raw(offset, n as u64, &[seg]) }?;
            offset += n as u64;
        }
        Ok(())
    }

    /// # Safety
    ///
    /// As for [`BlockBackend::write_vectored`].
    unsafe fn write_raw(
        &mut self,
        offset: u64,
        len: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        if self.direct && !self.aligned(offset, segments) {
            // SAFETY: the caller's contract is passed on.
            unsafe { self.bounced(true, offset, len, segments) }
        } else {
            // SAFETY: as above.
            unsafe { self.transfer(true, offset, segments) }
        }
    }
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn block_size(&self) -> u32 {
        u32::try_from(self.align.max(SECTOR_SIZE as usize)).unwrap_or(4096)
    }

    fn supports_discard(&self) -> bool {
        self.discard
    }

    fn supports_write_zeroes(&self) -> bool {
        !self.read_only
    }

    fn write_cache(&self) -> bool {
        self.writeback
    }

    fn set_write_cache(&mut self, writeback: bool) {
        self.writeback = writeback;
    }

    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size)?;
        if self.direct && !self.aligned(offset, segments) {
            // SAFETY: read_vectored's contract, passed on.
            unsafe { self.bounced(false, offset, len, segments) }
        } else {
            // SAFETY: read_vectored's contract, passed on.
            unsafe { self.transfer(false, offset, segments) }
        }
    }

    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size)?;
        self.check_writable(offset, len)?;
        // SAFETY: write_vectored's contract, passed on.
        unsafe { self.write_raw(offset, len, segments) }?;
        self.after_write()
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.io_err("fdatasync", e))
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => self.after_write(),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.discard = false;
                Err(BlockError::Unsupported(
                    "discard: the file system cannot punch holes",
                ))
            }
            Err(e) => Err(self.io_err("punching a hole in", e)),
        }
    }

    fn queue_depth(&self) -> usize {
        self.uring.as_ref().map_or(0, Uring::depth)
    }

    unsafe fn start(&mut self, tag: u64, op: QueuedOp<'_>) -> Result<bool, BlockError> {
        let fd = self.file.as_raw_fd();
        let (kind, offset, segments): (_, _, &[IoSegment]) = match op {
            QueuedOp::Read { offset, segments } => {
                check_segments(offset, segments, self.size)?;
                (Kind::Read, offset, segments)
            }
            QueuedOp::Write { offset, segments } => {
                let len = check_segments(offset, segments, self.size)?;
                self.check_writable(offset, len)?;
                if !self.writeback {
                    // Writethrough flushes before completing: blocking.
                    return Ok(false);
                }
                (Kind::Write, offset, segments)
            }
            QueuedOp::Flush => {
                if self.read_only {
                    return Ok(false);
                }
                (Kind::Flush, 0, &[])
            }
        };
        if self.direct && kind != Kind::Flush && !self.aligned(offset, segments) {
            // The bounce buffer is one: such requests run blocking.
            return Ok(false);
        }
        if self.uring.is_none() {
            return Ok(false);
        }
        // SAFETY: start's contract: the segments stay valid for writes
        // until this tag is reported.
        if kind == Kind::Read && unsafe { self.read_cached(offset, segments) } {
            self.answered.push(tag);
            return Ok(true);
        }
        let Some(uring) = self.uring.as_mut() else {
            return Ok(false);
        };
        // SAFETY: start's contract, passed on.
        Ok(unsafe { uring.start(fd, tag, kind, offset, segments) })
    }

    fn submit(&mut self) -> Result<(), BlockError> {
        match self.uring.as_mut().map(Uring::submit) {
            Some(Err(e)) => Err(self.io_err("io_uring submit for", e)),
            _ => Ok(()),
        }
    }

    fn complete(&mut self, wait: bool, done: &mut dyn FnMut(u64, Result<(), BlockError>)) {
        for tag in self.answered.drain(..) {
            done(tag, Ok(()));
        }
        let Some(mut uring) = self.uring.take() else {
            return;
        };
        loop {
            uring.reap(|f| {
                let r = self.finish(&f);
                done(f.tag, r);
            });
            if !wait || uring.in_flight() == 0 {
                break;
            }
            uring.wait_one();
        }
        self.uring = Some(uring);
    }

    fn in_flight(&self) -> usize {
        self.uring.as_ref().map_or(0, Uring::in_flight) + self.answered.len()
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.uring.as_ref().map(Uring::event_fd)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.check_writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let modes: &[libc::c_int] = if unmap {
            &[punch, zero]
        } else {
            &[zero, punch]
        };
        for &mode in modes {
            match self.fallocate(mode, offset, len) {
                Ok(()) => return self.after_write(),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENODEV)
                    ) => {}
                Err(e) => return Err(self.io_err("zeroing a range of", e)),
            }
        }
        self.write_zero_page(offset, len)?;
        self.after_write()
    }
}
