//! The entropy driver (§5.4) against a fake device behind virtio-core's
//! version 2 register file: the stream arrives in order, short completions
//! count, interrupts and polling both work, and every hostile answer is a
//! typed error, never a hang or a panic.

mod common;

use common::{Bus, Env, FakeRng, POOL_PAGES, RngMode, stream};
use guest_driver::error::Error;
use guest_driver::rng::{Rng, RngOptions, SLOT_SIZE};
use guest_driver::transport::{Completion, acknowledge_interrupt};
use guest_driver::wait::Polls;
use virtio_core::features::TransportFeatures;
use virtio_core::mmio::DriverError as MmioError;
use virtio_core::split::DriverError as QueueError;
use virtio_core::status::DeviceStatus;

fn opts(completion: Completion, event_idx: bool) -> RngOptions {
    RngOptions {
        completion,
        event_idx,
        ..RngOptions::default()
    }
}

#[test]
fn rng_reads_the_device_stream_in_order_5_4_6() {
    for event_idx in [false, true] {
        let env = Env::new();
        let bus = Bus::new(FakeRng::new(env.memory()));
        let mut rng = Rng::new(&env.hal, &bus, opts(Completion::Polling, event_idx)).unwrap();
        let negotiated = rng.features() & TransportFeatures::RING_EVENT_IDX.bits() != 0;
        assert_eq!(negotiated, event_idx);
        let mut got = Vec::new();
        let sizes = [1usize, 7, 512, 513, 4096, 100, 9000, 3];
        let mut i = 0;
        while got.len() < 100 * 1024 {
            let mut buf = vec![0u8; sizes[i % sizes.len()]];
            i += 1;
            let n = rng.read(&mut buf, &mut Polls::new(10)).unwrap();
            assert!(n >= 1 && n <= buf.len());
            got.extend_from_slice(&buf[..n]);
        }
        let want: Vec<u8> = (0..got.len() as u64).map(stream).collect();
        assert_eq!(got, want);
        // The register file refused nothing the driver did.
        assert_eq!(bus.errors(), []);
        assert!(bus.status().contains(DeviceStatus::DRIVER_OK));
    }
}

#[test]
fn rng_larger_buffers_carry_the_stream_in_fewer_requests_5_4_6() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let options = RngOptions {
        slot_size: 4096,
        ..RngOptions::default()
    };
    assert_eq!(options.pages(), 2 + 16);
    let mut rng = Rng::new(&env.hal, &bus, options).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let n = rng.read(&mut buf, &mut Polls::new(10)).unwrap();
    // One wait: the 16 buffers in flight at 4 KiB each cover the read.
    assert_eq!(n, 64 << 10);
    let want: Vec<u8> = (0..n as u64).map(stream).collect();
    assert_eq!(buf, want);
    // Out of range: clamped.
    let huge = RngOptions {
        slot_size: u32::MAX,
        ..RngOptions::default()
    };
    assert_eq!(huge.slot(), guest_driver::rng::MAX_SLOT_SIZE);
    assert_eq!(
        RngOptions {
            slot_size: 0,
            ..huge
        }
        .slot(),
        1
    );
}

#[test]
fn rng_read_exact_fills_the_buffer_across_requests_5_4_6() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let mut buf = vec![0u8; 3 * SLOT_SIZE as usize + 17];
    rng.read_exact(&mut buf, &mut Polls::new(10)).unwrap();
    let want: Vec<u8> = (0..buf.len() as u64).map(stream).collect();
    assert_eq!(buf, want);
    assert_eq!(rng.read(&mut [], &mut Polls::new(0)), Ok(0));
}

#[test]
fn rng_short_completions_are_bytes_not_errors_5_4_6_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = RngMode::Short(7));
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let mut buf = [0u8; 1000];
        let n = rng.read(&mut buf, &mut Polls::new(10)).unwrap();
        assert!(n <= 7 * 2, "{n}: each request returns at most 7 bytes");
        got.extend_from_slice(&buf[..n]);
    }
    let want: Vec<u8> = (0..got.len() as u64).map(stream).collect();
    assert_eq!(got, want);
}

#[test]
fn rng_interrupt_mode_wakes_on_used_buffer_notification_2_7_7() {
    for event_idx in [false, true] {
        let env = Env::new();
        let bus = Bus::new(FakeRng::new(env.memory()));
        bus.with(|d| d.deferred = true);
        let mut rng = Rng::new(&env.hal, &bus, opts(Completion::Interrupt, event_idx)).unwrap();
        let mut delivered = 0;
        let mut got = Vec::new();
        while got.len() < 20_000 {
            // The device works while the driver waits; the "interrupt
            // handler" acknowledges what it raised.
            let mut budget = 10;
            let mut wait = || {
                bus.work();
                if bus.irq_asserted() {
                    delivered += 1;
                    acknowledge_interrupt(&bus);
                }
                budget -= 1;
                budget > 0
            };
            let mut buf = [0u8; 3000];
            let n = rng.read(&mut buf, &mut wait).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            delivered > 0 && bus.raised.get() > 0,
            "event_idx {event_idx}"
        );
        assert!(!bus.irq_asserted());
        let want: Vec<u8> = (0..got.len() as u64).map(stream).collect();
        assert_eq!(got, want);
        assert_eq!(bus.errors(), []);
    }
}

#[test]
fn rng_polling_mode_suppresses_interrupts_2_7_7_1() {
    for event_idx in [false, true] {
        let env = Env::new();
        let bus = Bus::new(FakeRng::new(env.memory()));
        bus.with(|d| d.deferred = true);
        let mut rng = Rng::new(&env.hal, &bus, opts(Completion::Polling, event_idx)).unwrap();
        let mut got = 0;
        while got < 20_000 {
            let mut budget = 10;
            let mut wait = || {
                bus.work();
                budget -= 1;
                budget > 0
            };
            got += rng.read(&mut [0u8; 3000], &mut wait).unwrap();
        }
        assert_eq!(bus.raised.get(), 0, "event_idx {event_idx}");
    }
}

#[test]
fn rng_zero_length_completion_is_an_error_5_4_6_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = RngMode::Zero);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let err = rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err();
    assert_eq!(err, Error::EmptyEntropy { queue: 0 });
    assert!(err.is_device_fault());
    assert!(err.to_string().contains("§5.4.6.2"), "{err}");
    // The queue is not broken: a device that behaves again is usable.
    bus.with(|d| d.mode = RngMode::Normal);
    let mut buf = [0u8; 16];
    let n = rng.read(&mut buf, &mut Polls::new(10)).unwrap();
    assert!(n > 0);
}

#[test]
fn rng_used_len_beyond_the_buffer_breaks_the_queue_2_7_8_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = RngMode::TooLong);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let err = rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Queue {
                queue: 0,
                err: QueueError::UsedLenTooLarge { len, writable, .. }
            } if len == SLOT_SIZE + 1 && writable == SLOT_SIZE
        ),
        "{err:?}"
    );
    // Broken until initialised again (Linux virtio_ring's rule).
    let again = rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err();
    assert_eq!(
        again,
        Error::Queue {
            queue: 0,
            err: QueueError::Broken
        }
    );
    bus.with(|d| d.mode = RngMode::Normal);
    rng.reinit().unwrap();
    let mut buf = [0u8; 16];
    assert!(rng.read(&mut buf, &mut Polls::new(10)).unwrap() > 0);
    assert_eq!(bus.with(|d| d.starts), 2);
}

#[test]
fn rng_used_ids_not_in_flight_break_the_queue_2_7_8() {
    for (mode, check) in [
        (
            RngMode::WrongId,
            (|e: &QueueError| matches!(e, QueueError::UsedIdNotInFlight { .. }))
                as fn(&QueueError) -> bool,
        ),
        (RngMode::IdOutOfRange, |e| {
            matches!(e, QueueError::UsedIdOutOfRange { id: 999, .. })
        }),
        (RngMode::IdxJump, |e| {
            matches!(e, QueueError::UsedIdxJump { .. })
        }),
    ] {
        let env = Env::new();
        let bus = Bus::new(FakeRng::new(env.memory()));
        bus.with(|d| d.mode = mode);
        let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
        let err = rng.read(&mut [0u8; 16], &mut Polls::new(10)).unwrap_err();
        match err {
            Error::Queue { queue: 0, err } => assert!(check(&err), "{mode:?}: {err:?}"),
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(err.is_device_fault());
    }
}

#[test]
fn rng_stalled_device_times_out_and_keeps_the_request_2_7_14() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = RngMode::Stall);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let mut polls = Polls::new(50);
    let err = rng.read(&mut [0u8; 64], &mut polls).unwrap_err();
    assert_eq!(err, Error::Timeout { queue: 0 });
    assert_eq!(polls.left(), 0);
    // A second timed-out read adds no request: one is in flight already.
    let notifies = bus.notifies.get();
    assert!(rng.read(&mut [0u8; 64], &mut Polls::new(5)).is_err());
    assert_eq!(bus.notifies.get(), notifies);
    // The device wakes up: the request that timed out completes, in order.
    bus.with(|d| d.mode = RngMode::Normal);
    bus.work();
    let mut buf = [0u8; 64];
    let n = rng.read(&mut buf, &mut Polls::new(0)).unwrap();
    let want: Vec<u8> = (0..n as u64).map(stream).collect();
    assert_eq!(&buf[..n], want);
}

#[test]
fn rng_needs_reset_is_reported_instead_of_a_timeout_2_1_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.mode = RngMode::Stall);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    bus.regs(|r| r.set_needs_reset()).unwrap();
    let err = rng.read(&mut [0u8; 8], &mut Polls::new(3)).unwrap_err();
    assert_eq!(err, Error::DeviceNeedsReset);
    // A reset and a new initialisation bring it back.
    bus.with(|d| d.mode = RngMode::Normal);
    rng.reinit().unwrap();
    assert!(rng.read(&mut [0u8; 8], &mut Polls::new(3)).unwrap() > 0);
}

#[test]
fn rng_source_shorter_than_asked_gives_what_it_has_then_times_out() {
    // The harness's rng-random scenario: a 3000-byte file, 10000 asked.
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.budget = Some(3000));
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let mut got = Vec::new();
    let err = loop {
        let mut buf = [0u8; 1024];
        match rng.read(&mut buf, &mut Polls::new(20)) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::Timeout { queue: 0 });
    assert_eq!(got.len(), 3000);
    let want: Vec<u8> = (0..3000).map(stream).collect();
    assert_eq!(got, want);
}

#[test]
fn rng_uses_a_smaller_queue_when_the_device_has_one_4_2_3_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.max = 3);
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    assert_eq!(bus.regs(|r| r.queue(0).unwrap().size()), 2);
    let mut buf = vec![0u8; 64 * 1024];
    rng.read_exact(&mut buf, &mut Polls::new(10)).unwrap();
    let want: Vec<u8> = (0..buf.len() as u64).map(stream).collect();
    assert_eq!(buf, want);
}

#[test]
fn rng_missing_queue_is_refused_4_2_3_2() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.max = 0);
    let err = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap_err();
    assert_eq!(
        err,
        Error::Transport(MmioError::QueueUnavailable { queue: 0 })
    );
    // FAILED was set before the reset that `drop` did.
    let log = bus.status_log.borrow().clone();
    assert!(log.iter().any(|s| s & 0x80 != 0), "{log:?}");
    assert_eq!(log.last(), Some(&0));
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn rng_drop_resets_the_device_then_frees_dma_2_4() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    {
        let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
        assert!(env.hal.free_pages() < POOL_PAGES);
        rng.read(&mut [0u8; 100], &mut Polls::new(5)).unwrap();
    }
    assert_eq!(bus.status(), DeviceStatus::empty());
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn rng_dma_exhaustion_is_an_error_and_leaks_nothing() {
    let env = Env::with_pages(2);
    let bus = Bus::new(FakeRng::new(env.memory()));
    let err = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap_err();
    assert_eq!(err, Error::DmaExhausted { pages: 3 });
    assert_eq!(env.hal.free_pages(), 2);
    assert_eq!(bus.status(), DeviceStatus::empty());
}

#[test]
fn rng_reinit_mid_operation_resets_and_continues_2_4_3_1_1() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    let mut rng = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap();
    let mut buf = [0u8; 100];
    rng.read(&mut buf, &mut Polls::new(5)).unwrap();
    rng.reinit().unwrap();
    assert_eq!(bus.with(|d| d.starts), 2);
    let n = rng.read(&mut buf, &mut Polls::new(5)).unwrap();
    assert!(n > 0);
    assert_eq!(bus.errors(), []);
    // A device that now offers other features does not fit the old queues.
    bus.with(|d| d.offered = 0);
    let err = rng.reinit().unwrap_err();
    assert!(matches!(err, Error::FeaturesChanged { .. }), "{err:?}");
}
