//! The device-side loop of issue 17, written the way a user of each crate
//! writes it, outside any benchmark machinery: one plain, monomorphic
//! method per implementation that plays the driver (it rewrites all 256
//! available-ring entries and releases the available index, §2.7.13) and
//! then the device (pop, walk every descriptor, add_used, one notification
//! decision: §2.7.6, §2.7.5, §2.7.8, §2.7.10), on a 256-entry queue of
//! 1-descriptor chains in its own 16 MiB `GuestMemoryMmap`.
//!
//! Both loops run the same driver code (raw volatile writes, then an atomic
//! release store of `idx`), so the difference between them is the device
//! side alone. The `queues_peer` bench runs them in a binary of their own;
//! `queues` runs them as extra rows of its table. The timing helpers both
//! tables use are here too.

use std::hint::black_box;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use virtio_core::memory::{GuestAddress, GuestMemory, Region, RegionMemory};
use virtio_core::split::DeviceQueue;
use virtio_core::split::layout::{DescFlags, Descriptor, QueueLayout, QueueSize};
use virtio_queue::desc::split::Descriptor as PeerDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Queue size, and chains per round.
pub const LOOP_SIZE: u16 = 256;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const DATA: u64 = 0x10_0000;
const BUF_LEN: u32 = 512;

/// A fresh 16 MiB guest memory at guest address 0, as a rust-vmm user
/// makes one (an anonymous private mapping).
fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 16 << 20)])
        .expect("anonymous guest memory")
}

/// The host address of guest address 0 in `gm`.
fn host_base(gm: &GuestMemoryMmap) -> *mut u8 {
    let r = gm.iter().next().expect("one region");
    r.get_host_address(MemoryRegionAddress(0))
        .expect("mapped region")
}

/// The driver of both loops: makes the next `LOOP_SIZE` slots of the
/// available ring name heads `0..LOOP_SIZE` (one 1-descriptor chain each)
/// and publishes them with one release store of the available index
/// (§2.7.13.2, §2.7.13.3).
struct Driver {
    avail: *mut u8,
    next: u16,
}

impl Driver {
    fn new(gm: &GuestMemoryMmap) -> Driver {
        Driver {
            avail: host_base(gm).wrapping_add(AVAIL as usize),
            next: 0,
        }
    }

    #[inline(always)]
    fn make_available(&mut self) {
        for head in 0..LOOP_SIZE {
            let slot = usize::from(self.next.wrapping_add(head) % LOOP_SIZE);
            // SAFETY: `slot < LOOP_SIZE`, so the entry lies in the available
            // ring of a 16 MiB mapping that the loop owns for its whole
            // life; guest memory is only reached through raw pointers,
            // volatile accesses and atomics, never through references.
            unsafe {
                self.avail
                    .add(4 + 2 * slot)
                    .cast::<u16>()
                    .write_volatile(head.to_le())
            };
        }
        self.next = self.next.wrapping_add(LOOP_SIZE);
        // SAFETY: `avail + 2` is the ring's 2-aligned `idx` in the same
        // mapping (page-aligned base plus 0x2_0002), reached only as above.
        unsafe { AtomicU16::from_ptr(self.avail.add(2).cast()) }
            .store(self.next.to_le(), Ordering::Release);
    }
}

/// rust-vmm `virtio-queue` 0.18 on `vm_memory::GuestMemoryMmap` 0.18.
pub struct PeerLoop {
    gm: GuestMemoryMmap,
    queue: Queue,
    driver: Driver,
}

impl PeerLoop {
    /// Memory, descriptor table and a ready queue.
    pub fn new() -> PeerLoop {
        let gm = guest_memory();
        for i in 0..LOOP_SIZE {
            let i = u64::from(i);
            let desc = PeerDescriptor::new(DATA + i * u64::from(BUF_LEN), BUF_LEN, 0, 0);
            gm.write_obj(desc, vm_memory::GuestAddress(DESC + i * 16))
                .expect("descriptor table in memory");
        }
        let mut queue = Queue::new(LOOP_SIZE).expect("valid size");
        queue
            .try_set_desc_table_address(vm_memory::GuestAddress(DESC))
            .expect("aligned");
        queue
            .try_set_avail_ring_address(vm_memory::GuestAddress(AVAIL))
            .expect("aligned");
        queue
            .try_set_used_ring_address(vm_memory::GuestAddress(USED))
            .expect("aligned");
        queue.set_ready(true);
        assert!(queue.is_valid(&gm));
        let driver = Driver::new(&gm);
        PeerLoop { gm, queue, driver }
    }

    /// One round: the driver makes 256 chains available, the device takes
    /// and uses them all. Returns the chains used.
    #[inline(never)]
    pub fn round(&mut self) -> u64 {
        self.driver.make_available();
        let gm = &self.gm;
        let mut chains = 0;
        while let Some(chain) = self.queue.pop_descriptor_chain(gm) {
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain {
                if d.is_write_only() {
                    written += d.len();
                }
            }
            self.queue
                .add_used(gm, head, written)
                .expect("used ring in memory");
            chains += 1;
        }
        black_box(self.queue.needs_notification(gm).expect("ring in memory"));
        assert_eq!(chains, u64::from(LOOP_SIZE));
        chains
    }
}

/// Our [`DeviceQueue`] on a [`RegionMemory`] over its own
/// `GuestMemoryMmap` (the same kind of mapping as the peer's).
pub struct OursLoop {
    /// Our view of `gm`; declared first so that it is dropped before the
    /// mapping.
    mem: RegionMemory<1>,
    _gm: GuestMemoryMmap,
    queue: DeviceQueue,
    driver: Driver,
}

impl OursLoop {
    /// Memory, descriptor table and a queue.
    pub fn new() -> OursLoop {
        let gm = guest_memory();
        let len = gm.iter().next().expect("one region").len();
        // SAFETY: the region is the whole anonymous mapping of `len` bytes
        // at `host_base(&gm)`, owned by `gm`, which `OursLoop` keeps and
        // drops after `mem`; it is reached only through raw pointers,
        // volatile accesses and atomics.
        let region = unsafe { Region::new(GuestAddress(0), host_base(&gm), len) };
        let mut mem = RegionMemory::new();
        mem.add(region).expect("one region");
        let size = QueueSize::new(u32::from(LOOP_SIZE)).expect("valid size");
        let layout = QueueLayout::new(
            size,
            GuestAddress(DESC),
            GuestAddress(AVAIL),
            GuestAddress(USED),
        )
        .expect("aligned");
        for i in 0..LOOP_SIZE {
            let addr = GuestAddress(DATA + u64::from(i) * u64::from(BUF_LEN));
            let desc = Descriptor::new(addr, BUF_LEN, DescFlags::empty(), 0);
            mem.write_obj(layout.desc(i), &desc)
                .expect("descriptor table in memory");
        }
        let driver = Driver::new(&gm);
        OursLoop {
            mem,
            _gm: gm,
            queue: DeviceQueue::new(layout, false, false),
            driver,
        }
    }

    /// One round, as [`PeerLoop::round`]; used entries are published once
    /// per round (§2.7.8), before the notification decision.
    #[inline(never)]
    pub fn round(&mut self) -> u64 {
        self.driver.make_available();
        let mem = &self.mem;
        let mut chains = 0;
        while let Some(chain) = self.queue.pop(mem).expect("valid ring") {
            let head = chain.head();
            let mut written = 0u32;
            for d in chain {
                let d = d.expect("valid chain");
                if d.is_write_only() {
                    written += d.len();
                }
            }
            self.queue
                .add_used(mem, head, written)
                .expect("used ring in memory");
            chains += 1;
        }
        self.queue.publish_used(mem).expect("ring in memory");
        black_box(self.queue.needs_notification(mem).expect("ring in memory"));
        assert_eq!(chains, u64::from(LOOP_SIZE));
        chains
    }
}

// ---------------------------------------------------------------------------
// Timing.

/// Batches of `f` that take about `ms` milliseconds (after a warm-up of
/// that length).
pub fn calibrate(f: &mut dyn FnMut() -> u64, ms: u64) -> u64 {
    let start = Instant::now();
    let mut batches = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        f();
        batches += 1;
    }
    batches
}

/// Chains per second of `f` over `batches` batches.
pub fn rate(f: &mut dyn FnMut() -> u64, batches: u64) -> f64 {
    let start = Instant::now();
    let chains: u64 = (0..batches).map(|_| f()).sum();
    chains as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of [`compare`].
pub const ROUNDS: usize = 7;

/// Chains/s of `ours`, of `peer`, and the ratio: medians over [`ROUNDS`]
/// rounds of about 60 ms each, the two alternating so that load from other
/// processes hits both alike.
pub fn compare(ours: &mut dyn FnMut() -> u64, peer: &mut dyn FnMut() -> u64) -> (f64, f64, f64) {
    let nb_ours = calibrate(ours, 60);
    let nb_peer = calibrate(peer, 60);
    let (mut o, mut p, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let a = rate(ours, nb_ours);
        let b = rate(peer, nb_peer);
        o.push(a);
        p.push(b);
        r.push(a / b);
    }
    (median(o), median(p), median(r))
}

/// A rate for the table: `12.34 M` or `567.8 k`.
pub fn human(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else {
        format!("{:.1} k", r / 1e3)
    }
}
