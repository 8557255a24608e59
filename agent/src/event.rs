//! What inputs send to the batcher, over one bounded channel.
//!
//! Records travel in [`Chunk`]s (all the records one poll or one sample
//! produced, their bytes in one buffer), so the channel carries a message per
//! poll rather than per line. A file input's records carry the checkpoint
//! they advance (file and end offset), per record, because the batcher may
//! cut a chunk between two batches and a checkpoint may only move as far as
//! the spooled records go.
//!
//! An input sends, per poll and in this order: [`Event::Started`] for the
//! files it started following, [`Event::Records`], then [`Event::Forget`] for
//! the files it let go. The batcher spools what it holds before it applies a
//! `Started` or `Forget` to the checkpoint table, so the table never gets
//! ahead of, or behind, the lines in the spool.

use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::FileKey;
use crate::tail::{Checkpoint, FileId};

/// Capacity of the input → batcher channel, in messages. A chunk holds up to
/// a poll's worth of lines (`POLL_BUDGET_BYTES` of file data), so this bounds
/// the bytes in transit to a few of those.
pub const EVENT_CHANNEL_CAPACITY: usize = 4;

/// No file: the record does not move a checkpoint.
pub const NO_FILE: u32 = u32::MAX;

/// One message to the batcher.
#[derive(Debug)]
pub enum Event {
    /// Records for the input's stream.
    Records(Chunk),
    /// Files input `input` started following, at their start offsets.
    Started {
        /// Index of the input in the configuration.
        input: usize,
        /// The files and where they start.
        checkpoints: Vec<Checkpoint>,
    },
    /// Files input `input` let go (read to their end).
    Forget {
        /// Index of the input in the configuration.
        input: usize,
        /// The files.
        keys: Vec<FileKey>,
    },
}

/// A file a chunk's records came from.
#[derive(Debug, Clone)]
pub struct ChunkFile {
    /// Its identity.
    pub id: FileId,
    /// Its path (shared: many records name it).
    pub path: Arc<Path>,
    /// Its logical name (the path it had when first seen; see `tail`).
    pub logical: Arc<Path>,
}

/// One record of a chunk: ranges into the chunk's buffer.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRecord {
    /// Index into [`Chunk::keys`].
    pub key: u32,
    /// Start of the data in [`Chunk::buf`].
    pub data_start: u32,
    /// Length of the data.
    pub data_len: u32,
    /// The producer's timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<u64>,
    /// Index into [`Chunk::files`], or [`NO_FILE`].
    pub file: u32,
    /// Offset just past the record in its file.
    pub end_offset: u64,
}

/// Records of one input.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Index of the input in the configuration.
    pub input: usize,
    /// Partition keys.
    pub keys: Vec<String>,
    /// Data of every record, back to back.
    pub buf: Vec<u8>,
    /// The records.
    pub records: Vec<ChunkRecord>,
    /// Files of file records.
    pub files: Vec<ChunkFile>,
}

impl Chunk {
    /// An empty chunk of input `input`.
    pub fn new(input: usize) -> Self {
        Self { input, ..Self::default() }
    }

    /// Adds a record; `key` is stored once while consecutive records share it.
    pub fn push(
        &mut self,
        key: &str,
        data: &[u8],
        timestamp_ms: Option<u64>,
        file: Option<(u32, u64)>,
    ) {
        if self.keys.last().is_none_or(|k| k != key) {
            self.keys.push(key.to_owned());
        }
        let (file, end_offset) = file.unwrap_or((NO_FILE, 0));
        self.records.push(ChunkRecord {
            key: (self.keys.len() - 1) as u32,
            data_start: self.buf.len() as u32,
            data_len: data.len() as u32,
            timestamp_ms,
            file,
            end_offset,
        });
        self.buf.extend_from_slice(data);
    }

    /// The key and data of record `r`.
    pub fn parts(&self, r: &ChunkRecord) -> (&str, &[u8]) {
        let start = r.data_start as usize;
        let data = self.buf.get(start..start + r.data_len as usize).unwrap_or_default();
        let key = self.keys.get(r.key as usize).map_or("-", String::as_str);
        (key, data)
    }

    /// Whether the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_share_keys_and_one_buffer() {
        let mut c = Chunk::new(2);
        c.push("k1", b"one", Some(5), None);
        c.push("k1", b"two", None, Some((0, 8)));
        c.push("k2", b"", None, None);
        assert_eq!(c.keys, vec!["k1", "k2"]);
        assert_eq!(c.buf, b"onetwo");
        let parts: Vec<_> = c.records.iter().map(|r| c.parts(r)).collect();
        assert_eq!(parts, vec![("k1", &b"one"[..]), ("k1", &b"two"[..]), ("k2", &b""[..])]);
        assert_eq!((c.records[1].file, c.records[1].end_offset), (0, 8));
        assert_eq!(c.records[0].file, NO_FILE);
    }
}
