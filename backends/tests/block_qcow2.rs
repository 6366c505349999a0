//! `backends::block::qcow2::Qcow2` against QEMU's own tool: images made by
//! `qemu-img create` open; after our writes, discards and write-zeroes
//! `qemu-img check` finds no errors and `qemu-img compare` finds no
//! difference from the same requests applied to a raw file.
//!
//! Skips with a printed reason when `qemu-img` is missing (Debian's
//! `qemu-utils`), fails instead when `HARNESS_REQUIRE_QEMU=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use backends::IoSegment;
use backends::block::qcow2::Qcow2;
use backends::block::raw::{RawFile, RawOptions};
use backends::block::{BlockBackend, BlockError};

fn qemu_img_or_skip(test: &str) -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{test}: qemu-img is missing and HARNESS_REQUIRE_QEMU=1");
        }
        println!("skip {test}: qemu-img not found (Debian package qemu-utils)");
    }
    ok
}

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("block_qcow2")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    let text = format!(
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn create_qcow2(path: &Path, extra: &[&str]) {
    let p = path.to_str().unwrap();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[p, "64M"]);
    let (ok, text) = qemu_img(&args);
    assert!(ok, "{text}");
}

fn create_raw(path: &Path) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

fn write(d: &mut impl BlockBackend, offset: u64, data: &mut [u8]) {
    // Two segments, split off-centre, so the vectored path is used.
    let cut = data.len() / 3;
    let (a, b) = data.split_at_mut(cut);
    let segs = [
        IoSegment {
            ptr: a.as_mut_ptr(),
            len: a.len(),
        },
        IoSegment {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        },
    ];
    // SAFETY: the segments cover a live local buffer.
    unsafe { d.write_vectored(offset, &segs) }.unwrap();
}

fn read(d: &mut impl BlockBackend, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0xee; len];
    let segs = [IoSegment {
        ptr: out.as_mut_ptr(),
        len,
    }];
    // SAFETY: the segment covers a live local buffer.
    unsafe { d.read_vectored(offset, &segs) }.unwrap();
    out
}

/// The same requests on any backend: scattered writes, some across 64 KiB
/// cluster boundaries, some unaligned; a discard and write-zeroes.
fn workload(d: &mut impl BlockBackend) {
    const C: u64 = 64 * 1024;
    let writes: &[(u64, usize, u8)] = &[
        (0, 4096, 1),
        (C - 100, 300, 2),
        (3 * C + 17, 2 * C as usize + 5, 3),
        (10 << 20, 1 << 20, 4),
        ((32 << 20) - 512, 1536, 5),
        ((64 << 20) - 4096, 4096, 6),
        (7 * C, 3 * C as usize, 7),
    ];
    for &(off, len, seed) in writes {
        write(d, off, &mut pattern(len, seed));
    }
    d.write_zeroes(8 * C, C, false).unwrap();
    d.write_zeroes(3 * C + 100, 50, false).unwrap();
    d.discard((10 << 20) + C, 2 * C).unwrap();
    d.write_zeroes(9 * C, C, true).unwrap();
    d.flush().unwrap();
}

#[test]
fn qcow2_from_qemu_img_passes_check_and_compares_equal_to_raw() {
    let t = "qcow2_check_compare";
    if !qemu_img_or_skip(t) {
        return;
    }
    let dir = scratch(t);
    let (q, r) = (dir.join("x.qcow2"), dir.join("same-writes.raw"));
    create_qcow2(&q, &[]);
    create_raw(&r);
    let mut qd = Qcow2::open(&q, false).unwrap();
    assert_eq!(qd.size(), 64 << 20);
    let mut rd = RawFile::open(&r, RawOptions::default()).unwrap();
    workload(&mut qd);
    workload(&mut rd);
    // Reads agree before and after reopening.
    for &(off, len) in &[(0u64, 1 << 20), (10 << 20, 3 << 20), ((63 << 20), 1 << 20)] {
        assert_eq!(read(&mut qd, off, len), read(&mut rd, off, len), "at {off}");
    }
    drop(qd);
    drop(rd);
    let (ok, text) = qemu_img(&["check", q.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        q.to_str().unwrap(),
        r.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let mut qd = Qcow2::open(&q, true).unwrap();
    let mut rd = RawFile::open(&r, RawOptions::default()).unwrap();
    assert_eq!(read(&mut qd, 0, 12 << 20), read(&mut rd, 0, 12 << 20));
}

#[test]
fn qcow2_with_a_backing_file_reads_through_and_writes_on_top() {
    let t = "qcow2_backing";
    if !qemu_img_or_skip(t) {
        return;
    }
    let dir = scratch(t);
    let (base, top, r) = (
        dir.join("base.qcow2"),
        dir.join("top.qcow2"),
        dir.join("same.raw"),
    );
    create_qcow2(&base, &[]);
    create_raw(&r);
    let mut rd = RawFile::open(&r, RawOptions::default()).unwrap();
    {
        let mut b = Qcow2::open(&base, false).unwrap();
        write(&mut b, 1000, &mut pattern(200_000, 9));
        b.flush().unwrap();
    }
    write(&mut rd, 1000, &mut pattern(200_000, 9));
    create_qcow2(&top, &["-b", base.to_str().unwrap(), "-F", "qcow2"]);
    let mut td = Qcow2::open(&top, false).unwrap();
    assert_eq!(read(&mut td, 1000, 200_000), pattern(200_000, 9));
    write(&mut td, 70_000, &mut pattern(5000, 11));
    write(&mut rd, 70_000, &mut pattern(5000, 11));
    td.flush().unwrap();
    drop(td);
    drop(rd);
    for img in [&base, &top] {
        let (ok, text) = qemu_img(&["check", img.to_str().unwrap()]);
        assert!(ok, "{text}");
    }
    let (ok, text) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        top.to_str().unwrap(),
        r.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
}

#[test]
fn qcow2_read_only_and_out_of_range_are_errors() {
    let t = "qcow2_errors";
    if !qemu_img_or_skip(t) {
        return;
    }
    let dir = scratch(t);
    let q = dir.join("ro.qcow2");
    create_qcow2(&q, &[]);
    let mut d = Qcow2::open(&q, true).unwrap();
    let mut b = [0u8; 8];
    let s = [IoSegment {
        ptr: b.as_mut_ptr(),
        len: 8,
    }];
    // SAFETY: a live local buffer.
    let e = unsafe { d.write_vectored(0, &s) }.unwrap_err();
    assert!(matches!(e, BlockError::ReadOnly), "{e}");
    // SAFETY: as above.
    let e = unsafe { d.read_vectored((64 << 20) - 4, &s) }.unwrap_err();
    assert!(matches!(e, BlockError::OutOfRange { .. }), "{e}");
    assert!(matches!(d.discard(0, 512), Err(BlockError::ReadOnly)));
    // Not a qcow2 image at all.
    let junk = dir.join("junk.qcow2");
    std::fs::write(&junk, vec![0x55; 4096]).unwrap();
    let e = Qcow2::open(&junk, false).unwrap_err();
    assert!(e.to_string().contains("junk.qcow2"), "{e}");
}
