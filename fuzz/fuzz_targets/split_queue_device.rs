//! cargo-fuzz entry point for `split_queue_device`; the body is `fuzz::targets::split_queue_device`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::split_queue_device::run(data));
