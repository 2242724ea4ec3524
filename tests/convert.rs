//! Converting a data directory of the first storage format, end to end.
//!
//! Goal: a server of this version started on a directory the first format's server left (killed
//! with frames after its checkpoint) serves exactly what that server held: every message in its
//! state, with its attempts, history and last error, body and headers; the queues' settings and
//! pause; the idempotency keys (a retried POST returns the original ids); the lease a consumer
//! holds (its token still acks). The old files are kept aside, a second start converts nothing,
//! and a conversion killed at any point leaves a directory the next start converts (or finishes).
//!
//! Method: `tests/fixtures/format1-datadir.tar.gz` was made by the first format's binary (see the
//! README beside it), with `expected.json` naming what it holds. Each test unpacks it into a
//! temporary directory and starts the real binary on it, with the test build's clock set to
//! shortly after the fixture was made (so leases and the idempotency window are as current as
//! they were then). Interruptions use the test build's crash points
//! (`OUTBOXD_CONVERT_CRASH_AT`), which kill the process there.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1-datadir.tar.gz");
const CONVERTED: &str = "converted a data directory of the first storage format";

/// Unpacks the fixture: the data directory (a `TempDir` a `Server` can own) and `expected.json`.
fn unpack() -> (tempfile::TempDir, Value) {
    let data_dir = tempfile::Builder::new().prefix("outboxd-convert-").tempdir().unwrap();
    let status = Command::new("tar")
        .args(["-xzf", FIXTURE, "--strip-components=1", "-C"])
        .arg(data_dir.path())
        .arg("datadir")
        .status()
        .expect("run tar");
    assert!(status.success(), "unpacking the fixture failed");
    let output = Command::new("tar").args(["-xzOf", FIXTURE, "expected.json"]).output().unwrap();
    assert!(output.status.success(), "reading expected.json from the fixture failed");
    let expected: Value = serde_json::from_slice(&output.stdout).unwrap();
    set_clock(&expected);
    (data_dir, expected)
}

/// Sets the test build's clock of every server this test starts to a minute after the fixture
/// was made (once per test process; every test computes the same offset from its start).
fn set_clock(expected: &Value) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let made_at_ms = expected["made_at_ms"].as_u64().unwrap() as i64;
    ONCE.call_once(|| {
        let offset_ms = made_at_ms + 60_000 - common::now_ms() as i64;
        std::env::set_var("OUTBOXD_TEST_CLOCK_OFFSET_MS", offset_ms.to_string());
    });
}

fn ids(value: &Value) -> Vec<String> {
    common::string_array(value)
}

/// Checks everything `expected.json` names through the API.
fn check_served(server: &Server, expected: &Value) {
    for (queue, counts) in expected["counts"].as_object().unwrap() {
        assert_eq!(&server.queue_counts(queue), counts, "counts of {queue}");
    }
    for (queue, settings) in expected["queues"].as_object().unwrap() {
        let view = server.get(&format!("/v1/queues/{queue}")).body;
        assert_eq!(&view["settings"], settings, "settings of {queue}");
    }
    assert_eq!(server.get("/v1/queues/audit").body["paused"], json!(true));
    assert_eq!(server.get("/v1/queues/orders").body["paused"], json!(false));

    let messages = &expected["messages"];
    let state_of = |id: &str| server.get_message(id)["state"].as_str().unwrap().to_string();
    for (kind, state) in [
        ("ready", "ready"),
        ("scheduled", "scheduled"),
        ("leased", "leased"),
        ("retrying", "retrying"),
        ("dead", "dead"),
        ("delivered", "delivered"),
        ("emails_ready", "ready"),
        ("audit_ready", "ready"),
    ] {
        for id in ids(&messages[kind]) {
            assert_eq!(state_of(&id), state, "message {id} ({kind})");
        }
    }
    let ready = ids(&messages["ready"]);
    let first = server.get_message(&ready[0]);
    assert_eq!(first["body"], json!({"order": 1}));
    assert_eq!(first["headers"], json!({"kind": "order"}));
    assert_eq!(first["priority"], json!(5));
    assert_eq!(server.get_message(&ready[1])["body_base64"], json!("AAEC/w=="));
    assert_eq!(server.get_message(&ready[2])["body"], json!("plain string"));

    let retrying = server.get_message(&ids(&messages["retrying"])[0]);
    assert_eq!(retrying["attempts"], json!(1));
    assert_eq!(retrying["last_error"]["message"], json!("smtp timeout"));
    let dead = ids(&messages["dead"]);
    let first_dead = server.get_message(&dead[0]);
    assert_eq!(first_dead["last_error"]["message"], json!("550 mailbox unavailable"));
    assert_eq!(first_dead["headers"], json!({"to": "nobody@example.invalid"}));
    let events: Vec<&str> = first_dead["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"nacked"), "history of a dead message: {first_dead}");
    assert_eq!(server.get_message(&dead[1])["last_error"]["message"], json!("poison"));
    let delivered = server.get_message(&ids(&messages["delivered"])[0]);
    assert_eq!(delivered["body"], json!({"done": 1}));

    // A retried enqueue with a key gets the original ids back.
    for keyed in expected["idempotency"].as_array().unwrap() {
        let response = server.enqueue_raw(
            keyed["queue"].as_str().unwrap(),
            keyed["body"].as_str().unwrap(),
            Some(keyed["key"].as_str().unwrap()),
        );
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body["duplicate"], json!(true));
        assert_eq!(ids(&response.body["ids"]), ids(&keyed["ids"]));
    }

    // The consumer's lease goes on: same deadline, and its token extends and acks.
    let lease = &expected["lease"];
    let leased = server.get_message(lease["id"].as_str().unwrap());
    assert_eq!(leased["lease_expires_at"], lease["expires_at"]);
    let token = lease["token"].as_str().unwrap();
    let extended = server.extend("orders", &json!([{"lease": token, "lease_ms": 60000}]));
    assert_eq!(extended[0]["result"], json!("extended"), "{extended:?}");
    let acked = server.ack("orders", &[token]);
    assert_eq!(acked[0]["result"], json!("acked"), "{acked:?}");

    // The 300 bulk messages span two catalog pages; all are leasable with their bodies.
    let leased = server.lease_all("bulk", 60_000, 0);
    let mut numbers: Vec<u64> = leased.iter().map(|m| m["body"]["n"].as_u64().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..300).collect::<Vec<u64>>());
}

fn assert_kept_aside(data_dir: &Path) {
    assert!(data_dir.join("format-1/sled/db").exists(), "the old sled is kept in format-1/");
    assert!(data_dir.join("format-1/wal").is_dir(), "the old log is kept in format-1/");
    assert!(!data_dir.join("sled").exists() && !data_dir.join("wal").exists());
    assert!(data_dir.join("catalog/db").exists());
}

fn check_directory(data_dir: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["check", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check of the converted directory failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_first_format_directory_is_converted_at_the_first_start_and_only_then() {
    let (data_dir, expected) = unpack();
    let mut server = Server::start_in(data_dir, &[]);
    let log = server.stderr_text();
    assert!(log.contains(CONVERTED), "the log says what it converted:\n{log}");
    assert!(log.contains("format-1"), "the log says where the old files are:\n{log}");
    assert_kept_aside(server.data_dir());
    check_served(&server, &expected);
    assert!(server.terminate().success());
    check_directory(server.data_dir());
    server.restart();
    assert_eq!(server.stderr_text().matches(CONVERTED).count(), 1, "converted twice");
    assert_eq!(server.queue_counts("orders")["delivered"], json!(2));
    assert_kept_aside(server.data_dir());
}

/// Runs a conversion that the crash point `point` kills.
fn interrupted_start(data_dir: &Path, point: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("OUTBOXD_CONVERT_CRASH_AT", point)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the start at {point} was not interrupted:\n{stderr}");
    assert!(stderr.contains(&format!("crash injected at {point}")), "{stderr}");
}

#[test]
fn a_conversion_killed_before_its_catalog_is_in_place_starts_over() {
    for point in ["convert.halfway", "convert.before_switch"] {
        let (data_dir, expected) = unpack();
        interrupted_start(data_dir.path(), point);
        assert!(data_dir.path().join("sled/db").exists(), "{point}: the old files stay");
        assert!(!data_dir.path().join("catalog/db").exists(), "{point}: no catalog yet");
        let server = Server::start_in(data_dir, &[]);
        assert!(server.stderr_text().contains(CONVERTED), "{point}");
        assert_kept_aside(server.data_dir());
        assert!(!server.data_dir().join(".converting-format-1").exists());
        check_served(&server, &expected);
    }
}

#[test]
fn a_conversion_killed_after_its_catalog_is_in_place_is_finished_at_the_next_start() {
    let (data_dir, expected) = unpack();
    interrupted_start(data_dir.path(), "convert.after_switch");
    assert!(data_dir.path().join("catalog/db").exists());
    assert!(data_dir.path().join("sled/db").exists(), "killed before the old files moved");
    let server = Server::start_in(data_dir, &[]);
    let log = server.stderr_text();
    assert!(!log.contains(CONVERTED), "converted again:\n{log}");
    assert!(log.contains("finished a conversion"), "{log}");
    assert_kept_aside(server.data_dir());
    check_served(&server, &expected);
}
