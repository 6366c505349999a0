//! The host side of `-netdev user`: non-blocking sockets and commands the
//! guest's connections are spliced to, and the epoll set and timer that
//! make up the backend's readiness fd.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A host connection a guest TCP connection is spliced to.
#[derive(Debug)]
pub(super) enum HostStream {
    /// A TCP connection (NAT, `hostfwd`, `guestfwd=…-tcp:`).
    Tcp(TcpStream),
    /// A unix stream (`guestfwd=…-unix:`, `guestfwd=…-cmd:`).
    Unix(UnixStream),
}

impl HostStream {
    pub(super) fn fd(&self) -> RawFd {
        match self {
            HostStream::Tcp(s) => s.as_raw_fd(),
            HostStream::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Half-closes the host's side after the guest's FIN.
    pub(super) fn shutdown_write(&self) {
        // An error (the peer already gone) shows on the next read.
        let _ = match self {
            HostStream::Tcp(s) => s.shutdown(Shutdown::Write),
            HostStream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Makes closing it a reset (`SO_LINGER` 0) for a TCP peer, so a
    /// connection the guest reset is not taken for a complete one.
    pub(super) fn reset_on_close(&self) {
        if let HostStream::Tcp(s) = self {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: `l` is a valid linger of the size passed; the fd is
            // open. A failure leaves an ordinary close.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const l).cast(),
                    core::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    }

    /// The pending error of a non-blocking connect, once it finished.
    pub(super) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            HostStream::Tcp(s) => s.take_error(),
            HostStream::Unix(s) => s.take_error(),
        }
    }
}

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.read(buf),
            HostStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            HostStream::Tcp(s) => s.write(buf),
            HostStream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts a TCP connection to `addr` without waiting for it: the socket
/// becomes writable when it is made or failed ([`HostStream::take_error`]).
pub(super) fn connect_tcp(addr: SocketAddr) -> io::Result<HostStream> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv6 target"));
    };
    let stream = TcpStream::from(crate::socket::socket_nonblocking(
        libc::AF_INET,
        libc::SOCK_STREAM,
        0,
    )?);
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in of the length passed.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const sin).cast(),
            core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(HostStream::Tcp(stream))
}

/// Connects to a unix stream socket (local: immediate).
pub(super) fn connect_unix(path: &std::path::Path) -> io::Result<HostStream> {
    let s = UnixStream::connect(path)?;
    s.set_nonblocking(true)?;
    Ok(HostStream::Unix(s))
}

/// Runs `sh -c cmd` with its stdin and stdout one end of a socket pair,
/// the other end returned.
pub(super) fn spawn_cmd(cmd: &str) -> io::Result<(HostStream, Child)> {
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let out = OwnedFd::from(theirs.try_clone()?);
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()?;
    Ok((HostStream::Unix(ours), child))
}

/// Whether a connecting socket finished (made or failed).
pub(super) fn writable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// The epoll set behind the backend's readiness fd (level-triggered).
#[derive(Debug)]
pub(super) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(super) fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 reads no memory; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes `fd`'s interest `want` (`EPOLLIN`/`EPOLLOUT` bits; 0 takes
    /// it out, so a hung-up socket nobody reads cannot keep the set
    /// readable); `have` is what it is now and is updated.
    pub(super) fn set(&self, fd: RawFd, have: &mut u32, want: u32) {
        if *have == want {
            return;
        }
        let op = match (*have, want) {
            (0, _) => libc::EPOLL_CTL_ADD,
            (_, 0) => libc::EPOLL_CTL_DEL,
            _ => libc::EPOLL_CTL_MOD,
        };
        let mut ev = libc::epoll_event {
            events: want,
            u64: fd as u64,
        };
        // SAFETY: `ev` is a valid epoll_event; the fds are open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &raw mut ev) };
        if rc == 0 {
            *have = want;
        }
    }

    /// Lets the kernel drop events that are no longer true, so the set is
    /// readable only while something really waits.
    pub(super) fn refresh(&self) {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // Bounded: a set with more ready fds than this is refreshed again
        // on the next call.
        for _ in 0..16 {
            // SAFETY: `evs` has room for the 64 events asked for; no wait.
            let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), evs.as_mut_ptr(), 64, 0) };
            if n < 64 {
                break;
            }
        }
    }
}

/// A one-shot timer for the TCP stack's next deadline.
#[derive(Debug)]
pub(super) struct Timer {
    fd: OwnedFd,
}

impl Timer {
    pub(super) fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create reads no memory; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd })
    }

    pub(super) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires once after `after` (`None`: never).
    pub(super) fn arm(&self, after: Option<Duration>) {
        let after = after.map(|d| d.max(Duration::from_millis(1)));
        let it = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: match after {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                Some(d) => libc::timespec {
                    tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
                    tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
                },
            },
        };
        // SAFETY: `it` is a valid itimerspec; the old value is not asked for.
        unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), 0, &raw const it, core::ptr::null_mut())
        };
    }

    /// Clears a fired expiry.
    pub(super) fn drain(&self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `n`; non-blocking.
        unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
    }
}
