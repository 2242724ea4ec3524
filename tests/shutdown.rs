//! Graceful shutdown: SIGTERM under load loses no acknowledged write and cuts no answer short.
//!
//! Method: producer threads post batches with Idempotency-Keys while consumers lease and ack;
//! the server gets SIGTERM in the middle. Every response that arrives must be whole (a JSON body
//! that parses); requests sent after the listener closed fail to connect, which the clients take
//! as the end. The process must exit 0. After a restart every id that got a 2xx on enqueue is present, every
//! message whose ack got a 2xx is delivered, and leases held at the shutdown still hold (their
//! deadline is durable): those messages are not leasable again before their lease ends.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct Seen {
    enqueued: BTreeSet<String>,
    acked: BTreeSet<String>,
    held: BTreeSet<String>,
    cut_short: Vec<String>,
}

#[test]
fn sigterm_under_load_loses_nothing_acknowledged_and_cuts_no_answer() {
    let mut server = Server::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut threads = Vec::new();
    for producer in 0..2 {
        let (client, stop, seen) = (server.client(), stop.clone(), seen.clone());
        threads.push(thread::spawn(move || {
            for batch in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body =
                    json!({"messages": (0..10).map(|n| json!({"body": n})).collect::<Vec<_>>()});
                let key = format!("p{producer}-b{batch}");
                match client.try_request(
                    "POST",
                    "/v1/queues/drain/messages",
                    Some(&body.to_string()),
                    &[("Idempotency-Key", &key)],
                ) {
                    Ok(response) if response.status < 300 => {
                        let ids = response.body["ids"].as_array().cloned().unwrap_or_default();
                        seen.lock()
                            .unwrap()
                            .enqueued
                            .extend(ids.iter().map(|id| id.as_str().unwrap().to_string()));
                    }
                    Ok(response) if response.body.is_null() => {
                        seen.lock().unwrap().cut_short.push(format!("{response:?}"))
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    {
        let (client, stop, seen) = (server.client(), stop.clone(), seen.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"max": 10, "lease_ms": 20_000, "wait_ms": 50}).to_string();
                let Ok(response) =
                    client.try_request("POST", "/v1/queues/drain/lease", Some(&body), &[])
                else {
                    break;
                };
                let messages: Vec<Value> =
                    response.body["messages"].as_array().cloned().unwrap_or_default();
                for (index, message) in messages.iter().enumerate() {
                    let id = message["id"].as_str().unwrap().to_string();
                    let lease = message["lease"].as_str().unwrap().to_string();
                    if index % 3 == 2 {
                        seen.lock().unwrap().held.insert(id);
                        continue;
                    }
                    let ack = json!({"leases": [lease]}).to_string();
                    match client.try_request("POST", "/v1/queues/drain/ack", Some(&ack), &[]) {
                        Ok(response)
                            if response.status == 200
                                && response.body["results"][0]["result"] == "acked" =>
                        {
                            seen.lock().unwrap().acked.insert(id);
                        }
                        Ok(response) if response.body.is_null() => {
                            seen.lock().unwrap().cut_short.push(format!("{response:?}"))
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(700));
    let status = server.terminate();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let seen = seen.lock().unwrap();
    assert!(seen.cut_short.is_empty(), "answers cut short: {:?}", seen.cut_short);
    assert!(seen.enqueued.len() >= 10 && !seen.acked.is_empty(), "the load ran");

    server.restart();
    for id in &seen.enqueued {
        let state = server.get_message(id)["state"].clone();
        assert!(state.is_string(), "{id} was acknowledged at enqueue and must survive: {state}");
    }
    for id in &seen.acked {
        assert_eq!(server.get_message(id)["state"], "delivered", "{id} was acked");
    }
    let leasable: BTreeSet<String> = server
        .lease("drain", 1000, 60_000, 0)
        .iter()
        .map(|message| message["id"].as_str().unwrap().to_string())
        .collect();
    let reissued: Vec<&String> = seen.held.intersection(&leasable).collect();
    assert!(
        reissued.is_empty(),
        "leases held across the shutdown were handed out again: {reissued:?}"
    );
    assert!(seen.acked.is_disjoint(&leasable), "an acked message was leased again");
}
