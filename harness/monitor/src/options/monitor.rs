//! `-monitor` and `-qmp`: the HMP and QMP sockets.

use super::*;

/// Parses a monitor's chardev spec: `unix:PATH,server=on,wait=off` (or
/// `server,nowait`). Only a listening unix socket that does not wait for
/// its first client is supported.
fn parse_monitor(option: &'static str, arg: &str) -> Result<PathBuf, OptionError> {
    let bad = |key: &str, value: &str, expected: &'static str| OptionError::BadValue {
        option,
        key: key.into(),
        value: value.into(),
        expected,
    };
    let parts = split_commas(arg);
    let first = parts.first().map(String::as_str).unwrap_or("");
    let Some(path) = first.strip_prefix("unix:") else {
        return Err(bad("chardev", first, "unix:PATH (a unix socket)"));
    };
    if path.is_empty() {
        return Err(bad("unix", path, "a socket path"));
    }
    let mut server = false;
    let mut wait = true;
    for p in parts.iter().skip(1).filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p.as_str(), "on"));
        match k {
            "server" => server = parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            "wait" => wait = parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            "nowait" => wait = !parse_bool(v).ok_or_else(|| bad(k, v, "on or off"))?,
            _ => {
                return Err(OptionError::UnknownKey {
                    option,
                    ty: "unix".into(),
                    key: k.into(),
                });
            }
        }
    }
    if !server {
        return Err(OptionError::Conflict(format!(
            "{option} {arg}: only server=on is supported (the monitor listens)"
        )));
    }
    if wait {
        return Err(OptionError::Conflict(format!(
            "{option} {arg}: only wait=off is supported (the guest does not wait for a client)"
        )));
    }
    Ok(PathBuf::from(path))
}

impl Parser {
    /// `-monitor` (HMP) or `-qmp` (QMP) `unix:PATH,server=on,wait=off`.
    pub(super) fn monitor(&mut self, name: &str, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, .. } = self;
        let (option, protocol) = if name == "monitor" {
            ("-monitor", MonitorProtocol::Hmp)
        } else {
            ("-qmp", MonitorProtocol::Qmp)
        };
        let path = parse_monitor(option, arg)?;
        if cfg.monitors.iter().any(|m| m.path == path) {
            return Err(OptionError::Conflict(format!(
                "{option}: socket {} is used twice",
                path.display()
            )));
        }
        cfg.monitors.push(MonitorConfig { protocol, path });
        Ok(())
    }
}
