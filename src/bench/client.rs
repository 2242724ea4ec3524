//! A minimal HTTP/1.1 client: one keep-alive connection, one `POST` at a time.
//!
//! The load generator shares the machine (often 2 cores) with the server it measures, so its own
//! cost per request must stay small. It needs only a JSON `POST` and a response that carries a
//! `Content-Length`, which outboxd always sends because its bodies are fully buffered. So a request
//! is written as one buffer and only the status line and the three headers the bench acts on are
//! parsed. Chunked responses, redirects and pipelining are out of scope and reported as errors.
//!
//! Reads and writes use `readable`/`try_read` and `writable`/`try_write`, which tokio offers without
//! its `io-util` feature; the crate does not enable that feature.

use std::fmt;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;

/// Largest response head (status line and headers) accepted.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest response body accepted: a lease of 1000 messages of the 4 MiB message maximum, with room
/// for base64 and JSON escaping. A sanity bound against a corrupt `Content-Length`.
const BODY_BYTES_MAX: u64 = 6 * 1024 * 1024 * 1024;
/// Bytes read per `try_read` call; a typical lease reply of 100 messages is about 45 KiB.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a request got no usable response.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    /// No complete response within the request timeout.
    Timeout(Duration),
    /// The response was not the HTTP/1.1 subset this client reads; the text says how.
    Malformed(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(error) => write!(f, "{error}"),
            ClientError::Closed => write!(f, "the server closed the connection mid-response"),
            ClientError::Timeout(limit) => write!(f, "no response within {limit:?}"),
            ClientError::Malformed(text) => write!(f, "malformed response: {text}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> Self {
        ClientError::Io(error)
    }
}

/// One response: status, the `Retry-After` seconds if any, and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub retry_after_s: Option<u64>,
    pub body: Vec<u8>,
}

/// The parts of a response head the client acts on.
struct Head {
    status: u16,
    content_length: usize,
    retry_after_s: Option<u64>,
    close: bool,
}

/// A keep-alive connection to one server.
pub struct Connection {
    /// `host:port`, used to (re)connect and as the `Host` header.
    authority: String,
    /// `None` after the server announced `Connection: close`; the next request reconnects.
    stream: Option<TcpStream>,
    /// Bytes read and not yet consumed live in `read_buffer[..filled]`; the buffer is only zeroed
    /// when it grows, not on every read.
    read_buffer: Vec<u8>,
    filled: usize,
    /// Reused to assemble each request.
    request: Vec<u8>,
    timeout: Duration,
    /// `Authorization: Bearer <token>\r\n`, or empty.
    authorization: String,
}

impl Connection {
    /// Connects to `authority` (`host:port`); each request must complete within `timeout` and
    /// carries `token`, if given, as a bearer token.
    pub async fn connect(
        authority: &str,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<Connection, ClientError> {
        let mut connection = Connection {
            authority: authority.to_string(),
            stream: None,
            read_buffer: vec![0; READ_CHUNK_BYTES],
            filled: 0,
            request: Vec::with_capacity(64 * 1024),
            timeout,
            authorization: token
                .map(|token| format!("Authorization: Bearer {token}\r\n"))
                .unwrap_or_default(),
        };
        connection.reconnect().await?;
        Ok(connection)
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let stream = TcpStream::connect(&self.authority).await?;
        // Requests are written whole, so Nagle would only add delay.
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        self.filled = 0;
        Ok(())
    }

    /// Sends `POST path` with a JSON `body` and reads the whole response.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Response, ClientError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(path, body)).await {
            Ok(result) => result,
            Err(_) => {
                // The response may still arrive later and would be read as the next one's.
                self.stream = None;
                Err(ClientError::Timeout(timeout))
            }
        }
    }

    async fn exchange(&mut self, path: &str, body: &[u8]) -> Result<Response, ClientError> {
        if self.stream.is_none() {
            self.reconnect().await?;
        }
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.authority,
                self.authorization,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        self.write_request().await?;
        let head_bytes = self.read_head().await?;
        let head = parse_head(&self.read_buffer[..head_bytes])?;
        let body = self.read_body(head_bytes, head.content_length).await?;
        if head.close {
            self.stream = None;
        }
        Ok(Response { status: head.status, retry_after_s: head.retry_after_s, body })
    }

    async fn write_request(&mut self) -> Result<(), ClientError> {
        let stream = self.stream.as_ref().ok_or(ClientError::Closed)?;
        let mut written = 0;
        while written < self.request.len() {
            stream.writable().await?;
            match stream.try_write(&self.request[written..]) {
                Ok(count) => written += count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Reads until the buffer holds a complete head; returns its length including the blank line.
    async fn read_head(&mut self) -> Result<usize, ClientError> {
        let mut searched = 0;
        loop {
            if let Some(end) = find_head_end(&self.read_buffer[..self.filled], searched) {
                return Ok(end);
            }
            // The terminator may straddle two reads, so the next search restarts 3 bytes back.
            searched = self.filled.saturating_sub(3);
            if self.filled >= HEAD_BYTES_MAX {
                return Err(ClientError::Malformed(format!(
                    "response head longer than {HEAD_BYTES_MAX} bytes"
                )));
            }
            self.read_more().await?;
        }
    }

    /// Reads until `content_length` body bytes follow the head, returns them and keeps any excess.
    async fn read_body(
        &mut self,
        head_bytes: usize,
        content_length: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let end = head_bytes + content_length;
        while self.filled < end {
            self.read_more().await?;
        }
        let body = self.read_buffer[head_bytes..end].to_vec();
        self.read_buffer.copy_within(end..self.filled, 0);
        self.filled -= end;
        Ok(body)
    }

    /// Reads at least one more byte into the buffer, growing it when full.
    async fn read_more(&mut self) -> Result<(), ClientError> {
        if self.read_buffer.len() - self.filled < READ_CHUNK_BYTES {
            let grown = self.read_buffer.len() + READ_CHUNK_BYTES;
            self.read_buffer.resize(grown, 0);
        }
        let stream = self.stream.as_ref().ok_or(ClientError::Closed)?;
        loop {
            stream.readable().await?;
            match stream.try_read(&mut self.read_buffer[self.filled..]) {
                Ok(0) => {
                    self.stream = None;
                    return Err(ClientError::Closed);
                }
                Ok(count) => {
                    self.filled += count;
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// The end of the head (just past `\r\n\r\n`) if `bytes` holds one, searching from `from`.
fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|position| from + position + 4)
}

/// Parses the status line and the headers the client needs.
fn parse_head(bytes: &[u8]) -> Result<Head, ClientError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ClientError::Malformed("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {status_line:?}")))?;
    let mut head = Head { status, content_length: 0, retry_after_s: None, close: false };
    let mut has_length = false;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::Malformed(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value
                .parse::<u64>()
                .ok()
                .filter(|&length| length <= BODY_BYTES_MAX)
                .and_then(|length| usize::try_from(length).ok())
                .ok_or_else(|| ClientError::Malformed(format!("Content-Length {value:?}")))?;
            has_length = true;
        } else if name.eq_ignore_ascii_case("retry-after") {
            head.retry_after_s = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(format!(
                "Transfer-Encoding {value:?} is not supported"
            )));
        }
    }
    if !has_length && status != 204 && status != 304 {
        return Err(ClientError::Malformed("no Content-Length".into()));
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_end_is_found_across_a_split_terminator() {
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let head_end = bytes.len() - 2;
        assert_eq!(find_head_end(bytes, 0), Some(head_end));
        // A first read that stops inside the terminator finds nothing; the next search starts 3
        // bytes before where that read ended, as `read_head` does, and finds it.
        let first_read = &bytes[..head_end - 1];
        assert_eq!(find_head_end(first_read, 0), None);
        assert_eq!(find_head_end(bytes, first_read.len() - 3), Some(head_end));
    }

    #[test]
    fn head_parsing_reads_status_length_retry_and_close() {
        let head = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
        )
        .expect("valid head");
        assert_eq!(head.status, 503);
        assert_eq!(head.content_length, 17);
        assert_eq!(head.retry_after_s, Some(1));
        assert!(head.close);
    }

    #[test]
    fn unsupported_heads_are_errors() {
        for head in [
            &b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(parse_head(head).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
