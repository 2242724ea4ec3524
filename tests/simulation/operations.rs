//! The operations the simulation runs, the tokens it presents, and how it draws both.

use outboxd::limits::IDEMPOTENCY_WINDOW_MS;
use outboxd::queue::{
    Delivery, EditFields, IdempotencyKey, LeaseToken, MessageId, MessageState, QueueId,
    QueueSettings,
};
use outboxd::random::SplitMix64;

use super::{Sim, HOUR_MS};

const IDEMPOTENCY_KEYS: [&str; 3] = ["k0", "k1", "k2"];
const LEASE_MS_CHOICES: [u64; 6] = [1, 20, 500, 5_000, 30_000, 60_000];
const ERROR_TEXTS: [&str; 4] = ["SMTP 451 try later", "", "timeout", "désolé"];
/// The retention notes' granularity (`src/queue/checkpoint.rs`): a sweep finds a message at most
/// this long after its retention ends.
const NOTE_BUCKET_MS: u64 = 1000;

/// SplitMix64 with the draws the simulation needs, so that a seed names one run exactly.
pub struct Rng(pub SplitMix64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0.next()
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0.below(bound)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// How the harness chose a lease token; shown in the failure log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The newest token of a message leased in the target queue (it may have passed its deadline).
    Current,
    /// Any token issued earlier, in any queue.
    Stale,
    /// A real or made-up id with a nonce the broker never issues.
    Forged,
    /// What a token that failed to parse becomes.
    Malformed,
    /// A token issued by another queue.
    OtherQueue,
}

/// A lease token as the harness presents it, with the delivery it came from.
#[derive(Clone, Copy, Debug)]
pub struct SimToken {
    pub kind: TokenKind,
    pub token: Option<LeaseToken>,
    /// Which delivery of the message issued the token (1 for its first lease): (id, delivery)
    /// names one delivery. 0 for forged and malformed tokens.
    pub delivery: u32,
}

/// One message of an enqueue, before its content is placed in the log.
#[derive(Clone, Debug)]
pub struct MessageSpec {
    /// Opaque to the broker; distinct bytes show that each id kept its own.
    pub content: Vec<u8>,
    pub priority: i32,
    pub attempt_count_max: Option<u32>,
    pub delivery: Delivery,
}

/// One nack item as the harness sends it.
#[derive(Clone, Debug)]
pub struct NackSpec {
    pub token: SimToken,
    pub error: String,
    pub delay_ms: Option<u64>,
    pub dead: bool,
}

/// A person's edit, before its content (if any) is placed in the log.
#[derive(Clone, Debug)]
pub struct EditSpec {
    pub content: Option<Vec<u8>>,
    pub priority: Option<i32>,
    pub deliver_at_ms: Option<u64>,
    pub fields: EditFields,
}

/// A person's action on one message.
#[derive(Clone, Debug)]
pub enum Action {
    Delete,
    Retry { reset_attempts: bool },
    Reschedule { deliver_at_ms: u64 },
    Edit(EditSpec),
}

/// One simulated operation.
#[derive(Clone, Debug)]
pub enum Operation {
    Enqueue {
        queue: &'static str,
        messages: Vec<MessageSpec>,
        idempotency: Option<IdempotencyKey>,
    },
    Lease {
        queue: &'static str,
        count_max: u32,
        lease_ms: Option<u64>,
    },
    Ack {
        queue: &'static str,
        tokens: Vec<SimToken>,
    },
    Nack {
        queue: &'static str,
        items: Vec<NackSpec>,
    },
    Extend {
        queue: &'static str,
        items: Vec<(SimToken, Option<u64>)>,
    },
    SetPaused {
        queue: &'static str,
        paused: bool,
    },
    Configure {
        queue: &'static str,
        settings: QueueSettings,
    },
    /// A person's action on message `id` (which may be removed or never have existed).
    Act {
        id: u64,
        action: Action,
    },
    /// Every dead message of the queue back to ready, in chunks read from the catalog listing.
    Redrive {
        queue: &'static str,
        reset_attempts: bool,
    },
    /// Every message of the queue in `state` deleted, in chunks.
    Purge {
        queue: &'static str,
        state: MessageState,
    },
    /// Moves the clock, then fires the timers if `expire` (the storage thread ticks before each group).
    Advance {
        step_ms: u64,
        expire: bool,
    },
    /// Fires the timers without moving the clock.
    Expire,
    /// A checkpoint: the one in flight written, or the broker's changes since the last one
    /// written to the catalog at once.
    Checkpoint,
    /// A checkpoint handed to the writer: the run goes on while it is in flight.
    BeginCheckpoint,
    /// A checkpoint whose catalog write fails (the one in flight, or one taken now).
    FailCheckpoint,
    /// The storage thread's retention sweep: the catalog's due notes, then the broker's removals.
    Sweep,
    /// A broker rebuilt from the disk (the last checkpoint plus the log after it) is compared with
    /// the live one and replaces it; `seed` is the new broker's; `checkpoint` ends the recovery
    /// with a checkpoint, as the server's does.
    Restart {
        seed: u64,
        checkpoint: bool,
    },
}

/// Queue settings a person may set: the server's defaults, nothing kept, short everything, long
/// retention, and short dead retention.
pub fn settings_preset(choice: u64) -> QueueSettings {
    match choice % 5 {
        0 => QueueSettings::default(),
        1 => QueueSettings {
            retention_ms: Some(0),
            dead_retention_ms: Some(0),
            ..QueueSettings::default()
        },
        2 => QueueSettings {
            max_attempts: Some(1),
            lease_ms: Some(20),
            backoff_initial_ms: Some(5),
            backoff_multiplier: Some(3.0),
            backoff_max_ms: Some(100),
            backoff_jitter: Some(0.0),
            retention_ms: Some(1000),
            dead_retention_ms: Some(2000),
        },
        3 => QueueSettings {
            retention_ms: Some(HOUR_MS),
            dead_retention_ms: Some(2 * HOUR_MS),
            ..QueueSettings::default()
        },
        _ => QueueSettings { dead_retention_ms: Some(500), ..QueueSettings::default() },
    }
}

impl Sim {
    /// Draws the next operation; the weights favour enqueue, lease and the clock.
    pub fn next_operation(&mut self) -> Operation {
        match self.rng.below(100) {
            0..=15 => self.enqueue_operation(),
            16..=32 => self.lease_operation(),
            33..=44 => self.ack_operation(),
            45..=53 => self.nack_operation(),
            54..=59 => self.extend_operation(),
            60..=61 => {
                Operation::SetPaused { queue: self.pick_queue(), paused: self.rng.percent(50) }
            }
            62 => Operation::Configure {
                queue: self.pick_queue(),
                settings: settings_preset(self.rng.below(5)),
            },
            63..=67 => self.act_operation(),
            68 => self.bulk_operation(),
            69..=90 => {
                Operation::Advance { step_ms: self.clock_step_ms(), expire: self.rng.percent(75) }
            }
            91..=92 => Operation::Expire,
            93..=94 => self.checkpoint_operation(),
            95..=97 => Operation::Sweep,
            // 1.5 %: a restart rebuilds and compares everything, the costliest step.
            98..=99 if self.rng.percent(75) => {
                Operation::Restart { seed: self.rng.next_u64(), checkpoint: self.rng.percent(50) }
            }
            _ => Operation::Expire,
        }
    }

    /// Mostly a checkpoint written at once, sometimes one left in flight for later steps (or a
    /// restart), sometimes one that fails.
    fn checkpoint_operation(&mut self) -> Operation {
        match self.rng.below(10) {
            0..=5 => Operation::Checkpoint,
            6..=8 => Operation::BeginCheckpoint,
            _ => Operation::FailCheckpoint,
        }
    }

    pub fn pick_queue(&mut self) -> &'static str {
        self.rng.pick(self.queue_names)
    }

    /// Usually the queue of a message that is leased now (so that tokens often hold), else any.
    fn pick_token_queue(&mut self) -> &'static str {
        let now_ms = self.model.now_ms;
        let leased: Vec<QueueId> = (self.model.iter())
            .filter(|(_, message)| message.meta.state == MessageState::Leased)
            .filter(|(_, message)| message.meta.due_at_ms > now_ms)
            .map(|(_, message)| message.meta.queue_id)
            .collect();
        if leased.is_empty() || self.rng.percent(25) {
            return self.pick_queue();
        }
        let queue_id = leased[self.rng.below(leased.len() as u64) as usize];
        self.model.queue_name(queue_id)
    }

    /// Mostly small steps (so leases and backoffs run out one by one), sometimes hours (so the 24 h
    /// idempotency window and the retention of terminal messages pass), and often exactly to a
    /// moment where something changes, or 1 ms before it, where off-by-one mistakes show.
    fn clock_step_ms(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=29 => self.rng.between(0, 20),
            30..=59 => self.rng.between(21, 5_000),
            60..=69 => self.rng.between(5_001, 120_000),
            70..=73 => self.rng.between(HOUR_MS, 30 * HOUR_MS),
            _ => self.boundary_step_ms(),
        }
    }

    /// A step to a future deadline, the end of a key's window or of a terminal message's
    /// retention (or of its retention note's second), or to 1 ms before it; 1 ms when nothing is
    /// pending.
    fn boundary_step_ms(&mut self) -> u64 {
        let now_ms = self.model.now_ms;
        let mut moments: Vec<u64> = Vec::new();
        for (_, message) in self.model.iter() {
            let meta = &message.meta;
            if meta.state.is_timed() {
                moments.push(meta.due_at_ms);
            }
            if let Some(retention_ms) = self.model.retention_ms(meta.queue_id, meta.state) {
                let end_ms = meta.updated_at_ms + retention_ms;
                moments.push(end_ms);
                moments.push(end_ms.div_ceil(NOTE_BUCKET_MS) * NOTE_BUCKET_MS);
            }
        }
        let key_ends = self.model.idempotency.values();
        moments.extend(key_ends.map(|record| record.created_at_ms + IDEMPOTENCY_WINDOW_MS));
        moments.retain(|moment_ms| *moment_ms > now_ms);
        if moments.is_empty() {
            return 1;
        }
        let moment_ms = moments[self.rng.below(moments.len() as u64) as usize];
        let early_ms = u64::from(self.rng.percent(30));
        moment_ms - now_ms - early_ms
    }

    /// A lease duration, or none for the default.
    fn lease_ms(&mut self) -> Option<u64> {
        if self.rng.percent(20) {
            None
        } else {
            Some(self.rng.pick(&LEASE_MS_CHOICES))
        }
    }

    fn enqueue_operation(&mut self) -> Operation {
        let queue = self.pick_queue();
        // Mostly small batches: the model's scans grow with the message count, and a seed needs
        // contention more than volume.
        let count =
            if self.rng.percent(75) { self.rng.between(1, 5) } else { self.rng.between(6, 20) };
        let mut messages = Vec::new();
        for index in 0..count {
            messages.push(self.new_message(index));
        }
        let idempotency = if self.rng.percent(40) {
            let key = self.rng.pick(&IDEMPOTENCY_KEYS).to_string();
            Some(IdempotencyKey { key, request_hash: if self.rng.percent(80) { 1 } else { 2 } })
        } else {
            None
        };
        Operation::Enqueue { queue, messages, idempotency }
    }

    fn new_message(&mut self, index: u64) -> MessageSpec {
        let now_ms = self.model.now_ms;
        let delivery = match self.rng.below(10) {
            0..=4 => Delivery::Now,
            5..=6 => Delivery::After { delay_ms: self.rng.between(0, 2_000) },
            7..=8 => Delivery::At { deliver_at_ms: now_ms - 5_000 + self.rng.between(0, 10_000) },
            _ => Delivery::At { deliver_at_ms: now_ms },
        };
        let attempt_count_max =
            if self.rng.percent(80) { Some(self.rng.between(1, 5) as u32) } else { None };
        let content = self.content_bytes(index);
        let priority = self.rng.between(0, 2) as i32 - 1;
        MessageSpec { content, priority, attempt_count_max, delivery }
    }

    /// Content bytes no other message has: the step, an index, and a length that varies.
    fn content_bytes(&mut self, index: u64) -> Vec<u8> {
        let mut bytes = ((self.step as u64) << 8 | index).to_le_bytes().to_vec();
        bytes.resize(8 + self.rng.below(24) as usize, b'.');
        bytes
    }

    fn lease_operation(&mut self) -> Operation {
        let queue = self.pick_queue();
        let count_max = self.rng.between(1, 8) as u32;
        Operation::Lease { queue, count_max, lease_ms: self.lease_ms() }
    }

    fn ack_operation(&mut self) -> Operation {
        let queue = self.pick_token_queue();
        let tokens = (0..self.rng.between(1, 4)).map(|_| self.token_for(queue)).collect();
        Operation::Ack { queue, tokens }
    }

    fn nack_operation(&mut self) -> Operation {
        let queue = self.pick_token_queue();
        let mut items = Vec::new();
        for _ in 0..self.rng.between(1, 3) {
            let token = self.token_for(queue);
            let delay_ms =
                if self.rng.percent(40) { Some(self.rng.between(0, 3_000)) } else { None };
            let error = self.rng.pick(&ERROR_TEXTS).to_string();
            items.push(NackSpec { token, error, delay_ms, dead: self.rng.percent(15) });
        }
        Operation::Nack { queue, items }
    }

    fn extend_operation(&mut self) -> Operation {
        let queue = self.pick_token_queue();
        let mut items = Vec::new();
        for _ in 0..self.rng.between(1, 3) {
            let token = self.token_for(queue);
            items.push((token, self.lease_ms()));
        }
        Operation::Extend { queue, items }
    }

    /// A person's action, mostly on a dead or delivered message (which the broker may no longer
    /// hold, so that the action carries the catalog's record), else on any id.
    fn act_operation(&mut self) -> Operation {
        let terminal: Vec<u64> = (self.model.iter())
            .filter(|(_, message)| !message.meta.state.is_active())
            .map(|(id, _)| id)
            .collect();
        let id = if !terminal.is_empty() && self.rng.percent(50) {
            terminal[self.rng.below(terminal.len() as u64) as usize]
        } else {
            self.rng.between(1, self.model.next_id + 1)
        };
        let now_ms = self.model.now_ms;
        let action = match self.rng.below(8) {
            0 | 1 => Action::Delete,
            2..=4 => Action::Retry { reset_attempts: self.rng.percent(40) },
            5 => Action::Reschedule { deliver_at_ms: now_ms - 2_000 + self.rng.between(0, 4_000) },
            _ => Action::Edit(self.edit_spec()),
        };
        Operation::Act { id, action }
    }

    /// An edit of one to three fields.
    fn edit_spec(&mut self) -> EditSpec {
        let now_ms = self.model.now_ms;
        let mut edit =
            EditSpec { content: None, priority: None, deliver_at_ms: None, fields: EditFields(0) };
        while edit.fields.is_empty() {
            if self.rng.percent(50) {
                edit.priority = Some(self.rng.between(0, 2) as i32 - 1);
                edit.fields = edit.fields.with(EditFields::PRIORITY);
            }
            if self.rng.percent(40) {
                edit.content = Some(self.content_bytes(0xff));
                edit.fields = edit.fields.with(EditFields::BODY);
            }
            if self.rng.percent(30) {
                edit.deliver_at_ms = Some(now_ms - 1_000 + self.rng.between(0, 3_000));
                edit.fields = edit.fields.with(EditFields::DELIVER_AT);
            }
        }
        edit
    }

    /// A redrive of a queue's dead messages, or a purge of one state (not leased: a purge skips
    /// leased messages, which the HTTP layer does not offer).
    fn bulk_operation(&mut self) -> Operation {
        let queue = self.pick_queue();
        if self.rng.percent(60) {
            return Operation::Redrive { queue, reset_attempts: self.rng.percent(50) };
        }
        let state = self.rng.pick(&[
            MessageState::Scheduled,
            MessageState::Ready,
            MessageState::Retrying,
            MessageState::Dead,
            MessageState::Delivered,
        ]);
        Operation::Purge { queue, state }
    }

    /// A token to present to `queue`: current, stale, malformed, forged or from another queue.
    fn token_for(&mut self, queue: &'static str) -> SimToken {
        match self.rng.below(100) {
            0..=49 => self.current_token(queue),
            50..=69 => self.stale_token(),
            70..=77 => SimToken { kind: TokenKind::Malformed, token: None, delivery: 0 },
            78..=89 => self.forged_token(),
            _ => self.other_queue_token(queue),
        }
    }

    /// The newest token of a message leased in `queue`, or a stale one when there is none.
    fn current_token(&mut self, queue: &str) -> SimToken {
        let model = &self.model;
        self.newest.retain(|id, _| {
            model.get(*id).is_some_and(|message| message.meta.state == MessageState::Leased)
        });
        let queue_id = self.model.queue_id(queue);
        let candidates: Vec<SimToken> = (self.newest.iter())
            .filter(|(id, _)| model.get(**id).map(|message| message.meta.queue_id) == queue_id)
            .map(|(_, token)| *token)
            .collect();
        if candidates.is_empty() {
            return self.stale_token();
        }
        candidates[self.rng.below(candidates.len() as u64) as usize]
    }

    fn stale_token(&mut self) -> SimToken {
        if self.issued.is_empty() {
            return self.forged_token();
        }
        self.issued[self.rng.below(self.issued.len() as u64) as usize]
    }

    /// An existing or made-up id with an even nonce: the broker's nonces are odd, so it never holds.
    fn forged_token(&mut self) -> SimToken {
        let id = MessageId(self.rng.between(1, self.model.next_id + 2));
        let nonce = self.rng.next_u64() & !1;
        SimToken { kind: TokenKind::Forged, token: Some(LeaseToken { id, nonce }), delivery: 0 }
    }

    /// A token issued for a message of another queue, if one turns up in a few draws.
    fn other_queue_token(&mut self, queue: &str) -> SimToken {
        let queue_id = self.model.queue_id(queue);
        for _ in 0..4 {
            let token = self.stale_token();
            let Some(lease_token) = token.token else {
                continue;
            };
            let message = self.model.get(lease_token.id.0);
            if message.is_some_and(|message| Some(message.meta.queue_id) != queue_id) {
                return SimToken { kind: TokenKind::OtherQueue, ..token };
            }
        }
        self.stale_token()
    }
}
