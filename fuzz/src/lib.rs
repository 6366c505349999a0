//! The bodies of the fuzz targets, as library code.
//!
//! Each target is a module with `pub fn run(data: &[u8])` that must never
//! panic on any input. The cargo-fuzz binaries in `fuzz_targets/` (nightly,
//! libFuzzer) only call these functions; `tests/replay.rs` runs every file
//! of the checked-in corpus `corpus/<target>/` through them on stable Rust,
//! so every `cargo test` covers the corpus. Inputs are structured with
//! `arbitrary`, so the fuzzer mutates ring layouts and operation sequences
//! rather than raw bytes only.
//!
//! # Example
//!
//! A target looked up by name in [`TARGETS`] and run on inputs as the
//! fuzzer or the corpus replay would: a well-formed vhost-user request
//! (which must also encode back to itself), a truncated one and garbage
//! all return normally. Then every target on an empty input.
//!
//! ```rust
//! use fuzz::TARGETS;
//!
//! let codec = TARGETS.iter().find(|t| t.name == "vhost_user_codec").expect("listed");
//! // The first byte is the number of file descriptors; then GET_FEATURES
//! // (request 1, protocol version 1, no payload).
//! let mut input = vec![0u8];
//! for word in [1u32, 1, 0] {
//!     input.extend_from_slice(&word.to_ne_bytes());
//! }
//! (codec.run)(&input);
//! (codec.run)(&input[..7]);
//! (codec.run)(&[0xff; 64]);
//!
//! for target in TARGETS {
//!     (target.run)(&[]);
//! }
//! ```

pub mod targets;

pub use targets::{TARGETS, Target};
