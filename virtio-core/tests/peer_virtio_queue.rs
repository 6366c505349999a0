//! Interoperation with an implementation we did not write: rust-vmm's
//! `virtio-queue` plays the device (spec §2.7) against our [`DriverQueue`],
//! both over the same host memory, a `vm_memory::GuestMemoryMmap` that our
//! side sees through a [`RegionMemory`] over its regions.
//!
//! Checked: the peer pops exactly the chains we added (addresses, lengths and
//! write flags per buffer; direct, indirect, mixed, 1 to many buffers) and
//! reads the bytes we put there; what it writes and returns with `add_used`
//! comes back from our `pop_used` exactly once with the right length; and
//! both sides' notification rules agree (§2.7.7, §2.7.10) wherever both
//! implement them. `virtio-queue` ignores `VIRTQ_AVAIL_F_NO_INTERRUPT`
//! (its `needs_notification` is always true without `EVENT_IDX`), which the
//! spec allows since the flag is only a hint; that case is checked as such.
#![cfg(not(miri))]

use std::collections::HashMap;
use std::io::{Read, Write};

use proptest::prelude::*;
use virtio_core::GuestMemory;
use virtio_core::memory::{GuestAddress, Region, RegionMemory};
use virtio_core::split::driver::{DriverQueue, IndirectArea};
use virtio_core::split::layout::{QueueLayout, QueueSize, UsedFlags};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Shadow capacity of our driver queue: the largest queue size used here.
const CAP: usize = 256;
/// Region 0 holds the rings and the indirect area.
const R0: (u64, usize) = (0, 0x10_0000);
/// Regions 1 and 2 are adjacent and hold the data buffers, so a buffer may
/// straddle the boundary at 3 MiB.
const R1: (u64, usize) = (0x10_0000, 0x20_0000);
const R2: (u64, usize) = (0x30_0000, 0x20_0000);
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const INDIRECT: u64 = 0x4_0000;
/// Descriptors per indirect table: longer chains go direct.
const PER_CHAIN: u16 = 8;
/// Data buffers are carved from slots of this size in regions 1 and 2.
const DATA: u64 = R1.0;
const SLOT: u64 = 0x200;
const SLOTS: u64 = 0x40_0000 / SLOT;

/// The host memory both sides use: owned by the `vm-memory` mapping, seen by
/// our side through regions that point into it.
struct Shared {
    /// Our view; declared first so that it is dropped before the mapping.
    mem: RegionMemory<4>,
    gm: GuestMemoryMmap,
}

impl Shared {
    fn new() -> Shared {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[
            (vm_memory::GuestAddress(R0.0), R0.1),
            (vm_memory::GuestAddress(R1.0), R1.1),
            (vm_memory::GuestAddress(R2.0), R2.1),
        ])
        .expect("anonymous guest memory");
        let mut mem = RegionMemory::new();
        for r in gm.iter() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .expect("region has host memory");
            // SAFETY: `host` is the start of the region's anonymous mapping of
            // `r.len()` bytes, which `gm` owns; `gm` lives in the same
            // `Shared` and is dropped after `mem`. Both sides reach the bytes
            // only through raw pointers, volatile accesses and atomics, never
            // through a Rust reference.
            let region = unsafe { Region::new(GuestAddress(r.start_addr().0), host, r.len()) };
            mem.add(region).expect("regions do not overlap");
        }
        Shared { mem, gm }
    }
}

/// What the driver handed over for one chain.
#[derive(Clone, Debug)]
struct Expect {
    readable: Vec<(u64, u32)>,
    writable: Vec<(u64, u32)>,
    seed: u8,
}

impl Expect {
    fn descriptors(&self) -> Vec<(u64, u32, bool)> {
        let r = self.readable.iter().map(|&(a, l)| (a, l, false));
        let w = self.writable.iter().map(|&(a, l)| (a, l, true));
        r.chain(w).collect()
    }
    fn readable_len(&self) -> usize {
        self.readable.iter().map(|b| b.1 as usize).sum()
    }
    fn writable_len(&self) -> u32 {
        self.writable.iter().map(|b| b.1).sum()
    }
}

/// Byte `k` of the readable data of a chain with `seed`.
fn out_byte(seed: u8, k: usize) -> u8 {
    seed.wrapping_add(k as u8).wrapping_mul(3)
}

/// Byte `k` the device writes into chain `head`.
fn in_byte(head: u16, k: usize) -> u8 {
    (head as u8 ^ 0x5a).wrapping_add(k as u8)
}

use virtio_core::testing::window_contains as crossed;

/// Our driver and the peer device over one memory, with a model of what
/// each side last told the other about notifications.
struct Rig {
    sh: Shared,
    layout: QueueLayout,
    drv: DriverQueue<CAP>,
    dev: Queue,
    event_idx: bool,
    /// Chains added and not yet taken back, by head.
    chains: HashMap<u16, Expect>,
    /// Completions the peer produced and we have not yet taken, by head.
    completed: HashMap<u16, u32>,
    next_slot: u64,
    // Available-buffer notifications (device -> driver advice).
    published_avail: u16,
    kicked_avail: u16,
    /// Non-EVENT_IDX: the peer set `NO_NOTIFY`.
    peer_no_notify: bool,
    /// EVENT_IDX: the `avail_event` the peer last wrote.
    avail_event: u16,
    device_sleeping: bool,
    kicks_since_enable: u32,
    // Used-buffer notifications (driver -> device advice).
    signalled_used: u16,
    /// EVENT_IDX: the `used_event` our driver last wrote.
    used_event: u16,
    driver_no_interrupt: bool,
    driver_waiting: bool,
    interrupts_since_enable: u32,
    reaped: u16,
    returned: u64,
}

impl Rig {
    fn new(size: u16, event_idx: bool, indirect: bool) -> Rig {
        let sh = Shared::new();
        let qsize = QueueSize::new(u32::from(size)).unwrap();
        let layout = QueueLayout::new(
            qsize,
            GuestAddress(DESC),
            GuestAddress(AVAIL),
            GuestAddress(USED),
        )
        .unwrap();
        layout.check_memory(&sh.mem).unwrap();
        let area = indirect.then(|| IndirectArea::new(GuestAddress(INDIRECT), PER_CHAIN).unwrap());
        let mut drv = DriverQueue::<CAP>::new(layout, event_idx, area).unwrap();
        drv.init(&sh.mem).unwrap();

        let mut dev = Queue::new(CAP as u16).unwrap();
        dev.try_set_size(size).unwrap();
        dev.try_set_desc_table_address(vm_memory::GuestAddress(DESC))
            .unwrap();
        dev.try_set_avail_ring_address(vm_memory::GuestAddress(AVAIL))
            .unwrap();
        dev.try_set_used_ring_address(vm_memory::GuestAddress(USED))
            .unwrap();
        dev.set_event_idx(event_idx);
        dev.set_ready(true);
        assert!(dev.is_valid(&sh.gm), "the peer accepts our layout");
        Rig {
            sh,
            layout,
            drv,
            dev,
            event_idx,
            chains: HashMap::new(),
            completed: HashMap::new(),
            next_slot: 0,
            published_avail: 0,
            kicked_avail: 0,
            peer_no_notify: false,
            avail_event: 0,
            device_sleeping: false,
            kicks_since_enable: 0,
            signalled_used: 0,
            used_event: 0,
            driver_no_interrupt: false,
            driver_waiting: false,
            interrupts_since_enable: 0,
            reaped: 0,
            returned: 0,
        }
    }

    /// The next data buffer of `len` bytes (at most `SLOT`).
    fn buf(&mut self, len: u32) -> (u64, u32) {
        let addr = DATA + (self.next_slot % SLOTS) * SLOT;
        self.next_slot += 1;
        (addr, len)
    }

    /// Adds a chain of the given buffer lengths, filling the readable
    /// buffers with a pattern first. Returns the head, or `None` if our
    /// driver refused (a full queue, or more buffers than the queue size).
    fn add(&mut self, r: &[u32], w: &[u32], seed: u8) -> Option<u16> {
        let readable: Vec<_> = r.iter().map(|&l| self.buf(l)).collect();
        let writable: Vec<_> = w.iter().map(|&l| self.buf(l)).collect();
        self.add_buffers(readable, writable, seed)
    }

    fn add_buffers(
        &mut self,
        readable: Vec<(u64, u32)>,
        writable: Vec<(u64, u32)>,
        seed: u8,
    ) -> Option<u16> {
        let mut k = 0;
        for &(a, l) in &readable {
            let bytes: Vec<u8> = (k..k + l as usize).map(|k| out_byte(seed, k)).collect();
            self.sh.mem.write(GuestAddress(a), &bytes).unwrap();
            k += l as usize;
        }
        let rd: Vec<_> = readable
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        let wr: Vec<_> = writable
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        match self.drv.add(&self.sh.mem, &rd, &wr) {
            Ok(token) => {
                let e = Expect {
                    readable,
                    writable,
                    seed,
                };
                let old = self.chains.insert(token.head(), e);
                assert!(old.is_none(), "token {} handed out twice", token.head());
                Some(token.head())
            }
            Err(e) => {
                assert!(!e.is_device_fault(), "add failed: {e}");
                None
            }
        }
    }

    /// Publishes and checks our kick decision against what the peer wrote.
    fn publish(&mut self) -> bool {
        self.drv.publish(&self.sh.mem).unwrap();
        let old = self.kicked_avail;
        let new = self
            .sh
            .mem
            .load_u16_acquire(self.layout.avail_idx())
            .unwrap();
        self.published_avail = new;
        // The peer wrote its advice where our layout says it is.
        if self.event_idx {
            let ev = self.sh.mem.read_u16(self.layout.avail_event()).unwrap();
            assert_eq!(ev, self.avail_event, "avail_event as the peer wrote it");
        } else {
            let flags = self.sh.mem.read_u16(self.layout.used_flags()).unwrap();
            let no_notify = flags & UsedFlags::NO_NOTIFY.bits() != 0;
            assert_eq!(
                no_notify, self.peer_no_notify,
                "NO_NOTIFY as the peer set it"
            );
        }
        let kick = self.drv.should_kick(&self.sh.mem).unwrap();
        if new == old {
            assert!(!kick, "kick with nothing new");
        } else {
            let expected = if self.event_idx {
                crossed(self.avail_event, old, new)
            } else {
                !self.peer_no_notify
            };
            assert_eq!(kick, expected, "kick decision over [{old}, {new})");
            if self.device_sleeping {
                assert!(kick, "missed kick: the peer waits and buffers arrived");
            }
        }
        self.kicked_avail = new;
        if kick {
            self.kicks_since_enable += 1;
            self.device_sleeping = false;
            if self.event_idx {
                assert!(self.kicks_since_enable <= 1, "EVENT_IDX suppression failed");
            }
        }
        kick
    }

    /// The peer pops up to `n` chains, checks each against what we added,
    /// reads the readable bytes, writes `frac`/255 of the writable bytes and
    /// returns the chain with that length.
    fn serve(&mut self, n: usize, frac: u8) -> usize {
        let mut served = 0;
        for _ in 0..n {
            let Some(chain) = self.dev.pop_descriptor_chain(&self.sh.gm) else {
                break;
            };
            let head = chain.head_index();
            let want = self
                .chains
                .get(&head)
                .cloned()
                .unwrap_or_else(|| panic!("peer popped head {head}, which we did not add"));
            assert!(
                !self.completed.contains_key(&head),
                "peer popped head {head} twice"
            );
            let seen: Vec<(u64, u32, bool)> = chain
                .clone()
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            assert_eq!(seen, want.descriptors(), "buffers of chain {head}");

            let mut reader = chain.clone().reader(&self.sh.gm).unwrap();
            assert_eq!(reader.available_bytes(), want.readable_len());
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            let expected: Vec<u8> = (0..want.readable_len())
                .map(|k| out_byte(want.seed, k))
                .collect();
            assert_eq!(got, expected, "readable bytes of chain {head}");

            let len = (u64::from(want.writable_len()) * u64::from(frac) / 255) as u32;
            let mut writer = chain.writer(&self.sh.gm).unwrap();
            assert_eq!(writer.available_bytes(), want.writable_len() as usize);
            let bytes: Vec<u8> = (0..len as usize).map(|k| in_byte(head, k)).collect();
            writer.write_all(&bytes).unwrap();
            assert_eq!(writer.bytes_written(), len as usize);

            self.dev.add_used(&self.sh.gm, head, len).unwrap();
            self.completed.insert(head, len);
            served += 1;
        }
        served
    }

    /// The peer decides whether to interrupt for what it added since its
    /// last decision; checked against the `used_event` our driver wrote.
    fn notify(&mut self) -> bool {
        let old = self.signalled_used;
        let new = self.dev.next_used();
        if self.event_idx {
            let ev = self.sh.mem.read_u16(self.layout.used_event()).unwrap();
            assert_eq!(ev, self.used_event, "used_event as our driver wrote it");
        }
        let irq = self.dev.needs_notification(&self.sh.gm).unwrap();
        self.signalled_used = new;
        if new == old {
            // The peer does not short-cut an empty window without EVENT_IDX.
            return irq;
        }
        if self.event_idx {
            assert_eq!(
                irq,
                crossed(self.used_event, old, new),
                "interrupt decision over [{old}, {new})"
            );
            if irq {
                self.interrupts_since_enable += 1;
                assert!(
                    self.interrupts_since_enable <= 1,
                    "EVENT_IDX suppression failed"
                );
            }
        } else {
            // NO_INTERRUPT is only a hint (§2.7.7), which the peer ignores.
            assert!(irq);
        }
        if self.driver_waiting {
            assert!(
                irq,
                "missed interrupt: our driver waits and buffers were used"
            );
        }
        if irq {
            self.driver_waiting = false;
        }
        irq
    }

    /// Our driver takes every completion and checks length and bytes.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        while let Some(used) = self.drv.pop_used(&self.sh.mem).unwrap() {
            let head = used.token.head();
            let want = self
                .chains
                .remove(&head)
                .unwrap_or_else(|| panic!("completion for {head}, not in flight"));
            let len = self
                .completed
                .remove(&head)
                .unwrap_or_else(|| panic!("completion for {head}, which the peer did not use"));
            assert_eq!(used.len, len, "used length of chain {head}");
            let mut k = 0usize;
            for &(a, l) in &want.writable {
                let take = (l as usize).min(len as usize - k);
                if take == 0 {
                    break;
                }
                let mut got = vec![0u8; take];
                self.sh.mem.read(GuestAddress(a), &mut got).unwrap();
                let exp: Vec<u8> = (k..k + take).map(|k| in_byte(head, k)).collect();
                assert_eq!(got, exp, "bytes the peer wrote into chain {head}");
                k += take;
            }
            self.reaped = self.reaped.wrapping_add(1);
            self.returned += 1;
            n += 1;
        }
        n
    }

    fn device_disable(&mut self) {
        self.dev.disable_notification(&self.sh.gm).unwrap();
        if !self.event_idx {
            self.peer_no_notify = true;
        }
        self.device_sleeping = false;
    }

    fn device_enable(&mut self) {
        let more = self.dev.enable_notification(&self.sh.gm).unwrap();
        if self.event_idx {
            self.avail_event = self.dev.next_avail();
        } else {
            self.peer_no_notify = false;
        }
        self.kicks_since_enable = 0;
        let pending = self.published_avail.wrapping_sub(self.dev.next_avail());
        assert_eq!(more, pending != 0, "the peer's re-check of the ring");
        self.device_sleeping = !more && self.kicked_avail == self.published_avail;
    }

    fn driver_disable(&mut self) {
        self.drv.disable_interrupts(&self.sh.mem).unwrap();
        if self.event_idx {
            self.used_event = self.reaped.wrapping_sub(1);
        }
        self.driver_no_interrupt = true;
        self.driver_waiting = false;
        self.interrupts_since_enable = 0;
    }

    fn driver_enable(&mut self) {
        // Enable, then re-check the ring (§2.7.14); a completion found by
        // the re-check may have passed `used_event` already, so the driver
        // enables again until the re-check finds nothing (as Linux's
        // `virtqueue_enable_cb` + `virtqueue_poll` loop does).
        loop {
            self.drv.enable_interrupts(&self.sh.mem).unwrap();
            if self.event_idx {
                self.used_event = self.reaped;
            }
            self.driver_no_interrupt = false;
            self.interrupts_since_enable = 0;
            if self.reap() == 0 {
                break;
            }
        }
        // With every used entry decided on, the driver now waits for an
        // interrupt.
        self.driver_waiting = self.signalled_used == self.dev.next_used();
    }

    /// Runs both sides until everything added has come back.
    fn drain(&mut self) {
        for _ in 0..4 * CAP {
            if self.chains.is_empty() {
                break;
            }
            self.publish();
            self.serve(CAP, 128);
            self.notify();
            self.reap();
        }
        assert!(self.chains.is_empty(), "chains lost: {:?}", self.chains);
        assert!(self.completed.is_empty());
        assert_eq!(self.drv.in_flight(), 0);
        assert_eq!(self.drv.num_free(), self.layout.size().get());
        assert!(self.dev.pop_descriptor_chain(&self.sh.gm).is_none());
    }
}

#[derive(Clone, Debug)]
enum Op {
    Add { r: Vec<u32>, w: Vec<u32>, seed: u8 },
    Publish,
    Serve { n: usize, frac: u8 },
    Notify,
    Reap,
    DeviceDisable,
    DeviceEnable,
    DriverDisable,
    DriverEnable,
}

fn lens(max: usize) -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(1u32..=SLOT as u32, 0..max)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (lens(7), lens(7), any::<u8>()).prop_map(|(r, w, seed)| Op::Add { r, w, seed }),
        3 => Just(Op::Publish),
        3 => (1usize..8, any::<u8>()).prop_map(|(n, frac)| Op::Serve { n, frac }),
        3 => Just(Op::Notify),
        2 => Just(Op::Reap),
        1 => Just(Op::DeviceDisable),
        1 => Just(Op::DeviceEnable),
        1 => Just(Op::DriverDisable),
        1 => Just(Op::DriverEnable),
    ]
}

impl Rig {
    fn run(&mut self, op: &Op) {
        match op {
            Op::Add { r, w, seed } => {
                if !r.is_empty() || !w.is_empty() {
                    self.add(r, w, *seed);
                }
            }
            Op::Publish => {
                self.publish();
            }
            &Op::Serve { n, frac } => {
                self.serve(n, frac);
            }
            Op::Notify => {
                self.notify();
            }
            Op::Reap => {
                self.reap();
            }
            Op::DeviceDisable => self.device_disable(),
            Op::DeviceEnable => self.device_enable(),
            Op::DriverDisable => self.driver_disable(),
            Op::DriverEnable => self.driver_enable(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random chain shapes, sizes and interleavings against the peer device.
    #[test]
    fn virtio_queue_device_serves_our_driver(
        size_log2 in 0u32..7,
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let mut rig = Rig::new(1 << size_log2, event_idx, indirect);
        for op in &ops {
            rig.run(op);
        }
        rig.drain();
    }
}

/// Every chain shape once, with and without indirect tables and event
/// indices: 1 readable, 1 writable, mixed, as long as the queue allows, and
/// longer than an indirect slot (which goes direct).
#[test]
fn each_chain_shape_round_trips() {
    let shapes: &[(&[u32], &[u32])] = &[
        (&[64], &[]),
        (&[], &[64]),
        (&[16], &[512]),
        (&[1, 2, 3], &[4, 5]),
        (&[], &[7, 7, 7, 7, 7, 7, 7, 7]),
        (&[100; 6], &[200; 6]),
        (&[1; 16], &[1; 16]),
    ];
    for event_idx in [false, true] {
        for indirect in [false, true] {
            let mut rig = Rig::new(32, event_idx, indirect);
            for (i, (r, w)) in shapes.iter().enumerate() {
                let head = rig.add(r, w, i as u8).expect("fits");
                assert!(rig.publish(), "notifications are on: kick");
                assert_eq!(rig.serve(1, 255), 1);
                assert!(rig.notify(), "interrupts are on: interrupt");
                assert_eq!(rig.reap(), 1);
                assert!(!rig.chains.contains_key(&head));
                rig.driver_enable();
                rig.device_enable();
            }
            rig.drain();
        }
    }
}

/// A buffer that straddles two adjacent regions of the mapping: both sides
/// split it the same way.
#[test]
fn buffer_across_a_region_boundary() {
    for indirect in [false, true] {
        let mut rig = Rig::new(8, true, indirect);
        let boundary = R2.0;
        let r = vec![(boundary - 100, 300)];
        let w = vec![(boundary - 7, 20), (boundary + 0x1000, 10)];
        rig.add_buffers(r, w, 9).expect("fits");
        rig.publish();
        assert_eq!(rig.serve(1, 255), 1);
        rig.notify();
        assert_eq!(rig.reap(), 1);
    }
}

/// A full queue of 256 single-buffer chains, then 70 000 chains in batches:
/// the free-running 16-bit indices wrap on both sides.
#[test]
fn full_queue_and_16_bit_wrap() {
    for event_idx in [false, true] {
        let mut rig = Rig::new(256, event_idx, false);
        for i in 0..256u32 {
            rig.add(&[], &[8], i as u8).expect("room for 256");
        }
        assert_eq!(rig.drv.num_free(), 0);
        assert!(rig.add(&[], &[8], 0).is_none(), "queue full");
        rig.drain();

        let mut rig = Rig::new(64, event_idx, true);
        let mut i = 0u32;
        while rig.returned < 70_000 {
            while rig.add(&[16], &[32, 32], i as u8).is_some() {
                i += 1;
            }
            rig.publish();
            rig.serve(usize::MAX, 200);
            rig.notify();
            rig.reap();
            rig.driver_enable();
            rig.device_enable();
        }
        assert_eq!(rig.dev.next_used(), rig.returned as u16, "indices wrapped");
        rig.drain();
    }
}

/// Notification suppression, step by step, both ways (§2.7.7, §2.7.10).
#[test]
fn notification_decisions_agree_step_by_step() {
    // Without EVENT_IDX: the peer's NO_NOTIFY silences our kicks.
    let mut rig = Rig::new(8, false, false);
    rig.add(&[8], &[], 1).unwrap();
    assert!(rig.publish(), "flags clear: kick");
    rig.device_disable();
    rig.add(&[8], &[], 2).unwrap();
    assert!(!rig.publish(), "NO_NOTIFY: no kick");
    rig.serve(8, 0);
    rig.device_enable();
    rig.add(&[8], &[], 3).unwrap();
    assert!(rig.publish(), "flags clear again: kick");
    rig.drain();

    // With EVENT_IDX: the peer's avail_event decides, and after one kick the
    // driver stays silent until the peer re-enables.
    let mut rig = Rig::new(8, true, false);
    rig.device_enable();
    rig.add(&[8], &[], 1).unwrap();
    assert!(rig.publish(), "avail_event 0 crossed: kick");
    rig.add(&[8], &[], 2).unwrap();
    assert!(!rig.publish(), "avail_event not re-armed: no kick");
    assert_eq!(rig.serve(8, 0), 2);
    rig.device_enable();
    assert_eq!(rig.avail_event, 2);
    rig.add(&[8], &[], 3).unwrap();
    rig.add(&[8], &[], 4).unwrap();
    assert!(rig.publish(), "batch crosses avail_event 2: one kick");

    // Used side: our used_event decides the peer's interrupts.
    rig.reap();
    rig.driver_enable();
    assert_eq!(rig.serve(1, 0), 1);
    assert!(rig.notify(), "used_event reached: interrupt");
    assert_eq!(rig.serve(1, 0), 1);
    assert!(!rig.notify(), "used_event not re-armed: no interrupt");
    rig.reap();
    rig.driver_disable();
    for s in 5..9 {
        rig.add(&[], &[8], s).unwrap();
    }
    rig.publish();
    rig.serve(8, 255);
    assert!(!rig.notify(), "interrupts disabled by used_event");
    rig.reap();
    rig.driver_enable();
    rig.add(&[], &[8], 9).unwrap();
    rig.publish();
    rig.serve(8, 255);
    assert!(rig.notify(), "re-enabled: interrupt");
    rig.drain();
}
