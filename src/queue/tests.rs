//! Broker unit tests: every operation with a virtual clock, the ops each one logs, and recovery
//! (checkpoint plus replay, through the same code as a restart) from what was logged.

use super::*;
use crate::queue::message::{LeaseToken, ALL_STATES};
use crate::store::model::DiskModel;

const NOW: u64 = 1_000_000;

fn config() -> BrokerConfig {
    BrokerConfig {
        attempt_count_max: 3,
        retry: RetryPolicy { initial_ms: 100, multiplier: 2.0, max_ms: 1000, jitter: 0.0 },
        lease_ms: 1000,
        retention_ms: 60_000,
        history_keep_count: 5,
        ready_resident_max: 1_000_000,
    }
}

mod cold;

/// A broker and the disk its ops go to, driven the way the storage thread drives them.
struct Harness {
    broker: Broker,
    disk: DiskModel,
    /// Ops of the last call.
    ops: Vec<Op>,
}

/// A message to enqueue: its priority and delivery.
#[derive(Clone, Copy)]
struct Plan {
    priority: i32,
    delivery: Delivery,
}

fn message(priority: i32) -> Plan {
    Plan { priority, delivery: Delivery::Now }
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(config())
    }

    fn with_config(config: BrokerConfig) -> Harness {
        Harness { broker: Broker::new(config, NOW, 1), disk: DiskModel::new(), ops: Vec::new() }
    }

    /// Logs what the last call decided, as one frame.
    fn log(&mut self) {
        self.disk.log(&self.ops);
    }

    fn try_enqueue(
        &mut self,
        now_ms: u64,
        queue: &str,
        plans: Vec<Plan>,
        key: Option<IdempotencyKey>,
    ) -> Result<EnqueueOutcome, EnqueueError> {
        let contents: Vec<Vec<u8>> =
            plans.iter().enumerate().map(|(index, _)| vec![index as u8; 3]).collect();
        let locations = self.disk.place(&contents);
        let messages = plans
            .iter()
            .zip(locations)
            .map(|(plan, content)| NewMessage {
                content,
                priority: plan.priority,
                attempt_count_max: None,
                delivery: plan.delivery,
            })
            .collect();
        self.ops.clear();
        let outcome = self.broker.enqueue(now_ms, queue, messages, key, &mut self.ops);
        self.log();
        outcome
    }

    fn enqueue(&mut self, now_ms: u64, plans: Vec<Plan>) -> Vec<MessageId> {
        self.try_enqueue(now_ms, "q", plans, None).unwrap().ids().collect()
    }

    fn lease(&mut self, now_ms: u64, count_max: u32) -> Vec<Grant> {
        self.ops.clear();
        let grants = self.broker.lease(now_ms, "q", count_max, Some(1000), &mut self.ops);
        self.log();
        grants
    }

    fn ack(&mut self, now_ms: u64, queue: &str, tokens: &[Option<LeaseToken>]) -> Vec<AckOutcome> {
        self.ops.clear();
        let outcomes = self.broker.ack(now_ms, queue, tokens, &mut self.ops);
        self.log();
        outcomes
    }

    fn nack(&mut self, now_ms: u64, items: Vec<NackItem>) -> Vec<NackOutcome> {
        self.ops.clear();
        let outcomes = self.broker.nack(now_ms, "q", items, &mut self.ops);
        self.log();
        outcomes
    }

    fn expire(&mut self, now_ms: u64) {
        self.ops.clear();
        self.broker.expire_due(now_ms, &mut self.ops);
        self.log();
    }

    /// Runs a person's action (it gets the broker, the stored record and the op list).
    fn act<T>(
        &mut self,
        id: MessageId,
        action: impl FnOnce(&mut Broker, Option<MessageMeta>, &mut Vec<Op>) -> T,
    ) -> T {
        let stored =
            if self.broker.is_resident(id) { None } else { self.disk.observe(&self.broker, id) };
        self.ops.clear();
        let result = action(&mut self.broker, stored, &mut self.ops);
        self.log();
        result
    }

    fn checkpoint(&mut self, now_ms: u64) {
        self.disk.checkpoint(&mut self.broker, now_ms).unwrap();
    }

    /// A broker rebuilt from the disk, as a restart would.
    fn recovered(&self, now_ms: u64) -> Broker {
        self.disk.recover(*self.broker.config(), now_ms, 2).unwrap()
    }

    fn counts(&self) -> StateCounts {
        self.broker.queue_stats("q").map(|stats| stats.counts).unwrap_or_default()
    }

    fn count(&self, state: MessageState) -> u64 {
        self.counts()[state.index()]
    }

    /// The message's record as a reader sees it.
    fn observe(&self, id: MessageId) -> Option<MessageMeta> {
        self.disk.observe(&self.broker, id)
    }

    /// `other` (a broker recovered from the disk at `now_ms`) shows exactly what the harness's
    /// broker shows (the comparison the simulation and the fuzz target make too).
    fn assert_same_state(&self, other: &Broker, now_ms: u64) {
        if let Err(difference) = self.disk.compare(&self.broker, other, now_ms) {
            panic!("the recovered broker differs: {difference}");
        }
    }

    /// A broker recovered at `now_ms` shows exactly what the harness's broker shows.
    fn assert_recovers(&self, now_ms: u64) {
        self.assert_same_state(&self.recovered(now_ms), now_ms);
    }
}

#[test]
fn priority_first_then_fifo() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, vec![message(0), message(5), message(0), message(5)]);
    let order: Vec<MessageId> = harness.lease(NOW, 10).iter().map(|grant| grant.id).collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[2]]);
}

#[test]
fn ops_are_logged_compactly_and_only_when_something_changed() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0), message(0)]);
    assert!(matches!(harness.ops[..], [Op::CreateQueue { .. }, Op::Enqueue { .. }]));
    let grants = harness.lease(NOW, 10);
    assert!(matches!(&harness.ops[..], [Op::Lease { ids, .. }] if ids.len() == 2));
    assert!(harness.lease(NOW, 10).is_empty());
    assert!(harness.ops.is_empty(), "an empty lease logs nothing");
    harness.ack(NOW, "q", &[Some(grants[0].token), Some(grants[0].token)]);
    assert!(matches!(&harness.ops[..], [Op::Ack { ids, .. }] if ids.len() == 1));
    assert_eq!(harness.disk.frame_count, 3);
}

#[test]
fn ack_delivers_and_a_second_ack_is_refused() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    assert_eq!(grant.meta.attempt_count, 1);
    assert_eq!(harness.ack(NOW + 1, "q", &[Some(grant.token)]), vec![Ok(())]);
    assert_eq!(harness.count(MessageState::Delivered), 1);
    assert_eq!(harness.broker.active_count(), 0);
    let again = harness.ack(NOW + 2, "q", &[Some(grant.token)]);
    assert_eq!(again, vec![Err(Refusal::NotActive(grant.id))]);
    assert_eq!(harness.ack(NOW, "other", &[Some(grant.token)]), vec![Err(Refusal::Unknown)]);
    assert_eq!(harness.ack(NOW, "q", &[None]), vec![Err(Refusal::Unknown)]);
}

#[test]
fn lease_expiry_retries_with_backoff_and_a_stale_token_cannot_ack() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let first = harness.lease(NOW, 1).remove(0);
    harness.expire(NOW + 999);
    assert_eq!(harness.count(MessageState::Leased), 1);
    harness.expire(NOW + 1000);
    assert_eq!(harness.count(MessageState::Retrying), 1);
    assert!(
        matches!(&harness.ops[..], [Op::Fail { items, .. }] if items[0].kind == HistoryKind::LeaseExpired)
    );
    assert_eq!(harness.broker.pending_history(first.id).len(), 1, "the expiry is in the history");
    assert!(harness.lease(NOW + 1099, 1).is_empty(), "backoff of 100 ms not over");
    harness.expire(NOW + 1100);
    let second = harness.lease(NOW + 1100, 1).remove(0);
    assert_eq!(second.meta.attempt_count, 2);
    assert_ne!(first.token, second.token);
    let stale = harness.ack(NOW + 1101, "q", &[Some(first.token)]);
    assert_eq!(stale, vec![Err(Refusal::LeaseExpired)]);
    assert_eq!(harness.ack(NOW + 1101, "q", &[Some(second.token)]), vec![Ok(())]);
}

#[test]
fn acked_leases_leave_no_timer_behind() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, (0..100).map(|_| message(0)).collect());
    let grants = harness.lease(NOW, 100);
    assert_eq!(harness.broker.timer_count(), 100);
    let tokens: Vec<Option<LeaseToken>> = grants.iter().map(|grant| Some(grant.token)).collect();
    harness.ack(NOW + 1, "q", &tokens);
    assert_eq!(harness.broker.timer_count(), 0, "acks cancel their lease timers");
}

#[test]
fn a_lease_past_its_deadline_no_longer_holds_even_before_the_timer_fires() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    let late = harness.ack(NOW + 1000, "q", &[Some(grant.token)]);
    assert_eq!(late, vec![Err(Refusal::LeaseExpired)]);
}

fn nack_item(token: LeaseToken, delay_ms: Option<u64>, dead: bool) -> NackItem {
    NackItem { token: Some(token), error: "boom".into(), delay_ms, dead }
}

#[test]
fn nack_backs_off_exponentially_then_dead_letters_at_max_attempts() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let mut now_ms = NOW;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let grant = harness.lease(now_ms, 1).remove(0);
        let outcome = harness.nack(now_ms, vec![nack_item(grant.token, None, false)]).remove(0);
        let outcome = outcome.unwrap();
        outcomes.push(outcome);
        if let FailOutcome::Retrying { next_attempt_at_ms } = outcome {
            now_ms = next_attempt_at_ms;
            harness.expire(now_ms);
        }
    }
    assert_eq!(
        outcomes,
        vec![
            FailOutcome::Retrying { next_attempt_at_ms: NOW + 100 },
            FailOutcome::Retrying { next_attempt_at_ms: NOW + 100 + 200 },
            FailOutcome::Dead,
        ]
    );
    assert_eq!(harness.count(MessageState::Dead), 1);
    assert_eq!(harness.broker.active_count(), 0);
}

#[test]
fn nack_honours_an_explicit_delay_and_dead_flag() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0), message(0)]);
    let grants = harness.lease(NOW, 2);
    let items =
        vec![nack_item(grants[0].token, Some(5000), false), nack_item(grants[1].token, None, true)];
    let outcomes = harness.nack(NOW, items);
    assert_eq!(outcomes[0], Ok(FailOutcome::Retrying { next_attempt_at_ms: NOW + 5000 }));
    assert_eq!(outcomes[1], Ok(FailOutcome::Dead));
}

#[test]
fn extend_moves_the_deadline_and_the_old_timer_is_cancelled() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    let item = ExtendItem { token: Some(grant.token), lease_ms: Some(2000) };
    harness.ops.clear();
    let extended = harness.broker.extend(NOW + 500, "q", &[item], &mut harness.ops);
    harness.log();
    assert_eq!(extended, vec![Ok(NOW + 2500)]);
    assert_eq!(harness.broker.timer_count(), 1, "the old lease timer is gone");
    harness.expire(NOW + 1000);
    assert_eq!(harness.count(MessageState::Leased), 1, "the original deadline no longer counts");
    harness.expire(NOW + 2500);
    assert_eq!(harness.count(MessageState::Retrying), 1);
}

#[test]
fn scheduled_messages_wait_for_their_time() {
    let mut harness = Harness::new();
    let later = Plan { delivery: Delivery::After { delay_ms: 50 }, ..message(0) };
    let at = Plan { delivery: Delivery::At { deliver_at_ms: NOW + 80 }, ..message(9) };
    let past = Plan { delivery: Delivery::At { deliver_at_ms: NOW - 1 }, ..message(0) };
    let ids = harness.enqueue(NOW, vec![later, at, past]);
    assert_eq!(harness.count(MessageState::Scheduled), 2);
    let leased: Vec<MessageId> = harness.lease(NOW, 10).iter().map(|grant| grant.id).collect();
    assert_eq!(leased, vec![ids[2]]);
    assert_eq!(harness.broker.next_deadline_ms(), Some(NOW + 50));
    harness.broker.take_woken();
    harness.expire(NOW + 79);
    assert_eq!(harness.broker.take_woken(), vec![QueueId(0)]);
    harness.expire(NOW + 80);
    let order: Vec<MessageId> = harness.lease(NOW + 80, 10).iter().map(|grant| grant.id).collect();
    assert_eq!(order, vec![ids[1], ids[0]]);
}

#[test]
fn idempotency_returns_the_original_ids_and_refuses_a_different_body() {
    let mut harness = Harness::new();
    let key = |hash| Some(IdempotencyKey { key: "k".into(), request_hash: hash });
    let first = harness.try_enqueue(NOW, "q", vec![message(0), message(0)], key(7)).unwrap();
    let frames = harness.disk.frame_count;
    let again = harness.try_enqueue(NOW + 1, "q", vec![message(0), message(0)], key(7)).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.ids().collect::<Vec<_>>(), first.ids().collect::<Vec<_>>());
    assert_eq!(harness.disk.frame_count, frames, "a duplicate logs nothing");
    let conflict = harness.try_enqueue(NOW + 1, "q", vec![message(0)], key(8));
    assert_eq!(conflict, Err(EnqueueError::IdempotencyConflict));
    let other_queue = harness.try_enqueue(NOW + 1, "p", vec![message(0)], key(8)).unwrap();
    assert!(!other_queue.duplicate, "keys are scoped per queue");
    // A restart keeps the key.
    harness.checkpoint(NOW + 2);
    let mut recovered = harness.recovered(NOW + 3);
    let same = NewMessage {
        content: ContentLocation::Catalog { len: 0 },
        priority: 0,
        attempt_count_max: None,
        delivery: Delivery::Now,
    };
    let repeat = recovered.enqueue(NOW + 3, "q", vec![same.clone(), same], key(7), &mut Vec::new());
    assert!(repeat.is_ok_and(|outcome| outcome.duplicate));
    let window = crate::limits::IDEMPOTENCY_WINDOW_MS;
    harness.expire(NOW + window);
    let after_window = harness.try_enqueue(NOW + window, "q", vec![message(0)], key(8));
    assert!(!after_window.unwrap().duplicate, "keys are forgotten after the window");
}

#[test]
fn pause_stops_leases_until_resume_and_survives_a_restart() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    harness.ops.clear();
    assert!(harness.broker.set_paused(NOW, "q", true, &mut harness.ops));
    harness.log();
    assert!(matches!(harness.ops[..], [Op::PauseQueue { paused: true, .. }]));
    assert!(harness.lease(NOW, 1).is_empty());
    let mut recovered = harness.recovered(NOW);
    assert!(recovered.lease(NOW, "q", 1, None, &mut Vec::new()).is_empty(), "still paused");
    harness.broker.take_woken();
    harness.ops.clear();
    assert!(harness.broker.set_paused(NOW, "q", false, &mut harness.ops));
    harness.log();
    assert_eq!(harness.broker.take_woken(), vec![QueueId(0)], "resuming wakes long polls");
    assert_eq!(harness.lease(NOW, 1).len(), 1);
    assert!(!harness.broker.set_paused(NOW, "nope", true, &mut Vec::new()));
}

#[test]
fn a_restart_with_or_without_a_checkpoint_rebuilds_the_same_state() {
    let mut harness = Harness::new();
    let batch = vec![
        message(0),
        message(0),
        message(0),
        Plan { delivery: Delivery::After { delay_ms: 10 }, ..message(0) },
    ];
    harness.enqueue(NOW, batch);
    let grants = harness.lease(NOW, 2);
    harness.ack(NOW, "q", &[Some(grants[0].token)]);
    // From the log alone (no checkpoint yet).
    harness.assert_recovers(NOW + 1);
    // From a checkpoint plus the log after it.
    harness.checkpoint(NOW + 1);
    let third = harness.lease(NOW + 2, 1).remove(0);
    harness.nack(NOW + 2, vec![nack_item(third.token, None, true)]);
    let mut rebuilt = harness.recovered(NOW + 3);
    harness.assert_same_state(&rebuilt, NOW + 3);
    // The message leased at the "crash" comes back after its deadline with its attempt kept.
    rebuilt.expire_due(NOW + 1000, &mut Vec::new());
    assert_eq!(rebuilt.queue_stats("q").unwrap().counts[MessageState::Retrying.index()], 1);
    rebuilt.expire_due(NOW + 1100, &mut Vec::new());
    let again = rebuilt.lease(NOW + 1100, "q", 10, Some(1000), &mut Vec::new());
    let attempts: Vec<u32> = again.iter().map(|grant| grant.meta.attempt_count).collect();
    assert_eq!(attempts.iter().filter(|&&attempt| attempt == 2).count(), 1);
    let stale = LeaseToken { id: grants[1].id, nonce: grants[1].token.nonce };
    assert_eq!(
        rebuilt.ack(NOW + 1100, "q", &[Some(stale)], &mut Vec::new()),
        vec![Err(Refusal::LeaseExpired)]
    );
}

#[test]
fn counts_always_sum_to_the_number_of_messages_and_restarts_agree() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, (0..20).map(|index| message(index % 3)).collect());
    let mut now_ms = NOW;
    for round in 0..50u64 {
        now_ms += 37;
        harness.expire(now_ms);
        let grants = harness.lease(now_ms, 3);
        for (index, grant) in grants.iter().enumerate() {
            match (round + index as u64) % 3 {
                0 => drop(harness.ack(now_ms, "q", &[Some(grant.token)])),
                1 => drop(harness.nack(now_ms, vec![nack_item(grant.token, None, false)])),
                _ => {}
            }
        }
        let total: u64 = ALL_STATES.iter().map(|state| harness.count(*state)).sum();
        assert_eq!(total, 20, "round {round}");
        if round % 7 == 0 {
            harness.checkpoint(now_ms);
        }
        if round % 5 == 0 {
            harness.assert_recovers(now_ms);
        }
    }
}

/// A message nacked to dead; returns its id.
fn dead_message(harness: &mut Harness) -> MessageId {
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    let outcomes = harness.nack(NOW, vec![nack_item(grant.token, None, true)]);
    assert_eq!(outcomes, vec![Ok(FailOutcome::Dead)]);
    grant.id
}

#[test]
fn a_dead_message_retried_from_the_catalog_comes_back_with_its_attempts() {
    let mut harness = Harness::new();
    let id = dead_message(&mut harness);
    // After a checkpoint the broker no longer holds the dead message: the action carries the
    // catalog's record.
    harness.checkpoint(NOW);
    assert!(!harness.broker.is_resident(id));
    assert_eq!(harness.broker.lookup(id), Lookup::InCatalog { epoch: 1 });
    let meta = harness
        .act(id, |broker, stored, ops| broker.retry(NOW + 1, id, stored, false, ops))
        .unwrap();
    assert_eq!((meta.state, meta.attempt_count), (MessageState::Ready, 1));
    assert_eq!(harness.count(MessageState::Dead), 0);
    assert_eq!(harness.lease(NOW + 1, 1)[0].meta.attempt_count, 2);
    harness.assert_recovers(NOW + 2);
}

#[test]
fn retry_can_reset_attempts_and_refuses_ready_and_leased_messages() {
    let mut harness = Harness::new();
    let id = dead_message(&mut harness);
    let meta =
        harness.act(id, |broker, stored, ops| broker.retry(NOW, id, stored, true, ops)).unwrap();
    assert_eq!(meta.attempt_count, 0);
    let again = harness.act(id, |broker, stored, ops| broker.retry(NOW, id, stored, false, ops));
    assert_eq!(again, Err(ControlError::WrongState(MessageState::Ready)));
    harness.lease(NOW, 1);
    let leased = harness.act(id, |broker, stored, ops| broker.retry(NOW, id, stored, false, ops));
    assert_eq!(leased, Err(ControlError::Leased));
    let missing = harness.act(MessageId(999), |broker, stored, ops| {
        broker.retry(NOW, MessageId(999), stored, false, ops)
    });
    assert_eq!(missing, Err(ControlError::NotFound));
}

#[test]
fn edit_moves_a_ready_message_in_the_priority_order_and_refuses_leased_ones() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, vec![message(0), message(0)]);
    let edit = Edit {
        priority: Some(9),
        fields: EditFields::default().with(EditFields::PRIORITY),
        ..Edit::default()
    };
    harness.act(ids[1], |broker, stored, ops| broker.edit(NOW, ids[1], stored, edit, ops)).unwrap();
    assert_eq!(harness.broker.pending_history(ids[1])[0].detail, "changed priority");
    let grant = harness.lease(NOW, 1).remove(0);
    assert_eq!(grant.id, ids[1], "the edited priority leads");
    let refused = harness.act(ids[1], |broker, stored, ops| {
        broker.edit(NOW, ids[1], stored, Edit { priority: Some(1), ..Edit::default() }, ops)
    });
    assert_eq!(refused, Err(ControlError::Leased));
}

#[test]
fn an_edited_delivery_time_reschedules() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, vec![message(0)]);
    let edit = Edit {
        deliver_at_ms: Some(NOW + 500),
        fields: EditFields::default().with(EditFields::DELIVER_AT),
        ..Edit::default()
    };
    let meta =
        harness.act(ids[0], |broker, stored, ops| broker.edit(NOW, ids[0], stored, edit, ops));
    let meta = meta.unwrap();
    assert_eq!((meta.state, meta.due_at_ms), (MessageState::Scheduled, NOW + 500));
    assert!(harness.lease(NOW + 499, 1).is_empty());
    harness.expire(NOW + 500);
    assert_eq!(harness.lease(NOW + 500, 1).len(), 1);
}

#[test]
fn reschedule_to_the_past_readies_and_to_the_future_schedules() {
    let mut harness = Harness::new();
    let later = Plan { delivery: Delivery::After { delay_ms: 10_000 }, ..message(0) };
    let ids = harness.enqueue(NOW, vec![later, message(0)]);
    let meta = harness
        .act(ids[0], |broker, stored, ops| broker.reschedule(NOW, ids[0], stored, NOW - 1, ops));
    assert_eq!(meta.unwrap().state, MessageState::Ready);
    let meta = harness
        .act(ids[1], |broker, stored, ops| broker.reschedule(NOW, ids[1], stored, NOW + 50, ops));
    assert_eq!(meta.unwrap().state, MessageState::Scheduled);
    let scheduled =
        harness.broker.list_active(QueueId(0), MessageState::Scheduled, None, false, 10);
    assert_eq!(scheduled.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![ids[1]]);
    harness.expire(NOW + 10_000);
    assert_eq!(
        harness.count(MessageState::Ready),
        2,
        "the cancelled 10 s timer of ids[0] did nothing"
    );
}

#[test]
fn delete_removes_from_every_index_and_refuses_leased_messages() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, vec![message(0), message(0)]);
    harness.act(ids[0], |broker, stored, ops| broker.delete(NOW, ids[0], stored, ops)).unwrap();
    assert_eq!(harness.count(MessageState::Ready), 1);
    assert_eq!(harness.broker.lookup(ids[0]), Lookup::Removed);
    assert_eq!(harness.lease(NOW, 10).len(), 1);
    let leased = harness.act(ids[1], |broker, stored, ops| broker.delete(NOW, ids[1], stored, ops));
    assert_eq!(leased, Err(ControlError::Leased));
    let gone = harness.act(ids[0], |broker, stored, ops| broker.delete(NOW, ids[0], stored, ops));
    assert_eq!(gone, Err(ControlError::NotFound));
    let dead = dead_message(&mut harness);
    harness.checkpoint(NOW);
    harness.act(dead, |broker, stored, ops| broker.delete(NOW, dead, stored, ops)).unwrap();
    assert_eq!(harness.count(MessageState::Dead), 0);
    harness.checkpoint(NOW);
    assert_eq!(harness.observe(dead), None, "the catalog dropped it too");
    harness.assert_recovers(NOW);
}

#[test]
fn listing_pages_through_active_messages_in_both_orders() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, (0..5).map(|_| message(0)).collect());
    let queue = QueueId(0);
    let list = |after, descending, limit| -> Vec<MessageId> {
        let listed =
            harness.broker.list_active(queue, MessageState::Ready, after, descending, limit);
        listed.into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(list(None, false, 2), ids[..2].to_vec());
    assert_eq!(list(Some(ids[1]), false, 2), ids[2..4].to_vec());
    assert_eq!(list(None, true, 2), vec![ids[4], ids[3]]);
    assert_eq!(list(Some(ids[3]), true, 9), vec![ids[2], ids[1], ids[0]]);
    assert!(harness.broker.list_active(queue, MessageState::Leased, None, false, 9).is_empty());
}

#[test]
fn queue_settings_override_attempts_backoff_and_lease() {
    let mut harness = Harness::new();
    let settings = QueueSettings {
        max_attempts: Some(1),
        lease_ms: Some(7),
        backoff_initial_ms: Some(5),
        ..QueueSettings::default()
    };
    harness.broker.configure(NOW, "q", settings, &mut Vec::new());
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.broker.lease(NOW, "q", 1, None, &mut Vec::new()).remove(0);
    assert_eq!(grant.meta.due_at_ms, NOW + 7);
    assert_eq!(grant.meta.attempt_count_max, 1);
}

#[test]
fn delivered_messages_expire_after_the_retention_and_zero_removes_them_at_once() {
    let mut harness = Harness::new();
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    harness.ack(NOW, "q", &[Some(grant.token)]);
    let at_ms = NOW + config().retention_ms;
    harness.checkpoint(NOW);
    let stored = harness.observe(grant.id);
    let swept = |harness: &mut Harness, now_ms: u64| {
        let candidates = vec![(grant.id, stored.clone())];
        harness.ops.clear();
        let removed = harness.broker.expire_retained(now_ms, candidates, &mut harness.ops);
        harness.log();
        removed
    };
    assert_eq!(swept(&mut harness, at_ms - 1), 0, "not yet due");
    assert_eq!(harness.count(MessageState::Delivered), 1);
    assert_eq!(swept(&mut harness, at_ms), 1);
    assert_eq!(harness.count(MessageState::Delivered), 0);
    harness.assert_recovers(at_ms);

    harness.broker.configure(
        NOW,
        "q",
        QueueSettings { retention_ms: Some(0), ..QueueSettings::default() },
        &mut Vec::new(),
    );
    harness.enqueue(NOW, vec![message(0)]);
    let grant = harness.lease(NOW, 1).remove(0);
    harness.ack(NOW, "q", &[Some(grant.token)]);
    assert_eq!(harness.count(MessageState::Delivered), 0);
    assert_eq!(harness.broker.lookup(grant.id), Lookup::Removed);
}

#[test]
fn content_counts_follow_messages_so_segments_can_be_deleted() {
    let mut harness = Harness::new();
    harness.broker.configure(
        NOW,
        "q",
        QueueSettings { retention_ms: Some(0), ..QueueSettings::default() },
        &mut Vec::new(),
    );
    harness.enqueue(NOW, vec![message(0), message(0)]);
    let usage = harness.broker.segment_usage()[&0];
    assert_eq!(usage.live_count, 2);
    let grants = harness.lease(NOW, 2);
    harness.ack(NOW, "q", &[Some(grants[0].token)]);
    assert_eq!(harness.broker.segment_usage()[&0].live_count, 1);
    harness.ack(NOW, "q", &[Some(grants[1].token)]);
    assert!(harness.broker.segment_usage().is_empty(), "no stored message points into segment 0");
}

#[test]
fn notices_follow_the_life_of_a_message() {
    let mut harness = Harness::new();
    dead_message(&mut harness);
    let kinds: Vec<NoticeKind> =
        harness.broker.take_notices().iter().map(|notice| notice.kind).collect();
    assert_eq!(kinds, vec![NoticeKind::Enqueued, NoticeKind::Leased, NoticeKind::Dead]);
    assert!(harness.broker.take_notices().is_empty());
}

#[test]
fn a_message_removed_while_a_failed_checkpoint_was_in_flight_leaves_no_history_behind() {
    let mut harness = Harness::new();
    let keep_none = QueueSettings { retention_ms: Some(0), ..QueueSettings::default() };
    harness.broker.configure(NOW, "q", keep_none, &mut harness.ops);
    harness.log();
    let id = harness.enqueue(NOW, vec![message(0)])[0];
    let grant = harness.lease(NOW, 1).remove(0);
    harness.nack(NOW, vec![nack_item(grant.token, Some(0), false)]);
    harness.expire(NOW);
    let grant = harness.lease(NOW, 1).remove(0);
    // The nack's history event is in the snapshot the checkpoint writer has; meanwhile the ack
    // removes the message (delivered messages are not kept), and then the checkpoint fails.
    let job = harness.disk.begin_checkpoint(&mut harness.broker, NOW);
    assert_eq!(harness.ack(NOW, "q", &[Some(grant.token)]), vec![Ok(())]);
    assert_eq!(harness.broker.lookup(id), Lookup::Removed);
    harness.disk.fail_checkpoint(&mut harness.broker, job);
    harness.checkpoint(NOW);
    assert_eq!(harness.observe(id), None);
    assert_eq!(harness.disk.catalog().history(id).unwrap(), None, "an orphan history was written");
    assert!(harness.broker.pending_history(id).is_empty());
}

/// Runs the retention sweep as the storage thread does, as one request; returns how many it removed.
fn sweep(harness: &mut Harness, now_ms: u64) -> u64 {
    let read = harness.disk.sweep(&harness.broker, now_ms, 64).unwrap();
    harness.ops.clear();
    let removed = harness.broker.expire_retained(now_ms, read.candidates, &mut harness.ops);
    harness.log();
    removed
}

#[test]
fn a_retention_change_checkpointed_in_the_second_of_a_swept_note_still_reaches_its_page() {
    let mut harness = Harness::new();
    let ids = harness.enqueue(NOW, vec![message(0), message(0)]);
    let grants = harness.lease(NOW, 2);
    harness.ack(NOW, "q", &[Some(grants[0].token)]);
    harness.nack(NOW, vec![nack_item(grants[1].token, None, true)]);
    harness.checkpoint(NOW);
    // The delivered message's note is due at this second; the sweep removes it and reads the
    // note, which the next checkpoint deletes.
    let due_ms = NOW + config().retention_ms;
    assert_eq!(due_ms % 1000, 0);
    assert_eq!(sweep(&mut harness, due_ms), 1);
    // In the same millisecond, dead messages get a retention: every page holding the queue's
    // dead messages must be looked at again.
    let settings = QueueSettings { dead_retention_ms: Some(0), ..QueueSettings::default() };
    harness.ops.clear();
    harness.broker.configure(due_ms, "q", settings, &mut harness.ops);
    harness.log();
    harness.checkpoint(due_ms);
    assert_eq!(sweep(&mut harness, due_ms + 1000), 1, "the dead message was never swept");
    assert_eq!(harness.observe(ids[1]), None);
}
