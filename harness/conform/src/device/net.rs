//! Network device requirements (§5.1): configuration, the headers of
//! received packets, merged receive buffers, transmitted headers, the
//! control queue's receive filters and MAC address, and receive steering
//! with several queue pairs.
//!
//! The checks need frames to come back: the device's backend must return
//! what the driver transmits (a loopback or hub netdev, our checks' set-up).
//! A device whose backend does not gets its receive statements reported
//! not observable ("nothing came back"), never pass.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, NetFeatures, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::regs;

use super::Dev;
use crate::checksum::{fold, sum16};
use crate::ring::{Buf, bytes};
use crate::{Check, Ctx, Outcome, Patience};

const CFG_PAIRS: &str = "device:net/device-configuration-layout#1";
const CFG_MTU: &str = "device:net/device-configuration-layout#2";
const CFG_MTU_1280: &str = "device:net/device-configuration-layout#3";
const MTU_FIXED: &str = "device:net/device-configuration-layout#4";
const MTU_NO_BIGGER: &str = "device:net/device-configuration-layout#5";
const MTU_FORWARDED: &str = "device:net/device-configuration-layout#6";
const TX_UNKNOWN_FLAGS: &str = "device:net/device-operation/packet-transmission#1";
const TX_NO_CSUM_FIELDS: &str = "device:net/device-operation/packet-transmission#2";
const RX_NUM_BUFFERS: &str = "device:net/device-operation/setting-up-receive-buffers#1";
const RX_ONE_BUFFER: &str = "device:net/device-operation/setting-up-receive-buffers#2";
const RX_NUM_BUFFERS_1: &str = "device:net/device-operation/processing-of-incoming-packets#1";
const MRG_NUM_BUFFERS: &str = "device:net/device-operation/processing-of-incoming-packets#2";
const MRG_FULL: &str = "device:net/device-operation/processing-of-incoming-packets#3";
const MRG_TOGETHER: &str = "device:net/device-operation/processing-of-incoming-packets#4";
const RX_FLAGS_ZERO: &str = "device:net/device-operation/processing-of-incoming-packets#5";
const RX_NO_GSO_UDP: &str = "device:net/device-operation/processing-of-incoming-packets#7";
const RX_GSO_NEEDS_CSUM: &str = "device:net/device-operation/processing-of-incoming-packets#20";
const RX_NO_TSO4: &str = "device:net/device-operation/processing-of-incoming-packets#6";
const RX_NO_TSO6: &str = "device:net/device-operation/processing-of-incoming-packets#8";
const RX_NO_TUNNEL: &str = "device:net/device-operation/processing-of-incoming-packets#10";
const RX_NO_TUNNEL_CSUM: &str = "device:net/device-operation/processing-of-incoming-packets#11";
const RX_NO_ECN: &str = "device:net/device-operation/processing-of-incoming-packets#12";
const RX_NO_TUNNEL_GSO: &str = "device:net/device-operation/processing-of-incoming-packets#17";
const RX_NO_TUNNEL_GSO_CSUM: &str = "device:net/device-operation/processing-of-incoming-packets#18";
const RX_NO_RSC: &str = "device:net/device-operation/processing-of-incoming-packets#22";
const RX_TUNNEL_NO_DATA_VALID: &str =
    "device:net/device-operation/processing-of-incoming-packets#25";
const PROMISC: &str = "device:net/device-operation/control-virtqueue/packet-receive-filtering#1";
const PROMISC_BYTE: &str =
    "device:net/device-operation/control-virtqueue/packet-receive-filtering#2";
const PROMISC_ALL: &str =
    "device:net/device-operation/control-virtqueue/packet-receive-filtering#3";
const ALLMULTI: &str = "device:net/device-operation/control-virtqueue/packet-receive-filtering#5";
const ALLMULTI_BYTE: &str =
    "device:net/device-operation/control-virtqueue/packet-receive-filtering#6";
const ALLMULTI_ALL: &str =
    "device:net/device-operation/control-virtqueue/packet-receive-filtering#7";
const TABLE_EMPTY: &str =
    "device:net/device-operation/control-virtqueue/setting-mac-address-filtering#1";
const TABLE_BEFORE_USED: &str =
    "device:net/device-operation/control-virtqueue/setting-mac-address-filtering#2";
const MAC_BEFORE_USED: &str =
    "device:net/device-operation/control-virtqueue/setting-mac-address-filtering#3";
const DROP_UNMATCHED: &str =
    "device:net/device-operation/control-virtqueue/setting-mac-address-filtering#4";
const STEER_FIRST: &str =
    "device:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#1";
const STEER_WITHIN: &str =
    "device:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#2";
/// Outside the normative block: with multiqueue on, steering follows the
/// flow (§5.1.6.5.5).
const STEER_BY_FLOW: &str =
    "desc:net/device-operation/control-virtqueue/automatic-receive-steering-in-multiqueue-mode#1";

/// `struct virtio_net_hdr` with VIRTIO_F_VERSION_1 (§5.1.6): 12 bytes.
const HDR: usize = 12;
/// Ethernet header length.
const ETH: usize = 14;
/// Receive buffers kept posted per receive queue (half the checks' queue
/// size, so reused descriptors are always ones the device returned).
const RX_POSTED: usize = 8;
/// The source address of the checks' frames (locally administered).
const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
/// An address nothing filters in.
const STRANGER: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
/// Another one, for the table.
const LISTED: [u8; 6] = [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa];
/// A multicast address (mDNS's).
const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];

/// Control classes and commands (§5.1.6.5).
const CTRL_RX: u8 = 0;
const RX_PROMISC: u8 = 0;
const RX_ALLMULTI: u8 = 1;
const CTRL_MAC: u8 = 1;
const MAC_TABLE_SET: u8 = 0;
const MAC_ADDR_SET: u8 = 1;
const CTRL_MQ: u8 = 4;
const MQ_VQ_PAIRS_SET: u8 = 0;
const NET_OK: u8 = 0;

fn bit(f: NetFeatures) -> u64 {
    f.bits()
}

/// A frame to `dst` of `len` bytes (at least 60), marked with `cfm` and
/// `tag` after the ethertype ([`MARK`]), behind a header with `flags`,
/// `csum_start` and `csum_offset`.
fn frame(dst: [u8; 6], len: usize, tag: u8, flags: u8, csum: (u16, u16)) -> Vec<u8> {
    let mut f = alloc::vec![0u8; HDR + len.max(60)];
    f[0] = flags;
    f[6..8].copy_from_slice(&csum.0.to_le_bytes());
    f[8..10].copy_from_slice(&csum.1.to_le_bytes());
    f[HDR..HDR + 6].copy_from_slice(&dst);
    f[HDR + 6..HDR + 12].copy_from_slice(&SRC);
    // The local experimental ethertype.
    f[HDR + 12..HDR + 14].copy_from_slice(&0x88b5u16.to_be_bytes());
    for (i, b) in f[HDR + ETH..].iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
    f[HDR + ETH..HDR + ETH + 3].copy_from_slice(MARK);
    f[HDR + ETH + 3] = tag;
    f
}

/// What starts the payload of every frame the checks send, before its tag:
/// a frame that comes back is told from one sent earlier (a backend may
/// hold frames across a reset, e.g. QEMU's socket netdev) by it.
const MARK: &[u8; 3] = b"cfm";

/// Whether `frame` (without header) is the checks' frame with `tag`.
fn tagged(frame: &[u8], tag: u8) -> bool {
    frame.get(ETH..ETH + 3) == Some(&MARK[..]) && frame.get(ETH + 3) == Some(&tag)
}

/// One received packet: its header and frame bytes, and how many used
/// elements it took.
#[derive(Clone, Debug)]
struct Received {
    hdr: [u8; HDR],
    frame: Vec<u8>,
    /// Length of each used element it took.
    lens: Vec<u32>,
}

impl Received {
    fn flags(&self) -> u8 {
        self.hdr[0]
    }
    fn gso_type(&self) -> u8 {
        self.hdr[1]
    }
    fn num_buffers(&self) -> u16 {
        u16::from_le_bytes([self.hdr[10], self.hdr[11]])
    }
}

/// The packet that came back for a frame sent (`got`), or `None` after
/// recording for `all` why not: nothing came back (not observable: the
/// backend does not return frames), or the driver side failed (blocked).
fn came_back(
    ctx: &mut Ctx<'_>,
    all: &[&'static str],
    got: Result<Option<(u16, Received)>, String>,
) -> Option<Received> {
    match got {
        Ok(Some((_, r))) => Some(r),
        Ok(None) => {
            ctx.not_observable(
                all,
                "nothing came back: the backend does not return transmitted frames",
            );
            None
        }
        Err(e) => {
            ctx.blocked(all, &e);
            None
        }
    }
}

/// A network device driven by the checks: receive queues kept stocked,
/// frames sent one at a time on transmit queue 0, the control queue.
struct NetDev<'a> {
    d: Dev<'a>,
    rx_len: u32,
    /// Per receive queue: the used index read up to, and the buffers
    /// posted, by head.
    rx: BTreeMap<u16, (u16, BTreeMap<u16, GuestAddress>)>,
    ctrl: Option<u16>,
}

impl<'a> NetDev<'a> {
    /// Negotiates `want`, sets up receive queues `rx` (stocked with
    /// buffers of `rx_len` bytes) and the transmit queue of each pair, and
    /// the control queue when CTRL_VQ was negotiated, and sets DRIVER_OK.
    /// Frames are sent on transmit queue 1.
    fn live(mut d: Dev<'a>, want: u64, rx: &[u16], rx_len: u32) -> Result<NetDev<'a>, String> {
        d.begin(want)?;
        let pairs = if d.features & bit(NetFeatures::MQ) != 0 {
            u16::from_le_bytes([d.config8(8), d.config8(9)])
        } else {
            1
        };
        let ctrl = (d.features & bit(NetFeatures::CTRL_VQ) != 0)
            .then(|| u16::try_from(2 * u32::from(pairs)).ok())
            .flatten();
        // Each receive queue with its transmit queue (2k, 2k + 1).
        let mut queues: Vec<u16> = rx.iter().flat_map(|q| [*q, q + 1]).collect();
        queues.extend(ctrl);
        for q in &queues {
            d.setup_queue(*q)?;
        }
        d.driver_ok()?;
        let mut n = NetDev {
            d,
            rx_len,
            rx: BTreeMap::new(),
            ctrl,
        };
        for q in rx {
            n.rx.insert(*q, (0, BTreeMap::new()));
            for _ in 0..RX_POSTED {
                n.post_rx(*q)?;
            }
            n.d.notify(*q);
        }
        Ok(n)
    }

    fn post_rx(&mut self, q: u16) -> Result<(), String> {
        let a = self
            .d
            .buffer(self.rx_len, None)
            .ok_or("out of DMA memory")?;
        let mem = self.d.bus().mem();
        let ring = self.d.ring(q).ok_or("receive queue not set up")?;
        let head = ring
            .chain(
                mem,
                &[Buf {
                    addr: a,
                    len: self.rx_len,
                    write: true,
                }],
            )
            .ok_or("no room in the receive ring")?;
        ring.publish(mem, head)
            .ok_or("no room in the receive ring")?;
        if let Some((_, posted)) = self.rx.get_mut(&q) {
            posted.insert(head, a);
        }
        Ok(())
    }

    /// Sends `f` (header and frame) on transmit queue 0 and waits for it.
    fn send(&mut self, f: &[u8]) -> Result<(), String> {
        self.send_on(1, f)
    }

    /// Sends `f` (header and frame) on transmit queue `q`.
    fn send_on(&mut self, q: u16, f: &[u8]) -> Result<(), String> {
        let len = u32::try_from(f.len()).map_err(|_| "frame too long")?;
        let a = self.d.buffer(len, Some(f)).ok_or("out of DMA memory")?;
        let mem = self.d.bus().mem();
        let ring = self.d.ring(q).ok_or("transmit queue not set up")?;
        let head = ring
            .chain(
                mem,
                &[Buf {
                    addr: a,
                    len,
                    write: false,
                }],
            )
            .ok_or("no room in the transmit ring")?;
        ring.publish(mem, head)
            .ok_or("no room in the transmit ring")?;
        let want = ring.avail_idx;
        self.d.notify(q);
        if self.d.wait_used(q, want) {
            Ok(())
        } else {
            Err(format!(
                "a transmitted frame was not completed; {}",
                self.d.rings_seen()
            ))
        }
    }

    /// Used elements of receive queue `q` not read yet.
    fn pending(&mut self, q: u16) -> u16 {
        let mem = self.d.bus().mem();
        let seen = self.rx.get(&q).map_or(0, |r| r.0);
        self.d
            .ring(q)
            .map_or(0, |r| r.used_idx(mem).wrapping_sub(seen))
    }

    /// Waits for a packet on any of `queues` (`Expect`) or makes sure none
    /// comes (`Quiet`); the queue and the packet, buffers re-posted.
    fn receive(
        &mut self,
        queues: &[u16],
        patience: Patience,
    ) -> Result<Option<(u16, Received)>, String> {
        let bus = self.d.bus();
        let mut got = None;
        {
            let mem = bus.mem();
            let rings: Vec<(u16, u16, GuestAddress)> = queues
                .iter()
                .filter_map(|q| {
                    let seen = self.rx.get(q)?.0;
                    let r = self.d.rings.get(usize::from(*q))?.as_ref()?;
                    Some((*q, seen, r.layout.used_idx()))
                })
                .collect();
            let mut done = || {
                rings.iter().any(|(q, seen, idx)| {
                    let now = mem.load_u16_acquire(*idx).unwrap_or(*seen);
                    if now != *seen {
                        got = Some(*q);
                        true
                    } else {
                        false
                    }
                })
            };
            bus.wait(&mut done, patience);
        }
        let Some(q) = got else {
            return Ok(None);
        };
        let mem = bus.mem();
        let (first_addr, first_len) = self.take_used(q)?;
        let mut h = [0u8; HDR];
        h.copy_from_slice(&bytes(mem, first_addr, HDR));
        let mut r = Received {
            hdr: h,
            frame: bytes(
                mem,
                GuestAddress(first_addr.0 + HDR as u64),
                (first_len as usize).saturating_sub(HDR),
            ),
            lens: alloc::vec![first_len],
        };
        // With merged buffers the rest of the packet is in the next
        // num_buffers - 1 used elements; they must be there already
        // (§5.1.6.4.2: all used together).
        let more = usize::from(r.num_buffers()).saturating_sub(1);
        if self.d.features & bit(NetFeatures::MRG_RXBUF) != 0 {
            for _ in 0..more.min(RX_POSTED) {
                if self.pending(q) == 0 {
                    break;
                }
                let (a, len) = self.take_used(q)?;
                r.frame.extend_from_slice(&bytes(mem, a, len as usize));
                r.lens.push(len);
            }
        }
        for _ in 0..r.lens.len() {
            self.post_rx(q)?;
        }
        self.d.notify(q);
        Ok(Some((q, r)))
    }

    /// [`receive`](Self::receive) until the frame with `tag` comes (others,
    /// sent by earlier checks, are dropped), at most a queue's worth.
    fn receive_tag(
        &mut self,
        queues: &[u16],
        tag: u8,
        patience: Patience,
    ) -> Result<Option<(u16, Received)>, String> {
        self.receive_matching(queues, patience, |f| tagged(f, tag))
    }

    /// The next packet on `queues` whose frame `is` says is the one,
    /// skipping others (at most 64).
    fn receive_matching(
        &mut self,
        queues: &[u16],
        patience: Patience,
        is: impl Fn(&[u8]) -> bool,
    ) -> Result<Option<(u16, Received)>, String> {
        for _ in 0..64 {
            match self.receive(queues, patience)? {
                None => return Ok(None),
                Some((q, r)) if is(&r.frame) => return Ok(Some((q, r))),
                Some(_) => {}
            }
        }
        Ok(None)
    }

    /// The next used element of receive queue `q`: its buffer and length.
    fn take_used(&mut self, q: u16) -> Result<(GuestAddress, u32), String> {
        let mem = self.d.bus().mem();
        let (seen, _) = *self.rx.get(&q).ok_or("not a receive queue")?;
        let (id, len) = self
            .d
            .ring(q)
            .map(|r| r.used_elem(mem, seen))
            .ok_or("receive queue not set up")?;
        let entry = self.rx.get_mut(&q).ok_or("not a receive queue")?;
        entry.0 = seen.wrapping_add(1);
        let a = u16::try_from(id)
            .ok()
            .and_then(|h| entry.1.remove(&h))
            .ok_or_else(|| format!("queue {q}: used id {id} is not a posted buffer"))?;
        if len > self.rx_len {
            return Err(format!(
                "queue {q}: used len {len} for a {}-byte buffer",
                self.rx_len
            ));
        }
        Ok((a, len))
    }

    /// A control command; the ack byte.
    fn command(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8, String> {
        let q = self.ctrl.ok_or("no control queue")?;
        let head = self
            .d
            .buffer(2, Some(&[class, cmd]))
            .ok_or("out of DMA memory")?;
        let mut bufs = alloc::vec![Buf {
            addr: head,
            len: 2,
            write: false,
        }];
        if !data.is_empty() {
            let len = data.len() as u32;
            let a = self.d.buffer(len, Some(data)).ok_or("out of DMA memory")?;
            bufs.push(Buf {
                addr: a,
                len,
                write: false,
            });
        }
        let ack = self.d.buffer(1, None).ok_or("out of DMA memory")?;
        bufs.push(Buf {
            addr: ack,
            len: 1,
            write: true,
        });
        let mem = self.d.bus().mem();
        let ring = self.d.ring(q).ok_or("control queue not set up")?;
        let h = ring
            .chain(mem, &bufs)
            .ok_or("no room in the control ring")?;
        ring.publish(mem, h).ok_or("no room in the control ring")?;
        let want = ring.avail_idx;
        self.d.notify(q);
        if !self.d.wait_used(q, want) {
            return Err(format!(
                "control command {class}.{cmd} was not completed; {}",
                self.d.rings_seen()
            ));
        }
        Ok(bytes(mem, ack, 1)[0])
    }

    /// Sends a frame to `dst` and says whether it came back (on queue 0).
    fn comes_back(&mut self, dst: [u8; 6], tag: u8) -> Result<bool, String> {
        self.send(&frame(dst, 60, tag, 0, (0, 0)))?;
        Ok(self.receive_tag(&[0], tag, Patience::Expect)?.is_some())
    }
}

impl Dev<'_> {
    /// The configuration's `mtu` (offset 10, §5.1.4).
    fn net_mtu(&self) -> u16 {
        self.bus().regs().read16(regs::CONFIG + 10)
    }
}

/// Opens a network device (modern), or records why the statements do not
/// apply.
fn open_net<'a>(ctx: &mut Ctx<'a>, statements: &[&'static str]) -> Option<Dev<'a>> {
    super::open_type(ctx, statements, DeviceType::Net, "network")
}

/// The features the receive checks negotiate: the transport's, MAC, MTU,
/// and `extra`; no offloads.
fn plain(d: &Dev<'_>, extra: u64) -> u64 {
    let base = bit(NetFeatures::MAC) | bit(NetFeatures::MTU) | bit(NetFeatures::STATUS) | extra;
    let transport =
        TransportFeatures::RING_INDIRECT_DESC.bits() | TransportFeatures::RING_EVENT_IDX.bits();
    d.offered & (base | transport)
}

/// max_virtqueue_pairs and mtu in range, mtu never changes (§5.1.4.1).
pub const CONFIG: Check = Check {
    name: "net-config",
    statements: &[CFG_PAIRS, CFG_MTU, CFG_MTU_1280, MTU_FIXED],
    run: |ctx| {
        let all = [CFG_PAIRS, CFG_MTU, CFG_MTU_1280, MTU_FIXED];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        if d.offered & bit(NetFeatures::MQ) != 0 {
            let pairs = u16::from_le_bytes([d.config8(8), d.config8(9)]);
            ctx.expect(CFG_PAIRS, (1..=0x8000).contains(&pairs), || {
                format!("max_virtqueue_pairs {pairs}")
            });
        } else {
            ctx.not_applicable(&[CFG_PAIRS], "VIRTIO_NET_F_MQ not offered");
        }
        if d.offered & bit(NetFeatures::MTU) == 0 {
            ctx.not_applicable(
                &[CFG_MTU, CFG_MTU_1280, MTU_FIXED],
                "VIRTIO_NET_F_MTU not offered",
            );
            return;
        }
        let first = d.net_mtu();
        ctx.expect(CFG_MTU, first >= 68, || format!("mtu {first}"));
        let o = if first >= 1280 {
            Outcome::Pass
        } else {
            Outcome::Warn(format!("mtu {first}"))
        };
        ctx.record(CFG_MTU_1280, o);
        // Through negotiation, going live and traffic, mtu stays.
        let want = plain(&d, 0);
        let mut seen = alloc::vec![first];
        let n = NetDev::live(d, want, &[0], 2048);
        match n {
            Ok(mut n) => {
                seen.push(n.d.net_mtu());
                let _ = n.comes_back([0xff; 6], 1);
                seen.push(n.d.net_mtu());
                n.d.reset();
                seen.push(n.d.net_mtu());
                ctx.expect(MTU_FIXED, seen.iter().all(|m| *m == first), || {
                    format!("mtu read {seen:?} (offered, live, after a frame, after a reset)")
                });
            }
            Err(e) => ctx.blocked(&[MTU_FIXED], &e),
        }
    },
};

/// Received packets without merged buffers or checksum offload: one
/// buffer, num_buffers 1, flags 0, no GSO (§5.1.6.3.1, §5.1.6.4.1); what
/// was transmitted with unknown flags and stray checksum fields arrives
/// as sent (§5.1.6.2.2).
pub const RECEIVE_PLAIN: Check = Check {
    name: "net-receive-plain",
    statements: &[
        RX_NUM_BUFFERS,
        RX_ONE_BUFFER,
        RX_NUM_BUFFERS_1,
        RX_FLAGS_ZERO,
        RX_NO_GSO_UDP,
        RX_GSO_NEEDS_CSUM,
        RX_NO_TSO4,
        RX_NO_TSO6,
        RX_NO_TUNNEL,
        RX_NO_TUNNEL_CSUM,
        RX_NO_ECN,
        RX_NO_TUNNEL_GSO,
        RX_NO_TUNNEL_GSO_CSUM,
        RX_NO_RSC,
        RX_TUNNEL_NO_DATA_VALID,
        TX_UNKNOWN_FLAGS,
        TX_NO_CSUM_FIELDS,
    ],
    run: |ctx| {
        let all = [
            RX_NUM_BUFFERS,
            RX_ONE_BUFFER,
            RX_NUM_BUFFERS_1,
            RX_FLAGS_ZERO,
            RX_NO_GSO_UDP,
            RX_GSO_NEEDS_CSUM,
            RX_NO_TSO4,
            RX_NO_TSO6,
            RX_NO_TUNNEL,
            RX_NO_TUNNEL_CSUM,
            RX_NO_ECN,
            RX_NO_TUNNEL_GSO,
            RX_NO_TUNNEL_GSO_CSUM,
            RX_NO_RSC,
            RX_TUNNEL_NO_DATA_VALID,
            TX_UNKNOWN_FLAGS,
            TX_NO_CSUM_FIELDS,
        ];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        let want = plain(&d, 0);
        let mut n = match NetDev::live(d, want, &[0], 2048) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        // Unknown flag 0x80, and csum_start/csum_offset pointing into the
        // payload without NEEDS_CSUM: the device must use neither.
        let sent = frame([0xff; 6], 200, 7, 0x80, (ETH as u16 + 4, 6));
        let got = n
            .send(&sent)
            .and_then(|()| n.receive_tag(&[0], 7, Patience::Expect));
        let Some(r) = came_back(ctx, &all, got) else {
            return;
        };
        let nb = r.num_buffers();
        ctx.expect(RX_NUM_BUFFERS, usize::from(nb) == r.lens.len(), || {
            format!("num_buffers {nb} for a packet in {} buffers", r.lens.len())
        });
        // The whole packet (header and frame) in the one buffer it used.
        let whole = r.lens.first().is_some_and(|l| *l as usize == sent.len());
        ctx.expect(RX_ONE_BUFFER, r.lens.len() == 1 && whole, || {
            format!(
                "a packet of {} bytes came back in used lengths {:?}",
                sent.len(),
                r.lens
            )
        });
        ctx.expect(RX_NUM_BUFFERS_1, nb == 1, || format!("num_buffers {nb}"));
        ctx.expect(RX_FLAGS_ZERO, r.flags() == 0, || {
            format!("flags {:#x} without VIRTIO_NET_F_GUEST_CSUM", r.flags())
        });
        ctx.expect(RX_NO_GSO_UDP, r.gso_type() & 0x7f != 3, || {
            format!("gso_type {:#x}", r.gso_type())
        });
        ctx.expect(
            RX_GSO_NEEDS_CSUM,
            r.gso_type() == 0 || r.flags() & 1 != 0,
            || format!("gso_type {:#x} with flags {:#x}", r.gso_type(), r.flags()),
        );
        // Nothing the driver did not negotiate (only MAC, MTU and STATUS
        // were): no TCP or UDP segmentation, no tunnel bits or flags, no
        // RSC, no ECN.
        let (g, fl) = (r.gso_type(), r.flags());
        let gso_seen = || format!("gso_type {g:#x}, flags {fl:#x}");
        ctx.expect(RX_NO_TSO4, g & 0x7f != 1, gso_seen);
        ctx.expect(RX_NO_TSO6, g & 0x7f != 4, gso_seen);
        ctx.expect(RX_NO_TUNNEL, g & 0x60 == 0, gso_seen);
        ctx.expect(RX_NO_TUNNEL_CSUM, fl & 8 == 0, gso_seen);
        // A SHOULD NOT (the MUST half is for GUEST_ECN negotiated).
        ctx.record(
            RX_NO_ECN,
            if g & 0x80 == 0 {
                Outcome::Pass
            } else {
                Outcome::Warn(gso_seen())
            },
        );
        ctx.expect(RX_NO_TUNNEL_GSO, g & 0x60 == 0, gso_seen);
        ctx.expect(RX_NO_TUNNEL_GSO_CSUM, g & 0x60 == 0, gso_seen);
        ctx.expect(RX_NO_RSC, fl & 4 == 0, gso_seen);
        ctx.expect(
            RX_TUNNEL_NO_DATA_VALID,
            g & 0x60 == 0 || fl & 2 == 0,
            gso_seen,
        );
        let same = r.frame == sent[HDR..];
        ctx.expect(TX_UNKNOWN_FLAGS, same, || {
            "a frame sent with flag 0x80 did not arrive as sent".into()
        });
        ctx.expect(TX_NO_CSUM_FIELDS, same, || {
            let at = r
                .frame
                .iter()
                .zip(&sent[HDR..])
                .position(|(a, b)| a != b)
                .unwrap_or(r.frame.len());
            format!(
                "the frame came back changed at byte {at} (csum_start {} + csum_offset 6 set, NEEDS_CSUM clear)",
                ETH + 4
            )
        });
    },
};

const CSUM_VALIDATED_BEFORE: &str = "device:net/device-operation/processing-of-incoming-packets#14";
const CSUM_PSEUDO_HEADER: &str = "device:net/device-operation/processing-of-incoming-packets#15";
const CSUM_COMPLETES: &str = "device:net/device-operation/processing-of-incoming-packets#16";
const DATA_VALID_VALIDATED: &str = "device:net/device-operation/processing-of-incoming-packets#24";
const TX_CSUM_NOT_RELIED: &str = "device:net/device-operation/packet-transmission#8";

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`, `VIRTIO_NET_HDR_F_DATA_VALID`.
const NEEDS_CSUM: u8 = 1;
const DATA_VALID: u8 = 2;
/// Where a UDP datagram starts in the checks' IPv4 frames, and its
/// checksum field within it.
const UDP_AT: usize = ETH + 20;
const UDP_CSUM: usize = 6;

/// The UDP pseudo header's sum for the IPv4 frame `f` (RFC 768).
fn pseudo_sum(f: &[u8]) -> u32 {
    let udp_len = f.len().saturating_sub(UDP_AT) as u32;
    sum16(&f[ETH + 12..ETH + 20], 17 + udp_len)
}

/// Whether the UDP checksum of the IPv4 frame `f` is right.
fn udp_valid(f: &[u8]) -> bool {
    f.len() > UDP_AT + 8 && fold(sum16(&f[UDP_AT..], pseudo_sum(f))) == 0xffff
}

/// Whether the IPv4 header of `f` sums right.
fn ip_valid(f: &[u8]) -> bool {
    f.len() >= UDP_AT && fold(sum16(&f[ETH..UDP_AT], 0)) == 0xffff
}

/// A broadcast IPv4/UDP frame (10.0.2.15 to 10.0.2.255) of `payload`
/// bytes after the UDP header, the [`MARK`] and `tag` first, behind a
/// virtio-net header. `partial`: its UDP checksum field holds the pseudo
/// header's sum and the header asks for NEEDS_CSUM from there (§5.1.6.2);
/// otherwise the checksum is complete, plus `damage`.
fn udp_frame(payload: usize, tag: u8, partial: bool, damage: u16) -> Vec<u8> {
    let len = UDP_AT + 8 + payload;
    let mut f = alloc::vec![0u8; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&SRC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[ETH..UDP_AT];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - ETH) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
    ip[16..20].copy_from_slice(&[10, 0, 2, 255]);
    let c = !fold(sum16(ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[UDP_AT..UDP_AT + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[UDP_AT + 2..UDP_AT + 4].copy_from_slice(&9u16.to_be_bytes());
    f[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&((len - UDP_AT) as u16).to_be_bytes());
    for (i, b) in f[UDP_AT + 8..].iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
    f[UDP_AT + 8..UDP_AT + 11].copy_from_slice(MARK);
    f[UDP_AT + 11] = tag;
    let field = if partial {
        fold(pseudo_sum(&f))
    } else {
        let c = !fold(sum16(&f[UDP_AT..], pseudo_sum(&f)));
        (if c == 0 { 0xffff } else { c }).wrapping_add(damage)
    };
    f[UDP_AT + UDP_CSUM..UDP_AT + UDP_CSUM + 2].copy_from_slice(&field.to_be_bytes());
    let mut out = alloc::vec![0u8; HDR];
    if partial {
        out[0] = NEEDS_CSUM;
        out[6..8].copy_from_slice(&(UDP_AT as u16).to_le_bytes());
        out[8..10].copy_from_slice(&(UDP_CSUM as u16).to_le_bytes());
    }
    out.extend_from_slice(&f);
    out
}

/// Whether `frame` is the checks' UDP frame with `tag`.
fn udp_tagged(frame: &[u8], tag: u8) -> bool {
    frame.get(UDP_AT + 8..UDP_AT + 11) == Some(&MARK[..]) && frame.get(UDP_AT + 11) == Some(&tag)
}

/// Checksum offload (§5.1.6.2, §5.1.6.4.1): a UDP frame sent with
/// NEEDS_CSUM comes back either still partial (then its checksum field
/// holds the pseudo header's sum, everything before `csum_start` is valid,
/// and completing it gives a valid checksum), or with DATA_VALID (then the
/// checksum is valid), or with neither (no claim); a frame sent with a
/// wrong checksum and no NEEDS_CSUM comes back unchanged and not marked
/// DATA_VALID.
pub const CHECKSUM: Check = Check {
    name: "net-checksum",
    statements: &[
        CSUM_VALIDATED_BEFORE,
        CSUM_PSEUDO_HEADER,
        CSUM_COMPLETES,
        DATA_VALID_VALIDATED,
        TX_CSUM_NOT_RELIED,
    ],
    run: |ctx| {
        let all = [
            CSUM_VALIDATED_BEFORE,
            CSUM_PSEUDO_HEADER,
            CSUM_COMPLETES,
            DATA_VALID_VALIDATED,
            TX_CSUM_NOT_RELIED,
        ];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        let need = bit(NetFeatures::CSUM) | bit(NetFeatures::GUEST_CSUM);
        if d.offered & need != need {
            ctx.not_applicable(&all, "VIRTIO_NET_F_CSUM and GUEST_CSUM not both offered");
            return;
        }
        let want = plain(&d, need);
        let mut n = match NetDev::live(d, want, &[0], 2048) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        let round = |n: &mut NetDev<'_>, sent: &[u8], tag: u8| {
            n.send(sent)?;
            n.receive_matching(&[0], Patience::Expect, |f| udp_tagged(f, tag))
        };
        // A partial checksum, for the device to pass on or complete.
        let partial = udp_frame(200, 11, true, 0);
        let Some(r) = came_back(ctx, &all, round(&mut n, &partial, 11)) else {
            return;
        };
        let f = &r.frame;
        let flags = r.flags();
        if flags & NEEDS_CSUM != 0 {
            let start = usize::from(u16::from_le_bytes([r.hdr[6], r.hdr[7]]));
            let off = usize::from(u16::from_le_bytes([r.hdr[8], r.hdr[9]]));
            let at = start
                .checked_add(off)
                .filter(|a| a + 2 <= f.len() && start <= f.len());
            ctx.expect(
                CSUM_VALIDATED_BEFORE,
                start >= UDP_AT && ip_valid(f),
                || format!("NEEDS_CSUM from {start} with an IPv4 header that does not sum"),
            );
            let stored = at.map(|a| u16::from_be_bytes([f[a], f[a + 1]]));
            ctx.expect(
                CSUM_PSEUDO_HEADER,
                stored == Some(fold(pseudo_sum(f))),
                || {
                    format!(
                        "checksum field {stored:x?}, pseudo header sum {:#x}",
                        fold(pseudo_sum(f))
                    )
                },
            );
            let completed = at.is_some_and(|a| {
                let mut c = f.clone();
                let v = !fold(sum16(&c[start..], 0));
                c[a..a + 2].copy_from_slice(&v.to_be_bytes());
                udp_valid(&c)
            });
            ctx.expect(CSUM_COMPLETES, completed, || {
                format!("csum_start {start}, csum_offset {off}: completing it gives no valid UDP checksum")
            });
        } else {
            ctx.not_observable(
                &[CSUM_VALIDATED_BEFORE, CSUM_PSEUDO_HEADER, CSUM_COMPLETES],
                "the device completed the partial checksum (no NEEDS_CSUM came back)",
            );
        }
        let mut data_valid_seen = false;
        if flags & DATA_VALID != 0 {
            data_valid_seen = true;
            ctx.expect(DATA_VALID_VALIDATED, udp_valid(f), || {
                "DATA_VALID on a frame whose UDP checksum is wrong".into()
            });
        }
        // A wrong checksum and no NEEDS_CSUM: passed on as sent, and not
        // said to be valid.
        let wrong = udp_frame(200, 12, false, 0x1111);
        match round(&mut n, &wrong, 12) {
            Ok(Some((_, r))) => {
                ctx.expect(TX_CSUM_NOT_RELIED, r.frame == wrong[HDR..], || {
                    "a frame with a wrong UDP checksum and no NEEDS_CSUM came back changed".into()
                });
                if r.flags() & DATA_VALID != 0 {
                    data_valid_seen = true;
                    ctx.expect(DATA_VALID_VALIDATED, false, || {
                        "DATA_VALID on a frame sent with a wrong UDP checksum".into()
                    });
                }
            }
            Ok(None) => ctx.expect(TX_CSUM_NOT_RELIED, false, || {
                "a frame with a wrong UDP checksum and no NEEDS_CSUM was dropped".into()
            }),
            Err(e) => ctx.blocked(&[TX_CSUM_NOT_RELIED], &e),
        }
        if !data_valid_seen {
            ctx.not_observable(
                &[DATA_VALID_VALIDATED],
                "the device set DATA_VALID on no frame",
            );
        }
    },
};

const GENERATION_CHANGES: &str = "device:mmio/mmio-device-register-layout#6";

/// ConfigGeneration moves when the configuration does (§4.2.2.1): the
/// host flips a live network device's link ([`crate::Bus::change_config`],
/// QMP's `set_link`); if `status` changed, the generation read after must
/// differ from the one before. Only where the path has that hook.
pub const CONFIG_GENERATION: Check = Check {
    name: "net-config-generation",
    statements: &[GENERATION_CHANGES],
    run: |ctx| {
        let all = [GENERATION_CHANGES];
        let d = Dev::open(ctx.bus());
        if d.device_type() != Some(DeviceType::Net) || d.version == 1 {
            ctx.not_observable(
                &all,
                "the checks change a configuration only through a network device's link (modern interface)",
            );
            return;
        }
        if d.offered & bit(NetFeatures::STATUS) == 0 {
            ctx.not_observable(
                &all,
                "VIRTIO_NET_F_STATUS not offered: no field follows the link",
            );
            return;
        }
        let want = plain(&d, 0);
        let n = match NetDev::live(d, want, &[0], 2048) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        let bus = n.d.bus();
        let status = || u16::from_le_bytes([n.d.config8(6), n.d.config8(7)]);
        let (g0, s0) = (bus.regs().read32(regs::CONFIG_GENERATION), status());
        if bus.change_config().is_none() {
            ctx.not_observable(
                &all,
                "the host cannot change the configuration on this path",
            );
            return;
        }
        let (g1, s1) = (bus.regs().read32(regs::CONFIG_GENERATION), status());
        // The link back as it was.
        let _ = bus.change_config();
        if s0 == s1 {
            ctx.not_observable(&all, "the link flip changed no configuration field");
            return;
        }
        ctx.expect(GENERATION_CHANGES, g0 != g1, || {
            format!("status went from {s0:#x} to {s1:#x} with ConfigGeneration {g0} both times")
        });
    },
};

/// Merged receive buffers: num_buffers counts them, all but the last are
/// full, all are used together (§5.1.6.4.2).
pub const RECEIVE_MERGED: Check = Check {
    name: "net-receive-merged",
    statements: &[MRG_NUM_BUFFERS, MRG_FULL, MRG_TOGETHER],
    run: |ctx| {
        let all = [MRG_NUM_BUFFERS, MRG_FULL, MRG_TOGETHER];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        if d.offered & bit(NetFeatures::MRG_RXBUF) == 0 {
            ctx.not_applicable(&all, "VIRTIO_NET_F_MRG_RXBUF not offered");
            return;
        }
        let want = plain(&d, bit(NetFeatures::MRG_RXBUF));
        // 128-byte buffers: a 400-byte frame with its header takes four.
        let mut n = match NetDev::live(d, want, &[0], 128) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        let sent = frame([0xff; 6], 400, 9, 0, (0, 0));
        let got = n
            .send(&sent)
            .and_then(|()| n.receive_tag(&[0], 9, Patience::Expect));
        let Some(r) = came_back(ctx, &all, got) else {
            return;
        };
        let nb = usize::from(r.num_buffers());
        let total: u32 = r.lens.iter().sum();
        ctx.expect(
            MRG_NUM_BUFFERS,
            nb == r.lens.len() && total as usize == sent.len(),
            || {
                format!(
                    "num_buffers {nb}; used lengths {:?} for {} bytes",
                    r.lens,
                    sent.len()
                )
            },
        );
        let full = r
            .lens
            .split_last()
            .is_some_and(|(_, rest)| rest.iter().all(|l| *l == 128));
        ctx.expect(MRG_FULL, full, || {
            format!("used lengths {:?} of 128-byte buffers", r.lens)
        });
        ctx.expect(MRG_TOGETHER, r.lens.len() >= nb, || {
            format!(
                "num_buffers {nb}, but only {} used when the first was seen",
                r.lens.len()
            )
        });
    },
};

/// MAC_ADDR_SET is in the configuration when the command is used
/// (§5.1.6.5.2.2).
pub const CONTROL_MAC: Check = Check {
    name: "net-control-mac",
    statements: &[MAC_BEFORE_USED],
    run: |ctx| {
        let Some(d) = open_net(ctx, &[MAC_BEFORE_USED]) else {
            return;
        };
        // MAC class commands need CTRL_RX too (§5.1.6.5.2.1).
        let need = bit(NetFeatures::CTRL_VQ)
            | bit(NetFeatures::CTRL_RX)
            | bit(NetFeatures::CTRL_MAC_ADDR)
            | bit(NetFeatures::MAC);
        if d.offered & need != need {
            ctx.not_applicable(
                &[MAC_BEFORE_USED],
                "VIRTIO_NET_F_CTRL_VQ, CTRL_RX, CTRL_MAC_ADDR and MAC not all offered",
            );
            return;
        }
        let want = plain(&d, need);
        let mut n = match NetDev::live(d, want, &[0], 2048) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&[MAC_BEFORE_USED], &e);
                return;
            }
        };
        let mac: Vec<u8> = (0..6).map(|i| n.d.config8(i)).collect();
        let result = n.command(CTRL_MAC, MAC_ADDR_SET, &LISTED);
        let now: Vec<u8> = (0..6).map(|i| n.d.config8(i)).collect();
        // Put the address back.
        let _ = n.command(CTRL_MAC, MAC_ADDR_SET, &mac);
        match result {
            Ok(ack) => ctx.expect(MAC_BEFORE_USED, ack == NET_OK && now == LISTED, || {
                format!("ack {ack}, mac reads {now:02x?} once the command was used")
            }),
            Err(e) => ctx.blocked(&[MAC_BEFORE_USED], &e),
        }
    },
};

/// Receive filtering through the control queue: an empty table after a
/// reset, the table in force once its command is used, frames to other
/// addresses dropped, promiscuous and all-multicast modes (§5.1.6.5.1,
/// §5.1.6.5.2).
pub const RECEIVE_FILTERS: Check = Check {
    name: "net-receive-filters",
    statements: &[
        PROMISC,
        PROMISC_BYTE,
        PROMISC_ALL,
        ALLMULTI,
        ALLMULTI_BYTE,
        ALLMULTI_ALL,
        TABLE_EMPTY,
        TABLE_BEFORE_USED,
        DROP_UNMATCHED,
    ],
    run: receive_filters,
};

fn receive_filters(ctx: &mut Ctx<'_>) {
    let all = [
        PROMISC,
        PROMISC_BYTE,
        PROMISC_ALL,
        ALLMULTI,
        ALLMULTI_BYTE,
        ALLMULTI_ALL,
        TABLE_EMPTY,
        TABLE_BEFORE_USED,
        DROP_UNMATCHED,
    ];
    let Some(d) = open_net(ctx, &all) else {
        return;
    };
    let need = bit(NetFeatures::CTRL_VQ) | bit(NetFeatures::CTRL_RX);
    if d.offered & need != need {
        ctx.not_applicable(
            &all,
            "VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_CTRL_RX not both offered",
        );
        return;
    }
    let want = plain(&d, need);
    let mut n = match NetDev::live(d, want, &[0], 2048) {
        Ok(n) => n,
        Err(e) => {
            ctx.blocked(&all, &e);
            return;
        }
    };
    let mac: [u8; 6] = core::array::from_fn(|i| n.d.config8(i as u64));
    let run = |n: &mut NetDev<'_>, ctx: &mut Ctx<'_>| -> Result<(), String> {
        // Sanity: a frame to the device's own address comes back.
        if !n.comes_back(mac, 21)? {
            ctx.not_observable(
                &all,
                "nothing came back: the backend does not return transmitted frames",
            );
            return Ok(());
        }
        let off = n.command(CTRL_RX, RX_PROMISC, &[0])?;
        let multi_off = n.command(CTRL_RX, RX_ALLMULTI, &[0])?;
        // The table is empty after the reset: a stranger is dropped.
        let stranger = n.comes_back(STRANGER, 22)?;
        ctx.record(
            DROP_UNMATCHED,
            if stranger {
                Outcome::Warn("a frame to an address in no table came back".into())
            } else {
                Outcome::Pass
            },
        );
        if stranger {
            // Dropping is a SHOULD: a device that filters nothing shows
            // neither its table nor its multicast mode.
            let why = "the device filters nothing (a frame to an address in no table came back with promiscuous mode off), so its table and all-multicast mode do not show";
            ctx.not_observable(&[TABLE_EMPTY, TABLE_BEFORE_USED, ALLMULTI], why);
        } else {
            ctx.expect(TABLE_EMPTY, off == NET_OK, || {
                format!("promiscuous off: ack {off}")
            });
        }
        // A table with LISTED is in force once the command is used.
        let mut table = Vec::new();
        table.extend_from_slice(&1u32.to_le_bytes());
        table.extend_from_slice(&LISTED);
        table.extend_from_slice(&0u32.to_le_bytes());
        let set = n.command(CTRL_MAC, MAC_TABLE_SET, &table)?;
        let listed = n.comes_back(LISTED, 23)?;
        if !stranger {
            ctx.expect(TABLE_BEFORE_USED, set == NET_OK && listed, || {
                format!(
                    "MAC_TABLE_SET ack {set}; a frame to the listed address came back: {listed}"
                )
            });
        }
        // All-multicast.
        let multi_before = n.comes_back(MULTICAST, 24)?;
        let on = n.command(CTRL_RX, RX_ALLMULTI, &[1])?;
        let multi_after = n.comes_back(MULTICAST, 25)?;
        if !stranger {
            let ok = multi_off == NET_OK && on == NET_OK && !multi_before && multi_after;
            ctx.expect(ALLMULTI, ok, || {
                format!(
                    "ALLMULTI off ack {multi_off}, on ack {on}; a multicast frame came back before {multi_before}, after {multi_after}"
                )
            });
        }
        ctx.expect(ALLMULTI_BYTE, multi_off == NET_OK && on == NET_OK, || {
            format!("one-byte ALLMULTI commands acked {multi_off} and {on}")
        });
        ctx.record(
            ALLMULTI_ALL,
            if multi_after {
                Outcome::Pass
            } else {
                Outcome::Warn("a multicast frame did not come back with all-multicast on".into())
            },
        );
        // Promiscuous.
        let p = n.command(CTRL_RX, RX_PROMISC, &[1])?;
        let again = n.comes_back(STRANGER, 26)?;
        ctx.expect(PROMISC, p == NET_OK && again, || {
            format!("PROMISC on ack {p}; a frame to a stranger came back: {again}")
        });
        ctx.expect(PROMISC_BYTE, off == NET_OK && p == NET_OK, || {
            format!("one-byte PROMISC commands acked {off} and {p}")
        });
        ctx.record(
            PROMISC_ALL,
            if again {
                Outcome::Pass
            } else {
                Outcome::Warn("a frame to a stranger did not come back in promiscuous mode".into())
            },
        );
        Ok(())
    };
    // `comes_back` waits with `Expect` for each frame that should come,
    // and the dropped ones cost that wait too: a few seconds in all.
    if let Err(e) = run(&mut n, ctx) {
        let recorded: Vec<&str> = ctx_recorded(ctx);
        let left: Vec<&'static str> = all
            .iter()
            .copied()
            .filter(|s| !recorded.contains(s))
            .collect();
        ctx.blocked(&left, &e);
    }
}

/// The statements `ctx` has recorded so far.
fn ctx_recorded<'a>(ctx: &'a Ctx<'_>) -> Vec<&'a str> {
    ctx.recorded().iter().map(|r| r.statement).collect()
}

/// Several queue pairs: packets only on receiveq1 until VQ_PAIRS_SET;
/// with two pairs set, the packets of a flow all on one receive queue of
/// the two (steering by flow, §5.1.6.5.5), whichever transmit queue sent
/// them; only within the pairs set once it is used (§5.1.6.5.6.1).
pub const STEERING: Check = Check {
    name: "net-steering",
    statements: &[STEER_FIRST, STEER_WITHIN, STEER_BY_FLOW],
    run: |ctx| {
        let all = [STEER_FIRST, STEER_WITHIN, STEER_BY_FLOW];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        let need = bit(NetFeatures::CTRL_VQ) | bit(NetFeatures::MQ);
        if d.offered & need != need {
            ctx.not_applicable(
                &all,
                "VIRTIO_NET_F_MQ (with VIRTIO_NET_F_CTRL_VQ) not offered",
            );
            return;
        }
        let pairs = u16::from_le_bytes([d.config8(8), d.config8(9)]);
        if pairs < 2 {
            ctx.not_applicable(&all, "max_virtqueue_pairs is 1: no second pair to steer to");
            return;
        }
        let want = plain(&d, need);
        let mut n = match NetDev::live(d, want, &[0, 2], 2048) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        // Eight flows: the source address's last byte and the length
        // differ per frame; each frame's tag starts at `base`.
        let spread = |n: &mut NetDev<'_>, base: u8| -> Result<Vec<u16>, String> {
            let mut on = Vec::new();
            for k in 0..8u8 {
                let mut f = frame([0xff; 6], 60 + usize::from(k), base + k, 0, (0, 0));
                f[HDR + 11] = k;
                n.send(&f)?;
                if let Some((q, _)) = n.receive_tag(&[0, 2], base + k, Patience::Expect)? {
                    on.push(q);
                }
            }
            Ok(on)
        };
        match spread(&mut n, 40) {
            Ok(on) if on.is_empty() => {
                ctx.not_observable(
                    &all,
                    "nothing came back: the backend does not return transmitted frames",
                );
                return;
            }
            Ok(on) => ctx.expect(STEER_FIRST, on.iter().all(|q| *q == 0), || {
                format!("before VQ_PAIRS_SET, packets arrived on queues {on:?}")
            }),
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        }
        // Two flows, three packets each, one sent on each pair's transmit
        // queue: where each flow's packets land.
        let flows = |n: &mut NetDev<'_>| -> Result<Vec<(u16, Vec<u16>)>, String> {
            let mut out = Vec::new();
            for (txq, base, src) in [(1u16, 60u8, 0x61u8), (3, 70, 0x62)] {
                let mut on = Vec::new();
                for k in 0..3u8 {
                    let mut f = frame([0xff; 6], 90, base + k, 0, (0, 0));
                    f[HDR + 11] = src;
                    n.send_on(txq, &f)?;
                    if let Some((q, _)) = n.receive_tag(&[0, 2], base + k, Patience::Expect)? {
                        on.push(q);
                    }
                }
                out.push((txq, on));
            }
            Ok(out)
        };
        let result = (|| {
            let two = n.command(CTRL_MQ, MQ_VQ_PAIRS_SET, &2u16.to_le_bytes())?;
            // Transmit queue 3 is the driver's to use only once two pairs
            // are set (§5.1.6.5.5).
            let by_flow = if two == NET_OK {
                flows(&mut n)?
            } else {
                Vec::new()
            };
            let one = n.command(CTRL_MQ, MQ_VQ_PAIRS_SET, &1u16.to_le_bytes())?;
            Ok::<_, String>((two, by_flow, one, spread(&mut n, 50)?))
        })();
        if let Err(e) = &result {
            ctx.blocked(&[STEER_BY_FLOW], e);
        }
        if let Ok((two, by_flow, _, _)) = &result {
            let arrived = by_flow.iter().all(|(_, on)| on.len() == 3);
            let consistent = by_flow
                .iter()
                .all(|(_, on)| on.windows(2).all(|w| w[0] == w[1]) && on.iter().all(|q| *q < 4));
            if *two != NET_OK || !arrived {
                ctx.not_observable(
                    &[STEER_BY_FLOW],
                    "with two pairs set, not every packet came back",
                );
            } else {
                ctx.expect(STEER_BY_FLOW, consistent, || {
                    format!("with two pairs set, per transmit queue the flow's packets arrived on receive queues {by_flow:?}")
                });
            }
        }
        let result = result.map(|(two, _, one, on)| (two, one, on));
        match result {
            Ok((two, one, on)) => ctx.expect(
                STEER_WITHIN,
                two == NET_OK && one == NET_OK && !on.is_empty() && on.iter().all(|q| *q == 0),
                || format!("VQ_PAIRS_SET 2 ack {two}, 1 ack {one}; packets then on queues {on:?}"),
            ),
            Err(e) => ctx.blocked(&[STEER_WITHIN], &e),
        }
    },
};

/// The MTU in force both ways: a frame of mtu plus the Ethernet header is
/// forwarded whole, a longer one never reaches the driver
/// (§5.1.4.1).
pub const MTU_FRAMES: Check = Check {
    name: "net-mtu-frames",
    statements: &[MTU_NO_BIGGER, MTU_FORWARDED],
    run: |ctx| {
        let all = [MTU_NO_BIGGER, MTU_FORWARDED];
        let Some(d) = open_net(ctx, &all) else {
            return;
        };
        if d.offered & bit(NetFeatures::MTU) == 0 {
            ctx.not_applicable(&all, "VIRTIO_NET_F_MTU not offered");
            return;
        }
        let mtu = usize::from(d.net_mtu());
        let want = plain(&d, 0);
        let len = u32::try_from(HDR + mtu + ETH + 64).unwrap_or(u32::MAX);
        let mut n = match NetDev::live(d, want, &[0], len) {
            Ok(n) => n,
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        };
        // A small frame first: the backend must return frames at all.
        match n.comes_back([0xff; 6], 10) {
            Ok(true) => {}
            Ok(false) => {
                ctx.not_observable(
                    &all,
                    "nothing came back: the backend does not return transmitted frames",
                );
                return;
            }
            Err(e) => {
                ctx.blocked(&all, &e);
                return;
            }
        }
        let fits = frame([0xff; 6], mtu + ETH, 11, 0, (0, 0));
        match n
            .send(&fits)
            .and_then(|()| n.receive_tag(&[0], 11, Patience::Expect))
        {
            Ok(Some((_, r))) => ctx.expect(MTU_FORWARDED, r.frame == fits[HDR..], || {
                format!("a {}-byte frame came back as {} bytes", mtu + ETH, r.frame.len())
            }),
            Ok(None) => ctx.record(
                MTU_FORWARDED,
                Outcome::Fail(format!(
                    "a frame of mtu {mtu} plus the Ethernet header did not come back (a smaller one does, see net-receive-plain)"
                )),
            ),
            Err(e) => ctx.blocked(&[MTU_FORWARDED], &e),
        }
        let over = frame([0xff; 6], mtu + ETH + 1, 12, 0, (0, 0));
        match n
            .send(&over)
            .and_then(|()| n.receive_tag(&[0], 12, Patience::Quiet))
        {
            Ok(Some((_, r))) => ctx.record(
                MTU_NO_BIGGER,
                Outcome::Fail(format!(
                    "a {}-byte frame reached the driver (mtu {mtu})",
                    r.frame.len()
                )),
            ),
            Ok(None) => ctx.not_observable(
                &[MTU_NO_BIGGER],
                "the longer frame was not transmitted, so nothing longer reached the receive side",
            ),
            Err(e) => ctx.blocked(&[MTU_NO_BIGGER], &e),
        }
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks' UDP frames are what they claim (RFC 768, RFC 1071): a
    /// complete checksum validates, a damaged one does not, and a partial
    /// one completed as §5.1.6.2 says validates.
    #[test]
    fn section_5_1_6_2_the_checks_udp_frames_sum_right() {
        let full = udp_frame(201, 3, false, 0);
        assert!(ip_valid(&full[HDR..]) && udp_valid(&full[HDR..]));
        assert!(udp_tagged(&full[HDR..], 3));
        let bad = udp_frame(201, 3, false, 0x1111);
        assert!(!udp_valid(&bad[HDR..]));
        let partial = udp_frame(201, 3, true, 0);
        assert_eq!(partial[0], NEEDS_CSUM);
        let mut f = partial[HDR..].to_vec();
        assert!(!udp_valid(&f));
        let v = !fold(sum16(&f[UDP_AT..], 0));
        f[UDP_AT + UDP_CSUM..UDP_AT + UDP_CSUM + 2].copy_from_slice(&v.to_be_bytes());
        assert!(udp_valid(&f));
    }
}
