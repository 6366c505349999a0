//! `-chardev`: character devices.

use super::*;

impl Parser {
    /// `-chardev null|ringbuf|memory|file|pipe|pty|serial|stdio|socket|udp|testdev|msmouse|wctablet,id=…`.
    pub(super) fn chardev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-chardev", arg)?;
        let id = kv.require("id")?;
        let mux = kv.take_bool("mux", false)?;
        let kind = match registry::lookup(registry::Kind::Chardev, &kv.ty).map(|t| t.build) {
            Some(registry::Build::Chardev(f)) => f(&id, &mut kv)?,
            _ => return Err(registry::unknown_or_refused("-chardev", kv.ty)),
        };
        kv.finish()?;
        if ids.insert(id.clone(), IdKind::Chardev).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        if mux {
            cfg.mux_chardevs.push(id.clone());
        }
        cfg.chardevs.push((id, kind));
        Ok(())
    }

    /// `-serial chardev:ID|null|none|…`: the next UART (COM1, then COM2);
    /// QEMU's older chardev spellings ([`compat_chardev`]) make a chardev
    /// `serialN` of their own.
    pub(super) fn serial(&mut self, arg: &str) -> Result<(), OptionError> {
        if self.cfg.serials.len() >= 2 {
            return Err(OptionError::Conflict(
                "-serial: this machine has two UARTs (COM1, COM2)".into(),
            ));
        }
        let spec = match arg {
            "null" | "none" => None,
            _ => {
                let id = format!("serial{}", self.cfg.serials.len());
                Some(self.port_chardev("-serial", arg, id)?)
            }
        };
        self.cfg.serials.push(spec);
        Ok(())
    }

    /// `-parallel chardev:ID|null|none|…` (QEMU's older chardev spellings
    /// too): LPT1, printing to the chardev; one per machine.
    pub(super) fn parallel(&mut self, arg: &str) -> Result<(), OptionError> {
        if self.cfg.parallel.is_some() {
            return Err(OptionError::Conflict(
                "-parallel: this machine has one parallel port (LPT1)".into(),
            ));
        }
        self.cfg.parallel = match arg {
            "none" => None,
            "null" => Some(None),
            _ => Some(Some(self.port_chardev(
                "-parallel",
                arg,
                "parallel0".into(),
            )?)),
        };
        Ok(())
    }

    /// The chardev a port option names: `chardev:ID`, or one of QEMU's
    /// shorthands made into a chardev `id` of its own (QEMU names them
    /// after the port too).
    fn port_chardev(
        &mut self,
        option: &'static str,
        arg: &str,
        id: String,
    ) -> Result<String, OptionError> {
        match arg.strip_prefix("chardev:") {
            Some(named) if !named.is_empty() => Ok(named.to_string()),
            Some(_) => Err(bad_port(option, arg)),
            None => {
                let chardev = compat_chardev(arg, &id).ok_or_else(|| bad_port(option, arg))?;
                self.chardev(&chardev)?;
                Ok(id)
            }
        }
    }
}

fn bad_port(option: &'static str, arg: &str) -> OptionError {
    OptionError::BadValue {
        option,
        key: "backend".into(),
        value: arg.to_string(),
        expected: "chardev:ID, null, none, stdio, pty, file:PATH, pipe:PATH, /dev/TTY, \
                   tcp:[HOST]:PORT[,server=on][,wait=off][,reconnect=S], unix:PATH[,server=on], \
                   udp:[HOST]:PORT[@[LOCALADDR]:LOCALPORT], msmouse, wctablet or testdev",
    }
}

/// QEMU's older chardev spellings (what `-serial` takes, QEMU's
/// `qemu_chr_parse_compat`) as the `-chardev` argument with id `id`;
/// `None` for what is not one.
pub(super) fn compat_chardev(spec: &str, id: &str) -> Option<String> {
    // A path is one value: its commas are escaped.
    let path = |p: &str| (!p.is_empty()).then(|| p.replace(',', ",,"));
    match spec {
        "stdio" | "pty" | "msmouse" | "wctablet" | "testdev" | "null" => {
            return Some(format!("{spec},id={id}"));
        }
        _ => {}
    }
    if let Some(p) = spec.strip_prefix("file:") {
        return Some(format!("file,id={id},path={}", path(p)?));
    }
    if let Some(p) = spec.strip_prefix("pipe:") {
        return Some(format!("pipe,id={id},path={}", path(p)?));
    }
    if spec.starts_with("/dev/") {
        return Some(format!("serial,id={id},path={}", path(spec)?));
    }
    if let Some(rest) = spec.strip_prefix("tcp:") {
        let (addr, opts) = rest.split_once(',').unwrap_or((rest, ""));
        let (host, port) = addr.rsplit_once(':')?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let opts = if opts.is_empty() {
            String::new()
        } else {
            format!(",{opts}")
        };
        return Some(format!("socket,id={id},host={host},port={port}{opts}"));
    }
    if let Some(rest) = spec.strip_prefix("unix:") {
        let (p, opts) = rest.split_once(',').unwrap_or((rest, ""));
        let opts = if opts.is_empty() {
            String::new()
        } else {
            format!(",{opts}")
        };
        return Some(format!("socket,id={id},path={}{opts}", path(p)?));
    }
    if let Some(rest) = spec.strip_prefix("udp:") {
        let (remote, local) = match rest.split_once('@') {
            Some((r, l)) => (r, Some(l)),
            None => (rest, None),
        };
        let (host, port) = remote.rsplit_once(':')?;
        let mut out = format!("udp,id={id},host={host},port={port}");
        if let Some(l) = local {
            let (addr, lport) = l.rsplit_once(':')?;
            if !addr.is_empty() {
                out.push_str(&format!(",localaddr={addr}"));
            }
            out.push_str(&format!(",localport={lport}"));
        }
        return Some(out);
    }
    None
}

/// `-chardev null` (registered in [`registry::TYPES`]).
pub(super) fn build_null(_id: &str, _kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Null)
}

/// `-chardev testdev` (registered in [`registry::TYPES`]).
pub(super) fn build_testdev(_id: &str, _kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Testdev)
}

/// `-chardev msmouse` (registered in [`registry::TYPES`]).
pub(super) fn build_msmouse(_id: &str, _kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Msmouse)
}

/// `-chardev wctablet` (registered in [`registry::TYPES`]).
pub(super) fn build_wctablet(_id: &str, _kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Wctablet)
}

/// `-chardev ringbuf | memory` (registered in [`registry::TYPES`]).
pub(super) fn build_ringbuf(_id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    // `memory` is QEMU's old name for the ring buffer.
    Ok(ChardevKind::Ringbuf {
        size: kv.take_size("size")?.unwrap_or(64 << 10),
    })
}

/// `-chardev udp` (registered in [`registry::TYPES`]).
pub(super) fn build_udp(id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    let port = |kv: &mut KeyVals, key: &'static str, default: Option<u32>, zero: bool| match kv
        .take_u32(key)?
        .or(default)
    {
        Some(p) if p <= 65535 && (zero || p != 0) => Ok(p),
        Some(p) => Err(kv.bad(key, &p.to_string(), "a port number (1 to 65535)")),
        None => Err(OptionError::MissingKey {
            option: "-chardev",
            ty: kv.ty.clone(),
            key,
        }),
    };
    let host = kv
        .take("host")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let remote_port = port(kv, "port", None, false)?;
    let local = kv.take("localaddr").filter(|a| !a.is_empty());
    let local_port = port(kv, "localport", Some(0), true)?;
    let family = match (kv.take_bool("ipv4", false)?, kv.take_bool("ipv6", false)?) {
        (true, true) => {
            return Err(OptionError::Conflict(format!(
                "-chardev udp,id={id}: ipv4=on and ipv6=on together"
            )));
        }
        (true, false) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    let bracket = |h: &str| {
        if h.contains(':') && !h.starts_with('[') {
            format!("[{h}]")
        } else {
            h.to_string()
        }
    };
    // Only a port: the wildcard of the remote's family.
    let local = match (local, local_port) {
        (Some(a), p) => Some(format!("{}:{p}", bracket(&a))),
        (None, 0) => None,
        (None, p) => Some(format!(
            "{}:{p}",
            if host.contains(':') || family == Some(false) {
                "[::]"
            } else {
                "0.0.0.0"
            }
        )),
    };
    Ok(ChardevKind::Udp {
        remote: format!("{}:{remote_port}", bracket(&host)),
        local,
        family,
    })
}

/// `-chardev file` (registered in [`registry::TYPES`]).
pub(super) fn build_file(_id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::File {
        path: kv.require("path")?.into(),
        input_path: kv.take("input-path").map(Into::into),
    })
}

/// `-chardev pipe` (registered in [`registry::TYPES`]).
pub(super) fn build_pipe(_id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Pipe {
        path: kv.require("path")?.into(),
    })
}

/// `-chardev pty` (registered in [`registry::TYPES`]).
pub(super) fn build_pty(_id: &str, _kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Pty)
}

/// `-chardev serial | tty` (registered in [`registry::TYPES`]).
pub(super) fn build_serial(_id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    Ok(ChardevKind::Serial {
        path: kv.require("path")?.into(),
    })
}

/// `-chardev stdio` (registered in [`registry::TYPES`]).
pub(super) fn build_stdio(_id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    kv.take_bool("signal", true)?;
    Ok(ChardevKind::Stdio)
}

/// `-chardev socket` (registered in [`registry::TYPES`]).
pub(super) fn build_socket(id: &str, kv: &mut KeyVals) -> Result<ChardevKind, OptionError> {
    let path = kv.take("path").map(PathBuf::from);
    let host = kv.take("host");
    let port = kv.take_u32("port")?;
    let server = kv.take_bool("server", false)?;
    // QEMU's `wait=off` (and the older bare `nowait`): we
    // never wait for a client.
    kv.take_bool("wait", false)?;
    kv.take_bool("nowait", false)?;
    let reconnect = kv.take_u32("reconnect")?;
    let tcp = match (host, port) {
        (h, Some(p)) if p <= 65535 => {
            Some(format!("{}:{p}", h.unwrap_or_else(|| "127.0.0.1".into())))
        }
        (_, Some(p)) => {
            return Err(kv.bad("port", &p.to_string(), "a port number"));
        }
        (Some(_), None) => {
            return Err(OptionError::MissingKey {
                option: "-chardev",
                ty: kv.ty.clone(),
                key: "port",
            });
        }
        (None, None) => None,
    };
    if path.is_some() == tcp.is_some() {
        return Err(OptionError::Conflict(format!(
            "-chardev socket,id={id}: give exactly one of path= or host=/port="
        )));
    }
    Ok(ChardevKind::Socket {
        path,
        tcp,
        server,
        reconnect,
    })
}
