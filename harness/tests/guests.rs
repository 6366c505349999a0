//! The tiny guests (`harness/guests`, built by `build.rs`) booted by our own
//! monitor: the same ELFs that `qemu_boot.rs` boots under QEMU microvm must
//! give the same verdicts here. Prints each run's boot-to-exit time and VM
//! exits. Skips with `SKIP: <reason>` where `/dev/kvm` cannot be opened.

use std::time::Duration;

use backends::hostmem::HostMemory;
use monitor::vm::{self, Outcome, Verdict};

const TIMEOUT: Duration = Duration::from_secs(30);

fn boot(name: &str, path: &str, cmdline: &str, slots: usize) -> Option<Outcome> {
    if !vm::kvm_or_skip(&format!("guest {name}")) {
        return None;
    }
    let elf = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let memory = HostMemory::memfd(name, 64 << 20, true, true, false).unwrap();
    let out = vm::boot(memory, &elf, cmdline, slots, TIMEOUT).unwrap();
    println!(
        "guest {name}: {} | {} | boot-to-exit {:?} (setup {:?})\n--- serial ---\n{}--------------",
        out.verdict, out.exits, out.boot_to_exit, out.setup, out.serial
    );
    Some(out)
}

#[test]
fn empty_passes_and_sees_the_empty_slots() {
    let Some(out) = boot("empty", env!("GUEST_EMPTY"), "", 2) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Pass, "{}", out.serial);
    assert!(out.serial.contains("verdict: pass"), "{}", out.serial);
    assert!(
        out.serial
            .contains("virtio-mmio 0xfeb00200 irq 6: magic 0x74726976 version 2 device-id 0"),
        "{}",
        out.serial
    );
    assert!(out.serial.contains("2 slot(s)"), "{}", out.serial);
}

#[test]
fn fail_fails_with_its_message() {
    let Some(out) = boot("fail", env!("GUEST_FAIL"), "fail=panic", 0) else {
        return;
    };
    assert_eq!(out.verdict.kind(), "fail", "{}", out.verdict);
    assert!(out.serial.contains("verdict: fail"), "{}", out.serial);
}

#[test]
fn timer_interrupts_arrive_through_the_in_kernel_lapic() {
    let Some(out) = boot("timer", env!("GUEST_TIMER"), "", 0) else {
        return;
    };
    assert_eq!(out.verdict, Verdict::Pass, "{}", out.serial);
}
