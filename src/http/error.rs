//! API errors: every refusal the HTTP API can give, as a status and a stable JSON body.
//!
//! The body is `{"error": {"code", "message", "hint", "details"?}}`. `code` is stable and
//! machine-readable; `message` says what was wrong, `hint` how to fix it. Internal details (I/O
//! errors, paths) go to the log, not to the client.

use hyper::StatusCode;
use serde::Serialize;

/// One bad message of a batch, or one bad field.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Detail {
    /// Position of the message in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field at fault (a JSON path such as `headers.kind`).
    pub field: String,
    pub message: String,
}

/// A refusal, ready to be sent.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: String,
    pub details: Vec<Detail>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u32>,
    /// The methods for an `Allow` header (on 405).
    pub allow: Option<&'static str>,
    /// Whether to send `WWW-Authenticate: Bearer` (on 401).
    pub authenticate: bool,
    /// Whether to send `Connection: close`: the refusal came before a request body was read, so
    /// the connection cannot carry another request.
    pub close_connection: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    hint: &'a str,
    #[serde(skip_serializing_if = "<[Detail]>::is_empty")]
    details: &'a [Detail],
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String, hint: &str) -> ApiError {
        ApiError {
            status,
            code,
            message,
            hint: hint.to_string(),
            details: Vec::new(),
            retry_after_s: None,
            allow: None,
            authenticate: false,
            close_connection: false,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                hint: &self.hint,
                details: &self.details,
            },
        };
        serde_json::to_vec(&body).expect("error bodies serialize")
    }

    pub fn invalid_json(message: String) -> ApiError {
        let hint = "Send a UTF-8 JSON object as the request body; see docs/api.md for its fields.";
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message, hint)
    }

    pub fn invalid_request(message: String) -> ApiError {
        let hint = "Fix the named field; docs/api.md lists every field with its type and range.";
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message, hint)
    }

    pub fn invalid_batch(details: Vec<Detail>, too_large: bool) -> ApiError {
        let count = details.len();
        let (status, code) = if too_large {
            (StatusCode::PAYLOAD_TOO_LARGE, "message_too_large")
        } else {
            (StatusCode::BAD_REQUEST, "invalid_batch")
        };
        let message = format!("{count} message(s) of the batch are invalid; nothing was stored");
        let hint = "Fix every message listed in details (by index and field) and send the whole \
                    batch again.";
        ApiError { details, ..ApiError::new(status, code, message, hint) }
    }

    pub fn batch_too_large(count: usize, count_max: u32) -> ApiError {
        let message = format!("the batch holds {count} messages; at most {count_max} are allowed");
        let hint = "Split the batch into several requests (the limit is --batch-count-max).";
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", message, hint)
    }

    pub fn payload_too_large(bytes_max: u64) -> ApiError {
        let message = format!("the request body is larger than {bytes_max} bytes");
        let hint = "Send fewer or smaller messages per request (the limit is --request-bytes-max).";
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message, hint)
    }

    pub fn invalid_queue_name(name: &str) -> ApiError {
        let shown: String = name.chars().take(64).collect();
        // `.` and `..` are made of allowed characters, so the general message would not say
        // what is wrong with them.
        let message = if name == "." || name == ".." {
            format!(
                "queue name {shown:?} is not allowed: \".\" and \"..\" are path segments that \
                 URL-normalising clients remove, so no queue may have them as its name"
            )
        } else {
            format!("queue name {shown:?} is not 1-128 characters of [A-Za-z0-9._-]")
        };
        let hint = "Use letters, digits, '.', '_' and '-' only, at most 128 of them, and not \
                    \".\" or \"..\" alone.";
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_queue_name", message, hint)
    }

    pub fn invalid_idempotency_key() -> ApiError {
        let message = "the Idempotency-Key header must be 1-255 visible ASCII characters".into();
        let hint = "Use a UUID or another printable key of at most 255 characters.";
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message, hint)
    }

    pub fn invalid_id(text: &str) -> ApiError {
        let shown: String = text.chars().take(64).collect();
        let message = format!("{shown:?} is not a message id");
        let hint = "Message ids are the 16 hex digits returned by enqueue.";
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", message, hint)
    }

    pub fn not_found(path: &str) -> ApiError {
        let shown: String = path.chars().take(128).collect();
        let message = format!("no endpoint at {shown:?}");
        let hint = "See docs/api.md for the endpoints; they start with /v1/.";
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message, hint)
    }

    /// `allowed` is the `Allow` header's value, e.g. `GET, PUT`.
    pub fn method_not_allowed(method: &str, allowed: &'static str) -> ApiError {
        let message = format!("{method} is not allowed here");
        let hint = format!("Use {allowed}.");
        let error =
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message, &hint);
        ApiError { allow: Some(allowed), ..error }
    }

    /// A request without an `Authorization: Bearer` header to a server that has API tokens.
    pub fn unauthorized() -> ApiError {
        let message = "this server requires an API token; send it as the header \
                       `Authorization: Bearer <secret>`"
            .to_string();
        let hint = "Ask the server's operator for a token (the [[tokens]] entries of its config \
                    file) and send its secret with every request.";
        let error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message, hint);
        ApiError { authenticate: true, ..error }
    }

    /// A bearer secret that matches no configured token. The secret is not repeated.
    pub fn invalid_token() -> ApiError {
        let message = "the API token sent in the Authorization header is not one this server \
                       knows"
            .to_string();
        let hint = "Check the secret (the whole value after `Bearer `, without quotes or spaces); \
                    tokens are read from the config file when the server starts.";
        let error = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message, hint);
        ApiError { authenticate: true, ..error }
    }

    /// A known token that lacks the role or the queue the request needs; `message` names the
    /// token, what it holds and what was needed.
    pub fn forbidden(message: String) -> ApiError {
        let hint = "Use a token whose roles and queues cover this request, or widen this token's \
                    [[tokens]] entry in the server's config file and restart the server.";
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message, hint)
    }

    pub fn cross_site(site: &str) -> ApiError {
        let message = format!(
            "a web page of another site sent this request (Sec-Fetch-Site: {site}); outboxd \
             refuses changes sent by pages it did not serve"
        );
        let hint =
            "Send it from a program (which sends no Sec-Fetch-Site header), from the outbox \
                    page this server serves, or through a proxy that serves the page and the API \
                    under one origin.";
        ApiError::new(StatusCode::FORBIDDEN, "cross_site_request", message, hint)
    }

    pub fn message_not_found(id: &str) -> ApiError {
        let message = format!("no message with id {id}");
        let hint = "Check the id; delivered messages are removed after their retention period.";
        ApiError::new(StatusCode::NOT_FOUND, "message_not_found", message, hint)
    }

    pub fn message_leased(id: &str) -> ApiError {
        let message = format!("message {id} is leased by a consumer");
        let hint = "Wait until the consumer acks or nacks it or its lease expires (see \
                    lease_expires_at in GET /v1/messages/{id}), then try again.";
        ApiError::new(StatusCode::CONFLICT, "message_leased", message, hint)
    }

    pub fn invalid_state(id: &str, state: &str) -> ApiError {
        let message = format!("message {id} is {state}; this action does not apply to it");
        let hint = "Retry applies to dead and retrying messages; edit and reschedule to messages \
                    that are not leased or delivered. Check the state with GET /v1/messages/{id}.";
        ApiError::new(StatusCode::CONFLICT, "invalid_state", message, hint)
    }

    pub fn queue_not_found(name: &str) -> ApiError {
        let message = format!("no queue named {name:?}");
        let hint = "A queue comes into being with its first enqueued message or a PUT of its \
                    settings; GET /v1/queues lists them all.";
        ApiError::new(StatusCode::NOT_FOUND, "queue_not_found", message, hint)
    }

    pub fn idempotency_conflict(key: &str) -> ApiError {
        let message = format!(
            "Idempotency-Key {key:?} was already used with a different request body in this queue"
        );
        let hint =
            "Use a new key for a new batch; reuse a key only to retry the identical request.";
        ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message, hint)
    }

    pub fn backup_in_progress() -> ApiError {
        let message = "a backup of this server is already being taken".into();
        let hint = "The server streams one backup at a time: wait for the running one to finish \
                    (or its client to disconnect), then try again.";
        let error = ApiError::new(StatusCode::CONFLICT, "backup_in_progress", message, hint);
        ApiError { retry_after_s: Some(1), ..error }
    }

    pub fn overloaded() -> ApiError {
        let message = "the server's write queue is full".into();
        let hint = "Retry after the Retry-After delay, with the same Idempotency-Key.";
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message, hint);
        ApiError { retry_after_s: Some(1), ..error }
    }

    /// The cause (with paths) is logged by the storage thread; the client learns only what to do.
    pub fn storage_failed() -> ApiError {
        let message = "the server stopped accepting writes after a storage failure; this \
                       request's outcome is unknown"
            .to_string();
        let hint = "Check the disk (space, errors in the server log), restart outboxd, then retry \
                    with the same Idempotency-Key.";
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", message, hint)
    }

    pub fn insufficient_storage(free_bytes: u64) -> ApiError {
        let message = format!(
            "the data directory's disk has only {free_bytes} bytes free, under the server's \
             watermark; nothing was stored"
        );
        let hint =
            "Free disk space (or lower --disk-free-min-bytes). Leases, acks and reads still \
                    work, and enqueues resume by themselves once space is free; retry with the \
                    same Idempotency-Key.";
        let error =
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", message, hint);
        ApiError { retry_after_s: Some(5), ..error }
    }

    pub fn request_timeout(idle_ms: u64) -> ApiError {
        let message = format!("the request body stalled for more than {idle_ms} ms");
        let hint = "Send the whole body without long pauses, then retry.";
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message, hint)
    }

    pub fn shutting_down() -> ApiError {
        let message = "the server is shutting down".into();
        let hint = "Retry against the restarted server with the same Idempotency-Key.";
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message, hint);
        ApiError { retry_after_s: Some(1), ..error }
    }

    pub fn internal(context: &str) -> ApiError {
        let message = format!("internal error while {context}");
        let hint = "See the server log for the cause; retry later.";
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message, hint)
    }
}

impl From<crate::engine::CommitError> for ApiError {
    fn from(error: crate::engine::CommitError) -> Self {
        use crate::engine::CommitError;
        match error {
            CommitError::StorageFailed(_) => ApiError::storage_failed(),
            // Too much waits for the storage thread (or for a checkpoint): the same 503.
            CommitError::Overloaded => ApiError::overloaded(),
            CommitError::ShuttingDown => ApiError::shutting_down(),
            CommitError::DiskFull { free_bytes } => ApiError::insufficient_storage(free_bytes),
            // Handlers read again on a stale record; one that still loses the race is busy.
            CommitError::Stale => ApiError::overloaded(),
        }
    }
}
