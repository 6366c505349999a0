//! Transport discovery from the kernel command line (virtio-mmio, spec
//! §4.2): every `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` entry, in
//! the syntax of Linux's virtio_mmio driver, which QEMU microvm and our
//! harness both write.
//!
//! The command line comes from whoever booted us and is not trusted: a bad
//! entry is a [`CmdlineError`] naming it, and [`slots`] skips it; nothing
//! panics. Other parameters are ignored.

use core::fmt;

/// One virtio-mmio transport announced on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioSlot {
    /// Physical base address of the register block.
    pub base: u64,
    /// Size of the register block in bytes.
    pub size: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

/// Why an entry could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// The value does not have the `<size>@<base>:<irq>` shape.
    Shape {
        /// The entry's value.
        value: &'a str,
    },
    /// A number does not parse or overflows.
    Number {
        /// The entry's value.
        value: &'a str,
        /// Which field.
        field: &'static str,
    },
    /// The size is zero or `base + size` wraps.
    Range {
        /// The entry's value.
        value: &'a str,
    },
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::Shape { value } => write!(
                f,
                "virtio_mmio.device={value}: expected <size>@<base>:<irq>"
            ),
            CmdlineError::Number { value, field } => {
                write!(f, "virtio_mmio.device={value}: bad {field}")
            }
            CmdlineError::Range { value } => {
                write!(f, "virtio_mmio.device={value}: empty or wrapping range")
            }
        }
    }
}

impl core::error::Error for CmdlineError<'_> {}

/// The parameter name.
pub const KEY: &str = "virtio_mmio.device=";

/// Parses a number the way Linux's `memparse` does for sizes and
/// `simple_strtoull` for the rest: decimal, or hex with `0x`; `suffix`
/// allows K/M/G.
fn number(s: &str, suffix: bool) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') if suffix => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') if suffix => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') if suffix => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok()?,
        Some(_) => return None,
        None if !digits.is_empty() => digits.parse().ok()?,
        None => return None,
    };
    v.checked_mul(mult)
}

/// Parses one entry's value (what follows `virtio_mmio.device=`).
pub fn parse_entry(value: &str) -> Result<MmioSlot, CmdlineError<'_>> {
    let shape = CmdlineError::Shape { value };
    let (size, rest) = value.split_once('@').ok_or(shape)?;
    let (base, rest) = rest.split_once(':').ok_or(shape)?;
    // An optional platform-device id may follow the irq.
    let irq = rest.split_once(':').map_or(rest, |(irq, _)| irq);
    let size = number(size, true).ok_or(CmdlineError::Number {
        value,
        field: "size",
    })?;
    let base = number(base, false).ok_or(CmdlineError::Number {
        value,
        field: "base",
    })?;
    let irq = irq.parse::<u32>().map_err(|_| CmdlineError::Number {
        value,
        field: "irq",
    })?;
    if size == 0 || base.checked_add(size).is_none() {
        return Err(CmdlineError::Range { value });
    }
    Ok(MmioSlot { base, size, irq })
}

/// Every `virtio_mmio.device=` entry of `cmdline`, parsed, in order.
pub fn entries(cmdline: &str) -> impl Iterator<Item = Result<MmioSlot, CmdlineError<'_>>> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(KEY))
        .map(parse_entry)
}

/// The valid entries only (bad ones are skipped; use [`entries`] to see
/// why).
pub fn slots(cmdline: &str) -> impl Iterator<Item = MmioSlot> + '_ {
    entries(cmdline).filter_map(Result::ok)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;
    use std::string::String;
    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn linux_and_qemu_forms_parse() {
        let line = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                    virtio_mmio.device=4K@0xd0000000:5:3 virtio_mmio.device=0x200@4096:7";
        let v: Vec<_> = slots(line).collect();
        assert_eq!(
            v,
            [
                MmioSlot {
                    base: 0xfeb0_0e00,
                    size: 512,
                    irq: 12
                },
                MmioSlot {
                    base: 0xd000_0000,
                    size: 4096,
                    irq: 5
                },
                MmioSlot {
                    base: 4096,
                    size: 0x200,
                    irq: 7
                },
            ]
        );
    }

    #[test]
    fn bad_entries_are_named_and_skipped() {
        let line = "virtio_mmio.device=512 virtio_mmio.device=x@0x1000:5 \
                    virtio_mmio.device=0@0x1000:5 virtio_mmio.device=512@0x1000:irq \
                    virtio_mmio.device=1G@0xffffffffffffffff:1 virtio_mmio.device=512@0x2000:9";
        let errs: Vec<String> = entries(line)
            .filter_map(|e| e.err().map(|e| format!("{e}")))
            .collect();
        assert_eq!(errs.len(), 5);
        assert!(errs[0].contains("expected <size>@<base>:<irq>"));
        assert!(errs[1].contains("bad size"));
        assert!(errs[2].contains("empty or wrapping"));
        assert!(errs[3].contains("bad irq"));
        assert!(errs[4].contains("empty or wrapping"));
        assert_eq!(slots(line).count(), 1);
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn format_then_parse_roundtrips(
            base in 0u64..(1 << 48), size in 1u64..(1 << 20), irq in any::<u32>(), hex in any::<bool>()
        ) {
            let line = if hex {
                format!("a=b virtio_mmio.device={size:#x}@{base:#x}:{irq} c")
            } else {
                format!("virtio_mmio.device={size}@{base}:{irq}")
            };
            let v: Vec<_> = slots(&line).collect();
            prop_assert_eq!(v, [MmioSlot { base, size, irq }]);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            for e in entries(&s) {
                let _ = e.map_err(|e| format!("{e}"));
            }
            let _ = entries(&format!("virtio_mmio.device={s}")).count();
        }
    }
}
