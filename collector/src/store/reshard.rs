//! Resharding: split a shard, merge two adjacent shards, reach a target shard
//! count, and the building block all of them use, which closes the parents
//! (their writers finish and sync), opens the children (inheriting the
//! parents' producer tables), saves the catalog and then publishes the new
//! routing table. Called with the catalog lock held; on a failure before the
//! catalog is saved the parents take writes again and the children are
//! removed.

use weir_wire::HashRange;

use super::backend::MAX_SHARDS_PER_STREAM;
use super::catalog::{Catalog, ClosedMeta, ShardMeta, StreamMeta, StreamStatus};
use super::env::StoreEnv;
use super::error::StoreError;
use super::producer::{self, ProducerTable};
use super::shard::{parse_shard_id, shard_id};
use super::stream::{StreamState, children_of};

/// Splits shard `index` of `stream` into two at hash key `new_start`.
///
/// # Errors
/// The stream is not active, the shard is not open, `new_start` is not inside
/// it, the stream would have too many shards, or the catalog cannot be saved.
pub(super) async fn split(
    env: &StoreEnv,
    catalog: &mut Catalog,
    stream: &StreamState,
    index: u64,
    new_start: u128,
) -> Result<(), StoreError> {
    let meta = active_meta(catalog, stream.name())?;
    let shard = open_shard_meta(meta, &shard_id(index))?;
    let (low, high) = shard.range().split_at(new_start).map_err(|e| {
        StoreError::InvalidArgument(format!("split of {} at {new_start}: {e}", shard_id(index)))
    })?;
    reshard(env, catalog, stream, &[index], vec![(low, index, None), (high, index, None)]).await?;
    Ok(())
}

/// Merges shard `index` of `stream` with the `adjacent` one.
///
/// # Errors
/// The stream is not active, a shard is not open, the two are not adjacent,
/// or the catalog cannot be saved.
pub(super) async fn merge(
    env: &StoreEnv,
    catalog: &mut Catalog,
    stream: &StreamState,
    index: u64,
    adjacent: u64,
) -> Result<(), StoreError> {
    let meta = active_meta(catalog, stream.name())?;
    let a = open_shard_meta(meta, &shard_id(index))?;
    let b = open_shard_meta(meta, &shard_id(adjacent))?;
    let merged = a.range().merge(&b.range()).map_err(|_| {
        StoreError::InvalidArgument(format!(
            "shards {} and {} are not adjacent",
            shard_id(index),
            shard_id(adjacent)
        ))
    })?;
    reshard(env, catalog, stream, &[index, adjacent], vec![(merged, index, Some(adjacent))])
        .await?;
    Ok(())
}

/// Splits and merges until `stream` has `target` open shards of uniform
/// ranges.
///
/// # Errors
/// `target` is out of bounds, or a split or merge fails.
pub(super) async fn update_shard_count(
    env: &StoreEnv,
    catalog: &mut Catalog,
    stream: &StreamState,
    target: u32,
) -> Result<(), StoreError> {
    let name = stream.name();
    let count = u64::from(target);
    let targets: Vec<HashRange> = (0..count)
        .map(|i| {
            HashRange::uniform(count, i).map_err(|e| StoreError::InvalidArgument(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    // 1. Split wherever a target range starts inside an open shard.
    for t in targets.iter().skip(1) {
        let meta = active_meta(catalog, name)?;
        let holder = meta
            .open_shards()
            .into_iter()
            .find(|s| s.range().contains(t.start))
            .map(|s| (s.index, s.hash_start));
        if let Some((index, start)) = holder
            && start != t.start
        {
            split(env, catalog, stream, index, t.start).await?;
        }
    }
    // 2. Merge the shards inside each target range into one.
    for t in &targets {
        loop {
            let meta = active_meta(catalog, name)?;
            let inside: Vec<u64> = meta
                .open_shards()
                .into_iter()
                .filter(|s| s.hash_start >= t.start && s.hash_end <= t.end)
                .map(|s| s.index)
                .collect();
            if inside.len() < 2 {
                break;
            }
            merge(env, catalog, stream, inside[0], inside[1]).await?;
        }
    }
    Ok(())
}

/// Closes `parents` and opens `children` (range, parent, adjacent parent)
/// in one catalog change. Called with the catalog lock held.
async fn reshard(
    env: &StoreEnv,
    catalog: &mut Catalog,
    stream: &StreamState,
    parents: &[u64],
    children: Vec<(HashRange, u64, Option<u64>)>,
) -> Result<Vec<u64>, StoreError> {
    let name = stream.name();
    let mut next = catalog.clone();
    let meta = next.stream_mut(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
    let open_after = meta.open_shards().len() - parents.len() + children.len();
    if open_after > MAX_SHARDS_PER_STREAM as usize {
        return Err(StoreError::LimitExceeded(format!(
            "stream {name:?} would have {open_after} open shards, more than {MAX_SHARDS_PER_STREAM}"
        )));
    }
    let mut handles = Vec::new();
    for p in parents {
        handles.push(stream.shard(*p).ok_or_else(|| StoreError::ShardNotFound {
            stream: name.to_owned(),
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
    let now = env.now_ms();
    for (p, end) in parents.iter().zip(&ends) {
        if let Some(s) = meta.shards.iter_mut().find(|s| s.index == *p) {
            s.closed = Some(ClosedMeta { end_offset: *end, closed_ms: now });
        }
    }
    for ((range, parent, adjacent), index) in children.iter().zip(&child_indexes) {
        meta.shards.push(ShardMeta::open(*index, *range, Some(*parent), *adjacent, now));
    }
    meta.next_shard_index += children.len() as u64;
    let opened = env.open_new_shards(name, stream.id(), child_indexes.clone(), Some(seed)).await;
    let saved = match opened {
        Ok(new) => env.save_catalog(catalog, next).await.map(|()| new),
        Err(e) => Err(e),
    };
    let new_handles = match saved {
        Ok(new) => new,
        Err(e) => {
            // Undo: the parents take writes again; the children never existed.
            for (h, table) in handles.iter().zip(tables) {
                h.shared().restore_producers(table);
                if let Ok(w) = env.start_writer(h.shared().clone()) {
                    h.resume_writer(w);
                }
            }
            for i in &child_indexes {
                let _ = std::fs::remove_dir_all(env.shard_dir(stream.id(), *i));
            }
            return Err(e);
        }
    };
    let meta = catalog.stream(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
    stream.insert_shards(child_indexes.iter().copied().zip(new_handles));
    for (h, end) in handles.iter().zip(ends) {
        h.mark_closed(end, children_of(meta, h.shared().index));
    }
    stream.publish_routing(meta);
    tracing::info!(stream = %name, parents = ?parents, children = ?child_indexes, "resharded");
    Ok(child_indexes)
}

/// The stream's metadata, if it is active.
fn active_meta<'c>(catalog: &'c Catalog, name: &str) -> Result<&'c StreamMeta, StoreError> {
    let meta = catalog.stream(name).ok_or_else(|| StoreError::StreamNotFound(name.to_owned()))?;
    if meta.status != StreamStatus::Active {
        return Err(StoreError::StreamNotActive {
            stream: name.to_owned(),
            status: meta.status.as_str(),
        });
    }
    Ok(meta)
}

/// The metadata of shard `id`, if it is open.
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
