//! [`OptionError`]: every mistake on a command line, naming the option,
//! the key and the value.

use std::fmt;

/// Why a command line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// An option this monitor does not know.
    UnknownOption(String),
    /// An option given without its argument.
    MissingArgument(String),
    /// An option that may appear once appeared again.
    Repeated(String),
    /// `-object`, `-chardev` or `-device` of an unknown type.
    UnknownType {
        /// The option.
        option: &'static str,
        /// The type given.
        ty: String,
    },
    /// A key the type does not take.
    UnknownKey {
        /// The option.
        option: &'static str,
        /// The type.
        ty: String,
        /// The key.
        key: String,
    },
    /// A key given twice in one option.
    RepeatedKey {
        /// The option.
        option: &'static str,
        /// The key.
        key: String,
    },
    /// A required key is missing.
    MissingKey {
        /// The option.
        option: &'static str,
        /// The type.
        ty: String,
        /// The key.
        key: &'static str,
    },
    /// A value that does not parse or is out of range.
    BadValue {
        /// The option.
        option: &'static str,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Two objects, chardevs or devices with the same id.
    DuplicateId(String),
    /// A reference to an id that is not defined, or is of another kind.
    UnknownId {
        /// Who refers (e.g. `-device virtio-rng-device`).
        by: String,
        /// The key that refers.
        key: &'static str,
        /// The id.
        id: String,
        /// The kind of thing expected.
        expected: &'static str,
    },
    /// Settings that contradict each other.
    Conflict(String),
    /// Not an error: `-device help`, `-netdev user,help` and the like
    /// asked for this text (QEMU prints it and exits with status 0).
    Help(String),
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::UnknownOption(o) => write!(f, "unknown option '{o}'"),
            OptionError::MissingArgument(o) => write!(f, "option '{o}' needs an argument"),
            OptionError::Repeated(o) => write!(f, "option '{o}' given more than once"),
            OptionError::UnknownType { option, ty } => {
                write!(f, "{option}: unknown type '{ty}'")?;
                if super::registry::Kind::of_option(option).is_some() {
                    write!(f, " (see {option} help)")?;
                }
                Ok(())
            }
            OptionError::UnknownKey { option, ty, key } => {
                write!(f, "{option} {ty}: unknown key '{key}'")?;
                if let Some(keys) = super::registry::keys_of(option, ty) {
                    write!(f, " (it takes: {})", keys.join(", "))?;
                }
                Ok(())
            }
            OptionError::RepeatedKey { option, key } => {
                write!(f, "{option}: key '{key}' given more than once")
            }
            OptionError::MissingKey { option, ty, key } => {
                write!(f, "{option} {ty}: missing '{key}='")
            }
            OptionError::BadValue {
                option,
                key,
                value,
                expected,
            } => write!(f, "{option}: {key}='{value}' is not {expected}"),
            OptionError::DuplicateId(id) => write!(f, "id '{id}' is defined more than once"),
            OptionError::UnknownId {
                by,
                key,
                id,
                expected,
            } => write!(f, "{by}: {key}='{id}' does not name {expected}"),
            OptionError::Conflict(why) => f.write_str(why),
            OptionError::Help(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for OptionError {}
