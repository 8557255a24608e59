//! Planning a window, synchronously and in packet order: each PUBLISH goes
//! through named steps — [`check_topic`], the QoS 2 duplicate check,
//! [`route`] (topic → stream, ACL), then one of [`Plan::plan_raw`],
//! [`Plan::plan_record`] or [`Plan::plan_batch`] by payload — and ends as a
//! [`Slot`]: decided now (a refusal, a duplicate) or pointing at the records
//! it added to its stream's runs.

use weir_wire::{BatchView, Envelope, Record, validate_data, validate_partition_key};

use super::window::{
    BatchKey, Client, ConnState, MAX_RUN_BYTES, MAX_RUN_RECORDS, Op, Outcome, Plan, Publish, Slot,
    StreamOps, Work,
};
use crate::ingest::auth::Acl;
use crate::ingest::packet::{AckKind, Reason};
use crate::ingest::topics::{Mapping, PayloadKind, Target, valid_topic_name};
use crate::store::{NewRecord, ProducerBatch};

/// Why a publish is refused at plan time: the reason code and string.
struct Refusal(Reason, String);

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
                    plan.publish(&p, client, mapping, acl, state)
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

    /// One PUBLISH: its slot, refusals decided here.
    fn publish(
        &mut self,
        p: &Publish,
        client: Client<'_>,
        mapping: &Mapping,
        acl: &Acl,
        state: &mut ConnState,
    ) -> Slot {
        match self.plan_publish(p, client, mapping, acl, state) {
            Ok(slot) => slot,
            Err(Refusal(reason, message)) => Slot::Decided(Outcome::of(p, reason, Some(message))),
        }
    }

    fn plan_publish(
        &mut self,
        p: &Publish,
        client: Client<'_>,
        mapping: &Mapping,
        acl: &Acl,
        state: &mut ConnState,
    ) -> Result<Slot, Refusal> {
        check_topic(p)?;
        if p.qos == 2 && state.qos2_received.contains(&p.pkid) {
            // Re-sent before PUBREL: already appended, acknowledge again.
            return Ok(Slot::Decided(Outcome::of(p, Reason::Success, None)));
        }
        let target = route(p, client, mapping, acl)?;
        let qos2 = (p.qos == 2).then_some(p.pkid);
        let outcome = Outcome::of(p, Reason::Success, None);
        let slot = match (target.payload, target.key) {
            (PayloadKind::Raw, Some(key)) => {
                let (stream, op, index) = self.plan_raw(p, key, &target.stream)?;
                Slot::Record { outcome, stream, op, index, qos2 }
            }
            (PayloadKind::Raw, None) | (PayloadKind::Batch, _) => {
                let keys = KeyAcl::new(acl, client, &p.topic);
                match decode_envelope(p)? {
                    Envelope::Record(r) => {
                        let (stream, op, index) = self.plan_record(p, r, &target.stream, &keys)?;
                        Slot::Record { outcome, stream, op, index, qos2 }
                    }
                    Envelope::Batch(batch) => {
                        let (stream, op, key) =
                            self.plan_batch(p, &batch, &target.stream, &keys, state)?;
                        Slot::Batch { outcome, stream, op, qos2, key }
                    }
                }
            }
        };
        if let Some(pkid) = qos2 {
            state.qos2_received.insert(pkid);
        }
        Ok(slot)
    }

    /// A raw payload with its key from the topic: one record in a run.
    /// Returns (stream, op, index).
    fn plan_raw(
        &mut self,
        p: &Publish,
        key: String,
        stream: &str,
    ) -> Result<(usize, usize, usize), Refusal> {
        if let Err(e) = validate_partition_key(&key) {
            return Err(Refusal(Reason::TopicNameInvalid, format!("partition key: {e}")));
        }
        if let Err(e) = validate_data(&p.payload) {
            return Err(Refusal(Reason::PayloadFormatInvalid, e.to_string()));
        }
        let record = NewRecord {
            partition_key: key,
            data: p.payload.clone(),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        };
        let stream_ix = self.stream_index(stream);
        let (op, index) = self.push_raw(stream_ix, record);
        Ok((stream_ix, op, index))
    }

    /// A single-record envelope: one record in a run. Returns (stream, op,
    /// index).
    fn plan_record(
        &mut self,
        p: &Publish,
        r: Record<'_>,
        stream: &str,
        keys: &KeyAcl<'_>,
    ) -> Result<(usize, usize, usize), Refusal> {
        keys.check(r.partition_key)?;
        let record = new_record(p, &r);
        let stream_ix = self.stream_index(stream);
        let (op, index) = self.push_raw(stream_ix, record);
        Ok((stream_ix, op, index))
    }

    /// A batch envelope: one idempotent append of its own, unless an earlier
    /// batch of its producer failed on this connection. Returns (stream, op,
    /// (stream name, producer id, batch sequence)).
    fn plan_batch(
        &mut self,
        p: &Publish,
        batch: &BatchView<'_>,
        stream: &str,
        keys: &KeyAcl<'_>,
        state: &ConnState,
    ) -> Result<(usize, usize, BatchKey), Refusal> {
        let producer = batch.producer_id().to_owned();
        let seq = batch.batch_seq();
        let key = (stream.to_owned(), producer.clone());
        if let Some(failed) = state.failed_batches.get(&key)
            && seq > *failed
        {
            return Err(Refusal(
                Reason::ImplementationSpecificError,
                format!(
                    "batch {failed} of producer {producer:?} was refused; send it again before batch {seq}"
                ),
            ));
        }
        let mut records = Vec::with_capacity(batch.len());
        for r in batch.records() {
            // `decode` checked every record: no error here.
            let Ok(r) = r else { continue };
            keys.check(r.partition_key)?;
            records.push(new_record(p, &r));
        }
        let stream_ix = self.stream_index(stream);
        let s = &mut self.streams[stream_ix];
        s.ops.push(Op::Batch {
            producer: ProducerBatch { producer_id: producer.clone(), batch_seq: seq },
            records,
        });
        s.run_bytes = usize::MAX;
        Ok((stream_ix, s.ops.len() - 1, (stream.to_owned(), producer, seq)))
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
}

/// The topic name is valid MQTT.
fn check_topic(p: &Publish) -> Result<(), Refusal> {
    if valid_topic_name(&p.topic) {
        Ok(())
    } else {
        Err(Refusal(Reason::TopicNameInvalid, format!("invalid topic name {:?}", p.topic)))
    }
}

/// The topic maps to a stream and the client may publish to it.
fn route(p: &Publish, client: Client<'_>, mapping: &Mapping, acl: &Acl) -> Result<Target, Refusal> {
    let target = mapping
        .map(&p.topic, client.client_id, client.identity)
        .map_err(|e| Refusal(Reason::TopicNameInvalid, e.to_string()))?;
    if !acl.allows(client.client_id, client.identity, &p.topic) {
        return Err(Refusal(
            Reason::NotAuthorized,
            format!("not authorized to publish to {:?}", p.topic),
        ));
    }
    Ok(target)
}

/// The payload as a weir-wire envelope.
fn decode_envelope(p: &Publish) -> Result<Envelope<'_>, Refusal> {
    Envelope::decode(&p.payload)
        .map_err(|e| Refusal(Reason::PayloadFormatInvalid, format!("weir-wire envelope: {e}")))
}

/// A record of an envelope, its data sharing the payload's buffer.
fn new_record(p: &Publish, r: &Record<'_>) -> NewRecord {
    NewRecord {
        partition_key: r.partition_key.to_owned(),
        data: p.payload.slice_ref(r.data),
        explicit_hash_key: r.explicit_hash_key,
        producer_timestamp_ms: r.producer_timestamp_ms,
    }
}

/// The ACL check of an envelope's records: each is checked as if published
/// on its own on the topic with its last level replaced by its key.
struct KeyAcl<'a> {
    acl: &'a Acl,
    client: Client<'a>,
    prefix: &'a str,
}

impl<'a> KeyAcl<'a> {
    fn new(acl: &'a Acl, client: Client<'a>, topic: &'a str) -> Self {
        let prefix = topic.rsplit_once('/').map_or("", |(prefix, _)| prefix);
        Self { acl, client, prefix }
    }

    fn check(&self, key: &str) -> Result<(), Refusal> {
        let topic = format!("{}/{key}", self.prefix);
        if self.acl.allows(self.client.client_id, self.client.identity, &topic) {
            Ok(())
        } else {
            Err(Refusal(Reason::NotAuthorized, format!("not authorized for partition key {key:?}")))
        }
    }
}
