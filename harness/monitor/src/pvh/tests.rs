//! Parsing and loading: good images, every malformed field, RAM holes.

use super::testing::{Note, Segment, elf, guest};
use super::*;
use virtio_core::memory::{Region, RegionMemory};

const MIB: u64 = 1 << 20;

/// Guest memory in a Vec: 4 MiB at guest address 0.
struct TestRam {
    _buf: Vec<u8>,
    mem: RegionMemory,
}

fn ram() -> TestRam {
    let mut buf = vec![0xeeu8; 4 * MIB as usize];
    let mut mem = RegionMemory::new();
    // SAFETY: `buf` lives as long as `mem` (both in TestRam) and is
    // only reached through `mem` afterwards.
    let region = unsafe { Region::new(GuestAddress(0), buf.as_mut_ptr(), 4 * MIB) };
    mem.add(region).unwrap();
    TestRam { _buf: buf, mem }
}

const RAM: [RamRange; 1] = [RamRange {
    base: 0,
    size: 4 * MIB,
}];

#[test]
fn loads_segments_and_writes_start_info_memmap_cmdline() {
    let t = ram();
    let file = elf(
        &[
            Segment {
                paddr: MIB,
                code: vec![0x90, 0xf4],
                memsz: 0x2000,
            },
            Segment {
                paddr: 2 * MIB,
                code: b"data".to_vec(),
                memsz: 4,
            },
        ],
        Note::Phys64(MIB + 1),
    );
    let boot = load(&t.mem, &RAM, &file, "console=ttyS0 x=1").unwrap();
    assert_eq!(boot.entry, 0x10_0001);
    assert_eq!(boot.start_info, START_INFO);
    assert_eq!(boot.image, MIB..2 * MIB + 4);
    let mut b = [0u8; 4];
    t.mem.read(GuestAddress(MIB), &mut b).unwrap();
    assert_eq!(b, [0x90, 0xf4, 0, 0]);
    // .bss zero-filled up to memsz, not beyond.
    assert_eq!(t.mem.read_u8_at(MIB + 0x1fff), 0);
    assert_eq!(t.mem.read_u8_at(MIB + 0x2000), 0xee);
    t.mem.read(GuestAddress(2 * MIB), &mut b).unwrap();
    assert_eq!(&b, b"data");

    assert_eq!(
        t.mem.read_u32(GuestAddress(START_INFO)).unwrap(),
        START_INFO_MAGIC
    );
    assert_eq!(t.mem.read_u32(GuestAddress(START_INFO + 4)).unwrap(), 1);
    assert_eq!(
        t.mem.read_u64(GuestAddress(START_INFO + 24)).unwrap(),
        CMDLINE
    );
    assert_eq!(
        t.mem.read_u64(GuestAddress(START_INFO + 40)).unwrap(),
        MEMMAP
    );
    assert_eq!(t.mem.read_u32(GuestAddress(START_INFO + 48)).unwrap(), 1);
    assert_eq!(t.mem.read_u64(GuestAddress(MEMMAP)).unwrap(), 0);
    assert_eq!(t.mem.read_u64(GuestAddress(MEMMAP + 8)).unwrap(), 4 * MIB);
    assert_eq!(t.mem.read_u32(GuestAddress(MEMMAP + 16)).unwrap(), 1);
    let mut line = [0u8; 18];
    t.mem.read(GuestAddress(CMDLINE), &mut line).unwrap();
    assert_eq!(&line, b"console=ttyS0 x=1\0");
    assert_eq!(
        t.mem.read_u64(GuestAddress(BOOT_GDT + 16)).unwrap(),
        BOOT_GDT_ENTRIES[2]
    );
}

trait ReadU8 {
    fn read_u8_at(&self, addr: u64) -> u8;
}

impl ReadU8 for RegionMemory {
    fn read_u8_at(&self, addr: u64) -> u8 {
        let mut b = [0u8];
        self.read(GuestAddress(addr), &mut b).unwrap();
        b[0]
    }
}

#[test]
fn note_forms_are_found() {
    let seg = [Segment {
        paddr: MIB,
        code: vec![0xf4],
        memsz: 1,
    }];
    assert_eq!(
        parse(&elf(&seg, Note::Phys32(MIB as u32))).unwrap().entry,
        0x10_0000
    );
    assert_eq!(
        parse(&elf(&seg, Note::Phys64(MIB))).unwrap().entry,
        0x10_0000
    );
    assert_eq!(
        parse(&elf(&seg, Note::SectionOnly(MIB))).unwrap().entry,
        0x10_0000
    );
}

#[test]
fn bad_files_are_typed_errors() {
    let seg = |paddr: u64, memsz: u64| Segment {
        paddr,
        code: vec![0xf4],
        memsz,
    };
    let ok = guest(&[0xf4]);
    assert_eq!(
        parse(&elf(&[seg(MIB, 1)], Note::None)),
        Err(ElfError::NoPvhNote)
    );
    assert_eq!(parse(b"MZ\x90\x00rest"), Err(ElfError::BadMagic));
    assert!(matches!(parse(b"\x7fEL"), Err(ElfError::Truncated { .. })));
    assert!(matches!(parse(&ok[..40]), Err(ElfError::Truncated { .. })));
    // Cut inside the program headers and inside the segment's bytes.
    assert!(matches!(parse(&ok[..100]), Err(ElfError::Truncated { .. })));
    let e = parse(&ok[..ok.len() - 20]).unwrap_err();
    assert!(matches!(e, ElfError::Truncated { .. }), "{e:?}");

    let mut bad = ok.clone();
    bad[4] = 1;
    assert_eq!(parse(&bad), Err(ElfError::NotElf64 { class: 1 }));
    let mut bad = ok.clone();
    bad[18] = 3;
    assert_eq!(parse(&bad), Err(ElfError::NotX86_64 { machine: 3 }));
    let mut bad = ok.clone();
    bad[16] = 3;
    assert_eq!(parse(&bad), Err(ElfError::NotExecutable { e_type: 3 }));

    assert_eq!(
        parse(&elf(&[seg(MIB, 1)], Note::Phys64(5 << 32))),
        Err(ElfError::EntryAbove4G { entry: 5 << 32 })
    );
    assert_eq!(
        parse(&elf(&[seg(MIB, 1)], Note::Phys64(3 * MIB))),
        Err(ElfError::EntryNotLoaded { entry: 3 * MIB })
    );
    assert!(matches!(
        parse(&elf(&[seg(u64::MAX - 1, 16)], Note::Phys64(u64::MAX - 1))),
        Err(ElfError::Overflow { .. })
    ));
    // filesz > memsz.
    assert_eq!(
        parse(&elf(&[seg(MIB, 0)], Note::Phys32(MIB as u32))),
        Err(ElfError::FileSizeExceedsMemSize {
            index: 0,
            filesz: 1,
            memsz: 0
        })
    );
    // A huge phoff: overflow or truncation, never a panic.
    let mut bad = ok.clone();
    bad[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse(&bad).is_err());
    // A note whose descsz is 2.
    let mut bad = ok.clone();
    let note_at = ok.len() - 20;
    assert_eq!(&bad[note_at + 12..note_at + 16], b"Xen\0");
    bad[note_at + 4] = 2;
    assert_eq!(parse(&bad), Err(ElfError::BadPvhNote { descsz: 2 }));
    for e in [ElfError::NoPvhNote, ElfError::BadPvhNote { descsz: 2 }] {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn every_prefix_and_byte_flip_is_an_error_or_an_image_never_a_panic() {
    let file = elf(
        &[Segment {
            paddr: MIB,
            code: vec![0xf4; 8],
            memsz: 64,
        }],
        Note::SectionOnly(MIB),
    );
    for n in 0..file.len() {
        let _ = parse(&file[..n]);
    }
    for i in 0..file.len() {
        for v in [0x00, 0x7f, 0x80, 0xff] {
            let mut f = file.clone();
            f[i] = v;
            let _ = parse(&f);
        }
    }
}

#[test]
fn placement_errors_leave_memory_untouched() {
    let t = ram();
    let out = elf(
        &[Segment {
            paddr: 4 * MIB - 1,
            code: vec![0xf4, 0xf4],
            memsz: 2,
        }],
        Note::Phys64(4 * MIB - 1),
    );
    let e = load(&t.mem, &RAM, &out, "").unwrap_err();
    assert_eq!(
        e,
        LoadError::SegmentOutsideRam {
            index: 0,
            paddr: 4 * MIB - 1,
            memsz: 2
        }
    );
    assert!(e.to_string().contains("outside RAM"), "{e}");
    assert_eq!(t.mem.read_u8_at(START_INFO), 0xee);

    let low = elf(
        &[Segment {
            paddr: 0x7f00,
            code: vec![0xf4],
            memsz: 0x200,
        }],
        Note::Phys64(0x7f00),
    );
    assert!(matches!(
        load(&t.mem, &RAM, &low, ""),
        Err(LoadError::SegmentOverlapsBootData { index: 0, .. })
    ));
    let g = guest(&[0xf4]);
    assert_eq!(
        load(&t.mem, &RAM, &g, "a\0b"),
        Err(LoadError::CmdlineHasNul { at: 1 })
    );
    let long = "x".repeat(CMDLINE_MAX + 1);
    assert_eq!(
        load(&t.mem, &RAM, &g, &long),
        Err(LoadError::CmdlineTooLong {
            len: CMDLINE_MAX + 1
        })
    );
    let high_only = [RamRange {
        base: MIB,
        size: 3 * MIB,
    }];
    assert_eq!(
        load(&t.mem, &high_only, &g, ""),
        Err(LoadError::BootDataOutsideRam)
    );
    assert_eq!(t.mem.read_u8_at(MIB), 0xee);
    // The longest command line fits.
    let max = "y".repeat(CMDLINE_MAX);
    load(&t.mem, &RAM, &g, &max).unwrap();
    assert_eq!(t.mem.read_u8_at(CMDLINE + CMDLINE_MAX as u64), 0);
}
