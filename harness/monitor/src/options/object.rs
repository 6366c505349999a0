//! `-object`: memory backends, entropy sources and cryptodevs.

use super::*;

impl Parser {
    /// `-object memory-backend-*|rng-*|cryptodev-backend-builtin|cryptodev-vhost-user,id=…`.
    pub(super) fn object(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-object", arg)?;
        let id = kv.require("id")?;
        let kind = match registry::lookup(registry::Kind::Object, &kv.ty).map(|t| t.build) {
            Some(registry::Build::Object(f)) => f(&id, &mut kv, cfg)?,
            _ => return Err(registry::unknown_or_refused("-object", kv.ty)),
        };
        kv.finish()?;
        if ids.insert(id.clone(), kind).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        Ok(())
    }
}

/// `-object memory-backend-ram | memory-backend-file | memory-backend-memfd` (registered in [`registry::TYPES`]).
pub(super) fn build_memory_backend(
    id: &str,
    kv: &mut KeyVals,
    cfg: &mut MachineConfig,
) -> Result<IdKind, OptionError> {
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
        id: id.to_string(),
        kind,
        size,
        share,
        prealloc,
    });
    Ok(IdKind::Memory)
}

/// `-object rng-builtin | rng-random | rng-egd | rng-deterministic` (registered in [`registry::TYPES`]).
pub(super) fn build_rng(
    id: &str,
    kv: &mut KeyVals,
    cfg: &mut MachineConfig,
) -> Result<IdKind, OptionError> {
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
    cfg.rngs.push((id.to_string(), rng));
    Ok(IdKind::Rng)
}

/// `-object cryptodev-backend-builtin | cryptodev-vhost-user` (registered in [`registry::TYPES`]).
pub(super) fn build_cryptodev(
    id: &str,
    kv: &mut KeyVals,
    cfg: &mut MachineConfig,
) -> Result<IdKind, OptionError> {
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
        .push((id.to_string(), CryptodevConfig { queues, backend }));
    Ok(IdKind::Cryptodev)
}
