//! Devices behind virtio-mmio slots end to end under KVM, in both
//! notification modes: a hand-assembled 32-bit guest brings up a
//! virtio-rng (§3.1.1, §4.2.3) whose split ring the host laid out with
//! `virtio-core`'s driver side, notifies queue 0 (§4.2.3.3), and waits for
//! the slot's interrupt through its own IDT handler (which reads and
//! acknowledges `InterruptStatus`, §4.2.3.4) or polls the used index. The
//! host then checks the bytes against the deterministic backend, the
//! counters (which thread served the notify, how many interrupts) and KVM's
//! statistics. Also: device errors and device panics leave the VM running
//! with `DEVICE_NEEDS_RESET` (§2.1.2), and slot plumbing.

use std::collections::HashMap;
use std::time::Duration;

use backends::hostmem::HostMemory;
use backends::rng::{Deterministic, RngBackend};
use monitor::ports::{EXIT_FAIL, EXIT_PASS};
use monitor::pvh::testing::guest;
use monitor::slots::{self, VirtioSlot};
use monitor::virtio::{InterruptMode, NotifyMode, VirtioHandle};
use monitor::vm::{self, GuestRam, Outcome, Verdict, Vm, VmError};
use virtio_core::GuestMemory;
use virtio_core::features::DeviceType;
use virtio_core::memory::GuestAddress;
use virtio_core::split::driver::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::status::DeviceStatus;
use virtio_devices::rng::Rng;
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};

const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(20);
const SEED: u64 = 0x5eed;

const CODE: u32 = 0x10_0000;
const DESC: u32 = 0x20_0000;
const AVAIL: u32 = 0x20_1000;
const USED: u32 = 0x20_2000;
const BUF: u32 = 0x21_0000;
const BUF_LEN: u32 = 4096;
const IDT: u32 = 0x30_0000;
const IDTR: u32 = 0x30_0800;
const COUNTER: u32 = 0x30_0900;
const SEEN: u32 = 0x30_0904;
const STACK: u32 = 0x38_0000;
const VECTOR: u8 = 0x30;
const QUEUE_SIZE: u16 = 16;
const IOAPIC: u32 = 0xfec0_0000;
const LAPIC: u32 = 0xfee0_0000;

/// A tiny 32-bit assembler: the instructions these guests use, and
/// forward/backward jumps to labels (rel32).
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str)>,
}

impl Asm {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }
    fn label(&mut self, name: &'static str) -> &mut Self {
        self.labels.insert(name, self.code.len());
        self
    }
    fn jump(&mut self, opcode: &[u8], to: &'static str) -> &mut Self {
        self.bytes(opcode);
        self.fixups.push((self.code.len(), to));
        self.bytes(&[0; 4])
    }
    fn jmp(&mut self, to: &'static str) -> &mut Self {
        self.jump(&[0xe9], to)
    }
    fn jne(&mut self, to: &'static str) -> &mut Self {
        self.jump(&[0x0f, 0x85], to)
    }
    fn je(&mut self, to: &'static str) -> &mut Self {
        self.jump(&[0x0f, 0x84], to)
    }
    /// `mov dword [addr], v`.
    fn store(&mut self, addr: u32, v: u32) -> &mut Self {
        self.bytes(&[0xc7, 0x05]);
        self.bytes(&addr.to_le_bytes());
        self.bytes(&v.to_le_bytes())
    }
    /// `mov eax, [addr]`.
    fn load_eax(&mut self, addr: u32) -> &mut Self {
        self.bytes(&[0xa1]);
        self.bytes(&addr.to_le_bytes())
    }
    /// `cmp dword [addr], v` (v < 128).
    fn cmp32(&mut self, addr: u32, v: u8) -> &mut Self {
        self.bytes(&[0x83, 0x3d]);
        self.bytes(&addr.to_le_bytes());
        self.bytes(&[v])
    }
    /// `cmp word [addr], v`.
    fn cmp16(&mut self, addr: u32, v: u16) -> &mut Self {
        self.bytes(&[0x66, 0x81, 0x3d]);
        self.bytes(&addr.to_le_bytes());
        self.bytes(&v.to_le_bytes())
    }
    /// `test al, v`.
    fn test_al(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0xa8, v])
    }
    /// `mov eax, v; out 0xf4, eax`.
    fn exit(&mut self, v: u32) -> &mut Self {
        self.bytes(&[0xb8]);
        self.bytes(&v.to_le_bytes());
        self.bytes(&[0xe7, 0xf4, 0xfa, 0xf4])
    }
    fn finish(&mut self) -> Vec<u8> {
        for &(at, to) in &self.fixups {
            let target = self.labels[to] as i64;
            let rel = (target - (at as i64 + 4)) as i32;
            self.code[at..at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        self.code.clone()
    }
}

/// What the guest waits for after notifying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    /// The used index reaches 1.
    Used,
    /// `Status` shows DEVICE_NEEDS_RESET.
    NeedsReset,
}

/// How the guest runs.
#[derive(Clone, Copy, Debug)]
struct Program {
    slot: VirtioSlot,
    /// Wait for the interrupt (`sti; hlt`, IDT handler) rather than poll.
    irq: bool,
    /// Where the queue's rings are, as the guest tells the device.
    desc: u32,
    until: Until,
    /// Expect activation to fail (skip the notify, check NEEDS_RESET).
    activation_fails: bool,
}

impl Program {
    /// Rings at `DESC`, waiting by interrupt until the buffer is used.
    fn new(slot: VirtioSlot) -> Program {
        Program {
            slot,
            irq: true,
            desc: DESC,
            until: Until::Used,
            activation_fails: false,
        }
    }
}

/// The guest: brings the device up, notifies queue 0, waits, checks.
/// Returns the code and its interrupt handler's offset.
fn program(p: &Program) -> (Vec<u8>, u32) {
    let b = p.slot.base as u32;
    let mut a = Asm::default();
    // mov esp, STACK; mask both PICs (mov al, 0xff; out 0x21/0xa1, al).
    a.bytes(&[0xbc]).bytes(&STACK.to_le_bytes());
    a.bytes(&[0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1]);
    if p.irq {
        // lidt [IDTR]; LAPIC on (SVR); IOAPIC pin = slot irq → VECTOR,
        // edge, active high, unmasked, to APIC 0.
        a.bytes(&[0x0f, 0x01, 0x1d]).bytes(&IDTR.to_le_bytes());
        a.store(LAPIC + 0xf0, 0x1ff);
        a.store(IOAPIC, 0x10 + 2 * p.slot.irq);
        a.store(IOAPIC + 0x10, u32::from(VECTOR));
        a.store(IOAPIC, 0x11 + 2 * p.slot.irq);
        a.store(IOAPIC + 0x10, 0);
    }
    // §3.1.1: reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 only),
    // FEATURES_OK, queue 0, DRIVER_OK.
    a.store(b + 0x70, 0).store(b + 0x70, 1).store(b + 0x70, 3);
    a.store(b + 0x24, 1).store(b + 0x20, 1);
    a.store(b + 0x24, 0).store(b + 0x20, 0);
    a.store(b + 0x70, 0xb);
    a.load_eax(b + 0x70).test_al(0x08).je("fail");
    a.store(b + 0x30, 0).store(b + 0x38, u32::from(QUEUE_SIZE));
    let (avail, used) = (p.desc + (AVAIL - DESC), p.desc + (USED - DESC));
    a.store(b + 0x80, p.desc).store(b + 0x84, 0);
    a.store(b + 0x90, avail).store(b + 0x94, 0);
    a.store(b + 0xa0, used).store(b + 0xa4, 0);
    a.store(b + 0x44, 1);
    a.store(b + 0x70, 0xf);
    if p.activation_fails {
        a.load_eax(b + 0x70).test_al(0x40).je("fail");
        a.exit(EXIT_PASS);
    } else {
        if p.irq {
            a.bytes(&[0xfb]);
        }
        // QueueNotify = 0 (§4.2.3.3).
        a.store(b + 0x50, 0);
        // Wait until the condition holds (and, with interrupts, one was
        // taken): cli; check; sti; hlt, so no wake-up is lost between the
        // check and the hlt.
        a.label("wait");
        if p.irq {
            a.bytes(&[0xfa]);
        }
        match p.until {
            Until::Used => a.cmp16(USED + 2, 1).jne("sleep"),
            Until::NeedsReset => a.load_eax(b + 0x70).test_al(0x40).je("sleep"),
        };
        if p.irq {
            a.cmp32(COUNTER, 0).jne("done");
        } else {
            a.jmp("done");
        }
        a.label("sleep");
        if p.irq {
            a.bytes(&[0xfb, 0xf4]);
        }
        a.jmp("wait");
        a.label("done");
        match p.until {
            Until::Used => a.cmp16(USED + 2, 1).jne("fail"),
            Until::NeedsReset => a.load_eax(b + 0x70).test_al(0x40).je("fail"),
        };
        a.exit(EXIT_PASS);
    }
    a.label("fail").exit(EXIT_FAIL);
    // The handler: read InterruptStatus, acknowledge it (§4.2.3.4), note
    // it, count, EOI. It does not return: this machine's KVM (kvm_pvm)
    // cannot emulate a 32-bit `iret`, so it goes back to the wait loop
    // (interrupts off, as the gate left them; each pass leaves 12 bytes of
    // stack). A stale interrupt (e.g. from a previous run) is harmless.
    a.label("handler").load_eax(b + 0x60);
    a.bytes(&[0xa3]).bytes(&(b + 0x64).to_le_bytes());
    a.bytes(&[0x09, 0x05]).bytes(&SEEN.to_le_bytes());
    a.bytes(&[0xff, 0x05]).bytes(&COUNTER.to_le_bytes());
    a.store(LAPIC + 0xb0, 0);
    if p.irq && !p.activation_fails {
        a.jmp("wait");
    } else {
        a.exit(EXIT_FAIL);
    }
    let handler = a.labels["handler"] as u32;
    (a.finish(), handler)
}

/// Writes the IDT (one interrupt gate at VECTOR → the handler) and IDTR.
fn write_idt(mem: &GuestRam, handler: u32) {
    let gate_lo = (handler & 0xffff) | (0x10 << 16);
    let gate_hi = (handler & 0xffff_0000) | 0x8e00;
    let at = u64::from(IDT) + u64::from(VECTOR) * 8;
    mem.write_u32(GuestAddress(at), gate_lo).unwrap();
    mem.write_u32(GuestAddress(at + 4), gate_hi).unwrap();
    mem.write_u16(GuestAddress(u64::from(IDTR)), 256 * 8 - 1)
        .unwrap();
    mem.write_u32(GuestAddress(u64::from(IDTR) + 2), IDT)
        .unwrap();
}

/// The host's view of the guest's queue: one 4 KiB device-writable buffer
/// made available.
fn queue_with_one_buffer(mem: &GuestRam) -> DriverQueue<16> {
    let layout = QueueLayout::new(
        QueueSize::new(u32::from(QUEUE_SIZE)).unwrap(),
        GuestAddress(u64::from(DESC)),
        GuestAddress(u64::from(AVAIL)),
        GuestAddress(u64::from(USED)),
    )
    .unwrap();
    let mut q = DriverQueue::<16>::new(layout, false, None).unwrap();
    q.init(mem).unwrap();
    q.add(mem, &[], &[(GuestAddress(u64::from(BUF)), BUF_LEN)])
        .unwrap();
    q.publish(mem).unwrap();
    q
}

fn memfd() -> HostMemory {
    HostMemory::memfd("notify-test", 32 * MIB, true, true, false).unwrap()
}

type TestRng = Rng<Deterministic, GuestRam>;

/// A VM with a deterministic virtio-rng at slot 0, its queue set up.
fn rng_vm(mode: NotifyMode) -> (Vm, VirtioHandle<TestRng>, DriverQueue<16>) {
    let mut vm = Vm::new(memfd()).unwrap();
    let rng = Rng::new(Deterministic::new(SEED), vm.guest_memory().clone());
    let handle = vm.add_virtio_device("rng0", rng, vec![], mode).unwrap();
    let q = queue_with_one_buffer(vm.guest_memory());
    (vm, handle, q)
}

/// Loads `p` (and its IDT) and runs it.
fn run(vm: &mut Vm, p: &Program) -> Outcome {
    let (code, handler) = program(p);
    let cmdline = slots::append_cmdline("console=ttyS0", &vm.virtio_slots());
    vm.load_pvh(&guest(&code), &cmdline).unwrap();
    write_idt(vm.guest_memory(), CODE + handler);
    let out = vm.run(TIMEOUT).unwrap();
    println!("{:?}: {} | {}", p, out.verdict, out.exits);
    if let Some(k) = &out.kvm {
        println!("{k}");
    }
    for d in &out.devices {
        println!("{d}");
    }
    out
}

fn expected_bytes(n: usize) -> Vec<u8> {
    let mut d = Deterministic::new(SEED);
    let mut v = vec![0u8; n];
    d.fill(&mut v).unwrap();
    v
}

/// Runs the rng end to end in `mode`, waiting by interrupt or polling.
fn rng_end_to_end(mode: NotifyMode, irq: bool) -> Outcome {
    let (mut vm, handle, mut q) = rng_vm(mode);
    let slot = handle.slot();
    assert_eq!(slot, VirtioSlot::new(0).unwrap());
    let p = Program {
        irq,
        ..Program::new(slot)
    };
    let out = run(&mut vm, &p);
    assert_eq!(out.verdict, Verdict::Pass, "{}", out.verdict);

    // §5.4.6: the buffer was filled, with the backend's bytes.
    let mem = vm.guest_memory();
    let used = q.pop_used(mem).unwrap().expect("a used buffer");
    assert_eq!(used.len, BUF_LEN);
    let mut got = vec![0u8; BUF_LEN as usize];
    mem.read(GuestAddress(u64::from(BUF)), &mut got).unwrap();
    assert_eq!(got, expected_bytes(BUF_LEN as usize));
    assert_eq!(handle.with_device(|d| d.stats().bytes), u64::from(BUF_LEN));

    let r = handle.report();
    assert_eq!(out.devices, vec![r.clone()]);
    assert_eq!(r.device_id, DeviceType::Rng.id());
    assert_eq!(r.mode, mode);
    assert!(r.status.contains(DeviceStatus::DRIVER_OK), "{r}");
    assert_eq!(r.features, Some(1 << 32), "VERSION_1 only");
    assert_eq!(r.device_error, None);
    assert_eq!(r.fault, None);
    assert_eq!(r.counters.notifications(), 1, "{r}");
    match mode {
        NotifyMode::Worker => assert_eq!(r.counters.notify_worker, 1, "{r}"),
        NotifyMode::Inline => assert_eq!(r.counters.notify_inline, 1, "{r}"),
    }
    // One completion, one used-buffer interrupt (§2.7.7: not suppressed).
    assert!(r.counters.interrupts >= 1, "{r}");
    if irq {
        // The handler saw USED_BUFFER and acknowledged it.
        let seen = mem.read_u32(GuestAddress(u64::from(SEEN))).unwrap();
        assert_eq!(seen & 1, 1, "InterruptStatus seen by the guest: {seen:#x}");
        assert!(mem.read_u32(GuestAddress(u64::from(COUNTER))).unwrap() >= 1);
        assert_eq!(r.interrupt_status, 0, "acknowledged");
    } else {
        // Nobody acknowledged: InterruptStatus still says why (§4.2.2).
        assert_eq!(r.interrupt_status & 1, 1, "{r}");
    }
    out
}

#[test]
fn rng_worker_mode_interrupt() {
    if !vm::kvm_or_skip("rng_worker_mode_interrupt") {
        return;
    }
    rng_end_to_end(NotifyMode::Worker, true);
}

#[test]
fn rng_inline_mode_interrupt() {
    if !vm::kvm_or_skip("rng_inline_mode_interrupt") {
        return;
    }
    rng_end_to_end(NotifyMode::Inline, true);
}

#[test]
fn rng_both_modes_polling_and_the_notify_exit_they_differ_by() {
    if !vm::kvm_or_skip("rng_both_modes_polling_and_the_notify_exit_they_differ_by") {
        return;
    }
    let worker = rng_end_to_end(NotifyMode::Worker, false);
    let inline = rng_end_to_end(NotifyMode::Inline, false);
    // The same guest, except that the ioeventfd kept its QueueNotify write
    // in the kernel (the polling loop reads RAM only, so no exit varies).
    assert_eq!(inline.exits.mmio_write, worker.exits.mmio_write + 1);
    if let (Some(w), Some(i)) = (&worker.kvm, &inline.kvm) {
        // KVM saw the ioeventfd write as an exit of its own.
        assert!(w.exits() >= worker.exits.total(), "{w} vs {}", worker.exits);
        assert!(i.exits() >= inline.exits.total(), "{i} vs {}", inline.exits);
    }
}

#[test]
fn kvm_statistics_are_in_the_outcome_or_explained() {
    if !vm::kvm_or_skip("kvm_statistics_are_in_the_outcome_or_explained") {
        return;
    }
    let (mut vm, handle, _q) = rng_vm(NotifyMode::Worker);
    let p = Program::new(handle.slot());
    let out = run(&mut vm, &p);
    assert!(out.verdict.is_pass());
    match (&out.kvm, vm.kvm_stats_unavailable()) {
        (Some(k), None) => {
            assert!(k.exits() >= out.exits.total(), "{k} vs {}", out.exits);
            assert!(k.vcpu.iter().count() > 0);
            assert!(k.to_string().starts_with("kvm: "), "{k}");
            // The guest took at least one interrupt.
            if let Some(n) = k.vcpu.get("irq_injections") {
                assert!(n >= 1, "{k}");
            }
        }
        (None, Some(why)) => println!("SKIP (KVM statistics): {why}"),
        other => panic!("statistics and their absence disagree: {other:?}"),
    }
}

#[test]
fn level_interrupts_where_kvm_allows_resampling() {
    if !vm::kvm_or_skip("level_interrupts_where_kvm_allows_resampling") {
        return;
    }
    let (_vm, handle, _q) = rng_vm(NotifyMode::Inline);
    let r = handle.report();
    println!("interrupt line: {:?}", r.interrupt);
    assert!(matches!(
        r.interrupt,
        InterruptMode::Level | InterruptMode::Edge
    ));
}

/// §2.1.2: a queue the device cannot use fails activation; the device sets
/// DEVICE_NEEDS_RESET, the guest sees it and goes on.
#[test]
fn an_activation_error_sets_needs_reset_and_the_vm_runs_on() {
    if !vm::kvm_or_skip("an_activation_error_sets_needs_reset_and_the_vm_runs_on") {
        return;
    }
    for mode in [NotifyMode::Worker, NotifyMode::Inline] {
        let (mut vm, handle, _q) = rng_vm(mode);
        // Rings at 2 GiB: below the MMIO hole, far past the 32 MiB of RAM.
        let p = Program {
            irq: false,
            desc: 0x8000_0000,
            until: Until::NeedsReset,
            activation_fails: true,
            ..Program::new(handle.slot())
        };
        let out = run(&mut vm, &p);
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.verdict);
        let r = handle.report();
        assert!(r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET), "{r}");
        assert!(
            matches!(
                r.device_error,
                Some(DeviceError::QueueNotInMemory { queue: 0, .. })
            ),
            "{r}"
        );
        // The configuration change interrupt (§2.1.2).
        assert_eq!(r.interrupt_status & 2, 2, "{r}");
    }
}

/// A ring that breaks a rule during service (the available index jumps
/// past the queue size, §2.7.6): DEVICE_NEEDS_RESET, a configuration
/// change interrupt the guest takes, and the VM runs on.
#[test]
fn a_queue_error_during_service_leaves_the_vm_running() {
    if !vm::kvm_or_skip("a_queue_error_during_service_leaves_the_vm_running") {
        return;
    }
    for mode in [NotifyMode::Worker, NotifyMode::Inline] {
        let (mut vm, handle, _q) = rng_vm(mode);
        vm.guest_memory()
            .write_u16(GuestAddress(u64::from(AVAIL) + 2), 100)
            .unwrap();
        let p = Program {
            until: Until::NeedsReset,
            ..Program::new(handle.slot())
        };
        let out = run(&mut vm, &p);
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.verdict);
        let r = handle.report();
        assert!(r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET), "{r}");
        assert!(
            matches!(r.device_error, Some(DeviceError::Queue { queue: 0, .. })),
            "{r}"
        );
        let seen = vm
            .guest_memory()
            .read_u32(GuestAddress(u64::from(SEEN)))
            .unwrap();
        assert_eq!(seen & 2, 2, "configuration change seen: {seen:#x}");
        assert_eq!(r.fault, None);
    }
}

/// A device with one queue that panics when notified.
struct Panicky;

impl VirtioDevice for Panicky {
    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }
    fn device_features(&self) -> u64 {
        1 << 32
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_len(&self) -> usize {
        0
    }
    fn activate(&mut self, _features: u64, _queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        Ok(())
    }
    fn queue_notify(&mut self, _queue: u16) -> Result<Served, DeviceError> {
        panic!("deliberate test panic")
    }
    fn reset(&mut self) {}
}

/// A device that panics is marked faulty with DEVICE_NEEDS_RESET; the VM,
/// its worker and the vCPU thread run on. Also: a boxed `dyn VirtioDevice`
/// goes on a slot like a concrete one.
#[test]
fn a_device_panic_is_a_fault_not_a_crash() {
    if !vm::kvm_or_skip("a_device_panic_is_a_fault_not_a_crash") {
        return;
    }
    for mode in [NotifyMode::Worker, NotifyMode::Inline] {
        let mut vm = Vm::new(memfd()).unwrap();
        let device: Box<dyn VirtioDevice + Send> = Box::new(Panicky);
        let handle = vm
            .add_virtio_device("panicky", device, vec![], mode)
            .unwrap();
        let _q = queue_with_one_buffer(vm.guest_memory());
        let p = Program {
            irq: false,
            until: Until::NeedsReset,
            ..Program::new(handle.slot())
        };
        let out = run(&mut vm, &p);
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.verdict);
        let r = handle.report();
        let fault = r.fault.clone().unwrap_or_default();
        assert!(fault.contains("deliberate test panic"), "{r}");
        assert!(r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET), "{r}");
    }
}

#[test]
fn devices_take_the_next_free_slot_until_none_is_left() {
    if !vm::kvm_or_skip("devices_take_the_next_free_slot_until_none_is_left") {
        return;
    }
    let mut vm = Vm::new(memfd()).unwrap();
    vm.add_empty_virtio_slots(2).unwrap();
    let mut placed = Vec::new();
    for i in 2..slots::VIRTIO_MMIO_SLOTS {
        let mode = if i % 2 == 0 {
            NotifyMode::Worker
        } else {
            NotifyMode::Inline
        };
        let rng = Rng::new(Deterministic::new(0), vm.guest_memory().clone());
        let h = vm
            .add_virtio_device(format!("rng{i}"), rng, vec![], mode)
            .unwrap();
        assert_eq!(h.slot(), VirtioSlot::new(i).unwrap());
        placed.push(h);
    }
    let rng = Rng::new(Deterministic::new(0), vm.guest_memory().clone());
    let e = vm
        .add_virtio_device("one too many", rng, vec![], NotifyMode::Worker)
        .unwrap_err();
    assert!(matches!(e, VmError::Attach(_)), "{e:?}");
    assert!(e.to_string().contains("every virtio-mmio slot"), "{e}");
    assert_eq!(vm.virtio_slots().len(), slots::VIRTIO_MMIO_SLOTS);
    let reports = vm.virtio_reports();
    assert_eq!(reports.len(), 6);
    assert_eq!(reports[0].slot.index, 2);
    assert_eq!(reports[0].name, "rng2");
    assert_eq!(reports[0].status, DeviceStatus::empty());
    assert_eq!(
        slots::append_cmdline("", &vm.virtio_slots()[..1]),
        "virtio_mmio.device=512@0xfeb00000:5"
    );
}

/// Workers start and stop with each run: a VM runs twice, and a device
/// with a backend readiness fd is served from it.
#[test]
fn workers_stop_with_each_run_and_watch_backend_fds() {
    if !vm::kvm_or_skip("workers_stop_with_each_run_and_watch_backend_fds") {
        return;
    }
    let mut vm = Vm::new(memfd()).unwrap();
    let rng = Rng::new(Deterministic::new(SEED), vm.guest_memory().clone());
    // Any fd works as a readiness source; an eventfd that is always
    // readable exercises the edge-triggered wait.
    let ready = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    ready.write(1).unwrap();
    use std::os::fd::AsRawFd;
    let handle = vm
        .add_virtio_device("rng0", rng, vec![ready.as_raw_fd()], NotifyMode::Worker)
        .unwrap();
    let _q = queue_with_one_buffer(vm.guest_memory());
    let p = Program::new(handle.slot());
    let first = run(&mut vm, &p);
    assert!(first.verdict.is_pass(), "{}", first.verdict);
    // Again, from the entry point: the guest resets the device and the
    // host publishes a fresh buffer.
    let _q = queue_with_one_buffer(vm.guest_memory());
    vm.guest_memory()
        .write_u32(GuestAddress(u64::from(COUNTER)), 0)
        .unwrap();
    let second = run(&mut vm, &p);
    assert!(second.verdict.is_pass(), "{}", second.verdict);
    let r = handle.report();
    assert_eq!(r.counters.notify_worker, 2, "{r}");
    assert_eq!(handle.with_device(|d| d.stats().completed), 2);
}

/// An entropy source that has nothing until it is opened (think of
/// rng-egd waiting for its daemon).
struct Gated {
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    inner: Deterministic,
}

impl RngBackend for Gated {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, backends::rng::RngError> {
        if self.open.load(std::sync::atomic::Ordering::Acquire) {
            self.inner.fill(buf)
        } else {
            Ok(0)
        }
    }
}

/// §5.4.6: with an empty source the chain stays pending (no zero-length
/// completion); when the backend's readiness fd fires, the worker calls
/// `backend_ready`, the chain completes and the interrupt arrives, in both
/// notification modes.
#[test]
fn a_backend_readiness_fd_resumes_pending_work_in_both_modes() {
    if !vm::kvm_or_skip("a_backend_readiness_fd_resumes_pending_work_in_both_modes") {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    for mode in [NotifyMode::Worker, NotifyMode::Inline] {
        let mut vm = Vm::new(memfd()).unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let backend = Gated {
            open: open.clone(),
            inner: Deterministic::new(SEED),
        };
        let ready = Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap());
        let rng = Rng::new(backend, vm.guest_memory().clone());
        let handle = vm
            .add_virtio_device("rng0", rng, vec![ready.as_raw_fd()], mode)
            .unwrap();
        let mut q = queue_with_one_buffer(vm.guest_memory());
        let p = Program::new(handle.slot());
        // Opens the source once the notify was served (and found it dry).
        let opener = {
            let handle = handle.clone();
            let ready = ready.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    if handle.report().counters.notifications() > 0 {
                        assert_eq!(handle.with_device(|d| d.pending()), 1);
                        open.store(true, Ordering::Release);
                        ready.write(1).unwrap();
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                false
            })
        };
        let out = run(&mut vm, &p);
        assert!(opener.join().unwrap(), "the notify was never served");
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.verdict);
        let used = q.pop_used(vm.guest_memory()).unwrap().expect("used");
        assert_eq!(used.len, BUF_LEN);
        let r = handle.report();
        assert!(r.counters.backend_ready >= 1, "{r}");
        assert_eq!(handle.with_device(|d| d.stats().bytes), u64::from(BUF_LEN));
    }
}
