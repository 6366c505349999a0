//! `-netdev user` driven by a guest made of smoltcp (its DHCP client, TCP
//! and UDP sockets) through the backend's `send`/`recv`, against real
//! host sockets and commands on 127.0.0.1.

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant as StdInstant};

use backends::net::NetBackend;
use backends::net::user::{GuestFwd, HostFwd, UserConfig, UserNet};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{dhcpv4, icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Cidr,
};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

/// The guest's link: frames go to the backend and come from it.
struct Link {
    net: UserNet,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut UserNet);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.send(&[&b]).expect("send");
        r
    }
}

impl phy::Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let mut buf = vec![0u8; 2048];
        let n = self.net.recv(&mut buf).expect("recv")?;
        buf.truncate(n);
        Some((Rx(buf), Tx(&mut self.net)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.net))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

struct Guest {
    link: Link,
    iface: Interface,
    sockets: SocketSet<'static>,
    t0: StdInstant,
}

impl Guest {
    fn new(cfg: UserConfig) -> Guest {
        let mut link = Link {
            net: UserNet::new(cfg).expect("netdev user"),
        };
        let iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC))),
            &mut link,
            Instant::from_micros(0),
        );
        Guest {
            link,
            iface,
            sockets: SocketSet::new(vec![]),
            t0: StdInstant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.t0.elapsed().as_micros() as i64)
    }

    /// Runs both sides until `done` says so (panics after 20 s).
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Guest) -> bool) {
        let deadline = StdInstant::now() + Duration::from_secs(20);
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.link, &mut self.sockets);
            if done(self) {
                return;
            }
            assert!(StdInstant::now() < deadline, "timed out: {what}");
            let fd = self.link.net.readiness_fd().expect("fd");
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 5) };
            self.link.net.poll_link();
        }
    }

    /// DHCP, then the address and route it gave.
    fn dhcp(&mut self) -> Ipv4Cidr {
        let h = self.sockets.add(dhcpv4::Socket::new());
        let mut got = None;
        self.run_until("DHCP", |g| {
            if let Some(dhcpv4::Event::Configured(c)) =
                g.sockets.get_mut::<dhcpv4::Socket>(h).poll()
            {
                assert_eq!(c.router, Some(HOST));
                assert_eq!(&c.dns_servers[..], &[Ipv4Addr::new(10, 0, 2, 3)]);
                got = Some(c.address);
            }
            got.is_some()
        });
        let addr = got.expect("lease");
        self.iface.update_ip_addrs(|a| {
            a.push(IpCidr::Ipv4(addr)).expect("addr");
        });
        self.iface
            .routes_mut()
            .add_default_ipv4_route(HOST)
            .expect("route");
        addr
    }

    fn tcp_socket(&mut self) -> SocketHandle {
        self.sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        ))
    }

    fn connect(&mut self, to: (Ipv4Addr, u16), port: u16) -> SocketHandle {
        let h = self.tcp_socket();
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, to, port)
            .expect("connect");
        h
    }

    /// Sends `data` on `h` and reads `expect` back.
    fn exchange(&mut self, h: SocketHandle, data: &[u8], expect: usize) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        self.run_until("TCP exchange", |g| {
            let s = g.sockets.get_mut::<tcp::Socket>(h);
            if s.can_send() && sent < data.len() {
                sent += s.send_slice(&data[sent..]).expect("send");
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .expect("recv");
            }
            got.len() >= expect && sent == data.len()
        });
        got
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A host TCP server on 127.0.0.1 that reads `n` bytes and sends them back.
fn echo_server(n: usize) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        buf
    });
    (port, t)
}

/// QEMU's defaults: DHCP gives 10.0.2.15/24 with 10.0.2.2 as router and
/// 10.0.2.3 as DNS; a connection to 10.0.2.2 reaches the host's
/// 127.0.0.1, and 256 KiB go there and back intact.
#[test]
fn dhcp_then_tcp_to_a_host_service() {
    let mut g = Guest::new(UserConfig::default());
    let addr = g.dhcp();
    assert_eq!(addr, Ipv4Cidr::new(Ipv4Addr::new(10, 0, 2, 15), 24));
    let data = pattern(256 << 10, 7);
    let (port, server) = echo_server(data.len());
    let h = g.connect((HOST, port), 40000);
    let back = g.exchange(h, &data, data.len());
    assert_eq!(back, data);
    assert_eq!(server.join().unwrap(), data);
    // The guest closes; both sides retire the connection.
    g.sockets.get_mut::<tcp::Socket>(h).close();
    g.run_until("close", |g| g.link.net.flows().0 == 0);
}

/// A port nobody listens on: the guest's SYN is answered with a RST
/// (connection refused), and nothing is left behind.
#[test]
fn refused_connection_gets_a_reset() {
    let mut g = Guest::new(UserConfig::default());
    g.dhcp();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = g.connect((HOST, port), 40001);
    g.run_until("RST", |g| {
        g.sockets.get_mut::<tcp::Socket>(h).state() == tcp::State::Closed
    });
    assert_eq!(g.link.net.flows().0, 0);
    assert!(g.link.net.stats().refused >= 1);
}

/// `hostfwd=tcp:127.0.0.1:0-:22`: a host connection to the forwarded port
/// reaches the guest's listening socket, both ways.
#[test]
fn hostfwd_reaches_a_guest_listener() {
    let cfg = UserConfig {
        hostfwd: vec![HostFwd::parse("tcp:127.0.0.1:0-:22").unwrap()],
        ..UserConfig::default()
    };
    let mut g = Guest::new(cfg);
    g.dhcp();
    let at = g.link.net.hostfwd_addrs()[0];
    let h = g.tcp_socket();
    g.sockets.get_mut::<tcp::Socket>(h).listen(22).unwrap();
    let data = pattern(100_000, 3);
    let want = data.clone();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(at).unwrap();
        s.write_all(&want).unwrap();
        let mut back = vec![0u8; want.len()];
        s.read_exact(&mut back).unwrap();
        back
    });
    let mut got = Vec::new();
    g.run_until("hostfwd data", |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        got.len() == data.len()
    });
    assert_eq!(got, data);
    // Echo it back: the guest's peer is the virtual host.
    assert_eq!(
        g.sockets
            .get_mut::<tcp::Socket>(h)
            .remote_endpoint()
            .map(|e| e.addr),
        Some(IpAddress::Ipv4(HOST))
    );
    let mut sent = 0;
    g.run_until("hostfwd echo", |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && sent < got.len() {
            sent += s.send_slice(&got[sent..]).unwrap();
        }
        sent == got.len() && s.send_queue() == 0
    });
    assert_eq!(client.join().unwrap(), data);
}

/// `guestfwd=tcp:10.0.2.100:1234-cmd:cat` and `…-tcp:127.0.0.1:PORT`: the
/// guest's connections to the virtual server reach a command (one per
/// connection) and a host service; with `restrict=on` they are all the
/// guest can reach: a connection to the host is dropped unanswered.
#[test]
fn guestfwd_and_restrict() {
    let data = pattern(20_000, 9);
    let (port, server) = echo_server(data.len());
    let cfg = UserConfig {
        restrict: true,
        guestfwd: vec![
            GuestFwd::parse(":10.0.2.100:1234-cmd:cat").unwrap(),
            GuestFwd::parse(&format!(":10.0.2.101:80-tcp:127.0.0.1:{port}")).unwrap(),
        ],
        ..UserConfig::default()
    };
    let mut g = Guest::new(cfg);
    g.dhcp();
    let h = g.connect((Ipv4Addr::new(10, 0, 2, 100), 1234), 40002);
    assert_eq!(
        g.exchange(h, b"hello through cat", 17),
        b"hello through cat"
    );
    let h = g.connect((Ipv4Addr::new(10, 0, 2, 101), 80), 40003);
    assert_eq!(g.exchange(h, &data, data.len()), data);
    server.join().unwrap();
    // restrict=on: the host is out of reach (no RST either, as slirp).
    let (port, _server) = echo_server(1);
    let h = g.connect((HOST, port), 40004);
    let until = StdInstant::now() + Duration::from_millis(500);
    g.run_until("restricted", |_| StdInstant::now() > until);
    assert_eq!(
        g.sockets.get_mut::<tcp::Socket>(h).state(),
        tcp::State::SynSent
    );
}

/// UDP: a datagram to 10.0.2.2 reaches the host's 127.0.0.1 and the reply
/// comes back from 10.0.2.2; one to 10.0.2.3:53 goes to the DNS upstream
/// and its answer comes back from 10.0.2.3:53.
#[test]
fn udp_to_the_host_and_dns_forwarding() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (eport, daddr) = (echo.local_addr().unwrap().port(), dns.local_addr().unwrap());
    for s in [&echo, &dns] {
        let s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                b[..n].reverse();
                let _ = s.send_to(&b[..n], from);
            }
        });
    }
    let cfg = UserConfig {
        dns_upstream: Some(daddr),
        ..UserConfig::default()
    };
    let mut g = Guest::new(cfg);
    g.dhcp();
    let h = g.sockets.add(udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]),
    ));
    g.sockets.get_mut::<udp::Socket>(h).bind(5353).unwrap();
    for (to, msg) in [
        ((HOST, eport), &b"ping"[..]),
        ((Ipv4Addr::new(10, 0, 2, 3), 53), &b"query"[..]),
    ] {
        g.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(msg, to)
            .unwrap();
        let mut back = None;
        g.run_until("UDP reply", |g| {
            if let Ok((d, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                back = Some((d.to_vec(), meta.endpoint));
            }
            back.is_some()
        });
        let (d, from) = back.unwrap();
        let mut rev = msg.to_vec();
        rev.reverse();
        assert_eq!(d, rev);
        assert_eq!(from.addr, IpAddress::Ipv4(to.0));
        assert_eq!(from.port, to.1);
    }
}

/// ICMP echo to the virtual host is answered here; bad frames of every
/// kind are dropped and counted, and the backend goes on.
#[test]
fn ping_the_gateway_and_survive_garbage() {
    let mut g = Guest::new(UserConfig::default());
    g.dhcp();
    let h = g.sockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    g.sockets
        .get_mut::<icmp::Socket>(h)
        .bind(icmp::Endpoint::Ident(0x22))
        .unwrap();
    let req = Icmpv4Repr::EchoRequest {
        ident: 0x22,
        seq_no: 1,
        data: b"abcdefgh",
    };
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    {
        let s = g.sockets.get_mut::<icmp::Socket>(h);
        let buf = s.send(req.buffer_len(), IpAddress::Ipv4(HOST)).unwrap();
        req.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
    }
    let mut ok = false;
    g.run_until("echo reply", |g| {
        if let Ok((d, from)) = g.sockets.get_mut::<icmp::Socket>(h).recv() {
            let p = Icmpv4Packet::new_checked(d).unwrap();
            ok = matches!(Icmpv4Repr::parse(&p, &caps),
                Ok(Icmpv4Repr::EchoReply { seq_no: 1, data, .. }) if data == b"abcdefgh")
                && from == IpAddress::Ipv4(HOST);
        }
        ok
    });
    let before = g.link.net.stats().dropped_from_guest;
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&GUEST_MAC);
    for tail in [
        &[][..],
        &[0x08, 0x00][..],
        &[0x08, 0x00, 0x45, 0, 0, 20][..],
        &[0x86, 0xdd, 0x60, 0, 0, 0][..],
        &[0x08, 0x06, 0, 1][..],
    ] {
        let mut f = frame.clone();
        f.extend_from_slice(tail);
        g.link.net.send(&[&f]).unwrap();
    }
    assert!(g.link.net.send(&[&[0u8; 3]]).is_ok());
    assert!(g.link.net.send(&[&vec![0u8; 9000]]).is_err());
    assert!(g.link.net.stats().dropped_from_guest >= before + 6);
}

/// The ends of a connection: a host server that resets (`SO_LINGER` 0)
/// is a RST to the guest, not a FIN (the guest's socket closes without
/// passing CLOSE-WAIT); and all a guest sends before its FIN reaches the
/// host, however fast it closes.
#[test]
fn resets_and_closes_carry_through() {
    let mut g = Guest::new(UserConfig::default());
    g.dhcp();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let lg = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid linger on an open socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const lg).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        drop(s);
        // The second connection: read to the end.
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let h = g.connect((HOST, port), 40010);
    let mut seen_close_wait = false;
    g.run_until("the reset", |g| {
        let st = g.sockets.get_mut::<tcp::Socket>(h).state();
        seen_close_wait |= st == tcp::State::CloseWait;
        st == tcp::State::Closed
    });
    assert!(!seen_close_wait, "the host's reset arrived as a FIN");
    let data = pattern(300_000, 5);
    let h = g.connect((HOST, port), 40011);
    let mut sent = 0;
    g.run_until("send and close", |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && sent < data.len() {
            sent += s.send_slice(&data[sent..]).unwrap();
            if sent == data.len() {
                s.close();
            }
        }
        sent == data.len() && g.link.net.flows().0 == 0
    });
    assert_eq!(t.join().unwrap(), data);
}
