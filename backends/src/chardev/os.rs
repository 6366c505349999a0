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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::time::Duration;

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
            .map_err(io_err(std::format!(
                "creating {} for output",
                path.display()
            )))?;
        let input = match input_path {
            Some(p) => Some((
                p.to_path_buf(),
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p)
                    .map_err(io_err(std::format!("opening {} for input", p.display())))?,
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
                .map_err(io_err(std::format!(
                    "opening the pipe {} read-write",
                    p.display()
                )))
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

pub use crate::socket::SocketAddr;
use crate::socket::SocketLink;

/// A stream socket, server or client, unix or TCP (QEMU's `-chardev
/// socket,path=…|host=…,port=…,server=on|off,reconnect=N`), on a
/// [`SocketLink`] that survives its peer.
#[derive(Debug)]
pub struct SocketChardev {
    link: SocketLink,
    /// Output bytes dropped while nobody was connected.
    dropped: u64,
}

impl SocketChardev {
    /// Listens on `addr` (a unix path is created; a stale socket file is
    /// replaced). Peers are accepted one at a time, without blocking.
    pub fn server(addr: SocketAddr) -> Result<Self, ChardevError> {
        let what = addr.to_string();
        let link = SocketLink::server(addr).map_err(io_err(what))?;
        Ok(SocketChardev { link, dropped: 0 })
    }

    /// Connects to `addr`. With `reconnect`, a failed or lost connection is
    /// dialled again after that delay instead of being an error.
    pub fn client(addr: SocketAddr, reconnect: Option<Duration>) -> Result<Self, ChardevError> {
        let what = std::format!("connecting to {addr}");
        let link = SocketLink::client(addr, reconnect)
            .map_err(|err| {
                let hint = match err.kind() {
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                        "; expected a listener there (server=off): start the peer first, add reconnect=SECONDS, or use server=on"
                    }
                    _ => "",
                };
                std::io::Error::new(err.kind(), std::format!("{err}{hint}"))
            })
            .map_err(io_err(what))?;
        Ok(SocketChardev { link, dropped: 0 })
    }

    /// The address.
    pub fn addr(&self) -> &SocketAddr {
        self.link.addr()
    }

    /// For a TCP server, the port actually bound (useful with port 0).
    pub fn local_port(&self) -> Option<u16> {
        self.link.local_port()
    }

    /// Whether a peer is connected now (after trying to accept or dial).
    pub fn is_connected(&mut self) -> bool {
        self.link.poll_connect();
        self.link.stream_fd().is_some()
    }

    /// Output bytes dropped while nobody was connected.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Chardev for SocketChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        self.link.poll_connect();
        match self.link.send(&[buf]) {
            Ok(Some(n)) => Ok(n),
            // Nobody listening, or the peer just left: the guest must not
            // stall (QEMU drops too).
            Ok(None) => {
                self.dropped += buf.len() as u64;
                Ok(buf.len())
            }
            Err(err) => Err(ChardevError::Io {
                what: self.link.addr().to_string(),
                err,
            }),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        self.link.poll_connect();
        match self.link.recv(buf) {
            Ok(n) => Ok(n.unwrap_or(0)),
            Err(err) => Err(ChardevError::Io {
                what: self.link.addr().to_string(),
                err,
            }),
        }
    }

    /// One fd for the chardev's whole life (the link's own epoll set):
    /// readable when a peer connects, sends, hangs up, or a redial is due.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.link.readiness_fd())
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
    /// Opens a new pty pair. Both ends are close-on-exec from the start
    /// (std opens with `O_CLOEXEC`), so no child process inherits them.
    pub fn open() -> Result<Self, ChardevError> {
        let io = |err| ChardevError::Io {
            what: "pty".into(),
            err,
        };
        let master = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open("/dev/ptmx")
            .map_err(io)?;
        let fd = master.as_raw_fd();
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: grantpt/unlockpt take an fd we own; ptsname_r writes at
        // most `name.len()` bytes, NUL-terminated, into a live local.
        let ok = unsafe {
            libc::grantpt(fd) == 0
                && libc::unlockpt(fd) == 0
                && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
        };
        if !ok {
            return Err(io(io::Error::last_os_error()));
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated
        // string within its bounds.
        let cname = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        let slave_path = PathBuf::from(std::ffi::OsStr::from_bytes(cname.to_bytes()));
        let slave: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave_path)
            .map_err(io)?
            .into();
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

/// A host terminal device (QEMU's `-chardev serial,path=…`, alias
/// `tty`): a serial port such as `/dev/ttyS0` or `/dev/ttyUSB0`, put in
/// raw mode (bytes pass unchanged, no echo, no line discipline) and used
/// without blocking. A path that is not a terminal is refused, naming it.
/// Tests use the slave side of a pty pair in place of a serial port.
#[derive(Debug)]
pub struct TtyChardev {
    tty: File,
    path: PathBuf,
}

impl TtyChardev {
    /// Opens the terminal at `path` and puts it in raw mode.
    pub fn open(path: &Path) -> Result<Self, ChardevError> {
        let what = format!("serial:{}", path.display());
        let tty = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                    " (serial devices usually need the 'dialout' group)"
                } else {
                    ""
                };
                io::Error::new(e.kind(), std::format!("opening it read-write: {e}{hint}"))
            })
            .map_err(io_err(what.clone()))?;
        let fd = tty.as_raw_fd();
        // SAFETY: tcgetattr/cfmakeraw/tcsetattr on an fd we own, with a
        // zeroed termios local.
        let raw = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                Err(io::Error::last_os_error())
            } else {
                libc::cfmakeraw(&mut t);
                if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }
        };
        raw.map_err(|e| ChardevError::Io {
            what,
            err: if e.raw_os_error() == Some(libc::ENOTTY) {
                io::Error::new(ErrorKind::InvalidInput, "not a terminal")
            } else {
                e
            },
        })?;
        Ok(TtyChardev {
            tty,
            path: path.to_path_buf(),
        })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Chardev for TtyChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        write_nb(&mut self.tty, buf, "serial")
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        read_nb(&mut self.tty, buf, "serial")
    }
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.tty.as_raw_fd())
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

/// The largest datagram the guest's output is cut into (IPv4's UDP
/// payload limit).
const UDP_MAX: usize = 65507;

/// A UDP socket (QEMU's `-chardev udp,host=…,port=…[,localaddr=…]
/// [,localport=…]`): bound to the local address, connected to the remote
/// one, so only the remote's datagrams are taken. Each write of the
/// guest's output goes out as one datagram (cut at 65 507 bytes); the
/// remote's datagrams are the guest's input, in order, their boundaries
/// not kept. Nobody at the remote (its port closed: the kernel reports
/// the ICMP answer on the next call) is not an error: the guest never
/// stalls on output, as with QEMU; a send the kernel refuses that way is
/// counted in [`dropped`](UdpChardev::dropped).
#[derive(Debug)]
pub struct UdpChardev {
    sock: std::net::UdpSocket,
    remote: std::net::SocketAddr,
    /// The datagram being handed to the guest (its first `len` bytes),
    /// and how far.
    pending: std::vec::Vec<u8>,
    len: usize,
    at: usize,
    dropped: u64,
}

impl UdpChardev {
    /// Binds `local` (`addr:port`, port 0 for any) and connects to
    /// `remote` (`host:port`). Names are resolved and the first remote
    /// address with a local one of the same family is used (`localhost`
    /// may give `::1` and `127.0.0.1`); with `local` `None`, the wildcard
    /// address of the remote's family, port 0, as QEMU binds. `family`
    /// keeps only IPv4 (`Some(true)`) or IPv6 (`Some(false)`) addresses
    /// (QEMU's `ipv4=on`/`ipv6=on`).
    pub fn open(
        remote: &str,
        local: Option<&str>,
        family: Option<bool>,
    ) -> Result<Self, ChardevError> {
        use std::net::ToSocketAddrs;
        let what = format!("udp:{remote}");
        let resolve = |a: &str| -> Result<std::vec::Vec<std::net::SocketAddr>, ChardevError> {
            Ok(a.to_socket_addrs()
                .map_err(io_err(what.clone()))?
                .filter(|x| family.is_none_or(|v4| x.is_ipv4() == v4))
                .collect())
        };
        let remotes = resolve(remote)?;
        let locals = match local {
            Some(l) => resolve(l)?,
            None => std::vec![
                std::net::SocketAddr::from(([0u8; 4], 0)),
                std::net::SocketAddr::from(([0u16; 8], 0)),
            ],
        };
        let (remote_addr, local_addr) = remotes
            .iter()
            .find_map(|r| {
                locals
                    .iter()
                    .find(|l| l.is_ipv4() == r.is_ipv4())
                    .map(|l| (*r, *l))
            })
            .ok_or_else(|| ChardevError::Io {
                what: what.clone(),
                err: io::Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no address of {remote} with a local address of the same family{}",
                        local.map(|l| format!(" in {l}")).unwrap_or_default()
                    ),
                ),
            })?;
        let sock = std::net::UdpSocket::bind(local_addr).map_err(io_err(what.clone()))?;
        sock.connect(remote_addr).map_err(io_err(what.clone()))?;
        sock.set_nonblocking(true).map_err(io_err(what))?;
        Ok(UdpChardev {
            sock,
            remote: remote_addr,
            pending: std::vec::Vec::new(),
            len: 0,
            at: 0,
            dropped: 0,
        })
    }

    /// The local address bound (its port, when `localport=0`).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.sock.local_addr()
    }

    /// Output bytes dropped because the remote was not there.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn err(&self, err: io::Error) -> ChardevError {
        ChardevError::Io {
            what: format!("udp:{}", self.remote),
            err,
        }
    }
}

/// The kernel's report of an ICMP port unreachable for an earlier
/// datagram: the remote is not listening (yet).
fn refused(e: &io::Error) -> bool {
    e.kind() == ErrorKind::ConnectionRefused
}

impl Chardev for UdpChardev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let n = buf.len().min(UDP_MAX);
        match self.sock.send(&buf[..n]) {
            Ok(sent) => Ok(sent),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            // Refused, unreachable, too big, not permitted: a datagram
            // lost, never the guest's output held up.
            Err(_) => {
                self.dropped += n as u64;
                Ok(n)
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        if self.at == self.len {
            if self.pending.len() < UDP_MAX + 1 {
                self.pending.resize(UDP_MAX + 1, 0);
            }
            let got = loop {
                match self.sock.recv(&mut self.pending) {
                    // An empty datagram: look for the next.
                    Ok(0) => continue,
                    Ok(n) => break n,
                    // A refusal report for an earlier send: not this read's.
                    Err(e) if e.kind() == ErrorKind::Interrupted || refused(&e) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break 0,
                    Err(e) => {
                        self.len = 0;
                        self.at = 0;
                        return Err(self.err(e));
                    }
                }
            };
            self.len = got;
            self.at = 0;
        }
        let n = buf.len().min(self.len - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

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

    /// The slave side of a pty stands in for a serial port: bytes pass
    /// both ways unchanged (raw mode: no CR/LF mapping, no echo).
    #[test]
    fn a_terminal_device_passes_raw_bytes_both_ways() {
        let mut pty = PtyChardev::open().unwrap();
        // Back to a cooked terminal (echo, CR/LF mapping, line editing),
        // so that what passes unchanged is TtyChardev's own raw mode.
        {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(pty.slave_path())
                .unwrap();
            // SAFETY: termios calls on an fd we own, a zeroed local.
            unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
                t.c_lflag |= libc::ICANON | libc::ECHO | libc::ISIG;
                t.c_iflag |= libc::ICRNL;
                t.c_oflag |= libc::OPOST | libc::ONLCR;
                assert_eq!(libc::tcsetattr(f.as_raw_fd(), libc::TCSANOW, &t), 0);
            }
        }
        let mut tty = TtyChardev::open(pty.slave_path()).unwrap();
        let bytes = b"line\r\n\x03\x7fend\n";
        assert_eq!(tty.write(bytes).unwrap(), bytes.len());
        let mut got = std::vec::Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < bytes.len() && std::time::Instant::now() < end {
            let mut b = [0u8; 64];
            let n = pty.read(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, bytes);
        assert_eq!(pty.write(b"in\n").unwrap(), 3);
        let mut got = std::vec::Vec::new();
        while got.len() < 3 && std::time::Instant::now() < end {
            let mut b = [0u8; 64];
            let n = tty.read(&mut b).unwrap();
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got, b"in\n");
        assert!(tty.readiness_fd().is_some());
    }

    #[test]
    fn a_path_that_is_not_a_terminal_is_refused_naming_it() {
        let e = TtyChardev::open(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/null") && e.contains("not a terminal"),
            "{e}"
        );
        let e = TtyChardev::open(Path::new("/nonexistent/ttyS9"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ttyS9"), "{e}");
    }

    #[test]
    fn udp_carries_output_as_datagrams_and_input_from_the_remote_only() {
        use std::net::UdpSocket;
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let remote = peer.local_addr().unwrap().to_string();
        let mut c = UdpChardev::open(&remote, Some("127.0.0.1:0"), None).unwrap();
        let ours = c.local_addr().unwrap();
        assert_eq!(c.write(b"hello").unwrap(), 5);
        let mut b = [0u8; 64];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (n, from) = peer.recv_from(&mut b).unwrap();
        assert_eq!((&b[..n], from), (&b"hello"[..], ours));
        // Input: two datagrams read back in pieces, in order.
        peer.send_to(b"abc", ours).unwrap();
        peer.send_to(b"defg", ours).unwrap();
        // A stranger's datagram is not taken (the socket is connected).
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"XX", ours).unwrap();
        let mut got = std::vec::Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 7 && std::time::Instant::now() < end {
            let mut piece = [0u8; 2];
            let n = c.read(&mut piece).unwrap();
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, b"abcdefg");
        assert_eq!(c.read(&mut b).unwrap(), 0);
        assert!(c.readiness_fd().is_some());
    }

    #[test]
    fn udp_to_nobody_drops_and_counts_and_bad_addresses_are_named() {
        use std::net::UdpSocket;
        // A port nobody listens on: bind one, note it, close it.
        let gone = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = UdpChardev::open(&gone.to_string(), Some("127.0.0.1:0"), None).unwrap();
        // The guest never stalls; the kernel's refusal of one datagram
        // shows on the next send, which is then counted as dropped.
        for _ in 0..3 {
            assert_eq!(c.write(b"lost").unwrap(), 4);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(c.dropped() >= 4, "{}", c.dropped());
        // Or on the next receive: nothing to read, no error.
        assert_eq!(c.write(b"lost").unwrap(), 4);
        std::thread::sleep(Duration::from_millis(10));
        let mut b = [0u8; 8];
        assert_eq!(c.read(&mut b).unwrap(), 0);
        for (remote, local, want) in [
            ("no-such-host.invalid:9", "0.0.0.0:0", "no-such-host"),
            ("127.0.0.1:9", "[::1]:0", "family"),
        ] {
            let e = UdpChardev::open(remote, Some(local), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
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

    /// Issue 16, finding 16: neither end of the pty leaks into children.
    #[test]
    fn pty_descriptors_are_close_on_exec() {
        let p = PtyChardev::open().unwrap();
        for fd in [p.master.as_raw_fd(), p._slave.as_raw_fd()] {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(
                flags >= 0 && flags & libc::FD_CLOEXEC != 0,
                "fd {fd}: {flags}"
            );
        }
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
