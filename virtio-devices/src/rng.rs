//! virtio-rng, the entropy device (spec §5.4): one request queue whose
//! device-writable buffers the device fills from an [`RngBackend`].
//!
//! §5.4.6: the device never completes a buffer with zero bytes. When the
//! backend has nothing, the chain stays pending (in order) and is resumed by
//! [`VirtioDevice::backend_ready`] or the next notification; the device
//! never waits. A chain with no writable buffer, or a malformed one, goes
//! back to the driver at once with length 0 so that the queue never stalls.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use backends::rng::RngBackend;
use virtio_core::GuestMemory;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::split::layout::QueueSize;
use virtio_core::split::{DeviceQueue, QueueError};

use crate::device::{Budget, DeviceError, QueueConfig, Served, VirtioDevice};

/// The request queue's maximum size unless [`Rng::with_queue_size`] sets
/// another.
pub const QUEUE_SIZE: u16 = crate::device::DEFAULT_QUEUE_SIZE;

/// Bytes asked of the backend at once (a bounce buffer on the stack: a
/// backend fills Rust memory, never guest memory directly).
const CHUNK: usize = 4096;

/// Counters for the harness report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngStats {
    /// Bytes handed to the driver.
    pub bytes: u64,
    /// Chains completed.
    pub completed: u64,
    /// Chains returned unfilled because they were malformed or had no
    /// writable buffer.
    pub malformed: u64,
    /// Backend errors seen (the chain stays pending).
    pub backend_errors: u64,
}

/// The entropy device over backend `B` and guest memory `M`.
#[derive(Debug)]
pub struct Rng<B, M> {
    backend: B,
    mem: M,
    queue: Option<DeviceQueue>,
    /// The request queue's maximum size.
    max_size: [u16; 1],
    /// Heads popped but not yet filled, oldest first.
    pending: VecDeque<u16>,
    stats: RngStats,
}

impl<B: RngBackend, M: GuestMemory> Rng<B, M> {
    /// A device drawing from `backend`, serving guest memory `mem`.
    pub fn new(backend: B, mem: M) -> Self {
        Rng {
            backend,
            mem,
            queue: None,
            max_size: [QUEUE_SIZE],
            pending: VecDeque::new(),
            stats: RngStats::default(),
        }
    }

    /// The same device with a request queue of at most `size` entries
    /// (QEMU's `queue-size`; §2.7: any power of two up to 32768, which
    /// [`QueueSize`] guarantees).
    pub fn with_queue_size(mut self, size: QueueSize) -> Self {
        self.max_size = [size.get()];
        self
    }

    /// The counters.
    pub fn stats(&self) -> RngStats {
        self.stats
    }

    /// Chains waiting for entropy.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Fills one chain: `Ok(Some(n))` with `n` bytes written, `Ok(None)`
    /// when the backend had nothing for it, `Err` when guest memory failed
    /// before a byte was written (the chain cannot be served: waiting for
    /// entropy would hold it forever).
    fn fill(&mut self, queue: &DeviceQueue, head: u16) -> Result<Option<u32>, QueueError> {
        let chain = match queue.chain(&self.mem, head) {
            Ok(c) => c,
            Err(_) => {
                self.stats.malformed += 1;
                return Ok(Some(0));
            }
        };
        let mut w = match chain.reader_writer::<64>() {
            Ok((_, w)) if w.total() > 0 => w,
            _ => {
                self.stats.malformed += 1;
                return Ok(Some(0));
            }
        };
        let mut buf = [0u8; CHUNK];
        while w.available() > 0 {
            let want = (w.available() as usize).min(CHUNK);
            let n = match self.backend.fill(&mut buf[..want]) {
                Ok(n) => n.min(want),
                Err(_) => {
                    self.stats.backend_errors += 1;
                    0
                }
            };
            if n == 0 {
                break;
            }
            // `n <= available`: cannot fail on a validated chain unless the
            // memory went away meanwhile (a region removed, a file that
            // shrank); stop with what was written, or report it.
            if let Err(e) = w.write_all(&buf[..n]) {
                if w.written() == 0 {
                    return Err(QueueError::Chain(e));
                }
                break;
            }
        }
        Ok(match w.written() {
            0 => None,
            n => {
                self.stats.bytes += u64::from(n);
                Some(n)
            }
        })
    }

    /// Serves pending chains, then new ones, until the backend runs dry.
    fn serve(&mut self) -> Result<Served, DeviceError> {
        let mut queue = self.queue.take().ok_or(DeviceError::NotActivated)?;
        let r = self.serve_queue(&mut queue);
        self.queue = Some(queue);
        r
    }

    fn serve_queue(&mut self, queue: &mut DeviceQueue) -> Result<Served, DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: 0, err };
        let mut served = Served::default();
        let mut budget = Budget::default();
        let mut broken = None;
        loop {
            let head = match self.pending.front() {
                Some(&h) => h,
                None => {
                    match budget
                        .next_head(queue, &self.mem, &mut self.stats.malformed)
                        .map_err(qerr)?
                    {
                        Some(h) => {
                            self.pending.push_back(h);
                            h
                        }
                        None => break,
                    }
                }
            };
            let filled = match self.fill(queue, head) {
                Ok(f) => f,
                Err(e) => {
                    // Publish what was completed, then report: the driver
                    // gets DEVICE_NEEDS_RESET (§2.1.2) instead of a chain
                    // held forever.
                    self.pending.pop_front();
                    broken = Some(e);
                    break;
                }
            };
            match filled {
                Some(len) => {
                    self.pending.pop_front();
                    queue.add_used(&self.mem, head, len).map_err(qerr)?;
                    served.completed += 1;
                    self.stats.completed += 1;
                }
                // Dry: keep this and later chains pending (§5.4.6: no
                // zero-length completion).
                None => break,
            }
        }
        served.again = budget.exhausted;
        queue.publish_used(&self.mem).map_err(qerr)?;
        if let Some(e) = broken {
            return Err(qerr(e));
        }
        if queue.needs_notification(&self.mem).map_err(qerr)? {
            served.interrupt_queue(0);
        }
        Ok(served)
    }
}

impl<B: RngBackend, M: GuestMemory> VirtioDevice for Rng<B, M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        alloc::vec![
            ("bytes", s.bytes),
            ("completed", s.completed),
            ("malformed", s.malformed),
            ("backend_errors", s.backend_errors),
        ]
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }

    fn device_features(&self) -> u64 {
        (TransportFeatures::VERSION_1
            | TransportFeatures::RING_INDIRECT_DESC
            | TransportFeatures::RING_EVENT_IDX)
            .bits()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_size
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // §5.4.4: no configuration space.
        data.fill(0);
    }

    fn config_len(&self) -> usize {
        0
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        let q = queues
            .first()
            .and_then(|c| c.device_queue(features))
            .ok_or(DeviceError::QueueNotReady { queue: 0 })?;
        q.layout()
            .check_memory(&self.mem)
            .map_err(|err| DeviceError::QueueNotInMemory { queue: 0, err })?;
        self.queue = Some(q);
        self.pending.clear();
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if queue != 0 {
            return Err(DeviceError::NoSuchQueue { queue });
        }
        self.serve()
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        if self.queue.is_none() {
            return Ok(Served::default());
        }
        self.serve()
    }

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if queue == 0 {
            self.queue = None;
            self.pending.clear();
        }
        Ok(Served::default())
    }

    fn reset(&mut self) {
        self.queue = None;
        self.pending.clear();
    }

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        Some(self.queue.as_ref().filter(|_| queue == 0)?.next_avail())
    }

    /// The next available index, rewound past the chains waiting for
    /// entropy: the serve loop pops a chain only when none is pending and
    /// completes them oldest first, so pending chains are always the last
    /// ones popped and every chain before them is completed.
    fn queue_position(&self, queue: u16) -> Option<u16> {
        let q = self.queue.as_ref().filter(|_| queue == 0)?;
        let held = u16::try_from(self.pending.len()).ok()?;
        Some(q.next_avail().wrapping_sub(held))
    }

    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let q = self
            .queue
            .as_mut()
            .filter(|_| queue == 0)
            .ok_or(DeviceError::PositionUnsupported { queue })?;
        q.set_position(next_avail, next_avail);
        // Held chains are popped again from the ring.
        self.pending.clear();
        Ok(())
    }
}
