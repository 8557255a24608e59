//! A shard's log: its segments, its writer thread (group commit) and its reads.
//!
//! # Writing: one thread per open shard, group commit
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
//!
//! # Reading: never blocks the writer
//!
//! Readers use positioned reads (`pread`) on the segment files and see only
//! what the writer has *published*: after a group is durable the writer bumps
//! per-segment atomics (visible length, index entries, end offset) and then the
//! shard's `next_offset` with release ordering. Readers take the segment list's
//! read lock only to clone `Arc`s; a segment deleted by retention while a
//! reader holds it stays readable through its open file handle.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::clock::Clock;
use super::config::{FsyncPolicy, StoreConfig};
use super::durable;
use super::error::StoreError;
use super::producer::{self, ProducerBatch, ProducerTable};
use super::segment::{
    self, BATCH_HEADER_BYTES, BatchHeader, INDEX_ENTRY_BYTES, IndexEntry, RecordIn, RecordOut,
    SegmentError,
};
use super::sequence::SequenceNumber;

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

/// One segment as readers and the writer share it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    log_path: PathBuf,
    index_path: PathBuf,
    producers_path: PathBuf,
    log: File,
    index: File,
    /// Bytes of the log readers may read.
    visible_len: AtomicU64,
    /// Index entries readers may read.
    visible_entries: AtomicU64,
    /// Offset after the last visible record.
    end_offset: AtomicU64,
    /// Arrival time of the newest visible record (0 while empty).
    last_arrival_ms: AtomicU64,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.end_offset.load(Ordering::Acquire) == self.base_offset
    }

    pub fn last_arrival_ms(&self) -> u64 {
        self.last_arrival_ms.load(Ordering::Acquire)
    }

    fn entry(&self, i: u64) -> Result<IndexEntry, SegmentError> {
        segment::read_index_entry(&self.index, &self.index_path, i)
    }

    /// Last entry index whose batch starts at or before `offset`.
    fn entry_for_offset(&self, offset: u64, entries: u64) -> Result<u64, SegmentError> {
        let rel = offset - self.base_offset;
        let (mut lo, mut hi) = (0u64, entries);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if u64::from(self.entry(mid)?.relative_offset) <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// First entry whose batch arrived at or after `ts`, if any.
    fn entry_for_time(&self, ts: u64, entries: u64) -> Result<Option<IndexEntry>, SegmentError> {
        let (mut lo, mut hi) = (0u64, entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.arrival_ms < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < entries { Ok(Some(self.entry(lo)?)) } else { Ok(None) }
    }

    /// First entry whose batch starts after byte `position`, if any.
    fn entry_after_position(
        &self,
        position: u64,
        entries: u64,
    ) -> Result<Option<IndexEntry>, SegmentError> {
        let (mut lo, mut hi) = (0u64, entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if u64::from(self.entry(mid)?.position) <= position {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < entries { Ok(Some(self.entry(lo)?)) } else { Ok(None) }
    }

    fn delete_files(&self) -> Result<(), SegmentError> {
        for p in [&self.log_path, &self.index_path, &self.producers_path] {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SegmentError::io("delete", p, e)),
            }
        }
        Ok(())
    }
}

/// What a shard shares between its writer thread, readers and the store.
#[derive(Debug)]
pub(crate) struct ShardShared {
    pub stream: String,
    pub index: u64,
    pub id: String,
    pub dir: PathBuf,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Offset after the last published record.
    next_offset: AtomicU64,
    /// The idempotent-producer table recovered at open, taken by the writer.
    producers_at_open: Mutex<ProducerTable>,
}

/// Limits of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most records returned.
    pub max_records: usize,
    /// Most data bytes returned (at least one record is returned if any is
    /// available, whatever its size).
    pub max_bytes: usize,
}

/// Records read from a shard.
#[derive(Debug)]
pub(crate) struct ShardRead {
    pub records: Vec<RecordOut>,
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
        segs.first().map_or_else(|| self.next_offset(), |s| s.base_offset)
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Segment>>> {
        // A poisoned lock means a thread panicked while swapping Arcs in a Vec;
        // the Vec itself is still consistent.
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Segment>>> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn segment_snapshot(&self) -> Vec<Arc<Segment>> {
        self.read_segments().clone()
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
            let entries = seg.visible_entries.load(Ordering::Acquire);
            if let Some(e) = seg.entry_for_time(ts, entries).map_err(|e| self.err_segment(e))? {
                return Ok(seg.base_offset + u64::from(e.relative_offset));
            }
        }
        Ok(self.next_offset())
    }

    /// Reads records from `offset` (clamped to the trim horizon).
    pub fn read(&self, offset: u64, limits: ReadLimits) -> Result<ShardRead, StoreError> {
        let end = self.next_offset();
        let segs = self.segment_snapshot();
        let horizon = segs.first().map_or(end, |s| s.base_offset);
        let mut offset = offset.max(horizon);
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let first_seg = segs.partition_point(|s| s.base_offset <= offset).saturating_sub(1);
        'segments: for seg in segs.iter().skip(first_seg) {
            let seg_end = seg.end_offset.load(Ordering::Acquire).min(end);
            if offset >= seg_end {
                continue;
            }
            let entries = seg.visible_entries.load(Ordering::Acquire);
            let visible_len = seg.visible_len.load(Ordering::Acquire);
            let e = seg.entry_for_offset(offset, entries).map_err(|e| self.err_segment(e))?;
            let first = seg.entry(e).map_err(|e| self.err_segment(e))?;
            let mut pos = u64::from(first.position);
            let mut batch_offset = seg.base_offset + u64::from(first.relative_offset);
            while offset < seg_end && pos < visible_len {
                if records.len() >= limits.max_records
                    || (bytes >= limits.max_bytes && !records.is_empty())
                {
                    break 'segments;
                }
                let bad =
                    match read_batch(seg, pos, visible_len).map_err(|e| self.err_segment(e))? {
                        Ok(batch) => {
                            let room = limits.max_records - records.len();
                            match segment::decode_batch(batch, offset, room) {
                                Ok((h, out)) if h.base_offset == batch_offset => {
                                    for r in out {
                                        if bytes >= limits.max_bytes && !records.is_empty() {
                                            break 'segments;
                                        }
                                        bytes += r.data.len() + r.partition_key.len();
                                        offset = r.offset + 1;
                                        records.push(r);
                                    }
                                    batch_offset = h.base_offset + u64::from(h.record_count);
                                    if offset < batch_offset {
                                        break 'segments; // limit reached inside the batch
                                    }
                                    pos += u64::from(h.batch_len);
                                    continue;
                                }
                                Ok(_) => Err("batch base offset out of sequence"),
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
        records: &[RecordOut],
    ) -> Result<BadBatch, StoreError> {
        let next_offset =
            match seg.entry_after_position(pos, entries).map_err(|e| self.err_segment(e))? {
                Some(next) => seg.base_offset + u64::from(next.relative_offset),
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
            path: seg.log_path.clone(),
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

/// Reads the whole batch at `pos`, bounded by the visible length. The inner
/// `Err` names why the bytes there are not a batch.
fn read_batch(
    seg: &Segment,
    pos: u64,
    visible_len: u64,
) -> Result<Result<Bytes, &'static str>, SegmentError> {
    let mut h = [0u8; BATCH_HEADER_BYTES];
    if visible_len - pos < BATCH_HEADER_BYTES as u64 {
        return Ok(Err("batch header runs past the end of the log"));
    }
    let io = |e| SegmentError::io("read", &seg.log_path, e);
    seg.log.read_exact_at(&mut h, pos).map_err(io)?;
    let Some(header) = BatchHeader::parse(&h) else { return Ok(Err("bad batch header")) };
    let len = u64::from(header.batch_len);
    if visible_len - pos < len {
        return Ok(Err("batch runs past the end of the log"));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    seg.log.read_exact_at(&mut buf, pos).map_err(io)?;
    Ok(Ok(buf.freeze()))
}

// ---------------------------------------------------------------------------
// Opening and recovery
// ---------------------------------------------------------------------------

fn open_segment(dir: &Path, base: u64, create: bool) -> Result<Segment, SegmentError> {
    let log_path = segment::log_path(dir, base);
    let index_path = segment::index_path(dir, base);
    let log = segment::open_rw(&log_path, create)?;
    let index = segment::open_rw(&index_path, true)?;
    Ok(Segment {
        base_offset: base,
        log_path,
        index_path,
        producers_path: producer::snapshot_path(dir, base),
        log,
        index,
        visible_len: AtomicU64::new(0),
        visible_entries: AtomicU64::new(0),
        end_offset: AtomicU64::new(base),
        last_arrival_ms: AtomicU64::new(0),
    })
}

fn file_len(f: &File, path: &Path) -> Result<u64, SegmentError> {
    Ok(f.metadata().map_err(|e| SegmentError::io("stat", path, e))?.len())
}

fn sync_file(f: &File, path: &Path) -> Result<(), SegmentError> {
    f.sync_data().map_err(|e| SegmentError::io("fsync", path, e))
}

/// fsyncs a directory so that file creations, renames and deletions in it are
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    durable::sync_dir(dir).map_err(|e| SegmentError::io("fsync directory", dir, e))
}

/// Rewrites a segment's index with `entries`, durably.
fn write_index(seg: &Segment, entries: &[IndexEntry]) -> Result<(), SegmentError> {
    let mut bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
    for e in entries {
        bytes.extend_from_slice(&e.to_bytes());
    }
    let io = |op| move |e| SegmentError::io(op, &seg.index_path, e);
    seg.index.set_len(0).map_err(io("truncate"))?;
    seg.index.write_all_at(&bytes, 0).map_err(io("write"))?;
    sync_file(&seg.index, &seg.index_path)
}

/// Reads all entries of an index that has a whole number of them.
fn read_index(seg: &Segment) -> Result<Option<Vec<IndexEntry>>, SegmentError> {
    let len = file_len(&seg.index, &seg.index_path)?;
    if len % INDEX_ENTRY_BYTES as u64 != 0 {
        return Ok(None);
    }
    (0..len / INDEX_ENTRY_BYTES as u64).map(|i| seg.entry(i)).collect::<Result<_, _>>().map(Some)
}

/// Whether the batch an index entry points at is intact.
fn entry_is_intact(seg: &Segment, e: &IndexEntry, log_len: u64) -> Result<bool, SegmentError> {
    let pos = u64::from(e.position);
    if pos >= log_len {
        return Ok(false);
    }
    let Ok(batch) = read_batch(seg, pos, log_len)? else { return Ok(false) };
    Ok(matches!(
        segment::decode_batch(batch, u64::MAX, 0),
        Ok((h, _)) if h.base_offset == seg.base_offset + u64::from(e.relative_offset)
    ))
}

fn publish_recovered(seg: &Segment, log_len: u64, entries: &[IndexEntry], end_offset: u64) {
    seg.visible_len.store(log_len, Ordering::Release);
    seg.visible_entries.store(entries.len() as u64, Ordering::Release);
    seg.end_offset.store(end_offset, Ordering::Release);
    seg.last_arrival_ms.store(entries.last().map_or(0, |e| e.arrival_ms), Ordering::Release);
}

/// Opens a sealed segment (not the last of its shard) whose records end at
/// `end_offset`. Its index is trusted when well formed, rebuilt otherwise.
fn recover_sealed(dir: &Path, base: u64, end_offset: u64) -> Result<Segment, SegmentError> {
    let seg = open_segment(dir, base, false)?;
    let log_len = file_len(&seg.log, &seg.log_path)?;
    let entries = match read_index(&seg)? {
        Some(entries)
            if entries.last().is_some_and(|e| u64::from(e.position) < log_len)
                || (entries.is_empty() && log_len == 0) =>
        {
            entries
        }
        _ => {
            tracing::warn!(segment = %seg.log_path.display(), "index missing or malformed: rebuilding it from the log");
            let report = segment::scan_log(&seg.log, &seg.log_path, base, 0, base)?;
            if report.valid_len < log_len {
                tracing::error!(
                    segment = %seg.log_path.display(),
                    valid = report.valid_len,
                    len = log_len,
                    "sealed segment ends in unreadable bytes; they are kept and reported as corrupt on read"
                );
            }
            write_index(&seg, &report.entries)?;
            report.entries
        }
    };
    publish_recovered(&seg, log_len, &entries, end_offset);
    Ok(seg)
}

/// Opens the last segment of a shard: completes its index from the log and
/// cuts a torn tail.
fn recover_last(dir: &Path, base: u64) -> Result<Segment, SegmentError> {
    let seg = open_segment(dir, base, true)?;
    let log_len = file_len(&seg.log, &seg.log_path)?;
    let mut entries = read_index(&seg)?.unwrap_or_default();
    // Keep index entries up to the last one that points at an intact batch.
    while let Some(last) = entries.last() {
        if entry_is_intact(&seg, last, log_len)? {
            break;
        }
        entries.pop();
    }
    let (start_pos, start_offset) = match entries.pop() {
        Some(e) => (u64::from(e.position), base + u64::from(e.relative_offset)),
        None => (0, base),
    };
    let report = segment::scan_log(&seg.log, &seg.log_path, base, start_pos, start_offset)?;
    entries.extend_from_slice(&report.entries);
    if report.valid_len < log_len {
        tracing::warn!(
            segment = %seg.log_path.display(),
            cut_bytes = log_len - report.valid_len,
            at = report.valid_len,
            "torn tail: cutting the bytes after the last intact batch"
        );
        seg.log
            .set_len(report.valid_len)
            .map_err(|e| SegmentError::io("truncate", &seg.log_path, e))?;
        sync_file(&seg.log, &seg.log_path)?;
    }
    for p in &report.corrupt_positions {
        tracing::error!(segment = %seg.log_path.display(), position = p, "corrupt batch kept in place; reads report it");
    }
    write_index(&seg, &entries)?;
    publish_recovered(&seg, report.valid_len, &entries, report.end_offset);
    Ok(seg)
}

/// Rebuilds an open shard's producer table: the last segment's snapshot plus
/// the tags in that segment. Without a snapshot (a shard that never rolled
/// has none at base 0), the tags of every segment are replayed.
fn recover_producers(dir: &Path, segments: &[Arc<Segment>]) -> Result<ProducerTable, SegmentError> {
    let Some(last) = segments.last() else { return Ok(ProducerTable::new()) };
    let (mut table, replay) = match producer::read_snapshot(dir, last.base_offset)? {
        Some(t) => (t, &segments[segments.len() - 1..]),
        None => {
            if last.base_offset > 0 {
                tracing::warn!(dir = %dir.display(), base = last.base_offset,
                    "no producer snapshot for the last segment: replaying every segment's tags");
            }
            (ProducerTable::new(), segments)
        }
    };
    for seg in replay {
        let entries = seg.visible_entries.load(Ordering::Acquire);
        let len = seg.visible_len.load(Ordering::Acquire);
        for i in 0..entries {
            let e = seg.entry(i)?;
            // Corrupt batches are reported by reads; their tags are lost.
            let Ok(batch) = read_batch(seg, u64::from(e.position), len)? else { continue };
            let _ = segment::decode_batch_with_tags(batch, u64::MAX, 0, |id, seq| {
                producer::record(&mut table, id, seq);
            });
        }
    }
    Ok(table)
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
    ) -> Result<Self, SegmentError> {
        std::fs::create_dir_all(&dir).map_err(|e| SegmentError::io("create directory", &dir, e))?;
        if let Some(seed) = seed
            && segment::list_segments(&dir)?.is_empty()
        {
            producer::write_snapshot(&dir, 0, seed)?;
        }
        let bases = segment::list_segments(&dir)?;
        let mut segments = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let seg = match bases.get(i + 1) {
                Some(&next) => recover_sealed(&dir, base, next)?,
                None => recover_last(&dir, base)?,
            };
            segments.push(Arc::new(seg));
        }
        let next_offset = match segments.last() {
            Some(s) => s.end_offset.load(Ordering::Acquire),
            None => closed_end.unwrap_or(0),
        };
        if segments.is_empty() && closed_end.is_none() {
            segments.push(Arc::new(open_segment(&dir, 0, true)?));
            sync_dir(&dir)?;
        }
        let producers = match closed_end {
            Some(_) => ProducerTable::new(),
            None => recover_producers(&dir, &segments)?,
        };
        Ok(Self {
            stream: stream.to_owned(),
            index,
            id: shard_id(index),
            dir,
            segments: RwLock::new(segments),
            next_offset: AtomicU64::new(next_offset),
            producers_at_open: Mutex::new(producers),
        })
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
            tracing::info!(stream = %self.stream, shard = %self.id, segment = seg.base_offset, "retention deleted segment");
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

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

/// What an appender gets back.
#[derive(Debug)]
pub(crate) enum AppendReply {
    /// Written, and durable under the policy: first offset, arrival time.
    Done { first_offset: u64, arrival_ms: u64 },
    /// The shard closed before these records were written: route them again.
    Closed(Vec<RecordIn>),
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
    records: Vec<RecordIn>,
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
pub(crate) struct Writer {
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
        records: Vec<RecordIn>,
        tag: Option<ProducerBatch>,
    ) -> oneshot::Receiver<AppendReply> {
        let (reply, rx) = oneshot::channel();
        let bytes = records.iter().map(RecordIn::encoded_len).sum();
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
        let active = shard.read_segments().last().cloned().ok_or_else(|| {
            StoreError::InvalidArgument(format!("shard {} has no segment to write", shard.id))
        })?;
        let entries = active.visible_entries.load(Ordering::Acquire);
        let first_arrival_ms = if entries > 0 { Some(active.entry(0)?.arrival_ms) } else { None };
        let producers =
            shard.producers_at_open.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        Ok(Self {
            producers,
            len: active.visible_len.load(Ordering::Acquire),
            entries,
            next_offset: active.end_offset.load(Ordering::Acquire),
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
        let mut records: Vec<&RecordIn> = Vec::new();
        let mut tags: Vec<(usize, &ProducerBatch)> = Vec::new();
        for (r, dup) in group.iter().zip(duplicate) {
            if let (Request::Append { append, .. }, false) = (r, dup) {
                if let Some(tag) = &append.tag
                    && !append.records.is_empty()
                {
                    tags.push((records.len(), tag));
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
        let seg = &self.active;
        seg.log
            .write_all_at(&self.buf, self.len)
            .map_err(|e| SegmentError::io("write", &seg.log_path, e))?;
        let entry = IndexEntry {
            relative_offset: (first_offset - seg.base_offset) as u32,
            position: self.len as u32,
            arrival_ms,
        };
        seg.index
            .write_all_at(&entry.to_bytes(), self.entries * INDEX_ENTRY_BYTES as u64)
            .map_err(|e| SegmentError::io("write", &seg.index_path, e))?;
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
        let seg = &self.active;
        seg.visible_len.store(self.len, Ordering::Release);
        seg.visible_entries.store(self.entries, Ordering::Release);
        seg.last_arrival_ms.store(self.last_arrival_ms, Ordering::Release);
        seg.end_offset.store(self.next_offset, Ordering::Release);
        self.shard.next_offset.store(self.next_offset, Ordering::Release);
    }

    fn sync_if_dirty(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            sync_file(&self.active.log, &self.active.log_path)?;
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
        sync_file(&old.log, &old.log_path)?;
        sync_file(&old.index, &old.index_path)?;
        self.dirty = false;
        // The snapshot first: a segment never exists without the table that
        // stood before its first record.
        producer::write_snapshot(&self.shard.dir, self.next_offset, &self.producers)?;
        let seg = Arc::new(open_segment(&self.shard.dir, self.next_offset, true)?);
        sync_dir(&self.shard.dir)?;
        self.shard.write_segments().push(seg.clone());
        tracing::debug!(stream = %self.shard.stream, shard = %self.shard.id, base = self.next_offset, "rolled segment");
        self.active = seg;
        self.len = 0;
        self.entries = 0;
        self.first_arrival_ms = None;
        Ok(())
    }
}

/// The sequence number of `offset` in shard `index`.
pub(crate) fn sequence_of(index: u64, offset: u64) -> SequenceNumber {
    SequenceNumber::new(index, offset)
}
