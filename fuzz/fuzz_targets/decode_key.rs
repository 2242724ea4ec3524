//! cargo-fuzz target: `outboxd::fuzzing::decode_key`
//! (see src/fuzzing/keys.rs for what it feeds and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzzing::decode_key(data));
