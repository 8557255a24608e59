//! What a window is made of: the packets it holds ([`Work`], [`Publish`]),
//! what a connection keeps across windows ([`ConnState`]), the planned
//! appends ([`Plan`]: per stream, ordered runs and batches, and one slot per
//! packet pointing at its records) and the executed window ([`Done`]).
//!
//! `plan` fills a [`Plan`], `execute` runs it; both only read these types.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::ingest::packet::{AckKind, Reason};
use crate::store::{NewRecord, ProducerBatch, StoreError};

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
    pub(super) fn of(p: &Publish, reason: Reason, message: Option<String>) -> Self {
        let ack = match p.qos {
            1 => Some((AckKind::PubAck, p.pkid)),
            2 => Some((AckKind::PubRec, p.pkid)),
            _ => None,
        };
        Self { qos: p.qos, ack, reason, message }
    }
}

/// A batch of one producer in one stream: (stream, producer id, batch
/// sequence).
pub(super) type BatchKey = (String, String, u64);

/// Streams known to exist (looked up or created once by this process).
pub type KnownStreams = Arc<RwLock<HashSet<String>>>;

#[derive(Debug)]
pub(super) enum Op {
    Raw(Vec<NewRecord>),
    Batch { producer: ProducerBatch, records: Vec<NewRecord> },
}

impl Op {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Raw(r) | Self::Batch { records: r, .. } => r.len(),
        }
    }
}

#[derive(Debug)]
pub(super) struct StreamOps {
    pub(super) stream: String,
    pub(super) ops: Vec<Op>,
    /// Bytes in the last op when it is a raw run.
    pub(super) run_bytes: usize,
}

#[derive(Debug)]
pub(super) enum Slot {
    Decided(Outcome),
    Record { outcome: Outcome, stream: usize, op: usize, index: usize, qos2: Option<u16> },
    Batch { outcome: Outcome, stream: usize, op: usize, qos2: Option<u16>, key: BatchKey },
}

/// Why one record was not appended.
#[derive(Debug, Clone)]
pub(super) enum RecordError {
    Store(StoreError),
    EarlierBatchFailed(u64),
}

/// A window, planned.
#[derive(Debug)]
pub struct Plan {
    pub(super) streams: Vec<StreamOps>,
    pub(super) slots: Vec<Slot>,
    pub(super) _permits: Vec<OwnedSemaphorePermit>,
}

/// A window, executed: what to send and what to remember.
#[derive(Debug)]
pub struct Done {
    /// One per packet, in packet order.
    pub outcomes: Vec<Outcome>,
    pub(super) qos2_failed: Vec<u16>,
    pub(super) batches: Vec<(BatchKey, bool)>,
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
