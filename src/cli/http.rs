//! The client's HTTP: one blocking `ureq` agent, the bearer token, and the mapping of every way a
//! request can fail (refused connection, timeout, API error body, a reply that is not the API's)
//! onto [`CliError`].
//!
//! Replies are read whole, up to [`RESPONSE_BYTES_MAX`]; the event stream is handed out as a
//! reader instead, since it never ends by itself.

use super::{CliError, GlobalArgs};
use serde::Deserialize;
use std::io::{BufReader, Read};
use std::time::Duration;

/// Largest reply body read, in bytes: a lease of 1000 messages of 1 MiB each fits several times
/// over in the default configuration (8 MiB requests, so bodies mostly far smaller).
pub const RESPONSE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// How much of a reply that is not an API error body is quoted in the error.
const FOREIGN_BODY_QUOTED_CHARS_MAX: usize = 200;

/// How long the event stream may stay silent before the client takes the connection for dead.
/// The server sends a keep-alive comment every 15 s, so this allows two of them to go missing.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// The user agent of every request: `outboxd-cli/<version>`.
const USER_AGENT: &str = concat!("outboxd-cli/", env!("CARGO_PKG_VERSION"));

/// A connection to one server: base URL, token, and the timeout of one request.
pub struct Client {
    agent: ureq::Agent,
    /// Agent for the event stream: no deadline for the whole reply, an idle timeout instead.
    stream_agent: ureq::Agent,
    /// `--url` without a trailing slash.
    base_url: String,
    /// `base_url` with any password replaced by `***`: the form every message shows.
    display_url: String,
    /// `Bearer <token>`, when a token was given. Never printed.
    authorization: Option<String>,
    /// How long one request may take from connect to the end of its reply.
    timeout: Duration,
}

/// A successful reply's body, as text.
pub struct Reply {
    pub text: String,
}

impl Reply {
    /// Parses the body as `T`, or fails saying the reply breaks the API's contract.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self, what: &str) -> Result<T, CliError> {
        serde_json::from_str(&self.text).map_err(|error| {
            CliError::Protocol(format!(
                "the reply to {what} is not the JSON the API documents: {error}"
            ))
        })
    }
}

/// An error the API answered with: `{"error": {"code", "message", "hint", "details"}}`.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    /// The stable error code; `None` when the reply had no API error body (a proxy, another server).
    pub code: Option<String>,
    pub message: String,
    pub hint: Option<String>,
    /// Per-message faults of an enqueue.
    pub details: Vec<Detail>,
}

/// One fault of a batch, by the message's index in the request.
#[derive(Debug, Deserialize)]
pub struct Detail {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub message: String,
    /// Where the message came from in the user's input (`line 12`), when the caller knows.
    #[serde(skip)]
    pub position: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    details: Vec<Detail>,
}

impl Client {
    /// Checks `--url` and `--token` and builds the agents.
    pub fn new(global: &GlobalArgs) -> Result<Client, CliError> {
        let base_url = global.url.trim_end_matches('/').to_string();
        let display_url = redact_password(&base_url);
        let Some(rest) = base_url.strip_prefix("http://") else {
            return Err(CliError::Usage(format!(
                "--url {:?} must start with http:// (this client does not speak TLS; put a \
                 TLS-terminating proxy in front of it or use http://host:port)",
                redact_password(&global.url)
            )));
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(CliError::Usage(format!(
                "--url {:?} has no host; give it as http://host:port, such as http://127.0.0.1:7070",
                redact_password(&global.url)
            )));
        }
        let authorization = match &global.token {
            Some(token) => Some(format!("Bearer {}", token.check()?)),
            None => None,
        };
        let timeout = Duration::from_millis(global.timeout_ms);
        let agent = ureq::AgentBuilder::new()
            .user_agent(USER_AGENT)
            .timeout_connect(timeout)
            .redirects(0)
            .build();
        let stream_agent = ureq::AgentBuilder::new()
            .user_agent(USER_AGENT)
            .timeout_connect(timeout)
            .timeout_read(STREAM_IDLE_TIMEOUT)
            .timeout_write(timeout)
            .redirects(0)
            .build();
        Ok(Client { agent, stream_agent, base_url, display_url, authorization, timeout })
    }

    /// The base URL as messages show it (without its password).
    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// `GET path` with query parameters (percent-encoded).
    pub fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Reply, CliError> {
        self.call(self.request("GET", path, query, Duration::ZERO), None)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Reply, CliError> {
        self.call(self.request("DELETE", path, &[], Duration::ZERO), None)
    }

    /// `POST path` with an optional body and extra headers; `extra_time` is added to the request
    /// timeout (a long poll's wait).
    pub fn post(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
        extra_time: Duration,
    ) -> Result<Reply, CliError> {
        let mut request = self.request("POST", path, query, extra_time);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        self.call(request, Some(body.unwrap_or(b"")))
    }

    /// Opens `GET path_and_query` as a stream, resuming after `last_event_id` when given.
    ///
    /// The query is taken as is: the event stream splits its lists on raw commas.
    pub fn open_stream(
        &self,
        path_and_query: &str,
        last_event_id: Option<u64>,
    ) -> Result<BufReader<Box<dyn Read + Send + Sync>>, CliError> {
        let url = format!("{}{}", self.base_url, path_and_query);
        let mut request = self.stream_agent.get(&url).set("Accept", "text/event-stream");
        if let Some(authorization) = &self.authorization {
            request = request.set("Authorization", authorization);
        }
        if let Some(id) = last_event_id {
            request = request.set("Last-Event-ID", &id.to_string());
        }
        let response = match request.call() {
            Ok(response) if is_success(response.status()) => response,
            Ok(response) => return Err(self.status_failure(response)),
            Err(error) => return Err(self.failure(error)),
        };
        // A proxy's login page or another server's reply would otherwise be read as an endless
        // stream without a single event.
        if response.content_type() != "text/event-stream" {
            return Err(CliError::Protocol(format!(
                "the event stream at {} answered with Content-Type {:?}, not text/event-stream",
                self.display_url,
                response.header("Content-Type").unwrap_or("(none)")
            )));
        }
        Ok(BufReader::new(response.into_reader()))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        extra_time: Duration,
    ) -> ureq::Request {
        let mut request = self
            .agent
            .request(method, &format!("{}{}", self.base_url, path))
            .timeout(self.timeout.saturating_add(extra_time));
        for (name, value) in query {
            request = request.query(name, value);
        }
        if let Some(authorization) = &self.authorization {
            request = request.set("Authorization", authorization);
        }
        request
    }

    fn call(&self, request: ureq::Request, body: Option<&[u8]>) -> Result<Reply, CliError> {
        let mut sent = SentBody { rest: body.unwrap_or_default(), finished: body.is_none() };
        let result = match body {
            Some(bytes) => request
                .set("Content-Type", "application/json")
                .set("Content-Length", &bytes.len().to_string())
                .send(&mut sent),
            None => request.call(),
        };
        match result {
            Ok(response) if is_success(response.status()) => {
                let text = read_text(response).map_err(|error| self.read_failure(error))?;
                Ok(Reply { text })
            }
            Ok(response) => Err(self.status_failure(response)),
            Err(ureq::Error::Transport(transport)) if !sent.finished => {
                self.body_write_failure(&transport, body.map_or(0, <[u8]>::len))
            }
            Err(error) => Err(self.failure(error)),
        }
    }

    /// A reply outside 2xx that `ureq` did not turn into an error: a redirect (the agents follow
    /// none), or an unusual status.
    fn status_failure(&self, response: ureq::Response) -> CliError {
        let status = response.status();
        if (300..400).contains(&status) {
            let location = response.header("Location").unwrap_or("(no Location header)");
            return CliError::Api(ApiFailure {
                status,
                code: None,
                message: format!(
                    "the server at {} redirects to {location}; this client does not follow \
                     redirects",
                    self.display_url
                ),
                hint: Some(
                    "point --url (or OUTBOXD_URL) at the outboxd server itself, not at an \
                     address that redirects to it"
                        .to_string(),
                ),
                details: Vec::new(),
            });
        }
        match read_text(response) {
            Ok(text) => CliError::Api(api_failure(status, &text)),
            Err(error) => self.read_failure(error),
        }
    }

    /// The connection broke before the whole request body was written. The usual cause is a
    /// server that refused the request from its head (`413`: larger than its
    /// `--request-bytes-max`) and closed the connection; a timeout stays a timeout.
    fn body_write_failure(
        &self,
        transport: &ureq::Transport,
        body_bytes: usize,
    ) -> Result<Reply, CliError> {
        use std::error::Error as _;
        let io = transport.source().and_then(|source| source.downcast_ref::<std::io::Error>());
        match io {
            Some(io) if !is_timeout(io) && transport.kind() == ureq::ErrorKind::Io => {
                Err(CliError::BodyRefused {
                    url: self.display_url.clone(),
                    body_bytes: body_bytes as u64,
                    detail: io.to_string(),
                })
            }
            _ => Err(self.transport_failure(transport)),
        }
    }

    /// Turns a failed request into the error the user sees.
    fn failure(&self, error: ureq::Error) -> CliError {
        match error {
            ureq::Error::Status(status, response) => match read_text(response) {
                Ok(text) => CliError::Api(api_failure(status, &text)),
                Err(error) => self.read_failure(error),
            },
            ureq::Error::Transport(transport) => self.transport_failure(&transport),
        }
    }

    fn transport_failure(&self, transport: &ureq::Transport) -> CliError {
        use std::error::Error as _;
        let url = self.display_url.clone();
        if let Some(io) =
            transport.source().and_then(|source| source.downcast_ref::<std::io::Error>())
        {
            if is_timeout(io) {
                return CliError::Timeout { url, timeout_ms: self.timeout.as_millis() as u64 };
            }
        }
        match transport.kind() {
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                CliError::Usage(format!(
                    "--url {url:?} is not a valid URL; give it as http://host:port, such as \
                 http://127.0.0.1:7070"
                ))
            }
            _ => {
                let detail = transport
                    .source()
                    .map(|source| source.to_string())
                    .or_else(|| transport.message().map(str::to_string))
                    .unwrap_or_else(|| transport.kind().to_string());
                CliError::Connection { url, detail }
            }
        }
    }

    fn read_failure(&self, error: std::io::Error) -> CliError {
        if is_timeout(&error) {
            return CliError::Timeout {
                url: self.display_url.clone(),
                timeout_ms: self.timeout.as_millis() as u64,
            };
        }
        if error.kind() == std::io::ErrorKind::InvalidData {
            return CliError::Protocol(format!("reading the reply: {error}"));
        }
        CliError::Connection {
            url: self.display_url.clone(),
            detail: format!("the connection broke while reading the reply: {error}"),
        }
    }
}

/// A request body handed to `ureq` as a reader, so that the client learns whether all of it was
/// written: `ureq` reads the next piece only after writing the previous one, so a body read to
/// its end was written whole, and a failure before that happened while writing it.
struct SentBody<'a> {
    rest: &'a [u8],
    /// Set once `ureq` has read the end of the body.
    finished: bool,
}

impl Read for SentBody<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.rest.read(buffer)?;
        if read == 0 {
            self.finished = true;
        }
        Ok(read)
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// `url` with the password of its `user:password@` part replaced by `***`, for messages.
pub fn redact_password(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***@{host}{path}"),
        None => url.to_string(),
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// Reads a reply body as UTF-8, refusing one larger than [`RESPONSE_BYTES_MAX`].
fn read_text(response: ureq::Response) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    response.into_reader().take(RESPONSE_BYTES_MAX + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > RESPONSE_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the reply is larger than {RESPONSE_BYTES_MAX} bytes; ask for fewer messages at \
                 once (--max, --limit)"
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|error| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the reply is not UTF-8: {error}"),
        )
    })
}

/// Reads the API's error body; a reply without one (from a proxy, or another server on that port)
/// is quoted instead.
fn api_failure(status: u16, text: &str) -> ApiFailure {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ApiFailure {
            status,
            code: Some(body.error.code),
            message: body.error.message,
            hint: body.error.hint,
            details: body.error.details,
        },
        Err(_) => {
            let quoted: String = text.chars().take(FOREIGN_BODY_QUOTED_CHARS_MAX).collect();
            let message = if quoted.trim().is_empty() {
                "the reply has no body".to_string()
            } else {
                format!("the reply is not an outboxd error: {:?}", quoted.trim())
            };
            let hint = "Check that --url points at an outboxd server (and not at a proxy that \
                        refused the request)."
                .to_string();
            ApiFailure { status, code: None, message, hint: Some(hint), details: Vec::new() }
        }
    }
}

/// Percent-encodes one path segment (a queue name or a message id), so that whatever the user
/// typed reaches the server as one segment, which then says what is wrong with it.
///
/// `.` and `..` cannot be sent as segments (URLs resolve them), and are not valid names anyway.
pub fn segment(text: &str, what: &str) -> Result<String, CliError> {
    if text == "." || text == ".." {
        return Err(CliError::Usage(format!(
            "{what} {text:?} is not valid: `.` and `..` cannot be sent as part of a URL path"
        )));
    }
    Ok(percent_encode(text))
}

/// Percent-encodes everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`.
pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_and_foreign_replies_quoted() {
        let text = r#"{"error":{"code":"invalid_queue_name","message":"bad","hint":"fix it"}}"#;
        let failure = api_failure(400, text);
        assert_eq!(failure.code.as_deref(), Some("invalid_queue_name"));
        assert_eq!(failure.hint.as_deref(), Some("fix it"));
        let failure = api_failure(502, "<html>Bad Gateway</html>");
        assert_eq!(failure.code, None);
        assert!(failure.message.contains("Bad Gateway"), "{failure:?}");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(redact_password("http://ann:hunter2@host:7070/x"), "http://ann:***@host:7070/x");
        assert_eq!(redact_password("http://a:b:c@d@host"), "http://a:***@host");
        assert_eq!(redact_password("http://ann@host/p@q"), "http://ann@host/p@q");
        assert_eq!(redact_password("http://host:7070"), "http://host:7070");
    }

    #[test]
    fn segments_are_encoded_and_dot_segments_refused() {
        assert_eq!(percent_encode("emails.v2_x-y"), "emails.v2_x-y");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        assert!(segment("..", "queue").is_err());
        assert!(segment(".", "queue").is_err());
    }
}
