//! The event log: a bounded in-memory ring of what happened, for `GET /v1/events`.
//!
//! The storage thread publishes the broker's notices after each successful commit, so an event is
//! only ever shown for a change that is durable. Readers keep the id of the last event they saw and
//! wait for newer ones; a reader that falls more than the ring's length behind is told so (it
//! resumes at the oldest event still held). Events are not persisted: they are notifications, and
//! the messages themselves are the record.

use crate::queue::{MessageId, NoticeKind};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;

/// One published event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Increasing, from the server's start time in microseconds; the SSE `id:` field.
    pub id: u64,
    pub kind: NoticeKind,
    pub queue: Arc<str>,
    pub message_id: Option<MessageId>,
    pub attempt: u32,
    pub at_ms: u64,
    /// For failures: the consumer's error text.
    pub detail: Option<String>,
}

/// The ring and its wake-up.
pub struct EventLog {
    ring: Mutex<Ring>,
    capacity: usize,
    published: Notify,
}

struct Ring {
    events: VecDeque<Event>,
    next_id: u64,
}

impl EventLog {
    /// An empty log holding at most `capacity` events, whose first event gets `first_id`.
    ///
    /// The server starts ids at its start time in microseconds, so ids keep increasing across
    /// restarts and a `Last-Event-ID` from an earlier process is recognised as too old.
    pub fn new(capacity: usize, first_id: u64) -> EventLog {
        assert!(capacity > 0, "an event log holds at least one event");
        assert!(first_id > 0, "event id 0 means no event");
        EventLog {
            ring: Mutex::new(Ring { events: VecDeque::with_capacity(capacity), next_id: first_id }),
            capacity,
            published: Notify::new(),
        }
    }

    /// Appends events (ids are assigned here) and wakes every reader.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut ring = self.ring.lock();
        let mut any = false;
        for mut event in events {
            event.id = ring.next_id;
            ring.next_id += 1;
            if ring.events.len() == self.capacity {
                ring.events.pop_front();
            }
            ring.events.push_back(event);
            any = true;
        }
        drop(ring);
        if any {
            self.published.notify_waiters();
        }
    }

    /// Events with an id above `after`, at most `limit`, and whether some were already dropped from
    /// the ring (the reader fell behind or resumed from too old an id).
    pub fn after(&self, after: u64, limit: usize) -> (Vec<Event>, bool) {
        let ring = self.ring.lock();
        let oldest_id = ring.events.front().map_or(ring.next_id, |event| event.id);
        // An id from the future (another process) counts as missed too: resume at the oldest.
        let from_future = after >= ring.next_id;
        let after = if from_future { 0 } else { after };
        let missed = from_future || after.saturating_add(1) < oldest_id;
        let skip = after.saturating_add(1).saturating_sub(oldest_id) as usize;
        let events = ring.events.iter().skip(skip).take(limit).cloned().collect();
        (events, missed)
    }

    /// The id just before the next event: a reader starting here gets only new events.
    pub fn last_id(&self) -> u64 {
        self.ring.lock().next_id - 1
    }

    /// The wake-up that `publish` signals; register with `notified().enable()` before reading.
    pub fn published(&self) -> &Notify {
        &self.published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: NoticeKind) -> Event {
        Event {
            id: 0,
            kind,
            queue: Arc::from("q"),
            message_id: None,
            attempt: 0,
            at_ms: 0,
            detail: None,
        }
    }

    #[test]
    fn readers_resume_after_an_id_and_learn_when_they_missed_events() {
        let log = EventLog::new(3, 1);
        log.publish((0..5).map(|_| event(NoticeKind::Enqueued)));
        assert_eq!(log.last_id(), 5);
        let (events, missed) = log.after(0, 10);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(missed);
        let (events, missed) = log.after(99, 10);
        assert_eq!(events.len(), 3, "an id from another process resumes at the oldest");
        assert!(missed);
        let (events, missed) = log.after(3, 10);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
        assert!(!missed);
        let (events, missed) = log.after(5, 10);
        assert!(events.is_empty() && !missed);
        let (events, _) = log.after(2, 1);
        assert_eq!(events.len(), 1);
    }
}
