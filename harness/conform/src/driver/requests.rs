//! The request-level half of the ring watch: what a driver puts in each
//! chain of a device type's queues, judged against that type's driver
//! requirements. So far the block device (§5.2.6.1).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use virtio_core::memory::GuestAddress;

use super::{Seen, judge};
use crate::{Check, Memory};

const NOT_BEYOND_CAPACITY: &str = "driver:blk/device-operation#2";
const FLUSH_SECTOR_ZERO: &str = "driver:blk/device-operation#4";
const FLUSH_NO_DATA: &str = "driver:blk/device-operation#5";
const IN_OUT_SECTORS: &str = "driver:blk/device-operation#6";
const RANGES_WHOLE: &str = "driver:blk/device-operation#7";
const GET_ID_20: &str = "driver:blk/device-operation#8";
const DISCARD_SEGMENTS: &str = "driver:blk/device-operation#9";
const WRITE_ZEROES_SEGMENTS: &str = "driver:blk/device-operation#11";
const DISCARD_NO_UNMAP: &str = "driver:blk/device-operation#13";

/// Every statement the block request watch judges.
pub const BLK_STATEMENTS: &[&str] = &[
    NOT_BEYOND_CAPACITY,
    FLUSH_SECTOR_ZERO,
    FLUSH_NO_DATA,
    IN_OUT_SECTORS,
    RANGES_WHOLE,
    GET_ID_20,
    DISCARD_SEGMENTS,
    WRITE_ZEROES_SEGMENTS,
    DISCARD_NO_UNMAP,
];

/// The block request watch as a [`Check`] for the catalogue (fed by the
/// ring watch).
pub const BLK_WATCH: Check = Check {
    name: "driver-blk-requests",
    statements: BLK_STATEMENTS,
    run: |_| {},
};

/// What the block device told the driver that bounds its requests
/// (§5.2.4), read when the driver made it live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkLimits {
    /// `capacity`, in 512-byte sectors.
    pub capacity: u64,
    /// `max_discard_seg`, when VIRTIO_BLK_F_DISCARD was negotiated.
    pub max_discard_seg: Option<u32>,
    /// `max_write_zeroes_seg`, when VIRTIO_BLK_F_WRITE_ZEROES was
    /// negotiated.
    pub max_write_zeroes_seg: Option<u32>,
}

impl BlkLimits {
    /// The limits from a block device's configuration space (`read` at an
    /// offset, §5.2.4) for the negotiated `features`.
    pub fn from_config(features: u64, read: impl Fn(u64, &mut [u8])) -> BlkLimits {
        let u32_at = |off| {
            let mut b = [0u8; 4];
            read(off, &mut b);
            u32::from_le_bytes(b)
        };
        let mut c = [0u8; 8];
        read(0, &mut c);
        // VIRTIO_BLK_F_DISCARD (13), VIRTIO_BLK_F_WRITE_ZEROES (14).
        BlkLimits {
            capacity: u64::from_le_bytes(c),
            max_discard_seg: (features & 1 << 13 != 0).then(|| u32_at(40)),
            max_write_zeroes_seg: (features & 1 << 14 != 0).then(|| u32_at(52)),
        }
    }
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Segment = (u64, u32, bool);

const SECTOR: u64 = 512;
const HEADER: u64 = 16;
const RANGE: u64 = 16;

/// The first `n` device-readable bytes of a chain.
fn readable_prefix(mem: &dyn Memory, segs: &[Segment], n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    for &(addr, len, write) in segs {
        if write || out.len() == n {
            break;
        }
        let take = (n - out.len()).min(len as usize);
        let mut b = alloc::vec![0u8; take];
        mem.read(GuestAddress(addr), &mut b).ok()?;
        out.extend_from_slice(&b);
    }
    (out.len() == n).then_some(out)
}

/// Judges one block request (a chain already judged well framed) made
/// available on queue `index`.
pub(super) fn judge_blk(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    limits: &BlkLimits,
    index: u16,
    segs: &[Segment],
) {
    let readable: u64 = segs.iter().filter(|s| !s.2).map(|s| u64::from(s.1)).sum();
    let writable: u64 = segs.iter().filter(|s| s.2).map(|s| u64::from(s.1)).sum();
    let Some(h) = readable_prefix(mem, segs, HEADER as usize) else {
        // No header: the device's business (it fails the request).
        return;
    };
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let within = |sector: u64, sectors: u64| {
        sector
            .checked_add(sectors)
            .is_some_and(|end| end <= limits.capacity)
    };
    match kind {
        // IN, OUT.
        0 | 1 => {
            let data = if kind == 0 {
                writable.saturating_sub(1)
            } else {
                readable - HEADER
            };
            judge(seen, IN_OUT_SECTORS, data.is_multiple_of(SECTOR), || {
                format!("queue {index}: a {} request of {data} bytes", name(kind))
            });
            let sectors = data.div_ceil(SECTOR);
            judge(seen, NOT_BEYOND_CAPACITY, within(sector, sectors), || {
                format!(
                    "queue {index}: a {} of {sectors} sectors at sector {sector}, capacity {}",
                    name(kind),
                    limits.capacity
                )
            });
        }
        // FLUSH.
        4 => {
            judge(seen, FLUSH_SECTOR_ZERO, sector == 0, || {
                format!("queue {index}: a FLUSH with sector {sector}")
            });
            judge(
                seen,
                FLUSH_NO_DATA,
                readable == HEADER && writable == 1,
                || {
                    format!(
                        "queue {index}: a FLUSH with {} readable and {} writable data bytes",
                        readable - HEADER,
                        writable.saturating_sub(1)
                    )
                },
            );
        }
        // GET_ID.
        8 => {
            let data = writable.saturating_sub(1);
            judge(seen, GET_ID_20, data == 20, || {
                format!("queue {index}: a GET_ID with {data} data bytes")
            });
        }
        // DISCARD, WRITE_ZEROES, SECURE_ERASE.
        11 | 13 | 14 => {
            let data = readable - HEADER;
            judge(seen, RANGES_WHOLE, data.is_multiple_of(RANGE), || {
                format!("queue {index}: a {} with {data} data bytes", name(kind))
            });
            let count = data / RANGE;
            let (statement, max) = match kind {
                11 => (DISCARD_SEGMENTS, limits.max_discard_seg),
                13 => (WRITE_ZEROES_SEGMENTS, limits.max_write_zeroes_seg),
                _ => return,
            };
            if let Some(max) = max {
                judge(seen, statement, count <= u64::from(max), || {
                    format!(
                        "queue {index}: a {} of {count} segments, the device's limit {max}",
                        name(kind)
                    )
                });
            }
            let Some(list) = readable_prefix(mem, segs, (HEADER + count * RANGE) as usize) else {
                return;
            };
            for r in list[HEADER as usize..].chunks(RANGE as usize) {
                let start = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
                let n = u64::from(u32::from_le_bytes([r[8], r[9], r[10], r[11]]));
                let flags = u32::from_le_bytes([r[12], r[13], r[14], r[15]]);
                judge(seen, NOT_BEYOND_CAPACITY, within(start, n), || {
                    format!(
                        "queue {index}: a {} range of {n} sectors at {start}, capacity {}",
                        name(kind),
                        limits.capacity
                    )
                });
                if kind == 11 {
                    judge(seen, DISCARD_NO_UNMAP, flags & 1 == 0, || {
                        format!("queue {index}: a DISCARD range with the unmap flag")
                    });
                }
            }
        }
        _ => {}
    }
}

fn name(kind: u32) -> &'static str {
    match kind {
        0 => "read (IN)",
        1 => "write (OUT)",
        11 => "DISCARD",
        13 => "WRITE_ZEROES",
        14 => "SECURE_ERASE",
        _ => "request",
    }
}
