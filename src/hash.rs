//! A fast hasher for the broker's maps, whose keys are message ids, queue ids and short strings.
//!
//! The standard library's SipHash resists hash flooding, which these maps do not need: their keys
//! are ids the server hands out itself (an attacker can only choose idempotency keys, and those are
//! scoped to a queue and bounded in number by the request rate). SipHash costs about a fifth of
//! the CPU of a lease and an ack; this hasher (the multiply-rotate scheme of rustc's FxHasher) costs
//! a multiply per word.

use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A `HashSet` hashed with [`FastHasher`].
pub type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FastHasher>>;

/// Multiply-rotate hashing: each word is folded in with a rotate, an xor and a multiply by an odd
/// constant, so sequential ids spread over every bucket and the top bits (hashbrown's tags) mix.
#[derive(Clone, Copy, Default)]
pub struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets_and_strings_differ() {
        let hash = |value: u64| {
            let mut hasher = FastHasher::default();
            hasher.write_u64(value);
            hasher.finish()
        };
        // The low 10 bits (a 1024-bucket table) of 1024 sequential ids are all distinct.
        let buckets: FastSet<u64> = (0..1024).map(|id| hash(id) & 1023).collect();
        assert_eq!(buckets.len(), 1024);
        let text = |text: &str| {
            let mut hasher = FastHasher::default();
            hasher.write(text.as_bytes());
            hasher.finish()
        };
        assert_ne!(text("k1"), text("k2"));
        assert_ne!(text("abcdefgh1"), text("abcdefgh2"));
        assert_ne!(text("a"), text("a\\0"));
    }
}
