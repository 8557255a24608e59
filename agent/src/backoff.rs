//! Reconnect delays: exponential backoff with jitter.
//!
//! The rule is [`weir_wire::backoff`]'s: the n-th consecutive failure waits
//! a random time between half and all of `min × 2ⁿ⁻¹`, capped at `max`.
//! Doubling keeps a dead collector from being hammered; the random half
//! keeps a fleet of devices that lost the collector together from
//! reconnecting in lockstep when it returns. This file only draws the
//! random half.

use std::time::Duration;

use rand::Rng;

/// Backoff state: the number of failures since the last success.
#[derive(Debug, Clone)]
pub struct Backoff(weir_wire::backoff::Backoff);

impl Backoff {
    /// Delays from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self(weir_wire::backoff::Backoff::new(min, max))
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        self.0.next_delay_with(|half_ms| rng.gen_range(0..=half_ms))
    }

    /// A connection worked: start again from `min`.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.0.failures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn delays_double_within_jitter_up_to_the_cap_and_reset() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for c in ceilings {
            let d = b.next_delay(&mut rng).as_millis() as u64;
            assert!((c / 2..=c).contains(&d), "{d} not within [{}, {c}]", c / 2);
        }
        assert_eq!(b.failures(), 7);
        b.reset();
        let d = b.next_delay(&mut rng).as_millis() as u64;
        assert!((50..=100).contains(&d));
        // Many failures never overflow.
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
