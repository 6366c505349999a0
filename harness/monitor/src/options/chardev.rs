//! `-chardev`: character devices.

use super::*;

impl Parser {
    /// `-chardev null|ringbuf|memory|file|pipe|pty|serial|stdio|socket|udp|testdev|msmouse|wctablet,id=…`.
    pub(super) fn chardev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-chardev", arg)?;
        let id = kv.require("id")?;
        let mux = kv.take_bool("mux", false)?;
        let kind = match kv.ty.as_str() {
            "null" => ChardevKind::Null,
            "testdev" => ChardevKind::Testdev,
            "msmouse" => ChardevKind::Msmouse,
            "wctablet" => ChardevKind::Wctablet,
            // `memory` is QEMU's old name for the ring buffer.
            "ringbuf" | "memory" => ChardevKind::Ringbuf {
                size: kv.take_size("size")?.unwrap_or(64 << 10),
            },
            "udp" => {
                let port = |kv: &mut KeyVals,
                            key: &'static str,
                            default: Option<u32>,
                            zero: bool| {
                    match kv.take_u32(key)?.or(default) {
                        Some(p) if p <= 65535 && (zero || p != 0) => Ok(p),
                        Some(p) => Err(kv.bad(key, &p.to_string(), "a port number (1 to 65535)")),
                        None => Err(OptionError::MissingKey {
                            option: "-chardev",
                            ty: kv.ty.clone(),
                            key,
                        }),
                    }
                };
                let host = kv
                    .take("host")
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".into());
                let remote_port = port(&mut kv, "port", None, false)?;
                let local = kv.take("localaddr").filter(|a| !a.is_empty());
                let local_port = port(&mut kv, "localport", Some(0), true)?;
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
                ChardevKind::Udp {
                    remote: format!("{}:{remote_port}", bracket(&host)),
                    local,
                    family,
                }
            }
            "file" => ChardevKind::File {
                path: kv.require("path")?.into(),
                input_path: kv.take("input-path").map(Into::into),
            },
            "pipe" => ChardevKind::Pipe {
                path: kv.require("path")?.into(),
            },
            "pty" => ChardevKind::Pty,
            "serial" | "tty" => ChardevKind::Serial {
                path: kv.require("path")?.into(),
            },
            "vc" | "qemu-vdagent" | "spicevmc" | "spiceport" => {
                return Err(OptionError::Conflict(format!(
                    "-chardev {}: not available here: it needs a display (vc: a graphical \
                     console) or a SPICE or VNC server (qemu-vdagent: the clipboard and mouse \
                     of a remote viewer), and this monitor has neither",
                    kv.ty
                )));
            }
            "parallel" | "parport" => {
                return Err(OptionError::Conflict(format!(
                    "-chardev {}: not available here: QEMU's parallel chardev carries a \
                     parallel port device's register accesses to the host port (ppdev \
                     ioctls), not a byte stream, and this monitor has no parallel port \
                     device to make them",
                    kv.ty
                )));
            }
            "stdio" => {
                kv.take_bool("signal", true)?;
                ChardevKind::Stdio
            }
            "socket" => {
                let path = kv.take("path").map(PathBuf::from);
                let host = kv.take("host");
                let port = kv.take_u32("port")?;
                let server = kv.take_bool("server", false)?;
                // QEMU's `wait=off`: we never wait for a client.
                kv.take_bool("wait", false)?;
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
                            ty: kv.ty,
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
                ChardevKind::Socket {
                    path,
                    tcp,
                    server,
                    reconnect,
                }
            }
            _ => {
                return Err(OptionError::UnknownType {
                    option: "-chardev",
                    ty: kv.ty,
                });
            }
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

    /// `-serial chardev:ID|stdio|pty|file:PATH|null|none`: the next UART
    /// (COM1, then COM2).
    pub(super) fn serial(&mut self, arg: &str) -> Result<(), OptionError> {
        if self.cfg.serials.len() >= 2 {
            return Err(OptionError::Conflict(
                "-serial: this machine has two UARTs (COM1, COM2)".into(),
            ));
        }
        // QEMU's shorthands make a chardev of their own, named after the
        // port (`serial0`, `serial1`), as QEMU does.
        let implicit = match arg {
            "stdio" => Some(ChardevKind::Stdio),
            "pty" => Some(ChardevKind::Pty),
            _ => match arg.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Some(ChardevKind::File {
                    path: path.into(),
                    input_path: None,
                }),
                _ => None,
            },
        };
        let spec = match (arg, implicit) {
            ("null" | "none", _) => None,
            (_, Some(kind)) => {
                let id = format!("serial{}", self.cfg.serials.len());
                if self.ids.insert(id.clone(), IdKind::Chardev).is_some() {
                    return Err(OptionError::DuplicateId(id));
                }
                self.cfg.chardevs.push((id.clone(), kind));
                Some(id)
            }
            _ => match arg.strip_prefix("chardev:") {
                Some(id) if !id.is_empty() => Some(id.to_string()),
                _ => {
                    return Err(OptionError::BadValue {
                        option: "-serial",
                        key: "backend".into(),
                        value: arg.to_string(),
                        expected: "chardev:ID, stdio, pty, file:PATH, null or none (other \
                                   backends: -chardev …,id=ID and -serial chardev:ID)",
                    });
                }
            },
        };
        self.cfg.serials.push(spec);
        Ok(())
    }
}
