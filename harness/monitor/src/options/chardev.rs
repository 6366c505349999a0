//! `-chardev`: character devices.

use super::*;

impl Parser {
    /// `-chardev null|ringbuf|file|pipe|pty|stdio|socket,id=…`.
    pub(super) fn chardev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-chardev", arg)?;
        let id = kv.require("id")?;
        let kind = match kv.ty.as_str() {
            "null" => ChardevKind::Null,
            "ringbuf" => ChardevKind::Ringbuf {
                size: kv.take_size("size")?.unwrap_or(64 << 10),
            },
            "file" => ChardevKind::File {
                path: kv.require("path")?.into(),
                input_path: kv.take("input-path").map(Into::into),
            },
            "pipe" => ChardevKind::Pipe {
                path: kv.require("path")?.into(),
            },
            "pty" => ChardevKind::Pty,
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
        cfg.chardevs.push((id, kind));
        Ok(())
    }
}
