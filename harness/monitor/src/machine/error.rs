//! [`MachineError`]: why a machine could not be realized or run, naming
//! the option at fault.

use super::*;

/// Why a machine could not be realized.
#[derive(Debug)]
pub enum MachineError {
    /// A chardev could not be opened.
    Chardev {
        /// Its id.
        id: String,
        /// What went wrong.
        err: ChardevError,
    },
    /// An entropy source could not be opened.
    Rng {
        /// Its id.
        id: String,
        /// What went wrong.
        err: RngError,
    },
    /// An id the options refer to was not realized (the parser checks
    /// references, so this means a config built by hand).
    Missing {
        /// Who refers.
        by: String,
        /// The id.
        id: String,
    },
    /// A port that has no virtio-serial-device before it.
    OrphanPort(String),
    /// A TPM backend could not be reached or started.
    Tpm {
        /// The `-tpmdev` (type and id) and what it points at.
        by: String,
        /// What went wrong.
        err: backends::tpm::TpmError,
    },
    /// A queue size that is not a power of two up to 32768 (§2.7; the
    /// parser checks it, so this means a config built by hand).
    QueueSize {
        /// The device.
        by: &'static str,
        /// The size asked.
        size: u16,
    },
    /// The block device refused its configuration.
    Blk {
        /// The drive id.
        drive: String,
        /// Why.
        err: virtio_devices::blk::BlkConfigError,
    },
    /// The network device refused its configuration.
    Net {
        /// The netdev id.
        netdev: String,
        /// Why.
        err: virtio_devices::net::NetConfigError,
    },
    /// A network backend could not be opened.
    Netdev {
        /// Its id.
        id: String,
        /// What went wrong.
        err: backends::net::NetError,
    },
    /// A disk image could not be opened.
    Drive {
        /// Its id.
        id: String,
        /// What went wrong.
        err: backends::block::BlockError,
    },
    /// Something these options ask for that this monitor cannot do yet.
    Unsupported(&'static str),
    /// No `-kernel`.
    NoKernel,
    /// The kernel could not be read.
    Kernel {
        /// Its path.
        path: std::path::PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// A monitor socket could not be bound (or its thread started).
    Monitor {
        /// The socket's path.
        path: std::path::PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// Guest RAM could not be created.
    Memory(backends::hostmem::HostMemoryError),
    /// A device served by an external vhost-user backend could not be set
    /// up (guest RAM not shareable, backend unreachable or refusing).
    VhostUser {
        /// The option that asked for it.
        by: String,
        /// Why.
        err: vhost_user::FrontendError,
    },
    /// The VM refused something (KVM, loading, the bus).
    Vm(VmError),
}

impl From<VmError> for MachineError {
    fn from(e: VmError) -> Self {
        MachineError::Vm(e)
    }
}

impl fmt::Display for MachineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MachineError::Chardev { id, err } => write!(f, "-chardev id={id}: {err}"),
            MachineError::Rng { id, err } => write!(f, "-object rng id={id}: {err}"),
            MachineError::Tpm { by, err } => write!(f, "{by}: {err}"),
            MachineError::Missing { by, id } => {
                write!(f, "{by}: '{id}' is not defined or already in use")
            }
            MachineError::OrphanPort(by) => {
                write!(f, "{by}: needs a -device virtio-serial-device before it")
            }
            MachineError::Drive { id, err } => write!(f, "drive id={id}: {err}"),
            MachineError::Netdev { id, err } => write!(f, "-netdev id={id}: {err}"),
            MachineError::Net { netdev, err } => {
                write!(f, "-device virtio-net-device,netdev={netdev}: {err}")
            }
            MachineError::Blk { drive, err } => {
                write!(f, "-device virtio-blk-device,drive={drive}: {err}")
            }
            MachineError::QueueSize { by, size } => write!(
                f,
                "{by}: queue-size {size} is not a power of two from 1 to 32768 (§2.7)"
            ),
            MachineError::Unsupported(what) => f.write_str(what),
            MachineError::NoKernel => f.write_str("no -kernel given"),
            MachineError::Kernel { path, err } => {
                write!(
                    f,
                    "-kernel {}: reading the guest ELF: {err}",
                    path.display()
                )
            }
            MachineError::Monitor { path, err } => {
                write!(f, "monitor socket {}: {err}", path.display())
            }
            MachineError::Memory(e) => write!(f, "guest RAM: {e}"),
            MachineError::VhostUser { by, err } => write!(f, "{by}: {err}"),
            MachineError::Vm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MachineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MachineError::Chardev { err, .. } => Some(err),
            MachineError::Rng { err, .. } => Some(err),
            MachineError::Kernel { err, .. } => Some(err),
            MachineError::Monitor { err, .. } => Some(err),
            MachineError::Drive { err, .. } => Some(err),
            MachineError::Netdev { err, .. } => Some(err),
            MachineError::Memory(e) => Some(e),
            MachineError::VhostUser { err, .. } => Some(err),
            MachineError::Vm(e) => Some(e),
            _ => None,
        }
    }
}
