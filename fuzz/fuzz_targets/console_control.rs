//! cargo-fuzz entry point for `console_control`; the body is `fuzz::targets::console_control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::console_control::run(data));
