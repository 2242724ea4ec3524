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
    /// Validate the configuration (config file, variables, flags) and optionally print it.
    Config(ConfigArgs),
    #[command(flatten)]
    Admin(outboxd::admin::AdminCommand),
    #[command(flatten)]
    Client(outboxd::cli::ClientCommand),
    /// Load a running (or spawned) server and report throughput, latency and lost messages.
    Bench(BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => serve(&args).map_err(Into::into),
        Command::Config(args) => config(&args).map_err(Into::into),
        Command::Admin(command) => outboxd::admin::run(command),
        Command::Client(command) => outboxd::cli::run(command),
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

/// `outboxd config`: the flags of `serve`, plus what to show.
#[derive(clap::Args)]
struct ConfigArgs {
    /// Print the effective configuration as a config file, each setting's source in a comment
    /// (token secrets are hidden).
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve(args: &ServeArgs) -> Result<(), outboxd::Error> {
    let config = Config::load(args)?;
    let _log_guard = outboxd::telemetry::init(config.log_format, &config.log_filter);
    warn_if_open(&config);
    outboxd::server::run(config)
}

fn config(args: &ConfigArgs) -> Result<(), outboxd::Error> {
    let config = Config::load(&args.serve)?;
    if args.print {
        print!("{}", config.to_toml());
    } else {
        let tokens = config.tokens.len();
        println!("configuration is valid (listen {}, {tokens} API tokens)", config.listen);
    }
    Ok(())
}

/// Anyone who can reach a non-loopback address without tokens can read, change and delete every
/// message: say so where it cannot be missed.
fn warn_if_open(config: &Config) {
    if config.listen.ip().is_loopback() || config.tokens.enabled() {
        return;
    }
    let address = config.listen;
    eprintln!(
        "\n\
         ************************************************************************\n\
         WARNING: outboxd listens on {address}, which is not a loopback address,\n\
         and no API tokens are configured: anyone who can reach this address can\n\
         read, change and delete every message. Add [[tokens]] to the config file\n\
         (see docs/operations.md, \"Access control\") or listen on 127.0.0.1.\n\
         ************************************************************************\n"
    );
    tracing::warn!(%address, "listening on a non-loopback address without API tokens");
}
