//! cargo-fuzz target: `outboxd::fuzzing::decode_record`
//! (see src/fuzzing/records.rs for what it feeds and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzzing::decode_record(data));
