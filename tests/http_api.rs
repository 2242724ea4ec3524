//! End-to-end tests of the HTTP API described in docs/api.md.
//!
//! Goal: every documented behaviour and every error code a client can reach is checked
//! from outside, against the real binary. Method: each test starts its own `outboxd`
//! on 127.0.0.1:0 with a temporary data directory (tests run in parallel), drives it
//! over HTTP, and asserts the status, the JSON shape and the state left behind (GET of
//! the message or queue, and what a following lease returns). Time-dependent tests use
//! short leases and backoffs and poll with a deadline rather than sleeping a fixed time.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use common::{
    assert_error, assert_message_id, error_details, now_ms, poll_until, string_array, Response,
    Server,
};

/// Short retry backoff so redelivery tests finish in well under a second.
const FAST_BACKOFF: &[&str] = &["--backoff-initial-ms", "50", "--backoff-max-ms", "200"];

/// A lease long enough that nothing expires during a test.
const LONG_LEASE_MS: u64 = 60_000;

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|error| panic!("server returned invalid base64 {text:?}: {error}"))
}

fn token(message: &Value) -> String {
    message["lease"]
        .as_str()
        .unwrap_or_else(|| panic!("leased message without lease token: {message}"))
        .to_string()
}

fn as_u64(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what} is not an integer: {value}"))
}

/// Asserts that the queue holds nothing: it does not exist, or all its counts are zero,
/// and a lease returns no message.
fn assert_nothing_stored(server: &Server, queue: &str) {
    let response = server.get(&format!("/v1/queues/{queue}"));
    if response.status == 404 {
        assert_error(&response, 404, "queue_not_found");
    } else {
        assert_eq!(response.status, 200, "{response:?}");
        for (state, count) in response.body["counts"].as_object().expect("counts object") {
            assert_eq!(
                count,
                &json!(0),
                "queue {queue} has {count} {state} messages: {response:?}"
            );
        }
    }
    let leased = server.lease(queue, 1000, LONG_LEASE_MS, 0);
    assert!(leased.is_empty(), "a rejected request stored messages: {leased:?}");
}

/// The `details` entry for a batch index; panics if the error does not name it.
fn detail_for(response: &Response, index: u64) -> Value {
    error_details(response)
        .into_iter()
        .find(|detail| detail["index"] == json!(index))
        .unwrap_or_else(|| panic!("error details do not name index {index}: {response:?}"))
}

fn assert_detail_field(response: &Response, index: u64, allowed_fields: &[&str]) {
    let detail = detail_for(response, index);
    let field =
        detail["field"].as_str().unwrap_or_else(|| panic!("detail without field: {detail}"));
    assert!(
        allowed_fields.contains(&field),
        "index {index}: expected field in {allowed_fields:?}, got {field:?}: {response:?}"
    );
    let message = detail["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "detail without message: {detail}");
}

fn detail_indexes(response: &Response) -> BTreeSet<u64> {
    error_details(response)
        .iter()
        .map(|detail| as_u64(&detail["index"], "details[].index"))
        .collect()
}

/// Asserts an `invalid_request` whose message names `field`.
fn assert_invalid_request_names(response: &Response, field: &str) {
    assert_error(response, 400, "invalid_request");
    let message = response.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "invalid_request message should name `{field}`: {response:?}");
}

// ---------------------------------------------------------------------------------------
// Enqueue and message inspection
// ---------------------------------------------------------------------------------------

#[test]
fn healthz_reports_ok() {
    let server = Server::start(&[]);
    let response = server.get("/healthz");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body["status"], json!("ok"), "{response:?}");
}

#[test]
fn enqueue_returns_201_with_one_increasing_id_per_message() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": 1 }, { "body": 2 }, { "body": 3 }] }).to_string();

    let first = server.enqueue_raw("orders", &body, None);
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["duplicate"], json!(false), "{first:?}");
    let first_ids = string_array(&first.body["ids"]);
    assert_eq!(first_ids.len(), 3, "{first:?}");

    let second_ids = server.enqueue("orders", &json!([{ "body": 4 }, { "body": 5 }]));
    let all: Vec<&String> = first_ids.iter().chain(&second_ids).collect();
    for id in &all {
        assert_message_id(id);
    }
    // Fixed-width lowercase hex: string order is numeric order.
    for pair in all.windows(2) {
        assert!(pair[0] < pair[1], "ids not increasing in enqueue order: {all:?}");
    }

    let counts = server.queue_counts("orders");
    assert_eq!(
        counts,
        json!({ "scheduled": 0, "ready": 5, "leased": 0, "retrying": 0, "dead": 0, "delivered": 0 })
    );
}

#[test]
fn get_message_shows_ready_message_with_body_and_headers_verbatim() {
    let server = Server::start(&[]);
    let body = json!({
        "text": "héllo wörld ✓ 🚀 日本語",
        "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0} end",
        "nested": { "list": [1, -7, 1.5, 1e-7, 1e300, [true, false, null], {}, []], "empty": "" },
        "u64_max": 18446744073709551615u64,
        "i64_min": -9223372036854775808i64,
    });
    let headers = json!({ "content-type": "application/json", "X-Trace-Id": "abc ✓", "empty": "" });
    let before = now_ms();
    let ids = server.enqueue("mail", &json!([{ "body": body, "headers": headers }]));
    let after = now_ms();

    let message = server.get_message(&ids[0]);
    assert_eq!(message["id"], json!(ids[0]));
    assert_eq!(message["queue"], json!("mail"));
    assert_eq!(message["state"], json!("ready"));
    assert_eq!(message["priority"], json!(0));
    assert_eq!(message["attempts"], json!(0));
    assert_eq!(message["max_attempts"], json!(10), "default --max-attempts is 10");
    let enqueued_at = as_u64(&message["enqueued_at"], "enqueued_at");
    assert!(
        (before..=after).contains(&enqueued_at),
        "enqueued_at {enqueued_at} not in [{before}, {after}]"
    );
    assert!(as_u64(&message["updated_at"], "updated_at") >= enqueued_at);
    assert_eq!(message["deliver_at"], Value::Null);
    assert_eq!(message["lease_expires_at"], Value::Null);
    assert_eq!(message["last_error"], Value::Null);
    assert_eq!(message["headers"], headers);
    assert_eq!(message["body"], body, "body must come back exactly as sent");
    assert!(message.get("body_base64").is_none(), "JSON body must not also be base64: {message}");

    // Scalars, arrays and null are bodies too.
    let scalars = [
        json!("just a string"),
        json!(42),
        json!(false),
        json!([1, "two", { "three": 3 }]),
        Value::Null,
    ];
    let messages: Vec<Value> = scalars.iter().map(|body| json!({ "body": body })).collect();
    let ids = server.enqueue("mail", &json!(messages));
    for (id, expected) in ids.iter().zip(&scalars) {
        let message = server.get_message(id);
        assert_eq!(message.get("body"), Some(expected), "{message}");
    }

    // The lease hands out the same body and headers.
    let leased = server.lease("mail", 1, LONG_LEASE_MS, 0);
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0]["body"], body);
    assert_eq!(leased[0]["headers"], headers);
}

#[test]
fn body_base64_round_trips_arbitrary_bytes() {
    let server = Server::start(&[]);
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend_from_slice(&[0x00, 0x00, 0xff, 0xff, 0xfe, 0x80, 0x00]);
    let encoded = base64_encode(&bytes);

    let ids = server
        .enqueue("blobs", &json!([{ "body_base64": encoded, "headers": { "kind": "binary" } }]));
    let message = server.get_message(&ids[0]);
    assert!(message.get("body").is_none(), "a base64 message must not show a JSON body: {message}");
    assert_eq!(base64_decode(message["body_base64"].as_str().expect("body_base64 string")), bytes);
    assert_eq!(message["headers"], json!({ "kind": "binary" }));

    let leased = server.lease("blobs", 1, LONG_LEASE_MS, 0);
    assert_eq!(leased.len(), 1);
    assert!(leased[0].get("body").is_none(), "{}", leased[0]);
    assert_eq!(
        base64_decode(leased[0]["body_base64"].as_str().expect("body_base64 string")),
        bytes
    );
}

// ---------------------------------------------------------------------------------------
// Batch validation: all-or-nothing, every bad message named
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_batch_names_every_bad_message_and_stores_nothing() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [
        { "body": 0 },
        { "body": 1 },
        { "body": 2, "priority": "high" },
        { "body": 3 },
        { "body": 4, "body_base64": "AA==" },
        { "body": 5 },
    ]})
    .to_string();
    let response = server.enqueue_raw("atomic", &body, None);
    assert_error(&response, 400, "invalid_batch");
    assert_eq!(detail_indexes(&response), BTreeSet::from([2, 4]), "{response:?}");
    assert_detail_field(&response, 2, &["priority"]);
    assert_detail_field(&response, 4, &["body", "body_base64"]);
    assert_nothing_stored(&server, "atomic");
}

#[test]
fn invalid_batch_checks_every_message_field() {
    let server = Server::start(&[]);
    let soon = now_ms() + 10_000;
    let body = json!({ "messages": [
        { "body": "fine" },
        { "body": 1, "max_attempts": 0 },
        { "body": 2, "max_attempts": 1001 },
        { "body": 3, "priority": 2147483648u64 },
        { "body": 4, "delay_ms": -1 },
        { "body": 5, "deliver_at": "not a date" },
        { "body": 6, "delay_ms": 1000, "deliver_at": soon },
        { "body": 7, "headers": { "k": 1 } },
        { "headers": { "k": "no body at all" } },
        { "body": 9, "colour": "red" },
        { "body_base64": "!!! not base64 !!!" },
        { "body": 11, "max_attempts": 1000, "priority": -2147483648i64 },
    ]})
    .to_string();
    let response = server.enqueue_raw("fields", &body, None);
    assert_error(&response, 400, "invalid_batch");
    assert_eq!(detail_indexes(&response), (1..=10).collect::<BTreeSet<u64>>(), "{response:?}");
    assert_detail_field(&response, 1, &["max_attempts"]);
    assert_detail_field(&response, 2, &["max_attempts"]);
    assert_detail_field(&response, 3, &["priority"]);
    assert_detail_field(&response, 4, &["delay_ms"]);
    assert_detail_field(&response, 5, &["deliver_at"]);
    assert_detail_field(&response, 6, &["delay_ms", "deliver_at"]);
    assert_detail_field(&response, 7, &["headers", "headers.k"]);
    assert_detail_field(&response, 8, &["body", "body_base64"]);
    assert_detail_field(&response, 9, &["colour"]);
    assert_detail_field(&response, 10, &["body_base64"]);
    assert_nothing_stored(&server, "fields");

    // The boundary values on their own are accepted.
    let ids = server.enqueue(
        "fields",
        &json!([{ "body": 11, "max_attempts": 1000, "priority": -2147483648i64 }]),
    );
    let message = server.get_message(&ids[0]);
    assert_eq!(message["max_attempts"], json!(1000));
    assert_eq!(message["priority"], json!(-2147483648i64));
}

#[test]
fn enqueue_request_shape_errors_are_invalid_request() {
    let server = Server::start(&[]);
    let cases = [
        (json!({ "messages": [{ "body": 1 }], "extra": true }), "extra"),
        (json!({}), "messages"),
        (json!({ "messages": [] }), "messages"),
        (json!({ "messages": "not a list" }), "messages"),
    ];
    for (body, field) in cases {
        let response = server.enqueue_raw("shape", &body.to_string(), None);
        assert_invalid_request_names(&response, field);
    }
    let response = server.enqueue_raw("shape", "[1, 2]", None);
    assert_error(&response, 400, "invalid_request");
    assert_nothing_stored(&server, "shape");
}

// ---------------------------------------------------------------------------------------
// Every other error code reachable from outside
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_json_and_invalid_utf8_are_invalid_json() {
    let server = Server::start(&[]);
    let malformed: [(&str, &str); 4] = [
        ("/v1/queues/bad-json/messages", r#"{"messages": [{"body": 1}"#),
        ("/v1/queues/bad-json/messages", "not json at all"),
        ("/v1/queues/bad-json/lease", "{max: 1}"),
        ("/v1/queues/bad-json/ack", r#"{"leases": ["a",]}"#),
    ];
    for (path, body) in malformed {
        let response = server.request("POST", path, Some(body), &[]);
        assert_error(&response, 400, "invalid_json");
    }

    // Valid JSON syntax but bytes that are not UTF-8 inside a string.
    let not_utf8: &[u8] = b"{\"messages\": [{\"body\": \"caf\xe9 \xff\xfe\"}]}";
    let response =
        server.request_bytes("POST", "/v1/queues/bad-json/messages", Some(not_utf8), &[]);
    assert_error(&response, 400, "invalid_json");
    let response = server.request_bytes(
        "POST",
        "/v1/queues/bad-json/lease",
        Some(b"{\"max\": 1, \"\xff\": 2}"),
        &[],
    );
    assert_error(&response, 400, "invalid_json");

    assert_nothing_stored(&server, "bad-json");
}

#[test]
fn lease_request_out_of_range_is_invalid_request() {
    let server = Server::start(&[]);
    server.enqueue("limits", &json!([{ "body": 1 }]));
    let cases = [
        (json!({ "max": 0 }), "max"),
        (json!({ "max": 1001 }), "max"),
        (json!({ "max": -1 }), "max"),
        (json!({ "max": "ten" }), "max"),
        (json!({ "max": 1.5 }), "max"),
        (json!({ "lease_ms": 0 }), "lease_ms"),
        (json!({ "lease_ms": 43_200_001u64 }), "lease_ms"),
        (json!({ "wait_ms": 30_001 }), "wait_ms"),
        (json!({ "wait_ms": -1 }), "wait_ms"),
        (json!({ "bogus": 1 }), "bogus"),
    ];
    for (body, field) in cases {
        let response = server.post("/v1/queues/limits/lease", &body);
        assert_invalid_request_names(&response, field);
    }
    // Nothing was leased by the rejected requests, and the boundaries are accepted.
    let response = server.post(
        "/v1/queues/limits/lease",
        &json!({ "max": 1000, "lease_ms": 43_200_000u64, "wait_ms": 0 }),
    );
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body["messages"].as_array().map(Vec::len), Some(1), "{response:?}");
}

#[test]
fn ack_nack_extend_request_errors_are_invalid_request() {
    let server = Server::start(&[]);
    server.enqueue("shapes", &json!([{ "body": 1 }]));
    let leased = server.lease("shapes", 1, LONG_LEASE_MS, 0);
    let lease = token(&leased[0]);
    let too_many: Vec<String> = (0..1001).map(|_| lease.clone()).collect();
    let cases = [
        ("ack", json!({ "leases": [] }), "leases"),
        ("ack", json!({}), "leases"),
        ("ack", json!({ "leases": [1] }), "leases"),
        ("ack", json!({ "leases": too_many }), "leases"),
        ("ack", json!({ "leases": [lease], "extra": 1 }), "extra"),
        ("nack", json!({ "items": [] }), "items"),
        ("nack", json!({ "items": [{ "lease": lease, "colour": "red" }] }), "colour"),
        ("nack", json!({ "items": [{ "lease": lease, "dead": "yes" }] }), "dead"),
        ("nack", json!({ "items": [{ "lease": lease, "delay_ms": -5 }] }), "delay_ms"),
        ("extend", json!({ "items": [] }), "items"),
        ("extend", json!({ "items": [{ "lease": lease, "lease_ms": 0 }] }), "lease_ms"),
        ("extend", json!({ "items": [{ "lease": lease, "lease_ms": 43_200_001u64 }] }), "lease_ms"),
        ("extend", json!({ "items": [{ "lease_ms": 1000 }] }), "lease"),
    ];
    for (action, body, field) in cases {
        let response = server.post(&format!("/v1/queues/shapes/{action}"), &body);
        assert_invalid_request_names(&response, field);
    }
    // None of the rejected requests touched the lease.
    assert_eq!(server.ack("shapes", &[&lease])[0]["result"], json!("acked"));
}

#[test]
fn bad_queue_names_are_invalid_queue_name() {
    let server = Server::start(&[]);
    let too_long = "q".repeat(129);
    for name in ["bad!name", "bad%20name", "caf%C3%A9", "a*b", too_long.as_str()] {
        let response = server.enqueue_raw(name, r#"{"messages": [{"body": 1}]}"#, None);
        assert_error(&response, 400, "invalid_queue_name");
        let response = server.post(&format!("/v1/queues/{name}/lease"), &json!({}));
        assert_error(&response, 400, "invalid_queue_name");
        let response = server.post(&format!("/v1/queues/{name}/ack"), &json!({ "leases": ["x"] }));
        assert_error(&response, 400, "invalid_queue_name");
        let response = server.get(&format!("/v1/queues/{name}"));
        assert_error(&response, 400, "invalid_queue_name");
    }
    // 128 characters from the whole alphabet is a valid name.
    let longest = format!("Az09._-{}", "x".repeat(121));
    assert_eq!(longest.len(), 128);
    server.enqueue(&longest, &json!([{ "body": 1 }]));
    assert_eq!(server.queue_counts(&longest)["ready"], json!(1));
}

/// Sends one request over a raw connection, so that the path reaches the server exactly as
/// written (an HTTP client library would remove `.` and `..` segments); returns the status and
/// the JSON body.
fn raw_request(server: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response until the server closes");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {response:?}"));
    let (_, json_body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let json_body = serde_json::from_str(json_body).unwrap_or_else(|error| {
        panic!("{method} {path}: body is not JSON ({error}): {response:?}")
    });
    (status, json_body)
}

#[test]
fn dot_and_dot_dot_are_not_queue_names() {
    let server = Server::start(&[]);
    let enqueue = r#"{"messages": [{"body": 1}]}"#;
    for name in [".", ".."] {
        let requests = [
            ("POST", format!("/v1/queues/{name}/messages"), enqueue),
            ("POST", format!("/v1/queues/{name}/lease"), "{}"),
            ("GET", format!("/v1/queues/{name}"), ""),
            ("PUT", format!("/v1/queues/{name}"), "{}"),
            ("GET", format!("/v1/queues/{name}/messages"), ""),
            ("GET", format!("/v1/events?queue=ok,{name}"), ""),
        ];
        for (method, path, body) in requests {
            let (status, body) = raw_request(&server, method, &path, body);
            let response = Response { status, body, headers: Vec::new() };
            assert_error(&response, 400, "invalid_queue_name");
            let message = response.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("path segments"),
                "{method} {path}: the message says why: {message}"
            );
        }
    }
    // Names that merely contain dots are fine.
    for name in ["...", ".a", "..a", "a..", "a.b"] {
        let (status, body) =
            raw_request(&server, "POST", &format!("/v1/queues/{name}/messages"), enqueue);
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(server.queue_counts(name)["ready"], json!(1), "{name}");
    }
    let queues = server.get("/v1/queues");
    let names: Vec<&str> = queues.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|queue| queue["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "no queue named . or .. was created: {names:?}");
}

#[test]
fn bad_idempotency_keys_are_rejected_and_store_nothing() {
    let server = Server::start(&[]);
    let body = r#"{"messages": [{"body": 1}]}"#;
    let too_long = "k".repeat(256);
    for key in [too_long.as_str(), "has space", ""] {
        let response = server.enqueue_raw("keys", body, Some(key));
        assert_error(&response, 400, "invalid_idempotency_key");
    }
    assert_nothing_stored(&server, "keys");

    let longest = "~".repeat(255);
    let response = server.enqueue_raw("keys", body, Some(&longest));
    assert_eq!(response.status, 201, "a 255-char visible-ASCII key is valid: {response:?}");
}

#[test]
fn malformed_message_ids_are_invalid_id() {
    let server = Server::start(&[]);
    for id in ["xyz", "0123", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg"] {
        let response = server.get(&format!("/v1/messages/{id}"));
        assert_error(&response, 400, "invalid_id");
    }
}

#[test]
fn unknown_message_and_queue_are_404() {
    let server = Server::start(&[]);
    let response = server.get("/v1/messages/ffffffffffffffff");
    assert_error(&response, 404, "message_not_found");
    let response = server.get("/v1/queues/never-used");
    assert_error(&response, 404, "queue_not_found");
}

#[test]
fn unknown_routes_are_not_found() {
    let server = Server::start(&[]);
    // `/` is the outbox page (tests/ui_api.rs); paths beside it are still nothing.
    let routes = [
        ("GET", "/index.html"),
        ("GET", "/ui/nothing.js"),
        ("GET", "/v1"),
        ("GET", "/v2/messages/0000000000000001"),
        ("POST", "/v1/queues/q/frobnicate"),
        ("GET", "/v1/queues/q/messages/extra"),
        ("GET", "/healthz/extra"),
    ];
    assert_every_route_answers(&server, &routes, 404, "not_found");
}

#[test]
fn wrong_methods_are_method_not_allowed() {
    let server = Server::start(&[]);
    let routes = [
        ("PUT", "/v1/queues/q/messages"),
        ("PUT", "/v1/queues/q/lease"),
        ("GET", "/v1/queues/q/ack"),
        ("PUT", "/v1/messages/0000000000000001"),
        ("POST", "/v1/messages/0000000000000001"),
        ("GET", "/v1/messages/0000000000000001/retry"),
        ("POST", "/v1/queues"),
        ("DELETE", "/v1/events"),
        ("DELETE", "/v1/queues/q"),
        ("POST", "/healthz"),
    ];
    assert_every_route_answers(&server, &routes, 405, "method_not_allowed");
}

/// Sends each (method, path) without a body and asserts the error; lists every route that
/// answered otherwise, not only the first.
fn assert_every_route_answers(server: &Server, routes: &[(&str, &str)], status: u16, code: &str) {
    let mut wrong = Vec::new();
    for (method, path) in routes {
        let response = server.request(method, path, None, &[]);
        if response.status == status && response.body["error"]["code"] == json!(code) {
            assert_error(&response, status, code);
        } else {
            wrong.push(format!("{method} {path} -> {} {}", response.status, response.body));
        }
    }
    assert!(
        wrong.is_empty(),
        "expected {status} {code}; these routes answered otherwise:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn request_body_over_request_bytes_max_is_payload_too_large() {
    let server = Server::start(&["--request-bytes-max", "1024"]);
    let big = json!({ "messages": [{ "body": "x".repeat(2000) }] }).to_string();
    let response =
        server.try_request("POST", "/v1/queues/big/messages", Some(&big), &[]).unwrap_or_else(
            |error| panic!("expected a 413 response, the connection failed instead: {error}"),
        );
    assert_error(&response, 413, "payload_too_large");

    // Without Content-Length (chunked) the limit holds too.
    let response = server.request_chunked("POST", "/v1/queues/big/messages", big.as_bytes());
    assert_error(&response, 413, "payload_too_large");
    assert_nothing_stored(&server, "big");

    // A body under the limit is fine.
    let small = json!({ "messages": [{ "body": "x".repeat(500) }] }).to_string();
    assert_eq!(server.enqueue_raw("big", &small, None).status, 201);
}

#[test]
fn huge_declared_content_length_is_rejected_without_reading_the_body() {
    let server = Server::start(&[]);
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    // Headers only: the body is never sent, so only a server that decides from the
    // header alone can answer.
    write!(
        stream,
        "POST /v1/queues/huge/messages HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();

    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("payload_too_large") {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(error) => panic!(
                "no complete 413 within {:?} ({error}); received so far: {:?}",
                started.elapsed(),
                String::from_utf8_lossy(&received)
            ),
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "expected a 413 status line, got: {text:?}");
    assert!(text.contains("payload_too_large"), "expected code payload_too_large: {text:?}");
    drop(stream);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn message_over_message_bytes_max_is_message_too_large() {
    let server = Server::start(&["--message-bytes-max", "100"]);
    let body = json!({ "messages": [
        { "body": "x" },
        { "body": "y".repeat(500) },
        { "body": "z" },
        { "body_base64": base64_encode(&[7u8; 300]) },
    ]})
    .to_string();
    let response = server.enqueue_raw("sizes", &body, None);
    assert_error(&response, 413, "message_too_large");
    assert_eq!(detail_indexes(&response), BTreeSet::from([1, 3]), "{response:?}");
    assert_nothing_stored(&server, "sizes");

    server.enqueue("sizes", &json!([{ "body": "small enough" }]));
}

#[test]
fn more_than_batch_count_max_messages_is_batch_too_large() {
    let server = Server::start(&["--batch-count-max", "3"]);
    let four = json!({ "messages": [{ "body": 1 }, { "body": 2 }, { "body": 3 }, { "body": 4 }] })
        .to_string();
    let response = server.enqueue_raw("batches", &four, None);
    assert_error(&response, 413, "batch_too_large");
    assert_nothing_stored(&server, "batches");

    server.enqueue("batches", &json!([{ "body": 1 }, { "body": 2 }, { "body": 3 }]));
    assert_eq!(server.queue_counts("batches")["ready"], json!(3));
}

// ---------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------

#[test]
fn same_idempotency_key_and_body_returns_original_ids_and_stores_nothing() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": "a" }, { "body": "b" }] }).to_string();
    let first = server.enqueue_raw("idem", &body, Some("order-42"));
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["duplicate"], json!(false));
    let counts_after_first = server.queue_counts("idem");

    for _ in 0..2 {
        let again = server.enqueue_raw("idem", &body, Some("order-42"));
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.body["duplicate"], json!(true), "{again:?}");
        assert_eq!(again.body["ids"], first.body["ids"], "a duplicate returns the original ids");
    }
    assert_eq!(server.queue_counts("idem"), counts_after_first, "a duplicate must store nothing");
    assert_eq!(server.lease_all("idem", LONG_LEASE_MS, 0).len(), 2);
}

#[test]
fn same_idempotency_key_with_different_body_conflicts() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": "a" }] }).to_string();
    assert_eq!(server.enqueue_raw("idem", &body, Some("k1")).status, 201);

    let other = json!({ "messages": [{ "body": "b" }] }).to_string();
    assert_error(&server.enqueue_raw("idem", &other, Some("k1")), 409, "idempotency_conflict");
    // The key matches on the raw body: the same JSON spelled differently is a different body.
    let respaced = r#"{ "messages" : [ { "body" : "a" } ] }"#;
    assert_error(&server.enqueue_raw("idem", respaced, Some("k1")), 409, "idempotency_conflict");

    assert_eq!(server.queue_counts("idem")["ready"], json!(1));
}

#[test]
fn idempotency_keys_are_scoped_per_queue() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": "same" }] }).to_string();
    let on_a = server.enqueue_raw("queue-a", &body, Some("shared-key"));
    let on_b = server.enqueue_raw("queue-b", &body, Some("shared-key"));
    assert_eq!(on_a.status, 201, "{on_a:?}");
    assert_eq!(on_b.status, 201, "the same key on another queue is independent: {on_b:?}");
    assert_ne!(on_a.body["ids"], on_b.body["ids"]);
    assert_eq!(server.queue_counts("queue-a")["ready"], json!(1));
    assert_eq!(server.queue_counts("queue-b")["ready"], json!(1));

    // A different body under the same key on queue-b is judged against queue-b's entry only.
    let other = json!({ "messages": [{ "body": "other" }] }).to_string();
    assert_error(
        &server.enqueue_raw("queue-b", &other, Some("shared-key")),
        409,
        "idempotency_conflict",
    );
}

// ---------------------------------------------------------------------------------------
// Leasing: order, shape, defaults, long polling
// ---------------------------------------------------------------------------------------

#[test]
fn lease_order_is_priority_then_fifo() {
    let server = Server::start(&[]);
    server.enqueue(
        "prio",
        &json!([{ "body": "a", "priority": 0 }, { "body": "b", "priority": 5 }, { "body": "c", "priority": -1 }]),
    );
    server.enqueue(
        "prio",
        &json!([
            { "body": "d", "priority": 5 },
            { "body": "e" },
            { "body": "f", "priority": 10 },
            { "body": "g", "priority": -1 },
        ]),
    );
    let mut order = Vec::new();
    loop {
        let leased = server.lease("prio", 1, LONG_LEASE_MS, 0);
        assert!(leased.len() <= 1, "max 1 returned {}", leased.len());
        let Some(message) = leased.into_iter().next() else {
            break;
        };
        order.push(message["body"].as_str().unwrap().to_string());
    }
    assert_eq!(order, ["f", "b", "d", "a", "e", "c", "g"]);

    // A larger lease takes the best messages first.
    server.enqueue("prio2", &json!([{ "body": 1 }, { "body": 2, "priority": 3 }, { "body": 3 }, { "body": 4, "priority": 3 }]));
    let taken: BTreeSet<i64> = server
        .lease("prio2", 3, LONG_LEASE_MS, 0)
        .iter()
        .map(|m| m["body"].as_i64().unwrap())
        .collect();
    assert_eq!(taken, BTreeSet::from([2, 4, 1]));
}

#[test]
fn leased_message_has_documented_shape() {
    let server = Server::start(&[]);
    let ids = server.enqueue(
        "shape",
        &json!([{ "body": { "to": "x@example.com" }, "headers": { "h": "v" }, "priority": 3 }]),
    );
    let before = now_ms();
    let leased = server.lease("shape", 10, 5000, 0);
    let after = now_ms();
    assert_eq!(leased.len(), 1);
    let message = &leased[0];
    assert_eq!(message["id"], json!(ids[0]));
    assert_eq!(message["body"], json!({ "to": "x@example.com" }));
    assert_eq!(message["headers"], json!({ "h": "v" }));
    assert_eq!(message["attempt"], json!(1));
    assert_eq!(message["priority"], json!(3));
    let lease = token(message);
    assert!(
        lease.len() == 32 && lease.bytes().all(|b| b.is_ascii_hexdigit()),
        "lease token should be 32 hex chars: {lease:?}"
    );
    let expires = as_u64(&message["lease_expires_at"], "lease_expires_at");
    assert!(
        (before + 5000..=after + 5000).contains(&expires),
        "lease_expires_at {expires} not now+5000"
    );
    assert!(as_u64(&message["enqueued_at"], "enqueued_at") <= before);

    let stored = server.get_message(&ids[0]);
    assert_eq!(stored["state"], json!("leased"));
    assert_eq!(stored["lease_expires_at"], json!(expires));
    assert_eq!(stored["attempts"], json!(1), "attempts counts deliveries so far");
    assert_eq!(server.queue_counts("shape")["leased"], json!(1));
}

#[test]
fn lease_with_empty_body_uses_defaults() {
    let server = Server::start(&["--lease-ms", "5000"]);
    server.enqueue("defaults", &json!([{ "body": 1 }, { "body": 2 }, { "body": 3 }]));
    for body in [None, Some("{}")] {
        let before = now_ms();
        let response = server.request("POST", "/v1/queues/defaults/lease", body, &[]);
        let after = now_ms();
        assert_eq!(response.status, 200, "{response:?}");
        let messages = response.body["messages"].as_array().expect("messages array");
        assert_eq!(messages.len(), 1, "default max is 1: {response:?}");
        let expires = as_u64(&messages[0]["lease_expires_at"], "lease_expires_at");
        assert!(
            (before + 5000..=after + 5000).contains(&expires),
            "default lease_ms must come from --lease-ms 5000: {expires} vs [{before}, {after}]"
        );
    }
}

#[test]
fn long_poll_wakes_on_enqueue() {
    let server = Server::start(&[]);
    server.enqueue("wake", &json!([{ "body": "warm-up" }]));
    server.lease("wake", 1, LONG_LEASE_MS, 0);

    // The lease may wait 30 s, the most there is; the enqueue comes after 300 ms. An answer
    // with the message well before the 30 s are over can only come from the enqueue waking it.
    let client = server.client();
    let started = Instant::now();
    let waiter = thread::spawn(move || {
        let messages = client.lease("wake", 1, LONG_LEASE_MS, 30_000);
        (messages, started.elapsed())
    });
    thread::sleep(Duration::from_millis(300));
    let ids = server.enqueue("wake", &json!([{ "body": "wake up" }]));
    let (messages, elapsed) = waiter.join().unwrap();
    assert_eq!(messages.len(), 1, "the waiting lease should get the new message");
    assert_eq!(messages[0]["id"], json!(ids[0]));
    assert!(elapsed >= Duration::from_millis(250), "returned before the enqueue: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(25), "long poll did not wake on enqueue: {elapsed:?}");
}

#[test]
fn long_poll_returns_empty_at_deadline() {
    let server = Server::start(&[]);
    server.enqueue("idle", &json!([{ "body": 1 }]));
    server.lease("idle", 1, LONG_LEASE_MS, 0);
    for queue in ["idle", "never-created"] {
        let started = Instant::now();
        let messages = server.lease(queue, 1, LONG_LEASE_MS, 300);
        let elapsed = started.elapsed();
        assert!(messages.is_empty(), "{queue}: {messages:?}");
        assert!(
            elapsed >= Duration::from_millis(250),
            "{queue}: returned before wait_ms: {elapsed:?}"
        );
        // Generous: the point is that it ends at its deadline rather than hanging.
        assert!(elapsed < Duration::from_secs(30), "{queue}: waited far past wait_ms: {elapsed:?}");
    }
}

#[test]
fn long_poll_wakes_when_a_scheduled_message_or_a_retry_becomes_due() {
    let server = Server::start(&[]);
    let ids = server.enqueue("due", &json!([{ "body": "scheduled", "delay_ms": 500 }]));
    let deliver_at = as_u64(&server.get_message(&ids[0])["deliver_at"], "deliver_at");
    let leased = server.lease("due", 1, LONG_LEASE_MS, 10_000);
    let returned_at = now_ms();
    assert_eq!(leased.len(), 1, "the scheduled message never arrived");
    assert!(returned_at >= deliver_at, "scheduled message leased early");
    assert!(
        returned_at < deliver_at + 1000,
        "long poll woke {} ms after deliver_at",
        returned_at - deliver_at
    );

    let result =
        server.nack("due", &json!([{ "lease": token(&leased[0]), "delay_ms": 500 }])).remove(0);
    let next = as_u64(&result["next_attempt_at"], "next_attempt_at");
    let again = server.lease("due", 1, LONG_LEASE_MS, 10_000);
    let returned_at = now_ms();
    assert_eq!(again.len(), 1, "the retry never arrived");
    assert!(returned_at >= next, "retry leased early");
    assert!(
        returned_at < next + 1000,
        "long poll woke {} ms after next_attempt_at",
        returned_at - next
    );
}

#[test]
fn lease_takes_at_most_max_and_only_from_its_queue() {
    let server = Server::start(&[]);
    let a_ids: BTreeSet<String> = server
        .enqueue("queue-a", &json!([{ "body": 1 }, { "body": 2 }, { "body": 3 }]))
        .into_iter()
        .collect();
    server.enqueue("queue-b", &json!([{ "body": "b", "priority": 100 }]));
    let first = server.lease("queue-a", 2, LONG_LEASE_MS, 0);
    assert_eq!(first.len(), 2, "max 2 of 3 ready");
    let rest = server.lease("queue-a", 10, LONG_LEASE_MS, 0);
    let leased: BTreeSet<String> =
        first.iter().chain(&rest).map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(leased, a_ids, "a lease returns only its own queue's messages");
    assert_eq!(server.queue_counts("queue-b")["ready"], json!(1));
}

#[test]
fn concurrent_consumers_never_share_a_message() {
    let server = Server::start(&[]);
    let messages: Vec<Value> = (0..500).map(|i| json!({ "body": i })).collect();
    let ids: BTreeSet<String> = server.enqueue("shared", &json!(messages)).into_iter().collect();
    let consumers: Vec<_> = (0..8)
        .map(|_| {
            let client = server.client();
            thread::spawn(move || {
                let mut leased = Vec::new();
                loop {
                    let batch = client.lease("shared", 7, LONG_LEASE_MS, 0);
                    if batch.is_empty() {
                        return leased;
                    }
                    leased.extend(batch);
                }
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for consumer in consumers {
        for message in consumer.join().unwrap() {
            let id = message["id"].as_str().unwrap().to_string();
            assert!(seen.insert(id.clone()), "message {id} leased by two consumers at once");
        }
    }
    assert_eq!(seen, ids, "every message leased exactly once");
}

#[test]
fn concurrent_retries_with_one_idempotency_key_store_one_batch() {
    let server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": "once" }, { "body": "only" }] }).to_string();
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (client, body) = (server.client(), body.clone());
            thread::spawn(move || client.enqueue_raw("race", &body, Some("same-key")))
        })
        .collect();
    let responses: Vec<Response> =
        senders.into_iter().map(|sender| sender.join().unwrap()).collect();
    let created = responses.iter().filter(|r| r.status == 201).count();
    assert_eq!(created, 1, "exactly one 201 among concurrent retries: {responses:?}");
    for response in &responses {
        assert!(response.status == 201 || response.status == 200, "{response:?}");
        assert_eq!(response.body["ids"], responses[0].body["ids"], "all replies name the same ids");
    }
    assert_eq!(server.lease_all("race", LONG_LEASE_MS, 0).len(), 2, "one copy of the batch");
}

// ---------------------------------------------------------------------------------------
// Leases, expiry, ack
// ---------------------------------------------------------------------------------------

#[test]
fn expired_lease_is_redelivered_with_next_attempt() {
    // A one-second fixed backoff keeps the message in "retrying" long enough to see it.
    let server = Server::start(&[
        "--backoff-initial-ms",
        "1000",
        "--backoff-max-ms",
        "1000",
        "--backoff-jitter",
        "0",
    ]);
    let ids = server.enqueue("expiry", &json!([{ "body": "e" }]));
    let first = server.lease("expiry", 1, 200, 0);
    assert_eq!(first[0]["attempt"], json!(1));
    let first_expires = as_u64(&first[0]["lease_expires_at"], "lease_expires_at");

    let retrying =
        poll_until(Duration::from_secs(3), "the expired lease to turn into retrying", || {
            let message = server.get_message(&ids[0]);
            (message["state"] == json!("retrying")).then_some(message)
        });
    let last_error = &retrying["last_error"];
    let text = last_error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("last_error.message missing: {retrying}"));
    assert!(
        text.to_lowercase().contains("expire"),
        "last_error should say the lease expired: {retrying}"
    );
    assert_eq!(last_error["attempt"], json!(1), "{retrying}");
    let deliver_at = as_u64(&retrying["deliver_at"], "deliver_at while retrying");
    assert!(deliver_at >= first_expires + 1000, "backoff 1000 ms after expiry: {retrying}");
    assert_eq!(retrying["lease_expires_at"], Value::Null, "{retrying}");
    if now_ms() + 100 < deliver_at {
        assert!(server.lease("expiry", 1, LONG_LEASE_MS, 0).is_empty(), "leasable during backoff");
    }

    let second = server.lease("expiry", 1, LONG_LEASE_MS, 3000);
    assert_eq!(second.len(), 1, "message was not redelivered after backoff");
    assert!(now_ms() >= deliver_at, "redelivered before deliver_at {deliver_at}");
    assert_eq!(second[0]["id"], json!(ids[0]));
    assert_eq!(second[0]["attempt"], json!(2));
    assert_ne!(token(&second[0]), token(&first[0]), "a redelivery gets a new lease token");
    assert_eq!(server.get_message(&ids[0])["attempts"], json!(2));
}

#[test]
fn stale_lease_cannot_ack_nack_or_extend() {
    let server = Server::start(FAST_BACKOFF);
    let ids = server.enqueue("stale", &json!([{ "body": "s" }]));
    let old = token(&server.lease("stale", 1, 200, 0)[0]);
    let second = server.lease("stale", 1, LONG_LEASE_MS, 3000);
    assert_eq!(second.len(), 1, "not redelivered after lease expiry");
    assert_eq!(second[0]["attempt"], json!(2));
    let new = token(&second[0]);

    assert_eq!(
        server.extend("stale", &json!([{ "lease": old, "lease_ms": 1000 }]))[0]["result"],
        json!("lease_expired")
    );
    assert_eq!(
        server.nack("stale", &json!([{ "lease": old, "error": "late" }]))[0]["result"],
        json!("lease_expired")
    );
    let results = server.ack("stale", &[&old, &new]);
    assert_eq!(results[0], json!({ "lease": old, "result": "lease_expired" }));
    assert_eq!(results[1], json!({ "lease": new, "result": "acked" }));
    assert_eq!(server.get_message(&ids[0])["state"], json!("delivered"));
}

#[test]
fn second_ack_of_the_same_lease_is_lease_expired() {
    let server = Server::start(&[]);
    server.enqueue("twice", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("twice", 1, LONG_LEASE_MS, 0)[0]);
    assert_eq!(server.ack("twice", &[&lease])[0]["result"], json!("acked"));
    assert_eq!(server.ack("twice", &[&lease])[0]["result"], json!("lease_expired"));
    assert_eq!(
        server.nack("twice", &json!([{ "lease": lease }]))[0]["result"],
        json!("lease_expired")
    );
    assert_eq!(server.queue_counts("twice")["delivered"], json!(1));
}

#[test]
fn ack_of_unknown_or_foreign_tokens_is_unknown() {
    let server = Server::start(&[]);
    server.enqueue("mine", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("mine", 1, LONG_LEASE_MS, 0)[0]);

    let garbage = "garbage";
    let well_formed = "ffffffffffffffffffffffffffffffff";
    let results = server.ack("mine", &[garbage, well_formed]);
    assert_eq!(results[0], json!({ "lease": garbage, "result": "unknown" }));
    assert_eq!(results[1], json!({ "lease": well_formed, "result": "unknown" }));
    assert_eq!(
        server.extend("mine", &json!([{ "lease": garbage }]))[0]["result"],
        json!("unknown")
    );
    assert_eq!(server.nack("mine", &json!([{ "lease": garbage }]))[0]["result"], json!("unknown"));

    // A real token presented on another queue names no message of that queue.
    assert_eq!(server.ack("theirs", &[&lease])[0]["result"], json!("unknown"));
    assert_eq!(
        server.ack("mine", &[&lease])[0]["result"],
        json!("acked"),
        "the foreign ack must not consume the lease"
    );
}

#[test]
fn ack_and_extend_after_the_lease_deadline_are_lease_expired() {
    // A long backoff keeps the expired messages from being redelivered during the test.
    let server = Server::start(&["--backoff-initial-ms", "5000", "--backoff-max-ms", "5000"]);
    let ids = server.enqueue("late", &json!([{ "body": 1 }, { "body": 2 }]));
    let leased = server.lease("late", 2, 100, 0);
    let deadline = as_u64(&leased[0]["lease_expires_at"], "lease_expires_at");
    while now_ms() <= deadline + 50 {
        thread::sleep(Duration::from_millis(10));
    }
    // Just past the deadline, whether or not the server has processed the expiry yet.
    let extended = server
        .extend("late", &json!([{ "lease": token(&leased[1]), "lease_ms": 60_000 }]))
        .remove(0);
    assert_eq!(
        extended["result"],
        json!("lease_expired"),
        "an expired lease cannot be extended: {extended}"
    );
    let acked = server.ack("late", &[&token(&leased[0])]).remove(0);
    assert_eq!(acked["result"], json!("lease_expired"), "an expired lease cannot ack: {acked}");
    poll_until(Duration::from_secs(3), "both expired leases to turn into retrying", || {
        ids.iter().all(|id| server.get_message(id)["state"] == json!("retrying")).then_some(())
    });
}

#[test]
fn acked_message_stays_visible_as_delivered() {
    let server = Server::start(&[]);
    let ids = server.enqueue("done", &json!([{ "body": { "k": "v" } }]));
    let lease = token(&server.lease("done", 1, LONG_LEASE_MS, 0)[0]);
    assert_eq!(server.ack("done", &[&lease])[0]["result"], json!("acked"));
    let message = server.get_message(&ids[0]);
    assert_eq!(message["state"], json!("delivered"));
    assert_eq!(message["attempts"], json!(1));
    assert_eq!(message["lease_expires_at"], Value::Null);
    assert_eq!(message["body"], json!({ "k": "v" }));
    let counts = server.queue_counts("done");
    assert_eq!(counts["delivered"], json!(1));
    assert_eq!(counts["ready"], json!(0));
    assert!(server.lease("done", 10, LONG_LEASE_MS, 0).is_empty());
}

#[test]
fn extend_pushes_the_lease_deadline() {
    let server = Server::start(&[
        "--lease-ms",
        "5000",
        "--backoff-initial-ms",
        "50",
        "--backoff-max-ms",
        "200",
    ]);
    let ids = server.enqueue("extend", &json!([{ "body": 1 }]));
    let leased = server.lease("extend", 1, 600, 0);
    let lease = token(&leased[0]);
    let original_expires = as_u64(&leased[0]["lease_expires_at"], "lease_expires_at");

    thread::sleep(Duration::from_millis(200));
    let before = now_ms();
    let result = server.extend("extend", &json!([{ "lease": lease, "lease_ms": 2000 }])).remove(0);
    let after = now_ms();
    assert_eq!(result["result"], json!("extended"), "{result}");
    assert_eq!(result["lease"], json!(lease));
    let extended = as_u64(&result["lease_expires_at"], "lease_expires_at");
    assert!(
        (before + 2000..=after + 2000).contains(&extended),
        "new deadline = now + lease_ms: {extended}"
    );
    assert_eq!(server.get_message(&ids[0])["lease_expires_at"], json!(extended));

    // Well past the original deadline the message is still held by this lease.
    let past_original = original_expires + 400;
    while now_ms() < past_original {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.get_message(&ids[0])["state"], json!("leased"));
    assert!(
        server.lease("extend", 1, LONG_LEASE_MS, 0).is_empty(),
        "redelivered despite the extension"
    );

    // Without lease_ms the default --lease-ms applies.
    let before = now_ms();
    let result = server.extend("extend", &json!([{ "lease": lease }])).remove(0);
    let after = now_ms();
    assert_eq!(result["result"], json!("extended"), "{result}");
    let extended = as_u64(&result["lease_expires_at"], "lease_expires_at");
    assert!(
        (before + 5000..=after + 5000).contains(&extended),
        "default extension is --lease-ms: {extended}"
    );

    assert_eq!(server.ack("extend", &[&lease])[0]["result"], json!("acked"));
}

// ---------------------------------------------------------------------------------------
// Nack, backoff, dead letters
// ---------------------------------------------------------------------------------------

#[test]
fn nack_schedules_a_retry_and_records_the_error() {
    let server = Server::start(&[
        "--backoff-initial-ms",
        "800",
        "--backoff-max-ms",
        "800",
        "--backoff-jitter",
        "0",
    ]);
    let ids = server.enqueue("nack", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("nack", 1, LONG_LEASE_MS, 0)[0]);

    let before = now_ms();
    let result =
        server.nack("nack", &json!([{ "lease": lease, "error": "SMTP 451 try later" }])).remove(0);
    let after = now_ms();
    assert_eq!(result["lease"], json!(lease));
    assert_eq!(result["result"], json!("retrying"), "{result}");
    let next = as_u64(&result["next_attempt_at"], "next_attempt_at");
    assert!(
        (before + 800..=after + 800).contains(&next),
        "next_attempt_at = now + backoff(1) = now + 800: {next}"
    );

    let message = server.get_message(&ids[0]);
    assert_eq!(message["state"], json!("retrying"), "{message}");
    assert_eq!(message["deliver_at"], json!(next), "{message}");
    assert_eq!(message["lease_expires_at"], Value::Null, "{message}");
    assert_eq!(message["attempts"], json!(1), "{message}");
    assert_eq!(message["last_error"]["message"], json!("SMTP 451 try later"), "{message}");
    assert_eq!(message["last_error"]["attempt"], json!(1), "{message}");
    let at = as_u64(&message["last_error"]["at"], "last_error.at");
    assert!((before..=after).contains(&at), "last_error.at {at} not in [{before}, {after}]");
    assert_eq!(server.queue_counts("nack")["retrying"], json!(1));
    assert!(
        server.lease("nack", 1, LONG_LEASE_MS, 0).is_empty(),
        "leasable before next_attempt_at"
    );

    let again = server.lease("nack", 1, LONG_LEASE_MS, 3000);
    assert_eq!(again.len(), 1, "not redelivered after the backoff");
    assert!(now_ms() >= next, "redelivered before next_attempt_at");
    assert_eq!(again[0]["attempt"], json!(2));
}

#[test]
fn nack_error_text_is_cut_to_4096_bytes() {
    let server = Server::start(&[]);
    let ids = server.enqueue("long-error", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("long-error", 1, LONG_LEASE_MS, 0)[0]);
    let error = "e".repeat(5000);
    server.nack("long-error", &json!([{ "lease": lease, "error": error, "delay_ms": 60_000 }]));
    let message = server.get_message(&ids[0]);
    assert_eq!(
        message["last_error"]["message"],
        json!("e".repeat(4096)),
        "stored error text is cut to 4096 bytes"
    );
}

#[test]
fn nack_backoff_follows_the_formula() {
    // min(initial * multiplier^(attempt-1), max) without jitter: 100, 300, 500 (900 capped), 500.
    let server = Server::start(&[
        "--backoff-initial-ms",
        "100",
        "--backoff-multiplier",
        "3",
        "--backoff-max-ms",
        "500",
        "--backoff-jitter",
        "0",
    ]);
    server.enqueue("formula", &json!([{ "body": 1 }]));
    for (attempt, delay) in [(1, 100), (2, 300), (3, 500), (4, 500)] {
        let leased = server.lease("formula", 1, LONG_LEASE_MS, 3000);
        assert_eq!(leased.len(), 1, "attempt {attempt} was not delivered");
        assert_eq!(leased[0]["attempt"], json!(attempt));
        let before = now_ms();
        let result = server.nack("formula", &json!([{ "lease": token(&leased[0]) }])).remove(0);
        let after = now_ms();
        assert_eq!(result["result"], json!("retrying"), "{result}");
        let next = as_u64(&result["next_attempt_at"], "next_attempt_at");
        assert!(
            (before + delay..=after + delay).contains(&next),
            "attempt {attempt}: expected now + {delay}, got {} after request start",
            next as i64 - before as i64
        );
    }
}

#[test]
fn backoff_jitter_stays_within_bounds_and_spreads_retries() {
    let server = Server::start(&["--backoff-initial-ms", "1000", "--backoff-jitter", "0.2"]);
    let count = 20;
    let messages: Vec<Value> = (0..count).map(|i| json!({ "body": i })).collect();
    server.enqueue("jitter", &json!(messages));
    let leased = server.lease("jitter", count, LONG_LEASE_MS, 0);
    assert_eq!(leased.len(), count as usize);
    let items: Vec<Value> = leased.iter().map(|m| json!({ "lease": token(m) })).collect();
    let before = now_ms();
    let results = server.nack("jitter", &json!(items));
    let after = now_ms();
    let mut distinct = BTreeSet::new();
    for result in &results {
        assert_eq!(result["result"], json!("retrying"), "{result}");
        let next = as_u64(&result["next_attempt_at"], "next_attempt_at");
        assert!(
            (before + 800..=after + 1200).contains(&next),
            "1000 ms +-20% out of bounds: {}",
            next - before
        );
        distinct.insert(next);
    }
    assert!(distinct.len() > 1, "jitter should spread the retries, all got {distinct:?}");
}

#[test]
fn nack_with_delay_ms_overrides_backoff() {
    let server = Server::start(FAST_BACKOFF);
    let ids = server.enqueue("delay", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("delay", 1, LONG_LEASE_MS, 0)[0]);
    let before = now_ms();
    let result = server
        .nack("delay", &json!([{ "lease": lease, "error": "later", "delay_ms": 600 }]))
        .remove(0);
    let after = now_ms();
    assert_eq!(result["result"], json!("retrying"), "{result}");
    let next = as_u64(&result["next_attempt_at"], "next_attempt_at");
    assert!(
        (before + 600..=after + 600).contains(&next),
        "next_attempt_at = now + delay_ms: {}",
        next - before
    );
    assert_eq!(server.get_message(&ids[0])["deliver_at"], json!(next));
    assert!(
        server.lease("delay", 1, LONG_LEASE_MS, 0).is_empty(),
        "leasable before delay_ms passed"
    );

    let again = server.lease("delay", 1, LONG_LEASE_MS, 3000);
    assert_eq!(again.len(), 1, "not redelivered after delay_ms");
    assert!(now_ms() >= next);
    assert_eq!(again[0]["attempt"], json!(2));
}

#[test]
fn nack_with_dead_true_moves_the_message_to_dead() {
    let server = Server::start(FAST_BACKOFF);
    let ids = server.enqueue("dead", &json!([{ "body": 1 }]));
    let lease = token(&server.lease("dead", 1, LONG_LEASE_MS, 0)[0]);
    let result = server
        .nack("dead", &json!([{ "lease": lease, "error": "bad address", "dead": true }]))
        .remove(0);
    assert_eq!(result["result"], json!("dead"), "{result}");
    assert!(
        result.get("next_attempt_at").is_none_or(Value::is_null),
        "no next attempt for dead: {result}"
    );

    let message = server.get_message(&ids[0]);
    assert_eq!(message["state"], json!("dead"), "{message}");
    assert_eq!(message["deliver_at"], Value::Null, "{message}");
    assert_eq!(message["last_error"]["message"], json!("bad address"), "{message}");
    assert_eq!(server.queue_counts("dead")["dead"], json!(1));
    assert!(
        server.lease("dead", 1, LONG_LEASE_MS, 300).is_empty(),
        "a dead message was redelivered"
    );
}

#[test]
fn reaching_max_attempts_moves_the_message_to_dead() {
    let server = Server::start(&[
        "--max-attempts",
        "3",
        "--backoff-initial-ms",
        "50",
        "--backoff-max-ms",
        "200",
    ]);
    let ids =
        server.enqueue("max", &json!([{ "body": 1, "max_attempts": 2 }, { "body": "default" }]));
    assert_eq!(
        server.get_message(&ids[1])["max_attempts"],
        json!(3),
        "default comes from --max-attempts"
    );

    let first = server.lease("max", 1, LONG_LEASE_MS, 0);
    assert_eq!(first[0]["id"], json!(ids[0]));
    // The other message is held meanwhile so that only ids[0] can come back.
    assert_eq!(server.lease("max", 1, LONG_LEASE_MS, 0)[0]["id"], json!(ids[1]));
    let result =
        server.nack("max", &json!([{ "lease": token(&first[0]), "error": "one" }])).remove(0);
    assert_eq!(result["result"], json!("retrying"), "attempt 1 of 2 retries: {result}");

    let second = server.lease("max", 1, LONG_LEASE_MS, 3000);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["id"], json!(ids[0]));
    assert_eq!(second[0]["attempt"], json!(2));
    let result =
        server.nack("max", &json!([{ "lease": token(&second[0]), "error": "two" }])).remove(0);
    assert_eq!(result["result"], json!("dead"), "attempt 2 of 2 must go dead: {result}");

    let message = server.get_message(&ids[0]);
    assert_eq!(message["state"], json!("dead"));
    assert_eq!(message["attempts"], json!(2));
    assert_eq!(message["last_error"]["message"], json!("two"));
    assert_eq!(message["last_error"]["attempt"], json!(2));
}

#[test]
fn lease_expiry_on_the_last_attempt_moves_the_message_to_dead() {
    let server = Server::start(FAST_BACKOFF);
    let ids = server.enqueue("expire-dead", &json!([{ "body": 1, "max_attempts": 1 }]));
    server.lease("expire-dead", 1, 200, 0);
    let message = poll_until(Duration::from_secs(3), "the expired last attempt to go dead", || {
        let message = server.get_message(&ids[0]);
        (message["state"] == json!("dead")).then_some(message)
    });
    let text = message["last_error"]["message"].as_str().unwrap_or("");
    assert!(
        text.to_lowercase().contains("expire"),
        "last_error should say the lease expired: {message}"
    );
    assert!(server.lease("expire-dead", 1, LONG_LEASE_MS, 300).is_empty());
}

// ---------------------------------------------------------------------------------------
// Scheduling and counts
// ---------------------------------------------------------------------------------------

#[test]
fn scheduled_messages_are_not_leasable_before_their_time() {
    let server = Server::start(&[]);
    let before = now_ms();
    let at = before + 1500;
    let rfc3339 =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at)).to_string();
    let ids = server.enqueue(
        "later",
        &json!([
            { "body": "delay", "delay_ms": 1500 },
            { "body": "epoch", "deliver_at": at },
            { "body": "rfc3339", "deliver_at": rfc3339 },
            { "body": "past", "deliver_at": before - 60_000 },
            { "body": "null", "deliver_at": null },
        ]),
    );
    let after = now_ms();

    let mut deliver_ats = Vec::new();
    for id in &ids[..3] {
        let message = server.get_message(id);
        assert_eq!(message["state"], json!("scheduled"), "{message}");
        deliver_ats.push(as_u64(&message["deliver_at"], "deliver_at"));
    }
    assert!(
        (before + 1500..=after + 1500).contains(&deliver_ats[0]),
        "delay_ms: deliver_at = enqueue + 1500"
    );
    assert_eq!(deliver_ats[1], at, "deliver_at as epoch ms");
    assert_eq!(deliver_ats[2], at, "deliver_at as RFC 3339 ({rfc3339})");
    for id in &ids[3..] {
        assert_eq!(server.get_message(id)["state"], json!("ready"));
    }
    let counts = server.queue_counts("later");
    assert_eq!(counts["scheduled"], json!(3), "{counts}");
    assert_eq!(counts["ready"], json!(2), "{counts}");

    let ready: BTreeSet<String> = server
        .lease("later", 10, LONG_LEASE_MS, 0)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ready,
        ids[3..].iter().cloned().collect::<BTreeSet<_>>(),
        "only the unscheduled messages are ready"
    );
    assert!(
        server.lease("later", 10, LONG_LEASE_MS, 0).is_empty(),
        "scheduled message leased early"
    );

    let mut collected = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    while collected.len() < 3 && Instant::now() < deadline {
        for message in server.lease("later", 10, LONG_LEASE_MS, 3000) {
            let id = message["id"].as_str().unwrap().to_string();
            let index = ids.iter().position(|known| *known == id).expect("leased an unknown id");
            assert!(now_ms() >= deliver_ats[index], "{id} leased before its deliver_at");
            assert_eq!(message["attempt"], json!(1));
            collected.insert(id);
        }
    }
    assert_eq!(
        collected,
        ids[..3].iter().cloned().collect::<BTreeSet<_>>(),
        "scheduled messages never became ready"
    );
}

#[test]
fn deliver_at_accepts_rfc3339_numeric_offsets() {
    let server = Server::start(&[]);
    let utc = humantime::parse_rfc3339("2030-01-31T09:00:00Z").unwrap();
    let expected = utc.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    // The same instant in three spellings RFC 3339 allows (section 5.6: "Z" or +hh:mm / -hh:mm).
    for spelling in
        ["2030-01-31T09:00:00Z", "2030-01-31T11:00:00+02:00", "2030-01-31T03:30:00-05:30"]
    {
        let response = server.enqueue_raw(
            "offsets",
            &json!({ "messages": [{ "body": spelling, "deliver_at": spelling }] }).to_string(),
            None,
        );
        assert_eq!(response.status, 201, "deliver_at {spelling:?} is RFC 3339: {response:?}");
        let id = &string_array(&response.body["ids"])[0];
        let message = server.get_message(id);
        assert_eq!(message["state"], json!("scheduled"), "{message}");
        assert_eq!(message["deliver_at"], json!(expected), "{spelling:?} is 2030-01-31T09:00:00Z");
    }
}

#[test]
fn queue_counts_track_every_state() {
    let server = Server::start(&[]);
    let ids = server.enqueue(
        "states",
        &json!([
            { "body": "leased", "priority": 5 },
            { "body": "retrying", "priority": 4 },
            { "body": "dead", "priority": 3 },
            { "body": "delivered", "priority": 2 },
            { "body": "ready", "priority": 1 },
            { "body": "scheduled", "delay_ms": 600_000 },
        ]),
    );
    let leased = server.lease("states", 4, LONG_LEASE_MS, 0);
    assert_eq!(leased.len(), 4);
    let by_body = |body: &str| {
        token(leased.iter().find(|m| m["body"] == json!(body)).expect("leased by priority"))
    };
    server.nack("states", &json!([{ "lease": by_body("retrying"), "delay_ms": 600_000 }]));
    server.nack("states", &json!([{ "lease": by_body("dead"), "dead": true }]));
    server.ack("states", &[&by_body("delivered")]);

    assert_eq!(
        server.queue_counts("states"),
        json!({ "scheduled": 1, "ready": 1, "leased": 1, "retrying": 1, "dead": 1, "delivered": 1 })
    );
    for id in &ids {
        let message = server.get_message(id);
        assert_eq!(
            message["state"], message["body"],
            "GET state agrees with the counts: {message}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Lifecycle and storage failure
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_exits_zero_and_keeps_data() {
    let mut server = Server::start(&[]);
    let ids = server.enqueue("term", &json!([{ "body": "kept" }, { "body": "acked" }]));
    let leased = server.lease("term", 2, LONG_LEASE_MS, 0);
    let acked = leased.iter().find(|m| m["body"] == json!("acked")).unwrap();
    server.ack("term", &[&token(acked)]);

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}\nstderr:\n{}",
        server.stderr_text()
    );
    server.restart();
    assert_eq!(server.get_message(&ids[0])["body"], json!("kept"));
    assert_eq!(server.get_message(&ids[1])["state"], json!("delivered"));
}

#[test]
fn failed_wal_sync_refuses_writes_until_restart_and_retry_stores_once() {
    let mut server = Server::start(&[]);
    let earlier = server.enqueue("wal", &json!([{ "body": "before the failure" }]));
    server.set_failpoint("wal.sync", "return");

    let batch = json!({ "messages": [
        { "body": { "batch": "k1", "i": 0 } },
        { "body": { "batch": "k1", "i": 1 } },
        { "body": { "batch": "k1", "i": 2 } },
    ]})
    .to_string();
    let failed = server.enqueue_raw("wal", &batch, Some("batch-k1"));
    assert!(failed.status >= 500, "an enqueue whose fsync failed must not succeed: {failed:?}");
    assert_error(&failed, 503, "storage_failed");

    // Every later write is refused, even once the failpoint is off: only a restart clears it.
    let refused = json!({ "messages": [{ "body": { "batch": "refused" } }] }).to_string();
    assert_error(&server.enqueue_raw("wal", &refused, None), 503, "storage_failed");
    server.set_failpoint("wal.sync", "off");
    assert_error(&server.enqueue_raw("wal", &refused, None), 503, "storage_failed");

    // Reads keep working; health reports the failure.
    assert_eq!(server.get_message(&earlier[0])["state"], json!("ready"));
    server.queue_counts("wal");
    let health = server.get("/healthz");
    assert_eq!(health.status, 503, "{health:?}");
    assert_eq!(health.body["status"], json!("storage_failed"), "{health:?}");
    assert_eq!(health.body["error"]["code"], json!("storage_failed"), "{health:?}");

    server.kill9();
    server.restart();
    assert_eq!(server.get("/healthz").status, 200);
    let retry = server.enqueue_raw("wal", &batch, Some("batch-k1"));
    assert!(retry.status == 201 || retry.status == 200, "retry after restart: {retry:?}");
    assert_eq!(retry.body["duplicate"], json!(retry.status == 200), "{retry:?}");
    let retry_ids: BTreeSet<String> = string_array(&retry.body["ids"]).into_iter().collect();
    assert_eq!(retry_ids.len(), 3);

    let everything = server.lease_all("wal", LONG_LEASE_MS, 0);
    let copies: Vec<&Value> =
        everything.iter().filter(|m| m["body"]["batch"] == json!("k1")).collect();
    assert_eq!(copies.len(), 3, "exactly one copy of the retried batch: {everything:?}");
    let copy_ids: BTreeSet<String> =
        copies.iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(copy_ids, retry_ids, "the stored copy is the one the retry reported");
    let indexes: BTreeSet<u64> = copies.iter().map(|m| m["body"]["i"].as_u64().unwrap()).collect();
    assert_eq!(indexes, BTreeSet::from([0, 1, 2]));
    assert!(
        everything.iter().all(|m| m["body"]["batch"] != json!("refused")),
        "a write refused with storage_failed was stored: {everything:?}"
    );
    assert_eq!(everything.iter().filter(|m| m["id"] == json!(earlier[0])).count(), 1);
    assert_eq!(everything.len(), 4, "{everything:?}");
}
