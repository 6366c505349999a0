//! `-object`: memory backends, entropy sources and cryptodevs.

use super::*;

impl Parser {
    /// `-object memory-backend-*|rng-*|cryptodev-backend-builtin|cryptodev-vhost-user,id=…`.
    pub(super) fn object(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-object", arg)?;
        let id = kv.require("id")?;
        let kind = match kv.ty.as_str() {
            "memory-backend-ram" | "memory-backend-file" | "memory-backend-memfd" => {
                let size = kv.take_size("size")?.ok_or(OptionError::MissingKey {
                    option: "-object",
                    ty: kv.ty.clone(),
                    key: "size",
                })?;
                let kind = match kv.ty.as_str() {
                    "memory-backend-ram" => MemoryBackendKind::Ram,
                    "memory-backend-file" => MemoryBackendKind::File {
                        path: kv.require("mem-path")?.into(),
                    },
                    _ => MemoryBackendKind::Memfd,
                };
                let share = kv.take_bool("share", kind == MemoryBackendKind::Memfd)?;
                let prealloc = kv.take_bool("prealloc", false)?;
                if kind == MemoryBackendKind::Memfd {
                    kv.take_bool("seal", true)?;
                }
                cfg.memory_backends.push(MemoryBackendConfig {
                    id: id.clone(),
                    kind,
                    size,
                    share,
                    prealloc,
                });
                IdKind::Memory
            }
            "rng-builtin" | "rng-random" | "rng-egd" | "rng-deterministic" => {
                let rng = match kv.ty.as_str() {
                    "rng-builtin" => RngConfig::Builtin,
                    "rng-random" => RngConfig::Random {
                        filename: kv
                            .take("filename")
                            .unwrap_or_else(|| "/dev/urandom".into())
                            .into(),
                    },
                    "rng-egd" => RngConfig::Egd {
                        chardev: kv.require("chardev")?,
                    },
                    _ => {
                        let seed = kv.take("seed").unwrap_or_else(|| "0".into());
                        RngConfig::Deterministic {
                            seed: seed
                                .parse()
                                .map_err(|_| kv.bad("seed", &seed, "a number"))?,
                        }
                    }
                };
                cfg.rngs.push((id.clone(), rng));
                IdKind::Rng
            }
            "cryptodev-backend-builtin" | "cryptodev-vhost-user" => {
                let backend = if kv.ty == "cryptodev-vhost-user" {
                    CryptodevBackend::VhostUser {
                        chardev: kv.require("chardev")?,
                    }
                } else {
                    CryptodevBackend::Builtin
                };
                let queues = match kv.take_u32("queues")? {
                    None => 1,
                    // QEMU's limit (MAX_CRYPTO_QUEUE_NUM).
                    Some(n) => u16::try_from(n)
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| kv.bad("queues", &n.to_string(), "1 to 64"))?,
                };
                cfg.cryptodevs
                    .push((id.clone(), CryptodevConfig { queues, backend }));
                IdKind::Cryptodev
            }
            _ => return Err(registry::unknown_or_refused("-object", kv.ty)),
        };
        kv.finish()?;
        if ids.insert(id.clone(), kind).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        Ok(())
    }
}
