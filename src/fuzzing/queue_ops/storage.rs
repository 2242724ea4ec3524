//! Time, checkpoints, restarts, the retention sweep and a person's actions on the simulated broker.

use super::*;
use crate::limits::IDEMPOTENCY_WINDOW_MS;
use crate::queue::{Edit, EditFields, MessageId, MessageMeta, MessageState, Op};
use std::collections::HashSet;

impl Simulation {
    /// Moves the clock forward (milliseconds to days) and, when `expire`, fires every due timer.
    ///
    /// Without `expire` the operations that follow run before the timers fire, as requests do
    /// when they reach the storage thread between two ticks: a lease at its deadline must already
    /// be refused.
    pub(super) fn advance(&mut self, input: &mut Input, expire: bool) -> Option<()> {
        let step = input.byte()?;
        let units = u64::from(step & 63);
        self.now_ms += match step >> 6 {
            0 => units,
            1 => units * 50,
            2 => units * 1000,
            _ => units * 3_600_000,
        };
        if !expire {
            return Some(());
        }
        self.broker.expire_due(self.now_ms, &mut self.ops);
        self.forget_expired();
        self.log();
        if let Some(deadline_ms) = self.broker.next_deadline_ms() {
            assert!(deadline_ms > self.now_ms, "a due timer survived expire_due");
        }
        for id in (1..self.next_id).map(MessageId) {
            if let Some(meta) = self.broker.active_meta(id).filter(|meta| meta.state.is_timed()) {
                assert!(meta.due_at_ms > self.now_ms, "{id} is overdue: {meta:?}");
            }
        }
        Some(())
    }

    /// Drops what expiry ends in the model: past leases (a dead one of a queue that keeps no dead
    /// messages is gone) and idempotency keys out of their window.
    pub(super) fn forget_expired(&mut self) {
        let now_ms = self.now_ms;
        let expired: Vec<(MessageId, Held)> = (self.held.iter())
            .filter(|(_, held)| held.deadline_ms <= now_ms)
            .map(|(id, held)| (*id, *held))
            .collect();
        for (id, held) in expired {
            self.held.remove(&id);
            let dead = held.attempt_count >= held.attempt_count_max;
            if dead && self.retention_ms(held.queue, MessageState::Dead) == Some(0) {
                self.removed.insert(id);
            }
        }
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
    }

    /// A checkpoint, as the server takes them (the one in flight written, if there is one).
    pub(super) fn checkpoint(&mut self) {
        let job = match self.pending.take() {
            Some(job) => job,
            None => self.disk.begin_checkpoint(&mut self.broker, self.now_ms),
        };
        (self.disk.finish_checkpoint(&mut self.broker, job)).expect("an in-memory checkpoint");
        if let Err(difference) = self.disk.check_catalog() {
            panic!("the catalog disagrees with itself after a checkpoint: {difference}");
        }
    }

    /// A checkpoint written at once, left in flight while later operations run (as the storage
    /// thread goes on while the checkpoint writer works), or failed (its changes go into the next).
    pub(super) fn checkpoint_step(&mut self, input: &mut Input) -> Option<()> {
        match (input.byte()? % 3, self.pending.take()) {
            (1, None) => {
                self.pending = Some(self.disk.begin_checkpoint(&mut self.broker, self.now_ms));
            }
            (2, pending) => {
                let job = pending
                    .unwrap_or_else(|| self.disk.begin_checkpoint(&mut self.broker, self.now_ms));
                self.disk.fail_checkpoint(&mut self.broker, job);
            }
            (_, pending) => {
                self.pending = pending;
                self.checkpoint();
            }
        }
        Some(())
    }

    /// Replaces the broker with one rebuilt from the disk, as a restart does (with a checkpoint
    /// first, and after, as the input says), and checks that it shows exactly what the old one did.
    pub(super) fn restart(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        if choice & 1 == 1 {
            self.checkpoint();
        }
        self.restart_with(choice & 2 == 2);
        Some(())
    }

    pub(super) fn restart_with(&mut self, checkpoint_after: bool) {
        // A checkpoint in flight is lost: recovery starts from the last durable one.
        self.pending = None;
        self.restart_count += 1;
        let seed = crate::random::mix64(self.restart_count);
        let recovered = (self.disk.recover(broker_config(), self.now_ms, seed))
            .unwrap_or_else(|error| panic!("recovery failed: {error}"));
        if let Err(difference) = self.disk.compare(&self.broker, &recovered, self.now_ms) {
            panic!("the broker recovered from the disk differs from the live one: {difference}");
        }
        self.broker = recovered;
        // The storage thread's first tick forgets the keys past their window.
        self.broker.forget_idempotency(self.now_ms);
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > self.now_ms);
        if checkpoint_after {
            self.checkpoint();
        }
    }

    /// Pauses or resumes a queue: a paused queue leases nothing.
    pub(super) fn pause(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let paused = choice & 2 != 0;
        let found = self.broker.set_paused(self.now_ms, QUEUE_NAMES[queue], paused, &mut self.ops);
        assert_eq!(found, self.created[queue], "set_paused found the wrong queues");
        if found {
            self.paused[queue] = paused;
        }
        self.log();
        Some(())
    }

    /// Sets a queue's overrides (creating it), from a few presets.
    pub(super) fn configure(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let settings = settings_preset(choice >> 1);
        self.broker.configure(self.now_ms, QUEUE_NAMES[queue], settings.clone(), &mut self.ops);
        let stats = self.broker.queue_stats(QUEUE_NAMES[queue]).expect("configure creates");
        assert_eq!(stats.settings, settings);
        self.created[queue] = true;
        self.settings[queue] = settings;
        self.log();
        Some(())
    }

    /// The storage thread's sweep: the catalog's due retention notes name candidates, and the
    /// broker removes exactly those whose retention (under their queue's current settings) passed.
    pub(super) fn sweep(&mut self) -> Option<()> {
        let read = (self.disk.sweep(&self.broker, self.now_ms, SWEEP_PAGE_LIMIT))
            .expect("reading the in-memory catalog");
        let mut due = HashSet::new();
        for (id, _) in &read.candidates {
            let current = self.disk.observe(&self.broker, *id);
            if current.as_ref().is_some_and(|meta| self.retention_passed(meta)) {
                due.insert(*id);
            }
        }
        let count = self.broker.expire_retained(self.now_ms, read.candidates, &mut self.ops);
        let removed: HashSet<MessageId> = (self.ops.iter())
            .flat_map(|op| match op {
                Op::Remove { ids, .. } => ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(removed, due, "the sweep removed other messages than were due");
        assert_eq!(count, removed.len() as u64);
        self.log();
        Some(())
    }

    /// Whether a terminal message's retention, under its queue's current settings, passed.
    pub(super) fn retention_passed(&self, meta: &MessageMeta) -> bool {
        let retention_ms = self.retention_ms(self.queue_index(meta.queue_id), meta.state);
        retention_ms.is_some_and(|retention_ms| meta.updated_at_ms + retention_ms <= self.now_ms)
    }

    /// Reads back the cold pages a lease of `count_max` reaches, as the storage thread's loader
    /// does; every message counted cold must be in its page.
    pub(super) fn load_cold(&mut self, queue: &str, count_max: u32) {
        let Some(queue_id) = self.broker.queue_id(queue) else { return };
        for page in self.broker.cold_ahead(queue_id, count_max as usize).pages {
            let records = self.disk.catalog().page(page).expect("an in-memory catalog page");
            let missing = self.broker.load_cold(queue_id, page, records);
            assert_eq!(missing, 0, "cold page {page} lacks counted messages");
        }
    }

    /// What the storage thread passes as `stored`: nothing when the broker holds the message,
    /// else the catalog's record.
    pub(super) fn stored(&self, id: MessageId) -> Option<MessageMeta> {
        if self.broker.is_resident(id) {
            return None;
        }
        self.disk.observe(&self.broker, id)
    }

    /// A person's action on one message: delete, retry, reschedule or edit (`delete_or_retry`
    /// picks between the first two, the input between the others).
    pub(super) fn act(&mut self, delete_or_retry: bool, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let detail = input.byte()?;
        let id = MessageId(1 + u64::from(choice) % self.next_id);
        let before = self.disk.observe(&self.broker, id);
        assert_eq!(
            before.as_ref().is_some_and(|meta| meta.state == MessageState::Leased),
            self.held.contains_key(&id),
            "{id}: the model's leases and the broker disagree"
        );
        let (stored, now_ms) = (self.stored(id), self.now_ms);
        let edits_content = !delete_or_retry && choice & 3 == 3;
        let content = edits_content.then(|| fuzz_content(choice, detail));
        let placed = self.disk.place(content.as_slice()).first().copied();
        let outcome = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => self.broker.delete(now_ms, id, stored, &mut self.ops).map(|()| None),
            (true, false) => {
                self.broker.retry(now_ms, id, stored, detail & 1 == 0, &mut self.ops).map(Some)
            }
            (false, true) => {
                let deliver_at_ms = (now_ms - 500).saturating_add(u64::from(detail) * 10);
                self.broker.reschedule(now_ms, id, stored, deliver_at_ms, &mut self.ops).map(Some)
            }
            (false, false) => {
                let mut fields = EditFields::default().with(EditFields::PRIORITY);
                if placed.is_some() {
                    fields = fields.with(EditFields::BODY);
                }
                let edit = Edit {
                    content: placed,
                    priority: Some(i32::from(detail % 5) - 2),
                    deliver_at_ms: None,
                    fields,
                };
                self.broker.edit(now_ms, id, stored, edit, &mut self.ops).map(Some)
            }
        };
        let action = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => Action::Delete,
            (true, false) => Action::Retry,
            _ => Action::Move,
        };
        check_action(id, action, before.as_ref(), &outcome);
        if outcome.is_err() {
            assert!(self.ops.is_empty(), "a refused action changed something");
        }
        // A dead message that a person retries without a reset, or reschedules, keeps its
        // attempt count, so its next delivery is one past its limit.
        let was_dead = before.as_ref().is_some_and(|meta| meta.state == MessageState::Dead);
        let reset = matches!(action, Action::Retry) && detail & 1 == 0;
        if was_dead && outcome.is_ok() && !reset {
            self.attempts_kept.insert(id);
        }
        self.log();
        if outcome.is_ok() && matches!(action, Action::Delete) {
            assert!(self.removed.contains(&id), "a delete of {id} that succeeded removed nothing");
        }
        Some(())
    }
}
