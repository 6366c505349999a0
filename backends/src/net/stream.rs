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

use std::io;
use std::os::fd::RawFd;
use std::string::{String, ToString};
use std::time::Duration;
use std::vec::Vec;

pub use crate::socket::SocketAddr;
use crate::socket::{MAX_IOV, SocketLink};

use super::{MAX_FRAME, NetBackend, NetError, Sent};

/// Bytes of the length prefix before every frame.
pub const LEN_PREFIX: usize = 4;

/// Receive buffer: a whole maximal frame fits after compaction, with room
/// to read ahead.
const RX_CAP: usize = 2 * (LEN_PREFIX + MAX_FRAME);

fn io_err(what: &str, err: io::Error) -> NetError {
    NetError::Io {
        what: what.to_string(),
        err,
    }
}

/// A stream socket link with QEMU's length-prefixed framing.
#[derive(Debug)]
pub struct StreamNet {
    link: SocketLink,
    what: String,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    /// The unsent rest of one frame (prefix included).
    tx: Vec<u8>,
    tx_off: usize,
    dropped: u64,
}

impl StreamNet {
    fn with(link: SocketLink) -> Self {
        StreamNet {
            what: std::format!("netdev stream {}", link.addr()),
            link,
            rx: std::vec![0; RX_CAP],
            rx_start: 0,
            rx_end: 0,
            tx: Vec::with_capacity(LEN_PREFIX + MAX_FRAME),
            tx_off: 0,
            dropped: 0,
        }
    }

    /// Listens on `addr` (QEMU `server=on`; a unix path is created, a
    /// stale socket file replaced); peers are accepted one at a time.
    pub fn server(addr: SocketAddr) -> Result<Self, NetError> {
        let what = std::format!("netdev stream {addr}");
        let link = SocketLink::server(addr).map_err(|e| io_err(&what, e))?;
        Ok(StreamNet::with(link))
    }

    /// Connects to `addr` (QEMU `server=off`). With `reconnect`, a failed
    /// or lost connection is dialled again after that delay instead of
    /// being an error (the link is down meanwhile).
    pub fn client(addr: SocketAddr, reconnect: Option<Duration>) -> Result<Self, NetError> {
        let what = std::format!("netdev stream {addr}");
        let link = SocketLink::client(addr, reconnect).map_err(|e| io_err(&what, e))?;
        Ok(StreamNet::with(link))
    }

    /// The address.
    pub fn addr(&self) -> &SocketAddr {
        self.link.addr()
    }

    /// For a TCP server, the port actually bound (useful with port 0).
    pub fn local_port(&self) -> Option<u16> {
        self.link.local_port()
    }

    /// Accepts a waiting peer or redials when due, then says whether a
    /// peer is connected.
    pub fn is_connected(&mut self) -> bool {
        self.link.poll_connect();
        self.link.stream_fd().is_some()
    }

    /// Frames dropped because no peer was connected (or it went away
    /// while they were being sent).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forgets the buffered bytes of a peer that is gone; a frame sent in
    /// part is counted as dropped.
    fn forget_peer(&mut self) {
        self.rx_start = 0;
        self.rx_end = 0;
        if self.tx_off < self.tx.len() {
            self.dropped += 1;
        }
        self.tx.clear();
        self.tx_off = 0;
    }

    /// Accepts or redials; a peer that was lost meanwhile takes its
    /// buffered bytes with it.
    fn poll_connect(&mut self) {
        if self.link.stream_fd().is_none() {
            self.forget_peer();
        }
        self.link.poll_connect();
    }

    /// Writes what the socket takes of the pending rest; `Ok(true)` when
    /// nothing is pending any more.
    fn flush(&mut self) -> Result<bool, NetError> {
        while self.tx_off < self.tx.len() {
            match self.link.send(&[&self.tx[self.tx_off..]]) {
                Ok(Some(0)) => return Ok(false),
                Ok(Some(n)) => self.tx_off += n,
                Ok(None) => {
                    self.forget_peer();
                    return Ok(true);
                }
                Err(e) => return Err(io_err(&self.what, e)),
            }
        }
        self.tx.clear();
        self.tx_off = 0;
        // Drained: stop asking for writability.
        self.link.want_output(false);
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
        self.link.want_output(true);
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
        let prefix = (len as u32).to_be_bytes();
        let mut all: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
        all[0] = &prefix;
        let n = parts.len().min(all.len() - 1);
        all[1..=n].copy_from_slice(&parts[..n]);
        match self.link.send(&all[..=n]) {
            Ok(Some(sent)) => {
                // What the socket did not take (including parts beyond
                // one gather list) waits for writability.
                if sent < LEN_PREFIX + len {
                    self.keep_rest(&prefix, parts, sent);
                }
                Ok(Sent::Done)
            }
            // No peer, or it just left: the frame is lost with the link.
            Ok(None) => {
                self.forget_peer();
                self.dropped += 1;
                Ok(Sent::Done)
            }
            Err(e) => Err(io_err(&self.what, e)),
        }
    }

    /// Receives the next whole frame. Frames already buffered are not
    /// signalled again by the readiness fd: call until `Ok(None)`.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        self.poll_connect();
        // Also a good moment to push out a pending rest (and stop the
        // readiness fd from reporting writability).
        self.flush()?;
        loop {
            if self.link.stream_fd().is_none() {
                self.forget_peer();
                return Ok(None);
            }
            let have = self.rx_end - self.rx_start;
            if have >= LEN_PREFIX {
                let mut p = [0u8; LEN_PREFIX];
                p.copy_from_slice(&self.rx[self.rx_start..self.rx_start + LEN_PREFIX]);
                let len = u32::from_be_bytes(p) as usize;
                if len > MAX_FRAME {
                    self.link.lost();
                    self.forget_peer();
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
            match self.link.recv(room) {
                Ok(Some(n)) => self.rx_end += n,
                Ok(None) => {
                    if self.link.stream_fd().is_none() {
                        self.forget_peer();
                    }
                    return Ok(None);
                }
                Err(e) => return Err(io_err(&self.what, e)),
            }
        }
    }

    /// Up while a peer is connected.
    fn link_up(&self) -> bool {
        self.link.stream_fd().is_some()
    }

    /// Accepts a waiting peer or redials when due.
    fn poll_link(&mut self) {
        self.poll_connect();
    }

    /// One fd for the backend's whole life (its own epoll set): readable
    /// when a peer connects, sends or hangs up, when a pending rest can be
    /// written, or when a redial is due.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.link.readiness_fd())
    }
}
