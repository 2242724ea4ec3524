//! Listing a queue's messages (`GET /v1/queues/{queue}/messages`): by state, in id order both
//! ways, with a cursor, filtered by a header or by text in the last error. Active messages come
//! from the storage thread, dead and delivered ones from the catalog merged with what the storage
//! thread holds.

use super::control::{parse_state, query_pairs, terminal_chunk};
use super::error::ApiError;
use super::handlers::{call, AppState};
use super::reads;
use super::{json, raw_json_response, HttpResponse};
use crate::engine::Command;
use crate::limits::LIST_COUNT_MAX;
use crate::queue::{HistoryEvent, MessageId, MessageMeta, MessageState, ALL_STATES};
use crate::store::codec::decode_content;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

/// Listing parameters of `GET /v1/queues/{queue}/messages`.
struct ListQuery {
    state: Option<MessageState>,
    limit: usize,
    descending: bool,
    /// (state, id) to continue after.
    cursor: Option<(MessageState, MessageId)>,
    header: Option<(String, String)>,
    /// Text the last error must contain, lowercased (the match ignores case).
    error: Option<String>,
}

fn parse_list_query(query: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut list = ListQuery {
        state: None,
        limit: 100,
        descending: false,
        cursor: None,
        header: None,
        error: None,
    };
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "state" => list.state = Some(parse_state(&value)?),
            "limit" => {
                list.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=LIST_COUNT_MAX).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid_request(format!(
                            "query limit: must be 1 to {LIST_COUNT_MAX}"
                        ))
                    })?;
            }
            "order" => {
                list.descending = match value.as_str() {
                    "asc" | "oldest" => false,
                    "desc" | "newest" => true,
                    _ => return Err(ApiError::invalid_request("query order: asc or desc".into())),
                }
            }
            "cursor" => list.cursor = Some(parse_cursor(&value)?),
            "header" => {
                let (key, wanted) = value.split_once(':').ok_or_else(|| {
                    ApiError::invalid_request(
                        "query header: give name:value, e.g. kind:email".into(),
                    )
                })?;
                list.header = Some((key.to_string(), wanted.to_string()));
            }
            "error" if value.is_empty() => {
                return Err(ApiError::invalid_request(
                    "query error: give the text to look for in the last error".into(),
                ))
            }
            "error" => list.error = Some(value.to_lowercase()),
            other => {
                let message = format!(
                    "unknown query parameter {other:?} (state, limit, order, cursor, header, error)"
                );
                return Err(ApiError::invalid_request(message));
            }
        }
    }
    Ok(list)
}

/// Cursors are `<state>.<id>`: opaque to clients, stable because ids never change.
fn parse_cursor(text: &str) -> Result<(MessageState, MessageId), ApiError> {
    let bad = || {
        ApiError::invalid_request(format!("query cursor: {text:?} is not a cursor from a listing"))
    };
    let (state, id) = text.split_once('.').ok_or_else(bad)?;
    let state =
        ALL_STATES.into_iter().find(|candidate| candidate.name() == state).ok_or_else(bad)?;
    Ok((state, MessageId::parse(id).ok_or_else(bad)?))
}

/// How many candidates one page may examine when filtering (by header or error text), per message
/// returned.
const FILTER_SCAN_FACTOR: usize = 10;

pub async fn list_messages(
    state: &AppState,
    queue: &str,
    request: &Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let list = parse_list_query(request.uri().query())?;
    let states: Vec<MessageState> = match list.state {
        Some(one) => vec![one],
        None => ALL_STATES.to_vec(),
    };
    let filtered = list.header.is_some() || list.error.is_some();
    let mut remaining_scan = list.limit * if filtered { FILTER_SCAN_FACTOR } else { 1 };
    let mut page: Vec<(MessageId, MessageMeta, Vec<HistoryEvent>)> = Vec::new();
    let mut next_cursor = None;
    let mut skipping = list.cursor.map(|(state, _)| state);
    for candidate_state in states {
        if let Some(cursor_state) = skipping {
            if cursor_state != candidate_state {
                continue;
            }
            skipping = None;
        }
        let after = list.cursor.filter(|(state, _)| *state == candidate_state).map(|(_, id)| id);
        let listed =
            in_state(state, queue, candidate_state, after, list.descending, remaining_scan).await?;
        for (id, meta, pending) in listed {
            remaining_scan -= 1;
            next_cursor = Some((candidate_state, id));
            if meta.state != candidate_state
                || !header_matches(state, id, &meta, &list.header)?
                || !error_matches(state, id, &meta, &pending, list.error.as_deref())
            {
                continue;
            }
            page.push((id, meta, pending));
            if page.len() == list.limit {
                break;
            }
        }
        if page.len() == list.limit || remaining_scan == 0 {
            break;
        }
        next_cursor = None;
    }
    let mut out = Vec::with_capacity(64 + page.len() * 256);
    out.extend_from_slice(b"{\"messages\":[");
    for (index, (id, meta, pending)) in page.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let history = reads::history(state, *id, meta, pending);
        json::message_summary(&mut out, *id, queue, meta, &history);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match next_cursor {
        Some((cursor_state, id)) => {
            json::write_str(&mut out, &format!("{}.{id}", cursor_state.name()))
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(raw_json_response(StatusCode::OK, out))
}

/// A queue's messages in one state, in id order: active ones from the storage thread; dead and
/// delivered ones from the catalog, with what the storage thread holds of them merged in.
async fn in_state(
    state: &AppState,
    queue: &str,
    message_state: MessageState,
    after: Option<MessageId>,
    descending: bool,
    limit: usize,
) -> Result<Vec<(MessageId, MessageMeta, Vec<HistoryEvent>)>, ApiError> {
    if message_state.is_active() {
        let name = queue.to_string();
        let listed = call(&state.engine, |reply| Command::ListActive {
            queue: name,
            state: message_state,
            after,
            descending,
            limit,
            reply,
        })
        .await?;
        return listed.ok_or_else(|| ApiError::queue_not_found(queue));
    }
    let (_, records, mut pending) =
        terminal_chunk(state, queue, message_state, after, descending, limit).await?;
    Ok(records
        .into_iter()
        .map(|(id, meta)| {
            let events = pending
                .binary_search_by_key(&id, |(pending_id, _)| *pending_id)
                .map(|index| std::mem::take(&mut pending[index].1))
                .unwrap_or_default();
            (id, meta, events)
        })
        .collect())
}

fn header_matches(
    state: &AppState,
    id: MessageId,
    meta: &MessageMeta,
    header: &Option<(String, String)>,
) -> Result<bool, ApiError> {
    let Some((name, wanted)) = header else { return Ok(true) };
    let Some(bytes) =
        reads::content(state, id, meta.content).map_err(reads::internal("reading the store"))?
    else {
        return Ok(false);
    };
    let content = decode_content(&bytes).map_err(|error| {
        tracing::error!(%error, %id, "a message's content is damaged");
        ApiError::internal("reading the store")
    })?;
    Ok(content.headers.iter().any(|(key, value)| key == name && value == wanted))
}

/// Whether the message's last error contains `needle` (lowercase), ignoring case; every message
/// matches when there is no needle, none without a last error. A damaged history reads as no
/// error, as it lists as empty: one bad record must not take the whole page down.
fn error_matches(
    state: &AppState,
    id: MessageId,
    meta: &MessageMeta,
    pending: &[HistoryEvent],
    needle: Option<&str>,
) -> bool {
    let Some(needle) = needle else { return true };
    let history = reads::history(state, id, meta, pending);
    history.last_failure().is_some_and(|event| event.detail.to_lowercase().contains(needle))
}
