//! Scenario `uart`: a 16550A driven by polling, the way firmware does:
//! set 8N1 and the FIFO, then echo `uart.bytes` bytes (default 4096) the
//! host sends to the UART at `uart.base` (default COM2, `0x2f8`), each
//! byte read when the line status says data is ready and written back
//! when the transmitter is empty, each wait bounded by `uart.ms`
//! (default 30 000). Last line: `uart: echoed <n> bytes`. With
//! `uart.quit=N` it then writes `Nq` to the UART, a `-chardev testdev`'s
//! quit command, and waits for the monitor to end the run.
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
    let opts =
        Options::new(boot, "uart", &["base", "bytes", "ms", "quit"]).or_fail(format_args!("uart"));
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
    if let Some(status) = opts.u64("quit").or_fail(format_args!("uart")) {
        let mut digits = [0u8; 20];
        let mut n = status;
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &b in digits[at..].iter().chain(b"q") {
            wait(LSR_THRE, "room to transmit");
            out(0, b);
        }
        println!("uart: asked the testdev to quit with {status}");
        // The monitor ends the run; a pass would mean it did not.
        let end = clock::now_ms() + ms;
        while clock::now_ms() < end {
            core::hint::spin_loop();
        }
        exit::fail(format_args!("uart: still running {ms} ms after {status}q"));
    }
}
