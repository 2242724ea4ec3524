//! `outboxd tail`: follow the event stream (`GET /v1/events`, Server-Sent Events).
//!
//! Prints one line per event: a human line, or with `--json` the event's JSON exactly as the
//! server sent it. When the connection drops (the server restarts, a proxy times out), the client
//! reconnects after a short backoff with `Last-Event-ID` set to the last event it printed, so
//! nothing the server still holds is missed or printed twice. If the server no longer holds the
//! events after that id, it says so with a `missed` block, which is reported (on stderr, or as a
//! `{"kind":"missed",…}` line with `--json`). The first connection must succeed: a server that is
//! not there at all is an error, not something to wait for.

use super::display;
use super::http::{self, Client};
use super::{note, CliError, GlobalArgs};
use serde::Deserialize;
use std::io::{BufRead, Read, Write};
use std::time::Duration;

/// First wait before reconnecting; it doubles per failed attempt up to the maximum.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(250);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Longest line of the stream, in bytes (an event's data is well under 16 KiB).
const LINE_BYTES_MAX: usize = 1024 * 1024;

/// The event kinds `--kind` takes: the server's own names, so the two cannot drift apart.
fn event_kinds() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::queue::ALL_NOTICE_KINDS.map(|kind| kind.name()))
}

/// Flags and arguments of `outboxd tail`.
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Only events of this queue (repeat for more).
    #[arg(long)]
    pub queue: Vec<String>,
    /// Only events of this kind (repeat for more).
    #[arg(long, value_parser = event_kinds())]
    pub kind: Vec<String>,
    /// Start after this event id (an `id` printed earlier) instead of at the next event.
    #[arg(long, value_name = "EVENT_ID")]
    pub since: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// How far the reader got, across reconnections.
struct Follow {
    /// The id of the last event printed (or `--since`): where a reconnection resumes.
    last_id: Option<u64>,
    /// Events printed so far.
    printed_count: u64,
}

/// Why one connection's stream ended.
enum StreamEnd {
    /// `--count` events were printed.
    CountReached,
    /// The connection ended or broke; the text says how.
    Dropped(String),
}

/// One event's data, for the human line.
#[derive(Deserialize)]
struct EventData {
    kind: String,
    queue: String,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    attempt: u64,
    at: u64,
    #[serde(default)]
    error: Option<String>,
}

/// Runs `outboxd tail`.
pub fn run(args: &TailArgs) -> Result<(), CliError> {
    if args.count == Some(0) {
        return Ok(());
    }
    let client = Client::new(&args.global)?;
    let path = events_path(args);
    let mut follow = Follow { last_id: args.since, printed_count: 0 };
    let mut backoff = RECONNECT_BACKOFF_MIN;
    // Set while reconnecting after a drop: connection failures are then waited out, not fatal.
    let mut reconnecting = false;
    let mut stdout = std::io::stdout().lock();
    loop {
        match client.open_stream(&path, follow.last_id) {
            Ok(reader) => {
                if reconnecting {
                    note("reconnected to the event stream");
                }
                let printed_before = follow.printed_count;
                match read_stream(reader, &mut stdout, &mut follow, args)? {
                    StreamEnd::CountReached => return Ok(()),
                    StreamEnd::Dropped(reason) => {
                        if follow.printed_count > printed_before {
                            backoff = RECONNECT_BACKOFF_MIN;
                        }
                        let resume = follow
                            .last_id
                            .map_or_else(String::new, |id| format!(" after event {id}"));
                        note(&format!(
                            "the event stream from {} broke ({reason}); reconnecting{resume}",
                            client.display_url()
                        ));
                        reconnecting = true;
                    }
                }
            }
            Err(CliError::Connection { .. } | CliError::Timeout { .. }) if reconnecting => {}
            // A proxy in front of a restarting server answers these until it is back.
            Err(CliError::Api(failure)) if reconnecting && matches!(failure.status, 502..=504) => {
                note(&format!(
                    "the event stream answered {}; retrying in {} ms",
                    failure.status,
                    backoff.as_millis()
                ));
            }
            Err(error) => return Err(error),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
    }
}

/// `/v1/events` with the filters. Lists are joined with raw commas, which the stream splits on;
/// each name is percent-encoded so that it cannot add a parameter of its own.
fn events_path(args: &TailArgs) -> String {
    let mut parameters = Vec::new();
    if !args.queue.is_empty() {
        let queues: Vec<String> =
            args.queue.iter().map(|queue| http::percent_encode(queue)).collect();
        parameters.push(format!("queue={}", queues.join(",")));
    }
    if !args.kind.is_empty() {
        parameters.push(format!("kind={}", args.kind.join(",")));
    }
    if parameters.is_empty() {
        "/v1/events".to_string()
    } else {
        format!("/v1/events?{}", parameters.join("&"))
    }
}

/// An SSE block being read: its fields until the blank line that ends it.
#[derive(Default)]
struct Block {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// Reads one connection's stream, printing every event, until it ends or `--count` is reached.
fn read_stream(
    mut reader: impl BufRead,
    out: &mut dyn Write,
    follow: &mut Follow,
    args: &TailArgs,
) -> Result<StreamEnd, CliError> {
    let mut block = Block::default();
    loop {
        let mut line = Vec::new();
        match reader.by_ref().take(LINE_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) => return Ok(StreamEnd::Dropped("the server closed it".into())),
            Ok(_) => {}
            Err(error) if is_timeout(&error) => {
                let seconds = http::STREAM_IDLE_TIMEOUT.as_secs();
                return Ok(StreamEnd::Dropped(format!("nothing arrived for {seconds} s")));
            }
            Err(error) => return Ok(StreamEnd::Dropped(error.to_string())),
        }
        if line.last() != Some(&b'\n') {
            if line.len() > LINE_BYTES_MAX {
                return Err(CliError::Protocol(format!(
                    "the event stream sent a line longer than {LINE_BYTES_MAX} bytes"
                )));
            }
            return Ok(StreamEnd::Dropped("the server closed it mid-line".into()));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            let done = std::mem::take(&mut block);
            if dispatch(done, out, follow, args)?
                && args.count.is_some_and(|count| follow.printed_count >= count)
            {
                return Ok(StreamEnd::CountReached);
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "id" => block.id = value.trim().parse().ok(),
            "event" => block.event = Some(value.to_string()),
            "data" => {
                if !block.data.is_empty() {
                    block.data.push('\n');
                }
                block.data.push_str(value);
            }
            _ => {}
        }
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

/// Prints one finished block; returns whether it was an event (counted toward `--count`).
fn dispatch(
    block: Block,
    out: &mut dyn Write,
    follow: &mut Follow,
    args: &TailArgs,
) -> Result<bool, CliError> {
    if block.event.as_deref() == Some("missed") {
        report_missed(&block.data, out, args.global.json)?;
        return Ok(false);
    }
    if block.data.is_empty() {
        return Ok(false);
    }
    if args.global.json {
        emit(out, &block.data)?;
    } else {
        emit(out, &human_line(&block.data))?;
    }
    if let Some(id) = block.id {
        follow.last_id = Some(id);
    }
    follow.printed_count += 1;
    Ok(true)
}

/// The server dropped events this reader had not seen yet.
fn report_missed(data: &str, out: &mut dyn Write, json: bool) -> Result<(), CliError> {
    let resumes_at = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|value| value["resumes_at"].as_u64());
    if json {
        let line = serde_json::json!({ "kind": "missed", "resumes_at": resumes_at });
        return emit(out, &line.to_string());
    }
    let at =
        resumes_at.map_or_else(String::new, |id| format!(" (the stream resumes at event {id})"));
    note(&format!(
        "some events were missed: the server no longer holds them{at}; read the queues and \
         messages (outboxd queues, outboxd messages) to catch up"
    ));
    Ok(())
}

/// Writes one line and flushes it, so that a pipe sees each event as it happens.
fn emit(out: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(CliError::Output)
}

/// `2030-01-31T09:00:00.123Z  dead         emails  0000000000000004  attempt 1: 550 …`
fn human_line(data: &str) -> String {
    let Ok(event) = serde_json::from_str::<EventData>(data) else {
        // Not the documented shape (a newer server): show it rather than drop it.
        return display::one_line(data, usize::MAX);
    };
    let message_id = event.message_id.as_deref().unwrap_or("-");
    let mut line = format!(
        "{}  {:<11}  {}  {message_id}  attempt {}",
        display::time_ms(event.at),
        event.kind,
        event.queue,
        event.attempt
    );
    if let Some(error) = event.error {
        line.push_str(": ");
        line.push_str(&display::one_line(&error, display::CELL_CHARS_MAX * 2));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        tail: TailArgs,
    }

    fn args(flags: &[&str]) -> TailArgs {
        let mut argv = vec!["tail"];
        argv.extend_from_slice(flags);
        Wrapper::try_parse_from(argv).expect("test flags parse").tail
    }

    #[test]
    fn filters_are_comma_lists_with_encoded_names() {
        let tail = args(&["--queue", "a", "--queue", "b&c", "--kind", "dead", "--kind", "acked"]);
        assert_eq!(events_path(&tail), "/v1/events?queue=a,b%26c&kind=dead,acked");
        assert_eq!(events_path(&args(&[])), "/v1/events");
    }

    #[test]
    fn blocks_are_parsed_across_comments_and_the_count_stops_the_stream() {
        let stream = ": outboxd event stream\n\nid: 7\nevent: acked\ndata: {\"id\":7}\n\n\
                      : keep-alive\n\nevent: missed\ndata: {\"resumes_at\": 9}\n\n\
                      id: 9\r\nevent: dead\r\ndata: {\"id\":9}\r\n\r\nid: 10\n";
        let mut follow = Follow { last_id: None, printed_count: 0 };
        let mut out = Vec::new();
        let tail = args(&["--json", "--count", "2"]);
        let end = read_stream(stream.as_bytes(), &mut out, &mut follow, &tail).expect("reads");
        assert!(matches!(end, StreamEnd::CountReached));
        assert_eq!((follow.last_id, follow.printed_count), (Some(9), 2));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "{\"id\":7}\n{\"kind\":\"missed\",\"resumes_at\":9}\n{\"id\":9}\n"
        );

        let mut follow = Follow { last_id: None, printed_count: 0 };
        let end = read_stream(stream.as_bytes(), &mut Vec::new(), &mut follow, &args(&["--json"]))
            .expect("reads");
        assert!(matches!(end, StreamEnd::Dropped(_)), "a stream that ends is a drop");
        assert_eq!(follow.last_id, Some(9), "an unfinished block is not an event");
    }

    #[test]
    fn human_lines_show_time_kind_queue_message_and_error() {
        let data = r#"{"at":1896080400123,"attempt":1,"error":"550 gone","id":5,"kind":"dead","message_id":"0000000000000004","queue":"emails"}"#;
        assert_eq!(
            human_line(data),
            "2030-01-31T09:00:00.123Z  dead         emails  0000000000000004  attempt 1: 550 gone"
        );
        let data = r#"{"at":1896080400123,"attempt":0,"id":6,"kind":"paused","message_id":null,"queue":"emails"}"#;
        assert!(human_line(data).contains("paused       emails  -  attempt 0"));
    }
}
