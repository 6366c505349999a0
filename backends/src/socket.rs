//! A stream socket that survives its peer, shared by the socket chardev
//! (`-chardev socket`) and the stream netdev (`-netdev stream`): unix or
//! TCP, server (accepts one peer at a time, then the next) or client (with
//! `reconnect`, dials again after a delay), all non-blocking.
//!
//! Its readiness fd is an epoll set of its own, so it stays the same for
//! the link's life while the members come and go: the listener while
//! nobody is connected, the connected stream, and a one-shot timer when a
//! redial is due. An event loop registers it once.

use std::io::{self, ErrorKind};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where a socket connects or listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(std::string::String),
}

impl std::fmt::Display for SocketAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Most parts [`SocketLink::send`] gathers in one `sendmsg`.
pub const MAX_IOV: usize = 32;

/// The link's own epoll set and redial timer.
#[derive(Debug)]
struct Poller {
    epoll: OwnedFd,
    timer: OwnedFd,
}

impl Poller {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes a flag word and returns a new fd or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
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
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `t` is a fresh fd that nothing else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(t) };
        let p = Poller { epoll, timer };
        p.ctl(libc::EPOLL_CTL_ADD, p.timer.as_raw_fd(), false);
        Ok(p)
    }

    /// Adds, modifies or removes `fd`: input and hang-up always, output if
    /// `out`.
    fn ctl(&self, op: libc::c_int, fd: RawFd, out: bool) {
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

    /// Arms the timer to fire once after `delay`.
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

    /// Consumes a timer expiry so the set stops being readable for it.
    fn drain_timer(&self) {
        let mut n = [0u8; 8];
        // SAFETY: the timer fd is open and non-blocking; `n` is 8 writable
        // bytes, as timerfd reads require.
        unsafe { libc::read(self.timer.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
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

    /// A waiting peer, non-blocking (and `TCP_NODELAY`), if there is one.
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

/// A server or client stream socket that survives its peer.
#[derive(Debug)]
pub struct SocketLink {
    addr: SocketAddr,
    listener: Option<Listener>,
    stream: Option<OwnedFd>,
    reconnect: Option<Duration>,
    next_dial: Option<Instant>,
    poller: Poller,
}

/// Binds a unix listener at `path`, replacing a stale socket file there
/// as QEMU does, but never another kind of file (a swapped argument must
/// not delete a disk image) nor a socket something still listens on. A
/// socket is stale only when a connection to it is refused. The error
/// names the path and what was found.
pub fn bind_unix(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let named = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), std::format!("{what} {}: {e}", path.display()))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                ErrorKind::AlreadyExists,
                std::format!(
                    "{} exists and is not a socket (not replaced)",
                    path.display()
                ),
            ));
        }
        match probe_unix(path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                std::fs::remove_file(path).map_err(|e| named(e, "removing the stale socket"))?;
            }
            Ok(()) => {
                return Err(io::Error::new(
                    ErrorKind::AddrInUse,
                    std::format!(
                        "something is listening on {} (not replaced)",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(named(e, "probing the existing socket")),
        }
    }
    UnixListener::bind(path).map_err(|e| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        match (e.kind(), dir) {
            (ErrorKind::NotFound, Some(d)) => io::Error::new(
                e.kind(),
                std::format!(
                    "binding {}: the directory {} does not exist",
                    path.display(),
                    d.display()
                ),
            ),
            _ => named(e, "binding"),
        }
    })
}

/// A new non-blocking, close-on-exec socket of `domain`, `ty` and
/// `proto` (socket(2)), owned.
pub fn socket_nonblocking(
    domain: libc::c_int,
    ty: libc::c_int,
    proto: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) reads no memory; the result is checked.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether something listens on the unix stream socket at `path`, without
/// blocking and without waiting to be accepted: `Ok` if the connection
/// was taken or is pending (a full backlog), the errno otherwise
/// (ECONNREFUSED: nobody listens).
fn probe_unix(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid (family set below).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "the path is too long for a unix socket",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let fd = socket_nonblocking(libc::AF_UNIX, libc::SOCK_STREAM, 0)?;
    // SAFETY: `addr` is a valid sockaddr_un of the length given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINPROGRESS | libc::EAGAIN) => Ok(()),
        _ => Err(e),
    }
}

impl SocketLink {
    /// Listens on `addr` (a unix path is created; a stale socket file is
    /// replaced, see [`bind_unix`]).
    pub fn server(addr: SocketAddr) -> io::Result<Self> {
        let listener = match &addr {
            SocketAddr::Unix(p) => {
                let l = bind_unix(p)?;
                l.set_nonblocking(true)?;
                Listener::Unix(l)
            }
            SocketAddr::Tcp(a) => {
                let l = TcpListener::bind(a.as_str())
                    .map_err(|e| io::Error::new(e.kind(), std::format!("listening on {a}: {e}")))?;
                l.set_nonblocking(true)?;
                Listener::Tcp(l)
            }
        };
        let poller = Poller::new()?;
        poller.ctl(libc::EPOLL_CTL_ADD, listener.fd(), false);
        Ok(SocketLink {
            addr,
            listener: Some(listener),
            stream: None,
            reconnect: None,
            next_dial: None,
            poller,
        })
    }

    /// Connects to `addr`. With `reconnect`, a failed or lost connection
    /// is dialled again after that delay instead of being an error.
    pub fn client(addr: SocketAddr, reconnect: Option<Duration>) -> io::Result<Self> {
        let mut link = SocketLink {
            addr,
            listener: None,
            stream: None,
            reconnect,
            next_dial: None,
            poller: Poller::new()?,
        };
        match link.dial() {
            Ok(()) => Ok(link),
            Err(_) if reconnect.is_some() => {
                link.lost();
                Ok(link)
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

    /// The connected stream, if a peer is there.
    pub fn stream_fd(&self) -> Option<RawFd> {
        self.stream.as_ref().map(|s| s.as_raw_fd())
    }

    /// The stable readiness fd (see the module doc).
    pub fn readiness_fd(&self) -> RawFd {
        self.poller.epoll.as_raw_fd()
    }

    /// Accepts a waiting peer (server) or redials when due (client).
    /// Returns whether a new peer just connected.
    pub fn poll_connect(&mut self) -> bool {
        if self.stream.is_some() {
            return false;
        }
        if let Some(l) = &self.listener {
            return match l.accept() {
                Some(fd) => {
                    self.connected(fd);
                    true
                }
                None => false,
            };
        }
        self.poller.drain_timer();
        let Some(delay) = self.reconnect else {
            return false;
        };
        let now = Instant::now();
        if self.next_dial.is_some_and(|t| now < t) {
            return false;
        }
        match self.dial() {
            Ok(()) => true,
            Err(_) => {
                self.next_dial = Some(now + delay);
                self.poller.arm(delay);
                false
            }
        }
    }

    /// The peer went away: listen again (server) or redial later (client).
    pub fn lost(&mut self) {
        if let Some(fd) = self.stream.take() {
            self.poller.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), false);
        }
        if let Some(l) = &self.listener {
            self.poller.ctl(libc::EPOLL_CTL_ADD, l.fd(), false);
        }
        if let Some(d) = self.reconnect {
            self.next_dial = Some(Instant::now() + d);
            self.poller.arm(d);
        }
    }

    /// Whether the readiness fd also reports that the stream can take
    /// more output (for a sender holding back a partial write).
    pub fn want_output(&self, on: bool) {
        if let Some(fd) = self.stream_fd() {
            self.poller.ctl(libc::EPOLL_CTL_MOD, fd, on);
        }
    }

    /// Reads what the stream has now. `Ok(None)`: nothing yet;
    /// `Ok(Some(0))` never happens: an orderly shutdown or a reset peer is
    /// [`lost`](Self::lost) and reads as `Ok(None)`.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(fd) = self.stream_fd() else {
            return Ok(None);
        };
        loop {
            // SAFETY: `fd` is open; `buf` is a valid writable slice of ours.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                if !buf.is_empty() {
                    self.lost();
                }
                return Ok(None);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => return Ok(None),
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
                    self.lost();
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }

    /// Sends the `iov` parts gathered in one `sendmsg`, returning the bytes
    /// the socket took now (0 if it is full), or `None` if no peer is
    /// connected or it went away (then [`lost`](Self::lost)).
    /// Parts beyond [`MAX_IOV`] are not sent (the count says so).
    pub fn send(&mut self, parts: &[&[u8]]) -> io::Result<Option<usize>> {
        let Some(fd) = self.stream_fd() else {
            return Ok(None);
        };
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        let used = parts.len().min(MAX_IOV);
        for (v, p) in iov.iter_mut().zip(parts) {
            *v = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        // usize in glibc, c_int in musl; `used` is at most the few
        // iovecs above.
        msg.msg_iovlen = used as _;
        loop {
            // SAFETY: `fd` is open; `msg` points at `used` iovecs describing
            // live slices the kernel only reads.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => return Ok(Some(0)),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                    self.lost();
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }

    fn dial(&mut self) -> io::Result<()> {
        let fd: OwnedFd = match &self.addr {
            SocketAddr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_nonblocking(true)?;
                s.into()
            }
            SocketAddr::Tcp(a) => {
                let s = TcpStream::connect(a.as_str())?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                s.into()
            }
        };
        self.connected(fd);
        Ok(())
    }

    /// A peer is there: watch its stream instead of the listener.
    fn connected(&mut self, fd: OwnedFd) {
        if let Some(l) = &self.listener {
            self.poller.ctl(libc::EPOLL_CTL_DEL, l.fd(), false);
        }
        self.poller.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), false);
        self.stream = Some(fd);
    }
}
