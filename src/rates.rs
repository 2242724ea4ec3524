//! Enqueue, delivery and failure rates per queue: counts per 5-second bucket over the last five
//! minutes, behind `GET /v1/rates` (the outbox page's charts).
//!
//! The counts come from the event log, the same events `GET /v1/events` streams: a follower task
//! reads every published event and adds `enqueued`, `acked` and failure (`retrying`, `dead`)
//! events to their queue's bucket. So a count means what an event means: a change that is durable.
//! Like the events, the counts live in memory only and start empty when the server starts.
//!
//! The follower is woken by every publish and reads up to the ring's length at a time, so it keeps
//! up as long as it gets a thread within 10,000 events; events it ever fell too far behind to read
//! are not counted, and `missed_event_count` says how many there were.

use crate::events::{Event, EventLog};
use crate::queue::NoticeKind;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The width of one bucket, in milliseconds.
pub const RATE_BUCKET_MS: u64 = 5_000;
/// How many buckets each queue keeps: with 5 s buckets, the last five minutes.
pub const RATE_BUCKET_COUNT: usize = 60;
/// Events the follower takes from the ring per lock, so that it never holds it for long.
const FOLLOW_BATCH_COUNT_MAX: usize = 1024;

/// What happened to a queue's messages within one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Messages stored (one per message of a batch).
    pub enqueued: u32,
    /// Messages delivered (acked).
    pub acked: u32,
    /// Deliveries that failed: nacks and lease expiries, whether the message retries or is dead.
    pub failed: u32,
}

/// One queue's ring of buckets. Bucket number `n` covers `[n × RATE_BUCKET_MS, (n + 1) ×
/// RATE_BUCKET_MS)` and sits at `n % RATE_BUCKET_COUNT`; `newest` is the highest number written.
struct QueueRates {
    newest: u64,
    buckets: [Bucket; RATE_BUCKET_COUNT],
}

impl QueueRates {
    fn new(number: u64) -> QueueRates {
        QueueRates { newest: number, buckets: [Bucket::default(); RATE_BUCKET_COUNT] }
    }

    /// The bucket `number`, after clearing the ones skipped since the newest; `None` when it has
    /// already left the window (an event that arrived very late).
    fn bucket_mut(&mut self, number: u64) -> Option<&mut Bucket> {
        if number + RATE_BUCKET_COUNT as u64 <= self.newest {
            return None;
        }
        if number > self.newest {
            let skipped = (number - self.newest).min(RATE_BUCKET_COUNT as u64);
            for step in 1..=skipped {
                self.buckets[slot(self.newest + step)] = Bucket::default();
            }
            self.newest = number;
        }
        Some(&mut self.buckets[slot(number)])
    }

    /// The bucket `number` as it stands, or empty if it was never written or has been reused.
    fn get(&self, number: u64) -> Bucket {
        let held = number <= self.newest && number + RATE_BUCKET_COUNT as u64 > self.newest;
        if held {
            self.buckets[slot(number)]
        } else {
            Bucket::default()
        }
    }
}

fn slot(number: u64) -> usize {
    (number % RATE_BUCKET_COUNT as u64) as usize
}

/// Every queue's buckets. Pure: time comes in with the events and the caller.
#[derive(Default)]
pub struct RateTable {
    queues: HashMap<Arc<str>, QueueRates>,
    /// Events published that the follower never read (it fell more than the ring behind).
    missed_event_count: u64,
    /// The newest bucket number seen, to forget idle queues once per bucket.
    newest: u64,
}

/// One queue's series, oldest bucket first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSeries {
    pub name: String,
    pub buckets: Vec<Bucket>,
}

/// The window a snapshot covers and every matching queue's series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSnapshot {
    /// Start of the oldest bucket (epoch ms).
    pub from_ms: u64,
    /// The time of the snapshot: the newest bucket runs from its start to here.
    pub to_ms: u64,
    pub missed_event_count: u64,
    /// Queues with at least one event in the window, sorted by name.
    pub queues: Vec<QueueSeries>,
}

impl RateTable {
    /// Counts one event (kinds other than enqueued, acked and failures are ignored).
    pub fn record(&mut self, event: &Event) {
        let apply: fn(&mut Bucket) = match event.kind {
            NoticeKind::Enqueued => |bucket| bucket.enqueued = bucket.enqueued.saturating_add(1),
            NoticeKind::Acked => |bucket| bucket.acked = bucket.acked.saturating_add(1),
            NoticeKind::Retrying | NoticeKind::Dead => {
                |bucket| bucket.failed = bucket.failed.saturating_add(1)
            }
            _ => return,
        };
        let number = event.at_ms / RATE_BUCKET_MS;
        if number > self.newest {
            self.newest = number;
            self.forget_idle();
        }
        let rates =
            self.queues.entry(event.queue.clone()).or_insert_with(|| QueueRates::new(number));
        if let Some(bucket) = rates.bucket_mut(number) {
            apply(bucket);
        }
    }

    /// Adds events that were published but never read.
    pub fn record_missed(&mut self, count: u64) {
        self.missed_event_count = self.missed_event_count.saturating_add(count);
    }

    /// Drops queues with no event in the window, so the table holds only active queues.
    fn forget_idle(&mut self) {
        let newest = self.newest;
        self.queues.retain(|_, rates| rates.newest + RATE_BUCKET_COUNT as u64 > newest);
    }

    /// The window ending at `now_ms`, for the queues `wanted` accepts.
    pub fn snapshot(&self, now_ms: u64, wanted: impl Fn(&str) -> bool) -> RateSnapshot {
        let last = now_ms / RATE_BUCKET_MS;
        let first = (last + 1).saturating_sub(RATE_BUCKET_COUNT as u64);
        let mut queues: Vec<QueueSeries> = self
            .queues
            .iter()
            .filter(|(name, rates)| wanted(name) && rates.newest >= first)
            .map(|(name, rates)| QueueSeries {
                name: name.to_string(),
                buckets: (first..=last).map(|number| rates.get(number)).collect(),
            })
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        RateSnapshot {
            from_ms: first * RATE_BUCKET_MS,
            to_ms: now_ms,
            missed_event_count: self.missed_event_count,
            queues,
        }
    }
}

/// The table behind a lock, shared by the follower and the handler.
#[derive(Default)]
pub struct Rates {
    table: Mutex<RateTable>,
}

impl Rates {
    pub fn snapshot(&self, now_ms: u64, wanted: impl Fn(&str) -> bool) -> RateSnapshot {
        self.table.lock().snapshot(now_ms, wanted)
    }
}

/// Reads every event published from now on into `rates`, until `shutdown` turns true.
pub async fn follow(
    events: Arc<EventLog>,
    rates: Arc<Rates>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut after = events.last_id();
    loop {
        // Registered before reading, so that an event published in between still wakes us.
        let published = events.published().notified();
        tokio::pin!(published);
        published.as_mut().enable();
        let (read_to, full_batch) = read_into(&events, after, &mut rates.table.lock());
        after = read_to;
        if full_batch {
            continue;
        }
        tokio::select! {
            _ = &mut published => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Counts the events after id `after` (one batch at most) and those that were dropped from the
/// ring before they could be read; returns the id read up to and whether the batch was full.
fn read_into(events: &EventLog, after: u64, table: &mut RateTable) -> (u64, bool) {
    let (batch, missed) = events.after(after, FOLLOW_BATCH_COUNT_MAX);
    let mut read_to = after;
    if missed {
        let first_id = batch.first().map_or(events.last_id() + 1, |event| event.id);
        table.record_missed(first_id.saturating_sub(after + 1));
        // Counted once: the next read starts where the ring does.
        read_to = first_id - 1;
    }
    for event in &batch {
        table.record(event);
        read_to = event.id;
    }
    (read_to, batch.len() == FOLLOW_BATCH_COUNT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: NoticeKind, queue: &str, at_ms: u64) -> Event {
        Event {
            id: 0,
            kind,
            queue: Arc::from(queue),
            message_id: None,
            attempt: 0,
            at_ms,
            detail: None,
        }
    }

    #[test]
    fn events_are_counted_in_their_queue_and_bucket() {
        let mut table = RateTable::default();
        let start = 1_000 * RATE_BUCKET_MS;
        table.record(&event(NoticeKind::Enqueued, "a", start));
        table.record(&event(NoticeKind::Enqueued, "a", start + 1));
        table.record(&event(NoticeKind::Acked, "a", start + RATE_BUCKET_MS));
        table.record(&event(NoticeKind::Dead, "a", start + RATE_BUCKET_MS));
        table.record(&event(NoticeKind::Retrying, "b", start));
        table.record(&event(NoticeKind::Leased, "b", start));
        let snapshot = table.snapshot(start + RATE_BUCKET_MS + 10, |_| true);
        assert_eq!(snapshot.queues.len(), 2);
        let a = &snapshot.queues[0];
        assert_eq!(a.name, "a");
        assert_eq!(a.buckets.len(), RATE_BUCKET_COUNT);
        assert_eq!(a.buckets[RATE_BUCKET_COUNT - 2], Bucket { enqueued: 2, acked: 0, failed: 0 });
        assert_eq!(a.buckets[RATE_BUCKET_COUNT - 1], Bucket { enqueued: 0, acked: 1, failed: 1 });
        assert_eq!(snapshot.queues[1].buckets[RATE_BUCKET_COUNT - 2].failed, 1);
        assert_eq!(snapshot.from_ms, start + 2 * RATE_BUCKET_MS - RATE_BUCKET_COUNT as u64 * 5_000);
        let only_b = table.snapshot(start + RATE_BUCKET_MS, |name| name == "b");
        assert_eq!(only_b.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn old_buckets_leave_the_window_and_idle_queues_are_forgotten() {
        let mut table = RateTable::default();
        let start = 1_000 * RATE_BUCKET_MS;
        table.record(&event(NoticeKind::Enqueued, "a", start));
        table.record(&event(NoticeKind::Enqueued, "b", start));
        // `a` goes on past the window; its old bucket is reused and must read as empty.
        let later = start + RATE_BUCKET_COUNT as u64 * RATE_BUCKET_MS;
        table.record(&event(NoticeKind::Acked, "a", later));
        let snapshot = table.snapshot(later, |_| true);
        assert_eq!(snapshot.queues.len(), 1, "b had nothing in the window: {snapshot:?}");
        let total: u32 = snapshot.queues[0].buckets.iter().map(|b| b.enqueued + b.acked).sum();
        assert_eq!(total, 1);
        assert_eq!(table.queues.len(), 1, "b is forgotten, not only hidden");
        // An event older than the window is dropped rather than counted in a reused slot.
        table.record(&event(NoticeKind::Enqueued, "a", start));
        assert_eq!(
            table.snapshot(later, |_| true).queues[0]
                .buckets
                .iter()
                .map(|b| b.enqueued)
                .sum::<u32>(),
            0
        );
        // A late event still inside the window lands in its own bucket.
        table.record(&event(NoticeKind::Enqueued, "a", later - RATE_BUCKET_MS));
        let series = &table.snapshot(later, |_| true).queues[0].buckets;
        assert_eq!(series[RATE_BUCKET_COUNT - 2].enqueued, 1);
    }

    #[test]
    fn events_dropped_from_the_ring_before_they_were_read_are_counted_once() {
        let events = EventLog::new(4, 1);
        let now_ms = 1_000 * RATE_BUCKET_MS;
        events.publish((0..10).map(|_| event(NoticeKind::Enqueued, "q", now_ms)));
        let mut table = RateTable::default();
        let (read_to, full) = read_into(&events, 0, &mut table);
        assert_eq!((read_to, full), (10, false));
        let snapshot = table.snapshot(now_ms, |_| true);
        assert_eq!(snapshot.missed_event_count, 6, "ids 1 to 6 left the ring unread");
        assert_eq!(snapshot.queues[0].buckets.iter().map(|b| b.enqueued).sum::<u32>(), 4);
        assert_eq!(read_into(&events, read_to, &mut table), (10, false));
        assert_eq!(table.snapshot(now_ms, |_| true).missed_event_count, 6);
    }

    #[tokio::test]
    async fn the_follower_counts_what_is_published() {
        let events = Arc::new(EventLog::new(16, 1));
        let rates = Arc::new(Rates::default());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let follower = tokio::spawn(follow(events.clone(), rates.clone(), shutdown));
        tokio::task::yield_now().await;
        let now_ms = crate::clock::now_ms();
        events.publish((0..3).map(|_| event(NoticeKind::Enqueued, "q", now_ms)));
        let counted =
            || {
                rates.snapshot(now_ms, |_| true).queues.first().map_or(0, |queue| {
                    queue.buckets.iter().map(|bucket| bucket.enqueued).sum::<u32>()
                })
            };
        for _ in 0..200 {
            if counted() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(counted(), 3);
        let _ = stop.send(true);
        follower.await.expect("the follower ends on shutdown");
    }
}
