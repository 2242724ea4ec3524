//! Offline and online maintenance of a data directory: backup, restore and check.
//!
//! `outboxd backup` copies a data directory into one backup file: directly when no server uses
//! it, else through the running server's `GET /v1/admin/backup` (its address is in
//! `DATA_DIR/outboxd.addr`, which the server writes at startup, checked against the data directory
//! the server names in its answer). `outboxd restore` turns a backup into a data directory, built
//! in a temporary directory inside the target and moved into place. `outboxd check`
//! verifies a stopped data directory, or a backup, and prints what it found.
//!
//! Layout: `backup` (the backup and restore commands), `check` (the check command and its
//! report). The file format, the snapshot and the checker itself live in `store/`.

mod backup;
mod check;

use crate::store::{self, DirectoryState};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file in a data directory that names the address a running server listens on.
pub const ADDRESS_FILE: &str = "outboxd.addr";

/// `outboxd backup`, `outboxd restore` and `outboxd check`.
#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Write a consistent backup of a data directory, while its server runs or not.
    Backup(BackupArgs),
    /// Create a data directory from a backup.
    Restore(RestoreArgs),
    /// Verify a stopped data directory, or a backup: every record's checksum, the indexes, the
    /// log after the checkpoint and every stored content.
    Check(CheckArgs),
}

/// Flags of `outboxd backup`.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// The data directory to back up. When a server runs on it, the backup is taken through
    /// that server, at the address it wrote into DATA_DIR/outboxd.addr (the server must say it
    /// serves this directory; so it must too with --url).
    #[arg(long, value_name = "DIR", required_unless_present = "url")]
    pub data_dir: Option<PathBuf>,
    /// Take the backup from the server at this base URL (http://host:port) instead.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// API token for the server, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "OUTBOXD_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// The backup file to write (written under a temporary name beside it, then renamed).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Flags of `outboxd restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file, as written by `outboxd backup`.
    #[arg(long, value_name = "FILE")]
    pub backup: PathBuf,
    /// The data directory to fill: absent (it is created), empty, or with --force a data
    /// directory to replace. It may be a mount point.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Replace the data directory in DIR (its catalog, log and outboxd.addr), only once the
    /// restore has succeeded. A directory holding anything else is refused.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `outboxd check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The data directory to check; no server may be running on it.
    #[arg(long, value_name = "DIR", required_unless_present = "backup", conflicts_with = "backup")]
    pub data_dir: Option<PathBuf>,
    /// Check a backup file instead: it is restored into a temporary directory and checked.
    #[arg(long, value_name = "FILE")]
    pub backup: Option<PathBuf>,
    /// Print the summary as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// A secret from the command line or the environment; its `Debug` form hides it.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Takes any text: a parse error would make clap quote the token in its message.
fn parse_secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret(text.to_string()))
}

/// Why a maintenance command failed; the text says what to do.
#[derive(Debug)]
pub struct AdminError(String);

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdminError {}

impl AdminError {
    fn new(text: impl Into<String>) -> AdminError {
        AdminError(text.into())
    }
}

/// Runs one maintenance command.
pub fn run(command: AdminCommand) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        AdminCommand::Backup(args) => backup::backup(&args)?,
        AdminCommand::Restore(args) => backup::restore(&args)?,
        AdminCommand::Check(args) => check::check(&args)?,
    }
    Ok(())
}

/// Whether `data_dir` holds data and whether a process uses it, as an error for the commands
/// that need it to exist.
fn existing_directory_state(data_dir: &Path) -> Result<DirectoryState, AdminError> {
    match store::directory_state(data_dir) {
        Ok(DirectoryState::Missing) if store::is_old_format(data_dir) => {
            Err(AdminError::new(format!(
                "{} holds data of the first storage format (sled/ and wal/): start `outboxd \
                 serve --data-dir {}` once, which converts it, then run this command again",
                data_dir.display(),
                data_dir.display()
            )))
        }
        Ok(DirectoryState::Missing) => Err(AdminError::new(format!(
            "{} is not an outboxd data directory (it has no catalog/db); check the path",
            data_dir.display()
        ))),
        Ok(state) => Ok(state),
        Err(error) => Err(AdminError::new(format!(
            "cannot look at the data directory {}: {error}",
            data_dir.display()
        ))),
    }
}

/// Writes the listen address into `DATA_DIR/outboxd.addr` (under a temporary name, then renamed),
/// so that `outboxd backup --data-dir` finds the running server. A wildcard address is written as
/// loopback, which is where a local command connects.
pub fn write_address_file(data_dir: &Path, address: SocketAddr) -> std::io::Result<()> {
    let mut address = address;
    if address.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        address.set_ip(loopback);
    }
    let path = data_dir.join(ADDRESS_FILE);
    let temp_path = data_dir.join(format!("{ADDRESS_FILE}.tmp"));
    std::fs::write(&temp_path, format!("{address}\n"))?;
    std::fs::rename(&temp_path, &path)
}

/// Removes `DATA_DIR/outboxd.addr` when the server stops (cleanly or after a storage failure).
pub fn remove_address_file(data_dir: &Path) {
    let path = data_dir.join(ADDRESS_FILE);
    if let Err(error) = std::fs::remove_file(&path) {
        if error.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), %error, "could not remove the address file");
        }
    }
}
