//! The router: sends each appended record to the open shard whose hash range
//! holds its hash key (MD5 of the partition key, or the explicit hash key),
//! one request per shard, and routes again the records a shard hands back
//! because a reshard closed it.
//!
//! [`append`] works on one stream's state (its routing table, write limits
//! and shards' writers); the store looks the stream up and calls it.

use std::sync::Arc;
use std::time::Duration;

use weir_wire::{validate_data, validate_partition_key};

use super::backend::{Appended, NewRecord};
use super::clock::Clock;
use super::error::StoreError;
use super::producer::ProducerBatch;
use super::shard::sequence_of;
use super::stream::{ShardHandle, StreamState};
use super::writer::{AppendReply, MAX_APPEND_BYTES};

/// How long an append whose shard just closed waits for the new routing table
/// before it fails; a reshard publishes it right after its catalog is saved.
pub(super) const REROUTE_WAIT: Duration = Duration::from_secs(10);
/// How many times one append is routed again after landing on closed shards.
pub(super) const MAX_REROUTES: usize = 8;

/// One answer per record: appended, already held (`Ok(None)`, a tagged
/// append's duplicate), or why not.
pub(super) type AppendResults = Vec<Result<Option<Appended>, StoreError>>;

/// The records of one append bound for one shard, with their places in the call.
type Group = (Arc<ShardHandle>, Vec<usize>, Vec<NewRecord>);

/// Refuses an append whose records are more than one append may carry.
///
/// # Errors
/// [`StoreError::InvalidArgument`].
pub(super) fn check_size(records: &[NewRecord]) -> Result<(), StoreError> {
    let total: usize = records.iter().map(NewRecord::encoded_len).sum();
    if total > MAX_APPEND_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "one append carries {total} bytes, more than {MAX_APPEND_BYTES}"
        )));
    }
    Ok(())
}

/// Appends records to `stream`, each to the open shard owning its hash key;
/// with a producer `tag`, a shard that already holds that producer batch
/// appends nothing and its records answer `Ok(None)`. Write limits are
/// measured on `clock`.
///
/// # Errors
/// The stream was deleted while the append waited for a new routing table.
pub(super) async fn append(
    stream: &StreamState,
    clock: &dyn Clock,
    records: Vec<NewRecord>,
    tag: Option<ProducerBatch>,
) -> Result<AppendResults, StoreError> {
    let mut results: Vec<Option<Result<Option<Appended>, StoreError>>> = vec![None; records.len()];
    let mut pending: Vec<(usize, NewRecord)> = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        match validate_partition_key(&r.partition_key).and_then(|()| validate_data(&r.data)) {
            Ok(()) => pending.push((i, r)),
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }
    let mut routing_rx = stream.subscribe_routing();
    for attempt in 0..=MAX_REROUTES {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            // Some records met a closed shard: wait for the new table.
            match tokio::time::timeout(REROUTE_WAIT, routing_rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(StoreError::StreamNotFound(stream.name().to_owned())),
                Err(_) => break,
            }
        }
        let routing = routing_rx.borrow_and_update().clone();
        // Group by shard, keeping each shard's records in call order.
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in pending.drain(..) {
            let hash = r.explicit_hash_key.unwrap_or_else(|| weir_wire::hash_key(&r.partition_key));
            let Some(shard) = routing.route(hash) else {
                results[i] = Some(Err(StoreError::StreamNotActive {
                    stream: stream.name().to_owned(),
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
        for group in groups {
            let (shard, idx, recs) = if stream.write_limits() {
                admit(stream, clock, group, tag.is_some(), &mut results)
            } else {
                group
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
            let shared = shard.shared();
            match reply.await {
                Ok(AppendReply::Done { first_offset, arrival_ms }) => {
                    for (k, i) in idx.into_iter().enumerate() {
                        results[i] = Some(Ok(Some(Appended {
                            shard_id: shared.id.clone(),
                            sequence: sequence_of(shared.index, first_offset + k as u64),
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
            stream: stream.name().to_owned(),
            status: "UPDATING",
        }));
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(StoreError::ShuttingDown))).collect())
}

/// Holds a shard's records to its write limits (`throttle`): answers the
/// refused ones and returns the rest. A tagged batch is admitted whole or not
/// at all, so its retry is never mistaken for a duplicate.
fn admit(
    stream: &StreamState,
    clock: &dyn Clock,
    (shard, idx, recs): Group,
    all_or_nothing: bool,
    results: &mut [Option<Result<Option<Appended>, StoreError>>],
) -> Group {
    let sizes: Vec<usize> = recs.iter().map(|r| r.partition_key.len() + r.data.len()).collect();
    let now = clock.now_ms();
    let admitted = stream.limiter().admit(shard.shared().index, now, &sizes, all_or_nothing);
    let (mut keep_idx, mut keep_recs) = (Vec::new(), Vec::new());
    for ((i, r), ok) in idx.into_iter().zip(recs).zip(admitted) {
        if ok {
            keep_idx.push(i);
            keep_recs.push(r);
        } else {
            results[i] = Some(Err(StoreError::ThroughputExceeded {
                stream: stream.name().to_owned(),
                shard: shard.shared().id.clone(),
            }));
        }
    }
    (shard, keep_idx, keep_recs)
}
