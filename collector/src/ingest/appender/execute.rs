//! Executing a planned window: each stream's appends in order, the streams
//! concurrently; a producer's later batch is not appended once an earlier one
//! failed; streams are looked up (or auto-created) once per process. Then
//! one [`Outcome`](super::Outcome) per packet, in packet order, with the
//! reason a store error is reported with. Store faults (a full disk, a
//! failed shard) are logged once per stream per cause per
//! [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL) with the number of
//! records they failed, never once per publish.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Instant;

use futures_util::future::join_all;

use super::window::{Done, KnownStreams, Op, Plan, RecordError, Slot, StreamOps};
use crate::ingest::packet::Reason;
use crate::log_limit::{LogLimit, store_fault};
use crate::store::{CreateStreamOptions, StoreError, StreamStore};

impl Plan {
    /// Runs the appends and answers every packet (see the module header).
    pub async fn execute<S: StreamStore>(
        self,
        store: S,
        known: KnownStreams,
        auto_create_shards: Option<u32>,
    ) -> Done {
        let Plan { streams, slots, _permits } = self;
        let names: Vec<String> = streams.iter().map(|s| s.stream.clone()).collect();
        let runs = streams.into_iter().map(|s| run_stream(&store, &known, auto_create_shards, s));
        let results = join_all(runs).await;
        log_faults(&names, &results);
        let mut done = Done {
            outcomes: Vec::with_capacity(slots.len()),
            qos2_failed: Vec::new(),
            batches: Vec::new(),
        };
        for slot in slots {
            let outcome = match slot {
                Slot::Decided(o) => o,
                Slot::Record { mut outcome, stream, op, index, qos2 } => {
                    let result =
                        results.get(stream).and_then(|r| r.get(op)).and_then(|r| r.get(index));
                    if let Some(Err(e)) = result {
                        (outcome.reason, outcome.message) = reason_for(e);
                        done.qos2_failed.extend(qos2);
                    }
                    outcome
                }
                Slot::Batch { mut outcome, stream, op, qos2, key } => {
                    let error = results
                        .get(stream)
                        .and_then(|r| r.get(op))
                        .and_then(|r| r.iter().find_map(|x| x.as_ref().err()));
                    if let Some(e) = error {
                        (outcome.reason, outcome.message) = reason_for(e);
                        done.qos2_failed.extend(qos2);
                    }
                    done.batches.push((key, error.is_none()));
                    outcome
                }
            };
            done.outcomes.push(outcome);
        }
        done
    }
}

/// Logs the store faults of a window: per stream and cause, one line per
/// [`LOG_INTERVAL`](crate::log_limit::LOG_INTERVAL) carrying how many
/// records failed since the last one (a full disk refuses every publish of
/// every client: thousands a second).
fn log_faults(names: &[String], results: &[Vec<Vec<Result<(), RecordError>>>]) {
    static FAILED: LazyLock<LogLimit> = LazyLock::new(LogLimit::new);
    for (stream, ops) in names.iter().zip(results) {
        let mut causes: BTreeMap<&'static str, (u64, &StoreError)> = BTreeMap::new();
        for r in ops.iter().flatten() {
            if let Err(RecordError::Store(e)) = r
                && let Some(cause) = store_fault(e)
            {
                causes.entry(cause).or_insert((0, e)).0 += 1;
            }
        }
        for (cause, (n, error)) in causes {
            if let Some(count) = FAILED.hit(&format!("{stream}/{cause}"), n, Instant::now()) {
                tracing::warn!(stream, cause, records = count, error = %error, "MQTT publishes not appended");
            }
        }
    }
}

/// One stream's appends, in order. Results per op, per record.
async fn run_stream<S: StreamStore>(
    store: &S,
    known: &KnownStreams,
    auto_create_shards: Option<u32>,
    s: StreamOps,
) -> Vec<Vec<Result<(), RecordError>>> {
    let mut out = Vec::with_capacity(s.ops.len());
    if let Err(e) = ensure_stream(store, known, auto_create_shards, &s.stream).await {
        for op in &s.ops {
            out.push(vec![Err(RecordError::Store(e.clone())); op.len()]);
        }
        return out;
    }
    let mut failed_producers: HashMap<String, u64> = HashMap::new();
    for op in s.ops {
        let n = op.len();
        let result: Result<Vec<Result<(), StoreError>>, StoreError> = match op {
            Op::Raw(records) => store
                .append(&s.stream, records)
                .await
                .map(|r| r.into_iter().map(|x| x.map(|_| ())).collect()),
            Op::Batch { producer, records } => {
                if let Some(failed) = failed_producers.get(&producer.producer_id)
                    && producer.batch_seq > *failed
                {
                    out.push(vec![Err(RecordError::EarlierBatchFailed(*failed)); n]);
                    continue;
                }
                let (id, seq) = (producer.producer_id.clone(), producer.batch_seq);
                let r = store
                    .append_batch(&s.stream, producer, records)
                    .await
                    .map(|r| r.into_iter().map(|x| x.map(|_| ())).collect::<Vec<_>>());
                if !matches!(&r, Ok(v) if v.iter().all(Result::is_ok)) {
                    failed_producers.entry(id).or_insert(seq);
                }
                r
            }
        };
        out.push(match result {
            Ok(v) => v.into_iter().map(|x| x.map_err(RecordError::Store)).collect(),
            Err(e) => {
                if matches!(e, StoreError::StreamNotFound(_)) {
                    // Deleted since we looked: look again next time.
                    if let Ok(mut k) = known.write() {
                        k.remove(&s.stream);
                    }
                }
                vec![Err(RecordError::Store(e)); n]
            }
        });
    }
    out
}

/// Makes sure `stream` exists, creating it when auto-creation is on. Each
/// stream is looked up once per process; later appends find out by
/// themselves if it was deleted.
async fn ensure_stream<S: StreamStore>(
    store: &S,
    known: &KnownStreams,
    auto_create_shards: Option<u32>,
    stream: &str,
) -> Result<(), StoreError> {
    if known.read().is_ok_and(|k| k.contains(stream)) {
        return Ok(());
    }
    match store.describe_stream(stream).await {
        Ok(_) => {}
        Err(StoreError::StreamNotFound(_)) => {
            let Some(shard_count) = auto_create_shards else {
                return Err(StoreError::StreamNotFound(stream.to_owned()));
            };
            let options = CreateStreamOptions { shard_count, ..CreateStreamOptions::default() };
            match store.create_stream(stream, options).await {
                Ok(_) => tracing::info!(
                    stream,
                    shards = shard_count,
                    "stream auto-created by an MQTT publish"
                ),
                Err(StoreError::StreamExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    if let Ok(mut k) = known.write() {
        k.insert(stream.to_owned());
    }
    Ok(())
}

/// The reason code and string a store error is reported with.
fn reason_for(e: &RecordError) -> (Reason, Option<String>) {
    let e = match e {
        RecordError::EarlierBatchFailed(seq) => {
            return (
                Reason::ImplementationSpecificError,
                Some(format!(
                    "batch {seq} of this producer failed in the same window; send it again first"
                )),
            );
        }
        RecordError::Store(e) => e,
    };
    let reason = match e {
        StoreError::StreamNotFound(_) | StoreError::InvalidArgument(_) => Reason::TopicNameInvalid,
        StoreError::InvalidRecord(_) => Reason::PayloadFormatInvalid,
        StoreError::ThroughputExceeded { .. }
        | StoreError::LimitExceeded(_)
        | StoreError::DiskFull { .. }
        | StoreError::OutOfSpace { .. } => Reason::QuotaExceeded,
        StoreError::StreamNotActive { .. } => Reason::ImplementationSpecificError,
        _ => Reason::UnspecifiedError,
    };
    let message = match e {
        StoreError::StreamNotFound(s) => {
            format!("stream {s:?} does not exist (auto-creation is off)")
        }
        other => other.to_string(),
    };
    (reason, Some(message))
}
