//! Block devices' host side (QEMU's `block/` layer): one [`BlockBackend`]
//! trait, independent of virtio, and its implementations.
//!
//! Data moves through [`IoSegment`]s (raw pointer + length), so a device can
//! hand mapped guest memory straight to the OS (`preadv`/`pwritev`) without
//! a Rust slice ever covering it. Every request is all-or-error: a backend
//! that gets a short read or write from the OS retries the rest itself.
//!
//! Durability contract (what virtio-blk's FLUSH, §5.2.6.2, relies on): a
//! completed write may sit in a volatile cache until [`BlockBackend::flush`]
//! returns `Ok`; after that, every write that completed before the flush
//! was issued is on stable storage.
//!
//! Implementations: [`memory::MemoryDisk`] and [`faulty::Faulty`] (`alloc`),
//! [`raw::RawFile`] and [`qcow2::Qcow2`] (`std`). All of them read zeroes
//! after a discard.

use core::fmt;

use crate::IoSegment;

#[cfg(feature = "alloc")]
pub mod faulty;
#[cfg(feature = "alloc")]
pub mod memory;
#[cfg(feature = "std")]
pub mod qcow2;
#[cfg(feature = "std")]
pub mod raw;
#[cfg(feature = "std")]
mod uring;

/// Bytes in a sector: the unit of virtio-blk offsets (§5.2.6).
pub const SECTOR_SIZE: u64 = 512;

/// Why a block request failed.
#[derive(Debug)]
pub enum BlockError {
    /// The request reaches past the end of the disk.
    OutOfRange {
        /// First byte.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// The backend cannot do this (e.g. discard on an image format without
    /// it).
    Unsupported(&'static str),
    /// An alignment the backend needs (e.g. `cache=none`'s O_DIRECT) that
    /// the request does not meet and cannot be bounced.
    Misaligned {
        /// What is misaligned.
        what: &'static str,
    },
    /// The operating system failed the request.
    #[cfg(feature = "std")]
    Io {
        /// What was being done, and to what.
        what: std::string::String,
        /// The error.
        err: std::io::Error,
    },
    /// The image format's own error (e.g. a corrupt qcow2 table).
    #[cfg(feature = "std")]
    Image(std::string::String),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::OutOfRange { offset, len, size } => write!(
                f,
                "{len} bytes at offset {offset} reach past the end of the disk ({size} bytes)"
            ),
            BlockError::ReadOnly => f.write_str("the disk is read-only"),
            BlockError::Unsupported(what) => write!(f, "not supported by this backend: {what}"),
            BlockError::Misaligned { what } => write!(f, "misaligned request: {what}"),
            #[cfg(feature = "std")]
            BlockError::Io { what, err } => write!(f, "{what}: {err}"),
            #[cfg(feature = "std")]
            BlockError::Image(why) => write!(f, "image: {why}"),
        }
    }
}

impl core::error::Error for BlockError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            #[cfg(feature = "std")]
            BlockError::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// Checks that `len` bytes at `offset` lie inside a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// The total length of `segments`, or `None` if it overflows a `u64`.
pub fn segments_len(segments: &[IoSegment]) -> Option<u64> {
    segments
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add(u64::try_from(s.len).ok()?))
}

/// Checks that `segments`, placed at `offset`, lie inside a disk of `size`
/// bytes, and returns their total length.
pub fn check_segments(offset: u64, segments: &[IoSegment], size: u64) -> Result<u64, BlockError> {
    let len = segments_len(segments).ok_or(BlockError::OutOfRange {
        offset,
        len: u64::MAX,
        size,
    })?;
    check_range(offset, len, size)?;
    Ok(len)
}

/// Copies bytes out of `segments` into `dst`, starting `skip` bytes into
/// the segments' concatenation; stops when `dst` is full or the segments
/// end, and returns the number of bytes copied.
///
/// # Safety
///
/// Every segment must be valid for reads of its length (the contract of
/// [`BlockBackend::write_vectored`]), and `dst` must not overlap them.
pub unsafe fn copy_from_segments(segments: &[IoSegment], mut skip: usize, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for seg in segments {
        if done == dst.len() {
            break;
        }
        if skip >= seg.len {
            skip -= seg.len;
            continue;
        }
        let n = (seg.len - skip).min(dst.len() - done);
        // SAFETY: `skip + n <= seg.len`, so the source lies inside a segment
        // the caller vouches for (readable, not overlapping `dst`); the
        // destination is `n` bytes inside `dst`.
        unsafe { core::ptr::copy_nonoverlapping(seg.ptr.add(skip), dst.as_mut_ptr().add(done), n) };
        done += n;
        skip = 0;
    }
    done
}

/// Copies `src` into `segments`, starting `skip` bytes into the segments'
/// concatenation; stops when `src` is used up or the segments end, and
/// returns the number of bytes copied.
///
/// # Safety
///
/// Every segment must be valid for writes of its length (the contract of
/// [`BlockBackend::read_vectored`]), and `src` must not overlap them.
pub unsafe fn copy_to_segments(segments: &[IoSegment], mut skip: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for seg in segments {
        if done == src.len() {
            break;
        }
        if skip >= seg.len {
            skip -= seg.len;
            continue;
        }
        let n = (seg.len - skip).min(src.len() - done);
        // SAFETY: `skip + n <= seg.len`, so the destination lies inside a
        // segment the caller vouches for (writable, not overlapping `src`);
        // the source is `n` bytes inside `src`.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr().add(done), seg.ptr.add(skip), n) };
        done += n;
        skip = 0;
    }
    done
}

/// A request an asynchronous backend can queue ([`BlockBackend::start`]).
#[derive(Clone, Copy, Debug)]
pub enum QueuedOp<'a> {
    /// Fill `segments` with the disk's bytes from `offset`.
    Read {
        /// First byte.
        offset: u64,
        /// Where the bytes go.
        segments: &'a [IoSegment],
    },
    /// Write `segments` to the disk from `offset`.
    Write {
        /// First byte.
        offset: u64,
        /// Where the bytes come from.
        segments: &'a [IoSegment],
    },
    /// Make every write completed before this one started stable.
    Flush,
}

/// A disk: vectored reads and writes at byte offsets, flush, discard,
/// write-zeroes.
///
/// Every backend serves requests synchronously. One with a queue of its
/// own (io_uring) also takes reads, writes and flushes with
/// [`start`](Self::start), starts a batch with [`submit`](Self::submit)
/// and reports them, in any order, through [`complete`](Self::complete);
/// a host that uses the queue waits on
/// [`completion_fd`](Self::completion_fd). A queued request follows the
/// same all-or-error and durability rules as a synchronous one.
pub trait BlockBackend {
    /// Size in bytes (a multiple of [`SECTOR_SIZE`]).
    fn size(&self) -> u64;

    /// Whether writes, discards and write-zeroes are refused.
    fn read_only(&self) -> bool;

    /// The logical block size the backend prefers (a power of two, at
    /// least [`SECTOR_SIZE`]); what virtio-blk reports as `blk_size`.
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }

    /// Whether [`discard`](Self::discard) can deallocate.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Whether [`write_zeroes`](Self::write_zeroes) is implemented.
    fn supports_write_zeroes(&self) -> bool {
        false
    }

    /// Whether completed writes may sit in a volatile cache until
    /// [`flush`](Self::flush) (writeback); `false` means every write is
    /// stable when it returns (writethrough).
    fn write_cache(&self) -> bool {
        true
    }

    /// Switches between writeback (`true`) and writethrough (`false`), as
    /// virtio-blk's `writeback` config field asks (§5.2.6.3). Backends
    /// without a cache of their own emulate writethrough by flushing after
    /// every write.
    fn set_write_cache(&mut self, writeback: bool);

    /// Fills `segments`, in order, with the disk's bytes from `offset`.
    ///
    /// # Safety
    ///
    /// Every segment must be valid for writes of its length for the whole
    /// call, and no Rust reference may cover that memory meanwhile (it may
    /// be guest memory, shared with a running guest).
    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError>;

    /// Writes `segments`, in order, to the disk from `offset`.
    ///
    /// # Safety
    ///
    /// Every segment must be valid for reads of its length for the whole
    /// call (no Rust reference needs to cover it).
    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError>;

    /// Makes every completed write stable.
    fn flush(&mut self) -> Result<(), BlockError>;

    /// Tells the backend `len` bytes at `offset` are no longer needed; it
    /// may deallocate them (what reads return afterwards is unspecified).
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// Makes `len` bytes at `offset` read as zeroes; with `unmap` the
    /// backend may deallocate them while doing so.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError>;

    /// How many requests may be queued at once; 0 (the default) for a
    /// backend without a queue, whose [`start`](Self::start) always
    /// declines.
    fn queue_depth(&self) -> usize {
        0
    }

    /// Queues `op` under the caller's `tag`, to be reported by
    /// [`complete`](Self::complete). `Ok(false)` when the backend declines
    /// (no queue, the queue is full, or this request needs the synchronous
    /// path, e.g. an `O_DIRECT` bounce): the caller then does it with the
    /// synchronous call. An error is the request's own (out of range,
    /// read-only) and nothing was queued.
    ///
    /// # Safety
    ///
    /// The segments must be valid for the operation's access (writes for a
    /// read, reads for a write) until `complete` has reported `tag`, with
    /// no Rust reference covering that memory meanwhile.
    unsafe fn start(&mut self, tag: u64, op: QueuedOp<'_>) -> Result<bool, BlockError> {
        let _ = (tag, op);
        Ok(false)
    }

    /// Hands every request queued since the last call to the operating
    /// system (one system call for the batch). The
    /// [`completion_fd`](Self::completion_fd) may stay quiet from here
    /// until the next [`complete`](Self::complete), which a caller makes
    /// before it waits on the fd.
    fn submit(&mut self) -> Result<(), BlockError> {
        Ok(())
    }

    /// Calls `done` with the tag and result of every queued request that
    /// has finished; with `wait`, first waits until none is in flight.
    fn complete(&mut self, wait: bool, done: &mut dyn FnMut(u64, Result<(), BlockError>)) {
        let _ = (wait, done);
    }

    /// Requests queued and not yet reported by [`complete`](Self::complete).
    fn in_flight(&self) -> usize {
        0
    }

    /// The file descriptor that becomes readable when a queued request
    /// finishes after the call that submitted it returned, for the host's
    /// event loop; `None` without a queue. The backend never reads it: a
    /// host polls it edge-triggered (`EPOLLET`), or reads it before it
    /// calls [`complete`](Self::complete).
    #[cfg(feature = "std")]
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[cfg(feature = "std")]
impl<B: BlockBackend + ?Sized> BlockBackend for std::boxed::Box<B> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn supports_discard(&self) -> bool {
        (**self).supports_discard()
    }
    fn supports_write_zeroes(&self) -> bool {
        (**self).supports_write_zeroes()
    }
    fn write_cache(&self) -> bool {
        (**self).write_cache()
    }
    fn set_write_cache(&mut self, writeback: bool) {
        (**self).set_write_cache(writeback)
    }
    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        // SAFETY: the caller upholds the contract, which is the same.
        unsafe { (**self).read_vectored(offset, segments) }
    }
    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        // SAFETY: the caller upholds the contract, which is the same.
        unsafe { (**self).write_vectored(offset, segments) }
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        (**self).discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        (**self).write_zeroes(offset, len, unmap)
    }
    fn queue_depth(&self) -> usize {
        (**self).queue_depth()
    }
    unsafe fn start(&mut self, tag: u64, op: QueuedOp<'_>) -> Result<bool, BlockError> {
        // SAFETY: the caller upholds the contract, which is the same.
        unsafe { (**self).start(tag, op) }
    }
    fn submit(&mut self) -> Result<(), BlockError> {
        (**self).submit()
    }
    fn complete(&mut self, wait: bool, done: &mut dyn FnMut(u64, Result<(), BlockError>)) {
        (**self).complete(wait, done)
    }
    fn in_flight(&self) -> usize {
        (**self).in_flight()
    }
    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).completion_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(512, 0, 512).is_ok());
        assert!(check_range(1, 512, 512).is_err());
        assert!(check_range(u64::MAX, 2, u64::MAX).is_err());
        let e = check_range(1024, 512, 1024).unwrap_err().to_string();
        assert!(e.contains("1024") && e.contains("512"), "{e}");
    }
}
