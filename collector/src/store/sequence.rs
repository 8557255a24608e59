//! Sequence numbers: the Kinesis-shaped names of record positions.
//!
//! A sequence number is a decimal string of exactly 39 digits:
//!
//! ```text
//! 1 SSSSSSSSSSSSSSSSSS OOOOOOOOOOOOOOOOOOOO
//! ^ shard index, 18 digits   offset in the shard, 20 digits
//! ```
//!
//! The leading `1` keeps the string free of leading zeros (Kinesis's pattern
//! is `0|([1-9]\d{0,128})`) and the fixed width makes string order equal
//! numeric order. Numbers are unique in a stream (the shard index is), strictly
//! increasing within a shard (the offset is), and a child shard's numbers are
//! all greater than its parents' (children get higher indexes), as in Kinesis.

use std::fmt;
use std::str::FromStr;

const SHARD_FACTOR: u128 = 100_000_000_000_000_000_000; // 10^20
const LEAD: u128 = SHARD_FACTOR * 1_000_000_000_000_000_000; // 10^38
/// Largest shard index a sequence number can name (18 digits).
pub const MAX_SHARD_INDEX: u64 = 999_999_999_999_999_999;

/// A record's position, printed the way Kinesis clients expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber {
    /// Index of the shard (the number in `shardId-000000000007`).
    pub shard_index: u64,
    /// Offset of the record in that shard.
    pub offset: u64,
}

/// A string that is not one of our sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sequence number {0:?}: expected 39 decimal digits starting with 1")]
pub struct ParseSequenceError(pub String);

impl SequenceNumber {
    /// The sequence number of `offset` in shard `shard_index`.
    pub fn new(shard_index: u64, offset: u64) -> Self {
        Self { shard_index, offset }
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = LEAD + u128::from(self.shard_index) * SHARD_FACTOR + u128::from(self.offset);
        write!(f, "{v}")
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSequenceError(s.chars().take(64).collect());
        if s.len() != 39 || !s.starts_with('1') || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let v: u128 = s.parse().map_err(|_| bad())?;
        let rest = v - LEAD;
        let shard_index = u64::try_from(rest / SHARD_FACTOR).map_err(|_| bad())?;
        let offset = u64::try_from(rest % SHARD_FACTOR).map_err(|_| bad())?;
        Ok(Self { shard_index, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_as_strings() {
        let cases = [(0, 0), (0, 1), (1, 0), (7, u64::MAX), (MAX_SHARD_INDEX, 5)];
        let mut prev: Option<String> = None;
        for (s, o) in cases {
            let n = SequenceNumber::new(s, o);
            let text = n.to_string();
            assert_eq!(text.len(), 39, "{text}");
            assert_eq!(text.parse::<SequenceNumber>(), Ok(n));
            if let Some(p) = prev {
                assert!(p < text);
            }
            prev = Some(text);
        }
        assert_eq!(
            SequenceNumber::new(3, 42).to_string(),
            "100000000000000000300000000000000000042"
        );
    }

    #[test]
    fn rejects_other_shapes() {
        for s in [
            "",
            "0",
            "12",
            "200000000000000000000000000000000000000",
            "1000000000000000000000000000000000000x0",
        ] {
            assert!(s.parse::<SequenceNumber>().is_err(), "{s}");
        }
    }
}
