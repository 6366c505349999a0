//! The generic ring cases (§2.7): one table, run against every device's
//! queue under test (the rng's requestq, the console's port-0 transmitq,
//! the blk's queue 0, the net's transmitq1). Each builder writes the
//! malformed chain in descriptors 0.. of the queue (or an indirect table)
//! and posts it; the runner then posts a well-formed follow-up chain in
//! the last descriptors (see [`follow_up`]) unless the case leaves the
//! available ring unusable.

use guest_rt::raw::{RawError, Setup, desc};

use super::{INDIRECT, INDIRECT_DESC, LEN, NEXT};

/// A generic ring case.
#[derive(Clone, Copy)]
pub struct Ring {
    /// Name, after the device's ring prefix (`hostile.case=`).
    pub name: &'static str,
    /// The spec rule the driver breaks.
    pub rule: &'static str,
    /// Features that must be offered, else the case is skipped.
    pub requires: u64,
    /// Whether a well-formed follow-up chain is posted after it.
    pub follow: bool,
    /// Writes and posts the malformed chain.
    pub build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
}

const fn ring(
    name: &'static str,
    rule: &'static str,
    requires: u64,
    build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
) -> Ring {
    Ring {
        name,
        rule,
        requires,
        follow: true,
        build,
    }
}

/// Every generic ring case, in the order they run.
pub const RINGS: &[Ring] = &[
    ring(
        "desc-loop",
        "§2.7.5.3.1: a chain is at most the queue size long; here `next` points back (a loop)",
        0,
        desc_loop,
    ),
    ring(
        "next-out-of-range",
        "§2.7.5: `next` must index the descriptor table; here it is the queue size",
        0,
        next_out_of_range,
    ),
    ring(
        "head-out-of-range",
        "§2.7.6: an available entry is a descriptor index; here it is the queue size",
        0,
        head_out_of_range,
    ),
    ring(
        "buffer-outside-ram",
        "§2.7.5: `addr` is a guest-physical buffer; here no RAM backs it",
        0,
        buffer_outside_ram,
    ),
    ring(
        "buffer-across-hole",
        "§2.7.5: the whole buffer must be guest memory; here it runs from RAM into the hole after it",
        0,
        buffer_across_hole,
    ),
    Ring {
        follow: false,
        ..ring(
            "avail-index-jump",
            "§2.7.6: the available index runs at most the queue size ahead; here it jumps size+1",
            0,
            avail_index_jump,
        )
    },
    ring(
        "wrong-direction",
        "§2.7.5, §2.7.4: a buffer's direction is the queue's (rng, receive: device-writable; transmit: device-readable); here it is the other",
        0,
        wrong_direction,
    ),
    ring(
        "zero-length-buffer",
        "§2.7.5: a buffer the device can use; here `len` is 0",
        0,
        zero_length_buffer,
    ),
    ring(
        "chain-longer-than-queue",
        "§2.7.5.3.1: no chain longer than the queue size; here an indirect table of size+1",
        INDIRECT_DESC,
        chain_longer_than_queue,
    ),
    ring(
        "indirect-not-negotiated",
        "§2.7.5.3.1: no VIRTQ_DESC_F_INDIRECT unless VIRTIO_F_INDIRECT_DESC was negotiated",
        0,
        indirect_not_negotiated,
    ),
    ring(
        "indirect-bad-length",
        "§2.7.5.3: an indirect table's length is a multiple of 16; here it is 24",
        INDIRECT_DESC,
        indirect_bad_length,
    ),
    ring(
        "indirect-nested",
        "§2.7.5.3.1: no VIRTQ_DESC_F_INDIRECT inside an indirect table",
        INDIRECT_DESC,
        indirect_nested,
    ),
];

/// Where the buffer of `buffer-across-hole` starts: half a buffer before
/// the end of the first RAM range of the PVH memory map that is followed
/// by a hole (set by `main`; 0: use the end of RAM).
pub static HOLE_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// One buffer in descriptor 0, posted.
pub fn plain(s: &mut Setup<'_, '_>, addr: u64, len: u32, flags: u16) -> Result<(), RawError> {
    s.queue.set_desc(0, desc(addr, len, flags, 0))?;
    s.queue.post(0)
}

pub fn desc_loop(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    let (b, _) = s.normal(LEN.into())?;
    s.queue.set_desc(0, desc(a, LEN, NEXT | f, 1))?;
    s.queue.set_desc(1, desc(b, LEN, NEXT | f, 0))?;
    s.queue.post(0)
}

pub fn next_out_of_range(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    let next = s.queue.size();
    s.queue.set_desc(0, desc(a, LEN, NEXT | f, next))?;
    s.queue.post(0)
}

pub fn head_out_of_range(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let (a, f) = s.normal(LEN.into())?;
    s.queue.set_desc(0, desc(a, LEN, f, 0))?;
    let head = s.queue.size();
    s.queue.post(head)
}

pub fn buffer_outside_ram(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let addr = s.outside_ram();
    let f = s.normal_flags();
    plain(s, addr, LEN, f)
}

fn buffer_across_hole(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let end = match HOLE_AT.load(core::sync::atomic::Ordering::Relaxed) {
        0 => s.ram_end,
        hole => hole,
    };
    let addr = end.saturating_sub(u64::from(LEN / 2));
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

fn wrong_direction(s: &mut Setup<'_, '_>) -> Result<(), RawError> {
    let writes = s.device_writes;
    // The opposite of the queue's direction: a device-readable buffer
    // where the device should write, a device-writable one (the device
    // may write it) where it should read.
    let (a, f) = if writes {
        (s.readable(LEN.into())?, 0)
    } else {
        (s.writable(LEN.into())?, super::WRITE)
    };
    plain(s, a, LEN, f)
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

/// The rng's follow-up (§5.4.6): one device-writable 64-byte buffer in the
/// last descriptor, posted.
pub fn rng_follow_up(s: &mut Setup<'_, '_>) -> Result<u16, RawError> {
    let d = s.queue.size() - 1;
    let a = s.writable(LEN.into())?;
    s.queue.set_desc(d, desc(a, LEN, super::WRITE, 0))?;
    s.queue.post(d)?;
    Ok(d)
}

/// The console's follow-up (§5.3.6: port 0's transmitq): 16 device-readable
/// bytes in the last descriptor, posted.
pub fn console_follow_up(s: &mut Setup<'_, '_>) -> Result<u16, RawError> {
    let d = s.queue.size() - 1;
    let a = s.readable(16)?;
    s.scratch.write_u64(a, u64::from_le_bytes(*b"hostile "))?;
    s.scratch
        .write_u64(a + 8, u64::from_le_bytes(*b"follow\n\n"))?;
    s.queue.set_desc(d, desc(a, 16, 0, 0))?;
    s.queue.post(d)?;
    Ok(d)
}
