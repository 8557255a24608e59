//! What a poll reports: the objects it delivered, the error output objects
//! it wrote, its failed attempts and the shards it finished; and the
//! status of a delivery stream whose batches fail ([`DeliveryFailure`]).

use crate::store::SequenceNumber;

/// An object a poll delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredObject {
    /// Its key.
    pub key: String,
    /// The shard its records came from.
    pub shard_id: String,
    /// Sequence number of its first record.
    pub first: SequenceNumber,
    /// Sequence number of its last record.
    pub last: SequenceNumber,
    /// How many records it holds.
    pub records: usize,
    /// Their bytes before compression.
    pub raw_bytes: usize,
}

/// What a poll (or opening, for a batch delivered again) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Objects delivered, in order.
    pub delivered: Vec<DeliveredObject>,
    /// Error output objects written, in order.
    pub errors: Vec<DeliveredObject>,
    /// Failed delivery attempts.
    pub failed_attempts: usize,
    /// Shards closed and fully delivered during the poll.
    pub shards_done: Vec<String>,
}

/// Why a delivery stream is not delivering: its first failing batch (by
/// shard id), as DescribeDeliveryStream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// `disk_full` (the destination's disk is full: paused until it has room
    /// again) or `destination` (any other failure: retried for the retry
    /// duration, then the error output).
    pub reason: &'static str,
    /// The shard whose batch fails.
    pub shard_id: String,
    /// Its failed attempts since the first failure (since opening).
    pub attempts: u32,
    /// When the first of them was, ms since the epoch (the delivery
    /// stream's clock).
    pub since_ms: u64,
    /// When the next attempt is due at the latest, ms since the epoch.
    pub next_attempt_ms: u64,
    /// The last failure.
    pub message: String,
    /// Shards whose batch fails, this one included.
    pub failing_shards: usize,
}
