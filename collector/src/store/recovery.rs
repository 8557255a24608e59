//! Opening a shard's segment files and repairing them after a crash.
//!
//! Sealed segments (all but the last) are trusted: their index is only
//! rebuilt when it is missing or malformed, so start-up time does not grow
//! with the data. The last segment is checked from its last intact index
//! entry to its end: a torn tail is cut, a corrupt batch followed by intact
//! ones is kept in place (reads report it). The producer table of an open
//! shard is rebuilt from the last segment's snapshot and that segment's tags.
//! The byte layout is in `segment`'s header; the files are reached only
//! through `segment_file`'s `Segment` handle.

use std::path::Path;
use std::sync::Arc;

use super::file_io::FileIo;
use super::producer::{self, ProducerTable};
use super::segment::{self, IndexEntry, SegmentError};
use super::segment_file::Segment;

/// Whether the batch an index entry points at is intact.
fn entry_is_intact(seg: &Segment, e: &IndexEntry, log_len: u64) -> Result<bool, SegmentError> {
    let pos = u64::from(e.position);
    if pos >= log_len {
        return Ok(false);
    }
    let Ok(batch) = seg.read_batch(pos, log_len)? else { return Ok(false) };
    Ok(matches!(
        segment::decode_batch(batch, u64::MAX, 0),
        Ok((h, _)) if h.base_offset == seg.base_offset() + u64::from(e.relative_offset)
    ))
}

/// Makes what recovery found readable.
fn publish_recovered(seg: &Segment, log_len: u64, entries: &[IndexEntry], end_offset: u64) {
    let last_arrival_ms = entries.last().map_or(0, |e| e.arrival_ms);
    seg.publish(log_len, entries.len() as u64, end_offset, last_arrival_ms);
}

/// Opens a sealed segment (not the last of its shard) whose records end at
/// `end_offset`. Its index is trusted when well formed, rebuilt otherwise.
pub(super) fn recover_sealed(
    dir: &Path,
    base: u64,
    end_offset: u64,
    io: Arc<dyn FileIo>,
) -> Result<Segment, SegmentError> {
    let seg = Segment::open(dir, base, false, io)?;
    let log_len = seg.log_file_len()?;
    let entries = match seg.read_index()? {
        Some(entries)
            if entries.last().is_some_and(|e| u64::from(e.position) < log_len)
                || (entries.is_empty() && log_len == 0) =>
        {
            entries
        }
        _ => {
            tracing::warn!(segment = %seg.log_path().display(), "index missing or malformed: rebuilding it from the log");
            let report = seg.scan(0, base)?;
            if report.valid_len < log_len {
                tracing::error!(
                    segment = %seg.log_path().display(),
                    valid = report.valid_len,
                    len = log_len,
                    "sealed segment ends in unreadable bytes; they are kept and reported as corrupt on read"
                );
            }
            seg.write_index(&report.entries)?;
            report.entries
        }
    };
    publish_recovered(&seg, log_len, &entries, end_offset);
    Ok(seg)
}

/// Opens the last segment of a shard: completes its index from the log and
/// cuts a torn tail.
pub(super) fn recover_last(
    dir: &Path,
    base: u64,
    io: Arc<dyn FileIo>,
) -> Result<Segment, SegmentError> {
    let seg = Segment::open(dir, base, true, io)?;
    let log_len = seg.log_file_len()?;
    let mut entries = seg.read_index()?.unwrap_or_default();
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
    let report = seg.scan(start_pos, start_offset)?;
    entries.extend_from_slice(&report.entries);
    if report.valid_len < log_len {
        tracing::warn!(
            segment = %seg.log_path().display(),
            cut_bytes = log_len - report.valid_len,
            at = report.valid_len,
            "torn tail: cutting the bytes after the last intact batch"
        );
        seg.truncate_log(report.valid_len)?;
    }
    for p in &report.corrupt_positions {
        tracing::error!(segment = %seg.log_path().display(), position = p, "corrupt batch kept in place; reads report it");
    }
    seg.write_index(&entries)?;
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
    let (mut table, replay) = match producer::read_snapshot(dir, last.base_offset())? {
        Some(t) => (t, &segments[segments.len() - 1..]),
        None => {
            if last.base_offset() > 0 {
                tracing::warn!(dir = %dir.display(), base = last.base_offset(),
                    "no producer snapshot for the last segment: replaying every segment's tags");
            }
            (ProducerTable::new(), segments)
        }
    };
    for seg in replay {
        let entries = seg.visible_entries();
        let len = seg.visible_len();
        for i in 0..entries {
            let e = seg.entry(i)?;
            // Corrupt batches are reported by reads; their tags are lost.
            let Ok(batch) = seg.read_batch(u64::from(e.position), len)? else { continue };
            let _ = segment::decode_batch_with_tags(batch, u64::MAX, 0, |id, seq| {
                producer::record(&mut table, id, seq);
            });
        }
    }
    Ok(table)
}
