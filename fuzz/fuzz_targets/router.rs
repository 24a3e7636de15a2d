#![no_main]
//! Fuzz target `router`: the property check `gateway_fuzz::checks::router` on libFuzzer's input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::checks::router(data));
