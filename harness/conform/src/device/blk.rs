//! Block device requirements (§5.2): configuration, read-only devices,
//! discard and write zeroes, and request types the device does not offer.
//!
//! The checks send requests of their own on queue 0 ([`Dev::blk_request`])
//! and read back what the device wrote. They write only to sectors 8 and
//! up, and put back what they overwrote where they can.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{BlkFeatures, DeviceType};

use super::{ALL, Dev};
use crate::ring::{Buf, bytes};
use crate::{Check, Ctx, Outcome, Path};

const FLUSH_OFFERED: &str = "device:blk/device-initialization#1";
const WRITEBACK_ZERO: &str = "device:blk/device-initialization#2";
const PADDING_ZERO: &str = "device:blk/device-initialization#3";
const READ_ONLY_WRITE: &str = "device:blk/device-operation#2";
const UNKNOWN_FLAG: &str = "device:blk/device-operation#3";
const DISCARD_UNMAP: &str = "device:blk/device-operation#4";
const ZEROES_READ_ZERO: &str = "device:blk/device-operation#5";
const LIFETIME_NOT_OFFERED: &str = "device:blk/device-operation#10";
const LIFETIME_VALUES: &str = "device:blk/device-operation#11";
const ZONED_REJECTED: &str = "device:blk/device-operation#12";
const STABLE_COMMITTED: &str = "device:blk/device-operation#8";

/// Request types (§5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_LIFETIME: u32 = 10;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// The zoned request types (§5.2.6, zoned block devices).
const T_ZONES: [(u32, &str); 7] = [
    (15, "ZONE_APPEND"),
    (16, "ZONE_REPORT"),
    (18, "ZONE_OPEN"),
    (20, "ZONE_CLOSE"),
    (22, "ZONE_FINISH"),
    (24, "ZONE_RESET"),
    (26, "ZONE_RESET_ALL"),
];
/// Status values (§5.2.6).
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`, the one defined segment flag.
const FLAG_UNMAP: u32 = 1;

/// Configuration offsets (§5.2.4).
const CFG_WRITEBACK: u64 = 32;
const CFG_UNUSED0: u64 = 33;
const CFG_UNUSED1: u64 = 57;

/// The sector the writing checks use (the probe reads sector 0).
const SCRATCH: u64 = 8;

/// What a block request came back with.
#[derive(Clone, Debug)]
pub struct BlkReply {
    /// The status byte (the last byte of the chain).
    pub status: u8,
    /// The device-writable data before the status byte.
    pub data: Vec<u8>,
    /// The used element's length.
    pub len: u32,
}

impl Dev<'_> {
    /// One block request on queue 0 of a live device: the header
    /// (`kind`, `sector`), `out` as device-readable data, `in_len`
    /// device-writable bytes, and the status byte; waits for it.
    pub fn blk_request(
        &mut self,
        kind: u32,
        sector: u64,
        out: &[u8],
        in_len: u32,
    ) -> Result<BlkReply, String> {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        let header = self.buffer(16, Some(&h)).ok_or("out of DMA memory")?;
        let mut bufs = alloc::vec![Buf {
            addr: header,
            len: 16,
            write: false,
        }];
        if !out.is_empty() {
            let len = u32::try_from(out.len()).map_err(|_| "request too long")?;
            let a = self.buffer(len, Some(out)).ok_or("out of DMA memory")?;
            bufs.push(Buf {
                addr: a,
                len,
                write: false,
            });
        }
        let data = if in_len > 0 {
            let a = self.buffer(in_len, None).ok_or("out of DMA memory")?;
            bufs.push(Buf {
                addr: a,
                len: in_len,
                write: true,
            });
            Some(a)
        } else {
            None
        };
        let status = self.buffer(1, None).ok_or("out of DMA memory")?;
        bufs.push(Buf {
            addr: status,
            len: 1,
            write: true,
        });
        let mem = self.bus().mem();
        let ring = self.ring(0).ok_or("queue 0 is not set up")?;
        let head = ring.chain(mem, &bufs).ok_or("no room in the ring")?;
        ring.publish(mem, head).ok_or("no room in the ring")?;
        let want = ring.avail_idx;
        self.notify(0);
        if !self.wait_used(0, want) {
            return Err(format!(
                "request type {kind} (sector {sector}) was not completed; {}",
                self.rings_seen()
            ));
        }
        let (_, len) = self.ring(0).map_or((0, 0), |r| r.used_elem(mem, want - 1));
        Ok(BlkReply {
            status: bytes(mem, status, 1)[0],
            data: data.map_or_else(Vec::new, |a| bytes(mem, a, in_len as usize)),
            len,
        })
    }
}

/// Opens a block device, or records `why` not applicable; `None` for
/// other device types and legacy devices.
fn open_blk<'a>(ctx: &mut Ctx<'a>, statements: &[&'static str]) -> Option<Dev<'a>> {
    super::open_type(ctx, statements, DeviceType::Blk, "block")
}

/// Brings `d` live with `want` and queue 0, or records the failure for
/// `statements`.
fn go_live(ctx: &mut Ctx<'_>, d: &mut Dev<'_>, statements: &[&'static str], want: u64) -> bool {
    match d.live(want, true) {
        Ok(_) => true,
        Err(e) => {
            ctx.blocked(statements, &e);
            false
        }
    }
}

fn offers(d: &Dev<'_>, f: BlkFeatures) -> bool {
    d.offered & f.bits() != 0
}

/// FLUSH is offered with CONFIG_WCE (and should always be); padding
/// fields read zero (§5.2.5).
pub const CONFIG: Check = Check {
    name: "blk-config",
    statements: &[FLUSH_OFFERED, PADDING_ZERO],
    run: |ctx| {
        let all = [FLUSH_OFFERED, PADDING_ZERO];
        let Some(mut d) = open_blk(ctx, &all) else {
            return;
        };
        let flush = offers(&d, BlkFeatures::FLUSH);
        let wce = offers(&d, BlkFeatures::CONFIG_WCE);
        let outcome = if wce && !flush {
            Outcome::Fail("VIRTIO_BLK_F_CONFIG_WCE offered without VIRTIO_BLK_F_FLUSH".into())
        } else if !flush {
            Outcome::Warn("VIRTIO_BLK_F_FLUSH not offered".into())
        } else {
            Outcome::Pass
        };
        ctx.record(FLUSH_OFFERED, outcome);
        if let Err(e) = d.begin(ALL) {
            ctx.blocked(&[PADDING_ZERO], &e);
            return;
        }
        // A padding field is only there when a field after it is: the
        // configuration space ends with the last field a feature offered
        // places (virtio-mmio does not say its length; a read past the end
        // is undefined). unused0 (33) comes before num_queues (MQ) and the
        // discard fields; unused1 (57..60) before the secure erase fields.
        let mut fields = Vec::new();
        if [
            BlkFeatures::MQ,
            BlkFeatures::DISCARD,
            BlkFeatures::WRITE_ZEROES,
        ]
        .into_iter()
        .any(|f| offers(&d, f))
        {
            fields.push(("unused0", d.config8(CFG_UNUSED0)));
        }
        if offers(&d, BlkFeatures::SECURE_ERASE) || offers(&d, BlkFeatures::ZONED) {
            for k in 0..3 {
                fields.push(("unused1", d.config8(CFG_UNUSED1 + k)));
            }
        }
        if fields.is_empty() {
            ctx.not_applicable(
                &[PADDING_ZERO],
                "no field after unused0 or unused1 is offered (MQ, DISCARD, WRITE_ZEROES; SECURE_ERASE, ZONED)",
            );
            return;
        }
        ctx.expect(PADDING_ZERO, fields.iter().all(|(_, v)| *v == 0), || {
            format!("padding bytes read {fields:?}")
        });
    },
};

/// With CONFIG_WCE negotiated and FLUSH not, writeback reads 0 (§5.2.5).
pub const WRITEBACK_WITHOUT_FLUSH: Check = Check {
    name: "blk-writeback-without-flush",
    statements: &[WRITEBACK_ZERO],
    run: |ctx| {
        let Some(mut d) = open_blk(ctx, &[WRITEBACK_ZERO]) else {
            return;
        };
        if !offers(&d, BlkFeatures::CONFIG_WCE) {
            ctx.not_applicable(&[WRITEBACK_ZERO], "VIRTIO_BLK_F_CONFIG_WCE not offered");
            return;
        }
        if d.bus().path() == Path::VhostUser {
            ctx.not_observable(
                &[WRITEBACK_ZERO],
                "our vhost-user frontend reads the backend's configuration once, before features are negotiated (as QEMU's vhost-user-blk does)",
            );
            return;
        }
        let want = ALL & !BlkFeatures::FLUSH.bits();
        if let Err(e) = d.begin(want) {
            ctx.blocked(&[WRITEBACK_ZERO], &e);
            return;
        }
        let wb = d.config8(CFG_WRITEBACK);
        ctx.expect(WRITEBACK_ZERO, wb == 0, || {
            format!("writeback reads {wb} with CONFIG_WCE negotiated and FLUSH not")
        });
    },
};

/// A write to a read-only device fails with IOERR and writes nothing
/// (§5.2.6.2).
pub const READ_ONLY: Check = Check {
    name: "blk-read-only",
    statements: &[READ_ONLY_WRITE],
    run: |ctx| {
        let Some(mut d) = open_blk(ctx, &[READ_ONLY_WRITE]) else {
            return;
        };
        if !offers(&d, BlkFeatures::RO) {
            ctx.not_applicable(&[READ_ONLY_WRITE], "VIRTIO_BLK_F_RO not offered");
            return;
        }
        if !go_live(ctx, &mut d, &[READ_ONLY_WRITE], ALL) {
            return;
        }
        let run = |d: &mut Dev<'_>| -> Result<(bool, String), String> {
            let read = |d: &mut Dev<'_>| -> Result<BlkReply, String> {
                let r = d.blk_request(T_IN, SCRATCH, &[], 512)?;
                if r.status != S_OK {
                    return Err(format!(
                        "a read of sector {SCRATCH} failed with status {}",
                        r.status
                    ));
                }
                Ok(r)
            };
            let before = read(d)?;
            let pattern: Vec<u8> = before.data.iter().map(|b| !b).collect();
            let w = d.blk_request(T_OUT, SCRATCH, &pattern, 0)?;
            let after = read(d)?;
            let unchanged = after.data == before.data;
            Ok((
                w.status == S_IOERR && unchanged,
                format!(
                    "write status {}, sector {} after the write",
                    w.status,
                    if unchanged { "unchanged" } else { "changed" }
                ),
            ))
        };
        match run(&mut d) {
            Ok((ok, seen)) => ctx.expect(READ_ONLY_WRITE, ok, || seen),
            Err(e) => ctx.blocked(&[READ_ONLY_WRITE], &e),
        }
    },
};

/// One `virtio_blk_discard_write_zeroes` segment.
fn segment(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// Discard and write zeroes with an unknown flag, and discard with UNMAP,
/// complete UNSUPP (§5.2.6.2).
pub const SEGMENT_FLAGS: Check = Check {
    name: "blk-segment-flags",
    statements: &[UNKNOWN_FLAG, DISCARD_UNMAP],
    run: |ctx| {
        let all = [UNKNOWN_FLAG, DISCARD_UNMAP];
        let Some(mut d) = open_blk(ctx, &all) else {
            return;
        };
        let discard = offers(&d, BlkFeatures::DISCARD);
        let zeroes = offers(&d, BlkFeatures::WRITE_ZEROES);
        if !discard && !zeroes {
            ctx.not_applicable(
                &all,
                "neither VIRTIO_BLK_F_DISCARD nor VIRTIO_BLK_F_WRITE_ZEROES offered",
            );
            return;
        }
        if !go_live(ctx, &mut d, &all, ALL) {
            return;
        }
        let mut unknown = Vec::new();
        let mut tried = Vec::new();
        if discard {
            tried.push((T_DISCARD, "DISCARD"));
        }
        if zeroes {
            tried.push((T_WRITE_ZEROES, "WRITE_ZEROES"));
        }
        for (t, name) in tried {
            match d.blk_request(t, 0, &segment(SCRATCH, 1, 1 << 5), 0) {
                Ok(r) => unknown.push((name, r.status)),
                Err(e) => {
                    ctx.blocked(&all, &e);
                    return;
                }
            }
        }
        ctx.expect(
            UNKNOWN_FLAG,
            unknown.iter().all(|(_, s)| *s == S_UNSUPP),
            || format!("statuses with flag bit 5 set: {unknown:?}"),
        );
        if !discard {
            ctx.not_applicable(&[DISCARD_UNMAP], "VIRTIO_BLK_F_DISCARD not offered");
            return;
        }
        match d.blk_request(T_DISCARD, 0, &segment(SCRATCH, 1, FLAG_UNMAP), 0) {
            Ok(r) => ctx.expect(DISCARD_UNMAP, r.status == S_UNSUPP, || {
                format!("DISCARD with the unmap flag: status {}", r.status)
            }),
            Err(e) => ctx.blocked(&[DISCARD_UNMAP], &e),
        }
    },
};

/// After WRITE_ZEROES, the sectors read zero (§5.2.6.2).
pub const WRITE_ZEROES: Check = Check {
    name: "blk-write-zeroes",
    statements: &[ZEROES_READ_ZERO],
    run: |ctx| {
        let Some(mut d) = open_blk(ctx, &[ZEROES_READ_ZERO]) else {
            return;
        };
        if !offers(&d, BlkFeatures::WRITE_ZEROES) {
            ctx.not_applicable(&[ZEROES_READ_ZERO], "VIRTIO_BLK_F_WRITE_ZEROES not offered");
            return;
        }
        if offers(&d, BlkFeatures::RO) {
            ctx.not_applicable(&[ZEROES_READ_ZERO], "a read-only device (VIRTIO_BLK_F_RO)");
            return;
        }
        if !go_live(ctx, &mut d, &[ZEROES_READ_ZERO], ALL) {
            return;
        }
        let run = |d: &mut Dev<'_>| -> Result<(bool, String), String> {
            let before = d.blk_request(T_IN, SCRATCH, &[], 1024)?;
            let marks = alloc::vec![0x5au8; 1024];
            let w = d.blk_request(T_OUT, SCRATCH, &marks, 0)?;
            if w.status != S_OK {
                return Err(format!(
                    "the write before it failed with status {}",
                    w.status
                ));
            }
            let z = d.blk_request(T_WRITE_ZEROES, 0, &segment(SCRATCH, 2, 0), 0)?;
            let after = d.blk_request(T_IN, SCRATCH, &[], 1024)?;
            let zero = after.data.iter().all(|b| *b == 0);
            // Put the sectors back as they were.
            let _ = d.blk_request(T_OUT, SCRATCH, &before.data, 0);
            Ok((
                z.status == S_OK && after.status == S_OK && zero,
                format!(
                    "WRITE_ZEROES status {}, read status {}, {} non-zero bytes read back",
                    z.status,
                    after.status,
                    after.data.iter().filter(|b| **b != 0).count()
                ),
            ))
        };
        match run(&mut d) {
            Ok((ok, seen)) => ctx.expect(ZEROES_READ_ZERO, ok, || seen),
            Err(e) => ctx.blocked(&[ZEROES_READ_ZERO], &e),
        }
    },
};

/// LIFETIME only where metrics exist; the metrics use no reserved values
/// (§5.2.6.2).
pub const LIFETIME: Check = Check {
    name: "blk-lifetime",
    statements: &[LIFETIME_NOT_OFFERED, LIFETIME_VALUES],
    run: |ctx| {
        let all = [LIFETIME_NOT_OFFERED, LIFETIME_VALUES];
        let Some(mut d) = open_blk(ctx, &all) else {
            return;
        };
        if !offers(&d, BlkFeatures::LIFETIME) {
            // Not offered: the MUST NOT cannot be broken.
            ctx.record(LIFETIME_NOT_OFFERED, Outcome::Pass);
            ctx.not_applicable(&[LIFETIME_VALUES], "VIRTIO_BLK_F_LIFETIME not offered");
            return;
        }
        ctx.not_observable(
            &[LIFETIME_NOT_OFFERED],
            "whether the storage behind the device has lifetime metrics is not visible from the bus",
        );
        if !go_live(ctx, &mut d, &[LIFETIME_VALUES], ALL) {
            return;
        }
        // struct virtio_blk_lifetime: three le16 (§5.2.6).
        match d.blk_request(T_GET_LIFETIME, 0, &[], 6) {
            Ok(r) if r.status != S_OK => ctx.blocked(
                &[LIFETIME_VALUES],
                &format!("GET_LIFETIME failed with status {}", r.status),
            ),
            Ok(r) => {
                let w = |i: usize| u16::from_le_bytes([r.data[i], r.data[i + 1]]);
                let (eol, a, b) = (w(0), w(2), w(4));
                ctx.expect(LIFETIME_VALUES, eol <= 3 && a <= 0x0b && b <= 0x0b, || {
                    format!("pre_eol_info {eol}, estimates {a:#x} {b:#x}")
                });
            }
            Err(e) => ctx.blocked(&[LIFETIME_VALUES], &e),
        }
    },
};

/// Without ZONED negotiated, every zoned request type completes UNSUPP
/// (§5.2.6.2).
pub const ZONED_WITHOUT_FEATURE: Check = Check {
    name: "blk-zoned-without-feature",
    statements: &[ZONED_REJECTED],
    run: |ctx| {
        let Some(mut d) = open_blk(ctx, &[ZONED_REJECTED]) else {
            return;
        };
        let want = ALL & !BlkFeatures::ZONED.bits();
        if !go_live(ctx, &mut d, &[ZONED_REJECTED], want) {
            return;
        }
        let mut wrong = Vec::new();
        for (t, name) in T_ZONES {
            // ZONE_APPEND carries data; ZONE_REPORT asks for a report.
            let (out, in_len): (&[u8], u32) = match t {
                15 => (&[0u8; 512], 8),
                16 => (&[], 64),
                _ => (&[], 0),
            };
            match d.blk_request(t, 0, out, in_len) {
                Ok(r) if r.status == S_UNSUPP => {}
                Ok(r) => wrong.push(format!("{name}: status {}", r.status)),
                Err(e) => {
                    ctx.blocked(&[ZONED_REJECTED], &e);
                    return;
                }
            }
        }
        ctx.expect(ZONED_REJECTED, wrong.is_empty(), || wrong.join(", "));
    },
};

/// The bytes each case of [`STABLE_WRITES`] writes, and where: two
/// 64 KiB runs from sector 256 on, apart from [`SCRATCH`] and inside the
/// smallest disk the checks meet (1 MiB).
const STABLE_LEN: usize = 64 << 10;
const STABLE_SECTORS: [u64; 2] = [256, 512];

/// One case of §5.2.6.2's stable writes: `flush` sends a FLUSH after the
/// write (case 3); without it the write itself must come back stable
/// (case 1). Returns what the host still held unwritten of the
/// run after the completion that makes it stable, and before (for the
/// report).
fn stable_case(d: &mut Dev<'_>, sector: u64, flush: bool) -> Result<(u64, u64), String> {
    let data: Vec<u8> = (0..STABLE_LEN).map(|i| (i * 7 + 3) as u8).collect();
    let w = d.blk_request(T_OUT, sector, &data, 0)?;
    if w.status != S_OK {
        return Err(format!("the write failed with status {}", w.status));
    }
    let look = |d: &Dev<'_>| {
        d.bus()
            .unwritten(sector * 512, STABLE_LEN as u64)
            .unwrap_or_else(|| Err("the path stopped showing the backing storage".into()))
    };
    let after_write = look(d)?;
    if flush {
        let f = d.blk_request(T_FLUSH, 0, &[], 0)?;
        if f.status != S_OK {
            return Err(format!("the FLUSH failed with status {}", f.status));
        }
    }
    Ok((look(d)?, after_write))
}

/// Stable writes are committed to the backing storage before their
/// completion (FLUSH offered, not negotiated: case 1) or the completion of
/// a later FLUSH (case 3) (§5.2.6.2), seen from the host: what its page
/// cache still holds dirty or under writeback of the written run. A
/// disk's own volatile cache is out of sight, and so is a backend that
/// bypasses the page cache (`O_DIRECT`: nothing ever looks unwritten).
/// Case 2 (`writeback` 0) is not run: behind vhost-user, the one path
/// here that shows the image, the configuration is the frontend's copy.
pub const STABLE_WRITES: Check = Check {
    name: "blk-stable-writes",
    statements: &[STABLE_COMMITTED],
    run: |ctx| {
        let Some(mut d) = open_blk(ctx, &[STABLE_COMMITTED]) else {
            return;
        };
        if offers(&d, BlkFeatures::RO) {
            ctx.not_applicable(&[STABLE_COMMITTED], "a read-only device (VIRTIO_BLK_F_RO)");
            return;
        }
        if !offers(&d, BlkFeatures::FLUSH) {
            ctx.not_applicable(
                &[STABLE_COMMITTED],
                "VIRTIO_BLK_F_FLUSH not offered: no write is stable (§5.2.6.2, cases 1 to 3)",
            );
            return;
        }
        match d.bus().unwritten(0, 0) {
            None => {
                ctx.not_observable(
                    &[STABLE_COMMITTED],
                    "this path does not show the device's backing storage",
                );
                return;
            }
            Some(Err(e)) => {
                ctx.not_observable(
                    &[STABLE_COMMITTED],
                    &format!("the host cannot show what it holds unwritten: {e}"),
                );
                return;
            }
            Some(Ok(_)) => {}
        }
        let mut seen = Vec::new();
        let mut broken = Vec::new();
        let mut judge = |case: &str, r: (u64, u64)| {
            let (left, before) = r;
            seen.push(format!(
                "{case}: {before} bytes unwritten after the write, {left} after"
            ));
            if left != 0 {
                broken.push(format!(
                    "{case}: {left} of {STABLE_LEN} bytes still unwritten in the host's page cache after the completion"
                ));
            }
        };
        // Case 3: FLUSH (and CONFIG_WCE) negotiated, a FLUSH after the
        // write.
        let r = go_live(ctx, &mut d, &[STABLE_COMMITTED], ALL)
            .then(|| stable_case(&mut d, STABLE_SECTORS[1], true));
        match r {
            None => return,
            Some(Ok(r)) => judge("case 3 (a FLUSH after the write)", r),
            Some(Err(e)) => return ctx.blocked(&[STABLE_COMMITTED], &e),
        }
        // Case 1: FLUSH offered, neither it nor CONFIG_WCE negotiated.
        let want = ALL & !(BlkFeatures::FLUSH | BlkFeatures::CONFIG_WCE).bits();
        let r = go_live(ctx, &mut d, &[STABLE_COMMITTED], want)
            .then(|| stable_case(&mut d, STABLE_SECTORS[0], false));
        match r {
            None => return,
            Some(Ok(r)) => judge("case 1 (FLUSH offered, not negotiated)", r),
            Some(Err(e)) => return ctx.blocked(&[STABLE_COMMITTED], &e),
        }
        ctx.expect(STABLE_COMMITTED, broken.is_empty(), || {
            format!("{}; ({})", broken.join("; "), seen.join(", "))
        });
    },
};
