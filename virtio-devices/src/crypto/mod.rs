//! virtio-crypto, the crypto device (spec §5.9): data queues and one
//! control queue over a [`CryptoBackend`].
//!
//! Sessions are made and destroyed on the control queue (§5.9.7.2); data
//! requests (§5.9.7.3) run CIPHER, HASH, MAC, AEAD and AKCIPHER operations
//! under a session or, where the stateless mode of the service is
//! negotiated, under parameters the request carries. Algorithm chaining
//! and IPsec are not offered (NOTSUPP).
//!
//! Every request is answered with the spec's status and the device keeps
//! serving: an unknown opcode or algorithm is NOTSUPP, a session that was
//! not made (or of another service) INVSESS, lengths that do not add up or
//! a key of the wrong size ERR, an AEAD tag that does not match BADMSG, a
//! signature that does not verify KEY_REJECTED. A chain that cannot carry
//! a status (no writable byte for a data request; no room for the
//! session-create outcome, or no writable byte for a destroy) is
//! completed with used length 0 and counted in
//! [`CryptoStats::no_status`], as the block device does; a malformed
//! chain likewise, in [`CryptoStats::malformed`].
//!
//! A data request's result goes at the front of its writable part and the
//! status in its last byte (§5.9.7.3 `inhdr`); the bytes in between are
//! not touched (a driver may list a buffer twice there). The used length
//! is the bytes written: the result's length plus the status byte (for
//! AKCIPHER the driver learns the result's length from it, §5.9.7.7, as
//! Linux's driver does and QEMU answers). Nothing unauthenticated reaches
//! the driver: a failed AEAD decryption writes no result.

pub mod wire;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use backends::crypto::{CryptoBackend, CryptoError, SessionId, SessionSpec};
use virtio_core::GuestMemory;
use virtio_core::features::{CryptoFeatures, DeviceType, TransportFeatures};
use virtio_core::split::DeviceQueue;
use virtio_core::split::layout::QueueSize;

use crate::device::{Budget, DeviceError, QueueConfig, Served, VirtioDevice};
use wire::{Ctrl, Data, Mode, Service, Status};

/// Each queue's maximum size.
pub const QUEUE_SIZE: u16 = crate::device::DEFAULT_QUEUE_SIZE;

/// Buffers one request may span each way: as many as a chain in a
/// 1024-entry queue may have (§2.7.5.3.1 bounds a chain by the queue
/// size; QEMU's crypto queues have 1024). Linux's `virtio_crypto` gives
/// each scatterlist entry with every entry after it (`virtqueue_add_sgs`
/// walks each as a list), so a 64 KiB request of 16 pages each way is
/// some 275 descriptors. A longer chain gets ERR in its last writable
/// byte ([`CryptoStats::too_long`]).
const MAX_SEGS: usize = 1024;

/// Buffers the device tries first: a request within them is walked with
/// small cursors (those of [`MAX_SEGS`] are 16 KiB each way, and moving
/// them cost more than AES-CBC on 16 KiB, `bench --crypto`).
const FEW_SEGS: usize = 32;

/// The most bytes a control request may carry (an RSA key in DER is a
/// few KiB).
const CTRL_LIMIT: u64 = 64 << 10;

/// Room for a data request's small parts (header, fixed part, IV, key,
/// AAD) on top of `max_size` of payload.
const DATA_SLACK: u64 = 64 << 10;

/// Counters for the harness report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CryptoStats {
    /// Data requests completed with VIRTIO_CRYPTO_OK.
    pub ok: u64,
    /// Data requests completed with another status.
    pub failed: u64,
    /// Control requests completed.
    pub control: u64,
    /// Sessions made.
    pub sessions_created: u64,
    /// Sessions destroyed (by the driver or a reset).
    pub sessions_closed: u64,
    /// Chains completed with length 0 because they had no room for a
    /// status.
    pub no_status: u64,
    /// Chains completed with length 0 because they were malformed
    /// (§2.7.5) or their memory could not be read.
    pub malformed: u64,
    /// Data requests of more buffers than the device takes (`MAX_SEGS`),
    /// answered ERR in the last writable byte unread.
    pub too_long: u64,
}

/// The crypto device over backend `B` and guest memory `M`.
pub struct Crypto<B, M> {
    mem: M,
    data_queues: u16,
    max_sizes: Vec<u16>,
    config: [u8; wire::CONFIG_LEN],
    queues: Vec<Option<DeviceQueue>>,
    engine: Engine<B>,
}

/// What serves requests once their bytes are read: the backend, the
/// sessions and the counters (apart from guest memory, which the chain
/// being answered borrows).
struct Engine<B> {
    backend: B,
    max_size: u64,
    features: u64,
    /// The sessions this device's driver made, by id, with their service
    /// and whether the transport made them ([`VirtioDevice::create_session`]:
    /// they outlive a reset of the queues, the transport closes them).
    sessions: BTreeMap<u64, (Service, bool)>,
    stats: CryptoStats,
    /// A request's readable part, kept between requests.
    input: Vec<u8>,
    /// A request's result, kept between requests (only the bytes a
    /// backend wrote for the request are ever sent).
    output: Vec<u8>,
    /// Whether the request being served is a data request in session mode
    /// that parsed: it carries no key, so its bytes are left to be
    /// overwritten by the next request (they are in guest memory anyway;
    /// wiping 16 KiB twice a request cost a fifth of AES-CBC's throughput,
    /// `bench --crypto`). Every other request (control, stateless, or one
    /// that did not parse) is wiped after it, and both buffers' whole
    /// allocations on reset and drop.
    keyless: bool,
}

/// Zeroes `buf`'s whole allocation, bytes past its length included (a
/// longer request's tail stays there after a shorter one).
fn wipe(buf: &mut Vec<u8>) {
    buf.resize(buf.capacity(), 0);
    buf.fill(0);
}

/// `buf` at `len` bytes; only bytes it grows by are zeroed (every
/// operation writes the bytes it reports).
fn fit(buf: &mut Vec<u8>, len: usize) {
    buf.truncate(len);
    buf.resize(len, 0);
}

impl<B, M> core::fmt::Debug for Crypto<B, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Crypto")
            .field("data_queues", &self.data_queues)
            .field("sessions", &self.engine.sessions.len())
            .field("stats", &self.engine.stats)
            .finish()
    }
}

/// The status a backend error is reported with; NOSPC exists only with
/// REVISION_1 (§5.9.7.1).
fn status_of(e: CryptoError, rev1: bool) -> Status {
    match e {
        CryptoError::NotSupported(_) => Status::NotSupp,
        CryptoError::InvalidSession(_) => Status::InvSess,
        CryptoError::BadMessage => Status::BadMsg,
        CryptoError::KeyRejected => Status::KeyRejected,
        CryptoError::NoSpace if rev1 => Status::NoSpc,
        CryptoError::NoSpace | CryptoError::Invalid(_) => Status::Err,
    }
}

impl<B: CryptoBackend, M: GuestMemory> Crypto<B, M> {
    /// A device with `data_queues` data queues (at least 1) in front of
    /// `backend`, serving guest memory `mem`.
    pub fn new(backend: B, mem: M, data_queues: u16) -> Self {
        let data_queues = data_queues.max(1);
        let caps = backend.capabilities();
        let config = wire::config(&caps, data_queues);
        let mut max_sizes = alloc::vec![QUEUE_SIZE; usize::from(data_queues)];
        max_sizes.push(QUEUE_SIZE);
        Crypto {
            mem,
            data_queues,
            queues: (0..max_sizes.len()).map(|_| None).collect(),
            max_sizes,
            config,
            engine: Engine {
                backend,
                max_size: caps.max_request_size,
                features: 0,
                sessions: BTreeMap::new(),
                stats: CryptoStats::default(),
                input: Vec::new(),
                output: Vec::new(),
                keyless: false,
            },
        }
    }

    /// The same device with every queue's maximum size `size` (a power of
    /// two).
    pub fn with_queue_size(mut self, size: QueueSize) -> Self {
        for m in &mut self.max_sizes {
            *m = size.get();
        }
        self
    }

    /// The counters.
    pub fn stats(&self) -> CryptoStats {
        self.engine.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.engine.backend
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.engine.sessions.len()
    }

    fn serve(&mut self, q: u16) -> Result<Served, DeviceError> {
        let qi = usize::from(q);
        let Some(slot) = self.queues.get_mut(qi) else {
            return Err(DeviceError::NoSuchQueue { queue: q });
        };
        let Some(mut queue) = slot.take() else {
            // Not enabled, or stopped (§4.2.2.1): nothing to serve.
            return Ok(Served::default());
        };
        let r = self.serve_queue(q, &mut queue);
        self.queues[qi] = Some(queue);
        r
    }

    fn serve_queue(&mut self, q: u16, queue: &mut DeviceQueue) -> Result<Served, DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: q, err };
        let control = q == self.data_queues;
        let mut served = Served::default();
        let mut budget = Budget::default();
        while let Some(head) = budget
            .next_head(queue, &self.mem, &mut self.engine.stats.malformed)
            .map_err(qerr)?
        {
            let len = self.request(queue, head, control);
            queue.add_used(&self.mem, head, len).map_err(qerr)?;
            served.completed += 1;
        }
        served.again = budget.exhausted;
        queue.publish_used(&self.mem).map_err(qerr)?;
        if queue.needs_notification(&self.mem).map_err(qerr)? {
            served.interrupt_queue(q);
        }
        Ok(served)
    }

    /// Serves one chain; returns the used length.
    fn request(&mut self, queue: &DeviceQueue, head: u16, control: bool) -> u32 {
        use virtio_core::split::chain::ChainError::TooManySegments;
        let outcome = match self.request_in::<FEW_SEGS>(queue, head, control) {
            Err(TooManySegments { .. }) => self.request_in::<MAX_SEGS>(queue, head, control),
            other => other,
        };
        let stats = &mut self.engine.stats;
        match outcome {
            Ok(len) => len,
            Err(TooManySegments { .. }) if !control => too_long(&self.mem, queue, head, stats),
            Err(_) => {
                stats.malformed += 1;
                0
            }
        }
    }

    /// [`request`](Self::request) with cursors of `S` buffers: the used
    /// length, or why the chain could not be walked (nothing was read or
    /// written then).
    fn request_in<const S: usize>(
        &mut self,
        queue: &DeviceQueue,
        head: u16,
        control: bool,
    ) -> Result<u32, virtio_core::split::chain::ChainError> {
        let e = &mut self.engine;
        let (mut r, mut w) = queue.chain(&self.mem, head)?.reader_writer::<S>()?;
        let limit = if control {
            CTRL_LIMIT
        } else {
            e.max_size.saturating_add(DATA_SLACK)
        };
        let mut input = core::mem::take(&mut e.input);
        let len = if r.available() > limit {
            // Too much to read: answered without reading it.
            input.clear();
            if control {
                e.control(&[], &mut w, Some(Status::Err))
            } else {
                e.data(&[], &mut w, Some(Status::Err))
            }
        } else {
            input.resize(r.available() as usize, 0);
            match r.read_exact(&mut input) {
                Err(_) => {
                    e.stats.malformed += 1;
                    0
                }
                Ok(()) if control => e.control(&input, &mut w, None),
                Ok(()) => e.data(&input, &mut w, None),
            }
        };
        // Key material does not linger (see `Engine::keyless`).
        if !core::mem::take(&mut e.keyless) {
            input.fill(0);
        }
        e.input = input;
        Ok(len)
    }
}

/// A well-formed data request of more buffers than the device takes: its
/// status byte (the last writable byte, §5.9.7.3) gets ERR, so that the
/// driver does not take whatever its status buffer held for an answer;
/// nothing else is written. Returns the used length.
fn too_long<M: GuestMemory>(
    mem: &M,
    queue: &DeviceQueue,
    head: u16,
    stats: &mut CryptoStats,
) -> u32 {
    let Ok(chain) = queue.chain(mem, head) else {
        stats.malformed += 1;
        return 0;
    };
    let mut last = None;
    for d in chain {
        match d {
            Ok(d) if d.is_write_only() && !d.is_empty() => last = Some(d),
            Ok(_) => {}
            Err(_) => {
                stats.malformed += 1;
                return 0;
            }
        }
    }
    let at = last.and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1));
    match at.map(|a| mem.write(a, &[Status::Err as u8])) {
        Some(Ok(())) => {
            stats.too_long += 1;
            stats.failed += 1;
            1
        }
        _ => {
            stats.no_status += 1;
            0
        }
    }
}

impl<B: CryptoBackend> Engine<B> {
    fn crypto_features(&self) -> CryptoFeatures {
        CryptoFeatures::from_bits_truncate(self.features)
    }

    /// Closes every session the driver made on the control queue (a
    /// reset); the transport's stay until it closes them.
    fn close_sessions(&mut self) {
        let driver: alloc::vec::Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, (_, transport))| !transport)
            .map(|(id, _)| *id)
            .collect();
        for id in driver {
            self.sessions.remove(&id);
            if self.backend.close_session(SessionId(id)).is_ok() {
                self.stats.sessions_closed += 1;
            }
        }
    }

    /// A control request (§5.9.7.2): `req` is its readable part; `forced`
    /// a status decided before parsing.
    fn control<W: Outcome>(&mut self, req: &[u8], w: &mut W, forced: Option<Status>) -> u32 {
        self.stats.control += 1;
        let rev1 = self.crypto_features().contains(CryptoFeatures::REVISION_1);
        let destroy = matches!(
            wire::ctrl_opcode(req),
            Some(
                wire::ctrl::CIPHER_DESTROY
                    | wire::ctrl::HASH_DESTROY
                    | wire::ctrl::MAC_DESTROY
                    | wire::ctrl::AEAD_DESTROY
                    | wire::ctrl::AKCIPHER_DESTROY
            )
        );
        let parsed = match forced {
            Some(s) => Err(s),
            None => wire::parse_ctrl(self.crypto_features(), req),
        };
        let (status, id) = match parsed {
            Ok(Ctrl::Create { service, spec }) => match self.backend.create_session(&spec) {
                Ok(id) => {
                    self.sessions.insert(id.0, (service, false));
                    self.stats.sessions_created += 1;
                    (Status::Ok, id.0)
                }
                Err(e) => (status_of(e, rev1), 0),
            },
            Ok(Ctrl::Destroy { service, id }) => {
                // §5.9.7.2.1: ERR for any failure, a session of another
                // service included.
                if self.sessions.get(&id).map(|s| s.0) == Some(service)
                    && self.backend.close_session(SessionId(id)).is_ok()
                {
                    self.sessions.remove(&id);
                    self.stats.sessions_closed += 1;
                    (Status::Ok, 0)
                } else {
                    (Status::Err, 0)
                }
            }
            Err(s) => (s, 0),
        };
        if destroy {
            // struct virtio_crypto_destroy_session_input { u8 status; }
            if w.room() < 1 || w.put(&[status as u8]).is_err() {
                self.stats.no_status += 1;
                return 0;
            }
            1
        } else {
            // struct virtio_crypto_create_session_input.
            let mut out = [0u8; wire::SESSION_INPUT];
            out[..8].copy_from_slice(&id.to_le_bytes());
            out[8..12].copy_from_slice(&u32::from(status as u8).to_le_bytes());
            if w.room() < wire::SESSION_INPUT as u64 || w.put(&out).is_err() {
                if status == Status::Ok {
                    // The driver cannot learn the id: do not keep it.
                    self.sessions.remove(&id);
                    let _ = self.backend.close_session(SessionId(id));
                    self.stats.sessions_closed += 1;
                }
                self.stats.no_status += 1;
                return 0;
            }
            wire::SESSION_INPUT as u32
        }
    }

    /// A data request (§5.9.7.3): `req` is its readable part; `forced` a
    /// status decided before parsing.
    fn data<W: Outcome>(&mut self, req: &[u8], w: &mut W, forced: Option<Status>) -> u32 {
        let total = w.room();
        if total == 0 {
            self.stats.no_status += 1;
            return 0;
        }
        let room = total - 1;
        let mut output = core::mem::take(&mut self.output);
        let result = match forced {
            Some(s) => Err(s),
            None => self.run(req, room, &mut output),
        };
        let (status, n) = match result {
            Ok(n) => (Status::Ok, n),
            Err(s) => (s, 0),
        };
        if status == Status::Ok {
            self.stats.ok += 1;
        } else {
            self.stats.failed += 1;
        }
        // The bytes between the result and the status are left alone: a
        // driver may give the same buffer twice (Linux's virtio_crypto lists
        // each scatterlist entry with the entries after it, so the tail of
        // a split destination comes again), and writing there would
        // overwrite the result.
        // A backend never claims more than it was given room for.
        let n = n.min(output.len());
        let written = w
            .put(&output[..n])
            .and_then(|()| w.skip_to_last())
            .and_then(|()| w.put(&[status as u8]));
        self.output = output;
        if written.is_err() {
            // The memory went away under the chain: nothing reliable was
            // written.
            self.stats.malformed += 1;
            return 0;
        }
        // The bytes written: the result and the status (for AKCIPHER the
        // driver learns the result's length from it, see the module docs).
        n as u32 + 1
    }

    /// Parses and runs a data request with `room` bytes for its result;
    /// returns the result's length in `output`.
    fn run(&mut self, req: &[u8], room: u64, output: &mut Vec<u8>) -> Result<usize, Status> {
        let features = self.crypto_features();
        let rev1 = features.contains(CryptoFeatures::REVISION_1);
        let d = wire::parse_data(features, req, self.max_size)?;
        let (id, temporary) = match *d.mode() {
            Mode::Session(id) => {
                self.keyless = true;
                if self.sessions.get(&id).map(|s| s.0) != Some(d.service()) {
                    return Err(Status::InvSess);
                }
                (SessionId(id), false)
            }
            Mode::Stateless(spec) => (
                self.backend
                    .create_session(&spec)
                    .map_err(|e| status_of(e, rev1))?,
                true,
            ),
        };
        let r = self.operate(&d, id, room, output);
        if temporary {
            let _ = self.backend.close_session(id);
        }
        r.map_err(|e| status_of(e, rev1))
    }

    fn operate(
        &mut self,
        d: &Data<'_>,
        id: SessionId,
        room: u64,
        output: &mut Vec<u8>,
    ) -> Result<usize, CryptoError> {
        let fits = |n: u32| {
            if u64::from(n) > room {
                Err(CryptoError::Invalid(
                    "the writable part is shorter than the result",
                ))
            } else {
                Ok(n as usize)
            }
        };
        match *d {
            Data::Cipher {
                direction,
                iv,
                src,
                dst_len,
                ..
            } => {
                let n = fits(dst_len)?;
                if n != src.len() {
                    return Err(CryptoError::Invalid(
                        "the destination is not as long as the source",
                    ));
                }
                fit(output, n);
                self.backend.cipher(id, direction, iv, src, output)?;
                Ok(n)
            }
            Data::Digest {
                src, result_len, ..
            } => {
                let n = fits(result_len)?;
                fit(output, n.max(64));
                let k = self.backend.digest(id, src, output)?;
                if k > n {
                    return Err(CryptoError::Invalid(
                        "the result is shorter than the session's digest",
                    ));
                }
                Ok(k)
            }
            Data::Aead {
                direction,
                iv,
                aad,
                src,
                dst_len,
                ..
            } => {
                let n = fits(dst_len)?;
                fit(output, n);
                let k = self.backend.aead(id, direction, iv, aad, src, output)?;
                Ok(k)
            }
            Data::Akcipher {
                op, src, dst_len, ..
            } => {
                let n = fits(dst_len)?;
                fit(output, n);
                let k = self.backend.akcipher(id, op, src, output)?;
                Ok(k)
            }
            Data::Verify {
                signature, digest, ..
            } => {
                self.backend.verify(id, signature, digest)?;
                Ok(0)
            }
        }
    }
}

/// Where a request's outcome is written: the chain's writable part.
trait Outcome {
    /// Bytes left to write.
    fn room(&self) -> u64;
    /// Writes `b` next.
    fn put(&mut self, b: &[u8]) -> Result<(), ()>;
    /// Moves to the last byte without writing what it passes.
    fn skip_to_last(&mut self) -> Result<(), ()>;
}

impl<M: GuestMemory + ?Sized, const S: usize> Outcome
    for virtio_core::split::chain::Writer<'_, M, S>
{
    fn room(&self) -> u64 {
        self.available()
    }
    fn put(&mut self, b: &[u8]) -> Result<(), ()> {
        self.write_all(b).map_err(drop)
    }
    fn skip_to_last(&mut self) -> Result<(), ()> {
        let n = self.available().saturating_sub(1);
        self.skip(n).map_err(drop)
    }
}

impl<B: CryptoBackend, M: GuestMemory> VirtioDevice for Crypto<B, M> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Crypto
    }

    fn device_features(&self) -> u64 {
        (TransportFeatures::VERSION_1
            | TransportFeatures::RING_INDIRECT_DESC
            | TransportFeatures::RING_EVENT_IDX)
            .bits()
            | CryptoFeatures::all().bits()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config, offset, data);
    }

    fn config_len(&self) -> usize {
        wire::CONFIG_LEN
    }

    fn features_ok(&mut self, features: u64) {
        self.engine.features = features;
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        self.engine.features = features;
        // §5.9.5.1: the driver configures every virtqueue, but a data
        // queue it leaves off is simply not served.
        let mut live: Vec<Option<DeviceQueue>> = Vec::with_capacity(self.max_sizes.len());
        for (i, c) in queues.iter().enumerate().take(self.max_sizes.len()) {
            let q = c.device_queue(features);
            if let Some(q) = &q {
                q.layout().check_memory(&self.mem).map_err(|err| {
                    DeviceError::QueueNotInMemory {
                        queue: i as u16,
                        err,
                    }
                })?;
            }
            live.push(q);
        }
        live.resize_with(self.max_sizes.len(), || None);
        // Without the control queue sessions come from the transport
        // (`create_session`: a vhost-user frontend that keeps it); some
        // queue must be there.
        if live.iter().all(Option::is_none) {
            return Err(DeviceError::QueueNotReady { queue: 0 });
        }
        self.queues = live;
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        self.serve(queue)
    }

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        // Requests complete inside the notification: nothing is held.
        if let Some(q) = self.queues.get_mut(usize::from(queue)) {
            *q = None;
        }
        Ok(Served::default())
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            *q = None;
        }
        self.engine.close_sessions();
        self.engine.features = 0;
        wipe(&mut self.engine.input);
        wipe(&mut self.engine.output);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.engine.stats;
        alloc::vec![
            ("ok", s.ok),
            ("failed", s.failed),
            ("control", s.control),
            ("sessions_created", s.sessions_created),
            ("sessions_closed", s.sessions_closed),
            ("no_status", s.no_status),
            ("malformed", s.malformed),
            ("too_long", s.too_long),
        ]
    }

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        Some(self.queues.get(usize::from(queue))?.as_ref()?.next_avail())
    }

    /// Every request completes inside its notification, so the position
    /// is where the device will read next.
    fn queue_position(&self, queue: u16) -> Option<u16> {
        self.avail_taken(queue)
    }

    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::PositionUnsupported { queue })?;
        q.set_position(next_avail, next_avail);
        Ok(())
    }

    fn create_session(&mut self, spec: &SessionSpec<'_>) -> Option<Result<u64, CryptoError>> {
        let e = &mut self.engine;
        Some(e.backend.create_session(spec).map(|id| {
            e.sessions.insert(id.0, (service_of(spec), true));
            e.stats.sessions_created += 1;
            id.0
        }))
    }

    fn close_session(&mut self, id: u64) -> Option<Result<(), CryptoError>> {
        let e = &mut self.engine;
        if e.sessions.remove(&id).is_none() {
            return Some(Err(CryptoError::InvalidSession(SessionId(id))));
        }
        e.stats.sessions_closed += 1;
        Some(e.backend.close_session(SessionId(id)))
    }
}

/// The service a session's parameters are for.
fn service_of(spec: &SessionSpec<'_>) -> Service {
    match spec {
        SessionSpec::Cipher { .. } => Service::Cipher,
        SessionSpec::Hash { .. } => Service::Hash,
        SessionSpec::Mac { .. } => Service::Mac,
        SessionSpec::Aead { .. } => Service::Aead,
        SessionSpec::Rsa { .. } => Service::Akcipher,
    }
}

impl<B> Drop for Engine<B> {
    fn drop(&mut self) {
        wipe(&mut self.input);
        wipe(&mut self.output);
    }
}
