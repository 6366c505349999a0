//! User-mode networking (QEMU's `-netdev user`, its default network):
//! the guest sits behind a NAT made of host sockets, with no privileges
//! and nothing to set up on the host.
//!
//! The virtual network is QEMU's: the guest gets 10.0.2.15 (and up) by
//! DHCP, 10.0.2.2 is the gateway and stands for the host (connections to
//! it reach the host's 127.0.0.1), 10.0.2.3 forwards DNS to the host's
//! resolver. TCP runs on smoltcp: each guest connection is accepted by a
//! smoltcp socket once the matching host connection is made (a refused
//! one is answered with a RST), and bytes are spliced between the two.
//! UDP datagrams go out through one host socket per flow, ICMP echo to the
//! virtual addresses is answered here. `hostfwd` rules listen on the host
//! and connect into the guest, `guestfwd` rules send the guest's
//! connections to a virtual address to a host service or a command, and
//! `restrict=on` leaves the guest only those.
//!
//! Not done: IPv6, IP fragments, ICMP beyond echo to the virtual
//! addresses (pings to the outside get no answer, as slirp without ping
//! sockets), TFTP, BOOTP file names and SMB; each is dropped.

pub mod config;
pub mod dhcp;
mod host;

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Child;
use std::string::{String, ToString};
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr,
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpListenEndpoint, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};

pub use config::{ConfigError, GuestFwd, GuestFwdTarget, HostFwd, Proto, UserConfig};
use host::{Epoll, HostStream, Timer};

use super::{NetBackend, NetError, Sent};

/// The virtual host's MAC address (slirp's `52:55:` and the host address).
pub const HOST_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// The virtual network's MTU.
pub const MTU: usize = 1500;
const ETH_HDR: usize = 14;
/// Bytes each spliced TCP connection buffers each way.
const TCP_BUF: usize = 64 * 1024;
/// A UDP flow idle this long is closed (slirp's is 240 s for DNS-less
/// flows; a NAT's usual is minutes).
const UDP_IDLE: Duration = Duration::from_secs(120);
/// A TCP connection whose guest stops answering is aborted after this
/// (keep-alive probes every [`TCP_KEEPALIVE`] keep an idle but live one).
const TCP_TIMEOUT: Duration = Duration::from_secs(300);
/// Keep-alive probes to the guest on an idle connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// A DNS flow is closed this long after its last datagram (answers come
/// at once; every lookup from a new port is a new flow).
const DNS_IDLE: Duration = Duration::from_secs(10);
/// A `hostfwd` listener that cannot accept (out of file descriptors)
/// rests this long before it is tried again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Frames waiting for the guest at most; later ones are dropped (the
/// guest stopped taking its receive queue).
const OUT_MAX: usize = 4096;
/// The most concurrent TCP connections and UDP flows, each (well under
/// the usual 1024 file descriptors a process may hold).
pub const MAX_FLOWS: usize = 256;

fn io_err(what: impl Into<String>, err: io::Error) -> NetError {
    NetError::Io {
        what: what.into(),
        err,
    }
}

/// smoltcp's link: one guest frame in, frames for the guest out.
#[derive(Debug, Default)]
struct Phy {
    rx: Option<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
}

struct RxTok(Vec<u8>);
struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}

impl phy::Device for Phy {
    type RxToken<'a>
        = RxTok
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxTok, TxTok<'_>)> {
        let f = self.rx.take()?;
        Some((RxTok(f), TxTok(&mut self.out)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxTok<'_>> {
        (self.out.len() < OUT_MAX).then_some(TxTok(&mut self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU + ETH_HDR;
        c
    }
}

/// One guest TCP connection and its host side.
#[derive(Debug)]
struct TcpFlow {
    /// The guest's end.
    guest: (Ipv4Addr, u16),
    /// The other end as the guest sees it.
    remote: (Ipv4Addr, u16),
    /// The smoltcp socket; `None` while the host connection is being made.
    handle: Option<SocketHandle>,
    /// The guest's SYN, held until the host connection is made.
    syn: Option<Vec<u8>>,
    host: HostStream,
    child: Option<Child>,
    host_eof: bool,
    shut_wr: bool,
    interest: u32,
    /// Over: removed after the stack's next output pass (which sends its
    /// last FIN, ACK or RST).
    done: bool,
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One guest UDP flow (its port to one remote) and its host socket.
#[derive(Debug)]
struct UdpFlow {
    guest: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
    sock: UdpSocket,
    last: std::time::Instant,
    /// How long it may stay idle.
    idle: Duration,
}

/// A `hostfwd` rule's host socket.
#[derive(Debug)]
enum Forward {
    Tcp {
        listener: TcpListener,
        rule: HostFwd,
        interest: u32,
        /// Resting after a failed accept, until then.
        rest_until: Option<std::time::Instant>,
    },
    Udp {
        sock: UdpSocket,
        rule: HostFwd,
        /// The port it is bound to (the rule's, or the one port 0 got).
        port: u16,
        /// The host peer that last sent, where the guest's replies go.
        peer: Option<SocketAddr>,
    },
}

/// Counters of what was dropped and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Guest frames no rule takes (IPv6, fragments, other protocols,
    /// malformed ones).
    pub dropped_from_guest: u64,
    /// Frames for the guest dropped (no guest MAC yet, too big, queue
    /// full).
    pub dropped_to_guest: u64,
    /// Connections and flows refused (restrict, the flow limit, the host
    /// refused).
    pub refused: u64,
}

/// `-netdev user`: a NAT between the guest and host sockets.
pub struct UserNet {
    cfg: UserConfig,
    dns_upstream: SocketAddr,
    iface: Interface,
    phy: Phy,
    sockets: SocketSet<'static>,
    guest_mac: Option<EthernetAddress>,
    leases: dhcp::Leases,
    tcp: Vec<TcpFlow>,
    udp: Vec<UdpFlow>,
    forwards: Vec<Forward>,
    epoll: Epoll,
    timer: Timer,
    start: std::time::Instant,
    next_port: u16,
    stats: UserStats,
    /// A datagram's room, kept across pumps (one per frame otherwise).
    scratch: Vec<u8>,
}

impl core::fmt::Debug for UserNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UserNet")
            .field("cfg", &self.cfg)
            .field("tcp", &self.tcp.len())
            .field("udp", &self.udp.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl UserNet {
    /// Builds the network `cfg` describes and binds its `hostfwd` ports.
    pub fn new(cfg: UserConfig) -> Result<UserNet, NetError> {
        cfg.check().map_err(|e| {
            io_err(
                "netdev user",
                io::Error::new(ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        let dns_upstream = cfg
            .dns_upstream
            .or_else(config::resolv_conf_nameserver)
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53));
        let epoll = Epoll::new().map_err(|e| io_err("netdev user: epoll", e))?;
        let timer = Timer::new().map_err(|e| io_err("netdev user: timerfd", e))?;
        let mut have = 0;
        epoll.set(timer.fd(), &mut have, libc::EPOLLIN as u32);
        let mut forwards = Vec::new();
        for rule in &cfg.hostfwd {
            let what = || {
                std::format!(
                    "netdev user: hostfwd {}:{}",
                    if rule.proto == Proto::Tcp {
                        "tcp"
                    } else {
                        "udp"
                    },
                    rule.host
                )
            };
            let fwd = match rule.proto {
                Proto::Tcp => {
                    let l = TcpListener::bind(rule.host).map_err(|e| io_err(what(), e))?;
                    l.set_nonblocking(true).map_err(|e| io_err(what(), e))?;
                    Forward::Tcp {
                        listener: l,
                        rule: rule.clone(),
                        interest: 0,
                        rest_until: None,
                    }
                }
                Proto::Udp => {
                    let s = UdpSocket::bind(rule.host).map_err(|e| io_err(what(), e))?;
                    s.set_nonblocking(true).map_err(|e| io_err(what(), e))?;
                    let port = s.local_addr().map_err(|e| io_err(what(), e))?.port();
                    Forward::Udp {
                        sock: s,
                        rule: rule.clone(),
                        port,
                        peer: None,
                    }
                }
            };
            let mut fwd = fwd;
            match &mut fwd {
                Forward::Tcp {
                    listener, interest, ..
                } => epoll.set(listener.as_raw_fd(), interest, libc::EPOLLIN as u32),
                Forward::Udp { sock, .. } => {
                    let mut have = 0;
                    epoll.set(sock.as_raw_fd(), &mut have, libc::EPOLLIN as u32);
                }
            }
            forwards.push(fwd);
        }
        let mut phy = Phy::default();
        let mut ic = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(HOST_MAC)));
        let start = std::time::Instant::now();
        ic.random_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let mut iface = Interface::new(ic, &mut phy, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.host), cfg.prefix));
        });
        // Every address the guest sends TCP to is answered here (the NAT).
        iface.set_any_ip(true);
        Ok(UserNet {
            cfg,
            dns_upstream,
            iface,
            phy,
            sockets: SocketSet::new(Vec::new()),
            guest_mac: None,
            leases: dhcp::Leases::default(),
            tcp: Vec::new(),
            udp: Vec::new(),
            forwards,
            epoll,
            timer,
            start,
            next_port: 49152,
            stats: UserStats::default(),
            scratch: vec![0u8; 65536],
        })
    }

    /// What was dropped so far.
    pub fn stats(&self) -> UserStats {
        self.stats
    }

    /// The host addresses the `hostfwd` rules listen on (port 0 in a rule
    /// gets a free port; this says which).
    pub fn hostfwd_addrs(&self) -> Vec<SocketAddr> {
        self.forwards
            .iter()
            .filter_map(|f| match f {
                Forward::Tcp { listener, .. } => listener.local_addr().ok(),
                Forward::Udp { sock, .. } => sock.local_addr().ok(),
            })
            .collect()
    }

    /// Open TCP connections and UDP flows.
    pub fn flows(&self) -> (usize, usize) {
        (self.tcp.len(), self.udp.len())
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    fn is_virtual(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.host || a == self.cfg.dns || self.cfg.guestfwd.iter().any(|g| g.addr == a)
    }

    /// Hands one frame to smoltcp and lets it answer.
    fn feed(&mut self, frame: Vec<u8>) {
        self.phy.rx = Some(frame);
        let now = self.now();
        self.iface.poll(now, &mut self.phy, &mut self.sockets);
        self.phy.rx = None;
    }

    /// One frame from the guest.
    fn guest_frame(&mut self, frame: Vec<u8>) {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            self.stats.dropped_from_guest += 1;
            return;
        };
        let src = eth.src_addr();
        if src.is_unicast() {
            self.guest_mac = Some(src);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                // Only the virtual addresses answer ARP (smoltcp with
                // any_ip would claim every address, the guest's own too).
                let target = ArpPacket::new_checked(eth.payload())
                    .ok()
                    .and_then(|p| ArpRepr::parse(&p).ok());
                match target {
                    Some(ArpRepr::EthernetIpv4 {
                        target_protocol_addr,
                        ..
                    }) if self.is_virtual(target_protocol_addr) => self.feed(frame),
                    _ => self.stats.dropped_from_guest += 1,
                }
            }
            EthernetProtocol::Ipv4 => self.ipv4_from_guest(frame),
            _ => self.stats.dropped_from_guest += 1,
        }
    }

    fn ipv4_from_guest(&mut self, frame: Vec<u8>) {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_HDR..]) else {
            self.stats.dropped_from_guest += 1;
            return;
        };
        if !ip.verify_checksum() || ip.more_frags() || ip.frag_offset() != 0 {
            self.stats.dropped_from_guest += 1;
            return;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match ip.next_header() {
            IpProtocol::Tcp => self.tcp_from_guest(frame, src, dst),
            IpProtocol::Udp => {
                let payload = ip.payload().to_vec();
                self.udp_from_guest(src, dst, &payload);
            }
            IpProtocol::Icmp => {
                let payload = ip.payload().to_vec();
                self.icmp_from_guest(src, dst, &payload);
            }
            _ => self.stats.dropped_from_guest += 1,
        }
    }

    fn icmp_from_guest(&mut self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        let caps = ChecksumCapabilities::default();
        let Some(Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }) = Icmpv4Packet::new_checked(payload)
            .ok()
            .and_then(|p| Icmpv4Repr::parse(&p, &caps).ok())
        else {
            self.stats.dropped_from_guest += 1;
            return;
        };
        if !self.is_virtual(dst) {
            self.stats.dropped_from_guest += 1;
            return;
        }
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let len = reply.buffer_len();
        self.push_ip(dst, src, IpProtocol::Icmp, len, |b| {
            reply.emit(&mut Icmpv4Packet::new_unchecked(b), &caps);
        });
    }

    /// Builds an IPv4 frame from `src` to `dst` (the guest) and queues it.
    fn push_ip(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: IpProtocol,
        payload_len: usize,
        emit: impl FnOnce(&mut [u8]),
    ) {
        let broadcast = dst == Ipv4Addr::BROADCAST;
        let mac = if broadcast {
            Some(EthernetAddress::BROADCAST)
        } else {
            self.guest_mac
        };
        let (Some(mac), true, true) = (mac, payload_len + 20 <= MTU, self.phy.out.len() < OUT_MAX)
        else {
            self.stats.dropped_to_guest += 1;
            return;
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: proto,
            payload_len,
            hop_limit: 64,
        };
        let mut buf = vec![0u8; ETH_HDR + ip.buffer_len() + payload_len];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        EthernetRepr {
            src_addr: EthernetAddress(HOST_MAC),
            dst_addr: mac,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut eth);
        let mut p = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.emit(&mut p, &ChecksumCapabilities::default());
        emit(p.payload_mut());
        self.phy.out.push_back(buf);
    }

    /// Queues a UDP datagram for the guest.
    fn push_udp(&mut self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), data: &[u8]) {
        let udp = UdpRepr {
            src_port: src.1,
            dst_port: dst.1,
        };
        let len = udp.header_len() + data.len();
        self.push_ip(src.0, dst.0, IpProtocol::Udp, len, |b| {
            udp.emit(
                &mut UdpPacket::new_unchecked(b),
                &IpAddress::Ipv4(src.0),
                &IpAddress::Ipv4(dst.0),
                data.len(),
                |p| p.copy_from_slice(data),
                &ChecksumCapabilities::default(),
            );
        });
    }

    fn udp_from_guest(&mut self, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) {
        let caps = ChecksumCapabilities::default();
        let parsed = UdpPacket::new_checked(payload).ok().and_then(|p| {
            UdpRepr::parse(&p, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps)
                .ok()
                .map(|r| (r, p.payload().to_vec()))
        });
        let Some((udp, data)) = parsed else {
            self.stats.dropped_from_guest += 1;
            return;
        };
        if udp.dst_port == 67 {
            match dhcp::answer(&self.cfg, &mut self.leases, &data) {
                Some(reply) => {
                    self.push_udp((self.cfg.host, 67), (Ipv4Addr::BROADCAST, 68), &reply)
                }
                None => self.stats.dropped_from_guest += 1,
            }
            return;
        }
        // A reply to a UDP hostfwd peer.
        for f in &mut self.forwards {
            if let Forward::Udp {
                sock,
                rule,
                port,
                peer: Some(peer),
            } = f
                && dst == self.cfg.host
                && udp.dst_port == *port
                && udp.src_port == rule.guest_port
            {
                let _ = sock.send_to(&data, *peer);
                return;
            }
        }
        let guest = (src, udp.src_port);
        let remote = (dst, udp.dst_port);
        if let Some(f) = self
            .udp
            .iter_mut()
            .find(|f| f.guest == guest && f.remote == remote)
        {
            f.last = std::time::Instant::now();
            let _ = f.sock.send(&data);
            return;
        }
        let target = if self.cfg.restrict {
            None
        } else if dst == self.cfg.dns && udp.dst_port == 53 {
            Some(self.dns_upstream)
        } else if dst == self.cfg.host {
            Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                udp.dst_port,
            ))
        } else if self.cfg.contains(dst) || !is_unicast(dst) {
            None
        } else {
            Some(SocketAddr::new(IpAddr::V4(dst), udp.dst_port))
        };
        let Some(target) = target.filter(|_| self.udp.len() < MAX_FLOWS) else {
            self.stats.refused += 1;
            return;
        };
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = match UdpSocket::bind(bind).and_then(|s| {
            s.connect(target)?;
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(_) => {
                self.stats.refused += 1;
                return;
            }
        };
        let _ = sock.send(&data);
        let idle = if target == self.dns_upstream {
            DNS_IDLE
        } else {
            UDP_IDLE
        };
        let mut interest = 0;
        self.epoll
            .set(sock.as_raw_fd(), &mut interest, libc::EPOLLIN as u32);
        self.udp.push(UdpFlow {
            guest,
            remote,
            sock,
            last: std::time::Instant::now(),
            idle,
        });
    }

    /// Where a new guest connection to `dst:port` goes: `Ok(None)` drops
    /// it silently (restrict, as slirp), `Err` answers with a RST.
    fn tcp_target(&self, dst: Ipv4Addr, port: u16) -> Result<Option<Target>, ()> {
        if let Some(g) = self
            .cfg
            .guestfwd
            .iter()
            .find(|g| g.addr == dst && g.port == port)
        {
            return Ok(Some(Target::Guestfwd(g.target.clone())));
        }
        if self.cfg.restrict {
            return Ok(None);
        }
        let to = |a: IpAddr, p| Ok(Some(Target::Tcp(SocketAddr::new(a, p))));
        if dst == self.cfg.host {
            to(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        } else if dst == self.cfg.dns && port == 53 {
            to(self.dns_upstream.ip(), 53)
        } else if self.cfg.contains(dst) || !is_unicast(dst) {
            Err(())
        } else {
            to(IpAddr::V4(dst), port)
        }
    }

    fn tcp_from_guest(&mut self, frame: Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr) {
        let Some((sport, dport, syn, ack)) = Ipv4Packet::new_checked(&frame[ETH_HDR..])
            .ok()
            .and_then(|ip| {
                let t = TcpPacket::new_checked(ip.payload()).ok()?;
                Some((t.src_port(), t.dst_port(), t.syn(), t.ack()))
            })
        else {
            self.stats.dropped_from_guest += 1;
            return;
        };
        let (guest, remote) = ((src, sport), (dst, dport));
        if let Some(f) = self
            .tcp
            .iter()
            .find(|f| f.guest == guest && f.remote == remote)
        {
            if f.handle.is_some() {
                self.feed(frame);
            }
            // Else a SYN again while the host connection is being made.
            return;
        }
        if !syn || ack {
            // No connection: smoltcp answers with a RST (RFC 793 §3.4).
            self.feed(frame);
            return;
        }
        if self.tcp.len() >= MAX_FLOWS {
            self.stats.refused += 1;
            return;
        }
        let target = match self.tcp_target(dst, dport) {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.stats.refused += 1;
                return;
            }
            Err(()) => {
                self.stats.refused += 1;
                self.feed(frame);
                return;
            }
        };
        let opened = match target {
            Target::Tcp(a) => host::connect_tcp(a).map(|s| (s, None)),
            Target::Guestfwd(GuestFwdTarget::Tcp(hp)) => {
                std::net::ToSocketAddrs::to_socket_addrs(&hp)
                    .and_then(|mut it| {
                        it.find(SocketAddr::is_ipv4)
                            .ok_or_else(|| io::Error::from(ErrorKind::AddrNotAvailable))
                    })
                    .and_then(host::connect_tcp)
                    .map(|s| (s, None))
            }
            Target::Guestfwd(GuestFwdTarget::Unix(p)) => host::connect_unix(&p).map(|s| (s, None)),
            Target::Guestfwd(GuestFwdTarget::Cmd(c)) => {
                host::spawn_cmd(&c).map(|(s, ch)| (s, Some(ch)))
            }
        };
        match opened {
            Ok((host, child)) => {
                let mut flow = TcpFlow {
                    guest,
                    remote,
                    handle: None,
                    syn: Some(frame),
                    host,
                    child,
                    host_eof: false,
                    shut_wr: false,
                    interest: 0,
                    done: false,
                };
                self.epoll
                    .set(flow.host.fd(), &mut flow.interest, libc::EPOLLOUT as u32);
                self.tcp.push(flow);
            }
            Err(_) => {
                self.stats.refused += 1;
                self.feed(frame);
            }
        }
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_BUF]),
            tcp::SocketBuffer::new(vec![0u8; TCP_BUF]),
        );
        s.set_nagle_enabled(false);
        // Every segment acknowledged at once: a connection that ends right
        // after data must not leave an ACK owed (it is reaped after the
        // next output pass).
        s.set_ack_delay(None);
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(
            TCP_KEEPALIVE.as_secs(),
        )));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(
            TCP_TIMEOUT.as_secs(),
        )));
        s
    }

    fn ephemeral_port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
            if !self.tcp.iter().any(|f| f.remote == (self.cfg.host, p)) {
                return p;
            }
        }
    }

    /// Accepts `hostfwd` connections and datagrams.
    fn serve_forwards(&mut self) {
        let mut accepted = Vec::new();
        let mut datagrams = Vec::new();
        let buf = &mut self.scratch;
        let now = std::time::Instant::now();
        for f in &mut self.forwards {
            match f {
                Forward::Tcp {
                    listener,
                    rule,
                    interest,
                    rest_until,
                } => {
                    if rest_until.is_some_and(|t| now < t) {
                        continue;
                    }
                    *rest_until = None;
                    self.epoll
                        .set(listener.as_raw_fd(), interest, libc::EPOLLIN as u32);
                    loop {
                        match listener.accept() {
                            Ok((s, _)) => {
                                if s.set_nonblocking(true).is_ok() {
                                    accepted.push((s, rule.guest, rule.guest_port));
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                // Out of descriptors: the connection stays
                                // in the backlog and the listener readable;
                                // rest rather than spin.
                                self.epoll.set(listener.as_raw_fd(), interest, 0);
                                *rest_until = Some(now + ACCEPT_BACKOFF);
                                break;
                            }
                        }
                    }
                }
                Forward::Udp {
                    sock,
                    rule,
                    port,
                    peer,
                } => {
                    while let Ok((n, from)) = sock.recv_from(buf) {
                        *peer = Some(from);
                        datagrams.push((*port, rule.guest, rule.guest_port, buf[..n].to_vec()));
                    }
                }
            }
        }
        for (port, gaddr, gport, data) in datagrams {
            let g = gaddr.unwrap_or_else(|| self.leases.first(&self.cfg));
            self.push_udp((self.cfg.host, port), (g, gport), &data);
        }
        for (stream, gaddr, gport) in accepted {
            if self.tcp.len() >= MAX_FLOWS {
                self.stats.refused += 1;
                continue;
            }
            let g = gaddr.unwrap_or_else(|| self.leases.first(&self.cfg));
            let port = self.ephemeral_port();
            let mut sock = Self::new_socket();
            if sock
                .connect(self.iface.context(), (g, gport), (self.cfg.host, port))
                .is_err()
            {
                self.stats.refused += 1;
                continue;
            }
            let handle = self.sockets.add(sock);
            self.tcp.push(TcpFlow {
                guest: (g, gport),
                remote: (self.cfg.host, port),
                handle: Some(handle),
                syn: None,
                host: HostStream::Tcp(stream),
                child: None,
                host_eof: false,
                shut_wr: false,
                interest: 0,
                done: false,
            });
        }
    }

    /// Datagrams back from the host for the guest; idle flows closed.
    fn serve_udp(&mut self) {
        let buf = &mut self.scratch;
        let mut got = Vec::new();
        let now = std::time::Instant::now();
        for f in &mut self.udp {
            while let Ok(n) = f.sock.recv(buf) {
                f.last = now;
                got.push((f.remote, f.guest, buf[..n].to_vec()));
            }
        }
        for (from, to, data) in got {
            self.push_udp(from, to, &data);
        }
        self.udp.retain(|f| now.duration_since(f.last) < f.idle);
    }

    /// Moves bytes between each connection's two sides and retires the
    /// finished ones.
    fn serve_tcp(&mut self) {
        for i in 0..self.tcp.len() {
            if !self.tcp[i].done && !self.serve_flow(i) {
                let f = &mut self.tcp[i];
                f.done = true;
                self.epoll.set(f.host.fd(), &mut f.interest, 0);
            }
        }
    }

    /// Removes the connections that are over, after the stack's output
    /// pass that sent their last segment.
    fn reap_tcp(&mut self) {
        let mut i = 0;
        while i < self.tcp.len() {
            if self.tcp[i].done {
                let f = self.tcp.swap_remove(i);
                if let Some(h) = f.handle {
                    self.sockets.remove(h);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Serves flow `i`; `false` when it is over.
    fn serve_flow(&mut self, i: usize) -> bool {
        let Some(handle) = self.tcp[i].handle else {
            let f = &mut self.tcp[i];
            if !host::writable_now(f.host.fd()) {
                return true;
            }
            let syn = f.syn.take().unwrap_or_default();
            match f.host.take_error() {
                Ok(None) => {
                    let mut s = Self::new_socket();
                    let (a, p) = f.remote;
                    if s.listen(IpListenEndpoint {
                        addr: Some(IpAddress::Ipv4(a)),
                        port: p,
                    })
                    .is_err()
                    {
                        return false;
                    }
                    let h = self.sockets.add(s);
                    self.tcp[i].handle = Some(h);
                    self.feed(syn);
                    return self.serve_flow(i);
                }
                _ => {
                    // Refused or unreachable: the SYN with no socket gets
                    // smoltcp's RST.
                    self.stats.refused += 1;
                    self.feed(syn);
                    return false;
                }
            }
        };
        let f = &mut self.tcp[i];
        let sock = self.sockets.get_mut::<tcp::Socket>(handle);
        let mut broken = false;
        // Guest to host.
        while sock.can_recv() && !f.shut_wr {
            let host = &mut f.host;
            match sock.recv(|b| match host.write(b) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Err(e)) if e.kind() != ErrorKind::WouldBlock => {
                    broken = true;
                    break;
                }
                _ => break,
            }
        }
        // The guest's FIN, once everything before it was written.
        let guest_fin = matches!(
            sock.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        );
        if !f.shut_wr && guest_fin && sock.recv_queue() == 0 {
            f.host.shutdown_write();
            f.shut_wr = true;
        }
        // Host to guest.
        while !f.host_eof && !broken && sock.can_send() {
            let host = &mut f.host;
            match sock.send(|b| match host.read(b) {
                Ok(0) => (0, HostRead::Eof),
                Ok(n) => (n, HostRead::Data),
                Err(e) if e.kind() == ErrorKind::WouldBlock => (0, HostRead::Wait),
                // A reset (or any failure) of the host side resets the
                // guest's side too.
                Err(_) => (0, HostRead::Failed),
            }) {
                Ok(HostRead::Data) => {}
                Ok(HostRead::Eof) => {
                    f.host_eof = true;
                    sock.close();
                }
                Ok(HostRead::Failed) => broken = true,
                _ => break,
            }
        }
        if broken {
            sock.abort();
        }
        let state = sock.state();
        let ended = matches!(
            state,
            tcp::State::Closed | tcp::State::TimeWait | tcp::State::Listen
        );
        // What the guest sent before its FIN still goes to the host.
        let over = ended && (broken || sock.recv_queue() == 0);
        if over && !broken && state == tcp::State::Closed && !(f.host_eof && f.shut_wr) {
            // The guest reset the connection: so does the host side.
            f.host.reset_on_close();
        }
        let mut want = 0;
        if !over {
            if !f.host_eof
                && sock.can_send()
                && !matches!(state, tcp::State::SynSent | tcp::State::SynReceived)
            {
                want |= libc::EPOLLIN as u32;
            }
            if !f.shut_wr && sock.recv_queue() > 0 {
                want |= libc::EPOLLOUT as u32;
            }
        }
        self.epoll.set(f.host.fd(), &mut f.interest, want);
        !over
    }

    /// Does everything that is due: host sockets, timers, the TCP stack.
    fn pump(&mut self) {
        self.timer.drain();
        self.serve_forwards();
        self.serve_udp();
        let now = self.now();
        self.iface.poll(now, &mut self.phy, &mut self.sockets);
        self.serve_tcp();
        let now = self.now();
        self.iface.poll(now, &mut self.phy, &mut self.sockets);
        self.reap_tcp();
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        // A resting hostfwd listener is tried again at the latest then.
        let rest = self
            .forwards
            .iter()
            .filter_map(|f| match f {
                Forward::Tcp {
                    rest_until: Some(t),
                    ..
                } => Some(t.saturating_duration_since(std::time::Instant::now())),
                _ => None,
            })
            .min();
        let delay = match (delay, rest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timer.arm(delay);
        self.epoll.refresh();
    }
}

/// What a read of the host side of a connection gave.
enum HostRead {
    Data,
    Eof,
    Wait,
    Failed,
}

/// Where a new guest connection goes on the host.
enum Target {
    Tcp(SocketAddr),
    Guestfwd(GuestFwdTarget),
}

/// Whether `a` names one host (not broadcast, multicast or unspecified).
fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_broadcast() || a.is_multicast() || a.is_unspecified())
}

impl NetBackend for UserNet {
    fn send(&mut self, parts: &[&[u8]]) -> Result<Sent, NetError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > MTU + ETH_HDR {
            self.stats.dropped_from_guest += 1;
            return Err(NetError::TooBig {
                len,
                max: MTU + ETH_HDR,
            });
        }
        let mut frame = Vec::with_capacity(len);
        for p in parts {
            frame.extend_from_slice(p);
        }
        self.guest_frame(frame);
        self.pump();
        Ok(Sent::Done)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        if self.phy.out.is_empty() {
            self.pump();
        }
        let Some(f) = self.phy.out.pop_front() else {
            return Ok(None);
        };
        if f.len() > buf.len() {
            return Err(NetError::TooBig {
                len: f.len(),
                max: buf.len(),
            });
        }
        buf[..f.len()].copy_from_slice(&f);
        Ok(Some(f.len()))
    }

    fn poll_link(&mut self) {
        self.pump();
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.epoll.fd())
    }
}
