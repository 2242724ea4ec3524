//! Crashes in the middle of housekeeping: a checkpoint, a segment deletion, a compaction.
//!
//! Goal: whatever step of its background work the server dies in, nothing acknowledged is lost
//! and nothing acked comes back. Method: the real binary with 1 MiB log segments and checkpoints,
//! so that checkpoints, deletions of dead segments and compactions of mostly dead ones happen
//! every few hundred milliseconds. A churn queue with retention 0 fills segments that die as they
//! are consumed; a checked queue keeps every message (its contents end up in mostly dead
//! segments, so compaction moves them). Each round arms one crash point (the process aborts when
//! it gets there: `fail` failpoints compiled in with the `testing` feature), keeps the load on
//! until the server dies, restarts it, and checks every acknowledged enqueue of the checked queue
//! (present, with its body) and every acknowledged ack (delivered, never ready or leased again),
//! from every round so far.

mod common;

use common::{poll_until, Client, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// The crash points, in the order the rounds arm them.
const CRASH_POINTS: [&str; 6] = [
    "checkpoint.before_write",
    "checkpoint.after_write",
    "segments.before_remove",
    "segments.after_first_remove",
    "compaction.before_commit",
    "compaction.after_commit",
];

#[derive(Default)]
struct Ledger {
    enqueued: BTreeMap<String, Value>,
    acked: BTreeSet<String>,
}

/// Enqueues checked messages and consumes a churn queue until the server dies.
fn load(client: Client, round: usize, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let pad = "p".repeat(1500);
    let mut batch_index = 0;
    while !stop.load(Ordering::Relaxed) {
        let churn: Vec<Value> = (0..200).map(|_| json!({"body": pad})).collect();
        let request = json!({"messages": churn}).to_string();
        if client.try_request("POST", "/v1/queues/churn/messages", Some(&request), &[]).is_err() {
            return;
        }
        let lease = json!({"max": 1000, "lease_ms": 600_000}).to_string();
        let Ok(leased) = client.try_request("POST", "/v1/queues/churn/lease", Some(&lease), &[])
        else {
            return;
        };
        let leases: Vec<Value> = leased.body["messages"]
            .as_array()
            .map(|messages| messages.iter().map(|m| m["lease"].clone()).collect())
            .unwrap_or_default();
        if !leases.is_empty() {
            let ack = json!({"leases": leases}).to_string();
            if client.try_request("POST", "/v1/queues/churn/ack", Some(&ack), &[]).is_err() {
                return;
            }
        }
        if !check_batch(&client, round, batch_index, &ledger) {
            return;
        }
        batch_index += 1;
    }
}

/// Enqueues three checked messages and acks one of them; false once the server is gone.
fn check_batch(client: &Client, round: usize, batch_index: usize, ledger: &Mutex<Ledger>) -> bool {
    let bodies: Vec<Value> =
        (0..3).map(|i| json!({"round": round, "batch": batch_index, "i": i})).collect();
    let messages: Vec<Value> = bodies.iter().map(|body| json!({"body": body})).collect();
    let request = json!({"messages": messages}).to_string();
    let Ok(response) =
        client.try_request("POST", "/v1/queues/checked/messages", Some(&request), &[])
    else {
        return false;
    };
    if response.status == 201 {
        let mut ledger = ledger.lock().unwrap();
        for (id, body) in common::string_array(&response.body["ids"]).into_iter().zip(bodies) {
            ledger.enqueued.insert(id, body);
        }
    }
    let lease = json!({"max": 1, "lease_ms": 600_000}).to_string();
    let Ok(leased) = client.try_request("POST", "/v1/queues/checked/lease", Some(&lease), &[])
    else {
        return false;
    };
    let Some(message) = leased.body["messages"].as_array().and_then(|m| m.first()).cloned() else {
        return true;
    };
    let ack = json!({"leases": [message["lease"]]}).to_string();
    let Ok(acked) = client.try_request("POST", "/v1/queues/checked/ack", Some(&ack), &[]) else {
        return false;
    };
    if acked.body["results"][0]["result"] == json!("acked") {
        ledger.lock().unwrap().acked.insert(message["id"].as_str().unwrap().to_string());
    }
    true
}

#[test]
fn a_crash_in_any_step_of_housekeeping_loses_nothing_acknowledged() {
    let mut server = Server::start(&[
        "--checkpoint-wal-bytes",
        &MIB.to_string(),
        "--log-segment-bytes",
        &MIB.to_string(),
    ]);
    let retention = json!({"retention_ms": 0}).to_string();
    assert_eq!(server.request("PUT", "/v1/queues/churn", Some(&retention), &[]).status, 200);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for (round, crash_point) in CRASH_POINTS.iter().enumerate() {
        server.set_failpoint(crash_point, "return");
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (client, stop, ledger) = (server.client(), stop.clone(), ledger.clone());
            thread::spawn(move || load(client, round, stop, ledger))
        };
        poll_until(Duration::from_secs(60), crash_point, || {
            let alive = server.client().try_request("GET", "/healthz", None, &[]).is_ok();
            (!alive).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        server.restart();
        assert!(
            server.stderr_text().contains(&format!("crash injected at {crash_point}")),
            "round {round}: the server died at {crash_point}"
        );
        let ledger = ledger.lock().unwrap();
        for (id, body) in &ledger.enqueued {
            let view = server.get(&format!("/v1/messages/{id}"));
            assert_eq!(view.status, 200, "round {round} ({crash_point}): {id} is gone");
            assert_eq!(&view.body["body"], body, "round {round}: {id} changed");
            if ledger.acked.contains(id) {
                assert_eq!(view.body["state"], "delivered", "round {round}: acked {id} came back");
            }
        }
        println!(
            "round {round} ({crash_point}): {} messages and {} acks checked",
            ledger.enqueued.len(),
            ledger.acked.len()
        );
    }
}
