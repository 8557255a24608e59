//! The collector's HTTP listener as a running component: bound at start-up,
//! stopped (in-flight requests finished, bounded by [`SHUTDOWN_GRACE`])
//! before the store closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::firehose::FirehoseApi;
use super::service::{Api, ApiConfig};
use super::token::{KeyError, TokenSigner};
use crate::config::{Config, ConfigError};
use crate::firehose::Manager;
use crate::store::StreamStore;

/// How long requests in progress may take to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the HTTP listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[http]` or `[kinesis]` is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address could not be bound.
    #[error("binding the HTTP listener to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token key could not be loaded or created.
    #[error("shard iterator key: {0}")]
    Key(#[from] KeyError),
    /// The store's shared token key could not be read.
    #[error("shard iterator key from the store: {0}")]
    SharedKey(#[from] crate::store::StoreError),
}

/// A running HTTP listener.
#[derive(Debug)]
pub struct HttpListener {
    /// The address it is bound to.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl HttpListener {
    /// Binds `[http] listen` and serves the Kinesis API over `store`.
    ///
    /// # Errors
    /// Invalid settings, an address that cannot be bound, an unreadable
    /// token key.
    pub async fn start<S: StreamStore + Clone>(
        config: &Config,
        store: S,
    ) -> Result<Self, StartError> {
        Self::start_with_firehose(config, store, None).await
    }

    /// As [`start`](Self::start), serving the Firehose API over `firehose`
    /// too when given.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_firehose<S: StreamStore + Clone>(
        config: &Config,
        store: S,
        firehose: Option<Arc<Manager<S>>>,
    ) -> Result<Self, StartError> {
        let addr = config.http_listen()?;
        let api_config = ApiConfig {
            region: config.kinesis_region()?.to_owned(),
            write_limits: config.kinesis.write_limits,
        };
        let signer = match store.shared_token_key().await? {
            Some(key) => TokenSigner::from_key(key),
            None => TokenSigner::load_or_create(&config.data_dir)?,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let firehose = firehose.map(|m| FirehoseApi::new(m, api_config.region.clone()));
        let api = Api::new(store, signer, api_config);
        let task = tokio::spawn(super::serve_with_firehose(listener, api, firehose, async {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "Kinesis API listening");
        Ok(Self { addr, stop, task })
    }

    /// Stops accepting, lets requests in progress finish (up to
    /// [`SHUTDOWN_GRACE`]), then returns.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP listener failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP listener task failed"),
            Err(_) => tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "HTTP requests still running at shutdown were abandoned"
            ),
        }
    }
}
