//! A shard's log: its segments, what readers see of them, and its life cycle
//! (open with recovery, retention, the hand-over to a writer).
//!
//! Writing is the [`writer`](super::writer)'s job (one thread per open shard,
//! group commit); checking and repairing segments at open is
//! [`recovery`](super::recovery)'s; the files themselves are reached only
//! through `segment_file`'s `Segment` handle.
//!
//! # Reading: never blocks the writer
//!
//! Readers use positioned reads (`pread`) on the segment files and see only
//! what the writer has *published*: after a group is durable the writer
//! publishes it in its segment (visible length, index entries, end offset) and
//! then bumps the shard's `next_offset` with release ordering. Readers take the
//! segment list's read lock only to clone `Arc`s; a segment deleted by
//! retention while a reader holds it stays readable through its open file
//! handle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::backend::{ReadLimits, StoredRecord};
use super::error::StoreError;
use super::file_io::FileIo;
use super::producer::{self, ProducerTable};
use super::recovery::{recover_last, recover_producers, recover_sealed};
use super::segment::{self, RecordOut, SegmentError};
use super::segment_file::{Segment, sync_dir};
use super::sequence::SequenceNumber;

/// The shard id Kinesis clients see: `shardId-` and 12 digits.
pub fn shard_id(index: u64) -> String {
    format!("shardId-{index:012}")
}

/// Parses `shardId-000000000007` into 7.
pub fn parse_shard_id(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("shardId-")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a shard shares between its writer thread, readers and the store.
#[derive(Debug)]
pub(super) struct ShardShared {
    pub stream: String,
    pub index: u64,
    pub id: String,
    pub dir: PathBuf,
    /// The file layer the shard's segments write and sync through.
    pub io: Arc<dyn FileIo>,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Offset after the last published record.
    next_offset: AtomicU64,
    /// The idempotent-producer table recovered at open, taken by the writer.
    producers_at_open: Mutex<ProducerTable>,
}

/// Records read from a shard.
#[derive(Debug)]
pub(super) struct ShardRead {
    pub records: Vec<StoredRecord>,
    pub next_offset: u64,
    pub end_offset: u64,
}

impl ShardShared {
    fn err_segment(&self, e: SegmentError) -> StoreError {
        StoreError::from(e)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn trim_horizon(&self) -> u64 {
        let segs = self.read_segments();
        segs.first().map_or_else(|| self.next_offset(), |s| s.base_offset())
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        // A poisoned lock means a thread panicked while swapping Arcs in a Vec;
        // the Vec itself is still consistent.
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_snapshot(&self) -> Vec<Arc<Segment>> {
        self.read_segments().clone()
    }

    /// The segment being written: the last one.
    pub(super) fn active_segment(&self) -> Option<Arc<Segment>> {
        self.read_segments().last().cloned()
    }

    /// Adds the segment a writer's roll started.
    pub(super) fn push_segment(&self, segment: Arc<Segment>) {
        self.write_segments().push(segment);
    }

    /// Makes records up to `next_offset` visible to readers, after their
    /// segment published them.
    pub(super) fn publish_next_offset(&self, next_offset: u64) {
        self.next_offset.store(next_offset, Ordering::Release);
    }

    /// Hands the producer table recovered at open to the shard's writer.
    pub(super) fn take_producers(&self) -> ProducerTable {
        self.producers_at_open.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default()
    }

    /// Arrival time of the newest record, 0 if none.
    pub fn last_arrival_ms(&self) -> u64 {
        self.read_segments().iter().rev().map(|s| s.last_arrival_ms()).find(|&t| t > 0).unwrap_or(0)
    }

    /// First offset whose batch arrived at or after `ts`.
    pub fn offset_at_time(&self, ts: u64) -> Result<u64, StoreError> {
        for seg in self.segment_snapshot() {
            if seg.is_empty() || seg.last_arrival_ms() < ts {
                continue;
            }
            let entries = seg.visible_entries();
            if let Some(e) = seg.entry_for_time(ts, entries).map_err(|e| self.err_segment(e))? {
                return Ok(seg.base_offset() + u64::from(e.relative_offset));
            }
        }
        Ok(self.next_offset())
    }

    /// Reads records from `offset` (clamped to the trim horizon).
    pub fn read(&self, offset: u64, limits: ReadLimits) -> Result<ShardRead, StoreError> {
        let end = self.next_offset();
        let segs = self.segment_snapshot();
        let horizon = segs.first().map_or(end, |s| s.base_offset());
        let mut offset = offset.max(horizon);
        // One allocation for the whole read (bounded: a read is at most
        // `max_records`, and this caps what is reserved before any is found).
        let mut records = Vec::with_capacity(limits.max_records.min(RESERVE_RECORDS));
        let mut bytes = 0usize;
        let first_seg = segs.partition_point(|s| s.base_offset() <= offset).saturating_sub(1);
        'segments: for seg in segs.iter().skip(first_seg) {
            let seg_end = seg.end_offset().min(end);
            if offset >= seg_end {
                continue;
            }
            let entries = seg.visible_entries();
            let visible_len = seg.visible_len();
            let e = seg.entry_for_offset(offset, entries).map_err(|e| self.err_segment(e))?;
            let first = seg.entry(e).map_err(|e| self.err_segment(e))?;
            let mut pos = u64::from(first.position);
            let mut batch_offset = seg.base_offset() + u64::from(first.relative_offset);
            while offset < seg_end && pos < visible_len {
                if records.len() >= limits.max_records
                    || (bytes >= limits.max_bytes && !records.is_empty())
                {
                    break 'segments;
                }
                let bad =
                    match seg.read_batch(pos, visible_len).map_err(|e| self.err_segment(e))? {
                        Ok(batch) => {
                            let room = limits.max_records - records.len();
                            let mark = records.len();
                            let index = self.index;
                            let decoded =
                                segment::decode_batch(batch, offset, room).map(|(h, out)| {
                                    records
                                        .extend(out.into_iter().map(|r| stored_record(index, r)));
                                    h
                                });
                            match decoded {
                                Ok(h) if h.base_offset == batch_offset => {
                                    // The byte limit: stop before the record that
                                    // would start past it (one record always fits).
                                    let mut keep = records.len();
                                    for (j, r) in records.iter().enumerate().skip(mark) {
                                        if bytes >= limits.max_bytes && j > 0 {
                                            keep = j;
                                            break;
                                        }
                                        bytes += r.data.len() + r.partition_key.len();
                                    }
                                    records.truncate(keep);
                                    if let Some(last) = records.last()
                                        && records.len() > mark
                                    {
                                        offset = last.sequence.offset + 1;
                                    }
                                    batch_offset = h.base_offset + u64::from(h.record_count);
                                    if offset < batch_offset {
                                        break 'segments; // a limit was reached inside the batch
                                    }
                                    pos += u64::from(h.batch_len);
                                    continue;
                                }
                                Ok(_) => {
                                    records.truncate(mark);
                                    Err("batch base offset out of sequence")
                                }
                                Err(reason) => Err(reason),
                            }
                        }
                        Err(reason) => Err(reason),
                    }
                    .or_else(|reason| {
                        self.bad_batch(seg, entries, pos, batch_offset, seg_end, reason, &records)
                    })?;
                if matches!(bad, BadBatch::Stop) {
                    break 'segments;
                }
                // A bad region that holds no record: continue at the next batch.
                match seg.entry_after_position(pos, entries).map_err(|e| self.err_segment(e))? {
                    Some(next) => pos = u64::from(next.position),
                    None => continue 'segments,
                }
            }
        }
        Ok(ShardRead { records, next_offset: offset, end_offset: end })
    }

    /// At a bad batch: if it holds records, stop the read there (returning what
    /// was read so far, or the corruption error when nothing was); if it holds
    /// none, let the caller skip it.
    #[allow(clippy::too_many_arguments)]
    fn bad_batch(
        &self,
        seg: &Segment,
        entries: u64,
        pos: u64,
        batch_offset: u64,
        seg_end: u64,
        reason: &'static str,
        records: &[StoredRecord],
    ) -> Result<BadBatch, StoreError> {
        let next_offset =
            match seg.entry_after_position(pos, entries).map_err(|e| self.err_segment(e))? {
                Some(next) => seg.base_offset() + u64::from(next.relative_offset),
                None => seg_end,
            };
        if next_offset == batch_offset {
            return Ok(BadBatch::Skip);
        }
        if !records.is_empty() {
            // Hand out what came before; the next read starts at the bad batch
            // and reports it.
            return Ok(BadBatch::Stop);
        }
        Err(StoreError::Corrupt {
            stream: self.stream.clone(),
            shard: self.id.clone(),
            path: seg.log_path().to_path_buf(),
            position: pos,
            first_offset: batch_offset,
            next_offset,
            reason,
        })
    }
}

/// What a read does at a bad batch it may pass.
enum BadBatch {
    /// The bad bytes hold no record: go on at the next batch.
    Skip,
    /// Stop here and return what was read.
    Stop,
}

impl ShardShared {
    /// Opens (creating if needed) the shard directory and recovers its
    /// segments. `closed_end` is the end offset recorded when the shard was
    /// closed, used when all its segments have expired.
    ///
    /// A shard created by a reshard is `seed`ed with its parents' producer
    /// tables, so a batch its parents already hold is not appended again here.
    pub fn open(
        stream: &str,
        dir: PathBuf,
        index: u64,
        closed_end: Option<u64>,
        seed: Option<&ProducerTable>,
        io: Arc<dyn FileIo>,
    ) -> Result<Self, SegmentError> {
        std::fs::create_dir_all(&dir).map_err(|e| SegmentError::io("create directory", &dir, e))?;
        if let Some(seed) = seed
            && segment::list_segments(&dir)?.is_empty()
        {
            producer::write_snapshot(&dir, 0, seed)?;
        }
        let (segments, next_offset) = load_segments(&dir, closed_end, &io)?;
        let producers = match closed_end {
            Some(_) => ProducerTable::new(),
            None => recover_producers(&dir, &segments)?,
        };
        Ok(Self {
            stream: stream.to_owned(),
            index,
            id: shard_id(index),
            dir,
            io,
            segments: RwLock::new(segments),
            next_offset: AtomicU64::new(next_offset),
            producers_at_open: Mutex::new(producers),
        })
    }

    /// Reopens an open shard from its files after its writer failed: drops
    /// every segment handle, runs recovery again (as at start-up) and
    /// publishes what it found. Returns the recovered producer table for the
    /// writer. Readers holding old handles finish on them.
    pub(super) fn reopen(&self) -> Result<ProducerTable, SegmentError> {
        let (segments, next_offset) = load_segments(&self.dir, None, &self.io)?;
        let producers = recover_producers(&self.dir, &segments)?;
        let published = self.next_offset();
        if next_offset < published {
            // Only possible when acknowledged records were not yet synced
            // (`interval`/`never` fsync) or the disk lost data.
            tracing::error!(stream = %self.stream, shard = %self.id, recovered = next_offset,
                published, "reopened shard ends before records readers saw: they were lost");
        }
        *self.write_segments() = segments;
        self.publish_next_offset(next_offset);
        Ok(producers)
    }

    /// Deletes segments whose newest record arrived before `cutoff_ms`, oldest
    /// first. With `keep_last` (an open shard) the segment being written is
    /// kept. Returns how many were deleted and whether the kept active segment
    /// is itself fully expired (the caller then asks the writer to seal it).
    pub fn delete_expired(
        &self,
        cutoff_ms: u64,
        keep_last: bool,
    ) -> Result<(usize, bool), SegmentError> {
        let mut deleted = 0;
        loop {
            let victim = {
                let mut segs = self.write_segments();
                let deletable = if keep_last { segs.len().saturating_sub(1) } else { segs.len() };
                match segs.first() {
                    Some(first)
                        if deletable > 0
                            && (first.is_empty() || first.last_arrival_ms() < cutoff_ms) =>
                    {
                        Some(segs.remove(0))
                    }
                    _ => None,
                }
            };
            let Some(seg) = victim else { break };
            seg.delete_files()?;
            tracing::info!(stream = %self.stream, shard = %self.id, segment = seg.base_offset(), "retention deleted segment");
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        let segs = self.read_segments();
        let active_expired = keep_last
            && segs.last().is_some_and(|s| !s.is_empty() && s.last_arrival_ms() < cutoff_ms);
        Ok((deleted, active_expired))
    }

    /// Puts back a producer table taken by a writer that was closed for a
    /// reshard that then failed, before a new writer starts.
    pub fn restore_producers(&self, table: ProducerTable) {
        if let Ok(mut p) = self.producers_at_open.lock() {
            *p = table;
        }
    }

    /// Whether no record is left (all expired, or none was written).
    pub fn is_drained(&self) -> bool {
        self.read_segments().iter().all(|s| s.is_empty())
    }
}

/// Opens and recovers a shard directory's segments (sealed ones trusted, the
/// last one checked); an open shard without segments gets an empty one.
/// Returns them with the shard's next offset.
fn load_segments(
    dir: &Path,
    closed_end: Option<u64>,
    io: &Arc<dyn FileIo>,
) -> Result<(Vec<Arc<Segment>>, u64), SegmentError> {
    let bases = segment::list_segments(dir)?;
    let mut segments = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let seg = match bases.get(i + 1) {
            Some(&next) => recover_sealed(dir, base, next, io.clone())?,
            None => recover_last(dir, base, io.clone())?,
        };
        segments.push(Arc::new(seg));
    }
    let next_offset = match segments.last() {
        Some(s) => s.end_offset(),
        None => closed_end.unwrap_or(0),
    };
    if segments.is_empty() && closed_end.is_none() {
        segments.push(Arc::new(Segment::open(dir, 0, true, io.clone())?));
        sync_dir(dir)?;
    }
    Ok((segments, next_offset))
}

/// Records reserved up front for one read.
const RESERVE_RECORDS: usize = 16_384;

/// A decoded record as readers get it, with its sequence number.
fn stored_record(shard_index: u64, r: RecordOut) -> StoredRecord {
    StoredRecord {
        sequence: SequenceNumber::new(shard_index, r.offset),
        arrival_ms: r.arrival_ms,
        partition_key: r.partition_key,
        data: r.data,
        explicit_hash_key: r.explicit_hash_key,
        producer_timestamp_ms: r.producer_timestamp_ms,
    }
}

/// The sequence number of `offset` in shard `index`.
pub(super) fn sequence_of(index: u64, offset: u64) -> SequenceNumber {
    SequenceNumber::new(index, offset)
}
