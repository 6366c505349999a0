//! cargo-fuzz entry point for `mmio_registers`; the body is `fuzz::targets::mmio_registers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::mmio_registers::run(data));
