//! Scenario `net`: the network device (§5.1, DeviceID 1) of the first
//! command-line `virtio_mmio.device=` slot that holds one, through
//! `guest_driver::net`; smoltcp on top for `serve` and `client`.
//!
//! Options (see README.md): `net.test=serve|client|filter|bench`
//! (required), `net.mode=poll|irq`, `net.ms=N`, `net.ip=A.B.C.D`,
//! (or `net.ip=dhcp`), `net.prefix=N`, `net.peer=A.B.C.D`, `net.port=N`, `net.csum=0|1`,
//! `net.mrg=0|1`, `net.bytes=N`, `net.udp=K`, `net.link=down`,
//! `net.dir=tx|rx|echo`, `net.size=N`, `net.count=N`. First line:
//! `net: mac <mac> mtu <mtu> link up|down`.
#![no_std]
#![no_main]

// The modules live in `net/`; a crate root looks beside itself, hence the
// paths (the bin stays `src/bin/net.rs` so harness/build.rs exports
// `GUEST_NET` like the other guests).
#[path = "net/pattern.rs"]
mod pattern;
#[path = "net/raw.rs"]
mod raw;
#[path = "net/stack.rs"]
mod stack;

use guest_driver::VolatileMmio;
use guest_driver::cmdline::{MmioSlot, SlotList};
use guest_driver::hal::{Hal, PAGE_SIZE, PoolHal};
use guest_driver::net::smol::SmolNet;
use guest_driver::net::{Net, NetError, NetOptions};
use guest_driver::transport;
use guest_driver::virtio_core::features::{DeviceType, NetFeatures};
use guest_rt::layout::IDENTITY_MAP_END;
use guest_rt::virtio::{self, Budget, MAX_SLOTS, Mode, OptionError, OrFail};
use guest_rt::{BootInfo, exit, println};
use smoltcp::iface::SocketStorage;
use smoltcp::socket::udp;

use crate::stack::{Buffers, NetDev, Serve, Setup, Stack};

guest_rt::entry!(main);

/// Pages of the scenario's DMA pool (8 MiB): the driver's rings and
/// buffers (16 receive buffers of 64 KiB at MTU 65520) and the sockets'
/// buffers.
const POOL_PAGES: usize = 2048;
/// Default of `net.ms`.
const DEFAULT_MS: u64 = 60_000;
/// Bytes of each TCP socket buffer (window scaling follows, §RFC 7323).
const TCP_BUFFER: usize = 256 * 1024;
/// Bytes of each UDP socket payload buffer.
const UDP_BUFFER: usize = 128 * 1024;
/// Receive and transmit buffers at a jumbo MTU (above [`JUMBO`]) without
/// MRG_RXBUF, and otherwise.
const FEW_BUFFERS: u16 = 16;
const MANY_BUFFERS: u16 = 128;
/// MTUs above this get [`FEW_BUFFERS`].
const JUMBO: u16 = 9000;

type Pool = PoolHal<POOL_PAGES>;
/// The driver as the scenario holds it.
pub type Nic<'p> = Net<&'p Pool, VolatileMmio>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Serve,
    Client,
    Filter,
    Bench,
}

/// `net.dir` of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Send only.
    Tx,
    /// Receive only.
    Rx,
    /// Send and receive what comes back (loopback).
    Echo,
}

impl Dir {
    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Tx => "tx",
            Dir::Rx => "rx",
            Dir::Echo => "echo",
        }
    }
}

/// The parsed options.
pub struct Opts {
    test: Test,
    /// `net.mode`.
    pub mode: Mode,
    /// `net.ms`.
    pub ms: u64,
    /// `None`: `net.ip=dhcp`.
    ip: Option<[u8; 4]>,
    prefix: u8,
    peer: Option<[u8; 4]>,
    port: u16,
    csum: bool,
    mrg: bool,
    bytes: Option<u64>,
    udp: Option<u64>,
    link_down: bool,
    /// `net.dir`.
    pub dir: Dir,
    /// `net.size`.
    pub size: usize,
    /// `net.count`.
    pub count: u64,
}

fn ipv4(o: &virtio::Options, key: &str, name: &'static str) -> Option<[u8; 4]> {
    let v = o.text(key).or_fail(format_args!("net"))?;
    let mut out = [0u8; 4];
    let mut parts = v.split('.');
    let ok = out.iter_mut().all(|b| {
        parts
            .next()
            .filter(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|p| p.parse::<u8>().ok())
            .map(|n| *b = n)
            .is_some()
    }) && parts.next().is_none();
    if !ok {
        exit::fail(format_args!(
            "net: {}",
            OptionError::Malformed {
                key: name,
                value: v,
                want: "an IPv4 address A.B.C.D",
            }
        ));
    }
    Some(out)
}

fn options(boot: &BootInfo) -> Opts {
    let o = virtio::Options::new(
        boot,
        "net",
        &[
            "test", "mode", "ms", "ip", "prefix", "peer", "port", "csum", "mrg", "bytes", "udp",
            "link", "dir", "size", "count",
        ],
    )
    .or_fail(format_args!("net"));
    let test = o
        .choice(
            "test",
            &[
                ("serve", Test::Serve),
                ("client", Test::Client),
                ("filter", Test::Filter),
                ("bench", Test::Bench),
            ],
            "serve, client, filter or bench",
        )
        .or_fail(format_args!("net"))
        .ok_or(virtio::Options::missing("net.test"))
        .or_fail(format_args!("net"));
    let flag = |k: &str, d: bool| {
        o.choice(k, &[("0", false), ("1", true)], "0 or 1")
            .or_fail(format_args!("net"))
            .unwrap_or(d)
    };
    let num = |k: &str| o.u64(k).or_fail(format_args!("net"));
    let bounded = |k: &str, name: &'static str, d: u64, lo: u64, hi: u64, want: &'static str| {
        let v = num(k).unwrap_or(d);
        if v < lo || v > hi {
            exit::fail(format_args!(
                "net: {}",
                OptionError::Malformed {
                    key: name,
                    value: o.raw(k).unwrap_or(""),
                    want,
                }
            ));
        }
        v
    };
    let opts = Opts {
        test,
        mode: o.mode().or_fail(format_args!("net")),
        ms: bounded("ms", "net.ms", DEFAULT_MS, 1, u64::MAX / 4, "1 or more"),
        ip: if o.raw("ip") == Some("dhcp") {
            None
        } else {
            Some(ipv4(&o, "ip", "net.ip").unwrap_or([10, 0, 2, 15]))
        },
        prefix: bounded("prefix", "net.prefix", 24, 0, 32, "0..=32") as u8,
        peer: ipv4(&o, "peer", "net.peer"),
        port: bounded("port", "net.port", 7, 1, 65535, "1..=65535") as u16,
        csum: flag("csum", true),
        mrg: flag("mrg", false),
        bytes: num("bytes").filter(|&b| b > 0),
        udp: num("udp").filter(|&k| k > 0),
        link_down: o
            .choice("link", &[("down", true)], "down")
            .or_fail(format_args!("net"))
            .unwrap_or(false),
        dir: o
            .choice(
                "dir",
                &[("tx", Dir::Tx), ("rx", Dir::Rx), ("echo", Dir::Echo)],
                "tx, rx or echo",
            )
            .or_fail(format_args!("net"))
            .unwrap_or(Dir::Tx),
        size: bounded("size", "net.size", 64, 60, 1514, "60..=1514") as usize,
        count: bounded("count", "net.count", 100_000, 1, u64::MAX, "1 or more"),
    };
    if opts.test == Test::Client && opts.peer.is_none() {
        exit::fail(format_args!(
            "net: {}",
            virtio::Options::missing("net.peer")
        ));
    }
    opts
}

/// The first slot holding a network device, with register access.
fn find_net(boot: &BootInfo, dma: &Pool) -> (MmioSlot, VolatileMmio) {
    let slots = SlotList::<MAX_SLOTS>::parse(boot.cmdline());
    let usable = slots
        .iter()
        .copied()
        .filter(|s| s.end() <= IDENTITY_MAP_END);
    // SAFETY: the loader's command line says these are virtio-mmio
    // register blocks in the identity map (the MMIO GiB is uncached);
    // the driver made from the result is the only user of the slot.
    let found = unsafe { transport::find_device(dma, usable, DeviceType::Net) };
    found.unwrap_or_else(|| {
        exit::fail(format_args!(
            "net: no network device (DeviceID 1) in the {} virtio_mmio.device= slot(s)",
            slots.as_slice().len()
        ))
    })
}

fn net_options(o: &Opts, buffers: u16) -> NetOptions {
    let mut refuse = NetFeatures::empty();
    if !o.csum {
        refuse |= NetFeatures::CSUM | NetFeatures::GUEST_CSUM;
    }
    NetOptions {
        completion: o.mode.completion(),
        event_idx: true,
        mrg_rxbuf: o.mrg,
        csum: o.csum,
        rx_buffers: buffers,
        tx_buffers: buffers,
        refuse,
        ..NetOptions::default()
    }
}

/// Brings the driver up: first with [`FEW_BUFFERS`] (safe at any MTU),
/// then, if the MTU allows, again with [`MANY_BUFFERS`] (a reset in
/// between, §3.1.1).
fn bring_up<'p>(boot: &BootInfo, dma: &'p Pool, o: &Opts) -> (MmioSlot, Nic<'p>) {
    let (slot, regs) = find_net(boot, dma);
    if o.mode == Mode::Irq {
        virtio::route_irq(&slot).or_fail(format_args!("net: irq {}", slot.irq));
    }
    let what = format_args!("net: device at {:#x}: initialising", slot.base);
    let net = Net::new(dma, regs, net_options(o, FEW_BUFFERS)).or_fail(what);
    if net.mtu() > JUMBO && !o.mrg {
        return (slot, net);
    }
    drop(net);
    let (_, regs) = find_net(boot, dma);
    let net = Net::new(dma, regs, net_options(o, MANY_BUFFERS)).or_fail(format_args!(
        "net: device at {:#x}: initialising again with {MANY_BUFFERS} buffers",
        slot.base
    ));
    (slot, net)
}

/// `pages` pages of the pool as plain memory for socket buffers (never
/// given back).
fn carve(dma: &Pool, bytes: usize) -> &'static mut [u8] {
    let pages = bytes.div_ceil(PAGE_SIZE);
    let Some(mem) = dma.dma_alloc(pages) else {
        exit::fail(format_args!(
            "net: no {pages} pages left in the DMA pool for socket buffers"
        ));
    };
    // SAFETY: the pool handed these pages out to us alone, identity
    // mapped RAM, and they are never deallocated (the `Dma` is dropped
    // without `dma_dealloc`), so the slice may live for the program.
    unsafe { core::slice::from_raw_parts_mut(mem.vaddr().as_ptr(), pages * PAGE_SIZE) }
}

/// A `Wait` of `ms` for control commands and bench waits.
pub fn budget(o: &Opts) -> Budget {
    Budget::new(o.mode, o.ms)
}

fn fmt_mac(m: [u8; 6]) -> impl core::fmt::Display {
    struct Mac([u8; 6]);
    impl core::fmt::Display for Mac {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let m = self.0;
            write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )
        }
    }
    Mac(m)
}

impl NetDev for SmolNet<&Pool, VolatileMmio> {
    fn flush(&mut self) {
        if let Some(e) = self.take_error() {
            exit::fail(format_args!("net: driver: {e}"));
        }
        SmolNet::flush(self).or_fail(format_args!("net: flush"));
    }

    fn idle(&mut self, mode: Mode, ms: u64) -> bool {
        let mut wait = Budget::new(mode, ms);
        match self.net().wait_rx(&mut wait) {
            Ok(()) => true,
            Err(NetError::Driver(guest_driver::Error::Timeout { .. })) => false,
            Err(e) => exit::fail(format_args!("net: waiting for a frame: {e}")),
        }
    }

    fn link_up(&mut self) -> bool {
        self.net().link_up().or_fail(format_args!("net: STATUS"))
    }

    fn frames(&mut self) -> (u64, u64) {
        let s = self.net().stats();
        (s.rx_frames, s.tx_frames)
    }
}

fn main(boot: &'static BootInfo) {
    let o = options(boot);
    let dma =
        guest_rt::virtio::dma_pool_of::<POOL_PAGES>(boot).or_fail(format_args!("net: DMA pool"));
    virtio::clock::start();
    let (_slot, mut net) = bring_up(boot, &dma, &o);
    let up_ms = virtio::clock::now_ms();
    let link = net.link_up().or_fail(format_args!("net: STATUS"));
    println!(
        "net: mac {} mtu {} link {}",
        fmt_mac(net.mac()),
        net.mtu(),
        if link { "up" } else { "down" }
    );
    println!(
        "net: features {:#x}, modern {}, mode {}, up after {up_ms} ms",
        net.features(),
        net.transport().is_modern(),
        o.mode
    );
    match o.test {
        Test::Filter => raw::filter(&mut net, &o),
        Test::Bench => raw::bench(&mut net, &o),
        Test::Serve | Test::Client => smol(net, &dma, &o),
    }
}

fn smol(net: Nic<'_>, dma: &Pool, o: &Opts) {
    let mac = net.mac();
    let bufs = Buffers {
        tcp_rx: carve(dma, TCP_BUFFER),
        tcp_tx: carve(dma, TCP_BUFFER),
        udp_rx: carve(dma, UDP_BUFFER),
        udp_tx: carve(dma, UDP_BUFFER),
    };
    // TCP, UDP and (for a moment) DHCP.
    let mut storage = [SocketStorage::EMPTY; 3];
    let mut meta = [[udp::PacketMetadata::EMPTY; stack::UDP_PACKETS]; 2];
    let setup = Setup {
        ip: o.ip,
        prefix: o.prefix,
        mode: o.mode,
        ms: o.ms,
    };
    let mut st = Stack::new(
        SmolNet::new(net),
        mac,
        &setup,
        &mut storage,
        bufs,
        &mut meta,
    );
    let ip = match o.ip {
        Some(ip) => ip,
        None => st.dhcp(),
    };
    let Some(scratch) = virtio::scratch() else {
        exit::fail(format_args!("net: scratch buffer taken"));
    };
    let pat = pattern::Pattern::new();
    match o.test {
        Test::Serve => {
            let want = Serve {
                bytes: o.bytes,
                udp: o.udp,
                link_down: o.link_down,
            };
            st.serve(o.port, &want, ip, &mut scratch[..]);
        }
        _ => st.client(
            o.peer.unwrap_or_default(),
            o.port,
            o.udp.unwrap_or(0),
            o.bytes.unwrap_or(0),
            &pat,
        ),
    }
    let s = st.dev().net().stats();
    println!(
        "net: {} polls ({} ms), idle {} ms ({} timer wake-ups), {} kicks, {} interrupts, rx {} frames ({} checksums vouched for by the device), tx {} frames",
        st.polls,
        st.poll_ms,
        st.idle_ms,
        st.idle_timeouts,
        s.kicks,
        virtio::interrupts(),
        s.rx_frames,
        s.rx_csum_valid,
        s.tx_frames
    );
}
