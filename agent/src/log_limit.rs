//! Rate-limited log lines for a condition that repeats at every attempt (a
//! full disk, a state file that cannot be written): the first occurrence
//! logs at once, later ones at most once per [`LOG_INTERVAL`], each line
//! carrying how many occurrences it stands for, so a fault that lasts an hour
//! writes a few hundred lines rather than one per retry or per record.
//!
//! One [`LogLimit`] per condition, owned by the one component that meets it
//! (no keys, no lock); a component shared between threads puts it behind its
//! own mutex.

use std::time::{Duration, Instant};

/// Least time between two lines of one condition.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The rate limit of one condition.
#[derive(Debug, Default, Clone)]
pub struct LogLimit {
    /// When the last line was written.
    last: Option<Instant>,
    /// Occurrences since then that no line reported.
    pending: u64,
}

impl LogLimit {
    /// A limit that lets the first occurrence log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one occurrence at `now`; `Some(count)` when a line is due, the
    /// count being the occurrences it stands for (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < LOG_INTERVAL) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }

    /// The condition ended: returns the occurrences no line reported yet and
    /// starts afresh (its next occurrence logs at once).
    pub fn reset(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.pending)
    }

    /// Whether an occurrence was counted since the last [`reset`](Self::reset).
    pub fn active(&self) -> bool {
        self.last.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_and_at_once_after_a_reset() {
        let mut l = LogLimit::new();
        let t0 = Instant::now();
        assert!(!l.active());
        assert_eq!(l.hit(t0), Some(1));
        assert!(l.active());
        for i in 1..=5 {
            assert_eq!(l.hit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(l.hit(t0 + LOG_INTERVAL), Some(6));
        assert_eq!(l.hit(t0 + LOG_INTERVAL + Duration::from_secs(1)), None);
        assert_eq!(l.reset(), 1);
        assert!(!l.active());
        assert_eq!(l.hit(t0 + LOG_INTERVAL + Duration::from_secs(2)), Some(1));
        // A clock read out of order never panics nor floods.
        assert_eq!(l.hit(t0), None);
    }
}
