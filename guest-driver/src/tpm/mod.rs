//! A TPM 2.0 driver over the Command Response Buffer interface, for
//! firmware that measures its boot.
//!
//! - [`crb`]: the transport, TCG PC Client Platform TPM Profile (PTP)
//!   6.5.3: a locality requested and relinquished, the idle and ready
//!   states, a command written to the data buffer and `START`, the
//!   response read back once `START` clears, cancel.
//! - [`command`]: the commands firmware needs, marshalled as TPM 2.0
//!   Part 3 specifies them (TPM2_Startup, TPM2_Shutdown, TPM2_SelfTest,
//!   TPM2_GetRandom, TPM2_GetCapability, TPM2_PCR_Extend, TPM2_PCR_Read,
//!   TPM2_NV_DefineSpace, TPM2_NV_Write, TPM2_NV_Read,
//!   TPM2_NV_UndefineSpace), their responses parsed with every length
//!   checked against what was received.
//!
//! Like the virtio drivers, it trusts nothing the TPM writes: a response
//! whose size is outside the buffer, shorter than its fields, or whose
//! lists claim more than they hold is a [`TpmError`], never a panic or a
//! read past the buffer.

pub mod command;
pub mod crb;

use core::fmt;

pub use command::{Startup, Tpm};
pub use crb::Crb;

/// The smallest command or response: tag, size and code (Part 1,
/// "Command/Response Header Fields").
pub const HEADER_LEN: usize = 10;

/// Why a TPM call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TpmError {
    /// The locality was not granted in time.
    LocalityNotGranted(u8),
    /// The TPM did not leave the idle state when asked.
    NotReady,
    /// `START` did not clear in time (the command may still run).
    Timeout,
    /// The interface's fatal-error bit (`tpmSts`) is set: the TPM needs a
    /// reset.
    Fatal,
    /// The command does not fit the interface's command buffer.
    CommandTooLarge {
        /// Its length.
        len: usize,
        /// The buffer's.
        limit: usize,
    },
    /// The TPM answered with this response code (Part 2, 6.6).
    Response(u32),
    /// The response does not parse: what was wrong.
    Malformed(&'static str),
    /// The caller's buffer or argument is out of range: which.
    Argument(&'static str),
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TpmError::LocalityNotGranted(l) => write!(f, "locality {l} was not granted"),
            TpmError::NotReady => f.write_str("the TPM did not become ready"),
            TpmError::Timeout => f.write_str("the command did not complete in time"),
            TpmError::Fatal => f.write_str("the TPM interface reports a fatal error"),
            TpmError::CommandTooLarge { len, limit } => {
                write!(
                    f,
                    "a {len}-byte command does not fit the {limit}-byte buffer"
                )
            }
            TpmError::Response(rc) => write!(f, "the TPM answered response code {rc:#x}"),
            TpmError::Malformed(why) => write!(f, "malformed TPM response: {why}"),
            TpmError::Argument(why) => write!(f, "bad argument: {why}"),
        }
    }
}

impl core::error::Error for TpmError {}
