//! The data directory checker behind `outboxd check`: every catalog record, the indexes and the
//! manifest against the pages, every log frame a restart would replay, every stored content.
//!
//! It reads a stopped data directory and changes none of outboxd's data (opening the catalog lets
//! sled finish its own crash recovery, which may rewrite sled's files). What it verifies:
//!
//! - every catalog entry decodes (its crc and layout): the manifest, queue records, pages, the
//!   `a` and `t` counts, histories, contents kept in the catalog, retention notes, idempotency keys;
//! - the `a` index names exactly the pages holding active messages, with their counts; the `t`
//!   index exactly the (queue, state, page) triples of dead and delivered messages, with theirs;
//! - the manifest's dead and delivered counts per queue equal the pages', and its segment usage
//!   (messages and bytes per log segment) equals the contents the records point at;
//! - every record names a known queue, an id below the manifest's next id, and a content that
//!   exists and reads back with a valid content crc (from its log segment, or from the catalog);
//! - every log frame after the checkpoint has a valid crc and decodes (a torn tail at the very end,
//!   which a restart cuts off, is a note).
//!
//! When all that holds, the frames after the checkpoint are applied in memory to a broker restored
//! from the catalog, exactly as a start would (nothing is written), and the counts reported are
//! the ones a server would serve; otherwise they are the pages', as of the checkpoint. Each
//! problem names where it is (catalog key or log position) and says what to do.

use super::catalog::Catalog;
use super::codec::{self, Manifest};
use super::keys;
use super::wal::{self, SegmentFiles};
use super::{StoreError, LOG_DIR};
use crate::queue::{
    ContentLocation, MessageId, MessageMeta, MessageState, SegmentUsage, ALL_STATES,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Advice for a record the server cannot start (or serve a message) without.
const RESTORE: &str = "the server cannot use it: restore the data directory from a backup";
/// Advice for an index or count that disagrees with the pages.
const INDEX: &str = "listings or counts are wrong until it is fixed: restore the data directory \
                     from a backup (or take a backup and restore it, which rebuilds nothing: \
                     prefer an older backup)";

/// What `outboxd check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Catalog entries per kind.
    pub catalog: BTreeMap<&'static str, u64>,
    /// Messages per state, per queue name: after the frames a start would replay (as of the
    /// checkpoint when a problem was found).
    pub queues: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub log: LogReport,
    /// Things worth knowing that need no action.
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

/// The log as the checker found it.
#[derive(Debug, Default, Serialize)]
pub struct LogReport {
    /// The checkpoint the catalog is exact up to: (segment, offset), and its epoch.
    pub checkpoint: (u64, u64),
    pub epoch: u64,
    /// Segment files in the log directory.
    pub segment_count: u64,
    /// Segments holding contents of stored messages (per the manifest).
    pub content_segment_count: u64,
    /// Contents read back and verified.
    pub content_count: u64,
    /// Frames after the checkpoint, which a server replays at startup (all verified here).
    pub pending_frame_count: u64,
}

/// One thing wrong, naming where and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `catalog` or `log`.
    pub part: String,
    /// Where: the catalog key (a message id, page or queue where there is one), or the log
    /// segment and offset.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub action: String,
}

impl CheckReport {
    fn problem(&mut self, part: &str, key: String, problem: String, action: &str) {
        let part = part.to_string();
        self.problems.push(Problem { part, key, problem, action: action.to_string() });
    }

    fn catalog_problem(&mut self, key: String, problem: String, action: &str) {
        self.problem("catalog", key, problem, action);
    }
}

/// What the pages hold, gathered for the cross-checks.
#[derive(Default)]
struct Tally {
    manifest: Option<Manifest>,
    queue_names: BTreeMap<u32, String>,
    /// Active records per page.
    active: BTreeMap<u64, u32>,
    /// Dead or delivered records per (queue, state byte, page).
    terminal: BTreeMap<(u32, u8, u64), u32>,
    /// Per queue id: records per state index.
    states: BTreeMap<u32, [u64; 6]>,
    /// What the records point at, per segment: (count, bytes).
    usage: BTreeMap<u32, (u64, u64)>,
    /// The lowest and highest id pointing into each segment.
    id_range: BTreeMap<u32, (u64, u64)>,
    /// Records whose content is kept in the catalog: id → length.
    catalog_contents: BTreeMap<u64, u32>,
    /// Every record's id.
    ids: BTreeSet<u64>,
    /// The `a` entries: page → count.
    active_index: BTreeMap<u64, u32>,
    /// The `t` entries: (queue, state byte, page) → count.
    terminal_index: BTreeMap<(u32, u8, u64), u32>,
    /// Ids with a history record.
    histories: BTreeSet<u64>,
    /// Contents in the catalog: id → length.
    stored_contents: BTreeMap<u64, u32>,
    /// Records with a content in the log, to read back: (id, location).
    log_contents: Vec<(u64, ContentLocation)>,
}

/// Checks the data directory at `data_dir`, which must hold data and be free (see
/// [`super::directory_state`]): opening it takes its lock until the check ends.
pub fn check(data_dir: &Path) -> Result<CheckReport, StoreError> {
    let catalog = Catalog::open(data_dir)?;
    let mut report = CheckReport::default();
    let mut tally = Tally::default();
    scan_catalog(&catalog, &mut tally, &mut report)?;
    let manifest = tally.manifest.clone().unwrap_or_default();
    if tally.manifest.is_none() {
        report.notes.push(
            "the catalog has no manifest: no checkpoint was ever written (a server writes one \
             when it starts); the log is checked from its start"
                .into(),
        );
    }
    report.log.checkpoint = (manifest.position.segment_seq, manifest.position.offset);
    report.log.epoch = manifest.epoch;
    report.log.content_segment_count = manifest.segments.len() as u64;
    check_indexes(&tally, &mut report);
    check_manifest(&tally, &manifest, &mut report);
    check_contents(&tally, &data_dir.join(LOG_DIR), &manifest, &mut report)?;
    check_log(&data_dir.join(LOG_DIR), &manifest, &mut report);
    if report.problems.is_empty() {
        // Everything decodes and agrees: apply the frames after the checkpoint as a start would
        // (in memory), so that the counts are those a server would serve.
        if let Some(queues) = replay(&catalog, &data_dir.join(LOG_DIR), &mut report) {
            report.queues = queues;
            return Ok(report);
        }
    }
    for (queue_id, counts) in &tally.states {
        let name =
            tally.queue_names.get(queue_id).cloned().unwrap_or_else(|| format!("#{queue_id}"));
        let by_state =
            ALL_STATES.iter().map(|state| (state.name(), counts[state.index()])).collect();
        report.queues.insert(name, by_state);
    }
    for name in tally.queue_names.values() {
        report
            .queues
            .entry(name.clone())
            .or_insert_with(|| ALL_STATES.iter().map(|state| (state.name(), 0)).collect());
    }
    Ok(report)
}

fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        keys::MANIFEST => "manifest",
        keys::QUEUE => "queue",
        keys::PAGE => "page",
        keys::ACTIVE => "active index",
        keys::TERMINAL => "terminal index",
        keys::HISTORY => "history",
        keys::CONTENT => "content",
        keys::EXPIRY => "retention note",
        keys::IDEMPOTENCY => "idempotency key",
        _ => return None,
    })
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn count_value(value: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(value.try_into().ok()?))
}

/// Reads every catalog entry once, decoding it and tallying what the pages hold.
fn scan_catalog(
    catalog: &Catalog,
    tally: &mut Tally,
    report: &mut CheckReport,
) -> Result<(), StoreError> {
    let scanned = catalog.for_each_entry(|key, value| {
        let Some(kind) = key.first().copied().and_then(kind_name) else {
            let problem = "a key of no kind this build knows".to_string();
            report.catalog_problem(hex(key), problem, RESTORE);
            return Ok(());
        };
        *report.catalog.entry(kind).or_default() += 1;
        if let Err(problem) = scan_entry(key, value, tally) {
            report.catalog_problem(format!("{kind} {}", describe_key(key)), problem, RESTORE);
        }
        Ok(())
    });
    if let Err(error) = scanned {
        let action = "sled's own files are damaged: restore the data directory from a backup";
        report.catalog_problem(String::new(), error.to_string(), action);
    }
    Ok(())
}

/// The readable part of a key, for problems: a message id, a page, a queue, or hex.
fn describe_key(key: &[u8]) -> String {
    match key[0] {
        keys::PAGE | keys::ACTIVE => keys::decode_page_key(&[&[keys::PAGE], &key[1..]].concat())
            .map_or_else(|| hex(key), |page| format!("page {page}")),
        keys::HISTORY | keys::CONTENT if key.len() == 9 => {
            let id = u64::from_be_bytes(key[1..9].try_into().expect("8 bytes"));
            format!("message {}", MessageId(id))
        }
        keys::QUEUE => keys::decode_queue_key(key)
            .map_or_else(|| hex(key), |queue_id| format!("queue {}", queue_id.0)),
        _ => hex(key),
    }
}

fn scan_entry(key: &[u8], value: &[u8], tally: &mut Tally) -> Result<(), String> {
    let bad_key = || format!("a malformed key {}", hex(key));
    match key[0] {
        keys::MANIFEST => {
            if key != keys::MANIFEST_KEY {
                return Err(bad_key());
            }
            tally.manifest = Some(codec::decode_manifest(value).map_err(|e| e.to_string())?);
        }
        keys::QUEUE => {
            let queue_id = keys::decode_queue_key(key).ok_or_else(bad_key)?;
            let record = codec::decode_queue(value).map_err(|e| e.to_string())?;
            tally.queue_names.insert(queue_id.0, record.name);
        }
        keys::PAGE => {
            let page = keys::decode_page_key(key).ok_or_else(bad_key)?;
            let records = codec::decode_page(page, value).map_err(|e| e.to_string())?;
            if records.is_empty() {
                return Err("an empty page (empty pages are removed)".into());
            }
            for (id, meta) in records {
                tally_record(tally, page, id, &meta);
            }
        }
        keys::ACTIVE => {
            let page = keys::decode_active_key(key).ok_or_else(bad_key)?;
            let count = count_value(value).ok_or("a count that is not 4 bytes")?;
            tally.active_index.insert(page, count);
        }
        keys::TERMINAL => {
            if key.len() != 14 {
                return Err(bad_key());
            }
            let queue_id = u32::from_be_bytes(key[1..5].try_into().expect("4 bytes"));
            let state = key[5];
            if !matches!(state, s if s == MessageState::Dead as u8 || s == MessageState::Delivered as u8)
            {
                return Err(format!("state byte {state} is neither dead nor delivered"));
            }
            let page = u64::from_be_bytes(key[6..14].try_into().expect("8 bytes"));
            let count = count_value(value).ok_or("a count that is not 4 bytes")?;
            tally.terminal_index.insert((queue_id, state, page), count);
        }
        keys::HISTORY => {
            let id = decode_id(key).ok_or_else(bad_key)?;
            codec::decode_history(value).map_err(|e| e.to_string())?;
            tally.histories.insert(id);
        }
        keys::CONTENT => {
            let id = decode_id(key).ok_or_else(bad_key)?;
            codec::decode_content(value).map_err(|e| e.to_string())?;
            tally.stored_contents.insert(id, value.len() as u32);
        }
        keys::EXPIRY => {
            keys::decode_expiry_key(key).ok_or_else(bad_key)?;
            if !value.is_empty() {
                return Err("a retention note with a value (they are empty)".into());
            }
        }
        keys::IDEMPOTENCY => {
            keys::decode_idempotency_key(key).ok_or_else(bad_key)?;
            codec::decode_idempotency(value).map_err(|e| e.to_string())?;
        }
        _ => unreachable!("unknown kinds are reported before"),
    }
    Ok(())
}

fn decode_id(key: &[u8]) -> Option<u64> {
    if key.len() != 9 {
        return None;
    }
    Some(u64::from_be_bytes(key[1..9].try_into().ok()?))
}

fn tally_record(tally: &mut Tally, page: u64, id: MessageId, meta: &MessageMeta) {
    tally.ids.insert(id.0);
    if meta.state.is_active() {
        *tally.active.entry(page).or_default() += 1;
    } else {
        *tally.terminal.entry((meta.queue_id.0, meta.state as u8, page)).or_default() += 1;
    }
    tally.states.entry(meta.queue_id.0).or_default()[meta.state.index()] += 1;
    match meta.content {
        ContentLocation::Log { segment, len, .. } => {
            let usage = tally.usage.entry(segment).or_default();
            usage.0 += 1;
            usage.1 += u64::from(len);
            let range = tally.id_range.entry(segment).or_insert((id.0, id.0));
            range.0 = range.0.min(id.0);
            range.1 = range.1.max(id.0);
            tally.log_contents.push((id.0, meta.content));
        }
        ContentLocation::Catalog { len } => {
            tally.catalog_contents.insert(id.0, len);
        }
    }
}

/// The `a` and `t` indexes against the pages, both ways.
fn check_indexes(tally: &Tally, report: &mut CheckReport) {
    let pages: BTreeSet<u64> =
        tally.active.keys().chain(tally.active_index.keys()).copied().collect();
    for page in pages {
        match (tally.active.get(&page), tally.active_index.get(&page)) {
            (Some(found), Some(indexed)) if found == indexed => {}
            (found, indexed) => report.catalog_problem(
                format!("active index page {page}"),
                format!(
                    "the index says {} active messages, the page holds {}",
                    indexed.copied().unwrap_or(0),
                    found.copied().unwrap_or(0)
                ),
                INDEX,
            ),
        }
    }
    let triples: BTreeSet<(u32, u8, u64)> =
        tally.terminal.keys().chain(tally.terminal_index.keys()).copied().collect();
    for (queue_id, state, page) in triples {
        let key = (queue_id, state, page);
        match (tally.terminal.get(&key), tally.terminal_index.get(&key)) {
            (Some(found), Some(indexed)) if found == indexed => {}
            (found, indexed) => {
                let state_name = ALL_STATES
                    .iter()
                    .find(|known| **known as u8 == state)
                    .map_or("?", |known| known.name());
                report.catalog_problem(
                    format!("terminal index queue {queue_id} {state_name} page {page}"),
                    format!(
                        "the index says {} messages, the page holds {}",
                        indexed.copied().unwrap_or(0),
                        found.copied().unwrap_or(0)
                    ),
                    INDEX,
                )
            }
        }
    }
    for queue_id in tally.states.keys() {
        if !tally.queue_names.contains_key(queue_id) {
            report.catalog_problem(
                format!("queue {queue_id}"),
                "messages belong to a queue that has no record".into(),
                RESTORE,
            );
        }
    }
    let orphans = tally.histories.iter().filter(|id| !tally.ids.contains(id)).count();
    if orphans > 0 {
        report.notes.push(format!(
            "{orphans} history records belong to removed messages (harmless: nothing reads them)"
        ));
    }
}

/// The manifest's counts and segment usage against the pages.
fn check_manifest(tally: &Tally, manifest: &Manifest, report: &mut CheckReport) {
    let queue_count = tally.states.keys().last().map_or(0, |last| *last as usize + 1);
    for index in 0..queue_count.max(manifest.terminal_counts.len()) {
        let counts = tally.states.get(&(index as u32)).copied().unwrap_or_default();
        let said = manifest.terminal_counts.get(index).copied().unwrap_or_default();
        let found = (counts[MessageState::Dead.index()], counts[MessageState::Delivered.index()]);
        if (said.dead, said.delivered) != found {
            report.catalog_problem(
                format!("manifest queue {index}"),
                format!(
                    "the manifest counts {} dead and {} delivered, the pages hold {} and {}",
                    said.dead, said.delivered, found.0, found.1
                ),
                INDEX,
            );
        }
    }
    let said: BTreeMap<u32, SegmentUsage> = manifest.segments.iter().copied().collect();
    let segments: BTreeSet<u32> = said.keys().chain(tally.usage.keys()).copied().collect();
    for segment in segments {
        let found = tally.usage.get(&segment).copied().unwrap_or_default();
        let usage = said.get(&segment).copied().unwrap_or_default();
        if (usage.live_count, usage.live_bytes) != found {
            report.catalog_problem(
                format!("manifest segment {segment}"),
                format!(
                    "the manifest says the segment holds {} contents of {} bytes, the records \
                     point at {} of {} bytes",
                    usage.live_count, usage.live_bytes, found.0, found.1
                ),
                "log segments would be kept or deleted wrongly: restore the data directory \
                 from a backup",
            );
        }
        if let (Some((low, high)), Some(usage)) = (tally.id_range.get(&segment), said.get(&segment))
        {
            if *low < usage.id_low || *high > usage.id_high {
                report.catalog_problem(
                    format!("manifest segment {segment}"),
                    format!(
                        "messages {} to {} point into the segment, outside the ids {} to {} the \
                         manifest gives it",
                        MessageId(*low),
                        MessageId(*high),
                        MessageId(usage.id_low),
                        MessageId(usage.id_high)
                    ),
                    INDEX,
                );
            }
        }
    }
    if let Some(highest) = tally.ids.last() {
        if *highest >= manifest.next_id {
            report.catalog_problem(
                "manifest".into(),
                format!(
                    "the next id {} is not above the highest stored id {}: ids would be reused",
                    MessageId(manifest.next_id),
                    MessageId(*highest)
                ),
                RESTORE,
            );
        }
    }
}

/// Reads back every content a record points at and verifies its crc.
fn check_contents(
    tally: &Tally,
    log_dir: &Path,
    manifest: &Manifest,
    report: &mut CheckReport,
) -> Result<(), StoreError> {
    for (id, len) in &tally.catalog_contents {
        match tally.stored_contents.get(id) {
            Some(stored) if stored == len => report.log.content_count += 1,
            Some(stored) => report.catalog_problem(
                format!("content message {}", MessageId(*id)),
                format!("the record says {len} bytes, the catalog holds {stored}"),
                RESTORE,
            ),
            None => report.catalog_problem(
                format!("content message {}", MessageId(*id)),
                "the record says its content is in the catalog, which has none".into(),
                RESTORE,
            ),
        }
    }
    let unused = tally.stored_contents.keys().filter(|id| !tally.catalog_contents.contains_key(id));
    let unused = unused.count();
    if unused > 0 {
        report.notes.push(format!(
            "{unused} contents in the catalog belong to no stored message (harmless)"
        ));
    }
    let existing: BTreeSet<u64> =
        wal::list_segments(log_dir)?.into_iter().map(|(seq, _)| seq).collect();
    report.log.segment_count = existing.len() as u64;
    let mut missing = BTreeSet::new();
    for (segment, _) in &manifest.segments {
        if !existing.contains(&u64::from(*segment)) {
            missing.insert(*segment);
        }
    }
    let segments = SegmentFiles::new(log_dir);
    for (id, location) in &tally.log_contents {
        let ContentLocation::Log { segment, offset, len } = *location else { continue };
        if !existing.contains(&u64::from(segment)) {
            missing.insert(segment);
            continue;
        }
        let problem = match segments.read(segment, offset, len) {
            Ok(bytes) => match codec::decode_content(&bytes) {
                Ok(_) => {
                    report.log.content_count += 1;
                    continue;
                }
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        };
        report.problem(
            "log",
            format!("segment {segment} offset {offset}"),
            format!("the content of message {} ({len} bytes): {problem}", MessageId(*id)),
            RESTORE,
        );
    }
    for segment in missing {
        let path = wal::segment_path(log_dir, u64::from(segment));
        report.problem(
            "log",
            path.display().to_string(),
            "the segment holds contents of stored messages but is missing".into(),
            RESTORE,
        );
    }
    Ok(())
}

/// Reads and decodes every log frame after the checkpoint.
fn check_log(log_dir: &Path, manifest: &Manifest, report: &mut CheckReport) {
    let mut frame_count = 0;
    let result = wal::read_range(log_dir, manifest.position, None, |position, payload| {
        frame_count += 1;
        let payload_offset = position.offset - payload.len() as u64;
        let segment = u32::try_from(position.segment_seq).unwrap_or(u32::MAX);
        codec::decode_frame(payload, segment, payload_offset).map(drop).map_err(|source| {
            StoreError::Corrupt {
                what: format!(
                    "log frame at segment {} offset {}",
                    position.segment_seq,
                    payload_offset - wal::FRAME_HEADER_BYTES
                ),
                source,
            }
        })
    });
    report.log.pending_frame_count = frame_count;
    match result {
        Ok(summary) => {
            if let Some((segment, offset, reason)) = summary.torn_tail {
                report.notes.push(format!(
                    "the log ends in a torn write at {} offset {offset} ({reason}): a crash \
                     interrupted a commit that was never acknowledged; the server cuts it off at \
                     its next start",
                    segment.display()
                ));
            }
        }
        Err(StoreError::Corrupt { what, source }) => {
            report.problem("log", what, source.to_string(), RESTORE);
        }
        Err(error) => {
            report.problem("log", log_dir.display().to_string(), error.to_string(), RESTORE)
        }
    }
}

/// Applies the frames after the checkpoint to a broker restored from the catalog, in memory, as
/// recovery does (nothing is written); returns the messages per state per queue it ends with, or
/// `None` (and a problem) when a frame does not apply.
fn replay(
    catalog: &Catalog,
    log_dir: &Path,
    report: &mut CheckReport,
) -> Option<BTreeMap<String, BTreeMap<&'static str, u64>>> {
    let now_ms = crate::clock::now_ms();
    let config = crate::queue::BrokerConfig::default();
    let (mut broker, from, _) = match super::recovery::restore(catalog, config, now_ms, 1, false) {
        Ok(restored) => restored,
        Err(error) => {
            report.catalog_problem(String::new(), error.to_string(), RESTORE);
            return None;
        }
    };
    let result = wal::read_range(log_dir, from, None, |position, payload| {
        super::recovery::replay_frame(&mut broker, catalog, position, payload, false).map(drop)
    });
    if let Err(error) = result {
        report.problem("log", log_dir.display().to_string(), error.to_string(), RESTORE);
        return None;
    }
    let queues = broker
        .all_queue_stats()
        .into_iter()
        .map(|stats| {
            let counts = ALL_STATES.iter().map(|state| (state.name(), stats.counts[state.index()]));
            (stats.name, counts.collect())
        })
        .collect();
    Some(queues)
}
