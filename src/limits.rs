//! Hard limits: every quantity that can grow has a named bound here.
//!
//! Configurable limits (`Config`) have their defaults and their allowed ranges here, so that
//! validation, documentation and tests read one source. Relationships between limits are checked at
//! compile time at the bottom of the file.

/// Longest queue name, in bytes (names are ASCII `[A-Za-z0-9._-]`).
pub const QUEUE_NAME_BYTES_MAX: usize = 128;

/// Default and allowed range of the request body size.
pub const REQUEST_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;
pub const REQUEST_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Default and allowed range of one message (body plus headers).
pub const MESSAGE_BYTES_DEFAULT: u64 = 1024 * 1024;
/// A message must fit many times over in a WAL segment; in sled, values over a quarter of a segment
/// go to blob files (see `store::SLED_SEGMENT_BYTES`).
pub const MESSAGE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Default and allowed range of the number of messages in one enqueue batch.
pub const BATCH_COUNT_DEFAULT: u32 = 1000;
pub const BATCH_COUNT_MAX: u32 = 10_000;

/// Most messages one lease request may take, and most items in one ack, nack or extend request.
pub const LEASE_COUNT_MAX: u32 = 1000;
pub const ITEM_COUNT_MAX: usize = 1000;

/// Lease duration bounds (12 hours at most, like the visibility timeouts of hosted queues).
pub const LEASE_MS_MIN: u64 = 1;
pub const LEASE_MS_MAX: u64 = 12 * 60 * 60 * 1000;
pub const LEASE_MS_DEFAULT: u64 = 30_000;

/// Longest a lease request may wait for a message (long polling).
pub const WAIT_MS_MAX: u64 = 30_000;

/// Furthest into the future a message may be scheduled or a retry delayed: ten years.
pub const DELAY_MS_MAX: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Bounds of a message's delivery attempts.
pub const ATTEMPT_COUNT_MAX: u32 = 1000;
pub const ATTEMPT_COUNT_DEFAULT: u32 = 10;

/// Longest error text kept from a nack; longer texts are truncated at a character boundary.
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;

/// Header bounds per message.
pub const HEADER_COUNT_MAX: usize = 64;
pub const HEADER_NAME_BYTES_MAX: usize = 256;
pub const HEADER_VALUE_BYTES_MAX: usize = 8192;

/// Idempotency keys: length and how long a key is remembered.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Backoff defaults: 1 s initial, doubling, capped at 15 minutes, ±20 % jitter.
pub const BACKOFF_INITIAL_MS_DEFAULT: u64 = 1000;
pub const BACKOFF_MULTIPLIER_DEFAULT: f64 = 2.0;
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 15 * 60 * 1000;
pub const BACKOFF_JITTER_DEFAULT: f64 = 0.2;

/// How long delivered messages stay visible by default (24 hours), and at most (one year).
pub const RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;
pub const RETENTION_MS_MAX: u64 = 365 * 24 * 60 * 60 * 1000;

/// History events kept per message: by default, and at most.
pub const HISTORY_EVENT_COUNT_DEFAULT: u32 = 20;
pub const HISTORY_EVENT_COUNT_MAX: u32 = 1000;

/// Most messages one purge or redrive step touches, so one request never stalls the storage thread.
pub const CONTROL_CHUNK_COUNT_MAX: usize = 1000;

/// Most messages one listing page returns.
pub const LIST_COUNT_MAX: usize = 1000;

/// Events kept in memory for `Last-Event-ID` resumption of the event stream.
pub const EVENT_RING_COUNT_MAX: usize = 10_000;

/// Depth of the channel into the storage thread; a full channel answers 503 (backpressure).
pub const COMMAND_QUEUE_DEPTH: usize = 4096;

/// Most commands one group commit takes from the channel before it syncs.
pub const GROUP_COMMAND_COUNT_MAX: usize = 1024;

/// Log segment size before rotation (default and range), and log growth that triggers a
/// checkpoint.
pub const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub const WAL_SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
pub const WAL_SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
pub const CHECKPOINT_WAL_BYTES: u64 = 64 * 1024 * 1024;
pub const CHECKPOINT_WAL_BYTES_MAX: u64 = 16 * 1024 * 1024 * 1024;
/// A checkpoint is taken at least this often while anything changes: it bounds how much log a
/// restart replays and how many records the broker keeps for reads until the catalog has them.
pub const CHECKPOINT_INTERVAL_MS: u64 = 2_000;
/// A checkpoint is taken as soon as this many message records changed since the last one (about
/// 2 MiB of catalog pages, written as one sled batch). Taking the snapshot costs the storage
/// thread about 1 ms per 10,000 records, a pause every request of that moment waits out.
pub const CHECKPOINT_DIRTY_COUNT: usize = 100_000;
/// Enqueues are refused (503) while the broker holds this many dead, delivered or removed records
/// waiting for a checkpoint: the bound on that memory when the catalog cannot keep up.
pub const SETTLED_COUNT_MAX: usize = 2_000_000;

/// Ready messages held in memory by default (about 200 bytes each), and at most: the rest of a
/// backlog waits in the catalog and is read back in order as consumers catch up.
pub const READY_RESIDENT_DEFAULT: usize = 250_000;
pub const READY_RESIDENT_MAX: usize = 100_000_000;
/// Most ready messages one housekeeping pass moves out of memory, so a pass stays short (~2 ms).
pub const EVICT_COUNT_MAX: usize = 4096;
/// How often housekeeping moves ready messages out of memory, at most (each pass walks back over
/// the newest messages, which a checkpoint does not hold yet).
pub const EVICT_INTERVAL_MS: u64 = 5;
/// Ready messages a lease looks ahead of itself for cold catalog pages to read back early.
pub const COLD_PREFETCH_COUNT: usize = 4096;
/// How far over the limit memory may go before the resident messages just ahead of a queue's
/// cold ones (what leases need next, often just read back) are moved out too.
pub const EVICT_HEAD_SLACK_COUNT: usize = 4 * COLD_PREFETCH_COUNT;

/// Open connections served at once; more wait in the kernel's accept backlog.
pub const CONNECTION_COUNT_DEFAULT: usize = 4096;

/// How long shutdown waits for in-flight requests before it closes them.
pub const SHUTDOWN_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Free space under which enqueues are refused, so the disk never fills under the WAL and sled.
pub const DISK_FREE_MIN_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// How long a request body may pause between two pieces.
pub const BODY_IDLE_TIMEOUT_MS: u64 = 10_000;

/// How long a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// How long an online backup waits for its client to take the next chunk before it gives up.
/// A backup pins the write-ahead log from where it started, so a client that stops reading
/// would otherwise keep every later log segment on disk until it disconnects.
pub const BACKUP_CLIENT_STALL_MS: u64 = 60_000;

const _: () = assert!(LEASE_MS_MIN <= LEASE_MS_DEFAULT && LEASE_MS_DEFAULT <= LEASE_MS_MAX);
const _: () = assert!(MESSAGE_BYTES_DEFAULT <= MESSAGE_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX <= REQUEST_BYTES_MAX);
const _: () = assert!(REQUEST_BYTES_DEFAULT <= REQUEST_BYTES_MAX);
const _: () = assert!(BATCH_COUNT_DEFAULT <= BATCH_COUNT_MAX);
const _: () = assert!(ATTEMPT_COUNT_DEFAULT <= ATTEMPT_COUNT_MAX);
const _: () = assert!(BACKOFF_INITIAL_MS_DEFAULT <= BACKOFF_MAX_MS_DEFAULT);
const _: () = assert!(BACKOFF_MAX_MS_DEFAULT <= DELAY_MS_MAX);
const _: () = assert!(GROUP_COMMAND_COUNT_MAX <= COMMAND_QUEUE_DEPTH);
const _: () = assert!(HISTORY_EVENT_COUNT_DEFAULT <= HISTORY_EVENT_COUNT_MAX);
const _: () = assert!(RETENTION_MS_DEFAULT <= RETENTION_MS_MAX);
// A lease must be able to outlive its message's visibility: the retention window is longer.
const _: () = assert!(LEASE_MS_MAX <= RETENTION_MS_DEFAULT);
// A log frame holds one request: the largest message must fit in a segment many times over.
const _: () = assert!(MESSAGE_BYTES_MAX * 8 <= WAL_SEGMENT_BYTES);
// Content locations are 32-bit offsets: a segment (its limit plus one more request) stays far
// below 4 GiB.
const _: () = assert!(WAL_SEGMENT_BYTES_MAX + REQUEST_BYTES_MAX * 2 < u32::MAX as u64);
const _: () = assert!(WAL_SEGMENT_BYTES_MIN <= WAL_SEGMENT_BYTES);
const _: () = assert!(WAL_SEGMENT_BYTES <= WAL_SEGMENT_BYTES_MAX);
const _: () = assert!(CHECKPOINT_DIRTY_COUNT < SETTLED_COUNT_MAX);
