//! `vhost_user_session`: the vhost-user backend's session state machine
//! (vhost-user.rst "Ring states", "Front-end message types";
//! `vhost_user::Backend`) against any sequence of frontend steps: every
//! request built from its fields, with and without `need_reply`; raw
//! frames; memory tables and regions of memfds (overlapping, out of range,
//! with too few or too many descriptors); rings set up, started, stopped,
//! moved and reset; kicks; chains a driver adds in the shared memory;
//! memory pokes; hang-ups at any point, also inside a message; over the
//! real rng and blk devices.
//!
//! The backend serves on this thread ([`Backend::serve_stepped`]): each
//! step sends at most one message or kick, then the backend runs until
//! idle, so an input always runs the same way. Checked:
//!
//! - nothing panics, the devices included (the backend catches a device's
//!   panic and ends the session; that ending is a crash here too);
//! - every reply decodes with the codec ([`codec::decode_reply`]) and
//!   answers its request as the backend's rules say: a `GET_*` gets its
//!   own reply with the right values, a request sent with `need_reply`
//!   once `REPLY_ACK` is negotiated gets one status (and the session goes
//!   on), anything else gets nothing; the session ends only on a refusal;
//! - a session ends once the frontend hangs up;
//! - on rings the frontend kept well-formed (set up from scratch, natural
//!   addresses and memory, no poke), the used elements are valid and
//!   `GET_VRING_BASE` reports the used index (the devices complete every
//!   chain they take), however the other rings start, stop or move;
//! - the log stays within its rate limits;
//! - after all that, the same backend serves a fresh frontend over
//!   [`Backend::serve_connection`] (the blocking loop; the frontend sends
//!   the whole session at once and hangs up, so this thread serves it):
//!   negotiation, one ring, one request, the right replies and used
//!   element.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::{Arbitrary, Unstructured};
use backends::block::memory::MemoryDisk;
use backends::rng::Deterministic;
use vhost_user::backend::PROTOCOL_FEATURES;
use vhost_user::codec::{
    self, Config, HEADER_LEN, MAX_CONFIG, MAX_FDS, MAX_MEM_SLOTS, MemRegion, Message, Reply,
    Request, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringFd, VringState, protocol,
};
use vhost_user::memory::Regions;
use vhost_user::{Backend, LOG_BURST, Progress, SessionEnd, SharedMemory, SteppedSession};
use virtio_core::GuestMemory;
use virtio_core::blk::{HEADER_LEN as BLK_HEADER_LEN, req, status};
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::VirtioDevice;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::rng::Rng;

pub mod seeds;

/// Steps of one input (over all its sessions).
const MAX_STEPS: usize = 64;
/// Rounds the backend may take to settle after one step: a device that
/// always asks to be served again never settles.
const MAX_ROUNDS: usize = 4096;
/// Where the frontend has its memory (ring addresses are in this space).
const USER_BASE: u64 = 0x7f00_0000_0000;
/// Guest addresses of file `i` start at `i * FILE_STRIDE`.
const FILE_STRIDE: u64 = 1 << 20;
/// A page.
const PAGE: u64 = 4096;
/// Ring `r` of a file lives at `r * RING_SLOT` in it (a ring of 1024
/// entries takes 26,638 bytes).
const RING_SLOT: u64 = 0x7000;
/// The devices' queue size (`DEFAULT_QUEUE_SIZE`), the most a ring holds.
const MAX_RING: usize = 1024;
/// The requests the backend decodes but does not implement.
const UNSUPPORTED: [Request; 17] = [
    Request::SetLogBase,
    Request::SetLogFd,
    Request::SendRarp,
    Request::NetSetMtu,
    Request::SetBackendReqFd,
    Request::IotlbMsg,
    Request::SetVringEndian,
    Request::CreateCryptoSession,
    Request::CloseCryptoSession,
    Request::PostcopyAdvise,
    Request::PostcopyListen,
    Request::PostcopyEnd,
    Request::GetInflightFd,
    Request::SetInflightFd,
    Request::GpuSetSocket,
    Request::VringKick,
    Request::SetStatus,
];
/// `VIRTIO_F_VERSION_1`.
const VERSION_1: u64 = 1 << 32;
/// The most log lines a backend may write: fewer than 32 kinds (16 kinds
/// of refusal and 5 others), each at most `LOG_BURST` lines a window plus
/// one summary (an input takes far less than a window).
const MAX_LOG_LINES: usize = 32 * (LOG_BURST as usize + 1);

/// The device under test.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// virtio-rng over a deterministic source.
    Rng {
        /// The source's seed.
        seed: u8,
    },
    /// virtio-blk over an in-memory disk.
    Blk {
        /// The disk's size: `1 + sectors % 64` sectors.
        sectors: u8,
        /// Two request queues (else one).
        two_queues: bool,
        /// A read-only disk.
        read_only: bool,
        /// Bit 0 discard, bit 1 write zeroes, bit 2 writethrough.
        flags: u8,
    },
}

/// Feature bits to acknowledge.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bits {
    /// Everything offered.
    Offered,
    /// What is offered, masked.
    Masked(u64),
    /// Any bits.
    Raw(u64),
}

/// How many descriptors come with a message that carries regions.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdCount {
    /// One a region.
    Exact,
    /// None.
    Zero,
    /// One fewer.
    Fewer,
    /// One more.
    More,
}

/// The descriptor of a `SET_VRING_KICK`, `CALL` or `ERR`.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdSpec {
    /// The ring's own eventfd.
    Own,
    /// The eventfd of ring `n` (shared descriptors).
    Ring(u8),
    /// No descriptor, said so (bit 8).
    NoFd,
    /// A descriptor announced but not passed.
    Missing,
    /// A memfd instead of an eventfd.
    NotEventfd,
    /// Two eventfds.
    Two,
}

/// An address relative to a file's natural place.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Where the file belongs.
    Natural,
    /// Some pages off.
    Pages(i16),
    /// Anywhere.
    Raw(u64),
}

/// A region's size.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// The whole file.
    Whole,
    /// Some pages.
    Pages(u8),
    /// Any size.
    Raw(u64),
}

/// A region's offset in its file.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The start.
    Zero,
    /// Some pages in.
    Pages(u8),
    /// Any offset.
    Raw(u64),
}

/// A memory region of one of the files (or of a descriptor that is no
/// file).
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    /// The file, modulo the file count plus one (the extra one is an
    /// eventfd).
    pub file: u8,
    /// Its guest address.
    pub guest: Place,
    /// Its size.
    pub size: Len,
    /// Its frontend address.
    pub user: Place,
    /// Its offset in the file.
    pub offset: Offset,
}

impl RegionSpec {
    /// The file's region where it belongs.
    pub fn natural(file: u8) -> RegionSpec {
        RegionSpec {
            file,
            guest: Place::Natural,
            size: Len::Whole,
            user: Place::Natural,
            offset: Offset::Zero,
        }
    }
}

/// A ring size.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// `1 << (n % 12)` (up to twice the devices' maximum).
    Log2(u8),
    /// Any number.
    Raw(u32),
}

/// A ring's addresses.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSpec {
    /// The ring's slot in a file, for the size last sent.
    Natural {
        /// The file.
        file: u8,
    },
    /// The same, every area moved by some bytes.
    Shifted {
        /// The file.
        file: u8,
        /// Bytes.
        by: i16,
    },
    /// Any addresses.
    Raw {
        /// Flags (bit 0: log).
        flags: u32,
        /// The descriptor table.
        desc: u64,
        /// The available ring.
        avail: u64,
        /// The used ring.
        used: u64,
    },
}

/// `SET_VRING_ENABLE`'s number.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enable {
    /// 0.
    Off,
    /// 1.
    On,
    /// Anything.
    Raw(u32),
}

/// A request, field by field. Ring indices are taken modulo the ring count
/// plus one below 0x80 (so one past the last), as they are above.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `SET_OWNER`.
    SetOwner,
    /// `RESET_OWNER`.
    ResetOwner,
    /// `RESET_DEVICE`.
    ResetDevice,
    /// `GET_FEATURES`.
    GetFeatures,
    /// `SET_FEATURES`.
    SetFeatures(Bits),
    /// `GET_PROTOCOL_FEATURES`.
    GetProtocolFeatures,
    /// `SET_PROTOCOL_FEATURES`.
    SetProtocolFeatures(Bits),
    /// `GET_QUEUE_NUM`.
    GetQueueNum,
    /// `GET_MAX_MEM_SLOTS`.
    GetMaxMemSlots,
    /// `SET_MEM_TABLE`.
    SetMemTable {
        /// The regions (at most 33).
        regions: Vec<RegionSpec>,
        /// Descriptors.
        fds: FdCount,
    },
    /// `ADD_MEM_REG`.
    AddMemReg {
        /// The region.
        region: RegionSpec,
        /// Descriptors.
        fds: FdCount,
    },
    /// `REM_MEM_REG`.
    RemMemReg {
        /// The region.
        region: RegionSpec,
        /// Its descriptor comes too (as QEMU up to 8.x sends it).
        with_fd: bool,
    },
    /// `SET_VRING_NUM`.
    SetVringNum {
        /// The ring.
        ring: u8,
        /// Its size.
        num: Num,
    },
    /// `SET_VRING_ADDR`.
    SetVringAddr {
        /// The ring.
        ring: u8,
        /// Its addresses.
        addr: AddrSpec,
    },
    /// `SET_VRING_BASE`.
    SetVringBase {
        /// The ring.
        ring: u8,
        /// The base.
        base: u32,
    },
    /// `GET_VRING_BASE`.
    GetVringBase {
        /// The ring.
        ring: u8,
    },
    /// `SET_VRING_KICK`.
    SetVringKick {
        /// The ring.
        ring: u8,
        /// The descriptor.
        fd: FdSpec,
    },
    /// `SET_VRING_CALL`.
    SetVringCall {
        /// The ring.
        ring: u8,
        /// The descriptor.
        fd: FdSpec,
    },
    /// `SET_VRING_ERR`.
    SetVringErr {
        /// The ring.
        ring: u8,
        /// The descriptor.
        fd: FdSpec,
    },
    /// `SET_VRING_ENABLE`.
    SetVringEnable {
        /// The ring.
        ring: u8,
        /// The number.
        num: Enable,
    },
    /// `GET_CONFIG`.
    GetConfig {
        /// The offset.
        offset: u16,
        /// The size (modulo 300: past `MAX_CONFIG` too).
        size: u16,
    },
    /// `SET_CONFIG`.
    SetConfig {
        /// The offset.
        offset: u16,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A request the backend does not implement.
    Unsupported(u8),
}

/// A blk request type.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkKind {
    /// Read.
    In,
    /// Write.
    Out,
    /// Flush.
    Flush,
    /// The serial.
    GetId,
    /// Discard.
    Discard,
    /// Write zeroes.
    WriteZeroes,
    /// Any type.
    Other(u32),
}

/// A data segment of a blk request.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg {
    /// Whole sectors (modulo 16, at least one).
    Sectors(u8),
    /// Any bytes (modulo 8192, at least one).
    Bytes(u16),
}

/// A buffer of a chain.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Device-writable (else readable, filled with `fill`).
    pub writable: bool,
    /// Length (modulo 2048, at least one).
    pub len: u16,
    /// The byte a readable buffer is filled with.
    pub fill: u8,
}

/// One step of a frontend.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A request built from its fields.
    Msg {
        /// The request.
        msg: Msg,
        /// Sent with `need_reply`.
        need_reply: bool,
    },
    /// One frame of any header and payload (its size made to match).
    Raw {
        /// The request code (modulo 48).
        request: u8,
        /// The header flags.
        flags: u8,
        /// The payload.
        payload: Vec<u8>,
        /// Eventfds passed with it (modulo 5).
        fds: u8,
    },
    /// `SET_OWNER`, both feature exchanges (everything offered; with or
    /// without `REPLY_ACK`) and a memory table of every file where it
    /// belongs.
    Negotiate {
        /// Negotiate `REPLY_ACK`.
        reply_ack: bool,
    },
    /// Ring `ring` from scratch: `GET_VRING_BASE` (stops it), the driver's
    /// rings zeroed, `SET_VRING_NUM`, `SET_VRING_ADDR` (its slot in
    /// `file`), `SET_VRING_BASE` 0.
    SetupRing {
        /// The ring.
        ring: u8,
        /// `1 << (n % 11)` entries.
        size_log2: u8,
        /// The file.
        file: u8,
    },
    /// The ring's own call, error and kick eventfds, then
    /// `SET_VRING_ENABLE` 1.
    StartRing {
        /// The ring.
        ring: u8,
    },
    /// A chain added by the ring's driver and published.
    Chain {
        /// The ring.
        ring: u8,
        /// Its buffers (readable ones first, at most 8).
        bufs: Vec<Buf>,
        /// Kick after.
        kick: bool,
    },
    /// A blk request added by the ring's driver and published.
    BlkRequest {
        /// The ring.
        ring: u8,
        /// Its type.
        kind: BlkKind,
        /// Its sector.
        sector: u16,
        /// Data segments (at most 4).
        data: Vec<Seg>,
        /// Length of the status buffer (1 is right).
        status_len: u8,
        /// Kick after.
        kick: bool,
    },
    /// `count` chains (modulo 513) of one buffer each, published at once:
    /// more than a device serves in one call (its work budget, 256).
    Fill {
        /// The ring.
        ring: u8,
        /// How many.
        count: u16,
        /// Each buffer's length (modulo 512, at least one).
        len: u16,
        /// Device-writable (else readable).
        writable: bool,
    },
    /// Writes the ring's kick eventfd.
    Kick {
        /// The ring.
        ring: u8,
    },
    /// Writes the ring's kick eventfd and sends a request before the
    /// backend runs: both wait for the same round.
    KickAnd {
        /// The ring.
        ring: u8,
        /// The request.
        msg: Msg,
        /// Sent with `need_reply`.
        need_reply: bool,
    },
    /// Takes every used element of every ring.
    Drain,
    /// Writes bytes into a file (rings included).
    Poke {
        /// The file.
        file: u8,
        /// Where (modulo its length).
        offset: u32,
        /// What (at most 64 bytes).
        bytes: Vec<u8>,
    },
    /// Sends these bytes (at most 64; part of a message, or anything),
    /// then hangs up. Later steps go to a new session.
    Disconnect {
        /// The bytes.
        partial: Vec<u8>,
    },
}

/// One input.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The device.
    pub device: DeviceSpec,
    /// Files: `1 + files % 3` memfds of `16 + pages[i] % 49` pages.
    pub files: u8,
    /// Their sizes.
    pub pages: [u8; 3],
    /// The steps (at most 64 are run).
    pub steps: Vec<Step>,
}

/// What a run did, for the tests that check the seeds reach their parts of
/// the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Sessions served, the final one included.
    pub sessions: u64,
    /// Replies checked.
    pub replies: u64,
    /// `REPLY_ACK` statuses of 0.
    pub acks_ok: u64,
    /// `REPLY_ACK` statuses of 1.
    pub acks_failed: u64,
    /// Sessions the backend ended on a refusal.
    pub refused_sessions: u64,
    /// Used elements taken from rings the frontend kept well-formed.
    pub trusted_used: u64,
    /// Used elements taken from other rings.
    pub other_used: u64,
    /// `GET_VRING_BASE` answers checked against the used index.
    pub bases_checked: u64,
    /// Log lines the backend wrote.
    pub log_lines: usize,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run_input(&input);
}

/// Runs one input and says what it did.
pub fn run_input(input: &Input) -> Report {
    let mem = SharedMemory::new();
    match input.device {
        DeviceSpec::Rng { seed } => {
            let dev = Rng::new(Deterministic::new(u64::from(seed)), mem.clone());
            serve(dev, mem, input)
        }
        DeviceSpec::Blk {
            sectors,
            two_queues,
            read_only,
            flags,
        } => {
            let disk = || MemoryDisk::new(usize::from(sectors % 64) + 1).with_read_only(read_only);
            let cfg = BlkConfig {
                serial: b"vhost-user-session".to_vec(),
                num_queues: 1 + u16::from(two_queues),
                discard: flags & 1 != 0,
                write_zeroes: flags & 2 != 0,
                writeback: flags & 4 == 0,
                ..BlkConfig::default()
            };
            let dev = match Blk::new(disk(), mem.clone(), cfg) {
                Ok(d) => d,
                Err(_) => Blk::new(disk(), mem.clone(), BlkConfig::default())
                    .expect("the default configuration is valid"),
            };
            serve(dev, mem, input)
        }
    }
}

/// Serves the input's sessions, then the canonical one.
fn serve<D: VirtioDevice>(device: D, mem: SharedMemory, input: &Input) -> Report {
    let blk = device.device_type() == virtio_core::features::DeviceType::Blk;
    let offered = device.device_features() | VHOST_USER_F_PROTOCOL_FEATURES;
    let nq = device.queue_max_sizes().len();
    let mut backend = Backend::new(device, mem, Vec::new());
    let lines = Arc::new(AtomicUsize::new(0));
    let counter = lines.clone();
    backend.set_log_sink(Box::new(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    }));
    let files = Files::new(input);
    let mut front = Front::new(&files, nq, offered);
    let mut steps = input.steps.iter().take(MAX_STEPS).peekable();
    while steps.peek().is_some() {
        let (sock, stream) = UnixStream::pair().expect("socket pair");
        sock.set_nonblocking(true).expect("non-blocking socket");
        let mut session = backend.serve_stepped(stream);
        front.connect(sock);
        for step in steps.by_ref() {
            front.step(&mut session, step);
            if front.sock.is_none() {
                break;
            }
        }
        front.hang_up(&mut session);
    }
    let mut report = front.report;
    canonical(&mut backend, blk, offered);
    report.sessions = backend.stats().sessions;
    drop(backend);
    report.log_lines = lines.load(Ordering::Relaxed);
    assert!(
        report.log_lines <= MAX_LOG_LINES,
        "the backend wrote {} log lines, past its rate limits",
        report.log_lines
    );
    report
}

/// A memfd of `len` bytes.
fn memfd(len: u64) -> OwnedFd {
    // SAFETY: a constant NUL-terminated name; no pointer is kept.
    let fd = unsafe { libc::memfd_create(c"vhost-user-session".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: just created, owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).expect("small file");
    // SAFETY: a valid descriptor and a plain length.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len) };
    assert_eq!(rc, 0, "ftruncate: {}", io::Error::last_os_error());
    fd
}

/// A non-blocking eventfd.
fn eventfd() -> File {
    // SAFETY: no pointers; the flags are valid.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
    // SAFETY: just created, owned here only.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd.
fn signal(fd: &File) {
    (&*fd)
        .write_all(&1u64.to_ne_bytes())
        .expect("eventfd write");
}

/// The frontend's memory: memfds, and the frontend's own view of them,
/// each file at its natural guest address.
struct Files {
    fds: Vec<OwnedFd>,
    lens: Vec<u64>,
    view: SharedMemory,
    /// The mappings behind `view`.
    _regions: Regions,
}

impl Files {
    fn new(input: &Input) -> Files {
        let n = 1 + usize::from(input.files % 3);
        let lens: Vec<u64> = input.pages[..n]
            .iter()
            .map(|p| (16 + u64::from(*p % 49)) * PAGE)
            .collect();
        let fds: Vec<OwnedFd> = lens.iter().map(|&l| memfd(l)).collect();
        let view = SharedMemory::new();
        let mut regions = Regions::default();
        let table: Vec<MemRegion> = (0..n).map(|i| natural_region(i, lens[i])).collect();
        let dups: Vec<OwnedFd> = fds
            .iter()
            .map(|f| f.try_clone().expect("dup a memfd"))
            .collect();
        regions
            .replace(&table, &dups, &view)
            .expect("the natural table maps");
        Files {
            fds,
            lens,
            view,
            _regions: regions,
        }
    }

    fn count(&self) -> usize {
        self.fds.len()
    }
}

/// File `i`'s region where it belongs.
fn natural_region(i: usize, len: u64) -> MemRegion {
    let guest = i as u64 * FILE_STRIDE;
    MemRegion {
        guest_addr: guest,
        size: len,
        user_addr: USER_BASE + guest,
        mmap_offset: 0,
    }
}

/// The guest addresses of ring `ring`'s areas in its slot of file `file`
/// for `n` entries (§2.7: 16-byte descriptors, 2-byte available entries,
/// the used ring 4-aligned).
fn natural_ring(file: usize, ring: usize, n: u64) -> [u64; 3] {
    let desc = file as u64 * FILE_STRIDE + ring as u64 * RING_SLOT;
    let avail = desc + 16 * n;
    let used = (avail + 6 + 2 * n).next_multiple_of(4);
    [desc, avail, used]
}

/// The driver of one ring, over the frontend's view.
struct Driver {
    q: Box<DriverQueue<MAX_RING>>,
    file: usize,
}

/// What the frontend knows of one ring.
struct RingModel {
    kick: File,
    call: File,
    err: File,
    /// The last size sent for it.
    num: u32,
    driver: Option<Driver>,
    /// Set up from scratch and touched since only in ways that keep the
    /// driver and the device in step: its used elements must be valid.
    trusted: bool,
}

/// What the backend must answer to one frame, from its bytes as the codec
/// decodes them and the protocol features in force.
enum Expect {
    /// The request's own reply if the session goes on (a refused `GET_*`
    /// closes it).
    Own(Message),
    /// One `REPLY_ACK` status, and the session goes on.
    Ack,
    /// A status of 1 (an undecodable request with `need_reply`), and the
    /// session goes on.
    AckFailure,
    /// No reply; the session may end (a refusal).
    Nothing,
    /// No reply, and the session ends.
    End,
}

/// How one message went.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// The session ended.
    Ended,
    /// The session goes on; the reply, if there was one.
    Alive(Option<Reply>),
}

impl Sent {
    /// The backend took the message: the session goes on, and no
    /// `REPLY_ACK` status says it failed.
    fn accepted(&self) -> bool {
        matches!(self, Sent::Alive(r) if *r != Some(Reply::U64(1)))
    }
}

/// The frontend: its model of the session and its driver.
struct Front<'f> {
    files: &'f Files,
    nq: usize,
    offered: u64,
    /// An eventfd passed where any descriptor will do.
    spare: File,
    /// The connection, while the session lasts.
    sock: Option<UnixStream>,
    /// The protocol features in force.
    protocol: u64,
    /// No poke, no region or ring address off its natural place, no raw
    /// frame that could have been one: a trusted ring's memory is its own.
    honest: bool,
    rings: Vec<RingModel>,
    /// Where the next buffer goes in each file.
    next_buf: Vec<u64>,
    /// A ring to kick just before the next message is sent.
    kick_first: Option<usize>,
    report: Report,
}

impl<'f> Front<'f> {
    fn new(files: &'f Files, nq: usize, offered: u64) -> Front<'f> {
        let rings = (0..nq)
            .map(|_| RingModel {
                kick: eventfd(),
                call: eventfd(),
                err: eventfd(),
                num: 0,
                driver: None,
                trusted: false,
            })
            .collect();
        Front {
            files,
            nq,
            offered,
            spare: eventfd(),
            sock: None,
            protocol: 0,
            honest: true,
            rings,
            next_buf: vec![Self::buf_base(nq); files.count()],
            kick_first: None,
            report: Report::default(),
        }
    }

    /// Buffers go above the ring slots.
    fn buf_base(nq: usize) -> u64 {
        nq as u64 * RING_SLOT
    }

    fn connect(&mut self, sock: UnixStream) {
        self.sock = Some(sock);
        self.protocol = 0;
        self.untrust_all();
    }

    fn untrust_all(&mut self) {
        for r in &mut self.rings {
            r.trusted = false;
        }
    }

    fn untrust(&mut self, index: u32) {
        if let Some(r) = usize::try_from(index)
            .ok()
            .and_then(|i| self.rings.get_mut(i))
        {
            r.trusted = false;
        }
    }

    /// A ring index: below 0x80 modulo the rings plus one, else as is.
    fn ring_index(&self, r: u8) -> u32 {
        if r < 0x80 {
            u32::from(r) % (self.nq as u32 + 1)
        } else {
            u32::from(r)
        }
    }

    /// A ring the frontend has (modulo the ring count).
    fn ring_of(&self, r: u8) -> usize {
        usize::from(r) % self.nq
    }

    fn reply_ack(&self) -> bool {
        self.protocol & protocol::REPLY_ACK != 0
    }

    fn step<D: VirtioDevice>(&mut self, s: &mut SteppedSession<'_, D>, step: &Step) {
        match step {
            Step::Msg { msg, need_reply } => {
                let (msg, fds) = self.build(msg);
                self.send(s, &msg, *need_reply, &fds);
            }
            Step::Raw {
                request,
                flags,
                payload,
                fds,
            } => {
                let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
                bytes.extend_from_slice(&u32::from(request % 48).to_ne_bytes());
                bytes.extend_from_slice(&u32::from(*flags).to_ne_bytes());
                bytes.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
                bytes.extend_from_slice(payload);
                let fds = vec![self.spare.as_raw_fd(); usize::from(fds % 5)];
                self.exchange(s, &bytes, &fds);
            }
            Step::Negotiate { reply_ack } => self.negotiate(s, *reply_ack),
            Step::SetupRing {
                ring,
                size_log2,
                file,
            } => {
                let ring = self.ring_of(*ring);
                let file = usize::from(*file) % self.files.count();
                self.setup_ring(s, ring, 1 << (size_log2 % 11), file);
            }
            Step::StartRing { ring } => {
                let ring = self.ring_of(*ring) as u8;
                let need_reply = self.reply_ack();
                for msg in [
                    Msg::SetVringCall {
                        ring,
                        fd: FdSpec::Own,
                    },
                    Msg::SetVringErr {
                        ring,
                        fd: FdSpec::Own,
                    },
                    Msg::SetVringKick {
                        ring,
                        fd: FdSpec::Own,
                    },
                    Msg::SetVringEnable {
                        ring,
                        num: Enable::On,
                    },
                ] {
                    let (msg, fds) = self.build(&msg);
                    if self.send(s, &msg, need_reply, &fds) == Sent::Ended {
                        return;
                    }
                }
            }
            Step::Chain { ring, bufs, kick } => {
                let ring = self.ring_of(*ring);
                let mut readable = Vec::new();
                let mut writable = Vec::new();
                for b in bufs.iter().take(8) {
                    let len = u32::from(b.len % 2048).max(1);
                    if b.writable {
                        writable.push((vec![], len));
                    } else {
                        readable.push((vec![b.fill; len as usize], len));
                    }
                }
                self.chain(ring, &readable, &writable);
                if *kick {
                    self.kick(s, ring);
                }
            }
            Step::BlkRequest {
                ring,
                kind,
                sector,
                data,
                status_len,
                kick,
            } => {
                let ring = self.ring_of(*ring);
                let (code, to_device) = match kind {
                    BlkKind::In => (req::IN, false),
                    BlkKind::Out => (req::OUT, true),
                    BlkKind::Flush => (req::FLUSH, false),
                    BlkKind::GetId => (req::GET_ID, false),
                    BlkKind::Discard => (req::DISCARD, true),
                    BlkKind::WriteZeroes => (req::WRITE_ZEROES, true),
                    BlkKind::Other(c) => (*c, false),
                };
                let mut header = Vec::with_capacity(BLK_HEADER_LEN as usize);
                header.extend_from_slice(&code.to_le_bytes());
                header.extend_from_slice(&0u32.to_le_bytes());
                header.extend_from_slice(&u64::from(*sector).to_le_bytes());
                let mut readable = vec![(header, BLK_HEADER_LEN as u32)];
                let mut writable = Vec::new();
                for seg in data.iter().take(4) {
                    let len = match seg {
                        Seg::Sectors(n) => 512 * (1 + u32::from(n % 16)),
                        Seg::Bytes(n) => u32::from(n % 8192).max(1),
                    };
                    if to_device {
                        // Discard and write-zeroes segments: sector,
                        // count, flags.
                        let mut bytes = vec![0u8; len as usize];
                        for (i, b) in bytes.iter_mut().enumerate() {
                            *b = (i % 16) as u8 ^ (*sector as u8);
                        }
                        readable.push((bytes, len));
                    } else {
                        writable.push((vec![], len));
                    }
                }
                if *status_len > 0 {
                    writable.push((vec![], u32::from(*status_len)));
                }
                self.chain(ring, &readable, &writable);
                if *kick {
                    self.kick(s, ring);
                }
            }
            Step::Fill {
                ring,
                count,
                len,
                writable,
            } => {
                let ring = self.ring_of(*ring);
                let len = u32::from(len % 512).max(1);
                let buf = if *writable {
                    (vec![], len)
                } else {
                    (vec![0x5a; len as usize], len)
                };
                for _ in 0..count % 513 {
                    let (r, w) = if *writable {
                        (&[][..], std::slice::from_ref(&buf))
                    } else {
                        (std::slice::from_ref(&buf), &[][..])
                    };
                    if !self.chain(ring, r, w) {
                        break;
                    }
                }
            }
            Step::Kick { ring } => {
                let ring = self.ring_of(*ring);
                self.kick(s, ring);
            }
            Step::KickAnd {
                ring,
                msg,
                need_reply,
            } => {
                let ring = self.ring_of(*ring);
                let (msg, fds) = self.build(msg);
                self.kick_first = Some(ring);
                self.send(s, &msg, *need_reply, &fds);
            }
            Step::Drain => self.drain(),
            Step::Poke {
                file,
                offset,
                bytes,
            } => {
                let f = usize::from(*file) % self.files.count();
                let len = self.files.lens[f];
                let at = u64::from(*offset) % len;
                let n = bytes.len().min(64).min((len - at) as usize);
                self.files
                    .view
                    .write(GuestAddress(f as u64 * FILE_STRIDE + at), &bytes[..n])
                    .expect("inside the file");
                self.honest = false;
            }
            Step::Disconnect { partial } => {
                if let Some(sock) = self.sock.take() {
                    if !partial.is_empty() {
                        let n = partial.len().min(64);
                        // The backend reads it only after the hang-up.
                        let _ = codec::send_with_fds(&sock, &partial[..n], &[]);
                    }
                    drop(sock);
                    let p = s.run_until_idle(MAX_ROUNDS);
                    assert_eq!(p, Progress::Ended, "a session outlived its frontend");
                    self.check_end(s, false);
                    self.untrust_all();
                }
            }
        }
    }

    /// The message a [`Msg`] describes, and the descriptors that go with
    /// it.
    fn build(&mut self, msg: &Msg) -> (Message, Vec<RawFd>) {
        let nfiles = self.files.count();
        let ring_fd = |m: &Self, ring: u8, fd: FdSpec, pick: fn(&RingModel) -> &File| {
            let index = m.ring_index(ring);
            let own = m.rings.get(index as usize).unwrap_or(&m.rings[0]);
            let vfd = |has_fd| VringFd {
                index: index as u8,
                has_fd,
            };
            match fd {
                FdSpec::Own => (vfd(true), vec![pick(own).as_raw_fd()]),
                FdSpec::Ring(n) => {
                    let other = &m.rings[usize::from(n) % m.nq];
                    (vfd(true), vec![pick(other).as_raw_fd()])
                }
                FdSpec::NoFd => (vfd(false), vec![]),
                FdSpec::Missing => (vfd(true), vec![]),
                FdSpec::NotEventfd => (vfd(true), vec![m.files.fds[0].as_raw_fd()]),
                FdSpec::Two => (vfd(true), vec![pick(own).as_raw_fd(), m.spare.as_raw_fd()]),
            }
        };
        match msg {
            Msg::SetOwner => (Message::SetOwner, vec![]),
            Msg::ResetOwner => (Message::ResetOwner, vec![]),
            Msg::ResetDevice => (Message::ResetDevice, vec![]),
            Msg::GetFeatures => (Message::GetFeatures, vec![]),
            Msg::SetFeatures(b) => (Message::SetFeatures(bits(*b, self.offered)), vec![]),
            Msg::GetProtocolFeatures => (Message::GetProtocolFeatures, vec![]),
            Msg::SetProtocolFeatures(b) => (
                Message::SetProtocolFeatures(bits(*b, PROTOCOL_FEATURES)),
                vec![],
            ),
            Msg::GetQueueNum => (Message::GetQueueNum, vec![]),
            Msg::GetMaxMemSlots => (Message::GetMaxMemSlots, vec![]),
            Msg::SetMemTable { regions, fds } => {
                let mut table = Vec::new();
                let mut descs = Vec::new();
                for r in regions.iter().take(MAX_MEM_SLOTS + 1) {
                    let (region, fd) = self.region(r);
                    table.push(region);
                    descs.push(fd);
                }
                match fds {
                    FdCount::Exact => {}
                    FdCount::Zero => descs.clear(),
                    FdCount::Fewer => {
                        descs.pop();
                    }
                    FdCount::More => descs.push(self.files.fds[0].as_raw_fd()),
                }
                descs.truncate(MAX_FDS);
                (Message::SetMemTable(table), descs)
            }
            Msg::AddMemReg { region, fds } => {
                let (region, fd) = self.region(region);
                let descs = match fds {
                    FdCount::Exact => vec![fd],
                    FdCount::Zero | FdCount::Fewer => vec![],
                    FdCount::More => vec![fd, fd],
                };
                (Message::AddMemReg(region), descs)
            }
            Msg::RemMemReg { region, with_fd } => {
                let (region, fd) = self.region(region);
                let descs = if *with_fd { vec![fd] } else { vec![] };
                (Message::RemMemReg(region), descs)
            }
            Msg::SetVringNum { ring, num } => {
                let num = match num {
                    Num::Log2(k) => 1 << (k % 12),
                    Num::Raw(n) => *n,
                };
                let index = self.ring_index(*ring);
                (Message::SetVringNum(VringState { index, num }), vec![])
            }
            Msg::SetVringAddr { ring, addr } => {
                let index = self.ring_index(*ring);
                let n = self
                    .rings
                    .get(index as usize)
                    .map(|r| r.num)
                    .filter(|n| n.is_power_of_two() && *n as usize <= MAX_RING)
                    .unwrap_or(16);
                let slot = (index as usize).min(self.nq);
                let a = match *addr {
                    AddrSpec::Natural { file } => {
                        let f = usize::from(file) % nfiles;
                        let [d, a, u] = natural_ring(f, slot, u64::from(n));
                        vring_addr(index, 0, [d, a, u].map(|g| USER_BASE + g))
                    }
                    AddrSpec::Shifted { file, by } => {
                        let f = usize::from(file) % nfiles;
                        let areas = natural_ring(f, slot, u64::from(n))
                            .map(|g| (USER_BASE + g).wrapping_add_signed(i64::from(by)));
                        vring_addr(index, 0, areas)
                    }
                    AddrSpec::Raw {
                        flags,
                        desc,
                        avail,
                        used,
                    } => vring_addr(index, flags, [desc, avail, used]),
                };
                (Message::SetVringAddr(a), vec![])
            }
            Msg::SetVringBase { ring, base } => {
                let index = self.ring_index(*ring);
                (
                    Message::SetVringBase(VringState { index, num: *base }),
                    vec![],
                )
            }
            Msg::GetVringBase { ring } => {
                let index = self.ring_index(*ring);
                (Message::GetVringBase(VringState { index, num: 0 }), vec![])
            }
            Msg::SetVringKick { ring, fd } => {
                let (v, fds) = ring_fd(self, *ring, *fd, |r| &r.kick);
                (Message::SetVringKick(v), fds)
            }
            Msg::SetVringCall { ring, fd } => {
                let (v, fds) = ring_fd(self, *ring, *fd, |r| &r.call);
                (Message::SetVringCall(v), fds)
            }
            Msg::SetVringErr { ring, fd } => {
                let (v, fds) = ring_fd(self, *ring, *fd, |r| &r.err);
                (Message::SetVringErr(v), fds)
            }
            Msg::SetVringEnable { ring, num } => {
                let index = self.ring_index(*ring);
                let num = match num {
                    Enable::Off => 0,
                    Enable::On => 1,
                    Enable::Raw(n) => *n,
                };
                (Message::SetVringEnable(VringState { index, num }), vec![])
            }
            Msg::GetConfig { offset, size } => (
                Message::GetConfig(Config {
                    offset: u32::from(*offset),
                    flags: 0,
                    data: vec![0; usize::from(size % 300)],
                }),
                vec![],
            ),
            Msg::SetConfig { offset, data } => (
                Message::SetConfig(Config {
                    offset: u32::from(*offset),
                    flags: 0,
                    data: data.iter().copied().take(MAX_CONFIG + 8).collect(),
                }),
                vec![],
            ),
            Msg::Unsupported(n) => (
                Message::Unsupported(UNSUPPORTED[usize::from(*n) % UNSUPPORTED.len()]),
                vec![],
            ),
        }
    }

    /// A region a [`RegionSpec`] describes, and its descriptor.
    fn region(&self, r: &RegionSpec) -> (MemRegion, RawFd) {
        let nfiles = self.files.count();
        let f = usize::from(r.file) % (nfiles + 1);
        let (fd, len, natural_guest) = match self.files.fds.get(f) {
            Some(fd) => (fd.as_raw_fd(), self.files.lens[f], f as u64 * FILE_STRIDE),
            None => (self.spare.as_raw_fd(), self.files.lens[0], 0),
        };
        let place = |p: Place, natural: u64| match p {
            Place::Natural => natural,
            Place::Pages(n) => natural.wrapping_add_signed(i64::from(n) * PAGE as i64),
            Place::Raw(v) => v,
        };
        let region = MemRegion {
            guest_addr: place(r.guest, natural_guest),
            size: match r.size {
                Len::Whole => len,
                Len::Pages(n) => u64::from(n) * PAGE,
                Len::Raw(v) => v,
            },
            user_addr: place(r.user, USER_BASE + natural_guest),
            mmap_offset: match r.offset {
                Offset::Zero => 0,
                Offset::Pages(n) => u64::from(n) * PAGE,
                Offset::Raw(v) => v,
            },
        };
        (region, fd)
    }

    /// Whether `region` with descriptor `fd` is one of the files where it
    /// belongs.
    fn natural(&self, region: &MemRegion, fd: Option<RawFd>) -> bool {
        (0..self.files.count()).any(|i| {
            fd == Some(self.files.fds[i].as_raw_fd())
                && *region == natural_region(i, self.files.lens[i])
        })
    }

    /// Whether `a` puts its ring in its own slot of a file.
    fn natural_addr(&self, a: &VringAddr) -> bool {
        let ring = a.index as usize;
        let Some(gpa) = a.desc.checked_sub(USER_BASE) else {
            return false;
        };
        let file = (gpa / FILE_STRIDE) as usize;
        let Some(n) = a.avail.checked_sub(a.desc).map(|d| d / 16) else {
            return false;
        };
        ring < self.nq
            && file < self.files.count()
            && n.is_power_of_two()
            && n as usize <= MAX_RING
            && [a.desc, a.avail, a.used] == natural_ring(file, ring, n).map(|g| USER_BASE + g)
    }

    /// Sends `msg` built with [`Front::build`] (or by a macro step).
    fn send<D: VirtioDevice>(
        &mut self,
        s: &mut SteppedSession<'_, D>,
        msg: &Message,
        need_reply: bool,
        fds: &[RawFd],
    ) -> Sent {
        self.exchange(s, &msg.encode(need_reply), fds)
    }

    /// Sends one frame, lets the backend run until idle, reads what came
    /// back and checks it against what the backend's rules say, then
    /// updates the model.
    fn exchange<D: VirtioDevice>(
        &mut self,
        s: &mut SteppedSession<'_, D>,
        bytes: &[u8],
        fds: &[RawFd],
    ) -> Sent {
        let Some(sock) = self.sock.as_ref() else {
            return Sent::Ended;
        };
        // What the backend will see: the frame as the codec decodes it.
        let decoded = codec::decode_header(bytes).ok().map(|h| {
            let payload = &bytes[HEADER_LEN..];
            (h, codec::decode(&h, payload, fds.len()))
        });
        let ack = self.reply_ack();
        let expect = match &decoded {
            None => Expect::End,
            Some((h, Err(_))) => match Request::from_code(h.request) {
                Some(_) if h.need_reply() && ack => Expect::AckFailure,
                _ => Expect::End,
            },
            Some((h, Ok(msg))) => {
                if msg.has_reply() {
                    Expect::Own(msg.clone())
                } else if h.need_reply() && ack {
                    Expect::Ack
                } else {
                    Expect::Nothing
                }
            }
        };
        if let Some(ring) = self.kick_first.take() {
            signal(&self.rings[ring].kick);
        }
        codec::send_with_fds(sock, bytes, fds).expect("sending to a live session");
        let p = s.run_until_idle(MAX_ROUNDS);
        assert_ne!(p, Progress::Busy, "the backend did not settle");
        let replies = read_replies(sock);
        let ended = p == Progress::Ended;
        if ended {
            self.check_end(s, true);
            self.sock = None;
            self.untrust_all();
        }
        let request = decoded
            .as_ref()
            .and_then(|(h, _)| Request::from_code(h.request));
        let sent = match expect {
            Expect::End => {
                assert!(ended, "the session went on after an undecodable frame");
                assert!(replies.is_empty(), "a reply to an undecodable frame");
                Sent::Ended
            }
            Expect::Nothing => {
                assert!(replies.is_empty(), "a reply nobody asked for: {replies:?}");
                if ended {
                    Sent::Ended
                } else {
                    Sent::Alive(None)
                }
            }
            Expect::Ack | Expect::AckFailure => {
                assert!(
                    !ended,
                    "the session ended on a request sent with need_reply"
                );
                let [reply] = replies.as_slice() else {
                    panic!("{} replies where one status was due", replies.len());
                };
                let request = request.expect("a known request");
                let r = codec::decode_reply(request, true, reply)
                    .unwrap_or_else(|e| panic!("bad REPLY_ACK status to {request:?}: {e}"));
                let ok = match r {
                    Reply::U64(0) => true,
                    Reply::U64(1) => false,
                    r => panic!("REPLY_ACK status {r:?} to {request:?}"),
                };
                if matches!(expect, Expect::AckFailure) {
                    assert!(!ok, "success for an undecodable {request:?}");
                }
                self.report.replies += 1;
                if ok {
                    self.report.acks_ok += 1;
                } else {
                    self.report.acks_failed += 1;
                }
                Sent::Alive(Some(r))
            }
            Expect::Own(msg) => {
                if ended {
                    assert!(replies.is_empty(), "a reply, then the session ended");
                    Sent::Ended
                } else {
                    let [reply] = replies.as_slice() else {
                        panic!("{} replies to {msg:?}", replies.len());
                    };
                    let r = codec::decode_reply(msg.request(), false, reply)
                        .unwrap_or_else(|e| panic!("bad reply to {msg:?}: {e}"));
                    self.check_reply(&msg, &r);
                    self.report.replies += 1;
                    Sent::Alive(Some(r))
                }
            }
        };
        if let Some((_, Ok(msg))) = &decoded {
            self.update(msg, fds, &sent);
        }
        sent
    }

    /// Checks a `GET_*` reply's values.
    fn check_reply(&mut self, msg: &Message, reply: &Reply) {
        match (msg, reply) {
            (Message::GetFeatures, Reply::U64(v)) => assert_eq!(*v, self.offered, "features"),
            (Message::GetProtocolFeatures, Reply::U64(v)) => {
                assert_eq!(*v, PROTOCOL_FEATURES, "protocol features")
            }
            (Message::GetQueueNum, Reply::U64(v)) => assert_eq!(*v, self.nq as u64, "queues"),
            (Message::GetMaxMemSlots, Reply::U64(v)) => {
                assert_eq!(*v, MAX_MEM_SLOTS as u64, "memory slots")
            }
            (Message::GetVringBase(asked), Reply::VringState(got)) => {
                assert_eq!(got.index, asked.index, "GET_VRING_BASE for another ring");
                assert!(
                    got.num <= 0xffff,
                    "base {:#x} is no split-ring index",
                    got.num
                );
                let ring = &self.rings[asked.index as usize];
                if let (true, true, Some(d)) = (self.honest, ring.trusted, &ring.driver) {
                    let used = self
                        .files
                        .view
                        .load_u16_acquire(d.q.layout().used_idx())
                        .expect("ring in memory");
                    assert_eq!(
                        got.num,
                        u32::from(used),
                        "GET_VRING_BASE of well-formed ring {} is not its used index",
                        asked.index
                    );
                    self.report.bases_checked += 1;
                }
            }
            (Message::GetConfig(asked), Reply::Config(got)) => {
                assert_eq!(
                    (got.offset, got.flags),
                    (asked.offset, asked.flags),
                    "GET_CONFIG reply for another access"
                );
                let fits = (asked.offset as usize)
                    .checked_add(asked.data.len())
                    .is_some_and(|end| end <= MAX_CONFIG);
                let want = if fits { asked.data.len() } else { 0 };
                assert_eq!(got.data.len(), want, "GET_CONFIG reply size");
            }
            (m, r) => panic!("reply {r:?} to {m:?}"),
        }
    }

    /// What a message the backend decoded changes in the model: the
    /// protocol features once taken; trust, conservatively, whether or
    /// not the backend took the message.
    fn update(&mut self, msg: &Message, fds: &[RawFd], sent: &Sent) {
        match msg {
            Message::SetProtocolFeatures(f) if sent.accepted() => self.protocol = *f,
            Message::SetMemTable(regions) => {
                let all = regions
                    .iter()
                    .enumerate()
                    .all(|(i, r)| self.natural(r, fds.get(i).copied()));
                self.honest &= all && regions.len() == fds.len();
                self.untrust_all();
            }
            Message::AddMemReg(r) => {
                self.honest &= self.natural(r, fds.first().copied());
                self.untrust_all();
            }
            Message::RemMemReg(_) | Message::ResetOwner | Message::ResetDevice => {
                self.untrust_all()
            }
            Message::SetVringNum(v) => {
                if let Some(r) = self.rings.get_mut(v.index as usize) {
                    r.num = v.num;
                }
                self.untrust(v.index);
            }
            Message::SetVringBase(v) => self.untrust(v.index),
            Message::SetVringAddr(a) => {
                self.honest &= self.natural_addr(a);
                self.untrust(a.index);
            }
            _ => {}
        }
    }

    /// After the session ended: how, and that nothing panicked.
    fn check_end<D: VirtioDevice>(&mut self, s: &SteppedSession<'_, D>, refused: bool) {
        match s.end() {
            Some(SessionEnd::Error(e)) => {
                assert!(!e.contains("panicked"), "session ended in a panic: {e}");
                if refused {
                    self.report.refused_sessions += 1;
                }
            }
            Some(SessionEnd::Closed) => {
                assert!(!refused, "the backend ended a session as if it hung up")
            }
            None => panic!("the session has not ended"),
        }
    }

    /// `SET_OWNER`, features, protocol features, the natural memory table.
    fn negotiate<D: VirtioDevice>(&mut self, s: &mut SteppedSession<'_, D>, reply_ack: bool) {
        let protocol = if reply_ack {
            PROTOCOL_FEATURES
        } else {
            PROTOCOL_FEATURES & !protocol::REPLY_ACK
        };
        let table = Msg::SetMemTable {
            regions: (0..self.files.count() as u8)
                .map(RegionSpec::natural)
                .collect(),
            fds: FdCount::Exact,
        };
        for msg in [
            Msg::SetOwner,
            Msg::GetFeatures,
            Msg::SetFeatures(Bits::Offered),
            Msg::GetProtocolFeatures,
        ] {
            let (msg, fds) = self.build(&msg);
            if self.send(s, &msg, false, &fds) == Sent::Ended {
                return;
            }
        }
        let set = Message::SetProtocolFeatures(protocol);
        if self.send(s, &set, false, &[]) == Sent::Ended {
            return;
        }
        let (msg, fds) = self.build(&table);
        let need_reply = self.reply_ack();
        self.send(s, &msg, need_reply, &fds);
    }

    /// Sets ring `ring` up from scratch with `n` entries in its slot of
    /// `file`; trusted if the backend took every step.
    fn setup_ring<D: VirtioDevice>(
        &mut self,
        s: &mut SteppedSession<'_, D>,
        ring: usize,
        n: u16,
        file: usize,
    ) {
        let index = ring as u32;
        let need_reply = self.reply_ack();
        let stop = Message::GetVringBase(VringState { index, num: 0 });
        if !self.send(s, &stop, false, &[]).accepted() {
            return;
        }
        // The ring is stopped: the driver starts afresh.
        let [desc, avail, used] = natural_ring(file, ring, u64::from(n));
        let size = QueueSize::new(u32::from(n)).expect("a power of two");
        let layout = QueueLayout::new(
            size,
            GuestAddress(desc),
            GuestAddress(avail),
            GuestAddress(used),
        )
        .expect("natural layouts are aligned");
        let mut q = Box::new(DriverQueue::new(layout, false, None).expect("at most MAX_RING"));
        let fits = q.init(&self.files.view).is_ok()
            && used + QueueLayout::used_ring_len(size)
                <= file as u64 * FILE_STRIDE + self.files.lens[file];
        self.rings[ring].driver = fits.then_some(Driver { q, file });
        let addr = vring_addr(index, 0, [desc, avail, used].map(|g| USER_BASE + g));
        let mut all = true;
        for msg in [
            Message::SetVringNum(VringState {
                index,
                num: u32::from(n),
            }),
            Message::SetVringAddr(addr),
            Message::SetVringBase(VringState { index, num: 0 }),
        ] {
            let sent = self.send(s, &msg, need_reply, &[]);
            if sent == Sent::Ended {
                return;
            }
            all &= sent.accepted();
        }
        let driven = self.rings[ring].driver.is_some();
        self.rings[ring].trusted = all && driven && self.honest;
    }

    /// Adds a chain to ring `ring`'s driver and publishes it; false if
    /// it could not (no driver, no room).
    fn chain(
        &mut self,
        ring: usize,
        readable: &[(Vec<u8>, u32)],
        writable: &[(Vec<u8>, u32)],
    ) -> bool {
        let Some(file) = self.rings[ring].driver.as_ref().map(|d| d.file) else {
            return false;
        };
        let mut bufs = Vec::new();
        for (data, len) in readable.iter().chain(writable) {
            let Some(at) = self.alloc(file, u64::from(*len)) else {
                return false;
            };
            if !data.is_empty() {
                self.files
                    .view
                    .write(at, &data[..*len as usize])
                    .expect("buffer inside its file");
            }
            bufs.push((at, *len));
        }
        let (r, w) = bufs.split_at(readable.len());
        let view = &self.files.view;
        let Some(d) = self.rings[ring].driver.as_mut() else {
            return false;
        };
        d.q.add(view, r, w).is_ok() && d.q.publish(view).is_ok()
    }

    /// Room for `len` bytes in `file`'s buffer area (a bump allocator that
    /// wraps: buffers of chains long done are reused).
    fn alloc(&mut self, file: usize, len: u64) -> Option<GuestAddress> {
        let base = Self::buf_base(self.nq);
        let end = self.files.lens[file];
        if base + len > end {
            return None;
        }
        let next = &mut self.next_buf[file];
        if *next + len > end {
            *next = base;
        }
        let at = *next;
        *next = (at + len).next_multiple_of(8);
        Some(GuestAddress(file as u64 * FILE_STRIDE + at))
    }

    /// Writes ring `ring`'s kick eventfd and lets the backend run.
    fn kick<D: VirtioDevice>(&mut self, s: &mut SteppedSession<'_, D>, ring: usize) {
        if self.sock.is_none() {
            return;
        }
        signal(&self.rings[ring].kick);
        self.settle(s);
    }

    /// Lets the backend run until idle (an event the frontend caused
    /// without a message).
    fn settle<D: VirtioDevice>(&mut self, s: &mut SteppedSession<'_, D>) {
        let p = s.run_until_idle(MAX_ROUNDS);
        assert_ne!(p, Progress::Busy, "the backend did not settle");
        if p == Progress::Ended {
            // Only a device panic ends a session without a message.
            self.check_end(s, true);
            panic!("the session ended on a kick: {:?}", s.end());
        }
        if let Some(sock) = &self.sock {
            let replies = read_replies(sock);
            assert!(replies.is_empty(), "replies to nothing: {replies:?}");
        }
    }

    /// Takes every used element of every ring; one that is not valid on a
    /// trusted ring is the backend's or the device's fault.
    fn drain(&mut self) {
        let view = &self.files.view;
        for (i, ring) in self.rings.iter_mut().enumerate() {
            let Some(d) = ring.driver.as_mut() else {
                continue;
            };
            loop {
                match d.q.pop_used(view) {
                    Ok(Some(_)) if ring.trusted && self.honest => self.report.trusted_used += 1,
                    Ok(Some(_)) => self.report.other_used += 1,
                    Ok(None) => break,
                    Err(e) => {
                        assert!(
                            !(ring.trusted && self.honest && e.is_device_fault()),
                            "bad used element on well-formed ring {i}: {e}"
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Ends the session if it is still on: the used elements taken, the
    /// connection closed between messages; the session must end, as
    /// closed.
    fn hang_up<D: VirtioDevice>(&mut self, s: &mut SteppedSession<'_, D>) {
        if let Some(sock) = self.sock.take() {
            self.drain();
            drop(sock);
            let p = s.run_until_idle(MAX_ROUNDS);
            assert_eq!(p, Progress::Ended, "a session outlived its frontend");
            assert!(
                matches!(s.end(), Some(SessionEnd::Closed)),
                "a hang-up between messages ended as {:?}",
                s.end()
            );
        }
        self.untrust_all();
    }
}

/// Feature bits from `b`, with `offered` what the backend offers.
fn bits(b: Bits, offered: u64) -> u64 {
    match b {
        Bits::Offered => offered,
        Bits::Masked(m) => offered & m,
        Bits::Raw(v) => v,
    }
}

fn vring_addr(index: u32, flags: u32, [desc, avail, used]: [u64; 3]) -> VringAddr {
    VringAddr {
        index,
        flags,
        desc,
        used,
        avail,
        log: 0,
    }
}

/// Every whole reply waiting on the frontend's socket (non-blocking).
fn read_replies(sock: &UnixStream) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&*sock).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The backend closed the connection with an error (a reset).
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading replies: {e}"),
        }
    }
    let mut replies = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let size = rest
            .get(8..12)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
            .unwrap_or_else(|| panic!("a reply cut inside its header: {rest:?}"));
        let len = HEADER_LEN + size;
        assert!(rest.len() >= len, "a reply cut inside its payload");
        replies.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    replies
}

/// The canonical session, on the backend the input has been at: a fresh
/// frontend with its own memory negotiates, sets up ring 0 with one request
/// waiting and its kick written, asks for the ring's place, and hangs up;
/// it sends all of it at once, so the backend serves it with
/// [`Backend::serve_connection`] (the blocking loop) on this thread. Every
/// reply must be right, and so must the used element.
fn canonical<D: VirtioDevice>(backend: &mut Backend<D>, blk: bool, offered: u64) {
    const LEN: u64 = 0x1_0000;
    let file = memfd(LEN);
    let view = SharedMemory::new();
    let mut regions = Regions::default();
    let region = natural_region(0, LEN);
    regions
        .replace(&[region], &[file.try_clone().expect("dup")], &view)
        .expect("maps");
    let (kick, call) = (eventfd(), eventfd());

    // The request, in the ring before the backend sees it: 64 bytes of
    // entropy, or a read of sector 0.
    let n = 16u16;
    let [desc, avail, used] = natural_ring(0, 0, u64::from(n));
    let layout = QueueLayout::new(
        QueueSize::new(u32::from(n)).expect("power of two"),
        GuestAddress(desc),
        GuestAddress(avail),
        GuestAddress(used),
    )
    .expect("aligned");
    let mut q = Box::new(DriverQueue::<16>::new(layout, false, None).expect("fits"));
    q.init(&view).expect("ring in memory");
    let buf = GuestAddress(0x8000);
    let status_at = GuestAddress(buf.0 + 0x400);
    let (token, want_len) = if blk {
        let mut header = [0u8; BLK_HEADER_LEN as usize];
        header[..4].copy_from_slice(&req::IN.to_le_bytes());
        view.write(buf, &header).expect("in memory");
        view.write(status_at, &[0xff]).expect("in memory");
        let data = GuestAddress(buf.0 + 0x100);
        let t = q
            .add(
                &view,
                &[(buf, BLK_HEADER_LEN as u32)],
                &[(data, 512), (status_at, 1)],
            )
            .expect("room in the ring");
        (t, 513)
    } else {
        let t = q.add(&view, &[], &[(buf, 64)]).expect("room in the ring");
        (t, 64)
    };
    q.publish(&view).expect("publish");
    signal(&kick);

    let vfd = VringFd {
        index: 0,
        has_fd: true,
    };
    let addr = vring_addr(0, 0, [desc, avail, used].map(|g| USER_BASE + g));
    let features = offered & (VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES);
    // Each message, whether it asks for a status, and its descriptors.
    let session: Vec<(Message, bool, Vec<RawFd>)> = vec![
        (Message::SetOwner, false, vec![]),
        (Message::GetFeatures, false, vec![]),
        (Message::SetFeatures(features), false, vec![]),
        (Message::GetProtocolFeatures, false, vec![]),
        (
            Message::SetProtocolFeatures(PROTOCOL_FEATURES),
            false,
            vec![],
        ),
        (
            Message::SetMemTable(vec![region]),
            true,
            vec![file.as_raw_fd()],
        ),
        (
            Message::SetVringNum(VringState {
                index: 0,
                num: u32::from(n),
            }),
            true,
            vec![],
        ),
        (Message::SetVringAddr(addr), true, vec![]),
        (
            Message::SetVringBase(VringState { index: 0, num: 0 }),
            true,
            vec![],
        ),
        (Message::SetVringCall(vfd), true, vec![call.as_raw_fd()]),
        (Message::SetVringKick(vfd), true, vec![kick.as_raw_fd()]),
        (
            Message::SetVringEnable(VringState { index: 0, num: 1 }),
            true,
            vec![],
        ),
        (
            Message::GetVringBase(VringState { index: 0, num: 0 }),
            false,
            vec![],
        ),
    ];
    let (sock, stream) = UnixStream::pair().expect("socket pair");
    for (msg, need_reply, fds) in &session {
        codec::send_with_fds(&sock, &msg.encode(*need_reply), fds).expect("send");
    }
    sock.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let end = backend.serve_connection(stream);
    assert!(
        matches!(end, SessionEnd::Closed),
        "the canonical session ended as {end}"
    );
    sock.set_nonblocking(true).expect("non-blocking socket");
    let replies = read_replies(&sock);
    let want: Vec<(&Message, Reply)> = session
        .iter()
        .filter_map(|(msg, need_reply, _)| {
            let r = match msg {
                Message::GetFeatures => Reply::U64(offered),
                Message::GetProtocolFeatures => Reply::U64(PROTOCOL_FEATURES),
                Message::GetVringBase(_) => Reply::VringState(VringState { index: 0, num: 1 }),
                _ if *need_reply => Reply::U64(0),
                _ => return None,
            };
            Some((msg, r))
        })
        .collect();
    assert_eq!(
        replies.len(),
        want.len(),
        "canonical session: replies {replies:?}"
    );
    for (bytes, (msg, want)) in replies.iter().zip(want) {
        let got = codec::decode_reply(msg.request(), !msg.has_reply(), bytes);
        assert_eq!(got, Ok(want), "canonical session: the reply to {msg:?}");
    }
    let u = q
        .pop_used(&view)
        .expect("a valid used element")
        .expect("canonical session: no used element");
    assert_eq!(
        (u.token, u.len),
        (token, want_len),
        "canonical session: wrong used element"
    );
    if blk {
        let mut st = [0xffu8];
        view.read(status_at, &mut st).expect("in memory");
        assert_eq!(
            st[0],
            status::OK,
            "canonical session: read of sector 0 failed"
        );
    }
    let mut calls = [0u8; 8];
    let signalled = (&call).read(&mut calls).is_ok_and(|n| n == 8);
    assert!(signalled, "canonical session: no used-buffer notification");
}
