//! QEMU's `-chardev wctablet`: a Wacom PenPartner serial tablet (Wacom
//! protocol IV) behind a UART, fed with absolute positions.
//!
//! The strings and packet layouts are the ones QEMU's emulation sends (and
//! guests' drivers, such as Linux's `wacom_serial4` through inputattach,
//! expect): at start the full configuration string; at 9600 bit/s only,
//! `~#` answers the model string, `RE` the configuration, `ST` starts the
//! position reports and `SP` stops them, `TS<c>` answers a 7-byte status;
//! other lines are read and ignored. A position report is 7 bytes: `0xE0`
//! (`0xA0` with the pen down) with the top 2 bits of X, X's next 7 and
//! low 7 bits, the same three for Y, and a zero. X and Y are the absolute
//! input (0..=0x7fff) scaled as QEMU does (by 0.1537 and 0.1152).
//! A change of line speed resets the tablet. Unlike QEMU, several
//! commands in one write are all answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use super::input::{Axis, Button, InputEvent, InputSink, drain_into, lock};
use super::{Chardev, ChardevError};

/// The line speed the tablet talks at.
pub const SPEED: u32 = 9600;
/// The model string `~#` is answered with.
pub const MODEL: &[u8] = b"~#CT-0045R,V1.3-5,";
/// The configuration `RE` is answered with.
pub const CONFIG: &[u8] = b"96,N,8,0";
/// The full configuration string the tablet sends at start.
pub const FULL_CONFIG: &[u8] =
    b"\\96,N,8,1(\x01$WAC0045\\\\PEN\\WAC0000\\Tablet\r\nCT-0045R,V1.3-5\r\nE7)";
/// Bytes buffered for the UART at most; more is dropped.
pub const QUEUE: usize = 512;
/// Longest command line kept.
const LINE: usize = 99;

#[derive(Debug)]
struct State {
    speed: u32,
    line: Vec<u8>,
    out: VecDeque<u8>,
    reporting: bool,
    x: i32,
    y: i32,
    pen: bool,
    dropped: u64,
}

impl State {
    fn queue(&mut self, bytes: &[u8]) {
        if self.out.len() + bytes.len() <= QUEUE {
            self.out.extend(bytes);
        } else {
            self.dropped += 1;
        }
    }

    fn report(&mut self) {
        if self.speed != SPEED {
            return;
        }
        // As QEMU: the float product truncated.
        let x = (f64::from(self.x) * 0.1537) as u32;
        let y = (f64::from(self.y) * 0.1152) as u32;
        let first = if self.pen { 0xa0 } else { 0xe0 };
        let p = [
            first | (x >> 14) as u8,
            (x >> 7 & 0x7f) as u8,
            (x & 0x7f) as u8,
            (y >> 14) as u8,
            (y >> 7 & 0x7f) as u8,
            (y & 0x7f) as u8,
            0,
        ];
        self.queue(&p);
    }

    /// Answers every complete command in the line buffer.
    fn commands(&mut self) {
        loop {
            let skip = self
                .line
                .iter()
                .take_while(|c| matches!(c, b'@' | b'\r' | b'\n'))
                .count();
            self.line.drain(..skip);
            if self.line.is_empty() {
                return;
            }
            if self.line.starts_with(b"~#") {
                self.line.drain(..2);
                self.queue(MODEL);
                continue;
            }
            let Some(end) = self.line.iter().position(|c| matches!(c, b'\r' | b'\n')) else {
                return;
            };
            let cmd: Vec<u8> = self.line.drain(..=end).take(end).collect();
            match cmd.as_slice() {
                b"RE" => self.queue(CONFIG),
                b"ST" => {
                    self.reporting = true;
                    self.report();
                }
                b"SP" => self.reporting = false,
                [b'T', b'S', c] => {
                    let c = *c;
                    let status = [
                        0xa3,
                        if c & 0x80 == 0 { 0x7e } else { 0x7f },
                        (((c >> 4) & 0x7) ^ 0x5) << 4 | ((c & 0x0f) ^ 0x7),
                        0x03,
                        0x7f,
                        0x7f,
                        0x00,
                    ];
                    self.queue(&status);
                }
                _ => {}
            }
        }
    }
}

/// The chardev side: what the UART reads and writes.
#[derive(Debug)]
pub struct Wctablet {
    state: Arc<Mutex<State>>,
}

/// The input side: register it with the machine's
/// [`InputRouter`](super::input::InputRouter).
#[derive(Debug)]
pub struct WctabletInput {
    state: Arc<Mutex<State>>,
}

impl Wctablet {
    /// A tablet with its start-up string queued, and the handle that
    /// feeds it.
    pub fn new() -> (Wctablet, Arc<WctabletInput>) {
        let mut out = VecDeque::new();
        out.extend(FULL_CONFIG);
        let state = Arc::new(Mutex::new(State {
            speed: 0,
            line: Vec::new(),
            out,
            reporting: false,
            x: 0,
            y: 0,
            pen: false,
            dropped: 0,
        }));
        (
            Wctablet {
                state: Arc::clone(&state),
            },
            Arc::new(WctabletInput { state }),
        )
    }

    /// Replies and reports dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }
}

impl InputSink for WctabletInput {
    fn event(&self, ev: InputEvent) {
        let mut s = lock(&self.state);
        match ev {
            InputEvent::Abs(Axis::X, v) => s.x = v.clamp(0, super::input::ABS_MAX),
            InputEvent::Abs(Axis::Y, v) => s.y = v.clamp(0, super::input::ABS_MAX),
            InputEvent::Button(Button::Left, d) => s.pen = d,
            _ => {}
        }
    }

    fn sync(&self) {
        let mut s = lock(&self.state);
        if s.reporting {
            s.report();
        }
    }

    fn name(&self) -> &str {
        "wctablet"
    }
}

impl Chardev for Wctablet {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let mut s = lock(&self.state);
        if s.speed == SPEED {
            let room = LINE.saturating_sub(s.line.len());
            s.line.extend(buf.iter().take(room));
            s.commands();
            if s.line.len() >= LINE {
                // A line that never ends: forget it.
                s.line.clear();
            }
        }
        Ok(buf.len())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        Ok(drain_into(&mut lock(&self.state).out, buf))
    }

    fn set_line_speed(&mut self, bps: u32) {
        let mut s = lock(&self.state);
        if s.speed != bps {
            s.speed = bps;
            s.line.clear();
            s.out.clear();
            s.reporting = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(t: &mut Wctablet) -> Vec<u8> {
        let mut b = [0u8; 1024];
        let n = t.read(&mut b).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn start_string_then_commands_at_9600_only() {
        let (mut t, input) = Wctablet::new();
        assert_eq!(FULL_CONFIG.len(), 61);
        assert_eq!(read_all(&mut t), FULL_CONFIG);
        t.write(b"~#").unwrap();
        assert!(read_all(&mut t).is_empty(), "not at 9600 yet");
        t.set_line_speed(9600);
        t.write(b"@~#").unwrap();
        assert_eq!(read_all(&mut t), MODEL);
        t.write(b"RE\rTS\x41\r").unwrap();
        let mut want = CONFIG.to_vec();
        want.extend([0xa3, 0x7e, 0x16, 0x03, 0x7f, 0x7f, 0x00]);
        assert_eq!(read_all(&mut t), want);
        input.event(InputEvent::Abs(Axis::X, 0x4000));
        input.event(InputEvent::Abs(Axis::Y, 0x7fff));
        input.sync();
        assert!(read_all(&mut t).is_empty(), "not reporting before ST");
        t.write(b"ST\r").unwrap();
        // x = 16384 * 0.1537 = 2518 (0x9d6), y = 32767 * 0.1152 = 3774 (0xebe).
        assert_eq!(read_all(&mut t), [0xe0, 0x13, 0x56, 0, 0x1d, 0x3e, 0]);
        input.event(InputEvent::Button(Button::Left, true));
        input.sync();
        assert_eq!(read_all(&mut t)[0], 0xa0);
        t.write(b"SP\n").unwrap();
        input.sync();
        assert!(read_all(&mut t).is_empty());
        // Garbage and an endless line: read, ignored.
        t.write(&[0xff; 300]).unwrap();
        t.write(b"\r~#").unwrap();
        assert_eq!(read_all(&mut t), MODEL);
        t.set_line_speed(1200);
        input.sync();
        assert!(read_all(&mut t).is_empty());
    }
}
