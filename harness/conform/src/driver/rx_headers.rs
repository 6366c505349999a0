//! Received network headers a driver must read with care (§5.1.6.4.1): a
//! provoking device rewrites the header of each frame it hands the driver
//! before the driver sees it, with what the driver must ignore: a flag bit
//! no revision defines, checksum fields that mean nothing without
//! NEEDS_CSUM, a `hdr_len` that is wrong. NEEDS_CSUM and DATA_VALID are
//! cleared (withdrawing a checksum hint is always allowed), so the driver
//! must not take the checksum as verified either. The frame itself is left
//! alone: a driver that ignores what it must delivers it unchanged, which
//! the harness that ran it checks.

use alloc::vec::Vec;

use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::QueueLayout;

use crate::{Check, Memory, Outcome, Record};

/// The driver ignores flag bits it does not know.
pub const UNKNOWN_FLAGS: &str = "driver:net/device-operation/processing-of-incoming-packets#1";
/// Without NEEDS_CSUM, `csum_start` and `csum_offset` are not used.
pub const NO_CSUM_FIELDS: &str = "driver:net/device-operation/processing-of-incoming-packets#3";
/// `hdr_len` is not relied on.
pub const NO_HDR_LEN: &str = "driver:net/device-operation/processing-of-incoming-packets#4";
/// Without NEEDS_CSUM or DATA_VALID, the checksum is not taken as correct.
pub const CSUM_UNVERIFIED: &str = "driver:net/device-operation/processing-of-incoming-packets#5";

/// Every statement the provocation is about.
pub const STATEMENTS: &[&str] = &[UNKNOWN_FLAGS, NO_CSUM_FIELDS, NO_HDR_LEN, CSUM_UNVERIFIED];

/// The provocation as a [`Check`] for the catalogue (fed by a device-side
/// wrapper and the harness that ran the driver).
pub const WATCH: Check = Check {
    name: "driver-net-rx-headers",
    statements: STATEMENTS,
    run: |_| {},
};

const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;
/// A flag bit no revision of the specification defines (§5.1.6: 1, 2 and
/// 4 are).
pub const UNDEFINED_FLAG: u8 = 0x40;

fn u16_at(mem: &dyn Memory, at: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read(GuestAddress(at), &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}

/// Rewrites the headers of the frames the device returned on receive queue
/// layout `l` between used indices `from` and `to`; how many it rewrote.
pub fn mangle(mem: &dyn Memory, l: QueueLayout, from: u16, to: u16) -> u32 {
    let mut done = 0;
    // A packet over merged buffers: the header is in its first chain only
    // (`num_buffers` of them, §5.1.6.4); the others hold frame bytes.
    let mut continuations = 0u16;
    for r in crate::ring::returned(mem, l, from, to) {
        if continuations > 0 {
            continuations -= 1;
            continue;
        }
        let mut h = [0u8; 12];
        // The whole header in the first buffer, or it is not touched.
        if r.len < 12 || r.first_len < 12 || mem.read(r.first, &mut h).is_err() {
            continue;
        }
        continuations = u16::from_le_bytes([h[10], h[11]]).saturating_sub(1);
        h[0] = (h[0] & !(NEEDS_CSUM | DATA_VALID)) | UNDEFINED_FLAG;
        // hdr_len, then csum_start and csum_offset past the frame's end.
        h[2..4].copy_from_slice(&0xfff0u16.to_le_bytes());
        h[6..8].copy_from_slice(&0x7ff0u16.to_le_bytes());
        h[8..10].copy_from_slice(&0x0102u16.to_le_bytes());
        if mem.write(r.first, &h[..10]).is_ok() {
            done += 1;
        }
    }
    done
}

/// The used index of layout `l` now.
pub fn used_idx(mem: &dyn Memory, l: QueueLayout) -> Option<u16> {
    u16_at(mem, l.used_idx().0)
}

/// The records after a driver got `mangled` rewritten headers: each
/// statement kept if its workload still succeeded (`error` is `None`),
/// broken if not. `checksum_seen`: the harness saw the checksum state the
/// driver reported (and failed the workload had it been "verified");
/// otherwise [`CSUM_UNVERIFIED`] is not observable.
pub fn records(mangled: u32, error: Option<&str>, checksum_seen: bool) -> Vec<Record> {
    STATEMENTS
        .iter()
        .map(|s| {
            let outcome = if mangled == 0 {
                Outcome::NotObservable("no received frame was rewritten".into())
            } else if *s == CSUM_UNVERIFIED && !checksum_seen {
                Outcome::NotObservable("the driver tells its caller nothing of checksums".into())
            } else if let Some(e) = error {
                Outcome::Fail(alloc::format!(
                    "after {mangled} rewritten receive headers the workload failed: {e}"
                ))
            } else {
                Outcome::Pass
            };
            Record {
                statement: s,
                check: WATCH.name,
                outcome,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::driver::test_ram::{Ram, layout, put};

    /// §5.1.6.4: the header of a returned receive chain (direct, and
    /// through an indirect table) is rewritten: NEEDS_CSUM and DATA_VALID
    /// cleared, the undefined flag set, `hdr_len` and the checksum fields
    /// made nonsense; the frame after it is left alone.
    #[test]
    fn section_5_1_6_4_returned_headers_are_rewritten_and_frames_kept() {
        let ram = Ram::new(0x10000);
        let l = layout(8, 0x1000);
        let put = |i: u16, addr: u64, len: u32, flags: u16| {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            ram.write(l.desc(i), &d).unwrap();
        };
        // Chain 0: the buffer at 0x8000. Chain 1: an indirect table at
        // 0x9000 whose first entry is the buffer at 0xa000.
        put(0, 0x8000, 1526, 2);
        put(1, 0x9000, 16, crate::ring::INDIRECT);
        let mut t = [0u8; 16];
        t[0..8].copy_from_slice(&0xa000u64.to_le_bytes());
        t[8..12].copy_from_slice(&1526u32.to_le_bytes());
        ram.write(GuestAddress(0x9000), &t).unwrap();
        for (k, (head, buf)) in [(0u16, 0x8000u64), (1, 0xa000)].into_iter().enumerate() {
            let mut hdr = [0u8; 14];
            hdr[0] = NEEDS_CSUM | DATA_VALID;
            hdr[10] = 1;
            hdr[12] = 0xab;
            ram.write(GuestAddress(buf), &hdr).unwrap();
            let mut e = [0u8; 8];
            e[0..4].copy_from_slice(&u32::from(head).to_le_bytes());
            e[4..8].copy_from_slice(&74u32.to_le_bytes());
            ram.write(l.used_slot(k as u16), &e).unwrap();
        }
        assert_eq!(mangle(&ram, l, 0, 2), 2);
        for buf in [0x8000u64, 0xa000] {
            let mut h = [0u8; 14];
            ram.read(GuestAddress(buf), &mut h).unwrap();
            assert_eq!(h[0], UNDEFINED_FLAG);
            assert_eq!(u16::from_le_bytes([h[2], h[3]]), 0xfff0);
            // num_buffers and the frame are untouched.
            assert_eq!((h[10], h[12]), (1, 0xab));
        }
        let kept = records(2, None, true);
        assert!(kept.iter().all(|r| r.outcome == Outcome::Pass));
        let broken = records(2, Some("frame dropped"), false);
        assert!(
            broken
                .iter()
                .filter(|r| r.statement != CSUM_UNVERIFIED)
                .all(|r| matches!(r.outcome, Outcome::Fail(_)))
        );
        assert!(
            records(0, None, true)
                .iter()
                .all(|r| matches!(r.outcome, Outcome::NotObservable(_)))
        );
    }

    /// A receive chain whose first buffer is shorter than the 12-byte
    /// header (a driver may split it, §2.6.4): nothing is rewritten, in
    /// neither buffer, and nothing past the short one is written.
    #[test]
    fn a_header_split_over_buffers_is_left_alone() {
        let ram = Ram::new(0x10000);
        let l = layout(8, 0x1000);
        put(&ram, &l, 0, 0x8000, 8, 2 | crate::ring::NEXT, 1);
        put(&ram, &l, 1, 0x8100, 1518, 2, 0);
        let before: Vec<u8> = (0..32u8).map(|b| b ^ 0x5a).collect();
        ram.write(GuestAddress(0x8000), &before).unwrap();
        ram.write(GuestAddress(0x8100), &before).unwrap();
        let mut e = [0u8; 8];
        e[4..8].copy_from_slice(&74u32.to_le_bytes());
        ram.write(l.used_slot(0), &e).unwrap();
        assert_eq!(mangle(&ram, l, 0, 1), 0);
        for at in [0x8000u64, 0x8100] {
            let mut b = [0u8; 32];
            ram.read(GuestAddress(at), &mut b).unwrap();
            assert_eq!(&b[..], &before[..], "{at:#x}");
        }
    }
}
