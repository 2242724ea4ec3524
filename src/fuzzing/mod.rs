//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay test.
//!
//! Each target is a `pub fn(&[u8])` that must return normally for every input: a panic is a bug,
//! either in the code under test (a decoder that panics instead of returning an error, a broken
//! broker invariant) or in the target's own model. Keeping the bodies here, behind the `testing`
//! feature, lets `tests/fuzz_corpus.rs` replay the checked-in corpus on stable Rust while
//! `cargo fuzz` (nightly features) explores new inputs with the same code.
//!
//! | target         | what it feeds                          | what it checks beyond "no panic"          |
//! |----------------|----------------------------------------|-------------------------------------------|
//! | `decode_record`| every `store::codec` decoder           | decode → encode → decode round trips      |
//! | `decode_key`   | every `store::keys` decoder            | round trips, byte order = numeric order   |
//! | `http_json`    | every request parser of `http::types`  | accepted requests are within the limits   |
//! | `wal_replay`   | a log directory built from the bytes   | frames match a model; torn tail only at   |
//! |                |                                        | the end; replay idempotent, = read_range  |
//! | `queue_ops`    | up to 256 broker and person's actions, | counts, lease exclusivity, a recovered    |
//! |                | checkpoints and restarts               | broker = the live broker                  |
//!
//! Every target runs in microseconds to a few milliseconds, so that libFuzzer gets thousands of
//! executions per second and the corpus test stays fast in debug builds.

mod http_json;
mod keys;
mod queue_ops;
mod records;
mod wal_replay;

pub use http_json::{http_json, FUZZ_LIMITS};
pub use keys::decode_key;
pub use queue_ops::queue_ops;
pub use records::{decode_record, encode_frame, FIRST_PAYLOAD_OFFSET};
pub use wal_replay::wal_replay;
