//! cargo-fuzz target: `outboxd::fuzzing::wal_replay`
//! (see src/fuzzing/wal_replay.rs for what it feeds and checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzzing::wal_replay(data));
