//! The registry of option types (QEMU's QOM type registry, as `-device
//! help` reads it): every device, netdev, chardev, object and tpmdev type
//! the option parser takes, with its keys, their types, defaults and what
//! they do, and the types QEMU has that this monitor refuses, with why.
//!
//! The parser dispatches through here: each entry names the function that
//! reads its keys (`Build`), so a new type is one entry (its keys, its
//! help, its builder) beside the configuration it produces.
//! `-device help`, `-device NAME,help`, `-netdev help`, `-chardev help`,
//! `-object help` (and `NAME,help` for each) print from here in QEMU's
//! layout; an unknown key's error lists the type's keys from here; and the
//! parser's tests check that every key a builder asks for is registered and
//! that every registered key reaches its builder, so the two cannot drift.

use std::fmt::Write as _;

use super::{
    ChardevKind, DeviceConfig, IdKind, KeyVals, MachineConfig, NetdevKind, OptionError, TpmdevKind,
    chardev, device, netdev, object, tpmdev,
};

/// The option a type belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `-device`.
    Device,
    /// `-netdev`.
    Netdev,
    /// `-chardev`.
    Chardev,
    /// `-object`.
    Object,
    /// `-tpmdev`.
    Tpmdev,
}

impl Kind {
    /// The option's spelling.
    pub fn option(self) -> &'static str {
        match self {
            Kind::Device => "-device",
            Kind::Netdev => "-netdev",
            Kind::Chardev => "-chardev",
            Kind::Object => "-object",
            Kind::Tpmdev => "-tpmdev",
        }
    }

    /// The kind an option names.
    pub fn of_option(option: &str) -> Option<Kind> {
        [
            Kind::Device,
            Kind::Netdev,
            Kind::Chardev,
            Kind::Object,
            Kind::Tpmdev,
        ]
        .into_iter()
        .find(|k| k.option() == option)
    }
}

/// One key of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prop {
    /// The key.
    pub name: &'static str,
    /// Its type as QEMU prints it (`bool`, `str`, `uint16`, `size`, …).
    pub ty: &'static str,
    /// Its default, if it has one.
    pub default: Option<&'static str>,
    /// Whether it must be given.
    pub required: bool,
    /// What it does.
    pub desc: &'static str,
}

const fn p(name: &'static str, ty: &'static str, desc: &'static str) -> Prop {
    Prop {
        name,
        ty,
        default: None,
        required: false,
        desc,
    }
}

const fn d(
    name: &'static str,
    ty: &'static str,
    default: &'static str,
    desc: &'static str,
) -> Prop {
    Prop {
        name,
        ty,
        default: Some(default),
        required: false,
        desc,
    }
}

const fn r(name: &'static str, ty: &'static str, desc: &'static str) -> Prop {
    Prop {
        name,
        ty,
        default: None,
        required: true,
        desc,
    }
}

/// How the parser builds a type from its keys: the one function per type
/// (beside its entry here) that reads them.
#[derive(Clone, Copy)]
pub(super) enum Build {
    /// A `-device`, from its keys and its `id`.
    Device(fn(&mut KeyVals, &Option<String>) -> Result<DeviceConfig, OptionError>),
    /// `-device tpm-crb`, which the machine holds apart from the virtio
    /// devices (`Parser::tpm_crb`).
    TpmCrb,
    /// A `-netdev`.
    Netdev(fn(&str, &mut KeyVals) -> Result<NetdevKind, OptionError>),
    /// A `-chardev`.
    Chardev(fn(&str, &mut KeyVals) -> Result<ChardevKind, OptionError>),
    /// A `-object`: it adds itself to the configuration and says what its
    /// id names.
    Object(fn(&str, &mut KeyVals, &mut MachineConfig) -> Result<IdKind, OptionError>),
    /// A `-tpmdev`.
    Tpmdev(fn(&str, &mut KeyVals) -> Result<TpmdevKind, OptionError>),
    /// Refused ([`TypeInfo::refused`] says why).
    Refused,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Build::Device(_) => "Device",
            Build::TpmCrb => "TpmCrb",
            Build::Netdev(_) => "Netdev",
            Build::Chardev(_) => "Chardev",
            Build::Object(_) => "Object",
            Build::Tpmdev(_) => "Tpmdev",
            Build::Refused => "Refused",
        })
    }
}

/// One type.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    /// Its option.
    pub kind: Kind,
    /// Its name.
    pub name: &'static str,
    /// Other names the parser takes for it.
    pub aliases: &'static [&'static str],
    /// `-device help`'s category (`Network devices`, …); empty otherwise.
    pub category: &'static str,
    /// The bus a device sits on (`virtio-bus`, …); empty for none.
    pub bus: &'static str,
    /// What it is.
    pub desc: &'static str,
    /// Its own keys.
    pub props: &'static [Prop],
    /// Keys it shares with its kind (every virtio device's, …).
    pub common: &'static [Prop],
    /// `Some(why)`: QEMU has it, this monitor refuses it.
    pub refused: Option<&'static str>,
    /// How the parser builds it.
    pub(super) build: Build,
}

impl TypeInfo {
    /// Every key: its own, then the shared ones.
    pub fn all_props(&self) -> impl Iterator<Item = &'static Prop> {
        self.props.iter().chain(self.common.iter())
    }

    /// Whether it answers to `name`.
    pub fn is(&self, name: &str) -> bool {
        self.name == name || self.aliases.contains(&name)
    }
}

const VIRTIO: &[Prop] = &[
    p("id", "str", "the device's name (for the monitor)"),
    d(
        "ioeventfd",
        "bool",
        "on",
        "queue notifications through an ioeventfd worker (off: in the vCPU's exit)",
    ),
    d(
        "queue-size",
        "uint16",
        "1024",
        "each queue's QueueNumMax (a power of two up to 32768)",
    ),
    p(
        "misbehave",
        "str",
        "a device that lies on purpose (used-id-out-of-range, used-twice, interrupt-storm, …)",
    ),
];
/// vhost-user frontends: no `misbehave` (the backend runs the queues).
const VHOST_USER: &[Prop] = &[
    p("id", "str", "the device's name (for the monitor)"),
    d(
        "ioeventfd",
        "bool",
        "on",
        "queue notifications through an ioeventfd (kick) to the backend",
    ),
];
const ID: &[Prop] = &[r("id", "str", "the name other options refer to")];
const CHARDEV: &[Prop] = &[
    r("id", "str", "the name other options refer to"),
    d(
        "mux",
        "bool",
        "off",
        "share it among several frontends (Ctrl-A escapes)",
    ),
];

/// Every type, in help order.
pub static TYPES: &[TypeInfo] = &[
    // -device
    TypeInfo {
        kind: Kind::Device,
        name: "virtio-blk-device",
        aliases: &[],
        category: "Storage devices",
        bus: "virtio-bus",
        desc: "virtio block device (§5.2)",
        props: &[
            r("drive", "str", "ID of a drive to use as a backend"),
            p("serial", "str", "the serial number (VIRTIO_BLK_T_GET_ID)"),
            d(
                "num-queues",
                "uint16",
                "1",
                "request queues (more offer VIRTIO_BLK_F_MQ)",
            ),
            d("discard", "bool", "on", "offer VIRTIO_BLK_F_DISCARD"),
            d(
                "write-zeroes",
                "bool",
                "on",
                "offer VIRTIO_BLK_F_WRITE_ZEROES",
            ),
        ],
        common: VIRTIO,
        refused: None,
        build: Build::Device(device::build_virtio_blk_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "vhost-user-blk",
        aliases: &[],
        category: "Storage devices",
        bus: "virtio-bus",
        desc: "virtio block device served by a vhost-user backend",
        props: &[
            r("chardev", "str", "ID of the socket chardev to the backend"),
            d("num-queues", "uint16", "1", "request queues"),
            d(
                "queue-size",
                "uint16",
                "128",
                "each queue's size (QEMU's default)",
            ),
        ],
        common: VHOST_USER,
        refused: None,
        build: Build::Device(device::build_vhost_user_blk),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtio-net-device",
        aliases: &[],
        category: "Network devices",
        bus: "virtio-bus",
        desc: "virtio network device (§5.1)",
        props: &[
            r("netdev", "str", "ID of a netdev to use as a backend"),
            p(
                "mac",
                "str",
                "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56",
            ),
            d(
                "host_mtu",
                "uint16",
                "1500",
                "the MTU offered with VIRTIO_NET_F_MTU",
            ),
            d("mq", "bool", "off", "several queue pairs (VIRTIO_NET_F_MQ)"),
            p("queue-pairs", "uint16", "queue pairs with mq=on"),
        ],
        common: VIRTIO,
        refused: None,
        build: Build::Device(device::build_virtio_net_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtio-serial-device",
        aliases: &[],
        category: "Input devices",
        bus: "virtio-bus",
        desc: "virtio console device with ports (§5.3)",
        props: &[d("max_ports", "uint32", "31", "ports the device offers")],
        common: VIRTIO,
        refused: None,
        build: Build::Device(device::build_virtio_serial_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtconsole",
        aliases: &[],
        category: "Input devices",
        bus: "virtio-serial-bus",
        desc: "a console port of the virtio-serial device",
        props: &[
            r("chardev", "str", "ID of a chardev to use as a backend"),
            p("name", "str", "the port's name"),
            p(
                "bus",
                "str",
                "the virtio-serial device (one per machine: ignored)",
            ),
            p("id", "str", "the port's id"),
        ],
        common: &[],
        refused: None,
        build: Build::Device(device::build_port),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtserialport",
        aliases: &[],
        category: "Input devices",
        bus: "virtio-serial-bus",
        desc: "a generic port of the virtio-serial device",
        props: &[
            r("chardev", "str", "ID of a chardev to use as a backend"),
            p("name", "str", "the port's name"),
            p(
                "bus",
                "str",
                "the virtio-serial device (one per machine: ignored)",
            ),
            p("id", "str", "the port's id"),
        ],
        common: &[],
        refused: None,
        build: Build::Device(device::build_port),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtio-rng-device",
        aliases: &[],
        category: "Misc devices",
        bus: "virtio-bus",
        desc: "virtio entropy device (§5.4)",
        props: &[r("rng", "str", "ID of an rng backend (-object rng-*)")],
        common: VIRTIO,
        refused: None,
        build: Build::Device(device::build_virtio_rng_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "vhost-user-rng",
        aliases: &[],
        category: "Misc devices",
        bus: "virtio-bus",
        desc: "virtio entropy device served by a vhost-user backend",
        props: &[r(
            "chardev",
            "str",
            "ID of the socket chardev to the backend",
        )],
        common: VHOST_USER,
        refused: None,
        build: Build::Device(device::build_vhost_user_rng),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "virtio-crypto-device",
        aliases: &[],
        category: "Misc devices",
        bus: "virtio-bus",
        desc: "virtio crypto device (§5.9)",
        props: &[r(
            "cryptodev",
            "str",
            "ID of a cryptodev backend (-object cryptodev-*)",
        )],
        common: VIRTIO,
        refused: None,
        build: Build::Device(device::build_virtio_crypto_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "vhost-user-device",
        aliases: &["vhost-user-test-device"],
        category: "Misc devices",
        bus: "virtio-bus",
        desc: "any virtio device served by a vhost-user backend (QEMU 8.2's generic frontend)",
        props: &[
            r("chardev", "str", "ID of the socket chardev to the backend"),
            r("virtio-id", "uint16", "the virtio device ID (§5)"),
            d("num_vqs", "uint16", "1", "queues"),
            d("vq_size", "uint16", "64", "each queue's size"),
            d("config_size", "uint32", "0", "bytes of configuration space"),
        ],
        common: VHOST_USER,
        refused: None,
        build: Build::Device(device::build_vhost_user_device),
    },
    TypeInfo {
        kind: Kind::Device,
        name: "tpm-crb",
        aliases: &[],
        category: "Misc devices",
        bus: "",
        desc: "TPM 2.0 Command Response Buffer interface at 0xFED40000",
        props: &[
            r("tpmdev", "str", "ID of a tpm to use as a backend"),
            d(
                "ppi",
                "bool",
                "off",
                "Physical Presence Interface (not built: on is refused)",
            ),
            p("id", "str", "the device's id"),
        ],
        common: &[],
        refused: None,
        build: Build::TpmCrb,
    },
    // -netdev
    TypeInfo {
        kind: Kind::Netdev,
        name: "socket",
        aliases: &[],
        category: "",
        bus: "",
        desc: "QEMU's older socket netdev: framed TCP or UDP",
        props: &[
            p("listen", "str", "[HOST]:PORT to listen on (TCP)"),
            p("connect", "str", "HOST:PORT to connect to (TCP)"),
            p(
                "udp",
                "str",
                "HOST:PORT to send datagrams to (with localaddr)",
            ),
            p("localaddr", "str", "HOST:PORT to bind for udp="),
            p("mcast", "str", "multicast group (not built: refused)"),
            p("fd", "str", "an open socket (not taken: refused)"),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::socket),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "stream",
        aliases: &[],
        category: "",
        bus: "",
        desc: "frames with a 4-byte length over a stream socket",
        props: &[
            d("server", "bool", "off", "listen instead of connecting"),
            r("addr.type", "str", "unix or inet"),
            p("addr.path", "str", "the unix socket's path"),
            p("addr.host", "str", "the host (inet)"),
            p("addr.port", "str", "the port (inet)"),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_stream),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "dgram",
        aliases: &[],
        category: "",
        bus: "",
        desc: "one frame per UDP datagram",
        props: &[
            r("local.type", "str", "inet"),
            r("local.host", "str", "the address to bind"),
            r("local.port", "str", "the port to bind"),
            r("remote.type", "str", "inet"),
            r("remote.host", "str", "the peer's address"),
            r("remote.port", "str", "the peer's port"),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_dgram),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "hubport",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a port on a hub of this process",
        props: &[r("hubid", "uint32", "the hub (made on first use)")],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_hubport),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "tap",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a Linux tap interface (with IFF_VNET_HDR offloads)",
        props: &[
            p("ifname", "str", "the interface (made if missing)"),
            p("fd", "str", "an open tap file descriptor"),
            d("script", "str", "no", "not run: only no is taken"),
            d("downscript", "str", "no", "not run: only no is taken"),
            d(
                "vhost",
                "bool",
                "off",
                "accepted; frames always go through this process",
            ),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_tap),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "user",
        aliases: &[],
        category: "",
        bus: "",
        desc: "user-mode network: a NAT to host sockets, DHCP, DNS forwarding",
        props: &[
            d("net", "str", "10.0.2.0/24", "the virtual network"),
            d(
                "host",
                "str",
                "10.0.2.2",
                "the gateway, which stands for the host",
            ),
            d("dns", "str", "10.0.2.3", "the DNS forwarder"),
            d(
                "dhcpstart",
                "str",
                "10.0.2.15",
                "the first address DHCP gives",
            ),
            p("hostname", "str", "the host name DHCP tells the guest"),
            d(
                "restrict",
                "bool",
                "off",
                "only hostfwd and guestfwd reach the guest",
            ),
            p(
                "hostfwd",
                "str",
                "[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport (repeatable)",
            ),
            p(
                "guestfwd",
                "str",
                "[tcp]:server:port-tcp:HOST:PORT|unix:PATH|cmd:COMMAND (repeatable)",
            ),
            d(
                "ipv4",
                "bool",
                "on",
                "IPv4 (off is refused: nothing else is built)",
            ),
            d("ipv6", "bool", "on", "accepted; IPv6 frames are dropped"),
            p("tftp", "str", "not built: refused"),
            p("bootfile", "str", "not built: refused"),
            p("smb", "str", "not built: refused"),
            p("smbserver", "str", "not built: refused"),
            p("tftp-server-name", "str", "not built: refused"),
            p("dnssearch", "str", "not built: refused"),
            p("domainname", "str", "not built: refused"),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_user),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "l2tpv3",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a static L2TPv3 tunnel over UDP or IP",
        props: &[
            r("src", "str", "the local address"),
            r("dst", "str", "the peer's address"),
            d(
                "udp",
                "bool",
                "off",
                "over UDP (with srcport and dstport) instead of IP",
            ),
            p("srcport", "uint16", "the local UDP port"),
            p("dstport", "uint16", "the peer's UDP port"),
            d("ipv6", "bool", "off", "over IPv6"),
            r("txsession", "uint32", "the session id sent"),
            p(
                "rxsession",
                "uint32",
                "the session id expected (default: txsession)",
            ),
            p("txcookie", "uint64", "the cookie sent"),
            p("rxcookie", "uint64", "the cookie expected"),
            d("cookie64", "bool", "off", "64-bit cookies"),
            d("counter", "bool", "off", "a sequence counter word"),
            d("pincounter", "bool", "off", "send the counter as 0"),
            d("offset", "uint32", "0", "padding bytes before the frame"),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_l2tpv3),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "bridge",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a tap on a host bridge, made by QEMU's bridge helper",
        props: &[
            d("br", "str", "br0", "the bridge"),
            d(
                "helper",
                "str",
                "/usr/lib/qemu/qemu-bridge-helper",
                "the helper",
            ),
        ],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_bridge),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "vhost-user",
        aliases: &[],
        category: "",
        bus: "",
        desc: "the device's queues served by a vhost-user backend",
        props: &[r(
            "chardev",
            "str",
            "ID of the socket chardev to the backend",
        )],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_vhost_user),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "loopback",
        aliases: &[],
        category: "",
        bus: "",
        desc: "what is sent comes back (ours)",
        props: &[],
        common: ID,
        refused: None,
        build: Build::Netdev(netdev::build_loopback),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "vhost-vdpa",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a kernel vDPA device",
        props: &[p("vhostdev", "str", "the /dev/vhost-vdpa-N device")],
        common: ID,
        refused: Some(
            "it drives a kernel vDPA device (/dev/vhost-vdpa-N, from a vDPA NIC or the \
             vdpa_sim_net module), which these machines do not have",
        ),
        build: Build::Netdev(netdev::build_vhost_vdpa),
    },
    TypeInfo {
        kind: Kind::Netdev,
        name: "vde",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a VDE switch port",
        props: &[],
        common: ID,
        refused: Some("it needs libvdeplug and a VDE switch, neither of which is built here"),
        build: Build::Refused,
    },
    // -chardev
    TypeInfo {
        kind: Kind::Chardev,
        name: "stdio",
        aliases: &[],
        category: "",
        bus: "",
        desc: "this process's standard input and output",
        props: &[d("signal", "bool", "on", "accepted")],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_stdio),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "ringbuf",
        aliases: &["memory"],
        category: "",
        bus: "",
        desc: "a ring buffer in memory",
        props: &[d("size", "size", "64K", "its capacity")],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_ringbuf),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "mux",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a multiplexer",
        props: &[],
        common: CHARDEV,
        refused: Some("give mux=on to the chardev to share instead (QEMU's own spelling)"),
        build: Build::Refused,
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "pipe",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a pair of named pipes (PATH.in, PATH.out) or one",
        props: &[r("path", "str", "the base path")],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_pipe),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "qemu-vdagent",
        aliases: &["spicevmc", "spiceport"],
        category: "",
        bus: "",
        desc: "the SPICE agent",
        props: &[],
        common: CHARDEV,
        refused: Some(
            "it needs a SPICE or VNC server (the clipboard and mouse of a remote viewer), \
             and this monitor has none",
        ),
        build: Build::Refused,
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "null",
        aliases: &[],
        category: "",
        bus: "",
        desc: "discards output, has no input",
        props: &[],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_null),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "msmouse",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a Microsoft serial mouse fed by mouse_move/mouse_button",
        props: &[],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_msmouse),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "socket",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a unix or TCP stream socket",
        props: &[
            p("path", "str", "the unix socket's path"),
            p("host", "str", "the TCP host"),
            p("port", "uint32", "the TCP port"),
            d("server", "bool", "off", "listen instead of connecting"),
            d(
                "wait",
                "bool",
                "off",
                "accepted; a server never waits for its client",
            ),
            d("nowait", "bool", "on", "accepted (the older spelling)"),
            p(
                "reconnect",
                "uint32",
                "seconds between reconnection attempts (client)",
            ),
        ],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_socket),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "vc",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a graphical console",
        props: &[],
        common: CHARDEV,
        refused: Some("it needs a display (a graphical console), and this monitor has none"),
        build: Build::Refused,
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "parallel",
        aliases: &["parport"],
        category: "",
        bus: "",
        desc: "a host parallel port",
        props: &[],
        common: CHARDEV,
        refused: Some(
            "QEMU's parallel chardev hands the guest parallel port's register accesses to a \
             host parport through ppdev ioctls (PPWDATA, PPRSTATUS, PPWCONTROL), and these \
             machines have no /dev/parport* to test that against; the ISA parallel port itself \
             is -parallel, which prints to any other chardev",
        ),
        build: Build::Refused,
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "udp",
        aliases: &[],
        category: "",
        bus: "",
        desc: "UDP datagrams to a peer",
        props: &[
            d("host", "str", "localhost", "the peer"),
            r("port", "uint32", "the peer's port"),
            p("localaddr", "str", "the address to bind"),
            d("localport", "uint32", "0", "the port to bind"),
            d("ipv4", "bool", "off", "IPv4 only"),
            d("ipv6", "bool", "off", "IPv6 only"),
        ],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_udp),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "file",
        aliases: &[],
        category: "",
        bus: "",
        desc: "output to a file (input from another)",
        props: &[
            r("path", "str", "the output file"),
            p("input-path", "str", "the input file"),
        ],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_file),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "serial",
        aliases: &["tty"],
        category: "",
        bus: "",
        desc: "a host tty",
        props: &[r("path", "str", "the tty device")],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_serial),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "wctablet",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a Wacom serial tablet fed by input-send-event",
        props: &[],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_wctablet),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "pty",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a pseudo-terminal (its path is printed)",
        props: &[],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_pty),
    },
    TypeInfo {
        kind: Kind::Chardev,
        name: "testdev",
        aliases: &[],
        category: "",
        bus: "",
        desc: "the test-suite control channel (<n>q ends the run)",
        props: &[],
        common: CHARDEV,
        refused: None,
        build: Build::Chardev(chardev::build_testdev),
    },
    // -object
    TypeInfo {
        kind: Kind::Object,
        name: "cryptodev-backend-builtin",
        aliases: &[],
        category: "",
        bus: "",
        desc: "software crypto (RustCrypto)",
        props: &[d("queues", "uint32", "1", "the device's data queues")],
        common: ID,
        refused: None,
        build: Build::Object(object::build_cryptodev),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "cryptodev-vhost-user",
        aliases: &[],
        category: "",
        bus: "",
        desc: "crypto served by a vhost-user backend",
        props: &[
            r("chardev", "str", "ID of the socket chardev to the backend"),
            d("queues", "uint32", "1", "the device's data queues"),
        ],
        common: ID,
        refused: None,
        build: Build::Object(object::build_cryptodev),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "memory-backend-file",
        aliases: &[],
        category: "",
        bus: "",
        desc: "guest RAM in a file",
        props: &[
            r("size", "size", "Size of the memory region (ex: 500M)"),
            r("mem-path", "str", "the file"),
            d(
                "share",
                "bool",
                "off",
                "Mark the memory as private to QEMU or shared",
            ),
            d("prealloc", "bool", "off", "Preallocate memory"),
        ],
        common: ID,
        refused: None,
        build: Build::Object(object::build_memory_backend),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "memory-backend-memfd",
        aliases: &[],
        category: "",
        bus: "",
        desc: "guest RAM in a memfd",
        props: &[
            r("size", "size", "Size of the memory region (ex: 500M)"),
            d(
                "share",
                "bool",
                "on",
                "Mark the memory as private to QEMU or shared",
            ),
            d("prealloc", "bool", "off", "Preallocate memory"),
            d("seal", "bool", "on", "accepted"),
        ],
        common: ID,
        refused: None,
        build: Build::Object(object::build_memory_backend),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "memory-backend-ram",
        aliases: &[],
        category: "",
        bus: "",
        desc: "guest RAM, anonymous",
        props: &[
            r("size", "size", "Size of the memory region (ex: 500M)"),
            d(
                "share",
                "bool",
                "off",
                "Mark the memory as private to QEMU or shared",
            ),
            d("prealloc", "bool", "off", "Preallocate memory"),
        ],
        common: ID,
        refused: None,
        build: Build::Object(object::build_memory_backend),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "rng-builtin",
        aliases: &[],
        category: "",
        bus: "",
        desc: "the OS's random source (getrandom)",
        props: &[],
        common: ID,
        refused: None,
        build: Build::Object(object::build_rng),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "rng-deterministic",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a seeded generator for reproducible tests (ours)",
        props: &[d("seed", "uint64", "0", "the seed")],
        common: ID,
        refused: None,
        build: Build::Object(object::build_rng),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "rng-egd",
        aliases: &[],
        category: "",
        bus: "",
        desc: "an EGD server on a chardev",
        props: &[r("chardev", "str", "ID of the chardev to the server")],
        common: ID,
        refused: None,
        build: Build::Object(object::build_rng),
    },
    TypeInfo {
        kind: Kind::Object,
        name: "rng-random",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a host random device",
        props: &[d("filename", "string", "/dev/urandom", "the device")],
        common: ID,
        refused: None,
        build: Build::Object(object::build_rng),
    },
    // -tpmdev
    TypeInfo {
        kind: Kind::Tpmdev,
        name: "emulator",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a swtpm process on its control socket",
        props: &[r(
            "chardev",
            "str",
            "ID of the socket chardev to swtpm's control channel",
        )],
        common: ID,
        refused: None,
        build: Build::Tpmdev(tpmdev::build_emulator),
    },
    TypeInfo {
        kind: Kind::Tpmdev,
        name: "passthrough",
        aliases: &[],
        category: "",
        bus: "",
        desc: "a host TPM device",
        props: &[
            d("path", "str", "/dev/tpm0", "the TPM device"),
            p("cancel-path", "str", "where a cancel is written (sysfs)"),
        ],
        common: ID,
        refused: None,
        build: Build::Tpmdev(tpmdev::build_passthrough),
    },
];

/// The type `name` of `kind`.
pub fn lookup(kind: Kind, name: &str) -> Option<&'static TypeInfo> {
    TYPES.iter().find(|t| t.kind == kind && t.is(name))
}

/// Whether `option`'s type `ty` takes `key` (true for options and types
/// the registry does not cover).
pub fn knows(option: &str, ty: &str, key: &str) -> bool {
    let Some(kind) = Kind::of_option(option) else {
        return true;
    };
    match lookup(kind, ty) {
        None => true,
        Some(t) => t.all_props().any(|p| p.name == key),
    }
}

/// The keys of `option`'s type `ty`, for an error message.
pub fn keys_of(option: &str, ty: &str) -> Option<Vec<&'static str>> {
    let t = lookup(Kind::of_option(option)?, ty)?;
    Some(t.all_props().map(|p| p.name).collect())
}

/// The error for type `ty` of `option` that the parser does not build:
/// the registry's reason if QEMU has it and this monitor refuses it,
/// else an unknown type.
pub fn unknown_or_refused(option: &'static str, ty: String) -> super::OptionError {
    let refused = Kind::of_option(option)
        .and_then(|k| lookup(k, &ty))
        .and_then(|t| t.refused);
    match refused {
        Some(why) => {
            super::OptionError::Conflict(format!("{option} {ty}: not available here: {why}"))
        }
        None => super::OptionError::UnknownType { option, ty },
    }
}

/// The help `arg` of `option` asks for (`help`, `?`, or `NAME,…,help`),
/// if it asks.
pub fn help_request(option: &str, arg: &str) -> Option<Result<String, super::OptionError>> {
    let kind = Kind::of_option(option)?;
    if arg == "help" || arg == "?" {
        return Some(Ok(list(kind)));
    }
    let parts = super::keyvals::split_commas(arg);
    if !parts.iter().skip(1).any(|p| p == "help" || p == "?") {
        return None;
    }
    let ty = parts.first().cloned().unwrap_or_default();
    Some(type_help(kind, &ty).ok_or(super::OptionError::UnknownType {
        option: kind.option(),
        ty,
    }))
}

/// What `-<kind> help` prints (QEMU's layout).
pub fn list(kind: Kind) -> String {
    let mut out = String::new();
    let of = || TYPES.iter().filter(move |t| t.kind == kind);
    match kind {
        Kind::Device => {
            let mut cats: Vec<&str> = Vec::new();
            for t in of() {
                if !cats.contains(&t.category) {
                    cats.push(t.category);
                }
            }
            for c in cats {
                let _ = writeln!(out, "{c}:");
                for t in of().filter(|t| t.category == c) {
                    let _ = write!(out, "name \"{}\"", t.name);
                    if !t.bus.is_empty() {
                        let _ = write!(out, ", bus {}", t.bus);
                    }
                    for a in t.aliases {
                        let _ = write!(out, ", alias \"{a}\"");
                    }
                    let _ = writeln!(out, ", desc \"{}\"", t.desc);
                }
                out.push('\n');
            }
        }
        Kind::Netdev => {
            out.push_str("Available netdev backend types:\n");
            for t in of() {
                let _ = writeln!(out, "{}{}", t.name, refused_note(t));
            }
        }
        Kind::Chardev => {
            out.push_str("Available chardev backend types: \n");
            for t in of() {
                let _ = writeln!(out, "  {}{}", t.name, refused_note(t));
            }
        }
        Kind::Object => {
            out.push_str("List of user creatable objects:\n");
            for t in of() {
                let _ = writeln!(out, "  {}", t.name);
            }
        }
        Kind::Tpmdev => {
            out.push_str("Supported TPM types:\n");
            for t in of() {
                let _ = writeln!(out, "{:>14}   {}", t.name, t.desc);
            }
        }
    }
    out
}

fn refused_note(t: &TypeInfo) -> &'static str {
    if t.refused.is_some() {
        " (not available here)"
    } else {
        ""
    }
}

/// What `-<kind> NAME,help` prints (QEMU's layout: `  key=<type>` padded,
/// ` - ` and what it does, `(default: …)`); `None` for an unknown type.
pub fn type_help(kind: Kind, name: &str) -> Option<String> {
    let t = lookup(kind, name)?;
    let mut out = format!("{} options:\n", t.name);
    if let Some(why) = t.refused.filter(|w| !w.is_empty()) {
        let _ = writeln!(out, "  (not available here: {why})");
    }
    let mut props: Vec<&Prop> = t.all_props().collect();
    props.sort_by_key(|p| p.name);
    for p in props {
        let head = format!("{}=<{}>", p.name, p.ty);
        let mut tail = p.desc.to_string();
        if p.required {
            tail.push_str(" (required)");
        }
        if let Some(def) = p.default {
            let _ = write!(tail, " (default: {def})");
        }
        let _ = writeln!(out, "  {head:<22} - {tail}");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_kind_and_keys_per_type() {
        for (i, a) in TYPES.iter().enumerate() {
            for b in &TYPES[i + 1..] {
                if a.kind == b.kind {
                    assert!(!b.is(a.name), "{} twice", a.name);
                    for al in a.aliases {
                        assert!(!b.is(al), "{al} twice");
                    }
                }
            }
            let mut keys: Vec<&str> = a.all_props().map(|p| p.name).collect();
            keys.sort_unstable();
            let n = keys.len();
            keys.dedup();
            assert_eq!(n, keys.len(), "{}: a key twice", a.name);
        }
    }

    #[test]
    fn helps_look_like_qemus() {
        let n = list(Kind::Netdev);
        assert!(
            n.starts_with("Available netdev backend types:\nsocket\n"),
            "{n}"
        );
        assert!(n.contains("vhost-vdpa (not available here)"));
        let c = list(Kind::Chardev);
        assert!(
            c.starts_with("Available chardev backend types: \n  stdio\n"),
            "{c}"
        );
        let d = list(Kind::Device);
        assert!(d.contains("Network devices:\nname \"virtio-net-device\", bus virtio-bus, desc"));
        let h = type_help(Kind::Device, "virtio-net-device").unwrap();
        assert!(h.starts_with("virtio-net-device options:\n"), "{h}");
        assert!(
            h.contains("  mac=<str>              - Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56\n"),
            "{h}"
        );
        assert!(h.contains(
            "  mq=<bool>              - several queue pairs (VIRTIO_NET_F_MQ) (default: off)"
        ));
        assert!(
            type_help(Kind::Object, "memory-backend-memfd")
                .unwrap()
                .contains("size=<size>")
        );
        assert!(
            type_help(Kind::Chardev, "memory")
                .unwrap()
                .starts_with("ringbuf options:")
        );
        assert!(type_help(Kind::Netdev, "nope").is_none());
    }
}
