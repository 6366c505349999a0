//! `net_user`: what a guest can send `-netdev user`
//! (`backends::net::user`): raw frames and frames with correct Ethernet,
//! IPv4, UDP and TCP headers around fuzzed fields (so checksums do not
//! stop the input at the door), ARP for any address, DHCP messages. With
//! `restrict=on` no host socket is opened. Every frame is taken or
//! dropped, never a panic; what comes back for the guest is a whole
//! Ethernet frame from the virtual host within the MTU.

use arbitrary::{Arbitrary, Unstructured};
use backends::net::NetBackend;
use backends::net::user::{HOST_MAC, MTU, UserConfig, UserNet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber, UdpPacket, UdpRepr,
};
use std::net::Ipv4Addr;

const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

#[derive(Arbitrary, Debug)]
enum Frame {
    Raw(Vec<u8>),
    Arp {
        request: bool,
        target: u8,
    },
    Ip {
        proto: u8,
        dst: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        dst: u8,
        payload: Vec<u8>,
    },
    Tcp {
        sport: u16,
        dport: u16,
        dst: u8,
        control: u8,
        seq: u32,
        ack: Option<u32>,
        payload: Vec<u8>,
    },
}

fn addr(x: u8) -> Ipv4Addr {
    match x {
        250 => Ipv4Addr::BROADCAST,
        251 => Ipv4Addr::new(8, 8, 8, 8),
        252 => Ipv4Addr::new(224, 0, 0, 1),
        _ => Ipv4Addr::new(10, 0, 2, x),
    }
}

fn eth(ty: EthernetProtocol, body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + body.len()];
    let mut e = EthernetFrame::new_unchecked(&mut f[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST),
        dst_addr: EthernetAddress(HOST_MAC),
        ethertype: ty,
    }
    .emit(&mut e);
    e.payload_mut().copy_from_slice(body);
    f
}

fn ipv4(
    proto: IpProtocol,
    dst: Ipv4Addr,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 0, 2, 15);
    let r = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: proto,
        payload_len,
        hop_limit: 64,
    };
    let mut b = vec![0u8; 20 + payload_len];
    let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
    r.emit(&mut p, &ChecksumCapabilities::default());
    fill(p.payload_mut());
    eth(EthernetProtocol::Ipv4, &b)
}

fn build(f: &Frame) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 0, 2, 15);
    let caps = ChecksumCapabilities::default();
    match f {
        Frame::Raw(b) => b.clone(),
        Frame::Arp { request, target } => {
            let r = ArpRepr::EthernetIpv4 {
                operation: if *request {
                    ArpOperation::Request
                } else {
                    ArpOperation::Reply
                },
                source_hardware_addr: EthernetAddress(GUEST),
                source_protocol_addr: src,
                target_hardware_addr: EthernetAddress(HOST_MAC),
                target_protocol_addr: addr(*target),
            };
            let mut b = vec![0u8; r.buffer_len()];
            r.emit(&mut ArpPacket::new_unchecked(&mut b[..]));
            eth(EthernetProtocol::Arp, &b)
        }
        Frame::Ip {
            proto,
            dst,
            payload,
        } => {
            let n = payload.len().min(MTU - 20);
            ipv4(IpProtocol::from(*proto), addr(*dst), n, |b| {
                b.copy_from_slice(&payload[..n])
            })
        }
        Frame::Udp {
            sport,
            dport,
            dst,
            payload,
        } => {
            let u = UdpRepr {
                src_port: *sport,
                dst_port: *dport,
            };
            let n = payload.len().min(MTU - 28);
            let dst = addr(*dst);
            ipv4(IpProtocol::Udp, dst, 8 + n, |b| {
                u.emit(
                    &mut UdpPacket::new_unchecked(b),
                    &IpAddress::Ipv4(src),
                    &IpAddress::Ipv4(dst),
                    n,
                    |p| p.copy_from_slice(&payload[..n]),
                    &caps,
                )
            })
        }
        Frame::Tcp {
            sport,
            dport,
            dst,
            control,
            seq,
            ack,
            payload,
        } => {
            let n = payload.len().min(MTU - 40);
            let t = TcpRepr {
                src_port: *sport,
                dst_port: *dport,
                control: match control % 5 {
                    0 => TcpControl::None,
                    1 => TcpControl::Syn,
                    2 => TcpControl::Fin,
                    3 => TcpControl::Rst,
                    _ => TcpControl::Psh,
                },
                seq_number: TcpSeqNumber(*seq as i32),
                ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
                window_len: 65535,
                window_scale: None,
                max_seg_size: None,
                sack_permitted: false,
                sack_ranges: [None, None, None],
                timestamp: None,
                payload: &payload[..n],
            };
            let dst = addr(*dst);
            ipv4(IpProtocol::Tcp, dst, t.buffer_len(), |b| {
                t.emit(
                    &mut TcpPacket::new_unchecked(b),
                    &IpAddress::Ipv4(src),
                    &IpAddress::Ipv4(dst),
                    &caps,
                )
            })
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(frames) = Vec::<Frame>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let cfg = UserConfig {
        restrict: true,
        ..UserConfig::default()
    };
    let Ok(mut net) = UserNet::new(cfg) else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    for f in frames.iter().take(64) {
        let _ = net.send(&[&build(f)]);
        while let Ok(Some(n)) = net.recv(&mut buf) {
            assert!(n <= MTU + 14, "a {n}-byte frame for the guest");
            let e = EthernetFrame::new_checked(&buf[..n]).expect("a whole Ethernet frame");
            assert_eq!(e.src_addr(), EthernetAddress(HOST_MAC));
        }
    }
    net.poll_link();
}
