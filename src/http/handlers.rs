//! Request handlers: decode the request, ask the storage thread, encode the reply. Nothing else.

use super::error::ApiError;
use super::json;
use super::reads;
use super::types::{self, RequestLimits};
use super::{json_response, HttpResponse};
use crate::engine::{Command, CommitError, EngineHandle, Gauges, Reply, TokenResult, Waiters};
use crate::limits::BODY_IDLE_TIMEOUT_MS;
use crate::queue::{EnqueueError, FailOutcome, IdempotencyKey, MessageId, QueueId};
use crate::store::catalog::Catalog;
use crate::store::codec::decode_content;
use crate::store::wal::SegmentFiles;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// What every handler may use.
pub struct AppState {
    pub engine: EngineHandle,
    /// The catalog, for reads of what the storage thread does not hold.
    pub catalog: Arc<Catalog>,
    /// The log's segment files, for reads of message contents.
    pub segments: Arc<SegmentFiles>,
    /// The log directory (for error messages).
    pub log_dir: std::path::PathBuf,
    /// Queue names by id (queues are never renamed or removed, so this only grows).
    pub queue_names: Arc<parking_lot::RwLock<Vec<String>>>,
    /// How many history events are kept per message.
    pub history_keep_count: u32,
    pub waiters: Arc<Waiters>,
    pub events: Arc<crate::events::EventLog>,
    pub limits: RequestLimits,
    pub clock: fn() -> u64,
    /// Turns true when the server begins to shut down; long-lived streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The Prometheus recorder (`None` if another was installed first in this process).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Figures the storage thread keeps current.
    pub gauges: Arc<Gauges>,
    /// The data directory this server owns.
    pub data_dir: std::path::PathBuf,
    /// The API tokens; when there are none, every request is allowed.
    pub tokens: crate::auth::Tokens,
    /// True while an online backup is streamed: the server takes one at a time.
    pub backup_running: Arc<std::sync::atomic::AtomicBool>,
    /// Per-queue enqueue, delivery and failure counts of the last minutes (`GET /v1/rates`).
    pub rates: Arc<crate::rates::Rates>,
    /// Whether `/` and `/ui/…` serve the outbox page (off with `--no-ui`).
    pub ui_enabled: bool,
}

impl AppState {
    /// The name of a queue id (empty for an id the server never handed out).
    pub fn queue_name(&self, queue_id: QueueId) -> String {
        self.queue_names.read().get(queue_id.0 as usize).cloned().unwrap_or_default()
    }
}

/// The reply sender of a command whose answer is a `T`.
pub type ReplyOf<T> = Reply<T>;

/// Sends a command to the storage thread and waits for its answer.
pub async fn call<T>(
    engine: &EngineHandle,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, ApiError> {
    Ok(try_call(engine, command).await?)
}

/// Like [`call`], with the storage thread's error as it is (a caller retries on `Stale`).
pub async fn try_call<T>(
    engine: &EngineHandle,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, CommitError> {
    let (reply, answer) = oneshot::channel();
    engine.send(command(reply))?;
    answer.await.map_err(|_| CommitError::ShuttingDown)?
}

/// Reads the whole body, refusing (413) from `Content-Length` alone when it is over the limit, and
/// stopping as soon as a body without one grows past it.
pub async fn read_body(request: Request<Incoming>, bytes_max: u64) -> Result<Bytes, ApiError> {
    let consumed = request.extensions().get::<super::BodyConsumed>().cloned();
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > bytes_max) {
        return Err(ApiError::payload_too_large(bytes_max));
    }
    let limit = usize::try_from(bytes_max).unwrap_or(usize::MAX);
    let capacity = declared.map_or(0, |length| length as usize).min(limit);
    let mut body = Limited::new(request.into_body(), limit);
    let mut collected = Vec::with_capacity(capacity);
    let idle = Duration::from_millis(BODY_IDLE_TIMEOUT_MS);
    // Each piece of the body must arrive within the idle timeout, so a client that sends its
    // headers and then stalls cannot hold a connection (and its slot) for ever.
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ApiError::request_timeout(BODY_IDLE_TIMEOUT_MS)),
            Ok(None) => break,
            Ok(Some(frame)) => frame,
        };
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    collected.extend_from_slice(data);
                }
            }
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::payload_too_large(bytes_max));
            }
            Err(error) => {
                let message = format!("the request body could not be read: {error}");
                return Err(ApiError::invalid_json(message));
            }
        }
    }
    if let Some(consumed) = consumed {
        consumed.set();
    }
    Ok(Bytes::from(collected))
}

#[derive(Serialize)]
struct EnqueueReply {
    ids: Vec<String>,
    duplicate: bool,
}

pub async fn enqueue(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let key = match request.headers().get("idempotency-key") {
        Some(value) if types::valid_idempotency_key(value.as_bytes()) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        Some(_) => return Err(ApiError::invalid_idempotency_key()),
        None => None,
    };
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let messages = types::parse_enqueue(&bytes, &state.limits, (state.clock)())?;
    let message_count = messages.len();
    let idempotency =
        key.clone().map(|key| IdempotencyKey { key, request_hash: types::request_hash(&bytes) });
    let queue_name = queue.to_string();
    let outcome = call(&state.engine, |reply| Command::Enqueue {
        queue: queue_name,
        messages,
        idempotency,
        reply,
    })
    .await?;
    match outcome {
        Ok(outcome) => {
            let ids = outcome.ids().map(|id| id.to_string()).collect();
            let status = if outcome.duplicate { StatusCode::OK } else { StatusCode::CREATED };
            let response =
                json_response(status, &EnqueueReply { ids, duplicate: outcome.duplicate });
            Ok(super::with_batch_count(response, message_count))
        }
        Err(EnqueueError::IdempotencyConflict) => {
            Err(ApiError::idempotency_conflict(key.as_deref().unwrap_or_default()))
        }
    }
}

pub async fn lease(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let params = types::parse_lease(&bytes)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(params.wait_ms);
    let notify = state.waiters.notifier(queue);
    let mut shutdown = state.shutdown.clone();
    let grants = loop {
        // Registered before asking, so that a message made ready in between still wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let queue_name = queue.to_string();
        let grants = call(&state.engine, |reply| Command::Lease {
            queue: queue_name,
            count_max: params.count_max,
            lease_ms: params.lease_ms,
            reply,
        })
        .await?;
        if !grants.is_empty() || tokio::time::Instant::now() >= deadline {
            break grants;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            // A shutting-down server answers waiting consumers at once (with nothing) rather than
            // holding the shutdown for their whole wait.
            _ = shutdown.changed() => break grants,
        }
    };
    let out = lease_reply(state, &grants);
    let granted_count = out.1;
    Ok(super::with_batch_count(super::raw_json_response(StatusCode::OK, out.0), granted_count))
}

/// Most bytes between two contents that are read with one `pread` (contents of one batch sit next
/// to each other in the log, a length prefix apart).
const READ_GAP_BYTES_MAX: u32 = 256;

/// The body of a lease reply, and how many messages it holds. Contents are read from the log,
/// one positioned read per run of neighbouring contents.
fn lease_reply(state: &AppState, grants: &[crate::queue::Grant]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(64 + grants.len() * 320);
    out.extend_from_slice(b"{\"messages\":[");
    let mut granted_count = 0;
    let mut index = 0;
    while index < grants.len() {
        let run_end = run_of_neighbours(grants, index);
        let contents = read_run(state, &grants[index..run_end]);
        for (position, grant) in grants[index..run_end].iter().enumerate() {
            // A message whose content cannot be read is left out of the reply (and logged); its
            // lease then expires and it retries until it goes dead, where a person sees it. One
            // damaged record must not stop the whole queue.
            let content = match contents.get(position).map(decode_content) {
                Some(Ok(content)) => content,
                Some(Err(error)) => {
                    tracing::error!(%error, id = %grant.id, "a leased message's content is damaged");
                    continue;
                }
                None => continue,
            };
            if granted_count > 0 {
                out.push(b',');
            }
            granted_count += 1;
            json::write_grant(&mut out, grant.id, grant.token, &grant.meta, &content);
        }
        index = run_end;
    }
    out.extend_from_slice(b"]}");
    (out, granted_count)
}

/// The end of the run of grants from `start` whose contents lie close together in one segment.
fn run_of_neighbours(grants: &[crate::queue::Grant], start: usize) -> usize {
    use crate::queue::ContentLocation::Log;
    let mut end = start + 1;
    while end < grants.len() {
        match (grants[end - 1].meta.content, grants[end].meta.content) {
            (
                Log { segment: a, offset: a_offset, len: a_len },
                Log { segment: b, offset: b_offset, .. },
            ) if a == b
                && b_offset >= a_offset + a_len
                && b_offset - (a_offset + a_len) <= READ_GAP_BYTES_MAX =>
            {
                end += 1
            }
            _ => break,
        }
    }
    end
}

/// The contents of a run of grants: one buffer read at once and where each content lies in it, or
/// each content read alone (`None` for one that could not be read).
enum RunContents {
    Span { bytes: Vec<u8>, ranges: Vec<Option<std::ops::Range<usize>>> },
    Each(Vec<Option<Vec<u8>>>),
}

impl RunContents {
    /// The content of the run's `index`th grant, borrowed from what was read.
    fn get(&self, index: usize) -> Option<&[u8]> {
        match self {
            RunContents::Span { bytes, ranges } => ranges[index].clone().map(|range| &bytes[range]),
            RunContents::Each(contents) => contents[index].as_deref(),
        }
    }
}

/// Reads the contents of a run of grants: one read for a run in one segment, else one each.
fn read_run(state: &AppState, run: &[crate::queue::Grant]) -> RunContents {
    use crate::queue::ContentLocation::Log;
    let one_by_one = |run: &[crate::queue::Grant]| {
        RunContents::Each(
            run.iter()
                .map(|grant| match reads::content(state, grant.id, grant.meta.content) {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        tracing::error!(%error, id = %grant.id, "a leased message's content is unreadable");
                        None
                    }
                })
                .collect(),
        )
    };
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return RunContents::Each(Vec::new());
    };
    let (Log { segment, offset: start, .. }, Log { offset: last_offset, len: last_len, .. }) =
        (first.meta.content, last.meta.content)
    else {
        return one_by_one(run);
    };
    if run.len() == 1 {
        return one_by_one(run);
    }
    match state.segments.read(segment, start, last_offset + last_len - start) {
        Ok(bytes) => {
            let ranges = run
                .iter()
                .map(|grant| match grant.meta.content {
                    Log { offset, len, .. } => {
                        let from = (offset - start) as usize;
                        Some(from..from + len as usize)
                    }
                    _ => None,
                })
                .collect();
            RunContents::Span { bytes, ranges }
        }
        Err(_) => one_by_one(run),
    }
}

#[derive(Serialize)]
struct TokenReply {
    results: Vec<TokenItem>,
}

#[derive(Serialize)]
struct TokenItem {
    lease: String,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<u64>,
}

fn token_item<T>(
    lease: String,
    result: TokenResult<T>,
    done: impl Fn(T) -> TokenItem,
) -> TokenItem {
    let refused = |result| TokenItem {
        lease: String::new(),
        result,
        next_attempt_at: None,
        lease_expires_at: None,
    };
    let item = match result {
        TokenResult::Done(value) => done(value),
        TokenResult::LeaseExpired => refused("lease_expired"),
        TokenResult::Unknown | TokenResult::InCatalog { .. } => refused("unknown"),
    };
    TokenItem { lease, ..item }
}

fn plain(result: &'static str) -> TokenItem {
    TokenItem { lease: String::new(), result, next_attempt_at: None, lease_expires_at: None }
}

pub async fn ack(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let (leases, tokens) = types::parse_ack(&bytes)?;
    let queue = queue.to_string();
    let results = call(&state.engine, |reply| Command::Ack { queue, tokens, reply }).await?;
    let results = resolve_tokens(state, results).await?;
    let results = leases
        .into_iter()
        .zip(results)
        .map(|(lease, result)| token_item(lease, result, |()| plain("acked")))
        .collect::<Vec<_>>();
    let item_count = results.len();
    let response = json_response(StatusCode::OK, &TokenReply { results });
    Ok(super::with_batch_count(response, item_count))
}

pub async fn nack(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let (leases, items) = types::parse_nack(&bytes)?;
    let queue = queue.to_string();
    let results = call(&state.engine, |reply| Command::Nack { queue, items, reply }).await?;
    let results = resolve_tokens(state, results).await?;
    let results = leases
        .into_iter()
        .zip(results)
        .map(|(lease, result)| {
            token_item(lease, result, |outcome| match outcome {
                FailOutcome::Retrying { next_attempt_at_ms } => {
                    TokenItem { next_attempt_at: Some(next_attempt_at_ms), ..plain("retrying") }
                }
                FailOutcome::Dead => plain("dead"),
            })
        })
        .collect::<Vec<_>>();
    let item_count = results.len();
    let response = json_response(StatusCode::OK, &TokenReply { results });
    Ok(super::with_batch_count(response, item_count))
}

pub async fn extend(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let (leases, items) = types::parse_extend(&bytes)?;
    let queue = queue.to_string();
    let results = call(&state.engine, |reply| Command::Extend { queue, items, reply }).await?;
    let results = resolve_tokens(state, results).await?;
    let results = leases
        .into_iter()
        .zip(results)
        .map(|(lease, result)| {
            token_item(lease, result, |expires_at_ms| TokenItem {
                lease_expires_at: Some(expires_at_ms),
                ..plain("extended")
            })
        })
        .collect::<Vec<_>>();
    let item_count = results.len();
    let response = json_response(StatusCode::OK, &TokenReply { results });
    Ok(super::with_batch_count(response, item_count))
}

pub async fn get_message(state: &AppState, id_text: &str) -> Result<HttpResponse, ApiError> {
    let id = MessageId::parse(id_text).ok_or_else(|| ApiError::invalid_id(id_text))?;
    let record =
        reads::record(state, id).await?.ok_or_else(|| ApiError::message_not_found(id_text))?;
    let content = reads::content(state, id, record.meta.content)
        .map_err(reads::internal("reading the message's content"))?
        .ok_or_else(|| ApiError::message_not_found(id_text))?;
    let content = decode_content(&content).map_err(|error| {
        tracing::error!(%error, %id, "a message's content is damaged");
        ApiError::internal("reading the message's content")
    })?;
    let history = reads::history(state, id, &record.meta, &record.pending_history);
    let body = json::message_view(id, &record.queue, &record.meta, &history, &content);
    Ok(super::raw_json_response(StatusCode::OK, body))
}

/// Turns token results into the client's: a token whose message only the catalog holds is
/// `lease_expired` if the catalog has it in the token's queue, else `unknown`.
pub async fn resolve_tokens<T: Send + 'static>(
    state: &AppState,
    results: Vec<TokenResult<T>>,
) -> Result<Vec<TokenResult<T>>, ApiError> {
    if !results.iter().any(|result| matches!(result, TokenResult::InCatalog { .. })) {
        return Ok(results);
    }
    let catalog = state.catalog.clone();
    reads::blocking("resolving lease tokens", move || {
        results
            .into_iter()
            .map(|result| match result {
                TokenResult::InCatalog { id, queue_id } => Ok(match catalog.meta(id)? {
                    Some(meta) if meta.queue_id == queue_id => TokenResult::LeaseExpired,
                    _ => TokenResult::Unknown,
                }),
                other => Ok(other),
            })
            .collect()
    })
    .await
}

/// `GET /metrics`: sets the state gauges from the broker's counters, then renders everything in
/// the Prometheus text format.
pub async fn metrics(state: &AppState) -> Result<HttpResponse, ApiError> {
    use crate::metrics as m;
    let Some(handle) = &state.metrics else {
        return Err(ApiError::internal("rendering metrics (no recorder)"));
    };
    let queues = call(&state.engine, |reply| Command::Queues { reply }).await?;
    let now_ms = (state.clock)();
    for stats in &queues {
        for message_state in crate::queue::ALL_STATES {
            let count = stats.counts[message_state.index()] as f64;
            let labels =
                [("queue", stats.name.clone()), ("state", message_state.name().to_string())];
            metrics::gauge!(m::QUEUE_MESSAGES, &labels).set(count);
        }
        let age_ms = stats.oldest_ready_enqueued_at_ms.map_or(0, |at| now_ms.saturating_sub(at));
        metrics::gauge!(m::QUEUE_OLDEST_READY_AGE_SECONDS, "queue" => stats.name.clone())
            .set(age_ms as f64 / 1000.0);
        metrics::gauge!(m::QUEUE_PAUSED, "queue" => stats.name.clone())
            .set(f64::from(u8::from(stats.paused)));
    }
    let gauges = &state.gauges;
    let log_bytes = gauges.log_bytes.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::STORE_BYTES, "part" => "log").set(log_bytes as f64);
    metrics::gauge!(m::STORE_BYTES, "part" => "catalog").set(state.catalog.disk_bytes() as f64);
    let pending = gauges.settled_count.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::PENDING_RECORDS).set(pending as f64);
    let timers = gauges.timer_count.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::TIMERS).set(timers as f64);
    let replay_bytes = gauges.replay_bytes.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::REPLAY_BYTES).set(replay_bytes as f64);
    let cold = gauges.cold_count.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::READY_IN_CATALOG).set(cold as f64);
    metrics::gauge!(m::STORAGE_FAILED).set(f64::from(u8::from(state.engine.failure().is_some())));
    let mut response = super::raw_json_response(StatusCode::OK, handle.render().into_bytes());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

pub fn health(state: &AppState) -> HttpResponse {
    match state.engine.failure() {
        None => json_response(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Some(_) => {
            let error = ApiError::storage_failed();
            let body = serde_json::json!({
                "status": "storage_failed",
                "error": {"code": error.code, "message": error.message, "hint": error.hint},
            });
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// Arms a fault-injection point (test builds only): the body is a `fail` crate action.
///
/// The name `power_cut` is special: the process dies at once as in a power loss, with every log
/// byte written since the last completed fdatasync lost (`store::wal::file::power_cut`); a body
/// `torn=N` keeps N bytes of that unsynced tail, as a partly written page would.
#[cfg(feature = "testing")]
pub async fn set_failpoint(
    state: &AppState,
    name: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let action = String::from_utf8_lossy(&bytes).trim().to_string();
    if name == "power_cut" {
        let torn_bytes = action.strip_prefix("torn=").and_then(|bytes| bytes.parse().ok());
        crate::store::wal::file::power_cut(torn_bytes);
    }
    fail::cfg(name, &action).map_err(ApiError::invalid_request)?;
    let body = serde_json::json!({"name": name, "action": action});
    Ok(json_response(StatusCode::OK, &body))
}
