//! vhost-user (QEMU's `docs/interop/vhost-user.rst`): any
//! [`virtio_devices::VirtioDevice`] served to another process's frontend
//! (QEMU, Cloud Hypervisor, crosvm, DPDK) over a unix socket, and the other
//! way round a device whose queues run in another process. No KVM, no
//! monitor: a monitor, a host-side driver or a test builds on it.
//!
//! - [`codec`]: the message header, request codes, payload layouts, and
//!   framing with `SCM_RIGHTS`; total on any bytes ([`codec::fuzz_codec`]
//!   is the fuzz body).
//! - [`memory`]: the frontend's memory regions mapped from its descriptors
//!   into a `virtio-core` region table ([`SharedMemory`]).
//! - [`guard`]: the SIGBUS guard over mappings of files another process
//!   may shrink (the frontend's regions here, a monitor's shared guest
//!   RAM), so that a shrunk file fails guest-memory accesses instead of
//!   killing the process.
//! - [`backend`]: the session state machine ([`Backend`]): features,
//!   memory, rings, kicks and calls, driving a
//!   [`virtio_devices::VirtioDevice`] exactly as the in-process transport
//!   does.
//! - [`frontend`]: the other side: an external backend process behind
//!   one of our virtio-mmio slots ([`VhostUserDevice`]), as QEMU's
//!   `vhost-user-blk`, `vhost-user-rng` and `-netdev vhost-user` do.
//! - [`crypto`]: virtio-crypto with its data queues on such a backend and
//!   its control queue here, sessions made by message
//!   ([`VhostUserCrypto`]), as QEMU's `cryptodev-vhost-user` does.

pub mod backend;
pub mod codec;
pub mod crypto;
pub mod frontend;
pub mod guard;
mod log_limit;
pub mod memory;

pub use backend::{
    Backend, BackendError, BackendStats, DEVICE_COUNTERS, LOG_BURST, LOG_WINDOW, LogSink, Progress,
    RING_COUNTERS, RingStats, SessionEnd, SteppedSession, logged_device_counter, logged_ring_used,
};
pub use crypto::VhostUserCrypto;
pub use frontend::{FrontendError, SharedRam, VhostUserDevice, VhostUserKind};
pub use memory::SharedMemory;
