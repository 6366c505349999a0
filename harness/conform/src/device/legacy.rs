//! The legacy interface, device side (§2.2.3, §2.7.2, §2.7.3, §3.1.2,
//! §4.2.4 and the device types' "Legacy Interface" sections): a virtio-mmio
//! version 1 device driven as a legacy driver drives it (no VERSION_1, no
//! FEATURES_OK, `GuestPageSize` and `QueuePFN`, rings in the legacy
//! layout).
//!
//! Native endian: these checks run on x86 (a tiny guest or a host
//! process), whose native byte order is little-endian, so "the native
//! endian of the guest" is judged as little-endian. A big-endian guest
//! would need its own run.
//!
//! A modern (version 2) device has no legacy interface: every statement
//! here is then not applicable (our devices are modern only).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{
    BlkFeatures, ConsoleFeatures, DeviceType, NetFeatures, TransportFeatures,
};
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;

use super::Dev;
use crate::ring::{Buf, bytes};
use crate::{Check, Ctx, Outcome};

const DETECT: &str = "desc:basic/feature-bits/legacy-interface-a-note-on-feature-bits#2";
const OPERATE: &str = "desc:basic/feature-bits/legacy-interface-a-note-on-feature-bits#3";
const LAYOUT: &str = "desc:basic/virtqueues/legacy-interfaces-a-note-on-virtqueue-layout#2";
const ENDIAN: &str = "desc:basic/virtqueues/legacy-interfaces-a-note-on-virtqueue-endianness#1";
const CONFIG_EARLY: &str =
    "desc:general/device-initialization/legacy-interface-device-initialization#2";
const BEFORE_OK: &str =
    "desc:general/device-initialization/legacy-interface-device-initialization#3";
const ANY_LAYOUT: &str = "desc:reserved-features/legacy-interface-reserved-feature-bits#2";

const BLK_ZONED: &str = "device:blk/device-initialization#5";
const BLK_CONFIG: &str =
    "desc:blk/device-configuration-layout/legacy-interface-device-configuration-layout#1";
const BLK_REQUEST: &str = "desc:blk/device-operation/legacy-interface-device-operation#1";
const BLK_FLUSH_OUT: &str = "desc:blk/device-operation/legacy-interface-device-operation#2";
const BLK_NEGOTIATION: &str =
    "desc:blk/device-initialization/legacy-interface-device-initialization#1";
const BLK_STATUS_CACHE: &str =
    "desc:blk/device-initialization/legacy-interface-device-initialization#2";
const BLK_FEATURES_CACHE: &str =
    "desc:blk/device-initialization/legacy-interface-device-initialization#3";

const NET_CONFIG: &str =
    "desc:net/device-configuration-layout/legacy-interface-device-configuration-layout#1";
const NET_HEADER: &str = "desc:net/device-operation/legacy-interface-device-operation#1";

const CONSOLE_CONFIG: &str =
    "desc:console/device-configuration-layout/legacy-interface-device-configuration-layout#1";
const CONSOLE_CONTROL: &str = "desc:console/device-operation/legacy-interface-device-operation#1";

/// Opens the device if it is a legacy (version 1) device, else records
/// the statements not applicable.
fn open_legacy<'a>(ctx: &mut Ctx<'a>, statements: &[&'static str]) -> Option<Dev<'a>> {
    let d = Dev::open(ctx.bus());
    if d.version != 1 {
        ctx.not_applicable(
            statements,
            &format!("no legacy interface (virtio-mmio Version {})", d.version),
        );
        return None;
    }
    Some(d)
}

/// A legacy driver's initialisation (§3.1.2) with a configuration write
/// before the features are read and a request before DRIVER_OK; the
/// request completes through the legacy ring layout.
pub const LEGACY_INIT: Check = Check {
    name: "legacy-init",
    statements: INIT_STATEMENTS,
    run: legacy_init,
};

const INIT_STATEMENTS: &[&str] = &[
    DETECT,
    OPERATE,
    LAYOUT,
    ENDIAN,
    CONFIG_EARLY,
    BEFORE_OK,
    ANY_LAYOUT,
];

fn legacy_init(ctx: &mut Ctx<'_>) {
    let all = INIT_STATEMENTS;
    let Some(mut d) = open_legacy(ctx, all) else {
        return;
    };
    let Some((queues, q)) = d.probe_queues() else {
        ctx.not_applicable(
            all,
            &format!("no probe request for device type {}", d.device_id),
        );
        return;
    };
    // Entropy has no configuration space (§5.4.4).
    let has_config = d.device_type() != Some(DeviceType::Rng);
    // §3.1.2: a legacy driver may write the configuration before it reads
    // the features. Byte 0 is written back as read, which changes nothing
    // whatever the field (a MAC byte, a capacity byte, `cols`).
    let begun = d.begin_legacy(0, |d| {
        if has_config {
            let b = d.config8(0);
            d.bus().regs().write8(regs::CONFIG, b);
        }
    });
    let set_up = begun.and_then(|_| {
        for q in queues {
            d.setup_queue(*q)?;
        }
        Ok(())
    });
    if let Err(e) = set_up {
        ctx.blocked(all, &e);
        return;
    }
    let broke = d
        .status()
        .intersects(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::FAILED);
    let Some(p) = d.post_probe() else {
        ctx.blocked(all, "no room for the request");
        return;
    };
    d.notify(q);
    let early = d.wait_used(q, 1);
    let ok = d.driver_ok();
    // Served when DRIVER_OK is set, without a new notification? Else
    // notified again once live, so the layout is judged even on a device
    // that dropped the notification made before DRIVER_OK.
    let at_ok = !early && ok.is_ok() && d.wait_used(q, 1);
    let served = early
        || at_ok
        || (ok.is_ok() && {
            d.notify(q);
            d.wait_used(q, 1)
        });
    let mem = ctx.bus().mem();
    let (id, len) = d.ring(q).map_or((u32::MAX, 0), |r| r.used_elem(mem, 0));
    let room: u32 = p.writable.iter().map(|(_, n)| n).sum();
    let mut outcomes: Vec<(&'static str, Outcome)> = Vec::new();
    let fail = |what: String| Outcome::Fail(what);
    outcomes.push((
        BEFORE_OK,
        if early {
            Outcome::Pass
        } else if at_ok {
            fail("a request made available and notified before DRIVER_OK was served only once DRIVER_OK was set (a legacy driver that waits for it before DRIVER_OK waits forever)".into())
        } else if served {
            fail("a request made available and notified before DRIVER_OK was served only after DRIVER_OK and a new notification".into())
        } else {
            fail(format!(
                "a request made available before DRIVER_OK was never served ({})",
                d.rings_seen()
            ))
        },
    ));
    outcomes.push((
        LAYOUT,
        if served && id == u32::from(p.head) {
            Outcome::Pass
        } else {
            fail(format!(
                "no used element for head {} in the used ring at {:#x} (legacy layout, QueueAlign {}): {}",
                p.head,
                d.ring(q).map_or(0, |r| r.layout.used_ring().0),
                super::LEGACY_PAGE,
                d.rings_seen()
            ))
        },
    ));
    outcomes.push((
        ENDIAN,
        if served && id == u32::from(p.head) && len <= room {
            Outcome::Pass
        } else {
            fail(format!(
                "used element read little-endian (x86's native order): id {id} len {len}, expected id {} and len at most {room}",
                p.head
            ))
        },
    ));
    outcomes.push((
        CONFIG_EARLY,
        if !has_config {
            Outcome::NotApplicable("no configuration space (entropy device)".into())
        } else if !broke && served {
            Outcome::Pass
        } else {
            fail(format!(
                "after a configuration write before the features were read: status {:#x}, request served: {served}",
                d.status().bits()
            ))
        },
    ));
    // §2.2.3: VERSION_1 was never acknowledged, so the device must work as
    // a legacy device; it did if it served the request.
    outcomes.push((
        DETECT,
        if served && ok.is_ok() {
            Outcome::Pass
        } else {
            fail(format!(
                "without VIRTIO_F_VERSION_1 acknowledged the device did not work as a legacy device: {}",
                ok.err().unwrap_or_else(|| d.rings_seen())
            ))
        },
    ));
    // §6.3: a transitional device offers VIRTIO_F_ANY_LAYOUT.
    let any = TransportFeatures::ANY_LAYOUT.bits();
    outcomes.push((
        ANY_LAYOUT,
        if d.offered & any != 0 {
            Outcome::Pass
        } else {
            fail(format!(
                "features offered {:#x} lack VIRTIO_F_ANY_LAYOUT (bit 27)",
                d.offered
            ))
        },
    ));
    // The umbrella statement: every legacy requirement this check saw.
    let broken: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
        .map(|(s, _)| *s)
        .collect();
    outcomes.push((
        OPERATE,
        if broken.is_empty() {
            Outcome::Pass
        } else {
            fail(format!("broken: {}", broken.join(", ")))
        },
    ));
    for (s, o) in outcomes {
        ctx.record(s, o);
    }
}

/// `VIRTIO_BLK_T_IN` and its statuses (§5.2.6).
const BLK_T_IN: u32 = 0;
const BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_FLUSH_OUT`, the legacy synonym of FLUSH (§5.2.6.3).
const BLK_T_FLUSH_OUT: u32 = 5;
const BLK_S_OK: u8 = 0;
const BLK_S_IOERR: u8 = 1;
/// `writeback` in `struct virtio_blk_config` (§5.2.4).
const WRITEBACK_AT: u64 = 32;

/// A legacy block device: no ZONED, the cache mode left alone by status
/// and feature writes, configuration and request header in native
/// (little) endian.
pub const LEGACY_BLK: Check = Check {
    name: "legacy-blk",
    statements: BLK_STATEMENTS,
    run: legacy_blk,
};

const BLK_STATEMENTS: &[&str] = &[
    BLK_ZONED,
    BLK_CONFIG,
    BLK_REQUEST,
    BLK_NEGOTIATION,
    BLK_STATUS_CACHE,
    BLK_FEATURES_CACHE,
    BLK_FLUSH_OUT,
];

fn legacy_blk(ctx: &mut Ctx<'_>) {
    let all = BLK_STATEMENTS;
    let Some(mut d) = open_legacy(ctx, all) else {
        return;
    };
    if d.device_type() != Some(DeviceType::Blk) {
        ctx.not_applicable(all, "not a block device");
        return;
    }
    let zoned = BlkFeatures::ZONED.bits();
    ctx.expect(BLK_ZONED, d.offered & zoned == 0, || {
        format!(
            "features offered {:#x} include VIRTIO_BLK_F_ZONED",
            d.offered
        )
    });
    // The cache mode, seen through `writeback` (with CONFIG_WCE, §5.2.4),
    // before and after each status and feature write a legacy driver
    // makes. CONFIG_WCE is acknowledged without FLUSH (the example of
    // §5.2.5.3), so even DRIVER_OK must leave it alone.
    let wce = BlkFeatures::CONFIG_WCE.bits();
    let cache = if d.offered & wce == 0 {
        None
    } else {
        let mut first = None;
        let r = d.begin_legacy(wce, |d| first = Some(d.config8(WRITEBACK_AT)));
        let first = first.unwrap_or(0);
        // No status write between the features and this read (the queue
        // set-up writes queue registers only): a change is the features'.
        let set_up = r.and_then(|_| d.setup_queue(0));
        let after_features = d.config8(WRITEBACK_AT);
        d.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let after_status = d.config8(WRITEBACK_AT);
        let ok = set_up.and_then(|_| d.driver_ok());
        let after_ok = d.config8(WRITEBACK_AT);
        Some((ok, [first, after_features, after_status, after_ok]))
    };
    match &cache {
        None => ctx.not_applicable(
            &[BLK_NEGOTIATION, BLK_STATUS_CACHE, BLK_FEATURES_CACHE],
            "VIRTIO_BLK_F_CONFIG_WCE not offered: the cache mode is not in the configuration space",
        ),
        Some((Err(e), _)) => {
            ctx.blocked(&[BLK_NEGOTIATION, BLK_STATUS_CACHE, BLK_FEATURES_CACHE], e)
        }
        Some((Ok(()), [first, feat, status, ok])) => {
            let seen = || {
                format!(
                    "writeback {first} after DRIVER, {feat} after CONFIG_WCE (without FLUSH) was written and the queue set up, {status} after a status write, {ok} after DRIVER_OK"
                )
            };
            ctx.expect(BLK_FEATURES_CACHE, feat == first, seen);
            // Each status write judged against the value just before it.
            ctx.expect(BLK_STATUS_CACHE, status == feat && ok == status, seen);
            ctx.expect(
                BLK_NEGOTIATION,
                feat == first && status == first && ok == first,
                seen,
            );
        }
    }
    // Capacity and sector, both little-endian here: the last sector reads,
    // the one after it is out of range (§5.2.6.1).
    let ends = [BLK_CONFIG, BLK_REQUEST];
    let live = match cache {
        Some((Ok(()), _)) => Ok(()),
        _ => d
            .begin_legacy(0, |_| {})
            .and_then(|_| d.setup_queue(0))
            .and_then(|_| d.driver_ok()),
    };
    if let Err(e) = live {
        ctx.blocked(&ends, &e);
        return;
    }
    let capacity = u64::from_le_bytes(core::array::from_fn(|i| d.config8(i as u64)));
    if capacity == 0 {
        ctx.blocked(&ends, "capacity 0: no sector to read");
        return;
    }
    let last = d.blk_request(BLK_T_IN, capacity - 1, &[], 512);
    let past = d.blk_request(BLK_T_IN, capacity, &[], 512);
    match (last, past) {
        (Ok(l), Ok(p)) => {
            let ok = l.status == BLK_S_OK && p.status == BLK_S_IOERR;
            let seen = || {
                format!(
                    "capacity {capacity} read little-endian: sector {} status {}, sector {capacity} status {}",
                    capacity - 1,
                    l.status,
                    p.status
                )
            };
            ctx.expect(BLK_CONFIG, ok, seen);
            ctx.expect(BLK_REQUEST, ok, seen);
        }
        (Err(e), _) | (_, Err(e)) => ctx.blocked(&ends, &e),
    }
    legacy_flush_out(ctx, &mut d);
}

/// FLUSH_OUT is answered as FLUSH is (§5.2.6.3): each sent once, without
/// data, in a session that negotiated VIRTIO_BLK_F_FLUSH where it is
/// offered; the two statuses must agree.
fn legacy_flush_out(ctx: &mut Ctx<'_>, d: &mut Dev<'_>) {
    let flush = d.offered & BlkFeatures::FLUSH.bits();
    let live = d
        .begin_legacy(flush, |_| {})
        .and_then(|_| d.setup_queue(0))
        .and_then(|_| d.driver_ok());
    if let Err(e) = live {
        ctx.blocked(&[BLK_FLUSH_OUT], &e);
        return;
    }
    let f = d.blk_request(BLK_T_FLUSH, 0, &[], 0);
    let o = d.blk_request(BLK_T_FLUSH_OUT, 0, &[], 0);
    match (f, o) {
        (Ok(f), Ok(o)) => ctx.expect(BLK_FLUSH_OUT, f.status == o.status, || {
            format!(
                "FLUSH status {}, FLUSH_OUT status {} (VIRTIO_BLK_F_FLUSH {})",
                f.status,
                o.status,
                if flush != 0 {
                    "negotiated"
                } else {
                    "not offered"
                }
            )
        }),
        (Err(e), _) | (_, Err(e)) => ctx.blocked(&[BLK_FLUSH_OUT], &e),
    }
}

/// `VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE` (§5.1.4).
const NET_STATUS_BITS: u16 = 3;
/// The legacy header without MRG_RXBUF (§5.1.6).
const LEGACY_HDR: usize = 10;
/// A receive buffer: the header and a full Ethernet frame.
const RX_BUF: u32 = LEGACY_HDR as u32 + 1514;

/// A legacy network device: `status` and `max_virtqueue_pairs` in native
/// (little) endian, and frames behind the 10-byte legacy header.
pub const LEGACY_NET: Check = Check {
    name: "legacy-net",
    statements: &[NET_CONFIG, NET_HEADER],
    run: legacy_net,
};

fn legacy_net(ctx: &mut Ctx<'_>) {
    let all = [NET_CONFIG, NET_HEADER];
    let Some(mut d) = open_legacy(ctx, &all) else {
        return;
    };
    if d.device_type() != Some(DeviceType::Net) {
        ctx.not_applicable(&all, "not a network device");
        return;
    }
    let status_bit = NetFeatures::STATUS.bits();
    let mq = NetFeatures::MQ.bits();
    // MQ is not accepted (it needs CTRL_VQ, §5.1.3.1); its field is read
    // when offered (§2.5.1 lets a driver read it then).
    let want = d.offered & status_bit;
    let has_mq = d.offered & mq != 0;
    let r = d
        .begin_legacy(want, |_| {})
        .and_then(|_| d.setup_queue(0))
        .and_then(|_| d.setup_queue(1))
        .and_then(|_| d.driver_ok());
    if let Err(e) = r {
        ctx.blocked(&all, &e);
        return;
    }
    let le16 = |d: &Dev<'_>, at: u64| u16::from_le_bytes([d.config8(at), d.config8(at + 1)]);
    if want == 0 && !has_mq {
        ctx.not_applicable(
            &[NET_CONFIG],
            "neither VIRTIO_NET_F_STATUS nor VIRTIO_NET_F_MQ offered",
        );
    } else {
        let status = le16(&d, 6);
        let pairs = le16(&d, 8);
        let status_ok = want == 0 || status & !NET_STATUS_BITS == 0;
        // Byte-swapped, a small count reads as a multiple of 256: the last
        // transmit queue it implies (2 × pairs - 1) must exist.
        let last_tx = u32::from(pairs).saturating_mul(2).saturating_sub(1);
        let pairs_ok = !has_mq || {
            d.w32(regs::QUEUE_SEL, last_tx);
            (1..=0x8000).contains(&pairs) && d.r32(regs::QUEUE_NUM_MAX) > 0
        };
        ctx.expect(NET_CONFIG, status_ok && pairs_ok, || {
            format!(
                "read little-endian: status {status:#x} (only bits {NET_STATUS_BITS:#x} defined), max_virtqueue_pairs {pairs} (queue {last_tx} must exist)"
            )
        });
    }
    // A frame sent behind a zeroed 10-byte header; where the device sends
    // it back (QEMU's socket netdev to itself), it arrives behind a
    // 10-byte header with the frame intact (behind 12 bytes, it is the
    // modern header: the breach).
    let got = legacy_echo(&mut d);
    match got {
        Ok(Some((hdr, shift, frame, sent))) => {
            let flags = hdr[0];
            let gso = hdr[1];
            let ok = shift == 0 && frame == sent && flags & !2 == 0 && gso == 0;
            ctx.expect(NET_HEADER, ok, || {
                format!(
                    "received header {hdr:02x?} (flags {flags:#x}, gso_type {gso}), the frame {} bytes after the 10-byte header, intact: {}",
                    shift,
                    frame == sent
                )
            });
        }
        Ok(None) => ctx.not_observable(
            &[NET_HEADER],
            "the frame sent did not come back (the backend does not loop frames back)",
        ),
        Err(e) => ctx.blocked(&[NET_HEADER], &e),
    }
}

/// The received header, how far past it the frame began (0, or 2 behind a
/// modern 12-byte header), the frame, and the frame sent.
type Echo = Option<([u8; LEGACY_HDR], usize, Vec<u8>, Vec<u8>)>;

fn legacy_echo(d: &mut Dev<'_>) -> Result<Echo, String> {
    let mem = d.bus().mem();
    let mut posted = Vec::new();
    // The header in a descriptor of its own (§5.1.9.8, right whether or
    // not ANY_LAYOUT is negotiated), the frame in the next.
    for _ in 0..4 {
        let a = d.buffer(RX_BUF, None).ok_or("out of DMA memory")?;
        let frame_at = GuestAddress(a.0 + LEGACY_HDR as u64);
        let ring = d.ring(0).ok_or("receiveq not set up")?;
        let h = ring
            .chain(
                mem,
                &[
                    Buf {
                        addr: a,
                        len: LEGACY_HDR as u32,
                        write: true,
                    },
                    Buf {
                        addr: frame_at,
                        len: RX_BUF - LEGACY_HDR as u32,
                        write: true,
                    },
                ],
            )
            .ok_or("no room in the receiveq")?;
        ring.publish(mem, h).ok_or("no room in the receiveq")?;
        posted.push((h, a));
    }
    d.notify(0);
    let (bufs, p) = d.probe_bufs(1).ok_or("out of DMA memory")?;
    let all: Vec<u8> = p.readable.iter().flat_map(|(_, c)| c.clone()).collect();
    let sent = all[LEGACY_HDR..].to_vec();
    let ring = d.ring(1).ok_or("transmitq not set up")?;
    let h = ring.chain(mem, &bufs).ok_or("no room in the transmitq")?;
    ring.publish(mem, h).ok_or("no room in the transmitq")?;
    d.notify(1);
    if !d.wait_used(1, 1) {
        return Err(format!(
            "the frame was not transmitted ({})",
            d.rings_seen()
        ));
    }
    let mut seen = 0u16;
    loop {
        let ring = d.ring(0).ok_or("receiveq not set up")?.clone();
        let mut more = || ring.used_idx(mem) != seen;
        if !d.bus().wait(&mut more, crate::Patience::Expect) {
            return Ok(None);
        }
        while ring.used_idx(mem) != seen && usize::from(seen) < posted.len() {
            let (id, len) = ring.used_elem(mem, seen);
            seen += 1;
            let Some((_, a)) = posted.iter().find(|(h, _)| u32::from(*h) == id) else {
                return Err(format!("receiveq: used id {id} is not a posted buffer"));
            };
            let len = (len as usize).min(RX_BUF as usize);
            // The two buffers are adjacent: one view of both.
            let b = bytes(mem, *a, len);
            for shift in [0, 2] {
                let at = LEGACY_HDR + shift;
                let Some(frame) = b.get(at..at + sent.len()) else {
                    continue;
                };
                // The probe frame's source address and type are ours.
                if frame[6..12] == sent[6..12] && frame[12..14] == sent[12..14] {
                    let mut hdr = [0u8; LEGACY_HDR];
                    hdr.copy_from_slice(&b[..LEGACY_HDR]);
                    return Ok(Some((hdr, shift, frame.to_vec(), sent)));
                }
            }
        }
        if usize::from(seen) >= posted.len() {
            return Ok(None);
        }
    }
}

/// A legacy console: `max_nr_ports` and the control messages in native
/// (little) endian.
pub const LEGACY_CONSOLE: Check = Check {
    name: "legacy-console",
    statements: &[CONSOLE_CONFIG, CONSOLE_CONTROL],
    run: legacy_console,
};

fn legacy_console(ctx: &mut Ctx<'_>) {
    let all = [CONSOLE_CONFIG, CONSOLE_CONTROL];
    let Some(mut d) = open_legacy(ctx, &all) else {
        return;
    };
    if d.device_type() != Some(DeviceType::Console) {
        ctx.not_applicable(&all, "not a console");
        return;
    }
    if d.offered & ConsoleFeatures::MULTIPORT.bits() == 0 {
        ctx.not_applicable(
            &all,
            "VIRTIO_CONSOLE_F_MULTIPORT not offered: no max_nr_ports, no control messages",
        );
        return;
    }
    let (max, messages) = match super::types::multiport_messages(&mut d) {
        Ok(m) => m,
        Err(e) => {
            ctx.blocked(&all, &e);
            return;
        }
    };
    // Ports are numbered from 0 to max_nr_ports - 1 in 32-bit ids: a
    // byte-swapped count of a few ports would be in the millions.
    ctx.expect(CONSOLE_CONFIG, (1..=0xffff).contains(&max), || {
        format!("max_nr_ports read little-endian: {max}")
    });
    // Control events are 0 to 7 (§5.3.6.2), ids below max_nr_ports.
    let bad: Vec<String> = messages
        .iter()
        .filter(|(id, event)| *event > 7 || *id >= max)
        .map(|(id, event)| format!("id {id} event {event}"))
        .collect();
    if messages.is_empty() {
        ctx.not_observable(
            &[CONSOLE_CONTROL],
            "the device sent no control message after DEVICE_READY",
        );
    } else {
        ctx.expect(CONSOLE_CONTROL, bad.is_empty(), || {
            format!(
                "control messages read little-endian (max_nr_ports {max}): {}",
                bad.join("; ")
            )
        });
    }
}

const NOTIFY_ON_EMPTY: &str = "desc:reserved-features/legacy-interface-reserved-feature-bits#1";

/// With VIRTIO_F_NOTIFY_ON_EMPTY negotiated, a device that runs out of
/// available buffers notifies even under `VIRTQ_AVAIL_F_NO_INTERRUPT`
/// (§6.3 legacy interface).
pub const LEGACY_NOTIFY_ON_EMPTY: Check = Check {
    name: "legacy-notify-on-empty",
    statements: &[NOTIFY_ON_EMPTY],
    run: legacy_notify_on_empty,
};

fn legacy_notify_on_empty(ctx: &mut Ctx<'_>) {
    let all = [NOTIFY_ON_EMPTY];
    let Some(mut d) = open_legacy(ctx, &all) else {
        return;
    };
    let Some((queues, q)) = d.probe_queues() else {
        ctx.not_applicable(&all, "no probe request for this device type");
        return;
    };
    let empty = TransportFeatures::NOTIFY_ON_EMPTY.bits();
    if d.offered & empty == 0 {
        ctx.not_applicable(&all, "VIRTIO_F_NOTIFY_ON_EMPTY not offered");
        return;
    }
    let r = d.begin_legacy(empty, |_| {}).and_then(|_| {
        for q in queues {
            d.setup_queue(*q)?;
        }
        d.driver_ok()
    });
    if let Err(e) = r {
        ctx.blocked(&all, &e);
        return;
    }
    let mem = ctx.bus().mem();
    // VIRTQ_AVAIL_F_NO_INTERRUPT on every queue the probe uses.
    for q in queues {
        if let Some(ring) = d.ring(*q) {
            let _ = ring.set_avail_flags(mem, 1);
        }
    }
    d.ack();
    let Some(_) = d.post_probe() else {
        ctx.blocked(&all, "no room for the request");
        return;
    };
    d.notify(q);
    if !d.wait_used(q, 1) {
        ctx.blocked(&all, "the request was not completed");
        return;
    }
    // The queue is empty now: the notification must have come (or come
    // shortly after the used entry).
    let mut isr = 0;
    let mut notified = || {
        isr |= d.bus().regs().read32(regs::INTERRUPT_STATUS);
        isr & 1 != 0
    };
    let seen = d.bus().wait(&mut notified, crate::Patience::Expect);
    ctx.expect(NOTIFY_ON_EMPTY, seen, || {
        format!(
            "queue {q} ran out of buffers under VIRTQ_AVAIL_F_NO_INTERRUPT with VIRTIO_F_NOTIFY_ON_EMPTY negotiated: InterruptStatus {isr:#x}"
        )
    });
}

const MAC_TABLE: &str = "desc:net/device-operation/control-virtqueue/setting-mac-address-filtering/legacy-interface-setting-mac-address-filtering#1";

/// VIRTIO_NET_CTRL_MAC (1), VIRTIO_NET_CTRL_MAC_TABLE_SET (0) and
/// VIRTIO_NET_OK (§5.1.6.5.2).
const CTRL_MAC: u8 = 1;
const MAC_TABLE_SET: u8 = 0;
const NET_OK: u8 = 0;

/// A legacy network device reads the MAC table's `entries` in native
/// (little) endian: a table of one unicast address is taken (read
/// big-endian it would claim 16 million).
pub const LEGACY_NET_MAC_TABLE: Check = Check {
    name: "legacy-net-mac-table",
    statements: &[MAC_TABLE],
    run: legacy_net_mac_table,
};

fn legacy_net_mac_table(ctx: &mut Ctx<'_>) {
    let all = [MAC_TABLE];
    let Some(mut d) = open_legacy(ctx, &all) else {
        return;
    };
    if d.device_type() != Some(DeviceType::Net) {
        ctx.not_applicable(&all, "not a network device");
        return;
    }
    let need = NetFeatures::CTRL_VQ.bits() | NetFeatures::CTRL_RX.bits();
    if d.offered & need != need {
        ctx.not_applicable(
            &all,
            "VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_CTRL_RX not both offered",
        );
        return;
    }
    // Without MQ the control queue is queue 2 (§5.1.2).
    let r = d
        .begin_legacy(need, |_| {})
        .and_then(|_| d.setup_queue(0))
        .and_then(|_| d.setup_queue(1))
        .and_then(|_| d.setup_queue(2))
        .and_then(|_| d.driver_ok());
    if let Err(e) = r {
        ctx.blocked(&all, &e);
        return;
    }
    // The legacy framing (§5.1.9.8), right whether or not ANY_LAYOUT is
    // negotiated: class and command, the unicast table, the multicast
    // table, the ack, each in a descriptor of its own.
    let mut unicast = alloc::vec![0u8; 4 + 6];
    unicast[0..4].copy_from_slice(&1u32.to_le_bytes());
    unicast[4..10].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
    let multicast = 0u32.to_le_bytes().to_vec();
    let ack = match mac_table_set(&mut d, &unicast, &multicast) {
        Ok(a) => a,
        Err(e) => {
            ctx.blocked(&all, &e);
            return;
        }
    };
    ctx.expect(MAC_TABLE, ack == NET_OK, || {
        format!("MAC_TABLE_SET with one unicast entry (entries 1, little-endian): ack {ack}")
    });
}

const PAIRS_NATIVE: &str = "desc:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode/legacy-interface-automatic-receive-steering-in-multiqueue-mode#1";

/// VIRTIO_NET_CTRL_MQ (4) and VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET (0)
/// (§5.1.9.5.6).
const CTRL_MQ: u8 = 4;
const VQ_PAIRS_SET: u8 = 0;
/// `max_virtqueue_pairs` in `struct virtio_net_config` (§5.1.4).
const MAX_PAIRS_AT: u64 = 8;

/// A legacy network device with VIRTIO_NET_F_MQ reads VQ_PAIRS_SET's
/// `virtqueue_pairs` in native (little) endian (§5.1.9.5.6.3): every
/// queue pair, then one, are taken (read big-endian, 1 would be 256).
pub const LEGACY_NET_MQ: Check = Check {
    name: "legacy-net-mq",
    statements: &[PAIRS_NATIVE],
    run: legacy_net_mq,
};

fn legacy_net_mq(ctx: &mut Ctx<'_>) {
    let all = [PAIRS_NATIVE];
    let Some(mut d) = open_legacy(ctx, &all) else {
        return;
    };
    if d.device_type() != Some(DeviceType::Net) {
        ctx.not_applicable(&all, "not a network device");
        return;
    }
    let need = NetFeatures::CTRL_VQ.bits() | NetFeatures::MQ.bits();
    if d.offered & need != need {
        ctx.not_applicable(
            &all,
            "VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_MQ not both offered",
        );
        return;
    }
    let mut pairs = 0u16;
    let r = d.begin_legacy(need, |d| {
        pairs = u16::from_le_bytes([d.config8(MAX_PAIRS_AT), d.config8(MAX_PAIRS_AT + 1)]);
    });
    // The receive and transmit queues of every pair, then the control
    // queue after them (§5.1.2): queue 2N must fit 16 bits.
    let ctrl = u16::try_from(2 * u32::from(pairs)).ok();
    let r = r.and_then(|_| {
        let ctrl = match ctrl {
            Some(c) if pairs >= 1 => c,
            _ => {
                return Err(format!(
                    "max_virtqueue_pairs reads {pairs} (little-endian): no control queue index"
                ));
            }
        };
        for q in 0..=ctrl {
            d.setup_queue(q)?;
        }
        d.driver_ok()
    });
    let (Ok(()), Some(ctrl)) = (&r, ctrl) else {
        ctx.blocked(&all, r.err().as_deref().unwrap_or("no control queue"));
        return;
    };
    let mut acks = Vec::new();
    for n in [pairs, 1] {
        match ctrl_command(
            &mut d,
            ctrl,
            &[&[CTRL_MQ, VQ_PAIRS_SET][..], &n.to_le_bytes()],
        ) {
            Ok(a) => acks.push((n, a)),
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        }
    }
    ctx.expect(PAIRS_NATIVE, acks.iter().all(|(_, a)| *a == NET_OK), || {
        format!("VQ_PAIRS_SET (little-endian) of max_virtqueue_pairs {pairs} then 1: acks {acks:?}")
    });
}

fn mac_table_set(d: &mut Dev<'_>, unicast: &[u8], multicast: &[u8]) -> Result<u8, String> {
    ctrl_command(d, 2, &[&[CTRL_MAC, MAC_TABLE_SET][..], unicast, multicast])
}

/// One control command on queue `ctrl` in the legacy framing (§5.1.9.8:
/// each part and the ack in a descriptor of its own); its ack.
fn ctrl_command(d: &mut Dev<'_>, ctrl: u16, parts: &[&[u8]]) -> Result<u8, String> {
    let mem = d.bus().mem();
    let mut bufs = Vec::new();
    for part in parts.iter().copied() {
        let len = part.len() as u32;
        let a = d.buffer(len, Some(part)).ok_or("out of DMA memory")?;
        bufs.push(Buf {
            addr: a,
            len,
            write: false,
        });
    }
    let ack = d.buffer(1, None).ok_or("out of DMA memory")?;
    bufs.push(Buf {
        addr: ack,
        len: 1,
        write: true,
    });
    let ring = d.ring(ctrl).ok_or("control queue not set up")?;
    let h = ring
        .chain(mem, &bufs)
        .ok_or("no room in the control ring")?;
    ring.publish(mem, h).ok_or("no room in the control ring")?;
    let want = ring.avail_idx;
    d.notify(ctrl);
    if !d.wait_used(ctrl, want) {
        return Err(format!(
            "control command {:?} was not completed; {}",
            parts.first().map(|p| &p[..p.len().min(2)]),
            d.rings_seen()
        ));
    }
    Ok(bytes(mem, ack, 1)[0])
}
