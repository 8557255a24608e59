//! A firehose delivery stream on the JetStream backend keeps delivering
//! exactly once when the collector holding its lease is killed.
//!
//! Two collector processes, A and B, over one nats-server of the test's own
//! with the same `--store-prefix`; a delivery stream created through A's
//! Firehose API (KinesisStreamAsSource, 1 s / 1 MiB hints) delivers to a
//! directory (A's `<data-dir>/firehose/<name>`, which both write on one
//! machine). A writer puts numbered records through A and B in turn. Once
//! objects were delivered, the lease holder (`lease.<name>` in the KV bucket
//! `<prefix>_firehose`) is caught at the worst moment: its checkpoint holds a
//! batch as pending and the batch's object is already written (SIGSTOP as
//! soon as the object appears, kept only if the checkpoint has not moved on).
//! It is killed with SIGKILL there, and the writer goes on through the
//! survivor, which must take the lease over (10 s lease, renewed every 3 s),
//! deliver that batch again under the same name with the same records, and
//! deliver everything else. Then the killed collector is started again and
//! the survivor stopped (SIGTERM releases the lease): the restarted one takes
//! over and delivers what is written through it.
//!
//! The promise checked (collector/src/firehose/state/kv/mod.rs, "Fencing"):
//! every acknowledged record is in exactly one object, nothing is delivered
//! that was never sent, each shard's objects hold its records in sequence
//! order without overlap, and no `.tmp` file is left
//! (`firehose_support::assert_exactly_once`).

mod firehose_support;
mod kinesis_support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_firehose::types::{DeliveryStreamType, KinesisStreamSourceConfiguration, Tag};
use aws_sdk_kinesis::Client;
use firehose_support::{Writer, assert_exactly_once, delivered, put_next, wait_until};
use futures_util::StreamExt;
use weir_tests::harness::{Collector, http_get, metric_value};
use weir_tests::nats::NatsServer;

/// The source stream.
const STREAM: &str = "events";
/// The delivery stream (no dot: its KV keys are `lease.events-archive`...).
const DELIVERY: &str = "events-archive";
/// The collectors' `--store-prefix` (the NATS server is the test's own).
const PREFIX: &str = "fhkill";
/// Shards of the source stream.
const SHARDS: i32 = 2;
/// Records per PutRecords call.
const BATCH: usize = 20;
/// Pause between PutRecords calls.
const WRITE_PAUSE: Duration = Duration::from_millis(10);
/// Longest PutRecords call (a kill can leave one unanswered).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Objects delivered by the first holder before it is killed.
const OBJECTS_BEFORE_KILL: usize = 3;
/// How long objects may take to appear with a 1 s interval hint.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a dead holder's lease may take to move: the lease duration
/// (10 s) after the waiting collector first saw the last renewal, plus its
/// reading period (3 s), plus opening and a poll, with room for a slow
/// machine.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the holder may take to be caught with a written batch pending
/// (it delivers about two batches a second).
const CATCH_PENDING_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a frozen holder's checkpoint must stay unchanged to be its last.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a batch's object may take to appear once the batch is pending.
const OBJECT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a released lease may take to move (the waiting collector asks
/// every 3 s).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// One collector process over the shared store, with its own data directory
/// (kept across a restart).
struct Node {
    collector: Collector,
    data_dir: PathBuf,
    log_dir: PathBuf,
}

impl Node {
    fn start(server: &NatsServer, data_dir: PathBuf, log_dir: &Path) -> Self {
        let url = server.url();
        let args = ["--store", url.as_str(), "--store-prefix", PREFIX];
        let collector = Collector::start_in(&data_dir, log_dir, &args);
        Self { collector, data_dir, log_dir: log_dir.to_path_buf() }
    }

    fn restart(&mut self, server: &NatsServer) {
        *self = Self::start(server, self.data_dir.clone(), &self.log_dir);
    }

    fn kinesis(&self) -> Client {
        kinesis_support::sdk_with_timeout(self.collector.http_addr(), CALL_TIMEOUT)
    }

    /// Whether `holder` (a collector id, `<pid>-<random>`) is this process.
    fn is(&self, holder: &str) -> bool {
        holder.split('-').next() == Some(self.collector.child.id().to_string().as_str())
    }
}

/// The collectors the writer puts through, in turn.
type Targets = Arc<Mutex<Vec<Client>>>;

/// Puts batches through the targets in turn until the writer is finished
/// and every record it sent is acknowledged; a failed call's records go to
/// the next target.
async fn write(targets: Targets, writer: Arc<Mutex<Writer>>, failures: Arc<AtomicBool>) {
    for n in 0usize.. {
        let client = {
            let t = targets.lock().expect("targets");
            t[n % t.len()].clone()
        };
        match put_next(&client, STREAM, &writer).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => failures.store(true, Ordering::Relaxed),
        }
        tokio::time::sleep(WRITE_PAUSE).await;
    }
}

/// A value of the firehose KV bucket, as JSON.
async fn kv_value(server: &NatsServer, key: &str) -> Option<serde_json::Value> {
    let client = async_nats::connect(server.url()).await.ok()?;
    let kv = async_nats::jetstream::new(client)
        .get_key_value(format!("{PREFIX}_firehose"))
        .await
        .ok()?;
    let value = kv.get(key).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// The collector id holding the delivery stream's lease.
async fn lease_holder(server: &NatsServer) -> Option<String> {
    let lease = kv_value(server, &format!("lease.{DELIVERY}")).await?;
    lease["holder"].as_str().map(str::to_owned)
}

/// Whether `node` holds the lease within `timeout`.
async fn takes_the_lease(server: &NatsServer, node: &Node, timeout: Duration) -> bool {
    wait_until(timeout, || async { lease_holder(server).await.is_some_and(|h| node.is(&h)) }).await
}

/// Object keys of the batches pending in the delivery stream's checkpoint.
async fn pending_keys(server: &NatsServer) -> Vec<String> {
    let value = kv_value(server, &format!("checkpoint.{DELIVERY}")).await;
    let shards = value.as_ref().and_then(|v| v["checkpoint"]["shards"].as_object());
    let shards = shards.unwrap_or_else(|| panic!("no checkpoint with shards: {value:?}"));
    shards.values().filter_map(|s| s["pending"]["key"].as_str().map(str::to_owned)).collect()
}

/// Freezes `holder` (SIGSTOP) between writing a batch's object and moving
/// its checkpoint past it: the object is in `dir` under the key the
/// checkpoint holds as pending. Each checkpoint save that fixes a batch as
/// pending is followed by watching for its object; once it is there,
/// SIGSTOP, and if the frozen holder's checkpoint has already moved on,
/// SIGCONT and the next batch. Returns that object's key, every pending
/// key (another shard may have a batch pending too) and the tries it took.
async fn stop_with_a_written_batch_pending(
    server: &NatsServer,
    holder: &Collector,
    dir: &Path,
) -> (String, Vec<String>, usize) {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let kv = async_nats::jetstream::new(client)
        .get_key_value(format!("{PREFIX}_firehose"))
        .await
        .expect("the firehose bucket");
    let mut saves = kv.watch(format!("checkpoint.{DELIVERY}")).await.expect("watch");
    let deadline = tokio::time::Instant::now() + CATCH_PENDING_TIMEOUT;
    let mut tries = 0;
    loop {
        let entry = tokio::time::timeout_at(deadline, saves.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no written batch pending at a SIGSTOP in {tries} tries\n{}",
                    holder.report()
                )
            })
            .expect("the watch goes on")
            .expect("a checkpoint save");
        let value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or_default();
        let shards = value["checkpoint"]["shards"].as_object().cloned().unwrap_or_default();
        let Some(key) = shards.values().find_map(|s| s["pending"]["key"].as_str()) else {
            continue;
        };
        let object = dir.join(key);
        let written = tokio::task::block_in_place(|| {
            let until = Instant::now() + OBJECT_WRITE_TIMEOUT;
            while !object.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_micros(100));
            }
            object.exists()
        });
        if !written {
            continue;
        }
        holder.signal("STOP");
        tries += 1;
        // A save sent just before the SIGSTOP may still land: the frozen
        // holder's checkpoint is its last one once none came for a while.
        let settled = tokio::time::timeout(SETTLE, saves.next()).await.is_err();
        let pending = pending_keys(server).await;
        if settled && pending.iter().any(|k| k == key) {
            return (key.to_owned(), pending, tries);
        }
        holder.signal("CONT");
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().expect("tag")
}

/// `weir_firehose_delivered_records_total` of the delivery stream on `node`
/// (0 before it delivered anything).
fn delivered_records(node: &Node) -> f64 {
    let metrics = http_get(node.collector.http_addr(), "/metrics");
    metric_value(
        &metrics,
        "weir_firehose_delivered_records_total",
        &format!("delivery_stream=\"{DELIVERY}\""),
    )
    .unwrap_or(0.0)
}

fn reports(nodes: &[&Node]) -> String {
    nodes.iter().map(|n| n.collector.report()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_stays_exactly_once_when_the_lease_holder_is_killed() {
    let started = Instant::now();
    let server = NatsServer::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut a = Node::start(&server, tmp.path().join("a"), tmp.path());
    let mut b = Node::start(&server, tmp.path().join("b"), tmp.path());
    let out_dir = a.data_dir.join("firehose").join(DELIVERY);

    a.kinesis()
        .create_stream()
        .stream_name(STREAM)
        .shard_count(SHARDS)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateStream: {e:?}\n{}", a.collector.report()));
    kinesis_support::firehose_sdk(a.collector.http_addr())
        .create_delivery_stream()
        .delivery_stream_name(DELIVERY)
        .delivery_stream_type(DeliveryStreamType::KinesisStreamAsSource)
        .kinesis_stream_source_configuration(
            KinesisStreamSourceConfiguration::builder()
                .kinesis_stream_arn(format!(
                    "arn:aws:kinesis:us-east-1:000000000000:stream/{STREAM}"
                ))
                .role_arn("arn:aws:iam::000000000000:role/firehose")
                .build()
                .expect("source"),
        )
        .tags(tag("weir:BufferIntervalSeconds", "1"))
        .tags(tag("weir:BufferSizeMiB", "1"))
        .tags(tag("weir:NewlineDelimited", "true"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateDeliveryStream: {e:?}\n{}", a.collector.report()));

    let writer = Arc::new(Mutex::new(Writer::new(usize::MAX, BATCH)));
    let failures = Arc::new(AtomicBool::new(false));
    let targets: Targets = Arc::new(Mutex::new(vec![a.kinesis(), b.kinesis()]));
    let task = tokio::spawn(write(targets.clone(), writer.clone(), failures.clone()));

    // The first holder delivers a few objects.
    let first = wait_until(DELIVERY_TIMEOUT, || async {
        lease_holder(&server).await.is_some()
            && delivered(&out_dir).objects.len() >= OBJECTS_BEFORE_KILL
    })
    .await;
    assert!(
        first,
        "no lease holder delivered {OBJECTS_BEFORE_KILL} objects\n{}",
        reports(&[&a, &b])
    );
    let holder = lease_holder(&server).await.expect("a lease holder");
    let a_held = a.is(&holder);
    assert!(a_held || b.is(&holder), "the lease holder {holder} is neither collector");
    let (victim, survivor) = if a_held { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(
        !failures.load(Ordering::Relaxed),
        "puts failed before any kill\n{}",
        reports(&[&*victim, &*survivor])
    );
    assert_eq!(delivered_records(survivor), 0.0, "only the lease holder delivers");

    // SIGKILL the holder with a batch pending: the writer goes on through
    // the survivor.
    *targets.lock().expect("targets") = vec![survivor.kinesis()];
    let (caught, pending, tries) =
        stop_with_a_written_batch_pending(&server, &victim.collector, &out_dir).await;
    victim.collector.signal("KILL");
    assert!(victim.collector.wait_exit(Duration::from_secs(10)).is_some(), "killed holder exits");
    let killed_at = Instant::now();
    assert_eq!(pending_keys(&server).await, pending, "the checkpoint the dead holder left");
    let at_kill = delivered(&out_dir);
    let acked_at_kill = writer.lock().expect("writer").acked.len();

    let took_over = takes_the_lease(&server, survivor, TAKEOVER_TIMEOUT).await;
    assert!(took_over, "the survivor did not take over\n{}", reports(&[&*victim, &*survivor]));
    let takeover = killed_at.elapsed();
    // Delivery goes on: what was acknowledged by now, all of it written
    // after the kill included, reaches the directory.
    let acked: Vec<String> = writer.lock().expect("writer").acked.keys().cloned().collect();
    let caught_up =
        wait_until(DELIVERY_TIMEOUT, || async { delivered(&out_dir).holds(&acked) }).await;
    assert!(
        caught_up,
        "the survivor did not deliver everything\n{}",
        reports(&[&*victim, &*survivor])
    );
    assert!(delivered(&out_dir).records() > at_kill.records(), "nothing delivered after the kill");
    // The batches the dead holder left pending went out again under their
    // own names; one it had already written kept its records.
    let after = delivered(&out_dir);
    for key in &pending {
        let path = out_dir.join(key);
        let lines = after.objects.get(&path);
        assert!(lines.is_some(), "{key}: the pending batch is not under its own name");
        if *key == caught {
            let before = at_kill.objects.get(&path);
            assert!(before.is_some(), "{key}: the dead holder had written it");
            assert_eq!(lines, before, "{key}: re-delivered with other records");
        }
    }
    assert!(
        survivor.collector.log().contains("delivering an interrupted batch again"),
        "the survivor did not deliver the pending batch again\n{}",
        survivor.collector.report()
    );

    // The killed collector comes back and waits; the survivor stops
    // (releasing the lease) and the restarted one takes over.
    assert!(delivered_records(survivor) > 0.0, "the survivor counts what it delivered");
    victim.restart(&server);
    *targets.lock().expect("targets") = vec![victim.kinesis()];
    survivor.collector.signal("TERM");
    assert!(
        survivor.collector.wait_exit(Duration::from_secs(20)).is_some(),
        "the survivor did not stop\n{}",
        survivor.collector.report()
    );
    let handed_over = takes_the_lease(&server, victim, HANDOVER_TIMEOUT).await;
    assert!(handed_over, "the restarted one did not take over\n{}", victim.collector.report());

    // Stop writing; everything acknowledged is delivered, once.
    let more = wait_until(DELIVERY_TIMEOUT, || async { delivered_records(victim) > 0.0 }).await;
    assert!(more, "the restarted collector delivered nothing\n{}", victim.collector.report());
    writer.lock().expect("writer").finish();
    tokio::time::timeout(DELIVERY_TIMEOUT, task)
        .await
        .unwrap_or_else(|_| panic!("writer not done\n{}", victim.collector.report()))
        .expect("writer task");
    let acked: Vec<String> = writer.lock().expect("writer").acked.keys().cloned().collect();
    let caught_up =
        wait_until(DELIVERY_TIMEOUT, || async { delivered(&out_dir).holds(&acked) }).await;
    assert!(caught_up, "delivery did not catch up\n{}", victim.collector.report());

    let w = writer.lock().expect("writer");
    let lines = assert_exactly_once(&delivered(&out_dir), &w, DELIVERY);
    eprintln!(
        "{} records acknowledged ({acked_at_kill} before the kill), {lines} delivered in {} \
         objects; killed in try {tries} with {caught} written but pending (pending: \
         {pending:?}); takeover {takeover:?} after the kill; {:?} in all",
        w.acked.len(),
        delivered(&out_dir).objects.len(),
        started.elapsed()
    );
}
