//! The IDT: 256 interrupt gates to 16-byte stubs that push the vector (and a
//! zero where the CPU pushes no error code), save the registers and call
//! [`guest_rt_trap`]. Exceptions (vectors 0–31) are reported with the vector,
//! `rip`, error code and `cr2`, and fail the run through the exit port;
//! vectors 32–255 go to [`crate::apic`]'s handlers.
//!
//! No TSS and no IST: a stack overflow that faults again ends in a triple
//! fault, which QEMU (`-no-reboot`) and the harness report as a shutdown.

use crate::cpu::cr2;
use crate::exit;
use core::arch::global_asm;
use core::cell::UnsafeCell;

/// The 64-bit code selector of the runtime's GDT (see `start.rs`).
pub const CODE_SELECTOR: u16 = 0x08;

/// Registers saved on entry to a trap, lowest address first; the layout the
/// stubs in this module build.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    /// Saved r15.
    pub r15: u64,
    /// Saved r14.
    pub r14: u64,
    /// Saved r13.
    pub r13: u64,
    /// Saved r12.
    pub r12: u64,
    /// Saved r11.
    pub r11: u64,
    /// Saved r10.
    pub r10: u64,
    /// Saved r9.
    pub r9: u64,
    /// Saved r8.
    pub r8: u64,
    /// Saved rbp.
    pub rbp: u64,
    /// Saved rdi.
    pub rdi: u64,
    /// Saved rsi.
    pub rsi: u64,
    /// Saved rdx.
    pub rdx: u64,
    /// Saved rcx.
    pub rcx: u64,
    /// Saved rbx.
    pub rbx: u64,
    /// Saved rax.
    pub rax: u64,
    /// Vector number (pushed by the stub).
    pub vector: u64,
    /// Error code (pushed by the CPU, or 0 by the stub).
    pub error_code: u64,
    /// Interrupted instruction pointer.
    pub rip: u64,
    /// Interrupted code segment.
    pub cs: u64,
    /// Interrupted flags.
    pub rflags: u64,
    /// Interrupted stack pointer.
    pub rsp: u64,
    /// Interrupted stack segment.
    pub ss: u64,
}

// The stubs: vector v starts at guest_rt_vectors + 16 * v. Vectors 8, 10-14,
// 17, 21, 29 and 30 get an error code from the CPU; the others push 0.
global_asm!(
    r#"
    .pushsection .text.guest_rt_vectors, "ax"
    .balign 16
    .global guest_rt_vectors
guest_rt_vectors:
    .set guest_rt_vec, 0
    .rept 256
    .balign 16
    .if (guest_rt_vec == 8) || ((guest_rt_vec >= 10) && (guest_rt_vec <= 14)) || (guest_rt_vec == 17) || (guest_rt_vec == 21) || (guest_rt_vec == 29) || (guest_rt_vec == 30)
    .else
    pushq $0
    .endif
    pushq $guest_rt_vec
    jmp guest_rt_trap_common
    .set guest_rt_vec, guest_rt_vec + 1
    .endr

guest_rt_trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call guest_rt_trap
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    .popsection
"#,
    options(att_syntax)
);

/// Stride between two vector stubs, in bytes.
const STUB_SIZE: u64 = 16;

unsafe extern "C" {
    /// First stub (vector 0); only its address is used.
    static guest_rt_vectors: u8;
}

/// One 16-byte 64-bit IDT gate descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const EMPTY: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present ring-0 interrupt gate (IF cleared on entry) to `handler`.
    fn interrupt(handler: u64) -> Self {
        Self {
            offset_low: handler as u16,
            selector: CODE_SELECTOR,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by `init` on the only vCPU, with interrupts off,
// before `lidt`; afterwards only the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::EMPTY; 256]));

/// The operand of `lidt`.
#[repr(C, packed)]
struct IdtPointer {
    limit: u16,
    base: u64,
}

/// Fills the IDT and loads it. Called once by the runtime at boot.
pub(crate) fn init() {
    let base = &raw const guest_rt_vectors as u64;
    // SAFETY: called once, before interrupts are enabled, so nothing else
    // reads or writes the table meanwhile.
    let gates = unsafe { &mut *IDT.0.get() };
    for (vector, gate) in gates.iter_mut().enumerate() {
        *gate = Gate::interrupt(base + vector as u64 * STUB_SIZE);
    }
    let pointer = IdtPointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the table is filled with gates to the stubs above, which are
    // valid handlers, and it lives forever.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &raw const pointer, options(readonly, nostack, preserves_flags));
    }
}

/// Name of an exception vector.
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        _ => "reserved exception",
    }
}

/// Called by the stubs with the saved state. Exceptions fail the run;
/// interrupts go to the registered handler.
#[unsafe(no_mangle)]
extern "C" fn guest_rt_trap(frame: &mut TrapFrame) {
    let vector = frame.vector as u8;
    if vector < 32 {
        let cr2 = if vector == 14 { cr2() } else { 0 };
        exit::fail(format_args!(
            "CPU exception {vector} ({}) at rip {:#x}, error code {:#x}, cr2 {cr2:#x}, rsp {:#x}",
            exception_name(vector),
            frame.rip,
            frame.error_code,
            frame.rsp,
        ));
    }
    crate::apic::dispatch(vector, frame);
}
