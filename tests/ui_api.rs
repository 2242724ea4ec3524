//! What the API offers the outbox page, and how the page itself is served.
//!
//! Goal: the endpoints and parameters the page needs beyond the rest of the API do what docs/api.md
//! says: listings filter by text in the last error (`?error=`), `GET /v1/whoami` reports the
//! caller's token and nothing more, `GET /v1/rates` counts enqueues, deliveries and failures per
//! queue and shows a token only its queues; and the page is served from the binary, open (no
//! token), with a Content-Security-Policy that forbids inline script, and not at all with
//! `--no-ui`.
//!
//! Method: the real binary on 127.0.0.1:0 with a temporary data directory (tests/common), driven
//! over HTTP; the page in a real browser is tests/ui.rs.

mod common;

use common::{assert_error, poll_until, ConfigFile, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// Leases `count` messages of `queue` and nacks them, the n-th with `errors[n % errors.len()]`.
fn fail(server: &Server, queue: &str, count: u32, errors: &[&str]) {
    let leased = server.lease(queue, count, 60_000, 0);
    assert_eq!(leased.len(), count as usize);
    let items: Vec<Value> = leased
        .iter()
        .enumerate()
        .map(|(n, message)| json!({"lease": message["lease"], "error": errors[n % errors.len()]}))
        .collect();
    server.nack(queue, &json!(items));
}

/// Every id a listing gives, following `next_cursor` to the end.
fn list_all(server: &Server, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/queues/jobs/messages?{query}&cursor={cursor}"),
            None => format!("/v1/queues/jobs/messages?{query}"),
        };
        let response = server.get(&path);
        assert_eq!(response.status, 200, "{response:?}");
        for message in response.body["messages"].as_array().expect("messages") {
            ids.push(message["id"].as_str().expect("id").to_string());
        }
        match response.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
    panic!("the listing never ended");
}

#[test]
fn listings_filter_by_text_in_the_last_error_ignoring_case() {
    let server = Server::start(&[]);
    let messages: Vec<Value> = (0..60)
        .map(|n| json!({"body": n, "headers": {"tenant": if n % 2 == 0 { "acme" } else { "globex" }}, "max_attempts": 1}))
        .collect();
    let ids = server.enqueue("jobs", &json!(messages));
    // Of 60 dead messages, every sixth failed with a timeout; 10 retry later; 10 never failed.
    fail(
        &server,
        "jobs",
        60,
        &[
            "Timeout after 30 s",
            "HTTP 410 Gone",
            "HTTP 410 Gone",
            "HTTP 500",
            "HTTP 500",
            "HTTP 500",
        ],
    );
    let retrying =
        server.enqueue("jobs", &json!((0..10).map(|n| json!({"body": n})).collect::<Vec<_>>()));
    fail(&server, "jobs", 10, &["timeout again"]);
    server.enqueue("jobs", &json!((0..10).map(|n| json!({"body": n})).collect::<Vec<_>>()));

    let timeouts: Vec<String> = ids.iter().step_by(6).cloned().collect();
    assert_eq!(list_all(&server, "state=dead&error=timeout"), timeouts);
    assert_eq!(list_all(&server, "state=dead&error=TIMEOUT+AFTER"), timeouts, "case is ignored");
    let response = server.get("/v1/queues/jobs/messages?state=dead&error=timeout&limit=2");
    let first = &response.body["messages"][0];
    assert_eq!(first["last_error"]["message"], "Timeout after 30 s");
    // With every state: the retrying ones match too, and ready ones without an error never do.
    let all_timeouts = list_all(&server, "error=timeout");
    assert_eq!(all_timeouts.len(), 20);
    assert!(retrying.iter().all(|id| all_timeouts.contains(id)));
    // Combined with a header filter; and a page that scans many for few still ends, each once.
    let acme_gone: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 2 == 0 && matches!(n % 6, 2))
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(list_all(&server, "state=dead&error=410&header=tenant:acme&limit=1"), acme_gone);
    assert!(list_all(&server, "state=ready&error=timeout").is_empty());
    assert!(list_all(&server, "error=no+such+text").is_empty());

    let empty = server.get("/v1/queues/jobs/messages?error=");
    assert_error(&empty, 400, "invalid_request");
    let unknown = server.get("/v1/queues/jobs/messages?errors=x");
    assert_error(&unknown, 400, "invalid_request");
    let message = unknown.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("header, error)"), "{message}");
}

const ADMIN_SECRET: &str = "ops-secret-0123456789abcdef";
const BILLING_SECRET: &str = "billing-secret-0123456789abcdef";

fn server_with_tokens(extra: &[&str]) -> (Server, ConfigFile) {
    let config = ConfigFile::new(&format!(
        "[[tokens]]\nname = \"ops\"\nsecret = \"{ADMIN_SECRET}\"\nroles = [\"admin\", \"produce\", \"consume\"]\n\n\
         [[tokens]]\nname = \"billing\"\nsecret = \"{BILLING_SECRET}\"\nroles = [\"produce\", \"consume\"]\nqueues = \"billing.*\"\n"
    ));
    let mut args = vec!["--config", config.path()];
    args.extend_from_slice(extra);
    (Server::start(&args), config)
}

#[test]
fn whoami_reports_the_callers_token_and_never_its_secret() {
    let open = Server::start(&[]);
    let response = open.get("/v1/whoami");
    assert_eq!(response.status, 200);
    assert_eq!(response.body, json!({"access_control": false, "token": null}));

    let (server, _config) = server_with_tokens(&[]);
    let response = server.with_token(BILLING_SECRET).get("/v1/whoami");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        json!({"access_control": true, "token": {"name": "billing", "roles": ["produce", "consume"], "queues": "billing.*"}})
    );
    assert!(!response.body.to_string().contains(BILLING_SECRET));
    let admin = server.with_token(ADMIN_SECRET).get("/v1/whoami");
    assert_eq!(admin.body["token"]["roles"], json!(["admin", "produce", "consume"]));
    assert_error(&server.get("/v1/whoami"), 401, "unauthorized");
    assert_error(
        &server.with_token("no-such-token-0123456789").get("/v1/whoami"),
        401,
        "invalid_token",
    );
    let post = server.with_token(ADMIN_SECRET).request("POST", "/v1/whoami", Some("{}"), &[]);
    assert_error(&post, 405, "method_not_allowed");
}

/// The sums of a queue's series in a rates answer (`None`: the queue is not listed).
fn rate_sums(rates: &Value, queue: &str) -> Option<(u64, u64, u64)> {
    let series = rates["queues"].as_array()?.iter().find(|series| series["name"] == queue)?;
    let sum = |key: &str| {
        series[key].as_array().map_or(0, |values| values.iter().filter_map(Value::as_u64).sum())
    };
    Some((sum("enqueued"), sum("acked"), sum("failed")))
}

#[test]
fn rates_count_enqueues_deliveries_and_failures_per_queue() {
    let server = Server::start(&[]);
    server.enqueue("emails", &json!([{"body": 1}, {"body": 2}, {"body": 3, "max_attempts": 1}]));
    server.enqueue("sms", &json!([{"body": 1}]));
    let leased = server.lease("emails", 3, 60_000, 0);
    server.ack("emails", &[leased[0]["lease"].as_str().expect("lease")]);
    server.nack("emails", &json!([{"lease": leased[1]["lease"], "error": "a"}, {"lease": leased[2]["lease"], "error": "b"}]));

    let rates = poll_until(Duration::from_secs(5), "the rates to catch up", || {
        let rates = server.get("/v1/rates").body;
        (rate_sums(&rates, "emails") == Some((3, 1, 2))).then_some(rates)
    });
    assert_eq!(rate_sums(&rates, "sms"), Some((1, 0, 0)));
    assert_eq!(rates["bucket_ms"], 5000);
    assert_eq!(rates["bucket_count"], 60);
    assert_eq!(rates["missed_event_count"], 0);
    for series in rates["queues"].as_array().expect("queues") {
        for key in ["enqueued", "acked", "failed"] {
            assert_eq!(series[key].as_array().map(Vec::len), Some(60), "{series}");
        }
    }
    let from = rates["from"].as_u64().expect("from");
    let to = rates["to"].as_u64().expect("to");
    assert_eq!(from % 5000, 0);
    assert!(to > from && to - from <= 300_000, "{from}..{to}");
    assert!(to.abs_diff(common::now_ms()) < 5000);

    let only = server.get("/v1/rates?queue=sms").body;
    assert_eq!(only["queues"].as_array().map(Vec::len), Some(1));
    assert_eq!(rate_sums(&only, "sms"), Some((1, 0, 0)));
    assert_eq!(server.get("/v1/rates?queue=nothing-here").body["queues"], json!([]));
    assert_error(&server.get("/v1/rates?queue=a%20b"), 400, "invalid_queue_name");
    assert_error(&server.get("/v1/rates?since=1"), 400, "invalid_request");
}

#[test]
fn rates_show_a_token_only_the_queues_its_pattern_matches() {
    let (server, _config) = server_with_tokens(&[]);
    let ops = server.with_token(ADMIN_SECRET);
    ops.enqueue("billing.eu", &json!([{"body": 1}]));
    ops.enqueue("orders", &json!([{"body": 1}]));
    poll_until(Duration::from_secs(5), "the rates", || {
        let rates = ops.get("/v1/rates").body;
        (rate_sums(&rates, "orders").is_some() && rate_sums(&rates, "billing.eu").is_some())
            .then_some(())
    });
    let billing = server.with_token(BILLING_SECRET);
    let rates = billing.get("/v1/rates");
    assert_eq!(rates.status, 200);
    let names: Vec<&Value> =
        rates.body["queues"].as_array().expect("queues").iter().map(|q| &q["name"]).collect();
    assert_eq!(names, [&json!("billing.eu")]);
    let refused = billing.get("/v1/rates?queue=orders");
    assert_error(&refused, 403, "forbidden");
    assert_error(&server.get("/v1/rates"), 401, "unauthorized");
}

/// The policy the page is served with (src/http/ui/mod.rs).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[test]
fn the_page_is_served_from_the_binary_open_and_with_a_policy_against_inline_script() {
    let (server, _config) = server_with_tokens(&[]);
    // No token needed for the page (it asks for one), while the API still wants one.
    let page = server.get("/");
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("set-cookie"), None);
    let html = page.body.as_str().expect("HTML");
    assert!(html.contains(r#"<script type="module" src="ui/app.js"></script>"#), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "every asset is same-origin");
    assert_error(&server.get("/v1/queues"), 401, "unauthorized");

    for (path, content_type) in [
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/api.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let asset = server.get(path);
        assert_eq!(asset.status, 200, "{path}: {asset:?}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert_eq!(asset.header("content-security-policy"), Some(CSP), "{path}");
        let etag = asset.header("etag").expect("an ETag").to_string();
        let again = server.request("GET", path, None, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{path}: {again:?}");
    }
    // The page lives at /; /ui and /ui/ point there with relative links (proxies with a prefix).
    let redirect = server.get("/ui/");
    assert_eq!((redirect.status, redirect.header("location")), (308, Some("../")));
    let redirect = server.get("/ui");
    assert_eq!((redirect.status, redirect.header("location")), (308, Some("./")));
    assert_error(&server.get("/ui/index.html"), 404, "not_found");
    assert_error(&server.get("/ui/nothing.js"), 404, "not_found");
    assert_error(&server.get("/ui/a/b.js"), 404, "not_found");
    let post = server.request("POST", "/", Some("{}"), &[]);
    assert_error(&post, 405, "method_not_allowed");
    assert_eq!(post.header("allow"), Some("GET"));
}

#[test]
fn no_ui_turns_the_page_off_and_leaves_the_api_alone() {
    let flag = Server::start(&["--no-ui"]);
    let config = ConfigFile::new("no_ui = true\n");
    let file = Server::start(&["--config", config.path()]);
    let variable = Server::start_with_env(&[], &[("OUTBOXD_NO_UI", "true")]);
    for server in [&flag, &file, &variable] {
        assert_error(&server.get("/"), 404, "not_found");
        assert_error(&server.get("/ui/app.js"), 404, "not_found");
        assert_error(&server.get("/ui/"), 404, "not_found");
        assert_eq!(server.get("/v1/queues").status, 200);
        assert_eq!(server.get("/v1/whoami").status, 200);
    }
    assert_eq!(Server::start(&["--no-ui", "false"]).get("/").status, 200);
}

/// A change sent by a page of another site (the browser says so in `Sec-Fetch-Site`) is refused
/// before anything is done, also without tokens; the page's own requests, typed URLs, programs
/// (no header) and reads go through.
#[test]
fn changes_sent_by_pages_of_other_sites_are_refused() {
    let server = Server::start(&[]);
    let client = server.client();
    let body = r#"{"messages":[{"body":{"n":1}}]}"#;
    for site in ["cross-site", "same-site"] {
        let headers = [("Content-Type", "text/plain"), ("Sec-Fetch-Site", site)];
        let refused = client.request("POST", "/v1/queues/csrf/messages", Some(body), &headers);
        assert_error(&refused, 403, "cross_site_request");
        let paused = client.request("POST", "/v1/queues/csrf/pause", None, &headers[1..]);
        assert_error(&paused, 403, "cross_site_request");
    }
    let missing = client.get("/v1/queues/csrf");
    assert_eq!(missing.status, 404, "a refused enqueue created nothing: {:?}", missing.body);

    for site in [None, Some("same-origin"), Some("none")] {
        let headers: Vec<(&str, &str)> =
            site.map(|site| ("Sec-Fetch-Site", site)).into_iter().collect();
        let stored = client.request("POST", "/v1/queues/csrf/messages", Some(body), &headers);
        assert_eq!(stored.status, 201, "{site:?}: {:?}", stored.body);
    }
    let read = client.request("GET", "/v1/queues/csrf", None, &[("Sec-Fetch-Site", "cross-site")]);
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["counts"]["ready"], 3);
}
