//! Device-side checks: a driver that does each thing the specification
//! lets a driver do, and checks each device-side statement.
//!
//! Every check starts from a reset device and drives the virtio-mmio
//! registers (version 2; version 1 for the legacy interface's checks) and
//! the split rings itself ([`Dev`]). Work is
//! asked of the device with a small request of its type ([`Dev::post_probe`]):
//! entropy fills a buffer, a block device reads sector 0, a console port
//! transmits four bytes, a network device transmits one frame, a crypto
//! device answers a cipher request on a session never made. Device-type
//! checks send requests of their type ([`Dev::blk_request`]).

mod basic;
mod blk;
mod crypto;
mod legacy;
mod mmio;
mod net;
mod split;
mod types;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::regs;
use virtio_core::mmio::regs::InterruptStatus;
use virtio_core::status::DeviceStatus;

pub use blk::BlkReply;

use crate::ring::{Alloc, Buf, RawRing, bytes, fill};
use crate::{Bus, Check, Ctx, Path, Patience};

/// Every device-side check, in the order they run.
pub const CHECKS: &[Check] = &[
    mmio::IDENTITY,
    mmio::INTERRUPT_STATUS,
    mmio::RESET_CLEARS,
    mmio::QUEUE_READY_ZERO,
    basic::RESET,
    basic::BEFORE_DRIVER_OK,
    basic::NEEDS_RESET,
    basic::FEATURES_OFFERED,
    basic::FEATURES_ACCEPTED,
    basic::CONFIG_BEFORE_FEATURES_OK,
    split::BUFFERS_AND_TABLE,
    split::ARRANGEMENTS,
    split::INDIRECT,
    split::USED_NOTIFY_FLAGS,
    split::USED_NOTIFY_EVENT_IDX,
    split::AVAIL_SUPPRESSION,
    types::RNG_FILLS,
    types::CONSOLE_EMERGENCY_WRITE,
    types::CONSOLE_MULTIPORT,
    blk::CONFIG,
    blk::WRITEBACK_WITHOUT_FLUSH,
    blk::READ_ONLY,
    blk::SEGMENT_FLAGS,
    blk::WRITE_ZEROES,
    blk::LIFETIME,
    blk::ZONED_WITHOUT_FEATURE,
    blk::STABLE_WRITES,
    net::CONFIG,
    net::RECEIVE_PLAIN,
    net::RECEIVE_MERGED,
    net::CHECKSUM,
    net::CONFIG_GENERATION,
    net::MTU_FRAMES,
    net::CONTROL_MAC,
    net::RECEIVE_FILTERS,
    net::STEERING,
    crypto::CONFIG,
    crypto::CIPHER,
    crypto::HASH_MAC,
    crypto::AEAD,
    crypto::AKCIPHER,
    crypto::STATELESS,
    legacy::LEGACY_INIT,
    legacy::LEGACY_BLK,
    legacy::LEGACY_NET,
    legacy::LEGACY_CONSOLE,
    legacy::LEGACY_NOTIFY_ON_EMPTY,
    legacy::LEGACY_NET_MAC_TABLE,
    legacy::LEGACY_NET_MQ,
];

/// Every feature the checks can drive: all device-type bits (0 to 23,
/// 50 and up) and, of the transport's, indirect descriptors and event
/// indices (never packed rings, access platform and the like: the checks
/// drive split rings in plain memory). [`Dev::begin`] adds VERSION_1.
pub const ALL: u64 = ((1 << 24) - 1)
    | !((1u64 << 50) - 1)
    | TransportFeatures::RING_INDIRECT_DESC.bits()
    | TransportFeatures::RING_EVENT_IDX.bits();

/// `GuestPageSize` and `QueueAlign` on a legacy device (§4.2.4).
pub const LEGACY_PAGE: u64 = 4096;

/// The queue size the checks use (every device offers at least this,
/// QEMU's virtio-mmio 1024, ours 256 and more).
pub const QUEUE_SIZE: u16 = 16;

/// One device, driven by hand through a [`Bus`].
pub struct Dev<'a> {
    bus: &'a dyn Bus,
    /// Where rings and buffers come from.
    pub alloc: Alloc,
    /// `DeviceID`.
    pub device_id: u32,
    /// `Version`.
    pub version: u32,
    /// The features the device offers.
    pub offered: u64,
    /// The features negotiated by [`begin`](Dev::begin).
    pub features: u64,
    /// The rings set up, by queue index.
    pub rings: Vec<Option<RawRing>>,
}

/// What a probe request put in a ring.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Its queue.
    pub queue: u16,
    /// Its head descriptor.
    pub head: u16,
    /// Its device-readable buffers and the bytes put there.
    pub readable: Vec<(GuestAddress, Vec<u8>)>,
    /// Its device-writable buffers (filled with [`FILL`] before).
    pub writable: Vec<(GuestAddress, u32)>,
}

/// What writable buffers hold before the device writes them.
pub const FILL: u8 = 0xa5;

impl<'a> Dev<'a> {
    /// The device on `bus`, its identity read; not reset yet.
    pub fn open(bus: &'a dyn Bus) -> Dev<'a> {
        let r = bus.regs();
        let (start, len) = bus.dma();
        let mut d = Dev {
            bus,
            alloc: Alloc::new(start, len),
            device_id: r.read32(regs::DEVICE_ID),
            version: r.read32(regs::VERSION),
            offered: 0,
            features: 0,
            rings: Vec::new(),
        };
        d.offered = d.read_offered();
        d
    }

    /// The bus.
    pub fn bus(&self) -> &'a dyn Bus {
        self.bus
    }

    /// The device type, if we know it.
    pub fn device_type(&self) -> Option<DeviceType> {
        DeviceType::from_id(self.device_id)
    }

    /// A 32-bit register read.
    pub fn r32(&self, off: u64) -> u32 {
        self.bus.regs().read32(off)
    }

    /// A configuration byte (§4.2.2, offset 0x100 on).
    pub fn config8(&self, off: u64) -> u8 {
        self.bus.regs().read8(regs::CONFIG + off)
    }

    /// A 32-bit register write.
    pub fn w32(&self, off: u64, v: u32) {
        self.bus.regs().write32(off, v);
    }

    /// `Status`.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.r32(regs::STATUS) as u8)
    }

    /// Writes `Status`.
    pub fn set_status(&self, s: DeviceStatus) {
        self.w32(regs::STATUS, u32::from(s.bits()));
    }

    /// `InterruptStatus`.
    pub fn isr(&self) -> u32 {
        self.r32(regs::INTERRUPT_STATUS)
    }

    /// Acknowledges everything `InterruptStatus` shows.
    pub fn ack(&self) {
        let v = self.isr() & InterruptStatus::all().bits();
        if v != 0 {
            self.w32(regs::INTERRUPT_ACK, v);
        }
    }

    fn read_offered(&self) -> u64 {
        self.w32(regs::DEVICE_FEATURES_SEL, 0);
        let lo = self.r32(regs::DEVICE_FEATURES);
        self.w32(regs::DEVICE_FEATURES_SEL, 1);
        let hi = self.r32(regs::DEVICE_FEATURES);
        u64::from(lo) | u64::from(hi) << 32
    }

    /// Writes 0 to `Status` and waits for it to read 0 (§4.2.3.1); `false`
    /// if it does not.
    pub fn reset(&mut self) -> bool {
        self.rings.clear();
        self.features = 0;
        let (start, len) = self.bus.dma();
        self.alloc = Alloc::new(start, len);
        self.set_status(DeviceStatus::empty());
        let mut done = || self.r32(regs::STATUS) == 0;
        self.bus.wait(&mut done, Patience::Expect)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, the features of `want` the device
    /// offers (with `VIRTIO_F_VERSION_1`), FEATURES_OK read back
    /// (§3.1.1 steps 1-6). The negotiated features.
    ///
    /// On a legacy (version 1) device: reset, ACKNOWLEDGE, DRIVER, the
    /// features of `want` offered (never VERSION_1; ANY_LAYOUT whenever
    /// offered, §6.3), `GuestPageSize`, and no FEATURES_OK (§3.1.2,
    /// §4.2.4).
    pub fn begin(&mut self, want: u64) -> Result<u64, String> {
        if self.version == 1 {
            return self.begin_legacy(want, |_| {});
        }
        if self.version != 2 {
            return Err(format!(
                "virtio-mmio Version {} (these checks drive version 2)",
                self.version
            ));
        }
        self.acknowledge()?;
        self.offered = self.read_offered();
        let v1 = TransportFeatures::VERSION_1.bits();
        if self.offered & v1 == 0 {
            return Err("VIRTIO_F_VERSION_1 not offered on a version 2 device".into());
        }
        let chosen = self.offered & (want | v1);
        self.write_features(chosen);
        let s = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        self.set_status(s);
        if !self.status().contains(DeviceStatus::FEATURES_OK) {
            return Err(format!("FEATURES_OK not kept for features {chosen:#x}"));
        }
        self.features = chosen;
        Ok(chosen)
    }

    /// Reset, then ACKNOWLEDGE and DRIVER (§3.1.1 steps 1-3, the same on
    /// both interfaces).
    fn acknowledge(&mut self) -> Result<(), String> {
        if !self.reset() {
            return Err(format!(
                "Status reads {:#x} after a reset",
                self.r32(regs::STATUS)
            ));
        }
        self.set_status(DeviceStatus::ACKNOWLEDGE);
        self.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        Ok(())
    }

    /// [`begin`](Dev::begin) on a legacy device, with `early` run after
    /// DRIVER is set and before the features are read (the place where
    /// §3.1.2 lets a legacy driver write the configuration).
    pub fn begin_legacy(&mut self, want: u64, early: impl FnOnce(&Dev<'_>)) -> Result<u64, String> {
        self.acknowledge()?;
        early(self);
        self.offered = self.read_offered();
        // §6.3: a transitional driver accepts ANY_LAYOUT when offered.
        let any = TransportFeatures::ANY_LAYOUT.bits();
        let chosen =
            (self.offered & want & !TransportFeatures::VERSION_1.bits()) | self.offered & any;
        self.write_features(chosen);
        self.w32(regs::GUEST_PAGE_SIZE, LEGACY_PAGE as u32);
        self.features = chosen;
        Ok(chosen)
    }

    /// Writes `DriverFeatures`.
    pub fn write_features(&self, f: u64) {
        self.w32(regs::DRIVER_FEATURES_SEL, 0);
        self.w32(regs::DRIVER_FEATURES, f as u32);
        self.w32(regs::DRIVER_FEATURES_SEL, 1);
        self.w32(regs::DRIVER_FEATURES, (f >> 32) as u32);
    }

    /// Whether `f` was negotiated.
    pub fn has(&self, f: TransportFeatures) -> bool {
        self.features & f.bits() != 0
    }

    /// Sets up queue `q` with [`QUEUE_SIZE`] entries and enables it
    /// (§4.2.3.2).
    ///
    /// On a legacy device: `QueueNum`, `QueueAlign` and `QueuePFN` of a
    /// ring in the legacy layout (§4.2.4).
    pub fn setup_queue(&mut self, q: u16) -> Result<(), String> {
        self.w32(regs::QUEUE_SEL, u32::from(q));
        if self.version == 1 {
            return self.setup_legacy_queue(q);
        }
        if self.r32(regs::QUEUE_READY) != 0 {
            return Err(format!("queue {q} is ready before set-up"));
        }
        let max = self.r32(regs::QUEUE_NUM_MAX);
        if max < u32::from(QUEUE_SIZE) {
            return Err(format!("queue {q}: QueueNumMax {max}"));
        }
        let mem = self.bus.mem();
        let ring = RawRing::new(mem, &mut self.alloc, QUEUE_SIZE).ok_or("out of DMA memory")?;
        let l = ring.layout;
        self.w32(regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, a) in [
            (regs::QUEUE_DESC_LOW, l.desc_table()),
            (regs::QUEUE_DRIVER_LOW, l.avail_ring()),
            (regs::QUEUE_DEVICE_LOW, l.used_ring()),
        ] {
            self.w32(low, a.0 as u32);
            self.w32(low + 4, (a.0 >> 32) as u32);
        }
        self.w32(regs::QUEUE_READY, 1);
        if self.r32(regs::QUEUE_READY) != 1 {
            return Err(format!("queue {q}: QueueReady does not read 1"));
        }
        self.keep_ring(q, ring);
        Ok(())
    }

    /// Keeps `ring` as queue `q`'s.
    fn keep_ring(&mut self, q: u16, ring: RawRing) {
        let i = usize::from(q);
        if self.rings.len() <= i {
            self.rings.resize(i + 1, None);
        }
        self.rings[i] = Some(ring);
    }

    fn setup_legacy_queue(&mut self, q: u16) -> Result<(), String> {
        if self.r32(regs::QUEUE_PFN) != 0 {
            return Err(format!("queue {q}: QueuePFN is not 0 before set-up"));
        }
        let max = self.r32(regs::QUEUE_NUM_MAX);
        if max < u32::from(QUEUE_SIZE) {
            return Err(format!("queue {q}: QueueNumMax {max}"));
        }
        let mem = self.bus.mem();
        let ring = RawRing::legacy(mem, &mut self.alloc, QUEUE_SIZE, LEGACY_PAGE)
            .ok_or("out of DMA memory")?;
        let pfn = u32::try_from(ring.layout.desc_table().0 / LEGACY_PAGE)
            .map_err(|_| format!("queue {q}: ring above what QueuePFN can name"))?;
        self.w32(regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
        self.w32(regs::QUEUE_ALIGN, LEGACY_PAGE as u32);
        self.w32(regs::QUEUE_PFN, pfn);
        if self.r32(regs::QUEUE_PFN) != pfn {
            return Err(format!("queue {q}: QueuePFN does not read back {pfn:#x}"));
        }
        self.keep_ring(q, ring);
        Ok(())
    }

    /// The queues the probe needs, and the one it uses.
    pub fn probe_queues(&self) -> Option<(&'static [u16], u16)> {
        match self.device_type()? {
            DeviceType::Rng | DeviceType::Blk => Some((&[0], 0)),
            // Data queue 0, where the probe goes, and queue 1: the
            // control queue of a device with one data queue, another data
            // queue otherwise (the probe needs only queue 0).
            DeviceType::Crypto => Some((&[0, 1], 0)),
            DeviceType::Console | DeviceType::Net => Some((&[0, 1], 1)),
            _ => None,
        }
    }

    /// [`begin`](Dev::begin) with `want`, the probe's queues set up, and
    /// DRIVER_OK unless `driver_ok` is false.
    pub fn live(&mut self, want: u64, driver_ok: bool) -> Result<u16, String> {
        let (queues, probe) = self
            .probe_queues()
            .ok_or_else(|| format!("no probe request for device type {}", self.device_id))?;
        self.begin(want)?;
        for q in queues {
            self.setup_queue(*q)?;
        }
        if driver_ok {
            self.driver_ok()?;
        }
        Ok(probe)
    }

    /// Sets DRIVER_OK (§3.1.1 step 8).
    /// A legacy device has no FEATURES_OK (§3.1.2).
    pub fn driver_ok(&self) -> Result<(), String> {
        let mut s = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::DRIVER_OK;
        if self.version != 1 {
            s |= DeviceStatus::FEATURES_OK;
        }
        self.set_status(s);
        let got = self.status();
        if !got.contains(DeviceStatus::DRIVER_OK) || got.contains(DeviceStatus::DEVICE_NEEDS_RESET)
        {
            return Err(format!("Status {:#x} after DRIVER_OK", got.bits()));
        }
        Ok(())
    }

    /// The ring of queue `q`.
    pub fn ring(&mut self, q: u16) -> Option<&mut RawRing> {
        self.rings.get_mut(usize::from(q))?.as_mut()
    }

    /// A buffer of `len` bytes holding `content` (readable) or [`FILL`]
    /// (writable).
    pub fn buffer(&mut self, len: u32, content: Option<&[u8]>) -> Option<GuestAddress> {
        let a = self.alloc.take(u64::from(len), 16)?;
        let mem = self.bus.mem();
        match content {
            Some(c) => mem.write(a, c).ok()?,
            None => fill(mem, a, u64::from(len), FILL)?,
        }
        Some(a)
    }

    /// The buffers of this device type's probe request, each split into
    /// `pieces` descriptors where it is long enough (a check of
    /// arbitrary arrangements, §2.6.4), not yet in any ring.
    pub fn probe_bufs(&mut self, pieces: u32) -> Option<(Vec<Buf>, Probe)> {
        let (_, queue) = self.probe_queues()?;
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut bufs = Vec::new();
        let parts: Vec<(u32, Option<Vec<u8>>)> = match self.device_type()? {
            DeviceType::Rng => alloc::vec![(64, None)],
            DeviceType::Blk => {
                // VIRTIO_BLK_T_IN of sector 0 (§5.2.6).
                let mut h = alloc::vec![0u8; 16];
                h[0..4].copy_from_slice(&0u32.to_le_bytes());
                alloc::vec![(16, Some(h)), (512, None), (1, None)]
            }
            DeviceType::Console => alloc::vec![(4, Some(b"cfm\n".to_vec()))],
            DeviceType::Crypto => {
                // CIPHER_ENCRYPT in session mode on a session never made
                // (§5.9.7.3): the device answers INVSESS in the status
                // byte. The header, then the fixed part (48 bytes in both
                // layouts) with op_type CIPHER.
                let mut r = alloc::vec![0u8; 72];
                r[0..4].copy_from_slice(&virtio_core::crypto::data::CIPHER_ENCRYPT.to_le_bytes());
                r[4..8].copy_from_slice(&virtio_core::crypto::algo::CIPHER_AES_CBC.to_le_bytes());
                r[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                r[16..20].copy_from_slice(&virtio_core::crypto::FLAG_SESSION_MODE.to_le_bytes());
                r[64..68].copy_from_slice(&virtio_core::crypto::SYM_OP_CIPHER.to_le_bytes());
                alloc::vec![(72, Some(r)), (1, None)]
            }
            DeviceType::Net => {
                // A virtio_net_hdr of zeros (12 bytes with VERSION_1 or
                // MRG_RXBUF, 10 on a legacy device without, §5.1.6) and a
                // broadcast frame of the local experimental type.
                let h = self.net_header_len();
                let mut f = alloc::vec![0u8; h + 60];
                f[h..h + 6].copy_from_slice(&[0xff; 6]);
                f[h + 6..h + 12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x42]);
                f[h + 12..h + 14].copy_from_slice(&0x88b5u16.to_be_bytes());
                if self.version == 1 {
                    // The legacy framing: the header in a buffer of its
                    // own (§5.1.9.8; right with ANY_LAYOUT too).
                    let frame = f.split_off(h);
                    alloc::vec![(h as u32, Some(f)), (60, Some(frame))]
                } else {
                    alloc::vec![(h as u32 + 60, Some(f))]
                }
            }
            _ => return None,
        };
        for (len, content) in parts {
            let a = self.buffer(len, content.as_deref())?;
            match &content {
                Some(c) => readable.push((a, c.clone())),
                None => writable.push((a, len)),
            }
            let n = pieces.clamp(1, len);
            let step = len / n;
            let mut off = 0;
            for k in 0..n {
                let l = if k + 1 == n { len - off } else { step };
                bufs.push(Buf {
                    addr: GuestAddress(a.0 + u64::from(off)),
                    len: l,
                    write: content.is_none(),
                });
                off += l;
            }
        }
        Some((
            bufs,
            Probe {
                queue,
                head: 0,
                readable,
                writable,
            },
        ))
    }

    /// The length of `struct virtio_net_hdr` for the features negotiated
    /// (§5.1.6: 12 bytes with VERSION_1 or MRG_RXBUF, else the legacy 10).
    pub fn net_header_len(&self) -> usize {
        let long = TransportFeatures::VERSION_1.bits()
            | virtio_core::features::NetFeatures::MRG_RXBUF.bits();
        if self.version == 1 && self.features & long == 0 {
            10
        } else {
            12
        }
    }

    /// Puts a probe request in its queue (as one plain chain) and
    /// publishes it, without notifying.
    pub fn post_probe(&mut self) -> Option<Probe> {
        let (bufs, mut p) = self.probe_bufs(1)?;
        let mem = self.bus.mem();
        let ring = self.rings.get_mut(usize::from(p.queue))?.as_mut()?;
        p.head = ring.chain(mem, &bufs)?;
        ring.publish(mem, p.head)?;
        Some(p)
    }

    /// `QueueNotify` for `q`.
    pub fn notify(&self, q: u16) {
        self.w32(regs::QUEUE_NOTIFY, u32::from(q));
    }

    /// Waits until queue `q`'s used index reaches `idx`.
    pub fn wait_used(&mut self, q: u16, idx: u16) -> bool {
        let mem = self.bus.mem();
        let Some(ring) = self.rings.get(usize::from(q)).and_then(Option::as_ref) else {
            return false;
        };
        let mut done = || ring.used_idx(mem) == idx;
        self.bus.wait(&mut done, Patience::Expect)
    }

    /// Lets the device run for a while, expecting nothing.
    pub fn settle(&self) {
        self.bus.wait(&mut || false, Patience::Quiet);
    }

    /// Whether the device wrote nothing to `p`'s readable buffers.
    pub fn readable_intact(&self, p: &Probe) -> bool {
        let mem = self.bus.mem();
        p.readable
            .iter()
            .all(|(a, c)| bytes(mem, *a, c.len()) == *c)
    }

    /// Each ring's available and used index, for a failure's detail.
    pub fn rings_seen(&self) -> String {
        let mem = self.bus.mem();
        let parts: Vec<String> = self
            .rings
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, r)))
            .map(|(i, r)| format!("queue {i}: avail {} used {}", r.avail_idx, r.used_idx(mem)))
            .collect();
        format!("InterruptStatus {:#x}; {}", self.isr(), parts.join(", "))
    }

    /// What the path hides, for statements about the registers.
    pub fn registers_hidden(&self) -> Option<&'static str> {
        (self.bus.path() == Path::VhostUser)
            .then_some("the register file is our vhost-user frontend's, not the backend's")
    }
}

/// Opens the device if it is a modern (version 2) device of type `t`, or
/// records why `statements` do not apply (another type, named `what`; the
/// legacy interface).
pub fn open_type<'a>(
    ctx: &mut Ctx<'a>,
    statements: &[&'static str],
    t: DeviceType,
    what: &str,
) -> Option<Dev<'a>> {
    let d = Dev::open(ctx.bus());
    if d.device_type() != Some(t) {
        ctx.not_applicable(statements, &format!("not a {what} device"));
        return None;
    }
    if d.version == 1 {
        ctx.not_applicable(statements, "legacy interface: virtio-mmio version 1");
        return None;
    }
    Some(d)
}

/// Opens the device and brings it live for `want`, or records `blocked`
/// for `statements` and returns `None`. A legacy (version 1) device makes
/// the statements not applicable.
pub fn live<'a>(
    ctx: &mut Ctx<'a>,
    statements: &[&'static str],
    want: u64,
) -> Option<(Dev<'a>, u16)> {
    let mut d = Dev::open(ctx.bus());
    if d.version == 1 {
        ctx.not_applicable(statements, "legacy interface: virtio-mmio version 1");
        return None;
    }
    match d.live(want, true) {
        Ok(q) => Some((d, q)),
        Err(e) => {
            ctx.blocked(statements, &e);
            None
        }
    }
}
