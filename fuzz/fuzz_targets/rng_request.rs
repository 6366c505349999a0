//! cargo-fuzz entry point for `rng_request`; the body is `fuzz::targets::rng_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::rng_request::run(data));
