//! A raw frontend for the backend's tests: messages through the crate's
//! own codec over one end of a socket pair, the backend serving the other
//! end in the test thread, and a memfd for the memory table.

#![allow(dead_code)]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhost_user::codec::{
    self, FLAG_REPLY, FLAG_VERSION, HEADER_LEN, MemRegion, Message, VringAddr,
};
use virtio_core::features::DeviceType;
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};

/// The memory table's size.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where the frontend has the memory (ring addresses are in this space).
pub const USER_BASE: u64 = 0x7f00_0000_0000;
/// The ring's areas, as offsets in the memory.
pub const DESC: u64 = 0x1000;
/// The available ring.
pub const AVAIL: u64 = 0x2000;
/// The used ring.
pub const USED: u64 = 0x3000;

/// A frontend's end of the socket.
pub struct Front(pub UnixStream);

impl Front {
    /// `SET_OWNER`, `VERSION_1` with protocol features, and `protocol`
    /// (e.g. `REPLY_ACK`): the opening every test session shares.
    pub fn negotiate(&self, protocol: u64) {
        self.send(&Message::SetOwner, false, &[]);
        self.send(
            &Message::SetFeatures(VERSION_1 | codec::VHOST_USER_F_PROTOCOL_FEATURES),
            false,
            &[],
        );
        self.send(&Message::SetProtocolFeatures(protocol), false, &[]);
    }

    /// A connected pair: the frontend, and the stream the backend serves.
    pub fn pair() -> (Front, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (Front(a), b)
    }

    /// Sends `msg`.
    pub fn send(&self, msg: &Message, need_reply: bool, fds: &[RawFd]) {
        codec::send_with_fds(&self.0, &msg.encode(need_reply), fds).unwrap();
    }

    /// Sends `msg`, ignoring a failure (the backend may be gone).
    pub fn try_send(&self, msg: &Message, need_reply: bool, fds: &[RawFd]) -> bool {
        codec::send_with_fds(&self.0, &msg.encode(need_reply), fds).is_ok()
    }

    /// Reads one reply: request code and payload.
    pub fn reply(&self) -> Option<(u32, Vec<u8>)> {
        let mut h = [0u8; HEADER_LEN];
        (&self.0).read_exact(&mut h).ok()?;
        let request = u32::from_ne_bytes(h[0..4].try_into().unwrap());
        let flags = u32::from_ne_bytes(h[4..8].try_into().unwrap());
        assert_eq!(flags, FLAG_VERSION | FLAG_REPLY);
        let size = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        let mut p = vec![0u8; size as usize];
        (&self.0).read_exact(&mut p).ok()?;
        Some((request, p))
    }

    /// Sends with need_reply and returns the REPLY_ACK status, or `None`
    /// when the backend closed the connection instead.
    pub fn ack(&self, msg: &Message, fds: &[RawFd]) -> Option<u64> {
        if !self.try_send(msg, true, fds) {
            return None;
        }
        let (req, p) = self.reply()?;
        assert_eq!(req, msg.request().code());
        Some(u64::from_ne_bytes(p.try_into().unwrap()))
    }
}

/// The frontend's memory: a memfd of [`MEM_SIZE`] bytes at guest address
/// 0, at [`USER_BASE`] in the frontend's space.
pub struct Mem {
    /// The file.
    pub fd: OwnedFd,
}

impl Mem {
    /// A zeroed memfd.
    pub fn new() -> Mem {
        // SAFETY: a constant NUL-terminated name; no pointers kept.
        let fd = unsafe { libc::memfd_create(c"vhost-user-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid fd, a plain size.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) };
        assert_eq!(rc, 0);
        Mem { fd }
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

    /// Ring `index`'s addresses in the frontend's space.
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
}

/// `VIRTIO_F_VERSION_1`.
pub const VERSION_1: u64 = 1 << 32;

/// An entropy device with one queue of 16 entries and 8 bytes of zeroed
/// configuration whose queue service is `notify` (what the test is
/// about), counting its calls.
pub struct Stub<F> {
    /// Answers each `queue_notify`.
    pub notify: F,
    /// `queue_notify` calls so far.
    pub notified: u64,
}

impl<F: FnMut(u16) -> Result<Served, DeviceError>> Stub<F> {
    /// A stub serving its queue with `notify`.
    pub fn new(notify: F) -> Self {
        Stub {
            notify,
            notified: 0,
        }
    }
}

impl<F: FnMut(u16) -> Result<Served, DeviceError>> VirtioDevice for Stub<F> {
    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }
    fn device_features(&self) -> u64 {
        VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_len(&self) -> usize {
        8
    }
    fn activate(&mut self, _features: u64, _queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        Ok(())
    }
    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        self.notified += 1;
        (self.notify)(queue)
    }
    fn reset(&mut self) {}
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("notified", self.notified)]
    }
}
