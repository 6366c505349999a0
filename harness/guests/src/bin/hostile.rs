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
//! Net cases (§5.1, the first virtio-net slot, set up by hand with
//! `guest_rt::raw::NetRig`) post one malformed transmit, receive or
//! control chain and then send a well-formed frame to the device's own MAC
//! that must come back (loopback netdev or an echoing peer); a version 2
//! device that neither set DEVICE_NEEDS_RESET nor brought it back fails
//! the run unless `hostile.strict=0`:
//!
//! ```text
//! hostile: <case>: <follow-up frame came back (traffic continues) | device set DEVICE_NEEDS_RESET; follow-up not sent | …>
//! ```
//!
//! `hostile.case=<name>` runs one case (several may be given); the default
//! is every case; rng, console, blk and net cases are skipped without such
//! a device (at least an rng or a net device must be there). Adding a case
//! is adding an entry to [`CASES`] (or `NET_CASES`).
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};

use guest_driver::blk::{Blk, BlkOptions, req, status as blk_status};
use guest_driver::{Console, ConsoleOptions, Polls, Rng, RngOptions};
use guest_rt::raw::{
    self, Case, CaseResult, DescTable, NetMemory, NetRig, RawDevice, RawError, RawMemory, Scratch,
    Setup, UsedSeen, desc,
};
use guest_rt::{BootInfo, MemoryKind, exit, println};
use virtio_core::features::{BlkFeatures, DeviceType, NetFeatures, TransportFeatures};
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
        if !CASES.iter().any(|c| c.name == name) && !NET_CASES.iter().any(|c| c.name == name) {
            println!("hostile: known cases:");
            for c in CASES {
                println!("  {}", c.name);
            }
            for c in NET_CASES {
                println!("  {}", c.name);
            }
            exit::fail(format_args!("hostile: unknown case {name:?}"));
        }
    }
    // The rng is optional when there is a net device (its cases are then
    // skipped); one of the two must be there.
    let rng = RawDevice::find(boot.cmdline(), DeviceType::Rng).ok();
    let net = RawDevice::find(boot.cmdline(), DeviceType::Net).ok();
    if rng.is_none() && net.is_none() {
        exit::fail(format_args!(
            "hostile: {}",
            RawError::NoDevice(DeviceType::Rng)
        ));
    }
    // The console is optional: its cases are skipped without one.
    let console = RawDevice::find(boot.cmdline(), DeviceType::Console).ok();
    // So is the block device.
    let blk = RawDevice::find(boot.cmdline(), DeviceType::Blk).ok();
    for dev in rng.iter().chain(console.as_ref()).chain(blk.as_ref()) {
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
            DeviceType::Rng => rng.as_ref(),
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
    if let Some(dev) = net.as_ref() {
        let Some(nmem) = NetMemory::take() else {
            exit::fail(format_args!("hostile: net memory already taken"));
        };
        println!(
            "hostile: device id {} at {:#x} (virtio-mmio version {}), features offered {:#x}",
            dev.device_id(),
            dev.slot().base,
            dev.version() as u32,
            dev.device_features()
        );
        match net_run(dev, &nmem, None, 0, ram_end) {
            Ok(NetRun {
                follow_up: Some(true),
                ..
            }) => {}
            Ok(_) => exit::fail(format_args!(
                "hostile: the net device does not loop a frame back to begin with"
            )),
            Err(e) => exit::fail(format_args!(
                "hostile: the net device does not work to begin with: {e}"
            )),
        }
        let strict = !boot.cmdline_values("hostile.strict").any(|v| v == "0");
        let selected = |name: &str| !only || boot.cmdline_values("hostile.case").any(|n| n == name);
        let (r, s) = net_cases(dev, &nmem, ram_end, &selected, strict);
        ran += r;
        skipped += s;
    } else {
        for case in NET_CASES {
            if !only || boot.cmdline_values("hostile.case").any(|n| n == case.name) {
                println!("hostile: {}: skipped (no Net device)", case.name);
                skipped += 1;
            }
        }
    }
    println!("hostile: {ran} case(s) run, {skipped} skipped");
}

// ---- virtio-net (§5.1) ----

/// Features the net cases accept when offered: MAC (to address the
/// follow-up), MTU, checksum offload (so a NEEDS_CSUM header is allowed
/// and only its positions are wrong) and the control queue.
const NET_WANTED: u64 = NetFeatures::MAC.bits()
    | NetFeatures::MTU.bits()
    | NetFeatures::CSUM.bits()
    | NetFeatures::CTRL_VQ.bits()
    | NetFeatures::CTRL_RX.bits();
const NET_CTRL_RX: u64 = NetFeatures::CTRL_VQ.bits() | NetFeatures::CTRL_RX.bits();
/// Entries of each net queue in the cases.
const NET_SIZE: u16 = 16;
/// Bytes of a well-formed receive buffer slot (header + 1514 fits).
const NET_SLOT: u64 = 2048;
/// The first receiveq1 descriptor of the well-formed buffers (cases use
/// the ones below).
const NET_GOOD_RX: u16 = 8;
/// The transmitq1 descriptor of the follow-up frame.
const NET_FOLLOW_DESC: u16 = 15;
/// Buffer offset of the follow-up frame.
const NET_FOLLOW_AT: u64 = 16 * NET_SLOT;
/// Bytes of the follow-up frame.
const NET_FRAME: usize = 60;
/// Ethertype of the follow-up frame (IEEE local experimental).
const NET_ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// How many observation windows the follow-up may take to come back.
const NET_FOLLOW_WINDOWS: u64 = 10;

/// A net case: the malformed chain goes on `queue` (receiveq1, transmitq1
/// or the control queue) of the first virtio-net device; then a
/// well-formed frame is sent and must come back (loopback or an echoing
/// peer) unless the device asked for a reset.
#[derive(Clone, Copy)]
struct NetCase {
    name: &'static str,
    rule: &'static str,
    queue: u16,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
}

const fn net(
    name: &'static str,
    rule: &'static str,
    queue: u16,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> NetCase {
    NetCase {
        name,
        rule,
        queue,
        requires,
        build,
    }
}

/// Every net case, in the order they run.
const NET_CASES: &[NetCase] = &[
    net(
        "net-tx-short-header",
        "§5.1.6.2: a transmit chain starts with the whole virtio_net_hdr; here 8 bytes in all",
        raw::NET_TX,
        0,
        net_tx_short_header,
    ),
    net(
        "net-tx-csum-beyond-frame",
        "§5.1.6.2.1: csum_start + csum_offset + 2 lie within the frame; here csum_start 100 in a 60-byte frame",
        raw::NET_TX,
        0,
        net_tx_csum_beyond_frame,
    ),
    net(
        "net-tx-gso-not-negotiated",
        "§5.1.6.2.1: no gso_type but NONE unless a HOST_TSO/UFO feature was negotiated; here TCPV4",
        raw::NET_TX,
        0,
        net_tx_gso_not_negotiated,
    ),
    net(
        "net-tx-longer-than-mtu",
        "§5.1.6.2.1, §5.1.4.1: no frame longer than the MTU plus the Ethernet header; here 1600 bytes",
        raw::NET_TX,
        0,
        net_tx_longer_than_mtu,
    ),
    net(
        "net-tx-device-writable",
        "§5.1.6.2: transmit buffers are device-readable; here header and frame are device-writable",
        raw::NET_TX,
        0,
        net_tx_device_writable,
    ),
    net(
        "net-tx-desc-loop",
        "§2.7.5.3.1: a chain is at most the queue size long; here `next` points back (a loop)",
        raw::NET_TX,
        0,
        desc_loop,
    ),
    net(
        "net-tx-next-out-of-range",
        "§2.7.5: `next` must index the descriptor table; here it is the queue size",
        raw::NET_TX,
        0,
        next_out_of_range,
    ),
    net(
        "net-tx-buffer-outside-ram",
        "§2.7.5: `addr` is a guest-physical buffer; here no RAM backs it",
        raw::NET_TX,
        0,
        buffer_outside_ram,
    ),
    net(
        "net-rx-device-readable",
        "§5.1.6.3.1: receive buffers are device-writable; here a device-readable one",
        raw::NET_RX,
        0,
        net_rx_device_readable,
    ),
    net(
        "net-rx-smaller-than-header",
        "§5.1.6.3.1: a receive buffer holds at least the virtio_net_hdr; here 4 bytes",
        raw::NET_RX,
        0,
        net_rx_smaller_than_header,
    ),
    net(
        "net-rx-buffer-outside-ram",
        "§2.7.5: `addr` is a guest-physical buffer; here no RAM backs it",
        raw::NET_RX,
        0,
        buffer_outside_ram,
    ),
    net(
        "net-ctrl-short-ack",
        "§5.1.6.5: a command ends with a one-byte device-writable ack; here the ack buffer has 0 bytes",
        raw::NET_CTRL,
        NET_CTRL_RX,
        net_ctrl_short_ack,
    ),
    net(
        "net-ctrl-ack-readable",
        "§5.1.6.5: the ack is device-writable; here it is device-readable",
        raw::NET_CTRL,
        NET_CTRL_RX,
        net_ctrl_ack_readable,
    ),
    net(
        "net-tx-head-out-of-range",
        "§2.7.6: an available entry is a descriptor index; here it is the queue size",
        raw::NET_TX,
        0,
        head_out_of_range,
    ),
];

/// Bytes of the virtio-net header on `dev` (§5.1.6: 12 on version 1, the
/// legacy 10 otherwise; MRG_RXBUF is never negotiated here).
fn net_hdr_len(dev: &RawDevice) -> u64 {
    if dev.is_modern() { 12 } else { 10 }
}

/// A device-readable transmit buffer: header words `w0` (bytes 0..8) and
/// `w1` (bytes 8..12 of a version 1 header, 8..10 of a legacy one plus two
/// frame bytes) then `frame` canary bytes; posted as descriptor 0 with
/// `flags`. Returns its address.
fn net_tx_chain(
    s: &mut Setup<'_, '_>,
    w0: u64,
    w1: u32,
    frame: u64,
    flags: u16,
) -> Result<(), RawError> {
    let h = net_hdr_len(s.dev);
    let writable = flags & WRITE != 0;
    let buf = if writable {
        s.writable(h + frame)?
    } else {
        let b = s.readable(h + frame)?;
        s.scratch.write_u64(b, w0)?;
        s.scratch.write_u32(b + 8, w1)?;
        b
    };
    let len = u32::try_from(h + frame).unwrap_or(u32::MAX);
    plain(s, buf, len, flags)
}

fn net_tx_short_header(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let b = s.readable(8)?;
    s.scratch.write_u64(b, 0)?;
    plain(s, b, 8, 0)
}

fn net_tx_csum_beyond_frame(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    // flags NEEDS_CSUM, gso NONE, csum_start 100 (bytes 6..8), csum_offset 6.
    let w0 = u64::from(virtio_core::net::flags::NEEDS_CSUM) | (100u64 << 48);
    net_tx_chain(s, w0, 6, NET_FRAME as u64, 0)
}

fn net_tx_gso_not_negotiated(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    // gso_type TCPV4, hdr_len 54, gso_size 1400.
    let w0 = (u64::from(virtio_core::net::gso::TCPV4) << 8) | (54u64 << 16) | (1400u64 << 32);
    net_tx_chain(s, w0, 0, NET_FRAME as u64, 0)
}

fn net_tx_longer_than_mtu(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    net_tx_chain(s, 0, 0, 1600, 0)
}

fn net_tx_device_writable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    net_tx_chain(s, 0, 0, NET_FRAME as u64, WRITE)
}

fn net_rx_device_readable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let b = s.readable(NET_SLOT)?;
    plain(s, b, NET_SLOT as u32, 0)
}

fn net_rx_smaller_than_header(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let b = s.writable(4)?;
    plain(s, b, 4, WRITE)
}

/// `VIRTIO_NET_CTRL_RX_PROMISC` on (§5.1.6.5.1) with the ack descriptor
/// `(len, flags)` on a buffer that is device-writable iff `flags` says so.
fn net_ctrl(s: &mut Setup<'_, '_>, ack_len: u32, ack_flags: u16) -> Result<(), RawError> {
    let cmd = s.readable(4)?;
    // class RX (0), command PROMISC (0), data 1.
    s.scratch.write_u32(cmd, 0x0001_0000)?;
    let ack = if ack_flags & WRITE != 0 {
        s.writable(1)?
    } else {
        s.readable(1)?
    };
    s.queue.set_desc(0, desc(cmd, 3, NEXT, 1))?;
    s.queue.set_desc(1, desc(ack, ack_len, ack_flags, 0))?;
    s.queue.post(0)
}

fn net_ctrl_short_ack(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    net_ctrl(s, 0, WRITE)
}

fn net_ctrl_ack_readable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    net_ctrl(s, 1, 0)
}

/// The follow-up frame of case number `tag`: to the device's MAC, from a
/// local address, ethertype 0x88b5, payload `hostile <tag>` (zero padded).
fn net_frame(mac: &[u8; 6], tag: u8) -> [u8; NET_FRAME] {
    let mut f = [0u8; NET_FRAME];
    f[..6].copy_from_slice(mac);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&NET_ETHERTYPE);
    f[14..22].copy_from_slice(b"hostile ");
    f[22] = tag;
    f
}

/// Sends the follow-up frame `tag` and waits (bounded) for it to come
/// back on receiveq1. Returns whether it did.
fn net_follow_up(
    rig: &mut NetRig<'_>,
    tag: u8,
    late: &mut Option<virtio_core::split::layout::UsedElem>,
) -> Result<bool, RawError> {
    let want = net_frame(&rig.mac, tag);
    rig.send(NET_FOLLOW_DESC, NET_FOLLOW_AT, &want)?;
    let start = guest_rt::cpu::rdtsc();
    let mut got = [0u8; NET_FRAME];
    while guest_rt::cpu::rdtsc().wrapping_sub(start) <= NET_FOLLOW_WINDOWS * raw::OBSERVE_CYCLES {
        let Some(e) = rig.rx_used() else {
            core::hint::spin_loop();
            continue;
        };
        let d = e.id() as u16;
        if e.id() >= u32::from(NET_SIZE) || d < NET_GOOD_RX {
            // The malformed receive chain, returned once a frame came.
            late.get_or_insert(e);
            continue;
        }
        let n = rig.read_frame(u64::from(d) * NET_SLOT, e.len(), &mut got);
        // Shorter frames may come back padded; compare what was sent.
        if n >= 23 && got[12..23] == want[12..23] {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a net case did.
struct NetRun {
    outcome: raw::Outcome,
    status: DeviceStatus,
    /// `None`: not sent (the device asked for a reset).
    follow_up: Option<bool>,
    /// A malformed receive chain the device returned only while the
    /// follow-up frame was delivered.
    late: Option<virtio_core::split::layout::UsedElem>,
}

/// Sets the device up, runs `case` (or nothing: a clean run) and the
/// follow-up, checks the canaries and resets.
fn net_run(
    dev: &RawDevice,
    mem: &NetMemory,
    case: Option<&NetCase>,
    tag: u8,
    ram_end: u64,
) -> Result<NetRun, RawError> {
    let requires = case.map_or(0, |c| c.requires);
    let mut rig = NetRig::new(dev, mem, NET_WANTED | requires, NET_SIZE, NET_SIZE)?;
    let table = DescTable::new(&mem.table);
    let mut scratch = Scratch::new(&mem.scratch);
    let post_good = |rig: &mut NetRig<'_>| -> Result<(), RawError> {
        for d in NET_GOOD_RX..NET_SIZE {
            rig.post_rx(d, u64::from(d) * NET_SLOT, NET_SLOT as u32)?;
        }
        Ok(())
    };
    let mut outcome = raw::Outcome::Ignored;
    if let Some(case) = case {
        if case.queue != raw::NET_RX {
            post_good(&mut rig)?;
            dev.notify(u32::from(raw::NET_RX));
        }
        let features = rig.features;
        let queue = match case.queue {
            raw::NET_RX => &mut rig.rx,
            raw::NET_TX => &mut rig.tx,
            _ => match rig.ctrl.as_mut() {
                Some(q) => q,
                None => return Err(RawError::NoQueue { queue: case.queue }),
            },
        };
        let seen = queue.used_idx();
        let mut setup = Setup {
            dev,
            queue,
            table: &table,
            scratch: &mut scratch,
            features,
            device_writes: case.queue == raw::NET_RX,
            ram_end,
        };
        (case.build)(&mut setup)?;
        if case.queue == raw::NET_RX {
            post_good(&mut rig)?;
        }
        dev.notify(u32::from(case.queue));
        let queue = match case.queue {
            raw::NET_RX => &rig.rx,
            raw::NET_TX => &rig.tx,
            _ => rig.ctrl.as_ref().unwrap_or(&rig.tx),
        };
        outcome = raw::observe(dev, queue, seen);
        if case.queue == raw::NET_RX && matches!(outcome, raw::Outcome::Used(_)) {
            // The malformed chain came back: skip it.
            let _ = rig.rx_used();
        }
    } else {
        post_good(&mut rig)?;
        dev.notify(u32::from(raw::NET_RX));
    }
    let needs_reset = dev.status().contains(DeviceStatus::DEVICE_NEEDS_RESET);
    let mut late = None;
    let follow_up = if needs_reset {
        None
    } else {
        Some(net_follow_up(&mut rig, tag, &mut late)?)
    };
    let status = dev.status();
    dev.ack_interrupt(dev.interrupt_status());
    dev.reset()?;
    scratch.check()?;
    Ok(NetRun {
        outcome,
        status,
        follow_up,
        late,
    })
}

/// Runs the net cases on `dev`; `strict` fails a device that neither asked
/// for a reset nor kept the traffic going, else that is reported.
fn net_cases(
    dev: &RawDevice,
    mem: &NetMemory,
    ram_end: u64,
    selected: &dyn Fn(&str) -> bool,
    strict: bool,
) -> (u32, u32) {
    let (mut ran, mut skipped) = (0, 0);
    for (i, case) in NET_CASES.iter().enumerate() {
        let name = case.name;
        if !selected(name) {
            continue;
        }
        let missing = case.requires & !dev.device_features();
        if missing != 0 {
            println!("hostile: {name}: skipped (features {missing:#x} not offered)");
            skipped += 1;
            continue;
        }
        println!("hostile: {name}: rule {}", case.rule);
        let tag = (i + 1) as u8;
        let r = match net_run(dev, mem, Some(case), tag, ram_end) {
            Ok(r) => r,
            Err(e) => exit::fail(format_args!("hostile: {name}: {e}")),
        };
        println!(
            "hostile: {name}: {} (status {:#04x})",
            r.outcome,
            r.status.bits()
        );
        if let Some(e) = r.late {
            println!(
                "hostile: {name}: malformed chain returned when a frame came: used len={} id={}",
                e.len(),
                e.id()
            );
        }
        match r.follow_up {
            Some(true) => {
                println!("hostile: {name}: follow-up frame came back (traffic continues)")
            }
            None => println!("hostile: {name}: device set DEVICE_NEEDS_RESET; follow-up not sent"),
            Some(false) if r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET) => println!(
                "hostile: {name}: follow-up frame not delivered; device set DEVICE_NEEDS_RESET meanwhile"
            ),
            Some(false) if !strict || !dev.is_modern() => println!(
                "hostile: {name}: follow-up frame did not come back and no DEVICE_NEEDS_RESET (reported, not failed)"
            ),
            Some(false) => exit::fail(format_args!(
                "hostile: {name}: the follow-up frame did not come back and the device did not set DEVICE_NEEDS_RESET"
            )),
        }
        match net_run(dev, mem, None, 0xff, ram_end) {
            Ok(NetRun {
                follow_up: Some(true),
                ..
            }) => {
                println!("hostile: {name}: survived (a frame looped back after re-initialisation)")
            }
            Ok(_) => exit::fail(format_args!(
                "hostile: {name}: the device stopped working: no frame came back after re-initialisation"
            )),
            Err(e) => exit::fail(format_args!(
                "hostile: {name}: the device stopped working: {e}"
            )),
        }
        ran += 1;
    }
    (ran, skipped)
}
