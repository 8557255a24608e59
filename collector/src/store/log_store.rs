//! The embedded stream store: streams of sharded segment logs in a local
//! data directory.
//!
//! Metadata operations (create, delete, reshard, retention changes) are
//! serialised by one async mutex around the catalog; appends and reads never
//! take it. Appends find their shard in a routing table (the open shards by
//! hash range) published through a `watch` channel; when a reshard closes a
//! shard, appends queued behind the close come back and are routed again on
//! the new table, so no acknowledged record lands in a closed shard and none
//! is lost in the switch.
//!
//! This file is the whole `impl LogStore`: it checks arguments, looks streams
//! up, holds the catalog lock, and hands the work to the parts, each a free
//! function over the state it needs: `data_dir::open` (start-up),
//! `router::append`, `reshard::{split, merge, update_shard_count}` and
//! `retention::enforce`, which take a `StreamState` and the `StoreEnv`
//! (data directory, configuration, clock) and never the store itself.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

use weir_wire::batch::MAX_PRODUCER_ID_BYTES;
use weir_wire::validate::MAX_STREAM_NAME_CHARS;

use super::backend::{
    Appended, CreateStreamOptions, MAX_RETENTION_HOURS, MAX_SHARDS_PER_STREAM, MIN_RETENTION_HOURS,
    NewRecord, ReadBatch, ReadLimits, SettingsChange, ShardLifetime, ShardPosition,
    StartingPosition, StreamDescription, StreamDetails, StreamSettings, StreamStore,
};
use super::catalog::{Catalog, MAX_TAGS_PER_STREAM, ShardMeta, StreamMeta, StreamStatus};
use super::clock::{Clock, SystemClock};
use super::config::StoreConfig;
use super::data_dir;
use super::env::{StoreEnv, blocking, remove_dir_if_exists};
use super::error::StoreError;
use super::file_io::{FileIo, OsFileIo};
use super::producer::ProducerBatch;
use super::reshard;
use super::retention::{self, RetentionReport};
use super::router::{self, AppendResults};
use super::sequence::SequenceNumber;
use super::shard::{parse_shard_id, shard_id};
use super::space::DiskSpace;
use super::stream::{StreamState, describe};

/// What every clone of a [`LogStore`] shares.
#[derive(Debug)]
struct Inner {
    env: StoreEnv,
    space: DiskSpace,
    catalog: tokio::sync::Mutex<Catalog>,
    streams: RwLock<HashMap<String, Arc<StreamState>>>,
    _lock: File,
}

/// The embedded store. Cheap to clone; all clones share one store.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// The wire crate's stream-name rule, refused in the store's words.
pub(super) fn validate_stream_name(name: &str) -> Result<(), StoreError> {
    weir_wire::validate::validate_stream_name(name).map_err(|_| {
        StoreError::InvalidArgument(format!(
            "stream name {name:?} must be 1 to {MAX_STREAM_NAME_CHARS} characters of a-z, A-Z, 0-9, '_', '.', '-'"
        ))
    })
}

/// The offset `s` names in shard `index` (`shard` is its id), whose records
/// end before `end`.
///
/// # Errors
/// [`StoreError::InvalidArgument`] if `s` belongs to another shard or lies
/// past the shard's last record.
pub(super) fn sequence_offset(
    s: &SequenceNumber,
    index: u64,
    shard: &str,
    end: u64,
) -> Result<u64, StoreError> {
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
        Self::open_with(root, config, clock, Arc::new(OsFileIo)).await
    }

    /// Opens the store with an injected clock and file layer (tests inject
    /// write and fsync faults through [`FaultyFileIo`](super::FaultyFileIo)).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_with(
        root: impl Into<PathBuf>,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        io: Arc<dyn FileIo>,
    ) -> Result<Self, StoreError> {
        config.validate().map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let every = config.retention_check_interval;
        let min_free_bytes = config.min_free_bytes;
        let env = StoreEnv::new(root.into(), config, clock, io);
        let (env, opened) = blocking(move || {
            let opened = data_dir::open(&env)?;
            Ok((env, opened))
        })
        .await?;
        let space = DiskSpace::new(env.root(), min_free_bytes);
        let inner = Arc::new(Inner {
            space,
            env,
            catalog: tokio::sync::Mutex::new(opened.catalog),
            streams: RwLock::new(opened.streams),
            _lock: opened.lock,
        });
        spawn_retention_task(Arc::downgrade(&inner), every);
        Ok(Self { inner })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        self.inner.env.root()
    }

    fn stream(&self, name: &str) -> Result<Arc<StreamState>, StoreError> {
        self.inner
            .streams
            .read()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))
    }

    fn all_streams(&self) -> Vec<Arc<StreamState>> {
        self.inner.streams.read().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Stops every writer after it has written and synced what it was given.
    pub async fn close(&self) {
        for stream in self.all_streams() {
            for h in stream.all_shards() {
                if let Err(e) = h.close_writer().await {
                    tracing::warn!(stream = %stream.name(), shard = %h.shared().id, error = %e, "closing shard writer");
                }
            }
        }
    }

    /// Deletes expired segments and fully expired closed shards of every
    /// stream (see `retention`). Runs periodically on its own; tests call it
    /// after moving the clock.
    ///
    /// # Errors
    /// An I/O failure deleting files or saving the catalog.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        retention::enforce(&self.inner.env, &self.inner.catalog, self.all_streams()).await
    }

    /// Appends through the router; with a producer `tag`, records a shard
    /// already holds answer `Ok(None)`.
    async fn append_tagged(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
        tag: Option<ProducerBatch>,
    ) -> Result<AppendResults, StoreError> {
        router::check_size(&records)?;
        let state = self.stream(stream)?;
        let bytes = records.iter().map(NewRecord::encoded_len).sum::<usize>() as u64;
        self.inner.space.admit(bytes)?;
        router::append(&state, self.inner.env.clock(), records, tag).await
    }
}

/// Runs a retention pass every `every` while the store is open.
fn spawn_retention_task(store: Weak<Inner>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = store.upgrade() else { return };
            if let Err(e) = (LogStore { inner }).enforce_retention().await {
                tracing::warn!(error = %e, "retention pass failed");
            }
        }
    });
}

/// The checks of a CreateStream both stores make before touching anything.
pub(super) fn validate_create(
    name: &str,
    options: &CreateStreamOptions,
    settings: &StreamSettings,
) -> Result<(), StoreError> {
    validate_stream_name(name)?;
    validate_tag_count(settings.tags.len())?;
    validate_retention(options.retention_hours)?;
    validate_shard_count(options.shard_count)
}

/// A stream's shard count within `1..=MAX_SHARDS_PER_STREAM`.
pub(super) fn validate_shard_count(count: u32) -> Result<(), StoreError> {
    if (1..=MAX_SHARDS_PER_STREAM).contains(&count) {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "shard count {count} is outside 1..={MAX_SHARDS_PER_STREAM}"
        )))
    }
}

pub(super) fn validate_tag_count(count: usize) -> Result<(), StoreError> {
    if count > MAX_TAGS_PER_STREAM {
        return Err(StoreError::LimitExceeded(format!(
            "a stream carries at most {MAX_TAGS_PER_STREAM} tags, {count} asked for"
        )));
    }
    Ok(())
}

pub(super) fn settings_of(meta: &StreamMeta) -> StreamSettings {
    StreamSettings { mode: meta.mode, write_limits: meta.write_limits, tags: meta.tags.clone() }
}

impl StreamStore for LogStore {
    fn degraded(&self) -> Option<String> {
        let space = self.inner.space.check().err().map(|e| e.to_string());
        let failed = self.inner.env.failed_shards().describe();
        match (space, failed) {
            (Some(s), Some(f)) => Some(format!("{s}; {f}")),
            (s, f) => s.or(f),
        }
    }

    async fn create_stream_with(
        &self,
        name: &str,
        options: CreateStreamOptions,
        settings: StreamSettings,
    ) -> Result<StreamDescription, StoreError> {
        validate_create(name, &options, &settings)?;
        let mut catalog = self.inner.catalog.lock().await;
        if catalog.stream(name).is_some() {
            return Err(StoreError::StreamExists(name.to_owned()));
        }
        let mut next = catalog.clone();
        let id = next.next_stream_id;
        next.next_stream_id += 1;
        let env = &self.inner.env;
        let now = env.now_ms();
        let count = u64::from(options.shard_count);
        let shards = ShardMeta::uniform(count, now)?;
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
        let handles = match env.open_new_shards(name, id, (0..count).collect(), None).await {
            Ok(h) => h,
            Err(e) => {
                let _ = remove_dir_if_exists(&Catalog::stream_dir(env.root(), id));
                return Err(e);
            }
        };
        if let Err(e) = env.save_catalog(&mut catalog, next).await {
            for h in &handles {
                let _ = h.close_writer().await;
            }
            let _ = remove_dir_if_exists(&Catalog::stream_dir(env.root(), id));
            return Err(e);
        }
        let state = Arc::new(StreamState::new(&meta, (0..count).zip(handles).collect()));
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
        self.inner.env.save_catalog(&mut catalog, next).await?;
        let state = self.inner.streams.write().ok().and_then(|mut s| s.remove(name));
        if let Some(state) = state {
            state.unroute();
            for h in state.all_shards() {
                let _ = h.close_writer().await;
            }
        }
        let dir = Catalog::stream_dir(self.inner.env.root(), id);
        blocking(move || remove_dir_if_exists(&dir)).await?;
        let mut next = catalog.clone();
        next.streams.retain(|s| s.id != id);
        self.inner.env.save_catalog(&mut catalog, next).await?;
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
        Ok(super::backend::untagged(results))
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
        let shared = handle.shared().clone();
        let end = shared.next_offset();
        let check_seq = |s: &SequenceNumber| sequence_offset(s, index, shard, end);
        let offset = match start {
            StartingPosition::TrimHorizon => shared.trim_horizon(),
            StartingPosition::Latest => end,
            StartingPosition::AtSequence(s) => check_seq(&s)?.max(shared.trim_horizon()),
            StartingPosition::AfterSequence(s) => (check_seq(&s)? + 1).max(shared.trim_horizon()),
            StartingPosition::AtTimestamp(ts) => {
                blocking(move || shared.offset_at_time(ts)).await?
            }
        };
        Ok(ShardPosition { stream_id: state.id(), shard_index: index, offset })
    }

    async fn read(
        &self,
        stream: &str,
        from: ShardPosition,
        limits: ReadLimits,
    ) -> Result<ReadBatch, StoreError> {
        let state = self.stream(stream)?;
        if from.stream_id != state.id() {
            return Err(StoreError::InvalidArgument(format!(
                "position belongs to an earlier stream named {stream:?}"
            )));
        }
        let handle = state.shard(from.shard_index).ok_or_else(|| StoreError::ShardNotFound {
            stream: stream.to_owned(),
            shard: shard_id(from.shard_index),
        })?;
        let shared = handle.shared().clone();
        let read = blocking(move || shared.read(from.offset, limits)).await?;
        let last_arrival = read.records.last().map(|r| r.arrival_ms);
        let caught_up = read.next_offset >= read.end_offset;
        let millis_behind_latest = match (caught_up, last_arrival) {
            (false, Some(t)) => handle.shared().last_arrival_ms().saturating_sub(t),
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
        reshard::split(&self.inner.env, &mut catalog, &state, index, new_starting_hash_key).await
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
        reshard::merge(&self.inner.env, &mut catalog, &state, a, b).await
    }

    async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), StoreError> {
        if !(1..=MAX_SHARDS_PER_STREAM).contains(&target) {
            return Err(StoreError::InvalidArgument(format!(
                "target shard count {target} is outside 1..={MAX_SHARDS_PER_STREAM}"
            )));
        }
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        reshard::update_shard_count(&self.inner.env, &mut catalog, &state, target).await
    }

    async fn set_retention(&self, stream: &str, hours: u32) -> Result<(), StoreError> {
        validate_retention(hours)?;
        let state = self.stream(stream)?;
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let meta =
            next.stream_mut(stream).ok_or_else(|| StoreError::StreamNotFound(stream.to_owned()))?;
        meta.retention_hours = hours;
        self.inner.env.save_catalog(&mut catalog, next).await?;
        state.set_retention_hours(hours);
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
        self.inner.env.save_catalog(&mut catalog, next).await?;
        state.set_write_limits(settings.write_limits);
        Ok(settings)
    }

    async fn close(&self) {
        LogStore::close(self).await;
    }
}
