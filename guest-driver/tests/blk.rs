//! The block driver (§5.2) against a fake disk behind virtio-core's
//! version 2 register file and device-side queue: reads and writes with
//! several requests in flight, FLUSH, GET_ID, DISCARD, WRITE_ZEROES, MQ,
//! interrupts, and every hostile answer (unknown id, used length beyond
//! the chain, status not written, bad status, no completion) a typed error.

mod common;

use common::{Bus, Env, FakeDevice, POOL_PAGES, Queues};
use guest_driver::blk::{Blk, BlkError, BlkOptions, Done, ID_LEN, req};
use guest_driver::error::Error;
use guest_driver::transport::{Completion, acknowledge_interrupt};
use guest_driver::wait::Polls;
use virtio_core::features::{BlkFeatures, TransportFeatures};
use virtio_core::memory::RegionMemory;
use virtio_core::split::{DriverError as QueueError, QueueLayout};
use virtio_core::status::DeviceStatus;

const SECTORS: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    Stall,
    WrongId,
    TooLong,
    NoStatus,
    BadStatus,
    ShortRead,
}

struct FakeBlk {
    q: Queues,
    disk: Vec<u8>,
    mode: Mode,
    deferred: bool,
    offered: u64,
    num_queues: u16,
    max: u16,
    serial: [u8; ID_LEN],
    flushes: u32,
    discards: Vec<(u64, u32)>,
    /// Most chains seen in flight at once on a queue.
    most_pending: u16,
    starts: u32,
}

impl FakeBlk {
    fn new(mem: RegionMemory<1>) -> FakeBlk {
        FakeBlk {
            q: Queues::new(mem),
            disk: vec![0; (SECTORS * 512) as usize],
            mode: Mode::Normal,
            deferred: false,
            offered: TransportFeatures::RING_EVENT_IDX.bits()
                | (BlkFeatures::FLUSH
                    | BlkFeatures::SEG_MAX
                    | BlkFeatures::SIZE_MAX
                    | BlkFeatures::BLK_SIZE
                    | BlkFeatures::DISCARD
                    | BlkFeatures::WRITE_ZEROES
                    | BlkFeatures::MQ)
                    .bits(),
            num_queues: 2,
            max: 64,
            serial: *b"fake-serial\0\0\0\0\0\0\0\0\0",
            flushes: 0,
            discards: Vec::new(),
            most_pending: 0,
            starts: 0,
        }
    }

    fn ro(&self) -> bool {
        self.offered & BlkFeatures::RO.bits() != 0
    }

    fn serve(&mut self, qi: usize) -> bool {
        let mem = std::sync::Arc::clone(&self.q.mem);
        let mem = &*mem;
        let ro = self.ro();
        if self.mode == Mode::Stall {
            return false;
        }
        let Some(Some(queue)) = self.q.queues.get_mut(qi) else {
            return false;
        };
        let pending = queue.pending(&mem).unwrap();
        self.most_pending = self.most_pending.max(pending);
        while let Some(chain) = queue.pop(&mem).unwrap() {
            let head = chain.head();
            let (mut r, mut w) = chain.reader_writer::<64>().unwrap();
            let mut hdr = [0u8; 16];
            r.read_exact(&mut hdr).unwrap();
            let kind = u32::from_le_bytes(hdr[..4].try_into().unwrap());
            let sector = u64::from_le_bytes(hdr[8..].try_into().unwrap());
            let wlen = w.available() as usize;
            let dlen = wlen - 1;
            let in_range = |len: usize| sector * 512 + len as u64 <= SECTORS * 512;
            let mut status = 0u8;
            match kind {
                req::IN if in_range(dlen) => {
                    let at = (sector * 512) as usize;
                    w.write_all(&self.disk[at..at + dlen]).unwrap();
                }
                req::OUT => {
                    let n = r.available() as usize;
                    if ro || !in_range(n) {
                        status = 1;
                    } else {
                        let at = (sector * 512) as usize;
                        r.read_exact(&mut self.disk[at..at + n]).unwrap();
                    }
                }
                req::FLUSH => self.flushes += 1,
                req::GET_ID => w.write_all(&self.serial).unwrap(),
                req::DISCARD | req::WRITE_ZEROES => {
                    let mut seg = [0u8; 16];
                    r.read_exact(&mut seg).unwrap();
                    let s = u64::from_le_bytes(seg[..8].try_into().unwrap());
                    let n = u32::from_le_bytes(seg[8..12].try_into().unwrap());
                    if kind == req::DISCARD {
                        self.discards.push((s, n));
                    } else {
                        let at = (s * 512) as usize;
                        self.disk[at..at + n as usize * 512].fill(0);
                    }
                }
                req::IN => {
                    status = 1;
                    w.skip(dlen as u64).unwrap();
                }
                _ => status = 2,
            }
            if kind != req::IN || status != 0 {
                // Skip to the status byte.
                let left = w.available();
                w.skip(left - 1).unwrap();
            }
            let size = queue.size();
            match self.mode {
                Mode::Normal | Mode::Stall => {
                    w.write_all(&[status]).unwrap();
                    queue.add_used(&mem, head, wlen as u32).unwrap();
                }
                Mode::WrongId => queue.add_used(&mem, (head + 1) % size, 1).unwrap(),
                Mode::TooLong => queue.add_used(&mem, head, wlen as u32 + 1).unwrap(),
                Mode::NoStatus => queue.add_used(&mem, head, 0).unwrap(),
                Mode::BadStatus => {
                    w.write_all(&[7]).unwrap();
                    queue.add_used(&mem, head, wlen as u32).unwrap();
                }
                Mode::ShortRead => {
                    w.write_all(&[status]).unwrap();
                    queue.add_used(&mem, head, 1).unwrap();
                }
            }
        }
        self.q.finish(qi)
    }
}

impl FakeDevice for FakeBlk {
    fn device_id(&self) -> u32 {
        2
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn num_queues(&self) -> u16 {
        self.num_queues
    }
    fn queue_max(&self, _q: u16) -> u16 {
        self.max
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 64];
        cfg[..8].copy_from_slice(&SECTORS.to_le_bytes());
        cfg[8..12].copy_from_slice(&4096u32.to_le_bytes());
        cfg[12..16].copy_from_slice(&4u32.to_le_bytes());
        cfg[20..24].copy_from_slice(&512u32.to_le_bytes());
        cfg[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        cfg[36..40].copy_from_slice(&64u32.to_le_bytes());
        cfg[40..44].copy_from_slice(&1u32.to_le_bytes());
        cfg[48..52].copy_from_slice(&64u32.to_le_bytes());
        cfg[52..56].copy_from_slice(&1u32.to_le_bytes());
        let o = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(o + i).copied().unwrap_or(0);
        }
    }
    fn start(
        &mut self,
        features: u64,
        layouts: &[Option<QueueLayout>],
    ) -> Result<(), &'static str> {
        self.starts += 1;
        self.q.start(features, layouts)
    }
    fn stop(&mut self) {
        self.q.queues.clear();
    }
    fn notified(&mut self, queue: u16) -> bool {
        if self.deferred {
            false
        } else {
            self.serve(usize::from(queue))
        }
    }
    fn work(&mut self) -> bool {
        let mut irq = false;
        for q in 0..self.q.queues.len() {
            irq |= self.serve(q);
        }
        irq
    }
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i) ^ ((off + i) >> 8)) as u8)
        .collect()
}

fn opts() -> BlkOptions {
    BlkOptions {
        slot_size: 16 * 1024,
        ..BlkOptions::default()
    }
}

#[test]
fn blk_config_and_features_5_2_4() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    let blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    assert_eq!(blk.capacity(), SECTORS);
    let c = blk.config();
    assert_eq!(c.size_max, Some(4096));
    assert_eq!(c.seg_max, Some(4));
    assert_eq!(c.blk_size, Some(512));
    assert_eq!(c.num_queues, Some(2));
    assert_eq!(c.discard, Some((64, 1, 0)));
    assert!(!blk.read_only());
    // One queue asked for, although two are offered.
    assert_eq!(blk.num_queues(), 1);
    // size_max * seg_max = 16 KiB = the slot.
    assert_eq!(blk.max_request_bytes(), 16 * 1024);
    assert_eq!(bus.errors(), []);
}

#[test]
fn blk_write_then_read_back_with_requests_in_flight_5_2_6() {
    for deferred in [false, true] {
        let env = Env::new();
        let bus = Bus::new(FakeBlk::new(env.memory()));
        bus.with(|d| d.deferred = deferred);
        let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
        assert_eq!(blk.depth(), 8);
        let sizes = [1usize, 8, 3, 32, 16, 7];
        let mut tokens = Vec::new();
        let mut sector = 0u64;
        let mut i = 0;
        while sector < SECTORS {
            let n = (sizes[i % sizes.len()] as u64).min(SECTORS - sector);
            i += 1;
            let data = pattern(sector * 512, n as usize * 512);
            let t = loop {
                match blk.submit_write(0, sector, &data) {
                    Ok(t) => break t,
                    Err(BlkError::Busy { .. }) => {
                        bus.work();
                        let d = blk.wait_any(&mut Polls::new(10)).unwrap();
                        assert_eq!(d.result, Ok(()));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            tokens.push(t);
            sector += n;
        }
        bus.work();
        while blk.in_flight() > 0 {
            let d = blk.wait_any(&mut Polls::new(10)).unwrap();
            assert_eq!((d.kind, d.result), (req::OUT, Ok(())));
        }
        assert_eq!(
            bus.with(|d| d.disk.clone()),
            pattern(0, (SECTORS * 512) as usize)
        );
        if deferred {
            assert!(
                bus.with(|d| d.most_pending) > 1,
                "several requests in flight"
            );
        }
        blk.flush(&mut || {
            bus.work();
            true
        })
        .unwrap();
        assert_eq!(bus.with(|d| d.flushes), 1);
        // Reads: several in flight, then taken out of order of completion.
        let mut reads = Vec::new();
        for s in (0..64).step_by(8) {
            reads.push((s, blk.submit_read(0, s, 4096).unwrap()));
        }
        bus.work();
        for (s, t) in reads.into_iter().rev() {
            let d = blk.wait_for(t, &mut Polls::new(10)).unwrap();
            assert_eq!(d.result, Ok(()));
            let mut buf = vec![0u8; 4096];
            assert_eq!(blk.take_data(t, &mut buf).unwrap(), 4096);
            assert_eq!(buf, pattern(s * 512, 4096));
            // The token is spent.
            assert_eq!(blk.take_data(t, &mut buf), Err(BlkError::StaleToken));
        }
        assert_eq!(blk.in_flight(), 0);
        assert_eq!(bus.errors(), []);
    }
}

#[test]
fn blk_flush_get_id_discard_write_zeroes_5_2_6() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    let w = &mut Polls::new(10);
    blk.write(0, &[0xaa; 8192], w).unwrap();
    blk.flush(w).unwrap();
    let id = blk.get_id(w).unwrap();
    assert_eq!(&id[..11], b"fake-serial");
    blk.discard(100, 8, w).unwrap();
    assert_eq!(bus.with(|d| d.discards.clone()), [(100, 8)]);
    blk.write_zeroes(4, 4, true, w).unwrap();
    let mut buf = vec![0u8; 8192];
    blk.read(0, &mut buf, w).unwrap();
    assert!(buf[..2048].iter().all(|b| *b == 0xaa));
    assert!(buf[2048..4096].iter().all(|b| *b == 0));
    assert!(buf[4096..].iter().all(|b| *b == 0xaa));
    // Bad lengths are refused before anything reaches the device.
    assert_eq!(
        blk.submit_read(0, 0, 100),
        Err(BlkError::BadLength { len: 100 })
    );
    assert!(matches!(
        blk.submit_read(0, 0, 32 * 1024),
        Err(BlkError::TooLarge { .. })
    ));
}

/// §5.2.4, §5.2.6: a DISCARD of several ranges carries at most
/// `max_discard_seg` (1 here) of them; writeback is set only with
/// VIRTIO_BLK_F_CONFIG_WCE negotiated.
#[test]
fn blk_discard_ranges_and_writeback_keep_to_the_features_5_2_4() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    let w = &mut Polls::new(10);
    assert_eq!(
        blk.discard_ranges(&[(8, 8), (32, 8)], w),
        Err(BlkError::TooLarge { len: 2, max: 1 })
    );
    assert_eq!(
        blk.discard_ranges(&[], w),
        Err(BlkError::TooLarge { len: 0, max: 1 })
    );
    blk.discard_ranges(&[(40, 8)], w).unwrap();
    assert_eq!(bus.with(|d| d.discards.clone()), [(40, 8)]);
    assert_eq!(
        blk.set_writeback(false),
        Err(BlkError::NotNegotiated {
            feature: BlkFeatures::CONFIG_WCE
        })
    );
}

#[test]
fn blk_ioerr_beyond_capacity_and_read_only_5_2_6_1() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| d.offered |= BlkFeatures::RO.bits());
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    assert!(blk.read_only());
    let w = &mut Polls::new(10);
    assert_eq!(blk.write(0, &[1; 512], w), Err(BlkError::IoError));
    let mut buf = [0u8; 512];
    assert_eq!(blk.read(SECTORS, &mut buf, w), Err(BlkError::IoError));
    blk.read(SECTORS - 1, &mut buf, w).unwrap();
    // Nothing leaked: every slot is free again.
    assert_eq!(blk.in_flight(), 0);
}

#[test]
fn blk_flush_not_offered_is_refused_5_2_3() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| d.offered &= !BlkFeatures::FLUSH.bits());
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    assert_eq!(
        blk.flush(&mut Polls::new(1)),
        Err(BlkError::NotNegotiated {
            feature: BlkFeatures::FLUSH
        })
    );
}

#[test]
fn blk_mq_uses_every_queue_5_2_2() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    let o = BlkOptions {
        queues: 4,
        ..opts()
    };
    let mut blk = Blk::new(&env.hal, &bus, o).unwrap();
    assert_eq!(blk.num_queues(), 2);
    let a = blk.submit_write(0, 0, &[1; 512]).unwrap();
    let b = blk.submit_write(1, 1, &[2; 512]).unwrap();
    assert_eq!(
        blk.submit_write(2, 2, &[2; 512]),
        Err(BlkError::NoSuchQueue { queue: 2 })
    );
    for t in [b, a] {
        let d: Done = blk.wait_for(t, &mut Polls::new(10)).unwrap();
        assert_eq!(d.token.queue, t.queue);
        assert_eq!(d.result, Ok(()));
    }
    let disk = bus.with(|d| d.disk.clone());
    assert!(disk[..512].iter().all(|b| *b == 1) && disk[512..1024].iter().all(|b| *b == 2));
}

#[test]
fn blk_interrupts_wake_the_wait_2_7_7() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| d.deferred = true);
    let o = BlkOptions {
        completion: Completion::Interrupt,
        ..opts()
    };
    let mut blk = Blk::new(&env.hal, &bus, o).unwrap();
    let mut delivered = 0;
    for s in 0..16 {
        let mut wait = || {
            bus.work();
            if bus.irq_asserted() {
                delivered += 1;
                acknowledge_interrupt(&bus);
            }
            true
        };
        blk.write(s, &pattern(s, 512), &mut wait).unwrap();
    }
    assert!(delivered > 0 && bus.raised.get() > 0);
}

#[test]
fn blk_hostile_completions_are_errors_2_7_8() {
    for mode in [
        Mode::WrongId,
        Mode::TooLong,
        Mode::NoStatus,
        Mode::BadStatus,
        Mode::ShortRead,
    ] {
        let env = Env::new();
        let bus = Bus::new(FakeBlk::new(env.memory()));
        let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
        bus.with(|d| d.mode = mode);
        let mut buf = vec![0x55u8; 1024];
        let err = blk.read(0, &mut buf, &mut Polls::new(10)).unwrap_err();
        // The caller's buffer is untouched whatever the device did.
        assert!(buf.iter().all(|b| *b == 0x55), "{mode:?}");
        let ok = match mode {
            Mode::WrongId => matches!(
                err,
                BlkError::Driver(Error::Queue {
                    err: QueueError::UsedIdNotInFlight { .. },
                    ..
                })
            ),
            Mode::TooLong => matches!(
                err,
                BlkError::Driver(Error::Queue {
                    err: QueueError::UsedLenTooLarge {
                        len: 1026,
                        writable: 1025,
                        ..
                    },
                    ..
                })
            ),
            Mode::NoStatus => {
                err == BlkError::StatusNotWritten {
                    len: 0,
                    expected: 1025,
                }
            }
            Mode::BadStatus => err == BlkError::BadStatus { status: 7 },
            Mode::ShortRead => {
                err == BlkError::StatusNotWritten {
                    len: 1,
                    expected: 1025,
                }
            }
            _ => unreachable!(),
        };
        assert!(ok, "{mode:?}: {err:?}");
        assert!(err.is_device_fault(), "{mode:?}");
        // The driver recovers after a reset.
        bus.with(|d| d.mode = Mode::Normal);
        blk.reinit().unwrap();
        blk.read(0, &mut buf, &mut Polls::new(10)).unwrap();
    }
}

#[test]
fn blk_stalled_device_times_out_then_completes_2_7_14() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| d.mode = Mode::Stall);
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    let t = blk.submit_write(0, 3, &[9; 512]).unwrap();
    assert_eq!(
        blk.wait_for(t, &mut Polls::new(20)),
        Err(BlkError::Driver(Error::Timeout { queue: 0 }))
    );
    assert_eq!(blk.in_flight(), 1);
    bus.with(|d| d.mode = Mode::Normal);
    bus.work();
    assert_eq!(blk.wait_for(t, &mut Polls::new(0)).unwrap().result, Ok(()));
    // A reset device reports DEVICE_NEEDS_RESET rather than a timeout.
    bus.with(|d| d.mode = Mode::Stall);
    bus.regs(|r| r.set_needs_reset()).unwrap();
    let t = blk.submit_flush(0).unwrap();
    assert_eq!(
        blk.wait_for(t, &mut Polls::new(3)),
        Err(BlkError::Driver(Error::DeviceNeedsReset))
    );
}

#[test]
fn blk_small_queue_limits_depth_and_drop_frees_everything_2_4() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| d.max = 8);
    {
        let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
        // 8 descriptors: two three-descriptor requests at once.
        assert_eq!(blk.depth(), 2);
        blk.write(0, &[1; 512], &mut Polls::new(5)).unwrap();
    }
    assert_eq!(bus.status(), DeviceStatus::empty());
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
    bus.with(|d| d.max = 2);
    let err = Blk::new(&env.hal, &bus, opts()).unwrap_err();
    assert_eq!(err, BlkError::QueueTooSmall { queue: 0, max: 2 });
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn blk_indirect_requests_take_one_descriptor_each_2_7_5_3() {
    let env = Env::new();
    let bus = Bus::new(FakeBlk::new(env.memory()));
    bus.with(|d| {
        d.max = 8;
        d.deferred = true;
        d.offered |= TransportFeatures::RING_INDIRECT_DESC.bits();
    });
    let mut blk = Blk::new(&env.hal, &bus, opts()).unwrap();
    assert!(blk.features() & TransportFeatures::RING_INDIRECT_DESC.bits() != 0);
    // 8 descriptors, one per request: the depth is not cut to 8 / 3.
    assert_eq!(blk.depth(), 8);
    let mut tokens = Vec::new();
    for i in 0..8u64 {
        // Four segments of size_max each at most (seg_max 4).
        let len = 4096 * (1 + i as usize % 4);
        let data = pattern(i * 32 * 512, len);
        tokens.push((i, len, blk.submit_write(0, i * 32, &data).unwrap()));
    }
    assert_eq!(blk.submit_flush(0), Err(BlkError::Busy { queue: 0 }));
    bus.work();
    assert_eq!(bus.with(|d| d.most_pending), 8);
    for (_, _, t) in &tokens {
        assert_eq!(
            blk.wait_for(*t, &mut Polls::new(10)).unwrap().result,
            Ok(())
        );
    }
    let reads: Vec<_> = tokens
        .iter()
        .map(|&(i, len, _)| (i, len, blk.submit_read(0, i * 32, len).unwrap()))
        .collect();
    bus.work();
    for (i, len, t) in reads {
        blk.wait_for(t, &mut Polls::new(10)).unwrap();
        let mut buf = vec![0u8; len];
        blk.take_data(t, &mut buf).unwrap();
        assert_eq!(buf, pattern(i * 32 * 512, len));
    }
    assert_eq!(bus.errors(), []);
    // Refused by option: three descriptors a request again.
    drop(blk);
    let no = BlkOptions {
        indirect: false,
        ..opts()
    };
    let blk = Blk::new(&env.hal, &bus, no).unwrap();
    assert_eq!(blk.depth(), 2);
    assert!(blk.features() & TransportFeatures::RING_INDIRECT_DESC.bits() == 0);
}

#[test]
fn blk_driver_is_small_enough_for_a_tiny_guest_stack() {
    let size = std::mem::size_of::<Blk<&common::Pool, &Bus<FakeBlk>>>();
    eprintln!("size_of Blk: {size}");
    // Four queues of up to MAX_DEPTH (128 since issue 17) request slots:
    // about 18 KiB, under a fifth of the tiny guests' 128 KiB stack.
    assert!(size < 24 * 1024, "{size}");
}
