//! `mmio_transport`: the real devices (rng, console, blk, net, each over an
//! in-memory backend) behind `virtio-devices`' `MmioTransport` and
//! `virtio-core`'s register file (§4.2.2), driven by sequences of register
//! reads and writes of any width: notifications that make the device walk
//! rings in a memory image the fuzzer wrote, resets in the middle, status
//! writes out of order, a well-formed initialisation (§3.1.1) the fuzzer can
//! call as one step to reach the live device quickly, memory pokes and
//! backend events. After every step the register file's invariants hold
//! (FEATURES_OK only over valid features, DRIVER_OK only after FEATURES_OK,
//! the interrupt line follows InterruptStatus), and a reset (§2.4) leaves
//! the device idle.

use arbitrary::{Arbitrary, Unstructured};
use backends::block::memory::MemoryDisk;
use backends::chardev::RingBuf;
use backends::rng::Deterministic;
use virtio_core::GuestMemory;
use virtio_core::features::DeviceType;
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::device::{MmioDevice, MmioRegisters};
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::{Console, Port};
use virtio_devices::device::VirtioDevice;
use virtio_devices::rng::Rng;
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};

use super::device_requests::layouts;
use super::mmio_registers::{check, offset_of};
use super::net_rig::{self, Wire};

/// Size of the memory image: the fixed queue layouts (queue `i` at
/// `0x1000 + i * 0x1000`) and room for buffers.
const MEM: usize = 0x1_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Write a register (`reg` indexes the known offsets, beyond them a raw
    /// offset), 1, 2, 4 or 8 bytes wide.
    Write { reg: u16, width: u8, value: u64 },
    /// Read a register.
    Read { reg: u16, width: u8 },
    /// The whole initialisation of §3.1.1 with these driver features and
    /// every queue at its fixed layout, sized `1 << (size_log2 % 5)`.
    Init { features: u64, size_log2: u8 },
    /// Notify queue `n` (a write of QueueNotify, §4.2.2).
    Notify(u8),
    /// The driver rewrites memory.
    Poke { at: u16, bytes: Vec<u8> },
    /// The backend became ready.
    BackendReady,
}

#[derive(Arbitrary, Debug)]
enum Device {
    Rng,
    Console {
        multiport: bool,
    },
    Blk {
        queues: u8,
        read_only: bool,
    },
    Net {
        pairs: bool,
        busy: bool,
        inbound: Vec<Vec<u8>>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    device: Device,
    image: Vec<u8>,
    ops: Vec<Op>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let scratch = super::scratch::memory(MEM);
    let mem: &OwnedMemory = &scratch;
    let n = input.image.len().min(MEM);
    mem.write(GuestAddress(0), &input.image[..n])
        .expect("image fits");
    // The devices see a racing guest (issue 16): a guest byte loaded a
    // second time has changed, so a check-then-use on guest memory gets
    // found here as a panic.
    let fetch = FetchTracker::new(mem);
    fetch.set_racing(true);
    let dm = &fetch;
    match input.device {
        Device::Rng => drive(Rng::new(Deterministic::new(7), dm), mem, &input.ops),
        Device::Console { multiport } => {
            let mut ports = vec![Port::new(Box::new(RingBuf::<1024>::new()), true, None)];
            if multiport {
                ports.push(Port::new(
                    Box::new(RingBuf::<1024>::new()),
                    false,
                    Some("p1".into()),
                ));
            }
            drive(Console::with_ports(dm, ports, multiport), mem, &input.ops);
        }
        Device::Blk { queues, read_only } => {
            let disk = MemoryDisk::new(16).with_read_only(read_only);
            let cfg = BlkConfig {
                num_queues: u16::from(queues % 4) + 1,
                ..BlkConfig::default()
            };
            if let Ok(dev) = Blk::new(disk, dm, cfg) {
                drive(dev, mem, &input.ops);
            }
        }
        Device::Net {
            pairs,
            busy,
            inbound,
        } => {
            let wire = Wire {
                busy,
                inbound: inbound
                    .into_iter()
                    .take(8)
                    .map(|f| f.into_iter().take(2048).collect())
                    .collect(),
                ..Wire::default()
            };
            if let Some(dev) = net_rig::device(wire, dm, pairs) {
                drive(dev, mem, &input.ops);
            }
        }
    }
}

/// Runs `ops` against `dev` behind the register file.
fn drive<D: VirtioDevice>(dev: D, mem: &OwnedMemory, ops: &[Op]) {
    let device_type: DeviceType = dev.device_type();
    let Ok(mut regs) = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)) else {
        return;
    };
    let offered = regs.offered_features();
    for op in ops.iter().take(1024) {
        match op {
            Op::Write { reg, width, value } => {
                write(
                    &mut regs,
                    offset_of(*reg),
                    &value.to_le_bytes()[..width_of(*width)],
                );
            }
            Op::Read { reg, width } => {
                let mut buf = [0u8; 8];
                if let Err(e) = regs.read(offset_of(*reg), &mut buf[..width_of(*width)]) {
                    let _ = e.to_string();
                }
            }
            Op::Init {
                features,
                size_log2,
            } => init(&mut regs, *features, *size_log2),
            Op::Notify(q) => write(&mut regs, regs::QUEUE_NOTIFY, &u32::from(*q).to_le_bytes()),
            Op::Poke { at, bytes } => {
                let at = u64::from(*at) % MEM as u64;
                let room = MEM - at as usize;
                let len = bytes.len().min(room).min(512);
                mem.write(GuestAddress(at), &bytes[..len])
                    .expect("inside memory");
            }
            Op::BackendReady => {
                backend_ready(&mut regs);
            }
        }
        check(&regs, device_type, offered);
    }
}

fn width_of(width: u8) -> usize {
    [1usize, 2, 4, 8][usize::from(width % 4)]
}

/// One register write, its outcome acted on as the harness does; a reset
/// (a 32-bit write of 0 to Status, §2.4) must leave the device idle.
fn write<D: VirtioDevice>(
    regs: &mut MmioRegisters<MmioTransport<D>, 8>,
    offset: u64,
    bytes: &[u8],
) {
    let was = regs.status();
    match regs.write(offset, bytes) {
        Ok(outcome) => {
            dispatch(regs, outcome);
        }
        Err(e) => {
            let _ = e.to_string();
            if offset == regs::STATUS {
                assert_eq!(regs.status(), was, "a refused status write changed it");
            }
        }
    }
    if offset == regs::STATUS && bytes == [0, 0, 0, 0] {
        assert_eq!(regs.status(), DeviceStatus::empty(), "reset (§2.4)");
        assert!(regs.queues().iter().all(|q| !q.is_ready()));
        assert!(!regs.interrupt_asserted());
        assert!(regs.device().last_error().is_none());
    }
}

/// The driver's initialisation (§3.1.1, §4.2.3): reset, ACKNOWLEDGE,
/// DRIVER, features, FEATURES_OK, every queue, DRIVER_OK; every write's
/// outcome dispatched, refusals tolerated (the features may be invalid).
fn init<D: VirtioDevice>(
    regs: &mut MmioRegisters<MmioTransport<D>, 8>,
    features: u64,
    size_log2: u8,
) {
    let w = |regs: &mut MmioRegisters<MmioTransport<D>, 8>, offset: u64, value: u32| {
        write(regs, offset, &value.to_le_bytes());
    };
    let status = |s: DeviceStatus| s.bits() as u32;
    w(regs, regs::STATUS, 0);
    let mut s = DeviceStatus::ACKNOWLEDGE;
    w(regs, regs::STATUS, status(s));
    s |= DeviceStatus::DRIVER;
    w(regs, regs::STATUS, status(s));
    w(regs, regs::DRIVER_FEATURES_SEL, 0);
    w(regs, regs::DRIVER_FEATURES, features as u32);
    w(regs, regs::DRIVER_FEATURES_SEL, 1);
    w(regs, regs::DRIVER_FEATURES, (features >> 32) as u32);
    s |= DeviceStatus::FEATURES_OK;
    w(regs, regs::STATUS, status(s));
    let queues = regs.queues().len();
    for (i, l) in layouts(queues, size_log2).into_iter().enumerate() {
        w(regs, regs::QUEUE_SEL, i as u32);
        let max = regs.device().queue_max_size(i as u16);
        w(regs, regs::QUEUE_NUM, u32::from(l.size().get().min(max)));
        for (lo, addr) in [
            (regs::QUEUE_DESC_LOW, l.desc_table()),
            (regs::QUEUE_DRIVER_LOW, l.avail_ring()),
            (regs::QUEUE_DEVICE_LOW, l.used_ring()),
        ] {
            w(regs, lo, addr.0 as u32);
            w(regs, lo + 4, (addr.0 >> 32) as u32);
        }
        w(regs, regs::QUEUE_READY, 1);
    }
    s |= DeviceStatus::DRIVER_OK;
    w(regs, regs::STATUS, status(s));
}
