//! Scenario `lifecycle`: initialisation and reset of the first entropy
//! device (device id 4), on version 2 and legacy version 1 transports.
//!
//! Steps, one line each (`lifecycle: <step>: ok …`, or a failure naming
//! the step):
//!
//! 1. `init`: `guest-driver` initialises the device (§3.1.1), reads 64 bytes.
//! 2. `reset-in-flight`: a request is made available and notified, then
//!    the device is reset at once (status 0) and `Status` polled until it
//!    reads 0 (§2.4, §4.2.2.1); afterwards the device must leave the rings
//!    and the buffer alone (§2.4.1); a fresh initialisation reads 64 bytes.
//! 3. `unoffered-feature` (version 2): a feature bit the device did not
//!    offer is accepted and FEATURES_OK written; it must not read back
//!    (§2.2.1, §2.2.2, §3.1.1 step 6). QEMU masks unoffered bits and keeps
//!    FEATURES_OK, so without `lifecycle.strict=1` that is reported, not
//!    failed.
//! 4. `driver-ok-without-features-ok` (`lifecycle.strict=1`, version 2):
//!    ACKNOWLEDGE|DRIVER|DRIVER_OK without FEATURES_OK must not read back
//!    DRIVER_OK (§3.1.1; our register file refuses the write).
//! 5. `queue-outside-ram` (`lifecycle.strict=1`): queue 0's rings at an
//!    address no RAM backs (1 TiB, above the PVH memory map's RAM), then
//!    DRIVER_OK: the device must refuse with DEVICE_NEEDS_RESET (§2.1.2)
//!    and a configuration change interrupt (§4.2.2: InterruptStatus bit 1).
//! 6. `reinit`: a clean initialisation reads 64 bytes: the device still
//!    works.
//!
//! Legacy devices have no FEATURES_OK (§3.1.2): steps 3 and 4 say so and
//! are skipped there.
#![no_std]
#![no_main]

use guest_driver::{Polls, Rng, RngOptions};
use guest_rt::raw::{self, QueuePlacement, RawDevice, RawMemory, RawQueue, Scratch, desc};
use guest_rt::{BootInfo, MemoryKind, cpu, exit, println};
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::mmio::InterruptStatus;
use virtio_core::status::DeviceStatus;

guest_rt::entry!(main);

/// Bytes read by each clean initialisation.
const READ_BYTES: usize = 64;
/// Poll budget of a clean read.
const READ_POLLS: u64 = 50_000_000;
/// Queue size of the raw steps.
const SIZE: u16 = 16;
/// `VIRTQ_DESC_F_WRITE` (§2.7.5).
const WRITE: u16 = 2;

/// Fails naming `step`.
macro_rules! fail {
    ($step:expr, $($arg:tt)*) => {
        exit::fail(format_args!("lifecycle: {}: {}", $step, format_args!($($arg)*)))
    };
}

/// Everything a step needs.
struct Ctx {
    dev: RawDevice,
    mem: RawMemory,
    strict: bool,
    ram_end: u64,
}

impl Ctx {
    /// Whether a strict-only step runs; says so when it is skipped.
    fn strict_step(&self, step: &str) -> bool {
        if !self.strict {
            println!("lifecycle: {step}: skipped (lifecycle.strict=1 only)");
        }
        self.strict
    }
}

fn main(boot: &'static BootInfo) {
    let strict = boot.cmdline_values("lifecycle.strict").any(|v| v == "1");
    let Some(mem) = RawMemory::take() else {
        fail!("setup", "raw memory already taken");
    };
    let dev = match RawDevice::find(boot.cmdline(), DeviceType::Rng) {
        Ok(dev) => dev,
        Err(e) => fail!("setup", "{e}"),
    };
    let ram_end = boot
        .memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Ram)
        .map(|r| r.base.saturating_add(r.size))
        .max()
        .unwrap_or(0);
    println!(
        "lifecycle: rng at {:#x}, virtio-mmio version {}, strict {}, RAM ends at {ram_end:#x}",
        dev.slot().base,
        dev.version() as u32,
        if strict { "on" } else { "off" }
    );
    let ctx = Ctx {
        dev,
        mem,
        strict,
        ram_end,
    };
    clean_read(&ctx, "init");
    reset_in_flight(&ctx);
    unoffered_feature(&ctx);
    driver_ok_without_features_ok(&ctx);
    queue_outside_ram(&ctx);
    clean_read(&ctx, "reinit");
}

/// A clean initialisation by `guest-driver` and a read; dropping the
/// driver resets the device.
fn read_clean(ctx: &Ctx) -> Result<[u8; READ_BYTES], guest_driver::Error> {
    // SAFETY: `ctx.dev` is not used until the driver is dropped below.
    let regs = unsafe { ctx.dev.driver_regs() };
    let mut rng = Rng::new(&ctx.mem.pool, regs, RngOptions::default())?;
    let mut buf = [0u8; READ_BYTES];
    rng.read_exact(&mut buf, &mut Polls::new(READ_POLLS))?;
    Ok(buf)
}

fn clean_read(ctx: &Ctx, step: &str) {
    match read_clean(ctx) {
        Ok(buf) => println!(
            "lifecycle: {step}: ok ({READ_BYTES} bytes, first {:02x}{:02x}{:02x}{:02x})",
            buf[0], buf[1], buf[2], buf[3]
        ),
        Err(e) => fail!(step, "{e}"),
    }
}

/// Step 2 (§2.4, §2.4.1, §4.2.2.1).
fn reset_in_flight(ctx: &Ctx) {
    const STEP: &str = "reset-in-flight";
    let dev = &ctx.dev;
    if let Err(e) = dev.negotiate(0) {
        fail!(STEP, "negotiation: {e}");
    }
    let mut queue = match RawQueue::new(0, SIZE, &ctx.mem.rings) {
        Ok(q) => q,
        Err(e) => fail!(STEP, "{e}"),
    };
    dev.place_queue(0, queue.placement(dev.version()));
    let mut scratch = Scratch::new(&ctx.mem.scratch);
    let status = dev.driver_ok();
    if !status.contains(DeviceStatus::DRIVER_OK) {
        fail!(STEP, "DRIVER_OK refused: status {:#04x}", status.bits());
    }
    let posted = scratch.buffer(READ_BYTES as u64, true).and_then(|buf| {
        queue.set_desc(0, desc(buf, READ_BYTES as u32, WRITE, 0))?;
        queue.post(0)?;
        Ok(buf)
    });
    let buf = match posted {
        Ok(buf) => buf,
        Err(e) => fail!(STEP, "{e}"),
    };
    dev.notify(0);
    // Reset at once: the request is in flight unless the device was
    // quicker than two register accesses.
    let used_before = queue.used_idx();
    let reads = match dev.reset() {
        Ok(n) => n,
        Err(e) => fail!(STEP, "{e}"),
    };
    // §2.4.1: once Status reads 0 the device leaves the queues alone.
    let used_after = queue.used_idx();
    let filled = scratch.changed(buf, READ_BYTES as u64);
    let start = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(start) < raw::OBSERVE_CYCLES {}
    if queue.used_idx() != used_after || scratch.changed(buf, READ_BYTES as u64) != filled {
        fail!(
            STEP,
            "the device used the queue after its reset read back 0 (§2.4.1)"
        );
    }
    if let Err(e) = scratch.check() {
        fail!(STEP, "{e}");
    }
    let bytes = match read_clean(ctx) {
        Ok(b) => b.len(),
        Err(e) => fail!(STEP, "re-initialisation: {e}"),
    };
    println!(
        "lifecycle: {STEP}: ok (request {} at reset, status 0 after {reads} read(s), queue untouched after reset, {bytes} bytes after re-initialisation)",
        if used_before == 0 {
            "in flight"
        } else {
            "already used"
        }
    );
}

/// Step 3 (§2.2.1, §2.2.2, §3.1.1 step 6).
fn unoffered_feature(ctx: &Ctx) {
    const STEP: &str = "unoffered-feature";
    let dev = &ctx.dev;
    if !dev.is_modern() {
        println!("lifecycle: {STEP}: skipped (legacy: no FEATURES_OK, §3.1.2)");
        return;
    }
    let ad = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
    let begun = dev
        .reset()
        .and_then(|_| dev.step_status(DeviceStatus::ACKNOWLEDGE))
        .and_then(|_| dev.step_status(ad));
    if let Err(e) = begun {
        fail!(STEP, "{e}");
    }
    let offered = dev.device_features();
    let Some(bit) = (0..64).find(|b| offered & (1u64 << b) == 0) else {
        fail!(STEP, "the device offers all 64 feature bits");
    };
    let v1 = TransportFeatures::VERSION_1.bits();
    dev.write_driver_features(v1 | (1u64 << bit));
    let read = dev.write_status(ad | DeviceStatus::FEATURES_OK);
    if let Err(e) = dev.reset() {
        fail!(STEP, "{e}");
    }
    if !read.contains(DeviceStatus::FEATURES_OK) {
        println!(
            "lifecycle: {STEP}: ok (bit {bit} not offered; FEATURES_OK refused, status {:#04x})",
            read.bits()
        );
    } else if ctx.strict {
        fail!(
            STEP,
            "FEATURES_OK read back with bit {bit} accepted but not offered (§2.2.2)"
        );
    } else {
        println!(
            "lifecycle: {STEP}: tolerated (bit {bit} not offered yet FEATURES_OK kept, status {:#04x}; lifecycle.strict=1 fails this)",
            read.bits()
        );
    }
}

/// Step 4 (§3.1.1: FEATURES_OK before DRIVER_OK on a version 2 device).
fn driver_ok_without_features_ok(ctx: &Ctx) {
    const STEP: &str = "driver-ok-without-features-ok";
    let dev = &ctx.dev;
    if !ctx.strict_step(STEP) {
        return;
    }
    if !dev.is_modern() {
        println!("lifecycle: {STEP}: skipped (legacy: DRIVER_OK follows DRIVER, §3.1.2)");
        return;
    }
    let ad = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
    let begun = dev
        .reset()
        .and_then(|_| dev.step_status(DeviceStatus::ACKNOWLEDGE))
        .and_then(|_| dev.step_status(ad));
    if let Err(e) = begun {
        fail!(STEP, "{e}");
    }
    dev.write_driver_features(TransportFeatures::VERSION_1.bits());
    let read = dev.write_status(ad | DeviceStatus::DRIVER_OK);
    if let Err(e) = dev.reset() {
        fail!(STEP, "{e}");
    }
    if read.contains(DeviceStatus::DRIVER_OK) {
        fail!(
            STEP,
            "DRIVER_OK read back without FEATURES_OK: status {:#04x}",
            read.bits()
        );
    }
    println!(
        "lifecycle: {STEP}: ok (status write refused, status {:#04x})",
        read.bits()
    );
}

/// Step 5 (§2.1.2 DEVICE_NEEDS_RESET, §4.2.2 configuration change
/// interrupt).
fn queue_outside_ram(ctx: &Ctx) {
    const STEP: &str = "queue-outside-ram";
    let dev = &ctx.dev;
    if !ctx.strict_step(STEP) {
        return;
    }
    if let Err(e) = dev.negotiate(0) {
        fail!(STEP, "negotiation: {e}");
    }
    let max = dev.queue_max(0);
    if max == 0 {
        fail!(STEP, "queue 0 does not exist");
    }
    let size = SIZE.min(u16::try_from(max).unwrap_or(u16::MAX));
    let size = 1u16 << (15 - size.leading_zeros());
    let addr = raw::outside_ram(ctx.ram_end);
    dev.place_queue(0, QueuePlacement::at(addr, size, dev.version()));
    dev.ack_interrupt(dev.interrupt_status());
    dev.driver_ok();
    let start = cpu::rdtsc();
    let mut status = dev.status();
    while !status.contains(DeviceStatus::DEVICE_NEEDS_RESET)
        && cpu::rdtsc().wrapping_sub(start) < raw::OBSERVE_CYCLES
    {
        status = dev.status();
    }
    let interrupt = dev.interrupt_status();
    dev.ack_interrupt(interrupt);
    if let Err(e) = dev.reset() {
        fail!(STEP, "{e}");
    }
    if !status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
        fail!(
            STEP,
            "rings at {addr:#x} (RAM ends at {:#x}) accepted: status {:#04x}, no DEVICE_NEEDS_RESET (§2.1.2)",
            ctx.ram_end,
            status.bits()
        );
    }
    if !interrupt.contains(InterruptStatus::CONFIG_CHANGE) {
        fail!(
            STEP,
            "DEVICE_NEEDS_RESET without a configuration change interrupt (InterruptStatus {:#x})",
            interrupt.bits()
        );
    }
    println!(
        "lifecycle: {STEP}: ok (rings at {addr:#x}: status {:#04x}, configuration change interrupt)",
        status.bits()
    );
}
