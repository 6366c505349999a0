//! virtio-blk's hot path allocates nothing per request: after activation, a
//! batch of reads and writes of many segments is served with zero heap
//! allocations (a counting global allocator, alone in this test binary).

mod alloc_counter;
mod blk_support;
mod queue_rig;

use blk_support::{MemDisk, rig};
use virtio_devices::blk::{req, status};

#[global_allocator]
static GLOBAL: alloc_counter::Counting = alloc_counter::Counting;

#[test]
fn serving_a_batch_allocates_nothing() {
    let mut r = rig(MemDisk::new(64));
    let mut st = vec![];
    for i in 0..10u64 {
        let segs: Vec<_> = (0..4).map(|_| (r.alloc(512), 512u32)).collect();
        st.push(
            r.request(
                if i % 2 == 0 { req::OUT } else { req::IN },
                i * 4,
                &segs,
                i % 2 == 0,
            )
            .1,
        );
    }
    st.push(r.request(req::FLUSH, 0, &[], true).1);
    // The rig's double-fetch tracker allocates as it records; the other
    // tests check fetches, this one allocations.
    r.fetch.set_tracking(false);
    let before = alloc_counter::allocations();
    let served = r.notify(0);
    let after = alloc_counter::allocations();
    assert_eq!(served.completed, 11);
    assert_eq!(after - before, 0, "allocations while serving a batch");
    assert!(st.iter().all(|&s| r.status(s) == status::OK));
}
