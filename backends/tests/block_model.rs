//! Property tests: random sequences of write / read / discard /
//! write-zeroes / flush / crash / cache switches on `MemoryDisk` and
//! `RawFile` (page cache and O_DIRECT), bare and under `Faulty`, against a
//! model with a volatile and a stable image. Reads always match the model;
//! out-of-range and read-only requests are errors that change nothing,
//! never panics.
//!
//! The flush rule (§5.2.6.2): after a completed flush every earlier write
//! survives a crash; in writethrough mode every completed write does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use backends::IoSegment;
use backends::block::faulty::Faulty;
use backends::block::memory::MemoryDisk;
use backends::block::raw::{Cache, RawFile, RawOptions};
use backends::block::{BlockBackend, BlockError};
use proptest::prelude::*;

const SIZE: u64 = 64 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write {
        off: u64,
        len: usize,
        seed: u8,
        cut: usize,
    },
    Read {
        off: u64,
        len: usize,
        cut: usize,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Zeroes {
        off: u64,
        len: u64,
        unmap: bool,
    },
    Flush,
    Crash,
    WriteCache(bool),
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..SIZE,
        1 => (0..8u64).prop_map(|s| s * 8192),
        1 => SIZE - 600..SIZE + 600,
        1 => Just(u64::MAX - 3),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), 0..9000usize, any::<u8>(), 0..9000usize)
            .prop_map(|(off, len, seed, cut)| Op::Write { off, len, seed, cut }),
        3 => (offset(), 0..9000usize, 0..9000usize)
            .prop_map(|(off, len, cut)| Op::Read { off, len, cut }),
        1 => (offset(), 0..20_000u64).prop_map(|(off, len)| Op::Discard { off, len }),
        1 => (offset(), 0..20_000u64, any::<bool>())
            .prop_map(|(off, len, unmap)| Op::Zeroes { off, len, unmap }),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
        1 => any::<bool>().prop_map(Op::WriteCache),
    ]
}

/// A backend under test, and whether it has a volatile cache to lose.
trait Subject: BlockBackend {
    const VOLATILE: bool;
    fn crash(&mut self) {}
}
impl Subject for MemoryDisk {
    const VOLATILE: bool = false;
}
impl Subject for RawFile {
    const VOLATILE: bool = false;
}
impl<B: BlockBackend> Subject for Faulty<B> {
    const VOLATILE: bool = true;
    fn crash(&mut self) {
        Faulty::crash(self)
    }
}

/// What the disk holds: `current` is what reads see, `stable` what a
/// crash keeps.
struct Model {
    current: Vec<u8>,
    stable: Vec<u8>,
    writeback: bool,
}

fn in_range(off: u64, len: u64) -> bool {
    off.checked_add(len).is_some_and(|e| e <= SIZE)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn two_segments(buf: &mut [u8], cut: usize) -> [IoSegment; 2] {
    let cut = cut.min(buf.len());
    let (a, b) = buf.split_at_mut(cut);
    [
        IoSegment {
            ptr: a.as_mut_ptr(),
            len: a.len(),
        },
        IoSegment {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        },
    ]
}

fn run<S: Subject>(d: &mut S, ops: &[Op], read_only: bool) -> Result<(), TestCaseError> {
    let mut m = Model {
        current: vec![0; SIZE as usize],
        stable: vec![0; SIZE as usize],
        writeback: d.write_cache(),
    };
    for (i, op) in ops.iter().enumerate() {
        let changed: Option<(u64, u64, Option<Vec<u8>>)> = match *op {
            Op::Write {
                off,
                len,
                seed,
                cut,
            } => {
                let mut data = pattern(len, seed);
                let segs = two_segments(&mut data, cut);
                // SAFETY: the segments cover a live local buffer.
                let r = unsafe { d.write_vectored(off, &segs) };
                check(r, off, len as u64, read_only, i)?;
                Some((off, len as u64, Some(data)))
            }
            Op::Read { off, len, cut } => {
                let mut out = vec![0xee; len];
                let segs = two_segments(&mut out, cut);
                // SAFETY: the segments cover a live local buffer.
                let r = unsafe { d.read_vectored(off, &segs) };
                if in_range(off, len as u64) {
                    prop_assert!(r.is_ok(), "op {i}: {op:?}: {r:?}");
                    let o = off as usize;
                    prop_assert!(out == m.current[o..o + len], "op {i}: {op:?}: data differs");
                } else {
                    prop_assert!(
                        matches!(r, Err(BlockError::OutOfRange { .. })),
                        "op {i}: {op:?}: {r:?}"
                    );
                }
                None
            }
            Op::Discard { off, len } => {
                let r = d.discard(off, len);
                check(r, off, len, read_only, i)?;
                Some((off, len, None))
            }
            Op::Zeroes { off, len, unmap } => {
                let r = d.write_zeroes(off, len, unmap);
                check(r, off, len, read_only, i)?;
                Some((off, len, None))
            }
            Op::Flush => {
                prop_assert!(d.flush().is_ok(), "op {i}: flush");
                m.stable.copy_from_slice(&m.current);
                None
            }
            Op::Crash => {
                d.crash();
                if S::VOLATILE {
                    m.current.copy_from_slice(&m.stable);
                }
                None
            }
            Op::WriteCache(on) => {
                d.set_write_cache(on);
                m.writeback = on;
                None
            }
        };
        if let Some((off, len, data)) = changed {
            if read_only || !in_range(off, len) {
                continue; // refused: nothing changed
            }
            let (o, l) = (off as usize, len as usize);
            match data {
                Some(data) => m.current[o..o + l].copy_from_slice(&data),
                // Every backend here reads zeroes after a discard.
                None => m.current[o..o + l].fill(0),
            }
            if !m.writeback || !S::VOLATILE {
                m.stable.copy_from_slice(&m.current);
            }
        }
    }
    // Finally everything reads back as the model says.
    let mut out = vec![0; SIZE as usize];
    let segs = two_segments(&mut out, 12345);
    // SAFETY: the segments cover a live local buffer.
    unsafe { d.read_vectored(0, &segs) }.unwrap();
    prop_assert!(out == m.current, "final image differs");
    Ok(())
}

fn check(
    r: Result<(), BlockError>,
    off: u64,
    len: u64,
    read_only: bool,
    i: usize,
) -> Result<(), TestCaseError> {
    if read_only {
        prop_assert!(
            matches!(r, Err(BlockError::ReadOnly | BlockError::OutOfRange { .. })),
            "op {i}: read-only: {r:?}"
        );
    } else if in_range(off, len) {
        prop_assert!(r.is_ok(), "op {i}: {r:?}");
    } else {
        prop_assert!(
            matches!(r, Err(BlockError::OutOfRange { .. })),
            "op {i}: {r:?}"
        );
    }
    Ok(())
}

fn raw_file(cache: Cache, read_only: bool) -> RawFile {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("block_model");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!(
        "{}-{}.img",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::File::create(&p).unwrap().set_len(SIZE).unwrap();
    let f = RawFile::open(
        &p,
        RawOptions {
            read_only,
            cache,
            ..Default::default()
        },
    )
    .unwrap();
    // The open descriptor keeps the file; the name can go.
    std::fs::remove_file(&p).unwrap();
    f
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn memory_matches_the_model(ops in ops()) {
        run(&mut MemoryDisk::new((SIZE / 512) as usize), &ops, false)?;
    }

    #[test]
    fn faulty_memory_matches_the_model_across_crashes(ops in ops()) {
        run(&mut Faulty::new(MemoryDisk::new((SIZE / 512) as usize)), &ops, false)?;
    }

    #[test]
    fn raw_file_matches_the_model(ops in ops(), direct in any::<bool>()) {
        let cache = if direct { Cache::None } else { Cache::Writeback };
        run(&mut raw_file(cache, false), &ops, false)?;
    }

    #[test]
    fn faulty_raw_file_matches_the_model_across_crashes(ops in ops()) {
        run(&mut Faulty::new(raw_file(Cache::Writeback, false)), &ops, false)?;
    }

    #[test]
    fn read_only_disks_refuse_every_change(ops in ops()) {
        let mem = MemoryDisk::new((SIZE / 512) as usize).with_read_only(true);
        run(&mut mem.clone(), &ops, true)?;
        run(&mut Faulty::new(mem), &ops, true)?;
        run(&mut raw_file(Cache::Writeback, true), &ops, true)?;
    }
}
