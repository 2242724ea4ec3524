//! The outbox page in a real browser.
//!
//! Goal: a person who opens the page sees what the server holds and can steer it: the counts of
//! every queue, the messages of a state, one message with its attempts, errors and hints, and the
//! actions (retry, edit, reschedule, delete, pause, resume, purge, redrive, settings) do what they
//! say, on the server. The page follows the event stream, so changes made elsewhere appear without
//! a reload; a token without the admin role gets no actions and, when it forces one, the server's
//! 403; and message content holding markup or script is shown as text and runs nothing.
//!
//! Method: every test starts the real binary on 127.0.0.1:0 with a temporary data directory and a
//! headless Chromium (tests/common/browser.rs, WebDriver), drives the page as a person would
//! (clicks, typing), and asserts both on what the page renders and on what the server then holds,
//! read back through the API. Screenshots of the main views go to target/ui-screenshots/.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::{poll_until, Server};
use serde_json::{json, Value};
use std::time::Duration;

/// Opens the page and waits until it has drawn its first view.
fn open(browser: &Browser, server: &Server, hash: &str) {
    browser.goto(&format!("{}/{hash}", server.base_url));
    browser.find("#main h1");
}

/// Marks the page, so that a test can check later that it was never reloaded.
fn mark_page(browser: &Browser) {
    browser.script("window.__stayed = true", &[]);
}

fn assert_not_reloaded(browser: &Browser) {
    assert_eq!(
        browser.script("return window.__stayed === true", &[]),
        json!(true),
        "the page reloaded"
    );
}

/// Asserts that the elements are still in the page: not replaced by a refresh.
fn assert_still_on_the_page(browser: &Browser, elements: &[&browser::Element<'_>]) {
    for (index, element) in elements.iter().enumerate() {
        let connected =
            browser.try_script("return arguments[0].isConnected", &[element.as_argument()]);
        // WebDriver calls an element that left the page "stale" before the script even runs.
        assert_eq!(connected, Ok(json!(true)), "a refresh replaced element {index} of the list");
    }
}

/// Waits until the queue view has drawn its table again (after a refresh of its own).
fn wait_for_redraw(browser: &Browser) {
    let drawn = browser.script("return performance.getEntriesByName('outboxd:table').length", &[]);
    browser.wait_for("the table drawn again", || {
        let now =
            browser.script("return performance.getEntriesByName('outboxd:table').length", &[]);
        (now.as_u64() > drawn.as_u64()).then_some(())
    });
}

/// Leases every ready message of `queue` and nacks each with `error`.
fn fail_all(server: &Server, queue: &str, error: &str) {
    let leased = server.lease(queue, 100, 60_000, 0);
    let items: Vec<Value> =
        leased.iter().map(|message| json!({"lease": message["lease"], "error": error})).collect();
    server.nack(queue, &json!(items));
}

/// The text of a queue's count cell on the overview.
fn overview_count(browser: &Browser, queue: &str, state: &str) -> String {
    browser.find(&format!("tr[data-queue='{queue}'] td.count-{state}")).text()
}

#[test]
fn the_overview_shows_every_queue_with_counts_rates_and_what_needs_attention() {
    let server = Server::start(&[]);
    // emails: 17 delivered, 3 retrying, 1 dead, 2 leased, 4 ready.
    let batch: Vec<Value> = (0..20).map(|n| json!({"body": {"n": n}})).collect();
    server.enqueue("emails", &json!(batch));
    let leased = server.lease("emails", 20, 60_000, 0);
    let leases: Vec<&str> = leased.iter().filter_map(|m| m["lease"].as_str()).collect();
    server.ack("emails", &leases[..17]);
    let retry: Vec<Value> = leases[17..]
        .iter()
        .map(|lease| json!({"lease": lease, "error": "SMTP 451 try later", "delay_ms": 600_000}))
        .collect();
    server.nack("emails", &json!(retry));
    server.enqueue("emails", &json!([{"body": "bad address", "max_attempts": 1}]));
    fail_all(&server, "emails", "550 no such mailbox");
    server.enqueue("emails", &json!((0..6).map(|n| json!({"body": n})).collect::<Vec<_>>()));
    server.lease("emails", 2, 60_000, 0);
    // webhooks: one scheduled, paused.
    server.enqueue("webhooks", &json!([{"body": "later", "delay_ms": 3_600_000}]));
    server.post("/v1/queues/webhooks/pause", &json!({}));

    let browser = Browser::start();
    open(&browser, &server, "");
    mark_page(&browser);
    for (state, count) in
        [("ready", "4"), ("leased", "2"), ("retrying", "3"), ("dead", "1"), ("delivered", "17")]
    {
        assert_eq!(overview_count(&browser, "emails", state), count, "{state}");
    }
    assert_eq!(overview_count(&browser, "webhooks", "scheduled"), "1");
    browser.find_text("tr[data-queue='emails'] [data-marker='dead']", "1 dead");
    browser.find_text("tr[data-queue='webhooks'] [data-marker='paused']", "paused");
    browser.find_text("tr[data-queue='webhooks'] td.delivery", "paused");
    browser.find_text("tr[data-queue='emails'] td.delivery", "delivering");
    assert!(browser.find_all("tr[data-queue='webhooks'] [data-marker='dead']").is_empty());
    // The rates of the last minute: 27 in, 17 out, 4 failed deliveries.
    browser
        .find_text("tr[data-queue='emails'] .rate-text", "27/min in · 17/min out · 4/min failed");
    let title = browser.script(
        "return document.querySelector(\"tr[data-queue='emails'] svg title\").textContent",
        &[],
    );
    assert!(
        title.as_str().unwrap_or_default().contains("27 enqueued, 17 delivered, 4 failed"),
        "{title}"
    );

    // Changes made elsewhere show up without a reload: the page follows the event stream. The
    // links stay the same elements, so a click being made during a refresh is not lost.
    browser.find_text("#live", "live");
    let link = browser.find("tr[data-queue='emails'] td.name a");
    let count = browser.find("tr[data-queue='emails'] td.count-dead a");
    server.enqueue("emails", &json!([{"body": 4}, {"body": 5}]));
    browser.find_text("tr[data-queue='emails'] td.count-ready", "6");
    assert_still_on_the_page(&browser, &[&link, &count]);
    server.enqueue("receipts", &json!([{"body": "new queue"}]));
    browser.find_text("tr[data-queue='receipts'] td.count-ready", "1");
    assert_not_reloaded(&browser);
    browser.screenshot("overview");
}

#[test]
fn a_backlog_that_grows_is_marked_until_consumers_catch_up() {
    let server = Server::start(&[]);
    let enqueued_at = std::time::Instant::now();
    server.enqueue("orders", &json!([{"body": 1}, {"body": 2}, {"body": 3}]));
    server.enqueue("quiet", &json!([{"body": 1}]));
    let consumed = server.lease("quiet", 1, 60_000, 0);
    server.ack("quiet", &[consumed[0]["lease"].as_str().expect("a lease")]);
    let browser = Browser::start();
    open(&browser, &server, "");
    browser.find_text("tr[data-queue='orders'] td.count-ready", "3");
    assert!(browser.find_all("[data-marker='backlog']").is_empty(), "nothing has waited yet");

    // More came in than went out in the last minute, and the oldest ready one has waited 10 s.
    std::thread::sleep(Duration::from_millis(10_500).saturating_sub(enqueued_at.elapsed()));
    let marker = browser.find("tr[data-queue='orders'] [data-marker='backlog']");
    assert_eq!(marker.text(), "backlog growing");
    assert!(browser.find_all("tr[data-queue='quiet'] [data-marker]").is_empty());

    // A consumer takes them: the marker goes, without a reload.
    mark_page(&browser);
    server.lease("orders", 3, 60_000, 0);
    browser.wait_for("the backlog marker to go", || {
        browser.find_all("tr[data-queue='orders'] [data-marker='backlog']").is_empty().then_some(())
    });
    assert_not_reloaded(&browser);
}

#[test]
fn a_dead_message_is_read_retried_and_moves_to_ready_without_a_reload() {
    let server = Server::start(&[]);
    let ids = server.enqueue(
        "emails",
        &json!([{"body": {"to": "ada@example"}, "headers": {"tenant": "acme"}, "max_attempts": 1}]),
    );
    let id = &ids[0];
    let browser = Browser::start();
    open(&browser, &server, "");
    mark_page(&browser);
    browser.find_text("#live", "live");

    // It dies while the page is open: a banner says so, with the error.
    fail_all(&server, "emails", "550 5.1.1 mailbox unavailable");
    let banner = browser.find_text("[data-banner='dead']", "A message went dead");
    assert!(banner.text().contains("550 5.1.1 mailbox unavailable"), "{}", banner.text());
    assert!(banner.text().contains(id.as_str()), "{}", banner.text());

    // The queue's dead tab lists it with its last error.
    browser.click("tr[data-queue='emails'] td.count-dead a");
    let row = browser.find(&format!("table.messages[data-state='dead'] tr[data-id='{id}']"));
    assert!(row.text().contains("550 5.1.1 mailbox unavailable"), "{}", row.text());
    browser.screenshot("queue-dead");

    // The message: its error, and a hint for what to do.
    browser.click(&format!("tr[data-id='{id}'] a"));
    browser.find_text("#message-state", "dead");
    browser.find_text("#last-error", "550 5.1.1 mailbox unavailable");
    browser.find_text("#last-error-hint", "fix the cause");
    let failure = browser.find("#timeline li.failure");
    assert!(
        failure.text().contains("Delivery 1 failed: the consumer nacked it"),
        "{}",
        failure.text()
    );
    assert!(failure.text().contains("550 5.1.1 mailbox unavailable"), "{}", failure.text());
    assert!(failure.text().contains("will not be delivered again by itself"), "{}", failure.text());
    browser.find_text("#headers", "tenant");
    browser.find_text("#body", "\"to\": \"ada@example\"");
    browser.resize(1360, 1180);
    browser.screenshot("message-dead");

    // Retry it: the page shows it ready, the server holds it ready.
    browser.click("button[data-action='retry']");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#message-state", "ready");
    assert_eq!(server.get_message(id)["state"], "ready");
    browser.find_text("#timeline", "Retried by a person (attempts kept)");

    // Back on the queue, the counts moved with it.
    browser.click("dd a");
    browser.find_text(".tabs a[data-state='ready'] .count", "1");
    browser.find_text(".tabs a[data-state='dead'] .count", "0");
    assert_not_reloaded(&browser);
}

/// A reverse proxy on a free port that serves `server` under `/outboxd/`, as the nginx example of
/// docs/operations.md does: it strips the prefix from each request's path and asks for
/// `Connection: close`, so that each connection carries one request and the bytes can simply be
/// copied both ways (the event stream included). Returns the page's address through it.
fn prefix_proxy(server: &Server) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let address = listener.local_addr().expect("the proxy's address");
    let upstream = server.base_url.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let upstream = upstream.clone();
            std::thread::spawn(move || proxy_one(client, &upstream));
        }
    });
    format!("http://{address}/outboxd/")
}

fn proxy_one(mut client: std::net::TcpStream, upstream: &str) {
    use std::io::{Read, Write};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().splitn(3, ' ');
    let (method, path, version) = (
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
        request_line.next().unwrap_or_default(),
    );
    let Some(path) = path.strip_prefix("/outboxd/") else {
        let _ = client
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut forwarded = format!("{method} /{path} {version}\r\n");
    for line in lines.filter(|line| !line.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let Ok(mut server) = std::net::TcpStream::connect(upstream) else { return };
    if server.write_all(forwarded.as_bytes()).is_err() {
        return;
    }
    let (Ok(mut server_reader), Ok(mut client_writer)) = (server.try_clone(), client.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client, &mut server);
    });
    let _ = std::io::copy(&mut server_reader, &mut client_writer);
    let _ = client_writer.shutdown(std::net::Shutdown::Both);
}

#[test]
fn the_page_works_under_a_path_prefix_behind_a_proxy() {
    let server = Server::start(&[]);
    server.enqueue("emails", &json!([{"body": 1}, {"body": 2}]));
    let page = prefix_proxy(&server);
    let browser = Browser::start();
    // /outboxd/ui/ redirects to the page, relative to the prefix.
    browser.goto(&format!("{page}ui/"));
    browser.find_text("tr[data-queue='emails'] td.count-ready", "2");
    assert_eq!(browser.script("return location.pathname", &[]), json!("/outboxd/"));
    // The event stream comes through the proxy too.
    browser.find_text("#live", "live");
    server.enqueue("emails", &json!([{"body": 3}]));
    browser.find_text("tr[data-queue='emails'] td.count-ready", "3");
    // And so do actions.
    browser.click("tr[data-queue='emails'] td.name a");
    browser.click("button[data-action='pause']");
    browser.find_text("#queue-state", "paused");
    assert_eq!(server.get("/v1/queues/emails").body["paused"], true);
}

/// A response body as the server sent it, byte for byte (the JSON client would re-encode it).
fn raw_get(server: &Server, path: &str) -> String {
    ureq::get(&format!("{}{path}", server.base_url))
        .call()
        .unwrap_or_else(|error| panic!("GET {path}: {error}"))
        .into_string()
        .expect("a text body")
}

/// Sets an input's value as a date picker would (typing into one depends on the locale).
fn set_input(browser: &Browser, selector: &str, value: &str) {
    browser.find(selector);
    let done = browser.script(
        "const input = document.querySelector(arguments[0]); if (!input) return false; \
         input.value = arguments[1]; input.dispatchEvent(new Event('input', {bubbles: true})); \
         input.dispatchEvent(new Event('change', {bubbles: true})); return true;",
        &[json!(selector), json!(value)],
    );
    assert_eq!(done, json!(true), "no input {selector}");
}

#[test]
fn a_scheduled_message_is_edited_and_its_json_keeps_every_digit() {
    let server = Server::start(&[]);
    let body = r#"{"messages": [{"body": {"n": 12345678901234567890, "price": 2.50},
        "headers": {"tenant": "acme"}, "delay_ms": 3600000}]}"#;
    let response = server.enqueue_raw("receipts", body, None);
    assert_eq!(response.status, 201, "{response:?}");
    let id = response.body["ids"][0].as_str().expect("an id").to_string();

    let browser = Browser::start();
    open(&browser, &server, &format!("#/messages/{id}"));
    browser.find_text("#message-state", "scheduled");
    // Pretty-printed from the stored text: the literals are shown as they were sent.
    let shown = browser.find("#body").text();
    assert!(shown.contains("\"n\": 12345678901234567890"), "{shown}");
    assert!(shown.contains("\"price\": 2.50"), "{shown}");

    browser.click("button[data-action='edit']");
    let editor = browser.find("#editor textarea[name='body']");
    editor.type_text(r#"{"n": 12345678901234567891, "price": 3.50}"#);
    browser.find("#editor input[name='header-value']").type_text("globex");
    browser.click("#editor button[data-action='add-header']");
    let names = browser.find_all("#editor input[name='header-name']");
    names.last().expect("a new header row").type_text("kind");
    let values = browser.find_all("#editor input[name='header-value']");
    values.last().expect("a new header row").type_text("receipt");
    browser.find("#editor input[name='priority']").type_text("7");
    let deliver_at = common::now_ms() + 7_200_000;
    let local = browser.script(
        "const d = new Date(arguments[0]); const p = (n) => String(n).padStart(2, '0'); \
         return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;",
        &[json!(deliver_at)],
    );
    set_input(&browser, "#editor input[name='deliver_at']", local.as_str().unwrap_or_default());
    browser.click("#editor button[data-action='save']");
    browser.find_text("#flash", "saved");
    browser.find_text("dl.facts", "7");
    browser.screenshot("message-edited");

    let message = server.get_message(&id);
    assert_eq!(message["state"], "scheduled");
    assert_eq!(message["priority"], 7);
    assert_eq!(message["headers"], json!({"tenant": "globex", "kind": "receipt"}));
    let stored_at = message["deliver_at"].as_u64().expect("deliver_at");
    assert!(stored_at.abs_diff(deliver_at) < 1000, "{stored_at} vs {deliver_at}");
    let raw = raw_get(&server, &format!("/v1/messages/{id}"));
    assert!(raw.contains(r#""body":{"n": 12345678901234567891, "price": 3.50}"#), "{raw}");
    assert!(raw.contains(r#""detail":"changed body, headers, priority, deliver_at""#), "{raw}");

    // An edit that leaves the body alone does not send it: the stored bytes stay as they are.
    browser.click("button[data-action='edit']");
    browser.find("#editor input[name='priority']").type_text("8");
    browser.click("#editor button[data-action='save']");
    poll_until(Duration::from_secs(10), "priority 8", || {
        (server.get_message(&id)["priority"] == 8).then_some(())
    });
    let raw = raw_get(&server, &format!("/v1/messages/{id}"));
    assert!(raw.contains(r#""body":{"n": 12345678901234567891, "price": 3.50}"#), "{raw}");
    assert!(raw.contains(r#""detail":"changed priority""#), "{raw}");
}

#[test]
fn a_queue_is_paused_resumed_redriven_purged_and_configured_from_its_page() {
    let server = Server::start(&[]);
    server.enqueue(
        "jobs",
        &json!([{"body": "a", "max_attempts": 1}, {"body": "b", "max_attempts": 1}]),
    );
    fail_all(&server, "jobs", "HTTP 503 from the payment provider");
    server.enqueue("jobs", &json!([{"body": "c"}]));
    let browser = Browser::start();
    open(&browser, &server, "#/queues/jobs");
    browser.find_text(".tabs a[data-state='dead'] .count", "2");

    browser.click("button[data-action='pause']");
    browser.find_text("#queue-state", "paused");
    assert_eq!(server.get("/v1/queues/jobs").body["paused"], true);
    assert!(server.lease("jobs", 10, 1000, 0).is_empty(), "a paused queue leases nothing");
    browser.click("button[data-action='resume']");
    browser.find_text("#queue-state", "delivering");
    assert_eq!(server.get("/v1/queues/jobs").body["paused"], false);

    // Redrive, with a preview of how many.
    browser.click("button[data-action='redrive']");
    browser.find_text("dialog .preview", "2 dead messages will go back to ready");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "2 messages redriven");
    let counts = server.queue_counts("jobs");
    assert_eq!((counts["dead"].as_u64(), counts["ready"].as_u64()), (Some(0), Some(3)));

    // Purge asks first; cancelling deletes nothing.
    browser.click("button[data-action='purge']");
    set_input(&browser, "dialog select[name='state']", "ready");
    browser.find_text("dialog .preview", "Deletes all 3 ready messages of jobs");
    browser.click("dialog button[data-action='cancel']");
    assert_eq!(server.queue_counts("jobs")["ready"], 3);
    browser.click("button[data-action='purge']");
    set_input(&browser, "dialog select[name='state']", "ready");
    browser.screenshot("queue-purge");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "Purged 3 ready messages");
    assert_eq!(server.queue_counts("jobs")["ready"], 0);

    // Settings: a value the server refuses is shown as the server says it, in the dialog.
    browser.click("button[data-action='settings']");
    browser.find("dialog input[name='max_attempts']").type_text("5");
    browser.find("dialog input[name='retention_ms']").type_text("60000");
    browser.find("dialog input[name='backoff.jitter']").type_text("2");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("dialog .flash.error", "400 invalid_request");
    browser.find_text("dialog .flash.error", "field backoff.jitter: must be 0 to 0.99, got 2");
    assert_eq!(server.get("/v1/queues/jobs").body["settings"]["max_attempts"], Value::Null);
    browser.find("dialog input[name='backoff.jitter']").type_text("0.1");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "Saved the settings of jobs");
    let settings = server.get("/v1/queues/jobs").body["settings"].clone();
    assert_eq!(settings["max_attempts"], 5);
    assert_eq!(settings["retention_ms"], 60000);
    assert_eq!(settings["backoff"]["jitter"], 0.1);
    assert_eq!(settings["lease_ms"], Value::Null, "an empty field is the server's default");
}

#[test]
fn tables_page_filter_and_act_on_many_messages() {
    let server = Server::start(&[]);
    let messages: Vec<Value> = (0..120)
        .map(|n| {
            let tenant = if n % 3 == 0 { "acme" } else { "globex" };
            json!({"body": n, "headers": {"tenant": tenant}, "max_attempts": 1})
        })
        .collect();
    let ids = server.enqueue("bulk", &json!(messages));
    let leased = server.lease("bulk", 1000, 60_000, 0);
    let items: Vec<Value> = leased
        .iter()
        .map(|message| {
            let error = if message["body"].as_u64().unwrap_or(0) % 2 == 0 {
                "HTTP 410 Gone"
            } else {
                "timeout talking to the provider"
            };
            json!({"lease": message["lease"], "error": error})
        })
        .collect();
    server.nack("bulk", &json!(items));

    let browser = Browser::start();
    open(&browser, &server, "#/queues/bulk?state=dead");
    let rows = || browser.find_all("table.messages tbody tr").len();
    browser.wait_for("a page of 50", || (rows() == 50).then_some(()));
    assert!(browser.find("table.messages tbody tr").text().contains(ids[0].as_str()));
    browser.click("button[data-action='next']");
    browser.wait_for("page 2", || {
        let first = browser.find("table.messages tbody tr").text();
        first.contains(ids[50].as_str()).then_some(())
    });
    browser.click("button[data-action='next']");
    browser.wait_for("the last 20", || (rows() == 20).then_some(()));
    assert_eq!(browser.find("button[data-action='next']").property("disabled"), json!(true));
    browser.click("button[data-action='previous']");
    browser.wait_for("page 2 again", || (rows() == 50).then_some(()));

    // Newest first.
    set_input(&browser, "select[name='order']", "desc");
    browser.wait_for("newest first", || {
        let first = browser.find("table.messages tbody tr").text();
        first.contains(ids[119].as_str()).then_some(())
    });

    // Filter by text in the last error and by header: 120 / 2 / 3 = 20 of each kind.
    let error = browser.find("input[name='error']");
    error.type_text("410 GONE");
    browser.find("input[name='header']").type_text("tenant:acme");
    browser.click("form.filters button[type='submit']");
    browser.wait_for("the filtered rows", || (rows() == 20).then_some(()));
    for row in browser.find_all("table.messages tbody tr") {
        assert!(row.text().contains("HTTP 410 Gone"), "{}", row.text());
    }
    browser.screenshot("queue-filtered");

    // Retry every one of them at once.
    browser.click("th.select input[type='checkbox']");
    browser.find_text(".bulk", "20 selected");
    browser.click("button[data-action='bulk-retry']");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "20 messages retried");
    let counts = server.queue_counts("bulk");
    assert_eq!((counts["ready"].as_u64(), counts["dead"].as_u64()), (Some(20), Some(100)));

    // Delete two, reschedule one, from the plain dead tab.
    open(&browser, &server, "#/queues/bulk?state=dead");
    browser.wait_for("the dead tab", || (rows() == 50).then_some(()));
    let boxes = browser.find_all("table.messages tbody input[type='checkbox']");
    boxes[0].click();
    // An event of the queue makes the view read it again; what a person may be clicking stays.
    let next = browser.find("button[data-action='next']");
    let pause = browser.find("button[data-action='pause']");
    let tab = browser.find(".tabs a[data-state='ready']");
    server.enqueue("bulk", &json!([{"body": "one more"}]));
    wait_for_redraw(&browser);
    assert_still_on_the_page(&browser, &[&boxes[0], &boxes[1], &next, &pause, &tab]);
    assert_eq!(boxes[0].property("checked"), json!(true), "the selection outlives a refresh");
    boxes[1].click();
    browser.click("button[data-action='bulk-delete']");
    browser.find_text("dialog", "Delete 2 dead messages of bulk?");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "2 messages deleted");
    assert_eq!(server.queue_counts("bulk")["dead"], 98);
    browser.wait_for("the table without them", || (rows() == 50).then_some(()));
    let first = browser.find_all("table.messages tbody input[type='checkbox']");
    first[0].click();
    browser.click("button[data-action='bulk-reschedule']");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "1 message rescheduled");
    assert_eq!(server.queue_counts("bulk")["scheduled"], 1);
}

const ADMIN_SECRET: &str = "ops-secret-0123456789abcdef";
const VIEWER_SECRET: &str = "viewer-secret-0123456789abcdef";

/// A server with two tokens: `ops` (every role) and `viewer` (consume only: the page's actions all
/// need admin, so for the page it is a token that may look and not touch).
fn server_with_tokens() -> (Server, common::ConfigFile) {
    let config = common::ConfigFile::new(&format!(
        "[[tokens]]\nname = \"ops\"\nsecret = \"{ADMIN_SECRET}\"\nroles = [\"admin\", \"produce\", \"consume\"]\n\n\
         [[tokens]]\nname = \"viewer\"\nsecret = \"{VIEWER_SECRET}\"\nroles = [\"consume\"]\n"
    ));
    let server = Server::start(&["--config", config.path()]);
    (server, config)
}

/// The labels of the action buttons a person can see (queue, message and bulk actions).
fn displayed_actions(browser: &Browser) -> Vec<String> {
    browser
        .find_all(".queue-actions button, .message-actions button, .bulk button")
        .into_iter()
        .filter(browser::Element::displayed)
        .map(|button| button.text())
        .collect()
}

/// Makes a hidden, disabled button usable again, as someone poking at the page would.
fn force_button(browser: &Browser, action: &str) {
    let found = browser.script(
        "const button = document.querySelector(`main button[data-action='${arguments[0]}']`); \
         if (!button) return false; button.hidden = false; button.disabled = false; return true;",
        &[json!(action)],
    );
    assert_eq!(found, json!(true), "no {action} button on the page, even hidden");
}

#[test]
fn a_token_without_admin_sees_no_actions_and_a_forced_one_shows_the_servers_403() {
    let (server, _config) = server_with_tokens();
    let ops = server.with_token(ADMIN_SECRET);
    let ids = ops.enqueue("emails", &json!([{"body": "hi", "max_attempts": 1}]));
    let leased = ops.lease("emails", 1, 60_000, 0);
    ops.nack("emails", &json!([{"lease": leased[0]["lease"], "error": "bounced"}]));

    let browser = Browser::start();
    browser.goto(&format!("{}/", server.base_url));
    // The page asks for a token; a wrong one gets the server's own refusal.
    browser.find("#token-input").type_text("not-a-token-of-this-server");
    browser.click("#token-submit");
    browser.find_text(".token-form .flash", "401 invalid_token");
    browser.find("#token-input").type_text(VIEWER_SECRET);
    browser.click("#token-submit");
    browser.find_text("#who", "viewer");
    browser.find_text("tr[data-queue='emails'] td.count-dead", "1");
    // The event stream is for admins: this token gets a page that refreshes itself instead.
    browser.find_text("#live", "refreshing every 5 s");
    // Kept for this tab only, and never in a cookie.
    let stored =
        browser.script("return [sessionStorage.getItem('outboxd.token'), document.cookie]", &[]);
    assert_eq!(stored, json!([VIEWER_SECRET, ""]));

    open(&browser, &server, "#/queues/emails?state=dead");
    browser.find(&format!("tr[data-id='{}']", ids[0]));
    browser.find_text(".readonly-note", "may look at this queue but not change it");
    assert_eq!(displayed_actions(&browser), Vec::<String>::new());
    assert!(browser.find_all("table.messages input[type='checkbox']").is_empty());

    // Forced anyway: the server refuses, and the page shows its answer as it is.
    force_button(&browser, "pause");
    browser.click("button[data-action='pause']");
    let flash = browser.find_text("#flash", "403 forbidden");
    assert!(
        flash.text().contains("token \"viewer\" (roles: consume; queues: *) may not pause"),
        "{}",
        flash.text()
    );
    assert_eq!(ops.get("/v1/queues/emails").body["paused"], false);
    browser.screenshot("readonly-forbidden");

    open(&browser, &server, &format!("#/messages/{}", ids[0]));
    browser.find_text("#message-state", "dead");
    browser.find_text(".readonly-note", "may look at this message but not change it");
    assert_eq!(displayed_actions(&browser), Vec::<String>::new());
    force_button(&browser, "delete");
    browser.click("button[data-action='delete']");
    browser.click("dialog button[data-action='confirm']");
    browser.find_text("#flash", "403 forbidden");
    assert_eq!(ops.get_message(&ids[0])["state"], "dead");

    // The admin token gets the actions, and the live stream.
    browser.click("#forget-token");
    browser.find("#token-input").type_text(ADMIN_SECRET);
    browser.click("#token-submit");
    browser.find_text("#who", "ops");
    browser.find_text("#live", "live");
    open(&browser, &server, &format!("#/messages/{}", ids[0]));
    browser.find("button[data-action='retry']");
    let shown = displayed_actions(&browser);
    assert_eq!(shown, ["Retry now", "Edit…", "Reschedule…", "Delete…"]);
}

/// Markup and script in every place a message's content reaches the page. Each payload marks
/// what it would create (`data-xss`) and sets `window.__xss` if it ever ran.
const PAYLOAD_IMG: &str = r#"<img src=x onerror="window.__xss=1;alert(1)" data-xss="img">"#;
const PAYLOAD_SCRIPT: &str = r#"<script data-xss="script">window.__xss=2;alert(2)</script>"#;
const PAYLOAD_SVG: &str = r#""><svg onload="window.__xss=3;alert(3)" data-xss="svg"></svg>"#;

/// Nothing ran and nothing was injected: no dialog, no flag, no element from a payload.
fn assert_nothing_ran(browser: &Browser, place: &str) {
    assert_eq!(browser.open_dialog_text(), None, "a dialog opened on the {place}");
    let ran = browser.script(
        "return [typeof window.__xss, document.querySelectorAll('[data-xss]').length, \
         document.querySelectorAll('img[src=\"x\"], svg[onload], [onerror]').length]",
        &[],
    );
    assert_eq!(ran, json!(["undefined", 0, 0]), "injected content on the {place}");
}

#[test]
fn message_content_is_shown_as_text_and_runs_nothing() {
    let server = Server::start(&[]);
    let browser = Browser::start();
    open(&browser, &server, "");
    browser.find_text("#live", "live");
    // Anything the Content-Security-Policy blocks is recorded, for the whole test (the views below
    // are changes of the address's fragment: the page is never reloaded, as checked at the end).
    mark_page(&browser);
    browser.script(
        "window.__violations = []; document.addEventListener('securitypolicyviolation', \
         (event) => window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`));",
        &[],
    );

    let text_body = format!("{PAYLOAD_IMG}{PAYLOAD_SCRIPT}");
    let ids = server.enqueue(
        "xss",
        &json!([
            {"body": text_body, "headers": {PAYLOAD_SVG: PAYLOAD_IMG, "x": PAYLOAD_SCRIPT},
             "max_attempts": 1},
            {"body": {"html": PAYLOAD_IMG, PAYLOAD_SCRIPT: PAYLOAD_SVG}},
        ]),
    );
    use base64::Engine;
    let bytes = [PAYLOAD_SCRIPT.as_bytes(), &[0x00, 0xff]].concat();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let binary = server.enqueue("xss", &json!([{"body_base64": encoded}]));
    // The first one dies while the page is open, with markup as its error: it reaches the
    // banner through the event stream.
    let leased = server.lease("xss", 1, 60_000, 0);
    let error = format!("{PAYLOAD_SCRIPT} {PAYLOAD_SVG}");
    server.nack("xss", &json!([{"lease": leased[0]["lease"], "error": error}]));
    browser.find_text("[data-banner='dead']", "<script data-xss=\"script\">");
    browser.find_text("tr[data-queue='xss'] td.count-dead", "1");
    assert_nothing_ran(&browser, "overview");

    open(&browser, &server, "#/queues/xss?state=dead");
    browser.find_text("table.messages td.error-text", PAYLOAD_SVG);
    assert_nothing_ran(&browser, "dead tab");

    open(&browser, &server, &format!("#/messages/{}", ids[0]));
    browser.find_text("#body", &text_body);
    browser.find_text("#headers", PAYLOAD_SVG);
    browser.find_text("#headers", PAYLOAD_IMG);
    browser.find_text("#timeline li.failure", &error);
    browser.find_text("#last-error", PAYLOAD_SCRIPT);
    browser.screenshot("xss-message");
    assert_nothing_ran(&browser, "message with a text body");
    // The editor holds the same text in its fields, still as text.
    browser.click("button[data-action='edit']");
    let editor = browser.find("#editor textarea[name='body']");
    assert_eq!(editor.property("value"), json!(text_body));
    assert_nothing_ran(&browser, "editor");

    open(&browser, &server, &format!("#/messages/{}", ids[1]));
    browser.find_text(
        "#body",
        r#""html": "<img src=x onerror=\"window.__xss=1;alert(1)\" data-xss=\"img\">""#,
    );
    assert_nothing_ran(&browser, "message with a JSON body");

    open(&browser, &server, &format!("#/messages/{}", binary[0]));
    let dump = browser.find("#body").text();
    assert!(dump.starts_with("00000000  3c 73 63 72 69 70 74 20"), "{dump}");
    assert!(dump.contains("|<script data-xss|"), "{dump}");
    browser.click("button[data-view='Base64']");
    browser.find_text("#body", &encoded);
    assert_nothing_ran(&browser, "message with a binary body");
    assert_not_reloaded(&browser);
    let violations = browser.script("return window.__violations", &[]);
    assert_eq!(violations, json!([]), "the page broke its own Content-Security-Policy");
}

/// How long, in milliseconds, from changing the hash to `hash` until the view's `mark` is set
/// again and the browser has painted the next frame (the median of `runs`).
fn time_view(browser: &Browser, hash: &str, mark: &str, runs: usize) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            // Leave the view first, so that each run builds it from nothing.
            browser.script("location.hash = '#/messages/none'", &[]);
            browser.find("#message-gone");
            let elapsed = browser.script_async(
                "const [hash, mark, done] = arguments; \
                 const before = performance.getEntriesByName(mark).length; \
                 const start = performance.now(); location.hash = hash; \
                 const check = () => { \
                   if (performance.getEntriesByName(mark).length > before) { \
                     requestAnimationFrame(() => done(performance.now() - start)); \
                   } else { setTimeout(check, 1); } }; \
                 check();",
                &[json!(hash), json!(mark)],
            );
            elapsed.as_f64().expect("a duration")
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Measures how fast the page shows a server's tables (docs/performance.md, "The outbox page").
/// Fill a server first, then point this test at it:
///
/// ```sh
/// target/release/outboxd bench --url http://127.0.0.1:7070 --phase enqueue --messages 1000000 --queue bench
/// OUTBOXD_UI_MEASURE_URL=http://127.0.0.1:7070 cargo test --features testing --test ui -- --ignored --nocapture
/// ```
///
/// It prints figures and asserts nothing about them: timings belong to the machine.
#[test]
#[ignore = "a measurement against a server you fill; see docs/performance.md"]
fn measure_how_fast_tables_appear() {
    let url = std::env::var("OUTBOXD_UI_MEASURE_URL")
        .expect("OUTBOXD_UI_MEASURE_URL: the server to measure, filled with messages");
    let queue = std::env::var("OUTBOXD_UI_MEASURE_QUEUE").unwrap_or_else(|_| "bench".into());
    let browser = Browser::start();
    browser.goto(&format!("{url}/#/queues/{queue}?state=ready"));
    browser.find("table.messages tbody tr");
    let first_load =
        browser.script("return performance.getEntriesByName('outboxd:table')[0].startTime", &[]);
    println!("first load, ready tab, from navigation start: {first_load} ms");
    let views = [
        ("overview", "#/".to_string(), "outboxd:overview"),
        ("ready, oldest first", format!("#/queues/{queue}?state=ready"), "outboxd:table"),
        (
            "ready, newest first",
            format!("#/queues/{queue}?state=ready&order=desc"),
            "outboxd:table",
        ),
        ("delivered", format!("#/queues/{queue}?state=delivered"), "outboxd:table"),
        ("dead", format!("#/queues/{queue}?state=dead"), "outboxd:table"),
        (
            "dead, error filter",
            format!("#/queues/{queue}?state=dead&error=timeout"),
            "outboxd:table",
        ),
        (
            "ready, header filter",
            format!("#/queues/{queue}?state=ready&header=kind:none"),
            "outboxd:table",
        ),
    ];
    for (name, hash, mark) in views {
        println!("{name}: median {:.0} ms over 7", time_view(&browser, &hash, mark, 7));
    }
    // The next page of the ready tab, through its button.
    browser.goto(&format!("{url}/#/queues/{queue}?state=ready"));
    browser.find("table.messages tbody tr");
    if browser.find("button[data-action='next']").property("disabled") == json!(true) {
        println!("ready, next page: there is only one page");
        return;
    }
    let next = browser.script_async(
        "const done = arguments[0]; const before = performance.getEntriesByName('outboxd:table').length; \
         const start = performance.now(); document.querySelector(\"button[data-action='next']\").click(); \
         const check = () => { if (performance.getEntriesByName('outboxd:table').length > before) \
           { requestAnimationFrame(() => done(performance.now() - start)); } else { setTimeout(check, 1); } }; \
         check();",
        &[],
    );
    println!("ready, next page: {next} ms");
}

#[test]
fn the_pages_parsers_keep_the_servers_text_exactly() {
    let server = Server::start(&[]);
    let browser = Browser::start();
    open(&browser, &server, "");
    // The page's own modules, as served, run in the page.
    let results = browser.script_async(
        "const done = arguments[0]; \
         Promise.all([import('./ui/api.js'), import('./ui/body.js')]).then(([api, body]) => { \
           const stream = ': outboxd event stream\\r\\n\\r\\nid: 5\\r\\nevent: dead\\r\\ndata: {\"a\":1}\\r\\n\\r\\nid: 6\\ndata: {\"b\":2}\\n\\n'; \
           const parsed = [1, 2, 3, 7, 1000].map((size) => { \
             const parser = new api.EventStreamParser(); const events = []; \
             for (let at = 0; at < stream.length; at += size) events.push(...parser.push(stream.slice(at, at + size))); \
             return JSON.stringify(events); }); \
           const view = '{\"id\":\"1\",\"headers\":{\"k}\\\\\"\":\"{[\"},\"body\":{\"n\": 12345678901234567890, \"s\": \"}]\\\\\" ,\", \"e\": [], \"o\": {}, \"f\": 2.50}}'; \
           const raw = body.rawField(view, 'body'); \
           done({parsed, raw, pretty: body.prettyJson(raw), headers: body.rawField(view, 'headers'), \
                 missing: body.rawField(view, 'nothing'), text: body.bodyOf('{\"body\":\"<b>hi</b>\"}', {}).text, \
                 patterns: [api.patternMatches('billing.*', 'billing.eu'), api.patternMatches('billing.*', 'orders'), \
                            api.patternMatches('*.dlq', 'a.dlq'), api.patternMatches('a*b*c', 'a-x-c-y-b')]}); \
         }).catch((error) => done(String(error)));",
        &[],
    );
    let events = r#"[{"id":"5","kind":"dead","data":"{\"a\":1}"},{"id":"6","kind":"message","data":"{\"b\":2}"}]"#;
    assert_eq!(results["parsed"], json!([events, events, events, events, events]), "{results}");
    let raw = r#"{"n": 12345678901234567890, "s": "}]\" ,", "e": [], "o": {}, "f": 2.50}"#;
    assert_eq!(results["raw"], json!(raw), "{results}");
    let pretty = "{\n  \"n\": 12345678901234567890,\n  \"s\": \"}]\\\" ,\",\n  \"e\": [],\n  \"o\": {},\n  \"f\": 2.50\n}";
    assert_eq!(results["pretty"], json!(pretty), "{results}");
    assert_eq!(results["headers"], json!(r#"{"k}\"":"{["}"#), "{results}");
    assert_eq!(results["missing"], Value::Null);
    assert_eq!(results["text"], json!("<b>hi</b>"));
    assert_eq!(results["patterns"], json!([true, false, true, false]));
}
