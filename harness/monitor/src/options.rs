//! QEMU-style machine options (`-m`, `-machine`, `-object`, `-chardev`,
//! `-device`, `-kernel`, `-append`), parsed and cross-checked into a typed
//! [`MachineConfig`] before anything is created.
//!
//! Every mistake is a [`OptionError`] that names the option, the key and the
//! value: an unknown option, type, key or value; a missing or duplicate id;
//! a reference to an id that does not exist or is of the wrong kind. The
//! parser never panics on any command line (the `machine_options` fuzz
//! target holds it to that). It creates nothing: building the machine is
//! the VM's job.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use virtio_core::features::DeviceType;
use virtio_devices::DEFAULT_QUEUE_SIZE;
use virtio_devices::misbehave::Misbehave;

/// Why a command line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// An option this monitor does not know.
    UnknownOption(String),
    /// An option given without its argument.
    MissingArgument(String),
    /// An option that may appear once appeared again.
    Repeated(String),
    /// `-object`, `-chardev` or `-device` of an unknown type.
    UnknownType {
        /// The option.
        option: &'static str,
        /// The type given.
        ty: String,
    },
    /// A key the type does not take.
    UnknownKey {
        /// The option.
        option: &'static str,
        /// The type.
        ty: String,
        /// The key.
        key: String,
    },
    /// A key given twice in one option.
    RepeatedKey {
        /// The option.
        option: &'static str,
        /// The key.
        key: String,
    },
    /// A required key is missing.
    MissingKey {
        /// The option.
        option: &'static str,
        /// The type.
        ty: String,
        /// The key.
        key: &'static str,
    },
    /// A value that does not parse or is out of range.
    BadValue {
        /// The option.
        option: &'static str,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Two objects, chardevs or devices with the same id.
    DuplicateId(String),
    /// A reference to an id that is not defined, or is of another kind.
    UnknownId {
        /// Who refers (e.g. `-device virtio-rng-device`).
        by: String,
        /// The key that refers.
        key: &'static str,
        /// The id.
        id: String,
        /// The kind of thing expected.
        expected: &'static str,
    },
    /// Settings that contradict each other.
    Conflict(String),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::UnknownOption(o) => write!(f, "unknown option '{o}'"),
            OptionError::MissingArgument(o) => write!(f, "option '{o}' needs an argument"),
            OptionError::Repeated(o) => write!(f, "option '{o}' given more than once"),
            OptionError::UnknownType { option, ty } => {
                write!(f, "{option}: unknown type '{ty}'")
            }
            OptionError::UnknownKey { option, ty, key } => {
                write!(f, "{option} {ty}: unknown key '{key}'")
            }
            OptionError::RepeatedKey { option, key } => {
                write!(f, "{option}: key '{key}' given more than once")
            }
            OptionError::MissingKey { option, ty, key } => {
                write!(f, "{option} {ty}: missing '{key}='")
            }
            OptionError::BadValue {
                option,
                key,
                value,
                expected,
            } => write!(f, "{option}: {key}='{value}' is not {expected}"),
            OptionError::DuplicateId(id) => write!(f, "id '{id}' is defined more than once"),
            OptionError::UnknownId {
                by,
                key,
                id,
                expected,
            } => write!(f, "{by}: {key}='{id}' does not name {expected}"),
            OptionError::Conflict(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for OptionError {}

/// One `type,key=value,...` argument, split with QEMU's escaping (`,,` is
/// a literal comma).
#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyVals {
    option: &'static str,
    ty: String,
    keys: BTreeMap<String, String>,
}

fn split_commas(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

impl KeyVals {
    /// Parses `arg`; the first element is the type unless it has `=` and
    /// `implied` names the key it stands for (QEMU's implied key, e.g.
    /// `-machine microvm` is `type=microvm`).
    fn parse(option: &'static str, arg: &str) -> Result<KeyVals, OptionError> {
        let mut parts = split_commas(arg).into_iter();
        let ty = parts.next().unwrap_or_default();
        if ty.is_empty() || ty.contains('=') {
            return Err(OptionError::BadValue {
                option,
                key: "type".into(),
                value: ty,
                expected: "a type name first",
            });
        }
        let mut keys = BTreeMap::new();
        for p in parts {
            if p.is_empty() {
                continue;
            }
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                // A bare flag means `on`, as in QEMU.
                None => (p.clone(), "on".to_string()),
            };
            if keys.insert(k.clone(), v).is_some() {
                return Err(OptionError::RepeatedKey { option, key: k });
            }
        }
        Ok(KeyVals { option, ty, keys })
    }

    /// Parses `arg` made only of `key=value` elements (`-drive`,
    /// `-blockdev`); `label` names it in messages.
    fn parse_keys(option: &'static str, label: &str, arg: &str) -> Result<KeyVals, OptionError> {
        let mut kv = KeyVals::parse(option, &format!("{label},{arg}"))?;
        kv.ty = label.to_string();
        Ok(kv)
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.keys.remove(key)
    }

    /// One of `choices` (value, result), or an error listing them.
    fn take_choice<T: Copy>(
        &mut self,
        key: &str,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Result<Option<T>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => choices
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| Some(*t))
                .ok_or_else(|| self.bad(key, &v, expected)),
        }
    }

    fn require(&mut self, key: &'static str) -> Result<String, OptionError> {
        self.take(key).ok_or_else(|| OptionError::MissingKey {
            option: self.option,
            ty: self.ty.clone(),
            key,
        })
    }

    fn bad(&self, key: &str, value: &str, expected: &'static str) -> OptionError {
        OptionError::BadValue {
            option: self.option,
            key: key.into(),
            value: value.into(),
            expected,
        }
    }

    fn take_bool(&mut self, key: &str, default: bool) -> Result<bool, OptionError> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| self.bad(key, &v, "on or off")),
        }
    }

    fn take_size(&mut self, key: &str) -> Result<Option<u64>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_size(&v)
                .map(Some)
                .ok_or_else(|| self.bad(key, &v, "a size (e.g. 64M)")),
        }
    }

    fn take_u32(&mut self, key: &str) -> Result<Option<u32>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.bad(key, &v, "a number")),
        }
    }

    /// Fails on the first key nobody took.
    fn finish(self) -> Result<(), OptionError> {
        match self.keys.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(OptionError::UnknownKey {
                option: self.option,
                ty: self.ty,
                key,
            }),
        }
    }
}

/// `misbehave=<mode>` of a `-device`: a mode of [`Misbehave`], or an
/// error naming them all.
/// The largest configuration space a `vhost-user-device` reads from its
/// backend (vhost-user.rst: `VHOST_USER_GET_CONFIG` carries at most 256
/// bytes).
pub const VHOST_USER_MAX_CONFIG: usize = 256;

/// The request queues a blk device served over vhost-user has unless
/// `num-queues` says otherwise: 1024, QEMU's `VIRTIO_QUEUE_MAX`, since its
/// `vhost-user-blk-pci` asks one per vCPU by default and refuses a backend
/// with fewer; the frontend tells the guest how many it uses.
pub const VHOST_USER_BLK_QUEUES: u16 = 1024;

/// The queue pairs a net device served over vhost-user has unless `mq=on`
/// or `queue-pairs` says otherwise: 512, as many receive and transmit
/// queues as QEMU's `VIRTIO_QUEUE_MAX` (1024). The frontend
/// decides how many it uses (QEMU's `-netdev vhost-user,queues=N`); the
/// device allocates receive buffers only for the queues it is given.
pub const VHOST_USER_NET_QUEUE_PAIRS: u32 = 512;

/// `num-queues=N`: 1 to 1024 (QEMU's `VIRTIO_QUEUE_MAX`), `None` when
/// absent.
fn take_num_queues(kv: &mut KeyVals) -> Result<Option<u16>, OptionError> {
    let Some(n) = kv.take_u32("num-queues")? else {
        return Ok(None);
    };
    u16::try_from(n)
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .map(Some)
        .ok_or_else(|| kv.bad("num-queues", &n.to_string(), "1 to 1024"))
}

/// `queue-size=N`: each queue's maximum size, a power of two up to 32768
/// (§2.7); `default` when absent.
fn take_queue_size(kv: &mut KeyVals, default: u16) -> Result<u16, OptionError> {
    let Some(size) = kv.take_u32("queue-size")? else {
        return Ok(default);
    };
    u16::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && (2..=32768).contains(s))
        .ok_or_else(|| {
            kv.bad(
                "queue-size",
                &size.to_string(),
                "a power of two from 2 to 32768",
            )
        })
}

fn take_misbehave(kv: &mut KeyVals) -> Result<Option<Misbehave>, OptionError> {
    match kv.take("misbehave") {
        None => Ok(None),
        Some(v) => Misbehave::from_name(&v)
            .map(Some)
            .ok_or_else(|| kv.bad("misbehave", &v, Misbehave::EXPECTED)),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parses a size with an optional K/M/G/T suffix (powers of 1024; a bare
/// number of `-m` is MiB in QEMU, handled by the caller).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        (i, 't' | 'T') => (&v[..i], 1 << 40),
        (i, 'b' | 'B') => (&v[..i], 1),
        _ => (v, 1),
    };
    let n: u64 = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        num.parse().ok()?
    };
    n.checked_mul(mult)
}

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
    /// `ringbuf[,size=…]`.
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
    /// `vhost-user,chardev=…`: the device's queues are served by an
    /// external vhost-user backend on the chardev's unix socket
    /// ([`vhost_user::frontend`]).
    VhostUser {
        /// The `-chardev socket,path=…` id.
        chardev: String,
    },
    /// `tap,ifname=NAME` or `tap,fd=N`.
    Tap {
        /// The interface name (created if missing).
        ifname: Option<String>,
        /// An open tap file descriptor to use instead.
        fd: Option<i32>,
    },
}

/// A device (`-device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    /// `virtio-rng-device,rng=…[,queue-size=N][,ioeventfd=on|off]`.
    Rng {
        /// The entropy source id.
        rng: String,
        /// The request queue's size (a power of two; default
        /// [`DEFAULT_QUEUE_SIZE`]).
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
        /// [`DEFAULT_QUEUE_SIZE`]).
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
        /// one in our monitor, [`VHOST_USER_BLK_QUEUES`] when served over
        /// vhost-user (the frontend decides how many it uses).
        num_queues: Option<u16>,
        /// Each queue's size (a power of two; default
        /// [`DEFAULT_QUEUE_SIZE`]).
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
        /// one in our monitor, [`VHOST_USER_NET_QUEUE_PAIRS`] when served
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
    /// Chardevs, by id.
    pub chardevs: Vec<(String, ChardevKind)>,
    /// Disk backends, by id.
    pub drives: Vec<DriveConfig>,
    /// Network backends, by id.
    pub netdevs: Vec<(String, NetdevKind)>,
    /// Devices, in command-line order.
    pub devices: Vec<DeviceConfig>,
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

/// Parses a monitor's chardev spec: `unix:PATH,server=on,wait=off` (or
/// `server,nowait`). Only a listening unix socket that does not wait for
/// its first client is supported.
fn parse_monitor(option: &'static str, arg: &str) -> Result<PathBuf, OptionError> {
    let bad = |key: &str, value: &str, expected: &'static str| OptionError::BadValue {
        option,
        key: key.into(),
        value: value.into(),
        expected,
    };
    let parts = split_commas(arg);
    let first = parts.first().map(String::as_str).unwrap_or("");
    let Some(path) = first.strip_prefix("unix:") else {
        return Err(bad("chardev", first, "unix:PATH (a unix socket)"));
    };
    if path.is_empty() {
        return Err(bad("unix", path, "a socket path"));
    }
    let mut server = false;
    let mut wait = true;
    for p in parts.iter().skip(1).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p.as_str(), "on"));
        match k {
            "server" => server = parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            "wait" => wait = parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            "nowait" => wait = !parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            _ => {
                return Err(OptionError::UnknownKey {
                    option,
                    ty: "unix".into(),
                    key: k.into(),
                });
            }
        }
    }
    if !server {
        return Err(OptionError::Conflict(format!(
            "{option} {arg}: only server=on is supported (the monitor listens)"
        )));
    }
    if wait {
        return Err(OptionError::Conflict(format!(
            "{option} {arg}: only wait=off is supported (the guest does not wait for a client)"
        )));
    }
    Ok(PathBuf::from(path))
}

impl DeviceConfig {
    /// The `-device` type name (`virtio-rng-device`, `virtconsole`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            DeviceConfig::Rng { .. } => "virtio-rng-device",
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

/// What an id names, for duplicate and reference checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IdKind {
    Memory,
    Rng,
    Chardev,
    Drive,
    Netdev,
    Device,
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

const FORMATS: &[(&str, DiskFormat)] = &[("raw", DiskFormat::Raw), ("qcow2", DiskFormat::Qcow2)];
const CACHES: &[(&str, CacheMode)] = &[
    ("writeback", CacheMode::Writeback),
    ("none", CacheMode::None),
    ("writethrough", CacheMode::Writethrough),
];
const DISCARDS: &[(&str, bool)] = &[
    ("ignore", false),
    ("off", false),
    ("unmap", true),
    ("on", true),
];

fn add_drive(
    cfg: &mut MachineConfig,
    ids: &mut HashMap<String, IdKind>,
    drive: DriveConfig,
) -> Result<(), OptionError> {
    if ids.insert(drive.id.clone(), IdKind::Drive).is_some() {
        return Err(OptionError::DuplicateId(drive.id));
    }
    cfg.drives.push(drive);
    Ok(())
}

/// Parses a command line (without the program name).
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<MachineConfig, OptionError> {
    let mut cfg = MachineConfig {
        memory: 64 << 20,
        ..MachineConfig::default()
    };
    let mut ids: HashMap<String, IdKind> = HashMap::new();
    let mut seen_m = false;
    let mut seen_machine = false;
    // `-blockdev driver=file` nodes: name, path, cache.direct.
    let mut file_nodes: Vec<(String, PathBuf, bool)> = Vec::new();
    let mut it = args.iter().map(|a| a.as_ref());
    while let Some(opt) = it.next() {
        let name = opt.trim_start_matches('-');
        if !opt.starts_with('-') || name.is_empty() {
            return Err(OptionError::UnknownOption(opt.to_string()));
        }
        let known = [
            "m", "machine", "M", "object", "chardev", "drive", "blockdev", "netdev", "device",
            "kernel", "append", "monitor", "qmp",
        ];
        if !known.contains(&name) {
            return Err(OptionError::UnknownOption(opt.to_string()));
        }
        let arg = it
            .next()
            .ok_or_else(|| OptionError::MissingArgument(opt.to_string()))?;
        match name {
            "m" => {
                if std::mem::replace(&mut seen_m, true) {
                    return Err(OptionError::Repeated("-m".into()));
                }
                let v = arg.strip_prefix("size=").unwrap_or(arg);
                // A bare number is MiB (QEMU).
                let bytes = if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
                    v.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << 20))
                } else {
                    parse_size(v)
                };
                cfg.memory =
                    bytes
                        .filter(|&b| b >= 1 << 20)
                        .ok_or_else(|| OptionError::BadValue {
                            option: "-m",
                            key: "size".into(),
                            value: arg.to_string(),
                            expected: "a RAM size of at least 1M",
                        })?;
            }
            "machine" | "M" => {
                if std::mem::replace(&mut seen_machine, true) {
                    return Err(OptionError::Repeated("-machine".into()));
                }
                let mut kv = KeyVals::parse("-machine", arg)?;
                if kv.ty != "microvm" && kv.ty != "virtio-harness" {
                    return Err(OptionError::UnknownType {
                        option: "-machine",
                        ty: kv.ty,
                    });
                }
                cfg.memory_backend = kv.take("memory-backend");
                // Accepted for compatibility with QEMU microvm command lines.
                kv.take_bool("acpi", false)?;
                kv.finish()?;
            }
            "object" => {
                let mut kv = KeyVals::parse("-object", arg)?;
                let id = kv.require("id")?;
                let kind = match kv.ty.as_str() {
                    "memory-backend-ram" | "memory-backend-file" | "memory-backend-memfd" => {
                        let size = kv.take_size("size")?.ok_or(OptionError::MissingKey {
                            option: "-object",
                            ty: kv.ty.clone(),
                            key: "size",
                        })?;
                        let kind = match kv.ty.as_str() {
                            "memory-backend-ram" => MemoryBackendKind::Ram,
                            "memory-backend-file" => MemoryBackendKind::File {
                                path: kv.require("mem-path")?.into(),
                            },
                            _ => MemoryBackendKind::Memfd,
                        };
                        let share = kv.take_bool("share", kind == MemoryBackendKind::Memfd)?;
                        let prealloc = kv.take_bool("prealloc", false)?;
                        if kind == MemoryBackendKind::Memfd {
                            kv.take_bool("seal", true)?;
                        }
                        cfg.memory_backends.push(MemoryBackendConfig {
                            id: id.clone(),
                            kind,
                            size,
                            share,
                            prealloc,
                        });
                        IdKind::Memory
                    }
                    "rng-builtin" | "rng-random" | "rng-egd" | "rng-deterministic" => {
                        let rng = match kv.ty.as_str() {
                            "rng-builtin" => RngConfig::Builtin,
                            "rng-random" => RngConfig::Random {
                                filename: kv
                                    .take("filename")
                                    .unwrap_or_else(|| "/dev/urandom".into())
                                    .into(),
                            },
                            "rng-egd" => RngConfig::Egd {
                                chardev: kv.require("chardev")?,
                            },
                            _ => {
                                let seed = kv.take("seed").unwrap_or_else(|| "0".into());
                                RngConfig::Deterministic {
                                    seed: seed
                                        .parse()
                                        .map_err(|_| kv.bad("seed", &seed, "a number"))?,
                                }
                            }
                        };
                        cfg.rngs.push((id.clone(), rng));
                        IdKind::Rng
                    }
                    _ => {
                        return Err(OptionError::UnknownType {
                            option: "-object",
                            ty: kv.ty,
                        });
                    }
                };
                kv.finish()?;
                if ids.insert(id.clone(), kind).is_some() {
                    return Err(OptionError::DuplicateId(id));
                }
            }
            "chardev" => {
                let mut kv = KeyVals::parse("-chardev", arg)?;
                let id = kv.require("id")?;
                let kind = match kv.ty.as_str() {
                    "null" => ChardevKind::Null,
                    "ringbuf" => ChardevKind::Ringbuf {
                        size: kv.take_size("size")?.unwrap_or(64 << 10),
                    },
                    "file" => ChardevKind::File {
                        path: kv.require("path")?.into(),
                        input_path: kv.take("input-path").map(Into::into),
                    },
                    "pipe" => ChardevKind::Pipe {
                        path: kv.require("path")?.into(),
                    },
                    "pty" => ChardevKind::Pty,
                    "stdio" => {
                        kv.take_bool("signal", true)?;
                        ChardevKind::Stdio
                    }
                    "socket" => {
                        let path = kv.take("path").map(PathBuf::from);
                        let host = kv.take("host");
                        let port = kv.take_u32("port")?;
                        let server = kv.take_bool("server", false)?;
                        // QEMU's `wait=off`: we never wait for a client.
                        kv.take_bool("wait", false)?;
                        let reconnect = kv.take_u32("reconnect")?;
                        let tcp = match (host, port) {
                            (h, Some(p)) if p <= 65535 => {
                                Some(format!("{}:{p}", h.unwrap_or_else(|| "127.0.0.1".into())))
                            }
                            (_, Some(p)) => {
                                return Err(kv.bad("port", &p.to_string(), "a port number"));
                            }
                            (Some(_), None) => {
                                return Err(OptionError::MissingKey {
                                    option: "-chardev",
                                    ty: kv.ty,
                                    key: "port",
                                });
                            }
                            (None, None) => None,
                        };
                        if path.is_some() == tcp.is_some() {
                            return Err(OptionError::Conflict(format!(
                                "-chardev socket,id={id}: give exactly one of path= or host=/port="
                            )));
                        }
                        ChardevKind::Socket {
                            path,
                            tcp,
                            server,
                            reconnect,
                        }
                    }
                    _ => {
                        return Err(OptionError::UnknownType {
                            option: "-chardev",
                            ty: kv.ty,
                        });
                    }
                };
                kv.finish()?;
                if ids.insert(id.clone(), IdKind::Chardev).is_some() {
                    return Err(OptionError::DuplicateId(id));
                }
                cfg.chardevs.push((id, kind));
            }
            "drive" => {
                let mut kv = KeyVals::parse_keys("-drive", "drive", arg)?;
                match kv.take("if").as_deref() {
                    None | Some("none") => {}
                    Some(other) => {
                        return Err(OptionError::BadValue {
                            option: "-drive",
                            key: "if".into(),
                            value: other.into(),
                            expected: "none (attach it with -device virtio-blk-device,drive=ID)",
                        });
                    }
                }
                let drive = DriveConfig {
                    id: kv.require("id")?,
                    path: kv.require("file")?.into(),
                    format: kv
                        .take_choice("format", FORMATS, "raw or qcow2")?
                        .unwrap_or(DiskFormat::Raw),
                    read_only: kv.take_bool("readonly", false)?,
                    cache: kv
                        .take_choice("cache", CACHES, "writeback, none or writethrough")?
                        .unwrap_or(CacheMode::Writeback),
                    discard: kv
                        .take_choice("discard", DISCARDS, "ignore, off, unmap or on")?
                        .unwrap_or(false),
                };
                kv.finish()?;
                add_drive(&mut cfg, &mut ids, drive)?;
            }
            "blockdev" => {
                let mut kv = KeyVals::parse_keys("-blockdev", "blockdev", arg)?;
                let driver = kv.require("driver")?;
                let id = kv.require("node-name")?;
                if driver == "file" {
                    // A protocol node: named so a format node can sit on it.
                    let path = kv.require("filename")?;
                    let direct = kv.take_bool("cache.direct", false)?;
                    kv.finish()?;
                    file_nodes.push((id, path.into(), direct));
                    continue;
                }
                let format = FORMATS
                    .iter()
                    .find(|(n, _)| *n == driver)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| OptionError::BadValue {
                        option: "-blockdev",
                        key: "driver".into(),
                        value: driver.clone(),
                        expected: "file, raw or qcow2",
                    })?;
                let (path, direct) = match (kv.take("file"), kv.take("file.filename")) {
                    (Some(node), None) => {
                        let Some((_, path, direct)) =
                            file_nodes.iter().find(|(n, _, _)| *n == node)
                        else {
                            return Err(OptionError::UnknownId {
                                by: format!("-blockdev node-name={id}"),
                                key: "file",
                                id: node,
                                expected: "an earlier -blockdev driver=file node",
                            });
                        };
                        (path.clone(), *direct)
                    }
                    (None, Some(path)) => {
                        kv.take_choice("file.driver", &[("file", ())], "file")?;
                        (path.into(), kv.take_bool("file.cache.direct", false)?)
                    }
                    _ => {
                        return Err(OptionError::Conflict(format!(
                            "-blockdev node-name={id}: give exactly one of file=NODE or file.filename=PATH"
                        )));
                    }
                };
                let direct = kv.take_bool("cache.direct", direct)?;
                let drive = DriveConfig {
                    id,
                    path,
                    format,
                    read_only: kv.take_bool("read-only", false)?,
                    cache: if direct {
                        CacheMode::None
                    } else {
                        CacheMode::Writeback
                    },
                    discard: kv
                        .take_choice("discard", DISCARDS, "ignore, off, unmap or on")?
                        .unwrap_or(false),
                };
                kv.finish()?;
                add_drive(&mut cfg, &mut ids, drive)?;
            }
            "netdev" => {
                let mut kv = KeyVals::parse("-netdev", arg)?;
                let id = kv.require("id")?;
                let kind = match kv.ty.as_str() {
                    "loopback" => NetdevKind::Loopback,
                    "hubport" => NetdevKind::Hubport {
                        hubid: kv.take_u32("hubid")?.ok_or(OptionError::MissingKey {
                            option: "-netdev",
                            ty: kv.ty.clone(),
                            key: "hubid",
                        })?,
                    },
                    "stream" => {
                        let server = kv.take_bool("server", false)?;
                        let ty = kv.require("addr.type")?;
                        let (path, inet) = match ty.as_str() {
                            "unix" => (Some(kv.require("addr.path")?.into()), None),
                            "inet" => {
                                let host = kv.require("addr.host")?;
                                let port = kv.require("addr.port")?;
                                if port.parse::<u16>().is_err() {
                                    return Err(kv.bad("addr.port", &port, "a port number"));
                                }
                                (None, Some(format!("{host}:{port}")))
                            }
                            _ => return Err(kv.bad("addr.type", &ty, "unix or inet")),
                        };
                        NetdevKind::Stream { server, path, inet }
                    }
                    "dgram" => {
                        let inet = |kv: &mut KeyVals, side: &'static str| {
                            let ty_key = if side == "local" {
                                "local.type"
                            } else {
                                "remote.type"
                            };
                            let ty = kv.require(ty_key)?;
                            if ty != "inet" {
                                return Err(kv.bad(ty_key, &ty, "inet"));
                            }
                            let (h, p) = if side == "local" {
                                (kv.require("local.host")?, kv.require("local.port")?)
                            } else {
                                (kv.require("remote.host")?, kv.require("remote.port")?)
                            };
                            if p.parse::<u16>().is_err() {
                                return Err(kv.bad(side, &p, "a port number"));
                            }
                            Ok(format!("{h}:{p}"))
                        };
                        let local = inet(&mut kv, "local")?;
                        let remote = inet(&mut kv, "remote")?;
                        NetdevKind::Dgram { local, remote }
                    }
                    "vhost-user" => NetdevKind::VhostUser {
                        chardev: kv.require("chardev")?,
                    },
                    "tap" => {
                        // QEMU's scripts are not run here; `no` is accepted.
                        for k in ["script", "downscript"] {
                            if let Some(v) = kv.take(k)
                                && v != "no"
                            {
                                return Err(kv.bad(k, &v, "no (scripts are not run)"));
                            }
                        }
                        kv.take_bool("vhost", false)?;
                        let ifname = kv.take("ifname");
                        let fd = match kv.take("fd") {
                            None => None,
                            Some(v) => Some(
                                v.parse::<i32>()
                                    .ok()
                                    .filter(|f| *f >= 0)
                                    .ok_or_else(|| kv.bad("fd", &v, "an open file descriptor"))?,
                            ),
                        };
                        if ifname.is_some() == fd.is_some() {
                            return Err(OptionError::Conflict(format!(
                                "-netdev tap,id={id}: give exactly one of ifname= or fd="
                            )));
                        }
                        NetdevKind::Tap { ifname, fd }
                    }
                    _ => {
                        return Err(OptionError::UnknownType {
                            option: "-netdev",
                            ty: kv.ty,
                        });
                    }
                };
                kv.finish()?;
                if ids.insert(id.clone(), IdKind::Netdev).is_some() {
                    return Err(OptionError::DuplicateId(id));
                }
                cfg.netdevs.push((id, kind));
            }
            "device" => {
                let mut kv = KeyVals::parse("-device", arg)?;
                let id = kv.take("id");
                let dev = match kv.ty.as_str() {
                    "virtio-rng-device" => DeviceConfig::Rng {
                        rng: kv.require("rng")?,
                        queue_size: take_queue_size(&mut kv, DEFAULT_QUEUE_SIZE)?,
                        ioeventfd: kv.take_bool("ioeventfd", true)?,
                        misbehave: take_misbehave(&mut kv)?,
                    },
                    "virtio-blk-device" => {
                        let serial = kv.take("serial");
                        if let Some(sn) = &serial
                            && sn.len() > 20
                        {
                            return Err(kv.bad("serial", sn, "at most 20 bytes (§5.2.6 GET_ID)"));
                        }
                        let num_queues = take_num_queues(&mut kv)?;
                        let queue_size = take_queue_size(&mut kv, DEFAULT_QUEUE_SIZE)?;
                        DeviceConfig::Blk {
                            drive: kv.require("drive")?,
                            serial,
                            num_queues,
                            queue_size,
                            discard: kv.take_bool("discard", true)?,
                            write_zeroes: kv.take_bool("write-zeroes", true)?,
                            ioeventfd: kv.take_bool("ioeventfd", true)?,
                            misbehave: take_misbehave(&mut kv)?,
                        }
                    }
                    "virtio-net-device" => {
                        let mac = match kv.take("mac") {
                            None => None,
                            Some(v) => Some(parse_mac(&v).ok_or_else(|| {
                                kv.bad("mac", &v, "a MAC address like 52:54:00:12:34:56")
                            })?),
                        };
                        let mq = kv.take_bool("mq", false)?;
                        let given = kv.take_u32("queue-pairs")?;
                        let pairs = given.unwrap_or(if mq { 2 } else { 1 });
                        if !(1..=VHOST_USER_NET_QUEUE_PAIRS).contains(&pairs) || (pairs > 1 && !mq)
                        {
                            return Err(kv.bad(
                                "queue-pairs",
                                &pairs.to_string(),
                                "1 without mq=on, 1 to 512 with it",
                            ));
                        }
                        // Neither given: the default depends on where the
                        // device is served.
                        let pairs = (mq || given.is_some()).then_some(pairs as u16);
                        let queue_size = take_queue_size(&mut kv, DEFAULT_QUEUE_SIZE)?;
                        let mtu = match kv.take_u32("host_mtu")? {
                            None => None,
                            Some(m) => {
                                Some(u16::try_from(m).ok().filter(|m| *m >= 68).ok_or_else(
                                    || kv.bad("host_mtu", &m.to_string(), "68 to 65535"),
                                )?)
                            }
                        };
                        DeviceConfig::Net {
                            id: id.clone(),
                            netdev: kv.require("netdev")?,
                            mtu,
                            mac,
                            queue_pairs: pairs,
                            queue_size,
                            ioeventfd: kv.take_bool("ioeventfd", true)?,
                            misbehave: take_misbehave(&mut kv)?,
                        }
                    }
                    "vhost-user-blk" => {
                        let num_queues = take_num_queues(&mut kv)?.unwrap_or(1);
                        // QEMU's vhost-user-blk default.
                        let queue_size = take_queue_size(&mut kv, 128)?;
                        DeviceConfig::VhostUser {
                            ty: VhostUserType::Blk {
                                num_queues,
                                queue_size,
                            },
                            chardev: kv.require("chardev")?,
                            ioeventfd: kv.take_bool("ioeventfd", true)?,
                        }
                    }
                    "vhost-user-rng" => DeviceConfig::VhostUser {
                        ty: VhostUserType::Rng,
                        chardev: kv.require("chardev")?,
                        ioeventfd: kv.take_bool("ioeventfd", true)?,
                    },
                    "vhost-user-device" | "vhost-user-test-device" => {
                        let id = kv.require("virtio-id")?;
                        let device_type = id
                            .parse::<u32>()
                            .ok()
                            .and_then(DeviceType::from_id)
                            .ok_or_else(|| kv.bad("virtio-id", &id, "a virtio device ID (§5)"))?;
                        let num_vqs = kv.take_u32("num_vqs")?.unwrap_or(1);
                        let num_vqs = u16::try_from(num_vqs)
                            .ok()
                            .filter(|n| (1..=1024).contains(n))
                            .ok_or_else(|| kv.bad("num_vqs", &num_vqs.to_string(), "1 to 1024"))?;
                        let vq_size = match kv.take_u32("vq_size")? {
                            None => 64,
                            Some(n) => u16::try_from(n)
                                .ok()
                                .filter(|n| n.is_power_of_two() && *n <= 32768)
                                .ok_or_else(|| {
                                    kv.bad("vq_size", &n.to_string(), "a power of two up to 32768")
                                })?,
                        };
                        let config_size = kv.take_u32("config_size")?.unwrap_or(0);
                        let config_size = u16::try_from(config_size)
                            .ok()
                            .filter(|n| usize::from(*n) <= VHOST_USER_MAX_CONFIG)
                            .ok_or_else(|| {
                                kv.bad("config_size", &config_size.to_string(), "0 to 256")
                            })?;
                        DeviceConfig::VhostUser {
                            ty: VhostUserType::Generic {
                                device_type,
                                num_vqs,
                                vq_size,
                                config_size,
                            },
                            chardev: kv.require("chardev")?,
                            ioeventfd: kv.take_bool("ioeventfd", true)?,
                        }
                    }
                    "virtio-serial-device" => DeviceConfig::Serial {
                        id: id.clone(),
                        max_ports: kv.take_u32("max_ports")?.unwrap_or(31),
                        queue_size: take_queue_size(&mut kv, DEFAULT_QUEUE_SIZE)?,
                        ioeventfd: kv.take_bool("ioeventfd", true)?,
                        misbehave: take_misbehave(&mut kv)?,
                    },
                    "virtconsole" | "virtserialport" => {
                        // The bus is implied: ports join the last
                        // virtio-serial-device.
                        kv.take("bus");
                        DeviceConfig::Port {
                            console: kv.ty == "virtconsole",
                            chardev: kv.require("chardev")?,
                            name: kv.take("name"),
                        }
                    }
                    _ => {
                        return Err(OptionError::UnknownType {
                            option: "-device",
                            ty: kv.ty,
                        });
                    }
                };
                kv.finish()?;
                if let Some(id) = id
                    && ids.insert(id.clone(), IdKind::Device).is_some()
                {
                    return Err(OptionError::DuplicateId(id));
                }
                cfg.devices.push(dev);
            }
            "kernel" => {
                if cfg.kernel.replace(arg.into()).is_some() {
                    return Err(OptionError::Repeated("-kernel".into()));
                }
            }
            "append" => {
                if !cfg.append.is_empty() {
                    return Err(OptionError::Repeated("-append".into()));
                }
                cfg.append = arg.to_string();
            }
            "monitor" | "qmp" => {
                let (option, protocol) = if name == "monitor" {
                    ("-monitor", MonitorProtocol::Hmp)
                } else {
                    ("-qmp", MonitorProtocol::Qmp)
                };
                let path = parse_monitor(option, arg)?;
                if cfg.monitors.iter().any(|m| m.path == path) {
                    return Err(OptionError::Conflict(format!(
                        "{option}: socket {} is used twice",
                        path.display()
                    )));
                }
                cfg.monitors.push(MonitorConfig { protocol, path });
            }
            _ => return Err(OptionError::UnknownOption(opt.to_string())),
        }
    }
    check_references(&cfg, &ids)?;
    Ok(cfg)
}

/// A vhost-user frontend connects to a unix socket: its chardev must be
/// `socket,path=…` without `server=on`.
fn vhost_user_socket(cfg: &MachineConfig, by: &str, chardev: &str) -> Result<(), OptionError> {
    match cfg.chardevs.iter().find(|(id, _)| id == chardev) {
        Some((
            _,
            ChardevKind::Socket {
                path: Some(_),
                server: false,
                ..
            },
        )) => Ok(()),
        _ => Err(OptionError::Conflict(format!(
            "{by}: chardev '{chardev}' must be a unix socket client (-chardev socket,id={chardev},path=PATH)"
        ))),
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
        devs.chain(nets).collect()
    }
}

fn check_references(cfg: &MachineConfig, ids: &HashMap<String, IdKind>) -> Result<(), OptionError> {
    let refers = |by: &str, key: &'static str, id: &str, kind: IdKind, expected: &'static str| {
        if ids.get(id) == Some(&kind) {
            Ok(())
        } else {
            Err(OptionError::UnknownId {
                by: by.to_string(),
                key,
                id: id.to_string(),
                expected,
            })
        }
    };
    if let Some(mb) = &cfg.memory_backend {
        refers(
            "-machine",
            "memory-backend",
            mb,
            IdKind::Memory,
            "a memory backend",
        )?;
        if let Some(b) = cfg.ram_backend()
            && b.size != cfg.memory
        {
            return Err(OptionError::Conflict(format!(
                "-m is {} bytes but memory backend '{}' has {} bytes",
                cfg.memory, b.id, b.size
            )));
        }
    }
    for (id, rng) in &cfg.rngs {
        if let RngConfig::Egd { chardev } = rng {
            refers(
                &format!("-object rng-egd,id={id}"),
                "chardev",
                chardev,
                IdKind::Chardev,
                "a chardev",
            )?;
        }
    }
    // A chardev has one user (QEMU: "device is in use"), an rng one device.
    let mut chardev_user: HashMap<String, String> = HashMap::new();
    let mut claim = |chardev: &str, by: String| match chardev_user.get(chardev) {
        Some(first) => Err(OptionError::Conflict(format!(
            "{by}: chardev '{chardev}' is already used by {first}"
        ))),
        None => {
            chardev_user.insert(chardev.to_string(), by);
            Ok(())
        }
    };
    for (id, rng) in &cfg.rngs {
        if let RngConfig::Egd { chardev } = rng {
            claim(chardev, format!("-object rng-egd,id={id}"))?;
        }
    }
    for (id, kind) in &cfg.netdevs {
        if let NetdevKind::VhostUser { chardev } = kind {
            let by = format!("-netdev vhost-user,id={id}");
            refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
            vhost_user_socket(cfg, &by, chardev)?;
            claim(chardev, by)?;
        }
    }
    let mut rng_user: std::collections::HashSet<&str> = Default::default();
    let mut drive_user: std::collections::HashSet<&str> = Default::default();
    let mut netdev_user: std::collections::HashSet<&str> = Default::default();
    // `None` until a virtio-serial-device: the ports it still has room for.
    let mut ports_left: Option<u32> = None;
    for dev in &cfg.devices {
        let by = format!("-device {}", dev.type_name());
        match dev {
            DeviceConfig::Rng { rng, .. } => {
                refers(&by, "rng", rng, IdKind::Rng, "an rng object")?;
                if !rng_user.insert(rng.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: rng '{rng}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::Blk { drive, .. } => {
                refers(&by, "drive", drive, IdKind::Drive, "a drive")?;
                if !drive_user.insert(drive.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: drive '{drive}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::Net { netdev, .. } => {
                refers(&by, "netdev", netdev, IdKind::Netdev, "a netdev")?;
                if !netdev_user.insert(netdev.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: netdev '{netdev}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::VhostUser { chardev, .. } => {
                refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
                vhost_user_socket(cfg, &by, chardev)?;
                claim(chardev, format!("{by},chardev={chardev}"))?;
            }
            DeviceConfig::Serial { max_ports, .. } => ports_left = Some(*max_ports),
            DeviceConfig::Port { chardev, .. } => {
                refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
                let Some(left) = ports_left.as_mut() else {
                    return Err(OptionError::Conflict(format!(
                        "{by}: needs a -device virtio-serial-device before it"
                    )));
                };
                if *left == 0 {
                    return Err(OptionError::Conflict(format!(
                        "{by},chardev={chardev}: the virtio-serial-device has no port left (max_ports)"
                    )));
                }
                *left -= 1;
                claim(chardev, format!("{by},chardev={chardev}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<MachineConfig, OptionError> {
        let args: Vec<&str> = s.split_whitespace().collect();
        parse(&args)
    }

    #[test]
    fn the_issue_example_parses() {
        let c = p("-m 64M -machine microvm,memory-backend=mem0,acpi=off \
                   -object memory-backend-memfd,id=mem0,size=64M \
                   -object rng-random,id=rng0,filename=/dev/urandom -object rng-builtin,id=rng1 \
                   -object rng-egd,id=rng2,chardev=c0 -chardev socket,id=c0,path=/tmp/egd.sock \
                   -device virtio-rng-device,rng=rng0 -chardev file,id=c1,path=out.log \
                   -device virtio-serial-device -device virtconsole,chardev=c1 \
                   -kernel guest.elf -append console=hvc0")
        .unwrap();
        assert_eq!(c.memory, 64 << 20);
        assert_eq!(c.ram_backend().unwrap().kind, MemoryBackendKind::Memfd);
        assert!(c.ram_backend().unwrap().share);
        assert_eq!(c.rngs.len(), 3);
        assert_eq!(c.chardevs.len(), 2);
        assert_eq!(c.devices.len(), 3);
        assert_eq!(c.kernel, Some(PathBuf::from("guest.elf")));
        assert_eq!(c.append, "console=hvc0");
        let ram = c.ram_host_memory();
        assert_eq!(
            ram.kind,
            backends::hostmem::HostMemoryKind::Memfd { seal: true }
        );
        assert_eq!((ram.size, ram.share, ram.prealloc), (64 << 20, true, false));
        let plain = p("-m 32M").unwrap().ram_host_memory();
        assert_eq!(plain.kind, backends::hostmem::HostMemoryKind::Ram);
        assert_eq!(plain.size, 32 << 20);
    }

    #[test]
    fn vhost_user_devices_take_a_unix_socket_client_chardev() {
        let c = p(
            "-chardev socket,id=vu,path=/tmp/b.sock -device vhost-user-blk,chardev=vu,num-queues=2 \
                   -chardev socket,id=vr,path=/tmp/r.sock -device vhost-user-rng,chardev=vr \
                   -chardev socket,id=vn,path=/tmp/n.sock -netdev vhost-user,id=n0,chardev=vn \
                   -device virtio-net-device,netdev=n0",
        )
        .unwrap();
        assert!(c.uses_vhost_user());
        assert_eq!(c.vhost_user_chardevs(), vec!["vu", "vr", "vn"]);
        assert_eq!(
            c.devices[0],
            DeviceConfig::VhostUser {
                ty: VhostUserType::Blk {
                    num_queues: 2,
                    queue_size: 128
                },
                chardev: "vu".into(),
                ioeventfd: true,
            }
        );
        assert_eq!(c.devices[0].type_name(), "vhost-user-blk");
        assert_eq!(c.devices[1].type_name(), "vhost-user-rng");
        assert_eq!(
            c.socket_path("vr"),
            Some(std::path::Path::new("/tmp/r.sock"))
        );
        assert!(
            !p("-object rng-builtin,id=r -device virtio-rng-device,rng=r")
                .unwrap()
                .uses_vhost_user()
        );
        for (line, want) in [
            ("-device vhost-user-blk,chardev=nope", "nope"),
            (
                "-chardev socket,id=s,path=/tmp/x,server=on -device vhost-user-rng,chardev=s",
                "unix socket client",
            ),
            (
                "-chardev socket,id=s,host=127.0.0.1,port=1 -netdev vhost-user,id=n,chardev=s",
                "unix socket client",
            ),
            (
                "-chardev socket,id=s,path=/tmp/x -device vhost-user-rng,chardev=s \
                 -device vhost-user-blk,chardev=s",
                "already used",
            ),
            (
                "-chardev socket,id=s,path=/tmp/x -device vhost-user-blk,chardev=s,num-queues=0",
                "num-queues",
            ),
            (
                "-chardev socket,id=s,path=/tmp/x -device vhost-user-blk",
                "chardev",
            ),
            ("-netdev vhost-user,id=n", "chardev"),
        ] {
            let e = p(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn misbehave_takes_every_mode_on_every_virtio_device_and_refuses_others() {
        for m in Misbehave::ALL {
            let c = p(&format!(
                "-object rng-builtin,id=r -device virtio-rng-device,rng=r,misbehave={m} \
                 -device virtio-serial-device,misbehave={m} \
                 -netdev hubport,id=n,hubid=0 -device virtio-net-device,netdev=n,misbehave={m}"
            ))
            .unwrap();
            for d in &c.devices {
                let got = match d {
                    DeviceConfig::Rng { misbehave, .. }
                    | DeviceConfig::Serial { misbehave, .. }
                    | DeviceConfig::Net { misbehave, .. }
                    | DeviceConfig::Blk { misbehave, .. } => *misbehave,
                    DeviceConfig::Port { .. } | DeviceConfig::VhostUser { .. } => None,
                };
                assert_eq!(got, Some(m), "{d:?}");
            }
        }
        let c = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r").unwrap();
        assert!(matches!(
            c.devices[0],
            DeviceConfig::Rng {
                misbehave: None,
                ..
            }
        ));
        let e = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r,misbehave=sulk")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("misbehave='sulk'") && e.contains("interrupt-storm"),
            "{e}"
        );
        let e = p("-chardev null,id=c -device virtconsole,chardev=c,misbehave=used-twice")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key 'misbehave'"), "{e}");
    }

    #[test]
    fn every_mistake_names_what_is_wrong() {
        let cases = [
            ("-x 1", "unknown option '-x'"),
            ("-m", "option '-m' needs an argument"),
            ("-m 12Q", "-m: size='12Q' is not a RAM size of at least 1M"),
            ("-object rng-foo,id=a", "-object: unknown type 'rng-foo'"),
            (
                "-object rng-builtin,id=a,colour=red",
                "-object rng-builtin: unknown key 'colour'",
            ),
            ("-object rng-builtin", "-object rng-builtin: missing 'id='"),
            (
                "-object rng-builtin,id=a -object rng-builtin,id=a",
                "id 'a' is defined more than once",
            ),
            (
                "-device virtio-rng-device,rng=nope",
                "-device virtio-rng-device: rng='nope' does not name an rng object",
            ),
            (
                "-chardev null,id=c -device virtio-rng-device,rng=c",
                "-device virtio-rng-device: rng='c' does not name an rng object",
            ),
            (
                "-object rng-egd,id=r,chardev=c9",
                "-object rng-egd,id=r: chardev='c9' does not name a chardev",
            ),
            (
                "-chardev socket,id=s",
                "give exactly one of path= or host=/port=",
            ),
            (
                "-chardev socket,id=s,port=99999",
                "-chardev: port='99999' is not a port number",
            ),
            (
                "-object memory-backend-ram,id=m,size=1M,share=maybe",
                "-object: share='maybe' is not on or off",
            ),
            (
                "-m 64M -machine microvm,memory-backend=m -object memory-backend-ram,id=m,size=32M",
                "-m is 67108864 bytes but memory backend 'm' has 33554432 bytes",
            ),
            (
                "-chardev null,id=c -device virtconsole,chardev=c",
                "needs a -device virtio-serial-device before it",
            ),
            (
                "-object rng-builtin,id=a,id=b",
                "-object: key 'id' given more than once",
            ),
            (
                "-kernel a -kernel b",
                "option '-kernel' given more than once",
            ),
            (
                "-chardev null,id=c -object rng-egd,id=r,chardev=c \
                 -device virtio-serial-device -device virtconsole,chardev=c",
                "-device virtconsole,chardev=c: chardev 'c' is already used by -object rng-egd,id=r",
            ),
            (
                "-object rng-builtin,id=r -device virtio-rng-device,rng=r \
                 -device virtio-rng-device,rng=r",
                "rng 'r' is already used by another device",
            ),
            (
                "-chardev null,id=a -chardev null,id=b -device virtio-serial-device,max_ports=1 \
                 -device virtconsole,chardev=a -device virtserialport,chardev=b",
                "virtserialport,chardev=b: the virtio-serial-device has no port left (max_ports)",
            ),
            (
                "-object rng-builtin,id=r -device virtio-rng-device,rng=r,ioeventfd=maybe",
                "-device: ioeventfd='maybe' is not on or off",
            ),
        ];
        for (line, want) in cases {
            let err = p(line).expect_err(line).to_string();
            assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
        }
    }

    #[test]
    fn drives_and_blk_devices_parse_in_both_styles() {
        let c = p("-drive if=none,id=d0,file=disk.img,format=qcow2,readonly=on,cache=none,discard=unmap \
                   -blockdev driver=file,node-name=f1,filename=raw.img,cache.direct=on \
                   -blockdev driver=raw,node-name=d1,file=f1 \
                   -blockdev driver=raw,node-name=d2,file.driver=file,file.filename=b.img,read-only=on \
                   -device virtio-blk-device,drive=d0,serial=abc,num-queues=4,queue-size=128 \
                   -device virtio-blk-device,drive=d1,discard=off,ioeventfd=off \
                   -device virtio-blk-device,drive=d2")
        .unwrap();
        assert_eq!(
            c.drives[0],
            DriveConfig {
                id: "d0".into(),
                path: "disk.img".into(),
                format: DiskFormat::Qcow2,
                read_only: true,
                cache: CacheMode::None,
                discard: true,
            }
        );
        assert_eq!(c.drives[1].path, PathBuf::from("raw.img"));
        assert_eq!(c.drives[1].cache, CacheMode::None);
        assert_eq!(c.drives[1].format, DiskFormat::Raw);
        assert!(c.drives[2].read_only);
        assert_eq!(
            c.devices[0],
            DeviceConfig::Blk {
                drive: "d0".into(),
                serial: Some("abc".into()),
                num_queues: Some(4),
                queue_size: 128,
                discard: true,
                write_zeroes: true,
                ioeventfd: true,
                misbehave: None,
            }
        );
        assert!(matches!(
            c.devices[1],
            DeviceConfig::Blk {
                discard: false,
                ioeventfd: false,
                ..
            }
        ));
    }

    #[test]
    fn drive_mistakes_name_what_is_wrong() {
        let cases = [
            (
                "-drive if=virtio,id=d,file=x",
                "-drive: if='virtio' is not none",
            ),
            ("-drive if=none,file=x", "-drive drive: missing 'id='"),
            (
                "-drive id=d,file=x,format=vmdk",
                "format='vmdk' is not raw or qcow2",
            ),
            (
                "-drive id=d,file=x,cache=unsafe",
                "cache='unsafe' is not writeback",
            ),
            (
                "-drive id=d,file=x,colour=red",
                "-drive drive: unknown key 'colour'",
            ),
            (
                "-drive id=d,file=x -drive id=d,file=y",
                "id 'd' is defined more than once",
            ),
            (
                "-device virtio-blk-device,drive=nope",
                "-device virtio-blk-device: drive='nope' does not name a drive",
            ),
            (
                "-drive id=d,file=x -device virtio-blk-device,drive=d -device virtio-blk-device,drive=d",
                "drive 'd' is already used by another device",
            ),
            (
                "-drive id=d,file=x -device virtio-blk-device,drive=d,serial=123456789012345678901",
                "at most 20 bytes",
            ),
            (
                "-drive id=d,file=x -device virtio-blk-device,drive=d,queue-size=100",
                "a power of two",
            ),
            (
                "-drive id=d,file=x -device virtio-blk-device,drive=d,num-queues=0",
                "1 to 1024",
            ),
            (
                "-blockdev driver=raw,node-name=d,file=nofile",
                "file='nofile' does not name an earlier -blockdev driver=file node",
            ),
            (
                "-blockdev driver=vdi,node-name=d,file.filename=x",
                "driver='vdi' is not file, raw or qcow2",
            ),
        ];
        for (line, want) in cases {
            let err = p(line).expect_err(line).to_string();
            assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
        }
    }

    /// §2.7: every virtio device takes `queue-size` (a power of two up to
    /// 32768) and defaults to 1024, what QEMU's virtio-mmio reports as
    /// `QueueNumMax` for every device.
    #[test]
    fn section_2_7_every_device_takes_a_queue_size_and_defaults_to_1024() {
        let c = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r \
                   -device virtio-serial-device -drive id=d,file=x,if=none \
                   -device virtio-blk-device,drive=d -netdev loopback,id=n \
                   -device virtio-net-device,netdev=n")
        .unwrap();
        let sizes: Vec<u16> = c
            .devices
            .iter()
            .filter_map(|d| match d {
                DeviceConfig::Rng { queue_size, .. }
                | DeviceConfig::Serial { queue_size, .. }
                | DeviceConfig::Blk { queue_size, .. }
                | DeviceConfig::Net { queue_size, .. } => Some(*queue_size),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, [1024; 4]);
        let c = p(
            "-object rng-builtin,id=r -device virtio-rng-device,rng=r,queue-size=32768 \
                   -device virtio-serial-device,queue-size=2",
        )
        .unwrap();
        assert!(matches!(
            c.devices[0],
            DeviceConfig::Rng {
                queue_size: 32768,
                ..
            }
        ));
        assert!(matches!(
            c.devices[1],
            DeviceConfig::Serial { queue_size: 2, .. }
        ));
        for bad in ["0", "3", "65536", "4294967296", "x"] {
            let e = p(&format!(
                "-object rng-builtin,id=r -device virtio-rng-device,rng=r,queue-size={bad}"
            ))
            .expect_err(bad)
            .to_string();
            assert!(e.contains("queue-size"), "{bad}: {e}");
        }
    }

    #[test]
    fn netdevs_and_net_devices_parse() {
        let c = p("-netdev loopback,id=l -netdev hubport,id=h,hubid=3 \
                   -netdev stream,id=s,server=on,addr.type=unix,addr.path=/tmp/n.sock \
                   -netdev stream,id=t,addr.type=inet,addr.host=127.0.0.1,addr.port=5555 \
                   -netdev dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port=1,remote.type=inet,remote.host=127.0.0.1,remote.port=2 \
                   -netdev tap,id=tp,ifname=tap0,script=no,downscript=no \
                   -device virtio-net-device,netdev=l,mac=52:54:00:aa:bb:cc,mq=on,queue-pairs=4 \
                   -device virtio-net-device,netdev=h")
        .unwrap();
        assert_eq!(c.netdevs[1].1, NetdevKind::Hubport { hubid: 3 });
        assert_eq!(
            c.netdevs[3].1,
            NetdevKind::Stream {
                server: false,
                path: None,
                inet: Some("127.0.0.1:5555".into())
            }
        );
        assert_eq!(
            c.netdevs[5].1,
            NetdevKind::Tap {
                ifname: Some("tap0".into()),
                fd: None
            }
        );
        assert_eq!(
            c.devices[0],
            DeviceConfig::Net {
                id: None,
                netdev: "l".into(),
                mtu: None,
                mac: Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
                queue_pairs: Some(4),
                queue_size: DEFAULT_QUEUE_SIZE,
                ioeventfd: true,
                misbehave: None,
            }
        );
        let cases = [
            ("-netdev tap,id=t", "give exactly one of ifname= or fd="),
            (
                "-netdev tap,id=t,ifname=x,script=/etc/qemu-ifup",
                "scripts are not run",
            ),
            ("-netdev hubport,id=h", "missing 'hubid='"),
            (
                "-netdev stream,id=s,addr.type=vsock",
                "addr.type='vsock' is not unix or inet",
            ),
            ("-netdev slirp,id=u", "-netdev: unknown type 'slirp'"),
            (
                "-netdev loopback,id=l -device virtio-net-device,netdev=l,mac=52:54",
                "is not a MAC address",
            ),
            (
                "-netdev loopback,id=l -device virtio-net-device,netdev=l,queue-pairs=2",
                "1 without mq=on",
            ),
            (
                "-device virtio-net-device,netdev=x",
                "netdev='x' does not name a netdev",
            ),
            (
                "-netdev loopback,id=l -device virtio-net-device,netdev=l -device virtio-net-device,netdev=l",
                "netdev 'l' is already used by another device",
            ),
        ];
        for (line, want) in cases {
            let err = p(line).expect_err(line).to_string();
            assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
        }
    }

    #[test]
    fn commas_escape_and_sizes_parse() {
        let c = p("-chardev file,id=c,path=/tmp/a,,b").unwrap();
        assert_eq!(
            c.chardevs[0].1,
            ChardevKind::File {
                path: "/tmp/a,b".into(),
                input_path: None
            }
        );
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(p("-m 128").unwrap().memory, 128 << 20);
    }

    #[test]
    fn monitors_parse_in_both_spellings() {
        let c =
            p("-monitor unix:/tmp/m.sock,server=on,wait=off -qmp unix:/tmp/q.sock,server,nowait")
                .unwrap();
        assert_eq!(
            c.monitors,
            [
                MonitorConfig {
                    protocol: MonitorProtocol::Hmp,
                    path: "/tmp/m.sock".into()
                },
                MonitorConfig {
                    protocol: MonitorProtocol::Qmp,
                    path: "/tmp/q.sock".into()
                }
            ]
        );
        for (line, want) in [
            ("-monitor stdio", "unix:PATH"),
            ("-monitor unix:/tmp/m", "only server=on"),
            ("-qmp unix:/tmp/m,server=on", "only wait=off"),
            (
                "-qmp unix:/tmp/m,server,nowait,colour=red",
                "unknown key 'colour'",
            ),
            ("-monitor unix:,server,nowait", "a socket path"),
            (
                "-monitor unix:/tmp/m,server,nowait -qmp unix:/tmp/m,server,nowait",
                "used twice",
            ),
        ] {
            let err = p(line).expect_err(line).to_string();
            assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
        }
    }

    #[test]
    fn net_devices_take_an_id_and_an_mtu() {
        let c = p("-netdev loopback,id=l -device virtio-net-device,netdev=l,id=nic0,host_mtu=9000")
            .unwrap();
        let DeviceConfig::Net { id, mtu, .. } = &c.devices[0] else {
            panic!("not a net device");
        };
        assert_eq!(id.as_deref(), Some("nic0"));
        assert_eq!(*mtu, Some(9000));
        let err = p("-netdev loopback,id=l -device virtio-net-device,netdev=l,host_mtu=70000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("68 to 65535"), "{err}");
    }
}
