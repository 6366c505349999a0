//! cargo-fuzz entry point for `vhost_user_codec`; the body is `fuzz::targets::vhost_user_codec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::vhost_user_codec::run(data));
