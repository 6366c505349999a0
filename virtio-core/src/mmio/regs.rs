//! The virtio-mmio register map: offsets (spec §4.2.2, legacy §4.2.4), the
//! magic value, and [`Register`], which names the register at an offset for
//! a given version.
//!
//! This module only names registers; what reading or writing them does is
//! in `device` and `driver`. Register names follow the spec's older
//! `QueueNumMax`/`QueueNum`, which §4.2.2 now calls `QueueSizeMax`/`QueueSize`.

use core::fmt;

/// `MagicValue`: "virt" in little-endian (§4.2.2).
pub const MAGIC: u32 = 0x7472_6976;

/// `MagicValue`, R (§4.2.2).
pub const MAGIC_VALUE: u64 = 0x000;
/// `Version`, R: 2, or 1 for legacy (§4.2.2).
pub const VERSION: u64 = 0x004;
/// `DeviceID`, R (§4.2.2).
pub const DEVICE_ID: u64 = 0x008;
/// `VendorID`, R (§4.2.2).
pub const VENDOR_ID: u64 = 0x00c;
/// `DeviceFeatures` (legacy `HostFeatures`), R (§4.2.2).
pub const DEVICE_FEATURES: u64 = 0x010;
/// `DeviceFeaturesSel` (legacy `HostFeaturesSel`), W (§4.2.2).
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// `DriverFeatures` (legacy `GuestFeatures`), W (§4.2.2).
pub const DRIVER_FEATURES: u64 = 0x020;
/// `DriverFeaturesSel` (legacy `GuestFeaturesSel`), W (§4.2.2).
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// `GuestPageSize`, W, legacy only (§4.2.4).
pub const GUEST_PAGE_SIZE: u64 = 0x028;
/// `QueueSel`, W (§4.2.2).
pub const QUEUE_SEL: u64 = 0x030;
/// `QueueNumMax` (now `QueueSizeMax`), R (§4.2.2).
pub const QUEUE_NUM_MAX: u64 = 0x034;
/// `QueueNum` (now `QueueSize`), W (§4.2.2).
pub const QUEUE_NUM: u64 = 0x038;
/// `QueueAlign`, W, legacy only (§4.2.4).
pub const QUEUE_ALIGN: u64 = 0x03c;
/// `QueuePFN`, RW, legacy only (§4.2.4).
pub const QUEUE_PFN: u64 = 0x040;
/// `QueueReady`, RW (§4.2.2).
pub const QUEUE_READY: u64 = 0x044;
/// `QueueNotify`, W (§4.2.2).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// `InterruptStatus`, R (§4.2.2).
pub const INTERRUPT_STATUS: u64 = 0x060;
/// `InterruptACK`, W (§4.2.2).
pub const INTERRUPT_ACK: u64 = 0x064;
/// `Status`, RW (§4.2.2).
pub const STATUS: u64 = 0x070;
/// `QueueDescLow`, W (§4.2.2).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// `QueueDescHigh`, W (§4.2.2).
pub const QUEUE_DESC_HIGH: u64 = 0x084;
/// `QueueDriverLow`, W (§4.2.2).
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// `QueueDriverHigh`, W (§4.2.2).
pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
/// `QueueDeviceLow`, W (§4.2.2).
pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// `QueueDeviceHigh`, W (§4.2.2).
pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// `SHMSel`, W (§4.2.2).
pub const SHM_SEL: u64 = 0x0ac;
/// `SHMLenLow`, R (§4.2.2).
pub const SHM_LEN_LOW: u64 = 0x0b0;
/// `SHMLenHigh`, R (§4.2.2).
pub const SHM_LEN_HIGH: u64 = 0x0b4;
/// `SHMBaseLow`, R (§4.2.2).
pub const SHM_BASE_LOW: u64 = 0x0b8;
/// `SHMBaseHigh`, R (§4.2.2).
pub const SHM_BASE_HIGH: u64 = 0x0bc;
/// `QueueReset`, RW (§4.2.2).
pub const QUEUE_RESET: u64 = 0x0c0;
/// `ConfigGeneration`, R (§4.2.2).
pub const CONFIG_GENERATION: u64 = 0x0fc;
/// `Config`: the device-specific configuration space starts here (§4.2.2).
pub const CONFIG: u64 = 0x100;

bitflags::bitflags! {
    /// The bits of `InterruptStatus` / `InterruptACK` (§4.2.2).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct InterruptStatus: u32 {
        /// A buffer was used in at least one active queue (§4.2.2).
        const USED_BUFFER = 1;
        /// The configuration changed (§4.2.2).
        const CONFIG_CHANGE = 2;
    }
}

/// The virtio-mmio version a device reports in `Version` (§4.2.2, §4.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmioVersion {
    /// Version 1, the legacy interface with page-based queues (§4.2.4).
    Legacy = 1,
    /// Version 2 (§4.2.2).
    Modern = 2,
}

impl MmioVersion {
    /// The version with this `Version` register value, if supported.
    pub const fn from_u32(v: u32) -> Option<MmioVersion> {
        match v {
            1 => Some(MmioVersion::Legacy),
            2 => Some(MmioVersion::Modern),
            _ => None,
        }
    }
}

/// Which way a register may be accessed by the driver (§4.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Read-only (R).
    Read,
    /// Write-only (W).
    Write,
    /// Read and write (RW).
    ReadWrite,
}

/// Declares `Register` with offset, direction and versions in one table.
macro_rules! registers {
    ($( $(#[$m:meta])* $name:ident = $off:ident, $dir:ident, $ver:ident; )*) => {
        /// A control register of the virtio-mmio transport (§4.2.2, §4.2.4).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Register {
            $( $(#[$m])* $name, )*
        }

        impl Register {
            /// Every register of both versions.
            pub const ALL: &'static [Register] = &[ $( Register::$name, )* ];

            /// The register's offset from the base.
            pub const fn offset(self) -> u64 {
                match self { $( Register::$name => $off, )* }
            }

            /// The register's name in the spec.
            pub const fn name(self) -> &'static str {
                match self { $( Register::$name => stringify!($name), )* }
            }

            /// Whether the driver may read it, write it, or both.
            pub const fn direction(self) -> Direction {
                match self { $( Register::$name => Direction::$dir, )* }
            }

            /// Whether the register exists in `version`.
            pub const fn exists_in(self, version: MmioVersion) -> bool {
                match self {
                    $( Register::$name => in_version(Versions::$ver, version), )*
                }
            }
        }
    };
}

#[derive(Clone, Copy)]
enum Versions {
    Both,
    Modern,
    Legacy,
}

const fn in_version(v: Versions, version: MmioVersion) -> bool {
    matches!(
        (v, version),
        (Versions::Both, _)
            | (Versions::Modern, MmioVersion::Modern)
            | (Versions::Legacy, MmioVersion::Legacy)
    )
}

registers! {
    /// Magic value "virt".
    MagicValue = MAGIC_VALUE, Read, Both;
    /// Device version number.
    Version = VERSION, Read, Both;
    /// Device type ID (§5).
    DeviceId = DEVICE_ID, Read, Both;
    /// Vendor ID.
    VendorId = VENDOR_ID, Read, Both;
    /// 32 bits of the offered features, selected by `DeviceFeaturesSel`.
    DeviceFeatures = DEVICE_FEATURES, Read, Both;
    /// Selects the word of `DeviceFeatures`.
    DeviceFeaturesSel = DEVICE_FEATURES_SEL, Write, Both;
    /// 32 bits of the accepted features, selected by `DriverFeaturesSel`.
    DriverFeatures = DRIVER_FEATURES, Write, Both;
    /// Selects the word of `DriverFeatures`.
    DriverFeaturesSel = DRIVER_FEATURES_SEL, Write, Both;
    /// Legacy: the guest page size, unit of `QueuePFN`.
    GuestPageSize = GUEST_PAGE_SIZE, Write, Legacy;
    /// Selects the queue the queue registers apply to.
    QueueSel = QUEUE_SEL, Write, Both;
    /// The selected queue's maximum size, 0 if it does not exist.
    QueueNumMax = QUEUE_NUM_MAX, Read, Both;
    /// The selected queue's size.
    QueueNum = QUEUE_NUM, Write, Both;
    /// Legacy: the used ring's alignment.
    QueueAlign = QUEUE_ALIGN, Write, Legacy;
    /// Legacy: the queue's guest page number, 0 when unused.
    QueuePfn = QUEUE_PFN, ReadWrite, Legacy;
    /// Whether the selected queue is enabled.
    QueueReady = QUEUE_READY, ReadWrite, Modern;
    /// Available buffer notification.
    QueueNotify = QUEUE_NOTIFY, Write, Both;
    /// Pending interrupt causes.
    InterruptStatus = INTERRUPT_STATUS, Read, Both;
    /// Acknowledges interrupt causes.
    InterruptAck = INTERRUPT_ACK, Write, Both;
    /// Device status (§2.1).
    Status = STATUS, ReadWrite, Both;
    /// Descriptor area, low 32 bits.
    QueueDescLow = QUEUE_DESC_LOW, Write, Modern;
    /// Descriptor area, high 32 bits.
    QueueDescHigh = QUEUE_DESC_HIGH, Write, Modern;
    /// Driver area, low 32 bits.
    QueueDriverLow = QUEUE_DRIVER_LOW, Write, Modern;
    /// Driver area, high 32 bits.
    QueueDriverHigh = QUEUE_DRIVER_HIGH, Write, Modern;
    /// Device area, low 32 bits.
    QueueDeviceLow = QUEUE_DEVICE_LOW, Write, Modern;
    /// Device area, high 32 bits.
    QueueDeviceHigh = QUEUE_DEVICE_HIGH, Write, Modern;
    /// Selects the shared memory region.
    ShmSel = SHM_SEL, Write, Modern;
    /// Shared memory region length, low 32 bits.
    ShmLenLow = SHM_LEN_LOW, Read, Modern;
    /// Shared memory region length, high 32 bits.
    ShmLenHigh = SHM_LEN_HIGH, Read, Modern;
    /// Shared memory region base, low 32 bits.
    ShmBaseLow = SHM_BASE_LOW, Read, Modern;
    /// Shared memory region base, high 32 bits.
    ShmBaseHigh = SHM_BASE_HIGH, Read, Modern;
    /// Resets the selected queue (with `VIRTIO_F_RING_RESET`).
    QueueReset = QUEUE_RESET, ReadWrite, Modern;
    /// Configuration atomicity value.
    ConfigGeneration = CONFIG_GENERATION, Read, Modern;
}

impl Register {
    /// The control register at `offset` in `version`, if there is one
    /// (configuration space, from [`CONFIG`], is not a control register).
    pub fn from_offset(offset: u64, version: MmioVersion) -> Option<Register> {
        Register::ALL
            .iter()
            .copied()
            .find(|r| r.offset() == offset && r.exists_in(version))
    }

    /// Whether the driver may read it.
    pub const fn is_readable(self) -> bool {
        !matches!(self.direction(), Direction::Write)
    }

    /// Whether the driver may write it.
    pub const fn is_writable(self) -> bool {
        !matches!(self.direction(), Direction::Read)
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#05x})", self.name(), self.offset())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_4_2_2() {
        let r = |o| Register::from_offset(o, MmioVersion::Modern);
        assert_eq!(r(0x000), Some(Register::MagicValue));
        assert_eq!(r(0x034), Some(Register::QueueNumMax));
        assert_eq!(r(0x044), Some(Register::QueueReady));
        assert_eq!(r(0x0ac), Some(Register::ShmSel));
        assert_eq!(r(0x0bc), Some(Register::ShmBaseHigh));
        assert_eq!(r(0x0c0), Some(Register::QueueReset));
        assert_eq!(r(0x0fc), Some(Register::ConfigGeneration));
        // Legacy-only and unknown offsets.
        assert_eq!(r(0x028), None);
        assert_eq!(r(0x040), None);
        assert_eq!(r(0x018), None);
        assert_eq!(r(0x100), None);
        assert_eq!(r(0x081), None);
        assert_eq!(MAGIC.to_le_bytes(), *b"virt");
    }

    #[test]
    fn legacy_offsets_of_4_2_4() {
        let r = |o| Register::from_offset(o, MmioVersion::Legacy);
        assert_eq!(r(0x028), Some(Register::GuestPageSize));
        assert_eq!(r(0x03c), Some(Register::QueueAlign));
        assert_eq!(r(0x040), Some(Register::QueuePfn));
        assert_eq!(r(0x070), Some(Register::Status));
        assert_eq!(r(0x044), None);
        assert_eq!(r(0x080), None);
        assert_eq!(r(0x0fc), None);
    }

    #[test]
    fn offsets_are_distinct_and_aligned() {
        for (i, a) in Register::ALL.iter().enumerate() {
            assert_eq!(a.offset() % 4, 0, "{a}");
            assert!(a.offset() < CONFIG);
            for b in &Register::ALL[i + 1..] {
                assert_ne!(a.offset(), b.offset(), "{a} {b}");
            }
        }
    }
}
