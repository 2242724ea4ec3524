//! The protocol between the HTTP side and the storage thread: commands, replies and errors.

use crate::queue::Delivery;
use crate::queue::{
    ControlError, EditFields, EnqueueError, EnqueueOutcome, ExtendItem, FailOutcome, Grant,
    HistoryEvent, IdempotencyKey, LeaseToken, Lookup, MessageId, MessageMeta, MessageState,
    NackItem, QueueId, QueueSettings, QueueStats, SettledView, Stored,
};
use crate::store::wal::WalPosition;
use tokio::sync::oneshot;

/// How a command's reply travels back.
pub type Reply<T> = oneshot::Sender<Result<T, CommitError>>;

/// The result of a person's action on one message.
pub type ControlResult<T> = Result<T, ControlError>;

/// One message of an enqueue request, validated, its content already encoded (on the connection
/// thread) for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The encoded content (`store::codec::encode_content`).
    pub content: Vec<u8>,
    pub priority: i32,
    /// Attempts before it goes dead; `None` takes the queue's or the server's default.
    pub attempt_count_max: Option<u32>,
    pub delivery: Delivery,
}

/// What a person changes in a message, as requested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IncomingEdit {
    /// A new encoded content (headers and body), when either changed.
    pub content: Option<Vec<u8>>,
    pub priority: Option<i32>,
    pub deliver_at_ms: Option<u64>,
    pub fields: EditFields,
}

/// One message of a listing of active messages: its record and the history events the catalog
/// may not hold yet.
pub type Listed = (MessageId, MessageMeta, Vec<HistoryEvent>);

/// What the storage thread holds of one queue's dead or delivered messages, for a listing that
/// reads the rest from the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledListing {
    pub queue_id: QueueId,
    pub view: SettledView,
    /// The durable checkpoint epoch: the catalog is current for everything else.
    pub epoch: u64,
    /// History events the catalog may not hold yet, of the messages in `view.in_state`.
    pub pending: Vec<(MessageId, Vec<HistoryEvent>)>,
}

/// What the storage thread knows of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRead {
    pub lookup: Lookup,
    /// History events the catalog may not hold yet.
    pub pending_history: Vec<HistoryEvent>,
    /// The name of the message's queue, when the record was found.
    pub queue: Option<String>,
}

/// A request for the storage thread.
pub enum Command {
    Enqueue {
        queue: String,
        messages: Vec<IncomingMessage>,
        idempotency: Option<IdempotencyKey>,
        reply: Reply<Result<EnqueueOutcome, EnqueueError>>,
    },
    Lease {
        queue: String,
        count_max: u32,
        lease_ms: Option<u64>,
        reply: Reply<Vec<Grant>>,
    },
    Ack {
        queue: String,
        tokens: Vec<Option<LeaseToken>>,
        reply: Reply<Vec<TokenResult<()>>>,
    },
    Nack {
        queue: String,
        items: Vec<NackItem>,
        reply: Reply<Vec<TokenResult<FailOutcome>>>,
    },
    Extend {
        queue: String,
        items: Vec<ExtendItem>,
        reply: Reply<Vec<TokenResult<u64>>>,
    },
    QueueStats {
        queue: String,
        reply: Reply<Option<QueueStats>>,
    },
    Queues {
        reply: Reply<Vec<QueueStats>>,
    },
    /// Active messages of a queue in a state (`None`: no such queue).
    ListActive {
        queue: String,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
        reply: Reply<Option<Vec<Listed>>>,
    },
    /// What the storage thread holds of a queue's dead or delivered messages, to merge into a
    /// listing read from the catalog, and the durable checkpoint epoch (`None`: no such queue).
    ListSettled {
        queue: String,
        state: MessageState,
        reply: Reply<Option<SettledListing>>,
    },
    /// One message's record as the storage thread knows it.
    Message {
        id: MessageId,
        reply: Reply<MessageRead>,
    },
    Edit {
        id: MessageId,
        edit: IncomingEdit,
        stored: Option<Stored>,
        reply: Reply<ControlResult<MessageMeta>>,
    },
    Delete {
        id: MessageId,
        stored: Option<Stored>,
        reply: Reply<ControlResult<()>>,
    },
    Retry {
        id: MessageId,
        reset_attempts: bool,
        stored: Option<Stored>,
        reply: Reply<ControlResult<MessageMeta>>,
    },
    Reschedule {
        id: MessageId,
        deliver_at_ms: u64,
        stored: Option<Stored>,
        reply: Reply<ControlResult<MessageMeta>>,
    },
    /// Pause or resume; the reply is `false` when there is no such queue.
    Pause {
        queue: String,
        paused: bool,
        reply: Reply<bool>,
    },
    Configure {
        queue: String,
        settings: QueueSettings,
        reply: Reply<()>,
    },
    /// Deletes one chunk of a queue's messages in `state`; the reply is how many (`None`: no such
    /// queue). For active states the storage thread picks up to `CONTROL_CHUNK_COUNT_MAX` itself;
    /// for dead and delivered ones `chunk` names them, as read from the catalog.
    Purge {
        queue: String,
        state: MessageState,
        chunk: Vec<(MessageId, Stored)>,
        reply: Reply<Option<u64>>,
    },
    /// Sends one chunk of dead messages (read from the catalog) back to ready; like `Purge`.
    Redrive {
        queue: String,
        reset_attempts: bool,
        chunk: Vec<(MessageId, Stored)>,
        reply: Reply<Option<u64>>,
    },
    /// Starts a backup: stops log segment deletion until the pin is dropped, and answers the
    /// durable checkpoint's position (the catalog as it is now goes with the log from there).
    BackupStart {
        reply: Reply<BackupStart>,
    },
    /// Holds checkpoints while a backup copies the catalog, so that the copy is of one epoch.
    /// Answered once no checkpoint is being written, with the durable checkpoint; no checkpoint
    /// starts while the hold lives, except the last one of a shutdown (the backup sees the epoch
    /// change in the manifest it copied and fails).
    HoldCheckpoints {
        reply: Reply<HeldCheckpoint>,
    },
    /// The log position up to which everything is durable (the end of a backup's log copy).
    WalEnd {
        reply: Reply<WalPosition>,
    },
    /// Finish the commands sent before this one, checkpoint, and stop.
    Stop,
}

/// What a backup needs to start: the catalog is exact up to `checkpoint`, and no segment is
/// deleted while `pin` lives.
pub struct BackupStart {
    pub checkpoint: WalPosition,
    pub pin: crate::engine::SegmentPin,
}

/// The catalog as it stands while checkpoints are held: exact up to `position`, at `epoch` (the
/// manifest's), and unchanged while `hold` lives.
pub struct HeldCheckpoint {
    pub position: WalPosition,
    pub epoch: u64,
    pub hold: crate::engine::CheckpointHold,
}

impl Command {
    /// Whether the command only reads (allowed after a storage failure).
    pub(super) fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::QueueStats { .. }
                | Command::Queues { .. }
                | Command::ListActive { .. }
                | Command::ListSettled { .. }
                | Command::Message { .. }
                | Command::BackupStart { .. }
                | Command::HoldCheckpoints { .. }
                | Command::WalEnd { .. }
        )
    }

    /// A name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Enqueue { .. } => "enqueue",
            Command::Lease { .. } => "lease",
            Command::Ack { .. } => "ack",
            Command::Nack { .. } => "nack",
            Command::Extend { .. } => "extend",
            Command::QueueStats { .. } => "queue_stats",
            Command::Queues { .. } => "queues",
            Command::ListActive { .. } => "list",
            Command::ListSettled { .. } => "list_settled",
            Command::Message { .. } => "message",
            Command::Edit { .. } => "edit",
            Command::Delete { .. } => "delete",
            Command::Retry { .. } => "retry",
            Command::Reschedule { .. } => "reschedule",
            Command::Pause { .. } => "pause",
            Command::Configure { .. } => "configure",
            Command::Purge { .. } => "purge",
            Command::Redrive { .. } => "redrive",
            Command::BackupStart { .. } => "backup_start",
            Command::HoldCheckpoints { .. } => "hold_checkpoints",
            Command::WalEnd { .. } => "wal_end",
            Command::Stop => "stop",
        }
    }

    /// Answers the command with `error` without running it.
    pub(super) fn refuse(self, error: CommitError) {
        fn send<T>(reply: Reply<T>, error: CommitError) {
            let _ = reply.send(Err(error));
        }
        match self {
            Command::Enqueue { reply, .. } => send(reply, error),
            Command::Lease { reply, .. } => send(reply, error),
            Command::Ack { reply, .. } => send(reply, error),
            Command::Nack { reply, .. } => send(reply, error),
            Command::Extend { reply, .. } => send(reply, error),
            Command::QueueStats { reply, .. } => send(reply, error),
            Command::Queues { reply } => send(reply, error),
            Command::ListActive { reply, .. } => send(reply, error),
            Command::ListSettled { reply, .. } => send(reply, error),
            Command::Message { reply, .. } => send(reply, error),
            Command::Edit { reply, .. } => send(reply, error),
            Command::Delete { reply, .. } => send(reply, error),
            Command::Retry { reply, .. } => send(reply, error),
            Command::Reschedule { reply, .. } => send(reply, error),
            Command::Pause { reply, .. } => send(reply, error),
            Command::Configure { reply, .. } => send(reply, error),
            Command::Purge { reply, .. } => send(reply, error),
            Command::Redrive { reply, .. } => send(reply, error),
            Command::BackupStart { reply } => send(reply, error),
            Command::HoldCheckpoints { reply } => send(reply, error),
            Command::WalEnd { reply } => send(reply, error),
            Command::Stop => {}
        }
    }
}

/// The result of one lease-token operation (ack, nack, extend), as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenResult<T> {
    Done(T),
    /// The message exists in this queue, but this token's delivery is over.
    LeaseExpired,
    /// Malformed token, or no such message in this queue.
    Unknown,
    /// The message is dead or delivered and only the catalog holds it: it is `LeaseExpired` if
    /// the catalog has it in this queue, else `Unknown` (the caller looks).
    InCatalog {
        id: MessageId,
        queue_id: QueueId,
    },
}

/// Why the storage failed: which step, and the log's error (shared by every request it fails).
#[derive(Clone, Debug)]
pub struct StorageFailure {
    /// The step that failed ("write-ahead log", "log segment rotation").
    pub part: &'static str,
    /// The error, as the log reported it.
    pub source: std::sync::Arc<crate::store::wal::WalError>,
}

impl PartialEq for StorageFailure {
    fn eq(&self, other: &StorageFailure) -> bool {
        self.part == other.part && self.source.to_string() == other.source.to_string()
    }
}

impl Eq for StorageFailure {}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.part, self.source)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// Why a command got no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// A log write or sync failed (now or earlier); writes are refused until a restart.
    StorageFailed(StorageFailure),
    /// The command channel is full, or too much waits for a checkpoint.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// Free space on the data directory's filesystem is under the watermark; enqueues wait.
    DiskFull { free_bytes: u64 },
    /// A record the command carried was read from a catalog that has since moved on: read again.
    Stale,
}
