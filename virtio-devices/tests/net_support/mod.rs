//! Shared by the virtio-net tests: a backend over queues the test can look
//! into while the device owns it, and a rig (our driver queues and the
//! device over one memory) that builds chains byte by byte.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use backends::net::{NetBackend, NetError, Offloads, Sent};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;

use crate::queue_rig;
#[allow(unused_imports)]
pub use crate::queue_rig::{Buf, QSIZE, layout};
use virtio_devices::device::{Served, VirtioDevice};
use virtio_devices::net::{Net, NetConfig};

/// What the backend holds and what happened to it.
#[derive(Default)]
pub struct WireState {
    /// Frames the device sent (each the concatenation of its parts).
    pub sent: Vec<Vec<u8>>,
    /// Frames waiting to be received by the device.
    pub inbound: VecDeque<Vec<u8>>,
    /// `send` answers `Busy` while set.
    pub busy: bool,
    /// The backend's header length (0 or 12).
    pub vnet_hdr_len: usize,
    pub link_down: bool,
    /// Sent frames come back as received ones.
    pub loopback: bool,
    pub offloads: Option<Offloads>,
    pub recv_calls: u64,
}

#[derive(Clone, Default)]
pub struct Wire(pub Arc<Mutex<WireState>>);

impl Wire {
    pub fn new() -> Wire {
        Wire::default()
    }

    pub fn state(&self) -> MutexGuard<'_, WireState> {
        self.0.lock().unwrap()
    }

    pub fn with(self, f: impl FnOnce(&mut WireState)) -> Wire {
        f(&mut self.state());
        self
    }

    pub fn push(&self, frame: Vec<u8>) {
        self.state().inbound.push_back(frame);
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.state().sent)
    }
}

impl NetBackend for Wire {
    fn vnet_hdr_len(&self) -> usize {
        self.state().vnet_hdr_len
    }
    fn set_offloads(&mut self, offloads: Offloads) -> Result<(), NetError> {
        self.state().offloads = Some(offloads);
        Ok(())
    }
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let mut s = self.state();
        if s.busy {
            return Ok(Sent::Busy);
        }
        let f: Vec<u8> = parts.concat();
        if s.loopback {
            s.inbound.push_back(f.clone());
        }
        s.sent.push(f);
        Ok(Sent::Done)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let mut s = self.state();
        s.recv_calls += 1;
        let Some(f) = s.inbound.pop_front() else {
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
    fn link_up(&self) -> bool {
        !self.state().link_down
    }
}

pub const MEM_SIZE: usize = 0x20_0000;

pub struct Rig {
    pub mem: &'static OwnedMemory,
    pub drv: Vec<DriverQueue<64>>,
    pub dev: Net<Wire, &'static queue_rig::Tracked>,
    /// What the device loads, checked for double fetches when the rig is
    /// dropped.
    pub fetch: &'static queue_rig::Tracked,
    pub wire: Wire,
    pub next: u64,
    pub features: u64,
}

/// A rig with `features` negotiated (`None`: all offered) and `cfg`.
pub fn rig_with(wire: Wire, cfg: NetConfig, features: Option<u64>) -> Rig {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), MEM_SIZE)));
    let cfg = NetConfig {
        queue_size: QSIZE,
        ..cfg
    };
    // Every queue the largest configuration can have.
    let fetch = queue_rig::tracked(mem, 32);
    let mut dev = Net::new(wire.clone(), fetch, cfg).unwrap();
    let features = features.unwrap_or(dev.device_features());
    let drv = queue_rig::activate(&mut dev, mem, features);
    Rig {
        mem,
        drv,
        dev,
        fetch,
        wire,
        next: 0x10_0000,
        features,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.fetch.assert_none();
        }
    }
}

pub fn rig(wire: Wire) -> Rig {
    rig_with(wire, NetConfig::default(), None)
}

/// An Ethernet frame to `dst` of `len` bytes.
pub fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

pub const BCAST: [u8; 6] = [0xff; 6];
/// The default configuration's MAC address.
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl Rig {
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next;
        self.next = (self.next + len + 15) & !15;
        assert!(self.next < MEM_SIZE as u64, "rig scratch memory exhausted");
        a
    }

    pub fn data(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len() as u64);
        self.mem.write(GuestAddress(a), bytes).unwrap();
        a
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(GuestAddress(addr), &mut v).unwrap();
        v
    }

    pub fn add_on(&mut self, q: usize, bufs: &[Buf]) -> Token {
        queue_rig::add(&mut self.drv[q], self.mem, bufs)
    }

    /// Queues `hdr ++ frame` on transmitq1 (one readable buffer each).
    pub fn tx(&mut self, hdr: &[u8], frame: &[u8]) -> Token {
        let h = self.data(hdr);
        let f = self.data(frame);
        self.add_on(
            1,
            &[Buf::R(h, hdr.len() as u32), Buf::R(f, frame.len() as u32)],
        )
    }

    /// Posts one receive buffer of `len` bytes; returns its token and
    /// address.
    pub fn rx_buf(&mut self, len: u32) -> (Token, u64) {
        let a = self.alloc(u64::from(len));
        (self.add_on(0, &[Buf::W(a, len)]), a)
    }

    pub fn notify(&mut self, q: u16) -> Served {
        self.dev.queue_notify(q).unwrap()
    }

    pub fn ready(&mut self) -> Served {
        self.dev.backend_ready().unwrap()
    }

    pub fn completions_on(&mut self, q: usize) -> Vec<(Token, u32)> {
        let mut out = vec![];
        while let Some(u) = self.drv[q].pop_used(self.mem).unwrap() {
            out.push((u.token, u.len));
        }
        out
    }

    /// Sends a control command; returns the ack (0xff if none written).
    pub fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        let q = self.dev.queue_max_sizes().len() - 1;
        let mut c = vec![class, cmd];
        c.extend_from_slice(data);
        let a = self.data(&c);
        let ack = self.data(&[0xff]);
        let t = self.add_on(q, &[Buf::R(a, c.len() as u32), Buf::W(ack, 1)]);
        self.notify(q as u16);
        assert_eq!(self.completions_on(q), vec![(t, 1)]);
        self.bytes(ack, 1)[0]
    }
}
