//! Appends on JetStream: records grouped by the open shard owning their hash
//! key, each group published as one message (or a few, past the server's
//! payload limit), every shard's publishes in flight together; an append
//! answers once JetStream acknowledged them all. Idempotent producer batches
//! publish with an expected last sequence per producer and shard (see the
//! module header of `jetstream`).

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::future::join_all;
use weir_wire::{validate_data, validate_partition_key};

use super::super::backend::{Appended, NewRecord, ProducerBatch};
use super::super::catalog::{StreamMeta, StreamStatus};
use super::super::error::StoreError;
use super::super::router::check_size;
use super::super::shard::{sequence_of, shard_id};
use super::catalog::MAX_CAS_RETRIES;
use super::{JetStreamStore, backend_error, offset_of, pack};

/// How long records that met a sealed or leaderless shard are retried
/// (rerouted through a fresh catalog) before the append answers an error.
pub const REROUTE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// First pause before such a retry; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
/// Payload bytes kept free below the server's `max_payload` for headers.
const HEADER_ROOM: usize = 4 * 1024;
/// How deep the lineage is searched for a producer's last batch.
const MAX_LINEAGE_DEPTH: usize = 16;
const BATCH_HEADER: &str = "Weir-Batch";
const CHUNK_HEADER: &str = "Weir-Chunk";

type Results = Vec<Option<Result<Option<Appended>, StoreError>>>;

/// What publishing one shard's records gave.
struct GroupOutcome {
    /// Per record of the group, in order: appended, duplicate, failed, or
    /// `None` for records to route again (their shard was sealed).
    results: Vec<Option<Result<Option<Appended>, StoreError>>>,
}

/// Appends `records` to `stream` (see [`StreamStore::append`] and
/// [`StreamStore::append_batch`](super::super::backend::StreamStore::append_batch)).
///
/// # Errors
/// The stream does not exist, or the append is too large.
pub(super) async fn append(
    store: &JetStreamStore,
    stream: &str,
    records: Vec<NewRecord>,
    tag: Option<ProducerBatch>,
) -> Result<Vec<Result<Option<Appended>, StoreError>>, StoreError> {
    check_size(&records)?;
    let mut results: Results = vec![None; records.len()];
    let mut pending: Vec<(usize, NewRecord)> = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        match validate_partition_key(&r.partition_key).and_then(|()| validate_data(&r.data)) {
            Ok(()) => pending.push((i, r)),
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }
    let deadline = tokio::time::Instant::now() + REROUTE_WAIT;
    let mut pause = FIRST_PAUSE;
    for attempt in 0.. {
        if pending.is_empty() || (attempt > 0 && tokio::time::Instant::now() >= deadline) {
            break;
        }
        if attempt > 0 {
            // A shard refused: sealed by a reshard (the catalog, read again,
            // routes elsewhere) or without a leader for a moment (a server
            // of the cluster died): wait a little, bounded by REROUTE_WAIT.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        let v = if attempt == 0 {
            store.inner.catalog.cached(stream).await?
        } else {
            store.meta(stream).await?
        };
        let meta = v.meta;
        if meta.status == StreamStatus::Deleting {
            return Err(StoreError::StreamNotFound(stream.to_owned()));
        }
        if meta.status == StreamStatus::Creating {
            // Another collector is creating its shard streams: wait for
            // ACTIVE like for a new leader, bounded by REROUTE_WAIT.
            store.inner.catalog.forget(stream);
            continue;
        }
        let open = meta.open_shards();
        let mut groups: Vec<(u64, Vec<usize>, Vec<NewRecord>)> = Vec::new();
        for (i, r) in pending.drain(..) {
            let hash = r.explicit_hash_key.unwrap_or_else(|| weir_wire::hash_key(&r.partition_key));
            let Some(shard) = open.iter().find(|s| s.range().contains(hash)) else {
                results[i] = Some(Err(StoreError::StreamNotActive {
                    stream: stream.to_owned(),
                    status: meta.status.as_str(),
                }));
                continue;
            };
            match groups.iter_mut().find(|(s, _, _)| *s == shard.index) {
                Some((_, idx, recs)) => {
                    idx.push(i);
                    recs.push(r);
                }
                None => groups.push((shard.index, vec![i], vec![r])),
            }
        }
        if meta.write_limits {
            groups = groups
                .into_iter()
                .map(|g| admit(store, &meta, g, tag.is_some(), &mut results))
                .collect();
        }
        let outcomes = join_all(
            groups
                .iter()
                .map(|(index, _, recs)| publish_group(store, &meta, *index, recs, tag.as_ref())),
        )
        .await;
        for ((_, idx, recs), outcome) in groups.into_iter().zip(outcomes) {
            for ((i, r), res) in idx.into_iter().zip(recs).zip(outcome.results) {
                match res {
                    Some(res) => results[i] = Some(res),
                    None => pending.push((i, r)),
                }
            }
        }
        if !pending.is_empty() {
            store.inner.catalog.forget(stream);
        }
    }
    for (i, _) in pending {
        results[i] = Some(Err(backend_error(
            "publishing",
            format!(
                "no JetStream leader took the records (or the stream stayed CREATING) \
                 within {REROUTE_WAIT:?}; retry"
            ),
        )));
    }
    Ok(results.into_iter().map(|r| r.unwrap_or(Err(StoreError::ShuttingDown))).collect())
}

/// Holds a shard's records to the per-shard write limits, on this collector.
fn admit(
    store: &JetStreamStore,
    meta: &StreamMeta,
    (index, idx, recs): (u64, Vec<usize>, Vec<NewRecord>),
    all_or_nothing: bool,
    results: &mut Results,
) -> (u64, Vec<usize>, Vec<NewRecord>) {
    let sizes: Vec<usize> = recs.iter().map(|r| r.partition_key.len() + r.data.len()).collect();
    let ok = store.limiter(meta.id).admit(index, store.now_ms(), &sizes, all_or_nothing);
    let (mut keep_idx, mut keep) = (Vec::new(), Vec::new());
    for ((i, r), ok) in idx.into_iter().zip(recs).zip(ok) {
        if ok {
            keep_idx.push(i);
            keep.push(r);
        } else {
            results[i] = Some(Err(StoreError::ThroughputExceeded {
                stream: meta.name.clone(),
                shard: shard_id(index),
            }));
        }
    }
    (index, keep_idx, keep)
}

/// Why a publish did not land.
enum PublishFailure {
    /// The shard's stream is sealed or gone: route again.
    Closed,
    /// Another collector published this producer's next message first.
    WrongLastSequence,
    /// Anything else.
    Failed(StoreError),
}

fn classify(e: &async_nats::jetstream::context::PublishError) -> PublishFailure {
    match e.kind() {
        PublishErrorKind::StreamNotFound => PublishFailure::Closed,
        PublishErrorKind::WrongLastSequence => PublishFailure::WrongLastSequence,
        _ if e.to_string().contains("sealed") => PublishFailure::Closed,
        _ => PublishFailure::Failed(backend_error("publishing", e)),
    }
}

/// Publishes one payload and waits for its acknowledgement: its sequence.
async fn publish(
    store: &JetStreamStore,
    subject: String,
    headers: Option<HeaderMap>,
    payload: bytes::Bytes,
) -> Result<u64, PublishFailure> {
    let js = &store.inner.js;
    let sent = match headers {
        Some(h) => js.publish_with_headers(subject, h, payload).await,
        None => js.publish(subject, payload).await,
    };
    let ack = sent.map_err(|e| classify(&e))?.await.map_err(|e| classify(&e))?;
    Ok(ack.sequence)
}

/// Publishes one shard's records (see the module header).
async fn publish_group(
    store: &JetStreamStore,
    meta: &StreamMeta,
    index: u64,
    records: &[NewRecord],
    tag: Option<&ProducerBatch>,
) -> GroupOutcome {
    let max = store.inner.max_payload.saturating_sub(HEADER_ROOM).max(1);
    let chunks = pack::chunks(records, max);
    if let Some(big) = records.iter().map(pack::record_len).find(|l| *l + 64 > max) {
        let e = StoreError::InvalidArgument(format!(
            "a record of {big} bytes does not fit the NATS servers' max_payload of {} bytes; \
             raise max_payload on the servers (Kinesis records reach 1 MiB; 8MB is safe)",
            store.inner.max_payload
        ));
        return GroupOutcome { results: vec![Some(Err(e)); records.len()] };
    }
    let base = store.subject_base(meta.id, index);
    let mut results: Vec<Option<Result<Option<Appended>, StoreError>>> = vec![None; records.len()];
    let appended = |seq: u64, i: usize| Appended {
        shard_id: shard_id(index),
        sequence: sequence_of(index, offset_of(seq, i as u64)),
        arrival_ms: store.now_ms(),
    };
    let Some(tag) = tag else {
        // Untagged: every chunk in flight at once.
        let acks =
            join_all(chunks.iter().map(|c| {
                publish(store, format!("{base}.r"), None, pack::encode(&records[c.clone()]))
            }))
            .await;
        for (c, ack) in chunks.iter().zip(acks) {
            for (k, i) in c.clone().enumerate() {
                results[i] = match &ack {
                    Ok(seq) => Some(Ok(Some(appended(*seq, k)))),
                    Err(PublishFailure::Closed) => None,
                    Err(PublishFailure::Failed(e)) => Some(Err(e.clone())),
                    Err(PublishFailure::WrongLastSequence) => {
                        Some(Err(backend_error("publishing", "unexpected sequence check")))
                    }
                };
            }
        }
        return GroupOutcome { results };
    };
    let subject = format!("{base}.p.{}", hex(&tag.producer_id));
    let stream_name = store.stream_name(meta.id, index);
    'retry: for _ in 0..MAX_CAS_RETRIES {
        let last = match last_batch(store, &stream_name, &subject).await {
            Ok(l) => l,
            Err(LastBatch::Closed) => return GroupOutcome { results },
            Err(LastBatch::Failed(e)) => {
                return GroupOutcome { results: vec![Some(Err(e)); records.len()] };
            }
        };
        let n = chunks.len() as u64;
        let (mut expected, first_chunk) = match last {
            Some(l)
                if l.batch > tag.batch_seq
                    || (l.batch == tag.batch_seq && l.chunk + 1 >= l.chunks) =>
            {
                return GroupOutcome { results: vec![Some(Ok(None)); records.len()] };
            }
            Some(l) if l.batch == tag.batch_seq && l.chunks == n => (l.seq, l.chunk + 1),
            Some(l) => (l.seq, 0),
            None => {
                if ancestor_has(store, meta, index, &tag.producer_id, tag.batch_seq).await {
                    return GroupOutcome { results: vec![Some(Ok(None)); records.len()] };
                }
                (0, 0)
            }
        };
        for (j, c) in chunks.iter().enumerate() {
            if (j as u64) < first_chunk {
                for i in c.clone() {
                    results[i] = Some(Ok(None));
                }
                continue;
            }
            let mut h = HeaderMap::new();
            h.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
            h.insert(BATCH_HEADER, tag.batch_seq.to_string());
            h.insert(CHUNK_HEADER, format!("{j}/{n}"));
            match publish(store, subject.clone(), Some(h), pack::encode(&records[c.clone()])).await
            {
                Ok(seq) => {
                    expected = seq;
                    for (k, i) in c.clone().enumerate() {
                        results[i] = Some(Ok(Some(appended(seq, k))));
                    }
                }
                Err(PublishFailure::WrongLastSequence) => continue 'retry,
                Err(PublishFailure::Closed) => return GroupOutcome { results },
                Err(PublishFailure::Failed(e)) => {
                    for r in &mut results[c.start..] {
                        *r = Some(Err(e.clone()));
                    }
                    return GroupOutcome { results };
                }
            }
        }
        return GroupOutcome { results };
    }
    let e = StoreError::LimitExceeded("too many collectors appending this producer's batch".into());
    GroupOutcome { results: vec![Some(Err(e)); records.len()] }
}

/// A producer's last message in a shard.
#[derive(Debug, Clone, Copy)]
struct LastSeen {
    seq: u64,
    batch: u64,
    chunk: u64,
    chunks: u64,
}

enum LastBatch {
    Closed,
    Failed(StoreError),
}

async fn last_batch(
    store: &JetStreamStore,
    stream_name: &str,
    subject: &str,
) -> Result<Option<LastSeen>, LastBatch> {
    let js_stream = store
        .inner
        .js
        .get_stream_no_info(stream_name)
        .await
        .map_err(|e| LastBatch::Failed(backend_error("opening a shard stream", e)))?;
    match js_stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => {
            let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
            let batch = header(BATCH_HEADER).and_then(|v| v.parse().ok());
            let chunk = header(CHUNK_HEADER).and_then(|v| {
                let (k, n) = v.split_once('/')?;
                Some((k.parse().ok()?, n.parse().ok()?))
            });
            match (batch, chunk) {
                (Some(batch), Some((chunk, chunks))) => {
                    Ok(Some(LastSeen { seq: m.sequence, batch, chunk, chunks }))
                }
                _ => Err(LastBatch::Failed(backend_error(
                    "reading a producer's last batch",
                    format!("message {} on {subject} lacks the batch headers", m.sequence),
                ))),
            }
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) if e.to_string().contains("not found") => Err(LastBatch::Closed),
        Err(e) => Err(LastBatch::Failed(backend_error("reading a producer's last batch", e))),
    }
}

/// Whether a parent (or their parents) of shard `index` already holds this
/// producer's batch `batch` whole, or a later one.
async fn ancestor_has(
    store: &JetStreamStore,
    meta: &StreamMeta,
    index: u64,
    producer: &str,
    batch: u64,
) -> bool {
    let mut frontier: Vec<u64> = vec![index];
    for _ in 0..MAX_LINEAGE_DEPTH {
        let parents: Vec<u64> = frontier
            .iter()
            .filter_map(|i| meta.shard(*i))
            .flat_map(|s| [s.parent, s.adjacent_parent])
            .flatten()
            .collect();
        if parents.is_empty() {
            return false;
        }
        for p in &parents {
            let subject = format!("{}.p.{}", store.subject_base(meta.id, *p), hex(producer));
            if let Ok(Some(l)) = last_batch(store, &store.stream_name(meta.id, *p), &subject).await
                && (l.batch > batch || (l.batch == batch && l.chunk + 1 >= l.chunks))
            {
                return true;
            }
        }
        frontier = parents;
    }
    false
}

/// Lower-case hex of a producer id (subject tokens allow no dots or spaces).
fn hex(s: &str) -> String {
    use std::fmt::Write;
    s.bytes().fold(String::with_capacity(s.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
