//! The running delivery streams of a collector: those of `[[firehose]]` in the
//! configuration and those created through the Firehose API, one task each.
//!
//! API-created delivery streams are kept in `<data-dir>/firehose-state/
//! delivery-streams.json` (written to a temp file, fsync'd, renamed; mode
//! `0600`, as it can hold S3 and HTTP endpoint keys), so they are started
//! again after a restart. Checkpoints live beside it
//! (`<name>.checkpoint`), never inside a destination directory.
//!
//! A delivery stream of direct puts reads the internal Weir stream
//! [`direct_put_stream`] (`__firehose-<name>`): PutRecord(Batch) appends there
//! durably before answering, so direct puts survive a crash like any record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::config::{BufferingHints, Compression, DeliveryConfig, RecordFormat};
use super::delivery::DeliveryStream;
use super::destination::{Batch, Destination, DirectoryDestination};
use super::error::FirehoseError;
use crate::store::{
    Appended, CreateStreamOptions, NewRecord, StoreError, StreamStore, SystemClock,
};

/// How often a delivery stream polls its source.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a delivery stream waits before opening again after a failure
/// (for example a source stream that does not exist yet).
pub const RETRY_OPEN: Duration = Duration::from_secs(1);
/// The state directory under the data directory.
pub const STATE_DIR: &str = "firehose-state";
/// The file of API-created delivery streams in [`STATE_DIR`].
pub const STREAMS_FILE: &str = "delivery-streams.json";

/// The internal stream that holds a delivery stream's direct puts.
pub fn direct_put_stream(name: &str) -> String {
    format!("__firehose-{name}")
}

/// Where a delivery stream's records come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// PutRecord / PutRecordBatch, through the internal stream.
    DirectPut,
    /// A Weir data stream.
    Stream(String),
}

/// Everything that defines a delivery stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverySpec {
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: Source,
    /// The destination directory.
    pub directory: PathBuf,
    /// Size hint, MiB.
    pub size_mib: u32,
    /// Interval hint, seconds.
    pub interval_secs: u32,
    /// Records separated by newlines.
    pub newline_delimited: bool,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// Prefix template (empty: the default).
    pub prefix: String,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// Error output prefix template (empty: the default).
    #[serde(default)]
    pub error_prefix: String,
    /// Retry duration, seconds.
    #[serde(default = "default_retry_duration")]
    pub retry_duration_secs: u32,
    /// Dynamic partitioning keys: name and query.
    #[serde(default)]
    pub partition_keys: Vec<(String, String)>,
    /// Where error output goes instead of the destination.
    #[serde(default)]
    pub backup_directory: Option<PathBuf>,
    /// The destination (default: the directory `directory`).
    #[serde(default)]
    pub destination: DestinationSpec,
    /// Parquet output with this schema instead of the records as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<super::parquet::ParquetSchema>,
}

fn default_retry_duration() -> u32 {
    super::config::DEFAULT_RETRY_DURATION_SECS
}

/// The kind of destination of a delivery stream and its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationSpec {
    /// [`DeliverySpec::directory`].
    #[default]
    Directory,
    /// An S3-compatible bucket.
    S3(super::s3::S3Settings),
    /// An HTTP endpoint.
    Http(super::http::HttpSettings),
}

impl DeliverySpec {
    /// The stream the delivery stream reads.
    pub fn source_stream(&self) -> String {
        match &self.source {
            Source::DirectPut => direct_put_stream(&self.name),
            Source::Stream(s) => s.clone(),
        }
    }

    /// The delivery configuration, checked.
    ///
    /// # Errors
    /// The first invalid setting.
    pub fn delivery_config(&self) -> Result<DeliveryConfig, FirehoseError> {
        let compression =
            parse_compression(&self.compression).ok_or_else(|| FirehoseError::Destination {
                key: "compression".into(),
                reason: format!("{:?} is not none, gzip or zstd", self.compression),
            })?;
        let mut config = DeliveryConfig::new(self.name.clone(), self.source_stream());
        config.buffering =
            BufferingHints { size_mib: self.size_mib, interval_secs: self.interval_secs };
        config.format = if self.newline_delimited {
            RecordFormat::NewlineDelimited
        } else {
            RecordFormat::AsIs
        };
        if let Some(schema) = &self.parquet {
            let format = schema.clone().into_format();
            let format = format.map_err(|e| FirehoseError::InvalidFormat(e.to_string()))?;
            config.format = RecordFormat::Parquet(format);
        }
        config.compression = compression;
        config.prefix = self.prefix.clone();
        config.error_prefix = self.error_prefix.clone();
        config.retry_duration_secs = self.retry_duration_secs;
        config.partition_keys = self.partition_keys.clone();
        config.validate()?;
        match &self.destination {
            DestinationSpec::Directory => {}
            DestinationSpec::S3(s) => s.validate()?,
            DestinationSpec::Http(h) => h.validate()?,
        }
        Ok(config)
    }
}

/// `none`, `gzip`, `zstd` (any case; `uncompressed` for none, as Firehose
/// names it).
pub fn parse_compression(s: &str) -> Option<Compression> {
    match s.to_ascii_lowercase().as_str() {
        "" | "none" | "uncompressed" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Why a manager operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No delivery stream of that name.
    #[error("Firehose {0} under account 000000000000 not found.")]
    NotFound(String),
    /// The name is taken.
    #[error("Firehose {0} under account 000000000000 already exists.")]
    InUse(String),
    /// Declared in the configuration: not deletable through the API.
    #[error("Firehose {0} is declared in the collector's configuration and cannot be deleted")]
    FromConfig(String),
    /// Direct puts to a delivery stream that reads a data stream.
    #[error("Firehose {0} reads a Kinesis stream; put records into that stream instead")]
    NotDirectPut(String),
    /// An invalid setting.
    #[error(transparent)]
    Invalid(#[from] FirehoseError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

struct Running {
    spec: DeliverySpec,
    from_config: bool,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The default destination of a delivery stream: `<data_dir>/firehose/<name>`.
pub fn default_directory(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("firehose").join(name)
}

/// The delivery streams of a collector, over any [`StreamStore`].
pub struct Manager<S> {
    store: S,
    data_dir: PathBuf,
    s3_defaults: Option<super::s3::S3Settings>,
    streams: Mutex<BTreeMap<String, Running>>,
}

impl<S> std::fmt::Debug for Manager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

impl<S: StreamStore + Clone> Manager<S> {
    /// Starts the configured delivery streams and those persisted by the API.
    ///
    /// # Errors
    /// An unreadable state file, an invalid delivery stream, or an internal
    /// stream that cannot be created.
    pub async fn start(
        store: S,
        data_dir: &Path,
        configured: Vec<DeliverySpec>,
    ) -> Result<Arc<Self>, ManagerError> {
        Self::start_with_s3_defaults(store, data_dir, configured, None).await
    }

    /// [`start`](Self::start), with the S3 endpoint and credentials of
    /// API-created S3 delivery streams (`[firehose_s3]`; the bucket is
    /// replaced by the one each names).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_s3_defaults(
        store: S,
        data_dir: &Path,
        configured: Vec<DeliverySpec>,
        s3_defaults: Option<super::s3::S3Settings>,
    ) -> Result<Arc<Self>, ManagerError> {
        let me = Arc::new(Self {
            store,
            data_dir: data_dir.to_path_buf(),
            s3_defaults,
            streams: Mutex::new(BTreeMap::new()),
        });
        let persisted = me.load()?;
        let mut map = me.streams.lock().await;
        for (spec, from_config) in configured
            .into_iter()
            .map(|s| (s, true))
            .chain(persisted.into_iter().map(|s| (s, false)))
        {
            if map.contains_key(&spec.name) {
                tracing::warn!(delivery_stream = %spec.name, "declared twice; the first one runs");
                continue;
            }
            match me.launch(spec, from_config).await {
                Ok(running) => {
                    map.insert(running.spec.name.clone(), running);
                }
                Err(e) => {
                    drop(map);
                    me.shutdown().await;
                    return Err(e);
                }
            }
        }
        drop(map);
        Ok(me)
    }

    /// S3 settings of an API-created delivery stream writing to `bucket`.
    pub fn s3_settings(&self, bucket: &str) -> super::s3::S3Settings {
        match &self.s3_defaults {
            Some(d) => super::s3::S3Settings { bucket: bucket.to_owned(), ..d.clone() },
            None => super::s3::S3Settings::new(bucket),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn state_dir(&self) -> PathBuf {
        self.data_dir.join(STATE_DIR)
    }

    fn load(&self) -> Result<Vec<DeliverySpec>, ManagerError> {
        let path = self.state_dir().join(STREAMS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ManagerError::Invalid(FirehoseError::Checkpoint {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => {
                Err(ManagerError::Invalid(FirehoseError::Io { op: "reading", path, source }))
            }
        }
    }

    fn save(&self, map: &BTreeMap<String, Running>) -> Result<(), ManagerError> {
        let specs: Vec<&DeliverySpec> =
            map.values().filter(|r| !r.from_config).map(|r| &r.spec).collect();
        let dir = self.state_dir();
        let path = dir.join(STREAMS_FILE);
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ManagerError::Invalid(FirehoseError::Io { op, path, source })
        };
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let bytes = serde_json::to_vec_pretty(&specs).map_err(|e| {
            io("encoding", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        // It can hold S3 secret keys and HTTP endpoint access keys.
        weir_wire::durable_file::replace_private_file(&path, &bytes).map_err(io("replacing", &path))
    }

    async fn launch(&self, spec: DeliverySpec, from_config: bool) -> Result<Running, ManagerError> {
        let config = spec.delivery_config()?;
        if spec.source == Source::DirectPut {
            let options = CreateStreamOptions { shard_count: 1, ..CreateStreamOptions::default() };
            match self.store.create_stream(&config.source_stream, options).await {
                Ok(_) | Err(StoreError::StreamExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (stop, mut stopped) = watch::channel(false);
        let store = self.store.clone();
        let destination = AnyDestination::new(&spec)?;
        // Error output of a destination that stores no objects (HTTP) goes to
        // the delivery stream's directory unless a backup directory is set.
        let backup = match (&spec.backup_directory, destination.stores_objects()) {
            (Some(d), _) => Some(DirectoryDestination::new(d.clone())),
            (None, false) => Some(DirectoryDestination::new(spec.directory.clone())),
            (None, true) => None,
        };
        let checkpoint = self.state_dir().join(format!("{}.checkpoint", spec.name));
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            tokio::pin!(shutdown);
            loop {
                let opened = DeliveryStream::open_with_backup(
                    store.clone(),
                    destination.clone(),
                    backup.clone(),
                    config.clone(),
                    checkpoint.clone(),
                    Arc::new(SystemClock),
                )
                .await;
                match opened {
                    Ok((stream, _)) => {
                        tracing::info!(delivery_stream = %config.name, "delivery stream started");
                        stream.run(POLL_INTERVAL, &mut shutdown).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(delivery_stream = %config.name, error = %e, "opening failed; retrying");
                    }
                }
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(RETRY_OPEN) => {}
                }
            }
        });
        Ok(Running { spec, from_config, stop, task })
    }

    /// Creates and starts a delivery stream, and persists it.
    ///
    /// # Errors
    /// The name is taken, a setting is invalid, the store failed.
    pub async fn create(&self, spec: DeliverySpec) -> Result<(), ManagerError> {
        let mut map = self.streams.lock().await;
        if map.contains_key(&spec.name) {
            return Err(ManagerError::InUse(spec.name));
        }
        spec.delivery_config()?;
        let name = spec.name.clone();
        let running = self.launch(spec, false).await?;
        map.insert(running.spec.name.clone(), running);
        if let Err(e) = self.save(&map) {
            if let Some(r) = map.get(&name) {
                let _ = r.stop.send(true);
            }
            map.remove(&name);
            return Err(e);
        }
        Ok(())
    }

    /// Stops and forgets a delivery stream (its internal stream of direct
    /// puts too; delivered objects stay).
    ///
    /// # Errors
    /// Unknown, or declared in the configuration.
    pub async fn delete(&self, name: &str) -> Result<(), ManagerError> {
        let mut map = self.streams.lock().await;
        match map.get(name) {
            None => return Err(ManagerError::NotFound(name.to_owned())),
            Some(r) if r.from_config => return Err(ManagerError::FromConfig(name.to_owned())),
            Some(_) => {}
        }
        let Some(running) = map.remove(name) else {
            return Err(ManagerError::NotFound(name.to_owned()));
        };
        self.save(&map)?;
        drop(map);
        let _ = running.stop.send(true);
        let _ = running.task.await;
        if running.spec.source == Source::DirectPut {
            match self.store.delete_stream(&direct_put_stream(name)).await {
                Ok(()) | Err(StoreError::StreamNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let _ = std::fs::remove_file(self.state_dir().join(format!("{name}.checkpoint")));
        Ok(())
    }

    /// A delivery stream's definition.
    pub async fn describe(&self, name: &str) -> Option<(DeliverySpec, bool)> {
        self.streams.lock().await.get(name).map(|r| (r.spec.clone(), r.from_config))
    }

    /// Names of all delivery streams, sorted.
    pub async fn list(&self) -> Vec<(String, Source)> {
        self.streams
            .lock()
            .await
            .values()
            .map(|r| (r.spec.name.clone(), r.spec.source.clone()))
            .collect()
    }

    /// Appends direct puts to a delivery stream's internal stream; one result
    /// per record.
    ///
    /// # Errors
    /// Unknown delivery stream, not a direct-put one, or a store failure of
    /// the whole call.
    pub async fn put(
        &self,
        name: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Appended, StoreError>>, ManagerError> {
        let source = match self.streams.lock().await.get(name) {
            None => return Err(ManagerError::NotFound(name.to_owned())),
            Some(r) => r.spec.source.clone(),
        };
        if source != Source::DirectPut {
            return Err(ManagerError::NotDirectPut(name.to_owned()));
        }
        Ok(self.store.append(&direct_put_stream(name), records).await?)
    }

    /// Stops every delivery stream (each finishes its poll in progress).
    pub async fn shutdown(&self) {
        let running: Vec<Running> =
            std::mem::take(&mut *self.streams.lock().await).into_values().collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }
}

/// The destinations a manager runs.
#[derive(Debug, Clone)]
pub enum AnyDestination {
    /// A directory.
    Directory(DirectoryDestination),
    /// An S3-compatible bucket.
    S3(super::s3::S3Destination),
    /// An HTTP endpoint.
    Http(super::http::HttpDestination),
}

impl AnyDestination {
    /// The destination a spec names.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidDestination`] when its client cannot be built.
    pub fn new(spec: &DeliverySpec) -> Result<Self, FirehoseError> {
        Ok(match &spec.destination {
            DestinationSpec::Directory => {
                Self::Directory(DirectoryDestination::new(spec.directory.clone()))
            }
            DestinationSpec::S3(s) => Self::S3(super::s3::S3Destination::new(s)?),
            DestinationSpec::Http(h) => Self::Http(super::http::HttpDestination::new(h)?),
        })
    }
}

impl Destination for AnyDestination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        match self {
            Self::Directory(d) => d.put(key, body).await,
            Self::S3(d) => d.put(key, body).await,
            Self::Http(d) => d.put(key, body).await,
        }
    }

    async fn deliver(&self, batch: Batch) -> Result<(), FirehoseError> {
        match self {
            Self::Directory(d) => d.deliver(batch).await,
            Self::S3(d) => d.deliver(batch).await,
            Self::Http(d) => d.deliver(batch).await,
        }
    }

    fn wants_body(&self) -> bool {
        match self {
            Self::Directory(d) => d.wants_body(),
            Self::S3(d) => d.wants_body(),
            Self::Http(d) => d.wants_body(),
        }
    }

    fn stores_objects(&self) -> bool {
        match self {
            Self::Directory(d) => d.stores_objects(),
            Self::S3(d) => d.stores_objects(),
            Self::Http(d) => d.stores_objects(),
        }
    }

    fn error_output_type(&self) -> &'static str {
        match self {
            Self::Directory(d) => d.error_output_type(),
            Self::S3(d) => d.error_output_type(),
            Self::Http(d) => d.error_output_type(),
        }
    }
}
