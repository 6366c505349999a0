//! `-device`: virtio devices, their ports, and vhost-user frontends.

use super::*;

/// `num-queues=N`: 1 to 1024 (QEMU's `VIRTIO_QUEUE_MAX`), `None` when
/// absent.
fn take_num_queues(kv: &mut KeyVals) -> Result<Option<u16>, OptionError> {
    let Some(n) = kv.take_u32("num-queues")? else {
        return Ok(None);
    };
    u16::try_from(n)
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .map(Some)
        .ok_or_else(|| kv.bad("num-queues", &n.to_string(), "1 to 1024"))
}

/// `max_ports=N` of a virtio-serial-device: 1 to 511 (QEMU's bound,
/// `(VIRTIO_QUEUE_MAX - 2) / 2`: two queues per port and two for control,
/// §5.3.2); 31 when absent. Checked here, before anything is sized by it.
fn take_max_ports(kv: &mut KeyVals) -> Result<u32, OptionError> {
    let n = kv.take_u32("max_ports")?.unwrap_or(31);
    if (1..=511).contains(&n) {
        Ok(n)
    } else {
        Err(kv.bad("max_ports", &n.to_string(), "1 to 511"))
    }
}

/// `queue-size=N`: each queue's maximum size, a power of two up to 32768
/// (§2.7); `default` when absent.
fn take_queue_size(kv: &mut KeyVals, default: u16) -> Result<u16, OptionError> {
    let Some(size) = kv.take_u32("queue-size")? else {
        return Ok(default);
    };
    u16::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two() && (2..=32768).contains(s))
        .ok_or_else(|| {
            kv.bad(
                "queue-size",
                &size.to_string(),
                "a power of two from 2 to 32768",
            )
        })
}

/// `misbehave=<mode>` of a `-device`: a mode of [`Misbehave`], or an
/// error naming them all.
fn take_misbehave(kv: &mut KeyVals) -> Result<Option<Misbehave>, OptionError> {
    match kv.take("misbehave") {
        None => Ok(None),
        Some(v) => Misbehave::from_name(&v)
            .map(Some)
            .ok_or_else(|| kv.bad("misbehave", &v, Misbehave::EXPECTED)),
    }
}

impl Parser {
    /// `-device TYPE,…`.
    pub(super) fn device(&mut self, arg: &str) -> Result<(), OptionError> {
        let mut kv = KeyVals::parse("-device", arg)?;
        let build = registry::lookup(registry::Kind::Device, &kv.ty).map(|t| t.build);
        if let Some(registry::Build::TpmCrb) = build {
            return self.tpm_crb(kv);
        }
        let Parser { cfg, ids, .. } = self;
        let id = kv.take("id");
        let dev = match build {
            Some(registry::Build::Device(f)) => f(&mut kv, &id)?,
            _ => return Err(registry::unknown_or_refused("-device", kv.ty)),
        };
        kv.finish()?;
        if let Some(id) = id
            && ids.insert(id.clone(), IdKind::Device).is_some()
        {
            return Err(OptionError::DuplicateId(id));
        }
        cfg.devices.push(dev);
        Ok(())
    }
}

/// `-device virtio-crypto-device` (registered in [`registry::TYPES`]).
pub(super) fn build_virtio_crypto_device(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    Ok(DeviceConfig::Crypto {
        cryptodev: kv.require("cryptodev")?,
        queue_size: take_queue_size(kv, DEFAULT_QUEUE_SIZE)?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
        misbehave: take_misbehave(kv)?,
    })
}

/// `-device virtio-rng-device` (registered in [`registry::TYPES`]).
pub(super) fn build_virtio_rng_device(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    Ok(DeviceConfig::Rng {
        rng: kv.require("rng")?,
        queue_size: take_queue_size(kv, DEFAULT_QUEUE_SIZE)?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
        misbehave: take_misbehave(kv)?,
    })
}

/// `-device virtio-blk-device` (registered in [`registry::TYPES`]).
pub(super) fn build_virtio_blk_device(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    let serial = kv.take("serial");
    if let Some(sn) = &serial
        && sn.len() > 20
    {
        return Err(kv.bad("serial", sn, "at most 20 bytes (§5.2.6 GET_ID)"));
    }
    let num_queues = take_num_queues(kv)?;
    let queue_size = take_queue_size(kv, DEFAULT_QUEUE_SIZE)?;
    Ok(DeviceConfig::Blk {
        drive: kv.require("drive")?,
        serial,
        num_queues,
        queue_size,
        discard: kv.take_bool("discard", true)?,
        write_zeroes: kv.take_bool("write-zeroes", true)?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
        misbehave: take_misbehave(kv)?,
    })
}

/// `-device virtio-net-device` (registered in [`registry::TYPES`]).
pub(super) fn build_virtio_net_device(
    kv: &mut KeyVals,
    id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    let mac = match kv.take("mac") {
        None => None,
        Some(v) => Some(
            parse_mac(&v)
                .ok_or_else(|| kv.bad("mac", &v, "a MAC address like 52:54:00:12:34:56"))?,
        ),
    };
    let mq = kv.take_bool("mq", false)?;
    let given = kv.take_u32("queue-pairs")?;
    let pairs = given.unwrap_or(if mq { 2 } else { 1 });
    if !(1..=VHOST_USER_NET_QUEUE_PAIRS).contains(&pairs) || (pairs > 1 && !mq) {
        return Err(kv.bad(
            "queue-pairs",
            &pairs.to_string(),
            "1 without mq=on, 1 to 512 with it",
        ));
    }
    // Neither given: the default depends on where the
    // device is served.
    let pairs = (mq || given.is_some()).then_some(pairs as u16);
    let queue_size = take_queue_size(kv, DEFAULT_QUEUE_SIZE)?;
    let mtu = match kv.take_u32("host_mtu")? {
        None => None,
        Some(m) => Some(
            u16::try_from(m)
                .ok()
                .filter(|m| *m >= 68)
                .ok_or_else(|| kv.bad("host_mtu", &m.to_string(), "68 to 65535"))?,
        ),
    };
    Ok(DeviceConfig::Net {
        id: id.clone(),
        netdev: kv.require("netdev")?,
        mtu,
        mac,
        queue_pairs: pairs,
        queue_size,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
        misbehave: take_misbehave(kv)?,
    })
}

/// `-device vhost-user-blk` (registered in [`registry::TYPES`]).
pub(super) fn build_vhost_user_blk(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    let num_queues = take_num_queues(kv)?.unwrap_or(1);
    // QEMU's vhost-user-blk default.
    let queue_size = take_queue_size(kv, 128)?;
    Ok(DeviceConfig::VhostUser {
        ty: VhostUserType::Blk {
            num_queues,
            queue_size,
        },
        chardev: kv.require("chardev")?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
    })
}

/// `-device vhost-user-rng` (registered in [`registry::TYPES`]).
pub(super) fn build_vhost_user_rng(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    Ok(DeviceConfig::VhostUser {
        ty: VhostUserType::Rng,
        chardev: kv.require("chardev")?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
    })
}

/// `-device vhost-user-device | vhost-user-test-device` (registered in [`registry::TYPES`]).
pub(super) fn build_vhost_user_device(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    let id = kv.require("virtio-id")?;
    let device_type = id
        .parse::<u32>()
        .ok()
        .and_then(DeviceType::from_id)
        .ok_or_else(|| kv.bad("virtio-id", &id, "a virtio device ID (§5)"))?;
    let num_vqs = kv.take_u32("num_vqs")?.unwrap_or(1);
    let num_vqs = u16::try_from(num_vqs)
        .ok()
        .filter(|n| (1..=1024).contains(n))
        .ok_or_else(|| kv.bad("num_vqs", &num_vqs.to_string(), "1 to 1024"))?;
    let vq_size = match kv.take_u32("vq_size")? {
        None => 64,
        Some(n) => u16::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= 32768)
            .ok_or_else(|| kv.bad("vq_size", &n.to_string(), "a power of two up to 32768"))?,
    };
    let config_size = kv.take_u32("config_size")?.unwrap_or(0);
    let config_size = u16::try_from(config_size)
        .ok()
        .filter(|n| usize::from(*n) <= VHOST_USER_MAX_CONFIG)
        .ok_or_else(|| kv.bad("config_size", &config_size.to_string(), "0 to 256"))?;
    Ok(DeviceConfig::VhostUser {
        ty: VhostUserType::Generic {
            device_type,
            num_vqs,
            vq_size,
            config_size,
        },
        chardev: kv.require("chardev")?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
    })
}

/// `-device virtio-serial-device` (registered in [`registry::TYPES`]).
pub(super) fn build_virtio_serial_device(
    kv: &mut KeyVals,
    id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    Ok(DeviceConfig::Serial {
        id: id.clone(),
        max_ports: take_max_ports(kv)?,
        queue_size: take_queue_size(kv, DEFAULT_QUEUE_SIZE)?,
        ioeventfd: kv.take_bool("ioeventfd", true)?,
        misbehave: take_misbehave(kv)?,
    })
}

/// `-device virtconsole | virtserialport` (registered in [`registry::TYPES`]).
pub(super) fn build_port(
    kv: &mut KeyVals,
    _id: &Option<String>,
) -> Result<DeviceConfig, OptionError> {
    // The bus is implied: ports join the last
    // virtio-serial-device.
    kv.take("bus");
    Ok(DeviceConfig::Port {
        console: kv.ty == "virtconsole",
        chardev: kv.require("chardev")?,
        name: kv.take("name"),
    })
}
