//! The storage thread: the single writer that turns commands into durable changes (group commit).
//!
//! Request handlers send [`Command`]s over a bounded channel. The thread takes every command that is
//! waiting (up to `GROUP_COMMAND_COUNT_MAX`), runs each against the broker, appends each command's
//! changes to the WAL as one frame (so one request is atomic), calls fdatasync once for the whole
//! group, applies the group to sled, and only then answers every waiter. Under load the channel fills
//! while a sync runs, so the next group is larger: the cost of a sync is shared by more requests.
//!
//! When a WAL write or sync fails the thread answers that group with `StorageFailed` and refuses every
//! later write: the broker's memory ran ahead of the disk and nothing written after a failed fsync
//! can be trusted. Reads keep working; a restart recovers from what the WAL holds.

use super::wal::Wal;
use super::{codec, Store};
use crate::limits::{CHECKPOINT_INTERVAL_MS, CHECKPOINT_WAL_BYTES, GROUP_COMMAND_COUNT_MAX};
use crate::queue::{
    Broker, Change, EnqueueError, EnqueueOutcome, FailOutcome, Grant, IdempotencyKey, LeaseToken,
    NackItem, NewMessage, QueueStats, Refusal,
};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// Changes from timers are split into frames of at most this many, to bound frame size.
const TIMER_FRAME_CHANGE_COUNT_MAX: usize = 4096;
/// The longest the thread sleeps without a command or a due timer (housekeeping granularity).
const IDLE_WAKE_MS: u64 = 1000;

/// How a command's reply travels back.
pub type Reply<T> = oneshot::Sender<Result<T, CommitError>>;

/// A request for the storage thread.
pub enum Command {
    Enqueue {
        queue: String,
        messages: Vec<NewMessage>,
        idempotency: Option<IdempotencyKey>,
        reply: Reply<Result<EnqueueOutcome, EnqueueError>>,
    },
    Lease {
        queue: String,
        count_max: u32,
        lease_ms: u64,
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
        items: Vec<(Option<LeaseToken>, u64)>,
        reply: Reply<Vec<TokenResult<u64>>>,
    },
    QueueStats {
        queue: String,
        reply: Reply<Option<QueueStats>>,
    },
    /// Finish the commands sent before this one, checkpoint, and stop.
    Stop,
}

/// The result of one lease-token operation (ack, nack, extend), as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenResult<T> {
    Done(T),
    /// The message exists in this queue, but this token's delivery is over.
    LeaseExpired,
    /// Malformed token, or no such message in this queue.
    Unknown,
}

/// Why a command got no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// A WAL write or sync failed (now or earlier); writes are refused until a restart.
    StorageFailed(String),
    /// The command channel is full.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// Free space on the data directory's filesystem is under the watermark; enqueues wait.
    DiskFull { free_bytes: u64 },
}

/// Long-poll wake-ups: one `Notify` per queue name, signalled when the queue gains ready messages.
#[derive(Default)]
pub struct Waiters {
    by_queue: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// The notifier of `queue`, created on first use.
    pub fn notifier(&self, queue: &str) -> Arc<Notify> {
        let mut by_queue = self.by_queue.lock();
        if let Some(notify) = by_queue.get(queue) {
            return notify.clone();
        }
        let notify = Arc::new(Notify::new());
        by_queue.insert(queue.to_string(), notify.clone());
        notify
    }

    fn wake(&self, queue: &str) {
        if let Some(notify) = self.by_queue.lock().get(queue) {
            notify.notify_waiters();
        }
    }
}

/// The handlers' side of the storage thread.
#[derive(Clone)]
pub struct WriterHandle {
    sender: SyncSender<Command>,
    failure: Arc<RwLock<Option<String>>>,
}

impl WriterHandle {
    /// Sends a command without blocking; a full channel is `Overloaded` (the HTTP layer answers 503).
    pub fn send(&self, command: Command) -> Result<(), CommitError> {
        match self.sender.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(CommitError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(CommitError::ShuttingDown),
        }
    }

    /// Asks the storage thread to finish what was sent before and stop. Blocks while the channel
    /// is full, so call it from a blocking context.
    pub fn stop(&self) {
        let _ = self.sender.send(Command::Stop);
    }

    /// The storage failure that stopped writes, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.read().clone()
    }
}

/// Settings of the storage thread.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// The data directory, whose filesystem's free space is watched.
    pub data_dir: std::path::PathBuf,
    /// Below this many free bytes enqueues are refused (0 turns the check off).
    pub disk_free_min_bytes: u64,
    /// Depth of the command channel.
    pub depth: usize,
}

/// How often the free space is looked up (a statvfs call).
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// The storage thread's own state.
pub struct Writer {
    broker: Broker,
    store: Arc<Store>,
    wal: Wal,
    waiters: Arc<Waiters>,
    failure: Arc<RwLock<Option<String>>>,
    clock: fn() -> u64,
    last_now_ms: u64,
    last_checkpoint: Instant,
    wal_bytes_at_checkpoint: u64,
    /// Reused buffers: the group's changes and one frame's payload.
    changes: Vec<Change>,
    payload: Vec<u8>,
    config: WriterConfig,
    /// Free bytes at the last look, and when that was.
    disk_free_bytes: u64,
    disk_checked_at: Option<Instant>,
}

/// A reply waiting for the group's sync, with the result to send if the sync succeeds.
enum Pending {
    Enqueue(
        Reply<Result<EnqueueOutcome, EnqueueError>>,
        Result<EnqueueOutcome, EnqueueError>,
    ),
    Lease(Reply<Vec<Grant>>, Vec<Grant>),
    Ack(
        Reply<Vec<TokenResult<()>>>,
        String,
        Vec<Result<(), Refusal>>,
    ),
    Nack(
        Reply<Vec<TokenResult<FailOutcome>>>,
        String,
        Vec<Result<FailOutcome, Refusal>>,
    ),
    Extend(
        Reply<Vec<TokenResult<u64>>>,
        String,
        Vec<Result<u64, Refusal>>,
    ),
}

/// Starts the storage thread; it runs until every `WriterHandle` is dropped, then checkpoints.
pub fn spawn(
    broker: Broker,
    store: Arc<Store>,
    wal: Wal,
    waiters: Arc<Waiters>,
    clock: fn() -> u64,
    config: WriterConfig,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.depth);
    let failure = Arc::new(RwLock::new(None));
    let wal_bytes_at_checkpoint = wal.disk_bytes();
    let writer = Writer {
        broker,
        store,
        wal,
        waiters,
        failure: failure.clone(),
        clock,
        last_now_ms: 0,
        last_checkpoint: Instant::now(),
        wal_bytes_at_checkpoint,
        changes: Vec::new(),
        payload: Vec::new(),
        config,
        disk_free_bytes: u64::MAX,
        disk_checked_at: None,
    };
    let thread = std::thread::Builder::new()
        .name("outboxd-storage".into())
        .spawn(move || writer.run(receiver))?;
    Ok((WriterHandle { sender, failure }, thread))
}

impl Writer {
    fn run(mut self, receiver: Receiver<Command>) {
        let mut group = Vec::with_capacity(GROUP_COMMAND_COUNT_MAX);
        loop {
            let now_ms = self.now_ms();
            let wake_ms = self.broker.next_deadline_ms().unwrap_or(u64::MAX);
            let sleep_ms = wake_ms.saturating_sub(now_ms).min(IDLE_WAKE_MS);
            let mut stopping = false;
            match receiver.recv_timeout(Duration::from_millis(sleep_ms)) {
                Ok(Command::Stop) => stopping = true,
                Ok(command) => group.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            while !stopping && group.len() < GROUP_COMMAND_COUNT_MAX {
                match receiver.try_recv() {
                    Ok(Command::Stop) => stopping = true,
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            self.run_group(&mut group);
            self.maybe_checkpoint(false);
            if stopping {
                break;
            }
        }
        self.maybe_checkpoint(true);
        tracing::info!("storage thread stopped");
    }

    /// The wall clock, never going backwards (deadlines are wall-clock times that survive restarts).
    fn now_ms(&mut self) -> u64 {
        self.last_now_ms = self.last_now_ms.max((self.clock)());
        self.last_now_ms
    }

    /// Runs one group: timers, every command, one WAL sync, sled, then the replies.
    fn run_group(&mut self, group: &mut Vec<Command>) {
        let now_ms = self.now_ms();
        self.changes.clear();
        if self.failure.read().is_none() {
            self.broker.expire_due(now_ms, &mut self.changes);
            for start in (0..self.changes.len()).step_by(TIMER_FRAME_CHANGE_COUNT_MAX) {
                let end = (start + TIMER_FRAME_CHANGE_COUNT_MAX).min(self.changes.len());
                self.append_frame(start, end);
            }
        }
        let mut pending = Vec::with_capacity(group.len());
        for command in group.drain(..) {
            let start = self.changes.len();
            if let Some(waiting) = self.execute(command, now_ms) {
                pending.push(waiting);
            }
            let end = self.changes.len();
            if end > start {
                self.append_frame(start, end);
            }
        }
        let outcome = self.commit();
        for waiting in pending {
            self.answer(waiting, outcome.clone());
        }
        for queue_id in self.broker.take_woken() {
            self.waiters.wake(self.broker.queue_name(queue_id));
        }
    }

    fn append_frame(&mut self, start: usize, end: usize) {
        self.payload.clear();
        codec::encode_changes_into(&self.changes[start..end], &mut self.payload);
        self.wal.append(&self.payload);
    }

    /// Syncs the WAL and applies the group to sled; on failure stops all further writes.
    fn commit(&mut self) -> Result<(), CommitError> {
        if let Some(reason) = self.failure.read().clone() {
            return Err(CommitError::StorageFailed(reason));
        }
        if self.changes.is_empty() {
            return Ok(());
        }
        let result = self
            .wal
            .commit()
            .map_err(|error| format!("write-ahead log: {error}"))
            .and_then(|_| {
                self.store
                    .apply(&self.changes)
                    .map_err(|error| error.to_string())
            });
        if let Err(reason) = result {
            tracing::error!(error = %reason, "storage failed; refusing writes until restart");
            *self.failure.write() = Some(reason.clone());
            return Err(CommitError::StorageFailed(reason));
        }
        if let Err(error) = self.wal.rotate_if_full() {
            tracing::warn!(%error, "could not start a new WAL segment");
        }
        Ok(())
    }

    /// Whether free disk space is under the watermark, looked up at most every 200 ms.
    ///
    /// Enqueues stop before the disk is full, so that the WAL and sled never meet ENOSPC (sled
    /// cannot recover from a failed write without a restart) and consumers can still lease and ack.
    fn disk_low(&mut self) -> Option<u64> {
        if self.config.disk_free_min_bytes == 0 {
            return None;
        }
        let stale = self.disk_checked_at.is_none_or(|at| at.elapsed() >= DISK_CHECK_INTERVAL);
        if stale {
            self.disk_checked_at = Some(Instant::now());
            match fs2::available_space(&self.config.data_dir) {
                Ok(free_bytes) => self.disk_free_bytes = free_bytes,
                Err(error) => tracing::warn!(%error, "cannot read the free disk space"),
            }
        }
        (self.disk_free_bytes < self.config.disk_free_min_bytes).then_some(self.disk_free_bytes)
    }

    /// Runs one command; read-only ones are answered at once, the rest wait for the sync.
    fn execute(&mut self, command: Command, now_ms: u64) -> Option<Pending> {
        let failed = self.failure.read().clone();
        if let (Some(reason), false) = (&failed, matches!(command, Command::QueueStats { .. })) {
            command.refuse(CommitError::StorageFailed(reason.clone()));
            return None;
        }
        if matches!(command, Command::Enqueue { .. }) {
            if let Some(free_bytes) = self.disk_low() {
                command.refuse(CommitError::DiskFull { free_bytes });
                return None;
            }
        }
        let changes = &mut self.changes;
        let broker = &mut self.broker;
        Some(match command {
            Command::Enqueue {
                queue,
                messages,
                idempotency,
                reply,
            } => {
                let outcome = broker.enqueue(now_ms, &queue, messages, idempotency, changes);
                Pending::Enqueue(reply, outcome)
            }
            Command::Lease {
                queue,
                count_max,
                lease_ms,
                reply,
            } => Pending::Lease(
                reply,
                broker.lease(now_ms, &queue, count_max, lease_ms, changes),
            ),
            Command::Ack {
                queue,
                tokens,
                reply,
            } => {
                let outcomes = broker.ack(now_ms, &queue, &tokens, changes);
                Pending::Ack(reply, queue, outcomes)
            }
            Command::Nack {
                queue,
                items,
                reply,
            } => {
                let outcomes = broker.nack(now_ms, &queue, items, changes);
                Pending::Nack(reply, queue, outcomes)
            }
            Command::Extend {
                queue,
                items,
                reply,
            } => {
                let outcomes = broker.extend(now_ms, &queue, &items, changes);
                Pending::Extend(reply, queue, outcomes)
            }
            Command::QueueStats { queue, reply } => {
                let _ = reply.send(Ok(broker.queue_stats(&queue)));
                return None;
            }
            Command::Stop => return None,
        })
    }

    /// Sends one reply after the group's commit.
    fn answer(&self, pending: Pending, outcome: Result<(), CommitError>) {
        match pending {
            Pending::Enqueue(reply, result) => drop(reply.send(outcome.map(|()| result))),
            Pending::Lease(reply, grants) => drop(reply.send(outcome.map(|()| grants))),
            Pending::Ack(reply, queue, results) => {
                drop(reply.send(outcome.map(|()| self.resolve(&queue, results))))
            }
            Pending::Nack(reply, queue, results) => {
                drop(reply.send(outcome.map(|()| self.resolve(&queue, results))))
            }
            Pending::Extend(reply, queue, results) => {
                drop(reply.send(outcome.map(|()| self.resolve(&queue, results))))
            }
        }
    }

    /// Turns broker refusals into client results; a token of a message that left memory (delivered,
    /// dead) is `LeaseExpired` if the message is still stored in this queue, else `Unknown`.
    fn resolve<T>(&self, queue: &str, results: Vec<Result<T, Refusal>>) -> Vec<TokenResult<T>> {
        let queue_id = self.broker.queue_id(queue);
        results
            .into_iter()
            .map(|result| match result {
                Ok(value) => TokenResult::Done(value),
                Err(Refusal::LeaseExpired) => TokenResult::LeaseExpired,
                Err(Refusal::Unknown) => TokenResult::Unknown,
                Err(Refusal::NotActive(id)) => match self.store.meta(id) {
                    Ok(Some(meta)) if Some(meta.queue_id) == queue_id => TokenResult::LeaseExpired,
                    _ => TokenResult::Unknown,
                },
            })
            .collect()
    }

    /// Checkpoints when enough WAL accumulated or enough time passed (or `force`d at shutdown).
    fn maybe_checkpoint(&mut self, force: bool) {
        if self.failure.read().is_some() {
            return;
        }
        let grown_bytes = self
            .wal
            .disk_bytes()
            .saturating_sub(self.wal_bytes_at_checkpoint);
        let elapsed_ms = self.last_checkpoint.elapsed().as_millis() as u64;
        let due = grown_bytes >= CHECKPOINT_WAL_BYTES
            || (grown_bytes > 0 && elapsed_ms >= CHECKPOINT_INTERVAL_MS);
        if !(force || due) {
            return;
        }
        let started = Instant::now();
        let result = self
            .wal
            .rotate()
            .map_err(super::StoreError::from)
            .and_then(|position| self.store.checkpoint(position).map(|()| position))
            .and_then(|position| Ok(self.wal.remove_before(position)?));
        match result {
            Ok(removed) => tracing::debug!(
                removed_segments = removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "checkpoint"
            ),
            Err(error) => tracing::warn!(%error, "checkpoint failed; the WAL is kept and retried"),
        }
        self.last_checkpoint = Instant::now();
        self.wal_bytes_at_checkpoint = self.wal.disk_bytes();
    }
}

impl Command {
    /// Answers the command with `error` without running it.
    fn refuse(self, error: CommitError) {
        match self {
            Command::Enqueue { reply, .. } => drop(reply.send(Err(error))),
            Command::Lease { reply, .. } => drop(reply.send(Err(error))),
            Command::Ack { reply, .. } => drop(reply.send(Err(error))),
            Command::Nack { reply, .. } => drop(reply.send(Err(error))),
            Command::Extend { reply, .. } => drop(reply.send(Err(error))),
            Command::QueueStats { reply, .. } => drop(reply.send(Err(error))),
            Command::Stop => {}
        }
    }
}
