//! Network backends (QEMU's `net/` layer, `-netdev`): one [`NetBackend`]
//! trait, independent of virtio, and its implementations. A backend moves
//! whole Ethernet frames; it never blocks: a send it cannot take now is
//! [`Sent::Busy`] and a receive with nothing pending is `Ok(None)`, and
//! under `std` its readiness fd says when to try again.

use core::fmt;

/// What a backend may hand the device unfinished, from the guest's
/// negotiated receive offloads (`VIRTIO_NET_F_GUEST_CSUM`, `GUEST_TSO4`,
/// `GUEST_TSO6`, `GUEST_UFO`, §5.1.3; QEMU's `tap_set_offload`); only
/// backends that carry the virtio-net header themselves (tap with
/// `IFF_VNET_HDR`) use them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Frames may carry a partial checksum for the guest to complete
    /// (`VIRTIO_NET_F_GUEST_CSUM`).
    pub csum: bool,
    /// TCP segmentation over IPv4 may be left to the receiver.
    pub tso4: bool,
    /// TCP segmentation over IPv6 may be left to the receiver.
    pub tso6: bool,
    /// UDP fragmentation offload.
    pub ufo: bool,
}

/// What became of a frame handed to [`NetBackend::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Taken (delivered, queued or deliberately dropped by the medium,
    /// like a full hub port or a socket with no peer).
    Done,
    /// Not taken now: keep it and send it again when the backend is ready
    /// (backpressure).
    Busy,
}

/// Why a network operation failed.
#[derive(Debug)]
pub enum NetError {
    /// A frame larger than the backend or the buffer can carry.
    TooBig {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A malformed frame from a peer (e.g. a stream length prefix beyond
    /// the limit); the backend resynchronises or drops the peer.
    Malformed(&'static str),
    /// The operating system failed.
    #[cfg(feature = "std")]
    Io {
        /// What was being done, and to what.
        what: std::string::String,
        /// The error.
        err: std::io::Error,
    },
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::TooBig { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            NetError::Malformed(what) => write!(f, "malformed frame: {what}"),
            #[cfg(feature = "std")]
            NetError::Io { what, err } => write!(f, "{what}: {err}"),
        }
    }
}

impl core::error::Error for NetError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            #[cfg(feature = "std")]
            NetError::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// Largest Ethernet frame a backend must carry (64 KiB, what GSO frames
/// and QEMU's stream framing allow), header included.
pub const MAX_FRAME: usize = 65536;

/// One end of an L2 link: whole frames in, whole frames out.
pub trait NetBackend {
    /// Bytes of virtio-net header (§5.1.6) the backend expects before
    /// every frame it sends and puts before every frame it receives: 0 for
    /// plain Ethernet frames, 12 (`virtio_net_hdr_v1`) for a tap with
    /// `IFF_VNET_HDR`, where the header carries checksum and segmentation
    /// offload through to the host kernel.
    fn vnet_hdr_len(&self) -> usize {
        0
    }

    /// Asks the backend to honour `offloads` (a tap sets `TUNSETOFFLOAD`).
    /// Backends without offload support ignore it.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetError> {
        let _ = offloads;
        Ok(())
    }

    /// Sends one frame made of `parts` concatenated (header first when
    /// [`vnet_hdr_len`](Self::vnet_hdr_len) is not 0).
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError>;

    /// Receives one frame into `buf`, returning its length, or `None` if
    /// none is pending. A frame larger than `buf` is consumed and dropped
    /// with [`NetError::TooBig`].
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;

    /// Whether the link is up (a stream socket with no peer is down).
    fn link_up(&self) -> bool {
        true
    }

    /// Lets the backend work on its link whatever its state: accept a
    /// waiting peer, redial a lost one. The device calls it whenever the
    /// backend's readiness fd fires, before looking at
    /// [`link_up`](Self::link_up), so a link that is down can come up
    /// (and a pending connection does not keep the fd readable forever).
    /// The default does nothing.
    fn poll_link(&mut self) {}

    /// The file descriptor to wait on (readable: a frame or a peer came,
    /// or sends may resume), for the harness's event loop; `None` for
    /// backends that never wait.
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[cfg(feature = "std")]
impl<B: NetBackend + ?Sized> NetBackend for std::boxed::Box<B> {
    fn vnet_hdr_len(&self) -> usize {
        (**self).vnet_hdr_len()
    }
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetError> {
        (**self).set_offloads(offloads)
    }
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        (**self).send(parts)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        (**self).recv(buf)
    }
    fn poll_link(&mut self) {
        (**self).poll_link()
    }
    fn link_up(&self) -> bool {
        (**self).link_up()
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
}

#[cfg(feature = "std")]
pub mod dgram;
#[cfg(feature = "std")]
pub mod hub;
#[cfg(feature = "std")]
pub mod l2tpv3;
#[cfg(feature = "alloc")]
pub mod loopback;
#[cfg(feature = "std")]
pub mod stream;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod tap;
#[cfg(all(feature = "std", target_os = "linux"))]
pub mod user;
