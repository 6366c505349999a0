//! TPM backends (QEMU's `-tpmdev`): where a TPM frontend's commands run,
//! independent of the frontend (CRB, TIS). A command is a TPM 2.0 command
//! buffer for a locality; the answer is the TPM's response buffer.
//!
//! - [`emulator`] (`std`): a swtpm process, reached through its control
//!   channel, with the data channel handed over by `CMD_SET_DATAFD` (QEMU's
//!   `tpm-emulator`).
//! - [`passthrough`] (`std`): a host TPM character device (`/dev/tpm0`)
//!   with its sysfs cancel file (QEMU's `tpm-passthrough`).

use core::fmt;

#[cfg(feature = "std")]
pub mod emulator;
#[cfg(feature = "std")]
pub mod passthrough;

/// The smallest response a TPM sends: tag, size and response code
/// (TPM 2.0 Part 1, "Command/Response Header Fields").
pub const HEADER_LEN: usize = 10;

/// Why a TPM backend could not do what was asked.
#[derive(Debug)]
pub enum TpmError {
    /// The backend's channel failed or closed (the TPM process died).
    #[cfg(feature = "std")]
    Io(std::io::Error),
    /// A control command was answered with a TPM result code other than
    /// success.
    Control {
        /// The control command (swtpm's `CMD_*`).
        command: u32,
        /// The result code.
        result: u32,
    },
    /// The backend does not offer this (swtpm's capabilities).
    Unsupported(&'static str),
    /// The TPM's answer does not parse (a size outside the response
    /// header's bounds, or larger than the buffer).
    BadResponse(&'static str),
    /// The command is larger than the backend's buffer, or shorter than a
    /// header.
    BadCommand(&'static str),
}

/// A channel error as words: an error that carries its own keeps them; a
/// bare errno that stands for a timeout or a closed peer says so.
#[cfg(feature = "std")]
fn describe_io(e: &std::io::Error, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use std::io::ErrorKind;
    if e.get_ref().is_some() {
        return write!(f, "TPM channel: {e}");
    }
    match e.kind() {
        // A socket timeout surfaces as EAGAIN.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => write!(
            f,
            "TPM channel: the backend did not take or answer the command within its timeout"
        ),
        ErrorKind::UnexpectedEof => write!(
            f,
            "TPM channel: the backend closed the connection before a whole answer"
        ),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
            write!(f, "TPM channel: the backend closed the connection")
        }
        _ => write!(f, "TPM channel: {e}"),
    }
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "std")]
            TpmError::Io(e) => describe_io(e, f),
            TpmError::Control { command, result } => {
                write!(
                    f,
                    "TPM control command {command:#x} failed with result {result:#x}"
                )
            }
            TpmError::Unsupported(what) => write!(f, "the TPM backend does not offer {what}"),
            TpmError::BadResponse(why) => write!(f, "bad TPM response: {why}"),
            TpmError::BadCommand(why) => write!(f, "bad TPM command: {why}"),
        }
    }
}

impl core::error::Error for TpmError {}

#[cfg(feature = "std")]
impl From<std::io::Error> for TpmError {
    fn from(e: std::io::Error) -> Self {
        TpmError::Io(e)
    }
}

/// Which saved state a backend's blob holds (swtpm's `PTM_BLOB_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobType {
    /// NV memory and the keys that persist.
    Permanent = 1,
    /// What `TPM2_Shutdown(STATE)` keeps.
    Volatile = 2,
    /// The state saved for a suspend.
    SaveState = 3,
}

/// A TPM the frontend sends commands to.
///
/// Every method takes `&self`: a frontend runs a command on one thread
/// while another (the guest's register write) cancels it or reads the
/// established flag, so an implementation locks what it must inside.
pub trait TpmBackend {
    /// Starts (or restarts, after a machine reset) the TPM with a command
    /// buffer of about `buffer_size` bytes; returns the size in use (the
    /// backend's bounds apply).
    fn startup(&self, buffer_size: u32) -> Result<u32, TpmError>;

    /// Runs `command` for `locality` (0 to 4) and writes the response to
    /// the front of `response`; returns its length (from its header).
    fn command(&self, locality: u8, command: &[u8], response: &mut [u8])
    -> Result<usize, TpmError>;

    /// Asks the TPM to cancel the command it is running.
    fn cancel(&self) -> Result<(), TpmError>;

    /// The command buffer size in use.
    fn buffer_size(&self) -> u32;

    /// The TPM's `tpmEstablished` flag (TCG PC Client: set by a dynamic
    /// root of trust measurement).
    fn established(&self) -> Result<bool, TpmError>;

    /// Clears `tpmEstablished` from `locality` (3 or 4).
    fn reset_established(&self, locality: u8) -> Result<(), TpmError>;

    /// Stops the TPM (its state is kept where the backend keeps it).
    fn stop(&self) -> Result<(), TpmError>;

    /// Ends the TPM for good, as its frontend goes away (swtpm's process
    /// exits; QEMU does the same when it quits). By default, [`stop`].
    ///
    /// [`stop`]: TpmBackend::stop
    fn shutdown(&self) -> Result<(), TpmError> {
        self.stop()
    }
}

/// Refuses a command no TPM can take: shorter than a header, or larger
/// than the backend's buffer of `buffer_size` bytes.
pub fn check_command(command: &[u8], buffer_size: u32) -> Result<(), TpmError> {
    if command.len() < HEADER_LEN {
        return Err(TpmError::BadCommand("shorter than a header"));
    }
    if command.len() > buffer_size as usize {
        return Err(TpmError::BadCommand("larger than the buffer"));
    }
    Ok(())
}

/// The length a TPM response or command header says it has (bytes 2..6,
/// big endian), if `buf` holds a header.
pub fn header_size(buf: &[u8]) -> Option<u32> {
    let b: [u8; 4] = buf.get(2..6)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_says_the_size() {
        // TPM2_Startup(CLEAR): tag 0x8001, size 12, command 0x144, CLEAR.
        let cmd = [0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0];
        assert_eq!(header_size(&cmd), Some(12));
        assert_eq!(header_size(&cmd[..5]), None);
    }

    #[cfg(feature = "std")]
    #[test]
    fn a_bare_errno_is_said_in_words_and_an_error_with_words_keeps_them() {
        use std::io::{Error, ErrorKind};
        use std::string::ToString;
        let said = |e: Error| TpmError::Io(e).to_string();
        let timeout = said(Error::from_raw_os_error(libc::EAGAIN));
        assert!(timeout.contains("within its timeout"), "{timeout}");
        assert!(!timeout.contains("os error"), "{timeout}");
        let eof = said(Error::from(ErrorKind::UnexpectedEof));
        assert!(eof.contains("before a whole answer"), "{eof}");
        let own = said(Error::new(ErrorKind::TimedOut, "no response within 50 ms"));
        assert!(own.contains("no response within 50 ms"), "{own}");
    }
}
