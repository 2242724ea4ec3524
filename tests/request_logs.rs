//! The access log: one line per request, with the facts an operator needs and nothing from the
//! request's body or headers.
//!
//! Method: the real binary with `--log-format json`. After an enqueue of three messages, a lease,
//! an ack and a request to an unknown path, the server's stderr is parsed line by line and each
//! request's `outboxd::access` line is checked field by field; the distinctive body text and the
//! token secret must not appear anywhere. A filter of `info,outboxd::access=warn` must silence the
//! access lines while a failed request's warning still appears.

mod common;

use common::{poll_until, ConfigFile, Server};
use serde_json::{json, Value};
use std::time::Duration;

const BODY_TEXT: &str = "quetzal-marmalade-4417";

/// The JSON lines of the server's stderr whose target is `outboxd::access`.
fn access_lines(server: &Server) -> Vec<Value> {
    server
        .stderr_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == json!("outboxd::access"))
        .collect()
}

/// Waits until `count` access lines were written, and returns their `fields`.
fn wait_for_access_lines(server: &Server, count: usize) -> Vec<Value> {
    poll_until(Duration::from_secs(5), "access log lines", || {
        let lines = access_lines(server);
        (lines.len() >= count).then_some(lines)
    })
    .into_iter()
    .map(|line| {
        assert_eq!(line["level"], json!("INFO"), "{line}");
        line["fields"].clone()
    })
    .collect()
}

/// Checks one access line's fields; `queue` and `batch` absent when `None`.
fn assert_line(
    fields: &Value,
    method: &str,
    route: &str,
    status: u16,
    queue: Option<&str>,
    batch: Option<u64>,
) {
    assert_eq!(fields["message"], json!("request"), "{fields}");
    assert_eq!(fields["method"], json!(method), "{fields}");
    assert_eq!(fields["route"], json!(route), "{fields}");
    assert_eq!(fields["status"], json!(status), "{fields}");
    let duration_ms = fields["duration_ms"].as_f64().unwrap_or(-1.0);
    assert!((0.0..10_000.0).contains(&duration_ms), "duration_ms: {fields}");
    assert_eq!(fields.get("queue"), queue.map(|queue| json!(queue)).as_ref(), "{fields}");
    assert_eq!(fields.get("batch"), batch.map(|batch| json!(batch)).as_ref(), "{fields}");
}

#[test]
fn every_request_gets_one_access_line_without_bodies() {
    let server = Server::start(&["--log-format", "json"]);
    let bodies = json!([
        {"body": BODY_TEXT, "headers": {"kind": BODY_TEXT}},
        {"body": BODY_TEXT},
        {"body": BODY_TEXT},
    ]);
    server.enqueue("logged", &bodies);
    let leased = server.lease("logged", 10, 30_000, 0);
    assert_eq!(leased.len(), 3);
    let leases: Vec<&str> = leased.iter().map(|m| m["lease"].as_str().unwrap()).collect();
    server.ack("logged", &leases[..2]);
    assert_eq!(server.get("/v1/nowhere").status, 404);

    let lines = wait_for_access_lines(&server, 4);
    assert_eq!(lines.len(), 4, "one line per request: {lines:?}");
    assert_line(&lines[0], "POST", "enqueue", 201, Some("logged"), Some(3));
    assert_line(&lines[1], "POST", "lease", 200, Some("logged"), Some(3));
    assert_line(&lines[2], "POST", "ack", 200, Some("logged"), Some(2));
    assert_line(&lines[3], "GET", "unknown", 404, None, None);
    for fields in &lines {
        assert!(fields.get("token").is_none(), "no token without access control: {fields}");
    }
    let stderr = server.stderr_text();
    assert!(!stderr.contains(BODY_TEXT), "a body reached the log:\n{stderr}");
    assert!(!stderr.contains(leases[0]), "a lease token reached the log:\n{stderr}");
}

#[test]
fn access_lines_name_the_token_and_never_its_secret() {
    let secret = "access-log-secret-93c1d7e";
    let config = ConfigFile::new(&format!(
        "[[tokens]]\nname = \"log-producer\"\nsecret = \"{secret}\"\nroles = [\"produce\"]\n"
    ));
    let server = Server::start(&["--log-format", "json", "--config", config.path()]);
    server.with_token(secret).enqueue("tokened", &json!([{"body": 1}]));
    let refused = server.with_token(secret).post("/v1/queues/tokened/lease", &json!({}));
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(server.get("/v1/queues").status, 401);

    let lines = wait_for_access_lines(&server, 3);
    assert_line(&lines[0], "POST", "enqueue", 201, Some("tokened"), Some(1));
    assert_eq!(lines[0]["token"], json!("log-producer"), "{}", lines[0]);
    assert_line(&lines[1], "POST", "lease", 403, Some("tokened"), None);
    assert_eq!(lines[1]["token"], json!("log-producer"), "{}", lines[1]);
    assert_line(&lines[2], "GET", "queues", 401, None, None);
    assert!(lines[2].get("token").is_none(), "{}", lines[2]);
    let stderr = server.stderr_text();
    assert!(!stderr.contains(secret), "the secret reached the log:\n{stderr}");
}

#[test]
fn a_filter_silences_access_lines_but_not_failures() {
    let server = Server::start(&["--log-format", "json", "--log", "info,outboxd::access=warn"]);
    server.enqueue("quiet", &json!([{"body": 1}]));
    // A failed fsync answers 503: its warning is written just before the access line would be,
    // so once the warning is there, an access line would be too.
    server.set_failpoint("wal.sync", "return");
    let failed = server.enqueue_raw("quiet", &json!({"messages": [{"body": 2}]}).to_string(), None);
    assert_eq!(failed.status, 503, "{failed:?}");
    let warning = poll_until(Duration::from_secs(5), "the request-failed warning", || {
        server.stderr_text().lines().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            (line["fields"]["message"] == json!("request failed")).then_some(line)
        })
    });
    assert_eq!(warning["level"], json!("WARN"), "{warning}");
    assert_eq!(warning["fields"]["code"], json!("storage_failed"), "{warning}");
    let stderr = server.stderr_text();
    assert!(access_lines(&server).is_empty(), "access lines despite the filter:\n{stderr}");
    assert!(stderr.contains("\"listening\""), "other info lines stay:\n{stderr}");
}

#[test]
fn a_client_that_leaves_a_long_poll_is_logged_with_status_499() {
    let server = Server::start(&["--log-format", "json"]);
    let address = server.client().base_url.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let body = r#"{"max": 1, "wait_ms": 20000}"#;
    let request = format!(
        "POST /v1/queues/idle/lease HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let lines = wait_for_access_lines(&server, 1);
    assert_eq!(lines[0]["status"], json!(499), "{lines:?}");
    assert_eq!(lines[0]["route"], json!("lease"), "{lines:?}");
    let waited = lines[0]["duration_ms"].as_f64().unwrap_or(0.0);
    assert!((250.0..15_000.0).contains(&waited), "logged when the client left: {lines:?}");
}
