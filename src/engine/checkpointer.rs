//! The checkpoint writer: a thread that writes checkpoints to the catalog and looks for messages
//! whose retention passed, so that the storage thread never waits for sled.
//!
//! The storage thread hands it one job at a time and collects the outcome between groups. A
//! checkpoint job carries the broker's snapshot; the outcome gives the snapshot back when the
//! write failed, so that its changes go into the next checkpoint. A sweep reads the catalog at the
//! durable epoch and names the messages to remove; the storage thread checks that the epoch is
//! still the durable one before it acts on them.

use crate::store::catalog::{Catalog, CheckpointJob, CheckpointStats, SweepBatch};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most catalog pages one sweep reads (each holds up to 256 records).
pub const SWEEP_PAGE_COUNT_MAX: usize = 1024;

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
}

/// The storage thread's side of the checkpoint writer.
pub struct Checkpointer {
    jobs: Option<SyncSender<Job>>,
    outcomes: Receiver<Outcome>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread.
    pub fn spawn(catalog: Arc<Catalog>) -> std::io::Result<Checkpointer> {
        // One job in flight and one waiting at most: the storage thread waits for outcomes.
        let (jobs, job_receiver) = mpsc::sync_channel::<Job>(2);
        let (outcome_sender, outcomes) = mpsc::channel();
        let thread =
            std::thread::Builder::new().name("outboxd-checkpoint".into()).spawn(move || {
                for job in job_receiver {
                    let outcome = run(&catalog, job);
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

fn run(catalog: &Catalog, job: Job) -> Outcome {
    match job {
        Job::Checkpoint(job) => {
            let started = Instant::now();
            inject_crash("checkpoint.before_write");
            let result = catalog.write_checkpoint(&job).map_err(|error| error.to_string());
            inject_crash("checkpoint.after_write");
            Outcome::Checkpointed { job, result, elapsed: started.elapsed() }
        }
        Job::Sweep { now_ms, retention, epoch } => Outcome::Swept(
            catalog
                .sweep(now_ms, &retention, SWEEP_PAGE_COUNT_MAX, epoch)
                .map_err(|error| error.to_string()),
        ),
    }
}

/// Kills the process at a failpoint (test builds): crash tests stop the server in the middle of a
/// checkpoint this way.
#[cfg(feature = "testing")]
fn inject_crash(name: &str) {
    fail::fail_point!(name, |_| {
        eprintln!("crash injected at {name}");
        std::process::abort()
    });
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
fn inject_crash(_name: &str) {}
