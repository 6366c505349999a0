//! Scenario `starve`: a virtio-net receive queue (§5.1.6.3, §5.1.6.4) left
//! without buffers while the peer sends, through `guest_rt::raw` rings.
//!
//! The guest sets up the first virtio-net slot with receiveq1 empty,
//! prints `starve: ready`, transmits a `ready` frame (ethertype 0x88b5,
//! payload `ready`, to the broadcast address: the peer starts sending),
//! waits `starve.ms` (default 500) milliseconds
//! while the host peer sends, then posts every receive buffer (and
//! re-posts each one it has read) and counts the frames that arrive until
//! none came for `starve.quiet` (default 300) milliseconds:
//!
//! ```text
//! starve: got <N> frames (seq <first>..=<last>, in order|out of order)
//! ```
//!
//! Then it transmits one `more` frame (ethertype 0x88b5, payload `more`,
//! to the broadcast address); the peer answers with `starve.more`
//! (default 16) frames numbered from 1000000, which must all arrive:
//!
//! ```text
//! starve: more got <M> frames (seq <first>..=<last>)
//! ```
//!
//! The peer's frames carry ethertype 0x88b5 and the payload `seq ` then
//! the sequence number as a little-endian u32. Every wait is bounded.
#![no_std]
#![no_main]

use guest_rt::raw::{NetMemory, NetRig, RawDevice};
use guest_rt::virtio::clock;
use guest_rt::{BootInfo, exit, println};
use virtio_core::features::{DeviceType, NetFeatures};

guest_rt::entry!(main);

/// Receive buffer slot bytes (header + a 60-byte frame with room).
const SLOT: u64 = 256;
/// receiveq1's size (the raw kit's largest).
const RX_SIZE: u16 = 128;
/// Buffer offset of the `more` frame.
const TX_AT: u64 = RX_SIZE as u64 * SLOT;
/// First sequence number of the answer to `more`.
const MORE_BASE: u32 = 1_000_000;
/// Longest wait for the frames of a phase, in milliseconds.
const PHASE_MS: u64 = 8_000;

fn option(boot: &BootInfo, key: &str, default: u64) -> u64 {
    match boot.cmdline_values(key).last() {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| exit::fail(format_args!("starve: {key}={v:?} is not a number"))),
    }
}

/// Frames of one phase.
#[derive(Default)]
struct Tally {
    count: u64,
    first: Option<u32>,
    last: u32,
    in_order: bool,
}

impl Tally {
    fn add(&mut self, seq: u32) {
        if self.first.is_none() {
            self.first = Some(seq);
            self.in_order = true;
        } else if seq != self.last.wrapping_add(1) {
            self.in_order = false;
        }
        self.last = seq;
        self.count += 1;
    }
}

/// Reads used receive buffers (re-posting each) until `done` says so or
/// nothing came for `quiet` ms, at most [`PHASE_MS`]. Frames numbered
/// from [`MORE_BASE`] go to `more`, others to `first`.
fn collect(
    rig: &mut NetRig<'_>,
    first: &mut Tally,
    more: &mut Tally,
    quiet: u64,
    done: &dyn Fn(&Tally, &Tally) -> bool,
) {
    let start = clock::now_ms();
    let mut last_seen = start;
    let mut frame = [0u8; 64];
    loop {
        let now = clock::now_ms();
        if done(first, more) || now - last_seen > quiet || now - start > PHASE_MS {
            return;
        }
        let mut reposted = false;
        while let Some(e) = rig.rx_used() {
            last_seen = clock::now_ms();
            let Ok(d) = u16::try_from(e.id()) else {
                exit::fail(format_args!("starve: used id {} out of range", e.id()))
            };
            if d >= rig.rx.size() {
                exit::fail(format_args!("starve: used id {d} out of range"));
            }
            let n = rig.read_frame(u64::from(d) * SLOT, e.len(), &mut frame);
            if n >= 22 && frame[12..14] == [0x88, 0xb5] && &frame[14..18] == b"seq " {
                let seq = u32::from_le_bytes([frame[18], frame[19], frame[20], frame[21]]);
                if seq >= MORE_BASE {
                    more.add(seq);
                } else {
                    first.add(seq);
                }
            }
            if rig.post_rx(d, u64::from(d) * SLOT, SLOT as u32).is_err() {
                exit::fail(format_args!("starve: re-posting buffer {d}"));
            }
            reposted = true;
        }
        if reposted {
            rig.dev.notify(u32::from(guest_rt::raw::NET_RX));
        }
        core::hint::spin_loop();
    }
}

fn print_tally(what: &str, t: &Tally) {
    match t.first {
        None => println!("starve: {what} 0 frames"),
        Some(f) => println!(
            "starve: {what} {} frames (seq {f}..={}, {})",
            t.count,
            t.last,
            if t.in_order {
                "in order"
            } else {
                "out of order"
            }
        ),
    }
}

fn main(boot: &'static BootInfo) {
    let wait_ms = option(boot, "starve.ms", 500);
    let quiet = option(boot, "starve.quiet", 300);
    let want_more = option(boot, "starve.more", 16);
    let Some(mem) = NetMemory::take() else {
        exit::fail(format_args!("starve: net memory already taken"));
    };
    let dev = match RawDevice::find(boot.cmdline(), DeviceType::Net) {
        Ok(d) => d,
        Err(e) => exit::fail(format_args!("starve: {e}")),
    };
    let mut rig = match NetRig::new(&dev, &mem, NetFeatures::MAC.bits(), RX_SIZE, 16) {
        Ok(r) => r,
        Err(e) => exit::fail(format_args!("starve: set-up: {e}")),
    };
    let m = rig.mac;
    println!(
        "starve: ready (mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, virtio-mmio version {}, receiveq1 of {} entries, no buffers)",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        dev.version() as u32,
        rig.rx.size()
    );
    // Tell the peer: it starts sending now that the device is live
    // (frames a device gets before DRIVER_OK need not be kept).
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&rig.mac);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..19].copy_from_slice(b"ready");
    if let Err(e) = rig.send(1, TX_AT + SLOT, &f) {
        exit::fail(format_args!("starve: sending `ready`: {e}"));
    }
    clock::start();
    let t0 = clock::now_ms();
    while clock::now_ms() - t0 < wait_ms {
        core::hint::spin_loop();
    }
    let size = rig.rx.size();
    for d in 0..size {
        if let Err(e) = rig.post_rx(d, u64::from(d) * SLOT, SLOT as u32) {
            exit::fail(format_args!("starve: posting buffer {d}: {e}"));
        }
    }
    dev.notify(u32::from(guest_rt::raw::NET_RX));
    println!("starve: posted {size} receive buffers after {wait_ms} ms");
    let (mut first, mut more) = (Tally::default(), Tally::default());
    collect(&mut rig, &mut first, &mut more, quiet, &|_, _| false);
    print_tally("got", &first);
    f[14..19].copy_from_slice(b"more\0");
    if let Err(e) = rig.send(0, TX_AT, &f) {
        exit::fail(format_args!("starve: sending `more`: {e}"));
    }
    println!("starve: sent more");
    let before = first.count;
    collect(&mut rig, &mut first, &mut more, PHASE_MS, &|_, m| {
        m.count >= want_more
    });
    print_tally("more got", &more);
    if first.count != before {
        println!(
            "starve: {} late frames of the first batch",
            first.count - before
        );
    }
    let _ = dev.reset();
    if more.count != want_more {
        exit::fail(format_args!(
            "starve: waited for {want_more} frames after `more`, got {}",
            more.count
        ));
    }
}
