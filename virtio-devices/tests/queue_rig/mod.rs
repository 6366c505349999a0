//! What the blk and net test rigs share: our driver-side queues laid out in
//! one memory next to the device under test, and chains of readable and
//! writable buffers added to them.
#![allow(dead_code)]

use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::device::{QueueConfig, VirtioDevice};

/// Each rig queue's size.
pub const QSIZE: u16 = 64;

/// Where the rigs' queues live: queue `i` at `0x1000 + i * 0x3000`.
pub fn layout(i: u64) -> QueueLayout {
    let base = 0x1000 + i * 0x3000;
    QueueLayout::new(
        QueueSize::new(u32::from(QSIZE)).unwrap(),
        GuestAddress(base),
        GuestAddress(base + 0x1000),
        GuestAddress(base + 0x2000),
    )
    .unwrap()
}

/// The memory a rig's device sees: the rig's memory behind a double-fetch
/// tracker (issue 16) watching the rig's `n` queues; the driver side uses
/// the memory itself, untracked.
pub type Tracked = FetchTracker<&'static OwnedMemory>;

/// Wraps `mem` for the device, watching queues `0..n`.
pub fn tracked(mem: &'static OwnedMemory, n: usize) -> &'static Tracked {
    let t: &'static Tracked = Box::leak(Box::new(FetchTracker::new(mem)));
    for i in 0..n as u64 {
        t.watch_queue(&layout(i));
    }
    t
}

/// A buffer of a chain: device-readable or device-writable.
#[derive(Clone, Copy, Debug)]
pub enum Buf {
    R(u64, u32),
    W(u64, u32),
}

/// Lays out a driver queue for every queue of `dev` and activates it with
/// `features`.
pub fn activate<D: VirtioDevice>(
    dev: &mut D,
    mem: &'static OwnedMemory,
    features: u64,
) -> Vec<DriverQueue<64>> {
    let event_idx = features & virtio_core::features::TransportFeatures::RING_EVENT_IDX.bits() != 0;
    let n = dev.queue_max_sizes().len();
    let mut drv = vec![];
    let mut qc = vec![];
    for i in 0..n as u64 {
        let mut q = DriverQueue::new(layout(i), event_idx, None).unwrap();
        q.init(mem).unwrap();
        drv.push(q);
        qc.push(QueueConfig {
            layout: Some(layout(i)),
        });
    }
    dev.activate(features, qc).unwrap();
    drv
}

/// Adds the chain `bufs` (readable ones first, as a driver must) to `q`
/// and publishes it.
pub fn add(q: &mut DriverQueue<64>, mem: &'static OwnedMemory, bufs: &[Buf]) -> Token {
    let r: Vec<_> = bufs
        .iter()
        .filter_map(|b| match *b {
            Buf::R(a, l) => Some((GuestAddress(a), l)),
            Buf::W(..) => None,
        })
        .collect();
    let w: Vec<_> = bufs
        .iter()
        .filter_map(|b| match *b {
            Buf::W(a, l) => Some((GuestAddress(a), l)),
            Buf::R(..) => None,
        })
        .collect();
    let t = q.add(mem, &r, &w).unwrap();
    q.publish(mem).unwrap();
    t
}
