//! `-netdev`: network backends.

use super::*;

/// QEMU's bridge helper where Debian's `qemu-system-common` puts it.
pub const DEFAULT_BRIDGE_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";

impl Parser {
    /// `-netdev loopback|hubport|stream|dgram|socket|tap|bridge|l2tpv3|user|vhost-user,id=…`.
    pub(super) fn netdev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-netdev", arg)?;
        let id = kv.require("id")?;
        let kind = match registry::lookup(registry::Kind::Netdev, &kv.ty).map(|t| t.build) {
            Some(registry::Build::Netdev(f)) => f(&id, &mut kv)?,
            _ => return Err(registry::unknown_or_refused("-netdev", kv.ty)),
        };
        kv.finish()?;
        if ids.insert(id.clone(), IdKind::Netdev).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        cfg.netdevs.push((id, kind));
        Ok(())
    }
}

/// `-netdev user`'s keys, with QEMU's names and defaults.
fn user(id: &str, kv: &mut KeyVals) -> Result<backends::net::user::UserConfig, OptionError> {
    use backends::net::user::{GuestFwd, HostFwd, UserConfig};
    let mut c = UserConfig::default();
    let conflict = |e: backends::net::user::ConfigError| {
        OptionError::Conflict(format!("-netdev user,id={id}: {e}"))
    };
    for k in [
        "tftp",
        "bootfile",
        "smb",
        "smbserver",
        "tftp-server-name",
        "dnssearch",
        "domainname",
    ] {
        if kv.take(k).is_some() {
            return Err(OptionError::Conflict(format!(
                "-netdev user,id={id}: {k}= is not built here (no TFTP, SMB or DHCP search \
                 domains in our user-mode network)"
            )));
        }
    }
    if !kv.take_bool("ipv4", true)? {
        return Err(OptionError::Conflict(format!(
            "-netdev user,id={id}: ipv4=off leaves nothing: our user-mode network is IPv4 only"
        )));
    }
    // QEMU's default is ipv6=on; IPv6 frames are dropped here, said in
    // the README, and `ipv6=off` is accepted as what it is.
    kv.take_bool("ipv6", true)?;
    if let Some(n) = kv.take("net") {
        c.set_net(&n).map_err(conflict)?;
    }
    let addr =
        |kv: &mut KeyVals, key: &'static str| -> Result<Option<std::net::Ipv4Addr>, OptionError> {
            match kv.take(key) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| kv.bad(key, &v, "an IPv4 address")),
            }
        };
    if let Some(a) = addr(kv, "host")? {
        c.host = a;
    }
    if let Some(a) = addr(kv, "dns")? {
        c.dns = a;
    }
    if let Some(a) = addr(kv, "dhcpstart")? {
        c.dhcp_start = a;
    }
    c.hostname = kv.take("hostname");
    c.restrict = kv.take_bool("restrict", false)?;
    for v in kv.take_all("hostfwd") {
        c.hostfwd.push(HostFwd::parse(&v).map_err(conflict)?);
    }
    for v in kv.take_all("guestfwd") {
        c.guestfwd.push(GuestFwd::parse(&v).map_err(conflict)?);
    }
    c.check().map_err(conflict)?;
    Ok(c)
}

/// QEMU's older `-netdev socket`: `listen=[HOST]:PORT` and
/// `connect=HOST:PORT` are a TCP stream with the same 4-byte length
/// framing as `stream`, `udp=HOST:PORT,localaddr=HOST:PORT` is `dgram`.
pub(super) fn socket(id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    let host_port = |kv: &KeyVals, key: &'static str, v: &str, any: bool| match v.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && (any || !h.is_empty()) => {
            let h = if h.is_empty() { "0.0.0.0" } else { h };
            Ok(format!("{h}:{p}"))
        }
        _ => Err(kv.bad(key, v, if any { "[HOST]:PORT" } else { "HOST:PORT" })),
    };
    if let Some(v) = kv.take("mcast") {
        return Err(OptionError::Conflict(format!(
            "-netdev socket,id={id},mcast={v}: multicast groups are not built here \
             (use udp=… with localaddr=…, or -netdev dgram)"
        )));
    }
    if kv.take("fd").is_some() {
        return Err(OptionError::Conflict(format!(
            "-netdev socket,id={id}: fd= is not taken (give listen=, connect= or udp=)"
        )));
    }
    let (listen, connect, udp) = (kv.take("listen"), kv.take("connect"), kv.take("udp"));
    match (listen, connect, udp) {
        (Some(l), None, None) => Ok(NetdevKind::Stream {
            server: true,
            path: None,
            inet: Some(host_port(kv, "listen", &l, true)?),
        }),
        (None, Some(c), None) => Ok(NetdevKind::Stream {
            server: false,
            path: None,
            inet: Some(host_port(kv, "connect", &c, false)?),
        }),
        (None, None, Some(u)) => {
            let remote = host_port(kv, "udp", &u, false)?;
            let local = kv.require("localaddr")?;
            let local = host_port(kv, "localaddr", &local, true)?;
            Ok(NetdevKind::Dgram { local, remote })
        }
        _ => Err(OptionError::Conflict(format!(
            "-netdev socket,id={id}: give exactly one of listen=, connect= or udp="
        ))),
    }
}

/// `-netdev loopback` (registered in [`registry::TYPES`]).
pub(super) fn build_loopback(_id: &str, _kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Ok(NetdevKind::Loopback)
}

/// `-netdev hubport` (registered in [`registry::TYPES`]).
pub(super) fn build_hubport(_id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Ok(NetdevKind::Hubport {
        hubid: kv.take_u32("hubid")?.ok_or(OptionError::MissingKey {
            option: "-netdev",
            ty: kv.ty.clone(),
            key: "hubid",
        })?,
    })
}

/// `-netdev stream` (registered in [`registry::TYPES`]).
pub(super) fn build_stream(_id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    let server = kv.take_bool("server", false)?;
    let ty = kv.require("addr.type")?;
    let (path, inet) = match ty.as_str() {
        "unix" => (Some(kv.require("addr.path")?.into()), None),
        "inet" => {
            let host = kv.require("addr.host")?;
            let port = kv.require("addr.port")?;
            if port.parse::<u16>().is_err() {
                return Err(kv.bad("addr.port", &port, "a port number"));
            }
            (None, Some(format!("{host}:{port}")))
        }
        _ => return Err(kv.bad("addr.type", &ty, "unix or inet")),
    };
    Ok(NetdevKind::Stream { server, path, inet })
}

/// `-netdev dgram` (registered in [`registry::TYPES`]).
pub(super) fn build_dgram(_id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    let inet = |kv: &mut KeyVals, side: &'static str| {
        let ty_key = if side == "local" {
            "local.type"
        } else {
            "remote.type"
        };
        let ty = kv.require(ty_key)?;
        if ty != "inet" {
            return Err(kv.bad(ty_key, &ty, "inet"));
        }
        let (h, p) = if side == "local" {
            (kv.require("local.host")?, kv.require("local.port")?)
        } else {
            (kv.require("remote.host")?, kv.require("remote.port")?)
        };
        if p.parse::<u16>().is_err() {
            return Err(kv.bad(side, &p, "a port number"));
        }
        Ok(format!("{h}:{p}"))
    };
    let local = inet(kv, "local")?;
    let remote = inet(kv, "remote")?;
    Ok(NetdevKind::Dgram { local, remote })
}

/// `-netdev vhost-vdpa` (registered in [`registry::TYPES`]).
pub(super) fn build_vhost_vdpa(id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Err(OptionError::Conflict(format!(
        "-netdev vhost-vdpa,id={id}: not available here: it drives a kernel vDPA \
         device (/dev/vhost-vdpa-N, from a vDPA NIC or the vdpa_sim_net module), \
         which these machines do not have{}",
        match kv.take("vhostdev") {
            Some(d) if !std::path::Path::new(&d).exists() => format!(" ({d} does not exist)"),
            Some(d) => format!(" (the vhost-vdpa ioctls for {d} are not written yet)"),
            None => String::new(),
        }
    )))
}

/// `-netdev bridge` (registered in [`registry::TYPES`]).
pub(super) fn build_bridge(_id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Ok(NetdevKind::Bridge {
        br: kv.take("br").unwrap_or_else(|| "br0".into()),
        helper: kv
            .take("helper")
            .unwrap_or_else(|| DEFAULT_BRIDGE_HELPER.into())
            .into(),
    })
}

/// `-netdev l2tpv3` (registered in [`registry::TYPES`]).
pub(super) fn build_l2tpv3(id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    let udp = kv.take_bool("udp", false)?;
    let port = |kv: &mut KeyVals, key: &'static str| -> Result<Option<u16>, OptionError> {
        match kv.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u16>()
                .map(Some)
                .map_err(|_| kv.bad(key, &v, "a port number")),
        }
    };
    let (sp, dp) = (port(kv, "srcport")?, port(kv, "dstport")?);
    let udp = match (udp, sp, dp) {
        (true, Some(s), Some(d)) => Some((s, d)),
        (true, _, _) => {
            return Err(OptionError::Conflict(format!(
                "-netdev l2tpv3,id={id}: udp=on needs both srcport= and dstport="
            )));
        }
        (false, None, None) => None,
        (false, _, _) => {
            return Err(OptionError::Conflict(format!(
                "-netdev l2tpv3,id={id}: srcport=/dstport= need udp=on"
            )));
        }
    };
    let u32_of = |kv: &mut KeyVals, key: &'static str| -> Result<Option<u32>, OptionError> {
        kv.take_u32(key)
    };
    let u64_of = |kv: &mut KeyVals, key: &'static str| -> Result<Option<u64>, OptionError> {
        match kv.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| kv.bad(key, &v, "a number")),
        }
    };
    let cookies = match (u64_of(kv, "txcookie")?, u64_of(kv, "rxcookie")?) {
        (Some(t), Some(r)) => Some((t, r)),
        (None, None) => None,
        _ => {
            return Err(OptionError::Conflict(format!(
                "-netdev l2tpv3,id={id}: give both txcookie= and rxcookie=, or neither"
            )));
        }
    };
    // QEMU 7.2 takes 64-bit cookies whenever `cookie64` is
    // given, even as `off` (`has_cookie64 || cookie64`): the
    // same here, or the two ends of a tunnel would disagree.
    let cookie64 = match kv.take("cookie64") {
        None => false,
        Some(v) => {
            parse_bool(&v).ok_or_else(|| kv.bad("cookie64", &v, "on or off"))?;
            true
        }
    };
    if let Some((t, r)) = cookies
        && !cookie64
        && (t > u64::from(u32::MAX) || r > u64::from(u32::MAX))
    {
        return Err(kv.bad(
            "txcookie",
            &t.max(r).to_string(),
            "a 32-bit cookie (or cookie64=on)",
        ));
    }
    let offset = u32_of(kv, "offset")?.unwrap_or(0);
    if offset > backends::net::l2tpv3::MAX_OFFSET {
        return Err(kv.bad("offset", &offset.to_string(), "0 to 256"));
    }
    let counter = kv.take_bool("counter", false)?;
    let pin_counter = kv.take_bool("pincounter", false)?;
    // QEMU 7.2 sends no counter word for `pincounter=on` alone
    // (and writes past its header): refused rather than
    // guessed.
    if pin_counter && !counter {
        return Err(OptionError::Conflict(format!(
            "-netdev l2tpv3,id={id}: pincounter=on needs counter=on"
        )));
    }
    Ok(NetdevKind::L2tpv3(backends::net::l2tpv3::L2tpv3Config {
        src: kv.require("src")?,
        dst: kv.require("dst")?,
        udp,
        ipv6: kv.take_bool("ipv6", false)?,
        tx_session: u32_of(kv, "txsession")?.ok_or(OptionError::MissingKey {
            option: "-netdev",
            ty: kv.ty.clone(),
            key: "txsession",
        })?,
        rx_session: u32_of(kv, "rxsession")?,
        cookies,
        cookie64,
        counter,
        pin_counter,
        offset,
    }))
}

/// `-netdev vhost-user` (registered in [`registry::TYPES`]).
pub(super) fn build_vhost_user(_id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Ok(NetdevKind::VhostUser {
        chardev: kv.require("chardev")?,
    })
}

/// `-netdev tap` (registered in [`registry::TYPES`]).
pub(super) fn build_tap(id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    // QEMU's scripts are not run here; `no` is accepted.
    for k in ["script", "downscript"] {
        if let Some(v) = kv.take(k)
            && v != "no"
        {
            return Err(kv.bad(k, &v, "no (scripts are not run)"));
        }
    }
    kv.take_bool("vhost", false)?;
    let ifname = kv.take("ifname");
    let fd = match kv.take("fd") {
        None => None,
        Some(v) => Some(
            v.parse::<i32>()
                .ok()
                .filter(|f| *f >= 0)
                .ok_or_else(|| kv.bad("fd", &v, "an open file descriptor"))?,
        ),
    };
    if ifname.is_some() == fd.is_some() {
        return Err(OptionError::Conflict(format!(
            "-netdev tap,id={id}: give exactly one of ifname= or fd="
        )));
    }
    Ok(NetdevKind::Tap { ifname, fd })
}

/// `-netdev user` (registered in [`registry::TYPES`]).
pub(super) fn build_user(id: &str, kv: &mut KeyVals) -> Result<NetdevKind, OptionError> {
    Ok(NetdevKind::User(user(id, kv)?))
}
