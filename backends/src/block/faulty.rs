//! A fault-injecting wrapper that proves flush semantics (§5.2.6.2): it
//! keeps every write, discard and write-zeroes in a volatile overlay until a
//! flush, and [`Faulty::crash`] forgets the overlay, as a power cut forgets
//! a disk's write cache. Killing a process proves nothing (the page cache
//! survives it); this does.
//!
//! The inner backend only ever sees flushed changes, in the order they
//! completed. With the write cache off (writethrough, `set_write_cache(false)`)
//! every change is flushed before it completes. It can also fail the Nth
//! write or flush, to test a device's error paths.

use alloc::vec;
use alloc::vec::Vec;

use super::{BlockBackend, BlockError, check_range, check_segments, copy_from_segments};
use crate::IoSegment;

/// A change not yet on stable storage.
#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    Discard { offset: u64, len: u64 },
    Zeroes { offset: u64, len: u64, unmap: bool },
}

impl Pending {
    fn range(&self) -> (u64, u64) {
        match self {
            Pending::Write { offset, data } => (*offset, data.len() as u64),
            Pending::Discard { offset, len } | Pending::Zeroes { offset, len, .. } => {
                (*offset, *len)
            }
        }
    }
}

/// Counters of what [`Faulty`] has seen (for assertions in tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultyStats {
    /// Completed writes (including writes of zeroes and discards).
    pub writes: u64,
    /// Completed flushes.
    pub flushes: u64,
    /// Simulated crashes.
    pub crashes: u64,
    /// Changes a crash threw away.
    pub lost: u64,
}

/// A backend wrapper with a volatile write cache that a simulated crash
/// forgets, and optional injected failures.
///
/// Reads see every completed change (overlay over the inner backend);
/// discarded ranges read as zeroes while they are pending.
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    pending: Vec<Pending>,
    writeback: bool,
    fail_write: Option<u64>,
    fail_flush: Option<u64>,
    /// Whether an injected flush failure drops the pending changes.
    flush_failure_drops: bool,
    stats: FaultyStats,
}

/// The error an injected fault returns.
fn injected(what: &'static str) -> BlockError {
    #[cfg(feature = "std")]
    {
        BlockError::Io {
            what: std::string::String::from(what),
            err: std::io::Error::other("injected fault"),
        }
    }
    #[cfg(not(feature = "std"))]
    {
        BlockError::Unsupported(what)
    }
}

impl<B: BlockBackend> Faulty<B> {
    /// Wraps `inner`; the overlay starts empty and the cache in writeback
    /// mode (whatever `inner`'s own mode is: flushes reach it).
    pub fn new(inner: B) -> Self {
        Faulty {
            inner,
            pending: Vec::new(),
            writeback: true,
            fail_write: None,
            fail_flush: None,
            flush_failure_drops: false,
            stats: FaultyStats::default(),
        }
    }

    /// Simulates a power cut: every change not yet flushed is forgotten.
    pub fn crash(&mut self) {
        self.stats.crashes += 1;
        self.stats.lost += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Fails the `n`th write, discard or write-zeroes from now (1 = the
    /// next one) with an I/O error; the failed request changes nothing.
    pub fn fail_nth_write(&mut self, n: u64) {
        self.fail_write = Some(n);
    }

    /// Fails the `n`th flush from now (1 = the next one) with an I/O error;
    /// nothing pending is written back, and nothing is lost either.
    pub fn fail_nth_flush(&mut self, n: u64) {
        self.fail_flush = Some(n);
        self.flush_failure_drops = false;
    }

    /// Fails the `n`th flush from now as Linux's page cache does: the
    /// changes it should have written back are dropped (counted in
    /// [`FaultyStats::lost`]) and the flush after it succeeds, so only the
    /// caller that saw the failure knows the data is gone.
    pub fn fail_nth_flush_dropping(&mut self, n: u64) {
        self.fail_flush = Some(n);
        self.flush_failure_drops = true;
    }

    /// Changes completed but not yet flushed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// What has happened so far.
    pub fn stats(&self) -> FaultyStats {
        self.stats
    }

    /// The wrapped backend: what survives a crash.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The wrapped backend, mutably.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Gives the wrapped backend back, forgetting what is not flushed.
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn countdown(slot: &mut Option<u64>) -> bool {
        match slot {
            Some(1) => {
                *slot = None;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }

    fn admit(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size())?;
        if Self::countdown(&mut self.fail_write) {
            return Err(injected("injected write failure"));
        }
        Ok(())
    }

    fn complete(&mut self, change: Pending) -> Result<(), BlockError> {
        self.pending.push(change);
        self.stats.writes += 1;
        if self.writeback {
            Ok(())
        } else {
            // Writethrough (§5.2.6.2 with VIRTIO_BLK_F_FLUSH not negotiated
            // or writeback = 0): stable before it completes.
            self.write_back()
        }
    }

    /// Hands every pending change to the inner backend, in order, then
    /// flushes it.
    fn write_back(&mut self) -> Result<(), BlockError> {
        for (i, change) in self.pending.iter_mut().enumerate() {
            let r = match change {
                Pending::Write { offset, data } => {
                    let seg = IoSegment {
                        ptr: data.as_mut_ptr(),
                        len: data.len(),
                    };
                    // SAFETY: `data` is our own buffer, alive and unborrowed
                    // for the call (write_vectored's contract).
                    unsafe { self.inner.write_vectored(*offset, &[seg]) }
                }
                Pending::Discard { offset, len } => self.inner.discard(*offset, *len),
                Pending::Zeroes { offset, len, unmap } => {
                    self.inner.write_zeroes(*offset, *len, *unmap)
                }
            };
            if let Err(e) = r {
                // Keep what did not reach the inner backend.
                self.pending.drain(..i);
                return Err(e);
            }
        }
        self.pending.clear();
        self.inner.flush()
    }
}

impl<B: BlockBackend> BlockBackend for Faulty<B> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn supports_discard(&self) -> bool {
        self.inner.supports_discard()
    }

    fn supports_write_zeroes(&self) -> bool {
        self.inner.supports_write_zeroes()
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
        let len = check_segments(offset, segments, self.size())?;
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.inner.read_vectored(offset, segments) }?;
        let end = offset + len;
        for change in &self.pending {
            let (c_off, c_len) = change.range();
            let (lo, hi) = (offset.max(c_off), end.min(c_off + c_len));
            if lo >= hi {
                continue;
            }
            let n = (hi - lo) as usize;
            let skip = (lo - offset) as usize;
            match change {
                Pending::Write { data, .. } => {
                    let from = (lo - c_off) as usize;
                    // SAFETY: the segments are writable (read_vectored's
                    // contract) and `data` is our own buffer.
                    unsafe { super::copy_to_segments(segments, skip, &data[from..from + n]) };
                }
                Pending::Discard { .. } | Pending::Zeroes { .. } => {
                    zero_segments(segments, skip, n);
                }
            }
        }
        Ok(())
    }

    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size())?;
        self.admit(offset, len)?;
        let mut data = vec![0; len as usize];
        // SAFETY: the segments are readable (write_vectored's contract);
        // `data` is our own buffer.
        unsafe { copy_from_segments(segments, 0, &mut data) };
        self.complete(Pending::Write { offset, data })
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if Self::countdown(&mut self.fail_flush) {
            if self.flush_failure_drops {
                self.stats.lost += self.pending.len() as u64;
                self.pending.clear();
            }
            return Err(injected("injected flush failure"));
        }
        self.write_back()?;
        self.stats.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.admit(offset, len)?;
        self.complete(Pending::Discard { offset, len })
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.admit(offset, len)?;
        self.complete(Pending::Zeroes { offset, len, unmap })
    }
}

/// Zeroes `n` bytes of `segments` from `skip` bytes into them.
fn zero_segments(segments: &[IoSegment], skip: usize, n: usize) {
    static ZEROES: [u8; 4096] = [0; 4096];
    let mut done = 0;
    while done < n {
        let k = (n - done).min(ZEROES.len());
        // SAFETY: only called from read_vectored, whose caller guarantees
        // the segments are writable; ZEROES is ours.
        unsafe { super::copy_to_segments(segments, skip + done, &ZEROES[..k]) };
        done += k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::memory::MemoryDisk;

    fn write(
        d: &mut impl BlockBackend,
        offset: u64,
        byte: u8,
        len: usize,
    ) -> Result<(), BlockError> {
        let mut b = vec![byte; len];
        let s = IoSegment {
            ptr: b.as_mut_ptr(),
            len,
        };
        // SAFETY: a live local buffer.
        unsafe { d.write_vectored(offset, &[s]) }
    }

    fn read(d: &mut impl BlockBackend, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xee; len];
        let s = IoSegment {
            ptr: b.as_mut_ptr(),
            len,
        };
        // SAFETY: a live local buffer.
        unsafe { d.read_vectored(offset, &[s]) }.unwrap();
        b
    }

    #[test]
    fn flushed_data_survives_a_crash_unflushed_does_not_5_2_6_2() {
        let mut d = Faulty::new(MemoryDisk::new(8));
        write(&mut d, 0, 1, 1024).unwrap();
        d.flush().unwrap();
        write(&mut d, 512, 2, 1024).unwrap();
        d.discard(0, 100).unwrap();
        // Reads see completed writes before a flush.
        let r = read(&mut d, 0, 2048);
        assert!(r[..100].iter().all(|&x| x == 0));
        assert!(r[100..512].iter().all(|&x| x == 1));
        assert!(r[512..1536].iter().all(|&x| x == 2));
        d.crash();
        let r = read(&mut d, 0, 2048);
        assert!(r[..1024].iter().all(|&x| x == 1));
        assert!(r[1024..].iter().all(|&x| x == 0));
        assert_eq!(d.stats().lost, 2);
    }

    #[test]
    fn writethrough_makes_every_completed_write_survive_5_2_6_2() {
        let mut d = Faulty::new(MemoryDisk::new(8));
        d.set_write_cache(false);
        write(&mut d, 0, 7, 512).unwrap();
        d.write_zeroes(100, 10, false).unwrap();
        d.crash();
        let r = read(&mut d, 0, 512);
        assert!(r[..100].iter().all(|&x| x == 7));
        assert!(r[100..110].iter().all(|&x| x == 0));
        assert_eq!(d.stats().lost, 0);
    }

    #[test]
    fn injected_failures_change_nothing() {
        let mut d = Faulty::new(MemoryDisk::new(8));
        d.fail_nth_write(2);
        write(&mut d, 0, 1, 512).unwrap();
        assert!(write(&mut d, 0, 2, 512).is_err());
        write(&mut d, 512, 3, 512).unwrap();
        d.fail_nth_flush(1);
        assert!(d.flush().is_err());
        assert_eq!(d.pending(), 2);
        d.flush().unwrap();
        d.crash();
        let r = read(&mut d, 0, 1024);
        assert!(r[..512].iter().all(|&x| x == 1));
        assert!(r[512..].iter().all(|&x| x == 3));
    }

    #[test]
    fn a_dropping_flush_failure_loses_the_cache_and_then_reports_success() {
        let mut d = Faulty::new(MemoryDisk::new(8));
        write(&mut d, 0, 1, 512).unwrap();
        d.fail_nth_flush_dropping(1);
        assert!(d.flush().is_err());
        assert_eq!(d.pending(), 0);
        assert_eq!(d.stats().lost, 1);
        // Linux: the next fdatasync returns 0; the data is gone anyway.
        d.flush().unwrap();
        assert!(read(&mut d, 0, 512).iter().all(|&x| x == 0));
    }

    #[test]
    fn range_and_read_only_checked_before_anything_is_recorded() {
        let mut d = Faulty::new(MemoryDisk::new(1));
        assert!(write(&mut d, 1, 0, 512).is_err());
        assert!(d.write_zeroes(u64::MAX, 1, false).is_err());
        let mut d = Faulty::new(MemoryDisk::new(1).with_read_only(true));
        assert!(matches!(d.discard(0, 1), Err(BlockError::ReadOnly)));
        assert_eq!(d.pending(), 0);
    }
}
