//! Entropy sources (QEMU's `rng-builtin`, `rng-random`, `rng-egd`; the
//! deterministic one is ours, for tests).
//!
//! A source fills what it can right now and says how much; it never blocks
//! and never invents bytes. A source that runs dry returns what it has (maybe
//! nothing) and the device keeps the rest of the request pending until the
//! source is ready again.

use core::fmt;

use crate::chardev::{Chardev, ChardevError};

/// Why a source could not produce bytes.
#[derive(Debug)]
pub enum RngError {
    /// The operating system's generator failed.
    Os {
        /// What the OS said.
        code: i32,
    },
    /// The chardev to an EGD daemon failed.
    Chardev(ChardevError),
    /// Reading the source file or device failed.
    #[cfg(feature = "std")]
    Io {
        /// The path being read.
        path: std::path::PathBuf,
        /// The error.
        err: std::io::Error,
    },
}

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RngError::Os { code } => write!(f, "OS random generator failed (code {code})"),
            RngError::Chardev(e) => write!(f, "EGD daemon: {e}"),
            #[cfg(feature = "std")]
            RngError::Io { path, err } => {
                write!(f, "reading entropy from {}: {err}", path.display())
            }
        }
    }
}

impl core::error::Error for RngError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            #[cfg(feature = "std")]
            RngError::Io { err, .. } => Some(err),
            RngError::Chardev(e) => Some(e),
            _ => None,
        }
    }
}

/// A source of random bytes.
pub trait RngBackend {
    /// Fills the front of `buf` with as many bytes as are available now and
    /// returns how many; `Ok(0)` means "nothing now", not an error.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError>;

    /// Whether the source can never produce bytes again (a file read to its
    /// end). A device then stops waiting for it.
    fn is_exhausted(&self) -> bool {
        false
    }

    /// The file descriptor to wait on before bytes can arrive (an EGD
    /// daemon's socket), for the harness's event loop; `None` for sources
    /// that answer at once.
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

#[cfg(feature = "std")]
impl<B: RngBackend + ?Sized> RngBackend for std::boxed::Box<B> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        (**self).fill(buf)
    }
    fn is_exhausted(&self) -> bool {
        (**self).is_exhausted()
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
}

impl<B: RngBackend + ?Sized> RngBackend for &mut B {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        (**self).fill(buf)
    }
    fn is_exhausted(&self) -> bool {
        (**self).is_exhausted()
    }
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
}

/// A seeded, reproducible stream for tests: SplitMix64 (Steele, Lea and
/// Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014),
/// each 64-bit output emitted little-endian. A tiny guest can compute the
/// same stream to check every byte it receives. Not for cryptographic use.
#[derive(Clone, Debug)]
pub struct Deterministic {
    state: u64,
    /// Output bytes not yet handed out from the last 64-bit word.
    spare: [u8; 8],
    spare_len: usize,
}

impl Deterministic {
    /// A stream starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Deterministic {
            state: seed,
            spare: [0; 8],
            spare_len: 0,
        }
    }

    /// The next 64-bit output of SplitMix64.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl RngBackend for Deterministic {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        for b in buf.iter_mut() {
            if self.spare_len == 0 {
                self.spare = self.next_u64().to_le_bytes();
                self.spare_len = 8;
            }
            *b = self.spare[8 - self.spare_len];
            self.spare_len -= 1;
        }
        Ok(buf.len())
    }
}

/// An EGD daemon over a chardev (QEMU's `rng-egd,chardev=…`): the Entropy
/// Gathering Daemon protocol's "read entropy, blocking" command (byte 0x02,
/// then a count of 1 to 255); the daemon answers with that many bytes, in
/// order. Up to [`Egd::MAX_IN_FLIGHT`] bytes are asked for ahead (several
/// commands pipelined), so a large guest request does not wait one round
/// trip per 255 bytes. A slow daemon only delays, never blocks.
#[derive(Debug)]
pub struct Egd<C> {
    chardev: C,
    /// Bytes requested and not yet received.
    outstanding: usize,
    /// Command bytes the chardev has not taken yet.
    unsent: heapless::Vec<u8, EGD_UNSENT>,
}

/// Room for the command bytes of [`Egd::MAX_COMMANDS`] commands.
const EGD_UNSENT: usize = 32;

impl<C: Chardev> Egd<C> {
    /// The EGD command that reads entropy, blocking on the daemon's side.
    pub const CMD_READ_BLOCKING: u8 = 0x02;
    /// Commands in flight at most.
    pub const MAX_COMMANDS: usize = EGD_UNSENT / 2;
    /// Bytes asked for ahead at most (`MAX_COMMANDS` full commands).
    pub const MAX_IN_FLIGHT: usize = 255 * Self::MAX_COMMANDS;

    /// A client talking to a daemon through `chardev`.
    pub fn new(chardev: C) -> Self {
        Egd {
            chardev,
            outstanding: 0,
            unsent: heapless::Vec::new(),
        }
    }

    /// The chardev (for its readiness fd).
    pub fn chardev(&self) -> &C {
        &self.chardev
    }

    /// Asks for more so that up to `want` bytes (at most
    /// [`Egd::MAX_IN_FLIGHT`]) are on their way.
    fn ask(&mut self, want: usize) {
        let want = want.min(Self::MAX_IN_FLIGHT);
        while self.outstanding < want {
            let n = (want - self.outstanding).min(255);
            if self
                .unsent
                .extend_from_slice(&[Self::CMD_READ_BLOCKING, n as u8])
                .is_err()
            {
                break;
            }
            self.outstanding += n;
        }
    }

    fn flush_request(&mut self) -> Result<(), RngError> {
        while !self.unsent.is_empty() {
            let n = self
                .chardev
                .write(&self.unsent)
                .map_err(RngError::Chardev)?
                .min(self.unsent.len());
            if n == 0 {
                break;
            }
            let rest = heapless::Vec::from_slice(&self.unsent[n..]).unwrap_or_default();
            self.unsent = rest;
        }
        Ok(())
    }
}

impl<C: Chardev> RngBackend for Egd<C> {
    #[cfg(feature = "std")]
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.chardev.readiness_fd()
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.ask(buf.len());
        self.flush_request()?;
        let want = buf.len().min(self.outstanding);
        let got = self
            .chardev
            .read(&mut buf[..want])
            .map_err(RngError::Chardev)?
            .min(want);
        self.outstanding -= got;
        Ok(got)
    }
}

/// The operating system's generator (QEMU's `rng-builtin`), through the
/// `getrandom` crate.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Builtin;

#[cfg(feature = "std")]
impl RngBackend for Builtin {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        getrandom::fill(buf).map_err(|e| RngError::Os {
            code: e.raw_os_error().unwrap_or(-1),
        })?;
        Ok(buf.len())
    }
}

/// Bytes read from a file or device (QEMU's `rng-random,filename=…`): at
/// the end of a regular file the source is exhausted and hands out nothing
/// more.
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct RandomFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    eof: bool,
}

#[cfg(feature = "std")]
impl RandomFile {
    /// Opens `path` for reading (non-blocking, so a device that has no
    /// entropy right now answers at once).
    pub fn open(path: impl Into<std::path::PathBuf>) -> Result<Self, RngError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.into();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|err| RngError::Io {
                path: path.clone(),
                err,
            })?;
        Ok(RandomFile {
            path,
            file,
            eof: false,
        })
    }

    /// The path read.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(feature = "std")]
impl RngBackend for RandomFile {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        use std::io::Read;
        if self.eof || buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.file.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
                Err(err) => {
                    return Err(RngError::Io {
                        path: self.path.clone(),
                        err,
                    });
                }
            }
        }
    }

    fn is_exhausted(&self) -> bool {
        self.eof
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_reference_output() {
        // First outputs of SplitMix64 seeded with 0, as printed by the
        // reference C implementation (Vigna, xoshiro site, splitmix64.c).
        let mut d = Deterministic::new(0);
        assert_eq!(d.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(d.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn deterministic_stream_is_independent_of_request_sizes() {
        let mut a = Deterministic::new(42);
        let mut whole = [0u8; 100];
        a.fill(&mut whole).unwrap();
        let mut b = Deterministic::new(42);
        let mut pieces = [0u8; 100];
        let mut off = 0;
        for n in [1, 7, 8, 13, 71] {
            b.fill(&mut pieces[off..off + n]).unwrap();
            off += n;
        }
        assert_eq!(whole, pieces);
    }

    #[cfg(feature = "std")]
    #[test]
    fn random_file_hands_out_what_the_file_has_then_runs_dry() {
        let dir = std::env::temp_dir().join(format!("rng-file-{}", std::process::id()));
        std::fs::write(&dir, [1u8, 2, 3, 4, 5]).unwrap();
        let mut f = RandomFile::open(&dir).unwrap();
        let mut buf = [0u8; 3];
        assert_eq!(f.fill(&mut buf).unwrap(), 3);
        assert_eq!(f.fill(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], &[4, 5]);
        assert_eq!(f.fill(&mut buf).unwrap(), 0);
        assert!(f.is_exhausted());
        std::fs::remove_file(&dir).unwrap();
    }

    #[cfg(feature = "std")]
    #[test]
    fn missing_random_file_names_the_path() {
        let err = RandomFile::open("/nonexistent/entropy").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/entropy"));
    }

    #[cfg(feature = "std")]
    #[test]
    fn builtin_fills_everything() {
        let mut buf = [0u8; 64];
        assert_eq!(Builtin.fill(&mut buf).unwrap(), 64);
    }

    #[cfg(feature = "std")]
    #[test]
    fn egd_client_asks_a_real_daemon_and_gets_its_bytes() {
        use crate::chardev::os::{SocketAddr, SocketChardev};
        use std::io::{Read, Write};
        let path = std::env::temp_dir().join(format!("egd-{}", std::process::id()));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A small EGD daemon: answers each 0x02 N with N bytes of a
        // deterministic stream, in two pieces to exercise partial reads.
        let daemon = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut src = Deterministic::new(99);
            let mut cmd = [0u8; 2];
            let mut served = 0;
            while s.read_exact(&mut cmd).is_ok() {
                assert_eq!(cmd[0], 0x02);
                let mut out = vec![0u8; usize::from(cmd[1])];
                src.fill(&mut out).unwrap();
                let half = out.len() / 2;
                // The client may hang up with commands still pipelined.
                if s.write_all(&out[..half]).is_err() {
                    break;
                }
                served += half;
                std::thread::sleep(std::time::Duration::from_millis(1));
                if s.write_all(&out[half..]).is_err() {
                    break;
                }
                served += out.len() - half;
            }
            served
        });
        let chardev = SocketChardev::client(SocketAddr::Unix(path.clone()), None).unwrap();
        let mut egd = Egd::new(chardev);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 1000 && std::time::Instant::now() < deadline {
            // More than one command's worth: requests are pipelined.
            let mut buf = [0u8; 700];
            let n = egd.fill(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let mut want = vec![0u8; 1000];
        Deterministic::new(99).fill(&mut want).unwrap();
        assert_eq!(&got[..1000], &want[..], "bytes arrive in order");
        drop(egd);
        assert!(daemon.join().unwrap() >= 1000);
        let _ = std::fs::remove_file(path);
    }
}
