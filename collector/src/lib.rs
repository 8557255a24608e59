//! weir-collector: the service that ingests telemetry and keeps it in sharded,
//! replayable streams.
//!
//! [`run`] is the whole service: it opens the [`store`] in the configured data
//! directory, starts the listeners, reports what it bound through its `ready`
//! callback (tests start it on port 0 and read the addresses from there), and
//! serves until the `shutdown` future resolves. `main.rs` only parses flags,
//! sets up logging and waits for a signal.

pub mod config;
pub mod store;

use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;

pub use config::{Config, ConfigError};
use store::{LogStore, StoreError};

/// What a running collector bound and where it keeps its data; written as
/// JSON to `--ready-file` by the binary.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// The data directory.
    pub data_dir: PathBuf,
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
}

/// Runs the collector until `shutdown` resolves; then stops every shard writer
/// after its final sync.
///
/// # Errors
/// Invalid configuration, or a store that cannot be opened (data directory
/// locked by another process, unreadable catalog, unrecoverable shard).
pub async fn run(
    config: Config,
    ready: impl FnOnce(&Ready, &LogStore),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let store_config = config.store_config()?;
    let store = LogStore::open(&config.data_dir, store_config).await?;
    ready(&Ready { data_dir: config.data_dir.clone() }, &store);
    shutdown.await;
    tracing::info!("shutting down");
    store.close().await;
    Ok(())
}
