//! virtio-console (§5.3) in one process: the independent `virtio-drivers`
//! console driver on port 0 through the mmio register file, and our own
//! driver-side queues for multiport (§5.3.6.2), backpressure and hostile
//! chains.

mod failing;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use backends::chardev::{Chardev, ChardevError, RingBuf};
use failing::Failing;
use virtio_core::GuestMemory;
use virtio_core::features::TransportFeatures;
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_devices::console::{Console, Control, Port, event};
use virtio_devices::device::{QueueConfig, VirtioDevice};
use virtio_devices::transport::{MmioTransport, dispatch};
use virtio_drivers::device::console::VirtIOConsole;

/// A ring-buffer chardev the test can look into, which takes at most
/// `limit` bytes per write (to model a slow host).
#[derive(Clone)]
struct Shared {
    ring: Arc<Mutex<RingBuf<65536>>>,
    limit: Arc<Mutex<usize>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            ring: Arc::new(Mutex::new(RingBuf::new())),
            limit: Arc::new(Mutex::new(usize::MAX)),
        }
    }
    fn output(&self) -> Vec<u8> {
        let mut out = vec![0u8; 65536];
        let n = self.ring.lock().unwrap().take_output(&mut out);
        out.truncate(n);
        out
    }
    fn input(&self, data: &[u8]) {
        assert_eq!(self.ring.lock().unwrap().push_input(data), data.len());
    }
}

impl Chardev for Shared {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let limit = *self.limit.lock().unwrap();
        let n = buf.len().min(limit);
        self.ring.lock().unwrap().write(&buf[..n])
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        self.ring.lock().unwrap().read(buf)
    }
}

#[test]
fn virtio_drivers_console_writes_and_echoes_through_port_0() {
    let chr = Shared::new();
    chr.input(b"hello from the host\n");
    // Under the double-fetch tracker (issue 16), rings unknown to it.
    let mem: &'static FetchTracker<_> =
        Box::leak(Box::new(FetchTracker::unwatched(TestHal::memory())));
    let dev = Console::new(mem, Box::new(chr.clone()));
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let mut t = DeviceTransport::new(regs).unwrap().with_config_len(12);
    t.set_hook(|regs, outcome| {
        dispatch(regs, outcome);
    });
    let mut con = VirtIOConsole::<TestHal, _>::new(t).unwrap();
    let size = con.size().unwrap().expect("SIZE negotiated");
    assert_eq!((size.columns, size.rows), (80, 25));
    // Guest output: a few KiB of text reach the chardev exactly.
    let text: Vec<u8> = (0..4096u32).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in text.chunks(1000) {
        con.send_bytes(chunk).unwrap();
    }
    con.send(b'\n').unwrap();
    let mut want = text.clone();
    want.push(b'\n');
    assert_eq!(chr.output(), want);
    // Host input arrives in order.
    let mut got = Vec::new();
    for _ in 0..10_000 {
        match con.recv(true).unwrap() {
            Some(b) => got.push(b),
            None if got.len() == 20 => break,
            None => {}
        }
    }
    assert_eq!(got, b"hello from the host\n");
    // Emergency write goes straight to port 0.
    con.emergency_write(b'!').unwrap();
    assert_eq!(chr.output(), b"!");
    mem.assert_none();
}

type DevMem = FetchTracker<&'static Failing>;

/// Our driver side for a multiport console laid out by hand.
struct Rig {
    mem: &'static OwnedMemory,
    qs: Vec<DriverQueue<16>>,
    dev: Console<&'static DevMem>,
    /// What the device loads, checked for double fetches (issue 16) when
    /// the rig is dropped.
    fetch: &'static DevMem,
    /// Where device writes fail on demand.
    failing: &'static Failing,
    next_buf: u64,
    /// Control receive buffers posted and not yet used.
    ctrl_bufs: HashMap<Token, GuestAddress>,
}

const BUF: u64 = 0x10_0000;

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.fetch.assert_none();
        }
    }
}

impl Rig {
    fn new(ports: Vec<Port>, multiport: bool) -> Rig {
        let max = ports.len();
        Rig::with_max(ports, multiport, max)
    }

    fn with_max(ports: Vec<Port>, multiport: bool, max_ports: usize) -> Rig {
        let mem: &'static OwnedMemory =
            Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x40_0000)));
        let failing = Failing::leak(mem, None);
        let fetch: &'static DevMem = Box::leak(Box::new(FetchTracker::new(failing)));
        let mut dev = Console::with_max_ports(fetch, ports, multiport, max_ports);
        let n = dev.queue_max_sizes().len();
        let mut qs = Vec::new();
        let mut configs = Vec::new();
        for i in 0..n as u64 {
            let base = 0x1_0000 + i * 0x1_0000;
            let layout = QueueLayout::new(
                QueueSize::new(16).unwrap(),
                GuestAddress(base),
                GuestAddress(base + 0x1000),
                GuestAddress(base + 0x2000),
            )
            .unwrap();
            fetch.watch_queue(&layout);
            let mut q = DriverQueue::new(layout, false, None).unwrap();
            q.init(mem).unwrap();
            qs.push(q);
            configs.push(QueueConfig {
                layout: Some(layout),
            });
        }
        let features = dev.device_features() & !TransportFeatures::RING_EVENT_IDX.bits();
        dev.activate(features, configs).unwrap();
        Rig {
            mem,
            qs,
            dev,
            fetch,
            failing,
            next_buf: BUF,
            ctrl_bufs: HashMap::new(),
        }
    }

    fn buf(&mut self, data: &[u8]) -> GuestAddress {
        let a = GuestAddress(self.next_buf);
        self.next_buf += 0x1000;
        self.mem.write(a, data).unwrap();
        a
    }

    fn send(&mut self, q: usize, data: &[u8]) -> Token {
        let a = self.buf(data);
        let t = self.qs[q]
            .add(self.mem, &[(a, data.len() as u32)], &[])
            .unwrap();
        self.qs[q].publish(self.mem).unwrap();
        self.dev.queue_notify(q as u16).unwrap();
        t
    }

    fn post_rx(&mut self, q: usize, len: u32) -> (Token, GuestAddress) {
        let a = self.buf(&[]);
        let t = self.qs[q].add(self.mem, &[], &[(a, len)]).unwrap();
        self.qs[q].publish(self.mem).unwrap();
        self.dev.queue_notify(q as u16).unwrap();
        (t, a)
    }

    fn used(&mut self, q: usize) -> Vec<(Token, u32)> {
        let mut v = vec![];
        while let Some(u) = self.qs[q].pop_used(self.mem).unwrap() {
            v.push((u.token, u.len));
        }
        v
    }

    fn control_messages(&mut self) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let mut out = vec![];
        for _ in 0..8 {
            let (t, a) = self.post_rx(2, 64);
            self.ctrl_bufs.insert(t, a);
            let used = self.used(2);
            for (t, len) in used {
                let a = self.ctrl_bufs.remove(&t).expect("a posted buffer");
                let msg: Control = self.mem.read_obj(a).unwrap();
                let mut extra = vec![0u8; len as usize - 8];
                self.mem.read(GuestAddress(a.0 + 8), &mut extra).unwrap();
                out.push((msg.id(), msg.event(), msg.value(), extra));
            }
        }
        out
    }
}

fn control(id: u32, ev: u16, value: u16) -> Vec<u8> {
    Control::new(id, ev, value).to_bytes().to_vec()
}

#[test]
fn section_5_3_6_2_multiport_handshake_and_data_on_port_1() {
    let c0 = Shared::new();
    let c1 = Shared::new();
    let ports = vec![
        Port::new(Box::new(c0.clone()), true, None),
        Port::new(Box::new(c1.clone()), false, Some("org.test.port1".into())),
    ];
    let mut r = Rig::new(ports, true);
    assert_eq!(r.dev.queue_max_sizes().len(), 6);
    let mut cfg = [0u8; 4];
    r.dev.read_config(4, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 2, "max_nr_ports");
    r.send(3, &control(0, event::DEVICE_READY, 1));
    let adds = r.control_messages();
    assert_eq!(
        adds,
        vec![
            (0, event::DEVICE_ADD, 0, vec![]),
            (1, event::DEVICE_ADD, 0, vec![])
        ]
    );
    r.send(3, &control(0, event::PORT_READY, 1));
    r.send(3, &control(1, event::PORT_READY, 1));
    let msgs = r.control_messages();
    assert_eq!(
        msgs,
        vec![
            (0, event::CONSOLE_PORT, 1, vec![]),
            (0, event::PORT_OPEN, 1, vec![]),
            (1, event::PORT_NAME, 1, b"org.test.port1\0".to_vec()),
            (1, event::PORT_OPEN, 1, vec![]),
        ]
    );
    r.send(3, &control(1, event::PORT_OPEN, 1));
    assert!(r.dev.ports()[1].guest_open());
    // Port 1 data: transmitq is queue 5, receiveq queue 4 (§5.3.2).
    r.send(5, b"to port one");
    assert_eq!(c1.output(), b"to port one");
    assert!(c0.output().is_empty());
    c1.input(b"from port one");
    let (t, a) = r.post_rx(4, 64);
    assert_eq!(r.used(4), vec![(t, 13)]);
    let mut got = [0u8; 13];
    r.mem.read(a, &mut got).unwrap();
    assert_eq!(&got, b"from port one");
    // A control message naming no port is counted, not fatal.
    r.send(3, &control(9, event::PORT_OPEN, 1));
    assert_eq!(r.dev.stats().bad_control, 1);
}

#[test]
fn slow_chardev_keeps_the_chain_until_every_byte_is_out() {
    let c0 = Shared::new();
    *c0.limit.lock().unwrap() = 3;
    let mut r = Rig::new(vec![Port::new(Box::new(c0.clone()), true, None)], false);
    let t = r.send(1, b"0123456789");
    assert!(r.used(1).is_empty(), "not complete while bytes remain");
    assert_eq!(c0.output(), b"012");
    r.dev.backend_ready().unwrap();
    r.dev.backend_ready().unwrap();
    *c0.limit.lock().unwrap() = usize::MAX;
    r.dev.backend_ready().unwrap();
    assert_eq!(r.used(1), vec![(t, 0)]);
    assert_eq!(c0.output(), b"3456789");
}

/// Issue 16, finding 8: an error in the middle of a pass (here the used
/// ring stops being writable after the first chain) keeps what the pass
/// did. Before, the device worked on a copy of its queue and dropped it on
/// the error, so the next notification popped the same chains again and
/// their bytes reached the chardev twice.
#[test]
fn a_queue_error_midway_does_not_replay_chains_already_written() {
    let c0 = Shared::new();
    let mut r = Rig::new(vec![Port::new(Box::new(c0.clone()), true, None)], false);
    let layout = QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(0x2_0000),
        GuestAddress(0x2_1000),
        GuestAddress(0x2_2000),
    )
    .unwrap();
    // The second used element of transmitq0 (queue 1) cannot be written.
    let slot = layout.used_slot(1).0;
    r.failing.set(Some(slot..slot + 8));
    let mut toks = vec![];
    for data in [b"aaa", b"bbb"] {
        let a = r.buf(data);
        toks.push(r.qs[1].add(r.mem, &[(a, 3)], &[]).unwrap());
    }
    r.qs[1].publish(r.mem).unwrap();
    assert!(
        r.dev.queue_notify(1).is_err(),
        "the failed used write is reported"
    );
    assert_eq!(c0.output(), b"aaabbb");
    r.failing.set(None);
    r.dev.queue_notify(1).unwrap();
    assert_eq!(c0.output(), b"", "nothing written twice");
    assert_eq!(
        r.used(1),
        vec![(toks[0], 0)],
        "the first chain was published"
    );
    // The port goes on.
    let t = r.send(1, b"ccc");
    assert_eq!(c0.output(), b"ccc");
    assert_eq!(r.used(1), vec![(t, 0)]);
}

#[test]
fn host_input_waits_for_receive_buffers_and_nothing_is_lost() {
    let c0 = Shared::new();
    let mut r = Rig::new(vec![Port::new(Box::new(c0.clone()), true, None)], false);
    c0.input(b"abcdefgh");
    r.dev.backend_ready().unwrap();
    let (t1, a1) = r.post_rx(0, 3);
    let (t2, a2) = r.post_rx(0, 16);
    assert_eq!(r.used(0), vec![(t1, 3), (t2, 5)]);
    let mut b = [0u8; 8];
    r.mem.read(a1, &mut b[..3]).unwrap();
    r.mem.read(a2, &mut b[3..]).unwrap();
    assert_eq!(&b, b"abcdefgh");
}

#[test]
fn hostile_chains_are_returned_and_the_port_goes_on() {
    let c0 = Shared::new();
    let mut r = Rig::new(vec![Port::new(Box::new(c0.clone()), true, None)], false);
    // A receive chain with no writable buffer, then a good one.
    c0.input(b"xy");
    let a = r.buf(&[1, 2]);
    let bad = r.qs[0].add(r.mem, &[(a, 2)], &[]).unwrap();
    r.qs[0].publish(r.mem).unwrap();
    let (good, _) = r.post_rx(0, 8);
    assert_eq!(r.used(0), vec![(bad, 0), (good, 2)]);
    assert!(r.dev.stats().malformed >= 1);
}

#[test]
fn section_5_3_4_max_nr_ports_is_the_room_not_the_ports_present() {
    // QEMU's virtio-serial-device,max_ports=4 with one virtconsole: queues
    // for 4 ports (2 + 2 * 4, §5.3.2), max_nr_ports 4, only port 0 added.
    let out = Shared::new();
    let mut rig = Rig::with_max(vec![Port::new(Box::new(out.clone()), true, None)], true, 4);
    assert_eq!(rig.dev.queue_max_sizes().len(), 10);
    let mut cfg = [0u8; 4];
    rig.dev.read_config(4, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg), 4);
    let ready = control(0, event::DEVICE_READY, 1);
    for _ in 0..4 {
        let (t, a) = rig.post_rx(2, 64);
        rig.ctrl_bufs.insert(t, a);
    }
    rig.send(3, &ready);
    rig.dev.queue_notify(3).unwrap();
    let msgs = rig.control_messages();
    let added: Vec<u32> = msgs
        .iter()
        .filter(|m| m.1 == event::DEVICE_ADD)
        .map(|m| m.0)
        .collect();
    assert_eq!(added, vec![0], "only the port that exists is added");
    // A kick on a queue of a port that is not there is harmless.
    rig.dev.queue_notify(9).unwrap();
}

/// Issue 16, finding 12: room for more ports than 16-bit queue indices
/// reach (§5.3.2) is lowered to `MAX_PORTS`, not allocated.
#[test]
fn section_5_3_2_max_ports_is_bounded_by_16_bit_queue_indices() {
    use virtio_devices::console::MAX_PORTS;
    let dev = Console::with_max_ports(
        TestHal::memory(),
        vec![Port::new(Box::new(Shared::new()), true, None)],
        true,
        usize::MAX,
    );
    assert_eq!(dev.queue_max_sizes().len(), 2 + 2 * MAX_PORTS);
    assert!(dev.queue_max_sizes().len() <= usize::from(u16::MAX));
}

/// §5.3.5.1 (1.4), device:console/device-initialization#1: "The device
/// MUST allow a write to emerg_wr, even on an unconfigured device." A write through the
/// registers before any status is set (and again after a reset) reaches
/// port 0.
#[test]
fn section_5_3_5_1_emergency_write_works_on_an_unconfigured_device() {
    let mem: &'static OwnedMemory = Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x10000)));
    let chr = Shared::new();
    let dev = Console::new(mem, Box::new(chr.clone()));
    let mut regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    // 0x100: configuration space; emerg_wr at 8 (§5.3.4).
    regs.write(0x108, &u32::from(b'A').to_le_bytes()).unwrap();
    assert_eq!(chr.output(), b"A", "before ACKNOWLEDGE");
    regs.write(0x070, &1u32.to_le_bytes()).unwrap(); // ACKNOWLEDGE
    regs.write(0x108, &u32::from(b'B').to_le_bytes()).unwrap();
    regs.write(0x070, &0u32.to_le_bytes()).unwrap(); // reset
    regs.write(0x108, &u32::from(b'C').to_le_bytes()).unwrap();
    assert_eq!(
        chr.output(),
        b"BC",
        "during initialisation and after a reset"
    );
}

/// Register access to a device in this process, serving each write's
/// outcome as a transport would.
struct Direct<D: VirtioDevice>(std::cell::RefCell<MmioRegisters<MmioTransport<D>, 8>>);

impl<D: VirtioDevice> virtio_core::mmio::driver::RegisterAccess for Direct<D> {
    fn read32(&self, offset: u64) -> u32 {
        self.0.borrow().read32(offset).unwrap_or(0)
    }
    fn write32(&self, offset: u64, value: u32) {
        let mut r = self.0.borrow_mut();
        if let Ok(o) = r.write32(offset, value) {
            dispatch(&mut r, o);
        }
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0; 2];
        let _ = self.0.borrow().read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        let _ = self.0.borrow_mut().write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0; 1];
        let _ = self.0.borrow().read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        let _ = self.0.borrow_mut().write(offset, &[value]);
    }
}

/// §4.2.2.1, device:mmio/mmio-device-register-layout#7: "The device MUST
/// NOT access virtqueue contents when QueueReady is zero." The driver disables the receive
/// queue after DRIVER_OK; host input that arrives later does not touch
/// the buffer it had made available there, and the transmit queue goes
/// on.
#[test]
fn section_4_2_2_1_a_queue_disabled_after_driver_ok_is_not_touched() {
    use virtio_core::mmio::driver::MmioDriver;
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), 0x4_0000)));
    let chr = Shared::new();
    let dev = Console::new(mem, Box::new(chr.clone()));
    let regs = Direct(std::cell::RefCell::new(
        MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap(),
    ));
    let mut drv = MmioDriver::probe(&regs).unwrap();
    drv.begin_init(TransportFeatures::VERSION_1.bits()).unwrap();
    let mut qs: Vec<DriverQueue<16>> = Vec::new();
    for (i, base) in [(0u16, 0x1000u64), (1, 0x4000)] {
        let layout = QueueLayout::new(
            QueueSize::new(16).unwrap(),
            GuestAddress(base),
            GuestAddress(base + 0x1000),
            GuestAddress(base + 0x2000),
        )
        .unwrap();
        let mut q = DriverQueue::new(layout, false, None).unwrap();
        q.init(mem).unwrap();
        drv.setup_queue(i, &layout).unwrap();
        qs.push(q);
    }
    drv.finish_init().unwrap();
    // A receive buffer is made available; then the queue is disabled.
    let rx = 0x2_0000;
    mem.write(GuestAddress(rx), &[0xee; 64]).unwrap();
    qs[0].add(mem, &[], &[(GuestAddress(rx), 64)]).unwrap();
    qs[0].publish(mem).unwrap();
    drv.disable_queue(0).unwrap();
    chr.input(b"late input");
    {
        let mut r = regs.0.borrow_mut();
        virtio_devices::transport::backend_ready(&mut r);
    }
    assert!(qs[0].pop_used(mem).unwrap().is_none(), "no used entry");
    let mut b = [0u8; 64];
    mem.read(GuestAddress(rx), &mut b).unwrap();
    assert_eq!(b, [0xee; 64], "the buffer is untouched");
    // The transmit queue still works.
    let tx = 0x2_1000;
    mem.write(GuestAddress(tx), b"out").unwrap();
    let t = qs[1].add(mem, &[(GuestAddress(tx), 3)], &[]).unwrap();
    qs[1].publish(mem).unwrap();
    drv.notify(1);
    assert_eq!(qs[1].pop_used(mem).unwrap().map(|u| u.token), Some(t));
    assert_eq!(chr.output(), b"out");
}
