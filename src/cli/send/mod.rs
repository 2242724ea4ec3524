//! `outboxd send QUEUE [BODY...]`: enqueue messages in batches, from arguments or stdin lines.
//!
//! A batch is built (up to `--batch` messages and `--batch-bytes` bytes of request), sent, and
//! its ids printed before the next one is read from the input, so
//! an endless `producer | outboxd send q` works in bounded memory and every id printed is stored.
//! When stdout closes (`outboxd send q | head -1`), the rest of the input is still sent, without
//! ids: stopping there would leave the input half stored with no word of it.
//! When a batch fails, the ids of the earlier ones are already out and the error says from which
//! input position to resume; with `--idempotency-key` each batch has its own key (`KEY-<n>`), and
//! `--first-batch n` lets a resumed send reuse the failed batch's key so it is stored exactly once.

use super::http::{self, Client};
use super::{note, print, print_line, CliError, GlobalArgs};
use crate::limits::{
    ATTEMPT_COUNT_MAX, BATCH_COUNT_MAX, DELAY_MS_MAX, IDEMPOTENCY_KEY_BYTES_MAX, MESSAGE_BYTES_MAX,
    REQUEST_BYTES_DEFAULT, REQUEST_BYTES_MAX,
};
use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;
use std::io::{BufRead, IsTerminal, Read};
use std::time::Duration;

/// Default of `--batch-bytes`: the server's default request limit. A message larger than the
/// budget goes alone, and the server decides.
const BATCH_BYTES_DEFAULT: u64 = REQUEST_BYTES_DEFAULT;

/// Smallest `--batch-bytes`: room for a batch's framing and a message of a few hundred bytes.
const BATCH_BYTES_MIN: u64 = 1024;

/// Longest stdin line, in bytes: twice the largest message any server takes (room for base64).
const LINE_BYTES_MAX: usize = 2 * MESSAGE_BYTES_MAX as usize;

/// How a BODY argument or stdin line becomes a message body.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// The text, sent as a JSON string.
    Text,
    /// A JSON value, sent as is (an invalid one stops the send before its batch).
    Json,
    /// Standard base64 of arbitrary bytes, sent as `body_base64`.
    Base64,
}

/// Flags and arguments of `outboxd send`.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The queue (created by its first message).
    pub queue: String,
    /// Message bodies; without any, each non-empty line of stdin is one message.
    #[arg(value_name = "BODY")]
    pub bodies: Vec<String>,
    /// How each body is read.
    #[arg(long, value_enum, default_value_t = BodyFormat::Text)]
    pub body_format: BodyFormat,
    /// Most messages per request (the server takes up to its --batch-count-max, 1000 by default).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(BATCH_COUNT_MAX)))]
    pub batch: u32,
    /// Most bytes per request; lower it to the server's --request-bytes-max when that is smaller.
    #[arg(long, default_value_t = BATCH_BYTES_DEFAULT, value_parser = clap::value_parser!(u64).range(BATCH_BYTES_MIN..=REQUEST_BYTES_MAX))]
    pub batch_bytes: u64,
    /// Deliver each message this many milliseconds from now (it starts scheduled).
    #[arg(long, conflicts_with = "deliver_at", value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub delay_ms: Option<u64>,
    /// Deliver at this time: epoch milliseconds or RFC 3339 (`2030-01-31T09:00:00Z`).
    #[arg(long)]
    pub deliver_at: Option<String>,
    /// A header for every message, as NAME=VALUE (repeat for more).
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Idempotency key; with several batches, batch n is sent with KEY-n.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Number of the first batch, for the derived keys KEY-n (to resume a failed send).
    #[arg(long, requires = "idempotency_key", value_parser = clap::value_parser!(u64).range(1..))]
    pub first_batch: Option<u64>,
    /// Deliveries allowed per message before it goes dead.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATTEMPT_COUNT_MAX)))]
    pub max_attempts: Option<u32>,
    /// Priority of every message (higher is leased first).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
}

/// Parses `--header NAME=VALUE`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        Some(_) => Err("the header name before `=` is empty; write it as NAME=VALUE".into()),
        None => Err("expected NAME=VALUE, such as --header tenant=acme".into()),
    }
}

/// Where bodies come from, and how far the reading got.
struct Input {
    source: Source,
    /// Position of the last item read: argument or line number, from 1.
    position: u64,
    /// An item read ahead by [`Input::has_more`].
    peeked: Option<Item>,
}

enum Source {
    Arguments(std::vec::IntoIter<String>),
    /// Stdin (any reader in tests), one body per line.
    Lines(Box<dyn BufRead>),
}

/// One body as given, with its position in the input.
struct Item {
    position: u64,
    bytes: Vec<u8>,
}

impl Input {
    /// "argument" or "line": what a position counts.
    fn unit(&self) -> &'static str {
        match self.source {
            Source::Arguments(_) => "argument",
            Source::Lines(_) => "line",
        }
    }

    fn next(&mut self) -> Result<Option<Item>, CliError> {
        if let Some(item) = self.peeked.take() {
            return Ok(Some(item));
        }
        match &mut self.source {
            Source::Arguments(arguments) => Ok(arguments.next().map(|argument| {
                self.position += 1;
                Item { position: self.position, bytes: argument.into_bytes() }
            })),
            Source::Lines(stdin) => loop {
                let mut line = Vec::new();
                let read = stdin
                    .by_ref()
                    .take(LINE_BYTES_MAX as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .map_err(|source| CliError::Input { what: "stdin".into(), source })?;
                if read == 0 {
                    return Ok(None);
                }
                self.position += 1;
                if line.last() == Some(&b'\n') {
                    line.pop();
                } else if line.len() > LINE_BYTES_MAX {
                    return Err(CliError::Usage(format!(
                        "line {} of stdin is longer than {LINE_BYTES_MAX} bytes, more than any \
                         server takes as one message; split it or shorten it",
                        self.position
                    )));
                }
                // Also at the very end of the input, where a last line has no `\n`.
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.is_empty() {
                    return Ok(Some(Item { position: self.position, bytes: line }));
                }
            },
        }
    }

    fn has_more(&mut self) -> Result<bool, CliError> {
        if self.peeked.is_none() {
            self.peeked = self.next()?;
        }
        Ok(self.peeked.is_some())
    }
}

/// One message as JSON text, with the input position it came from.
struct Encoded {
    position: u64,
    text: String,
}

/// A batch ready to send.
#[derive(Default)]
struct Batch {
    /// Input positions, one per message, in order.
    positions: Vec<u64>,
    /// The request body being built: `{"messages":[` and the messages so far, comma-separated.
    body: String,
}

/// Builds batches from the input.
struct Batcher {
    input: Input,
    /// A message that did not fit the previous batch's byte budget.
    carry: Option<Encoded>,
    format: BodyFormat,
    /// The fields every message shares, as `,"name":value…` (empty when none).
    shared_fields: String,
    batch_count_max: usize,
    /// Most bytes of one request body (`--batch-bytes`).
    batch_bytes_max: usize,
}

impl Batcher {
    fn next_batch(&mut self) -> Result<Option<Batch>, CliError> {
        let mut batch = Batch { positions: Vec::new(), body: String::from("{\"messages\":[") };
        while batch.positions.len() < self.batch_count_max {
            let encoded = match self.carry.take() {
                Some(encoded) => encoded,
                None => match self.input.next()? {
                    Some(item) => self.encode(item)?,
                    None => break,
                },
            };
            // The body would grow by a `,`, the message, and the closing `]}`.
            if !batch.positions.is_empty()
                && batch.body.len() + 1 + encoded.text.len() + 2 > self.batch_bytes_max
            {
                self.carry = Some(encoded);
                break;
            }
            if !batch.positions.is_empty() {
                batch.body.push(',');
            }
            batch.body.push_str(&encoded.text);
            batch.positions.push(encoded.position);
        }
        batch.body.push_str("]}");
        Ok((!batch.positions.is_empty()).then_some(batch))
    }

    fn has_more(&mut self) -> Result<bool, CliError> {
        Ok(self.carry.is_some() || self.input.has_more()?)
    }

    /// One message's JSON: its body in the chosen format plus the shared fields.
    fn encode(&self, item: Item) -> Result<Encoded, CliError> {
        let unit = self.input.unit();
        let position = item.position;
        let text = String::from_utf8(item.bytes).map_err(|_| {
            CliError::Usage(format!(
                "{unit} {position} is not UTF-8 text; send binary bodies base64-encoded with \
                 --body-format base64"
            ))
        })?;
        let (field, value) = match self.format {
            BodyFormat::Text => ("body", json_string(&text)),
            BodyFormat::Json => {
                let raw: &RawValue = serde_json::from_str(&text).map_err(|error| {
                    CliError::Usage(format!(
                        "{unit} {position} is not one JSON value ({error}); fix it, or send the \
                         text as a string with --body-format text"
                    ))
                })?;
                ("body", raw.get().trim().to_string())
            }
            BodyFormat::Base64 => {
                let trimmed = text.trim();
                base64::engine::general_purpose::STANDARD.decode(trimmed).map_err(|error| {
                    CliError::Usage(format!(
                        "{unit} {position} is not standard base64 ({error}); fix it, or send it \
                         as text with --body-format text"
                    ))
                })?;
                ("body_base64", json_string(trimmed))
            }
        };
        Ok(Encoded { position, text: format!("{{\"{field}\":{value}{}}}", self.shared_fields) })
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The fields every message of this send carries, as `,"name":value…`.
fn shared_fields(args: &SendArgs) -> String {
    let mut fields = serde_json::Map::new();
    if !args.headers.is_empty() {
        let headers: serde_json::Map<String, serde_json::Value> = args
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_str().into()))
            .collect();
        fields.insert("headers".into(), headers.into());
    }
    if let Some(delay_ms) = args.delay_ms {
        fields.insert("delay_ms".into(), delay_ms.into());
    }
    if let Some(deliver_at) = &args.deliver_at {
        // Epoch milliseconds go as a number; anything else is an RFC 3339 text the server checks.
        let value = match deliver_at.parse::<u64>() {
            Ok(epoch_ms) => epoch_ms.into(),
            Err(_) => deliver_at.as_str().into(),
        };
        fields.insert("deliver_at".into(), value);
    }
    if let Some(max_attempts) = args.max_attempts {
        fields.insert("max_attempts".into(), max_attempts.into());
    }
    if let Some(priority) = args.priority {
        fields.insert("priority".into(), priority.into());
    }
    let object = serde_json::Value::Object(fields).to_string();
    let inner = &object[1..object.len() - 1];
    if inner.is_empty() {
        String::new()
    } else {
        format!(",{inner}")
    }
}

#[derive(Deserialize)]
struct EnqueueReply {
    ids: Vec<String>,
    #[serde(default)]
    duplicate: bool,
}

/// Progress of a send, for the resume advice when it stops.
struct Progress {
    /// Ids stored so far, in input order.
    ids: Vec<String>,
    /// Batches stored so far.
    batch_count: u64,
    /// Input position of the last stored message (0 before the first).
    last_position: u64,
    /// Set when stdout closed: the rest is sent without printing ids.
    stdout_closed: bool,
}

/// Runs `outboxd send`.
pub fn run(args: &SendArgs) -> Result<(), CliError> {
    let client = Client::new(&args.global)?;
    let path = format!("/v1/queues/{}/messages", http::segment(&args.queue, "queue name")?);
    let source = if args.bodies.is_empty() {
        Source::Lines(Box::new(std::io::stdin().lock()))
    } else {
        Source::Arguments(args.bodies.clone().into_iter())
    };
    let total_count = (!args.bodies.is_empty()).then_some(args.bodies.len() as u64);
    let mut batcher = Batcher {
        input: Input { source, position: 0, peeked: None },
        carry: None,
        format: args.body_format,
        shared_fields: shared_fields(args),
        batch_count_max: args.batch as usize,
        batch_bytes_max: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
    };
    let mut progress =
        Progress { ids: Vec::new(), batch_count: 0, last_position: 0, stdout_closed: false };
    let result = send_all(args, &client, &path, &mut batcher, &mut progress, total_count);
    // Scripts get the stored ids even when a later batch failed.
    if args.global.json && (result.is_ok() || !progress.ids.is_empty()) {
        let printed = print_line(&serde_json::Value::from(progress.ids.clone()).to_string());
        match printed {
            Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                progress.stdout_closed = true;
                if result.is_ok() {
                    note(&format!(
                        "stdout closed; all {} message(s) were stored, but their ids were not \
                         printed",
                        progress.ids.len()
                    ));
                }
            }
            other => other?,
        }
    }
    let unit = batcher.input.unit();
    result.map_err(|error| {
        // Nothing to resume when nothing was stored, or when stdout (the ids) went away.
        if progress.batch_count == 0 || matches!(error, CliError::Output(_)) {
            return error;
        }
        CliError::SendStopped(SendStopped {
            batch_number: first_batch(args) + progress.batch_count,
            stored_count: progress.ids.len() as u64,
            stored_batch_count: progress.batch_count,
            unit,
            resume_position: progress.last_position + 1,
            idempotency_key: args.idempotency_key.clone(),
            ids_printed: !progress.stdout_closed,
            source: Box::new(error),
        })
    })
}

fn first_batch(args: &SendArgs) -> u64 {
    args.first_batch.unwrap_or(1)
}

/// The highest batch number this send can reach: one batch per argument at most; stdin has no
/// known end, so any number.
fn last_batch_number(args: &SendArgs) -> u64 {
    if args.bodies.is_empty() {
        u64::MAX
    } else {
        first_batch(args).saturating_add(args.bodies.len() as u64 - 1)
    }
}

/// Refuses, before anything is sent, an idempotency key that the server would refuse part-way:
/// `KEY` itself, or with derived keys `KEY-n` up to the last batch number that can be reached.
fn check_key_length(key: &str, last_batch_number: Option<u64>) -> Result<(), CliError> {
    let longest = match last_batch_number {
        Some(number) => format!("{key}-{number}"),
        None => key.to_string(),
    };
    if longest.len() <= IDEMPOTENCY_KEY_BYTES_MAX {
        return Ok(());
    }
    let room = match last_batch_number {
        Some(number) => IDEMPOTENCY_KEY_BYTES_MAX.saturating_sub(format!("-{number}").len()),
        None => IDEMPOTENCY_KEY_BYTES_MAX,
    };
    let why = match last_batch_number {
        Some(number) => format!(
            "with several batches each is sent with KEY-n, and KEY-{number} would be longer than \
             {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        ),
        None => format!("it is longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
    };
    Err(CliError::Usage(format!(
        "--idempotency-key is {} bytes: {why}; nothing was sent. Use a key of at most {room} bytes",
        key.len()
    )))
}

/// Sends every batch, printing ids as they are stored (as a table) and recording them.
fn send_all(
    args: &SendArgs,
    client: &Client,
    path: &str,
    batcher: &mut Batcher,
    progress: &mut Progress,
    total_count: Option<u64>,
) -> Result<(), CliError> {
    let Some(mut batch) = batcher.next_batch()? else {
        return Err(CliError::Usage(
            "nothing to send: give bodies as arguments, or lines on stdin".into(),
        ));
    };
    // Keys are derived per batch when there is more than one, or when resuming.
    let derive_keys = batcher.has_more()? || args.first_batch.is_some();
    if let Some(key) = &args.idempotency_key {
        check_key_length(key, derive_keys.then(|| last_batch_number(args)))?;
    }
    let bar = if derive_keys { progress_bar(total_count) } else { ProgressBar::hidden() };
    let mut number = first_batch(args);
    loop {
        let key = args.idempotency_key.as_ref().map(|key| {
            if derive_keys {
                format!("{key}-{number}")
            } else {
                key.clone()
            }
        });
        let reply = send_batch(client, path, &batch, key.as_deref(), batcher.input.unit())?;
        let ids_text = reply.ids.iter().map(|id| format!("{id}\n")).collect::<String>();
        bar.inc(reply.ids.len() as u64);
        progress.ids.extend(reply.ids);
        progress.batch_count += 1;
        progress.last_position = batch.positions.last().copied().unwrap_or(progress.last_position);
        bar.suspend(|| {
            if reply.duplicate {
                let key = key.as_deref().unwrap_or_default();
                note(&format!(
                    "batch {number} was already stored with idempotency key {key}; these are its \
                     original ids"
                ));
            }
            if args.global.json || progress.stdout_closed {
                return Ok(());
            }
            match print(&ids_text) {
                Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    // The reader left (`| head -1`); the input is still to be stored, and the
                    // exit status says whether it all was.
                    progress.stdout_closed = true;
                    note("stdout closed; sending the rest without printing ids");
                    Ok(())
                }
                other => other,
            }
        })?;
        number += 1;
        match batcher.next_batch()? {
            Some(next) => batch = next,
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Sends one batch; the error's per-message details name input positions rather than indexes.
fn send_batch(
    client: &Client,
    path: &str,
    batch: &Batch,
    key: Option<&str>,
    unit: &str,
) -> Result<EnqueueReply, CliError> {
    let headers: Vec<(&str, &str)> = key.map(|key| ("Idempotency-Key", key)).into_iter().collect();
    let reply = client
        .post(path, &[], Some(batch.body.as_bytes()), &headers, Duration::ZERO)
        .map_err(|error| match error {
            CliError::Api(mut failure) => {
                for detail in &mut failure.details {
                    if let Some(position) =
                        detail.index.and_then(|index| batch.positions.get(index))
                    {
                        detail.position = Some(format!("{unit} {position}"));
                    }
                }
                CliError::Api(failure)
            }
            other => other,
        })?;
    let parsed: EnqueueReply = reply.parse("the enqueue")?;
    if parsed.ids.len() != batch.positions.len() {
        return Err(CliError::Protocol(format!(
            "the enqueue of {} messages answered {} ids",
            batch.positions.len(),
            parsed.ids.len()
        )));
    }
    Ok(parsed)
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (pipes and logs stay clean).
fn progress_bar(total_count: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total_count {
        Some(total) => {
            (ProgressBar::new(total), "[{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})")
        }
        None => {
            (ProgressBar::new_spinner(), "[{elapsed_precise}] {spinner} {pos} sent ({per_sec})")
        }
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// A send that stopped at a batch after earlier batches were stored.
#[derive(Debug)]
pub struct SendStopped {
    /// The batch that failed (counted from `--first-batch`).
    batch_number: u64,
    stored_count: u64,
    stored_batch_count: u64,
    /// What input positions count: "argument" or "line".
    unit: &'static str,
    /// The position of the first message not stored.
    resume_position: u64,
    idempotency_key: Option<String>,
    /// Whether the stored batches' ids were printed (false once stdout closed).
    ids_printed: bool,
    source: Box<CliError>,
}

impl fmt::Display for SendStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SendStopped { batch_number, stored_count, stored_batch_count, unit, .. } = self;
        writeln!(f, "batch {batch_number} was not stored: {}", self.source)?;
        let printed = if self.ids_printed {
            "their ids printed"
        } else {
            "their ids printed until stdout closed"
        };
        write!(
            f,
            "{stored_count} message(s) in {stored_batch_count} batch(es) were stored before it and \
             {printed}; resume with the input from {unit} {} on",
            self.resume_position
        )?;
        match &self.idempotency_key {
            Some(key) => {
                write!(f, " and --idempotency-key {key} --first-batch {batch_number}")?;
                if matches!(*self.source, CliError::Connection { .. } | CliError::Timeout { .. }) {
                    write!(f, " (whether batch {batch_number} was stored is unknown; its key makes sure it is stored once)")?;
                }
            }
            None => {
                if matches!(*self.source, CliError::Connection { .. } | CliError::Timeout { .. }) {
                    write!(f, " (whether batch {batch_number} was stored is unknown; give --idempotency-key to make resends safe)")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
