//! The legacy virtio-mmio transport (version 1, §4.2.4; QEMU's default for
//! `virtio-*-device`): a scripted version 1 register file (virtio-core's
//! device side is version 2 only) in front of the same fake devices. The
//! driver must program `GuestPageSize`, `QueueNum`, `QueueAlign` and
//! `QueuePFN`, skip FEATURES_OK (§3.1.2) and never accept
//! `VIRTIO_F_VERSION_1`.

mod common;

use std::cell::RefCell;

use common::{Env, FakeConsole, FakeDevice, FakeRng, PHYS, POOL_PAGES, stream};
use guest_driver::console::{Console, ConsoleOptions, event};
use guest_driver::error::Error;
use guest_driver::rng::{Rng, RngOptions};
use guest_driver::transport::{Completion, acknowledge_interrupt};
use guest_driver::wait::Polls;
use virtio_core::features::TransportFeatures;
use virtio_core::mmio::DriverError as MmioError;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::regs::{self, MAGIC};
use virtio_core::split::{QueueLayout, QueueSize};

#[derive(Clone, Copy, Default)]
struct LegacyQueue {
    num: u32,
    align: u32,
    pfn: u32,
}

struct State<D> {
    dev: D,
    status: u32,
    host_sel: u32,
    guest_sel: u32,
    guest_features: u64,
    page_size: u32,
    queue_sel: u32,
    queues: Vec<LegacyQueue>,
    interrupt: u32,
    /// Every write: (offset, value).
    writes: Vec<(u64, u32)>,
    /// Whether `QueuePFN` keeps what is written.
    pfn_sticks: bool,
}

/// A version 1 register file over a fake device.
struct LegacyBus<D> {
    s: RefCell<State<D>>,
}

impl<D: FakeDevice> LegacyBus<D> {
    fn new(dev: D) -> Self {
        let n = dev.num_queues() as usize;
        LegacyBus {
            s: RefCell::new(State {
                dev,
                status: 0,
                host_sel: 0,
                guest_sel: 0,
                guest_features: 0,
                page_size: 0,
                queue_sel: 0,
                queues: vec![LegacyQueue::default(); n],
                interrupt: 0,
                writes: Vec::new(),
                pfn_sticks: true,
            }),
        }
    }

    fn writes_to(&self, offset: u64) -> Vec<u32> {
        let s = self.s.borrow();
        s.writes
            .iter()
            .filter(|w| w.0 == offset)
            .map(|w| w.1)
            .collect()
    }

    fn with<T>(&self, f: impl FnOnce(&mut D) -> T) -> T {
        f(&mut self.s.borrow_mut().dev)
    }

    fn work(&self) {
        let mut s = self.s.borrow_mut();
        if s.dev.work() {
            s.interrupt |= 1;
        }
    }
}

impl<D: FakeDevice> RegisterAccess for LegacyBus<D> {
    fn read32(&self, offset: u64) -> u32 {
        let s = self.s.borrow();
        let q = s.queues.get(s.queue_sel as usize).copied();
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => 1,
            regs::DEVICE_ID => s.dev.device_id(),
            regs::DEVICE_FEATURES => match s.host_sel {
                // No VERSION_1 or any bit above 31 on a legacy device.
                0 => s.dev.features() as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => match q {
                Some(_) => u32::from(s.dev.queue_max(s.queue_sel as u16)),
                None => 0,
            },
            regs::QUEUE_PFN => match q {
                Some(q) if s.pfn_sticks => q.pfn,
                _ => 0,
            },
            regs::INTERRUPT_STATUS => s.interrupt,
            regs::STATUS => s.status,
            o if o >= regs::CONFIG => {
                let mut b = [0u8; 4];
                s.dev.read_config(o - regs::CONFIG, &mut b);
                u32::from_le_bytes(b)
            }
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        let mut s = self.s.borrow_mut();
        s.writes.push((offset, value));
        let sel = s.queue_sel as usize;
        match offset {
            regs::DEVICE_FEATURES_SEL => s.host_sel = value,
            regs::DRIVER_FEATURES_SEL => s.guest_sel = value,
            regs::DRIVER_FEATURES => {
                let shift = if s.guest_sel == 0 { 0 } else { 32 };
                let keep = !(0xffff_ffffu64 << shift);
                s.guest_features = (s.guest_features & keep) | (u64::from(value) << shift);
            }
            regs::GUEST_PAGE_SIZE => s.page_size = value,
            regs::QUEUE_SEL => s.queue_sel = value,
            regs::QUEUE_NUM => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.num = value;
                }
            }
            regs::QUEUE_ALIGN => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.align = value;
                }
            }
            regs::QUEUE_PFN => {
                if let Some(q) = s.queues.get_mut(sel) {
                    q.pfn = value;
                }
            }
            // The device serves the queue; a used buffer raises the
            // interrupt.
            regs::QUEUE_NOTIFY if s.dev.notified(value as u16) => s.interrupt |= 1,
            regs::INTERRUPT_ACK => s.interrupt &= !value,
            regs::STATUS => {
                let old = s.status;
                s.status = value;
                if value == 0 {
                    s.dev.stop();
                    s.guest_features = 0;
                    for q in s.queues.iter_mut() {
                        *q = LegacyQueue::default();
                    }
                } else if value & 4 != 0 && old & 4 == 0 {
                    let page = u64::from(s.page_size);
                    let layouts: Vec<Option<QueueLayout>> = s
                        .queues
                        .iter()
                        .map(|q| {
                            (q.pfn != 0).then(|| {
                                QueueLayout::legacy(
                                    QueueSize::new(q.num).unwrap(),
                                    virtio_core::GuestAddress(u64::from(q.pfn) * page),
                                    u64::from(q.align),
                                )
                                .unwrap()
                            })
                        })
                        .collect();
                    let f = s.guest_features;
                    s.dev.start(f, &layouts).unwrap();
                }
            }
            o if o >= regs::CONFIG => s.dev.write_config(o - regs::CONFIG, &value.to_le_bytes()),
            _ => {}
        }
    }

    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        self.s
            .borrow()
            .dev
            .read_config(offset - regs::CONFIG, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.s
            .borrow_mut()
            .dev
            .write_config(offset - regs::CONFIG, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        self.s
            .borrow()
            .dev
            .read_config(offset - regs::CONFIG, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        self.s
            .borrow_mut()
            .dev
            .write_config(offset - regs::CONFIG, &[value]);
    }
}

#[test]
fn legacy_rng_init_sequence_and_queue_registers_4_2_4_3_1_2() {
    let env = Env::new();
    let bus = LegacyBus::new(FakeRng::new(env.memory()));
    {
        let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
        let mut buf = vec![0u8; 10_000];
        rng.read_exact(&mut buf, &mut Polls::new(10)).unwrap();
        let want: Vec<u8> = (0..buf.len() as u64).map(stream).collect();
        assert_eq!(buf, want);
        // §3.1.2: reset, ACKNOWLEDGE, DRIVER, DRIVER_OK; no FEATURES_OK.
        assert_eq!(bus.writes_to(regs::STATUS), [0, 1, 3, 7]);
        assert_eq!(bus.writes_to(regs::GUEST_PAGE_SIZE), [4096]);
        assert_eq!(bus.writes_to(regs::QUEUE_NUM), [16]);
        assert_eq!(bus.writes_to(regs::QUEUE_ALIGN), [4096]);
        // The first pool pages: the queue's page number as the device
        // sees it (not the host address).
        assert_eq!(bus.writes_to(regs::QUEUE_PFN), [(PHYS / 4096) as u32]);
        let f = bus.s.borrow().guest_features;
        assert_eq!(f & TransportFeatures::VERSION_1.bits(), 0);
        assert_eq!(f, TransportFeatures::RING_EVENT_IDX.bits());
    }
    // Dropped: reset, memory back.
    assert_eq!(bus.writes_to(regs::STATUS).last(), Some(&0));
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn legacy_rng_interrupt_driven_4_2_4() {
    let env = Env::new();
    let bus = LegacyBus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.deferred = true);
    let opts = RngOptions {
        completion: Completion::Interrupt,
        event_idx: false,
        ..RngOptions::default()
    };
    let mut rng = Rng::new(&env.hal, &bus, opts).unwrap();
    let mut acks = 0;
    let mut budget = 20;
    let mut wait = || {
        bus.work();
        if !acknowledge_interrupt(&bus).is_empty() {
            acks += 1;
        }
        budget -= 1;
        budget > 0
    };
    let mut buf = [0u8; 600];
    rng.read_exact(&mut buf, &mut wait).unwrap();
    let want: Vec<u8> = (0..600).map(stream).collect();
    assert_eq!(buf.to_vec(), want);
    assert!(acks > 0);
}

#[test]
fn legacy_console_multiport_two_ports_5_3_6_2() {
    let env = Env::new();
    let bus = LegacyBus::new(FakeConsole::new(env.memory(), 2, true));
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    assert!(con.is_multiport());
    con.wait_for(
        |c| c.port(1).is_some_and(|p| p.host_open),
        &mut Polls::new(10),
    )
    .unwrap();
    con.write_port(0, b"zero", &mut Polls::new(10)).unwrap();
    con.write_port(1, b"one", &mut Polls::new(10)).unwrap();
    assert_eq!(
        bus.with(|d| d.tx.clone()),
        [b"zero".to_vec(), b"one".to_vec()]
    );
    bus.with(|d| d.input[1].extend(b"in".iter()));
    bus.work();
    let mut buf = [0u8; 8];
    let n = con.read_port(1, &mut buf, &mut Polls::new(10)).unwrap();
    assert_eq!(&buf[..n], b"in");
    let sent = bus.with(|d| d.from_driver.clone());
    assert_eq!(sent[0], (0, event::DEVICE_READY, 1));
    // Six queues, each at its own page-aligned PFN.
    let pfns = bus.writes_to(regs::QUEUE_PFN);
    assert_eq!(pfns.len(), 6);
    assert!(pfns.iter().all(|p| *p != 0));
    assert_eq!(bus.writes_to(regs::STATUS), [0, 1, 3, 7]);
}

#[test]
fn legacy_queue_pfn_that_does_not_stick_is_refused_4_2_4() {
    let env = Env::new();
    let bus = LegacyBus::new(FakeRng::new(env.memory()));
    bus.s.borrow_mut().pfn_sticks = false;
    let err = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap_err();
    assert_eq!(
        err,
        Error::Transport(MmioError::QueueNotEnabled { queue: 0 })
    );
    // FAILED, then reset; the pages came back.
    let status = bus.writes_to(regs::STATUS);
    assert!(status.iter().any(|s| s & 0x80 != 0), "{status:?}");
    assert_eq!(status.last(), Some(&0));
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}
