//! Broker unit tests: every operation with a virtual clock, and recovery from the changes it emitted.

use super::*;
use crate::queue::message::{LeaseToken, ALL_STATES};

const NOW: u64 = 1_000_000;

fn config() -> BrokerConfig {
    BrokerConfig {
        attempt_count_max: 3,
        retry: RetryPolicy { initial_ms: 100, multiplier: 2.0, max_ms: 1000, jitter: 0.0 },
        lease_ms: 1000,
        retention_ms: 60_000,
        history_keep_count: 5,
    }
}

fn message(priority: i32) -> NewMessage {
    NewMessage {
        content_record: vec![1, 2, 3],
        priority,
        attempt_count_max: None,
        delivery: Delivery::Now,
    }
}

fn enqueue(broker: &mut Broker, now_ms: u64, messages: Vec<NewMessage>) -> Vec<MessageId> {
    let mut changes = Vec::new();
    let outcome = broker.enqueue(now_ms, "q", messages, None, &mut changes).unwrap();
    outcome.ids().collect()
}

fn lease(broker: &mut Broker, now_ms: u64, count_max: u32) -> Vec<Grant> {
    broker.lease(now_ms, "q", count_max, Some(1000), &mut Vec::new())
}

fn counts(broker: &Broker) -> StateCounts {
    broker.queue_stats("q").map(|stats| stats.counts).unwrap_or_default()
}

fn count(broker: &Broker, state: MessageState) -> u64 {
    counts(broker)[state.index()]
}

#[test]
fn priority_first_then_fifo() {
    let mut broker = Broker::new(config(), NOW, 1);
    let ids = enqueue(&mut broker, NOW, vec![message(0), message(5), message(0), message(5)]);
    let order: Vec<MessageId> = lease(&mut broker, NOW, 10).iter().map(|grant| grant.id).collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[2]]);
}

#[test]
fn ack_delivers_and_a_second_ack_is_refused() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = lease(&mut broker, NOW, 1).remove(0);
    assert_eq!(grant.meta.attempt_count, 1);
    let mut changes = Vec::new();
    assert_eq!(broker.ack(NOW + 1, "q", &[Some(grant.token)], &mut changes), vec![Ok(())]);
    assert_eq!(count(&broker, MessageState::Delivered), 1);
    assert_eq!(broker.active_count(), 0);
    let again = broker.ack(NOW + 2, "q", &[Some(grant.token)], &mut changes);
    assert_eq!(again, vec![Err(Refusal::NotActive(grant.id))]);
    assert_eq!(
        broker.ack(NOW, "other", &[Some(grant.token)], &mut changes),
        vec![Err(Refusal::Unknown)]
    );
    assert_eq!(broker.ack(NOW, "q", &[None], &mut changes), vec![Err(Refusal::Unknown)]);
}

#[test]
fn lease_expiry_retries_with_backoff_and_a_stale_token_cannot_ack() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let first = lease(&mut broker, NOW, 1).remove(0);
    let mut changes = Vec::new();
    broker.expire_due(NOW + 999, &mut changes);
    assert_eq!(count(&broker, MessageState::Leased), 1);
    broker.expire_due(NOW + 1000, &mut changes);
    assert_eq!(count(&broker, MessageState::Retrying), 1);
    assert!(changes.iter().any(|change| matches!(change, Change::RecordHistory { .. })));
    assert!(lease(&mut broker, NOW + 1099, 1).is_empty(), "backoff of 100 ms not over");
    broker.expire_due(NOW + 1100, &mut changes);
    let second = lease(&mut broker, NOW + 1100, 1).remove(0);
    assert_eq!(second.meta.attempt_count, 2);
    assert_ne!(first.token, second.token);
    let stale = broker.ack(NOW + 1101, "q", &[Some(first.token)], &mut changes);
    assert_eq!(stale, vec![Err(Refusal::LeaseExpired)]);
    assert_eq!(broker.ack(NOW + 1101, "q", &[Some(second.token)], &mut changes), vec![Ok(())]);
}

#[test]
fn a_lease_past_its_deadline_no_longer_holds_even_before_the_timer_fires() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = lease(&mut broker, NOW, 1).remove(0);
    let late = broker.ack(NOW + 1000, "q", &[Some(grant.token)], &mut Vec::new());
    assert_eq!(late, vec![Err(Refusal::LeaseExpired)]);
}

#[test]
fn nack_backs_off_exponentially_then_dead_letters_at_max_attempts() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let mut now_ms = NOW;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let grant = lease(&mut broker, now_ms, 1).remove(0);
        let item = NackItem {
            token: Some(grant.token),
            error: "boom".into(),
            delay_ms: None,
            dead: false,
        };
        let outcome = broker.nack(now_ms, "q", vec![item], &mut Vec::new()).remove(0).unwrap();
        outcomes.push(outcome);
        if let FailOutcome::Retrying { next_attempt_at_ms } = outcome {
            now_ms = next_attempt_at_ms;
            broker.expire_due(now_ms, &mut Vec::new());
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
    assert_eq!(count(&broker, MessageState::Dead), 1);
    assert_eq!(broker.active_count(), 0);
}

#[test]
fn nack_honours_an_explicit_delay_and_dead_flag() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0), message(0)]);
    let grants = lease(&mut broker, NOW, 2);
    let items = vec![
        NackItem {
            token: Some(grants[0].token),
            error: "later".into(),
            delay_ms: Some(5000),
            dead: false,
        },
        NackItem {
            token: Some(grants[1].token),
            error: "bad address".into(),
            delay_ms: None,
            dead: true,
        },
    ];
    let outcomes = broker.nack(NOW, "q", items, &mut Vec::new());
    assert_eq!(outcomes[0], Ok(FailOutcome::Retrying { next_attempt_at_ms: NOW + 5000 }));
    assert_eq!(outcomes[1], Ok(FailOutcome::Dead));
}

#[test]
fn extend_moves_the_deadline_and_the_old_timer_is_ignored() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = lease(&mut broker, NOW, 1).remove(0);
    let extended =
        broker.extend(NOW + 500, "q", &[(Some(grant.token), Some(2000))], &mut Vec::new());
    assert_eq!(extended, vec![Ok(NOW + 2500)]);
    broker.expire_due(NOW + 1000, &mut Vec::new());
    assert_eq!(count(&broker, MessageState::Leased), 1, "the original deadline no longer counts");
    broker.expire_due(NOW + 2500, &mut Vec::new());
    assert_eq!(count(&broker, MessageState::Retrying), 1);
}

#[test]
fn scheduled_messages_wait_for_their_time() {
    let mut broker = Broker::new(config(), NOW, 1);
    let later = NewMessage { delivery: Delivery::After { delay_ms: 50 }, ..message(0) };
    let at = NewMessage { delivery: Delivery::At { deliver_at_ms: NOW + 80 }, ..message(9) };
    let past = NewMessage { delivery: Delivery::At { deliver_at_ms: NOW - 1 }, ..message(0) };
    let ids = enqueue(&mut broker, NOW, vec![later, at, past]);
    assert_eq!(count(&broker, MessageState::Scheduled), 2);
    assert_eq!(
        lease(&mut broker, NOW, 10).iter().map(|grant| grant.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    assert_eq!(broker.next_deadline_ms(), Some(NOW + 50));
    broker.expire_due(NOW + 79, &mut Vec::new());
    assert_eq!(broker.take_woken(), vec![QueueId(0)]);
    broker.expire_due(NOW + 80, &mut Vec::new());
    let order: Vec<MessageId> =
        lease(&mut broker, NOW + 80, 10).iter().map(|grant| grant.id).collect();
    assert_eq!(order, vec![ids[1], ids[0]]);
}

#[test]
fn idempotency_returns_the_original_ids_and_refuses_a_different_body() {
    let mut broker = Broker::new(config(), NOW, 1);
    let key = |hash| Some(IdempotencyKey { key: "k".into(), request_hash: hash });
    let mut changes = Vec::new();
    let first =
        broker.enqueue(NOW, "q", vec![message(0), message(0)], key(7), &mut changes).unwrap();
    changes.clear();
    let again =
        broker.enqueue(NOW + 1, "q", vec![message(0), message(0)], key(7), &mut changes).unwrap();
    assert!(again.duplicate);
    assert_eq!(again.ids().collect::<Vec<_>>(), first.ids().collect::<Vec<_>>());
    assert!(changes.is_empty(), "a duplicate changes nothing");
    let conflict = broker.enqueue(NOW + 1, "q", vec![message(0)], key(8), &mut changes);
    assert_eq!(conflict, Err(EnqueueError::IdempotencyConflict));
    let other_queue = broker.enqueue(NOW + 1, "p", vec![message(0)], key(8), &mut changes).unwrap();
    assert!(!other_queue.duplicate, "keys are scoped per queue");
    broker.expire_due(NOW + crate::limits::IDEMPOTENCY_WINDOW_MS, &mut changes);
    let after_window = broker.enqueue(
        NOW + crate::limits::IDEMPOTENCY_WINDOW_MS,
        "q",
        vec![message(0)],
        key(8),
        &mut changes,
    );
    assert!(!after_window.unwrap().duplicate, "keys are forgotten after the window");
}

#[test]
fn paused_queues_lease_nothing() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    broker.restore_queue(
        QueueId(0),
        QueueRecord { name: "q".into(), paused: true, settings: QueueSettings::default() },
    );
    assert!(lease(&mut broker, NOW, 1).is_empty());
}

/// Replays the emitted changes into a map (what the store would hold) and rebuilds a broker from it.
fn rebuild(changes: &[Change], now_ms: u64) -> Broker {
    let mut queues = std::collections::BTreeMap::new();
    let mut metas = std::collections::BTreeMap::new();
    let mut next_id = 0;
    for change in changes {
        match change {
            Change::PutQueue { queue_id, record } => drop(queues.insert(*queue_id, record.clone())),
            Change::PutMeta { id, meta } => drop(metas.insert(*id, meta.clone())),
            Change::SetNextId { next_id: value } => next_id = *value,
            _ => {}
        }
    }
    let mut broker = Broker::new(config(), now_ms, 2);
    for (queue_id, record) in queues {
        broker.restore_queue(queue_id, record);
    }
    for (id, meta) in metas {
        broker.restore_message(id, meta);
    }
    broker.restore_next_id(next_id);
    broker.finish_restore();
    broker
}

#[test]
fn a_broker_rebuilt_from_its_changes_has_the_same_counts_and_leases_expire() {
    let mut broker = Broker::new(config(), NOW, 1);
    let mut changes = Vec::new();
    let batch = vec![
        message(0),
        message(0),
        message(0),
        NewMessage { delivery: Delivery::After { delay_ms: 10 }, ..message(0) },
    ];
    broker.enqueue(NOW, "q", batch, None, &mut changes).unwrap();
    let grants = broker.lease(NOW, "q", 2, Some(1000), &mut changes);
    broker.ack(NOW, "q", &[Some(grants[0].token)], &mut changes);
    let mut rebuilt = rebuild(&changes, NOW + 1);
    assert_eq!(counts(&rebuilt), counts(&broker));
    assert_eq!(rebuilt.next_id(), broker.next_id());
    // The message leased at the "crash" comes back after its deadline with its attempt kept.
    rebuilt.expire_due(NOW + 1000, &mut Vec::new());
    assert_eq!(count(&rebuilt, MessageState::Retrying), 1);
    rebuilt.expire_due(NOW + 1100, &mut Vec::new());
    let again: Vec<Grant> = rebuilt.lease(NOW + 1100, "q", 10, Some(1000), &mut Vec::new());
    let attempts: Vec<u32> = again.iter().map(|grant| grant.meta.attempt_count).collect();
    assert_eq!(attempts.iter().filter(|&&attempt| attempt == 2).count(), 1);
    let stale = LeaseToken { id: grants[1].id, nonce: grants[1].token.nonce };
    assert_eq!(
        rebuilt.ack(NOW + 1100, "q", &[Some(stale)], &mut Vec::new()),
        vec![Err(Refusal::LeaseExpired)]
    );
}

#[test]
fn counts_always_sum_to_the_number_of_messages() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, (0..20).map(|index| message(index % 3)).collect());
    let mut now_ms = NOW;
    for round in 0..50u64 {
        now_ms += 37;
        broker.expire_due(now_ms, &mut Vec::new());
        let grants = lease(&mut broker, now_ms, 3);
        for (index, grant) in grants.iter().enumerate() {
            let mut changes = Vec::new();
            match (round + index as u64) % 3 {
                0 => drop(broker.ack(now_ms, "q", &[Some(grant.token)], &mut changes)),
                1 => {
                    let item = NackItem {
                        token: Some(grant.token),
                        error: "x".into(),
                        delay_ms: None,
                        dead: false,
                    };
                    drop(broker.nack(now_ms, "q", vec![item], &mut changes));
                }
                _ => {}
            }
        }
        let total: u64 = ALL_STATES.iter().map(|state| count(&broker, *state)).sum();
        assert_eq!(total, 20, "round {round}");
    }
}

/// The record the store would hold for `id` after `changes` (for actions on terminal messages).
fn stored(changes: &[Change], id: MessageId) -> Option<MessageMeta> {
    let mut found = None;
    for change in changes {
        match change {
            Change::PutMeta { id: changed, meta } if *changed == id => found = Some(meta.clone()),
            Change::DeleteMessage { id: deleted, .. } if *deleted == id => found = None,
            _ => {}
        }
    }
    found
}

fn dead_message(broker: &mut Broker, changes: &mut Vec<Change>) -> MessageId {
    broker.enqueue(NOW, "q", vec![message(0)], None, changes).unwrap();
    let grant = broker.lease(NOW, "q", 1, Some(1000), changes).remove(0);
    let item =
        NackItem { token: Some(grant.token), error: "bad".into(), delay_ms: None, dead: true };
    assert_eq!(broker.nack(NOW, "q", vec![item], changes), vec![Ok(FailOutcome::Dead)]);
    grant.id
}

#[test]
fn a_dead_message_is_indexed_and_retry_brings_it_back_with_its_attempts() {
    let mut broker = Broker::new(config(), NOW, 1);
    let mut changes = Vec::new();
    let id = dead_message(&mut broker, &mut changes);
    assert!(changes.contains(&Change::IndexTerminal {
        queue_id: QueueId(0),
        state: MessageState::Dead,
        id
    }));
    let meta = broker.retry(NOW + 1, id, stored(&changes, id), false, &mut changes).unwrap();
    assert_eq!((meta.state, meta.attempt_count), (MessageState::Ready, 1));
    assert!(changes.contains(&Change::UnindexTerminal {
        queue_id: QueueId(0),
        state: MessageState::Dead,
        id
    }));
    assert_eq!(count(&broker, MessageState::Dead), 0);
    assert_eq!(lease(&mut broker, NOW + 1, 1)[0].meta.attempt_count, 2);
}

#[test]
fn retry_can_reset_attempts_and_refuses_ready_and_leased_messages() {
    let mut broker = Broker::new(config(), NOW, 1);
    let mut changes = Vec::new();
    let id = dead_message(&mut broker, &mut changes);
    let meta = broker.retry(NOW, id, stored(&changes, id), true, &mut changes).unwrap();
    assert_eq!(meta.attempt_count, 0);
    assert_eq!(
        broker.retry(NOW, id, None, false, &mut changes),
        Err(ControlError::WrongState(MessageState::Ready))
    );
    lease(&mut broker, NOW, 1);
    assert_eq!(broker.retry(NOW, id, None, false, &mut changes), Err(ControlError::Leased));
    assert_eq!(
        broker.retry(NOW, MessageId(999), None, false, &mut changes),
        Err(ControlError::NotFound)
    );
}

#[test]
fn edit_moves_a_ready_message_in_the_priority_order_and_refuses_leased_ones() {
    let mut broker = Broker::new(config(), NOW, 1);
    let ids = enqueue(&mut broker, NOW, vec![message(0), message(0)]);
    let mut changes = Vec::new();
    let edit = Edit { priority: Some(9), fields: vec!["priority"], ..Edit::default() };
    broker.edit(NOW, ids[1], None, edit, &mut changes).unwrap();
    assert!(changes.iter().any(|change| matches!(change, Change::RecordHistory { .. })));
    let grant = lease(&mut broker, NOW, 1).remove(0);
    assert_eq!(grant.id, ids[1], "the edited priority leads");
    let refused =
        broker.edit(NOW, ids[1], None, Edit { priority: Some(1), ..Edit::default() }, &mut changes);
    assert_eq!(refused, Err(ControlError::Leased));
}

#[test]
fn an_edited_delivery_time_reschedules() {
    let mut broker = Broker::new(config(), NOW, 1);
    let ids = enqueue(&mut broker, NOW, vec![message(0)]);
    let edit =
        Edit { deliver_at_ms: Some(NOW + 500), fields: vec!["deliver_at"], ..Edit::default() };
    let meta = broker.edit(NOW, ids[0], None, edit, &mut Vec::new()).unwrap();
    assert_eq!((meta.state, meta.due_at_ms), (MessageState::Scheduled, NOW + 500));
    assert!(lease(&mut broker, NOW + 499, 1).is_empty());
    broker.expire_due(NOW + 500, &mut Vec::new());
    assert_eq!(lease(&mut broker, NOW + 500, 1).len(), 1);
}

#[test]
fn reschedule_to_the_past_readies_and_to_the_future_schedules() {
    let mut broker = Broker::new(config(), NOW, 1);
    let later = NewMessage { delivery: Delivery::After { delay_ms: 10_000 }, ..message(0) };
    let ids = enqueue(&mut broker, NOW, vec![later, message(0)]);
    let meta = broker.reschedule(NOW, ids[0], None, NOW - 1, &mut Vec::new()).unwrap();
    assert_eq!(meta.state, MessageState::Ready);
    let meta = broker.reschedule(NOW, ids[1], None, NOW + 50, &mut Vec::new()).unwrap();
    assert_eq!(meta.state, MessageState::Scheduled);
    assert_eq!(
        broker.list_active(QueueId(0), MessageState::Scheduled, None, false, 10),
        vec![ids[1]]
    );
    broker.expire_due(NOW + 10_000, &mut Vec::new());
    assert_eq!(
        count(&broker, MessageState::Ready),
        2,
        "the stale 10 s timer of ids[0] does nothing"
    );
}

#[test]
fn delete_removes_from_every_index_and_refuses_leased_messages() {
    let mut broker = Broker::new(config(), NOW, 1);
    let ids = enqueue(&mut broker, NOW, vec![message(0), message(0)]);
    let mut changes = Vec::new();
    broker.delete(NOW, ids[0], None, &mut changes).unwrap();
    assert_eq!(count(&broker, MessageState::Ready), 1);
    assert!(changes.contains(&Change::DeleteMessage {
        id: ids[0],
        queue_id: QueueId(0),
        state: MessageState::Ready
    }));
    assert_eq!(lease(&mut broker, NOW, 10).len(), 1);
    assert_eq!(broker.delete(NOW, ids[1], None, &mut changes), Err(ControlError::Leased));
    assert_eq!(broker.delete(NOW, ids[0], None, &mut changes), Err(ControlError::NotFound));
    let dead = dead_message(&mut broker, &mut changes);
    broker.delete(NOW, dead, stored(&changes, dead), &mut changes).unwrap();
    assert_eq!(count(&broker, MessageState::Dead), 0);
}

#[test]
fn listing_pages_through_active_messages_in_both_orders() {
    let mut broker = Broker::new(config(), NOW, 1);
    let ids = enqueue(&mut broker, NOW, (0..5).map(|_| message(0)).collect());
    let queue = QueueId(0);
    assert_eq!(broker.list_active(queue, MessageState::Ready, None, false, 2), ids[..2].to_vec());
    assert_eq!(
        broker.list_active(queue, MessageState::Ready, Some(ids[1]), false, 2),
        ids[2..4].to_vec()
    );
    assert_eq!(broker.list_active(queue, MessageState::Ready, None, true, 2), vec![ids[4], ids[3]]);
    assert_eq!(
        broker.list_active(queue, MessageState::Ready, Some(ids[3]), true, 9),
        vec![ids[2], ids[1], ids[0]]
    );
    assert!(broker.list_active(queue, MessageState::Leased, None, false, 9).is_empty());
}

#[test]
fn pause_stops_leases_until_resume_and_is_persisted() {
    let mut broker = Broker::new(config(), NOW, 1);
    enqueue(&mut broker, NOW, vec![message(0)]);
    let mut changes = Vec::new();
    assert!(broker.set_paused(NOW, "q", true, &mut changes));
    assert!(changes
        .iter()
        .any(|change| matches!(change, Change::PutQueue { record, .. } if record.paused)));
    assert!(lease(&mut broker, NOW, 1).is_empty());
    broker.take_woken();
    assert!(broker.set_paused(NOW, "q", false, &mut changes));
    assert_eq!(broker.take_woken(), vec![QueueId(0)], "resuming wakes long polls");
    assert_eq!(lease(&mut broker, NOW, 1).len(), 1);
    assert!(!broker.set_paused(NOW, "nope", true, &mut changes));
}

#[test]
fn queue_settings_override_attempts_backoff_and_lease() {
    let mut broker = Broker::new(config(), NOW, 1);
    let settings = QueueSettings {
        max_attempts: Some(1),
        lease_ms: Some(7),
        backoff_initial_ms: Some(5),
        ..QueueSettings::default()
    };
    broker.configure(NOW, "q", settings, &mut Vec::new());
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = broker.lease(NOW, "q", 1, None, &mut Vec::new()).remove(0);
    assert_eq!(grant.meta.due_at_ms, NOW + 7);
    assert_eq!(grant.meta.attempt_count_max, 1);
}

#[test]
fn delivered_messages_expire_after_the_retention_and_zero_removes_them_at_once() {
    let mut broker = Broker::new(config(), NOW, 1);
    let mut changes = Vec::new();
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = lease(&mut broker, NOW, 1).remove(0);
    broker.ack(NOW, "q", &[Some(grant.token)], &mut changes);
    let at_ms = NOW + config().retention_ms;
    assert!(changes.contains(&Change::ExpireAt { at_ms, id: grant.id }));
    let meta = stored(&changes, grant.id);
    broker.sweep(at_ms - 1, at_ms, grant.id, meta.clone(), &mut changes);
    assert_eq!(count(&broker, MessageState::Delivered), 1, "not yet due");
    broker.sweep(at_ms, at_ms, grant.id, meta, &mut changes);
    assert_eq!(count(&broker, MessageState::Delivered), 0);

    broker.configure(
        NOW,
        "q",
        QueueSettings { retention_ms: Some(0), ..QueueSettings::default() },
        &mut changes,
    );
    enqueue(&mut broker, NOW, vec![message(0)]);
    let grant = lease(&mut broker, NOW, 1).remove(0);
    changes.clear();
    broker.ack(NOW, "q", &[Some(grant.token)], &mut changes);
    assert!(changes.iter().any(|change| matches!(change, Change::DeleteMessage { .. })));
    assert_eq!(count(&broker, MessageState::Delivered), 0);
}

#[test]
fn notices_follow_the_life_of_a_message() {
    let mut broker = Broker::new(config(), NOW, 1);
    let mut changes = Vec::new();
    dead_message(&mut broker, &mut changes);
    let kinds: Vec<NoticeKind> = broker.take_notices().iter().map(|notice| notice.kind).collect();
    assert_eq!(kinds, vec![NoticeKind::Enqueued, NoticeKind::Leased, NoticeKind::Dead]);
    assert!(broker.take_notices().is_empty());
}
