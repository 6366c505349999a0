//! Host resources from options: chardevs, entropy sources, disk images
//! and network backends, opened before the guest runs.

use super::*;

/// A chardev as devices hold it.
pub type BoxedChardev = Box<dyn Chardev + Send>;

/// An entropy source as devices hold it.
pub type BoxedRng = Box<dyn RngBackend + Send>;

/// A virtio device as the VM holds it.
pub type BoxedDevice = Box<dyn VirtioDevice + Send>;

/// Size of a `-chardev ringbuf` (fixed at build time; `size=` beyond it is
/// clamped by the option parser's caller).
const RINGBUF_SIZE: usize = 64 * 1024;

/// What a machine's chardevs reach beyond their bytes: the run a
/// `testdev` ends, the monitor input a `msmouse` or `wctablet` takes.
/// Without them (a vhost-user daemon has no VM and no mouse commands)
/// those chardevs are refused.
#[derive(Clone, Debug, Default)]
pub struct ChardevContext {
    /// The run's quit handle.
    pub quit: Option<Arc<crate::vm::QuitRequest>>,
    /// The machine's pointing devices, fed by the monitor.
    pub input: Option<backends::chardev::input::InputRouter>,
}

/// Opens one chardev in `ctx`.
pub fn open_chardev(
    id: &str,
    kind: &ChardevKind,
    ctx: &ChardevContext,
) -> Result<(BoxedChardev, String), MachineError> {
    let quit = ctx.quit.as_ref();
    let err = |err| MachineError::Chardev {
        id: id.to_string(),
        err,
    };
    Ok(match kind {
        ChardevKind::Null => (Box::new(Null), "null".into()),
        ChardevKind::Testdev => {
            let Some(q) = quit else {
                return Err(MachineError::Unsupported(
                    "-chardev testdev: its quit command ends a VM's run, and there is no VM here",
                ));
            };
            let q = Arc::clone(q);
            (
                Box::new(backends::chardev::testdev::Testdev::new(move |s| q.quit(s))),
                "testdev".into(),
            )
        }
        ChardevKind::Msmouse | ChardevKind::Wctablet => {
            let Some(router) = &ctx.input else {
                return Err(MachineError::Unsupported(
                    "-chardev msmouse/wctablet: their input comes from a machine's monitor \
                     (mouse_move, input-send-event), and there is none here",
                ));
            };
            if *kind == ChardevKind::Msmouse {
                let (m, input) = backends::chardev::msmouse::Msmouse::new();
                router.register(input);
                (Box::new(m), "msmouse".into())
            } else {
                let (t, input) = backends::chardev::wctablet::Wctablet::new();
                router.register(input);
                (Box::new(t), "wctablet".into())
            }
        }
        ChardevKind::Ringbuf { .. } => (
            Box::new(RingBuf::<RINGBUF_SIZE>::default()),
            "ringbuf".into(),
        ),
        ChardevKind::File { path, input_path } => (
            Box::new(FileChardev::open(path, input_path.as_deref()).map_err(err)?),
            format!("file:{}", path.display()),
        ),
        ChardevKind::Pipe { path } => (
            Box::new(PipeChardev::open(path).map_err(err)?),
            format!("pipe:{}", path.display()),
        ),
        ChardevKind::Pty => {
            let pty = PtyChardev::open().map_err(err)?;
            let what = format!("pty:{}", pty.slave_path().display());
            (Box::new(pty), what)
        }
        ChardevKind::Stdio => (Box::new(StdioChardev::default()), "stdio".into()),
        ChardevKind::Serial { path } => (
            Box::new(TtyChardev::open(path).map_err(err)?),
            format!("serial:{}", path.display()),
        ),
        ChardevKind::Udp {
            remote,
            local,
            family,
        } => (
            Box::new(UdpChardev::open(remote, local.as_deref(), *family).map_err(err)?),
            format!("udp:{remote}"),
        ),
        ChardevKind::Socket {
            path,
            tcp,
            server,
            reconnect,
        } => {
            let addr = match (path, tcp) {
                (Some(p), _) => SocketAddr::Unix(p.clone()),
                (None, Some(t)) => SocketAddr::Tcp(t.clone()),
                (None, None) => {
                    return Err(err(ChardevError::Io {
                        what: "socket".into(),
                        err: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    }));
                }
            };
            let what = format!("socket:{addr}{}", if *server { ",server" } else { "" });
            let sock = if *server {
                SocketChardev::server(addr).map_err(err)?
            } else {
                let delay = reconnect.map(|s| Duration::from_secs(u64::from(s)));
                SocketChardev::client(addr, delay).map_err(err)?
            };
            (Box::new(sock), what)
        }
    })
}

/// A network backend as devices hold it.
pub type BoxedNet = Box<dyn backends::net::NetBackend + Send>;

/// Hubs by `hubid` (QEMU creates a hub on first use): one machine's, or
/// shared by several machines in one process ([`Machine::with_hubs`]) so
/// that their hub ports are one L2 segment.
#[derive(Debug, Default)]
pub struct Hubs(HashMap<u32, backends::net::hub::Hub>);

impl Hubs {
    /// Hub `id`, created if new.
    pub fn get(&mut self, id: u32) -> backends::net::hub::Hub {
        self.0.entry(id).or_default().clone()
    }
}

/// Opens one network backend (`-netdev`); hub ports join `hubs`.
pub fn open_netdev(
    id: &str,
    kind: &NetdevKind,
    hubs: &mut Hubs,
) -> Result<(BoxedNet, String), MachineError> {
    use backends::net::dgram::DgramNet;
    use backends::net::loopback::Loopback;
    use backends::net::stream::StreamNet;
    use backends::net::tap::Tap;
    let err = |err| MachineError::Netdev {
        id: id.to_string(),
        err,
    };
    Ok(match kind {
        NetdevKind::Loopback => (Box::new(Loopback::default()), "loopback".into()),
        NetdevKind::Hubport { hubid } => (
            Box::new(hubs.get(*hubid).port(id).map_err(err)?),
            format!("hubport, hub {hubid}"),
        ),
        NetdevKind::Stream { server, path, inet } => {
            let addr = match (path, inet) {
                (Some(p), _) => SocketAddr::Unix(p.clone()),
                (None, Some(a)) => SocketAddr::Tcp(a.clone()),
                (None, None) => {
                    return Err(MachineError::Unsupported(
                        "-netdev stream without an address",
                    ));
                }
            };
            let what = format!("stream {addr}{}", if *server { ",server" } else { "" });
            let net = if *server {
                StreamNet::server(addr).map_err(err)?
            } else {
                StreamNet::client(addr, Some(Duration::from_secs(1))).map_err(err)?
            };
            (Box::new(net), what)
        }
        NetdevKind::Dgram { local, remote } => (
            Box::new(DgramNet::udp(Some(local), remote).map_err(err)?),
            format!("dgram {local} -> {remote}"),
        ),
        NetdevKind::Bridge { br, helper } => {
            let tap = Tap::from_bridge_helper(helper, br).map_err(err)?;
            let what = format!("bridge {br} (tap {})", tap.name());
            (Box::new(tap), what)
        }
        NetdevKind::L2tpv3(c) => (
            Box::new(backends::net::l2tpv3::L2tpv3Net::open(c).map_err(err)?),
            format!(
                "l2tpv3 {} -> {}{}",
                c.src,
                c.dst,
                if c.udp.is_some() { " (udp)" } else { " (ip)" }
            ),
        ),
        NetdevKind::User(c) => {
            let net = backends::net::user::UserNet::new(c.clone()).map_err(err)?;
            let fwd: Vec<String> = net.hostfwd_addrs().iter().map(|a| a.to_string()).collect();
            let what = format!(
                "user {}/{}{}{}",
                c.net,
                c.prefix,
                if c.restrict { ", restrict" } else { "" },
                if fwd.is_empty() {
                    String::new()
                } else {
                    format!(", hostfwd {}", fwd.join(" "))
                }
            );
            (Box::new(net), what)
        }
        NetdevKind::VhostUser { .. } => {
            return Err(MachineError::Unsupported(
                "-netdev vhost-user: its packets live in the backend; only a virtio-net-device can use it",
            ));
        }
        NetdevKind::Tap { ifname, fd } => match (ifname, fd) {
            (Some(name), _) => {
                let tap = Tap::open(name).map_err(err)?;
                let what = format!("tap {}", tap.name());
                (Box::new(tap), what)
            }
            (None, Some(fd)) => {
                // The backend owns a duplicate, never `fd` itself: N may be
                // something else this process holds (the KVM fd, guest
                // RAM), which an error path must not close.
                // SAFETY: F_DUPFD_CLOEXEC reads no memory; on a number that
                // is not open it fails with EBADF.
                let dup = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 0) };
                if dup < 0 {
                    return Err(err(backends::net::NetError::Io {
                        what: format!("duplicating tap fd={fd}"),
                        err: std::io::Error::last_os_error(),
                    }));
                }
                // SAFETY: `dup` was just created by fcntl and nothing else
                // owns it.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(dup) };
                (
                    Box::new(Tap::from_fd(owned).map_err(err)?),
                    format!("tap fd {fd}"),
                )
            }
            (None, None) => {
                return Err(MachineError::Unsupported(
                    "-netdev tap without ifname= or fd=",
                ));
            }
        },
    })
}

/// A disk as devices hold it.
pub type BoxedDisk = Box<dyn backends::block::BlockBackend + Send>;

/// Opens one disk image (`-drive` / `-blockdev`).
pub fn open_drive(drive: &DriveConfig) -> Result<(BoxedDisk, String), MachineError> {
    use backends::block::qcow2::Qcow2;
    use backends::block::raw::{Aio, Cache, RawFile, RawOptions};
    let err = |err| MachineError::Drive {
        id: drive.id.clone(),
        err,
    };
    let ro = if drive.read_only { ", readonly" } else { "" };
    let (cache, cache_name) = match drive.cache {
        CacheMode::Writeback => (Cache::Writeback, "writeback"),
        CacheMode::None => (Cache::None, "none"),
        CacheMode::Writethrough => (Cache::Writethrough, "writethrough"),
    };
    let file = drive.path.display();
    Ok(match drive.format {
        DiskFormat::Raw => {
            let raw = RawFile::open(
                &drive.path,
                RawOptions {
                    read_only: drive.read_only,
                    cache,
                    aio: match drive.aio {
                        AioMode::Default => Aio::Auto,
                        AioMode::Threads => Aio::Blocking,
                        AioMode::IoUring => Aio::IoUring,
                    },
                },
            )
            .map_err(err)?;
            let aio = match (raw.aio(), raw.aio_fallback()) {
                (Aio::IoUring, _) => ", aio=io_uring".to_string(),
                (_, Some(why)) => format!(", aio=threads ({why})"),
                _ => ", aio=threads".to_string(),
            };
            (
                Box::new(raw),
                format!("raw {file}, cache={cache_name}{aio}{ro}"),
            )
        }
        DiskFormat::Qcow2 => {
            if drive.aio == AioMode::IoUring {
                return Err(err(backends::block::BlockError::Unsupported(
                    "aio=io_uring with format=qcow2 (its image layer is synchronous)",
                )));
            }
            if drive.cache == CacheMode::None {
                return Err(err(backends::block::BlockError::Unsupported(
                    "cache=none with format=qcow2 (use writeback or writethrough)",
                )));
            }
            let mut q = Qcow2::open(&drive.path, drive.read_only).map_err(err)?;
            if drive.cache == CacheMode::Writethrough {
                q.set_write_cache(false);
            }
            (Box::new(q), format!("qcow2 {file}, cache={cache_name}{ro}"))
        }
    })
}

/// Opens one entropy source; an EGD source takes its chardev from
/// `chardevs`.
pub fn open_rng(
    id: &str,
    config: &RngConfig,
    chardevs: &mut HashMap<String, (BoxedChardev, String)>,
) -> Result<(BoxedRng, String), MachineError> {
    let err = |err| MachineError::Rng {
        id: id.to_string(),
        err,
    };
    Ok(match config {
        RngConfig::Builtin => (Box::new(Builtin), "rng-builtin".into()),
        RngConfig::Random { filename } => (
            Box::new(RandomFile::open(filename.clone()).map_err(err)?),
            format!("rng-random:{}", filename.display()),
        ),
        RngConfig::Deterministic { seed } => (
            Box::new(Deterministic::new(*seed)),
            format!("rng-deterministic:{seed}"),
        ),
        RngConfig::Egd { chardev } => {
            let (c, what) = chardevs
                .remove(chardev)
                .ok_or_else(|| MachineError::Missing {
                    by: format!("-object rng-egd,id={id}"),
                    id: chardev.clone(),
                })?;
            (Box::new(Egd::new(c)), format!("rng-egd<-{what}"))
        }
    })
}
