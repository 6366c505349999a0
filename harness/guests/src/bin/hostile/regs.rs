//! The register cases (§4.2.2 virtio-mmio, §2.1 status, §2.2 features),
//! run against every device: a notification on a queue that is not ready,
//! writes to read-only registers, configuration space beyond its size,
//! status written out of order, a feature bit never offered. None posts a
//! ring the device may use, except `notify-not-ready` (whose queue the
//! device must leave alone).

use core::fmt::Write;

use guest_rt::raw::{Outcome, QueuePlacement, RawDevice, RawError, RawMemory, RawQueue, Scratch};
use guest_rt::raw::{desc, observe};
use virtio_core::features::TransportFeatures;
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;

use super::{Judged, LEN, Line, SIZE, V, WRITE};

/// A register case.
#[derive(Clone, Copy)]
pub struct RegCase {
    /// Name, after the device's prefix (`hostile.case=`).
    pub name: &'static str,
    /// The spec rule the driver breaks.
    pub rule: &'static str,
    /// Runs it on the device (queue under test, its buffers
    /// device-writable?) and judges.
    pub run: fn(&RawDevice, &RawMemory, u16, bool) -> Result<Judged, RawError>,
}

/// Every register case, in the order they run.
pub const REGS: &[RegCase] = &[
    RegCase {
        name: "notify-not-ready",
        rule: "§4.2.3.2: a queue is used after QueueReady 1; here a buffer is posted and notified with QueueReady 0",
        run: notify_not_ready,
    },
    RegCase {
        name: "write-read-only-registers",
        rule: "§4.2.2: MagicValue, Version, DeviceID, VendorID, DeviceFeatures, QueueNumMax, InterruptStatus, ConfigGeneration are read-only; here each is written",
        run: read_only_registers,
    },
    RegCase {
        name: "config-beyond-size",
        rule: "§4.2.2, §4.2.2.2: the driver accesses the configuration space within its size; here the last word of the register block (0x1fc) is read and written",
        run: config_beyond_size,
    },
    RegCase {
        name: "status-features-ok-before-driver",
        rule: "§3.1.1: ACKNOWLEDGE, DRIVER, then FEATURES_OK; here FEATURES_OK is written first, alone",
        run: features_ok_first,
    },
    RegCase {
        name: "status-driver-ok-before-features-ok",
        rule: "§3.1.1: DRIVER_OK after FEATURES_OK; here ACKNOWLEDGE|DRIVER|DRIVER_OK without FEATURES_OK",
        run: driver_ok_early,
    },
    RegCase {
        name: "status-clear-bit",
        rule: "§2.1.2: the driver MUST NOT clear a status bit (only a reset does); here DRIVER_OK is cleared",
        run: clear_bit,
    },
    RegCase {
        name: "feature-not-offered",
        rule: "§2.2.2, §3.1.1: accept only offered features; here one never offered, then FEATURES_OK (which must not stick)",
        run: feature_not_offered,
    },
];

fn judged(v: V, detail: core::fmt::Arguments<'_>) -> Judged {
    let mut l = Line::new();
    let _ = l.write_fmt(detail);
    Judged { v, detail: l }
}

fn not_on_legacy() -> Judged {
    judged(
        V::Pass,
        format_args!(
            "not applicable: a legacy transport has no such register or status bit (§4.2.4)"
        ),
    )
}

fn needs_reset(dev: &RawDevice) -> bool {
    dev.status().contains(DeviceStatus::DEVICE_NEEDS_RESET)
}

fn notify_not_ready(
    dev: &RawDevice,
    mem: &RawMemory,
    queue: u16,
    device_writes: bool,
) -> Result<Judged, RawError> {
    if !dev.is_modern() {
        dev.reset()?;
        return Ok(not_on_legacy());
    }
    dev.negotiate(0)?;
    let max = dev.queue_max(queue);
    if max == 0 {
        return Err(RawError::NoQueue { queue });
    }
    let mut q = RawQueue::new(
        queue,
        SIZE.min(max as u16).next_power_of_two().min(SIZE),
        &mem.rings,
    )?;
    let QueuePlacement::Modern {
        size,
        desc: d,
        driver,
        device,
    } = q.placement(dev.version())
    else {
        return Ok(not_on_legacy());
    };
    dev.write(regs::QUEUE_SEL, u32::from(queue));
    dev.write(regs::QUEUE_NUM, size);
    for (low, addr) in [
        (regs::QUEUE_DESC_LOW, d),
        (regs::QUEUE_DRIVER_LOW, driver),
        (regs::QUEUE_DEVICE_LOW, device),
    ] {
        dev.write(low, addr as u32);
        dev.write(low + 4, (addr >> 32) as u32);
    }
    dev.write(regs::QUEUE_READY, 0);
    let mut scratch = Scratch::new(&mem.scratch);
    let flags = if device_writes { WRITE } else { 0 };
    let a = scratch.buffer(LEN.into(), device_writes)?;
    q.set_desc(0, desc(a, LEN, flags, 0))?;
    q.post(0)?;
    let ok = dev.driver_ok();
    let seen = 0;
    dev.notify(u32::from(queue));
    let outcome = observe(dev, &q, seen);
    dev.ack_interrupt(dev.interrupt_status());
    dev.reset()?;
    scratch.check()?;
    Ok(match outcome {
        Outcome::NeedsReset => judged(
            V::Reject,
            format_args!("DEVICE_NEEDS_RESET (status {:#04x})", ok.bits()),
        ),
        Outcome::Ignored if !ok.contains(DeviceStatus::DRIVER_OK) => judged(
            V::Reject,
            format_args!(
                "DRIVER_OK refused (status {:#04x}); notify ignored",
                ok.bits()
            ),
        ),
        Outcome::Ignored => judged(V::Pass, format_args!("notify ignored, queue left alone")),
        Outcome::Used(e) => judged(
            V::Crash,
            format_args!(
                "device fault: used a queue that is not ready (used len={} id={}; §4.2.3.2)",
                e.len(),
                e.id()
            ),
        ),
    })
}

/// The read-only registers of §4.2.2 (table 4.1), by name.
const READ_ONLY: &[(&str, u64)] = &[
    ("MagicValue", regs::MAGIC_VALUE),
    ("Version", regs::VERSION),
    ("DeviceID", regs::DEVICE_ID),
    ("VendorID", regs::VENDOR_ID),
    ("DeviceFeatures", regs::DEVICE_FEATURES),
    ("QueueNumMax", regs::QUEUE_NUM_MAX),
    ("InterruptStatus", regs::INTERRUPT_STATUS),
    ("ConfigGeneration", regs::CONFIG_GENERATION),
];

fn read_only_registers(
    dev: &RawDevice,
    _mem: &RawMemory,
    queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.negotiate(0)?;
    dev.write(regs::QUEUE_SEL, u32::from(queue));
    dev.write(regs::DEVICE_FEATURES_SEL, 0);
    let legacy = !dev.is_modern();
    let mut changed = Line::new();
    let mut count = 0;
    for &(name, offset) in READ_ONLY {
        if legacy && offset == regs::CONFIG_GENERATION {
            continue;
        }
        let before = dev.read(offset);
        dev.write(offset, !before);
        let after = dev.read(offset);
        count += 1;
        if after != before {
            let _ = write!(changed, "{name} {before:#x}->{after:#x} ");
        }
    }
    let reset = needs_reset(dev);
    dev.reset()?;
    Ok(if !changed.as_str().is_empty() {
        judged(
            V::Crash,
            format_args!(
                "device fault: read-only register changed: {}",
                changed.as_str()
            ),
        )
    } else if reset {
        judged(
            V::Reject,
            format_args!("DEVICE_NEEDS_RESET; {count} registers unchanged"),
        )
    } else {
        judged(
            V::Pass,
            format_args!("writes ignored: {count} read-only registers read back unchanged"),
        )
    })
}

/// The last word of the register block: beyond every device's
/// configuration space here (the largest, virtio-blk's, is 60 bytes).
const BEYOND: u64 = 0x1fc;

fn config_beyond_size(
    dev: &RawDevice,
    _mem: &RawMemory,
    _queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.negotiate(0)?;
    let gen_before = dev.read(regs::CONFIG_GENERATION);
    let before = dev.read(BEYOND);
    dev.write(BEYOND, !before);
    let after = dev.read(BEYOND);
    let gen_after = dev.read(regs::CONFIG_GENERATION);
    let reset = needs_reset(dev);
    dev.reset()?;
    Ok(if after != before {
        judged(
            V::Crash,
            format_args!(
                "device fault: a write beyond the configuration space stuck ({before:#x}->{after:#x})"
            ),
        )
    } else if reset {
        judged(V::Reject, format_args!("DEVICE_NEEDS_RESET"))
    } else {
        judged(
            V::Pass,
            format_args!(
                "read {before:#x}, write ignored (config generation {gen_before}->{gen_after})"
            ),
        )
    })
}

/// Writes `status` and judges what reads back: the new `bit` refused or
/// DEVICE_NEEDS_RESET is REJECT, taken is PASS (tolerated).
fn status_write(dev: &RawDevice, status: DeviceStatus, bit: DeviceStatus, what: &str) -> Judged {
    let read = dev.write_status(status);
    if read.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        judged(
            V::Reject,
            format_args!(
                "DEVICE_NEEDS_RESET (wrote {:#04x}, read {:#04x})",
                status.bits(),
                read.bits()
            ),
        )
    } else if !read.contains(bit) {
        judged(
            V::Reject,
            format_args!(
                "{what} refused (wrote {:#04x}, read {:#04x})",
                status.bits(),
                read.bits()
            ),
        )
    } else {
        judged(
            V::Pass,
            format_args!(
                "{what} tolerated (wrote {:#04x}, read {:#04x})",
                status.bits(),
                read.bits()
            ),
        )
    }
}

fn features_ok_first(
    dev: &RawDevice,
    _mem: &RawMemory,
    _queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.reset()?;
    if !dev.is_modern() {
        return Ok(not_on_legacy());
    }
    let j = status_write(
        dev,
        DeviceStatus::FEATURES_OK,
        DeviceStatus::FEATURES_OK,
        "FEATURES_OK",
    );
    dev.reset()?;
    Ok(j)
}

fn driver_ok_early(
    dev: &RawDevice,
    _mem: &RawMemory,
    _queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.reset()?;
    if !dev.is_modern() {
        return Ok(not_on_legacy());
    }
    let drv = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
    dev.step_status(DeviceStatus::ACKNOWLEDGE)?;
    dev.step_status(drv)?;
    dev.write_driver_features(TransportFeatures::VERSION_1.bits());
    let j = status_write(
        dev,
        drv | DeviceStatus::DRIVER_OK,
        DeviceStatus::DRIVER_OK,
        "DRIVER_OK",
    );
    dev.reset()?;
    Ok(j)
}

fn clear_bit(
    dev: &RawDevice,
    _mem: &RawMemory,
    _queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.negotiate(0)?;
    let ok = dev.driver_ok();
    if !ok.contains(DeviceStatus::DRIVER_OK) {
        dev.reset()?;
        return Ok(judged(
            V::Reject,
            format_args!(
                "DRIVER_OK with no queue refused (status {:#04x})",
                ok.bits()
            ),
        ));
    }
    let cleared = dev.negotiated_status();
    let read = dev.write_status(cleared);
    dev.reset()?;
    Ok(if read.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        judged(
            V::Reject,
            format_args!("DEVICE_NEEDS_RESET (read {:#04x})", read.bits()),
        )
    } else if read.contains(DeviceStatus::DRIVER_OK) {
        judged(
            V::Reject,
            format_args!("write refused: DRIVER_OK kept (read {:#04x})", read.bits()),
        )
    } else {
        judged(
            V::Pass,
            format_args!("tolerated: DRIVER_OK cleared (read {:#04x})", read.bits()),
        )
    })
}

fn feature_not_offered(
    dev: &RawDevice,
    _mem: &RawMemory,
    _queue: u16,
    _device_writes: bool,
) -> Result<Judged, RawError> {
    dev.reset()?;
    if !dev.is_modern() {
        return Ok(not_on_legacy());
    }
    let offered = dev.device_features();
    // The lowest device-specific bit (0..24) not offered, else any.
    let Some(bit) = (0..64).find(|b| offered & (1u64 << b) == 0) else {
        return Ok(judged(
            V::Pass,
            format_args!("not applicable: every bit offered"),
        ));
    };
    let drv = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
    dev.step_status(DeviceStatus::ACKNOWLEDGE)?;
    dev.step_status(drv)?;
    dev.write_driver_features(TransportFeatures::VERSION_1.bits() | (1u64 << bit));
    let read = dev.write_status(drv | DeviceStatus::FEATURES_OK);
    dev.reset()?;
    Ok(if read.contains(DeviceStatus::FEATURES_OK) {
        judged(
            V::Crash,
            format_args!("device fault: FEATURES_OK kept with bit {bit} never offered (§2.2.2)"),
        )
    } else {
        judged(
            V::Reject,
            format_args!(
                "FEATURES_OK refused with bit {bit} never offered (read {:#04x})",
                read.bits()
            ),
        )
    })
}
