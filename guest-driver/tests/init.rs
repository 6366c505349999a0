//! Probe and initialization (§4.2.3.1.1, §3.1.1) against devices that are
//! not what they should be: bad magic, version or device ID, a device that
//! refuses FEATURES_OK or never finishes a reset. Every case is a typed
//! error after a bounded number of register accesses. Also device
//! discovery through `VolatileMmio` over fake register blocks.

mod common;

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use common::{Bus, Env, FakeRng, POOL_PAGES};
use guest_driver::cmdline::SlotList;
use guest_driver::error::Error;
use guest_driver::hal::{PAGE_SIZE, PoolHal};
use guest_driver::rng::{Rng, RngOptions};
use guest_driver::transport::find_device;
use virtio_core::features::DeviceType;
use virtio_core::mmio::DriverError as MmioError;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::regs::{self, MAGIC};
use virtio_core::status::{DeviceStatus, StatusError};

/// A register file that answers fixed values and records writes.
struct Script {
    magic: u32,
    version: u32,
    id: u32,
    /// What `Status` always reads.
    status: u32,
    reads: Cell<u32>,
    writes: RefCell<Vec<(u64, u32)>>,
}

impl Script {
    fn new(magic: u32, version: u32, id: u32) -> Script {
        Script {
            magic,
            version,
            id,
            status: 0,
            reads: Cell::new(0),
            writes: RefCell::new(Vec::new()),
        }
    }
}

impl RegisterAccess for Script {
    fn read32(&self, offset: u64) -> u32 {
        self.reads.set(self.reads.get() + 1);
        match offset {
            regs::MAGIC_VALUE => self.magic,
            regs::VERSION => self.version,
            regs::DEVICE_ID => self.id,
            regs::STATUS => self.status,
            _ => 0,
        }
    }
    fn write32(&self, offset: u64, value: u32) {
        self.writes.borrow_mut().push((offset, value));
    }
    fn read16(&self, _offset: u64) -> u16 {
        0
    }
    fn write16(&self, _offset: u64, _value: u16) {}
    fn read8(&self, _offset: u64) -> u8 {
        0
    }
    fn write8(&self, _offset: u64, _value: u8) {}
}

#[test]
fn probe_ignores_devices_it_must_not_drive_4_2_3_1_1() {
    let env = Env::new();
    let cases = [
        (
            Script::new(0x1234_5678, 2, 4),
            Error::Transport(MmioError::BadMagic { found: 0x1234_5678 }),
        ),
        (
            Script::new(MAGIC, 3, 4),
            Error::Transport(MmioError::UnsupportedVersion { found: 3 }),
        ),
        (
            Script::new(MAGIC, 2, 0),
            Error::Transport(MmioError::NoDevice),
        ),
        (
            Script::new(MAGIC, 2, 3),
            Error::WrongDevice {
                expected: DeviceType::Rng,
                found: 3,
            },
        ),
    ];
    for (script, want) in cases {
        let err = Rng::new(&env.hal, &script, RngOptions::default()).unwrap_err();
        assert_eq!(err, want);
        assert!(!err.to_string().is_empty());
        // Nothing was written to a device we do not drive.
        assert_eq!(*script.writes.borrow(), []);
    }
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn device_that_never_resets_is_given_up_after_bounded_reads_2_4_2() {
    let env = Env::new();
    let mut script = Script::new(MAGIC, 2, 4);
    script.status = 0x0f;
    let err = Rng::new(&env.hal, &script, RngOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport(MmioError::Status(StatusError::ResetIncomplete { .. }))
        ),
        "{err:?}"
    );
    // Bounded: a few thousand reads at most, for init and drop together.
    assert!(script.reads.get() < 3 * 1100, "{}", script.reads.get());
    // Never told the device a queue address; nothing allocated.
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

#[test]
fn device_that_refuses_features_ok_fails_init_3_1_1_step_6() {
    let env = Env::new();
    let bus = Bus::new(FakeRng::new(env.memory()));
    bus.with(|d| d.accept = false);
    let err = Rng::new(&env.hal, &bus, RngOptions::default()).unwrap_err();
    assert_eq!(
        err,
        Error::Transport(MmioError::Status(StatusError::FeaturesRefused))
    );
    assert!(err.is_device_fault());
    let log = bus.status_log.borrow().clone();
    // ACKNOWLEDGE | DRIVER, FEATURES_OK refused, FAILED, then the reset of
    // `drop`.
    assert!(log.contains(&11), "{log:?}");
    assert!(log.iter().any(|s| s & 0x80 != 0), "{log:?}");
    assert!(!log.iter().any(|s| s & 4 != 0), "no DRIVER_OK: {log:?}");
    assert_eq!(bus.status(), DeviceStatus::empty());
    assert_eq!(env.hal.free_pages(), POOL_PAGES);
}

/// Fake register blocks in host memory, found through the command line.
#[test]
fn find_device_probes_command_line_slots_4_2_3_1_1() {
    // Three 0x200-byte blocks: a placeholder (ID 0), a console, an rng.
    let layout = std::alloc::Layout::from_size_align(3 * 0x200, 0x200).unwrap();
    // SAFETY: non-zero size.
    let base = unsafe { std::alloc::alloc_zeroed(layout) };
    let words = base.cast::<u32>();
    for (i, id) in [0u32, 3, 4].into_iter().enumerate() {
        // SAFETY: within the allocation, 4-aligned.
        unsafe {
            let b = words.add(i * 0x80);
            b.write(MAGIC);
            b.add(1).write(2);
            b.add(2).write(id);
        }
    }
    let cmdline = format!(
        "console=ttyS0 virtio_mmio.device=512@{:#x}:5 virtio_mmio.device=512@{:#x}:6 \
         virtio_mmio.device=512@{:#x}:7 virtio_mmio.device=bogus",
        base as u64,
        base as u64 + 0x200,
        base as u64 + 0x400
    );
    let slots = SlotList::<8>::parse(&cmdline);
    assert_eq!((slots.as_slice().len(), slots.invalid()), (3, 1));
    let pool_layout = std::alloc::Layout::from_size_align(PAGE_SIZE, PAGE_SIZE).unwrap();
    // SAFETY: non-zero size.
    let pool_mem = NonNull::new(unsafe { std::alloc::alloc_zeroed(pool_layout) }).unwrap();
    // SAFETY: the page outlives the pool; the test only maps the blocks,
    // which this process identity-maps (they are its own memory).
    let hal = unsafe { PoolHal::<1>::identity(pool_mem, PAGE_SIZE) }.unwrap();
    // SAFETY: every slot is one of the blocks above, used by nothing else.
    let (slot, regs) =
        unsafe { find_device(&hal, slots.iter().copied(), DeviceType::Rng) }.unwrap();
    assert_eq!(slot.irq, 7);
    assert_eq!(regs.read32(regs::DEVICE_ID), 4);
    // SAFETY: as above.
    let (slot, _) =
        unsafe { find_device(&hal, slots.iter().copied(), DeviceType::Console) }.unwrap();
    assert_eq!(slot.irq, 6);
    // SAFETY: as above.
    assert!(unsafe { find_device(&hal, slots.iter().copied(), DeviceType::Blk) }.is_none());
    // SAFETY: allocated above with these layouts.
    unsafe {
        std::alloc::dealloc(base, layout);
        std::alloc::dealloc(pool_mem.as_ptr(), pool_layout);
    }
}
