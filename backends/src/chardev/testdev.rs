//! QEMU's `-chardev testdev`: the control channel test suites such as
//! kvm-unit-tests write to (usually through a virtio console port) to end
//! the run. Output is read as commands: optional blanks, a decimal
//! argument, optional blanks, one command letter; `q` asks to quit with
//! the argument as status (QEMU then exits with `(status << 1) | 1`).
//! Other letters are consumed and ignored. Nothing is ever read back.

use alloc::boxed::Box;

use super::{Chardev, ChardevError};

/// Where a parsed command stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the argument (blanks skipped).
    Start,
    /// In the argument's digits.
    Number,
    /// Blanks after the argument.
    AfterNumber,
}

/// The testdev chardev: `on_quit` is called with the status of every `q`.
pub struct Testdev {
    state: State,
    arg: u32,
    on_quit: Box<dyn FnMut(u32) + Send>,
    quits: u64,
}

impl core::fmt::Debug for Testdev {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Testdev")
            .field("state", &self.state)
            .field("arg", &self.arg)
            .field("quits", &self.quits)
            .finish_non_exhaustive()
    }
}

impl Testdev {
    /// A testdev that calls `on_quit(status)` for each quit command.
    pub fn new(on_quit: impl FnMut(u32) + Send + 'static) -> Testdev {
        Testdev {
            state: State::Start,
            arg: 0,
            on_quit: Box::new(on_quit),
            quits: 0,
        }
    }

    /// Quit commands seen.
    pub fn quits(&self) -> u64 {
        self.quits
    }

    fn byte(&mut self, c: u8) {
        let blank = matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
        match (self.state, c) {
            (State::Start | State::AfterNumber, _) if blank => {}
            (State::Number, _) if blank => self.state = State::AfterNumber,
            (State::Start | State::Number, b'0'..=b'9') => {
                self.arg = self.arg.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
                self.state = State::Number;
            }
            (_, cmd) => {
                if cmd == b'q' {
                    self.quits += 1;
                    (self.on_quit)(self.arg);
                }
                self.state = State::Start;
                self.arg = 0;
            }
        }
    }
}

impl Chardev for Testdev {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        for &c in buf {
            self.byte(c);
        }
        Ok(buf.len())
    }

    fn read(&mut self, _buf: &mut [u8]) -> Result<usize, ChardevError> {
        Ok(0)
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::vec::Vec;

    fn feed(parts: &[&[u8]]) -> Vec<u32> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let mut t = Testdev::new(move |st| s.lock().unwrap().push(st));
        for p in parts {
            assert_eq!(t.write(p).unwrap(), p.len());
        }
        let mut b = [0u8; 4];
        assert_eq!(t.read(&mut b).unwrap(), 0);
        seen.lock().unwrap().clone()
    }

    /// kvm-unit-tests' `chr_testdev_exit` writes `"%dq"`: the status is
    /// the number, split across writes or not.
    #[test]
    fn quit_with_a_status() {
        assert_eq!(feed(&[b"0q"]), [0]);
        assert_eq!(feed(&[b"  12 ", b" q"]), [12]);
        assert_eq!(feed(&[b"1", b"2", b"3q"]), [123]);
        assert_eq!(feed(&[b"q"]), [0]);
    }

    /// Other letters are commands that do nothing; text goes by.
    #[test]
    fn other_bytes_are_ignored() {
        assert_eq!(feed(&[b"hello 7x world"]), Vec::<u32>::new());
        assert_eq!(feed(&[b"abc9q"]), [9]);
        assert_eq!(feed(&[b"4294967299q"]), [3]);
        assert_eq!(feed(&[&[0xff, 0, b'5', b'q', b'q']]), [5, 0]);
    }
}
