//! The KVM virtual machine: guest RAM from a [`HostMemory`], the in-kernel
//! irqchip (LAPIC + IOAPIC + PIC, no PIT), one vCPU in the PVH entry state,
//! and the run loop that serves port and MMIO exits until the guest gives a
//! verdict, dies, or runs out of time.
//!
//! Guest-physical map: RAM from 0 up to 3 GiB ([`RAM_BELOW_4G_LIMIT`]), the
//! rest of RAM from 4 GiB; the last GiB below 4 GiB is the MMIO hole
//! (virtio-mmio slots at `0xfeb0_0000`, IOAPIC `0xfec0_0000`, LAPIC
//! `0xfee0_0000`). Guest RAM in a file ([`GuestRam`]) is watched for SIGBUS:
//! another process holding the file (a vhost-user backend) may shrink it,
//! and the monitor's devices then see their accesses past the new end fail
//! instead of the monitor dying (see `vhost_user::guard`). Devices behind
//! the virtio-mmio slots, their irqfds,
//! ioeventfds and worker threads live in [`crate::virtio`]; the workers run
//! only while [`Vm::run`] does. KVM's own statistics ([`crate::stats`]) are
//! read around each run where the kernel offers them.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backends::hostmem::HostMemory;
use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_regs,
    kvm_segment, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vhost_user::guard::{Guard, GuardError, Guarded};
use virtio_core::GuestMemory;
use virtio_core::memory::{
    Access, GuestAddress, Mapping, MemoryError, Region, RegionError, RegionMemory,
};
use virtio_devices::VirtioDevice;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::bus::{BusError, MmioBus, MmioDevice, MmioRange};
use crate::ports::{
    self, COM1_BASE, COM1_LEN, COM2_BASE, DEBUG_PORT, EXIT_FAIL, EXIT_PASS, EXIT_PORT, Log,
};
use crate::pvh::{self, CODE_SELECTOR, DATA_SELECTOR, LoadError, PvhBoot, RamRange};
use crate::slots::{self, EmptySlot, VirtioSlot};
use crate::stats::{KvmRunStats, Stats, StatsError};
use crate::virtio::{self, AttachError, NotifyMode, VirtioHandle, VirtioReport, Wired, Worker};

mod outcome;
mod run;
#[cfg(test)]
mod tests;

pub use outcome::*;
use run::*;

/// Guest memory as the monitor's devices and loaders see it: the RAM
/// regions, checked against the guard on the file behind them (when RAM is
/// a file or memfd), so an access fails with
/// [`MemoryError::BackingLost`] once
/// that file shrank under the mapping.
///
/// It owns the mapping (issue 16, finding 10): a clone shares it, and the
/// host memory is unmapped only when the last clone and the [`Vm`] are
/// gone, so a device or a caller that keeps a clone past the VM reads
/// memory that is still there. The region table inside is never handed
/// out by value ([`RegionMemory`] is not `Clone`).
#[derive(Clone, Debug, Default)]
pub struct GuestRam(Arc<RamInner>);

/// What a [`GuestRam`] shares. Fields drop in declaration order: the table
/// and the guard go before the memory is unmapped.
#[derive(Debug, Default)]
struct RamInner {
    table: Guarded<RegionMemory>,
    guard: Option<Guard>,
    /// `None` only for the empty memory of [`GuestRam::default`].
    memory: Option<HostMemory>,
}

impl GuestRam {
    /// The host memory behind guest RAM (`None` for the empty memory of
    /// [`GuestRam::default`], which has no regions).
    pub fn host_memory(&self) -> Option<&HostMemory> {
        self.0.memory.as_ref()
    }

    /// The RAM regions, for their layout (reads and writes go through
    /// `GuestRam` itself, which checks them).
    pub fn regions(&self) -> &RegionMemory {
        self.0.table.inner()
    }

    /// Whether the file behind guest RAM lost its backing.
    pub fn is_lost(&self) -> bool {
        self.0.table.is_lost()
    }

    fn fault(&self) -> Option<usize> {
        self.0.guard.as_ref().and_then(Guard::fault)
    }
}

impl GuestMemory for GuestRam {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.0.table.map(addr, len, access)
    }
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0.table.read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.0.table.write(addr, buf)
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        self.0.table.load_u16_acquire(addr)
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        self.0.table.store_u16_release(addr, val)
    }
}

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
    /// A device's RAM could not be mapped there, and why.
    DeviceRam(MmioRange, String),
    /// [`Vm::run`] before [`Vm::load_pvh`].
    NotLoaded,
    /// Installing the vCPU kick signal handler failed.
    Signal(io::Error),
    /// Starting the watchdog thread failed.
    Watchdog(io::Error),
    /// A virtio device could not be put on a slot.
    Attach(AttachError),
    /// File-backed guest RAM could not be guarded against SIGBUS.
    Guard(GuardError),
    /// Setting up or starting a device worker thread failed.
    Worker(io::Error),
    /// `/dev/kvm` could not be opened: why, and what to do.
    KvmOpen(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::Kvm { what, err } => write!(f, "{what}: {err}"),
            VmError::KvmOpen(why) => f.write_str(why),
            VmError::Memory(e) => write!(f, "guest memory: {e}"),
            VmError::Load(e) => write!(f, "loading the kernel: {e}"),
            VmError::Bus(e) => e.fmt(f),
            VmError::MmioOverlapsRam(r) => write!(f, "MMIO range {r} overlaps RAM"),
            VmError::DeviceRam(r, why) => write!(f, "device RAM {r}: {why}"),
            VmError::NotLoaded => f.write_str("no kernel loaded: call load_pvh before run"),
            VmError::Signal(e) => write!(f, "installing the vCPU kick signal handler: {e}"),
            VmError::Watchdog(e) => write!(f, "starting the watchdog thread: {e}"),
            VmError::Attach(e) => write!(f, "attaching a virtio device: {e}"),
            VmError::Guard(e) => write!(f, "guest RAM: {e}"),
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
            VmError::Guard(e) => Some(e),
            VmError::MmioOverlapsRam(_)
            | VmError::DeviceRam(..)
            | VmError::NotLoaded
            | VmError::KvmOpen(_) => None,
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

/// Why a run loop stopped, before the registers are read.
enum Stop {
    ExitPort(u32),
    Quit(u32),
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
    /// COM2 (`0x2f8`), used only with `-serial` chardevs.
    com2: ports::Serial,
    /// LPT1 (`0x378`), with `-parallel`.
    lpt: Option<crate::parallel::Parallel>,
    debug: Log,
    ram: Vec<RamRange>,
    /// Owns the host memory: unmapped when the last of this and the
    /// devices' clones goes, after the VM fd is closed (field order).
    guest: GuestRam,
    boot: Option<PvhBoot>,
    created: Option<Instant>,
    stats: Result<Stats, String>,
    /// Devices hold clones of `guest`.
    devices: Vec<Arc<Wired>>,
    /// RAM pages devices own ([`Vm::add_device_ram`]); after `vm`, so
    /// unmapped only once the VM fd is closed.
    device_ram: Vec<Arc<DeviceRam>>,
    /// Requests to end the run from the host side (`-chardev testdev`).
    quit: Arc<QuitRequest>,
}

/// A request from the host side to end a run with a status: QEMU's
/// `-chardev testdev` quit command, which makes QEMU exit with
/// `(status << 1) | 1`. Whoever holds a clone may ask, from any thread;
/// the first request of a run wins and the vCPU is kicked out of
/// `KVM_RUN` to see it.
#[derive(Debug, Default)]
pub struct QuitRequest {
    /// 0: none; else `1 << 32 | status`.
    status: AtomicU64,
    /// The running watchdog, which kicks the vCPU.
    wake: Mutex<Option<mpsc::Sender<()>>>,
}

impl QuitRequest {
    /// Asks the run to end with `status`.
    pub fn quit(&self, status: u32) {
        let _ = self.status.compare_exchange(
            0,
            1 << 32 | u64::from(status),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if let Ok(w) = self.wake.lock()
            && let Some(tx) = w.as_ref()
        {
            let _ = tx.send(());
        }
    }

    /// The status asked for, if a quit was asked.
    pub fn requested(&self) -> Option<u32> {
        let v = self.status.load(Ordering::Acquire);
        (v != 0).then_some(v as u32)
    }
}

/// The vCPU thread's handle, for the watchdog's kicks (an integer in
/// glibc, a pointer in musl).
#[derive(Clone, Copy)]
struct VcpuThread(libc::pthread_t);

// SAFETY: a pthread_t is only an identifier; the watchdog passes it to
// pthread_kill while the vCPU thread is alive (the scope joins the
// watchdog before the run returns), whatever the C library's type for it.
unsafe impl Send for VcpuThread {}

impl VcpuThread {
    /// Kicks the thread out of `KVM_RUN`.
    fn kick(self) {
        // SAFETY: the thread is alive (see the Send impl); the signal's
        // handler does nothing but interrupt `KVM_RUN`.
        unsafe { libc::pthread_kill(self.0, kick_signal()) };
    }
}

/// Takes the watchdog's sender back from a [`QuitRequest`] when dropped.
struct ClearWake<'a>(&'a QuitRequest);

impl Drop for ClearWake<'_> {
    fn drop(&mut self) {
        *self
            .0
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Guest-physical RAM a device owns: a buffer the guest reads and writes
/// without VM exits (the TPM CRB's data buffer), mapped by its own KVM
/// memory slot. The device reaches it through copies, never references:
/// the guest may change it at any time.
#[derive(Debug)]
pub struct DeviceRam {
    name: String,
    base: u64,
    memory: HostMemory,
}

impl DeviceRam {
    /// Its guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    /// Whether it has no bytes (never: [`Vm::add_device_ram`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.memory.len() == 0
    }

    /// Copies `out.len()` bytes from `offset`; false (and `out` untouched)
    /// if they are not all inside.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        let base = self.memory.as_ptr();
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i` is inside the mapping (checked), which
            // lives as long as `self`. The guest may write the byte at the
            // same moment: a volatile byte load, as for device memory,
            // never a reference.
            *b = unsafe { std::ptr::read_volatile(base.add(offset + i)) };
        }
        true
    }

    /// Copies `data` to `offset`; false (and nothing written) if it does
    /// not fit.
    pub fn write(&self, offset: usize, data: &[u8]) -> bool {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.len())
        {
            return false;
        }
        let base = self.memory.as_ptr();
        for (i, b) in data.iter().enumerate() {
            // SAFETY: as in `read`: inside the mapping, a volatile byte
            // store.
            unsafe { std::ptr::write_volatile(base.add(offset + i), *b) };
        }
        true
    }
}

impl fmt::Display for DeviceRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' RAM at {:#x}..{:#x}",
            self.name,
            self.base,
            self.base + self.len() as u64
        )
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.guest.host_memory())
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
        Err(e) => Some(kvm_open_hint(&e)),
    }
}

/// Why `/dev/kvm` could not be opened read-write, and what to do.
fn kvm_open_hint(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "/dev/kvm does not exist: KVM is not available here (load kvm_intel or kvm_amd, or enable nested virtualisation)".into()
        }
        io::ErrorKind::PermissionDenied => std::format!(
            "opening /dev/kvm read-write: {e}; this user needs read-write access (usually the 'kvm' group)"
        ),
        _ => std::format!("opening /dev/kvm read-write: {e}"),
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
        let kvm = Kvm::new().map_err(|e| {
            VmError::KvmOpen(kvm_open_hint(&io::Error::from_raw_os_error(e.errno())))
        })?;
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
            // SAFETY: the host range is inside `memory`, which the
            // `GuestRam` built below owns; this `Vm` holds it, so it is
            // unmapped only after the VM fd is closed (field order); the
            // guest may write it at any time, and this process only reaches
            // it through raw copies (`RegionMemory`), never through
            // references.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
            // SAFETY: valid for `r.size` bytes for as long as the table is
            // used: the table and the memory are owned together by one
            // `GuestRam`, the table dropped first, and `RegionMemory` is not
            // `Clone`, so no copy of the region outlives the mapping.
            let region = unsafe { Region::new(GuestAddress(r.base), host, r.size) };
            guest.add(region).map_err(VmError::Memory)?;
            host_offset += r.size as usize;
        }

        // A file another process can shrink (a vhost-user backend is given
        // it) is watched; anonymous RAM cannot lose its backing that way.
        let ram_guard = match memory.fd() {
            Some(_) => Some(Guard::new(memory.as_ptr(), memory.len()).map_err(VmError::Guard)?),
            None => None,
        };
        let watches: Vec<_> = ram_guard.iter().map(Guard::watch).collect();
        let guest = GuestRam(Arc::new(RamInner {
            table: Guarded::new(guest, watches),
            guard: ram_guard,
            memory: Some(memory),
        }));

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
            com2: ports::Serial::new(),
            lpt: None,
            debug: Log::default(),
            ram,
            guest,
            boot: None,
            created: Some(created),
            stats,
            devices: Vec::new(),
            device_ram: Vec::new(),
            quit: Arc::default(),
        })
    }

    /// The handle through which the host side ends a run
    /// ([`QuitRequest::quit`]; the verdict is [`Verdict::Quit`]).
    pub fn quit_request(&self) -> Arc<QuitRequest> {
        Arc::clone(&self.quit)
    }

    /// Guest memory, for loaders and devices.
    pub fn guest_memory(&self) -> &GuestRam {
        &self.guest
    }

    /// The offset into the host memory of the first access by the
    /// monitor's own code (devices, loaders) that faulted because the file
    /// behind guest RAM shrank (another process truncated it), if one did.
    /// Devices' accesses fail from then on; a vCPU touching a lost page gets
    /// `EFAULT` from `KVM_RUN` instead (a [`VmError::Kvm`]).
    pub fn ram_fault(&self) -> Option<usize> {
        self.guest.fault()
    }

    /// The guest RAM ranges.
    pub fn ram(&self) -> &[RamRange] {
        &self.ram
    }

    /// The host memory behind guest RAM.
    pub fn host_memory(&self) -> &HostMemory {
        // Invariant: `Vm::new` always builds its `GuestRam` over the host
        // memory it was given (only `GuestRam::default` has none).
        self.guest
            .host_memory()
            .expect("a VM's guest RAM has its host memory")
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

    /// Puts a parallel port at LPT1 (`-parallel`).
    pub fn attach_parallel(&mut self, lpt: crate::parallel::Parallel) {
        self.lpt = Some(lpt);
    }

    /// LPT1, if the machine has one.
    pub fn parallel(&self) -> Option<&crate::parallel::Parallel> {
        self.lpt.as_ref()
    }

    /// Connects COM1 (`index` 0) or COM2 (1) to `chardev` (QEMU's
    /// `-serial chardev:ID`): its output goes there too (COM1's stays in
    /// the run's serial log), its input is the UART's receive path. False
    /// for another index.
    pub fn attach_serial(
        &mut self,
        index: usize,
        chardev: Box<dyn backends::chardev::Chardev + Send>,
    ) -> bool {
        match index {
            0 => self.serial.attach(chardev),
            1 => self.com2.attach(chardev),
            _ => return false,
        }
        true
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
        if let Some(end) = end
            && self
                .device_ram
                .iter()
                .any(|r| base < r.base + r.len() as u64 && end > r.base)
        {
            return Err(VmError::MmioOverlapsRam(MmioRange { name, base, size }));
        }
        self.bus.insert(name, base, size, device)?;
        Ok(())
    }

    /// Maps `size` bytes (a whole number of 4 KiB pages) of RAM at `base`
    /// (page-aligned) for a device, with a KVM memory slot of its own:
    /// the guest's accesses to it cause no exits. Refused if it overlaps
    /// RAM, another device's RAM or an MMIO range.
    pub fn add_device_ram(
        &mut self,
        name: impl Into<String>,
        base: u64,
        size: u64,
    ) -> Result<Arc<DeviceRam>, VmError> {
        let name = name.into();
        let range = MmioRange {
            name: name.clone(),
            base,
            size,
        };
        let page = 4096;
        let end = base.checked_add(size);
        if size == 0 || !base.is_multiple_of(page) || !size.is_multiple_of(page) {
            return Err(VmError::DeviceRam(range, "not whole 4 KiB pages".into()));
        }
        let Some(end) = end else {
            return Err(VmError::DeviceRam(range, "wraps the address space".into()));
        };
        let overlaps = |b: u64, s: u64| base < b.saturating_add(s) && end > b;
        if self.ram.iter().any(|r| overlaps(r.base, r.size))
            || self
                .device_ram
                .iter()
                .any(|r| overlaps(r.base, r.len() as u64))
        {
            return Err(VmError::MmioOverlapsRam(range));
        }
        if let Some(r) = self.bus.ranges().find(|r| overlaps(r.base, r.size)) {
            return Err(VmError::DeviceRam(range, format!("overlaps {r}")));
        }
        let memory = HostMemory::new(&backends::hostmem::HostMemoryConfig {
            kind: backends::hostmem::HostMemoryKind::Ram,
            size,
            share: false,
            prealloc: true,
        })
        .map_err(|e| VmError::DeviceRam(range.clone(), e.to_string()))?;
        let slot = (self.ram.len() + self.device_ram.len()) as u32;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: base,
            memory_size: size,
            userspace_addr: memory.as_ptr() as u64,
        };
        // SAFETY: the mapping is owned by the `DeviceRam` this `Vm` keeps
        // in a field dropped after the VM fd closes; the host reaches it
        // only through copies.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        let ram = Arc::new(DeviceRam { name, base, memory });
        self.device_ram.push(Arc::clone(&ram));
        Ok(ram)
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
        let me = VcpuThread(unsafe { libc::pthread_self() });
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let created = self.created.take();
        let stop_workers =
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmError::Worker)?;
        let workers = self
            .devices
            .iter()
            .map(|d| Worker::new(Arc::clone(d), &stop_workers))
            .collect::<io::Result<Vec<Worker>>>()
            .map_err(VmError::Worker)?;
        let stats_before = self.stats.as_ref().ok().and_then(|s| s.read().ok());
        let mut start = Instant::now();
        let mut end = start;
        self.quit.status.store(0, Ordering::Release);
        *self
            .quit
            .wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(done_tx.clone());
        let Vm {
            vcpu,
            bus,
            serial,
            com2,
            lpt,
            debug,
            quit,
            ..
        } = self;
        let result = std::thread::scope(|scope| {
            let stop = &stop;
            // Whatever happens below, the workers stop when this closure
            // returns and the scope joins them.
            let _stop_guard = StopOnDrop(&stop_workers);
            // Whatever happens below (a panic too), the quit handle lets go
            // of its sender, so the watchdog sees the channel close.
            let _wake_guard = ClearWake(quit);
            for (i, w) in workers.into_iter().enumerate() {
                std::thread::Builder::new()
                    .name(format!("virtio-worker-{i}"))
                    .spawn_scoped(scope, move || w.run())
                    .map_err(VmError::Worker)?;
            }
            let watchdog = std::thread::Builder::new()
                .name("vcpu-watchdog".into())
                .spawn_scoped(scope, move || {
                    // A message is a quit request: kick at once; the
                    // deadline raises the stop flag first.
                    match done_rx.recv_timeout(timeout) {
                        Ok(()) => {}
                        Err(RecvTimeoutError::Timeout) => stop.store(true, Ordering::Release),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    loop {
                        me.kick();
                        if done_rx.recv_timeout(KICK_INTERVAL)
                            == Err(RecvTimeoutError::Disconnected)
                        {
                            return;
                        }
                    }
                })
                .map_err(VmError::Watchdog)?;
            start = Instant::now();
            let io = PortIo {
                serials: [serial, com2],
                lpt: lpt.as_mut(),
                debug,
            };
            let r = run_loop(vcpu, bus, io, stop, quit, &mut exits);
            end = Instant::now();
            // The watchdog ends when the last sender goes: the quit
            // handle's clone first.
            drop(_wake_guard);
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
            Stop::Quit(status) => Verdict::Quit(status),
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
