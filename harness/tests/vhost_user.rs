//! vhost-user backend sessions (QEMU `docs/interop/vhost-user.rst`): the
//! rust-vmm `vhost` crate's `Frontend` as an independent peer drives our
//! backend serving virtio-rng, and raw sockets send every kind of bad input
//! the protocol allows a frontend to send; the daemon answers with an error
//! reply or a closed connection, and then serves the next frontend.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user::codec::{
    self, FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, HEADER_LEN, MemRegion, Message, Request,
    VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringFd, VringState, protocol,
};
use vhost_user::{Backend, SharedMemory};
use virtio_core::GuestMemory;
use virtio_core::features::DeviceType;
use virtio_core::memory::{GuestAddress, Region, RegionMemory};
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const MEM_SIZE: usize = 1 << 20;
// Guest-physical layout of the test ring (size 16).
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUF: u64 = 0x10000;
// The guest base of the memory: not 0, so that guest and frontend
// addresses differ.
const GPA_BASE: u64 = 0x4000_0000;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A daemon serving a deterministic virtio-rng on a fresh socket, for
/// ever (the thread ends with the test process).
fn daemon() -> PathBuf {
    daemon_with(|mem| {
        Box::new(virtio_devices::rng::Rng::new(
            backends::rng::Deterministic::new(7),
            mem,
        ))
    })
}

/// A daemon serving the device `make` builds over the session memory.
fn daemon_with(
    make: impl FnOnce(SharedMemory) -> Box<dyn VirtioDevice + Send> + Send + 'static,
) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "vhost-user-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mem = SharedMemory::new();
        let device = make(mem.clone());
        let mut backend = Backend::new(device, mem, Vec::new());
        let e = backend.serve(&listener);
        panic!("daemon stopped: {e}");
    });
    path
}

/// The frontend's guest memory: a memfd mapped here.
struct Memory {
    fd: OwnedFd,
    host: *mut u8,
    view: RegionMemory,
}

impl Memory {
    fn new() -> Memory {
        // SAFETY: constant name, no pointers kept.
        let fd = unsafe { libc::memfd_create(c"vhost-user-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid fd.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) };
        assert_eq!(rc, 0);
        // SAFETY: a fresh shared mapping of the whole file.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        let host = host.cast::<u8>();
        let mut view = RegionMemory::new();
        // SAFETY: the mapping lives as long as the test process (never
        // unmapped) and is only reached through `view`'s raw copies.
        view.add(unsafe { Region::new(GuestAddress(GPA_BASE), host, MEM_SIZE as u64) })
            .unwrap();
        Memory { fd, host, view }
    }

    fn user(&self, gpa: u64) -> u64 {
        self.host as u64 + (gpa - GPA_BASE)
    }

    fn region(&self) -> MemRegion {
        MemRegion {
            guest_addr: GPA_BASE,
            size: MEM_SIZE as u64,
            user_addr: self.host as u64,
            mmap_offset: 0,
        }
    }

    /// One 64-byte device-writable buffer made available at slot 0.
    fn offer_buffer(&self) {
        let m = &self.view;
        let g = |a| GuestAddress(GPA_BASE + a);
        m.write_u64(g(DESC), GPA_BASE + BUF).unwrap();
        m.write_u32(g(DESC + 8), 64).unwrap();
        m.write_u16(g(DESC + 12), 2).unwrap(); // VIRTQ_DESC_F_WRITE
        m.write_u16(g(DESC + 14), 0).unwrap();
        m.write_u16(g(AVAIL + 4), 0).unwrap(); // ring[0] = head 0
        m.store_u16_release(g(AVAIL + 2), 1).unwrap(); // idx
    }

    fn used_idx(&self) -> u16 {
        self.view
            .load_u16_acquire(GuestAddress(GPA_BASE + USED + 2))
            .unwrap()
    }

    fn used_len(&self) -> u32 {
        self.view
            .read_u32(GuestAddress(GPA_BASE + USED + 8))
            .unwrap()
    }

    fn buffer(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        self.view
            .read(GuestAddress(GPA_BASE + BUF), &mut b)
            .unwrap();
        b
    }
}

/// Waits (bounded) until `fd` is readable.
fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    unsafe { libc::poll(&mut p, 1, 10_000) == 1 }
}

#[test]
fn rust_vmm_frontend_gets_entropy_from_our_rng() {
    let path = daemon();
    let mem = Memory::new();
    for round in 0..2 {
        // The second round: the daemon serves a second frontend after the
        // first hung up with its ring running.
        let mut fe = Frontend::connect(&path, 1).unwrap();
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        assert_ne!(features & VHOST_USER_F_PROTOCOL_FEATURES, 0);
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        fe.set_features(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
            .unwrap();
        let pf = fe.get_protocol_features().unwrap();
        for want in [
            VhostUserProtocolFeatures::MQ,
            VhostUserProtocolFeatures::REPLY_ACK,
            VhostUserProtocolFeatures::CONFIG,
            VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            VhostUserProtocolFeatures::RESET_DEVICE,
        ] {
            assert!(pf.contains(want), "{want:?} not offered");
        }
        fe.set_protocol_features(pf).unwrap();
        assert_eq!(fe.get_queue_num().unwrap(), 1);
        assert_eq!(fe.get_max_mem_slots().unwrap(), codec::MAX_MEM_SLOTS as u64);
        // virtio-rng has no configuration space: zeros.
        let (_, cfg) = fe
            .get_config(0, 4, VhostUserConfigFlags::WRITABLE, &[1; 4])
            .unwrap();
        assert_eq!(cfg, vec![0; 4]);
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.host as u64,
            mmap_offset: 0,
            mmap_handle: mem.fd.as_raw_fd(),
        }])
        .unwrap();
        // A fresh ring each round (the device starts at index 0).
        mem.view
            .write(GuestAddress(GPA_BASE), &vec![0u8; 0x3000])
            .unwrap();
        fe.set_vring_num(0, QSIZE).unwrap();
        fe.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: mem.user(GPA_BASE + DESC),
                used_ring_addr: mem.user(GPA_BASE + USED),
                avail_ring_addr: mem.user(GPA_BASE + AVAIL),
                log_addr: None,
            },
        )
        .unwrap();
        fe.set_vring_base(0, 0).unwrap();
        let call = EventFd::new(0).unwrap();
        let kick = EventFd::new(0).unwrap();
        fe.set_vring_call(0, &call).unwrap();
        fe.set_vring_kick(0, &kick).unwrap();
        fe.set_vring_enable(0, true).unwrap();
        mem.offer_buffer();
        kick.write(1).unwrap();
        assert!(wait_readable(call.as_raw_fd()), "no call in round {round}");
        assert_eq!(mem.used_idx(), 1);
        assert_eq!(mem.used_len(), 64, "§5.4.6: the buffer is filled");
        assert_ne!(mem.buffer(), [0u8; 64]);
        // GET_VRING_BASE stops the ring and reports where it stands.
        assert_eq!(fe.get_vring_base(0).unwrap(), 1);
        if round == 0 {
            drop(fe);
        } else {
            fe.reset_device().unwrap();
            assert_eq!(fe.get_queue_num().unwrap(), 1);
        }
    }
}

/// A raw frontend for bad input.
struct Raw(UnixStream);

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    /// Negotiates protocol features (REPLY_ACK among them) and maps
    /// `mem`.
    fn negotiated(path: &Path, mem: &Memory) -> Raw {
        let r = Raw::connect(path);
        r.send(&Message::SetOwner, false, &[]);
        r.send(
            &Message::SetFeatures(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES),
            false,
            &[],
        );
        r.send(
            &Message::SetProtocolFeatures(protocol::REPLY_ACK | protocol::MQ),
            false,
            &[],
        );
        assert_eq!(
            r.ack(
                &Message::SetMemTable(vec![mem.region()]),
                &[mem.fd.as_raw_fd()]
            ),
            0
        );
        r
    }

    fn send(&self, msg: &Message, need_reply: bool, fds: &[RawFd]) {
        codec::send_with_fds(&self.0, &msg.encode(need_reply), fds).unwrap();
    }

    fn send_bytes(&self, bytes: &[u8], fds: &[RawFd]) {
        codec::send_with_fds(&self.0, bytes, fds).unwrap();
    }

    /// Reads one reply: header and payload.
    fn reply(&self) -> Option<(u32, Vec<u8>)> {
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

    /// Sends with need_reply and returns the REPLY_ACK status.
    fn ack(&self, msg: &Message, fds: &[RawFd]) -> u64 {
        self.send(msg, true, fds);
        let (req, p) = self.reply().expect("a REPLY_ACK reply");
        assert_eq!(req, msg.request().code());
        u64::from_ne_bytes(p.try_into().unwrap())
    }

    /// Whether the daemon closed the connection.
    fn closed(&self) -> bool {
        let mut b = [0u8; 1];
        // A close with unread bytes in the daemon's queue reads as a reset.
        match (&self.0).read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

/// The daemon still serves: a new frontend gets its features.
fn still_serves(path: &Path) {
    let r = Raw::connect(path);
    r.send(&Message::GetFeatures, false, &[]);
    let (req, p) = r.reply().expect("GET_FEATURES reply");
    assert_eq!(req, Request::GetFeatures.code());
    assert_ne!(
        u64::from_ne_bytes(p.try_into().unwrap()) & VHOST_USER_F_PROTOCOL_FEATURES,
        0
    );
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    [request, flags, size]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

#[test]
fn oversized_truncated_and_unknown_messages_close_the_connection() {
    let path = daemon();
    // Oversized: a 64 KiB payload announced.
    let r = Raw::connect(&path);
    r.send_bytes(&header(1, FLAG_VERSION, 0x10000), &[]);
    assert!(r.closed());
    still_serves(&path);
    // Truncated: SET_FEATURES announces 8 bytes, 3 come, then hang-up.
    let r = Raw::connect(&path);
    r.send_bytes(&header(2, FLAG_VERSION, 8), &[]);
    r.send_bytes(&[1, 2, 3], &[]);
    r.0.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.closed());
    still_serves(&path);
    // A half header, then hang-up.
    let r = Raw::connect(&path);
    r.send_bytes(&[1, 0, 0], &[]);
    drop(r);
    still_serves(&path);
    // Unknown request code, even with need_reply.
    let r = Raw::connect(&path);
    r.send_bytes(&header(999, FLAG_VERSION | FLAG_NEED_REPLY, 0), &[]);
    assert!(r.closed());
    still_serves(&path);
    // Bad version, reply flag on a request.
    for flags in [0x2, FLAG_VERSION | FLAG_REPLY] {
        let r = Raw::connect(&path);
        r.send_bytes(&header(1, flags, 0), &[]);
        assert!(r.closed());
    }
    // A payload of the wrong size for its request, without REPLY_ACK.
    let r = Raw::connect(&path);
    r.send_bytes(&header(2, FLAG_VERSION, 4), &[]);
    r.send_bytes(&[0; 4], &[]);
    assert!(r.closed());
    still_serves(&path);
}

#[test]
fn wrong_numbers_of_fds_get_an_error_reply_or_a_close() {
    let path = daemon();
    let mem = Memory::new();
    let e1 = EventFd::new(0).unwrap();
    let e2 = EventFd::new(0).unwrap();
    let r = Raw::negotiated(&path, &mem);
    let call = Message::SetVringCall(VringFd {
        index: 0,
        has_fd: true,
    });
    // Too many, too few.
    assert_eq!(r.ack(&call, &[e1.as_raw_fd(), e2.as_raw_fd()]), 1);
    assert_eq!(r.ack(&call, &[]), 1);
    assert_eq!(r.ack(&Message::SetOwner, &[]), 0);
    drop(r);
    // More descriptors than any message may carry: closed.
    let r = Raw::connect(&path);
    let many: Vec<EventFd> = (0..40).map(|_| EventFd::new(0).unwrap()).collect();
    let raw: Vec<RawFd> = many.iter().map(|e| e.as_raw_fd()).collect();
    let bytes = call.encode(false);
    // send_with_fds caps at MAX_FDS; go around it with a raw sendmsg.
    send_raw(&r.0, &bytes, &raw);
    assert!(r.closed());
    // Without REPLY_ACK, a wrong count closes.
    let r = Raw::connect(&path);
    r.send(&call, false, &[]);
    assert!(r.closed());
    still_serves(&path);
}

fn send_raw(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    let mut cbuf = vec![0u64; 64];
    let data_len = std::mem::size_of_val(fds) as u32;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: zeroed msghdr is valid; the buffers below are live.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
    // SAFETY: the control buffer (512 bytes) holds the header and 40 ints.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(c),
            data_len as usize,
        );
        assert_eq!(
            libc::sendmsg(sock.as_raw_fd(), &msg, 0),
            bytes.len() as isize
        );
    }
}

#[test]
fn bad_memory_tables_are_refused() {
    let path = daemon();
    let mem = Memory::new();
    let r = Raw::negotiated(&path, &mem);
    let fd = mem.fd.as_raw_fd();
    let region = mem.region();
    let half = MemRegion {
        size: (MEM_SIZE / 2) as u64,
        ..region
    };
    // Overlapping guest ranges.
    let overlap = MemRegion {
        guest_addr: GPA_BASE + 0x1000,
        user_addr: region.user_addr + MEM_SIZE as u64,
        ..half
    };
    assert_eq!(
        r.ack(&Message::SetMemTable(vec![half, overlap]), &[fd, fd]),
        1
    );
    // Overlapping frontend ranges.
    let user_overlap = MemRegion {
        guest_addr: GPA_BASE + 0x10_0000,
        user_addr: region.user_addr + 0x1000,
        ..half
    };
    assert_eq!(
        r.ack(&Message::SetMemTable(vec![half, user_overlap]), &[fd, fd]),
        1
    );
    // A zero-sized region.
    let empty = MemRegion { size: 0, ..region };
    assert_eq!(r.ack(&Message::SetMemTable(vec![empty]), &[fd]), 1);
    assert_eq!(r.ack(&Message::AddMemReg(empty), &[fd]), 1);
    // An offset beyond the file.
    let beyond = MemRegion {
        mmap_offset: 0x1000,
        ..region
    };
    assert_eq!(r.ack(&Message::SetMemTable(vec![beyond]), &[fd]), 1);
    // A descriptor that is no file.
    let e = EventFd::new(0).unwrap();
    assert_eq!(
        r.ack(&Message::SetMemTable(vec![region]), &[e.as_raw_fd()]),
        1
    );
    // Removing a region that is not there; adding one that overlaps.
    let other = MemRegion {
        guest_addr: 0,
        ..half
    };
    assert_eq!(r.ack(&Message::RemMemReg(other), &[]), 1);
    assert_eq!(r.ack(&Message::AddMemReg(half), &[fd]), 1);
    // The table set by `negotiated` still stands: a ring in it is
    // accepted.
    assert_eq!(
        r.ack(&Message::SetVringNum(VringState { index: 0, num: 16 }), &[]),
        0
    );
    assert_eq!(r.ack(&Message::SetVringAddr(ring_addr(&mem, 0)), &[]), 0);
    // Remove it, add it back.
    assert_eq!(r.ack(&Message::RemMemReg(region), &[]), 0);
    assert_eq!(r.ack(&Message::AddMemReg(region), &[fd]), 0);
    drop(r);
    still_serves(&path);
}

fn ring_addr(mem: &Memory, index: u32) -> VringAddr {
    VringAddr {
        index,
        flags: 0,
        desc: mem.user(GPA_BASE + DESC),
        used: mem.user(GPA_BASE + USED),
        avail: mem.user(GPA_BASE + AVAIL),
        log: 0,
    }
}

#[test]
fn bad_rings_are_refused() {
    let path = daemon();
    let mem = Memory::new();
    let r = Raw::negotiated(&path, &mem);
    let num = |index, num| Message::SetVringNum(VringState { index, num });
    // No ring 1; sizes must be powers of two up to the device's 1024 (the
    // default, what QEMU's virtio-mmio lets Linux ask for).
    assert_eq!(r.ack(&num(1, 16), &[]), 1);
    assert_eq!(r.ack(&num(0, 15), &[]), 1);
    assert_eq!(r.ack(&num(0, 2048), &[]), 1);
    assert_eq!(r.ack(&num(0, 0), &[]), 1);
    // Addresses before the size.
    assert_eq!(r.ack(&Message::SetVringAddr(ring_addr(&mem, 0)), &[]), 1);
    assert_eq!(r.ack(&num(0, 1024), &[]), 0);
    assert_eq!(r.ack(&num(0, 16), &[]), 0);
    // A value other than 0 or 1.
    let enable = Message::SetVringEnable(VringState { index: 0, num: 1 });
    assert_eq!(
        r.ack(
            &Message::SetVringEnable(VringState { index: 0, num: 2 }),
            &[]
        ),
        1
    );
    // Addresses outside the mapped memory, partly outside, misaligned.
    let outside = VringAddr {
        desc: 0x10,
        ..ring_addr(&mem, 0)
    };
    assert_eq!(r.ack(&Message::SetVringAddr(outside), &[]), 1);
    let straddle = VringAddr {
        used: mem.user(GPA_BASE + MEM_SIZE as u64 - 8),
        ..ring_addr(&mem, 0)
    };
    assert_eq!(r.ack(&Message::SetVringAddr(straddle), &[]), 1);
    let misaligned = VringAddr {
        desc: mem.user(GPA_BASE + 8),
        ..ring_addr(&mem, 0)
    };
    assert_eq!(r.ack(&Message::SetVringAddr(misaligned), &[]), 1);
    // A kick that is not an eventfd, a kick without descriptor (polling).
    let file = std::fs::File::open("/dev/null").unwrap();
    let kick = |has_fd| Message::SetVringKick(VringFd { index: 0, has_fd });
    assert_eq!(r.ack(&kick(true), &[file.as_raw_fd()]), 1);
    assert_eq!(r.ack(&kick(false), &[]), 1);
    // A resume index that is no split-ring index (16 bits).
    assert_eq!(
        r.ack(
            &Message::SetVringBase(VringState {
                index: 0,
                num: 0x1_0000
            }),
            &[]
        ),
        1
    );
    // Unsupported requests get an error reply with REPLY_ACK.
    r.send_bytes(
        &header(
            Request::SetLogBase.code(),
            FLAG_VERSION | FLAG_NEED_REPLY,
            0,
        ),
        &[],
    );
    let (_, p) = r.reply().unwrap();
    assert_eq!(u64::from_ne_bytes(p.try_into().unwrap()), 1);
    // Now the right way, and the ring works.
    assert_eq!(r.ack(&Message::SetVringAddr(ring_addr(&mem, 0)), &[]), 0);
    assert_eq!(r.ack(&enable, &[]), 0);
    let call = EventFd::new(0).unwrap();
    let k = EventFd::new(0).unwrap();
    assert_eq!(
        r.ack(
            &Message::SetVringCall(VringFd {
                index: 0,
                has_fd: true
            }),
            &[call.as_raw_fd()]
        ),
        0
    );
    assert_eq!(r.ack(&kick(true), &[k.as_raw_fd()]), 0);
    mem.offer_buffer();
    k.write(1).unwrap();
    assert!(wait_readable(call.as_raw_fd()));
    assert_eq!(mem.used_idx(), 1);
    // GET_VRING_BASE for a ring that does not exist: no reply is
    // possible, the connection closes.
    r.send(
        &Message::GetVringBase(VringState { index: 9, num: 0 }),
        false,
        &[],
    );
    assert!(r.closed());
    still_serves(&path);
}

/// One step of a frontend's set-up, for [`every_order_real_frontends_send_runs_the_ring`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Owner,
    Features { protocol: bool },
    ProtocolFeatures,
    MemTable,
    Num,
    Addr,
    Base,
    Call,
    Kick,
    Enable(bool),
}

/// Sends `steps` (no replies asked) on a fresh connection with fresh
/// memory, offers one buffer, and reports whether the ring served it.
fn run_order(path: &Path, steps: &[Step]) -> bool {
    let mem = Memory::new();
    let r = Raw::connect(path);
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    mem.offer_buffer();
    for step in steps {
        match *step {
            Step::Owner => r.send(&Message::SetOwner, false, &[]),
            Step::Features { protocol } => {
                r.send(&Message::GetFeatures, false, &[]);
                r.reply().expect("GET_FEATURES reply");
                let pf = if protocol {
                    VHOST_USER_F_PROTOCOL_FEATURES
                } else {
                    0
                };
                r.send(&Message::SetFeatures(VIRTIO_F_VERSION_1 | pf), false, &[]);
            }
            Step::ProtocolFeatures => {
                r.send(&Message::GetProtocolFeatures, false, &[]);
                r.reply().expect("GET_PROTOCOL_FEATURES reply");
                r.send(
                    &Message::SetProtocolFeatures(protocol::MQ | protocol::CONFIG),
                    false,
                    &[],
                );
            }
            Step::MemTable => r.send(
                &Message::SetMemTable(vec![mem.region()]),
                false,
                &[mem.fd.as_raw_fd()],
            ),
            Step::Num => r.send(
                &Message::SetVringNum(VringState {
                    index: 0,
                    num: u32::from(QSIZE),
                }),
                false,
                &[],
            ),
            Step::Addr => r.send(&Message::SetVringAddr(ring_addr(&mem, 0)), false, &[]),
            Step::Base => r.send(
                &Message::SetVringBase(VringState { index: 0, num: 0 }),
                false,
                &[],
            ),
            Step::Call => r.send(
                &Message::SetVringCall(VringFd {
                    index: 0,
                    has_fd: true,
                }),
                false,
                &[call.as_raw_fd()],
            ),
            Step::Kick => r.send(
                &Message::SetVringKick(VringFd {
                    index: 0,
                    has_fd: true,
                }),
                false,
                &[kick.as_raw_fd()],
            ),
            Step::Enable(on) => r.send(
                &Message::SetVringEnable(VringState {
                    index: 0,
                    num: u32::from(on),
                }),
                false,
                &[],
            ),
        }
    }
    kick.write(1).unwrap();
    // A round trip: every request above has been handled.
    r.send(&Message::GetQueueNum, false, &[]);
    assert!(r.reply().is_some(), "the connection closed: {steps:?}");
    let mut p = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    let called = unsafe { libc::poll(&mut p, 1, 2_000) } == 1;
    called && mem.used_idx() == 1 && mem.used_len() == 64
}

/// vhost-user.rst "Ring states": a ring runs once it is started (kick),
/// enabled and addressed, whatever the order those arrive in. The orders
/// are those real frontends send: QEMU's vhost-user netdev disables its
/// rings right after SET_OWNER, before SET_FEATURES (`vhost_user_start`
/// then `vhost_net_start`); others enable before addressing, or kick
/// before addressing; without protocol features the kick enables.
#[test]
fn every_order_real_frontends_send_runs_the_ring() {
    use Step::*;
    let path = daemon();
    let tail = [MemTable, Num, Addr, Base, Call, Kick, Enable(true)];
    let orders: Vec<(&str, Vec<Step>)> = vec![
        ("rust-vmm vhost / QEMU blk", {
            let mut v = vec![Owner, Features { protocol: true }, ProtocolFeatures];
            v.extend(tail);
            v
        }),
        ("QEMU netdev: enable 0 before SET_FEATURES", {
            let mut v = vec![
                Owner,
                ProtocolFeatures,
                Enable(false),
                Features { protocol: true },
            ];
            v.extend(tail);
            v
        }),
        ("enable 0 before SET_PROTOCOL_FEATURES too", {
            let mut v = vec![
                Owner,
                Enable(false),
                ProtocolFeatures,
                Features { protocol: true },
            ];
            v.extend(tail);
            v
        }),
        (
            "enable before the memory and the addresses",
            vec![
                Owner,
                ProtocolFeatures,
                Features { protocol: true },
                Enable(true),
                MemTable,
                Num,
                Addr,
                Call,
                Kick,
            ],
        ),
        (
            "kick before the addresses",
            vec![
                Owner,
                ProtocolFeatures,
                Features { protocol: true },
                MemTable,
                Num,
                Kick,
                Call,
                Enable(true),
                Addr,
            ],
        ),
        (
            "features after the rings",
            vec![
                Owner,
                ProtocolFeatures,
                MemTable,
                Num,
                Addr,
                Call,
                Kick,
                Enable(true),
                Features { protocol: true },
            ],
        ),
        (
            "Cloud Hypervisor: addresses before the base",
            vec![
                Owner,
                Features { protocol: true },
                ProtocolFeatures,
                MemTable,
                Num,
                Addr,
                Base,
                Call,
                Kick,
                Enable(true),
            ],
        ),
        (
            "DPDK virtio-user: calls before SET_FEATURES",
            vec![
                Owner,
                ProtocolFeatures,
                Call,
                Features { protocol: true },
                MemTable,
                Num,
                Base,
                Addr,
                Kick,
                Enable(true),
            ],
        ),
        (
            "a reconnecting frontend without SET_OWNER",
            vec![
                Features { protocol: true },
                ProtocolFeatures,
                MemTable,
                Num,
                Base,
                Addr,
                Call,
                Kick,
                Enable(true),
            ],
        ),
        (
            "DPDK: SET_VRING_ENABLE without protocol features",
            vec![
                Owner,
                Features { protocol: false },
                MemTable,
                Num,
                Addr,
                Call,
                Enable(true),
                Kick,
            ],
        ),
        (
            "no protocol features: the kick enables",
            vec![
                Owner,
                Features { protocol: false },
                MemTable,
                Num,
                Addr,
                Call,
                Kick,
            ],
        ),
    ];
    for (name, steps) in &orders {
        assert!(run_order(&path, steps), "{name}: the ring did not run");
    }
    // With protocol features in force a kicked ring waits for its enable.
    let waits = [
        Owner,
        ProtocolFeatures,
        Features { protocol: true },
        MemTable,
        Num,
        Addr,
        Call,
        Kick,
    ];
    assert!(!run_order(&path, &waits), "ran without SET_VRING_ENABLE 1");
    let disabled = [
        Owner,
        ProtocolFeatures,
        Features { protocol: true },
        Enable(true),
        MemTable,
        Num,
        Addr,
        Enable(false),
        Call,
        Kick,
    ];
    assert!(!run_order(&path, &disabled), "ran after SET_VRING_ENABLE 0");
    // GET_VRING_BASE and SET_VRING_ENABLE 0 for a ring never started (a
    // DPDK frontend reconnecting with its old state): answered.
    let r = Raw::connect(&path);
    r.send(
        &Message::SetVringEnable(VringState { index: 0, num: 0 }),
        false,
        &[],
    );
    r.send(
        &Message::GetVringBase(VringState { index: 0, num: 0 }),
        false,
        &[],
    );
    let (req, p) = r.reply().expect("GET_VRING_BASE reply");
    assert_eq!(req, Request::GetVringBase.code());
    assert_eq!(p.len(), 8);
    drop(r);
    still_serves(&path);
}

/// Order tolerance never loosens a check: a ring enabled and kicked first
/// still has its addresses checked against the mapped memory when they
/// come, and one whose addresses are outside it never runs.
#[test]
fn an_early_enable_never_lets_a_bad_ring_run() {
    let path = daemon();
    let mem = Memory::new();
    let r = Raw::negotiated(&path, &mem);
    let kick = EventFd::new(0).unwrap();
    let enable = Message::SetVringEnable(VringState { index: 0, num: 1 });
    assert_eq!(r.ack(&enable, &[]), 0);
    assert_eq!(
        r.ack(
            &Message::SetVringKick(VringFd {
                index: 0,
                has_fd: true
            }),
            &[kick.as_raw_fd()]
        ),
        0
    );
    assert_eq!(
        r.ack(&Message::SetVringNum(VringState { index: 0, num: 16 }), &[]),
        0
    );
    let outside = VringAddr {
        used: 0x10,
        ..ring_addr(&mem, 0)
    };
    assert_eq!(r.ack(&Message::SetVringAddr(outside), &[]), 1);
    mem.offer_buffer();
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(mem.used_idx(), 0, "a ring without valid addresses ran");
    // The right addresses: now it runs.
    assert_eq!(r.ack(&Message::SetVringAddr(ring_addr(&mem, 0)), &[]), 0);
    kick.write(1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mem.used_idx() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(mem.used_idx(), 1);
}

/// Without `REPLY_ACK` a refusal cannot be reported, so the connection
/// closes rather than leave the frontend believing in a ring that will
/// never run; only a configuration write out of range is dropped and the
/// session goes on.
#[test]
fn a_refusal_without_reply_ack_closes_unless_harmless() {
    let path = daemon();
    let r = Raw::connect(&path);
    r.send(&Message::SetOwner, false, &[]);
    r.send(
        &Message::SetConfig(vhost_user::codec::Config {
            offset: 0,
            flags: 0,
            data: vec![1, 2, 3, 4],
        }),
        false,
        &[],
    );
    r.send(&Message::GetQueueNum, false, &[]);
    assert!(r.reply().is_some(), "closed after a dropped config write");
    r.send(
        &Message::SetVringNum(VringState { index: 0, num: 15 }),
        false,
        &[],
    );
    assert!(r.closed());
    still_serves(&path);
}

/// Each kind of refusal is logged once per session with its reason;
/// repeats are counted and the count logged when the session ends.
#[test]
fn each_kind_of_refusal_is_logged_once_per_session_with_a_count() {
    let dir = std::env::temp_dir().join(format!("vhost-user-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = harness::daemon::Daemon::ours(
        Path::new(env!("CARGO_BIN_EXE_virtio-harness")),
        dir.join("rng.sock"),
        &[
            "-object",
            "rng-deterministic,id=r0,seed=1",
            "-device",
            "virtio-rng-device,rng=r0",
        ],
        false,
    )
    .unwrap();
    let mem = Memory::new();
    let r = Raw::negotiated(d.socket(), &mem);
    for n in [3, 5, 7, 9, 2048] {
        assert_eq!(
            r.ack(&Message::SetVringNum(VringState { index: 0, num: n }), &[]),
            1
        );
    }
    assert_eq!(
        r.ack(&Message::SetVringNum(VringState { index: 4, num: 16 }), &[]),
        1
    );
    drop(r);
    still_serves(d.socket());
    let log = d.output();
    assert_eq!(
        log.matches("refused: ring 0: size").count(),
        1,
        "one line for the kind\n{log}"
    );
    assert!(log.contains("refused: no ring 4"), "{log}");
    assert!(
        log.contains("refused 5 requests this session: bad ring size"),
        "{log}"
    );
    assert!(d.alive());
}

#[test]
fn a_frontend_may_disconnect_at_any_point() {
    let path = daemon();
    let mem = Memory::new();
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    let steps: Vec<(Message, Vec<RawFd>)> = vec![
        (Message::SetOwner, vec![]),
        (
            Message::SetFeatures(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES),
            vec![],
        ),
        (Message::SetProtocolFeatures(protocol::REPLY_ACK), vec![]),
        (
            Message::SetMemTable(vec![mem.region()]),
            vec![mem.fd.as_raw_fd()],
        ),
        (
            Message::SetVringNum(VringState { index: 0, num: 16 }),
            vec![],
        ),
        (Message::SetVringAddr(ring_addr(&mem, 0)), vec![]),
        (
            Message::SetVringCall(VringFd {
                index: 0,
                has_fd: true,
            }),
            vec![call.as_raw_fd()],
        ),
        (
            Message::SetVringKick(VringFd {
                index: 0,
                has_fd: true,
            }),
            vec![kick.as_raw_fd()],
        ),
        (
            Message::SetVringEnable(VringState { index: 0, num: 1 }),
            vec![],
        ),
    ];
    for stop in 0..=steps.len() {
        let r = Raw::connect(&path);
        for (msg, fds) in &steps[..stop] {
            r.send(msg, false, fds);
        }
        if stop == steps.len() {
            // Running: a kick arrives as the frontend hangs up.
            let _ = kick.write(1);
        }
        drop(r);
    }
    still_serves(&path);
}

/// A device with a bug: it panics when notified.
struct Panicky;

impl VirtioDevice for Panicky {
    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }
    fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_len(&self) -> usize {
        0
    }
    fn activate(&mut self, _features: u64, _queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        Ok(())
    }
    fn queue_notify(&mut self, _queue: u16) -> Result<Served, DeviceError> {
        panic!("a device bug");
    }
    fn reset(&mut self) {}
}

#[test]
fn a_panicking_device_ends_the_session_not_the_daemon() {
    let path = daemon_with(|_| Box::new(Panicky));
    let mem = Memory::new();
    let r = Raw::negotiated(&path, &mem);
    assert_eq!(
        r.ack(&Message::SetVringNum(VringState { index: 0, num: 16 }), &[]),
        0
    );
    assert_eq!(r.ack(&Message::SetVringAddr(ring_addr(&mem, 0)), &[]), 0);
    let kick = EventFd::new(0).unwrap();
    // The kick starts the ring; enabling it activates the device, which
    // serves the ring at once and panics.
    assert_eq!(
        r.ack(
            &Message::SetVringKick(VringFd {
                index: 0,
                has_fd: true
            }),
            &[kick.as_raw_fd()]
        ),
        0
    );
    r.send(
        &Message::SetVringEnable(VringState { index: 0, num: 1 }),
        true,
        &[],
    );
    assert!(r.closed());
    still_serves(&path);
}

/// A daemon serving the device that `options` name, built as
/// `virtio-harness vhost-user` builds it.
/// Our daemon serving a one-port console whose output goes to a fresh
/// file: (that file, the socket).
fn console_daemon(tag: &str) -> (PathBuf, PathBuf) {
    let out = std::env::temp_dir().join(format!("vhost-user-{tag}-{}.out", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let path = daemon_from_options(vec![
        "-chardev".into(),
        format!("file,id=c0,path={}", out.display()),
        "-device".into(),
        "virtio-serial-device,max_ports=1".into(),
        "-device".into(),
        "virtconsole,chardev=c0".into(),
    ]);
    (out, path)
}

fn daemon_from_options(options: Vec<String>) -> PathBuf {
    daemon_with(move |mem| {
        let config = monitor::options::parse(&options).unwrap();
        monitor::serve::build(&config, &mem).unwrap().device
    })
}

/// Sets up ring `index` (size [`QSIZE`]) at guest offset `base` (descriptor
/// table, available ring at +0x1000, used ring at +0x2000) through the
/// rust-vmm frontend.
fn ring(fe: &mut Frontend, mem: &Memory, index: usize, base: u64) -> (EventFd, EventFd) {
    fe.set_vring_num(index, QSIZE).unwrap();
    fe.set_vring_addr(
        index,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: mem.user(GPA_BASE + base),
            used_ring_addr: mem.user(GPA_BASE + base + 0x2000),
            avail_ring_addr: mem.user(GPA_BASE + base + 0x1000),
            log_addr: None,
        },
    )
    .unwrap();
    fe.set_vring_base(index, 0).unwrap();
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    fe.set_vring_call(index, &call).unwrap();
    fe.set_vring_kick(index, &kick).unwrap();
    fe.set_vring_enable(index, true).unwrap();
    (call, kick)
}

#[test]
fn rust_vmm_frontend_writes_through_our_console() {
    let (out, path) = console_daemon("console");
    let mem = Memory::new();
    let mut fe = Frontend::connect(&path, 2).unwrap();
    fe.set_owner().unwrap();
    fe.get_features().unwrap();
    fe.set_features(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
        .unwrap();
    let pf = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(pf).unwrap();
    // §5.3.2: receiveq and transmitq of port 0 (no MULTIPORT).
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA_BASE,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.host as u64,
        mmap_offset: 0,
        mmap_handle: mem.fd.as_raw_fd(),
    }])
    .unwrap();
    let _rx = ring(&mut fe, &mem, 0, 0x0);
    let (tx_call, tx_kick) = ring(&mut fe, &mem, 1, 0x4000);
    // One driver-readable buffer on the transmit queue.
    let text = b"hello over vhost-user\n";
    let m = &mem.view;
    let g = |a| GuestAddress(GPA_BASE + a);
    m.write(g(0x20000), text).unwrap();
    m.write_u64(g(0x4000), GPA_BASE + 0x20000).unwrap();
    m.write_u32(g(0x4008), text.len() as u32).unwrap();
    m.write_u16(g(0x400c), 0).unwrap();
    m.write_u16(g(0x5004), 0).unwrap();
    m.store_u16_release(g(0x5002), 1).unwrap();
    tx_kick.write(1).unwrap();
    assert!(
        wait_readable(tx_call.as_raw_fd()),
        "no call for the transmitq"
    );
    assert_eq!(m.load_u16_acquire(g(0x6002)).unwrap(), 1);
    assert_eq!(std::fs::read(&out).unwrap(), text);
    let _ = std::fs::remove_file(&out);
}

// ---- ring positions (vhost-user.rst "Ring states", SET/GET_VRING_BASE) ----

/// A rust-vmm frontend that negotiated everything and mapped `mem`.
fn frontend(path: &Path, mem: &Memory, queues: u64) -> Frontend {
    let mut fe = Frontend::connect(path, queues).unwrap();
    fe.set_owner().unwrap();
    fe.get_features().unwrap();
    fe.set_features(VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
        .unwrap();
    let pf = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(pf).unwrap();
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: GPA_BASE,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.host as u64,
        mmap_offset: 0,
        mmap_handle: mem.fd.as_raw_fd(),
    }])
    .unwrap();
    fe
}

/// Makes one chain available on the ring at guest offset `ring`: descriptor
/// `head` over `len` bytes at `addr` (device-writable if `write`), in
/// available slot `slot` (the available index becomes `slot + 1`).
fn offer(mem: &Memory, ring: u64, slot: u16, head: u16, addr: u64, len: u32, write: bool) {
    let m = &mem.view;
    let g = |a| GuestAddress(GPA_BASE + a);
    let d = ring + 16 * u64::from(head);
    m.write_u64(g(d), GPA_BASE + addr).unwrap();
    m.write_u32(g(d + 8), len).unwrap();
    m.write_u16(g(d + 12), if write { 2 } else { 0 }).unwrap();
    m.write_u16(g(d + 14), 0).unwrap();
    m.write_u16(g(ring + 0x1004 + 2 * u64::from(slot % QSIZE)), head)
        .unwrap();
    m.store_u16_release(g(ring + 0x1002), slot.wrapping_add(1))
        .unwrap();
}

/// The used index of the ring at guest offset `ring`.
fn used_idx_at(mem: &Memory, ring: u64) -> u16 {
    mem.view
        .load_u16_acquire(GuestAddress(GPA_BASE + ring + 0x2002))
        .unwrap()
}

/// The used element (head, length) in used slot `slot` of the ring at `ring`.
fn used_elem(mem: &Memory, ring: u64, slot: u16) -> (u16, u32) {
    let a = GuestAddress(GPA_BASE + ring + 0x2004 + 8 * u64::from(slot % QSIZE));
    let id = mem.view.read_u32(a).unwrap();
    let len = mem.view.read_u32(GuestAddress(a.0 + 4)).unwrap();
    (u16::try_from(id).unwrap(), len)
}

/// Kicks and waits (bounded) until the used index of the ring at `ring`
/// reaches `want`.
fn kick_until(mem: &Memory, ring: u64, kick: &EventFd, call: &EventFd, want: u16) {
    kick.write(1).unwrap();
    for _ in 0..100 {
        if used_idx_at(mem, ring) == want {
            return;
        }
        if wait_readable(call.as_raw_fd()) {
            let _ = call.read();
        }
    }
    panic!("used index {} never reached {want}", used_idx_at(mem, ring));
}

#[test]
fn get_vring_base_reports_n_and_set_vring_base_resumes_there() {
    let path = daemon();
    let mem = Memory::new();
    let mut fe = frontend(&path, &mem, 1);
    let (call, kick) = ring(&mut fe, &mem, 0, 0);
    const N: u16 = 3;
    for i in 0..N {
        offer(&mem, 0, i, i, BUF + u64::from(i) * 0x100, 64, true);
        kick_until(&mem, 0, &kick, &call, i + 1);
    }
    // GET_VRING_BASE stops the ring: the next chain to process is N.
    assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(N));
    // Made available while stopped: not served.
    offer(&mem, 0, N, N, BUF + 0x1000, 64, true);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx_at(&mem, 0), N);
    // Started again at N (the device was reset meanwhile: its queue would
    // start at 0 and replay chains 0..N).
    fe.set_vring_base(0, N).unwrap();
    let kick = EventFd::new(0).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    offer(&mem, 0, N + 1, N + 1, BUF + 0x1100, 32, true);
    kick_until(&mem, 0, &kick, &call, N + 2);
    // Each chain once, in order, at the used slots that follow.
    for i in 0..N {
        assert_eq!(used_elem(&mem, 0, i), (i, 64));
    }
    assert_eq!(used_elem(&mem, 0, N), (N, 64));
    assert_eq!(used_elem(&mem, 0, N + 1), (N + 1, 32));
    assert_eq!(fe.get_vring_base(0).unwrap(), u32::from(N + 2));
}

#[test]
fn a_ring_may_start_at_a_non_zero_base() {
    let path = daemon();
    let mem = Memory::new();
    let mut fe = frontend(&path, &mem, 1);
    mem.view
        .write(GuestAddress(GPA_BASE), &vec![0u8; 0x3000])
        .unwrap();
    // A driver that already went round the ring: 65530 chains made
    // available and used (the base wraps past 65535 below).
    const BASE: u16 = 65530;
    let g = |a| GuestAddress(GPA_BASE + a);
    mem.view.store_u16_release(g(0x1002), BASE).unwrap();
    mem.view.store_u16_release(g(0x2002), BASE).unwrap();
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_addr(0, &ring_config(&mem, 0)).unwrap();
    fe.set_vring_base(0, BASE).unwrap();
    let call = EventFd::new(0).unwrap();
    let kick = EventFd::new(0).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    for k in 0..10u16 {
        let slot = BASE.wrapping_add(k);
        let head = k % QSIZE;
        offer(&mem, 0, slot, head, BUF + u64::from(k) * 0x100, 16, true);
        kick_until(&mem, 0, &kick, &call, slot.wrapping_add(1));
        assert_eq!(used_elem(&mem, 0, slot), (head, 16));
    }
    assert_eq!(
        fe.get_vring_base(0).unwrap(),
        u32::from(BASE.wrapping_add(10))
    );
}

fn ring_config(mem: &Memory, base: u64) -> VringConfigData {
    VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: mem.user(GPA_BASE + base),
        used_ring_addr: mem.user(GPA_BASE + base + 0x2000),
        avail_ring_addr: mem.user(GPA_BASE + base + 0x1000),
        log_addr: None,
    }
}

#[test]
fn a_ring_starting_again_keeps_the_running_rings_in_place() {
    let (out, path) = console_daemon("pos");
    let mem = Memory::new();
    let mut fe = frontend(&path, &mem, 2);
    mem.view
        .write(GuestAddress(GPA_BASE), &vec![0u8; 0x8000])
        .unwrap();
    let (rx_call, _rx_kick) = ring(&mut fe, &mem, 0, 0x0);
    let (tx_call, tx_kick) = ring(&mut fe, &mem, 1, 0x4000);
    let texts: [&[u8]; 3] = [b"one ", b"two ", b"three\n"];
    let send = |i: u16, kick: &EventFd| {
        let a = 0x20000 + u64::from(i) * 0x100;
        mem.view
            .write(GuestAddress(GPA_BASE + a), texts[usize::from(i)])
            .unwrap();
        let len = texts[usize::from(i)].len() as u32;
        offer(&mem, 0x4000, i, i, a, len, false);
        kick_until(&mem, 0x4000, kick, &tx_call, i + 1);
    };
    send(0, &tx_kick);
    send(1, &tx_kick);
    // The receive ring stops and starts again while the transmit ring runs
    // (the device is activated again with both): the transmit ring goes on
    // at 2 instead of replaying "one two ".
    assert_eq!(fe.get_vring_base(0).unwrap(), 0);
    fe.set_vring_base(0, 0).unwrap();
    let rx_kick = EventFd::new(0).unwrap();
    fe.set_vring_kick(0, &rx_kick).unwrap();
    let _ = rx_call;
    send(2, &tx_kick);
    assert_eq!(used_elem(&mem, 0x4000, 2), (2, 0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx_at(&mem, 0x4000), 3);
    assert_eq!(std::fs::read(&out).unwrap(), b"one two three\n");
    assert_eq!(fe.get_vring_base(1).unwrap(), 3);
    let _ = std::fs::remove_file(&out);
}

#[test]
fn a_stopped_ring_is_out_of_the_devices_reach() {
    let path = daemon_from_options(vec![
        "-netdev".into(),
        "loopback,id=n0".into(),
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
    ]);
    let mem = Memory::new();
    let mut probe = frontend(&path, &mem, 1);
    let queues = probe.get_queue_num().unwrap();
    drop(probe);
    let mut fe = frontend(&path, &mem, queues);
    mem.view
        .write(GuestAddress(GPA_BASE), &vec![0u8; 0x8000])
        .unwrap();
    let (rx_call, _rx_kick) = ring(&mut fe, &mem, 0, 0x0);
    let (tx_call, tx_kick) = ring(&mut fe, &mem, 1, 0x4000);
    // receiveq1 stops (§5.1.2: the device needs it, so it is not active
    // until the ring runs again).
    assert_eq!(fe.get_vring_base(0).unwrap(), 0);
    // A receive buffer and a frame to loop back: the stopped ring must not
    // move, whatever the device does meanwhile.
    offer(&mem, 0x0, 0, 0, 0x30000, 2048, true);
    let mut pkt = vec![0u8; 12];
    pkt.extend_from_slice(&[0xff; 6]);
    pkt.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 0x88, 0xb5]);
    pkt.resize(12 + 60, 0x5a);
    mem.view
        .write(GuestAddress(GPA_BASE + 0x20000), &pkt)
        .unwrap();
    offer(&mem, 0x4000, 0, 0, 0x20000, pkt.len() as u32, false);
    tx_kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx_at(&mem, 0x0), 0, "the stopped ring moved");
    // receiveq1 runs again where it stopped: the frame goes round.
    fe.set_vring_base(0, 0).unwrap();
    let rx_kick = EventFd::new(0).unwrap();
    fe.set_vring_kick(0, &rx_kick).unwrap();
    kick_until(&mem, 0x4000, &tx_kick, &tx_call, 1);
    kick_until(&mem, 0x0, &rx_kick, &rx_call, 1);
    assert_eq!(used_elem(&mem, 0x0, 0), (0, pkt.len() as u32));
    let mut got = vec![0u8; pkt.len() - 12];
    mem.view
        .read(GuestAddress(GPA_BASE + 0x30000 + 12), &mut got)
        .unwrap();
    assert_eq!(got, pkt[12..]);
    assert_eq!(fe.get_vring_base(1).unwrap(), 1);
    assert_eq!(fe.get_vring_base(0).unwrap(), 1);
}
