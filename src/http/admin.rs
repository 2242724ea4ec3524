//! Administrative endpoints: the online backup stream.
//!
//! `GET /v1/admin/backup` streams a backup file (format in `store/backup.rs`) as the response body.
//! The storage thread only names the starting WAL position and pins the log from there; the trees
//! and the log are read on a blocking thread that feeds the body through a bounded channel, so
//! requests go on meanwhile and a large store is never held in memory.

use super::error::ApiError;
use super::handlers::{self, AppState};
use super::HttpResponse;
use crate::store::backup::{self, BackupError, BackupWriter};
use crate::store::wal::WalPosition;
use crate::store::writer::{Command, CommitError, WriterHandle};
use crate::store::Store;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Bytes the backup stream gathers before handing a chunk to the connection.
const BACKUP_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight at most: with the chunk size, the memory one backup holds (plus one record).
const BACKUP_CHUNK_COUNT_MAX: usize = 8;
/// How often, and how long apart, asking the storage thread for the log end is retried while its
/// command channel is full.
const WAL_END_ATTEMPT_COUNT_MAX: u32 = 200;
const WAL_END_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// `GET /v1/admin/backup`: a consistent snapshot of the data, streamed.
pub async fn backup(
    state: &AppState,
    _request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let (from, pin) = handlers::call(&state.writer, |reply| Command::BackupStart { reply }).await?;
    let (sender, receiver) = mpsc::channel(BACKUP_CHUNK_COUNT_MAX);
    let store = state.store.clone();
    let writer = state.writer.clone();
    let wal_dir = state.data_dir.join("wal");
    let now_ms = (state.clock)();
    tokio::task::spawn_blocking(move || {
        // Held until the log copy is done: no checkpoint deletes the segments it reads.
        let _pin = pin;
        stream_backup(&store, &writer, &wal_dir, from, sender, now_ms);
    });
    let mut response = Response::new(BackupBody { receiver }.boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let disposition = format!("attachment; filename=\"outboxd-{now_ms}.backup\"");
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Writes the backup into the channel; runs on a blocking thread.
fn stream_backup(
    store: &Arc<Store>,
    writer: &WriterHandle,
    wal_dir: &Path,
    from: WalPosition,
    sender: mpsc::Sender<Bytes>,
    now_ms: u64,
) {
    let sink = ChunkSender { sender, buffer: Vec::with_capacity(BACKUP_CHUNK_BYTES) };
    let Ok(mut out) = BackupWriter::new(sink) else { return };
    let result = backup::write_backup(store, wal_dir, from, || wal_end(writer).map(Some), &mut out);
    let error = match result {
        Ok((from, to)) => match out.finish(from, to, now_ms) {
            Ok((trailer, _)) => {
                let (entry_count, frame_count) = (trailer.entry_count, trailer.frame_count);
                return tracing::info!(entry_count, frame_count, "backup sent");
            }
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                return tracing::warn!("the backup's client went away before the end");
            }
            Err(error) => return tracing::error!(%error, "finishing a backup failed"),
        },
        Err(error) => error,
    };
    if let BackupError::Io(cause) = &error {
        if cause.kind() == io::ErrorKind::BrokenPipe {
            return tracing::warn!("the backup's client went away before the end");
        }
    }
    tracing::error!(%error, "taking a backup failed");
    // The client is an operator, but internal details still stay in the log.
    let _ = out.fail("the server could not read its store or log; its log says why");
}

/// The position up to which the log is durable, asked of the storage thread from a blocking
/// thread (retried while its channel is full).
fn wal_end(writer: &WriterHandle) -> Result<WalPosition, BackupError> {
    let failed = |reason: String| BackupError::Io(io::Error::other(reason));
    for _ in 0..WAL_END_ATTEMPT_COUNT_MAX {
        let (reply, answer) = oneshot::channel();
        match writer.send(Command::WalEnd { reply }) {
            Ok(()) => {
                return match answer.blocking_recv() {
                    Ok(Ok(position)) => Ok(position),
                    Ok(Err(error)) => Err(failed(format!("the storage thread refused: {error:?}"))),
                    Err(_) => Err(failed("the server is shutting down".into())),
                }
            }
            Err(CommitError::Overloaded) => std::thread::sleep(WAL_END_RETRY_INTERVAL),
            Err(error) => return Err(failed(format!("the storage thread refused: {error:?}"))),
        }
    }
    Err(failed("the storage thread stayed overloaded".into()))
}

/// A `Write` that hands the bytes to the response body in chunks, waiting while the channel is
/// full (the client reads slower than the store is copied).
struct ChunkSender {
    sender: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
}

impl ChunkSender {
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(BACKUP_CHUNK_BYTES),
        ));
        self.sender
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= BACKUP_CHUNK_BYTES {
            self.send_buffer()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

/// The response body: the chunks the backup thread sends; it ends when the thread is done.
struct BackupBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for BackupBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver.poll_recv(context).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}
