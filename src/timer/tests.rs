use super::*;
use crate::random::SplitMix64;
use std::collections::BTreeMap;

const SECOND_MS: u64 = 1000;
const DAY_MS: u64 = 24 * 60 * 60 * SECOND_MS;
const YEAR_MS: u64 = 365 * DAY_MS;
/// A realistic Unix-epoch time, so that tests exercise non-zero high digits.
const EPOCH_NOW_MS: u64 = 1_700_000_000_123;

impl TimerWheel {
    /// Checks every structural invariant; O(entries + slots), for tests only.
    ///
    /// Slot minimums are checked as lower bounds (cancellation may leave them early), and as
    /// exact when `exact_minimums` (nothing was cancelled).
    fn check_invariants(&self, exact_minimums: bool) {
        let mut count = self.due.len();
        let deadline = |index: &u32| self.slab[*index as usize].deadline_ms;
        for (position, index) in self.due.iter().enumerate() {
            let timer = &self.slab[*index as usize];
            assert!(timer.deadline_ms <= self.now_ms, "due entry after {}", self.now_ms);
            assert_eq!(timer.place.level, DUE_LEVEL);
            assert_eq!(timer.place.index as usize, position);
        }
        let due_min_ms = self.due.iter().map(deadline).min().unwrap_or(u64::MAX);
        assert!(self.due_min_deadline_ms <= due_min_ms);
        if exact_minimums || self.due.is_empty() {
            assert_eq!(self.due_min_deadline_ms, due_min_ms);
        }
        for (level, lvl) in self.levels.iter().enumerate() {
            for (slot, entries) in lvl.slots.iter().enumerate() {
                assert_eq!(lvl.occupied_slots >> slot & 1 == 1, !entries.is_empty());
                let min_ms = entries.iter().map(deadline).min().unwrap_or(u64::MAX);
                assert!(lvl.slot_min_deadline_ms[slot] <= min_ms);
                if exact_minimums || entries.is_empty() {
                    assert_eq!(lvl.slot_min_deadline_ms[slot], min_ms);
                }
                for (position, index) in entries.iter().enumerate() {
                    let timer = &self.slab[*index as usize];
                    assert!(timer.deadline_ms > self.now_ms);
                    assert_eq!(level_for(self.now_ms, timer.deadline_ms), level);
                    assert_eq!(slot_for(timer.deadline_ms, level), slot);
                    assert_eq!(timer.place.level as usize, level);
                    assert_eq!(timer.place.slot as usize, slot);
                    assert_eq!(timer.place.index as usize, position);
                }
                count += entries.len();
            }
        }
        assert_eq!(self.len, count, "len bookkeeping");
        let free_count = self.slab.iter().filter(|t| t.place.level == FREE_LEVEL).count();
        assert_eq!(free_count, self.free.len());
        assert_eq!(self.slab.len(), count + free_count);
    }

    fn assert_invariants(&self) {
        self.check_invariants(true);
    }
}

/// Expires to `now_ms` and returns the fired entries sorted, for multiset comparison.
fn expire_sorted(wheel: &mut TimerWheel, now_ms: u64) -> Vec<Entry> {
    let mut out = Vec::new();
    wheel.expire(now_ms, &mut out);
    out.sort_unstable();
    out
}

#[test]
fn insert_past_now_and_future_deadlines() {
    let mut wheel = TimerWheel::new(1000);
    wheel.insert(10, 1);
    wheel.insert(1000, 2);
    wheel.insert(1001, 3);
    wheel.insert(0, 4);
    assert_eq!(wheel.len(), 4);
    assert_eq!(wheel.next_deadline_ms(), Some(0));
    assert_eq!(expire_sorted(&mut wheel, 1000), vec![(0, 4), (10, 1), (1000, 2)]);
    assert_eq!(wheel.next_deadline_ms(), Some(1001));
    assert_eq!(expire_sorted(&mut wheel, 1001), vec![(1001, 3)]);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline_ms(), None);
    wheel.assert_invariants();
}

#[test]
fn deadline_equal_to_now_fires_and_one_later_does_not() {
    for start_ms in [0, 63, 64, EPOCH_NOW_MS, u64::MAX - 5_000] {
        let mut wheel = TimerWheel::new(start_ms);
        let deadline_ms = start_ms + 777;
        wheel.insert(deadline_ms, 9);
        assert!(expire_sorted(&mut wheel, deadline_ms - 1).is_empty(), "start {start_ms}");
        assert_eq!(wheel.next_deadline_ms(), Some(deadline_ms));
        assert_eq!(expire_sorted(&mut wheel, deadline_ms), vec![(deadline_ms, 9)]);
        // Inserting exactly at the wheel's time fires on the very next expire, even at the same time.
        wheel.insert(deadline_ms, 10);
        assert_eq!(expire_sorted(&mut wheel, deadline_ms), vec![(deadline_ms, 10)]);
        assert!(wheel.is_empty());
    }
}

#[test]
fn deadlines_at_every_level_fire_exactly_on_time() {
    let delays_ms = [1, 2, 63, 64, 65, 4095, 4096, 4097, 262_144, DAY_MS, YEAR_MS, 1 << 50];
    for start_ms in [0, 1, 4095, EPOCH_NOW_MS] {
        for delay_ms in delays_ms {
            let deadline_ms = start_ms + delay_ms;
            let mut wheel = TimerWheel::new(start_ms);
            wheel.insert(deadline_ms, delay_ms);
            assert_eq!(wheel.next_deadline_ms(), Some(deadline_ms));
            let early = expire_sorted(&mut wheel, deadline_ms - 1);
            assert!(early.is_empty(), "start {start_ms} delay {delay_ms} fired early");
            assert_eq!(wheel.next_deadline_ms(), Some(deadline_ms), "after cascade");
            wheel.assert_invariants();
            assert_eq!(expire_sorted(&mut wheel, deadline_ms), vec![(deadline_ms, delay_ms)]);
            assert!(wheel.is_empty());
        }
    }
}

#[test]
fn deadlines_near_u64_max_do_not_overflow() {
    let mut wheel = TimerWheel::new(EPOCH_NOW_MS);
    let deadlines_ms = [u64::MAX, u64::MAX - 1, u64::MAX - 64, u64::MAX - (1 << 60), 1 << 63];
    for deadline_ms in deadlines_ms {
        wheel.insert(deadline_ms, 0);
    }
    assert_eq!(wheel.next_deadline_ms(), Some(1 << 63));
    assert_eq!(expire_sorted(&mut wheel, u64::MAX - 2).len(), 3);
    assert_eq!(wheel.next_deadline_ms(), Some(u64::MAX - 1));
    wheel.assert_invariants();
    assert_eq!(expire_sorted(&mut wheel, u64::MAX - 1), vec![(u64::MAX - 1, 0)]);
    assert_eq!(expire_sorted(&mut wheel, u64::MAX), vec![(u64::MAX, 0)]);
    // At the end of time every insert is already due.
    wheel.insert(u64::MAX, 1);
    assert_eq!(expire_sorted(&mut wheel, u64::MAX), vec![(u64::MAX, 1)]);
    wheel.assert_invariants();
}

#[test]
fn large_jump_fires_everything_exactly_once() {
    let mut wheel = TimerWheel::new(EPOCH_NOW_MS);
    let mut rng = SplitMix64(7);
    let mut expected = Vec::new();
    for key in 0..10_000 {
        let deadline_ms = EPOCH_NOW_MS + rng.below(10 * YEAR_MS);
        wheel.insert(deadline_ms, key);
        expected.push((deadline_ms, key));
    }
    expected.sort_unstable();
    assert_eq!(expire_sorted(&mut wheel, EPOCH_NOW_MS + 10 * YEAR_MS), expected);
    assert!(wheel.is_empty());
    assert!(expire_sorted(&mut wheel, u64::MAX).is_empty());
    wheel.assert_invariants();
}

#[test]
fn empty_wheel_jumps_are_cheap() {
    // One ms per iteration would take ages; this only passes quickly if jumps are O(levels).
    let mut wheel = TimerWheel::new(0);
    let mut out = Vec::new();
    for day in 1..=100_000 {
        wheel.insert(day * DAY_MS + 1, day);
        wheel.expire(day * DAY_MS + DAY_MS / 2, &mut out);
    }
    assert_eq!(out.len(), 100_000);
    assert!(wheel.is_empty());
}

#[test]
fn next_deadline_tracks_minimum_through_cascades() {
    let mut wheel = TimerWheel::new(0);
    let deadlines_ms = [5000, 4100, 70, 4096, 300_000, 64, 299_999];
    for (key, deadline_ms) in deadlines_ms.into_iter().enumerate() {
        wheel.insert(deadline_ms, key as TimerKey);
    }
    let mut remaining: Vec<u64> = deadlines_ms.to_vec();
    remaining.sort_unstable();
    for now_ms in [63, 64, 69, 4095, 4096, 4097, 4100, 4999, 200_000, 299_999, 300_000] {
        wheel.expire(now_ms, &mut Vec::new());
        remaining.retain(|&d| d > now_ms);
        assert_eq!(wheel.next_deadline_ms(), remaining.first().copied(), "now {now_ms}");
        assert_eq!(wheel.len(), remaining.len());
        wheel.assert_invariants();
    }
}

#[test]
fn len_counts_duplicates_and_drops_on_fire() {
    let mut wheel = TimerWheel::new(100);
    assert!(wheel.is_empty());
    for deadline_ms in [50, 100, 150, 150, 10_000] {
        wheel.insert(deadline_ms, 42);
    }
    assert_eq!(wheel.len(), 5);
    assert_eq!(expire_sorted(&mut wheel, 150).len(), 4);
    assert_eq!(wheel.len(), 1);
    assert!(!wheel.is_empty());
    assert_eq!(expire_sorted(&mut wheel, 10_000), vec![(10_000, 42)]);
    assert_eq!(wheel.len(), 0);
    wheel.assert_invariants();
}

#[test]
fn clock_behind_the_wheel_moves_nothing_and_fires_only_due_entries() {
    let mut wheel = TimerWheel::new(1000);
    wheel.insert(2000, 1);
    wheel.insert(900, 2);
    wheel.insert(950, 3);
    assert!(expire_sorted(&mut wheel, 800).is_empty());
    assert_eq!(expire_sorted(&mut wheel, 900), vec![(900, 2)]);
    assert_eq!(wheel.next_deadline_ms(), Some(950));
    assert_eq!(expire_sorted(&mut wheel, 1999), vec![(950, 3)]);
    assert_eq!(wheel.next_deadline_ms(), Some(2000));
    wheel.assert_invariants();
}

#[test]
fn million_timers_all_fire() {
    const TIMER_COUNT: u64 = 1_000_000;
    let mut wheel = TimerWheel::new(EPOCH_NOW_MS);
    let mut rng = SplitMix64(1);
    for key in 0..TIMER_COUNT {
        wheel.insert(EPOCH_NOW_MS + rng.below(30 * DAY_MS), key);
    }
    assert_eq!(wheel.len() as u64, TIMER_COUNT);
    let mut out = Vec::new();
    let mut fired_count = 0;
    let mut now_ms = EPOCH_NOW_MS;
    while !wheel.is_empty() {
        now_ms += 60 * SECOND_MS;
        wheel.expire(now_ms, &mut out);
        assert!(out.iter().all(|&(deadline_ms, _)| deadline_ms <= now_ms));
        fired_count += out.len() as u64;
        out.clear();
    }
    assert_eq!(fired_count, TIMER_COUNT);
    assert!(now_ms <= EPOCH_NOW_MS + 30 * DAY_MS + 60 * SECOND_MS);
}

/// A delay spanning ms to months, skewed towards short ones like real retries and leases.
fn random_delay_ms(rng: &mut SplitMix64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1..=3 => rng.below(64),
        4 => rng.below(4096),
        5 => rng.below(1 << 18),
        6 => rng.below(DAY_MS),
        7 => rng.below(90 * DAY_MS),
        8 => rng.below(2 * YEAR_MS),
        _ => u64::MAX,
    }
}

/// The caller's next clock reading: mostly forward, sometimes to the next deadline, a big jump,
/// or a step back.
fn random_now_ms(rng: &mut SplitMix64, now_ms: u64, next_deadline_ms: Option<u64>) -> u64 {
    let next_ms = next_deadline_ms.unwrap_or(now_ms);
    // Rare, because after a few of these every deadline saturates at u64::MAX.
    if rng.below(500) == 0 {
        return now_ms.saturating_add(rng.below(1 << 62));
    }
    match rng.below(12) {
        0 => now_ms,
        1..=3 => now_ms.saturating_add(rng.below(64)),
        4 => now_ms.saturating_add(rng.below(10_000)),
        5 => now_ms.saturating_add(rng.below(DAY_MS)),
        6 => next_ms,
        7 => next_ms.saturating_sub(1),
        8 => next_ms.saturating_add(rng.below(4096)),
        9 => now_ms.saturating_add(rng.below(YEAR_MS)),
        10 => now_ms.saturating_add(rng.below(1 << 40)),
        _ => now_ms.saturating_sub(rng.below(200)),
    }
}

fn random_start_ms(rng: &mut SplitMix64, seed: u64) -> u64 {
    match seed % 4 {
        0 => 0,
        1 => EPOCH_NOW_MS,
        2 => rng.next() >> 2,
        _ => u64::MAX - rng.below(1 << 36),
    }
}

/// Removes and returns the model's entries with `deadline_ms <= now_ms`, sorted.
fn model_expire(model: &mut BTreeMap<(u64, u64), TimerKey>, now_ms: u64) -> Vec<Entry> {
    let mut fired = Vec::new();
    while let Some(entry) = model.first_entry() {
        if entry.key().0 > now_ms {
            break;
        }
        let ((deadline_ms, _), key) = entry.remove_entry();
        fired.push((deadline_ms, key));
    }
    fired.sort_unstable();
    fired
}

fn run_model(seed: u64, op_count: usize) {
    let mut rng = SplitMix64(seed);
    let start_ms = random_start_ms(&mut rng, seed);
    let mut wheel = TimerWheel::new(start_ms);
    // Keyed by (deadline, insertion number) so that duplicates stay distinct.
    let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
    // Handles of inserted timers (some already fired) with their model keys.
    let mut handles: Vec<(TimerHandle, (u64, u64))> = Vec::new();
    let mut cancelled_any = false;
    let mut now_ms = start_ms;
    for op in 0..op_count as u64 {
        let choice = rng.below(100);
        if choice < 15 && !handles.is_empty() {
            // Cancel a random handle: pending ones disappear, spent ones are a no-op.
            let (handle, model_key) = handles.swap_remove(rng.below(handles.len() as u64) as usize);
            let pending = model.remove(&model_key).is_some();
            assert_eq!(wheel.cancel(handle), pending, "seed {seed} op {op}");
            assert!(!wheel.cancel(handle), "a handle cancels once");
            cancelled_any |= pending;
        } else if choice < 65 {
            let deadline_ms = if rng.below(10) == 0 {
                now_ms.saturating_sub(rng.below(5_000))
            } else {
                now_ms.saturating_add(random_delay_ms(&mut rng))
            };
            let key = rng.below(64);
            let handle = wheel.insert(deadline_ms, key);
            model.insert((deadline_ms, op), key);
            handles.push((handle, (deadline_ms, op)));
        } else {
            now_ms = random_now_ms(&mut rng, now_ms, wheel.next_deadline_ms());
            let fired = expire_sorted(&mut wheel, now_ms);
            let expected = model_expire(&mut model, now_ms);
            assert_eq!(fired, expected, "seed {seed} op {op} now {now_ms}");
        }
        let model_min_ms = model.keys().next().map(|&(deadline_ms, _)| deadline_ms);
        let next_ms = wheel.next_deadline_ms();
        if cancelled_any {
            // A lower bound once timers were cancelled: never later, and absent only when empty.
            assert_eq!(next_ms.is_some(), model_min_ms.is_some(), "seed {seed} op {op}");
            assert!(next_ms <= model_min_ms, "seed {seed} op {op}");
        } else {
            assert_eq!(next_ms, model_min_ms, "seed {seed} op {op}");
        }
        assert_eq!(wheel.len(), model.len(), "seed {seed} op {op}");
        if op % 16 == 0 {
            wheel.check_invariants(!cancelled_any);
        }
    }
    let fired = expire_sorted(&mut wheel, u64::MAX);
    assert_eq!(fired, model_expire(&mut model, u64::MAX), "seed {seed} final drain");
    assert!(wheel.is_empty(), "seed {seed}");
}

#[test]
fn cancelled_timers_never_fire_and_their_memory_is_reused() {
    let mut wheel = TimerWheel::new(EPOCH_NOW_MS);
    let handles: Vec<TimerHandle> =
        (0..1000).map(|key| wheel.insert(EPOCH_NOW_MS + 30 * SECOND_MS + key, key)).collect();
    for handle in &handles[..999] {
        assert!(wheel.cancel(*handle));
    }
    assert_eq!(wheel.len(), 1);
    wheel.check_invariants(false);
    // Reinserting reuses the freed slots instead of growing the slab.
    for key in 0..999 {
        wheel.insert(EPOCH_NOW_MS + DAY_MS, key);
    }
    assert_eq!(wheel.slab.len(), 1000);
    // A stale handle does not cancel the timer that now occupies its slot.
    assert!(!wheel.cancel(handles[0]));
    assert_eq!(wheel.len(), 1000);
    let fired = expire_sorted(&mut wheel, EPOCH_NOW_MS + 31 * SECOND_MS);
    assert_eq!(fired, vec![(EPOCH_NOW_MS + 30 * SECOND_MS + 999, 999)]);
    assert!(!wheel.cancel(handles[999]), "a fired timer's handle is spent");
    wheel.check_invariants(false);
}

#[test]
fn cancelling_an_entry_in_due_keeps_the_rest() {
    let mut wheel = TimerWheel::new(1000);
    let first = wheel.insert(10, 1);
    wheel.insert(20, 2);
    wheel.insert(30, 3);
    assert!(wheel.cancel(first));
    wheel.check_invariants(false);
    assert_eq!(expire_sorted(&mut wheel, 1000), vec![(20, 2), (30, 3)]);
    assert!(wheel.is_empty());
}

#[test]
fn randomized_against_model() {
    for seed in 0..200 {
        run_model(seed, 2000);
    }
}
