//! The network driver against a hostile device (§5.1.6.4, §2.7.8): a used
//! length shorter than the header, `num_buffers` 0, beyond what was used
//! or beyond the queue, a used length beyond the buffer, a buffer used
//! twice. Each is an error (counted, or the queue broken), never a panic,
//! and after a dropped frame the next good frame is received.

mod common;

use common::{Bus, Env, FakeDevice, Queues};
use guest_driver::error::Error;
use guest_driver::net::{Net, NetError, NetOptions, RxDrop};
use virtio_core::features::{NetFeatures, TransportFeatures};
use virtio_core::memory::RegionMemory;
use virtio_core::net::{HDR_LEN, NetHdr};
use virtio_core::split::{DriverError as QueueError, QueueLayout};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Good,
    Short,
    NumBuffers(u16),
    TooLong,
    Twice,
}

struct FakeNet {
    q: Queues,
    offered: u64,
    /// Frames to deliver, each with how to lie about it.
    inject: Vec<(Vec<u8>, Mode)>,
}

impl FakeNet {
    fn new(mem: RegionMemory<1>, mrg: bool) -> FakeNet {
        let mut offered = TransportFeatures::RING_EVENT_IDX.bits();
        if mrg {
            offered |= NetFeatures::MRG_RXBUF.bits();
        }
        FakeNet {
            q: Queues::new(mem),
            offered,
            inject: Vec::new(),
        }
    }

    fn serve(&mut self) -> bool {
        let mem = std::sync::Arc::clone(&self.q.mem);
        let mem = &*mem;
        let Some(Some(rx)) = self.q.queues.get_mut(0) else {
            return false;
        };
        while !self.inject.is_empty() {
            let Some(chain) = rx.pop(&mem).unwrap() else {
                break;
            };
            let (frame, mode) = self.inject.remove(0);
            let head = chain.head();
            let (_, mut w) = chain.reader_writer::<4>().unwrap();
            let cap = w.available() as u32;
            let nb = match mode {
                Mode::NumBuffers(n) => n,
                _ => 1,
            };
            let hdr = NetHdr {
                num_buffers: nb,
                ..NetHdr::default()
            };
            w.write_all(&hdr.to_bytes()).unwrap();
            w.write_all(&frame).unwrap();
            let len = (HDR_LEN + frame.len()) as u32;
            match mode {
                Mode::Good | Mode::NumBuffers(_) => rx.add_used(&mem, head, len).unwrap(),
                Mode::Short => rx.add_used(&mem, head, 5).unwrap(),
                Mode::TooLong => rx.add_used(&mem, head, cap + 1).unwrap(),
                Mode::Twice => {
                    rx.add_used(&mem, head, len).unwrap();
                    rx.add_used(&mem, head, len).unwrap();
                }
            }
        }
        // Transmit: take everything.
        if let Some(Some(tx)) = self.q.queues.get_mut(1) {
            while let Some(c) = tx.pop(&mem).unwrap() {
                tx.add_used(&mem, c.head(), 0).unwrap();
            }
        }
        let a = self.q.finish(0);
        self.q.finish(1) || a
    }
}

impl FakeDevice for FakeNet {
    fn device_id(&self) -> u32 {
        1
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max(&self, _q: u16) -> u16 {
        16
    }
    fn start(
        &mut self,
        features: u64,
        layouts: &[Option<QueueLayout>],
    ) -> Result<(), &'static str> {
        self.q.start(features, layouts)
    }
    fn stop(&mut self) {
        self.q.queues.clear();
    }
    fn notified(&mut self, _queue: u16) -> bool {
        self.serve()
    }
    fn work(&mut self) -> bool {
        self.serve()
    }
}

fn frame(seed: u8) -> Vec<u8> {
    (0..60u8).map(|i| i.wrapping_add(seed)).collect()
}

fn opts(mrg: bool) -> NetOptions {
    NetOptions {
        mrg_rxbuf: mrg,
        rx_buffers: 16,
        tx_buffers: 4,
        ..NetOptions::default()
    }
}

#[test]
fn net_hostile_short_used_length_is_dropped_and_counted_5_1_6_4() {
    for mrg in [false, true] {
        let env = Env::new();
        let bus = Bus::new(FakeNet::new(env.memory(), mrg));
        let mut net = Net::new(&env.hal, &bus, opts(mrg)).unwrap();
        bus.with(|d| {
            d.inject.push((frame(1), Mode::Short));
            d.inject.push((frame(2), Mode::Good));
        });
        bus.work();
        assert_eq!(
            net.receive().err(),
            Some(NetError::Malformed(RxDrop::Short { len: 5 }))
        );
        assert_eq!(net.receive().unwrap().unwrap().bytes(), &frame(2)[..]);
        assert_eq!(net.stats().rx_drop_short, 1);
    }
}

#[test]
fn net_hostile_num_buffers_zero_or_too_big_5_1_6_4() {
    for nb in [0u16, 3, 1000] {
        let env = Env::new();
        let bus = Bus::new(FakeNet::new(env.memory(), true));
        let mut net = Net::new(&env.hal, &bus, opts(true)).unwrap();
        bus.with(|d| {
            d.inject.push((frame(1), Mode::NumBuffers(nb)));
        });
        bus.work();
        assert_eq!(
            net.receive().err(),
            Some(NetError::Malformed(RxDrop::NumBuffers { num_buffers: nb })),
            "num_buffers {nb}"
        );
        assert_eq!(net.stats().rx_drop_num_buffers, 1);
        // The next frame arrives whole.
        bus.with(|d| d.inject.push((frame(2), Mode::Good)));
        net.flush().unwrap();
        bus.work();
        assert_eq!(net.receive().unwrap().unwrap().bytes(), &frame(2)[..]);
    }
    // Without MRG_RXBUF num_buffers is not looked at.
    let env = Env::new();
    let bus = Bus::new(FakeNet::new(env.memory(), false));
    let mut net = Net::new(&env.hal, &bus, opts(false)).unwrap();
    bus.with(|d| d.inject.push((frame(3), Mode::NumBuffers(0))));
    bus.work();
    assert_eq!(net.receive().unwrap().unwrap().bytes(), &frame(3)[..]);
}

#[test]
fn net_hostile_used_length_beyond_the_buffer_breaks_the_queue_2_7_8() {
    let env = Env::new();
    let bus = Bus::new(FakeNet::new(env.memory(), false));
    let mut net = Net::new(&env.hal, &bus, opts(false)).unwrap();
    bus.with(|d| d.inject.push((frame(1), Mode::TooLong)));
    bus.work();
    let e = net.receive().err().unwrap();
    assert!(
        matches!(
            e,
            NetError::Driver(Error::Queue {
                queue: 0,
                err: QueueError::UsedLenTooLarge { .. }
            })
        ),
        "{e:?}"
    );
    // Broken stays broken, without panicking.
    assert!(net.receive().is_err());
    assert!(e.to_string().contains("queue"));
}

#[test]
fn net_hostile_buffer_used_twice_2_7_8() {
    let env = Env::new();
    let bus = Bus::new(FakeNet::new(env.memory(), false));
    let mut net = Net::new(&env.hal, &bus, opts(false)).unwrap();
    bus.with(|d| d.inject.push((frame(1), Mode::Twice)));
    bus.work();
    // The first completion is a frame; the second is refused.
    assert_eq!(net.receive().unwrap().unwrap().bytes(), &frame(1)[..]);
    let e = net.receive().err().unwrap();
    assert!(
        matches!(
            e,
            NetError::Driver(Error::Queue {
                err: QueueError::UsedIdTwice { .. },
                ..
            })
        ),
        "{e:?}"
    );
}
