//! Opening a data directory: the lock, the catalog, the deletions a crash
//! interrupted, and every stream's shards (each recovered by `shard`), with
//! writers for the open ones.
//!
//! ```text
//! <data-dir>/
//!   LOCK                      held (flock) while a store has the directory open
//!   catalog.json              streams, shards, lineage (see `catalog`)
//!   streams/<stream id>/shard-<index:012>/<base:020>.log|.index|.producers
//!                             (see `segment` and `producer`)
//!   api-token.key             not the store's: the Kinesis API's token key (see `api::token`)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::catalog::{Catalog, StreamStatus};
use super::env::{StoreEnv, remove_dir_if_exists};
use super::error::StoreError;
use super::shard::ShardShared;
use super::stream::{ShardHandle, StreamState, children_of};

/// An opened data directory.
#[derive(Debug)]
pub(super) struct Opened {
    /// The catalog as loaded (deletions a crash interrupted finished).
    pub(super) catalog: Catalog,
    /// The `LOCK` file, locked for as long as it is open.
    pub(super) lock: File,
    /// Every stream's state, by name.
    pub(super) streams: HashMap<String, Arc<StreamState>>,
}

/// Opens the data directory: lock, catalog, unfinished deletions, shards.
///
/// # Errors
/// The directory is locked by another process, the catalog is unreadable,
/// or a shard cannot be recovered.
pub(super) fn open(env: &StoreEnv) -> Result<Opened, StoreError> {
    let root = env.root();
    std::fs::create_dir_all(root.join("streams"))
        .map_err(|e| StoreError::io("create directory", root, e))?;
    let lock_path = root.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::io("open", &lock_path, e))?;
    lock.try_lock().map_err(|e| lock_error(&lock_path, e))?;
    let mut catalog = Catalog::load(root)?;
    // Finish deletions a crash interrupted, and drop directories of streams
    // the catalog does not know (a create that crashed before saving).
    let deleting: Vec<u64> = catalog
        .streams
        .iter()
        .filter(|s| s.status == StreamStatus::Deleting)
        .map(|s| s.id)
        .collect();
    for id in &deleting {
        remove_dir_if_exists(&Catalog::stream_dir(root, *id))?;
    }
    if !deleting.is_empty() {
        catalog.streams.retain(|s| s.status != StreamStatus::Deleting);
        catalog.save(root)?;
    }
    let streams_dir = root.join("streams");
    let listing =
        std::fs::read_dir(&streams_dir).map_err(|e| StoreError::io("list", &streams_dir, e))?;
    for entry in listing.flatten() {
        let known = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|id| catalog.streams.iter().any(|s| s.id == id));
        if !known {
            tracing::warn!(dir = %entry.path().display(), "removing a stream directory the catalog does not know");
            remove_dir_if_exists(&entry.path())?;
        }
    }
    let mut streams = HashMap::new();
    for meta in &catalog.streams {
        let mut shards = BTreeMap::new();
        for s in &meta.shards {
            let dir = env.shard_dir(meta.id, s.index);
            let end = s.closed.map(|c| c.end_offset);
            let shared =
                Arc::new(ShardShared::open(&meta.name, dir, s.index, end, None, env.io())?);
            let writer = if s.is_open() { Some(env.start_writer(shared.clone())?) } else { None };
            let closed = s.closed.map(|c| (c.end_offset, children_of(meta, s.index)));
            shards.insert(s.index, Arc::new(ShardHandle::new(shared, writer, closed)));
        }
        streams.insert(meta.name.clone(), Arc::new(StreamState::new(meta, shards)));
    }
    tracing::info!(root = %root.display(), streams = streams.len(), "store opened");
    Ok(Opened { catalog, lock, streams })
}

fn lock_error(path: &Path, e: std::fs::TryLockError) -> StoreError {
    let source = match e {
        std::fs::TryLockError::WouldBlock => std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another process has this data directory open",
        ),
        std::fs::TryLockError::Error(e) => e,
    };
    StoreError::io("lock", path, source)
}
