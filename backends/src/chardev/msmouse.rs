//! QEMU's `-chardev msmouse`: a Microsoft serial mouse behind a UART.
//!
//! The mouse is powered by the UART's DTR or RTS line; when power comes it
//! says `M3` (a three-button Logitech-compatible mouse), and from then on
//! each batch of input becomes 3-byte packets (7 data bits each):
//! `01LRYYXX`, `00XXXXXX`, `00YYYYYY` with the movement as 8-bit two's
//! complement split in high 2 and low 6 bits; a fourth byte `00M00000`
//! follows while the middle button is down or when it changed. Larger
//! movements are split over several packets. Input while unpowered is
//! dropped, and power off clears everything, as a real mouse.
//! Not sent: the serial Plug and Play identification after `M3`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::input::{Axis, Button, InputEvent, InputSink, drain_into, lock};
use super::{Chardev, ChardevError};

/// Bytes the mouse buffers for the UART; a batch that does not fit is
/// dropped.
pub const QUEUE: usize = 64;

#[derive(Debug, Default)]
struct State {
    powered: bool,
    dx: i32,
    dy: i32,
    left: bool,
    right: bool,
    middle: bool,
    middle_changed: bool,
    out: VecDeque<u8>,
    dropped: u64,
}

impl State {
    fn packet(&mut self) -> ([u8; 4], usize) {
        let dx = self.dx.clamp(-128, 127);
        let dy = self.dy.clamp(-128, 127);
        self.dx -= dx;
        self.dy -= dy;
        let (x, y) = (dx as u8, dy as u8);
        let mut p = [0x40 | (y >> 6) << 2 | x >> 6, x & 0x3f, y & 0x3f, 0];
        if self.left {
            p[0] |= 0x20;
        }
        if self.right {
            p[0] |= 0x10;
        }
        let mut n = 3;
        if self.middle || self.middle_changed {
            p[3] = if self.middle { 0x20 } else { 0 };
            self.middle_changed = false;
            n = 4;
        }
        (p, n)
    }
}

/// The chardev side: what the UART reads (and writes, which a mouse
/// ignores).
#[derive(Debug)]
pub struct Msmouse {
    state: Arc<Mutex<State>>,
}

/// The input side: register it with the machine's
/// [`InputRouter`](super::input::InputRouter).
#[derive(Debug)]
pub struct MsmouseInput {
    state: Arc<Mutex<State>>,
}

impl Msmouse {
    /// A mouse, unpowered, and the handle that feeds it.
    pub fn new() -> (Msmouse, Arc<MsmouseInput>) {
        let state = Arc::new(Mutex::new(State::default()));
        (
            Msmouse {
                state: Arc::clone(&state),
            },
            Arc::new(MsmouseInput { state }),
        )
    }

    /// Batches dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }
}

impl InputSink for MsmouseInput {
    fn event(&self, ev: InputEvent) {
        let mut s = lock(&self.state);
        if !s.powered {
            return;
        }
        match ev {
            InputEvent::Rel(Axis::X, v) => s.dx = s.dx.saturating_add(v),
            InputEvent::Rel(Axis::Y, v) => s.dy = s.dy.saturating_add(v),
            InputEvent::Abs(..) => {}
            InputEvent::Button(Button::Left, d) => s.left = d,
            InputEvent::Button(Button::Right, d) => s.right = d,
            InputEvent::Button(Button::Middle, d) => {
                s.middle_changed |= s.middle != d;
                s.middle = d;
            }
        }
    }

    fn sync(&self) {
        let mut s = lock(&self.state);
        if !s.powered {
            return;
        }
        // One packet per batch at least (a button change moves nothing),
        // more while the movement does not fit in one.
        let mut bytes = [0u8; QUEUE];
        let mut n = 0;
        loop {
            let (p, len) = s.packet();
            if n + len > QUEUE {
                break;
            }
            bytes[n..n + len].copy_from_slice(&p[..len]);
            n += len;
            if s.dx == 0 && s.dy == 0 {
                break;
            }
        }
        s.dx = 0;
        s.dy = 0;
        if s.out.len() + n <= QUEUE {
            s.out.extend(&bytes[..n]);
        } else {
            s.dropped += 1;
        }
    }

    fn name(&self) -> &str {
        "msmouse"
    }
}

impl Chardev for Msmouse {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        Ok(buf.len())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        Ok(drain_into(&mut lock(&self.state).out, buf))
    }

    fn set_modem_lines(&mut self, dtr: bool, rts: bool) {
        let mut s = lock(&self.state);
        let on = dtr || rts;
        if on && !s.powered {
            *s = State {
                powered: true,
                dropped: s.dropped,
                ..State::default()
            };
            s.out.extend(b"M3");
        } else if !on && s.powered {
            *s = State {
                dropped: s.dropped,
                ..State::default()
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(m: &mut Msmouse) -> std::vec::Vec<u8> {
        let mut b = [0u8; 256];
        let n = m.read(&mut b).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn power_identifies_and_packets_follow() {
        let (mut m, input) = Msmouse::new();
        input.event(InputEvent::Rel(Axis::X, 5));
        input.sync();
        assert!(read_all(&mut m).is_empty(), "unpowered: nothing");
        m.set_modem_lines(true, true);
        assert_eq!(read_all(&mut m), b"M3");
        input.event(InputEvent::Rel(Axis::X, 10));
        input.event(InputEvent::Rel(Axis::Y, -5));
        input.sync();
        // dx 10 = 0x0a, dy -5 = 0xfb: hi2 3, lo6 0x3b.
        assert_eq!(read_all(&mut m), [0x40 | 3 << 2, 0x0a, 0x3b]);
        input.event(InputEvent::Button(Button::Left, true));
        input.sync();
        assert_eq!(read_all(&mut m), [0x60, 0, 0]);
        input.event(InputEvent::Button(Button::Middle, true));
        input.sync();
        assert_eq!(read_all(&mut m), [0x60, 0, 0, 0x20]);
        input.event(InputEvent::Button(Button::Middle, false));
        input.event(InputEvent::Button(Button::Left, false));
        input.sync();
        assert_eq!(read_all(&mut m), [0x40, 0, 0, 0]);
        input.sync();
        assert_eq!(
            read_all(&mut m),
            [0x40, 0, 0],
            "no middle byte once released"
        );
    }

    #[test]
    fn big_moves_split_and_a_full_queue_drops() {
        let (mut m, input) = Msmouse::new();
        m.set_modem_lines(false, true);
        read_all(&mut m);
        input.event(InputEvent::Rel(Axis::X, 300));
        input.sync();
        let b = read_all(&mut m);
        assert_eq!(b, [0x41, 0x3f, 0, 0x41, 0x3f, 0, 0x40, 46, 0]);
        for _ in 0..30 {
            input.event(InputEvent::Rel(Axis::Y, 1));
            input.sync();
        }
        assert_eq!(read_all(&mut m).len(), QUEUE - QUEUE % 3);
        assert!(m.dropped() > 0);
        m.set_modem_lines(false, false);
        input.sync();
        assert!(read_all(&mut m).is_empty());
    }
}
