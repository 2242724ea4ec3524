//! Ready messages the broker does not hold in memory ("cold"), and how they leave and come back.
//!
//! A backlog can be far larger than memory should hold: consumers are down, producers go on. The
//! broker holds at most `BrokerConfig::ready_resident_max` ready messages; the rest of each
//! queue's ready messages stay only in the catalog, where every checkpoint writes every record,
//! and the queue keeps a count of them per catalog page. Counts per state include them.
//!
//! - **Leaving** ([`Broker::evict_cold`]): when more ready messages are resident than allowed, the
//!   storage thread evicts them from the end of the lease order (lowest priority, newest first),
//!   the messages of one priority on one catalog page at a time, and only from pages whose
//!   records the catalog holds durably and unchanged (the page is neither dirty nor part of a
//!   checkpoint still being written). What leases need next leaves last.
//! - **Coming back** ([`Broker::load_cold`]): the storage thread reads a cold page's records from
//!   the catalog (on another thread) and hands them over; every record that is ready, of the
//!   queue, and not held becomes resident again, unchanged. A lease, a listing of ready messages
//!   or a purge that reaches a cold page in its order waits until the page is back
//!   ([`Broker::cold_ahead`], [`Broker::cold_in_listing`]); a lease never hands out a message that
//!   comes after a cold page in the lease order (priority, then id), so the order is exact.
//! - Anything else that needs one cold message (a person's action, replay) makes it resident from
//!   the record read from the catalog ([`Broker::ensure_resident`]).
//!
//! Invariant: a message is counted in its queue's cold pages exactly when the broker does not
//! hold it and its durable catalog record is ready. Eviction keeps it because it takes only
//! durable, unchanged records and changes nothing on disk; loading keeps it because the storage
//! thread takes records only when no checkpoint became durable between asking for them and
//! getting them (a message changed since was held in memory until that checkpoint was durable,
//! so a record of a message not held now is current).

use super::checkpoint::{page_of, PAGE_ID_BITS};
use super::message::{MessageId, MessageMeta, MessageState, QueueId};
use super::{Broker, Resident};
use crate::limits::EVICT_HEAD_SLACK_COUNT;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// One catalog page's cold ready messages of one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ColdPage {
    pub count: u32,
    /// The priorities among them, each once.
    pub priorities: Vec<i32>,
    /// The oldest of them (ids grow with enqueue time) and when it was enqueued.
    pub oldest: (MessageId, u64),
    /// Whether `oldest` is still cold. Once it came back alone (a person's action, replay) the
    /// page's oldest is unknown until the page is read back ([`Broker::stale_cold_pages`]).
    pub oldest_known: bool,
}

/// A queue's cold ready messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ColdReady {
    /// By catalog page.
    pub pages: BTreeMap<u64, ColdPage>,
    /// How many of them each (priority, page) holds: where the lease order meets them.
    pub order: BTreeMap<(Reverse<i32>, u64), u32>,
    /// Their number.
    pub count: u64,
}

impl ColdReady {
    /// Counts a message that leaves memory.
    fn add(&mut self, id: MessageId, meta: &MessageMeta) {
        self.add_run(page_of(id), meta.priority, 1, (id, meta.enqueued_at_ms));
    }

    /// Counts `count` messages of one priority on one page that leave memory; `oldest` is the
    /// first of them.
    fn add_run(&mut self, page: u64, priority: i32, count: u32, oldest: (MessageId, u64)) {
        if count == 0 {
            return;
        }
        let entry = self.pages.entry(page).or_insert(ColdPage {
            count: 0,
            priorities: Vec::new(),
            oldest,
            oldest_known: true,
        });
        entry.count += count;
        if oldest.0 < entry.oldest.0 {
            entry.oldest = oldest;
        }
        if !entry.priorities.contains(&priority) {
            entry.priorities.push(priority);
        }
        *self.order.entry((Reverse(priority), page)).or_default() += count;
        self.count += u64::from(count);
    }

    /// Uncounts a message that comes back; `false` if its page has none of its priority counted.
    fn take_one(&mut self, id: MessageId, priority: i32) -> bool {
        let page = page_of(id);
        let key = (Reverse(priority), page);
        let Some(run) = self.order.get_mut(&key) else { return false };
        *run -= 1;
        if *run == 0 {
            self.order.remove(&key);
        }
        let entry = self.pages.get_mut(&page).expect("a counted run's page is counted");
        entry.count -= 1;
        entry.oldest_known &= entry.oldest.0 != id;
        self.count -= 1;
        if entry.count == 0 {
            self.remove_page(page);
        }
        true
    }

    /// Forgets a page; returns how many messages it still counted.
    fn remove_page(&mut self, page: u64) -> u32 {
        let Some(entry) = self.pages.remove(&page) else { return 0 };
        for priority in entry.priorities {
            self.order.remove(&(Reverse(priority), page));
        }
        self.count -= u64::from(entry.count);
        entry.count
    }

    /// Where the first cold message stands in the lease order.
    pub fn first(&self) -> Option<(Reverse<i32>, u64)> {
        self.order.first_key_value().map(|(key, _)| *key)
    }
}

/// The cold pages a request reaches, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColdAhead {
    /// Cold pages among the first positions of the order asked about, each once.
    pub pages: Vec<u64>,
    /// Whether the very first position is cold: nothing can be served before a page comes back.
    pub blocked: bool,
}

impl Broker {
    /// Ready messages held in memory, over all queues.
    pub fn ready_resident_count(&self) -> usize {
        self.queues.iter().map(|queue| queue.ready.len()).sum()
    }

    /// Ready messages left in the catalog, over all queues.
    pub fn cold_count(&self) -> u64 {
        self.queues.iter().map(|queue| queue.cold.count).sum()
    }

    /// Every catalog page holding cold ready messages of a queue, in page order.
    pub fn cold_pages(&self, queue_id: QueueId) -> Vec<u64> {
        self.queues[queue_id.0 as usize].cold.pages.keys().copied().collect()
    }

    /// The cold pages among the first `window` messages of a queue's lease order (a cold page
    /// counts as many positions as it has messages). Empty for a queue without cold messages.
    pub fn cold_ahead(&self, queue_id: QueueId, window: usize) -> ColdAhead {
        let queue = &self.queues[queue_id.0 as usize];
        let mut ahead = ColdAhead::default();
        if queue.cold.count == 0 {
            return ahead;
        }
        let mut hot = queue.ready.iter().peekable();
        let mut cold = queue.cold.order.iter().peekable();
        let mut seen = 0usize;
        while seen < window {
            let cold_next = match (hot.peek(), cold.peek()) {
                (_, None) => break,
                (None, Some(_)) => true,
                (Some(&&(priority, id)), Some(&(&first_cold, _))) => {
                    first_cold <= (priority, page_of(id))
                }
            };
            if cold_next {
                let (&(_, page), &count) = cold.next().expect("peeked");
                ahead.blocked |= seen == 0;
                if !ahead.pages.contains(&page) {
                    ahead.pages.push(page);
                }
                seen += count as usize;
            } else {
                hot.next();
                seen += 1;
            }
        }
        ahead
    }

    /// The cold pages a listing of a queue's ready messages in id order reaches within `limit`
    /// messages after (or, `descending`, before) the cursor: they must come back first.
    pub fn cold_in_listing(
        &self,
        queue_id: QueueId,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
    ) -> Vec<u64> {
        let queue = &self.queues[queue_id.0 as usize];
        if queue.cold.count == 0 {
            return Vec::new();
        }
        let members = &queue.members[MessageState::Ready.index()];
        let mut pages = Vec::new();
        let mut seen = 0usize;
        if descending {
            let before = after.unwrap_or(MessageId(u64::MAX));
            let mut hot = members.range(..before).rev().peekable();
            // A cold page holding the cursor may hold messages before it.
            let mut cold = queue.cold.pages.range(..=page_of(before)).rev().peekable();
            while seen < limit {
                let cold_next = match (hot.peek(), cold.peek()) {
                    (_, None) => break,
                    (None, Some(_)) => true,
                    (Some(&&id), Some(&(&page, _))) => page >= page_of(id),
                };
                if cold_next {
                    let (&page, entry) = cold.next().expect("peeked");
                    pages.push(page);
                    seen += entry.count as usize;
                } else {
                    hot.next();
                    seen += 1;
                }
            }
        } else {
            let from = after.map_or(MessageId(0), |cursor| MessageId(cursor.0.saturating_add(1)));
            let mut hot = members.range(from..).peekable();
            let mut cold = queue.cold.pages.range(page_of(from)..).peekable();
            while seen < limit {
                let cold_next = match (hot.peek(), cold.peek()) {
                    (_, None) => break,
                    (None, Some(_)) => true,
                    (Some(&&id), Some(&(&page, _))) => page <= page_of(id),
                };
                if cold_next {
                    let (&page, entry) = cold.next().expect("peeked");
                    pages.push(page);
                    seen += entry.count as usize;
                } else {
                    hot.next();
                    seen += 1;
                }
            }
        }
        pages
    }

    /// Whether a lease may hand out the resident ready message `(priority, id)`: no cold message
    /// comes before it in the lease order.
    pub(super) fn ahead_of_cold(&self, queue_id: QueueId, priority: i32, id: MessageId) -> bool {
        match self.queues[queue_id.0 as usize].cold.first() {
            None => true,
            Some(first_cold) => (Reverse(priority), page_of(id)) < first_cold,
        }
    }

    /// Evicts ready messages while more than `ready_resident_max` are held, at most `work_max`
    /// of them in this call (so one call stays short): from the queues holding the most, from the
    /// end of their lease order (lowest priority, newest), the messages of one priority on one
    /// catalog page at a time, skipping pages whose records the catalog does not hold durably and
    /// unchanged. The front of the order, which leases need next, leaves last. Returns how many
    /// left memory.
    pub fn evict_cold(&mut self, work_max: usize) -> usize {
        let resident = self.ready_resident_count();
        let limit = self.config.ready_resident_max;
        if resident <= limit {
            return 0;
        }
        let mut wanted = (resident - limit).min(work_max);
        let mut by_size: Vec<(usize, QueueId)> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, queue)| !queue.ready.is_empty())
            .map(|(index, queue)| (queue.ready.len(), QueueId(index as u32)))
            .collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        // The run of resident messages just ahead of a queue's first cold one is what leases
        // need next (often just read back): it leaves only when memory is well over the limit.
        let head_too = resident > limit.saturating_add(EVICT_HEAD_SLACK_COUNT);
        let mut evicted = 0;
        for (_, queue_id) in by_size {
            let first_cold = self.queues[queue_id.0 as usize].cold.first();
            let mut cursor = None;
            while wanted > 0 {
                let Some((priority, page)) = self.clean_tail(queue_id, cursor) else { break };
                if !head_too && first_cold.is_some_and(|first| (priority, page) < first) {
                    break;
                }
                let count = self.evict_run(queue_id, priority, page);
                evicted += count;
                wanted = wanted.saturating_sub(count);
                cursor = Some((priority, MessageId(page << PAGE_ID_BITS)));
            }
            if wanted == 0 {
                break;
            }
        }
        evicted
    }

    /// The last (priority, page) in a queue's lease order, before `before`, holding resident
    /// ready messages whose page the catalog holds durably and unchanged.
    fn clean_tail(
        &self,
        queue_id: QueueId,
        before: Option<(Reverse<i32>, MessageId)>,
    ) -> Option<(Reverse<i32>, u64)> {
        let ready = &self.queues[queue_id.0 as usize].ready;
        let mut cursor = match before {
            None => ready.last().copied(),
            Some(before) => ready.range(..before).next_back().copied(),
        };
        while let Some((priority, id)) = cursor {
            let page = page_of(id);
            if self.book.is_clean(page) {
                return Some((priority, page));
            }
            // Skip the rest of this page at this priority.
            cursor =
                ready.range(..(priority, MessageId(page << PAGE_ID_BITS))).next_back().copied();
        }
        None
    }

    /// Moves a queue's resident ready messages of one priority on one catalog page out of memory.
    fn evict_run(&mut self, queue_id: QueueId, priority: Reverse<i32>, page: u64) -> usize {
        let first = (priority, MessageId(page << PAGE_ID_BITS));
        let end = (priority, MessageId((page + 1) << PAGE_ID_BITS));
        let queue = &mut self.queues[queue_id.0 as usize];
        let ids: Vec<MessageId> = queue.ready.range(first..end).map(|(_, id)| *id).collect();
        let mut oldest = None;
        for id in &ids {
            let Resident { meta, timer } = self.active.remove(id).expect("ready member is active");
            debug_assert!(timer.is_none(), "ready messages have no timer");
            queue.ready.remove(&(priority, *id));
            queue.members[MessageState::Ready.index()].remove(id);
            oldest = oldest.or(Some((*id, meta.enqueued_at_ms)));
        }
        if let Some(oldest) = oldest {
            queue.cold.add_run(page, priority.0, ids.len() as u32, oldest);
        }
        ids.len()
    }

    /// Takes the records read from one cold page of a queue back into memory: each that is
    /// ready, of this queue and not held. The page is then no longer cold; returns how many
    /// messages it still counted that the records did not have (0 unless the catalog lost them:
    /// they are uncounted).
    pub fn load_cold(
        &mut self,
        queue_id: QueueId,
        page: u64,
        records: Vec<(MessageId, MessageMeta)>,
    ) -> u32 {
        for (id, meta) in records {
            let fits = meta.queue_id == queue_id
                && meta.state == MessageState::Ready
                && page_of(id) == page
                && !self.is_resident(id);
            if fits {
                self.warm(id, meta);
            }
        }
        self.drop_cold_page(queue_id, page)
    }

    /// Forgets a cold page whose records cannot be read back: its messages are uncounted (they
    /// stay in the catalog; a restart counts them again). Returns how many.
    pub fn drop_cold_page(&mut self, queue_id: QueueId, page: u64) -> u32 {
        let queue = &mut self.queues[queue_id.0 as usize];
        let missing = queue.cold.remove_page(page);
        queue.counts[MessageState::Ready.index()] -= u64::from(missing);
        missing
    }

    /// Makes a cold ready message resident with its catalog record; `false` (and nothing done) if
    /// its queue counts no cold message on its page.
    pub(super) fn warm(&mut self, id: MessageId, meta: MessageMeta) -> bool {
        debug_assert_eq!(meta.state, MessageState::Ready);
        let queue_id = meta.queue_id;
        let Some(queue) = self.queues.get_mut(queue_id.0 as usize) else { return false };
        if !queue.cold.take_one(id, meta.priority) {
            return false;
        }
        queue.ready.insert((Reverse(meta.priority), id));
        queue.members[MessageState::Ready.index()].insert(id);
        // Not woken: the message was counted ready all along, and a lease that reached it waited
        // for it rather than coming back empty.
        self.active.insert(id, Resident { meta, timer: None });
        true
    }

    /// Counts a ready message restored from the catalog as cold (startup, over the budget).
    pub(super) fn restore_cold(&mut self, id: MessageId, meta: &MessageMeta) {
        let queue = &mut self.queues[meta.queue_id.0 as usize];
        queue.counts[MessageState::Ready.index()] += 1;
        queue.cold.add(id, meta);
    }

    /// The enqueue time of a queue's oldest cold message: that of the first cold page's oldest
    /// (until that page is read back, a lower bound if its oldest came back alone).
    pub(super) fn oldest_cold_enqueued_at_ms(&self, queue_id: QueueId) -> Option<u64> {
        let cold = &self.queues[queue_id.0 as usize].cold;
        cold.pages.values().next().map(|entry| entry.oldest.1)
    }

    /// For each queue whose first cold page's oldest message came back alone (so its oldest ready
    /// age is only a lower bound), that page: reading it back makes the age exact again. The
    /// storage thread has them read in the background; recovery reads them before it finishes.
    pub fn stale_cold_pages(&self) -> Vec<(QueueId, u64)> {
        let first_stale = |(index, queue): (usize, &super::QueueState)| {
            let (page, entry) = queue.cold.pages.iter().next()?;
            (!entry.oldest_known).then_some((QueueId(index as u32), *page))
        };
        self.queues.iter().enumerate().filter_map(first_stale).collect()
    }
}
