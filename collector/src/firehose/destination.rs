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
//!
//! # A full disk
//!
//! Before writing, the directory destination reads the free space of the
//! root's filesystem (`statvfs`) and refuses an object that would leave less
//! than the reserve free (`[[firehose]] min_free_bytes`, by default
//! [`DEFAULT_MIN_FREE_BYTES`] or 1% of the filesystem, whichever is
//! smaller; 0 turns the check off), with [`FirehoseError::DiskFull`]; so
//! does a write that fails
//! with ENOSPC or EDQUOT anyway (the reserve was not enough, or another
//! writer took the space), after its temp file was removed. Nothing under a
//! final name is touched. The delivery stream pauses on that error (see
//! `delivery`'s header) and asks [`Destination::has_room`] at each poll, so
//! it resumes as soon as space is freed.

use std::future::Future;
use std::path::{Path, PathBuf};

use super::error::{FirehoseError, is_storage_full};
use crate::store::SequenceNumber;
use weir_wire::durable_file::{self, sync_dir};

/// Suffix of objects being written.
pub const TEMP_SUFFIX: &str = durable_file::TEMP_SUFFIX;
/// The directory destination's default free-space reserve (or 1% of the
/// filesystem, if that is smaller): room for the firehose's own checkpoint
/// and for whatever else shares the disk (by default the store's data
/// directory).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

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

    /// Whether an object of `bytes` would fit now, after a
    /// [`FirehoseError::DiskFull`]: asked at every poll while a batch waits
    /// for its next attempt, so delivery resumes once space is freed rather
    /// than after the backoff. Destinations without a disk of their own
    /// answer `false` (they wait for the backoff).
    fn has_room(&self, bytes: u64) -> impl Future<Output = bool> + Send {
        let _ = bytes;
        async { false }
    }
}

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct DirectoryDestination {
    root: PathBuf,
    /// The reserve; `None`: the default.
    min_free_bytes: Option<u64>,
}

impl DirectoryDestination {
    /// A destination writing under `root` (created when needed), with the
    /// default free-space reserve.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), min_free_bytes: None }
    }

    /// With a free-space reserve of `bytes` (`None`: the default; 0: none,
    /// only ENOSPC stops a write).
    #[must_use]
    pub fn with_min_free_bytes(mut self, bytes: Option<u64>) -> Self {
        self.min_free_bytes = bytes;
        self
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Free bytes of the root's filesystem and the reserve in force there
    /// (the root, or its nearest existing ancestor: it is created at the
    /// first put); `None` when the filesystem cannot be asked.
    pub fn space(&self) -> Option<(u64, u64)> {
        let existing = self.root.ancestors().find(|p| p.exists())?;
        let s = rustix::fs::statvfs(existing).ok()?;
        let free = s.f_bavail.saturating_mul(s.f_frsize);
        let total = s.f_blocks.saturating_mul(s.f_frsize);
        let reserve = self.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES.min(total / 100));
        Some((free, reserve))
    }

    /// `Err(DiskFull)` if writing `bytes` would leave less than the reserve
    /// free. A filesystem that cannot be asked does not block the write, nor
    /// does a reserve of 0 (then only the write's ENOSPC stops it).
    fn check_room(&self, path: &Path, bytes: u64) -> Result<(), FirehoseError> {
        match self.space() {
            Some((free, reserve)) if reserve > 0 && free < bytes.saturating_add(reserve) => {
                Err(FirehoseError::DiskFull {
                    path: path.to_owned(),
                    needed: bytes,
                    reason: format!(
                        "{free} bytes free; an object of {bytes} bytes would leave less than \
                         the reserve of {reserve} bytes ([[firehose]] min_free_bytes)"
                    ),
                })
            }
            _ => Ok(()),
        }
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

    fn put_blocking(&self, path: &Path, body: &[u8]) -> Result<(), FirehoseError> {
        let needed = body.len() as u64;
        self.check_room(path, needed)?;
        let io = |op, p: &Path, source: std::io::Error| {
            if is_storage_full(&source) {
                FirehoseError::DiskFull {
                    path: p.to_owned(),
                    needed,
                    reason: format!("{op}: {source}"),
                }
            } else {
                FirehoseError::Io { op, path: p.to_owned(), source }
            }
        };
        let root = self.root.as_path();
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
        // `<name>.tmp` (TEMP_SUFFIX), fsync, rename, fsync the directory;
        // a temp file whose write failed is removed.
        durable_file::replace_file(path, body).map_err(|e| io("writing", path, e))
    }
}

impl Destination for DirectoryDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        let path = self.path_of(key)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.put_blocking(&path, &body))
            .await
            .map_err(|_| FirehoseError::Cancelled)?
    }

    async fn has_room(&self, bytes: u64) -> bool {
        let me = self.clone();
        let space = tokio::task::spawn_blocking(move || me.space()).await.ok().flatten();
        space.is_some_and(|(free, reserve)| free >= bytes.saturating_add(reserve))
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

    #[tokio::test]
    async fn an_object_that_would_take_the_disk_below_the_reserve_is_refused_unwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full =
            DirectoryDestination::new(dir.path().join("out")).with_min_free_bytes(Some(u64::MAX));
        let e = full.put("a/b", b"x".to_vec()).await.expect_err("below the reserve");
        assert!(e.is_disk_full(), "{e}");
        assert!(e.to_string().contains("min_free_bytes"), "{e}");
        assert!(!dir.path().join("out").exists(), "nothing written, not even a directory");
        assert!(!full.has_room(0).await);

        let roomy = full.with_min_free_bytes(Some(0));
        assert!(roomy.has_room(1).await);
        roomy.put("a/b", b"x".to_vec()).await.expect("with room");
        assert_eq!(std::fs::read(dir.path().join("out/a/b")).expect("object"), b"x");
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
