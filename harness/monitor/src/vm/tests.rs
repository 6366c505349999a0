//! The VM with hand-made guests: memory layout, exits, verdicts.

use super::*;

#[test]
fn ram_splits_around_the_mmio_hole() {
    assert_eq!(
        ram_layout(64 << 20),
        vec![RamRange {
            base: 0,
            size: 64 << 20
        }]
    );
    assert_eq!(
        ram_layout(4 << 30),
        vec![
            RamRange {
                base: 0,
                size: 3 << 30
            },
            RamRange {
                base: 4 << 30,
                size: 1 << 30
            }
        ]
    );
}

#[test]
fn fail_messages_come_from_com1() {
    assert_eq!(
        fail_message("boot\nverdict: fail: queue 0 broke\n", EXIT_FAIL),
        "queue 0 broke"
    );
    assert!(fail_message("nothing", 0x11).contains("0x11"));
}

#[test]
fn counts_and_reports_print() {
    let c = ExitCounts {
        io_out: 3,
        mmio_read: 1,
        ..Default::default()
    };
    assert_eq!(c.total(), 4);
    assert_eq!(c.to_string(), "4 exits (io-out 3, mmio-read 1)");
    let r = Report {
        detail: "triple fault".into(),
        cr0: 0x11,
        cs: 0x10,
        cs_32: true,
        ..Default::default()
    };
    let s = Verdict::Shutdown(r).to_string();
    assert!(s.starts_with("shutdown: triple fault: rip=0x0"), "{s}");
    assert!(s.contains("cs=0x10 (32-bit"), "{s}");
}

/// The child process's marker for the truncated-RAM test.
const TRUNCATED_RAM_CHILD: &str = "MONITOR_TRUNCATED_RAM_CHILD";
const TRUNCATED_RAM_TEST: &str =
    "vm::tests::guest_ram_whose_file_shrinks_fails_accesses_instead_of_killing_the_monitor";

/// The child: guest RAM in a `memory-backend-file,share=on` file that
/// another process (here: another descriptor of the same file) cuts to
/// 64 KiB while an entropy device serves a request whose buffer lies past
/// the new end.
fn truncated_ram_child() {
    use backends::rng::Deterministic;
    use virtio_core::GuestMemory;
    use virtio_core::split::DriverQueue;
    use virtio_core::split::layout::{QueueLayout, QueueSize};
    use virtio_devices::QueueConfig;
    use virtio_devices::rng::Rng;

    let dir = std::env::temp_dir().join(format!("vm-truncated-ram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ram");
    let memory = HostMemory::file(&path, 2 << 20, true, false).unwrap();
    let vm = Vm::new(memory).unwrap();
    let mem = vm.guest_memory();
    let layout = QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    )
    .unwrap();
    let mut drv = DriverQueue::<16>::new(layout, false, None).unwrap();
    drv.init(mem).unwrap();
    let mut rng = Rng::new(Deterministic::new(1), mem.clone());
    let version_1 = 1 << 32;
    rng.activate(
        version_1,
        vec![QueueConfig {
            layout: Some(layout),
        }],
    )
    .unwrap();

    // The backend process cuts the file below the buffer.
    let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    other.set_len(0x1_0000).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    drv.add(mem, &[], &[(GuestAddress(0x8_0000), 64)]).unwrap();
    drv.publish(mem).unwrap();
    let served = rng.queue_notify(0);
    assert!(
        !matches!(served, Ok(s) if s.completed > 0),
        "the request was completed: {served:?}"
    );
    // Nothing was published: the used index (below the new end, read
    // without the checks) is still 0.
    assert_eq!(mem.regions().load_u16_acquire(layout.used_idx()), Ok(0));

    let mut buf = [0u8; 16];
    let read = mem.read(GuestAddress(0x8_0000), &mut buf);
    let e = read.expect_err("a read past the end of the file succeeded");
    assert!(e.to_string().contains("lost its backing"), "{e}");
    assert!(matches!(
        e,
        virtio_core::MemoryError::BackingLost {
            addr: GuestAddress(0x8_0000),
            len: 16
        }
    ));
    assert!(mem.write(GuestAddress(0x9_0000), &buf).is_err());
    // The device's write was the first to fault.
    assert_eq!(vm.ram_fault(), Some(0x8_0000));
    println!("CHILD OK");
}

/// Issue 16, finding 3, the mirror case: a vhost-user backend (any process
/// holding the file) that shrinks a `memory-backend-file,share=on` guest
/// RAM file makes the monitor's device accesses past the new end fail;
/// before, they raised SIGBUS and killed the monitor. Runs in a child
/// process so a death is observed.
#[test]
fn guest_ram_whose_file_shrinks_fails_accesses_instead_of_killing_the_monitor() {
    if !kvm_or_skip(TRUNCATED_RAM_TEST) {
        return;
    }
    if std::env::var_os(TRUNCATED_RAM_CHILD).is_some() {
        truncated_ram_child();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            TRUNCATED_RAM_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TRUNCATED_RAM_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "the child {}\n{stdout}\n{}",
        match out.status.signal() {
            Some(libc::SIGBUS) => "was killed by SIGBUS".to_string(),
            Some(s) => format!("was killed by signal {s}"),
            None => format!("exited with {:?}", out.status.code()),
        },
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 16, finding 10: guest memory handed out by the VM keeps the
/// mapping alive. Before, `guest_memory()` gave a region table whose clone
/// pointed into host memory the `Vm` unmapped when dropped: a device or a
/// caller that kept the clone read freed memory from safe code.
#[test]
fn guest_memory_kept_past_the_vm_still_reads_its_ram() {
    if !kvm_or_skip("guest_memory_kept_past_the_vm_still_reads_its_ram") {
        return;
    }
    let memory = HostMemory::ram(2 << 20, false, false).unwrap();
    let vm = Vm::new(memory).unwrap();
    let kept = vm.guest_memory().clone();
    kept.write_u64(GuestAddress(0x1000), 0x0123_4567_89ab_cdef)
        .unwrap();
    drop(vm);
    assert_eq!(
        kept.read_u64(GuestAddress(0x1000)).unwrap(),
        0x0123_4567_89ab_cdef
    );
    assert_eq!(kept.host_memory().map(HostMemory::len), Some(2 << 20));
}

/// A device's RAM page: whole pages only, never over RAM, another
/// device's RAM or an MMIO range (nor an MMIO range over it); what the
/// host writes to it reads back, and outside it nothing is touched.
#[test]
fn device_ram_takes_whole_free_pages_and_copies_in_and_out() {
    if !kvm_or_skip("device_ram_takes_whole_free_pages_and_copies_in_and_out") {
        return;
    }
    let memory = HostMemory::ram(2 << 20, false, false).unwrap();
    let mut vm = Vm::new(memory).unwrap();
    vm.add_mmio_device("dev", 0xfed4_0000, 0x5000, Box::new(EmptySlot))
        .unwrap();
    for (base, size, want) in [
        (0x1000, 0x1000, "overlaps RAM"),
        (0xfed4_5001, 0x1000, "4 KiB pages"),
        (0xfed4_5000, 0x800, "4 KiB pages"),
        (0xfed4_4000, 0x1000, "overlaps 'dev'"),
        (u64::MAX - 0xfff, 0x2000, "wraps"),
    ] {
        let e = vm
            .add_device_ram("buf", base, size)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{base:#x}: {e}");
    }
    let ram = vm.add_device_ram("buf", 0xfed4_5000, 0x1000).unwrap();
    assert_eq!((ram.base(), ram.len()), (0xfed4_5000, 0x1000));
    assert!(ram.write(0xff0, &[1, 2, 3, 4]));
    let mut b = [0u8; 4];
    assert!(ram.read(0xff0, &mut b));
    assert_eq!(b, [1, 2, 3, 4]);
    assert!(!ram.write(0xffe, &[0; 4]));
    assert!(!ram.read(usize::MAX, &mut b));
    assert!(vm.add_device_ram("again", 0xfed4_5000, 0x1000).is_err());
    let e = vm
        .add_mmio_device("late", 0xfed4_5800, 0x100, Box::new(EmptySlot))
        .unwrap_err();
    assert!(matches!(e, VmError::MmioOverlapsRam(_)), "{e}");
}
