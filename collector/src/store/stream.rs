//! A stream's in-memory state: its shards (with their writers while open),
//! its routing table, its retention, and how it is described to clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;

use super::backend::{ShardDescription, StreamDescription};
use super::catalog::StreamMeta;
use super::error::StoreError;
use super::producer::ProducerTable;
use super::router::Routing;
use super::shard::{ShardShared, sequence_of, shard_id};
use super::throttle::WriteLimiter;
use super::writer::Writer;
/// A shard and, while it is open, its writer.
#[derive(Debug)]
pub(super) struct ShardHandle {
    pub(super) shared: Arc<ShardShared>,
    pub(super) writer: Mutex<Option<Arc<Writer>>>,
    /// Set once closed: end offset and the children's ids.
    pub(super) closed: Mutex<Option<(u64, Vec<String>)>>,
}

impl ShardHandle {
    pub(super) fn writer(&self) -> Option<Arc<Writer>> {
        self.writer.lock().ok().and_then(|w| w.clone())
    }

    pub(super) fn closed(&self) -> Option<(u64, Vec<String>)> {
        self.closed.lock().ok().and_then(|c| c.clone())
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
#[derive(Debug)]
pub(super) struct StreamState {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) retention_ms: AtomicU64,
    pub(super) routing: watch::Sender<Arc<Routing>>,
    pub(super) shards: RwLock<BTreeMap<u64, Arc<ShardHandle>>>,
    /// Whether appends are held to per-shard write limits (`throttle`).
    pub(super) write_limits: AtomicBool,
    pub(super) limiter: WriteLimiter,
}

impl StreamState {
    pub(super) fn shard(&self, index: u64) -> Option<Arc<ShardHandle>> {
        self.shards.read().ok().and_then(|s| s.get(&index).cloned())
    }

    pub(super) fn all_shards(&self) -> Vec<Arc<ShardHandle>> {
        self.shards.read().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn publish_routing(&self, meta: &StreamMeta) {
        let shards = self.shards.read().map(|s| s.clone()).unwrap_or_default();
        let open = meta
            .open_shards()
            .into_iter()
            .filter_map(|m| shards.get(&m.index).map(|h| (m.range(), h.clone())))
            .collect();
        self.routing.send_replace(Arc::new(Routing { open }));
    }
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
