//! Serving one of our devices over vhost-user from QEMU-style options
//! (what `virtio-harness vhost-user` runs): the same backends as
//! [`crate::machine`] opens (`open_chardev`, `open_drive`, `open_netdev`,
//! `open_rng`), the same device types, but over a [`SharedMemory`] the
//! vhost-user session fills in, and without a VM; [`serve_options`]
//! builds it and serves one frontend after the other.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::RawFd;
use std::path::Path;

use virtio_devices::VirtioDevice;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::{Console, Port};
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;

use crate::machine::{self, Hubs, MachineError};
use crate::options::{CacheMode, CryptodevBackend, DeviceConfig, MachineConfig};

use vhost_user::{Backend, SharedMemory};

/// A device built for vhost-user.
pub struct ServedDevice {
    /// The `-device` type.
    pub kind: &'static str,
    /// Its backends, described.
    pub backend: String,
    /// The device, over the shared memory it was built with.
    pub device: Box<dyn VirtioDevice + Send>,
    /// Backend readiness descriptors to poll.
    pub ready_fds: Vec<RawFd>,
}

impl fmt::Debug for ServedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedDevice")
            .field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("ready_fds", &self.ready_fds)
            .finish_non_exhaustive()
    }
}

/// Why the options do not make one device.
#[derive(Debug)]
pub enum BuildError {
    /// Not exactly one device (a virtio-serial-device with its ports is
    /// one).
    DeviceCount(usize),
    /// Realizing a backend or the device failed.
    Machine(MachineError),
    /// `misbehave=` names a lie told in virtio-mmio registers, which a
    /// device served over vhost-user has none of.
    RegisterLie(&'static str),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::DeviceCount(n) => write!(
                f,
                "vhost-user serves exactly one -device (a virtio-serial-device with its ports counts as one), got {n}"
            ),
            BuildError::Machine(e) => write!(f, "{e}"),
            BuildError::RegisterLie(mode) => write!(
                f,
                "misbehave={mode} lies in virtio-mmio registers; over vhost-user only the used-ring lies can be told"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Machine(e) => Some(e),
            BuildError::DeviceCount(_) | BuildError::RegisterLie(_) => None,
        }
    }
}

impl From<MachineError> for BuildError {
    fn from(e: MachineError) -> Self {
        BuildError::Machine(e)
    }
}

fn missing(by: &str, id: &str) -> BuildError {
    BuildError::Machine(MachineError::Missing {
        by: by.into(),
        id: id.into(),
    })
}

/// Builds the one device `config` names (blk, rng, net, or a serial device
/// with its ports) over `mem`.
pub fn build(config: &MachineConfig, mem: &SharedMemory) -> Result<ServedDevice, BuildError> {
    let count = config
        .devices
        .iter()
        .filter(|d| !matches!(d, DeviceConfig::Port { .. }))
        .count();
    if count != 1 {
        return Err(BuildError::DeviceCount(count));
    }
    if !config.mux_chardevs.is_empty() {
        return Err(BuildError::Machine(MachineError::Unsupported(
            "mux=on: a device served over vhost-user has its ports' chardevs to itself",
        )));
    }
    if !config.serials.is_empty() || config.parallel.is_some() || config.tpm.is_some() {
        return Err(BuildError::Machine(MachineError::Unsupported(
            "-serial, -parallel and -device tpm-crb belong to a machine, not to a device served over vhost-user",
        )));
    }
    let mut chardevs = HashMap::new();
    let frontends = config.vhost_user_chardevs();
    for (id, kind) in &config.chardevs {
        // Refused below, with the reason, rather than connected to.
        if frontends.contains(&id.as_str()) {
            continue;
        }
        chardevs.insert(
            id.clone(),
            machine::open_chardev(id, kind, &machine::ChardevContext::default())?,
        );
    }
    let mut ports = Vec::new();
    let mut out = None;
    for dev in &config.devices {
        match dev {
            DeviceConfig::Crypto {
                cryptodev,
                queue_size,
                ..
            } => {
                let size = machine::checked_queue_size("virtio-crypto-device", *queue_size)?;
                let (_, c) = config
                    .cryptodevs
                    .iter()
                    .find(|(id, _)| id == cryptodev)
                    .ok_or_else(|| missing("-device virtio-crypto-device", cryptodev))?;
                if c.backend != CryptodevBackend::Builtin {
                    return Err(BuildError::Machine(MachineError::Unsupported(
                        "cryptodev-vhost-user is a frontend; serve cryptodev-backend-builtin instead",
                    )));
                }
                // The whole device, control queue included: a frontend
                // that passes every queue through (QEMU's
                // `vhost-user-device,virtio-id=20`) drives it as is.
                let device = virtio_devices::crypto::Crypto::new(
                    backends::crypto::builtin::Builtin::default(),
                    mem.clone(),
                    c.queues,
                )
                .with_queue_size(size);
                out = Some(ServedDevice {
                    kind: "virtio-crypto-device",
                    backend: format!("cryptodev-backend-builtin, {} data queues", c.queues),
                    device: Box::new(device),
                    ready_fds: Vec::new(),
                });
            }
            DeviceConfig::Rng {
                rng, queue_size, ..
            } => {
                let size = machine::checked_queue_size("virtio-rng-device", *queue_size)?;
                let (_, rc) = config
                    .rngs
                    .iter()
                    .find(|(id, _)| id == rng)
                    .ok_or_else(|| missing("-device virtio-rng-device", rng))?;
                let (backend, what) = machine::open_rng(rng, rc, &mut chardevs)?;
                let ready_fds = backend.readiness_fd().into_iter().collect();
                out = Some(ServedDevice {
                    kind: "virtio-rng-device",
                    backend: what,
                    device: Box::new(Rng::new(backend, mem.clone()).with_queue_size(size)),
                    ready_fds,
                });
            }
            DeviceConfig::Blk {
                drive,
                serial,
                num_queues,
                queue_size,
                discard,
                write_zeroes,
                ..
            } => {
                let d = config
                    .drives
                    .iter()
                    .find(|d| &d.id == drive)
                    .ok_or_else(|| missing("-device virtio-blk-device", drive))?;
                let (disk, what) = machine::open_drive(d)?;
                // The configuration rules of `machine::realize_devices`, but
                // with as many queues as a frontend may ask for (QEMU's
                // `vhost-user-blk-pci` asks one per vCPU and refuses fewer),
                // and `seg_max` for the ring the frontend picks, not ours:
                // QEMU's `vhost-user-blk` uses 128 entries by default, and
                // without indirect descriptors a request of more than the
                // ring's size minus header and status could never be
                // posted (§5.2.4 seg_max).
                let cfg = BlkConfig {
                    serial: serial.clone().unwrap_or_default().into_bytes(),
                    num_queues: num_queues.unwrap_or(crate::options::VHOST_USER_BLK_QUEUES),
                    queue_size: *queue_size,
                    seg_max: u32::from((*queue_size).min(128))
                        .saturating_sub(2)
                        .clamp(1, 254),
                    // QEMU's rule: DISCARD is offered unless the device says
                    // `discard=off`; the drive's `discard=ignore` (the
                    // default) completes them without touching the image,
                    // `discard=unmap` passes them on.
                    discard: *discard && (!d.discard || disk.supports_discard()),
                    discard_unmap: d.discard,
                    write_zeroes: *write_zeroes && disk.supports_write_zeroes(),
                    writeback: d.cache != CacheMode::Writethrough,
                    queued_io: true,
                    ..BlkConfig::default()
                };
                let ready_fds = disk.completion_fd().into_iter().collect();
                let blk = Blk::new(disk, mem.clone(), cfg).map_err(|err| MachineError::Blk {
                    drive: drive.clone(),
                    err,
                })?;
                out = Some(ServedDevice {
                    kind: "virtio-blk-device",
                    backend: what,
                    device: Box::new(blk),
                    ready_fds,
                });
            }
            DeviceConfig::Net {
                netdev,
                mtu,
                mac,
                queue_pairs,
                queue_size,
                ..
            } => {
                let (_, kind) = config
                    .netdevs
                    .iter()
                    .find(|(id, _)| id == netdev)
                    .ok_or_else(|| missing("-device virtio-net-device", netdev))?;
                let (backend, what) = machine::open_netdev(netdev, kind, &mut Hubs::default())?;
                let ready_fds = backend.readiness_fd().into_iter().collect();
                let cfg = NetConfig {
                    mac: mac.unwrap_or([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
                    // As many pairs as a frontend may ask for unless the
                    // options say; it enables the ones it uses.
                    queue_pairs: queue_pairs
                        .unwrap_or(crate::options::VHOST_USER_NET_QUEUE_PAIRS as u16),
                    queue_size: *queue_size,
                    mtu: mtu.unwrap_or(NetConfig::default().mtu),
                    ..NetConfig::default()
                };
                let net = Net::new(backend, mem.clone(), cfg).map_err(|err| MachineError::Net {
                    netdev: netdev.clone(),
                    err,
                })?;
                out = Some(ServedDevice {
                    kind: "virtio-net-device",
                    backend: what,
                    device: Box::new(net),
                    ready_fds,
                });
            }
            DeviceConfig::VhostUser { .. } => {
                return Err(BuildError::Machine(MachineError::Unsupported(
                    "a vhost-user-* device is a frontend; serve a virtio-*-device instead",
                )));
            }
            DeviceConfig::Serial { .. } => {}
            DeviceConfig::Port {
                chardev,
                name,
                console,
            } => {
                let kind = dev.type_name();
                let (c, what) = chardevs
                    .remove(chardev)
                    .ok_or_else(|| missing(&format!("-device {kind}"), chardev))?;
                let fd = c.readiness_fd();
                ports.push((
                    Port::new(c, *console, name.clone()),
                    format!("{kind}<-{what}"),
                    fd,
                ));
            }
        }
    }
    if let Some(DeviceConfig::Serial {
        max_ports,
        queue_size,
        ..
    }) = config
        .devices
        .iter()
        .find(|d| matches!(d, DeviceConfig::Serial { .. }))
    {
        let backend = ports
            .iter()
            .map(|(_, w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        let ready_fds = ports.iter().filter_map(|(_, _, fd)| *fd).collect();
        let ports: Vec<Port> = ports.into_iter().map(|(p, _, _)| p).collect();
        let max = usize::try_from(*max_ports).unwrap_or(usize::MAX);
        let mut console = Console::with_max_ports(mem.clone(), ports, max > 1, max);
        console.set_queue_size(machine::checked_queue_size(
            "virtio-serial-device",
            *queue_size,
        )?);
        out = Some(ServedDevice {
            kind: "virtio-serial-device",
            backend: if backend.is_empty() {
                "no ports".into()
            } else {
                backend
            },
            device: Box::new(console),
            ready_fds,
        });
    }
    let served = out.ok_or(BuildError::DeviceCount(0))?;
    hostile(config, served, mem)
}

/// The device wrapped to tell its used-ring lie when the options ask for
/// one (`misbehave=<mode>`, feature `misbehave`): a hostile backend for
/// testing frontends and drivers.
#[cfg(feature = "misbehave")]
fn hostile(
    config: &MachineConfig,
    mut served: ServedDevice,
    mem: &SharedMemory,
) -> Result<ServedDevice, BuildError> {
    let mode = config.devices.iter().find_map(|d| match d {
        DeviceConfig::Rng { misbehave, .. }
        | DeviceConfig::Blk { misbehave, .. }
        | DeviceConfig::Serial { misbehave, .. } => *misbehave,
        _ => None,
    });
    if let Some(mode) = mode {
        if !mode.is_ring_lie() {
            return Err(BuildError::RegisterLie(mode.name()));
        }
        served.device = Box::new(virtio_devices::misbehave::Misbehaving::new(
            served.device,
            mode,
            mem.clone(),
        ));
        served.backend = format!("{}, misbehave={}", served.backend, mode.name());
    }
    Ok(served)
}

/// Without the `misbehave` feature no device lies.
#[cfg(not(feature = "misbehave"))]
fn hostile(
    _config: &MachineConfig,
    served: ServedDevice,
    _mem: &SharedMemory,
) -> Result<ServedDevice, BuildError> {
    Ok(served)
}

/// Builds the device `options` name and serves it on a unix socket at
/// `socket` (a stale socket file is replaced), one frontend after the
/// other, until accepting fails. `verbose` logs every request on stderr;
/// `poll_max` is the longest busy-polling window
/// ([`Backend::set_poll`](vhost_user::backend::Backend::set_poll); zero
/// sleeps at once).
pub fn serve_options<S: AsRef<str>>(
    socket: &Path,
    options: &[S],
    verbose: bool,
    poll_max: std::time::Duration,
) -> Result<std::convert::Infallible, String> {
    serve_options_with(socket, options, verbose, poll_max, None)
}

/// Wraps the device before it is served, given the guest memory it
/// reaches: e.g. a watch that records what the driver does.
pub type Wrap =
    Box<dyn FnOnce(Box<dyn VirtioDevice + Send>, &SharedMemory) -> Box<dyn VirtioDevice + Send>>;

/// [`serve_options`] with the device wrapped by `wrap`, if given.
pub fn serve_options_with<S: AsRef<str>>(
    socket: &Path,
    options: &[S],
    verbose: bool,
    poll_max: std::time::Duration,
    wrap: Option<Wrap>,
) -> Result<std::convert::Infallible, String> {
    let config = crate::options::parse(options).map_err(|e| e.to_string())?;
    let mem = SharedMemory::new();
    let mut dev = build(&config, &mem).map_err(|e| e.to_string())?;
    if let Some(wrap) = wrap {
        dev.device = wrap(dev.device, &mem);
    }
    eprintln!(
        "vhost-user: serving {} ({}) on {}",
        dev.kind,
        dev.backend,
        socket.display()
    );
    let mut backend = Backend::new(dev.device, mem, dev.ready_fds);
    backend.set_verbose(verbose);
    backend.set_poll(poll_max);
    let listener = backends::socket::bind_unix(socket).map_err(|e| e.to_string())?;
    let e = backend.serve(&listener);
    Err(format!("accepting on {}: {e}", socket.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> MachineConfig {
        crate::options::parse(args).unwrap()
    }

    #[test]
    fn one_device_is_built() {
        let mem = SharedMemory::new();
        let d = build(
            &config(&[
                "-object",
                "rng-builtin,id=r0",
                "-device",
                "virtio-rng-device,rng=r0",
            ]),
            &mem,
        )
        .unwrap();
        assert_eq!(d.kind, "virtio-rng-device");
        assert_eq!(d.device.queue_max_sizes().len(), 1);
        let d = build(
            &config(&[
                "-chardev",
                "null,id=c0",
                "-device",
                "virtio-serial-device",
                "-device",
                "virtconsole,chardev=c0",
            ]),
            &mem,
        )
        .unwrap();
        assert_eq!(d.kind, "virtio-serial-device");
    }

    #[test]
    fn zero_or_two_devices_are_refused() {
        let mem = SharedMemory::new();
        assert!(matches!(
            build(&config(&[]), &mem),
            Err(BuildError::DeviceCount(0))
        ));
        assert!(matches!(
            build(
                &config(&[
                    "-object",
                    "rng-builtin,id=r0",
                    "-object",
                    "rng-builtin,id=r1",
                    "-device",
                    "virtio-rng-device,rng=r0",
                    "-device",
                    "virtio-rng-device,rng=r1",
                ]),
                &mem
            ),
            Err(BuildError::DeviceCount(2))
        ));
    }

    /// A daemon serves devices; a crypto device whose operations run in
    /// yet another backend is a frontend's business.
    #[test]
    fn a_vhost_user_cryptodev_is_not_served() {
        let mem = SharedMemory::new();
        let e = build(
            &config(&[
                "-chardev",
                "socket,id=vu,path=/tmp/none.sock",
                "-object",
                "cryptodev-vhost-user,id=c0,chardev=vu",
                "-device",
                "virtio-crypto-device,cryptodev=c0",
            ]),
            &mem,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("cryptodev-backend-builtin"), "{e}");
    }

    #[test]
    fn machine_only_options_are_refused_when_serving() {
        let mem = SharedMemory::new();
        for (args, want) in [
            (
                &[
                    "-chardev",
                    "null,id=n,mux=on",
                    "-device",
                    "virtio-serial-device",
                    "-device",
                    "virtconsole,chardev=n",
                    "-device",
                    "virtconsole,chardev=n",
                ][..],
                "mux=on",
            ),
            (
                &[
                    "-chardev",
                    "null,id=n",
                    "-serial",
                    "chardev:n",
                    "-object",
                    "rng-builtin,id=r",
                    "-device",
                    "virtio-rng-device,rng=r",
                ][..],
                "-serial",
            ),
        ] {
            let e = build(&config(args), &mem)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{e}");
        }
    }
}
