//! Reading what the device wrote into a slot while the device, another
//! agent, may write the slot again (issue 16, finding 17): a device that
//! keeps the rules does not write a buffer it used (§2.7.8, §2.7.14), but
//! the driver trusts nothing the device does, so it never holds a Rust
//! reference into such memory; it reads through raw views and copies. A
//! "device thread" writes the slot with atomic byte stores while the
//! driver reads it; under Miri a `&[u8]` over the slot is a data race (or
//! an aliasing violation), the views and copies are not.
//!
//! These tests run under Miri in CI (`.ci/test`, the guest-driver step).

mod common;
mod net_support;

use std::sync::atomic::{AtomicU8, Ordering};

use backends::net::loopback::Loopback;
use common::{Bus, Env, FakeRng, stream};
use guest_driver::net::{Net, NetOptions};
use guest_driver::queue::DmaQueue;
use guest_driver::transport::{Completion, Transport};
use net_support::{BCAST, DevBus, frame};
use virtio_core::features::DeviceType;
use virtio_core::memory::{GuestAddress, GuestMemory};
use virtio_core::split::{Descriptor, QueueLayout, UsedElem};
use virtio_devices::net::NetConfig;

/// What the device thread writes.
const SCRIBBLE: u8 = 0xa5;

/// The host address of a buffer, for the device thread.
#[derive(Clone, Copy)]
struct DevicePtr(*mut u8);

// SAFETY: the pointer is into an `Env`'s memory, which outlives the scoped
// threads that use it; the device thread only stores through it with
// atomics.
unsafe impl Send for DevicePtr {}

/// The device thread: writes `SCRIBBLE` over `len` bytes at `p`, `rounds`
/// times, with relaxed atomic byte stores (the device is not Rust code;
/// atomics are how a test thread stands for it without itself racing).
fn scribble(p: DevicePtr, len: usize, rounds: usize) {
    for _ in 0..rounds {
        for i in 0..len {
            // SAFETY: `p` + `len` lies in the test memory (see `Env::host`);
            // every access of the other thread to it is atomic or a raw
            // copy ordered before this thread started.
            unsafe { AtomicU8::from_ptr(p.0.add(i)) }.store(SCRIBBLE, Ordering::Relaxed);
        }
    }
}

/// The buffer the device used as the `n`th used element of the queue at
/// `layout`: its guest address and length, as the device found them in
/// the descriptor table (§2.7.5, §2.7.8).
fn used_buffer(mem: &impl GuestMemory, layout: &QueueLayout, n: u16) -> (GuestAddress, u32) {
    let used: UsedElem = mem.read_obj(layout.used_slot(n)).unwrap();
    let desc: Descriptor = mem.read_obj(layout.desc(used.id() as u16)).unwrap();
    (desc.addr(), desc.len())
}

#[test]
fn held_slot_read_while_the_device_writes_it_2_7_14() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let mut t = Transport::probe(&bus, DeviceType::Rng).unwrap();
    t.begin_init(0).unwrap();
    let mut q = DmaQueue::<4>::new(&env.hal, &mut t, 0, 64, Completion::Polling).unwrap();
    t.finish_init().unwrap();
    assert!(q.push_writable().unwrap());
    q.kick(&t).unwrap();
    let c = q.pop().unwrap().unwrap();
    assert_eq!(c.len, 64);
    let (addr, len) = used_buffer(&env.memory(), &q.layout(), 0);
    let dev = DevicePtr(env.host(addr, u64::from(len)));
    let got = std::thread::scope(|s| {
        s.spawn(move || scribble(dev, len as usize, 2));
        let view = q.held_bytes(c.slot, c.len).unwrap();
        let mut copy = vec![0u8; view.len()];
        assert_eq!(view.copy_to(&mut copy), copy.len());
        // A byte at a time, and a copy by `read_slot`, as well.
        let _ = view.get(3);
        let mut again = [0u8; 16];
        q.read_slot(c.slot, 8, &mut again).unwrap();
        copy
    });
    for (i, &b) in got.iter().enumerate() {
        assert!(b == stream(i as u64) || b == SCRIBBLE, "byte {i}: {b:#x}");
    }
}

fn small_net_options() -> NetOptions {
    NetOptions {
        rx_buffers: 2,
        tx_buffers: 2,
        ..NetOptions::default()
    }
}

#[test]
fn received_frame_read_while_the_device_writes_its_buffer_5_1_6_4() {
    let env = Env::new();
    let bus = DevBus::new(
        Loopback::new(8, 1 << 16),
        env.memory(),
        NetConfig::default(),
    );
    let mut net = Net::new(&env.hal, &bus, small_net_options()).unwrap();
    let f = frame(BCAST, net.mac(), 64, 3);
    net.transmit(&f).unwrap();
    net.flush().unwrap();
    let rx = bus.regs.borrow().queue(0).unwrap().layout().unwrap();
    let (addr, len) = used_buffer(&env.memory(), &rx, 0);
    let dev = DevicePtr(env.host(addr, u64::from(len)));
    let got = {
        let frame = net.receive().unwrap().unwrap();
        std::thread::scope(|s| {
            s.spawn(move || scribble(dev, len as usize, 2));
            let view = frame.bytes();
            let mut copy = vec![0u8; view.len()];
            view.copy_to(&mut copy);
            copy
        })
    };
    assert_eq!(got.len(), f.len());
    for (i, (&b, &want)) in got.iter().zip(&f).enumerate() {
        assert!(b == want || b == SCRIBBLE, "byte {i}: {b:#x}");
    }
}

/// The smoltcp adapter hands smoltcp a `&[u8]`: it must be a copy the
/// device cannot change, even while smoltcp still looks at it.
#[cfg(feature = "smoltcp")]
#[test]
fn smoltcp_frame_is_not_changed_by_the_device_5_1_6_4() {
    use guest_driver::net::smol::SmolNet;
    use smoltcp::phy::{Device, RxToken};
    use smoltcp::time::Instant;

    let env = Env::new();
    let bus = DevBus::new(
        Loopback::new(8, 1 << 16),
        env.memory(),
        NetConfig::default(),
    );
    let net = Net::new(&env.hal, &bus, small_net_options()).unwrap();
    let f = frame(BCAST, net.mac(), 64, 5);
    let mut dev = SmolNet::new(net);
    dev.net().transmit(&f).unwrap();
    dev.net().flush().unwrap();
    let rx = bus.regs.borrow().queue(0).unwrap().layout().unwrap();
    let (addr, len) = used_buffer(&env.memory(), &rx, 0);
    let slot = DevicePtr(env.host(addr, u64::from(len)));
    let (token, _tx) = dev.receive(Instant::from_millis(0)).unwrap();
    let seen = token.consume(|frame| {
        let before = frame.to_vec();
        // The device writes the buffer while smoltcp holds the frame; the
        // thread is joined, so this is no data race, only a write under a
        // live shared reference if the frame were the buffer itself.
        std::thread::scope(|s| {
            s.spawn(move || scribble(slot, len as usize, 1));
        });
        (before, frame.to_vec())
    });
    assert_eq!(seen.0, f);
    assert_eq!(seen.1, f, "the device changed the frame under smoltcp");
}
