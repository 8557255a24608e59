//! Per-shard write limits: Kinesis's provisioned-mode quota of 1 MiB/s and
//! 1,000 records/s per shard, as two token buckets.
//!
//! Off unless a stream enables them (the embedded collector's default is off);
//! when on, [`LogStore::append`](super::LogStore) asks the limiter for each
//! record before handing it to the shard's writer, so the Kinesis API and the
//! MQTT ingest are held to the same quota. A refused record is not appended
//! and costs no tokens; it is answered with
//! [`StoreError::ThroughputExceeded`](super::StoreError::ThroughputExceeded).
//!
//! Each bucket holds at most one second's worth of tokens (a burst of 1 MiB
//! or 1,000 records) and refills continuously from the store's clock.

use std::collections::HashMap;
use std::sync::Mutex;

/// Records one shard accepts per second when limits are on.
pub const SHARD_RECORDS_PER_SEC: u64 = 1_000;
/// Bytes (data plus partition key) one shard accepts per second when limits
/// are on.
pub const SHARD_BYTES_PER_SEC: u64 = 1024 * 1024;

/// Tokens are kept in thousandths so that a refill over 1 ms is exact for both
/// rates (1 record/ms and 1,048.576 bytes/ms).
const MILLI: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Available tokens, in thousandths.
    milli_tokens: u64,
}

impl Bucket {
    fn full(rate_per_sec: u64) -> Self {
        Self { milli_tokens: rate_per_sec * MILLI }
    }

    fn refill(&mut self, rate_per_sec: u64, elapsed_ms: u64) {
        // rate/s * elapsed ms = rate * elapsed thousandths of a token.
        let add = rate_per_sec.saturating_mul(elapsed_ms);
        self.milli_tokens = self.milli_tokens.saturating_add(add).min(rate_per_sec * MILLI);
    }
}

#[derive(Debug, Clone, Copy)]
struct ShardBuckets {
    records: Bucket,
    bytes: Bucket,
    last_ms: u64,
}

/// The buckets of every shard of one stream.
#[derive(Debug, Default)]
pub struct WriteLimiter {
    shards: Mutex<HashMap<u64, ShardBuckets>>,
}

impl WriteLimiter {
    /// For each record size in `sizes` (in order), whether the shard
    /// `shard_index` may take it at `now_ms`; accepted records take their
    /// tokens, refused ones take none. With `all_or_nothing`, either every
    /// record is accepted or none is.
    pub fn admit(
        &self,
        shard_index: u64,
        now_ms: u64,
        sizes: &[usize],
        all_or_nothing: bool,
    ) -> Vec<bool> {
        let Ok(mut shards) = self.shards.lock() else {
            // A poisoned lock means a panic elsewhere; do not throttle on it.
            return vec![true; sizes.len()];
        };
        let b = shards.entry(shard_index).or_insert(ShardBuckets {
            records: Bucket::full(SHARD_RECORDS_PER_SEC),
            bytes: Bucket::full(SHARD_BYTES_PER_SEC),
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.records.refill(SHARD_RECORDS_PER_SEC, elapsed);
        b.bytes.refill(SHARD_BYTES_PER_SEC, elapsed);
        b.last_ms = b.last_ms.max(now_ms);
        if all_or_nothing {
            let bytes: u64 = sizes.iter().map(|&s| s as u64).sum::<u64>().saturating_mul(MILLI);
            let records = (sizes.len() as u64).saturating_mul(MILLI);
            let ok = b.records.milli_tokens >= records && b.bytes.milli_tokens >= bytes;
            if ok {
                b.records.milli_tokens -= records;
                b.bytes.milli_tokens -= bytes;
            }
            return vec![ok; sizes.len()];
        }
        sizes
            .iter()
            .map(|&size| {
                let bytes = (size as u64).saturating_mul(MILLI);
                let ok = b.records.milli_tokens >= MILLI && b.bytes.milli_tokens >= bytes;
                if ok {
                    b.records.milli_tokens -= MILLI;
                    b.bytes.milli_tokens -= bytes;
                }
                ok
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_per_second_with_a_one_second_burst() {
        let l = WriteLimiter::default();
        let ok = l.admit(0, 1_000, &[1; 1_200], false);
        assert_eq!(ok.iter().filter(|x| **x).count(), 1_000);
        assert!(ok[..1_000].iter().all(|x| *x) && ok[1_000..].iter().all(|x| !*x));
        // 250 ms later: 250 more records.
        let ok = l.admit(0, 1_250, &[1; 400], false);
        assert_eq!(ok.iter().filter(|x| **x).count(), 250);
        // Other shards have their own buckets.
        assert!(l.admit(1, 1_250, &[1; 1_000], false).iter().all(|x| *x));
        // The burst never exceeds one second's worth.
        let ok = l.admit(0, 100_000, &[1; 1_500], false);
        assert_eq!(ok.iter().filter(|x| **x).count(), 1_000);
    }

    #[test]
    fn bytes_per_second_and_refused_records_cost_nothing() {
        let l = WriteLimiter::default();
        let mib = SHARD_BYTES_PER_SEC as usize;
        assert_eq!(l.admit(0, 0, &[mib, 1], false), vec![true, false]);
        // Half a second refills half a MiB: a small record fits, a large one not.
        assert_eq!(l.admit(0, 500, &[mib / 2 + 1, 100], false), vec![false, true]);
        // All or nothing: 2,000 records never fit in a 1,000-record bucket.
        assert_eq!(l.admit(5, 0, &[1; 2_000], true), vec![false; 2_000]);
        assert_eq!(l.admit(5, 0, &[1; 1_000], true), vec![true; 1_000]);
    }
}
