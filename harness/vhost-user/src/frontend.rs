//! The vhost-user frontend: an external backend process behind one of our
//! virtio-mmio slots (QEMU `docs/interop/vhost-user.rst`; virtio §4.2).
//!
//! [`VhostUserDevice`] is a [`VirtioDevice`] whose queues live in another
//! process: at realize it connects, takes ownership (`SET_OWNER`), reads
//! the backend's features, protocol features and configuration space; at
//! DRIVER_OK ([`VirtioDevice::activate`]) it sends the features, the memory
//! table (guest RAM must be a shared, fd-backed mapping: [`SharedRam`]) and
//! every ready ring with its kick and call eventfds. Kicks: the slot's
//! `QueueNotify` (ioeventfd or trapped) becomes a write to the ring's kick
//! eventfd. Calls: on virtio-mmio the backend's call eventfd cannot go
//! straight to the irqfd, since `InterruptStatus` must be set first
//! (§4.2.2), so the call eventfds are the device's readiness fds: the
//! slot's worker wakes, [`VirtioDevice::backend_ready`] drains them and
//! the transport sets `USED_BUFFER` before raising the line. A backend that
//! closes its socket (dies) is reported once; the device then asks for
//! `DEVICE_NEEDS_RESET` (§2.1.2) and later requests fail, while the VM
//! runs on. Not done: the dirty log, inflight tracking, reconnection, the
//! backend-initiated channel, and packed rings.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::hostmem::HostMemory;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::split::layout::Area;
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use zerocopy::FromBytes;

use crate::codec::{
    self, Config, CryptoSession, FLAG_REPLY, HEADER_LEN, Header, MAX_PAYLOAD, MemRegion, Message,
    Request, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringFd, VringState, protocol,
};

/// How long one operation (the handshake at connect, an activation, a
/// reset, a configuration write) may take in all, however many requests it
/// makes and however slowly the backend answers, before the backend is
/// declared dead (issue 16, finding 15). The vCPU whose register write
/// started the operation waits for it, so this bounds the guest's stall.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The protocol features the frontend uses when the backend offers them.
pub const WANTED_PROTOCOL: u64 =
    protocol::MQ | protocol::REPLY_ACK | protocol::CONFIG | protocol::RESET_DEVICE;

/// Size of the virtio-blk configuration space read from the backend
/// (`struct virtio_blk_config` up to `write_zeroes_may_unmap`, §5.2.4).
pub const BLK_CONFIG_LEN: usize = 60;

/// Offset of virtio-blk's `num_queues` (§5.2.4).
const BLK_NUM_QUEUES: usize = 34;

/// virtio-net feature bits the frontend provides itself (§5.1.3):
/// `VIRTIO_NET_F_MAC` (5) and `VIRTIO_NET_F_STATUS` (16).
const NET_OWN_FEATURES: u64 = (1 << 5) | (1 << 16);
/// virtio-net bits this frontend cannot carry: `MTU` (3, no config here),
/// the control queue and what needs it (17-23).
const NET_REFUSED: u64 = (1 << 3) | (0x7f << 17);

/// Transport bits a virtio-mmio slot with eventfd kicks can carry: the
/// device-specific bits 0-23, indirect descriptors, event index and
/// VERSION_1 (no packed rings, no notification data: a kick eventfd
/// carries no value).
const TRANSPORT_MASK: u64 = 0x00ff_ffff
    | TransportFeatures::RING_INDIRECT_DESC.bits()
    | TransportFeatures::RING_EVENT_IDX.bits()
    | TransportFeatures::VERSION_1.bits();

/// Which device an external backend provides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VhostUserKind {
    /// `vhost-user-blk` (§5.2): configuration space from the backend.
    Blk {
        /// Request queues.
        num_queues: u16,
        /// Maximum size of each queue.
        queue_size: u16,
    },
    /// `vhost-user-rng` (§5.4): one queue, no configuration space.
    Rng,
    /// `-netdev vhost-user` (§5.1): one receive and one transmit queue;
    /// the configuration space (MAC, link up) is the frontend's own.
    Net {
        /// The MAC address the guest reads.
        mac: [u8; 6],
        /// Maximum size of each queue.
        queue_size: u16,
    },
    /// `vhost-user-device` (QEMU 8.2; `vhost-user-test-device` later): any
    /// device type a third-party backend provides. The queues and the size
    /// of the configuration space are the options'; features, the
    /// configuration space's contents and its writes are the backend's
    /// (`CONFIG` is required when `config_size` is not 0).
    Generic {
        /// The device type (§5).
        device_type: DeviceType,
        /// Queues.
        num_vqs: u16,
        /// Maximum size of each queue.
        vq_size: u16,
        /// Bytes of configuration space.
        config_size: u16,
    },
    /// `-object cryptodev-vhost-user` (§5.9): the backend serves the data
    /// queues; the frontend keeps the control queue and makes sessions by
    /// message (`CREATE_CRYPTO_SESSION`, [`crate::crypto`]).
    Crypto {
        /// Data queues.
        data_queues: u16,
        /// Maximum size of each queue.
        queue_size: u16,
    },
}

impl VhostUserKind {
    /// QEMU's `-device` name.
    pub fn name(&self) -> &'static str {
        match self {
            VhostUserKind::Blk { .. } => "vhost-user-blk",
            VhostUserKind::Rng => "vhost-user-rng",
            VhostUserKind::Net { .. } => "vhost-user-net",
            VhostUserKind::Generic { .. } => "vhost-user-device",
            VhostUserKind::Crypto { .. } => "cryptodev-vhost-user",
        }
    }

    fn device_type(&self) -> DeviceType {
        match self {
            VhostUserKind::Blk { .. } => DeviceType::Blk,
            VhostUserKind::Rng => DeviceType::Rng,
            VhostUserKind::Net { .. } => DeviceType::Net,
            VhostUserKind::Generic { device_type, .. } => *device_type,
            VhostUserKind::Crypto { .. } => DeviceType::Crypto,
        }
    }

    fn queue_sizes(&self) -> Vec<u16> {
        match self {
            VhostUserKind::Blk {
                num_queues,
                queue_size,
            } => vec![*queue_size; usize::from(*num_queues)],
            VhostUserKind::Rng => vec![256],
            VhostUserKind::Net { queue_size, .. } => vec![*queue_size; 2],
            VhostUserKind::Generic {
                num_vqs, vq_size, ..
            } => vec![*vq_size; usize::from(*num_vqs)],
            VhostUserKind::Crypto {
                data_queues,
                queue_size,
            } => vec![*queue_size; usize::from(*data_queues)],
        }
    }
}

/// Why the frontend could not set up or drive its backend.
#[derive(Debug)]
pub enum FrontendError {
    /// Guest RAM is not a shared, fd-backed mapping the backend can map.
    NotShared {
        /// What guest RAM is.
        memory: String,
    },
    /// Duplicating the RAM's fd or creating an eventfd failed.
    Os(io::Error),
    /// Connecting to the backend's socket failed.
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        err: io::Error,
    },
    /// Sending a request or reading its reply failed (a timeout included).
    Io {
        /// The request.
        request: Request,
        /// Why.
        err: io::Error,
    },
    /// The backend closed the connection.
    Closed {
        /// The request under way.
        request: Request,
    },
    /// The backend hung up the socket while the device was live.
    HungUp,
    /// The backend's reply was malformed.
    BadReply {
        /// The request.
        request: Request,
        /// What was wrong.
        why: String,
    },
    /// The operation ran out of time ([`OPERATION_TIMEOUT`]) during this
    /// request: the backend answers too slowly, or not at all.
    Deadline {
        /// The request under way.
        request: Request,
        /// The operation's time limit.
        limit: Duration,
    },
    /// The backend refused a request (`REPLY_ACK` with a non-zero status).
    Refused {
        /// The request.
        request: Request,
        /// The status it replied.
        status: u64,
    },
    /// The backend does not offer something the frontend needs.
    Missing(&'static str),
    /// More queues asked for than the backend has (`GET_QUEUE_NUM`).
    TooManyQueues {
        /// Asked for.
        wanted: u16,
        /// The backend's maximum.
        max: u64,
    },
    /// A ring lies outside guest RAM.
    RingOutsideRam {
        /// The queue.
        queue: u16,
    },
}

impl fmt::Display for FrontendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrontendError::NotShared { memory } => write!(
                f,
                "vhost-user needs guest RAM the backend can map, but it is {memory}: add \
                 `-object memory-backend-memfd,id=mem,size=<RAM>,share=on -machine memory-backend=mem` \
                 (or memory-backend-file with share=on)"
            ),
            FrontendError::Os(e) => write!(f, "vhost-user frontend: {e}"),
            FrontendError::Connect { path, err } => {
                write!(
                    f,
                    "connecting to vhost-user backend {}: {err}",
                    path.display()
                )?;
                // What the user most likely has to do.
                match err.kind() {
                    std::io::ErrorKind::NotFound => f.write_str(
                        "; no socket there: start the backend first (e.g. `virtio-harness vhost-user --socket PATH …`)",
                    ),
                    std::io::ErrorKind::ConnectionRefused => f.write_str(
                        "; a socket file is there but nothing listens on it (did the backend exit?)",
                    ),
                    _ => Ok(()),
                }
            }
            FrontendError::Io { request, err } => {
                write!(f, "vhost-user {request:?}: {err}")
            }
            FrontendError::Closed { request } => {
                write!(f, "vhost-user backend closed the connection ({request:?})")
            }
            FrontendError::HungUp => f.write_str("vhost-user backend hung up (it died?)"),
            FrontendError::BadReply { request, why } => {
                write!(f, "vhost-user {request:?}: bad reply: {why}")
            }
            FrontendError::Deadline { request, limit } => write!(
                f,
                "vhost-user {request:?}: the backend did not answer within the operation's {} ms",
                limit.as_millis()
            ),
            FrontendError::Refused { request, status } => {
                write!(
                    f,
                    "vhost-user backend refused {request:?} (status {status})"
                )
            }
            FrontendError::Missing(what) => write!(f, "vhost-user backend lacks {what}"),
            FrontendError::TooManyQueues { wanted, max } => write!(
                f,
                "vhost-user backend has {max} queues, {wanted} were asked for"
            ),
            FrontendError::RingOutsideRam { queue } => {
                write!(f, "vhost-user: queue {queue}'s rings lie outside guest RAM")
            }
        }
    }
}

impl std::error::Error for FrontendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrontendError::Os(e) => Some(e),
            FrontendError::Connect { err, .. } | FrontendError::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// Guest RAM as the backend sees it: the fd behind the mapping and one
/// memory-table region per RAM range, whose `user_addr` is where this
/// process has it mapped (`SET_VRING_ADDR` addresses are in that space).
#[derive(Debug)]
pub struct SharedRam {
    fd: OwnedFd,
    regions: Vec<MemRegion>,
}

impl SharedRam {
    /// Describes `memory` placed at the guest-physical ranges `ram`
    /// (`(base, size)`, laid out one after the other from offset 0 of the
    /// memory, as a monitor places its RAM). Refused unless the memory is
    /// fd-backed and mapped shared.
    pub fn new(memory: &HostMemory, ram: &[(u64, u64)]) -> Result<SharedRam, FrontendError> {
        let not_shared = || FrontendError::NotShared {
            memory: if memory.is_shared() {
                memory.describe()
            } else {
                format!("{} without share=on", memory.describe())
            },
        };
        let fd = match memory.fd() {
            Some(fd) if memory.is_shared() => fd.try_clone_to_owned().map_err(FrontendError::Os)?,
            _ => return Err(not_shared()),
        };
        let mut offset = 0u64;
        let mut regions = Vec::new();
        for &(base, size) in ram {
            let end = offset.checked_add(size);
            if end.is_none_or(|e| e > memory.len() as u64) {
                return Err(not_shared());
            }
            regions.push(MemRegion {
                guest_addr: base,
                size,
                user_addr: (memory.as_ptr() as u64).wrapping_add(offset),
                mmap_offset: offset,
            });
            offset = end.unwrap_or(offset);
        }
        Ok(SharedRam { fd, regions })
    }

    /// The memory table.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions
    }

    /// This process's address of guest-physical `gpa..gpa + len`, if it
    /// lies inside one region.
    pub fn translate(&self, gpa: u64, len: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = gpa.checked_sub(r.guest_addr)?;
            (off.checked_add(len)? <= r.size).then(|| r.user_addr + off)
        })
    }
}

/// Counters of one frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendStats {
    /// Requests sent to the backend.
    pub requests: u64,
    /// Kicks forwarded to the backend.
    pub kicks: u64,
    /// Calls from the backend relayed as interrupts.
    pub calls: u64,
}

/// A virtio device served by an external vhost-user backend.
pub struct VhostUserDevice {
    kind: VhostUserKind,
    path: PathBuf,
    sock: UnixStream,
    ram: Arc<SharedRam>,
    backend_features: u64,
    protocol: u64,
    offered: u64,
    sizes: Vec<u16>,
    config: Vec<u8>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    running: Vec<u16>,
    dead: Option<String>,
    stats: FrontendStats,
    /// The time limit of one operation.
    limit: Duration,
    /// When the operation under way must be done.
    deadline: Instant,
}

impl fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("offered", &self.offered)
            .field("protocol", &self.protocol)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Connects to the backend at `path` and reads what the device offers:
    /// `SET_OWNER`, `GET_FEATURES`, protocol features, `GET_QUEUE_NUM`
    /// (with `MQ`) and, for blk, `GET_CONFIG`.
    pub fn connect(
        path: &Path,
        kind: VhostUserKind,
        ram: Arc<SharedRam>,
    ) -> Result<VhostUserDevice, FrontendError> {
        Self::connect_within(path, kind, ram, OPERATION_TIMEOUT)
    }

    /// [`connect`](Self::connect) with `limit` in place of
    /// [`OPERATION_TIMEOUT`] for this and every later operation.
    pub fn connect_within(
        path: &Path,
        kind: VhostUserKind,
        ram: Arc<SharedRam>,
        limit: Duration,
    ) -> Result<VhostUserDevice, FrontendError> {
        let sock = UnixStream::connect(path).map_err(|err| FrontendError::Connect {
            path: path.to_path_buf(),
            err,
        })?;
        let sizes = kind.queue_sizes();
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for _ in &sizes {
            kicks.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::Os)?);
            calls.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::Os)?);
        }
        let mut dev = VhostUserDevice {
            kind,
            path: path.to_path_buf(),
            sock,
            ram,
            backend_features: 0,
            protocol: 0,
            offered: 0,
            sizes,
            config: Vec::new(),
            kicks,
            calls,
            running: Vec::new(),
            dead: None,
            stats: FrontendStats::default(),
            limit,
            deadline: Instant::now() + limit,
        };
        dev.begin();
        dev.handshake()?;
        Ok(dev)
    }

    fn handshake(&mut self) -> Result<(), FrontendError> {
        self.send(&Message::SetOwner, &[])?;
        self.backend_features = self.get_u64(&Message::GetFeatures)?;
        if self.backend_features & TransportFeatures::VERSION_1.bits() == 0 {
            return Err(FrontendError::Missing("VIRTIO_F_VERSION_1"));
        }
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = self.get_u64(&Message::GetProtocolFeatures)?;
            // REPLY_ACK applies from the next request on.
            let mut wanted = offered & WANTED_PROTOCOL;
            if matches!(self.kind, VhostUserKind::Crypto { .. }) {
                wanted |= offered & protocol::CRYPTO_SESSION;
            }
            self.send(&Message::SetProtocolFeatures(wanted), &[])?;
            self.protocol = wanted;
        }
        let queues = u16::try_from(self.sizes.len()).unwrap_or(u16::MAX);
        if self.protocol & protocol::MQ != 0 {
            let max = self.get_u64(&Message::GetQueueNum)?;
            if u64::from(queues) > max {
                return Err(FrontendError::TooManyQueues {
                    wanted: queues,
                    max,
                });
            }
        }
        let mut offered = self.backend_features & TRANSPORT_MASK;
        match self.kind.clone() {
            VhostUserKind::Blk { num_queues, .. } => {
                if self.protocol & protocol::CONFIG == 0 {
                    return Err(FrontendError::Missing(
                        "VHOST_USER_PROTOCOL_F_CONFIG (the blk configuration space)",
                    ));
                }
                let mut config = self.get_config(BLK_CONFIG_LEN)?;
                // The guest sees the queues this slot has (§5.2.4).
                if let Some(n) = config.get_mut(BLK_NUM_QUEUES..BLK_NUM_QUEUES + 2) {
                    let theirs = u16::from_le_bytes([n[0], n[1]]);
                    let ours = if theirs == 0 {
                        num_queues
                    } else {
                        theirs.min(num_queues)
                    };
                    n.copy_from_slice(&ours.to_le_bytes());
                }
                self.config = config;
            }
            VhostUserKind::Rng => {}
            VhostUserKind::Crypto { data_queues, .. } => {
                if self.protocol & protocol::CRYPTO_SESSION == 0 {
                    return Err(FrontendError::Missing(
                        "VHOST_USER_PROTOCOL_F_CRYPTO_SESSION (sessions are made by message)",
                    ));
                }
                let theirs = if self.protocol & protocol::CONFIG != 0 {
                    Some(self.get_config(crate::crypto::CONFIG_LEN)?)
                } else {
                    None
                };
                self.config = crate::crypto::frontend_config(theirs.as_deref(), data_queues)?;
            }
            VhostUserKind::Generic { config_size, .. } => {
                if config_size > 0 {
                    if self.protocol & protocol::CONFIG == 0 {
                        return Err(FrontendError::Missing(
                            "VHOST_USER_PROTOCOL_F_CONFIG (config_size is not 0)",
                        ));
                    }
                    self.config = self.get_config(usize::from(config_size))?;
                }
            }
            VhostUserKind::Net { mac, .. } => {
                offered = (offered & !NET_REFUSED) | NET_OWN_FEATURES;
                let mut c = mac.to_vec();
                // status: VIRTIO_NET_S_LINK_UP; max_virtqueue_pairs: 1.
                c.extend_from_slice(&1u16.to_le_bytes());
                c.extend_from_slice(&1u16.to_le_bytes());
                self.config = c;
            }
        }
        self.offered = offered;
        Ok(())
    }

    /// The device kind.
    pub fn kind(&self) -> &VhostUserKind {
        &self.kind
    }

    /// The backend's socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The features the backend offered (`GET_FEATURES`).
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> u64 {
        self.protocol
    }

    /// Why the backend is considered gone, once it is.
    pub fn dead(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// Counters.
    pub fn stats(&self) -> FrontendStats {
        self.stats
    }

    /// The fds the slot's worker must watch: every call eventfd and the
    /// socket (its hang-up reveals a dead backend).
    pub fn ready_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.calls.iter().map(|c| c.as_raw_fd()).collect();
        fds.push(self.sock.as_raw_fd());
        fds
    }

    /// Starts an operation: its requests share one deadline.
    fn begin(&mut self) {
        self.deadline = Instant::now() + self.limit;
    }

    /// Sets the socket's timeouts to what is left of the operation's time,
    /// or fails if none is left. Called before every blocking socket call,
    /// so a backend that trickles its reply a byte at a time cannot stretch
    /// the operation either.
    fn arm(&self, request: Request) -> Result<(), FrontendError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FrontendError::Deadline {
                request,
                limit: self.limit,
            });
        }
        // A zero timeout would mean "block forever".
        let left = Some(left.max(Duration::from_millis(1)));
        self.sock
            .set_read_timeout(left)
            .and_then(|()| self.sock.set_write_timeout(left))
            .map_err(|err| FrontendError::Io { request, err })
    }

    /// Fills `buf` from the socket within the operation's deadline.
    fn read_full(&mut self, buf: &mut [u8], request: Request) -> Result<(), FrontendError> {
        let mut done = 0;
        while done < buf.len() {
            self.arm(request)?;
            match self.sock.read(&mut buf[done..]) {
                Ok(0) => return Err(FrontendError::Closed { request }),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(FrontendError::Closed { request });
                }
                Err(err) => return Err(FrontendError::Io { request, err }),
            }
        }
        Ok(())
    }

    fn need_reply(&self) -> bool {
        self.protocol & protocol::REPLY_ACK != 0
    }

    /// Sends `msg` (with `fds`); with `REPLY_ACK`, waits for the ack.
    fn send(&mut self, msg: &Message, fds: &[RawFd]) -> Result<(), FrontendError> {
        let ack = self.need_reply() && !msg.has_reply();
        self.write(msg, ack, fds)?;
        if ack {
            let status = self.read_u64(msg.request())?;
            if status != 0 {
                return Err(FrontendError::Refused {
                    request: msg.request(),
                    status,
                });
            }
        }
        Ok(())
    }

    fn write(&mut self, msg: &Message, ack: bool, fds: &[RawFd]) -> Result<(), FrontendError> {
        self.stats.requests += 1;
        let request = msg.request();
        self.arm(request)?;
        let mut bytes = msg.encode(ack);
        let sent = codec::send_with_fds(&self.sock, &bytes, fds);
        // A crypto session's keys do not linger in freed memory.
        bytes.fill(0);
        sent.map_err(|err| {
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return FrontendError::Deadline {
                    request,
                    limit: self.limit,
                };
            }
            if matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                FrontendError::Closed { request }
            } else {
                FrontendError::Io { request, err }
            }
        })
    }

    /// Reads the reply to `request`: its payload.
    fn read_reply(&mut self, request: Request) -> Result<Vec<u8>, FrontendError> {
        let bad = |why: String| FrontendError::BadReply { request, why };
        let mut h = [0u8; HEADER_LEN];
        self.read_full(&mut h, request)?;
        let header = Header::read_from_bytes(&h).map_err(|_| bad("short header".into()))?;
        if header.request != request.code() {
            return Err(bad(format!("reply to request {}", header.request)));
        }
        if header.flags & FLAG_REPLY == 0 {
            return Err(bad("the reply flag is clear".into()));
        }
        let size = header.size as usize;
        if size > MAX_PAYLOAD {
            return Err(bad(format!("{size} bytes of payload")));
        }
        let mut payload = vec![0u8; size];
        self.read_full(&mut payload, request)?;
        Ok(payload)
    }

    fn read_u64(&mut self, request: Request) -> Result<u64, FrontendError> {
        let p = self.read_reply(request)?;
        <[u8; 8]>::try_from(p.as_slice())
            .map(u64::from_ne_bytes)
            .map_err(|_| FrontendError::BadReply {
                request,
                why: format!("{} bytes, not a u64", p.len()),
            })
    }

    fn get_u64(&mut self, msg: &Message) -> Result<u64, FrontendError> {
        self.write(msg, false, &[])?;
        self.read_u64(msg.request())
    }

    fn get_config(&mut self, len: usize) -> Result<Vec<u8>, FrontendError> {
        let msg = Message::GetConfig(Config {
            offset: 0,
            flags: 0,
            data: vec![0; len],
        });
        self.write(&msg, false, &[])?;
        let p = self.read_reply(Request::GetConfig)?;
        let bad = |why: String| FrontendError::BadReply {
            request: Request::GetConfig,
            why,
        };
        let size = p
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| bad("short".into()))?;
        let data = p.get(12..).unwrap_or_default();
        if size as usize != len {
            return Err(bad(format!("{size} bytes of {len} (the backend refused)")));
        }
        if data.len() != len {
            return Err(bad(format!(
                "its header says {size} bytes, {} came",
                data.len()
            )));
        }
        Ok(data.to_vec())
    }

    /// Asks the backend for the crypto session `session` describes
    /// (`CREATE_CRYPTO_SESSION`, QEMU 7.2's layout): its id, or `None` when
    /// the backend refused it (a negative id). A backend that does not
    /// answer is declared dead ([`DeviceError::BackendGone`]).
    pub fn create_crypto_session(
        &mut self,
        session: &CryptoSession,
    ) -> Result<Option<u64>, DeviceError> {
        if self.dead.is_some() {
            return Err(DeviceError::BackendGone);
        }
        self.begin();
        let request = Request::CreateCryptoSession;
        let mut msg = Message::CreateCryptoSession(Box::new(*session));
        let sent = self.write(&msg, false, &[]);
        // The message's copy of the keys is wiped before it is freed.
        if let Message::CreateCryptoSession(c) = &mut msg {
            c.key.fill(0);
            c.auth_key.fill(0);
        }
        let reply = sent.and_then(|()| self.read_reply(request));
        let mut reply = reply.map_err(|e| self.fail(e))?;
        let parsed = CryptoSession::read_from_bytes(&reply)
            .map(|c| c.session_id)
            .map_err(drop);
        reply.fill(0);
        match parsed {
            Ok(id) => Ok(u64::try_from(id).ok()),
            Err(_) => {
                let why = format!(
                    "{} bytes, not a session ({})",
                    reply.len(),
                    size_of::<CryptoSession>()
                );
                Err(self.fail(FrontendError::BadReply { request, why }))
            }
        }
    }

    /// Tells the backend that crypto session `id` is closed
    /// (`CLOSE_CRYPTO_SESSION`): `false` when the backend refused it (a
    /// non-zero `REPLY_ACK`; without `REPLY_ACK` nothing is answered).
    pub fn close_crypto_session(&mut self, id: u64) -> Result<bool, DeviceError> {
        if self.dead.is_some() {
            return Err(DeviceError::BackendGone);
        }
        self.begin();
        match self.send(&Message::CloseCryptoSession(id), &[]) {
            Ok(()) => Ok(true),
            Err(FrontendError::Refused { .. }) => Ok(false),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Records that the backend is gone (once, logged) and returns the
    /// error the transport turns into `DEVICE_NEEDS_RESET`.
    fn fail(&mut self, e: FrontendError) -> DeviceError {
        if self.dead.is_none() {
            let why = format!("{} at {}: {e}", self.kind.name(), self.path.display());
            eprintln!("vhost-user frontend: {why}");
            self.dead = Some(why);
        }
        DeviceError::BackendGone
    }

    fn start(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), FrontendError> {
        let mut acked = features & self.backend_features;
        acked |= self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        self.send(&Message::SetFeatures(acked), &[])?;
        let regions = self.ram.regions().to_vec();
        let fd = self.ram.fd.as_fd().as_raw_fd();
        let fds = vec![fd; regions.len()];
        self.send(&Message::SetMemTable(regions), &fds)?;
        for (i, q) in queues.iter().enumerate() {
            let Some(layout) = q.layout else {
                continue;
            };
            let queue = u16::try_from(i).unwrap_or(u16::MAX);
            let index = u32::from(queue);
            let addr = |area: Area, gpa: u64| {
                self.ram
                    .translate(gpa, layout.area_len(area))
                    .ok_or(FrontendError::RingOutsideRam { queue })
            };
            let vring = VringAddr {
                index,
                flags: 0,
                desc: addr(Area::Descriptors, layout.desc_table().0)?,
                used: addr(Area::Used, layout.used_ring().0)?,
                avail: addr(Area::Avail, layout.avail_ring().0)?,
                log: 0,
            };
            let (Some(kick), Some(call)) = (self.kicks.get(i), self.calls.get(i)) else {
                continue;
            };
            let (kick, call) = (kick.as_raw_fd(), call.as_raw_fd());
            let num = u32::from(layout.size().get());
            self.send(&Message::SetVringNum(VringState { index, num }), &[])?;
            self.send(&Message::SetVringBase(VringState { index, num: 0 }), &[])?;
            self.send(&Message::SetVringAddr(vring), &[])?;
            let vfd = VringFd {
                index: index as u8,
                has_fd: true,
            };
            self.send(&Message::SetVringCall(vfd), &[call])?;
            self.send(&Message::SetVringKick(vfd), &[kick])?;
            if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.send(&Message::SetVringEnable(VringState { index, num: 1 }), &[])?;
            }
            self.running.push(queue);
        }
        if !self.need_reply() {
            // Without REPLY_ACK nothing above was answered, so the driver's
            // first kick could reach the backend before it took the rings
            // in; rust-vmm's vhost-user-backend then drops that kick
            // (rust-vmm/vhost issue 247) and the queue never starts. The
            // backend handles requests in order: once it answers this
            // one, it has handled them all.
            self.get_u64(&Message::GetFeatures)?;
        }
        Ok(())
    }

    /// Stops the backend's ring `queue` (`GET_VRING_BASE`), if it runs.
    fn stop_ring(&mut self, queue: u16) -> Result<(), FrontendError> {
        let Some(at) = self.running.iter().position(|q| *q == queue) else {
            return Ok(());
        };
        self.running.remove(at);
        let state = VringState {
            index: u32::from(queue),
            num: 0,
        };
        self.write(&Message::GetVringBase(state), false, &[])?;
        self.read_reply(Request::GetVringBase)?;
        Ok(())
    }

    fn stop(&mut self) -> Result<(), FrontendError> {
        while let Some(&queue) = self.running.first() {
            self.stop_ring(queue)?;
        }
        if self.protocol & protocol::RESET_DEVICE != 0 {
            self.send(&Message::ResetDevice, &[])?;
        }
        Ok(())
    }

    /// Whether the backend closed its end of the socket.
    fn hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n <= 0 {
            return false;
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return true;
        }
        let mut b = [0u8; 1];
        // SAFETY: peeks at most one byte into a valid buffer.
        let got = unsafe {
            libc::recv(
                pfd.fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got == 0
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> DeviceType {
        self.kind.device_type()
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_devices::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // blk's writable field (`writeback`, §5.2.4) and any write to a
        // generic device's configuration go to the backend, which owns the
        // configuration.
        let writable = matches!(
            self.kind,
            VhostUserKind::Blk { .. } | VhostUserKind::Generic { .. }
        );
        if !writable || self.dead.is_some() {
            return;
        }
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        let Some(end) = off
            .checked_add(data.len())
            .filter(|e| *e <= self.config.len())
        else {
            return;
        };
        self.config[off..end].copy_from_slice(data);
        self.begin();
        let msg = Message::SetConfig(Config {
            offset: off as u32,
            flags: 0,
            data: data.to_vec(),
        });
        if let Err(e) = self.send(&msg, &[]) {
            self.fail(e);
        }
    }

    fn config_len(&self) -> usize {
        self.config.len()
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        if self.dead.is_some() {
            return Err(DeviceError::BackendGone);
        }
        self.begin();
        self.start(features, &queues).map_err(|e| self.fail(e))
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if self.dead.is_some() {
            return Err(DeviceError::BackendGone);
        }
        let kick = self
            .kicks
            .get(usize::from(queue))
            .ok_or(DeviceError::NoSuchQueue { queue })?;
        // A full counter (never in practice) still wakes the backend.
        let _ = kick.write(1);
        self.stats.kicks += 1;
        Ok(Served::default())
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        for c in &self.calls {
            if c.read().is_ok_and(|n| n > 0) {
                served.interrupt = true;
                self.stats.calls += 1;
            }
        }
        if self.dead.is_none() && self.hung_up() {
            return Err(self.fail(FrontendError::HungUp));
        }
        Ok(served)
    }

    /// The backend stops the ring (`GET_VRING_BASE`, which vhost-user
    /// backends answer only once they no longer touch it); its last calls
    /// are taken as an interrupt.
    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if self.dead.is_some() {
            return Err(DeviceError::BackendGone);
        }
        self.begin();
        self.stop_ring(queue).map_err(|e| self.fail(e))?;
        self.backend_ready()
    }

    fn reset(&mut self) {
        for c in &self.calls {
            let _ = c.read();
        }
        for k in &self.kicks {
            let _ = k.read();
        }
        if self.dead.is_some() {
            self.running.clear();
            return;
        }
        self.begin();
        if let Err(e) = self.stop() {
            self.fail(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_private_ram_is_refused_with_the_fix_named() {
        let mem = HostMemory::ram(1 << 20, false, false).unwrap();
        let ram = [(0, mem.len() as u64)];
        let e = SharedRam::new(&mem, &ram).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("memory-backend-memfd"), "{s}");
        assert!(s.contains("share=on"), "{s}");
    }

    #[test]
    fn shared_memfd_ram_translates_inside_its_regions_only() {
        let mem = HostMemory::memfd("t", 1 << 20, true, false, false).unwrap();
        let ram = [(0, mem.len() as u64)];
        let shared = SharedRam::new(&mem, &ram).unwrap();
        assert_eq!(shared.regions().len(), 1);
        let base = mem.as_ptr() as u64;
        assert_eq!(shared.translate(0x1000, 16), Some(base + 0x1000));
        assert_eq!(shared.translate((1 << 20) - 8, 16), None);
        assert_eq!(shared.translate(u64::MAX, 2), None);
    }
}
