//! What a scenario program needs around `guest-driver` (the guest half of
//! the scenario contract in `README.md`): a DMA [`Dma`] pool in RAM from the
//! PVH memory map, the first command-line slot of a device type
//! ([`find_device`]), its interrupt routed through the IOAPIC
//! ([`route_irq`], acknowledging `InterruptStatus` per §4.2.3.4), a
//! millisecond [`clock`] on the LAPIC timer, bounded waits ([`Budget`]:
//! spin or `sti; hlt`), `key=value` options ([`Options`]) and a scratch
//! buffer.
//!
//! It does not drive devices itself (that is `guest-driver`), and knows one
//! CPU only. Failures are typed errors; [`OrFail`] turns them into the
//! runtime's fail verdict with a message.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use guest_driver::cmdline::{MmioSlot, SlotList};
use guest_driver::hal::{PAGE_SIZE, PoolError, PoolHal};
use guest_driver::transport::{self, Completion};
use guest_driver::virtio_core::features::DeviceType;
use guest_driver::{VolatileMmio, Wait};

use crate::apic::{self, ApicError, Lapic};
use crate::boot::{BootInfo, MemoryKind};
use crate::layout::{IMAGE_LIMIT, UNCACHED_START};
use crate::trap::TrapFrame;
use crate::{cpu, exit};

/// Pages of the DMA pool ([`dma_pool`]): enough for an entropy device
/// (`guest_driver::rng::DMA_PAGES`) and a two-port console
/// (`guest_driver::console::dma_pages(2)`) at once.
pub const DMA_PAGES: usize = 64;

/// The DMA `Hal` of the scenarios: a page pool over identity-mapped RAM.
pub type Dma = PoolHal<DMA_PAGES>;

/// Most command-line slots looked at.
pub const MAX_SLOTS: usize = 16;

/// Vector of the clock's LAPIC timer.
pub const TICK_VECTOR: u8 = 0x20;

/// First vector of routed device interrupts: slot `i` routed gets
/// `DEVICE_VECTOR + i`.
pub const DEVICE_VECTOR: u8 = 0x40;

/// Most device interrupts routed at once.
pub const MAX_ROUTED: usize = 8;

/// Period of the LAPIC timer in bus-clock ticks: 1 ms at the 1 GHz APIC
/// clock KVM's in-kernel LAPIC uses (QEMU with `-accel kvm` and our
/// harness); it wakes `hlt` in [`Mode::Irq`] waits.
pub const TICK_PERIOD: u32 = 1_000_000;

/// Looks allowed per millisecond of a [`Budget`] besides the clock (a
/// second bound, in case the TSC misbehaves; each look reads the TSC, which
/// exits on some hosts, so looks are slow).
pub const LOOKS_PER_MS: u64 = 10_000;

/// Bytes of the [`scratch`] buffer.
pub const SCRATCH_LEN: usize = 64 * 1024;

/// Why a scenario could not set up its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// [`dma_pool`] was called twice.
    PoolTaken,
    /// No RAM in the memory map for the pool above the image (or the
    /// start info has no memory map, version 0).
    NoRamForDma {
        /// Bytes wanted.
        bytes: u64,
    },
    /// `PoolHal` refused the region.
    Pool(PoolError),
    /// No command-line slot holds a device of this type.
    NoDevice {
        /// The type looked for.
        ty: DeviceType,
        /// Slots on the command line (usable ones).
        slots: usize,
    },
    /// Interrupt routing failed.
    Apic(ApicError),
    /// More than [`MAX_ROUTED`] slots routed.
    TooManyRouted,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PoolTaken => f.write_str("the DMA pool was already taken"),
            Self::NoRamForDma { bytes } => write!(
                f,
                "no RAM for a {bytes}-byte DMA pool above the image in the PVH memory map"
            ),
            Self::Pool(e) => write!(f, "DMA pool refused: {e:?}"),
            Self::NoDevice { ty, slots } => write!(
                f,
                "no {ty:?} device (DeviceID {}) in the {slots} virtio_mmio.device= slot(s) of the command line",
                ty.id()
            ),
            Self::Apic(e) => write!(f, "interrupt routing: {e}"),
            Self::TooManyRouted => write!(f, "more than {MAX_ROUTED} device interrupts routed"),
        }
    }
}

impl From<ApicError> for SetupError {
    fn from(e: ApicError) -> Self {
        Self::Apic(e)
    }
}

/// `.or_fail(what)`: the value, or the fail verdict `"<what>: <error>"`.
pub trait OrFail<T> {
    /// Unwraps, or ends the run with a failure naming `what` and the error.
    fn or_fail(self, what: fmt::Arguments<'_>) -> T;
}

impl<T, E: fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: fmt::Arguments<'_>) -> T {
        match self {
            Ok(v) => v,
            Err(e) => exit::fail(format_args!("{what}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------
// DMA memory

static POOL_TAKEN: AtomicBool = AtomicBool::new(false);

/// The DMA pool: [`DMA_PAGES`] pages of RAM from the PVH memory map (see
/// [`dma_pool_of`]). Call once.
pub fn dma_pool(boot: &BootInfo) -> Result<Dma, SetupError> {
    dma_pool_of::<DMA_PAGES>(boot)
}

/// A DMA pool of `PAGES` pages (for a scenario that needs more than
/// [`DMA_PAGES`]): the first page-aligned run of RAM in the PVH memory map
/// above the image (at or above [`IMAGE_LIMIT`]) and below the uncached
/// MMIO GiB. The runtime copied the start info at boot, so nothing else
/// uses that RAM. One pool per program: a second call fails.
pub fn dma_pool_of<const PAGES: usize>(boot: &BootInfo) -> Result<PoolHal<PAGES>, SetupError> {
    let bytes = (PAGES * PAGE_SIZE) as u64;
    let ptr = take_ram(boot, bytes)?;
    // SAFETY: `take_ram`'s range is RAM by the memory map, identity-mapped
    // write-back (below UNCACHED_START), outside the image, and handed out
    // once; the boot info was copied out of it at boot.
    unsafe { PoolHal::identity(ptr, PAGES * PAGE_SIZE) }.map_err(SetupError::Pool)
}

/// `bytes` of RAM for the program's own use (a DMA pool, a heap): the
/// first page-aligned run in the PVH memory map above the image (at or
/// above [`IMAGE_LIMIT`]) and below the uncached MMIO GiB, identity-mapped
/// write-back. One such range per program (it is what [`dma_pool`] takes):
/// a second call fails.
pub fn take_ram(boot: &BootInfo, bytes: u64) -> Result<NonNull<u8>, SetupError> {
    let base = boot
        .memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Ram)
        .find_map(|r| {
            let start = r
                .base
                .max(IMAGE_LIMIT)
                .checked_next_multiple_of(PAGE_SIZE as u64)?;
            let end = r.base.checked_add(r.size)?.min(UNCACHED_START);
            (start.checked_add(bytes)? <= end).then_some(start)
        })
        .ok_or(SetupError::NoRamForDma { bytes })?;
    if POOL_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(SetupError::PoolTaken);
    }
    guest_driver::hal::identity::phys_to_virt(base).ok_or(SetupError::NoRamForDma { bytes })
}

/// A buffer of [`SCRATCH_LEN`] bytes in `.bss` for the program's data
/// (too big for the stack); `None` after the first call.
pub fn scratch() -> Option<&'static mut [u8; SCRATCH_LEN]> {
    struct Scratch(core::cell::UnsafeCell<[u8; SCRATCH_LEN]>);
    // SAFETY: handed out at most once (TAKEN), so never aliased.
    unsafe impl Sync for Scratch {}
    static BUF: Scratch = Scratch(core::cell::UnsafeCell::new([0; SCRATCH_LEN]));
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the first and only caller gets the only reference.
    Some(unsafe { &mut *BUF.0.get() })
}

// ---------------------------------------------------------------------------
// Devices

/// A device found on the command line: its slot and register access.
#[derive(Debug)]
pub struct Device {
    /// The `virtio_mmio.device=` entry.
    pub slot: MmioSlot,
    /// Volatile access to its registers.
    pub regs: VolatileMmio,
}

/// The first `virtio_mmio.device=<size>@<base>:<irq>` slot of the command
/// line whose DeviceID is `ty` (§4.2.3.1.1; reads MagicValue, Version,
/// DeviceID of each slot). Slots above the identity map are skipped.
pub fn find_device(boot: &BootInfo, dma: &Dma, ty: DeviceType) -> Result<Device, SetupError> {
    let slots = SlotList::<MAX_SLOTS>::parse(boot.cmdline());
    let usable = slots
        .iter()
        .copied()
        .filter(|s| s.end() <= crate::layout::IDENTITY_MAP_END);
    // SAFETY: the loader's command line says these are virtio-mmio
    // register blocks; they lie in the identity map (the MMIO GiB is
    // uncached), and nothing else in the program uses them yet.
    let found = unsafe { transport::find_device(dma, usable, ty) };
    let (slot, regs) = found.ok_or(SetupError::NoDevice {
        ty,
        slots: slots.as_slice().len(),
    })?;
    Ok(Device { slot, regs })
}

// ---------------------------------------------------------------------------
// Interrupts

/// Bases of routed slots by index (0 = free), and their sizes.
static ROUTED_BASE: [AtomicU64; MAX_ROUTED] = [const { AtomicU64::new(0) }; MAX_ROUTED];
static ROUTED_SIZE: [AtomicU64; MAX_ROUTED] = [const { AtomicU64::new(0) }; MAX_ROUTED];
/// Device interrupts that showed a cause in `InterruptStatus`.
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// Device interrupts with nothing in `InterruptStatus`.
static EMPTY_INTERRUPTS: AtomicU32 = AtomicU32::new(0);
/// Device interrupts whose `InterruptStatus` showed a configuration change.
static CONFIG_INTERRUPTS: AtomicU32 = AtomicU32::new(0);

/// Register access to routed slot `i`, if routed.
fn routed_regs(i: usize) -> Option<VolatileMmio> {
    let base = ROUTED_BASE.get(i)?.load(Ordering::Acquire);
    let size = ROUTED_SIZE.get(i)?.load(Ordering::Acquire);
    let ptr = guest_driver::hal::identity::phys_to_virt(base)?;
    // SAFETY: `route_irq` stored a slot found by `find_device` (identity
    // mapped, uncached); the handler touches only InterruptStatus and
    // InterruptACK, which the driver allows alongside its own access.
    Some(unsafe { VolatileMmio::new(ptr, usize::try_from(size).ok()?) })
}

fn on_device_interrupt(vector: u8, _frame: &TrapFrame) {
    let i = usize::from(vector.wrapping_sub(DEVICE_VECTOR));
    let Some(regs) = routed_regs(i) else {
        exit::fail(format_args!("device interrupt on unrouted vector {vector}"));
    };
    // §4.2.3.4: read InterruptStatus, acknowledge what it shows.
    let status = transport::acknowledge_interrupt(&regs);
    if status.contains(guest_driver::virtio_core::mmio::InterruptStatus::CONFIG_CHANGE) {
        CONFIG_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    }
    if status.is_empty() {
        EMPTY_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    } else {
        INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Routes `slot`'s interrupt line (IOAPIC GSI = the slot's irq, on the
/// second IOAPIC for GSIs beyond the first) to a vector of its own whose
/// handler acknowledges `InterruptStatus` (§4.2.3.4) and counts the
/// interrupt. A stale cause is acknowledged first, so the edge-triggered
/// route sees the next one. Enables the LAPIC; interrupts stay off until a
/// [`Budget`] waits.
pub fn route_irq(slot: &MmioSlot) -> Result<u8, SetupError> {
    if Lapic::current().is_none() {
        Lapic::enable();
    }
    let i = ROUTED_BASE
        .iter()
        .position(|b| b.load(Ordering::Acquire) == slot.base)
        .or_else(|| {
            ROUTED_BASE
                .iter()
                .position(|b| b.load(Ordering::Acquire) == 0)
        })
        .ok_or(SetupError::TooManyRouted)?;
    ROUTED_SIZE[i].store(slot.size, Ordering::Release);
    ROUTED_BASE[i].store(slot.base, Ordering::Release);
    if let Some(regs) = routed_regs(i) {
        transport::acknowledge_interrupt(&regs);
    }
    // i < MAX_ROUTED (8): the vector stays below 0x48.
    let vector = DEVICE_VECTOR + i as u8;
    apic::route_gsi(slot.irq, vector, on_device_interrupt)?;
    Ok(vector)
}

/// Device interrupts taken so far that showed a cause.
pub fn interrupts() -> u32 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// Device interrupts taken so far whose `InterruptStatus` showed a
/// configuration change (§4.2.3.4; e.g. a network link change, §5.1.4.2).
pub fn config_interrupts() -> u32 {
    CONFIG_INTERRUPTS.load(Ordering::Relaxed)
}

/// Device interrupts taken so far with an empty `InterruptStatus`.
pub fn empty_interrupts() -> u32 {
    EMPTY_INTERRUPTS.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Clock and waits

/// A millisecond clock: the TSC, calibrated at [`start`](clock::start)
/// against the LAPIC timer, which then keeps ticking every millisecond so
/// that `hlt` always wakes up.
///
/// Why not count the ticks: on hosts that emulate the guest (kvm_pvm) an
/// interrupt is only taken at the emulator's boundaries, so a polling loop
/// with a short `sti` window would rarely see one and its deadline would
/// stretch from milliseconds to seconds.
pub mod clock {
    use super::*;

    /// LAPIC timer ticks of the calibration (2 ms at 1 GHz).
    const CALIBRATION_TICKS: u32 = 2_000_000;
    /// LAPIC reads allowed for the calibration before giving up (each may
    /// exit, ~10 µs: ~200 are needed, this bounds a timer that never
    /// counts to well under a second).
    const CALIBRATION_READS: u32 = 20_000;
    /// LAPIC ticks that must have elapsed for a calibration to count.
    const MIN_CALIBRATION_TICKS: u64 = 100_000;
    /// TSC ticks per millisecond assumed if the calibration fails.
    const FALLBACK_TSC_PER_MS: u64 = 1_000_000;

    static RUNNING: AtomicBool = AtomicBool::new(false);
    static TSC_START: AtomicU64 = AtomicU64::new(0);
    static TSC_PER_MS: AtomicU64 = AtomicU64::new(FALLBACK_TSC_PER_MS);
    static TICKS: AtomicU64 = AtomicU64::new(0);

    fn on_tick(_vector: u8, _frame: &TrapFrame) {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts the clock (once; later calls do nothing): calibrates the TSC
    /// over [`CALIBRATION_TICKS`] of the LAPIC timer (interrupts off),
    /// then runs the timer periodically at [`TICK_PERIOD`].
    pub fn start() {
        if RUNNING.swap(true, Ordering::AcqRel) {
            return;
        }
        let lapic = Lapic::current().unwrap_or_else(Lapic::enable);
        if let Err(e) = apic::set_handler(TICK_VECTOR, on_tick) {
            exit::fail(format_args!("clock: {e}"));
        }
        // One-shot: its interrupt (if any) stays pending until a wait. The
        // TSC is read *before* the timer starts: if the vCPU is descheduled
        // in between, the calibration overstates the TSC rate and the
        // clock runs slow (waits get longer), never fast (a wait cut short
        // would be a false timeout).
        let t0 = cpu::rdtsc();
        lapic.start_timer(TICK_VECTOR, CALIBRATION_TICKS, false);
        let mut left = lapic.timer_current();
        let mut reads = 0;
        while left != 0 && reads < CALIBRATION_READS {
            left = lapic.timer_current();
            reads += 1;
        }
        let t1 = cpu::rdtsc();
        // Whatever part of the count elapsed (all of it, unless the reads
        // ran out first); too little to measure keeps the fallback.
        let elapsed = u64::from(CALIBRATION_TICKS.saturating_sub(left));
        if elapsed >= MIN_CALIBRATION_TICKS {
            let per_ms = t1.saturating_sub(t0).saturating_mul(1_000_000) / elapsed;
            TSC_PER_MS.store(per_ms.max(1), Ordering::Relaxed);
        }
        TSC_START.store(t1, Ordering::Relaxed);
        lapic.start_timer(TICK_VECTOR, TICK_PERIOD, true);
    }

    /// Milliseconds since [`start`].
    pub fn now_ms() -> u64 {
        let per_ms = TSC_PER_MS.load(Ordering::Relaxed).max(1);
        cpu::rdtsc().saturating_sub(TSC_START.load(Ordering::Relaxed)) / per_ms
    }

    /// TSC ticks per millisecond as calibrated.
    pub fn tsc_per_ms() -> u64 {
        TSC_PER_MS.load(Ordering::Relaxed)
    }

    /// LAPIC timer interrupts taken so far.
    pub fn ticks() -> u64 {
        TICKS.load(Ordering::Relaxed)
    }
}

/// How a scenario learns of completions (`<dev>.mode=poll|irq`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Poll the used rings; the device's line is not routed.
    Poll,
    /// Wait with `sti; hlt` for the slot's interrupt (the default).
    #[default]
    Irq,
}

impl Mode {
    /// The driver's completion mode.
    pub fn completion(self) -> Completion {
        match self {
            Mode::Poll => Completion::Polling,
            Mode::Irq => Completion::Interrupt,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Poll => "poll",
            Mode::Irq => "irq",
        })
    }
}

/// A bounded wait for `guest-driver`: succeeds until `ms` milliseconds
/// of the [`clock`] passed (or `ms * LOOKS_PER_MS` looks, whichever comes
/// first). Each look opens a window for interrupts: in [`Mode::Poll`] a
/// spin-loop hint with interrupts on (only the timer can fire), in
/// [`Mode::Irq`] `sti; hlt` until the device or the timer interrupts.
#[derive(Debug)]
pub struct Budget {
    mode: Mode,
    end_ms: u64,
    looks: u64,
}

impl Budget {
    /// A budget of `ms` milliseconds from now; starts the clock.
    pub fn new(mode: Mode, ms: u64) -> Self {
        clock::start();
        Budget {
            mode,
            end_ms: clock::now_ms().saturating_add(ms),
            looks: ms.saturating_mul(LOOKS_PER_MS).max(1),
        }
    }
}

impl Wait for Budget {
    fn wait(&mut self) -> bool {
        if clock::now_ms() >= self.end_ms || self.looks == 0 {
            return false;
        }
        self.looks -= 1;
        match self.mode {
            Mode::Poll => {
                // SAFETY: the sources that can fire are the clock and
                // routed device lines, each with a handler; main holds no
                // state they touch.
                unsafe { cpu::enable_interrupts() };
                core::hint::spin_loop();
            }
            // SAFETY: as above.
            Mode::Irq => unsafe { cpu::wait_for_interrupt() },
        }
        cpu::disable_interrupts();
        true
    }
}

// ---------------------------------------------------------------------------
// Options

/// Why the command-line options of a scenario were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// A `<prefix>.<key>` word whose key the scenario does not know.
    Unknown {
        /// The whole word.
        word: &'static str,
    },
    /// A value that does not parse.
    Malformed {
        /// `<prefix>.<key>`.
        key: &'static str,
        /// The value given.
        value: &'static str,
        /// What was expected.
        want: &'static str,
    },
    /// A required option is missing.
    Missing {
        /// `<prefix>.<key>`.
        key: &'static str,
    },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { word } => write!(f, "unknown option \"{word}\""),
            Self::Malformed { key, value, want } => {
                write!(f, "bad value \"{value}\" for {key} (want {want})")
            }
            Self::Missing { key } => write!(f, "missing option {key}"),
        }
    }
}

/// The `<prefix>.<key>=<value>` words of the command line (the last one
/// wins when a key repeats).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    prefix: &'static str,
    cmdline: &'static str,
}

impl Options {
    /// The options of `prefix` (e.g. `"rng"`), refusing any
    /// `<prefix>.<key>` word whose key is not in `known`.
    pub fn new(boot: &BootInfo, prefix: &'static str, known: &[&str]) -> Result<Self, OptionError> {
        let opts = Options {
            prefix,
            cmdline: boot.cmdline(),
        };
        for word in opts.cmdline.split_ascii_whitespace() {
            let Some(rest) = opts.strip(word) else {
                continue;
            };
            let key = rest.split_once('=').map_or(rest, |(k, _)| k);
            if !known.contains(&key) {
                return Err(OptionError::Unknown { word });
            }
        }
        Ok(opts)
    }

    /// `word` without `<prefix>.`, if it starts so.
    fn strip(&self, word: &'static str) -> Option<&'static str> {
        word.strip_prefix(self.prefix)?.strip_prefix('.')
    }

    /// The word `<prefix>.<key>…` (for messages) and its value, `""` for a
    /// word without `=`.
    fn find(&self, key: &str) -> Option<(&'static str, &'static str)> {
        self.cmdline
            .split_ascii_whitespace()
            .filter_map(|word| {
                let rest = self.strip(word)?;
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                let name = word.get(..self.prefix.len() + 1 + k.len())?;
                (k == key).then_some((name, v))
            })
            .next_back()
    }

    /// The raw value of `<prefix>.<key>`, if given.
    pub fn raw(&self, key: &str) -> Option<&'static str> {
        self.find(key).map(|(_, v)| v)
    }

    /// A non-empty value, as given.
    pub fn text(&self, key: &str) -> Result<Option<&'static str>, OptionError> {
        match self.find(key) {
            None => Ok(None),
            Some((name, "")) => Err(OptionError::Malformed {
                key: name,
                value: "",
                want: "a non-empty value",
            }),
            Some((_, v)) => Ok(Some(v)),
        }
    }

    /// A decimal `u64`.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, OptionError> {
        match self.find(key) {
            None => Ok(None),
            Some((name, v)) => {
                let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                match v.parse::<u64>() {
                    Ok(n) if ok => Ok(Some(n)),
                    _ => Err(OptionError::Malformed {
                        key: name,
                        value: v,
                        want: "a decimal u64",
                    }),
                }
            }
        }
    }

    /// One of `choices` by name; `want` describes them for the message.
    pub fn choice<T: Copy>(
        &self,
        key: &str,
        choices: &[(&str, T)],
        want: &'static str,
    ) -> Result<Option<T>, OptionError> {
        match self.find(key) {
            None => Ok(None),
            Some((name, v)) => choices
                .iter()
                .find(|(n, _)| *n == v)
                .map(|(_, t)| Some(*t))
                .ok_or(OptionError::Malformed {
                    key: name,
                    value: v,
                    want,
                }),
        }
    }

    /// `<prefix>.mode=poll|irq`, default [`Mode::Irq`].
    pub fn mode(&self) -> Result<Mode, OptionError> {
        Ok(self
            .choice(
                "mode",
                &[("poll", Mode::Poll), ("irq", Mode::Irq)],
                "poll or irq",
            )?
            .unwrap_or_default())
    }

    /// The error for a required option that is missing; `key` must be
    /// the full `<prefix>.<key>` name.
    pub fn missing(key: &'static str) -> OptionError {
        OptionError::Missing { key }
    }
}

/// The four device kinds the scenario guests drive (rng, console, blk,
/// net), with the names their `key=value` options and output lines use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Entropy device (§5.4).
    Rng,
    /// Console (§5.3).
    Console,
    /// Block device (§5.2).
    Blk,
    /// Network device (§5.1).
    Net,
}

impl DeviceKind {
    /// Every kind, in the order guests take them.
    pub const ALL: [DeviceKind; 4] = [
        DeviceKind::Rng,
        DeviceKind::Console,
        DeviceKind::Blk,
        DeviceKind::Net,
    ];

    /// Its name in options and output: `rng`, `console`, `blk`, `net`.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Rng => "rng",
            DeviceKind::Console => "console",
            DeviceKind::Blk => "blk",
            DeviceKind::Net => "net",
        }
    }

    /// Its virtio device type (§5).
    pub const fn ty(self) -> DeviceType {
        match self {
            DeviceKind::Rng => DeviceType::Rng,
            DeviceKind::Console => DeviceType::Console,
            DeviceKind::Blk => DeviceType::Blk,
            DeviceKind::Net => DeviceType::Net,
        }
    }

    /// `(name, kind)` pairs, for an option that picks one.
    pub const CHOICES: [(&'static str, DeviceKind); 4] = [
        ("rng", DeviceKind::Rng),
        ("console", DeviceKind::Console),
        ("blk", DeviceKind::Blk),
        ("net", DeviceKind::Net),
    ];
}
