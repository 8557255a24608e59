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
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use weir_wire::{HashRange, validate_data, validate_partition_key};

use super::backend::{
    Appended, CreateStreamOptions, MAX_RETENTION_HOURS, MAX_SHARDS_PER_STREAM, MIN_RETENTION_HOURS,
    NewRecord, ReadBatch, ReadLimits, SettingsChange, ShardDescription, ShardLifetime,
    ShardPosition, StartingPosition, StoredRecord, StreamDescription, StreamDetails,
    StreamSettings, StreamStore,
};
use super::catalog::{
    Catalog, ClosedMeta, MAX_TAGS_PER_STREAM, ShardMeta, StreamMeta, StreamStatus, shard_dir,
};
use super::clock::{Clock, SystemClock};
use super::config::StoreConfig;
use super::error::StoreError;
use super::producer::{self, MAX_PRODUCER_ID_BYTES, ProducerBatch, ProducerTable};
use super::shard::{ShardShared, parse_shard_id, sequence_of, shard_id};
use super::throttle::WriteLimiter;
use super::writer::{AppendReply, MAX_APPEND_BYTES, Writer};

/// How long an append whose shard just closed waits for the new routing table
/// before it fails; a reshard publishes it right after its catalog is saved.
const REROUTE_WAIT: Duration = Duration::from_secs(10);
/// How many times one append is routed again after landing on closed shards.
const MAX_REROUTES: usize = 8;

/// A shard and, while it is open, its writer.
#[derive(Debug)]
struct ShardHandle {
    shared: Arc<ShardShared>,
    writer: Mutex<Option<Arc<Writer>>>,
    /// Set once closed: end offset and the children's ids.
    closed: Mutex<Option<(u64, Vec<String>)>>,
}

impl ShardHandle {
    fn writer(&self) -> Option<Arc<Writer>> {
        self.writer.lock().ok().and_then(|w| w.clone())
    }

    fn closed(&self) -> Option<(u64, Vec<String>)> {
        self.closed.lock().ok().and_then(|c| c.clone())
    }

    /// Stops the writer and returns the shard's end offset and producer table.
    async fn close_writer(&self) -> Result<(u64, ProducerTable), StoreError> {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        match writer {
            Some(w) => w.close().await,
            None => Ok((self.shared.next_offset(), ProducerTable::new())),
        }
    }
}

/// The open shards of a stream, ordered by hash range start.
#[derive(Debug, Default)]
struct Routing {
    open: Vec<(HashRange, Arc<ShardHandle>)>,
}

impl Routing {
    fn route(&self, hash: u128) -> Option<&Arc<ShardHandle>> {
        let i = self.open.partition_point(|(r, _)| r.start <= hash).checked_sub(1)?;
        let (range, shard) = &self.open[i];
        range.contains(hash).then_some(shard)
    }
}

#[derive(Debug)]
struct StreamState {
    id: u64,
    name: String,
    retention_ms: AtomicU64,
    routing: watch::Sender<Arc<Routing>>,
    shards: RwLock<BTreeMap<u64, Arc<ShardHandle>>>,
    /// Whether appends are held to per-shard write limits (`throttle`).
    write_limits: AtomicBool,
    limiter: WriteLimiter,
}

impl StreamState {
    fn shard(&self, index: u64) -> Option<Arc<ShardHandle>> {
        self.shards.read().ok().and_then(|s| s.get(&index).cloned())
    }

    fn all_shards(&self) -> Vec<Arc<ShardHandle>> {
        self.shards.read().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    fn publish_routing(&self, meta: &StreamMeta) {
        let shards = self.shards.read().map(|s| s.clone()).unwrap_or_default();
        let open = meta
            .open_shards()
            .into_iter()
            .filter_map(|m| shards.get(&m.index).map(|h| (m.range(), h.clone())))
            .collect();
        self.routing.send_replace(Arc::new(Routing { open }));
    }
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Whole segments deleted.
    pub segments_deleted: usize,
    /// Closed shards removed because all their records expired.
    pub shards_removed: usize,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    catalog: tokio::sync::Mutex<Catalog>,
    streams: RwLock<HashMap<String, Arc<StreamState>>>,
    _lock: File,
}

/// The embedded store. Cheap to clone; all clones share one store.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
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

fn validate_stream_name(name: &str) -> Result<(), StoreError> {
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

fn validate_retention(hours: u32) -> Result<(), StoreError> {
    if (MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "retention {hours} h is outside {MIN_RETENTION_HOURS}..={MAX_RETENTION_HOURS} h"
        )))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| StoreError::ShuttingDown)?
}

fn describe(meta: &StreamMeta) -> StreamDescription {
    let id = |i: Option<u64>| i.map(shard_id);
    let mut shards: Vec<ShardDescription> = meta
        .shards
        .iter()
        .map(|s| ShardDescription {
            shard_id: shard_id(s.index),
            index: s.index,
            hash_range: s.range(),
            parent_shard_id: id(s.parent),
            adjacent_parent_shard_id: id(s.adjacent_parent),
            starting_sequence: sequence_of(s.index, 0),
            ending_sequence: s.closed.map(|c| sequence_of(s.index, c.end_offset.max(1) - 1)),
        })
        .collect();
    shards.sort_by_key(|s| s.index);
    StreamDescription {
        name: meta.name.clone(),
        id: meta.id,
        status: meta.status,
        created_ms: meta.created_ms,
        retention_hours: meta.retention_hours,
        shards,
    }
}

fn children_of(meta: &StreamMeta, index: u64) -> Vec<String> {
    meta.shards
        .iter()
        .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
        .map(|s| shard_id(s.index))
        .collect()
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

    fn spawn_retention_task(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = self.inner.config.retention_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (LogStore { inner }).enforce_retention().await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        });
    }

    fn stream(&self, name: &str) -> Result<Arc<StreamState>, StoreError> {
        self.inner
            .streams
            .read()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))
    }

    /// Deletes expired segments and fully expired closed shards of every
    /// stream. Runs periodically on its own; tests call it after moving the
    /// clock.
    ///
    /// # Errors
    /// An I/O failure deleting files or saving the catalog.
    pub async fn enforce_retention(&self) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        let now = self.inner.clock.now_ms();
        let streams: Vec<Arc<StreamState>> =
            self.inner.streams.read().map(|s| s.values().cloned().collect()).unwrap_or_default();
        for stream in streams {
            let retention_ms = stream.retention_ms.load(Ordering::Acquire);
            let cutoff = now.saturating_sub(retention_ms);
            let mut drained = Vec::new();
            for handle in stream.all_shards() {
                let writer = handle.writer();
                let open = writer.is_some();
                let shared = handle.shared.clone();
                let (n, active_expired) =
                    blocking(move || Ok(shared.delete_expired(cutoff, open)?)).await?;
                report.segments_deleted += n;
                if let (true, Some(w)) = (active_expired, writer) {
                    w.seal().await?;
                    let shared = handle.shared.clone();
                    let (n, _) = blocking(move || Ok(shared.delete_expired(cutoff, true)?)).await?;
                    report.segments_deleted += n;
                }
                if !open && handle.shared.is_drained() {
                    drained.push(handle.shared.index);
                }
            }
            if !drained.is_empty() {
                report.shards_removed +=
                    self.remove_drained_shards(&stream, &drained, cutoff).await?;
            }
        }
        Ok(report)
    }

    /// Removes closed shards that hold no record any more and were closed
    /// before the retention cutoff, from the catalog and from disk.
    async fn remove_drained_shards(
        &self,
        stream: &StreamState,
        drained: &[u64],
        cutoff: u64,
    ) -> Result<usize, StoreError> {
        let mut catalog = self.inner.catalog.lock().await;
        let mut next = catalog.clone();
        let Some(meta) = next.stream_mut(&stream.name).filter(|m| m.id == stream.id) else {
            return Ok(0);
        };
        let before = meta.shards.len();
        meta.shards.retain(|s| {
            !(drained.contains(&s.index) && s.closed.is_some_and(|c| c.closed_ms < cutoff))
        });
        let removed: Vec<u64> =
            drained.iter().copied().filter(|i| meta.shard(*i).is_none()).collect();
        if meta.shards.len() == before {
            return Ok(0);
        }
        let root = self.inner.root.clone();
        let id = stream.id;
        let save = next.clone();
        blocking(move || save.save(&root)).await?;
        *catalog = next;
        if let Ok(mut shards) = stream.shards.write() {
            for i in &removed {
                shards.remove(i);
            }
        }
        for i in &removed {
            let dir = shard_dir(&self.inner.root, id, *i);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove an expired shard's directory");
            }
            tracing::info!(stream = %stream.name, shard = %shard_id(*i), "closed shard expired and removed");
        }
        Ok(removed.len())
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
    async fn save_catalog(&self, catalog: &mut Catalog, next: Catalog) -> Result<(), StoreError> {
        let root = self.inner.root.clone();
        let save = next.clone();
        blocking(move || save.save(&root)).await?;
        *catalog = next;
        Ok(())
    }

    /// Opens new shards' directories and writers (not yet routed).
    async fn open_new_shards(
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

    /// Closes `parents` and opens `children` (range, parent, adjacent parent)
    /// in one catalog change. Called with the catalog lock held.
    async fn reshard(
        &self,
        catalog: &mut Catalog,
        stream: &StreamState,
        parents: &[u64],
        children: Vec<(HashRange, u64, Option<u64>)>,
    ) -> Result<Vec<u64>, StoreError> {
        let mut next = catalog.clone();
        let meta = next
            .stream_mut(&stream.name)
            .ok_or_else(|| StoreError::StreamNotFound(stream.name.clone()))?;
        let open_after = meta.open_shards().len() - parents.len() + children.len();
        if open_after > MAX_SHARDS_PER_STREAM as usize {
            return Err(StoreError::LimitExceeded(format!(
                "stream {:?} would have {open_after} open shards, more than {MAX_SHARDS_PER_STREAM}",
                stream.name
            )));
        }
        let mut handles = Vec::new();
        for p in parents {
            handles.push(stream.shard(*p).ok_or_else(|| StoreError::ShardNotFound {
                stream: stream.name.clone(),
                shard: shard_id(*p),
            })?);
        }
        // Children inherit their parents' producer tables, so a producer
        // batch a parent holds is a duplicate in the children too.
        let mut ends = Vec::new();
        let mut tables = Vec::new();
        let mut seed = ProducerTable::new();
        for h in &handles {
            let (end, table) = h.close_writer().await?;
            producer::merge(&mut seed, &table);
            ends.push(end);
            tables.push(table);
        }
        let first_child = meta.next_shard_index;
        let child_indexes: Vec<u64> = (first_child..first_child + children.len() as u64).collect();
        let now = self.inner.clock.now_ms();
        for (p, end) in parents.iter().zip(&ends) {
            if let Some(s) = meta.shards.iter_mut().find(|s| s.index == *p) {
                s.closed = Some(ClosedMeta { end_offset: *end, closed_ms: now });
            }
        }
        for ((range, parent, adjacent), index) in children.iter().zip(&child_indexes) {
            meta.shards.push(ShardMeta {
                index: *index,
                hash_start: range.start,
                hash_end: range.end,
                parent: Some(*parent),
                adjacent_parent: *adjacent,
                created_ms: now,
                closed: None,
            });
        }
        meta.next_shard_index += children.len() as u64;
        let opened =
            self.open_new_shards(&stream.name, stream.id, child_indexes.clone(), Some(seed)).await;
        let saved = match opened {
            Ok(new) => self.save_catalog(catalog, next).await.map(|()| new),
            Err(e) => Err(e),
        };
        let new_handles = match saved {
            Ok(new) => new,
            Err(e) => {
                // Undo: the parents take writes again; the children never existed.
                for (h, table) in handles.iter().zip(tables) {
                    h.shared.restore_producers(table);
                    if let Ok(w) = Writer::start(
                        h.shared.clone(),
                        self.inner.config.clone(),
                        self.inner.clock.clone(),
                    ) && let Ok(mut slot) = h.writer.lock()
                    {
                        *slot = Some(Arc::new(w));
                    }
                }
                for i in &child_indexes {
                    let _ = std::fs::remove_dir_all(shard_dir(&self.inner.root, stream.id, *i));
                }
                return Err(e);
            }
        };
        let meta = catalog
            .stream(&stream.name)
            .ok_or_else(|| StoreError::StreamNotFound(stream.name.clone()))?;
        if let Ok(mut shards) = stream.shards.write() {
            for (i, h) in child_indexes.iter().zip(new_handles) {
                shards.insert(*i, h);
            }
        }
        for (h, end) in handles.iter().zip(ends) {
            if let Ok(mut c) = h.closed.lock() {
                *c = Some((end, children_of(meta, h.shared.index)));
            }
        }
        stream.publish_routing(meta);
        tracing::info!(stream = %stream.name, parents = ?parents, children = ?child_indexes, "resharded");
        Ok(child_indexes)
    }

    /// Appends records, each to the open shard owning its hash key; with a
    /// producer `tag`, a shard that already holds that producer batch appends
    /// nothing and its records answer `Ok(None)`.
    async fn append_tagged(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
        tag: Option<ProducerBatch>,
    ) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
        let total: usize = records.iter().map(NewRecord::encoded_len).sum();
        if total > MAX_APPEND_BYTES {
            return Err(StoreError::InvalidArgument(format!(
                "one append carries {total} bytes, more than {MAX_APPEND_BYTES}"
            )));
        }
        let state = self.stream(stream)?;
        let mut results: Vec<Option<Result<Option<Appended>, StoreError>>> =
            vec![None; records.len()];
        let mut pending: Vec<(usize, NewRecord)> = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            match validate_partition_key(&r.partition_key).and_then(|()| validate_data(&r.data)) {
                Ok(()) => pending.push((i, r)),
                Err(e) => results[i] = Some(Err(e.into())),
            }
        }
        let mut routing_rx = state.routing.subscribe();
        for attempt in 0..=MAX_REROUTES {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                // Some records met a closed shard: wait for the new table.
                match tokio::time::timeout(REROUTE_WAIT, routing_rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(StoreError::StreamNotFound(stream.to_owned())),
                    Err(_) => break,
                }
            }
            let routing = routing_rx.borrow_and_update().clone();
            // Group by shard, keeping each shard's records in call order.
            let mut groups: Vec<(Arc<ShardHandle>, Vec<usize>, Vec<NewRecord>)> = Vec::new();
            for (i, r) in pending.drain(..) {
                let hash =
                    r.explicit_hash_key.unwrap_or_else(|| weir_wire::hash_key(&r.partition_key));
                let Some(shard) = routing.route(hash) else {
                    results[i] = Some(Err(StoreError::StreamNotActive {
                        stream: stream.to_owned(),
                        status: "DELETING",
                    }));
                    continue;
                };
                match groups.iter_mut().find(|(s, _, _)| Arc::ptr_eq(s, shard)) {
                    Some((_, idx, recs)) => {
                        idx.push(i);
                        recs.push(r);
                    }
                    None => groups.push((shard.clone(), vec![i], vec![r])),
                }
            }
            let mut waiting = Vec::with_capacity(groups.len());
            for (shard, idx, recs) in groups {
                // Per-shard write limits (`throttle`), only where the stream
                // enables them. A tagged batch is admitted whole or not at
                // all, so its retry is never mistaken for a duplicate.
                let (idx, recs) = if state.write_limits.load(Ordering::Acquire) {
                    let sizes: Vec<usize> =
                        recs.iter().map(|r| r.partition_key.len() + r.data.len()).collect();
                    let now = self.inner.clock.now_ms();
                    let admitted =
                        state.limiter.admit(shard.shared.index, now, &sizes, tag.is_some());
                    let (mut keep_idx, mut keep_recs) = (Vec::new(), Vec::new());
                    for ((i, r), ok) in idx.into_iter().zip(recs).zip(admitted) {
                        if ok {
                            keep_idx.push(i);
                            keep_recs.push(r);
                        } else {
                            results[i] = Some(Err(StoreError::ThroughputExceeded {
                                stream: stream.to_owned(),
                                shard: shard.shared.id.clone(),
                            }));
                        }
                    }
                    (keep_idx, keep_recs)
                } else {
                    (idx, recs)
                };
                if recs.is_empty() {
                    continue;
                }
                let reply = match shard.writer() {
                    Some(w) => w.submit(recs, tag.clone()).await,
                    None => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let _ = tx.send(AppendReply::Closed(recs));
                        rx
                    }
                };
                waiting.push((shard, idx, reply));
            }
            for (shard, idx, reply) in waiting {
                match reply.await {
                    Ok(AppendReply::Done { first_offset, arrival_ms }) => {
                        for (k, i) in idx.into_iter().enumerate() {
                            results[i] = Some(Ok(Some(Appended {
                                shard_id: shard.shared.id.clone(),
                                sequence: sequence_of(shard.shared.index, first_offset + k as u64),
                                arrival_ms,
                            })));
                        }
                    }
                    Ok(AppendReply::Closed(recs)) => pending.extend(idx.into_iter().zip(recs)),
                    Ok(AppendReply::Duplicate) => {
                        for i in idx {
                            results[i] = Some(Ok(None));
                        }
                    }
                    Ok(AppendReply::Failed(e)) => {
                        for i in idx {
                            results[i] = Some(Err(e.clone()));
                        }
                    }
                    Err(_) => {
                        for i in idx {
                            results[i] = Some(Err(StoreError::ShuttingDown));
                        }
                    }
                }
            }
        }
        for (i, _) in pending {
            results[i] = Some(Err(StoreError::StreamNotActive {
                stream: stream.to_owned(),
                status: "UPDATING",
            }));
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Err(StoreError::ShuttingDown))).collect())
    }

    fn active_meta<'c>(catalog: &'c Catalog, name: &str) -> Result<&'c StreamMeta, StoreError> {
        let meta =
            catalog.stream(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
        if meta.status != StreamStatus::Active {
            return Err(StoreError::StreamNotActive {
                stream: name.to_owned(),
                status: meta.status.as_str(),
            });
        }
        Ok(meta)
    }

    fn open_shard_meta<'m>(meta: &'m StreamMeta, id: &str) -> Result<&'m ShardMeta, StoreError> {
        let shard = parse_shard_id(id).and_then(|i| meta.shard(i)).ok_or_else(|| {
            StoreError::ShardNotFound { stream: meta.name.clone(), shard: id.to_owned() }
        })?;
        if !shard.is_open() {
            return Err(StoreError::InvalidArgument(format!("shard {id} is closed")));
        }
        Ok(shard)
    }

    async fn split_locked(
        &self,
        catalog: &mut Catalog,
        stream: &StreamState,
        index: u64,
        new_start: u128,
    ) -> Result<(), StoreError> {
        let meta = Self::active_meta(catalog, &stream.name)?;
        let shard = Self::open_shard_meta(meta, &shard_id(index))?;
        let (low, high) = shard.range().split_at(new_start).map_err(|e| {
            StoreError::InvalidArgument(format!("split of {} at {new_start}: {e}", shard_id(index)))
        })?;
        self.reshard(catalog, stream, &[index], vec![(low, index, None), (high, index, None)])
            .await?;
        Ok(())
    }

    async fn merge_locked(
        &self,
        catalog: &mut Catalog,
        stream: &StreamState,
        index: u64,
        adjacent: u64,
    ) -> Result<(), StoreError> {
        let meta = Self::active_meta(catalog, &stream.name)?;
        let a = Self::open_shard_meta(meta, &shard_id(index))?;
        let b = Self::open_shard_meta(meta, &shard_id(adjacent))?;
        let merged = a.range().merge(&b.range()).map_err(|_| {
            StoreError::InvalidArgument(format!(
                "shards {} and {} are not adjacent",
                shard_id(index),
                shard_id(adjacent)
            ))
        })?;
        self.reshard(catalog, stream, &[index, adjacent], vec![(merged, index, Some(adjacent))])
            .await?;
        Ok(())
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

fn validate_tag_count(count: usize) -> Result<(), StoreError> {
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

fn remove_dir_if_exists(dir: &Path) -> Result<(), StoreError> {
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
        let index = from.shard_index;
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
        let records = read
            .records
            .into_iter()
            .map(|r| StoredRecord {
                sequence: sequence_of(index, r.offset),
                arrival_ms: r.arrival_ms,
                partition_key: r.partition_key,
                data: r.data,
                explicit_hash_key: r.explicit_hash_key,
                producer_timestamp_ms: r.producer_timestamp_ms,
            })
            .collect();
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
