//! `outboxd backup` and `outboxd restore`.
//!
//! A backup is written under a temporary name beside `--out` and renamed only once the whole
//! stream has been verified (every record's crc and the trailer), so `--out` is either a complete
//! backup or untouched. A restore builds the data directory under a temporary name beside the
//! target and renames it into place, so the target is never left half-written.

use super::{existing_directory_state, AdminError, BackupArgs, RestoreArgs, ADDRESS_FILE};
use crate::store::backup::{self as format, BackupReader, BackupWriter, Trailer};
use crate::store::{self, DirectoryState, Store};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read of the backup stream may wait (the server reads its store meanwhile).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

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
    let temp = tempfile::Builder::new().prefix(".outboxd-backup-").tempfile_in(out_dir).map_err(
        |error| {
            AdminError::new(format!(
                "cannot create a file in {}: {error}; pass an --out in a writable directory",
                out_dir.display()
            ))
        },
    )?;
    let trailer = match &source {
        Source::Directory(data_dir) => backup_directory(data_dir, temp.as_file())?,
        Source::Server(url) => backup_from_server(
            url,
            args.token.as_ref().map(|token| token.0.as_str()),
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
        "backup written to {} ({via}): {} tree records and {} log frames, {bytes} bytes",
        args.out.display(),
        trailer.entry_count,
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

/// Backs up a data directory that no server uses: the trees, then the log from the checkpoint
/// to its end. Changes nothing in the directory.
fn backup_directory(data_dir: &Path, file: &File) -> Result<Trailer, AdminError> {
    let failed = |error: &dyn std::fmt::Display| {
        AdminError::new(format!("backing up {}: {error}", data_dir.display()))
    };
    let store = Store::open(data_dir).map_err(|error| {
        AdminError::new(format!(
            "cannot open {}: {error} (if a server just started on it, run the backup again: it \
             then goes through the server)",
            data_dir.display()
        ))
    })?;
    let from = store.checkpoint_position().map_err(|error| failed(&error))?;
    let mut out = BackupWriter::new(BufWriter::new(file)).map_err(|error| failed(&error))?;
    let (from, to) =
        format::write_backup(&store, &data_dir.join("wal"), from, || Ok(None), &mut out)
            .map_err(|error| failed(&error))?;
    let (trailer, mut writer) =
        out.finish(from, to, crate::clock::now_ms()).map_err(|error| failed(&error))?;
    writer.flush().map_err(|error| failed(&error))?;
    Ok(trailer)
}

/// Streams a backup from a running server into `file`, verifying it on the way.
fn backup_from_server(url: &str, token: Option<&str>, file: &File) -> Result<Trailer, AdminError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .redirects(0)
        .build();
    let mut request = agent.get(&format!("{url}/v1/admin/backup"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            let body = response.into_string().unwrap_or_default();
            let hint = if status == 401 || status == 403 {
                " (pass an API token allowed to take backups with --token or OUTBOXD_TOKEN)"
            } else {
                ""
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
    let target_exists = check_target(target, args.force)?;
    let file = File::open(&args.backup).map_err(|error| {
        AdminError::new(format!("cannot open the backup {}: {error}", args.backup.display()))
    })?;
    let parent = parent_of(target);
    fs::create_dir_all(parent)
        .map_err(|error| AdminError::new(format!("cannot create {}: {error}", parent.display())))?;
    let temp = tempfile::Builder::new().prefix(".outboxd-restore-").tempdir_in(parent).map_err(
        |error| {
            AdminError::new(format!("cannot create a directory in {}: {error}", parent.display()))
        },
    )?;
    let unchanged = format!("{} was not changed", target.display());
    let reader = BackupReader::new(BufReader::new(file))
        .map_err(|error| AdminError::new(format!("{error}; {unchanged}")))?;
    let summary = format::restore(reader, temp.path())
        .map_err(|error| AdminError::new(format!("restore failed: {error}; {unchanged}")))?;
    move_into_place(temp.keep(), target, target_exists)?;
    let trailer = summary.trailer;
    println!(
        "restored {} into {}: {} tree records and {} log frames; start the server with \
         --data-dir {}",
        args.backup.display(),
        target.display(),
        trailer.entry_count,
        trailer.frame_count,
        target.display()
    );
    Ok(())
}

/// Refuses a target that is in use, not a directory, or not empty without `force`; returns
/// whether it exists.
fn check_target(target: &Path, force: bool) -> Result<bool, AdminError> {
    let mut entries = match fs::read_dir(target) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => {
            return Err(AdminError::new(format!(
                "cannot restore into {}: {error}; pass a new or empty directory",
                target.display()
            )))
        }
    };
    if entries.next().is_none() {
        return Ok(true);
    }
    if !force {
        return Err(AdminError::new(format!(
            "{} is not empty: restore into a new or empty directory, or pass --force to replace \
             its content (it is deleted only after the restore succeeded)",
            target.display()
        )));
    }
    if store::directory_state(target).ok() == Some(DirectoryState::InUse) {
        return Err(AdminError::new(format!(
            "{} is in use by a running server: stop it before replacing its data directory",
            target.display()
        )));
    }
    Ok(true)
}

/// Renames the restored directory to `target`; a non-empty target is first renamed aside and
/// deleted after, so at every moment `target` is either the old directory or the new one.
fn move_into_place(
    restored: PathBuf,
    target: &Path,
    target_exists: bool,
) -> Result<(), AdminError> {
    let parent = parent_of(target);
    let failed = |error: io::Error| {
        let _ = fs::remove_dir_all(&restored);
        AdminError::new(format!(
            "cannot move the restored directory to {}: {error}",
            target.display()
        ))
    };
    let empty = target_exists && fs::read_dir(target).map_err(&failed)?.next().is_none();
    let aside = if target_exists && !empty {
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let aside = parent.join(format!(".{name}.replaced-{}", std::process::id()));
        fs::rename(target, &aside).map_err(&failed)?;
        Some(aside)
    } else {
        None
    };
    // rename(2) replaces an empty directory in one step.
    if let Err(error) = fs::rename(&restored, target) {
        if let Some(aside) = &aside {
            let _ = fs::rename(aside, target);
        }
        return Err(failed(error));
    }
    sync_dir(parent)
        .map_err(|error| AdminError::new(format!("syncing {}: {error}", parent.display())))?;
    if let Some(aside) = aside {
        if let Err(error) = fs::remove_dir_all(&aside) {
            eprintln!("outboxd: the replaced directory is kept at {}: {error}", aside.display());
        }
    }
    Ok(())
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
