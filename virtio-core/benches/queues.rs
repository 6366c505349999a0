//! Split-queue throughput, ours against independent peers (spec §2.7):
//!
//! - device side: pop, walk every descriptor, `add_used`, and one publish
//!   and notification decision per batch of 256 chains: our [`DeviceQueue`]
//!   (through a `RegionMemory` over the same host memory) against rust-vmm
//!   `virtio_queue::Queue` (over the `vm_memory::GuestMemoryMmap` itself), on
//!   the same rings. The avail ring is pre-built once; each batch only moves
//!   the available index, so the measured work is the device's.
//! - `device/1-desc loop`: the loops of `common` (issue 17), as a user of
//!   each crate writes them: a plain method per implementation in which
//!   the driver rewrites all 256 available entries each round, then the
//!   device pops, walks and uses them, each in its own `GuestMemoryMmap`.
//!   The `queues_peer` bench runs the same loops in a binary of their own,
//!   which is the fair figure for the peer (see the README).
//! - driver side: add, publish, notification decision and `pop_used` of 64
//!   chains, our [`DriverQueue`] against `virtio_drivers::queue::VirtQueue`
//!   (set up through our mmio register file and `TestHal`), with the same
//!   trivial device loop completing every chain by writing the used ring.
//!
//! After criterion's output, a table gives chains/s of each and the ratio,
//! from a separate timing loop (medians of 7 alternating rounds). Under `cargo test
//! --benches` every case runs once as a check. `QUEUES_PROFILE=<case>/<ours|peer>`
//! runs one closure alone for 5 s, for `perf record`.

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use common::{OursLoop, PeerLoop};

use criterion::{Criterion, Throughput};
use virtio_core::features::TransportFeatures;
use virtio_core::memory::{GuestAddress, GuestMemory, Region, RegionMemory};
use virtio_core::mmio::{ActivateError, MmioDevice, MmioRegisters, QueueState};
use virtio_core::split::layout::{DescFlags, Descriptor, QueueLayout, QueueSize};
use virtio_core::split::{DeviceQueue, DriverQueue};
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Queue size on both sides, and chains per device-side batch.
const SIZE: u16 = 256;
/// Chains per driver-side batch (64 chains of 4 buffers fill the queue).
const DRIVER_BATCH: usize = 64;
const BUF_LEN: u32 = 512;

/// One benchmark case: a batch of work for each implementation, each
/// returning how many chains it handled.
struct Case {
    name: &'static str,
    chains: u64,
    ours: Box<dyn FnMut() -> u64>,
    peer: Box<dyn FnMut() -> u64>,
}

// ---------------------------------------------------------------------------
// Device side.

/// The host memory both device implementations use: one 16 MiB
/// `GuestMemoryMmap` region and our view of it.
struct Shared {
    /// Our view; declared first so that it is dropped before the mapping.
    mem: RegionMemory<4>,
    gm: GuestMemoryMmap,
}

impl Shared {
    fn new() -> &'static Shared {
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 16 << 20)])
            .expect("anonymous guest memory");
        let mut mem = RegionMemory::new();
        for r in gm.iter() {
            let host = r.get_host_address(MemoryRegionAddress(0)).unwrap();
            // SAFETY: `host` starts the region's anonymous mapping of
            // `r.len()` bytes owned by `gm`, which is leaked below together
            // with `mem` and so outlives it; both implementations reach the
            // bytes only through raw pointers, volatile accesses and atomics.
            let region = unsafe { Region::new(GuestAddress(r.start_addr().0), host, r.len()) };
            mem.add(region).unwrap();
        }
        Box::leak(Box::new(Shared { mem, gm }))
    }
}

const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const TABLES: u64 = 0x4_0000;
const DATA: u64 = 0x10_0000;

/// Shapes of device-side chains.
#[derive(Clone, Copy)]
enum Shape {
    /// `n` descriptors in the ring's table: one readable, the rest
    /// writable (a single descriptor is readable).
    Direct(u16),
    /// One descriptor pointing to a table of `n` such buffers (§2.7.5.3).
    Indirect(u16),
}

impl Shape {
    fn buffers(self) -> u16 {
        match self {
            Shape::Direct(n) | Shape::Indirect(n) => n,
        }
    }
}

/// Writes the chains of `shape` into the queue's table and fills every
/// avail slot with a head, so that any 256 consecutive avail indices name
/// valid chains.
fn build_rings(sh: &Shared, layout: &QueueLayout, shape: Shape) {
    let mem = &sh.mem;
    let n = shape.buffers();
    let buf = |i: u64, j: u16| -> (GuestAddress, u32, DescFlags) {
        let addr = GuestAddress(DATA + (i * u64::from(n) + u64::from(j)) * u64::from(BUF_LEN));
        match (j, n) {
            (0, 1) => (addr, BUF_LEN, DescFlags::empty()),
            (0, _) => (addr, 16, DescFlags::empty()),
            _ => (addr, BUF_LEN, DescFlags::WRITE),
        }
    };
    let link = |flags: DescFlags, j: u16, next: u16| {
        if j + 1 < n {
            (flags | DescFlags::NEXT, next)
        } else {
            (flags, 0)
        }
    };
    let heads: Vec<u16> = match shape {
        Shape::Direct(_) => {
            let chains = SIZE / n;
            for c in 0..chains {
                for j in 0..n {
                    let idx = c * n + j;
                    let (a, l, f) = buf(u64::from(c), j);
                    let (f, next) = link(f, j, idx + 1);
                    mem.write_obj(layout.desc(idx), &Descriptor::new(a, l, f, next))
                        .unwrap();
                }
            }
            (0..SIZE).map(|s| (s % chains) * n).collect()
        }
        Shape::Indirect(_) => {
            for c in 0..SIZE {
                let table = GuestAddress(TABLES + u64::from(c) * u64::from(n) * 16);
                for j in 0..n {
                    let (a, l, f) = buf(u64::from(c), j);
                    let (f, next) = link(f, j, j + 1);
                    let at = GuestAddress(table.0 + u64::from(j) * 16);
                    mem.write_obj(at, &Descriptor::new(a, l, f, next)).unwrap();
                }
                let d = Descriptor::new(table, u32::from(n) * 16, DescFlags::INDIRECT, 0);
                mem.write_obj(layout.desc(c), &d).unwrap();
            }
            (0..SIZE).collect()
        }
    };
    for (slot, head) in heads.iter().enumerate() {
        mem.write_u16(layout.avail_slot(slot as u16), *head)
            .unwrap();
    }
}

fn device_case(name: &'static str, shape: Shape) -> Case {
    let sh = Shared::new();
    let size = QueueSize::new(u32::from(SIZE)).unwrap();
    let layout = QueueLayout::new(
        size,
        GuestAddress(DESC),
        GuestAddress(AVAIL),
        GuestAddress(USED),
    )
    .unwrap();
    build_rings(sh, &layout, shape);
    let per_chain = u64::from(shape.buffers());

    let mut ours = DeviceQueue::new(layout, false, true);
    let ours_batch = move || {
        let mem = &sh.mem;
        // Refill: the driver makes the next 256 slots available.
        let idx = ours.next_avail().wrapping_add(SIZE);
        mem.store_u16_release(layout.avail_idx(), idx).unwrap();
        let (mut chains, mut descs) = (0u64, 0u64);
        while let Some(chain) = ours.pop(mem).unwrap() {
            let head = chain.head();
            let mut written = 0u32;
            for d in chain {
                let d = d.expect("valid chain");
                if d.is_write_only() {
                    written += d.len();
                }
                descs += 1;
            }
            ours.add_used(mem, head, written).unwrap();
            chains += 1;
        }
        ours.publish_used(mem).unwrap();
        black_box(ours.needs_notification(mem).unwrap());
        assert_eq!(
            (chains, descs),
            (u64::from(SIZE), u64::from(SIZE) * per_chain)
        );
        chains
    };

    let mut peer = Queue::new(SIZE).unwrap();
    peer.try_set_desc_table_address(vm_memory::GuestAddress(DESC))
        .unwrap();
    peer.try_set_avail_ring_address(vm_memory::GuestAddress(AVAIL))
        .unwrap();
    peer.try_set_used_ring_address(vm_memory::GuestAddress(USED))
        .unwrap();
    peer.set_ready(true);
    assert!(peer.is_valid(&sh.gm));
    let peer_batch = move || {
        let gm = &sh.gm;
        let idx = peer.next_avail().wrapping_add(SIZE);
        sh.mem.store_u16_release(layout.avail_idx(), idx).unwrap();
        let (mut chains, mut descs) = (0u64, 0u64);
        while let Some(chain) = peer.pop_descriptor_chain(gm) {
            let head = chain.head_index();
            let mut written = 0u32;
            for d in chain {
                if d.is_write_only() {
                    written += d.len();
                }
                descs += 1;
            }
            peer.add_used(gm, head, written).unwrap();
            chains += 1;
        }
        black_box(peer.needs_notification(gm).unwrap());
        assert_eq!(
            (chains, descs),
            (u64::from(SIZE), u64::from(SIZE) * per_chain)
        );
        chains
    };

    Case {
        name,
        chains: u64::from(SIZE),
        ours: Box::new(ours_batch),
        peer: Box::new(peer_batch),
    }
}

/// The standalone loops of `common`, each called once per batch.
fn loop_case(name: &'static str) -> Case {
    let mut ours = OursLoop::new();
    let mut peer = PeerLoop::new();
    Case {
        name,
        chains: u64::from(common::LOOP_SIZE),
        ours: Box::new(move || ours.round()),
        peer: Box::new(move || peer.round()),
    }
}

// ---------------------------------------------------------------------------
// Driver side.

/// The device of the driver-side cases: completes every available chain
/// by writing the used ring directly, the same code for both drivers.
struct CheapDevice {
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    next_avail: u16,
    next_used: u16,
}

impl CheapDevice {
    fn new(layout: &QueueLayout) -> CheapDevice {
        CheapDevice {
            avail: TestHal::host_ptr(layout.avail_ring()).unwrap(),
            used: TestHal::host_ptr(layout.used_ring()).unwrap(),
            size: layout.size().get(),
            next_avail: 0,
            next_used: 0,
        }
    }

    /// Uses every available chain with length `len`; returns how many.
    fn complete_all(&mut self, len: u32) -> u16 {
        // SAFETY: `avail + 2` is the 2-aligned `idx` of an available ring in
        // the DMA pool, which lives for the whole process and is only
        // accessed through raw pointers and atomics.
        let avail_idx =
            unsafe { AtomicU16::from_ptr(self.avail.add(2).cast()) }.load(Ordering::Acquire);
        let n = avail_idx.wrapping_sub(self.next_avail);
        for _ in 0..n {
            let slot = usize::from(self.next_avail % self.size);
            let used_slot = usize::from(self.next_used % self.size);
            // SAFETY: `slot` and `used_slot` are below the queue size, so
            // both accesses lie inside the rings (in the DMA pool, see
            // above); the driver does not write these entries meanwhile.
            unsafe {
                let head = self.avail.add(4 + 2 * slot).cast::<u16>().read_volatile();
                let elem = self.used.add(4 + 8 * used_slot).cast::<u32>();
                elem.write_volatile(u32::from(u16::from_le(head)).to_le());
                elem.add(1).write_volatile(len.to_le());
            }
            self.next_avail = self.next_avail.wrapping_add(1);
            self.next_used = self.next_used.wrapping_add(1);
        }
        // SAFETY: as for the available index: the used ring's `idx`.
        unsafe { AtomicU16::from_ptr(self.used.add(2).cast()) }
            .store(self.next_used.to_le(), Ordering::Release);
        n
    }
}

/// A buffer as our driver takes it: guest address and length.
type Buffer = (GuestAddress, u32);

/// Buffers for the driver-side cases: per chain, one device-readable
/// header and `W` device-writable buffers (or, with `R = 0`, only
/// writable ones), in DMA pool pages that are never freed.
struct Buffers<const R: usize, const W: usize> {
    base: GuestAddress,
}

impl<const R: usize, const W: usize> Buffers<R, W> {
    fn new() -> Self {
        let bytes = DRIVER_BATCH * (R + W) * BUF_LEN as usize;
        let base = TestHal::alloc_pages(bytes.div_ceil(4096)).unwrap();
        Buffers { base }
    }

    fn addr(&self, chain: usize, j: usize) -> GuestAddress {
        let i = (chain * (R + W) + j) as u64;
        GuestAddress(self.base.0 + i * u64::from(BUF_LEN))
    }

    fn ours(&self, chain: usize) -> ([Buffer; R], [Buffer; W]) {
        let r = std::array::from_fn(|j| (self.addr(chain, j), BUF_LEN));
        let w = std::array::from_fn(|j| (self.addr(chain, R + j), BUF_LEN));
        (r, w)
    }

    /// Slices over one chain's buffers, for one call into `virtio-drivers`.
    fn slices<'a>(&self, chain: usize) -> ([&'a [u8]; R], [&'a mut [u8]; W]) {
        let at = |j| TestHal::host_ptr(self.addr(chain, j)).unwrap();
        // SAFETY: each buffer is `BUF_LEN` bytes of DMA pool pages reserved
        // for this case and never freed; no two buffers overlap, and nothing
        // reads or writes them (the cheap device only touches the rings).
        let r =
            std::array::from_fn(|j| unsafe { std::slice::from_raw_parts(at(j), BUF_LEN as usize) });
        // SAFETY: as above.
        let w = std::array::from_fn(|j| unsafe {
            std::slice::from_raw_parts_mut(at(R + j), BUF_LEN as usize)
        });
        (r, w)
    }
}

/// The device `virtio-drivers` is set up against: one queue, no features
/// beyond VERSION_1, nothing to do on activation.
struct BenchDevice;

impl MmioDevice for BenchDevice {
    fn device_id(&self) -> u32 {
        4
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max_size(&self, _index: u16) -> u16 {
        SIZE
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _features: u64, _queues: &[QueueState]) -> Result<(), ActivateError> {
        Ok(())
    }
    fn reset(&mut self) {}
}

fn driver_case<const R: usize, const W: usize>(name: &'static str) -> Case {
    let len = BUF_LEN * W as u32;

    // Ours: rings in three pool pages.
    let mem = TestHal::memory();
    let page = || TestHal::alloc_pages(1).unwrap();
    let size = QueueSize::new(u32::from(SIZE)).unwrap();
    let layout = QueueLayout::new(size, page(), page(), page()).unwrap();
    let mut drv = Box::new(DriverQueue::<{ SIZE as usize }>::new(layout, false, None).unwrap());
    drv.init(mem).unwrap();
    let mut dev = CheapDevice::new(&layout);
    let bufs = Buffers::<R, W>::new();
    let ours_batch = move || {
        for c in 0..DRIVER_BATCH {
            let (r, w) = bufs.ours(c);
            drv.add(mem, &r, &w).unwrap();
        }
        drv.publish(mem).unwrap();
        black_box(drv.should_kick(mem).unwrap());
        dev.complete_all(len);
        let mut n = 0u64;
        while let Some(used) = drv.pop_used(mem).unwrap() {
            debug_assert_eq!(used.len, len);
            n += 1;
        }
        assert_eq!(n, DRIVER_BATCH as u64);
        n
    };

    // The peer: set up through our register file, rings from `TestHal`.
    let regs = MmioRegisters::<_, 8>::new(BenchDevice).unwrap();
    let mut t = DeviceTransport::new(regs).unwrap();
    t.begin_init(TransportFeatures::VERSION_1);
    let mut vq = VirtQueue::<TestHal, { SIZE as usize }>::new(&mut t, 0, false, false).unwrap();
    t.finish_init();
    let peer_layout = t.registers().queue(0).unwrap().layout().unwrap();
    let mut dev = CheapDevice::new(&peer_layout);
    let bufs = Buffers::<R, W>::new();
    let mut tokens = [0u16; DRIVER_BATCH];
    let peer_batch = move || {
        // The transport (and the device's queue state) lives as long as the
        // queue, as in a driver.
        let _transport = &t;
        for (c, token) in tokens.iter_mut().enumerate() {
            let (r, mut w) = bufs.slices(c);
            // SAFETY: the buffers are pool memory that outlives the queue
            // and that nothing else touches until `pop_used` below.
            *token = unsafe { vq.add(&r, &mut w) }.unwrap();
        }
        black_box(vq.should_notify());
        dev.complete_all(len);
        for (c, &token) in tokens.iter().enumerate() {
            let (r, mut w) = bufs.slices(c);
            // SAFETY: the same buffers as were added with `token`.
            let got = unsafe { vq.pop_used(token, &r, &mut w) }.unwrap();
            debug_assert_eq!(got, len);
        }
        DRIVER_BATCH as u64
    };

    Case {
        name,
        chains: DRIVER_BATCH as u64,
        ours: Box::new(ours_batch),
        peer: Box::new(peer_batch),
    }
}

// ---------------------------------------------------------------------------

fn cases() -> Vec<Case> {
    vec![
        device_case("device/1-desc", Shape::Direct(1)),
        device_case("device/2-desc", Shape::Direct(2)),
        device_case("device/4-desc", Shape::Direct(4)),
        device_case("device/indirect-4", Shape::Indirect(4)),
        loop_case("device/1-desc loop"),
        driver_case::<0, 1>("driver/1-buf"),
        driver_case::<1, 1>("driver/2-buf"),
        driver_case::<1, 3>("driver/4-buf"),
    ]
}

/// `QUEUES_PROFILE=<case>/<ours|peer>` runs that one closure for 5 s and
/// exits, for `perf record`.
fn profile(spec: &str) {
    let (name, side) = spec
        .rsplit_once('/')
        .expect("QUEUES_PROFILE=<case>/<ours|peer>");
    let mut cases = cases();
    let case = cases
        .iter_mut()
        .find(|c| c.name == name)
        .expect("a known case");
    let f = if side == "ours" {
        &mut case.ours
    } else {
        &mut case.peer
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        f();
    }
}

fn main() {
    if let Ok(spec) = std::env::var("QUEUES_PROFILE") {
        return profile(&spec);
    }
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    let mut cases = cases();
    for case in &mut cases {
        let mut g = c.benchmark_group(case.name);
        g.throughput(Throughput::Elements(case.chains));
        g.bench_function("ours", |b| b.iter(&mut case.ours));
        g.bench_function("peer", |b| b.iter(&mut case.peer));
        g.finish();
    }
    c.final_summary();
    if !bench_mode {
        return;
    }

    println!();
    println!(
        "chains/s, medians of {} alternating rounds; peers: device side virtio-queue 0.18, \
         driver side virtio-drivers 0.13",
        common::ROUNDS
    );
    println!(
        "{:<20} {:>14} {:>14} {:>10}",
        "case", "ours", "peer", "ours/peer"
    );
    for case in &mut cases {
        let (ours, peer, ratio) = common::compare(&mut case.ours, &mut case.peer);
        println!(
            "{:<20} {:>14} {:>14} {:>9.2}x",
            case.name,
            common::human(ours),
            common::human(peer),
            ratio
        );
    }
    println!(
        "device/1-desc loop: the loops of the queues_peer bench, compiled into this binary; \
         `--bench queues_peer` runs them in their own"
    );
}
