//! The data directory checker behind `outboxd check`: every record's crc and format, every WAL
//! frame's crc, and whether the indexes agree with the records.
//!
//! It looks at the state a server would start from: sled with the WAL frames after the last
//! checkpoint applied on top. Those frames are decoded into an in-memory overlay (the same
//! key-level writes recovery would make) instead of being written, so checking changes none of
//! outboxd's data. Opening the directory with sled does let sled finish its own crash recovery
//! (which may rewrite sled's files) and creates a tree that is missing (the quarantine of a
//! directory that never had one), as a server's start would.
//! Each problem names the tree and key (a message id where there is one) and says what to do.

use super::overlay::{Generation, Op, Overlay, TreeId};
use super::wal::{self, WalPosition};
use super::{codec, keys, Store, StoreError, QUARANTINE_TREE};
use crate::queue::{MessageId, MessageState, QueueId, ALL_STATES};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Advice for a record the server cannot start without.
const RESTORE: &str = "the server will not start with it: restore the data directory from a backup";

/// What `outboxd check` found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Records per tree (after the WAL frames still to replay).
    pub trees: BTreeMap<&'static str, u64>,
    /// Messages per state, per queue name.
    pub queues: BTreeMap<String, BTreeMap<&'static str, u64>>,
    pub wal: WalReport,
    /// Things worth knowing that need no action.
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

/// The write-ahead log as the checker found it.
#[derive(Debug, Default, Serialize)]
pub struct WalReport {
    /// The position the last checkpoint covers: (segment, offset).
    pub checkpoint: (u64, u64),
    /// Frames after the checkpoint, which a server replays at startup (all crc-checked here).
    pub pending_frame_count: u64,
}

/// One thing wrong, naming the record and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The sled tree, or `wal`.
    pub tree: String,
    /// The record's key: a message id where the key is one, else the key's bytes in hex (or the
    /// WAL segment and offset).
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub action: String,
}

impl CheckReport {
    fn problem(&mut self, tree: &str, key: String, problem: String, action: &str) {
        let tree = tree.to_string();
        self.problems.push(Problem { tree, key, problem, action: action.to_string() });
    }
}

/// Checks the data directory at `data_dir`, which must hold data and be free (see
/// [`super::directory_state`]): opening it takes its lock until the check ends.
pub fn check(data_dir: &Path) -> Result<CheckReport, StoreError> {
    // No applier runs, so the overlay must hold every pending frame's writes without waiting.
    let store = Store::open_with(data_dir, Overlay::with_bytes_max(usize::MAX, usize::MAX))?;
    let mut report = CheckReport::default();
    stage_pending_frames(&store, &data_dir.join("wal"), &mut report);
    let pending = store.overlay.take_open();
    let mut checker = Checker {
        store: &store,
        pending: &pending,
        report,
        queue_names: HashMap::new(),
        messages: HashMap::new(),
        unreadable: HashSet::new(),
        contents: HashSet::new(),
        terminal: HashSet::new(),
    };
    checker.scan_queues()?;
    checker.scan_meta()?;
    checker.scan_content_and_history()?;
    checker.scan_terminal()?;
    checker.scan_small_trees()?;
    checker.cross_check();
    Ok(checker.report)
}

/// Reads and crc-checks the WAL frames after the checkpoint and stages their writes.
fn stage_pending_frames(store: &Store, wal_dir: &Path, report: &mut CheckReport) {
    let from = match store.checkpoint_position() {
        Ok(position) => position,
        Err(error) => {
            let key = "checkpoint".to_string();
            report.problem("system", key, error.to_string(), RESTORE);
            WalPosition::START
        }
    };
    report.wal.checkpoint = (from.segment_seq, from.offset);
    let mut frame_count = 0;
    let result = wal::read_range(wal_dir, from, None, |position, payload| {
        frame_count += 1;
        let what = format!("segment {} frame ending at {}", position.segment_seq, position.offset);
        let changes = codec::decode_changes(payload)
            .map_err(|source| StoreError::Corrupt { what: format!("WAL {what}"), source })?;
        store.stage(&changes)
    });
    report.wal.pending_frame_count = frame_count;
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
        Err(error) => {
            report.problem("wal", wal_dir.display().to_string(), error.to_string(), RESTORE)
        }
    }
}

/// The state gathered while scanning, for the cross-checks at the end.
struct Checker<'a> {
    store: &'a Store,
    pending: &'a Generation,
    report: CheckReport,
    /// Queue id → name.
    queue_names: HashMap<u32, String>,
    /// Message id → (queue id, state), for every readable meta record.
    messages: HashMap<u64, (u32, MessageState)>,
    /// Ids whose meta record is there but unreadable (already a problem; not orphans).
    unreadable: HashSet<u64>,
    /// Ids with a content record.
    contents: HashSet<u64>,
    /// (queue id, state byte, message id) of every terminal index entry.
    terminal: HashSet<(u32, u8, u64)>,
}

impl Checker<'_> {
    /// Visits a tree's effective entries: sled's, with the pending writes applied over them.
    fn scan(
        &mut self,
        tree: TreeId,
        mut visit: impl FnMut(&mut Self, &[u8], &[u8]),
    ) -> Result<(), StoreError> {
        let pending = &self.pending.trees[tree as usize];
        let sled_tree = self.store.tree(tree).clone();
        let mut count = 0;
        for entry in sled_tree.iter() {
            let (key, value) = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    let action = "sled's own files are damaged: restore the data directory from a \
                                  backup";
                    self.report.problem(tree.name(), String::new(), error.to_string(), action);
                    break;
                }
            };
            match pending.get(key.as_ref()) {
                Some(Op::Put(new_value)) => visit(self, &key, new_value),
                Some(Op::Remove) => continue,
                None => visit(self, &key, &value),
            }
            count += 1;
        }
        for (key, op) in pending {
            if let (Op::Put(value), false) = (op, sled_tree.contains_key(key)?) {
                visit(self, key, value);
                count += 1;
            }
        }
        self.report.trees.insert(tree.name(), count);
        Ok(())
    }

    fn bad_key(&mut self, tree: TreeId, key: &[u8]) {
        let problem =
            format!("a key of {} bytes that is not a valid {} key", key.len(), tree.name());
        self.report.problem(tree.name(), hex(key), problem, RESTORE);
    }

    fn scan_queues(&mut self) -> Result<(), StoreError> {
        let mut by_name: HashMap<String, u32> = HashMap::new();
        self.scan(TreeId::Queues, |checker, key, value| {
            let Some(queue_id) = keys::decode_queue_key(key) else {
                return checker.bad_key(TreeId::Queues, key);
            };
            match codec::decode_queue(value) {
                Ok(record) => {
                    if let Some(other) = by_name.insert(record.name.clone(), queue_id.0) {
                        let problem = format!(
                            "queue {:?} has two records (ids {other} and {})",
                            record.name, queue_id.0
                        );
                        checker.report.problem("queues", hex(key), problem, RESTORE);
                    }
                    checker.queue_names.insert(queue_id.0, record.name);
                }
                Err(error) => {
                    let problem = format!("queue {}: {error}", queue_id.0);
                    checker.report.problem("queues", hex(key), problem, RESTORE);
                }
            }
        })
    }

    fn scan_meta(&mut self) -> Result<(), StoreError> {
        self.scan(TreeId::Meta, |checker, key, value| {
            let Some(id) = keys::decode_message_key(key) else {
                return checker.bad_key(TreeId::Meta, key);
            };
            match codec::decode_meta(value) {
                Ok(meta) => {
                    checker.messages.insert(id.0, (meta.queue_id.0, meta.state));
                    let queue = checker.queue_label(meta.queue_id);
                    let counts = checker.report.queues.entry(queue).or_insert_with(|| {
                        ALL_STATES.iter().map(|state| (state.name(), 0)).collect()
                    });
                    *counts.entry(meta.state.name()).or_default() += 1;
                }
                Err(error) => {
                    checker.unreadable.insert(id.0);
                    let action = "restore the data directory from a backup, or start the server \
                                  with --quarantine-corrupt to set the record aside (the message \
                                  is then lost)";
                    checker.report.problem("meta", id.to_string(), error.to_string(), action);
                }
            }
        })
    }

    /// Whether a meta record exists for the id, readable or not.
    fn has_meta(&self, id: u64) -> bool {
        self.messages.contains_key(&id) || self.unreadable.contains(&id)
    }

    fn queue_label(&self, queue_id: QueueId) -> String {
        match self.queue_names.get(&queue_id.0) {
            Some(name) => name.clone(),
            None => format!("#{} (no queue record)", queue_id.0),
        }
    }

    fn scan_content_and_history(&mut self) -> Result<(), StoreError> {
        self.scan(TreeId::Content, |checker, key, value| {
            let Some(id) = keys::decode_message_key(key) else {
                return checker.bad_key(TreeId::Content, key);
            };
            checker.contents.insert(id.0);
            if let Err(error) = codec::decode_content(value) {
                let action = format!(
                    "the message's body is lost: restore the data directory from a backup, or \
                     delete the message (DELETE /v1/messages/{id}) to keep the rest"
                );
                checker.report.problem("content", id.to_string(), error.to_string(), &action);
            }
        })?;
        self.scan(TreeId::History, |checker, key, value| {
            let Some(id) = keys::decode_message_key(key) else {
                return checker.bad_key(TreeId::History, key);
            };
            if let Err(error) = codec::decode_history(value) {
                let action = "only the message's past events are lost: the server replaces the \
                              record at the message's next event; restore from a backup to keep \
                              them";
                checker.report.problem("history", id.to_string(), error.to_string(), action);
            } else if !checker.has_meta(id.0) {
                let problem = "a history record of a message that does not exist".to_string();
                checker.report.problem("history", id.to_string(), problem, ORPHAN);
            }
        })
    }

    fn scan_terminal(&mut self) -> Result<(), StoreError> {
        self.scan(TreeId::Terminal, |checker, key, _| {
            let (Some(queue_id), Some(id)) =
                (key.get(..4).and_then(keys::decode_queue_key), keys::decode_terminal_key(key))
            else {
                return checker.bad_key(TreeId::Terminal, key);
            };
            checker.terminal.insert((queue_id.0, key[4], id.0));
        })
    }

    /// Expiry, idempotency, system and quarantine: decoded and counted.
    fn scan_small_trees(&mut self) -> Result<(), StoreError> {
        let mut stale_expiry_count = 0u64;
        self.scan(TreeId::Expiry, |checker, key, _| match keys::decode_expiry_key(key) {
            Some((_, id)) if key.len() == 16 => {
                let terminal =
                    checker.messages.get(&id.0).is_some_and(|(_, state)| !state.is_active());
                stale_expiry_count += u64::from(!terminal);
            }
            _ => checker.bad_key(TreeId::Expiry, key),
        })?;
        if stale_expiry_count > 0 {
            self.report.notes.push(format!(
                "{stale_expiry_count} retention entries name messages that are gone or active \
                 again; the sweep drops them when they come due"
            ));
        }
        self.scan(TreeId::Idempotency, |checker, key, value| {
            let Some((queue_id, name)) = keys::decode_idempotency_key(key) else {
                return checker.bad_key(TreeId::Idempotency, key);
            };
            if let Err(error) = codec::decode_idempotency(value) {
                let problem = format!("idempotency key {name:?}: {error}");
                checker.report.problem("idempotency", hex(key), problem, RESTORE);
            } else if !checker.queue_names.contains_key(&queue_id.0) {
                let problem =
                    format!("idempotency key {name:?} of queue {} that does not exist", queue_id.0);
                checker.report.problem("idempotency", hex(key), problem, ORPHAN);
            }
        })?;
        self.scan(TreeId::System, |checker, key, value| {
            let width = match key {
                keys::CHECKPOINT_KEY => 16,
                keys::NEXT_ID_KEY => 8,
                _ => return,
            };
            if value.len() != width {
                let problem = format!(
                    "{} holds {} bytes, not {width}",
                    String::from_utf8_lossy(key),
                    value.len()
                );
                checker.report.problem(
                    "system",
                    String::from_utf8_lossy(key).into(),
                    problem,
                    RESTORE,
                );
            }
        })?;
        let quarantined_count = self.store.quarantine.len() as u64;
        self.report.trees.insert(QUARANTINE_TREE, quarantined_count);
        if quarantined_count > 0 {
            self.report.notes.push(format!(
                "{quarantined_count} damaged records were set aside by --quarantine-corrupt; \
                 their messages are gone from the queues"
            ));
        }
        Ok(())
    }

    /// Whether the records and the indexes agree.
    fn cross_check(&mut self) {
        let mut ids: Vec<u64> = self.messages.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let (queue_id, state) = self.messages[&id];
            let name = MessageId(id).to_string();
            if !self.contents.contains(&id) {
                let action = format!(
                    "the message's body is lost: restore the data directory from a backup, or \
                     delete the message (DELETE /v1/messages/{name})"
                );
                let problem = "a message without its content record".to_string();
                self.report.problem("content", name.clone(), problem, &action);
            }
            if !self.queue_names.contains_key(&queue_id) {
                let problem = format!("the message names queue {queue_id}, which does not exist");
                self.report.problem("meta", name.clone(), problem, RESTORE);
            }
            if !state.is_active() && !self.terminal.remove(&(queue_id, state as u8, id)) {
                let problem = format!(
                    "a {} message missing from the terminal index (it is not listed, purged or \
                     redriven)",
                    state.name()
                );
                let action = format!(
                    "restore the data directory from a backup, or delete the message (DELETE \
                     /v1/messages/{name})"
                );
                self.report.problem("terminal", name, problem, &action);
            }
        }
        let mut stale: Vec<(u32, u8, u64)> = self.terminal.drain().collect();
        stale.sort_unstable();
        for (queue_id, state, id) in stale {
            let problem = format!(
                "an index entry (queue {queue_id}, state {state}) that no message record matches: \
                 listings show an id that is not found"
            );
            let action =
                "restore the data directory from a backup; the entry is otherwise harmless";
            self.report.problem("terminal", MessageId(id).to_string(), problem, action);
        }
        let orphans: Vec<u64> =
            self.contents.iter().copied().filter(|id| !self.has_meta(*id)).collect();
        for id in orphans {
            let problem = "a content record of a message that does not exist".to_string();
            self.report.problem("content", MessageId(id).to_string(), problem, ORPHAN);
        }
    }
}

/// Advice for a record left behind that nothing reads.
const ORPHAN: &str = "harmless (nothing reads it; it only takes space): restore from a backup to \
                      be rid of it";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
