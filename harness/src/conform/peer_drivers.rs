//! Driver-side checks of a driver nobody here wrote: the `virtio-drivers`
//! crate (rcore-os) drives our devices in this process through
//! `virtio_core::testing::virtio_drivers::DeviceTransport`, with the
//! register watch on every access and the ring watch inside the device.
//!
//! What is virtio-drivers' own and what is the adapter's: the rings, the
//! order of its transport calls (status, features, queue set-up,
//! notifications) and the features it accepts are the driver's; how each
//! call becomes register accesses (widths, selector writes, the probe,
//! the read-back after QueueReady = 0, the interrupt acknowledgement) is
//! the adapter's, so those statements are reported not observable on
//! this path.

use std::cell::RefCell;
use std::rc::Rc;

use conform::driver::DriverWatch;
use conform::driver::rings::RingWatch;
use conform::{Outcome, Record};
use virtio_core::memory::RegionMemory;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::mmio::regs;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_devices::device::VirtioDevice;
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};

use super::drivers::{CleanupHandle, Provoke, PublishHandle, WatchedDevice};
use super::report::Run;
use super::targets::{Device, Kind, our_device};

/// The target's name in reports.
pub const VIRTIO_DRIVERS: &str = "virtio-drivers 0.13, in process";

/// Statements about how each transport call is made of register
/// accesses: the adapter's on this path, not virtio-drivers'.
const ADAPTER_STATEMENTS: &[&str] = &[
    "driver:mmio/mmio-device-register-layout#1",
    "driver:mmio/mmio-device-register-layout#2",
    "driver:mmio/mmio-device-register-layout#3",
    "driver:mmio/mmio-device-register-layout#7",
    "driver:mmio/mmio-device-register-layout#8",
    "driver:mmio/mmio-device-register-layout#11",
    "driver:mmio/mmio-device-register-layout#13",
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#1",
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#2",
    "driver:mmio/mmio-specific-initialization-and-device-operation/device-initialization#3",
    "driver:mmio/mmio-specific-initialization-and-device-operation/notifications-from-the-device#1",
    "driver:mmio/mmio-specific-initialization-and-device-operation/notifications-from-the-device#3",
];

type Mem = &'static RegionMemory<1>;
type Observed<D> = WatchedDevice<D, Mem, Box<dyn FnMut(&RingWatch)>>;
type Transport<D> = DeviceTransport<MmioTransport<Observed<D>>>;

fn failed(kind: Kind, e: String) -> Run {
    failed_as(kind.name().into(), e)
}

fn failed_as(device: String, e: String) -> Run {
    Run {
        target: VIRTIO_DRIVERS.into(),
        device,
        records: vec![],
        error: Some(e),
    }
}

/// Runs `workload` (virtio-drivers' driver for `kind`) against `dev`
/// under both watches.
fn watched<D: VirtioDevice + 'static>(
    kind: Kind,
    dev: D,
    workload: fn(Transport<D>) -> Result<(), String>,
    provoke: Provoke,
) -> Run {
    let rings: Rc<RefCell<Vec<Record>>> = Rc::default();
    let sink = Rc::clone(&rings);
    let done: Box<dyn FnMut(&RingWatch)> = Box::new(move |w: &RingWatch| {
        sink.borrow_mut().extend(w.records());
    });
    let rewritten = std::sync::Arc::default();
    let cleanup = CleanupHandle::default();
    let publish = PublishHandle::default();
    let dev: Observed<D> = provoke.apply(
        WatchedDevice::new(dev, TestHal::memory(), done)
            .with_notifications(provoke == Provoke::Nothing)
            .watching_cleanup(cleanup.clone())
            .with_publish_order(publish.clone()),
        &rewritten,
    );
    let device_type = Some(dev.device_type());
    let max: Vec<u16> = dev.queue_max_sizes().to_vec();
    let config_len = dev.config_len();
    let mut regs = match MmioRegisters::<_, 8>::new(MmioTransport::new(dev)) {
        Ok(r) => r,
        Err(e) => return failed_as(provoke.device_name(kind), e.to_string()),
    };
    let mut offered = 0u64;
    for sel in [0u32, 1] {
        let _ = regs.write32(regs::DEVICE_FEATURES_SEL, sel);
        offered |= u64::from(regs.read32(regs::DEVICE_FEATURES).unwrap_or(0)) << (32 * sel);
    }
    let _ = regs.write32(regs::DEVICE_FEATURES_SEL, 0);
    let watch = Rc::new(RefCell::new(provoke.watch(DriverWatch::new(
        device_type,
        offered,
        &max,
        config_len as u64,
    ))));
    let mut t = match DeviceTransport::new(regs) {
        Ok(t) => t.with_config_len(config_len),
        Err(e) => return failed(kind, e.to_string()),
    };
    let w = Rc::clone(&watch);
    t.set_access_hook(move |a| {
        let mut w = w.borrow_mut();
        if a.write {
            w.write(a.offset, a.size, a.value);
        } else {
            w.read(a.offset, a.size, a.value);
        }
    });
    let w = Rc::clone(&watch);
    t.set_hook(move |regs, outcome| {
        // The device acts on the write, then on what its backend has (a
        // loopback frame), as the monitor's event loop would; an
        // interrupt it raises is the driver's to handle.
        let mut irq = dispatch(regs, outcome);
        irq |= backend_ready(regs);
        if irq {
            w.borrow_mut().interrupt();
        }
    });
    // The driver, its transport and the device go when the workload ends;
    // the ring watch's session with them.
    /// Takes the removal hook off this thread however the workload ends.
    struct Unhook;
    impl Drop for Unhook {
        fn drop(&mut self) {
            TestHal::watch_removals(None);
        }
    }
    let hook = cleanup.clone();
    TestHal::watch_removals(Some(Box::new(move |addr, len| hook.removing(addr, len))));
    let unhook = Unhook;
    let result = workload(t);
    drop(unhook);
    let mut watch = watch.borrow_mut();
    watch.finish();
    let mut records = watch.records();
    records.extend(rings.borrow().iter().cloned());
    records.extend(cleanup.records());
    records.extend(publish.records());
    for r in records
        .iter_mut()
        .filter(|r| ADAPTER_STATEMENTS.contains(&r.statement))
    {
        r.outcome = Outcome::NotObservable(
            "the register accesses of each call are the adapter's (virtio_core::testing::virtio_drivers::DeviceTransport), not virtio-drivers'".into(),
        );
    }
    let error = result.err().map(|e| format!("the workload failed: {e}"));
    super::drivers::coped_with_spurious(&mut records, error.as_deref());
    if kind == Kind::Rng {
        records.extend(super::entropy::records());
    }
    records.extend(provoke.records(&rewritten, error.as_deref(), false));
    Run {
        target: VIRTIO_DRIVERS.into(),
        device: provoke.device_name(kind),
        records,
        error,
    }
}

fn e(err: virtio_drivers::Error) -> String {
    format!("{err:?}")
}

fn rng_workload<D: VirtioDevice + 'static>(t: Transport<D>) -> Result<(), String> {
    use virtio_drivers::device::rng::VirtIORng;
    let mut rng = VirtIORng::<TestHal, _>::new(t).map_err(e)?;
    let mut buf = [0u8; 64];
    let n = rng.request_entropy(&mut buf).map_err(e)?;
    super::entropy::note_output(&buf[..n.min(buf.len())]);
    rng.ack_interrupt();
    if n == 0 {
        return Err("no entropy".into());
    }
    Ok(())
}

fn blk_workload<D: VirtioDevice + 'static>(t: Transport<D>) -> Result<(), String> {
    use virtio_drivers::device::blk::VirtIOBlk;
    let mut blk = VirtIOBlk::<TestHal, _>::new(t).map_err(e)?;
    let data = vec![0x5au8; 4096];
    blk.write_blocks(8, &data).map_err(e)?;
    blk.ack_interrupt();
    blk.flush().map_err(e)?;
    blk.ack_interrupt();
    let mut back = vec![0u8; 4096];
    blk.read_blocks(8, &mut back).map_err(e)?;
    blk.ack_interrupt();
    let mut id = [0u8; 20];
    blk.device_id(&mut id).map_err(e)?;
    blk.ack_interrupt();
    if back != data {
        return Err("the data read back differs".into());
    }
    Ok(())
}

fn console_workload<D: VirtioDevice + 'static>(t: Transport<D>) -> Result<(), String> {
    use virtio_drivers::device::console::VirtIOConsole;
    let mut console = VirtIOConsole::<TestHal, _>::new(t).map_err(e)?;
    console.send_bytes(b"virtio-drivers\n").map_err(e)?;
    console.ack_interrupt().map_err(e)?;
    Ok(())
}

fn net_workload<D: VirtioDevice + 'static>(t: Transport<D>) -> Result<(), String> {
    use virtio_drivers::device::net::VirtIONet;
    let mut net = VirtIONet::<TestHal, _, 16>::new(t, 2048).map_err(e)?;
    // A broadcast frame from the NIC's address, as an OS sends it
    // (§5.1.4.2): the loopback backend sends it back.
    let mac = net.mac_address();
    let mut tx = net.new_tx_buffer(60);
    let frame = tx.packet_mut();
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    let sent = frame.to_vec();
    net.send(tx).map_err(e)?;
    net.ack_interrupt();
    for _ in 0..1000 {
        if net.can_recv() {
            let rx = net.receive().map_err(e)?;
            let same = rx.packet() == sent.as_slice();
            net.recycle_rx_buffer(rx).map_err(e)?;
            net.ack_interrupt();
            return if same {
                Ok(())
            } else {
                Err("the frame came back changed".into())
            };
        }
    }
    Err("the frame did not come back".into())
}

/// virtio-drivers' driver for `kind` against our device, watched.
pub fn virtio_drivers_in_process(kind: Kind) -> Run {
    match our_device(kind, &TestHal::memory()) {
        // Short used lengths: the driver's use of them is judged.
        Ok(Device::Rng(_)) => {
            let d =
                virtio_devices::rng::Rng::new(super::entropy::Trickle::new(), TestHal::memory());
            watched(kind, d, rng_workload, Provoke::Nothing)
        }
        Ok(Device::Blk(d)) => watched(kind, d, blk_workload, Provoke::Nothing),
        Ok(Device::Console(d)) => watched(kind, d, console_workload, Provoke::Nothing),
        Ok(Device::Net(d)) => watched(kind, d, net_workload, Provoke::Nothing),
        Ok(Device::Crypto(_)) => failed(kind, "virtio-drivers has no crypto driver".into()),
        Err(err) => failed(kind, err),
    }
}

/// virtio-drivers against each of our devices.
pub fn in_process() -> Vec<Run> {
    Kind::ALL
        .into_iter()
        .map(virtio_drivers_in_process)
        .collect()
}

/// virtio-drivers' initialisation against the entropy device, once per
/// provocation the device makes ([`Provoke::DEVICE`]: the register values
/// are our adapter's to read, not virtio-drivers').
pub fn provoked() -> Vec<Run> {
    Provoke::DEVICE
        .into_iter()
        .map(|p| {
            if p == Provoke::ConsolePorts {
                let d = super::targets::multiport_console(TestHal::memory());
                return watched(Kind::Console, d, console_workload, p);
            }
            if p.kind() == Kind::Net {
                return match our_device(Kind::Net, &TestHal::memory()) {
                    Ok(Device::Net(d)) => watched(Kind::Net, d, net_workload, p),
                    Ok(_) => failed_as(p.device_name(Kind::Net), "not a network device".into()),
                    Err(e) => failed_as(p.device_name(Kind::Net), e),
                };
            }
            let d =
                virtio_devices::rng::Rng::new(super::entropy::Trickle::new(), TestHal::memory());
            let workload = match p {
                Provoke::RefusedFeatures => rng_refused_workload,
                _ => rng_workload,
            };
            watched(p.kind(), d, workload, p)
        })
        .collect()
}

/// virtio-drivers' entropy driver set up against a device that refuses
/// FEATURES_OK, and nothing asked of it (a driver that went on would wait
/// for a device that is not live); a panic in it is reported as the
/// workload's failure.
fn rng_refused_workload<D: VirtioDevice + 'static>(t: Transport<D>) -> Result<(), String> {
    use virtio_drivers::device::rng::VirtIORng;
    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        VirtIORng::<TestHal, _>::new(t).map(drop)
    }));
    match made {
        Ok(_) => Ok(()),
        Err(_) => Err("virtio-drivers panicked".into()),
    }
}
