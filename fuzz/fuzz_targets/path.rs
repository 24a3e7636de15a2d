#![no_main]
//! Fuzz target `path`: the property check `gateway_fuzz::checks::path` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::path(data));
