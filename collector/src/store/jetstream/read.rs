//! Reading on JetStream: starting positions from the shard stream's state
//! (and, for AT_TIMESTAMP, a binary search over message times), and reads
//! message by message from the stream leader, so a record acknowledged
//! through one collector is readable through any other at once.

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};

use super::super::backend::{ReadBatch, ReadLimits, ShardPosition, StartingPosition, StoredRecord};
use super::super::catalog::{ShardMeta, StreamMeta};
use super::super::error::StoreError;
use super::super::log_store::sequence_offset;
use super::super::shard::{parse_shard_id, sequence_of, shard_id};
use super::super::stream::children_of;
use super::catalog::PENDING_END;
use super::{JetStreamStore, backend_error, offset_of, pack, split_offset};

/// Most messages one read fetches (each is one request to the stream
/// leader); a read that stops here answers with what it has and where to go
/// on, as a Kinesis read may.
pub const MAX_MESSAGES_PER_READ: usize = 512;

fn shard_of(meta: &StreamMeta, index: u64) -> Result<&ShardMeta, StoreError> {
    meta.shard(index).ok_or_else(|| StoreError::ShardNotFound {
        stream: meta.name.clone(),
        shard: shard_id(index),
    })
}

async fn js_stream(
    store: &JetStreamStore,
    meta: &StreamMeta,
    index: u64,
) -> Result<Stream<()>, StoreError> {
    store
        .inner
        .js
        .get_stream_no_info(store.stream_name(meta.id, index))
        .await
        .map_err(|e| backend_error("opening a shard stream", e))
}

/// (first sequence, last sequence) of a shard's stream.
async fn bounds(
    store: &JetStreamStore,
    meta: &StreamMeta,
    index: u64,
) -> Result<(u64, u64), StoreError> {
    let mut s = store
        .inner
        .js
        .get_stream(store.stream_name(meta.id, index))
        .await
        .map_err(|e| backend_error("reading a shard stream", e))?;
    let info = s.info().await.map_err(|e| backend_error("reading a shard stream", e))?;
    Ok((info.state.first_sequence.max(1), info.state.last_sequence))
}

fn time_ms(m: &StreamMessage) -> u64 {
    u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The first message at or after `seq`, if any.
async fn next_message(
    s: &Stream<()>,
    filter: &str,
    seq: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    match s.get_first_raw_message_by_subject(filter, seq.max(1)).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(backend_error("reading a shard stream", e)),
    }
}

/// Resolves a starting position (see [`StreamStore::position`](super::super::backend::StreamStore::position)).
pub(super) async fn position(
    store: &JetStreamStore,
    stream: &str,
    shard: &str,
    start: StartingPosition,
) -> Result<ShardPosition, StoreError> {
    let meta = store.meta(stream).await?.meta;
    let not_found =
        || StoreError::ShardNotFound { stream: stream.to_owned(), shard: shard.to_owned() };
    let index = parse_shard_id(shard).ok_or_else(not_found)?;
    shard_of(&meta, index)?;
    let (first, last) = bounds(store, &meta, index).await?;
    let trim = offset_of(first, 0);
    let end = offset_of(last + 1, 0);
    let check_seq = |s| sequence_offset(s, index, shard, end);
    let offset = match start {
        StartingPosition::TrimHorizon => trim,
        StartingPosition::Latest => end,
        StartingPosition::AtSequence(s) => check_seq(&s)?.max(trim),
        StartingPosition::AfterSequence(s) => (check_seq(&s)? + 1).max(trim),
        StartingPosition::AtTimestamp(ts) => {
            let s = js_stream(store, &meta, index).await?;
            let filter = format!("{}.>", store.subject_base(meta.id, index));
            // The first sequence whose message arrived at or after `ts`.
            let (mut lo, mut hi) = (first, last + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match next_message(&s, &filter, mid).await? {
                    Some(m) if m.sequence < hi && time_ms(&m) < ts => lo = m.sequence + 1,
                    _ => hi = mid,
                }
            }
            offset_of(lo, 0)
        }
    };
    Ok(ShardPosition { stream_id: meta.id, shard_index: index, offset })
}

/// Reads from a position (see [`StreamStore::read`](super::super::backend::StreamStore::read)).
pub(super) async fn read(
    store: &JetStreamStore,
    stream: &str,
    from: ShardPosition,
    limits: ReadLimits,
) -> Result<ReadBatch, StoreError> {
    let meta = store.inner.catalog.cached(stream).await?.meta;
    if from.stream_id != meta.id {
        return Err(StoreError::InvalidArgument(format!(
            "position belongs to an earlier stream named {stream:?}"
        )));
    }
    let index = from.shard_index;
    let shard = shard_of(&meta, index)?;
    let end = shard.closed.map(|c| c.end_offset).filter(|e| *e != PENDING_END);
    let expired_before = if shard.closed.is_some() {
        store.now_ms().saturating_sub(u64::from(meta.retention_hours) * 3_600_000)
    } else {
        0 // open shards expire through max_age
    };
    let s = js_stream(store, &meta, index).await?;
    let filter = format!("{}.>", store.subject_base(meta.id, index));
    let mut records = Vec::new();
    let mut bytes = 0usize;
    let mut next = from.offset;
    let mut reached_end = false;
    'messages: for _ in 0..MAX_MESSAGES_PER_READ {
        if end.is_some_and(|e| next >= e) {
            reached_end = true;
            break;
        }
        let (seq, skip) = split_offset(next);
        let Some(m) = next_message(&s, &filter, seq).await? else {
            reached_end = true;
            break;
        };
        let arrival_ms = time_ms(&m);
        let unpacked = pack::decode(&m.payload).map_err(|reason| {
            backend_error(
                "reading a shard stream",
                format!("message {} of {}: {reason}", m.sequence, shard_id(index)),
            )
        })?;
        let first = if m.sequence == seq { skip } else { 0 };
        for (k, r) in
            unpacked.into_iter().enumerate().skip(usize::try_from(first).unwrap_or(usize::MAX))
        {
            let offset = offset_of(m.sequence, k as u64);
            if !records.is_empty()
                && (records.len() >= limits.max_records || bytes + r.data.len() > limits.max_bytes)
            {
                next = offset;
                break 'messages;
            }
            if arrival_ms < expired_before {
                continue;
            }
            bytes += r.data.len();
            records.push(StoredRecord {
                sequence: sequence_of(index, offset),
                arrival_ms,
                partition_key: r.partition_key,
                data: r.data,
                explicit_hash_key: r.explicit_hash_key,
                producer_timestamp_ms: r.producer_timestamp_ms,
            });
        }
        next = offset_of(m.sequence + 1, 0);
    }
    let millis_behind_latest = match (reached_end, records.last()) {
        (false, Some(r)) => store.now_ms().saturating_sub(r.arrival_ms),
        _ => 0,
    };
    let end_of_shard = match end {
        Some(e) if next >= e || reached_end && shard.closed.is_some() => {
            Some(children_of(&meta, index))
        }
        _ => None,
    };
    Ok(ReadBatch {
        records,
        next: ShardPosition { stream_id: meta.id, shard_index: index, offset: next },
        millis_behind_latest,
        end_of_shard,
    })
}
