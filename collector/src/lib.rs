//! weir-collector: the service that ingests telemetry and keeps it in sharded,
//! replayable streams.
//!
//! [`run`] is the whole service: it opens the [`store`] in the configured data
//! directory, starts the listeners, reports what it bound through its `ready`
//! callback (tests start it on port 0 and read the addresses from there), and
//! serves until the `shutdown` future resolves. `main.rs` only parses flags,
//! sets up logging and waits for a signal.

pub mod api;
pub mod certs;
pub mod config;
pub mod firehose;
pub mod ingest;
pub mod log_limit;
pub mod store;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

pub use config::{Config, ConfigError};
use store::{LogStore, StoreError, StreamStore};

/// What a running collector bound and where it keeps its data; written as
/// JSON to `--ready-file` by the binary.
#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where the HTTP listener (Kinesis API, `/health`, `/metrics`) is bound.
    pub http: SocketAddr,
    /// Where the plain MQTT listener is bound, if enabled.
    pub mqtt: Option<SocketAddr>,
    /// Where the MQTT over TLS listener is bound, if enabled.
    pub mqtts: Option<SocketAddr>,
    /// The development CA certificate clients trust, when the TLS listener
    /// uses the development certificates.
    pub tls_ca: Option<PathBuf>,
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
    /// The JetStream store's settings or cluster are unusable.
    #[cfg(feature = "jetstream")]
    #[error("JetStream store: {0}")]
    JetStream(#[from] store::jetstream::SettingsError),
    /// The data directory could not be created.
    #[error("data directory: {0}")]
    DataDir(String),
    /// The HTTP listener could not start.
    #[error(transparent)]
    Http(#[from] api::StartError),
    /// The TLS configuration of the MQTT listener is unusable.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The MQTT listeners could not start.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// The delivery streams could not start.
    #[error("firehose: {0}")]
    Firehose(#[from] firehose::ManagerError),
}

/// Runs the collector until `shutdown` resolves; then stops every shard writer
/// after its final sync.
///
/// # Errors
/// Invalid configuration, or a store that cannot be opened (data directory
/// locked by another process, unreadable catalog, unrecoverable shard).
pub async fn run(
    config: Config,
    ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mqtt_settings = config.mqtt_settings()?;
    let firehose_specs = config.firehose_specs()?;
    #[cfg(feature = "jetstream")]
    if let Some(settings) = config.jetstream_settings()? {
        let store = store::jetstream::JetStreamStore::connect(settings).await?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            RunError::DataDir(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let shared = SharedFirehose {
            context: store.context().clone(),
            prefix: format!("{}_", store.settings().prefix),
            collector_id: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
        };
        return serve(config, mqtt_settings, firehose_specs, store, Some(shared), ready, shutdown)
            .await;
    }
    #[cfg(not(feature = "jetstream"))]
    config.jetstream_settings()?;
    let store_config = config.store_config()?;
    let store = LogStore::open(&config.data_dir, store_config).await?;
    serve(config, mqtt_settings, firehose_specs, store, None, ready, shutdown).await
}

/// Where several collectors keep their shared firehose state (the JetStream
/// backend's KV), and who this collector is among them.
struct SharedFirehose {
    #[cfg(feature = "jetstream")]
    context: async_nats::jetstream::Context,
    #[cfg(feature = "jetstream")]
    prefix: String,
    #[cfg(feature = "jetstream")]
    collector_id: String,
}

/// The service over an open `store`: everything above the store uses it only
/// through [`StreamStore`], so any implementation serves. Closes the store
/// last, also when a listener fails to start.
async fn serve<S: StreamStore + Clone>(
    config: Config,
    mqtt_settings: ingest::Settings,
    firehose_specs: Vec<firehose::DeliverySpec>,
    store: S,
    shared_firehose: Option<SharedFirehose>,
    ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut delivery: Option<std::sync::Arc<firehose::Manager<S>>> = None;
    let listeners = async {
        let s3_defaults = config.firehose_s3.as_ref().map(|s| s.settings(""));
        let manager = match shared_firehose {
            #[cfg(feature = "jetstream")]
            Some(shared) => {
                firehose::Manager::start_with_jetstream(
                    store.clone(),
                    &config.data_dir,
                    firehose_specs,
                    s3_defaults,
                    shared.context,
                    &shared.prefix,
                    &shared.collector_id,
                )
                .await?
            }
            _ => {
                firehose::Manager::start_with_s3_defaults(
                    store.clone(),
                    &config.data_dir,
                    firehose_specs,
                    s3_defaults,
                )
                .await?
            }
        };
        delivery = Some(manager.clone());
        let http =
            api::HttpListener::start_with_firehose(&config, store.clone(), Some(manager)).await?;
        // TLS files live in the data directory, which the store has locked.
        let server_tls = match mqtt_settings.tls_listen {
            Some(_) => Some(tls::server_config(&config.tls, &config.data_dir)?),
            None => None,
        };
        let tls_ca = server_tls.as_ref().and_then(|t| t.dev_ca_cert.clone());
        let ingest =
            ingest::Ingest::start(store.clone(), mqtt_settings, server_tls.map(|t| t.config))
                .await?;
        Ok::<_, RunError>((http, ingest, tls_ca))
    }
    .await;
    let (http, ingest, tls_ca) = match listeners {
        Ok(l) => l,
        Err(e) => {
            if let Some(m) = &delivery {
                m.shutdown().await;
            }
            // Stop the shard writers after their final sync before reporting.
            store.close().await;
            return Err(e);
        }
    };
    ready(&Ready {
        data_dir: config.data_dir.clone(),
        http: http.addr,
        mqtt: ingest.mqtt,
        mqtts: ingest.mqtts,
        tls_ca,
    });
    shutdown.await;
    tracing::info!("shutting down");
    // Connections finish their appends before the store closes.
    ingest.shutdown().await;
    http.stop().await;
    // Delivery streams finish their poll in progress; what they buffered is
    // read again from their checkpoints after a restart.
    if let Some(m) = &delivery {
        m.shutdown().await;
    }
    store.close().await;
    Ok(())
}
