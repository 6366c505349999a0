//! cargo-fuzz entry point for `net_user`; the body is `fuzz::targets::net_user`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::net_user::run(data));
