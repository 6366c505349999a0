//! `pvh_loader`: the harness's PVH loader (ELF64 program headers, the Xen
//! `PHYS32_ENTRY` note, §"PVH boot" of Xen's docs) over guest ELF images
//! the fuzzer shapes: well-formed images built from arbitrary segments and
//! notes, then mutated bytes, then raw bytes. Parsing and loading never
//! panic; a successful load leaves every segment inside RAM, and a failed
//! one leaves guest memory untouched.

use arbitrary::{Arbitrary, Unstructured};
use monitor::pvh::testing::{Note, Segment, elf};
use monitor::pvh::{RamRange, load, parse};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::testing::OwnedMemory;

/// Guest RAM of the target: 2 MiB from address 0 (room for an image at
/// 1 MiB, as real guests are linked; small, since every input maps it anew).
const RAM: u64 = 2 << 20;

#[derive(Arbitrary, Debug)]
enum NoteKind {
    None,
    Phys32(u32),
    Phys64(u64),
    SectionOnly(u64),
}

#[derive(Arbitrary, Debug)]
struct Seg {
    paddr: u32,
    code: Vec<u8>,
    extra: u16,
}

#[derive(Arbitrary, Debug)]
enum Image {
    /// An image built by the harness's own ELF writer.
    Built { segments: Vec<Seg>, note: NoteKind },
    /// The same, then bytes overwritten.
    Mutated {
        segments: Vec<Seg>,
        note: NoteKind,
        pokes: Vec<(u16, u8)>,
    },
    /// Any bytes.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    image: Image,
    cmdline: String,
    split_ram: bool,
}

fn build(segments: &[Seg], note: &NoteKind) -> Vec<u8> {
    let segs: Vec<Segment> = segments
        .iter()
        .take(8)
        .map(|s| {
            let code: Vec<u8> = s.code.iter().copied().take(4096).collect();
            Segment {
                paddr: u64::from(s.paddr),
                memsz: code.len() as u64 + u64::from(s.extra),
                code,
            }
        })
        .collect();
    let note = match *note {
        NoteKind::None => Note::None,
        NoteKind::Phys32(v) => Note::Phys32(v),
        NoteKind::Phys64(v) => Note::Phys64(v),
        NoteKind::SectionOnly(v) => Note::SectionOnly(v),
    };
    elf(&segs, note)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let bytes = match &input.image {
        Image::Built { segments, note } => build(segments, note),
        Image::Mutated {
            segments,
            note,
            pokes,
        } => {
            let mut b = build(segments, note);
            if !b.is_empty() {
                for &(at, v) in pokes.iter().take(32) {
                    let i = usize::from(at) % b.len();
                    b[i] = v;
                }
            }
            b
        }
        Image::Raw(b) => b.clone(),
    };
    let parsed = parse(&bytes);
    let ram = if input.split_ram {
        vec![
            RamRange {
                base: 0,
                size: RAM / 2,
            },
            RamRange {
                base: RAM / 2 + 0x1000,
                size: RAM / 2 - 0x1000,
            },
        ]
    } else {
        vec![RamRange { base: 0, size: RAM }]
    };
    let scratch = super::scratch::memory(RAM as usize);
    let mem: &OwnedMemory = &scratch;
    match load(mem, &ram, &bytes, &input.cmdline) {
        Ok(boot) => {
            // Each segment lies in one RAM range and holds its file bytes;
            // the image's extent may span a hole between two ranges (a
            // segment below it and one above is a valid layout: the
            // regression input `regression-image-spans-ram-hole`).
            let image = parsed.expect("a loaded image parses");
            assert_eq!(boot.image, image.extent(), "extent of the loaded image");
            for seg in &image.segments {
                assert!(
                    ram.iter().any(|r| r.contains(seg.paddr, seg.memsz)),
                    "segment {} at {:#x}+{:#x} loaded outside RAM",
                    seg.index,
                    seg.paddr,
                    seg.memsz
                );
            }
            // Later segments may overwrite earlier ones where they overlap,
            // so only the last segment's bytes are sure to be there.
            if let Some(last) = image.segments.last() {
                let mut back = vec![0u8; last.data.len()];
                mem.read(GuestAddress(last.paddr), &mut back)
                    .expect("inside RAM");
                assert!(back == last.data, "last segment's bytes not loaded");
            }
        }
        Err(e) => {
            let _ = e.to_string();
            // Every check comes before the first write.
            let mut probe = [0u8; 64];
            for at in (0..RAM).step_by(128 << 10) {
                mem.read(GuestAddress(at), &mut probe).expect("inside RAM");
                assert!(
                    probe.iter().all(|&b| b == 0),
                    "memory written at {at:#x} by a failed load"
                );
            }
        }
    }
}
