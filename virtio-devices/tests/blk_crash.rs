//! §5.2.6.2 end to end with a disk that forgets: `virtio-drivers`' blk
//! driver writes through our device to a fault-injecting backend
//! (`backends::block::faulty::Faulty`) that drops every write not yet
//! flushed when a crash is simulated. Killing a process proves nothing
//! (the page cache survives it); this does.

use std::sync::{Arc, Mutex};

use backends::IoSegment;
use backends::block::faulty::Faulty;
use backends::block::memory::MemoryDisk;
use backends::block::{BlockBackend, BlockError};
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::testing::virtio_drivers::{DeviceTransport, TestHal};
use virtio_devices::blk::{Blk, BlkConfig, CONFIG_LEN};
use virtio_devices::transport::{MmioTransport, dispatch};
use virtio_drivers::device::blk::VirtIOBlk;

/// The faulty disk, shared so the test can crash it under the device.
#[derive(Clone)]
struct Shared(Arc<Mutex<Faulty<MemoryDisk>>>);

impl Shared {
    fn disk(&self) -> std::sync::MutexGuard<'_, Faulty<MemoryDisk>> {
        self.0.lock().unwrap()
    }
}

impl BlockBackend for Shared {
    fn size(&self) -> u64 {
        self.disk().size()
    }
    fn read_only(&self) -> bool {
        self.disk().read_only()
    }
    fn write_cache(&self) -> bool {
        self.disk().write_cache()
    }
    fn set_write_cache(&mut self, writeback: bool) {
        self.disk().set_write_cache(writeback)
    }
    unsafe fn read_vectored(&mut self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        // SAFETY: the device's promise about `segs` is passed on unchanged.
        unsafe { self.disk().read_vectored(offset, segs) }
    }
    unsafe fn write_vectored(&mut self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        // SAFETY: as above.
        unsafe { self.disk().write_vectored(offset, segs) }
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.disk().flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.disk().discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.disk().write_zeroes(offset, len, unmap)
    }
}

type Device = MmioTransport<Blk<Shared, &'static Tracked>>;

/// The device's memory, under the double-fetch tracker (issue 16).
type Tracked =
    virtio_core::testing::fetch::FetchTracker<&'static virtio_core::memory::RegionMemory<1>>;

fn driver(disk: Shared, writeback: bool) -> VirtIOBlk<TestHal, DeviceTransport<Device, 8>> {
    let cfg = BlkConfig {
        writeback,
        ..BlkConfig::default()
    };
    let mem: &'static Tracked = Box::leak(Box::new(Tracked::unwatched(TestHal::memory())));
    let dev = Blk::new(disk, mem, cfg).unwrap();
    let regs = MmioRegisters::<_, 8>::new(MmioTransport::new(dev)).unwrap();
    let mut t = DeviceTransport::new(regs)
        .unwrap()
        .with_config_len(CONFIG_LEN);
    t.set_hook(|regs, outcome| {
        dispatch(regs, outcome);
    });
    VirtIOBlk::<TestHal, _>::new(t).unwrap()
}

fn shared() -> Shared {
    Shared(Arc::new(Mutex::new(Faulty::new(MemoryDisk::new(64)))))
}

#[test]
fn section_5_2_6_2_flushed_writes_survive_a_crash_and_unflushed_ones_may_not() {
    let disk = shared();
    let mut drv = driver(disk.clone(), true);
    let a = vec![0xaau8; 2048];
    let b = vec![0xbbu8; 2048];
    drv.write_blocks(0, &a).unwrap();
    drv.flush().unwrap();
    drv.write_blocks(4, &b).unwrap();
    // The FLUSH's completion came after the sync: the backend holds `a`.
    disk.disk().crash();
    let mut back = vec![0u8; 4096];
    drv.read_blocks(0, &mut back).unwrap();
    assert_eq!(back[..2048], a[..], "flushed data survives");
    assert_eq!(
        back[2048..],
        [0u8; 2048][..],
        "this disk forgets unflushed writes"
    );
}

#[test]
fn section_5_2_6_2_writethrough_makes_every_completed_write_stable() {
    let disk = shared();
    let mut drv = driver(disk.clone(), false);
    assert!(
        !disk.disk().write_cache(),
        "the device put the disk in writethrough"
    );
    let a = vec![0x11u8; 1024];
    drv.write_blocks(8, &a).unwrap();
    disk.disk().crash();
    let mut back = vec![0u8; 1024];
    drv.read_blocks(8, &mut back).unwrap();
    assert_eq!(back, a, "a completed write in writethrough mode is stable");
}

/// Issue 16, finding 4: a failed flush is sticky. The disk fails a flush
/// as Linux does (the cached writes are dropped, the next flush reports
/// success); the device must not let that success through, or the driver
/// believes data is stable that is gone.
#[test]
fn section_5_2_6_2_after_a_failed_flush_no_flush_succeeds() {
    let disk = shared();
    let mut drv = driver(disk.clone(), true);
    drv.write_blocks(0, &[0x5au8; 512]).unwrap();
    disk.disk().fail_nth_flush_dropping(1);
    assert!(drv.flush().is_err(), "the failure itself is reported");
    assert_eq!(disk.disk().stats().lost, 1, "and the write is gone");
    assert!(
        drv.flush().is_err(),
        "a later FLUSH must not report success"
    );
    drv.write_blocks(1, &[0x5bu8; 512]).unwrap();
    assert!(drv.flush().is_err(), "nor one after new writes");
    // Writeback writes still complete (they promise nothing until a
    // FLUSH) and read back.
    let mut back = [0u8; 512];
    drv.read_blocks(1, &mut back).unwrap();
    assert_eq!(back, [0x5bu8; 512]);
}
