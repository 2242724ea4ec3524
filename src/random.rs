//! SplitMix64: the one small, fast, seedable generator of the code base (lease nonces, backoff
//! jitter, and the seeded randomness of tests, benches and fuzz targets).
//!
//! Nonces need to be unpredictable enough that a stale token never matches a new delivery by
//! chance, not cryptographically secret: access control is the job of API tokens.

/// The SplitMix64 generator (Steele, Lea and Flood), one `u64` of state.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next output.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// A value in `0..bound` (`bound` > 0); the modulo bias is negligible for the bounds used here.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next() % bound
    }

    /// A uniformly drawn number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The increment of SplitMix64's state (2^64 divided by the golden ratio, made odd).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective mix of all 64 bits.
pub fn mix64(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
