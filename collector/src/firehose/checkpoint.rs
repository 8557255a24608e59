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
//!   "version": 2,
//!   "delivery_stream": "clicks-to-disk",
//!   "source_stream": "clicks",
//!   "stream_id": 3,
//!   "shards": {
//!     "shardId-000000000000": { "next_offset": 208, "done": true, "pending": null },
//!     "shardId-000000000001": {
//!       "next_offset": 104, "done": false,
//!       "pending": { "first_offset": 104, "last_offset": 207,
//!                    "key": "2023/11/14/22/clicks-to-disk-shardId-000000000001-1...-1...gz",
//!                    "first_failure_ms": null, "error": null }
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
//!   been started and starts at its oldest retained record. Offsets increase
//!   strictly but need not be dense (the JetStream store's are `js_seq << 16
//!   | index`): after a batch it is the batch's last offset + 1, and fixing
//!   the next batch as pending moves it up to that batch's first record (no
//!   record lies between, the batch was read on from here).
//! - `done`: the shard is closed and every record of it is delivered; its
//!   children may start (a merge's child once both parents are done).
//! - `pending`: a batch fixed before its object is written: offsets
//!   `first_offset..=last_offset` (`first_offset` = `next_offset`) under
//!   object key `key`. After a crash the same records are delivered again
//!   under the same key, overwriting whatever was written, and only then does
//!   `next_offset` move past them. So batch boundaries survive crashes and
//!   every record ends up in exactly one object.
//! - `pending.first_failure_ms` (version 2; absent or `null` in version 1
//!   files, which are still read): when the batch's first delivery attempt
//!   failed (saved once, at that failure), so its retry duration counts from
//!   there even across restarts.
//! - `pending.error` (version 2; absent or `null` in version 1 files): `null`
//!   while the batch goes to the destination. Once its retry duration has
//!   run out it is set, and saved, *before* anything
//!   is written to the error output:
//!   `{ "error_code": "HttpEndpoint.ResponseErrorCode", "error_message":
//!   "...", "attempts": 7, "ending_ms": 1700000000000, "error_output_type":
//!   "http-endpoint-failed" }`. A batch found pending with an error after a
//!   crash goes to the error output again (same keys, same error), never back
//!   to the destination; then `next_offset` moves past it.
//! - `pending.delivered_keys` (version 2, optional; absent means empty): with
//!   dynamic partitioning a batch is several objects. Keys of those the
//!   destination confirmed while others kept failing are kept here (saved at
//!   the latest with `error`), so an attempt skips them and the error output
//!   holds only the records of the objects that failed: a record is never
//!   both delivered and in the error output.
//!
//! Version 1 is the same without `pending.first_failure_ms` and
//! `pending.error`; it is read as version 2 with both `null`, and written
//! back as version 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::FirehoseError;
use weir_wire::durable_file;

/// The checkpoint format version written.
pub const CHECKPOINT_VERSION: u32 = 2;
/// Older versions still read.
pub const READ_VERSIONS: &[u32] = &[1, 2];
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
    /// When its first delivery attempt failed, ms since the epoch: the
    /// retry duration counts from here, also across restarts.
    #[serde(default)]
    pub first_failure_ms: Option<u64>,
    /// Set once it goes to the error output instead of the destination.
    #[serde(default)]
    pub error: Option<PendingFailure>,
    /// With dynamic partitioning: keys of the batch's objects the destination
    /// already confirmed while other objects of the batch kept failing. They
    /// are not written again, and not sent to the error output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered_keys: Vec<String>,
}

/// Why a pending batch goes to the error output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFailure {
    /// Firehose-style error code.
    pub error_code: String,
    /// The last failure.
    pub error_message: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When the last attempt ended, ms since the epoch.
    pub ending_ms: u64,
    /// `!{firehose:error-output-type}` of its error output.
    pub error_output_type: String,
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
        c.checked(path, delivery_stream, source_stream)
    }

    /// This checkpoint, read from `location`, if it is one of a version read
    /// and belongs to `delivery_stream` of `source_stream`; upgraded to
    /// [`CHECKPOINT_VERSION`].
    ///
    /// # Errors
    /// [`FirehoseError::Checkpoint`]: an unknown version, another delivery
    /// stream or source, or a pending batch that does not start at its
    /// shard's `next_offset`.
    pub fn checked(
        self,
        location: &Path,
        delivery_stream: &str,
        source_stream: &str,
    ) -> Result<Self, FirehoseError> {
        let bad = |reason: String| FirehoseError::Checkpoint { path: location.to_owned(), reason };
        let mut c = self;
        if !READ_VERSIONS.contains(&c.version) {
            return Err(bad(format!("version {} (expected one of {READ_VERSIONS:?})", c.version)));
        }
        c.version = CHECKPOINT_VERSION;
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
        durable_file::replace_file(path, &bytes).map_err(|e| io("writing", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.json");
        let v1 = r#"{"version":1,"delivery_stream":"d","source_stream":"s","stream_id":3,
            "shards":{"shardId-000000000000":{"next_offset":5,"done":false,
            "pending":{"first_offset":5,"last_offset":9,"key":"k"}}}}"#;
        std::fs::write(&path, v1).expect("write");
        let c = Checkpoint::load(&path, "d", "s").expect("load");
        assert_eq!(c.version, CHECKPOINT_VERSION);
        let p = c.shards["shardId-000000000000"].pending.clone().expect("pending");
        assert_eq!((p.first_offset, p.last_offset, p.key.as_str(), p.error), (5, 9, "k", None));
        assert_eq!(p.first_failure_ms, None);
        c.save(&path).expect("save");
        assert_eq!(Checkpoint::load(&path, "d", "s").expect("load again"), c);
    }
}
