//! The console driver (§5.3) against a fake console behind virtio-core's
//! version 2 register file: port 0 alone, MULTIPORT with two ports and the
//! control protocol, interrupts, and a device that sends malformed control
//! messages or bad lengths.

mod common;

use common::{Bus, Env, FakeConsole, POOL_PAGES, control};
use guest_driver::console::{Console, ConsoleOptions, ConsoleSize, DATA_SLOT, event, queues};
use guest_driver::error::Error;
use guest_driver::transport::{Completion, acknowledge_interrupt};
use guest_driver::wait::Polls;
use virtio_core::features::ConsoleFeatures;
use virtio_core::split::DriverError as QueueError;
use virtio_core::status::DeviceStatus;

fn single(env: &Env) -> Bus<FakeConsole> {
    Bus::new(FakeConsole::new(env.memory(), 1, false))
}

fn multi(env: &Env, ports: u32) -> Bus<FakeConsole> {
    Bus::new(FakeConsole::new(env.memory(), ports, true))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz\n"[i % 37])
        .collect()
}

#[test]
fn console_port0_write_read_size_and_emergency_write_5_3_6() {
    let env = Env::new();
    let bus = single(&env);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    assert!(!con.is_multiport());
    assert_eq!(
        con.size().unwrap(),
        Some(ConsoleSize {
            cols: 132,
            rows: 43
        })
    );
    let p0 = con.port(0).unwrap();
    assert!(p0.added && p0.host_open && p0.console);
    con.write(b"hello, world\n", &mut Polls::new(10)).unwrap();
    assert_eq!(bus.with(|d| d.tx[0].clone()), b"hello, world\n");
    // Host input arrives later; the driver reads it.
    bus.with(|d| d.input[0].extend(b"typed".iter()));
    bus.work();
    let mut buf = [0u8; 3];
    assert_eq!(con.read(&mut buf, &mut Polls::new(10)).unwrap(), 3);
    assert_eq!(&buf, b"typ");
    assert_eq!(con.read(&mut buf, &mut Polls::new(10)).unwrap(), 2);
    assert_eq!(&buf[..2], b"ed");
    assert!(con.emergency_write(b'!').unwrap());
    assert_eq!(bus.with(|d| d.emerg.clone()), b"!");
    assert_eq!(bus.errors(), []);
    // Nothing more to read: a bounded wait, then a timeout on receiveq 0.
    assert_eq!(
        con.read(&mut buf, &mut Polls::new(5)),
        Err(Error::Timeout { queue: 0 })
    );
}

#[test]
fn console_64k_of_output_arrives_exactly_5_3_6() {
    let env = Env::new();
    let bus = single(&env);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    let text = pattern(64 * 1024);
    con.write(&text, &mut Polls::new(10)).unwrap();
    assert_eq!(bus.with(|d| d.tx[0].len()), text.len());
    assert_eq!(bus.with(|d| d.tx[0].clone()), text);
    // And 64 KiB of input, read back through the receive buffers.
    bus.with(|d| d.input[0].extend(text.iter()));
    let mut got = Vec::new();
    while got.len() < text.len() {
        bus.work();
        let mut buf = [0u8; 1000];
        let n = con.read(&mut buf, &mut Polls::new(10)).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, text);
}

#[test]
fn console_echo_interrupt_driven_2_7_7() {
    let env = Env::new();
    let bus = multi(&env, 2);
    bus.with(|d| d.deferred = true);
    let opts = ConsoleOptions {
        completion: Completion::Interrupt,
        ..ConsoleOptions::default()
    };
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, opts).unwrap();
    let mut delivered = 0;
    let mut wait = |budget: &mut u32| {
        bus.work();
        if bus.irq_asserted() {
            delivered += 1;
            acknowledge_interrupt(&bus);
        }
        *budget -= 1;
        *budget > 0
    };
    let mut b = 20;
    con.wait_for(|c| c.port(1).is_some_and(|p| p.host_open), &mut || {
        wait(&mut b)
    })
    .unwrap();
    // Echo what the host types on port 1, uppercased.
    bus.with(|d| d.input[1].extend(b"ping pong".iter()));
    let mut got = Vec::new();
    while got.len() < 9 {
        let mut buf = [0u8; 16];
        let mut b = 20;
        let n = con.read_port(1, &mut buf, &mut || wait(&mut b)).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let upper = got.to_ascii_uppercase();
    let mut b = 20;
    con.write_port(1, &upper, &mut || wait(&mut b)).unwrap();
    assert_eq!(bus.with(|d| d.tx[1].clone()), b"PING PONG");
    assert!(delivered > 0);
    assert_eq!(bus.errors(), []);
}

#[test]
fn console_multiport_two_ports_control_protocol_5_3_6_2() {
    let env = Env::new();
    let bus = multi(&env, 2);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    assert!(con.is_multiport());
    assert_eq!(con.max_nr_ports(), 2);
    con.wait_for(
        |c| c.ports().filter(|(_, p)| p.added && p.host_open).count() == 2,
        &mut Polls::new(10),
    )
    .unwrap();
    let p0 = con.port(0).unwrap().clone();
    let p1 = con.port(1).unwrap().clone();
    assert!(p0.console && p0.guest_open);
    assert!(!p1.console && p1.guest_open);
    assert_eq!(p1.name(), "org.test.port1");
    assert!(con.port(2).is_none());
    // §5.3.6.2.2: DEVICE_READY first, PORT_READY for each port, PORT_OPEN
    // in answer to CONSOLE_PORT.
    let sent = bus.with(|d| d.from_driver.clone());
    assert_eq!(sent[0], (0, event::DEVICE_READY, 1));
    assert!(sent.contains(&(0, event::PORT_READY, 1)));
    assert!(sent.contains(&(1, event::PORT_READY, 1)));
    let ready0 = sent
        .iter()
        .position(|m| *m == (0, event::PORT_READY, 1))
        .unwrap();
    assert!(sent[ready0..].contains(&(0, event::PORT_OPEN, 1)));
    // Data on both ports, kept apart.
    con.write_port(1, b"to port one", &mut Polls::new(10))
        .unwrap();
    con.write_port(0, b"to port zero", &mut Polls::new(10))
        .unwrap();
    assert_eq!(bus.with(|d| d.tx[1].clone()), b"to port one");
    assert_eq!(bus.with(|d| d.tx[0].clone()), b"to port zero");
    bus.with(|d| {
        d.input[1].extend(b"from one".iter());
        d.input[0].extend(b"from zero".iter());
    });
    bus.work();
    let mut buf = [0u8; 32];
    let n = con.read_port(1, &mut buf, &mut Polls::new(10)).unwrap();
    assert_eq!(&buf[..n], b"from one");
    let n = con.read_port(0, &mut buf, &mut Polls::new(10)).unwrap();
    assert_eq!(&buf[..n], b"from zero");
    // RESIZE (§5.3.6.2) for port 0, then DEVICE_REMOVE for port 1.
    bus.with(|d| {
        let mut m = control(0, event::RESIZE, 0);
        m.extend_from_slice(&100u16.to_le_bytes());
        m.extend_from_slice(&30u16.to_le_bytes());
        d.to_driver.push_back(m);
        d.to_driver.push_back(control(1, event::DEVICE_REMOVE, 0));
    });
    bus.work();
    con.poll().unwrap();
    assert_eq!(
        con.port(0).unwrap().size,
        Some(ConsoleSize {
            cols: 100,
            rows: 30
        })
    );
    assert!(!con.port(1).unwrap().added);
    assert_eq!(
        con.write_port(1, b"x", &mut Polls::new(1)),
        Err(Error::PortNotReady { port: 1 })
    );
    assert_eq!(con.stats().bad_control, 0);
    assert_eq!(bus.errors(), []);
}

#[test]
fn console_hostile_control_messages_are_counted_and_ignored_5_3_6_2_1() {
    let env = Env::new();
    let bus = multi(&env, 2);
    bus.with(|d| d.auto = false);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    let bad = [
        control(7, event::DEVICE_ADD, 0),   // beyond max_nr_ports
        vec![1, 0, 0, 0],                   // too short
        control(1, event::PORT_OPEN, 1),    // port not added
        control(0, event::PORT_READY, 1),   // the driver's event
        control(0, event::DEVICE_READY, 1), // the driver's event
        control(0, 99, 0),                  // no such event
        control(0, event::RESIZE, 0),       // no cols/rows after it
        control(0, event::DEVICE_ADD, 0),   // added twice
        control(0, event::PORT_OPEN, 2),    // not 0 or 1
        control(u32::MAX, event::CONSOLE_PORT, 1),
    ];
    bus.with(|d| {
        d.to_driver.push_back(control(0, event::DEVICE_ADD, 0));
        d.to_driver.extend(bad.iter().cloned());
        // A name that is not UTF-8 past its first bytes, and too long.
        let mut name = control(0, event::PORT_NAME, 1);
        name.extend_from_slice(b"ok\xff\xfe");
        d.to_driver.push_back(name);
    });
    bus.work();
    con.wait_for(
        |c| c.stats().bad_control as usize == bad.len(),
        &mut Polls::new(10),
    )
    .unwrap();
    assert_eq!(con.port(0).unwrap().name(), "ok");
    assert!(con.port(0).unwrap().added);
    // The driver still works.
    con.write(b"still here", &mut Polls::new(10)).unwrap();
    assert_eq!(bus.with(|d| d.tx[0].clone()), b"still here");
    let sent = bus.with(|d| d.from_driver.clone());
    assert_eq!(
        sent.iter().filter(|m| m.1 == event::PORT_READY).count(),
        1,
        "{sent:?}"
    );
}

#[test]
fn console_port_beyond_the_driver_gets_port_ready_0_5_3_6_2() {
    // The device has 4 ports, the driver room for 2.
    let env = Env::new();
    let bus = multi(&env, 4);
    let mut con: Console<_, _, 2> =
        Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    con.wait_for(
        |c| c.ports().filter(|(_, p)| p.host_open).count() == 2,
        &mut Polls::new(10),
    )
    .unwrap();
    let sent = bus.with(|d| d.from_driver.clone());
    assert!(sent.contains(&(2, event::PORT_READY, 0)), "{sent:?}");
    assert!(sent.contains(&(3, event::PORT_READY, 0)), "{sent:?}");
    assert_eq!(
        con.write_port(3, b"x", &mut Polls::new(1)),
        Err(Error::NoSuchPort { port: 3 })
    );
}

#[test]
fn console_port_without_queues_is_not_used_4_2_3_2() {
    let env = Env::new();
    let bus = multi(&env, 2);
    bus.with(|d| d.missing_port_queues = vec![1]);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    con.wait_for(
        |c| c.port(0).is_some_and(|p| p.host_open),
        &mut Polls::new(10),
    )
    .unwrap();
    assert!(con.port(1).is_none());
    con.poll().unwrap();
    let sent = bus.with(|d| d.from_driver.clone());
    assert!(sent.contains(&(1, event::PORT_READY, 0)), "{sent:?}");
}

#[test]
fn console_receive_length_beyond_the_buffer_breaks_the_queue_2_7_8_2() {
    let env = Env::new();
    let bus = single(&env);
    bus.with(|d| d.rx_len_bonus = DATA_SLOT);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    bus.with(|d| d.input[0].extend(b"abc".iter()));
    bus.work();
    let err = con.read(&mut [0u8; 8], &mut Polls::new(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Queue {
                queue: 0,
                err: QueueError::UsedLenTooLarge { .. }
            }
        ),
        "{err:?}"
    );
    assert!(err.is_device_fault());
}

#[test]
fn console_stalled_transmitq_times_out_2_7_14() {
    let env = Env::new();
    let bus = single(&env);
    bus.with(|d| d.deferred = true);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    let text = pattern(40 * DATA_SLOT as usize);
    assert_eq!(
        con.write(&text, &mut Polls::new(20)),
        Err(Error::Timeout {
            queue: queues::tx(0)
        })
    );
    // The device wakes up: what was queued arrives, in order.
    bus.work();
    con.poll().unwrap();
    let got = bus.with(|d| d.tx[0].clone());
    assert_eq!(got.len(), 16 * DATA_SLOT as usize);
    assert_eq!(got, text[..got.len()]);
}

#[test]
fn console_reinit_adds_the_ports_again_2_4() {
    let env = Env::new();
    let bus = multi(&env, 2);
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
    con.wait_for(
        |c| c.port(1).is_some_and(|p| p.host_open),
        &mut Polls::new(10),
    )
    .unwrap();
    con.reinit().unwrap();
    assert!(!con.port(1).unwrap().added);
    con.wait_for(
        |c| c.port(1).is_some_and(|p| p.host_open),
        &mut Polls::new(10),
    )
    .unwrap();
    con.write_port(1, b"again", &mut Polls::new(10)).unwrap();
    assert_eq!(bus.with(|d| d.tx[1].clone()), b"again");
    assert_eq!(bus.errors(), []);
}

#[test]
fn console_without_multiport_option_uses_port_0_only_5_3_3() {
    let env = Env::new();
    let bus = multi(&env, 2);
    let opts = ConsoleOptions {
        multiport: false,
        event_idx: false,
        ..ConsoleOptions::default()
    };
    let mut con: Console<_, _> = Console::new(&env.hal, &bus, opts).unwrap();
    assert_eq!(
        con.features() & ConsoleFeatures::MULTIPORT.bits(),
        0,
        "not negotiated"
    );
    con.write(b"plain", &mut Polls::new(10)).unwrap();
    assert_eq!(bus.with(|d| d.tx[0].clone()), b"plain");
    assert!(con.port(1).is_none());
}

#[test]
fn console_drop_resets_the_device_then_frees_dma_2_4() {
    let env = Env::new();
    let bus = multi(&env, 2);
    {
        let mut con: Console<_, _> =
            Console::new(&env.hal, &bus, ConsoleOptions::default()).unwrap();
        con.poll().unwrap();
        assert!(env.hal.free_pages() <= POOL_PAGES - guest_driver::console::dma_pages(2) / 2);
    }
    assert_eq!(bus.status(), DeviceStatus::empty());
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn console_on_an_entropy_device_is_refused_5() {
    let env = Env::new();
    let bus = Bus::new(common::FakeRng::new(env.memory()));
    let err = Console::<_, _>::new(&env.hal, &bus, ConsoleOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::WrongDevice { found: 4, .. }),
        "{err:?}"
    );
    // Probe touches nothing but MagicValue, Version and DeviceID.
    assert!(bus.status_log.borrow().is_empty());
}

#[test]
fn console_dma_running_out_midway_frees_everything_after_a_reset_2_4() {
    // Port 0 (6 pages), control (4), port 1's receiveq (3): its transmitq
    // finds no pages.
    let env = Env::with_pages(13);
    let bus = multi(&env, 2);
    let err = Console::<_, _>::new(&env.hal, &bus, ConsoleOptions::default()).unwrap_err();
    assert_eq!(err, Error::DmaExhausted { pages: 3 });
    assert_eq!(env.hal.free_pages(), 13);
    assert_eq!(bus.status(), DeviceStatus::empty());
    let log = bus.status_log.borrow().clone();
    assert!(!log.iter().any(|s| s & 4 != 0), "never DRIVER_OK: {log:?}");
}
