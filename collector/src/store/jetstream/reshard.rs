//! Resharding on JetStream: the children's streams are created, the catalog
//! is changed by compare-and-set (parents closed with a pending end, children
//! open), then the parents' streams are sealed and their exact ends written.
//! Any collector finishes a reshard another left pending. Closed shards past
//! their retention are removed with their streams.

use weir_wire::HashRange;

use super::super::backend::MAX_SHARDS_PER_STREAM;
use super::super::catalog::{ClosedMeta, ShardMeta, StreamMeta, StreamStatus};
use super::super::error::StoreError;
use super::super::log_store::validate_shard_count;
use super::super::reshard::open_shard_meta;
use super::super::shard::shard_id;
use super::catalog::{MAX_CAS_RETRIES, PENDING_END, Versioned};
use super::{JetStreamStore, backend_error, offset_of, pack};

/// A reshard's plan: the parents to close and the children (hash range,
/// parent, adjacent parent) to open.
type Plan = (Vec<u64>, Vec<(HashRange, u64, Option<u64>)>);

fn check_active(meta: &StreamMeta) -> Result<(), StoreError> {
    if meta.status != StreamStatus::Active {
        return Err(StoreError::StreamNotActive {
            stream: meta.name.clone(),
            status: meta.status.as_str(),
        });
    }
    Ok(())
}

/// Splits shard `id` of `name` at `new_start`.
pub(super) async fn split(
    store: &JetStreamStore,
    name: &str,
    id: &str,
    new_start: u128,
) -> Result<(), StoreError> {
    reshard(store, name, |meta| {
        let shard = open_shard_meta(meta, id)?;
        let (low, high) = shard.range().split_at(new_start).map_err(|e| {
            StoreError::InvalidArgument(format!("split of {id} at {new_start}: {e}"))
        })?;
        let i = shard.index;
        Ok((vec![i], vec![(low, i, None), (high, i, None)]))
    })
    .await
}

/// Merges shard `id` of `name` with the `adjacent` one.
pub(super) async fn merge(
    store: &JetStreamStore,
    name: &str,
    id: &str,
    adjacent: &str,
) -> Result<(), StoreError> {
    reshard(store, name, |meta| {
        let a = open_shard_meta(meta, id)?;
        let b = open_shard_meta(meta, adjacent)?;
        let merged = a.range().merge(&b.range()).map_err(|_| {
            StoreError::InvalidArgument(format!("shards {id} and {adjacent} are not adjacent"))
        })?;
        Ok((vec![a.index, b.index], vec![(merged, a.index, Some(b.index))]))
    })
    .await
}

/// Splits and merges until `name` has `target` open shards of uniform ranges.
pub(super) async fn update_shard_count(
    store: &JetStreamStore,
    name: &str,
    target: u32,
) -> Result<(), StoreError> {
    validate_shard_count(target)?;
    let count = u64::from(target);
    let targets: Vec<HashRange> = (0..count)
        .map(|i| {
            HashRange::uniform(count, i).map_err(|e| StoreError::InvalidArgument(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    for t in targets.iter().skip(1) {
        let meta = store.meta(name).await?.meta;
        check_active(&meta)?;
        let holder = meta
            .open_shards()
            .into_iter()
            .find(|s| s.range().contains(t.start))
            .map(|s| (s.index, s.hash_start));
        if let Some((index, start)) = holder
            && start != t.start
        {
            split(store, name, &shard_id(index), t.start).await?;
        }
    }
    for t in &targets {
        loop {
            let meta = store.meta(name).await?.meta;
            let inside: Vec<u64> = meta
                .open_shards()
                .into_iter()
                .filter(|s| s.hash_start >= t.start && s.hash_end <= t.end)
                .map(|s| s.index)
                .collect();
            if inside.len() < 2 {
                break;
            }
            merge(store, name, &shard_id(inside[0]), &shard_id(inside[1])).await?;
        }
    }
    Ok(())
}

/// One reshard, retried by compare-and-set against newer catalogs (where
/// `plan` decides again whether it still applies).
async fn reshard<F>(store: &JetStreamStore, name: &str, plan: F) -> Result<(), StoreError>
where
    F: Fn(&StreamMeta) -> Result<Plan, StoreError>,
{
    for _ in 0..MAX_CAS_RETRIES {
        let v = store.meta(name).await?;
        check_active(&v.meta)?;
        let (parents, children) = plan(&v.meta)?;
        let open_after = v.meta.open_shards().len() - parents.len() + children.len();
        if open_after > MAX_SHARDS_PER_STREAM as usize {
            return Err(StoreError::LimitExceeded(format!(
                "stream {name:?} would have {open_after} open shards, more than {MAX_SHARDS_PER_STREAM}"
            )));
        }
        let mut next = v.meta.clone();
        let first = next.next_shard_index;
        let now = store.now_ms();
        for (k, _) in children.iter().enumerate() {
            // A collector that lost the race may have made the same streams;
            // creating is idempotent, and they stay empty until routed to.
            store.create_shard_stream(next.id, first + k as u64, next.retention_hours).await?;
        }
        for s in next.shards.iter_mut().filter(|s| parents.contains(&s.index)) {
            s.closed = Some(ClosedMeta { end_offset: PENDING_END, closed_ms: now });
        }
        for (k, (range, parent, adjacent)) in children.iter().enumerate() {
            next.shards.push(ShardMeta::open(
                first + k as u64,
                *range,
                Some(*parent),
                *adjacent,
                now,
            ));
        }
        next.next_shard_index += children.len() as u64;
        if store.inner.catalog.update(&next, v.revision).await?.is_some() {
            finish_pending(store, name).await?;
            let child_ids: Vec<u64> = (first..next.next_shard_index).collect();
            tracing::info!(stream = name, ?parents, children = ?child_ids, "resharded on JetStream");
            return Ok(());
        }
    }
    Err(StoreError::LimitExceeded(format!("too many concurrent reshards of {name:?}")))
}

/// Seals the streams of closed shards whose end is pending and records
/// their ends; returns the stream as then stored.
pub(super) async fn finish_pending(
    store: &JetStreamStore,
    name: &str,
) -> Result<Versioned, StoreError> {
    for _ in 0..MAX_CAS_RETRIES {
        let v = store.inner.catalog.read(name).await?;
        let pending: Vec<u64> = v
            .meta
            .shards
            .iter()
            .filter(|s| s.closed.is_some_and(|c| c.end_offset == PENDING_END))
            .map(|s| s.index)
            .collect();
        if pending.is_empty() {
            return Ok(v);
        }
        let mut next = v.meta.clone();
        for p in pending {
            let end = seal(store, next.id, p).await?;
            if let Some(c) =
                next.shards.iter_mut().find(|s| s.index == p).and_then(|s| s.closed.as_mut())
            {
                c.end_offset = end;
            }
        }
        if let Some(revision) = store.inner.catalog.update(&next, v.revision).await? {
            return Ok(Versioned { meta: next, revision });
        }
    }
    Err(StoreError::LimitExceeded(format!("too many concurrent changes of {name:?}")))
}

/// Seals a shard's stream; returns the offset after its last record.
async fn seal(store: &JetStreamStore, id: u64, index: u64) -> Result<u64, StoreError> {
    let js = &store.inner.js;
    let mut s = match js.get_stream(store.stream_name(id, index)).await {
        Ok(s) => s,
        Err(e) if e.to_string().contains("not found") => return Ok(offset_of(1, 0)),
        Err(e) => return Err(backend_error("reading a shard stream", e)),
    };
    let info = s.info().await.map_err(|e| backend_error("reading a shard stream", e))?.clone();
    if !info.config.sealed {
        let mut config = info.config.clone();
        config.sealed = true;
        js.update_stream(config).await.map_err(|e| backend_error("sealing a shard stream", e))?;
    }
    // Read the state after the seal: nothing is appended past it.
    let info = s.info().await.map_err(|e| backend_error("reading a shard stream", e))?;
    let last = info.state.last_sequence;
    if info.state.messages == 0 {
        return Ok(offset_of(last + 1, 0));
    }
    let m =
        s.get_raw_message(last).await.map_err(|e| backend_error("reading a shard stream", e))?;
    let n = pack::decode(&m.payload)
        .map_err(|reason| backend_error("reading a shard stream", reason))?
        .len();
    Ok(offset_of(last, n as u64))
}

/// Removes closed shards whose every record is past the retention, with
/// their streams. Best effort: a lost race leaves it to the next call.
pub(super) async fn expire_closed(
    store: &JetStreamStore,
    v: Versioned,
) -> Result<Versioned, StoreError> {
    let keep_ms = u64::from(v.meta.retention_hours) * 3_600_000;
    let now = store.now_ms();
    let expired: Vec<u64> = v
        .meta
        .shards
        .iter()
        .filter(|s| {
            s.closed.is_some_and(|c| c.end_offset != PENDING_END && c.closed_ms + keep_ms < now)
        })
        .map(|s| s.index)
        .collect();
    if expired.is_empty() {
        return Ok(v);
    }
    let mut next = v.meta.clone();
    next.shards.retain(|s| !expired.contains(&s.index));
    match store.inner.catalog.update(&next, v.revision).await? {
        Some(revision) => {
            for i in expired {
                let _ = store.delete_shard_stream(next.id, i).await;
            }
            Ok(Versioned { meta: next, revision })
        }
        None => store.inner.catalog.read(&v.meta.name).await,
    }
}
