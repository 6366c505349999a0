//! Stream sockets with QEMU's framing (`-netdev stream`, and the older
//! `-netdev socket,listen=|connect=`): unix or TCP, server or client, each
//! frame preceded by its length as 4 bytes big-endian, so this backend and
//! a QEMU instance can share one L2 segment.
//!
//! Everything is non-blocking. Partial reads are buffered until a frame is
//! whole; a send the socket takes only in part keeps the rest (at most one
//! frame) and answers [`Sent::Done`], and further sends are [`Sent::Busy`]
//! until it drains. A length prefix beyond [`MAX_FRAME`] is
//! [`NetError::Malformed`] and the peer is dropped (there is no way to
//! resynchronise a byte stream). With no peer the link is down and frames
//! sent are dropped and counted. A server accepts the next peer; a client
//! with `reconnect` dials again. Not done: QEMU's `-netdev socket` multicast
//! and fd passing.

use std::io::{self, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::string::{String, ToString};
use std::time::{Duration, Instant};
use std::vec::Vec;

pub use crate::chardev::os::SocketAddr;

use super::{MAX_FRAME, NetBackend, NetError, Sent};

/// Bytes of the length prefix before every frame.
pub const LEN_PREFIX: usize = 4;

/// Receive buffer: a whole maximal frame fits after compaction, with room
/// to read ahead.
const RX_CAP: usize = 2 * (LEN_PREFIX + MAX_FRAME);

/// Most parts a send gathers with one `sendmsg` (beyond, it copies).
const MAX_IOV: usize = 32;

fn io_err(what: &str, err: io::Error) -> NetError {
    NetError::Io {
        what: what.to_string(),
        err,
    }
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// The backend's own epoll set, so the readiness fd stays the same while
/// the listener, the connected stream and the redial timer come and go.
#[derive(Debug)]
pub(crate) struct Poller {
    epoll: OwnedFd,
    timer: OwnedFd,
}

impl Poller {
    pub(crate) fn new(what: &str) -> Result<Self, NetError> {
        // SAFETY: epoll_create1 takes a flag word and returns a new fd or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io_err(what, last_err()));
        }
        // SAFETY: `ep` is a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        // SAFETY: timerfd_create takes a clock id and flags, returns an fd or -1.
        let t = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if t < 0 {
            return Err(io_err(what, last_err()));
        }
        // SAFETY: `t` is a fresh fd that nothing else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(t) };
        let p = Poller { epoll, timer };
        p.ctl(libc::EPOLL_CTL_ADD, p.timer.as_raw_fd(), false);
        Ok(p)
    }

    /// Adds or modifies `fd`: input and hang-up always, output if `out`.
    pub(crate) fn ctl(&self, op: libc::c_int, fd: RawFd, out: bool) {
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if out {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: both fds are open; `ev` is a valid event the kernel copies
        // (and ignores for DEL). A failure leaves the set as it was.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
    }

    fn arm(&self, delay: Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: delay.as_secs() as libc::time_t,
                // Zero would disarm: fire after 1 ns instead.
                tv_nsec: (delay.subsec_nanos().max(u32::from(delay.is_zero()))) as libc::c_long,
            },
        };
        // SAFETY: the timer fd is open; `spec` is valid and copied.
        unsafe { libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    }

    fn drain_timer(&self) {
        let mut n = [0u8; 8];
        // SAFETY: the timer fd is open and non-blocking; `n` is 8 writable bytes.
        unsafe { libc::read(self.timer.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[derive(Debug)]
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> Option<OwnedFd> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept().ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s.into())
            }
            Listener::Tcp(l) => {
                let (s, _) = l.accept().ok()?;
                s.set_nodelay(true).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s.into())
            }
        }
    }
}

/// A stream socket link with QEMU's length-prefixed framing.
#[derive(Debug)]
pub struct StreamNet {
    addr: SocketAddr,
    what: String,
    listener: Option<Listener>,
    stream: Option<OwnedFd>,
    reconnect: Option<Duration>,
    next_dial: Option<Instant>,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// The unsent rest of one frame (prefix included).
    tx: Vec<u8>,
    tx_off: usize,
    dropped: u64,
    poller: Poller,
}

impl StreamNet {
    fn with(
        addr: SocketAddr,
        listener: Option<Listener>,
        reconnect: Option<Duration>,
    ) -> Result<Self, NetError> {
        let what = std::format!("netdev stream {addr}");
        let poller = Poller::new(&what)?;
        if let Some(l) = &listener {
            poller.ctl(libc::EPOLL_CTL_ADD, l.fd(), false);
        }
        Ok(StreamNet {
            addr,
            what,
            listener,
            stream: None,
            reconnect,
            next_dial: None,
            rx: std::vec![0; RX_CAP],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(LEN_PREFIX + MAX_FRAME),
            tx_off: 0,
            dropped: 0,
            poller,
        })
    }

    /// Listens on `addr` (QEMU `server=on`; a unix path is created, an
    /// existing socket file replaced); peers are accepted one at a time.
    pub fn server(addr: SocketAddr) -> Result<Self, NetError> {
        let what = std::format!("netdev stream {addr}");
        let listener = match &addr {
            SocketAddr::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).map_err(|e| io_err(&what, e))?;
                l.set_nonblocking(true).map_err(|e| io_err(&what, e))?;
                Listener::Unix(l)
            }
            SocketAddr::Tcp(a) => {
                let l = TcpListener::bind(a.as_str()).map_err(|e| io_err(&what, e))?;
                l.set_nonblocking(true).map_err(|e| io_err(&what, e))?;
                Listener::Tcp(l)
            }
        };
        StreamNet::with(addr, Some(listener), None)
    }

    /// Connects to `addr` (QEMU `server=off`). With `reconnect`, a failed
    /// or lost connection is dialled again after that delay instead of
    /// being an error (the link is down meanwhile).
    pub fn client(addr: SocketAddr, reconnect: Option<Duration>) -> Result<Self, NetError> {
        let mut s = StreamNet::with(addr, None, reconnect)?;
        match s.dial() {
            Ok(()) => Ok(s),
            Err(_) if reconnect.is_some() => {
                s.lost();
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// The address.
    pub fn addr(&self) -> &SocketAddr {
        &self.addr
    }

    /// For a TCP server, the port actually bound (useful with port 0).
    pub fn local_port(&self) -> Option<u16> {
        match &self.listener {
            Some(Listener::Tcp(l)) => l.local_addr().ok().map(|a| a.port()),
            _ => None,
        }
    }

    /// Accepts a waiting peer or redials when due, then says whether a
    /// peer is connected.
    pub fn is_connected(&mut self) -> bool {
        self.poll_connect();
        self.stream.is_some()
    }

    /// Frames dropped because no peer was connected (or it went away
    /// while they were being sent).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn dial(&mut self) -> Result<(), NetError> {
        let fd: OwnedFd = match &self.addr {
            SocketAddr::Unix(p) => {
                let s = UnixStream::connect(p).map_err(|e| io_err(&self.what, e))?;
                s.set_nonblocking(true).map_err(|e| io_err(&self.what, e))?;
                s.into()
            }
            SocketAddr::Tcp(a) => {
                let s = TcpStream::connect(a.as_str()).map_err(|e| io_err(&self.what, e))?;
                s.set_nodelay(true).map_err(|e| io_err(&self.what, e))?;
                s.set_nonblocking(true).map_err(|e| io_err(&self.what, e))?;
                s.into()
            }
        };
        self.connected(fd);
        Ok(())
    }

    fn connected(&mut self, fd: OwnedFd) {
        if let Some(l) = &self.listener {
            self.poller.ctl(libc::EPOLL_CTL_DEL, l.fd(), false);
        }
        self.poller.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), false);
        self.stream = Some(fd);
        self.rx_start = 0;
        self.rx_end = 0;
        self.tx.clear();
        self.tx_off = 0;
    }

    fn poll_connect(&mut self) {
        if self.stream.is_some() {
            return;
        }
        if let Some(l) = &self.listener {
            if let Some(fd) = l.accept() {
                self.connected(fd);
            }
            return;
        }
        self.poller.drain_timer();
        let Some(delay) = self.reconnect else { return };
        let now = Instant::now();
        if self.next_dial.is_some_and(|t| now < t) {
            return;
        }
        if self.dial().is_err() {
            self.next_dial = Some(now + delay);
            self.poller.arm(delay);
        }
    }

    /// The peer went away: listen again (server) or redial later (client).
    fn lost(&mut self) {
        if let Some(fd) = self.stream.take() {
            self.poller.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), false);
        }
        self.rx_start = 0;
        self.rx_end = 0;
        if self.tx_off < self.tx.len() {
            self.dropped += 1;
        }
        self.tx.clear();
        self.tx_off = 0;
        if let Some(l) = &self.listener {
            self.poller.ctl(libc::EPOLL_CTL_ADD, l.fd(), false);
        }
        if let Some(d) = self.reconnect {
            self.next_dial = Some(Instant::now() + d);
            self.poller.arm(d);
        }
    }

    /// Writes what the socket takes of the pending rest; `Ok(true)` when
    /// nothing is pending any more.
    fn flush(&mut self) -> Result<bool, NetError> {
        if self.tx_off == self.tx.len() {
            return Ok(true);
        }
        let Some(fd) = &self.stream else {
            return Ok(true);
        };
        let fd = fd.as_raw_fd();
        while self.tx_off < self.tx.len() {
            let rest = &self.tx[self.tx_off..];
            // SAFETY: `fd` is open; `rest` is a valid readable slice of our own.
            let n = unsafe {
                libc::send(
                    fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = last_err();
                match e.kind() {
                    ErrorKind::Interrupted => continue,
                    ErrorKind::WouldBlock => return Ok(false),
                    ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                        self.lost();
                        return Ok(true);
                    }
                    _ => return Err(io_err(&self.what, e)),
                }
            }
            self.tx_off += n as usize;
        }
        self.tx.clear();
        self.tx_off = 0;
        // Drained: stop asking for writability.
        self.poller.ctl(libc::EPOLL_CTL_MOD, fd, false);
        Ok(true)
    }

    /// Keeps the bytes of `parts` (prefix included) beyond the first
    /// `sent` for later, and asks for writability.
    fn keep_rest(&mut self, prefix: &[u8], parts: &[&[u8]], sent: usize) {
        self.tx.clear();
        self.tx_off = 0;
        let mut skip = sent;
        for p in core::iter::once(prefix).chain(parts.iter().copied()) {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            self.tx.extend_from_slice(&p[skip..]);
            skip = 0;
        }
        if let Some(fd) = &self.stream {
            self.poller.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), true);
        }
    }
}

impl NetBackend for StreamNet {
    /// Sends one frame with its length prefix. [`Sent::Busy`] while the
    /// rest of an earlier frame is still pending; dropped and counted
    /// ([`Sent::Done`]) with no peer.
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(NetError::TooBig {
                len,
                max: MAX_FRAME,
            });
        }
        self.poll_connect();
        if !self.flush()? {
            return Ok(Sent::Busy);
        }
        let Some(fd) = &self.stream else {
            self.dropped += 1;
            return Ok(Sent::Done);
        };
        let fd = fd.as_raw_fd();
        let prefix = (len as u32).to_be_bytes();
        let total = LEN_PREFIX + len;
        if parts.len() + 1 > MAX_IOV {
            // Too many pieces to gather: queue the whole frame and flush it.
            self.keep_rest(&prefix, parts, 0);
            self.flush()?;
            return Ok(Sent::Done);
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        for (v, p) in iov
            .iter_mut()
            .zip(core::iter::once(&prefix[..]).chain(parts.iter().copied()))
        {
            *v = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = parts.len() + 1;
        let sent = loop {
            // SAFETY: `fd` is open; `msg` points at `parts.len() + 1` iovecs
            // describing live slices the kernel only reads.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n >= 0 {
                break n as usize;
            }
            let e = last_err();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => break 0,
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                    self.lost();
                    self.dropped += 1;
                    return Ok(Sent::Done);
                }
                _ => return Err(io_err(&self.what, e)),
            }
        };
        if sent < total {
            self.keep_rest(&prefix, parts, sent);
        }
        Ok(Sent::Done)
    }

    /// Receives the next whole frame. Frames already buffered are not
    /// signalled again by the readiness fd: call until `Ok(None)`.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.poll_connect();
        // Also a good moment to push out a pending rest (and stop the
        // readiness fd from reporting writability).
        self.flush()?;
        loop {
            let Some(fd) = &self.stream else {
                return Ok(None);
            };
            let fd = fd.as_raw_fd();
            let have = self.rx_end - self.rx_start;
            if have >= LEN_PREFIX {
                let mut p = [0u8; LEN_PREFIX];
                p.copy_from_slice(&self.rx[self.rx_start..self.rx_start + LEN_PREFIX]);
                let len = u32::from_be_bytes(p) as usize;
                if len > MAX_FRAME {
                    self.lost();
                    return Err(NetError::Malformed(
                        "stream length prefix beyond the largest frame; peer dropped",
                    ));
                }
                if have >= LEN_PREFIX + len {
                    let start = self.rx_start + LEN_PREFIX;
                    self.rx_start = start + len;
                    if len > buf.len() {
                        return Err(NetError::TooBig {
                            len,
                            max: buf.len(),
                        });
                    }
                    buf[..len].copy_from_slice(&self.rx[start..start + len]);
                    return Ok(Some(len));
                }
            }
            // Need more bytes: make room, then read what is there.
            if self.rx_start == self.rx_end {
                self.rx_start = 0;
                self.rx_end = 0;
            } else if RX_CAP - self.rx_end < LEN_PREFIX + MAX_FRAME {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            let room = &mut self.rx[self.rx_end..];
            // SAFETY: `fd` is open; `room` is a valid writable slice of our own.
            let n =
                unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), libc::MSG_DONTWAIT) };
            if n == 0 {
                self.lost();
                return Ok(None);
            }
            if n < 0 {
                let e = last_err();
                match e.kind() {
                    ErrorKind::Interrupted => continue,
                    ErrorKind::WouldBlock => return Ok(None),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                        self.lost();
                        return Ok(None);
                    }
                    _ => return Err(io_err(&self.what, e)),
                }
            }
            self.rx_end += n as usize;
        }
    }

    /// Up while a peer is connected.
    fn link_up(&self) -> bool {
        self.stream.is_some()
    }

    /// One fd for the backend's whole life (its own epoll set): readable
    /// when a peer connects, sends or hangs up, when a pending rest can be
    /// written, or when a redial is due.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.poller.fd())
    }
}
