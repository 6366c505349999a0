//! `net_rx`: the virtio-net receive path (§5.1.6.3, §5.1.6.4): frames of
//! any length from a plain backend or with any virtio-net header from a
//! tap-like one, receive buffers of any size and direction, MRG_RXBUF or
//! not, filters changed by control commands (§5.1.6.5), link changes,
//! raw chains, pokes and resets. It never panics, the frames waiting in
//! the device stay bounded, and every used element it writes for a
//! well-formed ring is valid.

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;

use super::chain_rig::{BufSpec, Op, Rig, memory};
use super::net_rig::{Ctrl, Hdr, Wire, device, send_ctrl};

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    /// A frame arrives at the backend (after the header if the backend
    /// has one), then the backend says it is readable.
    Inbound { hdr: Hdr, frame: Vec<u8>, pad: u16 },
    /// Receive buffers on queue `pair`: `count` chains of `pieces`
    /// buffers of `len` bytes.
    Buffers {
        pair: u8,
        count: u8,
        len: u16,
        pieces: u8,
        /// Device-readable (wrong, §5.1.6.3.1).
        readable: bool,
    },
    /// A control command.
    Ctrl(Ctrl),
    /// The host sets the link.
    Link(bool),
    /// Anything else.
    Raw(Op),
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u64,
    pairs: bool,
    vnet: bool,
    steps: Vec<Step>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let scratch = memory();
    let mem: &OwnedMemory = &scratch;
    let fetch = FetchTracker::new(mem);
    let vnet = if input.vnet { 12 } else { 0 };
    let wire = Wire {
        vnet,
        ..Wire::default()
    };
    let Some(mut dev) = device(wire, &fetch, input.pairs) else {
        return;
    };
    let mut rig = Rig::new(&fetch, &mut dev, input.features);
    if !rig.active() {
        return;
    }
    for step in input.steps.iter().take(256) {
        match step {
            Step::Inbound { hdr, frame, pad } => {
                let mut f = if vnet > 0 {
                    hdr.bytes().to_vec()
                } else {
                    Vec::new()
                };
                f.extend(frame.iter().take(2048));
                f.resize(f.len() + usize::from(*pad % 2048), 0);
                dev.backend_mut().inbound.push_back(f);
                rig.run(&mut dev, &[Op::BackendReady]);
            }
            Step::Buffers {
                pair,
                count,
                len,
                pieces,
                readable,
            } => {
                let q = (pair % 2) * 2;
                let mut ops = Vec::new();
                for _ in 0..count % 8 {
                    let bufs = (0..pieces % 4 + 1)
                        .map(|_| BufSpec {
                            writable: !readable,
                            len: len % 4096,
                            bytes: Vec::new(),
                        })
                        .collect();
                    ops.push(Op::Chain {
                        queue: q,
                        bufs,
                        swapped: false,
                    });
                }
                ops.push(Op::Notify(q));
                rig.run(&mut dev, &ops);
            }
            Step::Ctrl(c) => send_ctrl(&mut rig, &mut dev, input.pairs, c),
            Step::Link(up) => {
                dev.set_link(*up);
            }
            Step::Raw(op) => rig.run(&mut dev, std::slice::from_ref(op)),
        }
        // §5.1.6.3: frames wait for buffers in a bounded queue, one per
        // receive queue (`rx_pending` 8 each).
        let queues = if input.pairs { 2 } else { 1 };
        assert!(
            dev.rx_pending() <= 8 * queues,
            "{} frames pending",
            dev.rx_pending()
        );
    }
}
