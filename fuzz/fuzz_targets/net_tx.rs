//! cargo-fuzz entry point for `net_tx`; the body is `fuzz::targets::net_tx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::net_tx::run(data));
