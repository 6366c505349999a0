//! cargo-fuzz entry point for `tpm_crb`; the body is `fuzz::targets::tpm_crb`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::tpm_crb::run(data));
