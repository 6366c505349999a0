//! `serve` and `client`: smoltcp on the driver's `phy::Device` adapter.
//!
//! The loop polls smoltcp only when there is work: frames or completions
//! on the device ([`NetDev::idle`]), a timer smoltcp asked for
//! (`poll_delay`), or data the program moved. Between, it waits with
//! `sti; hlt` (irq) or spins (poll), bounded by the phase's deadline.

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::Device;
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use guest_rt::virtio::{self, Mode, clock};
use guest_rt::{exit, print, println};

use crate::pattern::Pattern;

/// What the stack needs from the device besides `phy::Device`.
pub trait NetDev: Device {
    /// Publishes what smoltcp queued (one kick at most); fails the run on
    /// a driver error.
    fn flush(&mut self);
    /// Waits within `ms` milliseconds (`sti; hlt` or spinning, per
    /// `mode`) for a received frame; false if none came.
    fn idle(&mut self, mode: Mode, ms: u64) -> bool;
    /// The link as STATUS says (`true` when STATUS is not offered).
    fn link_up(&mut self) -> bool;
    /// Frames received and queued for transmission so far.
    fn frames(&mut self) -> (u64, u64);
}

/// Memory for the sockets' buffers, carved from the DMA pool's pages (RAM
/// the image's `.bss` could not hold).
pub struct Buffers {
    /// TCP receive buffer.
    pub tcp_rx: &'static mut [u8],
    /// TCP send buffer.
    pub tcp_tx: &'static mut [u8],
    /// UDP receive payloads.
    pub udp_rx: &'static mut [u8],
    /// UDP send payloads.
    pub udp_tx: &'static mut [u8],
}

/// UDP datagrams buffered per direction.
pub const UDP_PACKETS: usize = 64;
/// How often `net.link=down` looks at STATUS, ms.
const LINK_LOOK_MS: u64 = 10;
/// The client's local ports.
const CLIENT_UDP_PORT: u16 = 40000;
const CLIENT_TCP_PORT: u16 = 49152;

/// The stack's settings.
pub struct Setup {
    /// `net.ip` (`None`: DHCP, [`Stack::dhcp`]).
    pub ip: Option<[u8; 4]>,
    /// `net.prefix`.
    pub prefix: u8,
    /// `net.mode`.
    pub mode: Mode,
    /// `net.ms`.
    pub ms: u64,
}

/// smoltcp's interface and sockets over device `D`.
pub struct Stack<'a, D: NetDev> {
    iface: Interface,
    sockets: SocketSet<'a>,
    dev: D,
    tcp: SocketHandle,
    udp: SocketHandle,
    mode: Mode,
    ms: u64,
    /// Polls of the interface (for the report).
    pub polls: u64,
    /// Milliseconds spent waiting for frames or timers (for the report).
    pub idle_ms: u64,
    /// Waits that ended without a frame (a timer or the deadline).
    pub idle_timeouts: u64,
    /// Milliseconds spent in smoltcp's poll (for the report).
    pub poll_ms: u64,
}

fn now() -> Instant {
    Instant::from_millis(clock::now_ms() as i64)
}

impl<'a, D: NetDev> Stack<'a, D> {
    /// An interface with `mac` and `setup.ip/prefix`, one TCP and one UDP
    /// socket in `storage`.
    pub fn new(
        mut dev: D,
        mac: [u8; 6],
        setup: &Setup,
        storage: &'a mut [SocketStorage<'a>],
        bufs: Buffers,
        udp_meta: &'a mut [[udp::PacketMetadata; UDP_PACKETS]; 2],
    ) -> Self {
        clock::start();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = guest_rt::cpu::rdtsc();
        let mut iface = Interface::new(config, &mut dev, now());
        if let Some([a, b, c, d]) = setup.ip {
            iface.update_ip_addrs(|addrs| {
                // One address into an empty list of capacity >= 1.
                let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), setup.prefix));
            });
        }
        let mut sockets = SocketSet::new(storage);
        let mut t = tcp::Socket::new(
            tcp::SocketBuffer::new(bufs.tcp_rx),
            tcp::SocketBuffer::new(bufs.tcp_tx),
        );
        t.set_nagle_enabled(false);
        let tcp = sockets.add(t);
        let [rx_meta, tx_meta] = udp_meta;
        let u = udp::Socket::new(
            udp::PacketBuffer::new(&mut rx_meta[..], bufs.udp_rx),
            udp::PacketBuffer::new(&mut tx_meta[..], bufs.udp_tx),
        );
        let udp = sockets.add(u);
        Stack {
            iface,
            sockets,
            dev,
            tcp,
            udp,
            mode: setup.mode,
            ms: setup.ms,
            polls: 0,
            idle_ms: 0,
            idle_timeouts: 0,
            poll_ms: 0,
        }
    }

    /// `net.ip=dhcp`: asks for a lease (RFC 2131 through smoltcp's client)
    /// and takes its address and router; the address.
    pub fn dhcp(&mut self) -> [u8; 4] {
        let h = self.sockets.add(dhcpv4::Socket::new());
        let deadline = self.deadline();
        loop {
            self.poll();
            if let Some(dhcpv4::Event::Configured(c)) =
                self.sockets.get_mut::<dhcpv4::Socket>(h).poll()
            {
                let addr = c.address;
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(addr));
                });
                if let Some(r) = c.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(r);
                }
                print!("net: dhcp {addr}");
                if let Some(r) = c.router {
                    print!(" router {r}");
                }
                for d in &c.dns_servers {
                    print!(" dns {d}");
                }
                println!();
                // The lease outlives the test; the socket's slot is freed.
                self.sockets.remove(h);
                return addr.address().octets();
            }
            if !self.idle(deadline) {
                exit::fail(format_args!("net: dhcp: no lease in {} ms", self.ms));
            }
        }
    }

    /// The device (for link state and counters).
    pub fn dev(&mut self) -> &mut D {
        &mut self.dev
    }

    /// One poll of the interface: every received frame in, every queued
    /// segment out.
    fn poll(&mut self) {
        self.polls += 1;
        let t = clock::now_ms();
        self.iface.poll(now(), &mut self.dev, &mut self.sockets);
        self.dev.flush();
        self.poll_ms += clock::now_ms().saturating_sub(t);
    }

    /// Waits until a frame arrives, smoltcp's next timer, or
    /// `deadline_ms`; false once the deadline passed.
    fn idle(&mut self, deadline_ms: u64) -> bool {
        self.idle_at_most(deadline_ms, u64::MAX)
    }

    /// [`idle`](Self::idle), waking after `slice_ms` at the latest.
    fn idle_at_most(&mut self, deadline_ms: u64, slice_ms: u64) -> bool {
        let t = clock::now_ms();
        if t >= deadline_ms {
            return false;
        }
        let until = match self.iface.poll_delay(now(), &self.sockets) {
            Some(d) => t.saturating_add(d.total_millis()).min(deadline_ms),
            None => deadline_ms,
        }
        .min(t.saturating_add(slice_ms));
        if until > t {
            if !self.dev.idle(self.mode, until - t) {
                self.idle_timeouts += 1;
            }
            self.idle_ms += clock::now_ms().saturating_sub(t);
        }
        true
    }

    /// A fresh deadline `net.ms` from now.
    fn deadline(&self) -> u64 {
        clock::now_ms().saturating_add(self.ms)
    }

    /// The serve test (see README.md): echo on TCP and UDP `port` until
    /// the conditions hold.
    pub fn serve(&mut self, port: u16, want: &Serve, ip: [u8; 4], scratch: &mut [u8]) {
        self.udp_socket()
            .bind(port)
            .unwrap_or_else(|e| exit::fail(format_args!("net: serve: UDP bind: {e}")));
        self.listen(port);
        let [a, b, c, d] = ip;
        println!("net: ready {a}.{b}.{c}.{d}");
        let mut done = Served::default();
        let mut conn = 0u64;
        let mut connected = false;
        let mut udp_said = false;
        let mut deadline = self.deadline();
        let open_ended = want.bytes.is_none() && want.udp.is_none() && !want.link_down;
        loop {
            self.poll();
            let mut moved = false;
            // UDP: echo every datagram (one copy out, one in).
            loop {
                let u = self.udp_socket();
                if !u.can_send() {
                    break;
                }
                let Ok((data, meta)) = u.recv() else { break };
                let n = data.len().min(scratch.len());
                scratch[..n].copy_from_slice(&data[..n]);
                // No room for the echo (a flood): the datagram is lost,
                // as UDP allows; only echoed ones count.
                if u.send_slice(&scratch[..n], meta.endpoint).is_ok() {
                    done.udp += 1;
                }
                moved = true;
            }
            if let Some(k) = want.udp
                && done.udp >= k
                && !udp_said
            {
                println!("net: udp echoed {}", done.udp);
                udp_said = true;
            }
            // TCP: echo, and close when the peer did and all went out.
            let t = self.tcp_socket();
            if t.is_active() {
                connected = true;
            }
            while t.can_recv() && t.send_capacity() > t.send_queue() {
                let room = (t.send_capacity() - t.send_queue()).min(scratch.len());
                let n = t
                    .recv(|buf| {
                        let n = buf.len().min(room);
                        scratch[..n].copy_from_slice(&buf[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                let sent = t.send_slice(&scratch[..n]).unwrap_or(0);
                if sent != n {
                    exit::fail(format_args!(
                        "net: serve: TCP send buffer took {sent} of {n} bytes"
                    ));
                }
                conn += n as u64;
                moved = true;
            }
            if !t.may_recv() && t.may_send() && t.recv_queue() == 0 {
                // The peer sent FIN (CLOSE-WAIT): ours once the echo left.
                t.close();
                moved = true;
            }
            if connected && matches!(t.state(), tcp::State::Closed | tcp::State::TimeWait) {
                println!("net: tcp echoed {conn} bytes");
                if want.bytes.is_some_and(|b| conn >= b) {
                    done.tcp_ok = true;
                }
                conn = 0;
                connected = false;
                self.listen(port);
                moved = true;
            }
            let met =
                (want.bytes.is_none() || done.tcp_ok) && want.udp.is_none_or(|k| done.udp >= k);
            if met && !open_ended {
                if want.link_down {
                    self.wait_link_down();
                }
                return;
            }
            if moved {
                deadline = self.deadline();
                continue;
            }
            if !self.idle(deadline) {
                if open_ended {
                    println!("net: served {} ms, udp echoed {}", self.ms, done.udp);
                    return;
                }
                let (rx, tx) = self.dev.frames();
                exit::fail(format_args!(
                    "net: serve: {} ms without traffic waiting for {} (tcp connection done {}, {} bytes in the current one; udp echoed {}; {rx} frames in, {tx} out)",
                    self.ms,
                    want.describe(),
                    done.tcp_ok,
                    conn,
                    done.udp
                ));
            }
        }
    }

    /// `net.link=down`: keep serving until a configuration change
    /// interrupt (irq) or STATUS (poll) shows the link down.
    fn wait_link_down(&mut self) {
        let deadline = self.deadline();
        loop {
            let seen = self.mode == Mode::Poll || virtio::config_interrupts() > 0;
            if seen && !self.dev.link_up() {
                println!(
                    "net: link down (config interrupts {})",
                    virtio::config_interrupts()
                );
                return;
            }
            self.poll();
            // A configuration change interrupt does not end a wait for
            // frames: look at STATUS again every LINK_LOOK_MS.
            if !self.idle_at_most(deadline, LINK_LOOK_MS) {
                exit::fail(format_args!(
                    "net: serve: {} ms waiting for the link to go down (config interrupts {}, STATUS link {})",
                    self.ms,
                    virtio::config_interrupts(),
                    if self.dev.link_up() { "up" } else { "down" }
                ));
            }
        }
    }

    fn listen(&mut self, port: u16) {
        let t = self.tcp_socket();
        if t.state() != tcp::State::Closed {
            t.abort();
        }
        t.listen(port)
            .unwrap_or_else(|e| exit::fail(format_args!("net: serve: TCP listen: {e}")));
    }

    fn tcp_socket(&mut self) -> &mut tcp::Socket<'a> {
        self.sockets.get_mut::<tcp::Socket<'a>>(self.tcp)
    }

    fn udp_socket(&mut self) -> &mut udp::Socket<'a> {
        self.sockets.get_mut::<udp::Socket<'a>>(self.udp)
    }

    /// The client test: `udp` datagrams then one TCP connection of
    /// `bytes`, every echo compared with the pattern.
    pub fn client(&mut self, peer: [u8; 4], port: u16, udp: u64, bytes: u64, pat: &Pattern) {
        let [a, b, c, d] = peer;
        let remote = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)), port);
        if udp > 0 {
            self.udp_client(remote, udp, pat);
        }
        if bytes > 0 {
            self.tcp_client(remote, bytes, pat);
        }
    }

    fn udp_client(&mut self, remote: IpEndpoint, count: u64, pat: &Pattern) {
        self.udp_socket()
            .bind(CLIENT_UDP_PORT)
            .unwrap_or_else(|e| exit::fail(format_args!("net: client: UDP bind: {e}")));
        let mut off = 0u64;
        for i in 0..count {
            let size = (i % 1400 + 1) as usize;
            match self.udp_socket().send(size, remote) {
                Ok(buf) => pat.fill(off, buf),
                Err(e) => exit::fail(format_args!("net: client: UDP send {i}: {e}")),
            }
            let deadline = self.deadline();
            loop {
                self.poll();
                if let Ok((data, _)) = self.udp_socket().recv() {
                    if data.len() != size {
                        exit::fail(format_args!(
                            "net: client: UDP datagram {i}: {size} bytes sent, {} echoed",
                            data.len()
                        ));
                    }
                    if let Err(k) = pat.check(off, data) {
                        exit::fail(format_args!(
                            "net: client: UDP datagram {i}: byte {k} differs from the pattern"
                        ));
                    }
                    break;
                }
                if !self.idle(deadline) {
                    let (rx, tx) = self.dev.frames();
                    exit::fail(format_args!(
                        "net: client: {} ms waiting for the echo of UDP datagram {i} ({size} bytes; {rx} frames in, {tx} out)",
                        self.ms
                    ));
                }
            }
            off += size as u64;
        }
        println!("net: udp {count}/{count} echoed");
    }

    fn tcp_client(&mut self, remote: IpEndpoint, total: u64, pat: &Pattern) {
        let cx = self.iface.context();
        let t = self.sockets.get_mut::<tcp::Socket<'a>>(self.tcp);
        t.connect(cx, remote, CLIENT_TCP_PORT)
            .unwrap_or_else(|e| exit::fail(format_args!("net: client: TCP connect: {e}")));
        let (mut sent, mut got) = (0u64, 0u64);
        let mut closing = false;
        let mut deadline = self.deadline();
        let t0 = clock::now_ms();
        loop {
            self.poll();
            let mut moved = false;
            let t = self.tcp_socket();
            while sent < total && t.can_send() {
                let n = t
                    .send(|buf| {
                        let n = buf.len().min((total - sent) as usize);
                        pat.fill(sent, &mut buf[..n]);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                sent += n as u64;
                moved = true;
            }
            while t.can_recv() {
                let r = t.recv(|buf| (buf.len(), (buf.len(), pat.check(got, buf))));
                let Ok((n, ok)) = r else { break };
                if let Err(k) = ok {
                    exit::fail(format_args!(
                        "net: client: TCP echo byte {} differs from the pattern",
                        got + k as u64
                    ));
                }
                if n == 0 {
                    break;
                }
                got += n as u64;
                moved = true;
            }
            if got > total {
                exit::fail(format_args!(
                    "net: client: TCP echoed {got} bytes, {total} sent"
                ));
            }
            if got == total && !closing {
                t.close();
                closing = true;
                moved = true;
            }
            let state = t.state();
            if closing && matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                let ms = clock::now_ms().saturating_sub(t0).max(1);
                println!(
                    "net: tcp {total} bytes echoed ok ({ms} ms, {} KiB/s, {} polls)",
                    total * 1000 / 1024 / ms,
                    self.polls
                );
                return;
            }
            if !closing && state == tcp::State::Closed {
                exit::fail(format_args!(
                    "net: client: TCP connection closed by the peer after {sent} bytes sent, {got} echoed"
                ));
            }
            if moved {
                deadline = self.deadline();
                continue;
            }
            if !self.idle(deadline) {
                let (rx, tx) = self.dev.frames();
                exit::fail(format_args!(
                    "net: client: {} ms waiting for the TCP {} ({sent} of {total} bytes sent, {got} echoed, state {state}; {rx} frames in, {tx} out)",
                    self.ms,
                    if closing { "close" } else { "echo" }
                ));
            }
        }
    }
}

/// The serve test's conditions.
#[derive(Default)]
pub struct Serve {
    /// `net.bytes` (absent or 0: none).
    pub bytes: Option<u64>,
    /// `net.udp`.
    pub udp: Option<u64>,
    /// `net.link=down`.
    pub link_down: bool,
}

impl Serve {
    fn describe(&self) -> &'static str {
        match (self.bytes.is_some(), self.udp.is_some()) {
            (true, true) => "a TCP echo of net.bytes and net.udp datagrams",
            (true, false) => "a TCP connection echoing net.bytes and closing",
            (false, true) => "net.udp UDP datagrams",
            (false, false) => "the link to go down",
        }
    }
}

#[derive(Default)]
struct Served {
    tcp_ok: bool,
    udp: u64,
}
