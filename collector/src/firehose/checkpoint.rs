//! The consumer checkpoint of a delivery stream: how far each shard of the
//! source has been delivered, and the batch being delivered, if any.
//!
//! # File format
//!
//! One JSON file per delivery stream, replaced atomically (written to
//! `<file>.tmp`, fsync'd, renamed over the old file, directory fsync'd), so
//! after a crash it holds either the old or the new content:
//!
//! ```json
//! {
//!   "version": 1,
//!   "delivery_stream": "clicks-to-disk",
//!   "source_stream": "clicks",
//!   "stream_id": 3,
//!   "shards": {
//!     "shardId-000000000000": { "next_offset": 208, "done": true, "pending": null },
//!     "shardId-000000000001": {
//!       "next_offset": 104, "done": false,
//!       "pending": { "first_offset": 104, "last_offset": 207,
//!                    "key": "2023/11/14/22/clicks-to-disk-shardId-000000000001-1...-1...gz" }
//!     }
//!   }
//! }
//! ```
//!
//! - `stream_id` is the source stream's id (a stream deleted and created again
//!   under the same name gets a new one); `null` before the first shard was
//!   read.
//! - `next_offset`: every record of the shard before this offset is in a
//!   durable object; delivery resumes here. A shard without an entry has not
//!   been started and starts at its oldest retained record.
//! - `done`: the shard is closed and every record of it is delivered; its
//!   children may start (a merge's child once both parents are done).
//! - `pending`: a batch fixed before its object is written: offsets
//!   `first_offset..=last_offset` (`first_offset` = `next_offset`) under
//!   object key `key`. After a crash the same records are delivered again
//!   under the same key, overwriting whatever was written, and only then does
//!   `next_offset` move past them. So batch boundaries survive crashes and
//!   every record ends up in exactly one object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::FirehoseError;
use crate::store::durable;

/// The checkpoint format version written and understood.
pub const CHECKPOINT_VERSION: u32 = 1;
/// Largest checkpoint file read (a few hundred bytes per shard).
pub const MAX_CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// A batch fixed before its object is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBatch {
    /// Offset of its first record.
    pub first_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Its object key.
    pub key: String,
}

/// One shard's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// Every record before this offset is delivered.
    pub next_offset: u64,
    /// Closed and fully delivered.
    pub done: bool,
    /// The batch being delivered.
    pub pending: Option<PendingBatch>,
}

/// A delivery stream's progress (see the module header for the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_VERSION`].
    pub version: u32,
    /// The delivery stream's name.
    pub delivery_stream: String,
    /// The source stream's name.
    pub source_stream: String,
    /// The source stream's id, once known.
    pub stream_id: Option<u64>,
    /// Progress by shard id.
    pub shards: BTreeMap<String, ShardCheckpoint>,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new(delivery_stream: &str, source_stream: &str) -> Self {
        Self {
            version: CHECKPOINT_VERSION,
            delivery_stream: delivery_stream.to_owned(),
            source_stream: source_stream.to_owned(),
            stream_id: None,
            shards: BTreeMap::new(),
        }
    }

    /// Loads `path`, or an empty checkpoint if it does not exist.
    ///
    /// # Errors
    /// The file cannot be read, is not a checkpoint, or belongs to another
    /// delivery stream or source.
    pub fn load(
        path: &Path,
        delivery_stream: &str,
        source_stream: &str,
    ) -> Result<Self, FirehoseError> {
        let bad = |reason: String| FirehoseError::Checkpoint { path: path.to_owned(), reason };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::new(delivery_stream, source_stream));
            }
            Err(source) => {
                return Err(FirehoseError::Io { op: "opening", path: path.to_owned(), source });
            }
        };
        let len = file
            .metadata()
            .map_err(|source| FirehoseError::Io { op: "reading", path: path.to_owned(), source })?
            .len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(bad(format!("{len} bytes, more than {MAX_CHECKPOINT_BYTES}")));
        }
        let c: Self = serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        if c.version != CHECKPOINT_VERSION {
            return Err(bad(format!("version {} (expected {CHECKPOINT_VERSION})", c.version)));
        }
        if c.delivery_stream != delivery_stream || c.source_stream != source_stream {
            return Err(bad(format!(
                "written for delivery stream {:?} of {:?}, not {delivery_stream:?} of {source_stream:?}",
                c.delivery_stream, c.source_stream
            )));
        }
        for (id, s) in &c.shards {
            if let Some(p) = &s.pending
                && (p.first_offset != s.next_offset || p.last_offset < p.first_offset)
            {
                return Err(bad(format!("{id}: pending batch does not start at next_offset")));
            }
        }
        Ok(c)
    }

    /// Replaces `path` with this checkpoint, atomically and durably.
    ///
    /// # Errors
    /// Any I/O failure; the previous checkpoint is then still in place.
    pub fn save(&self, path: &Path) -> Result<(), FirehoseError> {
        let io = |op, source| FirehoseError::Io { op, path: path.to_owned(), source };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| FirehoseError::Checkpoint {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let dir: PathBuf = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("creating directory", e))?;
        durable::replace_file(&dir, path, &bytes).map_err(|e| io("writing", e))
    }
}
