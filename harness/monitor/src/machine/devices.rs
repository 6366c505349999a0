//! Devices from options: each `-device` realized in front of its backends
//! (hostile when `misbehave=` asks, behind a vhost-user frontend when its
//! backend lives in another process), ready for a virtio-mmio slot.

use super::*;

/// A virtio-net device as the machine builds it: typed, so that the
/// monitor can reach [`Net::set_link`] while the VM runs.
pub type MachineNet = Net<BoxedNet, GuestRam>;

/// A realized device: any device behind the trait, or a network device
/// kept typed along with the names the monitor knows it by.
pub enum DeviceBox {
    /// Any device.
    Any(BoxedDevice),
    /// A virtio-net device.
    Net {
        /// The device.
        net: Box<MachineNet>,
        /// Its `-netdev` id.
        netdev: String,
        /// Its `-device …,id=`.
        id: Option<String>,
    },
    /// A hostile device (`misbehave=`, [`virtio_devices::misbehave`]); a network
    /// device so wrapped has no link for the monitor.
    #[cfg(feature = "misbehave")]
    Misbehaving(Box<Misbehaving>),
    /// A device served by an external vhost-user backend, kept typed so
    /// that its slot reports a dead backend.
    VhostUser(Box<VhostUserDevice>),
    /// A crypto device whose data queues an external vhost-user backend
    /// serves (`cryptodev-vhost-user`), kept typed for the same reason.
    VhostUserCrypto(Box<VhostUserCrypto<GuestRam>>),
}

impl DeviceBox {
    /// The device as any device, whatever its variant.
    pub fn into_boxed(self) -> BoxedDevice {
        match self {
            DeviceBox::Any(d) => d,
            DeviceBox::Net { net, .. } => net,
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => m,
            DeviceBox::VhostUser(v) => v,
            DeviceBox::VhostUserCrypto(v) => v,
        }
    }
}

/// Turns the device just realized into a hostile one if `misbehave` asks
/// for it; its backend description says so.
#[cfg(feature = "misbehave")]
fn misbehave(
    out: &mut Vec<RealizedDevice>,
    misbehave: Option<Misbehave>,
    mem: &GuestRam,
) -> Result<(), MachineError> {
    let Some(mode) = misbehave else {
        return Ok(());
    };
    let Some(honest) = out.pop() else {
        return Ok(());
    };
    out.push(RealizedDevice {
        kind: honest.kind,
        backend: format!("{}, misbehave={mode}", honest.backend),
        device: DeviceBox::Misbehaving(Box::new(Misbehaving::new(
            honest.device.into_boxed(),
            mode,
            mem.clone(),
        ))),
        ready_fds: honest.ready_fds,
        notify: honest.notify,
    });
    Ok(())
}

/// Without the `misbehave` feature a hostile device is refused.
#[cfg(not(feature = "misbehave"))]
fn misbehave(
    _out: &mut Vec<RealizedDevice>,
    misbehave: Option<Misbehave>,
    _mem: &GuestRam,
) -> Result<(), MachineError> {
    match misbehave {
        None => Ok(()),
        Some(_) => Err(MachineError::Unsupported(
            "misbehave= needs the monitor built with its `misbehave` feature",
        )),
    }
}

impl std::ops::Deref for DeviceBox {
    type Target = dyn VirtioDevice + Send;

    fn deref(&self) -> &Self::Target {
        match self {
            DeviceBox::Any(d) => &**d,
            DeviceBox::Net { net, .. } => &**net,
            #[cfg(feature = "misbehave")]
            DeviceBox::Misbehaving(m) => &**m,
            DeviceBox::VhostUser(v) => &**v,
            DeviceBox::VhostUserCrypto(v) => &**v,
        }
    }
}

/// A realized device, ready for a virtio-mmio slot.
pub struct RealizedDevice {
    /// The `-device` type (`virtio-rng-device`, `virtio-serial-device`).
    pub kind: &'static str,
    /// Its backends, described for reports (`rng-builtin`,
    /// `virtconsole<-file:out.log`, …).
    pub backend: String,
    /// The device.
    pub device: DeviceBox,
    /// File descriptors that become readable when a backend has something
    /// for the device (watch them and call the device's `backend_ready`).
    pub ready_fds: Vec<RawFd>,
    /// How notifications reach it (`ioeventfd=on`: a KVM ioeventfd served
    /// by the device's worker; `off`: a VM exit served on the vCPU thread).
    pub notify: NotifyMode,
}

impl fmt::Debug for RealizedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealizedDevice")
            .field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("ready_fds", &self.ready_fds)
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

/// A virtio-serial-device being assembled from the ports that follow it.
struct SerialBuild {
    max_ports: u32,
    queue_size: QueueSize,
    notify: NotifyMode,
    misbehave: Option<Misbehave>,
    /// Each port, its description and its chardev's readiness fd.
    ports: Vec<(Port, String, Option<RawFd>)>,
}

/// Guest RAM of `vm` as a vhost-user backend maps it (shared and
/// fd-backed, or an error naming the options that make it so).
pub fn shared_ram(vm: &Vm) -> Result<SharedRam, vhost_user::FrontendError> {
    let ranges: Vec<(u64, u64)> = vm.ram().iter().map(|r| (r.base, r.size)).collect();
    SharedRam::new(vm.host_memory(), &ranges)
}

/// `size` as a split-queue size (§2.7), or the error naming the device.
pub fn checked_queue_size(by: &'static str, size: u16) -> Result<QueueSize, MachineError> {
    QueueSize::new(u32::from(size)).map_err(|_| MachineError::QueueSize { by, size })
}

/// Realizes every device of `config` over guest memory `mem`, in
/// command-line order (which is slot order).
pub fn realize_devices(
    config: &MachineConfig,
    mem: &GuestRam,
) -> Result<Vec<RealizedDevice>, MachineError> {
    realize_devices_with_hubs(config, mem, &mut Hubs::default())
}

/// [`realize_devices`] with hub ports joining `hubs` (shared with other
/// machines).
pub fn realize_devices_with_hubs(
    config: &MachineConfig,
    mem: &GuestRam,
    hubs: &mut Hubs,
) -> Result<Vec<RealizedDevice>, MachineError> {
    realize_devices_shared(config, mem, hubs, None, &ChardevContext::default())
}

/// [`realize_devices_with_hubs`] with guest RAM shareable with vhost-user
/// backends (`ram`, needed by `vhost-user-*` devices and `-netdev
/// vhost-user`; without it they fail naming the memory backend to use),
/// and `ctx` for the chardevs that reach the machine (`testdev`,
/// `msmouse`, `wctablet`).
pub fn realize_devices_shared(
    config: &MachineConfig,
    mem: &GuestRam,
    hubs: &mut Hubs,
    ram: Option<Arc<SharedRam>>,
    ctx: &ChardevContext,
) -> Result<Vec<RealizedDevice>, MachineError> {
    let vhost_chardevs = config.vhost_user_chardevs();
    let mut chardevs = HashMap::new();
    // `mux=on`: one port of the shared chardev per frontend, in order.
    let mut muxed: HashMap<String, std::collections::VecDeque<(BoxedChardev, String)>> =
        HashMap::new();
    for (id, kind) in &config.chardevs {
        // A vhost-user frontend connects to the socket itself; a UART's
        // chardev is the machine's to open.
        if vhost_chardevs.contains(&id.as_str()) || config.serial_chardevs().any(|s| s == id) {
            continue;
        }
        let (c, what) = open_chardev(id, kind, ctx)?;
        if config.mux_chardevs.contains(id) {
            let users = config
                .devices
                .iter()
                .filter(|d| matches!(d, DeviceConfig::Port { chardev, .. } if chardev == id))
                .count();
            let ports = backends::chardev::mux::mux(c, users)
                .into_iter()
                .enumerate()
                .map(|(i, p)| (Box::new(p) as BoxedChardev, format!("{what},mux[{i}]")))
                .collect();
            muxed.insert(id.clone(), ports);
            continue;
        }
        chardevs.insert(id.clone(), (c, what));
    }
    // Connects a frontend to the backend on `chardev`'s socket.
    let vhost_user = |by: String, chardev: &str, kind: VhostUserKind| {
        let path = config
            .socket_path(chardev)
            .ok_or_else(|| MachineError::Missing {
                by: by.clone(),
                id: chardev.into(),
            })?;
        // Every error from here on names the backend's socket too (the
        // connection's own error names it already).
        let plain = by.clone();
        let by = format!("{by} (backend {})", path.display());
        let fail = |err| MachineError::VhostUser {
            by: by.clone(),
            err,
        };
        let ram = ram.clone().ok_or_else(|| {
            fail(FrontendError::NotShared {
                memory: "not given to the device".into(),
            })
        })?;
        let dev = VhostUserDevice::connect(path, kind, ram).map_err(|err| match err {
            FrontendError::Connect { .. } => MachineError::VhostUser { by: plain, err },
            err => fail(err),
        })?;
        Ok::<_, MachineError>((dev, format!("vhost-user:{}", path.display())))
    };
    let mut vhost_netdevs = HashMap::new();
    for (id, kind) in &config.netdevs {
        if let NetdevKind::VhostUser { chardev } = kind {
            vhost_netdevs.insert(id.clone(), chardev.clone());
        }
    }
    let mut disks = HashMap::new();
    for d in &config.drives {
        disks.insert(d.id.clone(), open_drive(d)?);
    }
    let drives = &config.drives;
    let mut netdevs = HashMap::new();
    for (id, kind) in &config.netdevs {
        if vhost_netdevs.contains_key(id) {
            continue;
        }
        netdevs.insert(id.clone(), open_netdev(id, kind, hubs)?);
    }
    let mut nics: u8 = 0;
    let mut rngs = HashMap::new();
    for (id, rng) in &config.rngs {
        rngs.insert(id.clone(), open_rng(id, rng, &mut chardevs)?);
    }

    let mut out = Vec::new();
    // The virtio-serial-device being assembled: max_ports, notify, ports.
    let mut serial: Option<SerialBuild> = None;
    let finish_serial = |s: SerialBuild, out: &mut Vec<RealizedDevice>| {
        let SerialBuild {
            max_ports,
            queue_size,
            notify,
            misbehave: hostile,
            ports,
        } = s;
        let backend = if ports.is_empty() {
            "no ports".to_string()
        } else {
            ports
                .iter()
                .map(|(_, w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let ready_fds = ports.iter().filter_map(|(_, _, fd)| *fd).collect();
        let ports: Vec<Port> = ports.into_iter().map(|(p, _, _)| p).collect();
        let max = usize::try_from(max_ports).unwrap_or(usize::MAX);
        let mut device = Console::with_max_ports(mem.clone(), ports, max > 1, max);
        device.set_queue_size(queue_size);
        out.push(RealizedDevice {
            kind: "virtio-serial-device",
            backend,
            device: DeviceBox::Any(Box::new(device)),
            ready_fds,
            notify,
        });
        misbehave(out, hostile, mem)
    };
    let notify_of = |on: bool| {
        if on {
            NotifyMode::Worker
        } else {
            NotifyMode::Inline
        }
    };
    for dev in &config.devices {
        match dev {
            DeviceConfig::Crypto {
                cryptodev,
                queue_size,
                ioeventfd,
                misbehave: hostile,
            } => {
                let size = checked_queue_size("virtio-crypto-device", *queue_size)?;
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let (_, c) = config
                    .cryptodevs
                    .iter()
                    .find(|(id, _)| id == cryptodev)
                    .ok_or_else(|| MachineError::Missing {
                        by: "-device virtio-crypto-device".into(),
                        id: cryptodev.clone(),
                    })?;
                let (device, backend, ready_fds) = match &c.backend {
                    CryptodevBackend::Builtin => {
                        let device = virtio_devices::crypto::Crypto::new(
                            backends::crypto::builtin::Builtin::default(),
                            mem.clone(),
                            c.queues,
                        )
                        .with_queue_size(size);
                        let what = format!("cryptodev-backend-builtin, {} data queues", c.queues);
                        (DeviceBox::Any(Box::new(device)), what, Vec::new())
                    }
                    CryptodevBackend::VhostUser { chardev } => {
                        let by = format!("-object cryptodev-vhost-user,id={cryptodev}");
                        let kind = VhostUserKind::Crypto {
                            data_queues: c.queues,
                            queue_size: size.get(),
                        };
                        let (vhost, what) = vhost_user(by.clone(), chardev, kind)?;
                        let device = VhostUserCrypto::new(vhost, mem.clone())
                            .map_err(|err| MachineError::VhostUser { by, err })?;
                        let what =
                            format!("cryptodev-vhost-user, {} data queues, {what}", c.queues);
                        let fds = device.ready_fds();
                        (DeviceBox::VhostUserCrypto(Box::new(device)), what, fds)
                    }
                };
                out.push(RealizedDevice {
                    kind: "virtio-crypto-device",
                    backend,
                    device,
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::Rng {
                rng,
                queue_size,
                ioeventfd,
                misbehave: hostile,
            } => {
                let size = checked_queue_size("virtio-rng-device", *queue_size)?;
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let (backend, what) = rngs.remove(rng).ok_or_else(|| MachineError::Missing {
                    by: "-device virtio-rng-device".into(),
                    id: rng.clone(),
                })?;
                let ready_fds = backend.readiness_fd().into_iter().collect();
                out.push(RealizedDevice {
                    kind: "virtio-rng-device",
                    backend: what,
                    device: DeviceBox::Any(Box::new(
                        Rng::new(backend, mem.clone()).with_queue_size(size),
                    )),
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::Blk {
                drive,
                serial: blk_serial,
                num_queues,
                queue_size,
                discard,
                write_zeroes,
                ioeventfd,
                misbehave: hostile,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let by = "-device virtio-blk-device";
                let (disk, what) = disks.remove(drive).ok_or_else(|| MachineError::Missing {
                    by: by.into(),
                    id: drive.clone(),
                })?;
                let drive_cfg = drives.iter().find(|d| &d.id == drive);
                let wants_discard = drive_cfg.is_some_and(|d| d.discard);
                let writethrough = drive_cfg.is_some_and(|d| d.cache == CacheMode::Writethrough);
                let cfg = BlkConfig {
                    serial: blk_serial.clone().unwrap_or_default().into_bytes(),
                    num_queues: num_queues.unwrap_or(1),
                    queue_size: *queue_size,
                    // QEMU's rule: two descriptors go to header and status.
                    seg_max: u32::from(*queue_size).saturating_sub(2).clamp(1, 254),
                    // QEMU's rule: DISCARD is offered unless the device says
                    // `discard=off`; the drive's `discard=ignore` (the
                    // default) completes them without touching the image,
                    // `discard=unmap` passes them on.
                    discard: *discard && (!wants_discard || disk.supports_discard()),
                    discard_unmap: wants_discard,
                    write_zeroes: *write_zeroes && disk.supports_write_zeroes(),
                    writeback: !writethrough,
                    queued_io: true,
                    ..BlkConfig::default()
                };
                let ready_fds = disk.completion_fd().into_iter().collect();
                let blk = Blk::new(disk, mem.clone(), cfg).map_err(|err| MachineError::Blk {
                    drive: drive.clone(),
                    err,
                })?;
                out.push(RealizedDevice {
                    kind: "virtio-blk-device",
                    backend: what,
                    device: DeviceBox::Any(Box::new(blk)),
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::Net {
                id,
                netdev,
                mtu,
                mac,
                queue_pairs,
                queue_size,
                ioeventfd,
                misbehave: hostile,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                if let Some(chardev) = vhost_netdevs.get(netdev) {
                    let mac = mac.unwrap_or_else(|| {
                        let mut m: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
                        m[5] = m[5].wrapping_add(nics);
                        m
                    });
                    nics = nics.wrapping_add(1);
                    let kind = VhostUserKind::Net {
                        mac,
                        queue_size: *queue_size,
                    };
                    let by = format!("-netdev vhost-user,id={netdev}");
                    let (dev, what) = vhost_user(by, chardev, kind)?;
                    out.push(RealizedDevice {
                        kind: "virtio-net-device",
                        backend: what,
                        ready_fds: dev.ready_fds(),
                        device: DeviceBox::VhostUser(Box::new(dev)),
                        notify: notify_of(*ioeventfd),
                    });
                    continue;
                }
                let (backend, what) =
                    netdevs
                        .remove(netdev)
                        .ok_or_else(|| MachineError::Missing {
                            by: "-device virtio-net-device".into(),
                            id: netdev.clone(),
                        })?;
                // QEMU's default MAC, one per NIC: 52:54:00:12:34:56 + n.
                let mac = mac.unwrap_or_else(|| {
                    let mut m: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
                    m[5] = m[5].wrapping_add(nics);
                    m
                });
                nics = nics.wrapping_add(1);
                let ready_fds = backend.readiness_fd().into_iter().collect();
                let cfg = NetConfig {
                    mac,
                    queue_pairs: queue_pairs.unwrap_or(1),
                    queue_size: *queue_size,
                    mtu: mtu.unwrap_or(NetConfig::default().mtu),
                    ..NetConfig::default()
                };
                let net = Net::new(backend, mem.clone(), cfg).map_err(|err| MachineError::Net {
                    netdev: netdev.clone(),
                    err,
                })?;
                out.push(RealizedDevice {
                    kind: "virtio-net-device",
                    backend: what,
                    device: DeviceBox::Net {
                        net: Box::new(net),
                        netdev: netdev.clone(),
                        id: id.clone(),
                    },
                    ready_fds,
                    notify: notify_of(*ioeventfd),
                });
                misbehave(&mut out, *hostile, mem)?;
            }
            DeviceConfig::VhostUser {
                ty,
                chardev,
                ioeventfd,
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                let kind = match *ty {
                    VhostUserType::Blk {
                        num_queues,
                        queue_size,
                    } => VhostUserKind::Blk {
                        num_queues,
                        queue_size,
                    },
                    VhostUserType::Rng => VhostUserKind::Rng,
                    VhostUserType::Generic {
                        device_type,
                        num_vqs,
                        vq_size,
                        config_size,
                    } => VhostUserKind::Generic {
                        device_type,
                        num_vqs,
                        vq_size,
                        config_size,
                    },
                };
                let by = format!("-device {},chardev={chardev}", dev.type_name());
                let (device, what) = vhost_user(by, chardev, kind)?;
                out.push(RealizedDevice {
                    kind: dev.type_name(),
                    backend: what,
                    ready_fds: device.ready_fds(),
                    device: DeviceBox::VhostUser(Box::new(device)),
                    notify: notify_of(*ioeventfd),
                });
            }
            DeviceConfig::Serial {
                max_ports,
                queue_size,
                ioeventfd,
                misbehave: hostile,
                ..
            } => {
                if let Some(s) = serial.take() {
                    finish_serial(s, &mut out)?;
                }
                serial = Some(SerialBuild {
                    max_ports: *max_ports,
                    queue_size: checked_queue_size("virtio-serial-device", *queue_size)?,
                    notify: notify_of(*ioeventfd),
                    misbehave: *hostile,
                    ports: Vec::new(),
                });
            }
            DeviceConfig::Port {
                chardev,
                name,
                console,
            } => {
                let kind = dev.type_name();
                let by = format!("-device {kind}");
                let Some(SerialBuild { ports, .. }) = serial.as_mut() else {
                    return Err(MachineError::OrphanPort(by));
                };
                let (c, what) = match muxed.get_mut(chardev) {
                    Some(ports) => ports.pop_front(),
                    None => chardevs.remove(chardev),
                }
                .ok_or_else(|| MachineError::Missing {
                    by: by.clone(),
                    id: chardev.clone(),
                })?;
                let fd = c.readiness_fd();
                ports.push((
                    Port::new(c, *console, name.clone()),
                    format!("{kind}<-{what}"),
                    fd,
                ));
            }
        }
    }
    if let Some(s) = serial.take() {
        finish_serial(s, &mut out)?;
    }
    Ok(out)
}
