//! The PVH entry: the ELF note naming it (XEN_ELFNOTE_PHYS32_ENTRY), the
//! 32-bit protected-mode code a PVH loader jumps to, the identity page
//! tables, the GDT and the switch to long mode; then `guest_rt_start64`.
//!
//! `.bss` is zeroed only after the switch to long mode (see the entry).
//!
//! PVH entry state (xen `arch-x86/hvm/start_info.h`): 32-bit protected mode,
//! paging off, flat 4 GiB code and data segments, `ebx` = physical address of
//! `hvm_start_info`, interrupts off. The code here uses only plain
//! instructions, so it runs under any KVM, including ones that emulate little.

use crate::layout::STACK_SIZE;
use core::arch::global_asm;

global_asm!(
    r#"
    /* The PVH note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), an
       8-byte entry address. Alignment 4, in its own PT_NOTE segment. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad guest_rt_pvh_entry
    .balign 4
    .popsection

    .pushsection .text.guest_rt_entry32, "ax"
    .code32
    .global guest_rt_pvh_entry
guest_rt_pvh_entry:
    cli
    cld
    movl %ebx, %esi                  /* hvm_start_info, kept for Rust */

    lgdt guest_rt_gdt_ptr

    movl %cr4, %eax
    orl $0x20, %eax                  /* CR4.PAE */
    movl %eax, %cr4

    movl $guest_rt_pml4, %eax
    movl %eax, %cr3

    movl $0xc0000080, %ecx           /* IA32_EFER */
    rdmsr
    orl $0x100, %eax                 /* EFER.LME */
    wrmsr

    movl %cr0, %eax
    orl $0x80000001, %eax            /* CR0.PG | CR0.PE */
    movl %eax, %cr0

    ljmp $0x08, $guest_rt_entry64

    .code64
guest_rt_entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs

    /* Zero .bss (runtime buffers; the stack has its own section that is
       not zeroed, as every instruction counts where the monitor emulates
       them): loaders need not. Done here,
       with paging on, not in the 32-bit code above: a monitor that
       emulates the unpaged entry instruction by instruction (kvm_pvm)
       would take milliseconds over a `rep stos` there. Nothing before
       this point uses .bss (the GDT and page tables are .data, no stack
       yet); it is 4096-aligned and a multiple of 16 long (link.ld). */
    leaq __bss_start(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    shrq $3, %rcx
    xorl %eax, %eax
    rep stosq

    /* The stack canary (exit.rs checks it at the verdict). */
    movabsq ${canary}, %rax
    movq %rax, guest_rt_stack_bottom(%rip)

    leaq guest_rt_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    movl %esi, %edi                  /* zero-extends the start info address */
    call guest_rt_start64
2:
    ud2
    jmp 2b
    .popsection

    /* GDT: null, 0x08 64-bit code, 0x10 flat data (accessed bits preset). */
    .pushsection .data.guest_rt_gdt, "aw"
    .balign 16
guest_rt_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
guest_rt_gdt_end:
    .balign 8
    .global guest_rt_gdt_ptr
guest_rt_gdt_ptr:
    .word guest_rt_gdt_end - guest_rt_gdt - 1
    .quad guest_rt_gdt
    .popsection

    /* Identity map of the first 4 GiB with 2 MiB pages: one PML4, one PDPT,
       four page directories. 0..3 GiB is write-back (P|RW|PS = 0x83), the
       last GiB (MMIO: virtio-mmio slots, IOAPIC, LAPIC) uncached
       (P|RW|PWT|PCD|PS = 0x9b). */
    .pushsection .data.guest_rt_paging, "aw"
    .balign 4096
    .global guest_rt_pml4
guest_rt_pml4:
    .quad guest_rt_pdpt + 0x3
    .fill 511, 8, 0
guest_rt_pdpt:
    .quad guest_rt_pd + 0x0000 + 0x3
    .quad guest_rt_pd + 0x1000 + 0x3
    .quad guest_rt_pd + 0x2000 + 0x3
    .quad guest_rt_pd + 0x3000 + 0x3
    .fill 508, 8, 0
guest_rt_pd:
    .set guest_rt_page, 0
    .rept 1536
    .quad guest_rt_page + 0x83
    .set guest_rt_page, guest_rt_page + 0x200000
    .endr
    .rept 512
    .quad guest_rt_page + 0x9b
    .set guest_rt_page, guest_rt_page + 0x200000
    .endr
    .popsection

    .pushsection .guest_rt_stack, "aw", @nobits
    .balign 16
    .global guest_rt_stack_bottom
guest_rt_stack_bottom:
    .skip {stack_size}
guest_rt_stack_top:
    .popsection
"#,
    stack_size = const STACK_SIZE,
    canary = const crate::exit::STACK_CANARY,
    options(att_syntax)
);
