//! The running delivery streams of a collector: those of `[[firehose]]` in the
//! configuration and those created through the Firehose API, one task each.
//!
//! API-created delivery streams, checkpoints and delivery leases live in a
//! [`FirehoseState`]: by default [`FileState`] (`<data-dir>/firehose-state/
//! delivery-streams.json` and `<name>.checkpoint` beside it, never inside a
//! destination directory), so they are started again after a restart; or,
//! for several collectors, a JetStream KV bucket
//! ([`start_with_jetstream`](Manager::start_with_jetstream)). Each delivery
//! stream's task (`worker`) delivers only while it holds the stream's lease.
//! Over a shared state the manager reads the definitions every
//! [`DEFINITIONS_POLL_INTERVAL`], starting delivery streams other collectors
//! created and stopping those they deleted; until then another collector
//! answers NotFound for a delivery stream created elsewhere.
//!
//! A delivery stream of direct puts reads the internal Weir stream
//! [`direct_put_stream`] (`__firehose-<name>`): PutRecord(Batch) appends there
//! durably before answering, so direct puts survive a crash like any record.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::delivery::DeliveryFailure;
use super::destination::{Batch, Destination, DirectoryDestination};
use super::error::FirehoseError;
use super::state::{FileState, FirehoseState, StateError};
use super::worker::Worker;
use crate::store::{Appended, CreateStreamOptions, NewRecord, StoreError, StreamStore};

pub use super::state::{STATE_DIR, STREAMS_FILE};
pub use super::worker::{POLL_INTERVAL, RETRY_OPEN};

/// How often a manager over a shared state reads the definitions, to start
/// delivery streams other collectors created and stop those they deleted.
pub const DEFINITIONS_POLL_INTERVAL: Duration = Duration::from_secs(2);

pub use super::spec::{
    DeliverySpec, DestinationSpec, Source, direct_put_stream, parse_compression,
};

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
    /// The firehose state (definitions, checkpoints, leases) failed.
    #[error("firehose state: {0}")]
    State(#[from] StateError),
}

struct Running {
    spec: DeliverySpec,
    from_config: bool,
    incarnation: u64,
    /// When it was launched: a definitions snapshot taken before cannot
    /// know it.
    launched: Instant,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Why it fails to deliver, while it does (its worker's last poll).
    status: watch::Receiver<Option<DeliveryFailure>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The default destination of a delivery stream: `<data_dir>/firehose/<name>`.
pub fn default_directory(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("firehose").join(name)
}

/// The delivery streams of a collector, over any [`StreamStore`], their
/// definitions, checkpoints and leases in a [`FirehoseState`].
pub struct Manager<S> {
    store: S,
    data_dir: PathBuf,
    s3_defaults: Option<super::s3::S3Settings>,
    state: Arc<dyn FirehoseState>,
    streams: Mutex<BTreeMap<String, Running>>,
    /// The task following definitions made by other collectors (shared
    /// state only).
    follower: std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl<S> std::fmt::Debug for Manager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.data_dir)
            .field("state", &self.state)
            .finish_non_exhaustive()
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
        let state = Arc::new(FileState::new(data_dir));
        Self::start_with_state(store, data_dir, configured, s3_defaults, state).await
    }

    /// [`start_with_s3_defaults`](Self::start_with_s3_defaults) with the
    /// definitions, checkpoints and leases in the JetStream KV bucket
    /// `<prefix>firehose`, shared with the other collectors of the cluster
    /// (see [`KvState`](super::state::KvState)); `collector_id` names this
    /// collector in leases and must differ between collectors.
    ///
    /// # Errors
    /// As [`start`](Self::start); the bucket cannot be opened or created.
    #[cfg(feature = "jetstream")]
    pub async fn start_with_jetstream(
        store: S,
        data_dir: &Path,
        configured: Vec<DeliverySpec>,
        s3_defaults: Option<super::s3::S3Settings>,
        context: async_nats::jetstream::Context,
        prefix: &str,
        collector_id: &str,
    ) -> Result<Arc<Self>, ManagerError> {
        let state = super::state::KvState::open(context, prefix, collector_id).await?;
        Self::start_with_state(store, data_dir, configured, s3_defaults, Arc::new(state)).await
    }

    /// Starts the configured delivery streams and the API-created ones of
    /// `state`; with a shared state, follows the definitions other
    /// collectors create and delete (every [`DEFINITIONS_POLL_INTERVAL`]).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn start_with_state(
        store: S,
        data_dir: &Path,
        configured: Vec<DeliverySpec>,
        s3_defaults: Option<super::s3::S3Settings>,
        state: Arc<dyn FirehoseState>,
    ) -> Result<Arc<Self>, ManagerError> {
        let me = Arc::new(Self {
            store,
            data_dir: data_dir.to_path_buf(),
            s3_defaults,
            state,
            streams: Mutex::new(BTreeMap::new()),
            follower: std::sync::Mutex::new(None),
        });
        let persisted = me.state.load_definitions().await?;
        let mut map = me.streams.lock().await;
        for (spec, from_config, incarnation) in configured
            .into_iter()
            .map(|s| (s, true, 0))
            .chain(persisted.into_iter().map(|d| (d.spec, false, d.incarnation)))
        {
            if map.contains_key(&spec.name) {
                tracing::warn!(delivery_stream = %spec.name, "declared twice; the first one runs");
                continue;
            }
            match me.launch(spec, from_config, incarnation).await {
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
        if me.state.shared() {
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(follow(Arc::downgrade(&me), stopped));
            *me.follower.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((stop, task));
        }
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

    /// Where definitions, checkpoints and leases live.
    pub fn state(&self) -> &Arc<dyn FirehoseState> {
        &self.state
    }

    async fn launch(
        &self,
        spec: DeliverySpec,
        from_config: bool,
        incarnation: u64,
    ) -> Result<Running, ManagerError> {
        let config = spec.delivery_config()?;
        if spec.source == Source::DirectPut {
            let options = CreateStreamOptions { shard_count: 1, ..CreateStreamOptions::default() };
            match self.store.create_stream(&config.source_stream, options).await {
                Ok(_) | Err(StoreError::StreamExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (stop, stopped) = watch::channel(false);
        let destination = AnyDestination::new(&spec)?;
        // Error output of a destination that stores no objects (HTTP) goes to
        // the delivery stream's directory unless a backup directory is set.
        let backup = match (&spec.backup_directory, destination.stores_objects()) {
            (Some(d), _) => Some(DirectoryDestination::new(d.clone())),
            (None, false) => Some(DirectoryDestination::new(spec.directory.clone())),
            (None, true) => None,
        }
        .map(|d| d.with_min_free_bytes(spec.min_free_bytes));
        let (status_tx, status) = watch::channel(None);
        let worker = Worker {
            store: self.store.clone(),
            destination,
            backup,
            config,
            state: self.state.clone(),
            incarnation,
            status: status_tx,
            failures: crate::log_limit::LogLimit::new(),
        };
        let task = tokio::spawn(worker.run(stopped));
        Ok(Running { spec, from_config, incarnation, launched: Instant::now(), stop, task, status })
    }

    /// Creates and starts a delivery stream, and persists it.
    ///
    /// # Errors
    /// The name is taken (here, or in the shared state by another
    /// collector), a setting is invalid, the store or the state failed.
    pub async fn create(&self, spec: DeliverySpec) -> Result<(), ManagerError> {
        let mut map = self.streams.lock().await;
        if map.contains_key(&spec.name) {
            return Err(ManagerError::InUse(spec.name));
        }
        spec.delivery_config()?;
        AnyDestination::new(&spec)?;
        let name = spec.name.clone();
        let incarnation = match self.state.create_definition(&spec).await {
            Ok(i) => i,
            Err(StateError::Exists(n)) => return Err(ManagerError::InUse(n)),
            Err(e) => return Err(e.into()),
        };
        match self.launch(spec, false, incarnation).await {
            Ok(running) => {
                map.insert(name, running);
                Ok(())
            }
            Err(e) => {
                if let Err(undo) = self.state.delete_definition(&name).await {
                    tracing::warn!(delivery_stream = %name, error = %undo, "removing the definition of a delivery stream that failed to start failed");
                }
                Err(e)
            }
        }
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
        match self.state.delete_definition(name).await {
            // Deleted by another collector meanwhile: forget it here too.
            Ok(()) | Err(StateError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(running) = map.remove(name) else {
            return Err(ManagerError::NotFound(name.to_owned()));
        };
        drop(map);
        let (source, incarnation) = (running.spec.source.clone(), running.incarnation);
        running.stop().await;
        if source == Source::DirectPut {
            match self.store.delete_stream(&direct_put_stream(name)).await {
                Ok(()) | Err(StoreError::StreamNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.state.delete_checkpoint(name, incarnation).await?;
        Ok(())
    }

    /// Brings the running API-created delivery streams in line with the
    /// definitions of a shared state: starts those created elsewhere, stops
    /// those deleted (or replaced) elsewhere. Definitions that fail to start
    /// are in `failed`, warned about once.
    async fn follow_definitions(&self, failed: &mut BTreeSet<(String, u64)>) {
        let snapshot = Instant::now();
        let definitions = match self.state.load_definitions().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "reading delivery stream definitions failed");
                return;
            }
        };
        let current: BTreeMap<&str, u64> =
            definitions.iter().map(|d| (d.spec.name.as_str(), d.incarnation)).collect();
        let mut map = self.streams.lock().await;
        let gone: Vec<String> = map
            .iter()
            .filter(|(name, r)| {
                !r.from_config
                    && r.launched < snapshot
                    && current.get(name.as_str()) != Some(&r.incarnation)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopping = Vec::new();
        for name in gone {
            if let Some(r) = map.remove(&name) {
                tracing::info!(delivery_stream = %name, "deleted by another collector; stopped");
                stopping.push(r);
            }
        }
        for d in definitions {
            let key = (d.spec.name.clone(), d.incarnation);
            if map.contains_key(&d.spec.name) || failed.contains(&key) {
                continue;
            }
            let name = d.spec.name.clone();
            match self.launch(d.spec, false, d.incarnation).await {
                Ok(running) => {
                    tracing::info!(delivery_stream = %name, "created by another collector; started");
                    map.insert(name, running);
                }
                Err(e) => {
                    tracing::warn!(delivery_stream = %name, error = %e, "a delivery stream created by another collector cannot start here");
                    failed.insert(key);
                }
            }
        }
        drop(map);
        for r in stopping {
            r.stop().await;
        }
    }

    /// A delivery stream's definition.
    pub async fn describe(&self, name: &str) -> Option<(DeliverySpec, bool)> {
        self.streams.lock().await.get(name).map(|r| (r.spec.clone(), r.from_config))
    }

    /// Why a delivery stream fails to deliver, while it does (a full disk:
    /// paused), as its last poll here saw it; `None` while it delivers, when
    /// another collector holds its lease, or for an unknown name.
    pub async fn failure(&self, name: &str) -> Option<DeliveryFailure> {
        self.streams.lock().await.get(name).and_then(|r| r.status.borrow().clone())
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

    /// Stops every delivery stream (each finishes its poll in progress and
    /// releases its lease).
    pub async fn shutdown(&self) {
        let follower =
            self.follower.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((stop, task)) = follower {
            let _ = stop.send(true);
            let _ = task.await;
        }
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

/// Follows a shared state's definitions until `stopped` or the manager is
/// gone.
async fn follow<S: StreamStore + Clone>(
    manager: std::sync::Weak<Manager<S>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut failed = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            () = tokio::time::sleep(DEFINITIONS_POLL_INTERVAL) => {}
        }
        let Some(manager) = manager.upgrade() else { return };
        manager.follow_definitions(&mut failed).await;
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
            DestinationSpec::Directory => Self::Directory(
                DirectoryDestination::new(spec.directory.clone())
                    .with_min_free_bytes(spec.min_free_bytes),
            ),
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

    async fn has_room(&self, bytes: u64) -> bool {
        match self {
            Self::Directory(d) => d.has_room(bytes).await,
            Self::S3(d) => d.has_room(bytes).await,
            Self::Http(d) => d.has_room(bytes).await,
        }
    }
}
