//! Where a tiny guest lives in guest-physical memory, for loaders and
//! programs. The image is linked by `link.ld`; the figures here must agree
//! with it and with `start.rs`.

/// Guest-physical (= virtual, identity-mapped) address the image is linked at.
pub const IMAGE_BASE: u64 = 0x10_0000;

/// The image (`.bss` included) ends below this address (asserted by
/// `link.ld`): loaders may put the start info anywhere else in RAM.
pub const IMAGE_LIMIT: u64 = 0x20_0000;

/// Bytes of the boot stack (its own section after `.bss`; a canary at its
/// bottom is checked at the verdict).
pub const STACK_SIZE: usize = 128 * 1024;

/// Top of the identity map: every address below it is mapped with 2 MiB pages.
pub const IDENTITY_MAP_END: u64 = 4 << 30;

/// Start of the range mapped uncached (PCD|PWT), for MMIO: the last GiB
/// below 4 GiB, holding the virtio-mmio slots of QEMU `microvm`, the
/// IOAPIC (0xfec0_0000) and the LAPIC (0xfee0_0000).
pub const UNCACHED_START: u64 = 3 << 30;

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// The guest-physical range the loaded image occupies, `.bss` included.
pub fn image() -> core::ops::Range<u64> {
    // Only the addresses of the linker-script symbols are taken; nothing is
    // read through them.
    let start = &raw const __image_start as u64;
    let end = &raw const __image_end as u64;
    start..end
}
