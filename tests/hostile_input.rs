//! Hostile HTTP input against the real binary: broken framing, slow and idle clients, invalid
//! UTF-8, pathological JSON, out-of-range numbers, duplicate keys and oversized headers.
//!
//! Goal: no input a client can send makes the server answer 5xx, hang, crash or lose data.
//! Every attack ends in a clear 4xx or a closed connection. A 4xx that the API sends carries
//! the JSON error body `{"error": {"code", "message", "hint"}}`; a refusal by the HTTP layer
//! itself (hyper: a malformed request line, 431 for oversized headers) may have an empty body,
//! and when it has one it must be the JSON error shape. Meanwhile other clients are served.
//!
//! Method: each test starts its own `outboxd` through `common::Server` and stores a canary
//! message before attacking. Attacks are written byte for byte over raw `std::net::TcpStream`s
//! with a read deadline, so a server that neither answers nor closes fails the test as hung.
//! Afterwards every test checks that the server answers /healthz, the canary is unchanged, its
//! queue counts are exactly as before, and the queue the refused attacks aimed at holds nothing.
//!
//! Budget: about 15 s of wall time; the slowloris test waits out the 10 s header read timeout
//! (HEADER_READ_TIMEOUT_MS in src/limits.rs) while the others run beside it.
//! `OUTBOXD_IDLE_CONNECTIONS` (default 2000) sets how many idle connections one test opens.
//!
//! Tests whose comment says "Regression" reproduce server bugs this suite found, now fixed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{assert_error, poll_until, Server};

/// Longest the server may take to answer or close a connection before the test calls it hung.
/// Generous: the server's own timeouts (10 s for a head or a paused body) come well before it on
/// any machine, and a server that hangs hangs for ever.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The queue that attacks aim at: a refused attack must not create it.
const ATTACK_QUEUE: &str = "attack";

/// The queue of the canary message stored before the attacks.
const CANARY_QUEUE: &str = "canary";

/// Depth of the nested-JSON attacks (the brief's 100,000 `[`).
const NESTING_DEPTH: usize = 100_000;

/// Idle connections opened by `many_idle_connections_do_not_lock_out_a_real_client`.
const IDLE_CONNECTIONS_DEFAULT: usize = 2000;

/// A response read off a raw socket.
struct RawResponse {
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Shows the body as text, so that failure messages are readable.
impl std::fmt::Debug for RawResponse {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RawResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// What the server did with one raw request.
#[derive(Debug)]
enum Outcome {
    Answered(RawResponse),
    /// The connection ended (EOF or reset) without a complete answer; the text says how.
    // Read only through `Debug`, in failure messages.
    #[allow(dead_code)]
    Closed(String),
}

/// A running server with a canary message stored before any attack.
struct Target {
    /// The process; dropping it kills the server and deletes its data directory.
    server: Server,
    /// Where raw attacks connect.
    address: SocketAddr,
    /// The id of the canary message, stored before any attack.
    canary_id: String,
    /// The canary queue's counts before any attack; they must not change.
    canary_counts: Value,
}

fn canary_message() -> Value {
    json!({"body": {"canary": "intact", "n": 42}, "headers": {"kind": "canary"}, "priority": 7})
}

impl Target {
    fn start(extra_args: &[&str]) -> Target {
        let server = Server::start(extra_args);
        let address = server
            .base_url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|error| panic!("base url {}: {error}", server.base_url));
        let ids = server.enqueue(CANARY_QUEUE, &json!([canary_message()]));
        let canary_counts = server.queue_counts(CANARY_QUEUE);
        assert_eq!(canary_counts["ready"], json!(1), "{canary_counts}");
        Target { server, address, canary_id: ids[0].clone(), canary_counts }
    }

    /// Sends raw bytes on a fresh connection and reads the outcome.
    fn send(&self, request: &[u8]) -> Outcome {
        exchange(self.address, request, false)
    }

    /// Asserts the server is alive and serving, the canary is as stored, and the refused attacks
    /// stored nothing.
    fn assert_intact(&self) {
        let health = self.server.get("/healthz");
        assert_eq!(health.status, 200, "after the attacks: {health:?}");
        assert_eq!(health.body, json!({"status": "ok"}));
        let message = self.server.get_message(&self.canary_id);
        let expected = canary_message();
        assert_eq!(message["state"], json!("ready"), "{message}");
        assert_eq!(message["body"], expected["body"], "{message}");
        assert_eq!(message["headers"], expected["headers"], "{message}");
        assert_eq!(message["priority"], expected["priority"], "{message}");
        assert_eq!(message["attempts"], json!(0), "{message}");
        assert_eq!(self.server.queue_counts(CANARY_QUEUE), self.canary_counts);
        let attack_queue = self.server.get(&format!("/v1/queues/{ATTACK_QUEUE}"));
        assert_error(&attack_queue, 404, "queue_not_found");
    }
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).expect("set write timeout");
    stream
}

/// Sends `request` on a new connection, optionally half-closes it, and reads the outcome.
fn exchange(address: SocketAddr, request: &[u8], half_close: bool) -> Outcome {
    let mut stream = connect(address);
    // A server may refuse before it has read everything; its answer is still there to read.
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_outcome(&mut stream)
}

/// Reads one response, or how the connection ended; panics if neither comes in time.
fn read_outcome(stream: &mut TcpStream) -> Outcome {
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(response) = parse_response(&received, false) {
            return Outcome::Answered(response);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return match parse_response(&received, true) {
                    Some(response) => Outcome::Answered(response),
                    None if received.is_empty() => Outcome::Closed("EOF".into()),
                    None => panic!(
                        "connection closed in the middle of a response: {:?}",
                        String::from_utf8_lossy(&received)
                    ),
                };
            }
            Ok(count) => received.extend_from_slice(&chunk[..count]),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "no answer and no close within {ANSWER_TIMEOUT:?}: the server hangs \
                     (received {:?})",
                    String::from_utf8_lossy(&received)
                )
            }
            Err(error) => return Outcome::Closed(format!("{error}")),
        }
    }
}

/// Parses a complete response from `bytes`; `at_eof` takes a body without Content-Length as
/// everything up to the close.
fn parse_response(bytes: &[u8], at_eof: bool) -> Option<RawResponse> {
    let head_end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let body = &bytes[head_end + 4..];
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let body = match length {
        Some(length) if body.len() >= length => body[..length].to_vec(),
        None if at_eof => body.to_vec(),
        _ => return None,
    };
    Some(RawResponse { status, headers, body })
}

/// The `error` object of a JSON error body, with its shape checked.
fn error_object(response: &RawResponse, what: &str) -> Value {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "{what}: error body is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&response.body)
        )
    });
    let error = body["error"].clone();
    for field in ["code", "message", "hint"] {
        let text = error[field]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: error.{field} is not a string: {body}"));
        assert!(!text.trim().is_empty(), "{what}: error.{field} is empty: {body}");
    }
    error
}

/// Asserts that the API refused with `status` and `code`; returns the `error` object.
fn assert_api_error(outcome: &Outcome, status: u16, code: &str, what: &str) -> Value {
    let Outcome::Answered(response) = outcome else {
        panic!("{what}: expected {status} {code}, but the connection closed: {outcome:?}");
    };
    assert_eq!(response.status, status, "{what}: {outcome:?}");
    let content_type = response.header("content-type");
    assert_eq!(content_type, Some("application/json"), "{what}: {outcome:?}");
    let error = error_object(response, what);
    assert_eq!(error["code"], json!(code), "{what}: {error}");
    error
}

/// Asserts a refusal: a closed connection, or a 4xx whose body, if any, is the JSON error shape.
fn assert_refused(outcome: &Outcome, what: &str) {
    match outcome {
        Outcome::Closed(_) => {}
        Outcome::Answered(response) => {
            assert!(
                (400..500).contains(&response.status),
                "{what}: expected a 4xx or a close, got {outcome:?}"
            );
            if !response.body.is_empty() {
                error_object(response, what);
            }
        }
    }
}

/// A complete POST with a Content-Length; `extra_headers` are whole lines ending in CRLF.
fn post(path: &str, extra_headers: &[u8], body: &[u8]) -> Vec<u8> {
    request_with_body("POST", path, extra_headers, body)
}

/// A complete request with a Content-Length; `extra_headers` are whole lines ending in CRLF.
fn request_with_body(method: &str, path: &str, extra_headers: &[u8], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(extra_headers);
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

fn attack_path(action: &str) -> String {
    format!("/v1/queues/{ATTACK_QUEUE}/{action}")
}

/// A valid one-message enqueue body, for attacks that break something else.
const VALID_ENQUEUE: &[u8] = br#"{"messages": [{"body": {"attack": true}}]}"#;

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

#[test]
fn truncated_bodies_are_refused_and_store_nothing() {
    let target = Target::start(&[]);
    let partial = &VALID_ENQUEUE[..20];
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        attack_path("messages"),
        VALID_ENQUEUE.len() + 1000
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(partial);

    // Half-closed: the server sees the end of the body early and can still answer.
    let outcome = exchange(target.address, &request, true);
    assert_refused(&outcome, "Content-Length beyond the bytes sent, then half-close");
    if let Outcome::Answered(_) = outcome {
        assert_api_error(&outcome, 400, "invalid_json", "truncated body");
    }

    // Closed outright: nobody hears an answer; the server must just drop the request.
    let mut stream = connect(target.address);
    stream.write_all(&request).expect("send truncated body");
    drop(stream);

    // A chunked body cut in the middle of a chunk.
    let mut chunked = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        attack_path("messages"),
        VALID_ENQUEUE.len()
    )
    .into_bytes();
    chunked.extend_from_slice(partial);
    assert_refused(&exchange(target.address, &chunked, true), "chunk cut short, then half-close");
    target.assert_intact();
}

#[test]
fn malformed_framing_is_refused() {
    let target = Target::start(&[]);
    let path = attack_path("messages");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "negative Content-Length",
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").into_bytes(),
        ),
        (
            "Content-Length over u64",
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "Content-Length that is not a number",
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
                .into_bytes(),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
            )
            .into_bytes(),
        ),
        ("binary garbage", b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()),
        ("HTTP/0.9 request", b"GET /healthz\r\n\r\n".to_vec()),
        (
            "unknown HTTP version",
            b"GET /healthz HTTP/7.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in &cases {
        assert_refused(&target.send(request), what);
    }

    // Declared over --request-bytes-max: refused from the header alone, without a body (the body
    // is never sent, so only a server that decides from the header can answer at all).
    let oversized = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        64u64 << 30
    );
    let outcome = target.send(oversized.as_bytes());
    assert_api_error(&outcome, 413, "payload_too_large", "64 GiB Content-Length");
    target.assert_intact();
}

#[test]
fn slowloris_headers_are_cut_off_while_other_clients_are_served() {
    let target = Target::start(&[]);
    let mut stream = connect(target.address);
    let mut writer = stream.try_clone().expect("clone stream");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    // Enough header bytes to drip for far longer than the timeout; the head never ends.
    let drip = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {}",
        attack_path("messages"),
        "a".repeat(200)
    );
    let started = Instant::now();
    let dripper = thread::spawn(move || {
        for byte in drip.bytes() {
            if stop_writer.load(Ordering::Relaxed) || writer.write_all(&[byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(500));
        }
    });
    let reader = thread::spawn(move || {
        let outcome = read_outcome(&mut stream);
        (outcome, started.elapsed())
    });

    // Other clients are served while the slow client drips: a request counts only if its answer
    // came while the slow client was still connected (a server blocked by it would answer only
    // once it is cut off).
    let mut served_during_attack_count = 0;
    while !reader.is_finished() && started.elapsed() < ANSWER_TIMEOUT {
        let health = target.server.get("/healthz");
        assert_eq!(health.status, 200, "{health:?}");
        target.server.get_message(&target.canary_id);
        if !reader.is_finished() {
            served_during_attack_count += 1;
        }
        thread::sleep(Duration::from_millis(250));
    }
    // The head would take the dripper over two minutes: an end before that is the server's doing
    // (read_outcome fails the test if nothing ends it within ANSWER_TIMEOUT).
    let (outcome, elapsed) = reader.join().expect("reader thread");
    let still_dripping = !dripper.is_finished();
    stop.store(true, Ordering::Relaxed);
    dripper.join().expect("dripper thread");

    assert!(
        served_during_attack_count >= 5,
        "only {served_during_attack_count} requests were answered during the attack"
    );
    assert!(still_dripping, "the slow client ended its head before the server cut it off");
    println!("the slow client was cut off after {elapsed:?}");
    match &outcome {
        Outcome::Closed(_) => {}
        Outcome::Answered(response) => assert_eq!(response.status, 408, "{outcome:?}"),
    }
    target.assert_intact();
}

/// Whether the server still holds `stream` open: nothing to read yet, and no end of file.
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("set non-blocking");
    let mut byte = [0u8; 1];
    let open =
        matches!(stream.peek(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("set blocking");
    open
}

/// This process's soft limit on open files (`ulimit -n`), from /proc; a machine whose default is
/// 1024 still runs the test with as many idle connections as it may open.
fn open_file_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(IDLE_CONNECTIONS_DEFAULT + 200)
}

#[test]
fn many_idle_connections_do_not_lock_out_a_real_client() {
    let target = Target::start(&[]);
    let wanted = std::env::var("OUTBOXD_IDLE_CONNECTIONS")
        .ok()
        .map(|text| {
            text.parse::<usize>()
                .unwrap_or_else(|_| panic!("OUTBOXD_IDLE_CONNECTIONS={text:?} is not a count"))
        })
        .unwrap_or_else(|| IDLE_CONNECTIONS_DEFAULT.min(open_file_limit().saturating_sub(200)));
    eprintln!("opening {wanted} idle connections");
    let mut idle = Vec::with_capacity(wanted);
    for index in 0..wanted {
        match TcpStream::connect_timeout(&target.address, Duration::from_secs(5)) {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!(
                "idle connection {index} of {wanted} failed: {error} (raise `ulimit -n` or \
                 lower OUTBOXD_IDLE_CONNECTIONS)"
            ),
        }
    }

    // With every idle connection still open, ordinary requests go through: they are answered
    // while the server still holds the idle connections (a server that needed their slots would
    // answer only after closing them).
    let health = target.server.get("/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ids = target.server.enqueue("after-idle", &json!([{"body": "served"}]));
    assert_eq!(target.server.get_message(&ids[0])["body"], json!("served"));
    let open_count = idle.iter().filter(|stream| still_open(stream)).count();
    assert!(open_count > 0, "every idle connection was closed before the real client was served");
    println!("{open_count} of {wanted} idle connections still open once the client was served");

    // Idle connections count against the header read timeout too: one is closed by then.
    let mut sample = idle.pop().expect("at least one idle connection");
    sample.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("set read timeout");
    let outcome = read_outcome(&mut sample);
    assert!(
        matches!(&outcome, Outcome::Closed(_))
            || matches!(&outcome, Outcome::Answered(response) if response.status == 408),
        "{outcome:?}"
    );
    drop(idle);
    target.assert_intact();
}

/// Regression (found by this suite, fixed in the server): a client that sends its headers and then stalls in the body holds its connection
/// (and a --max-connections slot) forever, because only the header read has a timeout.
/// `--max-connections` such clients lock every other client out for good. Fix: bound the body
/// read in `read_body` (src/http/handlers.rs), e.g. `tokio::time::timeout` around each frame
/// with a BODY_IDLE_TIMEOUT_MS of 10 s in src/limits.rs, answering 408 or closing.
#[test]
fn stalled_bodies_do_not_lock_out_other_clients() {
    let target = Target::start(&["--max-connections", "4"]);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{{\"messages\":",
        attack_path("messages")
    );
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = connect(target.address);
            stream.write_all(head.as_bytes()).expect("send head");
            stream
        })
        .collect();
    // Give the server time to accept all four, so the next client waits for a free slot.
    thread::sleep(Duration::from_millis(300));
    let outcome = exchange(
        target.address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        false,
    );
    let Outcome::Answered(response) = &outcome else {
        panic!("health check was not answered: {outcome:?}");
    };
    assert_eq!(response.status, 200, "{outcome:?}");
    // The stalled clients never gave up their connections: the server freed a slot itself (the
    // 10 s body timeout), so at least one stalled upload has been ended by it (a 408 or a close
    // to read). Not all of them: the harness's own keep-alive connection took one of the four
    // slots, so one stalled upload may only now be getting its turn.
    poll_until(Duration::from_secs(10), "a stalled upload ended by the server", || {
        stalled.iter().any(|stream| !still_open(stream)).then_some(())
    });
    drop(stalled);
    target.assert_intact();
}

// ---------------------------------------------------------------------------------------
// Encodings and JSON
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_is_refused() {
    let target = Target::start(&[]);
    let bodies: [(&str, &[u8]); 4] = [
        ("messages", b"{\"messages\": [{\"body\": \"\xff\xfe\"}]}"),
        ("messages", b"{\"messages\": [{\"body\": 1, \"headers\": {\"\xc3\x28\": \"v\"}}]}"),
        ("ack", b"{\"leases\": [\"\xed\xa0\x80\"]}"),
        ("lease", b"{\"max\": 1, \"\xf8\x88\x80\x80\x80\": 2}"),
    ];
    for (action, body) in bodies {
        let outcome = target.send(&post(&attack_path(action), b"", body));
        assert_api_error(&outcome, 400, "invalid_json", &format!("{action}: {body:?}"));
    }

    let key = post(&attack_path("messages"), b"Idempotency-Key: \xff\xfe-key\r\n", VALID_ENQUEUE);
    let outcome = target.send(&key);
    assert_api_error(&outcome, 400, "invalid_idempotency_key", "non-UTF-8 key");

    let percent =
        target.send(b"GET /v1/queues/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_api_error(&percent, 400, "invalid_queue_name", "percent-encoded bytes");
    let raw_path = b"GET /v1/queues/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_refused(&target.send(raw_path), "raw non-UTF-8 bytes in the path");
    let raw_name = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\xff: v\r\nConnection: close\r\n\r\n";
    assert_refused(&target.send(raw_name), "raw non-UTF-8 bytes in a header name");
    target.assert_intact();
}

#[test]
fn deeply_nested_json_is_refused_without_crashing() {
    let target = Target::start(&[]);
    let open = "[".repeat(NESTING_DEPTH);
    let objects = "{\"a\":".repeat(NESTING_DEPTH);
    let cases: Vec<(String, String)> = vec![
        (attack_path("messages"), open.clone()),
        (attack_path("messages"), objects.clone()),
        (attack_path("messages"), format!("{{\"messages\": [{{\"body\": {open}")),
        (attack_path("messages"), format!("{{\"messages\": [{{\"body\": {objects}")),
        (attack_path("lease"), open.clone()),
        (attack_path("ack"), format!("{{\"leases\": {open}")),
        (attack_path("nack"), format!("{{\"items\": {open}")),
        (attack_path("extend"), objects.clone()),
    ];
    for (path, body) in &cases {
        let outcome = target.send(&post(path, b"", body.as_bytes()));
        let what = format!("{path} with {} bytes of nesting", body.len());
        let Outcome::Answered(response) = &outcome else {
            panic!("{what}: the connection closed: {outcome:?}");
        };
        assert_eq!(response.status, 400, "{what}: {outcome:?}");
        let code = error_object(response, &what)["code"].clone();
        assert!(
            code == json!("invalid_json") || code == json!("invalid_request"),
            "{what}: {code}"
        );
    }

    // Balanced nesting inside a body is valid JSON: stored verbatim, or refused, never a crash.
    let balanced = format!("{open}{}", "]".repeat(NESTING_DEPTH));
    let body = format!("{{\"messages\": [{{\"body\": {balanced}}}]}}");
    let outcome = target.send(&post("/v1/queues/nested/messages", b"", body.as_bytes()));
    let Outcome::Answered(response) = &outcome else {
        panic!("balanced nesting: the connection closed: {outcome:?}");
    };
    match response.status {
        201 => {
            let reply: Value = serde_json::from_slice(&response.body).expect("enqueue reply");
            let id = reply["ids"][0].as_str().expect("id");
            let view = target.send(
                format!("GET /v1/messages/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let Outcome::Answered(view) = &view else {
                panic!("GET of the nested message: {view:?}");
            };
            assert_eq!(view.status, 200);
            let text = String::from_utf8_lossy(&view.body);
            assert!(
                text.contains(&format!("\"body\":{balanced}")),
                "the body was not returned verbatim"
            );
        }
        400 => {
            error_object(response, "balanced nesting");
        }
        status => panic!("balanced nesting: status {status}: {outcome:?}"),
    }
    target.assert_intact();
}

#[test]
fn numbers_out_of_range_are_refused_and_name_the_field() {
    let target = Target::start(&[]);
    let message = |field: &str| format!(r#"{{"messages": [{{"body": 1, {field}}}]}}"#);
    // (action, body, code, field the error must name)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("messages", message(r#""priority": 1099511627776"#), "invalid_batch", "priority"),
        ("messages", message(r#""priority": -2147483649"#), "invalid_batch", "priority"),
        ("messages", message(r#""priority": 1.0"#), "invalid_batch", "priority"),
        ("messages", message(r#""max_attempts": -1"#), "invalid_batch", "max_attempts"),
        ("messages", message(r#""max_attempts": 0"#), "invalid_batch", "max_attempts"),
        ("messages", message(r#""max_attempts": 1001"#), "invalid_batch", "max_attempts"),
        ("messages", message(r#""max_attempts": 4294967297"#), "invalid_batch", "max_attempts"),
        ("messages", message(r#""delay_ms": 1.5"#), "invalid_batch", "delay_ms"),
        ("messages", message(r#""delay_ms": 1e3"#), "invalid_batch", "delay_ms"),
        ("messages", message(r#""delay_ms": -1"#), "invalid_batch", "delay_ms"),
        ("messages", message(r#""delay_ms": 18446744073709551616"#), "invalid_batch", "delay_ms"),
        ("messages", message(r#""delay_ms": 315360000001"#), "invalid_batch", "delay_ms"),
        ("messages", message(r#""deliver_at": 1e30"#), "invalid_batch", "deliver_at"),
        ("messages", message(r#""deliver_at": -5"#), "invalid_batch", "deliver_at"),
        (
            "messages",
            message(r#""deliver_at": 18446744073709551615"#),
            "invalid_batch",
            "deliver_at",
        ),
        ("lease", r#"{"lease_ms": 1e30}"#.into(), "invalid_request", "lease_ms"),
        ("lease", r#"{"lease_ms": 0}"#.into(), "invalid_request", "lease_ms"),
        ("lease", r#"{"lease_ms": 43200001}"#.into(), "invalid_request", "lease_ms"),
        ("lease", r#"{"max": 4294967296}"#.into(), "invalid_request", "max"),
        ("lease", r#"{"max": -1}"#.into(), "invalid_request", "max"),
        ("lease", r#"{"wait_ms": 30001}"#.into(), "invalid_request", "wait_ms"),
        ("lease", r#"{"wait_ms": 2.5}"#.into(), "invalid_request", "wait_ms"),
        (
            "nack",
            r#"{"items": [{"lease": "x", "delay_ms": -1}]}"#.into(),
            "invalid_request",
            "delay_ms",
        ),
        (
            "nack",
            r#"{"items": [{"lease": "x", "delay_ms": 1e30}]}"#.into(),
            "invalid_request",
            "delay_ms",
        ),
        (
            "extend",
            r#"{"items": [{"lease": "x", "lease_ms": 1e30}]}"#.into(),
            "invalid_request",
            "lease_ms",
        ),
        (
            "extend",
            r#"{"items": [{"lease": "x", "lease_ms": -7}]}"#.into(),
            "invalid_request",
            "lease_ms",
        ),
    ];
    for (action, body, code, field) in &cases {
        let outcome = target.send(&post(&attack_path(action), b"", body.as_bytes()));
        let what = format!("{action} {body}");
        let error = assert_api_error(&outcome, 400, code, &what);
        let named = if *code == "invalid_batch" {
            error["details"][0]["field"].as_str().unwrap_or_default().to_string()
        } else {
            error["message"].as_str().unwrap_or_default().to_string()
        };
        assert!(named.contains(field), "{what}: the error does not name {field}: {error}");
    }
    target.assert_intact();
}

#[test]
fn control_numbers_out_of_range_are_refused_and_name_the_field() {
    let target = Target::start(&[]);
    let queue = format!("/v1/queues/{ATTACK_QUEUE}");
    let message = format!("/v1/messages/{}", target.canary_id);
    let schedule = format!("{message}/schedule");
    // (method, path, body, field the error must name)
    let cases: [(&str, &str, &str, &str); 13] = [
        ("PUT", &queue, r#"{"max_attempts": 1099511627776}"#, "max_attempts"),
        ("PUT", &queue, r#"{"max_attempts": 0}"#, "max_attempts"),
        ("PUT", &queue, r#"{"lease_ms": 0}"#, "lease_ms"),
        ("PUT", &queue, r#"{"backoff": {"multiplier": 1e308}}"#, "multiplier"),
        ("PUT", &queue, r#"{"backoff": {"jitter": -0.5}}"#, "jitter"),
        ("PUT", &queue, r#"{"backoff": {"initial_ms": 10, "max_ms": 5}}"#, "initial_ms"),
        ("PUT", &queue, r#"{"retention_ms": -1}"#, "retention_ms"),
        ("PUT", &queue, r#"{"dead_retention_ms": 1e30}"#, "dead_retention_ms"),
        ("PATCH", &message, r#"{"priority": 1099511627776}"#, "priority"),
        ("PATCH", &message, r#"{"deliver_at": -1}"#, "deliver_at"),
        ("POST", &schedule, r#"{"delay_ms": 1e30}"#, "delay_ms"),
        ("POST", &schedule, r#"{"delay_ms": 315360000001}"#, "delay_ms"),
        ("POST", &schedule, r#"{"deliver_at": 18446744073709551615}"#, "deliver_at"),
    ];
    for (method, path, body, field) in cases {
        let outcome = target.send(&request_with_body(method, path, b"", body.as_bytes()));
        let what = format!("{method} {path} {body}");
        let error = assert_api_error(&outcome, 400, "invalid_request", &what);
        let text = error["message"].as_str().unwrap_or_default();
        assert!(text.contains(field), "{what}: the error does not name {field}: {error}");
    }
    target.assert_intact();
}

#[test]
fn duplicate_json_keys_are_refused() {
    let target = Target::start(&[]);
    let cases: [(&str, &str, &str); 6] = [
        (
            "messages",
            r#"{"messages": [{"body": 1}], "messages": [{"body": 2}]}"#,
            "invalid_request",
        ),
        ("messages", r#"{"messages": [{"body": 1, "body": 2}]}"#, "invalid_batch"),
        (
            "messages",
            r#"{"messages": [{"body": 1, "priority": 1, "priority": 2}]}"#,
            "invalid_batch",
        ),
        ("lease", r#"{"max": 1, "max": 1000}"#, "invalid_request"),
        ("ack", r#"{"leases": ["a"], "leases": ["b"]}"#, "invalid_request"),
        ("nack", r#"{"items": [{"lease": "a", "lease": "b"}]}"#, "invalid_request"),
    ];
    for (action, body, code) in cases {
        let outcome = target.send(&post(&attack_path(action), b"", body.as_bytes()));
        let error = assert_api_error(&outcome, 400, code, body);
        let text = error.to_string();
        assert!(text.contains("duplicate"), "{body}: the error does not say why: {error}");
    }

    // Message headers are a free-form map: a repeated name is refused, or kept once.
    let body = br#"{"messages": [{"body": 1, "headers": {"k": "first", "k": "second"}}]}"#;
    let outcome = target.send(&post("/v1/queues/duplicates/messages", b"", body));
    let Outcome::Answered(response) = &outcome else {
        panic!("duplicate header names: the connection closed: {outcome:?}");
    };
    match response.status {
        201 => {
            let reply: Value = serde_json::from_slice(&response.body).expect("enqueue reply");
            let id = reply["ids"][0].as_str().expect("id");
            let headers = target.server.get_message(id)["headers"].clone();
            assert!(
                headers == json!({"k": "first"}) || headers == json!({"k": "second"}),
                "{headers}"
            );
        }
        400 => {
            error_object(response, "duplicate header names");
        }
        status => panic!("duplicate header names: status {status}: {outcome:?}"),
    }
    target.assert_intact();
}

#[test]
fn hostile_query_strings_are_refused() {
    let target = Target::start(&[]);
    let listing = "/v1/queues/canary/messages";
    // (method, path and query, code)
    let cases = [
        ("GET", format!("{listing}?state=%ff%fe"), "invalid_request"),
        ("GET", format!("{listing}?state=%"), "invalid_request"),
        ("GET", format!("{listing}?%zz=1"), "invalid_request"),
        ("GET", format!("{listing}?limit=18446744073709551616"), "invalid_request"),
        ("GET", format!("{listing}?limit=0"), "invalid_request"),
        ("GET", format!("{listing}?limit=-1"), "invalid_request"),
        ("GET", format!("{listing}?cursor=ready.%00%00"), "invalid_request"),
        ("GET", format!("{listing}?cursor=ready.0000000000000001.x"), "invalid_request"),
        ("GET", format!("{listing}?header=no-colon"), "invalid_request"),
        ("GET", format!("{listing}?order=sideways"), "invalid_request"),
        ("GET", format!("{listing}?state=ready&bogus=1"), "invalid_request"),
        ("DELETE", listing.to_string(), "invalid_request"),
        ("DELETE", format!("{listing}?state=leased"), "invalid_request"),
        ("POST", "/v1/queues/canary/redrive?reset_attempts=maybe".into(), "invalid_request"),
        ("GET", "/v1/events?kind=,,,".into(), "invalid_request"),
        ("GET", "/v1/events?last_event_id=-1".into(), "invalid_request"),
        ("GET", "/v1/events?last_event_id=18446744073709551616".into(), "invalid_request"),
        ("GET", "/v1/events?queue=a%2Fb".into(), "invalid_queue_name"),
        ("GET", "/v1/events?queue=".into(), "invalid_queue_name"),
    ];
    for (method, path, code) in &cases {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        assert_api_error(&target.send(request.as_bytes()), 400, code, &format!("{method} {path}"));
    }
    for value in [&b"\xff1"[..], b"abc", b"-5", b"99999999999999999999999"] {
        let mut request = b"GET /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
        request.extend_from_slice(b"Last-Event-ID: ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n\r\n");
        let what = format!("Last-Event-ID {:?}", String::from_utf8_lossy(value));
        assert_api_error(&target.send(&request), 400, "invalid_request", &what);
    }
    // A query of many thousand parameters is refused after the first unknown one, at once.
    let many: String = (0..20_000).map(|index| format!("p{index}=1&")).collect();
    let request = format!("GET {listing}?{many} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_refused(&target.send(request.as_bytes()), "20,000 query parameters");
    target.assert_intact();
}

// ---------------------------------------------------------------------------------------
// Oversized heads
// ---------------------------------------------------------------------------------------

#[test]
fn a_thousand_headers_are_refused() {
    let target = Target::start(&[]);
    let many: String = (0..1000).map(|index| format!("X-Attack-{index}: v\r\n")).collect();
    let outcome = target.send(&post(&attack_path("messages"), many.as_bytes(), VALID_ENQUEUE));
    assert_refused(&outcome, "1,000 headers on an enqueue");
    let health = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_refused(&target.send(health.as_bytes()), "1,000 headers on /healthz");
    target.assert_intact();
}

#[test]
fn one_mebibyte_header_is_refused() {
    let target = Target::start(&[]);
    let big = "a".repeat(1 << 20);
    let header = format!("X-Big: {big}\r\n");
    let outcome = target.send(&post(&attack_path("messages"), header.as_bytes(), VALID_ENQUEUE));
    assert_refused(&outcome, "a 1 MiB header on an enqueue");
    let key = format!("Idempotency-Key: {big}\r\n");
    let outcome = target.send(&post(&attack_path("messages"), key.as_bytes(), VALID_ENQUEUE));
    assert_refused(&outcome, "a 1 MiB Idempotency-Key");
    let uri = format!("GET /v1/queues/{big} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_refused(&target.send(uri.as_bytes()), "a 1 MiB request target");
    target.assert_intact();
}

// ---------------------------------------------------------------------------------------
// Contract deviations found by these tests and by .ci/schemathesis.sh
// ---------------------------------------------------------------------------------------

/// Regression (found by this suite, fixed in the server): serde's derived `Deserialize` also reads a struct from a JSON array of its
/// fields in order, so `[[{"body": 1}]]` is taken as `{"messages": [{"body": 1}]}`,
/// `{"messages": [[7]]}` stores a message with body 7, and `PATCH /v1/messages/{id}` with
/// `[null, null]` replaces the body with null. Found by schemathesis's
/// `negative_data_rejection` check. The API takes JSON objects only (docs/api.md,
/// "Request and response bodies are JSON objects"; unknown fields are rejected so that a mistake
/// is an error). Fix: check that a request object starts with `{` before deserializing it: in
/// `parse` and `parse_message` (src/http/types.rs) that covers every top-level body and each
/// enqueued message; the nested NackInput, ExtendInput and BackoffInput items need the same check
/// (e.g. read them as `&RawValue` first, as enqueue does for its messages).
#[test]
fn arrays_in_place_of_objects_are_refused() {
    let target = Target::start(&[]);
    let cases: [(&str, &str, &str); 5] = [
        ("messages", r#"[[{"body": 1}]]"#, "invalid_request"),
        ("messages", r#"{"messages": [[7]]}"#, "invalid_batch"),
        ("messages", r#"{"messages": [[null, null]]}"#, "invalid_batch"),
        ("lease", "[5, null, null]", "invalid_request"),
        ("ack", r#"[["0000000000000001"]]"#, "invalid_request"),
    ];
    for (action, body, code) in cases {
        let outcome = target.send(&post(&attack_path(action), b"", body.as_bytes()));
        assert_api_error(&outcome, 400, code, body);
    }
    // The control endpoints: an array must neither edit a message nor configure a queue.
    let ids = target.server.enqueue("arrays", &json!([{"body": "kept"}]));
    let edit = target.server.request(
        "PATCH",
        &format!("/v1/messages/{}", ids[0]),
        Some("[null, null]"),
        &[],
    );
    assert_error(&edit, 400, "invalid_request");
    assert_eq!(target.server.get_message(&ids[0])["body"], json!("kept"));
    let settings = r#"{"backoff": [null, null]}"#;
    let configure = target.server.request("PUT", "/v1/queues/arrays", Some(settings), &[]);
    assert_error(&configure, 400, "invalid_request");
    target.assert_intact();
}

/// Regression: RFC 9110 section 15.5.6 requires a 405 response to carry an `Allow` header
/// listing the methods the resource supports. Schemathesis's `unsupported_method` check found
/// it missing; `error_response` in src/http/mod.rs now sets it.
#[test]
fn method_not_allowed_lists_the_allowed_methods() {
    let target = Target::start(&[]);
    let cases: [(&str, &str, &[&str]); 8] = [
        ("DELETE", "/healthz", &["GET"]),
        ("POST", "/v1/queues", &["GET"]),
        ("POST", "/v1/queues/canary", &["GET", "PUT"]),
        ("PUT", "/v1/queues/canary/messages", &["POST", "GET", "DELETE"]),
        ("GET", "/v1/queues/canary/lease", &["POST"]),
        ("POST", "/v1/messages/0000000000000001", &["GET", "PATCH", "DELETE"]),
        ("GET", "/v1/messages/0000000000000001/retry", &["POST"]),
        ("POST", "/v1/events", &["GET"]),
    ];
    for (method, path, allowed) in cases {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let outcome = target.send(request.as_bytes());
        assert_api_error(&outcome, 405, "method_not_allowed", path);
        let Outcome::Answered(response) = &outcome else {
            unreachable!("checked above");
        };
        let header = response
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without an Allow header: {outcome:?}"));
        let mut listed: Vec<&str> = header.split(',').map(str::trim).collect();
        listed.sort_unstable();
        let mut expected = allowed.to_vec();
        expected.sort_unstable();
        assert_eq!(listed, expected, "{method} {path}");
    }
    target.assert_intact();
}

/// Regression: `deliver_at` is an RFC 3339 string, and most date libraries print local times
/// with a numeric offset (`2030-01-31T10:00:00+01:00`). The first parser
/// (`humantime::parse_rfc3339_weak`) took only `Z`; schemathesis's `positive_data_acceptance`
/// check found it, and src/http/types.rs now takes the offset off before parsing.
#[test]
fn rfc3339_times_with_offsets_are_accepted() {
    let target = Target::start(&[]);
    for text in
        ["2030-01-31T10:00:00+01:00", "2030-01-31T04:30:00-04:30", "2030-01-31T09:00:00-00:00"]
    {
        assert_scheduled_at(&target, text, RFC3339_EXAMPLE_MS);
    }
    target.assert_intact();
}

/// 2030-01-31T09:00:00Z in epoch milliseconds.
const RFC3339_EXAMPLE_MS: u64 = 1_896_080_400_000;

/// Enqueues one message with `deliver_at` = `text` and checks it is scheduled for `expected_ms`.
fn assert_scheduled_at(target: &Target, text: &str, expected_ms: u64) {
    let body = format!(r#"{{"messages": [{{"body": 1, "deliver_at": "{text}"}}]}}"#);
    let response = target.server.enqueue_raw("offsets", &body, None);
    assert_eq!(response.status, 201, "{text}: {response:?}");
    let id = response.body["ids"][0].as_str().expect("id");
    let message = target.server.get_message(id);
    assert_eq!(message["state"], json!("scheduled"), "{text}: {message}");
    assert_eq!(message["deliver_at"], json!(expected_ms), "{text}: {message}");
}

/// Regression (found by this suite, fixed in the server): RFC 3339 (section 5.6, note) allows a lowercase `t` and `z`; the parser refuses
/// them as "not an RFC 3339 time". Found by schemathesis's `positive_data_acceptance` check.
/// Fix: upper-case the text before parsing in `parse_rfc3339_ms` (src/http/types.rs).
#[test]
fn rfc3339_times_in_lowercase_are_accepted() {
    let target = Target::start(&[]);
    for text in ["2030-01-31t09:00:00z", "2030-01-31t10:00:00+01:00", "2030-01-31T09:00:00z"] {
        assert_scheduled_at(&target, text, RFC3339_EXAMPLE_MS);
    }
    target.assert_intact();
}

/// Regression (found by this suite, fixed in the server): the contract says a `deliver_at` in the past is ready at once, but an RFC 3339
/// time before 1970 is refused as "not an RFC 3339 time" (the parser and the conversion to
/// epoch milliseconds stop at the epoch). Fix: clamp times before the epoch to 0 (ready now).
#[test]
fn rfc3339_times_before_1970_are_ready_at_once() {
    let target = Target::start(&[]);
    for text in ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z"] {
        let body = format!(r#"{{"messages": [{{"body": 1, "deliver_at": "{text}"}}]}}"#);
        let response = target.server.enqueue_raw("past", &body, None);
        assert_eq!(response.status, 201, "{text}: {response:?}");
        let id = response.body["ids"][0].as_str().expect("id");
        assert_eq!(target.server.get_message(id)["state"], json!("ready"), "{text}");
    }
    target.assert_intact();
}

/// A refusal that leaves the request body unread (a bad Idempotency-Key, a Content-Length over the
/// limit) says `Connection: close`: the server does not read the rest, so a keep-alive client must
/// not send its next request on this connection.
#[test]
fn a_refusal_that_leaves_the_body_unread_closes_the_connection() {
    let target = Target::start(&[]);
    let body = format!(r#"{{"messages": [{{"body": "{}"}}]}}"#, "x".repeat(100_000));
    let bad_key = format!(
        "POST /v1/queues/{ATTACK_QUEUE}/messages HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a b\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let too_long = format!(
        "POST /v1/queues/{ATTACK_QUEUE}/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        64 * 1024 * 1024
    );
    for (request, status) in [(bad_key, 400), (too_long, 413)] {
        let Outcome::Answered(response) = target.send(request.as_bytes()) else {
            panic!("no answer to {}", &request[..60]);
        };
        assert_eq!(response.status, status);
        let connection = response.headers.iter().find(|(name, _)| name == "connection");
        assert_eq!(connection.map(|(_, value)| value.as_str()), Some("close"), "{response:?}");
    }
    target.assert_intact();
}
