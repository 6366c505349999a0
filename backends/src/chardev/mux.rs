//! One chardev shared by several frontends (QEMU's `-chardev …,mux=on`):
//! each frontend gets a [`MuxPort`]; their output goes to the backend
//! interleaved as it comes; input goes to the port that has the focus.
//! `Ctrl-A` starts an escape, as in QEMU:
//!
//! - `C-a c`: the focus moves to the next port (and back to the first
//!   after the last);
//! - `C-a C-a`: a literal `C-a` to the port with the focus;
//! - `C-a h` (or `?`): a list of the escapes, written to the backend;
//! - `C-a t`: a timestamp before each output line, or no more;
//! - `C-a x`, `C-a s`, `C-a b`: quitting, saving disks and sending a break
//!   are the monitor's, which a chardev cannot do: the backend is told so;
//! - any other key after `C-a` is dropped with the escape.
//!
//! The focus starts on the first port. Input is taken from the backend
//! only while the port with the focus has room for it (at most
//! [`QUEUE_LIMIT`] bytes queued): the rest waits in the backend (the
//! kernel's socket buffer), nothing is dropped, and a reader never spins
//! on a flood. A port that never reads its input holds up the input for
//! everyone, as a frontend that stops reading does in QEMU; switching the
//! focus away takes typing `C-a c`, which also waits behind it.

use std::collections::VecDeque;
use std::string::String;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use std::vec::Vec;

use super::{Chardev, ChardevError};

/// The escape key (`Ctrl-A`).
pub const ESCAPE: u8 = 0x01;
/// Input bytes kept per port until it reads them.
pub const QUEUE_LIMIT: usize = 64 << 10;
/// Most bytes taken from the backend per call.
pub const PUMP_BUDGET: usize = 16 << 10;

/// What [`MuxPort`]s share.
#[derive(Debug)]
struct Shared<C> {
    backend: C,
    focus: usize,
    queues: Vec<VecDeque<u8>>,
    escape: bool,
    timestamps: bool,
    /// The last output byte ended a line (a timestamp is due).
    at_line_start: bool,
    /// Control messages not yet written to the backend.
    notice: Vec<u8>,
}

/// One frontend's side of a shared chardev.
#[derive(Debug)]
pub struct MuxPort<C> {
    shared: Arc<Mutex<Shared<C>>>,
    index: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shares `backend` among `ports` frontends (at least one).
pub fn mux<C: Chardev>(backend: C, ports: usize) -> Vec<MuxPort<C>> {
    let ports = ports.max(1);
    let shared = Arc::new(Mutex::new(Shared {
        backend,
        focus: 0,
        queues: (0..ports).map(|_| VecDeque::new()).collect(),
        escape: false,
        timestamps: false,
        at_line_start: true,
        notice: Vec::new(),
    }));
    (0..ports)
        .map(|index| MuxPort {
            shared: Arc::clone(&shared),
            index,
        })
        .collect()
}

const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit (not available: the monitor ends runs)\r\nC-a s    save disks (not available)\r\nC-a b    send break (not available)\r\nC-a t    toggle timestamps on output lines\r\nC-a c    switch to the next frontend\r\nC-a C-a  send C-a\r\n";

impl<C: Chardev> Shared<C> {
    /// Takes the backend's input, while the focused port has room, and
    /// sorts it into the ports' queues: at most [`PUMP_BUDGET`] bytes per
    /// call, a byte at a time while an escape is open.
    fn pump(&mut self) -> Result<(), ChardevError> {
        let mut taken = 0;
        while taken < PUMP_BUDGET {
            let room = QUEUE_LIMIT - self.queues[self.focus].len();
            if room == 0 {
                break;
            }
            // Up to the next possible escape: one byte at a time while an
            // escape is open, else as much as there is room for.
            let mut buf = [0u8; 512];
            let want = if self.escape { 1 } else { room.min(buf.len()) };
            let n = self.backend.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            taken += n;
            // The room is checked per read: after a switch within this
            // read, the new focus may pass its limit by at most one read.
            for &b in &buf[..n] {
                self.input(b);
            }
        }
        self.flush_notice()
    }

    fn input(&mut self, b: u8) {
        if !self.escape {
            if b == ESCAPE {
                self.escape = true;
            } else {
                self.deliver(b);
            }
            return;
        }
        self.escape = false;
        match b {
            ESCAPE => self.deliver(ESCAPE),
            b'c' => self.focus = (self.focus + 1) % self.queues.len(),
            b'h' | b'?' => self.notice.extend_from_slice(HELP.as_bytes()),
            b't' => self.timestamps = !self.timestamps,
            b'x' | b's' | b'b' => self.notice.extend_from_slice(
                b"\r\n[mux: exit, save and break are the monitor's, not this chardev's]\r\n",
            ),
            _ => {}
        }
    }

    fn deliver(&mut self, b: u8) {
        self.queues[self.focus].push_back(b);
    }

    /// Writes pending control messages (dropping what the backend will
    /// not take now: they are for a person, not a program).
    fn flush_notice(&mut self) -> Result<(), ChardevError> {
        if !self.notice.is_empty() {
            let notice = core::mem::take(&mut self.notice);
            self.backend.write(&notice)?;
        }
        Ok(())
    }

    fn output(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        if !self.timestamps {
            return self.backend.write(buf);
        }
        // Line by line, so that a stamp goes before each line's first byte.
        let mut done = 0;
        while done < buf.len() {
            if self.at_line_start {
                let stamp = stamp();
                self.backend.write(stamp.as_bytes())?;
                self.at_line_start = false;
            }
            let rest = &buf[done..];
            let line = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            let n = self.backend.write(&rest[..line])?;
            done += n;
            if n == line && rest[line - 1] == b'\n' {
                self.at_line_start = true;
            }
            if n < line {
                break;
            }
        }
        Ok(done)
    }
}

/// `[seconds.millis] `, since the Unix epoch.
fn stamp() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("[{}.{:03}] ", t.as_secs(), t.subsec_millis())
}

impl<C: Chardev> MuxPort<C> {
    /// This port's index (0 is the first frontend).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The port that has the input focus now.
    pub fn focus(&self) -> usize {
        lock(&self.shared).focus
    }

    /// Input bytes waiting for this port.
    pub fn queued(&self) -> usize {
        lock(&self.shared).queues[self.index].len()
    }
}

impl<C: Chardev> Chardev for MuxPort<C> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        let mut s = lock(&self.shared);
        s.flush_notice()?;
        s.output(buf)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        let mut s = lock(&self.shared);
        // What is queued goes first; a backend error is reported only
        // once nothing is left for this port.
        let pumped = s.pump();
        if s.queues[self.index].is_empty() {
            pumped?;
        }
        let q = &mut s.queues[self.index];
        let n = buf.len().min(q.len());
        for (dst, src) in buf.iter_mut().zip(q.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    /// The backend's: every port wakes when input comes, and the one it
    /// is for takes it.
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        lock(&self.shared).backend.readiness_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chardev::RingBuf;

    /// A backend the test feeds input to and reads output from.
    #[derive(Debug, Default, Clone)]
    struct Wire(Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

    impl Chardev for Wire {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
            lock(&self.0).1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
            let mut w = lock(&self.0);
            let n = buf.len().min(w.0.len());
            buf[..n].copy_from_slice(&w.0[..n]);
            w.0.drain(..n);
            Ok(n)
        }
    }

    impl Wire {
        fn type_in(&self, b: &[u8]) {
            lock(&self.0).0.extend_from_slice(b);
        }
        fn take_out(&self) -> Vec<u8> {
            core::mem::take(&mut lock(&self.0).1)
        }
    }

    fn read_all(p: &mut MuxPort<Wire>) -> Vec<u8> {
        let mut b = [0u8; 256];
        let n = p.read(&mut b).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn input_follows_the_focus_and_output_interleaves() {
        let wire = Wire::default();
        let mut ports = mux(wire.clone(), 3);
        let (a, rest) = ports.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        let (a, b, c) = (&mut a[0], &mut b[0], &mut c[0]);
        wire.type_in(b"one");
        assert_eq!(read_all(b), b"");
        assert_eq!(read_all(a), b"one");
        // Whichever port reads first sorts all of it.
        wire.type_in(b"\x01ctwo\x01c\x01\x01three\x01cfour");
        assert_eq!(read_all(c), b"\x01three");
        assert_eq!(read_all(b), b"two");
        assert_eq!(read_all(c), b"");
        assert_eq!(read_all(a), b"four");
        assert_eq!(a.focus(), 0);
        // Switching says nothing (as QEMU).
        assert!(wire.take_out().is_empty());
        a.write(b"from a\n").unwrap();
        c.write(b"from c\n").unwrap();
        assert_eq!(wire.take_out(), b"from a\nfrom c\n");
    }

    #[test]
    fn escapes_help_timestamps_and_what_a_chardev_cannot_do() {
        let wire = Wire::default();
        let mut ports = mux(wire.clone(), 1);
        let p = &mut ports[0];
        wire.type_in(b"\x01h\x01x\x01zq\x01t");
        assert_eq!(read_all(p), b"q");
        let out = String::from_utf8(wire.take_out()).unwrap();
        assert!(out.contains("C-a c    switch"), "{out}");
        assert!(out.contains("the monitor's"), "{out}");
        p.write(b"a\nb").unwrap();
        p.write(b"c\n").unwrap();
        let out = String::from_utf8(wire.take_out()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with('[') && lines[0].ends_with("] a"),
            "{out}"
        );
        assert!(lines[1].ends_with("] bc"), "{out}");
    }

    #[test]
    fn input_waits_in_the_backend_while_the_focused_port_is_full() {
        let wire = Wire::default();
        let mut ports = mux(wire.clone(), 2);
        wire.type_in(&vec![b'x'; QUEUE_LIMIT + 10]);
        wire.type_in(b"\x01cy");
        // Port 1 reads: the pump fills port 0's queue and stops; the
        // rest (and the switch) wait in the backend, nothing is lost.
        let mut reads = 0;
        while ports[0].queued() < QUEUE_LIMIT {
            assert_eq!(read_all(&mut ports[1]), b"");
            reads += 1;
            assert!(reads < 100, "the pump never filled the queue");
        }
        assert_eq!(lock(&wire.0).0.len(), 10 + 3);
        // Port 0 drains; then port 1 gets its byte.
        let mut got = 0;
        while got < QUEUE_LIMIT + 10 {
            let n = read_all(&mut ports[0]).len();
            assert!(n > 0, "port 0 starved at {got}");
            got += n;
        }
        assert_eq!(read_all(&mut ports[1]), b"y");
        // Over a ring buffer too (no fd).
        let mut rb = mux(RingBuf::<64>::default(), 2);
        assert_eq!(rb[1].write(b"hi").unwrap(), 2);
        assert!(rb[0].readiness_fd().is_none());
    }

    #[test]
    fn queued_input_is_read_before_a_backend_error_is_reported() {
        struct Broken(bool);
        impl Chardev for Broken {
            fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
                Ok(buf.len())
            }
            fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(ChardevError::Io {
                        what: "tty".into(),
                        err: std::io::Error::other("hung up"),
                    });
                }
                buf[..2].copy_from_slice(b"ok");
                Ok(2)
            }
        }
        let mut p = mux(Broken(false), 1);
        let mut b = [0u8; 1];
        // The first read takes "ok" then meets the error: "o" still comes.
        assert_eq!(p[0].read(&mut b).unwrap(), 1);
        assert_eq!(p[0].read(&mut b).unwrap(), 1);
        assert!(p[0].read(&mut b).is_err());
    }
}
