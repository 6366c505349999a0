//! cargo-fuzz entry point for `net_rx`; the body is `fuzz::targets::net_rx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::net_rx::run(data));
