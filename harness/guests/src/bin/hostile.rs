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
//! Block cases (§5.2, the first virtio-blk slot, queue 0) post one
//! malformed request and then a well-formed READ of sector 0 on the same
//! queue, and print the malformed request's status byte and the follow-up's
//! fate; a device that did not set DEVICE_NEEDS_RESET must have completed
//! the follow-up with OK (§5.2.6: it keeps serving the queue), else the run
//! fails:
//!
//! ```text
//! hostile: <case>: request status <hex|not written> (want IOERR or UNSUPP, or the chain returned), follow-up <ok | status <hex> | not used>
//! ```
//!
//! `hostile.case=<name>` runs one case (several may be given); the default
//! is every case; console and blk cases are skipped without such a device. Adding a case is adding an entry to [`CASES`].
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest_driver::blk::{Blk, BlkOptions, req, status as blk_status};
use guest_driver::{Console, ConsoleOptions, Polls, Rng, RngOptions};
use guest_rt::raw::{
    self, Case, CaseResult, RawDevice, RawError, RawMemory, Setup, UsedSeen, desc,
};
use guest_rt::{BootInfo, MemoryKind, exit, println};
use virtio_core::features::{BlkFeatures, DeviceType, TransportFeatures};
use virtio_core::status::DeviceStatus;

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

/// `VIRTQ_DESC_F_WRITE` (§2.7.5).
const WRITE: u16 = 2;
/// Config offset of `capacity` in the register block (§4.2.2, §5.2.4).
const BLK_CAPACITY: u64 = 0x100;
/// Config offset of `seg_max` in the register block (§5.2.4).
const BLK_SEG_MAX: u64 = 0x100 + 12;
const BLK_RO: u64 = BlkFeatures::RO.bits();
const BLK_SEGS: u64 = BlkFeatures::SEG_MAX.bits() | INDIRECT_DESC;

/// Guest-physical addresses of the status bytes of the case's malformed
/// request (0: it has none) and of its follow-up, set by the blk builders
/// and read after the case ran (the scratch memory outlives the case).
static BLK_STATUS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

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

/// A blk case on queue 0 (§5.2.2): a malformed request, then a
/// well-formed READ of sector 0 (the follow-up).
const fn blk(
    name: &'static str,
    rule: &'static str,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> Case {
    Case {
        name,
        rule,
        device: DeviceType::Blk,
        queue: 0,
        size: SIZE,
        device_writes: false,
        wanted: 0,
        requires,
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
    blk(
        "blk-beyond-capacity",
        "§5.2.6.1: no request beyond the capacity; here a READ at sector = capacity (want IOERR)",
        0,
        blk_beyond_capacity,
    ),
    blk(
        "blk-write-read-only",
        "§5.2.6.1: no WRITE to a VIRTIO_BLK_F_RO disk; here a WRITE of sector 0 (want IOERR)",
        BLK_RO,
        blk_write_read_only,
    ),
    blk(
        "blk-header-too-short",
        "§5.2.6: the header is 16 device-readable bytes; here 8 (want IOERR/UNSUPP or the chain returned)",
        0,
        blk_header_too_short,
    ),
    blk(
        "blk-header-device-writable",
        "§5.2.6: the header is device-readable; here it is device-writable (want IOERR/UNSUPP or the chain returned)",
        0,
        blk_header_device_writable,
    ),
    blk(
        "blk-status-too-short",
        "§5.2.6: the status is one device-writable byte; here the status buffer has 0 bytes (want the chain returned)",
        0,
        blk_status_too_short,
    ),
    blk(
        "blk-status-device-readable",
        "§5.2.6: the status byte is device-writable; here it is device-readable (want the chain returned)",
        0,
        blk_status_device_readable,
    ),
    blk(
        "blk-data-not-sector-multiple",
        "§5.2.6: data is a multiple of 512 bytes; here a WRITE of 100 bytes (want IOERR)",
        0,
        blk_data_not_sector_multiple,
    ),
    blk(
        "blk-more-segments-than-seg-max",
        "§5.2.4, §5.2.6.1: at most seg_max data segments; here seg_max + 1 in an indirect table (want IOERR or OK)",
        BLK_SEGS,
        blk_more_segments_than_seg_max,
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

/// A blk request header (§5.2.6: `le32 type, le32 reserved, le64
/// sector`) in a new device-readable scratch buffer of `len` bytes.
fn blk_header(s: &mut Setup<'_, '_>, kind: u32, sector: u64, len: u64) -> Result<u64, RawError> {
    let h = s.readable(len.max(16))?;
    s.scratch.write_u32(h, kind)?;
    s.scratch.write_u32(h + 4, 0)?;
    s.scratch.write_u64(h + 8, sector)?;
    Ok(h)
}

/// Writes the chain `bufs` (address, length, flags) from descriptor
/// `first` on and posts it.
fn blk_chain(s: &mut Setup<'_, '_>, first: u16, bufs: &[(u64, u32, u16)]) -> Result<u16, RawError> {
    let mut d = first;
    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
        let last = i + 1 == bufs.len();
        let (flags, next) = if last {
            (flags, 0)
        } else {
            (flags | NEXT, d + 1)
        };
        s.queue.set_desc(d, desc(addr, len, flags, next))?;
        d += 1;
    }
    s.queue.post(first)?;
    Ok(d)
}

/// A device-writable status byte; its address is recorded in
/// [`BLK_STATUS`]`[which]`.
fn blk_status(s: &mut Setup<'_, '_>, which: usize, len: u64) -> Result<u64, RawError> {
    let st = s.writable(len)?;
    BLK_STATUS[which].store(st, Ordering::Relaxed);
    Ok(st)
}

/// The follow-up: a well-formed READ of sector 0 from descriptor `first`.
fn blk_followup(s: &mut Setup<'_, '_>, first: u16) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    let st = blk_status(s, 1, 1)?;
    blk_chain(s, first, &[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)]).map(|_| ())
}

/// A request of `kind` at `sector` with `data` bytes (device-writable for
/// READ), then the follow-up.
fn blk_simple(s: &mut Setup<'_, '_>, kind: u32, sector: u64, data: u32) -> Result<(), RawError> {
    let h = blk_header(s, kind, sector, 16)?;
    let dflags = if kind == req::IN { WRITE } else { 0 };
    let buf = if kind == req::IN {
        s.writable(data.into())?
    } else {
        s.readable(data.into())?
    };
    let st = blk_status(s, 0, 1)?;
    let next = blk_chain(s, 0, &[(h, 16, 0), (buf, data, dflags), (st, 1, WRITE)])?;
    blk_followup(s, next)
}

fn blk_beyond_capacity(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let cap = u64::from(s.dev.read(BLK_CAPACITY)) | (u64::from(s.dev.read(BLK_CAPACITY + 4)) << 32);
    blk_simple(s, req::IN, cap, 512)
}

fn blk_write_read_only(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    blk_simple(s, req::OUT, 0, 512)
}

fn blk_data_not_sector_multiple(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    blk_simple(s, req::OUT, 0, 100)
}

fn blk_header_too_short(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    let st = blk_status(s, 0, 1)?;
    let next = blk_chain(s, 0, &[(h, 8, 0), (data, 512, WRITE), (st, 1, WRITE)])?;
    blk_followup(s, next)
}

fn blk_header_device_writable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = s.writable(16)?;
    let data = s.writable(512)?;
    let st = blk_status(s, 0, 1)?;
    let next = blk_chain(s, 0, &[(h, 16, WRITE), (data, 512, WRITE), (st, 1, WRITE)])?;
    blk_followup(s, next)
}

fn blk_status_too_short(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    // A zero-length "status" after the data: the device has nowhere to
    // put the status byte; a write there is caught by the canaries (the
    // buffer is registered as not device-writable).
    BLK_STATUS[0].store(0, Ordering::Relaxed);
    let st = s.readable(16)?;
    let next = blk_chain(s, 0, &[(h, 16, 0), (data, 512, WRITE), (st, 0, WRITE)])?;
    blk_followup(s, next)
}

fn blk_status_device_readable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    let st = s.readable(1)?;
    BLK_STATUS[0].store(0, Ordering::Relaxed);
    let next = blk_chain(s, 0, &[(h, 16, 0), (data, 512, WRITE), (st, 1, 0)])?;
    blk_followup(s, next)
}

fn blk_more_segments_than_seg_max(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let seg_max = s.dev.read(BLK_SEG_MAX);
    let segs = seg_max.saturating_add(1);
    // Header, the segments, status: one indirect table page at most.
    let count = u32::from(s.table.capacity());
    if segs.saturating_add(2) > count {
        return Err(RawError::OutOfRegion {
            offset: u64::from(segs.saturating_add(2)) * 16,
            len: 16,
        });
    }
    let h = blk_header(s, req::OUT, 0, 16)?;
    // Every segment is the same 512 device-readable bytes.
    let data = s.readable(512)?;
    let st = blk_status(s, 0, 1)?;
    let n = segs as u16 + 2;
    for i in 0..n {
        let (addr, len, flags) = if i == 0 {
            (h, 16, NEXT)
        } else if i + 1 == n {
            (st, 1, WRITE)
        } else {
            (data, 512, NEXT)
        };
        let next = if i + 1 == n { 0 } else { i + 1 };
        s.table.set(i, desc(addr, len, flags, next))?;
    }
    let table = s.table.addr();
    s.queue
        .set_desc(0, desc(table, 16 * u32::from(n), INDIRECT, 0))?;
    s.queue.post(0)?;
    blk_followup(s, 1)
}

/// Reads a recorded status byte (`None` when the case has none).
fn blk_status_byte(mem: &RawMemory, which: usize) -> Option<u8> {
    let addr = BLK_STATUS[which].load(Ordering::Relaxed);
    if addr == 0 {
        return None;
    }
    mem.scratch
        .read_u8(addr.wrapping_sub(mem.scratch.addr()))
        .ok()
}

fn status_name(b: u8) -> &'static str {
    match b {
        blk_status::OK => "OK",
        blk_status::IOERR => "IOERR",
        blk_status::UNSUPP => "UNSUPP",
        raw::CANARY => "not written",
        _ => "invalid",
    }
}

/// Reports a blk case: the malformed request's status byte and the
/// follow-up's fate. A device that kept going (no DEVICE_NEEDS_RESET) must
/// have completed the follow-up with OK.
///
/// A legacy (version 1) device has no DEVICE_NEEDS_RESET (§4.2.4 uses the
/// version 1 status, which QEMU does not set there): one that stops
/// serving the queue is reported, not failed.
fn blk_report(name: &str, mem: &RawMemory, used: &UsedSeen, needs_reset: bool, legacy: bool) {
    let first = blk_status_byte(mem, 0);
    let follow = blk_status_byte(mem, 1);
    let followed = used.count >= 2;
    match first {
        Some(b) => println!(
            "hostile: {name}: request status {b:#04x} ({}), {} used element(s)",
            status_name(b),
            used.count
        ),
        None => println!(
            "hostile: {name}: request has no status byte, {} used element(s)",
            used.count
        ),
    }
    match (followed, follow) {
        (true, Some(blk_status::OK)) => println!("hostile: {name}: follow-up READ ok"),
        (_, b) if needs_reset => println!(
            "hostile: {name}: device set DEVICE_NEEDS_RESET; follow-up not served (status {})",
            b.map_or("-", status_name)
        ),
        (true, b) => exit::fail(format_args!(
            "hostile: {name}: the follow-up READ completed with status {} (§5.2.6)",
            b.map_or("-", status_name)
        )),
        (false, b) if legacy => println!(
            "hostile: {name}: legacy device stopped serving the queue (no DEVICE_NEEDS_RESET on version 1); follow-up not served (status {})",
            b.map_or("-", status_name)
        ),
        (false, _) => exit::fail(format_args!(
            "hostile: {name}: the follow-up READ was not used and the device did not set DEVICE_NEEDS_RESET"
        )),
    }
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
fn survive(dev: &RawDevice, mem: &RawMemory) -> Result<&'static str, guest_driver::BlkError> {
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
    if dev.device_id() == DeviceType::Blk.id() {
        let options = BlkOptions {
            depth: 1,
            slot_size: 512,
            ..BlkOptions::default()
        };
        let mut blk = Blk::new(&mem.pool, regs, options)?;
        let mut buf = [0u8; 512];
        blk.read(0, &mut buf, &mut Polls::new(SURVIVAL_POLLS))?;
        return Ok("read sector 0 after re-initialisation");
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
    // So is the block device.
    let blk = RawDevice::find(boot.cmdline(), DeviceType::Blk).ok();
    for dev in core::iter::once(&rng)
        .chain(console.as_ref())
        .chain(blk.as_ref())
    {
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
            DeviceType::Blk => blk.as_ref(),
            _ => None,
        };
        let Some(dev) = dev else {
            println!("hostile: {name}: skipped (no {:?} device)", case.device);
            skipped += 1;
            continue;
        };
        println!("hostile: {name}: rule {}", case.rule);
        let is_blk = case.device == DeviceType::Blk;
        if is_blk {
            for s in &BLK_STATUS {
                s.store(0, Ordering::Relaxed);
            }
        }
        match raw::run_case_followed(dev, &mem, case, ram_end, u16::from(is_blk)) {
            Ok((CaseResult::Skipped { missing }, _)) => {
                println!("hostile: {name}: skipped (features {missing:#x} not offered)");
                skipped += 1;
                continue;
            }
            Ok((CaseResult::Ran { outcome, status }, used)) => {
                println!("hostile: {name}: {outcome} (status {:#04x})", status.bits());
                if is_blk {
                    let needs_reset = status.contains(DeviceStatus::DEVICE_NEEDS_RESET);
                    blk_report(name, &mem, &used, needs_reset, !dev.is_modern());
                }
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
