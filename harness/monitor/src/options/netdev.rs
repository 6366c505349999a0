//! `-netdev`: network backends.

use super::*;

impl Parser {
    /// `-netdev loopback|hubport|stream|dgram|tap|vhost-user,id=…`.
    pub(super) fn netdev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-netdev", arg)?;
        let id = kv.require("id")?;
        let kind = match kv.ty.as_str() {
            "loopback" => NetdevKind::Loopback,
            "hubport" => NetdevKind::Hubport {
                hubid: kv.take_u32("hubid")?.ok_or(OptionError::MissingKey {
                    option: "-netdev",
                    ty: kv.ty.clone(),
                    key: "hubid",
                })?,
            },
            "stream" => {
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
                NetdevKind::Stream { server, path, inet }
            }
            "dgram" => {
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
                let local = inet(&mut kv, "local")?;
                let remote = inet(&mut kv, "remote")?;
                NetdevKind::Dgram { local, remote }
            }
            "vhost-user" => NetdevKind::VhostUser {
                chardev: kv.require("chardev")?,
            },
            "tap" => {
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
                NetdevKind::Tap { ifname, fd }
            }
            _ => {
                return Err(OptionError::UnknownType {
                    option: "-netdev",
                    ty: kv.ty,
                });
            }
        };
        kv.finish()?;
        if ids.insert(id.clone(), IdKind::Netdev).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        cfg.netdevs.push((id, kind));
        Ok(())
    }
}
