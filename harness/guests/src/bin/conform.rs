//! `conform`: the device-side conformance checks (`bothends-conform`) run
//! from inside a guest against every virtio-mmio device on the command
//! line, whoever emulates it (our monitor, QEMU `microvm`).
//!
//! For each `virtio_mmio.device=` slot it prints
//! `conform: device <base> id <DeviceID> version <Version>`, then one
//! `conform-record: <statement>\t<check>\t<outcome>\t<detail>` line per
//! record (outcome `pass`, `fail`, `warn`, `not-applicable` or
//! `not-observable`; tabs and line breaks in the detail become spaces),
//! and `conform: done <base>`. The host reads the lines; the guest passes
//! whatever the records say (it fails only when it cannot run the checks).
//! `conform.checks=<name>,<name>` runs only the checks so named.
//!
//! Memory: one range of RAM above the image ([`virtio::take_ram`]), the
//! first [`HEAP`] bytes a heap for the checks' `alloc`, the rest their DMA
//! memory (rings and buffers), identity-mapped. No interrupt is routed:
//! the checks read `InterruptStatus` themselves and poll the rings.
#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::{Ordering, fence};

use conform::{Bus, Memory, Outcome, Path, Patience};
use guest_driver::VolatileMmio;
use guest_driver::virtio_core::memory::{GuestAddress, MemoryError};
use guest_driver::virtio_core::mmio::driver::RegisterAccess;
use guest_driver::virtio_core::mmio::regs;
use guest_rt::layout::{IDENTITY_MAP_END, UNCACHED_START};
use guest_rt::virtio::{self, OrFail, clock};
use guest_rt::{BootInfo, println};
use linked_list_allocator::LockedHeap;

guest_rt::entry!(main);

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Bytes of heap.
const HEAP: u64 = 4 << 20;
/// Bytes of DMA memory for the checks (they need at least 256 KiB).
const DMA: u64 = 4 << 20;
/// How long a wait that expects something lasts, and one that expects
/// nothing (as the host-side buses: 2 s and 30 ms).
const EXPECT_MS: u64 = 2000;
const QUIET_MS: u64 = 30;

/// The checks' DMA memory: `[base, base + len)`, identity-mapped RAM.
struct Ram {
    base: u64,
    len: u64,
}

impl Ram {
    /// The pointer for `len` bytes at `addr`, if they lie inside.
    fn at(&self, addr: GuestAddress, len: usize) -> Result<*mut u8, MemoryError> {
        let off = addr.0.checked_sub(self.base);
        match off {
            Some(o) if o.checked_add(len as u64).is_some_and(|e| e <= self.len) => {
                Ok(core::ptr::with_exposed_provenance_mut(addr.0 as usize))
            }
            _ => Err(MemoryError::OutOfBounds {
                addr,
                len: len as u64,
            }),
        }
    }
}

impl Memory for Ram {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        let p = self.at(addr, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: inside the range (`at`), which is RAM the program
            // owns; the device writes it too, hence volatile.
            *b = unsafe { p.add(i).read_volatile() };
        }
        Ok(())
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        let p = self.at(addr, buf.len())?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: as in `read`.
            unsafe { p.add(i).write_volatile(*b) };
        }
        Ok(())
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        // One aligned 16-bit access: a ring index is never seen torn.
        let p = self.at(addr, 2)?.cast::<u16>();
        if !p.is_aligned() {
            return Err(MemoryError::OutOfBounds { addr, len: 2 });
        }
        // SAFETY: inside the range (`at`) and aligned (checked).
        let v = unsafe { p.read_volatile() };
        fence(Ordering::Acquire);
        Ok(u16::from_le(v))
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        let p = self.at(addr, 2)?.cast::<u16>();
        if !p.is_aligned() {
            return Err(MemoryError::OutOfBounds { addr, len: 2 });
        }
        fence(Ordering::Release);
        // SAFETY: inside the range (`at`) and aligned (checked).
        unsafe { p.write_volatile(val.to_le()) };
        // The device must see the index before the notification that
        // follows (a register write, uncached).
        fence(Ordering::SeqCst);
        Ok(())
    }
}

/// One device: its registers and the checks' memory.
struct GuestBus<'a> {
    regs: VolatileMmio,
    ram: &'a Ram,
}

impl Bus for GuestBus<'_> {
    fn regs(&self) -> &dyn RegisterAccess {
        &self.regs
    }
    fn mem(&self) -> &dyn Memory {
        self.ram
    }
    fn dma(&self) -> (GuestAddress, u64) {
        (GuestAddress(self.ram.base), self.ram.len)
    }
    fn wait(&self, done: &mut dyn FnMut() -> bool, patience: Patience) -> bool {
        let ms = match patience {
            Patience::Expect => EXPECT_MS,
            Patience::Quiet => QUIET_MS,
        };
        let end = clock::now_ms() + ms;
        loop {
            if done() {
                return true;
            }
            if clock::now_ms() >= end {
                return false;
            }
            core::hint::spin_loop();
        }
    }
    fn path(&self) -> Path {
        Path::Guest
    }
}

/// The outcome's name and detail, on one line.
fn outcome(o: &Outcome) -> (&'static str, &str) {
    match o {
        Outcome::Pass => ("pass", ""),
        Outcome::Fail(w) => ("fail", w),
        Outcome::Warn(w) => ("warn", w),
        Outcome::NotApplicable(w) => ("not-applicable", w),
        Outcome::NotObservable(w) => ("not-observable", w),
    }
}

fn main(boot: &'static BootInfo) {
    clock::start();
    let ram = virtio::take_ram(boot, HEAP + DMA).or_fail(format_args!("conform: memory"));
    let base = ram.as_ptr().expose_provenance() as u64;
    // SAFETY: `take_ram` handed this range to the program alone; the first
    // HEAP bytes are the heap's, the rest DMA memory, never both.
    unsafe { ALLOCATOR.lock().init(ram.as_ptr(), HEAP as usize) };
    let dma = Ram {
        base: base + HEAP,
        len: DMA,
    };
    // `conform.checks=a,b`: only these checks (by name); all by default.
    let only: alloc::vec::Vec<&str> = boot
        .cmdline_values("conform.checks")
        .flat_map(|v| v.split(','))
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(name) = only
        .iter()
        .find(|n| !conform::device::CHECKS.iter().any(|c| c.name == **n))
    {
        guest_rt::exit::fail(format_args!(
            "conform: conform.checks names no check {name:?}"
        ));
    }
    let checks: alloc::vec::Vec<conform::Check> = conform::device::CHECKS
        .iter()
        .filter(|c| only.is_empty() || only.contains(&c.name))
        .copied()
        .collect();
    let mut devices = 0;
    for slot in guest_driver::cmdline::slots(boot.cmdline()) {
        if slot.base < UNCACHED_START || slot.end() > IDENTITY_MAP_END {
            println!(
                "conform: slot {:#x} not mapped uncached, skipped",
                slot.base
            );
            continue;
        }
        let Some(ptr) = core::ptr::NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(
            slot.base as usize,
        )) else {
            continue;
        };
        // SAFETY: the loader's command line names a register block there,
        // identity-mapped uncached (checked above); one access at a time.
        let regs = unsafe { VolatileMmio::new(ptr, slot.size as usize) };
        let id = regs.read32(regs::DEVICE_ID);
        let version = regs.read32(regs::VERSION);
        println!("conform: device {:#x} id {id} version {version}", slot.base);
        let bus = GuestBus { regs, ram: &dma };
        for r in conform::run(&bus, &checks) {
            let (name, detail) = outcome(&r.outcome);
            let mut line = alloc::string::String::with_capacity(detail.len());
            line.extend(detail.chars().map(|c| {
                if c == '\t' || c == '\n' || c == '\r' {
                    ' '
                } else {
                    c
                }
            }));
            println!(
                "conform-record: {}\t{}\t{name}\t{line}",
                r.statement, r.check
            );
        }
        // Leave the device reset, as a driver that is done would.
        bus.regs.write32(regs::STATUS, 0);
        println!("conform: done {:#x}", slot.base);
        devices += 1;
    }
    println!("conform: {devices} device(s) checked");
}
