//! What a poll reports: the objects it delivered, the error output objects
//! it wrote, its failed attempts and the shards it finished.

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
