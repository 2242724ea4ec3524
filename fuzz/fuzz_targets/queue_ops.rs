//! cargo-fuzz target: `outboxd::fuzzing::queue_ops`
//! (see src/fuzzing/queue_ops/ for what it feeds and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzzing::queue_ops(data));
