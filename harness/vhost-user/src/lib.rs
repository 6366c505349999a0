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
//!
//! # Example
//!
//! Our virtio-rng served as a vhost-user backend on one end of a socket
//! pair, one round at a time on this thread ([`Backend::serve_stepped`]);
//! the other end plays the frontend with [`codec`] and asks for the
//! device's features. A real backend would call [`Backend::serve`] on a
//! listening socket instead.
//!
//! ```rust
//! use std::io::Read;
//! use std::os::unix::net::UnixStream;
//!
//! use backends::rng::Deterministic;
//! use vhost_user::codec::{self, Message, Reply, Request};
//! use vhost_user::{Backend, Progress, SharedMemory};
//! use virtio_core::features::TransportFeatures;
//! use virtio_devices::rng::Rng;
//!
//! // The device reaches the frontend's memory once SET_MEM_TABLE maps it.
//! let mem = SharedMemory::new();
//! let mut backend = Backend::new(Rng::new(Deterministic::new(1), mem.clone()), mem, Vec::new());
//! let (frontend, stream) = UnixStream::pair()?;
//! let mut session = backend.serve_stepped(stream);
//!
//! codec::send_with_fds(&frontend, &Message::GetFeatures.encode(false), &[])?;
//! assert_eq!(session.run_until_idle(10), Progress::Idle);
//! let mut reply = [0u8; codec::HEADER_LEN + 8];
//! (&frontend).read_exact(&mut reply)?;
//! let Reply::U64(features) = codec::decode_reply(Request::GetFeatures, false, &reply)? else {
//!     panic!("GET_FEATURES answers a u64");
//! };
//! assert_ne!(features & TransportFeatures::VERSION_1.bits(), 0);
//! assert_ne!(features & codec::VHOST_USER_F_PROTOCOL_FEATURES, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
