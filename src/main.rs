//! The `outboxd` command line: parse flags, validate them, and run the chosen command.

use clap::{Parser, Subcommand};
use outboxd::bench::BenchArgs;
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
    #[command(flatten)]
    Admin(outboxd::admin::AdminCommand),
    /// Load a running (or spawned) server and report throughput, latency and lost messages.
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => serve(&args).map_err(Into::into),
        Command::Admin(command) => outboxd::admin::run(command),
        Command::Bench(args) => outboxd::bench::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outboxd: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), outboxd::Error> {
    let config = Config::from_args(args)?;
    outboxd::telemetry::init(config.log_format, &config.log_filter);
    outboxd::server::run(config)
}
