//! `-tpmdev` (QEMU's TPM backends) and `-device tpm-crb` in front of one.

use super::*;

impl Parser {
    /// `-tpmdev emulator,id=…,chardev=…` or `-tpmdev
    /// passthrough,id=…[,path=…][,cancel-path=…]`.
    pub(super) fn tpmdev(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, ids, .. } = self;
        let mut kv = KeyVals::parse("-tpmdev", arg)?;
        let id = kv.require("id")?;
        let kind = match registry::lookup(registry::Kind::Tpmdev, &kv.ty).map(|t| t.build) {
            Some(registry::Build::Tpmdev(f)) => f(&id, &mut kv)?,
            _ => return Err(registry::unknown_or_refused("-tpmdev", kv.ty)),
        };
        kv.finish()?;
        if ids.insert(id.clone(), IdKind::Tpmdev).is_some() {
            return Err(OptionError::DuplicateId(id));
        }
        cfg.tpmdevs.push((id, kind));
        Ok(())
    }

    /// `-device tpm-crb,tpmdev=…[,ppi=off]`: one per machine.
    pub(super) fn tpm_crb(&mut self, mut kv: KeyVals) -> Result<(), OptionError> {
        let id = kv.take("id");
        let tpmdev = kv.require("tpmdev")?;
        // QEMU's physical presence interface needs ACPI, which these
        // machines do not have.
        if kv.take_bool("ppi", false)? {
            return Err(kv.bad("ppi", "on", "off (no physical presence interface here)"));
        }
        kv.finish()?;
        if self.cfg.tpm.is_some() {
            return Err(OptionError::Conflict(
                "-device tpm-crb: a machine has at most one TPM".into(),
            ));
        }
        if let Some(id) = id
            && self.ids.insert(id.clone(), IdKind::Device).is_some()
        {
            return Err(OptionError::DuplicateId(id));
        }
        self.cfg.tpm = Some(TpmConfig { tpmdev });
        Ok(())
    }
}

/// `-tpmdev emulator` (registered in [`registry::TYPES`]).
pub(super) fn build_emulator(_id: &str, kv: &mut KeyVals) -> Result<TpmdevKind, OptionError> {
    Ok(TpmdevKind::Emulator {
        chardev: kv.require("chardev")?,
    })
}

/// `-tpmdev passthrough` (registered in [`registry::TYPES`]).
pub(super) fn build_passthrough(_id: &str, kv: &mut KeyVals) -> Result<TpmdevKind, OptionError> {
    Ok(TpmdevKind::Passthrough {
        path: kv.take("path").unwrap_or_else(|| "/dev/tpm0".into()).into(),
        cancel_path: kv.take("cancel-path").map(PathBuf::from),
    })
}
