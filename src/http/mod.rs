//! The HTTP API: connection handling, routing, and response helpers.

pub mod error;
pub mod handlers;
pub mod json;
pub mod types;

use bytes::Bytes;
use error::ApiError;
use handlers::AppState;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// Every response has a fully buffered body.
pub type HttpResponse = Response<Full<Bytes>>;

/// A JSON response from a serializable value.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    let body = serde_json::to_vec(value).expect("response values serialize");
    raw_json_response(status, body)
}

/// A JSON response from bytes that already are JSON.
pub fn raw_json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
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
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, seconds.into());
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
    let response = match route(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                tracing::warn!(code = error.code, message = %error.message, "request failed");
            }
            error_response(&error)
        }
    };
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
    Queue(&'a str),
    QueueAction(&'a str, &'a str),
    Message(&'a str),
    #[cfg(feature = "testing")]
    Failpoint(&'a str),
}

fn match_path(path: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    Some(match segments.as_slice() {
        ["healthz"] => Route::Health,
        ["v1", "queues", queue] => Route::Queue(queue),
        ["v1", "queues", queue, action @ ("messages" | "lease" | "ack" | "nack" | "extend")] => {
            Route::QueueAction(queue, action)
        }
        ["v1", "messages", id] => Route::Message(id),
        #[cfg(feature = "testing")]
        ["debug", "failpoints", name] => Route::Failpoint(name),
        _ => return None,
    })
}

async fn route(state: &AppState, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let route = match_path(&path).ok_or_else(|| ApiError::not_found(&path))?;
    let allow = |expected: Method| {
        if method == expected {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(
                method.as_str(),
                expected.as_str(),
            ))
        }
    };
    match route {
        Route::Health => allow(Method::GET).map(|()| handlers::health(state)),
        Route::Queue(queue) => {
            allow(Method::GET)?;
            check_queue_name(queue)?;
            handlers::queue_stats(state, queue).await
        }
        Route::QueueAction(queue, action) => {
            allow(Method::POST)?;
            check_queue_name(queue)?;
            match action {
                "messages" => handlers::enqueue(state, queue, request).await,
                "lease" => handlers::lease(state, queue, request).await,
                "ack" => handlers::ack(state, queue, request).await,
                "nack" => handlers::nack(state, queue, request).await,
                _ => handlers::extend(state, queue, request).await,
            }
        }
        Route::Message(id) => {
            allow(Method::GET)?;
            handlers::get_message(state, id).await
        }
        #[cfg(feature = "testing")]
        Route::Failpoint(name) => {
            allow(Method::PUT)?;
            handlers::set_failpoint(state, name, request).await
        }
    }
}

fn check_queue_name(queue: &str) -> Result<(), ApiError> {
    if types::valid_queue_name(queue) {
        Ok(())
    } else {
        Err(ApiError::invalid_queue_name(queue))
    }
}
