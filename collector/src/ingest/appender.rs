//! A connection's window of publishes: from PUBLISH packets to store appends
//! and back to acknowledgements.
//!
//! A connection reads packets while its previous window is being appended;
//! what it read meanwhile becomes the next window. [`Plan::build`] turns a
//! window into appends, synchronously and in packet order: it maps each topic
//! to a stream, checks the ACL, decodes wire-format batches, drops QoS 2
//! duplicates and groups consecutive raw records of one stream into one
//! append (up to [`MAX_RUN_BYTES`] / [`MAX_RUN_RECORDS`]), so a window of a
//! thousand publishes costs a handful of appends and one group commit.
//! [`Plan::execute`] runs each stream's appends in order, the streams
//! concurrently, and yields one [`Outcome`] per packet, in packet order: the
//! acknowledgements are sent only then, once every record is durable.
//!
//! Idempotent batches go through `StreamStore::append_batch`, which appends
//! a (producer id, batch sequence) only once per shard. Since the store
//! treats every sequence at or below the highest appended one as a
//! duplicate, a producer's later batch must not be appended while an earlier
//! one failed: after a failure, later batches of that producer are refused on
//! this connection until the failed one is sent again and succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::sync::OwnedSemaphorePermit;
use weir_wire::{Envelope, validate_data, validate_partition_key};

use super::auth::Acl;
use super::packet::{AckKind, Reason};
use super::topics::{Mapping, PayloadKind, valid_topic_name};
use crate::store::{CreateStreamOptions, NewRecord, ProducerBatch, StoreError, StreamStore};

/// Raw records grouped into one append, at most this many bytes (well under
/// the store's per-append limit, so a run never fails for its size).
pub const MAX_RUN_BYTES: usize = 1024 * 1024;
/// Raw records grouped into one append, at most this many.
pub const MAX_RUN_RECORDS: usize = 1000;

/// One packet of a window that needs a store round trip or an ordered reply.
#[derive(Debug)]
pub enum Work {
    /// A PUBLISH (topic alias already resolved).
    Publish(Publish),
    /// A PUBREL: answered with PUBCOMP in order with the acknowledgements.
    PubRel(u16),
}

/// A PUBLISH waiting to be appended.
#[derive(Debug)]
pub struct Publish {
    /// 0, 1 or 2.
    pub qos: u8,
    /// Packet identifier (0 at QoS 0).
    pub pkid: u16,
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// The memory budget this publish holds until it is durable.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The client a window belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// Authenticated identity.
    pub identity: Option<&'a str>,
}

/// What a connection keeps across windows.
#[derive(Debug, Default)]
pub struct ConnState {
    /// QoS 2 packet ids received and not yet released (the session state).
    pub qos2_received: HashSet<u16>,
    /// (stream, producer id) → the sequence of a batch that failed.
    pub failed_batches: HashMap<(String, String), u64>,
}

/// The answer to one packet of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The publish's QoS (PUBREL: 2).
    pub qos: u8,
    /// The acknowledgement to send, if any (none at QoS 0).
    pub ack: Option<(AckKind, u16)>,
    /// Success or why the publish was refused.
    pub reason: Reason,
    /// A human-readable reason (MQTT 5 reason string, and the log).
    pub message: Option<String>,
}

impl Outcome {
    fn of(p: &Publish, reason: Reason, message: Option<String>) -> Self {
        let ack = match p.qos {
            1 => Some((AckKind::PubAck, p.pkid)),
            2 => Some((AckKind::PubRec, p.pkid)),
            _ => None,
        };
        Self { qos: p.qos, ack, reason, message }
    }
}

/// Streams known to exist (looked up or created once by this process).
pub type KnownStreams = Arc<RwLock<HashSet<String>>>;

#[derive(Debug)]
enum Op {
    Raw(Vec<NewRecord>),
    Batch { producer: ProducerBatch, records: Vec<NewRecord> },
}

impl Op {
    fn len(&self) -> usize {
        match self {
            Self::Raw(r) | Self::Batch { records: r, .. } => r.len(),
        }
    }
}

#[derive(Debug)]
struct StreamOps {
    stream: String,
    ops: Vec<Op>,
    /// Bytes in the last op when it is a raw run.
    run_bytes: usize,
}

#[derive(Debug)]
enum Slot {
    Decided(Outcome),
    Record {
        outcome: Outcome,
        stream: usize,
        op: usize,
        index: usize,
        qos2: Option<u16>,
    },
    Batch {
        outcome: Outcome,
        stream: usize,
        op: usize,
        qos2: Option<u16>,
        key: (String, String, u64),
    },
}

/// Why one record was not appended.
#[derive(Debug, Clone)]
enum RecordError {
    Store(StoreError),
    EarlierBatchFailed(u64),
}

/// A window, planned.
#[derive(Debug)]
pub struct Plan {
    streams: Vec<StreamOps>,
    slots: Vec<Slot>,
    _permits: Vec<OwnedSemaphorePermit>,
}

/// A window, executed: what to send and what to remember.
#[derive(Debug)]
pub struct Done {
    /// One per packet, in packet order.
    pub outcomes: Vec<Outcome>,
    qos2_failed: Vec<u16>,
    batches: Vec<((String, String, u64), bool)>,
}

impl Done {
    /// Applies what the window changed to the connection's state: QoS 2
    /// packet ids whose append failed are forgotten (a re-send is appended),
    /// failed batches block their producer's later batches.
    pub fn apply(&self, state: &mut ConnState) {
        for pkid in &self.qos2_failed {
            state.qos2_received.remove(pkid);
        }
        for ((stream, producer, seq), ok) in &self.batches {
            let key = (stream.clone(), producer.clone());
            match (ok, state.failed_batches.get(&key)) {
                (true, Some(failed)) if failed == seq => {
                    state.failed_batches.remove(&key);
                }
                (false, Some(failed)) if failed <= seq => {}
                (false, _) => {
                    state.failed_batches.insert(key, *seq);
                }
                _ => {}
            }
        }
    }
}

impl Plan {
    /// Plans a window (see the module header). Updates the QoS 2 state: a
    /// PUBREL releases its packet id, a new QoS 2 publish takes one.
    pub fn build(
        items: Vec<Work>,
        client: Client<'_>,
        mapping: &Mapping,
        acl: &Acl,
        state: &mut ConnState,
    ) -> Self {
        let mut plan = Self {
            streams: Vec::new(),
            slots: Vec::with_capacity(items.len()),
            _permits: Vec::new(),
        };
        for item in items {
            let slot = match item {
                Work::PubRel(pkid) => Slot::Decided(Outcome {
                    qos: 2,
                    ack: Some((AckKind::PubComp, pkid)),
                    reason: if state.qos2_received.remove(&pkid) {
                        Reason::Success
                    } else {
                        Reason::PacketIdentifierNotFound
                    },
                    message: None,
                }),
                Work::Publish(mut p) => {
                    if let Some(permit) = p.permit.take() {
                        plan._permits.push(permit);
                    }
                    plan.publish(p, client, mapping, acl, state)
                }
            };
            plan.slots.push(slot);
        }
        plan
    }

    /// Packets in the window.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn publish(
        &mut self,
        p: Publish,
        client: Client<'_>,
        mapping: &Mapping,
        acl: &Acl,
        state: &mut ConnState,
    ) -> Slot {
        let refuse = |p: &Publish, reason, message: String| {
            Slot::Decided(Outcome::of(p, reason, Some(message)))
        };
        if !valid_topic_name(&p.topic) {
            return refuse(
                &p,
                Reason::TopicNameInvalid,
                format!("invalid topic name {:?}", p.topic),
            );
        }
        if p.qos == 2 && state.qos2_received.contains(&p.pkid) {
            // Re-sent before PUBREL: already appended, acknowledge again.
            return Slot::Decided(Outcome::of(&p, Reason::Success, None));
        }
        let target = match mapping.map(&p.topic, client.client_id, client.identity) {
            Ok(t) => t,
            Err(e) => return refuse(&p, Reason::TopicNameInvalid, e.to_string()),
        };
        if !acl.allows(client.client_id, client.identity, &p.topic) {
            return refuse(
                &p,
                Reason::NotAuthorized,
                format!("not authorized to publish to {:?}", p.topic),
            );
        }
        let qos2 = (p.qos == 2).then_some(p.pkid);
        let outcome = Outcome::of(&p, Reason::Success, None);
        let slot = match (target.payload, target.key) {
            (PayloadKind::Raw, Some(key)) => {
                if let Err(e) = validate_partition_key(&key) {
                    return refuse(&p, Reason::TopicNameInvalid, format!("partition key: {e}"));
                }
                if let Err(e) = validate_data(&p.payload) {
                    return refuse(&p, Reason::PayloadFormatInvalid, e.to_string());
                }
                let record = NewRecord {
                    partition_key: key,
                    data: p.payload,
                    explicit_hash_key: None,
                    producer_timestamp_ms: None,
                };
                let stream_ix = self.stream_index(&target.stream);
                let (op, index) = self.push_raw(stream_ix, record);
                Slot::Record { outcome, stream: stream_ix, op, index, qos2 }
            }
            (PayloadKind::Raw, None) | (PayloadKind::Batch, _) => {
                let envelope = match Envelope::decode(&p.payload) {
                    Ok(e) => e,
                    Err(e) => {
                        return refuse(
                            &p,
                            Reason::PayloadFormatInvalid,
                            format!("weir-wire envelope: {e}"),
                        );
                    }
                };
                // Records of a batch are checked as if published one by one
                // on the topic with its last level replaced by their key.
                let prefix = p.topic.rsplit_once('/').map_or("", |(prefix, _)| prefix);
                let allowed = |key: &str| {
                    acl.allows(client.client_id, client.identity, &format!("{prefix}/{key}"))
                };
                match envelope {
                    Envelope::Record(r) => {
                        if !allowed(r.partition_key) {
                            return refuse(
                                &p,
                                Reason::NotAuthorized,
                                format!("not authorized for partition key {:?}", r.partition_key),
                            );
                        }
                        let record = NewRecord {
                            partition_key: r.partition_key.to_owned(),
                            data: p.payload.slice_ref(r.data),
                            explicit_hash_key: r.explicit_hash_key,
                            producer_timestamp_ms: r.producer_timestamp_ms,
                        };
                        let stream_ix = self.stream_index(&target.stream);
                        let (op, index) = self.push_raw(stream_ix, record);
                        Slot::Record { outcome, stream: stream_ix, op, index, qos2 }
                    }
                    Envelope::Batch(batch) => {
                        let producer = batch.producer_id().to_owned();
                        let seq = batch.batch_seq();
                        let key = (target.stream.clone(), producer.clone());
                        if let Some(failed) = state.failed_batches.get(&key)
                            && seq > *failed
                        {
                            return refuse(
                                &p,
                                Reason::ImplementationSpecificError,
                                format!(
                                    "batch {failed} of producer {producer:?} was refused; send it again before batch {seq}"
                                ),
                            );
                        }
                        let mut records = Vec::with_capacity(batch.len());
                        for r in batch.records() {
                            // `decode` checked every record: no error here.
                            let Ok(r) = r else { continue };
                            if !allowed(r.partition_key) {
                                return refuse(
                                    &p,
                                    Reason::NotAuthorized,
                                    format!(
                                        "not authorized for partition key {:?}",
                                        r.partition_key
                                    ),
                                );
                            }
                            records.push(NewRecord {
                                partition_key: r.partition_key.to_owned(),
                                data: p.payload.slice_ref(r.data),
                                explicit_hash_key: r.explicit_hash_key,
                                producer_timestamp_ms: r.producer_timestamp_ms,
                            });
                        }
                        let stream_ix = self.stream_index(&target.stream);
                        let s = &mut self.streams[stream_ix];
                        s.ops.push(Op::Batch {
                            producer: ProducerBatch {
                                producer_id: producer.clone(),
                                batch_seq: seq,
                            },
                            records,
                        });
                        s.run_bytes = usize::MAX;
                        Slot::Batch {
                            outcome,
                            stream: stream_ix,
                            op: s.ops.len() - 1,
                            qos2,
                            key: (target.stream.clone(), producer, seq),
                        }
                    }
                }
            }
        };
        if let Some(pkid) = qos2 {
            state.qos2_received.insert(pkid);
        }
        slot
    }

    fn stream_index(&mut self, stream: &str) -> usize {
        match self.streams.iter().position(|s| s.stream == stream) {
            Some(i) => i,
            None => {
                self.streams.push(StreamOps {
                    stream: stream.to_owned(),
                    ops: Vec::new(),
                    run_bytes: usize::MAX,
                });
                self.streams.len() - 1
            }
        }
    }

    /// Adds a raw record to the stream's last run, or starts a run.
    fn push_raw(&mut self, stream: usize, record: NewRecord) -> (usize, usize) {
        let s = &mut self.streams[stream];
        let len = record.encoded_len();
        let fits = match s.ops.last() {
            Some(Op::Raw(run)) => {
                run.len() < MAX_RUN_RECORDS && s.run_bytes.saturating_add(len) <= MAX_RUN_BYTES
            }
            _ => false,
        };
        if !fits {
            s.ops.push(Op::Raw(Vec::new()));
            s.run_bytes = 0;
        }
        s.run_bytes += len;
        let op = s.ops.len() - 1;
        match s.ops.last_mut() {
            Some(Op::Raw(run)) => {
                run.push(record);
                (op, run.len() - 1)
            }
            // Just pushed a raw run above.
            _ => (op, 0),
        }
    }

    /// Runs the appends and answers every packet (see the module header).
    pub async fn execute<S: StreamStore>(
        self,
        store: S,
        known: KnownStreams,
        auto_create_shards: Option<u32>,
    ) -> Done {
        let Plan { streams, slots, _permits } = self;
        let runs = streams.into_iter().map(|s| run_stream(&store, &known, auto_create_shards, s));
        let results = join_all(runs).await;
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
        StoreError::ThroughputExceeded { .. } | StoreError::LimitExceeded(_) => {
            Reason::QuotaExceeded
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(qos: u8, pkid: u16, topic: &str, payload: &[u8]) -> Work {
        Work::Publish(Publish {
            qos,
            pkid,
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            permit: None,
        })
    }

    fn plan(items: Vec<Work>, acl: &Acl, state: &mut ConnState) -> Plan {
        let mapping = Mapping::new(&[], true).expect("mapping");
        Plan::build(items, Client { client_id: "dev", identity: Some("dev") }, &mapping, acl, state)
    }

    #[test]
    fn consecutive_raw_records_share_one_append() {
        let mut state = ConnState::default();
        let p = plan(
            vec![
                publish(1, 1, "weir/s/a", b"1"),
                publish(0, 0, "weir/s/b", b"2"),
                publish(1, 2, "weir/t/a", b"3"),
                publish(1, 3, "weir/s/c", b"4"),
            ],
            &Acl::new(&[]).expect("acl"),
            &mut state,
        );
        assert_eq!(p.streams.len(), 2);
        assert_eq!(p.streams[0].ops.len(), 1);
        assert_eq!(p.streams[0].ops[0].len(), 3);
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn refusals_are_decided_at_plan_time() {
        let mut state = ConnState::default();
        let acl = Acl::new(&[super::super::auth::AclEntry {
            identity: "*".into(),
            publish: vec!["weir/s/%c".into()],
        }])
        .expect("acl");
        let long_key = format!("weir/s/{}", "k".repeat(300));
        let p = plan(
            vec![
                publish(1, 1, "weir/s/other", b"x"),
                publish(1, 2, "nowhere", b"x"),
                publish(1, 3, &long_key, b"x"),
                publish(1, 4, "weir/s/$batch", b"not an envelope"),
                publish(1, 5, "weir/s/dev", b"ok"),
            ],
            &Acl::new(&[]).expect("open"),
            &mut state,
        );
        let reasons: Vec<Option<Reason>> = p
            .slots
            .iter()
            .map(|s| match s {
                Slot::Decided(o) => Some(o.reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![
                None,
                Some(Reason::TopicNameInvalid),
                Some(Reason::TopicNameInvalid),
                Some(Reason::PayloadFormatInvalid),
                None
            ]
        );
        let p = plan(vec![publish(1, 1, "weir/s/other", b"x")], &acl, &mut state);
        assert!(matches!(&p.slots[0], Slot::Decided(o) if o.reason == Reason::NotAuthorized));
    }

    #[test]
    fn qos2_duplicates_are_acknowledged_without_an_append() {
        let mut state = ConnState::default();
        let acl = Acl::new(&[]).expect("acl");
        let p = plan(vec![publish(2, 9, "weir/s/k", b"x")], &acl, &mut state);
        assert!(matches!(p.slots[0], Slot::Record { qos2: Some(9), .. }));
        assert!(state.qos2_received.contains(&9));
        let p = plan(
            vec![publish(2, 9, "weir/s/k", b"x"), Work::PubRel(9), Work::PubRel(9)],
            &acl,
            &mut state,
        );
        assert!(p.streams.is_empty(), "the duplicate is not appended");
        let reasons: Vec<Reason> = p
            .slots
            .iter()
            .map(|s| match s {
                Slot::Decided(o) => o.reason,
                _ => Reason::UnspecifiedError,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![Reason::Success, Reason::Success, Reason::PacketIdentifierNotFound]
        );
    }

    #[test]
    fn a_failed_batch_blocks_later_ones_of_its_producer() {
        let mut state = ConnState::default();
        let done = Done {
            outcomes: Vec::new(),
            qos2_failed: vec![],
            batches: vec![
                (("s".into(), "p".into(), 5), false),
                (("s".into(), "p".into(), 6), false),
            ],
        };
        done.apply(&mut state);
        assert_eq!(state.failed_batches.get(&("s".into(), "p".into())), Some(&5));
        let batch = weir_wire::encode_batch_to_vec(&weir_wire::OwnedBatch {
            producer_id: "p".into(),
            batch_seq: 6,
            records: vec![weir_wire::OwnedRecord::new("k", b"v".to_vec())],
        })
        .expect("batch");
        let acl = Acl::new(&[]).expect("acl");
        let p = plan(vec![publish(1, 1, "weir/s/$batch", &batch)], &acl, &mut state);
        assert!(
            matches!(&p.slots[0], Slot::Decided(o) if o.reason == Reason::ImplementationSpecificError)
        );
        Done {
            outcomes: vec![],
            qos2_failed: vec![],
            batches: vec![(("s".into(), "p".into(), 5), true)],
        }
        .apply(&mut state);
        assert!(state.failed_batches.is_empty());
    }
}
