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
//!
//! # Retries and the error output
//!
//! A batch the destination fails is tried again with exponential backoff
//! ([`RETRY_INITIAL_MS`] doubling up to [`RETRY_MAX_MS`], by the injected
//! clock; meanwhile polls do nothing else) until the retry duration has
//! passed since its first failure (saved in the checkpoint, so a restart does
//! not start the duration again; the attempt count does restart). Then the
//! batch's pending entry is marked as going to the error output (saved
//! first, see [`checkpoint`](super::checkpoint)), its records are written as
//! an error object (under the error output prefix in the destination, or in
//! the backup directory) with the failure, and the checkpoint moves on.
//!
//! With dynamic partitioning a batch is one object per partition value; an
//! attempt tries every object even after one failed, and the keys of those
//! the destination confirmed are kept in the pending entry (saved with the
//! error mark), so later attempts skip them and only the records of objects
//! that failed go to the error output: a record is delivered or in the error
//! output, never both. Records whose keys cannot be extracted go to the
//! error output too, as part of their batch (error output type
//! `partitioning-failed`), and so do records the output format cannot hold
//! (Parquet: not a JSON object, or a field that does not convert;
//! `format-conversion-failed`, error code
//! `DataFormatConversion.MalformedData`). Writing the error output is
//! retried without end: nothing is dropped.
//!
//! Metrics (through the `metrics` facade, label `delivery_stream`):
//! `weir_firehose_delivered_records_total` / `_bytes_total`,
//! `weir_firehose_retried_records_total` / `_bytes_total` (per failed
//! attempt), `weir_firehose_failed_records_total` / `_bytes_total` (written
//! to the error output) and `weir_firehose_last_delivery_timestamp_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use super::checkpoint::{Checkpoint, PendingBatch, PendingFailure, ShardCheckpoint};
use super::config::{DeliveryConfig, RecordFormat};
use super::destination::{
    Batch, Destination, DirectoryDestination, error_key, object_key, request_id,
};
use super::encode::{encode, record_len};
use super::error::FirehoseError;
use super::partition::{EXTRACTION_FAILED, PARTITIONING_FAILED, Partitioner};
use super::prefix::PrefixTemplate;
use crate::store::{
    Clock, ReadLimits, SequenceNumber, ShardDescription, ShardPosition, StartingPosition,
    StoredRecord, StreamStore,
};

/// Error code of records the output format cannot hold (Firehose's).
pub const CONVERSION_FAILED_CODE: &str = "DataFormatConversion.MalformedData";
/// `!{firehose:error-output-type}` of records the output format cannot hold.
pub const CONVERSION_FAILED: &str = "format-conversion-failed";
/// Most records asked for in one read of a shard.
pub const READ_MAX_RECORDS: usize = 10_000;
/// Most bytes asked for in one read of a shard.
pub const READ_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most reads of one shard in one poll (the rest waits for the next poll).
pub const MAX_READS_PER_POLL: usize = 64;
/// Wait after a batch's first failed attempt, ms.
pub const RETRY_INITIAL_MS: u64 = 100;
/// Longest wait between attempts, ms.
pub const RETRY_MAX_MS: u64 = 30_000;

/// The wait after `attempts` failed attempts.
pub fn backoff_ms(attempts: u32) -> u64 {
    RETRY_INITIAL_MS.saturating_mul(1u64 << attempts.saturating_sub(1).min(20)).min(RETRY_MAX_MS)
}

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
    error_prefix: PrefixTemplate,
    partitioner: Partitioner,
    backup: Option<DirectoryDestination>,
    retries: BTreeMap<String, RetryState>,
}

/// A shard's batch that failed: since when, how often, next attempt.
#[derive(Debug, Clone, Copy)]
struct RetryState {
    since_ms: u64,
    attempts: u32,
    next_ms: u64,
}

/// Where a delivery attempt failed.
enum AttemptError {
    /// The destination (or error output) failed: retried. Carries the keys
    /// of the batch's objects the destination confirmed before the failure.
    Destination(FirehoseError, Vec<String>),
    /// Anything else (source, checkpoint).
    Other(FirehoseError),
}

/// A batch split by partition key values, and the records whose values could
/// not be extracted.
struct Split {
    groups: Vec<(BTreeMap<String, String>, Vec<StoredRecord>)>,
    failed: Vec<(StoredRecord, String)>,
    /// Records the output format cannot hold (Parquet: not a JSON object, or
    /// a field that does not convert), with the reason.
    unconvertible: Vec<(StoredRecord, String)>,
}

impl<S: StreamStore, D: Destination> DeliveryStream<S, D> {
    /// Opens a delivery stream, resuming from the checkpoint at
    /// `checkpoint_path` (starting from the oldest retained records if there
    /// is none) and delivering again a batch a crash interrupted.
    ///
    /// # Errors
    /// An invalid configuration, an unreadable or foreign checkpoint, a source
    /// replaced since the checkpoint, or a re-delivery that failed for
    /// another reason than the destination (a failing destination is retried
    /// by the following polls).
    pub async fn open(
        store: S,
        destination: D,
        config: DeliveryConfig,
        checkpoint_path: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, PollReport), FirehoseError> {
        Self::open_with_backup(store, destination, None, config, checkpoint_path, clock).await
    }

    /// [`open`](Self::open), with error output going to `backup` instead of
    /// the destination (required when the destination stores no objects).
    ///
    /// # Errors
    /// As [`open`](Self::open); [`FirehoseError::InvalidDestination`] without
    /// a needed backup directory.
    pub async fn open_with_backup(
        store: S,
        destination: D,
        backup: Option<DirectoryDestination>,
        config: DeliveryConfig,
        checkpoint_path: impl Into<PathBuf>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, PollReport), FirehoseError> {
        let prefix = config.validate()?;
        let error_prefix = config.error_prefix_template()?;
        let partitioner = config.partitioner()?;
        if backup.is_none() && !destination.stores_objects() {
            return Err(FirehoseError::InvalidDestination(
                "this destination needs a backup directory for its error output".into(),
            ));
        }
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
            error_prefix,
            partitioner,
            backup,
            retries: BTreeMap::new(),
        };
        let mut report = PollReport::default();
        if let Err(e) = me.redeliver_pending(&mut report).await {
            if me.retries.is_empty() {
                return Err(e);
            }
            // The destination failed: open anyway; polls retry with backoff.
            tracing::warn!(delivery_stream = %me.config.name, error = %e, "delivering an interrupted batch failed; retrying");
        }
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
                if self.recovering {
                    // A failed batch waits for its next attempt.
                    return Ok(());
                }
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
        let now = self.clock.now_ms();
        if pending.iter().any(|(id, _)| self.retries.get(id).is_some_and(|r| r.next_ms > now)) {
            return Ok(());
        }
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
                if !self.retries.contains_key(&shard_id) {
                    tracing::info!(delivery_stream = %self.config.name, shard = %shard_id, key = %p.key, "delivering an interrupted batch again");
                }
                self.deliver(&shard_id, records, report).await?;
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
        let format = self.config.format.clone();
        let now = self.clock.now_ms();
        for _ in 0..MAX_READS_PER_POLL {
            let Some(c) = self.consumers.get(&index) else { return Ok(()) };
            let from = ShardPosition { stream_id, shard_index: index, offset: c.next_read };
            let limits = ReadLimits { max_records: READ_MAX_RECORDS, max_bytes: READ_MAX_BYTES };
            let batch = self.store.read(&self.config.source_stream, from, limits).await?;
            let empty = batch.records.is_empty();
            for r in batch.records {
                let len = record_len(&r, &format);
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
            self.config.extension(),
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
            key,
            first_failure_ms: None,
            error: None,
            delivered_keys: Vec::new(),
        });
        self.save_checkpoint().await?;
        self.deliver(&shard_id, records, report).await
    }

    /// Delivers the pending batch of `shard_id`, whose records are `records`
    /// (in order, non-empty), then moves the checkpoint past them. A failed
    /// attempt schedules the next one, or, once the retry duration has
    /// passed, turns the batch to the error output.
    async fn deliver(
        &mut self,
        shard_id: &str,
        records: Vec<StoredRecord>,
        report: &mut PollReport,
    ) -> Result<(), FirehoseError> {
        let split = self.split(records);
        loop {
            let pending =
                self.checkpoint.shards.get(shard_id).and_then(|s| s.pending.clone()).ok_or_else(
                    || FirehoseError::Checkpoint {
                        path: self.checkpoint_path.clone(),
                        reason: format!("{shard_id}: no pending batch to deliver"),
                    },
                )?;
            let e = match self.attempt(shard_id, &split, &pending).await {
                Ok((delivered, errors)) => {
                    let entry = self.checkpoint.shards.entry(shard_id.to_owned()).or_insert(
                        ShardCheckpoint {
                            next_offset: pending.first_offset,
                            done: false,
                            pending: None,
                        },
                    );
                    entry.next_offset = pending.last_offset + 1;
                    entry.pending = None;
                    self.save_checkpoint().await?;
                    self.retries.remove(shard_id);
                    let name = &self.config.name;
                    for d in &delivered {
                        metrics::delivered(name, d.records as u64, d.raw_bytes as u64);
                        tracing::debug!(delivery_stream = %name, shard = %shard_id, key = %d.key, records = d.records, "delivered");
                    }
                    for e in &errors {
                        metrics::failed(name, e.records as u64, e.raw_bytes as u64);
                        tracing::warn!(delivery_stream = %name, shard = %shard_id, key = %e.key, records = e.records, "records written to the error output");
                    }
                    report.delivered.extend(delivered);
                    report.errors.extend(errors);
                    return Ok(());
                }
                Err(AttemptError::Other(e)) => return Err(e),
                Err(AttemptError::Destination(e, confirmed)) => {
                    // Objects confirmed before the failure are durable: keep
                    // them out of later attempts and of the error output
                    // (saved at the latest with the batch's error mark).
                    if let Some(p) =
                        self.checkpoint.shards.get_mut(shard_id).and_then(|s| s.pending.as_mut())
                    {
                        for key in confirmed {
                            if !p.delivered_keys.contains(&key) {
                                p.delivered_keys.push(key);
                            }
                        }
                    }
                    e
                }
            };
            report.failed_attempts += 1;
            let now = self.clock.now_ms();
            if !self.retries.contains_key(shard_id) {
                // The first failure (since opening): the retry duration
                // counts from the first failure saved in the checkpoint.
                let since_ms = match pending.first_failure_ms {
                    Some(t) => t.min(now),
                    None => {
                        if let Some(p) = self
                            .checkpoint
                            .shards
                            .get_mut(shard_id)
                            .and_then(|s| s.pending.as_mut())
                        {
                            p.first_failure_ms = Some(now);
                        }
                        self.save_checkpoint().await?;
                        now
                    }
                };
                self.retries.insert(
                    shard_id.to_owned(),
                    RetryState { since_ms, attempts: 0, next_ms: now },
                );
            }
            let Some(state) = self.retries.get_mut(shard_id) else {
                return Err(e);
            };
            state.attempts = state.attempts.saturating_add(1);
            let state = *state;
            let (count, bytes) = split.totals(&self.config.format);
            metrics::retried(&self.config.name, count, bytes);
            let expired = now.saturating_sub(state.since_ms)
                >= u64::from(self.config.retry_duration_secs) * 1_000;
            if pending.error.is_none() && expired {
                tracing::warn!(delivery_stream = %self.config.name, shard = %shard_id, attempts = state.attempts, error = %e, "retry duration over; the batch goes to the error output");
                let failure = PendingFailure {
                    error_code: error_code(&e),
                    error_message: e.to_string(),
                    attempts: state.attempts,
                    ending_ms: now,
                    error_output_type: self.destination.error_output_type().to_owned(),
                };
                if let Some(p) =
                    self.checkpoint.shards.get_mut(shard_id).and_then(|s| s.pending.as_mut())
                {
                    p.error = Some(failure);
                }
                self.save_checkpoint().await?;
                self.retries.remove(shard_id);
                continue;
            }
            if let Some(s) = self.retries.get_mut(shard_id) {
                s.next_ms = now.saturating_add(backoff_ms(state.attempts));
            }
            tracing::debug!(delivery_stream = %self.config.name, shard = %shard_id, attempts = state.attempts, error = %e, "delivery failed; retrying");
            return Err(e);
        }
    }

    /// Splits a batch by partition key values (one group without keys).
    fn split(&self, records: Vec<StoredRecord>) -> Split {
        let mut unconvertible = Vec::new();
        let records: Vec<StoredRecord> = match &self.config.format {
            RecordFormat::Parquet(parquet) => records
                .into_iter()
                .filter_map(|r| match parquet.check(&r) {
                    Ok(()) => Some(r),
                    Err(e) => {
                        unconvertible.push((r, e.to_string()));
                        None
                    }
                })
                .collect(),
            RecordFormat::AsIs | RecordFormat::NewlineDelimited => records,
        };
        if self.partitioner.is_empty() {
            return Split {
                groups: vec![(BTreeMap::new(), records)],
                failed: Vec::new(),
                unconvertible,
            };
        }
        let mut index: BTreeMap<BTreeMap<String, String>, usize> = BTreeMap::new();
        let mut groups: Vec<(BTreeMap<String, String>, Vec<StoredRecord>)> = Vec::new();
        let mut failed = Vec::new();
        for r in records {
            match self.partitioner.extract(&r.data) {
                Ok(values) => match index.get(&values) {
                    Some(&i) => groups[i].1.push(r),
                    None => {
                        index.insert(values.clone(), groups.len());
                        groups.push((values, vec![r]));
                    }
                },
                Err(reason) => failed.push((r, reason)),
            }
        }
        Split { groups, failed, unconvertible }
    }

    /// One attempt at a pending batch: its objects (or, once it failed for
    /// good, its error output), and the error output of records that could
    /// not be partitioned.
    async fn attempt(
        &self,
        shard_id: &str,
        split: &Split,
        pending: &PendingBatch,
    ) -> Result<(Vec<DeliveredObject>, Vec<DeliveredObject>), AttemptError> {
        let mut delivered = Vec::new();
        let mut errors = Vec::new();
        // Records of objects not (yet) confirmed, for the error output.
        let mut undelivered: Vec<(StoredRecord, String)> = Vec::new();
        // The first failure of this attempt.
        let mut failure: Option<FirehoseError> = None;
        for (values, records) in &split.groups {
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                continue;
            };
            let (first, last) = (first.sequence, last.sequence);
            let key = if self.partitioner.is_empty() {
                pending.key.clone()
            } else {
                let oldest = records.iter().map(|r| r.arrival_ms).min().unwrap_or_default();
                object_key(
                    &self.prefix.render_with(oldest, values, ""),
                    &self.config.name,
                    shard_id,
                    first,
                    last,
                    self.config.extension(),
                )
            };
            let format = &self.config.format;
            let raw_bytes = records.iter().map(|r| record_len(r, format)).sum();
            let object = DeliveredObject {
                key: key.clone(),
                shard_id: shard_id.to_owned(),
                first,
                last,
                records: records.len(),
                raw_bytes,
            };
            if pending.delivered_keys.contains(&key) {
                // Confirmed by an earlier attempt: durable already.
                delivered.push(object);
                continue;
            }
            if let Some(f) = &pending.error {
                undelivered.extend(records.iter().map(|r| (r.clone(), f.error_message.clone())));
                continue;
            }
            let compression = self.config.compression;
            let body = if self.destination.wants_body() {
                let recs = records.clone();
                let format = format.clone();
                tokio::task::spawn_blocking(move || encode(&recs, &format, compression))
                    .await
                    .map_err(|_| AttemptError::Other(FirehoseError::Cancelled))?
                    .map_err(AttemptError::Other)?
            } else {
                Vec::new()
            };
            let batch = Batch {
                request_id: request_id(&self.config.name, shard_id, first, last),
                key: key.clone(),
                records: records.iter().map(|r| r.data.clone()).collect(),
                body,
            };
            // The other objects are still tried: each one confirmed now is
            // one the error output will not need.
            match self.destination.deliver(batch).await {
                Ok(()) => delivered.push(object),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            let confirmed = delivered.iter().map(|d| d.key.clone()).collect();
            return Err(AttemptError::Destination(e, confirmed));
        }
        if let Some(f) = &pending.error
            && let Some(o) = self.write_errors(shard_id, &undelivered, f).await?
        {
            errors.push(o);
        }
        // Records that cannot go to the destination at all, each list with
        // its own error code and output type (write_errors skips empty ones).
        let rejected = [
            (&split.failed, EXTRACTION_FAILED, PARTITIONING_FAILED),
            (&split.unconvertible, CONVERSION_FAILED_CODE, CONVERSION_FAILED),
        ];
        for (records, code, output_type) in rejected {
            let f = PendingFailure {
                error_code: code.to_owned(),
                error_message: String::new(),
                attempts: 1,
                ending_ms: self.clock.now_ms(),
                error_output_type: output_type.to_owned(),
            };
            if let Some(o) = self.write_errors(shard_id, records, &f).await? {
                errors.push(o);
            }
        }
        Ok((delivered, errors))
    }

    /// Writes records (each with its own error message, else the failure's)
    /// as one error output object.
    async fn write_errors(
        &self,
        shard_id: &str,
        records: &[(StoredRecord, String)],
        failure: &PendingFailure,
    ) -> Result<Option<DeliveredObject>, AttemptError> {
        let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.sequence, last.sequence);
        let oldest = records.iter().map(|(r, _)| r.arrival_ms).min().unwrap_or_default();
        let prefix =
            self.error_prefix.render_with(oldest, &BTreeMap::new(), &failure.error_output_type);
        let key = error_key(&prefix, &self.config.name, shard_id, first, last);
        let mut body = Vec::new();
        for (r, message) in records {
            let line = serde_json::json!({
                "attemptsMade": failure.attempts,
                "arrivalTimestamp": r.arrival_ms,
                "errorCode": failure.error_code,
                "errorMessage": if message.is_empty() { &failure.error_message } else { message },
                "attemptEndingTimestamp": failure.ending_ms,
                "rawData": base64::engine::general_purpose::STANDARD.encode(&r.data),
                "sequenceNumber": r.sequence.to_string(),
                "shardId": shard_id,
            });
            body.extend_from_slice(line.to_string().as_bytes());
            body.push(b'\n');
        }
        let result = match &self.backup {
            Some(b) => b.put(&key, body).await,
            None => self.destination.put(&key, body).await,
        };
        result.map_err(|e| AttemptError::Destination(e, Vec::new()))?;
        let format = &self.config.format;
        Ok(Some(DeliveredObject {
            key,
            shard_id: shard_id.to_owned(),
            first,
            last,
            records: records.len(),
            raw_bytes: records.iter().map(|(r, _)| record_len(r, format)).sum(),
        }))
    }
}

impl Split {
    /// Records and bytes of the whole batch.
    fn totals(&self, format: &RecordFormat) -> (u64, u64) {
        let all = self
            .groups
            .iter()
            .flat_map(|(_, rs)| rs.iter())
            .chain(self.failed.iter().map(|(r, _)| r))
            .chain(self.unconvertible.iter().map(|(r, _)| r));
        all.fold((0, 0), |(n, b), r| (n + 1, b + record_len(r, format) as u64))
    }
}

/// The Firehose-style code of a delivery failure.
fn error_code(e: &FirehoseError) -> String {
    match e {
        FirehoseError::Rejected { code, .. } => code.clone(),
        FirehoseError::Io { .. } => "Directory.WriteFailed".to_owned(),
        _ => "Delivery.Failed".to_owned(),
    }
}

/// The delivery stream metrics (see the module header).
mod metrics {
    fn labels(name: &str) -> [(&'static str, String); 1] {
        [("delivery_stream", name.to_owned())]
    }

    pub(super) fn delivered(name: &str, records: u64, bytes: u64) {
        let l = labels(name);
        ::metrics::counter!("weir_firehose_delivered_records_total", &l).increment(records);
        ::metrics::counter!("weir_firehose_delivered_bytes_total", &l).increment(bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        ::metrics::gauge!("weir_firehose_last_delivery_timestamp_seconds", &l).set(now);
    }

    pub(super) fn retried(name: &str, records: u64, bytes: u64) {
        let l = labels(name);
        ::metrics::counter!("weir_firehose_retried_records_total", &l).increment(records);
        ::metrics::counter!("weir_firehose_retried_bytes_total", &l).increment(bytes);
    }

    pub(super) fn failed(name: &str, records: u64, bytes: u64) {
        let l = labels(name);
        ::metrics::counter!("weir_firehose_failed_records_total", &l).increment(records);
        ::metrics::counter!("weir_firehose_failed_bytes_total", &l).increment(bytes);
    }
}
