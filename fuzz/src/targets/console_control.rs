//! `console_control`: a two-port console (§5.3) with MULTIPORT against
//! hostile data and control queues (§5.3.6.2 messages with any id, event
//! and value), host input, resets; it never panics and never delivers more
//! input than the host gave.

use arbitrary::{Arbitrary, Unstructured};
use backends::chardev::RingBuf;
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::console::{Console, Port};

use super::device_requests::{MEM, Step, exercise};

#[derive(Arbitrary, Debug)]
struct Input {
    size_log2: u8,
    features: u64,
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
    // The fuzzer's host input goes to port 0 before the run; ring buffers
    // keep what the guest writes.
    let mut host_in = RingBuf::<4096>::new();
    let mut fed = 0usize;
    for s in &input.steps {
        if let super::device_requests::Step::Input(d) = s {
            fed += host_in.push_input(d);
        }
    }
    let ports = vec![
        Port::new(Box::new(host_in), true, None),
        Port::new(Box::new(RingBuf::<4096>::new()), false, Some("p1".into())),
    ];
    let mut dev = Console::with_ports(&fetch, ports, true);
    exercise(
        &mut dev,
        mem,
        &input.image,
        &input.steps,
        input.size_log2,
        input.features,
    );
    assert!(
        dev.stats().rx_bytes <= fed as u64,
        "delivered more than given"
    );
}
