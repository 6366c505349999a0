//! QEMU-style machine options (`-m`, `-machine`, `-object`, `-chardev`,
//! `-device`, `-tpmdev`, `-kernel`, `-append`), parsed and cross-checked into a typed
//! [`MachineConfig`] before anything is created.
//!
//! Every mistake is a [`OptionError`] that names the option, the key and the
//! value: an unknown option, type, key or value; a missing or duplicate id;
//! a reference to an id that does not exist or is of the wrong kind. The
//! parser never panics on any command line (the `machine_options` fuzz
//! target holds it to that). It creates nothing: building the machine is
//! the VM's job.
//!
//! One module per option family (`machine`, `object`,
//! `chardev`, `drive`, `netdev`, `device`, `tpmdev`, `monitor`), the typed result in
//! `config`, the shared syntax in `keyvals`, the cross-checks in `check`.

mod chardev;
mod check;
mod config;
mod device;
mod drive;
mod error;
mod keyvals;
mod machine;
mod monitor;
mod netdev;
mod object;
pub mod registry;
#[cfg(test)]
mod tests;
mod tpmdev;

use std::collections::HashMap;
use std::path::PathBuf;

pub use config::*;
pub use error::OptionError;
pub use keyvals::{parse_mac, parse_size};

use virtio_core::features::DeviceType;
use virtio_devices::DEFAULT_QUEUE_SIZE;
use virtio_devices::misbehave::Misbehave;

use check::check_references;
use config::IdKind;
use keyvals::{KeyVals, parse_bool, split_commas};

/// The largest configuration space a `vhost-user-device` reads from its
/// backend (vhost-user.rst: `VHOST_USER_GET_CONFIG` carries at most 256
/// bytes).
pub const VHOST_USER_MAX_CONFIG: usize = 256;

/// The request queues a blk device served over vhost-user has unless
/// `num-queues` says otherwise: 1024, QEMU's `VIRTIO_QUEUE_MAX`, since its
/// `vhost-user-blk-pci` asks one per vCPU by default and refuses a backend
/// with fewer; the frontend tells the guest how many it uses.
pub const VHOST_USER_BLK_QUEUES: u16 = 1024;

/// The queue pairs a net device served over vhost-user has unless `mq=on`
/// or `queue-pairs` says otherwise: 512, as many receive and transmit
/// queues as QEMU's `VIRTIO_QUEUE_MAX` (1024). The frontend
/// decides how many it uses (QEMU's `-netdev vhost-user,queues=N`); the
/// device allocates receive buffers only for the queues it is given.
pub const VHOST_USER_NET_QUEUE_PAIRS: u32 = 512;

/// The state of one parse: the configuration so far and what the
/// cross-checks need.
#[derive(Debug)]
struct Parser {
    cfg: MachineConfig,
    ids: HashMap<String, IdKind>,
    seen_m: bool,
    seen_machine: bool,
    /// `-blockdev driver=file` nodes: name, path, cache.direct.
    file_nodes: Vec<(String, PathBuf, bool, AioMode)>,
}

/// Parses a command line (without the program name).
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<MachineConfig, OptionError> {
    let mut p = Parser {
        cfg: MachineConfig {
            memory: 64 << 20,
            ..MachineConfig::default()
        },
        ids: HashMap::new(),
        seen_m: false,
        seen_machine: false,
        file_nodes: Vec::new(),
    };
    let mut it = args.iter().map(|a| a.as_ref());
    while let Some(opt) = it.next() {
        let name = opt.trim_start_matches('-');
        if !opt.starts_with('-') || name.is_empty() {
            return Err(OptionError::UnknownOption(opt.to_string()));
        }
        let known = [
            "m", "machine", "M", "object", "chardev", "drive", "blockdev", "netdev", "device",
            "kernel", "append", "monitor", "qmp", "tpmdev", "serial", "parallel",
        ];
        if !known.contains(&name) {
            return Err(OptionError::UnknownOption(opt.to_string()));
        }
        let arg = it
            .next()
            .ok_or_else(|| OptionError::MissingArgument(opt.to_string()))?;
        if let Some(help) = registry::help_request(&format!("-{name}"), arg) {
            return Err(OptionError::Help(help?));
        }
        match name {
            "m" => p.memory(arg)?,
            "machine" | "M" => p.machine(arg)?,
            "object" => p.object(arg)?,
            "chardev" => p.chardev(arg)?,
            "drive" => p.drive(arg)?,
            "blockdev" => p.blockdev(arg)?,
            "netdev" => p.netdev(arg)?,
            "device" => p.device(arg)?,
            "tpmdev" => p.tpmdev(arg)?,
            "serial" => p.serial(arg)?,
            "parallel" => p.parallel(arg)?,
            "kernel" => p.kernel(arg)?,
            "append" => p.append(arg)?,
            "monitor" | "qmp" => p.monitor(name, arg)?,
            _ => return Err(OptionError::UnknownOption(opt.to_string())),
        }
    }
    check_references(&p.cfg, &p.ids)?;
    Ok(p.cfg)
}
