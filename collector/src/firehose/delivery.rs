//! [`DeliveryStream`]: a checkpointed consumer per shard of the source stream,
//! buffering records and delivering them in batches to a [`Destination`].
//!
//! Each [`poll`](DeliveryStream::poll) describes the source and consumes every
//! shard whose parents are done (a shard without parents, or whose parents
//! retention removed, starts at once): it reads from where the shard's
//! consumer stands, adds records to the shard's buffer and flushes the buffer
//! when the next record would take it past the size hint, when it reaches the
//! size hint, when its first record was buffered at least the interval hint
//! ago (by the injected [`Clock`]), and when the shard is closed and read to
//! its end; the shard is then marked done and its children start (a merge's
//! child once both parents are done). So per partition key, records are
//! delivered in order across reshards.
//!
//! A flush (1) fixes the batch in the checkpoint as pending (offsets and
//! object key), (2) writes the object, (3) moves the checkpoint past it. After
//! a crash between (1) and (3), [`open`](DeliveryStream::open) delivers the
//! same records under the same key again before anything else: the object is
//! overwritten, never duplicated, and no record is skipped. After a failed
//! poll the same happens at the next poll.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::{Checkpoint, PendingBatch, ShardCheckpoint};
use super::config::DeliveryConfig;
use super::destination::{Destination, object_key};
use super::encode::{encode, record_len};
use super::error::FirehoseError;
use super::prefix::PrefixTemplate;
use crate::store::{
    Clock, ReadLimits, SequenceNumber, ShardDescription, ShardPosition, StartingPosition,
    StoredRecord, StreamStore,
};

/// Most records asked for in one read of a shard.
pub const READ_MAX_RECORDS: usize = 10_000;
/// Most bytes asked for in one read of a shard.
pub const READ_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most reads of one shard in one poll (the rest waits for the next poll).
pub const MAX_READS_PER_POLL: usize = 64;

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
    /// Shards closed and fully delivered during the poll.
    pub shards_done: Vec<String>,
}

/// A shard being consumed: where reading continues and what is buffered.
#[derive(Debug)]
struct Consumer {
    shard_id: String,
    next_read: u64,
    buffer: Vec<StoredRecord>,
    buffered_bytes: usize,
    started_ms: u64,
}

/// A delivery stream reading a Weir data stream (see the module header).
pub struct DeliveryStream<S, D> {
    store: S,
    destination: D,
    config: DeliveryConfig,
    prefix: PrefixTemplate,
    checkpoint_path: PathBuf,
    checkpoint: Checkpoint,
    clock: Arc<dyn Clock>,
    consumers: BTreeMap<u64, Consumer>,
    recovering: bool,
}

impl<S: StreamStore, D: Destination> DeliveryStream<S, D> {
    /// Opens a delivery stream, resuming from the checkpoint at
    /// `checkpoint_path` (starting from the oldest retained records if there
    /// is none) and delivering again a batch a crash interrupted.
    ///
    /// # Errors
    /// An invalid configuration, an unreadable or foreign checkpoint, a source
    /// replaced since the checkpoint, or a failed re-delivery.
    pub async fn open(
        store: S,
        destination: D,
        config: DeliveryConfig,
        checkpoint_path: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, PollReport), FirehoseError> {
        let prefix = config.validate()?;
        let checkpoint_path = checkpoint_path.into();
        let checkpoint = {
            let path = checkpoint_path.clone();
            let (name, source) = (config.name.clone(), config.source_stream.clone());
            tokio::task::spawn_blocking(move || Checkpoint::load(&path, &name, &source))
                .await
                .map_err(|_| FirehoseError::Cancelled)??
        };
        let mut me = Self {
            store,
            destination,
            config,
            prefix,
            checkpoint_path,
            checkpoint,
            clock,
            consumers: BTreeMap::new(),
            recovering: true,
        };
        let mut report = PollReport::default();
        me.redeliver_pending(&mut report).await?;
        Ok((me, report))
    }

    /// The configuration.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The checkpoint as last saved (or about to be).
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Reads what the source has, flushes what the hints say, follows
    /// reshards.
    ///
    /// # Errors
    /// The source or the destination failed; nothing delivered is lost, and
    /// the next poll (or the next open) resumes from the checkpoint.
    pub async fn poll(&mut self) -> Result<PollReport, FirehoseError> {
        let mut report = PollReport::default();
        let result = async {
            if self.recovering {
                self.redeliver_pending(&mut report).await?;
            }
            self.poll_shards(&mut report).await
        }
        .await;
        match result {
            Ok(()) => Ok(report),
            Err(e) => {
                // Buffers may hold records taken out of order; start again
                // from the checkpoint.
                self.consumers.clear();
                self.recovering = true;
                Err(e)
            }
        }
    }

    /// Polls every `poll_interval` until `shutdown` resolves. Buffered records
    /// not yet delivered are read again after a restart.
    pub async fn run(mut self, poll_interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.poll().await {
                tracing::warn!(delivery_stream = %self.config.name, error = %e, "delivery poll failed");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(poll_interval) => {}
            }
        }
    }

    async fn save_checkpoint(&self) -> Result<(), FirehoseError> {
        let c = self.checkpoint.clone();
        let path = self.checkpoint_path.clone();
        tokio::task::spawn_blocking(move || c.save(&path))
            .await
            .map_err(|_| FirehoseError::Cancelled)?
    }

    async fn stream_id(&mut self) -> Result<(u64, Vec<ShardDescription>), FirehoseError> {
        let desc = self.store.describe_stream(&self.config.source_stream).await?;
        match self.checkpoint.stream_id {
            Some(expected) if expected != desc.id => {
                Err(FirehoseError::StreamReplaced { stream: desc.name, expected, found: desc.id })
            }
            _ => {
                self.checkpoint.stream_id = Some(desc.id);
                Ok((desc.id, desc.shards))
            }
        }
    }

    async fn redeliver_pending(&mut self, report: &mut PollReport) -> Result<(), FirehoseError> {
        let pending: Vec<(String, PendingBatch)> = self
            .checkpoint
            .shards
            .iter()
            .filter_map(|(id, s)| s.pending.clone().map(|p| (id.clone(), p)))
            .collect();
        if !pending.is_empty() {
            let (stream_id, shards) = self.stream_id().await?;
            for (shard_id, p) in pending {
                let gone = || FirehoseError::RecordsGone {
                    shard_id: shard_id.clone(),
                    first: p.first_offset,
                    last: p.last_offset,
                };
                let index = shards.iter().find(|s| s.shard_id == shard_id).ok_or_else(gone)?.index;
                let mut records = Vec::new();
                let mut offset = p.first_offset;
                while offset <= p.last_offset {
                    let want = usize::try_from(p.last_offset - offset + 1).unwrap_or(usize::MAX);
                    let from = ShardPosition { stream_id, shard_index: index, offset };
                    let limits = ReadLimits {
                        max_records: want.min(READ_MAX_RECORDS),
                        max_bytes: READ_MAX_BYTES,
                    };
                    let batch = self.store.read(&self.config.source_stream, from, limits).await?;
                    match batch.records.first() {
                        Some(r) if r.sequence.offset == offset => {}
                        _ => return Err(gone()),
                    }
                    records.extend(
                        batch.records.into_iter().filter(|r| r.sequence.offset <= p.last_offset),
                    );
                    offset = batch.next.offset;
                }
                tracing::info!(delivery_stream = %self.config.name, shard = %shard_id, key = %p.key, "delivering an interrupted batch again");
                let delivered = self.deliver(&shard_id, records, p.key).await?;
                report.delivered.push(delivered);
            }
        }
        self.recovering = false;
        Ok(())
    }

    async fn poll_shards(&mut self, report: &mut PollReport) -> Result<(), FirehoseError> {
        let (stream_id, mut shards) = self.stream_id().await?;
        shards.sort_by_key(|s| s.index);
        let present: BTreeSet<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
        for shard in &shards {
            if self.is_done(&shard.shard_id) {
                self.consumers.remove(&shard.index);
                continue;
            }
            let waiting = [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
                .into_iter()
                .flatten()
                .any(|p| present.contains(p) && !self.is_done(p));
            if !waiting {
                self.consume(stream_id, shard, report).await?;
            }
        }
        Ok(())
    }

    fn is_done(&self, shard_id: &str) -> bool {
        self.checkpoint.shards.get(shard_id).is_some_and(|s| s.done)
    }

    async fn consume(
        &mut self,
        stream_id: u64,
        shard: &ShardDescription,
        report: &mut PollReport,
    ) -> Result<(), FirehoseError> {
        let index = shard.index;
        if !self.consumers.contains_key(&index) {
            let next_read = match self.checkpoint.shards.get(&shard.shard_id) {
                Some(s) => s.next_offset,
                None => {
                    let pos = self
                        .store
                        .position(
                            &self.config.source_stream,
                            &shard.shard_id,
                            StartingPosition::TrimHorizon,
                        )
                        .await?;
                    self.checkpoint.shards.insert(
                        shard.shard_id.clone(),
                        ShardCheckpoint { next_offset: pos.offset, done: false, pending: None },
                    );
                    pos.offset
                }
            };
            self.consumers.insert(
                index,
                Consumer {
                    shard_id: shard.shard_id.clone(),
                    next_read,
                    buffer: Vec::new(),
                    buffered_bytes: 0,
                    started_ms: 0,
                },
            );
        }
        let size = self.config.buffering.size_bytes();
        let format = self.config.format;
        let now = self.clock.now_ms();
        for _ in 0..MAX_READS_PER_POLL {
            let Some(c) = self.consumers.get(&index) else { return Ok(()) };
            let from = ShardPosition { stream_id, shard_index: index, offset: c.next_read };
            let limits = ReadLimits { max_records: READ_MAX_RECORDS, max_bytes: READ_MAX_BYTES };
            let batch = self.store.read(&self.config.source_stream, from, limits).await?;
            let empty = batch.records.is_empty();
            for r in batch.records {
                let len = record_len(&r, format);
                let full = self
                    .consumers
                    .get(&index)
                    .is_some_and(|c| !c.buffer.is_empty() && c.buffered_bytes + len > size);
                if full {
                    self.flush(index, report).await?;
                }
                let reached = {
                    let Some(c) = self.consumers.get_mut(&index) else { return Ok(()) };
                    if c.buffer.is_empty() {
                        c.started_ms = now;
                    }
                    c.buffered_bytes += len;
                    c.buffer.push(r);
                    c.buffered_bytes >= size
                };
                if reached {
                    self.flush(index, report).await?;
                }
            }
            if let Some(c) = self.consumers.get_mut(&index) {
                c.next_read = batch.next.offset;
            }
            if batch.end_of_shard.is_some() {
                self.flush(index, report).await?;
                if let Some(s) = self.checkpoint.shards.get_mut(&shard.shard_id) {
                    s.done = true;
                }
                self.save_checkpoint().await?;
                self.consumers.remove(&index);
                report.shards_done.push(shard.shard_id.clone());
                return Ok(());
            }
            if empty {
                break;
            }
        }
        let interval = self.config.buffering.interval_ms();
        let due = self
            .consumers
            .get(&index)
            .is_some_and(|c| !c.buffer.is_empty() && now.saturating_sub(c.started_ms) >= interval);
        if due {
            self.flush(index, report).await?;
        }
        Ok(())
    }

    /// Delivers the shard's buffer, if any: pending in the checkpoint, object,
    /// checkpoint moved.
    async fn flush(&mut self, index: u64, report: &mut PollReport) -> Result<(), FirehoseError> {
        let Some(c) = self.consumers.get_mut(&index) else { return Ok(()) };
        let records = std::mem::take(&mut c.buffer);
        c.buffered_bytes = 0;
        let shard_id = c.shard_id.clone();
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(()) };
        let (first, last) = (first.sequence, last.sequence);
        let oldest = records.iter().map(|r| r.arrival_ms).min().unwrap_or_default();
        let key = object_key(
            &self.prefix.render(oldest),
            &self.config.name,
            &shard_id,
            first,
            last,
            self.config.compression.extension(),
        );
        let entry =
            self.checkpoint.shards.get_mut(&shard_id).ok_or_else(|| FirehoseError::Checkpoint {
                path: self.checkpoint_path.clone(),
                reason: format!("no entry for {shard_id}"),
            })?;
        if entry.next_offset != first.offset {
            return Err(FirehoseError::Checkpoint {
                path: self.checkpoint_path.clone(),
                reason: format!(
                    "{shard_id}: batch starts at offset {}, checkpoint at {}",
                    first.offset, entry.next_offset
                ),
            });
        }
        entry.pending = Some(PendingBatch {
            first_offset: first.offset,
            last_offset: last.offset,
            key: key.clone(),
        });
        self.save_checkpoint().await?;
        let delivered = self.deliver(&shard_id, records, key).await?;
        report.delivered.push(delivered);
        Ok(())
    }

    /// Writes the object of `records` (one shard's, in order, non-empty) under
    /// `key`, then moves the checkpoint past them.
    async fn deliver(
        &mut self,
        shard_id: &str,
        records: Vec<StoredRecord>,
        key: String,
    ) -> Result<DeliveredObject, FirehoseError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Err(FirehoseError::Checkpoint {
                path: self.checkpoint_path.clone(),
                reason: format!("{shard_id}: empty batch"),
            });
        };
        let (first, last) = (first.sequence, last.sequence);
        let (format, compression) = (self.config.format, self.config.compression);
        let count = records.len();
        let raw_bytes = records.iter().map(|r| record_len(r, format)).sum();
        let body = tokio::task::spawn_blocking(move || encode(&records, format, compression))
            .await
            .map_err(|_| FirehoseError::Cancelled)??;
        self.destination.put(&key, body).await?;
        let entry = self.checkpoint.shards.entry(shard_id.to_owned()).or_insert(ShardCheckpoint {
            next_offset: first.offset,
            done: false,
            pending: None,
        });
        entry.next_offset = last.offset + 1;
        entry.pending = None;
        self.save_checkpoint().await?;
        tracing::debug!(delivery_stream = %self.config.name, shard = %shard_id, key = %key, records = count, "delivered");
        Ok(DeliveredObject {
            key,
            shard_id: shard_id.to_owned(),
            first,
            last,
            records: count,
            raw_bytes,
        })
    }
}
