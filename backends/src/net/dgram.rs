//! Datagram sockets (QEMU's `-netdev dgram`): one frame per datagram, no
//! framing, over UDP or unix datagram sockets, from a local address to a
//! remote one, so this backend and a QEMU instance can share one L2
//! segment.
//!
//! A datagram medium is lossy: a send the socket refuses now (full buffer,
//! nobody at the remote address) is dropped and counted, never
//! [`Sent::Busy`]. Datagrams are received from any sender. Not done:
//! multicast groups.

use std::io::{self, ErrorKind};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use super::{MAX_FRAME, NetBackend, NetError, Sent};

#[derive(Debug)]
enum Sock {
    Udp(UdpSocket, std::net::SocketAddr),
    Unix(UnixDatagram, PathBuf),
}

/// A datagram link: every frame is one datagram to the remote address.
#[derive(Debug)]
pub struct DgramNet {
    sock: Sock,
    what: String,
    scratch: Vec<u8>,
    dropped: u64,
}

fn io_err(what: &str, err: io::Error) -> NetError {
    NetError::Io {
        what: what.to_string(),
        err,
    }
}

impl DgramNet {
    /// UDP from `local` (`host:port`; `None`: any address, a free port) to
    /// `remote` (`host:port`), like QEMU's `-netdev dgram` with
    /// `remote.type=inet` (and `local.type=inet`).
    pub fn udp(local: Option<&str>, remote: &str) -> Result<Self, NetError> {
        let what = std::format!("netdev dgram udp {} -> {remote}", local.unwrap_or("any"));
        let remote: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(remote)
            .map_err(|e| io_err(&what, e))?
            .next()
            .ok_or_else(|| {
                io_err(
                    &what,
                    io::Error::new(ErrorKind::InvalidInput, "no remote address"),
                )
            })?;
        let any = if remote.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = UdpSocket::bind(local.unwrap_or(any)).map_err(|e| io_err(&what, e))?;
        sock.set_nonblocking(true).map_err(|e| io_err(&what, e))?;
        Ok(DgramNet {
            sock: Sock::Udp(sock, remote),
            what,
            scratch: Vec::with_capacity(MAX_FRAME),
            dropped: 0,
        })
    }

    /// Unix datagram socket bound at `local` (an existing file there is
    /// replaced) sending to `remote` (`local.type=unix`, `remote.type=unix`).
    pub fn unix(local: &Path, remote: &Path) -> Result<Self, NetError> {
        let what = std::format!(
            "netdev dgram unix {} -> {}",
            local.display(),
            remote.display()
        );
        let _ = std::fs::remove_file(local);
        let sock = UnixDatagram::bind(local).map_err(|e| io_err(&what, e))?;
        sock.set_nonblocking(true).map_err(|e| io_err(&what, e))?;
        Ok(DgramNet {
            sock: Sock::Unix(sock, remote.to_path_buf()),
            what,
            scratch: Vec::with_capacity(MAX_FRAME),
            dropped: 0,
        })
    }

    /// For UDP, the local address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.sock {
            Sock::Udp(s, _) => s.local_addr().ok(),
            Sock::Unix(..) => None,
        }
    }

    /// Frames dropped because the socket refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn fd(&self) -> RawFd {
        match &self.sock {
            Sock::Udp(s, _) => s.as_raw_fd(),
            Sock::Unix(s, _) => s.as_raw_fd(),
        }
    }
}

impl NetBackend for DgramNet {
    /// Sends the frame as one datagram; refused datagrams are dropped and
    /// counted.
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME {
            return Err(NetError::TooBig {
                len,
                max: MAX_FRAME,
            });
        }
        let frame: &[u8] = if let [one] = parts {
            one
        } else {
            self.scratch.clear();
            for p in parts {
                self.scratch.extend_from_slice(p);
            }
            &self.scratch
        };
        let r = loop {
            let r = match &self.sock {
                Sock::Udp(s, to) => s.send_to(frame, to),
                Sock::Unix(s, to) => s.send_to(frame, to),
            };
            match r {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(_) => Ok(Sent::Done),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock
                        | ErrorKind::ConnectionRefused
                        | ErrorKind::NotFound
                        | ErrorKind::HostUnreachable
                        | ErrorKind::NetworkUnreachable
                ) || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                self.dropped += 1;
                Ok(Sent::Done)
            }
            Err(e) => Err(io_err(&self.what, e)),
        }
    }

    /// Receives one datagram; one larger than `buf` is consumed and
    /// reported as [`NetError::TooBig`] with its real length.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        loop {
            // SAFETY: the fd is open; `buf` is a valid writable slice of
            // `buf.len()` bytes; MSG_TRUNC only changes the returned length.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > buf.len() {
                    return Err(NetError::TooBig {
                        len: n,
                        max: buf.len(),
                    });
                }
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => return Ok(None),
                // An earlier datagram was refused (ICMP): not this one's fault.
                ErrorKind::ConnectionRefused => continue,
                _ => return Err(io_err(&self.what, e)),
            }
        }
    }

    /// The socket: readable when a datagram is waiting.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd())
    }
}
