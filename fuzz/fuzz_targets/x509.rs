#![no_main]
//! Fuzz target `x509`: the property check `gateway_fuzz::checks::x509` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::x509(data));
