//! Request handlers: decode the request, ask the storage thread, encode the reply. Nothing else.

use super::error::ApiError;
use super::json;
use super::types::{self, RequestLimits};
use super::{json_response, HttpResponse};
use crate::limits::BODY_IDLE_TIMEOUT_MS;
use crate::queue::{EnqueueError, FailOutcome, IdempotencyKey, MessageId};
use crate::store::writer::{Command, Reply, TokenResult, Waiters, WriterHandle};
use crate::store::Store;
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
    pub writer: WriterHandle,
    pub store: Arc<Store>,
    pub waiters: Arc<Waiters>,
    pub events: Arc<crate::events::EventLog>,
    pub limits: RequestLimits,
    pub clock: fn() -> u64,
    /// Turns true when the server begins to shut down; long-lived streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The Prometheus recorder (`None` if another was installed first in this process).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Bytes of WAL on disk, kept current by the storage thread.
    pub wal_bytes: Arc<std::sync::atomic::AtomicU64>,
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

/// The reply sender of a command whose answer is a `T`.
pub type ReplyOf<T> = Reply<T>;

/// Sends a command to the storage thread and waits for its answer.
pub async fn call<T>(
    writer: &WriterHandle,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    writer.send(command(reply))?;
    let result = answer.await.map_err(|_| ApiError::shutting_down())?;
    Ok(result?)
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
    let outcome = call(&state.writer, |reply| Command::Enqueue {
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
        let grants = call(&state.writer, |reply| Command::Lease {
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
    let mut out = Vec::with_capacity(64 + grants.len() * 256);
    out.extend_from_slice(b"{\"messages\":[");
    let mut granted_count = 0;
    for grant in &grants {
        // A message whose content cannot be read is left out of the reply (and logged); its lease
        // then expires and it retries until it goes dead, where a person sees it. One damaged record
        // must not stop the whole queue.
        let content = match state.store.content(grant.id) {
            Ok(Some(content)) => content,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(%error, id = %grant.id, "a leased message's content is unreadable");
                continue;
            }
        };
        if granted_count > 0 {
            out.push(b',');
        }
        granted_count += 1;
        json::write_grant(&mut out, grant.id, &grant.token.to_string(), &grant.meta, &content);
    }
    out.extend_from_slice(b"]}");
    Ok(super::with_batch_count(super::raw_json_response(StatusCode::OK, out), granted_count))
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
        TokenResult::Unknown => refused("unknown"),
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
    let results = call(&state.writer, |reply| Command::Ack { queue, tokens, reply }).await?;
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
    let results = call(&state.writer, |reply| Command::Nack { queue, items, reply }).await?;
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
    let results = call(&state.writer, |reply| Command::Extend { queue, items, reply }).await?;
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
    let store = &state.store;
    let read = || -> Result<Option<HttpResponse>, crate::store::StoreError> {
        let Some(meta) = store.meta(id)? else { return Ok(None) };
        let Some(content) = store.content(id)? else { return Ok(None) };
        let history = store.history(id)?.unwrap_or_default();
        let queue = store.queue_name(meta.queue_id)?.unwrap_or_default();
        let body = json::message_view(id, &queue, &meta, &history, &content);
        Ok(Some(super::raw_json_response(StatusCode::OK, body)))
    };
    match read() {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(ApiError::message_not_found(id_text)),
        Err(error) => {
            tracing::error!(%error, %id, "reading a message failed");
            Err(ApiError::internal("reading the message"))
        }
    }
}

/// `GET /metrics`: sets the state gauges from the broker's counters, then renders everything in
/// the Prometheus text format.
pub async fn metrics(state: &AppState) -> Result<HttpResponse, ApiError> {
    use crate::metrics as m;
    let Some(handle) = &state.metrics else {
        return Err(ApiError::internal("rendering metrics (no recorder)"));
    };
    let queues = call(&state.writer, |reply| Command::Queues { reply }).await?;
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
    let wal_bytes = state.wal_bytes.load(std::sync::atomic::Ordering::Relaxed);
    metrics::gauge!(m::STORE_BYTES, "part" => "wal").set(wal_bytes as f64);
    metrics::gauge!(m::STORE_BYTES, "part" => "sled").set(state.store.disk_bytes() as f64);
    metrics::gauge!(m::STORAGE_FAILED).set(f64::from(u8::from(state.writer.failure().is_some())));
    let mut response = super::raw_json_response(StatusCode::OK, handle.render().into_bytes());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

pub fn health(state: &AppState) -> HttpResponse {
    match state.writer.failure() {
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
#[cfg(feature = "testing")]
pub async fn set_failpoint(
    state: &AppState,
    name: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let action = String::from_utf8_lossy(&bytes).trim().to_string();
    fail::cfg(name, &action).map_err(ApiError::invalid_request)?;
    let body = serde_json::json!({"name": name, "action": action});
    Ok(json_response(StatusCode::OK, &body))
}
