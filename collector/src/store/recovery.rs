//! Opening a shard's segment files and repairing them after a crash.
//!
//! Sealed segments (all but the last) are trusted: their index is only
//! rebuilt when it is missing or malformed, so start-up time does not grow
//! with the data. The last segment is checked from its last intact index
//! entry to its end: a torn tail is cut, a corrupt batch followed by intact
//! ones is kept in place (reads report it). The producer table of an open
//! shard is rebuilt from the last segment's snapshot and that segment's tags.
//! The byte layout is in `segment`'s header.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::durable;
use super::producer::{self, ProducerTable};
use super::segment::{self, INDEX_ENTRY_BYTES, IndexEntry, SegmentError};
use super::shard::{Segment, read_batch};

pub(super) fn open_segment(dir: &Path, base: u64, create: bool) -> Result<Segment, SegmentError> {
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

pub(super) fn file_len(f: &File, path: &Path) -> Result<u64, SegmentError> {
    Ok(f.metadata().map_err(|e| SegmentError::io("stat", path, e))?.len())
}

pub(super) fn sync_file(f: &File, path: &Path) -> Result<(), SegmentError> {
    f.sync_data().map_err(|e| SegmentError::io("fsync", path, e))
}

/// fsyncs a directory so that file creations, renames and deletions in it are
/// durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    durable::sync_dir(dir).map_err(|e| SegmentError::io("fsync directory", dir, e))
}

/// Rewrites a segment's index with `entries`, durably.
pub(super) fn write_index(seg: &Segment, entries: &[IndexEntry]) -> Result<(), SegmentError> {
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
pub(super) fn read_index(seg: &Segment) -> Result<Option<Vec<IndexEntry>>, SegmentError> {
    let len = file_len(&seg.index, &seg.index_path)?;
    if len % INDEX_ENTRY_BYTES as u64 != 0 {
        return Ok(None);
    }
    (0..len / INDEX_ENTRY_BYTES as u64).map(|i| seg.entry(i)).collect::<Result<_, _>>().map(Some)
}

/// Whether the batch an index entry points at is intact.
pub(super) fn entry_is_intact(
    seg: &Segment,
    e: &IndexEntry,
    log_len: u64,
) -> Result<bool, SegmentError> {
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

pub(super) fn publish_recovered(
    seg: &Segment,
    log_len: u64,
    entries: &[IndexEntry],
    end_offset: u64,
) {
    seg.visible_len.store(log_len, Ordering::Release);
    seg.visible_entries.store(entries.len() as u64, Ordering::Release);
    seg.end_offset.store(end_offset, Ordering::Release);
    seg.last_arrival_ms.store(entries.last().map_or(0, |e| e.arrival_ms), Ordering::Release);
}

/// Opens a sealed segment (not the last of its shard) whose records end at
/// `end_offset`. Its index is trusted when well formed, rebuilt otherwise.
pub(super) fn recover_sealed(
    dir: &Path,
    base: u64,
    end_offset: u64,
) -> Result<Segment, SegmentError> {
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
pub(super) fn recover_last(dir: &Path, base: u64) -> Result<Segment, SegmentError> {
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
pub(super) fn recover_producers(
    dir: &Path,
    segments: &[Arc<Segment>],
) -> Result<ProducerTable, SegmentError> {
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
