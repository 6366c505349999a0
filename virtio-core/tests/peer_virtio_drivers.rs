//! Interoperation with a driver we did not write: rcore-os `virtio-drivers`
//! sets up a queue through our device-side virtio-mmio register file (via
//! `testing::virtio_drivers::DeviceTransport`, §4.2.3) and adds buffers with
//! its `VirtQueue`; our [`DeviceQueue`], built from the addresses the register
//! file recorded, pops them, reads what the driver wrote, writes a reply and
//! completes them with lengths, which `VirtQueue::pop_used` gets back.
//!
//! Buffers are either in the DMA pool (zero-copy) or on the heap (bounced
//! by `TestHal`), direct or indirect (§2.7.5.3), with and without
//! `VIRTIO_F_EVENT_IDX`; notification advice is checked both ways where
//! both sides implement the same rule (§2.7.7, §2.7.10). `virtio-drivers`'
//! own rng driver runs unchanged against our device as a smoke test.
#![cfg(not(miri))]

use std::cell::RefCell;
use std::rc::Rc;

use proptest::prelude::*;
use virtio_core::features::TransportFeatures;
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::regs::InterruptStatus as MmioInterrupt;
use virtio_core::mmio::{ActivateError, MmioDevice, MmioRegisters, QueueState, WriteOutcome};
use virtio_core::split::DeviceQueue;
use virtio_core::split::layout::QueueLayout;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};

/// The queue size both sides use.
const SIZE: usize = 16;
/// Bytes of reply the device adds after echoing the driver's data.
const EXTRA: usize = 16;

/// What the device saw, shared with the test (the device itself ends up
/// inside the register file, inside the transport, inside the driver).
#[derive(Debug, Default)]
struct Log {
    activated: Option<u64>,
    layouts: Vec<QueueLayout>,
    /// Per completed chain: head, readable bytes, used length.
    served: Vec<(u16, Vec<u8>, u32)>,
    resets: u32,
}

/// A device of type "entropy source" (ID 4) whose queues echo: each chain's
/// device-readable bytes come back inverted in its device-writable buffers,
/// followed by up to [`EXTRA`] bytes of a counter, as far as they fit.
struct EchoDevice {
    queues: Vec<DeviceQueue>,
    log: Rc<RefCell<Log>>,
}

impl EchoDevice {
    fn new() -> (EchoDevice, Rc<RefCell<Log>>) {
        let log = Rc::new(RefCell::new(Log::default()));
        let dev = EchoDevice {
            queues: Vec::new(),
            log: Rc::clone(&log),
        };
        (dev, log)
    }

    /// Serves queue `q` as a device does: suppress notifications, pop and
    /// complete everything, re-enable and re-check (§2.7.10), publish once,
    /// and say whether the driver wants an interrupt.
    fn serve(&mut self, q: usize) -> bool {
        let mem = TestHal::memory();
        let queue = &mut self.queues[q];
        queue.disable_notification(mem).unwrap();
        loop {
            while let Some(chain) = queue.pop(mem).unwrap() {
                let head = chain.head();
                let (mut r, mut w) = chain.reader_writer::<SIZE>().unwrap();
                let mut data = vec![0u8; r.available() as usize];
                r.read_exact(&mut data).unwrap();
                let reply = reply_for(&data);
                w.write(&reply).unwrap();
                let len = w.written();
                queue.add_used(mem, head, len).unwrap();
                self.log.borrow_mut().served.push((head, data, len));
            }
            if !queue.enable_notification(mem).unwrap() {
                break;
            }
        }
        queue.publish_used(mem).unwrap();
        queue.needs_notification(mem).unwrap()
    }
}

/// The device's full reply to a chain whose readable bytes are `data`.
fn reply_for(data: &[u8]) -> Vec<u8> {
    let mut reply: Vec<u8> = data.iter().map(|b| !b).collect();
    reply.extend((0..EXTRA).map(|k| k as u8 ^ 0x33));
    reply
}

impl MmioDevice for EchoDevice {
    fn device_id(&self) -> u32 {
        4
    }

    fn device_features(&self) -> u64 {
        (TransportFeatures::RING_INDIRECT_DESC | TransportFeatures::RING_EVENT_IDX).bits()
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self, _index: u16) -> u16 {
        64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // A made-up 8-byte config space: byte i reads as 0xc0 + i.
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at < 8 { 0xc0 + at as u8 } else { 0 };
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, features: u64, queues: &[QueueState]) -> Result<(), ActivateError> {
        let event_idx = features & TransportFeatures::RING_EVENT_IDX.bits() != 0;
        let indirect = features & TransportFeatures::RING_INDIRECT_DESC.bits() != 0;
        let mut log = self.log.borrow_mut();
        log.activated = Some(features);
        for state in queues {
            let layout = state.layout().ok_or(ActivateError {
                reason: "queue not ready",
            })?;
            layout
                .check_memory(TestHal::memory())
                .map_err(|_| ActivateError {
                    reason: "rings outside guest memory",
                })?;
            log.layouts.push(layout);
            self.queues
                .push(DeviceQueue::new(layout, event_idx, indirect));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.queues.clear();
        self.log.borrow_mut().resets += 1;
    }
}

/// Serves a notified queue from inside the transport, as a VMM's
/// ioeventfd handler would, and raises the interrupt if the driver wants it.
fn serve_on_notify(regs: &mut MmioRegisters<EchoDevice>, outcome: WriteOutcome) {
    if let WriteOutcome::Notify { queue, .. } = outcome
        && regs.device_mut().serve(usize::from(queue))
    {
        regs.raise_used_buffer();
    }
}

fn transport() -> (DeviceTransport<EchoDevice>, Rc<RefCell<Log>>) {
    let (dev, log) = EchoDevice::new();
    let regs = MmioRegisters::new(dev).unwrap();
    let t = DeviceTransport::new(regs).unwrap().with_config_len(8);
    (t, log)
}

/// A buffer in the DMA pool: the device reaches it without a bounce.
struct PoolBuf {
    addr: GuestAddress,
    len: usize,
}

impl PoolBuf {
    fn new(len: usize) -> PoolBuf {
        let addr = TestHal::alloc_pages(len.div_ceil(4096)).expect("pool has room");
        PoolBuf { addr, len }
    }

    fn ptr(&self) -> *mut u8 {
        TestHal::host_ptr(self.addr).unwrap()
    }

    /// A slice over the buffer for one call into `virtio-drivers`.
    ///
    /// # Safety
    ///
    /// No other slice over the buffer may be live, and the device must not
    /// access it while the slice is (the test is single-threaded and the
    /// device runs only between the driver's calls).
    unsafe fn slice<'a>(&self) -> &'a mut [u8] {
        // SAFETY: the pages were reserved for this buffer alone in `new` and
        // stay so until `drop`; the caller rules out aliasing.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len) }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        assert!(TestHal::free_pages(self.addr, self.len.div_ceil(4096)));
    }
}

/// Where a test buffer lives.
enum Buf {
    Pool(PoolBuf),
    Heap(Vec<u8>),
}

impl Buf {
    fn new(len: usize, pool: bool) -> Buf {
        if pool {
            Buf::Pool(PoolBuf::new(len))
        } else {
            Buf::Heap(vec![0; len])
        }
    }

    fn fill(&mut self, seed: u8) {
        let s = self.as_mut();
        for (k, b) in s.iter_mut().enumerate() {
            *b = seed.wrapping_add(k as u8).wrapping_mul(5);
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: single-threaded; called only while the device is idle
            // and no other slice over the buffer is live.
            Buf::Pool(p) => unsafe { p.slice() },
            Buf::Heap(v) => v,
        }
    }

    fn copy_out(&mut self) -> Vec<u8> {
        self.as_mut().to_vec()
    }
}

/// One chain the test adds through `virtio-drivers`.
struct Chain {
    token: u16,
    inputs: Vec<Buf>,
    outputs: Vec<Buf>,
}

impl Chain {
    fn new(in_lens: &[usize], out_lens: &[usize], pool: bool, seed: u8) -> Chain {
        let mut inputs: Vec<Buf> = in_lens.iter().map(|&l| Buf::new(l, pool)).collect();
        for (i, b) in inputs.iter_mut().enumerate() {
            b.fill(seed.wrapping_add(i as u8 * 40));
        }
        let outputs = out_lens.iter().map(|&l| Buf::new(l, pool)).collect();
        Chain {
            token: u16::MAX,
            inputs,
            outputs,
        }
    }

    /// The driver's view of the buffers, for one call into `virtio-drivers`.
    fn slices(&mut self) -> (Vec<&[u8]>, Vec<&mut [u8]>) {
        let inputs = self.inputs.iter_mut().map(|b| &*b.as_mut()).collect();
        let outputs = self.outputs.iter_mut().map(|b| b.as_mut()).collect();
        (inputs, outputs)
    }

    fn input_bytes(&mut self) -> Vec<u8> {
        self.inputs.iter_mut().flat_map(|b| b.copy_out()).collect()
    }

    fn output_bytes(&mut self) -> Vec<u8> {
        self.outputs.iter_mut().flat_map(|b| b.copy_out()).collect()
    }

    fn out_len(&self) -> usize {
        self.outputs
            .iter()
            .map(|b| match b {
                Buf::Pool(p) => p.len,
                Buf::Heap(v) => v.len(),
            })
            .sum()
    }
}

/// A driver-side queue set up through the transport, as a device driver
/// does in its constructor (§3.1.1).
fn set_up(
    t: &mut DeviceTransport<EchoDevice>,
    event_idx: bool,
    indirect: bool,
) -> VirtQueue<TestHal, SIZE> {
    let mut supported = TransportFeatures::VERSION_1;
    if event_idx {
        supported |= TransportFeatures::RING_EVENT_IDX;
    }
    if indirect {
        supported |= TransportFeatures::RING_INDIRECT_DESC;
    }
    let negotiated = t.begin_init(supported);
    assert_eq!(negotiated, supported, "the device offers all of them");
    let vq = VirtQueue::<TestHal, SIZE>::new(t, 0, indirect, event_idx).unwrap();
    t.finish_init();
    assert!(t.get_status().contains(DeviceStatus::DRIVER_OK));
    assert_eq!(t.errors(), vec![], "a well-behaved driver makes no errors");
    vq
}

/// Adds `chain`, returning false if the queue is full.
fn add(vq: &mut VirtQueue<TestHal, SIZE>, chain: &mut Chain) -> bool {
    let (i, mut o) = chain.slices();
    // SAFETY: the buffers stay alive and untouched by the test until
    // `pop_used` returns this token (see `take`).
    match unsafe { vq.add(&i, &mut o) } {
        Ok(token) => {
            chain.token = token;
            true
        }
        Err(virtio_drivers::Error::QueueFull) => false,
        Err(e) => panic!("add failed: {e}"),
    }
}

/// Takes `chain` back and checks what the device did with it.
fn take(vq: &mut VirtQueue<TestHal, SIZE>, chain: &mut Chain, log: &RefCell<Log>) {
    let token = chain.token;
    let (i, mut o) = chain.slices();
    // SAFETY: the same buffers as were added with this token.
    let len = unsafe { vq.pop_used(token, &i, &mut o) }.unwrap();
    let sent = chain.input_bytes();
    let (head, seen, used) = log.borrow_mut().served.remove(0);
    assert_eq!(head, token, "completions come back in order");
    assert_eq!(seen, sent, "the device read what the driver wrote");
    let reply = reply_for(&sent);
    let expect = reply.len().min(chain.out_len());
    assert_eq!(used as usize, expect, "used length the device reported");
    assert_eq!(len as usize, expect, "used length the driver got back");
    let out = chain.output_bytes();
    assert_eq!(&out[..expect], &reply[..expect], "bytes the device wrote");
}

#[test]
fn register_file_records_the_queue_virtio_drivers_set_up() {
    let (mut t, log) = transport();
    let vq = set_up(&mut t, true, true);
    let log = log.borrow();
    assert_eq!(
        log.activated,
        Some(
            (TransportFeatures::VERSION_1
                | TransportFeatures::RING_EVENT_IDX
                | TransportFeatures::RING_INDIRECT_DESC)
                .bits()
        )
    );
    let state = *t.registers().queue(0).unwrap();
    assert!(state.is_ready());
    assert_eq!(usize::from(state.size()), SIZE);
    assert_eq!(log.layouts, vec![state.layout().unwrap()]);
    // The rings lie in DMA pool pages, at the addresses the driver gave.
    let layout = state.layout().unwrap();
    assert!(TestHal::host_ptr(layout.desc_table()).is_some());
    assert!(TestHal::host_ptr(layout.used_ring()).is_some());
    // Config space reads as a guest's would, at the field's width.
    assert_eq!(t.read_config_space::<u8>(3).unwrap(), 0xc3);
    assert_eq!(t.read_config_space::<u16>(2).unwrap(), 0xc3c2);
    assert_eq!(t.read_config_space::<u32>(4).unwrap(), 0xc7c6_c5c4);
    assert_eq!(
        t.read_config_space::<u32>(6),
        Err(virtio_drivers::Error::ConfigSpaceTooSmall)
    );
    drop(vq);
    t.queue_unset(0);
    assert!(!t.queue_used(0));
    assert_eq!(t.errors(), vec![]);
}

#[test]
fn buffers_round_trip_with_lengths() {
    let shapes: &[(&[usize], &[usize])] = &[
        (&[16], &[]),
        (&[], &[64]),
        (&[5], &[100]),
        (&[3, 4, 5], &[2, 2]),
        (&[1], &[1, 1, 1, 1, 1]),
        (&[300, 200], &[600]),
    ];
    for event_idx in [false, true] {
        for indirect in [false, true] {
            for pool in [false, true] {
                let (mut t, log) = transport();
                t.set_hook(serve_on_notify);
                let mut vq = set_up(&mut t, event_idx, indirect);
                for round in 0..3u8 {
                    let mut chains: Vec<Chain> = shapes
                        .iter()
                        .enumerate()
                        .map(|(i, (r, w))| Chain::new(r, w, pool, round * 16 + i as u8))
                        .collect();
                    let mut added = Vec::new();
                    for (i, c) in chains.iter_mut().enumerate() {
                        if add(&mut vq, c) {
                            added.push(i);
                        }
                    }
                    assert!(!added.is_empty());
                    assert!(vq.should_notify(), "the device waits: kick");
                    t.notify(0);
                    // The notification served the queue inside the transport.
                    assert!(t.registers().interrupt_asserted());
                    assert!(
                        t.ack_interrupt() == InterruptStatus::QUEUE_INTERRUPT,
                        "the driver asked for an interrupt"
                    );
                    assert!(!t.registers().interrupt_asserted());
                    for i in added {
                        take(&mut vq, &mut chains[i], &log);
                    }
                    assert!(!vq.can_pop());
                    assert!(log.borrow().served.is_empty());
                }
                assert_eq!(t.take_errors(), vec![]);
            }
        }
    }
}

#[test]
fn available_buffer_notifications_agree() {
    for event_idx in [false, true] {
        let (mut t, log) = transport();
        let mut vq = set_up(&mut t, event_idx, false);
        let mem = TestHal::memory();
        // Nothing pending and notifications on: the driver must kick.
        let mut c = Chain::new(&[4], &[4], true, 1);
        add(&mut vq, &mut c);
        assert!(
            vq.should_notify(),
            "device waits: kick (event_idx={event_idx})"
        );
        assert!(t.device_mut().serve(0));
        take(&mut vq, &mut c, &log);
        if !event_idx {
            // The device sets NO_NOTIFY: the driver must not kick.
            t.device_mut().queues[0].disable_notification(mem).unwrap();
            let mut c = Chain::new(&[4], &[4], true, 2);
            add(&mut vq, &mut c);
            assert!(!vq.should_notify(), "NO_NOTIFY honoured");
            assert!(t.device_mut().queues[0].enable_notification(mem).unwrap());
            t.device_mut().serve(0);
            take(&mut vq, &mut c, &log);
        }
        // After `serve` re-armed notification, the next buffer kicks again.
        let mut c = Chain::new(&[4], &[4], false, 3);
        add(&mut vq, &mut c);
        assert!(vq.should_notify(), "re-armed: kick");
        t.device_mut().serve(0);
        take(&mut vq, &mut c, &log);
        assert_eq!(t.errors(), vec![]);
    }
}

#[test]
fn used_buffer_notifications_agree() {
    // Without EVENT_IDX: `set_dev_notify` toggles NO_INTERRUPT, which our
    // device honours.
    let (mut t, log) = transport();
    let mut vq = set_up(&mut t, false, false);
    vq.set_dev_notify(false);
    let mut c = Chain::new(&[8], &[8], true, 1);
    add(&mut vq, &mut c);
    assert!(!t.device_mut().serve(0), "NO_INTERRUPT: no interrupt");
    take(&mut vq, &mut c, &log);
    vq.set_dev_notify(true);
    let mut c = Chain::new(&[8], &[8], true, 2);
    add(&mut vq, &mut c);
    assert!(t.device_mut().serve(0), "interrupts on: interrupt");
    take(&mut vq, &mut c, &log);

    // With EVENT_IDX: `pop_used` moves used_event to the next entry, so
    // every completion after a pop interrupts, and a second completion
    // before the driver pops does not.
    let (mut t, log) = transport();
    let mut vq = set_up(&mut t, true, false);
    let mut a = Chain::new(&[8], &[8], true, 3);
    add(&mut vq, &mut a);
    assert!(t.device_mut().serve(0), "used_event 0 reached");
    let mut b = Chain::new(&[8], &[8], true, 4);
    add(&mut vq, &mut b);
    assert!(!t.device_mut().serve(0), "driver has not caught up");
    take(&mut vq, &mut a, &log);
    take(&mut vq, &mut b, &log);
    let mut c = Chain::new(&[8], &[8], true, 5);
    add(&mut vq, &mut c);
    assert!(t.device_mut().serve(0), "caught up: interrupt");
    take(&mut vq, &mut c, &log);
    assert_eq!(t.errors(), vec![]);
}

#[test]
fn add_notify_wait_pop_runs_the_device_through_the_transport() {
    for event_idx in [false, true] {
        let (mut t, log) = transport();
        t.set_hook(serve_on_notify);
        let mut vq = set_up(&mut t, event_idx, true);
        for i in 0..3 * SIZE {
            let input = [i as u8; 7];
            let mut out = vec![0u8; 4 + i % 20];
            let len = vq
                .add_notify_wait_pop(&[&input[..]], &mut [&mut out[..]], &mut t)
                .unwrap();
            let reply = reply_for(&input);
            let expect = reply.len().min(out.len());
            assert_eq!(len as usize, expect);
            assert_eq!(&out[..expect], &reply[..expect]);
            log.borrow_mut().served.clear();
        }
        assert_eq!(t.errors(), vec![]);
    }
}

#[test]
fn virtio_drivers_rng_driver_runs_on_our_device() {
    let (mut t, log) = transport();
    t.set_hook(serve_on_notify);
    let mut rng = VirtIORng::<TestHal, _>::new(t).unwrap();
    let features = log
        .borrow()
        .activated
        .expect("DRIVER_OK activated the device");
    assert_ne!(features & TransportFeatures::RING_EVENT_IDX.bits(), 0);
    for n in [1usize, 16, 100] {
        let mut buf = vec![0u8; n];
        let got = rng.request_entropy(&mut buf).unwrap();
        // No readable bytes: the reply is the counter part only.
        let expect = EXTRA.min(n);
        assert_eq!(got, expect);
        assert_eq!(&buf[..expect], &reply_for(&[])[..expect]);
        assert!(
            rng.ack_interrupt()
                .contains(InterruptStatus::QUEUE_INTERRUPT)
        );
    }
    drop(rng);
    assert_eq!(log.borrow().served.len(), 3);
}

#[test]
fn reset_through_the_transport_drops_device_queues() {
    let (mut t, log) = transport();
    let vq = set_up(&mut t, false, false);
    drop(vq);
    t.set_status(DeviceStatus::empty());
    assert!(log.borrow().resets >= 2, "begin_init reset, then ours");
    assert!(t.device().queues.is_empty());
    assert!(!t.queue_used(0));
    assert_eq!(t.registers().interrupt_status(), MmioInterrupt::empty());
    // A driver can set the device up again after a reset.
    let _vq = set_up(&mut t, true, true);
    assert_eq!(t.device().queues.len(), 1);
}

fn shape() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, bool)> {
    (
        proptest::collection::vec(1usize..300, 0..4),
        proptest::collection::vec(1usize..300, 0..4),
        any::<bool>(),
    )
        .prop_filter("a chain needs a buffer", |(r, w, _)| {
            !r.is_empty() || !w.is_empty()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random chain shapes, pool or heap buffers, batches and features.
    #[test]
    fn random_chains_round_trip(
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        batches in proptest::collection::vec(proptest::collection::vec(shape(), 1..8), 1..6),
    ) {
        let (mut t, log) = transport();
        let mut vq = set_up(&mut t, event_idx, indirect);
        for (b, batch) in batches.iter().enumerate() {
            let mut chains: Vec<Chain> = batch
                .iter()
                .enumerate()
                .map(|(i, (r, w, pool))| Chain::new(r, w, *pool, (b * 8 + i) as u8))
                .collect();
            let mut added = Vec::new();
            for (i, c) in chains.iter_mut().enumerate() {
                if add(&mut vq, c) {
                    added.push(i);
                }
            }
            let kick = vq.should_notify();
            prop_assert!(kick, "the device re-armed after its last run: kick");
            t.device_mut().serve(0);
            for i in added {
                take(&mut vq, &mut chains[i], &log);
            }
            prop_assert!(!vq.can_pop());
        }
        prop_assert_eq!(t.errors(), vec![]);
    }
}
