//! Transport discovery from the kernel command line (virtio-mmio, spec
//! §4.2): every `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` entry, in
//! the syntax of Linux's `virtio_mmio` driver, which QEMU microvm,
//! Firecracker and our harness write.
//!
//! The command line comes from whoever booted us and is not trusted: a bad
//! entry is a [`CmdlineError`] naming it, and the lenient [`slots`] and
//! [`SlotList`] skip it; nothing panics. It only parses: probing a slot is
//! [`crate::transport`]. Other parameters are ignored.
//!
//! As in Linux: `size` takes an optional `K`/`M`/`G`/`T`/`P`/`E` suffix,
//! numbers are decimal or `0x` hex, `irq` is decimal and not 0, and the
//! optional `id` is a decimal (signed) integer; `-` and `_` are the same in
//! the parameter name. Unlike Linux, a number with a leading `0` and more
//! digits (octal to Linux's parser) is refused rather than read in a base
//! the writer probably did not mean.

use core::fmt;

/// One virtio-mmio transport announced on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioSlot {
    /// Physical base address of the register block.
    pub base: u64,
    /// Size of the register block in bytes (not 0; `base + size` does not
    /// wrap).
    pub size: u64,
    /// Interrupt line (GSI), not 0.
    pub irq: u32,
}

impl MmioSlot {
    /// One past the last byte of the block.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether two slots share a byte.
    pub fn overlaps(&self, other: &MmioSlot) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

impl fmt::Display for MmioSlot {
    /// The command-line entry that announces the slot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY}{:#x}@{:#x}:{}", self.size, self.base, self.irq)
    }
}

/// A field of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// `<size>`.
    Size,
    /// `<base>`.
    Base,
    /// `<irq>`.
    Irq,
    /// `<id>`.
    Id,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Size => "size",
            Field::Base => "base",
            Field::Irq => "irq",
            Field::Id => "id",
        })
    }
}

/// What is wrong with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryError {
    /// The value does not have the `<size>@<base>:<irq>[:<id>]` shape.
    Shape,
    /// A field is not a number of its syntax, or it overflows.
    Number {
        /// Which field.
        field: Field,
    },
    /// A field has a leading `0` followed by digits, which Linux reads as
    /// octal; refused as ambiguous.
    LeadingZero {
        /// Which field.
        field: Field,
    },
    /// The irq is 0, which Linux refuses.
    ZeroIrq,
    /// The size is 0 or `base + size` wraps the address space.
    Range,
}

/// Why an entry could not be read: the entry's value and what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineError<'a> {
    /// The entry's value (what follows `virtio_mmio.device=`).
    pub entry: &'a str,
    /// What is wrong with it.
    pub kind: EntryError,
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY}{}: ", self.entry)?;
        match self.kind {
            EntryError::Shape => f.write_str("expected <size>@<base>:<irq>[:<id>]"),
            EntryError::Number { field } => write!(f, "bad {field}"),
            EntryError::LeadingZero { field } => {
                write!(f, "{field} has a leading 0 (octal to Linux), refused")
            }
            EntryError::ZeroIrq => f.write_str("irq 0 is not allowed"),
            EntryError::Range => f.write_str("empty or wrapping range"),
        }
    }
}

impl core::error::Error for CmdlineError<'_> {}

/// The parameter name, as written.
pub const KEY: &str = "virtio_mmio.device=";

/// The parameter's value if `word` is a `virtio_mmio.device=` parameter
/// (with `-` and `_` interchangeable in the name, as Linux's parameter
/// parser has them).
fn value_of(word: &str) -> Option<&str> {
    let (name, value) = word.split_once('=')?;
    let same = name.len() + 1 == KEY.len()
        && name.bytes().zip(KEY.bytes()).all(|(a, b)| {
            let norm = |c: u8| if c == b'-' { b'_' } else { c };
            norm(a) == norm(b)
        });
    same.then_some(value)
}

/// Parses an unsigned number: decimal, or hex with `0x`; with `suffix`,
/// one K/M/G/T/P/E (any case) after the digits multiplies by a power of
/// 1024, as Linux's `memparse` does (digits are taken greedily, so `0x1E`
/// is 30, not 1 EiB).
fn number(s: &str, field: Field, suffix: bool) -> Result<u64, EntryError> {
    let bad = EntryError::Number { field };
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    let body = hex.unwrap_or(s);
    let digits_len = body
        .bytes()
        .take_while(|b| match hex {
            Some(_) => b.is_ascii_hexdigit(),
            None => b.is_ascii_digit(),
        })
        .count();
    let (digits, rest) = body.split_at_checked(digits_len).ok_or(bad)?;
    let shift = match rest.as_bytes() {
        [] => 0,
        [c] if suffix => match c.to_ascii_uppercase() {
            b'K' => 10,
            b'M' => 20,
            b'G' => 30,
            b'T' => 40,
            b'P' => 50,
            b'E' => 60,
            _ => return Err(bad),
        },
        _ => return Err(bad),
    };
    let v = match hex {
        Some(_) if !digits.is_empty() => u64::from_str_radix(digits, 16).map_err(|_| bad)?,
        Some(_) => return Err(bad),
        None => decimal(digits, field)?,
    };
    v.checked_mul(1u64 << shift).ok_or(bad)
}

/// Parses plain decimal digits (no sign, no leading zero unless "0").
fn decimal(s: &str, field: Field) -> Result<u64, EntryError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EntryError::Number { field });
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(EntryError::LeadingZero { field });
    }
    s.parse().map_err(|_| EntryError::Number { field })
}

/// Parses one entry's value (what follows `virtio_mmio.device=`).
pub fn parse_entry(entry: &str) -> Result<MmioSlot, CmdlineError<'_>> {
    parse_fields(entry).map_err(|kind| CmdlineError { entry, kind })
}

fn parse_fields(value: &str) -> Result<MmioSlot, EntryError> {
    let (size, rest) = value.split_once('@').ok_or(EntryError::Shape)?;
    let (base, rest) = rest.split_once(':').ok_or(EntryError::Shape)?;
    let (irq, id) = match rest.split_once(':') {
        Some((irq, id)) => (irq, Some(id)),
        None => (rest, None),
    };
    let size = number(size, Field::Size, true)?;
    let base = number(base, Field::Base, false)?;
    let irq = u32::try_from(decimal(irq, Field::Irq)?)
        .map_err(|_| EntryError::Number { field: Field::Irq })?;
    if let Some(id) = id {
        // Linux reads it with "%d": a signed int. It names the platform
        // device only; checked, not kept.
        let magnitude = decimal(id.strip_prefix('-').unwrap_or(id), Field::Id)?;
        if magnitude > 1 << 31 || (magnitude == 1 << 31 && !id.starts_with('-')) {
            return Err(EntryError::Number { field: Field::Id });
        }
    }
    if irq == 0 {
        return Err(EntryError::ZeroIrq);
    }
    if size == 0 || base.checked_add(size).is_none() {
        return Err(EntryError::Range);
    }
    Ok(MmioSlot { base, size, irq })
}

/// Every `virtio_mmio.device=` entry of `cmdline`, parsed, in order.
pub fn entries(cmdline: &str) -> impl Iterator<Item = Result<MmioSlot, CmdlineError<'_>>> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(value_of)
        .map(parse_entry)
}

/// The valid entries only (bad ones are skipped; use [`entries`] to see
/// why).
pub fn slots(cmdline: &str) -> impl Iterator<Item = MmioSlot> + '_ {
    entries(cmdline).filter_map(Result::ok)
}

/// The valid slots of a command line in a list of at most `N`, without an
/// allocator; bad entries, slots overlapping an earlier one, and slots
/// beyond `N` are counted, not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotList<const N: usize> {
    slots: heapless::Vec<MmioSlot, N>,
    invalid: usize,
    overlapping: usize,
    dropped: usize,
}

impl<const N: usize> SlotList<N> {
    /// Parses every entry of `cmdline`.
    pub fn parse(cmdline: &str) -> Self {
        let mut list = SlotList {
            slots: heapless::Vec::new(),
            invalid: 0,
            overlapping: 0,
            dropped: 0,
        };
        for entry in entries(cmdline) {
            match entry {
                Err(_) => list.invalid += 1,
                Ok(s) if list.slots.iter().any(|o| o.overlaps(&s)) => list.overlapping += 1,
                Ok(s) => {
                    if list.slots.push(s).is_err() {
                        list.dropped += 1;
                    }
                }
            }
        }
        list
    }

    /// The slots kept, in command-line order.
    pub fn as_slice(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// An iterator over the slots kept.
    pub fn iter(&self) -> core::slice::Iter<'_, MmioSlot> {
        self.slots.iter()
    }

    /// Entries that did not parse.
    pub fn invalid(&self) -> usize {
        self.invalid
    }

    /// Valid entries skipped because they overlap an earlier slot.
    pub fn overlapping(&self) -> usize {
        self.overlapping
    }

    /// Valid entries skipped because the list was full.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

impl<'a, const N: usize> IntoIterator for &'a SlotList<N> {
    type Item = &'a MmioSlot;
    type IntoIter = core::slice::Iter<'a, MmioSlot>;
    fn into_iter(self) -> Self::IntoIter {
        self.slots.iter()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;
    use std::string::String;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    fn slot(base: u64, size: u64, irq: u32) -> MmioSlot {
        MmioSlot { base, size, irq }
    }

    #[test]
    fn linux_qemu_and_firecracker_forms_parse_4_2() {
        let line = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 \
                    virtio-mmio.device=4K@0xd0000000:5:3 virtio_mmio.device=0x200@4096:7:-1 \
                    virtio_mmio.device=1m@0x1_0000:9 virtio_mmio.device=1M@0x10000000:10";
        let v: Vec<_> = slots(line).collect();
        assert_eq!(
            v,
            [
                slot(0xfeb0_0e00, 512, 12),
                slot(0xd000_0000, 4096, 5),
                slot(4096, 0x200, 7),
                slot(0x1000_0000, 1 << 20, 10),
            ]
        );
        assert_eq!(
            entries(line).nth(3).unwrap().unwrap_err().kind,
            EntryError::Number { field: Field::Base }
        );
    }

    #[test]
    fn bad_entries_are_named_and_skipped() {
        let line = "virtio_mmio.device=512 virtio_mmio.device=x@0x1000:5 \
                    virtio_mmio.device=0@0x1000:5 virtio_mmio.device=512@0x1000:irq \
                    virtio_mmio.device=1G@0xffffffffffffffff:1 virtio_mmio.device=512@0x2000:9 \
                    virtio_mmio.device=512@0x3000:0 virtio_mmio.device=512@010:4 \
                    virtio_mmio.device=512@0x+10:4 virtio_mmio.device=512@0x4000:+4 \
                    virtio_mmio.device=512@0x4000:4:x virtio_mmio.device=16E@0:1 \
                    virtio_mmio.device=512@0x4000:4:2147483648 virtio_mmio.device=K@0:1 \
                    virtio_mmio.device=0x1E@0x5000:6";
        let errs: Vec<CmdlineError<'_>> = entries(line).filter_map(Result::err).collect();
        let kinds: Vec<EntryError> = errs.iter().map(|e| e.kind).collect();
        use EntryError::*;
        assert_eq!(
            kinds,
            [
                Shape,
                Number { field: Field::Size },
                Range,
                Number { field: Field::Irq },
                Range,
                ZeroIrq,
                LeadingZero { field: Field::Base },
                Number { field: Field::Base },
                Number { field: Field::Irq },
                Number { field: Field::Id },
                Number { field: Field::Size },
                Number { field: Field::Id },
                Number { field: Field::Size },
            ]
        );
        let text: Vec<String> = errs.iter().map(|e| format!("{e}")).collect();
        assert_eq!(
            text[0],
            "virtio_mmio.device=512: expected <size>@<base>:<irq>[:<id>]"
        );
        assert!(text[6].contains("leading 0"), "{}", text[6]);
        // Hex digits are taken greedily, as Linux's memparse does.
        assert_eq!(
            slots(line).collect::<Vec<_>>(),
            [slot(0x2000, 512, 9), slot(0x5000, 0x1e, 6)]
        );
    }

    #[test]
    fn slot_list_is_bounded_and_counts_what_it_skips() {
        let line = "virtio_mmio.device=0x200@0x1000:1 virtio_mmio.device=0x200@0x1100:2 \
                    bad virtio_mmio.device=oops virtio_mmio.device=0x200@0x2000:3 \
                    virtio_mmio.device=0x200@0x3000:4 virtio_mmio.device=0x200@0x4000:5";
        let list = SlotList::<2>::parse(line);
        assert_eq!(
            list.as_slice(),
            [slot(0x1000, 0x200, 1), slot(0x2000, 0x200, 3)]
        );
        assert_eq!(
            (list.invalid(), list.overlapping(), list.dropped()),
            (1, 1, 2)
        );
        assert_eq!(list.iter().count(), 2);
        assert_eq!((&list).into_iter().map(|s| s.irq).sum::<u32>(), 4);
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// One way of writing `n` (decimal or hex), with a suffix if `size`.
    fn write_number(n: u64, hex: bool, suffix: Option<(char, u32)>) -> String {
        match suffix {
            Some((c, shift)) if n.trailing_zeros() >= shift && n != 0 => {
                let v = n >> shift;
                if hex {
                    format!("{v:#x}{c}")
                } else {
                    format!("{v}{c}")
                }
            }
            _ if hex => format!("{n:#x}"),
            _ => format!("{n}"),
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn format_then_parse_roundtrips(
            base in 0u64..(1 << 48),
            size in 1u64..(1 << 34),
            irq in 1u32..,
            hex_base in any::<bool>(),
            hex_size in any::<bool>(),
            suffix in prop::option::of(prop::sample::select(vec![('K', 10u32), ('m', 20), ('G', 30)])),
            id in prop::option::of(any::<i32>()),
            dash in any::<bool>(),
        ) {
            let key = if dash { "virtio-mmio.device=" } else { KEY };
            let mut entry = format!(
                "{}@{}:{irq}",
                write_number(size, hex_size, suffix),
                write_number(base, hex_base, None),
            );
            if let Some(id) = id {
                entry.push_str(&format!(":{id}"));
            }
            let line = format!("root=/dev/vda {key}{entry} quiet");
            let v: Vec<_> = slots(&line).collect();
            prop_assert_eq!(&v, &[MmioSlot { base, size, irq }]);
            // Display writes an entry that parses back to the same slot.
            let shown = format!("{}", v[0]);
            prop_assert_eq!(slots(&shown).collect::<Vec<_>>(), v);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            for e in entries(&s) {
                let _ = e.map_err(|e| format!("{e}"));
            }
            let _ = entries(&format!("virtio_mmio.device={s}")).count();
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = SlotList::<4>::parse(&format!("virtio_mmio.device={lossy} {s}"));
        }

        #[test]
        fn near_valid_entries_never_panic(
            size in "[0-9a-fxXkKmMgGtTpPeE+-]{0,24}",
            base in "[0-9a-fxX+-]{0,24}",
            irq in "[0-9+-]{0,12}",
            id in prop::option::of("[0-9+-]{0,12}"),
        ) {
            let mut e = format!("{size}@{base}:{irq}");
            if let Some(id) = id {
                e.push(':');
                e.push_str(&id);
            }
            if let Ok(slot) = parse_entry(&e) {
                prop_assert!(slot.size > 0 && slot.irq > 0);
                prop_assert!(slot.base.checked_add(slot.size).is_some());
            }
        }
    }
}
