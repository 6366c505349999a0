//! virtio-net (§5.1) in one process: the independent `virtio-drivers` net
//! driver through the mmio register file, and our own driver queues for
//! every rule of the issue: the header both ways, checksum offload,
//! mergeable buffers, the control queue, link status, malformed chains
//! (each followed by well-formed traffic), starvation and backpressure.

mod net_support;
mod queue_rig;

use std::cell::RefCell;
use std::rc::Rc;

use net_support::{BCAST, Buf, MAC, Rig, Wire, frame, rig, rig_with};
use virtio_core::features::{NetFeatures, TransportFeatures};
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::testing::fetch::FetchTracker;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_devices::device::{DeviceError, VirtioDevice};
use virtio_devices::net::{
    CONFIG_LEN, HDR_LEN, Net, NetConfig, NetConfigError, NetHdr, SUPPORTED, config, ctrl, flags,
    gso,
};
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::InterruptStatus;

const V1: u64 = TransportFeatures::VERSION_1.bits();

fn hdr() -> [u8; HDR_LEN] {
    NetHdr::default().to_bytes()
}

fn features(f: NetFeatures) -> Option<u64> {
    Some(f.bits() | V1 | TransportFeatures::RING_EVENT_IDX.bits())
}

/// One received frame: (header, frame) read from a single buffer.
fn rx_one(r: &mut Rig, buf_len: u32) -> Option<(NetHdr, Vec<u8>)> {
    let (t, a) = r.rx_buf(buf_len);
    r.notify(0);
    let c = r.completions_on(0);
    if c.is_empty() {
        return None;
    }
    assert_eq!(c[0].0, t);
    let b = r.bytes(a, c[0].1 as usize);
    Some((NetHdr::parse(&b).unwrap(), b[HDR_LEN..].to_vec()))
}

#[test]
fn virtio_drivers_net_sends_and_receives_through_the_device() {
    let wire = Wire::new().with(|s| s.loopback = true);
    // Under the double-fetch tracker (issue 16), rings unknown to it.
    let mem: &'static FetchTracker<_> =
        Box::leak(Box::new(FetchTracker::unwatched(TestHal::memory())));
    let dev = Net::new(wire.clone(), mem, NetConfig::default()).unwrap();
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let mut t = DeviceTransport::new(regs)
        .unwrap()
        .with_config_len(CONFIG_LEN);
    t.set_hook(|regs, outcome| {
        dispatch(regs, outcome);
        // The harness's event loop: the loopback backend is always ready.
        backend_ready(regs);
    });
    let mut drv = VirtIONet::<TestHal, _, 16>::new(t, 2048).unwrap();
    assert_eq!(drv.mac_address(), MAC);
    for i in 0..40u8 {
        let f = frame(BCAST, 60 + usize::from(i) * 31, i);
        let mut tx = drv.new_tx_buffer(f.len());
        tx.packet_mut().copy_from_slice(&f);
        drv.send(tx).unwrap();
        let rx = drv.receive().unwrap();
        assert_eq!(rx.packet(), &f[..]);
        drv.recycle_rx_buffer(rx).unwrap();
    }
    assert_eq!(wire.state().sent.len(), 40);
    mem.assert_none();
}

#[test]
fn virtio_drivers_net_sees_a_link_change_as_a_configuration_interrupt() {
    let wire = Wire::new().with(|s| s.loopback = true);
    let mem = TestHal::memory();
    let dev = Net::new(wire.clone(), mem, NetConfig::default()).unwrap();
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let mut t = DeviceTransport::new(regs)
        .unwrap()
        .with_config_len(CONFIG_LEN);
    let raised = Rc::new(RefCell::new(false));
    let r2 = raised.clone();
    t.set_hook(move |regs, outcome| {
        dispatch(regs, outcome);
        *r2.borrow_mut() |= backend_ready(regs);
    });
    let mut drv = VirtIONet::<TestHal, _, 16>::new(t, 2048).unwrap();
    drv.ack_interrupt();
    // The backend loses its peer: the next readiness reports it (§5.1.4.2).
    wire.state().link_down = true;
    let f = frame(BCAST, 64, 1);
    let mut tx = drv.new_tx_buffer(f.len());
    tx.packet_mut().copy_from_slice(&f);
    drv.send(tx).unwrap();
    assert!(*raised.borrow());
    assert!(
        drv.ack_interrupt()
            .contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT)
    );
    // Frames sent while the link is down are dropped, not looped.
    assert!(wire.state().sent.is_empty());
}

#[test]
fn section_5_1_4_config_space_reports_mac_status_pairs_and_mtu() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig {
            queue_pairs: 3,
            mtu: 9000,
            ..NetConfig::default()
        },
        None,
    );
    let mut c = [0u8; CONFIG_LEN];
    r.dev.read_config(0, &mut c);
    assert_eq!(c[..6], MAC);
    let u16_at = |c: &[u8], o: u64| u16::from_le_bytes([c[o as usize], c[o as usize + 1]]);
    assert_eq!(u16_at(&c, config::STATUS), 1);
    assert_eq!(u16_at(&c, config::MAX_VIRTQUEUE_PAIRS), 3);
    assert_eq!(u16_at(&c, config::MTU), 9000);
    // Past the end reads zero.
    let mut b = [0xaau8; 4];
    r.dev.read_config(CONFIG_LEN as u64, &mut b);
    assert_eq!(b, [0; 4]);
    // 2 * 3 queues + control.
    assert_eq!(r.dev.queue_max_sizes().len(), 7);
    assert!(r.set_link_down_signals());
    r.dev.read_config(0, &mut c);
    assert_eq!(u16_at(&c, config::STATUS), 0);
}

trait LinkExt {
    fn set_link_down_signals(&mut self) -> bool;
}

impl LinkExt for Rig {
    fn set_link_down_signals(&mut self) -> bool {
        let first = self.dev.set_link(false);
        // No change, no second interrupt.
        first && !self.dev.set_link(false)
    }
}

#[test]
fn construction_refuses_bad_configs() {
    let bad = |cfg: NetConfig| Net::new(Wire::new(), TestHal::memory(), cfg).err().unwrap();
    let d = NetConfig::default();
    assert_eq!(
        bad(NetConfig {
            queue_pairs: 0,
            ..d
        }),
        NetConfigError::BadQueuePairs { pairs: 0 }
    );
    assert_eq!(
        bad(NetConfig {
            queue_size: 100,
            ..d
        }),
        NetConfigError::BadQueueSize { size: 100 }
    );
    assert_eq!(
        bad(NetConfig { mtu: 60, ..d }),
        NetConfigError::BadMtu { mtu: 60 }
    );
    assert_eq!(
        bad(NetConfig { rx_pending: 0, ..d }),
        NetConfigError::NoPendingFrames
    );
    assert!(!format!("{}", NetConfigError::BadMtu { mtu: 60 }).is_empty());
}

/// §5.1.4 allows `max_virtqueue_pairs` up to 0x8000, but 0x8000 pairs and
/// the control queue are 65,537 queues, past a 16-bit queue index (§2.6):
/// the largest device has 0x7fff pairs, its control queue at 0xfffe.
#[test]
fn section_5_1_4_queue_pairs_beyond_16_bit_queue_indices_are_refused() {
    let cfg = |queue_pairs| NetConfig {
        queue_pairs,
        ..NetConfig::default()
    };
    assert_eq!(
        Net::new(Wire::new(), TestHal::memory(), cfg(0x8000)).err(),
        Some(NetConfigError::BadQueuePairs { pairs: 0x8000 })
    );
    let dev = Net::new(Wire::new(), TestHal::memory(), cfg(0x7fff)).unwrap();
    assert_eq!(dev.queue_max_sizes().len(), 0xffff);
}

#[test]
fn section_5_1_3_1_offered_features_respect_the_dependencies() {
    // Without CTRL_VQ nothing that needs it is offered.
    let dev = Net::new(
        Wire::new(),
        TestHal::memory(),
        NetConfig {
            queue_pairs: 2,
            offer: SUPPORTED - NetFeatures::CTRL_VQ,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let f = NetFeatures::from_bits_truncate(dev.device_features());
    assert!(!f.intersects(NetFeatures::CTRL_RX | NetFeatures::MQ | NetFeatures::CTRL_MAC_ADDR));
    assert!(f.contains(NetFeatures::MAC | NetFeatures::CSUM));
    // With two pairs MQ is offered; one pair does not offer it.
    let dev2 = Net::new(
        Wire::new(),
        TestHal::memory(),
        NetConfig {
            queue_pairs: 2,
            ..NetConfig::default()
        },
    )
    .unwrap();
    assert!(dev2.device_features() & NetFeatures::MQ.bits() != 0);
    let dev1 = Net::new(Wire::new(), TestHal::memory(), NetConfig::default()).unwrap();
    assert_eq!(dev1.device_features() & NetFeatures::MQ.bits(), 0);
}

#[test]
fn section_5_1_3_1_features_ok_is_refused_for_mq_without_ctrl_vq() {
    use virtio_core::mmio::regs;
    let dev = Net::new(
        Wire::new(),
        TestHal::memory(),
        NetConfig {
            queue_pairs: 2,
            ..NetConfig::default()
        },
    )
    .unwrap();
    let mut m = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let w = |m: &mut MmioRegisters<_, 8>, off: u64, v: u32| {
        let _ = m.write32(off, v);
    };
    w(&mut m, regs::STATUS, 1);
    w(&mut m, regs::STATUS, 3);
    let bad = NetFeatures::MQ.bits() | V1;
    w(&mut m, regs::DRIVER_FEATURES_SEL, 0);
    w(&mut m, regs::DRIVER_FEATURES, bad as u32);
    w(&mut m, regs::DRIVER_FEATURES_SEL, 1);
    w(&mut m, regs::DRIVER_FEATURES, (bad >> 32) as u32);
    w(&mut m, regs::STATUS, 3 | 8);
    assert_eq!(
        m.read32(regs::STATUS).unwrap() & 8,
        0,
        "FEATURES_OK accepted"
    );
}

#[test]
fn section_5_1_6_2_transmit_strips_the_header_and_sends_the_frame() {
    let mut r = rig(Wire::new());
    let f = frame(BCAST, 100, 3);
    let t = r.tx(&hdr(), &f);
    let s = r.notify(1);
    assert_eq!(s.completed, 1);
    assert_eq!(r.completions_on(1), vec![(t, 0)]);
    assert_eq!(r.wire.sent(), vec![f]);
    let st = r.dev.stats();
    assert_eq!((st.tx_frames, st.tx_bytes), (1, 100));
}

/// An IPv4/UDP frame with a partial checksum as a driver prepares it for
/// `NEEDS_CSUM`: the pseudo-header sum in the checksum field.
fn udp_partial(payload: &[u8]) -> (Vec<u8>, NetHdr) {
    let mut f = frame(BCAST, 14, 0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let udp_len = 8 + payload.len();
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = vec![0x30, 0x39, 0x00, 0x35, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    // Pseudo-header: src, dst, proto, length; stored folded, not inverted.
    let mut sum: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp_len as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    udp[6..8].copy_from_slice(&(sum as u16).to_be_bytes());
    f.extend_from_slice(&udp);
    let h = NetHdr {
        flags: flags::NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHdr::default()
    };
    (f, h)
}

/// Whether the UDP checksum of `f` verifies (pseudo-header + segment sum
/// to 0xffff).
fn udp_checksum_ok(f: &[u8]) -> bool {
    let seg = &f[34..];
    let mut sum: u64 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + seg.len() as u64;
    for c in seg.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn section_5_1_6_2_needs_csum_leaves_a_plain_backend_with_a_correct_checksum() {
    let mut r = rig(Wire::new());
    let (f, h) = udp_partial(b"hello, checksum offload!!");
    assert!(!udp_checksum_ok(&f));
    r.tx(&h.to_bytes(), &f);
    r.notify(1);
    let sent = r.wire.sent();
    assert_eq!(sent.len(), 1);
    assert!(udp_checksum_ok(&sent[0]));
    assert_eq!(sent[0][..34], f[..34]);
    assert_eq!(r.dev.stats().tx_checksummed, 1);
    // Odd payload length too.
    let (f, h) = udp_partial(b"odd");
    r.tx(&h.to_bytes(), &f);
    r.notify(1);
    assert!(udp_checksum_ok(&r.wire.sent()[0]));
}

#[test]
fn section_5_1_6_2_a_vnet_hdr_backend_gets_the_header_passed_through() {
    let mut r = rig(Wire::new().with(|s| s.vnet_hdr_len = 12));
    let (f, h) = udp_partial(b"offloaded");
    r.tx(&h.to_bytes(), &f);
    r.notify(1);
    let sent = r.wire.sent();
    assert_eq!(sent[0][..HDR_LEN], h.to_bytes());
    assert_eq!(sent[0][HDR_LEN..], f[..]);
    assert_eq!(r.dev.stats().tx_checksummed, 0);
    // The guest's receive offloads reach the backend (GUEST_CSUM).
    assert!(r.wire.state().offloads.unwrap().csum);
}

#[test]
fn section_5_1_6_4_received_frames_get_a_no_offload_header() {
    let mut r = rig(Wire::new());
    let f = frame(MAC, 200, 9);
    r.wire.push(f.clone());
    let (h, got) = rx_one(&mut r, 2048).unwrap();
    assert_eq!(got, f);
    assert_eq!(
        h,
        NetHdr {
            num_buffers: 1,
            ..NetHdr::default()
        }
    );
    let st = r.dev.stats();
    assert_eq!((st.rx_frames, st.rx_bytes), (1, 200));
}

#[test]
fn section_5_1_6_4_partial_checksum_from_a_vnet_backend_is_completed_without_guest_csum() {
    let (f, h) = udp_partial(b"from the host kernel");
    let mut with_hdr = h.to_bytes().to_vec();
    with_hdr.extend_from_slice(&f);
    // GUEST_CSUM negotiated: the partial checksum goes to the driver.
    let mut r = rig(Wire::new().with(|s| s.vnet_hdr_len = 12));
    r.wire.push(with_hdr.clone());
    let (got_h, got) = rx_one(&mut r, 2048).unwrap();
    assert_eq!(got_h.flags, flags::NEEDS_CSUM);
    assert_eq!(got, f);
    // Not negotiated: the device completes it.
    let mut r = rig_with(
        Wire::new().with(|s| s.vnet_hdr_len = 12),
        NetConfig::default(),
        features(NetFeatures::MAC),
    );
    r.wire.push(with_hdr);
    let (got_h, got) = rx_one(&mut r, 2048).unwrap();
    assert_eq!(got_h.flags, 0);
    assert!(udp_checksum_ok(&got));
    // A GSO frame the driver did not negotiate is dropped and counted.
    let mut gso_frame = NetHdr {
        gso_type: gso::TCPV4,
        ..NetHdr::default()
    }
    .to_bytes()
    .to_vec();
    gso_frame.extend_from_slice(&frame(MAC, 60, 1));
    r.wire.push(gso_frame);
    assert!(rx_one(&mut r, 2048).is_none());
    assert_eq!(r.dev.stats().rx_drop_bad_header, 1);
}

#[test]
fn section_5_1_6_4_mergeable_buffers_spread_a_frame_and_count_them() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig {
            mtu: 4000,
            ..NetConfig::default()
        },
        None,
    );
    let f = frame(MAC, 3000, 4);
    r.wire.push(f.clone());
    let bufs: Vec<_> = (0..4).map(|_| r.rx_buf(1024)).collect();
    r.ready();
    let c = r.completions_on(0);
    assert_eq!(c.len(), 3);
    let mut got = vec![];
    for (i, &(t, len)) in c.iter().enumerate() {
        assert_eq!(t, bufs[i].0);
        got.extend(r.bytes(bufs[i].1, len as usize));
    }
    let h = NetHdr::parse(&got).unwrap();
    assert_eq!(h.num_buffers, 3);
    assert_eq!(got[HDR_LEN..], f[..]);
}

/// Issue 16, finding 5: each receive chain is walked once. The rig's
/// memory plays a racing guest: a descriptor loaded a second time has
/// changed. Before, the device sized the chains in one walk and wrote the
/// frame in a second (which saw the changed descriptors: the frame went
/// elsewhere or not at all).
#[test]
fn section_5_1_6_4_receive_chains_are_walked_once_even_when_the_guest_races() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig {
            mtu: 4000,
            ..NetConfig::default()
        },
        None,
    );
    r.fetch.set_racing(true);
    let f = frame(MAC, 3000, 5);
    r.wire.push(f.clone());
    let bufs: Vec<_> = (0..4).map(|_| r.rx_buf(1024)).collect();
    r.ready();
    assert_eq!(r.fetch.double_fetches(), vec![]);
    let c = r.completions_on(0);
    assert_eq!(c.len(), 3);
    let mut got = vec![];
    for (i, &(t, len)) in c.iter().enumerate() {
        assert_eq!(t, bufs[i].0);
        got.extend(r.bytes(bufs[i].1, len as usize));
    }
    assert_eq!(got[HDR_LEN..], f[..]);
}

#[test]
fn section_5_1_6_3_without_mrg_rxbuf_a_frame_too_big_for_the_buffer_is_dropped() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig::default(),
        features(NetFeatures::MAC),
    );
    r.wire.push(frame(MAC, 1500, 1));
    let small = frame(MAC, 100, 2);
    r.wire.push(small.clone());
    // The small buffer is given back empty; the next one takes the next frame.
    let (t1, _) = r.rx_buf(512);
    let (t2, a2) = r.rx_buf(2048);
    r.ready();
    let c = r.completions_on(0);
    assert_eq!(c, vec![(t1, 0), (t2, (HDR_LEN + 100) as u32)]);
    assert_eq!(r.bytes(a2 + HDR_LEN as u64, 100), small);
    assert_eq!(r.dev.stats().rx_drop_too_big, 1);
}

#[test]
fn section_5_1_6_2_malformed_transmit_chains_are_dropped_and_counted() {
    let mut r = rig(Wire::new());
    // Header shorter than 12 bytes.
    let h = r.data(&[0u8; 8]);
    r.add_on(1, &[Buf::R(h, 8)]);
    // A device-writable buffer in a transmit chain.
    let f = r.data(&frame(BCAST, 64, 0));
    let hd = r.data(&hdr());
    r.add_on(1, &[Buf::R(hd, 12), Buf::W(f, 64)]);
    // Longer than the MTU.
    r.tx(&hdr(), &frame(BCAST, 1600, 0));
    // A header claiming a checksum beyond the frame.
    let bad = NetHdr {
        flags: flags::NEEDS_CSUM,
        csum_start: 60,
        csum_offset: 6,
        ..NetHdr::default()
    };
    r.tx(&bad.to_bytes(), &frame(BCAST, 64, 0));
    // A GSO type not negotiated.
    let g = NetHdr {
        gso_type: gso::TCPV4,
        ..NetHdr::default()
    };
    r.tx(&g.to_bytes(), &frame(BCAST, 64, 0));
    // A buffer outside guest memory (its own header: the rig's device
    // checks for double fetches, and one buffer in two chains is read
    // twice by design).
    let hd2 = r.data(&hdr());
    r.add_on(1, &[Buf::R(hd2, 12), Buf::R(0x7fff_0000, 64)]);
    // And a good frame.
    let good = frame(BCAST, 64, 7);
    r.tx(&hdr(), &good);
    r.notify(1);
    assert_eq!(r.completions_on(1).len(), 7);
    assert_eq!(r.wire.sent(), vec![good]);
    let s = r.dev.stats();
    assert_eq!(s.tx_drop_short, 1);
    assert_eq!(s.tx_drop_wrong_direction, 1);
    assert_eq!(s.tx_drop_too_long, 1);
    assert_eq!(s.tx_drop_bad_header, 2);
    assert_eq!(s.tx_drop_malformed, 1);
}

#[test]
fn section_5_1_6_3_receive_chains_with_readable_buffers_are_returned_unused() {
    let mut r = rig(Wire::new());
    let a = r.alloc(2048);
    let bad = r.add_on(0, &[Buf::R(a, 2048)]);
    let tiny = r.add_on(0, &[Buf::W(a, 4)]);
    let f = frame(MAC, 80, 1);
    r.wire.push(f.clone());
    let (good, ga) = r.rx_buf(2048);
    r.ready();
    assert_eq!(
        r.completions_on(0),
        vec![(bad, 0), (tiny, 0), (good, (HDR_LEN + 80) as u32)]
    );
    assert_eq!(r.bytes(ga + HDR_LEN as u64, 80), f);
    assert_eq!(r.dev.stats().rx_bad_chains, 2);
}

#[test]
fn starved_receive_is_bounded_and_resumes_when_buffers_come() {
    let mut r = rig(Wire::new());
    for i in 0..200u32 {
        r.wire.push(frame(MAC, 64, i as u8));
    }
    // No buffers: the device takes all from the backend, keeps 64.
    let s = r.ready();
    assert_eq!(s.completed, 0);
    assert_eq!(r.dev.rx_pending(), 64);
    assert_eq!(r.dev.stats().rx_drop_ring_full, 136);
    assert!(r.wire.state().inbound.is_empty());
    // A second readiness with nothing new is quiet.
    let calls = r.wire.state().recv_calls;
    r.ready();
    assert_eq!(r.wire.state().recv_calls, calls + 1);
    // Buffers come: the oldest 64 frames, in order.
    let bufs: Vec<_> = (0..60).map(|_| r.rx_buf(256)).collect();
    r.notify(0);
    let c = r.completions_on(0);
    assert_eq!(c.len(), 60);
    for (i, &(_, a)) in bufs.iter().enumerate() {
        assert_eq!(r.bytes(a + HDR_LEN as u64, 64), frame(MAC, 64, i as u8));
    }
    assert_eq!(r.dev.rx_pending(), 4);
    // A new frame from the backend waits behind those.
    r.wire.push(frame(MAC, 64, 250));
    let bufs: Vec<_> = (0..5).map(|_| r.rx_buf(256)).collect();
    r.notify(0);
    assert_eq!(r.completions_on(0).len(), 5);
    assert_eq!(r.bytes(bufs[4].1 + HDR_LEN as u64, 64), frame(MAC, 64, 250));
    assert_eq!(r.dev.rx_pending(), 0);
}

#[test]
fn transmit_pauses_while_the_backend_is_busy_and_resumes_on_readiness() {
    let mut r = rig(Wire::new().with(|s| s.busy = true));
    let frames: Vec<_> = (0..5).map(|i| frame(BCAST, 64, i)).collect();
    for f in &frames {
        r.tx(&hdr(), f);
    }
    let s = r.notify(1);
    assert_eq!(s.completed, 0);
    assert!(r.dev.tx_paused());
    // More kicks while paused neither send nor spin.
    r.notify(1);
    assert_eq!(r.dev.stats().tx_busy, 2);
    assert!(r.completions_on(1).is_empty());
    r.wire.state().busy = false;
    let s = r.ready();
    assert_eq!(s.completed, 5);
    assert!(!r.dev.tx_paused());
    assert_eq!(r.wire.sent(), frames);
    assert_eq!(r.completions_on(1).len(), 5);
}

#[test]
fn section_5_1_6_5_1_promiscuous_allmulti_and_the_mac_table_filter() {
    let mut r = rig(Wire::new());
    let other = [0x02, 9, 9, 9, 9, 9];
    let mcast = [0x01, 0, 0x5e, 0, 0, 1];
    // Promiscuous at start: everything passes.
    r.wire.push(frame(other, 64, 0));
    assert!(rx_one(&mut r, 256).is_some());
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]), ctrl::OK);
    assert!(!r.dev.promiscuous());
    for dst in [other, mcast] {
        r.wire.push(frame(dst, 64, 0));
    }
    r.wire.push(frame(BCAST, 64, 0));
    r.wire.push(frame(MAC, 64, 0));
    assert_eq!(rx_one(&mut r, 256).unwrap().1[..6], BCAST);
    assert_eq!(rx_one(&mut r, 256).unwrap().1[..6], MAC);
    assert_eq!(r.dev.stats().rx_drop_filtered, 2);
    // All-multicast lets multicast through.
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_ALLMULTI, &[1]), ctrl::OK);
    r.wire.push(frame(mcast, 64, 0));
    assert_eq!(rx_one(&mut r, 256).unwrap().1[..6], mcast);
    // The unicast table admits `other`.
    let mut t = 1u32.to_le_bytes().to_vec();
    t.extend_from_slice(&other);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(r.ctrl(ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &t), ctrl::OK);
    r.wire.push(frame(other, 64, 0));
    assert_eq!(rx_one(&mut r, 256).unwrap().1[..6], other);
    // A table whose length disagrees with its count is an error.
    assert_eq!(
        r.ctrl(ctrl::CLASS_MAC, ctrl::MAC_TABLE_SET, &t[..8]),
        ctrl::ERR
    );
    // Malformed commands are ERR.
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0, 0]), ctrl::ERR);
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_NOBCAST, &[1]), ctrl::ERR);
    assert_eq!(r.ctrl(9, 0, &[]), ctrl::ERR);
}

#[test]
fn section_5_1_6_5_2_mac_addr_set_changes_the_address_and_the_filter() {
    let mut r = rig(Wire::new());
    let new = [0x02, 1, 2, 3, 4, 5];
    assert_eq!(r.ctrl(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &new), ctrl::OK);
    let mut c = [0u8; 6];
    r.dev.read_config(config::MAC, &mut c);
    assert_eq!(c, new);
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]), ctrl::OK);
    r.wire.push(frame(MAC, 64, 0));
    r.wire.push(frame(new, 64, 0));
    assert_eq!(rx_one(&mut r, 256).unwrap().1[..6], new);
    assert_eq!(
        r.ctrl(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &new[..5]),
        ctrl::ERR
    );
    // Reset restores the configured address.
    r.dev.reset();
    r.dev.read_config(config::MAC, &mut c);
    assert_eq!(c, MAC);
}

#[test]
fn section_5_1_6_5_5_vq_pairs_set_accepts_one_to_max() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig {
            queue_pairs: 4,
            ..NetConfig::default()
        },
        None,
    );
    assert_eq!(r.dev.queue_pairs_in_use(), 1);
    assert_eq!(
        r.ctrl(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &3u16.to_le_bytes()),
        ctrl::OK
    );
    assert_eq!(r.dev.queue_pairs_in_use(), 3);
    for bad in [0u16, 5] {
        assert_eq!(
            r.ctrl(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &bad.to_le_bytes()),
            ctrl::ERR
        );
    }
    assert_eq!(r.dev.queue_pairs_in_use(), 3);
    // Every transmit queue is served.
    let f = frame(BCAST, 64, 0);
    let h = r.data(&hdr());
    let d = r.data(&f);
    r.add_on(5, &[Buf::R(h, 12), Buf::R(d, 64)]);
    r.notify(5);
    assert_eq!(r.wire.sent(), vec![f]);
}

/// An Ethernet + IPv4 + TCP frame from `sport` to `dport` (the guest is
/// 10.0.2.15, the peer 10.0.2.2; the IP and TCP checksums are not set:
/// steering does not read them).
fn tcp(to_guest: bool, sport: u16, dport: u16) -> Vec<u8> {
    let (dst, src) = if to_guest {
        (MAC, [2, 0, 0, 0, 0, 1])
    } else {
        ([2, 0, 0, 0, 0, 1], MAC)
    };
    let (sip, dip) = if to_guest {
        ([10, 0, 2, 2], [10, 0, 2, 15])
    } else {
        ([10, 0, 2, 15], [10, 0, 2, 2])
    };
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&sip);
    f.extend_from_slice(&dip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0; 16]);
    f
}

/// Automatic receive steering (§5.1.6.5.5): before VQ_PAIRS_SET only
/// receiveq1 is used; after it, a flow's frames come back on the receive
/// queue paired with the transmit queue it last sent on, and a smaller
/// VQ_PAIRS_SET takes the queues beyond it out of use.
#[test]
fn section_5_1_6_5_5_received_frames_follow_their_flows_transmit_queue() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig {
            queue_pairs: 3,
            ..NetConfig::default()
        },
        None,
    );
    let post = |r: &mut Rig, q: usize| {
        for _ in 0..4 {
            let a = r.alloc(2048);
            r.add_on(q, &[Buf::W(a, 2048)]);
        }
    };
    for q in [0, 2, 4] {
        post(&mut r, q);
    }
    let rx_counts = |r: &mut Rig| [0usize, 2, 4].map(|q| r.completions_on(q).len());
    // "After initialization of reset, the device MUST queue packets only on
    // receiveq1."
    for port in 0..3 {
        r.wire.push(tcp(true, 5001, 40000 + port));
    }
    r.ready();
    assert_eq!(rx_counts(&mut r), [3, 0, 0]);
    post(&mut r, 0);
    assert_eq!(
        r.ctrl(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &3u16.to_le_bytes()),
        ctrl::OK
    );
    // Three flows, each sent on another transmit queue.
    for (pair, port) in [(0usize, 40000u16), (1, 40001), (2, 40002)] {
        let h = r.data(&hdr());
        let f = tcp(false, port, 5001);
        let d = r.data(&f);
        r.add_on(pair * 2 + 1, &[Buf::R(h, 12), Buf::R(d, f.len() as u32)]);
        r.notify((pair * 2 + 1) as u16);
    }
    for (pair, port) in [(0usize, 40000u16), (1, 40001), (2, 40002)] {
        r.wire.push(tcp(true, 5001, port));
        r.ready();
        let mut want = [0; 3];
        want[pair] = 1;
        assert_eq!(rx_counts(&mut r), want, "flow {port} on pair {pair}");
    }
    // Fewer pairs: the third flow's frames may no longer use receiveq3.
    assert_eq!(
        r.ctrl(ctrl::CLASS_MQ, ctrl::MQ_VQ_PAIRS_SET, &2u16.to_le_bytes()),
        ctrl::OK
    );
    r.wire.push(tcp(true, 5001, 40002));
    r.ready();
    let got = rx_counts(&mut r);
    assert_eq!(got[2], 0, "{got:?}");
    assert_eq!(got[0] + got[1], 1, "{got:?}");
}

/// Over vhost-user the frontend keeps the control queue: QEMU negotiates
/// CTRL_VQ with the driver and forwards MQ alone, and the pairs in use are
/// the queues it gives the device. Then every configured pair is steered
/// to without VQ_PAIRS_SET.
#[test]
fn mq_without_ctrl_vq_steers_over_every_pair_the_frontend_gave() {
    let all = NetConfig {
        queue_pairs: 2,
        ..NetConfig::default()
    };
    let probe = rig_with(Wire::new(), all, None);
    let f = probe.features
        & !(NetFeatures::CTRL_VQ | NetFeatures::CTRL_RX | NetFeatures::CTRL_MAC_ADDR).bits();
    assert_ne!(f & NetFeatures::MQ.bits(), 0);
    let mut r = rig_with(Wire::new(), all, Some(f));
    for q in [0, 2] {
        for _ in 0..2 {
            let a = r.alloc(2048);
            r.add_on(q, &[Buf::W(a, 2048)]);
        }
    }
    let h = r.data(&hdr());
    let out = tcp(false, 40001, 5001);
    let d = r.data(&out);
    r.add_on(3, &[Buf::R(h, 12), Buf::R(d, out.len() as u32)]);
    r.notify(3);
    assert_eq!(r.wire.sent(), vec![out]);
    r.wire.push(tcp(true, 5001, 40001));
    r.ready();
    assert_eq!(r.completions_on(0).len(), 0);
    assert_eq!(r.completions_on(2).len(), 1);
}

#[test]
fn section_5_1_6_5_commands_not_negotiated_are_err() {
    let mut r = rig_with(
        Wire::new(),
        NetConfig::default(),
        features(NetFeatures::CTRL_VQ | NetFeatures::MAC),
    );
    assert_eq!(r.ctrl(ctrl::CLASS_RX, ctrl::RX_PROMISC, &[0]), ctrl::ERR);
    assert_eq!(
        r.ctrl(ctrl::CLASS_MAC, ctrl::MAC_ADDR_SET, &[2, 0, 0, 0, 0, 1]),
        ctrl::ERR
    );
    assert_eq!(r.dev.stats().ctrl_err, 2);
    // A control chain without an ack byte is returned empty.
    let a = r.data(&[0, 0, 0]);
    let t = r.add_on(2, &[Buf::R(a, 3)]);
    r.notify(2);
    assert_eq!(r.completions_on(2), vec![(t, 0)]);
    assert_eq!(r.dev.stats().ctrl_bad_chains, 1);
}

#[test]
fn section_5_1_4_2_link_down_drops_transmit_and_holds_receive() {
    let mut r = rig(Wire::new());
    assert!(r.dev.set_link(false));
    r.tx(&hdr(), &frame(BCAST, 64, 0));
    r.notify(1);
    assert!(r.wire.sent().is_empty());
    assert_eq!(r.dev.stats().tx_drop_link_down, 1);
    r.wire.push(frame(MAC, 64, 0));
    assert!(rx_one(&mut r, 256).is_none());
    assert!(r.dev.set_link(true));
    r.ready();
    assert_eq!(r.completions_on(0).len(), 1);
    assert_eq!(r.dev.stats().config_changes, 2);
}

#[test]
fn section_2_7_10_a_batch_publishes_once_and_notifies_once() {
    let mut r = rig(Wire::new());
    for i in 0..10 {
        r.tx(&hdr(), &frame(BCAST, 64, i));
    }
    let s = r.notify(1);
    assert_eq!(s.completed, 10);
    assert!(s.interrupt);
    assert_eq!(r.dev.stats().batches, 1);
    assert_eq!(r.dev.stats().notifications, 1);
}

#[test]
fn notify_before_activation_and_unknown_queues_are_errors() {
    let mut dev = Net::new(Wire::new(), TestHal::memory(), NetConfig::default()).unwrap();
    assert_eq!(dev.queue_notify(0), Err(DeviceError::NotActivated));
    assert_eq!(
        dev.queue_notify(9),
        Err(DeviceError::NoSuchQueue { queue: 9 })
    );
    assert!(dev.backend_ready().is_ok());
}

#[test]
fn a_device_over_a_boxed_backend_is_send_for_the_harness() {
    fn is_send<T: Send>() {}
    is_send::<
        Net<Box<dyn backends::net::NetBackend + Send>, &'static virtio_core::testing::OwnedMemory>,
    >();
}

#[test]
fn section_5_1_4_1_frames_over_the_mtu_after_their_own_header_go_neither_way() {
    // Untagged: 14 bytes of header, so 1514 is the most with mtu 1500.
    let mut r = rig(Wire::new());
    r.wire.push(frame(MAC, 1515, 1));
    let fits = frame(MAC, 1514, 2);
    r.wire.push(fits.clone());
    let (_, got) = rx_one(&mut r, 2048).unwrap();
    assert_eq!(got, fits, "the 1515-byte untagged frame was dropped");
    assert_eq!(r.dev.stats().rx_drop_too_long, 1);
    // One 802.1Q tag: 18 bytes of header, 1518 fits.
    let mut tagged = frame(MAC, 1518, 3);
    tagged[12..14].copy_from_slice(&[0x81, 0x00]);
    tagged[16..18].copy_from_slice(&[0x88, 0xb5]);
    r.wire.push(tagged.clone());
    let (_, got) = rx_one(&mut r, 2048).unwrap();
    assert_eq!(got, tagged);
    // And on transmit: 1515 untagged is dropped, 1514 goes.
    r.tx(&hdr(), &frame(BCAST, 1515, 4));
    let ok = frame(BCAST, 1514, 5);
    r.tx(&hdr(), &ok);
    r.notify(1);
    assert_eq!(r.wire.sent(), vec![ok]);
    assert_eq!(r.dev.stats().tx_drop_too_long, 1);
}
