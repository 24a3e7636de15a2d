#![no_main]
//! Fuzz target `h2guard`: the property check `gateway_fuzz::checks::h2guard` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::h2guard(data));
