//! `rng_request`: the entropy device (§5.4) against hostile request queues
//! and a source that runs dry; it never panics and never completes a chain
//! with more bytes than the chain can hold.

use arbitrary::{Arbitrary, Unstructured};
use backends::rng::{RngBackend, RngError};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::rng::Rng;

use super::device_requests::{MEM, Step, exercise};

/// A source that gives what the input allows, then runs dry.
struct Budget(usize);

impl RngBackend for Budget {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        let n = buf.len().min(self.0);
        buf[..n].fill(0xa5);
        self.0 -= n;
        Ok(n)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_log2: u8,
    features: u64,
    budget: u16,
    image: Vec<u8>,
    steps: Vec<Step>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let scratch = super::scratch::memory(MEM);
    let mem: &OwnedMemory = &scratch;
    // A racing guest (issue 16): bytes loaded twice have changed between.
    let fetch = FetchTracker::new(mem);
    fetch.set_racing(true);
    let mut dev = Rng::new(Budget(usize::from(input.budget)), &fetch);
    exercise(
        &mut dev,
        mem,
        &input.image,
        &input.steps,
        input.size_log2,
        input.features,
    );
    assert!(dev.stats().bytes <= u64::from(input.budget));
}
