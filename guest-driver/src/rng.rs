//! The entropy device driver (spec §5.4): one requestq of device-writable
//! buffers the device fills with random bytes.
//!
//! It checks every length the device reports (virtio-core rejects more
//! than the buffer; a completion with no bytes breaks §5.4.6.2 and is an
//! error), never waits without the caller's bound, and keeps a request
//! that timed out in flight so its bytes arrive with a later read. It does
//! not mix or whiten the bytes.

use heapless::Deque;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::mmio::InterruptStatus;
use virtio_core::mmio::driver::RegisterAccess;

use crate::error::Error;
use crate::hal::Hal;
use crate::queue::{DmaQueue, Filled, take_filled};
use crate::transport::{Completion, Transport};
use crate::wait::Wait;

/// The requestq's index (§5.4.2).
pub const REQUESTQ: u16 = 0;

/// Descriptors (and buffer slots) of the requestq, at most.
pub const QUEUE_SIZE: usize = 16;

/// Bytes per request buffer by default.
pub const SLOT_SIZE: u32 = 512;

/// Bytes per request buffer at most ([`RngOptions::slot_size`]).
pub const MAX_SLOT_SIZE: u32 = 64 << 10;

/// DMA pages one [`Rng`] with the default options allocates at most: the
/// rings (one page, two on a legacy device) and `QUEUE_SIZE * SLOT_SIZE`
/// bytes of buffers ([`RngOptions::pages`] for others).
pub const DMA_PAGES: usize = 2 + (QUEUE_SIZE * SLOT_SIZE as usize).div_ceil(crate::hal::PAGE_SIZE);

/// How to drive the entropy device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngOptions {
    /// Polling or interrupt-driven completion.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// Bytes per request buffer, 1 to [`MAX_SLOT_SIZE`] (clamped): the
    /// bytes in flight are [`QUEUE_SIZE`] times this, so larger buffers
    /// mean fewer notifications per byte.
    pub slot_size: u32,
}

impl Default for RngOptions {
    fn default() -> Self {
        RngOptions {
            completion: Completion::Polling,
            event_idx: true,
            slot_size: SLOT_SIZE,
        }
    }
}

impl RngOptions {
    /// The buffer size used: `slot_size` clamped to 1..=[`MAX_SLOT_SIZE`].
    pub fn slot(&self) -> u32 {
        self.slot_size.clamp(1, MAX_SLOT_SIZE)
    }

    /// DMA pages an [`Rng`] with these options allocates at most.
    pub fn pages(&self) -> usize {
        2 + (QUEUE_SIZE * self.slot() as usize).div_ceil(crate::hal::PAGE_SIZE)
    }
}

/// The error for a driver whose queue was never set up (only reachable
/// after a failed initialisation).
fn no_queue() -> Error {
    Error::Queue {
        queue: REQUESTQ,
        err: virtio_core::split::DriverError::Broken,
    }
}

/// A driver for a virtio entropy device (§5.4) on virtio-mmio.
pub struct Rng<H: Hal, R: RegisterAccess> {
    hal: H,
    transport: Transport<R>,
    queue: Option<DmaQueue<QUEUE_SIZE>>,
    ready: Deque<Filled, QUEUE_SIZE>,
    options: RngOptions,
    features: u64,
}

impl<H: Hal, R: RegisterAccess> core::fmt::Debug for Rng<H, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rng")
            .field("features", &self.features)
            .field("queue", &self.queue)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, R: RegisterAccess> Rng<H, R> {
    /// Probes `regs` for an entropy device and initialises it (§3.1.1,
    /// §5.4.5: the requestq is set up), taking its DMA memory from `hal`.
    /// On failure the device is left FAILED or reset, and the memory given
    /// back.
    pub fn new(hal: H, regs: R, options: RngOptions) -> Result<Self, Error> {
        let transport = Transport::probe(regs, DeviceType::Rng)?;
        let mut rng = Rng {
            hal,
            transport,
            queue: None,
            ready: Deque::new(),
            options,
            features: 0,
        };
        if let Err(e) = rng.init() {
            // §3.1.1: give up with FAILED; `drop` then resets the device
            // and frees what was allocated.
            rng.transport.fail();
            return Err(e);
        }
        Ok(rng)
    }

    fn wanted(&self) -> u64 {
        if self.options.event_idx {
            TransportFeatures::RING_EVENT_IDX.bits()
        } else {
            0
        }
    }

    fn init(&mut self) -> Result<(), Error> {
        self.features = self.transport.begin_init(self.wanted())?;
        let queue = DmaQueue::new(
            &self.hal,
            &mut self.transport,
            REQUESTQ,
            self.options.slot(),
            self.options.completion,
        )?;
        self.queue = Some(queue);
        self.transport.finish_init()
    }

    /// Resets the device (§2.4) and initialises it again with the same
    /// memory, dropping bytes not yet read and requests in flight. Fails
    /// with [`Error::FeaturesChanged`] if the device now negotiates
    /// different features.
    pub fn reinit(&mut self) -> Result<(), Error> {
        self.ready.clear();
        self.transport.reset()?;
        let features = self.transport.begin_init(self.wanted())?;
        if features != self.features {
            self.transport.fail();
            return Err(Error::FeaturesChanged {
                before: self.features,
                after: features,
            });
        }
        let Some(q) = self.queue.as_mut() else {
            return Err(no_queue());
        };
        q.attach(&self.transport)?;
        self.transport.finish_init()
    }

    /// The transport, for status and configuration.
    pub fn transport(&self) -> &Transport<R> {
        &self.transport
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Reads and acknowledges `InterruptStatus` (§4.2.3.4), for an
    /// interrupt handler that can reach the driver; used buffers are taken
    /// by the next read.
    pub fn on_interrupt(&self) -> InterruptStatus {
        self.transport.on_interrupt()
    }

    /// Takes every used request from the ring into the ready list
    /// (§5.4.6.1: the length the device wrote says how many bytes). A
    /// request completed with no bytes is an error (§5.4.6.2); the ones
    /// before it stay ready.
    fn collect(&mut self) -> Result<(), Error> {
        let Some(q) = self.queue.as_mut() else {
            return Err(no_queue());
        };
        while let Some(done) = q.pop()? {
            if done.len == 0 {
                q.release(done.slot);
                return Err(Error::EmptyEntropy { queue: REQUESTQ });
            }
            let chunk = Filled {
                slot: done.slot,
                len: done.len,
                off: 0,
            };
            if self.ready.push_back(chunk).is_err() {
                // More completions than slots cannot be: virtio-core
                // accepts each posted chain once. Drop the bytes rather
                // than fail.
                q.release(done.slot);
            }
        }
        Ok(())
    }

    /// Copies ready bytes into `buf`, releasing drained slots.
    fn take(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let Some(q) = self.queue.as_mut() else {
            return Ok(0);
        };
        Ok(take_filled(q, &mut self.ready, buf)?.0)
    }

    /// Makes requests available so that the bytes in flight cover `want`
    /// (at least one request), and notifies the device.
    fn request(&mut self, want: usize) -> Result<(), Error> {
        let Some(q) = self.queue.as_mut() else {
            return Err(no_queue());
        };
        let slot = self.options.slot() as usize;
        let mut in_flight = usize::from(q.in_flight()) * slot;
        let mut added = false;
        while (in_flight < want || q.in_flight() == 0) && q.push_writable()? {
            in_flight += slot;
            added = true;
        }
        if added {
            q.kick(&self.transport)?;
        }
        Ok(())
    }

    /// Reads what is ready without waiting: returns the bytes copied
    /// (possibly 0) and makes sure a request is in flight for the rest.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.collect()?;
        let n = self.take(buf)?;
        if n < buf.len() {
            self.request(buf.len() - n)?;
        }
        Ok(n)
    }

    /// Reads at least one random byte into `buf` (§5.4.6: the device may
    /// return fewer bytes than asked), waiting for the device within
    /// `wait`. Returns the number of bytes (0 only for an empty `buf`).
    /// On timeout the requests stay in flight for the next read.
    pub fn read(&mut self, buf: &mut [u8], wait: &mut impl Wait) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        crate::wait::drive(
            self,
            wait,
            |rng| Ok(Some(rng.try_read(buf)?).filter(|n| *n > 0)),
            |rng| rng.queue.as_mut().ok_or_else(no_queue)?.arm(),
            |rng| rng.transport.timeout(REQUESTQ),
        )
    }

    /// Fills all of `buf`, waiting within `wait` (one budget for the whole
    /// call). On error the bytes already copied are lost to the caller.
    pub fn read_exact(&mut self, buf: &mut [u8], wait: &mut impl Wait) -> Result<(), Error> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            done += self.read(rest, wait)?;
        }
        Ok(())
    }
}

impl<H: Hal, R: RegisterAccess> Drop for Rng<H, R> {
    /// Resets the device (§2.4) and, once it reads back 0, gives the DMA
    /// memory back; a device that does not reset keeps it.
    fn drop(&mut self) {
        if self.transport.reset().is_ok()
            && let Some(q) = self.queue.as_mut()
        {
            // SAFETY: the device was reset, so it no longer uses the
            // queue; the memory came from `self.hal`.
            unsafe { q.free(&self.hal) };
        }
    }
}
