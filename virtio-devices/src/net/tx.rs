//! The transmit queues (§5.1.6.2): chains in, frames out to the backend.

use backends::net::{NetBackend, Sent};
use virtio_core::GuestMemory;
use virtio_core::features::NetFeatures;
use virtio_core::split::DeviceQueue;

use super::{HDR_LEN, Net, NetHdr, TxOutcome, TxPending, flags, gso, internet_checksum};
use crate::device::{Budget, DeviceError, Served};

impl<B: NetBackend, M: GuestMemory> Net<B, M> {
    /// Copies chain `head` of `q` (transmit queue of pair `pair`) into the
    /// transmit buffer and checks it; sends it unless it is dropped.
    pub(super) fn tx_one(&mut self, q: &DeviceQueue, head: u16, pair: u16) -> TxOutcome {
        let max_frame = self.max_frame();
        let mtu = self
            .negotiated(NetFeatures::MTU)
            .then_some(usize::from(self.cfg.mtu));
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
        // With MTU negotiated the driver must not send more than the MTU
        // after the frame's own header (§5.1.4.2); such a frame is
        // dropped.
        if mtu.is_some_and(|m| super::over_mtu(&tx[h..len], m)) {
            self.stats.tx_drop_too_long += 1;
            return TxOutcome::Done;
        }
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
    pub(super) fn send(&mut self, len: usize) -> TxOutcome {
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
    pub(super) fn tx_queue(&mut self, index: u16, served: &mut Served) -> Result<(), DeviceError> {
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
        let mut budget = Budget::default();
        let r = (|| {
            q.disable_notification(&self.mem)?;
            loop {
                match budget.next_head(&mut q, &self.mem, &mut malformed)? {
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
        served.again |= budget.exhausted;
        let f = self.finish_queue(index, &mut q, completed, served);
        self.queues[usize::from(index)] = Some(q);
        r.and(f).map_err(qerr)
    }

    /// Resumes a paused frame, then serves every transmit queue.
    pub(super) fn tx_pump(&mut self, served: &mut Served) -> Result<(), DeviceError> {
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
                    .and_then(|()| self.finish_queue(p.queue, &mut q, 1, served));
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
}
