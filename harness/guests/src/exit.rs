//! The verdict: a `verdict: pass` / `verdict: fail: <message>` line on COM1,
//! then a 32-bit write to the test-exit port, then `cli; hlt` forever (for
//! monitors without an exit port).
//!
//! The port is QEMU's `isa-debug-exit,iobase=0xf4,iosize=4`: writing `v`
//! makes QEMU exit with status `(v << 1) | 1`, so [`PASS`] gives status 33
//! and [`FAIL`] gives 35. The harness's monitor reads the same port and the
//! same values; any other value is a failure too.

use crate::cpu::{halt, outl};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// I/O port of the test-exit device.
pub const EXIT_PORT: u16 = 0xf4;
/// Value written for a pass (QEMU exit status 33).
pub const PASS: u32 = 0x10;
/// Value written for a failure: panic, CPU exception, failed check (QEMU
/// exit status 35).
pub const FAIL: u32 = 0x11;

/// QEMU's exit status for a value written to its `isa-debug-exit` port.
pub const fn qemu_status(value: u32) -> u32 {
    ((value << 1) | 1) & 0xff
}

/// Written at the bottom of the boot stack before the first call; a stack
/// that grew past its end overwrote it (and whatever `.bss` lies below it:
/// the stack is the image's last section).
pub const STACK_CANARY: u64 = 0x5354_4143_4b5f_4f4b;

unsafe extern "C" {
    static guest_rt_stack_bottom: u64;
}

/// Whether the stack canary is still there: the stack never overflowed.
pub fn stack_intact() -> bool {
    // SAFETY: the symbol is the stack section's first 8 bytes (start.rs),
    // 16-aligned, written before any Rust code ran; a volatile read sees
    // what an overflow may have written.
    unsafe { core::ptr::read_volatile(&raw const guest_rt_stack_bottom) == STACK_CANARY }
}

/// Set once a failure is being reported, so that a fault while reporting
/// does not recurse.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Writes `value` to the exit port and halts.
pub fn exit(value: u32) -> ! {
    // SAFETY: the exit port only ends the VM; nothing else listens there.
    unsafe { outl(EXIT_PORT, value) };
    halt()
}

/// Reports a pass and stops.
pub fn pass() -> ! {
    if !stack_intact() {
        fail(format_args!(
            "the guest's stack overflowed its {} KiB (statics below it may be corrupt)",
            crate::layout::STACK_SIZE / 1024
        ));
    }
    crate::println!("verdict: pass");
    exit(PASS)
}

/// Reports a failure with a message and stops. A second failure while the
/// first is being reported (a fault in the printing) skips the message.
pub fn fail(message: fmt::Arguments<'_>) -> ! {
    if !FAILING.swap(true, Ordering::Relaxed) {
        if !stack_intact() {
            crate::println!(
                "guest_rt: the stack overflowed (canary gone); the failure below may be its effect"
            );
        }
        crate::println!("verdict: fail: {message}");
    }
    exit(FAIL)
}
