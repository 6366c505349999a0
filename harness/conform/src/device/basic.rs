//! Basic facilities: status (§2.1), feature bits (§2.2), reset (§2.4),
//! configuration space (§2.5).

use alloc::format;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, Level, TransportFeatures};
use virtio_core::mmio::regs::{self, InterruptStatus};
use virtio_core::status::DeviceStatus;

use super::{Dev, live};
use crate::{Check, Ctx, Outcome, Path, Patience};

const NO_USE_BEFORE_DRIVER_OK: &str = "device:basic/device-status-field#1";
const SETS_NEEDS_RESET: &str = "device:basic/device-status-field#2";
const NEEDS_RESET_NOTIFIES: &str = "device:basic/device-status-field#3";
const NO_UNMET_DEPENDENCY: &str = "device:basic/feature-bits#1";
const ACCEPTS_SUBSETS: &str = "device:basic/feature-bits#2";
const NO_UNKNOWN_BITS: &str = "device:basic/feature-bits#3";
const RENEGOTIATES: &str = "device:basic/feature-bits#4";
const OFFERS_VERSION_1: &str = "device:reserved-features#1";
const NO_SR_IOV_OFF_PCI: &str = "device:reserved-features#4";
const STATUS_ZERO_AFTER_RESET: &str = "device:basic/device-reset#1";
const QUIET_AFTER_RESET: &str = "device:basic/device-reset#2";
const CONFIG_BEFORE_FEATURES_OK_ID: &str = "device:basic/device-configuration-space#1";

/// A reset reads back 0, and afterwards the device leaves the queues
/// alone: a request made available before the reset and notified after it
/// stays unused.
pub const RESET: Check = Check {
    name: "reset",
    statements: &[STATUS_ZERO_AFTER_RESET, QUIET_AFTER_RESET],
    run: reset,
};

fn reset(ctx: &mut Ctx<'_>) {
    let all = [STATUS_ZERO_AFTER_RESET, QUIET_AFTER_RESET];
    let Some((mut d, q)) = live(ctx, &all, 0) else {
        return;
    };
    let Some(p) = d.post_probe() else {
        ctx.blocked(&all, "no room for the probe request");
        return;
    };
    d.notify(p.queue);
    if !d.wait_used(q, 1) {
        ctx.blocked(&all, "the probe request was not completed");
        return;
    }
    // A second request waits in the ring, made available but not
    // notified, when the driver resets.
    let Some(p2) = d.post_probe() else {
        ctx.blocked(&all, "no room for the probe request");
        return;
    };
    let ring = d.rings[usize::from(q)].clone();
    d.set_status(DeviceStatus::empty());
    let bus = ctx.bus();
    let zero = bus.wait(&mut || d.r32(regs::STATUS) == 0, Patience::Expect);
    if bus.path() == Path::VhostUser {
        ctx.not_observable(
            &[STATUS_ZERO_AFTER_RESET],
            "the status register is our vhost-user frontend's",
        );
    } else {
        ctx.expect(STATUS_ZERO_AFTER_RESET, zero, || {
            format!(
                "Status reads {:#x} after 0 was written",
                d.r32(regs::STATUS)
            )
        });
    }
    // The device may have taken the second request before the reset
    // (§2.7.13.3); from the reset on it leaves the ring alone.
    let mem = bus.mem();
    let at_reset = ring.as_ref().map_or(1, |r| r.used_idx(mem));
    d.ack();
    d.notify(p2.queue);
    d.settle();
    let used = ring.as_ref().map_or(1, |r| r.used_idx(mem));
    let isr = d.isr();
    ctx.expect(
        QUIET_AFTER_RESET,
        used == at_reset && isr == 0 && d.readable_intact(&p2),
        || format!("after the reset: used index {used} (was {at_reset} when Status read 0), InterruptStatus {isr:#x}"),
    );
}

/// A request made available and notified between FEATURES_OK and
/// DRIVER_OK is not consumed and raises no notification.
pub const BEFORE_DRIVER_OK: Check = Check {
    name: "before-driver-ok",
    statements: &[NO_USE_BEFORE_DRIVER_OK],
    run: |ctx| {
        let mut d = Dev::open(ctx.bus());
        if ctx.bus().path() == Path::VhostUser {
            ctx.not_observable(
                &[NO_USE_BEFORE_DRIVER_OK],
                "our vhost-user frontend hands the rings to the backend only at DRIVER_OK",
            );
            return;
        }
        if d.version == 1 {
            ctx.not_applicable(
                &[NO_USE_BEFORE_DRIVER_OK],
                "legacy interface: virtio-mmio version 1",
            );
            return;
        }
        let q = match d.live(0, false) {
            Ok(q) => q,
            Err(e) => {
                ctx.blocked(&[NO_USE_BEFORE_DRIVER_OK], &e);
                return;
            }
        };
        let Some(p) = d.post_probe() else {
            ctx.blocked(&[NO_USE_BEFORE_DRIVER_OK], "no room for the probe request");
            return;
        };
        d.notify(p.queue);
        d.settle();
        let mem = ctx.bus().mem();
        let used = d.ring(q).map_or(0, |r| r.used_idx(mem));
        let isr = d.isr() & InterruptStatus::USED_BUFFER.bits();
        ctx.expect(NO_USE_BEFORE_DRIVER_OK, used == 0 && isr == 0, || {
            format!("before DRIVER_OK: used index {used}, InterruptStatus {isr:#x}")
        });
    },
};

/// An available index that jumps past the queue size (a driver error the
/// device cannot recover from, §2.7.6) makes the device set
/// DEVICE_NEEDS_RESET and send a configuration change notification.
pub const NEEDS_RESET: Check = Check {
    name: "needs-reset",
    statements: &[SETS_NEEDS_RESET, NEEDS_RESET_NOTIFIES],
    run: |ctx| {
        let all = [SETS_NEEDS_RESET, NEEDS_RESET_NOTIFIES];
        if ctx.bus().path() == Path::VhostUser {
            ctx.not_observable(&all, "the status register is our vhost-user frontend's");
            return;
        }
        let Some((mut d, q)) = live(ctx, &all, 0) else {
            return;
        };
        let mem = ctx.bus().mem();
        let Some(ring) = d.ring(q) else {
            return;
        };
        let _ = ring.force_avail_idx(mem, ring.size() + 5);
        d.notify(q);
        let bus = ctx.bus();
        let set = bus.wait(
            &mut || d.status().contains(DeviceStatus::DEVICE_NEEDS_RESET),
            Patience::Expect,
        );
        // The specification does not call this driver error one the
        // device must treat as needing a reset: a device that stops the
        // queue instead is outside the SHOULD's case.
        if !set {
            let why = format!(
                "the device did not treat an available index past the queue size as an error needing a reset (status {:#x})",
                d.status().bits()
            );
            ctx.not_applicable(&[SETS_NEEDS_RESET, NEEDS_RESET_NOTIFIES], &why);
            return;
        }
        ctx.record(SETS_NEEDS_RESET, Outcome::Pass);
        let change = InterruptStatus::CONFIG_CHANGE.bits();
        let seen = bus.wait(&mut || d.isr() & change != 0, Patience::Expect);
        ctx.expect(NEEDS_RESET_NOTIFIES, seen, || {
            format!(
                "InterruptStatus {:#x}: no configuration change notification",
                d.isr()
            )
        });
    },
};

/// Transport bits virtio-mmio does not support (§4.2.5 and the
/// transport-specific bits of §6).
const NOT_ON_MMIO: u64 = TransportFeatures::ADMIN_VQ.bits() | TransportFeatures::SR_IOV.bits();

/// What the device offers: nothing that needs a bit it does not offer,
/// nothing the specification does not describe for its type and for
/// virtio-mmio.
pub const FEATURES_OFFERED: Check = Check {
    name: "features-offered",
    statements: &[
        NO_UNMET_DEPENDENCY,
        NO_UNKNOWN_BITS,
        OFFERS_VERSION_1,
        NO_SR_IOV_OFF_PCI,
    ],
    run: |ctx| {
        let all = [
            NO_UNMET_DEPENDENCY,
            NO_UNKNOWN_BITS,
            OFFERS_VERSION_1,
            NO_SR_IOV_OFF_PCI,
        ];
        if ctx.bus().path() == Path::VhostUser {
            ctx.not_observable(
                &all,
                "our vhost-user frontend offers the backend's features filtered by what it supports",
            );
            return;
        }
        let mut d = Dev::open(ctx.bus());
        d.reset();
        d.set_status(DeviceStatus::ACKNOWLEDGE);
        d.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let Some(t) = d.device_type() else {
            ctx.not_applicable(&all, "a device type these checks do not know");
            return;
        };
        let offered = d.read_offered();
        let broken: Vec<u8> = t
            .rules()
            .iter()
            .filter(|r| r.level == Level::Must && r.is_broken_by(offered))
            .map(|r| r.feature)
            .collect();
        ctx.expect(NO_UNMET_DEPENDENCY, broken.is_empty(), || {
            format!("offered {offered:#x}: bits {broken:?} lack what they require")
        });
        let known = known_bits(t);
        let unknown = offered & !known;
        ctx.expect(NO_UNKNOWN_BITS, unknown == 0, || {
            format!("offered {offered:#x}: bits {unknown:#x} are not described for this device on virtio-mmio")
        });
        if d.version == 1 {
            ctx.not_applicable(
                &[OFFERS_VERSION_1],
                "legacy interface: virtio-mmio version 1",
            );
        } else {
            let v1 = TransportFeatures::VERSION_1.bits();
            ctx.expect(OFFERS_VERSION_1, offered & v1 != 0, || {
                format!("offered {offered:#x} without VIRTIO_F_VERSION_1")
            });
        }
        // A virtio-mmio device is not a PCI device.
        let sr_iov = TransportFeatures::SR_IOV.bits();
        ctx.expect(NO_SR_IOV_OFF_PCI, offered & sr_iov == 0, || {
            format!("offered {offered:#x} with VIRTIO_F_SR_IOV on virtio-mmio")
        });
        d.reset();
    },
};

/// The bits the specification describes for `t` on virtio-mmio.
fn known_bits(t: DeviceType) -> u64 {
    let device = t.feature_names().iter().fold(0u64, |m, (b, _)| {
        m | 1u64.checked_shl(u32::from(*b)).unwrap_or(0)
    });
    device | (TransportFeatures::all().bits() & !NOT_ON_MMIO)
}

/// The device accepts valid subsets of what it offers (only VERSION_1,
/// and everything it offers), and the same set again after a reset.
pub const FEATURES_ACCEPTED: Check = Check {
    name: "features-accepted",
    statements: &[ACCEPTS_SUBSETS, RENEGOTIATES],
    run: |ctx| {
        let all = [ACCEPTS_SUBSETS, RENEGOTIATES];
        if ctx.bus().path() == Path::VhostUser {
            ctx.not_observable(&all, "the status register is our vhost-user frontend's");
            return;
        }
        let mut d = Dev::open(ctx.bus());
        if d.version == 1 {
            ctx.not_applicable(&all, "legacy interface: virtio-mmio version 1");
            return;
        }
        let Some(t) = d.device_type() else {
            ctx.not_applicable(&all, "a device type these checks do not know");
            return;
        };
        let offered = d.offered;
        // Everything offered, minus bits whose requirements are not met
        // and the transport bits a driver here cannot honour.
        let mut full = offered & known_bits(t);
        for r in t.rules() {
            if r.is_broken_by(full) {
                full &= !(1u64 << r.feature);
            }
        }
        let refused: Vec<u64> = [0, full]
            .into_iter()
            .filter(|want| d.begin(*want).is_err())
            .collect();
        // Refusing is the MUST branch ("otherwise it MUST fail to set
        // FEATURES_OK"); only the SHOULD is missed.
        if refused.is_empty() {
            ctx.record(ACCEPTS_SUBSETS, Outcome::Pass);
        } else {
            ctx.record(
                ACCEPTS_SUBSETS,
                Outcome::Warn(format!(
                    "FEATURES_OK not kept for {refused:#x?} (offered {offered:#x})"
                )),
            );
        }
        let again = d.begin(full).and_then(|_| d.begin(full));
        match again {
            Ok(_) => ctx.record(RENEGOTIATES, Outcome::Pass),
            Err(e) if refused.contains(&full) => ctx.record(
                RENEGOTIATES,
                Outcome::NotApplicable(format!("the set was never accepted: {e}")),
            ),
            Err(e) => ctx.record(RENEGOTIATES, Outcome::Fail(e)),
        }
        d.reset();
    },
};

/// The bytes of configuration space the check compares, by device type:
/// fields present whatever is negotiated.
fn stable_config_len(t: DeviceType) -> usize {
    match t {
        DeviceType::Blk => 8,
        DeviceType::Console => 4,
        DeviceType::Net => 6,
        _ => 0,
    }
}

/// Device-specific configuration read before FEATURES_OK reads as after
/// it, and does not break the device.
pub const CONFIG_BEFORE_FEATURES_OK: Check = Check {
    name: "config-before-features-ok",
    statements: &[CONFIG_BEFORE_FEATURES_OK_ID],
    run: |ctx| {
        if ctx.bus().path() == Path::VhostUser {
            ctx.not_observable(
                &[CONFIG_BEFORE_FEATURES_OK_ID],
                "our vhost-user frontend answers configuration reads from its copy",
            );
            return;
        }
        let mut d = Dev::open(ctx.bus());
        if d.version == 1 {
            ctx.not_applicable(
                &[CONFIG_BEFORE_FEATURES_OK_ID],
                "legacy interface: virtio-mmio version 1",
            );
            return;
        }
        let n = d.device_type().map_or(0, stable_config_len);
        if n == 0 {
            ctx.not_applicable(
                &[CONFIG_BEFORE_FEATURES_OK_ID],
                "no device-specific configuration",
            );
            return;
        }
        d.reset();
        d.set_status(DeviceStatus::ACKNOWLEDGE);
        d.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let read = |d: &Dev<'_>| -> Vec<u8> {
            (0..n as u64)
                .map(|i| d.bus().regs().read8(regs::CONFIG + i))
                .collect()
        };
        let before = read(&d);
        let broke = d
            .status()
            .intersects(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::FAILED);
        let after = match d.begin(0) {
            Ok(_) => read(&d),
            Err(e) => {
                ctx.blocked(&[CONFIG_BEFORE_FEATURES_OK_ID], &e);
                return;
            }
        };
        // Reading must be allowed (§2.5.2); values may change (a console
        // resized) or mean nothing yet (a MAC without VIRTIO_NET_F_MAC),
        // but a block device's capacity must read the same.
        let stable = d.device_type() != Some(DeviceType::Blk) || before == after;
        ctx.expect(CONFIG_BEFORE_FEATURES_OK_ID, !broke && stable, || {
            format!(
                "before FEATURES_OK {before:02x?}, after {after:02x?}, status then {:#x}",
                d.status().bits()
            )
        });
        d.reset();
    },
};
