//! A stream's in-memory state: its shards (with their writers while open),
//! its routing table, its retention and write-limit settings, and how it is
//! described to clients.
//!
//! The fields are private: the router reads the routing table and the write
//! limits, resharding adds shards and republishes the table, retention reads
//! the retention period and removes drained shards, and the store changes
//! the settings, each through the methods below.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use weir_wire::HashRange;

use super::backend::{ShardDescription, StreamDescription};
use super::catalog::StreamMeta;
use super::error::StoreError;
use super::producer::ProducerTable;
use super::shard::{ShardShared, sequence_of, shard_id};
use super::throttle::WriteLimiter;
use super::writer::Writer;

/// A shard and, while it is open, its writer.
#[derive(Debug)]
pub(super) struct ShardHandle {
    shared: Arc<ShardShared>,
    writer: Mutex<Option<Arc<Writer>>>,
    /// Set once closed: end offset and the children's ids.
    closed: Mutex<Option<(u64, Vec<String>)>>,
}

impl ShardHandle {
    /// A shard with its writer (`None` for a closed shard) and, if closed,
    /// its end offset and children.
    pub(super) fn new(
        shared: Arc<ShardShared>,
        writer: Option<Writer>,
        closed: Option<(u64, Vec<String>)>,
    ) -> Self {
        Self { shared, writer: Mutex::new(writer.map(Arc::new)), closed: Mutex::new(closed) }
    }

    /// The shard's log, as readers and the writer share it.
    pub(super) fn shared(&self) -> &Arc<ShardShared> {
        &self.shared
    }

    pub(super) fn writer(&self) -> Option<Arc<Writer>> {
        self.writer.lock().ok().and_then(|w| w.clone())
    }

    /// Gives the shard a writer again (a reshard that closed it failed).
    pub(super) fn resume_writer(&self, writer: Writer) {
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(Arc::new(writer));
        }
    }

    pub(super) fn closed(&self) -> Option<(u64, Vec<String>)> {
        self.closed.lock().ok().and_then(|c| c.clone())
    }

    /// Records that a reshard closed the shard at `end` with these children.
    pub(super) fn mark_closed(&self, end: u64, children: Vec<String>) {
        if let Ok(mut c) = self.closed.lock() {
            *c = Some((end, children));
        }
    }

    /// Stops the writer and returns the shard's end offset and producer table.
    pub(super) async fn close_writer(&self) -> Result<(u64, ProducerTable), StoreError> {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        match writer {
            Some(w) => w.close().await,
            None => Ok((self.shared.next_offset(), ProducerTable::new())),
        }
    }
}

/// The open shards of a stream, ordered by hash range start.
#[derive(Debug, Default)]
pub(super) struct Routing {
    open: Vec<(HashRange, Arc<ShardHandle>)>,
}

impl Routing {
    /// The open shard whose range holds `hash`.
    pub(super) fn route(&self, hash: u128) -> Option<&Arc<ShardHandle>> {
        let i = self.open.partition_point(|(r, _)| r.start <= hash).checked_sub(1)?;
        let (range, shard) = &self.open[i];
        range.contains(hash).then_some(shard)
    }
}

#[derive(Debug)]
pub(super) struct StreamState {
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
    /// The state of the stream `meta` describes, with its `shards`, routing
    /// appends to its open shards.
    pub(super) fn new(meta: &StreamMeta, shards: BTreeMap<u64, Arc<ShardHandle>>) -> Self {
        let state = Self {
            id: meta.id,
            name: meta.name.clone(),
            retention_ms: AtomicU64::new(retention_ms(meta.retention_hours)),
            routing: watch::Sender::new(Arc::new(Routing::default())),
            shards: RwLock::new(shards),
            write_limits: AtomicBool::new(meta.write_limits),
            limiter: WriteLimiter::default(),
        };
        state.publish_routing(meta);
        state
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn shard(&self, index: u64) -> Option<Arc<ShardHandle>> {
        self.shards.read().ok().and_then(|s| s.get(&index).cloned())
    }

    pub(super) fn all_shards(&self) -> Vec<Arc<ShardHandle>> {
        self.shards.read().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    /// Adds shards a reshard opened (not routed until [`publish_routing`](Self::publish_routing)).
    pub(super) fn insert_shards(&self, new: impl IntoIterator<Item = (u64, Arc<ShardHandle>)>) {
        if let Ok(mut shards) = self.shards.write() {
            shards.extend(new);
        }
    }

    /// Forgets shards retention removed.
    pub(super) fn remove_shards(&self, indexes: &[u64]) {
        if let Ok(mut shards) = self.shards.write() {
            for i in indexes {
                shards.remove(i);
            }
        }
    }

    /// Routes appends to the shards `meta` lists as open.
    pub(super) fn publish_routing(&self, meta: &StreamMeta) {
        let shards = self.shards.read().map(|s| s.clone()).unwrap_or_default();
        let open = meta
            .open_shards()
            .into_iter()
            .filter_map(|m| shards.get(&m.index).map(|h| (m.range(), h.clone())))
            .collect();
        self.routing.send_replace(Arc::new(Routing { open }));
    }

    /// Routes no append any more (the stream is being deleted).
    pub(super) fn unroute(&self) {
        self.routing.send_replace(Arc::new(Routing::default()));
    }

    /// Follows the routing table; a reshard or a deletion changes it.
    pub(super) fn subscribe_routing(&self) -> watch::Receiver<Arc<Routing>> {
        self.routing.subscribe()
    }

    pub(super) fn retention_ms(&self) -> u64 {
        self.retention_ms.load(Ordering::Acquire)
    }

    pub(super) fn set_retention_hours(&self, hours: u32) {
        self.retention_ms.store(retention_ms(hours), Ordering::Release);
    }

    pub(super) fn write_limits(&self) -> bool {
        self.write_limits.load(Ordering::Acquire)
    }

    pub(super) fn set_write_limits(&self, on: bool) {
        self.write_limits.store(on, Ordering::Release);
    }

    /// The per-shard write budgets (used only while [`write_limits`](Self::write_limits) is on).
    pub(super) fn limiter(&self) -> &WriteLimiter {
        &self.limiter
    }
}

fn retention_ms(hours: u32) -> u64 {
    u64::from(hours) * 3_600_000
}

pub(super) fn describe(meta: &StreamMeta) -> StreamDescription {
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

pub(super) fn children_of(meta: &StreamMeta, index: u64) -> Vec<String> {
    meta.shards
        .iter()
        .filter(|s| s.parent == Some(index) || s.adjacent_parent == Some(index))
        .map(|s| shard_id(s.index))
        .collect()
}
