//! `crypto_request`: the crypto device (§5.9) over the builtin backend
//! against requests the fuzzer describes field by field (opcode, algorithm,
//! session id, flag, the fixed part's words, the variable part's bytes,
//! the room for the answer; §5.9.7) on the data queues and the control
//! queue, mixed with raw chains, hostile pokes and resets, under any
//! feature set (the legacy layout, revision 1, the stateless modes). It
//! never panics, and every used element it writes for a well-formed ring
//! is valid (§2.7.8).

use arbitrary::{Arbitrary, Unstructured};
use backends::crypto::builtin::Builtin;
use virtio_core::crypto::{ctrl, data};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::crypto::Crypto;

use super::chain_rig::{BufSpec, Op, Rig, memory};

/// Opcodes the fuzzer picks from, or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Opcode {
    Known(u8),
    Other(u32),
}

const KNOWN: [u32; 20] = [
    ctrl::CIPHER_CREATE,
    ctrl::CIPHER_DESTROY,
    ctrl::HASH_CREATE,
    ctrl::HASH_DESTROY,
    ctrl::MAC_CREATE,
    ctrl::MAC_DESTROY,
    ctrl::AEAD_CREATE,
    ctrl::AEAD_DESTROY,
    ctrl::AKCIPHER_CREATE,
    ctrl::AKCIPHER_DESTROY,
    data::CIPHER_ENCRYPT,
    data::CIPHER_DECRYPT,
    data::HASH,
    data::MAC,
    data::AEAD_ENCRYPT,
    data::AEAD_DECRYPT,
    data::AKCIPHER_ENCRYPT,
    data::AKCIPHER_DECRYPT,
    data::AKCIPHER_SIGN,
    data::AKCIPHER_VERIFY,
];

impl Opcode {
    fn code(self) -> u32 {
        match self {
            Opcode::Known(i) => KNOWN[usize::from(i) % KNOWN.len()],
            Opcode::Other(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    /// A request laid out as a driver would, then a notification: on the
    /// control queue, or on data queue `queue`.
    Request {
        control: bool,
        queue: u8,
        opcode: Opcode,
        algo: u8,
        session: u8,
        flag: bool,
        /// The fixed part's words (small numbers: lengths, algorithms).
        words: Vec<u16>,
        /// Pad the fixed part to this many bytes (0: no padding).
        pad_to: u8,
        /// The variable part.
        vlf: Vec<u8>,
        /// Bytes of answer room (status included).
        room: u16,
        /// Split the readable part in two buffers here (0: one buffer).
        split: u16,
    },
    /// Anything else.
    Raw(Op),
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u64,
    data_queues: u8,
    steps: Vec<Step>,
}

/// Runs one input.
pub fn run(input: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(input)) else {
        return;
    };
    let scratch = memory();
    let mem: &OwnedMemory = &scratch;
    let fetch = FetchTracker::new(mem);
    let queues = u16::from(input.data_queues % 3) + 1;
    let mut dev = Crypto::new(Builtin::new(8), &fetch, queues);
    let mut rig = Rig::new(&fetch, &mut dev, input.features);
    if !rig.active() {
        return;
    }
    for step in input.steps.iter().take(128) {
        match step {
            Step::Request {
                control,
                queue,
                opcode,
                algo,
                session,
                flag,
                words,
                pad_to,
                vlf,
                room,
                split,
            } => {
                let mut req = Vec::with_capacity(128);
                req.extend_from_slice(&opcode.code().to_le_bytes());
                req.extend_from_slice(&u32::from(*algo).to_le_bytes());
                if *control {
                    req.extend_from_slice(&[0; 8]);
                } else {
                    req.extend_from_slice(&u64::from(*session).to_le_bytes());
                    req.extend_from_slice(&u32::from(*flag).to_le_bytes());
                    req.extend_from_slice(&[0; 4]);
                }
                let start = req.len();
                for w in words.iter().take(20) {
                    req.extend_from_slice(&u32::from(*w).to_le_bytes());
                }
                let padded = start + usize::from(*pad_to);
                if req.len() < padded {
                    req.resize(padded, 0);
                }
                req.extend(vlf.iter().take(4096));
                let q = if *control {
                    queues as u8
                } else {
                    *queue % queues as u8
                };
                let cut = usize::from(*split).min(req.len());
                let mut bufs = Vec::new();
                for part in [&req[..cut], &req[cut..]] {
                    if !part.is_empty() {
                        bufs.push(BufSpec {
                            writable: false,
                            len: part.len() as u16,
                            bytes: part.to_vec(),
                        });
                    }
                }
                if *room > 0 {
                    bufs.push(BufSpec {
                        writable: true,
                        len: *room % 8192,
                        bytes: Vec::new(),
                    });
                }
                rig.run(
                    &mut dev,
                    &[
                        Op::Chain {
                            queue: q,
                            bufs,
                            swapped: false,
                        },
                        Op::Notify(q),
                        Op::Drain,
                    ],
                );
            }
            Step::Raw(op) => rig.run(&mut dev, std::slice::from_ref(op)),
        }
    }
}
