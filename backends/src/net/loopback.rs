//! Loopback (QEMU's "what is sent comes back"): every frame sent is queued
//! and handed back by the next receives, in order. `no_std` + `alloc`.
//!
//! The queue is bounded in frames and in bytes; a send that would overflow
//! either bound is dropped and counted ([`Sent::Done`], never
//! [`Sent::Busy`]): like a full hub port or a wire, the medium loses the
//! frame instead of stalling the sender, so a guest that transmits faster
//! than it receives cannot wedge its own transmit queue.

use alloc::collections::VecDeque;

use super::{MAX_FRAME, NetBackend, NetError, Sent};

/// A bounded FIFO of whole frames stored back to back in one byte ring, so
/// steady-state queueing allocates nothing. Shared by [`Loopback`] and the
/// hub's ports.
#[derive(Debug)]
pub(crate) struct FrameQueue {
    bytes: VecDeque<u8>,
    lens: VecDeque<usize>,
    max_frames: usize,
    max_bytes: usize,
    dropped: u64,
}

impl FrameQueue {
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        FrameQueue {
            bytes: VecDeque::new(),
            lens: VecDeque::new(),
            max_frames,
            max_bytes,
            dropped: 0,
        }
    }

    /// Queues the concatenation of `parts`, or drops and counts it when a
    /// bound would be exceeded. Returns whether it was queued.
    pub(crate) fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.lens.len() >= self.max_frames || self.bytes.len() + len > self.max_bytes {
            self.dropped += 1;
            return false;
        }
        for p in parts {
            self.bytes.extend(p.iter());
        }
        self.lens.push_back(len);
        true
    }

    /// Pops the oldest frame into `buf`; a frame larger than `buf` is
    /// consumed and reported as [`NetError::TooBig`].
    pub(crate) fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let Some(len) = self.lens.pop_front() else {
            return Ok(None);
        };
        if len > buf.len() {
            self.bytes.drain(..len);
            return Err(NetError::TooBig {
                len,
                max: buf.len(),
            });
        }
        // The frame is the first `len` bytes, in one or two runs of the
        // ring buffer: copied as slices, not byte by byte.
        let (front, back) = self.bytes.as_slices();
        let first = len.min(front.len());
        buf[..first].copy_from_slice(&front[..first]);
        buf[first..len].copy_from_slice(&back[..len - first]);
        self.bytes.drain(..len);
        Ok(Some(len))
    }

    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.lens.len()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A loopback link: what is sent comes back (QEMU's "sent comes back").
///
/// It never waits, so it has no readiness fd: after a send the frame is
/// pending at once, and a device polls [`NetBackend::recv`] after sending.
#[derive(Debug)]
pub struct Loopback {
    queue: FrameQueue,
}

impl Loopback {
    /// Default bound in frames.
    pub const DEFAULT_FRAMES: usize = 256;
    /// Default bound in bytes (16 maximal frames).
    pub const DEFAULT_BYTES: usize = 16 * MAX_FRAME;

    /// A loopback holding at most `max_frames` frames and `max_bytes` bytes
    /// in flight; frames beyond either bound are dropped and counted.
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Loopback {
            queue: FrameQueue::new(max_frames, max_bytes),
        }
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Frames waiting to come back.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

impl Default for Loopback {
    fn default() -> Self {
        Loopback::new(Self::DEFAULT_FRAMES, Self::DEFAULT_BYTES)
    }
}

impl NetBackend for Loopback {
    /// Queues the frame; a full queue drops it (counted in
    /// [`Loopback::dropped`]) and still answers [`Sent::Done`].
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(NetError::TooBig {
                len,
                max: MAX_FRAME,
            });
        }
        self.queue.push(parts);
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.queue.pop(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_in_order_and_whole() {
        let mut lo = Loopback::default();
        assert_eq!(lo.send(&[b"ab", b"cd"]).unwrap(), Sent::Done);
        assert_eq!(lo.send(&[b"xyz"]).unwrap(), Sent::Done);
        assert_eq!(lo.send(&[]).unwrap(), Sent::Done);
        let mut buf = [0u8; 16];
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(4));
        assert_eq!(&buf[..4], b"abcd");
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(3));
        assert_eq!(&buf[..3], b"xyz");
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(0));
        assert_eq!(lo.recv(&mut buf).unwrap(), None);
    }

    #[test]
    fn frames_across_the_ring_buffers_wrap_come_back_whole() {
        let mut lo = Loopback::default();
        let mut buf = [0u8; 2048];
        // Keep two frames queued while sizes vary, so the bytes wrap
        // around the ring buffer many times.
        let frame =
            |i: usize| -> Vec<u8> { (0..(i * 37) % 1500 + 1).map(|j| (i + j) as u8).collect() };
        lo.send(&[&frame(0)]).unwrap();
        for i in 1..500 {
            lo.send(&[&frame(i)]).unwrap();
            let n = lo.recv(&mut buf).unwrap().unwrap();
            assert_eq!(&buf[..n], &frame(i - 1)[..], "frame {}", i - 1);
        }
    }

    #[test]
    fn bounds_in_frames_and_bytes_drop_and_count() {
        let mut lo = Loopback::new(2, 10);
        lo.send(&[b"1234"]).unwrap();
        lo.send(&[b"5678"]).unwrap();
        // Third frame: over the frame bound.
        assert_eq!(lo.send(&[b"9"]).unwrap(), Sent::Done);
        assert_eq!(lo.dropped(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(4));
        // 4 + 7 bytes > 10: over the byte bound.
        lo.send(&[b"abcdefg"]).unwrap();
        assert_eq!(lo.dropped(), 2);
        lo.send(&[b"abcdef"]).unwrap();
        assert_eq!(lo.pending(), 2);
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(4));
        assert_eq!(&buf[..4], b"5678");
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(6));
        assert_eq!(&buf[..6], b"abcdef");
    }

    #[test]
    fn too_big_for_the_buffer_is_consumed_and_the_next_frame_follows() {
        let mut lo = Loopback::default();
        lo.send(&[&[7u8; 100]]).unwrap();
        lo.send(&[b"ok"]).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(
            lo.recv(&mut buf),
            Err(NetError::TooBig { len: 100, max: 10 })
        ));
        assert_eq!(lo.recv(&mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..2], b"ok");
    }

    #[test]
    fn a_frame_over_max_frame_is_refused() {
        let mut lo = Loopback::default();
        let big = alloc::vec![0u8; MAX_FRAME + 1];
        assert!(matches!(lo.send(&[&big]), Err(NetError::TooBig { .. })));
        assert_eq!(lo.pending(), 0);
    }
}
