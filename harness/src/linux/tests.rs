//! The kit's module parser, the cpio writer and the pattern.

use super::*;

#[test]
fn the_pattern_is_the_offset_xor_the_seed() {
    let mut b = [0u8; 16];
    fill_pattern(&mut b, 8, 0x0102_0304_0506_0708);
    assert_eq!(
        u64::from_le_bytes(b[..8].try_into().unwrap()),
        8 ^ 0x0102_0304_0506_0708
    );
    assert_eq!(
        u64::from_le_bytes(b[8..].try_into().unwrap()),
        16 ^ 0x0102_0304_0506_0708
    );
    assert_eq!(pattern_mismatch(&b, 8, 0x0102_0304_0506_0708), None);
    b[3] ^= 1;
    assert_eq!(pattern_mismatch(&b, 8, 0x0102_0304_0506_0708), Some(11));
}

#[test]
fn a_cpio_archive_has_aligned_newc_entries_and_a_trailer() {
    let mut c = Cpio::new();
    c.dir("bin")
        .file("bin/x", 0o755, b"abc")
        .char_dev("dev/console", 5, 1);
    let a = c.finish();
    assert!(a.starts_with(b"070701"));
    assert_eq!(a.len() % 4, 0);
    let text = String::from_utf8_lossy(&a);
    assert!(text.contains("bin/x\0"));
    assert!(text.contains("TRAILER!!!\0"));
    // The file's header: mode 0100755, size 3.
    let at = text.find("bin/x").unwrap();
    let hdr = &text[at - 110..at];
    assert_eq!(&hdr[14..22], "000081ed");
    assert_eq!(&hdr[54..62], "00000003");
}

/// A minimal ELF64 with a `.modinfo` section.
fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
    let names = b"\0.modinfo\0.shstrtab\0";
    let mut f = vec![0u8; 0x40];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    let modinfo_off = f.len();
    f.extend_from_slice(modinfo);
    let names_off = f.len();
    f.extend_from_slice(names);
    while !f.len().is_multiple_of(8) {
        f.push(0);
    }
    let shoff = f.len();
    // Null section, .modinfo, .shstrtab.
    for (name, off, size) in [
        (0u32, 0usize, 0usize),
        (1, modinfo_off, modinfo.len()),
        (10, names_off, names.len()),
    ] {
        let mut sh = [0u8; 0x40];
        sh[..4].copy_from_slice(&name.to_le_bytes());
        sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        f.extend_from_slice(&sh);
    }
    f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    f[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
    f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    f
}

#[test]
fn modinfo_depends_reads_the_modinfo_section() {
    let ko = elf_with_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0name=x\0");
    assert_eq!(
        modinfo_depends(&ko).unwrap(),
        vec!["virtio".to_string(), "virtio_ring".to_string()]
    );
    let none = elf_with_modinfo(b"license=GPL\0depends=\0");
    assert!(modinfo_depends(&none).unwrap().is_empty());
}

#[test]
fn a_malformed_module_is_an_error_not_a_panic() {
    assert!(modinfo_depends(b"").is_err());
    assert!(modinfo_depends(b"\x7fELF\x02\x01").is_err());
    let mut ko = elf_with_modinfo(b"depends=a\0");
    // Section headers pointing past the end.
    ko[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(modinfo_depends(&ko).is_err());
    let mut ko = elf_with_modinfo(b"depends=a\0");
    let shoff = u64::from_le_bytes(ko[0x28..0x30].try_into().unwrap()) as usize;
    // .modinfo's size past the end of the file.
    ko[shoff + 0x40 + 0x20..shoff + 0x40 + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(modinfo_depends(&ko).is_err());
    for cut in 0..ko.len() {
        let _ = modinfo_depends(&ko[..cut]);
    }
}
