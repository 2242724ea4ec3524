//! The command-line client: subcommands that talk HTTP to a running server.
//!
//! `outboxd send`, `lease`, `ack`, `nack`, `queues`, `messages`, `message`, `retry`, `delete` and
//! `tail` each make a few requests against `--url` and print a table for people or, with `--json`,
//! JSON for scripts (one document, or one line per event for `tail`). Every failure becomes a
//! [`CliError`] whose text says what went wrong and what to do; `main` prints it after `outboxd: `
//! and exits with status 1. Flags that do not parse are clap's usage errors (status 2).
//!
//! Layout: `http` (requests, error mapping), `send` (batched enqueue from arguments or stdin),
//! `commands` (lease, ack, nack, queues, messages, message, retry, delete), `tail` (the event
//! stream), `table` and `display` (how output looks).

mod commands;
mod display;
mod http;
mod send;
mod table;
mod tail;

use std::fmt;
use std::io::Write;

/// Options every client subcommand takes.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Base URL of the server.
    #[arg(long, env = "OUTBOXD_URL", default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// API token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "OUTBOXD_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub token: Option<Token>,
    /// Print JSON for scripts: one document (one line per event for `tail`).
    #[arg(long)]
    pub json: bool,
    /// How long one request may take, in milliseconds (a lease's --wait-ms is added to it).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
}

/// An API token. Its `Debug` form hides it, and no error message quotes it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

impl Token {
    /// The token, if it can be sent in a header (visible ASCII, not empty).
    fn check(&self) -> Result<&str, CliError> {
        if self.0.is_empty() || !self.0.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(CliError::Usage(
                "--token (or OUTBOXD_TOKEN) is empty or has characters other than visible \
                 ASCII; copy the token again without spaces or line breaks"
                    .into(),
            ));
        }
        Ok(&self.0)
    }
}

/// Takes any text: a parse error would make clap quote the token in its message.
fn parse_token(text: &str) -> Result<Token, std::convert::Infallible> {
    Ok(Token(text.to_string()))
}

/// `outboxd send`, `lease`, `ack`, `nack`, `queues`, `messages`, `message`, `retry`, `delete` and
/// `tail`.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Enqueue messages: each BODY, or each line of stdin, is one message; prints their ids.
    Send(send::SendArgs),
    /// Lease messages from a queue and print them with their lease tokens.
    Lease(commands::LeaseArgs),
    /// Acknowledge leased messages (they are delivered).
    Ack(commands::AckArgs),
    /// Report leased messages as failed (they are retried later, or go dead).
    Nack(commands::NackArgs),
    /// List every queue with its message counts per state.
    Queues(commands::QueuesArgs),
    /// List a queue's messages, a page at a time.
    Messages(commands::MessagesArgs),
    /// Show one message with its history.
    Message(commands::MessageArgs),
    /// Send a dead or retrying message back to ready.
    Retry(commands::RetryArgs),
    /// Delete a message that is not leased.
    Delete(commands::DeleteArgs),
    /// Follow the event stream, one line per event, until interrupted or --count events.
    Tail(tail::TailArgs),
}

/// Runs one client command.
pub fn run(command: ClientCommand) -> Result<(), Box<dyn std::error::Error>> {
    // Only commands that change nothing may lose their output silently: a lost lease token, ack
    // result or message id is lost work. `send` handles a closed stdout itself.
    let read_only = matches!(
        command,
        ClientCommand::Queues(_)
            | ClientCommand::Messages(_)
            | ClientCommand::Message(_)
            | ClientCommand::Tail(_)
    );
    let result = match command {
        ClientCommand::Send(args) => send::run(&args),
        ClientCommand::Lease(args) => commands::lease(&args),
        ClientCommand::Ack(args) => commands::ack(&args),
        ClientCommand::Nack(args) => commands::nack(&args),
        ClientCommand::Queues(args) => commands::queues(&args),
        ClientCommand::Messages(args) => commands::messages(&args),
        ClientCommand::Message(args) => commands::message(&args),
        ClientCommand::Retry(args) => commands::retry(&args),
        ClientCommand::Delete(args) => commands::delete(&args),
        ClientCommand::Tail(args) => tail::run(&args),
    };
    match result {
        // A reader that went away (`outboxd tail | head -3`) is not a failure of a command that
        // only reads.
        Err(CliError::Output(error))
            if read_only && error.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        other => other.map_err(Into::into),
    }
}

/// Why a client command failed.
#[derive(Debug)]
pub enum CliError {
    /// A flag or an input the user gave cannot be used; the text says which and how to fix it.
    Usage(String),
    /// The server could not be reached, or the connection broke.
    Connection { url: String, detail: String },
    /// The connection broke while the request body was still being written: the server most
    /// likely refused the request from its head (413, larger than its `--request-bytes-max`).
    BodyRefused { url: String, body_bytes: u64, detail: String },
    /// The server did not answer within `--timeout-ms`.
    Timeout { url: String, timeout_ms: u64 },
    /// The server refused the request with an API error.
    Api(http::ApiFailure),
    /// The server's reply is not what the API documents.
    Protocol(String),
    /// Reading the input failed.
    Input { what: String, source: std::io::Error },
    /// Writing to stdout failed.
    Output(std::io::Error),
    /// The request went through but some of its items were not done (ack, nack); the results
    /// were printed, and the text names the failed items.
    Incomplete(String),
    /// `send` stopped at a batch after storing earlier ones; says how to resume.
    SendStopped(send::SendStopped),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(text) | CliError::Incomplete(text) => f.write_str(text),
            CliError::Connection { url, detail } => write!(
                f,
                "cannot reach the server at {url}: {detail}\nhint: check that `outboxd serve` \
                 is running and listening there, or point the client at it with --url (or \
                 OUTBOXD_URL)"
            ),
            CliError::BodyRefused { url, body_bytes, detail } => write!(
                f,
                "the server at {url} closed the connection while the client was still sending \
                 the request ({body_bytes} bytes): {detail}\nhint: the server probably refused \
                 the request, most likely with 413 because it is larger than the server's \
                 --request-bytes-max; send smaller requests (for `outboxd send`, a smaller \
                 --batch, or --batch-bytes no larger than the server's --request-bytes-max)"
            ),
            CliError::Timeout { url, timeout_ms } => write!(
                f,
                "the server at {url} did not answer within {timeout_ms} ms\nhint: the server may \
                 be overloaded or stuck; raise --timeout-ms, or check the server's log"
            ),
            CliError::Api(failure) => {
                match &failure.code {
                    Some(code) => write!(f, "{} {code}: {}", failure.status, failure.message)?,
                    None => write!(f, "{}: {}", failure.status, failure.message)?,
                }
                if let Some(hint) = &failure.hint {
                    write!(f, "\nhint: {hint}")?;
                }
                for detail in &failure.details {
                    let at = match (&detail.position, detail.index) {
                        (Some(position), _) => format!("{position}: "),
                        (None, Some(index)) => format!("message {index} of the batch: "),
                        (None, None) => String::new(),
                    };
                    write!(f, "\n  {at}field {}: {}", detail.field, detail.message)?;
                }
                Ok(())
            }
            CliError::Protocol(text) => write!(
                f,
                "{text}\nhint: check that --url points at an outboxd server of a matching version"
            ),
            CliError::Input { what, source } => write!(f, "reading {what}: {source}"),
            CliError::Output(source) => write!(f, "writing the output: {source}"),
            CliError::SendStopped(stopped) => stopped.fmt(f),
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Input { source, .. } | CliError::Output(source) => Some(source),
            _ => None,
        }
    }
}

/// Writes text to stdout as is (the caller ends its lines).
fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).map_err(CliError::Output)
}

/// Writes one line to stdout.
fn print_line(text: &str) -> Result<(), CliError> {
    print(&format!("{text}\n"))
}

/// Writes a note for people to stderr (never to stdout, which scripts read).
fn note(text: &str) {
    eprintln!("outboxd: {text}");
}
