//! `GET /v1/events`: the event stream, as Server-Sent Events.
//!
//! Each event is `id: N`, `event: <kind>` and one `data:` line of JSON. A client resumes with the
//! `Last-Event-ID` header (or `?last_event_id=`) and gets every event after it that is still in the
//! server's bounded ring; if some were already dropped it first gets an `event: missed` whose data
//! says from which id the stream resumes. A comment line every 15 s keeps proxies from closing an
//! idle stream. `dead` events carry the last error and a hint saying what a person can do.

use super::error::ApiError;
use super::handlers::AppState;
use super::HttpResponse;
use crate::auth::{QueuePattern, Role, Token};
use crate::events::Event;
use crate::queue::NoticeKind;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, StatusCode};
use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events sent per wake-up at most, so one slow reader cannot hold the ring's lock for long.
const EVENT_BATCH_COUNT_MAX: usize = 256;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// A response body fed by a channel: the stream ends when the sender is dropped.
pub struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new(receiver: mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody { receiver }
    }
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver.poll_recv(context).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Which events a reader wants, and may see.
struct Filter {
    queues: Option<HashSet<String>>,
    kinds: Option<HashSet<NoticeKind>>,
    /// The queues the reader's token covers (`None`: every queue).
    visible: Option<QueuePattern>,
}

impl Filter {
    fn admits(&self, event: &Event) -> bool {
        self.queues.as_ref().is_none_or(|queues| queues.contains(&*event.queue))
            && self.kinds.as_ref().is_none_or(|kinds| kinds.contains(&event.kind))
            && self.visible.as_ref().is_none_or(|pattern| pattern.matches(&event.queue))
    }
}

/// Parses `?queue=a,b&kind=dead,retrying&last_event_id=N`.
fn parse_query(query: &str) -> Result<(Filter, Option<u64>), ApiError> {
    let mut filter = Filter { queues: None, kinds: None, visible: None };
    let mut last_event_id = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "queue" => {
                let names: HashSet<String> = value.split(',').map(str::to_string).collect();
                if let Some(bad) = names.iter().find(|name| !super::types::valid_queue_name(name)) {
                    return Err(ApiError::invalid_queue_name(bad));
                }
                filter.queues = Some(names);
            }
            "kind" => {
                let mut kinds = HashSet::new();
                for name in value.split(',') {
                    let kind = NoticeKind::parse(name).ok_or_else(|| {
                        ApiError::invalid_request(format!(
                            "query kind: {name:?} is not an event kind (enqueued, leased, acked, \
                             retrying, dead, edited, deleted, retried, rescheduled, paused, \
                             resumed, configured)"
                        ))
                    })?;
                    kinds.insert(kind);
                }
                filter.kinds = Some(kinds);
            }
            "last_event_id" => last_event_id = Some(parse_event_id(value)?),
            other => {
                let message =
                    format!("unknown query parameter {other:?} (queue, kind, last_event_id)");
                return Err(ApiError::invalid_request(message));
            }
        }
    }
    Ok((filter, last_event_id))
}

fn parse_event_id(text: &str) -> Result<u64, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::invalid_request(format!("event id {text:?} is not a non-negative integer"))
    })
}

/// Formats one event as an SSE block.
fn format_event(event: &Event) -> String {
    let mut data = serde_json::json!({
        "id": event.id,
        "kind": event.kind.name(),
        "queue": &*event.queue,
        "message_id": event.message_id.map(|id| id.to_string()),
        "attempt": event.attempt,
        "at": event.at_ms,
    });
    if let Some(detail) = &event.detail {
        data["error"] = detail.clone().into();
    }
    if event.kind == NoticeKind::Dead {
        let id = event.message_id.map(|id| id.to_string()).unwrap_or_default();
        data["hint"] = format!(
            "The message will not be retried by itself. Read GET /v1/messages/{id} for its \
             history, fix the cause, then POST /v1/messages/{id}/retry (or \
             POST /v1/queues/{}/redrive for every dead message of the queue).",
            event.queue
        )
        .into();
    }
    format!("id: {}\nevent: {}\ndata: {}\n\n", event.id, event.kind.name(), data)
}

/// Opens an event stream. With a `token` whose pattern is not `*`, the stream holds only events
/// of the queues it matches, and naming another queue in `?queue=` is refused (403).
pub async fn events(
    state: &AppState,
    request: Request<Incoming>,
    token: Option<&Token>,
) -> Result<HttpResponse, ApiError> {
    let (mut filter, query_id) = parse_query(request.uri().query().unwrap_or(""))?;
    if let Some(token) = token.filter(|token| token.queues.as_str() != "*") {
        let mut named: Vec<&String> = filter.queues.iter().flatten().collect();
        named.sort();
        for queue in named {
            super::auth::check_queue(token, Some(Role::Admin), "read events of", queue)?;
        }
        filter.visible = Some(token.queues.clone());
    }
    let header_id = match request.headers().get("last-event-id") {
        Some(value) => Some(parse_event_id(value.to_str().unwrap_or("x"))?),
        None => None,
    };
    let start_after = header_id.or(query_id).unwrap_or_else(|| state.events.last_id());
    let (sender, receiver) = mpsc::channel(16);
    let events = state.events.clone();
    let mut shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let _ = stream_events(events, filter, start_after, sender, &mut shutdown).await;
    });
    let body = ChannelBody { receiver }.boxed();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, "text/event-stream".parse().expect("valid"));
    headers.insert(hyper::header::CACHE_CONTROL, "no-cache".parse().expect("valid"));
    Ok(response)
}

/// Feeds one reader until it goes away or the server shuts down.
async fn stream_events(
    log: Arc<crate::events::EventLog>,
    filter: Filter,
    mut after: u64,
    sender: mpsc::Sender<Bytes>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), mpsc::error::SendError<Bytes>> {
    sender.send(Bytes::from_static(b": outboxd event stream\n\n")).await?;
    loop {
        let published = log.published().notified();
        tokio::pin!(published);
        published.as_mut().enable();
        let (events, missed) = log.after(after, EVENT_BATCH_COUNT_MAX);
        if missed {
            // The stream resumes at the oldest event held, or at the next one if none is held
            // (a resume from before a restart); either way the reader is told once.
            let resume = events.first().map_or(log.last_id() + 1, |event| event.id);
            let text = format!("event: missed\ndata: {{\"resumes_at\": {resume}}}\n\n");
            sender.send(Bytes::from(text)).await?;
            after = resume - 1;
        }
        let full_batch = events.len() == EVENT_BATCH_COUNT_MAX;
        for event in events {
            after = event.id;
            if filter.admits(&event) {
                sender.send(Bytes::from(format_event(&event))).await?;
            }
        }
        if full_batch {
            continue;
        }
        tokio::select! {
            _ = &mut published => {}
            _ = tokio::time::sleep(KEEPALIVE_INTERVAL) => {
                sender.send(Bytes::from_static(b": keep-alive\n\n")).await?;
            }
            _ = shutdown.changed() => return Ok(()),
            _ = sender.closed() => return Ok(()),
        }
    }
}
