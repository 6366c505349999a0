//! The KVM virtual machine: guest RAM from a [`HostMemory`], the in-kernel
//! irqchip (LAPIC + IOAPIC + PIC, no PIT), one vCPU in the PVH entry state,
//! and the run loop that serves port and MMIO exits until the guest gives a
//! verdict, dies, or runs out of time.
//!
//! Guest-physical map: RAM from 0 up to 3 GiB ([`RAM_BELOW_4G_LIMIT`]), the
//! rest of RAM from 4 GiB; the last GiB below 4 GiB is the MMIO hole
//! (virtio-mmio slots at `0xfeb0_0000`, IOAPIC `0xfec0_0000`, LAPIC
//! `0xfee0_0000`). Devices behind the virtio-mmio slots, their irqfds,
//! ioeventfds and worker threads live in [`crate::virtio`]; the workers run
//! only while [`Vm::run`] does. KVM's own statistics ([`crate::stats`]) are
//! read around each run where the kernel offers them.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backends::hostmem::HostMemory;
use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_regs,
    kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use virtio_core::memory::{GuestAddress, Region, RegionError, RegionMemory};
use virtio_devices::VirtioDevice;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::bus::{BusError, MmioBus, MmioDevice, MmioRange};
use crate::ports::{self, COM1_BASE, COM1_LEN, DEBUG_PORT, EXIT_FAIL, EXIT_PASS, EXIT_PORT, Log};
use crate::pvh::{self, CODE_SELECTOR, DATA_SELECTOR, LoadError, PvhBoot, RamRange};
use crate::slots::{self, EmptySlot, VirtioSlot};
use crate::stats::{KvmRunStats, Stats, StatsError};
use crate::virtio::{self, AttachError, NotifyMode, VirtioHandle, VirtioReport, Wired, Worker};

/// RAM below 4 GiB ends here at most; the rest goes above 4 GiB.
pub const RAM_BELOW_4G_LIMIT: u64 = 0xc000_0000;
/// Where RAM beyond [`RAM_BELOW_4G_LIMIT`] continues.
pub const RAM_ABOVE_4G_BASE: u64 = 1 << 32;
/// The three pages Intel VMX needs for its real-mode TSS, in the MMIO hole
/// away from every device (AMD ignores it).
const TSS_ADDRESS: usize = 0xfffb_d000;
/// How often the watchdog repeats its kick until the vCPU has stopped.
const KICK_INTERVAL: Duration = Duration::from_millis(10);
/// `RFLAGS.IF`.
const RFLAGS_IF: u64 = 1 << 9;
/// `CR0.PE | CR0.ET`: protected mode, paging off.
const CR0_PE_ET: u64 = 0x11;

/// A host-side failure: the machine could not be built or run. Anything a
/// guest does is a [`Verdict`] instead.
#[derive(Debug)]
pub enum VmError {
    /// A KVM ioctl (or opening `/dev/kvm`) failed.
    Kvm {
        /// Which.
        what: &'static str,
        /// Why.
        err: kvm_ioctls::Error,
    },
    /// The guest memory layout was refused.
    Memory(RegionError),
    /// The image could not be loaded.
    Load(LoadError),
    /// An MMIO range was refused by the bus.
    Bus(BusError),
    /// An MMIO range overlaps RAM (KVM would never let accesses reach it).
    MmioOverlapsRam(MmioRange),
    /// [`Vm::run`] before [`Vm::load_pvh`].
    NotLoaded,
    /// Installing the vCPU kick signal handler failed.
    Signal(io::Error),
    /// Starting the watchdog thread failed.
    Watchdog(io::Error),
    /// A virtio device could not be put on a slot.
    Attach(AttachError),
    /// Setting up or starting a device worker thread failed.
    Worker(io::Error),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Kvm { what, err } => write!(f, "{what}: {err}"),
            VmError::Memory(e) => write!(f, "guest memory: {e}"),
            VmError::Load(e) => write!(f, "loading the kernel: {e}"),
            VmError::Bus(e) => e.fmt(f),
            VmError::MmioOverlapsRam(r) => write!(f, "MMIO range {r} overlaps RAM"),
            VmError::NotLoaded => f.write_str("no kernel loaded: call load_pvh before run"),
            VmError::Signal(e) => write!(f, "installing the vCPU kick signal handler: {e}"),
            VmError::Watchdog(e) => write!(f, "starting the watchdog thread: {e}"),
            VmError::Attach(e) => write!(f, "attaching a virtio device: {e}"),
            VmError::Worker(e) => write!(f, "starting a device worker: {e}"),
        }
    }
}

impl std::error::Error for VmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VmError::Kvm { err, .. } => Some(err),
            VmError::Memory(e) => Some(e),
            VmError::Load(e) => Some(e),
            VmError::Bus(e) => Some(e),
            VmError::Signal(e) | VmError::Watchdog(e) | VmError::Worker(e) => Some(e),
            VmError::Attach(e) => Some(e),
            VmError::MmioOverlapsRam(_) | VmError::NotLoaded => None,
        }
    }
}

impl From<LoadError> for VmError {
    fn from(e: LoadError) -> Self {
        VmError::Load(e)
    }
}

impl From<AttachError> for VmError {
    fn from(e: AttachError) -> Self {
        VmError::Attach(e)
    }
}

impl From<BusError> for VmError {
    fn from(e: BusError) -> Self {
        VmError::Bus(e)
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::Kvm { what, err }
}

/// The vCPU's state when it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// What happened, in words.
    pub detail: String,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// `rax`.
    pub rax: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `cr0`.
    pub cr0: u64,
    /// `cr2` (the last page-fault address).
    pub cr2: u64,
    /// `cr3`.
    pub cr3: u64,
    /// `cr4`.
    pub cr4: u64,
    /// `IA32_EFER`.
    pub efer: u64,
    /// `cs` selector.
    pub cs: u16,
    /// `cs` base.
    pub cs_base: u64,
    /// `cs.L`: 64-bit code.
    pub cs_long: bool,
    /// `cs.D/B`: 32-bit code (when not long).
    pub cs_32: bool,
}

impl Report {
    /// The CPU mode, from `cr0.PE` and `cs`.
    pub fn mode(&self) -> &'static str {
        if self.cr0 & 1 == 0 {
            "real mode"
        } else if self.cs_long {
            "64-bit"
        } else if self.cs_32 {
            "32-bit"
        } else {
            "16-bit protected"
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} ({}, base {:#x})",
            self.detail,
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            self.cs,
            self.mode(),
            self.cs_base
        )
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The guest wrote [`EXIT_PASS`] to the exit port.
    Pass,
    /// The guest wrote [`EXIT_FAIL`] (or another value) to the exit port;
    /// the message is its `verdict: fail: …` COM1 line if it printed one.
    Fail(String),
    /// The time ran out with the guest still running (or halted waiting for
    /// an interrupt).
    Timeout(Report),
    /// The guest halted with interrupts off: it can never go on.
    Halted(Report),
    /// Triple fault (`KVM_EXIT_SHUTDOWN`) or a shutdown/reset/crash system
    /// event.
    Shutdown(Report),
    /// KVM could not go on: an internal error (emulation failure, an
    /// exception during event delivery) or a failed VM entry.
    InternalError(Report),
    /// A VM exit this monitor does not serve.
    Unexpected(Report),
}

impl Verdict {
    /// True for [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// A one-word name: `pass`, `fail`, `timeout`, `halted`, `shutdown`,
    /// `internal-error`, `unexpected-exit`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Timeout(_) => "timeout",
            Verdict::Halted(_) => "halted",
            Verdict::Shutdown(_) => "shutdown",
            Verdict::InternalError(_) => "internal-error",
            Verdict::Unexpected(_) => "unexpected-exit",
        }
    }

    /// The register report, for the verdicts that carry one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            Verdict::Pass | Verdict::Fail(_) => None,
            Verdict::Timeout(r)
            | Verdict::Halted(r)
            | Verdict::Shutdown(r)
            | Verdict::InternalError(r)
            | Verdict::Unexpected(r) => Some(r),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail(msg) => write!(f, "fail: {msg}"),
            other => match other.report() {
                Some(r) => write!(f, "{}: {r}", other.kind()),
                None => f.write_str(other.kind()),
            },
        }
    }
}

/// VM exits by kind, counted from `KVM_RUN` returns (exits the kernel
/// handles itself, such as LAPIC accesses, are not seen here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// `hlt` (only without an in-kernel LAPIC).
    pub hlt: u64,
    /// Triple faults.
    pub shutdown: u64,
    /// KVM internal errors.
    pub internal_error: u64,
    /// Failed VM entries.
    pub fail_entry: u64,
    /// `KVM_RUN` interrupted by a signal (the watchdog's kick).
    pub interrupted: u64,
    /// Any other exit.
    pub other: u64,
    /// Of `io_in + io_out`: ports nobody serves (reads get all-ones).
    pub unhandled_io: u64,
    /// Of `mmio_read + mmio_write`: addresses no device holds (reads get
    /// all-ones).
    pub unhandled_mmio: u64,
}

impl ExitCounts {
    /// Every `KVM_RUN` return.
    pub fn total(&self) -> u64 {
        self.io_in
            + self.io_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.shutdown
            + self.internal_error
            + self.fail_entry
            + self.interrupted
            + self.other
    }
}

impl fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exits", self.total())?;
        let kinds = [
            ("io-out", self.io_out),
            ("io-in", self.io_in),
            ("mmio-read", self.mmio_read),
            ("mmio-write", self.mmio_write),
            ("hlt", self.hlt),
            ("shutdown", self.shutdown),
            ("internal-error", self.internal_error),
            ("fail-entry", self.fail_entry),
            ("interrupted", self.interrupted),
            ("other", self.other),
            ("unhandled-io", self.unhandled_io),
            ("unhandled-mmio", self.unhandled_mmio),
        ];
        let mut first = true;
        for (name, n) in kinds {
            if n > 0 {
                write!(f, "{}{name} {n}", if first { " (" } else { ", " })?;
                first = false;
            }
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What one [`Vm::run`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// COM1 output during the run (`\r\n` folded to `\n`).
    pub serial: String,
    /// Debug-port (`0xe9`) output during the run.
    pub debug: String,
    /// VM exits by kind.
    pub exits: ExitCounts,
    /// From the first `KVM_RUN` to the verdict.
    pub boot_to_exit: Duration,
    /// From [`Vm::new`] to the first `KVM_RUN` (VM creation and loading),
    /// for the first run; zero for later runs.
    pub setup: Duration,
    /// KVM's own counts for this run (every exit, including those the
    /// kernel served itself, such as ioeventfd writes, LAPIC accesses and
    /// `hlt`; interrupt injections), if the kernel offers binary statistics
    /// ([`Vm::kvm_stats_unavailable`] says why not).
    pub kvm: Option<KvmRunStats>,
    /// Each virtio device's state and counters after the run (counters
    /// since the device was added), by slot.
    pub devices: Vec<VirtioReport>,
}

/// Why a run loop stopped, before the registers are read.
enum Stop {
    ExitPort(u32),
    Timeout,
    Halted,
    Shutdown(String),
    Internal(Option<String>),
    Unexpected(String),
}

/// A virtual machine with one vCPU.
///
/// Fields drop in declaration order: the vCPU and VM file descriptors close
/// before the guest memory they point into is unmapped.
pub struct Vm {
    vcpu: VcpuFd,
    vm: VmFd,
    kvm: Kvm,
    bus: MmioBus,
    serial: ports::Serial,
    debug: Log,
    ram: Vec<RamRange>,
    guest: RegionMemory,
    boot: Option<PvhBoot>,
    created: Option<Instant>,
    stats: Result<Stats, String>,
    /// Devices hold clones of `guest`: they go before `memory`.
    devices: Vec<Arc<Wired>>,
    memory: HostMemory,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.memory)
            .field("ram", &self.ram)
            .field("bus", &self.bus)
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

/// Why KVM cannot be used here, or `None` if `/dev/kvm` opens.
pub fn kvm_unavailable() -> Option<String> {
    let path = std::path::Path::new("/dev/kvm");
    if !path.exists() {
        return Some("/dev/kvm is missing".into());
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => None,
        Err(e) => Some(format!("cannot open /dev/kvm: {e}")),
    }
}

/// For tests that need KVM: true if it can be used; otherwise prints
/// `SKIP: <test>: <reason>` and returns false.
///
/// # Panics
///
/// Instead of skipping, if `HARNESS_REQUIRE_KVM=1` (or CI's
/// `HARNESS_REQUIRE_QEMU=1`, set where `/dev/kvm` exists) demands that KVM
/// tests run.
pub fn kvm_or_skip(test: &str) -> bool {
    let Some(reason) = kvm_unavailable() else {
        return true;
    };
    let required = ["HARNESS_REQUIRE_KVM", "HARNESS_REQUIRE_QEMU"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| v == "1"));
    if required {
        panic!("{test}: {reason}, and the KVM tests are required here");
    }
    println!("SKIP: {test}: {reason}");
    false
}

/// The guest RAM ranges for `len` bytes of host memory.
pub fn ram_layout(len: u64) -> Vec<RamRange> {
    let low = len.min(RAM_BELOW_4G_LIMIT);
    let mut ram = vec![RamRange { base: 0, size: low }];
    if len > low {
        ram.push(RamRange {
            base: RAM_ABOVE_4G_BASE,
            size: len - low,
        });
    }
    ram
}

impl Vm {
    /// Creates a VM whose RAM is `memory` (see the module docs for the
    /// layout), with the in-kernel irqchip and one vCPU with the host's
    /// supported CPUID.
    pub fn new(memory: HostMemory) -> Result<Vm, VmError> {
        let created = Instant::now();
        let kvm = Kvm::new().map_err(kvm_err("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;

        let ram = ram_layout(memory.len() as u64);
        let mut guest = RegionMemory::new();
        let mut host_offset = 0usize;
        for (slot, r) in ram.iter().enumerate() {
            // `ram_layout` splits `memory.len()`, so every range fits `usize`
            // and lies inside the mapping.
            let host = memory.as_ptr().wrapping_add(host_offset);
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.base,
                memory_size: r.size,
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is inside `memory`, which this `Vm`
            // owns and unmaps only after the VM fd is closed (field order);
            // the guest may write it at any time, and this process only
            // reaches it through raw copies (`RegionMemory`), never through
            // references.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            // SAFETY: as above: valid for `r.size` bytes for as long as
            // `guest` (a field of the same `Vm`) is used.
            let region = unsafe { Region::new(GuestAddress(r.base), host, r.size) };
            guest.add(region).map_err(VmError::Memory)?;
            host_offset += r.size as usize;
        }

        let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
        let stats = Stats::open(&vm, &vcpu).map_err(|e: StatsError| e.to_string());

        Ok(Vm {
            vcpu,
            vm,
            kvm,
            bus: MmioBus::new(),
            serial: ports::Serial::new(),
            debug: Log::default(),
            ram,
            guest,
            boot: None,
            created: Some(created),
            stats,
            devices: Vec::new(),
            memory,
        })
    }

    /// Guest memory, for loaders and devices.
    pub fn guest_memory(&self) -> &RegionMemory {
        &self.guest
    }

    /// The guest RAM ranges.
    pub fn ram(&self) -> &[RamRange] {
        &self.ram
    }

    /// The host memory behind guest RAM.
    pub fn host_memory(&self) -> &HostMemory {
        &self.memory
    }

    /// The VM file descriptor (for ioeventfd/irqfd set-up).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The MMIO bus.
    pub fn bus(&self) -> &MmioBus {
        &self.bus
    }

    /// What [`Vm::load_pvh`] placed, once it has run.
    pub fn boot_info(&self) -> Option<&PvhBoot> {
        self.boot.as_ref()
    }

    /// Maps `device` at `base..base + size`; refused if it overlaps RAM or
    /// another device.
    pub fn add_mmio_device(
        &mut self,
        name: impl Into<String>,
        base: u64,
        size: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), VmError> {
        let name = name.into();
        let end = base.checked_add(size);
        if let Some(end) = end
            && self
                .ram
                .iter()
                .any(|r| base < r.base + r.size && end > r.base)
        {
            return Err(VmError::MmioOverlapsRam(MmioRange { name, base, size }));
        }
        self.bus.insert(name, base, size, device)?;
        Ok(())
    }

    /// Fills the first `count` virtio-mmio slots with [`EmptySlot`]s and
    /// returns them (for [`slots::append_cmdline`]).
    pub fn add_empty_virtio_slots(&mut self, count: usize) -> Result<Vec<VirtioSlot>, VmError> {
        let slots: Vec<VirtioSlot> = slots::all().take(count).collect();
        for s in &slots {
            self.add_mmio_device(s.bus_name(), s.base, s.size, Box::new(EmptySlot))?;
        }
        Ok(slots)
    }

    /// Puts `device` on the first free virtio-mmio slot: its bus entry is
    /// the version 2 register file around it, its interrupt an irqfd on the
    /// slot's GSI, and in [`NotifyMode::Worker`] each queue's
    /// `QueueNotify` an ioeventfd (see [`crate::virtio`]). `backend_fds`
    /// are the readiness fds of its backends (e.g. a chardev's
    /// `readiness_fd()`); they must stay open while the VM runs. Build the
    /// device over `self.guest_memory().clone()`. The slot's command-line
    /// entry comes from `handle.slot()` (see [`slots::append_cmdline`] and
    /// [`Vm::virtio_slots`]).
    pub fn add_virtio_device<D: VirtioDevice + Send + 'static>(
        &mut self,
        name: impl Into<String>,
        device: D,
        backend_fds: Vec<RawFd>,
        mode: NotifyMode,
    ) -> Result<VirtioHandle<D>, VmError> {
        let taken: Vec<u64> = self.bus.ranges().map(|r| r.base).collect();
        let slot = slots::all()
            .find(|s| !taken.contains(&s.base))
            .ok_or(AttachError::NoFreeSlot)?;
        let attached = virtio::attach(&self.vm, slot, name.into(), device, backend_fds, mode)?;
        self.add_mmio_device(slot.bus_name(), slot.base, slot.size, attached.entry)?;
        self.devices.push(Arc::new(attached.wired));
        Ok(attached.handle)
    }

    /// Every virtio-mmio slot on the bus (empty or with a device), in
    /// order: what [`slots::append_cmdline`] announces.
    pub fn virtio_slots(&self) -> Vec<VirtioSlot> {
        slots::all()
            .filter(|s| self.bus.ranges().any(|r| r.base == s.base))
            .collect()
    }

    /// Each device's state and counters now.
    pub fn virtio_reports(&self) -> Vec<VirtioReport> {
        let mut reports: Vec<VirtioReport> = self.devices.iter().map(|d| d.report()).collect();
        reports.sort_by_key(|r| r.slot.index);
        reports
    }

    /// Why KVM's binary statistics are not in [`Outcome::kvm`], or `None`
    /// if they are.
    pub fn kvm_stats_unavailable(&self) -> Option<&str> {
        self.stats.as_ref().err().map(String::as_str)
    }

    /// Loads `elf` by PVH with `cmdline` and puts the vCPU in the PVH entry
    /// state: 32-bit protected mode, paging off, flat CS (selector 0x10) and
    /// DS/ES/SS/FS/GS (0x18), `cr0` = PE|ET, `rflags` = 0x2 (interrupts
    /// off), `ebx` = the `hvm_start_info` address, `eip` = the entry.
    pub fn load_pvh(&mut self, elf: &[u8], cmdline: &str) -> Result<PvhBoot, VmError> {
        let boot = pvh::load(&self.guest, &self.ram, elf, cmdline)?;
        self.set_entry_state(&boot)?;
        self.boot = Some(boot.clone());
        Ok(boot)
    }

    fn set_entry_state(&self, boot: &PvhBoot) -> Result<(), VmError> {
        let mut sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        let flat = |selector: u16, type_: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        // Execute/read, accessed; read/write, accessed (as in the boot GDT).
        sregs.cs = flat(CODE_SELECTOR, 0xb);
        let data = flat(DATA_SELECTOR, 0x3);
        sregs.ds = data;
        sregs.es = data;
        sregs.ss = data;
        sregs.fs = data;
        sregs.gs = data;
        // PVH: a 32-bit busy TSS with base 0 and limit 0x67.
        sregs.tr = kvm_segment {
            base: 0,
            limit: 0x67,
            selector: 0,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.gdt.base = pvh::BOOT_GDT;
        sregs.gdt.limit = (pvh::BOOT_GDT_ENTRIES.len() * 8 - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = CR0_PE_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: u64::from(boot.entry),
            rbx: boot.start_info,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))
    }

    /// Runs the vCPU until the guest writes the exit port, dies, or
    /// `timeout` passes. The watchdog is a thread that, at the deadline,
    /// raises a flag and kicks this thread out of `KVM_RUN` with a signal
    /// (repeated every 10 ms until the loop has seen the flag, which closes
    /// the race with a kick that lands just before `KVM_RUN`).
    pub fn run(&mut self, timeout: Duration) -> Result<Outcome, VmError> {
        if self.boot.is_none() {
            return Err(VmError::NotLoaded);
        }
        install_kick_handler()?;
        let stop = AtomicBool::new(false);
        let mut exits = ExitCounts::default();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let created = self.created.take();
        let stop_workers = EventFd::new(EFD_NONBLOCK).map_err(VmError::Worker)?;
        let workers = self
            .devices
            .iter()
            .map(|d| Worker::new(Arc::clone(d), &stop_workers))
            .collect::<io::Result<Vec<Worker>>>()
            .map_err(VmError::Worker)?;
        let stats_before = self.stats.as_ref().ok().and_then(|s| s.read().ok());
        let mut start = Instant::now();
        let mut end = start;
        let Vm {
            vcpu,
            bus,
            serial,
            debug,
            ..
        } = self;
        let result = std::thread::scope(|scope| {
            let stop = &stop;
            // Whatever happens below, the workers stop when this closure
            // returns and the scope joins them.
            let _stop_guard = StopOnDrop(&stop_workers);
            for (i, w) in workers.into_iter().enumerate() {
                std::thread::Builder::new()
                    .name(format!("virtio-worker-{i}"))
                    .spawn_scoped(scope, move || w.run())
                    .map_err(VmError::Worker)?;
            }
            let watchdog = std::thread::Builder::new()
                .name("vcpu-watchdog".into())
                .spawn_scoped(scope, move || {
                    if done_rx.recv_timeout(timeout) != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                    stop.store(true, Ordering::Release);
                    loop {
                        // SAFETY: `me` is the vCPU thread, alive until this
                        // scope ends, which waits for this thread; the
                        // signal's handler does nothing but interrupt
                        // `KVM_RUN`.
                        unsafe { libc::pthread_kill(me, kick_signal()) };
                        if done_rx.recv_timeout(KICK_INTERVAL) != Err(RecvTimeoutError::Timeout) {
                            return;
                        }
                    }
                })
                .map_err(VmError::Watchdog)?;
            start = Instant::now();
            let r = run_loop(vcpu, bus, serial, debug, stop, &mut exits);
            end = Instant::now();
            drop(done_tx);
            // The watchdog only sleeps and signals; it cannot panic.
            let _ = watchdog.join();
            r
        });
        let boot_to_exit = end.duration_since(start);
        let setup = created.map_or(Duration::ZERO, |c| start.duration_since(c));
        let stop = result?;
        let serial = self.serial.take_output().text();
        let debug = std::mem::take(&mut self.debug).text();
        let verdict = self.verdict(stop, timeout, &serial)?;
        let kvm = match (&self.stats, stats_before) {
            (Ok(s), Some(before)) => s.read().ok().map(|after| after.since(&before)),
            _ => None,
        };
        Ok(Outcome {
            verdict,
            serial,
            debug,
            exits,
            boot_to_exit,
            setup,
            kvm,
            devices: self.virtio_reports(),
        })
    }

    /// Turns a stop into a verdict, reading the registers where needed.
    fn verdict(&mut self, stop: Stop, timeout: Duration, serial: &str) -> Result<Verdict, VmError> {
        Ok(match stop {
            Stop::ExitPort(EXIT_PASS) => Verdict::Pass,
            Stop::ExitPort(EXIT_FAIL) => Verdict::Fail(fail_message(serial, EXIT_FAIL)),
            Stop::ExitPort(v) => Verdict::Fail(format!(
                "exit port value {v:#x} is neither pass ({EXIT_PASS:#x}) nor fail ({EXIT_FAIL:#x})"
            )),
            Stop::Timeout => {
                let halted = self
                    .vcpu
                    .get_mp_state()
                    .map(|s| s.mp_state == KVM_MP_STATE_HALTED)
                    .unwrap_or(false);
                let mut report = self.report(String::new())?;
                if halted && report.rflags & RFLAGS_IF == 0 {
                    report.detail = "halted with interrupts off".into();
                    Verdict::Halted(report)
                } else {
                    report.detail = if halted {
                        format!("halted waiting for an interrupt after {timeout:?}")
                    } else {
                        format!("still running after {timeout:?}")
                    };
                    Verdict::Timeout(report)
                }
            }
            Stop::Halted => {
                let report = self.report(String::new())?;
                let detail = if report.rflags & RFLAGS_IF == 0 {
                    "halted with interrupts off"
                } else {
                    "halted with no interrupt controller to wake it"
                };
                Verdict::Halted(Report {
                    detail: detail.into(),
                    ..report
                })
            }
            Stop::Shutdown(detail) => Verdict::Shutdown(self.report(detail)?),
            Stop::Internal(Some(detail)) => Verdict::InternalError(self.report(detail)?),
            Stop::Internal(None) => {
                let detail = self.internal_error_detail();
                Verdict::InternalError(self.report(detail)?)
            }
            Stop::Unexpected(detail) => Verdict::Unexpected(self.report(detail)?),
        })
    }

    /// The `kvm_run.internal` fields after `KVM_EXIT_INTERNAL_ERROR`.
    fn internal_error_detail(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        // SAFETY: called only right after KVM_RUN returned
        // KVM_EXIT_INTERNAL_ERROR, which tells that `internal` is the live
        // member of the union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "exit during event delivery",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
            _ => "unknown suberror",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data: Vec<String> = internal.data[..n]
            .iter()
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "KVM internal error, suberror {} ({what}), data [{}]",
            internal.suberror,
            data.join(", ")
        )
    }

    /// The vCPU's registers now, with `detail`.
    pub fn report(&self, detail: String) -> Result<Report, VmError> {
        let regs = self.vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let sregs = self.vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        Ok(Report {
            detail,
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cs: sregs.cs.selector,
            cs_base: sregs.cs.base,
            cs_long: sregs.cs.l != 0,
            cs_32: sregs.cs.db != 0,
        })
    }
}

/// The loop proper: serves exits until one ends the run.
fn run_loop(
    vcpu: &mut VcpuFd,
    bus: &mut MmioBus,
    serial: &mut ports::Serial,
    debug: &mut Log,
    stop: &AtomicBool,
    exits: &mut ExitCounts,
) -> Result<Stop, VmError> {
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(Stop::Timeout);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR => {
                exits.interrupted += 1;
                continue;
            }
            Err(err) => {
                return Err(VmError::Kvm {
                    what: "KVM_RUN",
                    err,
                });
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                exits.io_out += 1;
                match port {
                    EXIT_PORT => return Ok(Stop::ExitPort(ports::port_value(data))),
                    DEBUG_PORT => data.iter().for_each(|b| debug.push(*b)),
                    p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                        // Wider or repeated (`rep outsb`) writes feed the
                        // register byte by byte.
                        for b in data.iter() {
                            serial.write(p - COM1_BASE, *b);
                        }
                    }
                    _ => exits.unhandled_io += 1,
                }
            }
            VcpuExit::IoIn(port, data) => {
                exits.io_in += 1;
                match port {
                    DEBUG_PORT => data.fill(0xe9),
                    p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                        for b in data.iter_mut() {
                            *b = serial.read(p - COM1_BASE);
                        }
                    }
                    _ => {
                        exits.unhandled_io += 1;
                        data.fill(0xff);
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                exits.mmio_read += 1;
                if !bus.read(addr, data) {
                    exits.unhandled_mmio += 1;
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                exits.mmio_write += 1;
                if !bus.write(addr, data) {
                    exits.unhandled_mmio += 1;
                }
            }
            VcpuExit::Hlt => {
                exits.hlt += 1;
                return Ok(Stop::Halted);
            }
            VcpuExit::Shutdown => {
                exits.shutdown += 1;
                return Ok(Stop::Shutdown("triple fault (KVM_EXIT_SHUTDOWN)".into()));
            }
            VcpuExit::InternalError => {
                exits.internal_error += 1;
                return Ok(Stop::Internal(None));
            }
            VcpuExit::FailEntry(reason, cpu) => {
                exits.fail_entry += 1;
                return Ok(Stop::Internal(Some(format!(
                    "VM entry failed (KVM_EXIT_FAIL_ENTRY): hardware reason {reason:#x} on cpu {cpu}"
                ))));
            }
            VcpuExit::SystemEvent(kind, _) => {
                exits.other += 1;
                let what = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown".to_string(),
                    KVM_SYSTEM_EVENT_RESET => "reset".to_string(),
                    KVM_SYSTEM_EVENT_CRASH => "crash".to_string(),
                    other => format!("type {other}"),
                };
                return Ok(Stop::Shutdown(format!(
                    "system event: {what} (KVM_EXIT_SYSTEM_EVENT)"
                )));
            }
            other => {
                exits.other += 1;
                return Ok(Stop::Unexpected(format!("unexpected VM exit {other:?}")));
            }
        }
    }
}

/// Signals the device workers to stop when dropped.
struct StopOnDrop<'a>(&'a EventFd);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        // An eventfd write fails only on counter overflow.
        let _ = self.0.write(1);
    }
}

/// The failure message a guest printed (`verdict: fail: <message>`, the
/// last such line), or one naming the exit value.
fn fail_message(serial: &str, value: u32) -> String {
    serial
        .lines()
        .rev()
        .find_map(|l| l.trim_end().strip_prefix("verdict: fail: "))
        .map(str::to_string)
        .unwrap_or_else(|| format!("exit port value {value:#x} (fail), no message on COM1"))
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_signal: libc::c_int) {}

/// Installs a handler for [`kick_signal`] that does nothing (once per
/// process), without `SA_RESTART`, so the signal makes `KVM_RUN` return
/// `EINTR`; and unblocks the signal on the calling thread.
fn install_kick_handler() -> Result<(), VmError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty
        // mask); the handler set next is a function that does nothing, so it
        // is async-signal-safe.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `action` is ours and valid; sigaction copies it.
        let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    if let Err(errno) = installed {
        return Err(VmError::Signal(io::Error::from_raw_os_error(*errno)));
    }
    // SAFETY: an all-zero sigset_t is a valid (if unspecified) set, which
    // sigemptyset then initialises; the masks are ours.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(VmError::Signal(io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Creates the VM, places empty virtio-mmio slots (`slots` of them,
/// announced on the command line), loads `elf` by PVH and runs it.
pub fn boot(
    memory: HostMemory,
    elf: &[u8],
    cmdline: &str,
    slots: usize,
    timeout: Duration,
) -> Result<Outcome, VmError> {
    let mut vm = Vm::new(memory)?;
    let placed = vm.add_empty_virtio_slots(slots)?;
    let cmdline = slots::append_cmdline(cmdline, &placed);
    vm.load_pvh(elf, &cmdline)?;
    vm.run(timeout)
}

#[cfg(test)]
mod tests {
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
}
