//! virtio-blk (§5.2.6) against a model disk: random batches of valid and
//! invalid request chains; every chain comes back with the status and used
//! length the model predicts, and the disk holds what the model holds.

mod blk_support;
mod queue_rig;

use blk_support::{Buf, MemDisk, Rig, rig};
use proptest::prelude::*;
use virtio_devices::blk::{req, status};

const SECTORS: usize = 32;

#[derive(Clone, Debug)]
enum Op {
    /// IN or OUT of `sectors` sectors (+ `extra` bytes) in `segs` buffers.
    Rw {
        write: bool,
        sector: u64,
        sectors: u32,
        extra: u32,
        segs: u32,
        seed: u8,
    },
    Flush,
    GetId {
        len: u32,
    },
    Unknown {
        ty: u32,
    },
    /// A write without a status byte.
    NoStatus,
    /// A header of fewer than 16 bytes.
    ShortHeader {
        len: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0u64..40, 0u32..5, prop_oneof![3 => Just(0u32), 1 => 1u32..600], 1u32..5, any::<u8>())
            .prop_map(|(write, sector, sectors, extra, segs, seed)| Op::Rw { write, sector, sectors, extra, segs, seed }),
        1 => Just(Op::Flush),
        1 => (1u32..40).prop_map(|len| Op::GetId { len }),
        1 => prop_oneof![Just(2u32), Just(3), Just(99), Just(u32::MAX)].prop_map(|ty| Op::Unknown { ty }),
        1 => Just(Op::NoStatus),
        1 => (1u32..16).prop_map(|len| Op::ShortHeader { len }),
    ]
}

/// Where a read's data went, and what it must hold.
type ReadBack = (Vec<(u64, u32)>, Vec<u8>);

/// What the model expects of one chain: status (None: none written), used
/// length, and for a read where its data went and what it must hold.
struct Expect {
    status_addr: u64,
    status: Option<u8>,
    used: u32,
    read_back: Option<ReadBack>,
}

/// Splits `total` bytes into `segs` buffers of fresh memory.
fn split(r: &mut Rig, total: u32, segs: u32) -> Vec<(u64, u32)> {
    let segs = segs.min(total.max(1));
    let mut out = vec![];
    let mut left = total;
    for i in 0..segs {
        let n = if i + 1 == segs { left } else { total / segs };
        if n == 0 {
            continue;
        }
        out.push((r.alloc(u64::from(n)), n));
        left -= n;
    }
    out
}

fn submit(r: &mut Rig, model: &mut [u8], op: &Op) -> (virtio_core::split::Token, Expect) {
    match *op {
        Op::Rw {
            write,
            sector,
            sectors,
            extra,
            segs,
            seed,
        } => {
            let total = sectors * 512 + extra;
            let bufs = split(r, total, segs);
            let ty = if write { req::OUT } else { req::IN };
            let data: Vec<u8> = (0..total).map(|i| (i as u8).wrapping_add(seed)).collect();
            if write {
                let mut at = 0usize;
                for &(a, n) in &bufs {
                    r.mem_write(a, &data[at..at + n as usize]);
                    at += n as usize;
                }
            }
            let (t, s) = r.request(ty, sector, &bufs, write);
            let start = sector as usize * 512;
            let ok = total % 512 == 0 && start + total as usize <= model.len();
            let mut e = Expect {
                status_addr: s,
                status: Some(if ok { status::OK } else { status::IOERR }),
                used: 1,
                read_back: None,
            };
            if ok {
                let range = start..start + total as usize;
                if write {
                    model[range].copy_from_slice(&data);
                } else {
                    e.used = total + 1;
                    e.read_back = Some((bufs, model[range].to_vec()));
                }
            }
            (t, e)
        }
        Op::Flush => {
            let (t, s) = r.request(req::FLUSH, 0, &[], true);
            (
                t,
                Expect {
                    status_addr: s,
                    status: Some(status::OK),
                    used: 1,
                    read_back: None,
                },
            )
        }
        Op::GetId { len } => {
            let d = r.alloc(u64::from(len));
            let (t, s) = r.request(req::GET_ID, 0, &[(d, len)], false);
            (
                t,
                Expect {
                    status_addr: s,
                    status: Some(status::OK),
                    used: len.min(20) + 1,
                    read_back: None,
                },
            )
        }
        Op::Unknown { ty } => {
            let (t, s) = r.request(ty, 0, &[], true);
            (
                t,
                Expect {
                    status_addr: s,
                    status: Some(status::UNSUPP),
                    used: 1,
                    read_back: None,
                },
            )
        }
        Op::NoStatus => {
            let h = r.header(req::OUT, 0);
            let d = r.alloc(512);
            let s = r.status_buf();
            let t = r.add(&[Buf::R(h, 16), Buf::R(d, 512)]);
            (
                t,
                Expect {
                    status_addr: s,
                    status: None,
                    used: 0,
                    read_back: None,
                },
            )
        }
        Op::ShortHeader { len } => {
            let h = r.header(req::OUT, 0);
            let s = r.status_buf();
            let t = r.add(&[Buf::R(h, len), Buf::W(s, 1)]);
            (
                t,
                Expect {
                    status_addr: s,
                    status: Some(status::IOERR),
                    used: 1,
                    read_back: None,
                },
            )
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_request_chains_agree_with_a_model_disk(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..10), 1..6)
    ) {
        let mut r = rig(MemDisk::new(SECTORS));
        let mut model = r.disk.state().data.clone();
        for batch in &batches {
            r.next = 0x2_0000;
            let mut expected = vec![];
            for op in batch {
                expected.push(submit(&mut r, &mut model, op));
            }
            let served = r.notify(0);
            prop_assert_eq!(served.completed as usize, batch.len());
            let got = r.completions();
            prop_assert_eq!(got.len(), batch.len());
            for ((tok, len), (want_tok, e)) in got.iter().zip(&expected) {
                prop_assert_eq!(tok, want_tok);
                prop_assert_eq!(*len, e.used);
                match e.status {
                    Some(st) => prop_assert_eq!(r.status(e.status_addr), st),
                    None => prop_assert_eq!(r.status(e.status_addr), 0xff),
                }
                if let Some((bufs, want)) = &e.read_back {
                    let got: Vec<u8> = bufs.iter().flat_map(|&(a, n)| r.bytes(a, n as usize)).collect();
                    prop_assert_eq!(&got, want);
                }
            }
            prop_assert_eq!(&r.disk.state().data, &model);
        }
    }
}
