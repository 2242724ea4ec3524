//! Access control: API tokens decide who may call which endpoint on which queues.
//!
//! Method: the real binary with a config file holding `[[tokens]]` (producer, consumer, admin,
//! and an admin limited to one queue pattern). Each endpoint is called with no token, an unknown
//! token, a token lacking the role or the queue, and a token that holds both; the status, the
//! error code, the `WWW-Authenticate` header and the 403 message are checked, and so is what the
//! queue list and the event stream show to a token limited by its pattern. The server's stderr
//! is searched for every secret afterwards. A server without tokens stays open.

mod common;

use common::{assert_error, ConfigFile, Response, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::Duration;

const PRODUCER_SECRET: &str = "producer-secret-7f3a9c1e5b";
const CONSUMER_SECRET: &str = "consumer-secret-2d8e4f6a0c";
const ADMIN_SECRET: &str = "admin-secret-9b1d3f5e7a2c";
const BILLING_ADMIN_SECRET: &str = "billing-admin-secret-4c6e8a";
const UNKNOWN_SECRET: &str = "unknown-secret-0a1b2c3d4e5f";

const TOKENS: &str = r#"
[[tokens]]
name = "billing-producer"
secret = "producer-secret-7f3a9c1e5b"
roles = ["produce"]
queues = "billing.*"

[[tokens]]
name = "billing-consumer"
secret = "consumer-secret-2d8e4f6a0c"
roles = ["consume"]
queues = "billing.*"

[[tokens]]
name = "ops-admin"
secret = "admin-secret-9b1d3f5e7a2c"
roles = ["admin", "produce"]

[[tokens]]
name = "billing-admin"
secret = "billing-admin-secret-4c6e8a"
roles = ["admin"]
queues = "billing.*"
"#;

/// A server with the tokens above; the config file lives as long as the server.
fn start(extra_args: &[&str]) -> (Server, ConfigFile) {
    let config = ConfigFile::new(TOKENS);
    let mut args = vec!["--config", config.path()];
    args.extend_from_slice(extra_args);
    (Server::start(&args), config)
}

fn assert_unauthenticated(response: &Response, code: &str) {
    assert_error(response, 401, code);
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"outboxd\""),
        "{response:?}"
    );
}

fn message(response: &Response) -> String {
    response.body["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn enqueue(client: &common::Client, queue: &str, body: &str) -> Response {
    client.enqueue_raw(queue, &json!({"messages": [{"body": body}]}).to_string(), None)
}

fn queue_names(response: &Response) -> Vec<String> {
    assert_eq!(response.status, 200, "{response:?}");
    let queues = response.body["queues"].as_array().expect("queues array");
    queues.iter().map(|queue| queue["name"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn requests_without_a_valid_token_are_refused_and_no_secret_is_logged() {
    let (server, _config) = start(&["--log", "outboxd=trace,info"]);
    let anonymous = server.client();

    let missing = anonymous.get("/v1/queues");
    assert_unauthenticated(&missing, "unauthorized");
    assert!(message(&missing).contains("Authorization: Bearer"), "{missing:?}");
    let basic = anonymous.request("GET", "/v1/queues", None, &[("Authorization", "Basic abc")]);
    assert_unauthenticated(&basic, "unauthorized");
    let unknown = anonymous.with_token(UNKNOWN_SECRET).get("/v1/queues");
    assert_unauthenticated(&unknown, "invalid_token");
    assert!(!unknown.body.to_string().contains(UNKNOWN_SECRET), "{unknown:?}");
    // The refusal comes before the body is read: an enqueue without a token stores nothing.
    assert_unauthenticated(&enqueue(&anonymous, "billing.eu", "x"), "unauthorized");

    // Health is open; metrics take any valid token, whatever its roles.
    assert_eq!(anonymous.get("/healthz").status, 200);
    assert_unauthenticated(&anonymous.get("/metrics"), "unauthorized");
    let metrics = server.with_token(PRODUCER_SECRET).get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let text = metrics.body.as_str().expect("metrics are text").to_string();
    assert!(text.contains("outboxd_http_auth_failures_total{reason=\"missing\"} 4"), "{text}");
    assert!(text.contains("outboxd_http_auth_failures_total{reason=\"invalid\"} 1"), "{text}");
    let admin = server.with_token(ADMIN_SECRET);
    assert!(queue_names(&admin.get("/v1/queues")).is_empty(), "nothing was enqueued");

    // A 403 names the token, never its secret, and counts as a failure.
    let forbidden = server.with_token(PRODUCER_SECRET).post("/v1/queues/orders/lease", &json!({}));
    assert_error(&forbidden, 403, "forbidden");
    let metrics = admin.get("/metrics").body.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("outboxd_http_auth_failures_total{reason=\"forbidden\"} 1"));

    // The access log names the token (its line may reach the pipe after the answer did).
    let stderr = server.stderr_containing("billing-producer");
    for secret in
        [PRODUCER_SECRET, CONSUMER_SECRET, ADMIN_SECRET, BILLING_ADMIN_SECRET, UNKNOWN_SECRET]
    {
        assert!(!stderr.contains(secret), "a secret is in the server's log:\n{stderr}");
    }
}

#[test]
fn roles_and_patterns_decide_each_endpoint() {
    let (server, _config) = start(&["--backoff-initial-ms", "60000", "--backoff-max-ms", "60000"]);
    let producer = server.with_token(PRODUCER_SECRET);
    let consumer = server.with_token(CONSUMER_SECRET);
    let admin = server.with_token(ADMIN_SECRET);
    let billing_admin = server.with_token(BILLING_ADMIN_SECRET);

    // Producer: enqueue on its pattern only, never consume.
    let created = enqueue(&producer, "billing.eu", "invoice");
    assert_eq!(created.status, 201, "{created:?}");
    let billing_id = created.body["ids"][0].as_str().unwrap().to_string();
    let elsewhere = enqueue(&producer, "orders", "order");
    assert_error(&elsewhere, 403, "forbidden");
    assert_eq!(
        message(&elsewhere),
        "token \"billing-producer\" (roles: produce; queues: billing.*) may not enqueue to queue \
         \"orders\"; it needs the produce role on \"orders\""
    );
    let lease = producer.post("/v1/queues/billing.eu/lease", &json!({"max": 1}));
    assert_error(&lease, 403, "forbidden");
    assert!(message(&lease).contains("it needs the consume role on \"billing.eu\""), "{lease:?}");

    // Consumer: lease and nack (the message then waits a minute in retrying), never enqueue.
    assert_error(&enqueue(&consumer, "billing.eu", "x"), 403, "forbidden");
    let leased = consumer.lease("billing.eu", 10, 30_000, 0);
    assert_eq!(leased.len(), 1);
    let lease_token = leased[0]["lease"].as_str().unwrap();
    let nacked = consumer.nack("billing.eu", &json!([{"lease": lease_token, "error": "later"}]));
    assert_eq!(nacked[0]["result"], json!("retrying"));

    // Admin: retry, pause, list; the others may not.
    let retry_path = format!("/v1/messages/{billing_id}/retry");
    assert_error(&consumer.post(&retry_path, &json!({})), 403, "forbidden");
    assert_eq!(admin.request("POST", &retry_path, None, &[]).status, 200);
    assert_error(&producer.post("/v1/queues/billing.eu/pause", &json!({})), 403, "forbidden");
    assert_eq!(admin.request("POST", "/v1/queues/billing.eu/pause", None, &[]).status, 200);
    assert_eq!(admin.get("/v1/queues/billing.eu/messages").status, 200);
    assert_eq!(admin.get("/v1/queues/billing.eu").body["paused"], json!(true));

    // Consume on the queue is enough to ack.
    assert_eq!(admin.request("POST", "/v1/queues/billing.eu/resume", None, &[]).status, 200);
    let leased = consumer.lease("billing.eu", 10, 30_000, 0);
    let acked = consumer.ack("billing.eu", &[leased[0]["lease"].as_str().unwrap()]);
    assert_eq!(acked[0]["result"], json!("acked"));

    // Reads: any role on the queue; the queue list shows only what the pattern matches.
    let order_id = admin.enqueue("orders", &json!([{"body": "order"}])).remove(0);
    assert_eq!(producer.get(&format!("/v1/messages/{billing_id}")).status, 200);
    let other = producer.get(&format!("/v1/messages/{order_id}"));
    assert_error(&other, 403, "forbidden");
    let text = message(&other);
    assert!(
        text.contains(&format!("read message {order_id}, which is in a queue outside")),
        "{text}"
    );
    assert!(!text.contains("orders"), "the message's queue is not named: {text}");
    assert_error(&producer.get("/v1/queues/orders"), 403, "forbidden");
    assert_eq!(queue_names(&producer.get("/v1/queues")), ["billing.eu"]);
    assert_eq!(queue_names(&admin.get("/v1/queues")), ["billing.eu", "orders"]);

    // A pattern-limited admin steers its queues only, and may not take a backup.
    let order_retry = format!("/v1/messages/{order_id}/retry");
    assert_error(&billing_admin.post(&order_retry, &json!({})), 403, "forbidden");
    assert_error(&billing_admin.get("/v1/admin/backup"), 403, "forbidden");
    let backup = admin.try_request("GET", "/v1/admin/backup", None, &[]);
    if let Ok(backup) = backup {
        assert!(![401, 403].contains(&backup.status), "{backup:?}");
    }
    // A missing message is 404 for a token that may read its queue, whatever it is.
    let missing = billing_admin.get("/v1/messages/00000000000000ff");
    assert_error(&missing, 404, "message_not_found");
    // Unknown paths and methods are answered before the token is looked at.
    assert_error(&server.get("/v1/nowhere"), 404, "not_found");
    assert_error(&server.request("PUT", "/v1/queues", None, &[]), 405, "method_not_allowed");
}

/// Reads SSE `data:` lines until one names `until_queue`; returns the queues of every event seen.
fn event_queues(stream: &mut impl BufRead, until_queue: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let read = stream.read_line(&mut line).expect("read the event stream");
        assert!(read > 0, "the event stream ended early; saw {seen:?}");
        let Some(data) = line.trim().strip_prefix("data: ") else { continue };
        let event: Value = serde_json::from_str(data).expect("event data is JSON");
        let queue = event["queue"].as_str().unwrap_or_default().to_string();
        seen.push(queue.clone());
        if queue == until_queue {
            return seen;
        }
    }
}

#[test]
fn the_event_stream_shows_a_limited_admin_only_its_queues() {
    let (server, _config) = start(&[]);
    let admin = server.with_token(ADMIN_SECRET);
    let billing_admin = server.with_token(BILLING_ADMIN_SECRET);
    assert_error(&server.with_token(CONSUMER_SECRET).get("/v1/events"), 403, "forbidden");
    let named = billing_admin.get("/v1/events?queue=orders");
    assert_error(&named, 403, "forbidden");
    assert!(message(&named).contains("read events of queue \"orders\""), "{named:?}");

    let response = ureq::AgentBuilder::new()
        .timeout_read(Duration::from_secs(10))
        .build()
        .get(&format!("{}/v1/events", server.base_url))
        .set("Authorization", &format!("Bearer {BILLING_ADMIN_SECRET}"))
        .call()
        .expect("open the event stream");
    let mut stream = BufReader::new(response.into_reader());
    // Events come in order, so an `orders` event would arrive before the `billing.eu` one.
    admin.enqueue("orders", &json!([{"body": 1}]));
    admin.enqueue("billing.eu", &json!([{"body": 2}]));
    assert_eq!(event_queues(&mut stream, "billing.eu"), ["billing.eu"]);
}

#[test]
fn a_secret_can_come_from_the_environment() {
    let config = ConfigFile::new(
        r#"
[[tokens]]
name = "env-producer"
secret_env = "OUTBOXD_TEST_PRODUCER_SECRET"
roles = ["produce", "consume"]
queues = "env.*"
"#,
    );
    let secret = "secret-from-the-environment-5e1";
    let server = Server::start_with_env(
        &["--config", config.path()],
        &[("OUTBOXD_TEST_PRODUCER_SECRET", secret)],
    );
    assert_unauthenticated(&server.get("/v1/queues"), "unauthorized");
    let producer = server.with_token(secret);
    producer.enqueue("env.one", &json!([{"body": 1}]));
    assert_eq!(producer.lease("env.one", 1, 30_000, 0).len(), 1);
}

#[test]
fn a_bad_token_entry_stops_the_server_from_starting() {
    let config = ConfigFile::new(
        r#"
[[tokens]]
name = "too-short"
secret = "tiny-s3cret"
roles = ["admin"]
"#,
    );
    let data_dir = tempfile::tempdir().expect("temporary data directory");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config", config.path(), "--data-dir"])
        .arg(data_dir.path())
        .output()
        .expect("run outboxd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with a short secret:\n{stderr}");
    assert!(stderr.contains("tokens[0] (\"too-short\")"), "names the entry:\n{stderr}");
    assert!(stderr.contains("at least 16"), "says what to do:\n{stderr}");
    assert!(!stderr.contains("tiny-s3cret"), "repeats the secret:\n{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
}

#[test]
fn without_tokens_every_request_is_allowed() {
    let server = Server::start(&[]);
    server.enqueue("open", &json!([{"body": 1}]));
    let leased = server.lease("open", 1, 30_000, 0);
    server.ack("open", &[leased[0]["lease"].as_str().unwrap()]);
    assert_eq!(queue_names(&server.get("/v1/queues")), ["open"]);
    assert_eq!(server.request("POST", "/v1/queues/open/pause", None, &[]).status, 200);
    assert_eq!(server.get("/metrics").status, 200);
}
