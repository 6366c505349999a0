//! What a command line describes: [`MachineConfig`] and the typed
//! configuration of every backend and device in it.

use std::path::PathBuf;

use virtio_core::features::DeviceType;
use virtio_devices::misbehave::Misbehave;

/// A host memory backend (`-object memory-backend-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBackendConfig {
    /// Its id.
    pub id: String,
    /// Which kind.
    pub kind: MemoryBackendKind,
    /// Size in bytes.
    pub size: u64,
    /// `share=on`: mapped shared (visible to other processes).
    pub share: bool,
    /// `prealloc=on`: populated up front.
    pub prealloc: bool,
}

/// The kinds of host memory backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryBackendKind {
    /// `memory-backend-ram`: anonymous memory.
    Ram,
    /// `memory-backend-file,mem-path=…`.
    File {
        /// The file.
        path: PathBuf,
    },
    /// `memory-backend-memfd`.
    Memfd,
}

/// An entropy source (`-object rng-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RngConfig {
    /// `rng-builtin`: the OS generator.
    Builtin,
    /// `rng-random,filename=…`.
    Random {
        /// The file or device.
        filename: PathBuf,
    },
    /// `rng-egd,chardev=…`.
    Egd {
        /// The chardev to the daemon.
        chardev: String,
    },
    /// `rng-deterministic,seed=N` (ours, for tests).
    Deterministic {
        /// The seed.
        seed: u64,
    },
}

/// A chardev (`-chardev`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChardevKind {
    /// `null`.
    Null,
    /// `testdev`: QEMU's test-suite control channel; `<n>q` written to it
    /// ends the run with status n ([`backends::chardev::testdev`]).
    Testdev,
    /// `msmouse`: a Microsoft serial mouse for a UART, fed by the
    /// monitor's `mouse_move`/`mouse_button` ([`backends::chardev::msmouse`]).
    Msmouse,
    /// `wctablet`: a Wacom serial tablet for a UART, fed by QMP's
    /// `input-send-event` ([`backends::chardev::wctablet`]).
    Wctablet,
    /// `ringbuf[,size=…]` (also QEMU's alias `memory`).
    Ringbuf {
        /// Capacity in bytes.
        size: u64,
    },
    /// `file,path=…[,input-path=…]`.
    File {
        /// Output file.
        path: PathBuf,
        /// Input file.
        input_path: Option<PathBuf>,
    },
    /// `pipe,path=…`.
    Pipe {
        /// The base path.
        path: PathBuf,
    },
    /// `udp,host=…,port=…[,localaddr=…][,localport=…]`.
    Udp {
        /// Where the output goes and input comes from, `host:port`.
        remote: String,
        /// The address bound, `addr:port` (port 0: any); `None`: the
        /// wildcard address of the remote's family, any port.
        local: Option<String>,
        /// `ipv4=on` (`Some(true)`) or `ipv6=on` (`Some(false)`).
        family: Option<bool>,
    },
    /// `serial,path=…` (alias `tty`): a host terminal device.
    Serial {
        /// The device, e.g. `/dev/ttyS0`.
        path: PathBuf,
    },
    /// `pty`.
    Pty,
    /// `stdio`.
    Stdio,
    /// `socket,path=…|host=…,port=…[,server=on][,reconnect=N]`.
    Socket {
        /// Unix path, if a unix socket.
        path: Option<PathBuf>,
        /// TCP `host:port`, if TCP.
        tcp: Option<String>,
        /// Listen instead of connecting.
        server: bool,
        /// Seconds between reconnection attempts (clients).
        reconnect: Option<u32>,
    },
}

/// A TPM backend (`-tpmdev`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmdevKind {
    /// `emulator,chardev=…`: a swtpm process on the control socket the
    /// chardev (a unix socket client) names.
    Emulator {
        /// The chardev's id.
        chardev: String,
    },
    /// `passthrough,path=…[,cancel-path=…]`: a host TPM device.
    Passthrough {
        /// The TPM device (default `/dev/tpm0`).
        path: PathBuf,
        /// Its sysfs cancel file, if not the one the kernel gives it.
        cancel_path: Option<PathBuf>,
    },
}

/// The TPM interface (`-device tpm-crb,tpmdev=…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmConfig {
    /// The `-tpmdev` it sits in front of.
    pub tpmdev: String,
}

/// A disk image format (`format=` / `driver=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// The file is the disk, byte for byte.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

/// How the host caches a disk (`cache=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Host page cache, flushed on the guest's FLUSH (QEMU's default).
    Writeback,
    /// `O_DIRECT`: no host page cache; still flushed on FLUSH.
    None,
    /// Every write is stable before it completes.
    Writethrough,
}

/// How a raw image's requests reach the kernel (`aio=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AioMode {
    /// Not given: io_uring where the kernel allows it, else blocking calls.
    #[default]
    Default,
    /// `aio=threads`: blocking calls on the device's own thread (QEMU
    /// runs them on a thread pool).
    Threads,
    /// `aio=io_uring`: queued on an io_uring; an error where there is none.
    IoUring,
}

/// A disk backend (`-drive if=none,…` or `-blockdev`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// Its id (`id=` / `node-name=`).
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// `readonly=on` / `read-only=on`.
    pub read_only: bool,
    /// `cache=` (`cache.direct=on` is `none`).
    pub cache: CacheMode,
    /// `discard=unmap|on`: guest discards reach the image.
    pub discard: bool,
    /// `aio=` (`-blockdev`: on the file node, or `file.aio`).
    pub aio: AioMode,
}

/// A network backend (`-netdev`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetdevKind {
    /// `loopback` (ours): what is sent comes back.
    Loopback,
    /// `hubport,hubid=N`: a port on hub N (created on first use).
    Hubport {
        /// The hub.
        hubid: u32,
    },
    /// `stream,server=on|off,addr.type=unix|inet,…`: frames with a 4-byte
    /// big-endian length over a stream socket (QEMU's framing).
    Stream {
        /// Listen instead of connecting.
        server: bool,
        /// Unix path, if `addr.type=unix`.
        path: Option<PathBuf>,
        /// `host:port`, if `addr.type=inet`.
        inet: Option<String>,
    },
    /// `dgram,local.…,remote.…`: one frame per UDP datagram.
    Dgram {
        /// `host:port` to bind.
        local: String,
        /// `host:port` to send to.
        remote: String,
    },
    /// `bridge[,br=…][,helper=…]`: a tap a bridge helper makes and adds
    /// to a host bridge.
    Bridge {
        /// The bridge (default `br0`).
        br: String,
        /// The helper (default Debian's `/usr/lib/qemu/qemu-bridge-helper`).
        helper: PathBuf,
    },
    /// `l2tpv3,src=…,dst=…,txsession=N[,udp=on,srcport=…,dstport=…][,…]`:
    /// a static L2TPv3 tunnel.
    L2tpv3(backends::net::l2tpv3::L2tpv3Config),
    /// `vhost-user,chardev=…`: the device's queues are served by an
    /// external vhost-user backend on the chardev's unix socket
    /// ([`vhost_user::frontend`]).
    VhostUser {
        /// The `-chardev socket,path=…` id.
        chardev: String,
    },
    /// `user[,net=…][,host=…][,dns=…][,dhcpstart=…][,restrict=on]
    /// [,hostfwd=…]…[,guestfwd=…]…`: user-mode networking, a NAT to host
    /// sockets ([`backends::net::user`]).
    User(backends::net::user::UserConfig),
    /// `tap,ifname=NAME` or `tap,fd=N`.
    Tap {
        /// The interface name (created if missing).
        ifname: Option<String>,
        /// An open tap file descriptor to use instead; the backend uses a
        /// duplicate, so N stays open and the caller's to close.
        fd: Option<i32>,
    },
}

/// A cryptodev (`-object cryptodev-backend-builtin,id=…[,queues=N]` or
/// `-object cryptodev-vhost-user,id=…,chardev=…[,queues=N]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptodevConfig {
    /// Data queues the device in front of it has (`queues=`, default 1).
    pub queues: u16,
    /// Where its operations run.
    pub backend: CryptodevBackend,
}

/// Where a cryptodev's operations run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CryptodevBackend {
    /// `cryptodev-backend-builtin`: RustCrypto in this process
    /// ([`backends::crypto::builtin`]).
    Builtin,
    /// `cryptodev-vhost-user,chardev=…`: an external vhost-user backend
    /// serves the data queues; sessions are made by message
    /// ([`vhost_user::crypto`]).
    VhostUser {
        /// The chardev (a unix socket client) of the backend.
        chardev: String,
    },
}

/// A device (`-device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// `virtio-crypto-device,cryptodev=…[,queue-size=N][,ioeventfd=on|off]`.
    Crypto {
        /// The cryptodev object id.
        cryptodev: String,
        /// Each queue's size.
        queue_size: u16,
        /// As for [`DeviceConfig::Rng`].
        ioeventfd: bool,
        /// `misbehave=<mode>`: a hostile device that breaks this rule on
        /// purpose ([`virtio_devices::misbehave`]); `None` for an honest one.
        misbehave: Option<Misbehave>,
    },
    /// `virtio-rng-device,rng=…[,queue-size=N][,ioeventfd=on|off]`.
    Rng {
        /// The entropy source id.
        rng: String,
        /// The request queue's size (a power of two; default
        /// [`DEFAULT_QUEUE_SIZE`](virtio_devices::DEFAULT_QUEUE_SIZE)).
        queue_size: u16,
        /// `ioeventfd=on` (default): QueueNotify is caught by an ioeventfd
        /// and served by the device's worker thread; `off`: it exits to the
        /// vCPU thread and is served there (QEMU's virtio-mmio property).
        ioeventfd: bool,
        /// `misbehave=<mode>`: a hostile device that breaks this rule on
        /// purpose ([`virtio_devices::misbehave`]); `None` for an honest one.
        misbehave: Option<Misbehave>,
    },
    /// `virtio-serial-device[,max_ports=N][,queue-size=N]`: a console
    /// device whose ports are the `virtconsole`/`virtserialport` devices
    /// that follow.
    Serial {
        /// Its id, if given.
        id: Option<String>,
        /// Port limit.
        max_ports: u32,
        /// Each queue's size (a power of two; default
        /// [`DEFAULT_QUEUE_SIZE`](virtio_devices::DEFAULT_QUEUE_SIZE)).
        queue_size: u16,
        /// As for [`DeviceConfig::Rng`].
        ioeventfd: bool,
        /// `misbehave=<mode>`: a hostile device that breaks this rule on
        /// purpose ([`virtio_devices::misbehave`]); `None` for an honest one.
        misbehave: Option<Misbehave>,
    },
    /// `virtio-blk-device,drive=…[,serial=…,num-queues=N,queue-size=N,discard=on|off,write-zeroes=on|off]`.
    Blk {
        /// The drive id.
        drive: String,
        /// GET_ID's answer (at most 20 bytes, §5.2.6).
        serial: Option<String>,
        /// Request queues (MQ when more than one); `None` when not given:
        /// one in our monitor, [`VHOST_USER_BLK_QUEUES`](super::VHOST_USER_BLK_QUEUES) when served over
        /// vhost-user (the frontend decides how many it uses).
        num_queues: Option<u16>,
        /// Each queue's size (a power of two; default
        /// [`DEFAULT_QUEUE_SIZE`](virtio_devices::DEFAULT_QUEUE_SIZE)).
        queue_size: u16,
        /// Offer DISCARD.
        discard: bool,
        /// Offer WRITE_ZEROES.
        write_zeroes: bool,
        /// As for [`DeviceConfig::Rng`].
        ioeventfd: bool,
        /// `misbehave=<mode>`: a hostile device that breaks this rule on
        /// purpose ([`virtio_devices::misbehave`]); `None` for an honest one.
        misbehave: Option<Misbehave>,
    },
    /// `virtio-net-device,netdev=…[,id=…][,mac=…][,host_mtu=N][,mq=on][,queue-size=N][,ioeventfd=…]`.
    Net {
        /// Its id (`id=`), a name for the monitor's `set_link`.
        id: Option<String>,
        /// The netdev id.
        netdev: String,
        /// The MTU offered with `VIRTIO_NET_F_MTU` (`host_mtu=`, QEMU's
        /// name; default 1500).
        mtu: Option<u16>,
        /// The MAC address (QEMU's default `52:54:00:12:34:56` plus the
        /// device's index when absent).
        mac: Option<[u8; 6]>,
        /// Several queue pairs (`mq=on`, with `queues=N` on the netdev side
        /// in QEMU; here `queue-pairs=N`); `None` when neither is given:
        /// one in our monitor, [`VHOST_USER_NET_QUEUE_PAIRS`](super::VHOST_USER_NET_QUEUE_PAIRS) when served
        /// over vhost-user.
        queue_pairs: Option<u16>,
        /// Each queue's size.
        queue_size: u16,
        /// As for [`DeviceConfig::Rng`].
        ioeventfd: bool,
        /// `misbehave=<mode>`: a hostile device that breaks this rule on
        /// purpose ([`virtio_devices::misbehave`]); `None` for an honest one.
        misbehave: Option<Misbehave>,
    },
    /// `vhost-user-blk,chardev=…[,num-queues=N][,queue-size=N]` or
    /// `vhost-user-rng,chardev=…`: a device served by an external
    /// vhost-user backend ([`vhost_user::frontend`]).
    VhostUser {
        /// Which device.
        ty: VhostUserType,
        /// The `-chardev socket,path=…` id.
        chardev: String,
        /// As for [`DeviceConfig::Rng`].
        ioeventfd: bool,
    },
    /// `virtconsole,chardev=…` or `virtserialport,chardev=…[,name=…]`.
    Port {
        /// The chardev.
        chardev: String,
        /// Port name.
        name: Option<String>,
        /// Whether it is a console port.
        console: bool,
    },
}

/// The device an external vhost-user backend provides
/// ([`DeviceConfig::VhostUser`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VhostUserType {
    /// `vhost-user-blk`.
    Blk {
        /// Request queues.
        num_queues: u16,
        /// Each queue's size.
        queue_size: u16,
    },
    /// `vhost-user-rng`.
    Rng,
    /// `vhost-user-device` (QEMU 8.2's name; `vhost-user-test-device`
    /// later): any device type, its queues and configuration space as the
    /// options say, everything else the backend's.
    Generic {
        /// The device type (`virtio-id=N`, §5).
        device_type: DeviceType,
        /// Queues (`num_vqs`, default 1).
        num_vqs: u16,
        /// Each queue's maximum size (`vq_size`, default 64).
        vq_size: u16,
        /// Bytes of configuration space read from the backend
        /// (`config_size`, default 0).
        config_size: u16,
    },
}

/// A whole machine, parsed and cross-checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineConfig {
    /// RAM size in bytes (`-m`, default 64 MiB).
    pub memory: u64,
    /// `-machine memory-backend=…`: the id of the RAM's backend.
    pub memory_backend: Option<String>,
    /// Memory backends, by id.
    pub memory_backends: Vec<MemoryBackendConfig>,
    /// Entropy sources, by id.
    pub rngs: Vec<(String, RngConfig)>,
    /// Cryptodevs, by id.
    pub cryptodevs: Vec<(String, CryptodevConfig)>,
    /// Chardevs, by id.
    pub chardevs: Vec<(String, ChardevKind)>,
    /// The chardevs given `mux=on`: shared by the ports that name them.
    pub mux_chardevs: Vec<String>,
    /// `-serial` in order: COM1, then COM2; each a chardev id, or `None`
    /// (`null`/`none`: the UART alone, COM1's output still in the log).
    pub serials: Vec<Option<String>>,
    /// `-parallel`: LPT1 (`Some`), with the chardev it prints to
    /// (`Some(None)`: `-parallel null`, printed to nothing); `None`: no
    /// parallel port (QEMU's `-parallel none`, and microvm's default).
    pub parallel: Option<Option<String>>,
    /// Disk backends, by id.
    pub drives: Vec<DriveConfig>,
    /// Network backends, by id.
    pub netdevs: Vec<(String, NetdevKind)>,
    /// Devices, in command-line order.
    pub devices: Vec<DeviceConfig>,
    /// TPM backends, by id.
    pub tpmdevs: Vec<(String, TpmdevKind)>,
    /// The TPM interface, if any (at most one per machine).
    pub tpm: Option<TpmConfig>,
    /// The guest ELF.
    pub kernel: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
    /// Monitor sockets (`-monitor`, `-qmp`), in command-line order.
    pub monitors: Vec<MonitorConfig>,
}

/// Which protocol a monitor socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorProtocol {
    /// `-monitor`: QEMU's human monitor, one command a line.
    Hmp,
    /// `-qmp`: QEMU's JSON machine protocol.
    Qmp,
}

/// A monitor socket: `-monitor unix:PATH,server=on,wait=off` or `-qmp …`
/// (QEMU's older `unix:PATH,server,nowait` too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Its protocol.
    pub protocol: MonitorProtocol,
    /// The unix socket the monitor listens on.
    pub path: PathBuf,
}

impl DeviceConfig {
    /// The `-device` type name (`virtio-rng-device`, `virtconsole`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            DeviceConfig::Rng { .. } => "virtio-rng-device",
            DeviceConfig::Crypto { .. } => "virtio-crypto-device",
            DeviceConfig::Serial { .. } => "virtio-serial-device",
            DeviceConfig::Blk { .. } => "virtio-blk-device",
            DeviceConfig::Net { .. } => "virtio-net-device",
            DeviceConfig::VhostUser {
                ty: VhostUserType::Blk { .. },
                ..
            } => "vhost-user-blk",
            DeviceConfig::VhostUser {
                ty: VhostUserType::Rng,
                ..
            } => "vhost-user-rng",
            DeviceConfig::VhostUser {
                ty: VhostUserType::Generic { .. },
                ..
            } => "vhost-user-device",
            DeviceConfig::Port { console: true, .. } => "virtconsole",
            DeviceConfig::Port { console: false, .. } => "virtserialport",
        }
    }
}

impl MachineConfig {
    /// The memory backend that provides RAM, if one is named.
    pub fn ram_backend(&self) -> Option<&MemoryBackendConfig> {
        let id = self.memory_backend.as_ref()?;
        self.memory_backends.iter().find(|m| &m.id == id)
    }

    /// What to create for guest RAM: the named backend, or anonymous
    /// memory of `-m` bytes (QEMU's default `memory-backend-ram`).
    pub fn ram_host_memory(&self) -> backends::hostmem::HostMemoryConfig {
        match self.ram_backend() {
            Some(b) => b.host_memory_config(),
            None => backends::hostmem::HostMemoryConfig {
                kind: backends::hostmem::HostMemoryKind::Ram,
                size: self.memory,
                share: false,
                prealloc: false,
            },
        }
    }
}

impl MemoryBackendConfig {
    /// The `backends::hostmem` configuration for this backend (a memfd is
    /// always sealed: `seal=off` is accepted and ignored).
    pub fn host_memory_config(&self) -> backends::hostmem::HostMemoryConfig {
        use backends::hostmem::HostMemoryKind;
        backends::hostmem::HostMemoryConfig {
            kind: match &self.kind {
                MemoryBackendKind::Ram => HostMemoryKind::Ram,
                MemoryBackendKind::File { path } => HostMemoryKind::File { path: path.clone() },
                MemoryBackendKind::Memfd => HostMemoryKind::Memfd { seal: true },
            },
            size: self.size,
            share: self.share,
            prealloc: self.prealloc,
        }
    }
}

impl MachineConfig {
    /// Whether a device is served by an external vhost-user backend (guest
    /// RAM must then be shareable).
    pub fn uses_vhost_user(&self) -> bool {
        self.devices
            .iter()
            .any(|d| matches!(d, DeviceConfig::VhostUser { .. }))
            || self
                .netdevs
                .iter()
                .any(|(_, k)| matches!(k, NetdevKind::VhostUser { .. }))
            || self
                .cryptodevs
                .iter()
                .any(|(_, c)| matches!(c.backend, CryptodevBackend::VhostUser { .. }))
    }

    /// The socket path of chardev `id`, if it is a unix socket.
    pub fn socket_path(&self, id: &str) -> Option<&std::path::Path> {
        self.chardevs.iter().find_map(|(c, k)| match k {
            ChardevKind::Socket { path: Some(p), .. } if c == id => Some(p.as_path()),
            _ => None,
        })
    }

    /// The chardevs vhost-user frontends use (not opened as chardevs).
    pub fn vhost_user_chardevs(&self) -> Vec<&str> {
        let devs = self.devices.iter().filter_map(|d| match d {
            DeviceConfig::VhostUser { chardev, .. } => Some(chardev.as_str()),
            _ => None,
        });
        let nets = self.netdevs.iter().filter_map(|(_, k)| match k {
            NetdevKind::VhostUser { chardev } => Some(chardev.as_str()),
            _ => None,
        });
        let cryptodevs = self
            .cryptodevs
            .iter()
            .filter_map(|(_, c)| match &c.backend {
                CryptodevBackend::VhostUser { chardev } => Some(chardev.as_str()),
                CryptodevBackend::Builtin => None,
            });
        devs.chain(nets)
            .chain(cryptodevs)
            .chain(self.tpm_chardevs())
            .collect()
    }

    /// The chardevs `-serial chardev:ID` puts on a UART (opened for it,
    /// not for a device).
    pub fn serial_chardevs(&self) -> impl Iterator<Item = &str> {
        self.serials
            .iter()
            .flatten()
            .chain(self.parallel.iter().flatten())
            .map(String::as_str)
    }

    /// The chardevs `-tpmdev emulator` backends use (swtpm's control
    /// sockets; not opened as chardevs).
    pub fn tpm_chardevs(&self) -> impl Iterator<Item = &str> {
        self.tpmdevs.iter().filter_map(|(_, k)| match k {
            TpmdevKind::Emulator { chardev } => Some(chardev.as_str()),
            TpmdevKind::Passthrough { .. } => None,
        })
    }
}

/// What an id names, for duplicate and reference checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdKind {
    Memory,
    Rng,
    Cryptodev,
    Chardev,
    Drive,
    Netdev,
    Device,
    Tpmdev,
}
