//! Checkpoints bound the replay after a crash, and log segments are deleted once nothing in them
//! is needed.
//!
//! Properties:
//! - with `--checkpoint-wal-bytes N`, the log a restart would replay (the bytes after the last
//!   durable checkpoint, `outboxd_replay_bytes` in `/metrics`) never holds much more than N plus
//!   what is written while one checkpoint runs, however much is written in total;
//! - the log is also the message store: segments holding contents of stored messages stay, and a
//!   segment is deleted once it is behind a checkpoint and none of its messages is stored any
//!   more (consumed with retention 0, or removed by their retention).
//!
//! Method: the real binary with a 1 MiB checkpoint threshold and 1 MiB segments. The first test
//! takes 60 enqueues of about 1 MiB each and samples the replay bytes after every request, and
//! checks that the log directory holds every message's content. The others consume everything
//! and wait for the segments to go.

mod common;

use common::{poll_until, Server};
use serde_json::json;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Bytes and files of the log directory, which must exist.
fn log_files(server: &Server) -> (u64, usize) {
    let entries = std::fs::read_dir(server.data_dir().join("log")).expect("the log directory");
    let sizes: Vec<u64> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|m| m.len())
        .collect();
    (sizes.iter().sum(), sizes.len())
}

/// A gauge from `/metrics`.
fn gauge(server: &Server, name: &str) -> u64 {
    let response = server.client().request("GET", "/metrics", None, &[]);
    let text = response.body.as_str().expect("metrics are text").to_string();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
}

fn big_batch() -> serde_json::Value {
    let body = "x".repeat(2000);
    json!((0..500).map(|_| json!({"body": body})).collect::<Vec<_>>())
}

#[test]
fn the_replay_after_a_crash_stays_near_the_checkpoint_threshold() {
    let server = Server::start(&["--checkpoint-wal-bytes", &MIB.to_string()]);
    let batch = big_batch();
    let mut largest_bytes = 0;
    for _ in 0..60 {
        server.enqueue("churn", &batch);
        largest_bytes = largest_bytes.max(gauge(&server, "outboxd_replay_bytes"));
    }
    let written_bytes = 60 * 500 * 2000;
    assert!(largest_bytes < 6 * MIB, "the replay reached {largest_bytes} bytes of {written_bytes}");
    assert_eq!(server.queue_counts("churn")["ready"], 30_000);
    let (log_bytes, _) = log_files(&server);
    assert!(log_bytes >= written_bytes, "the log holds every content: {log_bytes} bytes");
}

#[test]
fn segments_of_consumed_messages_are_deleted() {
    let server = Server::start(&[
        "--checkpoint-wal-bytes",
        &MIB.to_string(),
        "--log-segment-bytes",
        &MIB.to_string(),
        "--retention-ms",
        "0",
    ]);
    let batch = big_batch();
    let mut largest_bytes = 0;
    for _ in 0..20 {
        server.enqueue("gone", &batch);
        let leased = server.lease_all("gone", 600_000, 0);
        let tokens: Vec<&str> = leased.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        for chunk in tokens.chunks(1000) {
            server.ack("gone", chunk);
        }
        largest_bytes = largest_bytes.max(log_files(&server).0);
    }
    // 20 MB went through; once checkpoints cover them, the segments go.
    let (bytes, files) = poll_until(Duration::from_secs(20), "consumed segments to go", || {
        let (bytes, files) = log_files(&server);
        (bytes < 4 * MIB).then_some((bytes, files))
    });
    assert!(files <= 4, "{files} segment files left ({bytes} bytes)");
    assert!(largest_bytes < 12 * MIB, "the log reached {largest_bytes} bytes");
}

#[test]
fn segments_go_when_retention_removes_their_messages_and_stay_while_one_is_stored() {
    let mut server = Server::start(&[
        "--checkpoint-wal-bytes",
        &MIB.to_string(),
        "--log-segment-bytes",
        &MIB.to_string(),
    ]);
    let settings = json!({"retention_ms": 500});
    let put = server.request("PUT", "/v1/queues/short", Some(&settings.to_string()), &[]);
    assert_eq!(put.status, 200, "{put:?}");
    // One message that stays (the default 24 h retention) before the churn, in the first segment.
    let kept = server.enqueue("keep", &json!([{"body": "kept"}]));
    let batch = big_batch();
    for _ in 0..10 {
        server.enqueue("short", &batch);
        let leased = server.lease_all("short", 600_000, 0);
        let tokens: Vec<&str> = leased.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        for chunk in tokens.chunks(1000) {
            server.ack("short", chunk);
        }
    }
    poll_until(Duration::from_secs(20), "retention to remove the delivered messages", || {
        (server.queue_counts("short")["delivered"] == 0).then_some(())
    });
    let (bytes, _) = poll_until(Duration::from_secs(20), "their segments to go", || {
        let (bytes, files) = log_files(&server);
        (bytes < 4 * MIB).then_some((bytes, files))
    });
    assert!(bytes > 0);
    // The kept message's segment stayed, and it survives a restart.
    server.kill9();
    server.restart();
    assert_eq!(server.get_message(&kept[0])["body"], "kept");
}

#[test]
fn a_segment_holding_a_few_long_kept_messages_is_reclaimed() {
    let mut server = Server::start(&[
        "--checkpoint-wal-bytes",
        &MIB.to_string(),
        "--log-segment-bytes",
        &MIB.to_string(),
        "--retention-ms",
        "0",
    ]);
    // A message that stays ready and one that goes dead, both kept for ever, then 20 MB of
    // messages that are consumed (and, with retention 0, removed) around them.
    let kept = server.enqueue("kept", &json!([{"body": "ready for ever"}]));
    let dead = server.enqueue("kept-dead", &json!([{"body": "dead for ever", "max_attempts": 1}]));
    let leased = server.lease("kept-dead", 1, 600_000, 0);
    let nack = json!([{"lease": leased[0]["lease"], "error": "gave up"}]);
    assert_eq!(server.nack("kept-dead", &nack)[0]["result"], "dead");
    let batch = big_batch();
    for _ in 0..20 {
        server.enqueue("churn", &batch);
        let leased = server.lease_all("churn", 600_000, 0);
        let tokens: Vec<&str> = leased.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        for chunk in tokens.chunks(1000) {
            server.ack("churn", chunk);
        }
    }
    // The two kept contents are copied out of their mostly dead segments, which then go.
    poll_until(Duration::from_secs(30), "the old segments to be reclaimed", || {
        let (bytes, files) = log_files(&server);
        (bytes < 4 * MIB && files <= 4).then_some(())
    });
    server.kill9();
    server.restart();
    assert_eq!(server.get_message(&kept[0])["body"], "ready for ever");
    let view = server.get_message(&dead[0]);
    assert_eq!(
        (view["state"].as_str(), view["body"].as_str()),
        (Some("dead"), Some("dead for ever"))
    );
    assert_eq!(view["last_error"]["message"], "gave up");
    let leased = server.lease("kept", 1, 600_000, 0);
    assert_eq!(leased[0]["body"], "ready for ever", "a moved content is leased from its new place");
}
