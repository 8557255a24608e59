//! Lineage consumption: which shards of the source are read when, and each
//! read shard's buffer. A shard is read once its parents are done (a shard
//! without parents, or whose parents retention removed, at once), so per
//! partition key records are delivered in order across reshards; its buffer
//! is flushed by the size hint (before a record would take it past the hint,
//! or once it reaches it) and by the interval hint. And [`read_range`]: a
//! pending batch's records read again.

use std::collections::BTreeSet;

use crate::store::{
    ReadLimits, ShardDescription, ShardPosition, StoreError, StoredRecord, StreamStore,
};

/// A batch's records read again from `stream`: offsets `from.offset..=last`
/// of one shard, at most `limits` per read; `None` when a read does not
/// start where the batch goes on (retention removed the records).
///
/// # Errors
/// A failed read.
pub(super) async fn read_range<S: StreamStore>(
    store: &S,
    stream: &str,
    from: ShardPosition,
    last: u64,
    limits: ReadLimits,
) -> Result<Option<Vec<StoredRecord>>, StoreError> {
    let mut records = Vec::new();
    let mut offset = from.offset;
    while offset <= last {
        // At most this many records (exactly, on a store with dense
        // offsets); reads past the batch are cut below.
        let want = usize::try_from(last - offset + 1).unwrap_or(usize::MAX);
        let read = ReadLimits { max_records: want.min(limits.max_records), ..limits };
        let batch = store.read(stream, ShardPosition { offset, ..from }, read).await?;
        match batch.records.first() {
            Some(r) if r.sequence.offset == offset => {}
            _ => return Ok(None),
        }
        records.extend(batch.records.into_iter().filter(|r| r.sequence.offset <= last));
        offset = batch.next.offset;
    }
    Ok(Some(records))
}

/// A shard being consumed: where reading continues and what is buffered.
#[derive(Debug)]
pub(super) struct Consumer {
    pub(super) shard_id: String,
    pub(super) next_read: u64,
    buffer: Vec<StoredRecord>,
    buffered_bytes: usize,
    started_ms: u64,
}

impl Consumer {
    /// A consumer of `shard_id` reading on from `next_read`, nothing buffered.
    pub(super) fn new(shard_id: String, next_read: u64) -> Self {
        Self { shard_id, next_read, buffer: Vec::new(), buffered_bytes: 0, started_ms: 0 }
    }

    /// Whether a record of `len` bytes would take the (non-empty) buffer
    /// past `size`: flush first.
    pub(super) fn would_overflow(&self, len: usize, size: usize) -> bool {
        !self.buffer.is_empty() && self.buffered_bytes + len > size
    }

    /// Buffers a record of `len` bytes at `now_ms`; whether the buffer
    /// reached `size` (flush now).
    pub(super) fn push(&mut self, r: StoredRecord, len: usize, size: usize, now_ms: u64) -> bool {
        if self.buffer.is_empty() {
            self.started_ms = now_ms;
        }
        self.buffered_bytes += len;
        self.buffer.push(r);
        self.buffered_bytes >= size
    }

    /// Whether the first buffered record waited `interval_ms` by `now_ms`.
    pub(super) fn due(&self, now_ms: u64, interval_ms: u64) -> bool {
        !self.buffer.is_empty() && now_ms.saturating_sub(self.started_ms) >= interval_ms
    }

    /// Takes the buffered records (to flush), leaving the buffer empty.
    pub(super) fn take(&mut self) -> Vec<StoredRecord> {
        self.buffered_bytes = 0;
        std::mem::take(&mut self.buffer)
    }
}

/// Whether a shard waits for a parent: one still present in the stream
/// (not yet removed by retention) and not yet done. `is_done` says whether a
/// shard is done.
pub(super) fn waits_for_parent(
    shard: &ShardDescription,
    present: &BTreeSet<String>,
    is_done: impl Fn(&str) -> bool,
) -> bool {
    [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
        .into_iter()
        .flatten()
        .any(|p| present.contains(p) && !is_done(p))
}
