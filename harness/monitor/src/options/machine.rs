//! `-m`, `-machine`, `-kernel` and `-append`.

use super::*;

impl Parser {
    /// `-m SIZE` (a bare number is MiB, as in QEMU).
    pub(super) fn memory(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, seen_m, .. } = self;
        if std::mem::replace(seen_m, true) {
            return Err(OptionError::Repeated("-m".into()));
        }
        let v = arg.strip_prefix("size=").unwrap_or(arg);
        // A bare number is MiB (QEMU).
        let bytes = if v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty() {
            v.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << 20))
        } else {
            parse_size(v)
        };
        cfg.memory = bytes
            .filter(|&b| b >= 1 << 20)
            .ok_or_else(|| OptionError::BadValue {
                option: "-m",
                key: "size".into(),
                value: arg.to_string(),
                expected: "a RAM size of at least 1M",
            })?;
        Ok(())
    }

    /// `-machine microvm[,memory-backend=ID]`.
    pub(super) fn machine(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser {
            cfg, seen_machine, ..
        } = self;
        if std::mem::replace(seen_machine, true) {
            return Err(OptionError::Repeated("-machine".into()));
        }
        let mut kv = KeyVals::parse("-machine", arg)?;
        if kv.ty != "microvm" && kv.ty != "virtio-harness" {
            return Err(OptionError::UnknownType {
                option: "-machine",
                ty: kv.ty,
            });
        }
        cfg.memory_backend = kv.take("memory-backend");
        // Accepted for compatibility with QEMU microvm command lines.
        kv.take_bool("acpi", false)?;
        kv.finish()?;
        Ok(())
    }

    /// `-kernel PATH`.
    pub(super) fn kernel(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, .. } = self;
        if cfg.kernel.replace(arg.into()).is_some() {
            return Err(OptionError::Repeated("-kernel".into()));
        }
        Ok(())
    }

    /// `-append CMDLINE`.
    pub(super) fn append(&mut self, arg: &str) -> Result<(), OptionError> {
        let Parser { cfg, .. } = self;
        if !cfg.append.is_empty() {
            return Err(OptionError::Repeated("-append".into()));
        }
        cfg.append = arg.to_string();
        Ok(())
    }
}
