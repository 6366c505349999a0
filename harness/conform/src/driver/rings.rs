//! The ring-level half of the driver watch: what a driver puts in the
//! split virtqueues (§2.7), read by the device side whenever it looks
//! (a notification, a poll), without changing what the device does.
//!
//! It reads the available ring from where it last looked to the index the
//! driver published, walks each new chain as the driver wrote it, and
//! keeps a copy of each chain's descriptors until the device returns it,
//! so a driver that rewrites a chain the device owns is seen (§3.3.1).
//! This path sees the rings wherever they are: in process, behind our
//! monitor, and behind another monitor over vhost-user.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use virtio_core::features::TransportFeatures;
use virtio_core::split::layout::QueueLayout;

use super::cleanup::LiveRange;
use super::notify::{self, NotifyWatch};
use super::requests::{
    BLK_STATEMENTS, BLK_WATCH, BlkLimits, CONSOLE_DEVICE_READY, CONSOLE_PORT_OPENED,
    CONSOLE_STATEMENTS, CONSOLE_WATCH, ConsoleState, NET_CTRL_STATEMENTS, NET_MAC_USED,
    NET_RX_ENOUGH, NET_STATEMENTS, NET_WATCH, NetLimits, NetState, RNG_STATEMENTS, RNG_WATCH,
    Segment, judge_blk, judge_console, judge_net_ctrl, judge_net_tx, judge_rng, note_net_rx,
};
use super::{Seen, judge, keep};
use crate::{Check, Memory, Record};

const ALIGNED: &str = "driver:basic/virtqueues#1";
const WRITABLE_LAST: &str = "driver:basic/message-framing#1";
const NO_LOOP: &str = "driver:basic/virtqueues/the-virtqueue-descriptor-table#1";
const INDIRECT_NEGOTIATED: &str =
    "driver:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#1";
const NO_NESTED_INDIRECT: &str =
    "driver:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#2";
const CHAIN_WITHIN_SIZE: &str =
    "driver:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#3";
const NOT_INDIRECT_AND_NEXT: &str =
    "driver:basic/virtqueues/the-virtqueue-descriptor-table/indirect-descriptors#4";
const AVAIL_NOT_BACK: &str = "driver:basic/virtqueues/the-virtqueue-available-ring#1";
const AVAIL_FLAGS_0_OR_1: &str = "driver:basic/virtqueues/used-buffer-notification-suppression#1";
const AVAIL_FLAGS_0: &str = "driver:basic/virtqueues/used-buffer-notification-suppression#2";
const USED_FLAGS_INIT: &str = "driver:basic/virtqueues/available-buffer-notification-suppression#1";
const NOT_ALTERED: &str = "driver:general/device-cleanup#1";
const PHYSICAL_ONLY: &str = "driver:reserved-features#3";

/// Every statement the ring watch judges.
pub const STATEMENTS: &[&str] = &[
    ALIGNED,
    WRITABLE_LAST,
    NO_LOOP,
    INDIRECT_NEGOTIATED,
    NO_NESTED_INDIRECT,
    CHAIN_WITHIN_SIZE,
    NOT_INDIRECT_AND_NEXT,
    AVAIL_NOT_BACK,
    AVAIL_FLAGS_0_OR_1,
    AVAIL_FLAGS_0,
    USED_FLAGS_INIT,
    NOT_ALTERED,
    PHYSICAL_ONLY,
];

/// The ring watch as a [`Check`] for the catalogue (fed by a device-side
/// wrapper, not run against a bus).
pub const WATCH: Check = Check {
    name: "driver-ring-watch",
    statements: STATEMENTS,
    run: |_| {},
};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// One queue as the watch follows it.
#[derive(Clone, Debug)]
struct Queue {
    layout: QueueLayout,
    /// The available index the watch has read up to.
    seen_avail: u16,
    /// The used index the watch has read up to.
    seen_used: u16,
    /// Chains the driver exposed and the device has not returned: head
    /// and the descriptor bytes of its chain as first seen.
    exposed: BTreeMap<u16, Vec<u8>>,
    /// How far the device had read the available ring when it last
    /// returned control ([`RingWatch::taken`]), if it says.
    taken: Option<u16>,
}

/// The ring-level watch on one driver.
#[derive(Clone, Debug, Default)]
pub struct RingWatch {
    /// Why chains are not compared while exposed, if they are not.
    no_rewrites: Option<&'static str>,
    event_idx: bool,
    indirect: bool,
    /// VIRTIO_F_ACCESS_PLATFORM negotiated: addresses may be an IOMMU's.
    access_platform: bool,
    /// A block device's limits: its requests are judged too.
    blk: Option<BlkLimits>,
    /// A network device's limits and what its watch remembers.
    net: Option<(NetLimits, NetState)>,
    /// An entropy device: its requests are judged too.
    rng: bool,
    /// Judge the legacy block framing (§5.2.6.4): a legacy device that did
    /// not offer VIRTIO_F_ANY_LAYOUT.
    legacy_framing: bool,
    /// A console: its chains are judged too.
    console: Option<ConsoleState>,
    /// A crypto device: its requests are judged too.
    crypto: Option<super::crypto::CryptoState>,
    queues: BTreeMap<u16, Queue>,
    /// The notification watch, where this path can judge notifications.
    notify: Option<NotifyWatch>,
    seen: BTreeMap<&'static str, Seen>,
}

fn u16_at(mem: &dyn Memory, at: u64) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read(virtio_core::memory::GuestAddress(at), &mut b)
        .ok()?;
    Some(u16::from_le_bytes(b))
}

/// A descriptor: address, length, flags, next.
fn desc(mem: &dyn Memory, at: u64) -> Option<(u64, u32, u16, u16)> {
    let mut b = [0u8; 16];
    mem.read(virtio_core::memory::GuestAddress(at), &mut b)
        .ok()?;
    Some((
        u64::from_le_bytes(b[0..8].try_into().ok()?),
        u32::from_le_bytes(b[8..12].try_into().ok()?),
        u16::from_le_bytes(b[12..14].try_into().ok()?),
        u16::from_le_bytes(b[14..16].try_into().ok()?),
    ))
}

/// The heads of the used entries `from..to` (at most a ring's worth:
/// further entries are the same slots again).
fn returned_heads(mem: &dyn Memory, l: QueueLayout, from: u16, to: u16) -> Vec<u16> {
    let size = l.size().get();
    let n = to.wrapping_sub(from).min(size);
    (0..n)
        .filter_map(|k| {
            let slot = l.used_slot(from.wrapping_add(k) % size);
            let mut e = [0u8; 4];
            mem.read(virtio_core::memory::GuestAddress(slot.0), &mut e)
                .ok()?;
            u16::try_from(u32::from_le_bytes(e)).ok()
        })
        .collect()
}

/// The buffers of the chain at `head`, an indirect table's in its place
/// (a chain [`RingWatch::walk`] found well formed).
fn segments(mem: &dyn Memory, l: QueueLayout, head: u16) -> Option<Vec<Segment>> {
    let size = l.size().get();
    let mut out = Vec::new();
    let mut i = head;
    for _ in 0..size {
        let (addr, len, flags, next) = desc(mem, l.desc(i).0)?;
        if flags & INDIRECT != 0 {
            // The table's own chain, from entry 0 along `next` (§2.7.5.3).
            let entries = (len / 16).min(u32::from(size));
            let mut k = 0u32;
            for _ in 0..entries {
                let (a, n, f, nx) = desc(mem, addr + 16 * u64::from(k))?;
                out.push((a, n, f & WRITE != 0));
                if f & NEXT == 0 {
                    return Some(out);
                }
                k = u32::from(nx);
                if k >= entries {
                    return None;
                }
            }
            return None;
        }
        out.push((addr, len, flags & WRITE != 0));
        if flags & NEXT == 0 {
            return Some(out);
        }
        i = next;
        if i >= size {
            return None;
        }
    }
    None
}

impl RingWatch {
    /// A watch for a driver that negotiated `features`.
    pub fn new(features: u64) -> Self {
        RingWatch {
            no_rewrites: None,
            event_idx: features & TransportFeatures::RING_EVENT_IDX.bits() != 0,
            indirect: features & TransportFeatures::RING_INDIRECT_DESC.bits() != 0,
            access_platform: features & TransportFeatures::ACCESS_PLATFORM.bits() != 0,
            blk: None,
            net: None,
            rng: false,
            legacy_framing: false,
            console: None,
            crypto: None,
            queues: BTreeMap::new(),
            notify: None,
            seen: BTreeMap::new(),
        }
    }

    /// The same watch judging the driver's notifications too (see
    /// [`notify`]), provoking them with decoys if `provoke`: only where
    /// the device acts solely inside the driver's steps (in process).
    pub fn with_notifications(mut self, provoke: bool) -> Self {
        self.notify = Some(NotifyWatch::new(self.event_idx, provoke));
        self
    }

    /// The device returned chains `from..to` (used indices) on queue
    /// `index` with layout `l` in its last step, before the driver can
    /// look: what it told the driver there (a console's control
    /// messages) is noted.
    pub fn returned(&mut self, mem: &dyn Memory, index: u16, l: QueueLayout, from: u16, to: u16) {
        if let Some(c) = &mut self.crypto {
            c.returned(mem, index, l, from, to);
        }
        if let Some(state) = &mut self.console
            && state.multiport
            && index == 2
        {
            for r in crate::ring::returned(mem, l, from, to) {
                let mut m = [0u8; 8];
                if r.len >= 8 && mem.read(r.first, &mut m).is_ok() {
                    state.device_sent(m);
                }
            }
        }
    }

    /// The driver notified queue `index` (before the device looks).
    pub fn notified(&mut self, mem: &dyn Memory, index: u16) {
        if let Some(n) = &mut self.notify {
            n.notified(mem, index);
        }
    }

    /// The device's step is over for queue `index`: the state it left
    /// (and, when provoking, the decoys).
    pub fn stepped(&mut self, mem: &dyn Memory, index: u16) {
        if let Some(n) = &mut self.notify {
            n.after(mem, index);
        }
    }

    /// Whether this step, which notifies nothing of its own, should carry a
    /// spurious used-buffer notification (provoking only).
    pub fn spurious_now(&mut self) -> bool {
        self.notify.as_mut().is_some_and(NotifyWatch::spurious_now)
    }

    /// The session ends: notifications still owed are breaches.
    pub fn due(&mut self, mem: &dyn Memory) {
        if let Some(n) = &mut self.notify {
            n.due(mem);
        }
    }

    /// The same watch for a block device with `limits`: each request is
    /// judged against the block driver requirements too (§5.2.6.1).
    pub fn with_blk(mut self, limits: BlkLimits) -> Self {
        self.blk = Some(limits);
        self
    }

    /// The same watch for a network device with `limits`: transmitted
    /// headers and control commands are judged too (§5.1.6.2.1,
    /// §5.1.6.5).
    pub fn with_net(mut self, limits: NetLimits) -> Self {
        self.net = Some((limits, NetState::default()));
        self
    }

    /// The same watch judging the legacy framing of block requests
    /// (§5.2.6.4): for a driver of a legacy device that did not offer
    /// VIRTIO_F_ANY_LAYOUT.
    pub fn with_legacy_framing(mut self) -> Self {
        self.legacy_framing = true;
        self
    }

    /// The same watch for a crypto device with `limits`: its control and
    /// data requests are judged too (§5.9.7).
    pub fn with_crypto(mut self, limits: super::crypto::CryptoLimits) -> Self {
        self.crypto = Some(super::crypto::CryptoState::new(limits));
        self
    }

    /// The same watch for an entropy device (§5.4.6.1).
    pub fn with_rng(mut self) -> Self {
        self.rng = true;
        self
    }

    /// The same watch for a console, `multiport` if
    /// VIRTIO_CONSOLE_F_MULTIPORT was negotiated (§5.3.6).
    pub fn with_console(mut self, multiport: bool) -> Self {
        self.console = Some(ConsoleState {
            multiport,
            ..ConsoleState::default()
        });
        self
    }

    /// The same watch without the comparison of exposed chains
    /// (device-cleanup#1), which is reported not observable with `why`.
    pub fn without_rewrite_check(mut self, why: &'static str) -> Self {
        self.no_rewrites = Some(why);
        self
    }

    /// The driver made queue `index` live with `layout` (DRIVER_OK, or
    /// vhost-user `SET_VRING_ADDR`): its areas' alignment and the used
    /// ring's initial flags are checked (§2.7, §2.7.10).
    pub fn queue(&mut self, mem: &dyn Memory, index: u16, layout: QueueLayout) {
        let aligned = layout.desc_table().0.is_multiple_of(16)
            && layout.avail_ring().0.is_multiple_of(2)
            && layout.used_ring().0.is_multiple_of(4);
        judge(&mut self.seen, ALIGNED, aligned, || {
            format!(
                "queue {index}: areas at {:#x}, {:#x}, {:#x}",
                layout.desc_table().0,
                layout.avail_ring().0,
                layout.used_ring().0
            )
        });
        let flags = u16_at(mem, layout.used_flags().0).unwrap_or(0);
        judge(&mut self.seen, USED_FLAGS_INIT, flags == 0, || {
            format!("queue {index}: used ring flags {flags:#x} when the queue went live")
        });
        let seen_avail = u16_at(mem, layout.avail_idx().0).unwrap_or(0);
        let seen_used = u16_at(mem, layout.used_idx().0).unwrap_or(0);
        if let Some(n) = &mut self.notify {
            n.queue(mem, index, layout);
        }
        self.queues.insert(
            index,
            Queue {
                layout,
                seen_avail,
                seen_used,
                exposed: BTreeMap::new(),
                taken: None,
            },
        );
    }

    /// The device has read queue `index`'s available ring up to `next`
    /// (its next available index) and returned control. A driver on
    /// another CPU can publish a chain after the watch looked and before
    /// the device read the index; the device may then take it, return it,
    /// and the driver reuse its descriptors, all before the watch looks
    /// again. The next look leaves such chains alone (their descriptors
    /// may already hold another request) instead of judging or keeping
    /// them.
    pub fn taken(&mut self, index: u16, next: u16) {
        if let Some(q) = self.queues.get_mut(&index) {
            q.taken = Some(next);
        }
    }

    /// The device is about to look at queue `index` (a notification, a
    /// poll): reads what the driver published since the last look.
    pub fn look(&mut self, mem: &dyn Memory, index: u16) {
        if let Some(n) = &mut self.notify {
            n.settle(mem, index);
        }
        let Some(mut q) = self.queues.remove(&index) else {
            return;
        };
        self.look_at(mem, index, &mut q);
        self.queues.insert(index, q);
    }

    fn look_at(&mut self, mem: &dyn Memory, index: u16, q: &mut Queue) {
        let l = q.layout;
        let size = l.size().get();
        // Chains the device returned since the last look are no longer
        // exposed.
        let used = u16_at(mem, l.used_idx().0).unwrap_or(q.seen_used);
        for h in returned_heads(mem, l, q.seen_used, used) {
            q.exposed.remove(&h);
        }
        q.seen_used = used;
        // Chains still exposed must be as the driver first wrote them.
        let exposed = if self.no_rewrites.is_some() {
            BTreeMap::new()
        } else {
            core::mem::take(&mut q.exposed)
        };
        for (head, copy) in &exposed {
            let Some(now) = self.chain_bytes(mem, l, *head) else {
                continue;
            };
            let h = *head;
            judge(&mut self.seen, NOT_ALTERED, now == *copy, || {
                let at = now
                    .iter()
                    .zip(copy.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let d = at / 16 * 16;
                let show = |v: &Vec<u8>| {
                    v.get(d..(d + 16).min(v.len()))
                        .map(|x| format!("{x:02x?}"))
                        .unwrap_or_default()
                };
                format!(
                    "queue {index}: chain {h} changed while the device owned it (byte {at} of {}: was {}, now {})",
                    copy.len(),
                    show(copy),
                    show(&now)
                )
            });
        }
        if self.no_rewrites.is_none() {
            q.exposed = exposed;
        }
        let flags = u16_at(mem, l.avail_flags().0).unwrap_or(0);
        if self.event_idx {
            judge(&mut self.seen, AVAIL_FLAGS_0, flags == 0, || {
                format!("queue {index}: available ring flags {flags:#x} with VIRTIO_F_EVENT_IDX")
            });
        } else {
            judge(&mut self.seen, AVAIL_FLAGS_0_OR_1, flags <= 1, || {
                format!("queue {index}: available ring flags {flags:#x}")
            });
        }
        let Some(avail) = u16_at(mem, l.avail_idx().0) else {
            return;
        };
        let ahead = avail.wrapping_sub(q.seen_avail);
        // More than a queue's worth since the last look is legal when the
        // device took chains meanwhile without the watch looking (e.g. a
        // receive queue filled from another queue's notification): the
        // driver's bound is the used index when it published (§2.7.6),
        // and the used index read now is at least that. Beyond it, the
        // index went back (or the driver exposed more than it has).
        let used_now = u16_at(mem, l.used_idx().0).unwrap_or(used);
        let reach = used_now.wrapping_add(size).wrapping_sub(q.seen_avail);
        if ahead > size && ahead > reach {
            judge(&mut self.seen, AVAIL_NOT_BACK, false, || {
                format!(
                    "queue {index}: available index went from {} to {avail} with used index {used_now} (queue size {size})",
                    q.seen_avail
                )
            });
            q.seen_avail = avail;
            return;
        }
        if ahead > 0 {
            keep(&mut self.seen, AVAIL_NOT_BACK);
        }
        // Only the last queue's worth of entries is still in the ring.
        let skipped = ahead.saturating_sub(size);
        let first = q.seen_avail.wrapping_add(skipped);
        let ahead = ahead - skipped;
        // A packet on a later transmit queue may follow a VQ_PAIRS_SET the
        // watch has not read yet: read the control queue first.
        if let Some((limits, state)) = &self.net
            && limits.is_tx(index)
            && index > 1
            && state.pairs_set.is_none()
            && let Some(ctrl) = limits.ctrl()
        {
            self.look(mem, ctrl);
        }
        for k in 0..ahead {
            let pos = first.wrapping_add(k);
            let slot = l.avail_slot(pos % size).0;
            let Some(head) = u16_at(mem, slot) else {
                continue;
            };
            // A chain behind the used index may be done with already (the
            // device took it on a path the watch did not see): its
            // descriptors, indirect table and buffers may be the driver's
            // again, holding anything. It is not judged.
            let done = (used_now.wrapping_sub(pos) as i16) > 0;
            // A chain the device took before this look (see `taken`): the
            // same, whatever the used index says (a device may complete out
            // of order).
            let taken_unseen = q.taken.is_some_and(|t| (t.wrapping_sub(pos) as i16) > 0);
            if done || taken_unseen {
                continue;
            }
            if self.walk(mem, index, l, head)
                && let Some(segs) = segments(mem, l, head)
            {
                self.judge_request(mem, index, head, &segs);
            }
            if self.no_rewrites.is_none()
                && let Some(copy) = self.chain_bytes(mem, l, head)
            {
                q.exposed.insert(head, copy);
            }
        }
        q.seen_avail = avail;
    }

    /// Judges a well-formed chain on queue `index` as a request of the
    /// device's type.
    fn judge_request(&mut self, mem: &dyn Memory, index: u16, head: u16, segs: &[Segment]) {
        if let Some(c) = &mut self.crypto {
            super::crypto::judge_crypto(&mut self.seen, mem, c, index, head, segs);
        }
        if let Some(limits) = self.blk {
            judge_blk(&mut self.seen, mem, &limits, index, segs);
            if self.legacy_framing {
                // §5.2.6.4: the header alone in the first descriptor, the
                // status byte alone in the last.
                let first = segs.first().copied();
                let last = segs.last().copied();
                let ok = segs.len() >= 2
                    && first.is_some_and(|(_, len, w)| len == 16 && !w)
                    && last.is_some_and(|(_, len, w)| len == 1 && w);
                judge(&mut self.seen, super::legacy::BLK_FRAMING, ok, || {
                    format!(
                        "queue {index}: a request of {} descriptors, first {first:?}, last {last:?} (address, length, device-writable)",
                        segs.len()
                    )
                });
                judge_legacy_scsi(&mut self.seen, mem, index, segs);
            }
        }
        if self.rng {
            judge_rng(&mut self.seen, index, segs);
        }
        if let Some(state) = &mut self.console {
            judge_console(&mut self.seen, mem, state, index, segs);
        }
        if let Some((limits, state)) = &mut self.net {
            if limits.is_rx(index) {
                note_net_rx(state, segs);
            } else if limits.is_tx(index) {
                let ctrl_live = limits.ctrl().is_some_and(|c| self.queues.contains_key(&c));
                judge_net_tx(&mut self.seen, mem, limits, state, ctrl_live, index, segs);
            } else if limits.ctrl() == Some(index) {
                let live: Vec<u16> = self.queues.keys().copied().chain([index]).collect();
                judge_net_ctrl(
                    &mut self.seen,
                    mem,
                    limits,
                    state,
                    &|q| live.contains(&q),
                    segs,
                );
            }
        }
    }

    /// The descriptor bytes of the chain at `head` (the table entries it
    /// follows, and an indirect table's), at most a queue's worth.
    fn chain_bytes(&self, mem: &dyn Memory, l: QueueLayout, head: u16) -> Option<Vec<u8>> {
        let size = l.size().get();
        let mut out = Vec::new();
        let mut i = head;
        for _ in 0..size {
            if i >= size {
                break;
            }
            let at = l.desc(i).0;
            let mut b = [0u8; 16];
            mem.read(virtio_core::memory::GuestAddress(at), &mut b)
                .ok()?;
            out.extend_from_slice(&b);
            let (addr, len, flags, next) = desc(mem, at)?;
            if flags & INDIRECT != 0 && len <= 16 * u32::from(size) {
                let mut t = alloc::vec![0u8; len as usize];
                mem.read(virtio_core::memory::GuestAddress(addr), &mut t)
                    .ok()?;
                out.extend_from_slice(&t);
            }
            if flags & NEXT == 0 {
                break;
            }
            i = next;
        }
        Some(out)
    }

    /// §6.1: without VIRTIO_F_ACCESS_PLATFORM a buffer's address is a
    /// physical one: the buffer lies in the guest's memory (its first and
    /// last byte can be read there).
    fn judge_address(&mut self, mem: &dyn Memory, index: u16, addr: u64, len: u32) {
        if self.access_platform {
            return;
        }
        let mut b = [0u8; 1];
        let last = addr.checked_add(u64::from(len.max(1)) - 1);
        let inside = mem
            .read(virtio_core::memory::GuestAddress(addr), &mut b)
            .is_ok()
            && last.is_some_and(|a| {
                mem.read(virtio_core::memory::GuestAddress(a), &mut b)
                    .is_ok()
            });
        judge(&mut self.seen, PHYSICAL_ONLY, inside, || {
            format!("queue {index}: a buffer at {addr:#x}+{len:#x} outside the guest's memory")
        });
    }

    /// Walks the chain at `head` as the driver wrote it and judges it;
    /// whether it is well formed (its requests can be read).
    fn walk(&mut self, mem: &dyn Memory, index: u16, l: QueueLayout, head: u16) -> bool {
        let size = l.size().get();
        let mut i = head;
        let mut steps = 0u32;
        let mut total: u64 = 0;
        let mut writable_seen = false;
        let mut framing_ok = true;
        loop {
            if i >= size {
                return false;
            }
            let Some((addr, len, flags, next)) = desc(mem, l.desc(i).0) else {
                return false;
            };
            steps += 1;
            total += u64::from(len);
            self.judge_address(mem, index, addr, len);
            if flags & INDIRECT != 0 {
                judge(&mut self.seen, INDIRECT_NEGOTIATED, self.indirect, || {
                    format!("queue {index}: VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC")
                });
                judge(
                    &mut self.seen,
                    NOT_INDIRECT_AND_NEXT,
                    flags & NEXT == 0,
                    || format!("queue {index}: descriptor {i} has both INDIRECT and NEXT"),
                );
                let n = len / 16;
                let mut ok = true;
                let mut nested = false;
                for k in 0..n.min(u32::from(size)) {
                    let Some((a2, l2, f2, _)) = desc(mem, addr + 16 * u64::from(k)) else {
                        break;
                    };
                    self.judge_address(mem, index, a2, l2);
                    total += u64::from(l2);
                    nested |= f2 & INDIRECT != 0;
                    if f2 & WRITE != 0 {
                        writable_seen = true;
                    } else if writable_seen {
                        ok = false;
                    }
                }
                framing_ok &= ok;
                judge(&mut self.seen, NO_NESTED_INDIRECT, !nested, || {
                    format!("queue {index}: an indirect table holds an INDIRECT descriptor")
                });
                break;
            }
            if flags & WRITE != 0 {
                writable_seen = true;
            } else if writable_seen {
                framing_ok = false;
            }
            if flags & NEXT == 0 {
                break;
            }
            if steps >= u32::from(size) {
                judge(&mut self.seen, CHAIN_WITHIN_SIZE, false, || {
                    format!(
                        "queue {index}: the chain at {head} is longer than the queue size {size} (or loops)"
                    )
                });
                judge(&mut self.seen, NO_LOOP, false, || {
                    format!("queue {index}: the chain at {head} does not end within the table")
                });
                return false;
            }
            i = next;
        }
        keep(&mut self.seen, CHAIN_WITHIN_SIZE);
        judge(&mut self.seen, NO_LOOP, total < 1u64 << 32, || {
            format!("queue {index}: the chain at {head} holds {total} bytes")
        });
        judge(&mut self.seen, WRITABLE_LAST, framing_ok, || {
            format!(
                "queue {index}: the chain at {head} has a device-readable buffer after a device-writable one"
            )
        });
        if self.indirect {
            keep(&mut self.seen, INDIRECT_NEGOTIATED);
        }
        framing_ok && total < 1u64 << 32
    }

    /// What the device may still access of the queues the watch follows
    /// (all live: the caller knows the session is open), leaving out
    /// `stopped` ones (`QueueReady` 0, §4.2.2.2): each ring area, and each
    /// buffer (and indirect table) of a chain the driver exposed and the
    /// device has not returned, as of the watch's last look (where the
    /// watch keeps them, see
    /// [`without_rewrite_check`](Self::without_rewrite_check); chains
    /// published since are left out, chains in the used ring since are
    /// returned). For [`super::cleanup::CleanupWatch`].
    pub fn live_ranges(&self, mem: &dyn Memory, stopped: &[u16]) -> Vec<LiveRange> {
        let mut out = Vec::new();
        for (&queue, q) in self.queues.iter().filter(|(i, _)| !stopped.contains(i)) {
            let l = q.layout;
            // Heads the device returned since the last look.
            let used = u16_at(mem, l.used_idx().0).unwrap_or(q.seen_used);
            let returned = returned_heads(mem, l, q.seen_used, used);
            let size = u64::from(l.size().get());
            for (what, addr, len) in [
                ("descriptor table", q.layout.desc_table().0, 16 * size),
                ("available ring", q.layout.avail_ring().0, 6 + 2 * size),
                ("used ring", q.layout.used_ring().0, 6 + 8 * size),
            ] {
                out.push(LiveRange {
                    addr,
                    len,
                    queue,
                    what,
                });
            }
            for &head in q.exposed.keys().filter(|h| !returned.contains(h)) {
                if let Some((addr, len, flags, _)) = desc(mem, l.desc(head).0)
                    && flags & INDIRECT != 0
                {
                    out.push(LiveRange {
                        addr,
                        len: u64::from(len),
                        queue,
                        what: "indirect table",
                    });
                }
                for (addr, len, _) in segments(mem, q.layout, head).unwrap_or_default() {
                    out.push(LiveRange {
                        addr,
                        len: u64::from(len),
                        queue,
                        what: "exposed buffer",
                    });
                }
            }
        }
        out
    }

    /// The watch's records (see [`super::DriverWatch::records`]).
    pub fn records(&self) -> Vec<Record> {
        let mut out = super::records_of(STATEMENTS, WATCH.name, &self.seen);
        if self.legacy_framing && self.blk.is_some() {
            out.extend(super::records_of(
                &[
                    super::legacy::BLK_FRAMING,
                    super::legacy::BLK_SCSI_CMD,
                    super::legacy::BLK_SCSI_FRAMING,
                ],
                super::legacy::WATCH.name,
                &self.seen,
            ));
        }
        if self.blk.is_some() {
            out.extend(super::records_of(
                BLK_STATEMENTS,
                BLK_WATCH.name,
                &self.seen,
            ));
        }
        if self.crypto.is_some() {
            out.extend(super::records_of(
                super::crypto::STATEMENTS,
                super::crypto::WATCH.name,
                &self.seen,
            ));
        }
        if self.rng {
            out.extend(super::records_of(
                RNG_STATEMENTS,
                RNG_WATCH.name,
                &self.seen,
            ));
        }
        if let Some(state) = &self.console {
            let mut c = super::records_of(CONSOLE_STATEMENTS, CONSOLE_WATCH.name, &self.seen);
            // §5.3.6.2: with MULTIPORT the driver sends DEVICE_READY; judged
            // over the session, once the control transmitq (3) was live.
            let outcome = if !state.multiport {
                crate::Outcome::NotObservable(
                    "VIRTIO_CONSOLE_F_MULTIPORT was not negotiated".into(),
                )
            } else if state.device_ready {
                crate::Outcome::Pass
            } else if self.queues.contains_key(&3) {
                crate::Outcome::Fail(
                    "MULTIPORT negotiated and the control transmitq set up, but no VIRTIO_CONSOLE_DEVICE_READY in the session".into(),
                )
            } else {
                crate::Outcome::NotObservable("the control transmitq was never set up".into())
            };
            for r in c.iter_mut().filter(|r| r.statement == CONSOLE_DEVICE_READY) {
                r.outcome = outcome.clone();
            }
            // §5.3.6.2.2: every CONSOLE_PORT answered by the end.
            for r in c.iter_mut().filter(|r| r.statement == CONSOLE_PORT_OPENED) {
                if !state.nominated.is_empty() {
                    r.outcome = crate::Outcome::Fail(format!(
                        "CONSOLE_PORT for port(s) {:?} never answered with PORT_OPEN",
                        state.nominated
                    ));
                } else if state.answered == 0 && !matches!(r.outcome, crate::Outcome::Fail(_)) {
                    r.outcome = crate::Outcome::NotObservable(
                        "the device named no console port (CONSOLE_PORT) on this path".into(),
                    );
                }
            }
            out.extend(c);
        }
        if let Some((limits, state)) = &self.net {
            let mut net = super::records_of(NET_STATEMENTS, NET_WATCH.name, &self.seen);
            let enough = limits.mtu.map(|m| (m, state.rx_enough(m, limits.merged())));
            for r in net.iter_mut().filter(|r| r.statement == NET_MAC_USED) {
                r.outcome = match limits.mac.map(|m| (m, state.mac_used(m))) {
                    None => crate::Outcome::NotObservable(
                        "VIRTIO_NET_F_MAC is not among the features the device was given (a vhost-user frontend such as QEMU keeps it)".into(),
                    ),
                    Some((_, Some(Ok(())))) => crate::Outcome::Pass,
                    Some((_, Some(Err(e)))) => crate::Outcome::Warn(e),
                    Some((_, None)) => crate::Outcome::NotObservable(
                        "no transmitted frame came from the driver's address, nor enough from one other".into(),
                    ),
                };
            }
            for r in net.iter_mut().filter(|r| r.statement == NET_RX_ENOUGH) {
                r.outcome = match enough {
                    None => {
                        crate::Outcome::NotObservable("VIRTIO_NET_F_MTU was not negotiated".into())
                    }
                    Some((_, None)) => crate::Outcome::NotObservable(
                        "the driver supplied no receive buffers".into(),
                    ),
                    Some((_, Some(true))) => crate::Outcome::Pass,
                    Some((m, Some(false))) => crate::Outcome::Fail(format!(
                        "mtu {m}: the receive chains seen hold at most {} bytes each, {} in all",
                        state.rx_largest, state.rx_total
                    )),
                };
            }
            let hidden = match limits.ctrl() {
                None => Some("no control queue was negotiated"),
                Some(c) if !self.queues.contains_key(&c) => Some(
                    "the control queue is not the device's on this path (a vhost-user frontend keeps it)",
                ),
                Some(_) => None,
            };
            if let Some(why) = hidden {
                for r in net
                    .iter_mut()
                    .filter(|r| NET_CTRL_STATEMENTS.contains(&r.statement))
                {
                    if !matches!(r.outcome, crate::Outcome::Fail(_)) {
                        r.outcome = crate::Outcome::NotObservable(why.into());
                    }
                }
            }
            out.extend(net);
        }
        match &self.notify {
            Some(n) => out.extend(n.records()),
            None => out.extend(notify::not_observable(
                "notifications are judged in process only: elsewhere the device acts on its own thread and notifications reach it merged (an eventfd)",
            )),
        }
        if let Some(why) = self.no_rewrites {
            for r in out.iter_mut().filter(|r| r.statement == NOT_ALTERED) {
                r.outcome = crate::Outcome::NotObservable(why.into());
            }
        }
        out
    }
}

/// A legacy SCSI command (`VIRTIO_BLK_T_SCSI_CMD`, with or without the
/// OUT bit: types 2 and 3) on a legacy block device without
/// VIRTIO_F_ANY_LAYOUT (§5.2.6.3, §5.2.6.4): after the 16-byte header,
/// `cmd` alone in a device-readable descriptor; at the end, the 96-byte
/// sense buffer, the 16 bytes of `errors`, `data_len`, `sense_len` and
/// `residual`, and the status byte, each a device-writable descriptor of
/// its own. Other request types are not judged here.
fn judge_legacy_scsi(
    seen: &mut BTreeMap<&'static str, Seen>,
    mem: &dyn Memory,
    index: u16,
    segs: &[Segment],
) {
    let Some(&(addr, len, false)) = segs.first() else {
        return;
    };
    if len < 4 {
        return;
    }
    let mut t = [0u8; 4];
    if mem
        .read(virtio_core::memory::GuestAddress(addr), &mut t)
        .is_err()
    {
        return;
    }
    if u32::from_le_bytes(t) & !1 != 2 {
        return;
    }
    let cmd = segs.get(1).copied();
    let cmd_ok = len == 16 && cmd.is_some_and(|(_, l, w)| !w && l > 0);
    judge(seen, super::legacy::BLK_SCSI_CMD, cmd_ok, || {
        format!(
            "queue {index}: a SCSI command whose header descriptor is {len} bytes and whose next descriptor is {cmd:?} (address, length, device-writable)"
        )
    });
    let n = segs.len();
    let tail = segs.get(n.saturating_sub(3)..).unwrap_or(&[]);
    let tail_ok = n >= 5 && matches!(tail, [(_, 96, true), (_, 16, true), (_, 1, true)]);
    judge(seen, super::legacy::BLK_SCSI_FRAMING, tail_ok, || {
        format!(
            "queue {index}: a SCSI command of {n} descriptors ending {tail:?} (address, length, device-writable); want sense 96, then 16, then the status byte"
        )
    });
}

#[cfg(test)]
mod tests {
    use virtio_core::memory::GuestAddress;

    use super::*;
    use crate::Outcome;
    use crate::driver::requests::{BlkLimits, NetLimits};
    use crate::driver::test_ram::{Ram, layout, put};

    fn setup() -> (Ram, QueueLayout, RingWatch) {
        let ram = Ram::new(0x10000);
        let l = layout(8, 0x1000);
        let mut w = RingWatch::new(TransportFeatures::RING_INDIRECT_DESC.bits());
        w.queue(&ram, 0, l);
        (ram, l, w)
    }

    fn publish(ram: &Ram, l: &QueueLayout, n: u16, head: u16) {
        ram.write(l.avail_slot(n), &head.to_le_bytes()).unwrap();
        ram.store_u16_release(l.avail_idx(), n + 1).unwrap();
    }

    fn outcome(w: &RingWatch, s: &str) -> Outcome {
        w.records()
            .into_iter()
            .find(|r| r.statement == s)
            .unwrap()
            .outcome
    }

    #[test]
    fn a_well_formed_chain_keeps_the_statements() {
        let (ram, l, mut w) = setup();
        put(&ram, &l, 0, 0x8000, 16, NEXT, 1);
        put(&ram, &l, 1, 0x8100, 512, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        for s in [
            ALIGNED,
            WRITABLE_LAST,
            NO_LOOP,
            CHAIN_WITHIN_SIZE,
            AVAIL_NOT_BACK,
            USED_FLAGS_INIT,
        ] {
            assert_eq!(outcome(&w, s), Outcome::Pass, "{s}");
        }
    }

    #[test]
    fn section_2_7_4_and_2_7_5_3_bad_chains_are_caught() {
        let (ram, l, mut w) = setup();
        // Writable then readable.
        put(&ram, &l, 0, 0x8000, 16, WRITE | NEXT, 1);
        put(&ram, &l, 1, 0x8100, 16, 0, 0);
        publish(&ram, &l, 0, 0);
        // A loop.
        put(&ram, &l, 2, 0x8200, 16, NEXT, 3);
        put(&ram, &l, 3, 0x8300, 16, NEXT, 2);
        publish(&ram, &l, 1, 2);
        // INDIRECT and NEXT, with an INDIRECT inside the table.
        put(&ram, &l, 4, 0x9000, 16, INDIRECT | NEXT, 5);
        put(&ram, &l, 5, 0x8400, 16, 0, 0);
        ram.write(GuestAddress(0x9000 + 12), &INDIRECT.to_le_bytes())
            .unwrap();
        publish(&ram, &l, 2, 4);
        w.look(&ram, 0);
        for s in [
            WRITABLE_LAST,
            NO_LOOP,
            CHAIN_WITHIN_SIZE,
            NOT_INDIRECT_AND_NEXT,
            NO_NESTED_INDIRECT,
        ] {
            assert!(
                matches!(outcome(&w, s), Outcome::Fail(_)),
                "{s}: {:?}",
                outcome(&w, s)
            );
        }
    }

    #[test]
    fn section_2_7_6_and_3_3_1_a_decrement_and_a_rewritten_chain_are_caught() {
        let (ram, l, mut w) = setup();
        put(&ram, &l, 0, 0x8000, 64, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        // The driver rewrites the exposed chain, then takes the index back.
        put(&ram, &l, 0, 0x8800, 64, WRITE, 0);
        w.look(&ram, 0);
        ram.store_u16_release(l.avail_idx(), 0).unwrap();
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, NOT_ALTERED), Outcome::Fail(_)));
        assert!(matches!(outcome(&w, AVAIL_NOT_BACK), Outcome::Fail(_)));
    }

    /// The race a driver on another CPU makes (§3.3.1): it publishes a
    /// chain after the watch looked; the device reads the index, takes it
    /// and completes it out of order; then the watch looks (the chain is
    /// done, behind the used index only by count) and the driver reuses
    /// the head for another request. Told how far the device read
    /// (`taken`), the watch leaves that chain alone; without it, it keeps
    /// a copy of a chain the device already returned and reports the
    /// driver's legal reuse as a rewrite.
    #[test]
    fn section_3_3_1_a_chain_the_device_took_unseen_is_not_a_rewrite() {
        for told in [true, false] {
            let (ram, l, mut w) = setup();
            // Head 1 is exposed and seen; the device holds it.
            put(&ram, &l, 1, 0x8000, 64, WRITE, 0);
            publish(&ram, &l, 0, 1);
            w.look(&ram, 0);
            // Head 0, published after the look; the device reads the index
            // up to 2 and completes head 0 first.
            put(&ram, &l, 0, 0x9000, 64, WRITE, 0);
            publish(&ram, &l, 1, 0);
            ram.write(l.used_slot(0), &[0, 0, 0, 0, 64, 0, 0, 0])
                .unwrap();
            ram.store_u16_release(l.used_idx(), 1).unwrap();
            if told {
                w.taken(0, 2);
            }
            w.look(&ram, 0);
            // The driver reuses head 0 for a new request.
            put(&ram, &l, 0, 0xa000, 128, WRITE, 0);
            publish(&ram, &l, 2, 0);
            w.look(&ram, 0);
            let o = outcome(&w, NOT_ALTERED);
            if told {
                assert_eq!(o, Outcome::Pass, "{o:?}");
            } else {
                assert!(matches!(o, Outcome::Fail(_)), "{o:?}");
            }
        }
    }

    /// §5.3.6.2.2: the device names port 5 a console (CONSOLE_PORT on the
    /// control receiveq, queue 2); the driver answers PORT_OPEN 1 on the
    /// control transmitq (queue 3): kept; no answer by the end, or value
    /// 0, is the breach.
    #[test]
    fn section_5_3_6_2_2_console_port_is_answered_with_port_open_1() {
        for answer in [Some(1u16), Some(0), None] {
            let ram = Ram::new(0x10000);
            let layout = |base: u64| layout(8, base);
            let (crx, ctx) = (layout(0x1000), layout(0x2000));
            let mut w = RingWatch::new(0).with_console(true);
            w.queue(&ram, 2, crx);
            w.queue(&ram, 3, ctx);
            // The device returns the driver's control buffer at 0x8000
            // holding CONSOLE_PORT for port 5.
            put(&ram, &crx, 0, 0x8000, 8, WRITE, 0);
            publish(&ram, &crx, 0, 0);
            w.look(&ram, 2);
            let mut m = [0u8; 8];
            m[0..4].copy_from_slice(&5u32.to_le_bytes());
            m[4..6].copy_from_slice(&4u16.to_le_bytes());
            m[6..8].copy_from_slice(&1u16.to_le_bytes());
            ram.write(GuestAddress(0x8000), &m).unwrap();
            ram.write(crx.used_slot(0), &[0, 0, 0, 0, 8, 0, 0, 0])
                .unwrap();
            ram.store_u16_release(crx.used_idx(), 1).unwrap();
            w.returned(&ram, 2, crx, 0, 1);
            if let Some(v) = answer {
                m[4..6].copy_from_slice(&6u16.to_le_bytes());
                m[6..8].copy_from_slice(&v.to_le_bytes());
                ram.write(GuestAddress(0x9000), &m).unwrap();
                put(&ram, &ctx, 0, 0x9000, 8, 0, 0);
                publish(&ram, &ctx, 0, 0);
                w.look(&ram, 3);
            }
            let o = outcome(&w, CONSOLE_PORT_OPENED);
            match answer {
                Some(1) => assert_eq!(o, Outcome::Pass),
                _ => assert!(matches!(o, Outcome::Fail(_)), "{answer:?}: {o:?}"),
            }
        }
    }

    /// §6.1: without VIRTIO_F_ACCESS_PLATFORM every buffer is in the
    /// guest's memory; one past its end is the breach.
    #[test]
    fn section_6_1_buffers_are_physical_addresses() {
        let (ram, l, mut w) = setup();
        put(&ram, &l, 0, 0x8000, 64, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        assert_eq!(outcome(&w, PHYSICAL_ONLY), Outcome::Pass);
        put(&ram, &l, 1, 0xfff0, 0x20, WRITE, 0);
        publish(&ram, &l, 1, 1);
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, PHYSICAL_ONLY), Outcome::Fail(_)));
    }

    /// A 16-byte block request header at `at`.
    fn header(ram: &Ram, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        ram.write(GuestAddress(at), &h).unwrap();
    }

    /// [`setup`] with the watch judging a legacy block device without
    /// ANY_LAYOUT (16 sectors).
    fn legacy_blk_setup() -> (Ram, QueueLayout, RingWatch) {
        let (ram, l, w) = setup();
        let limits = BlkLimits {
            capacity: 16,
            max_discard_seg: None,
            max_write_zeroes_seg: None,
        };
        (ram, l, w.with_blk(limits).with_legacy_framing())
    }

    /// §5.2.6.4 legacy framing: the header alone first and the status
    /// byte alone last are kept; the header sharing a buffer with the data
    /// is the breach.
    #[test]
    fn section_5_2_6_4_legacy_block_framing() {
        use crate::driver::legacy::BLK_FRAMING;
        let (ram, l, mut w) = legacy_blk_setup();
        header(&ram, 0x8000, 1, 0);
        put(&ram, &l, 0, 0x8000, 16, NEXT, 1);
        put(&ram, &l, 1, 0x8100, 512, NEXT, 2);
        put(&ram, &l, 2, 0x8400, 1, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        assert_eq!(outcome(&w, BLK_FRAMING), Outcome::Pass);
        // A write whose header and data share one 528-byte buffer.
        header(&ram, 0x9000, 1, 1);
        put(&ram, &l, 3, 0x9000, 528, NEXT, 4);
        put(&ram, &l, 4, 0x9400, 1, WRITE, 0);
        publish(&ram, &l, 1, 3);
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, BLK_FRAMING), Outcome::Fail(_)));
    }

    /// §5.2.6.3, §5.2.6.4: a legacy SCSI command framed as the spec
    /// lays it out keeps both statements; `cmd` in the header's buffer
    /// and the sense buffer sharing a descriptor with the counters break
    /// them. Other request types leave them unjudged.
    #[test]
    fn section_5_2_6_4_legacy_scsi_framing() {
        use crate::driver::legacy::{BLK_SCSI_CMD, BLK_SCSI_FRAMING};
        let (ram, l, mut w) = legacy_blk_setup();
        // A read: SCSI is not judged.
        header(&ram, 0x8000, 0, 0);
        put(&ram, &l, 0, 0x8000, 16, NEXT, 1);
        put(&ram, &l, 1, 0x8100, 512, WRITE | NEXT, 2);
        put(&ram, &l, 2, 0x8400, 1, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        assert!(matches!(
            outcome(&w, BLK_SCSI_CMD),
            Outcome::NotObservable(_)
        ));
        // TEST UNIT READY: header, a 6-byte cmd, sense, counters, status.
        header(&ram, 0x9000, 2, 0);
        put(&ram, &l, 3, 0x9000, 16, NEXT, 4);
        put(&ram, &l, 4, 0x9100, 6, NEXT, 5);
        put(&ram, &l, 5, 0x9200, 96, WRITE | NEXT, 6);
        put(&ram, &l, 6, 0x9300, 16, WRITE | NEXT, 7);
        put(&ram, &l, 7, 0x9400, 1, WRITE, 0);
        publish(&ram, &l, 1, 3);
        w.look(&ram, 0);
        assert_eq!(outcome(&w, BLK_SCSI_CMD), Outcome::Pass);
        assert_eq!(outcome(&w, BLK_SCSI_FRAMING), Outcome::Pass);
        // The cmd after the header in one buffer; sense and counters in
        // one 112-byte buffer.
        let (ram, l, mut w) = legacy_blk_setup();
        header(&ram, 0xa000, 3, 0);
        put(&ram, &l, 0, 0xa000, 22, NEXT, 1);
        put(&ram, &l, 1, 0xa100, 512, NEXT, 2);
        put(&ram, &l, 2, 0xa400, 112, WRITE | NEXT, 3);
        put(&ram, &l, 3, 0xa500, 1, WRITE, 0);
        publish(&ram, &l, 0, 0);
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, BLK_SCSI_CMD), Outcome::Fail(_)));
        assert!(matches!(outcome(&w, BLK_SCSI_FRAMING), Outcome::Fail(_)));
    }

    #[test]
    fn section_5_2_6_1_bad_block_requests_are_caught() {
        use super::super::requests::BLK_STATEMENTS;
        let (ram, l, w) = setup();
        let limits = BlkLimits {
            capacity: 16,
            max_discard_seg: Some(1),
            max_write_zeroes_seg: Some(1),
        };
        let mut w = w.with_blk(limits);
        // A read of 1000 bytes at sector 15 (not whole sectors, and past
        // the end).
        header(&ram, 0x8000, 0, 15);
        put(&ram, &l, 0, 0x8000, 16, NEXT, 1);
        put(&ram, &l, 1, 0x8100, 1000, WRITE | NEXT, 2);
        put(&ram, &l, 2, 0x8600, 1, WRITE, 0);
        publish(&ram, &l, 0, 0);
        // A FLUSH with a sector and data.
        header(&ram, 0x9000, 4, 3);
        put(&ram, &l, 3, 0x9000, 16, NEXT, 4);
        put(&ram, &l, 4, 0x9100, 512, NEXT, 5);
        put(&ram, &l, 5, 0x9400, 1, WRITE, 0);
        publish(&ram, &l, 1, 3);
        // A DISCARD of two ranges (limit 1), one with UNMAP, plus 8 bytes.
        header(&ram, 0xa000, 11, 0);
        let mut list = [0u8; 40];
        list[8..12].copy_from_slice(&1u32.to_le_bytes());
        list[12..16].copy_from_slice(&1u32.to_le_bytes());
        ram.write(GuestAddress(0xa010), &list).unwrap();
        put(&ram, &l, 6, 0xa000, 56, NEXT, 7);
        put(&ram, &l, 7, 0xa100, 1, WRITE, 0);
        publish(&ram, &l, 2, 6);
        w.look(&ram, 0);
        // A GET_ID with 16 bytes, in descriptors the device returned.
        ram.write(l.used_slot(0), &[0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        ram.store_u16_release(l.used_idx(), 1).unwrap();
        header(&ram, 0xb000, 8, 0);
        put(&ram, &l, 0, 0xb000, 16, NEXT, 1);
        put(&ram, &l, 1, 0xb100, 17, WRITE, 0);
        publish(&ram, &l, 3, 0);
        w.look(&ram, 0);
        for s in BLK_STATEMENTS {
            if *s == "driver:blk/device-operation#11" {
                assert!(matches!(outcome(&w, s), Outcome::NotObservable(_)), "{s}");
                continue;
            }
            assert!(
                matches!(outcome(&w, s), Outcome::Fail(_)),
                "{s}: {:?}",
                outcome(&w, s)
            );
        }
    }

    #[test]
    fn section_5_1_6_2_and_5_1_6_5_bad_net_packets_and_commands_are_caught() {
        use super::super::requests::NET_STATEMENTS;
        let ram = Ram::new(0x10000);
        let layout = |base: u64| layout(8, base);
        // Two pairs, a control queue (4), MTU 1500; no offloads.
        let limits = NetLimits {
            features: 1 << 3 | 1 << 17 | 1 << 18 | 1 << 22,
            mtu: Some(1500),
            max_pairs: 2,
            mac: None,
        };
        let mut w = RingWatch::new(0).with_net(limits);
        let (rx0, tx0, tx1, ctrl) = (
            layout(0x1000),
            layout(0x2000),
            layout(0x3000),
            layout(0x4000),
        );
        w.queue(&ram, 0, rx0);
        w.queue(&ram, 1, tx0);
        w.queue(&ram, 3, tx1);
        w.queue(&ram, 4, ctrl);
        // A small receive buffer only.
        put(&ram, &rx0, 0, 0x8000, 64, WRITE, 0);
        publish(&ram, &rx0, 0, 0);
        // A header with flags (no CSUM), num_buffers 1, DATA_VALID, a
        // frame over the MTU, on transmit queue 0.
        let mut h = [0u8; 12];
        h[0] = 2;
        h[10] = 1;
        ram.write(GuestAddress(0x9000), &h).unwrap();
        put(&ram, &tx0, 0, 0x9000, 12 + 1600, 0, 0);
        publish(&ram, &tx0, 0, 0);
        // A packet on transmit queue 1 before any VQ_PAIRS_SET.
        ram.write(GuestAddress(0xa000), &[0u8; 12]).unwrap();
        put(&ram, &tx1, 0, 0xa000, 80, 0, 0);
        publish(&ram, &tx1, 0, 0);
        w.look(&ram, 3);
        // VQ_PAIRS_SET 3 (more than max) with queue 2 never set up; a
        // MAC table whose unicast entry is multicast; an RX_EXTRA command.
        let cmd = |at: u64, bytes: &[u8], i: u16, n: u16| {
            ram.write(GuestAddress(at), bytes).unwrap();
            put(&ram, &ctrl, 2 * i, at, bytes.len() as u32, NEXT, 2 * i + 1);
            put(&ram, &ctrl, 2 * i + 1, at + 0x100, 1, WRITE, 0);
            publish(&ram, &ctrl, n, 2 * i);
        };
        cmd(0xb000, &[4, 0, 3, 0], 0, 0);
        let mut table = alloc::vec![1, 0];
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        table.extend_from_slice(&0u32.to_le_bytes());
        cmd(0xc000, &table, 1, 1);
        cmd(0xd000, &[0, 3, 1], 2, 2);
        for q in [0, 1, 4] {
            w.look(&ram, q);
        }
        let fails: Vec<&str> = NET_STATEMENTS
            .iter()
            .copied()
            .filter(|s| matches!(outcome(&w, s), Outcome::Fail(_)))
            .collect();
        for s in [
            "driver:net/device-operation/packet-transmission#2",
            "driver:net/device-operation/packet-transmission#3",
            "driver:net/device-operation/packet-transmission#30",
            "driver:net/device-configuration-layout#7",
            "driver:net/device-configuration-layout#8",
            "driver:net/device-operation/control-virtqueue/packet-receive-filtering#2",
            "driver:net/device-operation/control-virtqueue/setting-mac-address-filtering#3",
            "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#1",
            "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#2",
            "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#3",
        ] {
            assert!(fails.contains(&s), "{s} not caught: {fails:?}");
        }
    }

    /// Hostile driver input to the watch: VQ_PAIRS_SET 0x8000 and 0xffff,
    /// a 5000-byte control command, a discard whose one segment descriptor
    /// claims 4 GiB past the end of memory, a chain of 8 GiB. Each is
    /// judged as the breach it is, without a panic (and no prefix over
    /// 1 MiB is copied, `requests::MAX_PREFIX`: the 4 GiB claim once made
    /// the watch allocate 4 GiB).
    #[test]
    fn hostile_requests_are_judged_without_panicking() {
        use super::super::requests::{BLK_STATEMENTS, NET_STATEMENTS};
        let ram = Ram::new(0x20000);
        let limits = NetLimits {
            features: 1 << 17 | 1 << 18 | 1 << 22,
            mtu: None,
            max_pairs: 2,
            mac: None,
        };
        let mut w = RingWatch::new(0).with_net(limits);
        let ctrl = layout(8, 0x4000);
        w.queue(&ram, 4, ctrl);
        let cmd = |at: u64, bytes: &[u8], i: u16| {
            ram.write(GuestAddress(at), bytes).unwrap();
            put(&ram, &ctrl, 2 * i, at, bytes.len() as u32, NEXT, 2 * i + 1);
            put(&ram, &ctrl, 2 * i + 1, 0x1_f000 + u64::from(i), 1, WRITE, 0);
            publish(&ram, &ctrl, i, 2 * i);
        };
        cmd(0x8000, &[4, 0, 0x00, 0x80], 0);
        cmd(0x8100, &[4, 0, 0xff, 0xff], 1);
        let mut big = alloc::vec![0u8; 5000];
        big[0] = 1; // VIRTIO_NET_CTRL_MAC, MAC_TABLE_SET
        cmd(0x9000, &big, 2);
        w.look(&ram, 4);
        let steering = "driver:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#1";
        assert!(NET_STATEMENTS.contains(&steering));
        assert!(matches!(outcome(&w, steering), Outcome::Fail(_)));

        let (ram, l, w) = setup();
        let limits = BlkLimits {
            capacity: 1 << 20,
            max_discard_seg: Some(1),
            max_write_zeroes_seg: Some(1),
        };
        let mut w = w.with_blk(limits);
        // DISCARD: the header, then a "segment list" of 4 GiB - 16 at
        // 0x9000 (memory ends at 0x10000), then the status.
        header(&ram, 0x8000, 11, 0);
        put(&ram, &l, 0, 0x8000, 16, NEXT, 1);
        put(&ram, &l, 1, 0x9000, 0xffff_fff0, NEXT, 2);
        put(&ram, &l, 2, 0x8800, 1, WRITE, 0);
        publish(&ram, &l, 0, 0);
        // A read whose two data buffers add up to 8 GiB.
        header(&ram, 0xa000, 0, 0);
        put(&ram, &l, 3, 0xa000, 16, NEXT, 4);
        put(&ram, &l, 4, 0xb000, u32::MAX, WRITE | NEXT, 5);
        put(&ram, &l, 5, 0xb000, u32::MAX, WRITE | NEXT, 6);
        put(&ram, &l, 6, 0xa800, 1, WRITE, 0);
        publish(&ram, &l, 1, 3);
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, PHYSICAL_ONLY), Outcome::Fail(_)));
        assert!(matches!(outcome(&w, NO_LOOP), Outcome::Fail(_)));
        // Every block statement has a record (the watch went on).
        for s in BLK_STATEMENTS {
            let _ = outcome(&w, s);
        }
    }

    /// §5.1.4.2: with VIRTIO_NET_F_MAC the driver's frames come from
    /// `mac` (or an address it set); eight frames all from one other
    /// address are a warning (a driver may change its address without
    /// telling the device).
    #[test]
    fn section_5_1_4_2_the_driver_uses_mac() {
        for (src, want) in [([2u8, 0, 0, 0, 0, 1], true), ([2, 9, 9, 9, 9, 9], false)] {
            let ram = Ram::new(0x10000);
            let tx = layout(16, 0x1000);
            let limits = NetLimits {
                features: 1 << 5,
                mtu: None,
                max_pairs: 1,
                mac: Some([2, 0, 0, 0, 0, 1]),
            };
            let mut w = RingWatch::new(0).with_net(limits);
            w.queue(&ram, 1, tx);
            for i in 0..8u16 {
                let at = 0x8000 + 0x100 * u64::from(i);
                let mut f = [0u8; 12 + 60];
                f[12..18].copy_from_slice(&[0xff; 6]);
                f[18..24].copy_from_slice(&src);
                ram.write(GuestAddress(at), &f).unwrap();
                put(&ram, &tx, i, at, 72, 0, 0);
                publish(&ram, &tx, i, i);
            }
            w.look(&ram, 1);
            let o = outcome(&w, NET_MAC_USED);
            if want {
                assert_eq!(o, Outcome::Pass);
            } else {
                assert!(matches!(o, Outcome::Warn(_)), "{o:?}");
            }
        }
    }

    #[test]
    fn section_2_7_6_more_than_a_queue_since_the_last_look_is_legal_when_the_device_took_them() {
        let (ram, l, mut w) = setup();
        // The device took 10 chains without the watch looking; the driver
        // then made 12 available in all (4 more than the queue between
        // looks, but only 2 outstanding).
        for i in 0..8u16 {
            put(&ram, &l, i, 0x8000 + 0x100 * u64::from(i), 64, WRITE, 0);
            ram.write(l.avail_slot(i), &i.to_le_bytes()).unwrap();
        }
        ram.store_u16_release(l.used_idx(), 10).unwrap();
        ram.store_u16_release(l.avail_idx(), 12).unwrap();
        w.look(&ram, 0);
        assert_eq!(outcome(&w, AVAIL_NOT_BACK), Outcome::Pass);
        // Back to 11: a decrement.
        ram.store_u16_release(l.avail_idx(), 11).unwrap();
        w.look(&ram, 0);
        assert!(matches!(outcome(&w, AVAIL_NOT_BACK), Outcome::Fail(_)));
    }
}
