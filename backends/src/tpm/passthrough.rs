//! A host TPM as a TPM backend (QEMU's `-tpmdev passthrough,path=…`).
//!
//! The host's TPM character device (`/dev/tpm0`, or the resource manager's
//! `/dev/tpmrm0`) takes one whole command per `write` and gives the whole
//! response to the next `read`. This backend writes the command in one
//! call and reads until the response's header says it is complete, so the
//! same code also serves a TPM at the other end of a stream socket (a
//! `swtpm chardev --fd N`, which stands in for a host TPM in our tests).
//!
//! Cancelling is the kernel's: `-` written to the TPM's sysfs `cancel`
//! file (`/sys/class/tpm/tpmN/device/cancel`, or the `cancel-path` option).
//! The host's driver holds locality 0 and the TPM is already started, so
//! [`TpmBackend::startup`] only settles the buffer size, and commands for
//! another locality are refused. The established flag reads as clear and
//! cannot be reset, as in QEMU's passthrough.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{HEADER_LEN, TpmBackend, TpmError, check_command, header_size};

/// How long a command may run before the host TPM is taken for dead.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest buffer a TPM 2.0 is asked for (TPM 2.0's usual 4 KiB).
pub const MAX_BUFFER: u32 = 4096;

/// TPM2_GetCapability of `TPM_CAP_TPM_PROPERTIES` from
/// `TPM_PT_MAX_COMMAND_SIZE` (0x11e), two properties: the command and
/// response size limits (TPM 2.0 Part 2, 6.13 and 6.12; Part 3, 30.2).
const GET_MAX_SIZES: [u8; 22] = [
    0x80, 0x01, 0, 0, 0, 22, 0, 0, 0x01, 0x7a, 0, 0, 0, 6, 0, 0, 0x01, 0x1e, 0, 0, 0, 2,
];

/// A host TPM character device and its cancel file.
#[derive(Debug)]
pub struct Passthrough {
    device: Mutex<File>,
    cancel: Mutex<Option<File>>,
    timeout: Duration,
    buffer_size: AtomicU32,
    /// An exchange failed part-way (a response that did not fit, a
    /// timeout): the device is out of step and is not read again.
    out_of_step: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sysfs cancel file the kernel gives `device` (`/dev/tpm0` →
/// `/sys/class/tpm/tpm0/device/cancel`), as QEMU guesses it.
pub fn sysfs_cancel_path(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    // The resource manager node shares its TPM's sysfs directory.
    let name = name
        .strip_prefix("tpmrm")
        .map_or(name.to_string(), |n| format!("tpm{n}"));
    Some(Path::new("/sys/class/tpm").join(name).join("device/cancel"))
}

impl Passthrough {
    /// Opens the host TPM at `device` with its cancel file: `cancel` if
    /// given, else the one [`sysfs_cancel_path`] guesses (an error if it
    /// cannot be opened, as QEMU's).
    pub fn open(device: &Path, cancel: Option<&Path>) -> Result<Passthrough, TpmError> {
        let dev = OpenOptions::new().read(true).write(true).open(device)?;
        let cancel_path = match cancel {
            Some(p) => p.to_path_buf(),
            None => sysfs_cancel_path(device)
                .ok_or(TpmError::Unsupported("a cancel path for this device name"))?,
        };
        let cancel = OpenOptions::new().write(true).open(&cancel_path)?;
        Ok(Self::from_parts(dev, Some(cancel)))
    }

    /// A TPM at the other end of `fd` (a character device or a stream
    /// socket), with `cancel` as its cancel file if it has one.
    pub fn from_fd(fd: OwnedFd, cancel: Option<File>) -> Passthrough {
        Self::from_parts(File::from(fd), cancel)
    }

    fn from_parts(device: File, cancel: Option<File>) -> Passthrough {
        Passthrough {
            device: Mutex::new(device),
            cancel: Mutex::new(cancel),
            timeout: DEFAULT_TIMEOUT,
            buffer_size: AtomicU32::new(MAX_BUFFER),
            out_of_step: Mutex::new(false),
        }
    }

    /// The same, taking `timeout` for a command.
    pub fn with_timeout(mut self, timeout: Duration) -> Passthrough {
        self.timeout = timeout;
        self
    }

    /// Writes `command` and reads its response into `response`.
    fn transact(&self, command: &[u8], response: &mut [u8]) -> Result<usize, TpmError> {
        let mut out_of_step = lock(&self.out_of_step);
        if *out_of_step {
            return Err(TpmError::BadResponse(
                "an earlier exchange failed part-way: the device is out of step",
            ));
        }
        if response.len() < HEADER_LEN {
            return Err(TpmError::BadCommand(
                "a response buffer smaller than a header",
            ));
        }
        let mut dev = lock(&self.device);
        let r = exchange(&mut dev, command, response, self.timeout);
        if r.is_err() {
            // A partial or late response may follow: nothing more is read.
            *out_of_step = true;
        }
        r
    }
}

/// Writes `command` to the device in one call and reads until the
/// response's header says it is complete.
fn exchange(
    dev: &mut File,
    command: &[u8],
    response: &mut [u8],
    timeout: Duration,
) -> Result<usize, TpmError> {
    let n = write_once(dev, command)?;
    if n != command.len() {
        return Err(TpmError::Io(io::Error::new(
            io::ErrorKind::WriteZero,
            "the TPM device took part of a command",
        )));
    }
    let mut got = 0;
    loop {
        // The first read asks for the whole buffer: a TPM device hands
        // over the whole response to one read (older kernels drop what a
        // short read leaves).
        let end = if got < HEADER_LEN {
            response.len()
        } else {
            let size = header_size(&response[..HEADER_LEN]).unwrap_or(0) as usize;
            if !(HEADER_LEN..=response.len()).contains(&size) {
                return Err(TpmError::BadResponse(
                    "a size smaller than the header or larger than the response buffer",
                ));
            }
            if got > size {
                return Err(TpmError::BadResponse("more bytes than the response's size"));
            }
            if got == size {
                return Ok(size);
            }
            size
        };
        wait_readable(dev, timeout)?;
        let n = dev.read(&mut response[got..end])?;
        if n == 0 {
            return Err(TpmError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the TPM device closed in the middle of a response",
            )));
        }
        got += n;
    }
}

/// One write of `bytes`: `send` without `SIGPIPE` where `f` is a socket
/// (a TPM that went away is an error, not a signal that ends the
/// process), a plain `write` on a device.
fn write_once(f: &mut File, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is valid for reads of its length during the call.
    let n = unsafe {
        libc::send(
            f.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOTSOCK) {
        return f.write(bytes);
    }
    Err(e)
}

/// Reads and drops whatever `f` has ready (a late or oversized
/// response).
fn drain(f: &File) -> Result<(), TpmError> {
    let mut junk = [0u8; 4096];
    loop {
        let mut p = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        if r <= 0 || p.revents & libc::POLLIN == 0 {
            return Ok(());
        }
        if (&*f).read(&mut junk)? == 0 {
            return Err(TpmError::Io(io::Error::from(io::ErrorKind::UnexpectedEof)));
        }
    }
}

/// Waits until `f` has bytes to read, or `timeout` (an error).
fn wait_readable(f: &File, timeout: Duration) -> Result<(), TpmError> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        match r {
            0 => {
                return Err(TpmError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the TPM device gave no response within {timeout:?}"),
                )));
            }
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            _ => return Ok(()),
        }
    }
}

impl TpmBackend for Passthrough {
    /// Asks the TPM its command and response size limits
    /// (TPM2_GetCapability) and uses the smallest of those and
    /// `buffer_size`, as QEMU's passthrough does.
    fn startup(&self, buffer_size: u32) -> Result<u32, TpmError> {
        // A restart after a failed exchange: drop what the device still
        // holds, then talk to it again.
        {
            let mut out_of_step = lock(&self.out_of_step);
            if *out_of_step {
                drain(&lock(&self.device))?;
                *out_of_step = false;
            }
        }
        let mut resp = [0u8; 64];
        let n = self.transact(&GET_MAX_SIZES, &mut resp)?;
        let r = &resp[..n];
        let rc = r
            .get(6..10)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if rc != Some(0) {
            return Err(TpmError::BadResponse(
                "TPM2_GetCapability of the size limits failed",
            ));
        }
        // moreData, capability, count, then (property, value) pairs.
        let mut size = buffer_size.min(MAX_BUFFER);
        let count = r
            .get(15..19)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        for i in 0..count.min(2) as usize {
            let at = 19 + i * 8;
            let Some(pair) = r.get(at..at + 8) else {
                return Err(TpmError::BadResponse(
                    "a property list shorter than its count",
                ));
            };
            let property = u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let value = u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]);
            // TPM_PT_MAX_COMMAND_SIZE and TPM_PT_MAX_RESPONSE_SIZE only: a
            // TPM without them lists the next properties instead.
            if property == 0x11e || property == 0x11f {
                size = size.min(value);
            }
        }
        if (size as usize) < HEADER_LEN {
            return Err(TpmError::BadResponse("a TPM buffer smaller than a header"));
        }
        self.buffer_size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn command(
        &self,
        locality: u8,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, TpmError> {
        if locality != 0 {
            return Err(TpmError::Unsupported(
                "a locality other than 0 on a host TPM (its driver holds locality 0)",
            ));
        }
        check_command(command, self.buffer_size())?;
        self.transact(command, response)
    }

    fn cancel(&self) -> Result<(), TpmError> {
        let mut cancel = lock(&self.cancel);
        let f = cancel
            .as_mut()
            .ok_or(TpmError::Unsupported("cancel (no cancel path)"))?;
        f.write_all(b"-")?;
        Ok(())
    }

    fn buffer_size(&self) -> u32 {
        self.buffer_size.load(Ordering::Relaxed)
    }

    fn established(&self) -> Result<bool, TpmError> {
        Ok(false)
    }

    fn reset_established(&self, _locality: u8) -> Result<(), TpmError> {
        Err(TpmError::Unsupported(
            "resetting tpmEstablished on a host TPM",
        ))
    }

    fn stop(&self) -> Result<(), TpmError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cancel_path_is_guessed_from_the_device_name() {
        assert_eq!(
            sysfs_cancel_path(Path::new("/dev/tpm0")).unwrap(),
            Path::new("/sys/class/tpm/tpm0/device/cancel")
        );
        assert_eq!(
            sysfs_cancel_path(Path::new("/dev/tpmrm1")).unwrap(),
            Path::new("/sys/class/tpm/tpm1/device/cancel")
        );
    }

    #[test]
    fn a_peer_that_answers_garbage_or_hangs_up_is_an_error() {
        use std::os::unix::net::UnixStream;
        for (answer, want) in [
            (&[0x80, 0x01, 0, 0, 0, 4, 0, 0, 0, 0][..], "size smaller"),
            (
                &[0x80, 0x01, 0, 1, 0, 0, 0, 0, 0, 0][..],
                "larger than the response",
            ),
            (&[0x80, 0x01, 0, 0][..], "closed in the middle"),
        ] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            let p = Passthrough::from_fd(ours.into(), None).with_timeout(Duration::from_secs(5));
            theirs.write_all(answer).unwrap();
            if answer.len() < HEADER_LEN {
                theirs.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut resp = [0u8; 64];
            let e = p.command(0, &[0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b], &mut resp);
            let msg = e.unwrap_err().to_string();
            assert!(msg.contains(want), "{msg}");
        }
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let p = Passthrough::from_fd(ours.into(), None);
        let mut resp = [0u8; 64];
        assert!(matches!(
            p.command(2, &[0; 10], &mut resp),
            Err(TpmError::Unsupported(_))
        ));
        assert!(matches!(p.cancel(), Err(TpmError::Unsupported(_))));
        assert!(matches!(
            p.command(0, &[0; 4], &mut resp),
            Err(TpmError::BadCommand(_))
        ));
    }

    #[test]
    fn a_silent_device_times_out() {
        use std::os::unix::net::UnixStream;
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let p = Passthrough::from_fd(ours.into(), None).with_timeout(Duration::from_millis(50));
        let mut resp = [0u8; 64];
        let msg = p
            .command(0, &[0x80, 0x01, 0, 0, 0, 10, 0, 0, 1, 0x7b], &mut resp)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no response within"), "{msg}");
    }
}
