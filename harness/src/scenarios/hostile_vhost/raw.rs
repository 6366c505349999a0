//! A raw vhost-user frontend for the hostile-peer rows: requests built with
//! the codec, or by hand when they must be malformed, sent over a unix
//! socket with their descriptors, replies read back; guest memory is a
//! memfd reached only through `pread`/`pwrite`, never mapped here, so the
//! hostile cases can truncate it under the backend without this process
//! touching a mapping. Nothing here checks what the backend answers: the
//! cases do.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost_user::codec::{
    self, FLAG_VERSION, HEADER_LEN, MemRegion, Message, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr,
    VringFd, VringState, protocol,
};
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{DescFlags, Descriptor};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use zerocopy::IntoBytes;

/// Bytes of the frontend's memory (one region, guest address 0).
pub const MEM_SIZE: u64 = 1 << 20;
/// Where the frontend claims to have the memory mapped (ring addresses
/// are in this space; nothing is mapped there in this process).
pub const USER_BASE: u64 = 0x7f00_0000_0000;
/// The descriptor table's guest address.
pub const DESC: u64 = 0x1000;
/// The available ring's guest address.
pub const AVAIL: u64 = 0x2000;
/// The used ring's guest address.
pub const USED: u64 = 0x3000;
/// The request buffers' guest address.
pub const BUFFERS: u64 = 0x10000;
/// The ring size the raw sessions use.
pub const RING_SIZE: u32 = 16;
/// How long a raw session waits for one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// `VIRTIO_F_VERSION_1` (§6).
const VERSION_1: u64 = 1 << 32;

/// The device the backend serves, for the requests a session posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// virtio-rng (§5.4): one device-writable buffer.
    Rng,
    /// virtio-blk (§5.2): a read of sector 0 (header, data, status).
    Blk,
}

/// The frontend's memory: a memfd of [`MEM_SIZE`] bytes.
#[derive(Debug)]
pub struct Mem {
    file: File,
}

impl Mem {
    /// A zeroed memfd.
    pub fn new() -> io::Result<Mem> {
        // SAFETY: a constant NUL-terminated name; no pointer is kept.
        let fd = unsafe { libc::memfd_create(c"hostile-vhost".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created and owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(MEM_SIZE)?;
        Ok(Mem { file })
    }

    /// The descriptor to pass with `SET_MEM_TABLE`.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The memory table's one region.
    pub fn region(&self) -> MemRegion {
        MemRegion {
            guest_addr: 0,
            size: MEM_SIZE,
            user_addr: USER_BASE,
            mmap_offset: 0,
        }
    }

    /// Ring `index` at [`DESC`], [`AVAIL`] and [`USED`], in the frontend's
    /// address space.
    pub fn ring(&self, index: u32) -> VringAddr {
        VringAddr {
            index,
            flags: 0,
            desc: USER_BASE + DESC,
            used: USER_BASE + USED,
            avail: USER_BASE + AVAIL,
            log: 0,
        }
    }

    /// Writes `bytes` at guest address `gpa`.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, gpa)
    }

    /// The 16-bit little-endian value at `gpa`.
    pub fn read_u16(&self, gpa: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.file.read_exact_at(&mut b, gpa)?;
        Ok(u16::from_le_bytes(b))
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> io::Result<u16> {
        self.read_u16(USED + 2)
    }

    /// Cuts the file to `len` bytes (the backend's mapping beyond it is
    /// gone: touching it raises SIGBUS there).
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Puts one request of `kind` at head 0 and makes it available as the
    /// `n`-th entry (avail index `n` after it); its buffers start at
    /// `buffers`.
    pub fn post(&self, kind: Kind, n: u16, buffers: u64) -> io::Result<()> {
        let desc = |addr: u64, len: u32, flags: DescFlags, next: u16| {
            Descriptor::new(GuestAddress(addr), len, flags, next)
        };
        let chain = match kind {
            Kind::Rng => vec![desc(buffers, 64, DescFlags::WRITE, 0)],
            Kind::Blk => {
                // VIRTIO_BLK_T_IN of sector 0 (§5.2.6).
                let mut header = [0u8; 16];
                header[0..4].copy_from_slice(&0u32.to_le_bytes());
                self.write(buffers, &header)?;
                vec![
                    desc(buffers, 16, DescFlags::NEXT, 1),
                    desc(buffers + 0x200, 512, DescFlags::WRITE | DescFlags::NEXT, 2),
                    desc(buffers + 0x400, 1, DescFlags::WRITE, 0),
                ]
            }
        };
        for (i, d) in chain.iter().enumerate() {
            self.write(DESC + 16 * i as u64, d.as_bytes())?;
        }
        let slot = u64::from(n.wrapping_sub(1)) % u64::from(RING_SIZE);
        self.write(AVAIL + 4 + 2 * slot, &0u16.to_le_bytes())?;
        self.write(AVAIL + 2, &n.to_le_bytes())
    }

    /// Waits until the used index reaches `n`, at most `limit`.
    pub fn wait_used(&self, n: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.used_idx().is_ok_and(|i| i == n) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One frame as bytes: a header with `request`, `flags` and `payload`'s
/// length, then `payload`.
pub fn frame(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&request.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// A header announcing `size` bytes of payload, whatever follows.
pub fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut out = frame(request, flags, &[]);
    out[8..12].copy_from_slice(&size.to_ne_bytes());
    out
}

/// The request flags (version 1), with need-reply when `ack`.
pub fn flags(ack: bool) -> u32 {
    FLAG_VERSION | if ack { codec::FLAG_NEED_REPLY } else { 0 }
}

/// A frontend's connection.
#[derive(Debug)]
pub struct Client {
    sock: UnixStream,
}

impl Client {
    /// Connects to the backend at `path`.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        sock.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(Client { sock })
    }

    /// Sends `bytes` with `fds` attached.
    pub fn send_raw(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        codec::send_with_fds(&self.sock, bytes, fds)
    }

    /// Sends `msg` (need-reply when `ack`) with `fds`.
    pub fn send(&self, msg: &Message, ack: bool, fds: &[RawFd]) -> io::Result<()> {
        self.send_raw(&msg.encode(ack), fds)
    }

    /// Reads one reply: its request code and payload (at most 64 KiB).
    pub fn reply(&self) -> io::Result<(u32, Vec<u8>)> {
        let mut h = [0u8; HEADER_LEN];
        (&self.sock).read_exact(&mut h)?;
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let size = word(8) as usize;
        if size > 1 << 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a reply of {size} bytes"),
            ));
        }
        let mut p = vec![0u8; size];
        (&self.sock).read_exact(&mut p)?;
        Ok((word(0), p))
    }

    /// A reply's `u64` (a `GET_*` answer or a `REPLY_ACK` status).
    pub fn reply_u64(&self) -> io::Result<u64> {
        let (_, p) = self.reply()?;
        <[u8; 8]>::try_from(p.as_slice())
            .map(u64::from_ne_bytes)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {}-byte reply", p.len()),
                )
            })
    }

    /// Sends `msg` with need-reply and returns the `REPLY_ACK` status.
    pub fn ack(&self, msg: &Message, fds: &[RawFd]) -> io::Result<u64> {
        self.send(msg, true, fds)?;
        self.reply_u64()
    }

    /// Sends a `GET_*` request and returns its `u64` answer.
    pub fn get_u64(&self, msg: &Message) -> io::Result<u64> {
        self.send(msg, false, &[])?;
        self.reply_u64()
    }

    /// Whether the backend closes the connection within `limit` (what it
    /// sends meanwhile is read and dropped).
    pub fn closed_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.sock.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match (&self.sock).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// The eventfds of one ring.
#[derive(Debug)]
pub struct RingFds {
    /// The kick.
    pub kick: EventFd,
    /// The call.
    pub call: EventFd,
}

impl RingFds {
    /// Two fresh eventfds.
    pub fn new() -> io::Result<RingFds> {
        Ok(RingFds {
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

/// One step of a session.
#[derive(Debug)]
pub enum Step {
    /// A request, with need-reply when `ack`, and its descriptors.
    Msg {
        /// The request.
        msg: Message,
        /// Need-reply.
        ack: bool,
        /// Its descriptors.
        fds: Vec<RawFd>,
    },
    /// One request posted as the `n`-th available entry, then a kick.
    Kick(u16),
}

impl Step {
    fn msg(msg: Message, ack: bool, fds: Vec<RawFd>) -> Step {
        Step::Msg { msg, ack, fds }
    }

    /// Whether the backend owes an answer to it.
    pub fn has_reply(&self) -> bool {
        match self {
            Step::Msg { msg, ack, .. } => *ack || msg.has_reply(),
            Step::Kick(_) => false,
        }
    }

    /// The bytes it sends (empty for a kick).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Step::Msg { msg, ack, .. } => msg.encode(*ack),
            Step::Kick(_) => Vec::new(),
        }
    }

    /// The descriptors it sends.
    pub fn fds(&self) -> &[RawFd] {
        match self {
            Step::Msg { fds, .. } => fds,
            Step::Kick(_) => &[],
        }
    }
}

/// The handshake a frontend makes before it touches a ring: ownership,
/// features, protocol features with `REPLY_ACK` (so every later request
/// is acknowledged), the queue count.
pub fn handshake() -> Vec<Step> {
    vec![
        Step::msg(Message::SetOwner, false, Vec::new()),
        Step::msg(Message::GetFeatures, false, Vec::new()),
        Step::msg(Message::GetProtocolFeatures, false, Vec::new()),
        Step::msg(
            Message::SetProtocolFeatures(
                protocol::REPLY_ACK | protocol::MQ | protocol::CONFIG | protocol::RESET_DEVICE,
            ),
            false,
            Vec::new(),
        ),
        Step::msg(Message::GetQueueNum, false, Vec::new()),
        Step::msg(
            Message::SetFeatures(VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES),
            true,
            Vec::new(),
        ),
    ]
}

/// A well-behaved session on ring 0 as QEMU orders it: the
/// [`handshake`], the memory table, the ring (size, base, addresses, call,
/// kick, enable), one request posted and kicked, the ring stopped
/// (`GET_VRING_BASE`), the device reset.
pub fn canonical(mem: &Mem, fds: &RingFds) -> Vec<Step> {
    let mut steps = handshake();
    let vfd = VringFd {
        index: 0,
        has_fd: true,
    };
    steps.extend([
        Step::msg(
            Message::SetMemTable(vec![mem.region()]),
            true,
            vec![mem.fd()],
        ),
        Step::msg(
            Message::SetVringNum(VringState {
                index: 0,
                num: RING_SIZE,
            }),
            true,
            Vec::new(),
        ),
        Step::msg(
            Message::SetVringBase(VringState { index: 0, num: 0 }),
            true,
            Vec::new(),
        ),
        Step::msg(Message::SetVringAddr(mem.ring(0)), true, Vec::new()),
        Step::msg(Message::SetVringCall(vfd), true, vec![fds.call.as_raw_fd()]),
        Step::msg(Message::SetVringKick(vfd), true, vec![fds.kick.as_raw_fd()]),
        Step::msg(
            Message::SetVringEnable(VringState { index: 0, num: 1 }),
            true,
            Vec::new(),
        ),
        Step::Kick(1),
        Step::msg(
            Message::GetVringBase(VringState { index: 0, num: 0 }),
            false,
            Vec::new(),
        ),
        Step::msg(Message::ResetDevice, true, Vec::new()),
    ]);
    steps
}

/// Runs `step` on `client`: sends it and reads its reply (a kick posts
/// its request first). Returns the reply's `u64` when there is one of 8
/// bytes.
pub fn run_step(
    client: &Client,
    step: &Step,
    mem: &Mem,
    kind: Kind,
    fds: &RingFds,
) -> io::Result<Option<u64>> {
    match step {
        Step::Kick(n) => {
            mem.post(kind, *n, BUFFERS)?;
            fds.kick.write(1)?;
            Ok(None)
        }
        Step::Msg { msg, ack, fds } => {
            client.send(msg, *ack, fds)?;
            if step.has_reply() {
                let (_, p) = client.reply()?;
                Ok(<[u8; 8]>::try_from(p.as_slice())
                    .ok()
                    .map(u64::from_ne_bytes))
            } else {
                Ok(None)
            }
        }
    }
}
