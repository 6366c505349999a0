//! cargo-fuzz entry point for `pvh_loader`; the body is `fuzz::targets::pvh_loader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::pvh_loader::run(data));
