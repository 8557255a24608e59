//! The router: sends each appended record to the open shard whose hash range
//! holds its hash key (MD5 of the partition key, or the explicit hash key),
//! one request per shard, and routes again the records a shard hands back
//! because a reshard closed it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir_wire::{HashRange, validate_data, validate_partition_key};

use super::backend::{Appended, NewRecord};
use super::error::StoreError;
use super::log_store::LogStore;
use super::producer::ProducerBatch;
use super::shard::sequence_of;
use super::stream::ShardHandle;
use super::writer::{AppendReply, MAX_APPEND_BYTES};
/// How long an append whose shard just closed waits for the new routing table
/// before it fails; a reshard publishes it right after its catalog is saved.
pub(super) const REROUTE_WAIT: Duration = Duration::from_secs(10);
/// How many times one append is routed again after landing on closed shards.
pub(super) const MAX_REROUTES: usize = 8;

/// The open shards of a stream, ordered by hash range start.
#[derive(Debug, Default)]
pub(super) struct Routing {
    pub(super) open: Vec<(HashRange, Arc<ShardHandle>)>,
}

impl Routing {
    pub(super) fn route(&self, hash: u128) -> Option<&Arc<ShardHandle>> {
        let i = self.open.partition_point(|(r, _)| r.start <= hash).checked_sub(1)?;
        let (range, shard) = &self.open[i];
        range.contains(hash).then_some(shard)
    }
}

impl LogStore {
    /// Appends records, each to the open shard owning its hash key; with a
    /// producer `tag`, a shard that already holds that producer batch appends
    /// nothing and its records answer `Ok(None)`.
    pub(super) async fn append_tagged(
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
}
