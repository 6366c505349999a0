//! cargo-fuzz entry point for `chardev_mux`; the body is `fuzz::targets::chardev_mux`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::chardev_mux::run(data));
