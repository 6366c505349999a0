//! Scenario `hostile`: feeds malformed split rings (spec §2.7) to the first
//! entropy device (§5.4) and, when there is one, the first console (§5.3,
//! port 0's transmitq), one case at a time, through `guest_rt::raw`. Each
//! case is followed by a reset and a clean initialisation with
//! `guest-driver` that must work again (the rng reads 64 bytes, the console
//! writes a line): the device survived.
//!
//! The guest fails only when the device stops working or writes outside
//! the device-writable buffers it was given (canaries around every
//! buffer); what the device does with the malformed input is reported,
//! not judged, since the spec leaves it to the device. Output per case:
//!
//! ```text
//! hostile: <case>: rule §… <what the driver breaks>
//! hostile: <case>: <needs_reset | used len=<n> id=<id> | ignored> (status <hex>)
//! hostile: <case>: survived (<what the clean driver did>)
//! ```
//!
//! `hostile.case=<name>` runs one case (several may be given); the default
//! is every case; console cases are skipped without a console. Adding a case is adding an entry to [`CASES`].
#![no_std]
#![no_main]

use guest_driver::{Console, ConsoleOptions, Polls, Rng, RngOptions};
use guest_rt::raw::{self, Case, CaseResult, RawDevice, RawError, RawMemory, Setup, desc};
use guest_rt::{BootInfo, MemoryKind, exit, println};
use virtio_core::features::{DeviceType, TransportFeatures};

guest_rt::entry!(main);

/// `VIRTQ_DESC_F_NEXT` (§2.7.5).
const NEXT: u16 = 1;
/// `VIRTQ_DESC_F_INDIRECT` (§2.7.5.3).
const INDIRECT: u16 = 4;
/// Bytes of each case's ordinary buffer.
const LEN: u32 = 64;
/// Queue size of the cases.
const SIZE: u16 = 16;
/// Bytes the survival check reads.
const SURVIVAL_BYTES: usize = 64;
/// Poll budget of the survival read.
const SURVIVAL_POLLS: u64 = 50_000_000;

const INDIRECT_DESC: u64 = TransportFeatures::RING_INDIRECT_DESC.bits();

/// An rng case on the requestq (§5.4.2: device-writable buffers).
const fn rng(
    name: &'static str,
    rule: &'static str,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> Case {
    Case {
        name,
        rule,
        device: DeviceType::Rng,
        queue: 0,
        size: SIZE,
        device_writes: true,
        wanted: 0,
        requires,
        build,
    }
}

/// A console case on port 0's transmitq (§5.3.2: queue 1, device-readable
/// buffers), MULTIPORT not negotiated.
const fn console(
    name: &'static str,
    rule: &'static str,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> Case {
    Case {
        name,
        rule,
        device: DeviceType::Console,
        queue: 1,
        size: SIZE,
        device_writes: false,
        wanted: 0,
        requires: 0,
        build,
    }
}

/// Every case, in the order they run.
const CASES: &[Case] = &[
    rng(
        "desc-loop",
        "§2.7.5.3.1: a chain is at most the queue size long; here `next` points back (a loop)",
        0,
        desc_loop,
    ),
    rng(
        "next-out-of-range",
        "§2.7.5: `next` must index the descriptor table; here it is the queue size",
        0,
        next_out_of_range,
    ),
    rng(
        "head-out-of-range",
        "§2.7.6: an available entry is a descriptor index; here it is the queue size",
        0,
        head_out_of_range,
    ),
    rng(
        "buffer-outside-ram",
        "§2.7.5: `addr` is a guest-physical buffer; here no RAM backs it",
        0,
        buffer_outside_ram,
    ),
    rng(
        "buffer-straddles-ram-end",
        "§2.7.5: the whole buffer must be guest memory; here it runs past the end of RAM",
        0,
        buffer_straddles_ram_end,
    ),
    rng(
        "avail-index-jump",
        "§2.7.6: the available index runs at most the queue size ahead; here it jumps size+1",
        0,
        avail_index_jump,
    ),
    rng(
        "device-readable-buffer",
        "§5.4.6.1: entropy requests are device-writable; here the buffer is device-readable",
        0,
        device_readable_buffer,
    ),
    rng(
        "zero-length-buffer",
        "§2.7.5, §5.4.6: a buffer the device can fill; here `len` is 0",
        0,
        zero_length_buffer,
    ),
    rng(
        "chain-longer-than-queue",
        "§2.7.5.3.1: no chain longer than the queue size; here an indirect table of size+1",
        INDIRECT_DESC,
        chain_longer_than_queue,
    ),
    rng(
        "indirect-not-negotiated",
        "§2.7.5.3.1: no VIRTQ_DESC_F_INDIRECT unless VIRTIO_F_INDIRECT_DESC was negotiated",
        0,
        indirect_not_negotiated,
    ),
    rng(
        "indirect-bad-length",
        "§2.7.5.3: an indirect table's length is a multiple of 16; here it is 24",
        INDIRECT_DESC,
        indirect_bad_length,
    ),
    rng(
        "indirect-nested",
        "§2.7.5.3.1: no VIRTQ_DESC_F_INDIRECT inside an indirect table",
        INDIRECT_DESC,
        indirect_nested,
    ),
    console(
        "console-desc-loop",
        "§2.7.5.3.1: a chain is at most the queue size long; here `next` points back (a loop)",
        desc_loop,
    ),
    console(
        "console-next-out-of-range",
        "§2.7.5: `next` must index the descriptor table; here it is the queue size",
        next_out_of_range,
    ),
    console(
        "console-buffer-outside-ram",
        "§2.7.5: `addr` is a guest-physical buffer; here no RAM backs it",
        buffer_outside_ram,
    ),
    console(
        "console-avail-index-jump",
        "§2.7.6: the available index runs at most the queue size ahead; here it jumps size+1",
        avail_index_jump,
    ),
];

/// One buffer in descriptor 0, posted.
fn plain(s: &mut Setup<'_, '_>, addr: u64, len: u32, flags: u16) -> Result<(), RawError> {
    s.queue.set_desc(0, desc(addr, len, flags, 0))?;
    s.queue.post(0)
}

fn desc_loop(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    let (b, _) = s.normal(LEN.into())?;
    s.queue.set_desc(0, desc(a, LEN, NEXT | f, 1))?;
    s.queue.set_desc(1, desc(b, LEN, NEXT | f, 0))?;
    s.queue.post(0)
}

fn next_out_of_range(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    let next = s.queue.size();
    s.queue.set_desc(0, desc(a, LEN, NEXT | f, next))?;
    s.queue.post(0)
}

fn head_out_of_range(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    s.queue.set_desc(0, desc(a, LEN, f, 0))?;
    let head = s.queue.size();
    s.queue.post(head)
}

fn buffer_outside_ram(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let addr = s.outside_ram();
    let f = s.normal_flags();
    plain(s, addr, LEN, f)
}

fn buffer_straddles_ram_end(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let addr = s.ram_end.saturating_sub(u64::from(LEN / 2));
    let f = s.normal_flags();
    plain(s, addr, LEN, f)
}

fn avail_index_jump(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    s.queue.set_desc(0, desc(a, LEN, f, 0))?;
    s.queue.set_avail_entry(0, 0)?;
    let idx = s.queue.size() + 1;
    s.queue.set_avail_idx(idx)
}

fn device_readable_buffer(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let a = s.readable(LEN.into())?;
    plain(s, a, LEN, 0)
}

fn zero_length_buffer(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(0)?;
    plain(s, a, 0, f)
}

fn chain_longer_than_queue(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let n = s.queue.size() + 1;
    let piece = 16u32;
    let (buf, f) = s.normal(u64::from(piece) * u64::from(n))?;
    for i in 0..n {
        let flags = if i + 1 < n { NEXT | f } else { f };
        let addr = buf + u64::from(piece) * u64::from(i);
        s.table.set(i, desc(addr, piece, flags, i + 1))?;
    }
    let table = s.table.addr();
    plain(s, table, 16 * u32::from(n), INDIRECT)
}

fn indirect_not_negotiated(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    s.table.set(0, desc(a, LEN, f, 0))?;
    let table = s.table.addr();
    plain(s, table, 16, INDIRECT)
}

fn indirect_bad_length(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    s.table.set(0, desc(a, LEN, f, 0))?;
    s.table.set(1, desc(a, LEN, f, 0))?;
    let table = s.table.addr();
    plain(s, table, 24, INDIRECT)
}

fn indirect_nested(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    // Entry 32 is a second table of one buffer; entry 0 points to it with
    // INDIRECT.
    let inner = 32u16;
    s.table.set(inner, desc(a, LEN, f, 0))?;
    let table = s.table.addr();
    let inner_addr = table + 16 * u64::from(inner);
    s.table.set(0, desc(inner_addr, 16, INDIRECT, 0))?;
    plain(s, table, 16, INDIRECT)
}

/// One past the last byte of RAM, from the PVH memory map.
fn ram_end(boot: &BootInfo) -> u64 {
    boot.memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Ram)
        .map(|r| r.base.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

/// Proves the device still works: a clean initialisation by
/// `guest-driver`, then for the rng a read of [`SURVIVAL_BYTES`], for the
/// console a line written on port 0; dropping the driver resets it again.
/// Returns what was done.
fn survive(dev: &RawDevice, mem: &RawMemory) -> Result<&'static str, guest_driver::Error> {
    // SAFETY: `dev` is not used until the driver is dropped below.
    let regs = unsafe { dev.driver_regs() };
    if dev.device_id() == DeviceType::Console.id() {
        let options = ConsoleOptions {
            multiport: false,
            ..ConsoleOptions::default()
        };
        let mut console: Console<_, _, 1> = Console::new(&mem.pool, regs, options)?;
        console.write(b"hostile: console alive\n", &mut Polls::new(SURVIVAL_POLLS))?;
        return Ok("wrote a line after re-initialisation");
    }
    let mut rng = Rng::new(&mem.pool, regs, RngOptions::default())?;
    let mut buf = [0u8; SURVIVAL_BYTES];
    rng.read_exact(&mut buf, &mut Polls::new(SURVIVAL_POLLS))?;
    Ok("64 bytes after re-initialisation")
}

fn main(boot: &'static BootInfo) {
    let Some(mem) = RawMemory::take() else {
        exit::fail(format_args!("hostile: raw memory already taken"));
    };
    let ram_end = ram_end(boot);
    println!("hostile: RAM ends at {ram_end:#x}");
    let mut wanted = boot.cmdline_values("hostile.case").peekable();
    let only = wanted.peek().is_some();
    for name in wanted {
        if !CASES.iter().any(|c| c.name == name) {
            println!("hostile: known cases:");
            for c in CASES {
                println!("  {}", c.name);
            }
            exit::fail(format_args!("hostile: unknown case {name:?}"));
        }
    }
    let rng = match RawDevice::find(boot.cmdline(), DeviceType::Rng) {
        Ok(dev) => dev,
        Err(e) => exit::fail(format_args!("hostile: {e}")),
    };
    // The console is optional: its cases are skipped without one.
    let console = RawDevice::find(boot.cmdline(), DeviceType::Console).ok();
    for dev in core::iter::once(&rng).chain(console.as_ref()) {
        println!(
            "hostile: device id {} at {:#x} (virtio-mmio version {}), features offered {:#x}",
            dev.device_id(),
            dev.slot().base,
            dev.version() as u32,
            dev.device_features()
        );
        if let Err(e) = survive(dev, &mem) {
            exit::fail(format_args!(
                "hostile: device id {} does not work to begin with: {e}",
                dev.device_id()
            ));
        }
    }
    let (mut ran, mut skipped) = (0, 0);
    for case in CASES {
        if only && !boot.cmdline_values("hostile.case").any(|n| n == case.name) {
            continue;
        }
        let name = case.name;
        let dev = match case.device {
            DeviceType::Rng => Some(&rng),
            DeviceType::Console => console.as_ref(),
            _ => None,
        };
        let Some(dev) = dev else {
            println!("hostile: {name}: skipped (no {:?} device)", case.device);
            skipped += 1;
            continue;
        };
        println!("hostile: {name}: rule {}", case.rule);
        match raw::run_case(dev, &mem, case, ram_end) {
            Ok(CaseResult::Skipped { missing }) => {
                println!("hostile: {name}: skipped (features {missing:#x} not offered)");
                skipped += 1;
                continue;
            }
            Ok(CaseResult::Ran { outcome, status }) => {
                println!("hostile: {name}: {outcome} (status {:#04x})", status.bits());
            }
            Err(e) => exit::fail(format_args!("hostile: {name}: {e}")),
        }
        match survive(dev, &mem) {
            Ok(what) => println!("hostile: {name}: survived ({what})"),
            Err(e) => exit::fail(format_args!(
                "hostile: {name}: the device stopped working: {e}"
            )),
        }
        ran += 1;
    }
    println!("hostile: {ran} case(s) run, {skipped} skipped");
}
