//! Metrics: every metric name in one place, the recorder, and the `/metrics` rendering.
//!
//! Counters and histograms are recorded where things happen (the storage thread, the HTTP
//! layer); gauges that describe state (messages per state, the oldest ready message, disk use)
//! are set when `/metrics` is read, from the broker's counters, so they cost nothing between
//! scrapes. Per-queue labels use the queue's name; names are bounded by the queue-name rules.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter, labels `queue`, `event` (enqueued, leased, acked, retrying, dead, edited, deleted,
/// retried, rescheduled): what happened to messages.
pub const MESSAGE_EVENTS_TOTAL: &str = "outboxd_message_events_total";
/// Gauge, labels `queue`, `state`: messages per state.
pub const QUEUE_MESSAGES: &str = "outboxd_queue_messages";
/// Gauge, label `queue`: age of the oldest ready message, in seconds (0 when none is ready).
pub const QUEUE_OLDEST_READY_AGE_SECONDS: &str = "outboxd_queue_oldest_ready_age_seconds";
/// Gauge, label `queue`: 1 while the queue is paused.
pub const QUEUE_PAUSED: &str = "outboxd_queue_paused";
/// Histogram, labels `route`, `status`: request duration in seconds.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "outboxd_http_request_duration_seconds";
/// Counter, label `reason` (`missing`, `invalid`, `forbidden`): requests refused by access
/// control (no token, an unknown token, a token without the role or queue needed).
pub const HTTP_AUTH_FAILURES_TOTAL: &str = "outboxd_http_auth_failures_total";
/// Histogram: requests committed together by one WAL sync (group commit).
pub const COMMIT_GROUP_REQUESTS: &str = "outboxd_commit_group_requests";
/// Histogram: WAL write plus fdatasync time of one group, in seconds.
pub const WAL_SYNC_DURATION_SECONDS: &str = "outboxd_wal_sync_duration_seconds";
/// Gauge, label `part` (`log`, `catalog`): bytes on disk.
pub const STORE_BYTES: &str = "outboxd_store_bytes";
/// Histogram: time to write one checkpoint to the catalog and make it durable, in seconds.
pub const CHECKPOINT_DURATION_SECONDS: &str = "outboxd_checkpoint_duration_seconds";
/// Gauge: dead, delivered and removed records held in memory until a checkpoint writes them.
pub const PENDING_RECORDS: &str = "outboxd_pending_records";
/// Gauge: bytes of log after the last durable checkpoint: what a restart would replay.
pub const REPLAY_BYTES: &str = "outboxd_replay_bytes";
/// Gauge: ready messages kept in the catalog on disk rather than in memory (a backlog beyond
/// `--ready-in-memory-max`).
pub const READY_IN_CATALOG: &str = "outboxd_ready_in_catalog";
/// Gauge: armed timers (scheduled deliveries, retry backoffs, leases).
pub const TIMERS: &str = "outboxd_timers";
/// Gauge: 1 after a storage failure (writes refused until a restart).
pub const STORAGE_FAILED: &str = "outboxd_storage_failed";

const DURATION_BUCKETS_SECONDS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
const GROUP_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installs the global recorder; `None` if one is installed already (tests in one process).
pub fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS_SECONDS)
        .ok()?
        .set_buckets_for_metric(Matcher::Full(COMMIT_GROUP_REQUESTS.into()), &GROUP_BUCKETS)
        .ok()?;
    builder.install_recorder().ok()
}
