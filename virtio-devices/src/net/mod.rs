//! virtio-net, the network device (spec §5.1): receiveq/transmitq pairs
//! and a control queue over a [`NetBackend`] that moves whole frames.
//!
//! Every frame is copied between guest memory and buffers allocated at
//! activation (no Rust slice ever covers guest memory, and nothing is
//! allocated per frame). Receive: frames the backend has are pulled into a
//! bounded ring per receive queue and delivered as the driver posts
//! buffers (§5.1.6.4); a full ring drops with a counter. With several
//! pairs in use, each frame goes to the receive queue paired with the
//! transmit queue its flow last sent on ([`steering`], §5.1.6.5.5). Transmit: a frame the
//! backend answers `Busy` stays in the device and the transmit queues
//! pause until [`VirtioDevice::backend_ready`]. Checksum offload
//! (`VIRTIO_NET_F_CSUM`) is completed in the device unless the backend
//! takes the header itself; on receive from a plain backend with
//! `VIRTIO_NET_F_GUEST_CSUM`, IPv4 TCP/UDP checksums are checked on the
//! host and `DATA_VALID` set when right (§5.1.6.4.1), so the guest need
//! not sum. Not supported: segmentation offloads (TSO,
//! UFO, USO), VLAN filtering, RSS and hash reports, announcements,
//! notification coalescing.
//!
//! Over vhost-user the frontend keeps the control queue (QEMU negotiates
//! `CTRL_VQ` with the driver itself and forwards `MQ` alone): then the
//! pairs in use are the ones the frontend gave the device.

pub mod steering;

use steering::Steering;

use alloc::vec::Vec;
use core::fmt;
use core::mem;

use backends::net::{MAX_FRAME, NetBackend, NetError, Offloads, Sent};
use virtio_core::GuestMemory;
use virtio_core::features::{DeviceType, NetFeatures, TransportFeatures, driver_select};
use virtio_core::memory::Access;
use virtio_core::split::{DeviceQueue, QueueError};

use crate::device::{DeviceError, QueueConfig, Served, VirtioDevice, next_head};

pub use virtio_core::net::{
    ETH_ALEN, HDR_LEN, HDR_LEN_LEGACY, NetHdr, config, ctrl, flags, gso, internet_checksum, status,
    verify_l4_checksum,
};

/// Bytes of the configuration space served (`struct virtio_net_config`
/// through `supported_hash_types`, §5.1.4).
pub const CONFIG_LEN: usize = 24;
/// Bytes an Ethernet header and one VLAN tag add to the MTU.
pub const ETH_OVERHEAD: usize = 18;
/// Entries of each MAC filter table (unicast, multicast) the device keeps;
/// a longer table turns the filter for that class off (§5.1.6.5.2).
pub const MAC_TABLE_ENTRIES: usize = 64;
/// Largest control command the device reads (class, command and data).
pub const CTRL_MAX: usize = 4096;
/// Most frames pulled from the backend in one call, so a peer that never
/// stops sending cannot hold the device.
pub const RX_BUDGET: usize = 1024;

/// The feature bits this device can offer (§5.1.3).
pub const SUPPORTED: NetFeatures = NetFeatures::CSUM
    .union(NetFeatures::GUEST_CSUM)
    .union(NetFeatures::MTU)
    .union(NetFeatures::MAC)
    .union(NetFeatures::MRG_RXBUF)
    .union(NetFeatures::STATUS)
    .union(NetFeatures::CTRL_VQ)
    .union(NetFeatures::CTRL_RX)
    .union(NetFeatures::MQ)
    .union(NetFeatures::CTRL_MAC_ADDR);

/// How to build a [`Net`]; [`Default`] gives one pair of
/// [`DEFAULT_QUEUE_SIZE`](crate::DEFAULT_QUEUE_SIZE)-entry queues,
/// MTU 1500, link up and every supported feature offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The MAC address (`mac`, offered with `VIRTIO_NET_F_MAC`).
    pub mac: [u8; ETH_ALEN],
    /// The MTU (`mtu`, offered with `VIRTIO_NET_F_MTU`); frames longer than
    /// it plus [`ETH_OVERHEAD`] are dropped both ways.
    pub mtu: u16,
    /// Receive/transmit queue pairs; more than one offers `MQ`.
    pub queue_pairs: u16,
    /// Each queue's maximum size (a power of two, at most 32768).
    pub queue_size: u16,
    /// The administrative link state at start (see [`Net::set_link`]).
    pub link_up: bool,
    /// Which of [`SUPPORTED`] to offer; bits whose §5.1.3.1 dependencies
    /// are left out are dropped too.
    pub offer: NetFeatures,
    /// Frames that may wait in the device for receive buffers.
    pub rx_pending: u16,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            mtu: 1500,
            queue_pairs: 1,
            queue_size: crate::device::DEFAULT_QUEUE_SIZE,
            link_up: true,
            offer: SUPPORTED,
            rx_pending: 64,
        }
    }
}

/// Why a [`NetConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetConfigError {
    /// `queue_pairs` is 0 or above `0x8000` (§5.1.4).
    BadQueuePairs {
        /// The value.
        pairs: u16,
    },
    /// `queue_size` is 0, not a power of two, or above 32768.
    BadQueueSize {
        /// The size.
        size: u16,
    },
    /// The MTU is below 68 (§5.1.4.1) or too large for a backend frame.
    BadMtu {
        /// The MTU.
        mtu: u16,
    },
    /// `rx_pending` is 0.
    NoPendingFrames,
}

impl fmt::Display for NetConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetConfigError::BadQueuePairs { pairs } => {
                write!(f, "{pairs} queue pairs is outside 1..=32768 (§5.1.4)")
            }
            NetConfigError::BadQueueSize { size } => {
                write!(
                    f,
                    "queue size {size} is not a power of two in 1..=32768 (§2.7)"
                )
            }
            NetConfigError::BadMtu { mtu } => write!(
                f,
                "MTU {mtu} is outside 68..={} (§5.1.4.1)",
                MAX_FRAME - ETH_OVERHEAD
            ),
            NetConfigError::NoPendingFrames => {
                f.write_str("the receive ring must hold at least one frame")
            }
        }
    }
}

impl core::error::Error for NetConfigError {}

/// Counters for the harness report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the backend.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// Frames delivered to the driver.
    pub rx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: u64,
    /// Transmitted frames whose checksum the device completed (§5.1.6.2).
    pub tx_checksummed: u64,
    /// Received frames from a plain backend whose IPv4 TCP/UDP checksum
    /// the device checked and marked `DATA_VALID` (§5.1.6.4.1).
    pub rx_csum_validated: u64,
    /// Times the backend answered `Busy` and transmit paused.
    pub tx_busy: u64,
    /// Transmit chains with a device-writable buffer (§5.1.6.2).
    pub tx_drop_wrong_direction: u64,
    /// Transmit chains shorter than the header plus an Ethernet header.
    pub tx_drop_short: u64,
    /// Transmit frames longer than the MTU allows.
    pub tx_drop_too_long: u64,
    /// Transmit headers the device cannot honour: a checksum position past
    /// the frame, or a GSO type not negotiated (§5.1.6.2.1).
    pub tx_drop_bad_header: u64,
    /// Transmit chains not in guest memory or malformed (§2.7.5).
    pub tx_drop_malformed: u64,
    /// Frames dropped because the link is down.
    pub tx_drop_link_down: u64,
    /// Frames the backend failed to send.
    pub tx_drop_backend: u64,
    /// Received frames dropped because the pending ring was full (the
    /// driver posted no buffers).
    pub rx_drop_ring_full: u64,
    /// Received frames larger than the driver's buffers (§5.1.6.3).
    pub rx_drop_too_big: u64,
    /// Received frames larger than the MTU allows (the backend dropped
    /// them).
    pub rx_drop_too_long: u64,
    /// Received frames the MAC filter refused (§5.1.6.5.1, §5.1.6.5.2).
    pub rx_drop_filtered: u64,
    /// Received frames with a header the driver cannot take (GSO not
    /// negotiated, too short).
    pub rx_drop_bad_header: u64,
    /// Backend receive failures.
    pub rx_drop_backend: u64,
    /// Receive chains returned unused: a device-readable buffer, smaller
    /// than the header, malformed or outside guest memory (§5.1.6.3).
    pub rx_bad_chains: u64,
    /// Control commands answered `VIRTIO_NET_OK`.
    pub ctrl_ok: u64,
    /// Control commands answered `VIRTIO_NET_ERR`.
    pub ctrl_err: u64,
    /// Control chains without an ack byte, or malformed (returned empty).
    pub ctrl_bad_chains: u64,
    /// Configuration changes signalled (link status).
    pub config_changes: u64,
    /// Batches served (service calls that completed chains).
    pub batches: u64,
    /// Batches after which the driver was notified.
    pub notifications: u64,
    /// Batches whose notification the driver suppressed (§2.7.7, §2.7.10).
    pub notifications_suppressed: u64,
}

/// Receive filtering state (§5.1.6.5.1, §5.1.6.5.2).
#[derive(Debug)]
struct Filter {
    promisc: bool,
    allmulti: bool,
    uni: Vec<[u8; ETH_ALEN]>,
    multi: Vec<[u8; ETH_ALEN]>,
    uni_overflow: bool,
    multi_overflow: bool,
}

impl Filter {
    fn new() -> Self {
        Filter {
            promisc: true,
            allmulti: false,
            uni: Vec::new(),
            multi: Vec::new(),
            uni_overflow: false,
            multi_overflow: false,
        }
    }

    fn reset(&mut self) {
        self.promisc = true;
        self.allmulti = false;
        self.uni.clear();
        self.multi.clear();
        self.uni_overflow = false;
        self.multi_overflow = false;
    }

    fn accepts(&self, mac: &[u8; ETH_ALEN], dst: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        let Ok(dst) = <[u8; ETH_ALEN]>::try_from(dst) else {
            return false;
        };
        if dst == [0xff; ETH_ALEN] {
            return true;
        }
        if dst[0] & 1 != 0 {
            self.allmulti || self.multi_overflow || self.multi.contains(&dst)
        } else {
            dst == *mac || self.uni_overflow || self.uni.contains(&dst)
        }
    }
}

/// Frames waiting for receive buffers: a fixed ring of fixed-size slots,
/// each holding the header the driver will see followed by the frame. A
/// frame arrives in a spare slot-sized buffer and is swapped in, so
/// steering it to one ring or another copies nothing.
#[derive(Debug)]
struct FrameRing {
    slots: Vec<Vec<u8>>,
    lens: Vec<usize>,
    head: usize,
    count: usize,
}

impl FrameRing {
    fn new(slots: usize, slot: usize) -> Self {
        FrameRing {
            slots: (0..slots).map(|_| alloc::vec![0; slot]).collect(),
            lens: alloc::vec![0; slots],
            head: 0,
            count: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.count == self.lens.len()
    }

    /// Queues the `len` bytes of `frame` by swapping it with the tail
    /// slot (`frame` gets that slot's buffer back, of the same size).
    fn push_swap(&mut self, frame: &mut Vec<u8>, len: usize) {
        if self.is_full() {
            return;
        }
        let i = (self.head + self.count) % self.lens.len();
        mem::swap(&mut self.slots[i], frame);
        self.lens[i] = len;
        self.count += 1;
    }

    fn front(&mut self) -> Option<&mut [u8]> {
        if self.count == 0 {
            return None;
        }
        let len = self.lens[self.head];
        self.slots[self.head].get_mut(..len)
    }

    fn pop(&mut self) {
        if self.count > 0 {
            self.head = (self.head + 1) % self.lens.len();
            self.count -= 1;
        }
    }

    fn clear(&mut self) -> usize {
        let n = self.count;
        self.head = 0;
        self.count = 0;
        n
    }
}

/// A transmit frame the backend refused with `Busy`, kept in `tx_buf`.
#[derive(Clone, Copy, Debug)]
struct TxPending {
    queue: u16,
    head: u16,
    len: usize,
}

/// What became of one transmit chain.
enum TxOutcome {
    /// Finished (sent or dropped): return the chain.
    Done,
    /// The backend is busy: keep the chain and the frame.
    Busy(usize),
}

/// What became of the frame at the front of the receive ring.
enum RxOutcome {
    Delivered,
    Dropped,
    NoBuffers,
}

/// One receive queue's frames and the buffers held for the front one.
#[derive(Debug)]
struct RxState {
    /// Received frames waiting for buffers.
    ring: FrameRing,
    /// Receive chains popped for the front frame: (head, capacity).
    held: Vec<(u16, u32)>,
    /// A chain popped after the first held one was completed (a malformed
    /// receive chain while merging): the held chains are no longer the
    /// tail of the ring, so [`VirtioDevice::queue_position`] cannot rewind
    /// past them.
    held_split: bool,
    /// Chains completed on this queue since it was last published.
    completed: u32,
}

/// Buffers allocated at activation.
#[derive(Debug)]
struct Buffers {
    /// The transmit frame being sent (the guest's header, then the frame).
    tx: Vec<u8>,
    /// Per queue pair, the receive state of those whose receive queue the
    /// driver configured.
    rx: Vec<Option<RxState>>,
    /// Where a frame is received before it is steered (swapped into a
    /// ring) or dropped.
    scratch: Vec<u8>,
    /// The control command being served.
    ctrl: Vec<u8>,
}

/// The network device over backend `B` and guest memory `M`.
#[derive(Debug)]
pub struct Net<B, M> {
    backend: B,
    mem: M,
    cfg: NetConfig,
    offered: u64,
    max_sizes: Vec<u16>,
    /// Negotiated features (0 before activation).
    features: u64,
    /// The guest's header length (§5.1.6).
    hdr_len: usize,
    /// Pairs the driver uses (§5.1.6.5.5).
    pairs: u16,
    /// Pairs that exist after negotiation (1 without MQ).
    max_pairs: u16,
    queues: Vec<Option<DeviceQueue>>,
    bufs: Option<Buffers>,
    tx_pending: Option<TxPending>,
    mac: [u8; ETH_ALEN],
    admin_up: bool,
    /// The link state the driver was last told.
    reported_up: bool,
    filter: Filter,
    steering: Steering,
    stats: NetStats,
}

fn bit(f: NetFeatures) -> u64 {
    f.bits()
}

impl<B: NetBackend, M: GuestMemory> Net<B, M> {
    /// A network device on `backend`, serving guest memory `mem`, as `cfg`
    /// says.
    pub fn new(backend: B, mem: M, cfg: NetConfig) -> Result<Self, NetConfigError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > ctrl::MQ_VQ_PAIRS_MAX {
            return Err(NetConfigError::BadQueuePairs {
                pairs: cfg.queue_pairs,
            });
        }
        if cfg.queue_size == 0 || !cfg.queue_size.is_power_of_two() || cfg.queue_size > 32768 {
            return Err(NetConfigError::BadQueueSize {
                size: cfg.queue_size,
            });
        }
        if cfg.mtu < 68 || usize::from(cfg.mtu) + ETH_OVERHEAD > MAX_FRAME {
            return Err(NetConfigError::BadMtu { mtu: cfg.mtu });
        }
        if cfg.rx_pending == 0 {
            return Err(NetConfigError::NoPendingFrames);
        }
        let mut f = cfg.offer & SUPPORTED;
        if cfg.queue_pairs == 1 {
            f.remove(NetFeatures::MQ);
        }
        let wanted = f.bits()
            | (TransportFeatures::VERSION_1
                | TransportFeatures::RING_INDIRECT_DESC
                | TransportFeatures::RING_EVENT_IDX)
                .bits();
        // §5.1.3.1: never offer a bit whose requirement is not offered.
        let offered = driver_select(DeviceType::Net, wanted, wanted);
        let n = usize::from(cfg.queue_pairs) * 2 + 1;
        let up = cfg.link_up && backend.link_up();
        Ok(Net {
            backend,
            mem,
            offered,
            max_sizes: alloc::vec![cfg.queue_size; n],
            features: 0,
            hdr_len: HDR_LEN,
            pairs: 1,
            max_pairs: 1,
            queues: Vec::new(),
            bufs: None,
            tx_pending: None,
            mac: cfg.mac,
            admin_up: cfg.link_up,
            reported_up: up,
            filter: Filter::new(),
            steering: Steering::new(),
            stats: NetStats::default(),
            cfg,
        })
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The configuration the device was built from.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The MAC address now (the driver may set it, §5.1.6.5.2).
    pub fn mac(&self) -> [u8; ETH_ALEN] {
        self.mac
    }

    /// Queue pairs the driver uses (§5.1.6.5.5).
    pub fn queue_pairs_in_use(&self) -> u16 {
        self.pairs
    }

    /// Frames waiting in the device for receive buffers.
    pub fn rx_pending(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| {
            b.rx.iter().flatten().map(|r| r.ring.count).sum::<usize>()
        })
    }

    /// Pairs a received frame may be steered to: those below the number
    /// the driver set with `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (§5.1.6.5.5:
    /// receiveq1 only until then), or, when the frontend keeps the control
    /// queue (vhost-user), every pair it configured.
    fn rx_limit(&self) -> u16 {
        if self.negotiated(NetFeatures::CTRL_VQ) {
            self.pairs
        } else {
            self.max_pairs
        }
    }

    /// Whether a transmit frame waits for the backend.
    pub fn tx_paused(&self) -> bool {
        self.tx_pending.is_some()
    }

    /// Whether promiscuous mode is on (§5.1.6.5.1).
    pub fn promiscuous(&self) -> bool {
        self.filter.promisc
    }

    /// Whether all-multicast mode is on (§5.1.6.5.1).
    pub fn all_multicast(&self) -> bool {
        self.filter.allmulti
    }

    fn negotiated(&self, f: NetFeatures) -> bool {
        self.features & bit(f) != 0
    }

    fn link_now(&self) -> bool {
        self.admin_up && self.backend.link_up()
    }

    /// Sets the administrative link state. Returns whether the driver must
    /// get a configuration change interrupt (`VIRTIO_NET_F_STATUS`
    /// negotiated and the reported state changed, §5.1.4.2); the caller
    /// then calls the register file's `config_changed`. While the link is
    /// down transmitted frames are dropped and nothing is received.
    pub fn set_link(&mut self, up: bool) -> bool {
        self.admin_up = up;
        self.link_changed()
    }

    /// Updates the reported link state; whether to signal the change.
    fn link_changed(&mut self) -> bool {
        let now = self.link_now();
        if now == self.reported_up {
            return false;
        }
        self.reported_up = now;
        if self.bufs.is_some() && self.negotiated(NetFeatures::STATUS) {
            self.stats.config_changes += 1;
            true
        } else {
            false
        }
    }

    fn max_frame(&self) -> usize {
        usize::from(self.cfg.mtu) + ETH_OVERHEAD
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac);
        let st = if self.reported_up { status::LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&st.to_le_bytes());
        c[8..10].copy_from_slice(&self.cfg.queue_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.cfg.mtu.to_le_bytes());
        // Speed and duplex unknown (§5.1.4: 0xffffffff, 0xff).
        c[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        c[16] = 0xff;
        c
    }

    /// Moves one queue's published entries to the driver and decides the
    /// notification.
    fn finish_queue(
        &mut self,
        q: &mut DeviceQueue,
        completed: u32,
        served: &mut Served,
    ) -> Result<(), QueueError> {
        q.publish_used(&self.mem)?;
        if completed > 0 {
            served.completed += completed;
            self.stats.batches += 1;
            if q.needs_notification(&self.mem)? {
                self.stats.notifications += 1;
                served.interrupt = true;
            } else {
                self.stats.notifications_suppressed += 1;
            }
        }
        Ok(())
    }

    // ---- transmit (§5.1.6.2) ----

    /// Copies chain `head` of `q` (transmit queue of pair `pair`) into the
    /// transmit buffer and checks it; sends it unless it is dropped.
    fn tx_one(&mut self, q: &DeviceQueue, head: u16, pair: u16) -> TxOutcome {
        let max_frame = self.max_frame();
        let vnet = self.backend.vnet_hdr_len();
        let link = self.link_now();
        let Some(bufs) = self.bufs.as_mut() else {
            return TxOutcome::Done;
        };
        let tx = &mut bufs.tx;
        let Ok(chain) = q.chain(&self.mem, head) else {
            self.stats.tx_drop_malformed += 1;
            return TxOutcome::Done;
        };
        let mut len = 0usize;
        let mut too_long = false;
        for d in chain {
            let Ok(d) = d else {
                self.stats.tx_drop_malformed += 1;
                return TxOutcome::Done;
            };
            if d.is_write_only() {
                self.stats.tx_drop_wrong_direction += 1;
                return TxOutcome::Done;
            }
            let n = d.len() as usize;
            if too_long || len + n > tx.len() {
                too_long = true;
                continue;
            }
            if self.mem.read(d.addr(), &mut tx[len..len + n]).is_err() {
                self.stats.tx_drop_malformed += 1;
                return TxOutcome::Done;
            }
            len += n;
        }
        if too_long {
            self.stats.tx_drop_too_long += 1;
            return TxOutcome::Done;
        }
        let h = self.hdr_len;
        if len < h + 14 {
            self.stats.tx_drop_short += 1;
            return TxOutcome::Done;
        }
        if len - h > max_frame {
            self.stats.tx_drop_too_long += 1;
            return TxOutcome::Done;
        }
        let Some(hdr) = NetHdr::parse(&tx[..h]) else {
            self.stats.tx_drop_short += 1;
            return TxOutcome::Done;
        };
        // §5.1.6.2.1: no GSO without HOST_TSO*/UFO, which are not offered.
        if hdr.gso_type != gso::NONE {
            self.stats.tx_drop_bad_header += 1;
            return TxOutcome::Done;
        }
        let frame_len = len - h;
        if hdr.flags & flags::NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > frame_len {
                self.stats.tx_drop_bad_header += 1;
                return TxOutcome::Done;
            }
            if vnet == 0 {
                let frame = &mut tx[h..len];
                let sum = match internet_checksum(&frame[start..]) {
                    0 => 0xffff,
                    s => s,
                };
                frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
                self.stats.tx_checksummed += 1;
            }
        }
        if !link {
            self.stats.tx_drop_link_down += 1;
            return TxOutcome::Done;
        }
        if self.max_pairs > 1 {
            // §5.1.6.5.5: this flow's replies go to the paired receiveq.
            self.steering.learn(&tx[h..len], pair);
        }
        self.send(len)
    }

    /// Sends the `len` bytes of the transmit buffer (header and frame).
    fn send(&mut self, len: usize) -> TxOutcome {
        let h = self.hdr_len;
        let Some(bufs) = self.bufs.as_ref() else {
            return TxOutcome::Done;
        };
        let frame = &bufs.tx[h..len];
        let r = match self.backend.vnet_hdr_len() {
            0 => self.backend.send(&[frame]),
            n if n == HDR_LEN => {
                // Pass the header through, `num_buffers` zero (§5.1.6.2).
                let mut hdr = NetHdr::parse(&bufs.tx[..h]).unwrap_or_default();
                hdr.num_buffers = 0;
                self.backend.send(&[&hdr.to_bytes(), frame])
            }
            n => {
                // A backend header this device does not know: a zeroed one.
                let zero = [0u8; 64];
                let Some(z) = zero.get(..n) else {
                    self.stats.tx_drop_backend += 1;
                    return TxOutcome::Done;
                };
                self.backend.send(&[z, frame])
            }
        };
        match r {
            Ok(Sent::Done) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += (len - h) as u64;
                TxOutcome::Done
            }
            Ok(Sent::Busy) => {
                self.stats.tx_busy += 1;
                TxOutcome::Busy(len)
            }
            Err(_) => {
                self.stats.tx_drop_backend += 1;
                TxOutcome::Done
            }
        }
    }

    /// Serves transmit queue `index` until it is empty or the backend is
    /// busy.
    fn tx_queue(&mut self, index: u16, served: &mut Served) -> Result<(), DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: index, err };
        let Some(mut q) = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return Ok(());
        };
        let mut completed = 0;
        let mut malformed = 0;
        let r = (|| {
            q.disable_notification(&self.mem)?;
            loop {
                match next_head(&mut q, &self.mem, &mut malformed)? {
                    None => return Ok(()),
                    Some(head) => match self.tx_one(&q, head, index / 2) {
                        TxOutcome::Done => {
                            q.add_used(&self.mem, head, 0)?;
                            completed += 1;
                        }
                        TxOutcome::Busy(len) => {
                            // Notifications stay off: the backend's
                            // readiness resumes the queue.
                            self.tx_pending = Some(TxPending {
                                queue: index,
                                head,
                                len,
                            });
                            return Ok(());
                        }
                    },
                }
            }
        })();
        self.stats.tx_drop_malformed += malformed;
        let f = self.finish_queue(&mut q, completed, served);
        self.queues[usize::from(index)] = Some(q);
        r.and(f).map_err(qerr)
    }

    /// Resumes a paused frame, then serves every transmit queue.
    fn tx_pump(&mut self, served: &mut Served) -> Result<(), DeviceError> {
        if let Some(p) = self.tx_pending {
            if let TxOutcome::Busy(_) = self.send(p.len) {
                return Ok(());
            }
            self.tx_pending = None;
            let qerr = |err| DeviceError::Queue {
                queue: p.queue,
                err,
            };
            if let Some(mut q) = self
                .queues
                .get_mut(usize::from(p.queue))
                .and_then(Option::take)
            {
                let r = q
                    .add_used(&self.mem, p.head, 0)
                    .and_then(|()| self.finish_queue(&mut q, 1, served));
                self.queues[usize::from(p.queue)] = Some(q);
                r.map_err(qerr)?;
            }
        }
        for pair in 0..self.max_pairs {
            self.tx_queue(pair * 2 + 1, served)?;
            if self.tx_pending.is_some() {
                break;
            }
        }
        Ok(())
    }

    // ---- receive (§5.1.6.3, §5.1.6.4) ----

    /// Receives one frame from the backend and queues it for the receive
    /// queue steering picks, or drops it. `None` when the backend has
    /// nothing more; `Some(Some(pair))` when it was queued for `pair`;
    /// `Some(None)` when it was dropped.
    fn rx_pull(&mut self) -> Option<Option<u16>> {
        let h = self.hdr_len;
        let vnet = self.backend.vnet_hdr_len();
        let max_frame = self.max_frame();
        let limit = self.rx_limit();
        let bufs = self.bufs.as_mut()?;
        let slot: &mut [u8] = &mut bufs.scratch;
        // The slot holds HDR_LEN bytes of header then the frame; a backend
        // with its own header writes it in place of ours.
        let (at, room) = if vnet == HDR_LEN {
            (0, HDR_LEN + max_frame)
        } else {
            (HDR_LEN, max_frame + vnet)
        };
        let n = match self.backend.recv(&mut slot[at..at + room]) {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(NetError::TooBig { .. }) => {
                self.stats.rx_drop_too_long += 1;
                return Some(None);
            }
            Err(_) => {
                self.stats.rx_drop_backend += 1;
                return None;
            }
        };
        let (hdr, frame_len) = if vnet == HDR_LEN {
            let Some(hdr) = NetHdr::parse(&slot[..n.min(HDR_LEN)]).filter(|_| n >= HDR_LEN) else {
                self.stats.rx_drop_bad_header += 1;
                return Some(None);
            };
            (hdr, n - HDR_LEN)
        } else if vnet == 0 {
            // A plain backend delivers complete checksums: no offload.
            (NetHdr::default(), n)
        } else {
            // Unknown backend header: skip it.
            if n < vnet {
                self.stats.rx_drop_bad_header += 1;
                return Some(None);
            }
            slot.copy_within(HDR_LEN + vnet..HDR_LEN + n, HDR_LEN);
            (NetHdr::default(), n - vnet)
        };
        let mut hdr = hdr;
        if hdr.gso_type != gso::NONE || frame_len > max_frame {
            self.stats.rx_drop_bad_header += 1;
            return Some(None);
        }
        let frame = &mut slot[HDR_LEN..HDR_LEN + frame_len];
        if !self
            .filter
            .accepts(&self.mac, frame.get(..ETH_ALEN).unwrap_or(&[]))
        {
            self.stats.rx_drop_filtered += 1;
            return Some(None);
        }
        if hdr.flags & flags::NEEDS_CSUM != 0 && self.features & bit(NetFeatures::GUEST_CSUM) == 0 {
            // §5.1.6.4: the driver cannot take a partial checksum.
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > frame_len {
                self.stats.rx_drop_bad_header += 1;
                return Some(None);
            }
            let sum = match internet_checksum(&frame[start..]) {
                0 => 0xffff,
                s => s,
            };
            frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            hdr = NetHdr::default();
        }
        if vnet == 0
            && self.features & bit(NetFeatures::GUEST_CSUM) != 0
            && verify_l4_checksum(frame) == Some(true)
        {
            // §5.1.6.4.1: the device MAY set DATA_VALID; the host checks
            // IPv4 TCP/UDP checksums so the guest need not.
            hdr.flags |= flags::DATA_VALID;
            self.stats.rx_csum_validated += 1;
        }
        // §5.1.6.5.5: with several pairs in use, the flow's receive queue;
        // receiveq1 otherwise.
        let pair = if limit > 1 {
            let rx = &bufs.rx;
            self.steering.steer(frame, limit, |p| {
                rx.get(usize::from(p)).is_some_and(Option::is_some)
            })
        } else {
            0
        };
        hdr.num_buffers = 1;
        slot[..HDR_LEN].copy_from_slice(&hdr.to_bytes());
        let mut len = HDR_LEN + frame_len;
        if h == HDR_LEN_LEGACY {
            slot.copy_within(HDR_LEN..len, HDR_LEN_LEGACY);
            len -= HDR_LEN - HDR_LEN_LEGACY;
        }
        let Some(Some(rx)) = bufs.rx.get_mut(usize::from(pair)) else {
            // No receive queue to take it (the driver configured none).
            self.stats.rx_drop_ring_full += 1;
            return Some(None);
        };
        if rx.ring.is_full() {
            self.stats.rx_drop_ring_full += 1;
            return Some(None);
        }
        rx.ring.push_swap(&mut bufs.scratch, len);
        Some(Some(pair))
    }

    /// Walks receive chain `head`: its writable capacity, or `None` if it
    /// cannot take a frame (§5.1.6.3.1: device-writable buffers only).
    fn rx_capacity(&self, q: &DeviceQueue, head: u16) -> Option<u32> {
        let chain = q.chain(&self.mem, head).ok()?;
        let mut cap = 0u32;
        for d in chain {
            let d = d.ok()?;
            if !d.is_write_only() {
                return None;
            }
            self.mem
                .map(d.addr(), u64::from(d.len()), Access::Write)
                .ok()?;
            cap = cap.checked_add(d.len())?;
        }
        Some(cap)
    }

    /// Writes `data` into chain `head`; returns the bytes written.
    fn rx_write(mem: &M, q: &DeviceQueue, head: u16, data: &[u8]) -> u32 {
        let Ok(chain) = q.chain(mem, head) else {
            return 0;
        };
        let mut done = 0usize;
        for d in chain {
            if done == data.len() {
                break;
            }
            let Ok(d) = d else { break };
            if !d.is_write_only() {
                break;
            }
            let n = (d.len() as usize).min(data.len() - done);
            if mem.write(d.addr(), &data[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        done as u32
    }

    /// Delivers the front frame of `rx` into its receive queue `q`
    /// (§5.1.6.4).
    fn rx_deliver(
        &mut self,
        q: &mut DeviceQueue,
        rx: &mut RxState,
        malformed: &mut u64,
    ) -> Result<RxOutcome, QueueError> {
        let mrg = self.negotiated(NetFeatures::MRG_RXBUF);
        let h = self.hdr_len;
        let Some(need) = rx.ring.front().map(|f| f.len()) else {
            return Ok(RxOutcome::NoBuffers);
        };
        loop {
            let have: u64 = rx.held.iter().map(|&(_, c)| u64::from(c)).sum();
            if have >= need as u64 || (!mrg && !rx.held.is_empty()) {
                break;
            }
            if rx.held.len() >= usize::from(q.size()) {
                // Even the whole queue cannot hold it.
                self.stats.rx_drop_too_big += 1;
                rx.ring.pop();
                return Ok(RxOutcome::Dropped);
            }
            let Some(head) = next_head(q, &self.mem, malformed)? else {
                return Ok(RxOutcome::NoBuffers);
            };
            match self.rx_capacity(q, head) {
                Some(cap) if cap as usize >= h => rx.held.push((head, cap)),
                _ => {
                    self.stats.rx_bad_chains += 1;
                    rx.held_split |= !rx.held.is_empty();
                    q.add_used(&self.mem, head, 0)?;
                    rx.completed += 1;
                }
            }
        }
        if !mrg && (rx.held[0].1 as usize) < need {
            // Too small for this frame without merging (§5.1.6.3.1):
            // drop it and return the buffer unused, so a small buffer
            // cannot stall the queue.
            self.stats.rx_drop_too_big += 1;
            rx.ring.pop();
            let (head, _) = rx.held[0];
            rx.held.clear();
            rx.held_split = false;
            q.add_used(&self.mem, head, 0)?;
            rx.completed += 1;
            return Ok(RxOutcome::Dropped);
        }
        let nb = u16::try_from(rx.held.len()).unwrap_or(u16::MAX);
        let Some(stream) = rx.ring.front() else {
            return Ok(RxOutcome::NoBuffers);
        };
        if h == HDR_LEN {
            stream[10..12].copy_from_slice(&nb.to_le_bytes());
        }
        let mut pos = 0usize;
        for &(head, cap) in &rx.held {
            let take = (cap as usize).min(need - pos);
            let n = Self::rx_write(&self.mem, q, head, &stream[pos..pos + take]);
            q.add_used(&self.mem, head, n)?;
            rx.completed += 1;
            pos += take;
        }
        rx.held.clear();
        rx.held_split = false;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += (need - h) as u64;
        rx.ring.pop();
        Ok(RxOutcome::Delivered)
    }

    /// Runs `f` with receive queue `pair`'s ring and state taken out of
    /// the device (both put back after); `Ok(false)` when the pair has no
    /// receive queue.
    fn with_rx(
        &mut self,
        pair: u16,
        f: impl FnOnce(&mut Self, &mut DeviceQueue, &mut RxState) -> Result<(), QueueError>,
    ) -> Result<bool, DeviceError> {
        let index = pair * 2;
        let qerr = |err| DeviceError::Queue { queue: index, err };
        let Some(mut q) = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return Ok(false);
        };
        let Some(mut rx) = self
            .bufs
            .as_mut()
            .and_then(|b| b.rx.get_mut(usize::from(pair)))
            .and_then(Option::take)
        else {
            self.queues[usize::from(index)] = Some(q);
            return Ok(false);
        };
        let r = f(self, &mut q, &mut rx);
        self.queues[usize::from(index)] = Some(q);
        if let Some(slot) = self
            .bufs
            .as_mut()
            .and_then(|b| b.rx.get_mut(usize::from(pair)))
        {
            *slot = Some(rx);
        }
        r.map(|()| true).map_err(qerr)
    }

    /// Delivers what waits for receive queue `pair` while it has buffers.
    fn rx_drain(&mut self, pair: u16) -> Result<(), DeviceError> {
        self.with_rx(pair, |dev, q, rx| {
            let mut malformed = 0;
            let r = (|| {
                q.disable_notification(&dev.mem)?;
                while let RxOutcome::Delivered | RxOutcome::Dropped =
                    dev.rx_deliver(q, rx, &mut malformed)?
                {}
                Ok(())
            })();
            dev.stats.rx_bad_chains += malformed;
            r
        })
        .map(|_| ())
    }

    /// Delivers pending frames while the drivers have buffers and pulls
    /// more from the backend (each straight to its queue); stops when the
    /// backend is empty or the budget is spent. Then every receive queue
    /// with frames still waiting asks for a kick, and each publishes what
    /// it completed.
    fn rx_pump(&mut self, served: &mut Served) -> Result<(), DeviceError> {
        let pairs = self.max_pairs;
        for p in 0..pairs {
            self.rx_drain(p)?;
        }
        let mut budget = RX_BUDGET;
        while budget > 0 && self.link_now() {
            match self.rx_pull() {
                None => break,
                Some(Some(p)) => self.rx_drain(p)?,
                Some(None) => {}
            }
            budget -= 1;
        }
        for p in 0..pairs {
            let mut completed = 0;
            let mut was = Ok(());
            self.with_rx(p, |dev, q, rx| {
                let mut malformed = 0;
                // Out of buffers: ask for a kick when buffers come; if
                // they came meanwhile, deliver once more now.
                if rx.ring.count > 0 && q.enable_notification(&dev.mem)? {
                    while let RxOutcome::Delivered | RxOutcome::Dropped =
                        dev.rx_deliver(q, rx, &mut malformed)?
                    {}
                }
                dev.stats.rx_bad_chains += malformed;
                completed = mem::take(&mut rx.completed);
                was = dev.finish_queue(q, completed, served);
                Ok(())
            })?;
            was.map_err(|err| DeviceError::Queue { queue: p * 2, err })?;
        }
        Ok(())
    }

    // ---- control (§5.1.6.5) ----

    /// Executes one command held in the control buffer: the ack.
    fn ctrl_exec(&mut self, len: usize) -> u8 {
        let Some(bufs) = self.bufs.as_ref() else {
            return ctrl::ERR;
        };
        let cmd = &bufs.ctrl[..len];
        let (Some(&class), Some(&command)) = (cmd.first(), cmd.get(1)) else {
            return ctrl::ERR;
        };
        let data = &cmd[2..];
        let ok = match (class, command) {
            (ctrl::CLASS_RX, ctrl::RX_PROMISC | ctrl::RX_ALLMULTI)
                if self.negotiated(NetFeatures::CTRL_RX) && data.len() == 1 =>
            {
                let on = data[0] != 0;
                if command == ctrl::RX_PROMISC {
                    self.filter.promisc = on;
                } else {
                    self.filter.allmulti = on;
                }
                true
            }
            (ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET)
                if self.negotiated(NetFeatures::CTRL_MAC_ADDR) && data.len() == ETH_ALEN =>
            {
                self.mac.copy_from_slice(data);
                true
            }
            (ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET) if self.negotiated(NetFeatures::CTRL_RX) => {
                set_tables(&mut self.filter, data)
            }
            (ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET)
                if self.negotiated(NetFeatures::MQ) && data.len() == 2 =>
            {
                let n = u16::from_le_bytes([data[0], data[1]]);
                if (ctrl::MQ_VQ_PAIRS_MIN..=self.max_pairs).contains(&n) {
                    self.pairs = n;
                    // §5.1.6.5.5: no more frames on receive queues beyond
                    // `n` once the command is used: drop what waits there.
                    if let Some(b) = self.bufs.as_mut() {
                        for rx in b.rx.iter_mut().skip(usize::from(n)).flatten() {
                            self.stats.rx_drop_ring_full += rx.ring.clear() as u64;
                        }
                    }
                    true
                } else {
                    false
                }
            }
            _ => false,
        };
        if ok { ctrl::OK } else { ctrl::ERR }
    }

    /// Serves one control chain: readable command, then at least one
    /// writable byte whose first is the ack. Returns the used length.
    fn ctrl_one(&mut self, q: &DeviceQueue, head: u16) -> u32 {
        let Some(bufs) = self.bufs.as_mut() else {
            return 0;
        };
        let Ok(chain) = q.chain(&self.mem, head) else {
            self.stats.ctrl_bad_chains += 1;
            return 0;
        };
        let mut len = 0usize;
        let mut too_long = false;
        let mut ack = None;
        for d in chain {
            let Ok(d) = d else {
                self.stats.ctrl_bad_chains += 1;
                return 0;
            };
            if d.is_write_only() {
                if ack.is_none() && !d.is_empty() {
                    ack = Some(d.addr());
                }
                continue;
            }
            if ack.is_some() {
                // Readable after writable (§2.7.4.2).
                self.stats.ctrl_bad_chains += 1;
                return 0;
            }
            let n = d.len() as usize;
            if too_long || len + n > bufs.ctrl.len() {
                too_long = true;
                continue;
            }
            if self
                .mem
                .read(d.addr(), &mut bufs.ctrl[len..len + n])
                .is_err()
            {
                self.stats.ctrl_bad_chains += 1;
                return 0;
            }
            len += n;
        }
        let Some(ack) = ack else {
            self.stats.ctrl_bad_chains += 1;
            return 0;
        };
        let a = if too_long {
            ctrl::ERR
        } else {
            self.ctrl_exec(len)
        };
        if a == ctrl::OK {
            self.stats.ctrl_ok += 1;
        } else {
            self.stats.ctrl_err += 1;
        }
        match self.mem.write(ack, &[a]) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    fn ctrl_queue(&mut self, index: u16, served: &mut Served) -> Result<(), DeviceError> {
        let qerr = |err| DeviceError::Queue { queue: index, err };
        let Some(mut q) = self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::take)
        else {
            return Err(DeviceError::QueueNotReady { queue: index });
        };
        let mut completed = 0;
        let mut malformed = 0;
        let r = (|| {
            q.disable_notification(&self.mem)?;
            while let Some(head) = next_head(&mut q, &self.mem, &mut malformed)? {
                let n = self.ctrl_one(&q, head);
                q.add_used(&self.mem, head, n)?;
                completed += 1;
            }
            Ok(())
        })();
        self.stats.ctrl_bad_chains += malformed;
        let f = self.finish_queue(&mut q, completed, served);
        self.queues[usize::from(index)] = Some(q);
        r.and(f).map_err(qerr)
    }

    /// Whether `queue` is a receive queue (§5.1.2: receiveqN is 2(N-1)).
    fn is_rx_queue(&self, queue: u16) -> bool {
        queue.is_multiple_of(2) && queue < self.max_pairs * 2
    }

    fn ctrl_index(&self) -> Option<u16> {
        self.negotiated(NetFeatures::CTRL_VQ)
            .then_some(self.max_pairs * 2)
    }
}

/// `VIRTIO_NET_CTRL_MAC_TABLE_SET` (§5.1.6.5.2): two tables, each `le32
/// entries` then that many addresses, unicast first. A table longer than
/// [`MAC_TABLE_ENTRIES`] accepts every address of its class.
fn set_tables(f: &mut Filter, data: &[u8]) -> bool {
    let table = |d: &[u8]| -> Option<(usize, usize)> {
        let n = u32::from_le_bytes(d.get(..4)?.try_into().ok()?) as usize;
        let len = n.checked_mul(ETH_ALEN)?.checked_add(4)?;
        (d.len() >= len).then_some((n, len))
    };
    let Some((nu, lu)) = table(data) else {
        return false;
    };
    let Some((nm, lm)) = table(&data[lu..]) else {
        return false;
    };
    if lu + lm != data.len() {
        return false;
    }
    let fill = |v: &mut Vec<[u8; ETH_ALEN]>, overflow: &mut bool, n: usize, d: &[u8]| {
        v.clear();
        *overflow = n > MAC_TABLE_ENTRIES;
        if !*overflow {
            for m in d[4..].chunks_exact(ETH_ALEN) {
                let mut a = [0u8; ETH_ALEN];
                a.copy_from_slice(m);
                v.push(a);
            }
        }
    };
    fill(&mut f.uni, &mut f.uni_overflow, nu, &data[..lu]);
    fill(&mut f.multi, &mut f.multi_overflow, nm, &data[lu..]);
    true
}

impl<B: NetBackend, M: GuestMemory> VirtioDevice for Net<B, M> {
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        alloc::vec![
            ("tx_frames", s.tx_frames),
            ("tx_bytes", s.tx_bytes),
            ("rx_frames", s.rx_frames),
            ("rx_bytes", s.rx_bytes),
            ("tx_checksummed", s.tx_checksummed),
            ("rx_csum_validated", s.rx_csum_validated),
            ("tx_drop_bad_header", s.tx_drop_bad_header),
            ("tx_drop_malformed", s.tx_drop_malformed),
            ("tx_drop_backend", s.tx_drop_backend),
            ("rx_drop_ring_full", s.rx_drop_ring_full),
            ("rx_drop_too_big", s.rx_drop_too_big),
            ("rx_bad_chains", s.rx_bad_chains),
        ]
    }

    fn device_type(&self) -> DeviceType {
        DeviceType::Net
    }

    fn device_features(&self) -> u64 {
        self.offered
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| c.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        // The register file refused FEATURES_OK for a set breaking
        // §5.1.3.1; drop such bits again for a transport that did not.
        // Except MQ without CTRL_VQ: a vhost-user frontend (QEMU) keeps the
        // control queue and negotiates CTRL_VQ with the driver itself,
        // forwarding MQ alone; the pairs it uses are the queues it gives.
        let raw = features;
        let features = driver_select(DeviceType::Net, self.offered, features)
            | (raw & self.offered & bit(NetFeatures::MQ));
        self.features = features;
        let mq = features & bit(NetFeatures::MQ) != 0;
        self.max_pairs = if mq { self.cfg.queue_pairs } else { 1 };
        self.pairs = 1;
        let n = usize::from(self.max_pairs) * 2 + 1;
        let mut states = Vec::with_capacity(self.max_sizes.len());
        for i in 0..self.max_sizes.len() {
            let index = i as u16;
            let q = if i < n {
                queues.get(i).and_then(|c| c.device_queue(features))
            } else {
                None
            };
            let Some(q) = q else {
                // §5.1.2: receiveq1 and transmitq1 are needed; so is the
                // control queue when CTRL_VQ was negotiated.
                let ctrl = i == n - 1 && features & bit(NetFeatures::CTRL_VQ) != 0;
                if i < 2 || ctrl {
                    self.features = 0;
                    return Err(DeviceError::QueueNotReady { queue: index });
                }
                states.push(None);
                continue;
            };
            if let Err(err) = q.layout().check_memory(&self.mem) {
                self.features = 0;
                return Err(DeviceError::QueueNotInMemory { queue: index, err });
            }
            states.push(Some(q));
        }
        self.hdr_len = if features
            & (TransportFeatures::VERSION_1.bits() | bit(NetFeatures::MRG_RXBUF))
            != 0
        {
            HDR_LEN
        } else {
            HDR_LEN_LEGACY
        };
        let rx_size = usize::from(self.cfg.queue_size);
        let slot = HDR_LEN + self.max_frame() + self.backend.vnet_hdr_len().max(HDR_LEN);
        // Receive state only for the receive queues the driver configured.
        let rx = (0..usize::from(self.max_pairs))
            .map(|p| {
                states
                    .get(p * 2)
                    .is_some_and(Option::is_some)
                    .then(|| RxState {
                        ring: FrameRing::new(usize::from(self.cfg.rx_pending), slot),
                        held: Vec::with_capacity(rx_size),
                        held_split: false,
                        completed: 0,
                    })
            })
            .collect();
        self.bufs = Some(Buffers {
            tx: alloc::vec![0; HDR_LEN + self.max_frame()],
            rx,
            scratch: alloc::vec![0; slot],
            ctrl: alloc::vec![0; CTRL_MAX],
        });
        self.steering.clear();
        self.filter.reset();
        self.filter.uni.reserve(MAC_TABLE_ENTRIES);
        self.filter.multi.reserve(MAC_TABLE_ENTRIES);
        self.queues = states;
        self.tx_pending = None;
        // The tap takes the guest's receive offloads (QEMU's
        // `tap_set_offload`): partial checksums only if GUEST_CSUM.
        let _ = self.backend.set_offloads(Offloads {
            csum: features & bit(NetFeatures::GUEST_CSUM) != 0,
            ..Offloads::default()
        });
        self.reported_up = self.link_now();
        Ok(())
    }

    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        if usize::from(queue) >= self.max_sizes.len() {
            return Err(DeviceError::NoSuchQueue { queue });
        }
        if self.bufs.is_none() {
            return Err(DeviceError::NotActivated);
        }
        if self
            .queues
            .get(usize::from(queue))
            .is_none_or(Option::is_none)
        {
            return Err(DeviceError::QueueNotReady { queue });
        }
        let mut served = Served::default();
        if Some(queue) == self.ctrl_index() {
            self.ctrl_queue(queue, &mut served)?;
        } else if queue % 2 == 1 {
            self.tx_pump(&mut served)?;
            // What was just sent may already be back (loopback, a hub with
            // a fast peer): deliver it now rather than waiting for a
            // readiness event that a backend without an fd never sends.
            self.rx_pump(&mut served)?;
        } else {
            self.rx_pump(&mut served)?;
        }
        Ok(served)
    }

    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        let mut served = Served::default();
        // A link that is down must get the chance to come up (a stream
        // server accepting its peer), active device or not.
        self.backend.poll_link();
        if self.bufs.is_none() {
            return Ok(served);
        }
        served.config_changed = self.link_changed();
        self.tx_pump(&mut served)?;
        self.rx_pump(&mut served)?;
        Ok(served)
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.bufs = None;
        self.tx_pending = None;
        self.features = 0;
        self.pairs = 1;
        self.max_pairs = 1;
        self.mac = self.cfg.mac;
        self.filter.reset();
        self.reported_up = self.link_now();
    }

    /// The next available index, rewound past the chains the device holds:
    /// on a transmit queue the frame the backend refused with `Busy` (the
    /// loop stops popping at it), on a receive queue the buffers popped for the
    /// front frame (popped in order and completed together, nothing else
    /// popped meanwhile). The control queue holds nothing. Rare exception:
    /// a malformed receive chain completed after buffers were held while
    /// merging (§5.1.6.4) leaves them mid-ring; then they are not rewound
    /// (the position is the plain next available index), since rewinding
    /// would serve the malformed chain twice; those few buffers stay with
    /// the device until the driver resets it.
    fn queue_position(&self, queue: u16) -> Option<u16> {
        let q = self.queues.get(usize::from(queue))?.as_ref()?;
        let held = if self.is_rx_queue(queue) {
            match self
                .bufs
                .as_ref()
                .and_then(|b| b.rx.get(usize::from(queue / 2)))
            {
                Some(Some(rx)) if !rx.held_split => rx.held.len(),
                _ => 0,
            }
        } else {
            usize::from(self.tx_pending.is_some_and(|p| p.queue == queue))
        };
        Some(q.next_avail().wrapping_sub(u16::try_from(held).ok()?))
    }

    /// Starts `queue` at `next_avail`, dropping what the device held for
    /// it: a paused transmit frame (re-read from its chain, sent once since
    /// the backend refused it) or the receive buffers held for the front
    /// frame (the frame stays queued for the buffers popped next).
    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        let q = self
            .queues
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
            .ok_or(DeviceError::PositionUnsupported { queue })?;
        q.set_position(next_avail, next_avail);
        if self.is_rx_queue(queue) {
            if let Some(Some(rx)) = self
                .bufs
                .as_mut()
                .and_then(|b| b.rx.get_mut(usize::from(queue / 2)))
            {
                rx.held.clear();
                rx.held_split = false;
            }
        } else if self.tx_pending.is_some_and(|p| p.queue == queue) {
            self.tx_pending = None;
        }
        Ok(())
    }
}
