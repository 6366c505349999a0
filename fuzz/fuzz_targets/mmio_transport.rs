//! cargo-fuzz entry point for `mmio_transport`; the body is `fuzz::targets::mmio_transport`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::mmio_transport::run(data));
