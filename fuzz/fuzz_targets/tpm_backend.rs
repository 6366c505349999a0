//! cargo-fuzz entry point for `tpm_backend`; the body is `fuzz::targets::tpm_backend`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::tpm_backend::run(data));
