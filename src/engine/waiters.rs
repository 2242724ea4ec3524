//! Long-poll wake-ups: one `Notify` per queue name, signalled when the queue gains ready messages.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// The notifiers of the queues someone is long-polling.
#[derive(Default)]
pub struct Waiters {
    by_queue: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Waiters {
    /// The notifier of `queue`, created on first use.
    pub fn notifier(&self, queue: &str) -> Arc<Notify> {
        let mut by_queue = self.by_queue.lock();
        if let Some(notify) = by_queue.get(queue) {
            return notify.clone();
        }
        let notify = Arc::new(Notify::new());
        by_queue.insert(queue.to_string(), notify.clone());
        notify
    }

    /// Drops the notifiers nobody waits on, so that the map does not grow with every queue name
    /// ever long-polled.
    pub(super) fn forget_idle(&self) {
        self.by_queue.lock().retain(|_, notify| Arc::strong_count(notify) > 1);
    }

    /// Wakes every lease waiting on `queue`.
    pub(super) fn wake(&self, queue: &str) {
        if let Some(notify) = self.by_queue.lock().get(queue) {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifiers_without_waiters_are_forgotten() {
        let waiters = Waiters::default();
        let held = waiters.notifier("busy");
        drop(waiters.notifier("idle"));
        waiters.forget_idle();
        let names: Vec<String> = waiters.by_queue.lock().keys().cloned().collect();
        assert_eq!(names, vec!["busy".to_string()]);
        drop(held);
        waiters.forget_idle();
        assert!(waiters.by_queue.lock().is_empty());
    }
}
