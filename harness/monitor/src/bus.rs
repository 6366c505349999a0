//! The MMIO bus: guest-physical address ranges mapped to devices, QEMU's
//! `MemoryRegionOps` model (`read(offset, &mut [u8])` /
//! `write(offset, &[u8])`, offsets relative to the range's base).
//!
//! Ranges never overlap: inserting one that does is refused with both
//! named. An access that falls outside every range, or runs past the end of
//! the one it starts in, reaches no device; the caller decides what the
//! guest sees (the VM answers all-ones and counts it). No I/O ports here.

use std::collections::BTreeMap;
use std::fmt;

/// A device on the MMIO bus. Accesses are 1, 2, 4 or 8 bytes, little-endian,
/// always inside the device's range.
pub trait MmioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A named address range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioRange {
    /// Who sits there (for messages).
    pub name: String,
    /// First address.
    pub base: u64,
    /// Size in bytes (non-zero).
    pub size: u64,
}

impl fmt::Display for MmioRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' at {:#x}..{:#x}",
            self.name,
            self.base,
            self.base.wrapping_add(self.size)
        )
    }
}

/// Why a range was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range has no bytes.
    Empty(MmioRange),
    /// `base + size` wraps past the top of the address space.
    Overflow(MmioRange),
    /// The range overlaps one already on the bus.
    Overlap {
        /// The range being inserted.
        new: MmioRange,
        /// The range already there.
        existing: MmioRange,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Empty(r) => write!(f, "MMIO range {r} is empty"),
            BusError::Overflow(r) => write!(
                f,
                "MMIO range '{}' at {:#x} size {:#x} wraps the address space",
                r.name, r.base, r.size
            ),
            BusError::Overlap { new, existing } => {
                write!(f, "MMIO range {new} overlaps {existing}")
            }
        }
    }
}

impl std::error::Error for BusError {}

struct Slot {
    range: MmioRange,
    device: Box<dyn MmioDevice>,
}

/// Non-overlapping address ranges, each with its device.
#[derive(Default)]
pub struct MmioBus {
    /// Keyed by base address.
    slots: BTreeMap<u64, Slot>,
}

impl fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.slots.values().map(|s| &s.range))
            .finish()
    }
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Maps `device` at `base..base + size` under `name`.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        base: u64,
        size: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), BusError> {
        let range = MmioRange {
            name: name.into(),
            base,
            size,
        };
        if size == 0 {
            return Err(BusError::Empty(range));
        }
        let Some(end) = base.checked_add(size) else {
            return Err(BusError::Overflow(range));
        };
        // The only candidates: the last range starting before `end`.
        if let Some((_, prev)) = self.slots.range(..end).next_back()
            && prev.range.base + prev.range.size > base
        {
            return Err(BusError::Overlap {
                new: range,
                existing: prev.range.clone(),
            });
        }
        self.slots.insert(base, Slot { range, device });
        Ok(())
    }

    /// Takes the device at exactly `base` off the bus.
    pub fn remove(&mut self, base: u64) -> Option<(MmioRange, Box<dyn MmioDevice>)> {
        self.slots.remove(&base).map(|s| (s.range, s.device))
    }

    /// The ranges on the bus, by address.
    pub fn ranges(&self) -> impl Iterator<Item = &MmioRange> {
        self.slots.values().map(|s| &s.range)
    }

    /// The device whose range holds all of `addr..addr + len`, and the
    /// offset of `addr` in it.
    fn find(&mut self, addr: u64, len: usize) -> Option<(&mut Slot, u64)> {
        let (_, slot) = self.slots.range_mut(..=addr).next_back()?;
        let offset = addr - slot.range.base;
        let fits = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= slot.range.size);
        fits.then_some((slot, offset))
    }

    /// Dispatches a read; false if no device holds the whole access
    /// (`data` is then left as it was).
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                slot.device.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; false if no device holds the whole access.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                slot.device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// One access: read or write, offset, bytes.
    type Access = (char, u64, Vec<u8>);

    /// Records accesses; reads return the offset's low byte repeated.
    #[derive(Clone, Default)]
    struct Probe(Arc<Mutex<Vec<Access>>>);

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.0.lock().unwrap().push(('r', offset, data.to_vec()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push(('w', offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = MmioBus::new();
        let a = Probe::default();
        let b = Probe::default();
        bus.insert("a", 0x1000, 0x100, Box::new(a.clone())).unwrap();
        bus.insert("b", 0x1100, 0x100, Box::new(b.clone())).unwrap();
        let mut v = [0u8; 4];
        assert!(bus.read(0x1010, &mut v));
        assert_eq!(v, [0x10; 4]);
        assert!(bus.write(0x11fc, &[1, 2, 3, 4]));
        assert_eq!(a.0.lock().unwrap()[0], ('r', 0x10, vec![0x10; 4]));
        assert_eq!(b.0.lock().unwrap()[0], ('w', 0xfc, vec![1, 2, 3, 4]));
        // Unmapped, below, between, past the end, straddling the end.
        let mut w = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut w[..1]));
        assert!(!bus.read(0x1200, &mut w));
        assert!(!bus.write(0x11fe, &[0; 4]));
        assert!(!bus.read(u64::MAX, &mut w));
        assert_eq!(w, [0xaa; 4]);
        assert_eq!(bus.ranges().count(), 2);
        let (range, _) = bus.remove(0x1000).unwrap();
        assert_eq!(range.name, "a");
        assert!(!bus.read(0x1010, &mut v));
    }

    #[test]
    fn overlapping_ranges_are_refused_naming_both() {
        let mut bus = MmioBus::new();
        bus.insert("virtio-mmio.0", 0x1000, 0x200, Box::new(Probe::default()))
            .unwrap();
        bus.insert("virtio-mmio.2", 0x1400, 0x200, Box::new(Probe::default()))
            .unwrap();
        for (base, size, existing) in [
            (0x1000, 0x200, "virtio-mmio.0"),
            (0x0f00, 0x101, "virtio-mmio.0"),
            (0x11ff, 0x10, "virtio-mmio.0"),
            (0x1100, 0x10, "virtio-mmio.0"),
            (0x1200, 0x201, "virtio-mmio.2"),
            (0x0, 0x10000, "virtio-mmio.2"),
        ] {
            let e = bus
                .insert("late", base, size, Box::new(Probe::default()))
                .unwrap_err();
            match &e {
                BusError::Overlap { new, existing: old } => {
                    assert_eq!(new.name, "late");
                    assert_eq!(old.name, existing, "{base:#x}+{size:#x}");
                }
                other => panic!("{other:?}"),
            }
            let msg = e.to_string();
            assert!(msg.contains("'late'") && msg.contains(existing), "{msg}");
        }
        // Adjacent on both sides is fine.
        bus.insert("mid", 0x1200, 0x200, Box::new(Probe::default()))
            .unwrap();
        assert!(matches!(
            bus.insert("zero", 0x9000, 0, Box::new(Probe::default())),
            Err(BusError::Empty(_))
        ));
        assert!(matches!(
            bus.insert("wrap", u64::MAX, 2, Box::new(Probe::default())),
            Err(BusError::Overflow(_))
        ));
    }
}
