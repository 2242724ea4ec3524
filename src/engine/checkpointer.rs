//! The checkpoint writer: a thread that writes checkpoints to the catalog and looks for messages
//! whose retention passed, so that the storage thread never waits for sled.
//!
//! The storage thread hands it one job at a time and collects the outcome between groups. A
//! checkpoint job carries the broker's snapshot; the outcome gives the snapshot back when the
//! write failed, so that its changes go into the next checkpoint. A sweep reads the catalog at the
//! durable epoch and names the messages to remove; the storage thread checks that the epoch is
//! still the durable one before it acts on them.

use crate::queue::{ContentLocation, MessageId, MessageMeta};
use crate::store::catalog::{Catalog, CheckpointJob, CheckpointStats, SweepBatch};
use crate::store::wal::SegmentFiles;
use crate::store::StoreError;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most catalog pages one sweep reads (each holds up to 256 records).
pub const SWEEP_PAGE_COUNT_MAX: usize = 1024;
/// Most catalog pages one compaction step reads.
pub const COMPACT_PAGE_COUNT_MAX: usize = 4096;
/// Most content bytes one compaction step copies (one frame).
pub const COMPACT_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Work for the checkpoint writer.
pub enum Job {
    Checkpoint(Box<CheckpointJob>),
    /// Find the retained messages whose retention passed at `now_ms`.
    Sweep {
        now_ms: u64,
        /// Per queue id: the retention of delivered and of dead messages.
        retention: Vec<(Option<u64>, Option<u64>)>,
        epoch: u64,
    },
    /// Read the contents still stored in log segment `segment`: those of the messages the broker
    /// holds (`resident`) and those the catalog holds in pages `first_page..=last_page`.
    Compact {
        segment: u32,
        first_page: u64,
        last_page: u64,
        epoch: u64,
        resident: Vec<(MessageId, ContentLocation)>,
    },
}

/// Contents read out of a segment being reclaimed.
pub struct CompactBatch {
    pub segment: u32,
    /// The durable epoch the catalog records were read at.
    pub epoch: u64,
    /// Per message: the catalog's record (`None` for one the broker held), the content's location
    /// when read, and its bytes.
    pub items: Vec<(MessageId, Option<MessageMeta>, ContentLocation, Vec<u8>)>,
    /// Where to go on: the next catalog page to read, and the last of the range.
    pub next_pages: Option<(u64, u64)>,
}

/// What a job came to.
pub enum Outcome {
    Checkpointed {
        /// The job (its snapshot is needed again when the write failed).
        job: Box<CheckpointJob>,
        result: Result<CheckpointStats, String>,
        elapsed: Duration,
    },
    Swept(Result<SweepBatch, String>),
    Compacted(Result<CompactBatch, String>),
}

/// The storage thread's side of the checkpoint writer.
pub struct Checkpointer {
    jobs: Option<SyncSender<Job>>,
    outcomes: Receiver<Outcome>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread.
    pub fn spawn(
        catalog: Arc<Catalog>,
        segments: Arc<SegmentFiles>,
    ) -> std::io::Result<Checkpointer> {
        // One job in flight and one waiting at most: the storage thread waits for outcomes.
        let (jobs, job_receiver) = mpsc::sync_channel::<Job>(2);
        let (outcome_sender, outcomes) = mpsc::channel();
        let thread =
            std::thread::Builder::new().name("outboxd-checkpoint".into()).spawn(move || {
                for job in job_receiver {
                    let outcome = run(&catalog, &segments, job);
                    if outcome_sender.send(outcome).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Checkpointer { jobs: Some(jobs), outcomes, thread: Some(thread) })
    }

    /// Hands over a job (blocks only while two are queued, which the storage thread avoids).
    pub fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
    }

    /// The next outcome, if one is ready.
    pub fn try_outcome(&self) -> Option<Outcome> {
        self.outcomes.try_recv().ok()
    }

    /// Waits for the next outcome.
    pub fn wait_outcome(&self) -> Option<Outcome> {
        self.outcomes.recv().ok()
    }

    /// Stops the thread after the jobs already handed over.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(catalog: &Catalog, segments: &SegmentFiles, job: Job) -> Outcome {
    match job {
        Job::Checkpoint(job) => {
            let started = Instant::now();
            crate::failpoint::crash("checkpoint.before_write");
            let result = catalog.write_checkpoint(&job).map_err(|error| error.to_string());
            crate::failpoint::crash("checkpoint.after_write");
            Outcome::Checkpointed { job, result, elapsed: started.elapsed() }
        }
        Job::Sweep { now_ms, retention, epoch } => Outcome::Swept(
            catalog
                .sweep(now_ms, &retention, SWEEP_PAGE_COUNT_MAX, epoch)
                .map_err(|error| error.to_string()),
        ),
        Job::Compact { segment, first_page, last_page, epoch, resident } => Outcome::Compacted(
            read_contents(catalog, segments, segment, (first_page, last_page), epoch, resident)
                .map_err(|error| error.to_string()),
        ),
    }
}

/// Reads the contents still stored in a segment, up to `COMPACT_BYTES_MAX`.
fn read_contents(
    catalog: &Catalog,
    segments: &SegmentFiles,
    segment: u32,
    (first_page, last_page): (u64, u64),
    epoch: u64,
    resident: Vec<(MessageId, ContentLocation)>,
) -> Result<CompactBatch, StoreError> {
    let (stored, next_page) =
        catalog.contents_in(segment, first_page, last_page, COMPACT_PAGE_COUNT_MAX)?;
    let wanted = resident
        .into_iter()
        .map(|(id, content)| (id, None, content))
        .chain(stored.into_iter().map(|(id, meta)| (id, Some(meta.clone()), meta.content)));
    let mut items = Vec::new();
    let mut bytes_read = 0u64;
    for (id, meta, content) in wanted {
        let ContentLocation::Log { segment: in_segment, offset, len } = content else { continue };
        if in_segment != segment || bytes_read >= COMPACT_BYTES_MAX {
            continue;
        }
        match segments.read(segment, offset, len) {
            Ok(bytes) => {
                bytes_read += u64::from(len);
                items.push((id, meta, content, bytes));
            }
            Err(source) => {
                let path = catalog.dir().join(format!("segment {segment}"));
                return Err(StoreError::Io { path, source });
            }
        }
    }
    let next_pages = next_page.map(|page| (page, last_page));
    Ok(CompactBatch { segment, epoch, items, next_pages })
}
