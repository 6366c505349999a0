//! cargo-fuzz entry point for `blk_request`; the body is `fuzz::targets::blk_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::blk_request::run(data));
