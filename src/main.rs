//! The `outboxd` command line: parse flags, validate them, and run the chosen command.

use clap::{Parser, Subcommand};
use outboxd::config::{Config, ServeArgs};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "outboxd", version, about = "A durable outbox/queue server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => Config::from_args(&args)
            .map_err(outboxd::Error::from)
            .and_then(|config| {
                outboxd::telemetry::init(config.log_format, &config.log_filter);
                outboxd::server::run(config)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outboxd: {error}");
            ExitCode::FAILURE
        }
    }
}
