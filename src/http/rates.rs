//! `GET /v1/rates`: per-queue enqueue, delivery and failure counts per 5-second bucket over the
//! last five minutes (see `crate::rates` for where they come from).

use super::control::query_pairs;
use super::error::ApiError;
use super::handlers::AppState;
use super::{json_response, HttpResponse};
use crate::auth::Token;
use crate::rates::{RATE_BUCKET_COUNT, RATE_BUCKET_MS};
use hyper::StatusCode;

/// The rates of every queue the caller's token may see, or of the one queue `?queue=` names (403
/// for a queue outside the token's pattern, as for the event stream).
pub fn rates(
    state: &AppState,
    query: Option<&str>,
    token: Option<&Token>,
) -> Result<HttpResponse, ApiError> {
    let mut only = None;
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "queue" if super::types::valid_queue_name(&value) => only = Some(value),
            "queue" => return Err(ApiError::invalid_queue_name(&value)),
            other => {
                let message = format!("unknown query parameter {other:?} (queue)");
                return Err(ApiError::invalid_request(message));
            }
        }
    }
    if let (Some(token), Some(queue)) = (token, &only) {
        super::auth::check_queue(token, None, "read rates of", queue)?;
    }
    let visible = token.map(|token| &token.queues);
    let wanted = |queue: &str| {
        only.as_deref().is_none_or(|only| only == queue)
            && visible.is_none_or(|pattern| pattern.matches(queue))
    };
    let snapshot = state.rates.snapshot((state.clock)(), wanted);
    let queues: Vec<serde_json::Value> = snapshot
        .queues
        .iter()
        .map(|queue| {
            let series = |pick: fn(&crate::rates::Bucket) -> u32| {
                queue.buckets.iter().map(pick).collect::<Vec<u32>>()
            };
            serde_json::json!({
                "name": queue.name,
                "enqueued": series(|bucket| bucket.enqueued),
                "acked": series(|bucket| bucket.acked),
                "failed": series(|bucket| bucket.failed),
            })
        })
        .collect();
    let body = serde_json::json!({
        "bucket_ms": RATE_BUCKET_MS,
        "bucket_count": RATE_BUCKET_COUNT,
        "from": snapshot.from_ms,
        "to": snapshot.to_ms,
        "missed_event_count": snapshot.missed_event_count,
        "queues": queues,
    });
    Ok(json_response(StatusCode::OK, &body))
}
