//! Scenario `console`: drives the console (§5.3) of the first
//! `virtio_mmio.device=` slot with DeviceID 3 through `guest-driver`.
//!
//! Options (see README.md): `console.test=write|echo|talk|multiport`
//! (required), `console.mode=poll|irq` (default irq), `console.bytes=N`
//! (default 65536 for write, 4096 otherwise), `console.name1=X`
//! (multiport: port 1's name), `console.multiport=on|off` (write and
//! echo: negotiate MULTIPORT and use port 0 once the device added and
//! opened it, as a device that needs MULTIPORT wants; default off),
//! `console.input=N` (talk: bytes echoed after writing; default
//! `console.bytes`). The data written is the pattern stream P:
//! byte i is `\n` when i % 64 == 63, else ALPHA[(i / 64 + i % 64) % 62].
//! Last line before the verdict:
//! `console: <test>: <bytes> bytes, <interrupts> interrupts`.
#![no_std]
#![no_main]

use guest_driver::virtio_core::features::DeviceType;
use guest_driver::{Console, ConsoleOptions};
use guest_rt::virtio::{self, Budget, Dma, Mode, Options, OrFail};
use guest_rt::{BootInfo, exit, println};

guest_rt::entry!(main);

/// The pattern's alphabet, twice (a line's 63 letters are one slice).
const ALPHA2: &[u8; 124] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\
abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Write chunk sizes, cycled (capped by what remains).
const CHUNKS: [usize; 10] = [1, 5, 64, 100, 511, 512, 513, 2000, 4096, 8192];
/// Bound on each write, read or wait for ports, in milliseconds.
const OP_MS: u64 = 10_000;

/// Fills `dst` with the pattern stream P from byte `start` on: line `r`
/// (64 bytes) is 63 letters from ALPHA[r % 62] on, wrapping, then `\n`.
/// Copied in runs, not computed per byte (the guests run emulated on some
/// hosts: fewer instructions pay).
fn pattern(start: u64, dst: &mut [u8]) {
    let mut k = 0;
    while k < dst.len() {
        let i = start + k as u64;
        let (row, col) = (i / 64, (i % 64) as usize);
        if col == 63 {
            dst[k] = b'\n';
            k += 1;
            continue;
        }
        let run = (63 - col).min(dst.len() - k);
        let from = ((row % 62) as usize + col) % 62;
        dst[k..k + run].copy_from_slice(&ALPHA2[from..from + run]);
        k += run;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Test {
    Write,
    Echo,
    /// Write, then echo: for a device that takes input only once the
    /// driver wrote (rust-vmm's vhost-device-console).
    Talk,
    Multiport,
}

impl Test {
    fn name(self) -> &'static str {
        match self {
            Test::Write => "write",
            Test::Echo => "echo",
            Test::Talk => "talk",
            Test::Multiport => "multiport",
        }
    }
}

fn main(boot: &'static BootInfo) {
    let opts = Options::new(
        boot,
        "console",
        &["mode", "test", "bytes", "name1", "multiport", "input"],
    )
    .or_fail(format_args!("console"));
    let mode = opts.mode().or_fail(format_args!("console"));
    let test = opts
        .choice(
            "test",
            &[
                ("write", Test::Write),
                ("echo", Test::Echo),
                ("talk", Test::Talk),
                ("multiport", Test::Multiport),
            ],
            "write, echo, talk or multiport",
        )
        .and_then(|t| t.ok_or(Options::missing("console.test")))
        .or_fail(format_args!("console"));
    let default_bytes = if test == Test::Write { 65536 } else { 4096 };
    let bytes = opts
        .u64("bytes")
        .or_fail(format_args!("console"))
        .unwrap_or(default_bytes);
    let name1 = opts.text("name1").or_fail(format_args!("console"));
    // talk: bytes echoed after writing (default: as many as written).
    let input = opts
        .u64("input")
        .or_fail(format_args!("console"))
        .unwrap_or(bytes);
    let port0_multiport = opts
        .choice("multiport", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("console"))
        .unwrap_or(false);

    let dma = virtio::dma_pool(boot).or_fail(format_args!("console"));
    let dev = virtio::find_device(boot, &dma, DeviceType::Console).or_fail(format_args!("console"));
    println!(
        "console: {}: device at {:#x} irq {}, mode {mode}",
        test.name(),
        dev.slot.base,
        dev.slot.irq
    );
    if mode == Mode::Irq {
        virtio::route_irq(&dev.slot).or_fail(format_args!("console: irq {}", dev.slot.irq));
    }
    let Some(buf) = virtio::scratch() else {
        exit::fail(format_args!("console: scratch buffer taken"));
    };
    let options = ConsoleOptions {
        completion: mode.completion(),
        event_idx: true,
        multiport: test == Test::Multiport || port0_multiport,
    };
    match test {
        Test::Write | Test::Echo | Test::Talk => {
            let mut con: Console<&Dma, _, 1> = Console::new(&dma, dev.regs, options)
                .or_fail(format_args!("console: initialising"));
            println!(
                "console: features {:#x}, modern {}",
                con.features(),
                con.transport().is_modern()
            );
            if port0_multiport {
                if !con.is_multiport() {
                    exit::fail(format_args!(
                        "console: the device does not offer VIRTIO_CONSOLE_F_MULTIPORT (§5.3.3)"
                    ));
                }
                // §5.3.6.2: port 0 is used once the device added it and
                // both sides opened it.
                con.wait_for(
                    |c| {
                        c.port(0)
                            .is_some_and(|i| i.added && i.host_open && i.guest_open)
                    },
                    &mut Budget::new(mode, OP_MS),
                )
                .or_fail(format_args!(
                    "console: waiting for port 0 to be added and opened ({:?})",
                    con.port(0)
                ));
            }
            if test != Test::Echo {
                write_pattern(&mut con, 0, bytes, mode, buf);
            }
            if test != Test::Write {
                let n = if test == Test::Talk { input } else { bytes };
                echo(&mut con, n, mode, buf);
            }
        }
        Test::Multiport => {
            let mut con: Console<&Dma, _, 2> = Console::new(&dma, dev.regs, options)
                .or_fail(format_args!("console: initialising"));
            println!(
                "console: features {:#x}, modern {}, max_nr_ports {}",
                con.features(),
                con.transport().is_modern(),
                con.max_nr_ports()
            );
            if !con.is_multiport() {
                exit::fail(format_args!(
                    "console: the device does not offer VIRTIO_CONSOLE_F_MULTIPORT (§5.3.3)"
                ));
            }
            // §5.3.6.2: DEVICE_READY was sent; ports arrive by DEVICE_ADD,
            // the driver answers PORT_READY and PORT_OPEN, the device opens
            // its side (PORT_OPEN) and may name the port (PORT_NAME).
            let live = |c: &Console<&Dma, _, 2>, p: u32| {
                c.port(p)
                    .is_some_and(|i| i.added && i.host_open && i.guest_open)
            };
            let named = |c: &Console<&Dma, _, 2>| {
                name1.is_none() || c.port(1).is_some_and(|i| !i.name().is_empty())
            };
            con.wait_for(
                |c| live(c, 0) && live(c, 1) && named(c),
                &mut Budget::new(mode, OP_MS),
            )
            .or_fail(format_args!(
                "console: waiting for ports 0 and 1 to be added and opened (port 0 {:?}, port 1 {:?})",
                con.port(0),
                con.port(1)
            ));
            for (p, info) in con.ports() {
                println!(
                    "console: port {p}: console {}, name \"{}\"",
                    info.console,
                    info.name()
                );
            }
            if let Some(want) = name1 {
                let got = con.port(1).map(|i| i.name()).unwrap_or_default();
                if got != want {
                    exit::fail(format_args!(
                        "console: port 1 is named \"{got}\", console.name1 wants \"{want}\""
                    ));
                }
            }
            write_pattern(&mut con, 0, bytes, mode, buf);
            write_pattern(&mut con, 1, bytes, mode, buf);
            if con.stats().bad_control != 0 {
                exit::fail(format_args!(
                    "console: {} malformed control messages (§5.3.6.2.1)",
                    con.stats().bad_control
                ));
            }
        }
    }
    println!(
        "console: clock {} TSC/ms, {} timer ticks, {} interrupts with nothing to acknowledge",
        virtio::clock::tsc_per_ms(),
        virtio::clock::ticks(),
        virtio::empty_interrupts()
    );
    println!(
        "console: {}: {bytes} bytes, {} interrupts",
        test.name(),
        virtio::interrupts()
    );
}

/// Writes the first `bytes` bytes of P to `port` in chunks of varied sizes,
/// each waited for until the device used it.
fn write_pattern<const P: usize>(
    con: &mut Console<&Dma, guest_driver::VolatileMmio, P>,
    port: u32,
    bytes: u64,
    mode: Mode,
    buf: &mut [u8],
) {
    let (mut done, mut i) = (0u64, 0usize);
    while done < bytes {
        let size = CHUNKS[i % CHUNKS.len()].min(buf.len());
        i += 1;
        let n = usize::try_from(bytes - done).map_or(size, |left| left.min(size));
        let chunk = &mut buf[..n];
        pattern(done, chunk);
        con.write_port(port, chunk, &mut Budget::new(mode, OP_MS))
            .or_fail(format_args!(
                "console: writing {n} bytes at offset {done} to port {port}"
            ));
        done += n as u64;
    }
    println!("console: port {port}: wrote {done} bytes");
}

/// Reads from port 0 and writes every chunk back until `bytes` bytes were
/// echoed (never reading more than that).
fn echo<const P: usize>(
    con: &mut Console<&Dma, guest_driver::VolatileMmio, P>,
    bytes: u64,
    mode: Mode,
    buf: &mut [u8],
) {
    let mut done = 0u64;
    while done < bytes {
        let want = usize::try_from(bytes - done).map_or(buf.len(), |left| left.min(buf.len()));
        let chunk = &mut buf[..want];
        let n = con
            .read(chunk, &mut Budget::new(mode, OP_MS))
            .or_fail(format_args!("console: reading at offset {done}"));
        let got = &chunk[..n.min(want)];
        con.write(got, &mut Budget::new(mode, OP_MS))
            .or_fail(format_args!("console: echoing {n} bytes at offset {done}"));
        done += got.len() as u64;
    }
    println!("console: echoed {done} bytes");
}
