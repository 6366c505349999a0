//! `VirtioDevice::queue_position` / `set_queue_position`, per device: a
//! queue is stopped with a chain the device popped but did not complete,
//! the reported position is rewound past it, the device is activated again
//! and started there (vhost-user `GET_VRING_BASE` / `SET_VRING_BASE`), and
//! the held chain is served exactly once, nothing lost, nothing twice; the
//! used ring goes on at the same slot (§2.7.8: the used index counts every
//! chain returned).

mod blk_support;
mod net_support;
mod queue_rig;

use std::sync::{Arc, Mutex};

use backends::chardev::{Chardev, ChardevError, RingBuf};
use backends::rng::{RngBackend, RngError};
use virtio_core::GuestMemory;
use virtio_core::blk::req;
use virtio_core::features::NetFeatures;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::testing::OwnedMemory;
use virtio_devices::console::Console;
use virtio_devices::device::{DeviceError, QueueConfig, VirtioDevice};
use virtio_devices::rng::Rng;

use queue_rig::{Buf, layout};

/// Resets `dev`, activates it again over the rig's rings (as a vhost-user
/// backend does when its rings start again) and starts every queue at
/// `positions[i]`.
fn restart<D: VirtioDevice>(dev: &mut D, features: u64, positions: &[u16]) {
    dev.reset();
    let qc = (0..dev.queue_max_sizes().len() as u64)
        .map(|i| QueueConfig {
            layout: Some(layout(i)),
        })
        .collect();
    dev.activate(features, qc).unwrap();
    for (i, &p) in positions.iter().enumerate() {
        dev.set_queue_position(i as u16, p).unwrap();
    }
}

fn used_idx(mem: &OwnedMemory, q: u64) -> u16 {
    mem.load_u16_acquire(layout(q).used_idx()).unwrap()
}

fn completions(q: &mut DriverQueue<64>, mem: &'static OwnedMemory) -> Vec<(u16, u32)> {
    let mut out = vec![];
    while let Some(u) = q.pop_used(mem).unwrap() {
        out.push((u.token.head(), u.len));
    }
    out
}

// ---- rng ----

/// An entropy source that hands out at most `budget` more bytes.
#[derive(Clone)]
struct Budget(Arc<Mutex<usize>>);

impl RngBackend for Budget {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        let mut b = self.0.lock().unwrap();
        let n = buf.len().min(*b);
        buf[..n].fill(0xa5);
        *b -= n;
        Ok(n)
    }
}

#[test]
fn rng_position_rewinds_past_the_chain_waiting_for_entropy() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let budget = Budget(Arc::new(Mutex::new(3 * 8)));
    let mut dev = Rng::new(budget.clone(), mem);
    let features = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, features);
    let mut heads = vec![];
    for i in 0..4u64 {
        heads.push(queue_rig::add(&mut drv[0], mem, &[Buf::W(0x8_0000 + i * 0x100, 8)]).head());
    }
    assert_eq!(dev.queue_notify(0).unwrap().completed, 3);
    assert_eq!(dev.pending(), 1);
    let got = completions(&mut drv[0], mem);
    assert_eq!(got, heads[..3].iter().map(|&h| (h, 8)).collect::<Vec<_>>());
    // Three completed, the fourth popped and waiting: position 3, which
    // is also the used index (every chain before it completed).
    assert_eq!(dev.queue_position(0), Some(3));
    assert_eq!(used_idx(mem, 0), 3);
    assert_eq!(dev.queue_position(1), None);

    *budget.0.lock().unwrap() = 1 << 20;
    restart(&mut dev, features, &[3]);
    assert_eq!(dev.pending(), 0);
    let h5 = queue_rig::add(&mut drv[0], mem, &[Buf::W(0x9_0000, 8)]).head();
    assert_eq!(dev.queue_notify(0).unwrap().completed, 2);
    // The held chain once, at used slot 3, then the new one at slot 4.
    assert_eq!(completions(&mut drv[0], mem), vec![(heads[3], 8), (h5, 8)]);
    assert_eq!(used_idx(mem, 0), 5);
    assert_eq!(dev.queue_position(0), Some(5));
    assert_eq!(dev.stats().completed, 5);
}

#[test]
fn positions_are_refused_before_activation() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let mut dev = Rng::new(Budget(Arc::new(Mutex::new(0))), mem);
    assert_eq!(dev.queue_position(0), None);
    assert_eq!(
        dev.set_queue_position(0, 5),
        Err(DeviceError::PositionUnsupported { queue: 0 })
    );
}

// ---- blk ----

#[test]
fn blk_position_is_the_next_available_index_and_restarts_there() {
    let mut r = blk_support::rig(blk_support::MemDisk::new(8));
    let features = r.dev.device_features();
    let mut toks = vec![];
    for s in 0..3u64 {
        let d = r.alloc(512);
        toks.push(r.request(req::IN, s, &[(d, 512)], false));
    }
    r.notify(0);
    assert_eq!(r.completions().len(), 3);
    assert_eq!(r.dev.queue_position(0), Some(3));
    restart(&mut r.dev, features, &[3]);
    let d = r.alloc(512);
    let (t, status) = r.request(req::IN, 1, &[(d, 512)], false);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 513)]);
    assert_eq!(r.status(status), 0);
    assert_eq!(used_idx(r.mem, 0), 4);
    assert_eq!(r.dev.queue_position(0), Some(4));
}

// ---- console ----

/// A chardev taking at most `limit` bytes per write.
#[derive(Clone)]
struct Slow {
    ring: Arc<Mutex<RingBuf<65536>>>,
    limit: Arc<Mutex<usize>>,
}

impl Chardev for Slow {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let mut limit = self.limit.lock().unwrap();
        let n = buf.len().min(*limit);
        *limit -= n;
        self.ring.lock().unwrap().write(&buf[..n])
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        self.ring.lock().unwrap().read(buf)
    }
}

#[test]
fn console_position_rewinds_past_a_partly_written_transmit_chain() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)));
    let chr = Slow {
        ring: Arc::new(Mutex::new(RingBuf::new())),
        limit: Arc::new(Mutex::new(7)),
    };
    let mut dev = Console::new(mem, Box::new(chr.clone()));
    let features = dev.device_features();
    let mut drv = queue_rig::activate(&mut dev, mem, features);
    mem.write(GuestAddress(0x8_0000), b"hello").unwrap();
    mem.write(GuestAddress(0x8_1000), b"world").unwrap();
    let a = queue_rig::add(&mut drv[1], mem, &[Buf::R(0x8_0000, 5)]).head();
    let b = queue_rig::add(&mut drv[1], mem, &[Buf::R(0x8_1000, 5)]).head();
    dev.queue_notify(1).unwrap();
    // "hello" out, "wo" of "world" out, the chardev full.
    assert_eq!(completions(&mut drv[1], mem), vec![(a, 0)]);
    assert_eq!(dev.queue_position(1), Some(1));
    assert_eq!(dev.queue_position(0), Some(0));

    *chr.limit.lock().unwrap() = usize::MAX;
    restart(&mut dev, features, &[0, 1]);
    dev.queue_notify(1).unwrap();
    assert_eq!(completions(&mut drv[1], mem), vec![(b, 0)]);
    assert_eq!(used_idx(mem, 1), 2);
    // At least once: the bytes of the held chain that were out go again.
    let mut out = vec![0u8; 64];
    let n = chr.ring.lock().unwrap().take_output(&mut out);
    assert_eq!(&out[..n], b"hellowoworld");
}

// ---- net ----

#[test]
fn net_position_rewinds_past_a_frame_the_backend_refused() {
    let wire = net_support::Wire::new().with(|s| s.busy = true);
    let mut r = net_support::rig(wire);
    let features = r.features;
    let f1 = net_support::frame(net_support::MAC, 60, 1);
    let t1 = r.tx(&[0u8; 12], &f1);
    r.notify(1);
    assert!(r.dev.tx_paused());
    assert!(r.completions_on(1).is_empty());
    assert_eq!(r.dev.queue_position(1), Some(0));

    r.wire.state().busy = false;
    let n = r.dev.queue_max_sizes().len();
    restart(&mut r.dev, features, &vec![0; n]);
    // A restarted device reads again what it had popped: a new session.
    r.fetch.new_window();
    assert!(!r.dev.tx_paused());
    let f2 = net_support::frame(net_support::MAC, 60, 2);
    let t2 = r.tx(&[0u8; 12], &f2);
    r.notify(1);
    assert_eq!(r.completions_on(1), vec![(t1, 0), (t2, 0)]);
    assert_eq!(r.wire.sent(), vec![f1, f2], "each frame sent once");
    assert_eq!(r.dev.queue_position(1), Some(2));
}

#[test]
fn net_position_rewinds_past_receive_buffers_held_for_a_merged_frame() {
    let mut r = net_support::rig(net_support::Wire::new());
    let features = r.features;
    assert!(features & NetFeatures::MRG_RXBUF.bits() != 0);
    // One 600-byte buffer for a 1000-byte frame: held, waiting for more.
    let (b1, _) = r.rx_buf(600);
    r.wire.push(net_support::frame(net_support::MAC, 1000, 3));
    r.dev.backend_ready().unwrap();
    assert!(r.completions_on(0).is_empty());
    assert_eq!(r.dev.queue_position(0), Some(0));

    let n = r.dev.queue_max_sizes().len();
    restart(&mut r.dev, features, &vec![0; n]);
    // A restarted device reads again what it had popped: a new session.
    r.fetch.new_window();
    let (b2, _) = r.rx_buf(600);
    let f = net_support::frame(net_support::MAC, 1000, 4);
    r.wire.push(f);
    r.notify(0);
    let got = r.completions_on(0);
    let heads: Vec<_> = got.iter().map(|&(t, _)| t).collect();
    assert_eq!(heads, vec![b1, b2], "the held buffer popped again, once");
    assert_eq!(
        got.iter().map(|&(_, l)| l as usize).sum::<usize>(),
        1000 + 12
    );
    assert_eq!(r.dev.queue_position(0), Some(2));
}
