//! The rig for the network driver tests: our own device
//! (`virtio_devices::net::Net`) behind virtio-core's register file, in
//! the same process and over the same test memory as the driver, with a
//! `RegisterAccess` that serves queue notifications as the harness's
//! ioeventfd handler does (`dispatch`), and a `pump` standing for the
//! harness's backend readiness loop.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};

use backends::net::NetBackend;
use virtio_core::memory::RegionMemory;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_devices::net::{Net as Device, NetConfig};
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};

pub type Regs<B> = MmioRegisters<MmioTransport<Device<B, RegionMemory<1>>>, 8>;

/// The device of one test machine.
pub struct DevBus<B: NetBackend> {
    pub regs: RefCell<Regs<B>>,
    /// Interrupts the device raised.
    pub irqs: Cell<u32>,
    pub notifies: Cell<u32>,
}

impl<B: NetBackend> DevBus<B> {
    pub fn new(backend: B, mem: RegionMemory<1>, cfg: NetConfig) -> DevBus<B> {
        let dev = Device::new(backend, mem, cfg).unwrap();
        DevBus {
            regs: RefCell::new(MmioRegisters::new(MmioTransport::new(dev)).unwrap()),
            irqs: Cell::new(0),
            notifies: Cell::new(0),
        }
    }

    /// The backend became readable: the device pulls frames.
    pub fn pump(&self) {
        let mut r = self.regs.borrow_mut();
        if backend_ready(&mut r) {
            self.irqs.set(self.irqs.get() + 1);
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Device<B, RegionMemory<1>>) -> T) -> T {
        f(self.regs.borrow_mut().device_mut().device_mut())
    }

    /// Sets the link; raises the configuration change interrupt if the
    /// device says so (§5.1.4.2).
    pub fn set_link(&self, up: bool) {
        let mut r = self.regs.borrow_mut();
        if r.device_mut().device_mut().set_link(up) {
            r.config_changed();
            self.irqs.set(self.irqs.get() + 1);
        }
    }

    pub fn irq_asserted(&self) -> bool {
        self.regs.borrow().interrupt_asserted()
    }
}

impl<B: NetBackend> RegisterAccess for DevBus<B> {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        let _ = self.regs.borrow().read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: u64, value: u32) {
        let mut r = self.regs.borrow_mut();
        if let Ok(o) = r.write(offset, &value.to_le_bytes()) {
            if matches!(o, virtio_core::mmio::device::WriteOutcome::Notify { .. }) {
                self.notifies.set(self.notifies.get() + 1);
            }
            if dispatch(&mut r, o) {
                self.irqs.set(self.irqs.get() + 1);
            }
            // The loopback and hub backends are always ready.
            if backend_ready(&mut r) {
                self.irqs.set(self.irqs.get() + 1);
            }
        }
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        let _ = self.regs.borrow().read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        let _ = self.regs.borrow_mut().write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        let _ = self.regs.borrow().read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        let _ = self.regs.borrow_mut().write(offset, &[value]);
    }
}

pub const BCAST: [u8; 6] = [0xff; 6];

/// An Ethernet frame of `len` bytes to `dst` from `src`, ethertype
/// 0x88b5, payload from `seed`.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    while f.len() < len {
        f.push((f.len() as u8).wrapping_mul(31).wrapping_add(seed));
    }
    f.truncate(len);
    f
}

/// An untagged Ethernet frame with an IPv4 UDP datagram carrying
/// `payload`, 10.0.2.15:1234 -> 10.0.2.2:7, UDP checksum field 0.
pub fn udp_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = virtio_core::net::internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let ulen = (8 + payload.len()) as u16;
    f.extend_from_slice(&1234u16.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}
