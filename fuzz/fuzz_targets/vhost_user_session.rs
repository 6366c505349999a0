//! cargo-fuzz entry point for `vhost_user_session`; the body is `fuzz::targets::vhost_user_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::vhost_user_session::run(data));
