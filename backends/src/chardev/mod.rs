//! Character devices (QEMU's `-chardev`): byte streams a console or an EGD
//! client talks through.
//!
//! A chardev never blocks: `write` takes what it can now, `read` returns what
//! is there now (`Ok(0)` is "nothing yet"), and under `std` a chardev that
//! waits on the OS exposes a readiness fd for the harness's event loop. The
//! in-process kinds ([`Null`], [`RingBuf`]) need no OS; files, pipes,
//! sockets, ptys and stdio are in [`os`] under `std`; [`mux`] shares one
//! chardev among several frontends (`mux=on`); [`testdev`] is QEMU's
//! test-suite control channel; [`msmouse`] and [`wctablet`] are serial
//! pointing devices fed with [`input`] events.

use core::fmt;

#[cfg(feature = "std")]
pub mod input;
#[cfg(feature = "std")]
pub mod msmouse;
#[cfg(feature = "std")]
pub mod mux;
#[cfg(feature = "std")]
pub mod os;
#[cfg(feature = "alloc")]
pub mod testdev;
#[cfg(feature = "std")]
pub mod wctablet;

/// Why a chardev operation failed.
#[derive(Debug)]
pub enum ChardevError {
    /// The peer went away (a socket closed); writes are dropped until it
    /// reconnects.
    Disconnected,
    /// An operating-system error on the named resource.
    #[cfg(feature = "std")]
    Io {
        /// What the chardev is connected to (a path or an address).
        what: std::string::String,
        /// The error.
        err: std::io::Error,
    },
}

impl fmt::Display for ChardevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChardevError::Disconnected => write!(f, "chardev peer disconnected"),
            #[cfg(feature = "std")]
            ChardevError::Io { what, err } => write!(f, "chardev {what}: {err}"),
        }
    }
}

impl core::error::Error for ChardevError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            #[cfg(feature = "std")]
            ChardevError::Io { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// A byte stream between a device and the host.
pub trait Chardev {
    /// Takes bytes from the device (guest output); returns how many were
    /// accepted now, which may be fewer than `buf.len()` (the rest is
    /// offered again later).
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError>;

    /// Gives bytes to the device (guest input); `Ok(0)` means none now.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError>;

    /// The file descriptor to wait on for input (and reconnection), for
    /// the harness's epoll loop; `None` for chardevs that need no waiting.
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// A UART in front changed its modem control outputs (QEMU's
    /// `CHR_IOCTL_SERIAL_SET_TIOCM`): a serial mouse is powered by them.
    /// Ignored by default.
    fn set_modem_lines(&mut self, dtr: bool, rts: bool) {
        let _ = (dtr, rts);
    }

    /// A UART in front changed its line speed, in bits per second (QEMU's
    /// `CHR_IOCTL_SERIAL_SET_PARAMS`): a serial tablet talks only at
    /// 9600. Ignored by default.
    fn set_line_speed(&mut self, bps: u32) {
        let _ = bps;
    }
}

impl<C: Chardev + ?Sized> Chardev for &mut C {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        (**self).write(buf)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        (**self).read(buf)
    }
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
    fn set_modem_lines(&mut self, dtr: bool, rts: bool) {
        (**self).set_modem_lines(dtr, rts)
    }
    fn set_line_speed(&mut self, bps: u32) {
        (**self).set_line_speed(bps)
    }
}

#[cfg(feature = "std")]
impl<C: Chardev + ?Sized> Chardev for std::boxed::Box<C> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        (**self).write(buf)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        (**self).read(buf)
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
    fn set_modem_lines(&mut self, dtr: bool, rts: bool) {
        (**self).set_modem_lines(dtr, rts)
    }
    fn set_line_speed(&mut self, bps: u32) {
        (**self).set_line_speed(bps)
    }
}

/// Discards output and never has input (QEMU's `-chardev null`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Null;

impl Chardev for Null {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        Ok(buf.len())
    }
    fn read(&mut self, _buf: &mut [u8]) -> Result<usize, ChardevError> {
        Ok(0)
    }
}

/// A fixed-size in-memory chardev (QEMU's `-chardev ringbuf,size=N`): output
/// goes into a ring of `N` bytes that keeps the newest bytes; input is what
/// the host pushes with [`push_input`](RingBuf::push_input). Needs no OS.
#[derive(Clone, Debug)]
pub struct RingBuf<const N: usize> {
    out: heapless::Deque<u8, N>,
    input: heapless::Deque<u8, N>,
    /// Output bytes overwritten because the ring was full.
    dropped: u64,
}

impl<const N: usize> Default for RingBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RingBuf<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        RingBuf {
            out: heapless::Deque::new(),
            input: heapless::Deque::new(),
            dropped: 0,
        }
    }

    /// Takes up to `buf.len()` bytes of output, oldest first.
    pub fn take_output(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for b in buf.iter_mut() {
            match self.out.pop_front() {
                Some(v) => *b = v,
                None => break,
            }
            n += 1;
        }
        n
    }

    /// Queues input for the device; returns how many bytes fitted.
    pub fn push_input(&mut self, data: &[u8]) -> usize {
        data.iter()
            .take_while(|&&b| self.input.push_back(b).is_ok())
            .count()
    }

    /// Output bytes lost because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<const N: usize> Chardev for RingBuf<N> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ChardevError> {
        for &b in buf {
            if self.out.is_full() {
                self.out.pop_front();
                self.dropped += 1;
            }
            // Room was just made.
            let _ = self.out.push_back(b);
        }
        Ok(buf.len())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ChardevError> {
        let mut n = 0;
        for b in buf.iter_mut() {
            match self.input.pop_front() {
                Some(v) => *b = v,
                None => break,
            }
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringbuf_keeps_the_newest_output_and_counts_what_it_drops() {
        let mut r = RingBuf::<4>::new();
        assert_eq!(r.write(b"abcdef").unwrap(), 6);
        let mut out = [0u8; 8];
        assert_eq!(r.take_output(&mut out), 4);
        assert_eq!(&out[..4], b"cdef");
        assert_eq!(r.dropped(), 2);
        assert_eq!(r.push_input(b"xyz12"), 4);
        let mut inb = [0u8; 8];
        assert_eq!(r.read(&mut inb).unwrap(), 4);
        assert_eq!(&inb[..4], b"xyz1");
        assert_eq!(r.read(&mut inb).unwrap(), 0);
    }

    #[test]
    fn null_swallows_everything() {
        assert_eq!(Null.write(&[1; 100]).unwrap(), 100);
        assert_eq!(Null.read(&mut [0; 10]).unwrap(), 0);
    }
}
