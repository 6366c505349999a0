//! The ISA parallel port (QEMU's `isa-parallel`, `-parallel`): LPT1 at
//! 0x378, a printer port whose output goes to a chardev.
//!
//! Three registers, as a PC parallel port's standard mode (IEEE 1284
//! compatibility mode): data (0), status (1, read-only), control (2).
//! A byte goes out when the guest raises STROBE with SELECT IN and INIT
//! (not in reset) set in the control register, the way a BIOS or
//! Linux's `lp` prints; the status then walks through the printer's
//! BUSY and ACK handshake as the guest polls it, so drivers that wait for
//! ACK see one. No interrupts (ACK's IRQ 7 is not raised); no
//! bidirectional or ECP/EPP modes; nothing is read from the chardev.

use backends::chardev::Chardev;

/// LPT1's base port.
pub const LPT1_BASE: u16 = 0x378;
/// Its registers.
pub const LPT_LEN: u16 = 3;

/// Status: not busy (the line is inverted: 1 = ready).
pub const STATUS_NOT_BUSY: u8 = 0x80;
/// Status: ACK (inverted on the wire; 0 while acknowledging).
pub const STATUS_ACK: u8 = 0x40;
/// Status: selected (on line).
pub const STATUS_SELECT: u8 = 0x10;
/// Status: no error (inverted: 1 = fine).
pub const STATUS_NO_ERROR: u8 = 0x08;
/// Control: STROBE.
pub const CONTROL_STROBE: u8 = 0x01;
/// Control: INIT (0 resets the printer).
pub const CONTROL_INIT: u8 = 0x04;
/// Control: SELECT IN.
pub const CONTROL_SELECT: u8 = 0x08;

/// The idle status: ready, selected, no error, ACK high.
const IDLE: u8 = STATUS_NOT_BUSY | STATUS_ACK | STATUS_SELECT | STATUS_NO_ERROR;

/// One parallel port in standard mode.
pub struct Parallel {
    backend: Option<Box<dyn Chardev + Send>>,
    data: u8,
    control: u8,
    status: u8,
    /// Bytes strobed out.
    printed: u64,
    /// Bytes the chardev did not take.
    dropped: u64,
}

impl std::fmt::Debug for Parallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parallel")
            .field("backend", &self.backend.is_some())
            .field("printed", &self.printed)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            backend: None,
            data: 0,
            control: CONTROL_INIT | CONTROL_SELECT,
            status: IDLE,
            printed: 0,
            dropped: 0,
        }
    }
}

impl Parallel {
    /// A port with its output going to `chardev` (`None`: discarded, as
    /// QEMU's `-parallel null`).
    pub fn new(chardev: Option<Box<dyn Chardev + Send>>) -> Parallel {
        Parallel {
            backend: chardev,
            ..Parallel::default()
        }
    }

    /// Bytes printed so far, and how many of them the chardev refused.
    pub fn counts(&self) -> (u64, u64) {
        (self.printed, self.dropped)
    }

    /// The guest writes `value` to register `offset`.
    pub fn write(&mut self, offset: u16, value: u8) {
        match offset {
            0 => self.data = value,
            2 => {
                let rising = value & CONTROL_STROBE != 0 && self.control & CONTROL_STROBE == 0;
                if value & CONTROL_INIT == 0 {
                    // INIT low: the printer resets.
                    self.status = IDLE;
                } else if value & CONTROL_SELECT != 0 && rising {
                    self.printed += 1;
                    // The byte is latched on the strobe; the printer is
                    // busy until the guest has seen the acknowledge.
                    if let Some(b) = &mut self.backend
                        && !matches!(b.write(&[self.data]), Ok(1))
                    {
                        self.dropped += 1;
                    }
                    self.status &= !STATUS_NOT_BUSY;
                }
                self.control = value;
            }
            // The status register is read-only.
            _ => {}
        }
    }

    /// The guest reads register `offset`.
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            0 => self.data,
            1 => {
                let now = self.status;
                // Each look at the status moves the handshake on once the
                // strobe is down: busy → ACK pulse → ready.
                if self.control & CONTROL_STROBE == 0 {
                    if self.status & STATUS_NOT_BUSY == 0 {
                        self.status = (self.status | STATUS_NOT_BUSY) & !STATUS_ACK;
                    } else if self.status & STATUS_ACK == 0 {
                        self.status |= STATUS_ACK;
                    }
                }
                now
            }
            2 => self.control | 0xc0,
            _ => 0xff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Tap(Arc<Mutex<Vec<u8>>>);
    impl Chardev for Tap {
        fn write(&mut self, buf: &[u8]) -> Result<usize, backends::chardev::ChardevError> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn read(&mut self, _: &mut [u8]) -> Result<usize, backends::chardev::ChardevError> {
            Ok(0)
        }
    }

    /// A polling printer driver: wait until not busy, put the byte,
    /// pulse STROBE, wait for the ACK; every byte arrives once.
    #[test]
    fn strobed_bytes_reach_the_chardev_with_the_handshake() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut p = Parallel::new(Some(Box::new(Tap(out.clone()))));
        let ctl = CONTROL_INIT | CONTROL_SELECT;
        for &b in b"hi\n" {
            assert_ne!(p.read(1) & STATUS_NOT_BUSY, 0, "ready");
            p.write(0, b);
            p.write(2, ctl | CONTROL_STROBE);
            p.write(2, ctl);
            assert_eq!(p.read(1) & STATUS_NOT_BUSY, 0, "busy after the strobe");
            assert_eq!(
                p.read(1) & (STATUS_NOT_BUSY | STATUS_ACK),
                STATUS_NOT_BUSY,
                "ACK"
            );
            assert_ne!(p.read(1) & STATUS_ACK, 0, "ACK over");
        }
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
        // No SELECT, or INIT low: nothing printed.
        p.write(0, b'x');
        p.write(2, CONTROL_INIT | CONTROL_STROBE);
        p.write(2, CONTROL_INIT);
        p.write(2, CONTROL_SELECT | CONTROL_STROBE);
        assert_eq!(&*out.lock().unwrap(), b"hi\n");
        assert_eq!(p.counts(), (3, 0));
        assert_eq!(p.read(0), b'x');
        assert_eq!(p.read(2) & 0x3f, CONTROL_SELECT | CONTROL_STROBE);
        assert_eq!(p.read(7), 0xff);
    }
}
