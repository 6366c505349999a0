//! `backends::block::raw::RawFile` against real files: vectored I/O, the
//! three cache modes (O_DIRECT with and without bouncing), discard and
//! write-zeroes, errors.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use backends::IoSegment;
use backends::block::raw::{Cache, RawFile, RawOptions};
use backends::block::{BlockBackend, BlockError};

fn scratch(name: &str, len: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("block_raw");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(len).unwrap();
    p
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` split into segments at the given cut points.
fn write_split(d: &mut impl BlockBackend, offset: u64, data: &mut [u8], cuts: &[usize]) {
    let mut segs = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain([data.len()].iter()) {
        segs.push(IoSegment {
            // SAFETY: `prev <= c <= data.len()`.
            ptr: unsafe { data.as_mut_ptr().add(prev) },
            len: c - prev,
        });
        prev = c;
    }
    // SAFETY: the segments cover a live local buffer.
    unsafe { d.write_vectored(offset, &segs) }.unwrap();
}

fn read_split(d: &mut impl BlockBackend, offset: u64, len: usize, cuts: &[usize]) -> Vec<u8> {
    let mut out = vec![0xee; len];
    let mut segs = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain([len].iter()) {
        segs.push(IoSegment {
            // SAFETY: `prev <= c <= len`.
            ptr: unsafe { out.as_mut_ptr().add(prev) },
            len: c - prev,
        });
        prev = c;
    }
    // SAFETY: the segments cover a live local buffer.
    unsafe { d.read_vectored(offset, &segs) }.unwrap();
    out
}

fn round_trip(cache: Cache, name: &str) {
    let p = scratch(name, 1 << 20);
    let mut d = RawFile::open(
        &p,
        RawOptions {
            read_only: false,
            cache,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.size(), 1 << 20);
    // Misaligned offset and segments (bounced under O_DIRECT), spanning
    // more than one bounce window.
    let mut a = pattern(300_001, 3);
    write_split(&mut d, 4097, &mut a, &[1, 511, 4096, 70_000]);
    // Aligned: straight through even under O_DIRECT (a page-aligned Vec
    // is not guaranteed, so this may bounce too; both must work).
    let mut b = pattern(8192, 9);
    write_split(&mut d, 512 * 1024, &mut b, &[4096]);
    d.flush().unwrap();
    assert_eq!(read_split(&mut d, 4097, a.len(), &[7, 9000]), a);
    assert_eq!(read_split(&mut d, 512 * 1024, b.len(), &[]), b);
    drop(d);
    let f = std::fs::read(&p).unwrap();
    assert_eq!(&f[4097..4097 + a.len()], &a[..]);
    assert!(f[..4097].iter().all(|&x| x == 0));
    assert_eq!(&f[512 * 1024..512 * 1024 + 8192], &b[..]);
}

#[test]
fn writeback_round_trip() {
    round_trip(Cache::Writeback, "wb.img");
}

#[test]
fn writethrough_round_trip() {
    round_trip(Cache::Writethrough, "wt.img");
}

#[test]
fn cache_none_round_trip_with_bouncing() {
    round_trip(Cache::None, "direct.img");
    let p = scratch("direct2.img", 1 << 20);
    let mut d = RawFile::open(
        &p,
        RawOptions {
            read_only: false,
            cache: Cache::None,
            ..Default::default()
        },
    )
    .unwrap();
    let a = d.direct_alignment();
    assert!(a >= 512 && a.is_power_of_two());
    // Aligned memory, offset and lengths: straight to the device.
    let layout = std::alloc::Layout::from_size_align(2 * 4096, 4096).unwrap();
    // SAFETY: a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    for i in 0..8192 {
        // SAFETY: inside the allocation.
        unsafe { ptr.add(i).write(i as u8 ^ 0x5a) };
    }
    // SAFETY: inside the allocation.
    let second = unsafe { ptr.add(4096) };
    let segs = [
        IoSegment { ptr, len: 4096 },
        IoSegment {
            ptr: second,
            len: 4096,
        },
    ];
    // SAFETY: the allocation is live and unborrowed.
    unsafe { d.write_vectored(8192, &segs) }.unwrap();
    d.flush().unwrap();
    // SAFETY: as above.
    unsafe { ptr.write_bytes(0, 8192) };
    // SAFETY: as above.
    unsafe { d.read_vectored(8192, &segs) }.unwrap();
    for i in 0..8192 {
        // SAFETY: inside the allocation.
        assert_eq!(unsafe { ptr.add(i).read() }, i as u8 ^ 0x5a);
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    let f = std::fs::read(&p).unwrap();
    assert!(
        f[8192..16384]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u8 ^ 0x5a)
    );
}

#[test]
fn cache_none_on_tmpfs_is_a_clear_error() {
    let dir = std::path::Path::new("/dev/shm");
    if !dir.is_dir() {
        println!("skip: no /dev/shm");
        return;
    }
    let p = dir.join(format!("blkback-{}.img", std::process::id()));
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    let r = RawFile::open(
        &p,
        RawOptions {
            read_only: false,
            cache: Cache::None,
            ..Default::default()
        },
    );
    std::fs::remove_file(&p).unwrap();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("cache=none") && e.contains("writeback"), "{e}");
}

#[test]
fn discard_punches_holes_and_write_zeroes_zeroes() {
    let p = scratch("holes.img", 4 << 20);
    let mut d = RawFile::open(&p, RawOptions::default()).unwrap();
    let mut data = vec![0xab; 4 << 20];
    write_split(&mut d, 0, &mut data, &[]);
    d.flush().unwrap();
    let before = std::fs::metadata(&p).unwrap().blocks();
    assert!(d.supports_discard());
    d.discard(1 << 20, 1 << 20).unwrap();
    d.flush().unwrap();
    let after = std::fs::metadata(&p).unwrap().blocks();
    assert!(after < before, "blocks {before} -> {after}");
    d.write_zeroes(100, 1000, false).unwrap();
    d.write_zeroes(3 << 20, 4096, true).unwrap();
    let r = read_split(&mut d, 0, 4 << 20, &[]);
    assert!(r[..100].iter().all(|&x| x == 0xab));
    assert!(r[100..1100].iter().all(|&x| x == 0));
    assert!(r[1100..1 << 20].iter().all(|&x| x == 0xab));
    assert!(r[1 << 20..2 << 20].iter().all(|&x| x == 0));
    assert!(r[3 << 20..(3 << 20) + 4096].iter().all(|&x| x == 0));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4 << 20);
}

#[test]
fn out_of_range_and_read_only_are_errors() {
    let p = scratch("ro.img", 1000); // 1000 bytes: one whole sector
    let mut d = RawFile::open(
        &p,
        RawOptions {
            read_only: true,
            cache: Cache::Writeback,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.size(), 512);
    let mut b = [0u8; 16];
    let s = [IoSegment {
        ptr: b.as_mut_ptr(),
        len: b.len(),
    }];
    // SAFETY: a live local buffer.
    let e = unsafe { d.write_vectored(0, &s) }.unwrap_err();
    assert!(matches!(e, BlockError::ReadOnly), "{e}");
    // SAFETY: as above.
    let e = unsafe { d.read_vectored(500, &s) }.unwrap_err();
    assert!(matches!(e, BlockError::OutOfRange { .. }), "{e}");
    assert!(matches!(d.discard(0, 512), Err(BlockError::ReadOnly)));
    assert!(d.flush().is_ok());
    let e = RawFile::open("/nonexistent/x.img", RawOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.img"), "{e}");
}

#[test]
fn backends_can_move_to_an_io_thread() {
    fn is_send<T: Send>() {}
    is_send::<RawFile>();
    is_send::<backends::block::qcow2::Qcow2>();
    is_send::<backends::block::memory::MemoryDisk>();
    is_send::<backends::block::faulty::Faulty<RawFile>>();
}
