//! The guest's own `smoltcp::phy::Device` over [`Nic`], zero-copy both
//! ways, the same checksum rules as `guest_driver::net::smol::SmolNet`.
//!
//! Why not `SmolNet`: smoltcp answers a received frame (ARP reply, ICMP
//! echo reply, TCP ACK) from inside the receive token's `consume`, so the
//! transmit token is used while the receive token still holds the driver;
//! `SmolNet`'s receive token keeps its `RefCell` borrowed across the
//! callback and the first answer panics ("RefCell already borrowed"). Here
//! the receive token lets go of the driver before the callback and hands
//! smoltcp the frame straight from its DMA buffer.

use core::cell::RefCell;

use guest_driver::net::{
    NetError, RxChecksum, RxHandle, TxOffload, l4_checksum_offsets, verify_l4_checksum,
};
use guest_driver::virtio_core::features::NetFeatures;
use guest_rt::exit;
use guest_rt::virtio::{Budget, Mode, OrFail};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::Nic;
use crate::stack::NetDev;

/// [`Nic`] as a smoltcp device.
pub struct Phy<'p> {
    net: RefCell<Nic<'p>>,
    burst: usize,
}

impl<'p> Phy<'p> {
    /// Wraps `net`; smoltcp may send a quarter of the transmit ring per
    /// poll step.
    pub fn new(net: Nic<'p>) -> Self {
        let burst = usize::from(net.options().tx_buffers / 4).max(1);
        Phy {
            net: RefCell::new(net),
            burst,
        }
    }

    /// The driver.
    pub fn net(&mut self) -> &mut Nic<'p> {
        self.net.get_mut()
    }

    /// A transmit slot is free (reclaiming, then publishing, if not).
    fn tx_ready(net: &mut Nic<'p>) -> bool {
        if net.tx_free() == 0 {
            net.reclaim().or_fail(format_args!("net: reclaim"));
        }
        if net.tx_free() == 0 {
            net.flush().or_fail(format_args!("net: flush"));
        }
        net.tx_free() > 0
    }
}

/// A received frame for smoltcp.
pub struct RxToken<'a, 'p> {
    net: &'a RefCell<Nic<'p>>,
    handle: RxHandle,
}

/// A transmit slot for smoltcp.
pub struct TxToken<'a, 'p> {
    net: &'a RefCell<Nic<'p>>,
    offload: bool,
}

impl phy::RxToken for RxToken<'_, '_> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        let (ptr, len) = {
            let net = self.net.borrow();
            let b = net.rx_bytes(&self.handle);
            (b.as_ptr(), b.len())
        };
        // SAFETY: the bytes are the frame in its receive DMA buffer (or
        // the driver's merge buffer), outside the `Net` value; the handle
        // holds the buffer, which is neither reposted nor overwritten
        // until `recycle` below (the transmit token smoltcp may use
        // meanwhile only touches transmit slots).
        let r = f(unsafe { core::slice::from_raw_parts(ptr, len) });
        self.net.borrow_mut().recycle(self.handle);
        r
    }
}

impl phy::TxToken for TxToken<'_, '_> {
    fn consume<T, F: FnOnce(&mut [u8]) -> T>(self, len: usize, f: F) -> T {
        let mut net = self.net.borrow_mut();
        let mut f = Some(f);
        let mut out = None;
        let offload = self.offload;
        let r = net.transmit_with_offload(len, |buf| {
            if let Some(f) = f.take() {
                out = Some(f(buf));
            }
            if !offload {
                return TxOffload::None;
            }
            match l4_checksum_offsets(buf) {
                Some((start, offset, pseudo)) => {
                    let at = usize::from(start) + usize::from(offset);
                    if let Some(field) = buf.get_mut(at..at + 2) {
                        field.copy_from_slice(&pseudo.to_be_bytes());
                    }
                    TxOffload::Checksum { start, offset }
                }
                None => TxOffload::None,
            }
        });
        drop(net);
        match (out, f) {
            (Some(v), _) => v,
            (None, Some(f)) => {
                // Not queued: the token was only handed out with a free
                // slot, so a frame beyond the MTU or a broken queue.
                if let Err(e) = r {
                    exit::fail(format_args!("net: transmit of {len} bytes: {e}"));
                }
                let mut spare = [0u8; 1514];
                f(&mut spare[..len.min(1514)])
            }
            (None, None) => exit::fail(format_args!("net: transmit: no frame written")),
        }
    }
}

impl<'p> phy::Device for Phy<'p> {
    type RxToken<'a>
        = RxToken<'a, 'p>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, 'p>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let net = self.net.get_mut();
        let verify = net.has(NetFeatures::GUEST_CSUM);
        let handle = loop {
            match net.receive_handle() {
                Ok(Some(h)) => {
                    // §5.1.6.4: without DATA_VALID/NEEDS_CSUM the checksum
                    // is unchecked; smoltcp skips it (GUEST_CSUM), so here.
                    if verify
                        && h.checksum() == RxChecksum::Unknown
                        && verify_l4_checksum(net.rx_bytes(&h)) == Some(false)
                    {
                        net.drop_bad_checksum(h);
                        continue;
                    }
                    break h;
                }
                Ok(None) => return None,
                Err(NetError::Malformed(_)) => continue,
                Err(e) => exit::fail(format_args!("net: receive: {e}")),
            }
        };
        // An answer without a free slot is dropped by smoltcp's token
        // (like a full link); TCP retransmits.
        let _ = Self::tx_ready(net);
        let offload = net.has(NetFeatures::CSUM);
        let net = &self.net;
        Some((RxToken { net, handle }, TxToken { net, offload }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
        let net = self.net.get_mut();
        if !Self::tx_ready(net) {
            return None;
        }
        let offload = net.has(NetFeatures::CSUM);
        Some(TxToken {
            net: &self.net,
            offload,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let net = self.net.borrow();
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = net.max_frame();
        caps.max_burst_size = Some(self.burst);
        let l4 = match (net.has(NetFeatures::GUEST_CSUM), net.has(NetFeatures::CSUM)) {
            (true, true) => Checksum::None,
            (true, false) => Checksum::Tx,
            (false, true) => Checksum::Rx,
            (false, false) => Checksum::Both,
        };
        let mut c = ChecksumCapabilities::default();
        c.tcp = l4;
        c.udp = l4;
        caps.checksum = c;
        caps
    }
}

impl NetDev for Phy<'_> {
    fn flush(&mut self) {
        self.net().flush().or_fail(format_args!("net: flush"));
    }

    fn idle(&mut self, mode: Mode, ms: u64) -> bool {
        let mut wait = Budget::new(mode, ms);
        match self.net().wait_rx(&mut wait) {
            Ok(()) => true,
            Err(NetError::Driver(guest_driver::Error::Timeout { .. })) => false,
            Err(e) => exit::fail(format_args!("net: waiting for a frame: {e}")),
        }
    }

    fn link_up(&mut self) -> bool {
        self.net().link_up().or_fail(format_args!("net: STATUS"))
    }

    fn frames(&mut self) -> (u64, u64) {
        let s = self.net().stats();
        (s.rx_frames, s.tx_frames)
    }
}
