//! `queue_ops`: broker operations, a person's actions, checkpoints and restarts driven by the
//! bytes against a model: counts, lease exclusivity, and a recovered broker equal to the live one.
//!
//! - `clients.rs`: what producers and consumers do (enqueue, lease, ack, nack, extend);
//! - `storage.rs`: time, checkpoints, restarts, the sweep, and a person's actions.

mod clients;
mod storage;

use crate::queue::retry::RetryPolicy;
use crate::queue::{
    BodyKind, Broker, BrokerConfig, ControlError, LeaseToken, MessageId, MessageMeta, MessageState,
    Op, QueueId, QueueSettings, ALL_STATES,
};
use crate::store::catalog::CheckpointJob;
use crate::store::codec::{self, ContentRef};
use crate::store::model::DiskModel;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

/// The most operations one input may drive.
const OPERATION_COUNT_MAX: usize = 256;
/// The queues the operations use; a token of one presented to the other must be refused.
const QUEUE_NAMES: [&str; 2] = ["emails", "webhooks"];
/// The virtual clock's start: any realistic epoch time.
const START_MS: u64 = 1_800_000_000_000;
/// The longest backoff the fuzzed broker uses, with or without queue settings.
const BACKOFF_MAX_MS: u64 = 1000;
/// How long the fuzzed broker keeps delivered messages by default.
const RETENTION_MS: u64 = 600_000;
/// Catalog pages one sweep reads, small like the broker's bounded chunks.
const SWEEP_PAGE_LIMIT: usize = 2;

/// Interprets the bytes as broker operations with a virtual clock, checking invariants after each.
///
/// Operations: enqueue (with idempotency keys, delays, priorities, attempt limits), lease, ack,
/// nack, extend (with tokens from earlier grants, stale or forged ones too), moving the clock with
/// or without firing timers, checkpoints (written at once, left in flight, or failed), restarts
/// (the last checkpoint plus the log after it, through the server's own recovery), and a person's actions: pause, configure, delete, retry,
/// reschedule, edit, and the retention sweep. The broker is driven as the storage thread drives
/// it: each request's contents and ops are one log frame (`store::model::DiskModel`). A small model
/// predicts the outcomes; the checks are:
/// - every queue's per-state counts equal the states of its messages as a reader sees them (the
///   broker's record, else the catalog's), and add up to the messages accepted and not removed;
/// - a lease token works exactly while its lease is the message's current one and unexpired, so no
///   message is held by two consumers at once, and an acked or removed message is never leased
///   again or back; a person's action never touches a leased message;
/// - ids are handed out consecutively, and idempotent retries return the original ids;
/// - a broker recovered from the disk shows exactly what the live one shows (`DiskModel::compare`,
///   the check the simulation makes too), and the run goes on with it;
/// - after every checkpoint the catalog agrees with itself: its indexes count exactly what its
///   pages hold, and it keeps histories and contents exactly for the messages that have them.
pub fn queue_ops(data: &[u8]) {
    let mut input = Input { bytes: data };
    let mut simulation = Simulation::new();
    for _ in 0..OPERATION_COUNT_MAX {
        let Some(code) = input.byte() else {
            break;
        };
        let done = match code % 22 {
            0..=3 => simulation.enqueue(&mut input),
            4..=6 => simulation.lease(&mut input),
            7 | 8 => simulation.ack(&mut input),
            9 | 10 => simulation.nack(&mut input),
            11 => simulation.extend(&mut input),
            12 | 13 => simulation.advance(&mut input, true),
            14 => simulation.advance(&mut input, false),
            15 => simulation.restart(&mut input),
            16 => simulation.pause(&mut input),
            17 => simulation.configure(&mut input),
            18 => simulation.sweep(),
            19 => simulation.checkpoint_step(&mut input),
            _ => simulation.act(code % 22 == 20, &mut input),
        };
        if done.is_none() {
            break;
        }
        // Housekeeping after every request: ready messages over the budget leave memory.
        (simulation.disk.housekeeping(&mut simulation.broker)).expect("an in-memory catalog");
        simulation.check_counts();
    }
    simulation.restart_with(true);
}

/// The fuzz input, read front to back; an operation whose parameters run out is not run.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(byte)
    }
}

/// A lease the model believes a consumer holds; kept until the broker must have expired it.
#[derive(Clone, Copy, Debug)]
struct Held {
    queue: usize,
    nonce: u64,
    deadline_ms: u64,
    attempt_count: u32,
    attempt_count_max: u32,
}

/// What the model remembers of an idempotency key.
#[derive(Clone, Copy, Debug)]
struct KeyUse {
    request_hash: u64,
    first_id: u64,
    count: u32,
    created_at_ms: u64,
}

/// Queue settings a person may set, from "as the server says" to "remove everything at once".
fn settings_preset(choice: u8) -> QueueSettings {
    match choice % 3 {
        0 => QueueSettings::default(),
        1 => QueueSettings {
            retention_ms: Some(0),
            dead_retention_ms: Some(0),
            ..QueueSettings::default()
        },
        _ => QueueSettings {
            max_attempts: Some(1),
            lease_ms: Some(5),
            backoff_initial_ms: Some(1),
            backoff_multiplier: Some(3.0),
            backoff_max_ms: Some(20),
            backoff_jitter: Some(0.0),
            retention_ms: Some(100),
            dead_retention_ms: Some(200),
        },
    }
}

/// The broker under test, the disk its ops go to, and the model of what it must do.
struct Simulation {
    broker: Broker,
    disk: DiskModel,
    now_ms: u64,
    restart_count: u64,
    /// The ops of the request being run.
    ops: Vec<Op>,
    /// A checkpoint handed to the writer and not finished yet.
    pending: Option<CheckpointJob>,
    /// Per queue: whether it exists, its settings and pause flag as last set.
    created: [bool; 2],
    settings: [QueueSettings; 2],
    paused: [bool; 2],
    /// Per queue: messages accepted (duplicates excluded).
    accepted_counts: [u64; 2],
    /// The queue of each message, at index `id - 1`.
    queue_of: Vec<usize>,
    next_id: u64,
    /// Leased messages: exactly the broker's leased set (expired ones leave at `expire_due`).
    held: HashMap<MessageId, Held>,
    acked: HashSet<MessageId>,
    /// Messages no reader finds any more (deleted, swept, or a retention of 0).
    removed: HashSet<MessageId>,
    /// Messages a person retried with their attempts kept.
    attempts_kept: HashSet<MessageId>,
    /// Every token ever granted, with its queue, to be presented again (often stale).
    tokens: Vec<(usize, LeaseToken)>,
    keys: HashMap<(usize, u8), KeyUse>,
}

fn broker_config() -> BrokerConfig {
    BrokerConfig {
        attempt_count_max: 3,
        retry: RetryPolicy {
            initial_ms: 100,
            multiplier: 2.0,
            max_ms: BACKOFF_MAX_MS,
            jitter: 0.5,
        },
        lease_ms: 1000,
        retention_ms: RETENTION_MS,
        history_keep_count: 4,
        // Most ready messages go to the catalog and come back (`queue/cold.rs`).
        ready_resident_max: 8,
    }
}

impl Simulation {
    fn new() -> Simulation {
        Simulation {
            broker: Broker::new(broker_config(), START_MS, crate::random::mix64(0)),
            disk: DiskModel::new(),
            now_ms: START_MS,
            restart_count: 0,
            ops: Vec::new(),
            pending: None,
            created: [false; 2],
            settings: Default::default(),
            paused: [false; 2],
            accepted_counts: [0; 2],
            queue_of: Vec::new(),
            next_id: 1,
            held: HashMap::new(),
            acked: HashSet::new(),
            removed: HashSet::new(),
            attempts_kept: HashSet::new(),
            tokens: Vec::new(),
            keys: HashMap::new(),
        }
    }

    /// The model's index of a queue id the broker handed out.
    fn queue_index(&self, queue_id: QueueId) -> usize {
        QUEUE_NAMES
            .iter()
            .position(|name| self.broker.queue_id(name) == Some(queue_id))
            .expect("a queue of the simulation")
    }

    /// Ends the request: checks that its removals never take a leased message and that an
    /// ordinary removal is one the model expects, then logs its ops as one frame.
    fn log(&mut self) {
        for op in &self.ops {
            if let Op::Remove { ids, .. } = op {
                for id in ids {
                    assert!(!self.held.contains_key(id), "leased {id} was removed");
                    assert!(self.removed.insert(*id), "{id} was removed twice");
                }
            }
        }
        self.disk.log(&self.ops);
        self.ops.clear();
    }

    /// Every queue's counts equal its messages' states as a reader sees them, and add up to what
    /// was accepted and not removed; acked messages stay delivered until they are removed, and
    /// removed ones never come back.
    fn check_counts(&self) {
        let observed = self.disk.observe_all(&self.broker).expect("reading the in-memory catalog");
        let mut census: HashMap<(QueueId, MessageState), u64> = HashMap::new();
        let mut gone = [0u64; 2];
        for (index, record) in observed.iter().enumerate() {
            let id = MessageId(index as u64 + 1);
            match record {
                Some(meta) => {
                    assert!(!self.removed.contains(&id), "removed {id} is back: {meta:?}");
                    if self.acked.contains(&id) {
                        assert_eq!(meta.state, MessageState::Delivered, "{id} was acked");
                    }
                    if self.held.contains_key(&id) {
                        assert_eq!(meta.state, MessageState::Leased, "{id} is held");
                    }
                    *census.entry((meta.queue_id, meta.state)).or_default() += 1;
                }
                None => {
                    assert!(self.removed.contains(&id), "{id} vanished");
                    assert!(!self.held.contains_key(&id), "held {id} vanished");
                    gone[self.queue_of[index]] += 1;
                }
            }
        }
        let mut active_count = 0;
        for (queue, name) in QUEUE_NAMES.iter().enumerate() {
            let Some(stats) = self.broker.queue_stats(name) else {
                assert!(!self.created[queue], "queue {name} vanished");
                continue;
            };
            let queue_id = self.broker.queue_id(name).expect("the queue exists");
            for state in ALL_STATES {
                let seen = census.get(&(queue_id, state)).copied().unwrap_or(0);
                assert_eq!(stats.counts[state.index()], seen, "queue {name}, {}", state.name());
            }
            let total: u64 = stats.counts.iter().sum();
            assert_eq!(total, self.accepted_counts[queue] - gone[queue], "queue {name}: {stats:?}");
            active_count += ALL_STATES
                .iter()
                .filter(|state| state.is_active())
                .map(|state| stats.counts[state.index()])
                .sum::<u64>();
        }
        // Active messages are held in memory, or ready and left in the catalog.
        assert_eq!(self.broker.active_count() as u64 + self.broker.cold_count(), active_count);
    }
}

/// Content bytes for a fuzzed message, as the HTTP layer would have encoded them.
fn fuzz_content(timing: u8, settings: u8) -> Vec<u8> {
    let headers = vec![("kind".to_string(), "fuzz".to_string())];
    let body = [timing, settings];
    codec::encode_content(&ContentRef {
        headers: &headers,
        body_kind: BodyKind::Bytes,
        body: &body,
    })
}

/// The kinds of a person's action, for predicting their outcome.
#[derive(Clone, Copy, Debug)]
enum Action {
    Delete,
    Retry,
    /// Reschedule or edit: allowed in every state but leased and delivered.
    Move,
}

/// Predicts a person's action from the message's state before it, and checks the result.
fn check_action(
    id: MessageId,
    action: Action,
    before: Option<&MessageMeta>,
    outcome: &Result<Option<MessageMeta>, ControlError>,
) {
    use MessageState::*;
    let expected = match (before.map(|meta| meta.state), action) {
        (None, _) => Err(ControlError::NotFound),
        (Some(Leased), _) => Err(ControlError::Leased),
        (Some(_), Action::Delete) => Ok(()),
        (Some(Dead | Retrying), Action::Retry) => Ok(()),
        (Some(state), Action::Retry) => Err(ControlError::WrongState(state)),
        (Some(Delivered), Action::Move) => Err(ControlError::WrongState(Delivered)),
        (Some(_), Action::Move) => Ok(()),
    };
    let got = outcome.as_ref().map(|_| ()).map_err(|error| *error);
    assert_eq!(got, expected, "{action:?} of {id} in {before:?}");
    if let (Action::Retry, Ok(Some(meta))) = (action, outcome) {
        assert_eq!(meta.state, Ready, "a retried message is ready");
    }
}
