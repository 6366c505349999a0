//! A work budget per call (issue 16, finding 2): a guest that keeps moving
//! `avail.idx` (re-posting one head as soon as it is used) cannot keep a
//! device in one `queue_notify`. The call returns after at most
//! [`QUEUE_BUDGET`] chains, having published their used entries and
//! re-armed notifications (§2.7.10), and says `again`; calling again while
//! it says so drains what is left without a new notification.

mod blk_support;
mod net_support;
mod queue_rig;

use std::sync::atomic::{AtomicU64, Ordering};

use backends::rng::Deterministic;
use blk_support::MemDisk;
use virtio_core::GuestMemory;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError};
use virtio_core::split::layout::QueueLayout;
use virtio_core::testing::OwnedMemory;
use virtio_devices::blk::{Blk, BlkConfig, req};
use virtio_devices::console::Console;
use virtio_devices::device::{QUEUE_BUDGET, Served, VirtioDevice};
use virtio_devices::net::{Net, NetConfig, NetHdr};
use virtio_devices::rng::Rng;

/// A hostile guest that re-posts a head the moment the device returns it
/// (a driver may not re-post a head the device has not returned, but here
/// it is returned and posted again at once, forever): guest memory as the
/// device sees it, where every used element the device writes publishes
/// `head` once more on the available ring. Deterministic, unlike a second
/// thread racing the device, and just as endless: it stops after
/// [`Refill::LIMIT`] chains so that a device without a budget fails the
/// test instead of hanging it.
struct Refill {
    mem: &'static OwnedMemory,
    layout: QueueLayout,
    head: u16,
    posted: AtomicU64,
}

impl Refill {
    const LIMIT: u64 = 20_000;

    fn new(mem: &'static OwnedMemory, layout: QueueLayout, head: u16) -> &'static Refill {
        Box::leak(Box::new(Refill {
            mem,
            layout,
            head,
            posted: AtomicU64::new(0),
        }))
    }

    /// Fills the ring: `size` copies of `head` available.
    fn fill(&self) {
        for _ in 0..self.layout.size().get() {
            self.post();
        }
    }

    fn post(&self) {
        if self.posted.load(Ordering::Relaxed) >= Self::LIMIT {
            return;
        }
        let idx = self.mem.load_u16_acquire(self.layout.avail_idx()).unwrap();
        self.mem
            .write_u16(self.layout.avail_slot(idx), self.head)
            .unwrap();
        self.mem
            .store_u16_release(self.layout.avail_idx(), idx.wrapping_add(1))
            .unwrap();
        self.posted.fetch_add(1, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.posted.store(Self::LIMIT, Ordering::Relaxed);
    }

    fn used_idx(&self) -> u16 {
        self.mem.load_u16_acquire(self.layout.used_idx()).unwrap()
    }

    fn avail_idx(&self) -> u16 {
        self.mem.load_u16_acquire(self.layout.avail_idx()).unwrap()
    }
}

impl GuestMemory for Refill {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.mem.map(addr, len, access)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.mem.write(addr, buf)?;
        let ring = self.layout.used_slot(0).0..self.layout.avail_event().0;
        if ring.contains(&addr.0) {
            self.post();
        }
        Ok(())
    }
}

/// One call under the refilling guest returns with the budget spent and
/// published, and says `again`; calls while it says so, with the guest
/// stopped, drain the ring.
fn bounded_then_drained(refill: &Refill, notify: &mut dyn FnMut() -> Served) {
    refill.fill();
    let served = notify();
    assert_eq!(served.completed, QUEUE_BUDGET, "stopped at the budget");
    assert!(served.again, "and asked to be called again");
    assert_eq!(
        u32::from(refill.used_idx()),
        QUEUE_BUDGET,
        "what it served is published before it returns"
    );
    refill.stop();
    let mut calls = 0;
    loop {
        let s = notify();
        calls += 1;
        assert!(calls < 100, "the ring never drained");
        if !s.again {
            break;
        }
    }
    assert_eq!(refill.avail_idx(), refill.used_idx(), "every chain served");
}

#[test]
fn section_2_7_blk_serves_at_most_the_budget_per_call_then_drains() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let layout = queue_rig::layout(0);
    // Head 0: a FLUSH (header, status).
    let (h, st) = (0x8_0000u64, 0x8_0100u64);
    mem.write(
        GuestAddress(h),
        &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
    .unwrap();
    let refill = Refill::new(mem, layout, 0);
    let mut dev = Blk::new(MemDisk::new(64), refill, BlkConfig::default()).unwrap();
    let f = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, f);
    drv[0]
        .add(mem, &[(GuestAddress(h), 16)], &[(GuestAddress(st), 1)])
        .unwrap();
    bounded_then_drained(refill, &mut || dev.queue_notify(0).unwrap());
}

#[test]
fn section_5_1_6_2_net_transmit_and_control_serve_at_most_the_budget_per_call() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let frame = net_support::frame([0xff; 6], 60, 1);
    let (h, f) = (0x8_0000u64, 0x8_0100u64);
    mem.write(GuestAddress(h), &NetHdr::default().to_bytes())
        .unwrap();
    mem.write(GuestAddress(f), &frame).unwrap();
    // transmitq1 is queue 1.
    let refill = Refill::new(mem, queue_rig::layout(1), 0);
    let wire = net_support::Wire::new();
    let mut dev = Net::new(wire.clone(), refill, NetConfig::default()).unwrap();
    let feats = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, feats);
    drv[1]
        .add(mem, &[(GuestAddress(h), 12), (GuestAddress(f), 60)], &[])
        .unwrap();
    bounded_then_drained(refill, &mut || dev.queue_notify(1).unwrap());
    assert!(wire.sent().len() > QUEUE_BUDGET as usize);

    // The control queue (2 with one pair): RX_PROMISC on.
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let (c, ack) = (0x8_0000u64, 0x8_0100u64);
    mem.write(GuestAddress(c), &[0, 0, 1]).unwrap();
    let refill = Refill::new(mem, queue_rig::layout(2), 0);
    let mut dev = Net::new(net_support::Wire::new(), refill, NetConfig::default()).unwrap();
    let feats = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, feats);
    drv[2]
        .add(mem, &[(GuestAddress(c), 3)], &[(GuestAddress(ack), 1)])
        .unwrap();
    bounded_then_drained(refill, &mut || dev.queue_notify(2).unwrap());
}

#[test]
fn section_5_4_rng_serves_at_most_the_budget_per_call() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let layout = queue_rig::layout(0);
    let refill = Refill::new(mem, layout, 0);
    let mut dev = Rng::new(Deterministic::new(3), refill);
    let f = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, f);
    drv[0]
        .add(mem, &[], &[(GuestAddress(0x8_0000), 16)])
        .unwrap();
    bounded_then_drained(refill, &mut || dev.queue_notify(0).unwrap());
}

#[test]
fn section_5_3_console_transmit_serves_at_most_the_budget_per_call() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    mem.write(GuestAddress(0x8_0000), b"x").unwrap();
    // transmitq0 is queue 1.
    let refill = Refill::new(mem, queue_rig::layout(1), 0);
    let out = backends::chardev::RingBuf::<65536>::new();
    let mut dev = Console::new(refill, Box::new(out));
    let f = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, f);
    drv[1]
        .add(mem, &[(GuestAddress(0x8_0000), 1)], &[])
        .unwrap();
    bounded_then_drained(refill, &mut || dev.queue_notify(1).unwrap());
}

#[test]
fn a_ring_filled_once_and_kicked_once_drains_in_one_call_when_it_fits_the_budget() {
    let mut r = blk_support::rig(MemDisk::new(64));
    // A FLUSH takes two descriptors.
    for _ in 0..queue_rig::QSIZE / 2 {
        r.request(req::FLUSH, 0, &[], true);
    }
    let s = r.notify(0);
    assert_eq!(s.completed, u32::from(queue_rig::QSIZE / 2));
    assert!(!s.again);
}
