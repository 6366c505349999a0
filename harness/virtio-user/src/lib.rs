//! virtio-user: our guest drivers (`guest-driver`'s rng, blk, net and
//! console drivers, unchanged) in an ordinary process, talking vhost-user
//! to any backend, with no VM anywhere.
//!
//! The stack is the one our monitor's `vhost-user-*` slots use, without
//! KVM: a driver's register accesses go to `virtio-core`'s device-side
//! virtio-mmio register file (§4.2.2) in this process, whose device is
//! `vhost-user`'s frontend ([`vhost_user::frontend::VhostUserDevice`]); at
//! DRIVER_OK the frontend hands the backend the memory table and the rings.
//! The rings and buffers live in a memfd shared with the backend
//! ([`UserRam`]), which the drivers allocate from through [`UserHal`] using
//! the region's guest addresses. Kicks are eventfd writes; completions are
//! seen by polling the used rings or by waiting on the call eventfds
//! ([`UserWait`]). DPDK calls the same arrangement virtio-user.
//!
//! On top, [`blk`], [`rng`], [`net`], [`console`] and [`crypto`] run workloads that check a backend
//! (data written is read back, every used element is validated by the
//! driver, a broken rule is reported with its section) and measure it
//! (requests per second, latency percentiles, kicks and calls), and
//! [`cpu`] reads a backend process's CPU time, so a backend's cost can be
//! measured without an emulated guest in the way.
//!
//! # Example
//!
//! `guest-driver`'s entropy driver reading from a vhost-user backend: here
//! our own, serving a seeded virtio-rng from a thread, but any backend on
//! a unix socket will do (the driver cannot tell). [`rng::run`] wraps the
//! same steps into a measured workload.
//!
//! ```rust
//! use std::os::unix::net::UnixListener;
//! use std::time::Duration;
//!
//! use backends::rng::{Deterministic, RngBackend};
//! use guest_driver::rng::{Rng, RngOptions};
//! use guest_driver::transport::Completion;
//! use virtio_user::{UserDevice, UserRam, VhostUserKind};
//!
//! let dir = std::env::temp_dir().join(format!("virtio-user-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let socket = dir.join("rng.sock");
//! let listener = UnixListener::bind(&socket)?;
//! std::thread::spawn(move || {
//!     let mem = vhost_user::SharedMemory::new();
//!     let device = virtio_devices::rng::Rng::new(Deterministic::new(3), mem.clone());
//!     vhost_user::Backend::new(device, mem, Vec::new()).serve(&listener)
//! });
//!
//! let ram = UserRam::new(1 << 20)?; // rings and buffers, shared with the backend
//! let dev = UserDevice::connect(&socket, VhostUserKind::Rng, &ram)?;
//! let options = RngOptions { completion: Completion::Interrupt, ..RngOptions::default() };
//! let mut rng = Rng::new(ram.hal()?, dev.registers(), options)?;
//! let mut got = [0u8; 64];
//! rng.read_exact(&mut got, &mut dev.wait(Completion::Interrupt, Duration::from_secs(10)))?;
//!
//! let mut want = [0u8; 64];
//! Deterministic::new(3).fill(&mut want)?;
//! assert_eq!(got, want);
//! # drop(rng);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod blk;
pub mod console;
pub mod cpu;
pub mod crypto;
mod device;
mod error;
pub mod latency;
pub mod net;
mod ram;
pub mod rng;

pub use device::{MAX_QUEUES, UserDevice, UserRegisters, UserWait};
pub use error::Error;
pub use ram::{GUEST_BASE, MAX_PAGES, UserHal, UserMemory, UserRam};
pub use vhost_user::frontend::VhostUserKind;
