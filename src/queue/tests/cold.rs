//! Ready messages beyond the memory budget: they leave memory only when the catalog holds them,
//! come back page by page, keep the exact lease order, survive restarts, and a person's actions
//! and listings reach them.

use super::*;
use crate::queue::checkpoint::page_of;

/// A harness whose broker holds at most `budget` ready messages.
fn harness(budget: usize) -> Harness {
    Harness::with_config(BrokerConfig { ready_resident_max: budget, ..config() })
}

fn queue_id(harness: &Harness) -> QueueId {
    harness.broker.queue_id("q").unwrap()
}

/// Reads back the cold pages a lease of `count` needs (as the storage thread has the loader do),
/// then leases.
fn lease_loading(harness: &mut Harness, now_ms: u64, count: u32) -> Vec<Grant> {
    let queue_id = queue_id(harness);
    let ahead = harness.broker.cold_ahead(queue_id, count as usize);
    for page in ahead.pages {
        load(harness, queue_id, page);
    }
    harness.lease(now_ms, count)
}

fn load(harness: &mut Harness, queue_id: QueueId, page: u64) {
    let records = harness.disk.catalog().page(page).unwrap();
    assert_eq!(harness.broker.load_cold(queue_id, page, records), 0, "page {page} lost messages");
}

/// 2,000 messages of three priorities, enqueued in batches of 50.
fn backlog(harness: &mut Harness) -> Vec<(i32, MessageId)> {
    let mut all = Vec::new();
    for batch in 0..40 {
        let plans: Vec<Plan> =
            (0..50).map(|index| message([0, 5, 0, -3][(batch + index) % 4])).collect();
        let priorities: Vec<i32> = plans.iter().map(|plan| plan.priority).collect();
        let ids = harness.enqueue(NOW, plans);
        all.extend(priorities.into_iter().zip(ids));
    }
    all
}

/// The lease order: highest priority first, then oldest.
fn lease_order(messages: &[(i32, MessageId)]) -> Vec<MessageId> {
    let mut sorted = messages.to_vec();
    sorted.sort_by_key(|(priority, id)| (Reverse(*priority), *id));
    sorted.into_iter().map(|(_, id)| id).collect()
}

#[test]
fn a_backlog_beyond_the_budget_waits_in_the_catalog_and_leases_in_exact_order() {
    let mut harness = harness(300);
    let messages = backlog(&mut harness);
    assert_eq!(harness.broker.evict_cold(usize::MAX), 0, "nothing leaves before a checkpoint");
    harness.checkpoint(NOW);
    let evicted = harness.broker.evict_cold(usize::MAX);
    assert!(evicted >= 1700, "{evicted} evicted");
    assert!(harness.broker.ready_resident_count() <= 300);
    assert_eq!(harness.broker.cold_count() as usize, evicted);
    assert_eq!(harness.count(MessageState::Ready), 2000, "cold messages are counted");
    let oldest = harness.broker.queue_stats("q").unwrap().oldest_ready_enqueued_at_ms;
    assert_eq!(oldest, Some(NOW));

    let mut leased = Vec::new();
    let mut round = 0;
    while leased.len() < messages.len() {
        let grants = lease_loading(&mut harness, NOW + 1, 37);
        assert!(!grants.is_empty(), "round {round}: nothing leased with messages left");
        leased.extend(grants.iter().map(|grant| grant.id));
        round += 1;
        if round % 5 == 0 {
            // Memory stays bounded while consumers work through the backlog.
            harness.checkpoint(NOW + 1);
            harness.broker.evict_cold(usize::MAX);
        }
    }
    assert_eq!(leased, lease_order(&messages));
    assert_eq!(harness.broker.cold_count(), 0);
    assert!(harness.lease(NOW + 1, 10).is_empty());
}

#[test]
fn a_lease_stops_where_a_cold_page_comes_first() {
    let mut harness = harness(100);
    let low = harness.enqueue(NOW, (0..256).map(|_| message(0)).collect());
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    let high = harness.enqueue(NOW, vec![message(9)]);
    let queue_id = queue_id(&harness);
    assert!(harness.broker.cold_count() > 0);
    // The resident low-priority messages are the oldest: the cold ones come after them.
    let first = harness.lease(NOW, 1000);
    assert_eq!(first[0].id, high[0], "the new high priority message first");
    let granted: Vec<MessageId> = first[1..].iter().map(|grant| grant.id).collect();
    assert_eq!(granted, low[..granted.len()].to_vec());
    assert!(granted.len() < low.len(), "the lease stopped at the first cold page");
    let ahead = harness.broker.cold_ahead(queue_id, 1);
    assert!(ahead.blocked, "nothing resident comes before the cold pages now");
    assert!(harness.lease(NOW, 10).is_empty(), "leasing waits for the page");
    let rest = lease_loading(&mut harness, NOW, 1000);
    let rest: Vec<MessageId> = rest.iter().map(|grant| grant.id).collect();
    assert_eq!(rest, low[granted.len()..].to_vec());
}

#[test]
fn only_pages_the_catalog_holds_durably_and_unchanged_leave_memory() {
    let mut harness = harness(10);
    let ids = harness.enqueue(NOW, (0..512).map(|_| message(0)).collect());
    // A snapshot being written is not durable yet.
    let snapshot = harness.broker.snapshot();
    assert_eq!(harness.broker.evict_cold(usize::MAX), 0);
    harness.broker.checkpoint_failed(snapshot);
    assert_eq!(harness.broker.evict_cold(usize::MAX), 0, "a failed checkpoint leaves pages dirty");
    harness.checkpoint(NOW);
    // A change after the checkpoint keeps its page in memory.
    let grant = harness.lease(NOW, 1).remove(0);
    assert_eq!(grant.id, ids[0]);
    harness.broker.evict_cold(usize::MAX);
    let resident_pages: std::collections::BTreeSet<u64> = ids
        .iter()
        .filter(|id| harness.broker.active_meta(**id).is_some())
        .map(|id| page_of(*id))
        .collect();
    assert!(resident_pages.contains(&page_of(ids[0])), "the changed page stays");
    assert_eq!(harness.broker.active_meta(ids[511]), None, "a clean page left");
}

#[test]
fn restarts_rebuild_cold_backlogs_and_keep_the_order() {
    let mut harness = harness(200);
    let messages = backlog(&mut harness);
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    // Work after the checkpoint touches cold messages: a lease that loads pages, a delete.
    let grants = lease_loading(&mut harness, NOW + 1, 120);
    let cold_id = *lease_order(&messages)[1000..]
        .iter()
        .find(|id| !harness.broker.is_resident(**id))
        .expect("a cold message late in the order");
    harness
        .act(cold_id, |broker, stored, ops| broker.delete(NOW + 2, cold_id, stored, ops))
        .unwrap();
    assert_eq!(harness.count(MessageState::Ready), 2000 - grants.len() as u64 - 1);

    let recovered = harness.recovered(NOW + 3);
    harness.assert_same_state(&recovered, NOW + 3);
    assert!(recovered.cold_count() > 0, "the restart kept the backlog in the catalog");
    assert!(recovered.ready_resident_count() <= 200 + 256, "restore stays within the budget");

    let mut restarted = Harness { broker: recovered, disk: harness.disk, ops: Vec::new() };
    let mut leased: Vec<MessageId> = grants.iter().map(|grant| grant.id).collect();
    loop {
        let grants = lease_loading(&mut restarted, NOW + 4, 64);
        if grants.is_empty() {
            break;
        }
        leased.extend(grants.iter().map(|grant| grant.id));
    }
    let expected: Vec<MessageId> =
        lease_order(&messages).into_iter().filter(|id| *id != cold_id).collect();
    assert_eq!(leased, expected);
}

#[test]
fn a_persons_actions_reach_cold_messages() {
    let mut harness = harness(10);
    let ids = harness.enqueue(NOW, (0..600).map(|_| message(0)).collect());
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    let target = ids[550];
    assert_eq!(harness.broker.lookup(target), Lookup::InCatalog { epoch: 1 });
    assert_eq!(harness.observe(target).unwrap().state, MessageState::Ready);
    let cold_before = harness.broker.cold_count();

    // Raising its priority brings it back and puts it first.
    let edit =
        Edit { priority: Some(7), fields: EditFields(EditFields::PRIORITY), ..Edit::default() };
    harness.act(target, |broker, stored, ops| broker.edit(NOW, target, stored, edit, ops)).unwrap();
    assert_eq!(harness.broker.cold_count(), cold_before - 1);
    assert_eq!(harness.lease(NOW, 1)[0].id, target);

    // Deleting another cold one.
    let other = ids[400];
    harness.act(other, |broker, stored, ops| broker.delete(NOW, other, stored, ops)).unwrap();
    assert_eq!(harness.observe(other), None);
    assert_eq!(harness.count(MessageState::Ready), 598);
    assert_eq!(harness.broker.cold_count(), cold_before - 2);
}

/// A request reads a message while the broker holds it, the message then leaves memory, and the
/// action arrives: the read is stale (the request reads again), not "no such message".
#[test]
fn an_action_read_before_its_message_left_memory_is_stale_not_lost() {
    let mut harness = harness(10);
    let ids = harness.enqueue(NOW, (0..600).map(|_| message(0)).collect());
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    let target = ids[590];
    let queue_id = queue_id(&harness);
    load(&mut harness, queue_id, page_of(target));
    assert!(harness.broker.is_resident(target));
    // Read while held: the action carries no stored record, and the broker's own is used.
    assert_eq!(harness.broker.stored_for_action(target, None), Ok(None));

    assert!(harness.broker.evict_cold(usize::MAX) > 0);
    assert!(!harness.broker.is_resident(target), "the page left memory again");
    assert_eq!(harness.broker.stored_for_action(target, None), Err(StaleRead));

    // Read again, from the catalog, the action goes through.
    let epoch = harness.broker.durable_epoch();
    let meta = harness.disk.catalog().meta(target).unwrap().unwrap();
    let stored = Stored { meta: meta.clone(), epoch };
    assert_eq!(harness.broker.stored_for_action(target, Some(stored)), Ok(Some(meta.clone())));
    let old = Stored { meta, epoch: epoch - 1 };
    assert_eq!(harness.broker.stored_for_action(target, Some(old)), Err(StaleRead));
    harness.act(target, |broker, stored, ops| broker.delete(NOW, target, stored, ops)).unwrap();
    assert_eq!(harness.observe(target), None);
    assert_eq!(harness.count(MessageState::Ready), 599);
}

#[test]
fn listings_of_ready_messages_name_the_cold_pages_they_reach() {
    let mut harness = harness(10);
    let ids = harness.enqueue(NOW, (0..600).map(|_| message(0)).collect());
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    let queue_id = queue_id(&harness);
    let pages = harness.broker.cold_in_listing(queue_id, Some(ids[99]), false, 100);
    assert_eq!(pages, vec![page_of(ids[100])]);
    for page in pages {
        load(&mut harness, queue_id, page);
    }
    assert!(harness.broker.cold_in_listing(queue_id, Some(ids[99]), false, 100).is_empty());
    let listed =
        harness.broker.list_active(queue_id, MessageState::Ready, Some(ids[99]), false, 100);
    let listed: Vec<MessageId> = listed.into_iter().map(|(id, _)| id).collect();
    assert_eq!(listed, ids[100..200].to_vec());

    let pages = harness.broker.cold_in_listing(queue_id, None, true, 10);
    assert_eq!(pages, vec![page_of(ids[599])], "descending starts at the newest page");
}

#[test]
fn a_cold_page_the_catalog_lost_is_uncounted_not_waited_for() {
    let mut harness = harness(10);
    harness.enqueue(NOW, (0..300).map(|_| message(0)).collect());
    harness.checkpoint(NOW);
    harness.broker.evict_cold(usize::MAX);
    let queue_id = queue_id(&harness);
    let page = *harness.broker.cold_ahead(queue_id, 1000).pages.last().unwrap();
    let before = harness.count(MessageState::Ready);
    let missing = harness.broker.load_cold(queue_id, page, Vec::new());
    assert!(missing > 0);
    assert_eq!(harness.count(MessageState::Ready), before - u64::from(missing));
    assert!(!harness.broker.cold_ahead(queue_id, 1000).pages.contains(&page));
}
