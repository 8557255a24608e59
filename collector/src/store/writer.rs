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
//! If a write or a sync fails, the shard stops taking writes (every waiting and
//! later appender gets [`StoreError::ShardFailed`]): after a failed `fsync` the
//! state of the page cache is unknown, and only recovery at the next start
//! decides what of the tail is intact.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::backend::NewRecord;
use super::clock::Clock;
use super::config::{FsyncPolicy, StoreConfig};
use super::error::StoreError;
use super::producer::{self, ProducerBatch, ProducerTable};
use super::segment::{self, IndexEntry, ProducerTag};
use super::segment_file::{Segment, sync_dir};
use super::shard::ShardShared;

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
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let name = format!("weir-writer-{}", shard.index);
        let state = WriterState::new(shard, config, clock)?;
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
    active: Arc<Segment>,
    /// Log bytes and index entries written to the active segment.
    len: u64,
    entries: u64,
    next_offset: u64,
    last_arrival_ms: u64,
    first_arrival_ms: Option<u64>,
    /// Bytes written since the last sync.
    dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
    failed: Option<StoreError>,
    /// Highest batch sequence number appended per idempotent producer.
    producers: ProducerTable,
}

impl WriterState {
    fn new(
        shard: Arc<ShardShared>,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let active = shard.active_segment().ok_or_else(|| {
            StoreError::InvalidArgument(format!("shard {} has no segment to write", shard.id))
        })?;
        let entries = active.visible_entries();
        let first_arrival_ms = if entries > 0 { Some(active.entry(0)?.arrival_ms) } else { None };
        let producers = shard.take_producers();
        Ok(Self {
            producers,
            len: active.visible_len(),
            entries,
            next_offset: active.end_offset(),
            last_arrival_ms: active.last_arrival_ms(),
            first_arrival_ms,
            active,
            shard,
            config,
            clock,
            dirty: false,
            last_sync: Instant::now(),
            buf: Vec::new(),
            failed: None,
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
                            .map(|()| (self.next_offset, std::mem::take(&mut self.producers))),
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

    /// Waits for a request; under `interval:` fsync, wakes up to sync when due.
    fn next_request(&mut self, rx: &mpsc::Receiver<Request>) -> Option<Request> {
        loop {
            match self.config.fsync {
                FsyncPolicy::Interval(every) if self.dirty => {
                    let wait = every.saturating_sub(self.last_sync.elapsed());
                    match rx.recv_timeout(wait) {
                        Ok(r) => return Some(r),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.sync_if_dirty() {
                                self.fail(&e);
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    }
                }
                _ => return rx.recv().ok(),
            }
        }
    }

    fn fail(&mut self, e: &StoreError) {
        tracing::error!(stream = %self.shard.stream, shard = %self.shard.id, error = %e,
            "shard write failed; the shard takes no more writes until restart");
        self.dirty = false;
        self.failed = Some(StoreError::ShardFailed {
            stream: self.shard.stream.clone(),
            shard: self.shard.id.clone(),
            reason: e.to_string(),
        });
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
        let result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => self.write_group(&group, &duplicate),
        };
        match &result {
            Ok(_) => producer::merge(&mut self.producers, &accepted),
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
            return Ok((self.next_offset, self.last_arrival_ms));
        }
        let arrival_ms = self.clock.now_ms().max(self.last_arrival_ms);
        self.buf.clear();
        segment::encode_tagged_batch(&mut self.buf, self.next_offset, arrival_ms, &records, &tags);
        let age_limit = self.config.segment_max_age.as_millis() as u64;
        let too_old =
            self.first_arrival_ms.is_some_and(|f| arrival_ms.saturating_sub(f) >= age_limit);
        if self.len > 0
            && (self.len + self.buf.len() as u64 > self.config.segment_max_bytes || too_old)
        {
            self.roll()?;
        }
        let first_offset = self.next_offset;
        let entry = IndexEntry {
            relative_offset: (first_offset - self.active.base_offset()) as u32,
            position: self.len as u32,
            arrival_ms,
        };
        self.active.append(self.len, &self.buf, self.entries, entry)?;
        self.len += self.buf.len() as u64;
        self.entries += 1;
        self.next_offset += records.len() as u64;
        self.last_arrival_ms = arrival_ms;
        self.first_arrival_ms.get_or_insert(arrival_ms);
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
        self.active.publish(self.len, self.entries, self.next_offset, self.last_arrival_ms);
        self.shard.publish_next_offset(self.next_offset);
    }

    fn sync_if_dirty(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.active.sync_log()?;
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn seal_if_nonempty(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.len > 0 {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment (log and index synced, whatever the policy)
    /// and starts a new one at the next offset.
    fn roll(&mut self) -> Result<(), StoreError> {
        let old = self.active.clone();
        old.sync_log()?;
        old.sync_index()?;
        self.dirty = false;
        // The snapshot first: a segment never exists without the table that
        // stood before its first record.
        producer::write_snapshot(&self.shard.dir, self.next_offset, &self.producers)?;
        let seg = Arc::new(Segment::open(&self.shard.dir, self.next_offset, true)?);
        sync_dir(&self.shard.dir)?;
        self.shard.push_segment(seg.clone());
        tracing::debug!(stream = %self.shard.stream, shard = %self.shard.id, base = self.next_offset, "rolled segment");
        self.active = seg;
        self.len = 0;
        self.entries = 0;
        self.first_arrival_ms = None;
        Ok(())
    }
}
