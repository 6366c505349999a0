//! The receive queues (§5.1.6.3, §5.1.6.4): frames from the backend,
//! steered to a queue and delivered as the driver posts buffers.

use alloc::vec::Vec;
use core::mem;

use backends::net::{NetBackend, NetError};
use virtio_core::GuestMemory;
use virtio_core::features::NetFeatures;
use virtio_core::memory::{Access, GuestAddress};
use virtio_core::split::{DeviceQueue, QueueError};

use super::{
    ETH_ALEN, HDR_LEN, HDR_LEN_LEGACY, Net, NetHdr, RX_BUDGET, RxOutcome, RxState, bit, flags, gso,
    internet_checksum, over_mtu, verify_l4_checksum,
};
use crate::device::{DeviceError, Served, next_head};

impl<B: NetBackend, M: GuestMemory> Net<B, M> {
    /// Receives one frame from the backend and queues it for the receive
    /// queue steering picks, or drops it. `None` when the backend has
    /// nothing more; `Some(Some(pair))` when it was queued for `pair`;
    /// `Some(None)` when it was dropped.
    pub(super) fn rx_pull(&mut self) -> Option<Option<u16>> {
        let h = self.hdr_len;
        let vnet = self.backend.vnet_hdr_len();
        let max_frame = self.max_frame();
        let mtu = self
            .negotiated(NetFeatures::MTU)
            .then_some(usize::from(self.cfg.mtu));
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
        // §5.1.4.1: with MTU negotiated, nothing longer than the MTU after
        // its own header reaches the driver (without it, the buffers'
        // limit above holds).
        if mtu.is_some_and(|m| over_mtu(frame, m)) {
            self.stats.rx_drop_too_long += 1;
            return Some(None);
        }
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
        // §5.1.9.4.1 (1.4): without GUEST_CSUM, flags are zero
        // (device:net/device-operation/processing-of-incoming-packets#5);
        // with it, a backend's header (a tap's) keeps only the bits this
        // device may set: RSC_INFO needs VIRTIO_NET_F_RSC_EXT (#22) and the
        // tunnel checksum bit the UDP tunnel features, none offered.
        hdr.flags &= if self.features & bit(NetFeatures::GUEST_CSUM) != 0 {
            flags::NEEDS_CSUM | flags::DATA_VALID
        } else {
            0
        };
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

    /// Walks receive chain `head` once: every buffer must be writable
    /// and in guest memory (§5.1.6.3.1: device-writable buffers only).
    /// Appends its buffers to `segs` up to `keep` bytes and returns that
    /// many bytes' capacity (less if the chain is smaller); `None`, with
    /// `segs` unchanged, if the chain cannot take a frame.
    pub(super) fn rx_capacity(
        &self,
        q: &DeviceQueue,
        head: u16,
        keep: usize,
        segs: &mut Vec<(GuestAddress, u32)>,
    ) -> Option<u32> {
        let start = segs.len();
        let walk = |segs: &mut Vec<(GuestAddress, u32)>| -> Option<u32> {
            let chain = q.chain(&self.mem, head).ok()?;
            let mut cap = 0usize;
            for d in chain {
                let d = d.ok()?;
                if !d.is_write_only() {
                    return None;
                }
                self.mem
                    .map(d.addr(), u64::from(d.len()), Access::Write)
                    .ok()?;
                let n = (d.len() as usize).min(keep - cap);
                if n > 0 {
                    segs.push((d.addr(), n as u32));
                    cap += n;
                }
            }
            u32::try_from(cap).ok()
        };
        let cap = walk(segs);
        if cap.is_none() {
            segs.truncate(start);
        }
        cap
    }

    /// Writes `data` into the buffers `segs`; returns the bytes written.
    pub(super) fn rx_write(mem: &M, segs: &[(GuestAddress, u32)], data: &[u8]) -> u32 {
        let mut done = 0usize;
        for &(addr, len) in segs {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            if mem.write(addr, &data[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        done as u32
    }

    /// Delivers the front frame of `rx` into its receive queue `q`
    /// (§5.1.6.4).
    pub(super) fn rx_deliver(
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
        // What a held chain is kept for: the largest frame (a chain held for
        // a frame that is then dropped serves the next one).
        let keep = HDR_LEN + self.max_frame();
        loop {
            let have: u64 = rx.held.iter().map(|&(_, c, _)| u64::from(c)).sum();
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
            let start = rx.segs.len();
            match self.rx_capacity(q, head, keep, &mut rx.segs) {
                Some(cap) if cap as usize >= h => rx.held.push((head, cap, rx.segs.len())),
                _ => {
                    rx.segs.truncate(start);
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
            let (head, _, _) = rx.held[0];
            rx.held.clear();
            rx.segs.clear();
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
        let mut seg = 0usize;
        for &(head, cap, end) in &rx.held {
            let take = (cap as usize).min(need - pos);
            let bufs = rx.segs.get(seg..end).unwrap_or(&[]);
            let n = Self::rx_write(&self.mem, bufs, &stream[pos..pos + take]);
            q.add_used(&self.mem, head, n)?;
            rx.completed += 1;
            pos += take;
            seg = end;
        }
        rx.held.clear();
        rx.segs.clear();
        rx.held_split = false;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += (need - h) as u64;
        rx.ring.pop();
        Ok(RxOutcome::Delivered)
    }

    /// Runs `f` with receive queue `pair`'s ring and state taken out of
    /// the device (both put back after); `Ok(false)` when the pair has no
    /// receive queue.
    pub(super) fn with_rx(
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
    pub(super) fn rx_drain(&mut self, pair: u16) -> Result<(), DeviceError> {
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
    pub(super) fn rx_pump(&mut self, served: &mut Served) -> Result<(), DeviceError> {
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
                was = dev.finish_queue(p * 2, q, completed, served);
                Ok(())
            })?;
            was.map_err(|err| DeviceError::Queue { queue: p * 2, err })?;
        }
        Ok(())
    }
}
