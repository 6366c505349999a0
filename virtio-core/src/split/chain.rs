//! Descriptor chains as the device walks them (spec §2.7.5, indirect tables
//! §2.7.5.3), and a [`Reader`] and [`Writer`] that move bytes across
//! descriptor boundaries.
//!
//! Each descriptor is read once into a local copy and validated there; the
//! walk is bounded (a loop or an overlong chain is an error, never a hang),
//! and every violation is a [`ChainError`], never a silent end of chain.
//! This module does not touch the rings; [`super::device`] does.

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::layout::{DescFlags, Descriptor, MAX_QUEUE_SIZE};
use crate::memory::{Access, GuestAddress, GuestMemory, HostSegment, MemoryError};

/// The largest indirect table accepted, in descriptors. The spec bounds a
/// chain by the queue size (§2.7.5.3.1: a driver "MUST NOT create a
/// descriptor chain longer than the Queue Size"), so no valid table is
/// longer than the largest queue.
pub const MAX_INDIRECT_DESCRIPTORS: u32 = MAX_QUEUE_SIZE as u32;

/// Why a descriptor chain is malformed (or could not be read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A descriptor could not be read from guest memory, or a buffer does
    /// not lie in guest memory.
    Memory(MemoryError),
    /// The head index is not below the queue size (§2.7.6).
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A `next` index is not below the size of the table it indexes.
    NextOutOfRange {
        /// The descriptor that holds the `next`.
        index: u16,
        /// The `next` value.
        next: u32,
        /// The number of descriptors in the table.
        table_len: u32,
    },
    /// The chain has more descriptors than its table can hold: a loop, or a
    /// chain longer than the queue size (§2.7.5.3.1, §2.7.4.2).
    TooLong {
        /// The limit that was passed.
        limit: u32,
    },
    /// `VIRTQ_DESC_F_INDIRECT` without `VIRTIO_F_RING_INDIRECT_DESC`
    /// negotiated (§2.7.5.3.1).
    IndirectNotNegotiated,
    /// An indirect descriptor inside an indirect table (§2.7.5.3.1: "MUST NOT
    /// set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor").
    NestedIndirect,
    /// A descriptor with both `INDIRECT` and `NEXT` (§2.7.5.3.1).
    IndirectWithNext,
    /// An indirect table whose length is zero or not a multiple of 16
    /// (§2.7.5.3).
    IndirectBadLength {
        /// The table's length in bytes.
        len: u32,
    },
    /// An indirect table with more than [`MAX_INDIRECT_DESCRIPTORS`] entries.
    IndirectTooLarge {
        /// The table's length in bytes.
        len: u32,
    },
    /// `addr + len` of a buffer wraps the 64-bit address space.
    AddressWraps {
        /// The buffer's address.
        addr: GuestAddress,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one (§2.7.4.2:
    /// "The driver MUST place any device-writable descriptor elements after
    /// any device-readable descriptor elements").
    ReadableAfterWritable,
    /// The chain's total length does not fit the 32-bit used length.
    LengthOverflow,
    /// The chain has more buffers than the [`Reader`]/[`Writer`] capacity.
    TooManySegments {
        /// The capacity.
        limit: usize,
    },
    /// A read or write needs more bytes than the chain holds in that
    /// direction.
    ShortBuffer {
        /// The bytes asked for.
        needed: u64,
        /// The bytes left.
        available: u64,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChainError::Memory(e) => write!(f, "descriptor chain memory error: {e}"),
            ChainError::HeadOutOfRange { head, size } => {
                write!(
                    f,
                    "chain head {head} is not below the queue size {size} (§2.7.6)"
                )
            }
            ChainError::NextOutOfRange {
                index,
                next,
                table_len,
            } => write!(
                f,
                "descriptor {index} links to {next}, outside a table of {table_len} (§2.7.5)"
            ),
            ChainError::TooLong { limit } => write!(
                f,
                "descriptor chain longer than {limit} descriptors: a loop or an overlong chain (§2.7.5.3.1)"
            ),
            ChainError::IndirectNotNegotiated => write!(
                f,
                "indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC (§2.7.5.3.1)"
            ),
            ChainError::NestedIndirect => {
                write!(
                    f,
                    "indirect descriptor inside an indirect table (§2.7.5.3.1)"
                )
            }
            ChainError::IndirectWithNext => {
                write!(f, "descriptor has both INDIRECT and NEXT (§2.7.5.3.1)")
            }
            ChainError::IndirectBadLength { len } => write!(
                f,
                "indirect table length {len} is zero or not a multiple of 16 (§2.7.5.3)"
            ),
            ChainError::IndirectTooLarge { len } => write!(
                f,
                "indirect table length {len} exceeds {MAX_INDIRECT_DESCRIPTORS} descriptors"
            ),
            ChainError::AddressWraps { addr, len } => {
                write!(f, "buffer {addr}+{len:#x} wraps the address space")
            }
            ChainError::ReadableAfterWritable => write!(
                f,
                "device-readable descriptor after a device-writable one (§2.7.4.2)"
            ),
            ChainError::LengthOverflow => write!(f, "chain length exceeds 4 GiB"),
            ChainError::TooManySegments { limit } => {
                write!(f, "chain has more than {limit} buffers")
            }
            ChainError::ShortBuffer { needed, available } => write!(
                f,
                "chain too short: {needed} bytes needed, {available} available"
            ),
        }
    }
}

impl core::error::Error for ChainError {}

impl From<MemoryError> for ChainError {
    fn from(e: MemoryError) -> Self {
        ChainError::Memory(e)
    }
}

/// A chain of descriptors made available by the driver, walked lazily.
///
/// Iterating yields each buffer descriptor (never the descriptor that points
/// to an indirect table) as a validated copy, then `None`; a malformed chain
/// yields one `Err` and then `None`. [`head`](Self::head) is what goes back
/// to the used ring, whatever happened.
pub struct DescriptorChain<'m, M: ?Sized> {
    mem: &'m M,
    head: u16,
    queue_size: u16,
    indirect_allowed: bool,
    /// The table being walked: the queue's, or an indirect one.
    table: GuestAddress,
    table_len: u32,
    in_indirect: bool,
    next: Option<u32>,
    /// Index of the descriptor that linked to `next`, for error messages.
    prev: u16,
    steps: u32,
    seen_writable: bool,
    total_len: u64,
}

impl<'m, M: GuestMemory + ?Sized> DescriptorChain<'m, M> {
    /// A chain starting at `head` in the descriptor table at `desc_table` of
    /// a queue of `queue_size`. `indirect_allowed` says whether
    /// `VIRTIO_F_RING_INDIRECT_DESC` was negotiated.
    #[inline]
    pub fn new(
        mem: &'m M,
        desc_table: GuestAddress,
        queue_size: u16,
        head: u16,
        indirect_allowed: bool,
    ) -> Result<Self, ChainError> {
        if head >= queue_size {
            return Err(ChainError::HeadOutOfRange {
                head,
                size: queue_size,
            });
        }
        Ok(DescriptorChain {
            mem,
            head,
            queue_size,
            indirect_allowed,
            table: desc_table,
            table_len: u32::from(queue_size),
            in_indirect: false,
            next: Some(u32::from(head)),
            prev: head,
            steps: 0,
            seen_writable: false,
            total_len: 0,
        })
    }

    /// The head index, to return to the used ring.
    #[inline]
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The memory the chain lives in.
    #[inline]
    pub fn memory(&self) -> &'m M {
        self.mem
    }

    /// Whether the walk has entered an indirect table.
    pub fn is_indirect(&self) -> bool {
        self.in_indirect
    }

    fn fail(&mut self, e: ChainError) -> Option<Result<Descriptor, ChainError>> {
        self.next = None;
        Some(Err(e))
    }

    /// Walks the whole chain into a [`Reader`] over its device-readable
    /// buffers and a [`Writer`] over its device-writable ones, each holding
    /// at most `S` buffers. Every buffer is checked to lie in guest memory
    /// before anything is read or written.
    pub fn reader_writer<const S: usize>(
        self,
    ) -> Result<(Reader<'m, M, S>, Writer<'m, M, S>), ChainError> {
        let mem = self.mem;
        let mut r = Reader {
            mem,
            segs: Segments::new(),
        };
        let mut w = Writer {
            mem,
            segs: Segments::new(),
            written: 0,
        };
        for d in self {
            let d = d?;
            if d.is_empty() {
                continue;
            }
            let (segs, access) = if d.is_write_only() {
                (&mut w.segs, Access::Write)
            } else {
                (&mut r.segs, Access::Read)
            };
            mem.map(d.addr(), u64::from(d.len()), access)?;
            segs.push(d.addr(), d.len())?;
        }
        Ok((r, w))
    }
}

impl<M: GuestMemory + ?Sized> Iterator for DescriptorChain<'_, M> {
    type Item = Result<Descriptor, ChainError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let index = self.next?;
            if index >= self.table_len {
                let e = ChainError::NextOutOfRange {
                    index: self.prev,
                    next: index,
                    table_len: self.table_len,
                };
                return self.fail(e);
            }
            self.steps += 1;
            if self.steps > self.table_len {
                let e = ChainError::TooLong {
                    limit: self.table_len,
                };
                return self.fail(e);
            }
            // `index < table_len <= 32768`, so the offset cannot overflow; the
            // table's end was checked when the table was entered.
            let addr = GuestAddress(self.table.0 + u64::from(index) * Descriptor::SIZE);
            let desc: Descriptor = match self.mem.read_obj(addr) {
                Ok(d) => d,
                Err(e) => return self.fail(ChainError::Memory(e)),
            };
            // `index` fits 16 bits: tables hold at most 32768 entries.
            self.prev = index as u16;
            let flags = DescFlags::from_bits_truncate(desc.raw_flags());
            if flags.contains(DescFlags::INDIRECT) {
                if self.in_indirect {
                    return self.fail(ChainError::NestedIndirect);
                }
                if !self.indirect_allowed {
                    return self.fail(ChainError::IndirectNotNegotiated);
                }
                if flags.contains(DescFlags::NEXT) {
                    return self.fail(ChainError::IndirectWithNext);
                }
                let len = desc.len();
                if len == 0 || !len.is_multiple_of(Descriptor::SIZE as u32) {
                    return self.fail(ChainError::IndirectBadLength { len });
                }
                let entries = len / Descriptor::SIZE as u32;
                if entries > MAX_INDIRECT_DESCRIPTORS {
                    return self.fail(ChainError::IndirectTooLarge { len });
                }
                if desc.addr().checked_add(u64::from(len)).is_none() {
                    let e = ChainError::AddressWraps {
                        addr: desc.addr(),
                        len,
                    };
                    return self.fail(e);
                }
                // §2.7.5.3.2: the WRITE flag of this descriptor is ignored.
                self.in_indirect = true;
                self.table = desc.addr();
                self.table_len = entries;
                self.steps = 0;
                self.next = Some(0);
                continue;
            }
            if desc.addr().checked_add(u64::from(desc.len())).is_none() {
                let e = ChainError::AddressWraps {
                    addr: desc.addr(),
                    len: desc.len(),
                };
                return self.fail(e);
            }
            if flags.contains(DescFlags::WRITE) {
                self.seen_writable = true;
            } else if self.seen_writable {
                return self.fail(ChainError::ReadableAfterWritable);
            }
            self.total_len += u64::from(desc.len());
            if self.total_len > u64::from(u32::MAX) {
                return self.fail(ChainError::LengthOverflow);
            }
            self.next = if flags.contains(DescFlags::NEXT) {
                Some(u32::from(desc.next()))
            } else {
                None
            };
            return Some(Ok(desc));
        }
    }
}

impl<M: ?Sized> fmt::Debug for DescriptorChain<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DescriptorChain")
            .field("head", &self.head)
            .field("queue_size", &self.queue_size)
            .field("in_indirect", &self.in_indirect)
            .finish_non_exhaustive()
    }
}

/// Buffers of one direction with a cursor: at most `S` of them.
#[derive(Clone, Debug)]
struct Segments<const S: usize> {
    segs: heapless::Vec<(GuestAddress, u32), S>,
    /// Current buffer.
    pos: usize,
    /// Offset in the current buffer.
    off: u32,
    /// Bytes left from the cursor to the end.
    left: u64,
    /// Total bytes.
    total: u64,
}

impl<const S: usize> Segments<S> {
    const fn new() -> Self {
        Segments {
            segs: heapless::Vec::new(),
            pos: 0,
            off: 0,
            left: 0,
            total: 0,
        }
    }

    fn push(&mut self, addr: GuestAddress, len: u32) -> Result<(), ChainError> {
        self.segs
            .push((addr, len))
            .map_err(|_| ChainError::TooManySegments { limit: S })?;
        self.left += u64::from(len);
        self.total += u64::from(len);
        Ok(())
    }

    /// Calls `f` with each guest piece of the next `n` bytes and advances;
    /// fails before calling `f` if fewer than `n` bytes are left. When `f`
    /// fails on a piece the cursor goes back to where it was: a failed
    /// transfer consumes nothing (pieces before it may have been copied).
    fn advance(
        &mut self,
        n: u64,
        mut f: impl FnMut(GuestAddress, u32, u64) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        if n > self.left {
            return Err(ChainError::ShortBuffer {
                needed: n,
                available: self.left,
            });
        }
        let (pos, off) = (self.pos, self.off);
        let mut done = 0u64;
        while done < n {
            let Some(&(addr, len)) = self.segs.get(self.pos) else {
                break;
            };
            let here = u64::from(len - self.off).min(n - done);
            // Checked when the chain was walked: `addr + len` does not wrap.
            if let Err(e) = f(
                GuestAddress(addr.0 + u64::from(self.off)),
                here as u32,
                done,
            ) {
                (self.pos, self.off) = (pos, off);
                return Err(e);
            }
            done += here;
            self.off += here as u32;
            if self.off == len {
                self.pos += 1;
                self.off = 0;
            }
        }
        self.left -= done;
        Ok(())
    }
}

/// Reads the device-readable part of a chain as one byte stream.
pub struct Reader<'m, M: ?Sized, const S: usize> {
    mem: &'m M,
    segs: Segments<S>,
}

impl<M: GuestMemory + ?Sized, const S: usize> Reader<'_, M, S> {
    /// Bytes left to read.
    #[inline]
    pub fn available(&self) -> u64 {
        self.segs.left
    }

    /// Total device-readable bytes in the chain.
    #[inline]
    pub fn total(&self) -> u64 {
        self.segs.total
    }

    /// Fills `buf` exactly, or fails without consuming anything (the
    /// bytes of `buf` are then unspecified).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ChainError> {
        let mem = self.mem;
        self.segs.advance(buf.len() as u64, |addr, n, done| {
            let at = done as usize;
            // `done + n <= buf.len()` by construction of `advance`.
            let dst = buf
                .get_mut(at..at + n as usize)
                .ok_or(ChainError::LengthOverflow)?;
            mem.read(addr, dst).map_err(ChainError::Memory)
        })
    }

    /// Reads as many bytes as are left, up to `buf.len()`; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChainError> {
        let n = (buf.len() as u64).min(self.available()) as usize;
        self.read_exact(&mut buf[..n])?;
        Ok(n)
    }

    /// Reads a plain value (a request header) by copy.
    pub fn read_obj<T: FromBytes + IntoBytes>(&mut self) -> Result<T, ChainError> {
        let mut v = T::new_zeroed();
        self.read_exact(v.as_mut_bytes())?;
        Ok(v)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: u64) -> Result<(), ChainError> {
        self.segs.advance(n, |_, _, _| Ok(()))
    }

    /// Maps the next `n` bytes to host segments for zero-copy I/O, calling
    /// `f` on each in order, and consumes them. Every piece is mapped before
    /// `f` sees the first one.
    pub fn consume_mapped(&mut self, n: u64, f: impl FnMut(HostSegment)) -> Result<(), ChainError> {
        consume_mapped(self.mem, &mut self.segs, n, Access::Read, f)
    }
}

/// Writes the device-writable part of a chain as one byte stream.
pub struct Writer<'m, M: ?Sized, const S: usize> {
    mem: &'m M,
    segs: Segments<S>,
    written: u64,
}

impl<M: GuestMemory + ?Sized, const S: usize> Writer<'_, M, S> {
    /// Bytes left to write.
    #[inline]
    pub fn available(&self) -> u64 {
        self.segs.left
    }

    /// Total device-writable bytes in the chain.
    #[inline]
    pub fn total(&self) -> u64 {
        self.segs.total
    }

    /// Bytes written so far: the used length to report (§2.7.8), which
    /// never exceeds the chain's writable bytes.
    #[inline]
    pub fn written(&self) -> u32 {
        // `written <= total <= u32::MAX`: the chain walk bounds the total.
        self.written as u32
    }

    /// Writes all of `buf`, or fails without consuming anything: the used
    /// length does not count it (a piece before the failing one may already
    /// be in guest memory, which the driver must not read past `written`).
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), ChainError> {
        let mem = self.mem;
        self.segs.advance(buf.len() as u64, |addr, n, done| {
            let at = done as usize;
            let src = buf
                .get(at..at + n as usize)
                .ok_or(ChainError::LengthOverflow)?;
            mem.write(addr, src).map_err(ChainError::Memory)
        })?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Writes as much of `buf` as fits; returns how many bytes.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, ChainError> {
        let n = (buf.len() as u64).min(self.available()) as usize;
        self.write_all(&buf[..n])?;
        Ok(n)
    }

    /// Writes a plain value by copy.
    pub fn write_obj<T: IntoBytes + Immutable>(&mut self, val: &T) -> Result<(), ChainError> {
        self.write_all(val.as_bytes())
    }

    /// Skips `n` bytes (they count as written: the device vouches for them).
    pub fn skip(&mut self, n: u64) -> Result<(), ChainError> {
        self.segs.advance(n, |_, _, _| Ok(()))?;
        self.written += n;
        Ok(())
    }

    /// Maps the next `n` bytes to host segments for zero-copy I/O, calling
    /// `f` on each in order, and counts them as written.
    pub fn consume_mapped(&mut self, n: u64, f: impl FnMut(HostSegment)) -> Result<(), ChainError> {
        consume_mapped(self.mem, &mut self.segs, n, Access::Write, f)?;
        self.written += n;
        Ok(())
    }
}

fn consume_mapped<M: GuestMemory + ?Sized, const S: usize>(
    mem: &M,
    segs: &mut Segments<S>,
    n: u64,
    access: Access,
    mut f: impl FnMut(HostSegment),
) -> Result<(), ChainError> {
    // Map everything first on a copy of the cursor, so a failure consumes
    // nothing and `f` sees nothing.
    let mut probe = segs.clone();
    probe.advance(n, |addr, len, _| {
        mem.map(addr, u64::from(len), access)?;
        Ok(())
    })?;
    segs.advance(n, |addr, len, _| {
        let m = mem.map(addr, u64::from(len), access)?;
        m.segments().iter().for_each(|s| f(*s));
        Ok(())
    })
}

/// A [`Reader`]'s buffers and position without its borrow of guest
/// memory: a device that keeps a request across notifications (output to
/// a blocked host) resumes it from here instead of walking the chain again
/// (§2.7.13: the chain was read once when it was popped; a second walk
/// could see descriptors the driver changed meanwhile).
#[derive(Clone, Debug)]
pub struct ParkedReader<const S: usize> {
    segs: Segments<S>,
}

impl<M: GuestMemory + ?Sized, const S: usize> Reader<'_, M, S> {
    /// Keeps the buffers and the position, and lets go of the memory.
    pub fn park(self) -> ParkedReader<S> {
        ParkedReader { segs: self.segs }
    }
}

impl<const S: usize> ParkedReader<S> {
    /// Bytes left to read.
    pub fn available(&self) -> u64 {
        self.segs.left
    }

    /// A reader over `mem` where this one stopped; every copy still goes
    /// through `mem`'s checks.
    pub fn resume<M: GuestMemory + ?Sized>(self, mem: &M) -> Reader<'_, M, S> {
        Reader {
            mem,
            segs: self.segs,
        }
    }
}

impl<M: ?Sized, const S: usize> fmt::Debug for Reader<'_, M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("available", &self.segs.left)
            .field("total", &self.segs.total)
            .finish_non_exhaustive()
    }
}

impl<M: ?Sized, const S: usize> fmt::Debug for Writer<'_, M, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("available", &self.segs.left)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}
