//! Tap devices (QEMU's `-netdev tap,ifname=…|fd=…,vnet_hdr=on`): Linux
//! `/dev/net/tun` in `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` mode, so every
//! frame crosses with a 12-byte virtio-net header (`virtio_net_hdr_v1`,
//! §5.1.6) and checksum and segmentation offloads pass straight through to
//! the host kernel.
//!
//! The device is created (or attached to) by name, or an already
//! configured fd is passed in. Reads and writes are non-blocking; the tap
//! fd is the readiness fd. Configuring addresses and links is left to the
//! caller (`ip`), as QEMU leaves it to its scripts. Not done: multiqueue,
//! the `script=`/`downscript=` helpers, `vhost=on`.

use std::fs::OpenOptions;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::string::{String, ToString};
use std::vec::Vec;

use super::{MAX_FRAME, NetBackend, NetError, Offloads, Sent};

/// Bytes of virtio-net header a tap carries before each frame
/// (`virtio_net_hdr_v1`: the legacy 10 bytes plus `num_buffers`, §5.1.6).
pub const TAP_VNET_HDR_LEN: usize = 12;

/// Most parts a send gathers with one `writev` (beyond, it copies).
const MAX_IOV: usize = 32;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// A tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr_len: usize,
    /// Receive bounce buffer for callers whose buffer may be too small for
    /// what the kernel hands over (allocated on first need).
    bounce: Vec<u8>,
    dropped: u64,
}

fn io_err(what: &str, err: io::Error) -> NetError {
    NetError::Io {
        what: what.to_string(),
        err,
    }
}

fn invalid(what: &str, msg: &'static str) -> NetError {
    io_err(what, io::Error::new(ErrorKind::InvalidInput, msg))
}

impl Tap {
    /// Creates the tap `name` (or attaches to an existing persistent one;
    /// an empty name lets the kernel pick `tapN`) with `IFF_TAP |
    /// IFF_NO_PI | IFF_VNET_HDR`, a 12-byte header and no offloads yet.
    /// Needs `CAP_NET_ADMIN` to create.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let what = std::format!("tap {name}");
        if name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
            return Err(invalid(&what, "interface name too long or with a NUL"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io_err("/dev/net/tun", e))?;
        let fd: OwnedFd = file.into();
        let mut req = IfReq::zeroed();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: the fd is an open tun fd; `req` is a valid ifreq-sized
        // buffer the kernel reads and writes (the chosen name).
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io_err(
                &std::format!("{what}: TUNSETIFF"),
                io::Error::last_os_error(),
            ));
        }
        let mut tap = Tap {
            fd,
            name: req.name(),
            vnet_hdr_len: TAP_VNET_HDR_LEN,
            bounce: Vec::new(),
            dropped: 0,
        };
        tap.set_vnet_hdr_sz()?;
        tap.set_offloads(Offloads::default())?;
        Ok(tap)
    }

    /// Takes over an already configured tap fd (QEMU's `fd=`): asks the
    /// kernel for its name and flags; with `IFF_VNET_HDR` the header is 12
    /// bytes, without it frames are plain. The fd is made non-blocking.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, NetError> {
        let what = "tap fd";
        let mut req = IfReq::zeroed();
        // SAFETY: `req` is a valid ifreq-sized buffer the kernel writes; a
        // non-tun fd fails with an error and writes nothing.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
            return Err(io_err(
                &std::format!("{what}: TUNGETIFF"),
                io::Error::last_os_error(),
            ));
        }
        let flags = libc::c_int::from(req.flags);
        if flags & libc::IFF_TAP == 0 {
            return Err(invalid(what, "not a tap (IFF_TAP) device"));
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(invalid(
                what,
                "tap without IFF_NO_PI (packet info) is not supported",
            ));
        }
        // SAFETY: F_GETFL/F_SETFL on an open fd take and return flag words.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io_err(what, io::Error::last_os_error()));
            }
        }
        let vnet = flags & libc::IFF_VNET_HDR != 0;
        let mut tap = Tap {
            fd,
            name: req.name(),
            vnet_hdr_len: if vnet { TAP_VNET_HDR_LEN } else { 0 },
            bounce: Vec::new(),
            dropped: 0,
        };
        if vnet {
            tap.set_vnet_hdr_sz()?;
        }
        Ok(tap)
    }

    fn set_vnet_hdr_sz(&mut self) -> Result<(), NetError> {
        let sz = TAP_VNET_HDR_LEN as libc::c_int;
        // SAFETY: the fd is an open tap fd; TUNSETVNETHDRSZ reads one int
        // through the pointer.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &sz) } < 0 {
            return Err(io_err(
                &std::format!("tap {}: TUNSETVNETHDRSZ", self.name),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The interface name (as the kernel chose it for an empty name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames dropped because the kernel refused them (interface down).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for Tap {
    /// 12 with `IFF_VNET_HDR` (always for [`Tap::open`]), else 0.
    fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }

    /// `TUNSETOFFLOAD`: what the kernel may hand us unfinished, i.e. the
    /// offloads the guest accepts on receive (its negotiated
    /// `VIRTIO_NET_F_GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6`, `GUEST_UFO`,
    /// §5.1.3). Segmentation needs checksum offload: without `csum`
    /// nothing is offloaded. A kernel that refuses UFO gets the rest.
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetError> {
        let mut flags: libc::c_uint = 0;
        if offloads.csum && self.vnet_hdr_len != 0 {
            flags |= libc::TUN_F_CSUM;
            if offloads.tso4 {
                flags |= libc::TUN_F_TSO4;
            }
            if offloads.tso6 {
                flags |= libc::TUN_F_TSO6;
            }
            if offloads.ufo {
                flags |= libc::TUN_F_UFO;
            }
        }
        let set = |flags: libc::c_uint| {
            // SAFETY: the fd is an open tap fd; TUNSETOFFLOAD takes its
            // argument by value.
            unsafe {
                libc::ioctl(
                    self.fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    flags as libc::c_ulong,
                )
            }
        };
        if set(flags) < 0 {
            let e = io::Error::last_os_error();
            if flags & libc::TUN_F_UFO == 0 || set(flags & !libc::TUN_F_UFO) < 0 {
                return Err(io_err(&std::format!("tap {}: TUNSETOFFLOAD", self.name), e));
            }
        }
        Ok(())
    }

    /// Writes the frame (header first) with one `writev`. The kernel never
    /// holds a tap write back; one it refuses (interface down) is dropped
    /// and counted.
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MAX_FRAME + self.vnet_hdr_len {
            return Err(NetError::TooBig {
                len,
                max: MAX_FRAME + self.vnet_hdr_len,
            });
        }
        let joined;
        let parts: &[&[u8]] = if parts.len() > MAX_IOV {
            joined = parts.concat();
            &[&joined]
        } else {
            parts
        };
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOV];
        for (v, p) in iov.iter_mut().zip(parts) {
            *v = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        loop {
            // SAFETY: the fd is open; `iov` holds `parts.len()` iovecs over
            // live slices the kernel only reads.
            let n = unsafe {
                libc::writev(
                    self.fd.as_raw_fd(),
                    iov.as_ptr(),
                    parts.len() as libc::c_int,
                )
            };
            if n >= 0 {
                return Ok(Sent::Done);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                _ if matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EAGAIN | libc::ENOBUFS)
                ) =>
                {
                    self.dropped += 1;
                    return Ok(Sent::Done);
                }
                _ => return Err(io_err(&std::format!("tap {}: write", self.name), e)),
            }
        }
    }

    /// Reads one frame (header first). A frame larger than `buf` is
    /// consumed and reported as [`NetError::TooBig`].
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let full = MAX_FRAME + self.vnet_hdr_len;
        let direct = buf.len() >= full;
        if !direct && self.bounce.len() < full {
            self.bounce.resize(full, 0);
        }
        loop {
            let dst: &mut [u8] = if direct { buf } else { &mut self.bounce };
            // SAFETY: the fd is open; `dst` is a valid writable slice.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), dst.as_mut_ptr().cast(), dst.len()) };
            if n >= 0 {
                let n = n as usize;
                if direct {
                    return Ok(Some(n));
                }
                if n > buf.len() {
                    return Err(NetError::TooBig {
                        len: n,
                        max: buf.len(),
                    });
                }
                buf[..n].copy_from_slice(&self.bounce[..n]);
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(io_err(&std::format!("tap {}: read", self.name), e)),
            }
        }
    }

    /// The tap fd: readable when a frame is waiting.
    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }
}
