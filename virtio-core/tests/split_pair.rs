//! Our driver-side queue and our device-side queue over one memory (§2.7):
//! random interleavings of add, publish/kick, pop, add_used, publish/notify
//! and pop_used, with random chain shapes (direct, indirect, 1 to many
//! buffers), queue sizes, and EVENT_IDX on and off.
//!
//! Checked against a model: every buffer comes back exactly once with the
//! length the device wrote; every notification the spec requires is raised
//! (in both directions, §2.7.7 and §2.7.10); and suppression suppresses.

use std::collections::HashMap;

use proptest::prelude::*;
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::driver::IndirectArea;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::split::{DeviceQueue, DriverQueue, Token};
use virtio_core::testing::OwnedMemory;

const CAP: usize = 64;
const DATA: u64 = 0x10_0000;
const SLOT: u64 = 0x100;

#[derive(Clone, Debug)]
enum Op {
    /// The driver adds a chain of `r` readable and `w` writable buffers.
    Add { r: usize, w: usize, seed: u16 },
    /// The driver publishes and decides whether to kick.
    Publish,
    /// The device pops up to `n` chains and returns each as used, writing
    /// `frac`/256 of its writable bytes.
    Serve { n: usize, frac: u8 },
    /// The device publishes its used entries and decides whether to
    /// interrupt.
    DevicePublish,
    /// The driver takes every completion.
    Reap,
    /// The device turns driver notifications off / back on.
    DeviceDisable,
    /// The device re-enables notifications (and sleeps if nothing is
    /// pending).
    DeviceEnable,
    /// The driver turns interrupts off / back on (then re-checks the ring).
    DriverDisable,
    /// The driver re-enables interrupts.
    DriverEnable,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, 0usize..4, any::<u16>()).prop_map(|(r, w, seed)| Op::Add { r, w, seed }),
        3 => Just(Op::Publish),
        3 => (1usize..6, any::<u8>()).prop_map(|(n, frac)| Op::Serve { n, frac }),
        3 => Just(Op::DevicePublish),
        2 => Just(Op::Reap),
        1 => Just(Op::DeviceDisable),
        1 => Just(Op::DeviceEnable),
        1 => Just(Op::DriverDisable),
        1 => Just(Op::DriverEnable),
    ]
}

/// What the driver handed over for one token.
#[derive(Clone, Debug)]
struct Chain {
    readable: Vec<(u64, u32)>,
    writable: Vec<(u64, u32)>,
}

impl Chain {
    fn writable_len(&self) -> u32 {
        self.writable.iter().map(|b| b.1).sum()
    }
}

use virtio_core::testing::window_contains as crossed;

struct Pair {
    mem: OwnedMemory,
    layout: QueueLayout,
    drv: DriverQueue<CAP>,
    dev: DeviceQueue,
    event_idx: bool,
    /// Chains added by the driver and not yet taken back.
    chains: HashMap<Token, Chain>,
    /// Completions the device produced and the driver has not yet taken.
    completed: HashMap<u16, u32>,
    /// Buffer address allocator.
    next_buf: u64,
    // Notification model.
    published_avail: u16,
    kicked_avail: u16,
    published_used: u16,
    signalled_used: u16,
    device_no_notify: bool,
    device_sleeping: bool,
    driver_no_interrupt: bool,
    driver_waiting: bool,
    kicks: u32,
    interrupts: u32,
    /// Kicks since the device last re-enabled (EVENT_IDX: at most one).
    kicks_since_enable: u32,
    /// Interrupts since the driver last re-enabled (EVENT_IDX: at most one).
    interrupts_since_enable: u32,
    returned: u32,
}

impl Pair {
    fn new(size: u16, event_idx: bool, indirect: bool) -> Pair {
        let mem = OwnedMemory::new(GuestAddress(0), 0x40_0000);
        let size = QueueSize::new(u32::from(size)).unwrap();
        let layout = QueueLayout::new(
            size,
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        )
        .unwrap();
        let area = indirect.then(|| IndirectArea::new(GuestAddress(0x8_0000), 8).unwrap());
        let mut drv = DriverQueue::<CAP>::new(layout, event_idx, area).unwrap();
        drv.init(&mem).unwrap();
        let dev = DeviceQueue::new(layout, event_idx, indirect);
        Pair {
            mem,
            layout,
            drv,
            dev,
            event_idx,
            chains: HashMap::new(),
            completed: HashMap::new(),
            next_buf: 0,
            published_avail: 0,
            kicked_avail: 0,
            published_used: 0,
            signalled_used: 0,
            device_no_notify: false,
            device_sleeping: false,
            driver_no_interrupt: false,
            driver_waiting: false,
            kicks: 0,
            interrupts: 0,
            kicks_since_enable: 0,
            interrupts_since_enable: 0,
            returned: 0,
        }
    }

    fn buf(&mut self, seed: u16) -> (u64, u32) {
        let addr = DATA + (self.next_buf % 1024) * SLOT;
        self.next_buf += 1;
        (addr, 1 + u32::from(seed) % (SLOT as u32))
    }

    fn add(&mut self, r: usize, w: usize, seed: u16) {
        if r + w == 0 {
            return;
        }
        let mut chain = Chain {
            readable: vec![],
            writable: vec![],
        };
        for i in 0..r {
            let b = self.buf(seed.wrapping_add(i as u16 * 31));
            chain.readable.push(b);
        }
        for i in 0..w {
            let b = self.buf(seed.wrapping_add(i as u16 * 57 + 7));
            chain.writable.push(b);
        }
        let rd: Vec<_> = chain
            .readable
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        let wr: Vec<_> = chain
            .writable
            .iter()
            .map(|&(a, l)| (GuestAddress(a), l))
            .collect();
        match self.drv.add(&self.mem, &rd, &wr) {
            Ok(token) => {
                assert!(self.chains.insert(token, chain).is_none(), "token reused");
            }
            Err(e) => assert!(!e.is_device_fault(), "add failed: {e}"),
        }
    }

    fn publish(&mut self) {
        self.drv.publish(&self.mem).unwrap();
        let old = self.kicked_avail;
        let new = self.drv_avail_idx();
        self.published_avail = new;
        let kick = self.drv.should_kick(&self.mem).unwrap();
        if new != old {
            let expected = if self.event_idx {
                let event = self.mem.read_u16(self.layout.avail_event()).unwrap();
                crossed(event, old, new)
            } else {
                !self.device_no_notify
            };
            assert_eq!(kick, expected, "kick decision over [{old}, {new})");
            if self.device_sleeping {
                assert!(kick, "missed kick: the device sleeps and buffers arrived");
            }
            if !self.event_idx && self.device_no_notify {
                assert!(!kick, "NO_NOTIFY must suppress the kick");
            }
        } else {
            assert!(!kick, "kick with nothing new");
        }
        self.kicked_avail = new;
        if kick {
            self.kicks += 1;
            self.kicks_since_enable += 1;
            self.device_sleeping = false;
            if self.event_idx {
                assert!(self.kicks_since_enable <= 1, "EVENT_IDX suppression failed");
            }
        }
    }

    fn drv_avail_idx(&self) -> u16 {
        self.mem.load_u16_acquire(self.layout.avail_idx()).unwrap()
    }

    fn serve(&mut self, n: usize, frac: u8) {
        for _ in 0..n {
            let Some(chain) = self.dev.pop(&self.mem).unwrap() else {
                break;
            };
            let head = chain.head();
            let expected = self
                .chains
                .get(&token_of(&self.chains, head))
                .cloned()
                .expect("device popped a chain the driver added");
            let descs: Vec<(u64, u32, bool)> = chain
                .map(|d| d.map(|d| (d.addr().0, d.len(), d.is_write_only())))
                .collect::<Result<_, _>>()
                .unwrap();
            let want: Vec<(u64, u32, bool)> = expected
                .readable
                .iter()
                .map(|&(a, l)| (a, l, false))
                .chain(expected.writable.iter().map(|&(a, l)| (a, l, true)))
                .collect();
            assert_eq!(descs, want, "chain seen by the device");
            let wl = expected.writable_len();
            let len = (u64::from(wl) * u64::from(frac) / 255) as u32;
            // Write through the chain writer so the bytes really move.
            let chain = virtio_core::split::DescriptorChain::new(
                &self.mem,
                self.layout.desc_table(),
                self.layout.size().get(),
                head,
                true,
            )
            .unwrap();
            let (_, mut w) = chain.reader_writer::<16>().unwrap();
            w.write_all(&vec![0xa5; len as usize]).unwrap();
            assert_eq!(w.written(), len);
            self.dev.add_used(&self.mem, head, len).unwrap();
            assert!(self.completed.insert(head, len).is_none(), "double use");
        }
    }

    fn device_publish(&mut self) {
        self.dev.publish_used(&self.mem).unwrap();
        let old = self.signalled_used;
        let new = self.dev.next_used();
        self.published_used = new;
        let irq = self.dev.needs_notification(&self.mem).unwrap();
        if new != old {
            let expected = if self.event_idx {
                let event = self.mem.read_u16(self.layout.used_event()).unwrap();
                crossed(event, old, new)
            } else {
                !self.driver_no_interrupt
            };
            assert_eq!(irq, expected, "interrupt decision over [{old}, {new})");
            if self.driver_waiting {
                assert!(
                    irq,
                    "missed interrupt: the driver waits and buffers were used"
                );
            }
        } else {
            assert!(!irq, "interrupt with nothing new");
        }
        self.signalled_used = new;
        if irq {
            self.interrupts += 1;
            self.interrupts_since_enable += 1;
            self.driver_waiting = false;
            if self.event_idx {
                assert!(
                    self.interrupts_since_enable <= 1,
                    "EVENT_IDX suppression failed"
                );
            } else {
                assert!(!self.driver_no_interrupt, "NO_INTERRUPT must suppress");
            }
        }
    }

    fn reap(&mut self) -> usize {
        let mut n = 0;
        while let Some(used) = self.drv.pop_used(&self.mem).unwrap() {
            let chain = self
                .chains
                .remove(&used.token)
                .expect("completion for a chain in flight");
            let len = self
                .completed
                .remove(&used.token.head())
                .expect("the device completed it");
            assert_eq!(used.len, len, "used length");
            assert!(len <= chain.writable_len());
            self.returned += 1;
            n += 1;
        }
        n
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Add { r, w, seed } => self.add(r, w, seed),
            Op::Publish => self.publish(),
            Op::Serve { n, frac } => self.serve(n, frac),
            Op::DevicePublish => self.device_publish(),
            Op::Reap => {
                self.reap();
            }
            Op::DeviceDisable => {
                self.dev.disable_notification(&self.mem).unwrap();
                self.device_no_notify = !self.event_idx;
                self.device_sleeping = false;
            }
            Op::DeviceEnable => {
                let more = self.dev.enable_notification(&self.mem).unwrap();
                self.device_no_notify = false;
                self.kicks_since_enable = 0;
                // With nothing pending, the device waits for a kick. What
                // was published but not yet decided on must then kick.
                let pending = self.published_avail.wrapping_sub(self.dev.next_avail());
                assert_eq!(more, pending != 0, "enable_notification saw the ring");
                self.device_sleeping = !more && self.kicked_avail == self.published_avail;
            }
            Op::DriverDisable => {
                self.drv.disable_interrupts(&self.mem).unwrap();
                self.driver_no_interrupt = true;
                self.driver_waiting = false;
                self.interrupts_since_enable = 0;
            }
            Op::DriverEnable => {
                // The driver's wait loop (§2.7.14): enable, then re-check
                // the ring; anything that arrived meanwhile is taken and the
                // enable repeated, so `used_event` names the next entry.
                loop {
                    let pending = self.drv.enable_interrupts(&self.mem).unwrap();
                    let taken = self.reap();
                    assert_eq!(pending, taken > 0, "enable_interrupts saw the ring");
                    if !pending {
                        break;
                    }
                }
                self.driver_no_interrupt = false;
                self.interrupts_since_enable = 0;
                self.driver_waiting = true;
            }
        }
    }

    /// Runs both sides to quiescence: everything added comes back.
    fn drain(&mut self) {
        for _ in 0..4 * CAP {
            if self.chains.is_empty() {
                break;
            }
            self.publish();
            self.serve(CAP, 128);
            self.device_publish();
            self.reap();
        }
        assert!(self.chains.is_empty(), "chains lost: {:?}", self.chains);
        assert!(self.completed.is_empty());
        assert_eq!(self.drv.in_flight(), 0);
        assert_eq!(self.drv.num_free(), self.layout.size().get());
    }
}

/// The token whose head is `head` (tokens are heads in our driver).
fn token_of(chains: &HashMap<Token, Chain>, head: u16) -> Token {
    *chains
        .keys()
        .find(|t| t.head() == head)
        .expect("head of a chain in flight")
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn driver_and_device_agree(
        size_log2 in 0u32..7,
        event_idx in any::<bool>(),
        indirect in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 40 } else { 300 }),
    ) {
        let mut p = Pair::new(1 << size_log2, event_idx, indirect);
        for op in &ops {
            p.run(op);
        }
        p.drain();
    }
}

#[test]
fn long_run_wraps_the_16_bit_indices() {
    let n = if cfg!(miri) { 100 } else { 70_000 };
    let mut p = Pair::new(4, true, true);
    for i in 0..n {
        p.run(&Op::Add {
            r: 1,
            w: (i % 3) as usize,
            seed: i as u16,
        });
        p.run(&Op::Publish);
        p.run(&Op::Serve { n: 2, frac: 200 });
        p.run(&Op::DevicePublish);
        p.run(&Op::Reap);
        if i % 7 == 0 {
            p.run(&Op::DeviceEnable);
            p.run(&Op::DriverEnable);
        }
    }
    p.drain();
    assert!(p.returned >= n - 4);
}
