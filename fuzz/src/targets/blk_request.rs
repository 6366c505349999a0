//! `blk_request`: the block device (§5.2) over an in-memory disk against
//! requests the fuzzer describes field by field (type, sector, data
//! segments, status buffer: §5.2.6) mixed with raw chains, hostile memory
//! pokes, configuration writes and resets. It never panics, and every used
//! element it writes for a well-formed ring is valid (§2.7.8).

use arbitrary::{Arbitrary, Unstructured};
use backends::block::memory::MemoryDisk;
use virtio_core::blk::{HEADER_LEN, req};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::blk::{Blk, BlkConfig};

use super::chain_rig::{BufSpec, Op, Rig, memory};

/// Request types the fuzzer picks from, or any number.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Other(u32),
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::In => req::IN,
            Kind::Out => req::OUT,
            Kind::Flush => req::FLUSH,
            Kind::GetId => req::GET_ID,
            Kind::Discard => req::DISCARD,
            Kind::WriteZeroes => req::WRITE_ZEROES,
            Kind::Other(n) => n,
        }
    }

    /// Whether the data goes to the device (§5.2.6).
    fn data_readable(self) -> bool {
        matches!(self, Kind::Out | Kind::Discard | Kind::WriteZeroes)
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Step {
    /// A request laid out as a driver would, then a notification.
    Request {
        queue: u8,
        kind: Kind,
        sector: u16,
        /// Lengths of the data segments.
        data: Vec<u16>,
        /// Bytes of the data (discard/write-zeroes segments, written data).
        bytes: Vec<u8>,
        /// Length of the status buffer (1 is right, §5.2.6).
        status_len: u8,
        /// Cut the header short (§5.2.6.1 makes the device fail it).
        short_header: bool,
    },
    /// Anything else.
    Raw(Op),
}

#[derive(Arbitrary, Debug)]
struct Input {
    features: u64,
    sectors: u8,
    read_only: bool,
    queues: u8,
    serial: Vec<u8>,
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
    let disk = MemoryDisk::new(usize::from(input.sectors) + 1).with_read_only(input.read_only);
    let cfg = BlkConfig {
        serial: input.serial.iter().copied().take(20).collect(),
        num_queues: u16::from(input.queues % 4) + 1,
        ..BlkConfig::default()
    };
    let Ok(mut dev) = Blk::new(disk, &fetch, cfg) else {
        return;
    };
    let mut rig = Rig::new(&fetch, &mut dev, input.features);
    if !rig.active() {
        return;
    }
    for step in input.steps.iter().take(256) {
        match step {
            Step::Request {
                queue,
                kind,
                sector,
                data,
                bytes,
                status_len,
                short_header,
            } => {
                let mut header = Vec::with_capacity(16);
                header.extend_from_slice(&kind.code().to_le_bytes());
                header.extend_from_slice(&0u32.to_le_bytes());
                header.extend_from_slice(&u64::from(*sector).to_le_bytes());
                if *short_header {
                    header.truncate(HEADER_LEN as usize / 2);
                }
                let mut bufs = vec![BufSpec {
                    writable: false,
                    len: header.len() as u16,
                    bytes: header,
                }];
                for &len in data.iter().take(8) {
                    bufs.push(BufSpec {
                        writable: !kind.data_readable(),
                        len: len % 8192,
                        bytes: bytes.clone(),
                    });
                }
                bufs.push(BufSpec {
                    writable: true,
                    len: u16::from(*status_len),
                    bytes: Vec::new(),
                });
                // Readable buffers first (§2.7.4.2): the rig sorts them.
                rig.run(
                    &mut dev,
                    &[
                        Op::Chain {
                            queue: *queue,
                            bufs,
                            swapped: false,
                        },
                        Op::Notify(*queue),
                    ],
                );
            }
            Step::Raw(op) => rig.run(&mut dev, std::slice::from_ref(op)),
        }
    }
    rig.run(&mut dev, &[Op::Drain]);
}
