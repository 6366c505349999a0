//! Thin wrappers over the privileged x86 instructions the runtime needs:
//! port I/O, MSRs, control registers, `hlt`, interrupt flag. Each is
//! `unsafe` where misuse could break memory safety or the machine.

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port must be one whose side effects the caller owns (a device the
/// runtime drives); a write to an arbitrary port can reconfigure the machine.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// As for [`outb`]: reads can have side effects (e.g. clear a status).
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller vouches for the port; `in` touches no memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller vouches for the port; `out` touches no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist (else #GP) and reading it must have no side effect the
/// caller does not expect.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller vouches for the MSR; `rdmsr` touches no memory.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads CR2, the address of the last page fault.
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Enables maskable interrupts.
///
/// # Safety
/// Every vector that can arrive must be handled (see [`crate::apic`]), and no
/// code interrupted may hold state a handler also uses.
pub unsafe fn enable_interrupts() {
    // SAFETY: the caller vouches that interrupts can be taken now.
    unsafe { asm!("sti", options(nomem, nostack)) }
}

/// Disables maskable interrupts.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Enables interrupts and halts until the next one, atomically (`sti; hlt`:
/// an interrupt that is already pending wakes the `hlt`, it is not lost).
///
/// # Safety
/// As for [`enable_interrupts`].
pub unsafe fn wait_for_interrupt() {
    // SAFETY: the caller vouches that interrupts can be taken now.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Stops this vCPU for good: interrupts off, `hlt` forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops the vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Reads the time-stamp counter (for coarse timeouts and timing).
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` has no side effect.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}
