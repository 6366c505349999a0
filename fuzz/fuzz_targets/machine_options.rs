//! cargo-fuzz entry point for `machine_options`; the body is `fuzz::targets::machine_options`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::machine_options::run(data));
