//! Scenario `timer`: proves that interrupts arrive. It enables the local
//! APIC, takes a few periodic LAPIC-timer interrupts through the IDT with
//! `sti; hlt` (each acknowledged by EOI), checks the first IOAPIC answers and
//! accepts a route, and passes. A timer that never fires leaves the guest in
//! `hlt`: the monitor's timeout reports it.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use guest_rt::apic::{self, Lapic};
use guest_rt::trap::TrapFrame;
use guest_rt::{BootInfo, cpu, exit, println};

guest_rt::entry!(main);

/// Vector of the LAPIC timer.
const TIMER_VECTOR: u8 = 0x30;
/// Vector a spare IOAPIC pin is routed to (never raised).
const SPARE_VECTOR: u8 = 0x31;
/// Timer interrupts to wait for.
const TICKS: u32 = 3;
/// Timer period in bus-clock ticks (about 1 ms at KVM's 1 GHz APIC clock).
const PERIOD: u32 = 1_000_000;
/// Wake-ups from `hlt` allowed per expected tick before giving up.
const MAX_WAKEUPS: u32 = 1_000;

static TICKED: AtomicU32 = AtomicU32::new(0);

fn on_tick(_vector: u8, _frame: &TrapFrame) {
    TICKED.fetch_add(1, Ordering::Relaxed);
}

fn on_spare(vector: u8, _frame: &TrapFrame) {
    exit::fail(format_args!("spare vector {vector} fired"));
}

fn main(_boot: &'static BootInfo) {
    let lapic = Lapic::enable();
    println!("guest timer: local APIC id {}", lapic.id());

    let io = match apic::ioapic_for(0) {
        Ok(io) => io,
        Err(e) => exit::fail(format_args!("no IOAPIC: {e}")),
    };
    println!(
        "ioapic: GSIs {}..{}",
        io.gsi_base(),
        io.gsi_base() + io.pins()
    );
    // Route the last pin of the first IOAPIC (no device of these monitors
    // uses it), then mask it again: the redirection table takes writes.
    let pin = io.pins() - 1;
    if let Err(e) = apic::route_gsi(io.gsi_base() + pin, SPARE_VECTOR, on_spare) {
        exit::fail(format_args!("routing GSI {pin}: {e}"));
    }
    io.mask(pin);

    if let Err(e) = apic::set_handler(TIMER_VECTOR, on_tick) {
        exit::fail(format_args!("{e}"));
    }
    lapic.start_timer(TIMER_VECTOR, PERIOD, true);
    let mut wakeups = 0;
    while TICKED.load(Ordering::Relaxed) < TICKS {
        // SAFETY: the only unmasked sources are the timer (handled above)
        // and the spurious vector (ignored); main holds no state they use.
        unsafe { cpu::wait_for_interrupt() };
        cpu::disable_interrupts();
        wakeups += 1;
        if wakeups > TICKS * MAX_WAKEUPS {
            exit::fail(format_args!(
                "only {} of {TICKS} timer interrupts after {wakeups} wake-ups",
                TICKED.load(Ordering::Relaxed)
            ));
        }
    }
    lapic.stop_timer();
    println!(
        "timer: {} interrupts on vector {TIMER_VECTOR:#x}, {wakeups} wake-ups",
        TICKED.load(Ordering::Relaxed)
    );
}
