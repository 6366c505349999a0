//! Devices behind virtio-mmio slots (spec §4.2): each slot's bus entry is
//! `virtio-core`'s version 2 register file around a
//! [`virtio_devices::VirtioDevice`], shared under one `Mutex` between the
//! vCPU thread (register reads and writes) and the device's worker thread
//! (queue notifications, backend readiness, interrupt resampling).
//!
//! Interrupts: one KVM irqfd per slot on GSI = the slot's irq. It is
//! registered with a resample fd where KVM allows it, which gives the line
//! level semantics as virtio-mmio describes it (asserted while
//! `InterruptStatus` is non-zero, §4.2.2): KVM lowers the line at the
//! guest's EOI and signals the resample fd, and the worker raises it again
//! if the driver has not acknowledged every bit yet. That works whether the
//! guest programs the IOAPIC pin edge- or level-triggered; without resample
//! support the line falls back to plain edge pulses ([`InterruptMode`]).
//!
//! Notifications ([`NotifyMode`]): `Worker` registers one KVM ioeventfd per
//! queue on the slot's `QueueNotify` with a 4-byte datamatch on the queue
//! index, so a notify never leaves the kernel; the worker replays it into
//! the register file (the same checks as a trapped write, §4.2.3.3) and
//! serves the queue. `Inline` registers none: the write exits to the vCPU
//! thread and is served there, through the bus. In both modes any
//! `QueueNotify` write that no ioeventfd matches (another width or value,
//! e.g. with `VIRTIO_F_NOTIFICATION_DATA`) is served inline.
//!
//! Every device has a worker thread while the VM runs, in both modes: it
//! waits (epoll) on the resample fd, on the backends' readiness fds
//! (edge-triggered: a backend the device cannot drain yet does not spin
//! it) and, in `Worker` mode, on the ioeventfds. A backend's readiness fd
//! is stable for its life (a socket chardev's is an epoll set of its own
//! that follows accept, hang-up and redial); as a safety net for sources
//! whose readiness no fd reports, a worker with backend fds also calls
//! `backend_ready` every [`BACKEND_TICK`]. A device error sets `DEVICE_NEEDS_RESET` (§2.1.2,
//! done by `virtio_devices::transport`).
//!
//! Device panics: every call the slot makes into its device runs under
//! `catch_unwind` (register reads and writes, which reach `read_config`,
//! `write_config`, `activate`, `reset` and the device's features and queue
//! sizes; queue service; `backend_ready`; configuration updates), as does
//! building the register file at attach. A device that panics is marked
//! faulty, gets `DEVICE_NEEDS_RESET` (§2.1.2) and is not called again: the
//! slot then answers the guest itself. Reads of the registers the register
//! file keeps (magic, version, `InterruptStatus`, `QueueReady`,
//! `ConfigGeneration`, …) read as before, `DeviceID` and `VendorID` as at
//! attach, `Status` with `DEVICE_NEEDS_RESET` set, and everything the
//! device would have answered (configuration space, `DeviceFeatures`,
//! `QueueNumMax`) as 0; writes other than `InterruptAck` and the selectors
//! are dropped, so not even a reset revives the device. The VM runs on
//! either way, and [`VirtioReport`] tells the caller afterwards.

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_core::mmio::device::{MmioError, MmioRegisters, WriteOutcome};
use virtio_core::mmio::{MmioVersion, Register, regs};
use virtio_core::status::DeviceStatus;
use virtio_devices::transport::{self, MmioTransport};
use virtio_devices::{DeviceError, VirtioDevice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::bus::MmioDevice;
use crate::misbehave::{self, RegisterLies};
use crate::slots::VirtioSlot;

/// The most queues a device behind a slot may have (the register file's
/// capacity): virtio-serial with 31 ports has 64.
pub const MAX_QUEUES: usize = 64;

/// How often a worker with backend fds calls `backend_ready` anyway.
pub const BACKEND_TICK: Duration = Duration::from_millis(20);

/// The register file of a slot holding device `D`.
pub type Registers<D> = MmioRegisters<MmioTransport<D>, MAX_QUEUES>;

/// Where a device's queue notifications are served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NotifyMode {
    /// `QueueNotify` writes exit to the vCPU thread, which serves the queue
    /// through the MMIO bus.
    Inline,
    /// A KVM ioeventfd per queue (datamatch on the queue index) wakes the
    /// device's worker thread; the vCPU does not leave the kernel.
    #[default]
    Worker,
}

impl fmt::Display for NotifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotifyMode::Inline => "inline",
            NotifyMode::Worker => "worker",
        })
    }
}

/// How the slot's interrupt line reaches KVM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptMode {
    /// irqfd with a resample fd: asserted until EOI, re-asserted while
    /// `InterruptStatus` is non-zero.
    Level,
    /// Plain irqfd: one pulse per raise.
    Edge,
}

/// Counters of one slot, since it was added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// `QueueNotify` writes served on the vCPU thread.
    pub notify_inline: u64,
    /// Notifications served by the worker from an ioeventfd.
    pub notify_worker: u64,
    /// `backend_ready` calls (readiness fd events and ticks).
    pub backend_ready: u64,
    /// Times the interrupt line was raised (irqfd writes, resamples
    /// included).
    pub interrupts: u64,
    /// Of `interrupts`: re-assertions after an EOI found `InterruptStatus`
    /// still set.
    pub reasserted: u64,
    /// Register accesses the register file refused (reads and writes).
    pub refused: u64,
    /// Services resumed by the worker because the device had stopped at
    /// its work budget (issue 16, finding 2), queues and backend events.
    pub resumed: u64,
}

impl SlotCounters {
    /// Notifications served, both ways.
    pub fn notifications(&self) -> u64 {
        self.notify_inline + self.notify_worker
    }
}

/// A slot's state, for reports and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioReport {
    /// The name given to [`crate::vm::Vm::add_virtio_device`].
    pub name: String,
    /// Where it sits.
    pub slot: VirtioSlot,
    /// Its notification path.
    pub mode: NotifyMode,
    /// Its interrupt line.
    pub interrupt: InterruptMode,
    /// `DeviceID`.
    pub device_id: u32,
    /// `Status` as the driver reads it.
    pub status: DeviceStatus,
    /// The negotiated features, once FEATURES_OK was accepted.
    pub features: Option<u64>,
    /// `InterruptStatus` bits now.
    pub interrupt_status: u32,
    /// The device's last error (activation or queue service): the reason
    /// for `DEVICE_NEEDS_RESET`.
    pub device_error: Option<DeviceError>,
    /// The last register access the register file refused.
    pub refused_access: Option<MmioError>,
    /// A device panic or worker failure; the device is not called again.
    pub fault: Option<String>,
    /// For a hostile device (`misbehave=`, [`virtio_devices::misbehave`]): its mode
    /// and the lies told so far.
    pub misbehave: Option<String>,
    /// Counters.
    pub counters: SlotCounters,
}

impl fmt::Display for VirtioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (slot {}, irq {}, {} notify, {:?} irq): device {} status {:#x}",
            self.name,
            self.slot.index,
            self.slot.irq,
            self.mode,
            self.interrupt,
            self.device_id,
            self.status.bits()
        )?;
        if let Some(features) = self.features {
            write!(f, " features {features:#x}")?;
        }
        let c = &self.counters;
        write!(
            f,
            ", {} notifications ({} inline, {} worker), {} interrupts ({} re-asserted)",
            c.notifications(),
            c.notify_inline,
            c.notify_worker,
            c.interrupts,
            c.reasserted
        )?;
        if c.resumed > 0 {
            write!(f, ", {} resumed after the work budget", c.resumed)?;
        }
        if let Some(e) = &self.device_error {
            write!(f, ", device error: {e}")?;
        }
        if let Some(e) = &self.refused_access {
            write!(f, ", refused access: {e}")?;
        }
        if let Some(e) = &self.fault {
            write!(f, ", fault: {e}")?;
        }
        if let Some(m) = &self.misbehave {
            write!(f, ", misbehave={m}")?;
        }
        Ok(())
    }
}

/// Why a device could not be put on a slot.
#[derive(Debug)]
pub enum AttachError {
    /// Every virtio-mmio slot is taken.
    NoFreeSlot,
    /// The register file refused the device (too many queues).
    Registers(MmioError),
    /// Creating an eventfd failed.
    EventFd(io::Error),
    /// A KVM ioctl failed.
    Kvm {
        /// Which.
        what: &'static str,
        /// Why.
        err: kvm_ioctls::Error,
    },
    /// The device panicked while its register file was built (asked for
    /// its ID, queues or queue sizes); it is not placed.
    DevicePanicked(String),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::NoFreeSlot => f.write_str("every virtio-mmio slot is taken"),
            AttachError::Registers(e) => write!(f, "virtio-mmio register file: {e}"),
            AttachError::EventFd(e) => write!(f, "creating an eventfd: {e}"),
            AttachError::Kvm { what, err } => write!(f, "{what}: {err}"),
            AttachError::DevicePanicked(msg) => {
                write!(f, "the device panicked while its slot was built: {msg}")
            }
        }
    }
}

impl std::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttachError::Registers(e) => Some(e),
            AttachError::EventFd(e) => Some(e),
            AttachError::Kvm { err, .. } => Some(err),
            AttachError::NoFreeSlot | AttachError::DevicePanicked(_) => None,
        }
    }
}

/// An observer of one slot's register traffic, as the driver made it, and
/// of the interrupts the slot raises: how a conformance watch judges a
/// driver running under KVM (§4.2.2). Called under the slot's lock, in
/// the order the device saw each event; it must not call back into the
/// slot (its handle), which would deadlock. A `QueueNotify` that an
/// ioeventfd takes never traps, so it never reaches the tap: a watch
/// places its devices with [`NotifyMode::Inline`] (as
/// [`crate::machine::Machine::watched`] does).
pub trait RegisterTap: Send + Sync {
    /// A register read, with the bytes the driver got.
    fn read(&self, offset: u64, data: &[u8]);
    /// A register write as the driver made it, before the device acts on
    /// it.
    fn write(&self, offset: u64, data: &[u8]);
    /// The slot raised its interrupt line.
    fn interrupt(&self);
}

struct State<D> {
    regs: Registers<D>,
    /// The conformance watch's tap, if one is set
    /// ([`VirtioHandle::set_register_tap`]).
    tap: Option<Arc<dyn RegisterTap>>,
    counters: SlotCounters,
    fault: Option<String>,
    /// A resample may re-assert the line: set by every raise and every
    /// register access, cleared by a re-assertion. KVM also signals the
    /// resample fd when no EOI happened (e.g. lazily, as it asserts the
    /// line), and a guest that polls with the pin masked never EOIs; this
    /// bounds such a resample to one re-assertion per guest or device
    /// action instead of a storm.
    rearm: bool,
    /// The register lies of a hostile device (`misbehave=`).
    lies: Option<RegisterLies>,
    /// Queues whose service stopped at the device's work budget, for the
    /// worker to resume (each once).
    again_queues: Vec<u16>,
    /// `backend_ready` stopped at the work budget.
    again_backend: bool,
}

/// One slot's shared state: the register file and the interrupt line.
struct Shared<D> {
    name: String,
    slot: VirtioSlot,
    mode: NotifyMode,
    interrupt: InterruptMode,
    irq: EventFd,
    /// Written when a service stopped at the device's work budget: wakes
    /// the worker to resume it after its other events (the ready list).
    again: EventFd,
    /// `DeviceID` and `VendorID` as read at attach: what a faulty slot
    /// answers (and reports) without calling the device.
    device_id: u32,
    vendor_id: u32,
    state: Mutex<State<D>>,
}

/// Where a queue notification came from, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// A `QueueNotify` write served on the vCPU thread.
    Inline,
    /// An ioeventfd, served by the worker.
    Worker,
    /// The worker resuming a service that stopped at the work budget.
    Resume,
}

/// Which device call a guarded section makes, named in the fault when the
/// device panics (built only then, so the hot path does not format).
#[derive(Clone, Copy, Debug)]
enum Call {
    /// A register read at this offset.
    Read(u64),
    /// A register write at this offset, of this value (0 for another
    /// width).
    Write(u64, u32),
    /// Serving a notified queue.
    QueueService,
    /// `backend_ready`.
    BackendReady,
    /// [`VirtioHandle::update_config`].
    ConfigUpdate,
    /// [`VirtioHandle::try_with_device`].
    Query,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let register = |offset| Register::from_offset(offset, MmioVersion::Modern);
        match *self {
            Call::Read(o) if o >= regs::CONFIG => {
                write!(f, "read_config at {:#x}", o - regs::CONFIG)
            }
            Call::Write(o, _) if o >= regs::CONFIG => {
                write!(f, "write_config at {:#x}", o - regs::CONFIG)
            }
            Call::Write(regs::STATUS, 0) => f.write_str("reset (Status write 0)"),
            Call::Write(regs::STATUS, v) if v & u32::from(DeviceStatus::DRIVER_OK.bits()) != 0 => {
                write!(f, "activate (Status write {v:#x})")
            }
            Call::Read(o) => match register(o) {
                Some(r) => write!(f, "{} read", r.name()),
                None => write!(f, "read at {o:#x}"),
            },
            Call::Write(o, v) => match register(o) {
                Some(r) => write!(f, "{} write {v:#x}", r.name()),
                None => write!(f, "write at {o:#x}"),
            },
            Call::QueueService => f.write_str("queue service"),
            Call::BackendReady => f.write_str("backend_ready"),
            Call::ConfigUpdate => f.write_str("configuration update"),
            Call::Query => f.write_str("a call through the handle"),
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The value of a 4-byte access, 0 for another width.
fn value(data: &[u8]) -> u32 {
    <[u8; 4]>::try_from(data).map_or(0, u32::from_le_bytes)
}

impl<D> Shared<D> {
    fn lock(&self) -> MutexGuard<'_, State<D>> {
        // Device calls run under `catch_unwind` inside the lock, so a
        // poisoned lock can only come from a bug here; the state is still
        // consistent enough to report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<D: VirtioDevice> Shared<D> {
    /// Raises the line (irqfd). A failed eventfd write is kept as a fault.
    fn raise(&self, state: &mut State<D>) {
        state.rearm = true;
        if let Some(tap) = &state.tap {
            tap.interrupt();
        }
        self.pulse(state);
    }

    /// Writes the irqfd.
    fn pulse(&self, state: &mut State<D>) {
        state.counters.interrupts += 1;
        if let Err(e) = self.irq.write(1) {
            state.fault = Some(format!("raising irq {}: {e}", self.slot.irq));
        }
    }

    /// Runs `call`, which may call into the device, under `catch_unwind`:
    /// the one path every device call from the slot takes. A panic marks
    /// the device faulty, asks the driver for a reset (§2.1.2, raising the
    /// configuration change interrupt once DRIVER_OK was set) and returns
    /// `None`; so does a device already faulty, which is not called.
    fn guarded<R>(
        &self,
        state: &mut State<D>,
        what: Call,
        call: impl FnOnce(&mut Registers<D>) -> R,
    ) -> Option<R> {
        if state.fault.is_some() {
            return None;
        }
        match catch_unwind(AssertUnwindSafe(|| call(&mut state.regs))) {
            Ok(r) => Some(r),
            Err(panic) => {
                let msg = panic_message(&*panic);
                state.fault = Some(format!("device panicked in {what}: {msg}"));
                // Fails only with Status 0 (a reset that panicked); a
                // faulty slot's Status reads DEVICE_NEEDS_RESET anyway.
                let _ = state.regs.set_needs_reset();
                if state.regs.interrupt_asserted() {
                    self.raise(state);
                }
                None
            }
        }
    }

    /// Acts on a register write's outcome (notify → serve the queue).
    fn outcome(&self, state: &mut State<D>, outcome: WriteOutcome, via: Via) {
        if let WriteOutcome::Notify { .. } = outcome {
            match via {
                Via::Inline => state.counters.notify_inline += 1,
                Via::Worker => state.counters.notify_worker += 1,
                Via::Resume => state.counters.resumed += 1,
            }
        }
        let done = self.guarded(state, Call::QueueService, |regs| {
            transport::dispatch_once(regs, outcome)
        });
        let Some(done) = done else { return };
        if done.interrupt {
            self.raise(state);
        }
        if done.again
            && let WriteOutcome::Notify { queue, .. } = outcome
        {
            if !state.again_queues.contains(&queue) {
                state.again_queues.push(queue);
            }
            self.wake_for_again(state);
        }
    }

    /// Serves `queue` as a `QueueNotify` write would, replayed through the
    /// register file so that a notify that did not trap gets the checks of
    /// one that did (§4.2.3.3: not before DRIVER_OK, only a ready queue). A
    /// faulty device is not served.
    fn replay_notify(&self, state: &mut State<D>, queue: u16, via: Via) {
        let v = u32::from(queue);
        match self.guarded(state, Call::Write(regs::QUEUE_NOTIFY, v), |regs| {
            regs.write32(regs::QUEUE_NOTIFY, v)
        }) {
            Some(Ok(outcome)) => self.outcome(state, outcome, via),
            Some(Err(_)) => state.counters.refused += 1,
            None => {}
        }
    }

    /// Wakes the worker to resume work the device left at its budget, so
    /// that the vCPU (an inline notify) or this worker's other events are
    /// not held up by it. A failed eventfd write is kept as a fault.
    fn wake_for_again(&self, state: &mut State<D>) {
        if let Err(e) = self.again.write(1) {
            state.fault = Some(format!("waking the worker: {e}"));
        }
    }

    /// `Status` as the driver reads it: with DEVICE_NEEDS_RESET once the
    /// device is faulty.
    fn status(&self, state: &State<D>) -> DeviceStatus {
        match state.fault {
            Some(_) => state.regs.status() | DeviceStatus::DEVICE_NEEDS_RESET,
            None => state.regs.status(),
        }
    }

    /// A faulty device's register read, answered without calling it.
    fn faulty_read(&self, state: &mut State<D>, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let register = match control_register(offset, data.len()) {
            Some(r) => r,
            // Configuration space (and accesses the register file would
            // refuse) read as 0.
            None => return,
        };
        let v = match register {
            Register::DeviceId => self.device_id,
            Register::VendorId => self.vendor_id,
            Register::Status => u32::from(self.status(state).bits()),
            // Kept by the register file itself, without the device.
            Register::MagicValue
            | Register::Version
            | Register::QueueReady
            | Register::InterruptStatus
            | Register::ConfigGeneration
            | Register::QueueReset
            | Register::ShmLenLow
            | Register::ShmLenHigh
            | Register::ShmBaseLow
            | Register::ShmBaseHigh => {
                if state.regs.read(offset, data).is_err() {
                    state.counters.refused += 1;
                }
                return;
            }
            // The device's answers (features, queue sizes) and write-only
            // registers.
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A faulty device's register write: only the interrupt acknowledgement
    /// and the registers that merely select or record (which never reach
    /// the device) take effect; the rest is dropped.
    fn faulty_write(&self, state: &mut State<D>, offset: u64, data: &[u8]) {
        let passes = control_register(offset, data.len()).is_some_and(|r| {
            matches!(
                r,
                Register::InterruptAck
                    | Register::DeviceFeaturesSel
                    | Register::DriverFeaturesSel
                    | Register::DriverFeatures
                    | Register::QueueSel
                    | Register::ShmSel
            )
        });
        if passes && state.regs.write(offset, data).is_err() {
            state.counters.refused += 1;
        }
    }
}

/// The modern control register a 4-byte aligned access at `offset` hits.
fn control_register(offset: u64, size: usize) -> Option<Register> {
    if size != 4 || !offset.is_multiple_of(4) || offset >= regs::CONFIG {
        return None;
    }
    Register::from_offset(offset, MmioVersion::Modern)
}

/// What the bus and the worker need from a slot, whatever its device type.
trait SlotOps: Send + Sync {
    fn read(&self, offset: u64, data: &mut [u8]);
    fn write(&self, offset: u64, data: &[u8]);
    fn notified(&self, queue: u16);
    fn backend_ready(&self);
    /// Resumes the services that stopped at the device's work budget.
    fn resume(&self);
    fn resampled(&self);
    fn failed(&self, why: String);
    fn report(&self) -> VirtioReport;
    /// Whether the worker must call [`SlotOps::storm`] every
    /// [`misbehave::STORM_PERIOD`].
    fn storms(&self) -> bool;
    /// A hostile device's groundless interrupt (§4.2.2), if it storms.
    fn storm(&self);
}

impl<D: VirtioDevice + Send + 'static> SlotOps for Shared<D> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut state = self.lock();
        state.rearm = true;
        match self.guarded(&mut state, Call::Read(offset), |regs| {
            regs.read(offset, &mut *data)
        }) {
            Some(Ok(())) => {}
            Some(Err(_)) => state.counters.refused += 1,
            None => self.faulty_read(&mut state, offset, data),
        }
        if let Some(lies) = state.lies.as_mut() {
            lies.after_read(offset, data);
        }
        if let Some(tap) = &state.tap {
            tap.read(offset, data);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        state.rearm = true;
        if let Some(tap) = &state.tap {
            tap.write(offset, data);
        }
        let status = state.regs.status().bits();
        if let Some(lies) = state.lies.as_mut()
            && !lies.take_write(offset, data, u32::from(status))
        {
            return;
        }
        if state.fault.is_some() {
            self.faulty_write(&mut state, offset, data);
            return;
        }
        match self.guarded(&mut state, Call::Write(offset, value(data)), |regs| {
            regs.write(offset, data)
        }) {
            Some(Ok(outcome)) => self.outcome(&mut state, outcome, Via::Inline),
            Some(Err(_)) => state.counters.refused += 1,
            // The device panicked: the slot is faulty, the write dropped.
            None => {}
        }
    }

    fn notified(&self, queue: u16) {
        self.replay_notify(&mut self.lock(), queue, Via::Worker);
    }

    fn backend_ready(&self) {
        let mut state = self.lock();
        if !state.regs.status().contains(DeviceStatus::DRIVER_OK) {
            return;
        }
        state.counters.backend_ready += 1;
        let Some(done) = self.guarded(
            &mut state,
            Call::BackendReady,
            transport::backend_ready_once,
        ) else {
            return;
        };
        if done.interrupt {
            self.raise(&mut state);
        }
        if done.again {
            state.again_backend = true;
            self.wake_for_again(&mut state);
        }
    }

    fn resume(&self) {
        let (queues, backend) = {
            let mut state = self.lock();
            (
                std::mem::take(&mut state.again_queues),
                std::mem::take(&mut state.again_backend),
            )
        };
        // One budget per queue per round, the lock released between: the
        // monitor's own calls (`set_link`, a report) get in, and a queue
        // that stops again goes to the back of the list.
        for queue in queues {
            self.replay_notify(&mut self.lock(), queue, Via::Resume);
        }
        if backend {
            self.lock().counters.resumed += 1;
            self.backend_ready();
        }
    }

    fn resampled(&self) {
        let mut state = self.lock();
        if state.rearm && state.regs.interrupt_asserted() {
            state.rearm = false;
            state.counters.reasserted += 1;
            self.pulse(&mut state);
        }
    }

    fn failed(&self, why: String) {
        self.lock().fault.get_or_insert(why);
    }

    fn report(&self) -> VirtioReport {
        let state = self.lock();
        let regs = &state.regs;
        let device: &dyn Any = regs.device().device();
        let ring_lie = told_ring_lie(device);
        // An external vhost-user backend that died is this slot's fault.
        let backend_gone = device
            .downcast_ref::<vhost_user::VhostUserDevice>()
            .and_then(|v| v.dead().map(str::to_owned))
            .or_else(|| {
                device
                    .downcast_ref::<vhost_user::VhostUserCrypto<crate::vm::GuestRam>>()
                    .and_then(|v| v.dead())
            })
            .map(|why| format!("vhost-user backend gone: {why}"));
        let misbehave = state.lies.as_ref().map(|l| {
            let lie = match ring_lie {
                Some(lie) => lie,
                None if l.mode().is_ring_lie() => "no used-ring lie told".into(),
                None => format!("{} register lies told", l.told),
            };
            format!("{} ({}): {lie}", l.mode(), l.mode().rule())
        });
        VirtioReport {
            name: self.name.clone(),
            slot: self.slot,
            mode: self.mode,
            interrupt: self.interrupt,
            device_id: self.device_id,
            status: self.status(&state),
            features: regs.features(),
            interrupt_status: regs.interrupt_status().bits(),
            device_error: regs.device().last_error(),
            refused_access: regs.last_error(),
            fault: state.fault.clone().or(backend_gone),
            misbehave,
            counters: state.counters,
        }
    }

    fn storms(&self) -> bool {
        self.lock().lies.as_ref().is_some_and(RegisterLies::storms)
    }

    fn storm(&self) {
        let mut state = self.lock();
        let driver_ok = state.regs.status().contains(DeviceStatus::DRIVER_OK);
        let storm = state.lies.as_mut().is_some_and(|l| l.storm(driver_ok));
        if storm && state.regs.raise_used_buffer() {
            self.raise(&mut state);
        }
    }
}

/// The slot as the MMIO bus sees it.
struct SlotBus(Arc<dyn SlotOps>);

impl MmioDevice for SlotBus {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// A device the caller added, to look at after (or between) runs.
pub struct VirtioHandle<D> {
    shared: Arc<Shared<D>>,
}

impl<D> fmt::Debug for VirtioHandle<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioHandle")
            .field("name", &self.shared.name)
            .field("slot", &self.shared.slot)
            .finish_non_exhaustive()
    }
}

impl<D> Clone for VirtioHandle<D> {
    fn clone(&self) -> Self {
        VirtioHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: VirtioDevice + Send + 'static> VirtioHandle<D> {
    /// Where the device sits (for `slots::append_cmdline`).
    pub fn slot(&self) -> VirtioSlot {
        self.shared.slot
    }

    /// Its state and counters now.
    pub fn report(&self) -> VirtioReport {
        self.shared.report()
    }

    /// Calls `f` with the device (e.g. to read its counters). The device
    /// is locked meanwhile: while the VM runs, this stalls the guest's
    /// accesses to the slot. The device's guest memory is valid only while
    /// the [`crate::vm::Vm`] lives. Not guarded: a panic in `f` (or in
    /// the device it calls) reaches the caller, and a faulty device is
    /// called all the same; [`try_with_device`](Self::try_with_device) is
    /// the guarded form.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(self.shared.lock().regs.device_mut().device_mut())
    }

    /// Sets the tap that sees every register access the driver makes to
    /// this slot and every interrupt it raises (a conformance watch);
    /// `None` removes it.
    pub fn set_register_tap(&self, tap: Option<Arc<dyn RegisterTap>>) {
        self.shared.lock().tap = tap;
    }

    /// Calls `f` with the slot's register file. Not guarded, as
    /// [`with_device`](Self::with_device): for tests and set-up, not for a
    /// guest's accesses.
    pub fn with_registers<R>(&self, f: impl FnOnce(&mut Registers<D>) -> R) -> R {
        f(&mut self.shared.lock().regs)
    }

    /// Changes the device's configuration from outside (a monitor
    /// command): calls `f` with the device under the slot's lock, and if it
    /// returns true signals a configuration change exactly as a device
    /// returning `Served { config_changed: true }` does — `ConfigGeneration`
    /// bumps and, once DRIVER_OK is set, `InterruptStatus` bit 1 and the
    /// irqfd (§4.2.2, §2.4.2 / `VIRTIO_MMIO_INT_CONFIG`). Returns what `f`
    /// returned, or `None` for a faulty device (not called again).
    pub fn update_config(&self, f: impl FnOnce(&mut D) -> bool) -> Option<bool> {
        let mut state = self.shared.lock();
        if state.fault.is_some() {
            return None;
        }
        let mut changed = false;
        let raise = self
            .shared
            .guarded(&mut state, Call::ConfigUpdate, |regs| {
                changed = f(regs.device_mut().device_mut());
                if changed {
                    regs.config_changed();
                    regs.interrupt_asserted()
                } else {
                    false
                }
            })?;
        if raise {
            self.shared.raise(&mut state);
        }
        Some(changed)
    }

    /// Calls `f` with the device as [`with_device`](Self::with_device)
    /// does, but on the path the guest's accesses take: under
    /// `catch_unwind`, not at all for a faulty device. Returns `None` for
    /// a faulty device, or when `f` panicked (the slot is then faulty).
    pub fn try_with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> Option<R> {
        let mut state = self.shared.lock();
        self.shared.guarded(&mut state, Call::Query, |regs| {
            f(regs.device_mut().device_mut())
        })
    }
}

/// A placed device: its shared state and the fds its worker waits on.
pub(crate) struct Wired {
    ops: Arc<dyn SlotOps>,
    /// `(queue, eventfd)` for each ioeventfd (Worker mode).
    ioevents: Vec<(u16, EventFd)>,
    resample: Option<EventFd>,
    /// Readable when work stopped at the device's budget waits.
    again: EventFd,
    backend_fds: Vec<RawFd>,
}

impl Wired {
    /// The slot's report.
    pub(crate) fn report(&self) -> VirtioReport {
        self.ops.report()
    }
}

/// What [`attach`] made: the bus entry, the worker's wiring, the caller's
/// handle.
pub(crate) struct Attached<D> {
    pub(crate) entry: Box<dyn MmioDevice>,
    pub(crate) wired: Wired,
    pub(crate) handle: VirtioHandle<D>,
}

/// Builds the register file for `device` at `slot`, wires its irqfd (and
/// ioeventfds in `Worker` mode) into `vm`, and returns the bus entry, the
/// worker's wiring and the caller's handle.
pub(crate) fn attach<D: VirtioDevice + Send + 'static>(
    vm: &VmFd,
    slot: VirtioSlot,
    name: String,
    device: D,
    backend_fds: Vec<RawFd>,
    mode: NotifyMode,
) -> Result<Attached<D>, AttachError> {
    let mut backend_fds = backend_fds;
    // epoll refuses the same fd twice; two backends may share one.
    backend_fds.sort_unstable();
    backend_fds.dedup();
    // A hostile device (`misbehave=`) also lies in its registers.
    let lies = hostile_mode(&device).map(RegisterLies::new);
    // Building the register file asks the device for its ID, queues and
    // queue sizes: a panic there refuses the device.
    let built = catch_unwind(AssertUnwindSafe(|| {
        let regs = Registers::new(MmioTransport::new(device))?;
        let ids = (regs.read32(regs::DEVICE_ID)?, regs.read32(regs::VENDOR_ID)?);
        Ok((regs, ids))
    }));
    let (regs, (device_id, vendor_id)) = built
        .map_err(|p| AttachError::DevicePanicked(panic_message(&*p)))?
        .map_err(AttachError::Registers)?;
    let queues = u16::try_from(regs.queues().len()).unwrap_or(u16::MAX);
    let irq = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(AttachError::EventFd)?;
    let again = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(AttachError::EventFd)?;
    let again_wait = again.try_clone().map_err(AttachError::EventFd)?;
    let resample = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(AttachError::EventFd)?;
    let (interrupt, resample) = match vm.register_irqfd_with_resample(&irq, &resample, slot.irq) {
        Ok(()) => (InterruptMode::Level, Some(resample)),
        Err(_) => {
            vm.register_irqfd(&irq, slot.irq)
                .map_err(|err| AttachError::Kvm {
                    what: "KVM_IRQFD",
                    err,
                })?;
            (InterruptMode::Edge, None)
        }
    };
    let mut ioevents = Vec::new();
    if mode == NotifyMode::Worker {
        let addr = IoEventAddress::Mmio(slot.base + regs::QUEUE_NOTIFY);
        for q in 0..queues {
            let fd =
                EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(AttachError::EventFd)?;
            vm.register_ioevent(&fd, &addr, u32::from(q))
                .map_err(|err| AttachError::Kvm {
                    what: "KVM_IOEVENTFD",
                    err,
                })?;
            ioevents.push((q, fd));
        }
    }
    let shared = Arc::new(Shared {
        name,
        slot,
        mode,
        interrupt,
        irq,
        again,
        device_id,
        vendor_id,
        state: Mutex::new(State {
            regs,
            tap: None,
            counters: SlotCounters::default(),
            fault: None,
            rearm: false,
            lies,
            again_queues: Vec::new(),
            again_backend: false,
        }),
    });
    let ops: Arc<dyn SlotOps> = shared.clone();
    Ok(Attached {
        entry: Box::new(SlotBus(ops.clone())),
        wired: Wired {
            ops,
            ioevents,
            resample,
            again: again_wait,
            backend_fds,
        },
        handle: VirtioHandle { shared },
    })
}

/// The mode of a hostile device (`misbehave=`), which then also lies in
/// its registers.
#[cfg(feature = "misbehave")]
fn hostile_mode(device: &dyn Any) -> Option<misbehave::Misbehave> {
    device
        .downcast_ref::<misbehave::Misbehaving>()
        .map(|m| m.mode())
}

/// Without the `misbehave` feature no device is hostile.
#[cfg(not(feature = "misbehave"))]
fn hostile_mode(_device: &dyn Any) -> Option<misbehave::Misbehave> {
    None
}

/// The used-ring lie a hostile device told, described, if it told one.
#[cfg(feature = "misbehave")]
fn told_ring_lie(device: &dyn Any) -> Option<String> {
    let lie = device.downcast_ref::<misbehave::Misbehaving>()?.lie()?;
    Some(format!(
        "used element {} (id {}, len {}) told as (id {}, len {})",
        lie.at, lie.real.0, lie.real.1, lie.told.0, lie.told.1
    ))
}

/// Without the `misbehave` feature no device lies.
#[cfg(not(feature = "misbehave"))]
fn told_ring_lie(_device: &dyn Any) -> Option<String> {
    None
}

const TOKEN_STOP: u64 = 0;
const TOKEN_RESAMPLE: u64 = 1;
const TOKEN_AGAIN: u64 = 2;
const TOKEN_QUEUE: u64 = 1 << 32;
const TOKEN_BACKEND: u64 = 2 << 32;

/// A worker ready to run: its epoll set is built (so set-up errors surface
/// before the vCPU starts).
pub(crate) struct Worker {
    wired: Arc<Wired>,
    epoll: Epoll,
}

impl Worker {
    /// Builds the epoll set for `wired`, stopping when `stop` is readable
    /// (it is never read, so one write stops every worker).
    pub(crate) fn new(wired: Arc<Wired>, stop: &EventFd) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        if let Some(r) = &wired.resample {
            epoll.ctl(
                ControlOperation::Add,
                r.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_RESAMPLE),
            )?;
        }
        epoll.ctl(
            ControlOperation::Add,
            wired.again.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_AGAIN),
        )?;
        for (i, (_, fd)) in wired.ioevents.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_QUEUE + i as u64),
            )?;
        }
        for (i, fd) in wired.backend_fds.iter().enumerate() {
            let events = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
            match epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(events, TOKEN_BACKEND + i as u64),
            ) {
                // A regular file (a `file` chardev's `input-path`) cannot
                // be polled and is always ready: the backend tick serves it.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                // Backends sharing one fd (the ports of a `mux=on`
                // chardev): watched once, and any backend event serves
                // them all.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r?,
            }
        }
        Ok(Worker { wired, epoll })
    }

    /// Serves events until the stop fd is readable. A failure stops this
    /// worker only, recorded as the slot's fault.
    pub(crate) fn run(self) {
        if let Err(e) = self.serve() {
            self.wired.ops.failed(format!("device worker: {e}"));
        }
    }

    fn serve(&self) -> io::Result<()> {
        let w = &*self.wired;
        let storms = w.ops.storms();
        let timeout = if storms {
            misbehave::STORM_PERIOD.as_millis().max(1) as i32
        } else if w.backend_fds.is_empty() {
            -1
        } else {
            BACKEND_TICK.as_millis() as i32
        };
        let mut events = vec![EpollEvent::default(); 3 + w.ioevents.len() + w.backend_fds.len()];
        loop {
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if storms {
                w.ops.storm();
            }
            if n == 0 {
                if !w.backend_fds.is_empty() {
                    w.ops.backend_ready();
                }
                continue;
            }
            let mut backend = false;
            let mut again = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_AGAIN => {
                        let _ = w.again.read();
                        again = true;
                    }
                    TOKEN_RESAMPLE => {
                        if let Some(r) = &w.resample {
                            let _ = r.read();
                        }
                        w.ops.resampled();
                    }
                    t if t >= TOKEN_BACKEND => backend = true,
                    t => {
                        let i = usize::try_from(t - TOKEN_QUEUE).unwrap_or(usize::MAX);
                        if let Some((queue, fd)) = w.ioevents.get(i) {
                            // Clears the count: one service covers every
                            // notify since the last.
                            let _ = fd.read();
                            w.ops.notified(*queue);
                        }
                    }
                }
            }
            if backend {
                w.ops.backend_ready();
            }
            // Last: the ready list waits behind this round's new events.
            if again {
                w.ops.resume();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use virtio_core::features::DeviceType;
    use virtio_devices::{QueueConfig, Served};

    /// Which of its calls a [`TestDevice`] panics in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum PanicIn {
        Nothing,
        Activate,
        Reset,
        ReadConfig,
        WriteConfig,
        QueueSizes,
    }

    /// An entropy device with one queue and 8 bytes of configuration that
    /// panics in one of its calls; `calls` counts every call after its
    /// panic.
    struct TestDevice {
        panic_in: PanicIn,
        panicked: bool,
        calls_after_panic: Arc<AtomicU32>,
        notified: u32,
        config: [u8; 8],
        /// Notifications still to answer "stopped at the budget".
        again_left: u32,
    }

    impl TestDevice {
        fn new(panic_in: PanicIn) -> (TestDevice, Arc<AtomicU32>) {
            let calls = Arc::new(AtomicU32::new(0));
            let d = TestDevice {
                panic_in,
                panicked: false,
                calls_after_panic: calls.clone(),
                notified: 0,
                config: *b"config!!",
                again_left: 0,
            };
            (d, calls)
        }

        fn called(&self) {
            if self.panicked {
                self.calls_after_panic.fetch_add(1, Ordering::Relaxed);
            }
        }

        fn maybe_panic(&mut self, here: PanicIn) {
            self.called();
            if self.panic_in == here && !self.panicked {
                self.panicked = true;
                panic!("deliberate test panic in {here:?}");
            }
        }
    }

    impl VirtioDevice for TestDevice {
        fn device_type(&self) -> DeviceType {
            DeviceType::Rng
        }
        fn device_features(&self) -> u64 {
            self.called();
            0
        }
        fn queue_max_sizes(&self) -> &[u16] {
            self.called();
            if self.panic_in == PanicIn::QueueSizes {
                panic!("deliberate test panic in {:?}", PanicIn::QueueSizes);
            }
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            self.called();
            if self.panic_in == PanicIn::ReadConfig {
                panic!("deliberate test panic in {:?}", PanicIn::ReadConfig);
            }
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.maybe_panic(PanicIn::WriteConfig);
            for (i, b) in data.iter().enumerate() {
                if let Some(c) = self.config.get_mut(offset as usize + i) {
                    *c = *b;
                }
            }
        }
        fn config_len(&self) -> usize {
            8
        }
        fn activate(
            &mut self,
            _features: u64,
            _queues: Vec<QueueConfig>,
        ) -> Result<(), DeviceError> {
            self.maybe_panic(PanicIn::Activate);
            Ok(())
        }
        fn queue_notify(&mut self, _queue: u16) -> Result<Served, DeviceError> {
            self.called();
            self.notified += 1;
            let again = self.again_left > 0;
            self.again_left = self.again_left.saturating_sub(1);
            Ok(Served {
                completed: 1,
                interrupt: true,
                again,
                ..Served::default()
            })
        }
        fn reset(&mut self) {
            self.maybe_panic(PanicIn::Reset);
        }
    }

    /// A slot holding `device`, without KVM (the line is a plain eventfd).
    fn test_slot(index: usize, device: TestDevice) -> Arc<Shared<TestDevice>> {
        let regs = Registers::new(MmioTransport::new(device)).unwrap();
        Arc::new(Shared {
            name: format!("test{index}"),
            slot: VirtioSlot::new(index).unwrap(),
            mode: NotifyMode::Inline,
            interrupt: InterruptMode::Edge,
            irq: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            again: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            device_id: DeviceType::Rng.id(),
            vendor_id: 0,
            state: Mutex::new(State {
                regs,
                tap: None,
                counters: SlotCounters::default(),
                fault: None,
                rearm: false,
                lies: None,
                again_queues: Vec::new(),
                again_backend: false,
            }),
        })
    }

    /// A guest's register access through the bus entry; false if a panic
    /// came out of it.
    fn access(bus: &mut SlotBus, offset: u64, write: Option<u32>) -> (bool, u32) {
        let mut b = [0u8; 4];
        let returned = catch_unwind(AssertUnwindSafe(|| match write {
            Some(v) => bus.write(offset, &v.to_le_bytes()),
            None => bus.read(offset, &mut b),
        }))
        .is_ok();
        (returned, u32::from_le_bytes(b))
    }

    /// The driver's bring-up (§3.1.1) with a configuration read and write
    /// between FEATURES_OK and DRIVER_OK, then a notify. Returns whether
    /// every access returned, the configuration read and `Status` at the
    /// end.
    fn bring_up(bus: &mut SlotBus) -> (bool, u32, u32) {
        let mut all = true;
        let mut w = |bus: &mut SlotBus, off, v| all &= access(bus, off, Some(v)).0;
        w(bus, regs::STATUS, 0);
        w(bus, regs::STATUS, 1);
        w(bus, regs::STATUS, 3);
        w(bus, regs::DRIVER_FEATURES_SEL, 1);
        w(bus, regs::DRIVER_FEATURES, 1);
        w(bus, regs::DRIVER_FEATURES_SEL, 0);
        w(bus, regs::DRIVER_FEATURES, 0);
        w(bus, regs::STATUS, 0xb);
        let (ok, config) = access(bus, regs::CONFIG, None);
        let mut w = |bus: &mut SlotBus, off, v| all &= ok && access(bus, off, Some(v)).0;
        w(bus, regs::CONFIG + 4, 0x2121_2121);
        w(bus, regs::QUEUE_SEL, 0);
        w(bus, regs::QUEUE_NUM, 16);
        w(bus, regs::QUEUE_DESC_LOW, 0x1000);
        w(bus, regs::QUEUE_DRIVER_LOW, 0x2000);
        w(bus, regs::QUEUE_DEVICE_LOW, 0x3000);
        w(bus, regs::QUEUE_READY, 1);
        w(bus, regs::STATUS, 0xf);
        w(bus, regs::QUEUE_NOTIFY, 0);
        let (ok, status) = access(bus, regs::STATUS, None);
        (all && ok, config, status)
    }

    /// Finding 9 (issue 16): a device panicking in `activate`, `reset`,
    /// `read_config` or `write_config` (reached from the guest's register
    /// accesses) is a fault of its slot, as a panic in queue service is:
    /// the access completes, the slot is marked faulty with
    /// DEVICE_NEEDS_RESET, the device is not called again, and a device in
    /// another slot works on.
    #[test]
    fn a_device_panic_in_any_register_access_is_a_fault_of_its_slot() {
        for case in [
            PanicIn::Activate,
            PanicIn::Reset,
            PanicIn::ReadConfig,
            PanicIn::WriteConfig,
        ] {
            let (device, calls_after_panic) = TestDevice::new(case);
            let faulty = test_slot(0, device);
            let (healthy_device, _) = TestDevice::new(PanicIn::Nothing);
            let healthy = test_slot(1, healthy_device);
            let mut bus = SlotBus(faulty.clone());
            let (returned, config, status) = bring_up(&mut bus);
            assert!(returned, "{case:?}: a device panic came out of the slot");
            let r = faulty.report();
            let fault = r.fault.clone().unwrap_or_default();
            assert!(
                fault.contains(&format!("deliberate test panic in {case:?}")),
                "{case:?}: {r}"
            );
            let call = match case {
                PanicIn::Activate => "in activate (Status write 0xf)",
                PanicIn::Reset => "in reset (Status write 0)",
                PanicIn::ReadConfig => "in read_config at 0x0",
                _ => "in write_config at 0x4",
            };
            assert!(fault.contains(call), "{case:?}: {r}");
            if case == PanicIn::Activate {
                // DRIVER_OK was set: the driver hears of it (§2.1.2).
                assert_eq!(faulty.irq.read().ok(), Some(1), "{case:?}: {r}");
                assert_eq!(r.interrupt_status, 2, "{case:?}: {r}");
            }
            assert!(
                r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET),
                "{case:?}: {r}"
            );
            assert_ne!(
                status & u32::from(DeviceStatus::DEVICE_NEEDS_RESET.bits()),
                0,
                "{case:?}: Status read {status:#x}"
            );
            if case == PanicIn::ReadConfig {
                assert_eq!(
                    config, 0,
                    "{case:?}: a faulty device's configuration reads 0"
                );
            }
            // Once faulty, the device is not called again.
            let (_, config) = access(&mut bus, regs::CONFIG, None);
            assert_eq!(config, 0, "{case:?}");
            access(&mut bus, regs::STATUS, Some(0));
            assert_eq!(calls_after_panic.load(Ordering::Relaxed), 0, "{case:?}");
            // The device in the other slot works on.
            let mut other = SlotBus(healthy.clone());
            let (returned, config, status) = bring_up(&mut other);
            assert!(returned, "{case:?}");
            assert_eq!(config.to_le_bytes(), *b"conf", "{case:?}");
            assert_eq!(status, 0xf, "{case:?}");
            let r = healthy.report();
            assert_eq!(r.fault, None, "{case:?}: {r}");
            assert_eq!(r.counters.notify_inline, 1, "{case:?}: {r}");
            assert_eq!(
                healthy.irq.read().ok(),
                Some(1),
                "{case:?}: one used-buffer interrupt"
            );
            assert_eq!(healthy.lock().regs.device().device().notified, 1);
        }
    }

    /// Finding 2 (issue 16): a service that stops at the device's work
    /// budget returns at once (here the vCPU's inline notify) and wakes the
    /// worker, which resumes it one budget per round with the slot's lock
    /// released between rounds, until the device has nothing left; no
    /// further notification is needed.
    #[test]
    fn a_service_stopped_at_the_budget_is_resumed_by_the_worker() {
        let (mut device, _) = TestDevice::new(PanicIn::Nothing);
        device.again_left = 5;
        let slot = test_slot(0, device);
        let mut bus = SlotBus(slot.clone());
        let (returned, _, status) = bring_up(&mut bus);
        assert!(returned);
        assert_eq!(status, 0xf);
        assert_eq!(slot.lock().regs.device().device().notified, 1);
        let mut rounds = 0;
        // What the worker does on each wake-up of its `again` eventfd.
        while slot.again.read().is_ok() {
            rounds += 1;
            assert!(rounds < 100, "the worker never ran out of work");
            // Between rounds the slot is free for the monitor's calls.
            assert!(slot.state.try_lock().is_ok());
            slot.resume();
        }
        assert_eq!(rounds, 5);
        let r = slot.report();
        assert_eq!(r.counters.resumed, 5, "{r}");
        assert_eq!(r.counters.notifications(), 1, "one guest notification");
        assert_eq!(slot.lock().regs.device().device().notified, 6);
        assert_eq!(r.fault, None);
    }

    /// A device that panics while its register file is built (asked for
    /// its queue sizes) is refused with an error, not a panic.
    #[test]
    fn a_device_panic_at_attach_is_an_error() {
        if !crate::vm::kvm_or_skip("a_device_panic_at_attach_is_an_error") {
            return;
        }
        let vm = kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap();
        let (device, _) = TestDevice::new(PanicIn::QueueSizes);
        let slot = VirtioSlot::new(0).unwrap();
        let attached = catch_unwind(AssertUnwindSafe(|| {
            attach(&vm, slot, "p".into(), device, vec![], NotifyMode::Inline)
        }));
        let Ok(Err(e)) = attached else {
            panic!("attach did not refuse the device with an error");
        };
        assert!(matches!(e, AttachError::DevicePanicked(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("deliberate test panic in QueueSizes"),
            "{e}"
        );
    }

    #[test]
    fn counters_and_modes_print() {
        let c = SlotCounters {
            notify_inline: 2,
            notify_worker: 3,
            ..Default::default()
        };
        assert_eq!(c.notifications(), 5);
        assert_eq!(NotifyMode::Inline.to_string(), "inline");
        assert_eq!(NotifyMode::default(), NotifyMode::Worker);
        assert!(
            AttachError::NoFreeSlot
                .to_string()
                .contains("every virtio-mmio slot")
        );
    }
}
