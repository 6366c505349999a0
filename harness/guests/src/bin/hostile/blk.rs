//! The virtio-blk cases (§5.2, queue 0): one malformed request each, then
//! (posted by the runner) a well-formed READ of sector 0 in the last three
//! descriptors, the follow-up; the status bytes of both are read back.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_driver::blk::{req, status as blk_status};
use guest_rt::raw::{self, RawError, RawMemory, Setup, desc};
use virtio_core::features::BlkFeatures;

use super::{INDIRECT, INDIRECT_DESC, NEXT, WRITE};

/// Config offset of `capacity` in the register block (§4.2.2, §5.2.4).
const BLK_CAPACITY: u64 = 0x100;
/// Config offset of `seg_max` in the register block (§5.2.4).
const BLK_SEG_MAX: u64 = 0x100 + 12;
const BLK_RO: u64 = BlkFeatures::RO.bits();
const BLK_SEGS: u64 = BlkFeatures::SEG_MAX.bits() | INDIRECT_DESC;

/// Guest-physical addresses of the status bytes of the case's malformed
/// request (0: it has none) and of its follow-up, set by the builders and
/// read after the case ran (the scratch memory outlives the case).
static BLK_STATUS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// A blk-specific case.
#[derive(Clone, Copy)]
pub struct BlkCase {
    /// Name (`hostile.case=`), with its `blk-` prefix.
    pub name: &'static str,
    /// The spec rule the driver breaks, and what the device should do.
    pub rule: &'static str,
    /// Features that must be offered, else the case is skipped.
    pub requires: u64,
    /// Writes and posts the malformed request.
    pub build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
}

const fn blk(
    name: &'static str,
    rule: &'static str,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> BlkCase {
    BlkCase {
        name,
        rule,
        requires,
        build,
    }
}

/// Every blk-specific case, in the order they run.
pub const BLK_CASES: &[BlkCase] = &[
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

/// Forgets the recorded status bytes (before a case).
pub fn clear_status() {
    for s in &BLK_STATUS {
        s.store(0, Ordering::Relaxed);
    }
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
fn blk_chain(s: &mut Setup<'_, '_>, first: u16, bufs: &[(u64, u32, u16)]) -> Result<(), RawError> {
    for (d, (i, &(addr, len, flags))) in (first..).zip(bufs.iter().enumerate()) {
        let last = i + 1 == bufs.len();
        let (flags, next) = if last {
            (flags, 0)
        } else {
            (flags | NEXT, d + 1)
        };
        s.queue.set_desc(d, desc(addr, len, flags, next))?;
    }
    s.queue.post(first)
}

/// A device-writable status byte; its address is recorded in
/// [`BLK_STATUS`]`[which]`.
fn blk_status(s: &mut Setup<'_, '_>, which: usize, len: u64) -> Result<u64, RawError> {
    let st = s.writable(len)?;
    BLK_STATUS[which].store(st, Ordering::Relaxed);
    Ok(st)
}

/// The follow-up: a well-formed READ of sector 0 in the last three
/// descriptors. Returns its head.
pub fn follow_up(s: &mut Setup<'_, '_>) -> Result<u16, RawError> {
    let first = s.queue.size() - 3;
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    let st = blk_status(s, 1, 1)?;
    blk_chain(s, first, &[(h, 16, 0), (data, 512, WRITE), (st, 1, WRITE)])?;
    Ok(first)
}

/// A request of `kind` at `sector` with `data` bytes (device-writable for
/// READ).
fn blk_simple(s: &mut Setup<'_, '_>, kind: u32, sector: u64, data: u32) -> Result<(), RawError> {
    let h = blk_header(s, kind, sector, 16)?;
    let dflags = if kind == req::IN { WRITE } else { 0 };
    let buf = if kind == req::IN {
        s.writable(data.into())?
    } else {
        s.readable(data.into())?
    };
    let st = blk_status(s, 0, 1)?;
    blk_chain(s, 0, &[(h, 16, 0), (buf, data, dflags), (st, 1, WRITE)])
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
    blk_chain(s, 0, &[(h, 8, 0), (data, 512, WRITE), (st, 1, WRITE)])
}

fn blk_header_device_writable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = s.writable(16)?;
    let data = s.writable(512)?;
    let st = blk_status(s, 0, 1)?;
    blk_chain(s, 0, &[(h, 16, WRITE), (data, 512, WRITE), (st, 1, WRITE)])
}

fn blk_status_too_short(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    // A zero-length "status" after the data: the device has nowhere to
    // put the status byte; a write there is caught by the canaries (the
    // buffer is registered as not device-writable).
    BLK_STATUS[0].store(0, Ordering::Relaxed);
    let st = s.readable(16)?;
    blk_chain(s, 0, &[(h, 16, 0), (data, 512, WRITE), (st, 0, WRITE)])
}

fn blk_status_device_readable(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let h = blk_header(s, req::IN, 0, 16)?;
    let data = s.writable(512)?;
    let st = s.readable(1)?;
    BLK_STATUS[0].store(0, Ordering::Relaxed);
    blk_chain(s, 0, &[(h, 16, 0), (data, 512, WRITE), (st, 1, 0)])
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
    s.queue.post(0)
}

/// Reads a recorded status byte: 0 the malformed request's, 1 the
/// follow-up's (`None` when the case has none).
pub fn status_byte(mem: &RawMemory, which: usize) -> Option<u8> {
    let addr = BLK_STATUS[which].load(Ordering::Relaxed);
    if addr == 0 {
        return None;
    }
    mem.scratch
        .read_u8(addr.wrapping_sub(mem.scratch.addr()))
        .ok()
}

/// The name of a status byte (§5.2.6).
pub fn status_name(b: u8) -> &'static str {
    match b {
        blk_status::OK => "OK",
        blk_status::IOERR => "IOERR",
        blk_status::UNSUPP => "UNSUPP",
        raw::CANARY => "not written",
        _ => "invalid",
    }
}

/// Whether `b` is an error status a device gives a malformed request
/// (§5.2.6: IOERR or UNSUPP).
pub fn is_error(b: Option<u8>) -> bool {
    matches!(b, Some(blk_status::IOERR | blk_status::UNSUPP))
}

/// Whether `b` is OK.
pub fn is_ok(b: Option<u8>) -> bool {
    b == Some(blk_status::OK)
}
