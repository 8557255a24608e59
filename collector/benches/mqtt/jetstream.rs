//! The JetStream peer: a raw JetStream publisher measured in the same run as
//! the MQTT targets, to show what the JetStream store backend stands on.
//!
//! Per case, `connections` async-nats connections (one client each) publish
//! to a file-storage stream the bench creates for the run (R1 on one server,
//! R3 on the loopback cluster) and deletes after it, keeping `window` window
//! slots in flight each, like the MQTT generator. A slot is:
//!
//! - `qos1`: one JetStream publish of `payload` bytes;
//! - `qos0`: [`QOS0_GROUP`] plain NATS publishes (no acknowledgement; the
//!   stream still stores them) closed by one JetStream publish whose
//!   acknowledgement confirms them, as the MQTT case closes QoS 0 with a
//!   QoS 1 barrier;
//! - `batch`: a burst of [`BATCH_RECORDS`] JetStream publishes of `payload`
//!   bytes (JetStream has no batch publish), acknowledged when its last is.
//!
//! The `PublishAckFuture`s are awaited in order, oldest slot first; a slot
//! acknowledged in the measured seconds counts, with its latency from its
//! first publish to its last acknowledgement. Figures are the MQTT
//! generator's: slots/s as messages/s (records/s for bursts), payload MB/s,
//! p50/p99.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use bytes::Bytes;

use super::load::{BATCH_RECORDS, Case, DRAIN_TIMEOUT, Figures, Mode, QOS0_GROUP, figures};

/// How long creating the run's stream may be retried (a cluster that just
/// elected its meta leader may still refuse the first request).
const CREATE_TIMEOUT: Duration = Duration::from_secs(20);

/// A JetStream server or cluster to publish to.
#[derive(Clone)]
pub(super) struct JetStreamTarget {
    /// Name in the report.
    pub(super) name: &'static str,
    /// Client URLs (every node of a cluster).
    pub(super) urls: Vec<String>,
    /// Replicas of the run's stream.
    pub(super) replicas: usize,
}

async fn connect(target: &JetStreamTarget) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(target.urls.as_slice())
        .await
        .map_err(|e| format!("{}: connect {:?}: {e}", target.name, target.urls))
}

/// Runs one case against one JetStream target and measures it.
pub(super) async fn load(
    case: &Case,
    target: &JetStreamTarget,
    stream: &str,
    seconds: f64,
) -> Result<Figures, String> {
    // Stream names take no dots; the prefix keeps a server given with
    // `--jetstream URL` from having one of its own streams replaced.
    let name = format!("weir-{}", stream.replace('.', "_"));
    let admin = jetstream::new(connect(target).await?);
    let _ = admin.delete_stream(&name).await;
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        num_replicas: target.replicas,
        ..Default::default()
    };
    let deadline = Instant::now() + CREATE_TIMEOUT;
    loop {
        match admin.create_stream(config.clone()).await {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{}: create stream {name}: {e}", target.name));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..case.connections {
        let (case, target, subject) = (case.clone(), target.clone(), format!("{name}.c{conn}"));
        tasks.spawn(async move { connection(&case, &target, subject, start, end).await });
    }
    let mut acked = 0u64;
    let mut bytes = 0u64;
    let mut latencies: Vec<u32> = Vec::new();
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(r) => {
                acked += r.acked;
                bytes += r.bytes;
                latencies.extend(r.latencies_us);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    // The next run starts on an empty server; the disk holds one run at most.
    let _ = admin.delete_stream(&name).await;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(figures(case.mode, acked, bytes, latencies, seconds))
}

struct ConnResult {
    acked: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

/// A window slot in flight: when its first publish was sent, and the
/// acknowledgements that complete it, in publish order.
struct Slot {
    sent: Instant,
    acks: Vec<PublishAckFuture>,
}

async fn connection(
    case: &Case,
    target: &JetStreamTarget,
    subject: String,
    start: Instant,
    end: Instant,
) -> Result<ConnResult, String> {
    let client = connect(target).await?;
    // Acknowledged publishes per slot, and messages (counted as the MQTT
    // generator counts them) per acknowledged slot.
    let (acks_per_slot, counted) = match case.mode {
        Mode::Qos1 => (1, 1),
        Mode::Qos0 => (1, QOS0_GROUP as u64 + 1),
        Mode::Batch => (BATCH_RECORDS, 1),
    };
    let payload_per_slot = match case.mode {
        Mode::Qos1 => case.payload as u64,
        Mode::Qos0 => (QOS0_GROUP as u64 + 1) * case.payload as u64,
        Mode::Batch => (BATCH_RECORDS * case.payload) as u64,
    };
    // The context's own bound on acknowledgements in flight never binds
    // before the window does.
    let js = jetstream::ContextBuilder::new()
        .timeout(DRAIN_TIMEOUT)
        .max_ack_inflight(case.window * acks_per_slot + 1)
        .build(client.clone());
    let body = Bytes::from(vec![b'x'; case.payload]);
    let mut window: VecDeque<Slot> = VecDeque::with_capacity(case.window);
    let mut result = ConnResult { acked: 0, bytes: 0, latencies_us: Vec::new() };
    let publish_error = |e: &dyn std::fmt::Display| format!("{}: publish: {e}", target.name);
    loop {
        let now = Instant::now();
        if now < end {
            while window.len() < case.window {
                let mut acks = Vec::with_capacity(acks_per_slot);
                if case.mode == Mode::Qos0 {
                    for _ in 0..QOS0_GROUP {
                        client
                            .publish(subject.clone(), body.clone())
                            .await
                            .map_err(|e| publish_error(&e))?;
                    }
                }
                for _ in 0..acks_per_slot {
                    let ack = js
                        .publish(subject.clone(), body.clone())
                        .await
                        .map_err(|e| publish_error(&e))?;
                    acks.push(ack);
                }
                window.push_back(Slot { sent: now, acks });
            }
        } else if now > end + DRAIN_TIMEOUT {
            return Err(format!(
                "{}: {} slots unacknowledged {DRAIN_TIMEOUT:?} after sending stopped",
                target.name,
                window.len()
            ));
        }
        let Some(slot) = window.pop_front() else { break };
        for ack in slot.acks {
            ack.await.map_err(|e| format!("{}: acknowledgement: {e}", target.name))?;
        }
        let now = Instant::now();
        if slot.sent >= start && now <= end {
            result.acked += counted;
            result.bytes += payload_per_slot;
            result
                .latencies_us
                .push(u32::try_from(now.duration_since(slot.sent).as_micros()).unwrap_or(u32::MAX));
        }
    }
    let _ = client.drain().await;
    Ok(result)
}
