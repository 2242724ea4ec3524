//! Administrative endpoints: the online backup stream.
//!
//! `GET /v1/admin/backup` streams a backup file (format in `store/backup/mod.rs`) as the response body.
//! The storage thread pins the log (no segment is deleted until the backup ends) and holds its
//! checkpoints while the catalog's entries are copied into an unnamed spool file in the data
//! directory: the catalog only changes when a checkpoint is written, so the copy is of one epoch,
//! and it takes as long as a disk-to-disk copy of the catalog, whatever the client's speed. The
//! copy's manifest must be the epoch the storage thread promised (only a shutdown's last checkpoint
//! runs despite the hold). Then the spool and the log segments (from the oldest one the catalog
//! points into, up to the log position the storage thread reports as committed) are streamed on
//! a blocking thread that feeds the body through a bounded channel, so requests go on meanwhile
//! and a large store is never held in memory.
//!
//! Since a backup pins the log, the server streams one at a time (`409 backup_in_progress` for a
//! second), and gives up on a client that takes no data for `BACKUP_CLIENT_STALL_MS`: hyper has
//! no write timeout, and a stalled client would otherwise keep every later log segment on disk.
//! The answer names the server's data directory (`Outboxd-Data-Dir`), which `outboxd backup
//! --data-dir` checks, so that a stale address file never leads it to another server.

use super::error::ApiError;
use super::handlers::{self, AppState};
use super::HttpResponse;
use crate::engine::{Command, CommitError, EngineHandle, HeldCheckpoint, SegmentPin};
use crate::limits::BACKUP_CLIENT_STALL_MS;
use crate::store::backup::{self, BackupError, BackupWriter};
use crate::store::catalog::Catalog;
use crate::store::codec::Manifest;
use crate::store::wal::WalPosition;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Request, Response};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// Bytes the backup stream gathers before handing a chunk to the connection.
const BACKUP_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight at most: with the chunk size, the memory one backup holds (plus one record).
const BACKUP_CHUNK_COUNT_MAX: usize = 8;
/// How often, and how long apart, asking the storage thread for the log end is retried while its
/// command channel is full.
const WAL_END_ATTEMPT_COUNT_MAX: u32 = 200;
const WAL_END_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The response header that names the data directory the backup comes from: its canonical path,
/// percent-encoded (see [`data_dir_header_value`]). `outboxd backup --data-dir` compares it with
/// the directory it was given, so a stale address file never leads it to another server.
pub const DATA_DIR_HEADER: &str = "outboxd-data-dir";

/// `GET /v1/admin/backup`: a consistent snapshot of the data, streamed.
pub async fn backup(
    state: &AppState,
    _request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    // Held until the stream ends: one backup at a time, since each pins the log and reads the
    // whole store.
    let slot = BackupSlot::take(&state.backup_running).ok_or_else(ApiError::backup_in_progress)?;
    let start = handlers::call(&state.engine, |reply| Command::BackupStart { reply }).await?;
    let held = handlers::call(&state.engine, |reply| Command::HoldCheckpoints { reply }).await?;
    let catalog = state.catalog.clone();
    let data_dir = state.data_dir.clone();
    let spooled = tokio::task::spawn_blocking(move || spool_catalog(&catalog, &data_dir, held))
        .await
        .map_err(|_| ApiError::internal("copying the catalog for a backup"))?;
    let spool = match spooled {
        Ok(spool) => spool,
        Err(BackupError::CatalogMoved { .. }) => return Err(ApiError::shutting_down()),
        Err(error) => {
            tracing::error!(%error, "copying the catalog for a backup failed");
            return Err(ApiError::internal("copying the catalog for a backup"));
        }
    };
    let (sender, receiver) = mpsc::channel(BACKUP_CHUNK_COUNT_MAX);
    let sink = ChunkSender::new(sender, tokio::runtime::Handle::current(), client_stall_timeout());
    let engine = state.engine.clone();
    let log_dir = state.data_dir.join(crate::store::LOG_DIR);
    let now_ms = (state.clock)();
    tokio::task::spawn_blocking(move || {
        // Held until the log copy is done: no checkpoint deletes the segments it reads.
        let _pin: SegmentPin = start.pin;
        let _slot = slot;
        stream_backup(spool, &engine, &log_dir, sink, now_ms);
    });
    let mut response = Response::new(super::stream::ChannelBody::new(receiver).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let disposition = format!("attachment; filename=\"outboxd-{now_ms}.backup\"");
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    let data_dir =
        std::fs::canonicalize(&state.data_dir).unwrap_or_else(|_| state.data_dir.clone());
    if let Ok(value) = HeaderValue::from_str(&data_dir_header_value(&data_dir)) {
        headers.insert(HeaderName::from_static(DATA_DIR_HEADER), value);
    }
    Ok(response)
}

/// The catalog's entries at one checkpoint, copied into an unnamed file.
struct Spool {
    file: File,
    entry_count: u64,
    manifest: Manifest,
}

/// Copies the catalog's entries into an unnamed file in the data directory while checkpoints are
/// held (the hold ends when this returns), and checks that the copy is of the promised epoch.
fn spool_catalog(
    catalog: &Catalog,
    data_dir: &Path,
    held: HeldCheckpoint,
) -> Result<Spool, BackupError> {
    let file = tempfile::tempfile_in(data_dir)?;
    let mut out = BufWriter::new(file);
    let mut entry_count = 0u64;
    let manifest = backup::copy_catalog(catalog, |key, value| {
        entry_count += 1;
        out.write_all(&(key.len() as u32).to_le_bytes())?;
        out.write_all(&(value.len() as u32).to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(value)
    })?;
    drop(held.hold);
    if manifest.epoch != held.epoch || manifest.position != held.position {
        return Err(BackupError::CatalogMoved {
            expected_epoch: held.epoch,
            found_epoch: manifest.epoch,
        });
    }
    let mut file = out.into_inner().map_err(|error| error.into_error())?;
    file.rewind()?;
    Ok(Spool { file, entry_count, manifest })
}

/// Writes the spooled entries into `out`, in the order they were copied.
fn write_spool<W: Write>(spool: &mut Spool, out: &mut BackupWriter<W>) -> io::Result<()> {
    let mut input = BufReader::new(&spool.file);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    for _ in 0..spool.entry_count {
        let mut lengths = [0u8; 8];
        input.read_exact(&mut lengths)?;
        let key_len = u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes")) as usize;
        let value_len = u32::from_le_bytes(lengths[4..].try_into().expect("4 bytes")) as usize;
        key.resize(key_len, 0);
        value.resize(value_len, 0);
        input.read_exact(&mut key)?;
        input.read_exact(&mut value)?;
        out.entry(&key, &value)?;
    }
    Ok(())
}

/// The value of [`DATA_DIR_HEADER`] for a path: its bytes, with every byte outside visible ASCII
/// and every `%` written as `%XX`, so that any path fits in a header and compares exactly.
pub fn data_dir_header_value(path: &Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut value = String::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            value.push(char::from(byte));
        } else {
            let _ = write!(value, "%{byte:02X}");
        }
    }
    value
}

/// How long the backup waits for its client to take a chunk: [`BACKUP_CLIENT_STALL_MS`], or in
/// test builds the value of the armed failpoint `backup.client_stall_ms` (`return(MS)`).
fn client_stall_timeout() -> Duration {
    #[cfg(feature = "testing")]
    fail::fail_point!("backup.client_stall_ms", |value| {
        let stall_ms = value.and_then(|text| text.parse().ok()).unwrap_or(BACKUP_CLIENT_STALL_MS);
        Duration::from_millis(stall_ms)
    });
    Duration::from_millis(BACKUP_CLIENT_STALL_MS)
}

/// The right to stream the server's one backup; frees it when dropped.
struct BackupSlot(Arc<AtomicBool>);

impl BackupSlot {
    /// Takes the slot, or `None` while another backup holds it.
    fn take(running: &Arc<AtomicBool>) -> Option<BackupSlot> {
        let taken = running.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        taken.ok().map(|_| BackupSlot(running.clone()))
    }
}

impl Drop for BackupSlot {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Writes the backup into the channel; runs on a blocking thread.
fn stream_backup(
    mut spool: Spool,
    engine: &EngineHandle,
    log_dir: &Path,
    sink: ChunkSender,
    now_ms: u64,
) {
    let stall_timeout = sink.stall_timeout;
    let Ok(mut out) = BackupWriter::new(sink) else { return };
    let result = write_spool(&mut spool, &mut out).map_err(BackupError::Io).and_then(|()| {
        let end = wal_end(engine)?;
        backup::write_log(log_dir, &spool.manifest, Some(end), &mut out)
    });
    let error = match result {
        Ok(end) => {
            let (checkpoint, epoch) = (spool.manifest.position, spool.manifest.epoch);
            match out.finish(checkpoint, end, epoch, now_ms) {
                Ok((trailer, _)) => {
                    let (entry_count, segment_count, frame_count) =
                        (trailer.entry_count, trailer.segment_count, trailer.frame_count);
                    return tracing::info!(entry_count, segment_count, frame_count, "backup sent");
                }
                // The stream is gone with the writer: only the log learns why.
                Err(error) => return drop(log_stop(&BackupError::Io(error), stall_timeout)),
            }
        }
        Err(error) => error,
    };
    if let Some(message) = log_stop(&error, stall_timeout) {
        // Reaches the client only if it takes data again (a stalled one is not waited for).
        let _ = out.fail(&message);
    }
}

/// Logs why a backup stopped before its end; returns the text of the failure record that ends
/// the stream, or `None` when the client is gone.
fn log_stop(error: &BackupError, stall_timeout: Duration) -> Option<String> {
    let stall_ms = stall_timeout.as_millis() as u64;
    match error {
        BackupError::Io(cause) if cause.kind() == io::ErrorKind::BrokenPipe => {
            tracing::warn!("the backup's client went away before the end");
            None
        }
        BackupError::Io(cause) if cause.kind() == io::ErrorKind::TimedOut => {
            tracing::warn!(
                stall_ms,
                "the backup's client took no data for {stall_ms} ms: the backup was abandoned and \
                 the write-ahead log it held is released (a client must keep reading the stream)"
            );
            Some(format!(
                "the client took no data for {stall_ms} ms, so the server abandoned the backup \
                 (read the stream without pausing)"
            ))
        }
        error => {
            tracing::error!(%error, "taking a backup failed");
            // The client is an operator, but internal details still stay in the log.
            Some("the server could not read its store or log; its log says why".into())
        }
    }
}

/// The position up to which the log is durable, asked of the storage thread from a blocking
/// thread (retried while its channel is full).
fn wal_end(engine: &EngineHandle) -> Result<WalPosition, BackupError> {
    let failed = |reason: String| BackupError::Io(io::Error::other(reason));
    for _ in 0..WAL_END_ATTEMPT_COUNT_MAX {
        let (reply, answer) = oneshot::channel();
        match engine.send(Command::WalEnd { reply }) {
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
/// full (the client reads slower than the store is copied), but not for ever.
///
/// A client that takes no chunk for `stall_timeout` fails the write with `TimedOut`; from then on
/// nothing waits, and what is written is sent only if it fits at once. A failed `write` appends
/// nothing, so the bytes kept always end at a record boundary (a [`BackupWriter`] writes each
/// record with one `write_all`) and a failure record written after a stall still reads cleanly.
struct ChunkSender {
    sender: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
    /// The runtime whose timer bounds the wait (the writer runs on a blocking thread).
    runtime: tokio::runtime::Handle,
    /// How long one chunk may wait for the client.
    stall_timeout: Duration,
    /// Set once the client let a chunk wait for `stall_timeout`.
    stalled: bool,
}

impl ChunkSender {
    fn new(
        sender: mpsc::Sender<Bytes>,
        runtime: tokio::runtime::Handle,
        stall_timeout: Duration,
    ) -> ChunkSender {
        let buffer = Vec::with_capacity(BACKUP_CHUNK_BYTES);
        ChunkSender { sender, buffer, runtime, stall_timeout, stalled: false }
    }

    /// Sends the buffer as one chunk; on an error the buffer is kept.
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
        let stalled = || {
            io::Error::new(io::ErrorKind::TimedOut, "the client stopped taking the backup stream")
        };
        let permit = if self.stalled {
            match self.sender.try_reserve() {
                Ok(permit) => permit,
                Err(TrySendError::Full(())) => return Err(stalled()),
                Err(TrySendError::Closed(())) => return Err(gone()),
            }
        } else {
            // Built inside `block_on`: the timer needs the runtime's context.
            let reserve =
                async { tokio::time::timeout(self.stall_timeout, self.sender.reserve()).await };
            match self.runtime.block_on(reserve) {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(gone()),
                Err(_) => {
                    self.stalled = true;
                    return Err(stalled());
                }
            }
        };
        let next = Vec::with_capacity(BACKUP_CHUNK_BYTES);
        permit.send(Bytes::from(std::mem::replace(&mut self.buffer, next)));
        Ok(())
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Sends what was gathered before taking more, so a failed send appends nothing.
        if !self.stalled && self.buffer.len() >= BACKUP_CHUNK_BYTES {
            self.send_buffer()?;
        }
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backup::{BackupReader, Record};
    use std::time::Instant;

    /// A runtime for the sender's timer, and a sender whose client holds `capacity` chunks at most.
    fn sender(
        capacity: usize,
        stall_timeout: Duration,
    ) -> (tokio::runtime::Runtime, ChunkSender, mpsc::Receiver<Bytes>) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (sender, receiver) = mpsc::channel(capacity);
        let sink = ChunkSender::new(sender, runtime.handle().clone(), stall_timeout);
        (runtime, sink, receiver)
    }

    /// A value that fills a chunk by itself, so every entry after the first sends one.
    fn big_value(byte: u8) -> Vec<u8> {
        vec![byte; BACKUP_CHUNK_BYTES]
    }

    fn received(receiver: &mut mpsc::Receiver<Bytes>) -> Vec<u8> {
        let mut bytes = Vec::new();
        while let Ok(chunk) = receiver.try_recv() {
            bytes.extend_from_slice(&chunk);
        }
        bytes
    }

    #[test]
    fn a_client_that_stops_reading_fails_the_backup_after_the_stall_timeout() {
        let stall_timeout = Duration::from_millis(200);
        let (_runtime, sink, mut receiver) = sender(1, stall_timeout);
        let mut out = BackupWriter::new(sink).unwrap();
        let started = Instant::now();
        let mut error = None;
        for index in 0..4u8 {
            if let Err(failed) = out.entry(&[index], &big_value(index)) {
                error = Some(failed);
                break;
            }
        }
        let error = error.expect("a client that takes nothing must fail the backup");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        let elapsed = started.elapsed();
        assert!(elapsed >= stall_timeout, "gave up after {elapsed:?}, before the stall timeout");
        // Generous: the point is that the wait ends, not how promptly on a busy machine.
        assert!(elapsed < Duration::from_secs(60), "waited {elapsed:?} for a stalled client");

        // The client reads again: what the stalled sender kept goes out, then the failure record.
        let mut out = out;
        let message = "the client took no data";
        assert!(out.entry(b"late", b"v").is_ok(), "a stalled sender only gathers");
        let bytes_then = {
            // The client reads again: the records kept and the failure record go out whole.
            let first = received(&mut receiver);
            let sink = out.fail(message).expect("room for the kept records once the client reads");
            drop(sink);
            let mut bytes = first;
            bytes.extend(received(&mut receiver));
            bytes
        };
        let mut reader = BackupReader::new(bytes_then.as_slice()).unwrap();
        let mut keys = Vec::new();
        let failure = loop {
            match reader.next_record() {
                Ok(Some(Record::Entry { key, .. })) => keys.push(key),
                Ok(other) => panic!("unexpected record {other:?}"),
                Err(error) => break error,
            }
        };
        assert!(matches!(failure, BackupError::WriterFailed { .. }), "{failure}");
        assert!(failure.to_string().contains(message), "{failure}");
        assert_eq!(keys, vec![vec![0], vec![1], b"late".to_vec()], "records kept in order, whole");
    }

    /// A `ChunkSender` shared between a `BackupWriter` and the test, so that the test can change
    /// the stall timeout once the writer has noticed a stall.
    #[derive(Clone)]
    struct SharedSink(Arc<std::sync::Mutex<ChunkSender>>);

    impl SharedSink {
        fn set_stall_timeout(&self, stall_timeout: Duration) {
            self.0.lock().unwrap().stall_timeout = stall_timeout;
        }
    }

    impl Write for SharedSink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().flush()
        }
    }

    #[test]
    fn a_stalled_client_that_never_reads_again_gets_no_failure_record_and_no_wait() {
        let (_runtime, sink, _receiver) = sender(1, Duration::from_millis(100));
        let sink = SharedSink(Arc::new(std::sync::Mutex::new(sink)));
        let mut out = BackupWriter::new(sink.clone()).unwrap();
        let mut index = 0u8;
        while out.entry(&[index], &big_value(index)).is_ok() {
            index += 1;
            assert!(index < 10, "the stall was never noticed");
        }
        // From now on a wait for the client would last an hour: the failure record, which does not
        // fit the full channel, must fail at once rather than wait (the bound is generous).
        sink.set_stall_timeout(Duration::from_secs(3600));
        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            done.send(out.fail("abandoned").err().map(|error| error.kind()))
        });
        let kind = outcome
            .recv_timeout(Duration::from_secs(30))
            .expect("a stalled sender waited for its client again");
        assert_eq!(kind, Some(io::ErrorKind::TimedOut), "the channel is still full");
    }

    #[test]
    fn a_client_that_went_away_is_a_broken_pipe_and_a_reading_one_gets_everything() {
        let (_runtime, sink, receiver) = sender(1, Duration::from_secs(30));
        drop(receiver);
        let mut out = BackupWriter::new(sink).unwrap();
        let error = (0..4u8)
            .find_map(|index| out.entry(&[index], &big_value(index)).err())
            .expect("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe, "{error}");

        let (runtime, sink, mut receiver) = sender(1, Duration::from_millis(100));
        let reader = runtime.spawn(async move {
            let mut bytes = Vec::new();
            while let Some(chunk) = receiver.recv().await {
                bytes.extend_from_slice(&chunk);
                // Slower than the writer, but never for the whole stall timeout.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            bytes
        });
        let mut out = BackupWriter::new(sink).unwrap();
        for index in 0..20u8 {
            out.entry(&[index], &big_value(index)).unwrap();
        }
        drop(out.finish(WalPosition::START, WalPosition::START, 1, 7).unwrap());
        let bytes = runtime.block_on(reader).unwrap();
        let trailer = BackupReader::new(bytes.as_slice()).unwrap().verify_to_end().unwrap();
        assert_eq!(trailer.entry_count, 20);
    }

    #[test]
    fn one_backup_at_a_time() {
        let running = Arc::new(AtomicBool::new(false));
        let first = BackupSlot::take(&running).expect("free at first");
        assert!(BackupSlot::take(&running).is_none(), "a second backup must be refused");
        drop(first);
        assert!(BackupSlot::take(&running).is_some(), "free again once the first ended");
    }

    #[test]
    fn the_data_dir_header_encodes_any_path_exactly() {
        use std::os::unix::ffi::OsStrExt;
        assert_eq!(data_dir_header_value(Path::new("/var/lib/outboxd")), "/var/lib/outboxd");
        let odd = std::ffi::OsStr::from_bytes(b"/data/a b%\n\xff");
        assert_eq!(data_dir_header_value(Path::new(odd)), "/data/a%20b%25%0A%FF");
        assert!(HeaderValue::from_str(&data_dir_header_value(Path::new(odd))).is_ok());
    }
}
