//! The request-level half of the ring watch: what a driver puts in each
//! chain of a device type's queues, judged against that type's driver
//! requirements: the block device (§5.2.6.1) and the network device
//! (§5.1.6.2.1, §5.1.6.5).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{BlkFeatures, NetFeatures};
use virtio_core::memory::GuestAddress;

use super::{Seen, judge};
use crate::checksum::{fold, sum16};
use crate::{Check, Memory, Record};

const NOT_BEYOND_CAPACITY: &str = "driver:blk/device-operation#2";
const FLUSH_SECTOR_ZERO: &str = "driver:blk/device-operation#4";
const FLUSH_NO_DATA: &str = "driver:blk/device-operation#5";
const IN_OUT_SECTORS: &str = "driver:blk/device-operation#6";
const RANGES_WHOLE: &str = "driver:blk/device-operation#7";
const GET_ID_20: &str = "driver:blk/device-operation#8";
const DISCARD_SEGMENTS: &str = "driver:blk/device-operation#9";
const WRITE_ZEROES_SEGMENTS: &str = "driver:blk/device-operation#11";
const DISCARD_NO_UNMAP: &str = "driver:blk/device-operation#13";

const ASSUME_WRITEBACK_OFF: &str = "driver:blk/device-operation#12";
const ASSUME_DISCARDED: &str = "driver:blk/device-operation#14";
const ASSUME_SEGMENTS: &str = "driver:blk/device-operation#15";

/// What a block driver must not assume (§5.2.6.1): writes committed
/// because `writeback` went to 0, the data of discarded sectors, the
/// fate of each range of a request that failed with IOERR.
pub const BLK_ASSUMPTION_STATEMENTS: &[&str] =
    &[ASSUME_WRITEBACK_OFF, ASSUME_DISCARDED, ASSUME_SEGMENTS];

/// A driver's assumptions (§5.2.6.1) as a [`Check`] for the catalogue:
/// judged by the harness through the driver's own API, against a device
/// that provokes each (a flush after writeback went to 0 must still
/// reach the device; a read of discarded sectors returns what the device
/// gives; a DISCARD of two ranges that the device fails is failed as a
/// whole).
pub const BLK_ASSUMPTIONS: Check = Check {
    name: "driver-blk-assumptions",
    statements: BLK_ASSUMPTION_STATEMENTS,
    run: |_| {},
};

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
        BlkLimits {
            capacity: u64::from_le_bytes(c),
            max_discard_seg: (features & BlkFeatures::DISCARD.bits() != 0).then(|| u32_at(40)),
            max_write_zeroes_seg: (features & BlkFeatures::WRITE_ZEROES.bits() != 0)
                .then(|| u32_at(52)),
        }
    }
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Segment = (u64, u32, bool);

const SECTOR: u64 = 512;
const HEADER: u64 = 16;
const RANGE: u64 = 16;

/// The longest prefix [`readable_prefix`] copies: a driver's descriptor
/// may claim up to 4 GiB, which the watch must not allocate.
const MAX_PREFIX: usize = 1 << 20;

/// The first `n` device-readable bytes of a chain (`None` when the chain
/// has fewer, they are not in memory, or `n` is over [`MAX_PREFIX`]).
pub(super) fn readable_prefix(mem: &dyn Memory, segs: &[Segment], n: usize) -> Option<Vec<u8>> {
    gather(mem, segs.iter().take_while(|s| !s.2), n)
}

/// The first `n` device-writable bytes of a chain (its part after the
/// readable one), under the same bounds as [`readable_prefix`].
pub(super) fn writable_prefix(mem: &dyn Memory, segs: &[Segment], n: usize) -> Option<Vec<u8>> {
    gather(mem, segs.iter().skip_while(|s| !s.2), n)
}

/// The first `n` bytes of the buffers `segs`, in order.
fn gather<'a>(
    mem: &dyn Memory,
    segs: impl Iterator<Item = &'a Segment>,
    n: usize,
) -> Option<Vec<u8>> {
    if n > MAX_PREFIX {
        return None;
    }
    let mut out = Vec::with_capacity(n.min(4096));
    for &(addr, len, _) in segs {
        if out.len() == n {
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
            // A list longer than any device takes is judged by its count
            // alone (the copy below stays small).
            if count > 4096 {
                if let (11, Some(max)) | (13, Some(max)) = (
                    kind,
                    if kind == 11 {
                        limits.max_discard_seg
                    } else {
                        limits.max_write_zeroes_seg
                    },
                ) {
                    let statement = if kind == 11 {
                        DISCARD_SEGMENTS
                    } else {
                        WRITE_ZEROES_SEGMENTS
                    };
                    judge(seen, statement, count <= u64::from(max), || {
                        format!(
                            "queue {index}: a {} of {count} segments, the device's limit {max}",
                            name(kind)
                        )
                    });
                }
                return;
            }
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

const NET_TX_NUM_BUFFERS: &str = "driver:net/device-operation/packet-transmission#2";
const NET_TX_FLAGS_NO_CSUM: &str = "driver:net/device-operation/packet-transmission#3";
const NET_TX_TUNNEL_BOTH_FEATURES: &str = "driver:net/device-operation/packet-transmission#11";
const NET_TX_TUNNEL_CSUM_FEATURE: &str = "driver:net/device-operation/packet-transmission#12";
const NET_TX_TUNNEL_NOT_UDP: &str = "driver:net/device-operation/packet-transmission#13";
const NET_TX_TUNNEL_ONE_BIT: &str = "driver:net/device-operation/packet-transmission#14";
const NET_TX_TUNNEL_CSUM_NEEDS_BIT: &str = "driver:net/device-operation/packet-transmission#15";
const NET_TX_GSO_NEEDS_CSUM: &str = "driver:net/device-operation/packet-transmission#20";
const NET_TX_TUNNEL_FEATURE: &str = "driver:net/device-operation/packet-transmission#27";
const NET_TX_TUNNEL_CSUM_FLAG_FEATURE: &str = "driver:net/device-operation/packet-transmission#28";
const NET_TX_NO_RX_FLAGS: &str = "driver:net/device-operation/packet-transmission#30";
const NET_TX_NO_VALID_TUNNEL: &str = "driver:net/device-operation/packet-transmission#31";
const NET_TX_CSUM_BEFORE: &str = "driver:net/device-operation/packet-transmission#16";
const NET_TX_CSUM_PSEUDO: &str = "driver:net/device-operation/packet-transmission#17";
const NET_TX_CSUM_COMPLETES: &str = "driver:net/device-operation/packet-transmission#18";
const NET_TX_MTU: &str = "driver:net/device-configuration-layout#8";
const NET_TX_HDR_SIZE: &str = "driver:net/device-operation/packet-transmission#1";
/// Judged when the watch's records are taken ([`NetState::rx_enough`]).
pub const NET_RX_ENOUGH: &str = "driver:net/device-configuration-layout#7";
/// The driver uses `mac` as its address (§5.1.4.2); judged when the
/// watch's records are taken ([`NetState::mac_used`]).
pub const NET_MAC_USED: &str = "driver:net/device-configuration-layout#3";
const NET_CTRL_RX_FEATURE: &str =
    "driver:net/device-operation/control-virtqueue/packet-receive-filtering#1";
const NET_CTRL_RX_EXTRA_FEATURE: &str =
    "driver:net/device-operation/control-virtqueue/packet-receive-filtering#2";
const NET_CTRL_MAC_FEATURE: &str =
    "driver:net/device-operation/control-virtqueue/setting-mac-address-filtering#1";
const NET_CTRL_MAC_TABLE: &str =
    "driver:net/device-operation/control-virtqueue/setting-mac-address-filtering#3";
const NET_PAIRS_CONFIGURED: &str =
    "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#1";
const NET_PAIRS_RANGE: &str =
    "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#2";
const NET_TX_FIRST_PAIR: &str =
    "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#3";
const NET_TX_WITHIN_PAIRS: &str =
    "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#4";

/// Every statement the network request watch judges.
pub const NET_STATEMENTS: &[&str] = &[
    NET_MAC_USED,
    NET_TX_NUM_BUFFERS,
    NET_TX_FLAGS_NO_CSUM,
    NET_TX_TUNNEL_BOTH_FEATURES,
    NET_TX_TUNNEL_CSUM_FEATURE,
    NET_TX_TUNNEL_NOT_UDP,
    NET_TX_TUNNEL_ONE_BIT,
    NET_TX_TUNNEL_CSUM_NEEDS_BIT,
    NET_TX_GSO_NEEDS_CSUM,
    NET_TX_TUNNEL_FEATURE,
    NET_TX_TUNNEL_CSUM_FLAG_FEATURE,
    NET_TX_NO_RX_FLAGS,
    NET_TX_NO_VALID_TUNNEL,
    NET_TX_CSUM_BEFORE,
    NET_TX_CSUM_PSEUDO,
    NET_TX_CSUM_COMPLETES,
    NET_TX_MTU,
    NET_TX_HDR_SIZE,
    NET_RX_ENOUGH,
    NET_CTRL_RX_FEATURE,
    NET_CTRL_RX_EXTRA_FEATURE,
    NET_CTRL_MAC_FEATURE,
    NET_CTRL_MAC_TABLE,
    NET_PAIRS_CONFIGURED,
    NET_PAIRS_RANGE,
    NET_TX_FIRST_PAIR,
    NET_TX_WITHIN_PAIRS,
];

/// The statements about the control queue (and the steering it sets),
/// which a path without the control queue cannot see.
pub const NET_CTRL_STATEMENTS: &[&str] = &[
    NET_CTRL_RX_FEATURE,
    NET_CTRL_RX_EXTRA_FEATURE,
    NET_CTRL_MAC_FEATURE,
    NET_CTRL_MAC_TABLE,
    NET_PAIRS_CONFIGURED,
    NET_PAIRS_RANGE,
    NET_TX_FIRST_PAIR,
    NET_TX_WITHIN_PAIRS,
];

/// The network request watch as a [`Check`] for the catalogue (fed by
/// the ring watch).
pub const NET_WATCH: Check = Check {
    name: "driver-net-requests",
    statements: NET_STATEMENTS,
    run: |_| {},
};

// The UDP tunnel features (65 to 68) lie beyond the first 64 feature
// bits, which are all a virtio-mmio transport here carries: never
// negotiated, so the watch has no flag for them.

/// What the network device told the driver that bounds its requests
/// (§5.1.4), read when the driver made it live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLimits {
    /// The negotiated features.
    pub features: u64,
    /// `mtu`, when VIRTIO_NET_F_MTU was negotiated.
    pub mtu: Option<u16>,
    /// `max_virtqueue_pairs` with VIRTIO_NET_F_MQ, else 1.
    pub max_pairs: u16,
    /// `mac`, when VIRTIO_NET_F_MAC was negotiated.
    pub mac: Option<[u8; 6]>,
}

impl NetLimits {
    /// The limits from a network device's configuration space (`read` at
    /// an offset, §5.1.4) for the negotiated `features`.
    pub fn from_config(features: u64, read: impl Fn(u64, &mut [u8])) -> NetLimits {
        let u16_at = |off| {
            let mut b = [0u8; 2];
            read(off, &mut b);
            u16::from_le_bytes(b)
        };
        NetLimits {
            features,
            mtu: (features & NetFeatures::MTU.bits() != 0).then(|| u16_at(10)),
            max_pairs: if features & NetFeatures::MQ.bits() != 0 {
                u16_at(8).max(1)
            } else {
                1
            },
            mac: (features & NetFeatures::MAC.bits() != 0).then(|| {
                let mut m = [0u8; 6];
                read(0, &mut m);
                m
            }),
        }
    }

    fn has(&self, f: NetFeatures) -> bool {
        self.features & f.bits() == f.bits()
    }

    /// The control queue's index, when there is one.
    pub fn ctrl(&self) -> Option<u16> {
        self.has(NetFeatures::CTRL_VQ)
            .then(|| u16::try_from(2 * u32::from(self.max_pairs)).ok())
            .flatten()
    }

    /// Whether VIRTIO_NET_F_MRG_RXBUF was negotiated.
    pub fn merged(&self) -> bool {
        self.has(NetFeatures::MRG_RXBUF)
    }

    /// Whether queue `index` is a receive queue.
    pub fn is_rx(&self, index: u16) -> bool {
        index.is_multiple_of(2) && u32::from(index) < 2 * u32::from(self.max_pairs)
    }

    /// Whether queue `index` is a transmit queue.
    pub fn is_tx(&self, index: u16) -> bool {
        index % 2 == 1 && u32::from(index) < 2 * u32::from(self.max_pairs)
    }
}

/// What the network watch remembers between chains.
#[derive(Clone, Debug, Default)]
pub struct NetState {
    /// The largest VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET the driver made
    /// available (the watch cannot order a transmit chain against a later
    /// command that shrank the pairs, so it judges against the largest).
    pub pairs_set: Option<u16>,
    /// The largest receive chain seen (device-writable bytes).
    pub rx_largest: u64,
    /// The receive chains seen, in bytes, added up.
    pub rx_total: u64,
    /// Addresses the driver set with VIRTIO_NET_CTRL_MAC_ADDR_SET.
    pub macs_set: Vec<[u8; 6]>,
    /// Transmitted frames from the driver's address (`mac` or one it
    /// set), and from others (the first few kept).
    pub tx_from_mac: u32,
    /// Transmitted frames from another address.
    pub tx_from_other: u32,
    /// The other source addresses seen (at most 8).
    pub other_sources: Vec<[u8; 6]>,
}

impl NetState {
    /// §5.1.4.2 with VIRTIO_NET_F_MAC (`mac`): kept when a transmitted
    /// frame came from it (or from an address the driver set or put in its
    /// unicast table); `Err` (a warning) when at least 8 did and all from
    /// one other address; otherwise `None` (not observable: a guest that
    /// bridges sends other sources too).
    pub fn mac_used(&self, mac: [u8; 6]) -> Option<Result<(), String>> {
        if self.tx_from_mac > 0 {
            Some(Ok(()))
        } else if self.tx_from_other >= 8 && self.other_sources.len() == 1 {
            // A warning, not a breach: a driver may use another address
            // without telling the device (no MAC_ADDR_SET), a bridging
            // guest sends from others.
            Some(Err(format!(
                "all {} transmitted frames came from {:02x?}, not mac {mac:02x?}",
                self.tx_from_other, self.other_sources[0]
            )))
        } else {
            None
        }
    }

    /// Whether the driver supplied receive buffers for one packet of
    /// `mtu` plus an Ethernet header (§5.1.4.2): one chain that holds it,
    /// or with merged buffers (`merged`) all of them together. `None` if
    /// it supplied none.
    pub fn rx_enough(&self, mtu: u16, merged: bool) -> Option<bool> {
        let need = (NET_HDR + 14 + usize::from(mtu)) as u64;
        let enough = if merged {
            self.rx_total >= need
        } else {
            self.rx_largest >= need
        };
        (self.rx_total > 0).then_some(enough)
    }
}

/// Notes one receive chain (§5.1.6.3).
pub(super) fn note_net_rx(state: &mut NetState, segs: &[Segment]) {
    let w: u64 = segs.iter().filter(|s| s.2).map(|s| u64::from(s.1)).sum();
    state.rx_largest = state.rx_largest.max(w);
    state.rx_total = state.rx_total.saturating_add(w);
}

/// The link-level header length of `frame`: 14, and 4 per VLAN tag.
fn l2_header(frame: &[u8]) -> usize {
    let mut h = 14;
    while h < 22
        && frame
            .get(h - 2..h)
            .is_some_and(|t| matches!(u16::from_be_bytes([t[0], t[1]]), 0x8100 | 0x88a8))
    {
        h += 4;
    }
    h
}

/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (§5.1.6).
const NET_HDR: usize = 12;

/// Judges one transmitted packet on queue `index`; `ctrl_live` says
/// whether the watch sees the control queue.
pub(super) fn judge_net_tx(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    limits: &NetLimits,
    state: &mut NetState,
    ctrl_live: bool,
    index: u16,
    segs: &[Segment],
) {
    // With HASH_REPORT the header is 20 bytes (§5.1.6): not judged.
    if limits.has(NetFeatures::HASH_REPORT) {
        return;
    }
    let readable: u64 = segs.iter().filter(|s| !s.2).map(|s| u64::from(s.1)).sum();
    // The header and the Ethernet header (and a tag or two), up to the
    // first bytes of an IP or ARP header behind a longer header.
    let want = usize::try_from(readable)
        .unwrap_or(usize::MAX)
        .min(NET_HDR + HDR_PROBE);
    let Some(head) = readable_prefix(mem, segs, want) else {
        return;
    };
    if head.len() < NET_HDR {
        return;
    }
    let flags = head[0];
    let gso = head[1];
    let gso_size = u16::from_le_bytes([head[4], head[5]]);
    let num_buffers = u16::from_le_bytes([head[10], head[11]]);
    let what = || {
        format!(
            "queue {index}: header flags {flags:#x}, gso_type {gso:#x}, gso_size {gso_size}, num_buffers {num_buffers}"
        )
    };
    judge(seen, NET_TX_NUM_BUFFERS, num_buffers == 0, what);
    judge_header_size(seen, limits, state, index, &head);
    if let Some(mac) = limits.mac
        && let Some(src) = head.get(NET_HDR + 6..NET_HDR + 12)
        && let Ok(src) = <[u8; 6]>::try_from(src)
    {
        if src == mac || state.macs_set.contains(&src) {
            state.tx_from_mac += 1;
        } else {
            state.tx_from_other += 1;
            if state.other_sources.len() < 8 && !state.other_sources.contains(&src) {
                state.other_sources.push(src);
            }
        }
    }
    if !limits.has(NetFeatures::CSUM) {
        judge(seen, NET_TX_FLAGS_NO_CSUM, flags == 0, what);
    }
    // The tunnel features are never negotiated here (see `nf`).
    let tunnel = gso & 0x60;
    let tunnel_csum = flags & 8 != 0;
    judge(
        seen,
        NET_TX_TUNNEL_BOTH_FEATURES,
        tunnel == 0 || !tunnel_csum,
        what,
    );
    judge(seen, NET_TX_TUNNEL_CSUM_FEATURE, !tunnel_csum, what);
    judge(seen, NET_TX_TUNNEL_CSUM_FLAG_FEATURE, !tunnel_csum, what);
    judge(
        seen,
        NET_TX_TUNNEL_NOT_UDP,
        tunnel == 0 || gso & 0x1f != 3,
        what,
    );
    judge(seen, NET_TX_TUNNEL_ONE_BIT, tunnel != 0x60, what);
    judge(
        seen,
        NET_TX_TUNNEL_CSUM_NEEDS_BIT,
        !tunnel_csum || tunnel != 0,
        what,
    );
    judge(seen, NET_TX_TUNNEL_FEATURE, tunnel == 0, what);
    let segmenting = gso & 0x1f != 0;
    judge(
        seen,
        NET_TX_GSO_NEEDS_CSUM,
        !segmenting || (flags & 1 != 0 && gso_size != 0),
        what,
    );
    judge(seen, NET_TX_NO_RX_FLAGS, flags & 6 == 0, what);
    judge(
        seen,
        NET_TX_NO_VALID_TUNNEL,
        flags & 2 == 0 || tunnel == 0,
        what,
    );
    // §5.1.6.2: a partial checksum on a frame sent whole (a segmented one
    // carries the checksum for the segments the device makes).
    if flags & 1 != 0
        && !segmenting
        && let Some(all) = readable_prefix(
            mem,
            segs,
            usize::try_from(readable.min(65_600)).unwrap_or(0),
        )
        && all.len() > NET_HDR
    {
        let start = usize::from(u16::from_le_bytes([head[6], head[7]]));
        let offset = usize::from(u16::from_le_bytes([head[8], head[9]]));
        judge_partial_checksum(seen, index, &all[NET_HDR..], start, offset);
    }
    if let Some(mtu) = limits.mtu
        && !segmenting
    {
        let frame = &head[NET_HDR..];
        let len = readable as usize - NET_HDR;
        let over = len.saturating_sub(l2_header(frame)) > usize::from(mtu);
        judge(seen, NET_TX_MTU, !over, || {
            format!("queue {index}: a {len}-byte frame with mtu {mtu} negotiated")
        });
    }
    // Steering: only where the watch sees the control queue (behind
    // vhost-user the frontend keeps it, and VQ_PAIRS_SET with it).
    if !limits.has(NetFeatures::MQ | NetFeatures::CTRL_VQ) || !ctrl_live {
        return;
    }
    if index > 1 {
        match state.pairs_set {
            None => judge(seen, NET_TX_FIRST_PAIR, false, || {
                format!("queue {index}: a packet before any VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET")
            }),
            Some(n) => judge(
                seen,
                NET_TX_WITHIN_PAIRS,
                u32::from(index) < 2 * u32::from(n),
                || format!("queue {index}: a packet with {n} queue pairs set"),
            ),
        }
    } else {
        let s = if state.pairs_set.is_some() {
            NET_TX_WITHIN_PAIRS
        } else {
            NET_TX_FIRST_PAIR
        };
        judge(seen, s, true, String::new);
    }
}

/// How many bytes of a transmit chain [`judge_header_size`] looks at
/// beyond the header: an Ethernet header and the first bytes of what it
/// carries, behind a header up to 8 bytes longer than it should be.
const HDR_PROBE: usize = 8 + 14 + 4;

/// Whether `frame` looks like an Ethernet frame this driver sent: from its
/// own address (`mac` or one it set), or carrying IPv4, IPv6 or ARP for
/// IPv4 (behind a VLAN tag or not), each recognised by its first bytes
/// (an IPv4 frame misread two bytes early shows ethertype 0x4500, its
/// version and TOS).
fn looks_like_frame(frame: &[u8], mac: Option<[u8; 6]>, macs_set: &[[u8; 6]]) -> bool {
    let Some(src) = frame.get(6..12).and_then(|s| <[u8; 6]>::try_from(s).ok()) else {
        return false;
    };
    if mac == Some(src) || macs_set.contains(&src) {
        return true;
    }
    let Some(t) = frame.get(12..14) else {
        return false;
    };
    let payload = frame.get(14..).unwrap_or(&[]);
    match u16::from_be_bytes([t[0], t[1]]) {
        0x0800 => payload.first().is_some_and(|b| b >> 4 == 4 && b & 0xf >= 5),
        0x86dd => payload.first().is_some_and(|b| b >> 4 == 6),
        0x0806 => payload.get(..4) == Some(&[0, 1, 8, 0]),
        // A tag, then the tagged frame's own type.
        // A tag (or two), then the tagged frame's own type.
        0x8100 | 0x88a8 => [2usize, 6].into_iter().any(|at| {
            payload.get(at..at + 2).is_some_and(|t| {
                matches!(u16::from_be_bytes([t[0], t[1]]), 0x0800 | 0x86dd | 0x0806)
            })
        }),
        _ => false,
    }
}

/// §5.1.6.2.1: the transmit header is `struct virtio_net_hdr` of the size
/// the receive side uses (12 bytes with VIRTIO_F_VERSION_1, no
/// HASH_REPORT). The header and the frame are one run of bytes, so the
/// size shows only through the frame that follows: kept when a frame
/// looks right behind 12 bytes, broken when it does not but does behind
/// another header size a driver might use (10: the legacy header without
/// merged buffers; 20: with a hash report; 0: none), unjudged otherwise.
fn judge_header_size(
    seen: &mut BTreeMap<&'static str, Seen>,
    limits: &NetLimits,
    state: &NetState,
    index: u16,
    head: &[u8],
) {
    let at = |o: usize| {
        head.get(o..)
            .is_some_and(|f| looks_like_frame(f, limits.mac, &state.macs_set))
    };
    if at(NET_HDR) {
        judge(seen, NET_TX_HDR_SIZE, true, String::new);
    } else if let Some(o) = [10, 20, 0].into_iter().find(|&o| at(o)) {
        judge(seen, NET_TX_HDR_SIZE, false, || {
            format!(
                "queue {index}: the frame starts {o} bytes into the chain, not behind the {NET_HDR}-byte header"
            )
        });
    }
}

/// Where a frame's TCP or UDP header starts and where its IP packet ends
/// (Ethernet padding may follow), with the sum of its pseudo header (IPv4
/// or IPv6, a VLAN tag allowed) and whether the IPv4 header sums right
/// (IPv6 has no header checksum); `None` for anything else.
fn l4_of(frame: &[u8]) -> Option<(usize, usize, u32, bool)> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    if ethertype == 0x8100 {
        at += 4;
        ethertype = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    }
    let ip = at + 2;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(frame.get(ip)? & 0xf) * 4;
            let proto = *frame.get(ip + 9)?;
            if ihl < 20 || !matches!(proto, 6 | 17) {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
            let l4 = ip + ihl;
            let l4_len = total.checked_sub(ihl)?;
            let header_ok = fold(sum16(frame.get(ip..l4)?, 0)) == 0xffff;
            let pseudo = sum16(
                frame.get(ip + 12..ip + 20)?,
                u32::from(proto) + l4_len as u32,
            );
            Some((l4, (ip + total).min(frame.len()), pseudo, header_ok))
        }
        0x86dd => {
            let next = *frame.get(ip + 6)?;
            if !matches!(next, 6 | 17) {
                return None;
            }
            let payload = u32::from(u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]));
            let pseudo = sum16(frame.get(ip + 8..ip + 40)?, u32::from(next) + payload);
            let end = (ip + 40 + payload as usize).min(frame.len());
            Some((ip + 40, end, pseudo, true))
        }
        _ => None,
    }
}

/// §5.1.6.2: a frame the driver sent with NEEDS_CSUM from `start` at
/// `offset`: what precedes `start` is checksummed (the IPv4 header), the
/// field holds the pseudo header's sum, and completing it as the device
/// would gives a valid TCP or UDP checksum. Frames that are not IPv4 or
/// IPv6 TCP or UDP are not judged.
fn judge_partial_checksum(
    seen: &mut BTreeMap<&'static str, Seen>,
    index: u16,
    frame: &[u8],
    start: usize,
    offset: usize,
) {
    let Some((l4, end, pseudo, header_ok)) = l4_of(frame) else {
        return;
    };
    let frame = &frame[..end];
    let at = start.checked_add(offset).filter(|a| a + 2 <= frame.len());
    judge(seen, NET_TX_CSUM_BEFORE, header_ok && start >= l4, || {
        format!(
            "queue {index}: NEEDS_CSUM from {start} with the transport header at {l4} and the IPv4 header summing {}",
            if header_ok { "right" } else { "wrong" }
        )
    });
    let stored = at.map(|a| u16::from_be_bytes([frame[a], frame[a + 1]]));
    // 0 and 0xffff are the same number in ones' complement.
    let same = |a: u16, b: u16| a == b || (a | b == 0xffff && (a == 0 || b == 0));
    let want = fold(pseudo);
    judge(
        seen,
        NET_TX_CSUM_PSEUDO,
        stored.is_some_and(|s| same(s, want)),
        || format!("queue {index}: checksum field {stored:x?}, pseudo header sum {want:#x}"),
    );
    let completes = at.is_some_and(|a| {
        let mut f = frame.to_vec();
        let v = !fold(sum16(&f[start..], 0));
        f[a..a + 2].copy_from_slice(&v.to_be_bytes());
        f.get(l4..)
            .is_some_and(|seg| fold(sum16(seg, pseudo)) == 0xffff)
    });
    judge(seen, NET_TX_CSUM_COMPLETES, completes, || {
        format!(
            "queue {index}: completing from csum_start {start} at csum_offset {offset} gives no valid checksum"
        )
    });
}

/// Judges one control command on the control queue; `live` says
/// whether a queue was set up.
pub(super) fn judge_net_ctrl(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    limits: &NetLimits,
    state: &mut NetState,
    live: &dyn Fn(u16) -> bool,
    segs: &[Segment],
) {
    let readable: u64 = segs.iter().filter(|s| !s.2).map(|s| u64::from(s.1)).sum();
    // A command longer than this (a MAC table of hundreds of addresses) is
    // not judged: it is not copied whole.
    if readable > 4096 {
        return;
    }
    let Some(cmd) = readable_prefix(mem, segs, readable as usize) else {
        return;
    };
    if cmd.len() < 2 {
        return;
    }
    let (class, command, data) = (cmd[0], cmd[1], &cmd[2..]);
    match class {
        // VIRTIO_NET_CTRL_RX.
        0 => {
            if command <= 1 {
                judge(
                    seen,
                    NET_CTRL_RX_FEATURE,
                    limits.has(NetFeatures::CTRL_RX),
                    || format!("RX command {command} without VIRTIO_NET_F_CTRL_RX"),
                );
            } else {
                judge(
                    seen,
                    NET_CTRL_RX_EXTRA_FEATURE,
                    limits.has(NetFeatures::CTRL_RX_EXTRA),
                    || format!("RX command {command} without VIRTIO_NET_F_CTRL_RX_EXTRA"),
                );
            }
        }
        // VIRTIO_NET_CTRL_MAC.
        1 => {
            judge(
                seen,
                NET_CTRL_MAC_FEATURE,
                limits.has(NetFeatures::CTRL_RX),
                || format!("MAC command {command} without VIRTIO_NET_F_CTRL_RX"),
            );
            // MAC_ADDR_SET: the driver's address from now on.
            if command == 1
                && let Ok(a) = <[u8; 6]>::try_from(data.get(..6).unwrap_or(&[]))
                && !state.macs_set.contains(&a)
            {
                state.macs_set.push(a);
            }
            if command == 0 {
                // The unicast table's entries are addresses the driver
                // receives on: frames from them are its own too.
                if let Some(n) = data.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                    let n = u32::from_le_bytes(n) as usize;
                    for a in data
                        .get(4..4 + 6 * n.min(64))
                        .unwrap_or(&[])
                        .chunks_exact(6)
                    {
                        if let Ok(a) = <[u8; 6]>::try_from(a)
                            && !state.macs_set.contains(&a)
                        {
                            state.macs_set.push(a);
                        }
                    }
                }
                let ok = mac_table_ok(data);
                judge(seen, NET_CTRL_MAC_TABLE, ok, || {
                    format!(
                        "MAC_TABLE_SET with {} bytes of tables: {:02x?}",
                        data.len(),
                        &data[..data.len().min(32)]
                    )
                });
            }
        }
        // VIRTIO_NET_CTRL_MQ, VQ_PAIRS_SET.
        4 if command == 0 && data.len() >= 2 => {
            let n = u16::from_le_bytes([data[0], data[1]]);
            judge(
                seen,
                NET_PAIRS_RANGE,
                (1..=limits.max_pairs).contains(&n),
                || {
                    format!(
                        "VQ_PAIRS_SET {n} with max_virtqueue_pairs {}",
                        limits.max_pairs
                    )
                },
            );
            let queues = 2 * u32::from(n.min(limits.max_pairs));
            let ready = (0..queues).all(|q| u16::try_from(q).is_ok_and(live));
            judge(seen, NET_PAIRS_CONFIGURED, ready, || {
                format!("VQ_PAIRS_SET {n} before all of its {queues} queues were set up")
            });
            state.pairs_set = Some(state.pairs_set.map_or(n, |m| m.max(n)));
        }
        _ => {}
    }
}

/// Two tables (§5.1.6.5.2): a le32 count of non-multicast addresses, the
/// addresses, a le32 count of multicast addresses, the addresses; nothing
/// after.
fn mac_table_ok(data: &[u8]) -> bool {
    let count = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    // Counts are checked against the data (at most 4096 bytes) first, so
    // the arithmetic below cannot overflow.
    let Some(n) = count(0).filter(|n| *n <= data.len() / 6) else {
        return false;
    };
    let Some(uni) = data.get(4..4 + 6 * n) else {
        return false;
    };
    let Some(m) = count(4 + 6 * n).filter(|m| *m <= data.len() / 6) else {
        return false;
    };
    let start = 8 + 6 * n;
    let Some(multi) = data.get(start..start + 6 * m) else {
        return false;
    };
    data.len() == start + 6 * m
        && uni.chunks(6).all(|a| a[0] & 1 == 0)
        && multi.chunks(6).all(|a| a[0] & 1 == 1)
}

const RNG_WRITABLE_ONLY: &str = "driver:rng/device-operation#1";

/// Every statement the entropy request watch judges.
pub const RNG_STATEMENTS: &[&str] = &[RNG_WRITABLE_ONLY];

/// The entropy request watch as a [`Check`] for the catalogue.
pub const RNG_WATCH: Check = Check {
    name: "driver-rng-requests",
    statements: RNG_STATEMENTS,
    run: |_| {},
};

/// Judges one entropy request (§5.4.6.1): device-writable buffers only.
pub(super) fn judge_rng(seen: &mut BTreeMap<&'static str, Seen>, index: u16, segs: &[Segment]) {
    let readable = segs.iter().filter(|s| !s.2).count();
    judge(seen, RNG_WRITABLE_ONLY, readable == 0, || {
        format!("queue {index}: an entropy request with {readable} device-readable buffer(s)")
    });
}

const RNG_EXAMINES_LEN: &str = "driver:rng/device-operation#2";
const NOTHING_BEYOND_LEN: &str = "driver:basic/virtqueues/the-virtqueue-used-ring#1";

/// What the entropy driver hands its caller, judged against what the
/// device wrote (§5.4.6.1: the driver examines the used length; §2.7.8:
/// it assumes nothing about bytes past it).
pub const RNG_OUTPUT_STATEMENTS: &[&str] = &[RNG_EXAMINES_LEN, NOTHING_BEYOND_LEN];

/// The entropy output judgement as a [`Check`] for the catalogue.
pub const RNG_OUTPUT: Check = Check {
    name: "driver-rng-output",
    statements: RNG_OUTPUT_STATEMENTS,
    run: |_| {},
};

/// Judges the bytes an entropy driver returned to its caller (`outputs`,
/// one per read) against the pieces the device wrote (`written`, one per
/// completed request, each shorter than its buffer): every byte handed out
/// must be one the device wrote, so each output is a run of whole pieces,
/// the last possibly cut short. A driver that hands out its whole buffer
/// instead of the used length gives bytes the device never wrote.
pub fn judge_rng_output(written: &[Vec<u8>], outputs: &[Vec<u8>]) -> Vec<Record> {
    let pieces: alloc::collections::BTreeSet<&[u8]> = written
        .iter()
        .map(Vec::as_slice)
        .filter(|p| !p.is_empty())
        .collect();
    let mut seen = BTreeMap::new();
    for (k, out) in outputs.iter().enumerate() {
        let mut at = 0;
        let ok = loop {
            let rest = &out[at..];
            if rest.is_empty() {
                break true;
            }
            if let Some(p) = pieces.iter().find(|p| rest.starts_with(p)) {
                at += p.len();
            } else {
                // Only the end may be part of a piece.
                break pieces.iter().any(|p| p.starts_with(rest));
            }
        };
        for s in RNG_OUTPUT_STATEMENTS {
            judge(&mut seen, s, ok, || {
                format!(
                    "read {k}: bytes from {at} of {} were not written by the device (the used lengths were {:?}…)",
                    out.len(),
                    written.iter().take(4).map(Vec::len).collect::<Vec<_>>()
                )
            });
        }
    }
    super::records_of(RNG_OUTPUT_STATEMENTS, RNG_OUTPUT.name, &seen)
}

const CONSOLE_RX_WRITABLE: &str = "driver:console/device-operation#1";
const CONSOLE_TX_READABLE: &str = "driver:console/device-operation#2";
/// Judged when the watch's records are taken ([`ConsoleState`]).
pub const CONSOLE_DEVICE_READY: &str =
    "driver:console/device-operation/multiport-device-operation#1";

/// Every statement the console request watch judges.
pub const CONSOLE_STATEMENTS: &[&str] = &[
    CONSOLE_RX_WRITABLE,
    CONSOLE_TX_READABLE,
    CONSOLE_DEVICE_READY,
    CONSOLE_PORT_OPENED,
];

/// The driver answers CONSOLE_PORT with PORT_OPEN 1 (§5.3.6.2.2); judged
/// when the watch's records are taken ([`ConsoleState`]).
pub const CONSOLE_PORT_OPENED: &str =
    "driver:console/device-operation/multiport-device-operation#2";

/// `VIRTIO_CONSOLE_CONSOLE_PORT` (§5.3.6.2).
const EVENT_CONSOLE_PORT: u16 = 4;
/// `VIRTIO_CONSOLE_PORT_OPEN`.
const EVENT_PORT_OPEN: u16 = 6;

/// The console request watch as a [`Check`] for the catalogue.
pub const CONSOLE_WATCH: Check = Check {
    name: "driver-console-requests",
    statements: CONSOLE_STATEMENTS,
    run: |_| {},
};

/// What the console watch remembers: whether MULTIPORT was negotiated and
/// whether the driver sent VIRTIO_CONSOLE_DEVICE_READY.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleState {
    /// VIRTIO_CONSOLE_F_MULTIPORT negotiated.
    pub multiport: bool,
    /// A DEVICE_READY seen on the control transmitq.
    pub device_ready: bool,
    /// Ports the device named consoles (CONSOLE_PORT) that the driver has
    /// not answered yet.
    pub nominated: alloc::collections::BTreeSet<u32>,
    /// Ports answered with PORT_OPEN 1.
    pub answered: u32,
}

impl ConsoleState {
    /// The device sent control message `msg` (id, event, value) on the
    /// control receiveq.
    pub fn device_sent(&mut self, msg: [u8; 8]) {
        let id = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        if u16::from_le_bytes([msg[4], msg[5]]) == EVENT_CONSOLE_PORT {
            self.nominated.insert(id);
        }
    }
}

/// Judges one console chain on queue `index` (§5.3.6.1, §5.3.6.2): a
/// port's receiveq (0, 4, 6, …) takes device-writable buffers only, its
/// transmitq (1, 5, 7, …) device-readable ones; a control message on the
/// control transmitq (3) may be DEVICE_READY.
pub(super) fn judge_console(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    state: &mut ConsoleState,
    index: u16,
    segs: &[Segment],
) {
    let readable = segs.iter().filter(|s| !s.2).count();
    let writable = segs.len() - readable;
    match index {
        2 => {}
        3 => {
            // struct virtio_console_control: le32 id, le16 event, le16
            // value; DEVICE_READY is event 0.
            if let Some(m) = readable_prefix(mem, segs, 8) {
                let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                let value = u16::from_le_bytes([m[6], m[7]]);
                match u16::from_le_bytes([m[4], m[5]]) {
                    0 => state.device_ready = true,
                    EVENT_PORT_OPEN if state.nominated.remove(&id) => {
                        judge(seen, CONSOLE_PORT_OPENED, value == 1, || {
                            format!(
                                "PORT_OPEN {value} for console port {id} (CONSOLE_PORT answered)"
                            )
                        });
                        state.answered += 1;
                    }
                    _ => {}
                }
            }
        }
        i if i % 2 == 0 => judge(seen, CONSOLE_RX_WRITABLE, readable == 0, || {
            format!("queue {i} (a receiveq): {readable} device-readable buffer(s)")
        }),
        i => judge(seen, CONSOLE_TX_READABLE, writable == 0, || {
            format!("queue {i} (a transmitq): {writable} device-writable buffer(s)")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;
    use alloc::vec;

    fn outcome(records: &[Record], s: &str) -> Outcome {
        records
            .iter()
            .find(|r| r.statement == s)
            .map(|r| r.outcome.clone())
            .unwrap()
    }

    /// An IPv4/UDP frame of 20 payload bytes plus 6 bytes of Ethernet
    /// padding, its UDP checksum field holding `field`.
    fn udp4(field: Option<u16>) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 20 + 6];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&48u16.to_be_bytes());
        f[14 + 9] = 17;
        f[14 + 12..14 + 20].copy_from_slice(&[10, 0, 2, 15, 10, 0, 2, 2]);
        let c = !fold(sum16(&f[14..34], 0));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[38..40].copy_from_slice(&28u16.to_be_bytes());
        for (i, b) in f[42..62].iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        let pseudo = fold(sum16(&f[26..34], 17 + 28));
        f[40..42].copy_from_slice(&field.unwrap_or(pseudo).to_be_bytes());
        f
    }

    /// §5.1.6.2: a partial UDP checksum as Linux makes it (the pseudo
    /// header's sum, csum_start at the UDP header, offset 6) keeps
    /// #16-#18, padding after the IP packet notwithstanding; a wrong field
    /// breaks #17 and #18; csum_start inside the IP header breaks #16.
    #[test]
    fn section_5_1_6_2_partial_checksums_are_judged() {
        let judged = |f: &[u8], start: usize| {
            let mut seen = BTreeMap::new();
            judge_partial_checksum(&mut seen, 1, f, start, 6);
            super::super::records_of(NET_STATEMENTS, NET_WATCH.name, &seen)
        };
        let good = judged(&udp4(None), 34);
        for s in [
            NET_TX_CSUM_BEFORE,
            NET_TX_CSUM_PSEUDO,
            NET_TX_CSUM_COMPLETES,
        ] {
            assert_eq!(outcome(&good, s), Outcome::Pass, "{s}");
        }
        let wrong = judged(&udp4(Some(0x1234)), 34);
        assert_eq!(outcome(&wrong, NET_TX_CSUM_BEFORE), Outcome::Pass);
        assert!(matches!(
            outcome(&wrong, NET_TX_CSUM_PSEUDO),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            outcome(&wrong, NET_TX_CSUM_COMPLETES),
            Outcome::Fail(_)
        ));
        let early = judged(&udp4(None), 30);
        assert!(matches!(
            outcome(&early, NET_TX_CSUM_BEFORE),
            Outcome::Fail(_)
        ));
    }

    /// §5.1.6.2.1: the transmit header's size, seen through the frame
    /// behind it. A frame behind 12 bytes keeps it; the same frame behind
    /// the legacy 10 bytes, or 20, or no header breaks it (whether the
    /// frame is known by its source address or by its IPv4 header); bytes
    /// that look like no frame at any size leave it unjudged.
    #[test]
    fn section_5_1_6_2_1_the_transmit_header_has_the_receive_size() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let limits = NetLimits {
            features: NetFeatures::MAC.bits(),
            mtu: None,
            max_pairs: 1,
            mac: Some(mac),
        };
        let judged = |hdr: usize, frame: &[u8]| {
            let mut head = vec![0u8; hdr];
            head.extend_from_slice(frame);
            head.truncate(NET_HDR + HDR_PROBE);
            let mut seen = BTreeMap::new();
            judge_header_size(&mut seen, &limits, &NetState::default(), 1, &head);
            super::super::records_of(NET_STATEMENTS, NET_WATCH.name, &seen)
        };
        let mut ours = udp4(None);
        ours[6..12].copy_from_slice(&mac);
        let stranger = udp4(None);
        for frame in [&ours, &stranger] {
            assert_eq!(
                outcome(&judged(NET_HDR, frame), NET_TX_HDR_SIZE),
                Outcome::Pass
            );
            for wrong in [10, 20, 0] {
                assert!(
                    matches!(
                        outcome(&judged(wrong, frame), NET_TX_HDR_SIZE),
                        Outcome::Fail(_)
                    ),
                    "a {wrong}-byte header"
                );
            }
        }
        let mut noise = vec![0xeeu8; 64];
        noise[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert!(matches!(
            outcome(&judged(NET_HDR, &noise), NET_TX_HDR_SIZE),
            Outcome::NotObservable(_)
        ));
    }

    /// §5.4.6.1, §2.7.8: a driver that hands out the used length keeps
    /// both; one that hands out its whole buffer (bytes the device never
    /// wrote) breaks both; a read cut inside a piece is fine.
    #[test]
    fn section_5_4_6_1_entropy_output_is_only_what_the_device_wrote() {
        let written = vec![vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10]];
        let good = judge_rng_output(&written, &[vec![1, 2, 3, 4, 5, 6, 7]]);
        for s in RNG_OUTPUT_STATEMENTS {
            assert_eq!(outcome(&good, s), Outcome::Pass, "{s}");
        }
        let whole_buffer = judge_rng_output(&written, &[vec![1, 2, 3, 4, 5, 0, 0, 0]]);
        for s in RNG_OUTPUT_STATEMENTS {
            assert!(matches!(outcome(&whole_buffer, s), Outcome::Fail(_)), "{s}");
        }
        let nothing = judge_rng_output(&written, &[]);
        assert!(matches!(
            outcome(&nothing, RNG_EXAMINES_LEN),
            Outcome::NotObservable(_)
        ));
    }
}
