//! A shard's writer: one thread per open shard, group commit.
//!
//! Appenders hand their records to the shard's writer through a channel
//! bounded by [`WRITER_QUEUE_REQUESTS`] permits (an appender waits for a permit:
//! backpressure, not loss). The writer takes the first waiting request plus
//! every request already queued behind it, up to [`MAX_GROUP_BYTES`], writes
//! them as **one** batch (one CRC, one index entry), then makes it durable under
//! the [`FsyncPolicy`] and only then answers every appender in the group. While
//! one `fdatasync` runs, the next group queues up, so under load many records
//! share one sync. Requests are written in the order they were queued, so the
//! records of one appender keep their order.
//!
//! # When a write or a sync fails
//!
//! - **Out of space** (`ENOSPC`, a quota, a file size limit, while writing a
//!   batch, its index entry or a roll's producer snapshot): the shard cuts its
//!   log and index back to the last whole batch (the lengths it had before
//!   this group), answers the group [`StoreError::OutOfSpace`], and stays
//!   open: the next group is written at the same place once there is room.
//!   Nothing acknowledged is touched, and a cut that a crash undoes is a torn
//!   tail that recovery cuts again.
//! - **A failed `fsync`** (or any other write error) is fail-stop, the lesson
//!   PostgreSQL learned: after a failed `fsync` the kernel may have dropped
//!   the dirty pages and marked them clean, so trying the `fsync` again and
//!   believing its success is not safe. The group is answered
//!   [`StoreError::ShardFailed`], so is every later append, and the shard is
//!   reported failed (`FailedShards`: `/health` degraded, the
//!   `weir_store_failed_shards` gauge). After a back-off
//!   (`StoreConfig::reopen_backoff`, doubling up to [`MAX_REOPEN_BACKOFF`]),
//!   the writer reopens the shard from its files: every segment handle is
//!   dropped, recovery runs again exactly as at start-up (what the files hold
//!   is the truth, not what the page cache or this thread remembered), and
//!   the shard takes writes again. Records of the failed group may or may not
//!   be found by that recovery: they were never acknowledged, so a producer
//!   that retries them may see them twice (once with an idempotent producer
//!   tag, which recovery also restores).

use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use weir_wire::backoff::Backoff;

use super::backend::NewRecord;
use super::clock::Clock;
use super::config::{FsyncPolicy, StoreConfig};
use super::error::StoreError;
use super::health::FailedShards;
use super::producer::{self, ProducerBatch, ProducerTable};
use super::segment::{self, IndexEntry, ProducerTag};
use super::segment_file::{Segment, sync_dir};
use super::shard::ShardShared;
use crate::log_limit::LogLimit;

/// Appends that may wait in one shard's queue; more appenders wait for a permit
/// (backpressure). Large enough that a few hundred concurrent producers per
/// shard never wait on the queue itself, only on the disk.
pub const WRITER_QUEUE_REQUESTS: usize = 4096;
/// Most record bytes written as one group commit; half the largest batch a
/// reader accepts, so one request of up to [`MAX_APPEND_BYTES`] always fits.
pub const MAX_GROUP_BYTES: usize = segment::MAX_BATCH_BYTES / 2;
/// Most record bytes one append request may carry (5 MiB of PutRecords or a
/// wire batch, plus per-record framing).
pub const MAX_APPEND_BYTES: usize = 6 * 1024 * 1024;
/// Longest wait between two attempts to reopen a failed shard.
pub const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(60);

/// Refusals for a full disk: one log line per shard per interval.
static OUT_OF_SPACE: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);

/// What an appender gets back.
#[derive(Debug)]
pub(super) enum AppendReply {
    /// Written, and durable under the policy: first offset, arrival time.
    Done { first_offset: u64, arrival_ms: u64 },
    /// The shard closed before these records were written: route them again.
    Closed(Vec<NewRecord>),
    /// The shard already holds this producer batch: nothing was appended.
    Duplicate,
    /// The shard failed.
    Failed(StoreError),
}

/// Records waiting for the writer, with the way to answer their appender.
///
/// Whatever way it leaves the queue unanswered (the writer closed, the queue
/// was dropped with the thread), dropping it hands the records back as
/// [`AppendReply::Closed`] so the appender routes them again: an append is
/// never lost between a shard's close and its children's start.
struct PendingAppend {
    records: Vec<NewRecord>,
    tag: Option<ProducerBatch>,
    reply: Option<oneshot::Sender<AppendReply>>,
}

impl PendingAppend {
    fn answer(mut self, answer: AppendReply) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

impl Drop for PendingAppend {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(AppendReply::Closed(std::mem::take(&mut self.records)));
        }
    }
}

enum Request {
    Append {
        append: PendingAppend,
        bytes: usize,
        _permit: OwnedSemaphorePermit,
    },
    /// Seal the active segment if it holds records (retention).
    Seal {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Write what is queued before this, sync, and stop. Replies the end
    /// offset and the producer table.
    Close {
        reply: oneshot::Sender<Result<(u64, ProducerTable), StoreError>>,
    },
}

/// The handle appenders use to reach a shard's writer thread. Dropping it
/// ends the thread (after a final sync) once the queue is empty.
#[derive(Debug)]
pub(super) struct Writer {
    tx: mpsc::Sender<Request>,
    permits: Arc<Semaphore>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread of an open shard.
    pub fn start(
        shard: Arc<ShardShared>,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        failed_shards: Arc<FailedShards>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let name = format!("weir-writer-{}", shard.index);
        let state = WriterState::new(shard, config, clock, failed_shards)?;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::io("spawn writer thread", "", e))?;
        Ok(Self {
            tx,
            permits: Arc::new(Semaphore::new(WRITER_QUEUE_REQUESTS)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues records for the writer; the receiver answers once they are
    /// durable. Waits for a queue permit while the queue is full.
    ///
    /// With a `tag`, the records are appended only if this shard does not hold
    /// that producer batch yet; otherwise the answer is
    /// [`AppendReply::Duplicate`].
    pub async fn submit(
        &self,
        records: Vec<NewRecord>,
        tag: Option<ProducerBatch>,
    ) -> oneshot::Receiver<AppendReply> {
        let (reply, rx) = oneshot::channel();
        let bytes = records.iter().map(NewRecord::encoded_len).sum();
        let append = PendingAppend { records, tag, reply: Some(reply) };
        // Without a permit (the writer is closing) or a queue (it has
        // stopped), dropping `append` hands the records back.
        if let Ok(permit) = self.permits.clone().acquire_owned().await {
            let _ = self.tx.send(Request::Append { append, bytes, _permit: permit });
        }
        rx
    }

    /// Asks the writer to seal its active segment if it holds records.
    pub async fn seal(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Seal { reply }).map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Writes everything queued before it, syncs, stops the thread and returns
    /// the shard's end offset and producer table. Appends queued later come
    /// back as [`AppendReply::Closed`].
    pub async fn close(&self) -> Result<(u64, ProducerTable), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.permits.close();
        self.tx.send(Request::Close { reply }).map_err(|_| StoreError::ShuttingDown)?;
        let end = rx.await.map_err(|_| StoreError::ShuttingDown)?;
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        end
    }
}

struct WriterState {
    shard: Arc<ShardShared>,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    /// Where writing goes on in the active segment.
    pos: ActivePosition,
    /// Bytes written since the last sync.
    dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
    /// Set while the shard is failed (fail-stop): what every append gets.
    failed: Option<StoreError>,
    /// When to try reopening the failed shard next.
    reopen_at: Option<Instant>,
    /// Back-off between reopen attempts.
    reopen_backoff: Backoff,
    /// Where the failure is reported.
    failed_shards: Arc<FailedShards>,
    /// Highest batch sequence number appended per idempotent producer.
    producers: ProducerTable,
}

/// Where a writer is in its shard's active segment.
struct ActivePosition {
    active: Arc<Segment>,
    /// Log bytes and index entries written to it.
    len: u64,
    entries: u64,
    next_offset: u64,
    last_arrival_ms: u64,
    first_arrival_ms: Option<u64>,
}

impl ActivePosition {
    fn of(shard: &ShardShared) -> Result<Self, StoreError> {
        let active = shard.active_segment().ok_or_else(|| {
            StoreError::InvalidArgument(format!("shard {} has no segment to write", shard.id))
        })?;
        let entries = active.visible_entries();
        let first_arrival_ms = if entries > 0 { Some(active.entry(0)?.arrival_ms) } else { None };
        Ok(Self {
            len: active.visible_len(),
            entries,
            next_offset: active.end_offset(),
            last_arrival_ms: active.last_arrival_ms(),
            first_arrival_ms,
            active,
        })
    }
}

impl Drop for WriterState {
    fn drop(&mut self) {
        if self.failed.is_some() {
            self.failed_shards.cleared(&self.shard.stream, &self.shard.id);
        }
    }
}

impl WriterState {
    fn new(
        shard: Arc<ShardShared>,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        failed_shards: Arc<FailedShards>,
    ) -> Result<Self, StoreError> {
        let pos = ActivePosition::of(&shard)?;
        let producers = shard.take_producers();
        let reopen_backoff = Backoff::new(config.reopen_backoff, MAX_REOPEN_BACKOFF);
        Ok(Self {
            producers,
            pos,
            shard,
            config,
            clock,
            dirty: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
            failed: None,
            reopen_at: None,
            reopen_backoff,
            failed_shards,
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take().or_else(|| self.next_request(&rx)) {
                Some(r) => r,
                None => {
                    // Every sender is gone: the store was dropped.
                    if let Err(e) = self.sync_if_dirty() {
                        tracing::error!(shard = %self.shard.id, error = %e, "final sync failed");
                    }
                    return;
                }
            };
            let mut group = Vec::new();
            let mut group_bytes = 0;
            let mut control = None;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append { bytes, .. } => {
                        if !group.is_empty() && group_bytes + bytes > MAX_GROUP_BYTES {
                            carry = Some(req);
                            break;
                        }
                        group_bytes += bytes;
                        group.push(req);
                        next = rx.try_recv().ok();
                    }
                    other => control = Some(other),
                }
            }
            if !group.is_empty() {
                self.commit(group);
            }
            match control {
                Some(Request::Seal { reply }) => {
                    let _ = reply.send(self.seal_if_nonempty());
                }
                Some(Request::Close { reply }) => {
                    let result = match &self.failed {
                        Some(e) => Err(e.clone()),
                        None => self
                            .sync_if_dirty()
                            .map(|()| (self.pos.next_offset, std::mem::take(&mut self.producers))),
                    };
                    let _ = reply.send(result);
                    // Anything queued behind the close (now, or until the
                    // queue is dropped with this thread) is routed anew when
                    // its `PendingAppend` drops.
                    return;
                }
                Some(Request::Append { .. }) | None => {}
            }
        }
    }

    /// Waits for a request; wakes up to sync when due under `interval:` fsync,
    /// and to reopen the shard when it is failed and its back-off is over.
    fn next_request(&mut self, rx: &mpsc::Receiver<Request>) -> Option<Request> {
        loop {
            let wake = match (self.reopen_at, self.config.fsync) {
                (Some(at), _) => Some(at.saturating_duration_since(Instant::now())),
                (None, FsyncPolicy::Interval(every)) if self.dirty => {
                    Some(every.saturating_sub(self.last_sync.elapsed()))
                }
                _ => None,
            };
            let Some(wait) = wake else { return rx.recv().ok() };
            match rx.recv_timeout(wait) {
                Ok(r) => return Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.reopen_due() {
                        self.reopen();
                    } else if let Err(e) = self.sync_if_dirty() {
                        self.fail(&e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Fail-stop: the shard refuses writes until [`reopen`](Self::reopen)
    /// succeeds, after a back-off.
    fn fail(&mut self, e: &StoreError) {
        let retry_in = self.reopen_backoff.next_ceiling();
        tracing::error!(stream = %self.shard.stream, shard = %self.shard.id, error = %e,
            retry_in_ms = retry_in.as_millis() as u64,
            "shard write failed; the shard refuses writes until it is reopened from its files");
        self.dirty = false;
        let reason = e.to_string();
        self.failed_shards.failed(&self.shard.stream, &self.shard.id, &reason);
        self.failed = Some(StoreError::ShardFailed {
            stream: self.shard.stream.clone(),
            shard: self.shard.id.clone(),
            reason,
        });
        self.reopen_at = Some(Instant::now() + retry_in);
    }

    fn reopen_due(&self) -> bool {
        self.reopen_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Reopens a failed shard from its files (recovery, as at start-up) and
    /// resumes writing where recovery ends; on failure, tries again after a
    /// longer back-off.
    fn reopen(&mut self) {
        self.reopen_at = None;
        let reopened = self
            .shard
            .reopen()
            .map_err(StoreError::from)
            .and_then(|producers| Ok((producers, ActivePosition::of(&self.shard)?)));
        match reopened {
            Ok((producers, at)) => {
                let attempts = self.reopen_backoff.failures();
                self.reopen_backoff.reset();
                self.producers = producers;
                // Arrival times stay monotonic even if recovery ends earlier.
                let last_arrival_ms = self.pos.last_arrival_ms.max(at.last_arrival_ms);
                self.pos = ActivePosition { last_arrival_ms, ..at };
                self.dirty = false;
                self.failed = None;
                self.failed_shards.cleared(&self.shard.stream, &self.shard.id);
                metrics::counter!("weir_store_shard_reopens_total").increment(1);
                tracing::info!(stream = %self.shard.stream, shard = %self.shard.id,
                    next_offset = self.pos.next_offset, attempts,
                    "failed shard reopened from its files; it takes writes again");
            }
            Err(e) => {
                let retry_in = self.reopen_backoff.next_ceiling();
                tracing::error!(stream = %self.shard.stream, shard = %self.shard.id, error = %e,
                    retry_in_ms = retry_in.as_millis() as u64, "reopening the failed shard failed");
                self.reopen_at = Some(Instant::now() + retry_in);
            }
        }
    }

    /// A write that found no room: logged once per shard per interval.
    fn log_out_of_space(&self, e: &StoreError) {
        metrics::counter!("weir_store_out_of_space_total").increment(1);
        let key = format!("{}/{}", self.shard.stream, self.shard.id);
        if let Some(count) = OUT_OF_SPACE.hit(&key, 1, Instant::now()) {
            tracing::warn!(stream = %self.shard.stream, shard = %self.shard.id, error = %e,
                refused_groups = count, "disk full: appends refused, the shard resumes once there is room");
        }
    }

    /// Turns an out-of-space storage error into [`StoreError::OutOfSpace`].
    fn out_of_space(&self, e: StoreError) -> StoreError {
        match &e {
            StoreError::Segment(s) if s.is_out_of_space() => StoreError::OutOfSpace {
                stream: self.shard.stream.clone(),
                shard: self.shard.id.clone(),
                reason: s.to_string(),
            },
            _ => e,
        }
    }

    fn commit(&mut self, group: Vec<Request>) {
        // Producer batches this shard already holds (or that an earlier
        // request of this group brings) are answered, not written.
        let mut accepted = ProducerTable::new();
        let duplicate: Vec<bool> = group
            .iter()
            .map(|r| match r {
                Request::Append { append: PendingAppend { tag: Some(t), .. }, .. } => {
                    let dup =
                        !producer::is_new(&self.producers, t) || !producer::is_new(&accepted, t);
                    if !dup {
                        producer::record(&mut accepted, &t.producer_id, t.batch_seq);
                    }
                    dup
                }
                _ => false,
            })
            .collect();
        if self.reopen_due() {
            self.reopen();
        }
        let result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => self.write_group(&group, &duplicate).map_err(|e| self.out_of_space(e)),
        };
        match &result {
            Ok(_) => producer::merge(&mut self.producers, &accepted),
            Err(e @ StoreError::OutOfSpace { .. }) => self.log_out_of_space(e),
            Err(e) if self.failed.is_none() => self.fail(e),
            Err(_) => {}
        }
        let mut offset = result.as_ref().map_or(0, |(first, _)| *first);
        for (req, dup) in group.into_iter().zip(duplicate) {
            if let Request::Append { append, .. } = req {
                if dup {
                    append.answer(AppendReply::Duplicate);
                    continue;
                }
                let answer = match (&result, &self.failed) {
                    (Ok((_, arrival_ms)), _) => {
                        let first_offset = offset;
                        offset += append.records.len() as u64;
                        AppendReply::Done { first_offset, arrival_ms: *arrival_ms }
                    }
                    (Err(_), Some(failed)) => AppendReply::Failed(failed.clone()),
                    (Err(e), None) => AppendReply::Failed(e.clone()),
                };
                append.answer(answer);
            }
        }
    }

    /// Writes a group (but its duplicates) as one batch and makes it durable
    /// under the policy. Returns the first offset and the arrival time.
    fn write_group(
        &mut self,
        group: &[Request],
        duplicate: &[bool],
    ) -> Result<(u64, u64), StoreError> {
        let mut records: Vec<&NewRecord> = Vec::new();
        let mut tags: Vec<(usize, ProducerTag<'_>)> = Vec::new();
        for (r, dup) in group.iter().zip(duplicate) {
            if let (Request::Append { append, .. }, false) = (r, dup) {
                if let Some(tag) = &append.tag
                    && !append.records.is_empty()
                {
                    tags.push((
                        records.len(),
                        ProducerTag { producer_id: &tag.producer_id, batch_seq: tag.batch_seq },
                    ));
                }
                records.extend(append.records.iter());
            }
        }
        if records.is_empty() {
            return Ok((self.pos.next_offset, self.pos.last_arrival_ms));
        }
        let arrival_ms = self.clock.now_ms().max(self.pos.last_arrival_ms);
        self.buf.clear();
        segment::encode_tagged_batch(
            &mut self.buf,
            self.pos.next_offset,
            arrival_ms,
            &records,
            &tags,
        );
        let age_limit = self.config.segment_max_age.as_millis() as u64;
        let too_old =
            self.pos.first_arrival_ms.is_some_and(|f| arrival_ms.saturating_sub(f) >= age_limit);
        if self.pos.len > 0
            && (self.pos.len + self.buf.len() as u64 > self.config.segment_max_bytes || too_old)
        {
            self.roll()?;
        }
        let first_offset = self.pos.next_offset;
        let entry = IndexEntry {
            relative_offset: (first_offset - self.pos.active.base_offset()) as u32,
            position: self.pos.len as u32,
            arrival_ms,
        };
        if let Err(e) = self.pos.active.append(self.pos.len, &self.buf, self.pos.entries, entry) {
            if e.is_out_of_space() {
                // Undo what part of the batch and index entry got written, so
                // the next group starts at a batch boundary.
                self.pos.active.cut_back(self.pos.len, self.pos.entries)?;
            }
            return Err(e.into());
        }
        self.pos.len += self.buf.len() as u64;
        self.pos.entries += 1;
        self.pos.next_offset += records.len() as u64;
        self.pos.last_arrival_ms = arrival_ms;
        self.pos.first_arrival_ms.get_or_insert(arrival_ms);
        self.dirty = true;
        match self.config.fsync {
            FsyncPolicy::Always => self.sync_if_dirty()?,
            FsyncPolicy::Interval(every) if self.last_sync.elapsed() >= every => {
                self.sync_if_dirty()?
            }
            _ => {}
        }
        self.publish();
        Ok((first_offset, arrival_ms))
    }

    /// Makes the written bytes visible to readers.
    fn publish(&self) {
        self.pos.active.publish(
            self.pos.len,
            self.pos.entries,
            self.pos.next_offset,
            self.pos.last_arrival_ms,
        );
        self.shard.publish_next_offset(self.pos.next_offset);
    }

    fn sync_if_dirty(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.pos.active.sync_log()?;
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn seal_if_nonempty(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.pos.len > 0 {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment (log and index synced, whatever the policy)
    /// and starts a new one at the next offset.
    fn roll(&mut self) -> Result<(), StoreError> {
        let old = self.pos.active.clone();
        old.sync_log()?;
        old.sync_index()?;
        self.dirty = false;
        // The snapshot first: a segment never exists without the table that
        // stood before its first record.
        producer::write_snapshot(&self.shard.dir, self.pos.next_offset, &self.producers)?;
        let seg = Arc::new(Segment::open(
            &self.shard.dir,
            self.pos.next_offset,
            true,
            self.shard.io.clone(),
        )?);
        sync_dir(&self.shard.dir)?;
        self.shard.push_segment(seg.clone());
        tracing::debug!(stream = %self.shard.stream, shard = %self.shard.id, base = self.pos.next_offset, "rolled segment");
        self.pos.active = seg;
        self.pos.len = 0;
        self.pos.entries = 0;
        self.pos.first_arrival_ms = None;
        Ok(())
    }
}
