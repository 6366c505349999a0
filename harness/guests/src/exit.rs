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
    crate::println!("verdict: pass");
    exit(PASS)
}

/// Reports a failure with a message and stops. A second failure while the
/// first is being reported (a fault in the printing) skips the message.
pub fn fail(message: fmt::Arguments<'_>) -> ! {
    if !FAILING.swap(true, Ordering::Relaxed) {
        crate::println!("verdict: fail: {message}");
    }
    exit(FAIL)
}
