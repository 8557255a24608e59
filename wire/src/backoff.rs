//! Exponential backoff, the one rule for waiting between attempts on both
//! sides of the wire: the agent's reconnects and the collector's firehose
//! delivery retries.
//!
//! The n-th consecutive failure has the ceiling `min × 2ⁿ⁻¹`, capped at
//! `max`. Doubling keeps a dead peer from being hammered. Callers that
//! spread a fleet's retries ([`Backoff::next_delay_with`]) wait a random time
//! between half and all of the ceiling; the randomness is the caller's, so
//! the crate stays `no_std` and deterministic.

use core::time::Duration;

/// Backoff state: the number of failures since the last success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays from `min` up to `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), failures: 0 }
    }

    /// The ceiling of the wait after the `n`-th consecutive failure
    /// (`min × 2ⁿ⁻¹`, capped at `max`; `n` = 0 counts as 1).
    pub fn ceiling(&self, n: u32) -> Duration {
        let doubling = 2u32.saturating_pow(n.saturating_sub(1).min(31));
        self.min.saturating_mul(doubling).min(self.max)
    }

    /// One more failure: the ceiling of the wait before the next attempt.
    pub fn next_ceiling(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.ceiling(self.failures)
    }

    /// One more failure: the wait before the next attempt, between half and
    /// all of the ceiling. `jitter(half_ms)` returns a number of
    /// milliseconds from 0 to `half_ms` (a random one, to spread a fleet).
    pub fn next_delay_with(&mut self, jitter: impl FnOnce(u64) -> u64) -> Duration {
        let half = self.next_ceiling() / 2;
        let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(jitter(half_ms).min(half_ms))
    }

    /// An attempt worked: start again from `min`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for c in [100u64, 200, 400, 800, 1600, 2000, 2000] {
            assert_eq!(b.next_ceiling(), Duration::from_millis(c));
        }
        assert_eq!(b.failures(), 7);
        b.reset();
        assert_eq!(b.next_ceiling(), Duration::from_millis(100));
        assert_eq!(b.ceiling(0), b.ceiling(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn delays_lie_between_half_and_all_of_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.next_delay_with(|_| 0), Duration::from_millis(50));
        assert_eq!(b.next_delay_with(|half| half), Duration::from_millis(200));
        assert_eq!(b.next_delay_with(|_| u64::MAX), Duration::from_millis(400));
    }
}
