//! Scenario `blk`: drives the block devices (§5.2, DeviceID 2) of the
//! command line's `virtio_mmio.device=` slots, in command-line order,
//! through `guest_driver::blk`.
//!
//! Options (see README.md): `blk.test=pattern|readonly|range|id|zeroes|mq|bench`
//! (required), `blk.mode=poll|irq`, `blk.depth=N`, `blk.disks=N`,
//! `blk.seed=S`, `blk.bytes=N`, `blk.offset=N`, `blk.serial=X`,
//! `blk.unmap=0|1`, `blk.queues=N`, `blk.pattern=randread|randwrite|seqread|seqwrite`,
//! `blk.size=N`, `blk.count=N`. The data pattern: the 8 bytes at disk
//! offset `o` are the little-endian u64 `o ^ seed`. Last line before the
//! verdict: `blk: <test>: <bytes> bytes, <requests> requests, <interrupts> interrupts`.
#![no_std]
#![no_main]

use guest_driver::VolatileMmio;
use guest_driver::blk::{Blk, BlkError, BlkOptions, MAX_DEPTH, MAX_QUEUES, SECTOR_SIZE, Token};
use guest_driver::cmdline::SlotList;
use guest_driver::hal::{PAGE_SIZE, PoolHal};
use guest_driver::transport;
use guest_driver::virtio_core::features::DeviceType;
use guest_rt::layout::IDENTITY_MAP_END;
use guest_rt::virtio::{self, Budget, MAX_SLOTS, Mode, OrFail};
use guest_rt::{BootInfo, exit, println};

guest_rt::entry!(main);

/// Request sizes in sectors, cycled (capped by what remains and by what
/// one request carries).
const SIZES: [u64; 8] = [1, 8, 3, 64, 16, 128, 7, 256];
/// Default of `blk.seed` (0x9e3779b97f4a7c15).
const DEFAULT_SEED: u64 = 11_400_714_819_323_198_485;
/// Default of `blk.bytes`.
const DEFAULT_BYTES: u64 = 1 << 20;
/// Bound on each wait, in milliseconds.
const REQUEST_MS: u64 = 10_000;
/// Pages of the scenario's own DMA pool (the runtime's 64-page pool is
/// too small for deep queues of large requests).
const POOL_PAGES: usize = 512;
/// Pages of the pool the driver may take per disk.
const POOL_BUDGET: usize = POOL_PAGES - 8;
/// Disks driven at most.
const MAX_DISKS: usize = 8;

type Pool = PoolHal<POOL_PAGES>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Pattern,
    ReadOnly,
    Range,
    Id,
    Zeroes,
    Mq,
    Bench,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Pattern => "pattern",
            Test::ReadOnly => "readonly",
            Test::Range => "range",
            Test::Id => "id",
            Test::Zeroes => "zeroes",
            Test::Mq => "mq",
            Test::Bench => "bench",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BenchPattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl BenchPattern {
    fn name(self) -> &'static str {
        match self {
            BenchPattern::RandRead => "randread",
            BenchPattern::RandWrite => "randwrite",
            BenchPattern::SeqRead => "seqread",
            BenchPattern::SeqWrite => "seqwrite",
        }
    }
}

/// The parsed options.
struct Opts {
    test: Test,
    mode: Mode,
    depth: u64,
    disks: u64,
    seed: u64,
    bytes: u64,
    offset: u64,
    serial: Option<&'static str>,
    unmap: bool,
    queues: Option<u64>,
    pattern: BenchPattern,
    size: u64,
    count: u64,
}

fn options(boot: &BootInfo) -> Opts {
    let o = virtio::Options::new(
        boot,
        "blk",
        &[
            "test", "mode", "depth", "disks", "seed", "bytes", "offset", "serial", "unmap",
            "queues", "pattern", "size", "count",
        ],
    )
    .or_fail(format_args!("blk"));
    let test = o
        .choice(
            "test",
            &[
                ("pattern", Test::Pattern),
                ("readonly", Test::ReadOnly),
                ("range", Test::Range),
                ("id", Test::Id),
                ("zeroes", Test::Zeroes),
                ("mq", Test::Mq),
                ("bench", Test::Bench),
            ],
            "pattern, readonly, range, id, zeroes, mq or bench",
        )
        .or_fail(format_args!("blk"))
        .ok_or(virtio::Options::missing("blk.test"))
        .or_fail(format_args!("blk"));
    let pattern = o
        .choice(
            "pattern",
            &[
                ("randread", BenchPattern::RandRead),
                ("randwrite", BenchPattern::RandWrite),
                ("seqread", BenchPattern::SeqRead),
                ("seqwrite", BenchPattern::SeqWrite),
            ],
            "randread, randwrite, seqread or seqwrite",
        )
        .or_fail(format_args!("blk"))
        .unwrap_or(BenchPattern::RandRead);
    let unmap = o
        .choice("unmap", &[("0", false), ("1", true)], "0 or 1")
        .or_fail(format_args!("blk"))
        .unwrap_or(false);
    let num = |k: &str, d: u64| o.u64(k).or_fail(format_args!("blk")).unwrap_or(d);
    let opts = Opts {
        test,
        mode: o.mode().or_fail(format_args!("blk")),
        depth: num("depth", 8),
        disks: num("disks", 1),
        seed: num("seed", DEFAULT_SEED),
        bytes: num("bytes", DEFAULT_BYTES),
        offset: num("offset", 0),
        serial: o.text("serial").or_fail(format_args!("blk")),
        unmap,
        queues: o.u64("queues").or_fail(format_args!("blk")),
        pattern,
        size: num("size", 4096),
        count: num("count", 2048),
    };
    let sector = u64::from(SECTOR_SIZE);
    if opts.depth == 0 || opts.depth > MAX_DEPTH as u64 {
        exit::fail(format_args!(
            "blk: bad value {} for blk.depth (want 1..={MAX_DEPTH})",
            opts.depth
        ));
    }
    if opts.disks == 0 || opts.disks > MAX_DISKS as u64 {
        exit::fail(format_args!(
            "blk: bad value {} for blk.disks (want 1..={MAX_DISKS})",
            opts.disks
        ));
    }
    if !opts.bytes.is_multiple_of(sector) || !opts.offset.is_multiple_of(sector) {
        exit::fail(format_args!(
            "blk: blk.bytes={} and blk.offset={} must be multiples of 512",
            opts.bytes, opts.offset
        ));
    }
    if opts.size == 0 || !opts.size.is_multiple_of(sector) || opts.size > virtio::SCRATCH_LEN as u64
    {
        exit::fail(format_args!(
            "blk: bad value {} for blk.size (want a multiple of 512 up to {})",
            opts.size,
            virtio::SCRATCH_LEN
        ));
    }
    if matches!(opts.queues, Some(q) if q == 0 || q > MAX_QUEUES as u64) {
        exit::fail(format_args!(
            "blk: bad value for blk.queues (want 1..={MAX_QUEUES})"
        ));
    }
    opts
}

/// The scenario's DMA pool: [`POOL_PAGES`] pages (deep queues need more
/// than the runtime's default pool).
fn pool(boot: &BootInfo) -> Pool {
    guest_rt::virtio::dma_pool_of::<POOL_PAGES>(boot).or_fail(format_args!("blk: DMA pool"))
}

/// The first `n` slots whose DeviceID is 2, in command-line order.
fn find_disks(
    boot: &BootInfo,
    dma: &Pool,
    n: usize,
) -> [Option<(guest_driver::cmdline::MmioSlot, VolatileMmio)>; MAX_DISKS] {
    let slots = SlotList::<MAX_SLOTS>::parse(boot.cmdline());
    let mut found: [Option<_>; MAX_DISKS] = core::array::from_fn(|_| None);
    let mut count = 0;
    for slot in slots.iter().copied() {
        if count == n.min(MAX_DISKS) {
            break;
        }
        if slot.end() > IDENTITY_MAP_END {
            continue;
        }
        // SAFETY: the loader's command line says this is a virtio-mmio
        // register block in the identity map (the MMIO GiB is uncached);
        // each slot is probed once and used by one driver at a time.
        if let Some(dev) = unsafe { transport::find_device(dma, [slot], DeviceType::Blk) } {
            found[count] = Some(dev);
            count += 1;
        }
    }
    if count < n {
        exit::fail(format_args!(
            "blk: blk.disks={n} but {} block device(s) (DeviceID 2) in the {} virtio_mmio.device= slot(s)",
            count,
            slots.as_slice().len()
        ));
    }
    found
}

/// Fills `buf` with the pattern at disk byte offset `off` (a multiple of
/// 8), a word at a time.
fn fill(buf: &mut [u8], off: u64, seed: u64) {
    let mut o = off;
    for w in buf.chunks_exact_mut(8) {
        w.copy_from_slice(&(o ^ seed).to_le_bytes());
        o += 8;
    }
}

/// The first byte of `buf` (at disk offset `off`) that differs from the
/// pattern, a word at a time: its disk offset, the byte and the expected.
fn check(buf: &[u8], off: u64, seed: u64) -> Result<(), (u64, u8, u8)> {
    let mut o = off;
    for w in buf.chunks_exact(8) {
        let want = (o ^ seed).to_le_bytes();
        if w != want {
            let k = (0..8).find(|&k| w[k] != want[k]).unwrap_or(0);
            return Err((o + k as u64, w[k], want[k]));
        }
        o += 8;
    }
    Ok(())
}

/// Counters of one run.
#[derive(Default)]
struct Stats {
    bytes: u64,
    requests: u64,
}

/// Writes or reads (and checks) the pattern over `stripes` (one
/// contiguous range per queue, `[start, end)` in bytes), keeping up to
/// `depth` requests in flight on each queue, request sizes cycling
/// through [`SIZES`].
#[allow(clippy::too_many_arguments)]
fn stripes(
    blk: &mut Blk<&Pool, VolatileMmio>,
    ranges: &[(u64, u64)],
    write: bool,
    seed: u64,
    mode: Mode,
    buf: &mut [u8],
    stats: &mut Stats,
    what: &str,
) {
    let max = blk.max_request_bytes().min(buf.len()) as u64;
    let depth = u64::from(blk.depth());
    let mut cursors = [(0u64, 0u64, 0usize, 0u64); MAX_QUEUES];
    for (c, &(s, e)) in cursors.iter_mut().zip(ranges) {
        *c = (s, e, 0, 0);
    }
    let cursor = &mut cursors[..ranges.len().min(MAX_QUEUES)];
    // Offsets of requests in flight, by token.
    let mut inflight = [(None::<Token>, 0u64, 0u64); MAX_QUEUES * MAX_DEPTH];
    let mut flying_total = 0usize;
    loop {
        // Submit round-robin across queues.
        let mut added = true;
        while added {
            added = false;
            for (q, c) in cursor.iter_mut().enumerate() {
                let (ref mut pos, end, ref mut i, ref mut flying) = *c;
                if *pos >= end || *flying >= depth {
                    continue;
                }
                let n = (SIZES[*i % SIZES.len()] * u64::from(SECTOR_SIZE))
                    .min(end - *pos)
                    .min(max);
                let n = n - n % u64::from(SECTOR_SIZE);
                let sector = *pos / u64::from(SECTOR_SIZE);
                let r = if write {
                    let chunk = &mut buf[..n as usize];
                    fill(chunk, *pos, seed);
                    blk.submit_write(q as u16, sector, chunk)
                } else {
                    blk.submit_read(q as u16, sector, n as usize)
                };
                let t = r.or_fail(format_args!(
                    "blk: {what}: submitting {n} bytes at offset {pos} on queue {q}"
                ));
                if let Some(e) = inflight.iter_mut().find(|e| e.0.is_none()) {
                    *e = (Some(t), *pos, n);
                }
                flying_total += 1;
                *pos += n;
                *i += 1;
                *flying += 1;
                added = true;
            }
        }
        if flying_total == 0 {
            break;
        }
        let done = blk
            .wait_any(&mut Budget::new(mode, REQUEST_MS))
            .or_fail(format_args!("blk: {what}: waiting"));
        let Some(e) = inflight.iter_mut().find(|e| e.0 == Some(done.token)) else {
            exit::fail(format_args!("blk: {what}: a completion for no request"));
        };
        let (t, off, n) = (done.token, e.1, e.2);
        e.0 = None;
        flying_total -= 1;
        if let Some(c) = cursor.get_mut(usize::from(t.queue)) {
            c.3 -= 1;
        }
        if let Err(e) = done.result {
            exit::fail(format_args!(
                "blk: {what}: {} of {n} bytes at offset {off}: {e}",
                if write { "write" } else { "read" }
            ));
        }
        stats.requests += 1;
        stats.bytes += n;
        if !write {
            let chunk = &mut buf[..n as usize];
            blk.take_data(t, chunk)
                .or_fail(format_args!("blk: {what}: read at offset {off}"));
            if let Err((at, got, want)) = check(chunk, off, seed) {
                exit::fail(format_args!(
                    "blk: {what}: byte at offset {at} is {got:#04x}, the pattern has {want:#04x}"
                ));
            }
        }
    }
}

fn flush(blk: &mut Blk<&Pool, VolatileMmio>, mode: Mode, stats: &mut Stats, what: &str) {
    match blk.flush(&mut Budget::new(mode, REQUEST_MS)) {
        Ok(()) => {
            stats.requests += 1;
            println!("blk: {what}: flushed");
        }
        Err(BlkError::NotNegotiated { .. }) => {
            println!("blk: {what}: FLUSH not offered, no flush");
        }
        Err(e) => exit::fail(format_args!("blk: {what}: flush: {e}")),
    }
}

/// Expects `r` to be IOERR (§5.2.6.1).
fn expect_ioerr(r: Result<(), BlkError>, what: &str, stats: &mut Stats) {
    stats.requests += 1;
    match r {
        Err(BlkError::IoError) => println!("blk: {what}: IOERR, as §5.2.6.1 asks"),
        Ok(()) => exit::fail(format_args!(
            "blk: {what}: completed OK, want IOERR (§5.2.6.1)"
        )),
        Err(e) => exit::fail(format_args!("blk: {what}: {e}, want IOERR (§5.2.6.1)")),
    }
}

fn run(
    blk: &mut Blk<&Pool, VolatileMmio>,
    o: &Opts,
    seed: u64,
    buf: &mut [u8],
    stats: &mut Stats,
    disk: usize,
) {
    let mode = o.mode;
    let w = || Budget::new(mode, REQUEST_MS);
    let cap_bytes = blk.capacity().saturating_mul(u64::from(SECTOR_SIZE));
    match o.test {
        Test::Pattern | Test::Mq => {
            let end = o.offset.saturating_add(o.bytes);
            if end > cap_bytes {
                exit::fail(format_args!(
                    "blk: disk {disk}: blk.offset + blk.bytes = {end} beyond the capacity of {cap_bytes} bytes"
                ));
            }
            let nq = u64::from(blk.num_queues());
            if o.test == Test::Mq && o.queues.is_some_and(|q| q > nq) {
                exit::fail(format_args!(
                    "blk: disk {disk}: blk.queues={} but the device has {nq} queue(s)",
                    o.queues.unwrap_or(0)
                ));
            }
            // Stripes: the region cut in `nq` sector-aligned parts.
            let sectors = o.bytes / u64::from(SECTOR_SIZE);
            let mut all = [(0u64, 0u64); MAX_QUEUES];
            for (q, r) in (0..nq).zip(all.iter_mut()) {
                let s = o.offset + sectors * q / nq * u64::from(SECTOR_SIZE);
                let e = o.offset + sectors * (q + 1) / nq * u64::from(SECTOR_SIZE);
                *r = (s, e);
            }
            let ranges = &all[..nq as usize];
            let what = o.test.name();
            stripes(blk, ranges, true, seed, mode, buf, stats, what);
            println!("blk: disk {disk}: {} bytes written", o.bytes);
            flush(blk, mode, stats, what);
            stripes(blk, ranges, false, seed, mode, buf, stats, what);
            println!(
                "blk: disk {disk}: {} bytes match the pattern of seed {seed} on {nq} queue(s)",
                o.bytes
            );
        }
        Test::ReadOnly => {
            if !blk.read_only() {
                exit::fail(format_args!(
                    "blk: readonly: disk {disk} does not offer VIRTIO_BLK_F_RO"
                ));
            }
            let one = &mut buf[..512];
            blk.read(0, one, &mut w())
                .or_fail(format_args!("blk: readonly: read of sector 0"));
            stats.requests += 1;
            stats.bytes += 512;
            expect_ioerr(
                blk.write(0, one, &mut w()),
                "readonly: write of sector 0",
                stats,
            );
        }
        Test::Range => {
            let cap = blk.capacity();
            let (a, b) = buf.split_at_mut(1024);
            expect_ioerr(
                blk.read(cap, &mut a[..512], &mut w()),
                "range: read at capacity",
                stats,
            );
            expect_ioerr(
                blk.write(cap, &b[..512], &mut w()),
                "range: write at capacity",
                stats,
            );
            expect_ioerr(
                blk.read(cap.saturating_sub(1), a, &mut w()),
                "range: read straddling the end",
                stats,
            );
            expect_ioerr(
                blk.write(cap.saturating_sub(1), &b[..1024], &mut w()),
                "range: write straddling the end",
                stats,
            );
            blk.read(cap.saturating_sub(1), &mut a[..512], &mut w())
                .or_fail(format_args!("blk: range: read of the last sector"));
            stats.requests += 1;
            stats.bytes += 512;
            println!(
                "blk: range: the last sector ({}) reads",
                cap.saturating_sub(1)
            );
        }
        Test::Id => {
            let id = blk
                .get_id(&mut w())
                .or_fail(format_args!("blk: id: GET_ID"));
            stats.requests += 1;
            stats.bytes += id.len() as u64;
            let end = id.iter().position(|b| *b == 0).unwrap_or(id.len());
            let got = &id[..end];
            let text = core::str::from_utf8(got).unwrap_or("<not UTF-8>");
            println!("blk: id: \"{text}\"");
            if let Some(want) = o.serial {
                let want = &want.as_bytes()[..want.len().min(id.len())];
                if got != want {
                    exit::fail(format_args!(
                        "blk: id: GET_ID says \"{text}\", blk.serial={}",
                        o.serial.unwrap_or("")
                    ));
                }
            }
        }
        Test::Zeroes => {
            let total = 64 * 1024;
            if cap_bytes < 2 * total {
                exit::fail(format_args!(
                    "blk: zeroes: disk {disk} smaller than 128 KiB"
                ));
            }
            stripes(blk, &[(0, total)], true, seed, mode, buf, stats, "zeroes");
            blk.write_zeroes(32, 64, o.unmap, &mut w())
                .or_fail(format_args!(
                    "blk: zeroes: WRITE_ZEROES of 32 KiB at 16 KiB"
                ));
            stats.requests += 1;
            let chunk = &mut buf[..total as usize];
            blk.read(0, &mut chunk[..32 * 1024], &mut w())
                .or_fail(format_args!("blk: zeroes: read back"));
            blk.read(64, &mut chunk[32 * 1024..], &mut w())
                .or_fail(format_args!("blk: zeroes: read back"));
            stats.requests += 2;
            stats.bytes += total;
            let (head, rest) = chunk.split_at(16 * 1024);
            let (mid, tail) = rest.split_at(32 * 1024);
            if let Err((at, got, want)) =
                check(head, 0, seed).and_then(|()| check(tail, 48 * 1024, seed))
            {
                exit::fail(format_args!(
                    "blk: zeroes: byte at offset {at} is {got:#04x}, the pattern has {want:#04x}"
                ));
            }
            if let Some(k) = mid.chunks_exact(8).position(|w| w != [0u8; 8]) {
                exit::fail(format_args!(
                    "blk: zeroes: bytes at offset {} not zero after WRITE_ZEROES",
                    16 * 1024 + 8 * k
                ));
            }
            println!(
                "blk: zeroes: 32 KiB zeroed (unmap {}), pattern around",
                o.unmap
            );
            blk.discard(128, 16, &mut w())
                .or_fail(format_args!("blk: zeroes: DISCARD of 8 KiB at 64 KiB"));
            stats.requests += 1;
            println!("blk: zeroes: DISCARD of 8 KiB ok");
        }
        Test::Bench => bench(blk, o, seed, buf, stats, cap_bytes),
    }
}

fn bench(
    blk: &mut Blk<&Pool, VolatileMmio>,
    o: &Opts,
    seed: u64,
    buf: &mut [u8],
    stats: &mut Stats,
    cap_bytes: u64,
) {
    let size = o.size;
    if size as usize > blk.max_request_bytes() {
        exit::fail(format_args!(
            "blk: bench: blk.size={size} above the {} one request carries",
            blk.max_request_bytes()
        ));
    }
    let span = o.bytes.min(cap_bytes.saturating_sub(o.offset)) / size;
    if span == 0 {
        exit::fail(format_args!("blk: bench: blk.bytes smaller than blk.size"));
    }
    let write = matches!(o.pattern, BenchPattern::RandWrite | BenchPattern::SeqWrite);
    let random = matches!(o.pattern, BenchPattern::RandRead | BenchPattern::RandWrite);
    let chunk = &mut buf[..size as usize];
    fill(chunk, 0, seed);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let depth = usize::from(blk.depth());
    let (mut submitted, mut completed, mut flying) = (0u64, 0u64, 0usize);
    virtio::clock::start();
    let t0 = guest_rt::cpu::rdtsc();
    while completed < o.count {
        while submitted < o.count && flying < depth {
            let k = if random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % span
            } else {
                submitted % span
            };
            let sector = (o.offset + k * size) / u64::from(SECTOR_SIZE);
            let r = if write {
                blk.submit_write(0, sector, chunk)
            } else {
                blk.submit_read(0, sector, size as usize)
            };
            r.or_fail(format_args!("blk: bench: submit"));
            submitted += 1;
            flying += 1;
        }
        let done = blk
            .wait_any(&mut Budget::new(o.mode, REQUEST_MS))
            .or_fail(format_args!("blk: bench: waiting"));
        if let Err(e) = done.result {
            exit::fail(format_args!("blk: bench: request: {e}"));
        }
        blk.release(done.token);
        flying -= 1;
        completed += 1;
    }
    let t1 = guest_rt::cpu::rdtsc();
    let us = t1.saturating_sub(t0).saturating_mul(1000) / virtio::clock::tsc_per_ms().max(1);
    stats.requests += completed;
    stats.bytes += completed * size;
    println!(
        "blk: bench: {} {} requests of {size} bytes at depth {depth} in {us} us",
        o.pattern.name(),
        completed
    );
}

fn main(boot: &'static BootInfo) {
    let o = options(boot);
    let dma = pool(boot);
    let disks = find_disks(boot, &dma, o.disks as usize);
    let Some(scratch) = virtio::scratch() else {
        exit::fail(format_args!("blk: scratch buffer taken"));
    };
    let mut stats = Stats::default();
    for (i, (slot, regs)) in disks.into_iter().flatten().enumerate() {
        if o.mode == Mode::Irq {
            virtio::route_irq(&slot).or_fail(format_args!("blk: irq {}", slot.irq));
        }
        let queues = match o.test {
            Test::Mq => o.queues.unwrap_or(MAX_QUEUES as u64) as u16,
            _ => 1,
        };
        // Slots as large as the pool allows (at most the scratch buffer).
        let per_queue = POOL_BUDGET / usize::from(queues);
        // Rings, headers and indirect tables: the pages without data.
        let fixed = BlkOptions {
            depth: o.depth as u16,
            slot_size: 0,
            ..BlkOptions::default()
        }
        .pages_per_queue();
        let slot_pages = (per_queue.saturating_sub(fixed) / o.depth as usize)
            .clamp(1, virtio::SCRATCH_LEN / PAGE_SIZE);
        let options = BlkOptions {
            completion: o.mode.completion(),
            event_idx: true,
            queues,
            depth: o.depth as u16,
            slot_size: (slot_pages * PAGE_SIZE) as u32,
            ..BlkOptions::default()
        };
        let mut blk = Blk::new(&dma, regs, options).or_fail(format_args!(
            "blk: disk {i} at {:#x}: initialising",
            slot.base
        ));
        println!(
            "blk: disk {i} at {:#x} irq {}: {} sectors, features {:#x}, modern {}, {} queue(s), depth {}, {} bytes per request, mode {}",
            slot.base,
            slot.irq,
            blk.capacity(),
            blk.features(),
            blk.transport().is_modern(),
            blk.num_queues(),
            blk.depth(),
            blk.max_request_bytes(),
            o.mode
        );
        let seed = o.seed.wrapping_add(i as u64);
        run(&mut blk, &o, seed, &mut scratch[..], &mut stats, i);
        // Dropping the driver resets the device and frees its memory.
        drop(blk);
    }
    println!(
        "blk: {}: {} bytes, {} requests, {} interrupts",
        o.test.name(),
        stats.bytes,
        stats.requests,
        virtio::interrupts()
    );
}
