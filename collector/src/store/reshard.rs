//! Resharding: split a shard, merge two adjacent shards, and the building
//! block both use, which closes the parents (their writers finish and sync),
//! opens the children (inheriting the parents' producer tables), saves the
//! catalog and then publishes the new routing table. Called with the catalog
//! lock held; on a failure before the catalog is saved the parents take
//! writes again and the children are removed.

use std::sync::Arc;

use weir_wire::HashRange;

use super::backend::MAX_SHARDS_PER_STREAM;
use super::catalog::{Catalog, ClosedMeta, ShardMeta, StreamMeta, StreamStatus, shard_dir};
use super::error::StoreError;
use super::log_store::LogStore;
use super::producer::{self, ProducerTable};
use super::shard::{parse_shard_id, shard_id};
use super::stream::{StreamState, children_of};
use super::writer::Writer;
impl LogStore {
    /// Closes `parents` and opens `children` (range, parent, adjacent parent)
    /// in one catalog change. Called with the catalog lock held.
    pub(super) async fn reshard(
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

    pub(super) fn active_meta<'c>(
        catalog: &'c Catalog,
        name: &str,
    ) -> Result<&'c StreamMeta, StoreError> {
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

    pub(super) fn open_shard_meta<'m>(
        meta: &'m StreamMeta,
        id: &str,
    ) -> Result<&'m ShardMeta, StoreError> {
        let shard = parse_shard_id(id).and_then(|i| meta.shard(i)).ok_or_else(|| {
            StoreError::ShardNotFound { stream: meta.name.clone(), shard: id.to_owned() }
        })?;
        if !shard.is_open() {
            return Err(StoreError::InvalidArgument(format!("shard {id} is closed")));
        }
        Ok(shard)
    }

    pub(super) async fn split_locked(
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

    pub(super) async fn merge_locked(
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
