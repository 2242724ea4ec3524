//! Reading messages for a request: the storage thread's view first, then the catalog and the log
//! segments for what only the disk holds.
//!
//! The storage thread answers from memory (active messages, and dead, delivered or removed ones
//! that changed since the last checkpoint); for anything else it says the catalog is current, as of
//! the durable checkpoint it names. Catalog reads and content reads run here, on the connection's
//! side, never on the storage thread: a sled read can wait behind a checkpoint's batch.

use super::error::ApiError;
use super::handlers::{call, AppState};
use crate::engine::Command;
use crate::queue::{
    ContentLocation, History, HistoryEvent, Lookup, MessageId, MessageMeta, Stored,
};
use crate::store::StoreError;

/// One message as a request sees it.
pub struct Record {
    pub meta: MessageMeta,
    pub queue: String,
    /// History events the catalog may not hold yet.
    pub pending_history: Vec<HistoryEvent>,
    /// When the record was read from the catalog (the broker did not hold it): the durable epoch
    /// it was current at, which an action on it must carry.
    pub stored_epoch: Option<u64>,
}

impl Record {
    /// The record as an action's `stored` argument (only when it came from the catalog).
    pub fn stored(&self) -> Option<Stored> {
        self.stored_epoch.map(|epoch| Stored { meta: self.meta.clone(), epoch })
    }
}

/// Logs a store failure and turns it into a 500 that names what was being done.
pub fn internal(doing: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |error| {
        tracing::error!(%error, "{doing} failed");
        ApiError::internal(doing)
    }
}

/// Runs a blocking store read off the runtime's threads.
pub async fn blocking<T: Send + 'static>(
    doing: &'static str,
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| ApiError::internal(doing))?
        .map_err(internal(doing))
}

/// The message's current record, or `None` when there is no such message.
pub async fn record(state: &AppState, id: MessageId) -> Result<Option<Record>, ApiError> {
    let read = call(&state.engine, |reply| Command::Message { id, reply }).await?;
    match read.lookup {
        Lookup::Found(meta) => Ok(Some(Record {
            meta,
            queue: read.queue.unwrap_or_default(),
            pending_history: read.pending_history,
            stored_epoch: None,
        })),
        Lookup::Removed => Ok(None),
        Lookup::InCatalog { epoch } => {
            let catalog = state.catalog.clone();
            let Some(meta) = blocking("reading a message", move || catalog.meta(id)).await? else {
                return Ok(None);
            };
            let queue = state.queue_name(meta.queue_id);
            Ok(Some(Record { meta, queue, pending_history: Vec::new(), stored_epoch: Some(epoch) }))
        }
    }
}

/// A message's content bytes (`None` when they are gone: the message was removed meanwhile).
pub fn content(
    state: &AppState,
    id: MessageId,
    location: ContentLocation,
) -> Result<Option<Vec<u8>>, StoreError> {
    match location {
        ContentLocation::Log { segment, offset, len } => {
            match state.segments.read(segment, offset, len) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(StoreError::Io {
                    path: crate::store::wal::segment_path(&state.log_dir, u64::from(segment)),
                    source,
                }),
            }
        }
        ContentLocation::Catalog { .. } => state.catalog.content(id),
    }
}

/// A message's history: the catalog's, with the events it may not hold yet added (each once).
pub fn history(
    state: &AppState,
    id: MessageId,
    meta: &MessageMeta,
    pending: &[HistoryEvent],
) -> History {
    let mut history = if meta.event_seq == 0 {
        History::default()
    } else {
        // A damaged history must not take the message down: it shows as empty (and is logged).
        state
            .catalog
            .history(id)
            .unwrap_or_else(|error| {
                tracing::error!(%error, %id, "reading a message's history failed");
                None
            })
            .unwrap_or_default()
    };
    let keep_count = state.history_keep_count as usize;
    for event in pending {
        history.record(event.clone(), keep_count);
    }
    history
}
