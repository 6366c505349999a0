//! virtio-blk (§5.2) in one process: the independent `virtio-drivers` blk
//! driver through the mmio register file, and our own driver queue for
//! every malformed request of the issue (each followed by a well-formed
//! one on the same queue), flush ordering, writethrough and batching.

mod blk_support;
mod queue_rig;

use blk_support::{Buf, MemDisk, rig, rig_with};
use virtio_core::GuestMemory;
use virtio_core::features::{BlkFeatures, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::split::layout::AvailFlags;
use virtio_core::testing::fetch::FetchTracker;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_devices::blk::{Blk, BlkConfig, BlkConfigError, CONFIG_LEN, Geometry, req, status};
use virtio_devices::device::{DeviceError, VirtioDevice};
use virtio_devices::transport::{MmioTransport, dispatch};
use virtio_drivers::device::blk::VirtIOBlk;

const V1: u64 = TransportFeatures::VERSION_1.bits();

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Checks that a well-formed write + read still works on queue 0.
fn next_request_works(r: &mut blk_support::Rig) {
    let p = pattern(512, 99);
    r.write_ok(3, &p);
    assert_eq!(r.read_ok(3, 512), p);
}

#[test]
fn virtio_drivers_blk_reads_and_writes_the_same_bytes_as_the_backend() {
    let disk = MemDisk::new(64);
    // Under the double-fetch tracker (issue 16), rings unknown to it.
    let mem: &'static FetchTracker<_> =
        Box::leak(Box::new(FetchTracker::unwatched(TestHal::memory())));
    let cfg = BlkConfig {
        serial: b"virtio-drivers-test".to_vec(),
        ..BlkConfig::default()
    };
    let dev = Blk::new(disk.clone(), mem, cfg).unwrap();
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let mut t = DeviceTransport::new(regs)
        .unwrap()
        .with_config_len(CONFIG_LEN);
    t.set_hook(|regs, outcome| {
        dispatch(regs, outcome);
    });
    let mut drv = VirtIOBlk::<TestHal, _>::new(t).unwrap();
    assert_eq!(drv.capacity(), 64);
    assert!(!drv.readonly());
    // What the backend holds is what the driver reads.
    let mut buf = vec![0u8; 1024];
    drv.read_blocks(2, &mut buf).unwrap();
    assert_eq!(buf, disk.state().data[1024..2048]);
    // What the driver writes is what the backend holds.
    let p = pattern(2048, 5);
    drv.write_blocks(10, &p).unwrap();
    assert_eq!(disk.state().data[10 * 512..14 * 512], p[..]);
    let mut back = vec![0u8; 2048];
    drv.read_blocks(10, &mut back).unwrap();
    assert_eq!(back, p);
    drv.flush().unwrap();
    assert!(disk.state().flushes >= 1);
    let mut id = [0u8; 20];
    let n = drv.device_id(&mut id).unwrap();
    assert_eq!(&id[..n], b"virtio-drivers-test");
    // Past the end: the driver sees an error, not a hang.
    assert!(drv.read_blocks(64, &mut buf[..512]).is_err());
    drv.read_blocks(63, &mut buf[..512]).unwrap();
    mem.assert_none();
}

#[test]
fn section_5_2_4_config_space_reports_capacity_and_limits() {
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x1000,
    )));
    let disk = MemDisk::new(2048).with(|s| {
        s.block_size = 4096;
        s.discard = true;
        s.write_zeroes = true;
    });
    let cfg = BlkConfig {
        num_queues: 3,
        seg_max: 17,
        size_max: 65536,
        geometry: Some(Geometry {
            cylinders: 300,
            heads: 16,
            sectors: 63,
        }),
        discard: true,
        write_zeroes: true,
        max_dwz_sectors: 1000,
        max_dwz_seg: 4,
        ..BlkConfig::default()
    };
    let dev = Blk::new(disk, &*mem, cfg).unwrap();
    let mut c = [0u8; CONFIG_LEN];
    dev.read_config(0, &mut c);
    let u32_at = |o: usize| u32::from_le_bytes(c[o..o + 4].try_into().unwrap());
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
    assert_eq!(u32_at(8), 65536);
    assert_eq!(u32_at(12), 17);
    assert_eq!(u16::from_le_bytes([c[16], c[17]]), 300);
    assert_eq!((c[18], c[19]), (16, 63));
    assert_eq!(u32_at(20), 4096);
    assert_eq!(c[32], 1, "writeback by default");
    assert_eq!(u16::from_le_bytes([c[34], c[35]]), 3);
    assert_eq!((u32_at(36), u32_at(40), u32_at(44)), (1000, 4, 8));
    assert_eq!((u32_at(48), u32_at(52), c[56]), (1000, 4, 1));
    let f = dev.device_features();
    for b in [
        BlkFeatures::SIZE_MAX,
        BlkFeatures::SEG_MAX,
        BlkFeatures::GEOMETRY,
        BlkFeatures::BLK_SIZE,
        BlkFeatures::FLUSH,
        BlkFeatures::TOPOLOGY,
        BlkFeatures::CONFIG_WCE,
        BlkFeatures::MQ,
        BlkFeatures::DISCARD,
        BlkFeatures::WRITE_ZEROES,
    ] {
        assert_ne!(f & b.bits(), 0, "{b:?} offered");
    }
    assert_eq!(f & BlkFeatures::RO.bits(), 0);
    assert_eq!(
        dev.queue_max_sizes(),
        &[virtio_devices::DEFAULT_QUEUE_SIZE; 3]
    );
    // Bytes past the end read as zero, an unaligned window works.
    let mut tail = [0xffu8; 8];
    dev.read_config(CONFIG_LEN as u64 - 3, &mut tail);
    assert_eq!(tail, [0; 8]);
    let mut mid = [0u8; 2];
    dev.read_config(1, &mut mid);
    assert_eq!(mid, [8, 0]);
}

#[test]
fn construction_refuses_bad_configs() {
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x1000,
    )));
    let mk = |cfg: BlkConfig| Blk::new(MemDisk::new(8), &*mem, cfg).err();
    assert_eq!(
        mk(BlkConfig {
            serial: vec![b'x'; 21],
            ..BlkConfig::default()
        }),
        Some(BlkConfigError::SerialTooLong { len: 21 })
    );
    assert_eq!(
        mk(BlkConfig {
            num_queues: 0,
            ..BlkConfig::default()
        }),
        Some(BlkConfigError::NoQueues)
    );
    assert_eq!(
        mk(BlkConfig {
            queue_size: 100,
            ..BlkConfig::default()
        }),
        Some(BlkConfigError::BadQueueSize { size: 100 })
    );
    assert_eq!(
        mk(BlkConfig {
            discard: true,
            ..BlkConfig::default()
        }),
        Some(BlkConfigError::BackendUnsupported { what: "discard" })
    );
    // The device copies a DISCARD list before running it: the count that
    // sizes the copy is bounded.
    assert_eq!(
        mk(BlkConfig {
            max_dwz_seg: u32::MAX,
            ..BlkConfig::default()
        }),
        Some(BlkConfigError::TooManyDwzSegments {
            max_dwz_seg: u32::MAX
        })
    );
    let e = mk(BlkConfig {
        seg_max: 0,
        ..BlkConfig::default()
    })
    .unwrap();
    assert!(!e.to_string().is_empty());
    let ro = MemDisk::new(8).with(|s| s.read_only = true);
    let dev = Blk::new(ro, &*mem, BlkConfig::default()).unwrap();
    assert_ne!(dev.device_features() & BlkFeatures::RO.bits(), 0);
}

#[test]
fn section_5_2_6_write_then_read_round_trip_with_many_segments_and_split_header() {
    let mut r = rig(MemDisk::new(64));
    let p = pattern(4096, 1);
    r.write_ok(8, &p);
    assert_eq!(r.disk.state().data[8 * 512..16 * 512], p[..]);
    // A read into five buffers of odd sizes, with the header split in two
    // (§2.6.4 / VIRTIO_F_ANY_LAYOUT in v1: framing is not fixed).
    let h = r.header(req::IN, 8);
    let sizes = [100u32, 412, 1000, 536, 2048];
    let mut bufs = vec![Buf::R(h, 5), Buf::R(h + 5, 11)];
    let mut addrs = vec![];
    for &n in &sizes {
        let a = r.alloc(u64::from(n));
        addrs.push((a, n));
        bufs.push(Buf::W(a, n));
    }
    let s = r.status_buf();
    bufs.push(Buf::W(s, 1));
    let t = r.add(&bufs);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 4097)]);
    assert_eq!(r.status(s), status::OK);
    let got: Vec<u8> = addrs
        .iter()
        .flat_map(|&(a, n)| r.bytes(a, n as usize))
        .collect();
    assert_eq!(got, p);
    // Status as the last byte of a data buffer (one writable descriptor).
    let h = r.header(req::IN, 8);
    let a = r.alloc(513);
    let t = r.add(&[Buf::R(h, 16), Buf::W(a, 513)]);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 513)]);
    assert_eq!(r.bytes(a, 512), p[..512]);
    assert_eq!(r.status(a + 512), status::OK);
    let st = r.dev.stats();
    assert_eq!((st.reads, st.writes), (2, 1));
    assert_eq!(st.bytes_read, 4096 + 512);
    assert_eq!(st.bytes_written, 4096);
}

#[test]
fn section_5_2_6_get_id_returns_the_serial_nul_padded() {
    let cfg = BlkConfig {
        serial: b"disk-7".to_vec(),
        ..BlkConfig::default()
    };
    let mut r = rig_with(MemDisk::new(8), cfg, None);
    let d = r.data(&[0xee; 20]);
    let (t, s) = r.request(req::GET_ID, 0, &[(d, 20)], false);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 21)]);
    assert_eq!(r.status(s), status::OK);
    let mut want = [0u8; 20];
    want[..6].copy_from_slice(b"disk-7");
    assert_eq!(r.bytes(d, 20), want);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_2_read_beyond_capacity_is_ioerr() {
    let mut r = rig(MemDisk::new(16));
    for (sector, len) in [
        (16u64, 512u32),
        (15, 1024),
        (u64::MAX / 512, 512),
        (u64::MAX, 512),
    ] {
        let d = r.alloc(u64::from(len));
        let (t, s) = r.request(req::IN, sector, &[(d, len)], false);
        r.notify(0);
        let c = r.completions();
        assert_eq!(c[0].0, t);
        assert_eq!(r.status(s), status::IOERR, "sector {sector}");
    }
    let d = r.data(&[1; 512]);
    let (_, s) = r.request(req::OUT, 16, &[(d, 512)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::IOERR);
    assert_eq!(r.dev.stats().err_out_of_range, 5);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_2_write_to_read_only_disk_is_ioerr() {
    let disk = MemDisk::new(16).with(|s| {
        s.read_only = true;
        s.discard = true;
        s.write_zeroes = true;
    });
    let before = disk.state().data.clone();
    let cfg = BlkConfig {
        discard: true,
        write_zeroes: true,
        ..BlkConfig::default()
    };
    let mut r = rig_with(disk, cfg, None);
    let d = r.data(&[9; 512]);
    let (t, s) = r.request(req::OUT, 0, &[(d, 512)], true);
    let seg = r.data(&dwz(0, 1, 0));
    let (_, s2) = r.request(req::WRITE_ZEROES, 0, &[(seg, 16)], true);
    r.notify(0);
    assert_eq!(r.completions()[0], (t, 1));
    assert_eq!(r.status(s), status::IOERR);
    assert_eq!(r.status(s2), status::IOERR);
    assert_eq!(r.disk.state().data, before);
    assert_eq!(r.dev.stats().err_read_only, 2);
    // Reads still work.
    assert_eq!(r.read_ok(1, 512), before[512..1024]);
}

#[test]
fn section_5_2_6_header_shorter_than_16_bytes_is_ioerr() {
    let mut r = rig(MemDisk::new(16));
    let h = r.header(req::OUT, 0);
    let s = r.status_buf();
    let t = r.add(&[Buf::R(h, 15), Buf::W(s, 1)]);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 1)]);
    assert_eq!(r.status(s), status::IOERR);
    assert_eq!(r.dev.stats().err_bad_header, 1);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_header_in_the_wrong_direction_is_ioerr() {
    let mut r = rig(MemDisk::new(16));
    let h = r.header(req::IN, 0);
    let d = r.alloc(512);
    let s = r.status_buf();
    let t = r.add(&[Buf::W(h, 16), Buf::W(d, 512), Buf::W(s, 1)]);
    r.notify(0);
    let c = r.completions();
    assert_eq!(c[0].0, t);
    assert_eq!(r.status(s), status::IOERR);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_no_writable_status_byte_returns_the_chain_empty() {
    let mut r = rig(MemDisk::new(16));
    // No status at all: only the header and data, all readable.
    let h = r.header(req::OUT, 0);
    let d = r.data(&[3; 512]);
    let t1 = r.add(&[Buf::R(h, 16), Buf::R(d, 512)]);
    // Status in the wrong direction (readable).
    let h2 = r.header(req::FLUSH, 0);
    let s = r.status_buf();
    let t2 = r.add(&[Buf::R(h2, 16), Buf::R(s, 1)]);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t1, 0), (t2, 0)]);
    assert_eq!(r.status(s), 0xff, "a readable buffer is never written");
    assert_eq!(r.dev.stats().err_no_status, 2);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_status_byte_outside_guest_memory_returns_the_chain_empty() {
    let mut r = rig(MemDisk::new(16));
    let h = r.header(req::FLUSH, 0);
    let t = r.add(&[Buf::R(h, 16), Buf::W(0x20_0000, 1)]);
    // A data buffer outside memory, status fine: IOERR.
    let h2 = r.header(req::IN, 0);
    let s = r.status_buf();
    let t2 = r.add(&[Buf::R(h2, 16), Buf::W(0x20_0000, 512), Buf::W(s, 1)]);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 0), (t2, 1)]);
    assert_eq!(r.status(s), status::IOERR);
    next_request_works(&mut r);
}

/// A last writable buffer that wraps the address space has no status
/// byte: the chain comes back empty and the device keeps serving (it
/// panicked on the address arithmetic before).
#[test]
fn section_5_2_6_a_status_buffer_that_wraps_returns_the_chain_empty() {
    let mut r = rig(MemDisk::new(16));
    let h = r.header(req::FLUSH, 0);
    let t = r.add(&[Buf::R(h, 16), Buf::W(u64::MAX - 1, 16)]);
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 0)]);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_1_data_length_not_a_multiple_of_512_is_ioerr() {
    let mut r = rig(MemDisk::new(16));
    let before = r.disk.state().data.clone();
    let d = r.data(&[5; 700]);
    let (_, s1) = r.request(req::OUT, 0, &[(d, 700)], true);
    let d2 = r.alloc(100);
    let (t2, s2) = r.request(req::IN, 0, &[(d2, 100)], false);
    r.notify(0);
    let c = r.completions();
    assert_eq!(c[1], (t2, 1), "nothing was read");
    assert_eq!(r.status(s1), status::IOERR);
    assert_eq!(r.status(s2), status::IOERR);
    assert_eq!(r.disk.state().data, before);
    assert_eq!(r.dev.stats().err_misaligned, 2);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_1_more_segments_than_seg_max_is_ioerr() {
    let cfg = BlkConfig {
        seg_max: 4,
        size_max: 1024,
        ..BlkConfig::default()
    };
    let mut r = rig_with(MemDisk::new(16), cfg, None);
    let before = r.disk.state().data.clone();
    let segs: Vec<_> = (0..5).map(|_| (r.data(&[1; 512]), 512u32)).collect();
    let (_, s) = r.request(req::OUT, 0, &segs, true);
    // Exactly seg_max is fine.
    let ok: Vec<_> = (0..4).map(|i| (r.data(&[i; 512]), 512u32)).collect();
    let (_, s_ok) = r.request(req::OUT, 4, &ok, true);
    // A segment above size_max.
    let big = r.data(&[2; 2048]);
    let (_, s_big) = r.request(req::OUT, 8, &[(big, 2048)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::IOERR);
    assert_eq!(r.status(s_ok), status::OK);
    assert_eq!(r.status(s_big), status::IOERR);
    assert_eq!(r.disk.state().data[..2048], before[..2048]);
    assert_eq!(
        r.disk.state().data[8 * 512..12 * 512],
        before[8 * 512..12 * 512]
    );
    assert_eq!(r.dev.stats().err_segments, 2);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_1_without_seg_max_negotiated_long_chains_are_served_in_chunks() {
    let cfg = BlkConfig {
        seg_max: 2,
        ..BlkConfig::default()
    };
    let features = V1;
    let mut r = rig_with(MemDisk::new(64), cfg, Some(features));
    let p = pattern(512 * 20, 3);
    let segs: Vec<_> = p.chunks(512).map(|c| (r.data(c), 512u32)).collect();
    let (_, s) = r.request(req::OUT, 0, &segs, true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::OK);
    assert_eq!(r.disk.state().data[..p.len()], p[..]);
}

#[test]
fn section_5_2_6_unknown_types_and_unnegotiated_features_are_unsupp() {
    let disk = MemDisk::new(16).with(|s| {
        s.discard = true;
        s.write_zeroes = true;
    });
    let cfg = BlkConfig {
        discard: true,
        write_zeroes: true,
        ..BlkConfig::default()
    };
    // Only VERSION_1: no FLUSH, DISCARD, WRITE_ZEROES.
    let mut r = rig_with(disk, cfg, Some(V1));
    let mut st = vec![];
    for ty in [2u32, 7, 99, req::FLUSH, req::DISCARD, req::WRITE_ZEROES] {
        let seg = r.data(&dwz(0, 1, 0));
        let (_, s) = r.request(ty, 0, &[(seg, 16)], true);
        st.push(s);
    }
    r.notify(0);
    assert_eq!(r.completions().len(), 6);
    for s in st {
        assert_eq!(r.status(s), status::UNSUPP);
    }
    assert_eq!(r.dev.stats().unsupported, 6);
    assert!(r.disk.state().discarded.is_empty());
    next_request_works(&mut r);
}

fn dwz(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut v = sector.to_le_bytes().to_vec();
    v.extend_from_slice(&num.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v
}

/// QEMU's `-drive discard=ignore` (its default): DISCARD is offered, a
/// discard is checked and completed `OK` without reaching the disk (a hint,
/// §5.2.6.1), and WRITE_ZEROES with `UNMAP` still zeroes, without
/// unmapping. The backend need not support discard at all.
#[test]
fn section_5_2_6_1_ignored_discards_complete_ok_and_leave_the_disk_alone() {
    let disk = MemDisk::new(64).with(|s| {
        s.discard = false;
        s.write_zeroes = true;
    });
    let cfg = BlkConfig {
        discard: true,
        discard_unmap: false,
        write_zeroes: true,
        ..BlkConfig::default()
    };
    let mut r = rig_with(disk, cfg, None);
    r.disk.state().data[..1024].fill(0xaa);
    let run = |r: &mut blk_support::Rig, ty: u32, payload: Vec<u8>| {
        let d = r.data(&payload);
        let (_, s) = r.request(ty, 0, &[(d, payload.len() as u32)], true);
        r.notify(0);
        r.completions();
        r.status(s)
    };
    assert_eq!(run(&mut r, req::DISCARD, dwz(0, 2, 0)), status::OK);
    assert!(r.disk.state().discarded.is_empty());
    assert!(r.disk.state().data[..1024].iter().all(|&b| b == 0xaa));
    assert_eq!(r.dev.stats().discards, 1);
    // Still checked: past the capacity is an error.
    assert_eq!(run(&mut r, req::DISCARD, dwz(63, 8, 0)), status::IOERR);
    assert_eq!(run(&mut r, req::WRITE_ZEROES, dwz(0, 2, 1)), status::OK);
    assert_eq!(r.disk.state().zeroed, vec![(0, 1024, false)]);
    assert!(r.disk.state().data[..1024].iter().all(|&b| b == 0));
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_discard_and_write_zeroes_follow_the_segment_rules() {
    let disk = MemDisk::new(64).with(|s| {
        s.discard = true;
        s.write_zeroes = true;
    });
    let cfg = BlkConfig {
        discard: true,
        write_zeroes: true,
        max_dwz_sectors: 8,
        max_dwz_seg: 2,
        ..BlkConfig::default()
    };
    let mut r = rig_with(disk, cfg, None);
    let run = |r: &mut blk_support::Rig, ty: u32, payload: Vec<u8>| {
        let d = r.data(&payload);
        let (_, s) = r.request(ty, 0, &[(d, payload.len() as u32)], true);
        r.notify(0);
        r.completions();
        r.status(s)
    };
    let two = [dwz(0, 2, 0), dwz(10, 8, 0)].concat();
    assert_eq!(run(&mut r, req::DISCARD, two), status::OK);
    assert_eq!(r.disk.state().discarded, vec![(0, 1024), (5120, 4096)]);
    let wz = dwz(20, 4, 1);
    assert_eq!(run(&mut r, req::WRITE_ZEROES, wz), status::OK);
    assert_eq!(r.disk.state().zeroed, vec![(20 * 512, 2048, true)]);
    assert!(
        r.disk.state().data[20 * 512..24 * 512]
            .iter()
            .all(|&b| b == 0)
    );
    // §5.2.6.2: UNMAP on a discard, or an unknown flag: UNSUPP.
    assert_eq!(run(&mut r, req::DISCARD, dwz(0, 1, 1)), status::UNSUPP);
    assert_eq!(run(&mut r, req::WRITE_ZEROES, dwz(0, 1, 4)), status::UNSUPP);
    // Over max_discard_sectors, over max_discard_seg, past the capacity,
    // a payload that is not whole segments, an empty one: IOERR.
    assert_eq!(run(&mut r, req::DISCARD, dwz(0, 9, 0)), status::IOERR);
    let three = [dwz(0, 1, 0), dwz(1, 1, 0), dwz(2, 1, 0)].concat();
    assert_eq!(run(&mut r, req::DISCARD, three), status::IOERR);
    assert_eq!(run(&mut r, req::WRITE_ZEROES, dwz(60, 8, 0)), status::IOERR);
    assert_eq!(
        run(&mut r, req::DISCARD, dwz(0, 1, 0)[..12].to_vec()),
        status::IOERR
    );
    // A bad second segment: the first is not executed either.
    let n = r.disk.state().discarded.len();
    let bad_second = [dwz(30, 1, 0), dwz(u64::MAX, 1, 0)].concat();
    assert_eq!(run(&mut r, req::DISCARD, bad_second), status::IOERR);
    assert_eq!(r.disk.state().discarded.len(), n);
    let h = r.header(req::DISCARD, 0);
    let s = r.status_buf();
    r.add(&[Buf::R(h, 16), Buf::W(s, 1)]);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::IOERR);
    next_request_works(&mut r);
}

/// Issue 16, finding 6: the segment list is read from guest memory once.
/// A guest that rewrites segment 2 while segment 1 is being discarded
/// (here: from the backend's discard) changes nothing: both segments as
/// first read are executed and the request succeeds; before, the device
/// read the list twice, executed segment 1 and then failed on the new
/// segment 2.
#[test]
fn section_5_2_6_discard_segments_are_read_once() {
    let disk = MemDisk::new(64).with(|s| s.discard = true);
    let cfg = BlkConfig {
        discard: true,
        discard_unmap: true,
        max_dwz_seg: 2,
        ..BlkConfig::default()
    };
    let mut r = rig_with(disk, cfg, None);
    let two = [dwz(0, 2, 0), dwz(10, 4, 0)].concat();
    let d = r.data(&two);
    r.disk.state().on_discard = Some((r.mem, GuestAddress(d + 16), dwz(u64::MAX, 1, 0)));
    let (_, s) = r.request(req::DISCARD, 0, &[(d, two.len() as u32)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::OK);
    assert_eq!(r.disk.state().discarded, vec![(0, 1024), (5120, 2048)]);
    r.disk.state().on_discard = None;
    next_request_works(&mut r);
}

#[test]
fn section_2_7_5_malformed_chain_is_returned_empty_and_the_queue_goes_on() {
    let mut r = rig(MemDisk::new(16));
    let h = r.header(req::IN, 0);
    let d = r.alloc(512);
    let s = r.status_buf();
    let t = r.add(&[Buf::R(h, 16), Buf::W(d, 512), Buf::W(s, 1)]);
    // Make the last descriptor link back to the head: a loop.
    let head = t.head();
    let table = blk_support::layout(0).desc_table().0;
    let last = (head + 2) as u64;
    r.mem
        .write_u16(GuestAddress(table + last * 16 + 12), 1 | 2)
        .unwrap();
    r.mem
        .write_u16(GuestAddress(table + last * 16 + 14), head)
        .unwrap();
    r.notify(0);
    assert_eq!(r.completions(), vec![(t, 0)]);
    assert_eq!(r.dev.stats().err_no_status, 1);
    // A loop is found by walking into it: its head is loaded again, and
    // nothing read is used (the chain is refused).
    let again = r.fetch.take_double_fetches();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].addr, table + u64::from(head) * 16);
    next_request_works(&mut r);
}

#[test]
fn section_5_2_6_2_flush_is_published_only_after_the_backend_flushed() {
    let disk = MemDisk::new(16);
    let mut r = rig(disk);
    let used_idx = blk_support::layout(0).used_idx();
    r.disk.state().probe = Some((r.mem, used_idx));
    // Two writes, then a FLUSH, in one batch, then a FLUSH alone.
    let a = r.data(&[1; 512]);
    let b = r.data(&[2; 512]);
    r.request(req::OUT, 0, &[(a, 512)], true);
    r.request(req::OUT, 1, &[(b, 512)], true);
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    assert_eq!(r.completions().len(), 3);
    assert_eq!(r.status(s), status::OK);
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    assert_eq!(r.completions().len(), 1);
    assert_eq!(r.status(s), status::OK);
    let st = r.disk.state();
    // At each flush the driver could not yet see the FLUSH's used entry:
    // 0 entries during the first batch, 3 during the second.
    assert_eq!(st.used_idx_at_flush, vec![0, 3]);
    assert_eq!(st.unflushed, 0);
    assert_eq!(r.dev.stats().flushes, 2);
}

#[test]
fn section_5_2_6_2_a_failed_flush_is_ioerr() {
    let mut r = rig(MemDisk::new(16));
    r.disk.state().fail_flush = true;
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::UNSUPP, "Unsupported from the backend");
    // Issue 16, finding 4: sticky. The backend would succeed now, but what
    // its cache held may be gone.
    assert!(!r.disk.state().fail_flush);
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::IOERR);
    // Writeback writes still complete: they promise nothing before a FLUSH.
    let d = r.data(&[7; 512]);
    let (_, s) = r.request(req::OUT, 0, &[(d, 512)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::OK);
}

/// Issue 16, finding 4: the flush made when the driver turns writeback off
/// fails; a config write has no status to carry it, so every later write
/// (writethrough: stable before completion, §5.2.6.2) fails instead of
/// completing on a disk that lost its cache.
#[test]
fn section_5_2_6_2_a_failed_flush_at_the_switch_to_writethrough_fails_every_later_write() {
    let mut r = rig(MemDisk::new(16));
    let d = r.data(&[1; 512]);
    let (_, s) = r.request(req::OUT, 0, &[(d, 512)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::OK);
    r.disk.state().fail_flush = true;
    r.dev.write_config(32, &[0]);
    assert!(!r.dev.writeback());
    for sector in 1..4 {
        let d = r.data(&[2; 512]);
        let (_, s) = r.request(req::OUT, sector, &[(d, 512)], true);
        r.notify(0);
        r.completions();
        assert_eq!(r.status(s), status::IOERR, "write to sector {sector}");
    }
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s), status::IOERR);
}

/// Writes `n` sectors one request each; returns the backend's flushes.
fn flushes_for_writes(r: &mut blk_support::Rig, n: u64) -> u64 {
    let before = r.disk.state().flushes;
    for i in 0..n {
        let d = r.data(&[i as u8; 512]);
        let (_, s) = r.request(req::OUT, i, &[(d, 512)], true);
        r.notify(0);
        r.completions();
        assert_eq!(r.status(s), status::OK);
        assert_eq!(
            r.disk.state().unflushed,
            0,
            "write {i} stable on completion"
        );
    }
    r.disk.state().flushes - before
}

#[test]
fn section_5_2_6_2_without_flush_negotiated_every_write_is_stable() {
    // A backend that ignores set_write_cache: the device flushes itself.
    let disk = MemDisk::new(16).with(|s| s.honours_writethrough = false);
    let mut r = rig_with(disk, BlkConfig::default(), Some(V1));
    assert!(!r.dev.writeback());
    assert_eq!(flushes_for_writes(&mut r, 4), 4);
    assert_eq!(r.dev.stats().writethrough_flushes, 4);
    let mut wb = [0u8];
    r.dev.read_config(32, &mut wb);
    assert_eq!(wb, [0], "§5.2.5.1: writeback reads 0 without FLUSH");
    // A backend that takes writethrough on itself: one flush per write, by
    // the backend, none doubled by the device.
    let mut r = rig_with(MemDisk::new(16), BlkConfig::default(), Some(V1));
    assert_eq!(r.disk.state().set_cache_calls.last(), Some(&false));
    assert_eq!(flushes_for_writes(&mut r, 4), 4);
    assert_eq!(r.dev.stats().writethrough_flushes, 0);
}

#[test]
fn section_5_2_5_writeback_byte_switches_the_cache_mode() {
    let disk = MemDisk::new(16).with(|s| s.honours_writethrough = false);
    let mut r = rig(disk);
    assert!(r.dev.writeback());
    let before = r.disk.state().flushes;
    let d = r.data(&[1; 512]);
    r.request(req::OUT, 0, &[(d, 512)], true);
    r.notify(0);
    r.completions();
    assert_eq!(
        r.disk.state().flushes,
        before,
        "writeback: no flush per write"
    );
    assert_eq!(r.disk.state().unflushed, 1);
    // The driver turns writeback off (§5.2.5, CONFIG_WCE): cached data is
    // flushed at once, then every write is stable when it completes.
    r.dev.write_config(32, &[0]);
    assert!(!r.dev.writeback());
    assert_eq!(r.disk.state().unflushed, 0);
    assert_eq!(r.disk.state().set_cache_calls.last(), Some(&false));
    assert_eq!(flushes_for_writes(&mut r, 3), 3);
    // Read-only fields ignore writes.
    r.dev.write_config(0, &[0xff; 8]);
    r.dev.write_config(12, &[0; 4]);
    let mut c = [0u8; 16];
    r.dev.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c[..8].try_into().unwrap()), 16);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 126);
    r.dev.write_config(32, &[1]);
    assert!(r.dev.writeback());
    // Reset restores the initial mode.
    r.dev.write_config(32, &[0]);
    r.dev.reset();
    let mut wb = [0u8];
    r.dev.read_config(32, &mut wb);
    assert_eq!(wb, [1]);
}

#[test]
fn section_2_7_10_a_batch_publishes_once_and_notifies_once() {
    let mut r = rig(MemDisk::new(64));
    let mut st = vec![];
    for i in 0..8 {
        let d = r.alloc(512);
        st.push(r.request(req::IN, i, &[(d, 512)], false).1);
    }
    let served = r.notify(0);
    assert_eq!(served.completed, 8);
    assert!(served.interrupt);
    assert_eq!(r.completions().len(), 8);
    assert!(st.iter().all(|&s| r.status(s) == status::OK));
    let stats = r.dev.stats();
    assert_eq!((stats.batches, stats.notifications), (1, 1));
    // An empty notification is no batch and no interrupt.
    let served = r.notify(0);
    assert_eq!(served.completed, 0);
    assert!(!served.interrupt);
}

#[test]
fn section_2_7_7_suppressed_interrupts_are_counted() {
    let features = r_features_without_event_idx();
    let mut r = rig_with(MemDisk::new(16), BlkConfig::default(), Some(features));
    let layout = blk_support::layout(0);
    r.mem
        .write_u16(layout.avail_flags(), AvailFlags::NO_INTERRUPT.bits())
        .unwrap();
    let d = r.alloc(512);
    r.request(req::IN, 0, &[(d, 512)], false);
    let served = r.notify(0);
    assert_eq!(served.completed, 1);
    assert!(!served.interrupt);
    assert_eq!(r.dev.stats().notifications_suppressed, 1);
}

fn r_features_without_event_idx() -> u64 {
    V1 | BlkFeatures::FLUSH.bits() | BlkFeatures::SEG_MAX.bits()
}

#[test]
fn section_5_2_3_mq_queues_are_served_independently() {
    let cfg = BlkConfig {
        num_queues: 2,
        ..BlkConfig::default()
    };
    let mut r = rig_with(MemDisk::new(16), cfg, None);
    let p = pattern(512, 8);
    let d = r.data(&p);
    let h = r.header(req::OUT, 2);
    let s = r.status_buf();
    let t = r.add_on(1, &[Buf::R(h, 16), Buf::R(d, 512), Buf::W(s, 1)]);
    assert_eq!(r.notify(0).completed, 0);
    assert_eq!(r.notify(1).completed, 1);
    assert_eq!(r.completions_on(1), vec![(t, 1)]);
    assert_eq!(r.read_ok(2, 512), p);
    assert!(matches!(
        r.dev.queue_notify(2),
        Err(DeviceError::NoSuchQueue { queue: 2 })
    ));
}

#[test]
fn hostile_avail_index_is_a_device_error_not_a_panic() {
    let mut r = rig(MemDisk::new(16));
    let layout = blk_support::layout(0);
    r.mem.store_u16_release(layout.avail_idx(), 1000).unwrap();
    assert!(matches!(
        r.dev.queue_notify(0),
        Err(DeviceError::Queue { queue: 0, .. })
    ));
}

#[test]
fn notify_before_activation_is_an_error() {
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x1000,
    )));
    let mut dev = Blk::new(MemDisk::new(8), &*mem, BlkConfig::default()).unwrap();
    assert_eq!(dev.queue_notify(0), Err(DeviceError::NotActivated));
}

#[test]
fn a_device_over_a_boxed_backend_is_send_for_the_harness() {
    fn is_send<T: Send>() {}
    is_send::<
        Blk<
            Box<dyn backends::block::BlockBackend + Send>,
            &'static virtio_core::testing::OwnedMemory,
        >,
    >();
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x1000,
    )));
    let b: Box<dyn backends::block::BlockBackend + Send> = Box::new(MemDisk::new(8));
    let dev: Box<dyn VirtioDevice + Send> =
        Box::new(Blk::new(b, &*mem, BlkConfig::default()).unwrap());
    assert_eq!(dev.device_type(), virtio_core::features::DeviceType::Blk);
}

#[test]
fn section_2_7_10_event_idx_suppression_is_counted() {
    let mut r = rig(MemDisk::new(16));
    let layout = blk_support::layout(0);
    // The driver wants an interrupt only after used entry 5.
    r.mem.write_u16(layout.used_event(), 5).unwrap();
    let d = r.alloc(512);
    r.request(req::IN, 0, &[(d, 512)], false);
    let served = r.notify(0);
    assert_eq!(served.completed, 1);
    assert!(!served.interrupt);
    assert_eq!(r.dev.stats().notifications_suppressed, 1);
}

#[test]
fn section_5_2_5_writeback_written_before_driver_ok_takes_effect_at_activation() {
    let disk = MemDisk::new(16).with(|s| s.honours_writethrough = false);
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x10_0000,
    )));
    let mut dev = Blk::new(disk.clone(), &*mem, BlkConfig::default()).unwrap();
    let features = dev.device_features();
    // Before FEATURES_OK a write is void (§5.2.5: CONFIG_WCE not yet
    // negotiated); after it, it holds until activation.
    dev.write_config(32, &[0]);
    let mut wb = [9u8];
    dev.read_config(32, &mut wb);
    assert_eq!(wb, [1]);
    dev.features_ok(features);
    dev.write_config(32, &[0]);
    dev.activate(
        features,
        vec![virtio_devices::device::QueueConfig {
            layout: Some(blk_support::layout(0)),
        }],
    )
    .unwrap();
    assert!(!dev.writeback());
    assert_eq!(disk.state().set_cache_calls.last(), Some(&false));
    // Without CONFIG_WCE negotiated, a write is void.
    dev.reset();
    dev.features_ok(features & !BlkFeatures::CONFIG_WCE.bits());
    dev.write_config(32, &[0]);
    dev.activate(
        features & !BlkFeatures::CONFIG_WCE.bits(),
        vec![virtio_devices::device::QueueConfig {
            layout: Some(blk_support::layout(0)),
        }],
    )
    .unwrap();
    assert!(dev.writeback());
}

fn avail_event(r: &blk_support::Rig) -> u16 {
    r.mem
        .load_u16_acquire(blk_support::layout(0).avail_event())
        .unwrap()
}

/// §2.7.10: while the transport polls the ring (`set_polling(true)`), a
/// served queue leaves `avail_event` behind, so a driver that keeps adding
/// requests is not asked to notify; when polling stops, the device asks
/// again (`avail_event` = its next index) and serves what arrived meanwhile.
#[test]
fn section_2_7_10_while_the_transport_polls_the_ring_notifications_stay_off() {
    let mut r = rig(MemDisk::new(16));
    let b = r.alloc(512);
    r.request(req::IN, 0, &[(b, 512)], false);
    r.notify(0);
    assert_eq!(avail_event(&r), 1, "notifications on after serving");
    assert!(r.dev.set_polling(true).unwrap().is_ok());
    for i in 1..4u64 {
        r.request(req::IN, i, &[(b, 512)], false);
        assert_eq!(r.notify(0).completed, 1);
        assert_eq!(avail_event(&r), 1, "left behind while polled");
    }
    // Added while polled, not yet seen when polling stops.
    r.request(req::IN, 5, &[(b, 512)], false);
    let served = r.dev.set_polling(false).unwrap().unwrap();
    assert_eq!(served.completed, 1, "what arrived meanwhile");
    assert_eq!(avail_event(&r), 5, "notifications on again");
    assert_eq!(r.completions().len(), 5);
}

#[test]
fn section_5_2_5_1_writeback_reads_zero_from_features_ok_without_flush() {
    let mem = Box::leak(Box::new(virtio_core::testing::OwnedMemory::new(
        GuestAddress(0),
        0x10_0000,
    )));
    let mut dev = Blk::new(MemDisk::new(16), &*mem, BlkConfig::default()).unwrap();
    let features = dev.device_features() & !BlkFeatures::FLUSH.bits();
    assert_ne!(features & BlkFeatures::CONFIG_WCE.bits(), 0);
    // The driver reads writeback after FEATURES_OK, before DRIVER_OK.
    dev.features_ok(features);
    let mut wb = [9u8];
    dev.read_config(32, &mut wb);
    assert_eq!(wb, [0], "CONFIG_WCE without FLUSH: writeback starts at 0");
    // A reset and a negotiation with FLUSH brings the host's mode back.
    dev.reset();
    dev.features_ok(dev.device_features());
    dev.read_config(32, &mut wb);
    assert_eq!(wb, [1]);
}

#[test]
fn section_5_2_6_2_read_only_disk_still_answers_unknown_flags_unsupp() {
    let disk = MemDisk::new(16).with(|s| {
        s.read_only = true;
        s.discard = true;
        s.write_zeroes = true;
    });
    let cfg = BlkConfig {
        discard: true,
        write_zeroes: true,
        ..BlkConfig::default()
    };
    let mut r = rig_with(disk, cfg, None);
    let bad = r.data(&dwz(0, 1, 1 << 5));
    let (_, s1) = r.request(req::WRITE_ZEROES, 0, &[(bad, 16)], true);
    let unmap = r.data(&dwz(0, 1, 1));
    let (_, s2) = r.request(req::DISCARD, 0, &[(unmap, 16)], true);
    let fine = r.data(&dwz(0, 1, 0));
    let (_, s3) = r.request(req::DISCARD, 0, &[(fine, 16)], true);
    r.notify(0);
    r.completions();
    assert_eq!(r.status(s1), status::UNSUPP, "unknown flag");
    assert_eq!(r.status(s2), status::UNSUPP, "discard with unmap");
    assert_eq!(
        r.status(s3),
        status::IOERR,
        "a valid discard on a read-only disk"
    );
}
