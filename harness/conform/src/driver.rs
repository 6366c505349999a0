//! Driver-side checks: a watch on the register accesses a driver makes to
//! a virtio-mmio device (§4.2.2), which records every driver-side
//! statement it sees kept or broken without changing what the device does.
//!
//! Feed it every access as the device's register file sees it
//! ([`DriverWatch::read`], [`DriverWatch::write`]) and the interrupts the
//! device raises ([`DriverWatch::interrupt`]); [`DriverWatch::records`]
//! gives, per statement, a failure (the first time it was broken, with
//! what was seen), a pass (the driver did the thing the statement is about
//! and never broke it), or not observable (the driver never did it). The
//! path decides what it sees: in process and under our monitor every
//! access; behind another monitor (vhost-user) none of them.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, Level, TransportFeatures};
use virtio_core::mmio::regs::{self, Direction, InterruptStatus, MmioVersion, Register};
use virtio_core::status::DeviceStatus;

use crate::{Check, Outcome, Record};

pub mod cleanup;
pub mod crypto;
pub mod kick;
pub mod legacy;
pub mod notify;
pub mod publish;
pub mod requests;
pub mod rings;
pub mod rx_headers;
#[cfg(test)]
mod test_ram;

const REGISTERS_ONLY: &str = "driver:mmio/mmio-device-register-layout#1";
const CONTROL_32: &str = "driver:mmio/mmio-device-register-layout#2";
const CONFIG_ALIGNED: &str = "driver:mmio/mmio-device-register-layout#3";
const FEATURES_SEL_FIRST: &str = "driver:mmio/mmio-device-register-layout#7";
const DRIVER_FEATURES_SEL_FIRST: &str = "driver:mmio/mmio-device-register-layout#8";
const QUEUE_SIZE_MAX: &str = "driver:mmio/mmio-device-register-layout#9";
const QUEUE_BUSY: &str = "driver:mmio/mmio-device-register-layout#10";
const READY_READ_BACK: &str = "driver:mmio/mmio-device-register-layout#11";
const ACK_DEFINED: &str = "driver:mmio/mmio-device-register-layout#13";
const MAGIC_FIRST: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#1";
const DEVICE_ID_NEXT: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#2";
const NO_SHM: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#3";
const ISR_AFTER_IRQ: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/notifications-from-the-device#1";
const ACK_AFTER_IRQ: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/notifications-from-the-device#3";
const STATUS_STEPS: &str = "driver:basic/device-status-field#1";
const NO_CLEARED_BIT: &str = "driver:basic/device-status-field#2";
const RESET_AFTER_FAILED: &str = "driver:basic/device-status-field#3";
const OFFERED_ONLY: &str = "driver:basic/feature-bits#1";
const UNDESCRIBED: &str = "driver:basic/feature-bits#3";
const RESERVED: &str = "driver:basic/feature-bits#4";
const NOT_FOR_TRANSPORT: &str = "driver:basic/feature-bits#5";
const NOT_FOR_TYPE: &str = "driver:basic/feature-bits#6";
const INIT_RESET: &str = "driver:general/device-initialization#1";
const INIT_ACK: &str = "driver:general/device-initialization#2";
const INIT_DRIVER: &str = "driver:general/device-initialization#3";
const INIT_FEATURES: &str = "driver:general/device-initialization#4";
const INIT_NO_CONFIG_WRITE: &str = "driver:general/device-initialization#5";
const INIT_FEATURES_OK: &str = "driver:general/device-initialization#6";
const INIT_NO_NEW_FEATURES: &str = "driver:general/device-initialization#7";
const INIT_REREAD: &str = "driver:general/device-initialization#8";
const INIT_SETUP: &str = "driver:general/device-initialization#9";
const INIT_DRIVER_OK: &str = "driver:general/device-initialization#10";
const INIT_LIVE: &str = "driver:general/device-initialization#11";
const INIT_GIVE_UP: &str = "driver:general/device-initialization#12";
const INIT_STOP: &str = "driver:general/device-initialization#13";
const NO_NOTIFY_BEFORE_DRIVER_OK: &str = "driver:general/device-initialization#14";
const UNKNOWN_FEATURE_NO_FAIL: &str = "driver:basic/feature-bits#8";
const FEATURES_VALIDATED: &str = "driver:basic/feature-bits#2";
const FEATURE_MISSING: &str = "driver:basic/feature-bits#7";
const IGNORE_BAD_MAGIC: &str = "driver:mmio/mmio-device-register-layout#4";
const IGNORE_BAD_VERSION: &str = "driver:mmio/mmio-device-register-layout#5";
const IGNORE_NO_DEVICE: &str = "driver:mmio/mmio-device-register-layout#6";
const IGNORE_UNDEFINED_ISR: &str = "driver:mmio/mmio-device-register-layout#12";
const ACCEPTS_VERSION_1: &str = "driver:reserved-features#1";
const OPTIONAL_FIELDS: &str = "driver:basic/device-configuration-space#2";
const CONFIG_NOT_ATOMIC: &str = "driver:basic/device-configuration-space#1";
const MMIO_INIT_SEQUENCE: &str =
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#4";
/// The steps of §3.1.1 whose outcome [`MMIO_INIT_SEQUENCE`] sums up.
const INIT_STEPS: &[&str] = &[
    INIT_RESET,
    INIT_ACK,
    INIT_DRIVER,
    INIT_FEATURES,
    INIT_NO_CONFIG_WRITE,
    INIT_FEATURES_OK,
    INIT_NO_NEW_FEATURES,
    INIT_REREAD,
    INIT_SETUP,
    INIT_DRIVER_OK,
];

/// Every statement the watch judges.
pub const STATEMENTS: &[&str] = &[
    REGISTERS_ONLY,
    CONTROL_32,
    CONFIG_ALIGNED,
    FEATURES_SEL_FIRST,
    DRIVER_FEATURES_SEL_FIRST,
    QUEUE_SIZE_MAX,
    QUEUE_BUSY,
    READY_READ_BACK,
    ACK_DEFINED,
    MAGIC_FIRST,
    DEVICE_ID_NEXT,
    NO_SHM,
    ISR_AFTER_IRQ,
    ACK_AFTER_IRQ,
    STATUS_STEPS,
    NO_CLEARED_BIT,
    RESET_AFTER_FAILED,
    OFFERED_ONLY,
    UNDESCRIBED,
    RESERVED,
    NOT_FOR_TRANSPORT,
    NOT_FOR_TYPE,
    INIT_RESET,
    INIT_ACK,
    INIT_DRIVER,
    INIT_FEATURES,
    INIT_NO_CONFIG_WRITE,
    INIT_FEATURES_OK,
    INIT_NO_NEW_FEATURES,
    INIT_REREAD,
    INIT_SETUP,
    INIT_DRIVER_OK,
    INIT_LIVE,
    INIT_GIVE_UP,
    INIT_STOP,
    UNKNOWN_FEATURE_NO_FAIL,
    FEATURES_VALIDATED,
    FEATURE_MISSING,
    IGNORE_BAD_MAGIC,
    IGNORE_BAD_VERSION,
    IGNORE_NO_DEVICE,
    IGNORE_UNDEFINED_ISR,
    CONFIG_NOT_ATOMIC,
    MMIO_INIT_SEQUENCE,
    NO_NOTIFY_BEFORE_DRIVER_OK,
    ACCEPTS_VERSION_1,
    OPTIONAL_FIELDS,
];

const BLK_WRITEBACK_AFTER_FEATURES_OK: &str = "driver:blk/device-initialization#3";

/// The block-device statements the register watch judges (for block
/// devices only).
pub const BLK_STATEMENTS: &[&str] = &[BLK_WRITEBACK_AFTER_FEATURES_OK];

const NET_NO_CONFIG_WRITE: &str = "driver:net/device-configuration-layout#1";

/// The network-device statements the register watch judges (for network
/// devices only).
pub const NET_STATEMENTS: &[&str] = &[NET_NO_CONFIG_WRITE];

/// The register watch's network-device part as a [`Check`] for the
/// catalogue.
pub const NET_WATCH: Check = Check {
    name: "driver-register-watch-net",
    statements: NET_STATEMENTS,
    run: |_| {},
};

const CRYPTO_STATUS_READ: &str = "driver:crypto/device-configuration-layout#1";
const CRYPTO_DATAQUEUES_READ: &str = "driver:crypto/device-configuration-layout#3";
const CRYPTO_SERVICES_READ: &str = "driver:crypto/device-configuration-layout#4";
const CRYPTO_ALGOS_READ: &str = "driver:crypto/device-configuration-layout#6";
const CRYPTO_ALL_QUEUES: &str = "driver:crypto/device-initialization#1";
const CRYPTO_INIT_SERVICES: &str = "driver:crypto/device-initialization#2";
const CRYPTO_INIT_ALGOS: &str = "driver:crypto/device-initialization#3";

/// The crypto-device statements the register watch judges (§5.9.5.2,
/// §5.9.6.1), each when the driver sets DRIVER_OK: the configuration it
/// read since the last reset, and the queues it set up.
pub const CRYPTO_STATEMENTS: &[&str] = &[
    CRYPTO_STATUS_READ,
    CRYPTO_DATAQUEUES_READ,
    CRYPTO_SERVICES_READ,
    CRYPTO_ALGOS_READ,
    CRYPTO_ALL_QUEUES,
    CRYPTO_INIT_SERVICES,
    CRYPTO_INIT_ALGOS,
];

/// The register watch's crypto-device part as a [`Check`] for the
/// catalogue.
pub const CRYPTO_WATCH: Check = Check {
    name: "driver-register-watch-crypto",
    statements: CRYPTO_STATEMENTS,
    run: |_| {},
};

/// The crypto configuration's 4-byte words (§5.9.4) a driver read since
/// the last reset, and the services it learnt.
#[derive(Clone, Copy, Debug, Default)]
struct CryptoReads {
    /// Bit `k`: bytes `4k..4k + 4` were read (in whole or in part).
    words: u16,
    /// The first 12 bytes as read, however the reads were sized:
    /// `status`, `max_dataqueues`, `crypto_services`.
    head: [Option<u8>; 12],
    /// The reads were judged (at the first notification after
    /// DRIVER_OK).
    judged: bool,
}

impl CryptoReads {
    /// The `le32` at `at` (0, 4 or 8), if all its bytes were read.
    fn word(&self, at: usize) -> Option<u32> {
        let b = self.head.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0]?, b[1]?, b[2]?, b[3]?]))
    }
}

/// The configuration word (§5.9.4) holding each service's algorithm mask
/// (CIPHER's and MAC's low words, and MAC's high one, which holds defined
/// bits): service number, words.
const CRYPTO_MASK_WORDS: [(u32, &[u16]); 5] =
    [(0, &[3]), (1, &[5]), (2, &[6, 7]), (3, &[8]), (4, &[11])];

/// The register watch's block-device part as a [`Check`] for the
/// catalogue.
pub const BLK_WATCH: Check = Check {
    name: "driver-register-watch-blk",
    statements: BLK_STATEMENTS,
    run: |_| {},
};

/// The watch as a [`Check`] for the catalogue: it is not run against a
/// [`Bus`](crate::Bus) but fed by a transport, so `run` records nothing.
pub const WATCH: Check = Check {
    name: "driver-register-watch",
    statements: STATEMENTS,
    run: |_| {},
};

/// Every driver-side check.
pub const CHECKS: &[Check] = &[
    WATCH,
    BLK_WATCH,
    NET_WATCH,
    CRYPTO_WATCH,
    rings::WATCH,
    notify::WATCH,
    rx_headers::WATCH,
    requests::BLK_WATCH,
    requests::BLK_ASSUMPTIONS,
    requests::NET_WATCH,
    requests::RNG_WATCH,
    requests::RNG_OUTPUT,
    requests::CONSOLE_WATCH,
    crypto::WATCH,
    legacy::WATCH,
    cleanup::WATCH,
    publish::WATCH,
    kick::WATCH,
];

/// What the watch has seen of one statement.
#[derive(Clone, Debug, Default)]
struct Seen {
    kept: bool,
    broken: Option<String>,
}

/// Notes that the driver did what statement `s` is about.
fn keep(seen: &mut BTreeMap<&'static str, Seen>, s: &'static str) {
    seen.entry(s).or_default().kept = true;
}

/// Notes that the driver kept (`ok`) or broke statement `s`; the first
/// breach is kept with `what` was seen.
fn judge(
    seen: &mut BTreeMap<&'static str, Seen>,
    s: &'static str,
    ok: bool,
    what: impl FnOnce() -> String,
) {
    let e = seen.entry(s).or_default();
    if ok {
        e.kept = true;
    } else if e.broken.is_none() {
        e.broken = Some(what());
    }
}

/// What a driver learnt that makes it give up, and what it must do then.
#[derive(Clone, Copy, Debug)]
struct GiveUp {
    /// What happened, for the report.
    cause: &'static str,
    /// The statements a further initialisation step breaks.
    stop: &'static [&'static str],
    /// The statement that asks for FAILED.
    set_failed: &'static str,
    /// FAILED was set since.
    failed: bool,
}

/// The register-level watch on one driver (see the module documentation).
#[derive(Clone, Debug)]
pub struct DriverWatch {
    device_type: Option<DeviceType>,
    offered: u64,
    /// Accesses since the watch began, until DeviceID was read.
    probe: Vec<u64>,
    probe_done: bool,
    features_sel_written: bool,
    /// DeviceFeatures read since the reset.
    features_read: bool,
    driver_features_sel_written: bool,
    driver_features_sel: u32,
    device_features_sel: u32,
    accepted: u64,
    status: u8,
    /// FEATURES_OK written and Status not read since.
    reread_pending: bool,
    failed: bool,
    queue_sel: u32,
    /// Per queue: the `QueueNumMax` the device presents, whether it is
    /// ready.
    queues: BTreeMap<u32, (u32, bool)>,
    /// Queues whose QueueReady was set to 0 and not read back yet.
    readback_pending: Vec<u32>,
    irq_pending: bool,
    isr_read_since_irq: bool,
    isr_seen: u32,
    config_len: u64,
    /// The driver learnt that it must give up: the device cleared
    /// FEATURES_OK (refused the features, §3.1.1), or a modern device
    /// lacks VIRTIO_F_VERSION_1 (§2.2.1).
    gave_up: Option<GiveUp>,
    /// Feature bits offered that no driver can know (a provocation,
    /// [`DriverWatch::with_unknown_offered`]).
    unknown: u64,
    /// DRIVER_OK was set at least once.
    went_live: bool,
    /// The probe read a MagicValue, Version or DeviceID that says "no
    /// device here" (§4.2.2.2): the statement that says to ignore it; the
    /// driver writes nothing from then on.
    ignore: Option<&'static str>,
    /// Undefined bits the driver last read in InterruptStatus.
    undefined_isr: u32,
    /// The Version the driver read (2: modern, §4.2.2).
    version: u64,
    /// The last ConfigGeneration read, and whether configuration was read
    /// since (§2.5.1).
    generation: Option<(u32, bool)>,
    /// The generation changed across configuration reads: they may be
    /// torn, and the driver must read again before it goes on.
    torn: bool,
    /// A crypto driver's configuration reads.
    crypto: CryptoReads,
    seen: BTreeMap<&'static str, Seen>,
}

impl DriverWatch {
    /// The same watch told that `mask` of the offered bits is a feature
    /// no driver knows (one the device offers to provoke): the driver must
    /// still go live (§2.2.1: it MUST NOT fail solely because of it).
    pub fn with_unknown_offered(mut self, mask: u64) -> Self {
        self.unknown = mask;
        self
    }

    /// A watch on a driver of a device of `device_type` offering
    /// `offered`, with `queue_max` entries per queue and `config_len`
    /// bytes of configuration space.
    pub fn new(
        device_type: Option<DeviceType>,
        offered: u64,
        queue_max: &[u16],
        config_len: u64,
    ) -> Self {
        DriverWatch {
            device_type,
            offered,
            probe: Vec::new(),
            probe_done: false,
            features_sel_written: false,
            features_read: false,
            driver_features_sel_written: false,
            driver_features_sel: 0,
            device_features_sel: 0,
            accepted: 0,
            status: 0,
            reread_pending: false,
            failed: false,
            queue_sel: 0,
            queues: queue_max
                .iter()
                .enumerate()
                .map(|(i, m)| (i as u32, (u32::from(*m), false)))
                .collect(),
            readback_pending: Vec::new(),
            irq_pending: false,
            isr_read_since_irq: false,
            isr_seen: 0,
            config_len,
            gave_up: None,
            unknown: 0,
            went_live: false,
            ignore: None,
            undefined_isr: 0,
            version: 0,
            generation: None,
            torn: false,
            crypto: CryptoReads::default(),
            seen: BTreeMap::new(),
        }
    }

    /// The driver read `size` bytes at `offset` and got `value`.
    pub fn read(&mut self, offset: u64, size: usize, value: u64) {
        self.access(offset, size, false, value);
    }

    /// The driver wrote `value` (`size` bytes) at `offset`.
    pub fn write(&mut self, offset: u64, size: usize, value: u64) {
        if let Some(s) = self.ignore {
            judge(&mut self.seen, s, false, || {
                format!("{offset:#x} written ({value:#x}) to a device the probe said to ignore")
            });
        }
        if let Some(g) = self.gave_up {
            self.after_giving_up(offset, value, g);
        }
        if self.torn && offset < regs::CONFIG {
            self.torn = false;
            judge(&mut self.seen, CONFIG_NOT_ATOMIC, false, || {
                format!(
                    "{offset:#x} written after ConfigGeneration changed across configuration reads, without reading them again"
                )
            });
        }
        self.access(offset, size, true, value);
    }

    /// §2.5.1: configuration reads between two ConfigGeneration reads that
    /// differ may be torn; the driver keeps the statement when a later
    /// window of reads is consistent before it goes on.
    fn generation_window(&mut self, offset: u64, value: u32) {
        if offset >= regs::CONFIG {
            if let Some((_, read)) = &mut self.generation {
                *read = true;
            }
        } else if offset == regs::CONFIG_GENERATION {
            if let Some((g, true)) = self.generation {
                if g != value {
                    self.torn = true;
                } else if core::mem::take(&mut self.torn) {
                    keep(&mut self.seen, CONFIG_NOT_ATOMIC);
                }
            }
            self.generation = Some((value, false));
        }
    }

    /// A write after the driver learnt it must give up: setting FAILED or
    /// resetting is all it may do; anything else continues the
    /// initialisation. A reset ends the episode; giving up without FAILED
    /// breaks the statement that asks for it.
    fn after_giving_up(&mut self, offset: u64, value: u64, g: GiveUp) {
        // Selecting a feature word to read (Linux reads the high word
        // first) is no step of the initialisation.
        if offset == regs::DEVICE_FEATURES_SEL {
            return;
        }
        let status = offset == regs::STATUS;
        if status && value == 0 {
            self.gave_up = None;
            self.stopped(g, "reset");
        } else if status && value & u64::from(DeviceStatus::FAILED.bits()) != 0 {
            self.gave_up = Some(GiveUp { failed: true, ..g });
            keep(&mut self.seen, g.set_failed);
        } else if !status || value & u64::from(DeviceStatus::DRIVER_OK.bits()) != 0 {
            let what = Register::from_offset(offset, MmioVersion::Modern).map_or_else(
                || format!("configuration at {offset:#x}"),
                |r| format!("{r:?}"),
            );
            for s in g.stop {
                judge(&mut self.seen, s, false, || {
                    format!("{what} written ({value:#x}) after {}", g.cause)
                });
            }
        }
    }

    /// The driver stopped after giving up (`how`: a reset, or nothing more
    /// written).
    fn stopped(&mut self, g: GiveUp, how: &str) {
        for s in g.stop {
            keep(&mut self.seen, s);
        }
        judge(&mut self.seen, g.set_failed, g.failed, || {
            format!("{how} after {} without setting FAILED", g.cause)
        });
    }

    /// The device raised its interrupt line (again, if it was still up:
    /// the handler's InterruptStatus read still counts).
    pub fn interrupt(&mut self) {
        if !self.irq_pending {
            self.irq_pending = true;
            self.isr_read_since_irq = false;
        }
    }

    fn access(&mut self, offset: u64, size: usize, write: bool, value: u64) {
        self.probe_order(offset);
        if !write {
            self.generation_window(offset, value as u32);
        }
        if !write && offset == regs::VERSION {
            self.version = value;
        }
        if !write && self.ignore.is_none() {
            // §4.2.2.2: what makes a driver ignore the device. Version 1 is
            // the legacy interface (§4.2.4), which a driver may drive.
            self.ignore = match offset {
                regs::MAGIC_VALUE if value != u64::from(regs::MAGIC) => Some(IGNORE_BAD_MAGIC),
                regs::VERSION if !matches!(value, 1 | 2) => Some(IGNORE_BAD_VERSION),
                regs::DEVICE_ID if value == 0 => Some(IGNORE_NO_DEVICE),
                _ => None,
            };
        }
        if offset >= regs::CONFIG {
            let end = offset - regs::CONFIG + size as u64;
            judge(
                &mut self.seen,
                REGISTERS_ONLY,
                end <= self.config_len,
                || {
                    format!(
                        "configuration access at {offset:#x} beyond its {} bytes",
                        self.config_len
                    )
                },
            );
            let aligned = matches!(size, 1 | 2 | 4) && offset.is_multiple_of(size as u64);
            judge(&mut self.seen, CONFIG_ALIGNED, aligned, || {
                format!("{size}-byte configuration access at {offset:#x}")
            });
            // Step 4 (DRIVER set, FEATURES_OK not yet): reads only. A
            // console's emerg_wr may be written at any time (§5.3.4).
            let emerg = self.device_type == Some(DeviceType::Console) && offset == regs::CONFIG + 8;
            let step4 = self.status & DeviceStatus::DRIVER.bits() != 0
                && self.status & DeviceStatus::FEATURES_OK.bits() == 0;
            if write && step4 && !emerg {
                judge(&mut self.seen, INIT_NO_CONFIG_WRITE, false, || {
                    format!(
                        "configuration written at {offset:#x} during feature negotiation (status {:#x})",
                        self.status
                    )
                });
            } else if step4 && !write {
                keep(&mut self.seen, INIT_NO_CONFIG_WRITE);
            }
            // §2.5.1: an optional field only when its feature is offered.
            let rel = offset - regs::CONFIG;
            if let Some((name, need)) = self
                .device_type
                .and_then(|t| optional_field(t, self.offered, rel, size as u64))
            {
                let offered = self.offered & need != 0;
                judge(&mut self.seen, OPTIONAL_FIELDS, offered, || {
                    format!(
                        "configuration field {name} (offset {rel}) {} without its feature ({need:#x}) offered",
                        if write { "written" } else { "read" }
                    )
                });
            }
            // §5.1.4.2: a network driver writes no configuration field.
            if self.device_type == Some(DeviceType::Net) {
                judge(&mut self.seen, NET_NO_CONFIG_WRITE, !write, || {
                    format!("configuration written at {offset:#x}")
                });
            }
            if self.device_type == Some(DeviceType::Crypto) && !write {
                let last = (end.saturating_sub(1) / 4).min(15);
                for k in rel / 4..=last {
                    self.crypto.words |= 1 << k;
                }
                let bytes = value.to_le_bytes();
                for (k, b) in bytes.iter().take(size).enumerate() {
                    let at = rel as usize + k;
                    if let Some(slot) = self.crypto.head.get_mut(at) {
                        *slot = Some(*b);
                    }
                }
            }
            // §5.2.5.2: a block driver reads `writeback` (offset 32) only
            // once FEATURES_OK is set: its value depends on the features.
            if self.device_type == Some(DeviceType::Blk) && !write && rel <= 32 && 32 < end {
                let after = self.status & DeviceStatus::FEATURES_OK.bits() != 0;
                judge(
                    &mut self.seen,
                    BLK_WRITEBACK_AFTER_FEATURES_OK,
                    after,
                    || format!("writeback read with status {:#x}", self.status),
                );
            }
            return;
        }
        let Some(register) = Register::from_offset(offset, MmioVersion::Modern) else {
            judge(&mut self.seen, REGISTERS_ONLY, false, || {
                format!("access to {offset:#x}, not a register")
            });
            return;
        };
        judge(
            &mut self.seen,
            CONTROL_32,
            size == 4 && offset.is_multiple_of(4),
            || format!("{size}-byte access to {register:?}"),
        );
        let allowed = match register.direction() {
            Direction::Read => !write,
            Direction::Write => write,
            Direction::ReadWrite => true,
        };
        judge(&mut self.seen, REGISTERS_ONLY, allowed, || {
            format!(
                "{} {register:?}",
                if write { "write to" } else { "read of" }
            )
        });
        let no_shm = matches!(
            self.device_type,
            Some(DeviceType::Rng | DeviceType::Blk | DeviceType::Console | DeviceType::Net)
        );
        if no_shm
            && matches!(
                register,
                Register::ShmSel
                    | Register::ShmLenLow
                    | Register::ShmLenHigh
                    | Register::ShmBaseLow
                    | Register::ShmBaseHigh
            )
        {
            judge(&mut self.seen, NO_SHM, false, || {
                format!("{register:?} accessed")
            });
        }
        let v = value as u32;
        match (register, write) {
            (Register::DeviceFeaturesSel, true) => {
                self.features_sel_written = true;
                self.device_features_sel = v;
            }
            (Register::DeviceFeatures, false) => {
                self.features_read = true;
                // §2.2.1: a modern device without VIRTIO_F_VERSION_1 (bit
                // 32) offers nothing a modern driver can use; there is no
                // legacy mode to fall back to on a version 2 device.
                if self.version == 2
                    && self.device_features_sel == 1
                    && v & 1 == 0
                    && self.gave_up.is_none()
                {
                    self.gave_up = Some(GiveUp {
                        cause: "a version 2 device offered no VIRTIO_F_VERSION_1",
                        stop: &[FEATURES_VALIDATED, FEATURE_MISSING],
                        set_failed: FEATURE_MISSING,
                        failed: false,
                    });
                }
                judge(
                    &mut self.seen,
                    FEATURES_SEL_FIRST,
                    self.features_sel_written,
                    || "DeviceFeatures read before DeviceFeaturesSel was written".into(),
                );
            }
            (Register::DriverFeaturesSel, true) => {
                self.driver_features_sel_written = true;
                self.driver_features_sel = v;
            }
            (Register::DriverFeatures, true) => {
                judge(
                    &mut self.seen,
                    DRIVER_FEATURES_SEL_FIRST,
                    self.driver_features_sel_written,
                    || "DriverFeatures written before DriverFeaturesSel".into(),
                );
                let fok = self.status & DeviceStatus::FEATURES_OK.bits() != 0;
                let word = match self.driver_features_sel {
                    0 => self.accepted as u32,
                    1 => (self.accepted >> 32) as u32,
                    _ => 0,
                };
                let new_bits = v & !word;
                if fok {
                    judge(&mut self.seen, INIT_NO_NEW_FEATURES, new_bits == 0, || {
                        format!(
                            "DriverFeatures {v:#x} accepts new bits {new_bits:#x} after FEATURES_OK (status {:#x})",
                            self.status
                        )
                    });
                }
                let read_offered = self.features_read;
                judge(&mut self.seen, INIT_FEATURES, read_offered, || {
                    "DriverFeatures written without reading DeviceFeatures".into()
                });
                match self.driver_features_sel {
                    0 => self.accepted = (self.accepted & !0xffff_ffff) | u64::from(v),
                    1 => self.accepted = (self.accepted & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            (Register::QueueSel, true) => self.queue_sel = v,
            (Register::QueueNumMax, false) => {
                self.queues.entry(self.queue_sel).or_insert((v, false)).0 = v;
            }
            (
                Register::QueueNum
                | Register::QueueDescLow
                | Register::QueueDescHigh
                | Register::QueueDriverLow
                | Register::QueueDriverHigh
                | Register::QueueDeviceLow
                | Register::QueueDeviceHigh,
                true,
            ) => {
                let (max, ready) = self
                    .queues
                    .get(&self.queue_sel)
                    .copied()
                    .unwrap_or((0, false));
                self.setting_up_again(self.queue_sel);
                judge(&mut self.seen, QUEUE_BUSY, !ready, || {
                    format!(
                        "{register:?} written while queue {} is ready",
                        self.queue_sel
                    )
                });
                let fok = self.status & DeviceStatus::FEATURES_OK.bits() != 0;
                judge(&mut self.seen, INIT_SETUP, fok, || {
                    format!(
                        "{register:?} written before FEATURES_OK (status {:#x})",
                        self.status
                    )
                });
                if register == Register::QueueNum {
                    judge(&mut self.seen, QUEUE_SIZE_MAX, v <= max, || {
                        format!(
                            "QueueSize {v} for queue {} whose QueueSizeMax is {max}",
                            self.queue_sel
                        )
                    });
                }
            }
            (Register::QueueReady, true) => {
                let q = self.queue_sel;
                if v == 1 {
                    self.setting_up_again(q);
                }
                let e = self.queues.entry(q).or_insert((0, false));
                if v == 0 && e.1 && !self.readback_pending.contains(&q) {
                    self.readback_pending.push(q);
                }
                e.1 = v == 1;
            }
            (Register::QueueReady, false) => {
                let q = self.queue_sel;
                if let Some(at) = self.readback_pending.iter().position(|x| *x == q) {
                    self.readback_pending.swap_remove(at);
                    keep(&mut self.seen, READY_READ_BACK);
                }
                if v == 0
                    && let Some(e) = self.queues.get_mut(&q)
                {
                    e.1 = false;
                }
            }
            (Register::QueueReset, true) if v == 1 => {
                if let Some(e) = self.queues.get_mut(&self.queue_sel) {
                    e.1 = false;
                }
            }
            (Register::QueueNotify, true) => {
                let live = self.status & DeviceStatus::DRIVER_OK.bits() != 0;
                judge(&mut self.seen, NO_NOTIFY_BEFORE_DRIVER_OK, live, || {
                    format!("QueueNotify before DRIVER_OK (status {:#x})", self.status)
                });
                if live && self.device_type == Some(DeviceType::Crypto) && !self.crypto.judged {
                    self.crypto_reads();
                }
            }
            (Register::InterruptStatus, false) => {
                self.undefined_isr = v & !InterruptStatus::all().bits();
                self.isr_seen |= v;
                if self.irq_pending {
                    self.isr_read_since_irq = true;
                }
            }
            (Register::InterruptAck, true) => {
                if self.undefined_isr != 0 {
                    let read = self.undefined_isr;
                    judge(&mut self.seen, IGNORE_UNDEFINED_ISR, v & read == 0, || {
                        format!(
                            "InterruptACK {v:#x} after InterruptStatus showed undefined bits {read:#x}"
                        )
                    });
                }
                let undefined = v & !InterruptStatus::all().bits();
                judge(&mut self.seen, ACK_DEFINED, undefined == 0, || {
                    format!("InterruptACK {v:#x}")
                });
                if self.irq_pending {
                    judge(
                        &mut self.seen,
                        ISR_AFTER_IRQ,
                        self.isr_read_since_irq,
                        || {
                            "InterruptACK written without reading InterruptStatus after the interrupt"
                            .into()
                        },
                    );
                    self.irq_pending = false;
                    keep(&mut self.seen, ACK_AFTER_IRQ);
                }
                self.isr_seen &= !v;
            }
            (Register::Status, false) => {
                if self.reread_pending {
                    self.reread_pending = false;
                    keep(&mut self.seen, INIT_REREAD);
                    let fok = u64::from(DeviceStatus::FEATURES_OK.bits());
                    if self.status & DeviceStatus::FEATURES_OK.bits() != 0 && value & fok == 0 {
                        self.gave_up = Some(GiveUp {
                            cause: "the device refused FEATURES_OK and the driver read so",
                            stop: &[INIT_STOP],
                            set_failed: INIT_GIVE_UP,
                            failed: false,
                        });
                    }
                }
                // The device may clear FEATURES_OK (refused) or DRIVER_OK
                // (suspended); what the driver writes next builds on what
                // it read.
                self.status = (value as u8) & !DeviceStatus::DEVICE_NEEDS_RESET.bits();
            }
            (Register::Status, true) => self.status_write(value as u8),
            _ => {}
        }
    }

    /// Queue `q` is being set up again: a QueueReady of 0 written for it
    /// must have been read back first (§4.2.2.2).
    fn setting_up_again(&mut self, q: u32) {
        if let Some(at) = self.readback_pending.iter().position(|x| *x == q) {
            self.readback_pending.swap_remove(at);
            judge(&mut self.seen, READY_READ_BACK, false, || {
                format!("queue {q} set up again before its QueueReady was read back after 0")
            });
        }
    }

    /// The probe order of §4.2.3.1: MagicValue and Version first, then
    /// DeviceID, before anything else.
    fn probe_order(&mut self, offset: u64) {
        if self.probe_done {
            return;
        }
        if offset == regs::DEVICE_ID {
            let magic =
                self.probe.contains(&regs::MAGIC_VALUE) && self.probe.contains(&regs::VERSION);
            judge(&mut self.seen, MAGIC_FIRST, magic, || {
                format!(
                    "DeviceID read after {:#x?} (MagicValue and Version first)",
                    self.probe
                )
            });
            keep(&mut self.seen, DEVICE_ID_NEXT);
            self.probe_done = true;
        } else if offset == regs::MAGIC_VALUE || offset == regs::VERSION {
            self.probe.push(offset);
        } else {
            judge(&mut self.seen, DEVICE_ID_NEXT, false, || {
                format!("register {offset:#x} accessed before DeviceID was read")
            });
            judge(&mut self.seen, MAGIC_FIRST, false, || {
                format!("register {offset:#x} accessed before MagicValue and Version")
            });
            self.probe_done = true;
        }
    }

    fn status_write(&mut self, new: u8) {
        use DeviceStatus as S;
        let old = self.status;
        if new == 0 {
            // A reset: the next init sequence starts here.
            self.status = 0;
            self.failed = false;
            self.features_sel_written = false;
            self.features_read = false;
            self.driver_features_sel_written = false;
            self.accepted = 0;
            self.reread_pending = false;
            // A reset stops every queue; Status read as 0 is the sync.
            self.readback_pending.clear();
            self.irq_pending = false;
            self.isr_seen = 0;
            for q in self.queues.values_mut() {
                q.1 = false;
            }
            self.crypto = CryptoReads::default();
            keep(&mut self.seen, INIT_RESET);
            return;
        }
        judge(&mut self.seen, NO_CLEARED_BIT, new & old == old, || {
            format!("Status {new:#x} written over {old:#x}")
        });
        let init = (S::ACKNOWLEDGE | S::DRIVER | S::FEATURES_OK | S::DRIVER_OK).bits();
        if self.failed && new & !old & init != 0 {
            judge(&mut self.seen, RESET_AFTER_FAILED, false, || {
                format!("Status {new:#x} written after FAILED without a reset")
            });
        }
        if new & S::FAILED.bits() != 0 {
            self.failed = true;
        }
        let added = new & !old;
        let has = |b: S| new & b.bits() != 0;
        if added & S::ACKNOWLEDGE.bits() != 0 {
            judge(&mut self.seen, INIT_RESET, old == 0, || {
                format!("ACKNOWLEDGE over status {old:#x}")
            });
            keep(&mut self.seen, INIT_ACK);
        }
        if added & S::DRIVER.bits() != 0 {
            judge(&mut self.seen, INIT_ACK, has(S::ACKNOWLEDGE), || {
                format!("DRIVER set with status {new:#x}")
            });
            keep(&mut self.seen, INIT_DRIVER);
        }
        if added & S::FEATURES_OK.bits() != 0 {
            judge(&mut self.seen, INIT_DRIVER, has(S::DRIVER), || {
                format!("FEATURES_OK set with status {new:#x}")
            });
            judge(&mut self.seen, INIT_FEATURES, self.features_read, || {
                "FEATURES_OK set without reading DeviceFeatures".into()
            });
            keep(&mut self.seen, INIT_FEATURES_OK);
            self.reread_pending = true;
            self.check_features();
        }
        if added & S::DRIVER_OK.bits() != 0 {
            judge(
                &mut self.seen,
                INIT_FEATURES_OK,
                has(S::FEATURES_OK),
                || format!("DRIVER_OK set with status {new:#x}"),
            );
            let reread = !self.reread_pending;
            judge(&mut self.seen, INIT_REREAD, reread, || {
                "DRIVER_OK set without reading Status back after FEATURES_OK".into()
            });
            if self.device_type == Some(DeviceType::Crypto) {
                self.crypto_live();
            }
            keep(&mut self.seen, INIT_DRIVER_OK);
            keep(&mut self.seen, INIT_LIVE);
            self.went_live = true;
            // Negotiation is over; new bits after FEATURES_OK were judged
            // as they were written.
            keep(&mut self.seen, INIT_NO_NEW_FEATURES);
        }
        if added != 0 {
            keep(&mut self.seen, STATUS_STEPS);
        }
        self.status = new;
    }

    /// A crypto driver notifies for the first time since it set
    /// DRIVER_OK (§5.9.5.2, §5.9.6.1): what it read of the configuration
    /// since the reset. (Linux reads `status` only after DRIVER_OK, before
    /// its first request.)
    fn crypto_reads(&mut self) {
        self.crypto.judged = true;
        let c = self.crypto;
        let read = |w: u16| c.words & (1 << w) != 0;
        judge(&mut self.seen, CRYPTO_STATUS_READ, read(0), || {
            "a request sent without reading status (VIRTIO_CRYPTO_S_HW_READY) since the reset"
                .into()
        });
        judge(&mut self.seen, CRYPTO_DATAQUEUES_READ, read(1), || {
            "a request sent without reading max_dataqueues".into()
        });
        for s in [CRYPTO_SERVICES_READ, CRYPTO_INIT_SERVICES] {
            judge(&mut self.seen, s, read(2), || {
                "a request sent without reading crypto_services".into()
            });
        }
        let services = c.word(8).unwrap_or(0);
        let unread: Vec<u32> = CRYPTO_MASK_WORDS
            .iter()
            .filter(|(svc, words)| services & (1 << svc) != 0 && !words.iter().all(|w| read(*w)))
            .map(|(svc, _)| *svc)
            .collect();
        for s in [CRYPTO_ALGOS_READ, CRYPTO_INIT_ALGOS] {
            judge(&mut self.seen, s, unread.is_empty(), || {
                format!(
                    "a request sent without reading the algorithm masks of services {unread:?} (crypto_services {services:#x})"
                )
            });
        }
    }

    /// A crypto driver sets DRIVER_OK (§5.9.6.1): every queue is set up,
    /// the data queues `max_dataqueues` says (as the driver read it, else
    /// those the device has) and the control queue after them.
    fn crypto_live(&mut self) {
        let want: Vec<u32> = match self.crypto.word(4) {
            Some(n) => (0..=n.min(64)).collect(),
            None => self
                .queues
                .iter()
                .filter(|(_, (max, _))| *max > 0)
                .map(|(q, _)| *q)
                .collect(),
        };
        let not_ready: Vec<u32> = want
            .into_iter()
            .filter(|q| !self.queues.get(q).is_some_and(|(_, ready)| *ready))
            .collect();
        judge(
            &mut self.seen,
            CRYPTO_ALL_QUEUES,
            not_ready.is_empty(),
            || format!("DRIVER_OK set with queues {not_ready:?} not set up"),
        );
    }

    fn check_features(&mut self) {
        let a = self.accepted;
        // §6.1: VERSION_1 accepted whenever it is offered.
        let v1 = TransportFeatures::VERSION_1.bits();
        if self.offered & v1 != 0 {
            judge(&mut self.seen, ACCEPTS_VERSION_1, a & v1 != 0, || {
                format!("accepted {a:#x} without VIRTIO_F_VERSION_1, which is offered")
            });
        }
        let not_offered = a & !self.offered;
        let broken: Vec<u8> = self
            .device_type
            .map(|t| {
                t.rules()
                    .iter()
                    .filter(|r| r.level == Level::Must && r.is_broken_by(a))
                    .map(|r| r.feature)
                    .collect()
            })
            .unwrap_or_default();
        judge(
            &mut self.seen,
            OFFERED_ONLY,
            not_offered == 0 && broken.is_empty(),
            || {
                format!(
                    "accepted {a:#x}: not offered {not_offered:#x}, without what they require {broken:?}"
                )
            },
        );
        let transport = TransportFeatures::all().bits();
        let device_bits = self.device_type.map_or(0, |t| {
            t.feature_names().iter().fold(0u64, |m, (b, _)| {
                m | 1u64.checked_shl(u32::from(*b)).unwrap_or(0)
            })
        });
        // The ranges of §2.2: device type 0-23, 41, 42, 50-63 (of the
        // first 64); transport 24-40, 43; reserved for the future 44-49.
        let range = |lo: u32, hi: u32| (lo..=hi).fold(0u64, |m, b| m | 1 << b);
        let type_range = range(0, 23) | range(41, 42) | range(50, 63);
        let transport_range = range(24, 40) | (1 << 43);
        let reserved = range(44, 49);
        let not_for_type = a & type_range & !device_bits;
        let unknown_transport = a & transport_range & !transport;
        let reserved_taken = a & reserved;
        let undescribed = not_for_type | unknown_transport | reserved_taken;
        judge(&mut self.seen, UNDESCRIBED, undescribed == 0, || {
            format!("accepted undescribed bits {undescribed:#x}")
        });
        judge(&mut self.seen, RESERVED, reserved_taken == 0, || {
            format!("accepted reserved bits {reserved_taken:#x}")
        });
        let mmio_no = TransportFeatures::ADMIN_VQ.bits() | TransportFeatures::SR_IOV.bits();
        judge(&mut self.seen, NOT_FOR_TRANSPORT, a & mmio_no == 0, || {
            format!("accepted {:#x}, not for virtio-mmio", a & mmio_no)
        });
        judge(&mut self.seen, NOT_FOR_TYPE, not_for_type == 0, || {
            format!("accepted {not_for_type:#x}, not defined for this device type")
        });
    }

    /// Ends the watch: an interrupt never acknowledged, or a QueueReady
    /// of 0 never read back, is a breach; registers never misused are
    /// kept.
    pub fn finish(&mut self) {
        let no_shm = matches!(
            self.device_type,
            Some(DeviceType::Rng | DeviceType::Blk | DeviceType::Console | DeviceType::Net)
        );
        if no_shm && self.probe_done {
            // Never breached means kept: the driver left them alone.
            keep(&mut self.seen, NO_SHM);
        }
        for q in core::mem::take(&mut self.readback_pending) {
            judge(&mut self.seen, READY_READ_BACK, false, || {
                format!("QueueReady of queue {q} set to 0 and never read back")
            });
        }
        if self.irq_pending && self.isr_seen != 0 {
            judge(&mut self.seen, ACK_AFTER_IRQ, false, || {
                format!("InterruptStatus {:#x} never acknowledged", self.isr_seen)
            });
        }
        if let Some(g) = self.gave_up.take() {
            self.stopped(g, "stopped");
        }
        if let Some(s) = self.ignore {
            // Nothing written since (a write would have broken it).
            keep(&mut self.seen, s);
        }
        if core::mem::take(&mut self.torn) {
            judge(&mut self.seen, CONFIG_NOT_ATOMIC, false, || {
                "ConfigGeneration changed across configuration reads, which were never read again"
                    .into()
            });
        }
        if self.unknown != 0 {
            let unknown = self.unknown;
            judge(
                &mut self.seen,
                UNKNOWN_FEATURE_NO_FAIL,
                self.went_live,
                || format!("never set DRIVER_OK with an unknown feature ({unknown:#x}) offered"),
            );
        }
    }

    /// Per statement of [`STATEMENTS`]: fail, pass, or not observable.
    pub fn records(&self) -> Vec<Record> {
        let mut out = records_of(STATEMENTS, WATCH.name, &self.seen);
        // §4.2.3.1: on virtio-mmio the rest of the initialisation follows
        // §3.1.1: kept when every step was, broken with the steps broken.
        let broken: Vec<&str> = INIT_STEPS
            .iter()
            .copied()
            .filter(|s| self.seen.get(s).is_some_and(|x| x.broken.is_some()))
            .collect();
        let live = self.seen.get(INIT_DRIVER_OK).is_some_and(|x| x.kept);
        for r in out.iter_mut().filter(|r| r.statement == MMIO_INIT_SEQUENCE) {
            r.outcome = if !broken.is_empty() {
                Outcome::Fail(format!("the §3.1.1 sequence was broken: {broken:?}"))
            } else if live {
                Outcome::Pass
            } else {
                Outcome::NotObservable("the driver never set DRIVER_OK".into())
            };
        }
        if self.device_type == Some(DeviceType::Blk) {
            out.extend(records_of(BLK_STATEMENTS, BLK_WATCH.name, &self.seen));
        }
        if self.device_type == Some(DeviceType::Net) {
            out.extend(records_of(NET_STATEMENTS, NET_WATCH.name, &self.seen));
        }
        if self.device_type == Some(DeviceType::Crypto) {
            out.extend(records_of(CRYPTO_STATEMENTS, CRYPTO_WATCH.name, &self.seen));
        }
        out
    }
}

/// An optional configuration field of device type `t` that an access of
/// `size` bytes at configuration offset `off` touches (one whose feature
/// is not in `offered`, if any), and the feature bits of which one must be
/// offered for the field to exist (§5.1.4, §5.2.4, §5.3.4); `None` when
/// the access touches only fields every device has.
fn optional_field(t: DeviceType, offered: u64, off: u64, size: u64) -> Option<(&'static str, u64)> {
    // (start, end, name, features): the layouts of the spec's structs.
    const BLK: &[(u64, u64, &str, u64)] = &[
        (8, 12, "size_max", 1 << 1),
        (12, 16, "seg_max", 1 << 2),
        (16, 20, "geometry", 1 << 4),
        (20, 24, "blk_size", 1 << 6),
        (24, 32, "topology", 1 << 10),
        (32, 33, "writeback", 1 << 11),
        (34, 36, "num_queues", 1 << 12),
        (36, 48, "discard fields", 1 << 13),
        (48, 57, "write zeroes fields", 1 << 14),
        (60, 72, "secure erase fields", 1 << 16),
        (72, 96, "zoned", 1 << 17),
    ];
    const NET: &[(u64, u64, &str, u64)] = &[
        (0, 6, "mac", 1 << 5),
        (6, 8, "status", 1 << 16),
        (8, 10, "max_virtqueue_pairs", 1 << 22 | 1 << 60),
        (10, 12, "mtu", 1 << 3),
        (12, 17, "speed and duplex", 1 << 63),
        (17, 24, "RSS fields", 1 << 60 | 1 << 57),
    ];
    const CONSOLE: &[(u64, u64, &str, u64)] = &[
        (0, 4, "cols and rows", 1 << 0),
        (4, 8, "max_nr_ports", 1 << 1),
        (8, 12, "emerg_wr", 1 << 2),
    ];
    let fields = match t {
        DeviceType::Blk => BLK,
        DeviceType::Net => NET,
        DeviceType::Console => CONSOLE,
        _ => return None,
    };
    let end = off.saturating_add(size);
    let mut touched = fields.iter().filter(|(a, b, _, _)| off < *b && *a < end);
    let first = touched.clone().next()?;
    // The first field touched whose feature is not offered, else the
    // first field touched.
    let pick = touched
        .find(|(_, _, _, need)| offered & need == 0)
        .unwrap_or(first);
    Some((pick.2, pick.3))
}

/// The records of a watch: per statement, the first breach (fail), or
/// kept (pass), or never exercised (not observable).
fn records_of(
    statements: &'static [&'static str],
    check: &'static str,
    seen: &BTreeMap<&'static str, Seen>,
) -> Vec<Record> {
    statements
        .iter()
        .map(|s| {
            let outcome = match seen.get(s) {
                Some(Seen {
                    broken: Some(w), ..
                }) => Outcome::Fail(w.clone()),
                Some(Seen { kept: true, .. }) => Outcome::Pass,
                _ => Outcome::NotObservable("the driver never did what this is about".into()),
            };
            Record {
                statement: s,
                check,
                outcome,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(w: &DriverWatch, s: &str) -> Outcome {
        w.records()
            .into_iter()
            .find(|r| r.statement == s)
            .map(|r| r.outcome)
            .unwrap_or(Outcome::Pass)
    }

    /// A well-behaved modern init of an entropy device, one queue, a
    /// notification, an interrupt handled.
    fn good(w: &mut DriverWatch) {
        up_to_driver(w);
        w.write(regs::DEVICE_FEATURES_SEL, 4, 1);
        w.read(regs::DEVICE_FEATURES, 4, 1);
        w.write(regs::DRIVER_FEATURES_SEL, 4, 1);
        w.write(regs::DRIVER_FEATURES, 4, 1);
        w.write(regs::STATUS, 4, 11);
        w.read(regs::STATUS, 4, 11);
        w.write(regs::QUEUE_SEL, 4, 0);
        w.read(regs::QUEUE_NUM_MAX, 4, 256);
        w.write(regs::QUEUE_NUM, 4, 256);
        w.write(regs::QUEUE_DESC_LOW, 4, 0x1000);
        w.write(regs::QUEUE_READY, 4, 1);
        w.write(regs::STATUS, 4, 15);
        w.write(regs::QUEUE_NOTIFY, 4, 0);
        w.interrupt();
        w.read(regs::INTERRUPT_STATUS, 4, 1);
        w.write(regs::INTERRUPT_ACK, 4, 1);
        w.write(regs::QUEUE_READY, 4, 0);
        w.read(regs::QUEUE_READY, 4, 0);
        w.finish();
    }

    fn watch() -> DriverWatch {
        DriverWatch::new(Some(DeviceType::Rng), 1 << 32, &[256], 0)
    }

    /// The probe of a modern entropy device, a reset, ACKNOWLEDGE and
    /// DRIVER.
    fn up_to_driver(w: &mut DriverWatch) {
        w.read(regs::MAGIC_VALUE, 4, u64::from(regs::MAGIC));
        w.read(regs::VERSION, 4, 2);
        w.read(regs::DEVICE_ID, 4, 4);
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
    }

    /// An init up to FEATURES_OK that the device refuses (Status read back
    /// without it).
    fn refused(w: &mut DriverWatch) {
        up_to_driver(w);
        w.write(regs::DEVICE_FEATURES_SEL, 4, 1);
        w.read(regs::DEVICE_FEATURES, 4, 1);
        w.write(regs::DRIVER_FEATURES_SEL, 4, 1);
        w.write(regs::DRIVER_FEATURES, 4, 1);
        w.write(regs::STATUS, 4, 11);
        w.read(regs::STATUS, 4, 3);
    }

    /// §3.1.1: after the device refused FEATURES_OK the driver sets FAILED
    /// and stops (#12, #13 kept); one that resets without FAILED breaks
    /// the SHOULD; one that sets up a queue or DRIVER_OK breaks the MUST.
    #[test]
    fn section_3_1_1_a_refused_feature_set_stops_the_initialisation() {
        let mut w = watch();
        refused(&mut w);
        w.write(regs::STATUS, 4, 0x83);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert_eq!(outcome(&w, INIT_STOP), Outcome::Pass);
        assert_eq!(outcome(&w, INIT_GIVE_UP), Outcome::Pass);

        let mut w = watch();
        refused(&mut w);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert_eq!(outcome(&w, INIT_STOP), Outcome::Pass);
        assert!(matches!(outcome(&w, INIT_GIVE_UP), Outcome::Fail(_)));

        let mut w = watch();
        refused(&mut w);
        w.write(regs::QUEUE_SEL, 4, 0);
        w.write(regs::STATUS, 4, 7);
        w.finish();
        assert!(matches!(outcome(&w, INIT_STOP), Outcome::Fail(_)));
    }

    /// §4.2.2.2: a probe that reads a wrong MagicValue, a Version other
    /// than 1 or 2, or DeviceID 0 leaves the device alone; a write after
    /// it is the breach. Undefined InterruptStatus bits are not acked.
    #[test]
    fn section_4_2_2_2_the_driver_ignores_what_is_no_device() {
        for (reg, value, s) in [
            (regs::MAGIC_VALUE, 0x1234, IGNORE_BAD_MAGIC),
            (regs::VERSION, 3, IGNORE_BAD_VERSION),
            (regs::DEVICE_ID, 0, IGNORE_NO_DEVICE),
        ] {
            let mut w = watch();
            w.read(reg, 4, value);
            w.finish();
            assert_eq!(outcome(&w, s), Outcome::Pass, "{s}");
            let mut w = watch();
            w.read(reg, 4, value);
            w.write(regs::STATUS, 4, 0);
            w.finish();
            assert!(matches!(outcome(&w, s), Outcome::Fail(_)), "{s}");
        }
        // Version 1 is the legacy interface: nothing to ignore.
        let mut w = watch();
        w.read(regs::VERSION, 4, 1);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert!(matches!(
            outcome(&w, IGNORE_BAD_VERSION),
            Outcome::NotObservable(_)
        ));

        let mut w = watch();
        w.interrupt();
        w.read(regs::INTERRUPT_STATUS, 4, 0x81);
        w.write(regs::INTERRUPT_ACK, 4, 1);
        assert_eq!(outcome(&w, IGNORE_UNDEFINED_ISR), Outcome::Pass);
        w.interrupt();
        w.read(regs::INTERRUPT_STATUS, 4, 0x81);
        w.write(regs::INTERRUPT_ACK, 4, 0x81);
        assert!(matches!(
            outcome(&w, IGNORE_UNDEFINED_ISR),
            Outcome::Fail(_)
        ));
    }

    /// §2.5.1: configuration reads across a ConfigGeneration change are
    /// read again (kept); a driver that goes on without is the breach.
    #[test]
    fn section_2_5_1_torn_configuration_reads_are_read_again() {
        let blk = || DriverWatch::new(Some(DeviceType::Blk), 1 << 32, &[256], 60);
        let mut w = blk();
        w.read(regs::CONFIG_GENERATION, 4, 5);
        w.read(regs::CONFIG, 4, 0x1000);
        w.read(regs::CONFIG + 4, 4, 0);
        w.read(regs::CONFIG_GENERATION, 4, 6);
        w.read(regs::CONFIG_GENERATION, 4, 6);
        w.read(regs::CONFIG, 4, 0x2000);
        w.read(regs::CONFIG + 4, 4, 0);
        w.read(regs::CONFIG_GENERATION, 4, 6);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert_eq!(outcome(&w, CONFIG_NOT_ATOMIC), Outcome::Pass);

        let mut w = blk();
        w.read(regs::CONFIG_GENERATION, 4, 5);
        w.read(regs::CONFIG, 4, 0x1000);
        w.read(regs::CONFIG_GENERATION, 4, 6);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert!(matches!(outcome(&w, CONFIG_NOT_ATOMIC), Outcome::Fail(_)));
    }

    /// §4.2.3.1: the rest of an mmio initialisation follows §3.1.1: kept
    /// with every step kept, broken when one is (here: DRIVER_OK without
    /// reading Status back after FEATURES_OK).
    #[test]
    fn section_4_2_3_1_mmio_init_follows_the_general_sequence() {
        let mut w = watch();
        good(&mut w);
        assert_eq!(outcome(&w, MMIO_INIT_SEQUENCE), Outcome::Pass);
        let mut w = watch();
        refused(&mut w);
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
        w.read(regs::DEVICE_FEATURES, 4, 1);
        w.write(regs::DRIVER_FEATURES, 4, 1);
        w.write(regs::STATUS, 4, 11);
        w.write(regs::STATUS, 4, 15);
        w.finish();
        assert!(matches!(outcome(&w, MMIO_INIT_SEQUENCE), Outcome::Fail(_)));
    }

    /// §2.2.1: a version 2 device without VIRTIO_F_VERSION_1: the driver
    /// sets FAILED and stops (#2, #7 kept); one that goes on negotiating
    /// breaks both; one that stops without FAILED breaks #7.
    #[test]
    fn section_2_2_1_a_modern_device_without_version_1_is_given_up() {
        let start = |w: &mut DriverWatch| {
            up_to_driver(w);
            w.write(regs::DEVICE_FEATURES_SEL, 4, 1);
            w.read(regs::DEVICE_FEATURES, 4, 0);
        };
        let mut w = watch();
        start(&mut w);
        // The low word read after the high one (as Linux reads them).
        w.write(regs::DEVICE_FEATURES_SEL, 4, 0);
        w.read(regs::DEVICE_FEATURES, 4, 0);
        w.write(regs::STATUS, 4, 0x83);
        w.finish();
        assert_eq!(outcome(&w, FEATURES_VALIDATED), Outcome::Pass);
        assert_eq!(outcome(&w, FEATURE_MISSING), Outcome::Pass);

        let mut w = watch();
        start(&mut w);
        w.write(regs::DRIVER_FEATURES_SEL, 4, 0);
        w.finish();
        assert!(matches!(outcome(&w, FEATURES_VALIDATED), Outcome::Fail(_)));
        assert!(matches!(outcome(&w, FEATURE_MISSING), Outcome::Fail(_)));

        let mut w = watch();
        start(&mut w);
        w.write(regs::STATUS, 4, 0);
        w.finish();
        assert_eq!(outcome(&w, FEATURES_VALIDATED), Outcome::Pass);
        assert!(matches!(outcome(&w, FEATURE_MISSING), Outcome::Fail(_)));
    }

    /// §2.2.1: with a feature it cannot know offered, the driver still goes
    /// live (#8); one that never sets DRIVER_OK breaks it.
    #[test]
    fn section_2_2_1_an_unknown_feature_offered_is_no_reason_to_fail() {
        let mut w = watch().with_unknown_offered(1 << 23);
        good(&mut w);
        assert_eq!(outcome(&w, UNKNOWN_FEATURE_NO_FAIL), Outcome::Pass);
        let mut w = watch().with_unknown_offered(1 << 23);
        refused(&mut w);
        w.write(regs::STATUS, 4, 0x83);
        w.finish();
        assert!(matches!(
            outcome(&w, UNKNOWN_FEATURE_NO_FAIL),
            Outcome::Fail(_)
        ));
    }

    #[test]
    fn a_well_behaved_driver_keeps_every_statement_it_exercises() {
        let mut w = watch();
        good(&mut w);
        let bad: Vec<_> = w
            .records()
            .into_iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
        for s in [
            FEATURES_SEL_FIRST,
            INIT_REREAD,
            QUEUE_SIZE_MAX,
            ISR_AFTER_IRQ,
            READY_READ_BACK,
            MAGIC_FIRST,
        ] {
            assert_eq!(outcome(&w, s), Outcome::Pass, "{s}");
        }
    }

    #[test]
    fn section_3_1_1_a_notification_before_driver_ok_and_a_late_feature_write_are_caught() {
        let mut w = watch();
        w.read(regs::MAGIC_VALUE, 4, u64::from(regs::MAGIC));
        w.read(regs::VERSION, 4, 2);
        w.read(regs::DEVICE_ID, 4, 4);
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
        w.read(regs::DEVICE_FEATURES, 4, 1);
        w.write(regs::DRIVER_FEATURES, 4, 1);
        w.write(regs::STATUS, 4, 11);
        w.write(regs::DRIVER_FEATURES, 4, 0x10);
        w.write(regs::QUEUE_NOTIFY, 4, 0);
        w.write(regs::STATUS, 4, 9);
        for s in [
            FEATURES_SEL_FIRST,
            DRIVER_FEATURES_SEL_FIRST,
            INIT_NO_NEW_FEATURES,
            NO_NOTIFY_BEFORE_DRIVER_OK,
            NO_CLEARED_BIT,
        ] {
            assert!(
                matches!(outcome(&w, s), Outcome::Fail(_)),
                "{s}: {:?}",
                outcome(&w, s)
            );
        }
    }

    #[test]
    fn section_4_2_2_2_register_misuse_is_caught() {
        let mut w = watch();
        w.read(regs::QUEUE_NOTIFY, 4, 0);
        w.write(regs::QUEUE_NUM_MAX, 2, 0);
        w.write(0x0e0, 4, 0);
        w.write(regs::INTERRUPT_ACK, 4, 0x10);
        w.write(regs::QUEUE_SEL, 4, 0);
        w.write(regs::QUEUE_NUM, 4, 512);
        for s in [
            REGISTERS_ONLY,
            CONTROL_32,
            ACK_DEFINED,
            QUEUE_SIZE_MAX,
            MAGIC_FIRST,
            DEVICE_ID_NEXT,
        ] {
            assert!(matches!(outcome(&w, s), Outcome::Fail(_)), "{s}");
        }
    }

    #[test]
    fn a_feature_not_offered_is_caught() {
        let mut w = watch();
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
        w.write(regs::DEVICE_FEATURES_SEL, 4, 0);
        w.read(regs::DEVICE_FEATURES, 4, 0);
        w.write(regs::DRIVER_FEATURES_SEL, 4, 0);
        w.write(regs::DRIVER_FEATURES, 4, 1 << 29);
        w.write(regs::STATUS, 4, 11);
        assert!(matches!(outcome(&w, OFFERED_ONLY), Outcome::Fail(_)));
    }

    #[test]
    fn section_5_2_5_2_writeback_read_before_features_ok_is_caught() {
        let mut w = DriverWatch::new(Some(DeviceType::Blk), 1 << 32 | 1 << 11, &[256], 60);
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
        // capacity is fine to read now; writeback is not.
        w.read(regs::CONFIG, 4, 2048);
        assert_eq!(
            outcome(&w, BLK_WRITEBACK_AFTER_FEATURES_OK),
            Outcome::NotObservable("the driver never did what this is about".into())
        );
        w.read(regs::CONFIG + 32, 1, 1);
        assert!(matches!(
            outcome(&w, BLK_WRITEBACK_AFTER_FEATURES_OK),
            Outcome::Fail(_)
        ));
        // An entropy device has no such statement.
        assert!(
            watch()
                .records()
                .iter()
                .all(|r| r.statement != BLK_WRITEBACK_AFTER_FEATURES_OK)
        );
    }

    /// A crypto driver up to DRIVER_OK: reset, features, queues 0..`ready`
    /// set up; `reads` are configuration reads (offset, size, value)
    /// before FEATURES_OK.
    fn crypto_up(reads: &[(u64, usize, u64)], ready: u32) -> DriverWatch {
        let mut w = DriverWatch::new(Some(DeviceType::Crypto), 1 << 32, &[64, 64], 56);
        w.write(regs::STATUS, 4, 0);
        w.write(regs::STATUS, 4, 1);
        w.write(regs::STATUS, 4, 3);
        for &(off, size, v) in reads {
            w.read(regs::CONFIG + off, size, v);
        }
        w.write(regs::STATUS, 4, 11);
        for q in 0..ready {
            w.write(regs::QUEUE_SEL, 4, u64::from(q));
            w.write(regs::QUEUE_READY, 4, 1);
        }
        w.write(regs::STATUS, 4, 15);
        w
    }

    /// §5.9.5.2, §5.9.6.1: the configuration read before the first
    /// request, `status` after DRIVER_OK included (Linux's order), and the
    /// algorithm mask of each service read however the reads are sized;
    /// a driver that skips the masks, or a queue, is caught.
    #[test]
    fn section_5_9_5_2_a_crypto_driver_reads_its_configuration_before_requests() {
        // max_dataqueues 1, crypto_services CIPHER read byte by byte, the
        // cipher mask; status read after DRIVER_OK.
        let mut w = crypto_up(
            &[(4, 4, 1), (8, 1, 1), (9, 1, 0), (10, 2, 0), (12, 4, 8)],
            2,
        );
        w.read(regs::CONFIG, 4, 1);
        w.write(regs::QUEUE_NOTIFY, 4, 1);
        for s in CRYPTO_STATEMENTS {
            assert_eq!(outcome(&w, s), Outcome::Pass, "{s}");
        }
        // The cipher service read, its mask not; the control queue left.
        let mut w = crypto_up(&[(0, 4, 1), (4, 4, 1), (8, 4, 1)], 1);
        w.write(regs::QUEUE_NOTIFY, 4, 0);
        for s in [CRYPTO_ALGOS_READ, CRYPTO_INIT_ALGOS, CRYPTO_ALL_QUEUES] {
            assert!(matches!(outcome(&w, s), Outcome::Fail(_)), "{s}");
        }
        assert_eq!(outcome(&w, CRYPTO_STATUS_READ), Outcome::Pass);
        // Nothing read at all.
        let mut w = crypto_up(&[], 2);
        w.write(regs::QUEUE_NOTIFY, 4, 0);
        for s in [
            CRYPTO_STATUS_READ,
            CRYPTO_DATAQUEUES_READ,
            CRYPTO_SERVICES_READ,
        ] {
            assert!(matches!(outcome(&w, s), Outcome::Fail(_)), "{s}");
        }
    }
}
