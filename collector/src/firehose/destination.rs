//! Where batches go: the [`Destination`] trait and the directory destination.
//!
//! # Object naming
//!
//! An object's key is derived from its source alone:
//!
//! ```text
//! <prefix><delivery stream>-<shard id>-<first sequence number>-<last sequence number><ext>
//! 2023/11/14/22/clicks-to-disk-shardId-000000000001-100000000000000000001000000000000000104-100000000000000000001000000000000000207.gz
//! ```
//!
//! `<prefix>` is the rendered prefix template (timestamp of the batch's
//! oldest record, UTC), the sequence numbers are the 39-digit ones of the
//! batch's first and last records (all from one shard), `<ext>` is `.gz`,
//! `.zst` or nothing. Delivering the same batch again therefore writes the
//! same key and overwrites the same object, never a second copy. Sorting keys
//! of one delivery stream by first sequence number gives the order of
//! delivery per partition key (children's sequence numbers exceed their
//! parents').
//!
//! With dynamic partitioning the prefix also holds the partition key values,
//! and first/last are those of the object's own records (a batch split into
//! several objects; see [`partition`](super::partition)).
//!
//! Error output objects are JSON lines, one object per record (Firehose's
//! fields: `attemptsMade`, `arrivalTimestamp`, `errorCode`, `errorMessage`,
//! `attemptEndingTimestamp`, `rawData` in base64, plus `sequenceNumber` and
//! `shardId`), uncompressed, under the rendered error output prefix:
//!
//! ```text
//! <error prefix><delivery stream>-<shard id>-<first>-<last>.json
//! errors/http-endpoint-failed/2023/11/14/22/clicks-http-shardId-000000000001-1...-1....json
//! ```
//!
//! again named after their first and last records, so writing them again
//! after a crash overwrites the same objects.
//!
//! # The directory destination
//!
//! The key is a path under the root (`/` separates directories). An object is
//! written to `<name>.tmp` in its final directory, fsync'd, renamed to
//! `<name>` (replacing an earlier copy), and the directory fsync'd (as are
//! directories it had to create, up to the root): once
//! [`Destination::put`] returns `Ok`, the object survives a power cut, and a
//! reader never sees a partial object under its final name.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::error::FirehoseError;
use crate::store::SequenceNumber;
use weir_wire::durable_file::{self, sync_dir};

/// Suffix of objects being written.
pub const TEMP_SUFFIX: &str = durable_file::TEMP_SUFFIX;

/// The key of a batch's object (see the module header).
pub fn object_key(
    prefix: &str,
    delivery_stream: &str,
    shard_id: &str,
    first: SequenceNumber,
    last: SequenceNumber,
    extension: &str,
) -> String {
    format!("{prefix}{delivery_stream}-{shard_id}-{first}-{last}{extension}")
}

/// The key of an error output object (see the module header).
pub fn error_key(
    error_prefix: &str,
    delivery_stream: &str,
    shard_id: &str,
    first: SequenceNumber,
    last: SequenceNumber,
) -> String {
    format!("{error_prefix}{delivery_stream}-{shard_id}-{first}-{last}.json")
}

/// A UUID-shaped id of a batch, derived from its source alone (the same
/// across retries and restarts): the HTTP endpoint destination's request id.
pub fn request_id(
    delivery_stream: &str,
    shard_id: &str,
    first: SequenceNumber,
    last: SequenceNumber,
) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{delivery_stream}\n{shard_id}\n{first}\n{last}"));
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// One object to deliver.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Its key.
    pub key: String,
    /// Its id, derived from its source ([`request_id`]).
    pub request_id: String,
    /// Its records' data, in order.
    pub records: Vec<bytes::Bytes>,
    /// The encoded (laid out, compressed) object; empty when the destination
    /// does not [want it](Destination::wants_body).
    pub body: Vec<u8>,
}

/// Somewhere objects are delivered.
pub trait Destination: Send + Sync + 'static {
    /// Stores `body` under `key`, replacing any object there. `Ok` means
    /// durable: the checkpoint moves past the batch after it.
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), FirehoseError>> + Send;

    /// Delivers a batch; by default [`put`](Destination::put)s its body under
    /// its key.
    fn deliver(&self, batch: Batch) -> impl Future<Output = Result<(), FirehoseError>> + Send {
        async move {
            let Batch { key, body, .. } = batch;
            self.put(&key, body).await
        }
    }

    /// Whether [`deliver`](Destination::deliver) uses [`Batch::body`].
    fn wants_body(&self) -> bool {
        true
    }

    /// Whether error output can be [`put`](Destination::put) here (else it
    /// needs a backup directory).
    fn stores_objects(&self) -> bool {
        true
    }

    /// `!{firehose:error-output-type}` of batches that failed here.
    fn error_output_type(&self) -> &'static str {
        "delivery-failed"
    }
}

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct DirectoryDestination {
    root: PathBuf,
}

impl DirectoryDestination {
    /// A destination writing under `root` (created when needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `key` lives, if it is a relative path of plain names.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidObjectKey`].
    pub fn path_of(&self, key: &str) -> Result<PathBuf, FirehoseError> {
        let bad = || FirehoseError::InvalidObjectKey(key.chars().take(200).collect());
        let mut path = self.root.clone();
        for part in key.split('/') {
            if part.is_empty()
                || part == "."
                || part == ".."
                || part.contains(['\\', '\0'])
                || part.ends_with(TEMP_SUFFIX)
            {
                return Err(bad());
            }
            path.push(part);
        }
        Ok(path)
    }

    fn put_blocking(root: &Path, path: &Path, body: &[u8]) -> Result<(), FirehoseError> {
        let io = |op, p: &Path, source| FirehoseError::Io { op, path: p.to_owned(), source };
        let dir = path.parent().unwrap_or(root);
        // Create missing directories, then fsync each new one's parent.
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_owned());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| io("creating directory", dir, e))?;
        for m in missing.iter().rev() {
            if let Some(parent) = m.parent() {
                sync_dir(parent).map_err(|e| io("syncing directory", parent, e))?;
            }
        }
        // `<name>.tmp` (TEMP_SUFFIX), fsync, rename, fsync the directory.
        durable_file::replace_file(path, body).map_err(|e| io("writing", path, e))
    }
}

impl Destination for DirectoryDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || Self::put_blocking(&root, &path, &body))
            .await
            .map_err(|_| FirehoseError::Cancelled)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_and_uuid_shaped() {
        let s = |o: u64| SequenceNumber { shard_index: 0, offset: o };
        let a = request_id("d", "shardId-000000000000", s(1), s(9));
        assert_eq!(a, request_id("d", "shardId-000000000000", s(1), s(9)));
        assert_ne!(a, request_id("d", "shardId-000000000000", s(1), s(10)));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn refuses_keys_leaving_the_root() {
        let d = DirectoryDestination::new("/x");
        for bad in ["", "/a", "a//b", "../a", "a/./b", "a/b.tmp", "a\\b"] {
            assert!(d.path_of(bad).is_err(), "{bad}");
        }
        assert_eq!(d.path_of("a/b/c.gz").ok(), Some(PathBuf::from("/x/a/b/c.gz")));
    }
}
