//! The storage thread: the single writer that turns commands into durable changes (group commit).
//!
//! Request handlers send [`Command`]s over a bounded channel. The thread takes every command that is
//! waiting (up to `GROUP_COMMAND_COUNT_MAX`), runs each against the broker, appends each command's
//! changes to the WAL as one frame (so one request is atomic), calls fdatasync once for the whole
//! group, stages the group's writes in the store's overlay (the applier thread writes them to sled
//! later), publishes the group's events, and only then answers every waiter. Under load the channel fills while a sync runs, so the next group is larger: the cost of
//! a sync is shared by more requests.
//!
//! A person's actions on dead or delivered messages read those messages from sled; such a command
//! first commits what the group holds so far, so that sled is current when it reads.
//!
//! When a WAL write or sync fails the thread answers that group with `StorageFailed` and refuses every
//! later write: the broker's memory ran ahead of the disk and nothing written after a failed fsync
//! can be trusted. Reads keep working; a restart recovers from what the WAL holds.

use super::wal::Wal;
use super::{codec, Store, StoreError};
use crate::events::{Event, EventLog};
use crate::http::types::ExtendItem;
use crate::limits::{CHECKPOINT_INTERVAL_MS, CONTROL_CHUNK_COUNT_MAX, GROUP_COMMAND_COUNT_MAX};
use crate::metrics as m;
use crate::queue::{
    Broker, Change, ControlError, Edit, EnqueueError, EnqueueOutcome, FailOutcome, Grant,
    IdempotencyKey, LeaseToken, MessageId, MessageMeta, MessageState, NackItem, NewMessage,
    QueueSettings, QueueStats, Refusal,
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
/// How often the retention sweep looks for expired dead and delivered messages.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// How often the free space is looked up (a statvfs call).
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How a command's reply travels back.
pub type Reply<T> = oneshot::Sender<Result<T, CommitError>>;

/// The result of a person's action on one message.
pub type ControlResult<T> = Result<T, ControlError>;

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
    /// Ids of active messages of a queue in a state (`None`: no such queue).
    ListActive {
        queue: String,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
        reply: Reply<Option<Vec<MessageId>>>,
    },
    Edit {
        id: MessageId,
        edit: Edit,
        reply: Reply<ControlResult<MessageMeta>>,
    },
    Delete {
        id: MessageId,
        reply: Reply<ControlResult<()>>,
    },
    Retry {
        id: MessageId,
        reset_attempts: bool,
        reply: Reply<ControlResult<MessageMeta>>,
    },
    Reschedule {
        id: MessageId,
        deliver_at_ms: u64,
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
    /// Deletes up to `CONTROL_CHUNK_COUNT_MAX` messages of a state; the reply is how many
    /// (`None`: no such queue). The caller repeats until it gets 0.
    Purge {
        queue: String,
        state: MessageState,
        reply: Reply<Option<u64>>,
    },
    /// Sends up to `CONTROL_CHUNK_COUNT_MAX` dead messages back to ready; like `Purge`.
    Redrive {
        queue: String,
        reset_attempts: bool,
        reply: Reply<Option<u64>>,
    },
    /// Starts a backup: the WAL position up to which every commit is staged (acknowledged writes
    /// all lie before it), with the WAL pinned from there so that no checkpoint deletes what the
    /// backup still has to copy.
    BackupStart {
        reply: Reply<(super::wal::WalPosition, super::WalPin)>,
    },
    /// The WAL position up to which everything is durable (the end of a backup's log copy).
    WalEnd {
        reply: Reply<super::wal::WalPosition>,
    },
    /// Finish the commands sent before this one, checkpoint, and stop.
    Stop,
}

impl Command {
    /// Whether the command only reads the broker (allowed after a storage failure).
    fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::QueueStats { .. }
                | Command::Queues { .. }
                | Command::ListActive { .. }
                | Command::BackupStart { .. }
                | Command::WalEnd { .. }
        )
    }

    /// Whether the command reads records from sled, which must then be current.
    fn reads_store(&self) -> bool {
        matches!(
            self,
            Command::Edit { .. }
                | Command::Delete { .. }
                | Command::Retry { .. }
                | Command::Reschedule { .. }
                | Command::Purge { .. }
                | Command::Redrive { .. }
        )
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

    /// Drops the notifiers nobody waits on, so that the map does not grow with every queue name
    /// ever long-polled.
    fn forget_idle(&self) {
        self.by_queue.lock().retain(|_, notify| Arc::strong_count(notify) > 1);
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
    /// WAL growth that triggers a checkpoint.
    pub checkpoint_wal_bytes: u64,
    /// Depth of the command channel.
    pub depth: usize,
}

/// What the storage thread shares with the handlers.
pub struct Shared {
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters>,
    pub events: Arc<EventLog>,
    /// Bytes of WAL on disk, kept current by the storage thread for `/metrics`.
    pub wal_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// The storage thread's own state.
pub struct Writer {
    broker: Broker,
    store: Arc<Store>,
    wal: Wal,
    waiters: Arc<Waiters>,
    events: Arc<EventLog>,
    wal_bytes: Arc<std::sync::atomic::AtomicU64>,
    failure: Arc<RwLock<Option<String>>>,
    clock: fn() -> u64,
    last_now_ms: u64,
    last_checkpoint: Instant,
    wal_bytes_at_checkpoint: u64,
    /// The changes not yet committed, and a reused frame buffer.
    changes: Vec<Change>,
    payload: Vec<u8>,
    /// Replies waiting for the commit of `changes`.
    pending: Vec<Pending>,
    config: WriterConfig,
    /// Free bytes at the last look, and when that was.
    disk_free_bytes: u64,
    disk_checked_at: Option<Instant>,
    last_sweep: Instant,
    /// A checkpoint was handed to the applier and has not finished.
    checkpoint_pending: bool,
    /// Retention re-arming still to do after a settings change: (queue, state, cursor).
    rearm: Vec<(crate::queue::QueueId, MessageState, Option<MessageId>)>,
}

/// A reply waiting for the commit; it is called with the commit's outcome.
type Pending = Box<dyn FnOnce(&Writer, Result<(), CommitError>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, value: T) -> Pending {
    Box::new(move |_, outcome| drop(reply.send(outcome.map(|()| value))))
}

/// Starts the storage thread; it runs until `Stop` (or every handle is dropped), then checkpoints.
pub fn spawn(
    broker: Broker,
    wal: Wal,
    shared: Shared,
    clock: fn() -> u64,
    config: WriterConfig,
) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.depth);
    let failure = Arc::new(RwLock::new(None));
    let wal_bytes_at_checkpoint = wal.disk_bytes();
    let writer = Writer {
        broker,
        store: shared.store,
        wal,
        waiters: shared.waiters,
        events: shared.events,
        wal_bytes: shared.wal_bytes,
        failure: failure.clone(),
        clock,
        last_now_ms: 0,
        last_checkpoint: Instant::now(),
        wal_bytes_at_checkpoint,
        changes: Vec::new(),
        payload: Vec::new(),
        pending: Vec::new(),
        config,
        disk_free_bytes: u64::MAX,
        disk_checked_at: None,
        last_sweep: Instant::now(),
        checkpoint_pending: false,
        rearm: Vec::new(),
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
            if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
                self.last_sweep = Instant::now();
                self.sweep();
                self.waiters.forget_idle();
            }
            self.rearm_step();
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

    fn failed(&self) -> Option<String> {
        self.failure.read().clone()
    }

    /// Runs one group: timers, every command, one WAL sync, sled, then the replies.
    fn run_group(&mut self, group: &mut Vec<Command>) {
        let now_ms = self.now_ms();
        debug_assert!(self.changes.is_empty() && self.pending.is_empty());
        if self.failed().is_none() {
            self.broker.expire_due(now_ms, &mut self.changes);
            for start in (0..self.changes.len()).step_by(TIMER_FRAME_CHANGE_COUNT_MAX) {
                let end = (start + TIMER_FRAME_CHANGE_COUNT_MAX).min(self.changes.len());
                self.append_frame(start, end);
            }
        }
        for command in group.drain(..) {
            if command.reads_store() && !self.changes.is_empty() {
                self.finish();
            }
            let start = self.changes.len();
            self.execute(command, now_ms);
            let end = self.changes.len();
            if end > start {
                self.append_frame(start, end);
            }
        }
        self.finish();
    }

    fn append_frame(&mut self, start: usize, end: usize) {
        self.payload.clear();
        codec::encode_changes_into(&self.changes[start..end], &mut self.payload);
        self.wal.append(&self.payload);
    }

    /// Commits what is pending, answers its waiters, publishes its events and wakes long polls.
    fn finish(&mut self) {
        let outcome = self.commit();
        // Events go out before the replies, so a client that sees its 2xx can find the event.
        let notices = self.broker.take_notices();
        if outcome.is_ok() && !notices.is_empty() {
            self.count_events(&notices);
            let mut names: HashMap<_, Arc<str>> = HashMap::new();
            let broker = &self.broker;
            let events = notices.into_iter().map(|notice| {
                let queue = names
                    .entry(notice.queue_id)
                    .or_insert_with(|| Arc::from(broker.queue_name(notice.queue_id)))
                    .clone();
                Event {
                    id: 0,
                    kind: notice.kind,
                    queue,
                    message_id: notice.id,
                    attempt: notice.attempt,
                    at_ms: notice.at_ms,
                    detail: notice.detail,
                }
            });
            self.events.publish(events);
        }
        for reply in std::mem::take(&mut self.pending) {
            reply(self, outcome.clone());
        }
        for queue_id in self.broker.take_woken() {
            self.waiters.wake(self.broker.queue_name(queue_id));
        }
        self.changes.clear();
    }

    /// Adds a group's notices to the per-queue event counters: one increment per (queue, event), not
    /// one per message, so that counting costs little at high rates. A failed delivery counts
    /// twice: once for its cause (`nacked` or `expired`) and once for where it went (`retrying`
    /// or `dead`).
    fn count_events(&self, notices: &[crate::queue::Notice]) {
        use crate::queue::HistoryKind;
        let mut counts: HashMap<(crate::queue::QueueId, &'static str), u64> = HashMap::new();
        for notice in notices.iter().filter(|notice| notice.id.is_some()) {
            *counts.entry((notice.queue_id, notice.kind.name())).or_default() += 1;
            let cause = match notice.cause {
                Some(HistoryKind::Nacked) => "nacked",
                Some(HistoryKind::LeaseExpired) => "expired",
                _ => continue,
            };
            *counts.entry((notice.queue_id, cause)).or_default() += 1;
        }
        for ((queue_id, event), count) in counts {
            let queue = self.broker.queue_name(queue_id).to_string();
            metrics::counter!(m::MESSAGE_EVENTS_TOTAL, "queue" => queue, "event" => event)
                .increment(count);
        }
    }

    /// Syncs the WAL and applies the pending changes to sled; on failure stops all further writes.
    fn commit(&mut self) -> Result<(), CommitError> {
        if let Some(reason) = self.failed() {
            return Err(CommitError::StorageFailed(reason));
        }
        if self.changes.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let synced = self.wal.commit().map_err(|error| format!("write-ahead log: {error}"));
        if synced.is_ok() {
            metrics::histogram!(m::WAL_SYNC_DURATION_SECONDS)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::COMMIT_GROUP_REQUESTS).record(self.pending.len() as f64);
        }
        let result =
            synced.and_then(|_| self.store.stage(&self.changes).map_err(|error| error.to_string()));
        if let Err(reason) = result {
            tracing::error!(error = %reason, "storage failed; refusing writes until restart");
            *self.failure.write() = Some(reason.clone());
            return Err(CommitError::StorageFailed(reason));
        }
        if let Err(error) = self.wal.rotate_if_full() {
            tracing::warn!(%error, "could not start a new WAL segment");
        }
        self.wal_bytes.store(self.wal.disk_bytes(), std::sync::atomic::Ordering::Relaxed);
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

    /// Runs one command: read-only ones are answered at once, the rest wait for the commit.
    fn execute(&mut self, command: Command, now_ms: u64) {
        if let (Some(reason), false) = (self.failed(), command.is_read_only()) {
            command.refuse(CommitError::StorageFailed(reason));
            return;
        }
        if matches!(command, Command::Enqueue { .. }) {
            if let Some(free_bytes) = self.disk_low() {
                command.refuse(CommitError::DiskFull { free_bytes });
                return;
            }
        }
        let changes = &mut self.changes;
        let broker = &mut self.broker;
        let reply = match command {
            Command::Enqueue { queue, messages, idempotency, reply } => {
                pending(reply, broker.enqueue(now_ms, &queue, messages, idempotency, changes))
            }
            Command::Lease { queue, count_max, lease_ms, reply } => {
                pending(reply, broker.lease(now_ms, &queue, count_max, lease_ms, changes))
            }
            Command::Ack { queue, tokens, reply } => {
                let results = broker.ack(now_ms, &queue, &tokens, changes);
                resolving(reply, queue, results)
            }
            Command::Nack { queue, items, reply } => {
                let results = broker.nack(now_ms, &queue, items, changes);
                resolving(reply, queue, results)
            }
            Command::Extend { queue, items, reply } => {
                let results = broker.extend(now_ms, &queue, &items, changes);
                resolving(reply, queue, results)
            }
            Command::QueueStats { queue, reply } => {
                return drop(reply.send(Ok(broker.queue_stats(&queue))));
            }
            Command::Queues { reply } => return drop(reply.send(Ok(broker.all_queue_stats()))),
            Command::ListActive { queue, state, after, descending, limit, reply } => {
                let ids = broker
                    .queue_id(&queue)
                    .map(|queue_id| broker.list_active(queue_id, state, after, descending, limit));
                return drop(reply.send(Ok(ids)));
            }
            Command::BackupStart { reply } => {
                // Every commit before this position was staged by `commit` right after its sync.
                let position = self.wal.committed_position();
                let pin = self.store.pin_wal(position);
                return drop(reply.send(Ok((position, pin))));
            }
            Command::WalEnd { reply } => {
                return drop(reply.send(Ok(self.wal.committed_position())));
            }
            Command::Stop => return,
            control => return self.execute_control(control, now_ms),
        };
        self.pending.push(reply);
    }

    /// Runs a person's action; these may read stored records of dead and delivered messages.
    fn execute_control(&mut self, command: Command, now_ms: u64) {
        let reply = match command {
            Command::Edit { id, edit, reply } => match self.stored(id) {
                Ok(stored) => {
                    pending(reply, self.broker.edit(now_ms, id, stored, edit, &mut self.changes))
                }
                Err(error) => return self.refuse_store(reply, error),
            },
            Command::Delete { id, reply } => match self.stored(id) {
                Ok(stored) => {
                    pending(reply, self.broker.delete(now_ms, id, stored, &mut self.changes))
                }
                Err(error) => return self.refuse_store(reply, error),
            },
            Command::Retry { id, reset_attempts, reply } => match self.stored(id) {
                Ok(stored) => {
                    let result =
                        self.broker.retry(now_ms, id, stored, reset_attempts, &mut self.changes);
                    pending(reply, result)
                }
                Err(error) => return self.refuse_store(reply, error),
            },
            Command::Reschedule { id, deliver_at_ms, reply } => match self.stored(id) {
                Ok(stored) => {
                    let result = self.broker.reschedule(
                        now_ms,
                        id,
                        stored,
                        deliver_at_ms,
                        &mut self.changes,
                    );
                    pending(reply, result)
                }
                Err(error) => return self.refuse_store(reply, error),
            },
            Command::Pause { queue, paused, reply } => {
                pending(reply, self.broker.set_paused(now_ms, &queue, paused, &mut self.changes))
            }
            Command::Configure { queue, settings, reply } => {
                let before = self.broker.queue_stats(&queue).map(|stats| stats.settings);
                let retention = (settings.retention_ms, settings.dead_retention_ms);
                self.broker.configure(now_ms, &queue, settings, &mut self.changes);
                let changed = before.is_some_and(|before| {
                    (before.retention_ms, before.dead_retention_ms) != retention
                });
                if let (true, Some(queue_id)) = (changed, self.broker.queue_id(&queue)) {
                    self.rearm.push((queue_id, MessageState::Delivered, None));
                    self.rearm.push((queue_id, MessageState::Dead, None));
                }
                pending(reply, ())
            }
            Command::Purge { queue, state, reply } => match self.purge(now_ms, &queue, state) {
                Ok(count) => pending(reply, count),
                Err(error) => return self.refuse_store(reply, error),
            },
            Command::Redrive { queue, reset_attempts, reply } => {
                match self.redrive(now_ms, &queue, reset_attempts) {
                    Ok(count) => pending(reply, count),
                    Err(error) => return self.refuse_store(reply, error),
                }
            }
            other => unreachable!("not a control command: {}", other.name()),
        };
        self.pending.push(reply);
    }

    /// The stored record of a message that is not active (the broker holds active ones).
    fn stored(&self, id: MessageId) -> Result<Option<MessageMeta>, StoreError> {
        if self.broker.active_meta(id).is_some() {
            return Ok(None);
        }
        self.store.meta(id)
    }

    fn refuse_store<T>(&self, reply: Reply<T>, error: StoreError) {
        tracing::error!(%error, "reading a stored message failed");
        let _ = reply.send(Err(CommitError::StorageFailed(error.to_string())));
    }

    /// Deletes one chunk of a queue's messages in `state`.
    fn purge(
        &mut self,
        now_ms: u64,
        queue: &str,
        state: MessageState,
    ) -> Result<Option<u64>, StoreError> {
        let Some(queue_id) = self.broker.queue_id(queue) else { return Ok(None) };
        let ids = if state.is_active() {
            self.broker.list_active(queue_id, state, None, false, CONTROL_CHUNK_COUNT_MAX)
        } else {
            self.store.list_terminal(queue_id, state, None, false, CONTROL_CHUNK_COUNT_MAX)?
        };
        let mut count = 0;
        for id in ids {
            let stored = self.stored(id)?;
            count += u64::from(self.broker.delete(now_ms, id, stored, &mut self.changes).is_ok());
        }
        Ok(Some(count))
    }

    /// Sends one chunk of a queue's dead messages back to ready.
    fn redrive(
        &mut self,
        now_ms: u64,
        queue: &str,
        reset_attempts: bool,
    ) -> Result<Option<u64>, StoreError> {
        let Some(queue_id) = self.broker.queue_id(queue) else { return Ok(None) };
        let ids = self.store.list_terminal(
            queue_id,
            MessageState::Dead,
            None,
            false,
            CONTROL_CHUNK_COUNT_MAX,
        )?;
        let mut count = 0;
        for id in ids {
            let stored = self.stored(id)?;
            let result = self.broker.retry(now_ms, id, stored, reset_attempts, &mut self.changes);
            count += u64::from(result.is_ok());
        }
        Ok(Some(count))
    }

    /// Re-arms the removal of one chunk of a queue's dead or delivered messages after its
    /// retention settings changed, so that the new retention applies to them too (the sweep drops
    /// the entries armed with the old one when they come due).
    fn rearm_step(&mut self) {
        let Some((queue_id, state, after)) = self.rearm.pop() else { return };
        if self.failed().is_some() {
            return;
        }
        let ids = match self.store.list_terminal(
            queue_id,
            state,
            after,
            false,
            CONTROL_CHUNK_COUNT_MAX,
        ) {
            Ok(ids) => ids,
            Err(error) => return tracing::warn!(%error, "re-arming retention failed"),
        };
        if ids.len() == CONTROL_CHUNK_COUNT_MAX {
            self.rearm.push((queue_id, state, ids.last().copied()));
        }
        let now_ms = self.now_ms();
        for id in ids {
            match self.stored(id) {
                Ok(stored) => self.broker.rearm(now_ms, id, stored, &mut self.changes),
                Err(error) => return tracing::warn!(%error, %id, "re-arming retention failed"),
            }
        }
        if !self.changes.is_empty() {
            self.append_frame(0, self.changes.len());
            self.finish();
        }
    }

    /// Removes dead and delivered messages whose retention passed, one bounded chunk per call.
    fn sweep(&mut self) {
        if self.failed().is_some() {
            return;
        }
        let now_ms = self.now_ms();
        let due = match self.store.expired(now_ms, CONTROL_CHUNK_COUNT_MAX) {
            Ok(due) => due,
            Err(error) => return tracing::warn!(%error, "reading the retention index failed"),
        };
        for (at_ms, id) in due {
            match self.stored(id) {
                Ok(stored) => self.broker.sweep(now_ms, at_ms, id, stored, &mut self.changes),
                Err(error) => {
                    return tracing::warn!(%error, %id, "reading a retained message failed")
                }
            }
        }
        if !self.changes.is_empty() {
            self.append_frame(0, self.changes.len());
            self.finish();
        }
    }

    /// Starts a checkpoint when enough WAL accumulated or enough time passed (or `force`d at
    /// shutdown, where it also waits for it), and deletes the WAL segments a finished one covers.
    ///
    /// The storage thread only rotates the WAL and hands the position to the applier, which
    /// flushes and fsyncs sled once everything before the position is written: the slow part of a
    /// checkpoint never holds up requests.
    fn maybe_checkpoint(&mut self, force: bool) {
        if let Some((position, result)) = self.store.checkpoint_done(false) {
            self.checkpointed(position, result);
        }
        if self.failed().is_some() {
            return;
        }
        let grown_bytes = self.wal.disk_bytes().saturating_sub(self.wal_bytes_at_checkpoint);
        let elapsed_ms = self.last_checkpoint.elapsed().as_millis() as u64;
        let due = grown_bytes >= self.config.checkpoint_wal_bytes
            || (grown_bytes > 0 && elapsed_ms >= CHECKPOINT_INTERVAL_MS);
        if !force && (!due || self.checkpoint_pending) {
            return;
        }
        match self.wal.rotate() {
            Ok(position) => {
                self.store.request_checkpoint(position);
                self.checkpoint_pending = true;
            }
            Err(error) => tracing::warn!(%error, "could not rotate the WAL for a checkpoint"),
        }
        self.last_checkpoint = Instant::now();
        self.wal_bytes_at_checkpoint = self.wal.disk_bytes();
        if force {
            if let Some((position, result)) = self.store.checkpoint_done(true) {
                self.checkpointed(position, result);
            }
        }
    }

    fn checkpointed(&mut self, position: super::wal::WalPosition, result: Result<(), String>) {
        self.checkpoint_pending = false;
        let bytes_before = self.wal.disk_bytes();
        match result.map_err(|error| error.to_string()).and_then(|()| {
            let removable = self.store.wal_removable_before(position);
            self.wal.remove_before(removable).map_err(|error| error.to_string())
        }) {
            Ok(removed) => tracing::debug!(removed_segments = removed, "checkpoint"),
            Err(error) => tracing::warn!(%error, "checkpoint failed; the WAL is kept and retried"),
        }
        // The growth that triggers the next checkpoint is counted from what is left: without
        // this, each trigger waited for the previous peak plus the threshold, and the WAL (and the
        // replay after a crash) ratcheted up under steady load.
        let removed_bytes = bytes_before.saturating_sub(self.wal.disk_bytes());
        self.wal_bytes_at_checkpoint = self.wal_bytes_at_checkpoint.saturating_sub(removed_bytes);
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
}

/// A token reply whose refusals are resolved against the store after the commit.
fn resolving<T: Send + 'static>(
    reply: Reply<Vec<TokenResult<T>>>,
    queue: String,
    results: Vec<Result<T, Refusal>>,
) -> Pending {
    Box::new(move |writer, outcome| {
        drop(reply.send(outcome.map(|()| writer.resolve(&queue, results))))
    })
}

impl Command {
    /// A name for logs.
    fn name(&self) -> &'static str {
        match self {
            Command::Enqueue { .. } => "enqueue",
            Command::Lease { .. } => "lease",
            Command::Ack { .. } => "ack",
            Command::Nack { .. } => "nack",
            Command::Extend { .. } => "extend",
            Command::QueueStats { .. } => "queue_stats",
            Command::Queues { .. } => "queues",
            Command::ListActive { .. } => "list",
            Command::Edit { .. } => "edit",
            Command::Delete { .. } => "delete",
            Command::Retry { .. } => "retry",
            Command::Reschedule { .. } => "reschedule",
            Command::Pause { .. } => "pause",
            Command::Configure { .. } => "configure",
            Command::Purge { .. } => "purge",
            Command::Redrive { .. } => "redrive",
            Command::BackupStart { .. } => "backup_start",
            Command::WalEnd { .. } => "wal_end",
            Command::Stop => "stop",
        }
    }

    /// Answers the command with `error` without running it.
    fn refuse(self, error: CommitError) {
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
            Command::Edit { reply, .. } => send(reply, error),
            Command::Delete { reply, .. } => send(reply, error),
            Command::Retry { reply, .. } => send(reply, error),
            Command::Reschedule { reply, .. } => send(reply, error),
            Command::Pause { reply, .. } => send(reply, error),
            Command::Configure { reply, .. } => send(reply, error),
            Command::Purge { reply, .. } => send(reply, error),
            Command::Redrive { reply, .. } => send(reply, error),
            Command::BackupStart { reply } => send(reply, error),
            Command::WalEnd { reply } => send(reply, error),
            Command::Stop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifiers_without_waiters_are_forgotten() {
        let waiters = Waiters::default();
        let held = waiters.notifier("busy");
        drop(waiters.notifier("idle"));
        waiters.forget_idle();
        let names: Vec<String> = waiters.by_queue.lock().keys().cloned().collect();
        assert_eq!(names, vec!["busy".to_string()]);
        drop(held);
        waiters.forget_idle();
        assert!(waiters.by_queue.lock().is_empty());
    }
}
