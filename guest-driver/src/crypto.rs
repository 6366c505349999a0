//! A driver for the virtio crypto device (§5.9): sessions on the control
//! queue, CIPHER, HASH, MAC, AEAD and AKCIPHER requests on the data
//! queues, in the legacy layout or, when the device offers
//! `VIRTIO_CRYPTO_F_REVISION_1`, in revision 1's with the stateless modes
//! it offers.
//!
//! Requests are built in place in a DMA slot: the device-readable part
//! (header, fixed part, variable part) then the device-writable room for
//! the result and the status byte. Several requests can be in flight
//! ([`Crypto::submit`], [`Crypto::kick`], [`Crypto::poll`]); [`Crypto::run`]
//! does one and waits.
//!
//! It trusts nothing the device writes: a status the spec does not define,
//! a used length of 0 (no status) or longer than the room given, an
//! AKCIPHER result longer than asked, a session-create answer shorter than
//! its 16 bytes are errors. §5.9.4: it reads `status` and refuses a device
//! without `VIRTIO_CRYPTO_S_HW_READY`; §5.9.5: it sets up every data queue
//! and the control queue.

use core::fmt;

use virtio_core::crypto::{
    CTRL_FLF_LEGACY, CTRL_HEADER, DATA_FLF_LEGACY, DATA_HEADER, FLAG_SESSION_MODE, OP_DECRYPT,
    OP_ENCRYPT, SESSION_INPUT, SYM_OP_CIPHER, config, data,
};
pub use virtio_core::crypto::{Service, Status, algo, rsa};
use virtio_core::features::{CryptoFeatures, DeviceType, TransportFeatures};
use virtio_core::mmio::driver::RegisterAccess;

use crate::error::Error;
use crate::hal::Hal;
use crate::queue::DmaQueue;
use crate::transport::{Completion, Transport};
use crate::wait::Wait;

/// Descriptors per data queue (each request takes two).
pub const QUEUE_SIZE: usize = 32;
/// Descriptors of the control queue.
const CTRL_SIZE: usize = 4;
/// Requests in flight per data queue.
pub const DEPTH: usize = QUEUE_SIZE / 2;
/// Data queues this driver sets up at most; a device with more is refused
/// (§5.9.5.1: the driver MUST set up all virtqueues).
pub const MAX_DATA_QUEUES: usize = 4;
/// Bytes of a control slot: a request (an RSA key of 4096 bits in DER
/// included) and its answer.
const CTRL_SLOT: u32 = 8192;

/// Which way a cipher runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Plaintext to ciphertext.
    Encrypt,
    /// Ciphertext to plaintext.
    Decrypt,
}

impl Direction {
    fn op(self) -> u32 {
        match self {
            Direction::Encrypt => OP_ENCRYPT,
            Direction::Decrypt => OP_DECRYPT,
        }
    }
}

/// What a session is made of, in the spec's numbers ([`algo`], [`rsa`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionParams<'a> {
    /// A cipher (`VIRTIO_CRYPTO_CIPHER_*`).
    Cipher {
        /// The algorithm.
        algo: u32,
        /// The key.
        key: &'a [u8],
        /// The direction.
        direction: Direction,
    },
    /// A hash (`VIRTIO_CRYPTO_HASH_*`).
    Hash {
        /// The algorithm.
        algo: u32,
        /// Result bytes.
        result_len: u32,
    },
    /// A MAC (`VIRTIO_CRYPTO_MAC_*`).
    Mac {
        /// The algorithm.
        algo: u32,
        /// The key.
        key: &'a [u8],
        /// Result bytes.
        result_len: u32,
    },
    /// An AEAD (`VIRTIO_CRYPTO_AEAD_*`).
    Aead {
        /// The algorithm.
        algo: u32,
        /// The key.
        key: &'a [u8],
        /// Tag bytes.
        tag_len: u32,
        /// AAD bytes.
        aad_len: u32,
        /// The direction.
        direction: Direction,
    },
    /// RSA (`VIRTIO_CRYPTO_AKCIPHER_RSA`).
    Rsa {
        /// [`rsa::KEY_TYPE_PUBLIC`] or [`rsa::KEY_TYPE_PRIVATE`].
        key_type: u32,
        /// The key, PKCS#1 DER.
        key: &'a [u8],
        /// [`rsa::RAW_PADDING`] or [`rsa::PKCS1_PADDING`].
        padding: u32,
        /// `rsa::SHA*` or [`rsa::NO_HASH`].
        hash: u32,
    },
}

impl SessionParams<'_> {
    /// The service.
    pub fn service(&self) -> Service {
        match self {
            SessionParams::Cipher { .. } => Service::Cipher,
            SessionParams::Hash { .. } => Service::Hash,
            SessionParams::Mac { .. } => Service::Mac,
            SessionParams::Aead { .. } => Service::Aead,
            SessionParams::Rsa { .. } => Service::Akcipher,
        }
    }

    fn algo(&self) -> u32 {
        match *self {
            SessionParams::Cipher { algo, .. }
            | SessionParams::Hash { algo, .. }
            | SessionParams::Mac { algo, .. }
            | SessionParams::Aead { algo, .. } => algo,
            SessionParams::Rsa { .. } => algo::AKCIPHER_RSA,
        }
    }
}

/// An asymmetric operation with a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AkOp {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Sign.
    Sign,
}

/// A data request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// CIPHER_ENCRYPT or CIPHER_DECRYPT: the result is as long as `src`.
    Cipher {
        /// Which way.
        direction: Direction,
        /// The IV.
        iv: &'a [u8],
        /// The input.
        src: &'a [u8],
    },
    /// HASH.
    Hash {
        /// The input.
        src: &'a [u8],
        /// Result bytes.
        result_len: u32,
    },
    /// MAC.
    Mac {
        /// The input.
        src: &'a [u8],
        /// Result bytes.
        result_len: u32,
    },
    /// AEAD_ENCRYPT or AEAD_DECRYPT.
    Aead {
        /// Which way.
        direction: Direction,
        /// The IV.
        iv: &'a [u8],
        /// Additional authenticated data.
        aad: &'a [u8],
        /// The input (with the tag when decrypting).
        src: &'a [u8],
        /// Room for the result (with the tag when encrypting).
        dst_len: u32,
    },
    /// AKCIPHER_ENCRYPT, _DECRYPT or _SIGN.
    Akcipher {
        /// Which.
        op: AkOp,
        /// The input.
        src: &'a [u8],
        /// Room for the result.
        dst_len: u32,
    },
    /// AKCIPHER_VERIFY.
    Verify {
        /// The signature.
        signature: &'a [u8],
        /// The signed digest.
        digest: &'a [u8],
    },
}

impl Op<'_> {
    /// The service.
    pub fn service(&self) -> Service {
        match self {
            Op::Cipher { .. } => Service::Cipher,
            Op::Hash { .. } => Service::Hash,
            Op::Mac { .. } => Service::Mac,
            Op::Aead { .. } => Service::Aead,
            Op::Akcipher { .. } | Op::Verify { .. } => Service::Akcipher,
        }
    }

    /// Bytes of result room before the status.
    fn room(&self) -> u32 {
        match *self {
            Op::Cipher { src, .. } => src.len() as u32,
            Op::Hash { result_len, .. } | Op::Mac { result_len, .. } => result_len,
            Op::Aead { dst_len, .. } | Op::Akcipher { dst_len, .. } => dst_len,
            Op::Verify { .. } => 0,
        }
    }

    fn opcode(&self) -> u32 {
        match *self {
            Op::Cipher {
                direction: Direction::Encrypt,
                ..
            } => data::CIPHER_ENCRYPT,
            Op::Cipher { .. } => data::CIPHER_DECRYPT,
            Op::Hash { .. } => data::HASH,
            Op::Mac { .. } => data::MAC,
            Op::Aead {
                direction: Direction::Encrypt,
                ..
            } => data::AEAD_ENCRYPT,
            Op::Aead { .. } => data::AEAD_DECRYPT,
            Op::Akcipher {
                op: AkOp::Encrypt, ..
            } => data::AKCIPHER_ENCRYPT,
            Op::Akcipher {
                op: AkOp::Decrypt, ..
            } => data::AKCIPHER_DECRYPT,
            Op::Akcipher { op: AkOp::Sign, .. } => data::AKCIPHER_SIGN,
            Op::Verify { .. } => data::AKCIPHER_VERIFY,
        }
    }
}

/// Under what a data request runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode<'a> {
    /// A session made with [`Crypto::create_session`].
    Session(u64),
    /// Parameters carried in the request (the service's stateless mode).
    Stateless(SessionParams<'a>),
}

/// The configuration (§5.9.4) as read at initialisation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CryptoInfo {
    /// Data queues the device has.
    pub max_dataqueues: u32,
    /// `crypto_services` bits ([`Service`]).
    pub services: u32,
    /// CIPHER algorithm bits.
    pub cipher: u64,
    /// HASH algorithm bits.
    pub hash: u32,
    /// MAC algorithm bits.
    pub mac: u64,
    /// AEAD algorithm bits.
    pub aead: u32,
    /// AKCIPHER algorithm bits.
    pub akcipher: u32,
    /// The longest cipher key.
    pub max_cipher_key_len: u32,
    /// The longest MAC key.
    pub max_auth_key_len: u32,
    /// The largest variable-length parameters of one request.
    pub max_size: u64,
}

impl CryptoInfo {
    /// Whether `service` is offered.
    pub fn offers(&self, service: Service) -> bool {
        self.services & (1 << service as u32) != 0
    }
}

/// Why a crypto operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoError {
    /// The transport, a queue or a wait failed.
    Driver(Error),
    /// `status` does not have `VIRTIO_CRYPTO_S_HW_READY` (§5.9.4).
    NotReady,
    /// The device has more data queues than this driver sets up.
    TooManyQueues(u32),
    /// The device answered with this status.
    Status(Status),
    /// The device wrote a status the spec does not define.
    UnknownStatus(u8),
    /// The device's used length does not fit the request (0: no status).
    BadLength {
        /// The used length.
        len: u32,
        /// The room given.
        room: u32,
    },
    /// The request does not fit a slot, or exceeds the device's limits.
    TooLarge {
        /// Bytes needed.
        need: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// The request is not possible here: a stateless mode not negotiated,
    /// parameters of another service, a queue that does not exist.
    Unsupported(&'static str),
    /// Every slot of the queue is in flight.
    Busy,
}

impl From<Error> for CryptoError {
    fn from(e: Error) -> Self {
        CryptoError::Driver(e)
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::Driver(e) => write!(f, "{e}"),
            CryptoError::NotReady => f.write_str(
                "the crypto device is not ready (VIRTIO_CRYPTO_S_HW_READY clear, §5.9.4)",
            ),
            CryptoError::TooManyQueues(n) => write!(
                f,
                "the device has {n} data queues; this driver sets up at most {MAX_DATA_QUEUES}"
            ),
            CryptoError::Status(s) => write!(f, "the device answered {s:?} (§5.9.7.1)"),
            CryptoError::UnknownStatus(b) => {
                write!(
                    f,
                    "the device wrote status {b}, which §5.9.7.1 does not define"
                )
            }
            CryptoError::BadLength { len, room } => write!(
                f,
                "the device used {len} bytes of a {room}-byte answer (§2.7.8)"
            ),
            CryptoError::TooLarge { need, limit } => {
                write!(f, "the request needs {need} bytes; at most {limit} fit")
            }
            CryptoError::Unsupported(why) => write!(f, "not possible: {why}"),
            CryptoError::Busy => f.write_str("every request slot is in flight"),
        }
    }
}

impl core::error::Error for CryptoError {}

/// Options of [`Crypto::new`].
#[derive(Clone, Copy, Debug)]
pub struct CryptoOptions {
    /// Polling or interrupt-driven completion.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered.
    pub event_idx: bool,
    /// Negotiate `VIRTIO_CRYPTO_F_REVISION_1` and the stateless modes
    /// when offered.
    pub revision_1: bool,
    /// Bytes per data request slot: its readable part and its answer.
    pub slot_size: u32,
}

impl Default for CryptoOptions {
    fn default() -> Self {
        CryptoOptions {
            completion: Completion::Polling,
            event_idx: true,
            revision_1: true,
            slot_size: 8192,
        }
    }
}

/// A request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    queue: u16,
    slot: u16,
}

/// A completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The request.
    pub token: Token,
    /// The device's answer.
    pub status: Status,
    /// Result bytes (for AKCIPHER, as the device said; otherwise the room
    /// asked for).
    pub result_len: usize,
}

/// What the driver remembers of a slot in flight.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    readable: u32,
    room: u32,
    done: Option<(Status, u32)>,
}

/// Little-endian fields written in order into a request.
struct Enc<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Enc<'_> {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // The caller sized the buffer for what it writes.
        if let Some(d) = self.buf.get_mut(self.at..self.at + b.len()) {
            d.copy_from_slice(b);
        }
        self.at += b.len();
        self
    }
    /// Zeros up to `len` bytes from `start`.
    fn pad(&mut self, start: usize, len: usize) -> &mut Self {
        let end = start + len;
        if self.at < end {
            let n = end - self.at;
            if let Some(d) = self.buf.get_mut(self.at..end) {
                d.fill(0);
            }
            self.at += n;
        }
        self
    }
}

/// The length of a buffer as the request's `le32`.
fn len32(b: &[u8]) -> u32 {
    b.len() as u32
}

/// A driver for a virtio crypto device (§5.9) on virtio-mmio.
pub struct Crypto<H: Hal, R: RegisterAccess> {
    hal: H,
    transport: Transport<R>,
    data: heapless::Vec<DmaQueue<QUEUE_SIZE>, MAX_DATA_QUEUES>,
    pending: heapless::Vec<[Pending; QUEUE_SIZE], MAX_DATA_QUEUES>,
    ctrl: Option<DmaQueue<CTRL_SIZE>>,
    info: CryptoInfo,
    options: CryptoOptions,
    features: u64,
}

impl<H: Hal, R: RegisterAccess> fmt::Debug for Crypto<H, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("features", &self.features)
            .field("info", &self.info)
            .field("data_queues", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, R: RegisterAccess> Crypto<H, R> {
    /// Probes `regs` for a crypto device and initialises it (§3.1.1,
    /// §5.9.5): features, the configuration read (`status` must say
    /// HW_READY), every data queue and the control queue set up. On
    /// failure the device is left FAILED or reset and the memory given
    /// back.
    pub fn new(hal: H, regs: R, options: CryptoOptions) -> Result<Self, CryptoError> {
        let transport = Transport::probe(regs, DeviceType::Crypto)?;
        let mut c = Crypto {
            hal,
            transport,
            data: heapless::Vec::new(),
            pending: heapless::Vec::new(),
            ctrl: None,
            info: CryptoInfo::default(),
            options,
            features: 0,
        };
        if let Err(e) = c.init() {
            c.transport.fail();
            return Err(e);
        }
        Ok(c)
    }

    fn init(&mut self) -> Result<(), CryptoError> {
        let mut wanted = 0;
        if self.options.event_idx {
            wanted |= TransportFeatures::RING_EVENT_IDX.bits();
        }
        if self.options.revision_1 {
            wanted |= CryptoFeatures::all().bits();
        }
        self.features = self.transport.begin_init(wanted)?;
        self.info = self.read_info()?;
        let n = self.info.max_dataqueues;
        if n == 0 || n as usize > MAX_DATA_QUEUES {
            return Err(CryptoError::TooManyQueues(n));
        }
        for q in 0..n as u16 {
            let queue = DmaQueue::new(
                &self.hal,
                &mut self.transport,
                q,
                self.options.slot_size.max(64),
                self.options.completion,
            )?;
            // Within MAX_DATA_QUEUES, checked above.
            let _ = self.data.push(queue);
            let _ = self.pending.push([Pending::default(); QUEUE_SIZE]);
        }
        let ctrl = DmaQueue::new(
            &self.hal,
            &mut self.transport,
            n as u16,
            CTRL_SLOT,
            self.options.completion,
        )?;
        self.ctrl = Some(ctrl);
        self.transport.finish_init()?;
        Ok(())
    }

    /// Reads the configuration (§5.9.4): `status` first (HW_READY), then
    /// the fields the services say.
    fn read_info(&self) -> Result<CryptoInfo, CryptoError> {
        let d = self.transport.driver();
        let r32 = |off| {
            d.read_config_u32(off)
                .map_err(|e| CryptoError::Driver(e.into()))
        };
        if r32(config::STATUS)? & config::S_HW_READY == 0 {
            return Err(CryptoError::NotReady);
        }
        let services = r32(config::CRYPTO_SERVICES)?;
        let has = |s: Service| services & (1 << s as u32) != 0;
        let lo_hi = |lo, hi| -> Result<u64, CryptoError> {
            Ok(u64::from(r32(lo)?) | u64::from(r32(hi)?) << 32)
        };
        Ok(CryptoInfo {
            max_dataqueues: r32(config::MAX_DATAQUEUES)?,
            services,
            cipher: if has(Service::Cipher) {
                lo_hi(config::CIPHER_ALGO_L, config::CIPHER_ALGO_H)?
            } else {
                0
            },
            hash: if has(Service::Hash) {
                r32(config::HASH_ALGO)?
            } else {
                0
            },
            mac: if has(Service::Mac) {
                lo_hi(config::MAC_ALGO_L, config::MAC_ALGO_H)?
            } else {
                0
            },
            aead: if has(Service::Aead) {
                r32(config::AEAD_ALGO)?
            } else {
                0
            },
            akcipher: if has(Service::Akcipher) {
                r32(config::AKCIPHER_ALGO)?
            } else {
                0
            },
            max_cipher_key_len: r32(config::MAX_CIPHER_KEY_LEN)?,
            max_auth_key_len: r32(config::MAX_AUTH_KEY_LEN)?,
            max_size: d
                .read_config_u64(config::MAX_SIZE)
                .map_err(|e| CryptoError::Driver(e.into()))?,
        })
    }

    /// The configuration read at initialisation.
    pub fn info(&self) -> &CryptoInfo {
        &self.info
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The transport, for status and configuration.
    pub fn transport(&self) -> &Transport<R> {
        &self.transport
    }

    /// Data queues set up.
    pub fn data_queues(&self) -> u16 {
        self.data.len() as u16
    }

    fn rev1(&self) -> bool {
        self.features & CryptoFeatures::REVISION_1.bits() != 0
    }

    /// Whether `service`'s stateless mode was negotiated.
    pub fn stateless(&self, service: Service) -> bool {
        self.rev1() && self.features & service.stateless_feature().bits() != 0
    }

    /// Makes a session (§5.9.7.2) and returns its id.
    pub fn create_session(
        &mut self,
        params: &SessionParams<'_>,
        wait: &mut impl Wait,
    ) -> Result<u64, CryptoError> {
        let rev1 = self.rev1();
        let (flf_own, vlf): (usize, &[u8]) = match *params {
            SessionParams::Cipher { key, .. } => (56, key),
            SessionParams::Hash { .. } => (8, &[]),
            SessionParams::Mac { key, .. } => (16, key),
            SessionParams::Aead { key, .. } => (24, key),
            SessionParams::Rsa { key, .. } => (56, key),
        };
        let flf = if rev1 { flf_own } else { CTRL_FLF_LEGACY };
        let readable = CTRL_HEADER + flf + vlf.len();
        let opcode = params.service().create_opcode();
        let answer = self.control(readable, SESSION_INPUT as u32, wait, |b| {
            let mut e = Enc { buf: b, at: 0 };
            e.u32(opcode).u32(params.algo()).u32(0).u32(0);
            let start = e.at;
            match *params {
                SessionParams::Cipher {
                    algo,
                    key,
                    direction,
                } => {
                    e.u32(algo).u32(len32(key)).u32(direction.op()).u32(0);
                    e.pad(start, 48).u32(SYM_OP_CIPHER).u32(0);
                }
                SessionParams::Hash { algo, result_len } => {
                    e.u32(algo).u32(result_len);
                }
                SessionParams::Mac {
                    algo,
                    key,
                    result_len,
                } => {
                    e.u32(algo).u32(result_len).u32(len32(key)).u32(0);
                }
                SessionParams::Aead {
                    algo,
                    key,
                    tag_len,
                    aad_len,
                    direction,
                } => {
                    e.u32(algo)
                        .u32(len32(key))
                        .u32(tag_len)
                        .u32(aad_len)
                        .u32(direction.op())
                        .u32(0);
                }
                SessionParams::Rsa {
                    key_type,
                    key,
                    padding,
                    hash,
                } => {
                    e.u32(algo::AKCIPHER_RSA)
                        .u32(key_type)
                        .u32(len32(key))
                        .u32(padding)
                        .u32(hash);
                }
            }
            e.pad(start, flf).bytes(vlf);
        })?;
        let (len, out) = answer;
        if len as usize != SESSION_INPUT {
            return Err(CryptoError::BadLength {
                len,
                room: SESSION_INPUT as u32,
            });
        }
        let status = u32::from_le_bytes([out[8], out[9], out[10], out[11]]);
        match u8::try_from(status).ok().and_then(Status::from_u8) {
            Some(Status::Ok) => {}
            Some(s) => return Err(CryptoError::Status(s)),
            None => return Err(CryptoError::UnknownStatus(status.min(255) as u8)),
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&out[..8]);
        Ok(u64::from_le_bytes(id))
    }

    /// Destroys session `id` of `service` (§5.9.7.2).
    pub fn destroy_session(
        &mut self,
        service: Service,
        id: u64,
        wait: &mut impl Wait,
    ) -> Result<(), CryptoError> {
        let flf = if self.rev1() { 8 } else { CTRL_FLF_LEGACY };
        let (len, out) = self.control(CTRL_HEADER + flf, 1, wait, |b| {
            let mut e = Enc { buf: b, at: 0 };
            e.u32(service.destroy_opcode()).u32(0).u32(0).u32(0);
            let start = e.at;
            e.u64(id).pad(start, flf);
        })?;
        if len != 1 {
            return Err(CryptoError::BadLength { len, room: 1 });
        }
        match Status::from_u8(out[0]) {
            Some(Status::Ok) => Ok(()),
            Some(s) => Err(CryptoError::Status(s)),
            None => Err(CryptoError::UnknownStatus(out[0])),
        }
    }

    /// One control request: `readable` bytes written by `fill`, `answer`
    /// bytes of room; returns the used length and the answer's first 16
    /// bytes.
    fn control(
        &mut self,
        readable: usize,
        answer: u32,
        wait: &mut impl Wait,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(u32, [u8; SESSION_INPUT]), CryptoError> {
        let index = self.data.len() as u16;
        let q = self
            .ctrl
            .as_mut()
            .ok_or(CryptoError::Unsupported("no control queue"))?;
        let need = readable as u64 + u64::from(answer);
        if need > u64::from(CTRL_SLOT) {
            return Err(CryptoError::TooLarge {
                need,
                limit: u64::from(CTRL_SLOT),
            });
        }
        let slot = q
            .push_request_with(readable as u32, answer, fill)?
            .ok_or(CryptoError::Busy)?;
        q.kick(&self.transport)?;
        let transport = &self.transport;
        let done = crate::wait::drive(
            q,
            wait,
            |q| q.pop(),
            |q| q.arm(),
            |_| transport.timeout(index),
        );
        // On a timeout the request stays in flight; its slot is not
        // reused.
        let done = done?;
        let mut out = [0u8; SESSION_INPUT];
        let n = (done.len as usize).min(answer as usize).min(SESSION_INPUT);
        let r = q.read_slot(done.slot, readable as u32, &mut out[..n]);
        q.release(done.slot);
        if done.slot != slot {
            // One request at a time on the control queue.
            return Err(CryptoError::Driver(Error::Queue {
                queue: index,
                err: virtio_core::split::DriverError::UsedIdNotInFlight { id: done.slot },
            }));
        }
        r?;
        Ok((done.len, out))
    }

    /// Puts a data request on `queue` (not yet visible to the device:
    /// [`kick`](Self::kick)).
    pub fn submit(
        &mut self,
        queue: u16,
        mode: Mode<'_>,
        op: &Op<'_>,
    ) -> Result<Token, CryptoError> {
        let service = op.service();
        let stateless = match mode {
            Mode::Session(_) => false,
            Mode::Stateless(p) => {
                if p.service() != service {
                    return Err(CryptoError::Unsupported(
                        "the stateless parameters are of another service",
                    ));
                }
                if !self.stateless(service) {
                    return Err(CryptoError::Unsupported(
                        "the service's stateless mode was not negotiated",
                    ));
                }
                true
            }
        };
        let rev1 = self.rev1();
        let room = op.room();
        // Fixed and variable parts.
        let (flf_own, vlf_len) = match (*op, mode) {
            (Op::Cipher { iv, src, .. }, Mode::Session(_)) => (48, iv.len() + src.len()),
            (Op::Cipher { iv, src, .. }, Mode::Stateless(p)) => {
                (76, key_of(&p).len() + iv.len() + src.len())
            }
            (Op::Hash { src, .. }, Mode::Session(_)) => (8, src.len()),
            (Op::Hash { src, .. }, Mode::Stateless(_)) => (16, src.len()),
            (Op::Mac { src, .. }, Mode::Session(_)) => (8, src.len()),
            (Op::Mac { src, .. }, Mode::Stateless(p)) => (16, key_of(&p).len() + src.len()),
            (Op::Aead { iv, aad, src, .. }, Mode::Session(_)) => {
                (24, iv.len() + aad.len() + src.len())
            }
            (Op::Aead { iv, aad, src, .. }, Mode::Stateless(p)) => {
                (32, key_of(&p).len() + iv.len() + aad.len() + src.len())
            }
            (Op::Akcipher { src, .. }, Mode::Session(_)) => (8, src.len()),
            (Op::Akcipher { src, .. }, Mode::Stateless(p)) => (28, key_of(&p).len() + src.len()),
            (
                Op::Verify {
                    signature, digest, ..
                },
                Mode::Session(_),
            ) => (8, signature.len() + digest.len()),
            (
                Op::Verify {
                    signature, digest, ..
                },
                Mode::Stateless(p),
            ) => (28, key_of(&p).len() + signature.len() + digest.len()),
        };
        let flf = if rev1 || stateless {
            flf_own
        } else {
            DATA_FLF_LEGACY
        };
        let readable = (DATA_HEADER + flf + vlf_len) as u64;
        let slot_size = u64::from(self.options.slot_size.max(64));
        let need = readable + u64::from(room) + 1;
        if need > slot_size {
            return Err(CryptoError::TooLarge {
                need,
                limit: slot_size,
            });
        }
        if vlf_len as u64 > self.info.max_size {
            // §5.9.4: a request beyond max_size fails and needs a reset.
            return Err(CryptoError::TooLarge {
                need: vlf_len as u64,
                limit: self.info.max_size,
            });
        }
        let qi = usize::from(queue);
        let q = self
            .data
            .get_mut(qi)
            .ok_or(CryptoError::Unsupported("no such data queue"))?;
        let (session, flag) = match mode {
            Mode::Session(id) => (id, if rev1 { FLAG_SESSION_MODE } else { 0 }),
            Mode::Stateless(_) => (0, 0),
        };
        let opcode = op.opcode();
        let algo = match mode {
            Mode::Stateless(p) => p.algo(),
            Mode::Session(_) => 0,
        };
        let slot = q
            .push_request_with(readable as u32, room + 1, |b| {
                let mut e = Enc { buf: b, at: 0 };
                e.u32(opcode).u32(algo).u64(session).u32(flag).u32(0);
                let start = e.at;
                encode_data(&mut e, start, flf, op, mode);
            })?
            .ok_or(CryptoError::Busy)?;
        if let Some(p) = self
            .pending
            .get_mut(qi)
            .and_then(|p| p.get_mut(usize::from(slot)))
        {
            *p = Pending {
                readable: readable as u32,
                room: room + 1,
                done: None,
            };
        }
        Ok(Token { queue, slot })
    }

    /// Makes what was submitted on `queue` visible and notifies the
    /// device if it asks (§2.7.13).
    pub fn kick(&mut self, queue: u16) -> Result<(), CryptoError> {
        let q = self
            .data
            .get_mut(usize::from(queue))
            .ok_or(CryptoError::Unsupported("no such data queue"))?;
        q.kick(&self.transport)?;
        Ok(())
    }

    /// Takes the next completed request of any data queue, if one is
    /// there, checking what the device wrote.
    pub fn poll(&mut self) -> Result<Option<Done>, CryptoError> {
        for (qi, q) in self.data.iter_mut().enumerate() {
            let Some(c) = q.pop()? else {
                continue;
            };
            let p = self
                .pending
                .get_mut(qi)
                .and_then(|p| p.get_mut(usize::from(c.slot)))
                .ok_or(CryptoError::Unsupported("a slot the driver did not post"))?;
            let token = Token {
                queue: qi as u16,
                slot: c.slot,
            };
            if c.len == 0 || c.len > p.room {
                q.release(c.slot);
                return Err(CryptoError::BadLength {
                    len: c.len,
                    room: p.room,
                });
            }
            // The status is the last byte of the room (§5.9.7.3 inhdr).
            let mut s = [0u8; 1];
            q.read_slot(c.slot, p.readable + p.room - 1, &mut s)?;
            let Some(status) = Status::from_u8(s[0]) else {
                q.release(c.slot);
                return Err(CryptoError::UnknownStatus(s[0]));
            };
            // The used length says what the device wrote: the result and
            // the status (AKCIPHER results say their length that way); a
            // device that reports the whole room (QEMU) gives the room.
            let result_len = (c.len - 1).min(p.room - 1);
            p.done = Some((status, result_len));
            return Ok(Some(Done {
                token,
                status,
                result_len: result_len as usize,
            }));
        }
        Ok(None)
    }

    /// Copies a completed request's result into `buf` (at most its
    /// length) and frees its slot; returns the bytes copied.
    pub fn take_result(&mut self, done: &Done, buf: &mut [u8]) -> Result<usize, CryptoError> {
        let qi = usize::from(done.token.queue);
        let q = self
            .data
            .get_mut(qi)
            .ok_or(CryptoError::Unsupported("no such data queue"))?;
        let p = self
            .pending
            .get(qi)
            .and_then(|p| p.get(usize::from(done.token.slot)))
            .copied()
            .ok_or(CryptoError::Unsupported("no such slot"))?;
        let n = done.result_len.min(buf.len());
        let r = q.read_slot(done.token.slot, p.readable, &mut buf[..n]);
        q.release(done.token.slot);
        r?;
        Ok(n)
    }

    /// One request on queue 0, waited for within `wait`: the result's
    /// length in `out`, or the device's status as an error.
    pub fn run(
        &mut self,
        mode: Mode<'_>,
        op: &Op<'_>,
        out: &mut [u8],
        wait: &mut impl Wait,
    ) -> Result<usize, CryptoError> {
        let token = self.submit(0, mode, op)?;
        self.kick(0)?;
        let done = self.wait_for(token, wait)?;
        let n = self.take_result(&done, out)?;
        match done.status {
            Status::Ok => Ok(n),
            s => Err(CryptoError::Status(s)),
        }
    }

    /// Waits for `token`'s completion; others that complete meanwhile are
    /// kept for [`poll`](Self::poll)'s callers only through their slots
    /// (their results stay readable with [`take_result`](Self::take_result)).
    pub fn wait_for(&mut self, token: Token, wait: &mut impl Wait) -> Result<Done, CryptoError> {
        loop {
            if let Some(p) = self
                .pending
                .get(usize::from(token.queue))
                .and_then(|p| p.get(usize::from(token.slot)))
                && let Some((status, n)) = p.done
            {
                return Ok(Done {
                    token,
                    status,
                    result_len: n as usize,
                });
            }
            if self.poll()?.is_some() {
                continue;
            }
            let q = self
                .data
                .get_mut(usize::from(token.queue))
                .ok_or(CryptoError::Unsupported("no such data queue"))?;
            if q.arm()? {
                continue;
            }
            if !wait.wait() {
                return Err(CryptoError::Driver(self.transport.timeout(token.queue)));
            }
        }
    }
}

/// The key a session's parameters carry (none for a hash).
fn key_of<'a>(p: &SessionParams<'a>) -> &'a [u8] {
    match *p {
        SessionParams::Cipher { key, .. }
        | SessionParams::Mac { key, .. }
        | SessionParams::Aead { key, .. }
        | SessionParams::Rsa { key, .. } => key,
        SessionParams::Hash { .. } => &[],
    }
}

/// A data request's fixed part (padded to `flf` from `start`) and its
/// variable part (§5.9.7.4 to §5.9.7.7).
fn encode_data(e: &mut Enc<'_>, start: usize, flf: usize, op: &Op<'_>, mode: Mode<'_>) {
    match (*op, mode) {
        (Op::Cipher { iv, src, .. }, Mode::Session(_)) => {
            e.u32(len32(iv)).u32(len32(src)).u32(len32(src)).u32(0);
            e.pad(start, 40).u32(SYM_OP_CIPHER).u32(0);
            e.pad(start, flf).bytes(iv).bytes(src);
        }
        (Op::Cipher { iv, src, .. }, Mode::Stateless(p)) => {
            let (key, dir) = match p {
                SessionParams::Cipher { key, direction, .. } => (key, direction),
                _ => (&[][..], Direction::Encrypt),
            };
            e.u32(p.algo())
                .u32(len32(key))
                .u32(dir.op())
                .u32(len32(iv))
                .u32(len32(src))
                .u32(len32(src));
            e.pad(start, 72).u32(SYM_OP_CIPHER);
            e.pad(start, flf).bytes(key).bytes(iv).bytes(src);
        }
        (Op::Hash { src, result_len }, Mode::Session(_))
        | (Op::Mac { src, result_len }, Mode::Session(_)) => {
            e.u32(len32(src)).u32(result_len);
            e.pad(start, flf).bytes(src);
        }
        (Op::Hash { src, result_len }, Mode::Stateless(p)) => {
            e.u32(p.algo()).u32(len32(src)).u32(result_len).u32(0);
            e.pad(start, flf).bytes(src);
        }
        (Op::Mac { src, result_len }, Mode::Stateless(p)) => {
            let key = key_of(&p);
            e.u32(p.algo())
                .u32(len32(key))
                .u32(len32(src))
                .u32(result_len);
            e.pad(start, flf).bytes(key).bytes(src);
        }
        (
            Op::Aead {
                iv,
                aad,
                src,
                dst_len,
                ..
            },
            Mode::Session(_),
        ) => {
            e.u32(len32(iv))
                .u32(len32(aad))
                .u32(len32(src))
                .u32(dst_len)
                .u32(tag_of(&mode))
                .u32(0);
            e.pad(start, flf).bytes(iv).bytes(src).bytes(aad);
        }
        (
            Op::Aead {
                iv,
                aad,
                src,
                dst_len,
                ..
            },
            Mode::Stateless(p),
        ) => {
            let (key, tag, dir) = match p {
                SessionParams::Aead {
                    key,
                    tag_len,
                    direction,
                    ..
                } => (key, tag_len, direction),
                _ => (&[][..], 0, Direction::Encrypt),
            };
            e.u32(p.algo())
                .u32(len32(key))
                .u32(dir.op())
                .u32(len32(iv))
                .u32(tag)
                .u32(len32(aad))
                .u32(len32(src))
                .u32(dst_len);
            e.pad(start, flf).bytes(key).bytes(iv).bytes(src).bytes(aad);
        }
        (Op::Akcipher { src, dst_len, .. }, Mode::Session(_)) => {
            e.u32(len32(src)).u32(dst_len);
            e.pad(start, flf).bytes(src);
        }
        (
            Op::Verify {
                signature, digest, ..
            },
            Mode::Session(_),
        ) => {
            e.u32(len32(signature)).u32(len32(digest));
            e.pad(start, flf).bytes(signature).bytes(digest);
        }
        (Op::Akcipher { src, dst_len, .. }, Mode::Stateless(p)) => {
            rsa_stateless(e, &p, len32(src), dst_len);
            e.pad(start, flf).bytes(key_of(&p)).bytes(src);
        }
        (
            Op::Verify {
                signature, digest, ..
            },
            Mode::Stateless(p),
        ) => {
            rsa_stateless(e, &p, len32(signature), len32(digest));
            e.pad(start, flf)
                .bytes(key_of(&p))
                .bytes(signature)
                .bytes(digest);
        }
    }
}

/// The stateless AKCIPHER fixed part: the session parameters, then the
/// lengths.
fn rsa_stateless(e: &mut Enc<'_>, p: &SessionParams<'_>, src_len: u32, dst_len: u32) {
    let (key_type, key, padding, hash) = match *p {
        SessionParams::Rsa {
            key_type,
            key,
            padding,
            hash,
        } => (key_type, key, padding, hash),
        _ => (0, &[][..], 0, 0),
    };
    e.u32(algo::AKCIPHER_RSA)
        .u32(key_type)
        .u32(len32(key))
        .u32(padding)
        .u32(hash)
        .u32(src_len)
        .u32(dst_len);
}

/// The tag length a session-mode AEAD request states: the driver does not
/// keep sessions' parameters, so 16 (GCM's) unless stateless says.
fn tag_of(mode: &Mode<'_>) -> u32 {
    match mode {
        Mode::Stateless(SessionParams::Aead { tag_len, .. }) => *tag_len,
        _ => 16,
    }
}

impl<H: Hal, R: RegisterAccess> Drop for Crypto<H, R> {
    fn drop(&mut self) {
        // §3.3.1: reset before the memory goes; a device that does not
        // reset keeps it.
        if self.transport.reset().is_err() {
            return;
        }
        for q in &mut self.data {
            // SAFETY: the device was reset and no longer uses the queue.
            unsafe { q.free(&self.hal) };
        }
        if let Some(q) = self.ctrl.as_mut() {
            // SAFETY: as above.
            unsafe { q.free(&self.hal) };
        }
    }
}
