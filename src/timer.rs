//! Hierarchical timer wheel keyed by deadline in milliseconds.
//!
//! Scheduled delivery, retry backoff and lease expiry can each keep millions of timers pending, and
//! a binary heap would charge O(log n) per insert and per expiry. A hierarchical wheel (the design of
//! tokio's time driver) makes both O(1) amortised, because an entry only moves when time reaches the
//! coarse slot that holds it, and it moves at most once per level.
//!
//! Layout: `LEVEL_COUNT` (11) levels of 64 slots. Level 0 slots are 1 ms wide and each next level is
//! 64× coarser, so level `l` spans 64^(l+1) ms and 11 levels span every `u64` deadline (6 × 11 = 66
//! bits ≥ 64). There is therefore no overflow list and no deadline can overflow the wheel. An entry is
//! filed at the level of the highest 6-bit digit in which its deadline differs from the wheel's time;
//! when time reaches the start of a slot above level 0, the slot's entries cascade into lower levels
//! (or straight to the caller when already due). An entry moves at most once per level below the one
//! it was filed at, and that level grows with log64 of its delay: at most 2 moves for a 30-second
//! delay, 5 for a 30-day one.
//!
//! Guarantees:
//! - `expire(now_ms)` returns every entry with `deadline_ms <= now_ms` exactly once and no other.
//! - `next_deadline_ms` is exact (the earliest pending deadline), in O(levels), because every slot
//!   remembers the earliest deadline it holds and lower levels always hold earlier deadlines.
//! - The wheel never reads the clock; time only moves forward through `expire`.
//!
//! Complexity: `insert` O(1); `expire` O(levels) per call plus amortised O(levels) per entry, however
//! far time jumps; `next_deadline_ms` O(levels). Memory: the entries plus about 23 KiB of fixed slots.

use std::fmt;
use std::mem;

/// Identifies what a timer is for; the wheel treats it as opaque.
pub type TimerKey = u64;

/// One fired timer: its deadline in ms and its key.
type Entry = (u64, TimerKey);

/// Names one pending timer so that it can be cancelled.
///
/// A handle stays valid until its timer fires or is cancelled; after that, cancelling it is a
/// no-op (the slab slot it named carries a new generation once reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

/// Bits of the deadline that select a slot within one level.
const SLOT_BITS: u32 = 6;
/// Slots per level; 64 so that one `u64` bitmap tracks which slots are occupied.
const SLOT_COUNT: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOT_COUNT as u64 - 1;
/// Enough levels for the top one to cover all 64 bits of a deadline (rounded up: 66 bits).
const LEVEL_COUNT: usize = (u64::BITS as usize).div_ceil(SLOT_BITS as usize);
/// Capacity a drained slot keeps for reuse; larger buffers are released so that a burst of timers does
/// not pin its peak memory in every slot it passed through.
const RETAINED_SLOT_CAPACITY: usize = 64;
/// `Place::level` of an entry in the `due` list.
const DUE_LEVEL: u8 = u8::MAX;
/// `Place::level` of a free slab slot.
const FREE_LEVEL: u8 = u8::MAX - 1;

/// Where a pending entry sits: its level and slot (or the `due` list) and its index there.
#[derive(Clone, Copy, Debug)]
struct Place {
    level: u8,
    slot: u8,
    index: u32,
}

/// One slab slot: a pending timer, or a free slot waiting for reuse.
#[derive(Clone, Copy, Debug)]
struct Timer {
    deadline_ms: u64,
    key: TimerKey,
    /// Bumped whenever the slot is freed, so that an old handle never cancels a newer timer.
    generation: u32,
    place: Place,
}

/// One level of the wheel: 64 slots of equal width and the bookkeeping that keeps scans O(1).
struct Level {
    /// Bit `s` is set exactly when `slots[s]` is non-empty.
    occupied_slots: u64,
    /// Slab indices of the timers filed in each slot.
    slots: [Vec<u32>; SLOT_COUNT],
    /// A lower bound of the earliest deadline in each slot (`u64::MAX` when empty): exact until a
    /// timer of the slot is cancelled, never later than the earliest one.
    slot_min_deadline_ms: [u64; SLOT_COUNT],
}

impl Level {
    fn new() -> Self {
        Level {
            occupied_slots: 0,
            slots: std::array::from_fn(|_| Vec::new()),
            slot_min_deadline_ms: [u64::MAX; SLOT_COUNT],
        }
    }
}

/// A hierarchical timer wheel: pending (deadline, key) entries, fired by advancing its time, and
/// cancelled in O(1) by handle.
///
/// Invariants (checked by `assert_invariants` in tests):
/// - entries in `due` have `deadline_ms <= now_ms`; entries in levels have `deadline_ms > now_ms`;
/// - an entry in the levels sits at `level_for(now_ms, deadline_ms)`, `slot_for(deadline_ms, level)`,
///   so every occupied slot of a level lies strictly after `now_ms`'s own digit at that level, and all
///   entries of a lower level are earlier than all entries of a higher level;
/// - every pending entry's `place` names the list and index that hold its slab index;
/// - `len` counts every entry in `due` and in the levels.
pub struct TimerWheel {
    /// The wheel's time: the largest `now_ms` given to `new` or `expire`.
    now_ms: u64,
    levels: Vec<Level>,
    /// Slab indices of entries inserted with a deadline at or before `now_ms`; they fire on the
    /// next `expire`.
    due: Vec<u32>,
    /// A lower bound of the earliest deadline in `due` (`u64::MAX` when empty).
    due_min_deadline_ms: u64,
    /// Every timer, pending or free.
    slab: Vec<Timer>,
    /// Free slab slots, reused before the slab grows.
    free: Vec<u32>,
    len: usize,
}

impl TimerWheel {
    /// A wheel whose clock starts at `now_ms`.
    #[must_use]
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            now_ms,
            levels: (0..LEVEL_COUNT).map(|_| Level::new()).collect(),
            due: Vec::new(),
            due_min_deadline_ms: u64::MAX,
            slab: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Adds a timer and returns the handle that cancels it. O(1). A deadline at or before the
    /// wheel's current time fires on the next `expire`.
    pub fn insert(&mut self, deadline_ms: u64, key: TimerKey) -> TimerHandle {
        let place = Place { level: FREE_LEVEL, slot: 0, index: 0 };
        let index = match self.free.pop() {
            Some(index) => {
                let timer = &mut self.slab[index as usize];
                timer.deadline_ms = deadline_ms;
                timer.key = key;
                index
            }
            None => {
                let index = u32::try_from(self.slab.len()).expect("fewer than 2^32 timers");
                self.slab.push(Timer { deadline_ms, key, generation: 0, place });
                index
            }
        };
        if deadline_ms <= self.now_ms {
            self.push_due(index);
        } else {
            self.file(index);
        }
        self.len += 1;
        TimerHandle { index, generation: self.slab[index as usize].generation }
    }

    /// Removes a pending timer; returns false (and does nothing) when it already fired or was
    /// cancelled. O(1).
    pub fn cancel(&mut self, handle: TimerHandle) -> bool {
        let Some(timer) = self.slab.get(handle.index as usize) else { return false };
        if timer.generation != handle.generation || timer.place.level == FREE_LEVEL {
            return false;
        }
        self.unplace(handle.index);
        self.release(handle.index);
        self.len -= 1;
        true
    }

    /// Advances the wheel to `now_ms` and appends every entry with `deadline_ms <= now_ms` to `out`.
    ///
    /// Entries are appended as `(deadline_ms, key)`, in no particular order; their handles are
    /// spent. Amortised O(1) per entry plus O(levels) per call, however far time jumped. A `now_ms`
    /// smaller than the wheel's time does not move the wheel back; it only fires entries that were
    /// inserted already due and whose deadline is <= `now_ms` (costing O(such pending entries) when
    /// any of them fires), so a caller whose clock stepped back still sees each entry fire no
    /// earlier than its deadline.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<Entry>) {
        if now_ms < self.now_ms {
            self.expire_due_until(now_ms, out);
            return;
        }
        let due = mem::take(&mut self.due);
        for &index in &due {
            self.fire(index, out);
        }
        self.due = due;
        self.due.clear();
        self.due.shrink_to(RETAINED_SLOT_CAPACITY);
        self.due_min_deadline_ms = u64::MAX;
        while let Some((level, slot)) = self.first_occupied_slot() {
            let slot_start_ms = slot_start_ms(self.now_ms, level, slot);
            if slot_start_ms > now_ms {
                break;
            }
            debug_assert!(
                slot_start_ms > self.now_ms,
                "occupied slot at or before the wheel's time"
            );
            // Moving time to the slot start (not to now_ms) keeps every other entry's level valid:
            // lower levels are empty and higher levels share this slot's higher digits.
            self.now_ms = slot_start_ms;
            self.drain_slot(level, slot, now_ms, out);
        }
        // Every remaining slot starts after now_ms, so now_ms shares their higher digits too.
        self.now_ms = now_ms;
    }

    /// A time no later than the earliest pending deadline, or None when empty.
    ///
    /// O(levels): the earliest entry is in the lowest occupied slot of the lowest occupied level,
    /// whose earliest deadline is tracked. It is exact unless a timer of that slot was cancelled
    /// since the slot was filled; then it can be earlier, and a caller that sleeps until it wakes
    /// once for nothing (the `expire` at that time recomputes the slot). It can be earlier than the
    /// wheel's time when entries were inserted already due.
    #[must_use]
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.due_min_deadline_ms);
        }
        let (level, slot) = self.first_occupied_slot()?;
        Some(self.levels[level].slot_min_deadline_ms[slot])
    }

    /// The number of pending entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entries are pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_due(&mut self, index: u32) {
        let deadline_ms = self.slab[index as usize].deadline_ms;
        let position = u32::try_from(self.due.len()).expect("fewer than 2^32 timers");
        self.slab[index as usize].place = Place { level: DUE_LEVEL, slot: 0, index: position };
        self.due.push(index);
        self.due_min_deadline_ms = self.due_min_deadline_ms.min(deadline_ms);
    }

    /// Files an entry that is not yet due into the slot that its deadline selects.
    fn file(&mut self, index: u32) {
        let deadline_ms = self.slab[index as usize].deadline_ms;
        debug_assert!(deadline_ms > self.now_ms, "due entries belong in `due`");
        let level = level_for(self.now_ms, deadline_ms);
        let slot = slot_for(deadline_ms, level);
        let lvl = &mut self.levels[level];
        let position = u32::try_from(lvl.slots[slot].len()).expect("fewer than 2^32 timers");
        lvl.slots[slot].push(index);
        lvl.occupied_slots |= 1 << slot;
        let slot_min_ms = &mut lvl.slot_min_deadline_ms[slot];
        *slot_min_ms = (*slot_min_ms).min(deadline_ms);
        self.slab[index as usize].place =
            Place { level: level as u8, slot: slot as u8, index: position };
    }

    /// Takes a pending entry out of the list that holds it (swap-remove, fixing the moved entry).
    fn unplace(&mut self, index: u32) {
        let place = self.slab[index as usize].place;
        let list = if place.level == DUE_LEVEL {
            &mut self.due
        } else {
            &mut self.levels[place.level as usize].slots[place.slot as usize]
        };
        debug_assert_eq!(list[place.index as usize], index, "timer place out of date");
        list.swap_remove(place.index as usize);
        if let Some(&moved) = list.get(place.index as usize) {
            self.slab[moved as usize].place.index = place.index;
        }
        let empty = list.is_empty();
        if place.level == DUE_LEVEL {
            if empty {
                self.due_min_deadline_ms = u64::MAX;
            }
        } else if empty {
            let lvl = &mut self.levels[place.level as usize];
            lvl.occupied_slots &= !(1 << place.slot);
            lvl.slot_min_deadline_ms[place.slot as usize] = u64::MAX;
        }
    }

    /// Frees a slab slot for reuse; its handles are spent.
    fn release(&mut self, index: u32) {
        let timer = &mut self.slab[index as usize];
        timer.generation = timer.generation.wrapping_add(1);
        timer.place.level = FREE_LEVEL;
        self.free.push(index);
    }

    /// Reports a timer as fired and frees its slot (the caller has taken it out of its list).
    fn fire(&mut self, index: u32, out: &mut Vec<Entry>) {
        let timer = &self.slab[index as usize];
        out.push((timer.deadline_ms, timer.key));
        self.release(index);
        self.len -= 1;
    }

    /// The lowest occupied slot of the lowest occupied level, which holds the earliest entries.
    fn first_occupied_slot(&self) -> Option<(usize, usize)> {
        self.levels
            .iter()
            .position(|lvl| lvl.occupied_slots != 0)
            .map(|level| (level, self.levels[level].occupied_slots.trailing_zeros() as usize))
    }

    /// Empties a slot that starts at the wheel's time: fires entries due by `now_ms` and refiles the
    /// rest, which land in lower levels because they share this slot's digit.
    fn drain_slot(&mut self, level: usize, slot: usize, now_ms: u64, out: &mut Vec<Entry>) {
        let lvl = &mut self.levels[level];
        let mut entries = mem::take(&mut lvl.slots[slot]);
        lvl.occupied_slots &= !(1 << slot);
        lvl.slot_min_deadline_ms[slot] = u64::MAX;
        for index in entries.drain(..) {
            if self.slab[index as usize].deadline_ms <= now_ms {
                self.fire(index, out);
            } else {
                self.file(index);
            }
        }
        // Refiled entries went to lower levels, so the slot is still empty and can take the buffer back.
        debug_assert!(self.levels[level].slots[slot].is_empty());
        entries.shrink_to(RETAINED_SLOT_CAPACITY);
        self.levels[level].slots[slot] = entries;
    }

    /// Fires already-due entries with `deadline_ms <= now_ms` for a `now_ms` behind the wheel's time.
    fn expire_due_until(&mut self, now_ms: u64, out: &mut Vec<Entry>) {
        // Only `due` can hold deadlines before the wheel's time; skip the scan when none is due yet.
        if self.due_min_deadline_ms > now_ms {
            return;
        }
        let due = mem::take(&mut self.due);
        let mut remaining_min_ms = u64::MAX;
        for index in due {
            let deadline_ms = self.slab[index as usize].deadline_ms;
            if deadline_ms <= now_ms {
                self.fire(index, out);
            } else {
                remaining_min_ms = remaining_min_ms.min(deadline_ms);
                self.push_due(index);
            }
        }
        self.due_min_deadline_ms = remaining_min_ms;
    }
}

impl fmt::Debug for TimerWheel {
    /// Summarises the wheel; listing millions of entries would help nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now_ms", &self.now_ms)
            .field("len", &self.len)
            .field("next_deadline_ms", &self.next_deadline_ms())
            .finish_non_exhaustive()
    }
}

/// The level for a deadline after `now_ms`: that of the highest 6-bit digit where the two differ.
///
/// Level 0 covers the whole 64 ms block holding `now_ms`, hence the low bits are forced on.
fn level_for(now_ms: u64, deadline_ms: u64) -> usize {
    let differing_bits = (now_ms ^ deadline_ms) | SLOT_MASK;
    let highest_bit = u64::BITS - 1 - differing_bits.leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

/// The slot of a deadline within `level`: its 6-bit digit at that level.
fn slot_for(deadline_ms: u64, level: usize) -> usize {
    ((deadline_ms >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize
}

/// The first ms of `slot` of `level`, within the level-sized block that holds `now_ms`.
fn slot_start_ms(now_ms: u64, level: usize, slot: usize) -> u64 {
    // The top level's block is 2^66 ms, wider than u64, so its block always starts at 0.
    let block_mask = u64::MAX.checked_shl((level as u32 + 1) * SLOT_BITS).unwrap_or(0);
    (now_ms & block_mask) | ((slot as u64) << (level as u32 * SLOT_BITS))
}

#[cfg(test)]
mod tests {
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
                let (handle, model_key) =
                    handles.swap_remove(rng.below(handles.len() as u64) as usize);
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
}
