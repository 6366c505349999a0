//! `serial_pointer`: the serial pointing devices (`-chardev msmouse`,
//! `-chardev wctablet`, `backends::chardev::{msmouse, wctablet}`) under
//! any interleaving of what a guest does through its UART (bytes written,
//! line speed and modem lines changed, bytes read) and what the monitor
//! sends (relative and absolute movements, buttons, syncs). Never a
//! panic; a device never holds more than its queue, and a mouse that is
//! not powered says nothing.

use arbitrary::{Arbitrary, Unstructured};
use backends::chardev::Chardev;
use backends::chardev::input::{Axis, Button, InputEvent, InputSink};
use backends::chardev::msmouse::{self, Msmouse};
use backends::chardev::wctablet::{self, Wctablet};

#[derive(Arbitrary, Debug)]
enum Op {
    Write(Vec<u8>),
    Speed(u32),
    Modem(bool, bool),
    Read(u16),
    Rel(bool, i32),
    Abs(bool, i32),
    Button(u8, bool),
    Sync,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let (mut mouse, mouse_in) = Msmouse::new();
    let (mut tablet, tablet_in) = Wctablet::new();
    let mut powered = false;
    let mut buf = vec![0u8; 4096];
    for op in ops.iter().take(512) {
        let ev = match op {
            Op::Write(b) => {
                assert_eq!(mouse.write(b).ok(), Some(b.len()));
                assert_eq!(tablet.write(b).ok(), Some(b.len()));
                None
            }
            Op::Speed(s) => {
                mouse.set_line_speed(*s);
                tablet.set_line_speed(*s);
                None
            }
            Op::Modem(dtr, rts) => {
                mouse.set_modem_lines(*dtr, *rts);
                tablet.set_modem_lines(*dtr, *rts);
                powered = *dtr || *rts;
                None
            }
            Op::Read(n) => {
                let n = usize::from(*n).min(buf.len());
                let got = mouse.read(&mut buf[..n]).unwrap_or(0);
                assert!(got <= msmouse::QUEUE.min(n));
                if !powered {
                    assert_eq!(got, 0, "an unpowered mouse spoke");
                }
                let got = tablet.read(&mut buf[..n]).unwrap_or(0);
                assert!(got <= wctablet::QUEUE.min(n));
                None
            }
            Op::Rel(x, v) => Some(InputEvent::Rel(if *x { Axis::X } else { Axis::Y }, *v)),
            Op::Abs(x, v) => Some(InputEvent::Abs(if *x { Axis::X } else { Axis::Y }, *v)),
            Op::Button(b, d) => Some(InputEvent::Button(
                match b % 3 {
                    0 => Button::Left,
                    1 => Button::Right,
                    _ => Button::Middle,
                },
                *d,
            )),
            Op::Sync => {
                mouse_in.sync();
                tablet_in.sync();
                None
            }
        };
        if let Some(e) = ev {
            mouse_in.event(e);
            tablet_in.event(e);
        }
    }
}
