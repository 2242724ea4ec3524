//! A backlog larger than the memory budget: ready messages beyond `--ready-in-memory-max` wait in
//! the catalog on disk, and everything a user does still sees them.
//!
//! Goal: with a budget of 300 ready messages and backlogs of thousands, leases hand out every
//! message once in the exact order (priority, then age), listings and look-ups show messages that
//! are only on disk, a purge removes them, `/metrics` reports how many wait on disk, and a SIGKILL
//! with a backlog on disk loses nothing and keeps the order.
//!
//! Method: the real binary on 127.0.0.1:0 with a temporary data directory (tests/common), driven
//! over HTTP; `outboxd_ready_in_catalog` from `/metrics` says when messages have left memory
//! (a checkpoint must hold them first, every 2 s).

mod common;

use common::{poll_until, Server};
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::time::Duration;

const BUDGET: &str = "300";

/// Enqueues `batches` batches of 100 messages (priorities 0, 5, 0, -3, …; body = its number);
/// returns (priority, id, number) of each.
fn enqueue_backlog(server: &Server, queue: &str, batches: u64) -> Vec<(i64, String, u64)> {
    let mut all = Vec::new();
    for batch in 0..batches {
        let plan: Vec<(i64, u64)> = (0..100)
            .map(|index| ([0, 5, 0, -3][((batch + index) % 4) as usize], batch * 100 + index))
            .collect();
        let messages: Vec<Value> = plan
            .iter()
            .map(|(priority, number)| json!({ "body": number, "priority": priority }))
            .collect();
        let ids = server.enqueue(queue, &json!(messages));
        all.extend(
            plan.into_iter().zip(ids).map(|((priority, number), id)| (priority, id, number)),
        );
    }
    all
}

/// Ready messages waiting on disk, from `/metrics`.
fn in_catalog(server: &Server) -> u64 {
    let response = server.client().request("GET", "/metrics", None, &[]);
    let text = response.body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("outboxd_ready_in_catalog "))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

fn wait_for_cold(server: &Server, at_least: u64) {
    poll_until(Duration::from_secs(60), "ready messages leaving memory", || {
        (in_catalog(server) >= at_least).then_some(())
    });
}

/// The lease order of a backlog: highest priority first, then oldest.
fn lease_order(backlog: &[(i64, String, u64)]) -> Vec<String> {
    let mut sorted = backlog.to_vec();
    sorted.sort_by_key(|(priority, _, number)| (Reverse(*priority), *number));
    sorted.into_iter().map(|(_, id, _)| id).collect()
}

/// Leases everything in batches of `max` (acking each batch); returns (id, body) in lease order.
fn drain(server: &Server, queue: &str, max: u32) -> Vec<(String, Value)> {
    let mut leased = Vec::new();
    loop {
        let batch = server.lease(queue, max, 600_000, 0);
        if batch.is_empty() {
            return leased;
        }
        let tokens: Vec<&str> = batch.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        let acked = server.ack(queue, &tokens);
        assert!(acked.iter().all(|result| result["result"] == "acked"), "{acked:?}");
        leased.extend(
            batch.iter().map(|m| (m["id"].as_str().unwrap().to_string(), m["body"].clone())),
        );
    }
}

#[test]
fn leases_hand_out_a_backlog_on_disk_once_each_in_exact_order() {
    let server = Server::start(&["--ready-in-memory-max", BUDGET]);
    let backlog = enqueue_backlog(&server, "orders", 40);
    wait_for_cold(&server, 3000);
    assert_eq!(server.queue_counts("orders")["ready"], 4000, "messages on disk are counted");

    let leased = drain(&server, "orders", 70);
    let ids: Vec<String> = leased.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids, lease_order(&backlog));
    let numbers: std::collections::BTreeMap<&str, u64> =
        backlog.iter().map(|(_, id, number)| (id.as_str(), *number)).collect();
    for (id, body) in &leased {
        assert_eq!(body, &json!(numbers[id.as_str()]), "body of {id}");
    }
    assert_eq!(in_catalog(&server), 0);
    assert_eq!(server.queue_counts("orders")["delivered"], 4000);
}

#[test]
fn listings_look_ups_and_purges_reach_messages_on_disk() {
    let server = Server::start(&["--ready-in-memory-max", BUDGET]);
    let backlog = enqueue_backlog(&server, "audit", 30);
    wait_for_cold(&server, 2000);

    // Every ready message appears once, in id order, page by page.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(cursor) => format!("state=ready&limit=250&cursor={cursor}"),
            None => "state=ready&limit=250".to_string(),
        };
        let page = server.get(&format!("/v1/queues/audit/messages?{query}"));
        assert_eq!(page.status, 200, "{page:?}");
        listed.extend(
            page.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let mut in_id_order: Vec<String> = backlog.iter().map(|(_, id, _)| id.clone()).collect();
    in_id_order.sort();
    assert_eq!(listed, in_id_order);

    // The newest messages left memory first; one of them reads like any other.
    let (_, newest, number) = backlog.last().unwrap().clone();
    let message = server.get_message(&newest);
    assert_eq!(message["state"], "ready");
    assert_eq!(message["body"], json!(number));
    let descending = server.get("/v1/queues/audit/messages?state=ready&order=desc&limit=3");
    assert_eq!(
        string_ids(&descending.body["messages"]),
        in_id_order[in_id_order.len() - 3..].iter().rev().cloned().collect::<Vec<_>>()
    );

    // A person's action on a message on disk.
    let deleted = server.client().request("DELETE", &format!("/v1/messages/{newest}"), None, &[]);
    assert!(deleted.status == 200 || deleted.status == 204, "{deleted:?}");
    assert_eq!(server.queue_counts("audit")["ready"], 2999);

    // Purging ready messages removes those on disk too.
    loop {
        let purged =
            server.client().request("DELETE", "/v1/queues/audit/messages?state=ready", None, &[]);
        assert_eq!(purged.status, 200, "{purged:?}");
        if server.queue_counts("audit")["ready"] == 0 {
            break;
        }
    }
    assert_eq!(in_catalog(&server), 0);
    assert!(server.lease("audit", 10, 1000, 0).is_empty());
}

fn string_ids(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_backlog_on_disk_survives_sigkill_whole_and_in_order() {
    let mut server = Server::start(&["--ready-in-memory-max", BUDGET]);
    let backlog = enqueue_backlog(&server, "jobs", 30);
    wait_for_cold(&server, 2000);
    // Work after the last checkpoint that touches messages on disk and in memory alike.
    let first = drain_some(&server, "jobs", 250);
    server.kill9();
    server.restart();
    assert_eq!(server.queue_counts("jobs")["ready"], 3000 - first.len() as u64);
    let rest = drain(&server, "jobs", 90);
    let mut ids = first;
    ids.extend(rest.into_iter().map(|(id, _)| id));
    assert_eq!(ids, lease_order(&backlog));
}

/// Leases and acks `count` messages in batches of 50; returns their ids in lease order.
fn drain_some(server: &Server, queue: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < count {
        let batch = server.lease(queue, 50, 600_000, 0);
        assert!(!batch.is_empty());
        let tokens: Vec<&str> = batch.iter().map(|m| m["lease"].as_str().unwrap()).collect();
        server.ack(queue, &tokens);
        ids.extend(batch.iter().map(|m| m["id"].as_str().unwrap().to_string()));
    }
    ids
}
