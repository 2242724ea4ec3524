//! The records of queues and idempotency keys: what the catalog keeps about each.

use serde::{Deserialize, Serialize};

/// A queue's persistent settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// The queue's name as used in URLs.
    pub name: String,
    /// A paused queue accepts messages but leases none.
    pub paused: bool,
    /// Overrides of the server's defaults for this queue.
    pub settings: QueueSettings,
}

/// Per-queue overrides; `None` takes the server's default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueSettings {
    /// Deliveries before a message goes dead (when the message does not say).
    pub max_attempts: Option<u32>,
    /// Lease duration when a lease request does not say.
    pub lease_ms: Option<u64>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_multiplier: Option<f64>,
    pub backoff_max_ms: Option<u64>,
    pub backoff_jitter: Option<f64>,
    /// How long delivered messages stay visible; 0 removes them on ack.
    pub retention_ms: Option<u64>,
    /// How long dead messages stay; `None` keeps them until a person acts.
    pub dead_retention_ms: Option<u64>,
}

/// What an idempotency key stands for: the request it was first used with and the ids it created.
///
/// Ids of one batch are consecutive, so `first_id` and `count` name them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// A 64-bit digest of the first request's raw body.
    pub request_hash: u64,
    /// The first id of the batch.
    pub first_id: u64,
    /// How many messages the batch held.
    pub count: u32,
    /// When the key was first used; it is forgotten `IDEMPOTENCY_WINDOW_MS` later.
    pub created_at_ms: u64,
}
