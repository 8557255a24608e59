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
//! # The directory destination
//!
//! The key is a path under the root (`/` separates directories). An object is
//! written to `<name>.tmp` in its final directory, fsync'd, renamed to
//! `<name>` (replacing an earlier copy), and the directory fsync'd (as are
//! directories it had to create, up to the root): once
//! [`Destination::put`] returns `Ok`, the object survives a power cut, and a
//! reader never sees a partial object under its final name.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::FirehoseError;
use crate::store::SequenceNumber;
use crate::store::durable::sync_dir;

/// Suffix of objects being written.
pub const TEMP_SUFFIX: &str = ".tmp";

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

/// Somewhere objects are delivered.
pub trait Destination: Send + Sync + 'static {
    /// Stores `body` under `key`, replacing any object there. `Ok` means
    /// durable: the checkpoint moves past the batch after it.
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), FirehoseError>> + Send;
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
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(TEMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(body).map_err(|e| io("writing", &tmp, e))?;
        f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
        sync_dir(dir).map_err(|e| io("syncing directory", dir, e))
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
    fn refuses_keys_leaving_the_root() {
        let d = DirectoryDestination::new("/x");
        for bad in ["", "/a", "a//b", "../a", "a/./b", "a/b.tmp", "a\\b"] {
            assert!(d.path_of(bad).is_err(), "{bad}");
        }
        assert_eq!(d.path_of("a/b/c.gz").ok(), Some(PathBuf::from("/x/a/b/c.gz")));
    }
}
