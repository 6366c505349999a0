//! The virtio-net cases (§5.1, the first virtio-net slot, set up by hand
//! with `guest_rt::raw::NetRig`): one malformed transmit, receive or
//! control chain, then a well-formed frame to the device's own MAC that
//! must come back (loopback netdev or an echoing peer). The generic ring
//! cases run on transmitq1 through the same runner.

use guest_rt::raw::{
    self, DescTable, NetMemory, NetRig, RawDevice, RawError, Scratch, Setup, desc,
};
use virtio_core::features::NetFeatures;
use virtio_core::status::DeviceStatus;

use super::ring::{Ring, buffer_outside_ram, plain};
use super::{NEXT, WRITE};

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
pub struct NetCase {
    /// Name (`hostile.case=`), with its `net-` prefix.
    pub name: &'static str,
    /// The spec rule the driver breaks.
    pub rule: &'static str,
    /// The queue the malformed chain goes on.
    pub queue: u16,
    /// Features that must be offered, else the case is skipped.
    pub requires: u64,
    /// Writes and posts the malformed chain.
    pub build: fn(&mut Setup<'_, '_>) -> Result<(), RawError>,
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
pub const NET_CASES: &[NetCase] = &[
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
pub struct NetRun {
    pub outcome: raw::Outcome,
    pub status: DeviceStatus,
    /// `None`: not sent (the device asked for a reset).
    pub follow_up: Option<bool>,
    /// A malformed receive chain the device returned only while the
    /// follow-up frame was delivered.
    pub late: Option<virtio_core::split::layout::UsedElem>,
}

/// Sets the device up, runs `case` (or nothing: a clean run) and the
/// follow-up, checks the canaries and resets.
pub fn net_run(
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

/// A generic ring case on transmitq1 (§5.1.2).
pub fn tx_case(r: &Ring) -> NetCase {
    NetCase {
        name: r.name,
        rule: r.rule,
        queue: raw::NET_TX,
        requires: r.requires,
        build: r.build,
    }
}
