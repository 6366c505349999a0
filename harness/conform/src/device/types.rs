//! Device-type requirements: entropy (§5.4), console (§5.3).

use alloc::format;

use virtio_core::features::DeviceType;
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;

use super::{Dev, FILL, live};
use crate::ring::bytes;
use crate::{Check, Ctx, Path};

const RNG_BYTES: &str = "device:rng/device-operation#1";
const EMERG_ALLOWED: &str = "device:console/device-initialization#1";
const EMERG_OUTPUT: &str = "device:console/device-initialization#2";

/// `VIRTIO_CONSOLE_F_EMERG_WRITE` (§5.3.3).
const EMERG_WRITE: u64 = 1 << 2;

/// An entropy request completes with one or more bytes written, no more
/// than the buffer holds.
pub const RNG_FILLS: Check = Check {
    name: "rng-fills",
    statements: &[RNG_BYTES],
    run: |ctx| {
        if Dev::open(ctx.bus()).device_type() != Some(DeviceType::Rng) {
            ctx.not_applicable(&[RNG_BYTES], "not an entropy device");
            return;
        }
        let Some((mut d, q)) = live(ctx, &[RNG_BYTES], 0) else {
            return;
        };
        let Some(p) = d.post_probe() else {
            ctx.blocked(&[RNG_BYTES], "no room for the request");
            return;
        };
        d.notify(q);
        if !d.wait_used(q, 1) {
            ctx.blocked(&[RNG_BYTES], "the request was not completed");
            return;
        }
        let mem = ctx.bus().mem();
        let (_, len) = d.ring(q).map_or((0, 0), |r| r.used_elem(mem, 0));
        let (a, cap) = p.writable[0];
        let b = bytes(mem, a, cap as usize);
        // A few random bytes may equal the fill; more than 8 cannot all
        // do by chance.
        let written = len <= 8 || b.iter().take(len as usize).any(|x| *x != FILL);
        ctx.expect(RNG_BYTES, (1..=cap).contains(&len) && written, || {
            format!("used len {len} for a buffer of {cap} bytes, bytes written: {written}")
        });
    },
};

/// `emerg_wr` may be written before the device is initialised (and the
/// device then still initialises and works).
pub const CONSOLE_EMERGENCY_WRITE: Check = Check {
    name: "console-emergency-write",
    statements: &[EMERG_ALLOWED, EMERG_OUTPUT],
    run: emergency_write,
};

fn emergency_write(ctx: &mut Ctx<'_>) {
    let all = [EMERG_ALLOWED, EMERG_OUTPUT];
    let mut d = Dev::open(ctx.bus());
    if d.device_type() != Some(DeviceType::Console) {
        ctx.not_applicable(&all, "not a console device");
        return;
    }
    if d.version == 1 {
        ctx.not_applicable(&all, "legacy interface: virtio-mmio version 1");
        return;
    }
    if d.offered & EMERG_WRITE == 0 {
        ctx.not_applicable(&all, "VIRTIO_CONSOLE_F_EMERG_WRITE not offered");
        return;
    }
    if ctx.bus().path() == Path::VhostUser {
        ctx.not_observable(
            &all,
            "our vhost-user frontend does not pass console configuration writes to the backend",
        );
        return;
    }
    d.reset();
    // emerg_wr is at offset 8 of the configuration (§5.3.4).
    d.w32(regs::CONFIG + 8, u32::from(b'!'));
    let broke = d
        .status()
        .intersects(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::FAILED);
    let worked = d.live(0, true).and_then(|q| {
        let p = d.post_probe().ok_or("no room for the request")?;
        d.notify(p.queue);
        if d.wait_used(q, 1) {
            Ok(())
        } else {
            Err("the device did not work after the emergency write".into())
        }
    });
    ctx.expect(EMERG_ALLOWED, !broke && worked.is_ok(), || {
        format!(
            "after a write to emerg_wr on the unconfigured device: status {:#x}, {}",
            d.status().bits(),
            worked.clone().err().unwrap_or_default()
        )
    });
    ctx.not_observable(
        &[EMERG_OUTPUT],
        "the console's output is the backend's, not on the bus",
    );
}
