//! Retry policy: how long a failed message waits before its next delivery.

/// Exponential backoff with jitter.
///
/// The delay after failed delivery `n` (1-based) is `initial_ms * multiplier^(n-1)`, capped at
/// `max_ms`, then spread by ±`jitter` (a fraction) so that messages that failed together do not all
/// come back in the same millisecond. The result never exceeds `max_ms` and is at least 1 ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub initial_ms: u64,
    /// Growth factor per further failure (>= 1).
    pub multiplier: f64,
    /// Longest delay.
    pub max_ms: u64,
    /// Relative spread, in [0, 1).
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay after failed delivery `attempt`, given `random` uniformly drawn from [0, 1).
    pub fn delay_ms(&self, attempt: u32, random: f64) -> u64 {
        debug_assert!((0.0..1.0).contains(&random));
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let base_ms = (self.initial_ms as f64) * self.multiplier.powi(exponent);
        let capped_ms = base_ms.min(self.max_ms as f64);
        let spread = 1.0 + self.jitter * (2.0 * random - 1.0);
        let delay_ms = (capped_ms * spread).min(self.max_ms as f64);
        (delay_ms as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy { initial_ms: 1000, multiplier: 2.0, max_ms: 900_000, jitter }
    }

    #[test]
    fn delays_double_until_the_cap() {
        let policy = policy(0.0);
        assert_eq!(policy.delay_ms(1, 0.5), 1000);
        assert_eq!(policy.delay_ms(2, 0.5), 2000);
        assert_eq!(policy.delay_ms(3, 0.5), 4000);
        assert_eq!(policy.delay_ms(10, 0.5), 512_000);
        assert_eq!(policy.delay_ms(11, 0.5), 900_000);
        assert_eq!(policy.delay_ms(u32::MAX, 0.5), 900_000);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_the_cap() {
        let policy = policy(0.2);
        assert_eq!(policy.delay_ms(1, 0.0), 800);
        assert_eq!(policy.delay_ms(1, 0.999_999), 1199);
        assert!(policy.delay_ms(30, 0.999) <= 900_000);
    }

    #[test]
    fn a_zero_initial_delay_still_waits_one_millisecond() {
        let policy = RetryPolicy { initial_ms: 0, multiplier: 2.0, max_ms: 0, jitter: 0.0 };
        assert_eq!(policy.delay_ms(5, 0.3), 1);
    }
}
