//! The overlay: changes that are durable in the WAL but not yet written to sled.
//!
//! sled is by far the most expensive step of a commit (each insert copies a whole leaf node), so
//! the storage thread does not wait for it. After the WAL sync it stages the commit's key-level
//! writes here and answers at once; an applier thread writes them to sled in the background.
//! Writes to the same key coalesce while they wait, so a message enqueued, leased and acked before
//! the applier comes round costs one write of each of its final records instead of one per step.
//!
//! Readers look in the overlay first (the open generation, then the one being applied) and then in
//! sled, so they always see every committed change. Range scans of sled (listing dead messages,
//! purges) first `sync`, which waits until everything staged so far is in sled; so does a
//! checkpoint, before it records the WAL position it covers.
//!
//! Nothing here is durable and nothing needs to be: the WAL holds every staged change, and
//! recovery replays it into sled directly.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::Arc;

/// Staging also waits once the open generation holds this many bytes (large messages).
const OPEN_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How long the applier lets a generation gather writes before writing it.
const COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);

/// The sled trees, as indexes into `Generation::trees`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TreeId {
    Meta = 0,
    Content = 1,
    History = 2,
    Queues = 3,
    Terminal = 4,
    Expiry = 5,
    Idempotency = 6,
    System = 7,
}

/// Number of trees the overlay covers.
pub const TREE_COUNT: usize = 8;

/// Every tree, in index order.
pub const ALL_TREES: [TreeId; TREE_COUNT] = [
    TreeId::Meta,
    TreeId::Content,
    TreeId::History,
    TreeId::Queues,
    TreeId::Terminal,
    TreeId::Expiry,
    TreeId::Idempotency,
    TreeId::System,
];

impl TreeId {
    /// The sled tree's name.
    pub fn name(self) -> &'static str {
        match self {
            TreeId::Meta => "meta",
            TreeId::Content => "content",
            TreeId::History => "history",
            TreeId::Queues => "queues",
            TreeId::Terminal => "terminal",
            TreeId::Expiry => "expiry",
            TreeId::Idempotency => "idempotency",
            TreeId::System => "system",
        }
    }
}

/// The last write to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(sled::IVec),
    Remove,
}

/// One key-level write, as staged.
pub type Write = (TreeId, Vec<u8>, Op);

/// The net writes of a stretch of commits, per tree; a later write to a key replaces an earlier one.
#[derive(Default)]
pub struct Generation {
    pub trees: [HashMap<Vec<u8>, Op>; TREE_COUNT],
    pub write_count: usize,
    /// Bytes of the keys and values written (replaced ones included): the memory bound.
    pub byte_count: usize,
    /// When the first write arrived.
    pub opened_at: Option<std::time::Instant>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.write_count == 0
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Option<&Op> {
        self.trees[tree as usize].get(key)
    }
}

/// Staged writes waiting for the applier, and its progress.
pub struct Overlay {
    state: Mutex<State>,
    /// Signalled when writes are staged, when a generation is applied, and on stop.
    changed: Condvar,
    /// Above this many writes waiting in the open generation, staging waits for the applier.
    open_write_count_max: usize,
    /// Above this many bytes waiting in the open generation, staging waits too.
    open_bytes_max: usize,
}

struct State {
    /// Being filled by the storage thread.
    open: Generation,
    /// Being written to sled by the applier.
    sealed: Option<Arc<Generation>>,
    /// Stages so far; stages covered by the sealed generation; stages written to sled.
    staged_count: u64,
    sealed_count: u64,
    applied_count: u64,
    /// A failed sled write: the overlay refuses everything after it.
    failure: Option<String>,
    stopping: bool,
    /// A checkpoint asked for: it may run once this many stages are in sled. `token` is the
    /// caller's (the WAL position), handed back with the outcome.
    checkpoint: Option<CheckpointRequest>,
    checkpoint_done: Option<(u64, u64, Result<(), String>)>,
    /// Someone waits in `sync`: the applier does not hold back a young generation.
    syncing: bool,
}

#[derive(Clone, Copy)]
struct CheckpointRequest {
    after_count: u64,
    token: (u64, u64),
}

/// What the applier does next.
pub enum Work {
    Apply(Arc<Generation>),
    /// Make sled durable and record the token (a WAL position): all stages before it are in sled.
    Checkpoint((u64, u64)),
}

impl Overlay {
    pub fn new(open_write_count_max: usize) -> Overlay {
        Overlay::with_bytes_max(open_write_count_max, OPEN_BYTES_MAX)
    }

    /// An overlay whose open generation waits for the applier at `open_bytes_max` bytes.
    pub fn with_bytes_max(open_write_count_max: usize, open_bytes_max: usize) -> Overlay {
        Overlay {
            state: Mutex::new(State {
                open: Generation::default(),
                sealed: None,
                staged_count: 0,
                sealed_count: 0,
                applied_count: 0,
                failure: None,
                stopping: false,
                checkpoint: None,
                checkpoint_done: None,
                syncing: false,
            }),
            changed: Condvar::new(),
            open_write_count_max,
            open_bytes_max,
        }
    }

    /// Adds one commit's writes. Waits while the applier is far behind (backpressure).
    pub fn stage(&self, writes: Vec<Write>) -> Result<(), String> {
        let mut state = self.state.lock();
        while (state.open.write_count >= self.open_write_count_max
            || state.open.byte_count >= self.open_bytes_max)
            && state.failure.is_none()
        {
            self.changed.wait(&mut state);
        }
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        state.open.opened_at.get_or_insert_with(std::time::Instant::now);
        for (tree, key, op) in writes {
            let value_bytes = match &op {
                Op::Put(value) => value.len(),
                Op::Remove => 0,
            };
            state.open.byte_count += key.len() + value_bytes;
            state.open.trees[tree as usize].insert(key, op);
            state.open.write_count += 1;
        }
        state.staged_count += 1;
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// The newest staged write to a key, if it is still waiting.
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Option<Op> {
        let state = self.state.lock();
        if let Some(op) = state.open.get(tree, key) {
            return Some(op.clone());
        }
        state.sealed.as_ref().and_then(|sealed| sealed.get(tree, key).cloned())
    }

    /// Waits until every write staged before the call is in sled.
    pub fn sync(&self) -> Result<(), String> {
        let mut state = self.state.lock();
        let target = state.staged_count;
        state.syncing = true;
        self.changed.notify_all();
        while state.applied_count < target && state.failure.is_none() {
            self.changed.wait(&mut state);
        }
        state.syncing = false;
        match &state.failure {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    /// Asks for a checkpoint once everything staged so far is in sled; `token` comes back with the
    /// outcome from `take_checkpoint_done`. A request made while one is pending replaces it.
    pub fn request_checkpoint(&self, token: (u64, u64)) {
        let mut state = self.state.lock();
        state.checkpoint = Some(CheckpointRequest { after_count: state.staged_count, token });
        drop(state);
        self.changed.notify_all();
    }

    /// The outcome of the last finished checkpoint, once.
    pub fn take_checkpoint_done(&self) -> Option<((u64, u64), Result<(), String>)> {
        let (segment, offset, result) = self.state.lock().checkpoint_done.take()?;
        Some(((segment, offset), result))
    }

    /// Waits for the outcome of the pending checkpoint (at shutdown).
    pub fn wait_checkpoint_done(&self) -> Option<((u64, u64), Result<(), String>)> {
        let mut state = self.state.lock();
        while state.checkpoint.is_some()
            && state.checkpoint_done.is_none()
            && state.failure.is_none()
        {
            self.changed.wait(&mut state);
        }
        let (segment, offset, result) = state.checkpoint_done.take()?;
        Some(((segment, offset), result))
    }

    /// Takes the open generation out, leaving the overlay empty (for a reader that runs no
    /// applier and looks the writes up itself).
    pub fn take_open(&self) -> Generation {
        std::mem::take(&mut self.state.lock().open)
    }

    /// Asks the applier to write what is left and stop.
    pub fn stop(&self) {
        self.state.lock().stopping = true;
        self.changed.notify_all();
    }

    /// The applier's next work, or `None` when stopping with nothing left. A due checkpoint goes
    /// first: its stages are all in sled, and new writes can wait for a flush.
    fn next_work(&self) -> Option<Work> {
        let mut state = self.state.lock();
        loop {
            if let Some(request) = state.checkpoint {
                if state.applied_count >= request.after_count {
                    return Some(Work::Checkpoint(request.token));
                }
            }
            if !state.open.is_empty() {
                // A young generation is left to gather more writes, so that a message's writes
                // from enqueue, lease and ack coalesce; a sync, a checkpoint, a full generation
                // or a stop does not wait.
                let age = state.open.opened_at.map_or(COALESCE_WINDOW, |at| at.elapsed());
                let hurried = state.stopping
                    || state.syncing
                    || state.checkpoint.is_some()
                    || state.open.write_count >= self.open_write_count_max / 2
                    || state.open.byte_count >= self.open_bytes_max / 2;
                if age >= COALESCE_WINDOW || hurried {
                    break;
                }
                self.changed.wait_for(&mut state, COALESCE_WINDOW - age);
                continue;
            }
            if state.stopping {
                return None;
            }
            self.changed.wait(&mut state);
        }
        let generation = Arc::new(std::mem::take(&mut state.open));
        state.sealed = Some(generation.clone());
        state.sealed_count = state.staged_count;
        drop(state);
        self.changed.notify_all();
        Some(Work::Apply(generation))
    }

    fn checkpointed(&self, token: (u64, u64), result: Result<(), String>) {
        let mut state = self.state.lock();
        state.checkpoint = None;
        state.checkpoint_done = Some((token.0, token.1, result));
        drop(state);
        self.changed.notify_all();
    }

    /// Records that the sealed generation is in sled (or that writing it failed).
    fn applied(&self, result: Result<(), String>) {
        let mut state = self.state.lock();
        state.sealed = None;
        match result {
            Ok(()) => state.applied_count = state.sealed_count,
            Err(failure) => state.failure = Some(failure),
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The applier: writes each sealed generation to sled and runs checkpoints, until `stop`.
    pub fn run_applier(
        &self,
        write: impl Fn(&Generation) -> Result<(), String>,
        checkpoint: impl Fn((u64, u64)) -> Result<(), String>,
    ) {
        while let Some(work) = self.next_work() {
            match work {
                Work::Apply(generation) => {
                    let result = write(&generation);
                    if let Err(failure) = &result {
                        tracing::error!(error = %failure, "writing to sled failed; refusing writes");
                    }
                    self.applied(result);
                }
                Work::Checkpoint(token) => self.checkpointed(token, checkpoint(token)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn put(value: &[u8]) -> Op {
        Op::Put(sled::IVec::from(value))
    }

    #[test]
    fn later_writes_win_and_readers_see_staged_writes_until_applied() {
        let overlay = Arc::new(Overlay::new(1000));
        overlay.stage(vec![(TreeId::Meta, b"a".to_vec(), put(b"1"))]).unwrap();
        overlay.stage(vec![(TreeId::Meta, b"a".to_vec(), put(b"2"))]).unwrap();
        overlay
            .stage(vec![
                (TreeId::Meta, b"b".to_vec(), put(b"x")),
                (TreeId::Meta, b"b".to_vec(), Op::Remove),
            ])
            .unwrap();
        assert_eq!(overlay.get(TreeId::Meta, b"a"), Some(put(b"2")));
        assert_eq!(overlay.get(TreeId::Meta, b"b"), Some(Op::Remove));
        assert_eq!(overlay.get(TreeId::Content, b"a"), None);

        let store = Arc::new(Mutex::new(BTreeMap::new()));
        let applier = {
            let (overlay, store) = (overlay.clone(), store.clone());
            std::thread::spawn(move || {
                overlay.run_applier(
                    |generation| {
                        let mut store = store.lock();
                        for (key, op) in &generation.trees[TreeId::Meta as usize] {
                            match op {
                                Op::Put(value) => drop(store.insert(key.clone(), value.clone())),
                                Op::Remove => drop(store.remove(key)),
                            }
                        }
                        Ok(())
                    },
                    |_| Ok(()),
                )
            })
        };
        overlay.sync().unwrap();
        assert_eq!(overlay.get(TreeId::Meta, b"a"), None, "applied writes leave the overlay");
        assert_eq!(store.lock().get(b"a".as_slice()), Some(&sled::IVec::from(b"2")));
        assert!(!store.lock().contains_key(b"b".as_slice()));
        overlay.stop();
        applier.join().unwrap();
    }

    #[test]
    fn a_failed_apply_refuses_later_stages_and_syncs() {
        let overlay = Arc::new(Overlay::new(1000));
        overlay.stage(vec![(TreeId::Meta, b"a".to_vec(), put(b"1"))]).unwrap();
        let applier = {
            let overlay = overlay.clone();
            std::thread::spawn(move || {
                overlay.run_applier(|_| Err("disk on fire".into()), |_| Ok(()))
            })
        };
        assert_eq!(overlay.sync(), Err("disk on fire".to_string()));
        assert!(overlay.stage(vec![(TreeId::Meta, b"b".to_vec(), Op::Remove)]).is_err());
        overlay.stop();
        applier.join().unwrap();
    }
}
