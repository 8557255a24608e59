//! The embedded stream store: streams of sharded segment logs in a local
//! data directory.
//!
//! ```text
//! <data-dir>/
//!   LOCK                      held (flock) while a store has the directory open
//!   catalog.json              streams, shards, lineage (see `catalog`)
//!   streams/<stream id>/shard-<index:012>/<base:020>.log|.index  (see `segment`)
//!   api-token.key             not the store's: the Kinesis API's token key (see `api::token`)
//! ```
//!
//! Metadata operations (create, delete, reshard, retention changes) are
//! serialised by one async mutex around the catalog; appends and reads never
//! take it. Appends find their shard in a routing table (the open shards by
//! hash range) published through a `watch` channel; when a reshard closes a
//! shard, appends queued behind the close come back and are routed again on
//! the new table, so no acknowledged record lands in a closed shard and none
//! is lost in the switch.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use weir_wire::HashRange;

use super::backend::{
    Appended, CreateStreamOptions, MAX_RETENTION_HOURS, MAX_SHARDS_PER_STREAM, MIN_RETENTION_HOURS,
    NewRecord, ReadBatch, ReadLimits, SettingsChange, ShardLifetime, ShardPosition,
    StartingPosition, StreamDescription, StreamDetails, StreamSettings, StreamStore,
};
use super::catalog::{
    Catalog, MAX_TAGS_PER_STREAM, ShardMeta, StreamMeta, StreamStatus, shard_dir,
};
use super::clock::{Clock, SystemClock};
use super::config::StoreConfig;
use super::error::StoreError;
use super::producer::{MAX_PRODUCER_ID_BYTES, ProducerBatch, ProducerTable};
use super::router::Routing;
use super::shard::{ShardShared, parse_shard_id, shard_id};
use super::stream::{ShardHandle, StreamState, children_of, describe};
use super::throttle::WriteLimiter;
use super::writer::Writer;

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) root: PathBuf,
    pub(super) config: StoreConfig,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) catalog: tokio::sync::Mutex<Catalog>,
    pub(super) streams: RwLock<HashMap<String, Arc<StreamState>>>,
    pub(super) _lock: File,
}

/// The embedded store. Cheap to clone; all clones share one store.
#[derive(Debug, Clone)]
pub struct LogStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) fn lock_error(path: &Path, e: std::fs::TryLockError) -> StoreError {
    let source = match e {
        std::fs::TryLockError::WouldBlock => std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another process has this data directory open",
        ),
        std::fs::TryLockError::Error(e) => e,
    };
    StoreError::io("lock", path, source)
}

pub(super) fn validate_stream_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "stream name {name:?} must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'"
        )))
    }
}

pub(super) fn validate_retention(hours: u32) -> Result<(), StoreError> {
    if (MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "retention {hours} h is outside {MIN_RETENTION_HOURS}..={MAX_RETENTION_HOURS} h"
        )))
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| StoreError::ShuttingDown)?
}

impl LogStore {
    /// Opens the store in `root` (created if missing) with the system clock,
    /// recovering every shard.
    ///
    /// # Errors
    /// The directory is locked by another process, the catalog is unreadable,
    /// or a shard cannot be recovered.
    pub async fn open(root: impl Into<PathBuf>, config: StoreConfig) -> Result<Self, StoreError> {
        Self::open_with_clock(root, config, Arc::new(SystemClock)).await
    }

    /// Opens the store with an injected clock (tests, simulations).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with_clock(
        root: impl Into<PathBuf>,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        config.validate().map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let root = root.into();
        let (catalog, lock, streams) = {
            let root = root.clone();
            let config = config.clone();
            let clock = clock.clone();
            blocking(move || recover(&root, &config, clock)).await?
        };
        let inner = Arc::new(Inner {
            root,
            config,
            clock,
            catalog: tokio::sync::Mutex::new(catalog),
            streams: RwLock::new(streams),
            _lock: lock,
        });
        let store = Self { inner };
        store.spawn_retention_task();
        Ok(store)
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(super) fn stream(&self, name: &str) -> Result<Arc<StreamState>, StoreError> {
        self.inner
            .streams
            .read()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))
    }

    /// Stops every writer after it has written and synced what it was given.
    pub async fn close(&self) {
        let streams: Vec<Arc<StreamState>> =
            self.inner.streams.read().map(|s| s.values().cloned().collect()).unwrap_or_default();
        for stream in streams {
            for h in stream.all_shards() {
                if let Err(e) = h.close_writer().await {
                    tracing::warn!(stream = %stream.name, shard = %h.shared.id, error = %e, "closing shard writer");
                }
            }
        }
    }

    /// Replaces the catalog with `next` after saving it.
    pub(super) async fn save_catalog(
        &self,
        catalog: &mut Catalog,
        next: Catalog,
    ) -> Result<(), StoreError> {
        let root = self.inner.root.clone();
        let save = next.clone();
        blocking(move || save.save(&root)).await?;
        *catalog = next;
        Ok(())
    }

    /// Opens new shards' directories and writers (not yet routed).
    pub(super) async fn open_new_shards(
        &self,
        stream_name: &str,
        stream_id: u64,
        indexes: Vec<u64>,
        seed: Option<ProducerTable>,
    ) -> Result<Vec<Arc<ShardHandle>>, StoreError> {
        let mut out = Vec::with_capacity(indexes.len());
        for index in indexes {
            let dir = shard_dir(&self.inner.root, stream_id, index);
            let name = stream_name.to_owned();
            let seed = seed.clone();
            let shared = Arc::new(
                blocking(move || Ok(ShardShared::open(&name, dir, index, None, seed.as_ref())?))
                    .await?,
            );
            let writer =
                Writer::start(shared.clone(), self.inner.config.clone(), self.inner.clock.clone())?;
            out.push(Arc::new(ShardHandle {
                shared,
                writer: Mutex::new(Some(Arc::new(writer))),
                closed: Mutex::new(None),
            }));
        }
        Ok(out)
    }
}

/// Opens the data directory: lock, catalog, unfinished deletions, shards.
#[allow(clippy::type_complexity)]
fn recover(
    root: &Path,
    config: &StoreConfig,
    clock: Arc<dyn Clock>,
) -> Result<(Catalog, File, HashMap<String, Arc<StreamState>>), StoreError> {
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
            let dir = shard_dir(root, meta.id, s.index);
            let shared = Arc::new(ShardShared::open(
                &meta.name,
                dir,
                s.index,
                s.closed.map(|c| c.end_offset),
                None,
            )?);
            let writer = if s.is_open() {
                Some(Arc::new(Writer::start(shared.clone(), config.clone(), clock.clone())?))
            } else {
                None
            };
            let closed = s.closed.map(|c| (c.end_offset, children_of(meta, s.index)));
            shards.insert(
                s.index,
                Arc::new(ShardHandle {
                    shared,
                    writer: Mutex::new(writer),
                    closed: Mutex::new(closed),
                }),
            );
        }
        let state = Arc::new(StreamState {
            id: meta.id,
            name: meta.name.clone(),
            retention_ms: AtomicU64::new(u64::from(meta.retention_hours) * 3_600_000),
            routing: watch::Sender::new(Arc::new(Routing::default())),
            shards: RwLock::new(shards),
            write_limits: AtomicBool::new(meta.write_limits),
            limiter: WriteLimiter::default(),
        });
        state.publish_routing(meta);
        streams.insert(meta.name.clone(), state);
    }
    tracing::info!(root = %root.display(), streams = streams.len(), "store opened");
    Ok((catalog, lock, streams))
}

pub(super) fn validate_tag_count(count: usize) -> Result<(), StoreError> {
    if count > MAX_TAGS_PER_STREAM {
        return Err(StoreError::LimitExceeded(format!(
            "a stream carries at most {MAX_TAGS_PER_STREAM} tags, {count} asked for"
        )));
    }
    Ok(())
}

fn settings_of(meta: &StreamMeta) -> StreamSettings {
    StreamSettings { mode: meta.mode, write_limits: meta.write_limits, tags: meta.tags.clone() }
}

pub(super) fn remove_dir_if_exists(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", dir, e)),
    }
}

impl StreamStore for LogStore {
    async fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
        settings: StreamSettings,
    ) -> Result<StreamDescription, StoreError> {
        validate_stream_name(name)?;
        validate_tag_count(settings.tags.len())?;
        validate_retention(options.retention_hours)?;
        if !(1..=MAX_SHARDS_PER_STREAM).contains(&options.shard_count) {
            return Err(StoreError::InvalidArgument(format!(
                "shard count {} is outside 1..={MAX_SHARDS_PER_STREAM}",
                options.shard_count
            )));
        }
        let mut catalog = self.inner.catalog.lock().await;
        if catalog.stream(name).is_some() {
            return Err(StoreError::StreamExists(name.to_owned()));
        }
        let mut next = catalog.clone();
        let id = next.next_stream_id;
        next.next_stream_id += 1;
        let now = self.inner.clock.now_ms();
        let count = u64::from(options.shard_count);
        let shards = (0..count)
            .map(|i| {
                let r = HashRange::uniform(count, i)
                    .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
                Ok(ShardMeta {
                    index: i,
                    hash_start: r.start,
                    hash_end: r.end,
                    parent: None,
                    adjacent_parent: None,
                    created_ms: now,
                    closed: None,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let meta = StreamMeta {
            id,
            name: name.to_owned(),
            status: StreamStatus::Active,
            created_ms: now,
            retention_hours: options.retention_hours,
            next_shard_index: count,
            shards,
            mode: settings.mode,
            write_limits: settings.write_limits,
            tags: settings.tags,
        };
        next.streams.push(meta.clone());
        let handles = match self.open_new_shards(name, id, (0..count).collect(), None).await {
            Ok(h) => h,
            Err(e) => {
                let _ = remove_dir_if_exists(&Catalog::stream_dir(&self.inner.root, id));
                return Err(e);
            }
        };
        if let Err(e) = self.save_catalog(&mut catalog, next).await {
            for h in &handles {
                let _ = h.close_writer().await;
            }
            let _ = remove_dir_if_exists(&Catalog::stream_dir(&self.inner.root, id));
            return Err(e);
        }
        let state = Arc::new(StreamState {
            id,
            name: name.to_owned(),
            retention_ms: AtomicU64::new(u64::from(options.retention_hours) * 3_600_000),
            routing: watch::Sender::new(Arc::new(Routing::default())),
            shards: RwLock::new((0..count).zip(handles).collect()),
            write_limits: AtomicBool::new(meta.write_limits),
            limiter: WriteLimiter::default(),
        });
        state.publish_routing(&meta);
        if let Ok(mut streams) = self.inner.streams.write() {
            streams.insert(name.to_owned(), state);
        }
        tracing::info!(stream = name, shards = count, "stream created");
        Ok(describe(&meta))
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StoreError> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let meta =
            next.stream_mut(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
        meta.status = StreamStatus::Deleting;
        let id = meta.id;
        self.save_catalog(&mut catalog, next).await?;
        let state = self.inner.streams.write().ok().and_then(|mut s| s.remove(name));
        if let Some(state) = state {
            state.routing.send_replace(Arc::new(Routing::default()));
            for h in state.all_shards() {
                let _ = h.close_writer().await;
            }
        }
        let dir = Catalog::stream_dir(&self.inner.root, id);
        blocking(move || remove_dir_if_exists(&dir)).await?;
        let mut next = catalog.clone();
        next.streams.retain(|s| s.id != id);
        self.save_catalog(&mut catalog, next).await?;
        tracing::info!(stream = name, "stream deleted");
        Ok(())
    }

    async fn list_streams(&self) -> Result<Vec<String>, StoreError> {
        let catalog = self.inner.catalog.lock().await;
        let mut names: Vec<String> = catalog
            .streams
            .iter()
            .filter(|s| s.status != StreamStatus::Deleting)
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamDescription, StoreError> {
        let catalog = self.inner.catalog.lock().await;
        catalog
            .stream(name)
            .map(describe)
            .ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))
    }

    async fn append(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let results = self.append_tagged(stream, records, None).await?;
        Ok(results
            .into_iter()
            .map(|r| {
                r.and_then(|a| {
                    a.ok_or_else(|| {
                        StoreError::InvalidArgument(
                            "an untagged append was taken for a duplicate".into(),
                        )
                    })
                })
            })
            .collect())
    }

    async fn append_batch(
        &self,
        stream: &str,
        producer: ProducerBatch,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        if producer.producer_id.is_empty() || producer.producer_id.len() > MAX_PRODUCER_ID_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "producer id must be 1 to {MAX_PRODUCER_ID_BYTES} bytes, not {}",
                producer.producer_id.len()
            )));
        }
        self.append_tagged(stream, records, Some(producer)).await
    }

    async fn position(
        &self,
        stream: &str,
        shard: &str,
        start: StartingPosition,
    ) -> Result<ShardPosition, StoreError> {
        let state = self.stream(stream)?;
        let not_found =
            || StoreError::ShardNotFound { stream: stream.to_owned(), shard: shard.to_owned() };
        let index = parse_shard_id(shard).ok_or_else(not_found)?;
        let handle = state.shard(index).ok_or_else(not_found)?;
        let shared = handle.shared.clone();
        let end = shared.next_offset();
        let check_seq = |s: &crate::store::SequenceNumber| {
            if s.shard_index != index {
                return Err(StoreError::InvalidArgument(format!(
                    "sequence number {s} belongs to {}, not {shard}",
                    shard_id(s.shard_index)
                )));
            }
            if s.offset >= end {
                return Err(StoreError::InvalidArgument(format!(
                    "sequence number {s} is past the last record of {shard}"
                )));
            }
            Ok(s.offset)
        };
        let offset = match start {
            StartingPosition::TrimHorizon => shared.trim_horizon(),
            StartingPosition::Latest => end,
            StartingPosition::AtSequence(s) => check_seq(&s)?.max(shared.trim_horizon()),
            StartingPosition::AfterSequence(s) => (check_seq(&s)? + 1).max(shared.trim_horizon()),
            StartingPosition::AtTimestamp(ts) => {
                blocking(move || shared.offset_at_time(ts)).await?
            }
        };
        Ok(ShardPosition { stream_id: state.id, shard_index: index, offset })
    }

    async fn read(
        &self,
        stream: &str,
        from: ShardPosition,
        limits: ReadLimits,
    ) -> Result<ReadBatch, StoreError> {
        let state = self.stream(stream)?;
        if from.stream_id != state.id {
            return Err(StoreError::InvalidArgument(format!(
                "position belongs to an earlier stream named {stream:?}"
            )));
        }
        let handle = state.shard(from.shard_index).ok_or_else(|| StoreError::ShardNotFound {
            stream: stream.to_owned(),
            shard: shard_id(from.shard_index),
        })?;
        let shared = handle.shared.clone();
        let read = blocking(move || shared.read(from.offset, limits)).await?;
        let last_arrival = read.records.last().map(|r| r.arrival_ms);
        let caught_up = read.next_offset >= read.end_offset;
        let millis_behind_latest = match (caught_up, last_arrival) {
            (false, Some(t)) => handle.shared.last_arrival_ms().saturating_sub(t),
            _ => 0,
        };
        let end_of_shard = match handle.closed() {
            Some((end, children)) if read.next_offset >= end => Some(children),
            _ => None,
        };
        let records = read.records;
        Ok(ReadBatch {
            records,
            next: ShardPosition { offset: read.next_offset, ..from },
            millis_behind_latest,
            end_of_shard,
        })
    }

    async fn split_shard(
        &self,
        stream: &str,
        shard: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StoreError> {
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        let index = parse_shard_id(shard).ok_or_else(|| StoreError::ShardNotFound {
            stream: stream.to_owned(),
            shard: shard.to_owned(),
        })?;
        self.split_locked(&mut catalog, &state, index, new_starting_hash_key).await
    }

    async fn merge_shards(
        &self,
        stream: &str,
        shard: &str,
        adjacent: &str,
    ) -> Result<(), StoreError> {
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        let parse = |id: &str| {
            parse_shard_id(id).ok_or_else(|| StoreError::ShardNotFound {
                stream: stream.to_owned(),
                shard: id.to_owned(),
            })
        };
        let (a, b) = (parse(shard)?, parse(adjacent)?);
        self.merge_locked(&mut catalog, &state, a, b).await
    }

    async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), StoreError> {
        if !(1..=MAX_SHARDS_PER_STREAM).contains(&target) {
            return Err(StoreError::InvalidArgument(format!(
                "target shard count {target} is outside 1..={MAX_SHARDS_PER_STREAM}"
            )));
        }
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        let count = u64::from(target);
        let targets: Vec<HashRange> = (0..count)
            .map(|i| {
                HashRange::uniform(count, i).map_err(|e| StoreError::InvalidArgument(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        // 1. Split wherever a target range starts inside an open shard.
        for t in targets.iter().skip(1) {
            let meta = Self::active_meta(&catalog, stream)?;
            let holder = meta
                .open_shards()
                .into_iter()
                .find(|s| s.range().contains(t.start))
                .map(|s| (s.index, s.hash_start));
            if let Some((index, start)) = holder
                && start != t.start
            {
                self.split_locked(&mut catalog, &state, index, t.start).await?;
            }
        }
        // 2. Merge the shards inside each target range into one.
        for t in &targets {
            loop {
                let meta = Self::active_meta(&catalog, stream)?;
                let inside: Vec<u64> = meta
                    .open_shards()
                    .into_iter()
                    .filter(|s| s.hash_start >= t.start && s.hash_end <= t.end)
                    .map(|s| s.index)
                    .collect();
                if inside.len() < 2 {
                    break;
                }
                self.merge_locked(&mut catalog, &state, inside[0], inside[1]).await?;
            }
        }
        Ok(())
    }

    async fn set_retention(&self, stream: &str, hours: u32) -> Result<(), StoreError> {
        validate_retention(hours)?;
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let meta =
            next.stream_mut(stream).ok_or_else(|| StoreError::StreamNotFound(stream.to_owned()))?;
        meta.retention_hours = hours;
        self.save_catalog(&mut catalog, next).await?;
        state.retention_ms.store(u64::from(hours) * 3_600_000, Ordering::Release);
        Ok(())
    }

    async fn create_stream(
        &self,
        name: &str,
        options: CreateStreamOptions,
    ) -> Result<StreamDescription, StoreError> {
        self.create_stream_with(name, options, StreamSettings::default()).await
    }

    async fn stream_details(&self, name: &str) -> Result<StreamDetails, StoreError> {
        let catalog = self.inner.catalog.lock().await;
        let meta =
            catalog.stream(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
        let lifetimes = meta
            .shards
            .iter()
            .map(|s| {
                let life = ShardLifetime {
                    created_ms: s.created_ms,
                    closed_ms: s.closed.map(|c| c.closed_ms),
                };
                (s.index, life)
            })
            .collect();
        Ok(StreamDetails { description: describe(meta), settings: settings_of(meta), lifetimes })
    }

    async fn change_stream_settings(
        &self,
        name: &str,
        changes: Vec<SettingsChange>,
    ) -> Result<StreamSettings, StoreError> {
        let state = self.stream(name)?;
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let meta =
            next.stream_mut(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
        for change in changes {
            match change {
                SettingsChange::Mode(mode) => meta.mode = mode,
                SettingsChange::WriteLimits(on) => meta.write_limits = on,
                SettingsChange::AddTags(tags) => meta.tags.extend(tags),
                SettingsChange::RemoveTags(keys) => {
                    for k in keys {
                        meta.tags.remove(&k);
                    }
                }
            }
        }
        validate_tag_count(meta.tags.len())?;
        let settings = settings_of(meta);
        self.save_catalog(&mut catalog, next).await?;
        state.write_limits.store(settings.write_limits, Ordering::Release);
        Ok(settings)
    }
}
