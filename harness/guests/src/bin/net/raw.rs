//! `filter` and `bench`: raw Ethernet frames through the driver, no
//! smoltcp.

use guest_driver::Wait;
use guest_driver::net::{NetError, TxOffload};
use guest_rt::virtio::{self, OrFail, clock};
use guest_rt::{cpu, exit, println};

use crate::{Dir, Nic, Opts, budget};

/// The scenarios' experimental ethertype (IEEE 802 local experimental 1).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// Shortest Ethernet frame without FCS: shorter ones are padded.
const MIN_FRAME: usize = 60;
/// The filter phases, in order.
const PHASES: [&str; 4] = ["strict", "table", "allmulti", "promisc"];
/// The table phase's unicast and multicast entries.
const TABLE_UNICAST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const TABLE_MULTICAST: [u8; 6] = [0x01, 0, 0x5e, 0, 0, 0x01];

fn header(dst: [u8; 6], src: [u8; 6]) -> [u8; 14] {
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..].copy_from_slice(&ETHERTYPE);
    h
}

/// Sends one 0x88b5 broadcast frame carrying `parts` concatenated,
/// padded to 60 bytes.
fn send_text(net: &mut Nic<'_>, o: &Opts, parts: &[&[u8]]) {
    let mut frame = [0u8; 128];
    frame[..14].copy_from_slice(&header([0xff; 6], net.mac()));
    let mut n = 14;
    for p in parts {
        frame[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    let len = n.max(MIN_FRAME);
    loop {
        match net.transmit(&frame[..len]) {
            Ok(()) => break,
            Err(NetError::TxFull) => net
                .wait_tx(&mut budget(o))
                .or_fail(format_args!("net: waiting for a transmit slot")),
            Err(e) => exit::fail(format_args!("net: transmit: {e}")),
        }
    }
    net.flush().or_fail(format_args!("net: flush"));
}

/// The filter test (§5.1.6.5.1, §5.1.6.5.2): per phase, set the filter,
/// say READY, record which of the peer's six frames arrive until DONE.
pub fn filter(net: &mut Nic<'_>, o: &Opts) {
    for phase in PHASES {
        let what = format_args!("net: filter {phase}: control command");
        match phase {
            "strict" => {
                net.set_promiscuous(false, &mut budget(o)).or_fail(what);
                net.set_all_multicast(false, &mut budget(o)).or_fail(what);
                net.set_mac_table(&[], &[], &mut budget(o)).or_fail(what);
            }
            "table" => net
                .set_mac_table(&[TABLE_UNICAST], &[TABLE_MULTICAST], &mut budget(o))
                .or_fail(what),
            "allmulti" => net.set_all_multicast(true, &mut budget(o)).or_fail(what),
            _ => net.set_promiscuous(true, &mut budget(o)).or_fail(what),
        }
        // Whatever arrived before this phase is not its answer.
        while let Ok(Some(f)) = net.receive() {
            drop(f);
        }
        send_text(net, o, &[b"READY ", phase.as_bytes()]);
        let mut got = [false; 7];
        let mut done = false;
        while !done {
            net.wait_rx(&mut budget(o)).or_fail(format_args!(
                "net: filter {phase}: {} ms waiting for the peer's frames (DONE {phase})",
                o.ms
            ));
            loop {
                let frame = match net.receive() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(NetError::Malformed(_)) => continue,
                    Err(e) => exit::fail(format_args!("net: filter {phase}: receive: {e}")),
                };
                // A copy: the frame's buffer is DMA memory the device
                // could write again. The peer's text frames are short; a
                // longer frame is not one of them.
                let mut copy = [0u8; 256];
                let n = frame.bytes().copy_to(&mut copy);
                let whole = n == frame.len();
                drop(frame);
                let frame = &copy[..n];
                if !whole || frame.len() < 14 || frame[12..14] != ETHERTYPE {
                    continue;
                }
                let body = &frame[14..];
                let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                let text = &body[..end];
                if let Some(rest) = text.strip_prefix(b"DONE ")
                    && rest == phase.as_bytes()
                {
                    done = true;
                } else if let Some(rest) = text.strip_prefix(phase.as_bytes())
                    && let [b' ', k @ b'1'..=b'6'] = rest
                {
                    got[usize::from(k - b'0')] = true;
                }
            }
        }
        let mut list = [0u8; 16];
        let mut n = 0;
        for (k, _) in got.iter().enumerate().filter(|(_, g)| **g) {
            if n > 0 {
                list[n] = b',';
                n += 1;
            }
            list[n] = b'0' + k as u8;
            n += 1;
        }
        let text = if n == 0 {
            "-"
        } else {
            core::str::from_utf8(&list[..n]).unwrap_or("?")
        };
        println!("net: filter {phase} got {text}");
    }
}

fn elapsed_us(t0: u64) -> u64 {
    cpu::rdtsc().saturating_sub(t0).saturating_mul(1000) / clock::tsc_per_ms().max(1)
}

/// Queues one bench frame: only the 14-byte header is written (the rest
/// of the slot goes out as it is: no per-frame copy of the payload).
/// False when the ring is full.
fn bench_frame(net: &mut Nic<'_>, hdr: &[u8; 14], size: usize) -> bool {
    match net.transmit_with(size, TxOffload::None, |b| b[..14].copy_from_slice(hdr)) {
        Ok(()) => true,
        Err(NetError::TxFull) => false,
        Err(e) => exit::fail(format_args!("net: bench: transmit: {e}")),
    }
}

/// Takes received frames, at most `limit` (a peer that keeps the ring
/// full would otherwise keep this loop going for ever); how many and
/// their bytes.
fn drain(net: &mut Nic<'_>, limit: u64) -> (u64, u64) {
    let (mut n, mut bytes) = (0, 0);
    while n < limit {
        match net.receive() {
            Ok(Some(f)) => {
                n += 1;
                bytes += f.len() as u64;
            }
            Ok(None) => return (n, bytes),
            Err(NetError::Malformed(_)) => {}
            Err(e) => exit::fail(format_args!("net: bench: receive: {e}")),
        }
    }
    (n, bytes)
}

/// The bench test: raw frames as fast as the rings allow.
pub fn bench(net: &mut Nic<'_>, o: &Opts) {
    if o.size > net.max_frame() {
        exit::fail(format_args!(
            "net: bench: net.size={} beyond the largest frame {}",
            o.size,
            net.max_frame()
        ));
    }
    let hdr = header([0xff; 6], net.mac());
    let kicks0 = net.stats().kicks;
    let irq0 = virtio::interrupts();
    let free0 = net.tx_free();
    let (mut frames, mut bytes) = (0u64, 0u64);
    let mut waits = 0u64;
    let mut t0 = cpu::rdtsc();
    match o.dir {
        Dir::Tx => {
            while frames < o.count {
                if bench_frame(net, &hdr, o.size) {
                    frames += 1;
                    bytes += o.size as u64;
                } else {
                    waits += 1;
                    net.wait_tx(&mut budget(o)).or_fail(format_args!(
                        "net: bench: {} ms waiting for a transmit slot",
                        o.ms
                    ));
                }
            }
        }
        Dir::Rx => {
            let mut started = false;
            while frames < o.count {
                net.wait_rx(&mut budget(o)).or_fail(format_args!(
                    "net: bench: {} ms waiting for frame {} of {}",
                    o.ms,
                    frames + 1,
                    o.count
                ));
                if !started {
                    started = true;
                    t0 = cpu::rdtsc();
                }
                let (n, b) = drain(net, o.count - frames);
                frames += n;
                bytes += b;
            }
        }
        Dir::Echo => {
            // Never more in flight than half the receive buffers: a
            // loopback has nowhere to keep what finds no buffer.
            let window = u64::from(net.options().rx_buffers / 2).max(1);
            let mut sent = 0u64;
            while frames < o.count {
                while sent < o.count && sent - frames < window && bench_frame(net, &hdr, o.size) {
                    sent += 1;
                }
                net.flush().or_fail(format_args!("net: bench: flush"));
                let (n, b) = drain(net, o.count - frames);
                if n == 0 {
                    waits += 1;
                    net.wait_rx(&mut budget(o)).or_fail(format_args!(
                        "net: bench: {} ms waiting for echoed frame {} of {} ({} sent)",
                        o.ms,
                        frames + 1,
                        o.count,
                        sent
                    ));
                }
                frames += n;
                bytes += b;
            }
        }
    }
    net.flush().or_fail(format_args!("net: bench: flush"));
    // Every transmission completed (counted in the time).
    let mut w = budget(o);
    loop {
        net.reclaim().or_fail(format_args!("net: bench: reclaim"));
        if net.tx_free() >= free0 {
            break;
        }
        if !w.wait() {
            exit::fail(format_args!(
                "net: bench: {} ms waiting for the device to use every transmit buffer",
                o.ms
            ));
        }
    }
    let us = elapsed_us(t0);
    println!("net: ring waits {waits}");
    println!(
        "net: bench {} {frames} frames {bytes} bytes {us} us {} kicks {} interrupts",
        o.dir.name(),
        net.stats().kicks - kicks0,
        virtio::interrupts() - irq0
    );
}
