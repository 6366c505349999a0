//! Scenario `uart`: a 16550A driven by polling, the way firmware does:
//! set 8N1 and the FIFO, then echo `uart.bytes` bytes (default 4096) the
//! host sends to the UART at `uart.base` (default COM2, `0x2f8`), each
//! byte read when the line status says data is ready and written back
//! when the transmitter is empty, each wait bounded by `uart.ms`
//! (default 30 000). Last line: `uart: echoed <n> bytes`. With
//! `uart.quit=N` it then writes `Nq` to the UART, a `-chardev testdev`'s
//! quit command, and waits for the monitor to end the run.
//! `uart.mouse=N` (a `-chardev msmouse` behind the UART): powers the
//! mouse with DTR and RTS, checks its `M3` and prints N packets as
//! `uart: mouse dx <dx> dy <dy> buttons <L|-><R|->`. `uart.tablet=N` (a
//! `-chardev wctablet`): sets 9600 bit/s, asks the model with `~#`
//! (`uart: tablet model <string>`), starts reports with `ST` and prints N
//! as `uart: tablet x <x> y <y> pen up|down`. `uart.lpt=N` prints N lines
//! `LPT1 line <k>` to the parallel port at 0x378 the way a polling printer
//! driver does (wait until not busy, data, STROBE pulse, wait for ACK).
#![no_std]
#![no_main]

use guest_rt::virtio::{Options, OrFail, clock};
use guest_rt::{BootInfo, cpu, exit, println};

guest_rt::entry!(main);

/// Line status: data ready.
const LSR_DR: u8 = 0x01;
/// Line status: transmitter holding register empty.
const LSR_THRE: u8 = 0x20;

fn main(boot: &'static BootInfo) {
    let opts = Options::new(
        boot,
        "uart",
        &["base", "bytes", "ms", "quit", "mouse", "tablet", "lpt"],
    )
    .or_fail(format_args!("uart"));
    let base = opts
        .u64("base")
        .or_fail(format_args!("uart"))
        .unwrap_or(0x2f8);
    let Ok(base) = u16::try_from(base) else {
        exit::fail(format_args!("uart: base {base:#x} is not a port"));
    };
    let bytes = opts
        .u64("bytes")
        .or_fail(format_args!("uart"))
        .unwrap_or(4096);
    let ms = opts
        .u64("ms")
        .or_fail(format_args!("uart"))
        .unwrap_or(30_000);
    // SAFETY: the UART's eight ports; writing its registers has no effect
    // on this program's memory.
    let out = |off: u16, v: u8| unsafe { cpu::outb(base + off, v) };
    // SAFETY: as above; reads have no side effect on memory.
    let inb = |off: u16| unsafe { cpu::inb(base + off) };
    // 8N1 at divisor 1 (115200), FIFO on and cleared, no interrupts.
    out(3, 0x80);
    out(0, 1);
    out(1, 0);
    out(3, 0x03);
    out(2, 0x07);
    out(1, 0);
    println!("uart: at {base:#x}, echoing {bytes} bytes");
    clock::start();
    let wait = |mask: u8, what: &str| {
        let end = clock::now_ms() + ms;
        while inb(5) & mask == 0 {
            if clock::now_ms() > end {
                exit::fail(format_args!("uart: no {what} within {ms} ms"));
            }
            core::hint::spin_loop();
        }
    };
    for i in 0..bytes {
        wait(LSR_DR, "data");
        let b = inb(0);
        wait(LSR_THRE, "room to transmit");
        out(0, b);
        if i == 0 {
            println!("uart: first byte {b:#04x}");
        }
    }
    println!("uart: echoed {bytes} bytes");
    let read = || {
        wait(LSR_DR, "data from the pointing device");
        inb(0)
    };
    let send = |text: &[u8]| {
        for &b in text {
            wait(LSR_THRE, "room to transmit");
            out(0, b);
        }
    };
    if let Some(n) = opts.u64("mouse").or_fail(format_args!("uart")) {
        // 1200 bit/s 7N1 as serial mice talk (divisor 96), then power
        // on: a serial mouse draws its power from DTR and RTS.
        out(3, 0x80);
        out(0, 96);
        out(1, 0);
        out(3, 0x02);
        out(4, 0x03);
        let id = [read(), read()];
        if id != *b"M3" {
            exit::fail(format_args!("uart: the mouse said {id:02x?}, not M3"));
        }
        println!("uart: mouse id M3");
        for i in 0..n {
            let b0 = read();
            if b0 & 0x40 == 0 {
                exit::fail(format_args!(
                    "uart: mouse packet {i} starts with {b0:#04x} (no sync bit)"
                ));
            }
            let (b1, b2) = (read(), read());
            let dx = ((b0 & 0x03) << 6 | (b1 & 0x3f)) as i8;
            let dy = ((b0 >> 2 & 0x03) << 6 | (b2 & 0x3f)) as i8;
            println!(
                "uart: mouse dx {dx} dy {dy} buttons {}{}",
                if b0 & 0x20 != 0 { "L" } else { "-" },
                if b0 & 0x10 != 0 { "R" } else { "-" }
            );
        }
    }
    if let Some(n) = opts.u64("tablet").or_fail(format_args!("uart")) {
        // 9600 bit/s 8N1 (divisor 12): the tablet talks at no other speed.
        out(3, 0x80);
        out(0, 12);
        out(1, 0);
        out(3, 0x03);
        send(b"~#");
        let mut model = [0u8; 18];
        for b in &mut model {
            *b = read();
        }
        println!(
            "uart: tablet model {}",
            core::str::from_utf8(&model).unwrap_or("(not text)")
        );
        send(b"ST\r");
        for i in 0..n {
            let mut p = [0u8; 7];
            for b in &mut p {
                *b = read();
            }
            if p[0] & 0x80 == 0 || p[1..].iter().any(|b| b & 0x80 != 0) {
                exit::fail(format_args!("uart: tablet report {i} is {p:02x?}"));
            }
            let x = u32::from(p[0] & 3) << 14 | u32::from(p[1]) << 7 | u32::from(p[2]);
            let y = u32::from(p[3] & 3) << 14 | u32::from(p[4]) << 7 | u32::from(p[5]);
            println!(
                "uart: tablet x {x} y {y} pen {}",
                if p[0] & 0x40 == 0 { "down" } else { "up" }
            );
        }
    }
    if let Some(lines) = opts.u64("lpt").or_fail(format_args!("uart")) {
        const LPT: u16 = 0x378;
        // SAFETY: the parallel port's three registers; no memory effect.
        let lpt_out = |off: u16, v: u8| unsafe { cpu::outb(LPT + off, v) };
        // SAFETY: as above.
        let lpt_in = |off: u16| unsafe { cpu::inb(LPT + off) };
        let wait_status = |mask: u8, want: u8, what: &str| {
            let end = clock::now_ms() + ms;
            while lpt_in(1) & mask != want {
                if clock::now_ms() > end {
                    exit::fail(format_args!("uart: LPT1: no {what} within {ms} ms"));
                }
                core::hint::spin_loop();
            }
        };
        // INIT high (out of reset) and SELECT IN: the printer is ours.
        lpt_out(2, 0x0c);
        let mut line = [0u8; 32];
        for k in 0..lines {
            let mut n = 0;
            for &b in b"LPT1 line " {
                line[n] = b;
                n += 1;
            }
            let mut digits = [0u8; 20];
            for &d in decimal(k, &mut digits) {
                line[n] = d;
                n += 1;
            }
            line[n] = b'\n';
            n += 1;
            for &b in &line[..n] {
                wait_status(0x80, 0x80, "ready (BUSY high)");
                lpt_out(0, b);
                lpt_out(2, 0x0d);
                lpt_out(2, 0x0c);
                wait_status(0x40, 0, "ACK");
            }
        }
        println!("uart: printed {lines} lines to LPT1");
    }
    if let Some(status) = opts.u64("quit").or_fail(format_args!("uart")) {
        let mut digits = [0u8; 20];
        send(decimal(status, &mut digits));
        send(b"q");
        println!("uart: asked the testdev to quit with {status}");
        // The monitor ends the run; a pass would mean it did not.
        let end = clock::now_ms() + ms;
        while clock::now_ms() < end {
            core::hint::spin_loop();
        }
        exit::fail(format_args!("uart: still running {ms} ms after {status}q"));
    }
}

/// `n` in decimal, written at the end of `buf`: the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}
