//! outboxd: a single-binary, durable outbox/queue server.
//!
//! Layout (one concept per file; the core does no I/O and reads no clock):
//! - `limits`: every bound, with its default and the relationships between them.
//! - `config`: settings from flags, `OUTBOXD_*` variables and the config file, validated into `Config`.
//! - `auth`: API tokens, their roles and queue patterns.
//! - `error`: the top-level `Error` (why the server could not start or had to stop).
//! - `clock`: the wall clock, read only by the I/O shell.
//! - `random`: SplitMix64, the one seedable generator (nonces, jitter, tests).
//! - `hash`: the fast hasher of the broker's maps.
//! - `timer`: the hierarchical timer wheel (cancellable) behind scheduled delivery, backoff and
//!   lease expiry.
//! - `queue`: the broker (pure): message records, the state machine, the ops every change is made
//!   of and the one function that applies them, retry policy, the checkpoint book.
//! - `store`: the disk: the write-ahead log (also the message store), the sled catalog, the record
//!   codecs and key layout, recovery, backup and check; an in-memory model of the disk for tests.
//! - `engine`: the storage thread: group commit, reads of the broker, housekeeping (checkpoints,
//!   retention, segment reclaiming) and the checkpoint writer's thread.
//! - `http`: the API: routing, request parsing and validation, handlers, reads of the catalog and
//!   the log, error bodies; and the outbox page (`http::ui`), a client of the API whose assets are
//!   embedded in the binary.
//! - `events`: the bounded ring of published events behind `GET /v1/events`.
//! - `rates`: per-queue enqueue, delivery and failure counts of the last minutes, read from the
//!   events, behind `GET /v1/rates`.
//! - `server`: wiring and lifecycle (recover, serve, drain on SIGTERM).
//! - `metrics`: every metric name, the Prometheus recorder, and what `/metrics` sets at a scrape.
//! - `telemetry`: logging setup.
//! - `admin`: `outboxd backup`, `restore` and `check` (maintenance of a data directory).
//! - `cli`: the command-line client (`send`, `lease`, `ack`, `nack`, `queues`, `messages`, `message`,
//!   `retry`, `delete`, `tail`).
//! - `bench`: `outboxd bench`, the load generator.
//! - `fuzzing`: fuzz target bodies (test builds), shared by `fuzz/` and the corpus replay test.

pub mod admin;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
mod failpoint;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod hash;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod random;
pub mod rates;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timer;

pub use error::Error;
