//! virtio-net (§5.1.6) against a model: random interleavings of valid and
//! invalid transmit chains, receive buffers (some device-readable) and
//! frames arriving from the backend. Every transmit chain comes back, the
//! backend gets exactly the valid frames in order, received frames arrive
//! whole and in order, memory stays bounded and nothing errors.

mod net_support;
mod queue_rig;

use net_support::{BCAST, Buf, MAC, Rig, Wire, frame, rig};
use proptest::prelude::*;
use virtio_devices::device::VirtioDevice;
use virtio_devices::net::{HDR_LEN, NetHdr, flags, gso};

#[derive(Clone, Debug)]
enum Tx {
    Good { len: usize, split: usize },
    ShortHeader { len: u32 },
    Writable,
    TooLong,
    CsumPastEnd,
    Gso,
}

#[derive(Clone, Debug)]
enum Op {
    Tx(Tx),
    KickTx,
    RxBuf { len: u32, readable: bool },
    KickRx,
    Inbound { len: usize },
    Ready,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (14usize..=1514, 1usize..4).prop_map(|(len, split)| Op::Tx(Tx::Good { len, split })),
        1 => (1u32..12).prop_map(|len| Op::Tx(Tx::ShortHeader { len })),
        1 => Just(Op::Tx(Tx::Writable)),
        1 => Just(Op::Tx(Tx::TooLong)),
        1 => Just(Op::Tx(Tx::CsumPastEnd)),
        1 => Just(Op::Tx(Tx::Gso)),
        2 => Just(Op::KickTx),
        3 => (prop_oneof![Just(2048u32), 1u32..2048], prop::bool::weighted(0.1))
            .prop_map(|(len, readable)| Op::RxBuf { len, readable }),
        2 => Just(Op::KickRx),
        3 => (14usize..=1514).prop_map(|len| Op::Inbound { len }),
        2 => Just(Op::Ready),
    ]
}

struct Model {
    /// Valid frames sent, in order.
    sent: Vec<Vec<u8>>,
    tx_chains: usize,
    /// Frames pushed to the backend, in order (by seed number).
    inbound: Vec<Vec<u8>>,
    /// Posted receive buffers: token head → address.
    rx_bufs: std::collections::HashMap<u16, u64>,
    seed: u8,
}

fn kick_tx(r: &mut Rig) -> usize {
    r.dev.queue_notify(1).unwrap();
    r.completions_on(1).len()
}

fn collect_rx(r: &mut Rig, m: &mut Model, got: &mut Vec<Vec<u8>>) {
    for (t, len) in r.completions_on(0) {
        let a = m.rx_bufs.remove(&t.head()).unwrap();
        if len == 0 {
            continue;
        }
        let b = r.bytes(a, len as usize);
        let h = NetHdr::parse(&b).unwrap();
        assert_eq!(h.num_buffers, 1);
        assert_eq!(h.flags, 0);
        got.push(b[HDR_LEN..].to_vec());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_chains_never_stall_or_corrupt(ops in prop::collection::vec(op(), 1..60)) {
        // One-buffer frames: MRG_RXBUF is left out so each buffer holds a
        // whole frame (the mergeable path has its own test).
        let mut r = net_support::rig_with(
            Wire::new(),
            virtio_devices::net::NetConfig::default(),
            Some(r_features()),
        );
        let mut m = Model { sent: vec![], tx_chains: 0, inbound: vec![], rx_bufs: Default::default(), seed: 0 };
        let mut returned = 0usize;
        let mut got = vec![];
        for op in ops {
            match op {
                Op::Tx(t) => {
                    if r.drv[1].num_free() < 4 {
                        returned += kick_tx(&mut r);
                    }
                    m.seed = m.seed.wrapping_add(1);
                    let hdr = NetHdr::default().to_bytes();
                    match t {
                        Tx::Good { len, split } => {
                            let f = frame(BCAST, len, m.seed);
                            let h = r.data(&hdr);
                            let mut bufs = vec![Buf::R(h, HDR_LEN as u32)];
                            let step = len.div_ceil(split);
                            for c in f.chunks(step) {
                                let a = r.data(c);
                                bufs.push(Buf::R(a, c.len() as u32));
                            }
                            r.add_on(1, &bufs);
                            m.sent.push(f);
                        }
                        Tx::ShortHeader { len } => {
                            let h = r.data(&vec![0; len as usize + 1]);
                            r.add_on(1, &[Buf::R(h, len)]);
                        }
                        Tx::Writable => {
                            let h = r.data(&hdr);
                            let a = r.alloc(64);
                            r.add_on(1, &[Buf::R(h, 12), Buf::W(a, 64)]);
                        }
                        Tx::TooLong => { r.tx(&hdr, &frame(BCAST, 1519, 0)); }
                        Tx::CsumPastEnd => {
                            let h = NetHdr { flags: flags::NEEDS_CSUM, csum_start: 50, csum_offset: 20, ..NetHdr::default() };
                            r.tx(&h.to_bytes(), &frame(BCAST, 60, 0));
                        }
                        Tx::Gso => {
                            let h = NetHdr { gso_type: gso::UDP, ..NetHdr::default() };
                            r.tx(&h.to_bytes(), &frame(BCAST, 60, 0));
                        }
                    }
                    m.tx_chains += 1;
                }
                Op::KickTx => returned += kick_tx(&mut r),
                Op::RxBuf { len, readable } => {
                    if r.drv[0].num_free() == 0 {
                        continue;
                    }
                    let a = r.alloc(u64::from(len.max(1)));
                    let t = r.add_on(0, &[if readable { Buf::R(a, len.max(1)) } else { Buf::W(a, len) }]);
                    m.rx_bufs.insert(t.head(), a);
                }
                Op::KickRx => {
                    r.dev.queue_notify(0).unwrap();
                    collect_rx(&mut r, &mut m, &mut got);
                }
                Op::Inbound { len } => {
                    m.seed = m.seed.wrapping_add(1);
                    let f = frame(MAC, len, m.seed);
                    r.wire.push(f.clone());
                    m.inbound.push(f);
                }
                Op::Ready => {
                    r.dev.backend_ready().unwrap();
                    collect_rx(&mut r, &mut m, &mut got);
                }
            }
            prop_assert!(r.dev.rx_pending() <= 64);
        }
        returned += kick_tx(&mut r);
        // A transmit kick also delivers what the backend has pending.
        collect_rx(&mut r, &mut m, &mut got);
        prop_assert_eq!(returned, m.tx_chains);
        prop_assert_eq!(r.wire.sent(), m.sent);
        // Received frames are a subsequence of what came in, each whole.
        let mut it = m.inbound.iter();
        for g in &got {
            prop_assert!(it.any(|f| f == g), "frame out of order or corrupted");
        }
        let s = r.dev.stats();
        prop_assert_eq!(s.rx_frames as usize, got.len());
    }
}

fn r_features() -> u64 {
    use virtio_core::features::{NetFeatures, TransportFeatures};
    (NetFeatures::MAC | NetFeatures::CSUM | NetFeatures::CTRL_VQ).bits()
        | TransportFeatures::VERSION_1.bits()
        | TransportFeatures::RING_EVENT_IDX.bits()
}

#[allow(dead_code)]
fn unused(_: Rig) {
    let _ = rig;
}
