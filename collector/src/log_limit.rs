//! Rate-limited log lines: at most one line per key (a stream and a cause)
//! per interval, carrying how many occurrences it stands for, so a fault
//! that fails every record (a full disk, a lost JetStream quorum) logs a
//! line every few seconds instead of one per record. [`store_fault`] names
//! the cause of a failed store call, for the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// How often one key may log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Keys remembered at most; past it the oldest are forgotten (they log
/// again at their next occurrence).
pub const MAX_KEYS: usize = 1024;

/// One limiter per kind of message (a `static` next to its log call).
#[derive(Default)]
pub struct LogLimit {
    keys: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogLimit {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `n` occurrences for `key` at `now`; `Some(count)` when a line
    /// is due (the occurrences since the last line, these included).
    pub fn hit(&self, key: &str, n: u64, now: Instant) -> Option<u64> {
        let Ok(mut keys) = self.keys.lock() else { return Some(n) };
        if let Some((last, pending)) = keys.get_mut(key) {
            *pending += n;
            if now.duration_since(*last) < LOG_INTERVAL {
                return None;
            }
            let count = *pending;
            *last = now;
            *pending = 0;
            return Some(count);
        }
        if keys.len() >= MAX_KEYS
            && let Some(oldest) = keys.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone())
        {
            keys.remove(&oldest);
        }
        keys.insert(key.to_owned(), (now, 0));
        Some(n)
    }
}

/// The cause a failed store call is logged under: a short name for each
/// fault of the collector or its disk, `None` for what the caller did wrong
/// or may retry at once (no such stream, a bad record, a spent write budget,
/// shutdown), which is answered but is no fault to log.
pub fn store_fault(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::StreamNotFound(_)
        | StoreError::StreamExists(_)
        | StoreError::StreamNotActive { .. }
        | StoreError::ShardNotFound { .. }
        | StoreError::ShardClosed { .. }
        | StoreError::InvalidArgument(_)
        | StoreError::InvalidRecord(_)
        | StoreError::LimitExceeded(_)
        | StoreError::ThroughputExceeded { .. }
        | StoreError::ShuttingDown => None,
        StoreError::DiskFull { .. } | StoreError::OutOfSpace { .. } => Some("disk_full"),
        StoreError::ShardFailed { .. } => Some("shard_failed"),
        StoreError::Corrupt { .. } => Some("corrupt"),
        StoreError::Backend { .. } => Some("backend"),
        _ => Some("io"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_count() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        assert_eq!(l.hit("s/disk", 3, t0), Some(3));
        assert_eq!(l.hit("s/disk", 5, t0 + Duration::from_secs(1)), None);
        assert_eq!(l.hit("other", 1, t0 + Duration::from_secs(1)), Some(1));
        assert_eq!(l.hit("s/disk", 2, t0 + Duration::from_secs(9)), None);
        assert_eq!(l.hit("s/disk", 1, t0 + LOG_INTERVAL), Some(8));
        assert_eq!(l.hit("s/disk", 1, t0 + LOG_INTERVAL + Duration::from_secs(1)), None);
    }

    #[test]
    fn keys_are_bounded() {
        let l = LogLimit::new();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            l.hit(&format!("k{i}"), 1, t0 + Duration::from_millis(i as u64));
        }
        assert!(l.keys.lock().expect("lock").len() <= MAX_KEYS);
        // The oldest was forgotten: it logs again at once.
        assert_eq!(l.hit("k0", 1, t0 + Duration::from_secs(1)), Some(1));
    }
}
