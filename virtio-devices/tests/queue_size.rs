//! Queue sizes every device offers (§2.7: any power of two up to 32768).
//!
//! By default each device offers [`DEFAULT_QUEUE_SIZE`] (1024), what QEMU's
//! virtio-mmio transport reports as `QueueNumMax` whatever the device and
//! what Linux then asks for; a frontend that passes the driver's choice
//! through (QEMU over vhost-user) must find it accepted. A driver may pick
//! any smaller power of two, and a device option sets another maximum.

use backends::block::memory::MemoryDisk;
use backends::chardev::Null;
use backends::net::loopback::Loopback;
use backends::rng::Deterministic;
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::testing::OwnedMemory;
use virtio_devices::DEFAULT_QUEUE_SIZE;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::Console;
use virtio_devices::device::{QueueConfig, VirtioDevice};
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;
use virtio_devices::transport::MmioTransport;

fn memory() -> &'static OwnedMemory {
    Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10_0000)))
}

#[test]
fn every_device_offers_1024_entries_by_default() {
    assert_eq!(DEFAULT_QUEUE_SIZE, 1024);
    let mem = memory();
    let rng = Rng::new(Deterministic::new(1), mem);
    let console = Console::new(mem, Box::new(Null));
    let blk = Blk::new(MemoryDisk::new(8), mem, BlkConfig::default()).unwrap();
    let net = Net::new(Loopback::new(8, 1 << 16), mem, NetConfig::default()).unwrap();
    let devices: [(&str, &dyn VirtioDevice); 4] = [
        ("rng", &rng),
        ("console", &console),
        ("blk", &blk),
        ("net", &net),
    ];
    for (name, dev) in devices {
        let sizes = dev.queue_max_sizes();
        assert!(!sizes.is_empty(), "{name}");
        assert!(sizes.iter().all(|&s| s == 1024), "{name}: {sizes:?}");
    }
}

#[test]
fn section_2_7_any_power_of_two_up_to_32768_can_be_the_maximum() {
    let mem = memory();
    for size in [1u32, 2, 256, 4096, 32768] {
        let q = QueueSize::new(size).unwrap();
        let rng = Rng::new(Deterministic::new(1), mem).with_queue_size(q);
        assert_eq!(rng.queue_max_sizes(), &[q.get()]);
        let mut console = Console::new(mem, Box::new(Null));
        console.set_queue_size(q);
        assert!(console.queue_max_sizes().iter().all(|&s| s == q.get()));
        let cfg = BlkConfig {
            queue_size: q.get(),
            ..BlkConfig::default()
        };
        let blk = Blk::new(MemoryDisk::new(8), mem, cfg).unwrap();
        assert_eq!(blk.queue_max_sizes(), &[q.get()]);
        let cfg = NetConfig {
            queue_size: q.get(),
            ..NetConfig::default()
        };
        let net = Net::new(Loopback::new(8, 1 << 16), mem, cfg).unwrap();
        assert!(net.queue_max_sizes().iter().all(|&s| s == q.get()));
    }
}

/// §4.2.2: the register file reports the device's maximum as
/// `QueueNumMax` (offset 0x034) for the selected queue.
#[test]
fn section_4_2_2_queue_num_max_reads_the_default() {
    let mem = memory();
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(Rng::new(Deterministic::new(1), mem)))
        .unwrap();
    let mut v = [0u8; 4];
    regs.read(0x034, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 1024);
}

/// A driver that takes the whole 1024 entries (as Linux does behind QEMU's
/// virtio-mmio) is served: the ring wraps several times, every buffer
/// comes back full.
#[test]
fn a_driver_that_takes_1024_entries_is_served_through_wraps() {
    let mem = memory();
    let size = QueueSize::new(1024).unwrap();
    let layout = QueueLayout::new(
        size,
        GuestAddress(0x1000),
        GuestAddress(0x5000),
        GuestAddress(0x6000),
    )
    .unwrap();
    let mut drv = DriverQueue::<1024>::new(layout, true, None).unwrap();
    drv.init(mem).unwrap();
    let mut dev = Rng::new(Deterministic::new(3), mem);
    let features = dev.device_features();
    dev.activate(
        features,
        vec![QueueConfig {
            layout: Some(layout),
        }],
    )
    .unwrap();
    let buf = GuestAddress(0x8_0000);
    let mut got = 0u64;
    for round in 0..3u64 {
        for i in 0..1024u64 {
            drv.add(mem, &[], &[(GuestAddress(buf.0 + i * 16), 16)])
                .unwrap();
        }
        drv.publish(mem).unwrap();
        // One notification; the device stops at its work budget and is
        // called again while it says so, as a transport does.
        let mut completed = 0;
        loop {
            let served = dev.queue_notify(0).unwrap();
            assert!(served.completed <= virtio_devices::device::QUEUE_BUDGET);
            completed += served.completed;
            if !served.again {
                break;
            }
        }
        assert_eq!(completed, 1024, "round {round}");
        while let Some(used) = drv.pop_used(mem).unwrap() {
            assert_eq!(used.len, 16);
            got += 1;
        }
    }
    assert_eq!(got, 3 * 1024);
    let mut b = [0u8; 16];
    mem.read(GuestAddress(buf.0 + 1023 * 16), &mut b).unwrap();
    assert_ne!(b, [0; 16]);
}
