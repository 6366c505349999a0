//! The bodies of the fuzz targets, as library code.
//!
//! Each target is a module with `pub fn run(data: &[u8])` that must never
//! panic on any input. The cargo-fuzz binaries in `fuzz_targets/` (nightly,
//! libFuzzer) only call these functions; `tests/replay.rs` runs every file
//! of the checked-in corpus `corpus/<target>/` through them on stable Rust,
//! so every `cargo test` covers the corpus. Inputs are structured with
//! `arbitrary`, so the fuzzer mutates ring layouts and operation sequences
//! rather than raw bytes only.

pub mod targets;

pub use targets::{TARGETS, Target};
