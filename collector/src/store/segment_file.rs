//! A segment file pair (`.log` and `.index`) as one handle: open, append,
//! sync, read, search, scan and delete. The byte layout is `segment`'s; this
//! module is the only one that touches the files. The writer appends through
//! [`Segment::append`] and publishes with [`Segment::publish`]; readers
//! (`shard`) read only what is published; recovery (`recovery`) checks,
//! repairs and publishes what it found at start-up.
//!
//! # What readers may see
//!
//! The writer bumps per-segment atomics (visible length, index entries, end
//! offset, newest arrival) after a group is durable; readers load them with
//! acquire ordering and never read past them. A segment deleted by retention
//! while a reader holds it stays readable through its open file handles.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use weir_wire::durable_file;

use super::file_io::FileIo;
use super::producer;
use super::segment::{
    self, BATCH_HEADER_BYTES, BATCH_MAGIC, BatchHeader, INDEX_ENTRY_BYTES, IndexEntry, SegmentError,
};

/// Size of the read buffer used when scanning a log at recovery.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

/// One segment as readers and the writer share it.
#[derive(Debug)]
pub(super) struct Segment {
    base_offset: u64,
    log_path: PathBuf,
    index_path: PathBuf,
    producers_path: PathBuf,
    log: File,
    index: File,
    /// Writes and syncs go through here (faults are injected in tests).
    io: Arc<dyn FileIo>,
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
    /// Opens the segment of `dir` starting at offset `base` (creating its log
    /// if `create`, its index always), with nothing visible yet; writes and
    /// syncs go through `io`.
    pub(super) fn open(
        dir: &Path,
        base: u64,
        create: bool,
        io: Arc<dyn FileIo>,
    ) -> Result<Self, SegmentError> {
        let log_path = segment::log_path(dir, base);
        let index_path = segment::index_path(dir, base);
        let log = open_rw(&log_path, create)?;
        let index = open_rw(&index_path, true)?;
        Ok(Self {
            base_offset: base,
            log_path,
            index_path,
            producers_path: producer::snapshot_path(dir, base),
            log,
            index,
            io,
            visible_len: AtomicU64::new(0),
            visible_entries: AtomicU64::new(0),
            end_offset: AtomicU64::new(base),
            last_arrival_ms: AtomicU64::new(0),
        })
    }

    /// Offset of the segment's first record.
    pub(super) fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// The `.log` file's path.
    pub(super) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Bytes of the log readers may read.
    pub(super) fn visible_len(&self) -> u64 {
        self.visible_len.load(Ordering::Acquire)
    }

    /// Index entries readers may read.
    pub(super) fn visible_entries(&self) -> u64 {
        self.visible_entries.load(Ordering::Acquire)
    }

    /// Offset after the last visible record.
    pub(super) fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.end_offset() == self.base_offset
    }

    /// Arrival time of the newest visible record (0 while empty).
    pub(super) fn last_arrival_ms(&self) -> u64 {
        self.last_arrival_ms.load(Ordering::Acquire)
    }

    /// Makes the first `len` log bytes and `entries` index entries, holding
    /// the records up to `end_offset`, visible to readers.
    pub(super) fn publish(&self, len: u64, entries: u64, end_offset: u64, last_arrival_ms: u64) {
        self.visible_len.store(len, Ordering::Release);
        self.visible_entries.store(entries, Ordering::Release);
        self.last_arrival_ms.store(last_arrival_ms, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
    }

    /// Writes an encoded batch at byte `position` of the log, then its index
    /// entry as entry number `entry_no`. Neither is synced nor published.
    pub(super) fn append(
        &self,
        position: u64,
        batch: &[u8],
        entry_no: u64,
        entry: IndexEntry,
    ) -> Result<(), SegmentError> {
        self.io
            .write_all_at(&self.log, &self.log_path, batch, position)
            .map_err(|e| SegmentError::io("write", &self.log_path, e))?;
        self.io
            .write_all_at(
                &self.index,
                &self.index_path,
                &entry.to_bytes(),
                entry_no * INDEX_ENTRY_BYTES as u64,
            )
            .map_err(|e| SegmentError::io("write", &self.index_path, e))
    }

    /// Cuts the log back to `len` bytes and the index to `entries` entries,
    /// undoing a write that failed part way (out of space). Not synced: if
    /// the cut is lost in a crash, recovery cuts the same torn tail.
    pub(super) fn cut_back(&self, len: u64, entries: u64) -> Result<(), SegmentError> {
        self.log.set_len(len).map_err(|e| SegmentError::io("truncate", &self.log_path, e))?;
        self.index
            .set_len(entries * INDEX_ENTRY_BYTES as u64)
            .map_err(|e| SegmentError::io("truncate", &self.index_path, e))
    }

    /// fdatasyncs the log.
    pub(super) fn sync_log(&self) -> Result<(), SegmentError> {
        self.io
            .sync_data(&self.log, &self.log_path)
            .map_err(|e| SegmentError::sync(&self.log_path, e))
    }

    /// fdatasyncs the index.
    pub(super) fn sync_index(&self) -> Result<(), SegmentError> {
        self.io
            .sync_data(&self.index, &self.index_path)
            .map_err(|e| SegmentError::sync(&self.index_path, e))
    }

    /// The log's length on disk (published or not).
    pub(super) fn log_file_len(&self) -> Result<u64, SegmentError> {
        file_len(&self.log, &self.log_path)
    }

    /// Cuts the log to `len` bytes (a torn tail) and syncs it.
    pub(super) fn truncate_log(&self, len: u64) -> Result<(), SegmentError> {
        self.log.set_len(len).map_err(|e| SegmentError::io("truncate", &self.log_path, e))?;
        self.sync_log()
    }

    /// Index entry `i`.
    pub(super) fn entry(&self, i: u64) -> Result<IndexEntry, SegmentError> {
        segment::read_index_entry(&self.index, &self.index_path, i)
    }

    /// All entries of an index that has a whole number of them; `None` if not.
    pub(super) fn read_index(&self) -> Result<Option<Vec<IndexEntry>>, SegmentError> {
        let len = file_len(&self.index, &self.index_path)?;
        if len % INDEX_ENTRY_BYTES as u64 != 0 {
            return Ok(None);
        }
        (0..len / INDEX_ENTRY_BYTES as u64)
            .map(|i| self.entry(i))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Rewrites the index with `entries`, durably.
    pub(super) fn write_index(&self, entries: &[IndexEntry]) -> Result<(), SegmentError> {
        let mut bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES);
        for e in entries {
            bytes.extend_from_slice(&e.to_bytes());
        }
        let io = |op| move |e| SegmentError::io(op, &self.index_path, e);
        self.index.set_len(0).map_err(io("truncate"))?;
        self.io.write_all_at(&self.index, &self.index_path, &bytes, 0).map_err(io("write"))?;
        self.sync_index()
    }

    /// Last entry index whose batch starts at or before `offset`.
    pub(super) fn entry_for_offset(&self, offset: u64, entries: u64) -> Result<u64, SegmentError> {
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
    pub(super) fn entry_for_time(
        &self,
        ts: u64,
        entries: u64,
    ) -> Result<Option<IndexEntry>, SegmentError> {
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
    pub(super) fn entry_after_position(
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

    /// Reads the whole batch at `pos`, bounded by `limit` bytes of the log
    /// (the visible length, or the file length at recovery). The inner `Err`
    /// names why the bytes there are not a batch.
    pub(super) fn read_batch(
        &self,
        pos: u64,
        limit: u64,
    ) -> Result<Result<Bytes, &'static str>, SegmentError> {
        let mut h = [0u8; BATCH_HEADER_BYTES];
        if limit - pos < BATCH_HEADER_BYTES as u64 {
            return Ok(Err("batch header runs past the end of the log"));
        }
        let io = |e| SegmentError::io("read", &self.log_path, e);
        self.log.read_exact_at(&mut h, pos).map_err(io)?;
        let Some(header) = BatchHeader::parse(&h) else { return Ok(Err("bad batch header")) };
        let len = u64::from(header.batch_len);
        if limit - pos < len {
            return Ok(Err("batch runs past the end of the log"));
        }
        let mut buf = BytesMut::zeroed(len as usize);
        self.log.read_exact_at(&mut buf, pos).map_err(io)?;
        Ok(Ok(buf.freeze()))
    }

    /// Scans the log from `start_position` (a batch boundary holding
    /// `start_offset`) to its end, for recovery.
    pub(super) fn scan(
        &self,
        start_position: u64,
        start_offset: u64,
    ) -> Result<ScanReport, SegmentError> {
        scan_log(&self.log, &self.log_path, self.base_offset, start_position, start_offset)
    }

    /// Deletes the segment's log, index and producer snapshot (retention).
    pub(super) fn delete_files(&self) -> Result<(), SegmentError> {
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

/// fsyncs a shard directory so that segment files created, renamed or
/// deleted in it stay so.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    durable_file::sync_dir(dir).map_err(|e| SegmentError::sync(dir, e))
}

fn file_len(f: &File, path: &Path) -> Result<u64, SegmentError> {
    Ok(f.metadata().map_err(|e| SegmentError::io("stat", path, e))?.len())
}

/// What a scan of a log found.
#[derive(Debug, Default)]
pub(super) struct ScanReport {
    /// One entry per batch found (valid, or corrupt but followed by valid ones).
    pub(super) entries: Vec<IndexEntry>,
    /// Offset after the last record of the last valid batch.
    pub(super) end_offset: u64,
    /// Length of the valid log; bytes after it are a torn tail.
    pub(super) valid_len: u64,
    /// Byte positions of corrupt batches that are kept (valid batches follow).
    pub(super) corrupt_positions: Vec<u64>,
}

/// Scans a log from `start_position` (a batch boundary holding `start_offset`),
/// collecting index entries, finding the torn tail and corrupt batches.
///
/// Memory stays bounded: the file is read in chunks and a batch is held only
/// while its CRC is checked.
///
/// # Errors
/// I/O errors only; bad bytes are reported in the [`ScanReport`].
fn scan_log(
    log: &File,
    path: &Path,
    segment_base: u64,
    start_position: u64,
    start_offset: u64,
) -> Result<ScanReport, SegmentError> {
    let file_len = log.metadata().map_err(|e| SegmentError::io("stat", path, e))?.len();
    let mut report =
        ScanReport { end_offset: start_offset, valid_len: start_position, ..Default::default() };
    let mut pos = start_position;
    let mut expected_offset = start_offset;
    let mut pending_corrupt: Option<u64> = None;
    let mut buf = Vec::new();
    while pos < file_len {
        match check_batch_at(log, path, pos, file_len, &mut buf)? {
            Some(h)
                if h.base_offset == expected_offset
                    || pending_corrupt.is_some() && h.base_offset > expected_offset =>
            {
                if let Some(bad) = pending_corrupt.take() {
                    // A valid batch follows the bad one: keep the bad one in
                    // place, indexed at the offsets it must have held.
                    report.entries.push(IndexEntry {
                        relative_offset: (expected_offset - segment_base) as u32,
                        position: bad as u32,
                        arrival_ms: report.entries.last().map_or(h.arrival_ms, |e| e.arrival_ms),
                    });
                    report.corrupt_positions.push(bad);
                }
                report.entries.push(IndexEntry {
                    relative_offset: (h.base_offset - segment_base) as u32,
                    position: pos as u32,
                    arrival_ms: h.arrival_ms,
                });
                expected_offset = h.base_offset + u64::from(h.record_count);
                pos += u64::from(h.batch_len);
                report.end_offset = expected_offset;
                report.valid_len = pos;
            }
            _ => {
                // Not a valid batch here: remember the first bad position and
                // look for the next position where a valid batch starts.
                if pending_corrupt.is_none() {
                    pending_corrupt = Some(pos);
                }
                match find_magic(log, path, pos + 1, file_len)? {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    Ok(report)
}

/// Reads and checks the batch at `pos`; `None` if it is not intact.
fn check_batch_at(
    log: &File,
    path: &Path,
    pos: u64,
    file_len: u64,
    buf: &mut Vec<u8>,
) -> Result<Option<BatchHeader>, SegmentError> {
    if file_len - pos < BATCH_HEADER_BYTES as u64 {
        return Ok(None);
    }
    let mut h = [0u8; BATCH_HEADER_BYTES];
    log.read_exact_at(&mut h, pos).map_err(|e| SegmentError::io("read", path, e))?;
    let Some(header) = BatchHeader::parse(&h) else { return Ok(None) };
    if file_len - pos < u64::from(header.batch_len) {
        return Ok(None);
    }
    buf.resize(header.batch_len as usize, 0);
    log.read_exact_at(buf, pos).map_err(|e| SegmentError::io("read", path, e))?;
    if crc32c::crc32c(&buf[12..]) != header.crc {
        return Ok(None);
    }
    Ok(Some(header))
}

/// Position of the next batch magic at or after `from`.
fn find_magic(
    log: &File,
    path: &Path,
    from: u64,
    file_len: u64,
) -> Result<Option<u64>, SegmentError> {
    let mut chunk = vec![0u8; SCAN_CHUNK_BYTES];
    let mut pos = from;
    while pos < file_len {
        let n = ((file_len - pos) as usize).min(SCAN_CHUNK_BYTES);
        log.read_exact_at(&mut chunk[..n], pos).map_err(|e| SegmentError::io("read", path, e))?;
        if let Some(i) = chunk[..n].windows(BATCH_MAGIC.len()).position(|w| w == BATCH_MAGIC) {
            return Ok(Some(pos + i as u64));
        }
        if n < BATCH_MAGIC.len() {
            break;
        }
        // Overlap so a magic split across two chunks is still found.
        pos += (n - (BATCH_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// Opens a segment file for reading and writing, creating it if asked.
fn open_rw(path: &Path, create: bool) -> Result<File, SegmentError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| SegmentError::io("open", path, e))
}
