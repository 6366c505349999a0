//! Fixed virtio-mmio transport slots, laid out as QEMU `microvm` lays them
//! out with `acpi=off` (one IOAPIC): eight 512-byte windows from
//! `0xfeb0_0000`, slot `i` on GSI `5 + i`; and the kernel command-line
//! entries (`virtio_mmio.device=512@0xfeb00000:5`) that announce them.
//!
//! A slot without a device holds an [`EmptySlot`], which answers like a
//! virtio-mmio transport with no device behind it (DeviceID 0), so a
//! probing guest sees "nothing here". Interrupt wiring comes with devices.

use std::fmt::Write;

use virtio_core::mmio::regs;

use crate::bus::MmioDevice;

/// Base of slot 0.
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// Size of each slot's window (QEMU's and Linux's 512).
pub const VIRTIO_MMIO_SIZE: u64 = 0x200;
/// Number of slots.
pub const VIRTIO_MMIO_SLOTS: usize = 8;
/// GSI (IOAPIC pin) of slot 0; slot `i` uses `VIRTIO_MMIO_IRQ_BASE + i`.
pub const VIRTIO_MMIO_IRQ_BASE: u32 = 5;

/// One transport slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Slot number, `0..VIRTIO_MMIO_SLOTS`.
    pub index: usize,
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of its window.
    pub size: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

impl VirtioSlot {
    /// Slot `index`, or `None` past the last.
    pub fn new(index: usize) -> Option<VirtioSlot> {
        (index < VIRTIO_MMIO_SLOTS).then(|| VirtioSlot {
            index,
            base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_MMIO_IRQ_BASE + index as u32,
        })
    }

    /// Its command-line entry, `virtio_mmio.device=512@0xfeb00000:5`
    /// (Linux's `virtio_mmio.device=<size>@<baseaddr>:<irq>`).
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}@{:#x}:{}",
            self.size, self.base, self.irq
        )
    }

    /// The name it has on the MMIO bus.
    pub fn bus_name(&self) -> String {
        format!("virtio-mmio.{}", self.index)
    }
}

/// Every slot, in order.
pub fn all() -> impl Iterator<Item = VirtioSlot> {
    (0..VIRTIO_MMIO_SLOTS).filter_map(VirtioSlot::new)
}

/// `cmdline` with one entry per slot appended, space-separated.
pub fn append_cmdline(cmdline: &str, slots: &[VirtioSlot]) -> String {
    let mut out = cmdline.trim_end().to_string();
    for s in slots {
        if !out.is_empty() {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", s.cmdline_entry());
    }
    out
}

/// A virtio-mmio transport with no device: MagicValue, Version 2 and
/// DeviceID 0; every other register reads 0 and writes are ignored.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptySlot;

impl MmioDevice for EmptySlot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            regs::MAGIC_VALUE => regs::MAGIC,
            regs::VERSION => 2,
            _ => 0,
        };
        if data.len() == 4 {
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            // The spec allows only 32-bit register access.
            data.fill(0);
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_qemu_microvm() {
        let s: Vec<_> = all().collect();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0].base, 0xfeb0_0000);
        assert_eq!(s[7].base, 0xfeb0_0e00);
        assert_eq!(s[7].irq, 12);
        assert_eq!(VirtioSlot::new(8), None);
        assert_eq!(s[1].cmdline_entry(), "virtio_mmio.device=512@0xfeb00200:6");
        assert_eq!(
            append_cmdline("console=ttyS0 ", &s[..2]),
            "console=ttyS0 virtio_mmio.device=512@0xfeb00000:5 virtio_mmio.device=512@0xfeb00200:6"
        );
        assert_eq!(
            append_cmdline("", &s[..1]),
            "virtio_mmio.device=512@0xfeb00000:5"
        );
    }

    #[test]
    fn an_empty_slot_says_no_device() {
        let mut e = EmptySlot;
        let mut v = [0u8; 4];
        e.read(0, &mut v);
        assert_eq!(&v, b"virt");
        e.read(4, &mut v);
        assert_eq!(u32::from_le_bytes(v), 2);
        e.read(8, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0);
        let mut b = [0xffu8; 1];
        e.read(0, &mut b);
        assert_eq!(b, [0]);
    }
}
