//! A disk held in a heap buffer (`no_std` + `alloc`): for tests, fuzzing and
//! firmware that boots from an embedded image.
//!
//! Nothing is volatile or stable here: every write is "on stable storage" as
//! far as the process is concerned, so flush does nothing and discard zeroes
//! the range (what reads return after a discard is the backend's choice,
//! §5.2.6.2; zeroes keep it deterministic).

use alloc::vec;
use alloc::vec::Vec;

use super::{
    BlockBackend, BlockError, SECTOR_SIZE, check_range, check_segments, copy_from_segments,
    copy_to_segments,
};
use crate::IoSegment;

/// A disk in memory.
#[derive(Clone, Debug)]
pub struct MemoryDisk {
    data: Vec<u8>,
    read_only: bool,
    writeback: bool,
}

impl MemoryDisk {
    /// A zero-filled, writable disk of `sectors` 512-byte sectors.
    pub fn new(sectors: usize) -> Self {
        let len = sectors.saturating_mul(SECTOR_SIZE as usize);
        Self::from_parts(vec![0; len])
    }

    /// A writable disk holding `data`, whose length must be a multiple of
    /// [`SECTOR_SIZE`].
    pub fn from_vec(data: Vec<u8>) -> Result<Self, BlockError> {
        if !(data.len() as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Misaligned {
                what: "a memory disk's length must be a multiple of 512 bytes",
            });
        }
        Ok(Self::from_parts(data))
    }

    fn from_parts(data: Vec<u8>) -> Self {
        MemoryDisk {
            data,
            read_only: false,
            writeback: true,
        }
    }

    /// The same disk, refusing writes, discards and write-zeroes when
    /// `read_only`.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The disk's bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The disk's bytes, for a test to change behind the device's back.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Gives the buffer back.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    fn writable_range(&mut self, offset: u64, len: u64) -> Result<&mut [u8], BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, len, self.size())?;
        // In range of a buffer whose length is a usize, so both fit.
        let (start, len) = (offset as usize, len as usize);
        Ok(&mut self.data[start..start + len])
    }
}

impl BlockBackend for MemoryDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_cache(&self) -> bool {
        self.writeback
    }

    fn set_write_cache(&mut self, writeback: bool) {
        // Nothing is cached: writethrough and writeback behave alike.
        self.writeback = writeback;
    }

    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        let len = check_segments(offset, segments, self.size())?;
        let (start, len) = (offset as usize, len as usize);
        // SAFETY: the caller guarantees every segment is writable and not
        // covered by a reference (read_vectored's contract); our buffer is
        // ours, so they do not overlap.
        unsafe { copy_to_segments(segments, 0, &self.data[start..start + len]) };
        Ok(())
    }

    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len = check_segments(offset, segments, self.size())?;
        let dst = self.writable_range(offset, len)?;
        // SAFETY: the caller guarantees every segment is readable
        // (write_vectored's contract); our buffer is ours, so they do not
        // overlap.
        unsafe { copy_from_segments(segments, 0, dst) };
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.writable_range(offset, len)?.fill(0);
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, _unmap: bool) -> Result<(), BlockError> {
        self.writable_range(offset, len)?.fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(buf: &mut [u8]) -> IoSegment {
        IoSegment {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    #[test]
    fn vectored_round_trip_across_segments() {
        let mut d = MemoryDisk::new(4);
        let (mut a, mut b) = ([1u8; 3], [2u8; 700]);
        // SAFETY: both buffers are live locals with no other references.
        unsafe { d.write_vectored(510, &[seg(&mut a), seg(&mut b)]) }.unwrap();
        let mut out = [0u8; 704];
        // SAFETY: as above.
        unsafe { d.read_vectored(509, &[seg(&mut out[..1]), seg(&mut out[1..])]) }.unwrap();
        assert_eq!(out[0], 0);
        assert_eq!(&out[1..4], &[1, 1, 1]);
        assert!(out[4..704].iter().all(|&x| x == 2));
    }

    #[test]
    fn out_of_range_and_read_only_are_errors() {
        let mut d = MemoryDisk::new(1);
        let mut b = [0u8; 2];
        // SAFETY: a live local.
        let e = unsafe { d.read_vectored(511, &[seg(&mut b)]) }.unwrap_err();
        assert!(matches!(e, BlockError::OutOfRange { .. }), "{e}");
        assert!(d.discard(u64::MAX, 2).is_err());
        let mut d = d.with_read_only(true);
        // SAFETY: a live local.
        let e = unsafe { d.write_vectored(0, &[seg(&mut b)]) }.unwrap_err();
        assert!(matches!(e, BlockError::ReadOnly));
        assert!(matches!(
            d.write_zeroes(0, 1, false),
            Err(BlockError::ReadOnly)
        ));
        assert!(MemoryDisk::from_vec(alloc::vec![0; 100]).is_err());
    }

    #[test]
    fn discard_and_write_zeroes_zero_fill() {
        let mut d = MemoryDisk::from_vec(alloc::vec![0xaa; 1024]).unwrap();
        d.discard(10, 10).unwrap();
        d.write_zeroes(600, 4, true).unwrap();
        assert!(d.data()[10..20].iter().all(|&x| x == 0));
        assert_eq!(d.data()[20], 0xaa);
        assert!(d.data()[600..604].iter().all(|&x| x == 0));
    }
}
