//! `outboxd check`: runs the store's checker on a stopped data directory or on a backup, and
//! prints the summary for people or, with `--json`, as one JSON document.

use super::{existing_directory_state, AdminError, CheckArgs};
use crate::queue::ALL_STATES;
use crate::store::backup::{self as format, BackupReader, Trailer};
use crate::store::check::{self as checker, CheckReport};
use crate::store::DirectoryState;
use serde::Serialize;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// The JSON document of `outboxd check --json`.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// The data directory or backup file checked.
    checked: String,
    /// True when no problem was found.
    ok: bool,
    /// The backup's trailer, when a backup was checked.
    backup: Option<Trailer>,
    #[serde(flatten)]
    report: &'a CheckReport,
}

/// `outboxd check`.
pub fn check(args: &CheckArgs) -> Result<(), AdminError> {
    let (checked, trailer, report) = match (&args.backup, &args.data_dir) {
        (Some(backup), _) => {
            let (trailer, report) = check_backup(backup)?;
            (backup.display().to_string(), Some(trailer), report)
        }
        (None, Some(data_dir)) => {
            (data_dir.display().to_string(), None, check_directory(data_dir)?)
        }
        (None, None) => return Err(AdminError::new("pass --data-dir DIR or --backup FILE")),
    };
    if args.json {
        let ok = report.problems.is_empty();
        let document =
            JsonReport { checked: checked.clone(), ok, backup: trailer, report: &report };
        let text = serde_json::to_string_pretty(&document).expect("reports serialize");
        println!("{text}");
    } else {
        print_report(&checked, trailer.as_ref(), &report);
    }
    match report.problems.len() {
        0 => Ok(()),
        count => Err(AdminError::new(format!(
            "check found {count} problem{} in {checked}; each is listed with what to do",
            if count == 1 { "" } else { "s" }
        ))),
    }
}

fn check_directory(data_dir: &Path) -> Result<CheckReport, AdminError> {
    if existing_directory_state(data_dir)? == DirectoryState::InUse {
        return Err(AdminError::new(format!(
            "{dir} is in use by a running server (the lock on {dir}/catalog/db is held), and a check \
             must not race it: stop the server first, or check a backup of it instead: `outboxd \
             backup --data-dir {dir} --out FILE && outboxd check --backup FILE`",
            dir = data_dir.display()
        )));
    }
    checker::check(data_dir)
        .map_err(|error| AdminError::new(format!("checking {}: {error}", data_dir.display())))
}

/// Restores the backup into a temporary directory (verifying every record) and checks that.
fn check_backup(backup: &Path) -> Result<(Trailer, CheckReport), AdminError> {
    let file = File::open(backup).map_err(|error| {
        AdminError::new(format!("cannot open the backup {}: {error}", backup.display()))
    })?;
    let temp = tempfile::Builder::new().prefix("outboxd-check-").tempdir().map_err(|error| {
        AdminError::new(format!("cannot create a temporary directory: {error} (set TMPDIR)"))
    })?;
    let data_dir = temp.path().join("data");
    let summary = BackupReader::new(BufReader::new(file))
        .and_then(|reader| format::restore(reader, &data_dir))
        .map_err(|error| AdminError::new(format!("{}: {error}", backup.display())))?;
    let report = checker::check(&data_dir).map_err(|error| {
        AdminError::new(format!("checking the restored {}: {error}", backup.display()))
    })?;
    Ok((summary.trailer, report))
}

fn print_report(checked: &str, trailer: Option<&Trailer>, report: &CheckReport) {
    println!("checked {checked}");
    if let Some(trailer) = trailer {
        println!(
            "  backup: {} catalog entries (checkpoint {} at log {}:{}), {} log segments with {} \
             frames up to log {}:{}, taken at {} ms",
            trailer.entry_count,
            trailer.epoch,
            trailer.checkpoint.0,
            trailer.checkpoint.1,
            trailer.segment_count,
            trailer.frame_count,
            trailer.end.0,
            trailer.end.1,
            trailer.created_at_ms
        );
    }
    let log = &report.log;
    println!(
        "  log: checkpoint {} at segment {} offset {}, {} frames after it (verified; replayed at \
         the next start); {} segment files, {} holding contents; {} contents read back",
        log.epoch,
        log.checkpoint.0,
        log.checkpoint.1,
        log.pending_frame_count,
        log.segment_count,
        log.content_segment_count,
        log.content_count
    );
    println!("catalog entries per kind:");
    for (kind, count) in &report.catalog {
        println!("  {kind:<16} {count:>10}");
    }
    println!("messages per queue and state:");
    if report.queues.is_empty() {
        println!("  (no messages)");
    }
    for (queue, counts) in &report.queues {
        // In the order messages move, not alphabetically.
        let counts: Vec<String> = ALL_STATES
            .iter()
            .map(|state| format!("{} {}", state.name(), counts.get(state.name()).unwrap_or(&0)))
            .collect();
        println!("  {queue}: {}", counts.join(", "));
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.problems.is_empty() {
        println!("no problems found");
        return;
    }
    println!("problems ({}):", report.problems.len());
    for problem in &report.problems {
        println!("  {} {}: {}", problem.part, problem.key, problem.problem);
        println!("    what to do: {}", problem.action);
    }
}
