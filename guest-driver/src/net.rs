//! The network device driver (spec §5.1): one receiveq/transmitq pair and
//! the control queue, checksum offload both ways, mergeable receive
//! buffers, link status, receive filtering.
//!
//! # API
//!
//! - [`Net::new`]`(hal, regs, NetOptions) -> Result<Net, NetError>`;
//!   [`Net::mac`], [`Net::mtu`], [`Net::features`], [`Net::link_up`],
//!   [`Net::on_interrupt`] (`-> NetEvents`), [`Net::stats`].
//! - Receive: [`Net::receive`] `-> Result<Option<RxFrame>, NetError>`,
//!   the frame left in its DMA buffer and read through a [`DmaBytes`]
//!   view (header stripped; [`RxFrame::checksum`]); dropping it recycles
//!   the buffer. The handle-based form for adapters:
//!   [`Net::receive_handle`], [`Net::rx_bytes`], [`Net::recycle`].
//!   [`Net::receive_into`] copies.
//!   [`Net::wait_rx`] waits for a frame within a [`Wait`];
//!   [`Net::arm_rx`] before halting for an interrupt yourself.
//! - Transmit: [`Net::transmit_with`]`(len, TxOffload, |buf| fill)`
//!   fills a DMA slot in place, [`Net::transmit`]`(&[u8])` copies;
//!   [`Net::flush`] publishes the batch and kicks once (call it after a
//!   batch; the driver flushes by itself every quarter ring and before
//!   any wait), [`Net::reclaim`] takes completions back,
//!   [`Net::wait_tx`] waits for a free slot.
//! - Control (§5.1.6.5): [`Net::set_promiscuous`],
//!   [`Net::set_all_multicast`], [`Net::set_mac_table`],
//!   [`Net::set_mac_address`], each with a [`Wait`].
//! - With feature `smoltcp`: `smol::SmolNet`, a `smoltcp::phy::Device`.
//!
//! Receive buffers are posted all at once at initialisation and reposted
//! in batches (one kick when a quarter of the ring waits, and before any
//! wait). Transmit frames are written straight into the transmit slots;
//! used buffers are taken back in batches. With `VIRTIO_F_EVENT_IDX` the
//! device asks for kicks only when it needs them, and interrupts stay off
//! while the driver drains (re-armed, then the ring re-checked, only
//! before a wait, §2.7.14).
//!
//! Nothing the device writes is trusted: a used length shorter than the
//! header, a `num_buffers` of 0 or beyond what was used, or a merged
//! frame longer than the largest frame are counted and reported as
//! [`NetError::Malformed`] (the buffers go back to the device); a used
//! length beyond the buffer or a buffer used twice break the queue
//! (virtio-core's checks, §2.7.8).

use core::fmt;

use virtio_core::features::{NetFeatures, TransportFeatures};
use virtio_core::mmio::InterruptStatus;
use virtio_core::mmio::driver::RegisterAccess;
pub use virtio_core::net::{
    ETH_ALEN, ETH_HLEN, HDR_LEN, HDR_LEN_LEGACY, NetHdr, ctrl, flags, l4_checksum_offsets,
    verify_l4_checksum,
};
use virtio_core::net::{config, status};

use crate::error::Error;
use crate::hal::{Dma, Hal, PAGE_SIZE};
use crate::queue::{DmaBytes, DmaQueue};
use crate::transport::{Completion, Transport};
use crate::wait::Wait;

#[cfg(feature = "smoltcp")]
pub mod smol;

/// Descriptors per data queue, at most.
pub const QUEUE_SIZE: usize = 256;
/// Receive buffer bytes with `VIRTIO_NET_F_MRG_RXBUF` (header included).
pub const MRG_BUFFER_LEN: u32 = 4096;
/// MTU assumed when the device does not offer `VIRTIO_NET_F_MTU`.
pub const DEFAULT_MTU: u16 = 1500;
/// Descriptors of the control queue (a command is two).
const CTRL_QUEUE_SIZE: usize = 4;
/// Bytes of the control queue slot (command, MAC tables, ack).
const CTRL_SLOT: u32 = 2048;
/// Most addresses of each MAC table this driver sends.
pub const MAC_TABLE_MAX: usize = 64;

/// Features this driver can use (§5.1.3), before options.
const SUPPORTED: NetFeatures = NetFeatures::MAC
    .union(NetFeatures::STATUS)
    .union(NetFeatures::MTU)
    .union(NetFeatures::CSUM)
    .union(NetFeatures::GUEST_CSUM)
    .union(NetFeatures::CTRL_VQ)
    .union(NetFeatures::CTRL_RX)
    .union(NetFeatures::CTRL_MAC_ADDR);

/// Why a network operation or the driver failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// A transport, queue, memory or wait error.
    Driver(Error),
    /// The operation needs a feature that was not negotiated (§5.1.3).
    NotNegotiated {
        /// The feature.
        feature: NetFeatures,
    },
    /// A frame longer than a transmit slot (or than the caller's buffer
    /// on receive).
    TooLong {
        /// The frame's length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// Every transmit slot is in flight: reclaim, or wait.
    TxFull,
    /// The device answered a control command with `VIRTIO_NET_ERR`
    /// (§5.1.6.5).
    CtrlRejected {
        /// The command's class.
        class: u8,
        /// The command.
        command: u8,
    },
    /// The device's ack is neither `VIRTIO_NET_OK` nor `VIRTIO_NET_ERR`,
    /// or it used the command without writing it (§5.1.6.5).
    CtrlBadAck {
        /// The class.
        class: u8,
        /// The command.
        command: u8,
        /// The ack byte (`None`: not written, used length 0).
        ack: Option<u8>,
    },
    /// A received completion broke a rule of §5.1.6.4; it was dropped
    /// and counted, its buffers recycled.
    Malformed(RxDrop),
    /// More MAC addresses than [`MAC_TABLE_MAX`].
    TooManyAddresses {
        /// Addresses given.
        count: usize,
    },
    /// Options out of range (no receive or transmit buffers, a receive
    /// buffer smaller than the header).
    BadOptions,
}

/// Why a received completion was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxDrop {
    /// Used length shorter than the header (§5.1.6.4).
    Short {
        /// The used length.
        len: u32,
    },
    /// `num_buffers` 0, or more buffers than the device has used or than
    /// the queue holds (§5.1.6.4, `VIRTIO_NET_F_MRG_RXBUF`).
    NumBuffers {
        /// The header's `num_buffers`.
        num_buffers: u16,
    },
    /// A merged frame longer than the largest frame (MTU + 14).
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A frame whose TCP/UDP checksum is wrong (found by the smoltcp
    /// adapter when the device did not validate it).
    BadChecksum,
}

impl fmt::Display for RxDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RxDrop::Short { len } => {
                write!(f, "used length {len} is shorter than the header (§5.1.6.4)")
            }
            RxDrop::NumBuffers { num_buffers } => write!(
                f,
                "num_buffers {num_buffers} does not match the used buffers (§5.1.6.4)"
            ),
            RxDrop::TooLong { len } => write!(f, "a merged frame of {len} bytes exceeds the MTU"),
            RxDrop::BadChecksum => f.write_str("bad TCP/UDP checksum"),
        }
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NetError::Driver(e) => write!(f, "{e}"),
            NetError::NotNegotiated { feature } => {
                write!(f, "feature {feature:?} was not negotiated (§5.1.3)")
            }
            NetError::TooLong { len, max } => write!(f, "frame of {len} bytes exceeds {max}"),
            NetError::TxFull => f.write_str("every transmit slot is in flight"),
            NetError::CtrlRejected { class, command } => write!(
                f,
                "the device answered VIRTIO_NET_ERR to class {class} command {command} (§5.1.6.5)"
            ),
            NetError::CtrlBadAck {
                class,
                command,
                ack: Some(a),
            } => write!(
                f,
                "the device acked class {class} command {command} with {a:#04x}, not OK or ERR (§5.1.6.5)"
            ),
            NetError::CtrlBadAck {
                class,
                command,
                ack: None,
            } => write!(
                f,
                "the device used class {class} command {command} without writing the ack (§5.1.6.5)"
            ),
            NetError::Malformed(d) => write!(f, "dropped a received frame: {d}"),
            NetError::TooManyAddresses { count } => {
                write!(f, "{count} MAC addresses exceed {MAC_TABLE_MAX}")
            }
            NetError::BadOptions => f.write_str("bad driver options"),
        }
    }
}

impl core::error::Error for NetError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            NetError::Driver(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for NetError {
    fn from(e: Error) -> Self {
        NetError::Driver(e)
    }
}

impl From<virtio_core::mmio::DriverError> for NetError {
    fn from(e: virtio_core::mmio::DriverError) -> Self {
        NetError::Driver(Error::Transport(e))
    }
}

/// How to drive the network device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// Polling or interrupt-driven receive (transmit and control queues
    /// interrupt only while the driver waits on them).
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// Negotiate `VIRTIO_NET_F_MRG_RXBUF` when offered (§5.1.6.3.2).
    pub mrg_rxbuf: bool,
    /// Negotiate `VIRTIO_NET_F_CSUM` and `VIRTIO_NET_F_GUEST_CSUM`.
    pub csum: bool,
    /// Receive buffers (capped by the queue size).
    pub rx_buffers: u16,
    /// Bytes per receive buffer, header included; 0: `12 + 14 + mtu`
    /// rounded up to 16 (1526 without `VIRTIO_NET_F_MTU`), or
    /// [`MRG_BUFFER_LEN`] with `MRG_RXBUF`.
    pub rx_buffer_len: u32,
    /// Transmit slots (capped by the queue size).
    pub tx_buffers: u16,
    /// Features to leave out even when offered.
    pub refuse: NetFeatures,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            completion: Completion::Polling,
            event_idx: true,
            mrg_rxbuf: false,
            csum: true,
            rx_buffers: 64,
            rx_buffer_len: 0,
            tx_buffers: 64,
            refuse: NetFeatures::empty(),
        }
    }
}

impl NetOptions {
    /// DMA pages the driver takes at most for an MTU of `mtu`: rings
    /// (two pages each on a legacy device), receive and transmit slots,
    /// the control queue, the merge buffer (MRG_RXBUF, or always with
    /// feature `smoltcp`, whose adapter copies frames into it) and the
    /// spare buffer.
    pub fn pages(&self, mtu: u16) -> usize {
        let frame = HDR_LEN + ETH_HLEN + usize::from(mtu);
        let rx_len = if self.rx_buffer_len != 0 {
            self.rx_buffer_len as usize
        } else if self.mrg_rxbuf {
            MRG_BUFFER_LEN as usize
        } else {
            frame.next_multiple_of(16)
        };
        let rx = (usize::from(self.rx_buffers) * rx_len).div_ceil(PAGE_SIZE);
        let tx = (usize::from(self.tx_buffers) * frame).div_ceil(PAGE_SIZE);
        let scratch = (ETH_HLEN + usize::from(mtu)).div_ceil(PAGE_SIZE);
        let merge = if self.mrg_rxbuf || cfg!(feature = "smoltcp") {
            scratch
        } else {
            0
        };
        // Rings: at most two pages per queue (legacy); control slots: two
        // pages; the spare buffer.
        3 * 2 + rx + 1 + tx + 1 + 2 + merge + scratch
    }
}

/// What the device said about a received frame's TCP/UDP checksum
/// (§5.1.6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RxChecksum {
    /// `DATA_VALID`, or `NEEDS_CSUM` (the checksum is partial: the frame
    /// came from a trusted local sender, §5.1.6.4): no need to verify.
    Valid,
    /// Nothing said: the stack verifies.
    Unknown,
}

/// Transmit offload for one frame (§5.1.6.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TxOffload {
    /// The frame is complete.
    #[default]
    None,
    /// `NEEDS_CSUM`: the device completes the checksum: it sums from
    /// `start` to the end (with the pseudo-header sum the frame already
    /// holds in the field) and stores it at `start + offset`. Needs
    /// `VIRTIO_NET_F_CSUM`.
    Checksum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
    },
}

/// Interrupt causes seen by [`Net::on_interrupt`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvents {
    /// Used buffers (receive or transmit).
    pub used: bool,
    /// Configuration change: the link status may have changed
    /// (§5.1.4.2), or the device needs a reset.
    pub config: bool,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames received (given to the caller).
    pub rx_frames: u64,
    /// Bytes of them (headers excluded).
    pub rx_bytes: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes of them.
    pub tx_bytes: u64,
    /// Received with a used length shorter than the header.
    pub rx_drop_short: u64,
    /// Received with a bad `num_buffers`.
    pub rx_drop_num_buffers: u64,
    /// Merged frames too long.
    pub rx_drop_too_long: u64,
    /// Dropped for a bad checksum (the smoltcp adapter).
    pub rx_drop_checksum: u64,
    /// Frames whose checksum the device vouched for.
    pub rx_csum_valid: u64,
    /// Receive frames assembled from several buffers.
    pub rx_merged: u64,
    /// Transmit attempts refused for a full ring.
    pub tx_full: u64,
    /// Frames the smoltcp adapter had to drop (not sendable: too long, or
    /// the queue broken).
    pub tx_dropped: u64,
    /// Available buffer notifications sent (all queues).
    pub kicks: u64,
    /// Calls of [`Net::on_interrupt`] that found a cause.
    pub interrupts: u64,
    /// Configuration change interrupts seen.
    pub config_interrupts: u64,
}

/// A received frame still in its DMA buffer (or the merge buffer): which
/// buffer, where the frame starts and how long it is. Not `Clone`: give
/// it back once with [`Net::recycle`].
#[derive(Debug, PartialEq, Eq)]
pub struct RxHandle {
    slot: u16,
    /// Frame offset in the slot (the header length), or `u32::MAX` for
    /// the merge buffer.
    off: u32,
    len: u32,
    csum: RxChecksum,
}

impl RxHandle {
    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the device said about its checksum.
    pub fn checksum(&self) -> RxChecksum {
        self.csum
    }
}

const MERGED: u32 = u32::MAX;

/// A received frame still in the driver's DMA buffer; dropping it gives
/// the buffer back to the device (in the next batch).
pub struct RxFrame<'a, H: Hal, R: RegisterAccess> {
    net: &'a mut Net<H, R>,
    handle: Option<RxHandle>,
}

impl<H: Hal, R: RegisterAccess> RxFrame<'_, H, R> {
    /// The frame (Ethernet header first, virtio header stripped), as a
    /// view of the buffer: copy out what must not change
    /// ([`DmaBytes::copy_to`]).
    pub fn bytes(&self) -> DmaBytes<'_> {
        self.handle
            .as_ref()
            .map_or_else(DmaBytes::empty, |h| self.net.rx_bytes(h))
    }

    /// Bytes of the frame.
    pub fn len(&self) -> usize {
        self.handle.as_ref().map_or(0, RxHandle::len)
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the device said about its checksum.
    pub fn checksum(&self) -> RxChecksum {
        self.handle
            .as_ref()
            .map_or(RxChecksum::Unknown, RxHandle::checksum)
    }
}

impl<H: Hal, R: RegisterAccess> Drop for RxFrame<'_, H, R> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.net.recycle(h);
        }
    }
}

/// The network device driver over `Hal` `H` and register access `R`.
pub struct Net<H: Hal, R: RegisterAccess> {
    hal: H,
    transport: Transport<R>,
    options: NetOptions,
    features: u64,
    mac: [u8; ETH_ALEN],
    mtu: u16,
    hdr_len: u32,
    rx: DmaQueue<QUEUE_SIZE>,
    tx: DmaQueue<QUEUE_SIZE>,
    ctrl: Option<DmaQueue<CTRL_QUEUE_SIZE>>,
    /// Merge buffer for `MRG_RXBUF` frames spanning buffers, and (feature
    /// `smoltcp`) for frames the adapter copies out; never given to the
    /// device.
    merge: Option<Dma>,
    merge_busy: bool,
    /// Where a frame that cannot be sent is written and dropped (the
    /// smoltcp adapter must give smoltcp a buffer), `14 + mtu` bytes.
    spare: Option<Dma>,
    /// A used receive buffer taken while waiting.
    rx_stash: Option<crate::queue::Completed>,
    /// Receive buffers released but not reposted.
    rx_unposted: u16,
    /// Receive buffers posted but not published.
    rx_unpublished: u16,
    /// Transmit chains added but not published.
    tx_unpublished: u16,
    stats: NetStats,
}

impl<H: Hal, R: RegisterAccess> fmt::Debug for Net<H, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("features", &self.features)
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn bit(f: NetFeatures) -> u64 {
    f.bits()
}

impl<H: Hal, R: RegisterAccess> Net<H, R> {
    /// Probes `regs` for a network device and initialises it (§3.1.1,
    /// §5.1.5): features, receiveq1, transmitq1 and (with `CTRL_VQ`) the
    /// control queue, every receive buffer posted with one kick.
    pub fn new(hal: H, regs: R, options: NetOptions) -> Result<Self, NetError> {
        if options.rx_buffers == 0 || options.tx_buffers == 0 {
            return Err(NetError::BadOptions);
        }
        let mut transport = Transport::probe(regs, virtio_core::features::DeviceType::Net)?;
        let mut want = SUPPORTED;
        if options.mrg_rxbuf {
            want |= NetFeatures::MRG_RXBUF;
        }
        if !options.csum {
            want.remove(NetFeatures::CSUM | NetFeatures::GUEST_CSUM);
        }
        want.remove(options.refuse);
        let mut wanted = want.bits();
        if options.event_idx {
            wanted |= TransportFeatures::RING_EVENT_IDX.bits();
        }
        let features = transport.begin_init(wanted)?;
        let has = |f: NetFeatures| features & bit(f) != 0;
        let drv = transport.driver();
        let mut mac = [0x02, 0, 0, 0, 0, 0x01];
        if has(NetFeatures::MAC) {
            drv.read_config_bytes(config::MAC, &mut mac)?;
        }
        let mtu = if has(NetFeatures::MTU) {
            drv.read_config_u16(config::MTU)?.max(68)
        } else {
            DEFAULT_MTU
        };
        let modern = transport.is_modern();
        let mrg = has(NetFeatures::MRG_RXBUF);
        let hdr_len = if modern || mrg {
            HDR_LEN
        } else {
            HDR_LEN_LEGACY
        } as u32;
        let frame = hdr_len + ETH_HLEN as u32 + u32::from(mtu);
        let rx_len = if options.rx_buffer_len != 0 {
            options.rx_buffer_len
        } else if mrg {
            MRG_BUFFER_LEN
        } else {
            frame.next_multiple_of(16)
        };
        if rx_len < hdr_len + ETH_HLEN as u32 {
            transport.fail();
            return Err(NetError::BadOptions);
        }
        let rx = DmaQueue::with_size(
            &hal,
            &mut transport,
            0,
            rx_len,
            options.completion,
            usize::from(options.rx_buffers),
        )?;
        let tx = DmaQueue::with_size(
            &hal,
            &mut transport,
            1,
            frame,
            options.completion,
            usize::from(options.tx_buffers),
        )?;
        let ctrl = if has(NetFeatures::CTRL_VQ) {
            Some(DmaQueue::new(
                &hal,
                &mut transport,
                2,
                CTRL_SLOT,
                options.completion,
            )?)
        } else {
            None
        };
        let merge = if mrg || cfg!(feature = "smoltcp") {
            let pages = (ETH_HLEN + usize::from(mtu)).div_ceil(PAGE_SIZE);
            Some(hal.dma_alloc(pages).ok_or(Error::DmaExhausted { pages })?)
        } else {
            None
        };
        let spare_pages = (ETH_HLEN + usize::from(mtu)).div_ceil(PAGE_SIZE);
        let spare = Some(
            hal.dma_alloc(spare_pages)
                .ok_or(Error::DmaExhausted { pages: spare_pages })?,
        );
        let mut net = Net {
            hal,
            transport,
            options,
            features,
            mac,
            mtu,
            hdr_len,
            rx,
            tx,
            ctrl,
            merge,
            merge_busy: false,
            spare,
            rx_stash: None,
            rx_unposted: 0,
            rx_unpublished: 0,
            tx_unpublished: 0,
            stats: NetStats::default(),
        };
        // Transmit completions are reclaimed, not waited for: no
        // interrupts unless a wait arms them.
        net.tx.disarm()?;
        if let Some(c) = net.ctrl.as_mut() {
            c.disarm()?;
        }
        net.transport.finish_init()?;
        while net.rx.push_writable()? {
            net.rx_unpublished += 1;
        }
        net.kick_rx()?;
        Ok(net)
    }

    /// The MAC address: the device's (`VIRTIO_NET_F_MAC`), the one last
    /// set with [`set_mac_address`](Self::set_mac_address), or
    /// 02:00:00:00:00:01.
    pub fn mac(&self) -> [u8; ETH_ALEN] {
        self.mac
    }

    /// The MTU (`VIRTIO_NET_F_MTU`, else 1500).
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The largest frame (Ethernet header included): `14 + mtu`.
    pub fn max_frame(&self) -> usize {
        ETH_HLEN + usize::from(self.mtu)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether `f` was negotiated.
    pub fn has(&self, f: NetFeatures) -> bool {
        self.features & bit(f) == bit(f)
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The transport (status, configuration reads).
    pub fn transport(&self) -> &Transport<R> {
        &self.transport
    }

    /// The link state (§5.1.4: `VIRTIO_NET_S_LINK_UP` of `status`, read
    /// under the configuration generation, §2.5.1); `true` when
    /// `VIRTIO_NET_F_STATUS` was not negotiated.
    pub fn link_up(&self) -> Result<bool, NetError> {
        if !self.has(NetFeatures::STATUS) {
            return Ok(true);
        }
        let s = self.transport.driver().read_config_u16(config::STATUS)?;
        Ok(s & status::LINK_UP != 0)
    }

    /// Reads and acknowledges `InterruptStatus` (§4.2.3.4) and says which
    /// causes it showed: used buffers, or a configuration change (read
    /// [`link_up`](Self::link_up) again, §5.1.4.2).
    pub fn on_interrupt(&mut self) -> NetEvents {
        let s = self.transport.on_interrupt();
        let ev = NetEvents {
            used: s.contains(InterruptStatus::USED_BUFFER),
            config: s.contains(InterruptStatus::CONFIG_CHANGE),
        };
        if ev.used || ev.config {
            self.stats.interrupts += 1;
        }
        if ev.config {
            self.stats.config_interrupts += 1;
        }
        ev
    }

    fn kick_rx(&mut self) -> Result<(), NetError> {
        if self.rx_unpublished == 0 {
            return Ok(());
        }
        self.rx_unpublished = 0;
        if self.rx.kick_counted(&self.transport)? {
            self.stats.kicks += 1;
        }
        Ok(())
    }

    /// Reposts released receive buffers (one publish and at most one
    /// kick).
    fn repost(&mut self) -> Result<(), NetError> {
        while self.rx_unposted > 0 && self.rx.push_writable()? {
            self.rx_unposted -= 1;
            self.rx_unpublished += 1;
        }
        self.kick_rx()
    }

    // ---- receive (§5.1.6.3, §5.1.6.4) ----

    fn pop_rx(&mut self) -> Result<Option<crate::queue::Completed>, NetError> {
        if let Some(c) = self.rx_stash.take() {
            return Ok(Some(c));
        }
        Ok(self.rx.pop()?)
    }

    fn release_rx(&mut self, slot: u16) -> Result<(), NetError> {
        self.rx.release(slot);
        self.rx_unposted += 1;
        if u32::from(self.rx_unposted) * 4 >= u32::from(self.rx.size()) {
            self.repost()?;
        }
        Ok(())
    }

    /// The header of a used receive buffer, copied out once (§5.1.6.4).
    fn header(&self, slot: u16) -> NetHdr {
        let mut b = [0u8; HDR_LEN];
        let n = self
            .rx
            .held_bytes(slot, self.hdr_len)
            .map_or(0, |v| v.copy_to(&mut b));
        b.get(..n).and_then(NetHdr::parse).unwrap_or_default()
    }

    fn drop_rx(&mut self, slot: u16, why: RxDrop) -> Result<Option<RxHandle>, NetError> {
        self.release_rx(slot)?;
        match why {
            RxDrop::Short { .. } => self.stats.rx_drop_short += 1,
            RxDrop::NumBuffers { .. } => self.stats.rx_drop_num_buffers += 1,
            RxDrop::TooLong { .. } => self.stats.rx_drop_too_long += 1,
            RxDrop::BadChecksum => self.stats.rx_drop_checksum += 1,
        }
        Err(NetError::Malformed(why))
    }

    /// Takes the next received frame, if any, as a handle on its buffer
    /// (no copy; a frame spanning several `MRG_RXBUF` buffers is copied
    /// into the merge buffer). Give it back with
    /// [`recycle`](Self::recycle). A malformed completion is dropped,
    /// counted and reported as [`NetError::Malformed`]; the next call
    /// goes on with the next frame.
    pub fn receive_handle(&mut self) -> Result<Option<RxHandle>, NetError> {
        let Some(c) = self.pop_rx()? else {
            return Ok(None);
        };
        if c.len < self.hdr_len {
            return self.drop_rx(c.slot, RxDrop::Short { len: c.len });
        }
        let hdr = self.header(c.slot);
        let csum = if hdr.flags & (flags::DATA_VALID | flags::NEEDS_CSUM) != 0 {
            self.stats.rx_csum_valid += 1;
            RxChecksum::Valid
        } else {
            RxChecksum::Unknown
        };
        let mrg = self.has(NetFeatures::MRG_RXBUF);
        let nb = hdr.num_buffers;
        if mrg && (nb == 0 || nb > self.rx.size()) {
            return self.drop_rx(c.slot, RxDrop::NumBuffers { num_buffers: nb });
        }
        if !mrg || nb == 1 {
            let len = c.len - self.hdr_len;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += u64::from(len);
            return Ok(Some(RxHandle {
                slot: c.slot,
                off: self.hdr_len,
                len,
                csum,
            }));
        }
        self.merge_rx(c, nb, csum)
    }

    /// Assembles an `MRG_RXBUF` frame of `nb` buffers, the first `first`.
    fn merge_rx(
        &mut self,
        first: crate::queue::Completed,
        nb: u16,
        csum: RxChecksum,
    ) -> Result<Option<RxHandle>, NetError> {
        let max = self.max_frame();
        let (ptr, cap) = match self.merge.as_ref() {
            Some(d) if !self.merge_busy => (d.vaddr().as_ptr(), d.len().min(max)),
            // A merged frame is still out: drop this one (a caller keeps
            // one frame at a time).
            _ => {
                self.release_rx(first.slot)?;
                self.drain_rest(nb - 1)?;
                return self.count_too_long(0);
            }
        };
        let mut len = 0usize;
        let mut too_long = false;
        let mut cur = Some(first);
        let mut off = self.hdr_len;
        let mut left = nb;
        while left > 0 {
            let Some(c) = cur.take() else {
                // The device said more buffers than it used.
                return Err(NetError::Malformed(RxDrop::NumBuffers { num_buffers: nb }))
                    .inspect_err(|_| self.stats.rx_drop_num_buffers += 1);
            };
            let part = c.len.saturating_sub(off);
            if let Some(src) = self.rx.held_bytes(c.slot, c.len) {
                let src = src.slice(off as usize..).unwrap_or_default();
                if len + src.len() <= cap {
                    // SAFETY: the merge buffer is ours (not given to the
                    // device), `len + src.len() <= cap <= its length`, and
                    // no other reference to it is live (`merge_busy` is
                    // false: no frame in it is out).
                    let dst = unsafe { core::slice::from_raw_parts_mut(ptr.add(len), src.len()) };
                    src.copy_to(dst);
                    len += src.len();
                } else {
                    too_long = true;
                    len += part as usize;
                }
            }
            self.release_rx(c.slot)?;
            off = 0;
            left -= 1;
            if left > 0 {
                cur = self.pop_rx()?;
            }
        }
        if too_long {
            return self.count_too_long(len);
        }
        self.merge_busy = true;
        self.stats.rx_merged += 1;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += len as u64;
        Ok(Some(RxHandle {
            slot: 0,
            off: MERGED,
            len: len as u32,
            csum,
        }))
    }

    fn drain_rest(&mut self, mut n: u16) -> Result<(), NetError> {
        while n > 0 {
            let Some(c) = self.pop_rx()? else { break };
            self.release_rx(c.slot)?;
            n -= 1;
        }
        Ok(())
    }

    fn count_too_long(&mut self, len: usize) -> Result<Option<RxHandle>, NetError> {
        self.stats.rx_drop_too_long += 1;
        Err(NetError::Malformed(RxDrop::TooLong { len }))
    }

    /// The bytes of a received frame: a view of its DMA buffer (or of the
    /// merge buffer), no copy made; copy out what must not change.
    pub fn rx_bytes(&self, h: &RxHandle) -> DmaBytes<'_> {
        if h.off == MERGED {
            return match self.merge.as_ref() {
                // SAFETY: the merge buffer is ours, never given to the
                // device; `h.len` bytes were written into it, it stays
                // allocated while `self` is borrowed, and it is written
                // only by `merge_rx` and `copy_out` (`&mut self`, while
                // `merge_busy` is false).
                Some(d) if self.merge_busy && (h.len as usize) <= d.len() => unsafe {
                    DmaBytes::from_raw(d.vaddr(), h.len as usize)
                },
                _ => DmaBytes::empty(),
            };
        }
        self.rx
            .held_bytes(h.slot, h.off + h.len)
            .and_then(|b| b.slice(h.off as usize..))
            .unwrap_or_default()
    }

    /// Moves a received frame out of its DMA buffer into the merge
    /// buffer, memory the device is never given, and recycles the DMA
    /// buffer; a merged frame is there already. `None` (the frame
    /// recycled and dropped as too long) if the merge buffer holds
    /// another frame or is missing.
    #[cfg(feature = "smoltcp")]
    pub(crate) fn copy_out(&mut self, h: RxHandle) -> Option<RxHandle> {
        if h.off == MERGED {
            return Some(h);
        }
        let copied = match self.merge.as_ref() {
            Some(d) if !self.merge_busy && h.len() <= d.len() => {
                // SAFETY: the merge buffer is ours (never given to the
                // device), `h.len()` is within it, and no reference to it
                // is live (`merge_busy` is false: no frame in it is out).
                let dst = unsafe { core::slice::from_raw_parts_mut(d.vaddr().as_ptr(), h.len()) };
                self.rx_bytes(&h).copy_to(dst) == h.len()
            }
            _ => false,
        };
        let len = h.len;
        let csum = h.csum;
        self.recycle(h);
        if !copied {
            self.stats.rx_drop_too_long += 1;
            return None;
        }
        self.merge_busy = true;
        Some(RxHandle {
            slot: 0,
            off: MERGED,
            len,
            csum,
        })
    }

    /// The bytes of a frame [`copy_out`](Self::copy_out) moved to the
    /// merge buffer, as a slice: the device never sees that memory.
    #[cfg(feature = "smoltcp")]
    pub(crate) fn copied_bytes(&self, h: &RxHandle) -> &[u8] {
        match self.merge.as_ref() {
            // SAFETY: the merge buffer is ours, never given to the device;
            // `h.len` bytes were written into it, nothing writes it while
            // `merge_busy` (set until the handle is recycled), and it
            // stays allocated while `self` is borrowed.
            Some(d) if h.off == MERGED && self.merge_busy && h.len() <= d.len() => unsafe {
                core::slice::from_raw_parts(d.vaddr().as_ptr(), h.len())
            },
            _ => &[],
        }
    }

    /// Gives a received frame's buffer back; reposted to the device with
    /// the next batch (a quarter of the ring, or before a wait).
    pub fn recycle(&mut self, h: RxHandle) {
        if h.off == MERGED {
            self.merge_busy = false;
            return;
        }
        // A failing repost leaves the buffer for the next batch; the error
        // comes back from the next queue operation.
        let _ = self.release_rx(h.slot);
    }

    /// Counts a frame dropped by the caller for a bad checksum (the
    /// smoltcp adapter) and recycles it.
    pub fn drop_bad_checksum(&mut self, h: RxHandle) {
        self.stats.rx_drop_checksum += 1;
        self.recycle(h);
    }

    /// Takes the next received frame, if any, left in its buffer (read it
    /// through [`RxFrame::bytes`]); dropping the [`RxFrame`] recycles it.
    pub fn receive(&mut self) -> Result<Option<RxFrame<'_, H, R>>, NetError> {
        let handle = self.receive_handle()?;
        Ok(handle.map(|h| RxFrame {
            net: self,
            handle: Some(h),
        }))
    }

    /// Copies the next received frame into `buf` and recycles its buffer:
    /// its length and checksum state. A frame longer than `buf` is
    /// dropped with [`NetError::TooLong`].
    pub fn receive_into(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(usize, RxChecksum)>, NetError> {
        let Some(h) = self.receive_handle()? else {
            return Ok(None);
        };
        let src = self.rx_bytes(&h);
        let n = src.len();
        let r = match buf.get_mut(..n) {
            Some(dst) => {
                src.copy_to(dst);
                Ok(Some((n, h.csum)))
            }
            None => Err(NetError::TooLong {
                len: n,
                max: buf.len(),
            }),
        };
        self.recycle(h);
        r
    }

    /// Publishes pending transmit frames and receive buffers, kicking
    /// each queue at most once (only if the device asks, §2.7.10).
    pub fn flush(&mut self) -> Result<(), NetError> {
        if self.tx_unpublished > 0 {
            self.tx_unpublished = 0;
            if self.tx.kick_counted(&self.transport)? {
                self.stats.kicks += 1;
            }
        }
        self.repost()
    }

    fn arm_rx_queue(&mut self) -> Result<bool, NetError> {
        Ok(self.rx.arm()?)
    }

    /// Waits within `wait` until a received frame is there (then take it
    /// with [`receive`](Self::receive)). Flushes first; with
    /// [`Completion::Interrupt`] re-enables receive interrupts and
    /// re-checks before idling (§2.7.14).
    pub fn wait_rx(&mut self, wait: &mut impl Wait) -> Result<(), NetError> {
        self.flush()?;
        if self.rx_stash.is_some() {
            return Ok(());
        }
        crate::wait::drive(
            self,
            wait,
            |n| {
                let c = n.rx.pop()?;
                n.rx_stash = c;
                Ok(c.map(|_| ()))
            },
            |n| n.arm_rx_queue(),
            |n| NetError::Driver(n.transport.timeout(0)),
        )
    }

    // ---- transmit (§5.1.6.2) ----

    /// Takes used transmit buffers back; how many.
    pub fn reclaim(&mut self) -> Result<usize, NetError> {
        let mut n = 0;
        while let Some(c) = self.tx.pop()? {
            self.tx.release(c.slot);
            n += 1;
        }
        Ok(n)
    }

    /// Queues one frame of `len` bytes, written in place by `fill` into a
    /// transmit slot (after the header; the slot is not zeroed, so `fill`
    /// writes all `len` bytes). With [`TxOffload::Checksum`] the header
    /// asks the device to complete the checksum (§5.1.6.2). The frame
    /// goes out with the next [`flush`](Self::flush) (or by itself once a
    /// quarter ring waits). [`NetError::TxFull`] when every slot is in
    /// flight even after reclaiming.
    pub fn transmit_with(
        &mut self,
        len: usize,
        offload: TxOffload,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), NetError> {
        if let TxOffload::Checksum { .. } = offload {
            self.need(NetFeatures::CSUM)?;
        }
        self.transmit_with_offload(len, |b| {
            fill(b);
            offload
        })
    }

    /// As [`transmit_with`](Self::transmit_with), with the offload chosen
    /// by `fill` after writing the frame (e.g. from
    /// [`l4_checksum_offsets`]). A [`TxOffload::Checksum`] without
    /// `VIRTIO_NET_F_CSUM` negotiated is completed here in software.
    pub fn transmit_with_offload(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> TxOffload,
    ) -> Result<(), NetError> {
        let max = self.max_frame();
        if len > max || len == 0 {
            return Err(NetError::TooLong { len, max });
        }
        if self.tx.free_slots() == 0 {
            self.reclaim()?;
            if self.tx.free_slots() == 0 {
                self.stats.tx_full += 1;
                self.flush()?;
                return Err(NetError::TxFull);
            }
        }
        let csum = self.has(NetFeatures::CSUM);
        let h = self.hdr_len as usize;
        // h + len <= h + 14 + mtu, the slot size.
        let total = (h + len) as u32;
        let pushed = self.tx.push_readable_with(total, |buf| {
            let (head, body) = buf.split_at_mut(h.min(buf.len()));
            let mut hdr = NetHdr::default();
            if let TxOffload::Checksum { start, offset } = fill(body) {
                let at = usize::from(start) + usize::from(offset);
                if csum {
                    hdr.flags = flags::NEEDS_CSUM;
                    hdr.csum_start = start;
                    hdr.csum_offset = offset;
                } else if at + 2 <= body.len() {
                    let sum = !virtio_core::net::ones_sum(
                        body.get(usize::from(start)..).unwrap_or_default(),
                        0,
                    );
                    let sum = if sum == 0 { 0xffff } else { sum };
                    if let Some(f) = body.get_mut(at..at + 2) {
                        f.copy_from_slice(&sum.to_be_bytes());
                    }
                }
            }
            let bytes = hdr.to_bytes();
            head.copy_from_slice(bytes.get(..head.len()).unwrap_or_default());
        })?;
        if pushed.is_none() {
            self.stats.tx_full += 1;
            return Err(NetError::TxFull);
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        self.tx_unpublished += 1;
        if u32::from(self.tx_unpublished) * 4 >= u32::from(self.tx.size()) {
            self.flush()?;
        }
        Ok(())
    }

    /// Queues a copy of `frame`; see [`transmit_with`](Self::transmit_with).
    pub fn transmit(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.transmit_with(frame.len(), TxOffload::None, |b| b.copy_from_slice(frame))
    }

    /// A scratch buffer of `min(len, 14 + mtu)` bytes that the device
    /// never sees, for a frame that must be written but cannot be sent.
    #[cfg(feature = "smoltcp")]
    pub(crate) fn spare(&mut self, len: usize) -> &mut [u8] {
        match self.spare.as_ref() {
            Some(d) => {
                let n = len.min(d.len());
                // SAFETY: the spare buffer is ours alone (never given to
                // the device), `n` is within it, and the slice borrows
                // `self` mutably.
                unsafe { core::slice::from_raw_parts_mut(d.vaddr().as_ptr(), n) }
            }
            None => &mut [],
        }
    }

    /// Re-enables receive interrupts (with [`Completion::Interrupt`]) and
    /// says whether frames are already there (§2.7.14): call it, after
    /// [`flush`](Self::flush), before halting until the next interrupt,
    /// and halt only on `false`. Draining with
    /// [`receive`](Self::receive) leaves interrupts off again (with
    /// EVENT_IDX the device interrupts once per arm).
    pub fn arm_rx(&mut self) -> Result<bool, NetError> {
        if self.rx_stash.is_some() {
            return Ok(true);
        }
        self.arm_rx_queue()
    }

    /// Transmit slots free now (without reclaiming).
    pub fn tx_free(&self) -> usize {
        self.tx.free_slots()
    }

    /// Waits within `wait` until a transmit slot is free (flushing and
    /// reclaiming).
    pub fn wait_tx(&mut self, wait: &mut impl Wait) -> Result<(), NetError> {
        self.flush()?;
        let r = crate::wait::drive(
            self,
            wait,
            |n| {
                n.reclaim()?;
                Ok((n.tx.free_slots() > 0).then_some(()))
            },
            |n| Ok(n.tx.arm()?),
            |n| NetError::Driver(n.transport.timeout(1)),
        );
        // The wait's own error first: on a queue the device just broke,
        // disarming fails too, with the less precise `Broken`.
        let disarmed = self.tx.disarm();
        r?;
        Ok(disarmed?)
    }

    // ---- control (§5.1.6.5) ----

    fn command(
        &mut self,
        class: u8,
        command: u8,
        data: &[&[u8]],
        wait: &mut impl Wait,
    ) -> Result<(), NetError> {
        if !self.has(NetFeatures::CTRL_VQ) {
            return Err(NetError::NotNegotiated {
                feature: NetFeatures::CTRL_VQ,
            });
        }
        let mut buf = [0u8; CTRL_SLOT as usize - 1];
        buf[0] = class;
        buf[1] = command;
        let mut n = 2;
        for d in data {
            let dst = buf
                .get_mut(n..n + d.len())
                .ok_or(NetError::TooManyAddresses {
                    count: d.len() / ETH_ALEN,
                })?;
            dst.copy_from_slice(d);
            n += d.len();
        }
        let transport = &self.transport;
        let Some(q) = self.ctrl.as_mut() else {
            return Err(NetError::NotNegotiated {
                feature: NetFeatures::CTRL_VQ,
            });
        };
        // A command left by a timed-out wait: take it back first.
        while let Some(c) = q.pop()? {
            q.release(c.slot);
        }
        let Some(slot) = q.push_request(buf.get(..n).unwrap_or_default(), 1)? else {
            return Err(NetError::Driver(transport.timeout(q.index())));
        };
        if q.kick_counted(transport)? {
            self.stats.kicks += 1;
        }
        let done = crate::wait::drive(
            self,
            wait,
            |s| match s.ctrl.as_mut() {
                Some(q) => {
                    while let Some(c) = q.pop()? {
                        if c.slot == slot {
                            return Ok(Some(c));
                        }
                        // A command an earlier wait gave up on.
                        q.release(c.slot);
                    }
                    Ok(None)
                }
                None => Ok(None),
            },
            |s| match s.ctrl.as_mut() {
                Some(q) => Ok(q.arm()?),
                None => Ok(false),
            },
            |s| NetError::Driver(s.transport.timeout(2)),
        );
        let q = self.ctrl.as_mut().ok_or(NetError::NotNegotiated {
            feature: NetFeatures::CTRL_VQ,
        })?;
        // As in `wait_tx`: the wait's own error before the disarm's.
        let disarmed = q.disarm();
        let done = done?;
        disarmed?;
        let mut ack = [0xffu8];
        let read = q.read_slot(done.slot, n as u32, &mut ack);
        q.release(done.slot);
        read?;
        match (done.len, ack[0]) {
            (0, _) => Err(NetError::CtrlBadAck {
                class,
                command,
                ack: None,
            }),
            (_, ctrl::OK) => Ok(()),
            (_, ctrl::ERR) => Err(NetError::CtrlRejected { class, command }),
            (_, a) => Err(NetError::CtrlBadAck {
                class,
                command,
                ack: Some(a),
            }),
        }
    }

    fn need(&self, f: NetFeatures) -> Result<(), NetError> {
        if self.has(f) {
            Ok(())
        } else {
            Err(NetError::NotNegotiated { feature: f })
        }
    }

    /// Promiscuous mode on or off (§5.1.6.5.1, `VIRTIO_NET_F_CTRL_RX`).
    pub fn set_promiscuous(&mut self, on: bool, wait: &mut impl Wait) -> Result<(), NetError> {
        self.need(NetFeatures::CTRL_RX)?;
        self.command(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[&[u8::from(on)]], wait)
    }

    /// All-multicast mode on or off (§5.1.6.5.1, `VIRTIO_NET_F_CTRL_RX`).
    pub fn set_all_multicast(&mut self, on: bool, wait: &mut impl Wait) -> Result<(), NetError> {
        self.need(NetFeatures::CTRL_RX)?;
        self.command(ctrl::CLASS_RX, ctrl::RX_ALLMULTI, &[&[u8::from(on)]], wait)
    }

    /// Sets the unicast and multicast MAC filter tables (§5.1.6.5.2,
    /// `VIRTIO_NET_CTRL_MAC_TABLE_SET`, needs `VIRTIO_NET_F_CTRL_RX`).
    pub fn set_mac_table(
        &mut self,
        unicast: &[[u8; ETH_ALEN]],
        multicast: &[[u8; ETH_ALEN]],
        wait: &mut impl Wait,
    ) -> Result<(), NetError> {
        self.need(NetFeatures::CTRL_RX)?;
        for t in [unicast, multicast] {
            if t.len() > MAC_TABLE_MAX {
                return Err(NetError::TooManyAddresses { count: t.len() });
            }
        }
        let uc = (unicast.len() as u32).to_le_bytes();
        let mc = (multicast.len() as u32).to_le_bytes();
        self.command(
            ctrl::CLASS_MAC,
            ctrl::MAC_TABLE_SET,
            &[&uc, unicast.as_flattened(), &mc, multicast.as_flattened()],
            wait,
        )
    }

    /// Sets the device's MAC address (§5.1.6.5.2,
    /// `VIRTIO_NET_CTRL_MAC_ADDR_SET`, needs `VIRTIO_NET_F_CTRL_MAC_ADDR`);
    /// [`mac`](Self::mac) returns it afterwards.
    pub fn set_mac_address(
        &mut self,
        mac: [u8; ETH_ALEN],
        wait: &mut impl Wait,
    ) -> Result<(), NetError> {
        self.need(NetFeatures::CTRL_MAC_ADDR)?;
        self.command(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &[&mac], wait)?;
        self.mac = mac;
        Ok(())
    }

    /// The options the driver was built with.
    pub fn options(&self) -> &NetOptions {
        &self.options
    }
}

impl<H: Hal, R: RegisterAccess> Drop for Net<H, R> {
    /// Resets the device (§2.4) and, once it reads back 0, gives the DMA
    /// memory back; a device that does not reset keeps it.
    fn drop(&mut self) {
        if self.transport.reset().is_ok() {
            // SAFETY: the device was reset, so it no longer uses the
            // queues; they came from `self.hal`.
            unsafe {
                self.rx.free(&self.hal);
                self.tx.free(&self.hal);
                if let Some(c) = self.ctrl.as_mut() {
                    c.free(&self.hal);
                }
            }
        }
        for m in [self.merge.take(), self.spare.take()].into_iter().flatten() {
            // SAFETY: the merge and spare buffers are never given to the
            // device.
            unsafe { self.hal.dma_dealloc(m) };
        }
    }
}
