//! The ledger: which message ids the bench enqueued, leased and acked, and whether each enqueued
//! message was consumed exactly once.
//!
//! Speed figures mean nothing if the server lost or duplicated messages to reach them, so the bench
//! checks delivery as it measures. Ids are unique forever (see the API contract), so one ledger
//! serves every phase of a run even though the phases use different queues.

use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Every id the bench saw, by what happened to it.
#[derive(Default)]
pub struct Ledger {
    /// Ids the server assigned to our enqueues.
    enqueued: HashSet<u64>,
    /// Ids the server handed out twice in enqueue replies (never legitimate).
    assigned_twice_count: u64,
    /// Deliveries per id (a lease that returned it).
    leased: HashMap<u64, u32>,
    /// Acks that the server confirmed (`"acked"`), per id.
    acked: HashMap<u64, u32>,
}

/// The verdict on a run: counts, and whether every enqueued message was consumed exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Distinct ids returned by enqueues.
    pub enqueued: u64,
    /// Distinct ids acked.
    pub acked: u64,
    /// Ids acked exactly once.
    pub acked_once: u64,
    /// Ids the server confirmed as acked more than once (a duplicate delivery that was consumed twice).
    pub duplicates: u64,
    /// Ids returned by two enqueues.
    pub ids_assigned_twice: u64,
    /// Enqueued ids never acked; `None` when the run did not try to consume what it enqueued.
    pub missing: Option<u64>,
    /// Acked ids this run never enqueued; `None` when the run consumed a queue it did not fill.
    pub unexpected: Option<u64>,
    /// Ids leased more than once (legitimate only after a lease expired; the bench's leases are long).
    pub redelivered: u64,
    /// True when nothing was lost or duplicated.
    pub ok: bool,
}

/// What the run set out to do, which decides which checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectations {
    /// Every enqueued id must be acked (the run consumed what it enqueued).
    pub all_consumed: bool,
    /// Every acked id must have been enqueued by this run (it consumed only its own queue).
    pub only_own: bool,
}

impl Ledger {
    /// Records the ids of one or more enqueue replies.
    pub fn record_enqueued(&mut self, ids: &[u64]) {
        for &id in ids {
            if !self.enqueued.insert(id) {
                self.assigned_twice_count += 1;
            }
        }
    }

    /// Records the ids that leases returned.
    pub fn record_leased(&mut self, ids: &[u64]) {
        for &id in ids {
            *self.leased.entry(id).or_default() += 1;
        }
    }

    /// Records the ids whose ack the server confirmed.
    pub fn record_acked(&mut self, ids: &[u64]) {
        for &id in ids {
            *self.acked.entry(id).or_default() += 1;
        }
    }

    /// Checks the run against `expectations`.
    pub fn verify(&self, expectations: Expectations) -> Verification {
        let acked_once = self.acked.values().filter(|&&count| count == 1).count() as u64;
        let duplicates = self.acked.values().filter(|&&count| count > 1).count() as u64;
        let missing = expectations
            .all_consumed
            .then(|| self.enqueued.iter().filter(|id| !self.acked.contains_key(id)).count() as u64);
        let unexpected = expectations
            .only_own
            .then(|| self.acked.keys().filter(|id| !self.enqueued.contains(id)).count() as u64);
        let redelivered = self.leased.values().filter(|&&count| count > 1).count() as u64;
        let ok = duplicates == 0
            && self.assigned_twice_count == 0
            && missing.unwrap_or(0) == 0
            && unexpected.unwrap_or(0) == 0;
        Verification {
            enqueued: self.enqueued.len() as u64,
            acked: self.acked.len() as u64,
            acked_once,
            duplicates,
            ids_assigned_twice: self.assigned_twice_count,
            missing,
            unexpected,
            redelivered,
            ok,
        }
    }
}

impl Verification {
    /// One line for the table output and for the error when the run failed.
    pub fn summary(&self) -> String {
        let optional =
            |value: Option<u64>| value.map_or("n/a".to_string(), |count| count.to_string());
        format!(
            "{} enqueued, {} acked exactly once, {} acked twice or more, {} missing, {} unexpected, \
             {} ids assigned twice, {} redelivered",
            self.enqueued,
            self.acked_once,
            self.duplicates,
            optional(self.missing),
            optional(self.unexpected),
            self.ids_assigned_twice,
            self.redelivered
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Expectations = Expectations { all_consumed: true, only_own: true };

    #[test]
    fn every_id_acked_once_passes() {
        let mut ledger = Ledger::default();
        ledger.record_enqueued(&[1, 2, 3]);
        ledger.record_leased(&[1, 2, 3]);
        ledger.record_acked(&[3, 1, 2]);
        let verification = ledger.verify(STRICT);
        assert!(verification.ok, "{verification:?}");
        assert_eq!(verification.acked_once, 3);
        assert_eq!(verification.missing, Some(0));
    }

    #[test]
    fn lost_duplicated_foreign_and_reassigned_ids_fail() {
        let mut ledger = Ledger::default();
        ledger.record_enqueued(&[1, 2, 3]);
        ledger.record_acked(&[1, 2]);
        assert_eq!(ledger.verify(STRICT).missing, Some(1));
        assert!(!ledger.verify(STRICT).ok);

        ledger.record_acked(&[3, 3]);
        assert_eq!(ledger.verify(STRICT).duplicates, 1);
        assert!(!ledger.verify(STRICT).ok);

        let mut ledger = Ledger::default();
        ledger.record_enqueued(&[1]);
        ledger.record_acked(&[1, 9]);
        assert_eq!(ledger.verify(STRICT).unexpected, Some(1));
        assert!(!ledger.verify(STRICT).ok);

        let mut ledger = Ledger::default();
        ledger.record_enqueued(&[1, 1]);
        assert!(!ledger.verify(Expectations { all_consumed: false, only_own: false }).ok);
    }

    #[test]
    fn checks_that_do_not_apply_are_skipped() {
        let mut ledger = Ledger::default();
        ledger.record_enqueued(&[1, 2]);
        let loose = Expectations { all_consumed: false, only_own: false };
        let verification = ledger.verify(loose);
        assert!(verification.ok);
        assert_eq!(verification.missing, None);
        assert_eq!(verification.unexpected, None);
    }
}
