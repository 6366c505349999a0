//! `net_tx`: the virtio-net transmit path (§5.1.6.2) and control queue
//! (§5.1.6.5): frames with any header (flags, GSO, checksum offsets),
//! split anywhere across buffers, a backend that pushes back, control
//! commands of any class, raw chains, pokes and resets. It never panics,
//! never hands the backend a frame past the MTU, and every used element it
//! writes for a well-formed ring is valid.

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;

use super::chain_rig::{BufSpec, Op, Rig, memory};
use super::net_rig::{Ctrl, Hdr, Wire, device, send_ctrl};

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    /// One frame on transmit queue `pair`.
    Tx {
        pair: u8,
        hdr: Hdr,
        /// Cut the header to this many bytes if below 12.
        hdr_cut: u8,
        frame: Vec<u8>,
        /// Extra length beyond `frame` (zero bytes), to cross the MTU.
        pad: u16,
        /// Split the header and frame over this many buffers.
        pieces: u8,
    },
    /// A control command.
    Ctrl(Ctrl),
    /// The backend pushes back (or stops).
    Busy(bool),
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
    let wire = Wire {
        vnet: if input.vnet { 12 } else { 0 },
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
            Step::Tx {
                pair,
                hdr,
                hdr_cut,
                frame,
                pad,
                pieces,
            } => {
                let mut bytes = hdr.bytes().to_vec();
                if usize::from(*hdr_cut) < bytes.len() {
                    bytes.truncate(usize::from(*hdr_cut));
                }
                bytes.extend(frame.iter().take(2048));
                bytes.resize(bytes.len() + usize::from(*pad % 2048), 0);
                let pieces = usize::from(pieces % 4) + 1;
                let bufs: Vec<BufSpec> = bytes
                    .chunks(bytes.len().div_ceil(pieces).max(1))
                    .map(|c| BufSpec {
                        writable: false,
                        len: c.len() as u16,
                        bytes: c.to_vec(),
                    })
                    .collect();
                // Transmit queue of pair p is 2p + 1 (§5.1.2).
                let q = (pair % 2) * 2 + 1;
                rig.run(
                    &mut dev,
                    &[
                        Op::Chain {
                            queue: q,
                            bufs,
                            swapped: false,
                        },
                        Op::Notify(q),
                    ],
                );
            }
            Step::Ctrl(c) => send_ctrl(&mut rig, &mut dev, input.pairs, c),
            Step::Busy(b) => {
                dev.backend_mut().busy = *b;
                if !b {
                    rig.run(&mut dev, &[Op::BackendReady]);
                }
            }
            Step::Raw(op) => rig.run(&mut dev, std::slice::from_ref(op)),
        }
    }
    dev.backend_mut().busy = false;
    rig.run(&mut dev, &[Op::BackendReady, Op::Drain]);
}
