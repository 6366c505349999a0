//! A `smoltcp::phy::Device` over [`Net`]: a receive token hands smoltcp a
//! copy of the frame in the driver's merge buffer, memory the device is
//! never given (smoltcp takes a `&[u8]`, and a Rust reference must not
//! cover a DMA buffer the device could write again); the receive buffer
//! goes back to the device at once. A transmit token lets smoltcp write
//! the frame straight into a DMA transmit slot (zero-copy).
//!
//! Checksums: with `VIRTIO_NET_F_GUEST_CSUM` smoltcp does not verify
//! TCP/UDP checksums on receive; frames the device did not vouch for
//! ([`RxChecksum::Unknown`]) are verified here
//! ([`verify_l4_checksum`]) and
//! dropped and counted if wrong. With `VIRTIO_NET_F_CSUM` smoltcp does not
//! compute them on transmit: for IPv4 TCP and UDP frames the adapter puts
//! the pseudo-header sum in the checksum field and sends `NEEDS_CSUM`
//! (§5.1.6.2); other frames go out as smoltcp made them.
//!
//! Call [`SmolNet::flush`] after each `Interface::poll` so the frames it
//! queued go out (the driver also flushes every quarter ring).

use core::cell::RefCell;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_core::features::NetFeatures;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::net::{l4_checksum_offsets, verify_l4_checksum};

use super::{Net, NetError, RxChecksum, RxHandle, TxOffload};
use crate::hal::Hal;

/// [`Net`] as a smoltcp device.
pub struct SmolNet<H: Hal, R: RegisterAccess> {
    net: RefCell<Net<H, R>>,
    burst: usize,
    last_error: Option<NetError>,
}

impl<H: Hal, R: RegisterAccess> core::fmt::Debug for SmolNet<H, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SmolNet")
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<H: Hal, R: RegisterAccess> SmolNet<H, R> {
    /// Wraps `net`.
    pub fn new(net: Net<H, R>) -> Self {
        let burst = (net.tx.size() as usize / 4).max(1);
        SmolNet {
            net: RefCell::new(net),
            burst,
            last_error: None,
        }
    }

    /// The driver, for configuration, control commands and statistics.
    pub fn net(&mut self) -> &mut Net<H, R> {
        self.net.get_mut()
    }

    /// Gives the driver back.
    pub fn into_inner(self) -> Net<H, R> {
        self.net.into_inner()
    }

    /// Sends what smoltcp queued and reposts receive buffers (one kick
    /// per queue at most).
    pub fn flush(&mut self) -> Result<(), NetError> {
        self.net.get_mut().flush()
    }

    /// The last driver error the device methods met (they cannot return
    /// errors to smoltcp), taken.
    pub fn take_error(&mut self) -> Option<NetError> {
        self.last_error.take()
    }

    fn tx_ready(net: &mut Net<H, R>) -> Result<bool, NetError> {
        if net.tx_free() == 0 {
            net.reclaim()?;
        }
        if net.tx_free() == 0 {
            net.flush()?;
        }
        Ok(net.tx_free() > 0)
    }

    /// Whether a transmit slot is free (after reclaiming and flushing); an
    /// error is kept for [`take_error`](Self::take_error).
    fn tx_slot(&mut self) -> bool {
        match Self::tx_ready(self.net.get_mut()) {
            Ok(free) => free,
            Err(e) => {
                self.last_error = Some(e);
                false
            }
        }
    }
}

/// A received frame for smoltcp: a copy in the merge buffer, kept until
/// the token is consumed or dropped, then the merge buffer is free again.
pub struct RxToken<'a, H: Hal, R: RegisterAccess> {
    net: &'a RefCell<Net<H, R>>,
    handle: Option<RxHandle>,
    /// The copy's bytes, taken when the token was made (smoltcp uses the
    /// transmit token while it looks at the frame, so the driver cannot
    /// stay borrowed for it).
    ptr: *const u8,
    len: usize,
}

impl<H: Hal, R: RegisterAccess> Drop for RxToken<'_, H, R> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.net.borrow_mut().recycle(h);
        }
    }
}

/// A transmit slot for smoltcp.
pub struct TxToken<'a, H: Hal, R: RegisterAccess> {
    net: &'a RefCell<Net<H, R>>,
    offload: bool,
}

impl<H: Hal, R: RegisterAccess> phy::RxToken for RxToken<'_, H, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        // SAFETY: `ptr`/`len` are the frame's bytes as
        // `Net::copied_bytes` gave them: the merge buffer, which the
        // device is never given; nothing writes it until this token
        // recycles the handle on drop, after `f` (the transmit path never
        // touches it), and the driver's memory outlives the token's
        // borrow.
        let frame = unsafe { core::slice::from_raw_parts(self.ptr, self.len) };
        f(frame)
    }
}

impl<H: Hal, R: RegisterAccess> phy::TxToken for TxToken<'_, H, R> {
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
            // Not sent (the device methods made sure of a slot, so only a
            // frame longer than the MTU or a broken queue get here): let
            // smoltcp write into the spare buffer and drop the frame.
            (None, Some(f)) => {
                if let Err(e) = r {
                    net_err(self.net, e);
                }
                let mut net = self.net.borrow_mut();
                f(net.spare(len))
            }
            // The closure took `f` only to store its value in `out`.
            (None, None) => unreachable!("the transmit closure ran without storing its value"),
        }
    }
}

fn net_err<H: Hal, R: RegisterAccess>(net: &RefCell<Net<H, R>>, _e: NetError) {
    net.borrow_mut().stats.tx_dropped += 1;
}

impl<H: Hal, R: RegisterAccess> phy::Device for SmolNet<H, R> {
    type RxToken<'a>
        = RxToken<'a, H, R>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, H, R>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A slot for an answer first: without one, leave the frame in the
        // ring for the next poll.
        if !self.tx_slot() {
            return None;
        }
        let net = self.net.get_mut();
        let verify = net.has(NetFeatures::GUEST_CSUM);
        let handle = loop {
            match net.receive_handle() {
                Ok(Some(h)) => {
                    // Out of the DMA buffer before anything reads it.
                    let Some(h) = net.copy_out(h) else {
                        continue;
                    };
                    if verify
                        && h.checksum() == RxChecksum::Unknown
                        && verify_l4_checksum(net.copied_bytes(&h)) == Some(false)
                    {
                        net.drop_bad_checksum(h);
                        continue;
                    }
                    break h;
                }
                Ok(None) => return None,
                // A malformed completion was dropped and counted: go on.
                Err(NetError::Malformed(_)) => continue,
                Err(e) => {
                    self.last_error = Some(e);
                    return None;
                }
            }
        };
        let offload = net.has(NetFeatures::CSUM);
        let bytes = net.copied_bytes(&handle);
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        Some((
            RxToken {
                net: &self.net,
                handle: Some(handle),
                ptr,
                len,
            },
            TxToken {
                net: &self.net,
                offload,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx_slot() {
            return None;
        }
        let offload = self.net.get_mut().has(NetFeatures::CSUM);
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
        let rx_trusted = net.has(NetFeatures::GUEST_CSUM);
        let tx_offloaded = net.has(NetFeatures::CSUM);
        let l4 = match (rx_trusted, tx_offloaded) {
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
