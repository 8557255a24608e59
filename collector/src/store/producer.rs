//! Idempotent producers: each shard remembers, per producer id, the highest
//! batch sequence number it has appended, so a batch that is sent again (after
//! a lost acknowledgement, a reconnect, a collector restart) is acknowledged
//! without being appended twice.
//!
//! # Where the state lives
//!
//! - In the log itself: the first record a tagged append puts in a shard
//!   carries the tag (producer id, batch sequence number) in its record header
//!   (see `segment`). The tag is written in the same batch, under the same CRC
//!   and fsync, as the records: the state can never say "appended" for records
//!   that are not durable, nor the reverse.
//! - In a snapshot per segment, `<base:020>.producers`, written when the
//!   segment is started (at a roll, or seeded from the parents when a reshard
//!   creates the shard): the table as it stood before the segment's first
//!   record. Recovery loads the last segment's snapshot and replays the tags
//!   of that segment only, so start-up work is bounded by one segment.
//!
//! # Snapshot layout (little-endian)
//!
//! ```text
//!   0..4   magic   b"WRP1"
//!   4..8   count   u32, number of entries
//!   then count entries, each
//!     u8       id_len (1..=64)
//!     id_len   producer id, UTF-8
//!     u64      highest batch sequence number appended to this shard
//!   last 4 bytes: CRC32C of everything before them
//! ```
//!
//! Written to `<name>.tmp`, fsync'd, renamed, directory fsync'd. A snapshot
//! that fails its CRC is an error at open: the shard refuses to start rather
//! than accept duplicates silently.
//!
//! # Semantics
//!
//! A producer's batch sequence numbers must increase. A batch whose number is
//! at or below the highest one a shard has appended for that producer is a
//! duplicate there. Producers that restart their numbering must use a new
//! producer id (the wire crate's producer id is per producer session).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::SegmentError;
use weir_wire::durable_file;

const SNAPSHOT_MAGIC: [u8; 4] = *b"WRP1";

/// Identifies one batch of an idempotent producer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProducerBatch {
    /// The producer (1 to [`MAX_PRODUCER_ID_BYTES`](weir_wire::batch::MAX_PRODUCER_ID_BYTES) bytes, the wire format's limit).
    pub producer_id: String,
    /// Its batch sequence number; increases with every new batch.
    pub batch_seq: u64,
}

/// Highest batch sequence number appended, per producer id, in one shard.
pub type ProducerTable = HashMap<String, u64>;

/// Path of a segment's producer snapshot.
pub fn snapshot_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.producers"))
}

/// Whether a batch is new for a table (and so must be appended).
pub fn is_new(table: &ProducerTable, batch: &ProducerBatch) -> bool {
    table.get(&batch.producer_id).is_none_or(|&last| batch.batch_seq > last)
}

/// Records that a batch was appended.
pub fn record(table: &mut ProducerTable, producer_id: &str, batch_seq: u64) {
    match table.get_mut(producer_id) {
        Some(last) => *last = (*last).max(batch_seq),
        None => {
            table.insert(producer_id.to_owned(), batch_seq);
        }
    }
}

/// Merges `other` into `table`, keeping the higher number per producer (a
/// child shard inherits its parents' tables).
pub fn merge(table: &mut ProducerTable, other: &ProducerTable) {
    for (id, &seq) in other {
        record(table, id, seq);
    }
}

/// Writes a snapshot durably.
///
/// # Errors
/// Any I/O failure.
pub fn write_snapshot(
    dir: &Path,
    base_offset: u64,
    table: &ProducerTable,
) -> Result<(), SegmentError> {
    let path = snapshot_path(dir, base_offset);
    let mut bytes = Vec::with_capacity(8 + table.len() * 24);
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&(table.len() as u32).to_le_bytes());
    let mut entries: Vec<(&String, &u64)> = table.iter().collect();
    entries.sort();
    for (id, seq) in entries {
        bytes.push(id.len() as u8);
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    durable_file::replace_file(&path, &bytes)
        .map_err(|e| SegmentError::io("write producer snapshot", &path, e))
}

/// Reads a segment's snapshot; `Ok(None)` when there is none.
///
/// # Errors
/// I/O errors, and a snapshot that fails its checks (reported as corrupt).
pub fn read_snapshot(dir: &Path, base_offset: u64) -> Result<Option<ProducerTable>, SegmentError> {
    let path = snapshot_path(dir, base_offset);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SegmentError::io("read producer snapshot", &path, e)),
    };
    let corrupt = |reason| SegmentError::Corrupt { path: path.clone(), position: 0, reason };
    if bytes.len() < 12 || bytes[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a producer snapshot"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(corrupt("producer snapshot fails its CRC32C"));
    }
    let count = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let mut rest = &body[8..];
    let mut table = ProducerTable::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let (&len, tail) =
            rest.split_first().ok_or_else(|| corrupt("producer snapshot is truncated"))?;
        let len = usize::from(len);
        if tail.len() < len + 8 {
            return Err(corrupt("producer snapshot is truncated"));
        }
        let id =
            std::str::from_utf8(&tail[..len]).map_err(|_| corrupt("producer id is not UTF-8"))?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&tail[len..len + 8]);
        table.insert(id.to_owned(), u64::from_le_bytes(seq));
        rest = &tail[len + 8..];
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after the last producer entry"));
    }
    Ok(Some(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_snapshot(dir.path(), 7).expect("read"), None);
        let mut t = ProducerTable::new();
        record(&mut t, "dev-1", 5);
        record(&mut t, "dev-1", 3);
        record(&mut t, "gw/ü", 9);
        write_snapshot(dir.path(), 7, &t).expect("write");
        assert_eq!(read_snapshot(dir.path(), 7).expect("read"), Some(t.clone()));
        assert_eq!(t["dev-1"], 5);
        let p = snapshot_path(dir.path(), 7);
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[10] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        assert!(read_snapshot(dir.path(), 7).is_err());
    }

    #[test]
    fn duplicates_are_at_or_below_the_highest_number() {
        let mut t = ProducerTable::new();
        let b = |seq| ProducerBatch { producer_id: "p".into(), batch_seq: seq };
        assert!(is_new(&t, &b(0)));
        record(&mut t, "p", 4);
        assert!(!is_new(&t, &b(4)) && !is_new(&t, &b(1)) && is_new(&t, &b(5)));
        let mut child = ProducerTable::new();
        record(&mut child, "p", 2);
        merge(&mut child, &t);
        assert_eq!(child["p"], 4);
    }
}
