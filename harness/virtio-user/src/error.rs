//! The crate's error type.

use std::fmt;

use backends::hostmem::HostMemoryError;
use guest_driver::blk::BlkError;
use guest_driver::hal::PoolError;
use guest_driver::net::NetError;
use vhost_user::frontend::FrontendError;
use virtio_core::mmio::MmioError;

/// Why a virtio-user device or workload failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The shared memory could not be created.
    Memory(HostMemoryError),
    /// The DMA pool over it could not be built.
    Pool(PoolError),
    /// The vhost-user frontend could not connect or set up the backend.
    Frontend(FrontendError),
    /// The register file refused the device (too many queues).
    Registers(MmioError),
    /// The entropy or console driver failed (a broken rule is named).
    Driver(guest_driver::error::Error),
    /// The block driver failed, or the backend answered a request with an
    /// error or broke a rule (named).
    Blk(BlkError),
    /// The network driver failed (a broken rule is named).
    Net(NetError),
    /// The crypto driver failed, or the device answered a request with
    /// another status than OK.
    Crypto(guest_driver::crypto::CryptoError),
    /// Data read back is not what was written (§5.2.6: a READ returns the
    /// data last written).
    Mismatch {
        /// The first sector that differs.
        sector: u64,
        /// What the workload did.
        what: String,
    },
    /// A workload failed part way: the error and how far it got.
    During {
        /// What was done before, e.g. `after 4096 of 65536 bytes`.
        progress: String,
        /// What went wrong.
        err: Box<Error>,
    },
    /// A workload's options are out of range.
    BadJob(String),
    /// The backend went away or stopped answering: what the frontend saw.
    BackendGone(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Memory(e) => write!(f, "shared memory: {e}"),
            Error::Pool(e) => write!(f, "DMA pool: {e}"),
            Error::Frontend(e) => write!(f, "vhost-user frontend: {e}"),
            Error::Registers(e) => write!(f, "register file: {e}"),
            Error::Driver(e) => write!(f, "driver: {e}"),
            Error::Blk(e) => write!(f, "blk driver: {e}"),
            Error::Net(e) => write!(f, "net driver: {e}"),
            Error::Crypto(e) => write!(f, "crypto driver: {e}"),
            Error::Mismatch { sector, what } => write!(
                f,
                "{what}: sector {sector} read back differs from what was written (§5.2.6)"
            ),
            Error::During { progress, err } => write!(f, "{err} ({progress})"),
            Error::BadJob(why) => write!(f, "bad workload: {why}"),
            Error::BackendGone(why) => write!(f, "backend gone: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Memory(e) => Some(e),
            Error::Pool(e) => Some(e),
            Error::Frontend(e) => Some(e),
            Error::Registers(e) => Some(e),
            Error::Driver(e) => Some(e),
            Error::Blk(e) => Some(e),
            Error::Net(e) => Some(e),
            Error::Crypto(e) => Some(e),
            Error::During { err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<FrontendError> for Error {
    fn from(e: FrontendError) -> Self {
        Error::Frontend(e)
    }
}

impl From<BlkError> for Error {
    fn from(e: BlkError) -> Self {
        Error::Blk(e)
    }
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Self {
        Error::Net(e)
    }
}

impl From<guest_driver::crypto::CryptoError> for Error {
    fn from(e: guest_driver::crypto::CryptoError) -> Self {
        Error::Crypto(e)
    }
}

impl From<guest_driver::error::Error> for Error {
    fn from(e: guest_driver::error::Error) -> Self {
        Error::Driver(e)
    }
}
