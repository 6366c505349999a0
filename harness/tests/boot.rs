//! The monitor core end to end under KVM, with tiny guests made here as
//! 32-bit machine code in hand-built ELFs: host memory → PVH load → vCPU →
//! run loop → verdict, serial output and exit counts. Also the typed errors
//! of bad ELFs and overlapping MMIO ranges. Tests that need KVM print
//! `SKIP: <reason>` and return where `/dev/kvm` cannot be opened.

use std::time::Duration;

use backends::hostmem::HostMemory;
use monitor::bus::{BusError, MmioBus};
use monitor::ports::{EXIT_FAIL, EXIT_PASS};
use monitor::pvh::testing::{Note, Segment, elf, guest};
use monitor::pvh::{self, ElfError, LoadError};
use monitor::slots::{self, EmptySlot};
use monitor::vm::{self, Outcome, Verdict, Vm, VmError};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);

fn kvm_ready(test: &str) -> bool {
    vm::kvm_or_skip(test)
}

/// 32-bit code, assembled by hand.
mod asm {
    /// `mov dx, 0x3f8` then `mov al, b; out dx, al` per byte.
    pub fn print(s: &str) -> Vec<u8> {
        let mut c = vec![0x66, 0xba, 0xf8, 0x03];
        for b in s.bytes() {
            c.extend_from_slice(&[0xb0, b, 0xee]);
        }
        c
    }

    /// `mov eax, v; out 0xf4, eax`.
    pub fn exit32(v: u32) -> Vec<u8> {
        let mut c = vec![0xb8];
        c.extend_from_slice(&v.to_le_bytes());
        c.extend_from_slice(&[0xe7, 0xf4]);
        c
    }

    /// `mov al, v; out 0xf4, al`.
    pub fn exit8(v: u8) -> Vec<u8> {
        vec![0xb0, v, 0xe6, 0xf4]
    }

    /// `mov ax, v; out 0xf4, ax`.
    pub fn exit16(v: u16) -> Vec<u8> {
        let [lo, hi] = v.to_le_bytes();
        vec![0x66, 0xb8, lo, hi, 0x66, 0xe7, 0xf4]
    }

    /// `hlt`.
    pub const HLT: [u8; 1] = [0xf4];
    /// `cli; hlt`.
    pub const CLI_HLT: [u8; 2] = [0xfa, 0xf4];
    /// `jmp $`.
    pub const SPIN: [u8; 2] = [0xeb, 0xfe];
    /// `ud2`.
    pub const UD2: [u8; 2] = [0x0f, 0x0b];

    /// Joins pieces.
    pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }
}

fn memfd(size: u64) -> HostMemory {
    HostMemory::memfd("boot-test", size, true, true, false).unwrap()
}

fn run(code: &[u8], memory: HostMemory, timeout: Duration) -> Outcome {
    let image = guest(code);
    let out = vm::boot(memory, &image, "console=ttyS0", 2, timeout).unwrap();
    println!(
        "verdict {} | {} | boot-to-exit {:?} (setup {:?}) | serial {:?}",
        out.verdict, out.exits, out.boot_to_exit, out.setup, out.serial
    );
    out
}

#[test]
fn a_passing_guest_prints_and_exits() {
    if !kvm_ready("a_passing_guest_prints_and_exits") {
        return;
    }
    let code = asm::cat(&[&asm::print("ok\n"), &asm::exit32(EXIT_PASS), &asm::HLT]);
    // Each host memory backend carries a guest the whole way.
    let dir = std::env::temp_dir().join(format!("harness-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let memories = [
        ("memfd", memfd(64 * MIB)),
        ("ram", HostMemory::ram(16 * MIB, false, true).unwrap()),
        (
            "file",
            HostMemory::file(&dir.join("ram"), 16 * MIB, true, false).unwrap(),
        ),
    ];
    for (kind, memory) in memories {
        let out = run(&code, memory, TIMEOUT);
        assert_eq!(out.verdict, Verdict::Pass, "{kind}");
        assert_eq!(out.serial, "ok\n", "{kind}");
        assert_eq!(out.exits.io_out, 4, "{kind}: 3 bytes and the exit");
        assert_eq!(out.exits.total(), 4, "{kind}: {}", out.exits);
        println!(
            "boot-to-exit ({kind}, hand-made pass guest): {:?}",
            out.boot_to_exit
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_guest_reports_its_message() {
    if !kvm_ready("a_failing_guest_reports_its_message") {
        return;
    }
    let code = asm::cat(&[
        &asm::print("verdict: fail: crafted\r\n"),
        &asm::exit32(EXIT_FAIL),
        &asm::CLI_HLT,
    ]);
    let out = run(&code, memfd(16 * MIB), TIMEOUT);
    assert_eq!(out.verdict, Verdict::Fail("crafted".into()));
    // Without a message the exit value is named.
    let out = run(
        &asm::cat(&[&asm::exit32(EXIT_FAIL), &asm::HLT]),
        memfd(16 * MIB),
        TIMEOUT,
    );
    match &out.verdict {
        Verdict::Fail(msg) => assert!(msg.contains("0x11"), "{msg}"),
        other => panic!("{other}"),
    }
    // Any other value is a failure naming it.
    let out = run(
        &asm::cat(&[&asm::exit32(0x42), &asm::HLT]),
        memfd(16 * MIB),
        TIMEOUT,
    );
    match &out.verdict {
        Verdict::Fail(msg) => assert!(msg.contains("0x42"), "{msg}"),
        other => panic!("{other}"),
    }
}

#[test]
fn the_exit_port_takes_one_two_and_four_byte_writes() {
    if !kvm_ready("the_exit_port_takes_one_two_and_four_byte_writes") {
        return;
    }
    for (code, want_pass) in [
        (asm::exit8(EXIT_PASS as u8), true),
        (asm::exit16(EXIT_PASS as u16), true),
        (asm::exit8(EXIT_FAIL as u8), false),
        (asm::exit16(EXIT_FAIL as u16), false),
    ] {
        let out = run(&asm::cat(&[&code, &asm::HLT]), memfd(16 * MIB), TIMEOUT);
        assert_eq!(out.verdict.is_pass(), want_pass, "{}", out.verdict);
        assert_eq!(out.verdict.kind(), if want_pass { "pass" } else { "fail" });
    }
}

#[test]
fn a_spinning_guest_times_out_with_its_registers() {
    if !kvm_ready("a_spinning_guest_times_out_with_its_registers") {
        return;
    }
    let out = run(&asm::SPIN, memfd(16 * MIB), Duration::from_millis(300));
    match &out.verdict {
        Verdict::Timeout(r) => {
            assert_eq!(r.rip, 0x10_0000);
            assert_eq!(r.cr0 & 1, 1, "protected mode");
            assert_eq!(r.cs, 0x10);
            assert_eq!(r.mode(), "32-bit");
            assert_eq!(r.rbx, pvh::START_INFO, "ebx = start info");
        }
        other => panic!("{other}"),
    }
    assert!(out.boot_to_exit >= Duration::from_millis(300));
    assert!(out.boot_to_exit < Duration::from_secs(10));
    assert!(out.exits.interrupted >= 1, "{}", out.exits);
}

#[test]
fn a_guest_halted_with_interrupts_off_is_reported_as_halted() {
    if !kvm_ready("a_guest_halted_with_interrupts_off_is_reported_as_halted") {
        return;
    }
    let code = asm::cat(&[&asm::print("bye\n"), &asm::CLI_HLT]);
    let out = run(&code, memfd(16 * MIB), Duration::from_millis(300));
    match &out.verdict {
        Verdict::Halted(r) => {
            assert_eq!(r.rflags & (1 << 9), 0);
            assert!(r.detail.contains("interrupts off"), "{r}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(out.serial, "bye\n");
}

#[test]
fn a_triple_fault_is_reported_with_the_registers() {
    if !kvm_ready("a_triple_fault_is_reported_with_the_registers") {
        return;
    }
    // `ud2` with an empty IDT: #UD cannot be delivered (#GP), neither can
    // that (#DF), and the CPU shuts down.
    let code = asm::cat(&[&asm::print("x"), &asm::UD2]);
    let out = run(&code, memfd(16 * MIB), TIMEOUT);
    match &out.verdict {
        Verdict::Shutdown(r) => {
            assert!(r.detail.contains("triple fault"), "{r}");
            assert_eq!(r.cr0 & 1, 1);
            assert_eq!(r.cs, 0x10);
        }
        other => panic!("expected a shutdown, got {other}"),
    }
    assert_eq!(out.exits.shutdown, 1);
    assert_eq!(out.serial, "x");
}

#[test]
fn an_int3_through_an_empty_idt_is_reported_with_the_registers() {
    if !kvm_ready("an_int3_through_an_empty_idt_is_reported_with_the_registers") {
        return;
    }
    // Hardware KVM turns this into a triple fault like `ud2`; this
    // machine's KVM (kvm_pvm) stops with an internal error instead. Either
    // way the run ends with a typed verdict and the registers.
    let out = run(&[0xcc], memfd(16 * MIB), TIMEOUT);
    match &out.verdict {
        Verdict::InternalError(r) => {
            assert!(r.detail.contains("KVM internal error"), "{r}");
            assert_eq!(out.exits.internal_error, 1);
        }
        Verdict::Shutdown(r) => assert!(r.detail.contains("triple fault"), "{r}"),
        other => panic!("expected an internal error or a shutdown, got {other}"),
    }
    let r = out.verdict.report().unwrap();
    assert_eq!(r.cs, 0x10);
    println!("int3 through an empty IDT here: {}", out.verdict.kind());
}

#[test]
fn a_vm_can_move_to_a_vcpu_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Vm>();
}

#[test]
fn the_guest_sees_the_pvh_start_info_and_the_mmio_slots() {
    if !kvm_ready("the_guest_sees_the_pvh_start_info_and_the_mmio_slots") {
        return;
    }
    let fail_at = |code: &mut Vec<u8>, jne_at: usize| {
        // Patch a `jne rel8` at `jne_at` to jump to the end of `code`.
        let rel = code.len() - (jne_at + 2);
        code[jne_at + 1] = u8::try_from(rel).unwrap();
    };
    let mut code = Vec::new();
    let mut jumps = Vec::new();
    // cmp ebx, 0x6000; jne fail
    code.extend_from_slice(&[0x81, 0xfb, 0x00, 0x60, 0x00, 0x00]);
    jumps.push(code.len());
    code.extend_from_slice(&[0x75, 0]);
    // cmp dword [ebx], START_INFO_MAGIC; jne fail
    code.extend_from_slice(&[0x81, 0x3b]);
    code.extend_from_slice(&pvh::START_INFO_MAGIC.to_le_bytes());
    jumps.push(code.len());
    code.extend_from_slice(&[0x75, 0]);
    // mov eax, [0xfeb00000]; cmp eax, "virt"; jne fail
    code.extend_from_slice(&[0xa1, 0x00, 0x00, 0xb0, 0xfe, 0x3d]);
    code.extend_from_slice(b"virt");
    jumps.push(code.len());
    code.extend_from_slice(&[0x75, 0]);
    // mov eax, [0xfeb00208]; test eax, eax; jne fail (slot 1: DeviceID 0)
    code.extend_from_slice(&[0xa1, 0x08, 0x02, 0xb0, 0xfe, 0x85, 0xc0]);
    jumps.push(code.len());
    code.extend_from_slice(&[0x75, 0]);
    // mov eax, [0xfeb00400] (no slot 2 placed): all ones; cmp eax, -1; jne fail
    code.extend_from_slice(&[0xa1, 0x00, 0x04, 0xb0, 0xfe, 0x83, 0xf8, 0xff]);
    jumps.push(code.len());
    code.extend_from_slice(&[0x75, 0]);
    code.extend_from_slice(&asm::exit32(EXIT_PASS));
    code.extend_from_slice(&asm::HLT);
    for j in jumps {
        fail_at(&mut code, j);
    }
    code.extend_from_slice(&asm::exit32(EXIT_FAIL));
    code.extend_from_slice(&asm::HLT);

    let mut vm = Vm::new(memfd(32 * MIB)).unwrap();
    let placed = vm.add_empty_virtio_slots(2).unwrap();
    let cmdline = slots::append_cmdline("console=ttyS0", &placed);
    assert_eq!(
        cmdline,
        "console=ttyS0 virtio_mmio.device=512@0xfeb00000:5 virtio_mmio.device=512@0xfeb00200:6"
    );
    let boot = vm.load_pvh(&guest(&code), &cmdline).unwrap();
    assert_eq!(boot.entry, 0x10_0000);
    let out = vm.run(TIMEOUT).unwrap();
    println!("{} | {}", out.verdict, out.exits);
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(out.exits.mmio_read, 3);
    assert_eq!(out.exits.unhandled_mmio, 1);
}

#[test]
fn the_debug_port_has_its_own_log() {
    if !kvm_ready("the_debug_port_has_its_own_log") {
        return;
    }
    // mov al, 'd'; out 0xe9, al (twice), then pass.
    let code = asm::cat(&[
        &[0xb0, b'd', 0xe6, 0xe9, 0xe6, 0xe9],
        &asm::exit32(EXIT_PASS),
    ]);
    let out = run(&code, memfd(16 * MIB), TIMEOUT);
    assert_eq!(out.verdict, Verdict::Pass);
    assert_eq!(out.debug, "dd");
    assert_eq!(out.serial, "");
}

#[test]
fn bad_elfs_are_typed_errors_through_the_vm() {
    if !kvm_ready("bad_elfs_are_typed_errors_through_the_vm") {
        return;
    }
    let mut vm = Vm::new(memfd(2 * MIB)).unwrap();
    let no_note = elf(
        &[Segment {
            paddr: MIB,
            code: asm::HLT.to_vec(),
            memsz: 1,
        }],
        Note::None,
    );
    let e = vm.load_pvh(&no_note, "").unwrap_err();
    assert!(
        matches!(e, VmError::Load(LoadError::Elf(ElfError::NoPvhNote))),
        "{e:?}"
    );
    assert!(e.to_string().contains("XEN_ELFNOTE_PHYS32_ENTRY"), "{e}");

    let outside = elf(
        &[Segment {
            paddr: 3 * MIB,
            code: asm::HLT.to_vec(),
            memsz: 0x1000,
        }],
        Note::Phys32(3 * MIB as u32),
    );
    let e = vm.load_pvh(&outside, "").unwrap_err();
    assert!(
        matches!(
            e,
            VmError::Load(LoadError::SegmentOutsideRam {
                index: 0,
                paddr: 0x30_0000,
                memsz: 0x1000
            })
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("0x300000"), "{e}");

    let good = guest(&asm::HLT);
    let e = vm.load_pvh(&good[..good.len() - 8], "").unwrap_err();
    assert!(
        matches!(e, VmError::Load(LoadError::Elf(ElfError::Truncated { .. }))),
        "{e:?}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
    // Running before a successful load is refused, not undefined.
    assert!(matches!(vm.run(TIMEOUT), Err(VmError::NotLoaded)));
}

#[test]
fn overlapping_mmio_ranges_are_refused() {
    let mut bus = MmioBus::new();
    bus.insert("virtio-mmio.0", 0xfeb0_0000, 0x200, Box::new(EmptySlot))
        .unwrap();
    let e = bus
        .insert("intruder", 0xfeb0_01f0, 0x20, Box::new(EmptySlot))
        .unwrap_err();
    assert!(matches!(e, BusError::Overlap { .. }));
    assert_eq!(
        e.to_string(),
        "MMIO range 'intruder' at 0xfeb001f0..0xfeb00210 overlaps 'virtio-mmio.0' at 0xfeb00000..0xfeb00200"
    );

    if !kvm_ready("overlapping_mmio_ranges_are_refused (VM part)") {
        return;
    }
    let mut vm = Vm::new(memfd(16 * MIB)).unwrap();
    vm.add_empty_virtio_slots(1).unwrap();
    let e = vm
        .add_mmio_device("late", 0xfeb0_0100, 0x200, Box::new(EmptySlot))
        .unwrap_err();
    assert!(matches!(e, VmError::Bus(BusError::Overlap { .. })), "{e:?}");
    let e = vm
        .add_mmio_device("in-ram", 0x10_0000, 0x1000, Box::new(EmptySlot))
        .unwrap_err();
    assert!(matches!(e, VmError::MmioOverlapsRam(_)), "{e:?}");
    assert!(e.to_string().contains("'in-ram'"), "{e}");
}
