//! A guest cannot grow the host's heap through the multiport console's
//! control queue (§5.3.6.2): DEVICE_READY and PORT_READY repeated 100,000
//! times with no control receive buffer posted leave the live heap where
//! it was, and the driver, once it posts buffers, gets each message once.
//! A counting global allocator, alone in this test binary.

mod alloc_counter;

use virtio_core::GuestMemory;
use virtio_core::features::TransportFeatures;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::testing::OwnedMemory;
use virtio_devices::console::{Console, Control, Port, event};
use virtio_devices::device::{QueueConfig, VirtioDevice};

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

/// Control transmitq and receiveq (§5.3.2).
const CTRL_TX: usize = 3;
const CTRL_RX: usize = 2;

#[test]
fn repeated_ready_messages_without_control_buffers_do_not_grow_the_heap_5_3_6_2() {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x40_0000)));
    let ports = vec![
        Port::new(Box::new(backends::chardev::Null), true, None),
        Port::new(
            Box::new(backends::chardev::Null),
            false,
            Some("org.test.p1".into()),
        ),
    ];
    let mut dev = Console::with_ports(mem, ports, true);
    let mut qs = Vec::new();
    let mut configs = Vec::new();
    for i in 0..dev.queue_max_sizes().len() as u64 {
        let base = 0x1_0000 + i * 0x1_0000;
        let layout = QueueLayout::new(
            QueueSize::new(16).unwrap(),
            GuestAddress(base),
            GuestAddress(base + 0x1000),
            GuestAddress(base + 0x2000),
        )
        .unwrap();
        let mut q = DriverQueue::<16>::new(layout, false, None).unwrap();
        q.init(mem).unwrap();
        qs.push(q);
        configs.push(QueueConfig {
            layout: Some(layout),
        });
    }
    let features = dev.device_features() & !TransportFeatures::RING_EVENT_IDX.bits();
    dev.activate(features, configs).unwrap();

    // The three messages the hostile driver repeats, each in its own buffer.
    let msgs = [
        Control::new(0, event::DEVICE_READY, 1),
        Control::new(0, event::PORT_READY, 1),
        Control::new(1, event::PORT_READY, 1),
    ];
    let bufs: Vec<GuestAddress> = (0..3)
        .map(|i| GuestAddress(0x20_0000 + i * 0x100))
        .collect();
    for (m, &a) in msgs.iter().zip(&bufs) {
        mem.write(a, &m.to_bytes()).unwrap();
    }
    let mut send = |dev: &mut Console<&OwnedMemory>, i: usize| {
        let q = &mut qs[CTRL_TX];
        q.add(mem, &[(bufs[i % 3], 8)], &[]).unwrap();
        q.publish(mem).unwrap();
        dev.queue_notify(CTRL_TX as u16).unwrap();
        while q.pop_used(mem).unwrap().is_some() {}
    };
    // Warm up: whatever the device keeps for these messages is in place.
    for i in 0..300 {
        send(&mut dev, i);
    }
    let before = alloc_counter::live_bytes();
    for i in 0..100_000 {
        send(&mut dev, i);
    }
    let grown = alloc_counter::live_bytes().saturating_sub(before);
    assert!(
        grown < 4096,
        "100,000 control messages grew the live heap by {grown} bytes"
    );

    // Now the driver posts control receive buffers: each message once.
    let mut got = Vec::new();
    for round in 0..4u64 {
        let q = &mut qs[CTRL_RX];
        let mut posted = Vec::new();
        for k in 0..4u64 {
            let a = GuestAddress(0x30_0000 + (round * 4 + k) * 0x100);
            let t = q.add(mem, &[], &[(a, 64)]).unwrap();
            posted.push((t, a));
        }
        q.publish(mem).unwrap();
        dev.queue_notify(CTRL_RX as u16).unwrap();
        while let Some(u) = q.pop_used(mem).unwrap() {
            let a = posted.iter().find(|(t, _)| *t == u.token).unwrap().1;
            let m: Control = mem.read_obj(a).unwrap();
            got.push((m.id(), m.event()));
        }
    }
    let mut want = vec![
        (0, event::DEVICE_ADD),
        (1, event::DEVICE_ADD),
        (0, event::CONSOLE_PORT),
        (0, event::PORT_OPEN),
        (1, event::PORT_NAME),
        (1, event::PORT_OPEN),
    ];
    got.sort();
    want.sort();
    assert_eq!(got, want, "each message once");
}
