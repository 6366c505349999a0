//! cargo-fuzz entry point for `descriptor_chain`; the body is `fuzz::targets::descriptor_chain`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::descriptor_chain::run(data));
