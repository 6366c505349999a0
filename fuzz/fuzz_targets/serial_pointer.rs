//! cargo-fuzz entry point for `serial_pointer`; the body is `fuzz::targets::serial_pointer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::serial_pointer::run(data));
