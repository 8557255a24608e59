//! weir-collector: the service that stores sharded, replayable streams.
//!
//! Today the collector is its [`store`]: the durable sharded stream log that
//! the MQTT ingest and the Kinesis-compatible API sit on. [`run`] opens the
//! store in a data directory and serves until shutdown is signalled; the
//! listeners join it as their issues land.

pub mod store;

use std::future::Future;
use std::path::PathBuf;

use store::{LogStore, StoreConfig, StoreError};

/// What the service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory of the embedded store.
    pub data_dir: PathBuf,
    /// Store settings.
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("weir-data"), store: StoreConfig::default() }
    }
}

/// Opens the store, reports readiness through `ready`, and serves until
/// `shutdown` resolves; then stops every shard writer after its final sync.
///
/// # Errors
/// The store cannot be opened (locked data directory, unreadable catalog,
/// unrecoverable shard).
pub async fn run(
    config: Config,
    ready: impl FnOnce(&LogStore),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StoreError> {
    let store = LogStore::open(&config.data_dir, config.store.clone()).await?;
    ready(&store);
    shutdown.await;
    tracing::info!("shutting down");
    store.close().await;
    Ok(())
}
