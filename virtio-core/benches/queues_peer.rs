//! The device side of the split queue (spec §2.7) in a small binary of its
//! own (issue 17): the loops of `common` (the driver rewrites the available
//! ring each round; the device pops, walks, uses 256 1-descriptor chains
//! and makes one notification decision), ours against rust-vmm
//! `virtio-queue` 0.18 on `GuestMemoryMmap`, with nothing else compiled
//! into the binary: no criterion, no closures around the loops' bodies.
//!
//! This is the fair peer. The same loops compiled into the `queues` bench
//! binary can run at other speeds, because the compiler inlines the peer's
//! generic memory accessors differently there (see the README).
//!
//! `cargo bench -p bothends-core --bench queues_peer` prints chains/s of
//! each and the ratio (medians of 7 alternating rounds); under `cargo test
//! --benches` each loop runs one round as a check.

mod common;

use common::{OursLoop, PeerLoop};

fn main() {
    let mut ours = OursLoop::new();
    let mut peer = PeerLoop::new();
    if !std::env::args().any(|a| a == "--bench") {
        ours.round();
        peer.round();
        return;
    }
    let (o, p, ratio) = common::compare(&mut || ours.round(), &mut || peer.round());
    println!(
        "chains/s, medians of {} alternating rounds; peer: virtio-queue 0.18 on GuestMemoryMmap",
        common::ROUNDS
    );
    println!(
        "{:<28} {:>14} {:>14} {:>10}",
        "case", "ours", "peer", "ours/peer"
    );
    println!(
        "{:<28} {:>14} {:>14} {:>9.2}x",
        "device/1-desc, own binary",
        common::human(o),
        common::human(p),
        ratio
    );
}
