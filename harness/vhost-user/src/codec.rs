//! The vhost-user message codec (QEMU `docs/interop/vhost-user.rst`,
//! "Message Specification"): the header, the request codes, the payload
//! layouts, decoding of frontend requests with their file descriptors,
//! encoding of requests and replies, and framing over a unix socket with
//! `SCM_RIGHTS`.
//!
//! Decoding is total: any bytes and any number of descriptors give a
//! [`Message`] or a [`CodecError`], never a panic ([`decode_all`] is the
//! fuzz entry). The codec knows no session state; `backend` does.
//! Deliberately not decoded: the dirty log, IOTLB, postcopy, inflight,
//! crypto and GPU messages (they decode as [`Message::Unsupported`]), and
//! the backend-initiated channel.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the message header ("Header": request, flags, size).
pub const HEADER_LEN: usize = 12;
/// The largest payload accepted (QEMU and rust-vmm use the same 4 KiB
/// bound); a bigger `size` cannot be resynchronised and closes the
/// connection.
pub const MAX_PAYLOAD: usize = 4096;
/// The most file descriptors one message may carry.
pub const MAX_FDS: usize = 32;
/// The most memory regions a table may hold (`GET_MAX_MEM_SLOTS`).
pub const MAX_MEM_SLOTS: usize = 32;
/// The largest device configuration access (`GET_CONFIG`/`SET_CONFIG`):
/// virtio configuration spaces are at most 256 bytes here.
pub const MAX_CONFIG: usize = 256;

/// Header flags: the protocol version (bits 0-1, always 1).
pub const FLAG_VERSION: u32 = 0x1;
/// Header flags: bits 0-1 hold the version.
pub const FLAG_VERSION_MASK: u32 = 0x3;
/// Header flags: this is a reply.
pub const FLAG_REPLY: u32 = 1 << 2;
/// Header flags: the frontend asks for a `REPLY_ACK` reply.
pub const FLAG_NEED_REPLY: u32 = 1 << 3;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the virtio feature bit (30) that
/// says the protocol feature messages are available ("Protocol features").
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Protocol feature bits ("Protocol features").
pub mod protocol {
    /// `VHOST_USER_PROTOCOL_F_MQ`: `GET_QUEUE_NUM`.
    pub const MQ: u64 = 1 << 0;
    /// `VHOST_USER_PROTOCOL_F_LOG_SHMFD`.
    pub const LOG_SHMFD: u64 = 1 << 1;
    /// `VHOST_USER_PROTOCOL_F_REPLY_ACK`: `need_reply` is honoured.
    pub const REPLY_ACK: u64 = 1 << 3;
    /// `VHOST_USER_PROTOCOL_F_CRYPTO_SESSION`: `CREATE_CRYPTO_SESSION`,
    /// `CLOSE_CRYPTO_SESSION`.
    pub const CRYPTO_SESSION: u64 = 1 << 7;
    /// `VHOST_USER_PROTOCOL_F_CONFIG`: `GET_CONFIG`/`SET_CONFIG`.
    pub const CONFIG: u64 = 1 << 9;
    /// `VHOST_USER_PROTOCOL_F_RESET_DEVICE`: `RESET_DEVICE`.
    pub const RESET_DEVICE: u64 = 1 << 13;
    /// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`: `GET_MAX_MEM_SLOTS`,
    /// `ADD_MEM_REG`, `REM_MEM_REG`.
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
}

/// Request codes of the frontend ("Front-end message types").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum Request {
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    ResetOwner = 4,
    SetMemTable = 5,
    SetLogBase = 6,
    SetLogFd = 7,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    SetVringErr = 14,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
    SendRarp = 19,
    NetSetMtu = 20,
    SetBackendReqFd = 21,
    IotlbMsg = 22,
    SetVringEndian = 23,
    GetConfig = 24,
    SetConfig = 25,
    CreateCryptoSession = 26,
    CloseCryptoSession = 27,
    PostcopyAdvise = 28,
    PostcopyListen = 29,
    PostcopyEnd = 30,
    GetInflightFd = 31,
    SetInflightFd = 32,
    GpuSetSocket = 33,
    ResetDevice = 34,
    VringKick = 35,
    GetMaxMemSlots = 36,
    AddMemReg = 37,
    RemMemReg = 38,
    SetStatus = 39,
    GetStatus = 40,
}

impl Request {
    const ALL: [Request; 40] = [
        Request::GetFeatures,
        Request::SetFeatures,
        Request::SetOwner,
        Request::ResetOwner,
        Request::SetMemTable,
        Request::SetLogBase,
        Request::SetLogFd,
        Request::SetVringNum,
        Request::SetVringAddr,
        Request::SetVringBase,
        Request::GetVringBase,
        Request::SetVringKick,
        Request::SetVringCall,
        Request::SetVringErr,
        Request::GetProtocolFeatures,
        Request::SetProtocolFeatures,
        Request::GetQueueNum,
        Request::SetVringEnable,
        Request::SendRarp,
        Request::NetSetMtu,
        Request::SetBackendReqFd,
        Request::IotlbMsg,
        Request::SetVringEndian,
        Request::GetConfig,
        Request::SetConfig,
        Request::CreateCryptoSession,
        Request::CloseCryptoSession,
        Request::PostcopyAdvise,
        Request::PostcopyListen,
        Request::PostcopyEnd,
        Request::GetInflightFd,
        Request::SetInflightFd,
        Request::GpuSetSocket,
        Request::ResetDevice,
        Request::VringKick,
        Request::GetMaxMemSlots,
        Request::AddMemReg,
        Request::RemMemReg,
        Request::SetStatus,
        Request::GetStatus,
    ];

    /// The request with code `code`, if it is one.
    pub fn from_code(code: u32) -> Option<Request> {
        let i = usize::try_from(code.checked_sub(1)?).ok()?;
        Request::ALL.get(i).copied()
    }

    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// The message header ("Header"). The protocol is host-endian.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Header {
    /// The request code.
    pub request: u32,
    /// Version, reply and need-reply flags.
    pub flags: u32,
    /// Payload bytes that follow.
    pub size: u32,
}

impl Header {
    /// Whether the sender asks for a `REPLY_ACK` reply.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// "A vring state description".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VringState {
    /// The ring index.
    pub index: u32,
    /// A number (size, base index, enable flag).
    pub num: u32,
}

/// "A vring address description": frontend virtual addresses (the user
/// addresses of the memory table).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct VringAddr {
    /// The ring index.
    pub index: u32,
    /// Bit 0: log used-ring writes (`VHOST_VRING_F_LOG`).
    pub flags: u32,
    /// The descriptor table.
    pub desc: u64,
    /// The used ring.
    pub used: u64,
    /// The available ring.
    pub avail: u64,
    /// The guest address for logging.
    pub log: u64,
}

/// "Memory region description".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MemRegion {
    /// Guest physical address of the region.
    pub guest_addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Where the frontend has it mapped (ring addresses are in this space).
    pub user_addr: u64,
    /// Offset of the region in the file descriptor.
    pub mmap_offset: u64,
}

/// The fixed part of "Multiple Memory regions description".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
struct MemTableHeader {
    num: u32,
    padding: u32,
}

/// The fixed part of "Device configuration space".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
struct ConfigHeader {
    offset: u32,
    size: u32,
    flags: u32,
}

/// A symmetric crypto session as QEMU 7.2's `cryptodev-vhost-user` sends it
/// with `CREATE_CRYPTO_SESSION` and reads it back (`VhostUserCryptoSession`
/// over `CryptoDevBackendSymSessionInfo`, 632 bytes; the two key pointers
/// are QEMU's heap addresses, meaningless here). The reply is the same
/// structure with `session_id` set: the id, or a negative number for a
/// failure. QEMU 7.2's layout, not the older one with `op_code` at 8 that
/// DPDK's vhost library reads.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CryptoSession {
    /// The session id in a reply (negative: refused); ignored in a request.
    pub session_id: i64,
    /// `VIRTIO_CRYPTO_CIPHER_*` (§5.9.2.1).
    pub cipher_alg: u32,
    /// Bytes of `key` used.
    pub key_len: u32,
    /// `VIRTIO_CRYPTO_HASH_*` or `_MAC_*` for chaining.
    pub hash_alg: u32,
    /// The digest's length for chaining.
    pub hash_result_len: u32,
    /// Bytes of `auth_key` used.
    pub auth_key_len: u32,
    /// AAD length for chaining.
    pub add_len: u32,
    /// `VIRTIO_CRYPTO_SYM_OP_*`.
    pub op_type: u8,
    /// `VIRTIO_CRYPTO_OP_ENCRYPT` (1) or `_DECRYPT` (2).
    pub direction: u8,
    /// `VIRTIO_CRYPTO_SYM_HASH_MODE_*`.
    pub hash_mode: u8,
    /// `VIRTIO_CRYPTO_SYM_ALG_CHAIN_ORDER_*`.
    pub alg_chain_order: u8,
    /// Padding (zero from QEMU).
    pub padding: u32,
    /// QEMU's pointer to the cipher key (ignored).
    pub cipher_key_ptr: u64,
    /// QEMU's pointer to the authentication key (ignored).
    pub auth_key_ptr: u64,
    /// The cipher key (`VHOST_CRYPTO_SYM_CIPHER_MAX_KEY_LEN`).
    pub key: [u8; 64],
    /// The authentication key (`VHOST_CRYPTO_SYM_HMAC_MAX_KEY_LEN`).
    pub auth_key: [u8; 512],
}

/// Everything but the keys (logs stay free of key material).
impl core::fmt::Debug for CryptoSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CryptoSession")
            .field("session_id", &self.session_id)
            .field("cipher_alg", &self.cipher_alg)
            .field("key_len", &self.key_len)
            .field("hash_alg", &self.hash_alg)
            .field("auth_key_len", &self.auth_key_len)
            .field("op_type", &self.op_type)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// A device configuration access ("Device configuration space").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Offset in the configuration space.
    pub offset: u32,
    /// Flags (bit 0 writable, bit 1 live migration).
    pub flags: u32,
    /// The bytes (`size` is their length, at most [`MAX_CONFIG`]); for
    /// `GET_CONFIG` the frontend's placeholder.
    pub data: Vec<u8>,
}

/// The `u64` payload of `SET_VRING_KICK`/`CALL`/`ERR` ("vring index in
/// bits 0-7, bit 8 set when no file descriptor is passed").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringFd {
    /// The ring index.
    pub index: u8,
    /// Whether a descriptor was passed (bit 8 clear).
    pub has_fd: bool,
}

impl VringFd {
    const NO_FD: u64 = 1 << 8;

    fn from_u64(v: u64) -> Result<VringFd, CodecError> {
        if v & !(0xff | Self::NO_FD) != 0 {
            return Err(CodecError::BadVringFd(v));
        }
        Ok(VringFd {
            index: (v & 0xff) as u8,
            has_fd: v & Self::NO_FD == 0,
        })
    }

    fn to_u64(self) -> u64 {
        u64::from(self.index) | if self.has_fd { 0 } else { Self::NO_FD }
    }
}

/// A decoded frontend request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// `GET_FEATURES`.
    GetFeatures,
    /// `SET_FEATURES`: the acknowledged virtio features.
    SetFeatures(u64),
    /// `SET_OWNER`.
    SetOwner,
    /// `RESET_OWNER`.
    ResetOwner,
    /// `SET_MEM_TABLE`: one descriptor per region, in order.
    SetMemTable(Vec<MemRegion>),
    /// `SET_VRING_NUM`.
    SetVringNum(VringState),
    /// `SET_VRING_ADDR`.
    SetVringAddr(VringAddr),
    /// `SET_VRING_BASE`.
    SetVringBase(VringState),
    /// `GET_VRING_BASE` (`num` is ignored).
    GetVringBase(VringState),
    /// `SET_VRING_KICK`.
    SetVringKick(VringFd),
    /// `SET_VRING_CALL`.
    SetVringCall(VringFd),
    /// `SET_VRING_ERR`.
    SetVringErr(VringFd),
    /// `GET_PROTOCOL_FEATURES`.
    GetProtocolFeatures,
    /// `SET_PROTOCOL_FEATURES`.
    SetProtocolFeatures(u64),
    /// `GET_QUEUE_NUM`.
    GetQueueNum,
    /// `SET_VRING_ENABLE` (`num` 0 or 1).
    SetVringEnable(VringState),
    /// `GET_CONFIG`.
    GetConfig(Config),
    /// `SET_CONFIG`.
    SetConfig(Config),
    /// `RESET_DEVICE`.
    ResetDevice,
    /// `GET_MAX_MEM_SLOTS`.
    GetMaxMemSlots,
    /// `ADD_MEM_REG` (one descriptor).
    AddMemReg(MemRegion),
    /// `REM_MEM_REG`.
    RemMemReg(MemRegion),
    /// `CREATE_CRYPTO_SESSION` (QEMU 7.2's layout).
    CreateCryptoSession(Box<CryptoSession>),
    /// `CLOSE_CRYPTO_SESSION`: the session id.
    CloseCryptoSession(u64),
    /// A request this backend does not implement (and does not offer the
    /// protocol feature for); its payload was skipped.
    Unsupported(Request),
}

impl Message {
    /// The request code.
    pub fn request(&self) -> Request {
        match self {
            Message::GetFeatures => Request::GetFeatures,
            Message::SetFeatures(_) => Request::SetFeatures,
            Message::SetOwner => Request::SetOwner,
            Message::ResetOwner => Request::ResetOwner,
            Message::SetMemTable(_) => Request::SetMemTable,
            Message::SetVringNum(_) => Request::SetVringNum,
            Message::SetVringAddr(_) => Request::SetVringAddr,
            Message::SetVringBase(_) => Request::SetVringBase,
            Message::GetVringBase(_) => Request::GetVringBase,
            Message::SetVringKick(_) => Request::SetVringKick,
            Message::SetVringCall(_) => Request::SetVringCall,
            Message::SetVringErr(_) => Request::SetVringErr,
            Message::GetProtocolFeatures => Request::GetProtocolFeatures,
            Message::SetProtocolFeatures(_) => Request::SetProtocolFeatures,
            Message::GetQueueNum => Request::GetQueueNum,
            Message::SetVringEnable(_) => Request::SetVringEnable,
            Message::GetConfig(_) => Request::GetConfig,
            Message::SetConfig(_) => Request::SetConfig,
            Message::ResetDevice => Request::ResetDevice,
            Message::GetMaxMemSlots => Request::GetMaxMemSlots,
            Message::AddMemReg(_) => Request::AddMemReg,
            Message::RemMemReg(_) => Request::RemMemReg,
            Message::CreateCryptoSession(_) => Request::CreateCryptoSession,
            Message::CloseCryptoSession(_) => Request::CloseCryptoSession,
            Message::Unsupported(r) => *r,
        }
    }

    /// Whether the protocol defines a reply for this request (the `GET_*`
    /// family), regardless of `REPLY_ACK`.
    pub fn has_reply(&self) -> bool {
        matches!(
            self,
            Message::GetFeatures
                | Message::GetVringBase(_)
                | Message::GetProtocolFeatures
                | Message::GetQueueNum
                | Message::GetConfig(_)
                | Message::GetMaxMemSlots
                | Message::CreateCryptoSession(_)
        )
    }

    /// How many file descriptors this message carries.
    pub fn fd_count(&self) -> usize {
        match self {
            Message::SetMemTable(r) => r.len(),
            Message::SetVringKick(v) | Message::SetVringCall(v) | Message::SetVringErr(v) => {
                usize::from(v.has_fd)
            }
            Message::AddMemReg(_) => 1,
            _ => 0,
        }
    }

    /// The message as a frontend sends it (header and payload; the
    /// descriptors travel beside it). An [`Message::Unsupported`] request
    /// is encoded with an empty payload.
    pub fn encode(&self, need_reply: bool) -> Vec<u8> {
        let mut payload = Vec::new();
        match self {
            Message::GetFeatures
            | Message::SetOwner
            | Message::ResetOwner
            | Message::GetProtocolFeatures
            | Message::GetQueueNum
            | Message::ResetDevice
            | Message::GetMaxMemSlots
            | Message::Unsupported(_) => {}
            Message::SetFeatures(v)
            | Message::SetProtocolFeatures(v)
            | Message::CloseCryptoSession(v) => payload.extend_from_slice(v.as_bytes()),
            Message::CreateCryptoSession(c) => payload.extend_from_slice(c.as_bytes()),
            Message::SetMemTable(regions) => {
                let h = MemTableHeader {
                    num: regions.len() as u32,
                    padding: 0,
                };
                payload.extend_from_slice(h.as_bytes());
                for r in regions {
                    payload.extend_from_slice(r.as_bytes());
                }
            }
            Message::SetVringNum(s)
            | Message::SetVringBase(s)
            | Message::GetVringBase(s)
            | Message::SetVringEnable(s) => payload.extend_from_slice(s.as_bytes()),
            Message::SetVringAddr(a) => payload.extend_from_slice(a.as_bytes()),
            Message::SetVringKick(v) | Message::SetVringCall(v) | Message::SetVringErr(v) => {
                payload.extend_from_slice(v.to_u64().as_bytes())
            }
            Message::GetConfig(c) | Message::SetConfig(c) => {
                let h = ConfigHeader {
                    offset: c.offset,
                    size: c.data.len() as u32,
                    flags: c.flags,
                };
                payload.extend_from_slice(h.as_bytes());
                payload.extend_from_slice(&c.data);
            }
            Message::AddMemReg(r) | Message::RemMemReg(r) => {
                payload.extend_from_slice(0u64.as_bytes());
                payload.extend_from_slice(r.as_bytes());
            }
        }
        let flags = FLAG_VERSION | if need_reply { FLAG_NEED_REPLY } else { 0 };
        let out = frame(self.request().code(), flags, &payload);
        // A crypto session's keys are not left in freed memory (the
        // caller wipes the frame once sent).
        payload.fill(0);
        out
    }
}

/// Header plus payload as one buffer.
fn frame(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        request,
        flags,
        size: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A reply carrying a `u64` (features, protocol features, queue number,
/// memory slots, or the `REPLY_ACK` status: 0 for success).
pub fn reply_u64(request: Request, value: u64) -> Vec<u8> {
    frame(request.code(), FLAG_VERSION | FLAG_REPLY, value.as_bytes())
}

/// The `GET_VRING_BASE` reply.
pub fn reply_vring_state(state: VringState) -> Vec<u8> {
    frame(
        Request::GetVringBase.code(),
        FLAG_VERSION | FLAG_REPLY,
        state.as_bytes(),
    )
}

/// The `GET_CONFIG` reply: the request's offset and flags with `data`
/// (empty to report a failure, "the back-end ... replies with size 0").
pub fn reply_config(offset: u32, flags: u32, data: &[u8]) -> Vec<u8> {
    let h = ConfigHeader {
        offset,
        size: data.len() as u32,
        flags,
    };
    let mut payload = h.as_bytes().to_vec();
    payload.extend_from_slice(data);
    frame(
        Request::GetConfig.code(),
        FLAG_VERSION | FLAG_REPLY,
        &payload,
    )
}

/// The `CREATE_CRYPTO_SESSION` reply: `session` with its id (negative:
/// refused), as QEMU 7.2 reads it.
pub fn reply_crypto_session(session: &CryptoSession) -> Vec<u8> {
    frame(
        Request::CreateCryptoSession.code(),
        FLAG_VERSION | FLAG_REPLY,
        session.as_bytes(),
    )
}

/// A back-end's reply to one request, decoded ([`decode_reply`]): what a
/// frontend reads back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A `u64`: features, protocol features, the queue or memory slot
    /// count, or a `REPLY_ACK` status (0 for success).
    U64(u64),
    /// `GET_VRING_BASE`'s ring state.
    VringState(VringState),
    /// `GET_CONFIG`'s answer: the request's offset and flags with the
    /// bytes (none when the back-end refused).
    Config(Config),
    /// `CREATE_CRYPTO_SESSION`'s answer.
    CryptoSession(Box<CryptoSession>),
}

/// Decodes one whole reply (header and payload) to `request`: a version 1
/// header with the reply flag and no other, the request's code, and the
/// payload of that request's reply ([`reply_u64`], [`reply_vring_state`],
/// [`reply_config`] encode them), or a `u64` status when `ack` (the
/// frontend asked for a `REPLY_ACK`: a request without a reply of its own
/// sent with `need_reply`, or one the back-end could not decode).
pub fn decode_reply(request: Request, ack: bool, bytes: &[u8]) -> Result<Reply, CodecError> {
    let h = bytes
        .get(..HEADER_LEN)
        .and_then(|b| Header::read_from_bytes(b).ok())
        .ok_or(CodecError::ShortHeader(bytes.len()))?;
    if h.flags != FLAG_VERSION | FLAG_REPLY {
        return Err(CodecError::NotAReply(h.flags));
    }
    if h.request != request.code() {
        return Err(CodecError::WrongReply {
            want: request,
            got: h.request,
        });
    }
    if h.size as usize > MAX_PAYLOAD {
        return Err(CodecError::Oversized(h.size));
    }
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != h.size as usize {
        return Err(CodecError::Truncated {
            want: h.size as usize,
            got: payload.len(),
        });
    }
    if ack {
        return exact::<u64>(request, payload).map(Reply::U64);
    }
    match request {
        Request::GetFeatures
        | Request::GetProtocolFeatures
        | Request::GetQueueNum
        | Request::GetMaxMemSlots => exact::<u64>(request, payload).map(Reply::U64),
        Request::GetVringBase => exact::<VringState>(request, payload).map(Reply::VringState),
        Request::CreateCryptoSession => {
            exact::<CryptoSession>(request, payload).map(|c| Reply::CryptoSession(Box::new(c)))
        }
        Request::GetConfig => {
            let bad = || CodecError::BadSize {
                request,
                size: payload.len(),
            };
            let (c, data) = ConfigHeader::read_from_prefix(payload).map_err(|_| bad())?;
            if c.size as usize > MAX_CONFIG {
                return Err(CodecError::BadConfigSize(c.size));
            }
            if data.len() != c.size as usize {
                return Err(bad());
            }
            Ok(Reply::Config(Config {
                offset: c.offset,
                flags: c.flags,
                data: data.to_vec(),
            }))
        }
        other => Err(CodecError::NoReply(other)),
    }
}

/// Why bytes from the frontend are not a valid request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Fewer than [`HEADER_LEN`] bytes.
    ShortHeader(usize),
    /// The version bits are not 1.
    BadVersion(u32),
    /// The reply flag is set on a request.
    ReplyFlag,
    /// `size` is above [`MAX_PAYLOAD`].
    Oversized(u32),
    /// The stream ended inside a payload.
    Truncated {
        /// Bytes the header announced.
        want: usize,
        /// Bytes there were.
        got: usize,
    },
    /// Not a request code of the protocol.
    UnknownRequest(u32),
    /// The payload size does not fit the request.
    BadSize {
        /// The request.
        request: Request,
        /// The payload size.
        size: usize,
    },
    /// The wrong number of file descriptors came with the request.
    FdCount {
        /// The request.
        request: Request,
        /// How many it needs.
        want: usize,
        /// How many came.
        got: usize,
    },
    /// More descriptors than [`MAX_FDS`] (the kernel truncated them).
    TooManyFds,
    /// A memory table with no region or more than [`MAX_MEM_SLOTS`].
    BadRegionCount(u32),
    /// A configuration access larger than [`MAX_CONFIG`].
    BadConfigSize(u32),
    /// Reserved bits set in a kick/call/err payload.
    BadVringFd(u64),
    /// A reply's header flags are not version 1 with the reply flag (and
    /// nothing else).
    NotAReply(u32),
    /// A reply carries the code of another request than the one it
    /// answers.
    WrongReply {
        /// The request answered.
        want: Request,
        /// The code in the reply.
        got: u32,
    },
    /// A reply to a request that has none (a request without a reply of
    /// its own, not waiting for a `REPLY_ACK` status).
    NoReply(Request),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::ShortHeader(n) => write!(f, "a {n}-byte message has no complete header"),
            CodecError::BadVersion(flags) => {
                write!(f, "header flags {flags:#x}: protocol version is not 1")
            }
            CodecError::ReplyFlag => f.write_str("a request has the reply flag set"),
            CodecError::Oversized(n) => {
                write!(
                    f,
                    "payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit"
                )
            }
            CodecError::Truncated { want, got } => {
                write!(f, "payload truncated: {got} of {want} bytes")
            }
            CodecError::UnknownRequest(c) => write!(f, "unknown request code {c}"),
            CodecError::BadSize { request, size } => {
                write!(f, "{request:?}: payload of {size} bytes has the wrong size")
            }
            CodecError::FdCount { request, want, got } => {
                write!(f, "{request:?}: {got} file descriptors, expected {want}")
            }
            CodecError::TooManyFds => {
                write!(f, "more than {MAX_FDS} file descriptors in one message")
            }
            CodecError::BadRegionCount(n) => write!(
                f,
                "memory table of {n} regions (1 to {MAX_MEM_SLOTS} allowed)"
            ),
            CodecError::BadConfigSize(n) => write!(
                f,
                "configuration access of {n} bytes (at most {MAX_CONFIG})"
            ),
            CodecError::BadVringFd(v) => {
                write!(f, "vring fd payload {v:#x} has reserved bits set")
            }
            CodecError::NotAReply(flags) => {
                write!(f, "header flags {flags:#x} are not those of a reply")
            }
            CodecError::WrongReply { want, got } => {
                write!(f, "the reply to {want:?} carries request code {got}")
            }
            CodecError::NoReply(r) => write!(f, "{r:?} has no reply"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Parses and checks a header: version 1, not a reply, size within
/// [`MAX_PAYLOAD`].
pub fn decode_header(bytes: &[u8]) -> Result<Header, CodecError> {
    let h = bytes
        .get(..HEADER_LEN)
        .and_then(|b| Header::read_from_bytes(b).ok())
        .ok_or(CodecError::ShortHeader(bytes.len()))?;
    if h.flags & FLAG_VERSION_MASK != FLAG_VERSION {
        return Err(CodecError::BadVersion(h.flags));
    }
    if h.flags & FLAG_REPLY != 0 {
        return Err(CodecError::ReplyFlag);
    }
    if h.size as usize > MAX_PAYLOAD {
        return Err(CodecError::Oversized(h.size));
    }
    Ok(h)
}

fn exact<T: FromBytes>(request: Request, payload: &[u8]) -> Result<T, CodecError> {
    T::read_from_bytes(payload).map_err(|_| CodecError::BadSize {
        request,
        size: payload.len(),
    })
}

fn no_payload(request: Request, payload: &[u8]) -> Result<(), CodecError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(CodecError::BadSize {
            request,
            size: payload.len(),
        })
    }
}

/// Decodes one request from its header, its payload (exactly
/// `header.size` bytes) and the number of descriptors that came with it.
pub fn decode(header: &Header, payload: &[u8], fds: usize) -> Result<Message, CodecError> {
    let request =
        Request::from_code(header.request).ok_or(CodecError::UnknownRequest(header.request))?;
    if payload.len() != header.size as usize {
        return Err(CodecError::Truncated {
            want: header.size as usize,
            got: payload.len(),
        });
    }
    let u64_of = |p: &[u8]| exact::<u64>(request, p);
    let msg = match request {
        Request::GetFeatures => no_payload(request, payload).map(|()| Message::GetFeatures)?,
        Request::SetFeatures => Message::SetFeatures(u64_of(payload)?),
        Request::SetOwner => no_payload(request, payload).map(|()| Message::SetOwner)?,
        Request::ResetOwner => no_payload(request, payload).map(|()| Message::ResetOwner)?,
        Request::SetMemTable => {
            let (h, rest) =
                MemTableHeader::read_from_prefix(payload).map_err(|_| CodecError::BadSize {
                    request,
                    size: payload.len(),
                })?;
            if h.num == 0 || h.num as usize > MAX_MEM_SLOTS {
                return Err(CodecError::BadRegionCount(h.num));
            }
            // QEMU sends exactly `num` regions; a frontend padding the
            // array to 8 entries is tolerated.
            let n = h.num as usize;
            let want = n * size_of::<MemRegion>();
            if rest.len() < want || rest.len() % size_of::<MemRegion>() != 0 {
                return Err(CodecError::BadSize {
                    request,
                    size: payload.len(),
                });
            }
            let regions = rest[..want]
                .chunks_exact(size_of::<MemRegion>())
                .map(|c| exact::<MemRegion>(request, c))
                .collect::<Result<Vec<_>, _>>()?;
            Message::SetMemTable(regions)
        }
        Request::SetVringNum => Message::SetVringNum(exact(request, payload)?),
        Request::SetVringAddr => Message::SetVringAddr(exact(request, payload)?),
        Request::SetVringBase => Message::SetVringBase(exact(request, payload)?),
        Request::GetVringBase => Message::GetVringBase(exact(request, payload)?),
        Request::SetVringKick => Message::SetVringKick(VringFd::from_u64(u64_of(payload)?)?),
        Request::SetVringCall => Message::SetVringCall(VringFd::from_u64(u64_of(payload)?)?),
        Request::SetVringErr => Message::SetVringErr(VringFd::from_u64(u64_of(payload)?)?),
        Request::GetProtocolFeatures => {
            no_payload(request, payload).map(|()| Message::GetProtocolFeatures)?
        }
        Request::SetProtocolFeatures => Message::SetProtocolFeatures(u64_of(payload)?),
        Request::GetQueueNum => no_payload(request, payload).map(|()| Message::GetQueueNum)?,
        Request::SetVringEnable => Message::SetVringEnable(exact(request, payload)?),
        Request::GetConfig | Request::SetConfig => {
            let (h, data) =
                ConfigHeader::read_from_prefix(payload).map_err(|_| CodecError::BadSize {
                    request,
                    size: payload.len(),
                })?;
            if h.size as usize > MAX_CONFIG {
                return Err(CodecError::BadConfigSize(h.size));
            }
            if data.len() != h.size as usize {
                return Err(CodecError::BadSize {
                    request,
                    size: payload.len(),
                });
            }
            let c = Config {
                offset: h.offset,
                flags: h.flags,
                data: data.to_vec(),
            };
            if request == Request::GetConfig {
                Message::GetConfig(c)
            } else {
                Message::SetConfig(c)
            }
        }
        Request::ResetDevice => no_payload(request, payload).map(|()| Message::ResetDevice)?,
        Request::GetMaxMemSlots => {
            no_payload(request, payload).map(|()| Message::GetMaxMemSlots)?
        }
        Request::AddMemReg | Request::RemMemReg => {
            // "Single Memory region description": 8 bytes of padding, then
            // the region.
            let body = payload
                .get(8..)
                .filter(|_| payload.len() == 8 + size_of::<MemRegion>())
                .ok_or(CodecError::BadSize {
                    request,
                    size: payload.len(),
                })?;
            let r = exact::<MemRegion>(request, body)?;
            if request == Request::AddMemReg {
                Message::AddMemReg(r)
            } else {
                Message::RemMemReg(r)
            }
        }
        Request::CreateCryptoSession => {
            Message::CreateCryptoSession(Box::new(exact(request, payload)?))
        }
        Request::CloseCryptoSession => Message::CloseCryptoSession(u64_of(payload)?),
        other => Message::Unsupported(other),
    };
    let (min, max) = match &msg {
        // QEMU up to 8.x passes the region's descriptor with REM_MEM_REG
        // too; it is accepted and closed.
        Message::RemMemReg(_) => (0, 1),
        // Unsupported requests may carry descriptors (log fd, backend
        // channel); they are closed unused.
        Message::Unsupported(_) => (0, MAX_FDS),
        m => (m.fd_count(), m.fd_count()),
    };
    if fds < min || fds > max {
        return Err(CodecError::FdCount {
            request,
            want: min,
            got: fds,
        });
    }
    Ok(msg)
}

/// Decodes a byte stream of back-to-back requests, each taken to carry
/// `fds` descriptors, until the bytes run out or a framing error makes the
/// rest unreadable. Total on any input: the fuzz target's body.
pub fn decode_all(data: &[u8], fds: usize) -> Vec<Result<Message, CodecError>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let h = match decode_header(rest) {
            Ok(h) => h,
            Err(e) => {
                out.push(Err(e));
                break;
            }
        };
        let end = HEADER_LEN + h.size as usize;
        let Some(payload) = rest.get(HEADER_LEN..end) else {
            out.push(Err(CodecError::Truncated {
                want: h.size as usize,
                got: rest.len() - HEADER_LEN,
            }));
            break;
        };
        out.push(decode(&h, payload, fds));
        rest = &rest[end..];
    }
    out
}

/// The fuzz body: the first byte picks the descriptor count, the rest is a
/// request stream; every request that decodes must encode back to a
/// message that decodes to itself.
pub fn fuzz_codec(data: &[u8]) {
    let Some((&n, stream)) = data.split_first() else {
        return;
    };
    let fds = usize::from(n) % (MAX_FDS + 2);
    for msg in decode_all(stream, fds).into_iter().flatten() {
        if matches!(msg, Message::Unsupported(_)) {
            continue;
        }
        let bytes = msg.encode(false);
        let again = decode_all(&bytes, msg.fd_count());
        assert_eq!(
            again,
            vec![Ok(msg)],
            "re-encoded message decodes differently"
        );
    }
}

/// One request read from a socket: header, payload and the descriptors
/// that came with it.
#[derive(Debug)]
pub struct Frame {
    /// The header (checked by [`decode_header`]).
    pub header: Header,
    /// Exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// The descriptors, owned (closed when dropped).
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// Decodes the request.
    pub fn decode(&self) -> Result<Message, CodecError> {
        decode(&self.header, &self.payload, self.fds.len())
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum RecvError {
    /// The socket failed (or timed out inside a message).
    Io(io::Error),
    /// The frontend closed the connection inside a message.
    Eof {
        /// Bytes of the message received.
        got: usize,
    },
    /// The bytes were not a valid frame.
    Codec(CodecError),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The socket's read timeout surfaces as EAGAIN: say what it is.
            RecvError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(
                    f,
                    "reading a message: the rest of it did not arrive within the read timeout"
                )
            }
            RecvError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => write!(
                f,
                "reading a message: the peer reset the connection (it exited with our reply unread?)"
            ),
            RecvError::Io(e) => write!(f, "reading a message: {e}"),
            RecvError::Eof { got } => {
                write!(f, "connection closed after {got} bytes of a message")
            }
            RecvError::Codec(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Io(e) => Some(e),
            RecvError::Codec(e) => Some(e),
            RecvError::Eof { .. } => None,
        }
    }
}

/// One `recvmsg` into `buf`, appending received descriptors to `fds`.
/// Returns the byte count (0 at end of stream).
fn recv_some(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<usize, RecvError> {
    const CMSG_SPACE: usize = 256 + MAX_FDS * size_of::<RawFd>();
    let mut cbuf = [0u64; CMSG_SPACE / 8];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is a valid "no name, no control" header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: `msg` points at `iov` (into `buf`) and `cbuf`, both live
        // and writable for the lengths given.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(RecvError::Io(e));
        }
        // Take ownership of every descriptor first, so that each is closed
        // whatever happens next.
        // SAFETY: `msg` was filled by the kernel; the CMSG macros walk the
        // control buffer within `msg_controllen`.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is a header inside the control buffer.
            let hdr = unsafe { &*cmsg };
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: as above; CMSG_LEN(0) is the header size.
                let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
                // SAFETY: the data of an SCM_RIGHTS message is an array of
                // ints of `data_len` bytes inside the control buffer.
                let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
                for i in 0..data_len / size_of::<RawFd>() {
                    // SAFETY: `i` is within the array; read unaligned since
                    // the buffer gives no alignment guarantee for ints.
                    let fd = unsafe { data.add(i).read_unaligned() };
                    // SAFETY: the kernel just installed `fd` in this process
                    // for us; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
            return Err(RecvError::Codec(CodecError::TooManyFds));
        }
        return Ok(n as usize);
    }
}

/// Reads exactly `buf.len()` bytes (descriptors collected on the way).
/// `Ok(false)` if the stream ended before the first byte and `eof_ok`.
fn recv_exact(
    sock: RawFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    already: usize,
    eof_ok: bool,
) -> Result<bool, RecvError> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_some(sock, &mut buf[got..], fds)?;
        if n == 0 {
            if got == 0 && eof_ok {
                return Ok(false);
            }
            return Err(RecvError::Eof { got: already + got });
        }
        got += n;
    }
    Ok(true)
}

/// Reads one request frame: `Ok(None)` when the frontend closed the
/// connection between messages. The header is checked; the payload is not
/// decoded.
pub fn recv_frame(sock: &impl AsRawFd) -> Result<Option<Frame>, RecvError> {
    let fd = sock.as_raw_fd();
    let mut fds = Vec::new();
    let mut hbuf = [0u8; HEADER_LEN];
    if !recv_exact(fd, &mut hbuf, &mut fds, 0, true)? {
        return Ok(None);
    }
    let header = decode_header(&hbuf).map_err(RecvError::Codec)?;
    let mut payload = vec![0u8; header.size as usize];
    recv_exact(fd, &mut payload, &mut fds, HEADER_LEN, false)?;
    Ok(Some(Frame {
        header,
        payload,
        fds,
    }))
}

/// Writes `bytes` with `fds` attached (`SCM_RIGHTS`), all of it.
pub fn send_with_fds(sock: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many file descriptors",
        ));
    }
    let fd = sock.as_raw_fd();
    let mut sent = 0;
    let mut cbuf = [0u64; (256 + MAX_FDS * size_of::<RawFd>()) / 8];
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut _,
            iov_len: rest.len(),
        };
        // SAFETY: a zeroed msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer holds `space` bytes (at most 256 +
            // 32 ints), so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    data_len as usize,
                );
            }
        }
        // SAFETY: `msg` points at live buffers of the lengths given.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's `VhostUserCryptoSession`: 632 bytes, `direction` at 33,
    /// the key at 56 and the authentication key at 120 (offsets checked
    /// against gcc's layout of QEMU's structs on x86_64).
    #[test]
    fn crypto_session_has_qemu_7_2_layout() {
        assert_eq!(size_of::<CryptoSession>(), 632);
        let mut c = <CryptoSession as zerocopy::FromZeros>::new_zeroed();
        c.session_id = -1;
        c.cipher_alg = 3;
        c.key_len = 16;
        c.op_type = 1;
        c.direction = 2;
        c.key[0] = 0xaa;
        c.auth_key[0] = 0xbb;
        let b = c.as_bytes();
        assert_eq!(&b[0..8], &(-1i64).to_le_bytes());
        assert_eq!(&b[8..12], &3u32.to_le_bytes());
        assert_eq!(&b[12..16], &16u32.to_le_bytes());
        assert_eq!((b[32], b[33]), (1, 2));
        assert_eq!((b[56], b[120]), (0xaa, 0xbb));
    }

    /// `CREATE_CRYPTO_SESSION` and `CLOSE_CRYPTO_SESSION` decode what they
    /// encode; the create reply carries the id; a short payload is refused.
    #[test]
    fn crypto_session_messages_round_trip() {
        let mut c = <CryptoSession as zerocopy::FromZeros>::new_zeroed();
        c.cipher_alg = 3;
        c.key_len = 32;
        let create = Message::CreateCryptoSession(Box::new(c));
        assert!(create.has_reply());
        for m in [create, Message::CloseCryptoSession(7)] {
            let bytes = m.encode(false);
            let h = decode_header(&bytes).unwrap();
            assert_eq!(decode(&h, &bytes[HEADER_LEN..], 0).unwrap(), m);
        }
        c.session_id = 5;
        match decode_reply(
            Request::CreateCryptoSession,
            false,
            &reply_crypto_session(&c),
        ) {
            Ok(Reply::CryptoSession(r)) => assert_eq!(r.session_id, 5),
            r => panic!("{r:?}"),
        }
        let short = Message::CloseCryptoSession(1).encode(false);
        let mut h = decode_header(&short).unwrap();
        h.request = Request::CreateCryptoSession.code();
        assert!(matches!(
            decode(&h, &short[HEADER_LEN..], 0),
            Err(CodecError::BadSize { .. })
        ));
    }
    use proptest::prelude::*;

    fn region() -> impl Strategy<Value = MemRegion> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(g, s, u, o)| {
            MemRegion {
                guest_addr: g,
                size: s,
                user_addr: u,
                mmap_offset: o,
            }
        })
    }

    fn state() -> impl Strategy<Value = VringState> {
        (any::<u32>(), any::<u32>()).prop_map(|(index, num)| VringState { index, num })
    }

    fn vring_fd() -> impl Strategy<Value = VringFd> {
        (any::<u8>(), any::<bool>()).prop_map(|(index, has_fd)| VringFd { index, has_fd })
    }

    fn config() -> impl Strategy<Value = Config> {
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_CONFIG),
        )
            .prop_map(|(offset, flags, data)| Config {
                offset,
                flags,
                data,
            })
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(Message::GetFeatures),
            any::<u64>().prop_map(Message::SetFeatures),
            Just(Message::SetOwner),
            Just(Message::ResetOwner),
            proptest::collection::vec(region(), 1..=MAX_MEM_SLOTS).prop_map(Message::SetMemTable),
            state().prop_map(Message::SetVringNum),
            (any::<[u32; 2]>(), any::<[u64; 4]>()).prop_map(|(a, b)| Message::SetVringAddr(
                VringAddr {
                    index: a[0],
                    flags: a[1],
                    desc: b[0],
                    used: b[1],
                    avail: b[2],
                    log: b[3],
                }
            )),
            state().prop_map(Message::SetVringBase),
            state().prop_map(Message::GetVringBase),
            vring_fd().prop_map(Message::SetVringKick),
            vring_fd().prop_map(Message::SetVringCall),
            vring_fd().prop_map(Message::SetVringErr),
            Just(Message::GetProtocolFeatures),
            any::<u64>().prop_map(Message::SetProtocolFeatures),
            Just(Message::GetQueueNum),
            state().prop_map(Message::SetVringEnable),
            config().prop_map(Message::GetConfig),
            config().prop_map(Message::SetConfig),
            Just(Message::ResetDevice),
            Just(Message::GetMaxMemSlots),
            region().prop_map(Message::AddMemReg),
            region().prop_map(Message::RemMemReg),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in message(), need_reply in any::<bool>()) {
            let bytes = msg.encode(need_reply);
            let h = decode_header(&bytes).unwrap();
            prop_assert_eq!(h.need_reply(), need_reply);
            prop_assert_eq!(decode(&h, &bytes[HEADER_LEN..], msg.fd_count()), Ok(msg));
        }

        #[test]
        fn any_bytes_decode_or_fail(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_codec(&data);
        }

        #[test]
        fn any_payload_after_a_valid_header_decodes_or_fails(
            code in 0u32..45,
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            fds in 0usize..4,
        ) {
            let mut bytes = frame(code, FLAG_VERSION, &payload);
            bytes.insert(0, fds as u8);
            fuzz_codec(&bytes);
        }
    }

    /// The seeds in `fuzz/corpus/vhost_user_codec` (the fuzz target's
    /// starting corpus): every one runs through the fuzz body, and the
    /// well-formed ones decode without error.
    #[test]
    fn corpus_seeds_replay() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/vhost_user_codec");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            fuzz_codec(&data);
            let name = e.file_name().to_string_lossy().into_owned();
            // The hand-written seeds are well-formed but for two; what the
            // fuzzer added (named by its hash) may be anything.
            let found = name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let bad = found || ["oversized", "unsupported_log_fd"].contains(&name.as_str());
            if !bad && let Some((&fds, stream)) = data.split_first() {
                for r in decode_all(stream, usize::from(fds)) {
                    assert!(r.is_ok(), "{name}: {r:?}");
                }
            }
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn header_rules() {
        assert_eq!(decode_header(&[0; 5]), Err(CodecError::ShortHeader(5)));
        let bad_version = frame(1, 2, &[]);
        assert!(matches!(
            decode_header(&bad_version),
            Err(CodecError::BadVersion(2))
        ));
        let reply = frame(1, FLAG_VERSION | FLAG_REPLY, &[]);
        assert_eq!(decode_header(&reply), Err(CodecError::ReplyFlag));
        let mut big = frame(1, FLAG_VERSION, &[]);
        big[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_ne_bytes());
        assert!(matches!(decode_header(&big), Err(CodecError::Oversized(_))));
    }

    #[test]
    fn fd_counts_are_checked() {
        let table = Message::SetMemTable(vec![MemRegion::default(); 2]).encode(false);
        let h = decode_header(&table).unwrap();
        assert!(matches!(
            decode(&h, &table[HEADER_LEN..], 1),
            Err(CodecError::FdCount {
                want: 2,
                got: 1,
                ..
            })
        ));
        let kick = Message::SetVringKick(VringFd {
            index: 0,
            has_fd: false,
        })
        .encode(false);
        let h = decode_header(&kick).unwrap();
        assert!(decode(&h, &kick[HEADER_LEN..], 1).is_err());
        assert!(decode(&h, &kick[HEADER_LEN..], 0).is_ok());
        let features = Message::GetFeatures.encode(false);
        let h = decode_header(&features).unwrap();
        assert!(decode(&h, &[], 1).is_err());
    }

    #[test]
    fn empty_or_huge_tables_and_unknown_codes_are_refused() {
        let mut t = Message::SetMemTable(vec![MemRegion::default()]).encode(false);
        t[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&0u32.to_ne_bytes());
        let h = decode_header(&t).unwrap();
        assert_eq!(
            decode(&h, &t[HEADER_LEN..], 0),
            Err(CodecError::BadRegionCount(0))
        );
        let unknown = frame(999, FLAG_VERSION, &[]);
        let h = decode_header(&unknown).unwrap();
        assert_eq!(decode(&h, &[], 0), Err(CodecError::UnknownRequest(999)));
        let log = frame(Request::SetLogFd.code(), FLAG_VERSION, &[]);
        let h = decode_header(&log).unwrap();
        assert_eq!(
            decode(&h, &[], 1),
            Ok(Message::Unsupported(Request::SetLogFd))
        );
    }

    #[test]
    fn replies_have_the_reply_flag() {
        let r = reply_u64(Request::GetFeatures, 7);
        let h = Header::read_from_bytes(&r[..HEADER_LEN]).unwrap();
        assert_eq!(h.flags, FLAG_VERSION | FLAG_REPLY);
        assert_eq!(h.size, 8);
        let c = reply_config(4, 0, &[1, 2, 3]);
        assert_eq!(c.len(), HEADER_LEN + 12 + 3);
    }

    #[test]
    fn replies_decode_to_what_was_encoded() {
        for r in [
            Request::GetFeatures,
            Request::GetProtocolFeatures,
            Request::GetQueueNum,
            Request::GetMaxMemSlots,
        ] {
            assert_eq!(
                decode_reply(r, false, &reply_u64(r, 42)),
                Ok(Reply::U64(42))
            );
        }
        let s = VringState { index: 1, num: 7 };
        assert_eq!(
            decode_reply(Request::GetVringBase, false, &reply_vring_state(s)),
            Ok(Reply::VringState(s))
        );
        let c = Config {
            offset: 4,
            flags: 1,
            data: vec![1, 2, 3],
        };
        assert_eq!(
            decode_reply(Request::GetConfig, false, &reply_config(4, 1, &[1, 2, 3])),
            Ok(Reply::Config(c))
        );
        // A REPLY_ACK status, also to a request with a reply of its own
        // that could not be decoded.
        for r in [Request::SetMemTable, Request::GetConfig] {
            assert_eq!(decode_reply(r, true, &reply_u64(r, 1)), Ok(Reply::U64(1)));
        }
    }

    #[test]
    fn replies_that_do_not_answer_the_request_are_refused() {
        let r = reply_u64(Request::GetFeatures, 1);
        assert_eq!(
            decode_reply(Request::GetQueueNum, false, &r),
            Err(CodecError::WrongReply {
                want: Request::GetQueueNum,
                got: 1
            })
        );
        assert_eq!(
            decode_reply(Request::SetOwner, false, &reply_u64(Request::SetOwner, 0)),
            Err(CodecError::NoReply(Request::SetOwner))
        );
        // A request is not a reply.
        let req = Message::GetFeatures.encode(false);
        assert_eq!(
            decode_reply(Request::GetFeatures, false, &req),
            Err(CodecError::NotAReply(FLAG_VERSION))
        );
        assert_eq!(
            decode_reply(Request::GetFeatures, false, &r[..15]),
            Err(CodecError::Truncated { want: 8, got: 3 })
        );
        assert_eq!(
            decode_reply(Request::GetFeatures, false, &r[..5]),
            Err(CodecError::ShortHeader(5))
        );
        // A status where the configuration belongs.
        let status = reply_u64(Request::GetConfig, 0);
        assert!(matches!(
            decode_reply(Request::GetConfig, false, &status),
            Err(CodecError::BadSize { .. })
        ));
        let mut cut = reply_config(0, 0, &[9; 4]);
        cut.truncate(cut.len() - 1);
        let h = (cut.len() - HEADER_LEN) as u32;
        cut[8..12].copy_from_slice(&h.to_ne_bytes());
        assert!(matches!(
            decode_reply(Request::GetConfig, false, &cut),
            Err(CodecError::BadSize { .. })
        ));
    }

    #[test]
    fn frames_cross_a_socket_with_fds() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let msg = Message::AddMemReg(MemRegion {
            guest_addr: 0,
            size: 4096,
            user_addr: 0x1000,
            mmap_offset: 0,
        });
        send_with_fds(&a, &msg.encode(true), &[f.as_raw_fd()]).unwrap();
        drop(a);
        let frame = recv_frame(&b).unwrap().unwrap();
        assert_eq!(frame.fds.len(), 1);
        assert!(frame.header.need_reply());
        assert_eq!(frame.decode(), Ok(msg));
        assert!(recv_frame(&b).unwrap().is_none());
    }

    #[test]
    fn a_stream_cut_inside_a_message_is_an_error() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let bytes = Message::SetFeatures(1).encode(false);
        send_with_fds(&a, &bytes[..15], &[]).unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(RecvError::Eof { got: 15 })));
    }

    #[test]
    fn a_read_timeout_is_said_in_words() {
        let e = RecvError::Io(io::Error::from_raw_os_error(libc::EAGAIN)).to_string();
        assert!(e.contains("did not arrive within the read timeout"), "{e}");
        assert!(!e.contains("os error"), "{e}");
        let e = RecvError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).to_string();
        assert!(e.contains("reset the connection"), "{e}");
    }
}
