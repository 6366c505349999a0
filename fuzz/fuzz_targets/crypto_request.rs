//! cargo-fuzz entry point for `crypto_request`; the body is `fuzz::targets::crypto_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::crypto_request::run(data));
