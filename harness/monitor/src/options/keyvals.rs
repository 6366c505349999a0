//! The `type,key=value,...` syntax every option shares (QEMU's, with `,,`
//! for a literal comma), and the value parsers (sizes, booleans, MAC
//! addresses).

use std::collections::BTreeMap;

use super::OptionError;

/// One `type,key=value,...` argument, split with QEMU's escaping (`,,` is
/// a literal comma).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KeyVals {
    pub(super) option: &'static str,
    pub(super) ty: String,
    pub(super) keys: BTreeMap<String, String>,
    /// Keys QEMU lets an option give more than once (`hostfwd`,
    /// `guestfwd`), each value in order.
    pub(super) lists: BTreeMap<String, Vec<String>>,
}

/// Keys that may repeat (QEMU's `-netdev user,hostfwd=…,hostfwd=…`).
const REPEATABLE: &[&str] = &["hostfwd", "guestfwd"];

pub(super) fn split_commas(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push(',');
                }
            } else {
                parts.push(String::new());
            }
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

impl KeyVals {
    /// Parses `arg`; the first element is the type unless it has `=` and
    /// `implied` names the key it stands for (QEMU's implied key, e.g.
    /// `-machine microvm` is `type=microvm`).
    pub(super) fn parse(option: &'static str, arg: &str) -> Result<KeyVals, OptionError> {
        let mut parts = split_commas(arg).into_iter();
        let ty = parts.next().unwrap_or_default();
        if ty.is_empty() || ty.contains('=') {
            return Err(OptionError::BadValue {
                option,
                key: "type".into(),
                value: ty,
                expected: "a type name first",
            });
        }
        let mut keys = BTreeMap::new();
        let mut lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in parts {
            if p.is_empty() {
                continue;
            }
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                // A bare flag means `on`, as in QEMU.
                None => (p.clone(), "on".to_string()),
            };
            if REPEATABLE.contains(&k.as_str()) {
                lists.entry(k).or_default().push(v);
            } else if keys.insert(k.clone(), v).is_some() {
                return Err(OptionError::RepeatedKey { option, key: k });
            }
        }
        Ok(KeyVals {
            option,
            ty,
            keys,
            lists,
        })
    }

    /// Parses `arg` made only of `key=value` elements (`-drive`,
    /// `-blockdev`); `label` names it in messages.
    pub(super) fn parse_keys(
        option: &'static str,
        label: &str,
        arg: &str,
    ) -> Result<KeyVals, OptionError> {
        let mut kv = KeyVals::parse(option, &format!("{label},{arg}"))?;
        kv.ty = label.to_string();
        Ok(kv)
    }

    pub(super) fn take(&mut self, key: &str) -> Option<String> {
        self.registered(key);
        self.keys.remove(key)
    }

    /// The parser's tests hold it to the registry: every key it asks for
    /// is one `-… help` shows.
    fn registered(&self, key: &str) {
        if cfg!(test) {
            assert!(
                super::registry::knows(self.option, &self.ty, key),
                "{} {} asks for key '{key}', which the registry does not list",
                self.option,
                self.ty
            );
        }
    }

    /// One of `choices` (value, result), or an error listing them.
    pub(super) fn take_choice<T: Copy>(
        &mut self,
        key: &str,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Result<Option<T>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => choices
                .iter()
                .find(|(name, _)| *name == v)
                .map(|(_, t)| Some(*t))
                .ok_or_else(|| self.bad(key, &v, expected)),
        }
    }

    pub(super) fn require(&mut self, key: &'static str) -> Result<String, OptionError> {
        self.take(key).ok_or_else(|| OptionError::MissingKey {
            option: self.option,
            ty: self.ty.clone(),
            key,
        })
    }

    pub(super) fn bad(&self, key: &str, value: &str, expected: &'static str) -> OptionError {
        OptionError::BadValue {
            option: self.option,
            key: key.into(),
            value: value.into(),
            expected,
        }
    }

    pub(super) fn take_bool(&mut self, key: &str, default: bool) -> Result<bool, OptionError> {
        match self.take(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| self.bad(key, &v, "on or off")),
        }
    }

    pub(super) fn take_size(&mut self, key: &str) -> Result<Option<u64>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_size(&v)
                .map(Some)
                .ok_or_else(|| self.bad(key, &v, "a size (e.g. 64M)")),
        }
    }

    pub(super) fn take_u32(&mut self, key: &str) -> Result<Option<u32>, OptionError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| self.bad(key, &v, "a number")),
        }
    }

    /// Every value of a repeatable key, in order.
    pub(super) fn take_all(&mut self, key: &str) -> Vec<String> {
        self.registered(key);
        self.lists.remove(key).unwrap_or_default()
    }

    /// Fails on the first key nobody took.
    pub(super) fn finish(self) -> Result<(), OptionError> {
        match self.keys.into_keys().chain(self.lists.into_keys()).next() {
            None => Ok(()),
            Some(key) => Err(OptionError::UnknownKey {
                option: self.option,
                ty: self.ty,
                key,
            }),
        }
    }
}

pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Parses a size with an optional K/M/G/T suffix (powers of 1024; a bare
/// number of `-m` is MiB in QEMU, handled by the caller).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (num, mult) = match v.char_indices().last()? {
        (i, 'k' | 'K') => (&v[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&v[..i], 1 << 20),
        (i, 'g' | 'G') => (&v[..i], 1 << 30),
        (i, 't' | 'T') => (&v[..i], 1 << 40),
        (i, 'b' | 'B') => (&v[..i], 1),
        _ => (v, 1),
    };
    let n: u64 = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()?
    } else {
        num.parse().ok()?
    };
    n.checked_mul(mult)
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
