//! Records in and out: PutRecord, PutRecords, GetShardIterator, GetRecords.

use std::collections::HashMap;

use weir_wire::{MAX_DATA_BYTES, MAX_PARTITION_KEY_CHARS};

use super::codec::{Blob, Timestamp};
use super::error::{ApiError, ErrorKind, Violations};
use super::metrics;
use super::model::{
    ChildShard, GetRecordsInput, GetRecordsOutput, GetShardIteratorInput, GetShardIteratorOutput,
    HashKeyRange, PutRecordInput, PutRecordOutput, PutRecordsInput, PutRecordsOutput,
    PutRecordsRequestEntry, PutRecordsResultEntry, RecordOut, Seq,
};
use super::service::{
    Api, check_len, check_name, check_range, check_sequence_shape, parse_hash_key, present,
};
use super::token::{MAX_TOKEN_CHARS, TokenError};
use crate::log_limit::LogLimit;
use crate::store::{
    Appended, NewRecord, ReadLimits, SequenceNumber, StartingPosition, StoreError, StreamStore,
};

/// Most entries in one PutRecords call.
pub const MAX_PUT_RECORDS_ENTRIES: usize = 500;
/// Most bytes (data plus partition keys) in one PutRecords call.
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;
/// Most records one GetRecords call returns (and its default Limit).
pub const MAX_GET_RECORDS: i64 = 10_000;
/// Most data bytes one GetRecords call returns.
pub const MAX_GET_RECORDS_BYTES: usize = 10 * 1024 * 1024;

/// Checks one record's members, recording violations under
/// `records.<n>.member.` for PutRecords entry `entry` (1-based), else at the
/// top level. Member names are only built for a violation: this runs for
/// every record of every PutRecords.
fn check_record(
    v: &mut Violations,
    entry: Option<usize>,
    data: Option<&Blob>,
    key: Option<&str>,
    explicit: Option<&str>,
) -> Result<Option<u128>, ApiError> {
    let member = |name: &str| match entry {
        Some(n) => format!("records.{n}.member.{name}"),
        None => name.to_owned(),
    };
    match data {
        None => v.missing(&member("data")),
        Some(d) if d.0.len() > MAX_DATA_BYTES => v.add(
            &member("data"),
            &format!("<{} bytes>", d.0.len()),
            &format!("Member must have length less than or equal to {MAX_DATA_BYTES}"),
        ),
        Some(_) => {}
    }
    match key {
        None => v.missing(&member("partitionKey")),
        Some(k) if (1..=MAX_PARTITION_KEY_CHARS).contains(&k.len()) && k.is_ascii() => {}
        Some(k) => {
            check_len(v, &member("partitionKey"), k, 1, MAX_PARTITION_KEY_CHARS);
        }
    }
    match explicit {
        None => Ok(None),
        Some(h) => parse_hash_key(v, &member("explicitHashKey"), h, "ExplicitHashKey"),
    }
}

pub(super) async fn put_one<S: StreamStore>(
    api: &Api<S>,
    i: PutRecordInput,
) -> Result<PutRecordOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    let explicit = check_record(
        &mut v,
        None,
        i.data.as_ref(),
        i.partition_key.as_deref(),
        i.explicit_hash_key.as_deref(),
    )?;
    if let Some(s) = &i.sequence_number_for_ordering {
        // Sequence numbers already increase in arrival order within a shard,
        // which is what SequenceNumberForOrdering asks for; only its shape is
        // checked.
        check_sequence_shape(&mut v, "sequenceNumberForOrdering", s);
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let record = NewRecord {
        partition_key: present("partitionKey", i.partition_key)?,
        data: present("data", i.data)?.0,
        explicit_hash_key: explicit,
        producer_timestamp_ms: None,
    };
    let bytes = record.partition_key.len() + record.data.len();
    let mut results = api.store.append(&name, vec![record]).await?;
    let result = results
        .pop()
        .ok_or_else(|| ApiError::new(ErrorKind::InternalFailure, "the store answered no result"))?;
    match result {
        Ok(a) => {
            metrics::incoming(&name, &a.shard_id, 1, bytes as u64);
            Ok(PutRecordOutput {
                shard_id: a.shard_id,
                sequence_number: a.sequence.to_string(),
                encryption_type: "NONE",
            })
        }
        Err(e) => {
            if let StoreError::ThroughputExceeded { shard, .. } = &e {
                metrics::throttled(&name, shard, 1);
            }
            Err(e.into())
        }
    }
}

pub(super) async fn put_many<S: StreamStore>(
    api: &Api<S>,
    i: PutRecordsInput,
) -> Result<PutRecordsOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    let entries = match i.records {
        None => {
            v.missing("records");
            Vec::new()
        }
        Some(r) if r.is_empty() || r.len() > MAX_PUT_RECORDS_ENTRIES => {
            let c = if r.is_empty() {
                "Member must have length greater than or equal to 1".to_owned()
            } else {
                format!("Member must have length less than or equal to {MAX_PUT_RECORDS_ENTRIES}")
            };
            v.add("records", &format!("<{} entries>", r.len()), &c);
            Vec::new()
        }
        Some(r) => r,
    };
    let mut explicit = Vec::with_capacity(entries.len());
    for (n, e) in entries.iter().enumerate() {
        explicit.push(check_record(
            &mut v,
            Some(n + 1),
            e.data.as_ref(),
            e.partition_key.as_deref(),
            e.explicit_hash_key.as_deref(),
        )?);
    }
    v.finish()?;
    let name = present("streamName", name)?;
    let total: usize = entries
        .iter()
        .map(|e| {
            e.data.as_ref().map_or(0, |d| d.0.len())
                + e.partition_key.as_ref().map_or(0, String::len)
        })
        .sum();
    if total > MAX_PUT_RECORDS_BYTES {
        return Err(ApiError::invalid(format!(
            "Records size exceeds {} MB limit: the request carries {total} bytes.",
            MAX_PUT_RECORDS_BYTES / (1024 * 1024)
        )));
    }
    let records: Vec<NewRecord> = entries
        .into_iter()
        .zip(explicit)
        .map(|(PutRecordsRequestEntry { data, partition_key, .. }, explicit_hash_key)| NewRecord {
            partition_key: partition_key.unwrap_or_default(),
            data: data.unwrap_or_default().0,
            explicit_hash_key,
            producer_timestamp_ms: None,
        })
        .collect();
    let sizes: Vec<u64> =
        records.iter().map(|r| (r.partition_key.len() + r.data.len()) as u64).collect();
    let results = api.store.append(&name, records).await?;
    Ok(put_records_output(&name, results, &sizes))
}

/// Shapes PutRecords' per-entry results and counts them in the metrics.
fn put_records_output(
    stream: &str,
    results: Vec<Result<Appended, StoreError>>,
    sizes: &[u64],
) -> PutRecordsOutput {
    let mut failed = 0;
    // (records, bytes, throttled) per shard, counted once per call.
    let mut per_shard: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let (mut internal, mut first_internal) = (0u64, None::<String>);
    let records = results
        .into_iter()
        .zip(sizes)
        .map(|(r, size)| match r {
            Ok(a) => {
                let c = match per_shard.get_mut(&a.shard_id) {
                    Some(c) => c,
                    None => per_shard.entry(a.shard_id.clone()).or_default(),
                };
                c.0 += 1;
                c.1 += size;
                PutRecordsResultEntry {
                    sequence_number: Some(Seq(a.sequence)),
                    shard_id: Some(a.shard_id),
                    error_code: None,
                    error_message: None,
                }
            }
            Err(e) => {
                failed += 1;
                if let StoreError::ThroughputExceeded { shard, .. } = &e {
                    per_shard.entry(shard.clone()).or_default().2 += 1;
                }
                let e = ApiError::from(e);
                if e.kind == ErrorKind::InternalFailure {
                    internal += 1;
                    if first_internal.is_none() {
                        first_internal = Some(format!("{:?}", e.source));
                    }
                }
                PutRecordsResultEntry {
                    sequence_number: None,
                    shard_id: None,
                    error_code: Some(match e.kind {
                        ErrorKind::ProvisionedThroughputExceeded => e.kind.name(),
                        _ => ErrorKind::InternalFailure.name(),
                    }),
                    error_message: Some(e.message),
                }
            }
        })
        .collect();
    if let Some(error) = first_internal {
        // One line per stream per LOG_INTERVAL, not one per failed entry.
        static FAILED: std::sync::LazyLock<LogLimit> = std::sync::LazyLock::new(LogLimit::new);
        if let Some(count) = FAILED.hit(stream, internal, std::time::Instant::now()) {
            tracing::warn!(stream, entries = count, error, "PutRecords entries failed");
        }
    }
    for (shard, (n, bytes, throttled)) in per_shard {
        if n > 0 {
            metrics::incoming(stream, &shard, n, bytes);
        }
        if throttled > 0 {
            metrics::throttled(stream, &shard, throttled);
        }
    }
    PutRecordsOutput { failed_record_count: failed, records, encryption_type: "NONE" }
}

pub(super) async fn iterator<S: StreamStore>(
    api: &Api<S>,
    i: GetShardIteratorInput,
) -> Result<GetShardIteratorOutput, ApiError> {
    let mut v = Violations::default();
    let name = api.stream_name(&mut v, i.stream_name.as_deref(), i.stream_arn.as_deref())?;
    match &i.shard_id {
        Some(s) => {
            check_name(&mut v, "shardId", s);
        }
        None => v.missing("shardId"),
    }
    let seq = |v: &mut Violations| -> Option<String> {
        match &i.starting_sequence_number {
            Some(s) => check_sequence_shape(v, "startingSequenceNumber", s).then(|| s.clone()),
            None => None,
        }
    };
    #[derive(Clone, Copy)]
    enum Kind {
        At,
        After,
        Time,
        Trim,
        Latest,
    }
    let kind = match i.shard_iterator_type.as_deref() {
        Some("AT_SEQUENCE_NUMBER") => Some(Kind::At),
        Some("AFTER_SEQUENCE_NUMBER") => Some(Kind::After),
        Some("AT_TIMESTAMP") => Some(Kind::Time),
        Some("TRIM_HORIZON") => Some(Kind::Trim),
        Some("LATEST") => Some(Kind::Latest),
        Some(other) => {
            v.add(
                "shardIteratorType",
                &other,
                "Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]",
            );
            None
        }
        None => {
            v.missing("shardIteratorType");
            None
        }
    };
    let seq = seq(&mut v);
    v.finish()?;
    let name = present("streamName", name)?;
    let shard = present("shardId", i.shard_id)?;
    let kind = present("shardIteratorType", kind)?;
    let parse_seq = |s: Option<String>, t: &str| -> Result<SequenceNumber, ApiError> {
        let s = s.ok_or_else(|| {
            ApiError::invalid(format!("StartingSequenceNumber must be given for {t} iterators."))
        })?;
        s.parse().map_err(|_| {
            ApiError::invalid(format!(
                "StartingSequenceNumber {s} used in GetShardIterator on shard {shard} in stream {name} is invalid."
            ))
        })
    };
    if let (Kind::Trim | Kind::Latest, Some(_)) = (kind, &seq) {
        let t = if matches!(kind, Kind::Trim) { "TRIM_HORIZON" } else { "LATEST" };
        return Err(ApiError::invalid(format!(
            "StartingSequenceNumber must not be given for {t} iterators; it is used with \
             AT_SEQUENCE_NUMBER and AFTER_SEQUENCE_NUMBER."
        )));
    }
    let start = match kind {
        Kind::Trim => StartingPosition::TrimHorizon,
        Kind::Latest => StartingPosition::Latest,
        Kind::At => StartingPosition::AtSequence(parse_seq(seq, "AT_SEQUENCE_NUMBER")?),
        Kind::After => StartingPosition::AfterSequence(parse_seq(seq, "AFTER_SEQUENCE_NUMBER")?),
        Kind::Time => {
            let t: Timestamp = i.timestamp.ok_or_else(|| {
                ApiError::invalid("Timestamp must be given for AT_TIMESTAMP iterators.")
            })?;
            StartingPosition::AtTimestamp(t.to_ms())
        }
    };
    let position = api.store.position(&name, &shard, start).await?;
    Ok(GetShardIteratorOutput {
        shard_iterator: api.signer.iterator(&name, position, api.now_ms()),
    })
}

pub(super) async fn get<S: StreamStore>(
    api: &Api<S>,
    i: GetRecordsInput,
) -> Result<GetRecordsOutput, ApiError> {
    let mut v = Violations::default();
    match &i.shard_iterator {
        Some(t) => {
            check_len(&mut v, "shardIterator", t, 1, MAX_TOKEN_CHARS);
        }
        None => v.missing("shardIterator"),
    }
    check_range(&mut v, "limit", i.limit, 1, MAX_GET_RECORDS);
    v.finish()?;
    let token = present("shardIterator", i.shard_iterator)?;
    let now = api.now_ms();
    let it = api.signer.open_iterator(&token, now).map_err(|e| match e {
        TokenError::Expired { issued_ms } => ApiError::new(
            ErrorKind::ExpiredIterator,
            format!(
                "Iterator expired. The iterator was created at time {} while right now it is {}, more than 300 seconds later.",
                Timestamp::from_ms(issued_ms).0,
                Timestamp::from_ms(now).0
            ),
        ),
        TokenError::Invalid => ApiError::invalid(format!("Invalid ShardIterator: {token}")),
    })?;
    let limits = ReadLimits {
        max_records: i.limit.map_or(MAX_GET_RECORDS, |l| l) as usize,
        max_bytes: MAX_GET_RECORDS_BYTES,
    };
    let batch = match api.store.read(&it.stream, it.position, limits).await {
        Ok(b) => b,
        // A position of a deleted (perhaps re-created) stream.
        Err(StoreError::InvalidArgument(_) | StoreError::StreamNotFound(_)) => {
            return Err(ApiError::stream_not_found(&it.stream));
        }
        Err(e) => return Err(e.into()),
    };
    let shard = crate::store::shard::shard_id(it.position.shard_index);
    let bytes: u64 = batch.records.iter().map(|r| r.data.len() as u64).sum();
    metrics::outgoing(
        &it.stream,
        &shard,
        batch.records.len() as u64,
        bytes,
        batch.millis_behind_latest,
    );
    let child_shards = match &batch.end_of_shard {
        None => None,
        Some(children) => Some(child_shards(api, &it.stream, children).await?),
    };
    let next_shard_iterator = match batch.end_of_shard {
        Some(_) => None,
        None => Some(api.signer.iterator(&it.stream, batch.next, now)),
    };
    Ok(GetRecordsOutput {
        records: batch
            .records
            .into_iter()
            .map(|r| RecordOut {
                sequence_number: r.sequence.to_string(),
                approximate_arrival_timestamp: Timestamp::from_ms(r.arrival_ms),
                data: Blob(r.data),
                partition_key: r.partition_key.to_string(),
            })
            .collect(),
        next_shard_iterator,
        millis_behind_latest: batch.millis_behind_latest,
        child_shards,
    })
}

/// The children a closed shard's reader moves on to, with their parents.
async fn child_shards<S: StreamStore>(
    api: &Api<S>,
    stream: &str,
    children: &[String],
) -> Result<Vec<ChildShard>, ApiError> {
    let d = api.store.describe_stream(stream).await?;
    Ok(d.shards
        .iter()
        .filter(|s| children.contains(&s.shard_id))
        .map(|s| ChildShard {
            shard_id: s.shard_id.clone(),
            parent_shards: s
                .parent_shard_id
                .iter()
                .chain(s.adjacent_parent_shard_id.iter())
                .cloned()
                .collect(),
            hash_key_range: HashKeyRange {
                starting_hash_key: s.hash_range.start.to_string(),
                ending_hash_key: s.hash_range.end.to_string(),
            },
        })
        .collect())
}
