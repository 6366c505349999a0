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

mod control;
mod filter;
mod frames;
mod rx;
pub mod steering;
mod tx;

use filter::Filter;
use frames::FrameRing;
use steering::Steering;

use alloc::vec::Vec;
use core::fmt;

use backends::net::{MAX_FRAME, NetBackend, Offloads};
use virtio_core::GuestMemory;
use virtio_core::features::{DeviceType, NetFeatures, TransportFeatures, driver_select};
use virtio_core::memory::GuestAddress;
use virtio_core::split::{DeviceQueue, QueueError};

use crate::device::{DeviceError, QueueConfig, Served, VirtioDevice};

pub use virtio_core::net::{
    ETH_ALEN, HDR_LEN, HDR_LEN_LEGACY, NetHdr, config, ctrl, flags, gso, internet_checksum, status,
    verify_l4_checksum,
};

/// Bytes of the configuration space served (`struct virtio_net_config`
/// through `supported_hash_types`, §5.1.4).
pub const CONFIG_LEN: usize = 24;
/// Bytes an Ethernet header and one VLAN tag add to the MTU: the
/// largest frame the device's buffers hold. Frames are held to the MTU
/// after their own header when MTU is negotiated: 14 bytes untagged, 18
/// tagged.
pub const ETH_OVERHEAD: usize = 18;
/// Entries of each MAC filter table (unicast, multicast) the device keeps;
/// a longer table turns the filter for that class off (§5.1.6.5.2).
pub const MAC_TABLE_ENTRIES: usize = 64;
/// Largest control command the device reads (class, command and data).
pub const CTRL_MAX: usize = 4096;
/// Most frames pulled from the backend in one call, so a peer that never
/// stops sending cannot hold the device.
pub const RX_BUDGET: usize = 1024;

/// Most queue pairs a device has: §5.1.4 allows 0x8000, but those and the
/// control queue would be 65,537 queues, past a 16-bit queue index (§2.6).
pub const MAX_QUEUE_PAIRS: u16 = ctrl::MQ_VQ_PAIRS_MAX - 1;

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
                write!(
                    f,
                    "{pairs} queue pairs is outside 1..={MAX_QUEUE_PAIRS} (§5.1.4, \
                     with the control queue's 16-bit index)"
                )
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
    /// Receive chains popped for the front frame: head, capacity (at most
    /// the largest frame), and where its buffers end in `segs`.
    held: Vec<(u16, u32, usize)>,
    /// The writable buffers of the held chains, in order, as read from the
    /// descriptor table once (issue 16, finding 5: the frame is written
    /// into what was checked, with no second walk).
    segs: Vec<(GuestAddress, u32)>,
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

/// Whether `frame` carries more than `mtu` bytes after its link-level
/// header: 14 bytes, and 4 more for each 802.1Q / 802.1ad tag
/// (§5.1.4.1: "mtu (plus low level ethernet header length)").
pub(crate) fn over_mtu(frame: &[u8], mtu: usize) -> bool {
    let mut header = 14;
    while let Some(t) = frame.get(header - 2..header)
        && matches!(u16::from_be_bytes([t[0], t[1]]), 0x8100 | 0x88a8)
        && header < 22
    {
        header += 4;
    }
    frame.len().saturating_sub(header) > mtu
}

fn bit(f: NetFeatures) -> u64 {
    f.bits()
}

impl<B: NetBackend, M: GuestMemory> Net<B, M> {
    /// A network device on `backend`, serving guest memory `mem`, as `cfg`
    /// says.
    pub fn new(backend: B, mem: M, cfg: NetConfig) -> Result<Self, NetConfigError> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > MAX_QUEUE_PAIRS {
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

    /// Moves queue `index`'s published entries to the driver and decides
    /// its notification.
    fn finish_queue(
        &mut self,
        index: u16,
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
                served.interrupt_queue(index);
            } else {
                self.stats.notifications_suppressed += 1;
            }
        }
        Ok(())
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
        crate::device::read_config_bytes(&c, offset, data);
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
                        segs: Vec::with_capacity(rx_size),
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

    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        let Some(slot) = self.queues.get_mut(usize::from(queue)) else {
            return Ok(Served::default());
        };
        *slot = None;
        if self.tx_pending.is_some_and(|t| t.queue == queue) {
            self.tx_pending = None;
        }
        if self.is_rx_queue(queue)
            && let Some(bufs) = self.bufs.as_mut()
            && let Some(rx) = bufs.rx.get_mut(usize::from(queue / 2))
        {
            // Its frames go with it, as for a receive queue never
            // configured; steering skips it from now on.
            *rx = None;
        }
        Ok(Served::default())
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

    fn avail_taken(&self, queue: u16) -> Option<u16> {
        Some(self.queues.get(usize::from(queue))?.as_ref()?.next_avail())
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
                rx.segs.clear();
                rx.held_split = false;
            }
        } else if self.tx_pending.is_some_and(|p| p.queue == queue) {
            self.tx_pending = None;
        }
        Ok(())
    }
}
