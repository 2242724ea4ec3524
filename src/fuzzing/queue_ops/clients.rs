//! What producers and consumers do to the simulated broker, each checked against the model.

use super::*;
use crate::queue::{
    ContentLocation, Delivery, EnqueueError, ExtendItem, FailOutcome, Grant, IdempotencyKey,
    LeaseToken, MessageId, MessageState, NackItem, NewMessage,
};

impl Simulation {
    /// Enqueues 1-3 messages, maybe under an idempotency key, and checks the ids handed out.
    pub(super) fn enqueue(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let count = 1 + usize::from((shape >> 1) % 3);
        let key_choice = (shape >> 3) & 3;
        let request_hash = u64::from(shape >> 5);
        let mut plans = Vec::with_capacity(count);
        for _ in 0..count {
            plans.push((input.byte()?, input.byte()?));
        }
        let contents: Vec<Vec<u8>> =
            plans.iter().map(|(timing, settings)| fuzz_content(*timing, *settings)).collect();
        let locations = self.disk.place(&contents);
        let messages = plans
            .iter()
            .zip(locations)
            .map(|((timing, settings), content)| self.new_message(*timing, *settings, content))
            .collect();
        let key = (key_choice != 0)
            .then(|| IdempotencyKey { key: format!("key-{key_choice}"), request_hash });
        let outcome =
            self.broker.enqueue(self.now_ms, QUEUE_NAMES[queue], messages, key, &mut self.ops);
        match self.keys.get(&(queue, key_choice)).copied() {
            Some(used) if used.request_hash != request_hash => {
                assert_eq!(outcome, Err(EnqueueError::IdempotencyConflict));
                assert!(self.ops.is_empty(), "a refused batch changed something");
            }
            Some(used) => {
                let outcome = outcome.expect("a repeated request is accepted");
                assert!(outcome.duplicate, "a repeated request was stored twice");
                assert_eq!((outcome.first_id.0, outcome.count), (used.first_id, used.count));
                assert!(self.ops.is_empty(), "a repeated request changed something");
            }
            None => {
                let outcome = outcome.expect("a new batch is accepted");
                assert!(!outcome.duplicate);
                assert_eq!(outcome.first_id, MessageId(self.next_id), "ids skip or repeat");
                assert_eq!(outcome.count as usize, count);
                if key_choice != 0 {
                    let used = KeyUse {
                        request_hash,
                        first_id: self.next_id,
                        count: outcome.count,
                        created_at_ms: self.now_ms,
                    };
                    self.keys.insert((queue, key_choice), used);
                }
                self.next_id += count as u64;
                self.accepted_counts[queue] += count as u64;
                self.queue_of.extend(std::iter::repeat_n(queue, count));
                self.created[queue] = true;
            }
        }
        self.log();
        Some(())
    }

    /// A message whose delivery, priority and attempt limit come from two input bytes.
    pub(super) fn new_message(
        &self,
        timing: u8,
        settings: u8,
        content: ContentLocation,
    ) -> NewMessage {
        let step_ms = u64::from(timing >> 2);
        let delivery = match timing % 4 {
            0 | 1 => Delivery::Now,
            2 => Delivery::After { delay_ms: 1 + step_ms * 37 },
            // Up to 100 ms in the past (ready at once) or about 3 s ahead.
            _ => Delivery::At { deliver_at_ms: (self.now_ms - 100).saturating_add(step_ms * 50) },
        };
        let attempt_choice = u32::from((settings >> 2) % 4);
        NewMessage {
            content,
            priority: i32::from(settings & 3) - 1,
            attempt_count_max: (attempt_choice != 0).then_some(attempt_choice),
            delivery,
        }
    }

    /// Leases 1-4 messages and checks each grant against the model.
    pub(super) fn lease(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let lease_ms = 1 + u64::from(input.byte()?) * 10;
        let queue = usize::from(shape & 1);
        let count_max = 1 + u32::from((shape >> 1) % 4);
        self.load_cold(QUEUE_NAMES[queue], count_max);
        let grants = self.broker.lease(
            self.now_ms,
            QUEUE_NAMES[queue],
            count_max,
            Some(lease_ms),
            &mut self.ops,
        );
        assert!(grants.len() <= count_max as usize);
        if self.paused[queue] {
            assert!(grants.is_empty(), "a paused queue leased");
        }
        for pair in grants.windows(2) {
            let (first, second) = (&pair[0].meta, &pair[1].meta);
            let in_order = first.priority > second.priority
                || (first.priority == second.priority && pair[0].id < pair[1].id);
            assert!(in_order, "grants are not in priority, then id, order");
        }
        for grant in &grants {
            self.check_grant(queue, grant, lease_ms);
        }
        if grants.len() < count_max as usize && !self.paused[queue] {
            let ready_count = self
                .broker
                .queue_stats(QUEUE_NAMES[queue])
                .map_or(0, |stats| stats.counts[MessageState::Ready.index()]);
            assert_eq!(ready_count, 0, "a lease returned short while messages were ready");
        }
        self.log();
        Some(())
    }

    /// A grant is of a message nobody holds, never acked or removed, and its record is leased.
    pub(super) fn check_grant(&mut self, queue: usize, grant: &Grant, lease_ms: u64) {
        let meta = &grant.meta;
        assert!(!self.acked.contains(&grant.id), "acked {} leased again", grant.id);
        assert!(!self.removed.contains(&grant.id), "removed {} leased", grant.id);
        if let Some(held) = self.held.get(&grant.id) {
            panic!(
                "{} leased again while leased until {} (now {})",
                grant.id, held.deadline_ms, self.now_ms
            );
        }
        assert_eq!(grant.token.id, grant.id);
        assert_eq!(meta.state, MessageState::Leased);
        assert_eq!(Some(meta.queue_id), self.broker.queue_id(QUEUE_NAMES[queue]));
        assert_eq!(meta.lease_nonce, grant.token.nonce);
        assert_eq!(meta.due_at_ms, self.now_ms + lease_ms);
        assert!(meta.attempt_count >= 1, "a delivery with no attempt counted");
        // A person may send a dead message back with its attempts kept (see `act`): one more try
        // past the limit. Otherwise a message is never delivered more often than its limit allows.
        if !self.attempts_kept.contains(&grant.id) {
            assert!(meta.attempt_count <= meta.attempt_count_max, "{meta:?}");
        }
        let held = Held {
            queue,
            nonce: grant.token.nonce,
            deadline_ms: meta.due_at_ms,
            attempt_count: meta.attempt_count,
            attempt_count_max: meta.attempt_count_max,
        };
        self.held.insert(grant.id, held);
        self.tokens.push((queue, grant.token));
    }

    /// A token to present: mostly one granted earlier (current or stale), sometimes a forgery.
    pub(super) fn pick_token(&self, choice: u8) -> Option<LeaseToken> {
        if self.tokens.is_empty() || choice % 8 == 7 {
            return match (choice >> 3) % 3 {
                0 => None,
                1 => Some(LeaseToken { id: MessageId(u64::from(choice >> 5)), nonce: 1 }),
                _ => self
                    .tokens
                    .last()
                    .map(|(_, token)| LeaseToken { id: token.id, nonce: token.nonce ^ 2 }),
            };
        }
        Some(self.tokens[usize::from(choice) % self.tokens.len()].1)
    }

    /// The lease a token holds in `queue` right now, per the model: the broker must agree.
    pub(super) fn holding(
        &self,
        queue: usize,
        token: Option<LeaseToken>,
    ) -> Option<(MessageId, Held)> {
        let token = token?;
        let held = self.held.get(&token.id)?;
        let holds =
            held.queue == queue && held.nonce == token.nonce && held.deadline_ms > self.now_ms;
        holds.then_some((token.id, *held))
    }

    /// Acks 1-3 tokens; exactly those whose lease is current succeed.
    pub(super) fn ack(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut tokens = Vec::new();
        for _ in 0..1 + (shape >> 1) % 3 {
            tokens.push(self.pick_token(input.byte()?));
        }
        let outcomes = self.broker.ack(self.now_ms, QUEUE_NAMES[queue], &tokens, &mut self.ops);
        assert_eq!(outcomes.len(), tokens.len());
        for (token, outcome) in tokens.iter().zip(&outcomes) {
            let expected = self.holding(queue, *token);
            assert_eq!(outcome.is_ok(), expected.is_some(), "ack of {token:?}: {outcome:?}");
            if let Some((id, _)) = expected {
                self.held.remove(&id);
                self.acked.insert(id);
                if self.retention_ms(queue, MessageState::Delivered) == Some(0) {
                    self.removed.insert(id);
                }
            }
        }
        self.log();
        Some(())
    }

    /// How long a terminal message of the queue is kept, under its current settings.
    pub(super) fn retention_ms(&self, queue: usize, state: MessageState) -> Option<u64> {
        let settings = &self.settings[queue];
        match state {
            MessageState::Delivered => Some(settings.retention_ms.unwrap_or(RETENTION_MS)),
            MessageState::Dead => settings.dead_retention_ms,
            _ => None,
        }
    }

    /// Nacks 1-2 tokens, with or without a delay or a dead-letter request.
    pub(super) fn nack(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut items = Vec::new();
        for _ in 0..1 + (shape >> 1) % 2 {
            let token = self.pick_token(input.byte()?);
            let options = input.byte()?;
            items.push(NackItem {
                token,
                error: format!("failure {options}"),
                delay_ms: (options & 1 == 1).then_some(u64::from(options >> 2) * 13),
                dead: options & 2 == 2,
            });
        }
        let expected_items = items.clone();
        let outcomes = self.broker.nack(self.now_ms, QUEUE_NAMES[queue], items, &mut self.ops);
        assert_eq!(outcomes.len(), expected_items.len());
        for (item, outcome) in expected_items.iter().zip(&outcomes) {
            let Some((id, held)) = self.holding(queue, item.token) else {
                assert!(outcome.is_err(), "nack of {:?} succeeded", item.token);
                continue;
            };
            let outcome = outcome.unwrap_or_else(|refusal| panic!("nack refused: {refusal:?}"));
            self.held.remove(&id);
            let dead = item.dead || held.attempt_count >= held.attempt_count_max;
            match outcome {
                FailOutcome::Dead => {
                    assert!(dead, "{id} went dead early");
                    if self.retention_ms(queue, MessageState::Dead) == Some(0) {
                        self.removed.insert(id);
                    }
                }
                FailOutcome::Retrying { next_attempt_at_ms } => {
                    assert!(!dead, "{id} retries after its last attempt");
                    let delay_ms = next_attempt_at_ms - self.now_ms;
                    match item.delay_ms {
                        Some(asked_ms) => assert_eq!(delay_ms, asked_ms),
                        None => assert!((1..=BACKOFF_MAX_MS).contains(&delay_ms)),
                    }
                }
            }
        }
        self.log();
        Some(())
    }

    /// Extends 1-2 leases; a current lease moves to now + lease_ms, others are refused.
    pub(super) fn extend(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut items = Vec::new();
        for _ in 0..1 + (shape >> 1) % 2 {
            let token = self.pick_token(input.byte()?);
            items.push(ExtendItem { token, lease_ms: Some(1 + u64::from(input.byte()?) * 10) });
        }
        let outcomes = self.broker.extend(self.now_ms, QUEUE_NAMES[queue], &items, &mut self.ops);
        assert_eq!(outcomes.len(), items.len());
        for (item, outcome) in items.iter().zip(&outcomes) {
            match self.holding(queue, item.token) {
                Some((id, mut held)) => {
                    let deadline_ms = self.now_ms + item.lease_ms.expect("asked");
                    assert_eq!(*outcome, Ok(deadline_ms), "extend of {:?}", item.token);
                    held.deadline_ms = deadline_ms;
                    self.held.insert(id, held);
                }
                None => assert!(outcome.is_err(), "extend of {:?} succeeded", item.token),
            }
        }
        self.log();
        Some(())
    }
}
