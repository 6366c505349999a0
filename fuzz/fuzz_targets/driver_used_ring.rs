//! cargo-fuzz entry point for `driver_used_ring`; the body is `fuzz::targets::driver_used_ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::driver_used_ring::run(data));
