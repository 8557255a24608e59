//! Segment files: the on-disk format of a shard's log, byte by byte.
//!
//! A shard's log is a directory of segments. A segment holds a contiguous run of
//! the shard's records and is named by the offset of its first record, zero
//! padded to 20 digits: `00000000000000001234.log` and `00000000000000001234.index`.
//! Records are numbered per shard from 0 (the *offset*); the sequence number a
//! producer sees is derived from the shard index and the offset
//! (see [`crate::store::sequence`]).
//!
//! This module is the format alone: encoding and decoding batches and index
//! entries, file names, and listing a shard directory. The open segment files
//! (append, sync, read, scan at recovery) are `segment_file`'s `Segment`
//! handle, the only code that reads or writes them for the store.
//!
//! # Constraints
//!
//! - Appends only: bytes already in a `.log` are never rewritten, except that
//!   recovery may cut a torn tail off the last segment.
//! - Every batch carries a CRC32C over its header fields and records, so a torn
//!   or flipped byte is detected, never returned as a record.
//! - Deletion is by whole segment (retention); a segment never shrinks otherwise.
//! - A segment is at most [`MAX_SEGMENT_BYTES`] (positions fit in `u32`).
//!
//! # `.log`: batches back to back
//!
//! All integers little-endian.
//!
//! ```text
//! batch header, 32 bytes
//!   0..4    magic         b"WRB1"
//!   4..8    batch_len     u32, bytes of the whole batch, header included
//!   8..12   crc32c        u32, CRC32C (Castagnoli) of bytes 12..batch_len
//!  12..20   base_offset   u64, offset of the batch's first record
//!  20..24   record_count  u32, >= 1
//!  24..32   arrival_ms    u64, collector arrival time of every record in the
//!                         batch, ms since the Unix epoch; non-decreasing in a shard
//! then record_count records, each
//!   0       flags         u8: bit 0 explicit hash key present,
//!                         bit 1 producer timestamp present,
//!                         bit 2 producer tag present, bits 3..8 zero
//!   1..3    key_len       u16, partition key length in bytes (1..=1024)
//!   3..7    data_len      u32, data length in bytes (<= 1 MiB)
//!   [16 bytes explicit hash key, u128]   if flags bit 0
//!   [8 bytes producer timestamp ms, u64] if flags bit 1
//!   [producer tag]                       if flags bit 2:
//!       u8 id_len (1..=64), id_len bytes producer id (UTF-8),
//!       u64 batch sequence number
//!   key_len bytes   partition key, UTF-8
//!   data_len bytes  data
//! ```
//!
//! A batch is what one group commit of the shard's writer wrote: it can hold
//! the records of many producers. The producer tag marks the first record an
//! idempotent append put in this shard (see `producer`); readers skip it. The batch is the unit of the CRC, of the
//! index and of a torn write.
//!
//! # `.index`: one fixed 16-byte entry per batch
//!
//! ```text
//!   0..4    relative_offset  u32, batch base_offset - segment base offset
//!   4..8    position         u32, byte position of the batch in the .log
//!   8..16   arrival_ms       u64, the batch's arrival time
//! ```
//!
//! Entries are in log order, so both `relative_offset` and `arrival_ms` are
//! non-decreasing: the same file is the offset index (find the batch holding an
//! offset) and the time index (find the first batch at or after a timestamp,
//! for AT_TIMESTAMP), each by binary search with positioned reads, so no index
//! is ever held in memory. The index is written after its batch and is not
//! fsync'd on every append: it is derived data. A sealed segment's index is
//! fsync'd when the segment is sealed; the last segment's index is checked and
//! completed from the log at recovery.
//!
//! # Torn writes and corruption
//!
//! Recovery reads the last segment from its last index entry that still points
//! at a valid batch, and stops at the first batch that is incomplete or fails
//! its CRC. If no valid batch follows it, it is a torn tail: the log is cut
//! there (logged with the byte count) and the index trimmed to match. If a
//! valid batch does follow (a byte flipped in the middle, not a torn write),
//! nothing is cut: the bad batch keeps its index entry and reads that reach it
//! report [`SegmentError::Corrupt`] with its file and position, while records
//! before and after it stay readable. Sealed segments are not scanned at
//! start-up (start-up time does not grow with the data); their index is
//! rebuilt from the log only when it is missing or malformed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use bytestring::ByteString;

use weir_wire::batch::MAX_PRODUCER_ID_BYTES;

pub use super::backend::NewRecord;
pub use super::error::SegmentError;

/// Magic bytes that open every batch.
pub const BATCH_MAGIC: [u8; 4] = *b"WRB1";
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Size of one `.index` entry.
pub const INDEX_ENTRY_BYTES: usize = 16;
/// Fixed part of a record before its optional fields.
pub const RECORD_HEADER_BYTES: usize = 7;
/// Largest segment; positions in the index are `u32`.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Largest batch the writer produces or a reader accepts: a group commit is
/// capped below this, and one request (at most 5 MiB of records) always fits.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Longest partition key in bytes (256 characters of up to 4 UTF-8 bytes).
pub const MAX_KEY_BYTES: usize = 1024;

const FLAG_EXPLICIT_HASH: u8 = 1;
const FLAG_PRODUCER_TS: u8 = 2;
const FLAG_PRODUCER_TAG: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_EXPLICIT_HASH | FLAG_PRODUCER_TS | FLAG_PRODUCER_TAG;

/// One record as it is written into a batch: the boundary's [`NewRecord`]
/// (the format takes the record the store is given, it defines none of its
/// own). The name is kept for the format's tools and tests.
pub type RecordIn = NewRecord;

impl NewRecord {
    /// Bytes this record takes inside a batch (see the layout above); what
    /// an append's size is measured in.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES
            + if self.explicit_hash_key.is_some() { 16 } else { 0 }
            + if self.producer_timestamp_ms.is_some() { 8 } else { 0 }
            + self.partition_key.len()
            + self.data.len()
    }
}

/// One record decoded from a batch. `data` shares the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOut {
    /// Offset of the record in its shard.
    pub offset: u64,
    /// Arrival time assigned by the collector, ms since the Unix epoch.
    pub arrival_ms: u64,
    /// Partition key (shares the batch's buffer, like `data`).
    pub partition_key: ByteString,
    /// The data blob.
    pub data: Bytes,
    /// The producer's explicit hash key, if it gave one.
    pub explicit_hash_key: Option<u128>,
    /// The producer's own timestamp, if it gave one.
    pub producer_timestamp_ms: Option<u64>,
}

/// Parsed fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes of the whole batch.
    pub batch_len: u32,
    /// Stored CRC32C.
    pub crc: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
    /// Arrival time of the batch.
    pub arrival_ms: u64,
}

impl BatchHeader {
    /// Parses a header; `None` if the magic or the length is impossible.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; BATCH_HEADER_BYTES] = bytes.get(..BATCH_HEADER_BYTES)?.try_into().ok()?;
        if h[0..4] != BATCH_MAGIC {
            return None;
        }
        let le32 =
            |r: std::ops::Range<usize>| u32::from_le_bytes(h[r].try_into().unwrap_or([0; 4]));
        let le64 =
            |r: std::ops::Range<usize>| u64::from_le_bytes(h[r].try_into().unwrap_or([0; 8]));
        let header = Self {
            batch_len: le32(4..8),
            crc: le32(8..12),
            base_offset: le64(12..20),
            record_count: le32(20..24),
            arrival_ms: le64(24..32),
        };
        let len = header.batch_len as usize;
        let min_len = BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 1;
        if len < min_len || len > MAX_BATCH_BYTES || header.record_count == 0 {
            return None;
        }
        Some(header)
    }
}

/// Bytes a producer tag takes in a record.
fn tag_len(tag: &ProducerTag<'_>) -> usize {
    1 + tag.producer_id.len() + 8
}

/// A producer tag as the log holds it (see `producer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerTag<'a> {
    /// The producer (1 to 64 bytes).
    pub producer_id: &'a str,
    /// Its batch sequence number.
    pub batch_seq: u64,
}

/// Appends the encoding of one batch to `out`.
pub fn encode_batch(out: &mut Vec<u8>, base_offset: u64, arrival_ms: u64, records: &[&NewRecord]) {
    encode_tagged_batch(out, base_offset, arrival_ms, records, &[]);
}

/// Appends the encoding of one batch to `out`; `tags` lists (record index,
/// tag) for the records that carry a producer tag, in increasing index order.
pub fn encode_tagged_batch(
    out: &mut Vec<u8>,
    base_offset: u64,
    arrival_ms: u64,
    records: &[&NewRecord],
    tags: &[(usize, ProducerTag<'_>)],
) {
    let start = out.len();
    let body: usize = records.iter().map(|r| r.encoded_len()).sum::<usize>()
        + tags.iter().map(|(_, t)| tag_len(t)).sum::<usize>();
    out.reserve(BATCH_HEADER_BYTES + body);
    let mut tags = tags.iter().peekable();
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&((BATCH_HEADER_BYTES + body) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&arrival_ms.to_le_bytes());
    for (i, r) in records.iter().enumerate() {
        let tag = tags.next_if(|(at, _)| *at == i).map(|(_, t)| t);
        let mut flags = 0;
        if tag.is_some() {
            flags |= FLAG_PRODUCER_TAG;
        }
        if r.explicit_hash_key.is_some() {
            flags |= FLAG_EXPLICIT_HASH;
        }
        if r.producer_timestamp_ms.is_some() {
            flags |= FLAG_PRODUCER_TS;
        }
        out.push(flags);
        out.extend_from_slice(&(r.partition_key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        if let Some(h) = r.explicit_hash_key {
            out.extend_from_slice(&h.to_le_bytes());
        }
        if let Some(t) = r.producer_timestamp_ms {
            out.extend_from_slice(&t.to_le_bytes());
        }
        if let Some(tag) = tag {
            out.push(tag.producer_id.len() as u8);
            out.extend_from_slice(tag.producer_id.as_bytes());
            out.extend_from_slice(&tag.batch_seq.to_le_bytes());
        }
        out.extend_from_slice(r.partition_key.as_bytes());
        out.extend_from_slice(&r.data);
    }
    let crc = crc32c::crc32c(&out[start + 12..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Checks a whole batch (header, CRC, record framing) and decodes its records
/// with offsets `>= from_offset`, at most `max_records` of them.
///
/// Returns `Err(reason)` when the batch is not intact; nothing of it is then
/// returned.
pub fn decode_batch(
    batch: Bytes,
    from_offset: u64,
    max_records: usize,
) -> Result<(BatchHeader, Vec<RecordOut>), &'static str> {
    decode_batch_with_tags(batch, from_offset, max_records, |_, _| {})
}

/// [`decode_batch`], also handing every producer tag in the batch to `tag`
/// (producer id, batch sequence number).
pub fn decode_batch_with_tags(
    batch: Bytes,
    from_offset: u64,
    max_records: usize,
    tag: impl FnMut(&str, u64),
) -> Result<(BatchHeader, Vec<RecordOut>), &'static str> {
    let mut out = Vec::new();
    let header = decode_batch_into(batch, from_offset, max_records, tag, &mut out, |r| r)?;
    Ok((header, out))
}

/// Appends `map(record)` for each decoded record to `out`; on error `out` is
/// left as it was, so nothing of a damaged batch is ever handed out.
fn decode_batch_into<T>(
    batch: Bytes,
    from_offset: u64,
    max_records: usize,
    mut tag: impl FnMut(&str, u64),
    out: &mut Vec<T>,
    mut map: impl FnMut(RecordOut) -> T,
) -> Result<BatchHeader, &'static str> {
    let mark = out.len();
    let result = decode_each(batch, from_offset, max_records, &mut tag, &mut |r| out.push(map(r)));
    if result.is_err() {
        out.truncate(mark);
    }
    result
}

fn decode_each(
    batch: Bytes,
    from_offset: u64,
    max_records: usize,
    tag: &mut impl FnMut(&str, u64),
    emit: &mut impl FnMut(RecordOut),
) -> Result<BatchHeader, &'static str> {
    let header = BatchHeader::parse(&batch).ok_or("bad batch header")?;
    if batch.len() != header.batch_len as usize {
        return Err("batch length does not match its header");
    }
    if crc32c::crc32c(&batch[12..]) != header.crc {
        return Err("CRC32C mismatch");
    }
    let mut body = batch.slice(BATCH_HEADER_BYTES..);
    let skip = from_offset.saturating_sub(header.base_offset);
    let mut emitted = 0;
    for i in 0..u64::from(header.record_count) {
        if body.remaining() < RECORD_HEADER_BYTES {
            return Err("record header runs past the batch");
        }
        let flags = body.get_u8();
        let key_len = body.get_u16_le() as usize;
        let data_len = body.get_u32_le() as usize;
        if flags & !KNOWN_FLAGS != 0 {
            return Err("unknown record flags");
        }
        let extra = if flags & FLAG_EXPLICIT_HASH != 0 { 16 } else { 0 }
            + if flags & FLAG_PRODUCER_TS != 0 { 8 } else { 0 };
        if key_len == 0 || key_len > MAX_KEY_BYTES || body.remaining() < extra + key_len + data_len
        {
            return Err("record runs past the batch");
        }
        let explicit_hash_key = (flags & FLAG_EXPLICIT_HASH != 0).then(|| body.get_u128_le());
        let producer_timestamp_ms = (flags & FLAG_PRODUCER_TS != 0).then(|| body.get_u64_le());
        if flags & FLAG_PRODUCER_TAG != 0 {
            let id_len = usize::from(*body.first().ok_or("producer tag runs past the batch")?);
            if id_len == 0
                || id_len > MAX_PRODUCER_ID_BYTES
                || body.remaining() < 1 + id_len + 8 + key_len + data_len
            {
                return Err("producer tag runs past the batch");
            }
            body.advance(1);
            let id = body.split_to(id_len);
            let seq = body.get_u64_le();
            tag(std::str::from_utf8(&id).map_err(|_| "producer id is not UTF-8")?, seq);
        }
        if i < skip || emitted >= max_records {
            body.advance(key_len + data_len);
            continue;
        }
        let key = body.split_to(key_len);
        let data = body.split_to(data_len);
        let partition_key = ByteString::try_from(key).map_err(|_| "partition key is not UTF-8")?;
        emitted += 1;
        emit(RecordOut {
            offset: header.base_offset + i,
            arrival_ms: header.arrival_ms,
            partition_key,
            data,
            explicit_hash_key,
            producer_timestamp_ms,
        });
    }
    if body.has_remaining() {
        return Err("bytes after the last record");
    }
    Ok(header)
}

/// One `.index` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Batch base offset minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log`.
    pub position: u32,
    /// Arrival time of the batch.
    pub arrival_ms: u64,
}

impl IndexEntry {
    /// The entry's 16 bytes.
    pub fn to_bytes(self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut b = [0; INDEX_ENTRY_BYTES];
        b[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        b[4..8].copy_from_slice(&self.position.to_le_bytes());
        b[8..16].copy_from_slice(&self.arrival_ms.to_le_bytes());
        b
    }

    /// Parses 16 bytes.
    pub fn from_bytes(b: &[u8; INDEX_ENTRY_BYTES]) -> Self {
        let mut r = &b[..];
        Self {
            relative_offset: r.get_u32_le(),
            position: r.get_u32_le(),
            arrival_ms: r.get_u64_le(),
        }
    }
}

/// File name of a segment's log.
pub fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// File name of a segment's index.
pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

/// Base offsets of the segments in a shard directory, ascending.
///
/// # Errors
/// The directory cannot be listed.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, SegmentError> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| SegmentError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SegmentError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Reads index entry `i` of an index file.
pub(super) fn read_index_entry(
    index: &File,
    path: &Path,
    i: u64,
) -> Result<IndexEntry, SegmentError> {
    let mut b = [0u8; INDEX_ENTRY_BYTES];
    index
        .read_exact_at(&mut b, i * INDEX_ENTRY_BYTES as u64)
        .map_err(|e| SegmentError::io("read index", path, e))?;
    Ok(IndexEntry::from_bytes(&b))
}

/// A batch as listed by [`list_batches`]: for inspection tools and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLocation {
    /// The `.log` file.
    pub path: PathBuf,
    /// Byte position in the file.
    pub position: u64,
    /// Length in bytes (up to the next batch).
    pub len: u64,
    /// First offset of the batch.
    pub base_offset: u64,
}

/// Lists every batch of every segment in a shard directory, from the indexes.
///
/// # Errors
/// I/O errors reading the directory or the files.
pub fn list_batches(shard_dir: &Path) -> Result<Vec<BatchLocation>, SegmentError> {
    let mut out = Vec::new();
    for base in list_segments(shard_dir)? {
        let lp = log_path(shard_dir, base);
        let ip = index_path(shard_dir, base);
        let log_len = std::fs::metadata(&lp).map_err(|e| SegmentError::io("stat", &lp, e))?.len();
        let index = File::open(&ip).map_err(|e| SegmentError::io("open", &ip, e))?;
        let n = index.metadata().map_err(|e| SegmentError::io("stat", &ip, e))?.len()
            / INDEX_ENTRY_BYTES as u64;
        let entries: Vec<IndexEntry> =
            (0..n).map(|i| read_index_entry(&index, &ip, i)).collect::<Result<_, _>>()?;
        for (i, e) in entries.iter().enumerate() {
            let end = entries.get(i + 1).map_or(log_len, |n| u64::from(n.position));
            out.push(BatchLocation {
                path: lp.clone(),
                position: u64::from(e.position),
                len: end - u64::from(e.position),
                base_offset: base + u64::from(e.relative_offset),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
