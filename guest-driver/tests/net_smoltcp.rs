//! The smoltcp adapter (`guest_driver::net::smol`): two drivers on one
//! hub, each under a smoltcp interface, exchange UDP datagrams and a TCP
//! stream, with checksum offload (§5.1.6.2, §5.1.6.4) and without; a
//! frame with a bad checksum the device did not vouch for is dropped and
//! counted by the adapter.
#![cfg(feature = "smoltcp")]

mod common;
mod net_support;

use backends::net::NetBackend;
use backends::net::hub::{Hub, HubPort};
use common::Env;
use guest_driver::net::smol::SmolNet;
use guest_driver::net::{Net, NetOptions};
use net_support::{DevBus, udp_frame};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{Checksum, Device};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use virtio_devices::net::NetConfig;

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const IP_A: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const IP_B: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

type Dev<'a> = SmolNet<&'a common::Pool, &'a DevBus<HubPort>>;

fn iface(dev: &mut Dev<'_>, mac: [u8; 6], ip: Ipv4Address) -> Interface {
    let cfg = Config::new(EthernetAddress(mac).into());
    let mut i = Interface::new(cfg, dev, Instant::from_millis(0));
    i.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(ip), 24)).unwrap());
    i
}

fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0]
}

#[test]
fn net_smoltcp_udp_and_tcp_between_two_drivers() {
    for csum in [false, true] {
        let (env_a, env_b) = (Env::with_pages(256), Env::with_pages(256));
        let hub = Hub::new();
        let cfg = |mac| NetConfig {
            mac,
            ..NetConfig::default()
        };
        let bus_a = DevBus::new(hub.port("a").unwrap(), env_a.memory(), cfg(MAC_A));
        let bus_b = DevBus::new(hub.port("b").unwrap(), env_b.memory(), cfg(MAC_B));
        let opts = NetOptions {
            csum,
            ..NetOptions::default()
        };
        let mut a = SmolNet::new(Net::new(&env_a.hal, &bus_a, opts).unwrap());
        let mut b = SmolNet::new(Net::new(&env_b.hal, &bus_b, opts).unwrap());
        let caps = a.capabilities();
        assert_eq!(caps.max_transmission_unit, 1514);
        let want = if csum { Checksum::None } else { Checksum::Both };
        assert_eq!(format!("{:?}", caps.checksum.tcp), format!("{want:?}"));
        let mut ia = iface(&mut a, MAC_A, IP_A);
        let mut ib = iface(&mut b, MAC_B, IP_B);

        let udp_sock = || {
            udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]),
            )
        };
        let tcp_sock = || {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            )
        };
        let mut sa_store: [SocketStorage; 4] = Default::default();
        let mut sb_store: [SocketStorage; 4] = Default::default();
        let mut sa = SocketSet::new(&mut sa_store[..]);
        let mut sb = SocketSet::new(&mut sb_store[..]);
        let ua = sa.add(udp_sock());
        let ub = sb.add(udp_sock());
        let ta = sa.add(tcp_sock());
        let tb = sb.add(tcp_sock());
        sa.get_mut::<udp::Socket>(ua).bind(1000).unwrap();
        sb.get_mut::<udp::Socket>(ub).bind(7).unwrap();
        sb.get_mut::<tcp::Socket>(tb).listen(7).unwrap();

        const TOTAL: usize = 300_000;
        let mut udp_sent = 0usize;
        let mut udp_echoed = 0usize;
        let mut connected = false;
        let mut sent = 0usize;
        let mut received = Vec::new();
        let mut done = false;
        for now in 0..200_000i64 {
            let t = Instant::from_millis(now);
            ia.poll(t, &mut a, &mut sa);
            a.flush().unwrap();
            bus_b.pump();
            ib.poll(t, &mut b, &mut sb);
            b.flush().unwrap();
            bus_a.pump();
            // UDP: 20 datagrams of cycling sizes, echoed by B.
            {
                let s = sb.get_mut::<udp::Socket>(ub);
                let mut buf = vec![0u8; 2048];
                while let Ok((n, meta)) = s.recv_slice(&mut buf) {
                    s.send_slice(&buf[..n], meta.endpoint).unwrap();
                }
            }
            {
                let s = sa.get_mut::<udp::Socket>(ua);
                let mut buf = vec![0u8; 2048];
                while let Ok((n, _)) = s.recv_slice(&mut buf) {
                    let want: Vec<u8> = (0..udp_echoed * 70 + 1).map(pattern).collect();
                    assert_eq!(&buf[..n], &want[..]);
                    udp_echoed += 1;
                }
                if udp_sent < 20 && udp_sent == udp_echoed && s.can_send() {
                    let d: Vec<u8> = (0..udp_sent * 70 + 1).map(pattern).collect();
                    s.send_slice(&d, (IpAddress::Ipv4(IP_B), 7)).unwrap();
                    udp_sent += 1;
                }
            }
            if udp_echoed < 20 {
                continue;
            }
            // TCP: A sends TOTAL pattern bytes; B echoes; A compares.
            {
                let s = sb.get_mut::<tcp::Socket>(tb);
                if s.can_recv() && s.can_send() {
                    let mut buf = vec![0u8; 65536];
                    let room = s.send_capacity() - s.send_queue();
                    let n = s.recv_slice(&mut buf[..room.min(65536)]).unwrap();
                    s.send_slice(&buf[..n]).unwrap();
                }
                if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                    s.close();
                }
            }
            let s = sa.get_mut::<tcp::Socket>(ta);
            if !connected {
                s.connect(ia.context(), (IpAddress::Ipv4(IP_B), 7), 40000)
                    .unwrap();
                connected = true;
            }
            if s.can_send() && sent < TOTAL {
                let chunk: Vec<u8> = (sent..TOTAL.min(sent + 8192)).map(pattern).collect();
                sent += s.send_slice(&chunk).unwrap();
                if sent == TOTAL {
                    s.close();
                }
            }
            if s.can_recv() {
                s.recv(|b| {
                    received.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if received.len() == TOTAL {
                done = true;
                break;
            }
        }
        assert!(done, "csum {csum}: udp {udp_echoed} tcp {}", received.len());
        assert!(received.iter().enumerate().all(|(i, b)| *b == pattern(i)));
        let (na, nb) = (a.net().stats(), b.net().stats());
        assert_eq!(na.rx_drop_checksum + nb.rx_drop_checksum, 0);
        if csum {
            // Every TCP/UDP frame was checksummed and validated by the
            // device, not by smoltcp.
            assert!(na.rx_csum_valid > 100 && nb.rx_csum_valid > 100, "{na:?}");
            assert!(bus_a.with(|d| d.stats().tx_checksummed) > 100);
        } else {
            assert_eq!(na.rx_csum_valid, 0);
        }
        assert!(a.take_error().is_none() && b.take_error().is_none());
    }
}

#[test]
fn net_smoltcp_adapter_drops_bad_checksums_it_must_verify() {
    let env = Env::new();
    let hub = Hub::new();
    let mut peer = hub.port("peer").unwrap();
    let bus = DevBus::new(hub.port("a").unwrap(), env.memory(), NetConfig::default());
    let mut a = SmolNet::new(Net::new(&env.hal, &bus, NetOptions::default()).unwrap());
    let mac = a.net().mac();
    let mut ia = iface(&mut a, mac, Ipv4Address::new(10, 0, 2, 2));
    let mut store: [SocketStorage; 1] = Default::default();
    let mut s = SocketSet::new(&mut store[..]);
    let h = s.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    ));
    s.get_mut::<udp::Socket>(h).bind(7).unwrap();
    let mut f = udp_frame(mac, [2, 0, 0, 0, 0, 9], b"checksum me");
    // A wrong, non-zero UDP checksum.
    f[40] = 0x12;
    f[41] = 0x34;
    peer.send(&[&f]).unwrap();
    bus.pump();
    ia.poll(Instant::from_millis(0), &mut a, &mut s);
    assert_eq!(a.net().stats().rx_drop_checksum, 1);
    assert!(s.get_mut::<udp::Socket>(h).recv().is_err());
}
