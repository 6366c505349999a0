//! Feature bits (spec §2.2, §6) and their negotiation, seen from both sides.
//!
//! The transport bits and each device type's bits are `bitflags` types over
//! the 64-bit feature set; the specification's "Feature bit requirements"
//! are one table of [`Rule`]s that both the driver's choice
//! ([`driver_select`]) and the device's check ([`validate`]) read. Bits 64
//! and above (e.g. `VIRTIO_NET_F_RSS_CONTEXT`) and the rules that involve
//! them are deliberately not modelled: the full set here is a plain `u64`.

use core::fmt;

/// Defines a `bitflags` type over `u64` and the table of spec names of its
/// bits, so a bit's name is written once.
macro_rules! feature_bits {
    (
        $(#[$meta:meta])*
        pub struct $name:ident, $prefix:literal {
            $( $(#[doc = $fdoc:literal])* const $flag:ident = $bit:literal; )*
        }
    ) => {
        bitflags::bitflags! {
            $(#[$meta])*
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
            pub struct $name: u64 {
                $( $(#[doc = $fdoc])* const $flag = 1 << $bit; )*
            }
        }

        impl $name {
            /// The specification's name of each bit, by bit number.
            pub const NAMES: &'static [(u8, &'static str)] =
                &[ $( ($bit, concat!($prefix, stringify!($flag))) ),* ];
        }
    };
}

feature_bits! {
    /// Device-independent ("reserved") feature bits: extensions of the
    /// queues and of feature negotiation (§6, legacy ones §6.3).
    pub struct TransportFeatures, "VIRTIO_F_" {
        /// Legacy: notify when the available ring runs empty even if
        /// notifications are suppressed (§6.3, `VIRTIO_F_NOTIFY_ON_EMPTY`).
        const NOTIFY_ON_EMPTY = 24;
        /// Legacy: the device accepts any descriptor layout (§6.3,
        /// `VIRTIO_F_ANY_LAYOUT`).
        const ANY_LAYOUT = 27;
        /// Indirect descriptors (§2.7.5.3, spec name `VIRTIO_F_INDIRECT_DESC`).
        const RING_INDIRECT_DESC = 28;
        /// `used_event` / `avail_event` suppression (§2.7.10, spec name
        /// `VIRTIO_F_EVENT_IDX`).
        const RING_EVENT_IDX = 29;
        /// Compliance with virtio 1.x, i.e. not legacy (§6).
        const VERSION_1 = 32;
        /// Device access to memory is translated or limited by the platform
        /// (an IOMMU) (§6).
        const ACCESS_PLATFORM = 33;
        /// The packed virtqueue layout (§2.8).
        const RING_PACKED = 34;
        /// Buffers are used in the order they were made available (§6).
        const IN_ORDER = 35;
        /// Memory ordering as the platform describes for hardware (§6).
        const ORDER_PLATFORM = 36;
        /// Single Root I/O Virtualization, PCI only (§6).
        const SR_IOV = 37;
        /// Driver notifications carry extra data (§2.9, §6).
        const NOTIFICATION_DATA = 38;
        /// The driver uses device-provided notification data (§6).
        const NOTIF_CONFIG_DATA = 39;
        /// Individual virtqueue reset (§2.6.1).
        const RING_RESET = 40;
        /// Administration virtqueues, PCI only for now (§2.12, §6).
        const ADMIN_VQ = 41;
        /// The driver can suspend the device (§2.1, §6).
        const SUSPEND = 43;
    }
}

/// The spec names of the two transport bits whose constant names here
/// differ from the spec (`RING_INDIRECT_DESC`, `RING_EVENT_IDX`).
const TRANSPORT_SPEC_NAMES: &[(u8, &str)] =
    &[(28, "VIRTIO_F_INDIRECT_DESC"), (29, "VIRTIO_F_EVENT_IDX")];

feature_bits! {
    /// Network device feature bits (§5.1.3); bits 64 and above are not
    /// representable here.
    pub struct NetFeatures, "VIRTIO_NET_F_" {
        /// Device handles packets with partial checksum (§5.1.3).
        const CSUM = 0;
        /// Driver handles packets with partial checksum (§5.1.3).
        const GUEST_CSUM = 1;
        /// Control channel offloads reconfiguration (§5.1.3).
        const CTRL_GUEST_OFFLOADS = 2;
        /// Device reports its maximum MTU (§5.1.3).
        const MTU = 3;
        /// Device has given a MAC address (§5.1.3).
        const MAC = 5;
        /// Legacy: device handles packets with any GSO type (§5.1.3.2).
        const GSO = 6;
        /// Driver can receive TSOv4 (§5.1.3).
        const GUEST_TSO4 = 7;
        /// Driver can receive TSOv6 (§5.1.3).
        const GUEST_TSO6 = 8;
        /// Driver can receive TSO with ECN (§5.1.3).
        const GUEST_ECN = 9;
        /// Driver can receive UFO (§5.1.3).
        const GUEST_UFO = 10;
        /// Device can receive TSOv4 (§5.1.3).
        const HOST_TSO4 = 11;
        /// Device can receive TSOv6 (§5.1.3).
        const HOST_TSO6 = 12;
        /// Device can receive TSO with ECN (§5.1.3).
        const HOST_ECN = 13;
        /// Device can receive UFO (§5.1.3).
        const HOST_UFO = 14;
        /// Driver can merge receive buffers (§5.1.3).
        const MRG_RXBUF = 15;
        /// Configuration status field is available (§5.1.3).
        const STATUS = 16;
        /// Control channel is available (§5.1.3).
        const CTRL_VQ = 17;
        /// Control channel RX mode support (§5.1.3).
        const CTRL_RX = 18;
        /// Control channel VLAN filtering (§5.1.3).
        const CTRL_VLAN = 19;
        /// Control channel RX extra mode support (§5.1.3).
        const CTRL_RX_EXTRA = 20;
        /// Driver can send gratuitous packets (§5.1.3).
        const GUEST_ANNOUNCE = 21;
        /// Multiqueue with automatic receive steering (§5.1.3).
        const MQ = 22;
        /// Set MAC address through the control channel (§5.1.3).
        const CTRL_MAC_ADDR = 23;
        /// Device-level statistics over the control queue (§5.1.3).
        const DEVICE_STATS = 50;
        /// Inner header hash for encapsulated packets (§5.1.3).
        const HASH_TUNNEL = 51;
        /// Virtqueue notification coalescing (§5.1.3).
        const VQ_NOTF_COAL = 52;
        /// Notification coalescing (§5.1.3).
        const NOTF_COAL = 53;
        /// Driver can receive USOv4 (§5.1.3).
        const GUEST_USO4 = 54;
        /// Driver can receive USOv6 (§5.1.3).
        const GUEST_USO6 = 55;
        /// Device can receive USO (§5.1.3).
        const HOST_USO = 56;
        /// Device reports a per-packet hash (§5.1.3).
        const HASH_REPORT = 57;
        /// Driver provides the exact `hdr_len` (§5.1.3).
        const GUEST_HDRLEN = 59;
        /// Receive-side scaling (§5.1.3).
        const RSS = 60;
        /// Device reports coalesced segments and duplicated ACKs (§5.1.3).
        const RSC_EXT = 61;
        /// Device may act as a standby for a primary device (§5.1.3).
        const STANDBY = 62;
        /// Device reports speed and duplex (§5.1.3).
        const SPEED_DUPLEX = 63;
    }
}

feature_bits! {
    /// Block device feature bits (§5.2.3, legacy ones §5.2.3.1).
    pub struct BlkFeatures, "VIRTIO_BLK_F_" {
        /// Legacy: request barriers (§5.2.3.1).
        const BARRIER = 0;
        /// Maximum segment size is in `size_max` (§5.2.3).
        const SIZE_MAX = 1;
        /// Maximum number of segments is in `seg_max` (§5.2.3).
        const SEG_MAX = 2;
        /// Disk-style geometry is in `geometry` (§5.2.3).
        const GEOMETRY = 4;
        /// Device is read-only (§5.2.3).
        const RO = 5;
        /// Block size is in `blk_size` (§5.2.3).
        const BLK_SIZE = 6;
        /// Legacy: SCSI packet commands (§5.2.3.1).
        const SCSI = 7;
        /// Cache flush command (§5.2.3; legacy name `WCE`).
        const FLUSH = 9;
        /// Optimal I/O alignment information (§5.2.3).
        const TOPOLOGY = 10;
        /// Writeback / writethrough cache toggle (§5.2.3).
        const CONFIG_WCE = 11;
        /// Multiqueue (§5.2.3).
        const MQ = 12;
        /// Discard command (§5.2.3).
        const DISCARD = 13;
        /// Write zeroes command (§5.2.3).
        const WRITE_ZEROES = 14;
        /// Storage lifetime information (§5.2.3).
        const LIFETIME = 15;
        /// Secure erase command (§5.2.3).
        const SECURE_ERASE = 16;
        /// Zoned block device (§5.2.3).
        const ZONED = 17;
    }
}

feature_bits! {
    /// Console device feature bits (§5.3.3).
    pub struct ConsoleFeatures, "VIRTIO_CONSOLE_F_" {
        /// `cols` and `rows` are valid (§5.3.3).
        const SIZE = 0;
        /// Multiple ports and control queues (§5.3.3).
        const MULTIPORT = 1;
        /// Emergency write (§5.3.3).
        const EMERG_WRITE = 2;
    }
}

feature_bits! {
    /// Entropy device feature bits: none are defined (§5.4.3).
    pub struct RngFeatures, "VIRTIO_RNG_F_" {}
}

feature_bits! {
    /// Crypto device feature bits (§5.9.3).
    pub struct CryptoFeatures, "VIRTIO_CRYPTO_F_" {
        /// Revision 1 request format (§5.9.3).
        const REVISION_1 = 0;
        /// Stateless CIPHER requests (§5.9.3).
        const CIPHER_STATELESS_MODE = 1;
        /// Stateless HASH requests (§5.9.3).
        const HASH_STATELESS_MODE = 2;
        /// Stateless MAC requests (§5.9.3).
        const MAC_STATELESS_MODE = 3;
        /// Stateless AEAD requests (§5.9.3).
        const AEAD_STATELESS_MODE = 4;
        /// Stateless AKCIPHER requests (§5.9.3).
        const AKCIPHER_STATELESS_MODE = 5;
    }
}

/// Declares `DeviceType` and its id table in one place.
macro_rules! device_types {
    ($( $(#[$m:meta])* $name:ident = $id:literal, )*) => {
        /// A virtio device type, by the device IDs of §5.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DeviceType {
            $( $(#[$m])* $name = $id, )*
        }

        impl DeviceType {
            /// Every device type the specification assigns an ID to.
            pub const ALL: &'static [DeviceType] = &[ $( DeviceType::$name, )* ];

            /// The type with device ID `id`, if the specification assigns
            /// it (0 is reserved and invalid, §5).
            pub const fn from_id(id: u32) -> Option<DeviceType> {
                match id {
                    $( $id => Some(DeviceType::$name), )*
                    _ => None,
                }
            }
        }
    };
}

device_types! {
    /// Network device (§5.1).
    Net = 1,
    /// Block device (§5.2).
    Blk = 2,
    /// Console (§5.3).
    Console = 3,
    /// Entropy source (§5.4).
    Rng = 4,
    /// Traditional memory balloon (§5.5).
    Balloon = 5,
    /// ioMemory (§5, unspecified).
    IoMemory = 6,
    /// rpmsg (§5, unspecified).
    Rpmsg = 7,
    /// SCSI host (§5.6).
    Scsi = 8,
    /// 9P transport (§5, unspecified).
    P9 = 9,
    /// mac80211 wlan (§5, unspecified).
    Mac80211Wlan = 10,
    /// rproc serial (§5, unspecified).
    RprocSerial = 11,
    /// virtio CAIF (§5, unspecified).
    Caif = 12,
    /// Memory balloon (§5, unspecified).
    MemoryBalloon = 13,
    /// GPU device (§5.7).
    Gpu = 16,
    /// RTC (real time clock) device (§5.23).
    Rtc = 17,
    /// Input device (§5.8).
    Input = 18,
    /// Socket device, vsock (§5.10).
    Vsock = 19,
    /// Crypto device (§5.9).
    Crypto = 20,
    /// Signal distribution module (§5, unspecified).
    SignalDistribution = 21,
    /// pstore device (§5, unspecified).
    Pstore = 22,
    /// IOMMU device (§5.13).
    Iommu = 23,
    /// Memory device (§5.15).
    Mem = 24,
    /// Sound device (§5.14).
    Sound = 25,
    /// File system device (§5.11).
    Fs = 26,
    /// PMEM device (§5.19).
    Pmem = 27,
    /// RPMB device (§5.12).
    Rpmb = 28,
    /// mac80211 hwsim wireless simulation (§5, unspecified).
    Mac80211Hwsim = 29,
    /// Video encoder (§5, unspecified here).
    VideoEncoder = 30,
    /// Video decoder (§5, unspecified here).
    VideoDecoder = 31,
    /// SCMI device (§5.17).
    Scmi = 32,
    /// Nitro secure module (§5, unspecified).
    NitroSecureModule = 33,
    /// I2C adapter (§5.16).
    I2c = 34,
    /// Watchdog (§5, unspecified).
    Watchdog = 35,
    /// CAN device (§5.20).
    Can = 36,
    /// Parameter server (§5, unspecified).
    ParameterServer = 38,
    /// Audio policy device (§5, unspecified).
    AudioPolicy = 39,
    /// Bluetooth device (§5, unspecified).
    Bluetooth = 40,
    /// GPIO device (§5.18).
    Gpio = 41,
    /// RDMA device (§5, unspecified).
    Rdma = 42,
    /// Camera device (§5, unspecified).
    Camera = 43,
    /// ISM device (§5, unspecified).
    Ism = 44,
    /// SPI controller (§5.21).
    Spi = 45,
    /// TEE device (§5, unspecified).
    Tee = 46,
    /// CPU balloon device (§5, unspecified).
    CpuBalloon = 47,
    /// Media device (§5.22).
    Media = 48,
    /// USB controller (§5, unspecified).
    Usb = 49,
}

impl DeviceType {
    /// The device ID (§5).
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The spec names of this type's own feature bits (empty for types
    /// whose bits are not modelled here).
    pub const fn feature_names(self) -> &'static [(u8, &'static str)] {
        match self {
            DeviceType::Net => NetFeatures::NAMES,
            DeviceType::Blk => BlkFeatures::NAMES,
            DeviceType::Console => ConsoleFeatures::NAMES,
            DeviceType::Rng => RngFeatures::NAMES,
            DeviceType::Crypto => CryptoFeatures::NAMES,
            _ => &[],
        }
    }

    /// The feature dependency rules of this type (§2.2.1 and the type's
    /// "Feature bit requirements").
    pub const fn rules(self) -> &'static [Rule] {
        match self {
            DeviceType::Net => NET_RULES,
            DeviceType::Crypto => CRYPTO_RULES,
            _ => &[],
        }
    }
}

/// The specification's name of feature `bit` for `device_type`, e.g.
/// `"VIRTIO_NET_F_GUEST_ECN"` or `"VIRTIO_F_VERSION_1"` (§2.2, §6).
///
/// Transport bits (24 to 41 and 43) are named as transport bits.
pub fn feature_name(device_type: DeviceType, bit: u8) -> Option<&'static str> {
    transport_name(bit).or_else(|| lookup(device_type.feature_names(), bit))
}

fn transport_name(bit: u8) -> Option<&'static str> {
    lookup(TRANSPORT_SPEC_NAMES, bit).or_else(|| lookup(TransportFeatures::NAMES, bit))
}

fn lookup(names: &'static [(u8, &'static str)], bit: u8) -> Option<&'static str> {
    names.iter().find(|(b, _)| *b == bit).map(|(_, n)| *n)
}

/// Names `bit` for messages, falling back to the number.
struct BitName(Option<DeviceType>, u8);

impl fmt::Display for BitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            Some(t) => feature_name(t, self.1),
            None => transport_name(self.1),
        };
        match name {
            Some(n) => f.write_str(n),
            None => write!(f, "feature bit {}", self.1),
        }
    }
}

/// What a [`Rule`] asks of the other bits of the set (§2.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requires {
    /// Every bit of the mask must be in the set.
    AllOf(u64),
    /// At least one bit of the mask must be in the set.
    AnyOf(u64),
}

impl Requires {
    /// The bits the requirement is about.
    pub const fn mask(self) -> u64 {
        match self {
            Requires::AllOf(m) | Requires::AnyOf(m) => m,
        }
    }

    /// Whether `set` meets the requirement.
    pub const fn is_met(self, set: u64) -> bool {
        match self {
            Requires::AllOf(m) => set & m == m,
            Requires::AnyOf(m) => set & m != 0,
        }
    }
}

/// How binding a [`Rule`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// "Requires" / MUST: the device refuses FEATURES_OK when it is broken.
    Must,
    /// SHOULD NOT negotiate without: the driver honours it, the device does
    /// not refuse over it.
    Should,
}

/// One feature dependency: `feature` may only be negotiated if `requires`
/// holds for the rest of the set (§2.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The dependent bit.
    pub feature: u8,
    /// What it needs.
    pub requires: Requires,
    /// Whether the device enforces it.
    pub level: Level,
    /// Where the specification states it.
    pub section: &'static str,
}

impl Rule {
    /// Whether `set` breaks this rule.
    pub const fn is_broken_by(&self, set: u64) -> bool {
        set & bit(self.feature) != 0 && !self.requires.is_met(set)
    }
}

const fn bit(n: u8) -> u64 {
    1u64 << (n & 63)
}

const fn nr(mask: u64) -> u8 {
    mask.trailing_zeros() as u8
}

const NET_REQ: &str = "§5.1.3.1";
const NET_CFG: &str = "§5.1.4.2";

const fn net(feature: NetFeatures, requires: Requires) -> Rule {
    Rule {
        feature: nr(feature.bits()),
        requires,
        level: Level::Must,
        section: NET_REQ,
    }
}

const fn all_of(f: NetFeatures) -> Requires {
    Requires::AllOf(f.bits())
}

const fn any_of(f: NetFeatures) -> Requires {
    Requires::AnyOf(f.bits())
}

/// The network device's rules (§5.1.3.1; the two SHOULD rules §5.1.4.2).
/// Rules about bits 64 and above (RSS_CONTEXT, the UDP tunnel bits) are
/// left out.
pub const NET_RULES: &[Rule] = {
    use NetFeatures as N;
    &[
        net(N::GUEST_TSO4, all_of(N::GUEST_CSUM)),
        net(N::GUEST_TSO6, all_of(N::GUEST_CSUM)),
        net(N::GUEST_ECN, any_of(N::GUEST_TSO4.union(N::GUEST_TSO6))),
        net(N::GUEST_UFO, all_of(N::GUEST_CSUM)),
        net(N::GUEST_USO4, all_of(N::GUEST_CSUM)),
        net(N::GUEST_USO6, all_of(N::GUEST_CSUM)),
        net(N::HOST_TSO4, all_of(N::CSUM)),
        net(N::HOST_TSO6, all_of(N::CSUM)),
        net(N::HOST_ECN, any_of(N::HOST_TSO4.union(N::HOST_TSO6))),
        net(N::HOST_UFO, all_of(N::CSUM)),
        net(N::HOST_USO, all_of(N::CSUM)),
        net(N::CTRL_RX, all_of(N::CTRL_VQ)),
        net(N::CTRL_VLAN, all_of(N::CTRL_VQ)),
        net(N::GUEST_ANNOUNCE, all_of(N::CTRL_VQ)),
        net(N::MQ, all_of(N::CTRL_VQ)),
        net(N::CTRL_MAC_ADDR, all_of(N::CTRL_VQ)),
        net(N::NOTF_COAL, all_of(N::CTRL_VQ)),
        net(N::RSC_EXT, any_of(N::HOST_TSO4.union(N::HOST_TSO6))),
        net(N::RSS, all_of(N::CTRL_VQ)),
        net(N::VQ_NOTF_COAL, all_of(N::CTRL_VQ)),
        net(N::HASH_TUNNEL, all_of(N::CTRL_VQ)),
        net(N::HASH_TUNNEL, any_of(N::RSS.union(N::HASH_REPORT))),
        Rule {
            level: Level::Should,
            section: NET_CFG,
            ..net(N::HASH_REPORT, all_of(N::CTRL_VQ))
        },
        Rule {
            level: Level::Should,
            section: NET_CFG,
            ..net(N::CTRL_RX_EXTRA, all_of(N::CTRL_VQ))
        },
    ]
};

const fn crypto(feature: CryptoFeatures) -> Rule {
    Rule {
        feature: nr(feature.bits()),
        requires: Requires::AllOf(CryptoFeatures::REVISION_1.bits()),
        level: Level::Must,
        section: "§5.9.3.1",
    }
}

/// The crypto device's rules (§5.9.3.1).
pub const CRYPTO_RULES: &[Rule] = &[
    crypto(CryptoFeatures::CIPHER_STATELESS_MODE),
    crypto(CryptoFeatures::HASH_STATELESS_MODE),
    crypto(CryptoFeatures::MAC_STATELESS_MODE),
    crypto(CryptoFeatures::AEAD_STATELESS_MODE),
    crypto(CryptoFeatures::AKCIPHER_STATELESS_MODE),
];

/// Why a driver's feature set is not acceptable to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The driver accepted a bit the device did not offer (§2.2.1); the
    /// lowest such bit.
    NotOffered {
        /// The device type, for naming the bit.
        device_type: Option<DeviceType>,
        /// The bit number.
        bit: u8,
    },
    /// A modern transport needs `VIRTIO_F_VERSION_1` (§6.1: the driver MUST
    /// accept it when offered).
    Version1Missing,
    /// The driver accepted a bit without what it requires (§2.2.1).
    MissingDependency {
        /// The device type whose rule is broken.
        device_type: DeviceType,
        /// The broken rule.
        rule: Rule,
    },
}

impl FeatureError {
    /// The bit the error is about.
    pub fn bit(&self) -> u8 {
        match *self {
            FeatureError::NotOffered { bit, .. } => bit,
            FeatureError::Version1Missing => nr(TransportFeatures::VERSION_1.bits()),
            FeatureError::MissingDependency { rule, .. } => rule.feature,
        }
    }
}

impl fmt::Display for FeatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FeatureError::NotOffered { device_type, bit } => write!(
                f,
                "{} accepted but not offered by the device (§2.2.1)",
                BitName(device_type, bit)
            ),
            FeatureError::Version1Missing => {
                f.write_str("VIRTIO_F_VERSION_1 not accepted on a modern transport (§6.1)")
            }
            FeatureError::MissingDependency { device_type, rule } => {
                let t = Some(device_type);
                write!(f, "{} requires ", BitName(t, rule.feature))?;
                let (mask, sep) = match rule.requires {
                    Requires::AllOf(m) => (m, " and "),
                    Requires::AnyOf(m) => (m, " or "),
                };
                let mut first = true;
                for b in (0..64u8).filter(|b| mask & bit(*b) != 0) {
                    if !first {
                        f.write_str(sep)?;
                    }
                    first = false;
                    write!(f, "{}", BitName(t, b))?;
                }
                write!(f, " ({})", rule.section)
            }
        }
    }
}

impl core::error::Error for FeatureError {}

/// The driver's choice (§2.2.1, §6.1): the bits of `offered ∩ wanted`,
/// plus `VIRTIO_F_VERSION_1` whenever it is offered, with every bit whose
/// requirement (MUST or SHOULD) is not met within the result dropped, to a
/// fixed point.
pub fn driver_select(device_type: DeviceType, offered: u64, wanted: u64) -> u64 {
    select_with(device_type.rules(), offered, wanted)
}

/// [`driver_select`] for a device whose type may be outside the table: an
/// unknown type has no dependency rules.
pub fn driver_select_id(device_type: Option<DeviceType>, offered: u64, wanted: u64) -> u64 {
    select_with(device_type.map_or(&[], DeviceType::rules), offered, wanted)
}

fn select_with(rules: &[Rule], offered: u64, wanted: u64) -> u64 {
    let mut set = offered & (wanted | TransportFeatures::VERSION_1.bits());
    // Each pass either drops a bit or ends the loop, so 65 passes suffice.
    for _ in 0..=64 {
        let broken = rules
            .iter()
            .filter(|r| r.is_broken_by(set))
            .fold(0u64, |acc, r| acc | bit(r.feature));
        if broken == 0 {
            break;
        }
        set &= !broken;
    }
    set
}

/// The device's check of the set the driver wrote, before it accepts
/// FEATURES_OK (§2.2.2): nothing that was not offered, `VERSION_1` on a
/// modern transport (§6.1), and every MUST rule of the device type.
pub fn validate(
    device_type: DeviceType,
    offered: u64,
    written: u64,
    modern: bool,
) -> Result<(), FeatureError> {
    validate_id(Some(device_type), offered, written, modern)
}

/// [`validate`] for a device whose type may be outside the table: an
/// unknown type has no dependency rules.
pub fn validate_id(
    device_type: Option<DeviceType>,
    offered: u64,
    written: u64,
    modern: bool,
) -> Result<(), FeatureError> {
    let extra = written & !offered;
    if extra != 0 {
        return Err(FeatureError::NotOffered {
            device_type,
            bit: nr(extra),
        });
    }
    if modern && written & TransportFeatures::VERSION_1.bits() == 0 {
        return Err(FeatureError::Version1Missing);
    }
    if let Some(t) = device_type
        && let Some(rule) = t
            .rules()
            .iter()
            .find(|r| r.level == Level::Must && r.is_broken_by(written))
    {
        return Err(FeatureError::MissingDependency {
            device_type: t,
            rule: *rule,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use proptest::prelude::*;

    use super::*;

    const V1: u64 = TransportFeatures::VERSION_1.bits();

    /// Adds to `set` what the rules need, picking the lowest bit of an
    /// any-of requirement.
    fn close(device_type: DeviceType, mut set: u64) -> u64 {
        for _ in 0..64 {
            for r in device_type.rules() {
                if r.is_broken_by(set) {
                    set |= match r.requires {
                        Requires::AllOf(m) => m,
                        Requires::AnyOf(m) => bit(nr(m)),
                    };
                }
            }
        }
        set
    }

    /// Drops from `set` every bit except `keep` that breaks a rule.
    fn prune_except(device_type: DeviceType, mut set: u64, keep: u8) -> u64 {
        for _ in 0..64 {
            for r in device_type.rules() {
                if r.feature != keep && r.is_broken_by(set) {
                    set &= !bit(r.feature);
                }
            }
        }
        set
    }

    #[test]
    fn every_dependency_rule_of_5_1_3_1_and_5_9_3_1_is_enforced() {
        let mut checked = 0;
        for &t in DeviceType::ALL {
            for rule in t.rules() {
                let good = close(t, bit(rule.feature)) | V1;
                assert_eq!(validate(t, u64::MAX, good, true), Ok(()), "{rule:?}");
                let bad = prune_except(t, good & !rule.requires.mask(), rule.feature);
                assert_ne!(bad & bit(rule.feature), 0);
                let got = validate(t, u64::MAX, bad, true);
                match rule.level {
                    Level::Must => {
                        let err = got.unwrap_err();
                        assert_eq!(err.bit(), rule.feature, "{rule:?}");
                        let name = feature_name(t, rule.feature).unwrap();
                        assert!(err.to_string().starts_with(name), "{err}");
                    }
                    // SHOULD rules bind the driver, not the device.
                    Level::Should => assert_eq!(got, Ok(()), "{rule:?}"),
                }
                // The driver never keeps a bit whose rule is broken.
                assert_eq!(driver_select(t, bad, u64::MAX) & bit(rule.feature), 0);
                checked += 1;
            }
        }
        assert_eq!(checked, NET_RULES.len() + CRYPTO_RULES.len());
    }

    #[test]
    fn guest_ecn_message_names_both_alternatives_5_1_3_1() {
        let n = NetFeatures::GUEST_ECN | NetFeatures::GUEST_CSUM;
        let err = validate(DeviceType::Net, u64::MAX, n.bits() | V1, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "VIRTIO_NET_F_GUEST_ECN requires VIRTIO_NET_F_GUEST_TSO4 or \
             VIRTIO_NET_F_GUEST_TSO6 (§5.1.3.1)"
        );
    }

    #[test]
    fn not_offered_names_the_lowest_bit_2_2_1() {
        let offered = NetFeatures::MAC.bits() | V1;
        let written = offered | NetFeatures::MRG_RXBUF.bits() | NetFeatures::RSS.bits();
        let err = validate(DeviceType::Net, offered, written, true).unwrap_err();
        assert_eq!(
            err,
            FeatureError::NotOffered {
                device_type: Some(DeviceType::Net),
                bit: 15
            }
        );
        assert!(err.to_string().starts_with("VIRTIO_NET_F_MRG_RXBUF"));
    }

    #[test]
    fn version_1_required_on_modern_only_6_1() {
        let offered = BlkFeatures::FLUSH.bits() | V1;
        let written = BlkFeatures::FLUSH.bits();
        assert_eq!(
            validate(DeviceType::Blk, offered, written, true),
            Err(FeatureError::Version1Missing)
        );
        assert_eq!(validate(DeviceType::Blk, offered, written, false), Ok(()));
        assert_eq!(validate(DeviceType::Blk, offered, offered, true), Ok(()));
    }

    #[test]
    fn rng_has_no_bits_5_4_3() {
        assert!(RngFeatures::all().is_empty());
        assert_eq!(validate(DeviceType::Rng, V1, V1, true), Ok(()));
    }

    #[test]
    fn names_follow_the_spec() {
        let n = |t, b| feature_name(t, b);
        assert_eq!(n(DeviceType::Net, 28), Some("VIRTIO_F_INDIRECT_DESC"));
        assert_eq!(n(DeviceType::Net, 29), Some("VIRTIO_F_EVENT_IDX"));
        assert_eq!(n(DeviceType::Blk, 32), Some("VIRTIO_F_VERSION_1"));
        assert_eq!(n(DeviceType::Net, 54), Some("VIRTIO_NET_F_GUEST_USO4"));
        assert_eq!(
            n(DeviceType::Console, 2),
            Some("VIRTIO_CONSOLE_F_EMERG_WRITE")
        );
        assert_eq!(
            n(DeviceType::Crypto, 5),
            Some("VIRTIO_CRYPTO_F_AKCIPHER_STATELESS_MODE")
        );
        assert_eq!(n(DeviceType::Rng, 0), None);
        assert_eq!(n(DeviceType::Gpu, 0), None);
        // The tables agree with the flags.
        for (b, name) in NetFeatures::NAMES {
            let (flag, f) = NetFeatures::from_bits(bit(*b))
                .unwrap()
                .iter_names()
                .next()
                .unwrap();
            assert!(name.ends_with(flag), "{name}");
            assert_eq!(f.bits(), bit(*b));
        }
    }

    #[test]
    fn device_ids_of_section_5() {
        for (id, t) in [
            (1, DeviceType::Net),
            (2, DeviceType::Blk),
            (3, DeviceType::Console),
            (4, DeviceType::Rng),
            (5, DeviceType::Balloon),
            (8, DeviceType::Scsi),
            (9, DeviceType::P9),
            (16, DeviceType::Gpu),
            (18, DeviceType::Input),
            (19, DeviceType::Vsock),
            (20, DeviceType::Crypto),
            (23, DeviceType::Iommu),
            (24, DeviceType::Mem),
            (25, DeviceType::Sound),
            (26, DeviceType::Fs),
            (27, DeviceType::Pmem),
        ] {
            assert_eq!(DeviceType::from_id(id), Some(t));
            assert_eq!(t.id(), id);
        }
        for id in [0, 14, 15, 37, 50, u32::MAX] {
            assert_eq!(DeviceType::from_id(id), None);
        }
        for &t in DeviceType::ALL {
            assert_eq!(DeviceType::from_id(t.id()), Some(t));
        }
    }

    #[test]
    fn driver_select_drops_to_a_fixed_point_2_2_1() {
        use NetFeatures as N;
        // GUEST_ECN needs GUEST_TSO4, which needs GUEST_CSUM (not offered):
        // both go.
        let offered = (N::GUEST_TSO4 | N::GUEST_ECN | N::MAC).bits() | V1;
        let got = driver_select(DeviceType::Net, offered, u64::MAX);
        assert_eq!(got, N::MAC.bits() | V1);
        // VERSION_1 is taken whenever offered (§6.1).
        assert_eq!(driver_select(DeviceType::Net, offered, 0), V1);
        assert_eq!(driver_select(DeviceType::Net, 0, u64::MAX), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn driver_select_always_validates(
            offered in any::<u64>(),
            wanted in any::<u64>(),
            t in prop::sample::select(DeviceType::ALL),
        ) {
            let offered = offered | V1;
            let got = driver_select(t, offered, wanted);
            prop_assert_eq!(got & !offered, 0);
            prop_assert_eq!(validate(t, offered, got, true), Ok(()));
            // Idempotent: choosing again from the result keeps it.
            prop_assert_eq!(driver_select(t, got, got), got);
        }
    }
}
