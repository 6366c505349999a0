//! Debug output on COM1 (I/O port 0x3f8), a polled 16550 UART: 8N1, FIFO
//! on, no interrupts. `\n` goes out as `\r\n`.
//!
//! Every wait is bounded: a monitor with no UART (ports read as 0 or 0xff)
//! never hangs the guest; after one wait runs out the port is written blind.

use crate::cpu::{inb, outb};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// I/O base of COM1.
pub const COM1: u16 = 0x3f8;

const THR: u16 = COM1; // transmit holding register (DLAB = 0)
const IER: u16 = COM1 + 1;
const FCR: u16 = COM1 + 2; // FIFO control (write) / IIR (read)
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 0x20;

/// Polls of the line status register before giving up on the UART.
const MAX_POLLS: u32 = 100_000;

/// Bytes the transmitter takes after it last reported empty: 16 with the
/// FIFO, 1 without (decided in [`init`]).
static FIFO_DEPTH: AtomicU8 = AtomicU8::new(1);
/// Bytes that may still be written before polling the status again.
static ROOM: AtomicU8 = AtomicU8::new(0);
/// Set when a wait ran out: write without polling from then on.
static BLIND: AtomicBool = AtomicBool::new(false);

/// Programs COM1: 8N1, FIFO on and cleared, interrupts off. The baud-rate
/// divisor is left alone (virtual UARTs ignore it), so every write to 0x3f8
/// is data and a monitor's UART can be a few lines: data out on 0x3f8, 0x60
/// from LSR (0x3fd), 0xc1 from IIR (0x3fa) for a 16-byte FIFO.
pub fn init() {
    // SAFETY: COM1 belongs to the runtime; these writes only configure it.
    unsafe {
        outb(IER, 0x00);
        outb(LCR, 0x03); // 8N1, DLAB off
        outb(FCR, 0xc7); // FIFO on, both cleared, 14-byte trigger
        outb(MCR, 0x03); // DTR | RTS, OUT2 off: no interrupts
    }
    // SAFETY: reading IIR of our own UART only clears a THRE interrupt
    // indication, and interrupts are off.
    let iir = unsafe { inb(FCR) };
    let depth = if iir & 0xc0 == 0xc0 { 16 } else { 1 };
    FIFO_DEPTH.store(depth, Ordering::Relaxed);
    ROOM.store(0, Ordering::Relaxed);
}

/// Writes one raw byte, waiting (bounded) for room in the transmitter.
pub fn write_byte(byte: u8) {
    let room = ROOM.load(Ordering::Relaxed);
    if room == 0 {
        wait_for_room();
    } else {
        ROOM.store(room - 1, Ordering::Relaxed);
    }
    // SAFETY: writing the transmit register of our own UART.
    unsafe { outb(THR, byte) }
}

fn wait_for_room() {
    if !BLIND.load(Ordering::Relaxed) {
        let mut polls = 0;
        // SAFETY: reading LSR of our own UART has no side effect we rely on.
        while unsafe { inb(LSR) } & LSR_THR_EMPTY == 0 {
            polls += 1;
            if polls == MAX_POLLS {
                BLIND.store(true, Ordering::Relaxed);
                break;
            }
            core::hint::spin_loop();
        }
    }
    // This write takes one of the slots.
    ROOM.store(FIFO_DEPTH.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
}

/// Writes a string, `\n` as `\r\n`.
pub fn write_str(s: &str) {
    for byte in s.bytes() {
        if byte == b'\n' {
            write_byte(b'\r');
        }
        write_byte(byte);
    }
}

/// A [`fmt::Write`] sink on COM1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// Formats to COM1; what [`crate::print!`] and [`crate::println!`] call.
pub fn print(args: fmt::Arguments<'_>) {
    // Com1 never fails, so neither does the formatting.
    let _ = fmt::Write::write_fmt(&mut Com1, args);
}
