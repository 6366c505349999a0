//! What `net_tx` and `net_rx` share: a backend the fuzzer controls (frames
//! waiting to be received, backpressure, a virtio-net header or not) that
//! checks what the device hands it, and steps that build virtio-net
//! headers (§5.1.6) and control commands (§5.1.6.5) field by field.

use std::collections::VecDeque;

use arbitrary::Arbitrary;
use backends::net::{NetBackend, NetError, Offloads, Sent};
use virtio_core::net::{HDR_LEN, NetHdr};
use virtio_devices::net::{ETH_OVERHEAD, Net, NetConfig};

use super::chain_rig::{BufSpec, Op, Rig};

/// Largest frame the fuzzed device may hand a plain backend: the MTU used
/// by the targets plus Ethernet and VLAN headers.
pub const MTU: u16 = 1500;

/// The fuzzer's backend.
#[derive(Debug, Default)]
pub struct Wire {
    /// Backend header length (0: plain, 12: a tap with IFF_VNET_HDR).
    pub vnet: usize,
    /// Frames waiting to be received.
    pub inbound: VecDeque<Vec<u8>>,
    /// `send` answers Busy while set.
    pub busy: bool,
    /// Frames sent.
    pub sent: u64,
}

impl NetBackend for Wire {
    fn vnet_hdr_len(&self) -> usize {
        self.vnet
    }

    fn set_offloads(&mut self, _offloads: Offloads) -> Result<(), NetError> {
        Ok(())
    }

    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        if self.busy {
            return Ok(Sent::Busy);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // §5.1.6.2, §5.1.4.1: nothing longer than the MTU leaves the device.
        assert!(
            len <= self.vnet + usize::from(MTU) + ETH_OVERHEAD,
            "device sent a {len}-byte frame past the MTU"
        );
        assert!(len >= self.vnet, "frame shorter than the backend header");
        self.sent += 1;
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let Some(f) = self.inbound.pop_front() else {
            return Ok(None);
        };
        if f.len() > buf.len() {
            return Err(NetError::TooBig {
                len: f.len(),
                max: buf.len(),
            });
        }
        buf[..f.len()].copy_from_slice(&f);
        Ok(Some(f.len()))
    }
}

/// A virtio-net header as the fuzzer describes it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Hdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    num_buffers: u16,
}

impl Hdr {
    /// Its 12 wire bytes.
    pub fn bytes(&self) -> [u8; HDR_LEN] {
        NetHdr {
            flags: self.flags,
            gso_type: self.gso_type,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
            num_buffers: self.num_buffers,
        }
        .to_bytes()
    }
}

/// A control command (§5.1.6.5) as the fuzzer describes it.
#[derive(Arbitrary, Debug, Clone)]
pub struct Ctrl {
    class: u8,
    command: u8,
    data: Vec<u8>,
    /// Length of the ack buffer (1 is right).
    ack_len: u8,
    /// Split the command data over this many buffers.
    pieces: u8,
}

/// The net device the targets build: one or two queue pairs and a control
/// queue, the MTU above, every feature on offer.
pub fn device<'m>(
    wire: Wire,
    mem: &'m super::chain_rig::Tracked<'m>,
    pairs: bool,
) -> Option<Net<Wire, &'m super::chain_rig::Tracked<'m>>> {
    let cfg = NetConfig {
        mtu: MTU,
        queue_pairs: if pairs { 2 } else { 1 },
        queue_size: 16,
        rx_pending: 8,
        ..NetConfig::default()
    };
    Net::new(wire, mem, cfg).ok()
}

/// The control queue's index for `pairs` queue pairs (§5.1.2).
pub fn ctrl_queue(pairs: bool) -> u8 {
    if pairs { 4 } else { 2 }
}

/// Adds a control command to the control queue and notifies it.
pub fn send_ctrl<D: virtio_devices::device::VirtioDevice>(
    rig: &mut Rig<'_>,
    dev: &mut D,
    pairs: bool,
    c: &Ctrl,
) {
    let mut bufs = vec![BufSpec {
        writable: false,
        len: 2,
        bytes: vec![c.class, c.command],
    }];
    let pieces = usize::from(c.pieces % 4) + 1;
    let data: Vec<u8> = c.data.iter().copied().take(512).collect();
    if !data.is_empty() {
        for chunk in data.chunks(data.len().div_ceil(pieces)) {
            bufs.push(BufSpec {
                writable: false,
                len: chunk.len() as u16,
                bytes: chunk.to_vec(),
            });
        }
    }
    bufs.push(BufSpec {
        writable: true,
        len: u16::from(c.ack_len),
        bytes: Vec::new(),
    });
    let q = ctrl_queue(pairs);
    rig.run(
        dev,
        &[
            Op::Chain {
                queue: q,
                bufs,
                swapped: false,
            },
            Op::Notify(q),
        ],
    );
}
