//! Ready messages the broker keeps on disk (see `queue/cold.rs`): reading their catalog pages back
//! on the loader thread, and holding the requests that must wait for them.
//!
//! A lease, a listing of ready messages or a purge of them that reaches a cold page is parked (its
//! reply kept) while the loader reads the page; when the records come back they are handed to the
//! broker and every parked command runs again, in arrival order, in the group being run. A lease
//! also asks for the cold pages a little further along its queue's order, so that consumers
//! working through a backlog rarely wait. The storage thread never reads the catalog itself.
//!
//! The broker takes records only if no checkpoint became durable since they were asked for (see
//! the invariant in `queue/cold.rs`); otherwise they are dropped and asked for again.

use super::command::Command;
use super::Engine;
use crate::hash::FastSet;
use crate::limits::{COLD_PREFETCH_COUNT, CONTROL_CHUNK_COUNT_MAX};
use crate::queue::{MessageId, MessageMeta, MessageState, QueueId};
use crate::store::catalog::Catalog;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// A page's ready records of one queue, or why they could not be read.
type PageRecords = Result<Vec<(MessageId, MessageMeta)>, String>;

/// Pages read from the catalog for one queue.
pub(super) struct Loaded {
    queue_id: QueueId,
    /// The durable epoch when they were asked for.
    epoch: u64,
    pages: Vec<(u64, PageRecords)>,
}

struct LoadJob {
    queue_id: QueueId,
    epoch: u64,
    pages: Vec<u64>,
}

/// The loader thread and what waits for it.
pub(super) struct ColdLoads {
    jobs: Option<Sender<LoadJob>>,
    loaded: Receiver<Loaded>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Pages asked for and not back yet.
    loading: FastSet<(QueueId, u64)>,
    /// Commands waiting for pages, in arrival order.
    parked: Vec<Command>,
}

impl ColdLoads {
    pub(super) fn spawn(catalog: Arc<Catalog>) -> std::io::Result<ColdLoads> {
        let (jobs, job_receiver) = mpsc::channel::<LoadJob>();
        let (loaded_sender, loaded) = mpsc::channel();
        let thread =
            std::thread::Builder::new().name("outboxd-loader".into()).spawn(move || {
                for job in job_receiver {
                    let pages = job
                        .pages
                        .into_iter()
                        .map(|page| (page, read_page(&catalog, job.queue_id, page)))
                        .collect();
                    let answer = Loaded { queue_id: job.queue_id, epoch: job.epoch, pages };
                    if loaded_sender.send(answer).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ColdLoads {
            jobs: Some(jobs),
            loaded,
            thread: Some(thread),
            loading: FastSet::default(),
            parked: Vec::new(),
        })
    }

    /// Whether pages are being read (the storage thread then wakes often to take them).
    pub(super) fn busy(&self) -> bool {
        !self.loading.is_empty()
    }

    /// Whether ready messages may leave memory now: not while a listing or a purge waits for
    /// pages, since it needs pages in id order that eviction, working in lease order, could take
    /// again before it runs. (Leases need the front of the lease order, which leaves last.)
    pub(super) fn may_evict(&self) -> bool {
        !self.parked.iter().any(|command| !matches!(command, Command::Lease { .. }))
    }

    /// Stops the loader; parked commands are dropped (their callers see the server stop).
    pub(super) fn stop(&mut self) {
        self.parked.clear();
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ColdLoads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cold page's ready records of one queue.
fn read_page(catalog: &Catalog, queue_id: QueueId, page: u64) -> PageRecords {
    let records = catalog.page(page).map_err(|error| error.to_string())?;
    Ok(records
        .into_iter()
        .filter(|(_, meta)| meta.queue_id == queue_id && meta.state == MessageState::Ready)
        .collect())
}

impl Engine {
    /// Parks a command that reaches a cold page before anything it could serve, asking for the
    /// pages; hands every other command back. A lease also asks for the cold pages just ahead.
    pub(super) fn park_if_cold(&mut self, command: Command) -> Option<Command> {
        let (queue_id, pages, blocked) = match &command {
            Command::Lease { queue, count_max, .. } => {
                let Some(queue_id) = self.broker.queue_id(queue) else { return Some(command) };
                let window = *count_max as usize + COLD_PREFETCH_COUNT;
                let ahead = self.broker.cold_ahead(queue_id, window);
                (queue_id, ahead.pages, ahead.blocked)
            }
            Command::ListActive {
                queue,
                state: MessageState::Ready,
                after,
                descending,
                limit,
                ..
            } => {
                let Some(queue_id) = self.broker.queue_id(queue) else { return Some(command) };
                let pages = self.broker.cold_in_listing(queue_id, *after, *descending, *limit);
                let blocked = !pages.is_empty();
                (queue_id, pages, blocked)
            }
            Command::Purge { queue, state: MessageState::Ready, .. } => {
                let Some(queue_id) = self.broker.queue_id(queue) else { return Some(command) };
                let pages =
                    self.broker.cold_in_listing(queue_id, None, false, CONTROL_CHUNK_COUNT_MAX);
                let blocked = !pages.is_empty();
                (queue_id, pages, blocked)
            }
            _ => return Some(command),
        };
        self.ask_for_pages(queue_id, pages);
        if blocked {
            self.cold.parked.push(command);
            None
        } else {
            Some(command)
        }
    }

    /// Asks the loader for the pages not asked for already.
    pub(super) fn ask_for_pages(&mut self, queue_id: QueueId, pages: Vec<u64>) {
        let loading = &mut self.cold.loading;
        let pages: Vec<u64> =
            pages.into_iter().filter(|page| loading.insert((queue_id, *page))).collect();
        if pages.is_empty() {
            return;
        }
        let job = LoadJob { queue_id, epoch: self.broker.durable_epoch(), pages };
        if let Some(jobs) = &self.cold.jobs {
            let _ = jobs.send(job);
        }
    }

    /// Hands the pages read since the last call to the broker, then runs the parked commands
    /// again (part of the group being run).
    pub(super) fn take_cold_loads(&mut self, now_ms: u64) {
        let mut any = false;
        while let Ok(loaded) = self.cold.loaded.try_recv() {
            any = true;
            let current = loaded.epoch == self.broker.durable_epoch();
            for (page, result) in loaded.pages {
                self.cold.loading.remove(&(loaded.queue_id, page));
                if !current {
                    // A checkpoint became durable meanwhile: the records may be out of date.
                    continue;
                }
                let missing = match result {
                    Ok(records) => self.broker.load_cold(loaded.queue_id, page, records),
                    Err(error) => {
                        tracing::error!(
                            page,
                            %error,
                            "a catalog page of ready messages cannot be read; they are not \
                             delivered until a restart (with --quarantine-corrupt if the page \
                             is damaged)"
                        );
                        self.broker.drop_cold_page(loaded.queue_id, page)
                    }
                };
                if missing > 0 {
                    tracing::error!(
                        page,
                        missing,
                        "the catalog lacks ready messages counted on this page; they are no \
                         longer counted (run outboxd check on the data directory)"
                    );
                }
            }
        }
        if any {
            for command in std::mem::take(&mut self.cold.parked) {
                self.execute(command, now_ms);
            }
        }
    }
}
