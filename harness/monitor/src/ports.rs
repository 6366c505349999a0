//! The legacy I/O ports the monitor serves itself: COM1 and COM2 (16550A
//! UARTs), the debug port `0xe9` (Bochs/QEMU `debugcon`) and the
//! test-exit port `0xf4` (QEMU `isa-debug-exit,iobase=0xf4,iosize=4`).
//!
//! A UART keeps what is written to its transmit register (COM1's is the
//! run's serial log) and always reports the transmitter empty, so a
//! polling driver never waits. With a chardev (`-serial chardev:ID`) the
//! output also goes there, and the chardev's input is the receive path: up
//! to 16 bytes at a time (the 16550A's FIFO) are taken when the guest
//! looks at the line status or reads the receive buffer. No interrupts
//! and no modem lines: drivers poll (the line status's data-ready bit).
//! Every log is capped ([`LOG_LIMIT`]) so a guest cannot exhaust host
//! memory by printing.

use std::collections::VecDeque;

use backends::chardev::Chardev;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// First port of COM2.
pub const COM2_BASE: u16 = 0x2f8;
/// Number of COM1 ports (`0x3f8..=0x3ff`).
pub const COM1_LEN: u16 = 8;
/// The debug output port: each byte written goes to the debug log.
pub const DEBUG_PORT: u16 = 0xe9;
/// The test-exit port.
pub const EXIT_PORT: u16 = 0xf4;
/// Written to [`EXIT_PORT`]: the guest passed (QEMU exits with status 33).
pub const EXIT_PASS: u32 = 0x10;
/// Written to [`EXIT_PORT`]: the guest failed (QEMU exits with status 35);
/// the message is on COM1 as `verdict: fail: <message>`.
pub const EXIT_FAIL: u32 = 0x11;
/// Most bytes kept per log; more are counted and dropped.
pub const LOG_LIMIT: usize = 16 << 20;

/// QEMU's `isa-debug-exit` exit status for a value written to its port.
pub const fn qemu_exit_status(value: u32) -> u32 {
    ((value << 1) | 1) & 0xff
}

/// A capped byte log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Log {
    /// Appends `b`, or counts it as dropped past [`LOG_LIMIT`].
    pub fn push(&mut self, b: u8) {
        if self.bytes.len() < LOG_LIMIT {
            self.bytes.push(b);
        } else {
            self.dropped += 1;
        }
    }

    /// What was kept.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes were dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The log as text: invalid UTF-8 replaced, `\r\n` folded to `\n`.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).replace("\r\n", "\n")
    }

    /// Empties the log.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.dropped = 0;
    }
}

const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LCR_DLAB: u8 = 0x80;
const IIR_NO_INTERRUPT: u8 = 0x01;
const IIR_FIFO_ENABLED: u8 = 0xc0;
/// DCD | DSR | CTS: a terminal is there and ready.
const MSR_READY: u8 = 0xb0;

/// The receive FIFO's depth.
const RX_FIFO: usize = 16;

/// A 16550A whose transmitter is always empty.
#[derive(Default)]
pub struct Serial {
    out: Log,
    /// Where output also goes and input comes from (`-serial chardev:`).
    backend: Option<Box<dyn Chardev + Send>>,
    rx: VecDeque<u8>,
    /// Output bytes the chardev did not take (it never blocks the guest).
    dropped: u64,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo: bool,
    /// The line speed last told to the chardev.
    speed: Option<u32>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("out", &self.out.bytes().len())
            .field("backend", &self.backend.is_some())
            .field("rx", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART after reset.
    pub fn new() -> Serial {
        Serial::default()
    }

    /// Connects the UART to `chardev` (`-serial chardev:ID`).
    pub fn attach(&mut self, chardev: Box<dyn Chardev + Send>) {
        self.backend = Some(chardev);
    }

    /// Output bytes the chardev did not take.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Fills the receive FIFO from the chardev when it is empty.
    fn pump(&mut self) {
        if !self.rx.is_empty() {
            return;
        }
        if let Some(b) = &mut self.backend {
            let mut buf = [0u8; RX_FIFO];
            // A failing chardev reads as nothing: the guest sees no data.
            if let Ok(n) = b.read(&mut buf) {
                self.rx.extend(&buf[..n]);
            }
        }
    }

    fn transmit(&mut self, value: u8) {
        self.out.push(value);
        if let Some(b) = &mut self.backend
            && !matches!(b.write(&[value]), Ok(1))
        {
            self.dropped += 1;
        }
    }

    /// Tells the chardev the line speed the divisor latch now gives
    /// (115200 / divisor, as a PC UART's 1.8432 MHz clock), when it
    /// changed: a serial tablet talks only at 9600.
    fn update_speed(&mut self) {
        let div = u16::from_le_bytes([self.dll, self.dlm]);
        if div == 0 {
            return;
        }
        let bps = 115_200 / u32::from(div);
        if self.speed != Some(bps) {
            self.speed = Some(bps);
            if let Some(b) = &mut self.backend {
                b.set_line_speed(bps);
            }
        }
    }

    /// The guest writes `value` to register `offset` (0..8).
    pub fn write(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => {
                self.dll = value;
                self.update_speed();
            }
            0 => self.transmit(value),
            1 if dlab => {
                self.dlm = value;
                self.update_speed();
            }
            1 => self.ier = value & 0x0f,
            2 => self.fifo = value & 1 != 0,
            3 => self.lcr = value,
            4 => {
                let old = self.mcr;
                self.mcr = value & 0x1f;
                // DTR (bit 0) and RTS (bit 1) reach the chardev: they
                // power a serial mouse.
                if (old ^ self.mcr) & 0x03 != 0
                    && let Some(b) = &mut self.backend
                {
                    b.set_modem_lines(self.mcr & 1 != 0, self.mcr & 2 != 0);
                }
            }
            7 => self.scr = value,
            // LSR and MSR are read-only.
            _ => {}
        }
    }

    /// The guest reads register `offset` (0..8).
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            0 => {
                self.pump();
                self.rx.pop_front().unwrap_or(0)
            }
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => IIR_NO_INTERRUPT | if self.fifo { IIR_FIFO_ENABLED } else { 0 },
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                self.pump();
                LSR_THRE | LSR_TEMT | if self.rx.is_empty() { 0 } else { LSR_DR }
            }
            6 => MSR_READY,
            7 => self.scr,
            _ => 0xff,
        }
    }

    /// Everything transmitted so far.
    pub fn output(&self) -> &Log {
        &self.out
    }

    /// Takes the output, leaving an empty log.
    pub fn take_output(&mut self) -> Log {
        std::mem::take(&mut self.out)
    }
}

/// The little-endian value of a 1-, 2- or 4-byte port write (longer data,
/// from a `rep outs`, yields its first four bytes).
pub fn port_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polling_driver_sees_an_empty_transmitter_and_a_fifo_when_enabled() {
        let mut s = Serial::new();
        assert_eq!(s.read(5) & 0x60, 0x60);
        assert_eq!(s.read(2), 0x01);
        s.write(2, 0xc7);
        assert_eq!(s.read(2), 0xc1);
        for b in b"ok\r\n" {
            s.write(0, *b);
        }
        assert_eq!(s.output().text(), "ok\n");
        // DLAB diverts 0 and 1 to the divisor latch.
        s.write(3, 0x83);
        s.write(0, 0x01);
        s.write(1, 0x00);
        assert_eq!(s.read(0), 0x01);
        s.write(3, 0x03);
        assert_eq!(s.output().bytes(), b"ok\r\n");
        s.write(7, 0x5a);
        assert_eq!(s.read(7), 0x5a);
        assert_eq!(s.read(0), 0);
    }

    #[test]
    fn a_chardev_is_the_receive_path_and_takes_the_output() {
        /// Input the test gives; output it keeps.
        #[derive(Default)]
        struct Wire(std::sync::Arc<std::sync::Mutex<(Vec<u8>, Vec<u8>)>>);
        impl Chardev for Wire {
            fn write(&mut self, buf: &[u8]) -> Result<usize, backends::chardev::ChardevError> {
                self.0.lock().unwrap().1.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, backends::chardev::ChardevError> {
                let mut w = self.0.lock().unwrap();
                let n = buf.len().min(w.0.len());
                buf[..n].copy_from_slice(&w.0[..n]);
                w.0.drain(..n);
                Ok(n)
            }
        }
        let wire = Wire::default();
        let shared = std::sync::Arc::clone(&wire.0);
        let mut s = Serial::new();
        s.attach(Box::new(wire));
        assert_eq!(s.read(5) & LSR_DR, 0, "nothing to read yet");
        shared.lock().unwrap().0.extend_from_slice(&[b'x'; 20]);
        shared.lock().unwrap().0.extend_from_slice(b"yz");
        let mut got = Vec::new();
        while s.read(5) & LSR_DR != 0 {
            got.push(s.read(0));
        }
        assert_eq!(got.len(), 22);
        assert_eq!(&got[20..], b"yz");
        for b in b"hi" {
            s.write(0, *b);
        }
        assert_eq!(shared.lock().unwrap().1, b"hi");
        assert_eq!(s.output().bytes(), b"hi");
        // A chardev that takes nothing: the guest goes on, the bytes are
        // counted.
        struct Full;
        impl Chardev for Full {
            fn write(&mut self, _: &[u8]) -> Result<usize, backends::chardev::ChardevError> {
                Ok(0)
            }
            fn read(&mut self, _: &mut [u8]) -> Result<usize, backends::chardev::ChardevError> {
                Ok(0)
            }
        }
        let mut full = Serial::new();
        full.attach(Box::new(Full));
        full.write(0, b'a');
        assert_eq!(full.dropped(), 1);
        assert_eq!(full.output().bytes(), b"a");
    }

    #[test]
    fn logs_are_capped_and_values_widen() {
        let mut l = Log::default();
        for _ in 0..LOG_LIMIT + 3 {
            l.push(b'x');
        }
        assert_eq!(l.bytes().len(), LOG_LIMIT);
        assert_eq!(l.dropped(), 3);
        assert_eq!(port_value(&[0x10]), 0x10);
        assert_eq!(port_value(&[0x11, 0]), 0x11);
        assert_eq!(port_value(&[0x10, 0, 0, 0]), 0x10);
        assert_eq!(port_value(&[1, 2, 3, 4, 5]), 0x0403_0201);
        assert_eq!(port_value(&[]), 0);
        assert_eq!(qemu_exit_status(EXIT_PASS), 33);
        assert_eq!(qemu_exit_status(EXIT_FAIL), 35);
    }
}
