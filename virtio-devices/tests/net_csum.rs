//! §5.1.6.4.1: on receive from a plain backend (no virtio-net header of
//! its own) with `VIRTIO_NET_F_GUEST_CSUM` negotiated, the device checks
//! IPv4 TCP/UDP checksums on the host and sets `DATA_VALID` when they are
//! right, so the (emulated, slow) guest need not; a wrong checksum or a
//! frame that is not IPv4 TCP/UDP gets no flag, and without GUEST_CSUM
//! nothing is ever flagged.

mod net_support;
mod queue_rig;

use net_support::{BCAST, MAC, Wire, frame, rig, rig_with};
use virtio_core::features::{NetFeatures, TransportFeatures};
use virtio_core::net::{ETH_HLEN, l4_checksum_offsets, ones_sum};
use virtio_devices::net::{HDR_LEN, NetConfig, NetHdr, flags};

/// 10.0.2.15:1234 -> 10.0.2.2:7, UDP with a complete checksum.
fn udp(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let total = (28 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = !ones_sum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&1234u16.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let (start, offset, pseudo) = l4_checksum_offsets(&f).unwrap();
    let at = usize::from(start + offset);
    let sum = !ones_sum(&f[usize::from(start)..], u32::from(pseudo));
    f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

fn receive_flags(r: &mut net_support::Rig, wire: &Wire, f: Vec<u8>) -> u8 {
    wire.push(f);
    let (_, a) = r.rx_buf(2048);
    r.notify(0);
    r.ready();
    let c = r.completions_on(0);
    assert_eq!(c.len(), 1);
    NetHdr::parse(&r.bytes(a, HDR_LEN)).unwrap().flags
}

#[test]
fn device_sets_data_valid_for_good_l4_checksums_5_1_6_4_1() {
    let wire = Wire::new();
    let mut r = rig(wire.clone());
    assert!(r.features & NetFeatures::GUEST_CSUM.bits() != 0);
    let good = udp(b"hello, checksum");
    assert_eq!(
        receive_flags(&mut r, &wire, good.clone()),
        flags::DATA_VALID
    );
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(receive_flags(&mut r, &wire, bad), 0);
    // Not IPv4 TCP/UDP: nothing said.
    assert_eq!(receive_flags(&mut r, &wire, frame(BCAST, 100, 1)), 0);
    assert_eq!(r.dev.stats().rx_csum_validated, 1);
    // The frame is delivered unchanged.
    assert!(good.len() > ETH_HLEN);
}

#[test]
fn device_sets_nothing_without_guest_csum_5_1_6_4() {
    let wire = Wire::new();
    let f = (NetFeatures::all() & !NetFeatures::GUEST_CSUM).bits()
        | TransportFeatures::VERSION_1.bits();
    let mut r = rig_with(wire.clone(), NetConfig::default(), Some(f & r_offer()));
    assert_eq!(receive_flags(&mut r, &wire, udp(b"x")), 0);
    assert_eq!(r.dev.stats().rx_csum_validated, 0);
}

fn r_offer() -> u64 {
    let wire = Wire::new();
    rig(wire).features
}

/// A frame from a backend with its own virtio-net header (a tap) carrying
/// `flags`: the header as the device received it, then the frame.
fn with_backend_header(flags: u8, f: &[u8]) -> Vec<u8> {
    let hdr = NetHdr {
        flags,
        ..NetHdr::default()
    };
    let mut out = hdr.to_bytes().to_vec();
    out.extend_from_slice(f);
    out
}

/// §5.1.9.4.1 (1.4),
/// device:net/device-operation/processing-of-incoming-packets#5: "If
/// VIRTIO_NET_F_GUEST_CSUM is not negotiated, the device MUST set flags to
/// zero": a tap's DATA_VALID (and
/// any other bit) does not reach a driver that cannot take it.
#[test]
fn section_5_1_9_4_1_flags_are_zero_without_guest_csum_whatever_the_backend_says() {
    let wire = Wire::new();
    wire.state().vnet_hdr_len = HDR_LEN;
    let f = (NetFeatures::all() & !NetFeatures::GUEST_CSUM).bits()
        | TransportFeatures::VERSION_1.bits();
    let mut r = rig_with(wire.clone(), NetConfig::default(), Some(f & r_offer()));
    let frame = with_backend_header(flags::DATA_VALID | flags::RSC_INFO, &udp(b"x"));
    assert_eq!(receive_flags(&mut r, &wire, frame), 0);
}

/// §5.1.9.4.1 (1.4): with GUEST_CSUM the backend's DATA_VALID stands (the
/// host kernel validated the checksum, #24), but RSC_INFO, which needs
/// VIRTIO_NET_F_RSC_EXT (not offered), is cleared (#22).
#[test]
fn section_5_1_9_4_1_a_backend_header_keeps_only_the_bits_negotiated() {
    let wire = Wire::new();
    wire.state().vnet_hdr_len = HDR_LEN;
    let mut r = rig(wire.clone());
    assert!(r.features & NetFeatures::GUEST_CSUM.bits() != 0);
    let frame = with_backend_header(flags::DATA_VALID | flags::RSC_INFO | 0x80, &udp(b"x"));
    assert_eq!(receive_flags(&mut r, &wire, frame), flags::DATA_VALID);
}
