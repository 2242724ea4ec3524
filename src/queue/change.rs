//! Changes: what the broker decided, in the form the store persists.
//!
//! The broker never writes anything itself. Each operation appends `Change`s to a list; the storage
//! thread writes the list to the WAL as one frame (so one request's changes are atomic), syncs, and
//! then applies the same list to sled. Every change carries the full new value of what it touches, so
//! applying a change twice is the same as applying it once: replaying the WAL over a store that already
//! holds part of it is safe.

use super::message::{HistoryEvent, MessageId, MessageMeta, MessageState, QueueId};
use serde::{Deserialize, Serialize};

/// One persistent change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A queue came into being or its settings changed.
    PutQueue { queue_id: QueueId, record: QueueRecord },
    /// A message's scheduling record, new or after a transition.
    PutMeta { id: MessageId, meta: MessageMeta },
    /// A new message's content, already encoded as a store record (see `store::codec`).
    PutContent {
        id: MessageId,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// An event in a message's history; the store keeps the newest `keep_count`.
    RecordHistory { id: MessageId, event: HistoryEvent, keep_count: u32 },
    /// A message is gone: its records and index entries are removed.
    DeleteMessage { id: MessageId, queue_id: QueueId, state: MessageState },
    /// A message entered a terminal state (dead, delivered): list it in the terminal index.
    IndexTerminal { queue_id: QueueId, state: MessageState, id: MessageId },
    /// A message left a terminal state (retried): unlist it.
    UnindexTerminal { queue_id: QueueId, state: MessageState, id: MessageId },
    /// A terminal message is to be removed at `at_ms` (retention).
    ExpireAt { at_ms: u64, id: MessageId },
    /// A retention entry was handled.
    RemoveExpiry { at_ms: u64, id: MessageId },
    /// An idempotency key was used.
    PutIdempotency { queue_id: QueueId, key: String, record: IdempotencyRecord },
    /// An idempotency key's window passed.
    DeleteIdempotency { queue_id: QueueId, key: String },
    /// The next message id to hand out, so ids stay unique even if every message is later removed.
    SetNextId { next_id: u64 },
}

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
