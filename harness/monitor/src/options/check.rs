//! The cross-checks once every option is read: references to ids that
//! exist and are of the right kind, chardevs used once, vhost-user
//! frontends on unix socket clients.

use std::collections::HashMap;

use super::*;

/// A vhost-user frontend connects to a unix socket: its chardev must be
/// `socket,path=…` without `server=on`.
pub(super) fn vhost_user_socket(
    cfg: &MachineConfig,
    by: &str,
    chardev: &str,
) -> Result<(), OptionError> {
    match cfg.chardevs.iter().find(|(id, _)| id == chardev) {
        Some((
            _,
            ChardevKind::Socket {
                path: Some(_),
                server: false,
                ..
            },
        )) => Ok(()),
        _ => Err(OptionError::Conflict(format!(
            "{by}: chardev '{chardev}' must be a unix socket client (-chardev socket,id={chardev},path=PATH)"
        ))),
    }
}

pub(super) fn check_references(
    cfg: &MachineConfig,
    ids: &HashMap<String, IdKind>,
) -> Result<(), OptionError> {
    let refers = |by: &str, key: &'static str, id: &str, kind: IdKind, expected: &'static str| {
        if ids.get(id) == Some(&kind) {
            Ok(())
        } else {
            Err(OptionError::UnknownId {
                by: by.to_string(),
                key,
                id: id.to_string(),
                expected,
            })
        }
    };
    if let Some(mb) = &cfg.memory_backend {
        refers(
            "-machine",
            "memory-backend",
            mb,
            IdKind::Memory,
            "a memory backend",
        )?;
        if let Some(b) = cfg.ram_backend()
            && b.size != cfg.memory
        {
            return Err(OptionError::Conflict(format!(
                "-m is {} bytes but memory backend '{}' has {} bytes",
                cfg.memory, b.id, b.size
            )));
        }
    }
    for (id, rng) in &cfg.rngs {
        if let RngConfig::Egd { chardev } = rng {
            refers(
                &format!("-object rng-egd,id={id}"),
                "chardev",
                chardev,
                IdKind::Chardev,
                "a chardev",
            )?;
        }
    }
    // A chardev has one user (QEMU: "device is in use"), an rng one device.
    let mut chardev_user: HashMap<String, String> = HashMap::new();
    // A mux chardev (`mux=on`) is shared by any number of ports, and by
    // nothing else: the others need the byte stream to themselves.
    let is_mux = |chardev: &str| cfg.mux_chardevs.iter().any(|m| m == chardev);
    // `port`: the user is a virtconsole or virtserialport.
    let mut claim = |chardev: &str, by: String, port: bool| match chardev_user.get(chardev) {
        _ if is_mux(chardev) && !port => Err(OptionError::Conflict(format!(
            "{by}: chardev '{chardev}' has mux=on, which only virtconsole and \
                 virtserialport ports can share"
        ))),
        _ if is_mux(chardev) => Ok(()),
        Some(first) => Err(OptionError::Conflict(format!(
            "{by}: chardev '{chardev}' is already used by {first}"
        ))),
        None => {
            chardev_user.insert(chardev.to_string(), by);
            Ok(())
        }
    };
    for (id, rng) in &cfg.rngs {
        if let RngConfig::Egd { chardev } = rng {
            claim(chardev, format!("-object rng-egd,id={id}"), false)?;
        }
    }
    for (id, kind) in &cfg.netdevs {
        if let NetdevKind::VhostUser { chardev } = kind {
            let by = format!("-netdev vhost-user,id={id}");
            refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
            vhost_user_socket(cfg, &by, chardev)?;
            claim(chardev, by, false)?;
        }
    }
    for (id, c) in &cfg.cryptodevs {
        if let CryptodevBackend::VhostUser { chardev } = &c.backend {
            let by = format!("-object cryptodev-vhost-user,id={id}");
            refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
            vhost_user_socket(cfg, &by, chardev)?;
            claim(chardev, by, false)?;
        }
    }
    for (id, kind) in &cfg.tpmdevs {
        if let TpmdevKind::Emulator { chardev } = kind {
            let by = format!("-tpmdev emulator,id={id}");
            refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
            vhost_user_socket(cfg, &by, chardev)?;
            claim(chardev, by, false)?;
        }
    }
    if let Some(tpm) = &cfg.tpm {
        refers(
            "-device tpm-crb",
            "tpmdev",
            &tpm.tpmdev,
            IdKind::Tpmdev,
            "a tpmdev",
        )?;
    }
    for (i, id) in cfg.serials.iter().enumerate() {
        if let Some(id) = id {
            let by = format!("-serial chardev:{id} (COM{})", i + 1);
            refers(&by, "chardev", id, IdKind::Chardev, "a chardev")?;
            claim(id, by, false)?;
        }
    }
    if let Some(Some(id)) = &cfg.parallel {
        let by = format!("-parallel chardev:{id} (LPT1)");
        refers(&by, "chardev", id, IdKind::Chardev, "a chardev")?;
        claim(id, by, false)?;
    }
    let mut rng_user: std::collections::HashSet<&str> = Default::default();
    let mut cryptodev_user: std::collections::HashSet<&str> = Default::default();
    let mut drive_user: std::collections::HashSet<&str> = Default::default();
    let mut netdev_user: std::collections::HashSet<&str> = Default::default();
    // `None` until a virtio-serial-device: the ports it still has room for.
    let mut ports_left: Option<u32> = None;
    for dev in &cfg.devices {
        let by = format!("-device {}", dev.type_name());
        match dev {
            DeviceConfig::Rng { rng, .. } => {
                refers(&by, "rng", rng, IdKind::Rng, "an rng object")?;
                if !rng_user.insert(rng.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: rng '{rng}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::Crypto { cryptodev, .. } => {
                refers(
                    &by,
                    "cryptodev",
                    cryptodev,
                    IdKind::Cryptodev,
                    "a cryptodev object",
                )?;
                if !cryptodev_user.insert(cryptodev.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: cryptodev '{cryptodev}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::Blk { drive, .. } => {
                refers(&by, "drive", drive, IdKind::Drive, "a drive")?;
                if !drive_user.insert(drive.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: drive '{drive}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::Net { netdev, .. } => {
                refers(&by, "netdev", netdev, IdKind::Netdev, "a netdev")?;
                if !netdev_user.insert(netdev.as_str()) {
                    return Err(OptionError::Conflict(format!(
                        "{by}: netdev '{netdev}' is already used by another device"
                    )));
                }
            }
            DeviceConfig::VhostUser { chardev, .. } => {
                refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
                vhost_user_socket(cfg, &by, chardev)?;
                claim(chardev, format!("{by},chardev={chardev}"), false)?;
            }
            DeviceConfig::Serial { max_ports, .. } => ports_left = Some(*max_ports),
            DeviceConfig::Port { chardev, .. } => {
                refers(&by, "chardev", chardev, IdKind::Chardev, "a chardev")?;
                let Some(left) = ports_left.as_mut() else {
                    return Err(OptionError::Conflict(format!(
                        "{by}: needs a -device virtio-serial-device before it"
                    )));
                };
                if *left == 0 {
                    return Err(OptionError::Conflict(format!(
                        "{by},chardev={chardev}: the virtio-serial-device has no port left (max_ports)"
                    )));
                }
                *left -= 1;
                claim(chardev, format!("{by},chardev={chardev}"), true)?;
            }
        }
    }
    Ok(())
}
