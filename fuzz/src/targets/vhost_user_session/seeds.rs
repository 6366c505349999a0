//! The checked-in seeds of `vhost_user_session`, written as [`Input`]s and
//! encoded the way `arbitrary` decodes them, so that each seed is a
//! meaningful session rather than bytes that happen to parse. The tests
//! below decode every seed back to its input, compare the encodings with
//! the files in `corpus/vhost_user_session/`, and check that each seed
//! reaches the part of the session it is for; `BOTHENDS_WRITE_SEEDS=1
//! cargo test -p bothends-fuzz seeds` rewrites the files.

use super::{
    AddrSpec, Bits, BlkKind, Buf, DeviceSpec, Enable, FdCount, FdSpec, Input, Len, Msg, Num,
    Offset, Place, RegionSpec, Seg, Step,
};

/// Bytes as `arbitrary` 1.x decodes them: integers little-endian, a `bool`
/// from a byte's low bit, an enum variant from a `u32` scaled by the
/// number of variants, a collection as a `true` byte before each element
/// and a `false` one after the last (the last field of the input, taken
/// with `arbitrary_take_rest`, simply ends with the bytes).
#[derive(Debug, Default)]
pub struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn bool(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }

    /// Variant `i` of `n`: the smallest `u32` that `(v * n) >> 32` maps
    /// to `i`.
    fn variant(&mut self, i: u32, n: u32) {
        assert!(i < n);
        let v = (u64::from(i) << 32).div_ceil(u64::from(n));
        self.u32(v as u32);
    }

    fn seq<T>(&mut self, items: &[T], mut f: impl FnMut(&mut Enc, &T)) {
        for x in items {
            self.bool(true);
            f(self, x);
        }
        self.bool(false);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.seq(b, |e, v| e.u8(*v));
    }
}

/// How a type is written for `arbitrary` (field by field, as the derive
/// reads them).
pub trait Encode {
    /// Appends the bytes that decode to `self`.
    fn encode(&self, e: &mut Enc);
}

impl Encode for DeviceSpec {
    fn encode(&self, e: &mut Enc) {
        match *self {
            DeviceSpec::Rng { seed } => {
                e.variant(0, 2);
                e.u8(seed);
            }
            DeviceSpec::Blk {
                sectors,
                two_queues,
                read_only,
                flags,
            } => {
                e.variant(1, 2);
                e.u8(sectors);
                e.bool(two_queues);
                e.bool(read_only);
                e.u8(flags);
            }
        }
    }
}

impl Encode for Bits {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Bits::Offered => e.variant(0, 3),
            Bits::Masked(m) => {
                e.variant(1, 3);
                e.u64(m);
            }
            Bits::Raw(v) => {
                e.variant(2, 3);
                e.u64(v);
            }
        }
    }
}

impl Encode for FdCount {
    fn encode(&self, e: &mut Enc) {
        let i = match self {
            FdCount::Exact => 0,
            FdCount::Zero => 1,
            FdCount::Fewer => 2,
            FdCount::More => 3,
        };
        e.variant(i, 4);
    }
}

impl Encode for FdSpec {
    fn encode(&self, e: &mut Enc) {
        match *self {
            FdSpec::Own => e.variant(0, 6),
            FdSpec::Ring(n) => {
                e.variant(1, 6);
                e.u8(n);
            }
            FdSpec::NoFd => e.variant(2, 6),
            FdSpec::Missing => e.variant(3, 6),
            FdSpec::NotEventfd => e.variant(4, 6),
            FdSpec::Two => e.variant(5, 6),
        }
    }
}

impl Encode for Place {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Place::Natural => e.variant(0, 3),
            Place::Pages(n) => {
                e.variant(1, 3);
                e.i16(n);
            }
            Place::Raw(v) => {
                e.variant(2, 3);
                e.u64(v);
            }
        }
    }
}

impl Encode for Len {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Len::Whole => e.variant(0, 3),
            Len::Pages(n) => {
                e.variant(1, 3);
                e.u8(n);
            }
            Len::Raw(v) => {
                e.variant(2, 3);
                e.u64(v);
            }
        }
    }
}

impl Encode for Offset {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Offset::Zero => e.variant(0, 3),
            Offset::Pages(n) => {
                e.variant(1, 3);
                e.u8(n);
            }
            Offset::Raw(v) => {
                e.variant(2, 3);
                e.u64(v);
            }
        }
    }
}

impl Encode for RegionSpec {
    fn encode(&self, e: &mut Enc) {
        e.u8(self.file);
        self.guest.encode(e);
        self.size.encode(e);
        self.user.encode(e);
        self.offset.encode(e);
    }
}

impl Encode for Num {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Num::Log2(k) => {
                e.variant(0, 2);
                e.u8(k);
            }
            Num::Raw(n) => {
                e.variant(1, 2);
                e.u32(n);
            }
        }
    }
}

impl Encode for AddrSpec {
    fn encode(&self, e: &mut Enc) {
        match *self {
            AddrSpec::Natural { file } => {
                e.variant(0, 3);
                e.u8(file);
            }
            AddrSpec::Shifted { file, by } => {
                e.variant(1, 3);
                e.u8(file);
                e.i16(by);
            }
            AddrSpec::Raw {
                flags,
                desc,
                avail,
                used,
            } => {
                e.variant(2, 3);
                e.u32(flags);
                e.u64(desc);
                e.u64(avail);
                e.u64(used);
            }
        }
    }
}

impl Encode for Enable {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Enable::Off => e.variant(0, 3),
            Enable::On => e.variant(1, 3),
            Enable::Raw(n) => {
                e.variant(2, 3);
                e.u32(n);
            }
        }
    }
}

impl Encode for Msg {
    fn encode(&self, e: &mut Enc) {
        const N: u32 = 23;
        match self {
            Msg::SetOwner => e.variant(0, N),
            Msg::ResetOwner => e.variant(1, N),
            Msg::ResetDevice => e.variant(2, N),
            Msg::GetFeatures => e.variant(3, N),
            Msg::SetFeatures(b) => {
                e.variant(4, N);
                b.encode(e);
            }
            Msg::GetProtocolFeatures => e.variant(5, N),
            Msg::SetProtocolFeatures(b) => {
                e.variant(6, N);
                b.encode(e);
            }
            Msg::GetQueueNum => e.variant(7, N),
            Msg::GetMaxMemSlots => e.variant(8, N),
            Msg::SetMemTable { regions, fds } => {
                e.variant(9, N);
                e.seq(regions, |e, r| r.encode(e));
                fds.encode(e);
            }
            Msg::AddMemReg { region, fds } => {
                e.variant(10, N);
                region.encode(e);
                fds.encode(e);
            }
            Msg::RemMemReg { region, with_fd } => {
                e.variant(11, N);
                region.encode(e);
                e.bool(*with_fd);
            }
            Msg::SetVringNum { ring, num } => {
                e.variant(12, N);
                e.u8(*ring);
                num.encode(e);
            }
            Msg::SetVringAddr { ring, addr } => {
                e.variant(13, N);
                e.u8(*ring);
                addr.encode(e);
            }
            Msg::SetVringBase { ring, base } => {
                e.variant(14, N);
                e.u8(*ring);
                e.u32(*base);
            }
            Msg::GetVringBase { ring } => {
                e.variant(15, N);
                e.u8(*ring);
            }
            Msg::SetVringKick { ring, fd } => {
                e.variant(16, N);
                e.u8(*ring);
                fd.encode(e);
            }
            Msg::SetVringCall { ring, fd } => {
                e.variant(17, N);
                e.u8(*ring);
                fd.encode(e);
            }
            Msg::SetVringErr { ring, fd } => {
                e.variant(18, N);
                e.u8(*ring);
                fd.encode(e);
            }
            Msg::SetVringEnable { ring, num } => {
                e.variant(19, N);
                e.u8(*ring);
                num.encode(e);
            }
            Msg::GetConfig { offset, size } => {
                e.variant(20, N);
                e.u16(*offset);
                e.u16(*size);
            }
            Msg::SetConfig { offset, data } => {
                e.variant(21, N);
                e.u16(*offset);
                e.bytes(data);
            }
            Msg::Unsupported(n) => {
                e.variant(22, N);
                e.u8(*n);
            }
        }
    }
}

impl Encode for BlkKind {
    fn encode(&self, e: &mut Enc) {
        match *self {
            BlkKind::In => e.variant(0, 7),
            BlkKind::Out => e.variant(1, 7),
            BlkKind::Flush => e.variant(2, 7),
            BlkKind::GetId => e.variant(3, 7),
            BlkKind::Discard => e.variant(4, 7),
            BlkKind::WriteZeroes => e.variant(5, 7),
            BlkKind::Other(c) => {
                e.variant(6, 7);
                e.u32(c);
            }
        }
    }
}

impl Encode for Seg {
    fn encode(&self, e: &mut Enc) {
        match *self {
            Seg::Sectors(n) => {
                e.variant(0, 2);
                e.u8(n);
            }
            Seg::Bytes(n) => {
                e.variant(1, 2);
                e.u16(n);
            }
        }
    }
}

impl Encode for Buf {
    fn encode(&self, e: &mut Enc) {
        e.bool(self.writable);
        e.u16(self.len);
        e.u8(self.fill);
    }
}

impl Encode for Step {
    fn encode(&self, e: &mut Enc) {
        const N: u32 = 13;
        match self {
            Step::Msg { msg, need_reply } => {
                e.variant(0, N);
                msg.encode(e);
                e.bool(*need_reply);
            }
            Step::Raw {
                request,
                flags,
                payload,
                fds,
            } => {
                e.variant(1, N);
                e.u8(*request);
                e.u8(*flags);
                e.bytes(payload);
                e.u8(*fds);
            }
            Step::Negotiate { reply_ack } => {
                e.variant(2, N);
                e.bool(*reply_ack);
            }
            Step::SetupRing {
                ring,
                size_log2,
                file,
            } => {
                e.variant(3, N);
                e.u8(*ring);
                e.u8(*size_log2);
                e.u8(*file);
            }
            Step::StartRing { ring } => {
                e.variant(4, N);
                e.u8(*ring);
            }
            Step::Chain { ring, bufs, kick } => {
                e.variant(5, N);
                e.u8(*ring);
                e.seq(bufs, |e, b| b.encode(e));
                e.bool(*kick);
            }
            Step::BlkRequest {
                ring,
                kind,
                sector,
                data,
                status_len,
                kick,
            } => {
                e.variant(6, N);
                e.u8(*ring);
                kind.encode(e);
                e.u16(*sector);
                e.seq(data, |e, s| s.encode(e));
                e.u8(*status_len);
                e.bool(*kick);
            }
            Step::Fill {
                ring,
                count,
                len,
                writable,
            } => {
                e.variant(7, N);
                e.u8(*ring);
                e.u16(*count);
                e.u16(*len);
                e.bool(*writable);
            }
            Step::Kick { ring } => {
                e.variant(8, N);
                e.u8(*ring);
            }
            Step::KickAnd {
                ring,
                msg,
                need_reply,
            } => {
                e.variant(9, N);
                e.u8(*ring);
                msg.encode(e);
                e.bool(*need_reply);
            }
            Step::Drain => e.variant(10, N),
            Step::Poke {
                file,
                offset,
                bytes,
            } => {
                e.variant(11, N);
                e.u8(*file);
                e.u32(*offset);
                e.bytes(bytes);
            }
            Step::Disconnect { partial } => {
                e.variant(12, N);
                e.bytes(partial);
            }
        }
    }
}

impl Input {
    /// The bytes that decode to this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        self.device.encode(&mut e);
        e.u8(self.files);
        for p in self.pages {
            e.u8(p);
        }
        // The last field takes the rest: each step after a `true` byte.
        for s in &self.steps {
            e.bool(true);
            s.encode(&mut e);
        }
        e.0
    }
}

fn msg(msg: Msg) -> Step {
    Step::Msg {
        msg,
        need_reply: false,
    }
}

fn ack(msg: Msg) -> Step {
    Step::Msg {
        msg,
        need_reply: true,
    }
}

fn writable(len: u16) -> Buf {
    Buf {
        writable: true,
        len,
        fill: 0,
    }
}

fn blk(ring: u8, kind: BlkKind, sector: u16, data: Vec<Seg>) -> Step {
    Step::BlkRequest {
        ring,
        kind,
        sector,
        data,
        status_len: 1,
        kick: true,
    }
}

/// The named seeds.
pub fn seeds() -> Vec<(&'static str, Input)> {
    let rng = DeviceSpec::Rng { seed: 7 };
    let blk2 = DeviceSpec::Blk {
        sectors: 63,
        two_queues: true,
        read_only: false,
        flags: 3,
    };
    let setup = |ring, size_log2, file| Step::SetupRing {
        ring,
        size_log2,
        file,
    };
    vec![
        (
            // A good session for rng: negotiation, one ring, requests, the
            // ring's place, the other GET_* requests.
            "rng-session",
            Input {
                device: rng.clone(),
                files: 0,
                pages: [48, 0, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    setup(0, 4, 0),
                    Step::StartRing { ring: 0 },
                    Step::Chain {
                        ring: 0,
                        bufs: vec![writable(64)],
                        kick: true,
                    },
                    Step::Chain {
                        ring: 0,
                        bufs: vec![writable(16), writable(2047)],
                        kick: true,
                    },
                    Step::Drain,
                    msg(Msg::GetVringBase { ring: 0 }),
                    msg(Msg::GetConfig { offset: 0, size: 8 }),
                    msg(Msg::GetQueueNum),
                    msg(Msg::GetMaxMemSlots),
                ],
            },
        ),
        (
            // A good session for blk with two rings in two files: writes,
            // reads, the serial, a flush, a discard; a ring disabled while
            // the other runs, then enabled again; the cache mode written.
            "blk-session",
            Input {
                device: blk2.clone(),
                files: 1,
                pages: [32, 20, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    setup(0, 5, 0),
                    setup(1, 3, 1),
                    Step::StartRing { ring: 0 },
                    Step::StartRing { ring: 1 },
                    blk(0, BlkKind::Out, 2, vec![Seg::Sectors(1)]),
                    blk(1, BlkKind::In, 2, vec![Seg::Sectors(1)]),
                    blk(0, BlkKind::GetId, 0, vec![Seg::Bytes(20)]),
                    blk(1, BlkKind::Flush, 0, vec![]),
                    blk(0, BlkKind::Discard, 0, vec![Seg::Bytes(16)]),
                    Step::Drain,
                    ack(Msg::SetVringEnable {
                        ring: 0,
                        num: Enable::Off,
                    }),
                    blk(1, BlkKind::In, 0, vec![Seg::Sectors(0)]),
                    blk(0, BlkKind::In, 0, vec![Seg::Sectors(0)]),
                    ack(Msg::SetVringEnable {
                        ring: 0,
                        num: Enable::On,
                    }),
                    Step::Drain,
                    msg(Msg::GetVringBase { ring: 1 }),
                    ack(Msg::SetConfig {
                        offset: 32,
                        data: vec![0],
                    }),
                    msg(Msg::GetConfig {
                        offset: 0,
                        size: 60,
                    }),
                    msg(Msg::GetVringBase { ring: 0 }),
                ],
            },
        ),
        (
            // Regions added, counted, removed, refused (overlapping, past
            // the file, without a descriptor), a table with a descriptor
            // short, then a ring in a file that comes and goes.
            "mem-regions",
            Input {
                device: rng.clone(),
                files: 2,
                pages: [16, 16, 40],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    ack(Msg::AddMemReg {
                        region: RegionSpec::natural(1),
                        fds: FdCount::Exact,
                    }),
                    ack(Msg::RemMemReg {
                        region: RegionSpec::natural(1),
                        with_fd: true,
                    }),
                    ack(Msg::RemMemReg {
                        region: RegionSpec::natural(1),
                        with_fd: false,
                    }),
                    ack(Msg::AddMemReg {
                        region: RegionSpec::natural(1),
                        fds: FdCount::Exact,
                    }),
                    ack(Msg::AddMemReg {
                        region: RegionSpec {
                            guest: Place::Pages(-2),
                            ..RegionSpec::natural(2)
                        },
                        fds: FdCount::Exact,
                    }),
                    ack(Msg::AddMemReg {
                        region: RegionSpec {
                            guest: Place::Raw(0x4000_0000),
                            user: Place::Raw(0x5000_0000),
                            size: Len::Raw(1 << 40),
                            ..RegionSpec::natural(1)
                        },
                        fds: FdCount::Exact,
                    }),
                    ack(Msg::AddMemReg {
                        region: RegionSpec::natural(2),
                        fds: FdCount::Zero,
                    }),
                    ack(Msg::SetMemTable {
                        regions: vec![RegionSpec::natural(0), RegionSpec::natural(1)],
                        fds: FdCount::Fewer,
                    }),
                    ack(Msg::SetMemTable {
                        regions: vec![RegionSpec {
                            offset: Offset::Pages(1),
                            ..RegionSpec::natural(0)
                        }],
                        fds: FdCount::Exact,
                    }),
                    ack(Msg::RemMemReg {
                        region: RegionSpec {
                            guest: Place::Raw(0xdead_0000),
                            ..RegionSpec::natural(0)
                        },
                        with_fd: false,
                    }),
                    msg(Msg::GetMaxMemSlots),
                    setup(0, 4, 2),
                    Step::StartRing { ring: 0 },
                    Step::Chain {
                        ring: 0,
                        bufs: vec![writable(128)],
                        kick: true,
                    },
                    Step::Drain,
                    ack(Msg::RemMemReg {
                        region: RegionSpec::natural(2),
                        with_fd: false,
                    }),
                    Step::Chain {
                        ring: 0,
                        bufs: vec![writable(128)],
                        kick: true,
                    },
                    ack(Msg::AddMemReg {
                        region: RegionSpec::natural(2),
                        fds: FdCount::Exact,
                    }),
                    Step::Kick { ring: 0 },
                    Step::Drain,
                ],
            },
        ),
        (
            // A frontend that hangs up in the middle of a message during
            // setup, then comes back and does it all properly.
            "disconnect-mid-setup",
            Input {
                device: rng.clone(),
                files: 0,
                pages: [16, 0, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: false },
                    setup(0, 4, 0),
                    msg(Msg::SetVringKick {
                        ring: 0,
                        fd: FdSpec::Own,
                    }),
                    Step::Disconnect {
                        // SET_VRING_NUM's header and half its payload.
                        partial: vec![8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
                    },
                    Step::Negotiate { reply_ack: true },
                    setup(0, 4, 0),
                    Step::StartRing { ring: 0 },
                    Step::Chain {
                        ring: 0,
                        bufs: vec![writable(32)],
                        kick: true,
                    },
                    Step::Drain,
                    Step::Disconnect { partial: vec![] },
                ],
            },
        ),
        (
            // Refusals: with REPLY_ACK each gets a status of 1 and the
            // session goes on; without, the session ends; frames that do
            // not decode end it too, and the next frontend starts afresh.
            "refusals",
            Input {
                device: rng.clone(),
                files: 0,
                pages: [16, 0, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    ack(Msg::SetFeatures(Bits::Raw(1 << 63))),
                    ack(Msg::SetVringAddr {
                        ring: 0,
                        addr: AddrSpec::Natural { file: 0 },
                    }),
                    ack(Msg::SetVringNum {
                        ring: 0,
                        num: Num::Raw(3),
                    }),
                    ack(Msg::SetVringNum {
                        ring: 0,
                        num: Num::Log2(4),
                    }),
                    ack(Msg::SetVringAddr {
                        ring: 0,
                        addr: AddrSpec::Shifted { file: 0, by: 2 },
                    }),
                    ack(Msg::SetVringKick {
                        ring: 0,
                        fd: FdSpec::NoFd,
                    }),
                    ack(Msg::SetVringCall {
                        ring: 0,
                        fd: FdSpec::NotEventfd,
                    }),
                    ack(Msg::SetVringErr {
                        ring: 0,
                        fd: FdSpec::Two,
                    }),
                    ack(Msg::SetVringEnable {
                        ring: 0,
                        num: Enable::Raw(2),
                    }),
                    ack(Msg::SetVringBase {
                        ring: 0,
                        base: 0x1_0000,
                    }),
                    ack(Msg::SetProtocolFeatures(Bits::Raw(1 << 1))),
                    ack(Msg::Unsupported(0)),
                    msg(Msg::GetConfig {
                        offset: 250,
                        size: 16,
                    }),
                    msg(Msg::SetConfig {
                        offset: 200,
                        data: vec![1, 2],
                    }),
                    // A request with the reply flag set ends the session.
                    Step::Raw {
                        request: 8,
                        flags: 5,
                        payload: vec![0; 8],
                        fds: 0,
                    },
                    // GET_FEATURES as raw bytes, then an unknown request.
                    Step::Raw {
                        request: 1,
                        flags: 1,
                        payload: vec![],
                        fds: 0,
                    },
                    Step::Raw {
                        request: 45,
                        flags: 1,
                        payload: vec![],
                        fds: 1,
                    },
                    msg(Msg::SetVringNum {
                        ring: 0,
                        num: Num::Log2(4),
                    }),
                    msg(Msg::GetVringBase { ring: 0x90 }),
                    msg(Msg::SetOwner),
                ],
            },
        ),
        (
            // Ring states on blk: a ring starting while the other runs,
            // one stopped by GET_VRING_BASE and restarted by its kick,
            // RESET_DEVICE, and the ring set up again.
            "ring-states",
            Input {
                device: blk2,
                files: 0,
                pages: [40, 0, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    setup(0, 4, 0),
                    setup(1, 4, 0),
                    Step::StartRing { ring: 0 },
                    blk(0, BlkKind::In, 1, vec![Seg::Sectors(0)]),
                    Step::StartRing { ring: 1 },
                    blk(1, BlkKind::Out, 1, vec![Seg::Sectors(1)]),
                    blk(0, BlkKind::In, 1, vec![Seg::Sectors(1)]),
                    msg(Msg::GetVringBase { ring: 0 }),
                    blk(0, BlkKind::GetId, 0, vec![Seg::Bytes(64)]),
                    blk(1, BlkKind::Flush, 0, vec![]),
                    ack(Msg::SetVringKick {
                        ring: 0,
                        fd: FdSpec::Own,
                    }),
                    Step::Drain,
                    msg(Msg::GetVringBase { ring: 0 }),
                    ack(Msg::ResetDevice),
                    setup(0, 4, 0),
                    Step::StartRing { ring: 0 },
                    blk(0, BlkKind::In, 3, vec![Seg::Sectors(0)]),
                    Step::Drain,
                    msg(Msg::GetVringBase { ring: 0 }),
                ],
            },
        ),
        (
            // A ring of 1024 filled with 500 chains and kicked once: the
            // device stops at its budget and is served again from the
            // ready list, also when a GET_VRING_BASE comes in the same
            // round as the kick.
            "budget",
            Input {
                device: rng,
                files: 0,
                pages: [32, 0, 0],
                steps: vec![
                    Step::Negotiate { reply_ack: true },
                    setup(0, 10, 0),
                    Step::StartRing { ring: 0 },
                    Step::Fill {
                        ring: 0,
                        count: 500,
                        len: 8,
                        writable: true,
                    },
                    Step::Kick { ring: 0 },
                    Step::Drain,
                    Step::Fill {
                        ring: 0,
                        count: 400,
                        len: 8,
                        writable: true,
                    },
                    Step::KickAnd {
                        ring: 0,
                        msg: Msg::GetVringBase { ring: 0 },
                        need_reply: false,
                    },
                    ack(Msg::SetVringKick {
                        ring: 0,
                        fd: FdSpec::Own,
                    }),
                    Step::Drain,
                    msg(Msg::GetVringBase { ring: 0 }),
                ],
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use arbitrary::{Arbitrary, Unstructured};

    use super::super::{Report, run_input};
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/vhost_user_session")
    }

    #[test]
    fn seeds_decode_to_their_inputs() {
        for (name, input) in seeds() {
            let bytes = input.encode();
            let back = Input::arbitrary_take_rest(Unstructured::new(&bytes))
                .unwrap_or_else(|e| panic!("seed {name}: {e}"));
            assert_eq!(back, input, "seed {name} decodes to another input");
        }
    }

    #[test]
    fn seeds_are_checked_in() {
        let write = std::env::var_os("BOTHENDS_WRITE_SEEDS").is_some();
        for (name, input) in seeds() {
            let path = dir().join(format!("seed-{name}"));
            let bytes = input.encode();
            if write {
                std::fs::create_dir_all(dir()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let file = std::fs::read(&path).unwrap_or_default();
            assert!(
                file == bytes,
                "{} differs from the seed; BOTHENDS_WRITE_SEEDS=1 rewrites it",
                path.display()
            );
        }
    }

    /// Each seed gets where it is meant to.
    #[test]
    fn seeds_reach_their_parts_of_the_session() {
        let reports: Vec<(&str, Report)> = seeds()
            .into_iter()
            .map(|(name, input)| (name, run_input(&input)))
            .collect();
        for (name, r) in &reports {
            let r = r.clone();
            match *name {
                "rng-session" => {
                    assert_eq!(r.trusted_used, 2, "{r:?}");
                    assert_eq!(r.bases_checked, 1, "{r:?}");
                    assert_eq!((r.refused_sessions, r.acks_failed), (0, 0), "{r:?}");
                    assert_eq!(r.sessions, 2, "{r:?}");
                }
                "blk-session" => {
                    assert_eq!(r.trusted_used, 7, "{r:?}");
                    assert_eq!(r.bases_checked, 2, "{r:?}");
                    assert_eq!((r.refused_sessions, r.acks_failed), (0, 0), "{r:?}");
                }
                "mem-regions" => {
                    // Six regions refused; the ring's file, removed and
                    // added again, serves both chains (the refused regions
                    // leave the frontend no trusted ring).
                    assert_eq!(r.acks_failed, 6, "{r:?}");
                    assert_eq!(r.other_used, 2, "{r:?}");
                    assert_eq!(r.refused_sessions, 0, "{r:?}");
                }
                "disconnect-mid-setup" => {
                    assert_eq!(r.sessions, 3, "{r:?}");
                    assert_eq!(r.trusted_used, 1, "{r:?}");
                }
                "refusals" => {
                    assert_eq!(r.acks_failed, 11, "{r:?}");
                    assert_eq!(r.refused_sessions, 3, "{r:?}");
                    assert_eq!(r.sessions, 5, "{r:?}");
                }
                "ring-states" => {
                    assert_eq!(r.trusted_used, 6, "{r:?}");
                    assert_eq!(r.bases_checked, 3, "{r:?}");
                }
                "budget" => {
                    assert_eq!(r.trusted_used, 900, "{r:?}");
                    assert_eq!(r.bases_checked, 2, "{r:?}");
                }
                other => panic!("no expectations for seed {other}"),
            }
        }
    }
}
