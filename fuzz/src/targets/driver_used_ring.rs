//! `driver_used_ring`: a hostile device writes the used ring (ids, lengths,
//! the used index) while our driver side adds chains and pops completions.
//! The driver must return errors only: every completion it accepts is a
//! chain in flight, returned once, with a length that fits (§2.7.8,
//! §2.7.14), and after a device fault the queue stays broken.
//!
//! The same input also drives a hostile virtio-mmio register file (every
//! read answered from the input) through our driver-side accessor: probe,
//! the init sequence, queue set-up and config reads under the generation
//! loop (§2.5.1) must end in a value or an error, within bounded reads.

use std::cell::Cell;
use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::driver::{MmioDriver, RegisterAccess};
use virtio_core::split::driver::{DriverError, IndirectArea};
use virtio_core::split::layout::{QueueLayout, QueueSize, UsedElem};
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Add a chain of `r` readable and `w` writable buffers of `len` bytes.
    Add { r: u8, w: u8, len: u16 },
    /// Publish and decide on a kick.
    Publish,
    /// The device writes a used element at a ring slot.
    WriteUsed { slot: u16, id: u32, len: u32 },
    /// The device writes the used index.
    SetUsedIdx { idx: u16 },
    /// The device writes `avail_event` or the used flags.
    SetAvailEvent { v: u16 },
    /// The driver pops completions.
    Pop { n: u8 },
    /// The driver toggles interrupts.
    Interrupts { on: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_log2: u8,
    event_idx: bool,
    indirect: bool,
    /// What the hostile register file answers, in turn.
    registers: Vec<u32>,
    wanted: u64,
    ops: Vec<Op>,
}

/// A register file that answers every read from a script and counts reads.
struct Hostile {
    script: Vec<u32>,
    next: Cell<usize>,
    reads: Cell<u32>,
}

impl Hostile {
    fn next(&self) -> u32 {
        self.reads.set(self.reads.get() + 1);
        assert!(self.reads.get() < 100_000, "unbounded register reads");
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        if self.script.is_empty() {
            0
        } else {
            self.script[i % self.script.len()]
        }
    }
}

impl RegisterAccess for Hostile {
    fn read32(&self, _offset: u64) -> u32 {
        self.next()
    }
    fn write32(&self, _offset: u64, _value: u32) {}
    fn read16(&self, _offset: u64) -> u16 {
        self.next() as u16
    }
    fn write16(&self, _offset: u64, _value: u16) {}
    fn read8(&self, _offset: u64) -> u8 {
        self.next() as u8
    }
    fn write8(&self, _offset: u64, _value: u8) {}
}

/// Drives our mmio driver accessor against a hostile register file.
fn hostile_registers(script: &[u32], wanted: u64) {
    let regs = Hostile {
        script: script.iter().take(256).copied().collect(),
        next: Cell::new(0),
        reads: Cell::new(0),
    };
    let Ok(mut drv) = MmioDriver::probe(regs) else {
        return;
    };
    let _ = drv.begin_init(wanted).map_err(|e| e.to_string());
    if let Ok(max) = drv.queue_max_size(0)
        && let Ok(size) = QueueSize::new(u32::from(max).clamp(1, 256).next_power_of_two())
        && let Ok(layout) = QueueLayout::new(
            size,
            GuestAddress(0x1000),
            GuestAddress(0x2_0000),
            GuestAddress(0x3_0000),
        )
    {
        let _ = drv.setup_queue(0, &layout);
    }
    let _ = drv.read_config_u8(0);
    let _ = drv.read_config_u32(4);
    let _ = drv.read_config_u64(8);
    let mut buf = [0u8; 32];
    let _ = drv.read_config_bytes(0, &mut buf);
    let _ = drv.finish_init().map_err(|e| e.to_string());
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    hostile_registers(&input.registers, input.wanted);
    let Ok(size) = QueueSize::new(1 << (input.size_log2 % 7)) else {
        return;
    };
    let scratch = super::scratch::memory(0x8_0000);
    let mem: &OwnedMemory = &scratch;
    let layout = QueueLayout::new(
        size,
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    )
    .expect("fixed layout is valid");
    let area = input
        .indirect
        .then(|| IndirectArea::new(GuestAddress(0x1_0000), 4).expect("valid area"));
    let mut q = DriverQueue::<64>::new(layout, input.event_idx, area).expect("size <= 64");
    q.init(mem).expect("rings in memory");
    // What the driver handed over: writable bytes per token.
    let mut in_flight: HashMap<Token, u32> = HashMap::new();
    let mut broken = false;
    for op in input.ops.iter().take(1024) {
        let r = match op {
            Op::Add { r, w, len } => {
                let len = u32::from(*len % 4096) + 1;
                let rd: Vec<_> = (0..u64::from(*r % 5))
                    .map(|i| (GuestAddress(0x4_0000 + i * 0x1000), len))
                    .collect();
                let wr: Vec<_> = (0..u64::from(*w % 5))
                    .map(|i| (GuestAddress(0x6_0000 + i * 0x1000), len))
                    .collect();
                q.add(mem, &rd, &wr).map(|t| {
                    assert!(in_flight.insert(t, len * wr.len() as u32).is_none());
                })
            }
            Op::Publish => q.publish(mem).and_then(|()| q.should_kick(mem).map(|_| ())),
            Op::WriteUsed { slot, id, len } => {
                mem.write_obj(layout.used_slot(*slot), &UsedElem::new(*id, *len))
                    .expect("used ring in memory");
                continue;
            }
            Op::SetUsedIdx { idx } => {
                mem.store_u16_release(layout.used_idx(), *idx)
                    .expect("used ring in memory");
                continue;
            }
            Op::SetAvailEvent { v } => {
                mem.write_u16(layout.avail_event(), *v)
                    .expect("used ring in memory");
                mem.write_u16(layout.used_flags(), *v)
                    .expect("used ring in memory");
                continue;
            }
            Op::Pop { n } => {
                let mut res = Ok(());
                for _ in 0..=*n % 8 {
                    match q.pop_used(mem) {
                        Ok(Some(used)) => {
                            let writable = in_flight
                                .remove(&used.token)
                                .expect("completion of a chain in flight, once");
                            assert!(used.len <= writable, "length beyond the chain");
                        }
                        Ok(None) => break,
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res
            }
            Op::Interrupts { on } => {
                if *on {
                    q.enable_interrupts(mem).map(|_| ())
                } else {
                    q.disable_interrupts(mem)
                }
            }
        };
        match r {
            Ok(()) => assert!(!broken, "a broken queue must keep failing"),
            Err(e) => {
                let _ = e.to_string();
                if broken {
                    assert_eq!(e, DriverError::Broken);
                }
                if e.is_device_fault() {
                    broken = true;
                    assert!(q.is_broken());
                }
            }
        }
    }
}
