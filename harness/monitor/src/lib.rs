//! A small KVM monitor: boots a guest ELF by PVH with virtio devices on
//! virtio-mmio slots, assembled from QEMU-style options, and serves our
//! devices to other monitors over vhost-user.
//!
//! - The machine core: [`vm`] (KVM VM, vCPU in the PVH entry state, run
//!   loop, outcomes), [`pvh`] (ELF loading and `hvm_start_info`), [`bus`]
//!   (the MMIO bus), [`ports`] (COM1, debug and test-exit ports), [`slots`]
//!   (the virtio-mmio slots and their command-line entries), [`stats`]
//!   (KVM's own binary statistics).
//! - Devices: [`virtio`] (a `VirtioDevice` behind a slot's register file,
//!   irqfd interrupts, ioeventfd or inline notifications, a worker thread
//!   per device); [`tpm_crb`] (the TPM 2.0 CRB interface in front of a
//!   `backends::tpm` backend).
//! - Machines: [`options`] (QEMU-style options), [`machine`] (backends and
//!   devices realized from them, and the machine that runs them),
//!   [`protocol`] (`-monitor`/`-qmp` sockets: `set_link`, status), [`serve`]
//!   (one of our devices served over vhost-user from the same options).
//! - [`misbehave`]: hostile devices (`misbehave=<mode>`, with the
//!   `misbehave` feature): the register lies the slot tells beside the
//!   used-ring lies of `virtio-devices`; without the feature such options
//!   are refused.
//!
//! It knows nothing of test scenarios or verdicts; see
//! `examples/boot.rs` for embedding it.
//!
//! # Example
//!
//! A QEMU-style command line becomes a typed, cross-checked
//! [`MachineConfig`] before anything is created; a mistake is an
//! [`OptionError`] that names the option, key and value. Given `/dev/kvm`
//! and a guest ELF, [`Machine::new`] then builds the machine and
//! [`Machine::run`] boots it.
//!
//! ```rust
//! use monitor::options::{DeviceConfig, OptionError, RngConfig};
//!
//! let args = "-m 128M -object rng-deterministic,id=rng0,seed=7 \
//!             -device virtio-rng-device,rng=rng0,queue-size=256 \
//!             -kernel guest.elf -append quiet";
//! let config = monitor::parse(&args.split_whitespace().collect::<Vec<_>>())?;
//! assert_eq!(config.memory, 128 << 20);
//! assert_eq!(config.rngs, [("rng0".to_string(), RngConfig::Deterministic { seed: 7 })]);
//! assert!(matches!(
//!     &config.devices[..],
//!     [DeviceConfig::Rng { rng, queue_size: 256, ioeventfd: true, .. }] if rng == "rng0"
//! ));
//! assert_eq!(config.append, "quiet");
//!
//! // A device that names an entropy source nobody defined.
//! let err = monitor::parse(&["-device", "virtio-rng-device,rng=nope"]).unwrap_err();
//! assert!(matches!(err, OptionError::UnknownId { ref id, .. } if id == "nope"));
//! assert!(err.to_string().contains("rng='nope'"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bus;
pub mod machine;
pub mod misbehave;
pub mod options;
pub mod parallel;
pub mod ports;
pub mod protocol;
pub mod pvh;
pub mod serve;
pub mod slots;
pub mod stats;
pub mod tpm_crb;
pub mod virtio;
pub mod vm;

pub use machine::{Machine, MachineError};
pub use options::{MachineConfig, OptionError, parse};
