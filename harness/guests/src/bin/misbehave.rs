//! Scenario `misbehave` (issue 6, hostile devices): drives the first device
//! of type `misbehave.device=rng|console|blk|net` through `guest-driver`
//! while the harness makes it break one rule (`-device …,misbehave=<mode>`)
//! and reports what the driver said.
//!
//! Three phases, each bounded: initialise the driver; [`ROUNDS`] operations
//! (rng: 64-byte reads; console: 64-byte writes, then in the first pass a
//! read of the host's input; blk: write a sector and read it back; net:
//! one frame out with at most [`TX_SLOTS`] in flight, then every slot
//! back, then with `misbehave.rx=on` in the first pass every frame
//! received: the host loops them back); drop the driver and initialise it
//! again (its first
//! step is a reset, §2.4) and do one more operation. The first error ends
//! the run. Options (see README.md): `misbehave.device=` (required),
//! `misbehave.mode=<mode>` (only echoed; the guest does not know what the
//! device does), `misbehave.rx=on|off` (net: receive the frames back;
//! default off). Last line before the verdict:
//! `misbehave: <device> <mode>: error: <text>`, `… timeout: <text>` or
//! `… completed`; it passes in all three cases and fails only when the
//! driver accepted a wrong result (data read back that was not written, a
//! read longer than asked).
#![no_std]
#![no_main]

use core::fmt::Display;

use guest_driver::blk::{Blk, BlkError, BlkOptions};
use guest_driver::hal::PoolHal;
use guest_driver::net::{Net, NetError, NetOptions};
use guest_driver::{Console, ConsoleOptions, Error, Rng, RngOptions};
use guest_rt::virtio::{self, Budget, DeviceKind, Mode, Options, OrFail};
use guest_rt::{BootInfo, exit, println};

guest_rt::entry!(main);

/// DMA pages: two initialisations of any one driver (a device that does
/// not reset keeps the first one's pages).
const POOL_PAGES: usize = 512;
type Pool = PoolHal<POOL_PAGES>;
/// Operations per run.
const ROUNDS: u32 = 8;
/// Bound on each operation, in milliseconds.
const OP_MS: u64 = 1_000;
/// Transmit slots of the network driver.
const TX_SLOTS: u16 = 2;
/// The sector the block test writes.
const SECTOR: u64 = 8;
/// Idle time before each operation, in milliseconds: interrupts
/// on and halted, so a storming device's interrupts are taken between
/// operations too, not only while the driver waits.
const IDLE_MS: u64 = 5;

type Dev = DeviceKind;

/// Why a run stopped early.
enum Stop {
    /// The driver returned an error or timed out: already reported.
    Reported,
}

/// The scenario's context: what to print in the verdict line.
struct Run {
    dev: Dev,
    mode: &'static str,
    /// `misbehave.rx=on`: the host loops net frames back; receive them.
    rx: bool,
}

impl Run {
    /// Halts with interrupts on for [`IDLE_MS`] (the runtime's handler
    /// acknowledges whatever the device raises meanwhile).
    fn idle(&self) {
        let mut b = Budget::new(Mode::Irq, IDLE_MS);
        while guest_driver::Wait::wait(&mut b) {}
    }

    fn budget(&self) -> Budget {
        Budget::new(Mode::Irq, OP_MS)
    }

    /// Reports `e` (a timeout if `timeout`) in `phase` and stops the run.
    fn stop(&self, phase: &str, e: &dyn Display, timeout: bool) -> Stop {
        let what = if timeout { "timeout" } else { "error" };
        println!(
            "misbehave: {} {}: {what}: {phase}: {e}",
            self.dev.name(),
            self.mode
        );
        Stop::Reported
    }

    fn driver<T>(&self, phase: &str, r: Result<T, Error>) -> Result<T, Stop> {
        r.map_err(|e| self.stop(phase, &e, matches!(e, Error::Timeout { .. })))
    }

    fn blk<T>(&self, phase: &str, r: Result<T, BlkError>) -> Result<T, Stop> {
        r.map_err(|e| {
            let t = matches!(e, BlkError::Driver(Error::Timeout { .. }));
            self.stop(phase, &e, t)
        })
    }

    fn net<T>(&self, phase: &str, r: Result<T, NetError>) -> Result<T, Stop> {
        r.map_err(|e| {
            let t = matches!(e, NetError::Driver(Error::Timeout { .. }));
            self.stop(phase, &e, t)
        })
    }

    /// A wrong result accepted: the one way to fail.
    fn wrong(&self, what: core::fmt::Arguments<'_>) -> ! {
        exit::fail(format_args!(
            "misbehave: {} {}: the driver accepted a wrong result: {what}",
            self.dev.name(),
            self.mode
        ))
    }
}

fn regs(boot: &BootInfo, dma: &Pool, dev: Dev) -> virtio::Device {
    let slots = guest_driver::cmdline::SlotList::<{ virtio::MAX_SLOTS }>::parse(boot.cmdline());
    let usable = slots
        .iter()
        .copied()
        .filter(|s| s.end() <= guest_rt::layout::IDENTITY_MAP_END);
    // SAFETY: the loader's command line says these are virtio-mmio
    // register blocks in the identity map; the driver made from the result
    // is their only user (the previous one was dropped).
    let found = unsafe { guest_driver::transport::find_device(dma, usable, dev.ty()) };
    let Some((slot, regs)) = found else {
        exit::fail(format_args!("misbehave: no {} device", dev.name()));
    };
    virtio::Device { slot, regs }
}

/// One pass (see the module docs), kept out of `main` so that one
/// driver is on the stack at a time.
#[inline(never)]
fn rng(run: &Run, boot: &BootInfo, dma: &Pool, pass: u32) -> Result<(), Stop> {
    let options = RngOptions {
        completion: Mode::Irq.completion(),
        event_idx: true,
        ..RngOptions::default()
    };
    let mut buf = [0u8; 64];
    {
        let d = regs(boot, dma, run.dev);
        let init = if pass == 0 { "init" } else { "re-init" };
        let mut rng = run.driver(init, Rng::new(dma, d.regs, options))?;
        let rounds = if pass == 0 { ROUNDS } else { 1 };
        for _ in 0..rounds {
            run.idle();
            let n = run.driver("read", rng.read(&mut buf, &mut run.budget()))?;
            if n == 0 || n > buf.len() {
                run.wrong(format_args!("a read of {} bytes returned {n}", buf.len()));
            }
        }
    }
    Ok(())
}

/// One pass (see the module docs), kept out of `main` so that one
/// driver is on the stack at a time.
#[inline(never)]
fn console(run: &Run, boot: &BootInfo, dma: &Pool, pass: u32) -> Result<(), Stop> {
    let options = ConsoleOptions {
        completion: Mode::Irq.completion(),
        event_idx: true,
        multiport: false,
    };
    let line = *b"misbehave: a line the console driver writes, 64 bytes of text.\n";
    {
        let d = regs(boot, dma, run.dev);
        let init = if pass == 0 { "init" } else { "re-init" };
        let mut con: Console<&Pool, _, 1> = run.driver(init, Console::new(dma, d.regs, options))?;
        let rounds = if pass == 0 { ROUNDS } else { 1 };
        for _ in 0..rounds {
            run.idle();
            run.driver("write", con.write(&line, &mut run.budget()))?;
        }
        if pass == 0 {
            // The host's input: a chain the device wrote.
            let mut buf = [0u8; 64];
            let n = run.driver("read", con.read(&mut buf, &mut run.budget()))?;
            if n == 0 || n > buf.len() {
                run.wrong(format_args!("a read of {} bytes returned {n}", buf.len()));
            }
        }
    }
    Ok(())
}

/// One pass (see the module docs), kept out of `main` so that one
/// driver is on the stack at a time.
#[inline(never)]
fn blk(run: &Run, boot: &BootInfo, dma: &Pool, pass: u32) -> Result<(), Stop> {
    let options = BlkOptions {
        completion: Mode::Irq.completion(),
        depth: 4,
        ..BlkOptions::default()
    };
    let (mut out, mut back) = ([0u8; 512], [0u8; 512]);
    {
        let d = regs(boot, dma, run.dev);
        let init = if pass == 0 { "init" } else { "re-init" };
        let mut blk = run.blk(init, Blk::new(dma, d.regs, options))?;
        let rounds = if pass == 0 { ROUNDS } else { 1 };
        for round in 0..rounds {
            run.idle();
            let tag = (pass * ROUNDS + round) as u8;
            for (i, b) in out.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ tag;
            }
            run.blk("write", blk.write(SECTOR, &out, &mut run.budget()))?;
            back.fill(0);
            run.blk("read", blk.read(SECTOR, &mut back, &mut run.budget()))?;
            if let Some(i) = (0..back.len()).find(|&i| back[i] != out[i]) {
                run.wrong(format_args!(
                    "sector {SECTOR} byte {i} read back {:#04x}, {:#04x} was written",
                    back[i], out[i]
                ));
            }
        }
    }
    Ok(())
}

/// One pass (see the module docs), kept out of `main` so that one
/// driver is on the stack at a time.
#[inline(never)]
fn net(run: &Run, boot: &BootInfo, dma: &Pool, pass: u32) -> Result<(), Stop> {
    let options = NetOptions {
        completion: Mode::Irq.completion(),
        rx_buffers: 4,
        tx_buffers: TX_SLOTS,
        ..NetOptions::default()
    };
    // A broadcast frame of 64 bytes from a locally administered MAC.
    let mut frame = [0u8; 64];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    {
        let d = regs(boot, dma, run.dev);
        let init = if pass == 0 { "init" } else { "re-init" };
        let mut net = run.net(init, Net::new(dma, d.regs, options))?;
        let rounds = if pass == 0 { ROUNDS } else { 1 };
        for _ in 0..rounds {
            run.idle();
            run.net("wait for a transmit slot", net.wait_tx(&mut run.budget()))?;
            run.net("transmit", net.transmit(&frame))?;
            run.net("flush", net.flush())?;
        }
        // Every frame back (§5.1.6.2: the device uses each one).
        let mut wait = run.budget();
        while net.tx_free() < usize::from(TX_SLOTS) {
            run.net("reclaim", net.reclaim())?;
            if net.tx_free() < usize::from(TX_SLOTS) && !guest_driver::Wait::wait(&mut wait) {
                let e = net.transport().timeout(1);
                return Err(run.stop("transmit completion", &e, true));
            }
        }
        if pass == 0 && run.rx {
            // The frames come back (a loopback): every one received, chains
            // the device wrote.
            let mut got = 0;
            while got < rounds {
                run.net("wait for a frame", net.wait_rx(&mut run.budget()))?;
                while let Some(n) = run.net("receive", net.receive())?.map(|f| f.bytes().len()) {
                    if n > frame.len() {
                        run.wrong(format_args!("a {n}-byte frame for a 64-byte one"));
                    }
                    got += 1;
                }
            }
        }
    }
    Ok(())
}

fn main(boot: &'static BootInfo) {
    let opts = Options::new(boot, "misbehave", &["device", "mode", "rx"])
        .or_fail(format_args!("misbehave"));
    let dev = opts
        .choice("device", &DeviceKind::CHOICES, "rng, console, blk or net")
        .or_fail(format_args!("misbehave"))
        .unwrap_or_else(|| {
            exit::fail(format_args!(
                "misbehave: {}",
                Options::missing("misbehave.device")
            ))
        });
    let mode = opts
        .text("mode")
        .or_fail(format_args!("misbehave"))
        .unwrap_or("none");
    let rx = opts
        .choice("rx", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("misbehave"))
        .unwrap_or(false);
    let run = Run { dev, mode, rx };
    let dma: Pool =
        virtio::dma_pool_of::<POOL_PAGES>(boot).or_fail(format_args!("misbehave: DMA pool"));
    // Only the slot is kept: each pass finds the registers again.
    let slot = regs(boot, &dma, dev).slot;
    println!(
        "misbehave: {} at {:#x} irq {}, device mode {mode}",
        dev.name(),
        slot.base,
        slot.irq
    );
    virtio::route_irq(&slot).or_fail(format_args!("misbehave: irq {}", slot.irq));
    // Pass 0 initialises and runs; pass 1 initialises again (a reset
    // first, §2.4) and runs once more.
    let r = (0..2).try_for_each(|pass| match dev {
        Dev::Rng => rng(&run, boot, &dma, pass),
        Dev::Console => console(&run, boot, &dma, pass),
        Dev::Blk => blk(&run, boot, &dma, pass),
        Dev::Net => net(&run, boot, &dma, pass),
    });
    println!(
        "misbehave: {} interrupts ({} empty)",
        virtio::interrupts(),
        virtio::empty_interrupts()
    );
    match r {
        Ok(()) => println!("misbehave: {} {mode}: completed", dev.name()),
        Err(Stop::Reported) => {}
    }
    exit::pass();
}
