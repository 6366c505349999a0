//! Chardevs backed by the operating system (QEMU's `-chardev file`, `pipe`,
//! `socket`, `pty`, `stdio`), all non-blocking.
//!
//! Reads return what is there now; writes take what the OS takes now. A
//! socket chardev survives its peer: a server accepts the next connection,
//! a client with `reconnect` dials again, and while nobody is connected
//! output is dropped and counted (as QEMU does) rather than blocking the
//! guest.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::time::{Duration, Instant};

use super::{Chardev, ChardevError};

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ChardevError {
    let what = what.into();
    move |err| ChardevError::Io { what, err }
}

/// Reads what is there without blocking: `WouldBlock` and end of file are
/// "nothing now".
fn read_nb(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<usize, ChardevError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(err) => {
                return Err(ChardevError::Io {
                    what: what.to_string(),
                    err,
                });
            }
        }
    }
}

/// Writes what the OS takes now.
fn write_nb(w: &mut impl Write, buf: &[u8], what: &str) -> Result<usize, ChardevError> {
    loop {
        match w.write(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Err(ChardevError::Disconnected),
            Err(err) => {
                return Err(ChardevError::Io {
                    what: what.to_string(),
                    err,
                });
            }
        }
    }
}

/// A chardev's own epoll set, whose fd is what [`Chardev::readiness_fd`]
/// returns: it stays the same for the chardev's life while the sockets and
/// timers inside it come and go (listener, then the accepted stream, then
/// the listener again), so an event loop registers it once. It is readable
/// whenever one of its members is.
#[derive(Debug)]
struct Readiness {
    epoll: OwnedFd,
    /// One-shot timer that fires when a client should redial.
    timer: OwnedFd,
}

impl Readiness {
    fn new(what: &str) -> Result<Self, ChardevError> {
        // SAFETY: epoll_create1 takes a flag word and returns a new fd or -1.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io_err(what)(io::Error::last_os_error()));
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
            return Err(io_err(what)(io::Error::last_os_error()));
        }
        // SAFETY: `t` is a fresh fd that nothing else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(t) };
        let r = Readiness { epoll, timer };
        r.add(r.timer.as_raw_fd());
        Ok(r)
    }

    /// Watches `fd` for input, hang-up and errors.
    fn add(&self, fd: RawFd) {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: fd as u64,
        };
        // SAFETY: both fds are open; `ev` is a valid event the kernel copies.
        // A failure (already added) leaves the set as it was, which is fine.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }

    /// Stops watching `fd`.
    fn remove(&self, fd: RawFd) {
        // SAFETY: both fds are open; DEL ignores the event pointer.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
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
                // A zero value would disarm the timer: fire after 1 ns then.
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

    fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// Output to a file, optional input from another (QEMU's `-chardev
/// file,path=…[,input-path=…]`).
#[derive(Debug)]
pub struct FileChardev {
    path: PathBuf,
    out: File,
    input: Option<(PathBuf, File)>,
}

impl FileChardev {
    /// Creates (or truncates) `path` for output; reads input from
    /// `input_path` if given.
    pub fn open(path: impl AsRef<Path>, input_path: Option<&Path>) -> Result<Self, ChardevError> {
        let path = path.as_ref().to_path_buf();
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(path.display().to_string()))?;
        let input = match input_path {
            Some(p) => Some((
                p.to_path_buf(),
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p)
                    .map_err(io_err(p.display().to_string()))?,
            )),
            None => None,
        };
        Ok(FileChardev { path, out, input })
    }
}

impl Chardev for FileChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let what = self.path.display().to_string();
        write_nb(&mut self.out, buf, &what)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        match &mut self.input {
            Some((p, f)) => {
                let what = p.display().to_string();
                read_nb(f, buf, &what)
            }
            None => Ok(0),
        }
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        self.input.as_ref().map(|(_, f)| f.as_raw_fd())
    }
}

/// A pair of FIFOs or files, `<path>.in` read and `<path>.out` written
/// (QEMU's `-chardev pipe,path=…`); if those do not exist, `path` itself is
/// used both ways.
#[derive(Debug)]
pub struct PipeChardev {
    path: PathBuf,
    input: File,
    out: File,
}

impl PipeChardev {
    /// Opens the pipe pair (non-blocking).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ChardevError> {
        let path = path.as_ref().to_path_buf();
        let mut pin = path.clone().into_os_string();
        pin.push(".in");
        let mut pout = path.clone().into_os_string();
        pout.push(".out");
        let (pin, pout) = (PathBuf::from(pin), PathBuf::from(pout));
        let (pin, pout) = if pin.exists() && pout.exists() {
            (pin, pout)
        } else {
            (path.clone(), path.clone())
        };
        let open = |p: &Path, read: bool| {
            OpenOptions::new()
                .read(read)
                // A FIFO opened for writing with O_NONBLOCK fails without a
                // reader; read+write opens never fail that way on Linux.
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .map_err(io_err(p.display().to_string()))
        };
        Ok(PipeChardev {
            input: open(&pin, true)?,
            out: open(&pout, true)?,
            path,
        })
    }
}

impl Chardev for PipeChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let what = self.path.display().to_string();
        write_nb(&mut self.out, buf, &what)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        let what = self.path.display().to_string();
        read_nb(&mut self.input, buf, &what)
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.input.as_raw_fd())
    }
}

/// Where a socket chardev connects or listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl std::fmt::Display for SocketAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            SocketAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

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
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)
            }
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream socket, server or client, unix or TCP (QEMU's `-chardev
/// socket,path=…|host=…,port=…,server=on|off,reconnect=N`).
pub struct SocketChardev {
    addr: SocketAddr,
    listener: Option<Listener>,
    stream: Option<Stream>,
    reconnect: Option<Duration>,
    next_dial: Option<Instant>,
    /// Output bytes dropped while nobody was connected.
    dropped: u64,
    /// The stable readiness fd (see [`Readiness`]).
    readiness: Readiness,
}

impl std::fmt::Debug for SocketChardev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketChardev")
            .field("addr", &self.addr)
            .field("server", &self.listener.is_some())
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl SocketChardev {
    /// Listens on `addr` (a unix path is created; an existing socket file is
    /// replaced). Peers are accepted one at a time, without blocking.
    pub fn server(addr: SocketAddr) -> Result<Self, ChardevError> {
        let what = addr.to_string();
        let listener = match &addr {
            SocketAddr::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).map_err(io_err(what.clone()))?;
                l.set_nonblocking(true).map_err(io_err(what.clone()))?;
                Listener::Unix(l)
            }
            SocketAddr::Tcp(a) => {
                let l = TcpListener::bind(a.as_str()).map_err(io_err(what.clone()))?;
                l.set_nonblocking(true).map_err(io_err(what.clone()))?;
                Listener::Tcp(l)
            }
        };
        let readiness = Readiness::new(&what)?;
        readiness.add(listener.fd());
        Ok(SocketChardev {
            addr,
            listener: Some(listener),
            stream: None,
            reconnect: None,
            next_dial: None,
            dropped: 0,
            readiness,
        })
    }

    /// Connects to `addr`. With `reconnect`, a failed or lost connection is
    /// dialled again after that delay instead of being an error.
    pub fn client(addr: SocketAddr, reconnect: Option<Duration>) -> Result<Self, ChardevError> {
        let readiness = Readiness::new(&addr.to_string())?;
        let mut c = SocketChardev {
            addr,
            listener: None,
            stream: None,
            reconnect,
            next_dial: None,
            dropped: 0,
            readiness,
        };
        match c.dial() {
            Ok(()) => Ok(c),
            Err(_) if reconnect.is_some() => {
                c.lost();
                Ok(c)
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

    /// Whether a peer is connected now (after trying to accept or dial).
    pub fn is_connected(&mut self) -> bool {
        self.poll_connect();
        self.stream.is_some()
    }

    /// Output bytes dropped while nobody was connected.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn dial(&mut self) -> Result<(), ChardevError> {
        let what = self.addr.to_string();
        let s = match &self.addr {
            SocketAddr::Unix(p) => {
                Stream::Unix(UnixStream::connect(p).map_err(io_err(what.clone()))?)
            }
            SocketAddr::Tcp(a) => {
                Stream::Tcp(TcpStream::connect(a.as_str()).map_err(io_err(what.clone()))?)
            }
        };
        s.set_nonblocking().map_err(io_err(what))?;
        self.connected(s);
        Ok(())
    }

    /// A peer is there: watch its stream instead of the listener.
    fn connected(&mut self, s: Stream) {
        if let Some(l) = &self.listener {
            self.readiness.remove(l.fd());
        }
        self.readiness.add(s.fd());
        self.stream = Some(s);
    }

    /// Accepts a waiting peer (server) or redials when due (client).
    fn poll_connect(&mut self) {
        if self.stream.is_some() {
            return;
        }
        let accepted = match &self.listener {
            Some(Listener::Unix(l)) => l.accept().ok().map(|(s, _)| Stream::Unix(s)),
            Some(Listener::Tcp(l)) => l.accept().ok().map(|(s, _)| Stream::Tcp(s)),
            None => {
                self.readiness.drain_timer();
                let Some(delay) = self.reconnect else { return };
                let now = Instant::now();
                if self.next_dial.is_some_and(|t| now < t) {
                    return;
                }
                if self.dial().is_err() {
                    self.next_dial = Some(now + delay);
                    self.readiness.arm(delay);
                }
                return;
            }
        };
        if let Some(s) = accepted
            && s.set_nonblocking().is_ok()
        {
            self.connected(s);
        }
    }

    /// The peer went away: listen again (server) or redial later (client).
    fn lost(&mut self) {
        if let Some(s) = self.stream.take() {
            self.readiness.remove(s.fd());
        }
        if let Some(l) = &self.listener {
            self.readiness.add(l.fd());
        }
        if let Some(d) = self.reconnect {
            self.next_dial = Some(Instant::now() + d);
            self.readiness.arm(d);
        }
    }
}

impl Chardev for SocketChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        self.poll_connect();
        let what = self.addr.to_string();
        let Some(s) = &mut self.stream else {
            // Nobody listening: the guest must not stall (QEMU drops too).
            self.dropped += buf.len() as u64;
            return Ok(buf.len());
        };
        match write_nb(s, buf, &what) {
            Err(ChardevError::Disconnected) => {
                self.lost();
                self.dropped += buf.len() as u64;
                Ok(buf.len())
            }
            r => r,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        self.poll_connect();
        let what = self.addr.to_string();
        let Some(s) = &mut self.stream else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        match s.read(buf) {
            Ok(0) => {
                // Orderly shutdown by the peer.
                self.lost();
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                self.lost();
                Ok(0)
            }
            Err(err) => Err(ChardevError::Io { what, err }),
        }
    }

    /// One fd for the chardev's whole life (an epoll set of its own that
    /// holds the listener or the connected stream, and the redial timer):
    /// readable when a peer connects, sends, hangs up, or a redial is due.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.readiness.fd())
    }
}

/// A pseudo-terminal (QEMU's `-chardev pty`): the guest talks to the master
/// side; a user opens [`slave_path`](PtyChardev::slave_path).
#[derive(Debug)]
pub struct PtyChardev {
    master: File,
    slave_path: PathBuf,
    /// Keeps the slave open so reads on the master do not fail with EIO
    /// before a user attaches.
    _slave: OwnedFd,
}

impl PtyChardev {
    /// Opens a new pty pair.
    pub fn open() -> Result<Self, ChardevError> {
        let mut master: libc::c_int = -1;
        let mut slave: libc::c_int = -1;
        // SAFETY: openpty writes two fds into the out-pointers, which point
        // to live locals; name, termios and winsize may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(ChardevError::Io {
                what: "pty".into(),
                err: io::Error::last_os_error(),
            });
        }
        // SAFETY: openpty succeeded, so both are fresh fds we now own.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let link = PathBuf::from(format!("/proc/self/fd/{}", slave.as_raw_fd()));
        let slave_path = std::fs::read_link(&link).map_err(io_err("pty"))?;
        // SAFETY: fcntl on an fd we own, with flags from F_GETFL.
        let ok = unsafe {
            let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            fl >= 0 && libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(ChardevError::Io {
                what: "pty".into(),
                err: io::Error::last_os_error(),
            });
        }
        // Raw mode on the slave so bytes pass unchanged.
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on an fd we own, with a
        // zeroed termios local.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(slave.as_raw_fd(), &mut t) == 0 {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
            }
        }
        Ok(PtyChardev {
            master,
            slave_path,
            _slave: slave,
        })
    }

    /// The terminal a user opens (e.g. `/dev/pts/3`).
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }
}

impl Chardev for PtyChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        write_nb(&mut self.master, buf, "pty")
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        read_nb(&mut self.master, buf, "pty")
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.master.as_raw_fd())
    }
}

/// The harness's own standard output and input (QEMU's `-chardev stdio`).
/// Input is read only if stdin is not a terminal in cooked mode's way: it
/// is switched to non-blocking on first use.
#[derive(Debug, Default)]
pub struct StdioChardev {
    nonblocking: bool,
}

impl Chardev for StdioChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let mut out = io::stdout().lock();
        let n = write_nb(&mut out, buf, "stdout")?;
        let _ = out.flush();
        Ok(n)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        if !self.nonblocking {
            // SAFETY: fcntl on fd 0 with flags from F_GETFL.
            unsafe {
                let fl = libc::fcntl(0, libc::F_GETFL);
                if fl >= 0 {
                    libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
            }
            self.nonblocking = true;
        }
        read_nb(&mut io::stdin().lock(), buf, "stdin")
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("chardev-{name}-{}", std::process::id()))
    }

    fn read_until(c: &mut impl Chardev, want: usize) -> Vec<u8> {
        read_for(c, want, Duration::from_secs(5))
    }

    /// Reads until `want` bytes came or `limit` passed.
    fn read_for(c: &mut impl Chardev, want: usize, limit: Duration) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + limit;
        while got.len() < want && Instant::now() < deadline {
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        got
    }

    #[test]
    fn file_chardev_writes_the_file_and_reads_its_input() {
        let out = tmp("file-out");
        let inp = tmp("file-in");
        std::fs::write(&inp, b"typed").unwrap();
        let mut c = FileChardev::open(&out, Some(&inp)).unwrap();
        assert_eq!(c.write(b"hello").unwrap(), 5);
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        assert_eq!(read_until(&mut c, 5), b"typed");
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
        let err = FileChardev::open("/nonexistent/dir/out.log", None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/out.log"));
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(inp);
    }

    #[test]
    fn unix_server_accepts_exchanges_and_survives_its_peer() {
        let path = tmp("unix-server");
        let mut srv = SocketChardev::server(SocketAddr::Unix(path.clone())).unwrap();
        assert!(!srv.is_connected());
        // Nobody connected: output is dropped, not blocked.
        assert_eq!(srv.write(b"lost").unwrap(), 4);
        assert_eq!(srv.dropped(), 4);
        let mut peer = UnixStream::connect(&path).unwrap();
        assert!(srv.is_connected());
        peer.write_all(b"ping").unwrap();
        assert_eq!(read_until(&mut srv, 4), b"ping");
        assert_eq!(srv.write(b"pong").unwrap(), 4);
        let mut b = [0u8; 4];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong");
        drop(peer);
        assert!(read_for(&mut srv, 1, Duration::from_millis(100)).is_empty());
        // The next peer is accepted.
        let mut peer2 = UnixStream::connect(&path).unwrap();
        peer2.write_all(b"again").unwrap();
        assert_eq!(read_until(&mut srv, 5), b"again");
        let _ = std::fs::remove_file(path);
    }

    /// Whether `fd` is readable within `ms` milliseconds.
    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn socket_readiness_fd_is_stable_and_follows_connect_data_and_hangup() {
        let path = tmp("ready-sock");
        let mut c = SocketChardev::server(SocketAddr::Unix(path.clone())).unwrap();
        let fd = c.readiness_fd().unwrap();
        assert!(!readable(fd, 0), "nothing happened yet");
        let mut peer = UnixStream::connect(&path).unwrap();
        assert!(readable(fd, 2000), "a waiting peer makes it readable");
        assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
        assert!(c.is_connected());
        assert_eq!(c.readiness_fd(), Some(fd), "same fd once connected");
        assert!(!readable(fd, 0), "connected, nothing sent");
        peer.write_all(b"hi").unwrap();
        assert!(readable(fd, 2000), "data makes it readable");
        assert_eq!(read_until(&mut c, 2), b"hi");
        assert!(!readable(fd, 0), "drained");
        drop(peer);
        assert!(readable(fd, 2000), "a hang-up makes it readable");
        assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
        assert!(!c.is_connected());
        let mut again = UnixStream::connect(&path).unwrap();
        assert!(readable(fd, 2000), "the next peer is seen on the same fd");
        again.write_all(b"yo").unwrap();
        assert_eq!(read_until(&mut c, 2), b"yo");
        assert_eq!(c.readiness_fd(), Some(fd));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn client_redial_timer_makes_the_readiness_fd_readable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut c = SocketChardev::client(
            SocketAddr::Tcp(addr.clone()),
            Some(Duration::from_millis(20)),
        )
        .unwrap();
        assert!(!c.is_connected());
        let fd = c.readiness_fd().unwrap();
        let listener = TcpListener::bind(addr.as_str()).unwrap();
        assert!(readable(fd, 2000), "the redial timer fires");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.is_connected() && Instant::now() < deadline {
            readable(fd, 100);
        }
        assert!(c.is_connected());
        let (mut server_side, _) = listener.accept().unwrap();
        server_side.write_all(b"ok").unwrap();
        assert!(readable(fd, 2000));
        assert_eq!(read_until(&mut c, 2), b"ok");
    }

    #[test]
    fn tcp_client_reconnects_after_the_server_restarts() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut c = SocketChardev::client(
            SocketAddr::Tcp(addr.clone()),
            Some(Duration::from_millis(10)),
        )
        .unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write(b"one").unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"one");
        drop(s);
        assert!(
            read_for(&mut c, 1, Duration::from_millis(100)).is_empty(),
            "peer closed"
        );
        // The client dials again by itself.
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.is_connected());
        let (mut s2, _) = l.accept().unwrap();
        s2.write_all(b"two").unwrap();
        assert_eq!(read_until(&mut c, 3), b"two");
    }

    #[test]
    fn client_without_reconnect_names_the_address_it_could_not_reach() {
        let err = SocketChardev::client(SocketAddr::Unix(tmp("nobody")), None).unwrap_err();
        assert!(err.to_string().contains("chardev-nobody"));
    }

    #[test]
    fn pty_passes_bytes_both_ways() {
        let mut p = PtyChardev::open().unwrap();
        let mut user = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p.slave_path())
            .unwrap();
        assert_eq!(p.write(b"to user").unwrap(), 7);
        let mut b = [0u8; 7];
        user.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"to user");
        user.write_all(b"from user").unwrap();
        assert_eq!(read_until(&mut p, 9), b"from user");
    }

    #[test]
    fn pipe_pair_is_used_when_both_fifos_exist() {
        let base = tmp("pipe");
        for ext in [".in", ".out"] {
            let mut p = base.clone().into_os_string();
            p.push(ext);
            let c = std::ffi::CString::new(p.into_encoded_bytes()).unwrap();
            // SAFETY: mkfifo with a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        let mut c = PipeChardev::open(&base).unwrap();
        let mut pin = base.clone().into_os_string();
        pin.push(".in");
        let mut pout = base.clone().into_os_string();
        pout.push(".out");
        let mut writer = OpenOptions::new().write(true).open(&pin).unwrap();
        writer.write_all(b"in!").unwrap();
        assert_eq!(read_until(&mut c, 3), b"in!");
        let mut reader = OpenOptions::new().read(true).open(&pout).unwrap();
        assert_eq!(c.write(b"out").unwrap(), 3);
        let mut b = [0u8; 3];
        reader.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"out");
        let _ = std::fs::remove_file(pin);
        let _ = std::fs::remove_file(pout);
    }
}
