//! Device-type requirements: entropy (§5.4), console (§5.3).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{ConsoleFeatures, DeviceType};
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;

use super::{Dev, FILL, live};
use crate::ring::bytes;
use crate::{Check, Ctx, Path};

const RNG_BYTES: &str = "device:rng/device-operation#1";
const EMERG_ALLOWED: &str = "device:console/device-initialization#1";
const EMERG_OUTPUT: &str = "device:console/device-initialization#2";

/// `VIRTIO_CONSOLE_F_EMERG_WRITE` (§5.3.3).
const EMERG_WRITE: u64 = ConsoleFeatures::EMERG_WRITE.bits();

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
    let Some(mut d) = super::open_type(ctx, &all, DeviceType::Console, "console") else {
        return;
    };
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

const ADD_VALID: &str = "device:console/device-operation/multiport-device-operation#1";
const REMOVE_ADDED: &str = "device:console/device-operation/multiport-device-operation#2";

/// `VIRTIO_CONSOLE_F_MULTIPORT` (§5.3.3).
const MULTIPORT: u64 = ConsoleFeatures::MULTIPORT.bits();
/// Control events (§5.3.6.2).
const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const DEVICE_REMOVE: u16 = 2;
/// Bytes of each control receive buffer (a message and a port name).
const CONTROL_BUF: u32 = 128;
/// Control receive buffers kept posted.
const CONTROL_BUFS: u16 = 8;

/// With MULTIPORT, after DEVICE_READY the device adds only ports below
/// max_nr_ports, each once, and removes only ports it added (§5.3.6.2).
pub const CONSOLE_MULTIPORT: Check = Check {
    name: "console-multiport",
    statements: &[ADD_VALID, REMOVE_ADDED],
    run: console_multiport,
};

fn console_multiport(ctx: &mut Ctx<'_>) {
    let all = [ADD_VALID, REMOVE_ADDED];
    let Some(mut d) = super::open_type(ctx, &all, DeviceType::Console, "console") else {
        return;
    };
    if d.offered & MULTIPORT == 0 {
        ctx.not_applicable(&all, "VIRTIO_CONSOLE_F_MULTIPORT not offered");
        return;
    }
    let (max, messages) = match multiport_messages(&mut d) {
        Ok(m) => m,
        Err(e) => {
            ctx.blocked(&all, &e);
            return;
        }
    };
    judge_multiport(ctx, max, &messages);
}

/// Brings a MULTIPORT console live (legacy or modern), sends DEVICE_READY
/// and collects the control messages the device sends back: its
/// `max_nr_ports` (read little-endian) and each message's id and event.
pub(super) fn multiport_messages(d: &mut Dev<'_>) -> Result<(u32, Vec<(u32, u16)>), String> {
    {
        d.begin(MULTIPORT)?;
        let max = u32::from_le_bytes([d.config8(4), d.config8(5), d.config8(6), d.config8(7)]);
        for q in 0..4 {
            d.setup_queue(q)?;
        }
        d.driver_ok()?;
        let mem = d.bus().mem();
        // Control receive buffers (queue 2).
        let mut posted = alloc::collections::BTreeMap::new();
        for _ in 0..CONTROL_BUFS {
            let a = d.buffer(CONTROL_BUF, None).ok_or("out of DMA memory")?;
            let ring = d.ring(2).ok_or("control receiveq not set up")?;
            let h = ring
                .chain(
                    mem,
                    &[crate::ring::Buf {
                        addr: a,
                        len: CONTROL_BUF,
                        write: true,
                    }],
                )
                .ok_or("no room in the control receiveq")?;
            ring.publish(mem, h)
                .ok_or("no room in the control receiveq")?;
            posted.insert(h, a);
        }
        d.notify(2);
        // DEVICE_READY (value 1) on the control transmitq (queue 3).
        let mut m = [0u8; 8];
        m[4..6].copy_from_slice(&DEVICE_READY.to_le_bytes());
        m[6..8].copy_from_slice(&1u16.to_le_bytes());
        let a = d.buffer(8, Some(&m)).ok_or("out of DMA memory")?;
        let ring = d.ring(3).ok_or("control transmitq not set up")?;
        let h = ring
            .chain(
                mem,
                &[crate::ring::Buf {
                    addr: a,
                    len: 8,
                    write: false,
                }],
            )
            .ok_or("no room in the control transmitq")?;
        ring.publish(mem, h)
            .ok_or("no room in the control transmitq")?;
        d.notify(3);
        // The device's messages: the first expected, the rest as they come.
        let mut seen = 0u16;
        let mut out = Vec::new();
        let mut patience = crate::Patience::Expect;
        loop {
            let ring = d.ring(2).ok_or("control receiveq not set up")?.clone();
            let mut more = || ring.used_idx(mem) != seen;
            if !d.bus().wait(&mut more, patience) {
                break;
            }
            patience = crate::Patience::Quiet;
            while ring.used_idx(mem) != seen && seen < CONTROL_BUFS {
                let (id, len) = ring.used_elem(mem, seen);
                seen += 1;
                let Some(a) = u16::try_from(id).ok().and_then(|h| posted.get(&h)) else {
                    return Err(format!(
                        "control receiveq: used id {id} is not a posted buffer"
                    ));
                };
                if len < 8 {
                    continue;
                }
                let b = bytes(mem, *a, 8);
                out.push((
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    u16::from_le_bytes([b[4], b[5]]),
                ));
            }
            if seen >= CONTROL_BUFS {
                break;
            }
        }
        Ok((max, out))
    }
}

fn judge_multiport(ctx: &mut Ctx<'_>, max: u32, messages: &[(u32, u16)]) {
    let all = [ADD_VALID, REMOVE_ADDED];
    let mut added: Vec<u32> = Vec::new();
    let mut bad_add = Vec::new();
    let mut bad_remove = Vec::new();
    for (id, event) in messages {
        match *event {
            DEVICE_ADD => {
                if *id >= max || added.contains(id) {
                    bad_add.push(format!(
                        "DEVICE_ADD {id} (max_nr_ports {max}, added {added:?})"
                    ));
                }
                added.push(*id);
            }
            DEVICE_REMOVE if !added.contains(id) => {
                bad_remove.push(format!("DEVICE_REMOVE {id} (added {added:?})"));
            }
            _ => {}
        }
    }
    if added.is_empty() {
        ctx.not_observable(&all, "the device added no port after DEVICE_READY");
        return;
    }
    ctx.expect(ADD_VALID, bad_add.is_empty(), || bad_add.join("; "));
    ctx.expect(REMOVE_ADDED, bad_remove.is_empty(), || {
        bad_remove.join("; ")
    });
}
