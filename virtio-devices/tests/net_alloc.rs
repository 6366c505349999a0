//! virtio-net's hot path allocates nothing per frame: after activation, a
//! batch of transmitted frames (with checksum offload) and a batch of
//! received frames spread over mergeable buffers are served with zero heap
//! allocations (a counting global allocator, alone in this test binary;
//! the test backend's own queues are filled before counting).

mod alloc_counter;
mod net_support;
mod queue_rig;

use net_support::{BCAST, MAC, Wire, frame, rig};
use virtio_devices::net::{NetHdr, flags};

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

#[test]
fn serving_batches_allocates_nothing() {
    let mut r = rig(Wire::new());
    // Receive: frames waiting in the backend, buffers of 512 bytes
    // (mergeable), then one readiness.
    for i in 0..8 {
        r.wire.push(frame(MAC, 1200, i));
    }
    for _ in 0..24 {
        r.rx_buf(512);
    }
    // Transmit: frames with a partial checksum to complete; the backend
    // records what it gets, so it keeps nothing here.
    let h = NetHdr {
        flags: flags::NEEDS_CSUM,
        csum_start: 14,
        csum_offset: 10,
        ..NetHdr::default()
    };
    for i in 0..10 {
        r.tx(&h.to_bytes(), &frame(BCAST, 600, i));
    }
    r.wire.state().sent.reserve(16);
    // The rig's double-fetch tracker allocates as it records; the other
    // tests check fetches, this one allocations.
    r.fetch.set_tracking(false);
    let before = alloc_counter::allocations();
    let rx = r.notify(0);
    let mid = alloc_counter::allocations();
    let tx = r.notify(1);
    let after = alloc_counter::allocations();
    assert_eq!(rx.completed, 24);
    assert_eq!(mid - before, 0, "allocations while receiving");
    // The test backend allocates one Vec per frame it records.
    assert_eq!(tx.completed, 10);
    assert_eq!(
        after - mid,
        10,
        "allocations while transmitting, beyond the backend's own"
    );
    assert_eq!(r.dev.stats().rx_frames, 8);
}
