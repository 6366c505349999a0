//! Split virtqueues (§2.7) and the virtqueue facilities they use (§2.6).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::regs::InterruptStatus;
use virtio_core::status::DeviceStatus;

use super::{Dev, FILL, Probe, live};
use crate::ring::{self, Buf, NEXT, WRITE, bytes};
use crate::{Check, Outcome, Patience};

const NO_WRITE_READABLE: &str = "device:basic/virtqueues/the-virtqueue-descriptor-table#1";
const NO_WRITE_TABLE: &str = "device:basic/virtqueues/the-virtqueue-descriptor-table#2";
const LEN_BEFORE_IDX: &str = "device:basic/virtqueues/the-virtqueue-used-ring#1";
const LEN_BYTES_WRITTEN: &str = "device:basic/virtqueues/the-virtqueue-used-ring#2";
const ANY_ARRANGEMENT: &str = "device:basic/message-framing#1";
const INDIRECT_WRITE_FLAG: &str =
    "device:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#1";
const INDIRECT_AFTER_CHAIN: &str =
    "device:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#2";
const IGNORE_USED_EVENT: &str = "device:basic/virtqueues/used-buffer-notification-suppression#1";
const FLAG_SUPPRESSES: &str = "device:basic/virtqueues/used-buffer-notification-suppression#2";
const NOTIFY_WITHOUT_FLAG: &str = "device:basic/virtqueues/used-buffer-notification-suppression#3";
const IGNORE_FLAG_LOW_BIT: &str = "device:basic/virtqueues/used-buffer-notification-suppression#4";
const NOTIFY_AT_EVENT: &str = "device:basic/virtqueues/used-buffer-notification-suppression#5";
const QUIET_BEFORE_EVENT: &str = "device:basic/virtqueues/used-buffer-notification-suppression#6";
const USED_FLAGS_0_OR_1: &str =
    "device:basic/virtqueues/available-buffer-notification-suppression#1";
const USED_FLAGS_0: &str = "device:basic/virtqueues/available-buffer-notification-suppression#2";
const SPURIOUS: &str = "device:basic/virtqueues/available-buffer-notification-suppression#3";

/// Whether a probe request's used length counts only bytes the device
/// could have written (§2.7.8.2).
fn len_ok(p: &Probe, len: u32) -> Result<(), String> {
    let writable: u32 = p.writable.iter().map(|(_, l)| *l).sum();
    if len > writable {
        return Err(format!(
            "used len {len} but only {writable} device-writable bytes"
        ));
    }
    Ok(())
}

/// Whether a completed probe request did what its type asks (entropy
/// bytes written, a block read with status OK); the used length is
/// [`len_ok`]'s business, except where the type defines it.
fn judge(d: &Dev<'_>, p: &Probe, len: u32) -> Result<(), String> {
    let mem = d.bus().mem();
    match d.device_type() {
        Some(DeviceType::Rng) => {
            let (a, _) = p.writable[0];
            let b = bytes(mem, a, len as usize);
            // A few random bytes may equal the fill; more than 8 cannot
            // all do by chance.
            if len == 0 || (len > 8 && b.iter().all(|x| *x == FILL)) {
                return Err(format!(
                    "entropy request completed with len {len} and nothing written"
                ));
            }
        }
        Some(DeviceType::Blk) => {
            // The status byte comes last; len may underestimate what was
            // written (§2.7.8.2), so only the status is judged.
            let (a, _) = p.writable[1];
            let st = bytes(mem, a, 1)[0];
            if st != 0 {
                return Err(format!("reading sector 0: status {st:#x}"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Posts `bufs` as one plain chain on the probe queue, notifies, waits;
/// the used len, or why not.
fn run_chain(d: &mut Dev<'_>, q: u16, bufs: &[Buf]) -> Result<u32, String> {
    let mem = d.bus().mem();
    let ring = d.ring(q).ok_or("no ring")?;
    let before = ring.used_idx(mem);
    let head = ring.chain(mem, bufs).ok_or("no room in the ring")?;
    ring.publish(mem, head).ok_or("memory")?;
    d.notify(q);
    if !d.wait_used(q, before.wrapping_add(1)) {
        return Err(format!(
            "request not completed (status {:#x})",
            d.status().bits()
        ));
    }
    let ring = d.ring(q).ok_or("no ring")?;
    let (id, len) = ring.used_elem(mem, before);
    if id != u32::from(head) {
        return Err(format!("used id {id}, expected head {head}"));
    }
    Ok(len)
}

/// Readable buffers and the descriptor table are left as written; the
/// used length counts bytes the device wrote.
pub const BUFFERS_AND_TABLE: Check = Check {
    name: "buffers-and-table",
    statements: &[
        NO_WRITE_READABLE,
        NO_WRITE_TABLE,
        LEN_BEFORE_IDX,
        LEN_BYTES_WRITTEN,
    ],
    run: |ctx| {
        let all = [NO_WRITE_READABLE, NO_WRITE_TABLE, LEN_BYTES_WRITTEN];
        ctx.not_observable(
            &[LEN_BEFORE_IDX],
            "the order of two writes inside one completion is not visible from outside the device",
        );
        let Some((mut d, q)) = live(ctx, &all, 0) else {
            return;
        };
        let Some((bufs, p)) = d.probe_bufs(1) else {
            ctx.blocked(&all, "no probe request for this device");
            return;
        };
        let mem = ctx.bus().mem();
        // The chain is written first, then the table is copied, then the
        // request is made available.
        let mut table_before = Vec::new();
        let r = (|| {
            let ring = d.ring(q).ok_or("no ring")?;
            let head = ring.chain(mem, &bufs).ok_or("no room in the ring")?;
            table_before = ring.desc_table(mem);
            ring.publish(mem, head).ok_or("memory")?;
            d.notify(q);
            if !d.wait_used(q, 1) {
                return Err(format!(
                    "request not completed (status {:#x})",
                    d.status().bits()
                ));
            }
            let ring = d.ring(q).ok_or("no ring")?;
            let (id, len) = ring.used_elem(mem, 0);
            if id != u32::from(head) {
                return Err(format!("used id {id}, expected head {head}"));
            }
            Ok(len)
        })();
        let table_after = d.ring(q).map(|r| r.desc_table(mem)).unwrap_or_default();
        match r {
            Ok(len) => {
                ctx.expect(NO_WRITE_READABLE, d.readable_intact(&p), || {
                    "a device-readable buffer changed".into()
                });
                let j = len_ok(&p, len).and_then(|()| judge(&d, &p, len));
                ctx.expect(LEN_BYTES_WRITTEN, j.is_ok(), || {
                    j.clone().err().unwrap_or_default()
                });
            }
            Err(e) => ctx.blocked(&[NO_WRITE_READABLE, LEN_BYTES_WRITTEN], &e),
        }
        ctx.expect(NO_WRITE_TABLE, table_before == table_after, || {
            "the descriptor table changed".into()
        });
    },
};

/// The same request split over several descriptors per buffer completes
/// as the plain one does (§2.6.4: no assumptions about the arrangement).
pub const ARRANGEMENTS: Check = Check {
    name: "arrangements",
    statements: &[ANY_ARRANGEMENT],
    run: |ctx| {
        let Some((mut d, q)) = live(ctx, &[ANY_ARRANGEMENT], 0) else {
            return;
        };
        let mut problems = Vec::new();
        for pieces in [2u32, 3, 4] {
            let Some((bufs, p)) = d.probe_bufs(pieces) else {
                break;
            };
            match run_chain(&mut d, q, &bufs).and_then(|len| judge(&d, &p, len)) {
                Ok(()) => {}
                Err(e) => problems.push(format!("{} descriptors: {e}", bufs.len())),
            }
        }
        ctx.expect(ANY_ARRANGEMENT, problems.is_empty(), || problems.join("; "));
    },
};

/// Writes `bufs` as an indirect table and returns its address.
fn table(d: &mut Dev<'_>, bufs: &[Buf]) -> Option<GuestAddress> {
    let n = bufs.len() as u64;
    let at = d.alloc.take(16 * n, 16)?;
    let mem = d.bus().mem();
    for (k, b) in bufs.iter().enumerate() {
        let last = k + 1 == bufs.len();
        let mut flags = if b.write { WRITE } else { 0 };
        if !last {
            flags |= NEXT;
        }
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&b.addr.0.to_le_bytes());
        e[8..12].copy_from_slice(&b.len.to_le_bytes());
        e[12..14].copy_from_slice(&flags.to_le_bytes());
        e[14..16].copy_from_slice(&(if last { 0u16 } else { k as u16 + 1 }).to_le_bytes());
        mem.write(GuestAddress(at.0 + 16 * k as u64), &e).ok()?;
    }
    Some(at)
}

/// Runs a chain whose descriptors are written by `write(ring descriptors
/// start)`, `n` of them; the used len.
fn run_raw(
    d: &mut Dev<'_>,
    q: u16,
    n: u16,
    write: &dyn Fn(&crate::ring::RawRing, u16) -> Option<()>,
) -> Result<u32, String> {
    let mem = d.bus().mem();
    let ring = d.ring(q).ok_or("no ring")?;
    let before = ring.used_idx(mem);
    let head = ring.reserve(n).ok_or("no room in the ring")?;
    write(ring, head).ok_or("memory")?;
    ring.publish(mem, head).ok_or("memory")?;
    d.notify(q);
    if !d.wait_used(q, before.wrapping_add(1)) {
        return Err(format!(
            "request not completed (status {:#x})",
            d.status().bits()
        ));
    }
    let ring = d.ring(q).ok_or("no ring")?;
    Ok(ring.used_elem(mem, before).1)
}

/// Indirect descriptors (§2.7.5.3): the write flag on the descriptor that
/// points at a table is ignored; plain descriptors may precede it.
pub const INDIRECT: Check = Check {
    name: "indirect",
    statements: &[INDIRECT_WRITE_FLAG, INDIRECT_AFTER_CHAIN],
    run: |ctx| {
        let all = [INDIRECT_WRITE_FLAG, INDIRECT_AFTER_CHAIN];
        let want = TransportFeatures::RING_INDIRECT_DESC.bits();
        let Some((mut d, q)) = live(ctx, &all, want) else {
            return;
        };
        if !d.has(TransportFeatures::RING_INDIRECT_DESC) {
            ctx.not_applicable(&all, "VIRTIO_F_RING_INDIRECT_DESC not offered");
            return;
        }
        let mem = ctx.bus().mem();
        // The whole request in one table, behind a descriptor that also
        // carries VIRTQ_DESC_F_WRITE.
        let outcome = (|| {
            let (bufs, p) = d.probe_bufs(1).ok_or("no probe request")?;
            let t = table(&mut d, &bufs).ok_or("out of DMA memory")?;
            let len = (16 * bufs.len()) as u32;
            let len = run_raw(&mut d, q, 1, &|r, h| {
                r.set_desc(mem, h, t, len, ring::INDIRECT | WRITE, 0)
            })?;
            judge(&d, &p, len)
        })();
        ctx.expect(INDIRECT_WRITE_FLAG, outcome.is_ok(), || {
            outcome.clone().err().unwrap_or_default()
        });
        // The first buffer as a plain descriptor, the rest in a table.
        let outcome = (|| {
            let (bufs, p) = d.probe_bufs(2).ok_or("no probe request")?;
            let (first, rest) = bufs.split_first().ok_or("empty request")?;
            let t = table(&mut d, rest).ok_or("out of DMA memory")?;
            let tl = (16 * rest.len()) as u32;
            let f = *first;
            let len = run_raw(&mut d, q, 2, &|r, h| {
                r.set_desc(
                    mem,
                    h,
                    f.addr,
                    f.len,
                    NEXT | if f.write { WRITE } else { 0 },
                    h + 1,
                )?;
                r.set_desc(mem, h + 1, t, tl, ring::INDIRECT, 0)
            })?;
            judge(&d, &p, len)
        })();
        ctx.expect(INDIRECT_AFTER_CHAIN, outcome.is_ok(), || {
            outcome.clone().err().unwrap_or_default()
        });
    },
};

/// Posts a probe, notifies, waits for it; then whether a used buffer
/// notification came (waiting `patience` for it).
fn probe_notified(d: &mut Dev<'_>, q: u16, patience: Patience) -> Result<bool, String> {
    let mem = d.bus().mem();
    let before = d.ring(q).ok_or("no ring")?.used_idx(mem);
    let p = d.post_probe().ok_or("no room for the probe request")?;
    d.notify(p.queue);
    if !d.wait_used(q, before.wrapping_add(1)) {
        return Err(format!(
            "request not completed (status {:#x})",
            d.status().bits()
        ));
    }
    let used = InterruptStatus::USED_BUFFER.bits();
    let bus = d.bus();
    Ok(bus.wait(&mut || d.isr() & used != 0, patience))
}

/// Without VIRTIO_F_EVENT_IDX (§2.7.7): `flags` 0 gets a notification
/// whatever `used_event` says, `flags` 1 (NO_INTERRUPT) gets none.
pub const USED_NOTIFY_FLAGS: Check = Check {
    name: "used-notify-flags",
    statements: &[IGNORE_USED_EVENT, FLAG_SUPPRESSES, NOTIFY_WITHOUT_FLAG],
    run: |ctx| {
        let all = [IGNORE_USED_EVENT, FLAG_SUPPRESSES, NOTIFY_WITHOUT_FLAG];
        let Some((mut d, q)) = live(ctx, &all, 0) else {
            return;
        };
        let mem = ctx.bus().mem();
        // used_event far from the used index: a device that honoured it
        // would stay quiet.
        if let Some(r) = d.ring(q) {
            let _ = r.set_used_event(mem, 0x7777);
            let _ = r.set_avail_flags(mem, 0);
        }
        d.ack();
        match probe_notified(&mut d, q, Patience::Expect) {
            Ok(n) => {
                ctx.expect(NOTIFY_WITHOUT_FLAG, n, || {
                    "no used buffer notification with flags 0".into()
                });
                ctx.expect(IGNORE_USED_EVENT, n, || {
                    "no notification with flags 0 and used_event 0x7777".into()
                });
            }
            Err(e) => ctx.blocked(&[NOTIFY_WITHOUT_FLAG, IGNORE_USED_EVENT], &e),
        }
        d.ack();
        if let Some(r) = d.ring(q) {
            let _ = r.set_avail_flags(mem, 1);
        }
        match probe_notified(&mut d, q, Patience::Quiet) {
            Ok(n) => {
                let rings = d.rings_seen();
                ctx.expect(FLAG_SUPPRESSES, !n, || {
                    format!(
                        "a used buffer notification with VIRTQ_AVAIL_F_NO_INTERRUPT set ({rings})"
                    )
                })
            }
            Err(e) => ctx.blocked(&[FLAG_SUPPRESSES], &e),
        }
    },
};

/// With VIRTIO_F_EVENT_IDX (§2.7.7): the device notifies when the used
/// index passes `used_event` (whatever `flags` says) and not before.
pub const USED_NOTIFY_EVENT_IDX: Check = Check {
    name: "used-notify-event-idx",
    statements: &[IGNORE_FLAG_LOW_BIT, NOTIFY_AT_EVENT, QUIET_BEFORE_EVENT],
    run: |ctx| {
        let all = [IGNORE_FLAG_LOW_BIT, NOTIFY_AT_EVENT, QUIET_BEFORE_EVENT];
        let want = TransportFeatures::RING_EVENT_IDX.bits();
        let Some((mut d, q)) = live(ctx, &all, want) else {
            return;
        };
        if !d.has(TransportFeatures::RING_EVENT_IDX) {
            ctx.not_applicable(&all, "VIRTIO_F_EVENT_IDX not offered");
            return;
        }
        let mem = ctx.bus().mem();
        // used_event = 0 and flags = 1: the first used element (placed at
        // index 0) must be notified.
        if let Some(r) = d.ring(q) {
            let _ = r.set_used_event(mem, 0);
            let _ = r.set_avail_flags(mem, 1);
        }
        d.ack();
        match probe_notified(&mut d, q, Patience::Expect) {
            Ok(n) => {
                ctx.expect(NOTIFY_AT_EVENT, n, || {
                    "no notification when the used index passed used_event".into()
                });
                ctx.expect(IGNORE_FLAG_LOW_BIT, n, || {
                    "no notification with flags 1 and used_event reached".into()
                });
            }
            Err(e) => ctx.blocked(&[NOTIFY_AT_EVENT, IGNORE_FLAG_LOW_BIT], &e),
        }
        d.ack();
        // used_event well ahead: the next element is not notified.
        if let Some(r) = d.ring(q) {
            let _ = r.set_used_event(mem, 8);
            let _ = r.set_avail_flags(mem, 0);
        }
        match probe_notified(&mut d, q, Patience::Quiet) {
            Ok(n) => {
                let rings = d.rings_seen();
                ctx.expect(QUIET_BEFORE_EVENT, !n, || {
                    format!("a notification for used index 1 with used_event 8 ({rings})")
                })
            }
            Err(e) => ctx.blocked(&[QUIET_BEFORE_EVENT], &e),
        }
    },
};

/// The device's own flags in the used ring (§2.7.10), and notifications
/// with nothing available (spurious) change nothing.
pub const AVAIL_SUPPRESSION: Check = Check {
    name: "avail-suppression",
    statements: &[USED_FLAGS_0_OR_1, USED_FLAGS_0, SPURIOUS],
    run: |ctx| {
        let all = [USED_FLAGS_0_OR_1, SPURIOUS];
        let Some((mut d, q)) = live(ctx, &all, 0) else {
            return;
        };
        let mem = ctx.bus().mem();
        let mut flags = Vec::new();
        flags.push(d.ring(q).map_or(0, |r| r.used_flags(mem)));
        for _ in 0..3 {
            d.notify(q);
        }
        d.settle();
        let broke = d.status().contains(DeviceStatus::DEVICE_NEEDS_RESET);
        flags.push(d.ring(q).map_or(0, |r| r.used_flags(mem)));
        let after = probe_notified(&mut d, q, Patience::Quiet);
        flags.push(d.ring(q).map_or(0, |r| r.used_flags(mem)));
        ctx.expect(USED_FLAGS_0_OR_1, flags.iter().all(|f| *f <= 1), || {
            format!("used ring flags {flags:?}")
        });
        match after {
            Ok(_) if !broke => ctx.record(SPURIOUS, Outcome::Pass),
            Ok(_) => ctx.record(
                SPURIOUS,
                Outcome::Fail(
                    "DEVICE_NEEDS_RESET after notifications with nothing available".into(),
                ),
            ),
            Err(e) => ctx.record(
                SPURIOUS,
                Outcome::Fail(format!("after notifications with nothing available: {e}")),
            ),
        }
        // With VIRTIO_F_EVENT_IDX the flags stay 0.
        let want = TransportFeatures::RING_EVENT_IDX.bits();
        let Some((mut d, q)) = live(ctx, &[USED_FLAGS_0], want) else {
            return;
        };
        if !d.has(TransportFeatures::RING_EVENT_IDX) {
            ctx.not_applicable(&[USED_FLAGS_0], "VIRTIO_F_EVENT_IDX not offered");
            return;
        }
        let mut flags = Vec::new();
        flags.push(d.ring(q).map_or(0, |r| r.used_flags(mem)));
        let _ = probe_notified(&mut d, q, Patience::Quiet);
        flags.push(d.ring(q).map_or(0, |r| r.used_flags(mem)));
        ctx.expect(USED_FLAGS_0, flags.iter().all(|f| *f == 0), || {
            format!("used ring flags {flags:?} with VIRTIO_F_EVENT_IDX")
        });
    },
};
