//! Builds small ELF64 images for tests (ours and downstream): one
//! `PT_LOAD` per code blob and an optional PVH note.

/// How to build the note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// No note at all.
    None,
    /// A `PT_NOTE` with a 4-byte value.
    Phys32(u32),
    /// A `PT_NOTE` with an 8-byte value.
    Phys64(u64),
    /// Only an `SHT_NOTE` section (no `PT_NOTE`), 8-byte value.
    SectionOnly(u64),
}

/// A segment to place: its bytes at `paddr`, `memsz` bytes in memory
/// (at least `code.len()`; the rest zero-filled by the loader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it loads.
    pub paddr: u64,
    /// File contents.
    pub code: Vec<u8>,
    /// Memory size.
    pub memsz: u64,
}

/// Builds an `ET_EXEC` x86-64 ELF64 with the given segments and note.
pub fn elf(segments: &[Segment], note: Note) -> Vec<u8> {
    let phnum = segments.len() + usize::from(matches!(note, Note::Phys32(_) | Note::Phys64(_)));
    let mut out = vec![0u8; 64 + 56 * phnum];
    let mut phdrs = Vec::new();
    for s in segments {
        let off = out.len() as u64;
        out.extend_from_slice(&s.code);
        phdrs.push((1u32, off, s.paddr, s.code.len() as u64, s.memsz, 0x1000u64));
    }
    let note_bytes = |value: Option<u64>, size: u32| {
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&size.to_le_bytes());
        n.extend_from_slice(&18u32.to_le_bytes());
        n.extend_from_slice(b"Xen\0");
        match (value, size) {
            (Some(v), 4) => n.extend_from_slice(&(v as u32).to_le_bytes()),
            (Some(v), _) => n.extend_from_slice(&v.to_le_bytes()),
            (None, _) => {}
        }
        n
    };
    let mut section = None;
    match note {
        Note::None => {}
        Note::Phys32(v) => {
            let n = note_bytes(Some(u64::from(v)), 4);
            let off = out.len() as u64;
            out.extend_from_slice(&n);
            phdrs.push((4, off, 0, n.len() as u64, n.len() as u64, 4));
        }
        Note::Phys64(v) => {
            let n = note_bytes(Some(v), 8);
            let off = out.len() as u64;
            out.extend_from_slice(&n);
            phdrs.push((4, off, 0, n.len() as u64, n.len() as u64, 4));
        }
        Note::SectionOnly(v) => {
            let n = note_bytes(Some(v), 8);
            let off = out.len() as u64;
            out.extend_from_slice(&n);
            section = Some((off, n.len() as u64));
        }
    }
    let mut shnum = 0u16;
    let mut shoff = 0u64;
    if let Some((off, len)) = section {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        shoff = out.len() as u64;
        out.extend_from_slice(&[0u8; 64]); // SHN_UNDEF
        let mut sh = [0u8; 64];
        sh[4..8].copy_from_slice(&7u32.to_le_bytes());
        sh[24..32].copy_from_slice(&off.to_le_bytes());
        sh[32..40].copy_from_slice(&len.to_le_bytes());
        sh[48..56].copy_from_slice(&4u64.to_le_bytes());
        out.extend_from_slice(&sh);
        shnum = 2;
    }
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2;
    out[5] = 1;
    out[6] = 1;
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[40..48].copy_from_slice(&shoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    out[58..60].copy_from_slice(&64u16.to_le_bytes());
    out[60..62].copy_from_slice(&shnum.to_le_bytes());
    for (i, (ty, off, paddr, filesz, memsz, align)) in phdrs.into_iter().enumerate() {
        let p = 64 + 56 * i;
        out[p..p + 4].copy_from_slice(&ty.to_le_bytes());
        out[p + 4..p + 8].copy_from_slice(&7u32.to_le_bytes());
        out[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
        out[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
        out[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
        out[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
        out[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
        out[p + 48..p + 56].copy_from_slice(&align.to_le_bytes());
    }
    out
}

/// One segment of `code` at 1 MiB with a 4-byte PVH note pointing at
/// its first byte: the usual test guest.
pub fn guest(code: &[u8]) -> Vec<u8> {
    elf(
        &[Segment {
            paddr: 0x10_0000,
            code: code.to_vec(),
            memsz: code.len() as u64,
        }],
        Note::Phys32(0x10_0000),
    )
}
