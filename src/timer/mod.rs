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
mod tests;
