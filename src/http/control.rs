//! A person's endpoints: edit, delete, retry and reschedule a message; purge and redrive a
//! queue; pause and resume it; queue settings. Listings are in `listing.rs`.

use super::error::ApiError;
use super::handlers::{call, read_body, try_call, AppState};
use super::reads;
use super::types::{self, parse};
use super::{json_response, HttpResponse};
use crate::auth::QueuePattern;
use crate::engine::{Command, CommitError, ControlResult, IncomingEdit, Reply, SettledListing};
use crate::limits::{
    ATTEMPT_COUNT_MAX, CONTROL_CHUNK_COUNT_MAX, DELAY_MS_MAX, LEASE_MS_MAX, LEASE_MS_MIN,
    RETENTION_MS_MAX,
};
use crate::queue::{
    BodyKind, ControlError, EditFields, HistoryEvent, MessageId, MessageMeta, MessageState,
    QueueSettings, QueueStats, Stored, ALL_STATES,
};
use crate::store::codec::{decode_content, encode_content, ContentRef};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Decoded `name=value` pairs of a query string (percent-decoding, `+` as space).
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((percent_decode(name)?, percent_decode(value)?));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<String, ApiError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex =
                    bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
                let byte =
                    hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()).ok_or_else(|| {
                        ApiError::invalid_request(format!("query {text:?}: bad percent-encoding"))
                    })?;
                out.push(byte);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::invalid_request(format!("query {text:?}: not UTF-8 once decoded")))
}

pub(super) fn parse_state(text: &str) -> Result<MessageState, ApiError> {
    ALL_STATES.into_iter().find(|state| state.name() == text).ok_or_else(|| {
        ApiError::invalid_request(format!(
            "query state: {text:?} is not a state (scheduled, ready, leased, retrying, dead, delivered)"
        ))
    })
}

fn parse_bool(name: &str, text: &str) -> Result<bool, ApiError> {
    match text {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid_request(format!("query {name}: {text:?} is not true or false"))),
    }
}

/// Turns a refused action into its API error.
fn control_error(error: ControlError, id: &str) -> ApiError {
    match error {
        ControlError::NotFound => ApiError::message_not_found(id),
        ControlError::Leased => ApiError::message_leased(id),
        ControlError::WrongState(state) => ApiError::invalid_state(id, state.name()),
    }
}

/// The queue view shared by `GET /v1/queues` and `GET /v1/queues/{queue}`.
pub fn queue_view(stats: &QueueStats, now_ms: u64) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = ALL_STATES
        .iter()
        .map(|state| (state.name().to_string(), stats.counts[state.index()].into()))
        .collect();
    let settings = &stats.settings;
    serde_json::json!({
        "name": stats.name,
        "paused": stats.paused,
        "counts": counts,
        "oldest_ready_age_ms": stats.oldest_ready_enqueued_at_ms.map(|at| now_ms.saturating_sub(at)),
        "settings": {
            "max_attempts": settings.max_attempts,
            "lease_ms": settings.lease_ms,
            "backoff": {
                "initial_ms": settings.backoff_initial_ms,
                "multiplier": settings.backoff_multiplier,
                "max_ms": settings.backoff_max_ms,
                "jitter": settings.backoff_jitter,
            },
            "retention_ms": settings.retention_ms,
            "dead_retention_ms": settings.dead_retention_ms,
        },
    })
}

/// `GET /v1/queues`; with `visible` (the caller's token pattern), only the queues it matches.
pub async fn list_queues(
    state: &AppState,
    visible: Option<&QueuePattern>,
) -> Result<HttpResponse, ApiError> {
    let all = call(&state.engine, |reply| Command::Queues { reply }).await?;
    let now_ms = (state.clock)();
    let queues: Vec<serde_json::Value> = all
        .iter()
        .filter(|stats| visible.is_none_or(|pattern| pattern.matches(&stats.name)))
        .map(|stats| queue_view(stats, now_ms))
        .collect();
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "queues": queues })))
}

async fn queue_reply(state: &AppState, queue: &str) -> Result<HttpResponse, ApiError> {
    let name = queue.to_string();
    let stats = call(&state.engine, |reply| Command::QueueStats { queue: name, reply })
        .await?
        .ok_or_else(|| ApiError::queue_not_found(queue))?;
    Ok(json_response(StatusCode::OK, &queue_view(&stats, (state.clock)())))
}

pub async fn get_queue(state: &AppState, queue: &str) -> Result<HttpResponse, ApiError> {
    queue_reply(state, queue).await
}

pub async fn pause(state: &AppState, queue: &str, paused: bool) -> Result<HttpResponse, ApiError> {
    let name = queue.to_string();
    let found = call(&state.engine, |reply| Command::Pause { queue: name, paused, reply }).await?;
    if !found {
        return Err(ApiError::queue_not_found(queue));
    }
    queue_reply(state, queue).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsInput<'a> {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default, borrow)]
    backoff: Option<&'a RawValue>,
    #[serde(default)]
    retention_ms: Option<u64>,
    #[serde(default)]
    dead_retention_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffInput {
    #[serde(default)]
    initial_ms: Option<u64>,
    #[serde(default)]
    multiplier: Option<f64>,
    #[serde(default)]
    max_ms: Option<u64>,
    #[serde(default)]
    jitter: Option<f64>,
}

fn check<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    low: T,
    high: T,
) -> Result<Option<T>, ApiError> {
    match value {
        Some(value) if !(value >= low && value <= high) => Err(ApiError::invalid_request(format!(
            "field {field}: must be {low} to {high}, got {value}"
        ))),
        other => Ok(other),
    }
}

fn parse_settings(bytes: &[u8]) -> Result<QueueSettings, ApiError> {
    let input: SettingsInput = parse(bytes)?;
    let backoff = match input.backoff {
        Some(raw) if raw.get() != "null" => types::parse_item(raw, "backoff")?,
        _ => BackoffInput { initial_ms: None, multiplier: None, max_ms: None, jitter: None },
    };
    let settings = QueueSettings {
        max_attempts: check("max_attempts", input.max_attempts, 1, ATTEMPT_COUNT_MAX)?,
        lease_ms: check("lease_ms", input.lease_ms, LEASE_MS_MIN, LEASE_MS_MAX)?,
        backoff_initial_ms: check("backoff.initial_ms", backoff.initial_ms, 0, DELAY_MS_MAX)?,
        backoff_multiplier: check("backoff.multiplier", backoff.multiplier, 1.0, 100.0)?,
        backoff_max_ms: check("backoff.max_ms", backoff.max_ms, 0, DELAY_MS_MAX)?,
        backoff_jitter: check("backoff.jitter", backoff.jitter, 0.0, 0.99)?,
        retention_ms: check("retention_ms", input.retention_ms, 0, RETENTION_MS_MAX)?,
        dead_retention_ms: check(
            "dead_retention_ms",
            input.dead_retention_ms,
            0,
            RETENTION_MS_MAX,
        )?,
    };
    if let (Some(initial_ms), Some(max_ms)) = (settings.backoff_initial_ms, settings.backoff_max_ms)
    {
        if initial_ms > max_ms {
            let message = "field backoff.initial_ms: must not exceed backoff.max_ms".to_string();
            return Err(ApiError::invalid_request(message));
        }
    }
    Ok(settings)
}

pub async fn put_queue(
    state: &AppState,
    queue: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let settings = parse_settings(&bytes)?;
    let name = queue.to_string();
    call(&state.engine, |reply| Command::Configure { queue: name, settings, reply }).await?;
    queue_reply(state, queue).await
}

/// Up to `limit` dead or delivered messages of a queue, the durable checkpoint epoch the catalog
/// part was current at, and the history events the catalog may not hold yet (by id).
pub(super) async fn terminal_chunk(
    state: &AppState,
    queue: &str,
    message_state: MessageState,
    after: Option<MessageId>,
    descending: bool,
    limit: usize,
) -> Result<TerminalChunk, ApiError> {
    let name = queue.to_string();
    let listing = call(&state.engine, |reply| Command::ListSettled {
        queue: name,
        state: message_state,
        reply,
    })
    .await?
    .ok_or_else(|| ApiError::queue_not_found(queue))?;
    let catalog = state.catalog.clone();
    let SettledListing { queue_id, view, epoch, mut pending } = listing;
    let records = reads::blocking("listing messages", move || {
        catalog.list_terminal(queue_id, message_state, after, descending, limit, &view)
    })
    .await?;
    pending.sort_unstable_by_key(|(id, _)| *id);
    Ok((epoch, records, pending))
}

/// Dead or delivered messages read for a listing: the epoch, the records, pending history.
pub(super) type TerminalChunk =
    (u64, Vec<(MessageId, MessageMeta)>, Vec<(MessageId, Vec<HistoryEvent>)>);

/// How often an action reads a message again when the catalog moved on between its read and
/// the action.
const STALE_RETRY_COUNT_MAX: usize = 5;

/// Runs a person's action on one message. When the storage thread does not hold the message,
/// the action carries the record read from the catalog; when a checkpoint lands in between, the
/// record is read again.
async fn act<T>(
    state: &AppState,
    id: MessageId,
    id_text: &str,
    command: impl Fn(Option<Stored>, Reply<ControlResult<T>>) -> Command,
) -> Result<T, ApiError> {
    for _ in 0..STALE_RETRY_COUNT_MAX {
        let record =
            reads::record(state, id).await?.ok_or_else(|| ApiError::message_not_found(id_text))?;
        match try_call(&state.engine, |reply| command(record.stored(), reply)).await {
            Err(CommitError::Stale) => continue,
            Err(error) => return Err(error.into()),
            Ok(result) => return result.map_err(|error| control_error(error, id_text)),
        }
    }
    Err(CommitError::Stale.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditInput<'a> {
    #[serde(default, borrow, deserialize_with = "types::present")]
    body: Option<&'a RawValue>,
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    deliver_at: Option<types::DeliverAt>,
}

fn parse_id(text: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(text).ok_or_else(|| ApiError::invalid_id(text))
}

pub async fn edit_message(
    state: &AppState,
    id_text: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id_text)?;
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let input: EditInput = parse(&bytes)?;
    let now_ms = (state.clock)();
    let mut edit = IncomingEdit::default();
    let new_body = match (&input.body, &input.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "field body: give body or body_base64, not both".into(),
            ))
        }
        (Some(raw), None) => Some((BodyKind::Json, raw.get().as_bytes().to_vec())),
        (None, Some(text)) => Some((BodyKind::Bytes, types::decode_base64(text)?)),
        (None, None) => None,
    };
    let headers_given = input.headers.is_some();
    let new_headers = match input.headers {
        Some(headers) => Some(types::check_headers(headers)?),
        None => None,
    };
    if new_body.is_some() {
        edit.fields = edit.fields.with(EditFields::BODY);
    }
    if headers_given {
        edit.fields = edit.fields.with(EditFields::HEADERS);
    }
    if let Some(priority) = input.priority {
        edit.priority = Some(priority);
        edit.fields = edit.fields.with(EditFields::PRIORITY);
    }
    if let Some(at) = input.deliver_at {
        edit.deliver_at_ms = Some(types::deliver_at_ms(at, now_ms)?);
        edit.fields = edit.fields.with(EditFields::DELIVER_AT);
    }
    if edit.fields.is_empty() {
        return Err(ApiError::invalid_request(
            "nothing to change: give body, body_base64, headers, priority or deliver_at".into(),
        ));
    }
    let changes_content = new_body.is_some() || headers_given;
    for _ in 0..STALE_RETRY_COUNT_MAX {
        let record =
            reads::record(state, id).await?.ok_or_else(|| ApiError::message_not_found(id_text))?;
        if changes_content {
            edit.content =
                Some(edited_content(state, id, id_text, &record, &new_body, &new_headers)?);
        }
        let stored = record.stored();
        let this_edit = edit.clone();
        match try_call(&state.engine, |reply| Command::Edit { id, edit: this_edit, stored, reply })
            .await
        {
            Err(CommitError::Stale) => continue,
            Err(error) => return Err(error.into()),
            Ok(result) => {
                result.map_err(|error| control_error(error, id_text))?;
                return super::handlers::get_message(state, id_text).await;
            }
        }
    }
    Err(CommitError::Stale.into())
}

/// The encoded content after an edit: the new body and headers where given, the current ones
/// otherwise.
fn edited_content(
    state: &AppState,
    id: MessageId,
    id_text: &str,
    record: &reads::Record,
    new_body: &Option<(BodyKind, Vec<u8>)>,
    new_headers: &Option<Vec<(String, String)>>,
) -> Result<Vec<u8>, ApiError> {
    let current = reads::content(state, id, record.meta.content)
        .map_err(reads::internal("reading the message's content"))?
        .ok_or_else(|| ApiError::message_not_found(id_text))?;
    let current = decode_content(&current)
        .map_err(|error| {
            tracing::error!(%error, %id, "a message's content is damaged");
            ApiError::internal("reading the message's content")
        })?
        .to_owned();
    let headers = new_headers.clone().unwrap_or(current.headers);
    let (body_kind, body) = new_body.clone().unwrap_or((current.body_kind, current.body));
    types::check_message_size(&headers, &body, state.limits.message_bytes_max)?;
    Ok(encode_content(&ContentRef { headers: &headers, body_kind, body: &body }))
}

pub async fn delete_message(state: &AppState, id_text: &str) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id_text)?;
    act(state, id, id_text, |stored, reply| Command::Delete { id, stored, reply }).await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "deleted": id_text })))
}

pub async fn retry_message(
    state: &AppState,
    id_text: &str,
    request: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id_text)?;
    let mut reset_attempts = false;
    for (name, value) in query_pairs(request.uri().query())? {
        match name.as_str() {
            "reset_attempts" => reset_attempts = parse_bool("reset_attempts", &value)?,
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {other:?} (reset_attempts)"
                )))
            }
        }
    }
    act(state, id, id_text, |stored, reply| Command::Retry { id, reset_attempts, stored, reply })
        .await?;
    super::handlers::get_message(state, id_text).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleInput {
    #[serde(default)]
    deliver_at: Option<types::DeliverAt>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

pub async fn schedule_message(
    state: &AppState,
    id_text: &str,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id_text)?;
    let bytes = read_body(request, state.limits.request_bytes_max).await?;
    let input: ScheduleInput = parse(&bytes)?;
    let now_ms = (state.clock)();
    let deliver_at_ms = match (input.deliver_at, input.delay_ms) {
        (Some(at), None) => types::deliver_at_ms(at, now_ms)?,
        (None, Some(delay_ms)) if delay_ms <= DELAY_MS_MAX => now_ms + delay_ms,
        (None, Some(_)) => {
            return Err(ApiError::invalid_request(format!(
                "field delay_ms: must be at most {DELAY_MS_MAX}"
            )))
        }
        _ => {
            return Err(ApiError::invalid_request(
                "give exactly one of deliver_at and delay_ms".into(),
            ))
        }
    };
    act(state, id, id_text, |stored, reply| Command::Reschedule {
        id,
        deliver_at_ms,
        stored,
        reply,
    })
    .await?;
    super::handlers::get_message(state, id_text).await
}

/// Runs chunked commands until a chunk touches nothing; each chunk is its own commit, so other
/// requests are served in between. For dead and delivered messages each chunk is first read from
/// the catalog (with what the storage thread holds merged in) and carried by the command.
///
/// It stops once it has touched as many messages as were in `target_state` when it began, so a
/// queue that keeps refilling cannot keep the request going for ever.
async fn repeat_chunks(
    state: &AppState,
    queue: &str,
    target_state: MessageState,
    command: impl Fn(Vec<(MessageId, Stored)>, Reply<Option<u64>>) -> Command,
) -> Result<u64, ApiError> {
    let name = queue.to_string();
    let stats = call(&state.engine, |reply| Command::QueueStats { queue: name, reply }).await?;
    let count_max =
        stats.ok_or_else(|| ApiError::queue_not_found(queue))?.counts[target_state.index()];
    let mut total = 0;
    let mut stale_count = 0;
    while total < count_max {
        let chunk = if target_state.is_active() {
            Vec::new()
        } else {
            let (epoch, records, _) =
                terminal_chunk(state, queue, target_state, None, false, CONTROL_CHUNK_COUNT_MAX)
                    .await?;
            if records.is_empty() {
                break;
            }
            records.into_iter().map(|(id, meta)| (id, Stored { meta, epoch })).collect()
        };
        let count = match try_call(&state.engine, |reply| command(chunk, reply)).await {
            Err(CommitError::Stale) if stale_count < STALE_RETRY_COUNT_MAX => {
                stale_count += 1;
                continue;
            }
            Err(error) => return Err(error.into()),
            Ok(count) => count.ok_or_else(|| ApiError::queue_not_found(queue))?,
        };
        if count == 0 {
            break;
        }
        total += count;
    }
    Ok(total)
}

pub async fn purge(
    state: &AppState,
    queue: &str,
    request: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let mut purge_state = None;
    for (name, value) in query_pairs(request.uri().query())? {
        match name.as_str() {
            "state" => purge_state = Some(parse_state(&value)?),
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {other:?} (state)"
                )))
            }
        }
    }
    let purge_state = purge_state.ok_or_else(|| {
        ApiError::invalid_request(
            "query state is required, e.g. ?state=dead (leased messages cannot be purged)".into(),
        )
    })?;
    if purge_state == MessageState::Leased {
        return Err(ApiError::invalid_request(
            "query state: leased messages belong to their consumers and cannot be purged".into(),
        ));
    }
    let name = queue.to_string();
    let deleted = repeat_chunks(state, queue, purge_state, |chunk, reply| Command::Purge {
        queue: name.clone(),
        state: purge_state,
        chunk,
        reply,
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "deleted": deleted, "state": purge_state.name() }),
    ))
}

pub async fn redrive(
    state: &AppState,
    queue: &str,
    request: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let mut reset_attempts = false;
    for (name, value) in query_pairs(request.uri().query())? {
        match name.as_str() {
            "reset_attempts" => reset_attempts = parse_bool("reset_attempts", &value)?,
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter {other:?} (reset_attempts)"
                )))
            }
        }
    }
    let name = queue.to_string();
    let redriven = repeat_chunks(state, queue, MessageState::Dead, |chunk, reply| {
        Command::Redrive { queue: name.clone(), reset_attempts, chunk, reply }
    })
    .await?;
    Ok(json_response(StatusCode::OK, &serde_json::json!({ "redriven": redriven })))
}
