//! What the store's parts share beneath [`LogStore`](super::LogStore): the
//! data directory, the configuration and the clock, and the operations on
//! them that more than one part needs. The store, resharding and retention
//! take a [`StoreEnv`] instead of reaching into the store's own state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::catalog::{Catalog, shard_dir};
use super::clock::Clock;
use super::config::StoreConfig;
use super::error::StoreError;
use super::file_io::FileIo;
use super::health::FailedShards;
use super::producer::ProducerTable;
use super::shard::ShardShared;
use super::stream::ShardHandle;
use super::writer::Writer;

/// The data directory, the configuration, the clock, the file layer and the
/// failed-shard registry of one store.
#[derive(Debug)]
pub(super) struct StoreEnv {
    root: PathBuf,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    io: Arc<dyn FileIo>,
    failed: Arc<FailedShards>,
}

impl StoreEnv {
    pub(super) fn new(
        root: PathBuf,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        io: Arc<dyn FileIo>,
    ) -> Self {
        Self { root, config, clock, io, failed: Arc::new(FailedShards::default()) }
    }

    /// The file layer segment files are written through.
    pub(super) fn io(&self) -> Arc<dyn FileIo> {
        self.io.clone()
    }

    /// The shards failed right now.
    pub(super) fn failed_shards(&self) -> &FailedShards {
        &self.failed
    }

    /// The data directory.
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(super) fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// The directory of a shard.
    pub(super) fn shard_dir(&self, stream_id: u64, shard_index: u64) -> PathBuf {
        shard_dir(&self.root, stream_id, shard_index)
    }

    /// Starts the writer thread of an open shard.
    pub(super) fn start_writer(&self, shared: Arc<ShardShared>) -> Result<Writer, StoreError> {
        Writer::start(shared, self.config.clone(), self.clock.clone(), self.failed.clone())
    }

    /// Replaces the catalog with `next` after saving it.
    pub(super) async fn save_catalog(
        &self,
        catalog: &mut Catalog,
        next: Catalog,
    ) -> Result<(), StoreError> {
        let root = self.root.clone();
        let save = next.clone();
        blocking(move || save.save(&root)).await?;
        *catalog = next;
        Ok(())
    }

    /// Opens new shards' directories and writers (not yet routed), each
    /// `seed`ed with a producer table (a reshard's children inherit their
    /// parents').
    pub(super) async fn open_new_shards(
        &self,
        stream_name: &str,
        stream_id: u64,
        indexes: Vec<u64>,
        seed: Option<ProducerTable>,
    ) -> Result<Vec<Arc<ShardHandle>>, StoreError> {
        let mut out = Vec::with_capacity(indexes.len());
        for index in indexes {
            let dir = self.shard_dir(stream_id, index);
            let name = stream_name.to_owned();
            let seed = seed.clone();
            let io = self.io.clone();
            let shared = Arc::new(
                blocking(move || {
                    Ok(ShardShared::open(&name, dir, index, None, seed.as_ref(), io)?)
                })
                .await?,
            );
            let writer = self.start_writer(shared.clone())?;
            out.push(Arc::new(ShardHandle::new(shared, Some(writer), None)));
        }
        Ok(out)
    }
}

/// Runs blocking file work off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| StoreError::ShuttingDown)?
}

/// Removes a directory and everything in it; a missing one is no error.
pub(super) fn remove_dir_if_exists(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", dir, e)),
    }
}
