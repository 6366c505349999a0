//! Machines from options: QEMU's realize step. A parsed
//! [`MachineConfig`] becomes real host
//! resources (chardevs, entropy sources) and virtio devices in front of
//! them, ready to be placed at the VM's virtio-mmio slots.
//!
//! Realizing opens everything the options name before the guest runs, so a
//! file that cannot be created or a socket that cannot be bound is an error
//! naming the option, never a failure halfway through a run. Every chardev
//! has at most one user (the option parser checks it); a chardev no device
//! uses is still opened, as QEMU does, and closed with the machine.
//!
//! `host` opens the host resources, `devices` realizes
//! the devices in front of them, [`Machine`] places them at the VM's slots
//! and runs the guest.

mod devices;
mod error;
mod host;
#[cfg(test)]
mod tests;

pub use devices::*;
pub use error::MachineError;
pub use host::*;

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use backends::block::BlockBackend;
use backends::chardev::os::{
    FileChardev, PipeChardev, PtyChardev, SocketAddr, SocketChardev, StdioChardev, TtyChardev,
    UdpChardev,
};
use backends::chardev::{Chardev, ChardevError, Null, RingBuf};
use backends::rng::{Builtin, Deterministic, Egd, RandomFile, RngBackend, RngError};
use virtio_core::split::layout::QueueSize;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::{Console, Port};
use virtio_devices::device::VirtioDevice;
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;

use crate::misbehave::Misbehave;
#[cfg(feature = "misbehave")]
use crate::misbehave::Misbehaving;
use crate::options::{
    AioMode, CacheMode, ChardevKind, CryptodevBackend, DeviceConfig, DiskFormat, DriveConfig,
    MachineConfig, NetdevKind, RngConfig, VhostUserType,
};
use crate::protocol::{MonitorServer, NetLink};
use crate::virtio::{NotifyMode, RegisterTap};
use crate::vm::{GuestRam, Outcome, Vm, VmError};
use vhost_user::{FrontendError, SharedRam, VhostUserCrypto, VhostUserDevice, VhostUserKind};

/// A machine ready to run: the VM with its devices placed and the guest
/// loaded.
pub struct Machine {
    /// The VM.
    pub vm: Vm,
    /// What sits at each virtio-mmio slot, in slot order: type and backend.
    pub devices: Vec<(&'static str, String)>,
    /// The command line the guest got (with the slots appended).
    pub cmdline: String,
    /// Its virtio-net devices, for `set_link` (the monitor's and tests').
    pub links: Vec<NetLink>,
    /// Its TPM interface (`-device tpm-crb`), if it has one: counters and
    /// the fatal-error bit.
    pub tpm: Option<crate::tpm_crb::CrbHandle>,
    /// Monitor sockets (`-monitor`, `-qmp`), bound; served while
    /// [`Machine::run`] runs.
    monitors: Vec<MonitorServer>,
    /// Its pointing devices (`-chardev msmouse|wctablet`), which the
    /// monitors' input commands feed.
    pub input: backends::chardev::input::InputRouter,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("devices", &self.devices)
            .field("cmdline", &self.cmdline)
            .field("links", &self.links)
            .field("monitors", &self.monitors)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// Builds the machine `config` describes: guest RAM from its memory
    /// backend, its devices at the virtio-mmio slots in command-line
    /// order, its kernel loaded by PVH with `-append` plus the slots, its
    /// monitor sockets bound.
    pub fn new(config: &MachineConfig) -> Result<Machine, MachineError> {
        Machine::with_hubs(config, &mut Hubs::default())
    }

    /// [`Machine::new`] with its hub ports on `hubs`: machines built over
    /// the same `Hubs` (and run in threads of one process) share each
    /// `hubid`'s segment.
    pub fn with_hubs(config: &MachineConfig, hubs: &mut Hubs) -> Result<Machine, MachineError> {
        Machine::build(config, hubs, None)
    }

    /// [`Machine::new`] with every device under `watch` (a conformance
    /// run's watch on the guest's drivers): each realized device is placed
    /// as `watch` wraps it, its slot tapped, with inline notification (no
    /// ioeventfd: every `QueueNotify` traps and reaches the tap in order).
    /// Network devices so placed have no link for the monitor
    /// (`set_link`); a wrapped hostile (`misbehave=`) or vhost-user device
    /// is no longer known as one (no register lies, no dead-backend
    /// report), so a watched machine is for honest local devices.
    pub fn watched(
        config: &MachineConfig,
        watch: &mut dyn SlotWatch,
    ) -> Result<Machine, MachineError> {
        Machine::build(config, &mut Hubs::default(), Some(watch))
    }

    fn build(
        config: &MachineConfig,
        hubs: &mut Hubs,
        watch: Option<&mut dyn SlotWatch>,
    ) -> Result<Machine, MachineError> {
        let path = config.kernel.as_ref().ok_or(MachineError::NoKernel)?;
        let elf = std::fs::read(path).map_err(|err| MachineError::Kernel {
            path: path.clone(),
            err,
        })?;
        let memory = backends::hostmem::HostMemory::new(&config.ram_host_memory())
            .map_err(MachineError::Memory)?;
        let mut vm = Vm::new(memory)?;
        let ram = if config.uses_vhost_user() {
            let shared = shared_ram(&vm).map_err(|err| MachineError::VhostUser {
                by: "a vhost-user device".into(),
                err,
            })?;
            Some(Arc::new(shared))
        } else {
            None
        };
        let input = backends::chardev::input::InputRouter::default();
        let ctx = ChardevContext {
            quit: Some(vm.quit_request()),
            input: Some(input.clone()),
        };
        let realized = realize_devices_shared(config, vm.guest_memory(), hubs, ram, &ctx)?;
        let devices = realized
            .iter()
            .map(|d| (d.kind, d.backend.clone()))
            .collect();
        let (slots, links) = match watch {
            None => attach(&mut vm, realized)?,
            Some(watch) => attach_watched(&mut vm, realized, watch)?,
        };
        let tpm = attach_tpm(&mut vm, config)?;
        // The port devices' chardevs, opened here (not with the devices).
        let port_chardev = |id: &String, by: &str| {
            let kind = config
                .chardevs
                .iter()
                .find(|(c, _)| c == id)
                .map(|(_, k)| k)
                .ok_or_else(|| MachineError::Missing {
                    by: format!("{by} chardev:{id}"),
                    id: id.clone(),
                })?;
            open_chardev(id, kind, &ctx).map(|(c, _)| c)
        };
        for (i, id) in config.serials.iter().enumerate() {
            if let Some(id) = id {
                vm.attach_serial(i, port_chardev(id, "-serial")?);
            }
        }
        if let Some(lpt) = &config.parallel {
            let chardev = lpt
                .as_ref()
                .map(|id| port_chardev(id, "-parallel"))
                .transpose()?;
            vm.attach_parallel(crate::parallel::Parallel::new(chardev));
        }
        let cmdline = crate::slots::append_cmdline(&config.append, &slots);
        let monitors = config
            .monitors
            .iter()
            .map(|m| {
                MonitorServer::bind(m.protocol, &m.path).map_err(|err| MachineError::Monitor {
                    path: m.path.clone(),
                    err,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        vm.load_pvh(&elf, &cmdline)?;
        Ok(Machine {
            vm,
            devices,
            cmdline,
            links,
            tpm,
            monitors,
            input,
        })
    }

    /// The monitor sockets: protocol and path.
    pub fn monitors(&self) -> Vec<(crate::options::MonitorProtocol, std::path::PathBuf)> {
        self.monitors
            .iter()
            .map(|m| (m.protocol(), m.path().to_path_buf()))
            .collect()
    }

    /// The virtio-net device the monitor knows as `name` (its `-netdev`
    /// id or its `-device …,id=`).
    pub fn link(&self, name: &str) -> Option<&NetLink> {
        self.links.iter().find(|l| l.is_named(name))
    }

    /// Runs the guest to its verdict, or `timeout`. The monitor sockets
    /// are served meanwhile and stop with the run.
    pub fn run(&mut self, timeout: Duration) -> Result<Outcome, MachineError> {
        let running: Vec<_> = self
            .monitors
            .iter()
            .map(|m| {
                m.serve_with(self.links.clone(), Some(self.input.clone()))
                    .map_err(|err| MachineError::Monitor {
                        path: m.path().to_path_buf(),
                        err,
                    })
            })
            .collect::<Result<_, _>>()?;
        let out = self.vm.run(timeout);
        for r in running {
            r.stop();
        }
        Ok(out?)
    }
}

/// Opens the `-tpmdev` the `-device tpm-crb` names and places the CRB
/// interface in front of it at [`crate::tpm_crb::CRB_BASE`].
fn attach_tpm(
    vm: &mut Vm,
    config: &MachineConfig,
) -> Result<Option<crate::tpm_crb::CrbHandle>, MachineError> {
    use crate::options::TpmdevKind;
    use crate::tpm_crb::{BUFFER_PAGE, CRB_BASE, CRB_SIZE, TpmCrb};
    use backends::tpm::TpmBackend;
    use backends::tpm::emulator::Emulator;
    use backends::tpm::passthrough::Passthrough;
    let Some(tpm) = &config.tpm else {
        return Ok(None);
    };
    let kind = config
        .tpmdevs
        .iter()
        .find(|(id, _)| *id == tpm.tpmdev)
        .map(|(_, k)| k)
        .ok_or_else(|| MachineError::Missing {
            by: "-device tpm-crb".into(),
            id: tpm.tpmdev.clone(),
        })?;
    let (by, backend): (String, Result<Arc<dyn TpmBackend + Send + Sync>, _>) = match kind {
        TpmdevKind::Emulator { chardev } => {
            let path = config
                .socket_path(chardev)
                .ok_or_else(|| MachineError::Missing {
                    by: format!("-tpmdev emulator,id={}", tpm.tpmdev),
                    id: chardev.clone(),
                })?;
            (
                format!(
                    "-tpmdev emulator,id={} (swtpm control socket {})",
                    tpm.tpmdev,
                    path.display()
                ),
                Emulator::connect(path).map(|e| Arc::new(e) as _),
            )
        }
        TpmdevKind::Passthrough { path, cancel_path } => (
            format!("-tpmdev passthrough,id={} ({})", tpm.tpmdev, path.display()),
            Passthrough::open(path, cancel_path.as_deref()).map(|p| Arc::new(p) as _),
        ),
    };
    let fail = |err| MachineError::Tpm {
        by: by.clone(),
        err,
    };
    // The data buffer in a RAM page of its own: no exits to fill it.
    let ram = vm.add_device_ram("tpm-crb buffer", BUFFER_PAGE, 4096)?;
    let crb = TpmCrb::with_ram(backend.map_err(fail)?, ram).map_err(fail)?;
    let handle = crb.handle();
    vm.add_mmio_device("tpm-crb", CRB_BASE, CRB_SIZE, Box::new(crb))?;
    Ok(Some(handle))
}

/// What a conformance run puts around each device of a machine
/// ([`Machine::watched`]).
pub trait SlotWatch {
    /// The device to place instead of `device` (the same device, watched:
    /// what it does must not change) and the tap on its slot's registers.
    /// `kind` is its `-device` type, `mem` the guest memory it reaches.
    fn watch(
        &mut self,
        kind: &'static str,
        device: BoxedDevice,
        mem: &GuestRam,
    ) -> (BoxedDevice, Option<Arc<dyn RegisterTap>>);
}

/// [`attach`] with each device wrapped and tapped by `watch`; no links.
fn attach_watched(
    vm: &mut Vm,
    devices: Vec<RealizedDevice>,
    watch: &mut dyn SlotWatch,
) -> Result<(Vec<crate::slots::VirtioSlot>, Vec<NetLink>), MachineError> {
    for d in devices {
        let mem = vm.guest_memory().clone();
        let (device, tap) = watch.watch(d.kind, d.device.into_boxed(), &mem);
        let handle = vm.add_virtio_device(d.kind, device, d.ready_fds, NotifyMode::Inline)?;
        handle.set_register_tap(tap);
    }
    Ok((vm.virtio_slots(), Vec::new()))
}

/// Places realized devices at the VM's virtio-mmio slots, in order, and
/// returns every slot on the bus (for the command line) and the network
/// devices' link handles.
fn attach(
    vm: &mut Vm,
    devices: Vec<RealizedDevice>,
) -> Result<(Vec<crate::slots::VirtioSlot>, Vec<NetLink>), MachineError> {
    let mut links = Vec::new();
    for d in devices {
        match d.device {
            DeviceBox::Any(device) => {
                vm.add_virtio_device(d.kind, device, d.ready_fds, d.notify)?;
            }
            DeviceBox::Net { net, netdev, id } => {
                let handle = vm.add_virtio_device(d.kind, *net, d.ready_fds, d.notify)?;
                links.push(NetLink::new(netdev, id, d.backend, handle));
            }
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => {
                vm.add_virtio_device(d.kind, *m, d.ready_fds, d.notify)?;
            }
            DeviceBox::VhostUser(v) => {
                vm.add_virtio_device(d.kind, *v, d.ready_fds, d.notify)?;
            }
            DeviceBox::VhostUserCrypto(v) => {
                vm.add_virtio_device(d.kind, *v, d.ready_fds, d.notify)?;
            }
        }
    }
    Ok((vm.virtio_slots(), links))
}
