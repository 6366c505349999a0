//! cargo-fuzz entry point for `l2tpv3_packet`; the body is `fuzz::targets::l2tpv3_packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::l2tpv3_packet::run(data));
