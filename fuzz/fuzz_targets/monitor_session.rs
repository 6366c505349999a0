//! cargo-fuzz entry point for `monitor_session`; the body is `fuzz::targets::monitor_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::monitor_session::run(data));
