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
            .map_err(|e| io_err(&std::format!("{what}: opening /dev/net/tun read-write"), e))?;
        let fd: OwnedFd = file.into();
        let mut req = IfReq::zeroed();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: the fd is an open tun fd; `req` is a valid ifreq-sized
        // buffer the kernel reads and writes (the chosen name).
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            let err = io::Error::last_os_error();
            let hint = match err.raw_os_error() {
                Some(libc::EPERM) => std::format!(
                    "; creating a tap needs CAP_NET_ADMIN, or create it for this user first: ip tuntap add dev {name} mode tap user $USER vnet_hdr"
                ),
                Some(libc::EBUSY) => {
                    std::format!("; {name} is already attached to another process")
                }
                Some(libc::EINVAL) => {
                    std::format!("; {name} exists with other flags (a tun, or a multi_queue tap)")
                }
                _ => String::new(),
            };
            return Err(io_err(
                &std::format!(
                    "{what}: TUNSETIFF (create or attach, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)"
                ),
                io::Error::new(err.kind(), std::format!("{err}{hint}")),
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

    /// A tap on Linux bridge `bridge`, made by a bridge helper (QEMU's
    /// `-netdev bridge,br=…,helper=…`; Debian's is
    /// `/usr/lib/qemu/qemu-bridge-helper`): the helper is run with
    /// `--use-vnet --br=BRIDGE --fd=N`, `N` one end of a socket pair; it
    /// creates the tap, adds it to the bridge (if its ACL,
    /// `/etc/qemu/bridge.conf`, allows that bridge) and sends the tap's
    /// fd back. A helper that fails is an error quoting what it said.
    pub fn from_bridge_helper(helper: &std::path::Path, bridge: &str) -> Result<Self, NetError> {
        use std::os::unix::net::UnixStream;
        use std::os::unix::process::CommandExt;
        let what = std::format!("netdev bridge {bridge} via {}", helper.display());
        let (ours, theirs) = UnixStream::pair().map_err(|e| io_err(&what, e))?;
        /// The descriptor number the helper finds its end at.
        const CHILD_FD: RawFd = 3;
        let their_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(helper);
        cmd.arg("--use-vnet")
            .arg(std::format!("--br={bridge}"))
            .arg(std::format!("--fd={CHILD_FD}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; the child gets its end of the
        // pair at CHILD_FD without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps close-on-exec: clear it then.
                let r = if their_fd == CHILD_FD {
                    libc::fcntl(CHILD_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(their_fd, CHILD_FD)
                };
                if r < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().map_err(|e| io_err(&what, e))?;
        drop(theirs);
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(io_err(
                &what,
                io::Error::other(std::format!("the helper failed ({}): {said}", out.status)),
            ));
        }
        let fd = recv_fd(&ours).map_err(|e| io_err(&what, e))?;
        Self::from_fd(fd)
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

/// Receives one descriptor sent with `SCM_RIGHTS` on `sock` (the helper's
/// one-byte message).
fn recv_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let cmsg_space = unsafe { libc::CMSG_SPACE(core::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: a zeroed msghdr is valid; its pointers are set to `iov` and
    // `space`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space.min(core::mem::size_of_val(&space)) as _;
    // SAFETY: a valid socket and msghdr; MSG_CMSG_CLOEXEC marks the fd.
    // The helper has exited: what it sent is there now, or never.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "the helper sent more descriptors than one",
        ));
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR checks the length.
    let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: CMSG_LEN only computes a size.
    let one_fd = unsafe { libc::CMSG_LEN(core::mem::size_of::<RawFd>() as u32) } as usize;
    let rights = !c.is_null()
        // SAFETY: `c` is not null, so it points to a header inside `space`.
        && unsafe {
            (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_RIGHTS
                && (*c).cmsg_len as usize >= one_fd
        };
    if !rights {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "the helper sent no descriptor",
        ));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one fd after its
    // header, inside `space`.
    let fd = unsafe { core::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>()) };
    // SAFETY: the kernel installed `fd` in this process for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper that is not there, or that refuses the bridge (its ACL
    /// does not allow it), is an error quoting the helper.
    #[test]
    fn a_failing_bridge_helper_is_an_error_quoting_it() {
        let e = Tap::from_bridge_helper(std::path::Path::new("/nonexistent/helper"), "br0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/helper"), "{e}");
        let helper = std::path::Path::new("/usr/lib/qemu/qemu-bridge-helper");
        if !helper.exists() {
            std::println!(
                "SKIP: the refusal half: {} is not installed",
                helper.display()
            );
            return;
        }
        let e = Tap::from_bridge_helper(helper, "vhnotallowed9")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the helper failed") && e.contains("vhnotallowed9"),
            "{e}"
        );
    }
}
