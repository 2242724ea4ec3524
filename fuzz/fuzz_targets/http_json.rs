//! cargo-fuzz target: `outboxd::fuzzing::http_json`
//! (see src/fuzzing/http_json.rs for what it feeds and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzzing::http_json(data));
