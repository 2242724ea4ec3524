//! The HTTP API: connection handling, routing, and response helpers.

pub mod admin;
pub mod auth;
pub mod control;
pub mod error;
pub mod handlers;
pub mod json;
pub mod listing;
pub mod rates;
pub mod reads;
pub mod stream;
pub mod types;
pub mod ui;
pub mod whoami;

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
    if error.close_connection {
        response
            .headers_mut()
            .insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    }
    if error.authenticate {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"outboxd\""),
        );
    }
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

/// The tracing target of the access log: one line per request. A filter such as
/// `info,outboxd::access=warn` silences it without touching other lines.
pub const ACCESS_LOG_TARGET: &str = "outboxd::access";

/// How many messages (enqueue, lease) or items (ack, nack, extend) a request carried.
///
/// A handler sets it on its response, and [`serve`] takes it off again for the access log, so the
/// handler does not have to know about logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchCount(pub usize);

/// Marks a response with the request's batch size, for the access log.
pub fn with_batch_count(mut response: HttpResponse, count: usize) -> HttpResponse {
    response.extensions_mut().insert(BatchCount(count));
    response
}

/// Serves one request: route, check access, run the handler, turn refusals into error
/// responses, and write one access-log line.
pub async fn serve(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let mut line = AccessLine::start(&request);
    let path = request.uri().path().to_string();
    let response = match handle(&state, request, &path, &mut line.token).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                // The client's message goes in `error`: a field named `message` would clash with
                // the line's own message in JSON logs.
                tracing::warn!(code = error.code, error = %error.message, "request failed");
            }
            count_auth_failure(&error);
            error_response(&error)
        }
    };
    Ok(line.finish(response))
}

/// Status logged for a request whose client left before the response (nginx's convention).
const CLIENT_CLOSED_STATUS: u16 = 499;

/// One request's access-log line and duration sample. Written when the response starts; if the
/// client leaves first (hyper then drops the request's future, e.g. during a long poll), written
/// on drop with status 499.
struct AccessLine {
    started: Instant,
    method: Method,
    route: &'static str,
    /// Only a valid queue name is logged: the path is the client's text.
    queue: Option<String>,
    /// The token's name, set as soon as the token is known, so a refusal is logged with it too.
    token: Option<String>,
    batch: Option<usize>,
    written: bool,
}

impl AccessLine {
    fn start(request: &Request<Incoming>) -> AccessLine {
        let endpoint = match_path(request.uri().path())
            .and_then(|route| endpoint(route, request.method()).ok());
        let queue = endpoint
            .and_then(Endpoint::queue)
            .filter(|queue| types::valid_queue_name(queue))
            .map(str::to_string);
        AccessLine {
            started: Instant::now(),
            method: request.method().clone(),
            route: endpoint.map_or("unknown", Endpoint::label),
            queue,
            token: None,
            batch: None,
            written: false,
        }
    }

    fn finish(mut self, mut response: HttpResponse) -> HttpResponse {
        self.batch = response.extensions_mut().remove::<BatchCount>().map(|BatchCount(n)| n);
        self.write(response.status().as_u16());
        response
    }

    fn write(&mut self, status: u16) {
        self.written = true;
        let elapsed = self.started.elapsed();
        metrics::histogram!(crate::metrics::HTTP_REQUEST_DURATION_SECONDS, "route" => self.route, "status" => status.to_string())
            .record(elapsed.as_secs_f64());
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = %self.method,
            route = self.route,
            status,
            // Whole microseconds, so the text form stays short (0.114, not 0.11424100000000001).
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            queue = self.queue.as_deref(),
            batch = self.batch.map(|count| count as u64),
            token = self.token.as_deref(),
            "request"
        );
    }
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        if !self.written {
            self.write(CLIENT_CLOSED_STATUS);
        }
    }
}

/// Routes, authenticates, authorizes, and runs the handler. Unknown paths and methods are
/// answered (404, 405) before the token is checked; everything else only after, and before the
/// request body is read. `token_name` is set as soon as the token is known, so that a refused
/// request is logged with it too.
async fn handle(
    state: &AppState,
    mut request: Request<Incoming>,
    path: &str,
    token_name: &mut Option<String>,
) -> Result<HttpResponse, ApiError> {
    // hyper drops a connection whose request body was left unread (by a refusal before the body
    // is read, or a body over the limit); saying so in the response lets the client open a new
    // connection for its next request instead of failing on this one.
    let body_unread = !hyper::body::Body::is_end_stream(request.body());
    let consumed = BodyConsumed::default();
    request.extensions_mut().insert(consumed.clone());
    let admitted = admit(state, &request, path, token_name).await;
    let (endpoint, token) =
        admitted.map_err(|error| ApiError { close_connection: body_unread, ..error })?;
    let result = dispatch(state, endpoint, token, request).await;
    let left_unread = body_unread && !consumed.get();
    match result {
        Ok(mut response) => {
            if left_unread {
                response.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok(response)
        }
        Err(error) => {
            let close_connection = error.close_connection || left_unread;
            Err(ApiError { close_connection, ..error })
        }
    }
}

/// Set by [`handlers::read_body`] once it has read a request's whole body; a response to a
/// request whose body was not read closes the connection.
#[derive(Clone, Default)]
pub struct BodyConsumed(Arc<std::sync::atomic::AtomicBool>);

impl BodyConsumed {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Everything decided before the body is read: the endpoint, the caller's token and its
/// permission (for message endpoints this reads the message's queue), and the queue name's
/// validity.
async fn admit<'a, 's>(
    state: &'s AppState,
    request: &Request<Incoming>,
    path: &'a str,
    token_name: &mut Option<String>,
) -> Result<(Endpoint<'a>, Option<&'s crate::auth::Token>), ApiError> {
    let route = match_path(path).ok_or_else(|| ApiError::not_found(path))?;
    let endpoint = endpoint(route, request.method())?;
    refuse_cross_site(request)?;
    let token = auth::authenticate(&state.tokens, endpoint, request.headers())?;
    *token_name = token.map(|token| token.name.clone());
    auth::authorize(state, token, endpoint).await?;
    if let Some(queue) = endpoint.queue() {
        check_queue_name(queue)?;
    }
    Ok((endpoint, token))
}

/// Refuses a request that changes something when a browser says a page of another site sent it.
/// Without API tokens nothing else would stop any web page open in a browser that can reach the
/// server from sending it blind POSTs (a form, or `fetch` with `mode: "no-cors"`). Programs send
/// no `Sec-Fetch-Site`; the outbox page's own requests are `same-origin`; a typed or bookmarked
/// URL is `none`. Reads stay open: a cross-site page cannot see their answers.
fn refuse_cross_site(request: &Request<Incoming>) -> Result<(), ApiError> {
    let method = request.method();
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return Ok(());
    }
    match request.headers().get("sec-fetch-site").map(|value| value.as_bytes()) {
        None | Some(b"same-origin") | Some(b"none") => Ok(()),
        Some(other) => Err(ApiError::cross_site(&String::from_utf8_lossy(other))),
    }
}

/// Counts refusals by access control, by reason.
fn count_auth_failure(error: &ApiError) {
    let reason = match error.code {
        "unauthorized" => "missing",
        "invalid_token" => "invalid",
        "forbidden" => "forbidden",
        _ => return,
    };
    metrics::counter!(crate::metrics::HTTP_AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
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
    // The outbox page, and what the API offers for it.
    Page(ui::PagePath<'a>),
    WhoAmI,
    Rates,
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
        // The outbox page, and what the API offers for it.
        [""] => Route::Page(ui::PagePath::Index),
        ["ui"] => Route::Page(ui::PagePath::UiRoot { trailing_slash: false }),
        ["ui", ""] => Route::Page(ui::PagePath::UiRoot { trailing_slash: true }),
        ["ui", name] => Route::Page(ui::PagePath::File(name)),
        ["v1", "whoami"] => Route::WhoAmI,
        ["v1", "rates"] => Route::Rates,
        #[cfg(feature = "testing")]
        ["debug", "failpoints", name] => Route::Failpoint(name),
        _ => return None,
    })
}

/// Refuses a method the endpoint does not serve, naming the ones it does.
fn refuse_method(method: &Method, allowed: &'static str) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), allowed)
}

/// One operation of the API: a path with a method it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Health,
    Metrics,
    ListQueues,
    GetQueue(&'a str),
    PutQueue(&'a str),
    Enqueue(&'a str),
    ListMessages(&'a str),
    Purge(&'a str),
    Lease(&'a str),
    Ack(&'a str),
    Nack(&'a str),
    Extend(&'a str),
    Pause(&'a str),
    Resume(&'a str),
    Redrive(&'a str),
    GetMessage(&'a str),
    EditMessage(&'a str),
    DeleteMessage(&'a str),
    Retry(&'a str),
    Schedule(&'a str),
    Events,
    Backup,
    // The outbox page, and what the API offers for it.
    Page(ui::PagePath<'a>),
    WhoAmI,
    Rates,
    #[cfg(feature = "testing")]
    Failpoint(&'a str),
}

impl<'a> Endpoint<'a> {
    /// A low-cardinality name, for metrics and the access log (no ids or queue names in it).
    fn label(self) -> &'static str {
        use Endpoint as E;
        match self {
            E::Health => "health",
            E::Metrics => "metrics",
            E::ListQueues => "queues",
            E::GetQueue(_) => "queue",
            E::PutQueue(_) => "queue_settings",
            E::Enqueue(_) => "enqueue",
            E::ListMessages(_) => "list",
            E::Purge(_) => "purge",
            E::Lease(_) => "lease",
            E::Ack(_) => "ack",
            E::Nack(_) => "nack",
            E::Extend(_) => "extend",
            E::Pause(_) | E::Resume(_) => "pause",
            E::Redrive(_) => "redrive",
            E::GetMessage(_) => "message",
            E::EditMessage(_) => "edit",
            E::DeleteMessage(_) => "delete",
            E::Retry(_) => "retry",
            E::Schedule(_) => "schedule",
            E::Events => "events",
            E::Backup => "backup",
            E::Page(_) => "ui",
            E::WhoAmI => "whoami",
            E::Rates => "rates",
            #[cfg(feature = "testing")]
            E::Failpoint(_) => "failpoint",
        }
    }

    /// The queue the path names, if it names one.
    fn queue(self) -> Option<&'a str> {
        use Endpoint as E;
        match self {
            E::GetQueue(queue)
            | E::PutQueue(queue)
            | E::Enqueue(queue)
            | E::ListMessages(queue)
            | E::Purge(queue)
            | E::Lease(queue)
            | E::Ack(queue)
            | E::Nack(queue)
            | E::Extend(queue)
            | E::Pause(queue)
            | E::Resume(queue)
            | E::Redrive(queue) => Some(queue),
            _ => None,
        }
    }
}

/// The endpoint a route and method name, or 405 with the methods the route serves.
fn endpoint<'a>(route: Route<'a>, method: &Method) -> Result<Endpoint<'a>, ApiError> {
    use Endpoint as E;
    let get_only = |endpoint| {
        if method == Method::GET {
            Ok(endpoint)
        } else {
            Err(refuse_method(method, "GET"))
        }
    };
    match route {
        Route::Health => get_only(E::Health),
        Route::Metrics => get_only(E::Metrics),
        Route::Queues => get_only(E::ListQueues),
        Route::Events => get_only(E::Events),
        Route::Backup => get_only(E::Backup),
        Route::Page(path) => get_only(E::Page(path)),
        Route::WhoAmI => get_only(E::WhoAmI),
        Route::Rates => get_only(E::Rates),
        Route::Queue(queue) => match *method {
            Method::GET => Ok(E::GetQueue(queue)),
            Method::PUT => Ok(E::PutQueue(queue)),
            _ => Err(refuse_method(method, "GET, PUT")),
        },
        Route::QueueAction(queue, "messages") => match *method {
            Method::POST => Ok(E::Enqueue(queue)),
            Method::GET => Ok(E::ListMessages(queue)),
            Method::DELETE => Ok(E::Purge(queue)),
            _ => Err(refuse_method(method, "POST, GET, DELETE")),
        },
        Route::QueueAction(_, _) if method != Method::POST => Err(refuse_method(method, "POST")),
        Route::QueueAction(queue, action) => Ok(match action {
            "lease" => E::Lease(queue),
            "ack" => E::Ack(queue),
            "nack" => E::Nack(queue),
            "extend" => E::Extend(queue),
            "pause" => E::Pause(queue),
            "resume" => E::Resume(queue),
            _ => E::Redrive(queue),
        }),
        Route::Message(id) => match *method {
            Method::GET => Ok(E::GetMessage(id)),
            Method::PATCH => Ok(E::EditMessage(id)),
            Method::DELETE => Ok(E::DeleteMessage(id)),
            _ => Err(refuse_method(method, "GET, PATCH, DELETE")),
        },
        Route::MessageAction(_, _) if method != Method::POST => Err(refuse_method(method, "POST")),
        Route::MessageAction(id, "retry") => Ok(E::Retry(id)),
        Route::MessageAction(id, _) => Ok(E::Schedule(id)),
        #[cfg(feature = "testing")]
        Route::Failpoint(name) if method == Method::PUT => Ok(E::Failpoint(name)),
        #[cfg(feature = "testing")]
        Route::Failpoint(_) => Err(refuse_method(method, "PUT")),
    }
}

/// Runs the endpoint's handler. `token` is the caller's token when access control is on: the
/// queue list and the event stream show only the queues its pattern matches.
async fn dispatch(
    state: &AppState,
    endpoint: Endpoint<'_>,
    token: Option<&crate::auth::Token>,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    use Endpoint as E;
    match endpoint {
        E::Health => Ok(handlers::health(state)),
        E::Metrics => handlers::metrics(state).await,
        E::ListQueues => control::list_queues(state, token.map(|token| &token.queues)).await,
        E::GetQueue(queue) => control::get_queue(state, queue).await,
        E::PutQueue(queue) => control::put_queue(state, queue, request).await,
        E::Enqueue(queue) => handlers::enqueue(state, queue, request).await,
        E::ListMessages(queue) => listing::list_messages(state, queue, &request).await,
        E::Purge(queue) => control::purge(state, queue, &request).await,
        E::Lease(queue) => handlers::lease(state, queue, request).await,
        E::Ack(queue) => handlers::ack(state, queue, request).await,
        E::Nack(queue) => handlers::nack(state, queue, request).await,
        E::Extend(queue) => handlers::extend(state, queue, request).await,
        E::Pause(queue) => control::pause(state, queue, true).await,
        E::Resume(queue) => control::pause(state, queue, false).await,
        E::Redrive(queue) => control::redrive(state, queue, &request).await,
        E::GetMessage(id) => handlers::get_message(state, id).await,
        E::EditMessage(id) => control::edit_message(state, id, request).await,
        E::DeleteMessage(id) => control::delete_message(state, id).await,
        E::Retry(id) => control::retry_message(state, id, &request).await,
        E::Schedule(id) => control::schedule_message(state, id, request).await,
        E::Events => stream::events(state, request, token).await,
        E::Backup => admin::backup(state, request).await,
        E::Page(path) => ui::serve(state.ui_enabled, path, request.headers()),
        E::WhoAmI => Ok(whoami::whoami(state.tokens.enabled(), token)),
        E::Rates => rates::rates(state, request.uri().query(), token),
        #[cfg(feature = "testing")]
        E::Failpoint(name) => handlers::set_failpoint(state, name, request).await,
    }
}

fn check_queue_name(queue: &str) -> Result<(), ApiError> {
    if types::valid_queue_name(queue) {
        Ok(())
    } else {
        Err(ApiError::invalid_queue_name(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(method: Method, path: &str) -> Option<&'static str> {
        let route = match_path(path)?;
        endpoint(route, &method).ok().map(Endpoint::label)
    }

    #[test]
    fn labels_come_from_the_endpoint_and_never_name_a_queue_or_id() {
        assert_eq!(label(Method::POST, "/v1/queues/orders/messages"), Some("enqueue"));
        assert_eq!(label(Method::GET, "/v1/queues/orders/messages"), Some("list"));
        assert_eq!(label(Method::DELETE, "/v1/queues/orders/messages"), Some("purge"));
        assert_eq!(label(Method::PUT, "/v1/queues/orders"), Some("queue_settings"));
        assert_eq!(label(Method::POST, "/v1/queues/orders/resume"), Some("pause"));
        assert_eq!(label(Method::PATCH, "/v1/messages/0000000000000001"), Some("edit"));
        assert_eq!(label(Method::POST, "/v1/messages/0000000000000001/retry"), Some("retry"));
        assert_eq!(label(Method::GET, "/v1/admin/backup"), Some("backup"));
        assert_eq!(label(Method::GET, "/"), Some("ui"));
        assert_eq!(label(Method::GET, "/ui/app.js"), Some("ui"));
        assert_eq!(label(Method::GET, "/v1/whoami"), Some("whoami"));
        assert_eq!(label(Method::GET, "/v1/rates"), Some("rates"));
        assert_eq!(label(Method::POST, "/"), None);
        assert_eq!(label(Method::GET, "/ui/a/b"), None);
        // A method the endpoint does not serve, or no endpoint at all: logged as `unknown`.
        assert_eq!(label(Method::PUT, "/v1/queues/orders/lease"), None);
        assert_eq!(label(Method::GET, "/v1/nowhere"), None);
    }
}
