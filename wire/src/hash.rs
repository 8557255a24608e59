//! Partition key → 128-bit hash key, and hash-key-range arithmetic.
//!
//! This is exactly Kinesis's rule, so AWS clients that compute shards agree
//! with Weir: the hash key of a partition key is its MD5 digest read as a
//! big-endian unsigned 128-bit integer, and a record goes to the open shard
//! whose inclusive range `[start, end]` holds that key (or the producer's
//! explicit hash key). The ranges of a stream's open shards cover
//! `0..=2^128-1` exactly, without gaps or overlaps.

use core::fmt;
use md5::{Digest, Md5};

/// The hash key of a partition key: MD5 read as a big-endian `u128`.
pub fn hash_key(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// An inclusive range of hash keys owned by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct HashRange {
    /// First hash key of the range.
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
}

/// Why a range operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashRangeError {
    /// `start > end`.
    Inverted,
    /// A split key must satisfy `start < key <= end`.
    SplitKeyOutOfRange,
    /// Two ranges to merge do not touch.
    NotAdjacent,
    /// A uniform division needs 1 to 2^64 parts (and `index < count`).
    BadCount,
}

impl fmt::Display for HashRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inverted => "hash range starts after it ends",
            Self::SplitKeyOutOfRange => {
                "split hash key must be greater than the range's start and not greater than its end"
            }
            Self::NotAdjacent => "hash ranges are not adjacent",
            Self::BadCount => "uniform division needs a positive count and an index below it",
        })
    }
}

impl core::error::Error for HashRangeError {}

impl HashRange {
    /// The whole key space, `0..=2^128-1`.
    pub const FULL: HashRange = HashRange { start: 0, end: u128::MAX };

    /// A range from its two inclusive bounds.
    ///
    /// # Errors
    /// [`HashRangeError::Inverted`] when `start > end`.
    pub fn new(start: u128, end: u128) -> Result<Self, HashRangeError> {
        if start > end {
            return Err(HashRangeError::Inverted);
        }
        Ok(Self { start, end })
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }

    /// Splits the range at `new_start` into `[start, new_start-1]` and
    /// `[new_start, end]`, as Kinesis SplitShard does with NewStartingHashKey.
    ///
    /// # Errors
    /// [`HashRangeError::SplitKeyOutOfRange`] unless `start < new_start <= end`.
    pub fn split_at(&self, new_start: u128) -> Result<(HashRange, HashRange), HashRangeError> {
        if new_start <= self.start || new_start > self.end {
            return Err(HashRangeError::SplitKeyOutOfRange);
        }
        Ok((
            HashRange { start: self.start, end: new_start - 1 },
            HashRange { start: new_start, end: self.end },
        ))
    }

    /// Whether the two ranges touch with no gap (either order).
    pub fn is_adjacent_to(&self, other: &HashRange) -> bool {
        self.end.checked_add(1) == Some(other.start) || other.end.checked_add(1) == Some(self.start)
    }

    /// The union of two adjacent ranges.
    ///
    /// # Errors
    /// [`HashRangeError::NotAdjacent`].
    pub fn merge(&self, other: &HashRange) -> Result<HashRange, HashRangeError> {
        if !self.is_adjacent_to(other) {
            return Err(HashRangeError::NotAdjacent);
        }
        Ok(HashRange { start: self.start.min(other.start), end: self.end.max(other.end) })
    }

    /// The `index`-th of `count` ranges dividing the key space evenly, the way
    /// Kinesis's CreateStream and UpdateShardCount (UNIFORM_SCALING) do: each
    /// range is `floor(2^128 / count)` keys wide and the last one runs to
    /// `2^128 - 1`.
    ///
    /// # Errors
    /// [`HashRangeError::BadCount`] when `count == 0` or `index >= count`.
    pub fn uniform(count: u64, index: u64) -> Result<HashRange, HashRangeError> {
        if count == 0 || index >= count {
            return Err(HashRangeError::BadCount);
        }
        if count == 1 {
            return Ok(Self::FULL);
        }
        let n = u128::from(count);
        // floor(2^128 / n) computed without 2^128: 2^128 = u128::MAX + 1.
        let width = u128::MAX / n + u128::from(u128::MAX % n == n - 1);
        let start = width * u128::from(index);
        let end = if index + 1 == count { u128::MAX } else { start + width - 1 };
        Ok(HashRange { start, end })
    }

    /// Number of keys in the range minus one (`end - start`); a range always
    /// holds at least one key, and the full range holds 2^128.
    pub fn span(&self) -> u128 {
        self.end - self.start
    }
}

impl fmt::Display for HashRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_md5_big_endian() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn uniform_division_matches_kinesis() {
        // What Kinesis returns for CreateStream with ShardCount = 3.
        let r: [HashRange; 3] = [0, 1, 2].map(|i| HashRange::uniform(3, i).expect("range"));
        assert_eq!(r[0].start, 0);
        assert_eq!(r[0].end, 113427455640312821154458202477256070484);
        assert_eq!(r[1].start, 113427455640312821154458202477256070485);
        assert_eq!(r[1].end, 226854911280625642308916404954512140969);
        assert_eq!(r[2].start, 226854911280625642308916404954512140970);
        assert_eq!(r[2].end, u128::MAX);
        // ShardCount = 2: the split is at 2^127.
        assert_eq!(HashRange::uniform(2, 0).expect("range").end, (1u128 << 127) - 1);
        assert_eq!(HashRange::uniform(2, 1).expect("range").start, 1u128 << 127);
        assert_eq!(HashRange::uniform(1, 0), Ok(HashRange::FULL));
        assert_eq!(HashRange::uniform(0, 0), Err(HashRangeError::BadCount));
        assert_eq!(HashRange::uniform(2, 2), Err(HashRangeError::BadCount));
    }

    #[test]
    fn uniform_division_covers_the_space_exactly() {
        for count in [1u64, 2, 3, 4, 5, 7, 10, 64, 100, 1000, 4096, 10_000] {
            let mut next = 0u128;
            for i in 0..count {
                let r = HashRange::uniform(count, i).expect("range");
                assert_eq!(r.start, next, "count {count} index {i}");
                assert!(r.start <= r.end);
                next = r.end.wrapping_add(1);
            }
            assert_eq!(next, 0, "count {count} must end at 2^128-1");
        }
    }

    #[test]
    fn split_and_merge_are_inverse() {
        let full = HashRange::FULL;
        let (a, b) = full.split_at(1 << 127).expect("split");
        assert_eq!(a, HashRange { start: 0, end: (1 << 127) - 1 });
        assert_eq!(b, HashRange { start: 1 << 127, end: u128::MAX });
        assert!(a.is_adjacent_to(&b) && b.is_adjacent_to(&a));
        assert_eq!(a.merge(&b), Ok(full));
        assert_eq!(b.merge(&a), Ok(full));
        assert_eq!(full.split_at(0), Err(HashRangeError::SplitKeyOutOfRange));
        assert!(full.split_at(u128::MAX).is_ok());
        let (c, _) = a.split_at(10).expect("split");
        assert_eq!(c.merge(&b), Err(HashRangeError::NotAdjacent));
        assert_eq!(HashRange::new(2, 1), Err(HashRangeError::Inverted));
    }
}
