//! Hostile devices (issue 6): one test per way the harness's
//! `misbehave=<mode>` device breaks the rules, each against the fake
//! devices of `common`. Every mode ends in a typed error (the queue broken
//! until the driver is initialised again, as Linux's `BAD_RING` does) or a
//! bounded wait; the modes that leave the data intact (an interrupt storm,
//! a churning generation on a device whose configuration is not read)
//! complete correctly. Never a panic or an unbounded loop.

mod common;
#[path = "net_support/mod.rs"]
mod net_support;

use std::cell::Cell;

use common::{Bus, Env, FakeConsole, FakeDevice, FakeRng, RngMode, stream};
use guest_driver::console::{Console, ConsoleOptions};
use guest_driver::error::Error;
use guest_driver::rng::{Rng, RngOptions};
use guest_driver::transport::{Completion, Transport};
use guest_driver::wait::{Polls, Wait};
use virtio_core::features::DeviceType;
use virtio_core::memory::GuestMemory;
use virtio_core::mmio::DriverError as MmioError;
use virtio_core::mmio::driver::{CONFIG_RETRIES, RESET_POLLS, RegisterAccess};
use virtio_core::mmio::regs;
use virtio_core::split::{DriverError as QueueError, UsedElem};
use virtio_core::status::StatusError;

/// Register access to a fake device that lies in its registers the way the
/// harness's hostile slot does.
struct Hostile<'a, D: FakeDevice> {
    bus: &'a Bus<D>,
    /// `ConfigGeneration` differs on every read (§2.5.1).
    churn: bool,
    /// A write of 0 to `Status` is ignored (§2.4).
    never_reset: bool,
    generation: Cell<u32>,
    generation_reads: Cell<u32>,
    status_reads: Cell<u32>,
}

impl<'a, D: FakeDevice> Hostile<'a, D> {
    fn new(bus: &'a Bus<D>) -> Self {
        Hostile {
            bus,
            churn: false,
            never_reset: false,
            generation: Cell::new(0),
            generation_reads: Cell::new(0),
            status_reads: Cell::new(0),
        }
    }
}

impl<D: FakeDevice> RegisterAccess for Hostile<'_, D> {
    fn read32(&self, offset: u64) -> u32 {
        if offset == regs::STATUS {
            self.status_reads.set(self.status_reads.get() + 1);
        }
        if self.churn && offset == regs::CONFIG_GENERATION {
            self.generation_reads.set(self.generation_reads.get() + 1);
            self.generation.set(self.generation.get().wrapping_add(1));
            return self.generation.get();
        }
        self.bus.read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        if self.never_reset && offset == regs::STATUS && value == 0 && self.bus.read32(offset) != 0
        {
            return;
        }
        self.bus.write32(offset, value)
    }
    fn read16(&self, offset: u64) -> u16 {
        self.bus.read16(offset)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.bus.write16(offset, value)
    }
    fn read8(&self, offset: u64) -> u8 {
        self.bus.read8(offset)
    }
    fn write8(&self, offset: u64, value: u8) {
        self.bus.write8(offset, value)
    }
}

fn broken() -> Error {
    Error::Queue {
        queue: 0,
        err: QueueError::Broken,
    }
}

/// Reads of `rng` fail with `first`, then with `Broken` until `reinit`,
/// after which the (now honest) device serves again.
fn stays_broken_until_reinit<R: RegisterAccess>(
    rng: &mut Rng<&common::Pool, R>,
    bus: &Bus<FakeRng>,
    first: impl Fn(&QueueError) -> bool,
) {
    let err = rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err();
    match err {
        Error::Queue { queue: 0, err } => assert!(first(&err), "{err:?}"),
        other => panic!("{other:?}"),
    }
    assert!(err.is_device_fault());
    assert_eq!(
        rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err(),
        broken()
    );
    bus.with(|d| d.mode = RngMode::Normal);
    rng.reinit().unwrap();
    let mut buf = [0u8; 16];
    assert!(rng.read(&mut buf, &mut Polls::new(10)).unwrap() > 0);
}

fn hostile_rng(mode: RngMode, first: impl Fn(&QueueError) -> bool) {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = mode);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    stays_broken_until_reinit(&mut rng, &bus, first);
}

#[test]
fn used_id_out_of_range_breaks_the_queue_until_reinit_2_7_8() {
    hostile_rng(RngMode::IdOutOfRange, |e| {
        matches!(e, QueueError::UsedIdOutOfRange { .. })
    });
}

#[test]
fn used_id_not_in_flight_breaks_the_queue_until_reinit_2_7_8() {
    hostile_rng(RngMode::WrongId, |e| {
        matches!(e, QueueError::UsedIdNotInFlight { .. })
    });
}

#[test]
fn used_len_too_large_breaks_the_queue_until_reinit_2_7_8_2() {
    hostile_rng(RngMode::TooLong, |e| {
        matches!(e, QueueError::UsedLenTooLarge { .. })
    });
}

#[test]
fn used_idx_jump_breaks_the_queue_until_reinit_2_7_14() {
    hostile_rng(RngMode::IdxJump, |e| {
        matches!(e, QueueError::UsedIdxJump { .. })
    });
}

#[test]
fn used_twice_breaks_the_queue_and_no_bytes_are_taken_from_it_2_7_8() {
    let env = Env::new();
    let mem = env.memory();
    let bus = Bus::new(FakeRng::new(env.memory()));
    // The source has one buffer's worth: of two requests (heads 0 and
    // 1), only head 0 completes, honestly; head 1 stays in flight.
    bus.with(|d| {
        d.deferred = true;
        d.budget = Some(512);
    });
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    assert_eq!(rng.try_read(&mut [0u8; 600]).unwrap(), 0);
    bus.work();
    let mut buf = [0u8; 16];
    assert_eq!(rng.try_read(&mut buf).unwrap(), 16);
    let want: Vec<u8> = (0..16).map(stream).collect();
    assert_eq!(buf.as_slice(), want);
    // The device publishes the same element a second time.
    let layout = bus.regs(|r| r.queues()[0].layout()).unwrap();
    let first: UsedElem = mem.read_obj(layout.used_slot(0)).unwrap();
    mem.write_obj(layout.used_slot(1), &first).unwrap();
    mem.store_u16_release(layout.used_idx(), 2).unwrap();
    // The next read finds the duplicate (the index moved by one, with one
    // chain in flight, but not that one) and hands out no byte; the queue
    // stays broken.
    let mut rest = [0u8; 64];
    let err = rng.try_read(&mut rest).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Queue {
                queue: 0,
                err: QueueError::UsedIdTwice { id: 0 } | QueueError::UsedIdNotInFlight { id: 0 }
            }
        ),
        "{err:?}"
    );
    assert_eq!(rest, [0u8; 64]);
    assert_eq!(rng.try_read(&mut rest).unwrap_err(), broken());
    bus.with(|d| {
        d.deferred = false;
        d.budget = None;
    });
    rng.reinit().unwrap();
    assert!(rng.read(&mut rest, &mut Polls::new(10)).unwrap() > 0);
}

#[test]
fn config_generation_churn_is_an_error_after_bounded_reads_2_5_1() {
    let env = Env::new();
    let bus = Bus::new(FakeConsole::new(env.memory(), 1, false));
    let mut regs = Hostile::new(&bus);
    regs.churn = true;
    let mut t = Transport::probe(&regs, DeviceType::Console).unwrap();
    t.begin_init(0).unwrap();
    let err = t.driver().read_config_u16(0).unwrap_err();
    assert_eq!(err, MmioError::ConfigUnstable);
    assert!(Error::Transport(err).is_device_fault());
    assert!(Error::Transport(err).to_string().contains("§2.5.1"));
    let reads = regs.generation_reads.get();
    assert!(reads <= 2 * CONFIG_RETRIES + 2, "{reads}");
    // The console driver reads its size (§5.3.4) and gives up the same way.
    let env = Env::new();
    let bus = Bus::new(FakeConsole::new(env.memory(), 1, false));
    let mut regs = Hostile::new(&bus);
    regs.churn = true;
    let opts = ConsoleOptions {
        completion: Completion::Polling,
        event_idx: true,
        multiport: false,
    };
    let unstable = Error::Transport(MmioError::ConfigUnstable);
    match Console::<_, _, 1>::new(&env.hal, &regs, opts) {
        Err(e) => assert_eq!(e, unstable),
        Ok(con) => assert_eq!(con.size().unwrap_err(), unstable),
    }
}

#[test]
fn config_generation_churn_leaves_a_device_whose_config_is_unread_working_2_5_1() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let mut regs = Hostile::new(&bus);
    regs.churn = true;
    let mut rng = Rng::new(&env.hal, &regs, RngOptions::default()).unwrap();
    let mut buf = [0u8; 64];
    rng.read_exact(&mut buf, &mut Polls::new(10)).unwrap();
    let want: Vec<u8> = (0..64).map(stream).collect();
    assert_eq!(buf.as_slice(), want);
}

#[test]
fn reset_that_never_clears_fails_reinit_after_bounded_reads_2_4() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let mut regs = Hostile::new(&bus);
    regs.never_reset = true;
    let mut rng = Rng::new(&env.hal, &regs, RngOptions::default()).unwrap();
    let mut buf = [0u8; 16];
    assert!(rng.read(&mut buf, &mut Polls::new(10)).unwrap() > 0);
    let before = regs.status_reads.get();
    let err = rng.reinit().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport(MmioError::Status(StatusError::ResetIncomplete { .. }))
        ),
        "{err:?}"
    );
    assert!(err.is_device_fault());
    assert!(err.to_string().contains("§2.4"), "{err}");
    let polled = regs.status_reads.get() - before;
    assert!(polled <= RESET_POLLS + 4, "{polled}");
    // Dropping tries once more (bounded too) and keeps the memory.
    let free = env.hal.free_pages();
    drop(rng);
    assert_eq!(env.hal.free_pages(), free);
}

/// A wait during which the device raises its interrupt with
/// `InterruptStatus` bit 0 set although nothing was used (§4.2.2), each
/// time, and the driver's handler acknowledges it.
struct Storm<'a> {
    bus: &'a Bus<FakeRng>,
    polls: Polls,
    raised: u32,
}

impl Wait for Storm<'_> {
    fn wait(&mut self) -> bool {
        if self.bus.regs(|r| r.raise_used_buffer()) {
            self.raised += 1;
        }
        guest_driver::transport::acknowledge_interrupt(&self.bus);
        self.polls.wait()
    }
}

#[test]
fn interrupt_storm_neither_completes_nothing_nor_stops_real_completions_4_2_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.deferred = true);
    let opts = RngOptions {
        completion: Completion::Interrupt,
        event_idx: true,
        ..RngOptions::default()
    };
    let mut rng = Rng::new(&env.hal, &bus, opts).unwrap();
    // Nothing used: every interrupt of the storm is groundless, and the
    // read ends at its bound.
    let mut storm = Storm {
        bus: &bus,
        polls: Polls::new(200),
        raised: 0,
    };
    let mut buf = [0u8; 32];
    let err = rng.read(&mut buf, &mut storm).unwrap_err();
    assert_eq!(err, Error::Timeout { queue: 0 });
    assert_eq!(storm.raised, 201);
    // The device serves; amid the storm the bytes are the right ones.
    bus.work();
    let mut storm = Storm {
        bus: &bus,
        polls: Polls::new(200),
        raised: 0,
    };
    let n = rng.read(&mut buf, &mut storm).unwrap();
    let want: Vec<u8> = (0..n as u64).map(stream).collect();
    assert_eq!(&buf[..n], want);
    assert_eq!(bus.errors(), []);
}

#[test]
fn net_transmit_wait_reports_the_lie_itself_not_just_broken_2_7_8() {
    use backends::net::loopback::Loopback;
    use guest_driver::net::{Net, NetError, NetOptions};
    use net_support::{BCAST, DevBus, frame};
    use virtio_devices::net::NetConfig;

    let env = Env::new();
    let mem = env.memory();
    let bus = DevBus::new(
        Loopback::new(1024, 1 << 24),
        env.memory(),
        NetConfig::default(),
    );
    let opts = NetOptions {
        tx_buffers: 2,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    let src = net.mac();
    for seed in 0..2 {
        net.transmit(&frame(BCAST, src, 64, seed)).unwrap();
    }
    net.flush().unwrap();
    // The device used both frames; it now claims the first had id 999.
    let layout = bus.regs.borrow().queues()[1].layout().unwrap();
    let used: UsedElem = mem.read_obj(layout.used_slot(0)).unwrap();
    mem.write_obj(layout.used_slot(0), &UsedElem::new(999, used.len()))
        .unwrap();
    let err = net.wait_tx(&mut Polls::new(10)).unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Driver(Error::Queue {
                queue: 1,
                err: QueueError::UsedIdOutOfRange { id: 999, .. }
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        net.wait_tx(&mut Polls::new(10)).unwrap_err(),
        NetError::Driver(Error::Queue {
            queue: 1,
            err: QueueError::Broken
        })
    ));
}
