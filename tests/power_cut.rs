//! Power cuts: every change acknowledged before a power loss survives it.
//!
//! Goal: the log is fsynced before every reply. SIGKILL cannot show that (the page cache
//! survives a killed process, so a log that never synced still looks complete), a power cut can.
//! Method: the real binary built with the `testing` feature, whose log file layer tracks, per
//! file, the bytes its last completed fdatasync made durable. Writer threads enqueue batches
//! (recording every 201) while consumers lease and ack (recording every acked id); then the test
//! asks the server to cut the power (`PUT /debug/failpoints/power_cut`): the server cuts every log
//! file back to its durable length — keeping a random number of unsynced bytes in some rounds,
//! as a torn write would — and dies on the spot. After a restart every acknowledged enqueue must
//! be there with its exact body, and no acknowledged ack may come back as ready or leased. Several
//! rounds run on one data directory, so that later rounds also check what earlier ones left.
//! Without the fdatasync in the log's commit, the durable length never moves and the first round
//! loses every acknowledged message: this test fails then.

mod common;

use common::{Client, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const ROUND_COUNT: usize = 3;
const WRITER_COUNT: usize = 3;
const LONG_LEASE_MS: u64 = 600_000;

/// What the clients were told: acknowledged enqueues (id → body) and acknowledged acks.
#[derive(Default)]
struct Ledger {
    enqueued: BTreeMap<String, Value>,
    acked: BTreeSet<String>,
}

fn writer(
    client: Client,
    writer_index: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut batch_index = 0;
    while !stop.load(Ordering::Relaxed) {
        let bodies: Vec<Value> = (0..20)
            .map(|i| json!({"round": round, "writer": writer_index, "batch": batch_index, "i": i, "pad": "x".repeat(200)}))
            .collect();
        let messages: Vec<Value> = bodies.iter().map(|body| json!({"body": body})).collect();
        let request = json!({"messages": messages}).to_string();
        let Ok(response) =
            client.try_request("POST", "/v1/queues/power/messages", Some(&request), &[])
        else {
            return; // the power went out
        };
        if response.status == 201 {
            let ids = common::string_array(&response.body["ids"]);
            let mut ledger = ledger.lock().unwrap();
            for (id, body) in ids.into_iter().zip(bodies) {
                ledger.enqueued.insert(id, body);
            }
        }
        batch_index += 1;
    }
}

fn consumer(client: Client, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    while !stop.load(Ordering::Relaxed) {
        let lease = json!({"max": 30, "lease_ms": LONG_LEASE_MS, "wait_ms": 50}).to_string();
        let Ok(response) = client.try_request("POST", "/v1/queues/power/lease", Some(&lease), &[])
        else {
            return;
        };
        let Some(messages) = response.body["messages"].as_array().cloned() else { continue };
        if messages.is_empty() {
            continue;
        }
        let leases: Vec<&str> = messages.iter().filter_map(|m| m["lease"].as_str()).collect();
        let ack = json!({"leases": leases}).to_string();
        let Ok(response) = client.try_request("POST", "/v1/queues/power/ack", Some(&ack), &[])
        else {
            return;
        };
        if response.status != 200 {
            continue;
        }
        let mut ledger = ledger.lock().unwrap();
        for (message, result) in messages.iter().zip(response.body["results"].as_array().unwrap()) {
            if result["result"] == json!("acked") {
                ledger.acked.insert(message["id"].as_str().unwrap().to_string());
            }
        }
    }
}

/// Checks every acknowledged change of every round so far against the restarted server.
fn check(server: &Server, ledger: &Ledger) {
    let mut found = 0;
    for (id, body) in &ledger.enqueued {
        let response = server.get(&format!("/v1/messages/{id}"));
        assert_eq!(response.status, 200, "acknowledged message {id} is gone: {response:?}");
        assert_eq!(&response.body["body"], body, "message {id} came back with another body");
        let state = response.body["state"].as_str().unwrap().to_string();
        if ledger.acked.contains(id) {
            assert_eq!(state, "delivered", "acked message {id} came back as {state}");
        }
        found += 1;
    }
    assert_eq!(found, ledger.enqueued.len());
}

#[test]
fn every_acknowledged_change_survives_a_power_cut() {
    let mut server = Server::start(&["--checkpoint-wal-bytes", "1048576"]);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = common::Rng::new(0x5eed_0fa1);
    for round in 0..ROUND_COUNT {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for writer_index in 0..WRITER_COUNT {
            let (client, stop, ledger) = (server.client(), stop.clone(), ledger.clone());
            threads.push(thread::spawn(move || writer(client, writer_index, round, stop, ledger)));
        }
        let (client, stop_consumer, ledger_consumer) =
            (server.client(), stop.clone(), ledger.clone());
        threads.push(thread::spawn(move || consumer(client, stop_consumer, ledger_consumer)));
        thread::sleep(Duration::from_millis(rng.range(200, 500)));
        // Round 0 cuts cleanly; later ones keep a torn piece of the unsynced tail.
        let action =
            if round == 0 { "clean".to_string() } else { format!("torn={}", rng.range(1, 5000)) };
        let cut =
            server.client().try_request("PUT", "/debug/failpoints/power_cut", Some(&action), &[]);
        assert!(cut.is_err(), "the server answered instead of losing its power: {cut:?}");
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        server.restart();
        let ledger = ledger.lock().unwrap();
        assert!(!ledger.enqueued.is_empty(), "round {round}: nothing was acknowledged");
        check(&server, &ledger);
        println!(
            "round {round} ({action}): {} acknowledged messages and {} acks survived",
            ledger.enqueued.len(),
            ledger.acked.len()
        );
    }
    let ledger = ledger.lock().unwrap();
    assert!(!ledger.acked.is_empty(), "acks were exercised");
}
