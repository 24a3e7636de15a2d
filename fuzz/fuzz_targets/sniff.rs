#![no_main]
//! Fuzz target `sniff`: the property check `gateway_fuzz::checks::sniff` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::sniff(data));
