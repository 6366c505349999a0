//! cargo-fuzz entry point for `crypto_parse`; the body is `fuzz::targets::crypto_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::crypto_parse::run(data));
