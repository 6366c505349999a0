//! The [`VirtioDevice`] trait every frontend implements (the device half of
//! QEMU's `VirtioDeviceClass`; spec §2 "Basic Facilities of a Virtio
//! Device"), and the errors a device reports.
//!
//! Transports (virtio-mmio here; PCI later) own the registers and the status
//! machine and call these hooks; a device owns its queues once activated.

use alloc::vec::Vec;
use core::fmt;

use virtio_core::GuestMemory;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::split::layout::{LayoutError, QueueLayout};
use virtio_core::split::{DeviceQueue, QueueError};

/// The largest queue size a device offers unless told otherwise: 1024,
/// what QEMU's virtio-mmio transport reports as `QueueNumMax` for every
/// device (`QueueSizeMax` in the 1.3+ text, §4.2.2) and what Linux then
/// asks for, so a frontend that passes the driver's choice through (QEMU
/// over vhost-user) is served with default settings on both sides. Any
/// power of two up to 32768 is valid (§2.7); a driver may pick less.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;

/// Why a device refused to go live or could not serve a queue. A device that
/// returns one of these from [`VirtioDevice::queue_notify`] is asking its
/// transport to set `DEVICE_NEEDS_RESET` (§2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// A queue the device needs was not enabled by the driver.
    QueueNotReady {
        /// The queue index.
        queue: u16,
    },
    /// A queue's rings are not in guest memory (§2.7).
    QueueNotInMemory {
        /// The queue index.
        queue: u16,
        /// Why.
        err: LayoutError,
    },
    /// A queue's rings broke a rule the device cannot recover from (e.g.
    /// the available index jumped, §2.7.6).
    Queue {
        /// The queue index.
        queue: u16,
        /// Why.
        err: QueueError,
    },
    /// A notification for a queue the device does not have.
    NoSuchQueue {
        /// The queue index.
        queue: u16,
    },
    /// The device was notified before it was activated.
    NotActivated,
    /// The device's backend is gone for good (e.g. an external vhost-user
    /// backend that closed its socket); the transport raises
    /// `DEVICE_NEEDS_RESET` (§2.1.2).
    BackendGone,
    /// The device cannot start `queue` at a given ring position
    /// ([`VirtioDevice::set_queue_position`] not implemented, or the queue
    /// is not live).
    PositionUnsupported {
        /// The queue index.
        queue: u16,
    },
    /// The device cannot stop one queue while the others run
    /// ([`VirtioDevice::disable_queue`] not implemented): the transport
    /// raises `DEVICE_NEEDS_RESET` (§2.1.2) rather than let it go on
    /// using a queue the driver disabled.
    DisableUnsupported {
        /// The queue index.
        queue: u16,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::QueueNotReady { queue } => {
                write!(f, "queue {queue} was not enabled by the driver")
            }
            DeviceError::QueueNotInMemory { queue, err } => {
                write!(f, "queue {queue}: {err}")
            }
            DeviceError::Queue { queue, err } => write!(f, "queue {queue}: {err}"),
            DeviceError::NoSuchQueue { queue } => write!(f, "no queue {queue}"),
            DeviceError::NotActivated => write!(f, "device notified before activation"),
            DeviceError::BackendGone => write!(f, "the device's backend is gone"),
            DeviceError::PositionUnsupported { queue } => {
                write!(f, "queue {queue} cannot be started at a given position")
            }
            DeviceError::DisableUnsupported { queue } => {
                write!(f, "queue {queue} cannot be stopped on its own")
            }
        }
    }
}

impl core::error::Error for DeviceError {}

/// Copies the configuration space `config` from `offset` into `data`
/// (§2.5): bytes past its end read 0, whatever the offset.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// One queue as the driver configured it, handed to
/// [`VirtioDevice::activate`]: its layout, or `None` if the driver left it
/// disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The rings, if the queue is enabled.
    pub layout: Option<QueueLayout>,
}

impl QueueConfig {
    /// A device-side queue over this configuration with the negotiated
    /// ring features (§2.7.5.3 indirect descriptors, §2.7.10 event index).
    pub fn device_queue(&self, features: u64) -> Option<DeviceQueue> {
        let event_idx = features & TransportFeatures::RING_EVENT_IDX.bits() != 0;
        let indirect = features & TransportFeatures::RING_INDIRECT_DESC.bits() != 0;
        self.layout
            .map(|l| DeviceQueue::new(l, event_idx, indirect))
    }
}

/// What a device tells its transport after serving a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Chains returned to the driver.
    pub completed: u32,
    /// Whether the driver must get a used-buffer notification (§2.7.7,
    /// §2.7.10 decided).
    pub interrupt: bool,
    /// Whether the device changed its configuration space (e.g. a net
    /// device's link status, §5.1.4): the transport bumps the generation
    /// and raises the configuration change interrupt (§2.5.1, §4.2.2).
    pub config_changed: bool,
    /// The device stopped at its work budget ([`QUEUE_BUDGET`]) with chains
    /// still available: the transport calls the same entry point again
    /// soon, after serving its other work, without waiting for a guest
    /// notification (none may come: the device re-armed notifications,
    /// but the driver may have published before that).
    pub again: bool,
    /// The queues the notification is for, bit `n` for queue `n`, where
    /// the device says; 0 means every queue. A transport with one
    /// notification per queue (vhost-user's call eventfds) signals only
    /// those; one with a single interrupt (MMIO, §4.2.3.4) ignores it.
    pub interrupt_queues: u64,
}

impl Served {
    /// Notes that queue `queue`'s driver must be notified (§2.7.10).
    pub fn interrupt_queue(&mut self, queue: u16) {
        let bit = 1u64.checked_shl(u32::from(queue)).unwrap_or(0);
        self.merge(Served {
            interrupt: true,
            interrupt_queues: bit,
            ..Served::default()
        });
    }

    /// Notes a notification not tied to one queue: every queue's driver
    /// gets it.
    pub fn interrupt_all(&mut self) {
        self.merge(Served {
            interrupt: true,
            ..Served::default()
        });
    }

    /// Whether queue `queue`'s driver is to be notified.
    pub fn interrupts(&self, queue: usize) -> bool {
        self.interrupt
            && (self.interrupt_queues == 0
                || queue >= 64
                || self.interrupt_queues & (1 << queue) != 0)
    }

    /// Adds what another call served.
    pub fn merge(&mut self, other: Served) {
        self.completed = self.completed.saturating_add(other.completed);
        self.again |= other.again;
        self.config_changed |= other.config_changed;
        if other.interrupt {
            self.interrupt_queues = match (
                self.interrupt,
                self.interrupt_queues,
                other.interrupt_queues,
            ) {
                (false, _, theirs) => theirs,
                (true, 0, _) | (true, _, 0) => 0,
                (true, ours, theirs) => ours | theirs,
            };
            self.interrupt = true;
        }
    }
}

/// Most chains a device pops from one queue in one call (issue 16, finding
/// 2). A guest that keeps moving `avail.idx` (re-posting one head) could
/// otherwise keep a worker in one call forever, publishing nothing and
/// holding whatever lock the caller holds; Linux vhost fixed the same
/// class (CVE-2019-3900) with a weight per call. 256 keeps a queue depth of
/// 128 in one batch.
pub const QUEUE_BUDGET: u32 = 256;

/// The chains one call may still pop from one queue.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    left: u32,
    /// Leave notifications off when the ring is empty (the transport polls
    /// the ring, see [`VirtioDevice::set_polling`]).
    quiet: bool,
    /// The budget ran out with chains still available.
    pub exhausted: bool,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(QUEUE_BUDGET)
    }
}

impl Budget {
    /// A budget of `chains` pops.
    pub const fn new(chains: u32) -> Self {
        Budget {
            left: chains,
            quiet: false,
            exhausted: false,
        }
    }

    /// The default budget, for a transport that polls the ring when
    /// `polled`: then an empty ring or a spent budget leaves the driver's
    /// notifications off (with `VIRTIO_F_EVENT_IDX`, `avail_event` stays
    /// behind, so the driver does not notify, §2.7.10).
    pub const fn polled(polled: bool) -> Self {
        Budget {
            left: QUEUE_BUDGET,
            quiet: polled,
            exhausted: false,
        }
    }

    /// The same budget, at most `chains` pops.
    pub const fn at_most(mut self, chains: u32) -> Self {
        if chains < self.left {
            self.left = chains;
        }
        self
    }

    /// [`next_head`] within the budget. Once it is spent, notifications
    /// are enabled again (§2.7.10) and `None` is returned, with
    /// [`Budget::exhausted`] set if the ring still holds chains.
    pub fn next_head<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &mut DeviceQueue,
        mem: &M,
        malformed: &mut u64,
    ) -> Result<Option<u16>, QueueError> {
        if self.left == 0 {
            self.exhausted |= if self.quiet {
                queue.pending(mem)? > 0
            } else {
                queue.enable_notification(mem)?
            };
            return Ok(None);
        }
        let head = if self.quiet {
            pop_head(queue, mem, malformed)?
        } else {
            next_head(queue, mem, malformed)?
        };
        if head.is_some() {
            self.left -= 1;
        }
        Ok(head)
    }
}

/// A virtio device frontend.
pub trait VirtioDevice {
    /// The device type (§5).
    fn device_type(&self) -> DeviceType;

    /// The features offered (§2.2), transport bits included.
    fn device_features(&self) -> u64;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads the device configuration space (§2.5) at `offset`; bytes past
    /// its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space (§2.5). Most fields are
    /// read-only; the default ignores writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The size of the configuration space in bytes.
    fn config_len(&self) -> usize;

    /// Whether the device accepts the driver's (already validated)
    /// features at FEATURES_OK; `false` leaves FEATURES_OK clear (§2.2.2:
    /// the device MAY refuse a subset it cannot support). The default
    /// accepts any.
    fn features_acceptable(&self, features: u64) -> bool {
        let _ = features;
        true
    }

    /// The driver's features are final (FEATURES_OK accepted, §3.1.1
    /// step 5; vhost-user `SET_FEATURES`): configuration fields whose value
    /// depends on them take it now, before the driver reads them
    /// (§5.2.5.1 `writeback`). The default does nothing.
    fn features_ok(&mut self, features: u64) {
        let _ = features;
    }

    /// Goes live after DRIVER_OK (§3.1.1 step 8) with the negotiated
    /// features and the queues the driver configured.
    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError>;

    /// The driver notified `queue` (§2.7.13.4): serve what is available.
    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError>;

    /// The backend became ready (readable, writable, has entropy): resume
    /// pending work. The default has none.
    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        Ok(Served::default())
    }

    /// The transport starts (`true`) or stops (`false`) polling the
    /// available rings itself, calling
    /// [`queue_notify`](VirtioDevice::queue_notify) whenever it looks. While
    /// it polls, serving a queue leaves the driver's notifications off
    /// (§2.7.10), so a driver that keeps the ring fed does not notify;
    /// when it stops, the device turns notifications on again on every
    /// queue and serves what arrived meanwhile. `None` (the default): the
    /// device does not take part, and the transport does not poll its
    /// rings.
    fn set_polling(&mut self, on: bool) -> Option<Result<Served, DeviceError>> {
        let _ = on;
        None
    }

    /// Finishes every request the device handed to an asynchronous
    /// backend, waiting for it, and completes those chains: afterwards the
    /// device holds none a transport would have to rewind past
    /// ([`queue_position`](VirtioDevice::queue_position) is exact) and no
    /// backend touches guest memory. Transports call it before they
    /// report queue positions or change guest memory. The default has
    /// nothing to finish.
    fn quiesce(&mut self) -> Result<Served, DeviceError> {
        Ok(Served::default())
    }

    /// The driver reset the device (§2.4): drop queues and pending work.
    fn reset(&mut self);

    /// The driver disabled live `queue` (virtio-mmio `QueueReady` = 0;
    /// §4.2.2.1, device:mmio/mmio-device-register-layout#7: "The device
    /// MUST NOT access virtqueue contents when QueueReady is zero"): the device stops using it until it is reset,
    /// after waiting for any backend still moving bytes to or from its
    /// buffers, whose chains are dropped with the queue. What completes
    /// on other queues meanwhile is in the returned [`Served`]. Called
    /// only for an enabled queue; before activation there is nothing to
    /// stop.
    ///
    /// The default refuses with [`DeviceError::DisableUnsupported`].
    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        Err(DeviceError::DisableUnsupported { queue })
    }

    /// The device's counters by name (requests served, bytes, errors),
    /// for logs and reports; the default has none.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Where `queue` stands, for a transport that stops it and starts it
    /// again elsewhere (vhost-user `GET_VRING_BASE`, a snapshot): the next
    /// available index (§2.7.6) the device will take, rewound past every
    /// chain it popped but has not completed. Those chains are popped again
    /// after [`set_queue_position`](VirtioDevice::set_queue_position), so
    /// nothing is lost; this is sound only because a device keeps such
    /// chains at the tail (every chain popped before them is completed), so
    /// the used index equals the returned value once they are given back.
    ///
    /// `None` when the device does not know (the default) or the queue is
    /// not live.
    fn queue_position(&self, queue: u16) -> Option<u16> {
        let _ = queue;
        None
    }

    /// How far the device has read `queue`'s available ring: the index of
    /// the next entry it will take (§2.7.6), counting chains it took and
    /// still holds, for a watch that must know which chains the device
    /// took (unlike [`queue_position`](VirtioDevice::queue_position), which
    /// rewinds past held chains). `None` when the device does not say (the
    /// default) or the queue is not live.
    fn avail_taken(&self, queue: u16) -> Option<u16> {
        let _ = queue;
        None
    }

    /// Starts live `queue` at `next_avail` (vhost-user `SET_VRING_BASE`:
    /// "the next descriptor index to process"): the device takes the chain
    /// in available slot `next_avail` next and writes its first used
    /// element at used index `next_avail` (every earlier chain counts as
    /// completed). Called after [`activate`](VirtioDevice::activate) and
    /// before the queue's first notification; drops any chain the device
    /// still held for the queue (it is popped again from the ring).
    ///
    /// The default refuses with [`DeviceError::PositionUnsupported`].
    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let _ = next_avail;
        Err(DeviceError::PositionUnsupported { queue })
    }

    /// Makes a crypto session outside the device's control queue (§5.9.7.2
    /// done by the transport: vhost-user's `CREATE_CRYPTO_SESSION` from a
    /// frontend that keeps the control queue, QEMU's
    /// `cryptodev-vhost-user`) and returns its id. `None` (the default):
    /// the device has no sessions.
    fn create_session(
        &mut self,
        spec: &backends::crypto::SessionSpec<'_>,
    ) -> Option<Result<u64, backends::crypto::CryptoError>> {
        let _ = spec;
        None
    }

    /// Closes a session made by [`create_session`](Self::create_session)
    /// or on the control queue (vhost-user's `CLOSE_CRYPTO_SESSION`).
    /// `None` (the default): the device has no sessions.
    fn close_session(&mut self, id: u64) -> Option<Result<(), backends::crypto::CryptoError>> {
        let _ = id;
        None
    }
}

/// Takes the head of the next available chain for a device's serve loop.
///
/// When the ring is empty, driver notifications are re-enabled and the ring
/// checked once more (§2.7.10), so a buffer made available in between is
/// not missed; `None` means "empty, and a kick will come". A head the
/// driver wrote out of range is counted in `malformed` and returned as an
/// error like every other queue error: it names no chain that could be
/// returned, so the driver would wait for it forever; the device's cue to
/// set `DEVICE_NEEDS_RESET` (§2.1.2), as QEMU's modern devices do.
pub fn next_head<M: GuestMemory + ?Sized>(
    queue: &mut DeviceQueue,
    mem: &M,
    malformed: &mut u64,
) -> Result<Option<u16>, QueueError> {
    loop {
        if let Some(head) = pop_head(queue, mem, malformed)? {
            return Ok(Some(head));
        }
        if !queue.enable_notification(mem)? {
            return Ok(None);
        }
    }
}

/// Takes the head of the next available chain without touching
/// notifications; a malformed head is counted as in [`next_head`].
fn pop_head<M: GuestMemory + ?Sized>(
    queue: &mut DeviceQueue,
    mem: &M,
    malformed: &mut u64,
) -> Result<Option<u16>, QueueError> {
    queue
        .pop(mem)
        .map(|c| c.map(|c| c.head()))
        .inspect_err(|e| {
            if matches!(e, QueueError::Chain(_)) {
                *malformed += 1;
            }
        })
}

/// A boxed device is a device, so a caller that picks the device type at
/// run time (from options) can hand a `Box<dyn VirtioDevice + Send>` to a
/// transport.
impl<D: VirtioDevice + ?Sized> VirtioDevice for alloc::boxed::Box<D> {
    fn device_type(&self) -> DeviceType {
        (**self).device_type()
    }

    fn device_features(&self) -> u64 {
        (**self).device_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data);
    }

    fn config_len(&self) -> usize {
        (**self).config_len()
    }

    fn features_acceptable(&self, features: u64) -> bool {
        (**self).features_acceptable(features)
    }

    fn features_ok(&mut self, features: u64) {
        (**self).features_ok(features);
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        (**self).activate(features, queues)
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        (**self).queue_notify(queue)
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        (**self).backend_ready()
    }

    fn quiesce(&mut self) -> Result<Served, DeviceError> {
        (**self).quiesce()
    }

    fn set_polling(&mut self, on: bool) -> Option<Result<Served, DeviceError>> {
        (**self).set_polling(on)
    }

    fn reset(&mut self) {
        (**self).reset();
    }

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        (**self).disable_queue(queue)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        (**self).counters()
    }

    fn queue_position(&self, queue: u16) -> Option<u16> {
        (**self).queue_position(queue)
    }

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        (**self).avail_taken(queue)
    }

    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        (**self).set_queue_position(queue, next_avail)
    }

    fn create_session(
        &mut self,
        spec: &backends::crypto::SessionSpec<'_>,
    ) -> Option<Result<u64, backends::crypto::CryptoError>> {
        (**self).create_session(spec)
    }

    fn close_session(&mut self, id: u64) -> Option<Result<(), backends::crypto::CryptoError>> {
        (**self).close_session(id)
    }
}

#[cfg(test)]
mod served_tests {
    use super::Served;

    #[test]
    fn queue_notifications_merge_and_an_untied_one_covers_every_queue() {
        let mut s = Served::default();
        assert!(!s.interrupts(0));
        s.interrupt_queue(1);
        assert!(s.interrupts(1) && !s.interrupts(0));
        s.interrupt_queue(3);
        assert_eq!(s.interrupt_queues, 0b1010);
        let mut all = s;
        all.interrupt_all();
        assert!(all.interrupts(0) && all.interrupts(70));
        let mut merged = Served::default();
        merged.merge(s);
        assert_eq!(merged.interrupt_queues, 0b1010);
        merged.merge(Served {
            interrupt: true,
            ..Served::default()
        });
        assert!(merged.interrupts(2), "a device that names no queue: all");
        let mut high = Served::default();
        high.interrupt_queue(64);
        assert!(high.interrupts(0), "beyond the mask: all");
    }
}
