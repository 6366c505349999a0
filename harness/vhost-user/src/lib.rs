//! vhost-user: our devices served to other monitors (QEMU, Cloud
//! Hypervisor, crosvm) over a unix socket, as QEMU's
//! `docs/interop/vhost-user.rst` specifies the protocol.
//!
//! - [`codec`]: the message header, request codes, payload layouts, and
//!   framing with `SCM_RIGHTS`; total on any bytes ([`codec::fuzz_codec`]
//!   is the fuzz body).
//! - [`memory`]: the frontend's memory regions mapped from its descriptors
//!   into a `virtio-core` region table ([`SharedMemory`]).
//! - [`backend`]: the session state machine ([`Backend`]): features,
//!   memory, rings, kicks and calls, driving a
//!   [`virtio_devices::VirtioDevice`] exactly as the in-process transport
//!   does.
//! - [`daemon`]: a backend process we started (ours or another), for
//!   the benchmark and the tests.
//! - [`device`]: one device and its backends from QEMU-style options (what
//!   `virtio-harness vhost-user` serves).
//!
//! - [`frontend`]: the other side: an external backend process behind
//!   one of our virtio-mmio slots ([`VhostUserDevice`]), as QEMU's
//!   `vhost-user-blk`, `vhost-user-rng` and `-netdev vhost-user` do.

pub mod backend;
pub mod codec;
pub mod daemon;
pub mod device;
pub mod frontend;
pub mod memory;

pub use backend::{
    Backend, BackendError, BackendStats, DEVICE_COUNTERS, RING_COUNTERS, RingStats, SessionEnd,
    logged_device_counter, logged_ring_used,
};
pub use daemon::Daemon;
pub use device::{BuildError, ServedDevice, build};
pub use frontend::{FrontendError, SharedRam, VhostUserDevice, VhostUserKind};
pub use memory::SharedMemory;

use std::os::unix::net::UnixListener;
use std::path::Path;

/// Builds the device `options` name and serves it on a unix socket at
/// `socket` (an existing socket file is replaced), one frontend after the
/// other, until accepting fails. `verbose` logs every request on stderr.
pub fn serve_options<S: AsRef<str>>(
    socket: &Path,
    options: &[S],
    verbose: bool,
) -> Result<std::convert::Infallible, String> {
    let config = crate::options::parse(options).map_err(|e| e.to_string())?;
    let mem = SharedMemory::new();
    let dev = build(&config, &mem).map_err(|e| e.to_string())?;
    eprintln!(
        "vhost-user: serving {} ({}) on {}",
        dev.kind,
        dev.backend,
        socket.display()
    );
    let mut backend = Backend::new(dev.device, mem, dev.ready_fds);
    backend.set_verbose(verbose);
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let e = backend.serve(&listener);
    Err(format!("accepting on {}: {e}", socket.display()))
}
