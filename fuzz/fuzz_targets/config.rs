#![no_main]
//! Fuzz target `config`: the property check `gateway_fuzz::checks::config` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::config(data));
