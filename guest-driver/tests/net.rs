//! The network driver (§5.1) against our own device
//! (`virtio_devices::net::Net`) over the loopback backend and a hub, in
//! one process: frames both ways, checksum offload end to end, the control
//! queue's filters, link changes, mergeable buffers, a proptest.

mod common;
mod net_support;

use backends::net::NetBackend;
use backends::net::hub::Hub;
use backends::net::loopback::Loopback;
use common::Env;
use guest_driver::net::{Net, NetError, NetOptions, RxChecksum, TxOffload};
use guest_driver::transport::Completion;
use guest_driver::wait::Polls;
use net_support::{BCAST, DevBus, frame, udp_frame};
use proptest::prelude::*;
use virtio_core::features::NetFeatures;
use virtio_core::net::{l4_checksum_offsets, verify_l4_checksum};
use virtio_devices::net::NetConfig;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];

fn loopback() -> Loopback {
    Loopback::new(1024, 1 << 24)
}

/// Receives every frame now waiting (copies, for comparison).
fn drain<H: guest_driver::Hal, R: virtio_core::mmio::driver::RegisterAccess>(
    net: &mut Net<H, R>,
) -> Vec<(Vec<u8>, RxChecksum)> {
    let mut out = Vec::new();
    while let Some(f) = net.receive().unwrap() {
        out.push((f.bytes().iter().collect(), f.checksum()));
    }
    out
}

#[test]
fn net_config_and_features_5_1_4() {
    let env = Env::new();
    let bus = DevBus::new(loopback(), env.memory(), NetConfig::default());
    let net = Net::new(&env.hal, &bus, NetOptions::default()).unwrap();
    assert_eq!(net.mac(), MAC);
    assert_eq!(net.mtu(), 1500);
    assert_eq!(net.max_frame(), 1514);
    for f in [
        NetFeatures::MAC,
        NetFeatures::STATUS,
        NetFeatures::MTU,
        NetFeatures::CSUM,
        NetFeatures::GUEST_CSUM,
        NetFeatures::CTRL_VQ,
        NetFeatures::CTRL_RX,
        NetFeatures::CTRL_MAC_ADDR,
    ] {
        assert!(net.has(f), "{f:?}");
    }
    assert!(!net.has(NetFeatures::MRG_RXBUF));
    assert!(net.link_up().unwrap());
    // Every receive buffer was posted with one kick.
    assert_eq!(net.stats().kicks, 1);
    // Refused features stay off; without STATUS the link reads up.
    drop(net);
    let opts = NetOptions {
        refuse: NetFeatures::STATUS | NetFeatures::CTRL_VQ,
        csum: false,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    assert!(!net.has(NetFeatures::STATUS) && !net.has(NetFeatures::CSUM));
    assert!(net.link_up().unwrap());
    assert_eq!(
        net.set_promiscuous(true, &mut Polls::new(10)),
        Err(NetError::NotNegotiated {
            feature: NetFeatures::CTRL_RX
        })
    );
    assert_eq!(
        net.transmit_with(
            60,
            TxOffload::Checksum {
                start: 34,
                offset: 6
            },
            |_| {}
        ),
        Err(NetError::NotNegotiated {
            feature: NetFeatures::CSUM
        })
    );
}

#[test]
fn net_frames_both_ways_through_the_loopback_5_1_6() {
    let env = Env::new();
    let bus = DevBus::new(loopback(), env.memory(), NetConfig::default());
    let mut net = Net::new(&env.hal, &bus, NetOptions::default()).unwrap();
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for round in 0..8u8 {
        for i in 0..40usize {
            let f = frame(
                BCAST,
                MAC,
                60 + (i * 37 + usize::from(round) * 101) % 1455,
                i as u8,
            );
            net.transmit_with(f.len(), TxOffload::None, |b| b.copy_from_slice(&f))
                .unwrap();
            sent.push(f);
        }
        net.flush().unwrap();
        net.reclaim().unwrap();
        drain_peek(&mut net, &mut got);
    }
    assert_eq!(got.len(), sent.len());
    assert_eq!(got, sent);
    let s = net.stats();
    assert_eq!(s.tx_frames, 320);
    assert_eq!(s.rx_frames, 320);
    // Batching: far fewer kicks than frames.
    assert!(s.kicks < 100, "{s:?}");
}

fn drain_peek<H: guest_driver::Hal, R: virtio_core::mmio::driver::RegisterAccess>(
    net: &mut Net<H, R>,
    got: &mut Vec<Vec<u8>>,
) -> bool {
    let b = drain(net);
    let any = !b.is_empty();
    got.extend(b.into_iter().map(|(f, _)| f));
    any
}

#[test]
fn net_checksum_offload_end_to_end_5_1_6_2_and_5_1_6_4() {
    let env = Env::new();
    let bus = DevBus::new(loopback(), env.memory(), NetConfig::default());
    let mut net = Net::new(&env.hal, &bus, NetOptions::default()).unwrap();
    let payload: Vec<u8> = (0..777u32).map(|i| (i * 7) as u8).collect();
    let f = udp_frame(BCAST, MAC, &payload);
    let (start, offset, pseudo) = l4_checksum_offsets(&f).unwrap();
    assert_eq!((start, offset), (34, 6));
    net.transmit_with(f.len(), TxOffload::Checksum { start, offset }, |b| {
        b.copy_from_slice(&f);
        let at = usize::from(start + offset);
        b[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    })
    .unwrap();
    net.flush().unwrap();
    let got = drain(&mut net);
    assert_eq!(got.len(), 1);
    let (rx, csum) = &got[0];
    // The device completed the checksum (§5.1.6.2) ...
    assert_eq!(verify_l4_checksum(rx), Some(true));
    assert_ne!(&rx[40..42], &[0, 0]);
    assert_eq!(rx[..40], f[..40]);
    assert_eq!(rx[42..], f[42..]);
    // ... and on the way back, validated it and said DATA_VALID
    // (§5.1.6.4.1).
    assert_eq!(*csum, RxChecksum::Valid);
    assert_eq!(net.stats().rx_csum_valid, 1);
    // A frame with a wrong checksum is delivered without DATA_VALID.
    let mut bad = rx.clone();
    bad[40] ^= 0x55;
    net.transmit(&bad).unwrap();
    net.flush().unwrap();
    let got = drain(&mut net);
    assert_eq!(got[0].1, RxChecksum::Unknown);
    assert_eq!(verify_l4_checksum(&got[0].0), Some(false));
    // Without CSUM negotiated, the driver completes the checksum itself.
    drop(net);
    let opts = NetOptions {
        refuse: NetFeatures::CSUM,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    net.transmit_with_offload(f.len(), |b| {
        b.copy_from_slice(&f);
        let at = usize::from(start + offset);
        b[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        TxOffload::Checksum { start, offset }
    })
    .unwrap();
    net.flush().unwrap();
    let got = drain(&mut net);
    assert_eq!(verify_l4_checksum(&got[0].0), Some(true));
}

/// The filter phases of the guest contract, checked against the device
/// through a hub: which of the six destinations arrive.
#[test]
fn net_ctrl_rx_filters_and_mac_addr_set_5_1_6_5() {
    let env = Env::new();
    let hub = Hub::new();
    let mut peer = hub.port("peer").unwrap();
    let bus = DevBus::new(
        hub.port("guest").unwrap(),
        env.memory(),
        NetConfig::default(),
    );
    let mut net = Net::new(&env.hal, &bus, NetOptions::default()).unwrap();
    let w = &mut Polls::new(10);
    let dsts = [
        MAC,
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 0x99],
        BCAST,
        [1, 0, 0x5e, 0, 0, 1],
        [1, 0, 0x5e, 0, 0, 0x99],
    ];
    let mut phase = |net: &mut Net<_, _>, mac: [u8; 6]| -> Vec<usize> {
        let mut d = dsts;
        d[0] = mac;
        for (k, dst) in d.iter().enumerate() {
            peer.send(&[&frame(*dst, PEER, 60, k as u8)]).unwrap();
        }
        bus.pump();
        drain(net)
            .iter()
            .map(|(f, _)| 1 + d.iter().position(|x| *x == f[..6]).unwrap())
            .collect()
    };
    // strict: promisc off, allmulti off, empty table (§5.1.6.5.1: the
    // device starts promiscuous; the driver turns it off).
    net.set_promiscuous(false, w).unwrap();
    net.set_all_multicast(false, w).unwrap();
    net.set_mac_table(&[], &[], w).unwrap();
    assert_eq!(phase(&mut net, MAC), [1, 4]);
    net.set_mac_table(&[[2, 0, 0, 0, 0, 1]], &[[1, 0, 0x5e, 0, 0, 1]], w)
        .unwrap();
    assert_eq!(phase(&mut net, MAC), [1, 2, 4, 5]);
    net.set_all_multicast(true, w).unwrap();
    assert_eq!(phase(&mut net, MAC), [1, 2, 4, 5, 6]);
    net.set_promiscuous(true, w).unwrap();
    assert_eq!(phase(&mut net, MAC), [1, 2, 3, 4, 5, 6]);
    // MAC_ADDR_SET: the new address is the one accepted.
    net.set_promiscuous(false, w).unwrap();
    net.set_all_multicast(false, w).unwrap();
    net.set_mac_table(&[], &[], w).unwrap();
    let new = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    net.set_mac_address(new, w).unwrap();
    assert_eq!(net.mac(), new);
    assert_eq!(bus.with(|d| d.mac()), new);
    assert_eq!(phase(&mut net, new), [1, 4]);
    // Too many addresses: refused before the device sees them.
    let many = vec![[2u8, 0, 0, 0, 0, 1]; 65];
    assert_eq!(
        net.set_mac_table(&many, &[], w),
        Err(NetError::TooManyAddresses { count: 65 })
    );
}

#[test]
fn net_link_change_seen_through_a_config_interrupt_5_1_4_2() {
    let env = Env::new();
    let bus = DevBus::new(loopback(), env.memory(), NetConfig::default());
    let opts = NetOptions {
        completion: Completion::Interrupt,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    net.on_interrupt();
    assert!(net.link_up().unwrap());
    bus.set_link(false);
    assert!(bus.irq_asserted());
    let ev = net.on_interrupt();
    assert!(ev.config);
    assert!(!bus.irq_asserted());
    assert!(!net.link_up().unwrap());
    bus.set_link(true);
    assert!(net.on_interrupt().config);
    assert!(net.link_up().unwrap());
    assert_eq!(net.stats().config_interrupts, 2);
}

#[test]
fn net_interrupt_mode_waits_for_a_frame_2_7_14() {
    let env = Env::new();
    let hub = Hub::new();
    let mut peer = hub.port("peer").unwrap();
    let bus = DevBus::new(
        hub.port("guest").unwrap(),
        env.memory(),
        NetConfig::default(),
    );
    let opts = NetOptions {
        completion: Completion::Interrupt,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    // Nothing there: the wait times out.
    assert!(matches!(
        net.wait_rx(&mut Polls::new(3)),
        Err(NetError::Driver(guest_driver::Error::Timeout { queue: 0 }))
    ));
    let f = frame(BCAST, PEER, 100, 9);
    peer.send(&[&f]).unwrap();
    let before = bus.irqs.get();
    bus.pump();
    // The wait armed the queue: the device interrupts.
    assert!(bus.irqs.get() > before);
    assert!(net.on_interrupt().used);
    net.wait_rx(&mut Polls::new(3)).unwrap();
    let got = net.receive().unwrap().unwrap();
    assert_eq!(got.bytes(), &f[..]);
    drop(got);
    // arm_rx: nothing there, so halting is safe; a frame then interrupts
    // once; arming with a frame waiting says so (do not halt).
    assert!(!net.arm_rx().unwrap());
    let before = bus.irqs.get();
    peer.send(&[&f]).unwrap();
    peer.send(&[&f]).unwrap();
    bus.pump();
    assert_eq!(bus.irqs.get(), before + 1);
    assert!(net.on_interrupt().used);
    assert!(net.arm_rx().unwrap());
    assert!(net.receive().unwrap().is_some());
    assert!(net.receive().unwrap().is_some());
    assert!(net.receive().unwrap().is_none());
}

#[test]
fn net_mergeable_buffers_assemble_big_frames_5_1_6_3_2() {
    let env = Env::with_pages(512);
    let cfg = NetConfig {
        mtu: 9000,
        ..NetConfig::default()
    };
    let bus = DevBus::new(loopback(), env.memory(), cfg);
    let opts = NetOptions {
        mrg_rxbuf: true,
        rx_buffers: 32,
        tx_buffers: 8,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    assert!(net.has(NetFeatures::MRG_RXBUF));
    assert_eq!(net.mtu(), 9000);
    for (i, len) in [60usize, 4000, 4084, 4085, 8000, 9014, 1500]
        .into_iter()
        .enumerate()
    {
        let f = frame(BCAST, MAC, len, i as u8);
        net.transmit(&f).unwrap();
        net.flush().unwrap();
        let got = drain(&mut net);
        assert_eq!(got.len(), 1, "len {len}");
        assert_eq!(got[0].0, f, "len {len}");
        // receive_into copies the same frame.
        net.transmit(&f).unwrap();
        net.flush().unwrap();
        let mut buf = vec![0u8; 9014];
        let (n, _) = net.receive_into(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    assert!(net.stats().rx_merged >= 6);
}

#[test]
fn net_transmit_full_ring_and_too_long() {
    let env = Env::new();
    let hub = Hub::new();
    let _peer = hub.port("peer").unwrap();
    let bus = DevBus::new(
        hub.port("guest").unwrap(),
        env.memory(),
        NetConfig::default(),
    );
    let opts = NetOptions {
        tx_buffers: 4,
        ..NetOptions::default()
    };
    let mut net = Net::new(&env.hal, &bus, opts).unwrap();
    assert_eq!(
        net.transmit(&[0u8; 1515]),
        Err(NetError::TooLong {
            len: 1515,
            max: 1514
        })
    );
    // The device uses each frame as it is kicked; the ring never stays full.
    for i in 0..100u8 {
        net.transmit(&frame(BCAST, MAC, 64, i)).unwrap();
    }
    net.flush().unwrap();
    net.wait_tx(&mut Polls::new(3)).unwrap();
    assert_eq!(net.stats().tx_frames, 100);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of frame sizes and batch boundaries comes back
    /// through the loopback intact and in order.
    #[test]
    fn net_prop_frames_round_trip(
        sizes in proptest::collection::vec(14usize..=1514, 1..120),
        batch in 1usize..40,
        mrg in any::<bool>(),
    ) {
        let env = Env::with_pages(256);
        let bus = DevBus::new(loopback(), env.memory(), NetConfig::default());
        let opts = NetOptions { mrg_rxbuf: mrg, rx_buffers: 32, tx_buffers: 16, ..NetOptions::default() };
        let mut net = Net::new(&env.hal, &bus, opts).unwrap();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for (i, len) in sizes.iter().enumerate() {
            let f = frame(BCAST, MAC, (*len).max(14), i as u8);
            loop {
                match net.transmit(&f) {
                    Ok(()) => break,
                    Err(NetError::TxFull) => {
                        net.flush().unwrap();
                        drain_peek(&mut net, &mut got);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            sent.push(f);
            if i % batch == 0 {
                net.flush().unwrap();
                drain_peek(&mut net, &mut got);
            }
        }
        for _ in 0..10 {
            net.flush().unwrap();
            bus.pump();
            drain_peek(&mut net, &mut got);
        }
        prop_assert_eq!(got, sent);
    }
}

/// The backend trait is what the rig needs from a hub port.
#[allow(dead_code)]
fn _is_backend<B: NetBackend>(_: &B) {}
