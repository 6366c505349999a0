//! cargo-fuzz entry point for `dma_map`; the body is `fuzz::targets::dma_map`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz::targets::dma_map::run(data));
