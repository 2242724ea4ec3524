//! `outboxd backup` and `outboxd restore`.
//!
//! A backup is written under a temporary name beside `--out` and renamed only once the whole
//! stream has been verified (every record's crc and the trailer), so `--out` is either a complete
//! backup or untouched. A restore builds the new `catalog/` and `log/` in a temporary directory
//! inside the target, opens them as a server would (replaying the log after the checkpoint), and
//! moves them into it at the end, so the target can be a mount point, the
//! copy stays on the target's file system, and a restore that fails leaves the target as it was.
//!
//! Each command holds an exclusive `flock` on its temporary file or directory while it runs, and
//! removes the ones that earlier, interrupted runs left (unlocked and older than
//! [`STALE_TEMPORARY_AGE`]) before it starts.

use super::{existing_directory_state, AdminError, BackupArgs, RestoreArgs, ADDRESS_FILE};
use crate::http::admin::{data_dir_header_value, DATA_DIR_HEADER};
use crate::store::backup::{self as format, BackupReader, RestoreSummary, Trailer};
use crate::store::catalog::{Catalog, CATALOG_DIR};
use crate::store::{DirectoryState, LOG_DIR};
use fs2::FileExt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read of the backup stream may wait (the server reads its store meanwhile).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The name prefix of a backup being written beside `--out`.
const BACKUP_TEMPORARY_PREFIX: &str = ".outboxd-backup-";
/// The name prefix of a restore being built inside the target directory.
const RESTORE_TEMPORARY_PREFIX: &str = ".outboxd-restore-";
/// A temporary file or directory this old, and not locked, was left by an interrupted command.
/// The age covers the moment between a command creating its temporary and locking it.
const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(60);

/// The entries of a data directory; `restore --force` replaces a directory holding only these
/// (and temporary directories of restores). `sled` and `wal` are the first storage format's
/// (replaced too); `format-1` is that format's data kept aside by a conversion (left in place).
const DATA_DIR_ENTRIES: [&str; 7] = [
    CATALOG_DIR,
    LOG_DIR,
    "sled",
    "wal",
    crate::store::v1::KEPT_DIR,
    ADDRESS_FILE,
    "outboxd.addr.tmp",
];
/// Most unexpected entries a refusal names.
const NAMED_ENTRY_COUNT_MAX: usize = 10;
/// How long a restore waits for the restored store's lock, which sled releases as it closes.
const RESTORED_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Where a backup comes from.
enum Source {
    /// A data directory no server uses, read directly.
    Directory(PathBuf),
    /// A running server, by base URL.
    Server(String),
}

/// `outboxd backup`.
pub fn backup(args: &BackupArgs) -> Result<(), AdminError> {
    let source = match (&args.url, &args.data_dir) {
        (Some(url), _) => Source::Server(url.trim_end_matches('/').to_string()),
        (None, Some(data_dir)) => match existing_directory_state(data_dir)? {
            DirectoryState::InUse => Source::Server(server_url(data_dir)?),
            _ => Source::Directory(data_dir.clone()),
        },
        (None, None) => return Err(AdminError::new("pass --data-dir DIR or --url URL")),
    };
    let out_dir = parent_of(&args.out);
    remove_stale_temporaries(out_dir, BACKUP_TEMPORARY_PREFIX, "backup");
    let temp = tempfile::Builder::new()
        .prefix(BACKUP_TEMPORARY_PREFIX)
        .tempfile_in(out_dir)
        .map_err(|error| {
            AdminError::new(format!(
                "cannot create a file in {}: {error}; pass an --out in a writable directory",
                out_dir.display()
            ))
        })?;
    // Marks the file as in use, so that another backup into the same directory leaves it alone
    // (a file system without locks falls back on the age alone).
    let _ = temp.as_file().try_lock_exclusive();
    let trailer = match &source {
        Source::Directory(data_dir) => backup_directory(data_dir, temp.as_file())?,
        Source::Server(url) => backup_from_server(
            url,
            args.token.as_ref().map(|token| token.0.as_str()),
            args.data_dir.as_deref(),
            temp.as_file(),
        )?,
    };
    let write_error = |error: io::Error| {
        AdminError::new(format!("writing the backup to {}: {error}", args.out.display()))
    };
    temp.as_file().sync_all().map_err(write_error)?;
    let bytes = temp.as_file().metadata().map_err(write_error)?.len();
    temp.persist(&args.out).map_err(|error| write_error(error.error))?;
    sync_dir(out_dir).map_err(write_error)?;
    let via = match &source {
        Source::Directory(_) => "read directly".to_string(),
        Source::Server(url) => format!("taken through the server at {url}"),
    };
    println!(
        "backup written to {} ({via}): {} catalog entries, {} log segments with {} frames, \
         {bytes} bytes",
        args.out.display(),
        trailer.entry_count,
        trailer.segment_count,
        trailer.frame_count
    );
    Ok(())
}

/// The running server's base URL, from the address file it wrote into its data directory.
fn server_url(data_dir: &Path) -> Result<String, AdminError> {
    let path = data_dir.join(ADDRESS_FILE);
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(format!("http://{}", text.trim())),
        Ok(_) | Err(_) => Err(AdminError::new(format!(
            "{} is in use by a running server (its lock is held), but {} is missing: the server \
             may still be starting (retry in a moment); otherwise pass its address with --url \
             http://HOST:PORT",
            data_dir.display(),
            path.display()
        ))),
    }
}

/// Backs up a data directory that no server uses: the catalog, then the log segments it points
/// into and the log from its checkpoint to its end. Changes none of outboxd's data (opening the
/// catalog lets sled finish its own crash recovery, which may rewrite sled's files).
fn backup_directory(data_dir: &Path, file: &File) -> Result<Trailer, AdminError> {
    let failed = |error: &dyn std::fmt::Display| {
        AdminError::new(format!("backing up {}: {error}", data_dir.display()))
    };
    let catalog = Catalog::open(data_dir).map_err(|error| {
        AdminError::new(format!(
            "cannot open {}: {error} (if a server just started on it, run the backup again: it \
             then goes through the server)",
            data_dir.display()
        ))
    })?;
    let log_dir = data_dir.join(LOG_DIR);
    let out = BufWriter::new(file);
    let (trailer, mut writer) =
        format::backup_stopped(&catalog, &log_dir, out, crate::clock::now_ms())
            .map_err(|error| failed(&error))?;
    writer.flush().map_err(|error| failed(&error))?;
    Ok(trailer)
}

/// How long `outboxd backup` waits while another backup of the server runs.
const BUSY_WAIT_MAX: Duration = Duration::from_secs(30);
const BUSY_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Streams a backup from a running server into `file`, verifying it on the way. With `data_dir`,
/// the server must say it serves that directory (see [`DATA_DIR_HEADER`]).
fn backup_from_server(
    url: &str,
    token: Option<&str>,
    data_dir: Option<&Path>,
    file: &File,
) -> Result<Trailer, AdminError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .redirects(0)
        .build();
    let request = || {
        let request = agent.get(&format!("{url}/v1/admin/backup"));
        match token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        }
    };
    // The server streams one backup at a time, and frees its slot a moment after the last
    // bytes of the previous one went out: a backup started right after another, or while one
    // runs, waits for it (bounded) instead of failing.
    let waiting_since = std::time::Instant::now();
    let mut answer = request().call();
    while matches!(answer, Err(ureq::Error::Status(409, _)))
        && waiting_since.elapsed() < BUSY_WAIT_MAX
    {
        if waiting_since.elapsed() < BUSY_RETRY_INTERVAL {
            eprintln!("another backup of {url} is running; waiting for it to finish");
        }
        std::thread::sleep(BUSY_RETRY_INTERVAL);
        answer = request().call();
    }
    let response = match answer {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            let hint = match status {
                401 | 403 => {
                    " (pass an API token allowed to take backups with --token or OUTBOXD_TOKEN)"
                }
                409 => {
                    " (another backup of it was still running after 30 s: wait for that one to \
                        finish, then run the command again)"
                }
                _ => "",
            };
            return Err(AdminError::new(format!(
                "the server at {url} refused the backup with status {status}{hint}: {}",
                body.trim()
            )));
        }
        Err(ureq::Error::Transport(error)) => {
            return Err(AdminError::new(format!(
                "cannot reach the server at {url}: {error} (is it running? a stopped server's \
                 directory is backed up with --data-dir alone)"
            )))
        }
    };
    if let Some(data_dir) = data_dir {
        check_served_directory(url, data_dir, response.header(DATA_DIR_HEADER))?;
    }
    let mut out = BufWriter::new(file);
    let tee = Tee { input: response.into_reader(), copy: &mut out };
    let trailer =
        BackupReader::new(tee).and_then(BackupReader::verify_to_end).map_err(|error| {
            AdminError::new(format!(
                "the backup from {url} is incomplete, nothing was written: {error}"
            ))
        })?;
    out.flush().map_err(|error| AdminError::new(format!("writing the backup: {error}")))?;
    Ok(trailer)
}

/// Refuses a backup from a server that does not serve `data_dir`: an address file left by a
/// server that crashed can name an address another server listens on now.
fn check_served_directory(
    url: &str,
    data_dir: &Path,
    served: Option<&str>,
) -> Result<(), AdminError> {
    let canonical = fs::canonicalize(data_dir).map_err(|error| {
        AdminError::new(format!(
            "cannot resolve the data directory {}: {error}",
            data_dir.display()
        ))
    })?;
    if served == Some(data_dir_header_value(&canonical).as_str()) {
        return Ok(());
    }
    let served = match served {
        Some(served) => format!("serves the data directory {served}"),
        None => "does not say which data directory it serves".to_string(),
    };
    Err(AdminError::new(format!(
        "the server at {url} {served}, not {}: nothing was written. {} may be stale (left by \
         a server that stopped without cleaning up), or the server on {} may still be starting \
         (retry in a moment); otherwise pass that server's address with --url alone",
        canonical.display(),
        data_dir.join(ADDRESS_FILE).display(),
        data_dir.display()
    )))
}

/// A reader that copies everything it reads into a writer.
struct Tee<'a, R: Read, W: Write> {
    input: R,
    copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.input.read(buffer)?;
        self.copy.write_all(&buffer[..count])?;
        Ok(count)
    }
}

/// `outboxd restore`.
pub fn restore(args: &RestoreArgs) -> Result<(), AdminError> {
    let target = &args.data_dir;
    let file = File::open(&args.backup).map_err(|error| {
        AdminError::new(format!("cannot open the backup {}: {error}", args.backup.display()))
    })?;
    let created = match fs::metadata(target) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(target).map_err(|error| {
                AdminError::new(format!("cannot create {}: {error}", target.display()))
            })?;
            true
        }
        _ => false,
    };
    let result = restore_into(file, target, args.force);
    if result.is_err() && created {
        // Empty again: the restore's temporary directory is gone.
        let _ = fs::remove_dir(target);
    }
    let trailer = result?.trailer;
    println!(
        "restored {} into {}: {} catalog entries, {} log segments with {} frames; start the \
         server with --data-dir {}",
        args.backup.display(),
        target.display(),
        trailer.entry_count,
        trailer.segment_count,
        trailer.frame_count,
        target.display()
    );
    Ok(())
}

/// Restores the backup in `file` into the existing directory `target`: builds the data in a
/// temporary directory inside it, then moves it into place.
fn restore_into(file: File, target: &Path, force: bool) -> Result<RestoreSummary, AdminError> {
    remove_stale_temporaries(target, RESTORE_TEMPORARY_PREFIX, "restore");
    check_target(target, force)?;
    // Held for the whole restore: no server starts on the old data meanwhile.
    let mut old_lock = lock_data_dir(target)?;
    let temp = tempfile::Builder::new()
        .prefix(RESTORE_TEMPORARY_PREFIX)
        .tempdir_in(target)
        .map_err(|error| {
            AdminError::new(format!("cannot create a directory in {}: {error}", target.display()))
        })?;
    // Marks the directory as in use, so that another restore into the target leaves it alone.
    let _temp_lock = File::open(temp.path()).and_then(|dir| dir.try_lock_exclusive().map(|_| dir));
    let unchanged = format!("{} was not changed", target.display());
    let reader = BackupReader::new(BufReader::new(file))
        .map_err(|error| AdminError::new(format!("{error}; {unchanged}")))?;
    let summary = format::restore(reader, temp.path())
        .map_err(|error| AdminError::new(format!("restore failed: {error}; {unchanged}")))?;
    // The restore took a while: look again at what is about to be replaced. A target that had
    // no data had no lock to hold, so a server may have started on it meanwhile.
    check_target(target, force)
        .map_err(|error| AdminError::new(format!("{error}; {unchanged}")))?;
    if old_lock.is_none() {
        old_lock = lock_data_dir(target)
            .map_err(|error| AdminError::new(format!("{error}; {unchanged}")))?;
    }
    move_into_place(temp, target)?;
    drop(old_lock);
    Ok(summary)
}

/// Refuses a target that is not a directory, holds data without `force`, or holds anything but
/// a data directory's entries (and restores' temporary directories) even with it.
fn check_target(target: &Path, force: bool) -> Result<(), AdminError> {
    let entries = fs::read_dir(target).map_err(|error| {
        AdminError::new(format!(
            "cannot restore into {}: {error}; pass a new or empty directory",
            target.display()
        ))
    })?;
    let mut data_found = false;
    let mut unexpected = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| {
            AdminError::new(format!("cannot list {}: {error}", target.display()))
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(RESTORE_TEMPORARY_PREFIX) {
            continue;
        }
        if DATA_DIR_ENTRIES.contains(&name.as_str()) {
            data_found = true;
        } else {
            unexpected.push(name);
        }
    }
    if !data_found && unexpected.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(AdminError::new(format!(
            "{} is not empty: restore into a new or empty directory, or pass --force to replace \
             the data directory in it (it is replaced only after the restore succeeded)",
            target.display()
        )));
    }
    if unexpected.is_empty() {
        return Ok(());
    }
    unexpected.sort();
    let more = unexpected.len().saturating_sub(NAMED_ENTRY_COUNT_MAX);
    unexpected.truncate(NAMED_ENTRY_COUNT_MAX);
    let mut named = unexpected.join(", ");
    if more > 0 {
        named.push_str(&format!(" and {more} more"));
    }
    Err(AdminError::new(format!(
        "{} is not an outboxd data directory: besides catalog, log and {ADDRESS_FILE} it holds {named}; \
         --force replaces only a data directory, so move those elsewhere or restore into another \
         directory",
        target.display()
    )))
}

/// Takes the lock a server takes on the data directory in `target` (sled's on `catalog/db`, or
/// `sled/db` for the first storage format), if there is one; refuses when a running server holds
/// it.
fn lock_data_dir(target: &Path) -> Result<Option<File>, AdminError> {
    let first_format = target.join("sled").join("db");
    if crate::store::is_old_format(target) {
        return lock_path(target, &first_format);
    }
    lock_path(target, &target.join(CATALOG_DIR).join("db"))
}

/// Takes the lock on `path` (see [`lock_data_dir`]).
fn lock_path(target: &Path, path: &Path) -> Result<Option<File>, AdminError> {
    let path = path.to_path_buf();
    lock_file(&path).map_err(|error| {
        if is_contended(&error) {
            AdminError::new(format!(
                "{} is in use by a running server: stop it before replacing its data directory",
                target.display()
            ))
        } else {
            AdminError::new(format!("cannot lock {}: {error}", path.display()))
        }
    })
}

/// Opens `path` and takes an exclusive `flock` on it; `None` when it does not exist.
fn lock_file(path: &Path) -> io::Result<Option<File>> {
    let file = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    file.try_lock_exclusive()?;
    Ok(Some(file))
}

fn is_contended(error: &io::Error) -> bool {
    error.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

/// Moves the restored `catalog` and `log` from `built` into `target`, replacing the old ones
/// (and the first storage format's `sled` and `wal`).
///
/// The restored store is locked first, so no server starts on it before its log is in place.
/// The old entries are moved aside into `built` (deleted with it) before the new ones come in,
/// `catalog` first: the old catalog never sits beside the new log. The new `catalog` alone is
/// already a whole data directory (the restore checkpointed; its log holds only contents, which
/// a server starting on a catalog without them refuses to serve). If a move fails, the moves
/// made are undone; if even that fails, `built` is kept and the error says where.
fn move_into_place(built: tempfile::TempDir, target: &Path) -> Result<(), AdminError> {
    let _new_lock = lock_restored(&built.path().join(CATALOG_DIR).join("db"))?;
    let aside = built.path().join("replaced");
    fs::create_dir(&aside)
        .map_err(|error| AdminError::new(format!("cannot create {}: {error}", aside.display())))?;
    // (from, to, whether `from` must exist): the old entries, then the new ones.
    let moves = [
        (target.join(CATALOG_DIR), aside.join(CATALOG_DIR), false),
        (target.join(LOG_DIR), aside.join(LOG_DIR), false),
        (target.join("sled"), aside.join("sled"), false),
        (target.join("wal"), aside.join("wal"), false),
        (built.path().join(CATALOG_DIR), target.join(CATALOG_DIR), true),
        (built.path().join(LOG_DIR), target.join(LOG_DIR), true),
    ];
    let mut done: Vec<(&Path, &Path)> = Vec::new();
    for (from, to, required) in &moves {
        match fs::rename(from, to) {
            Ok(()) => done.push((from, to)),
            Err(error) if error.kind() == io::ErrorKind::NotFound && !required => {}
            Err(error) => {
                let undone = done.iter().rev().all(|(from, to)| fs::rename(to, from).is_ok());
                let mut text =
                    format!("cannot move the restored data into {}: {error}", target.display());
                if undone {
                    text.push_str(&format!("; {} was not changed", target.display()));
                } else {
                    let kept = built.keep();
                    text.push_str(&format!(
                        "; the data it replaced is kept in {}: put its catalog and log back into {} \
                         by hand before starting a server there",
                        kept.join("replaced").display(),
                        target.display()
                    ));
                }
                return Err(AdminError::new(text));
            }
        }
    }
    for name in [ADDRESS_FILE, "outboxd.addr.tmp"] {
        let path = target.join(name);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                eprintln!("outboxd: could not remove the stale {}: {error}", path.display());
            }
            _ => {}
        }
    }
    sync_dir(target)
        .map_err(|error| AdminError::new(format!("syncing {}: {error}", target.display())))?;
    let kept = built.path().to_path_buf();
    if let Err(error) = built.close() {
        eprintln!("outboxd: could not remove {} (the replaced data): {error}", kept.display());
    }
    Ok(())
}

/// Locks the restored store's `sled/db`, waiting for sled to let go of it as it closes.
fn lock_restored(path: &Path) -> Result<Option<File>, AdminError> {
    let started = std::time::Instant::now();
    loop {
        match lock_file(path) {
            Ok(lock) => return Ok(lock),
            Err(error) if is_contended(&error) && started.elapsed() < RESTORED_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => {
                return Err(AdminError::new(format!(
                    "cannot lock the restored {}: {error}",
                    path.display()
                )))
            }
        }
    }
}

/// Removes the temporary files or directories named `prefix*` in `dir` that interrupted runs of
/// `outboxd backup` or `restore` left: those no running command holds locked, and older than
/// [`STALE_TEMPORARY_AGE`]. Says on stderr what it removed; never fails the command.
fn remove_stale_temporaries(dir: &Path, prefix: &str, command: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_temporary = name.to_string_lossy().starts_with(prefix);
        let Ok(file_type) = entry.file_type() else { continue };
        if !is_temporary || file_type.is_symlink() {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else { continue };
        if file.try_lock_exclusive().is_err() {
            // Another command is writing it now.
            continue;
        }
        let age = file.metadata().and_then(|metadata| metadata.modified()).ok();
        let age = age.and_then(|modified| modified.elapsed().ok());
        if age.is_none_or(|age| age < STALE_TEMPORARY_AGE) {
            continue;
        }
        let removed =
            if file_type.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        match removed {
            Ok(()) => {
                eprintln!("outboxd: removed {}, left by an interrupted {command}", path.display())
            }
            Err(error) => eprintln!(
                "outboxd: could not remove {}, left by an interrupted {command}: {error}",
                path.display()
            ),
        }
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Fsyncs a directory, so that a rename in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
