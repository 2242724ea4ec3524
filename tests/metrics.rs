//! Metrics: `GET /metrics` reports what happened and what is, in the Prometheus text format.
//!
//! Method: the real binary; messages are enqueued, leased, acked and nacked, and the scrape must
//! show the event counters, the per-state gauges, the group-commit and WAL-sync histograms and the
//! request-duration histogram moving accordingly.

mod common;

use common::Server;
use serde_json::json;

/// The value of the sample whose line starts with `prefix` (name and labels), if present.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

fn scrape(server: &Server) -> String {
    let response = ureq::get(&format!("{}/metrics", server.client().base_url)).call().unwrap();
    assert!(response.content_type().starts_with("text/plain"));
    response.into_string().unwrap()
}

#[test]
fn metrics_move_as_messages_flow() {
    let server = Server::start(&["--backoff-initial-ms", "60000", "--backoff-max-ms", "60000"]);
    server.enqueue("metered", &json!([{"body": 1}, {"body": 2}, {"body": 3}, {"body": 4}]));
    let leased = server.lease("metered", 3, 30_000, 0);
    let token = |index: usize| leased[index]["lease"].as_str().unwrap().to_string();
    server.ack("metered", &[&token(0)]);
    server.nack("metered", &json!([{"lease": token(1), "error": "later"}]));
    let text = scrape(&server);

    let events = |event: &str| {
        let prefix = format!("outboxd_message_events_total{{queue=\"metered\",event=\"{event}\"}}");
        let alternative =
            format!("outboxd_message_events_total{{event=\"{event}\",queue=\"metered\"}}");
        sample(&text, &prefix).or_else(|| sample(&text, &alternative))
    };
    assert_eq!(events("enqueued"), Some(4.0), "{text}");
    assert_eq!(events("leased"), Some(3.0), "{text}");
    assert_eq!(events("acked"), Some(1.0), "{text}");
    assert_eq!(events("retrying"), Some(1.0), "{text}");
    assert_eq!(events("nacked"), Some(1.0), "{text}");
    assert_eq!(events("expired"), None, "{text}");

    let state = |name: &str| {
        let prefix = format!("outboxd_queue_messages{{queue=\"metered\",state=\"{name}\"}}");
        sample(&text, &prefix)
    };
    assert_eq!(state("ready"), Some(1.0), "{text}");
    assert_eq!(state("leased"), Some(1.0), "{text}");
    assert_eq!(state("retrying"), Some(1.0), "{text}");
    assert_eq!(state("delivered"), Some(1.0), "{text}");
    assert!(sample(&text, "outboxd_queue_oldest_ready_age_seconds{queue=\"metered\"}").is_some());
    assert_eq!(sample(&text, "outboxd_storage_failed"), Some(0.0));
    assert!(sample(&text, "outboxd_commit_group_requests_count").unwrap_or(0.0) >= 4.0, "{text}");
    assert!(sample(&text, "outboxd_wal_sync_duration_seconds_count").unwrap_or(0.0) >= 4.0);
    assert!(sample(&text, "outboxd_store_bytes{part=\"log\"}").unwrap_or(0.0) > 0.0, "{text}");
    assert!(sample(&text, "outboxd_store_bytes{part=\"catalog\"}").is_some(), "{text}");
    // One leased message holds one lease timer; the acked one's was cancelled.
    assert_eq!(sample(&text, "outboxd_timers"), Some(2.0), "{text}");
    assert!(sample(&text, "outboxd_pending_records").is_some(), "{text}");
    assert!(
        text.lines().any(|line| line.starts_with("outboxd_http_request_duration_seconds_count")
            && line.contains("route=\"enqueue\"")
            && line.contains("status=\"201\"")),
        "{text}"
    );
}

#[test]
fn lease_expiries_and_dead_messages_are_counted_by_cause() {
    let server = Server::start(&["--backoff-initial-ms", "60000", "--backoff-max-ms", "60000"]);
    server.enqueue("lapsed", &json!([{"body": 1, "max_attempts": 1}, {"body": 2}]));
    let leased = server.lease("lapsed", 2, 50, 0);
    assert_eq!(leased.len(), 2);
    let counted = common::poll_until(std::time::Duration::from_secs(10), "two expiries", || {
        let text = scrape(&server);
        let value = |event: &str| {
            let labels = [
                format!("outboxd_message_events_total{{queue=\"lapsed\",event=\"{event}\"}}"),
                format!("outboxd_message_events_total{{event=\"{event}\",queue=\"lapsed\"}}"),
            ];
            labels.iter().find_map(|prefix| sample(&text, prefix))
        };
        (value("expired") == Some(2.0)).then(|| (value("dead"), value("retrying"), value("nacked")))
    });
    assert_eq!(counted, (Some(1.0), Some(1.0), None), "one went dead, one will retry");
}
