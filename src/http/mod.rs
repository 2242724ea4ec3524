//! The HTTP API: connection handling, routing, and response helpers.

pub mod admin;
pub mod control;
pub mod error;
pub mod handlers;
pub mod json;
pub mod stream;
pub mod types;

use bytes::Bytes;
use error::ApiError;
use handlers::AppState;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// A response body: buffered for most endpoints, a stream for the event stream.
pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Every handler answers with this.
pub type HttpResponse = Response<Body>;

/// A JSON response from a serializable value.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("response values serialize");
    raw_json_response(status, body)
}

/// A JSON response from bytes that already are JSON.
pub fn raw_json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &ApiError) -> HttpResponse {
    let mut response = raw_json_response(error.status, error.body());
    if let Some(seconds) = error.retry_after_s {
        response.headers_mut().insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    if let Some(allowed) = error.allow {
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static(allowed));
    }
    response
}

/// Serves one request: route, run the handler, turn refusals into error responses, log.
pub async fn serve(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route_name = route_label(&method, &path);
    let response = match route(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                tracing::warn!(code = error.code, message = %error.message, "request failed");
            }
            error_response(&error)
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::histogram!(crate::metrics::HTTP_REQUEST_DURATION_SECONDS, "route" => route_name, "status" => status)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(response)
}

/// Which endpoint a path names, before the method is checked.
enum Route<'a> {
    Health,
    Metrics,
    Queues,
    Queue(&'a str),
    QueueAction(&'a str, &'a str),
    Message(&'a str),
    MessageAction(&'a str, &'a str),
    Events,
    Backup,
    #[cfg(feature = "testing")]
    Failpoint(&'a str),
}

fn match_path(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    Some(match segments.as_slice() {
        ["healthz"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["v1", "queues"] => Route::Queues,
        ["v1", "queues", queue] => Route::Queue(queue),
        ["v1", "queues", queue, action @ ("messages" | "lease" | "ack" | "nack" | "extend" | "pause" | "resume"
        | "redrive")] => Route::QueueAction(queue, action),
        ["v1", "messages", id] => Route::Message(id),
        ["v1", "messages", id, action @ ("retry" | "schedule")] => Route::MessageAction(id, action),
        ["v1", "events"] => Route::Events,
        ["v1", "admin", "backup"] => Route::Backup,
        #[cfg(feature = "testing")]
        ["debug", "failpoints", name] => Route::Failpoint(name),
        _ => return None,
    })
}

/// A low-cardinality name of the endpoint, for metrics (no ids or queue names in it).
fn route_label(method: &Method, path: &str) -> &'static str {
    let Some(route) = match_path(path) else { return "unknown" };
    match (route, method.as_str()) {
        (Route::Health, _) => "health",
        (Route::Metrics, _) => "metrics",
        (Route::Queues, _) => "queues",
        (Route::Queue(_), "PUT") => "queue_settings",
        (Route::Queue(_), _) => "queue",
        (Route::QueueAction(_, "messages"), "POST") => "enqueue",
        (Route::QueueAction(_, "messages"), "DELETE") => "purge",
        (Route::QueueAction(_, "messages"), _) => "list",
        (Route::QueueAction(_, "lease"), _) => "lease",
        (Route::QueueAction(_, "ack"), _) => "ack",
        (Route::QueueAction(_, "nack"), _) => "nack",
        (Route::QueueAction(_, "extend"), _) => "extend",
        (Route::QueueAction(_, "redrive"), _) => "redrive",
        (Route::QueueAction(..), _) => "pause",
        (Route::Message(_), "PATCH") => "edit",
        (Route::Message(_), "DELETE") => "delete",
        (Route::Message(_), _) => "message",
        (Route::MessageAction(_, "retry"), _) => "retry",
        (Route::MessageAction(..), _) => "schedule",
        (Route::Events, _) => "events",
        (Route::Backup, _) => "backup",
        #[cfg(feature = "testing")]
        (Route::Failpoint(_), _) => "failpoint",
    }
}

/// Refuses a method the endpoint does not serve, naming the ones it does.
fn refuse_method(method: &Method, allowed: &'static str) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), allowed)
}

async fn route(state: &AppState, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let route = match_path(&path).ok_or_else(|| ApiError::not_found(&path))?;
    match route {
        Route::Health if method == Method::GET => Ok(handlers::health(state)),
        Route::Health => Err(refuse_method(&method, "GET")),
        Route::Metrics if method == Method::GET => handlers::metrics(state).await,
        Route::Metrics => Err(refuse_method(&method, "GET")),
        Route::Queues if method == Method::GET => control::list_queues(state).await,
        Route::Queues => Err(refuse_method(&method, "GET")),
        Route::Queue(queue) => {
            check_queue_name(queue)?;
            match method {
                Method::GET => control::get_queue(state, queue).await,
                Method::PUT => control::put_queue(state, queue, request).await,
                _ => Err(refuse_method(&method, "GET, PUT")),
            }
        }
        Route::QueueAction(queue, action) => {
            check_queue_name(queue)?;
            queue_action(state, queue, action, method, request).await
        }
        Route::Message(id) => match method {
            Method::GET => handlers::get_message(state, id).await,
            Method::PATCH => control::edit_message(state, id, request).await,
            Method::DELETE => control::delete_message(state, id).await,
            _ => Err(refuse_method(&method, "GET, PATCH, DELETE")),
        },
        Route::MessageAction(id, action) if method == Method::POST => match action {
            "retry" => control::retry_message(state, id, &request).await,
            _ => control::schedule_message(state, id, request).await,
        },
        Route::MessageAction(..) => Err(refuse_method(&method, "POST")),
        Route::Events if method == Method::GET => stream::events(state, request).await,
        Route::Events => Err(refuse_method(&method, "GET")),
        Route::Backup if method == Method::GET => admin::backup(state, request).await,
        Route::Backup => Err(refuse_method(&method, "GET")),
        #[cfg(feature = "testing")]
        Route::Failpoint(name) if method == Method::PUT => {
            handlers::set_failpoint(state, name, request).await
        }
        #[cfg(feature = "testing")]
        Route::Failpoint(_) => Err(refuse_method(&method, "PUT")),
    }
}

async fn queue_action(
    state: &AppState,
    queue: &str,
    action: &str,
    method: Method,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    match (action, &method) {
        ("messages", &Method::POST) => handlers::enqueue(state, queue, request).await,
        ("messages", &Method::GET) => control::list_messages(state, queue, &request).await,
        ("messages", &Method::DELETE) => control::purge(state, queue, &request).await,
        ("messages", _) => Err(refuse_method(&method, "POST, GET, DELETE")),
        (_, &Method::POST) => match action {
            "lease" => handlers::lease(state, queue, request).await,
            "ack" => handlers::ack(state, queue, request).await,
            "nack" => handlers::nack(state, queue, request).await,
            "extend" => handlers::extend(state, queue, request).await,
            "pause" => control::pause(state, queue, true).await,
            "resume" => control::pause(state, queue, false).await,
            _ => control::redrive(state, queue, &request).await,
        },
        _ => Err(refuse_method(&method, "POST")),
    }
}

fn check_queue_name(queue: &str) -> Result<(), ApiError> {
    if types::valid_queue_name(queue) {
        Ok(())
    } else {
        Err(ApiError::invalid_queue_name(queue))
    }
}
