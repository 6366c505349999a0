//! Machines from options: QEMU's realize step. A parsed
//! [`MachineConfig`](crate::options::MachineConfig) becomes real host
//! resources (chardevs, entropy sources) and virtio devices in front of
//! them, ready to be placed at the VM's virtio-mmio slots.
//!
//! Realizing opens everything the options name before the guest runs, so a
//! file that cannot be created or a socket that cannot be bound is an error
//! naming the option, never a failure halfway through a run. Every chardev
//! has at most one user (the option parser checks it); a chardev no device
//! uses is still opened, as QEMU does, and closed with the machine.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use backends::block::BlockBackend;
use backends::chardev::os::{
    FileChardev, PipeChardev, PtyChardev, SocketAddr, SocketChardev, StdioChardev,
};
use backends::chardev::{Chardev, ChardevError, Null, RingBuf};
use backends::rng::{Builtin, Deterministic, Egd, RandomFile, RngBackend, RngError};
use virtio_core::memory::RegionMemory;
use virtio_core::split::layout::QueueSize;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::{Console, Port};
use virtio_devices::device::VirtioDevice;
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;

use crate::misbehave::Misbehave;
#[cfg(feature = "misbehave")]
use crate::misbehave::Misbehaving;
use crate::options::{
    CacheMode, ChardevKind, DeviceConfig, DiskFormat, DriveConfig, MachineConfig, NetdevKind,
    RngConfig, VhostUserType,
};
use crate::protocol::{MonitorServer, NetLink};
use crate::virtio::NotifyMode;
use crate::vm::{Outcome, Vm, VmError};
use vhost_user::{FrontendError, SharedRam, VhostUserDevice, VhostUserKind};

/// A chardev as devices hold it.
pub type BoxedChardev = Box<dyn Chardev + Send>;

/// An entropy source as devices hold it.
pub type BoxedRng = Box<dyn RngBackend + Send>;

/// A virtio device as the VM holds it.
pub type BoxedDevice = Box<dyn VirtioDevice + Send>;

/// Why a machine could not be realized.
#[derive(Debug)]
pub enum MachineError {
    /// A chardev could not be opened.
    Chardev {
        /// Its id.
        id: String,
        /// What went wrong.
        err: ChardevError,
    },
    /// An entropy source could not be opened.
    Rng {
        /// Its id.
        id: String,
        /// What went wrong.
        err: RngError,
    },
    /// An id the options refer to was not realized (the parser checks
    /// references, so this means a config built by hand).
    Missing {
        /// Who refers.
        by: String,
        /// The id.
        id: String,
    },
    /// A port that has no virtio-serial-device before it.
    OrphanPort(String),
    /// A queue size that is not a power of two up to 32768 (§2.7; the
    /// parser checks it, so this means a config built by hand).
    QueueSize {
        /// The device.
        by: &'static str,
        /// The size asked.
        size: u16,
    },
    /// The block device refused its configuration.
    Blk {
        /// The drive id.
        drive: String,
        /// Why.
        err: virtio_devices::blk::BlkConfigError,
    },
    /// The network device refused its configuration.
    Net {
        /// The netdev id.
        netdev: String,
        /// Why.
        err: virtio_devices::net::NetConfigError,
    },
    /// A network backend could not be opened.
    Netdev {
        /// Its id.
        id: String,
        /// What went wrong.
        err: backends::net::NetError,
    },
    /// A disk image could not be opened.
    Drive {
        /// Its id.
        id: String,
        /// What went wrong.
        err: backends::block::BlockError,
    },
    /// Something these options ask for that this monitor cannot do yet.
    Unsupported(&'static str),
    /// No `-kernel`.
    NoKernel,
    /// The kernel could not be read.
    Kernel {
        /// Its path.
        path: std::path::PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// A monitor socket could not be bound (or its thread started).
    Monitor {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// Guest RAM could not be created.
    Memory(backends::hostmem::HostMemoryError),
    /// A device served by an external vhost-user backend could not be set
    /// up (guest RAM not shareable, backend unreachable or refusing).
    VhostUser {
        /// The option that asked for it.
        by: String,
        /// Why.
        err: vhost_user::FrontendError,
    },
    /// The VM refused something (KVM, loading, the bus).
    Vm(VmError),
}

impl From<VmError> for MachineError {
    fn from(e: VmError) -> Self {
        MachineError::Vm(e)
    }
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Chardev { id, err } => write!(f, "-chardev id={id}: {err}"),
            MachineError::Rng { id, err } => write!(f, "-object rng id={id}: {err}"),
            MachineError::Missing { by, id } => {
                write!(f, "{by}: '{id}' is not defined or already in use")
            }
            MachineError::OrphanPort(by) => {
                write!(f, "{by}: needs a -device virtio-serial-device before it")
            }
            MachineError::Drive { id, err } => write!(f, "drive id={id}: {err}"),
            MachineError::Netdev { id, err } => write!(f, "-netdev id={id}: {err}"),
            MachineError::Net { netdev, err } => {
                write!(f, "-device virtio-net-device,netdev={netdev}: {err}")
            }
            MachineError::Blk { drive, err } => {
                write!(f, "-device virtio-blk-device,drive={drive}: {err}")
            }
            MachineError::QueueSize { by, size } => write!(
                f,
                "{by}: queue-size {size} is not a power of two from 1 to 32768 (§2.7)"
            ),
            MachineError::Unsupported(what) => f.write_str(what),
            MachineError::NoKernel => f.write_str("no -kernel given"),
            MachineError::Kernel { path, err } => write!(f, "-kernel {}: {err}", path.display()),
            MachineError::Monitor { path, err } => {
                write!(f, "monitor socket {}: {err}", path.display())
            }
            MachineError::Memory(e) => write!(f, "guest RAM: {e}"),
            MachineError::VhostUser { by, err } => write!(f, "{by}: {err}"),
            MachineError::Vm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MachineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MachineError::Chardev { err, .. } => Some(err),
            MachineError::Rng { err, .. } => Some(err),
            MachineError::Kernel { err, .. } => Some(err),
            MachineError::Monitor { err, .. } => Some(err),
            MachineError::Drive { err, .. } => Some(err),
            MachineError::Netdev { err, .. } => Some(err),
            MachineError::Memory(e) => Some(e),
            MachineError::VhostUser { err, .. } => Some(err),
            MachineError::Vm(e) => Some(e),
            _ => None,
        }
    }
}

/// A virtio-net device as the machine builds it: typed, so that the
/// monitor can reach [`Net::set_link`] while the VM runs.
pub type MachineNet = Net<BoxedNet, RegionMemory>;

/// A realized device: any device behind the trait, or a network device
/// kept typed along with the names the monitor knows it by.
pub enum DeviceBox {
    /// Any device.
    Any(BoxedDevice),
    /// A virtio-net device.
    Net {
        /// The device.
        net: Box<MachineNet>,
        /// Its `-netdev` id.
        netdev: String,
        /// Its `-device …,id=`.
        id: Option<String>,
    },
    /// A hostile device (`misbehave=`, [`virtio_devices::misbehave`]); a network
    /// device so wrapped has no link for the monitor.
    #[cfg(feature = "misbehave")]
    Misbehaving(Box<Misbehaving>),
    /// A device served by an external vhost-user backend, kept typed so
    /// that its slot reports a dead backend.
    VhostUser(Box<VhostUserDevice>),
}

impl DeviceBox {
    /// The device as any device, whatever its variant.
    #[cfg(feature = "misbehave")]
    fn into_boxed(self) -> BoxedDevice {
        match self {
            DeviceBox::Any(d) => d,
            DeviceBox::Net { net, .. } => net,
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => m,
            DeviceBox::VhostUser(v) => v,
        }
    }
}

/// Turns the device just realized into a hostile one if `misbehave` asks
/// for it; its backend description says so.
#[cfg(feature = "misbehave")]
fn misbehave(
    out: &mut Vec<RealizedDevice>,
    misbehave: Option<Misbehave>,
    mem: &RegionMemory,
) -> Result<(), MachineError> {
    let Some(mode) = misbehave else {
        return Ok(());
    };
    let Some(honest) = out.pop() else {
        return Ok(());
    };
    out.push(RealizedDevice {
        kind: honest.kind,
        backend: format!("{}, misbehave={mode}", honest.backend),
        device: DeviceBox::Misbehaving(Box::new(Misbehaving::new(
            honest.device.into_boxed(),
            mode,
            mem.clone(),
        ))),
        ready_fds: honest.ready_fds,
        notify: honest.notify,
    });
    Ok(())
}

/// Without the `misbehave` feature a hostile device is refused.
#[cfg(not(feature = "misbehave"))]
fn misbehave(
    _out: &mut Vec<RealizedDevice>,
    misbehave: Option<Misbehave>,
    _mem: &RegionMemory,
) -> Result<(), MachineError> {
    match misbehave {
        None => Ok(()),
        Some(_) => Err(MachineError::Unsupported(
            "misbehave= needs the monitor built with its `misbehave` feature",
        )),
    }
}

impl std::ops::Deref for DeviceBox {
    type Target = dyn VirtioDevice + Send;

    fn deref(&self) -> &Self::Target {
        match self {
            DeviceBox::Any(d) => &**d,
            DeviceBox::Net { net, .. } => &**net,
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => &**m,
            DeviceBox::VhostUser(v) => &**v,
        }
    }
}

/// A realized device, ready for a virtio-mmio slot.
pub struct RealizedDevice {
    /// The `-device` type (`virtio-rng-device`, `virtio-serial-device`).
    pub kind: &'static str,
    /// Its backends, described for reports (`rng-builtin`,
    /// `virtconsole<-file:out.log`, …).
    pub backend: String,
    /// The device.
    pub device: DeviceBox,
    /// File descriptors that become readable when a backend has something
    /// for the device (watch them and call the device's `backend_ready`).
    pub ready_fds: Vec<RawFd>,
    /// How notifications reach it (`ioeventfd=on`: a KVM ioeventfd served
    /// by the device's worker; `off`: a VM exit served on the vCPU thread).
    pub notify: NotifyMode,
}

impl fmt::Debug for RealizedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealizedDevice")
            .field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("ready_fds", &self.ready_fds)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// Size of a `-chardev ringbuf` (fixed at build time; `size=` beyond it is
/// clamped by the option parser's caller).
const RINGBUF_SIZE: usize = 64 * 1024;

/// Opens one chardev.
pub fn open_chardev(id: &str, kind: &ChardevKind) -> Result<(BoxedChardev, String), MachineError> {
    let err = |err| MachineError::Chardev {
        id: id.to_string(),
        err,
    };
    Ok(match kind {
        ChardevKind::Null => (Box::new(Null), "null".into()),
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
                // SAFETY: the user handed this descriptor to the monitor
                // (`fd=N`), as QEMU's tap option does; it is ours to own
                // from here (closed with the backend). A bad fd fails in
                // `from_fd`'s ioctl with a clear error.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) };
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
    use backends::block::raw::{Cache, RawFile, RawOptions};
    let err = |err| MachineError::Drive {
        id: drive.id.clone(),
        err,
    };
    let ro = if drive.read_only { ",readonly" } else { "" };
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
                },
            )
            .map_err(err)?;
            (Box::new(raw), format!("raw {file}, cache={cache_name}{ro}"))
        }
        DiskFormat::Qcow2 => {
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

/// A virtio-serial-device being assembled from the ports that follow it.
struct SerialBuild {
    max_ports: u32,
    queue_size: QueueSize,
    notify: NotifyMode,
    misbehave: Option<Misbehave>,
    /// Each port, its description and its chardev's readiness fd.
    ports: Vec<(Port, String, Option<RawFd>)>,
}

/// Guest RAM of `vm` as a vhost-user backend maps it (shared and
/// fd-backed, or an error naming the options that make it so).
pub fn shared_ram(vm: &Vm) -> Result<SharedRam, vhost_user::FrontendError> {
    let ranges: Vec<(u64, u64)> = vm.ram().iter().map(|r| (r.base, r.size)).collect();
    SharedRam::new(vm.host_memory(), &ranges)
}

/// `size` as a split-queue size (§2.7), or the error naming the device.
pub fn checked_queue_size(by: &'static str, size: u16) -> Result<QueueSize, MachineError> {
    QueueSize::new(u32::from(size)).map_err(|_| MachineError::QueueSize { by, size })
}

/// Realizes every device of `config` over guest memory `mem`, in
/// command-line order (which is slot order).
pub fn realize_devices(
    config: &MachineConfig,
    mem: &RegionMemory,
) -> Result<Vec<RealizedDevice>, MachineError> {
    realize_devices_with_hubs(config, mem, &mut Hubs::default())
}

/// [`realize_devices`] with hub ports joining `hubs` (shared with other
/// machines).
pub fn realize_devices_with_hubs(
    config: &MachineConfig,
    mem: &RegionMemory,
    hubs: &mut Hubs,
) -> Result<Vec<RealizedDevice>, MachineError> {
    realize_devices_shared(config, mem, hubs, None)
}

/// [`realize_devices_with_hubs`] with guest RAM shareable with vhost-user
/// backends (`ram`, needed by `vhost-user-*` devices and `-netdev
/// vhost-user`; without it they fail naming the memory backend to use).
pub fn realize_devices_shared(
    config: &MachineConfig,
    mem: &RegionMemory,
    hubs: &mut Hubs,
    ram: Option<Arc<SharedRam>>,
) -> Result<Vec<RealizedDevice>, MachineError> {
    let vhost_chardevs = config.vhost_user_chardevs();
    let mut chardevs = HashMap::new();
    for (id, kind) in &config.chardevs {
        // A vhost-user frontend connects to the socket itself.
        if vhost_chardevs.contains(&id.as_str()) {
            continue;
        }
        chardevs.insert(id.clone(), open_chardev(id, kind)?);
    }
    // Connects a frontend to the backend on `chardev`'s socket.
    let vhost_user = |by: String, chardev: &str, kind: VhostUserKind| {
        let fail = |err| MachineError::VhostUser {
            by: by.clone(),
            err,
        };
        let ram = ram.clone().ok_or_else(|| {
            fail(FrontendError::NotShared {
                memory: "not given to the device".into(),
            })
        })?;
        let path = config
            .socket_path(chardev)
            .ok_or_else(|| MachineError::Missing {
                by: by.clone(),
                id: chardev.into(),
            })?;
        let dev = VhostUserDevice::connect(path, kind, ram).map_err(fail)?;
        Ok::<_, MachineError>((dev, format!("vhost-user:{}", path.display())))
    };
    let mut vhost_netdevs = HashMap::new();
    for (id, kind) in &config.netdevs {
        if let NetdevKind::VhostUser { chardev } = kind {
            vhost_netdevs.insert(id.clone(), chardev.clone());
        }
    }
    let mut disks = HashMap::new();
    for d in &config.drives {
        disks.insert(d.id.clone(), open_drive(d)?);
    }
    let drives = &config.drives;
    let mut netdevs = HashMap::new();
    for (id, kind) in &config.netdevs {
        if vhost_netdevs.contains_key(id) {
            continue;
        }
        netdevs.insert(id.clone(), open_netdev(id, kind, hubs)?);
    }
    let mut nics: u8 = 0;
    let mut rngs = HashMap::new();
    for (id, rng) in &config.rngs {
        rngs.insert(id.clone(), open_rng(id, rng, &mut chardevs)?);
    }

    let mut out = Vec::new();
    // The virtio-serial-device being assembled: max_ports, notify, ports.
    let mut serial: Option<SerialBuild> = None;
    let finish_serial = |s: SerialBuild, out: &mut Vec<RealizedDevice>| {
        let SerialBuild {
            max_ports,
            queue_size,
            notify,
            misbehave: hostile,
            ports,
        } = s;
        let backend = if ports.is_empty() {
            "no ports".to_string()
        } else {
            ports
                .iter()
                .map(|(_, w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let ready_fds = ports.iter().filter_map(|(_, _, fd)| *fd).collect();
        let ports: Vec<Port> = ports.into_iter().map(|(p, _, _)| p).collect();
        let max = usize::try_from(max_ports).unwrap_or(usize::MAX);
        let mut device = Console::with_max_ports(mem.clone(), ports, max > 1, max);
        device.set_queue_size(queue_size);
        out.push(RealizedDevice {
            kind: "virtio-serial-device",
            backend,
            device: DeviceBox::Any(Box::new(device)),
            ready_fds,
            notify,
        });
        misbehave(out, hostile, mem)
    };
    let notify_of = |on: bool| {
        if on {
            NotifyMode::Worker
        } else {
            NotifyMode::Inline
        }
    };
    for dev in &config.devices {
        match dev {
            DeviceConfig::Rng {
                rng,
                queue_size,
                ioeventfd,
                misbehave: hostile,
            } => {
                let size = checked_queue_size("virtio-rng-device", *queue_size)?;
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let (backend, what) = rngs.remove(rng).ok_or_else(|| MachineError::Missing {
                    by: "-device virtio-rng-device".into(),
                    id: rng.clone(),
                })?;
                let ready_fds = backend.readiness_fd().into_iter().collect();
                out.push(RealizedDevice {
                    kind: "virtio-rng-device",
                    backend: what,
                    device: DeviceBox::Any(Box::new(
                        Rng::new(backend, mem.clone()).with_queue_size(size),
                    )),
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::Blk {
                drive,
                serial: blk_serial,
                num_queues,
                queue_size,
                discard,
                write_zeroes,
                ioeventfd,
                misbehave: hostile,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let by = "-device virtio-blk-device";
                let (disk, what) = disks.remove(drive).ok_or_else(|| MachineError::Missing {
                    by: by.into(),
                    id: drive.clone(),
                })?;
                let drive_cfg = drives.iter().find(|d| &d.id == drive);
                let wants_discard = drive_cfg.is_some_and(|d| d.discard);
                let writethrough = drive_cfg.is_some_and(|d| d.cache == CacheMode::Writethrough);
                let cfg = BlkConfig {
                    serial: blk_serial.clone().unwrap_or_default().into_bytes(),
                    num_queues: num_queues.unwrap_or(1),
                    queue_size: *queue_size,
                    // QEMU's rule: two descriptors go to header and status.
                    seg_max: u32::from(*queue_size).saturating_sub(2).clamp(1, 254),
                    // QEMU's rule: DISCARD is offered unless the device says
                    // `discard=off`; the drive's `discard=ignore` (the
                    // default) completes them without touching the image,
                    // `discard=unmap` passes them on.
                    discard: *discard && (!wants_discard || disk.supports_discard()),
                    discard_unmap: wants_discard,
                    write_zeroes: *write_zeroes && disk.supports_write_zeroes(),
                    writeback: !writethrough,
                    ..BlkConfig::default()
                };
                let blk = Blk::new(disk, mem.clone(), cfg).map_err(|err| MachineError::Blk {
                    drive: drive.clone(),
                    err,
                })?;
                out.push(RealizedDevice {
                    kind: "virtio-blk-device",
                    backend: what,
                    device: DeviceBox::Any(Box::new(blk)),
                    ready_fds: Vec::new(),
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::Net {
                id,
                netdev,
                mtu,
                mac,
                queue_pairs,
                queue_size,
                ioeventfd,
                misbehave: hostile,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                if let Some(chardev) = vhost_netdevs.get(netdev) {
                    let mac = mac.unwrap_or_else(|| {
                        let mut m: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
                        m[5] = m[5].wrapping_add(nics);
                        m
                    });
                    nics = nics.wrapping_add(1);
                    let kind = VhostUserKind::Net {
                        mac,
                        queue_size: *queue_size,
                    };
                    let by = format!("-netdev vhost-user,id={netdev}");
                    let (dev, what) = vhost_user(by, chardev, kind)?;
                    out.push(RealizedDevice {
                        kind: "virtio-net-device",
                        backend: what,
                        ready_fds: dev.ready_fds(),
                        device: DeviceBox::VhostUser(Box::new(dev)),
                        notify: notify_of(*ioeventfd),
                    });
                    continue;
                }
                let (backend, what) =
                    netdevs
                        .remove(netdev)
                        .ok_or_else(|| MachineError::Missing {
                            by: "-device virtio-net-device".into(),
                            id: netdev.clone(),
                        })?;
                // QEMU's default MAC, one per NIC: 52:54:00:12:34:56 + n.
                let mac = mac.unwrap_or_else(|| {
                    let mut m: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
                    m[5] = m[5].wrapping_add(nics);
                    m
                });
                nics = nics.wrapping_add(1);
                let ready_fds = backend.readiness_fd().into_iter().collect();
                let cfg = NetConfig {
                    mac,
                    queue_pairs: queue_pairs.unwrap_or(1),
                    queue_size: *queue_size,
                    mtu: mtu.unwrap_or(NetConfig::default().mtu),
                    ..NetConfig::default()
                };
                let net = Net::new(backend, mem.clone(), cfg).map_err(|err| MachineError::Net {
                    netdev: netdev.clone(),
                    err,
                })?;
                out.push(RealizedDevice {
                    kind: "virtio-net-device",
                    backend: what,
                    device: DeviceBox::Net {
                        net: Box::new(net),
                        netdev: netdev.clone(),
                        id: id.clone(),
                    },
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::VhostUser {
                ty,
                chardev,
                ioeventfd,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let kind = match *ty {
                    VhostUserType::Blk {
                        num_queues,
                        queue_size,
                    } => VhostUserKind::Blk {
                        num_queues,
                        queue_size,
                    },
                    VhostUserType::Rng => VhostUserKind::Rng,
                    VhostUserType::Generic {
                        device_type,
                        num_vqs,
                        vq_size,
                        config_size,
                    } => VhostUserKind::Generic {
                        device_type,
                        num_vqs,
                        vq_size,
                        config_size,
                    },
                };
                let by = format!("-device {},chardev={chardev}", dev.type_name());
                let (device, what) = vhost_user(by, chardev, kind)?;
                out.push(RealizedDevice {
                    kind: dev.type_name(),
                    backend: what,
                    ready_fds: device.ready_fds(),
                    device: DeviceBox::VhostUser(Box::new(device)),
                    notify: notify_of(*ioeventfd),
                });
            }
            DeviceConfig::Serial {
                max_ports,
                queue_size,
                ioeventfd,
                misbehave: hostile,
                ..
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                serial = Some(SerialBuild {
                    max_ports: *max_ports,
                    queue_size: checked_queue_size("virtio-serial-device", *queue_size)?,
                    notify: notify_of(*ioeventfd),
                    misbehave: *hostile,
                    ports: Vec::new(),
                });
            }
            DeviceConfig::Port {
                chardev,
                name,
                console,
            } => {
                let kind = dev.type_name();
                let by = format!("-device {kind}");
                let Some(SerialBuild { ports, .. }) = serial.as_mut() else {
                    return Err(MachineError::OrphanPort(by));
                };
                let (c, what) = chardevs
                    .remove(chardev)
                    .ok_or_else(|| MachineError::Missing {
                        by: by.clone(),
                        id: chardev.clone(),
                    })?;
                let fd = c.readiness_fd();
                ports.push((
                    Port::new(c, *console, name.clone()),
                    format!("{kind}<-{what}"),
                    fd,
                ));
            }
        }
    }
    if let Some(s) = serial.take() {
        finish_serial(s, &mut out)?;
    }
    Ok(out)
}

/// A machine ready to run: the VM with its devices placed and the guest
/// loaded.
pub struct Machine {
    /// The VM.
    pub vm: Vm,
    /// What sits at each virtio-mmio slot, in slot order: type and backend.
    pub devices: Vec<(&'static str, String)>,
    /// The command line the guest got (with the slots appended).
    pub cmdline: String,
    /// Its virtio-net devices, for `set_link` (the monitor's and tests').
    pub links: Vec<NetLink>,
    /// Monitor sockets (`-monitor`, `-qmp`), bound; served while
    /// [`Machine::run`] runs.
    monitors: Vec<MonitorServer>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("devices", &self.devices)
            .field("cmdline", &self.cmdline)
            .field("links", &self.links)
            .field("monitors", &self.monitors)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Builds the machine `config` describes: guest RAM from its memory
    /// backend, its devices at the virtio-mmio slots in command-line
    /// order, its kernel loaded by PVH with `-append` plus the slots, its
    /// monitor sockets bound.
    pub fn new(config: &MachineConfig) -> Result<Machine, MachineError> {
        Machine::with_hubs(config, &mut Hubs::default())
    }

    /// [`Machine::new`] with its hub ports on `hubs`: machines built over
    /// the same `Hubs` (and run in threads of one process) share each
    /// `hubid`'s segment.
    pub fn with_hubs(config: &MachineConfig, hubs: &mut Hubs) -> Result<Machine, MachineError> {
        let path = config.kernel.as_ref().ok_or(MachineError::NoKernel)?;
        let elf = std::fs::read(path).map_err(|err| MachineError::Kernel {
            path: path.clone(),
            err,
        })?;
        let memory = backends::hostmem::HostMemory::new(&config.ram_host_memory())
            .map_err(MachineError::Memory)?;
        let mut vm = Vm::new(memory)?;
        let ram = if config.uses_vhost_user() {
            let shared = shared_ram(&vm).map_err(|err| MachineError::VhostUser {
                by: "a vhost-user device".into(),
                err,
            })?;
            Some(Arc::new(shared))
        } else {
            None
        };
        let realized = realize_devices_shared(config, vm.guest_memory(), hubs, ram)?;
        let devices = realized
            .iter()
            .map(|d| (d.kind, d.backend.clone()))
            .collect();
        let (slots, links) = attach(&mut vm, realized)?;
        let cmdline = crate::slots::append_cmdline(&config.append, &slots);
        let monitors = config
            .monitors
            .iter()
            .map(|m| {
                MonitorServer::bind(m.protocol, &m.path).map_err(|err| MachineError::Monitor {
                    path: m.path.clone(),
                    err,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        vm.load_pvh(&elf, &cmdline)?;
        Ok(Machine {
            vm,
            devices,
            cmdline,
            links,
            monitors,
        })
    }

    /// The monitor sockets: protocol and path.
    pub fn monitors(&self) -> Vec<(crate::options::MonitorProtocol, std::path::PathBuf)> {
        self.monitors
            .iter()
            .map(|m| (m.protocol(), m.path().to_path_buf()))
            .collect()
    }

    /// The virtio-net device the monitor knows as `name` (its `-netdev`
    /// id or its `-device …,id=`).
    pub fn link(&self, name: &str) -> Option<&NetLink> {
        self.links.iter().find(|l| l.is_named(name))
    }

    /// Runs the guest to its verdict, or `timeout`. The monitor sockets
    /// are served meanwhile and stop with the run.
    pub fn run(&mut self, timeout: Duration) -> Result<Outcome, MachineError> {
        let running: Vec<_> = self
            .monitors
            .iter()
            .map(|m| {
                m.serve(self.links.clone())
                    .map_err(|err| MachineError::Monitor {
                        path: m.path().to_path_buf(),
                        err,
                    })
            })
            .collect::<Result<_, _>>()?;
        let out = self.vm.run(timeout);
        for r in running {
            r.stop();
        }
        Ok(out?)
    }
}

/// Places realized devices at the VM's virtio-mmio slots, in order, and
/// returns every slot on the bus (for the command line) and the network
/// devices' link handles.
fn attach(
    vm: &mut Vm,
    devices: Vec<RealizedDevice>,
) -> Result<(Vec<crate::slots::VirtioSlot>, Vec<NetLink>), MachineError> {
    let mut links = Vec::new();
    for d in devices {
        match d.device {
            DeviceBox::Any(device) => {
                vm.add_virtio_device(d.kind, device, d.ready_fds, d.notify)?;
            }
            DeviceBox::Net { net, netdev, id } => {
                let handle = vm.add_virtio_device(d.kind, *net, d.ready_fds, d.notify)?;
                links.push(NetLink::new(netdev, id, d.backend, handle));
            }
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => {
                vm.add_virtio_device(d.kind, *m, d.ready_fds, d.notify)?;
            }
            DeviceBox::VhostUser(v) => {
                vm.add_virtio_device(d.kind, *v, d.ready_fds, d.notify)?;
            }
        }
    }
    Ok((vm.virtio_slots(), links))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options;

    fn mem() -> RegionMemory {
        RegionMemory::new()
    }

    fn realize(line: &str) -> Result<Vec<RealizedDevice>, MachineError> {
        let args: Vec<&str> = line.split_whitespace().collect();
        let cfg = options::parse(&args).expect(line);
        realize_devices(&cfg, &mem())
    }

    #[test]
    fn devices_come_in_command_line_order_with_their_backends() {
        let dir = std::env::temp_dir().join(format!("machine-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.log");
        let line = format!(
            "-object rng-deterministic,id=r0,seed=7 -device virtio-rng-device,rng=r0 \
             -chardev file,id=c0,path={} -chardev null,id=c1 \
             -device virtio-serial-device,max_ports=2,ioeventfd=off \
             -device virtconsole,chardev=c0 -device virtserialport,chardev=c1,name=p1 \
             -object rng-builtin,id=r1 -device virtio-rng-device,rng=r1",
            out.display()
        );
        let devs = realize(&line).unwrap();
        let kinds: Vec<_> = devs.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                "virtio-rng-device",
                "virtio-serial-device",
                "virtio-rng-device"
            ]
        );
        assert_eq!(devs[0].backend, "rng-deterministic:7");
        assert_eq!(devs[0].notify, NotifyMode::Worker);
        assert_eq!(devs[1].notify, NotifyMode::Inline);
        assert!(devs[1].backend.starts_with("virtconsole<-file:"));
        assert!(devs[1].backend.ends_with("virtserialport<-null"));
        // max_ports=2 with MULTIPORT: 2 + 2 * 2 queues (§5.3.2).
        assert_eq!(devs[1].device.queue_max_sizes().len(), 6);
        assert_eq!(devs[2].backend, "rng-builtin");
        assert!(out.exists(), "the file chardev was created");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(not(feature = "misbehave"))]
    #[test]
    fn misbehave_is_refused_without_the_feature() {
        let e = realize(
            "-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0,misbehave=used-twice",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("misbehave"), "{e}");
    }

    #[cfg(feature = "misbehave")]
    #[test]
    fn misbehave_wraps_the_device_and_says_so() {
        let devs = realize(
            "-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0,misbehave=used-twice \
             -chardev null,id=c0 -device virtio-serial-device,misbehave=interrupt-storm \
             -device virtconsole,chardev=c0 \
             -netdev hubport,id=n0,hubid=0 \
             -device virtio-net-device,netdev=n0,misbehave=reset-never-clears \
             -object rng-builtin,id=r1 -device virtio-rng-device,rng=r1",
        )
        .unwrap();
        let modes: Vec<_> = devs
            .iter()
            .map(|d| match &d.device {
                DeviceBox::Misbehaving(m) => Some(m.mode()),
                _ => None,
            })
            .collect();
        assert_eq!(
            modes,
            [
                Some(Misbehave::UsedTwice),
                Some(Misbehave::InterruptStorm),
                Some(Misbehave::ResetNeverClears),
                None
            ]
        );
        assert_eq!(devs[0].backend, "rng-builtin, misbehave=used-twice");
        assert!(devs[1].backend.ends_with(", misbehave=interrupt-storm"));
        // The wrapper is the device as the slot sees it.
        use virtio_core::features::DeviceType;
        assert_eq!(devs[1].device.device_type(), DeviceType::Console);
        assert_eq!(devs[2].device.device_type(), DeviceType::Net);
        assert_eq!(devs[3].backend, "rng-builtin");
    }

    #[test]
    fn egd_takes_its_chardev_and_waits_on_it() {
        let dir = std::env::temp_dir().join(format!("machine-egd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("egd.sock");
        let line = format!(
            "-chardev socket,id=e,path={},server=on -object rng-egd,id=r,chardev=e \
             -device virtio-rng-device,rng=r",
            sock.display()
        );
        let devs = realize(&line).unwrap();
        assert_eq!(devs.len(), 1);
        assert!(devs[0].backend.starts_with("rng-egd<-socket:unix:"));
        assert_eq!(devs[0].ready_fds.len(), 1, "the EGD socket is watched");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_chardev_kind_realizes_behind_a_port() {
        let dir = std::env::temp_dir().join(format!("machine-kinds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pipe = dir.join("p");
        for end in ["p.in", "p.out"] {
            let path = std::ffi::CString::new(dir.join(end).to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; mkfifo creates a file, nothing else.
            assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        }
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let line = format!(
            "-chardev null,id=a -chardev ringbuf,id=b -chardev pty,id=c \
             -chardev pipe,id=d,path={} -chardev socket,id=e,host=127.0.0.1,port={port} \
             -chardev socket,id=f,host=127.0.0.1,port=1,reconnect=5 \
             -chardev socket,id=g,path={},server=on \
             -device virtio-serial-device,max_ports=8 -device virtconsole,chardev=a \
             -device virtserialport,chardev=b -device virtserialport,chardev=c \
             -device virtserialport,chardev=d -device virtserialport,chardev=e \
             -device virtserialport,chardev=f -device virtserialport,chardev=g",
            pipe.display(),
            dir.join("g.sock").display()
        );
        let devs = realize(&line).unwrap();
        assert_eq!(devs.len(), 1);
        let b = &devs[0].backend;
        for want in [
            "virtconsole<-null",
            "virtserialport<-ringbuf",
            "virtserialport<-pty:/dev/pts/",
            "virtserialport<-pipe:",
            "virtserialport<-socket:tcp:127.0.0.1:",
            ",server",
        ] {
            assert!(b.contains(want), "{want} not in {b}");
        }
        // Sockets, the pty and the pipe can wake the device.
        assert!(devs[0].ready_fds.len() >= 4, "{:?}", devs[0].ready_fds);
        drop(devs);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn drives_become_blk_devices() {
        let dir = std::env::temp_dir().join(format!("machine-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let line = format!(
            "-drive if=none,id=d0,file={},format=raw,readonly=on \
             -device virtio-blk-device,drive=d0,serial=abc,num-queues=2,queue-size=64",
            img.display()
        );
        let devs = realize(&line).unwrap();
        assert_eq!(devs[0].kind, "virtio-blk-device");
        assert!(
            devs[0].backend.contains("cache=writeback,readonly"),
            "{}",
            devs[0].backend
        );
        assert_eq!(devs[0].device.queue_max_sizes(), &[64, 64]);
        // A missing image names the drive.
        let err = realize(
            "-drive if=none,id=dx,file=/nonexistent/d.img -device virtio-blk-device,drive=dx",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("id=dx") && err.contains("/nonexistent/d.img"),
            "{err}"
        );
        // qcow2 cannot bypass the page cache.
        let err = realize(&format!(
            "-drive if=none,id=dq,file={},format=qcow2,cache=none",
            img.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache=none with format=qcow2"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn netdevs_open_and_hub_ports_share_a_hub() {
        use backends::net::{NetBackend, Sent};
        let mut hubs = Hubs::default();
        let kind = NetdevKind::Hubport { hubid: 1 };
        let (mut a, what) = open_netdev("a", &kind, &mut hubs).unwrap();
        let (mut b, _) = open_netdev("b", &kind, &mut hubs).unwrap();
        assert_eq!(what, "hubport, hub 1");
        assert_eq!(a.send(&[b"frame"]).unwrap(), Sent::Done);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), Some(5));
        let (mut l, _) = open_netdev("l", &NetdevKind::Loopback, &mut hubs).unwrap();
        l.send(&[b"x", b"y"]).unwrap();
        assert_eq!(l.recv(&mut buf).unwrap(), Some(2));
        let Err(err) = open_netdev(
            "s",
            &NetdevKind::Stream {
                server: true,
                path: Some("/nonexistent/dir/n.sock".into()),
                inet: None,
            },
            &mut hubs,
        ) else {
            panic!("a socket in a missing directory opened");
        };
        let err = err.to_string();
        assert!(
            err.contains("id=s") && err.contains("/nonexistent/dir/n.sock"),
            "{err}"
        );
    }

    #[test]
    fn net_devices_realize_with_default_macs() {
        let devs = realize(
            "-netdev loopback,id=l -netdev hubport,id=h,hubid=0 \
             -device virtio-net-device,netdev=l -device virtio-net-device,netdev=h,mq=on,queue-pairs=2",
        )
        .unwrap();
        assert_eq!(devs[0].kind, "virtio-net-device");
        assert_eq!(devs[0].backend, "loopback");
        // rx/tx pair + control queue; two pairs + control with mq.
        assert_eq!(devs[0].device.queue_max_sizes().len(), 3);
        assert_eq!(devs[1].device.queue_max_sizes().len(), 5);
        let mut mac = [0u8; 6];
        devs[1].device.read_config(0, &mut mac);
        assert_eq!(
            mac,
            [0x52, 0x54, 0, 0x12, 0x34, 0x57],
            "second NIC, next MAC"
        );
        assert_eq!(devs[1].ready_fds.len(), 1, "a hub port wakes its device");
    }

    #[test]
    fn a_backend_that_cannot_open_is_an_error_naming_its_id() {
        let err = realize(
            "-object rng-random,id=rr,filename=/nonexistent/random -device virtio-rng-device,rng=rr",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("id=rr") && err.contains("/nonexistent/random"),
            "{err}"
        );
        let err = realize("-chardev file,id=cf,path=/nonexistent/dir/x.log")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("id=cf") && err.contains("/nonexistent/dir/x.log"),
            "{err}"
        );
    }
}
