//! Scenario `fail`: fails on purpose, to prove that monitors report a
//! failing guest. By default it executes `ud2` (a CPU exception the IDT
//! reports); with `fail=panic` on the command line it panics instead.
#![no_std]
#![no_main]

use guest_rt::{BootInfo, println};

guest_rt::entry!(main);

fn main(boot: &'static BootInfo) {
    if boot.cmdline_values("fail").any(|mode| mode == "panic") {
        println!("guest fail: panicking on purpose");
        panic!("the fail guest panics on purpose");
    }
    println!("guest fail: executing ud2 on purpose");
    // SAFETY: `ud2` raises #UD, which the runtime's IDT reports as a failure;
    // it touches no memory.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
}
