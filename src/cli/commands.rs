//! The request/reply subcommands: `lease`, `ack`, `nack`, `queues`, `messages`, `message`,
//! `retry` and `delete`.
//!
//! Each makes its request(s), then prints a table, or with `--json` the server's reply as is (so
//! bodies keep their exact bytes). Where items can fail one by one (ack, nack), every result is
//! printed first, and the command then fails naming the items that were not done.

use super::display::{self, Body, CELL_CHARS_MAX};
use super::http::{self, Client};
use super::table::Table;
use super::{note, print, print_line, CliError, GlobalArgs};
use crate::limits::{ITEM_COUNT_MAX, LEASE_COUNT_MAX, LEASE_MS_MAX, LIST_COUNT_MAX, WAIT_MS_MAX};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// Flags and arguments of `outboxd lease`.
#[derive(clap::Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The queue to lease from.
    pub queue: String,
    /// Most messages to lease.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(LEASE_COUNT_MAX)))]
    pub max: u32,
    /// How long the lease lasts, in milliseconds (default: the queue's setting).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=LEASE_MS_MAX))]
    pub lease_ms: Option<u64>,
    /// How long to wait for a message when none is ready, in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=WAIT_MS_MAX))]
    pub wait_ms: u64,
}

#[derive(Deserialize)]
struct LeaseReply {
    messages: Vec<LeasedMessage>,
}

#[derive(Deserialize)]
struct LeasedMessage {
    id: String,
    lease: String,
    attempt: u32,
}

/// The bodies of a lease reply, read apart from the rest: serde cannot flatten a raw JSON value.
#[derive(Deserialize)]
struct LeasedBodies {
    messages: Vec<Body>,
}

/// Runs `outboxd lease`.
pub fn lease(args: &LeaseArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/queues/{}/lease", http::segment(&args.queue, "queue name")?);
    let mut request = serde_json::json!({ "max": args.max, "wait_ms": args.wait_ms });
    if let Some(lease_ms) = args.lease_ms {
        request["lease_ms"] = lease_ms.into();
    }
    let body = request.to_string();
    let wait = Duration::from_millis(args.wait_ms);
    let reply = client.post(&path, &[], Some(body.as_bytes()), &[], wait)?;
    let parsed: LeaseReply = reply.parse("the lease")?;
    let bodies: LeasedBodies = reply.parse("the lease")?;
    if args.global.json {
        return print_line(&reply.text);
    }
    if parsed.messages.is_empty() {
        note(&format!("no message of queue {} was ready", args.queue));
        return Ok(());
    }
    let mut table = Table::new(&["ID", "LEASE", "ATTEMPT", "BODY"]).right_align(&[2]);
    for (message, body) in parsed.messages.iter().zip(&bodies.messages) {
        table.push(vec![
            message.id.clone(),
            message.lease.clone(),
            message.attempt.to_string(),
            display::one_line(&body.text(), CELL_CHARS_MAX),
        ]);
    }
    print(&table.render())
}

/// Flags and arguments of `outboxd ack`.
#[derive(clap::Args, Debug)]
pub struct AckArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The queue the messages were leased from.
    pub queue: String,
    /// Lease tokens, as `outboxd lease` printed them.
    #[arg(required = true)]
    pub leases: Vec<String>,
}

/// Flags and arguments of `outboxd nack`.
#[derive(clap::Args, Debug)]
pub struct NackArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The queue the messages were leased from.
    pub queue: String,
    /// Lease tokens, as `outboxd lease` printed them.
    #[arg(required = true)]
    pub leases: Vec<String>,
    /// Why processing failed; stored as the message's last error.
    #[arg(long)]
    pub error: Option<String>,
    /// Retry after exactly this many milliseconds instead of the backoff.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=crate::limits::DELAY_MS_MAX))]
    pub delay_ms: Option<u64>,
    /// Give up now: the messages go dead.
    #[arg(long, conflicts_with = "delay_ms")]
    pub dead: bool,
}

#[derive(Deserialize)]
struct ResultsReply {
    results: Vec<Value>,
}

/// Runs `outboxd ack`.
pub fn ack(args: &AckArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/queues/{}/ack", http::segment(&args.queue, "queue name")?);
    check_leases(&args.leases)?;
    let (results, stopped) = post_in_chunks(
        &client,
        &path,
        &args.leases,
        "ack",
        |chunk| serde_json::json!({ "leases": chunk }),
    );
    let reported = report_results(&args.global, &args.leases, &results, &["acked"], "acked");
    finish_chunks(reported, stopped, results.len(), args.leases.len(), "acked")
}

/// Runs `outboxd nack`.
pub fn nack(args: &NackArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/queues/{}/nack", http::segment(&args.queue, "queue name")?);
    check_leases(&args.leases)?;
    let (results, stopped) = post_in_chunks(&client, &path, &args.leases, "nack", |chunk| {
        let items: Vec<Value> = chunk
            .iter()
            .map(|lease| {
                let mut item = serde_json::json!({ "lease": lease });
                if let Some(error) = &args.error {
                    item["error"] = error.as_str().into();
                }
                if let Some(delay_ms) = args.delay_ms {
                    item["delay_ms"] = delay_ms.into();
                }
                if args.dead {
                    item["dead"] = true.into();
                }
                item
            })
            .collect();
        serde_json::json!({ "items": items })
    });
    let reported =
        report_results(&args.global, &args.leases, &results, &["retrying", "dead"], "nacked");
    finish_chunks(reported, stopped, results.len(), args.leases.len(), "nacked")
}

/// Refuses an empty lease token before anything is sent (a shell variable that was not set).
fn check_leases(leases: &[String]) -> Result<(), CliError> {
    match leases.iter().position(String::is_empty) {
        Some(index) => Err(CliError::Usage(format!(
            "lease token {} of {} is empty; give the tokens `outboxd lease` printed (check \
             that the shell variable holding it is set)",
            index + 1,
            leases.len()
        ))),
        None => Ok(()),
    }
}

/// Posts the leases in requests of at most [`ITEM_COUNT_MAX`]. Returns the results gathered, in
/// order, and the error of the request that stopped it, if any: the results of the earlier
/// requests are done on the server and must still be shown.
fn post_in_chunks(
    client: &Client,
    path: &str,
    leases: &[String],
    what: &str,
    request: impl Fn(&[String]) -> Value,
) -> (Vec<Value>, Option<CliError>) {
    let mut results = Vec::with_capacity(leases.len());
    for chunk in leases.chunks(ITEM_COUNT_MAX) {
        match post_chunk(client, path, chunk, what, &request) {
            Ok(chunk_results) => results.extend(chunk_results),
            Err(error) => return (results, Some(error)),
        }
    }
    (results, None)
}

fn post_chunk(
    client: &Client,
    path: &str,
    chunk: &[String],
    what: &str,
    request: impl Fn(&[String]) -> Value,
) -> Result<Vec<Value>, CliError> {
    let body = request(chunk).to_string();
    let reply = client.post(path, &[], Some(body.as_bytes()), &[], Duration::ZERO)?;
    let parsed: ResultsReply = reply.parse(&format!("the {what}"))?;
    if parsed.results.len() != chunk.len() {
        return Err(CliError::Protocol(format!(
            "the {what} of {} leases answered {} results",
            chunk.len(),
            parsed.results.len()
        )));
    }
    Ok(parsed.results)
}

/// The outcome of an ack or nack sent in chunks, after the results gathered were printed.
fn finish_chunks(
    reported: Result<(), CliError>,
    stopped: Option<CliError>,
    processed_count: usize,
    lease_count: usize,
    verb: &str,
) -> Result<(), CliError> {
    let Some(error) = stopped else {
        return reported;
    };
    if processed_count == 0 {
        return Err(error);
    }
    // A failure among the printed results is named too.
    let also = match reported {
        Err(failed) => format!("\nof those: {failed}"),
        Ok(()) => String::new(),
    };
    Err(CliError::Incomplete(format!(
        "the first {processed_count} of {lease_count} lease token(s) were processed (their \
         results are printed); the request for the next ones failed and the rest were not sent: \
         {error}\nhint: run the command again with the tokens from number {} on (a token already \
         {verb} then answers lease_expired){also}",
        processed_count + 1
    )))
}

/// Prints one result per lease, then fails naming every lease whose result is not in `done`.
fn report_results(
    global: &GlobalArgs,
    leases: &[String],
    results: &[Value],
    done: &[&str],
    verb: &str,
) -> Result<(), CliError> {
    let result_of = |result: &Value| result["result"].as_str().unwrap_or("?").to_string();
    if global.json {
        print_line(&serde_json::json!({ "results": results }).to_string())?;
    } else {
        // Only a nack has a next attempt to show.
        let with_next = verb == "nacked";
        let header: &[&str] =
            if with_next { &["LEASE", "RESULT", "NEXT ATTEMPT"] } else { &["LEASE", "RESULT"] };
        let mut table = Table::new(header);
        for (lease, result) in leases.iter().zip(results) {
            let mut row = vec![lease.clone(), result_of(result)];
            if with_next {
                row.push(
                    result["next_attempt_at"].as_u64().map_or_else(String::new, display::time),
                );
            }
            table.push(row);
        }
        print(&table.render())?;
    }
    let failed: Vec<String> = leases
        .iter()
        .zip(results)
        .filter(|(_, result)| !done.contains(&result_of(result).as_str()))
        .map(|(lease, result)| format!("{lease} ({})", result_of(result)))
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(CliError::Incomplete(format!(
        "{} of {} lease(s) were not {verb}: {}\nhint: lease_expired: the lease ran out, or the \
         message was acked, nacked or redelivered since; unknown: the token is mistyped, of \
         another queue, or its message is gone. Lease the message again to get a fresh token.",
        failed.len(),
        leases.len(),
        failed.join(", ")
    )))
}

/// Flags and arguments of `outboxd queues`.
#[derive(clap::Args, Debug)]
pub struct QueuesArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Deserialize)]
struct QueuesReply {
    queues: Vec<QueueView>,
}

#[derive(Deserialize)]
struct QueueView {
    name: String,
    #[serde(default)]
    paused: bool,
    counts: BTreeMap<String, u64>,
    #[serde(default)]
    oldest_ready_age_ms: Option<u64>,
}

/// The states in the order messages move through them, as the API names them.
const STATES: [&str; 6] = ["scheduled", "ready", "leased", "retrying", "dead", "delivered"];

/// Runs `outboxd queues`.
pub fn queues(args: &QueuesArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let reply = client.get("/v1/queues", &[])?;
    let parsed: QueuesReply = reply.parse("the queue listing")?;
    if args.global.json {
        return print_line(&reply.text);
    }
    if parsed.queues.is_empty() {
        note("no queues yet: a queue appears with its first message");
        return Ok(());
    }
    let mut header = vec!["QUEUE"];
    let titles = ["SCHEDULED", "READY", "LEASED", "RETRYING", "DEAD", "DELIVERED"];
    header.extend(titles);
    header.extend(["PAUSED", "OLDEST READY"]);
    let mut table = Table::new(&header).right_align(&[1, 2, 3, 4, 5, 6, 8]);
    for queue in &parsed.queues {
        let mut row = vec![queue.name.clone()];
        row.extend(
            STATES.iter().map(|state| queue.counts.get(*state).copied().unwrap_or(0).to_string()),
        );
        row.push(if queue.paused { "yes" } else { "no" }.to_string());
        row.push(queue.oldest_ready_age_ms.map_or_else(|| "-".to_string(), display::age));
        table.push(row);
    }
    print(&table.render())
}

/// A message state, for `--state`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum State {
    Scheduled,
    Ready,
    Leased,
    Retrying,
    Dead,
    Delivered,
}

/// Listing order within each state.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Order {
    /// Oldest id first.
    Asc,
    /// Newest id first.
    Desc,
}

/// Flags and arguments of `outboxd messages`.
#[derive(clap::Args, Debug)]
pub struct MessagesArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The queue.
    pub queue: String,
    /// Only messages in this state.
    #[arg(long, value_enum)]
    pub state: Option<State>,
    /// Most messages per page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=LIST_COUNT_MAX as i64))]
    pub limit: u32,
    /// Continue after this cursor (the `next cursor` of the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    /// Order within each state.
    #[arg(long, value_enum, default_value_t = Order::Asc)]
    pub order: Order,
    /// Follow the cursors to the end and list every message.
    #[arg(long)]
    pub all: bool,
}

#[derive(Deserialize)]
struct MessagesPage {
    messages: Vec<Value>,
    next_cursor: Option<String>,
}

/// Messages as a listing shows them, and as `outboxd message` does before its details.
#[derive(Deserialize)]
struct Summary {
    id: String,
    state: String,
    attempts: u32,
    max_attempts: u32,
    enqueued_at: u64,
    updated_at: u64,
    #[serde(default)]
    deliver_at: Option<u64>,
    #[serde(default)]
    lease_expires_at: Option<u64>,
    #[serde(default)]
    last_error: Option<LastError>,
}

#[derive(Deserialize)]
struct LastError {
    message: String,
    at: u64,
    attempt: u32,
    kind: String,
}

/// Runs `outboxd messages`.
pub fn messages(args: &MessagesArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/queues/{}/messages", http::segment(&args.queue, "queue name")?);
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(state) = args.state {
        query.push(("state", value_name(state)));
    }
    query.push(("order", value_name(args.order)));
    let mut cursor = args.after.clone();
    let mut messages = Vec::new();
    // The listing is not a snapshot: a message that changes state between two pages can show up
    // on both (under its old and its new state). It is listed once.
    let mut seen_ids = HashSet::new();
    loop {
        let mut page_query = query.clone();
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let reply = client.get(&path, &page_query)?;
        let page: MessagesPage = reply.parse("the message listing")?;
        if !args.all && args.global.json {
            return print_line(&reply.text);
        }
        for message in page.messages {
            let id = message["id"].as_str().map(str::to_string);
            if id.is_none_or(|id| seen_ids.insert(id)) {
                messages.push(message);
            }
        }
        if !args.all {
            cursor = page.next_cursor;
            break;
        }
        match page.next_cursor {
            None => {
                cursor = None;
                break;
            }
            // The server's cursors always move forward; a repeated one would loop forever.
            Some(next) if cursor.as_ref() == Some(&next) => {
                return Err(CliError::Protocol(format!(
                    "the listing answered cursor {next:?} twice in a row"
                )))
            }
            Some(next) => cursor = Some(next),
        }
    }
    if args.global.json {
        return print_line(
            &serde_json::json!({ "messages": messages, "next_cursor": cursor }).to_string(),
        );
    }
    print_messages(&messages, &args.queue)?;
    if let Some(cursor) = cursor {
        print_line(&format!(
            "next cursor: {cursor}  (outboxd messages {} --after {cursor}, or --all)",
            args.queue
        ))?;
    }
    Ok(())
}

/// The clap name of a value (`dead`, `desc`).
fn value_name(value: impl clap::ValueEnum) -> String {
    value.to_possible_value().map_or_else(String::new, |value| value.get_name().to_string())
}

fn print_messages(messages: &[Value], queue: &str) -> Result<(), CliError> {
    if messages.is_empty() {
        note(&format!("no messages in queue {queue} match"));
        return Ok(());
    }
    let header = ["ID", "STATE", "ATTEMPTS", "ENQUEUED", "UPDATED", "DUE", "LAST ERROR"];
    let mut table = Table::new(&header).right_align(&[2]);
    for message in messages {
        let summary = Summary::deserialize(message).map_err(|error| {
            CliError::Protocol(format!(
                "a message of the listing is not what the API documents: {error}"
            ))
        })?;
        // When a leased message's lease ends, or when a scheduled or retrying one becomes ready.
        let due = summary.lease_expires_at.or(summary.deliver_at);
        let last_error = summary
            .last_error
            .map_or_else(String::new, |error| display::one_line(&error.message, CELL_CHARS_MAX));
        table.push(vec![
            summary.id,
            summary.state,
            format!("{}/{}", summary.attempts, summary.max_attempts),
            display::time(summary.enqueued_at),
            display::time(summary.updated_at),
            display::optional_time(due),
            last_error,
        ]);
    }
    print(&table.render())
}

/// Flags and arguments of `outboxd message`.
#[derive(clap::Args, Debug)]
pub struct MessageArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The message id (16 hex characters).
    pub id: String,
}

/// What `GET /v1/messages/{id}` adds to a listing's summary (read apart from it, and from the
/// body: serde cannot flatten a raw JSON value).
#[derive(Deserialize)]
struct MessageDetails {
    queue: String,
    priority: i32,
    #[serde(default)]
    history: Vec<Value>,
    #[serde(default)]
    history_dropped: u64,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Runs `outboxd message`.
pub fn message(args: &MessageArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let reply =
        client.get(&format!("/v1/messages/{}", http::segment(&args.id, "message id")?), &[])?;
    let summary: Summary = reply.parse("the message")?;
    let view: MessageDetails = reply.parse("the message")?;
    let body: Body = reply.parse("the message")?;
    if args.global.json {
        return print_line(&reply.text);
    }
    let mut fields = Table::headless(2);
    let mut field = |name: &str, value: String| fields.push(vec![name.to_string(), value]);
    field("id", summary.id.clone());
    field("queue", view.queue.clone());
    field("state", summary.state.clone());
    field("priority", view.priority.to_string());
    field("attempts", format!("{} of {}", summary.attempts, summary.max_attempts));
    field("enqueued", display::time(summary.enqueued_at));
    field("updated", display::time(summary.updated_at));
    if let Some(deliver_at) = summary.deliver_at {
        field("deliver at", display::time(deliver_at));
    }
    if let Some(lease_expires_at) = summary.lease_expires_at {
        field("lease expires", display::time(lease_expires_at));
    }
    if let Some(error) = &summary.last_error {
        let text = format!(
            "{} (attempt {}, {}, {})",
            display::one_line(&error.message, usize::MAX),
            error.attempt,
            error.kind,
            display::time(error.at)
        );
        field("last error", text);
    }
    for (name, value) in &view.headers {
        field("header", display::one_line(&format!("{name}={value}"), usize::MAX));
    }
    field("body", display::one_line(&body.text(), usize::MAX));
    print(&fields.render())?;
    // A blank line between the message's fields and its history.
    print("\n")?;
    print(&history_table(&view).render())
}

fn history_table(view: &MessageDetails) -> Table {
    let mut table = Table::new(&["AT", "EVENT", "ATTEMPT", "DETAIL"]).right_align(&[2]);
    if view.history_dropped > 0 {
        note(&format!("{} older history event(s) were dropped", view.history_dropped));
    }
    for entry in &view.history {
        let detail = entry["error"]
            .as_str()
            .or_else(|| entry["detail"].as_str())
            .map_or_else(String::new, |text| display::one_line(text, CELL_CHARS_MAX));
        let detail =
            if entry["dead"] == Value::Bool(true) { format!("{detail} (dead)") } else { detail };
        table.push(vec![
            entry["at"].as_u64().map_or_else(|| "-".to_string(), display::time),
            entry["event"].as_str().unwrap_or("?").to_string(),
            entry["attempt"].as_u64().map_or_else(String::new, |attempt| attempt.to_string()),
            detail,
        ]);
    }
    table
}

/// Flags and arguments of `outboxd retry`.
#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The message id (a dead or retrying message).
    pub id: String,
    /// Start its attempts again at 0, so it gets all of its deliveries back.
    #[arg(long)]
    pub reset_attempts: bool,
}

/// Runs `outboxd retry`.
pub fn retry(args: &RetryArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/messages/{}/retry", http::segment(&args.id, "message id")?);
    let query =
        if args.reset_attempts { vec![("reset_attempts", "true".to_string())] } else { Vec::new() };
    let reply = client.post(&path, &query, None, &[], Duration::ZERO)?;
    let summary: Summary = reply.parse("the retry")?;
    if args.global.json {
        return print_line(&reply.text);
    }
    print_line(&format!(
        "{} is {} (attempts {} of {})",
        summary.id, summary.state, summary.attempts, summary.max_attempts
    ))
}

/// Flags and arguments of `outboxd delete`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The message id (any message that is not leased).
    pub id: String,
}

/// `DELETE /v1/messages/{id}`'s reply: the id of the message removed.
#[derive(Deserialize)]
struct DeleteReply {
    deleted: String,
}

/// Runs `outboxd delete`.
pub fn delete(args: &DeleteArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let reply =
        client.delete(&format!("/v1/messages/{}", http::segment(&args.id, "message id")?))?;
    let deleted: DeleteReply = reply.parse("the delete")?;
    if args.global.json {
        return print_line(&reply.text);
    }
    print_line(&format!("deleted {}", deleted.deleted))
}
