//! The control queue (§5.1.6.5): receive modes, MAC tables and
//! address, and the number of queue pairs.

use backends::net::NetBackend;
use virtio_core::GuestMemory;
use virtio_core::features::NetFeatures;
use virtio_core::split::DeviceQueue;

use super::filter::set_tables;
use super::{ETH_ALEN, Net, ctrl};
use crate::device::{Budget, DeviceError, Served};

impl<B: NetBackend, M: GuestMemory> Net<B, M> {
    /// Executes one command held in the control buffer: the ack.
    pub(super) fn ctrl_exec(&mut self, len: usize) -> u8 {
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
    pub(super) fn ctrl_one(&mut self, q: &DeviceQueue, head: u16) -> u32 {
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

    pub(super) fn ctrl_queue(
        &mut self,
        index: u16,
        served: &mut Served,
    ) -> Result<(), DeviceError> {
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
        let mut budget = Budget::default();
        let r = (|| {
            q.disable_notification(&self.mem)?;
            while let Some(head) = budget.next_head(&mut q, &self.mem, &mut malformed)? {
                let n = self.ctrl_one(&q, head);
                q.add_used(&self.mem, head, n)?;
                completed += 1;
            }
            Ok(())
        })();
        self.stats.ctrl_bad_chains += malformed;
        served.again |= budget.exhausted;
        let f = self.finish_queue(index, &mut q, completed, served);
        self.queues[usize::from(index)] = Some(q);
        r.and(f).map_err(qerr)
    }
}
