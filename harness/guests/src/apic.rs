//! Interrupt delivery: the local APIC (xAPIC, memory-mapped at the address in
//! `IA32_APIC_BASE`, normally 0xfee0_0000), the IOAPICs that route device
//! interrupt lines (GSIs) to vectors, and a table of handlers per vector.
//!
//! IOAPICs are found without ACPI: the first at 0xfec0_0000 (QEMU, our
//! harness, Firecracker), a second at 0xfec1_0000 (QEMU `microvm`'s
//! `ioapic2`, GSIs 24 and up) probed only when a GSI beyond the first is
//! routed. Lines are routed edge-triggered, active-high, to the boot CPU,
//! which is what an irqfd pulse or a virtio-mmio line in these monitors is.

use crate::cpu::rdmsr;
use crate::trap::TrapFrame;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use core::{fmt, ptr};

/// `IA32_APIC_BASE`.
const MSR_APIC_BASE: u32 = 0x1b;
/// `IA32_APIC_BASE` bit: the xAPIC is enabled.
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// Local APIC register offsets.
const LAPIC_ID: usize = 0x20;
const LAPIC_TPR: usize = 0x80;
const LAPIC_EOI: usize = 0xb0;
const LAPIC_SVR: usize = 0xf0;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_LVT_LINT0: usize = 0x350;
/// The mask bit of an LVT entry.
const LVT_MASKED: u32 = 1 << 16;
const LAPIC_TIMER_INITIAL: usize = 0x380;
const LAPIC_TIMER_CURRENT: usize = 0x390;
const LAPIC_TIMER_DIVIDE: usize = 0x3e0;

/// The spurious-interrupt vector: never acknowledged, never dispatched.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// First vector free for devices and timers.
pub const FIRST_VECTOR: u8 = 32;

/// Guest-physical address of the first IOAPIC.
pub const IOAPIC0_BASE: u64 = 0xfec0_0000;
/// Guest-physical address of QEMU `microvm`'s second IOAPIC.
pub const IOAPIC1_BASE: u64 = 0xfec1_0000;

/// A handler for one vector, called with interrupts off; the runtime sends
/// the EOI after it returns.
pub type Handler = fn(vector: u8, frame: &TrapFrame);

/// Handlers by vector (0 = none), stored as `fn` addresses.
static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
/// Base of the enabled local APIC, 0 before [`Lapic::enable`].
static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);

/// Why an interrupt could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The vector is an exception vector or the spurious vector.
    ReservedVector(u8),
    /// No IOAPIC (of those probed) has this GSI.
    NoSuchGsi(u32),
    /// The local APIC is not enabled yet.
    LapicOff,
}

impl fmt::Display for ApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedVector(v) => write!(f, "vector {v} is reserved"),
            Self::NoSuchGsi(g) => write!(f, "no IOAPIC has GSI {g}"),
            Self::LapicOff => f.write_str("the local APIC is not enabled"),
        }
    }
}

/// Installs `handler` for `vector` (32..=254), replacing any earlier one.
pub fn set_handler(vector: u8, handler: Handler) -> Result<(), ApicError> {
    if vector < FIRST_VECTOR || vector == SPURIOUS_VECTOR {
        return Err(ApicError::ReservedVector(vector));
    }
    HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
    Ok(())
}

/// Removes the handler of `vector`; a later interrupt there fails the run.
pub fn clear_handler(vector: u8) {
    HANDLERS[usize::from(vector)].store(0, Ordering::Release);
}

/// Called by the trap code for vectors 32..=255.
pub(crate) fn dispatch(vector: u8, frame: &TrapFrame) {
    if vector == SPURIOUS_VECTOR {
        return;
    }
    let raw = HANDLERS[usize::from(vector)].load(Ordering::Acquire);
    if raw == 0 {
        crate::exit::fail(format_args!(
            "unexpected interrupt on vector {vector} at rip {:#x}",
            frame.rip
        ));
    }
    // SAFETY: non-zero entries are only ever stored by `set_handler`, from a
    // `Handler`, and fn pointers and usize have the same size.
    let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(raw) };
    handler(vector, frame);
    if let Some(lapic) = Lapic::current() {
        lapic.eoi();
    }
}

/// The local APIC of this (the only) CPU.
#[derive(Clone, Copy, Debug)]
pub struct Lapic {
    base: u64,
}

/// Re-initialises the legacy 8259 PIC pair with vectors 0xf0..0xff (away
/// from the exceptions) and masks every line.
fn mask_pic() {
    use crate::cpu::outb;
    // ICW1 (init, ICW4 follows), ICW2 (vector base), ICW3 (cascade on
    // IRQ 2), ICW4 (8086 mode), then OCW1 = all masked; master 0x20/0x21,
    // slave 0xa0/0xa1.
    const SEQUENCE: [(u16, u8); 10] = [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0xf0),
        (0xa1, 0xf8),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xff),
        (0xa1, 0xff),
    ];
    for (port, value) in SEQUENCE {
        // SAFETY: the 8259 ports exist on every PC-compatible machine (and
        // read as absent elsewhere); the sequence is the standard
        // initialisation, run with interrupts off before any line is used.
        unsafe { outb(port, value) };
    }
}

impl Lapic {
    /// Enables the local APIC in software (spurious vector 0xff, task
    /// priority 0) and returns it.
    pub fn enable() -> Self {
        // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
        let msr = unsafe { rdmsr(MSR_APIC_BASE) };
        let base = msr & 0x000f_ffff_ffff_f000;
        if msr & APIC_BASE_ENABLE == 0 || base >= crate::layout::IDENTITY_MAP_END {
            crate::exit::fail(format_args!(
                "local APIC unusable: IA32_APIC_BASE = {msr:#x}"
            ));
        }
        let lapic = Self { base };
        // Device lines reach the IOAPIC *and* the legacy 8259 PIC; KVM
        // resets the BSP's LINT0 to unmasked ExtINT, so an un-initialised
        // PIC would deliver IRQ n as vector n (IRQ 5 as #BR). Mask LINT0
        // and the PIC: every interrupt comes through the IOAPIC.
        lapic.write(LAPIC_LVT_LINT0, LVT_MASKED);
        mask_pic();
        lapic.write(LAPIC_TPR, 0);
        lapic.write(LAPIC_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
        LAPIC_BASE.store(base, Ordering::Release);
        lapic
    }

    /// The enabled local APIC, if [`Lapic::enable`] ran.
    pub fn current() -> Option<Self> {
        match LAPIC_BASE.load(Ordering::Acquire) {
            0 => None,
            base => Some(Self { base }),
        }
    }

    /// This CPU's APIC ID.
    pub fn id(&self) -> u8 {
        (self.read(LAPIC_ID) >> 24) as u8
    }

    /// Signals the end of the interrupt being handled.
    pub fn eoi(&self) {
        self.write(LAPIC_EOI, 0);
    }

    /// Starts the timer: one interrupt on `vector` after `count` bus-clock
    /// ticks (divide by 1), or one every `count` ticks if `periodic`.
    pub fn start_timer(&self, vector: u8, count: u32, periodic: bool) {
        self.write(LAPIC_TIMER_DIVIDE, 0b1011);
        let mode = if periodic { 1 << 17 } else { 0 };
        self.write(LAPIC_LVT_TIMER, mode | u32::from(vector));
        self.write(LAPIC_TIMER_INITIAL, count);
    }

    /// Stops the timer and masks its interrupt.
    pub fn stop_timer(&self) {
        self.write(LAPIC_TIMER_INITIAL, 0);
        self.write(LAPIC_LVT_TIMER, 1 << 16);
    }

    /// Ticks left before the timer fires.
    pub fn timer_current(&self) -> u32 {
        self.read(LAPIC_TIMER_CURRENT)
    }

    fn read(&self, reg: usize) -> u32 {
        // SAFETY: `base` is the enabled xAPIC page inside the identity map
        // (checked in `enable`), `reg` one of its aligned registers.
        unsafe { ptr::read_volatile((self.base as usize + reg) as *const u32) }
    }

    fn write(&self, reg: usize, value: u32) {
        // SAFETY: as in `read`.
        unsafe { ptr::write_volatile((self.base as usize + reg) as *mut u32, value) }
    }
}

/// One IOAPIC: an index register at +0x00 and a data window at +0x10.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    base: u64,
    gsi_base: u32,
    pins: u32,
}

impl IoApic {
    /// Reads the IOAPIC at `base` (identity-mapped MMIO) serving GSIs from
    /// `gsi_base`; `None` if nothing that looks like an IOAPIC answers.
    ///
    /// # Safety
    /// `base` must be an IOAPIC's address, or MMIO whose index/window
    /// registers may be read and written harmlessly.
    pub unsafe fn probe(base: u64, gsi_base: u32) -> Option<Self> {
        if base >= crate::layout::IDENTITY_MAP_END {
            return None;
        }
        let mut ioapic = Self {
            base,
            gsi_base,
            pins: 0,
        };
        let version = ioapic.read(1);
        if version == 0 || version == u32::MAX {
            return None;
        }
        ioapic.pins = ((version >> 16) & 0xff) + 1;
        Some(ioapic)
    }

    /// First GSI this IOAPIC serves.
    pub fn gsi_base(&self) -> u32 {
        self.gsi_base
    }

    /// Number of pins (GSIs) it serves.
    pub fn pins(&self) -> u32 {
        self.pins
    }

    /// Routes pin `pin` to `vector` on the CPU with APIC ID `dest`,
    /// edge-triggered, active-high, unmasked.
    pub fn route(&self, pin: u32, vector: u8, dest: u8) {
        let reg = 0x10 + 2 * pin;
        // Mask while changing, then write the destination and unmask.
        self.write(reg, 1 << 16);
        self.write(reg + 1, u32::from(dest) << 24);
        self.write(reg, u32::from(vector));
    }

    /// Masks pin `pin`.
    pub fn mask(&self, pin: u32) {
        self.write(0x10 + 2 * pin, 1 << 16);
    }

    fn read(&self, reg: u32) -> u32 {
        // SAFETY: `base` is an IOAPIC inside the identity map (a
        // precondition of `probe`); index then window is its protocol.
        unsafe {
            ptr::write_volatile(self.base as usize as *mut u32, reg);
            ptr::read_volatile((self.base as usize + 0x10) as *const u32)
        }
    }

    fn write(&self, reg: u32, value: u32) {
        // SAFETY: as in `read`.
        unsafe {
            ptr::write_volatile(self.base as usize as *mut u32, reg);
            ptr::write_volatile((self.base as usize + 0x10) as *mut u32, value);
        }
    }
}

/// Finds the IOAPIC serving `gsi`: the one at [`IOAPIC0_BASE`], then, for
/// GSIs beyond it, the one at [`IOAPIC1_BASE`].
pub fn ioapic_for(gsi: u32) -> Result<IoApic, ApicError> {
    // SAFETY: 0xfec0_0000 is the IOAPIC in every PC-like monitor.
    let first = unsafe { IoApic::probe(IOAPIC0_BASE, 0) }.ok_or(ApicError::NoSuchGsi(gsi))?;
    if gsi < first.pins() {
        return Ok(first);
    }
    // SAFETY: only reached for a GSI beyond the first IOAPIC, which exists
    // only in monitors with a second IOAPIC there (QEMU microvm).
    let second = unsafe { IoApic::probe(IOAPIC1_BASE, first.pins()) };
    match second {
        Some(io) if gsi - io.gsi_base() < io.pins() => Ok(io),
        _ => Err(ApicError::NoSuchGsi(gsi)),
    }
}

/// Routes device interrupt line `gsi` to `vector` on this CPU and installs
/// `handler` for it. The local APIC must be enabled; interrupts stay off
/// until the caller enables them.
pub fn route_gsi(gsi: u32, vector: u8, handler: Handler) -> Result<(), ApicError> {
    let lapic = Lapic::current().ok_or(ApicError::LapicOff)?;
    set_handler(vector, handler)?;
    let ioapic = ioapic_for(gsi)?;
    ioapic.route(gsi - ioapic.gsi_base(), vector, lapic.id());
    Ok(())
}
