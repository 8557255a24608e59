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
//! poll the same happens at the next poll. The checkpoint is a file
//! ([`open`](DeliveryStream::open)) or any
//! [`CheckpointStore`](super::state::CheckpointStore)
//! ([`open_with_checkpoints`](DeliveryStream::open_with_checkpoints)): in
//! the shared KV state a save is refused once another collector's lease
//! holder has claimed the checkpoint, and the same argument carries over to
//! several collectors (see `state::kv`).
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
//! # A full disk
//!
//! [`FirehoseError::DiskFull`] pauses: the batch stays pending, backs off as
//! above without starting the retry duration (nothing goes to the error
//! output) and without a checkpoint write (the checkpoint may share the
//! disk), and goes again at the first poll at which the destination
//! [has room](Destination::has_room); [`DeliveryStream::failure`] says so
//! meanwhile. A checkpoint save that failed is made again before the next
//! object is written, so a batch is always pending in the saved checkpoint
//! before its object is written.
//!
//! Metrics (through the `metrics` facade, label `delivery_stream`):
//! `weir_firehose_delivered_records_total` / `_bytes_total`,
//! `weir_firehose_retried_records_total` / `_bytes_total` (per failed
//! attempt), `weir_firehose_delivery_failures_total` (per failed attempt,
//! label `reason`: `disk_full` or `destination`),
//! `weir_firehose_delivery_paused` (1 while a batch waits for its next
//! attempt), `weir_firehose_failed_records_total` / `_bytes_total` (written
//! to the error output) and `weir_firehose_last_delivery_timestamp_seconds`.
//!
//! # Layout
//!
//! This file holds [`DeliveryStream`]: opening, polling, the checkpoint's
//! pending batch from flush to delivered. The rest, by concept:
//! - `lineage`: which shards are read when, and a shard's buffer;
//! - `split`: a batch split by partition key values, rejected records apart;
//! - `attempt`: one attempt at a batch's objects (the destination side);
//! - `errors`: the error output objects;
//! - `retry`: failing batches, backoff and the retry duration;
//! - `report`: what a poll reports; `metrics`: the metrics above.
//!
//! Imports go one way: this file → `attempt` → `split`, `errors` →
//! `report`; `lineage`, `retry` and `metrics` import none of them.

mod attempt;
mod errors;
mod lineage;
mod metrics;
mod report;
mod retry;
mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use attempt::{AttemptError, Output};
pub use errors::{CONVERSION_FAILED, CONVERSION_FAILED_CODE};
use errors::{ErrorOutput, error_code};
use lineage::{Consumer, read_range, waits_for_parent};
pub use report::{DeliveredObject, DeliveryFailure, PollReport};
use retry::Retries;
pub use retry::{DESTINATION, DISK_FULL, RETRY_INITIAL_MS, RETRY_MAX_MS, backoff_ms};

use super::checkpoint::{Checkpoint, PendingBatch, PendingFailure, ShardCheckpoint};
use super::config::DeliveryConfig;
use super::destination::{Destination, DirectoryDestination, object_key};
use super::encode::record_len;
use super::error::FirehoseError;
use super::state::{CheckpointStore, FileCheckpoints};
use crate::store::{
    Clock, ReadLimits, ShardDescription, ShardPosition, StartingPosition, StoredRecord, StreamStore,
};

/// Most records asked for in one read of a shard.
pub const READ_MAX_RECORDS: usize = 10_000;
/// Most bytes asked for in one read of a shard.
pub const READ_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most reads of one shard in one poll (the rest waits for the next poll).
pub const MAX_READS_PER_POLL: usize = 64;
/// A delivery stream reading a Weir data stream (see the module header).
pub struct DeliveryStream<S, D> {
    store: S,
    output: Output<D>,
    checkpoints: Arc<dyn CheckpointStore>,
    /// Where the checkpoint lives, for messages.
    checkpoint_path: PathBuf,
    checkpoint: Checkpoint,
    clock: Arc<dyn Clock>,
    consumers: BTreeMap<u64, Consumer>,
    recovering: bool,
    retries: Retries,
    /// The last checkpoint save failed: `checkpoint` is ahead of the saved
    /// one, and is saved before any object is written.
    unsaved: bool,
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
        let checkpoints = Arc::new(FileCheckpoints::new(checkpoint_path));
        Self::open_with_checkpoints(store, destination, backup, config, checkpoints, clock).await
    }

    /// [`open_with_backup`](Self::open_with_backup), with the checkpoint in
    /// `checkpoints` (a file, or a key of the shared state held under a
    /// lease): loading it claims it for this holder, and a save refused by
    /// fencing fails the poll with [`FirehoseError::State`].
    ///
    /// # Errors
    /// As [`open_with_backup`](Self::open_with_backup); a claim refused by
    /// the state.
    pub async fn open_with_checkpoints(
        store: S,
        destination: D,
        backup: Option<DirectoryDestination>,
        config: DeliveryConfig,
        checkpoints: Arc<dyn CheckpointStore>,
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
        let checkpoint_path = checkpoints.location();
        let checkpoint = checkpoints.load(&config.name, &config.source_stream).await?;
        let errors = ErrorOutput { prefix: error_prefix, backup };
        let mut me = Self {
            store,
            output: Output { destination, config, prefix, partitioner, errors },
            checkpoints,
            checkpoint_path,
            checkpoint,
            clock,
            consumers: BTreeMap::new(),
            recovering: true,
            retries: Retries::default(),
            unsaved: false,
        };
        let mut report = PollReport::default();
        if let Err(e) = me.redeliver_pending(&mut report).await {
            if me.retries.is_empty() {
                return Err(e);
            }
            // The destination failed: open anyway; polls retry with backoff.
            tracing::warn!(delivery_stream = %me.output.config.name, error = %e, "delivering an interrupted batch failed; retrying");
        }
        metrics::paused(&me.output.config.name, !me.retries.is_empty());
        Ok((me, report))
    }

    /// Why delivery is failing, while it is: the first failing batch's
    /// cause (a full disk: paused), attempts and last error.
    pub fn failure(&self) -> Option<DeliveryFailure> {
        self.retries.failure()
    }

    /// The configuration.
    pub fn config(&self) -> &DeliveryConfig {
        &self.output.config
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
        metrics::paused(&self.output.config.name, !self.retries.is_empty());
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
        let failed = crate::log_limit::LogLimit::new();
        loop {
            if let Err(e) = self.poll().await {
                let name = &self.output.config.name;
                if let Some(count) = failed.hit(e.cause(), 1, std::time::Instant::now()) {
                    tracing::warn!(delivery_stream = %name, polls = count, error = %e, "delivery poll failed");
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(poll_interval) => {}
            }
        }
    }

    async fn save_checkpoint(&mut self) -> Result<(), FirehoseError> {
        let saved = self.checkpoints.save(self.checkpoint.clone()).await;
        self.unsaved = saved.is_err();
        saved
    }

    async fn stream_id(&mut self) -> Result<(u64, Vec<ShardDescription>), FirehoseError> {
        let desc = self.store.describe_stream(&self.output.config.source_stream).await?;
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
        for (id, _) in &pending {
            // Paused by a full disk: go again as soon as the object fits.
            if self.retries.waiting(id, now)
                && let Some(bytes) = self.retries.disk_full(id)
                && self.output.destination.has_room(bytes).await
            {
                self.retries.due(id, now);
            }
        }
        if pending.iter().any(|(id, _)| self.retries.waiting(id, now)) {
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
                let from = ShardPosition { stream_id, shard_index: index, offset: p.first_offset };
                let limits =
                    ReadLimits { max_records: READ_MAX_RECORDS, max_bytes: READ_MAX_BYTES };
                let stream = &self.output.config.source_stream;
                let records = read_range(&self.store, stream, from, p.last_offset, limits)
                    .await?
                    .ok_or_else(gone)?;
                if !self.retries.contains(&shard_id) {
                    tracing::info!(delivery_stream = %self.output.config.name, shard = %shard_id, key = %p.key, "delivering an interrupted batch again");
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
            if !waits_for_parent(shard, &present, |p| self.is_done(p)) {
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
                            &self.output.config.source_stream,
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
            self.consumers.insert(index, Consumer::new(shard.shard_id.clone(), next_read));
        }
        let size = self.output.config.buffering.size_bytes();
        let format = self.output.config.format.clone();
        let now = self.clock.now_ms();
        for _ in 0..MAX_READS_PER_POLL {
            let Some(c) = self.consumers.get(&index) else { return Ok(()) };
            let from = ShardPosition { stream_id, shard_index: index, offset: c.next_read };
            let limits = ReadLimits { max_records: READ_MAX_RECORDS, max_bytes: READ_MAX_BYTES };
            let batch = self.store.read(&self.output.config.source_stream, from, limits).await?;
            let empty = batch.records.is_empty();
            for r in batch.records {
                let len = record_len(&r, &format);
                let full = self.consumers.get(&index).is_some_and(|c| c.would_overflow(len, size));
                if full {
                    self.flush(index, report).await?;
                }
                let Some(c) = self.consumers.get_mut(&index) else { return Ok(()) };
                let reached = c.push(r, len, size, now);
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
        let interval = self.output.config.buffering.interval_ms();
        let due = self.consumers.get(&index).is_some_and(|c| c.due(now, interval));
        if due {
            self.flush(index, report).await?;
        }
        Ok(())
    }

    /// Delivers the shard's buffer, if any: pending in the checkpoint, object,
    /// checkpoint moved.
    async fn flush(&mut self, index: u64, report: &mut PollReport) -> Result<(), FirehoseError> {
        let Some(c) = self.consumers.get_mut(&index) else { return Ok(()) };
        let records = c.take();
        let shard_id = c.shard_id.clone();
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(()) };
        let (first, last) = (first.sequence, last.sequence);
        let oldest = records.iter().map(|r| r.arrival_ms).min().unwrap_or_default();
        let key = object_key(
            &self.output.prefix.render(oldest),
            &self.output.config.name,
            &shard_id,
            first,
            last,
            self.output.config.extension(),
        );
        let entry =
            self.checkpoint.shards.get_mut(&shard_id).ok_or_else(|| FirehoseError::Checkpoint {
                path: self.checkpoint_path.clone(),
                reason: format!("no entry for {shard_id}"),
            })?;
        if first.offset < entry.next_offset {
            return Err(FirehoseError::Checkpoint {
                path: self.checkpoint_path.clone(),
                reason: format!(
                    "{shard_id}: batch starts at offset {}, before the checkpoint at {}",
                    first.offset, entry.next_offset
                ),
            });
        }
        // Offsets increase strictly but need not be dense (the JetStream
        // store's are `js_seq << 16 | index`): the buffer was read on from the
        // checkpoint, so no record lies between `next_offset` and the batch's
        // first record, and the checkpoint may move up to it.
        entry.next_offset = first.offset;
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
        let split = self.output.split(records);
        loop {
            let pending =
                self.checkpoint.shards.get(shard_id).and_then(|s| s.pending.clone()).ok_or_else(
                    || FirehoseError::Checkpoint {
                        path: self.checkpoint_path.clone(),
                        reason: format!("{shard_id}: no pending batch to deliver"),
                    },
                )?;
            if self.unsaved {
                // The batch must be pending in the saved checkpoint before
                // its object is written.
                self.save_checkpoint().await?;
            }
            let e = match self.output.attempt(self.clock.as_ref(), shard_id, &split, &pending).await
            {
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
                    let name = &self.output.config.name;
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
            let (state, starts) = self.retries.fail(shard_id, &e, now, pending.first_failure_ms);
            if starts {
                // The retry duration starts now: saved, so that a restart
                // does not start it again.
                if let Some(p) =
                    self.checkpoint.shards.get_mut(shard_id).and_then(|s| s.pending.as_mut())
                {
                    p.first_failure_ms = Some(now);
                }
                self.save_checkpoint().await?;
            }
            let (count, bytes) = split.totals(&self.output.config.format);
            let name = &self.output.config.name;
            metrics::retried(name, count, bytes);
            metrics::failure(name, if e.is_disk_full() { DISK_FULL } else { DESTINATION });
            // A full disk now pauses, whatever failed before.
            let expired =
                !e.is_disk_full() && state.expired(now, self.output.config.retry_duration_secs);
            if pending.error.is_none() && expired {
                tracing::warn!(delivery_stream = %self.output.config.name, shard = %shard_id, attempts = state.attempts, error = %e, "retry duration over; the batch goes to the error output");
                let failure = PendingFailure {
                    error_code: error_code(&e),
                    error_message: e.to_string(),
                    attempts: state.attempts,
                    ending_ms: now,
                    error_output_type: self.output.destination.error_output_type().to_owned(),
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
            self.retries.schedule(shard_id, now, state.attempts);
            tracing::debug!(delivery_stream = %self.output.config.name, shard = %shard_id, attempts = state.attempts, error = %e, "delivery failed; retrying");
            return Err(e);
        }
    }
}
