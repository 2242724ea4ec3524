//! The storage thread: the only place where the broker, the log and the catalog meet.
//!
//! Request handlers send [`Command`]s over a bounded channel. The thread takes every command that is
//! waiting (up to `GROUP_COMMAND_COUNT_MAX`), runs each against the broker, appends each command's
//! ops (and the contents it brings) to the log as one frame, so one request is atomic, calls
//! fdatasync once for the whole group, publishes the group's events, and only then answers every
//! waiter. Under load the channel fills while a sync runs, so the next group is larger: the cost of
//! a sync is shared by more requests.
//!
//! The thread never touches sled: checkpoints and retention sweeps run on the checkpoint writer's
//! thread (`checkpointer.rs`), and housekeeping (`housekeeping.rs`) hands them their work between
//! groups and takes their outcomes back. Connection threads read the catalog themselves for what
//! the broker does not hold.
//!
//! When a log write or sync fails the thread answers that group with `StorageFailed` and refuses
//! every later write: the broker's memory ran ahead of the disk and nothing written after a failed
//! fsync can be trusted. Reads keep working; a restart recovers from what the log holds.
//!
//! - `command.rs`: the protocol (commands, replies, errors).
//! - `execute.rs`: running one command against the broker.
//! - `housekeeping.rs`: checkpoints, retention sweeps, segment deletion, the disk watermark.
//! - `checkpointer.rs`: the checkpoint writer's thread.
//! - `cold.rs`: reading ready messages kept on disk back into memory; requests that wait for them.
//! - `waiters.rs`: long-poll wake-ups.

mod checkpointer;
mod cold;
pub mod command;
mod execute;
mod housekeeping;
mod waiters;

pub use command::{
    BackupStart, Command, CommitError, ControlResult, HeldCheckpoint, IncomingEdit,
    IncomingMessage, Listed, MessageRead, Reply, SettledListing, StorageFailure, TokenResult,
};
pub use waiters::Waiters;

use crate::events::{Event, EventLog};
use crate::limits::GROUP_COMMAND_COUNT_MAX;
use crate::metrics as m;
use crate::queue::{Broker, Op};
use crate::store::catalog::Catalog;
use crate::store::codec::FrameWriter;
use crate::store::wal::{SegmentFiles, Wal};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest the thread sleeps without a command or a due timer (housekeeping granularity).
const IDLE_WAKE_MS: u64 = 250;
/// The longest it sleeps while catalog pages are being read back for parked requests.
const COLD_POLL_MS: u64 = 1;

/// The handlers' side of the storage thread.
#[derive(Clone)]
pub struct EngineHandle {
    sender: SyncSender<Command>,
    failure: Arc<RwLock<Option<StorageFailure>>>,
}

impl EngineHandle {
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
    pub fn failure(&self) -> Option<StorageFailure> {
        self.failure.read().clone()
    }
}

/// Settings of the storage thread.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The data directory, whose filesystem's free space is watched.
    pub data_dir: std::path::PathBuf,
    /// Below this many free bytes enqueues are refused (0 turns the check off).
    pub disk_free_min_bytes: u64,
    /// Log growth that triggers a checkpoint.
    pub checkpoint_wal_bytes: u64,
    /// Depth of the command channel.
    pub depth: usize,
}

/// What the storage thread shares with the handlers.
pub struct Shared {
    pub catalog: Arc<Catalog>,
    pub segments: Arc<SegmentFiles>,
    pub waiters: Arc<Waiters>,
    pub events: Arc<EventLog>,
    pub gauges: Arc<Gauges>,
    /// Queue names by id, for connection threads (kept current as queues are created).
    pub queue_names: Arc<RwLock<Vec<String>>>,
}

/// Figures the storage thread keeps current for `/metrics`.
#[derive(Default)]
pub struct Gauges {
    /// Bytes of log segments on disk.
    pub log_bytes: AtomicU64,
    /// Records held in memory until a checkpoint writes them.
    pub settled_count: AtomicU64,
    /// Armed timers.
    pub timer_count: AtomicU64,
    /// Bytes of log after the durable checkpoint (what a restart replays).
    pub replay_bytes: AtomicU64,
    /// Ready messages kept in the catalog, not in memory.
    pub cold_count: AtomicU64,
}

/// Keeps every log segment from being deleted while it lives (a running backup holds one).
pub struct SegmentPin {
    pins: Arc<AtomicUsize>,
}

impl Drop for SegmentPin {
    fn drop(&mut self) {
        self.pins.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps checkpoints from starting while it lives (a backup holds one while it copies the
/// catalog, which only a checkpoint changes).
pub struct CheckpointHold {
    holds: Arc<AtomicUsize>,
}

impl Drop for CheckpointHold {
    fn drop(&mut self) {
        self.holds.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reply waiting for the commit; it is called with the commit's outcome.
type Pending = Box<dyn FnOnce(&Engine, Result<(), CommitError>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, value: T) -> Pending {
    Box::new(move |_, outcome| drop(reply.send(outcome.map(|()| value))))
}

/// The storage thread's own state.
pub struct Engine {
    broker: Broker,
    wal: Wal,
    shared: Shared,
    failure: Arc<RwLock<Option<StorageFailure>>>,
    clock: fn() -> u64,
    last_now_ms: u64,
    /// The ops of the command being run.
    ops: Vec<Op>,
    /// Replies waiting for the commit of the frames appended since the last one.
    pending: Vec<Pending>,
    config: EngineConfig,
    house: housekeeping::Housekeeping,
    cold: cold::ColdLoads,
}

/// Starts the storage thread; it runs until `Stop` (or every handle is dropped), then checkpoints.
pub fn spawn(
    broker: Broker,
    wal: Wal,
    shared: Shared,
    clock: fn() -> u64,
    config: EngineConfig,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(config.depth);
    let failure = Arc::new(RwLock::new(None));
    let house =
        housekeeping::Housekeeping::new(shared.catalog.clone(), shared.segments.clone(), &wal)?;
    let cold = cold::ColdLoads::spawn(shared.catalog.clone())?;
    let engine = Engine {
        broker,
        wal,
        shared,
        failure: failure.clone(),
        clock,
        last_now_ms: 0,
        ops: Vec::new(),
        pending: Vec::new(),
        config,
        house,
        cold,
    };
    engine.publish_queue_names();
    let thread = std::thread::Builder::new()
        .name("outboxd-storage".into())
        .spawn(move || engine.run(receiver))?;
    Ok((EngineHandle { sender, failure }, thread))
}

impl Engine {
    fn run(mut self, receiver: Receiver<Command>) {
        let mut group = Vec::with_capacity(GROUP_COMMAND_COUNT_MAX);
        loop {
            let now_ms = self.now_ms();
            let wake_ms = self.broker.next_deadline_ms().unwrap_or(u64::MAX);
            let mut sleep_ms = wake_ms.saturating_sub(now_ms).min(IDLE_WAKE_MS);
            if self.cold.busy() {
                // Parked requests wait for catalog pages: look for them often.
                sleep_ms = sleep_ms.min(COLD_POLL_MS);
            }
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
            self.housekeeping(false);
            if stopping {
                break;
            }
        }
        self.cold.stop();
        self.housekeeping(true);
        tracing::info!("storage thread stopped");
    }

    /// The wall clock, never going backwards (deadlines are wall-clock times that survive restarts).
    fn now_ms(&mut self) -> u64 {
        self.last_now_ms = self.last_now_ms.max((self.clock)());
        self.last_now_ms
    }

    fn failed(&self) -> Option<StorageFailure> {
        self.failure.read().clone()
    }

    /// Runs one group: timers, every command, one log sync, then the replies.
    fn run_group(&mut self, group: &mut Vec<Command>) {
        let now_ms = self.now_ms();
        debug_assert!(self.ops.is_empty() && self.pending.is_empty());
        if self.failed().is_none() {
            self.broker.expire_due(now_ms, &mut self.ops);
            self.append_ops(0, |_, _| {});
        }
        self.take_cold_loads(now_ms);
        for command in group.drain(..) {
            self.execute(command, now_ms);
        }
        self.finish();
    }

    /// Appends the collected ops as one frame, after `content_count` contents that `place` writes
    /// into the frame (it gets the frame writer and the buffer). Nothing is written when there are
    /// no ops.
    fn append_ops(
        &mut self,
        content_count: usize,
        place: impl FnOnce(&mut FrameWriter, &mut Vec<u8>),
    ) {
        if self.ops.is_empty() {
            return;
        }
        let Some(mut writer) = self.begin_frame(content_count) else {
            self.ops.clear();
            return;
        };
        place(&mut writer, self.wal.frame_buffer());
        writer.finish(self.wal.frame_buffer(), &self.ops);
        self.wal.end_frame();
        self.ops.clear();
    }

    /// Opens a log frame (starting a new segment first when the current one is full); `None`
    /// after a storage failure.
    fn begin_frame(&mut self, content_count: usize) -> Option<FrameWriter> {
        if self.failed().is_some() {
            return None;
        }
        if let Err(error) = self.wal.rotate_if_full() {
            self.fail_storage("log segment rotation", error);
            return None;
        }
        let position = self.wal.begin_frame();
        let segment = u32::try_from(position.segment_seq).expect("segment numbers fit in u32");
        Some(FrameWriter::begin(self.wal.frame_buffer(), segment, position.offset, content_count))
    }

    /// Records a storage failure: writes are refused from now on.
    fn fail_storage(&mut self, part: &'static str, error: crate::store::wal::WalError) {
        tracing::error!(part, %error, "storage failed; refusing writes until restart");
        let mut failure = self.failure.write();
        if failure.is_none() {
            *failure = Some(StorageFailure { part, source: Arc::new(error) });
        }
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
            self.shared.events.publish(events);
        }
        for reply in std::mem::take(&mut self.pending) {
            reply(self, outcome.clone());
        }
        for queue_id in self.broker.take_woken() {
            self.shared.waiters.wake(self.broker.queue_name(queue_id));
        }
        self.publish_queue_names();
    }

    /// Adds the names of queues created since the last call to the shared list.
    fn publish_queue_names(&self) {
        let known = self.shared.queue_names.read().len();
        if known < self.broker.queue_count() {
            let mut names = self.shared.queue_names.write();
            for index in names.len()..self.broker.queue_count() {
                names.push(self.broker.queue_name(crate::queue::QueueId(index as u32)).to_string());
            }
        }
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

    /// Writes and syncs the buffered frames; on failure stops all further writes.
    fn commit(&mut self) -> Result<(), CommitError> {
        if let Some(failure) = self.failed() {
            // Frames buffered before the failure are dropped with the log's poisoning.
            let _ = self.wal.commit();
            return Err(CommitError::StorageFailed(failure));
        }
        let started = Instant::now();
        let before = self.wal.committed_position();
        match self.wal.commit() {
            Ok(after) => {
                if after != before {
                    metrics::histogram!(m::WAL_SYNC_DURATION_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(m::COMMIT_GROUP_REQUESTS).record(self.pending.len() as f64);
                }
                self.shared.gauges.log_bytes.store(self.wal.disk_bytes(), Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.fail_storage("write-ahead log", error);
                Err(CommitError::StorageFailed(self.failed().expect("just set")))
            }
        }
    }
}
